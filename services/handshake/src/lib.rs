//! quickP2P handshake: connection negotiation between two peers (DESIGN.md §4).
//!
//! The handshake role serves the internal `quickp2p.v1.Handshake` gRPC service, called by
//! gateways on behalf of their peers:
//!
//! * **Begin** — peer A asks for a tunnel to peer B of the same application; B must be online
//!   (else `PEER_OFFLINE`, also for peers of other applications). B receives a
//!   `HandshakeOffer` through its gateway's `Deliver` service.
//! * **ReportCandidates** — B's first call answers the offer: the service picks a strategy over
//!   the NAT matrix ([`strategy`]), schedules a common start time from both clock estimates,
//!   draws a probe key, mints TURN credentials on the least-loaded relay replica and pushes a
//!   tailored `HandshakeInstruction` to both peers. Later calls trickle candidates
//!   (`RemoteCandidates`). An offer not answered within [`Config::answer_timeout`] is closed for
//!   both with `HandshakeClosed` (reason `TIMEOUT`).
//! * **ReportOutcome** — each side reports once; the attempt is counted once (metrics and the
//!   store's counter maps per NAT pair, see [`quickp2p_store::names`]).
//!
//! All negotiation state lives in the store with a TTL ([`service`] lists the keys), so any
//! replica serves any call.
//!
//! Embedding (what the all-in-one supernode does):
//!
//! ```no_run
//! # async fn demo(store: quickp2p_store::Store) -> Result<(), Box<dyn std::error::Error>> {
//! use quickp2p_handshake::{Config, Handshake};
//! let handshake = Handshake::bind(Config::loopback(), store, "handshake-1").await?;
//! println!("handshake gRPC on {}", handshake.addresses().grpc);
//! handshake.run(quickp2p_service_kit::Shutdown::new()).await?;
//! # Ok(()) }
//! ```

mod error;
mod push;
pub mod service;
pub mod strategy;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use quickp2p_proto::v1::handshake_server::HandshakeServer;
use quickp2p_relay::credentials::SharedSecret;
use quickp2p_service_kit::config::{FieldErrors, ServiceArgs, ServiceConfig, ServiceDefaults};
use quickp2p_service_kit::{Readiness, ReadyFlag, Shutdown, telemetry};
use quickp2p_store::Store;

pub use crate::error::HandshakeError;
pub use crate::push::GATEWAY_ROLE;
pub use crate::service::HandshakeService;

/// Default address of the handshake's gRPC listener.
pub const DEFAULT_GRPC_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 50053);
/// Default operations HTTP address of a lone `quickp2p-handshake` process.
pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9453);

/// The handshake's configuration: plain data. [`Config::default`] is the dev setup.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the gRPC listener binds (port 0 picks one).
    pub grpc_addr: SocketAddr,
    /// The relays' TURN shared secret; `None` = instructions carry no relay grant.
    pub relay_shared_secret: Option<SharedSecret>,
    /// How long minted relay credentials are valid.
    pub relay_credential_ttl: Duration,
    /// How long the target has to answer an offer.
    pub answer_timeout: Duration,
    /// How long a negotiation (and its store keys) lives.
    pub negotiation_ttl: Duration,
    /// Extra delay before the common start, on top of the slower side's one-way delay.
    pub start_margin: Duration,
    /// Most negotiations one peer may have started at once (twice as many offers may be
    /// pending toward one peer).
    pub max_per_peer: u32,
    /// Sustained Begin calls per second per peer (bursts of five times that), per replica.
    pub begins_per_second: f64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            grpc_addr: DEFAULT_GRPC_ADDR,
            relay_shared_secret: None,
            relay_credential_ttl: Duration::from_secs(600),
            answer_timeout: Duration::from_secs(10),
            negotiation_ttl: Duration::from_secs(60),
            start_margin: Duration::from_millis(75),
            max_per_peer: 8,
            begins_per_second: 2.0,
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

/// Why [`Handshake::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The gRPC listener could not be bound.
    #[error("cannot bind the handshake gRPC listener on {addr}: {source}")]
    Grpc {
        /// The address asked for.
        addr: SocketAddr,
        /// The system's reason.
        source: std::io::Error,
    },
}

/// Why [`Handshake::run`] stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The gRPC server failed.
    #[error("the handshake gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// Where a bound handshake service listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The gRPC listener (port 0 resolved).
    pub grpc: SocketAddr,
}

/// A handshake service whose listener is bound, ready to [`run`](Handshake::run).
#[derive(Debug)]
pub struct Handshake {
    service: HandshakeService,
    listener: tokio::net::TcpListener,
    addresses: Addresses,
    ready: ReadyFlag,
}

impl Handshake {
    /// Binds the gRPC listener; `replica_id` names this replica in Deliver requests.
    pub async fn bind(
        config: Config,
        store: Store,
        replica_id: &str,
    ) -> Result<Handshake, BindError> {
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
        Ok(Handshake {
            service: HandshakeService::new(store, config, replica_id),
            listener,
            addresses: Addresses { grpc },
            ready: Readiness::new().flag("unused"),
        })
    }

    /// The service alone, to add to another tonic server (no listener of its own).
    pub fn grpc_service(
        store: Store,
        config: Config,
        replica_id: &str,
    ) -> HandshakeServer<HandshakeService> {
        HandshakeServer::new(HandshakeService::new(store, config, replica_id))
    }

    /// Registers the listener's readiness in `readiness` (the process's `/readyz`).
    #[must_use]
    pub fn with_readiness(mut self, readiness: &Readiness) -> Handshake {
        self.ready = readiness.flag(&format!("handshake grpc {}", self.addresses.grpc));
        self
    }

    /// The bound addresses.
    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), RunError> {
        self.ready.set(true);
        tracing::info!(grpc = %self.addresses.grpc, "handshake running");
        let served = tonic::transport::Server::builder()
            .layer(telemetry::GrpcTraceLayer)
            .add_service(HandshakeServer::new(self.service))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                shutdown.cancelled_owned(),
            )
            .await;
        self.ready.set(false);
        served.map_err(RunError::from)
    }
}

/// Command-line flags of `quickp2p-handshake`, each also read from its `QP_HANDSHAKE_*`
/// variable (the shared ones from `QP_*`).
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "quickp2p-handshake",
    version,
    about = "quickP2P handshake: connection negotiation, punch scheduling and relay grants (gRPC)"
)]
pub struct Args {
    /// Address of the gRPC listener. [default: 0.0.0.0:50053]
    #[arg(long, env = "QP_HANDSHAKE_GRPC_ADDR", value_name = "IP:PORT")]
    pub grpc_addr: Option<String>,

    /// The relays' TURN shared secret (prefer --relay-shared-secret-file); without one,
    /// instructions carry no relay grant.
    #[arg(
        long,
        env = "QP_HANDSHAKE_RELAY_SHARED_SECRET",
        value_name = "TEXT",
        hide_env_values = true
    )]
    pub relay_shared_secret: Option<String>,

    /// File holding the relays' TURN shared secret (trailing newline ignored).
    #[arg(
        long,
        env = "QP_HANDSHAKE_RELAY_SHARED_SECRET_FILE",
        value_name = "PATH"
    )]
    pub relay_shared_secret_file: Option<String>,

    /// Lifetime of minted relay credentials, seconds. [default: 600]
    #[arg(
        long,
        env = "QP_HANDSHAKE_RELAY_CREDENTIAL_TTL_S",
        value_name = "SECONDS"
    )]
    pub relay_credential_ttl_s: Option<String>,

    /// How long a peer has to answer a tunnel offer, milliseconds. [default: 10000]
    #[arg(long, env = "QP_HANDSHAKE_ANSWER_TIMEOUT_MS", value_name = "MS")]
    pub answer_timeout_ms: Option<String>,

    /// Lifetime of a negotiation, milliseconds; above the answer timeout. [default: 60000]
    #[arg(long, env = "QP_HANDSHAKE_TTL_MS", value_name = "MS")]
    pub ttl_ms: Option<String>,

    /// Extra delay before the common punch start, milliseconds. [default: 75]
    #[arg(long, env = "QP_HANDSHAKE_START_MARGIN_MS", value_name = "MS")]
    pub start_margin_ms: Option<String>,

    /// Most negotiations one peer may have started at once. [default: 8]
    #[arg(long, env = "QP_HANDSHAKE_MAX_PER_PEER", value_name = "N")]
    pub max_per_peer: Option<String>,

    /// Sustained tunnel requests per second per peer (per replica). [default: 2]
    #[arg(long, env = "QP_HANDSHAKE_BEGINS_PER_SECOND", value_name = "RATE")]
    pub begins_per_second: Option<String>,

    #[command(flatten)]
    /// Flags every quickP2P process takes.
    pub service: ServiceArgs,
}

/// Defaults of a lone handshake process.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    service_name: "quickp2p-handshake",
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
            "--grpc-addr / QP_HANDSHAKE_GRPC_ADDR",
            self.grpc_addr.as_deref(),
            d.grpc_addr,
        );
        let secret_name = "--relay-shared-secret / QP_HANDSHAKE_RELAY_SHARED_SECRET";
        let file_name = "--relay-shared-secret-file / QP_HANDSHAKE_RELAY_SHARED_SECRET_FILE";
        let secret = match (&self.relay_shared_secret, &self.relay_shared_secret_file) {
            (Some(_), Some(_)) => {
                errs.push(
                    secret_name,
                    format!("give either it or {file_name}, not both"),
                );
                None
            }
            (Some(s), None) => Some((secret_name, s.clone())),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(s) => Some((file_name, s.trim_end_matches(['\r', '\n']).to_owned())),
                Err(e) => {
                    errs.push(file_name, format!("cannot read {path:?}: {e}"));
                    None
                }
            },
            (None, None) => None,
        };
        if let Some((name, s)) = &secret {
            errs.check(name, s.len() >= 8, "the secret must be at least 8 bytes");
        }
        let mut millis = |name: &str, raw: Option<&str>, default: Duration, min: u64, max: u64| {
            let v: u64 = errs.parse(name, raw, u64::try_from(default.as_millis()).unwrap_or(0));
            errs.check(
                name,
                (min..=max).contains(&v),
                format!("{v} must be between {min} and {max}"),
            );
            Duration::from_millis(v)
        };
        let answer_timeout = millis(
            "--answer-timeout-ms / QP_HANDSHAKE_ANSWER_TIMEOUT_MS",
            self.answer_timeout_ms.as_deref(),
            d.answer_timeout,
            100,
            120_000,
        );
        let negotiation_ttl = millis(
            "--ttl-ms / QP_HANDSHAKE_TTL_MS",
            self.ttl_ms.as_deref(),
            d.negotiation_ttl,
            1_000,
            3_600_000,
        );
        let start_margin = millis(
            "--start-margin-ms / QP_HANDSHAKE_START_MARGIN_MS",
            self.start_margin_ms.as_deref(),
            d.start_margin,
            0,
            2_000,
        );
        let relay_credential_ttl = Duration::from_secs(errs.parse(
            "--relay-credential-ttl-s / QP_HANDSHAKE_RELAY_CREDENTIAL_TTL_S",
            self.relay_credential_ttl_s.as_deref(),
            d.relay_credential_ttl.as_secs(),
        ));
        errs.check(
            "--relay-credential-ttl-s / QP_HANDSHAKE_RELAY_CREDENTIAL_TTL_S",
            (60..=86_400).contains(&relay_credential_ttl.as_secs()),
            "must be between 60 and 86400 seconds",
        );
        errs.check(
            "--ttl-ms / QP_HANDSHAKE_TTL_MS",
            negotiation_ttl > answer_timeout,
            "must be above the answer timeout",
        );
        let max_per_peer: u32 = errs.parse(
            "--max-per-peer / QP_HANDSHAKE_MAX_PER_PEER",
            self.max_per_peer.as_deref(),
            d.max_per_peer,
        );
        errs.check(
            "--max-per-peer / QP_HANDSHAKE_MAX_PER_PEER",
            (1..=64).contains(&max_per_peer),
            "must be between 1 and 64",
        );
        let begins_per_second: f64 = errs.parse(
            "--begins-per-second / QP_HANDSHAKE_BEGINS_PER_SECOND",
            self.begins_per_second.as_deref(),
            d.begins_per_second,
        );
        errs.check(
            "--begins-per-second / QP_HANDSHAKE_BEGINS_PER_SECOND",
            begins_per_second.is_finite() && (0.01..=1000.0).contains(&begins_per_second),
            "must be between 0.01 and 1000",
        );
        errs.finish()?;
        Ok((
            service,
            Config {
                grpc_addr,
                relay_shared_secret: secret.map(|(_, s)| SharedSecret::new(s)),
                relay_credential_ttl,
                answer_timeout,
                negotiation_ttl,
                start_margin,
                max_per_peer,
                begins_per_second,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn the_secret_comes_from_a_file_and_not_from_both() {
        let path = std::env::temp_dir().join(format!("qp-hs-secret-{}", std::process::id()));
        std::fs::write(&path, "file-secret-123\n").expect("write");
        let path = path.display().to_string();
        let base = ["quickp2p-handshake", "--redis", "redis://127.0.0.1:6379"];
        let args = Args::try_parse_from(
            base.iter()
                .copied()
                .chain(["--relay-shared-secret-file", &path]),
        )
        .expect("flags");
        let (_, config) = args.resolve().expect("valid");
        assert_eq!(
            config.relay_shared_secret,
            Some(SharedSecret::new("file-secret-123"))
        );
        let args = Args::try_parse_from(base.iter().copied().chain([
            "--relay-shared-secret-file",
            &path,
            "--relay-shared-secret",
            "another-secret",
        ]))
        .expect("flags");
        assert!(args.resolve().is_err(), "both given");
        let _ = std::fs::remove_file(&path);
        let args = Args::try_parse_from(base).expect("flags");
        assert_eq!(args.resolve().expect("valid").1.relay_shared_secret, None);
    }

    #[test]
    fn flags_resolve_and_bad_values_are_all_reported() {
        let args = Args::try_parse_from([
            "quickp2p-handshake",
            "--redis",
            "redis://127.0.0.1:6379",
            "--grpc-addr",
            "127.0.0.1:0",
            "--relay-shared-secret",
            "0123456789",
            "--answer-timeout-ms",
            "2000",
        ])
        .expect("flags");
        let (_, config) = args.resolve().expect("valid");
        assert_eq!(config.answer_timeout, Duration::from_secs(2));
        assert_eq!(
            config.relay_shared_secret,
            Some(SharedSecret::new("0123456789"))
        );
        let args = Args::try_parse_from([
            "quickp2p-handshake",
            "--grpc-addr",
            "nowhere",
            "--relay-shared-secret",
            "short",
            "--max-per-peer",
            "0",
        ])
        .expect("flags");
        let err = args.resolve().expect_err("invalid").to_string();
        assert!(err.contains("at least 8 bytes"), "{err}");
        for name in [
            "QP_HANDSHAKE_GRPC_ADDR",
            "QP_HANDSHAKE_RELAY_SHARED_SECRET",
            "QP_HANDSHAKE_MAX_PER_PEER",
        ] {
            assert!(err.contains(name), "{name} missing from {err}");
        }
    }
}
