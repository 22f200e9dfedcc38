//! The UDP side of the driver.
//!
//! * **Workers.** The TURN port has `workers` sockets (SO_REUSEPORT above one; the kernel hashes
//!   each client's 4-tuple to one of them, so a client always reaches the same worker). Each
//!   worker task owns a [`TurnServer`] — its clients' allocations — and drains its socket with
//!   non-blocking `try_recv_from` in batches: requests are answered at once with `try_send_to`,
//!   ChannelData and Send indications are relayed with one non-blocking `sendto` on the allocation's
//!   relayed socket (no copy: the payload is a slice of the receive buffer), and Allocate binds a
//!   relayed socket from the port range before the core answers. Sweeps run once a second.
//! * **Allocation tasks.** Every allocation has a task reading its relayed socket, placed on the
//!   workers round-robin (the kernel's hash may put most clients on one worker): a peer's
//!   datagram is checked against the allocation's permissions and channels and goes to the client
//!   from the worker's socket, as ChannelData (the 4-byte header written in place in front of the
//!   payload) or as a Data indication. The task stops when the allocation ends (its handle, held
//!   by the core, cancels it when dropped) or at shutdown.
//!
//! Receives are batched (recvmmsg through `quinn-udp`, up to 32 datagrams per call); equal-sized
//! ChannelData frames a batch brings for one client leave in one UDP GSO `sendmsg`. Nothing on
//! the data path allocates or takes a contended lock; counts gather per thread and
//! reach the shared counters every 50 ms (and on each one-second sweep). A relayed datagram the
//! socket cannot take at once (`WouldBlock`) is dropped, as UDP would.

use std::cell::RefCell;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use quickp2p_service_kit::Shutdown;
use quickp2p_wire::stun::AddressFamily;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::core::{
    AllocationInfo, ClientAction, IndicationIds, PeerVerdict, RelayState, SWEEP_INTERVAL,
    TurnServer, encode_data_indication, write_channel_header,
};
use crate::counters::{Direction, DropReason, RelayCounters};

/// Most datagrams a task handles before it yields.
pub const BATCH: usize = 64;

/// Kernel buffers asked for the TURN sockets (best effort: capped by net.core.*mem_max).
const LISTENER_BUFFER: usize = 4 << 20;

/// Bytes in front of a received peer datagram: room for the ChannelData header.
const HEADROOM: usize = 4;

/// Datagrams one receive call may return (recvmmsg).
const RECV_SLOTS: usize = 32;

/// Size of one receive slot after the headroom: a whole UDP datagram, or several of one
/// source coalesced by GRO (`stride` bytes apart).
const SLOT_LEN: usize = 65_536;

/// Receive buffers for batched receives: each slot has [`HEADROOM`] bytes in front. Allocated
/// zeroed (pages are only touched as datagrams land in them).
struct RecvSlots {
    bufs: [Vec<u8>; RECV_SLOTS],
    metas: [quinn_udp::RecvMeta; RECV_SLOTS],
}

impl RecvSlots {
    fn new() -> RecvSlots {
        RecvSlots {
            bufs: std::array::from_fn(|_| vec![0u8; HEADROOM + SLOT_LEN]),
            metas: [quinn_udp::RecvMeta::default(); RECV_SLOTS],
        }
    }

    /// Receives up to [`RECV_SLOTS`] datagrams with one system call (one without `batch`);
    /// `WouldBlock` when there is none (which clears the socket's readiness).
    fn recv(
        &mut self,
        socket: &UdpSocket,
        batch: Option<&quinn_udp::UdpSocketState>,
    ) -> io::Result<usize> {
        match batch {
            Some(udp) => {
                let mut iov = self
                    .bufs
                    .each_mut()
                    .map(|b| IoSliceMut::new(b.get_mut(HEADROOM..).unwrap_or_default()));
                let metas = &mut self.metas;
                socket.try_io(Interest::READABLE, || {
                    udp.recv(socket.into(), &mut iov, metas)
                })
            }
            None => {
                let [first, ..] = &mut self.bufs;
                let space = first.get_mut(HEADROOM..).unwrap_or_default();
                let (len, addr) = socket.try_recv_from(space)?;
                if let Some(meta) = self.metas.first_mut() {
                    *meta = quinn_udp::RecvMeta {
                        addr,
                        len,
                        stride: len,
                        ..Default::default()
                    };
                }
                Ok(1)
            }
        }
    }
}

/// Batched receive state for `socket`, or `None` (then one datagram per call).
fn batch_state(socket: &UdpSocket) -> Option<quinn_udp::UdpSocketState> {
    match quinn_udp::UdpSocketState::new(socket.into()) {
        Ok(state) => Some(state),
        Err(e) => {
            tracing::debug!(error = %e, "no batched receive on this socket");
            None
        }
    }
}

/// The driver's handle of one allocation's relayed socket, kept by the core. Dropping it (the
/// allocation ended) stops the allocation's task.
#[derive(Debug)]
pub(crate) struct AllocationHandle {
    socket: Arc<UdpSocket>,
    _stop: DropGuard,
}

/// Binds the `workers` sockets of the TURN port (non-blocking, not yet registered with a runtime:
/// each worker thread registers its own). Port 0 picks a free port for the first one.
pub(crate) fn bind_listeners(
    addr: SocketAddr,
    workers: usize,
) -> io::Result<Vec<std::net::UdpSocket>> {
    let mut sockets = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if workers > 1 {
            socket.set_reuse_port(true)?;
        }
        let _ = socket.set_recv_buffer_size(LISTENER_BUFFER);
        let _ = socket.set_send_buffer_size(LISTENER_BUFFER);
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let socket: std::net::UdpSocket = socket.into();
        if addr.port() == 0 {
            addr = socket.local_addr()?;
        }
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Binds a relayed socket on `ip` in `range`, starting at a random port (even ports only when
/// `even`). `None` when every port is taken.
fn bind_relayed(ip: IpAddr, range: (u16, u16), even: bool) -> Option<std::net::UdpSocket> {
    let (low, high) = range;
    let count = u32::from(high) - u32::from(low) + 1;
    let start: u32 = rand::random_range(0..count);
    for i in 0..count {
        let port = low as u32 + (start + i) % count;
        if even && port % 2 == 1 {
            continue;
        }
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        let addr = SocketAddr::new(ip, port);
        let Ok(socket) = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        else {
            return None;
        };
        if socket.set_nonblocking(true).is_err() {
            return None;
        }
        match socket.bind(&addr.into()) {
            Ok(()) => return Some(socket.into()),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => {
                tracing::warn!(error = %e, %addr, "cannot bind a relayed socket");
                return None;
            }
        }
    }
    None
}

/// Per-batch counts, merged into the thread's [`Pending`] counts at the end of each batch.
#[derive(Debug, Default)]
struct BatchTally {
    packets: u64,
    bytes: u64,
    dropped: [u64; DropReason::ALL.len()],
}

impl BatchTally {
    fn relayed(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }

    fn drop(&mut self, reason: DropReason) {
        if let Some(i) = DropReason::ALL.iter().position(|r| *r == reason)
            && let Some(n) = self.dropped.get_mut(i)
        {
            *n += 1;
        }
    }

    /// Moves the batch's counts into this thread's pending counts, which reach the shared
    /// counters every [`FLUSH_EVERY`] (or [`FLUSH_PACKETS`]): the shared atomics are touched by
    /// both worker threads, and bouncing their cache lines on every wake-up costs more than the
    /// relaying.
    fn merge(&mut self, direction: Direction, now: Instant) {
        PENDING.with(|pending| {
            let mut pending = pending.borrow_mut();
            let slot = match direction {
                Direction::ToPeer => &mut pending.to_peer,
                Direction::ToClient => &mut pending.to_client,
            };
            slot.0 += self.packets;
            slot.1 += self.bytes;
            pending.packets += self.packets;
            for (total, n) in pending.dropped.iter_mut().zip(self.dropped.iter_mut()) {
                *total += *n;
                *n = 0;
            }
            let due = pending
                .last
                .is_none_or(|l| now.saturating_duration_since(l) >= FLUSH_EVERY);
            if due || pending.packets >= FLUSH_PACKETS {
                pending.flush(now);
            }
        });
        self.packets = 0;
        self.bytes = 0;
    }
}

/// How often a worker thread's counts reach the shared counters (and `/metrics`).
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
/// Or after this many packets.
const FLUSH_PACKETS: u64 = 4096;

/// Counts of one worker thread not yet added to the shared counters.
#[derive(Debug, Default)]
struct Pending {
    counters: Option<Arc<RelayState>>,
    to_peer: (u64, u64),
    to_client: (u64, u64),
    dropped: [u64; DropReason::ALL.len()],
    packets: u64,
    last: Option<Instant>,
}

impl Pending {
    fn flush(&mut self, now: Instant) {
        self.last = Some(now);
        self.packets = 0;
        let Some(state) = &self.counters else {
            return;
        };
        let counters: &RelayCounters = state.counters();
        for (direction, slot) in [
            (Direction::ToPeer, &mut self.to_peer),
            (Direction::ToClient, &mut self.to_client),
        ] {
            if slot.0 > 0 {
                counters.relayed(direction, slot.0, slot.1);
                *slot = (0, 0);
            }
        }
        for (reason, n) in DropReason::ALL.iter().zip(self.dropped.iter_mut()) {
            if *n > 0 {
                counters.dropped(*reason, *n);
                *n = 0;
            }
        }
    }
}

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
}

/// Adds this thread's pending counts to the shared counters now.
fn flush_pending() {
    PENDING.with(|p| p.borrow_mut().flush(Instant::now()));
}

/// The running workers, so that allocations' peer-side tasks can be placed round-robin: the
/// kernel hashes clients to worker sockets, which can leave one worker with most of the clients;
/// spreading the peer → client half of each allocation over every worker evens the load out.
#[derive(Debug, Default)]
pub(crate) struct Workers {
    entries: std::sync::Mutex<Vec<WorkerEntry>>,
    next: std::sync::atomic::AtomicUsize,
}

/// One running worker: its runtime, its TURN socket and the socket's batch state.
type WorkerEntry = (
    tokio::runtime::Handle,
    Arc<UdpSocket>,
    Option<Arc<quinn_udp::UdpSocketState>>,
);

impl Workers {
    fn register(&self, entry: WorkerEntry) {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(entry);
    }

    /// The next worker's runtime and TURN socket.
    fn pick(&self) -> Option<WorkerEntry> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        entries.get(n % entries.len().max(1)).cloned()
    }
}

/// Runs one worker on a thread of its own with a single-threaded runtime (thread per core, as
/// coturn's relay threads: a worker's allocations, both directions, never leave its thread, so
/// nothing is handed between threads on the data path). Returns when `shutdown` is cancelled.
pub(crate) fn spawn_worker(
    index: usize,
    state: Arc<RelayState>,
    socket: std::net::UdpSocket,
    workers: Arc<Workers>,
    shutdown: Shutdown,
    span: tracing::Span,
) -> io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("qp-relay-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(parent: &span, error = %e, "cannot start a relay worker runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let _entered = span.enter();
                match UdpSocket::from_std(socket) {
                    Ok(socket) => {
                        let socket = Arc::new(socket);
                        let batch = batch_state(&socket).map(Arc::new);
                        workers.register((
                            tokio::runtime::Handle::current(),
                            Arc::clone(&socket),
                            batch.clone(),
                        ));
                        serve_worker(state, socket, batch, workers, shutdown).await
                    }
                    Err(e) => tracing::error!(error = %e, "cannot register the TURN socket"),
                }
            });
            let _ = done.send(());
        })?;
    Ok(finished)
}

/// Serves one socket of the TURN port until `shutdown` is cancelled; its allocations end then.
async fn serve_worker(
    state: Arc<RelayState>,
    socket: Arc<UdpSocket>,
    batch: Option<Arc<quinn_udp::UdpSocketState>>,
    workers: Arc<Workers>,
    shutdown: Shutdown,
) {
    PENDING.with(|p| p.borrow_mut().counters = Some(Arc::clone(&state)));
    let mut core: TurnServer<AllocationHandle> = TurnServer::new(Arc::clone(&state));
    let max = core.max_datagram();
    let mut slots = RecvSlots::new();
    let mut out = Vec::with_capacity(1500);
    let mut tally = BatchTally::default();
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // one waiter on the token for the whole loop, not one per readiness event
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => break,
            _ = sweep.tick() => {
                core.handle_timeout(Instant::now());
                flush_pending();
                continue;
            }
            ready = socket.readable() => {
                if let Err(e) = ready {
                    tracing::error!(error = %e, "TURN socket failed");
                    break;
                }
            }
        }
        let now = Instant::now();
        for _ in 0..BATCH {
            let count = match slots.recv(&socket, batch.as_deref()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "TURN receive error");
                    continue;
                }
            };
            for (slot, meta) in slots.bufs.iter().zip(slots.metas.iter()).take(count) {
                let from = SocketAddr::new(meta.addr.ip().to_canonical(), meta.addr.port());
                let Some(filled) = slot.get(HEADROOM..HEADROOM + meta.len) else {
                    continue;
                };
                for datagram in filled.chunks(meta.stride.max(1)) {
                    let len = datagram.len();
                    if len > max {
                        tally.drop(DropReason::Oversized);
                        continue;
                    }
                    match core.handle_client_datagram(datagram, from, now, &mut out) {
                        ClientAction::Relay { via, peer, payload } => {
                            let bytes = payload.len();
                            match datagram
                                .get(payload)
                                .map(|p| send_now(&via.socket, p, peer))
                            {
                                Some(Ok(_)) => tally.relayed(bytes),
                                _ => tally.drop(DropReason::SendFailed),
                            }
                        }
                        ClientAction::Reply { to } => reply(&socket, &out, to).await,
                        ClientAction::Allocate(pending) => {
                            let config = state.config();
                            let ip = config.relay_ip;
                            let bound =
                                if AddressFamily::of(&SocketAddr::new(ip, 0)) == pending.family {
                                    bind_relayed(ip, config.port_range, pending.even_port)
                                } else {
                                    None
                                };
                            let stop = shutdown.child_token();
                            // the peer-side task goes to the next worker; its socket registers there
                            let (runtime, client_socket, client_batch) =
                                workers.pick().unwrap_or_else(|| {
                                    (
                                        tokio::runtime::Handle::current(),
                                        Arc::clone(&socket),
                                        batch.clone(),
                                    )
                                });
                            let prepared = bound.and_then(|s| {
                                let port = s.local_addr().ok()?.port();
                                let _context = runtime.enter();
                                let socket = Arc::new(UdpSocket::from_std(s).ok()?);
                                Some((port, socket))
                            });
                            let handle = prepared.as_ref().map(|(port, relayed)| {
                                (
                                    *port,
                                    AllocationHandle {
                                        socket: Arc::clone(relayed),
                                        _stop: stop.clone().drop_guard(),
                                    },
                                )
                            });
                            let completed =
                                core.complete_allocation(pending, handle, now, &mut out);
                            if let (Some(info), Some((_, relayed))) =
                                (completed.allocation, prepared)
                            {
                                runtime.spawn(serve_allocation(
                                    Arc::clone(&state),
                                    info,
                                    relayed,
                                    client_socket,
                                    client_batch,
                                    stop,
                                ));
                            }
                            reply(&socket, &out, completed.to).await;
                        }
                        ClientAction::Drop(reason) => tally.drop(reason),
                    }
                }
            }
        }
        tally.merge(Direction::ToPeer, now);
    }
    flush_pending();
    core.close_all();
}

/// Sends one relayed datagram now, or fails (`WouldBlock` when the socket buffer is full: the
/// datagram is dropped, as UDP would). A plain non-blocking `sendto`, not tokio's `try_send_to`:
/// that one refuses to even try until the reactor has seen the socket writable, which loses the
/// first datagrams on a fresh relayed socket and every datagram after a full buffer until the
/// next epoll round.
fn send_now(socket: &UdpSocket, bytes: &[u8], to: SocketAddr) -> io::Result<usize> {
    socket2::SockRef::from(socket).send_to(bytes, &to.into())
}

/// Sends a response, waiting for buffer space if need be.
async fn reply(socket: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    if bytes.is_empty() {
        return;
    }
    let sent = match socket.try_send_to(bytes, to) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.send_to(bytes, to).await,
        other => other,
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, %to, "cannot send a TURN response");
    }
}

/// Receive and send buffers of the allocation tasks on one thread (used only between two
/// awaits, so tasks never share them).
struct Scratch {
    slots: Option<Box<RecvSlots>>,
    out: Vec<u8>,
    run: ChannelRun,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            slots: None,
            out: Vec::new(),
            run: ChannelRun { frames: Vec::new(), segment: 0, count: 0 },
        })
    };
}

/// Most ChannelData frames sent to a client in one system call (UDP GSO).
const MAX_GSO_SEGMENTS: usize = 32;

/// Equal-sized ChannelData frames for one client, sent together with UDP GSO (one `sendmsg`;
/// the kernel cuts them into datagrams) when a batch brought several from the peer.
struct ChannelRun {
    frames: Vec<u8>,
    segment: usize,
    count: usize,
}

impl ChannelRun {
    /// Sends what is gathered to `client`; counts each frame in `tally`.
    fn flush(
        &mut self,
        socket: &UdpSocket,
        batch: Option<&quinn_udp::UdpSocketState>,
        client: SocketAddr,
        tally: &mut BatchTally,
    ) {
        if self.count == 0 {
            return;
        }
        let payload = self.segment - HEADROOM;
        let together = match batch {
            Some(udp) if self.count > 1 => udp
                .try_send(
                    socket.into(),
                    &quinn_udp::Transmit {
                        destination: client,
                        ecn: None,
                        contents: &self.frames,
                        segment_size: Some(self.segment),
                        src_ip: None,
                    },
                )
                .is_ok(),
            _ => false,
        };
        if together {
            for _ in 0..self.count {
                tally.relayed(payload);
            }
        } else {
            for frame in self.frames.chunks(self.segment.max(1)) {
                match send_now(socket, frame, client) {
                    Ok(_) => tally.relayed(payload),
                    Err(_) => tally.drop(DropReason::SendFailed),
                }
            }
        }
        self.frames.clear();
        self.count = 0;
    }
}

/// Relays what peers send to one allocation's relayed socket until the allocation ends.
async fn serve_allocation(
    state: Arc<RelayState>,
    info: Arc<AllocationInfo>,
    relayed: Arc<UdpSocket>,
    client_socket: Arc<UdpSocket>,
    client_batch: Option<Arc<quinn_udp::UdpSocketState>>,
    stop: CancellationToken,
) {
    let max = state.config().max_payload;
    let segments = client_batch
        .as_ref()
        .map_or(1, |b| b.max_gso_segments())
        .clamp(1, MAX_GSO_SEGMENTS);
    let batch = batch_state(&relayed);
    let mut ids = IndicationIds::new(rand::random());
    let mut tally = BatchTally::default();
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => return,
            ready = relayed.readable() => {
                if ready.is_err() {
                    return;
                }
            }
        }
        let now = Instant::now();
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let Scratch { slots, out, run } = &mut *scratch;
            let slots = slots.get_or_insert_with(|| Box::new(RecvSlots::new()));
            let client = info.client;
            let gso = client_batch.as_deref();
            for _ in 0..BATCH {
                let count = match slots.recv(&relayed, batch.as_ref()) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // an ICMP error from an earlier send: nothing to do with the next datagram
                    Err(_) => continue,
                };
                for (slot, meta) in slots.bufs.iter_mut().zip(slots.metas.iter()).take(count) {
                    let peer = SocketAddr::new(meta.addr.ip().to_canonical(), meta.addr.port());
                    let stride = meta.stride.max(1);
                    let mut offset = 0;
                    while offset < meta.len {
                        let len = stride.min(meta.len - offset);
                        let start = HEADROOM + offset;
                        offset += len;
                        if len > max {
                            tally.drop(DropReason::Oversized);
                            continue;
                        }
                        let verdict = info.verdict(peer, now);
                        if matches!(verdict, PeerVerdict::NoPermission) {
                            tally.drop(DropReason::NoPermission);
                            continue;
                        }
                        if !info.user.allow(len, now) {
                            tally.drop(DropReason::BandwidthLimit);
                            continue;
                        }
                        let Some(data) = slot.get(start..start + len) else {
                            continue;
                        };
                        match verdict {
                            PeerVerdict::Channel(channel) if segments > 1 => {
                                // gather equal-sized frames for one GSO send
                                let frame = HEADROOM + len;
                                if run.count > 0 && (run.segment != frame || run.count >= segments)
                                {
                                    run.flush(&client_socket, gso, client, &mut tally);
                                }
                                let at = run.frames.len();
                                run.frames.extend_from_slice(&[0; HEADROOM]);
                                run.frames.extend_from_slice(data);
                                if let Some(header) = run
                                    .frames
                                    .get_mut(at..at + HEADROOM)
                                    .and_then(|h| h.first_chunk_mut::<HEADROOM>())
                                {
                                    write_channel_header(header, channel, len);
                                }
                                run.segment = frame;
                                run.count += 1;
                            }
                            PeerVerdict::Channel(channel) if start == HEADROOM => {
                                // a single datagram: the header goes in place, in front of it
                                if let Some(header) = slot.first_chunk_mut::<HEADROOM>() {
                                    write_channel_header(header, channel, len);
                                }
                                match slot
                                    .get(..HEADROOM + len)
                                    .map(|f| send_now(&client_socket, f, client))
                                {
                                    Some(Ok(_)) => tally.relayed(len),
                                    _ => tally.drop(DropReason::SendFailed),
                                }
                            }
                            PeerVerdict::Channel(channel) => {
                                out.clear();
                                out.extend_from_slice(&[0; HEADROOM]);
                                out.extend_from_slice(data);
                                if let Some(header) = out.first_chunk_mut::<HEADROOM>() {
                                    write_channel_header(header, channel, len);
                                }
                                match send_now(&client_socket, out, client) {
                                    Ok(_) => tally.relayed(len),
                                    Err(_) => tally.drop(DropReason::SendFailed),
                                }
                            }
                            _ => {
                                // keep the client's order: what was gathered goes first
                                run.flush(&client_socket, gso, client, &mut tally);
                                let sent = encode_data_indication(peer, data, ids.next_id(), out)
                                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
                                    .and_then(|_| send_now(&client_socket, out, client));
                                match sent {
                                    Ok(_) => tally.relayed(len),
                                    Err(_) => tally.drop(DropReason::SendFailed),
                                }
                            }
                        }
                    }
                }
                run.flush(&client_socket, gso, client, &mut tally);
            }
            run.flush(&client_socket, gso, client, &mut tally);
        });
        if tally.packets > 0 {
            info.to_client.add(tally.packets, tally.bytes);
        }
        tally.merge(Direction::ToClient, now);
    }
}
