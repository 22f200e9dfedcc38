//! quickP2P relay: a TURN server (RFC 8656, UDP) for the peers that cannot reach each other
//! directly.
//!
//! Clients authenticate with long-term credentials derived from a shared secret (the TURN REST
//! API scheme, [`credentials`]); the relay enforces per-user allocation quotas and bandwidth, a
//! capacity, and a peer-address policy ([`peer_policy`]: private, loopback, link-local,
//! multicast, unspecified and its own addresses refused unless allowed). Operators and the other
//! roles drive it through the gRPC `quickp2p.v1.Relay` control API (stats, allocations, drain,
//! credential minting), and each replica keeps a record of itself in the shared store
//! ([`registry`]) so the handshake service can pick the least-loaded relay. The crate owns:
//!
//! * [`core`] — the sans-IO TURN server: [`core::TurnServer`] decides what to do with each
//!   client datagram at `now`; [`core::AllocationInfo`] decides for each peer datagram;
//! * [`config`] — [`Config`] (plain data, [`Config::loopback_dev`]) and the `quickp2p-relay`
//!   flags ([`Args`]);
//! * [`credentials`] — minting and checking TURN REST API credentials;
//! * [`counters`] — the metrics;
//! * the driver: [`Relay::bind`] binds the TURN sockets and the control listener,
//!   [`Relay::run`] serves until the shutdown token is cancelled: one thread with a
//!   single-threaded runtime per TURN socket (`workers`), holding that worker's allocations and
//!   their tasks; the control gRPC server and the registry refresher on the caller's runtime.
//!
//! Embedding (the all-in-one supernode passes its embedded store):
//!
//! ```no_run
//! # async fn embed(store: quickp2p_store::Store) -> Result<(), Box<dyn std::error::Error>> {
//! use quickp2p_relay::{Config, Relay};
//! let stop = quickp2p_service_kit::Shutdown::new();
//! let readiness = quickp2p_service_kit::Readiness::new();
//! let relay = Relay::bind(Config::loopback_dev("a shared secret"), store)
//!     .await?
//!     .with_readiness(&readiness);
//! println!("TURN on {}", relay.addresses().turn);
//! tokio::spawn(relay.run(stop.clone()));
//! # Ok(()) }
//! ```

pub mod config;
mod control;
pub mod core;
pub mod counters;
pub mod credentials;
pub mod peer_policy;
pub mod registry;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quickp2p_proto::v1::relay_server::RelayServer;
use quickp2p_service_kit::{Readiness, ReadyFlag, Shutdown, telemetry};
use quickp2p_store::Store;
use tracing::Instrument as _;

pub use config::{Args, Config};
pub use control::stats;
pub use core::{Clock, RelayState};
pub use credentials::{SharedSecret, TurnCredentials, mint_credentials, password_for};

/// How long [`Relay::run`] waits for its tasks after shutdown before it returns anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why [`Relay::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The TURN UDP port could not be bound.
    #[error("cannot bind the TURN UDP port on {addr}: {source}")]
    Turn {
        /// The address asked for.
        addr: SocketAddr,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The gRPC control listener could not be bound.
    #[error("cannot bind the gRPC control listener on {addr}: {source}")]
    Control {
        /// The address asked for.
        addr: SocketAddr,
        /// The system's reason.
        source: std::io::Error,
    },
}

/// Why [`Relay::run`] stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The gRPC control server failed.
    #[error("the gRPC control server failed: {0}")]
    Control(#[from] tonic::transport::Error),
}

/// Where a bound relay listens (port 0 resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The bound TURN UDP address.
    pub turn: SocketAddr,
    /// The TURN address clients are told to use.
    pub advertised: SocketAddr,
    /// The gRPC control listener.
    pub control: SocketAddr,
}

#[derive(Debug, Clone)]
struct ReadyFlags {
    turn: ReadyFlag,
    control: ReadyFlag,
}

impl ReadyFlags {
    fn register(readiness: &Readiness, addresses: &Addresses) -> ReadyFlags {
        ReadyFlags {
            turn: readiness.flag(&format!("relay udp turn {}", addresses.turn)),
            control: readiness.flag(&format!("relay grpc control {}", addresses.control)),
        }
    }

    fn set(&self, ready: bool) {
        self.turn.set(ready);
        self.control.set(ready);
    }
}

/// A relay whose sockets are bound, ready to [`run`](Relay::run).
#[derive(Debug)]
pub struct Relay {
    state: Arc<RelayState>,
    sockets: Vec<std::net::UdpSocket>,
    control: tokio::net::TcpListener,
    addresses: Addresses,
    store: Store,
    ready: ReadyFlags,
}

impl Relay {
    /// Binds the TURN port (`config.workers` sockets) and the control listener. Ports 0 pick free
    /// ports; the configuration is updated with them (an advertised port 0 becomes the bound
    /// one). `store` holds the replica registry: the embedded store of the all-in-one process, or
    /// Redis.
    pub async fn bind(config: Config, store: Store) -> Result<Relay, BindError> {
        let mut config = config;
        let sockets = udp::bind_listeners(config.listen, config.workers).map_err(|source| {
            BindError::Turn {
                addr: config.listen,
                source,
            }
        })?;
        let turn = sockets
            .first()
            .map(|s| s.local_addr())
            .transpose()
            .map_err(|source| BindError::Turn {
                addr: config.listen,
                source,
            })?
            .unwrap_or(config.listen);
        let control = tokio::net::TcpListener::bind(config.control_addr)
            .await
            .map_err(|source| BindError::Control {
                addr: config.control_addr,
                source,
            })?;
        let control_addr = control.local_addr().map_err(|source| BindError::Control {
            addr: config.control_addr,
            source,
        })?;
        config.listen = turn;
        if config.advertised.port() == 0 {
            config.advertised.set_port(turn.port());
        }
        config.control_addr = control_addr;
        let addresses = Addresses {
            turn,
            advertised: config.advertised,
            control: control_addr,
        };
        let state = Arc::new(RelayState::new(
            Arc::new(config),
            Clock::system(),
            rand::random(),
        ));
        let ready = ReadyFlags::register(&Readiness::new(), &addresses);
        Ok(Relay {
            state,
            sockets,
            control,
            addresses,
            store,
            ready,
        })
    }

    /// Registers this relay's readiness conditions (TURN socket, control listener) in
    /// `readiness`, the process's `/readyz`.
    #[must_use]
    pub fn with_readiness(mut self, readiness: &Readiness) -> Relay {
        self.ready = ReadyFlags::register(readiness, &self.addresses);
        self
    }

    /// The bound addresses.
    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    /// The configuration in force (ports resolved).
    pub fn config(&self) -> &Config {
        self.state.config()
    }

    /// The shared state: counters, drain switch, allocation directory.
    pub fn state(&self) -> Arc<RelayState> {
        Arc::clone(&self.state)
    }

    /// Serves until `shutdown` is cancelled (or the control server fails), then ends every
    /// allocation, removes the registry record and returns.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), RunError> {
        let stop = shutdown.child_token();
        let span = tracing::info_span!("relay", id = %self.state.config().relay_id);
        let mut tasks = tokio::task::JoinSet::new();
        let workers = Arc::new(udp::Workers::default());
        for (index, socket) in self.sockets.into_iter().enumerate() {
            match udp::spawn_worker(
                index,
                Arc::clone(&self.state),
                socket,
                Arc::clone(&workers),
                stop.clone(),
                span.clone(),
            ) {
                Ok(finished) => {
                    let stop = stop.clone();
                    let span = span.clone();
                    tasks.spawn(async move {
                        // the thread drops the sender without a word only when it panicked
                        if finished.await.is_err() && !stop.is_cancelled() {
                            tracing::error!(parent: &span, worker = index, "a relay worker thread died; stopping");
                            stop.cancel();
                        }
                    });
                }
                Err(e) => {
                    tracing::error!(parent: &span, error = %e, "cannot start a relay worker thread");
                    stop.cancel();
                }
            }
        }
        let wake = Arc::new(tokio::sync::Notify::new());
        tasks.spawn(
            registry::maintain(
                Arc::clone(&self.state),
                self.store.clone(),
                self.addresses.advertised,
                self.addresses.control,
                Arc::clone(&wake),
                stop.clone(),
            )
            .instrument(span.clone()),
        );
        let service = control::ControlService {
            state: Arc::clone(&self.state),
            advertised: self.addresses.advertised,
            registry_wake: wake,
        };
        let control_stop = stop.clone();
        let listener = self.control;
        let mut control = tokio::spawn(
            async move {
                tonic::transport::Server::builder()
                    .layer(telemetry::GrpcTraceLayer)
                    .add_service(RelayServer::new(service))
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener),
                        control_stop.cancelled_owned(),
                    )
                    .await
            }
            .instrument(span.clone()),
        );
        self.ready.set(true);
        tracing::info!(
            parent: &span,
            turn = %self.addresses.turn,
            advertised = %self.addresses.advertised,
            control = %self.addresses.control,
            "relay running"
        );
        let mut result = Ok(());
        tokio::select! {
            () = stop.cancelled() => {}
            finished = &mut control => {
                if let Ok(Err(e)) = finished {
                    tracing::error!(parent: &span, error = %e, "gRPC control server failed");
                    result = Err(RunError::Control(e));
                }
                stop.cancel();
            }
        }
        self.ready.set(false);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while tasks.join_next().await.is_some() {}
            if !control.is_finished() {
                let _ = (&mut control).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(parent: &span, timeout = ?DRAIN_TIMEOUT, "tasks still running after the drain timeout");
            tasks.abort_all();
            control.abort();
        }
        result
    }
}
