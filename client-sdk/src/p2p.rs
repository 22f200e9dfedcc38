//! Direct, encrypted tunnels between peers, end to end: [`Tunnels`] ties a logged-in
//! [`Session`] (signalling through the gateway and the handshake role), the hole-punching engine
//! ([`crate::punch`]) and the tunnel transport ([`crate::tunnel`]) together.
//!
//! ```no_run
//! # async fn demo(
//! #     session: quickp2p::session::Session,
//! #     bob: quickp2p::session::PeerId,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use quickp2p::p2p::{Tunnels, TunnelsConfig};
//!
//! let config = TunnelsConfig::new().stun("203.0.113.10:3478".parse()?);
//! let tunnels = Tunnels::start(&session, config).await?;
//! let connected = tunnels.open(&bob).await?;
//! println!("path: {:?}", connected.tunnel.path()?);
//! let (mut send, _recv) = connected.tunnel.open_bi().await?;
//! send.write_all(b"hello").await?;
//! # Ok(()) }
//! ```
//!
//! How one tunnel comes about:
//! 1. **Candidates.** The tunnels' own UDP socket (not the session's: this one is read only by
//!    the tunnel machinery) gathers a host candidate and, with a STUN server configured, a
//!    reflexive one from the RFC 5780 mapping tests on that very socket; the NAT's behaviour
//!    (mapping and filtering) is measured once from a separate socket, because the filtering
//!    tests leave state in Linux-based NATs that would change the tunnel socket's later mappings
//!    (DESIGN.md §4), and reported to the gateway ([`Session::report_nat`]).
//! 2. **Signalling.** [`Tunnels::open`] asks the gateway for a tunnel
//!    ([`Session::request_tunnel`]); the other peer's [`Tunnels`] answers the offer with its own
//!    candidates; the handshake role sends both the same instruction with a start time.
//! 3. **Punching.** Both run the instruction's strategy from the start time; meanwhile each
//!    allocates on the instruction's relay and trickles its relay candidate.
//! 4. **Tunnel.** Over the punched path (or, when punching fails or the strategy is relay-only,
//!    through both relay allocations) the initiator opens QUIC to the responder, each side proving
//!    its peer id with its Ed25519 key. Both report the outcome.
//!
//! Once open, a tunnel depends on nothing but the two peers (and the relay, for a relayed one):
//! the session, the gateway, the handshake role and Redis may all go away.
//!
//! Limits: one gathering or punch runs at a time on the tunnels' socket (attempts queue for it;
//! QUIC handshakes and relayed setups run in parallel); one relay allocation per relay server is
//! made on the socket and kept while the [`Tunnels`] live (shared by every relayed tunnel). A
//! relayed tunnel is moved to a direct path when a later punch on the tunnels' socket succeeds
//! (the initiator retries 2 s, 12 s and 42 s after it opened; a direct path that the birthday
//! technique finds on another socket cannot carry an existing tunnel, so that one stays relayed).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quickp2p_proto::v1;
use quickp2p_wire::nat::{FilteringBehaviour, MappingBehaviour};
use quickp2p_wire::{NatDiscovery, NatDiscoveryConfig};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::identity::Identity;
use crate::punch::{self, MainSocket, PathSocket, PunchPlan};
use crate::relay::RelayCredentials;
use crate::session::{
    HandshakeEvent, NonQuicDatagram, PeerId, Session, SessionError, SharedSocket,
};
use crate::tunnel::{Tunnel, TunnelConfig, TunnelEndpoint, TunnelError, TunnelRelay, TunnelRole};

/// How [`Tunnels`] behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TunnelsConfig {
    /// Local address of the tunnels' UDP socket [default: 0.0.0.0:0].
    pub bind: SocketAddr,
    /// A STUN server of the network (stun-a's primary address) for the reflexive candidate and the
    /// NAT report [default: none — host candidates and the relay only].
    pub stun: Option<SocketAddr>,
    /// Whether offers from other peers are answered (tunnels then arrive at
    /// [`Tunnels::accept`]) [default: true].
    pub accept_offers: bool,
    /// Limit on [`Tunnels::open`] from the request to a usable tunnel [default: 30 s].
    pub open_timeout: Duration,
    /// Time the QUIC handshake gets over a punched path before the relay is tried [default: 3 s].
    pub direct_handshake_timeout: Duration,
    /// Time the QUIC handshake gets through the relay [default: 8 s].
    pub relayed_handshake_timeout: Duration,
    /// IP TTL of the birthday side's opener packets: enough to pass this peer's own NAT(s), too
    /// little to reach the far NAT (2 = one NAT; 3 behind a carrier NAT) [default: 2].
    pub opener_ttl: u8,
}

impl Default for TunnelsConfig {
    fn default() -> TunnelsConfig {
        TunnelsConfig {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            stun: None,
            accept_offers: true,
            open_timeout: Duration::from_secs(30),
            direct_handshake_timeout: Duration::from_secs(3),
            relayed_handshake_timeout: Duration::from_secs(8),
            opener_ttl: punch::DEFAULT_OPENER_TTL,
        }
    }
}

impl TunnelsConfig {
    /// The defaults.
    pub fn new() -> TunnelsConfig {
        TunnelsConfig::default()
    }

    /// Uses the STUN server at `stun` (stun-a's primary address).
    #[must_use]
    pub fn stun(mut self, stun: SocketAddr) -> TunnelsConfig {
        self.stun = Some(stun);
        self
    }

    /// Binds the tunnels' socket at `bind`.
    #[must_use]
    pub fn bind(mut self, bind: SocketAddr) -> TunnelsConfig {
        self.bind = bind;
        self
    }

    /// Whether to answer other peers' offers.
    #[must_use]
    pub fn accept_offers(mut self, accept: bool) -> TunnelsConfig {
        self.accept_offers = accept;
        self
    }

    /// Sets the TTL of the birthday side's opener packets (see [`TunnelsConfig::opener_ttl`]).
    #[must_use]
    pub fn opener_ttl(mut self, ttl: u8) -> TunnelsConfig {
        self.opener_ttl = ttl;
        self
    }

    /// Sets the limit on [`Tunnels::open`].
    #[must_use]
    pub fn open_timeout(mut self, timeout: Duration) -> TunnelsConfig {
        self.open_timeout = timeout;
        self
    }
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The session refused or failed the signalling (e.g. `PeerOffline`, `NotPermitted`).
    #[error("signalling failed: {0}")]
    Session(#[from] SessionError),
    /// The handshake ended without a tunnel (declined, timed out, the other peer left).
    #[error("the handshake was closed: {outcome:?}: {reason}")]
    Closed {
        /// How it ended.
        outcome: v1::PunchOutcome,
        /// Why, as the network says.
        reason: String,
    },
    /// Neither a direct path nor the relay gave a tunnel.
    #[error("no tunnel: {0}")]
    Failed(String),
    /// The tunnel transport failed to start.
    #[error("tunnel transport: {0}")]
    Tunnel(#[from] TunnelError),
    /// Nothing usable within [`TunnelsConfig::open_timeout`].
    #[error("no tunnel within {0:?}")]
    Timeout(Duration),
    /// The tunnels' socket could not be opened.
    #[error("tunnel socket: {0}")]
    Socket(#[from] std::io::Error),
}

/// The kind of path a tunnel was opened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// A punched direct path.
    Direct,
    /// Through the relay.
    Relayed,
}

/// An open tunnel and how it came about.
#[derive(Debug)]
pub struct Connected {
    /// The tunnel.
    pub tunnel: Tunnel,
    /// Its path kind when it opened.
    pub kind: PathKind,
    /// The strategy the handshake role chose.
    pub strategy: v1::HandshakeStrategy,
    /// From the scheduled start (the go signal) to the tunnel being usable.
    pub ready_after_go: Duration,
    /// From the call (or the offer) to the tunnel being usable.
    pub elapsed: Duration,
    /// The punch budget of the instruction (a relayed tunnel after a failed punch comes after
    /// it).
    pub punch_budget: Duration,
    /// The negotiation's id.
    pub handshake_id: Vec<u8>,
    /// Our role.
    pub role: TunnelRole,
    /// Keeps a tunnel endpoint of its own alive (the birthday side's winning socket).
    _endpoint: Option<TunnelEndpoint>,
}

/// The tunnels of one session: [`open`](Tunnels::open) to another peer, [`accept`](Tunnels::accept)
/// the ones other peers open. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tunnels {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    session: Session,
    identity: Identity,
    endpoint: TunnelEndpoint,
    config: TunnelsConfig,
    /// Who reads the socket's non-QUIC datagrams now (a gathering or a punch).
    sink: Arc<Mutex<Option<mpsc::Sender<NonQuicDatagram>>>>,
    /// One gathering or punch at a time on the socket.
    exclusive: tokio::sync::Mutex<()>,
    /// The socket's relay allocations, by TURN server, kept while the tunnels live.
    relays: Arc<tokio::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<TunnelRelay>>>>,
    /// The last NAT report of the tunnels' socket.
    nat: Mutex<Option<v1::NatReport>>,
    /// Relayed tunnels by remote peer id, for moving them to a direct path later.
    relayed: Mutex<std::collections::HashMap<String, quinn::Connection>>,
    accepted_tx: mpsc::Sender<Connected>,
    accepted_rx: tokio::sync::Mutex<mpsc::Receiver<Connected>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many established tunnels may wait for [`Tunnels::accept`].
const ACCEPT_BACKLOG: usize = 16;

impl Tunnels {
    /// Opens the tunnels' socket, measures the NAT in front of it (when a STUN server is
    /// configured; the report goes to the gateway) and, unless disabled, starts answering
    /// offers. Tunnels prove the session's identity ([`Session::identity`]).
    pub async fn start(session: &Session, config: TunnelsConfig) -> Result<Tunnels, ConnectError> {
        let identity = session.identity().clone();
        let (divert_tx, mut divert_rx) = mpsc::channel::<NonQuicDatagram>(1024);
        let socket = SharedSocket::bind(config.bind, Some(divert_tx))?;
        let endpoint = TunnelEndpoint::on_socket(socket, identity.clone())?;
        let sink: Arc<Mutex<Option<mpsc::Sender<NonQuicDatagram>>>> = Arc::default();
        let demux_sink = Arc::clone(&sink);
        let demux = tokio::spawn(async move {
            while let Some(datagram) = divert_rx.recv().await {
                let target = lock(&demux_sink).clone();
                match target {
                    Some(target) => {
                        if target.try_send(datagram).is_err() {
                            tracing::debug!("tunnel socket: datagram dropped (reader behind)");
                        }
                    }
                    None => tracing::trace!(from = %datagram.from, "tunnel socket: stray datagram"),
                }
            }
        });
        let (accepted_tx, accepted_rx) = mpsc::channel(ACCEPT_BACKLOG);
        let tunnels = Tunnels {
            inner: Arc::new(Inner {
                session: session.clone(),
                identity,
                endpoint,
                config,
                sink,
                exclusive: tokio::sync::Mutex::new(()),
                relays: Arc::default(),
                nat: Mutex::new(None),
                relayed: Mutex::default(),
                accepted_tx,
                accepted_rx: tokio::sync::Mutex::new(accepted_rx),
                tasks: Mutex::new(vec![demux]),
            }),
        };
        if let Some(stun) = tunnels.inner.config.stun {
            match measure_nat(stun).await {
                Ok(report) => {
                    *lock(&tunnels.inner.nat) = Some(report.clone());
                    if let Err(e) = tunnels.inner.session.report_nat(report).await {
                        tracing::warn!(error = %e, "NAT report not accepted by the gateway");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "NAT behaviour discovery failed"),
            }
        }
        if tunnels.inner.config.accept_offers {
            let weak = Arc::downgrade(&tunnels.inner);
            let events = session.handshake_events();
            let task = tokio::spawn(answer_offers(weak, events));
            lock(&tunnels.inner.tasks).push(task);
        }
        Ok(tunnels)
    }

    /// The tunnels' socket's local address.
    pub fn local_addr(&self) -> Result<SocketAddr, ConnectError> {
        Ok(self.inner.endpoint.local_addr()?)
    }

    /// The last NAT report of the tunnels' socket, if one was measured.
    pub fn nat_report(&self) -> Option<v1::NatReport> {
        lock(&self.inner.nat).clone()
    }

    /// Opens a tunnel to `peer` (of the same application, online): signalling, punching, relay
    /// fallback, QUIC with both identities verified. Errors: [`ConnectError`].
    pub async fn open(&self, peer: &PeerId) -> Result<Connected, ConnectError> {
        let timeout = self.inner.config.open_timeout;
        tokio::time::timeout(timeout, self.open_inner(peer))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))?
    }

    async fn open_inner(&self, peer: &PeerId) -> Result<Connected, ConnectError> {
        let called = Instant::now();
        let mut events = self.inner.session.handshake_events();
        let candidates = self.gather().await?;
        let requested = self
            .inner
            .session
            .request_tunnel(v1::RequestTunnel {
                target: Some(peer.clone()),
                candidates,
                nat_report: self.nat_report(),
                clock: self.inner.session.clock_estimate(),
                retry_of: Vec::new().into(),
            })
            .await?;
        let id = requested.handshake_id.to_vec();
        let (instruction, server_time_us, received_at) = wait_instruction(&mut events, &id).await?;
        self.attempt(instruction, server_time_us, received_at, events, called)
            .await
    }

    /// The next tunnel another peer opened to this one (`None` once the session is gone).
    pub async fn accept(&self) -> Option<Connected> {
        self.inner.accepted_rx.lock().await.recv().await
    }

    /// Host and reflexive candidates of the tunnels' socket (a fresh mapping-only measurement
    /// when a STUN server is configured).
    async fn gather(&self) -> Result<Vec<v1::Candidate>, ConnectError> {
        let local = self.inner.endpoint.local_addr()?;
        // a wildcard bind: the address the routing table picks toward the network
        let host = match self
            .inner
            .config
            .stun
            .or_else(|| self.inner.session.gateway())
        {
            Some(toward) => crate::nat::route_source(local, toward),
            None => local,
        };
        let mut candidates = vec![v1::Candidate {
            kind: v1::CandidateKind::Host.into(),
            address: Some(host.into()),
            priority: 100,
            port_span: 0,
        }];
        if self.inner.config.stun.is_some() {
            let _turn = self.inner.exclusive.lock().await;
            match self.measure().await {
                Ok(report) => {
                    for reflexive in &report.reflexive_addresses {
                        let Some(observed) = reflexive.observed.clone() else {
                            continue;
                        };
                        let duplicate = candidates
                            .iter()
                            .any(|c| c.address.as_ref() == Some(&observed));
                        if !duplicate {
                            candidates.push(v1::Candidate {
                                kind: v1::CandidateKind::Reflexive.into(),
                                address: Some(observed),
                                priority: 200,
                                port_span: 0,
                            });
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "no reflexive candidate"),
            }
        }
        Ok(candidates)
    }

    /// Observes the tunnels' socket's mappings (RFC 5780 mapping tests only: every answer is the
    /// reply of a request the socket sent, so no NAT in front of it keeps state for unsolicited
    /// packets — which would change its later mappings, DESIGN.md §4). The caller holds
    /// `exclusive`.
    async fn measure(&self) -> Result<v1::NatReport, String> {
        let Some(stun) = self.inner.config.stun else {
            return Err("no STUN server configured".to_owned());
        };
        let socket = self.inner.endpoint.socket();
        let local = self
            .inner
            .endpoint
            .local_addr()
            .map_err(|e| e.to_string())?;
        let local = crate::nat::route_source(local, stun);
        let config = NatDiscoveryConfig::default()
            .with_filtering(false)
            .with_hairpinning(false)
            .with_max_duration(Some(Duration::from_secs(3)));
        let mut discovery = NatDiscovery::new(
            stun,
            local,
            config,
            rand::random(),
            Instant::now().into_std(),
        );
        let (tx, mut rx) = mpsc::channel(256);
        *lock(&self.inner.sink) = Some(tx);
        let result = async {
            loop {
                let now = Instant::now().into_std();
                while let Some(transmit) = discovery.poll_transmit(now) {
                    if let Err(e) = socket.send_to(&transmit.payload, transmit.destination) {
                        tracing::debug!(error = %e, "NAT discovery send failed");
                    }
                }
                if discovery.is_done() {
                    break;
                }
                let deadline = discovery
                    .poll_timeout()
                    .map(Instant::from_std)
                    .unwrap_or_else(|| Instant::now() + Duration::from_millis(50));
                tokio::select! {
                    datagram = rx.recv() => match datagram {
                        Some(d) => {
                            discovery.handle_datagram(d.from, &d.payload, Instant::now().into_std());
                        }
                        None => return Err("the tunnel socket closed".to_owned()),
                    },
                    () = tokio::time::sleep_until(deadline) => {
                        discovery.handle_timeout(Instant::now().into_std());
                    }
                }
            }
            discovery
                .into_result()
                .ok_or_else(|| "STUN server unreachable".to_owned())
        }
        .await;
        *lock(&self.inner.sink) = None;
        let report = result?;
        Ok(nat_report_to_proto(&report, local))
    }

    /// Runs one attempt of a negotiation from its instruction to an open tunnel.
    async fn attempt(
        &self,
        instruction: v1::HandshakeInstruction,
        server_time_us: u64,
        received_at: std::time::Instant,
        mut events: broadcast::Receiver<HandshakeEvent>,
        called: Instant,
    ) -> Result<Connected, ConnectError> {
        let inner = &self.inner;
        let id = instruction.handshake_id.to_vec();
        let remote = instruction
            .remote_peer
            .clone()
            .ok_or_else(|| ConnectError::Failed("instruction without a remote peer".to_owned()))?;
        let role = TunnelRole::from_proto(instruction.role())
            .ok_or_else(|| ConnectError::Failed("instruction without a role".to_owned()))?;
        let schedule = instruction.schedule.unwrap_or_default();
        let start = punch::local_start(
            schedule.start_at_us,
            inner.session.clock_estimate().as_ref(),
            server_time_us,
            received_at,
            Duration::ZERO,
        );
        let start_tokio = Instant::from_std(start);
        let strategy = instruction.strategy();
        let punch_budget = Duration::from_millis(u64::from(schedule.budget_ms));

        // the relay fallback gets ready meanwhile; its candidate is trickled to the other side
        let relay_task = instruction.relay.clone().and_then(|grant| {
            let server = grant
                .servers
                .first()
                .and_then(|s| SocketAddr::try_from(s).ok())?;
            let socket = Arc::clone(inner.endpoint.socket());
            let session = inner.session.clone();
            let relays = Arc::clone(&inner.relays);
            let (id, attempt) = (instruction.handshake_id.clone(), instruction.attempt);
            Some(tokio::spawn(async move {
                let credentials = RelayCredentials {
                    username: grant.username,
                    password: grant.password,
                };
                // one allocation per relay server on this socket (a second one from the same
                // 5-tuple is refused with 437), shared by every tunnel through it
                let relay = {
                    let mut relays = relays.lock().await;
                    match relays.get(&server) {
                        Some(relay) => Arc::clone(relay),
                        None => {
                            let relay = TunnelRelay::allocate(&socket, server, credentials).await?;
                            relays.insert(server, Arc::clone(&relay));
                            relay
                        }
                    }
                };
                let candidate = v1::Candidate {
                    kind: v1::CandidateKind::Relay.into(),
                    address: Some(relay.relayed_addr().into()),
                    priority: 10,
                    port_span: 0,
                };
                if let Err(e) = session
                    .share_candidates(v1::ShareCandidates {
                        handshake_id: id,
                        attempt,
                        candidates: vec![candidate],
                        end_of_candidates: true,
                        nat_report: None,
                        clock: None,
                    })
                    .await
                {
                    tracing::warn!(error = %e, "relay candidate not shared");
                }
                Ok::<_, TunnelError>(relay)
            }))
        });

        let mut detail = String::new();
        let mut punch_report = None;
        if matches!(
            strategy,
            v1::HandshakeStrategy::Direct | v1::HandshakeStrategy::PortPrediction
        ) {
            match PunchPlan::from_instruction(&instruction, start) {
                Ok(mut plan) => {
                    plan.opener_ttl = inner.config.opener_ttl;
                    match self.punch(&plan).await {
                        Ok(success) => {
                            let direct_report = punch::punch_report(
                                &plan,
                                v1::PunchOutcome::Direct,
                                &success.stats,
                                Some(&success.path),
                                "",
                            );
                            let remote_addr = success.path.remote;
                            let stats = success.stats;
                            let (endpoint, own) = match success.path.socket {
                                PathSocket::Main => (inner.endpoint.clone(), None),
                                PathSocket::Extra(udp) => {
                                    let socket = SharedSocket::from_tokio(udp, None)?;
                                    let endpoint =
                                        TunnelEndpoint::on_socket(socket, inner.identity.clone())?;
                                    (endpoint.clone(), Some(endpoint))
                                }
                            };
                            // usable once the responder's identity is verified (a refusal
                            // by the responder shows on first use), half an RTT sooner
                            let config = TunnelConfig::from_schedule(&schedule)
                                .handshake_timeout(inner.config.direct_handshake_timeout)
                                .await_confirmation(false);
                            match endpoint
                                .open(
                                    role,
                                    remote.clone(),
                                    crate::tunnel::TunnelRoute::Direct(remote_addr),
                                    config,
                                )
                                .await
                            {
                                Ok(tunnel) => {
                                    let ready = Instant::now();
                                    let mut report = direct_report;
                                    report.tunnel_ready_after_ms = millis(ready, start_tokio);
                                    self.report(report).await;
                                    // the relay allocation (if any) stays with the socket for
                                    // later tunnels; its task finishes on its own
                                    drop(relay_task);
                                    return Ok(Connected {
                                        tunnel,
                                        kind: PathKind::Direct,
                                        strategy,
                                        ready_after_go: ready
                                            .saturating_duration_since(start_tokio),
                                        elapsed: ready.saturating_duration_since(called),
                                        punch_budget,
                                        handshake_id: id,
                                        role,
                                        _endpoint: own,
                                    });
                                }
                                Err(e) => {
                                    detail = format!("punched {remote_addr} but QUIC failed: {e}");
                                    punch_report = Some(punch::punch_report(
                                        &plan,
                                        v1::PunchOutcome::Relayed,
                                        &stats,
                                        None,
                                        &detail,
                                    ));
                                }
                            }
                        }
                        Err(e) => {
                            detail = e.to_string();
                            if let Some(stats) = e.stats() {
                                punch_report = Some(punch::punch_report(
                                    &plan,
                                    v1::PunchOutcome::Relayed,
                                    stats,
                                    None,
                                    &detail,
                                ));
                            }
                        }
                    }
                }
                Err(e) => detail = format!("cannot punch: {e}"),
            }
        }

        // the relay
        let (hs_id, hs_attempt) = (instruction.handshake_id.clone(), instruction.attempt);
        let fail = |why: String| self.failed(hs_id.clone(), hs_attempt, why);
        let Some(relay_task) = relay_task else {
            return Err(fail(format!("{detail}; no relay available")).await);
        };
        let relay = match relay_task.await {
            Ok(Ok(relay)) => relay,
            Ok(Err(e)) => return Err(fail(format!("{detail}; relay allocation failed: {e}")).await),
            Err(e) => return Err(fail(format!("{detail}; relay task failed: {e}")).await),
        };
        let peer_relayed = match relay_candidate(&instruction.remote_candidates) {
            Some(addr) => addr,
            None => {
                match wait_relay_candidate(&mut events, &id, instruction.expires_at_unix_ms).await {
                    Some(addr) => addr,
                    None => {
                        return Err(fail(format!(
                            "{detail}; the other peer shared no relay candidate"
                        ))
                        .await);
                    }
                }
            }
        };
        let route = match relay.route_to(peer_relayed).await {
            Ok(route) => route,
            Err(e) => return Err(fail(format!("{detail}; relay channel failed: {e}")).await),
        };
        let config = TunnelConfig::from_schedule(&schedule)
            .handshake_timeout(inner.config.relayed_handshake_timeout);
        let tunnel = match inner
            .endpoint
            .open(role, remote.clone(), route, config)
            .await
        {
            Ok(tunnel) => tunnel,
            Err(e) => return Err(fail(format!("{detail}; relayed QUIC failed: {e}")).await),
        };
        tunnel.hold_relay(relay);
        let ready = Instant::now();
        let mut report = punch_report.unwrap_or_else(|| v1::PunchReport {
            handshake_id: instruction.handshake_id.clone(),
            attempt: instruction.attempt,
            detail: truncate(&detail, 512),
            ..v1::PunchReport::default()
        });
        report.outcome = v1::PunchOutcome::Relayed.into();
        report.local_candidate_kind = v1::CandidateKind::Relay.into();
        report.remote_candidate_kind = v1::CandidateKind::Relay.into();
        report.remote_address = Some(peer_relayed.into());
        report.tunnel_ready_after_ms = millis(ready, start_tokio);
        self.report(report).await;
        // a later punch may find a direct path: the initiator retries, the responder recognises
        // the retry by its attempt number
        lock(&inner.relayed).insert(remote.to_string(), tunnel.connection().clone());
        if role == TunnelRole::Initiator {
            let task = tokio::spawn(upgrade_later(
                Arc::downgrade(&self.inner),
                remote.clone(),
                instruction.handshake_id.clone(),
                tunnel.connection().clone(),
            ));
            lock(&inner.tasks).push(task);
        }
        Ok(Connected {
            tunnel,
            kind: PathKind::Relayed,
            strategy,
            ready_after_go: ready.saturating_duration_since(start_tokio),
            elapsed: ready.saturating_duration_since(called),
            punch_budget,
            handshake_id: id,
            role,
            _endpoint: None,
        })
    }

    /// The live relayed tunnel with `peer`, if any.
    fn relayed_with(&self, peer: Option<&PeerId>) -> Option<quinn::Connection> {
        let peer = peer?.to_string();
        let mut relayed = lock(&self.inner.relayed);
        relayed.retain(|_, conn| conn.close_reason().is_none());
        relayed.get(&peer).cloned()
    }

    /// Initiator side of moving the relayed tunnel `conn` to a direct path: a new negotiation
    /// (a retry of `previous`), punched on the tunnels' socket. `Ok(true)` when it moved.
    async fn try_upgrade(
        &self,
        peer: &PeerId,
        previous: bytes::Bytes,
        conn: &quinn::Connection,
    ) -> Result<bool, ConnectError> {
        let mut events = self.inner.session.handshake_events();
        let candidates = self.gather().await?;
        let requested = self
            .inner
            .session
            .request_tunnel(v1::RequestTunnel {
                target: Some(peer.clone()),
                candidates,
                nat_report: self.nat_report(),
                clock: self.inner.session.clock_estimate(),
                retry_of: previous,
            })
            .await?;
        let id = requested.handshake_id.to_vec();
        let (instruction, server_time_us, received_at) = tokio::time::timeout(
            self.inner.config.open_timeout,
            wait_instruction(&mut events, &id),
        )
        .await
        .map_err(|_| ConnectError::Timeout(self.inner.config.open_timeout))??;
        self.upgrade(&instruction, server_time_us, received_at, conn)
            .await
    }

    /// Punches per `instruction` on the tunnels' socket and, on success there, moves the relayed
    /// tunnel `conn` to the punched path (both sides do; QUIC does not notice). Reports the
    /// outcome. `Ok(true)` when it moved.
    async fn upgrade(
        &self,
        instruction: &v1::HandshakeInstruction,
        server_time_us: u64,
        received_at: std::time::Instant,
        conn: &quinn::Connection,
    ) -> Result<bool, ConnectError> {
        let inner = &self.inner;
        let schedule = instruction.schedule.unwrap_or_default();
        let start = punch::local_start(
            schedule.start_at_us,
            inner.session.clock_estimate().as_ref(),
            server_time_us,
            received_at,
            Duration::ZERO,
        );
        let plan = match PunchPlan::from_instruction(instruction, start) {
            Ok(mut plan) => {
                plan.opener_ttl = inner.config.opener_ttl;
                plan
            }
            Err(e) => {
                let report = v1::PunchReport {
                    handshake_id: instruction.handshake_id.clone(),
                    attempt: instruction.attempt,
                    outcome: v1::PunchOutcome::Relayed.into(),
                    detail: truncate(&format!("stays relayed: {e}"), 512),
                    ..v1::PunchReport::default()
                };
                self.report(report).await;
                return Ok(false);
            }
        };
        let (report, moved) = match self.punch(&plan).await {
            Ok(success) if matches!(success.path.socket, PathSocket::Main) => {
                let route = crate::tunnel::TunnelRoute::Direct(success.path.remote);
                let moved = inner
                    .endpoint
                    .socket()
                    .set_route(conn.remote_address(), route);
                let mut report = punch::punch_report(
                    &plan,
                    if moved {
                        v1::PunchOutcome::Direct
                    } else {
                        v1::PunchOutcome::Relayed
                    },
                    &success.stats,
                    Some(&success.path),
                    if moved {
                        ""
                    } else {
                        "the tunnel closed meanwhile"
                    },
                );
                report.tunnel_ready_after_ms = millis(Instant::now(), Instant::from_std(start));
                (report, moved)
            }
            Ok(success) => (
                punch::punch_report(
                    &plan,
                    v1::PunchOutcome::Relayed,
                    &success.stats,
                    None,
                    "the direct path is on another socket: the tunnel stays relayed",
                ),
                false,
            ),
            Err(e) => {
                let detail = format!("stays relayed: {e}");
                let report = match e.stats() {
                    Some(stats) => {
                        punch::punch_report(&plan, v1::PunchOutcome::Relayed, stats, None, &detail)
                    }
                    None => v1::PunchReport {
                        handshake_id: instruction.handshake_id.clone(),
                        attempt: instruction.attempt,
                        outcome: v1::PunchOutcome::Relayed.into(),
                        detail: truncate(&detail, 512),
                        ..v1::PunchReport::default()
                    },
                };
                (report, false)
            }
        };
        self.report(report).await;
        Ok(moved)
    }

    /// Runs `plan` on the tunnels' socket, as its only reader meanwhile.
    async fn punch(&self, plan: &PunchPlan) -> Result<punch::PunchSuccess, punch::PunchError> {
        let _turn = self.inner.exclusive.lock().await;
        let (tx, mut rx) = mpsc::channel(1024);
        *lock(&self.inner.sink) = Some(tx);
        let result = punch::punch(
            plan,
            MainSocket::Shared {
                socket: self.inner.endpoint.socket(),
                incoming: &mut rx,
            },
        )
        .await;
        *lock(&self.inner.sink) = None;
        result
    }

    /// Reports a failed attempt and turns `why` into the error.
    async fn failed(&self, handshake_id: bytes::Bytes, attempt: u32, why: String) -> ConnectError {
        let report = v1::PunchReport {
            handshake_id,
            attempt,
            outcome: v1::PunchOutcome::Failed.into(),
            detail: truncate(&why, 512),
            ..v1::PunchReport::default()
        };
        self.report(report).await;
        ConnectError::Failed(why)
    }

    async fn report(&self, report: v1::PunchReport) {
        if let Err(e) = self.inner.session.report_punch_outcome(report).await {
            tracing::debug!(error = %e, "punch outcome not reported");
        }
    }

    /// Answers one offer: candidates, then the attempt; the tunnel goes to `accept`.
    async fn answer(&self, offer: v1::HandshakeOffer) {
        let called = Instant::now();
        let mut events = self.inner.session.handshake_events();
        let candidates = match self.gather().await {
            Ok(candidates) => candidates,
            Err(e) => {
                tracing::warn!(error = %e, "cannot gather candidates for an offer");
                return;
            }
        };
        let id = offer.handshake_id.to_vec();
        let share = v1::ShareCandidates {
            handshake_id: offer.handshake_id.clone(),
            attempt: offer.attempt,
            candidates,
            end_of_candidates: false,
            nat_report: self.nat_report(),
            clock: self.inner.session.clock_estimate(),
        };
        if let Err(e) = self.inner.session.share_candidates(share).await {
            tracing::warn!(error = %e, "offer not answered");
            return;
        }
        let waited = tokio::time::timeout(
            self.inner.config.open_timeout,
            wait_instruction(&mut events, &id),
        )
        .await;
        let (instruction, server_time_us, received_at) = match waited {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "offered handshake ended");
                return;
            }
            Err(_) => {
                tracing::info!("no instruction for an answered offer");
                return;
            }
        };
        if instruction.attempt > 1
            && let Some(conn) = self.relayed_with(instruction.remote_peer.as_ref())
        {
            match self
                .upgrade(&instruction, server_time_us, received_at, &conn)
                .await
            {
                Ok(true) => tracing::info!("relayed tunnel moved to a direct path"),
                Ok(false) => tracing::debug!("relayed tunnel stays relayed"),
                Err(e) => tracing::info!(error = %e, "upgrade attempt failed"),
            }
            return;
        }
        match self
            .attempt(instruction, server_time_us, received_at, events, called)
            .await
        {
            Ok(connected) => {
                if self.inner.accepted_tx.send(connected).await.is_err() {
                    tracing::debug!("tunnel accepted after the listener went away");
                }
            }
            Err(e) => tracing::info!(error = %e, "incoming tunnel failed"),
        }
    }
}

/// When later punches toward a relayed tunnel's peer are tried (after the tunnel opened).
const UPGRADE_AFTER: [Duration; 3] = [
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(30),
];

/// Tries to move the relayed tunnel `conn` (to `peer`, first negotiated as `previous`) to a
/// direct path a few times, until it moves or closes.
async fn upgrade_later(
    weak: std::sync::Weak<Inner>,
    peer: PeerId,
    previous: bytes::Bytes,
    conn: quinn::Connection,
) {
    for delay in UPGRADE_AFTER {
        tokio::time::sleep(delay).await;
        if conn.close_reason().is_some() {
            return;
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let tunnels = Tunnels { inner };
        match tunnels.try_upgrade(&peer, previous.clone(), &conn).await {
            Ok(true) => {
                tracing::info!(%peer, "relayed tunnel moved to a direct path");
                return;
            }
            Ok(false) => tracing::debug!(%peer, "relayed tunnel stays relayed for now"),
            Err(e) => tracing::debug!(%peer, error = %e, "no later punch"),
        }
    }
}

/// The offer-answering loop; ends with the session or the last [`Tunnels`] handle.
async fn answer_offers(
    weak: std::sync::Weak<Inner>,
    mut events: broadcast::Receiver<HandshakeEvent>,
) {
    loop {
        match events.recv().await {
            Ok(HandshakeEvent::Offer(offer)) => {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let tunnels = Tunnels { inner };
                tokio::spawn(async move { tunnels.answer(offer).await });
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "handshake events missed");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Waits for the instruction of negotiation `id` (or its end).
async fn wait_instruction(
    events: &mut broadcast::Receiver<HandshakeEvent>,
    id: &[u8],
) -> Result<(v1::HandshakeInstruction, u64, std::time::Instant), ConnectError> {
    loop {
        match events.recv().await {
            Ok(HandshakeEvent::Instruction {
                instruction,
                server_time_us,
                received_at,
            }) if instruction.handshake_id.as_ref() == id => {
                return Ok((instruction, server_time_us, received_at));
            }
            Ok(HandshakeEvent::Closed(closed)) if closed.handshake_id.as_ref() == id => {
                return Err(ConnectError::Closed {
                    outcome: closed.outcome(),
                    reason: closed
                        .reason
                        .map(|r| r.message)
                        .unwrap_or_else(|| "no reason given".to_owned()),
                });
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => {
                return Err(ConnectError::Failed("the session ended".to_owned()));
            }
        }
    }
}

/// Waits for the other side's relay candidate of negotiation `id`, until `expires_at_unix_ms`.
async fn wait_relay_candidate(
    events: &mut broadcast::Receiver<HandshakeEvent>,
    id: &[u8],
    expires_at_unix_ms: u64,
) -> Option<SocketAddr> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let left = Duration::from_millis(
        expires_at_unix_ms
            .saturating_sub(now_ms)
            .clamp(1_000, 15_000),
    );
    tokio::time::timeout(left, async {
        loop {
            match events.recv().await {
                Ok(HandshakeEvent::RemoteCandidates(more)) if more.handshake_id.as_ref() == id => {
                    if let Some(addr) = relay_candidate(&more.candidates) {
                        return Some(addr);
                    }
                }
                Ok(HandshakeEvent::Closed(closed)) if closed.handshake_id.as_ref() == id => {
                    return None;
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

fn relay_candidate(candidates: &[v1::Candidate]) -> Option<SocketAddr> {
    candidates
        .iter()
        .filter(|c| c.kind() == v1::CandidateKind::Relay)
        .find_map(|c| {
            c.address
                .as_ref()
                .and_then(|a| SocketAddr::try_from(a).ok())
        })
}

fn millis(at: Instant, since: Instant) -> u32 {
    u32::try_from(at.saturating_duration_since(since).as_millis())
        .unwrap_or(u32::MAX)
        .max(1)
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Measures the NAT's behaviour (mapping and filtering) from a socket of its own: the filtering
/// tests make the STUN pair answer from addresses the socket never sent to, which leaves state in
/// Linux-based NATs that would disturb the tunnels' socket's mappings.
async fn measure_nat(stun: SocketAddr) -> Result<v1::NatReport, String> {
    let bind: SocketAddr = match stun {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("cannot open a socket for the NAT report: {e}"))?;
    let options =
        crate::nat::NatReportOptions::default().with_timeout(Some(Duration::from_secs(8)));
    let report = crate::nat::nat_report(&socket, stun, options)
        .await
        .map_err(|e| e.to_string())?;
    Ok(nat_report_to_proto(&report, report.local_address))
}

/// The protocol form of a behaviour-discovery result of the socket at `local`.
fn nat_report_to_proto(report: &quickp2p_wire::NatReport, local: SocketAddr) -> v1::NatReport {
    let mapping = match report.mapping {
        _ if report.behind_nat == Some(false) => v1::NatMapping::None,
        MappingBehaviour::EndpointIndependent => v1::NatMapping::EndpointIndependent,
        MappingBehaviour::AddressDependent => v1::NatMapping::AddressDependent,
        MappingBehaviour::AddressAndPortDependent => v1::NatMapping::AddressAndPortDependent,
        MappingBehaviour::Unknown(_) => v1::NatMapping::Unspecified,
    };
    let filtering = match report.filtering {
        FilteringBehaviour::EndpointIndependent => v1::NatFiltering::EndpointIndependent,
        FilteringBehaviour::AddressDependent => v1::NatFiltering::AddressDependent,
        FilteringBehaviour::AddressAndPortDependent => v1::NatFiltering::AddressAndPortDependent,
        _ => v1::NatFiltering::Unspecified,
    };
    // port allocation: preservation, or the step between the mappings toward different servers
    let ports: Vec<u16> = report.reflexive.iter().map(|r| r.mapped.port()).collect();
    let (port_allocation, port_delta) = if report.port_preserving == Some(true) {
        (v1::PortAllocation::Preserving, 0)
    } else if mapping == v1::NatMapping::EndpointIndependent || ports.len() < 2 {
        (v1::PortAllocation::Unspecified, 0)
    } else {
        let deltas: Vec<i32> = ports
            .windows(2)
            .map(|w| i32::from(w[1]) - i32::from(w[0]))
            .filter(|d| *d != 0)
            .collect();
        match deltas.first() {
            Some(&d) if d.abs() <= 16 && deltas.iter().all(|x| *x == d) => {
                (v1::PortAllocation::Sequential, d)
            }
            Some(_) => (v1::PortAllocation::Random, 0),
            None => (v1::PortAllocation::Unspecified, 0),
        }
    };
    v1::NatReport {
        behaviour: Some(v1::NatBehaviour {
            mapping: mapping.into(),
            filtering: filtering.into(),
            hairpinning: match report.hairpinning {
                Some(true) => v1::TriState::Yes.into(),
                Some(false) => v1::TriState::No.into(),
                None => v1::TriState::Unspecified.into(),
            },
            port_allocation: port_allocation.into(),
            port_delta,
            mapping_lifetime_s: 0,
        }),
        reflexive_addresses: report
            .reflexive
            .iter()
            .take(8)
            .map(|r| v1::ReflexiveAddress {
                observed: Some(r.mapped.into()),
                server: Some(r.server.into()),
            })
            .collect(),
        local_addresses: vec![local.into()],
        measured_at_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        duration_ms: u32::try_from(report.duration.as_millis()).unwrap_or(u32::MAX),
        rfc5780_supported: match report.server_supports_rfc5780() {
            Some(true) => v1::TriState::Yes.into(),
            Some(false) => v1::TriState::No.into(),
            None => v1::TriState::Unspecified.into(),
        },
    }
}
