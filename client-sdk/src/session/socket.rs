//! The peer's one UDP socket, shared by QUIC and everything else.
//!
//! [`SharedSocket`] is a `quinn::AsyncUdpSocket` over quinn's own tokio socket: QUIC datagrams go
//! to quinn, every other datagram (STUN, TURN ChannelData, DTLS… judged by the first byte with
//! `quickp2p_wire::classify`, RFC 9443) is diverted to a channel for the SDK's other users (NAT
//! report, TURN client, hole punching), which send on the same socket with
//! [`SharedSocket::send_to`]. The endpoint must not grease the QUIC bit (it does not).

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use quickp2p_wire::{DatagramSource, PacketKind, classify};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

/// A datagram that is not QUIC, received on the shared socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonQuicDatagram {
    /// Its source.
    pub from: SocketAddr,
    /// Its protocol by first byte.
    pub kind: PacketKind,
    /// Its bytes.
    pub payload: Bytes,
}

/// quinn's socket with non-QUIC datagrams diverted.
pub struct SharedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    divert: Option<mpsc::Sender<NonQuicDatagram>>,
}

impl fmt::Debug for SharedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSocket")
            .field("local", &self.inner.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl SharedSocket {
    /// Binds `addr` and wraps it; non-QUIC datagrams go to `divert` (dropped when `None` or full).
    pub fn bind(
        addr: SocketAddr,
        divert: Option<mpsc::Sender<NonQuicDatagram>>,
    ) -> io::Result<Arc<SharedSocket>> {
        let std = std::net::UdpSocket::bind(addr)?;
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, std)?;
        Ok(Arc::new(SharedSocket { inner, divert }))
    }

    /// Sends one non-QUIC datagram (e.g. a STUN request) from the shared socket. Non-blocking:
    /// a full send buffer is `WouldBlock`.
    pub fn send_to(&self, payload: &[u8], to: SocketAddr) -> io::Result<()> {
        self.inner.try_send(&Transmit {
            destination: to,
            ecn: None,
            contents: payload,
            segment_size: None,
            src_ip: None,
        })
    }

    fn divert(&self, from: SocketAddr, kind: PacketKind, payload: &[u8]) {
        match &self.divert {
            Some(tx) => {
                if tx
                    .try_send(NonQuicDatagram {
                        from,
                        kind,
                        payload: Bytes::copy_from_slice(payload),
                    })
                    .is_err()
                {
                    tracing::debug!(%from, ?kind, "non-QUIC datagram dropped: channel full or closed");
                }
            }
            None => tracing::trace!(%from, ?kind, "non-QUIC datagram dropped: nobody listens"),
        }
    }
}

fn is_quic(segment: &[u8]) -> Option<PacketKind> {
    match classify(segment, DatagramSource::Other) {
        PacketKind::Quic => None,
        other => Some(other),
    }
}

impl AsyncUdpSocket for SharedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let mut kept = 0;
            for i in 0..n {
                let m = meta[i];
                let stride = m.stride.max(1);
                let data = &bufs[i][..m.len];
                let foreign: Vec<(usize, PacketKind)> = data
                    .chunks(stride)
                    .enumerate()
                    .filter_map(|(k, seg)| is_quic(seg).map(|kind| (k, kind)))
                    .collect();
                if foreign.is_empty() {
                    if kept != i {
                        let (head, tail) = bufs.split_at_mut(i);
                        head[kept][..m.len].copy_from_slice(&tail[0][..m.len]);
                        meta[kept] = m;
                    }
                    kept += 1;
                    continue;
                }
                let segments = data.len().div_ceil(stride);
                if foreign.len() < segments {
                    tracing::debug!(from = %m.addr, "coalesced batch mixing QUIC and other datagrams: QUIC part dropped");
                }
                for (k, kind) in foreign {
                    let end = ((k + 1) * stride).min(data.len());
                    self.divert(m.addr, kind, &data[k * stride..end]);
                }
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
