//! The UDP side of the driver: binding the primary and alternate ports, and one receive thread
//! per socket that hands each datagram to the [`StunResponder`](crate::server::StunResponder) and
//! carries out the [`Action`] it returns.
//!
//! Each port has `workers` sockets (SO_REUSEPORT when more than one, so the kernel spreads
//! clients over them by their address), each served by a dedicated OS thread — the loop never
//! awaits anything, so it does not need the async runtime, only a handle to it for forwards to the
//! partner. A thread takes up to [`BATCH`] datagrams per system call (`recvmmsg`, waiting for the
//! first one at most [`POLL_INTERVAL`] so it sees shutdown), answers them all, and sends the
//! answers that leave from its own socket with one `sendmmsg`; answers from the other port
//! (change-port) leave through the same-numbered socket of that port with a plain `sendto`. On a
//! busy server that is about two system calls per batch instead of two per datagram; both calls
//! come from the `nix` crate, so this crate keeps `unsafe_code = "forbid"`.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
use quickp2p_service_kit::Shutdown;
use socket2::{Domain, Protocol, Socket, Type};

use crate::server::{Action, LocalPort, Reply, ReplyKind};
use crate::{DropReason, Shared};

/// Most datagrams taken (and answers sent) per system call.
pub const BATCH: usize = 32;

/// How long a receive thread waits for a datagram before it looks at the shutdown token.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Kernel receive buffer asked for each socket: absorbs bursts while a thread is busy.
const RECV_BUFFER: usize = 4 << 20;

/// The sockets of both ports, `workers` of each.
#[derive(Debug)]
pub(crate) struct UdpSockets {
    primary: Vec<UdpSocket>,
    alternate: Vec<UdpSocket>,
}

impl UdpSockets {
    /// Binds `workers` sockets on each port. Port 0 picks a free port for the first socket; the
    /// others join it.
    pub(crate) fn bind(
        ip: IpAddr,
        primary: u16,
        alternate: u16,
        workers: usize,
    ) -> Result<UdpSockets, (LocalPort, SocketAddr, io::Error)> {
        let primary_sockets = bind_port(SocketAddr::new(ip, primary), workers)
            .map_err(|(a, e)| (LocalPort::Primary, a, e))?;
        let alternate_sockets = bind_port(SocketAddr::new(ip, alternate), workers)
            .map_err(|(a, e)| (LocalPort::Alternate, a, e))?;
        Ok(UdpSockets {
            primary: primary_sockets,
            alternate: alternate_sockets,
        })
    }

    /// The sockets of one port.
    fn of(&self, port: LocalPort) -> &[UdpSocket] {
        match port {
            LocalPort::Primary => &self.primary,
            LocalPort::Alternate => &self.alternate,
        }
    }

    /// Socket `index` of `port` (the first one when there is no such index).
    pub(crate) fn socket(&self, port: LocalPort, index: usize) -> Option<&UdpSocket> {
        let sockets = self.of(port);
        sockets.get(index).or_else(|| sockets.first())
    }

    /// Sends one datagram from `port` (its first socket).
    pub(crate) fn send_to(
        &self,
        port: LocalPort,
        bytes: &[u8],
        to: SocketAddr,
    ) -> io::Result<usize> {
        self.socket(port, 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no socket"))?
            .send_to(bytes, to)
    }

    /// The local address of a port.
    pub(crate) fn local_addr(&self, port: LocalPort) -> io::Result<SocketAddr> {
        self.of(port)
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no socket"))?
            .local_addr()
    }

    /// How many sockets each port has.
    pub(crate) fn workers(&self) -> usize {
        self.primary.len()
    }
}

fn bind_port(addr: SocketAddr, workers: usize) -> Result<Vec<UdpSocket>, (SocketAddr, io::Error)> {
    let mut sockets = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let socket = bind_one(addr, workers > 1).map_err(|e| (addr, e))?;
        if addr.port() == 0 {
            addr = socket.local_addr().map_err(|e| (addr, e))?;
        }
        sockets.push(socket);
    }
    Ok(sockets)
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    socket.bind(&addr.into())?;
    socket.set_read_timeout(Some(POLL_INTERVAL))?;
    Ok(socket.into())
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// Serves socket `index` of `port` on the calling thread until `shutdown` is cancelled. Must run
/// inside the runtime's context (forwards spawn tasks).
pub(crate) fn serve(shared: &Shared, port: LocalPort, index: usize, shutdown: &Shutdown) {
    let Some(socket) = shared.sockets.socket(port, index) else {
        return;
    };
    let fd = socket.as_raw_fd();
    let size = shared.responder.config().max_request_size + 1;
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; size]).collect();
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(256)).collect();
    let mut rx = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut tx = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut received: Vec<(usize, Option<SocketAddr>)> = Vec::with_capacity(BATCH);
    // (index into outs, destination, kind) of the answers leaving from this socket
    let mut batch: Vec<(usize, SockaddrStorage, ReplyKind)> = Vec::with_capacity(BATCH);
    while !shutdown.is_cancelled() {
        received.clear();
        {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(b.as_mut_slice())])
                .collect();
            match recvmmsg(
                fd,
                &mut rx,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(results) => {
                    received
                        .extend(results.map(|r| (r.bytes, r.address.as_ref().and_then(to_std))));
                }
                // the poll interval passed, or a signal
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => {
                    // e.g. an ICMP error reported on the socket: nothing to do with the next one
                    tracing::debug!(error = %e, port = port.as_str(), "UDP receive error");
                    continue;
                }
            }
        }
        let now = Instant::now();
        batch.clear();
        for (i, &(len, source)) in received.iter().enumerate() {
            shared.counters.request();
            let (Some(buf), Some(out), Some(source)) = (bufs.get(i), outs.get_mut(i), source)
            else {
                shared.counters.dropped(DropReason::Malformed);
                continue;
            };
            let datagram = buf.get(..len).unwrap_or(&[]);
            match shared
                .responder
                .handle_datagram(datagram, source, port, now, out)
            {
                Action::Reply(reply) if reply.from == port => {
                    batch.push((i, SockaddrStorage::from(reply.to), reply.kind));
                }
                Action::Reply(reply) => send_one(shared, index, reply, out),
                Action::Forward(request) => shared.forwarder.forward(request),
                Action::Drop(reason) => shared.counters.dropped(reason),
            }
        }
        if batch.is_empty() {
            continue;
        }
        let sent = {
            let slices: Vec<[IoSlice<'_>; 1]> = batch
                .iter()
                .map(|(i, _, _)| [IoSlice::new(outs.get(*i).map_or(&[][..], Vec::as_slice))])
                .collect();
            let addresses: Vec<Option<SockaddrStorage>> =
                batch.iter().map(|(_, to, _)| Some(*to)).collect();
            let no_cmsgs: [ControlMessage<'_>; 0] = [];
            match sendmmsg(
                fd,
                &mut tx,
                slices.iter(),
                &addresses,
                no_cmsgs,
                MsgFlags::empty(),
            ) {
                Ok(results) => results.count(),
                Err(e) => {
                    tracing::debug!(error = %e, port = port.as_str(), "sendmmsg failed");
                    0
                }
            }
        };
        for (k, (i, to, kind)) in batch.iter().enumerate() {
            if k < sent {
                shared.counters.response(*kind, port);
                continue;
            }
            // not taken by sendmmsg (an error on that datagram): one more try, alone
            let retried = match (outs.get(*i), to_std(to)) {
                (Some(bytes), Some(to)) => socket.send_to(bytes, to).is_ok(),
                _ => false,
            };
            if retried {
                shared.counters.response(*kind, port);
            } else {
                shared.counters.dropped(DropReason::SendFailed);
            }
        }
    }
}

/// Sends one answer from socket `index` of the reply's port.
fn send_one(shared: &Shared, index: usize, reply: Reply, bytes: &[u8]) {
    let Some(socket) = shared.sockets.socket(reply.from, index) else {
        shared.counters.dropped(DropReason::SendFailed);
        return;
    };
    match socket.send_to(bytes, reply.to) {
        Ok(_) => shared.counters.response(reply.kind, reply.from),
        Err(e) => {
            tracing::debug!(error = %e, to = %reply.to, "cannot send a STUN answer");
            shared.counters.dropped(DropReason::SendFailed);
        }
    }
}

/// The destination as the kernel will see it (tests).
#[cfg(test)]
pub(crate) fn round_trip(addr: SocketAddr) -> Option<SocketAddr> {
    to_std(&SockaddrStorage::from(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_convert_both_ways() {
        for a in ["192.0.2.1:3478", "[2001:db8::1]:5000"] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(round_trip(addr), Some(addr));
        }
    }
}
