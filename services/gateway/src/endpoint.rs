//! The gateway's QUIC endpoint: one task owns the UDP socket, the `quinn_proto` state machines of
//! the endpoint and of every peer connection, and the transport side of each session — its
//! control stream, frame decoder and outbound queue.
//!
//! Why one task and not quinn's high-level API: that API gives every connection an `Arc`'d state,
//! an unbounded event channel and a driver task (≈ 18 KiB per idle session before any state of
//! ours), and a message crosses several tasks on its way in and out. Here a batch of datagrams
//! (`recvmmsg`) is decrypted, the frames decoded and handed to the session logic
//! ([`crate::connection::Session`]), and the answers encrypted and sent in one pass of one task.
//! Whatever waits on another service runs in a task of its own and comes back as a [`Command`].
//!
//! Messages into the task, through the [`ConnRef`]s that the registry and request tasks hold:
//! - [`Command::Frame`]: a frame for the peer. Events pushed from elsewhere (messages, presence)
//!   count against the peer's queue depth until they are written to the stream;
//! - [`Command::Answer`]: the answer of a request that ran in its own task;
//! - [`Command::Resume`]: the outcome of an operation that holds the stream (challenge, login,
//!   logout); reading resumes after it;
//! - [`Command::Close`]: end the session after the frames queued before it (kick, duplicate
//!   session, expired session).
//!
//! Out of the task go datagrams, and the session logic's tasks. A session ending (the peer left,
//! the connection was lost or closed) is detached here at once; its store and checkpoint cleanup
//! runs in a task the endpoint waits for at shutdown.

use std::collections::{BTreeSet, VecDeque};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prost::Message as _;
use quickp2p_proto::frame::{DecodeFrameError, FrameDecoder};
use quickp2p_proto::v1::{self, ConnectionCloseCode};
use quinn_proto::{self as proto, ConnectionHandle, DatagramEvent, Dir, StreamEvent, StreamId};
use tokio::io::Interest;
use tokio::sync::mpsc;

use crate::connection::{Resumed, Session, Step};
use crate::registry::QueueError;
use crate::{Shared, reject};

/// How long a connection being closed waits for the peer to acknowledge its last frames (an
/// error, a `Kicked` event) before it closes anyway.
const CLOSE_GRACE: Duration = Duration::from_millis(300);
/// After [`crate::DRAIN_TIMEOUT`], connections still open are closed at once; the endpoint then
/// waits this long for them to drain.
const FINAL_DRAIN: Duration = Duration::from_secs(1);
/// Largest piece read from a control stream at once.
const READ_CHUNK: usize = 16 * 1024;
/// A decoder holding this much undecoded input is not fed more until it decoded some.
const READ_AHEAD: usize = quickp2p_proto::frame::MAX_FRAME_LEN + READ_CHUNK;
/// `recvmmsg` calls per wake-up before the other sources get their turn.
const RECV_ROUNDS: usize = 16;
/// Commands handled per wake-up before the other sources get their turn.
const COMMAND_BATCH: usize = 1024;
/// Largest UDP payload received.
const MAX_DATAGRAM: usize = 1500;

/// A connection's identity inside the endpoint: the `quinn_proto` handle (reused after the
/// connection is gone) and a serial number unique in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId {
    slot: usize,
    serial: u64,
}

/// What other tasks ask of a connection. See the module docs.
#[derive(Debug)]
pub(crate) enum Command {
    Frame {
        conn: ConnId,
        frame: Bytes,
        /// Holds one unit of the peer's queue depth until written.
        counted: bool,
    },
    Answer {
        conn: ConnId,
        frame: Bytes,
    },
    Resume {
        conn: ConnId,
        outcome: Box<Resumed>,
    },
    Close {
        conn: ConnId,
        code: ConnectionCloseCode,
        reason: &'static str,
    },
}

/// A handle on one connection for other tasks: queue frames to its peer, answer its requests,
/// close it. Cheap to clone; harmless after the connection is gone (its commands are dropped).
#[derive(Debug, Clone)]
pub struct ConnRef {
    id: ConnId,
    /// Counted frames queued and not yet written to the stream.
    queued: Arc<AtomicU32>,
    depth: u32,
    commands: mpsc::UnboundedSender<Command>,
}

impl ConnRef {
    /// The connection's serial number (unique in this process).
    pub fn id(&self) -> u64 {
        self.id.serial
    }

    /// Queues an event frame to the peer without waiting; refused when the peer's queue is full
    /// (it holds the queue-depth limit of frames not yet written to its stream).
    pub fn push(&self, frame: Bytes) -> Result<(), QueueError> {
        let reserved = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.depth).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(QueueError::Full);
        }
        let command = Command::Frame {
            conn: self.id,
            frame,
            counted: true,
        };
        if self.commands.send(command).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(QueueError::NotAttached);
        }
        Ok(())
    }

    /// Queues a frame that does not count against the queue depth (a `Kicked` event that must
    /// get out even when the queue is full).
    pub(crate) fn push_uncounted(&self, frame: Bytes) {
        let _ = self.commands.send(Command::Frame {
            conn: self.id,
            frame,
            counted: false,
        });
    }

    /// The answer of a request that ran in its own task.
    pub(crate) fn answer(&self, frame: Bytes) {
        let _ = self.commands.send(Command::Answer {
            conn: self.id,
            frame,
        });
    }

    /// The outcome of an operation that holds the stream.
    pub(crate) fn resume(&self, outcome: Resumed) {
        let _ = self.commands.send(Command::Resume {
            conn: self.id,
            outcome: Box::new(outcome),
        });
    }

    /// Ends the session after the frames queued so far, closing the connection with `code`.
    pub fn close(&self, code: ConnectionCloseCode, reason: &'static str) {
        let _ = self.commands.send(Command::Close {
            conn: self.id,
            code,
            reason,
        });
    }
}

/// How a connection is being closed.
#[derive(Debug, Clone, Copy)]
struct Closing {
    code: ConnectionCloseCode,
    reason: &'static str,
    /// The stream's FIN was queued after the last frame.
    finished: bool,
}

/// One connection: the QUIC state machine, the control stream and the session on it.
struct Entry {
    id: ConnId,
    conn: proto::Connection,
    /// The session logic; `None` once the session ended (the connection may still be closing).
    session: Option<Session>,
    queued: Arc<AtomicU32>,
    stream: Option<StreamId>,
    decoder: FrameDecoder,
    /// Frames waiting for room in the stream; `true` = counted against the queue depth.
    out: VecDeque<(Bytes, bool)>,
    /// Frames are not read while an operation holds the stream.
    paused: bool,
    closing: Option<Closing>,
    /// `close` was called on the QUIC connection.
    closed: bool,
    /// No login by then: the connection is closed.
    login_deadline: Option<Instant>,
    /// Closing: close the QUIC connection by then even without the peer's acknowledgement.
    close_at: Option<Instant>,
    /// The deadline registered in the endpoint's timer set.
    timer: Option<Instant>,
    dirty: bool,
}

impl Entry {
    fn deadline(&mut self) -> Option<Instant> {
        [self.conn.poll_timeout(), self.login_deadline, self.close_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Applies what the session logic decided.
    fn apply(&mut self, step: Step, now: Instant) {
        match step {
            Step::Nothing => {}
            Step::Reply(frame) => self.out.push_back((frame, false)),
            Step::Pause => self.paused = true,
            Step::Close(frame, code, reason) => {
                if let Some(frame) = frame {
                    self.out.push_back((frame, false));
                }
                self.begin_close(code, reason, now);
            }
        }
    }

    /// Stops reading, writes what is queued, finishes the stream and closes once the peer has
    /// it all (or after [`CLOSE_GRACE`]).
    fn begin_close(&mut self, code: ConnectionCloseCode, reason: &'static str, now: Instant) {
        if self.closing.is_some() || self.closed {
            return;
        }
        self.paused = true;
        self.closing = Some(Closing {
            code,
            reason,
            finished: false,
        });
        self.close_at = Some(now + CLOSE_GRACE);
        if self.stream.is_none() || !self.conn_usable() {
            self.close_now(now);
        }
    }

    fn conn_usable(&self) -> bool {
        !self.conn.is_closed() && !self.conn.is_drained()
    }

    /// Closes the QUIC connection with the closing code (0 when none was chosen).
    fn close_now(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.close_at = None;
        let (code, reason) = self.closing.map_or((0, ""), |c| (c.code as u32, c.reason));
        if self.conn_usable() {
            self.conn
                .close(now, code.into(), Bytes::from_static(reason.as_bytes()));
        }
    }

    /// Moves queued frames into the stream as far as flow control allows; finishes the stream of
    /// a closing connection once everything is in.
    fn flush_out(&mut self) {
        let Some(id) = self.stream else { return };
        if self.closed {
            return;
        }
        while let Some((frame, counted)) = self.out.front_mut() {
            match self
                .conn
                .send_stream(id)
                .write_chunks(std::slice::from_mut(frame))
            {
                Ok(written) if written.chunks == 1 => {
                    if *counted {
                        self.queued.fetch_sub(1, Ordering::AcqRel);
                    }
                    self.out.pop_front();
                }
                // partly written (the chunk was advanced) or blocked: wait for Writable
                Ok(_) | Err(proto::WriteError::Blocked) => return,
                Err(_) => {
                    // the peer stopped the stream or it is gone: nothing more reaches it
                    self.drop_out();
                    return;
                }
            }
        }
        // an idle session keeps no queue memory
        self.out = VecDeque::new();
        if let Some(closing) = &mut self.closing
            && !closing.finished
        {
            closing.finished = true;
            if self.conn.send_stream(id).finish().is_err() {
                self.close_now(Instant::now());
            }
        }
    }

    /// Drops every queued frame, giving back their queue-depth units.
    fn drop_out(&mut self) {
        let counted = self.out.drain(..).filter(|(_, c)| *c).count();
        if counted > 0 {
            self.queued.fetch_sub(counted as u32, Ordering::AcqRel);
        }
    }
}

/// The endpoint task's state.
pub(crate) struct Driver {
    shared: Arc<Shared>,
    socket: tokio::net::UdpSocket,
    udp: quinn_udp::UdpSocketState,
    endpoint: proto::Endpoint,
    server: Arc<proto::ServerConfig>,
    conns: Vec<Option<Entry>>,
    live: usize,
    timers: BTreeSet<(Instant, usize)>,
    dirty: Vec<usize>,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_tx: mpsc::UnboundedSender<Command>,
    next_serial: u64,
    recv_buf: Box<[u8]>,
    /// `quinn_proto` writes each transmit here.
    send_buf: Vec<u8>,
    /// Datagrams the socket would not take yet (the kernel's buffer was full).
    blocked: VecDeque<(proto::Transmit, Vec<u8>)>,
    /// Shutting down: no new connections; every connection closed by the first instant, the
    /// endpoint gives up waiting at the second.
    stopping: Option<(Instant, Instant)>,
    cleanups: tokio::task::JoinSet<()>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("socket", &self.socket)
            .field("connections", &self.live)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// The endpoint on `socket`, serving with `server`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        socket: std::net::UdpSocket,
        server: proto::ServerConfig,
    ) -> std::io::Result<Driver> {
        socket.set_nonblocking(true)?;
        let udp = quinn_udp::UdpSocketState::new((&socket).into())?;
        // a burst of datagrams to many peers (a broadcast, a presence change) must not find the
        // kernel's buffer full; best effort, the system may cap it
        let _ = udp.set_send_buffer_size((&socket).into(), 4 << 20);
        let _ = udp.set_recv_buffer_size((&socket).into(), 4 << 20);
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let mut endpoint_config = proto::EndpointConfig::default();
        // peers demultiplex one socket by first byte (RFC 9443): never grease the QUIC bit
        endpoint_config.grease_quic_bit(false);
        let server = Arc::new(server);
        let endpoint = proto::Endpoint::new(
            Arc::new(endpoint_config),
            Some(Arc::clone(&server)),
            !udp.may_fragment(),
            None,
        );
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let slots = udp.gro_segments().max(1) * quinn_udp::BATCH_SIZE;
        Ok(Driver {
            shared,
            socket,
            udp,
            endpoint,
            server,
            conns: Vec::new(),
            live: 0,
            timers: BTreeSet::new(),
            dirty: Vec::new(),
            commands,
            commands_tx,
            next_serial: 1,
            recv_buf: vec![0u8; MAX_DATAGRAM * slots].into_boxed_slice(),
            send_buf: Vec::with_capacity(MAX_DATAGRAM),
            blocked: VecDeque::new(),
            stopping: None,
            cleanups: tokio::task::JoinSet::new(),
        })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Serves until shutdown ([`Shared::stop`]) and every connection is gone (or
    /// [`crate::DRAIN_TIMEOUT`] passed), then waits for the sessions' cleanup.
    pub(crate) async fn run(mut self) -> std::io::Result<()> {
        let stop = self.shared.stop.clone();
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        let mut commands = Vec::with_capacity(COMMAND_BATCH);
        loop {
            let next = self.timers.first().map(|(t, _)| *t);
            let next = match (next, self.stopping) {
                (Some(t), Some((close_by, give_up))) => Some(t.min(close_by).min(give_up)),
                (None, Some((close_by, give_up))) => Some(close_by.min(give_up)),
                (t, None) => t,
            };
            if next != armed {
                if let Some(t) = next {
                    sleep.as_mut().reset(t.into());
                }
                armed = next;
            }
            let blocked = !self.blocked.is_empty();
            tokio::select! {
                () = stop.cancelled(), if self.stopping.is_none() => {
                    self.begin_shutdown(Instant::now());
                }
                ready = self.socket.readable(), if !blocked => ready?,
                ready = self.socket.writable(), if blocked => ready?,
                n = self.commands.recv_many(&mut commands, COMMAND_BATCH) => {
                    let now = Instant::now();
                    for command in commands.drain(..n) {
                        self.command(command, now);
                    }
                }
                () = &mut sleep, if armed.is_some() => {}
                Some(_) = self.cleanups.join_next(), if !self.cleanups.is_empty() => {}
            }
            if blocked {
                self.send_blocked();
            }
            if self.blocked.is_empty() {
                self.receive()?;
            }
            let now = Instant::now();
            self.fire_timers(now);
            self.drive_dirty(now);
            if let Some((close_by, give_up)) = self.stopping {
                if now >= close_by {
                    for slot in 0..self.conns.len() {
                        if let Some(entry) = self.conns[slot].as_mut()
                            && !entry.closed
                        {
                            entry.close_now(now);
                            self.mark(slot);
                        }
                    }
                    self.drive_dirty(now);
                }
                if self.live == 0 || now >= give_up {
                    break;
                }
            }
        }
        let _ = tokio::time::timeout(FINAL_DRAIN, async {
            while self.cleanups.join_next().await.is_some() {}
        })
        .await;
        self.cleanups.abort_all();
        Ok(())
    }

    /// Stops accepting, tells every peer to go elsewhere, and closes their connections.
    fn begin_shutdown(&mut self, now: Instant) {
        self.stopping = Some((
            now + crate::DRAIN_TIMEOUT,
            now + crate::DRAIN_TIMEOUT + FINAL_DRAIN,
        ));
        let kicked = crate::kicked_frame(v1::KickReason::GatewayShutdown, "gateway shutting down");
        for slot in 0..self.conns.len() {
            let Some(entry) = self.conns[slot].as_mut() else {
                continue;
            };
            if entry.stream.is_some() && entry.closing.is_none() {
                entry.out.push_back((kicked.clone(), false));
            }
            entry.begin_close(ConnectionCloseCode::GoingAway, "gateway shutting down", now);
            self.mark(slot);
        }
    }

    fn mark(&mut self, slot: usize) {
        if let Some(entry) = self.conns[slot].as_mut()
            && !entry.dirty
        {
            entry.dirty = true;
            self.dirty.push(slot);
        }
    }

    /// The entry of a command's connection, if it is still that connection.
    fn entry(&mut self, id: ConnId) -> Option<&mut Entry> {
        self.conns
            .get_mut(id.slot)
            .and_then(Option::as_mut)
            .filter(|e| e.id == id)
    }

    fn command(&mut self, command: Command, now: Instant) {
        let stopping = self.stopping.is_some();
        let slot = match &command {
            Command::Frame { conn, .. }
            | Command::Answer { conn, .. }
            | Command::Resume { conn, .. }
            | Command::Close { conn, .. } => conn.slot,
        };
        match command {
            Command::Frame {
                conn,
                frame,
                counted,
            } => {
                let Some(entry) = self.entry(conn) else {
                    return;
                };
                if entry.closed || entry.closing.is_some_and(|c| c.finished) {
                    if counted {
                        entry.queued.fetch_sub(1, Ordering::AcqRel);
                    }
                    return;
                }
                entry.out.push_back((frame, counted));
            }
            Command::Answer { conn, frame } => {
                let Some(entry) = self.entry(conn) else {
                    return;
                };
                if let Some(session) = entry.session.as_mut() {
                    session.answered();
                }
                if entry.closed || entry.closing.is_some_and(|c| c.finished) {
                    return;
                }
                entry.out.push_back((frame, false));
            }
            Command::Resume { conn, outcome } => {
                let session = self.entry(conn).and_then(|e| e.session.as_mut());
                let Some(session) = session else {
                    // the session ended while the operation ran: undo what it left behind
                    crate::connection::abandon(
                        &self.shared,
                        *outcome,
                        &mut self.cleanups,
                        stopping,
                    );
                    return;
                };
                let step = session.resume(*outcome);
                let logged_in = session.logged_in();
                let Some(entry) = self.entry(conn) else {
                    return;
                };
                if entry.closing.is_none() {
                    entry.paused = false;
                }
                entry.apply(step, now);
                if logged_in {
                    entry.login_deadline = None;
                }
            }
            Command::Close { conn, code, reason } => {
                let Some(entry) = self.entry(conn) else {
                    return;
                };
                entry.begin_close(code, reason, now);
            }
        }
        self.mark(slot);
    }

    /// Takes what the socket has (up to [`RECV_ROUNDS`] batches) into the state machines.
    fn receive(&mut self) -> std::io::Result<()> {
        let now = Instant::now();
        let slot_len = self.recv_buf.len() / quinn_udp::BATCH_SIZE;
        let mut metas = [quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE];
        for _ in 0..RECV_ROUNDS {
            let mut drained = None;
            let received = {
                let mut bufs = self.recv_buf.chunks_mut(slot_len).map(IoSliceMut::new);
                let mut iovs: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] = std::array::from_fn(|_| {
                    bufs.next().unwrap_or_else(|| IoSliceMut::new(&mut []))
                });
                let (socket, udp) = (&self.socket, &self.udp);
                // a short batch emptied the queue: reporting WouldBlock along with it clears the
                // readiness now instead of after one more recvmmsg that would find nothing (a
                // datagram arriving meanwhile is a new readiness event, which the clear keeps)
                let result = socket.try_io(Interest::READABLE, || {
                    let n = udp.recv(socket.into(), &mut iovs, &mut metas)?;
                    if n < quinn_udp::BATCH_SIZE {
                        drained = Some(n);
                        return Err(std::io::ErrorKind::WouldBlock.into());
                    }
                    Ok(n)
                });
                drained.map_or(result, Ok)
            };
            let count = match received {
                Ok(count) => count,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                // ICMP errors surface here on some systems; they say nothing trustworthy
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
                Err(e) => return Err(e),
            };
            for (i, meta) in metas.iter().take(count).enumerate() {
                let start = i * slot_len;
                let mut data = BytesMut::from(&self.recv_buf[start..start + meta.len]);
                while !data.is_empty() {
                    let datagram = data.split_to(meta.stride.min(data.len()));
                    self.datagram(now, meta, datagram);
                }
            }
            if drained.is_some() {
                break;
            }
        }
        Ok(())
    }

    /// One datagram into the endpoint state machine.
    fn datagram(&mut self, now: Instant, meta: &quinn_udp::RecvMeta, data: BytesMut) {
        let mut response = Vec::new();
        let ecn = meta.ecn.map(|ecn| match ecn {
            quinn_udp::EcnCodepoint::Ect0 => proto::EcnCodepoint::Ect0,
            quinn_udp::EcnCodepoint::Ect1 => proto::EcnCodepoint::Ect1,
            quinn_udp::EcnCodepoint::Ce => proto::EcnCodepoint::Ce,
        });
        match self
            .endpoint
            .handle(now, meta.addr, meta.dst_ip, ecn, data, &mut response)
        {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(entry) = self.conns.get_mut(handle.0).and_then(Option::as_mut) {
                    entry.conn.handle_event(event);
                    self.mark(handle.0);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.accept(incoming, now),
            Some(DatagramEvent::Response(transmit)) => self.send(&transmit, &response),
            None => {}
        }
    }

    /// Accepts a new connection (refuses it while shutting down).
    fn accept(&mut self, incoming: proto::Incoming, now: Instant) {
        let mut response = Vec::new();
        if self.stopping.is_some() {
            let transmit = self.endpoint.refuse(incoming, &mut response);
            self.send(&transmit, &response);
            return;
        }
        let accepted =
            self.endpoint
                .accept(incoming, now, &mut response, Some(Arc::clone(&self.server)));
        let (handle, conn) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(error = %e.cause, "connection refused");
                if let Some(transmit) = e.response {
                    self.send(&transmit, &response);
                }
                return;
            }
        };
        let id = ConnId {
            slot: handle.0,
            serial: self.next_serial,
        };
        self.next_serial += 1;
        let queued = Arc::new(AtomicU32::new(0));
        let conn_ref = ConnRef {
            id,
            queued: Arc::clone(&queued),
            depth: u32::try_from(self.shared.config.limits.queue_depth).unwrap_or(u32::MAX),
            commands: self.commands_tx.clone(),
        };
        if self.conns.len() <= handle.0 {
            self.conns.resize_with(handle.0 + 1, || None);
        }
        if let Some(old) = self.conns[handle.0].take() {
            // quinn_proto reuses a handle only after the drain we remove entries on
            tracing::error!(
                slot = handle.0,
                serial = old.id.serial,
                "connection slot reused"
            );
            if let Some(t) = old.timer {
                self.timers.remove(&(t, handle.0));
            }
            self.live -= 1;
        }
        self.conns[handle.0] = Some(Entry {
            id,
            conn,
            session: Some(Session::new(Arc::clone(&self.shared), conn_ref)),
            queued,
            stream: None,
            decoder: FrameDecoder::new(),
            out: VecDeque::new(),
            paused: false,
            closing: None,
            closed: false,
            login_deadline: Some(now + self.shared.config.login_timeout),
            close_at: None,
            timer: None,
            dirty: false,
        });
        self.live += 1;
        metrics::gauge!("qp_gateway_connections").set(self.live as f64);
        self.mark(handle.0);
    }

    /// Handles the timers that are due.
    fn fire_timers(&mut self, now: Instant) {
        while let Some(&(at, slot)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(entry) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            entry.timer = None;
            if entry.conn.poll_timeout().is_some_and(|t| t <= now) {
                entry.conn.handle_timeout(now);
            }
            if entry.login_deadline.is_some_and(|t| t <= now) {
                entry.login_deadline = None;
                login_expired(entry, now);
            }
            if entry.close_at.is_some_and(|t| t <= now) {
                entry.close_now(now);
            }
            self.mark(slot);
        }
    }

    fn drive_dirty(&mut self, now: Instant) {
        while let Some(slot) = self.dirty.pop() {
            self.drive(slot, now);
        }
    }

    /// Brings one connection up to date: its events, its stream, its datagrams, its timer.
    fn drive(&mut self, slot: usize, now: Instant) {
        let stopping = self.stopping.is_some();
        let handle = ConnectionHandle(slot);
        let Some(entry) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        entry.dirty = false;
        let mut drained = false;
        // each round may make more work for the next (an answer frees flow-control credit); the
        // bound only guards against a state machine that never settles
        for _ in 0..8 {
            let mut progress = false;
            while let Some(event) = entry.conn.poll() {
                progress = true;
                connection_event(entry, event, now);
            }
            if !entry.paused && entry.session.is_some() && !entry.read_frames(now) {
                // the peer ended its stream: it is leaving
                entry.drop_out();
                entry.close_now(now);
            }
            // the one place a session ends: its connection is closing, closed or lost
            if entry.closing.is_some() || entry.closed {
                end_session(entry, &mut self.cleanups, stopping);
            }
            entry.flush_out();
            while let Some(event) = entry.conn.poll_endpoint_events() {
                progress = true;
                drained |= event.is_drained();
                if let Some(event) = self.endpoint.handle_event(handle, event) {
                    entry.conn.handle_event(event);
                }
            }
            if !progress {
                break;
            }
        }
        loop {
            self.send_buf.clear();
            let Some(transmit) = entry.conn.poll_transmit(now, 1, &mut self.send_buf) else {
                break;
            };
            send_datagram(
                &self.socket,
                &self.udp,
                &mut self.blocked,
                &transmit,
                &self.send_buf,
            );
        }
        if drained || entry.conn.is_drained() {
            end_session(entry, &mut self.cleanups, stopping);
            entry.drop_out();
            if let Some(t) = entry.timer {
                self.timers.remove(&(t, slot));
            }
            self.conns[slot] = None;
            self.live -= 1;
            metrics::gauge!("qp_gateway_connections").set(self.live as f64);
            return;
        }
        let next = entry.deadline();
        if next != entry.timer {
            if let Some(t) = entry.timer {
                self.timers.remove(&(t, slot));
            }
            if let Some(t) = next {
                self.timers.insert((t, slot));
            }
            entry.timer = next;
        }
    }

    /// Sends a datagram the endpoint made (a stateless answer, a refusal).
    fn send(&mut self, transmit: &proto::Transmit, contents: &[u8]) {
        send_datagram(
            &self.socket,
            &self.udp,
            &mut self.blocked,
            transmit,
            contents,
        );
    }

    /// Sends what waited for room in the socket's buffer.
    fn send_blocked(&mut self) {
        let mut waiting = std::mem::take(&mut self.blocked);
        while let Some((transmit, contents)) = waiting.pop_front() {
            send_datagram(
                &self.socket,
                &self.udp,
                &mut self.blocked,
                &transmit,
                &contents,
            );
            if !self.blocked.is_empty() {
                self.blocked.extend(waiting);
                break;
            }
        }
    }
}

/// Sends one datagram now, or keeps it for when the socket has room. Other errors lose the
/// datagram (QUIC recovers from loss) and are logged.
fn send_datagram(
    socket: &tokio::net::UdpSocket,
    udp: &quinn_udp::UdpSocketState,
    blocked: &mut VecDeque<(proto::Transmit, Vec<u8>)>,
    transmit: &proto::Transmit,
    contents: &[u8],
) {
    let contents = &contents[..transmit.size];
    if !blocked.is_empty() {
        blocked.push_back((copy_transmit(transmit), contents.to_vec()));
        return;
    }
    let datagram = quinn_udp::Transmit {
        destination: transmit.destination,
        ecn: transmit
            .ecn
            .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
        contents,
        segment_size: transmit.segment_size,
        src_ip: transmit.src_ip,
    };
    match socket.try_io(Interest::WRITABLE, || udp.send(socket.into(), &datagram)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            blocked.push_back((copy_transmit(transmit), contents.to_vec()));
        }
        Err(e) => {
            tracing::debug!(error = %e, to = %transmit.destination, "datagram not sent");
        }
    }
}

fn copy_transmit(t: &proto::Transmit) -> proto::Transmit {
    proto::Transmit {
        destination: t.destination,
        ecn: t.ecn,
        size: t.size,
        segment_size: t.segment_size,
        src_ip: t.src_ip,
    }
}

/// Ends the session on a connection (once): detached here, cleanup in a task.
fn end_session(entry: &mut Entry, cleanups: &mut tokio::task::JoinSet<()>, stopping: bool) {
    if let Some(session) = entry.session.take() {
        session.end(stopping, cleanups);
    }
}

/// A connection's login deadline passed.
fn login_expired(entry: &mut Entry, now: Instant) {
    if entry.session.as_ref().is_none_or(Session::logged_in) {
        return;
    }
    if entry.conn.is_handshaking() {
        // never got as far as TLS: nothing to say
        entry.close_now(now);
    } else if entry.stream.is_none() {
        entry.begin_close(ConnectionCloseCode::IdleTimeout, "no control stream", now);
    } else {
        reject("login_timeout");
        entry.begin_close(ConnectionCloseCode::IdleTimeout, "no login in time", now);
    }
}

/// One event of a connection's state machine.
fn connection_event(entry: &mut Entry, event: proto::Event, now: Instant) {
    match event {
        proto::Event::ConnectionLost { reason } => {
            tracing::debug!(%reason, serial = entry.id.serial, "connection lost");
            entry.closed = true;
            entry.close_at = None;
            entry.paused = true;
            entry.drop_out();
        }
        proto::Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
            while let Some(id) = entry.conn.streams().accept(Dir::Bi) {
                if entry.stream.is_none() && entry.closing.is_none() {
                    entry.stream = Some(id);
                } else {
                    // one control stream per connection
                    let _ = entry.conn.recv_stream(id).stop(0u32.into());
                    let _ = entry.conn.send_stream(id).reset(0u32.into());
                }
            }
        }
        proto::Event::Stream(StreamEvent::Finished { id })
            if Some(id) == entry.stream && entry.closing.is_some() =>
        {
            // the peer has every frame we sent, the last one included
            entry.close_now(now);
        }
        proto::Event::Stream(StreamEvent::Stopped { id, .. }) if Some(id) == entry.stream => {
            // the peer reads no more: it is leaving
            entry.drop_out();
            entry.close_now(now);
        }
        _ => {}
    }
}

impl Entry {
    /// Decodes and handles the frames on the control stream until the session pauses or closes,
    /// or the stream has nothing more for now. False when the peer ended the stream.
    fn read_frames(&mut self, now: Instant) -> bool {
        let remote = self.conn.remote_address();
        let mut ended = false;
        loop {
            while !self.paused {
                let Some(session) = self.session.as_mut() else {
                    return true;
                };
                let step = match self.decoder.next_frame() {
                    Ok(Some(payload)) => match v1::PeerRequest::decode(payload) {
                        Ok(request) => session.on_request(request, remote),
                        Err(e) => crate::connection::undecodable(&e),
                    },
                    Ok(None) => break,
                    Err(DecodeFrameError::TooLarge { .. }) => {
                        reject("frame_too_large");
                        Step::Close(
                            None,
                            ConnectionCloseCode::FrameTooLarge,
                            "frame larger than 65536 bytes",
                        )
                    }
                    Err(_) => {
                        reject("protocol_violation");
                        Step::Close(
                            None,
                            ConnectionCloseCode::ProtocolViolation,
                            "invalid frame length prefix",
                        )
                    }
                };
                self.apply(step, now);
            }
            // an idle session keeps no buffer (an emptied one may pin its last datagram)
            self.decoder.release_if_empty();
            if self.paused {
                return true;
            }
            if ended {
                return false;
            }
            let Some(id) = self.stream else {
                return true;
            };
            let mut recv = self.conn.recv_stream(id);
            let Ok(mut chunks) = recv.read(true) else {
                return false;
            };
            let mut got = false;
            loop {
                match chunks.next(READ_CHUNK) {
                    Ok(Some(chunk)) => {
                        self.decoder.feed(&chunk.bytes);
                        got = true;
                        if self.decoder.buffered() >= READ_AHEAD {
                            break;
                        }
                    }
                    Ok(None) | Err(proto::ReadError::Reset(_)) => {
                        ended = true;
                        break;
                    }
                    Err(proto::ReadError::Blocked) => break,
                }
            }
            let _ = chunks.finalize();
            if !got && !ended {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn conn_ref(depth: u32) -> (ConnRef, mpsc::UnboundedReceiver<Command>) {
        let (commands, rx) = mpsc::unbounded_channel();
        let conn = ConnRef {
            id: ConnId { slot: 3, serial: 7 },
            queued: Arc::new(AtomicU32::new(0)),
            depth,
            commands,
        };
        (conn, rx)
    }

    #[test]
    fn pushes_beyond_the_queue_depth_are_refused_until_frames_are_written() {
        let (conn, mut rx) = conn_ref(2);
        assert_eq!(conn.push(Bytes::from_static(b"a")), Ok(()));
        assert_eq!(conn.push(Bytes::from_static(b"b")), Ok(()));
        assert_eq!(conn.push(Bytes::from_static(b"c")), Err(QueueError::Full));
        // answers and kicks do not count against the depth, and still get through
        conn.answer(Bytes::from_static(b"answer"));
        conn.push_uncounted(Bytes::from_static(b"kicked"));
        let mut counted = 0;
        while let Ok(command) = rx.try_recv() {
            match command {
                Command::Frame { counted: true, .. } => counted += 1,
                Command::Frame { counted: false, .. } | Command::Answer { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(counted, 2);
        // the endpoint wrote one frame to the stream: one more fits
        conn.queued.fetch_sub(1, Ordering::AcqRel);
        assert_eq!(conn.push(Bytes::from_static(b"d")), Ok(()));
        assert_eq!(conn.push(Bytes::from_static(b"e")), Err(QueueError::Full));
    }

    #[test]
    fn a_push_to_a_gone_endpoint_is_not_attached_and_holds_no_depth() {
        let (conn, rx) = conn_ref(1);
        drop(rx);
        assert_eq!(
            conn.push(Bytes::from_static(b"a")),
            Err(QueueError::NotAttached)
        );
        assert_eq!(conn.queued.load(Ordering::Acquire), 0);
        assert_eq!(conn.id(), 7);
    }
}
