//! The tokio driver: runs a [`Punch`] on the session's main socket (or a plain UDP socket) plus the
//! birthday side's extra sockets, and hands back the selected path.
//!
//! One loop: send everything the machine has due, then wait for a datagram on the main socket,
//! a datagram from one of the extra sockets' reader tasks (one task per extra socket, forwarding
//! `(socket number, source, bytes)` over a channel), or the machine's next timer. Time comes from
//! `tokio::time::Instant`, so paused-clock tests work. On the session socket a full send buffer
//! loses the probe (sends there never wait); tokio sockets wait for room. The schedule repeats lost
//! probes.
//!
//! Openers ([`Transmit::ttl`], extra sockets only) are sent after setting the extra socket's
//! `IP_TTL` to the opener TTL; the socket's original TTL is restored before its first normal
//! datagram. Where the TTL cannot be set (e.g. a native IPv6 socket, which tokio gives no hop-limit
//! setter for) the opener is sent at the normal TTL, as without openers.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quickp2p_proto::v1;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::machine::{Punch, PunchState, PunchStats, SelectedPair, Transmit};
use super::plan::{PlanError, PunchPlan};
use crate::session::{NonQuicDatagram, SharedSocket};

/// Largest datagram read from an extra socket (probes are about 150 bytes).
const RECEIVE_BUFFER: usize = 2048;

/// The socket the punch runs on besides the extra sockets it opens itself.
#[derive(Debug)]
pub enum MainSocket<'a> {
    /// The session's one socket: probes are sent with [`SharedSocket::send_to`]; received probes
    /// come from `incoming`, the channel the session diverts non-QUIC datagrams to. While the
    /// punch runs it reads that channel alone: non-probe datagrams arriving there are dropped
    /// (logged at debug level).
    Shared {
        /// The session socket.
        socket: &'a SharedSocket,
        /// Its non-QUIC datagrams.
        incoming: &'a mut mpsc::Receiver<NonQuicDatagram>,
    },
    /// A plain UDP socket the punch alone reads while it runs (tests, or a fresh local port for
    /// a retry).
    Udp(&'a UdpSocket),
}

impl MainSocket<'_> {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            MainSocket::Shared { socket, .. } => quinn::AsyncUdpSocket::local_addr(*socket),
            MainSocket::Udp(socket) => socket.local_addr(),
        }
    }

    async fn send(&self, payload: &[u8], to: SocketAddr) -> io::Result<()> {
        match self {
            MainSocket::Shared { socket, .. } => socket.send_to(payload, to),
            // tokio's try_send_to refuses until the reactor has seen the socket writable once
            MainSocket::Udp(socket) => socket.send_to(payload, to).await.map(|_| ()),
        }
    }

    async fn recv(&mut self, buffer: &mut [u8]) -> io::Result<(SocketAddr, Bytes)> {
        match self {
            MainSocket::Shared { incoming, .. } => match incoming.recv().await {
                Some(datagram) => Ok((datagram.from, datagram.payload)),
                None => Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the session's non-QUIC datagram channel closed",
                )),
            },
            MainSocket::Udp(socket) => {
                let (len, from) = socket.recv_from(buffer).await?;
                Ok((
                    from,
                    Bytes::copy_from_slice(buffer.get(..len).unwrap_or_default()),
                ))
            }
        }
    }
}

/// The socket of the selected path.
#[derive(Debug)]
pub enum PathSocket {
    /// The main socket passed in.
    Main,
    /// One of the extra sockets (birthday side); the punch closed the others. Run QUIC on it
    /// (e.g. `into_std()` for quinn).
    Extra(UdpSocket),
}

/// The punched path.
#[derive(Debug)]
pub struct PunchedPath {
    /// Which socket.
    pub socket: PathSocket,
    /// That socket's local address.
    pub local: SocketAddr,
    /// The remote address to run the tunnel to.
    pub remote: SocketAddr,
    /// The remote candidate's kind (a peer-reflexive address counts as REFLEXIVE, a sprayed port
    /// as PREDICTED).
    pub remote_kind: v1::CandidateKind,
    /// Whether the remote address was learned from the other side's probe (not announced).
    pub peer_reflexive: bool,
    /// HOST when the other side saw our local address unchanged, else REFLEXIVE.
    pub local_kind: v1::CandidateKind,
    /// Our address on this path as the other side saw it.
    pub mapped: Option<SocketAddr>,
}

/// A successful punch.
#[derive(Debug)]
pub struct PunchSuccess {
    /// The selected path.
    pub path: PunchedPath,
    /// The attempt's counters.
    pub stats: PunchStats,
}

/// Why a punch produced no path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PunchError {
    /// The plan cannot run.
    #[error("invalid punch plan: {0}")]
    Plan(#[from] PlanError),
    /// The budget ran out without a selected path: fall back to the relay.
    #[error(
        "no direct path within {budget:?}: {} checks sent, {} authenticated probes received, {} datagrams rejected",
        stats.requests_sent, stats.probes_received, stats.rejected.total()
    )]
    NoPath {
        /// The plan's budget.
        budget: Duration,
        /// The attempt's counters.
        stats: Box<PunchStats>,
    },
    /// The birthday side's extra sockets could not be opened.
    #[error("cannot open {count} extra UDP sockets: {source}")]
    ExtraSockets {
        /// How many were asked for.
        count: usize,
        /// The bind error.
        source: io::Error,
    },
    /// The main socket failed (or its datagram channel closed).
    #[error("punch socket failed: {source}")]
    Socket {
        /// The error.
        source: io::Error,
        /// The attempt's counters until then.
        stats: Box<PunchStats>,
    },
}

impl PunchError {
    /// The attempt's counters, when it got as far as punching.
    pub fn stats(&self) -> Option<&PunchStats> {
        match self {
            PunchError::NoPath { stats, .. } | PunchError::Socket { stats, .. } => Some(stats),
            _ => None,
        }
    }
}

/// Runs `plan` on `main` (plus the extra sockets the plan asks for) until a path is selected or
/// the budget runs out. Waits for the plan's start time itself; answers the other side's probes
/// from the moment it is called.
pub async fn punch(plan: &PunchPlan, mut main: MainSocket<'_>) -> Result<PunchSuccess, PunchError> {
    let plan = plan.clone().checked()?;
    let mut machine = Punch::new(&plan, rand::random(), Instant::now().into_std())?;
    let main_local = main.local_addr().map_err(|source| PunchError::Socket {
        source,
        stats: Box::default(),
    })?;
    let count = machine.extra_sockets();
    let bind_ip = match main_local.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let mut extras = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = UdpSocket::bind(SocketAddr::new(bind_ip, 0))
            .await
            .map_err(|source| PunchError::ExtraSockets { count, source })?;
        extras.push(Arc::new(socket));
    }
    let (tx, mut rx) = mpsc::channel::<(usize, SocketAddr, Bytes)>(1024);
    let mut readers = JoinSet::new();
    for (i, socket) in extras.iter().enumerate() {
        let socket = Arc::clone(socket);
        let tx = tx.clone();
        readers.spawn(async move {
            let mut buffer = vec![0u8; RECEIVE_BUFFER];
            loop {
                match socket.recv_from(&mut buffer).await {
                    Ok((len, from)) => {
                        let bytes = Bytes::copy_from_slice(buffer.get(..len).unwrap_or_default());
                        if tx.send((i + 1, from, bytes)).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, socket = i + 1, "punch: receive error on an extra socket");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        });
    }
    drop(tx);
    tracing::debug!(
        role = ?plan.role,
        strategy = ?plan.strategy,
        extra_sockets = count,
        candidates = plan.remote_candidates.len(),
        "punch: starting"
    );
    let mut ttls = extras
        .iter()
        .map(|socket| {
            let normal = socket.ttl().ok();
            TtlState {
                normal,
                current: normal,
            }
        })
        .collect::<Vec<_>>();
    let result = run(&mut machine, &mut main, &extras, &mut ttls, &mut rx).await;
    for (socket, state) in extras.iter().zip(&ttls) {
        if let Some(normal) = state.normal
            && state.current != Some(normal)
        {
            // the selected socket carries the tunnel: back to the normal TTL
            let _ = socket.set_ttl(normal);
        }
    }
    readers.abort_all();
    while readers.join_next().await.is_some() {}
    let stats = machine.stats();
    let selected = match result {
        Ok(Some(selected)) => selected,
        Ok(None) => {
            return Err(PunchError::NoPath {
                budget: plan.budget,
                stats: Box::new(stats),
            });
        }
        Err(source) => {
            return Err(PunchError::Socket {
                source,
                stats: Box::new(stats),
            });
        }
    };
    let (socket, local) = if selected.socket == 0 {
        (PathSocket::Main, main_local)
    } else {
        let chosen = extras.swap_remove(selected.socket - 1);
        drop(extras);
        let socket = Arc::try_unwrap(chosen).map_err(|_| PunchError::Socket {
            source: io::Error::other("the selected extra socket is still shared"),
            stats: Box::new(stats),
        })?;
        let local = socket.local_addr().map_err(|source| PunchError::Socket {
            source,
            stats: Box::new(stats),
        })?;
        (PathSocket::Extra(socket), local)
    };
    let local_kind = if selected.mapped == Some(local) {
        v1::CandidateKind::Host
    } else {
        v1::CandidateKind::Reflexive
    };
    tracing::debug!(remote = %selected.remote, %local, ?stats, "punch: path selected");
    Ok(PunchSuccess {
        path: PunchedPath {
            socket,
            local,
            remote: selected.remote,
            remote_kind: selected.remote_kind,
            peer_reflexive: selected.peer_reflexive,
            local_kind,
            mapped: selected.mapped,
        },
        stats,
    })
}

/// The loop; `Ok(None)` when the budget ran out.
async fn run(
    machine: &mut Punch,
    main: &mut MainSocket<'_>,
    extras: &[Arc<UdpSocket>],
    ttls: &mut [TtlState],
    rx: &mut mpsc::Receiver<(usize, SocketAddr, Bytes)>,
) -> io::Result<Option<SelectedPair>> {
    let mut buffer = vec![0u8; RECEIVE_BUFFER];
    loop {
        let now = Instant::now().into_std();
        while let Some(transmit) = machine.poll_transmit(now) {
            send(main, extras, ttls, &transmit).await;
        }
        match machine.state() {
            PunchState::Selected(selected) if machine.is_done() => return Ok(Some(selected)),
            PunchState::Failed => return Ok(None),
            _ => {}
        }
        let wake = machine
            .poll_timeout()
            .unwrap_or(now + Duration::from_millis(10));
        tokio::select! {
            received = main.recv(&mut buffer) => match received {
                Ok((from, bytes)) => {
                    let disposition = machine.handle_datagram(Instant::now().into_std(), 0, from, &bytes);
                    tracing::trace!(%from, ?disposition, "punch: datagram on the main socket");
                }
                Err(error) if is_transient(&error) => {
                    tracing::debug!(%error, "punch: transient error on the main socket");
                }
                Err(error) => return Err(error),
            },
            Some((socket, from, bytes)) = rx.recv() => {
                machine.handle_datagram(Instant::now().into_std(), socket, from, &bytes);
            }
            () = tokio::time::sleep_until(Instant::from_std(wake)) => {
                machine.handle_timeout(Instant::now().into_std());
            }
        }
    }
}

/// An extra socket's TTL: the one it had when opened, and the one set now (`None`: unknown).
#[derive(Clone, Copy, Debug)]
struct TtlState {
    normal: Option<u32>,
    current: Option<u32>,
}

async fn send(
    main: &MainSocket<'_>,
    extras: &[Arc<UdpSocket>],
    ttls: &mut [TtlState],
    transmit: &Transmit,
) {
    let result = if transmit.socket == 0 {
        main.send(&transmit.payload, transmit.destination).await
    } else {
        match (
            extras.get(transmit.socket - 1),
            ttls.get_mut(transmit.socket - 1),
        ) {
            (Some(socket), Some(state)) => {
                let wanted = transmit.ttl.map(u32::from).or(state.normal);
                if let Some(wanted) = wanted
                    && state.current != Some(wanted)
                {
                    match socket.set_ttl(wanted) {
                        Ok(()) => state.current = Some(wanted),
                        Err(error) => {
                            tracing::debug!(%error, socket = transmit.socket, ttl = wanted, "punch: cannot set the TTL");
                        }
                    }
                }
                socket
                    .send_to(&transmit.payload, transmit.destination)
                    .await
                    .map(|_| ())
            }
            _ => Ok(()),
        }
    };
    if let Err(error) = result {
        // unreachable host candidates, a full buffer: the probe is lost, the schedule repeats it
        tracing::trace!(%error, destination = %transmit.destination, socket = transmit.socket, "punch: send failed");
    }
}

/// ICMP-reported errors and interrupted calls: the socket still works.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// The `PunchReport` of an attempt, for `Session::report_punch_outcome`: the outcome the caller
/// decides (DIRECT once the tunnel's QUIC handshake completed over `path`, RELAYED, FAILED…),
/// this side's counters, and the selected path when there is one. `tunnel_ready_after_ms` is left
/// 0 for the caller to fill in.
pub fn punch_report(
    plan: &PunchPlan,
    outcome: v1::PunchOutcome,
    stats: &PunchStats,
    path: Option<&PunchedPath>,
    detail: &str,
) -> v1::PunchReport {
    let millis = |d: Option<Duration>| {
        d.map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1))
            .unwrap_or(0)
    };
    let mut detail = detail.to_owned();
    if detail.len() > 512 {
        let mut end = 512;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
    }
    let mut report = v1::PunchReport {
        handshake_id: plan.handshake_id.clone().into(),
        attempt: plan.attempt,
        first_probe_after_ms: millis(stats.first_probe_after),
        probes_sent: stats.probes_sent(),
        probes_received: stats.probes_received,
        detail,
        ..Default::default()
    };
    report.set_outcome(outcome);
    if let Some(path) = path {
        report.set_local_candidate_kind(path.local_kind);
        report.set_remote_candidate_kind(path.remote_kind);
        report.remote_address = Some(path.remote.into());
    }
    report
}
