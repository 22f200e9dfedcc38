//! Peer-to-peer tunnels: an authenticated QUIC connection between two peers, over a punched
//! direct path or through a TURN relay, that needs no supernode once open.
//!
//! * **Identity.** Each side proves its peer id with its Ed25519 key (TLS 1.3 with raw public
//!   keys, RFC 7250 — no certificate); each side names the one peer it expects, and a handshake with anyone else
//!   fails ([`TunnelError::PeerRejected`] on the side that checked,
//!   [`TunnelError::RejectedByPeer`] on the other). A supernode or relay on the path sees only
//!   QUIC packets it can neither read nor forge.
//! * **Paths.** The QUIC connection talks to a *virtual address*; the socket
//!   ([`SharedSocket`]) sends its datagrams on the tunnel's current [`TunnelRoute`] — straight to
//!   the peer's address, or as TURN ChannelData through the relay — and presents what comes back
//!   as coming from the virtual address. [`Tunnel::switch_to_direct`] moves a relayed tunnel to a
//!   punched path without QUIC noticing (streams keep running; datagrams in flight on the old
//!   path still arrive). QUIC keep-alives ([`TunnelConfig::keep_alive`], from
//!   `PunchSchedule.keepalive_interval_ms`) hold the NAT mappings of whatever path is current.
//! * **Roles.** The initiator (`HANDSHAKE_ROLE_INITIATOR`) is the QUIC client and calls
//!   [`TunnelEndpoint::connect`]; the responder is the QUIC server and calls
//!   [`TunnelEndpoint::accept`]. Both give the route to the other side.
//!
//! ```no_run
//! # async fn demo(identity: quickp2p::identity::Identity, bob: quickp2p::session::PeerId)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use quickp2p::tunnel::{TunnelConfig, TunnelEndpoint, TunnelRoute};
//!
//! let endpoint = TunnelEndpoint::bind("0.0.0.0:0".parse()?, identity)?;
//! // the punching engine found bob at this address:
//! let route = TunnelRoute::Direct("198.51.100.7:40000".parse()?);
//! let tunnel = endpoint.connect(bob, route, TunnelConfig::default()).await?;
//! let (mut send, mut recv) = tunnel.open_bi().await?;
//! send.write_all(b"hello").await?;
//! send.finish()?;
//! let answer = recv.read_to_end(1 << 20).await?;
//! # let _ = answer;
//! # Ok(()) }
//! ```
//!
//! **Relayed tunnels.** Each peer allocates on the relay of its `RelayGrant`
//! ([`TunnelRelay::allocate`] on the same socket as the endpoint), sends the other its relayed
//! address (a relay candidate), and turns the other's relayed address into a route with
//! [`TunnelRelay::route_to`] (permission + channel). Keep the [`TunnelRelay`] alive as long as a
//! tunnel uses it (the tunnel holds it when given with [`Tunnel::hold_relay`]).
//!
//! **Sockets.** A [`TunnelEndpoint`] runs on one [`SharedSocket`]: its own
//! ([`TunnelEndpoint::bind`]), one the punching engine handed over ([`SharedSocket::from_tokio`]
//! then [`TunnelEndpoint::on_socket`]), or the session's one socket and QUIC endpoint
//! ([`TunnelEndpoint::with_endpoint`]; the gateway connection is untouched).

mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use quickp2p_proto::v1::{HandshakeRole, PeerId, PunchSchedule};
use tokio::sync::oneshot;

use crate::identity::Identity;
use crate::relay::{RelayAllocation, RelayClient, RelayCredentials, RelayError, RelayOptions};
use crate::session::SharedSocket;
pub use tls::{TUNNEL_ALPN, ed25519_spki, peer_id_of_spki};

/// Where a tunnel's datagrams really travel (the socket maps the tunnel's virtual address to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelRoute {
    /// Straight to the peer at this address (a punched path, or a LAN address).
    Direct(SocketAddr),
    /// Through a TURN relay: ChannelData on `channel` to `server`, which forwards it from our
    /// allocation to `peer` (the other peer's relayed address).
    Relayed {
        /// The TURN server.
        server: SocketAddr,
        /// The channel bound to `peer` on our allocation.
        channel: u16,
        /// The other peer's relayed address.
        peer: SocketAddr,
    },
}

/// The path a tunnel uses now, as [`Tunnel::path`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelPath {
    /// A direct path to the peer at this address.
    Direct(SocketAddr),
    /// Through the relay at this address.
    Relayed {
        /// The TURN server.
        relay: SocketAddr,
    },
}

impl From<TunnelRoute> for TunnelPath {
    fn from(route: TunnelRoute) -> TunnelPath {
        match route {
            TunnelRoute::Direct(addr) => TunnelPath::Direct(addr),
            TunnelRoute::Relayed { server, .. } => TunnelPath::Relayed { relay: server },
        }
    }
}

/// This side's part in the tunnel's QUIC handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelRole {
    /// The peer that asked for the tunnel: the QUIC client ([`TunnelEndpoint::connect`]).
    Initiator,
    /// The peer that was asked: the QUIC server ([`TunnelEndpoint::accept`]).
    Responder,
}

impl TunnelRole {
    /// The role of a `HandshakeInstruction.role`; `None` for `UNSPECIFIED`.
    pub fn from_proto(role: HandshakeRole) -> Option<TunnelRole> {
        match role {
            HandshakeRole::Initiator => Some(TunnelRole::Initiator),
            HandshakeRole::Responder => Some(TunnelRole::Responder),
            HandshakeRole::Unspecified => None,
        }
    }
}

/// How a tunnel's QUIC connection behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TunnelConfig {
    /// QUIC keep-alive interval: what holds the NAT mappings of the path [default: 5 s].
    pub keep_alive: Duration,
    /// The tunnel closes after this long without hearing from the peer [default: 30 s].
    pub idle_timeout: Duration,
    /// Time allowed for the QUIC handshake (and, for the responder, for the initiator's first
    /// packet to arrive) [default: 10 s].
    pub handshake_timeout: Duration,
    /// Round-trip time assumed before the first sample; it sets how soon a lost first packet is
    /// sent again (e.g. when the initiator starts before the responder waits). Use the punch's
    /// measured RTT when known [default: 333 ms, RFC 9002's].
    pub initial_rtt: Duration,
    /// Whether the initiator's [`TunnelEndpoint::connect`] waits for the responder's
    /// HANDSHAKE_DONE (half a round trip more) so that a responder refusing our key is reported
    /// by `connect` itself; without it the tunnel is returned as soon as the responder's identity
    /// is verified and 1-RTT keys exist (a refusal then shows on first use) [default: true].
    pub await_confirmation: bool,
}

impl Default for TunnelConfig {
    fn default() -> TunnelConfig {
        TunnelConfig {
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            initial_rtt: Duration::from_millis(333),
            await_confirmation: true,
        }
    }
}

impl TunnelConfig {
    /// The defaults with the keep-alive interval of a punch schedule (when it sets one; the idle
    /// timeout is raised to at least three keep-alives).
    pub fn from_schedule(schedule: &PunchSchedule) -> TunnelConfig {
        let mut config = TunnelConfig::default();
        if schedule.keepalive_interval_ms > 0 {
            config.keep_alive = Duration::from_millis(u64::from(schedule.keepalive_interval_ms));
            config.idle_timeout = config.idle_timeout.max(config.keep_alive * 3);
        }
        config
    }

    /// Sets the keep-alive interval.
    #[must_use]
    pub fn keep_alive(mut self, interval: Duration) -> TunnelConfig {
        self.keep_alive = interval;
        self
    }

    /// Sets the idle timeout.
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> TunnelConfig {
        self.idle_timeout = timeout;
        self
    }

    /// Sets the handshake timeout.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> TunnelConfig {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the initial round-trip time estimate.
    #[must_use]
    pub fn initial_rtt(mut self, rtt: Duration) -> TunnelConfig {
        self.initial_rtt = rtt;
        self
    }

    /// Sets whether `connect` waits for the responder's confirmation.
    #[must_use]
    pub fn await_confirmation(mut self, wait: bool) -> TunnelConfig {
        self.await_confirmation = wait;
        self
    }

    fn transport(&self) -> Arc<quinn::TransportConfig> {
        let mut transport = quinn::TransportConfig::default();
        transport
            .initial_rtt(self.initial_rtt)
            .keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(self.idle_timeout.try_into().ok());
        Arc::new(transport)
    }
}

/// Why a tunnel could not be opened or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// The UDP socket could not be bound or wrapped.
    #[error("tunnel socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The QUIC/TLS configuration could not be built.
    #[error("tunnel configuration: {0}")]
    Config(String),
    /// The relay (TURN) part failed: allocation, permission or channel.
    #[error("tunnel relay: {0}")]
    Relay(#[from] RelayError),
    /// The handshake did not complete in time (no answer on the path, or no initiator came).
    #[error("no tunnel handshake within {0:?}")]
    Timeout(Duration),
    /// We refused the other side: it is not the expected peer (or not an Ed25519 peer at all).
    #[error("the other side is not the expected peer: {0}")]
    PeerRejected(String),
    /// The other side refused our identity (it expects another peer) or our handshake.
    #[error("the other side refused the tunnel handshake: {0}")]
    RejectedByPeer(String),
    /// The QUIC connection could not be started.
    #[error("cannot start the tunnel connection: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC connection failed or was closed.
    #[error("tunnel connection: {0}")]
    Connection(quinn::ConnectionError),
    /// A datagram could not be sent (too large, unsupported by the peer, or closed).
    #[error("tunnel datagram: {0}")]
    Datagram(#[from] quinn::SendDatagramError),
    /// The tunnel's route is gone (the tunnel was dropped).
    #[error("the tunnel has no route any more")]
    NoRoute,
    /// The endpoint is closed.
    #[error("the tunnel endpoint is closed")]
    EndpointClosed,
}

/// QUIC's crypto error range (0x100–0x1ff: TLS alerts).
fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    u64::from(code) & !0xff == 0x100
}

impl From<quinn::ConnectionError> for TunnelError {
    fn from(error: quinn::ConnectionError) -> TunnelError {
        match &error {
            quinn::ConnectionError::TransportError(e) if is_crypto(e.code) => {
                TunnelError::PeerRejected(e.reason.clone())
            }
            quinn::ConnectionError::ConnectionClosed(close) if is_crypto(close.error_code) => {
                let reason = String::from_utf8_lossy(&close.reason).into_owned();
                TunnelError::RejectedByPeer(if reason.is_empty() {
                    format!("{}", close.error_code)
                } else {
                    reason
                })
            }
            _ => TunnelError::Connection(error),
        }
    }
}

/// Responders waiting for their initiator's first packet, by virtual address.
type Waiting = Arc<Mutex<HashMap<SocketAddr, oneshot::Sender<quinn::Incoming>>>>;

/// A QUIC endpoint for tunnels on one [`SharedSocket`], with this peer's identity. Cheap to
/// clone; the endpoint's accept loop stops when every clone is dropped.
#[derive(Debug, Clone)]
pub struct TunnelEndpoint {
    inner: Arc<EndpointInner>,
}

#[derive(Debug)]
struct EndpointInner {
    endpoint: quinn::Endpoint,
    socket: Arc<SharedSocket>,
    identity: Arc<Identity>,
    waiting: Waiting,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl Drop for EndpointInner {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl TunnelEndpoint {
    /// Binds a new socket at `addr` for tunnels only (non-QUIC datagrams are dropped). Must be
    /// called within a tokio runtime.
    pub fn bind(addr: SocketAddr, identity: Identity) -> Result<TunnelEndpoint, TunnelError> {
        TunnelEndpoint::on_socket(SharedSocket::bind(addr, None)?, identity)
    }

    /// A new QUIC endpoint on `socket` — e.g. a socket the punching engine opened and wrapped
    /// with [`SharedSocket::from_std`]. Must be called within a tokio runtime.
    pub fn on_socket(
        socket: Arc<SharedSocket>,
        identity: Identity,
    ) -> Result<TunnelEndpoint, TunnelError> {
        let mut endpoint_config = quinn::EndpointConfig::default();
        // the socket is demultiplexed by first byte (RFC 9443): never grease the QUIC bit
        endpoint_config.grease_quic_bit(false);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            None,
            Arc::clone(&socket) as Arc<dyn quinn::AsyncUdpSocket>,
            Arc::new(quinn::TokioRuntime),
        )?;
        TunnelEndpoint::with_endpoint(endpoint, socket, identity)
    }

    /// Uses an existing endpoint running on `socket` — the session's, so tunnels share the one
    /// socket with the gateway connection. Installs a server configuration that refuses every
    /// connection no [`TunnelEndpoint::accept`] waits for, and takes over `endpoint.accept()`.
    /// Must be called within a tokio runtime.
    pub fn with_endpoint(
        endpoint: quinn::Endpoint,
        socket: Arc<SharedSocket>,
        identity: Identity,
    ) -> Result<TunnelEndpoint, TunnelError> {
        let identity = Arc::new(identity);
        let refuse_all = tls::server_config(&identity, None, TunnelConfig::default().transport())
            .map_err(TunnelError::Config)?;
        endpoint.set_server_config(Some(refuse_all));
        let waiting: Waiting = Arc::default();
        let accept_loop = tokio::spawn(accept_loop(endpoint.clone(), Arc::clone(&waiting)));
        Ok(TunnelEndpoint {
            inner: Arc::new(EndpointInner {
                endpoint,
                socket,
                identity,
                waiting,
                accept_loop,
            }),
        })
    }

    /// The socket the tunnels run on (send STUN or punch probes on it; attach relays to it).
    pub fn socket(&self) -> &Arc<SharedSocket> {
        &self.inner.socket
    }

    /// The QUIC endpoint.
    pub fn quic_endpoint(&self) -> &quinn::Endpoint {
        &self.inner.endpoint
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> Result<SocketAddr, TunnelError> {
        Ok(self.inner.endpoint.local_addr()?)
    }

    /// This peer's id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.identity.peer_id()
    }

    /// Opens the tunnel in `role`: [`TunnelEndpoint::connect`] for the initiator,
    /// [`TunnelEndpoint::accept`] for the responder.
    pub async fn open(
        &self,
        role: TunnelRole,
        remote: PeerId,
        route: TunnelRoute,
        config: TunnelConfig,
    ) -> Result<Tunnel, TunnelError> {
        match role {
            TunnelRole::Initiator => self.connect(remote, route, config).await,
            TunnelRole::Responder => self.accept(remote, route, config).await,
        }
    }

    /// As the initiator (QUIC client): connects to `remote` over `route`. Fails with
    /// [`TunnelError::PeerRejected`] when the other side is not `remote`,
    /// [`TunnelError::RejectedByPeer`] when it does not expect us, [`TunnelError::Timeout`] when
    /// nothing answers in [`TunnelConfig::handshake_timeout`].
    pub async fn connect(
        &self,
        remote: PeerId,
        route: TunnelRoute,
        config: TunnelConfig,
    ) -> Result<Tunnel, TunnelError> {
        let client = tls::client_config(&self.inner.identity, &remote, config.transport())
            .map_err(TunnelError::Config)?;
        let virtual_addr = self.inner.socket.add_route(route);
        let guard = RouteGuard::new(&self.inner.socket, virtual_addr);
        let connecting =
            self.inner
                .endpoint
                .connect_with(client, virtual_addr, tls::SERVER_NAME)?;
        // the client's handshake completes before the server has checked our key: wait for
        // the server's HANDSHAKE_DONE, so a refusal is reported here and not on first use
        let handshake = async {
            let conn = connecting.await?;
            if config.await_confirmation {
                confirmed(&conn).await?;
            }
            Ok::<_, TunnelError>(conn)
        };
        let conn = tokio::time::timeout(config.handshake_timeout, handshake)
            .await
            .map_err(|_| TunnelError::Timeout(config.handshake_timeout))??;
        self.tunnel(conn, &remote, TunnelRole::Initiator, guard)
    }

    /// As the responder (QUIC server): waits for `remote`'s connection over `route` and accepts
    /// it when it proves to be `remote`. A connection from anyone else is refused and the wait
    /// goes on until [`TunnelConfig::handshake_timeout`]; then the error is the last refusal
    /// ([`TunnelError::PeerRejected`]) or [`TunnelError::Timeout`]. When the other side refuses
    /// us, the wait ends at once with [`TunnelError::RejectedByPeer`].
    pub async fn accept(
        &self,
        remote: PeerId,
        route: TunnelRoute,
        config: TunnelConfig,
    ) -> Result<Tunnel, TunnelError> {
        let server = Arc::new(
            tls::server_config(&self.inner.identity, Some(&remote), config.transport())
                .map_err(TunnelError::Config)?,
        );
        let (tx, mut rx) = oneshot::channel();
        let guard = {
            // the accept loop looks the address up under the same lock: no packet can slip
            // between the route and the waiter
            let mut waiting = self.waiting();
            let virtual_addr = self.inner.socket.add_route(route);
            waiting.insert(virtual_addr, tx);
            RouteGuard::new(&self.inner.socket, virtual_addr)
        };
        let virtual_addr = guard.virtual_addr;
        let deadline = tokio::time::Instant::now() + config.handshake_timeout;
        // a connection that fails (a stranger refused, a stale attempt's leftovers) does not
        // end the wait: the expected initiator may still come before the deadline
        let mut last_failure = None;
        let conn = loop {
            let handshake = async {
                let incoming = (&mut rx).await.map_err(|_| TunnelError::EndpointClosed)?;
                let connecting = incoming.accept_with(Arc::clone(&server))?;
                Ok::<_, TunnelError>(connecting.await?)
            };
            match tokio::time::timeout_at(deadline, handshake).await {
                Ok(Ok(conn)) => break Ok(conn),
                // the endpoint is gone, or the one at the path refused us: waiting won't help
                Ok(Err(error @ (TunnelError::EndpointClosed | TunnelError::RejectedByPeer(_)))) => {
                    break Err(error);
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, peer = %remote, "tunnel handshake failed; waiting on");
                    last_failure = Some(error);
                    let (tx, next) = oneshot::channel();
                    rx = next;
                    self.waiting().insert(virtual_addr, tx);
                }
                Err(_) => {
                    break Err(
                        last_failure.unwrap_or(TunnelError::Timeout(config.handshake_timeout))
                    );
                }
            }
        };
        self.waiting().remove(&virtual_addr);
        let conn = conn?;
        self.tunnel(conn, &remote, TunnelRole::Responder, guard)
    }

    fn waiting(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, oneshot::Sender<quinn::Incoming>>> {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn tunnel(
        &self,
        conn: quinn::Connection,
        remote: &PeerId,
        role: TunnelRole,
        guard: RouteGuard,
    ) -> Result<Tunnel, TunnelError> {
        // the verifier already checked it; make sure the connection carries that key
        let presented = conn
            .peer_identity()
            .and_then(|any| {
                any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|keys| keys.first().and_then(|k| peer_id_of_spki(k.as_ref())));
        if presented.as_ref() != Some(remote) {
            conn.close(0u32.into(), b"unexpected peer");
            return Err(TunnelError::PeerRejected(
                "the connection carries no key of the expected peer".into(),
            ));
        }
        Ok(Tunnel {
            conn,
            remote: remote.clone(),
            role,
            route: guard,
            relay: Mutex::new(Vec::new()),
            _endpoint: self.clone(),
        })
    }
}

/// Resolves once the server confirmed the handshake (its HANDSHAKE_DONE frame arrived), or
/// fails with why the connection closed.
async fn confirmed(conn: &quinn::Connection) -> Result<(), TunnelError> {
    loop {
        if conn.stats().frame_rx.handshake_done > 0 {
            return Ok(());
        }
        tokio::select! {
            error = conn.closed() => return Err(error.into()),
            () = tokio::time::sleep(Duration::from_millis(2)) => {}
        }
    }
}

/// The endpoint's accept loop: hands each incoming connection to the responder waiting at its
/// (virtual) address; others are ignored (their initiator retries until a responder waits).
async fn accept_loop(endpoint: quinn::Endpoint, waiting: Waiting) {
    while let Some(incoming) = endpoint.accept().await {
        // the address as quinn presents it: the form `SharedSocket::add_route` handed out
        let from = incoming.remote_address();
        let waiter = waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&from);
        match waiter {
            Some(tx) => {
                if let Err(incoming) = tx.send(incoming) {
                    incoming.ignore();
                }
            }
            None => {
                tracing::debug!(%from, "tunnel connection nobody waits for ignored");
                incoming.ignore();
            }
        }
    }
}

/// A tunnel's virtual address; removes its route when dropped (after a grace period, so the
/// connection's close can still leave).
#[derive(Debug)]
struct RouteGuard {
    socket: Arc<SharedSocket>,
    virtual_addr: SocketAddr,
}

impl RouteGuard {
    fn new(socket: &Arc<SharedSocket>, virtual_addr: SocketAddr) -> RouteGuard {
        RouteGuard {
            socket: Arc::clone(socket),
            virtual_addr,
        }
    }
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let socket = Arc::clone(&self.socket);
        let virtual_addr = self.virtual_addr;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    socket.remove_route(virtual_addr);
                });
            }
            Err(_) => socket.remove_route(virtual_addr),
        }
    }
}

/// Counters of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TunnelStats {
    /// The path now.
    pub path: TunnelPath,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// UDP payload bytes sent (QUIC packets, before relay framing).
    pub bytes_sent: u64,
    /// UDP payload bytes received.
    pub bytes_received: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
}

/// An open tunnel to another peer: reliable bidirectional (and unidirectional) streams and
/// unreliable datagrams, both ways. Dropping it closes the connection.
#[derive(Debug)]
pub struct Tunnel {
    conn: quinn::Connection,
    remote: PeerId,
    role: TunnelRole,
    route: RouteGuard,
    relay: Mutex<Vec<Arc<TunnelRelay>>>,
    /// A tunnel keeps its endpoint (and the endpoint's socket) alive.
    _endpoint: TunnelEndpoint,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"tunnel dropped");
    }
}

impl Tunnel {
    /// The other peer (proven by its key during the handshake).
    pub fn remote_peer(&self) -> &PeerId {
        &self.remote
    }

    /// This side's role.
    pub fn role(&self) -> TunnelRole {
        self.role
    }

    /// The path the tunnel uses now.
    pub fn path(&self) -> Result<TunnelPath, TunnelError> {
        self.route().map(TunnelPath::from)
    }

    /// The route the tunnel uses now.
    pub fn route(&self) -> Result<TunnelRoute, TunnelError> {
        self.route
            .socket
            .route(self.route.virtual_addr)
            .ok_or(TunnelError::NoRoute)
    }

    /// Moves the tunnel to a direct path to `addr` (a punch succeeded): from now on datagrams go
    /// straight to `addr`, and datagrams from `addr` are the tunnel's; datagrams still arriving
    /// on the earlier path are accepted too. Both sides switch (each to the other's address);
    /// until the other side does, its datagrams keep coming on the old path.
    pub fn switch_to_direct(&self, addr: SocketAddr) -> Result<(), TunnelError> {
        self.switch_route(TunnelRoute::Direct(addr))
    }

    /// Moves the tunnel to `route` (see [`Tunnel::switch_to_direct`]).
    pub fn switch_route(&self, route: TunnelRoute) -> Result<(), TunnelError> {
        if self.route.socket.set_route(self.route.virtual_addr, route) {
            tracing::debug!(peer = %self.remote, ?route, "tunnel route changed");
            Ok(())
        } else {
            Err(TunnelError::NoRoute)
        }
    }

    /// Keeps `relay` (its allocation, permission and channel refreshes) alive as long as the
    /// tunnel.
    pub fn hold_relay(&self, relay: Arc<TunnelRelay>) {
        self.relay
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(relay);
    }

    /// Releases the relay allocations the tunnel holds ([`Tunnel::hold_relay`]), e.g. a while
    /// after [`Tunnel::switch_to_direct`] once nothing is in flight on the relayed path any more.
    /// An allocation other tunnels still hold stays.
    pub async fn release_relays(&self) -> Result<(), TunnelError> {
        let relays: Vec<_> =
            std::mem::take(&mut *self.relay.lock().unwrap_or_else(PoisonError::into_inner));
        for relay in relays {
            relay.release().await?;
        }
        Ok(())
    }

    /// Opens a bidirectional stream (the peer sees it once data is sent on it).
    pub async fn open_bi(&self) -> Result<(quinn::SendStream, quinn::RecvStream), TunnelError> {
        Ok(self.conn.open_bi().await?)
    }

    /// Accepts the next bidirectional stream the peer opened.
    pub async fn accept_bi(&self) -> Result<(quinn::SendStream, quinn::RecvStream), TunnelError> {
        Ok(self.conn.accept_bi().await?)
    }

    /// Opens a unidirectional stream.
    pub async fn open_uni(&self) -> Result<quinn::SendStream, TunnelError> {
        Ok(self.conn.open_uni().await?)
    }

    /// Accepts the next unidirectional stream the peer opened.
    pub async fn accept_uni(&self) -> Result<quinn::RecvStream, TunnelError> {
        Ok(self.conn.accept_uni().await?)
    }

    /// Sends an unreliable datagram (at most [`Tunnel::max_datagram_size`] bytes).
    pub fn send_datagram(&self, data: Bytes) -> Result<(), TunnelError> {
        Ok(self.conn.send_datagram(data)?)
    }

    /// The next datagram from the peer.
    pub async fn read_datagram(&self) -> Result<Bytes, TunnelError> {
        Ok(self.conn.read_datagram().await?)
    }

    /// The largest datagram [`Tunnel::send_datagram`] takes now (`None`: the peer takes none).
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.conn.max_datagram_size()
    }

    /// Counters and the current path.
    pub fn stats(&self) -> Result<TunnelStats, TunnelError> {
        let stats = self.conn.stats();
        Ok(TunnelStats {
            path: self.path()?,
            rtt: stats.path.rtt,
            bytes_sent: stats.udp_tx.bytes,
            bytes_received: stats.udp_rx.bytes,
            lost_packets: stats.path.lost_packets,
        })
    }

    /// Closes the tunnel with an application `code` and `reason` (the peer's calls fail with
    /// [`TunnelError::Connection`]).
    pub fn close(&self, code: u32, reason: &[u8]) {
        self.conn.close(code.into(), reason);
    }

    /// Resolves when the tunnel is closed (by either side, or an idle timeout), with why.
    pub async fn closed(&self) -> TunnelError {
        self.conn.closed().await.into()
    }

    /// The underlying QUIC connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }
}

/// A TURN allocation for relayed tunnels, made on a tunnel endpoint's socket (one per relay
/// server per socket; any number of tunnels through it, one channel each). Releases the
/// allocation's feed when dropped; the relay forgets the allocation at its lifetime's end, or at
/// once with [`TunnelRelay::release`].
#[derive(Debug)]
pub struct TunnelRelay {
    client: RelayClient,
    allocation: RelayAllocation,
    _attachment: TurnAttachment,
}

/// The socket's feed to a relay client; detached when dropped.
#[derive(Debug)]
struct TurnAttachment {
    socket: Arc<SharedSocket>,
    server: SocketAddr,
}

impl Drop for TurnAttachment {
    fn drop(&mut self) {
        self.socket.detach_turn_server(self.server);
    }
}

impl TunnelRelay {
    /// Allocates on TURN server `server` with `credentials` (a `RelayGrant`'s) from `socket` —
    /// the tunnel endpoint's ([`TunnelEndpoint::socket`]). The socket hands the server's
    /// datagrams to the allocation.
    pub async fn allocate(
        socket: &Arc<SharedSocket>,
        server: SocketAddr,
        credentials: RelayCredentials,
    ) -> Result<Arc<TunnelRelay>, TunnelError> {
        let (client, feed) = RelayClient::with_feed(
            socket.tokio_sender()?,
            server,
            credentials,
            RelayOptions::default(),
        );
        socket.attach_turn_server(client.server(), move |from, datagram| {
            if !feed.push(from, datagram) {
                tracing::debug!(%from, "TURN datagram dropped: the relay client is behind");
            }
        });
        let attachment = TurnAttachment {
            socket: Arc::clone(socket),
            server: client.server(),
        };
        let relay = TunnelRelay {
            allocation: client.allocate().await?,
            client,
            _attachment: attachment,
        };
        Ok(Arc::new(relay))
    }

    /// Our relayed address: give it to the other peer (a relay candidate).
    pub fn relayed_addr(&self) -> SocketAddr {
        self.allocation.relayed
    }

    /// The TURN server.
    pub fn server(&self) -> SocketAddr {
        self.client.server()
    }

    /// Our address as the relay saw it.
    pub fn mapped_addr(&self) -> Option<SocketAddr> {
        self.allocation.mapped
    }

    /// The route to the peer whose relayed address is `peer_relayed`: installs a permission and
    /// binds a channel to it (both refreshed while this allocation lives). Both peers do this
    /// before the tunnel's handshake, each with the other's relayed address.
    pub async fn route_to(&self, peer_relayed: SocketAddr) -> Result<TunnelRoute, TunnelError> {
        let channel = self.client.bind_channel(peer_relayed).await?;
        Ok(TunnelRoute::Relayed {
            server: self.client.server(),
            channel,
            peer: peer_relayed,
        })
    }

    /// Releases the allocation now (tunnels through it stop working).
    pub async fn release(self: Arc<Self>) -> Result<(), TunnelError> {
        match Arc::try_unwrap(self) {
            Ok(TunnelRelay {
                client,
                _attachment,
                ..
            }) => {
                // the feed stays attached until the release is answered
                Ok(client.close().await?)
            }
            Err(_) => Ok(()),
        }
    }
}
