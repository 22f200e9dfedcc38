//! The all-in-one supernode: every quickP2P role that exists, in one process, on loopback.
//!
//! This is what a newcomer runs first (`cargo run --release -p quickp2p-supernode`) and what
//! end-to-end tests start. It opens the shared store — the embedded in-process backend by default,
//! or Redis with `--redis URL` — and runs:
//! - the STUN pair: stun-a on 127.0.0.1 and stun-b on 127.0.0.2, each with a primary and an
//!   alternate UDP port and its gRPC control listener (RFC 5780 behaviour discovery works across
//!   the two addresses exactly as across two public IPs);
//! - the checkpoint (login, sessions, presence) and one gateway (QUIC for peers), with a `dev`
//!   application created at start so that peers can log in at once;
//! - the relay (TURN, RFC 8656) on 127.0.0.1:3482, allowing loopback peers (development only);
//! - one gRPC listener with the gRPC health service and server reflection of `quickp2p.v1`, where
//!   the other roles' services join as they land: the index (`quickp2p.v1.Index`, published
//!   attributes and queries) serves there, and the gateway calls it there;
//! - the admin API (`quickp2p.v1.Admin` with reflection) on 127.0.0.1:50055, with one read-write
//!   dev token printed in the banner (or given with `--admin-token`);
//! - the operations HTTP server (`/healthz`, `/readyz`, `/metrics`) for the whole process.
//!
//! [`Supernode::bind`] binds every listener and reports the addresses; [`Supernode::run`] serves
//! until the shutdown token is cancelled.

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

/// Default UDP address of the gateway's QUIC listener.
pub const DEFAULT_GATEWAY_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4433);

/// Default UDP address of the relay's TURN listener (clear of the STUN pair's 3478–3480).
pub const DEFAULT_RELAY_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 3482);

/// Default address of the admin API's gRPC listener. When it is taken and `--admin-addr` was not
/// given, the admin listens on a free port instead (the banner tells which).
pub const DEFAULT_ADMIN_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50055);

/// The application the all-in-one creates so that peers can log in at once.
pub const DEV_APP_ID: &str = "dev";

/// How long start-up waits for the store before going on without it (not ready meanwhile).
const STORE_START_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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

    /// UDP address of the gateway's QUIC listener (where peers connect).
    #[arg(long, env = "QP_GATEWAY_UDP_ADDR", value_name = "IP:PORT")]
    pub gateway_addr: Option<String>,

    /// UDP address of the relay's TURN listener; its gRPC control listens on the next port.
    #[arg(long, env = "QP_RELAY_LISTEN_ADDR", value_name = "IP:PORT")]
    pub relay_addr: Option<String>,

    /// First of the three ports of the STUN pair (primary, alternate = +1, control = +2), used on
    /// both 127.0.0.1 (stun-a) and 127.0.0.2 (stun-b).
    #[arg(long, env = "QP_STUN_PORT_BASE", value_name = "PORT")]
    pub stun_port_base: Option<String>,

    /// Address of the admin API's gRPC listener. [default: 127.0.0.1:50055, or a free port when
    /// that one is taken]
    #[arg(long, env = "QP_ADMIN_GRPC_ADDR", value_name = "IP:PORT")]
    pub admin_addr: Option<String>,

    /// The admin API's read-write token (24+ printable characters) [default: a random one,
    /// printed in the banner]
    #[arg(
        long,
        env = "QP_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
}

/// The typed configuration of the all-in-one process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared service settings (ops address, logs, traces, store, replica id).
    pub service: ServiceConfig,
    /// gRPC listener address.
    pub grpc_addr: SocketAddr,
    /// Ports of the loopback STUN pair.
    pub stun_ports: quickp2p_stun::PairPorts,
    /// The gateway's QUIC listener.
    pub gateway_addr: SocketAddr,
    /// The relay's TURN listener.
    pub relay_addr: SocketAddr,
    /// The admin API's gRPC listener; `None` = [`DEFAULT_ADMIN_ADDR`] or a free port.
    pub admin_addr: Option<SocketAddr>,
    /// The admin API's read-write dev token (named `dev`).
    pub admin_token: quickp2p_admin::AdminToken,
    /// The same token as text, for the banner.
    pub admin_token_text: String,
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
        let base: u16 = errs.parse(
            "--stun-port-base / QP_STUN_PORT_BASE",
            self.stun_port_base.as_deref(),
            quickp2p_stun::config::DEFAULT_PRIMARY_PORT,
        );
        errs.check(
            "--stun-port-base / QP_STUN_PORT_BASE",
            (1..=65533).contains(&base),
            format!("{base} leaves no room for the two ports after it (1 to 65533)"),
        );
        let stun_ports = quickp2p_stun::PairPorts {
            primary: base,
            alternate: base.saturating_add(1),
            control: base.saturating_add(2),
        };
        let gateway_addr = errs.socket_addr(
            "--gateway-addr / QP_GATEWAY_UDP_ADDR",
            self.gateway_addr.as_deref(),
            DEFAULT_GATEWAY_ADDR,
        );
        let relay_addr = errs.socket_addr(
            "--relay-addr / QP_RELAY_LISTEN_ADDR",
            self.relay_addr.as_deref(),
            DEFAULT_RELAY_ADDR,
        );
        let admin_addr = self.admin_addr.as_deref().map(|raw| {
            errs.socket_addr(
                "--admin-addr / QP_ADMIN_GRPC_ADDR",
                Some(raw),
                DEFAULT_ADMIN_ADDR,
            )
        });
        let admin_token_text = self.admin_token.clone().unwrap_or_else(random_secret);
        let admin_token = quickp2p_admin::AdminToken::new(
            "dev",
            quickp2p_admin::Access::Write,
            &admin_token_text,
        );
        if let Err(e) = &admin_token {
            errs.push("--admin-token / QP_ADMIN_TOKEN", e.clone());
        }
        errs.finish()?;
        let admin_token = admin_token.map_err(|message| quickp2p_service_kit::ConfigError {
            errors: vec![quickp2p_service_kit::config::FieldError {
                name: "--admin-token / QP_ADMIN_TOKEN".into(),
                message,
            }],
        })?;
        Ok(Config {
            service,
            grpc_addr,
            stun_ports,
            gateway_addr,
            relay_addr,
            admin_addr,
            admin_token,
            admin_token_text,
        })
    }
}

/// A supernode whose listeners are bound, ready to [`run`](Supernode::run).
pub struct Supernode {
    config: Config,
    store: Store,
    readiness: Readiness,
    ops: OpsServer,
    grpc: tokio::net::TcpListener,
    stun: [quickp2p_stun::Stun; 2],
    checkpoint: quickp2p_checkpoint::Checkpoint,
    gateway: quickp2p_gateway::Gateway,
    relay: quickp2p_relay::Relay,
    admin: quickp2p_admin::Admin,
    /// The handshake service, served on the shared gRPC listener.
    handshake:
        quickp2p_proto::v1::handshake_server::HandshakeServer<quickp2p_handshake::HandshakeService>,
    /// `None` while the store cannot be reached: created in the background then.
    dev_app: Option<quickp2p_checkpoint::DevApplication>,
}

/// Where a running supernode can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    /// Operations HTTP server (`/healthz`, `/readyz`, `/metrics`).
    pub ops_http: SocketAddr,
    /// gRPC listener (health, reflection, role services).
    pub grpc: SocketAddr,
    /// stun-a (127.0.0.1): primary, alternate and control addresses.
    pub stun_a: quickp2p_stun::Addresses,
    /// stun-b (127.0.0.2): primary, alternate and control addresses.
    pub stun_b: quickp2p_stun::Addresses,
    /// The checkpoint's gRPC listener.
    pub checkpoint: SocketAddr,
    /// The gateway: QUIC listener for peers and its internal Deliver gRPC listener.
    pub gateway: quickp2p_gateway::Addresses,
    /// The relay: TURN listener and gRPC control.
    pub relay: quickp2p_relay::Addresses,
    /// The admin API's gRPC listener.
    pub admin: SocketAddr,
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
        let mut stun = Vec::with_capacity(2);
        for member in [quickp2p_stun::PairMember::A, quickp2p_stun::PairMember::B] {
            let stun_config = quickp2p_stun::Config::loopback_pair(member, config.stun_ports);
            let ip = stun_config.bind_ip;
            let bound = quickp2p_stun::Stun::bind(stun_config).await.with_context(|| {
                format!(
                    "cannot bind stun-{} on {ip} ports {}, {} and {} (choose others with --stun-port-base)",
                    member.as_str(),
                    config.stun_ports.primary,
                    config.stun_ports.alternate,
                    config.stun_ports.control,
                )
            })?;
            stun.push(bound.with_readiness(&readiness));
        }
        let stun: [quickp2p_stun::Stun; 2] = stun
            .try_into()
            .map_err(|_| anyhow::anyhow!("the STUN pair has two members"))?;
        let checkpoint = quickp2p_checkpoint::Checkpoint::bind(
            quickp2p_checkpoint::Config::loopback(),
            store.clone(),
        )
        .await
        .context("cannot start the checkpoint")?
        .with_readiness(&readiness);
        let checkpoint_url = format!("http://{}", checkpoint.addresses().grpc);
        let mut gateway_config = quickp2p_gateway::Config::loopback(checkpoint_url);
        gateway_config.udp_addr = config.gateway_addr;
        // the index serves on the shared gRPC listener (see `run`)
        gateway_config.index_url = Some(format!("http://{}", grpc.local_addr()?));
        // so does the handshake
        gateway_config.handshake_url = Some(format!("http://{}", grpc.local_addr()?));
        let gateway = quickp2p_gateway::Gateway::bind(gateway_config, store.clone())
            .with_context(|| {
                format!(
                    "cannot start the gateway on {} (choose another with --gateway-addr)",
                    config.gateway_addr
                )
            })?
            .with_readiness(&readiness);
        // The TURN shared secret lives as long as the process: the handshake service of this
        // process will mint relay credentials with it.
        let relay_secret = random_secret();
        let mut handshake_config = quickp2p_handshake::Config::loopback();
        handshake_config.relay_shared_secret = Some(
            quickp2p_relay::credentials::SharedSecret::new(&relay_secret),
        );
        let handshake = quickp2p_handshake::Handshake::grpc_service(
            store.clone(),
            handshake_config,
            &config.service.replica_id,
        );
        let mut relay_config = quickp2p_relay::Config::loopback_dev(relay_secret);
        relay_config.listen = config.relay_addr;
        relay_config.control_addr = SocketAddr::new(
            config.relay_addr.ip(),
            match config.relay_addr.port() {
                0 => 0,
                p => p.saturating_add(1),
            },
        );
        let relay = quickp2p_relay::Relay::bind(relay_config, store.clone())
            .await
            .with_context(|| {
                format!(
                    "cannot start the relay on {} (choose another with --relay-addr)",
                    config.relay_addr
                )
            })?
            .with_readiness(&readiness);
        let admin = bind_admin(&config, store.clone())
            .await?
            .with_readiness(&readiness);
        // A Redis that is down at start makes the process not-ready, not dead: the application
        // is then created in the background once the store answers (see `run`).
        let dev_app = match tokio::time::timeout(
            STORE_START_WAIT,
            quickp2p_checkpoint::ensure_dev_application(&store, DEV_APP_ID),
        )
        .await
        {
            Ok(Ok(app)) => Some(app),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot create the dev application yet; retrying in the background");
                None
            }
            Err(_) => {
                tracing::warn!(
                    "the store did not answer; creating the dev application in the background"
                );
                None
            }
        };
        Ok(Self {
            config,
            store,
            readiness,
            ops,
            grpc,
            stun,
            checkpoint,
            gateway,
            relay,
            admin,
            handshake,
            dev_app,
        })
    }

    /// The bound addresses.
    pub fn addresses(&self) -> std::io::Result<Addresses> {
        Ok(Addresses {
            ops_http: self.ops.local_addr()?,
            grpc: self.grpc.local_addr()?,
            stun_a: self.stun[0].addresses(),
            stun_b: self.stun[1].addresses(),
            checkpoint: self.checkpoint.addresses().grpc,
            gateway: self.gateway.addresses(),
            relay: self.relay.addresses(),
            admin: self.admin.grpc_addr(),
        })
    }

    /// The application created for development, with its secret, so that peers can log in;
    /// `None` when the store could not be reached at start (it is created, and logged, later).
    pub fn dev_application(&self) -> Option<&quickp2p_checkpoint::DevApplication> {
        self.dev_app.as_ref()
    }

    /// The SHA-256 fingerprint of the gateway's certificate (hex), for peers to pin.
    pub fn gateway_fingerprint(&self) -> String {
        self.gateway.fingerprint_hex()
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
             \x20 stun-a      {stun_a}   (alternate {stun_a_alt}, control {stun_a_ctl})\n\
             \x20 stun-b      {stun_b}   (alternate {stun_b_alt}, control {stun_b_ctl})\n\
             \x20 gateway     {gateway}   (QUIC, ALPN quickp2p/1; certificate sha256:{fingerprint})\n\
             \x20 checkpoint  {checkpoint}   (gRPC)\n\
             \x20 dev app     {dev_app}\n\
             \x20 grpc        {grpc}   (grpc.health.v1, server reflection of quickp2p.v1)\n\
             \x20 index       {grpc}   (gRPC quickp2p.v1.Index; the gateway serves publish/find through it)\n\
             \x20 relay       {relay}   (TURN over UDP, control {relay_ctl}; loopback peers allowed)\n\
             \x20 admin       {admin}   (gRPC quickp2p.v1.Admin + reflection; read-write dev token {admin_token})\n\
             \x20 handshake   {grpc}   (gRPC quickp2p.v1.Handshake; tunnel negotiation, grants on this relay)\n\
             \x20 ops         http://{ops}   (/healthz /readyz /metrics)\n\
             Ctrl-C or SIGTERM stops it.",
            version = env!("CARGO_PKG_VERSION"),
            replica = self.config.service.replica_id,
            grpc = a.grpc,
            ops = a.ops_http,
            stun_a = a.stun_a.primary,
            stun_a_alt = a.stun_a.alternate,
            stun_a_ctl = a.stun_a.control,
            stun_b = a.stun_b.primary,
            stun_b_alt = a.stun_b.alternate,
            stun_b_ctl = a.stun_b.control,
            gateway = a.gateway.quic,
            relay = a.relay.turn,
            relay_ctl = a.relay.control,
            admin = a.admin,
            admin_token = self.config.admin_token_text,
            fingerprint = self.gateway.fingerprint_hex(),
            checkpoint = a.checkpoint,
            dev_app = match &self.dev_app {
                Some(app) => format!("id {}  secret {}", app.app_id, app.secret),
                None => "pending: created (and logged) once the store answers".to_owned(),
            },
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
        let index = quickp2p_index::Index::grpc_service(
            self.store.clone(),
            quickp2p_index::Config::loopback(),
        );
        let handshake = self.handshake;
        let grpc = tokio::spawn(
            async move {
                grpc_ready.set(true);
                let served = tonic::transport::Server::builder()
                    .layer(telemetry::GrpcTraceLayer)
                    .add_service(health_service)
                    .add_service(reflection)
                    .add_service(index)
                    .add_service(handshake)
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
        if self.dev_app.is_none() {
            tokio::spawn(
                create_dev_application_later(self.store.clone(), shutdown.clone())
                    .in_current_span(),
            );
        }
        let checkpoint = tokio::spawn(self.checkpoint.run(shutdown.clone()).in_current_span());
        let relay = tokio::spawn(self.relay.run(shutdown.clone()).in_current_span());
        let admin = tokio::spawn(self.admin.run(shutdown.clone()).in_current_span());
        let gateway = tokio::spawn(self.gateway.run(shutdown.clone()).in_current_span());
        let [stun_a, stun_b] = self.stun;
        let stun_a = tokio::spawn(stun_a.run(shutdown.clone()).in_current_span());
        let stun_b = tokio::spawn(stun_b.run(shutdown.clone()).in_current_span());

        shutdown.cancelled().await;
        tracing::info!(timeout = ?DRAIN_TIMEOUT, "draining");
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            let grpc = grpc.await;
            let ops = ops.await;
            let stun = [stun_a.await, stun_b.await];
            let checkpoint = checkpoint.await;
            let gateway = gateway.await;
            let relay = relay.await;
            let admin = admin.await;
            (grpc, ops, stun, checkpoint, gateway, relay, admin)
        })
        .await;
        match drained {
            Ok((grpc, ops, stun, checkpoint, gateway, relay, admin)) => {
                admin
                    .context("admin task failed")?
                    .context("admin failed")?;
                relay
                    .context("relay task failed")?
                    .context("relay failed")?;
                checkpoint
                    .context("checkpoint task failed")?
                    .context("checkpoint failed")?;
                gateway
                    .context("gateway task failed")?
                    .context("gateway failed")?;
                grpc.context("gRPC server task failed")?
                    .context("gRPC server failed")?;
                ops.context("ops server task failed")?
                    .context("ops server failed")?;
                for s in stun {
                    s.context("STUN task failed")?
                        .context("STUN server failed")?;
                }
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

/// Binds the admin API: on `--admin-addr` exactly, else on [`DEFAULT_ADMIN_ADDR`] or, when that
/// port is taken (another supernode, a test), on a free port.
async fn bind_admin(config: &Config, store: Store) -> anyhow::Result<quickp2p_admin::Admin> {
    let tokens = quickp2p_admin::Tokens::from_tokens(vec![config.admin_token.clone()])
        .map_err(anyhow::Error::msg)?;
    let admin_config = |addr: SocketAddr| quickp2p_admin::Config {
        grpc_addr: addr,
        tokens: tokens.clone(),
        replica_id: config.service.replica_id.clone(),
        ..quickp2p_admin::Config::default()
    };
    let wanted = config.admin_addr.unwrap_or(DEFAULT_ADMIN_ADDR);
    match quickp2p_admin::Admin::bind(admin_config(wanted), store.clone()).await {
        Ok(admin) => Ok(admin),
        Err(quickp2p_admin::BindError::Grpc { source, .. })
            if config.admin_addr.is_none() && source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            let free = SocketAddr::new(wanted.ip(), 0);
            tracing::warn!(%wanted, "the admin API's default port is taken; using a free one");
            quickp2p_admin::Admin::bind(admin_config(free), store)
                .await
                .context("cannot start the admin API")
        }
        Err(e) => Err(e).with_context(|| {
            format!("cannot start the admin API on {wanted} (choose another with --admin-addr)")
        }),
    }
}

/// Retries creating the dev application every second until the store answers or shutdown.
async fn create_dev_application_later(store: Store, shutdown: Shutdown) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        match quickp2p_checkpoint::ensure_dev_application(&store, DEV_APP_ID).await {
            Ok(app) => {
                tracing::info!(app_id = %app.app_id, secret = %app.secret, "dev application ready");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "dev application not created yet"),
        }
    }
}

/// 32 random bytes, hex: the relay's TURN shared secret for this process's lifetime.
fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
