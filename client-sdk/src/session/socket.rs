//! The peer's one UDP socket, shared by QUIC and everything else.
//!
//! [`SharedSocket`] is a `quinn::AsyncUdpSocket` over one tokio socket (quinn-udp I/O): QUIC datagrams go
//! to quinn, every other datagram (STUN, TURN ChannelData, DTLS… judged by the first byte with
//! `quickp2p_wire::classify`, RFC 9443) is diverted to a channel for the SDK's other users (NAT
//! report, TURN client, hole punching), which send on the same socket with
//! [`SharedSocket::send_to`]. The endpoint must not grease the QUIC bit (it does not).
//!
//! # Tunnel routes
//!
//! Peer-to-peer tunnels ([`crate::tunnel`]) run QUIC to a **virtual address** (in `240.0.0.0/4`,
//! reserved and never routed) that the socket maps to the tunnel's current [`TunnelRoute`]:
//!
//! * **out:** a QUIC datagram quinn sends to a virtual address leaves on the current route — as
//!   is to the peer's real address ([`TunnelRoute::Direct`]), or framed as TURN ChannelData to
//!   the relay ([`TunnelRoute::Relayed`]); a virtual address with no route drops it, as UDP would;
//! * **in:** a QUIC datagram from a real address some route of a tunnel ever used, or ChannelData
//!   from a TURN server on a tunnel's channel (unwrapped), reaches quinn as coming from the
//!   virtual address.
//!
//! Changing the route ([`SharedSocket::set_route`]) moves the tunnel to another path without
//! quinn noticing; older paths keep delivering what was in flight. Traffic to and from other
//! addresses (the gateway) is untouched. TURN servers attached with
//! [`SharedSocket::attach_turn_server`] get their own non-QUIC datagrams (responses, ChannelData
//! of channels that carry no tunnel) through a handler — the feed of a
//! [`RelayClient`](crate::relay::RelayClient) — instead of the diverted channel.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use quickp2p_wire::{DatagramSource, PacketKind, classify};
use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use crate::tunnel::TunnelRoute;

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

/// Receives the non-QUIC datagrams of one TURN server: `(server, datagram)`.
type TurnHandler = Box<dyn Fn(SocketAddr, &[u8]) + Send + Sync>;

/// First address of the virtual range (240.0.0.0/4, "reserved for future use").
const VIRTUAL_BASE: u32 = 0xF000_0000;
/// Datagrams re-framed on receive wait here (bounded; beyond it they are dropped, as UDP would).
const PENDING_LIMIT: usize = 1024;

/// The tunnels' routes and the attached TURN servers.
#[derive(Default)]
struct RouteTable {
    /// Virtual addresses handed out so far.
    issued: u32,
    /// Virtual address (canonical) → its current route.
    current: HashMap<SocketAddr, TunnelRoute>,
    /// Real address (canonical) of a direct route → virtual address.
    direct_in: HashMap<SocketAddr, SocketAddr>,
    /// (TURN server, channel) of a relayed route → virtual address.
    channel_in: HashMap<(SocketAddr, u16), SocketAddr>,
    /// TURN servers some relayed route uses (kept in step with `channel_in`).
    relays: HashSet<SocketAddr>,
    /// TURN servers whose other datagrams go to a handler.
    turn: HashMap<SocketAddr, TurnHandler>,
}

impl RouteTable {
    fn is_turn_server(&self, from: SocketAddr) -> bool {
        self.turn.contains_key(&from) || self.relays.contains(&from)
    }

    fn reindex_relays(&mut self) {
        self.relays = self.channel_in.keys().map(|(server, _)| *server).collect();
    }
}

/// A datagram re-framed on receive, waiting for quinn.
struct Pending {
    from: SocketAddr,
    data: Bytes,
    ecn: Option<EcnCodepoint>,
    dst_ip: Option<IpAddr>,
}

/// quinn's socket with non-QUIC datagrams diverted and tunnel routes applied.
pub struct SharedSocket {
    inner: Arc<UdpIo>,
    divert: Option<mpsc::Sender<NonQuicDatagram>>,
    /// Whether the socket is IPv6 (addresses given to quinn must be too).
    ipv6: bool,
    /// Whether any route or TURN server is registered (the fast path skips the table).
    routed: AtomicBool,
    routes: RwLock<RouteTable>,
    pending: Mutex<VecDeque<Pending>>,
}

impl fmt::Debug for SharedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSocket")
            .field("local", &self.inner.local_addr().ok())
            .finish_non_exhaustive()
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl SharedSocket {
    /// Binds `addr` and wraps it; non-QUIC datagrams go to `divert` (dropped when `None` or full).
    pub fn bind(
        addr: SocketAddr,
        divert: Option<mpsc::Sender<NonQuicDatagram>>,
    ) -> io::Result<Arc<SharedSocket>> {
        SharedSocket::from_std(std::net::UdpSocket::bind(addr)?, divert)
    }

    /// Wraps an already bound socket (e.g. one the hole-punching engine opened); non-QUIC
    /// datagrams go to `divert`. Must be called within a tokio runtime.
    pub fn from_std(
        socket: std::net::UdpSocket,
        divert: Option<mpsc::Sender<NonQuicDatagram>>,
    ) -> io::Result<Arc<SharedSocket>> {
        let ipv6 = socket.local_addr()?.is_ipv6();
        let inner = Arc::new(UdpIo::new(socket)?);
        Ok(Arc::new(SharedSocket {
            inner,
            divert,
            ipv6,
            routed: AtomicBool::new(false),
            routes: RwLock::new(RouteTable::default()),
            pending: Mutex::new(VecDeque::new()),
        }))
    }

    /// Wraps an already bound tokio socket (see [`SharedSocket::from_std`]).
    pub fn from_tokio(
        socket: tokio::net::UdpSocket,
        divert: Option<mpsc::Sender<NonQuicDatagram>>,
    ) -> io::Result<Arc<SharedSocket>> {
        SharedSocket::from_std(socket.into_std()?, divert)
    }

    /// Sends one non-QUIC datagram (e.g. a STUN request) from the shared socket. Non-blocking:
    /// a full send buffer is `WouldBlock`.
    pub fn send_to(&self, payload: &[u8], to: SocketAddr) -> io::Result<()> {
        self.inner.try_send(&Transmit {
            destination: self.outward(to),
            ecn: None,
            contents: payload,
            segment_size: None,
            src_ip: None,
        })
    }

    /// The same socket as a tokio `UdpSocket` for **sending** (e.g. by a
    /// [`RelayClient::with_feed`](crate::relay::RelayClient::with_feed)); never read from it —
    /// this socket reads. Must be called within a tokio runtime.
    pub fn tokio_sender(&self) -> io::Result<Arc<tokio::net::UdpSocket>> {
        Ok(Arc::clone(&self.inner.io))
    }

    /// Hands out a new virtual address routed over `route` (for a tunnel's QUIC connection).
    pub fn add_route(&self, route: TunnelRoute) -> SocketAddr {
        let mut table = self.table_mut();
        table.issued = table.issued.wrapping_add(1);
        let ip = Ipv4Addr::from(VIRTUAL_BASE | (table.issued & 0x0FFF_FFFF));
        let virtual_addr = SocketAddr::from((ip, 1));
        Self::install(&mut table, virtual_addr, route);
        self.routed.store(true, Ordering::Release);
        self.presented(virtual_addr)
    }

    /// Moves the tunnel at `virtual_addr` to `route`; datagrams still arriving on its earlier
    /// routes keep being accepted. `false` when the address has no route (removed, or never
    /// handed out by this socket).
    pub fn set_route(&self, virtual_addr: SocketAddr, route: TunnelRoute) -> bool {
        let virtual_addr = canonical(virtual_addr);
        let mut table = self.table_mut();
        if !table.current.contains_key(&virtual_addr) {
            return false;
        }
        Self::install(&mut table, virtual_addr, route);
        true
    }

    /// The current route of `virtual_addr`.
    pub fn route(&self, virtual_addr: SocketAddr) -> Option<TunnelRoute> {
        self.table().current.get(&canonical(virtual_addr)).copied()
    }

    /// Forgets `virtual_addr` and every route it used.
    pub fn remove_route(&self, virtual_addr: SocketAddr) {
        let virtual_addr = canonical(virtual_addr);
        let mut table = self.table_mut();
        table.current.remove(&virtual_addr);
        table.direct_in.retain(|_, v| *v != virtual_addr);
        table.channel_in.retain(|_, v| *v != virtual_addr);
        table.reindex_relays();
    }

    /// Sends the non-QUIC datagrams of TURN server `server` (responses, indications,
    /// ChannelData on channels that carry no tunnel) to `handler` instead of the diverted
    /// channel; ChannelData from it is recognised as such.
    pub fn attach_turn_server(
        &self,
        server: SocketAddr,
        handler: impl Fn(SocketAddr, &[u8]) + Send + Sync + 'static,
    ) {
        self.table_mut()
            .turn
            .insert(canonical(server), Box::new(handler));
        self.routed.store(true, Ordering::Release);
    }

    /// Undoes [`SharedSocket::attach_turn_server`].
    pub fn detach_turn_server(&self, server: SocketAddr) {
        self.table_mut().turn.remove(&canonical(server));
    }

    fn install(table: &mut RouteTable, virtual_addr: SocketAddr, route: TunnelRoute) {
        let route = match route {
            TunnelRoute::Direct(addr) => {
                let addr = canonical(addr);
                table.direct_in.insert(addr, virtual_addr);
                TunnelRoute::Direct(addr)
            }
            TunnelRoute::Relayed {
                server,
                channel,
                peer,
            } => {
                let server = canonical(server);
                table.channel_in.insert((server, channel), virtual_addr);
                table.relays.insert(server);
                TunnelRoute::Relayed {
                    server,
                    channel,
                    peer: canonical(peer),
                }
            }
        };
        table.current.insert(virtual_addr, route);
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, RouteTable> {
        self.routes.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn table_mut(&self) -> std::sync::RwLockWriteGuard<'_, RouteTable> {
        self.routes.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// `addr` in the family quinn uses on this socket.
    fn presented(&self, addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V4(v4) if self.ipv6 => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            other => other,
        }
    }

    /// `addr` in the family the socket can send to.
    fn outward(&self, addr: SocketAddr) -> SocketAddr {
        self.presented(canonical(addr))
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

    /// Sends a tunnel's datagram(s) on its route.
    fn send_routed(&self, route: TunnelRoute, transmit: &Transmit<'_>) -> io::Result<()> {
        match route {
            TunnelRoute::Direct(addr) => self.inner.try_send(&Transmit {
                destination: self.outward(addr),
                ecn: transmit.ecn,
                contents: transmit.contents,
                segment_size: transmit.segment_size,
                src_ip: transmit.src_ip,
            }),
            TunnelRoute::Relayed {
                server, channel, ..
            } => {
                // every segment becomes one ChannelData message (no padding over UDP, RFC 8656
                // §12.5); equal segments stay equal, so the batch still fits GSO
                let stride = transmit
                    .segment_size
                    .unwrap_or(transmit.contents.len())
                    .max(1);
                let mut framed = Vec::with_capacity(
                    transmit.contents.len() + 4 * transmit.contents.len().div_ceil(stride),
                );
                for segment in transmit.contents.chunks(stride) {
                    let len = u16::try_from(segment.len())
                        .map_err(|_| io::Error::other("tunnel datagram too large for TURN"))?;
                    framed.extend_from_slice(&channel.to_be_bytes());
                    framed.extend_from_slice(&len.to_be_bytes());
                    framed.extend_from_slice(segment);
                }
                self.inner.try_send(&Transmit {
                    destination: self.outward(server),
                    ecn: transmit.ecn,
                    contents: &framed,
                    segment_size: transmit.segment_size.map(|s| s + 4),
                    src_ip: transmit.src_ip,
                })
            }
        }
    }

    /// Moves waiting re-framed datagrams into quinn's buffers.
    fn drain_pending(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Some(p) = pending.pop_front() else { break };
            let len = p.data.len().min(bufs[n].len());
            bufs[n][..len].copy_from_slice(&p.data[..len]);
            meta[n] = RecvMeta {
                addr: p.from,
                len,
                stride: len,
                ecn: p.ecn,
                dst_ip: p.dst_ip,
            };
            n += 1;
        }
        n
    }

    /// Applies the route table to one received buffer (`data`, all from `m.addr`). Returns the
    /// address to present to quinn when the whole buffer is QUIC of one source and can be kept in
    /// place, after unwrapping in place a single ChannelData message (`m` is updated); `None`
    /// when its contents were diverted or queued.
    fn route_received(&self, m: &mut RecvMeta, buf: &mut [u8]) -> Option<SocketAddr> {
        let from = canonical(m.addr);
        let table = self.table();
        let turn = table.is_turn_server(from);
        let source = if turn {
            DatagramSource::TurnServer
        } else {
            DatagramSource::Other
        };
        let quic_from = table
            .direct_in
            .get(&from)
            .map_or(m.addr, |v| self.presented(*v));
        let stride = m.stride.max(1);
        let data = &buf[..m.len];
        // the common cases, in place: all QUIC, or one ChannelData message of a tunnel
        if data
            .chunks(stride)
            .all(|seg| classify(seg, source) == PacketKind::Quic)
        {
            m.addr = quic_from;
            return Some(quic_from);
        }
        if m.len <= stride
            && let Some((virtual_addr, len)) = tunnel_channel_data(&table, from, data)
        {
            buf.copy_within(4..4 + len, 0);
            m.len = len;
            m.stride = len;
            m.addr = self.presented(virtual_addr);
            return Some(m.addr);
        }
        // mixed batches: segment by segment
        for segment in data.chunks(stride) {
            let kind = classify(segment, source);
            if kind == PacketKind::Quic {
                self.queue(quic_from, segment, m);
            } else if let Some((virtual_addr, len)) = tunnel_channel_data(&table, from, segment) {
                self.queue(self.presented(virtual_addr), &segment[4..4 + len], m);
            } else if let Some(handler) = table.turn.get(&from) {
                handler(from, segment);
            } else {
                self.divert(m.addr, kind, segment);
            }
        }
        None
    }

    fn queue(&self, from: SocketAddr, data: &[u8], m: &RecvMeta) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() >= PENDING_LIMIT {
            tracing::debug!(%from, "tunnel datagram dropped: receive queue full");
            return;
        }
        pending.push_back(Pending {
            from,
            data: Bytes::copy_from_slice(data),
            ecn: m.ecn,
            dst_ip: m.dst_ip,
        });
    }

    /// The original behaviour for sockets without routes: QUIC stays, the rest is diverted.
    fn filter_unrouted(&self, m: &RecvMeta, data: &[u8]) -> bool {
        let stride = m.stride.max(1);
        let foreign: Vec<(usize, PacketKind)> = data
            .chunks(stride)
            .enumerate()
            .filter_map(|(k, seg)| is_quic(seg).map(|kind| (k, kind)))
            .collect();
        if foreign.is_empty() {
            return true;
        }
        let segments = data.len().div_ceil(stride);
        if foreign.len() < segments {
            tracing::debug!(from = %m.addr, "coalesced batch mixing QUIC and other datagrams: QUIC part dropped");
        }
        for (k, kind) in foreign {
            let end = ((k + 1) * stride).min(data.len());
            self.divert(m.addr, kind, &data[k * stride..end]);
        }
        false
    }
}

/// `(virtual address, payload length)` when `data` is one well-formed ChannelData message from
/// TURN server `from` on a channel that carries a tunnel.
fn tunnel_channel_data(
    table: &RouteTable,
    from: SocketAddr,
    data: &[u8],
) -> Option<(SocketAddr, usize)> {
    let ([c0, c1, l0, l1], rest) = data.split_first_chunk::<4>()?;
    if !(0x40..=0x7F).contains(c0) {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*l0, *l1]));
    if len > rest.len() || len == 0 {
        return None;
    }
    let channel = u16::from_be_bytes([*c0, *c1]);
    table.channel_in.get(&(from, channel)).map(|v| (*v, len))
}

fn is_quic(segment: &[u8]) -> Option<PacketKind> {
    match classify(segment, DatagramSource::Other) {
        PacketKind::Quic => None,
        other => Some(other),
    }
}

/// The tokio socket under a [`SharedSocket`], with quinn-udp's batched, ECN- and GSO-aware I/O.
/// Held behind an `Arc` so that [`SharedSocket::tokio_sender`] hands out the same socket (one
/// descriptor per session, not a duplicate).
#[derive(Debug)]
struct UdpIo {
    io: Arc<tokio::net::UdpSocket>,
    state: quinn::udp::UdpSocketState,
}

impl UdpIo {
    fn new(socket: std::net::UdpSocket) -> io::Result<UdpIo> {
        socket.set_nonblocking(true)?;
        let state = quinn::udp::UdpSocketState::new((&socket).into())?;
        Ok(UdpIo {
            io: Arc::new(tokio::net::UdpSocket::from_std(socket)?),
            state,
        })
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.io.try_io(tokio::io::Interest::WRITABLE, || {
            self.state.send((&*self.io).into(), transmit)
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let batch = bufs.len().min(quinn::udp::BATCH_SIZE);
        loop {
            std::task::ready!(self.io.poll_recv_ready(cx))?;
            // a spurious readiness is WouldBlock: tokio clears it and the next poll waits again.
            // A batch that came back short emptied the queue: reporting WouldBlock along with it
            // clears the readiness now, saving the extra recvmmsg that would only find nothing
            // (a datagram arriving meanwhile is a new readiness event, which the clear keeps)
            let mut drained = None;
            let result = self.io.try_io(tokio::io::Interest::READABLE, || {
                let n = self.state.recv((&*self.io).into(), bufs, meta)?;
                if n < batch {
                    drained = Some(n);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            if let Some(n) = drained.or(result.ok()) {
                return Poll::Ready(Ok(n));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }
}

/// Wakes quinn when the socket can take more datagrams.
#[derive(Debug)]
struct WritablePoller(Arc<UdpIo>);

impl UdpPoller for WritablePoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.io.poll_send_ready(cx)
    }
}

impl AsyncUdpSocket for SharedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritablePoller(Arc::clone(&self.inner)))
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if self.routed.load(Ordering::Acquire)
            && let IpAddr::V4(ip) = transmit.destination.ip().to_canonical()
            && u32::from(ip) & 0xF000_0000 == VIRTUAL_BASE
        {
            let route = self
                .table()
                .current
                .get(&canonical(transmit.destination))
                .copied();
            return match route {
                Some(route) => self.send_routed(route, transmit),
                None => {
                    tracing::trace!(to = %transmit.destination, "datagram to a closed tunnel dropped");
                    Ok(())
                }
            };
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let routed = self.routed.load(Ordering::Acquire);
        if routed {
            let n = self.drain_pending(bufs, meta);
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
        }
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let mut kept = 0;
            for i in 0..n {
                let mut m = meta[i];
                let keep = if routed {
                    self.route_received(&mut m, &mut bufs[i]).is_some()
                } else {
                    self.filter_unrouted(&m, &bufs[i][..m.len])
                };
                if !keep {
                    continue;
                }
                if kept != i {
                    let (head, tail) = bufs.split_at_mut(i);
                    head[kept][..m.len].copy_from_slice(&tail[0][..m.len]);
                }
                meta[kept] = m;
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            if routed {
                let n = self.drain_pending(bufs, meta);
                if n > 0 {
                    return Poll::Ready(Ok(n));
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.state.gro_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.state.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::net::UdpSocket;

    use super::*;

    fn raw() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        socket
    }

    fn recv_raw(socket: &UdpSocket) -> Vec<u8> {
        let mut buf = [0u8; 2048];
        let (n, _) = socket.recv_from(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    /// One datagram as quinn would see it within `wait`: (source, bytes).
    async fn quinn_receives_within(
        socket: &SharedSocket,
        wait: std::time::Duration,
    ) -> Option<(SocketAddr, Vec<u8>)> {
        let mut buf = vec![0u8; 65_536];
        let mut meta = [RecvMeta::default()];
        let read = async {
            let mut bufs = [IoSliceMut::new(&mut buf)];
            poll_fn(|cx| socket.poll_recv(cx, &mut bufs, &mut meta))
                .await
                .unwrap()
        };
        let n = tokio::time::timeout(wait, read).await.ok()?;
        assert_eq!(n, 1);
        Some((meta[0].addr, buf[..meta[0].len].to_vec()))
    }

    async fn quinn_receives(socket: &SharedSocket) -> (SocketAddr, Vec<u8>) {
        quinn_receives_within(socket, std::time::Duration::from_secs(2))
            .await
            .expect("a datagram for quinn")
    }

    /// Sends as quinn does: wait for writability when the socket says WouldBlock.
    async fn quinn_sends(socket: &Arc<SharedSocket>, transmit: Transmit<'_>) {
        let mut poller = Arc::clone(socket).create_io_poller();
        loop {
            match socket.try_send(&transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll_fn(|cx| poller.as_mut().poll_writable(cx))
                        .await
                        .unwrap();
                }
                other => return other.unwrap(),
            }
        }
    }

    /// A QUIC short-header-looking datagram (fixed bit set).
    fn quic(tag: u8, len: usize) -> Vec<u8> {
        let mut d = vec![tag; len];
        d[0] = 0x40 | (tag & 0x0F);
        d
    }

    /// What one `poll_recv` with four buffers returns within 2 s: the first byte of each
    /// datagram.
    async fn quinn_receives_batch(socket: &SharedSocket) -> Vec<u8> {
        let mut storage = vec![[0u8; 256]; 4];
        let mut meta = [RecvMeta::default(); 4];
        let n = {
            let mut bufs: Vec<IoSliceMut<'_>> =
                storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let read = poll_fn(|cx| socket.poll_recv(cx, &mut bufs, &mut meta));
            tokio::time::timeout(std::time::Duration::from_secs(2), read)
                .await
                .expect("a wake-up for the waiting datagrams")
                .unwrap()
        };
        storage[..n].iter().map(|b| b[0]).collect()
    }

    #[tokio::test]
    async fn a_short_batch_clears_readiness_without_losing_later_datagrams() {
        let socket = SharedSocket::bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let local = socket.local_addr().unwrap();
        let peer = raw();
        // a full batch keeps the readiness: the rest comes with the next call
        for tag in 0..6u8 {
            peer.send_to(&quic(tag, 20), local).unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(
            quinn_receives_batch(&socket).await,
            [0x40, 0x41, 0x42, 0x43]
        );
        // a short batch (two of four) empties the queue and clears the readiness...
        assert_eq!(quinn_receives_batch(&socket).await, [0x44, 0x45]);
        // ...and a datagram arriving afterwards still wakes the next call
        peer.send_to(&quic(7, 20), local).unwrap();
        assert_eq!(quinn_receives_batch(&socket).await, [0x47]);
        // as does one arriving while the call already waits
        let late = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            peer.send_to(&quic(8, 20), local).unwrap();
        });
        assert_eq!(quinn_receives_batch(&socket).await, [0x48]);
        late.await.unwrap();
    }

    #[tokio::test]
    async fn routes_frame_relayed_datagrams_and_present_the_virtual_address() {
        let (divert_tx, mut diverted) = mpsc::channel(16);
        let socket = SharedSocket::bind("127.0.0.1:0".parse().unwrap(), Some(divert_tx)).unwrap();
        let local = socket.local_addr().unwrap();
        let relay = raw();
        let relay_addr = relay.local_addr().unwrap();
        let (turn_tx, turn_rx) = std::sync::mpsc::channel();
        socket.attach_turn_server(relay_addr, move |from, d| {
            let _ = turn_tx.send((from, d.to_vec()));
        });
        let route = TunnelRoute::Relayed {
            server: relay_addr,
            channel: 0x4001,
            peer: "192.0.2.9:5000".parse().unwrap(),
        };
        let virtual_addr = socket.add_route(route);
        assert!(virtual_addr.ip().to_string().starts_with("240."));
        assert_eq!(socket.route(virtual_addr), Some(route));

        // out: two GSO segments become two ChannelData messages to the relay
        let mut contents = quic(1, 100);
        contents.extend(quic(2, 50));
        quinn_sends(
            &socket,
            Transmit {
                destination: virtual_addr,
                ecn: None,
                contents: &contents,
                segment_size: Some(100),
                src_ip: None,
            },
        )
        .await;
        let first = recv_raw(&relay);
        let second = recv_raw(&relay);
        assert_eq!(&first[..4], &[0x40, 0x01, 0, 100]);
        assert_eq!(&first[4..], &contents[..100]);
        assert_eq!(&second[..4], &[0x40, 0x01, 0, 50]);
        assert_eq!(&second[4..], &contents[100..]);

        // in: ChannelData on the tunnel's channel is unwrapped and comes from the virtual address
        let payload = quic(3, 80);
        let mut framed = vec![0x40, 0x01, 0, 80];
        framed.extend(&payload);
        relay.send_to(&framed, local).unwrap();
        assert_eq!(quinn_receives(&socket).await, (virtual_addr, payload));

        // other channels and STUN from the relay go to its handler, not to quinn
        relay.send_to(&[0x40, 0x02, 0, 1, 0xAA], local).unwrap();
        let stun = [
            0x01, 0x01, 0, 0, 0x21, 0x12, 0xA4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        relay.send_to(&stun, local).unwrap();
        let timeout = std::time::Duration::from_secs(2);
        // the handler runs inside poll_recv; nothing reaches quinn
        let short = std::time::Duration::from_millis(300);
        assert_eq!(quinn_receives_within(&socket, short).await, None);
        assert_eq!(
            turn_rx.recv_timeout(timeout).unwrap().1,
            vec![0x40, 0x02, 0, 1, 0xAA]
        );
        assert_eq!(turn_rx.recv_timeout(timeout).unwrap().1, stun.to_vec());

        // switch to a direct path: sends go to the peer, its QUIC comes from the virtual address,
        // the relay's still counts (in flight on the old path)
        let peer = raw();
        let peer_addr = peer.local_addr().unwrap();
        assert!(socket.set_route(virtual_addr, TunnelRoute::Direct(peer_addr)));
        quinn_sends(
            &socket,
            Transmit {
                destination: virtual_addr,
                ecn: None,
                contents: &quic(4, 60),
                segment_size: None,
                src_ip: None,
            },
        )
        .await;
        assert_eq!(recv_raw(&peer), quic(4, 60));
        peer.send_to(&quic(5, 70), local).unwrap();
        assert_eq!(quinn_receives(&socket).await, (virtual_addr, quic(5, 70)));
        relay.send_to(&framed, local).unwrap();
        assert_eq!(quinn_receives(&socket).await, (virtual_addr, quic(3, 80)));

        // strangers are untouched: QUIC keeps its real source, STUN is diverted
        let stranger = raw();
        let stranger_addr = stranger.local_addr().unwrap();
        stranger.send_to(&quic(6, 30), local).unwrap();
        assert_eq!(quinn_receives(&socket).await, (stranger_addr, quic(6, 30)));
        stranger.send_to(&stun, local).unwrap();
        assert_eq!(quinn_receives_within(&socket, short).await, None);
        let got = diverted.try_recv().unwrap();
        assert_eq!((got.from, got.kind), (stranger_addr, PacketKind::Stun));

        // a removed route drops what quinn still sends to it
        socket.remove_route(virtual_addr);
        assert_eq!(socket.route(virtual_addr), None);
        assert!(!socket.set_route(virtual_addr, TunnelRoute::Direct(peer_addr)));
        quinn_sends(
            &socket,
            Transmit {
                destination: virtual_addr,
                ecn: None,
                contents: &quic(7, 10),
                segment_size: None,
                src_ip: None,
            },
        )
        .await;
        peer.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        assert!(peer.recv_from(&mut [0u8; 64]).is_err());
    }
}
