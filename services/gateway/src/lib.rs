//! quickP2P gateway: terminates peer sessions.
//!
//! Peers connect with QUIC (ALPN `quickp2p/1`) and open one bidirectional control stream carrying
//! length-delimited `PeerRequest` / `GatewayFrame` frames (`quickp2p_proto::frame`). One task
//! (the `endpoint` module) drives `quinn_proto` for every connection: it reads the socket,
//! decodes frames, runs the session logic (the `connection` module) and sends the answers; what
//! waits on another service runs in a task of its own. The gateway
//!
//! * authenticates peers through the checkpoint (gRPC, with W3C trace context): challenge, login,
//!   batched heartbeats (the `heartbeat` module), logout;
//! * records the route peer → this gateway in the store at login (refreshed by heartbeats,
//!   removed with compare-and-delete when the connection ends) and the reflexive address it sees
//!   (sent to the checkpoint at login and with every heartbeat, returned to the peer in `Welcome`);
//! * delivers instant messages: to a peer attached here directly; to a peer on another replica
//!   as an item on the long-lived gRPC `DeliverStream` to that replica (found through the route
//!   and the replica registry). `MessageAccepted` is only sent after the target gateway
//!   acknowledged that the message is in the recipient's queue, so an accepted message is never
//!   lost to pub/sub;
//! * pushes presence changes (from the checkpoint's [`PRESENCE_CHANNEL`] events) to watchers;
//! * enforces per-session limits — requests/s, requests in flight, message size, queue depth,
//!   frame size — each answered with a clear error code and counted in
//!   `qp_gateway_rejections_total{kind}`.
//!
//! Embedding:
//!
//! ```no_run
//! # async fn demo(store: quickp2p_store::Store) -> Result<(), Box<dyn std::error::Error>> {
//! use quickp2p_gateway::{Config, Gateway};
//! let gateway = Gateway::bind(Config::loopback("http://127.0.0.1:50052"), store)?;
//! println!("QUIC on {} (sha256 {})", gateway.addresses().quic, gateway.fingerprint_hex());
//! gateway.run(quickp2p_service_kit::Shutdown::new()).await?;
//! # Ok(()) }
//! ```

pub mod config;
mod connection;
mod dedup;
mod deliver;
mod endpoint;
mod handshake;
mod heartbeat;
mod index;
mod registry;
mod remote;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message as _;
use quickp2p_proto::v1::{
    self, checkpoint_client::CheckpointClient, deliver_server::DeliverServer,
};
use quickp2p_service_kit::{Readiness, ReadyFlag, Shutdown, telemetry};
use quickp2p_store::{ReplicaInfo, Store};
use tokio::sync::mpsc;
use tracing::Instrument as _;

pub use crate::config::{Args, CertSource, Config, Limits};
pub use crate::deliver::DeliverService;
pub use crate::endpoint::ConnRef;
pub use crate::registry::Registry;
pub use crate::remote::GATEWAY_ROLE;

/// The store event channel the checkpoint publishes presence changes on.
pub const PRESENCE_CHANNEL: &str = "presence";
/// How often the replica registration is refreshed, and its TTL.
pub const REGISTRATION_REFRESH: Duration = Duration::from_secs(3);
const REGISTRATION_TTL: Duration = Duration::from_secs(10);
/// How long [`Gateway::run`] waits for connections to close after shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Why [`Gateway::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The certificate could not be loaded or made.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The UDP socket could not be bound.
    #[error("cannot bind the QUIC listener on {addr}: {source}")]
    Udp {
        /// The address asked for.
        addr: SocketAddr,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The Deliver gRPC listener could not be bound.
    #[error("cannot bind the Deliver gRPC listener on {addr}: {source}")]
    Grpc {
        /// The address asked for.
        addr: SocketAddr,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The checkpoint URL is not usable.
    #[error(transparent)]
    Checkpoint(#[from] remote::EndpointError),
    /// The index URL is not usable.
    #[error(transparent)]
    Index(#[from] index::IndexUrlError),
    /// The handshake URL is not usable.
    #[error(transparent)]
    Handshake(#[from] handshake::HandshakeUrlError),
}

/// Why [`Gateway::run`] stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The Deliver gRPC server failed.
    #[error("the Deliver gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The QUIC listener's socket failed.
    #[error("the QUIC listener failed: {0}")]
    Quic(std::io::Error),
}

/// Where a bound gateway listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    /// The QUIC (UDP) listener peers connect to.
    pub quic: SocketAddr,
    /// The internal Deliver gRPC listener.
    pub grpc: SocketAddr,
    /// The Deliver URL other replicas use.
    pub advertised_grpc: String,
    /// Where peers reach the QUIC listener from outside ([`Config::advertised_quic`], else the
    /// bound address).
    pub advertised_quic: SocketAddr,
}

/// What every task of the gateway shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) registry: Registry,
    pub(crate) checkpoint: CheckpointClient<remote::Traced>,
    /// Where publish/unpublish/lookup/query requests go.
    pub(crate) index: index::IndexBackend,
    /// Where tunnel requests, candidates and punch outcomes go.
    pub(crate) handshake: handshake::HandshakeBackend,
    pub(crate) peers: remote::Peers,
    pub(crate) heartbeats: mpsc::Sender<heartbeat::Beat>,
    /// Deduplication records on their way to the store.
    pub(crate) dedup: mpsc::Sender<dedup::Record>,
    pub(crate) stop: Shutdown,
    /// Recently read routes.
    routes: std::sync::Mutex<RouteCache>,
}

/// How long a route read from the store is reused; a miss on it triggers a fresh read.
/// A cached route is never wrong in a way that matters: a recipient that moved or left is
/// `NOT_ATTACHED` at its old gateway (or that gateway's stream fails), and the route is read
/// again at once. So entries live long — between 3/4 of this and this, at random, so that routes
/// read together (every sender starts at once) do not all expire together; a burst of route
/// reads on the message path showed as a burst of late messages.
const ROUTE_CACHE: Duration = Duration::from_secs(60);
/// Most routes cached before the cache is emptied.
const ROUTE_CACHE_MAX: usize = 100_000;

/// Recently read routes: application → peer key → (gateway id, fresh until). Looked up with
/// borrowed keys, so a cached route costs no allocation.
#[derive(Debug, Default)]
pub(crate) struct RouteCache {
    by_app: HashMap<String, HashMap<[u8; 32], CachedRoute>>,
    len: usize,
}

/// A route read from the store: the gateway id, and until when it is used without a new read.
type CachedRoute = (Arc<str>, Instant);

impl Shared {
    fn routes(&self) -> std::sync::MutexGuard<'_, RouteCache> {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The gateway holding a peer's session if a read of it is still fresh in the cache.
    pub(crate) fn cached_route(&self, app: &str, peer: &[u8; 32]) -> Option<Arc<str>> {
        let routes = self.routes();
        let (gw, at) = routes.by_app.get(app)?.get(peer)?;
        (Instant::now() < *at).then(|| Arc::clone(gw))
    }

    /// The gateway holding a peer's session (`peer` and its hex form): from the cache unless
    /// `fresh`, else from the store.
    pub(crate) async fn route(
        &self,
        app: &str,
        peer: &[u8; 32],
        peer_hex: &str,
        fresh: bool,
    ) -> Result<Option<Arc<str>>, quickp2p_store::StoreError> {
        if !fresh && let Some(gw) = self.cached_route(app, peer) {
            return Ok(Some(gw));
        }
        let route: Option<Arc<str>> = self.store.get_route(app, peer_hex).await?.map(Arc::from);
        let mut routes = self.routes();
        if routes.len >= ROUTE_CACHE_MAX {
            *routes = RouteCache::default();
        }
        let RouteCache { by_app, len } = &mut *routes;
        match &route {
            Some(gw) => {
                let peers = match by_app.get_mut(app) {
                    Some(peers) => peers,
                    None => by_app.entry(app.to_owned()).or_default(),
                };
                let [r] = random_bytes::<1>();
                let lifetime = ROUTE_CACHE.mul_f64(0.75 + 0.25 * f64::from(r) / 255.0);
                if peers
                    .insert(*peer, (Arc::clone(gw), Instant::now() + lifetime))
                    .is_none()
                {
                    *len += 1;
                }
            }
            None => {
                if let Some(peers) = by_app.get_mut(app)
                    && peers.remove(peer).is_some()
                {
                    *len -= 1;
                }
            }
        }
        Ok(route)
    }
}

/// A gateway whose listeners are bound, ready to [`run`](Gateway::run).
#[derive(Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
    endpoint: endpoint::Driver,
    grpc: tokio::net::TcpListener,
    addresses: Addresses,
    fingerprint: [u8; 32],
    beats: mpsc::Receiver<heartbeat::Beat>,
    dedup_records: mpsc::Receiver<dedup::Record>,
    ready: ReadyFlag,
}

impl Gateway {
    /// Loads (or makes) the certificate and binds the QUIC and Deliver listeners. Must be called
    /// inside a tokio runtime.
    pub fn bind(config: Config, store: Store) -> Result<Gateway, BindError> {
        let identity = tls::Identity::load(&config.cert)?;
        let server = identity.server_config(config.idle_timeout)?;
        let socket =
            std::net::UdpSocket::bind(config.udp_addr).map_err(|source| BindError::Udp {
                addr: config.udp_addr,
                source,
            })?;
        let std_grpc =
            std::net::TcpListener::bind(config.grpc_addr).map_err(|source| BindError::Grpc {
                addr: config.grpc_addr,
                source,
            })?;
        let grpc_err = |source| BindError::Grpc {
            addr: config.grpc_addr,
            source,
        };
        std_grpc.set_nonblocking(true).map_err(grpc_err)?;
        let grpc = tokio::net::TcpListener::from_std(std_grpc).map_err(grpc_err)?;
        let grpc_addr = grpc.local_addr().map_err(grpc_err)?;
        let advertised_grpc = config
            .advertised_grpc
            .clone()
            .unwrap_or_else(|| format!("http://{grpc_addr}"));
        let checkpoint = remote::checkpoint(&config.checkpoint_url)?;
        let index = index::IndexBackend::new(config.index_url.as_deref(), store.clone())?;
        let handshake = handshake::HandshakeBackend::new(
            config.handshake_url.as_deref(),
            store.clone(),
            &config.gateway_id,
        )?;
        let (heartbeats, beats) = mpsc::channel(4096);
        let (dedup, dedup_records) = mpsc::channel(dedup::QUEUE);
        let udp_addr = config.udp_addr;
        let shared = Arc::new(Shared {
            registry: Registry::default(),
            peers: remote::Peers::new(store.clone()),
            checkpoint,
            index,
            handshake,
            heartbeats,
            dedup,
            stop: Shutdown::new(),
            routes: std::sync::Mutex::default(),
            store,
            config,
        });
        let udp_error = |source| BindError::Udp {
            addr: udp_addr,
            source,
        };
        let endpoint =
            endpoint::Driver::new(Arc::clone(&shared), socket, server).map_err(udp_error)?;
        let quic = endpoint.local_addr().map_err(udp_error)?;
        let advertised_quic = shared.config.advertised_quic.unwrap_or(quic);
        Ok(Gateway {
            shared,
            endpoint,
            grpc,
            addresses: Addresses {
                quic,
                grpc: grpc_addr,
                advertised_grpc,
                advertised_quic,
            },
            fingerprint: identity.fingerprint,
            beats,
            dedup_records,
            ready: Readiness::new().flag("unused"),
        })
    }

    /// Registers the listeners' readiness in `readiness` (the process's `/readyz`).
    #[must_use]
    pub fn with_readiness(mut self, readiness: &Readiness) -> Gateway {
        self.ready = readiness.flag(&format!(
            "gateway {} quic {} grpc {}",
            self.shared.config.gateway_id, self.addresses.quic, self.addresses.grpc
        ));
        self
    }

    /// The bound addresses.
    pub fn addresses(&self) -> Addresses {
        self.addresses.clone()
    }

    /// SHA-256 of the certificate peers see (what the SDK pins).
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// [`Gateway::fingerprint`] as 64 lowercase hex digits.
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint)
    }

    /// This replica's id.
    pub fn gateway_id(&self) -> &str {
        &self.shared.config.gateway_id
    }

    /// Serves until `shutdown` is cancelled: peers are told to go away (their sessions stay, so
    /// they resume on another gateway), the replica is deregistered.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), RunError> {
        let shared = self.shared;
        let span = tracing::info_span!("gateway", id = %shared.config.gateway_id);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(heartbeat::run(Arc::clone(&shared), self.beats).instrument(span.clone()));
        let dedup_done = Shutdown::new();
        let mut dedup = tokio::spawn(
            dedup::run(shared.store.clone(), self.dedup_records, dedup_done.clone())
                .instrument(span.clone()),
        );
        tasks.spawn(register(Arc::clone(&shared), self.addresses.clone()).instrument(span.clone()));
        tasks.spawn(presence_events(Arc::clone(&shared)).instrument(span.clone()));
        let grpc_stop = shared.stop.clone();
        let listener = self.grpc;
        let service = DeliverService {
            shared: Arc::clone(&shared),
        };
        let mut grpc = tokio::spawn(
            async move {
                tonic::transport::Server::builder()
                    .layer(telemetry::GrpcTraceLayer)
                    .add_service(DeliverServer::new(service))
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true)),
                        grpc_stop.cancelled_owned(),
                    )
                    .await
            }
            .instrument(span.clone()),
        );
        self.ready.set(true);
        tracing::info!(parent: &span, quic = %self.addresses.quic, grpc = %self.addresses.grpc, "gateway running");
        let mut quic = tokio::spawn(self.endpoint.run().instrument(span.clone()));
        let mut result = Ok(());
        let mut quic_done = false;
        tokio::select! {
            () = shutdown.cancelled() => {}
            finished = &mut grpc => {
                if let Ok(Err(e)) = finished {
                    tracing::error!(parent: &span, error = %e, "Deliver gRPC server failed");
                    result = Err(RunError::Grpc(e));
                }
            }
            finished = &mut quic => {
                quic_done = true;
                if let Ok(Err(e)) = finished {
                    tracing::error!(parent: &span, error = %e, "QUIC listener failed");
                    result = Err(RunError::Quic(e));
                }
            }
        }
        self.ready.set(false);
        // the endpoint tells every peer to go away, closes and drains their connections (at most
        // DRAIN_TIMEOUT, then closes the rest), and waits for their sessions' cleanup
        shared.stop.cancel();
        let _ = shared
            .store
            .deregister_replica(GATEWAY_ROLE, &shared.config.gateway_id)
            .await;
        if !quic_done {
            let _ = quic.await;
        }
        // no session is left to accept messages: the dedup writer stores what is still queued
        // (peers that moved to another gateway may resend right away), for at most a second
        dedup_done.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut dedup).await;
        dedup.abort();
        tasks.abort_all();
        if !grpc.is_finished() {
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut grpc).await;
        }
        result
    }
}

/// Keeps this replica in the registry (other gateways find its Deliver URL there).
async fn register(shared: Arc<Shared>, addresses: Addresses) {
    let mut tick = tokio::time::interval(REGISTRATION_REFRESH);
    loop {
        tick.tick().await;
        let mut info = ReplicaInfo {
            advertised_addr: addresses.advertised_grpc.clone(),
            load: shared.registry.len() as u64,
            ..ReplicaInfo::default()
        };
        info.metadata
            .insert("quic".into(), addresses.quic.to_string());
        info.metadata.insert(
            "advertised_quic".into(),
            addresses.advertised_quic.to_string(),
        );
        if let Err(e) = shared
            .store
            .register_replica(
                GATEWAY_ROLE,
                &shared.config.gateway_id,
                &info,
                REGISTRATION_TTL,
            )
            .await
        {
            tracing::warn!(error = %e, "replica registration not refreshed");
        }
    }
}

/// Forwards presence changes published by the checkpoint to the watchers attached here.
async fn presence_events(shared: Arc<Shared>) {
    let mut events = loop {
        match shared.store.subscribe_events(PRESENCE_CHANNEL).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to presence events yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    while let Some(payload) = events.recv().await {
        let Ok(event) = v1::PresenceEvent::decode(payload) else {
            tracing::warn!("undecodable presence event");
            continue;
        };
        let (Some(app), Some(state)) = (event.app_id, event.state) else {
            continue;
        };
        let Some(key) = state.peer.as_ref().and_then(|p| p.public_key().ok()) else {
            continue;
        };
        let frame = remote::event_frame(v1::PeerEvent {
            event: Some(v1::peer_event::Event::PresenceChanged(
                v1::PresenceChanged { state: Some(state) },
            )),
        });
        shared.registry.notify_watchers(&(app.value, key), &frame);
    }
}

/// Counts one refused request or frame by kind.
pub(crate) fn reject(kind: &'static str) {
    metrics::counter!("qp_gateway_rejections_total", "kind" => kind).increment(1);
}

/// A message as one frame.
pub(crate) fn frame_bytes<M: prost::Message>(msg: &M) -> Bytes {
    // gateway frames are built from bounded parts (payload ≤ max message bytes)
    quickp2p_proto::frame::frame_to_bytes(msg).unwrap_or_default()
}

/// A `Kicked` event frame.
pub(crate) fn kicked_frame(reason: v1::KickReason, message: &str) -> Bytes {
    remote::event_frame(v1::PeerEvent {
        event: Some(v1::peer_event::Event::Kicked(v1::Kicked {
            reason: reason as i32,
            message: message.to_owned(),
            reconnect_after_ms: 0,
        })),
    })
}

/// Now in microseconds since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Now in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    now_us() / 1000
}

/// `N` random bytes.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom as _;
    let mut out = [0u8; N];
    if ring::rand::SystemRandom::new().fill(&mut out).is_err() {
        panic!("the operating system's random generator failed");
    }
    out
}
