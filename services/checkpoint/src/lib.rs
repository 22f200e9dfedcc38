//! quickP2P checkpoint: identity, sessions and presence.
//!
//! The checkpoint serves the `quickp2p.v1.Checkpoint` gRPC service (called by gateways, never by
//! peers) over the shared [`Store`]:
//!
//! * **applications** (tenants) with secrets — [`apps::Apps`], also used by the operator CLI
//!   (`quickp2p-checkpoint app create|list|revoke|secret-create|secret-revoke`, which talks to the
//!   store directly);
//! * **login**: a gateway-issued, single-use challenge (taken once from the store, so a replay
//!   fails on every replica), an Ed25519 signature by the peer's key over the login transcript
//!   (`quickp2p_proto::login`) and an HMAC app proof; the peer id is the public key;
//! * **sessions** with expiry, renewed by batched heartbeats; **presence** records with the same
//!   TTL; online/offline [`v1::PresenceEvent`]s published on the store channel
//!   [`PRESENCE_CHANNEL`] for the gateways.
//!
//! Embedding (what the all-in-one supernode does):
//!
//! ```no_run
//! # async fn demo(store: quickp2p_store::Store) -> Result<(), Box<dyn std::error::Error>> {
//! use quickp2p_checkpoint::{Checkpoint, Config, ensure_dev_application};
//! let app = ensure_dev_application(&store, "dev").await?;
//! println!("app {} secret {}", app.app_id, app.secret);
//! let checkpoint = Checkpoint::bind(Config::loopback(), store).await?;
//! println!("checkpoint gRPC on {}", checkpoint.addresses().grpc);
//! checkpoint.run(quickp2p_service_kit::Shutdown::new()).await?;
//! # Ok(()) }
//! ```
//!
//! Or, to serve it on an existing tonic server: [`Checkpoint::grpc_service`].

pub mod apps;
mod error;
mod service;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use quickp2p_proto::v1;
use quickp2p_proto::v1::checkpoint_server::CheckpointServer;
use quickp2p_service_kit::config::{FieldErrors, ServiceArgs, ServiceConfig, ServiceDefaults};
use quickp2p_service_kit::{Readiness, ReadyFlag, Shutdown, telemetry};
use quickp2p_store::Store;

pub use crate::error::CheckpointError;
pub use crate::service::{CheckpointService, MAX_BATCH, PRESENCE_CHANNEL, SessionRecord};

/// Default address of the checkpoint's gRPC listener (loopback dev setup).
pub const DEFAULT_GRPC_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50052);
/// Default operations HTTP address of a lone `quickp2p-checkpoint` process.
pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9452);

/// The checkpoint's configuration: plain data. [`Config::default`] is the loopback dev setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the gRPC listener binds (port 0 picks one).
    pub grpc_addr: SocketAddr,
    /// How long a session (and the peer's presence) lives without a heartbeat.
    pub session_ttl: Duration,
    /// How often gateways must heartbeat each session (told to peers at login); below
    /// `session_ttl`.
    pub heartbeat_interval: Duration,
    /// How long an issued challenge may be answered.
    pub challenge_ttl: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            grpc_addr: DEFAULT_GRPC_ADDR,
            session_ttl: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(20),
            challenge_ttl: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// The loopback dev setup on a free port (tests, the all-in-one).
    pub fn loopback() -> Config {
        Config {
            grpc_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            ..Config::default()
        }
    }
}

/// An application's id and one of its secrets, as the SDK needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevApplication {
    /// The application id.
    pub app_id: String,
    /// The secret's id.
    pub secret_id: String,
    /// The secret.
    pub secret: String,
}

/// Returns the application `app_id` with an active secret, creating it if it does not exist (the
/// all-in-one supernode prints it so that peers can log in at once).
pub async fn ensure_dev_application(
    store: &Store,
    app_id: &str,
) -> Result<DevApplication, CheckpointError> {
    let apps = apps::Apps::new(store.clone());
    if let Some(app) = apps.get(app_id).await? {
        if let Some(secret) = app.secrets.active().next().filter(|_| app.is_active()) {
            return Ok(DevApplication {
                app_id: app_id.to_owned(),
                secret_id: secret.id.clone(),
                secret: secret.secret.clone(),
            });
        }
        let issued = apps.create_secret(app_id, "dev").await?;
        return Ok(DevApplication {
            app_id: app_id.to_owned(),
            secret_id: issued.secret_id,
            secret: issued.secret,
        });
    }
    match apps.create(app_id, "development application", "dev").await {
        Ok((_, issued)) => Ok(DevApplication {
            app_id: app_id.to_owned(),
            secret_id: issued.secret_id,
            secret: issued.secret,
        }),
        // created concurrently by another replica: read it back
        Err(CheckpointError::AlreadyExists(_)) => {
            Box::pin(ensure_dev_application(store, app_id)).await
        }
        Err(e) => Err(e),
    }
}

/// Why [`Checkpoint::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The gRPC listener could not be bound.
    #[error("cannot bind the checkpoint gRPC listener on {addr}: {source}")]
    Grpc {
        /// The address asked for.
        addr: SocketAddr,
        /// The system's reason.
        source: std::io::Error,
    },
}

/// Why [`Checkpoint::run`] stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The gRPC server failed.
    #[error("the checkpoint gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// Where a bound checkpoint listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The gRPC listener (port 0 resolved).
    pub grpc: SocketAddr,
}

/// A checkpoint whose listener is bound, ready to [`run`](Checkpoint::run).
#[derive(Debug)]
pub struct Checkpoint {
    service: CheckpointService,
    listener: tokio::net::TcpListener,
    addresses: Addresses,
    ready: ReadyFlag,
}

impl Checkpoint {
    /// Binds the gRPC listener.
    pub async fn bind(config: Config, store: Store) -> Result<Checkpoint, BindError> {
        let listener = tokio::net::TcpListener::bind(config.grpc_addr)
            .await
            .map_err(|source| BindError::Grpc {
                addr: config.grpc_addr,
                source,
            })?;
        let grpc = listener.local_addr().map_err(|source| BindError::Grpc {
            addr: config.grpc_addr,
            source,
        })?;
        Ok(Checkpoint {
            service: CheckpointService::new(store, config),
            listener,
            addresses: Addresses { grpc },
            ready: Readiness::new().flag("unused"),
        })
    }

    /// The service alone, to add to another tonic server (no listener of its own).
    pub fn grpc_service(store: Store, config: Config) -> CheckpointServer<CheckpointService> {
        CheckpointServer::new(CheckpointService::new(store, config))
    }

    /// Registers the listener's readiness in `readiness` (the process's `/readyz`).
    #[must_use]
    pub fn with_readiness(mut self, readiness: &Readiness) -> Checkpoint {
        self.ready = readiness.flag(&format!("checkpoint grpc {}", self.addresses.grpc));
        self
    }

    /// The bound addresses.
    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    /// The service (application management, direct calls in tests).
    pub fn service(&self) -> &CheckpointService {
        &self.service
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), RunError> {
        self.ready.set(true);
        tracing::info!(grpc = %self.addresses.grpc, "checkpoint running");
        let served = tonic::transport::Server::builder()
            .layer(telemetry::GrpcTraceLayer)
            .add_service(CheckpointServer::new(self.service))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(self.listener),
                shutdown.cancelled_owned(),
            )
            .await;
        self.ready.set(false);
        served.map_err(RunError::from)
    }
}

/// Command-line flags of `quickp2p-checkpoint`, each also read from its `QP_CHECKPOINT_*`
/// variable (the shared ones from `QP_*`).
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "quickp2p-checkpoint",
    version,
    about = "quickP2P checkpoint: applications, peer login, sessions and presence (gRPC)"
)]
pub struct Args {
    /// Address of the gRPC listener. [default: 127.0.0.1:50052]
    #[arg(
        long,
        env = "QP_CHECKPOINT_GRPC_ADDR",
        value_name = "IP:PORT",
        global = true
    )]
    pub grpc_addr: Option<String>,

    /// Session (and presence) lifetime without a heartbeat, in milliseconds. [default: 60000]
    #[arg(
        long,
        env = "QP_CHECKPOINT_SESSION_TTL_MS",
        value_name = "MS",
        global = true
    )]
    pub session_ttl_ms: Option<String>,

    /// Heartbeat interval told to gateways and peers, in milliseconds; below the session TTL.
    /// [default: 20000]
    #[arg(
        long,
        env = "QP_CHECKPOINT_HEARTBEAT_INTERVAL_MS",
        value_name = "MS",
        global = true
    )]
    pub heartbeat_interval_ms: Option<String>,

    /// How long a login challenge may be answered, in milliseconds. [default: 30000]
    #[arg(
        long,
        env = "QP_CHECKPOINT_CHALLENGE_TTL_MS",
        value_name = "MS",
        global = true
    )]
    pub challenge_ttl_ms: Option<String>,

    #[command(flatten)]
    /// Flags every quickP2P process takes.
    pub service: ServiceArgs,

    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `quickp2p-checkpoint` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Serve the Checkpoint gRPC service (the default).
    Serve,
    /// Manage applications directly in the store (needs --redis).
    #[command(subcommand)]
    App(AppCommand),
}

/// `quickp2p-checkpoint app …`: application management on the store.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AppCommand {
    /// Create an application; prints its id and first secret (shown only once).
    Create {
        /// The id (1 to 64 of a-z, 0-9, '-'); generated when absent.
        #[arg(long)]
        id: Option<String>,
        /// Human-readable name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List applications.
    List {
        /// Include revoked applications.
        #[arg(long)]
        all: bool,
    },
    /// Revoke an application (final): logins are refused and its sessions end.
    Revoke {
        /// The application id.
        id: String,
    },
    /// Issue another secret for an application (rotation); prints it once.
    SecretCreate {
        /// The application id.
        id: String,
        /// Label of the secret.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke one secret of an application.
    SecretRevoke {
        /// The application id.
        id: String,
        /// The secret id, e.g. s1.
        secret_id: String,
    },
}

/// Defaults of a lone checkpoint process.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    service_name: "quickp2p-checkpoint",
    http_addr: DEFAULT_HTTP_ADDR,
    embedded_store_allowed: false,
};

impl Args {
    /// Validates every flag; all problems are reported together.
    pub fn resolve(&self) -> Result<(ServiceConfig, Config), quickp2p_service_kit::ConfigError> {
        let mut errs = FieldErrors::new();
        let service = self.service.resolve(&DEFAULTS, &mut errs);
        let d = Config::default();
        let grpc_addr = errs.socket_addr(
            "--grpc-addr / QP_CHECKPOINT_GRPC_ADDR",
            self.grpc_addr.as_deref(),
            d.grpc_addr,
        );
        let mut millis = |name: &str, raw: Option<&str>, default: Duration| {
            let v: u64 = errs.parse(name, raw, u64::try_from(default.as_millis()).unwrap_or(0));
            errs.check(
                name,
                v >= 100,
                format!("{v} ms is too short (at least 100)"),
            );
            Duration::from_millis(v)
        };
        let session_ttl = millis(
            "--session-ttl-ms / QP_CHECKPOINT_SESSION_TTL_MS",
            self.session_ttl_ms.as_deref(),
            d.session_ttl,
        );
        let heartbeat_interval = millis(
            "--heartbeat-interval-ms / QP_CHECKPOINT_HEARTBEAT_INTERVAL_MS",
            self.heartbeat_interval_ms.as_deref(),
            if self.session_ttl_ms.is_some() {
                session_ttl / 3
            } else {
                d.heartbeat_interval
            },
        );
        let challenge_ttl = millis(
            "--challenge-ttl-ms / QP_CHECKPOINT_CHALLENGE_TTL_MS",
            self.challenge_ttl_ms.as_deref(),
            d.challenge_ttl,
        );
        errs.check(
            "--heartbeat-interval-ms / QP_CHECKPOINT_HEARTBEAT_INTERVAL_MS",
            heartbeat_interval < session_ttl,
            format!(
                "{} ms must be below the session TTL ({} ms)",
                heartbeat_interval.as_millis(),
                session_ttl.as_millis()
            ),
        );
        errs.finish()?;
        Ok((
            service,
            Config {
                grpc_addr,
                session_ttl,
                heartbeat_interval,
                challenge_ttl,
            },
        ))
    }
}

/// Application ids as the protocol carries them.
pub fn app_id(id: &str) -> v1::AppId {
    v1::AppId::new(id)
}
