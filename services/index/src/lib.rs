//! quickP2P index: what peers publish, lookups by peer id and queries by attribute.
//!
//! The index serves the `quickp2p.v1.Index` gRPC service — called by gateways on behalf of their
//! peers (always with the peer's own application) and by the admin service (any application) —
//! over the shared [`Store`]:
//!
//! * **publish / unpublish**: string key/value attributes of an online peer, merged or replaced,
//!   within [`AttributeLimits`] (32 attributes per peer, 64-byte keys, 1024-byte values by
//!   default). Oversized or too many attributes are refused with `ERROR_CODE_TOO_LARGE` carrying
//!   the limit; the per-peer cap is decided atomically with the write.
//! * **records expire with presence**: the store drops a peer's attributes and index entries when
//!   its presence ends (logout, connection loss, TTL), and never returns an expired peer.
//! * **get** by peer id, **query** by attribute equality or prefix, paginated (`Page` /
//!   `NextPage`, cursors bound to their query) in a stable order: ascending by the filtered value,
//!   then by peer id bytes.
//! * **tenancy**: everything is keyed by application; no call reads another application's data.
//!
//! The Redis layout (secondary indexes `P:{app:A}:idx:K` of `value NUL peer` members, one hash
//! slot per application so that every update is one atomic script, also on Redis Cluster) is
//! described in [`quickp2p_store`].
//!
//! Embedding:
//!
//! ```no_run
//! # async fn demo(store: quickp2p_store::Store) -> Result<(), Box<dyn std::error::Error>> {
//! use quickp2p_index::{Config, Index};
//! let index = Index::bind(Config::loopback(), store).await?;
//! println!("index gRPC on {}", index.addresses().grpc);
//! index.run(quickp2p_service_kit::Shutdown::new()).await?;
//! # Ok(()) }
//! ```
//!
//! Or, to serve it on an existing tonic server: [`Index::grpc_service`].

mod error;
pub mod limits;
mod service;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use quickp2p_proto::v1::index_server::IndexServer;
use quickp2p_service_kit::config::{FieldErrors, ServiceArgs, ServiceConfig, ServiceDefaults};
use quickp2p_service_kit::{Readiness, ReadyFlag, Shutdown, telemetry};
use quickp2p_store::Store;

pub use crate::error::IndexError;
pub use crate::limits::AttributeLimits;
pub use crate::service::{
    DEFAULT_PAGE_LIMIT, IndexService, MAX_CURSOR_BYTES, MAX_PAGE_LIMIT, index_record,
};

/// Default address of the index's gRPC listener (all interfaces: it runs as its own pod).
pub const DEFAULT_GRPC_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 50054);
/// Default operations HTTP address of a lone `quickp2p-index` process.
pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9454);

/// The index's configuration: plain data. [`Config::default`] is the standalone setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Where the gRPC listener binds (port 0 picks one).
    pub grpc_addr: SocketAddr,
    /// What one peer may publish.
    pub limits: AttributeLimits,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            grpc_addr: DEFAULT_GRPC_ADDR,
            limits: AttributeLimits::default(),
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

/// Why [`Index::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The gRPC listener could not be bound.
    #[error("cannot bind the index gRPC listener on {addr}: {source}")]
    Grpc {
        /// The address asked for.
        addr: SocketAddr,
        /// The system's reason.
        source: std::io::Error,
    },
}

/// Why [`Index::run`] stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The gRPC server failed.
    #[error("the index gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// Where a bound index listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The gRPC listener (port 0 resolved).
    pub grpc: SocketAddr,
}

/// An index whose listener is bound, ready to [`run`](Index::run).
#[derive(Debug)]
pub struct Index {
    service: IndexService,
    listener: tokio::net::TcpListener,
    addresses: Addresses,
    ready: ReadyFlag,
}

impl Index {
    /// Binds the gRPC listener.
    pub async fn bind(config: Config, store: Store) -> Result<Index, BindError> {
        let err = |source| BindError::Grpc {
            addr: config.grpc_addr,
            source,
        };
        let listener = tokio::net::TcpListener::bind(config.grpc_addr)
            .await
            .map_err(err)?;
        let grpc = listener.local_addr().map_err(err)?;
        Ok(Index {
            service: IndexService::new(store, config.limits),
            listener,
            addresses: Addresses { grpc },
            ready: Readiness::new().flag("unused"),
        })
    }

    /// The service alone, to add to another tonic server (no listener of its own).
    pub fn grpc_service(store: Store, config: Config) -> IndexServer<IndexService> {
        IndexServer::new(IndexService::new(store, config.limits))
    }

    /// Registers the listener's readiness in `readiness` (the process's `/readyz`).
    #[must_use]
    pub fn with_readiness(mut self, readiness: &Readiness) -> Index {
        self.ready = readiness.flag(&format!("index grpc {}", self.addresses.grpc));
        self
    }

    /// The bound addresses.
    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    /// The service (direct calls in tests).
    pub fn service(&self) -> &IndexService {
        &self.service
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), RunError> {
        self.ready.set(true);
        tracing::info!(grpc = %self.addresses.grpc, "index running");
        let served = tonic::transport::Server::builder()
            .layer(telemetry::GrpcTraceLayer)
            .add_service(IndexServer::new(self.service))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                shutdown.cancelled_owned(),
            )
            .await;
        self.ready.set(false);
        served.map_err(RunError::from)
    }
}

/// Command-line flags of `quickp2p-index`, each also read from its `QP_INDEX_*` variable (the
/// shared ones from `QP_*`).
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "quickp2p-index",
    version,
    about = "quickP2P index: published peer attributes, lookups and attribute queries (gRPC)"
)]
pub struct Args {
    /// Address of the gRPC listener. [default: 0.0.0.0:50054]
    #[arg(long, env = "QP_INDEX_GRPC_ADDR", value_name = "IP:PORT")]
    pub grpc_addr: Option<String>,

    /// Most attributes one peer may publish, 1 to 1024. [default: 32]
    #[arg(long, env = "QP_INDEX_MAX_ATTRIBUTES", value_name = "N")]
    pub max_attributes: Option<String>,

    /// Longest attribute key in bytes, 1 to 256. [default: 64]
    #[arg(long, env = "QP_INDEX_MAX_ATTRIBUTE_KEY_BYTES", value_name = "BYTES")]
    pub max_attribute_key_bytes: Option<String>,

    /// Longest attribute value in bytes, 0 to 8192. [default: 1024]
    #[arg(long, env = "QP_INDEX_MAX_ATTRIBUTE_VALUE_BYTES", value_name = "BYTES")]
    pub max_attribute_value_bytes: Option<String>,

    #[command(flatten)]
    /// Flags every quickP2P process takes.
    pub service: ServiceArgs,
}

/// Defaults of a lone index process.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    service_name: "quickp2p-index",
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
            "--grpc-addr / QP_INDEX_GRPC_ADDR",
            self.grpc_addr.as_deref(),
            d.grpc_addr,
        );
        let mut bounded = |name: &str, raw: Option<&str>, default: u32, min: u32, max: u32| {
            let v: u32 = errs.parse(name, raw, default);
            errs.check(
                name,
                (min..=max).contains(&v),
                format!("{v} is out of range ({min} to {max})"),
            );
            v
        };
        // the store's own bounds (quickp2p_store::limits) are the upper ends
        let limits = AttributeLimits {
            max_attributes: bounded(
                "--max-attributes / QP_INDEX_MAX_ATTRIBUTES",
                self.max_attributes.as_deref(),
                d.limits.max_attributes,
                1,
                1024,
            ),
            max_key_bytes: bounded(
                "--max-attribute-key-bytes / QP_INDEX_MAX_ATTRIBUTE_KEY_BYTES",
                self.max_attribute_key_bytes.as_deref(),
                d.limits.max_key_bytes,
                1,
                256,
            ),
            max_value_bytes: bounded(
                "--max-attribute-value-bytes / QP_INDEX_MAX_ATTRIBUTE_VALUE_BYTES",
                self.max_attribute_value_bytes.as_deref(),
                d.limits.max_value_bytes,
                0,
                8192,
            ),
        };
        errs.finish()?;
        Ok((service, Config { grpc_addr, limits }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn flags_resolve_and_bad_values_are_all_reported() {
        let args = Args::try_parse_from([
            "quickp2p-index",
            "--redis",
            "redis://127.0.0.1:6379",
            "--grpc-addr",
            "127.0.0.1:7000",
            "--max-attributes",
            "8",
        ])
        .unwrap();
        let (_, config) = args.resolve().unwrap();
        assert_eq!(config.grpc_addr, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(config.limits.max_attributes, 8);
        assert_eq!(config.limits.max_value_bytes, 1024);

        let args = Args::try_parse_from([
            "quickp2p-index",
            "--redis",
            "redis://127.0.0.1:6379",
            "--max-attributes",
            "0",
            "--max-attribute-key-bytes",
            "x",
        ])
        .unwrap();
        let err = args.resolve().unwrap_err().to_string();
        assert!(err.contains("QP_INDEX_MAX_ATTRIBUTES"), "{err}");
        assert!(err.contains("QP_INDEX_MAX_ATTRIBUTE_KEY_BYTES"), "{err}");
    }
}
