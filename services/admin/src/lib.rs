//! quickP2P admin: the entry point for management and support systems.
//!
//! The admin serves the `quickp2p.v1.Admin` gRPC service (see `admin.proto`) plus gRPC server
//! reflection on one listener (default `0.0.0.0:50055`):
//!
//! * **peers** across every gateway: list/search (paginated by application, then peer id) and
//!   one peer's presence, session, gateway, NAT behaviour and published record — read from the
//!   shared [`Store`];
//! * **index queries** of any application: through the Index role's gRPC service when
//!   `QP_ADMIN_INDEX_URL` is set, otherwise straight from the store (same semantics);
//! * **network statistics** ([`stats`]): peers per application, NAT histogram, punch outcomes per
//!   NAT pair (counters the handshake role writes, see [`quickp2p_store::names`]), relay use
//!   (each relay's control API, or its registry record) and replicas per role;
//! * **actions**: kick a peer and broadcast to an application through the gateways' internal
//!   `Deliver` service (found through the route peer → gateway and the replica registry);
//! * **applications and secrets**, with the checkpoint's [`quickp2p_checkpoint::apps`] logic.
//!
//! **Access** ([`tokens`]): every data rpc needs `authorization: Bearer TOKEN` with a token from
//! `QP_ADMIN_TOKENS_FILE`; read-only tokens may only read. Server reflection is metadata only (the
//! service and message descriptors, all public in `proto/`) and needs no token, so `grpcurl` can
//! list and describe the API before it has one. **Every write** (and every write refused to a
//! read-only token) is recorded as an audit event ([`audit`]).

pub mod audit;
mod error;
mod service;
pub mod stats;
pub mod tokens;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use quickp2p_proto::v1::admin_server::AdminServer;
use quickp2p_service_kit::config::{FieldErrors, ServiceArgs, ServiceConfig, ServiceDefaults};
use quickp2p_service_kit::{Readiness, ReadyFlag, Shutdown, telemetry};
use quickp2p_store::{ReplicaInfo, Store};

pub use crate::error::AdminError;
pub use crate::service::AdminService;
pub use crate::tokens::{Access, AdminToken, Caller, Tokens};

/// Default address of the admin gRPC listener.
pub const DEFAULT_GRPC_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 50055);
/// Default operations HTTP address of a lone `quickp2p-admin` process.
pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9455);
/// The replica registry role admin replicas register under.
pub const REGISTRY_ROLE: &str = "admin";
/// How long a call to a gateway, relay or the index may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The admin's configuration: plain data. [`Config::default`] is the dev setup without tokens
/// (which refuses every data rpc); set [`Config::tokens`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the gRPC listener binds (port 0 picks one).
    pub grpc_addr: SocketAddr,
    /// The accepted bearer tokens.
    pub tokens: Tokens,
    /// The Index role's gRPC URL (`http://host:port`); `None` = query the store directly.
    pub index_url: Option<String>,
    /// This replica's id (the `origin` of its Deliver calls, its registry record).
    pub replica_id: String,
    /// The address other services reach this replica at, for its registry record; `None` = the
    /// bound address.
    pub advertised_grpc: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            grpc_addr: DEFAULT_GRPC_ADDR,
            tokens: Tokens::default(),
            index_url: None,
            replica_id: "admin".to_owned(),
            advertised_grpc: None,
        }
    }
}

impl Config {
    /// Loopback on a free port with these tokens (tests, the all-in-one).
    pub fn loopback(tokens: Tokens) -> Config {
        Config {
            grpc_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            tokens,
            ..Config::default()
        }
    }
}

/// Why [`Admin::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The gRPC listener could not be bound.
    #[error("cannot bind the admin gRPC listener on {addr}: {source}")]
    Grpc {
        /// The address asked for.
        addr: SocketAddr,
        /// The system's reason.
        source: std::io::Error,
    },
    /// No token is configured: the API would refuse everyone.
    #[error("no admin token is configured (QP_ADMIN_TOKENS_FILE)")]
    NoTokens,
    /// The index URL is not a valid endpoint.
    #[error("QP_ADMIN_INDEX_URL {url:?} is not usable: {message}")]
    IndexUrl {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
}

/// Why [`Admin::run`] stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The gRPC server failed.
    #[error("the admin gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The reflection service could not be built.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// An admin whose listener is bound, ready to [`run`](Admin::run).
#[derive(Debug)]
pub struct Admin {
    service: AdminService,
    listener: tokio::net::TcpListener,
    grpc: SocketAddr,
    store: Store,
    config: Config,
    ready: ReadyFlag,
}

impl Admin {
    /// Binds the gRPC listener. Refuses a configuration without tokens.
    pub async fn bind(config: Config, store: Store) -> Result<Admin, BindError> {
        if config.tokens.is_empty() {
            return Err(BindError::NoTokens);
        }
        let service = AdminService::new(store.clone(), &config)?;
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
        Ok(Admin {
            service,
            listener,
            grpc,
            store,
            config,
            ready: Readiness::new().flag("unused"),
        })
    }

    /// The Admin service alone, to add to another tonic server (no listener, no reflection).
    pub fn grpc_service(
        store: Store,
        config: &Config,
    ) -> Result<AdminServer<AdminService>, BindError> {
        Ok(AdminServer::new(AdminService::new(store, config)?))
    }

    /// Registers the listener's readiness in `readiness` (the process's `/readyz`).
    #[must_use]
    pub fn with_readiness(mut self, readiness: &Readiness) -> Admin {
        self.ready = readiness.flag(&format!("admin grpc {}", self.grpc));
        self
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// Serves the Admin service and reflection until `shutdown` is cancelled.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), RunError> {
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(quickp2p_proto::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(quickp2p_proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let advertised = self
            .config
            .advertised_grpc
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.grpc));
        let registration = tokio::spawn(register(
            self.store.clone(),
            self.config.replica_id.clone(),
            advertised,
            shutdown.clone(),
        ));
        self.ready.set(true);
        tracing::info!(grpc = %self.grpc, tokens = self.config.tokens.len(), "admin running");
        let served = tonic::transport::Server::builder()
            .layer(telemetry::GrpcTraceLayer)
            .add_service(AdminServer::new(self.service))
            .add_service(reflection)
            .add_service(reflection_alpha)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(self.listener),
                shutdown.cancelled_owned(),
            )
            .await;
        self.ready.set(false);
        let _ = registration.await;
        served.map_err(RunError::from)
    }
}

/// How long the admin's registry record lives without a refresh.
const REGISTRATION_TTL: Duration = Duration::from_secs(30);

/// Keeps this replica in the registry (for the replicas statistics) until shutdown.
async fn register(store: Store, replica_id: String, advertised: String, stop: Shutdown) {
    let info = ReplicaInfo {
        advertised_addr: advertised,
        load: 0,
        metadata: [("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())].into(),
    };
    loop {
        let mut info = info.clone();
        info.metadata.insert(
            "refreshed_at_unix_ms".to_owned(),
            quickp2p_checkpoint::apps::now_ms().to_string(),
        );
        if let Err(e) = store
            .register_replica(REGISTRY_ROLE, &replica_id, &info, REGISTRATION_TTL)
            .await
        {
            tracing::debug!(error = %e, "admin registration not refreshed");
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(REGISTRATION_TTL / 3) => {}
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        store.deregister_replica(REGISTRY_ROLE, &replica_id),
    )
    .await;
}

/// Command-line flags of `quickp2p-admin`, each also read from its `QP_ADMIN_*` variable (the
/// shared ones from `QP_*`).
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "quickp2p-admin",
    version,
    about = "quickP2P admin API for management and support systems (gRPC with reflection)"
)]
pub struct Args {
    /// Address of the gRPC listener. [default: 0.0.0.0:50055]
    #[arg(long, env = "QP_ADMIN_GRPC_ADDR", value_name = "IP:PORT")]
    pub grpc_addr: Option<String>,

    /// File of bearer tokens, lines `read|write NAME TOKEN` (required).
    #[arg(long, env = "QP_ADMIN_TOKENS_FILE", value_name = "PATH")]
    pub tokens_file: Option<PathBuf>,

    /// gRPC URL of the Index role, e.g. `http://quickp2p-index:50054`; unset: index queries read
    /// the store directly.
    #[arg(long, env = "QP_ADMIN_INDEX_URL", value_name = "URL")]
    pub index_url: Option<String>,

    /// The URL other services reach this replica at (its registry record). [default: the bound
    /// address]
    #[arg(long, env = "QP_ADMIN_ADVERTISED_GRPC", value_name = "URL")]
    pub advertised_grpc: Option<String>,

    #[command(flatten)]
    /// Flags every quickP2P process takes.
    pub service: ServiceArgs,
}

/// Defaults of a lone admin process.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    service_name: "quickp2p-admin",
    http_addr: DEFAULT_HTTP_ADDR,
    embedded_store_allowed: false,
};

impl Args {
    /// Validates every flag and reads the token file; all problems are reported together.
    pub fn resolve(&self) -> Result<(ServiceConfig, Config), quickp2p_service_kit::ConfigError> {
        let mut errs = FieldErrors::new();
        let service = self.service.resolve(&DEFAULTS, &mut errs);
        let grpc_addr = errs.socket_addr(
            "--grpc-addr / QP_ADMIN_GRPC_ADDR",
            self.grpc_addr.as_deref(),
            DEFAULT_GRPC_ADDR,
        );
        let tokens = match &self.tokens_file {
            None => {
                errs.push(
                    "--tokens-file / QP_ADMIN_TOKENS_FILE",
                    "is required: the admin API refuses every call without a token".to_owned(),
                );
                Tokens::default()
            }
            Some(path) => match Tokens::load(path) {
                Ok(t) => t,
                Err(e) => {
                    errs.push("--tokens-file / QP_ADMIN_TOKENS_FILE", e.to_string());
                    Tokens::default()
                }
            },
        };
        let index_url = self.index_url.clone().filter(|u| !u.trim().is_empty());
        if let Some(url) = &index_url {
            errs.check(
                "--index-url / QP_ADMIN_INDEX_URL",
                (url.starts_with("http://") || url.starts_with("https://"))
                    && url.parse::<tonic::transport::Uri>().is_ok(),
                format!("{url:?} is not an http:// URL"),
            );
        }
        errs.finish()?;
        Ok((
            service.clone(),
            Config {
                grpc_addr,
                tokens,
                index_url,
                replica_id: service.replica_id.clone(),
                advertised_grpc: self.advertised_grpc.clone().filter(|u| !u.is_empty()),
            },
        ))
    }
}
