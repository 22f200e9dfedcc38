//! The all-in-one supernode: every quickP2P role that exists, in one process, on loopback.
//!
//! This is what a newcomer runs first (`cargo run --release -p quickp2p-supernode`) and what
//! end-to-end tests start. It opens the shared store — the embedded in-process backend by default,
//! or Redis with `--redis URL` — and hosts, on one gRPC listener, the gRPC health service, server
//! reflection of the `quickp2p.v1` protocol and each role's gRPC service as the roles land; the
//! operations HTTP server serves `/healthz`, `/readyz` and `/metrics` for the whole process.
//!
//! [`Supernode::bind`] binds every listener (port 0 works, for tests) and reports the addresses;
//! [`Supernode::run`] serves until the shutdown token is cancelled.

use std::net::SocketAddr;

use anyhow::Context as _;
use quickp2p_service_kit::config::{
    FieldErrors, ServiceArgs, ServiceConfig, ServiceDefaults, StoreTarget,
};
use quickp2p_service_kit::{OpsServer, Readiness, Shutdown, telemetry};
use quickp2p_store::Store;
use tracing::Instrument as _;

/// Defaults of the all-in-one process: everything on loopback, embedded state.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    service_name: "quickp2p-supernode",
    http_addr: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9090),
    embedded_store_allowed: true,
};

/// Default address of the gRPC listener (health, reflection, role services, admin).
pub const DEFAULT_GRPC_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50051);

/// How long open connections may take to finish after shutdown begins before they are closed.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Command-line flags of `quickp2p-supernode` (each also read from its `QP_*` variable).
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "quickp2p-supernode",
    version,
    about = "Run a whole quickP2P supernode network in one process (every role, loopback, embedded state by default)"
)]
pub struct Args {
    #[command(flatten)]
    /// Flags every quickP2P process takes.
    pub service: ServiceArgs,

    /// Address of the gRPC listener serving health, reflection and the role services.
    #[arg(long, env = "QP_GRPC_ADDR", value_name = "IP:PORT")]
    pub grpc_addr: Option<String>,
}

/// The typed configuration of the all-in-one process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared service settings (ops address, logs, traces, store, replica id).
    pub service: ServiceConfig,
    /// gRPC listener address.
    pub grpc_addr: SocketAddr,
}

impl Args {
    /// Validates every flag; all problems are reported together.
    pub fn resolve(&self) -> Result<Config, quickp2p_service_kit::ConfigError> {
        let mut errs = FieldErrors::new();
        let service = self.service.resolve(&DEFAULTS, &mut errs);
        let grpc_addr = errs.socket_addr(
            "--grpc-addr / QP_GRPC_ADDR",
            self.grpc_addr.as_deref(),
            DEFAULT_GRPC_ADDR,
        );
        errs.finish()?;
        Ok(Config { service, grpc_addr })
    }
}

/// A supernode whose listeners are bound, ready to [`run`](Supernode::run).
pub struct Supernode {
    config: Config,
    store: Store,
    readiness: Readiness,
    ops: OpsServer,
    grpc: tokio::net::TcpListener,
}

/// Where a running supernode can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// Operations HTTP server (`/healthz`, `/readyz`, `/metrics`).
    pub ops_http: SocketAddr,
    /// gRPC listener (health, reflection, role services).
    pub grpc: SocketAddr,
}

/// Opens the configured store. Redis is connected lazily and reconnects by itself, so a Redis
/// that is down at start makes the process not-ready rather than failing it.
pub async fn open_store(target: &StoreTarget) -> anyhow::Result<Store> {
    match target {
        StoreTarget::Embedded => Ok(Store::embedded()),
        StoreTarget::Redis { url, key_prefix } => {
            let config =
                quickp2p_store::RedisConfig::new(url.clone()).with_key_prefix(key_prefix.clone());
            Store::redis(config)
                .await
                .with_context(|| format!("cannot use Redis at {url}"))
        }
    }
}

impl Supernode {
    /// Opens the store and binds every listener.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let store = open_store(&config.service.store).await?;
        let readiness = Readiness::new();
        readiness.watch_store("store", store.clone());
        let ops = OpsServer::bind(config.service.http_addr, readiness.clone())
            .await
            .with_context(|| {
                format!(
                    "cannot bind the ops HTTP server on {}",
                    config.service.http_addr
                )
            })?;
        let grpc = tokio::net::TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("cannot bind the gRPC listener on {}", config.grpc_addr))?;
        Ok(Self {
            config,
            store,
            readiness,
            ops,
            grpc,
        })
    }

    /// The bound addresses.
    pub fn addresses(&self) -> std::io::Result<Addresses> {
        Ok(Addresses {
            ops_http: self.ops.local_addr()?,
            grpc: self.grpc.local_addr()?,
        })
    }

    /// The shared store every role of this process uses.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A human-readable description of where everything is, for the terminal.
    pub fn banner(&self) -> std::io::Result<String> {
        let a = self.addresses()?;
        let state = match &self.config.service.store {
            StoreTarget::Embedded => {
                "embedded (in this process; one replica of each role)".to_owned()
            }
            StoreTarget::Redis { url, key_prefix } => {
                format!("Redis {url} (keys under {key_prefix}:)")
            }
        };
        Ok(format!(
            "quickP2P supernode {version} (replica {replica})\n\
             \x20 state       {state}\n\
             \x20 roles       none yet: the roles land one by one (STUN, gateway, checkpoint, relay,\n\
             \x20             index, admin, handshake) and each appears here when it does\n\
             \x20 grpc        {grpc}   (grpc.health.v1, server reflection of quickp2p.v1)\n\
             \x20 ops         http://{ops}   (/healthz /readyz /metrics)\n\
             Ctrl-C or SIGTERM stops it.",
            version = env!("CARGO_PKG_VERSION"),
            replica = self.config.service.replica_id,
            grpc = a.grpc,
            ops = a.ops_http,
        ))
    }

    /// Serves until `shutdown` is cancelled, then drains and returns.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let grpc_ready = self.readiness.flag("grpc listener");
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(quickp2p_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("cannot build the gRPC reflection service")?;

        let grpc_shutdown = shutdown.clone();
        let grpc_listener = self.grpc;
        let grpc = tokio::spawn(
            async move {
                grpc_ready.set(true);
                let served = tonic::transport::Server::builder()
                    .layer(telemetry::GrpcTraceLayer)
                    .add_service(health_service)
                    .add_service(reflection)
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(grpc_listener),
                        async move {
                            grpc_shutdown.cancelled().await;
                            health_reporter
                                .set_service_status("", tonic_health::ServingStatus::NotServing)
                                .await;
                        },
                    )
                    .await;
                grpc_ready.set(false);
                served
            }
            .in_current_span(),
        );
        let ops = tokio::spawn(self.ops.run(shutdown.clone()).in_current_span());

        shutdown.cancelled().await;
        tracing::info!(timeout = ?DRAIN_TIMEOUT, "draining");
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            let grpc = grpc.await;
            let ops = ops.await;
            (grpc, ops)
        })
        .await;
        match drained {
            Ok((grpc, ops)) => {
                grpc.context("gRPC server task failed")?
                    .context("gRPC server failed")?;
                ops.context("ops server task failed")?
                    .context("ops server failed")?;
                tracing::info!("stopped");
            }
            Err(_) => tracing::warn!(
                timeout = ?DRAIN_TIMEOUT,
                "connections still open after the drain timeout; closing them"
            ),
        }
        Ok(())
    }
}
