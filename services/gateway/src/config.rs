//! The gateway's [`Config`] (plain data, `Default` = loopback dev setup) and its flags
//! ([`Args`]), each backed by a `QP_GATEWAY_*` variable.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use quickp2p_service_kit::config::{FieldErrors, ServiceArgs, ServiceConfig, ServiceDefaults};
use quickp2p_service_kit::discovery::{
    DiscoveryArgs, DiscoveryConfig, DiscoveryMode, ExternalAddress,
};

/// Name of the QUIC port in the gateway's Kubernetes Service (discovery reads its external port).
pub const SERVICE_PORT_QUIC: &str = "quic";

/// Default UDP address of the QUIC listener.
pub const DEFAULT_UDP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4433);
/// Default address of the internal Deliver gRPC listener.
pub const DEFAULT_GRPC_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4434);
/// Default checkpoint URL.
pub const DEFAULT_CHECKPOINT_URL: &str = "http://127.0.0.1:50052";
/// Default operations HTTP address of a lone gateway.
pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9433);

/// Per-session limits (announced to peers in `Welcome.limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest SendMessage payload, bytes.
    pub max_message_bytes: u32,
    /// Sustained requests per second (token bucket).
    pub requests_per_second: u32,
    /// Requests in progress at once (also the token bucket's burst).
    pub max_in_flight: u32,
    /// Frames queued to one peer before deliveries to it are refused with QUEUE_FULL.
    pub queue_depth: usize,
    /// Peers one session may watch.
    pub max_presence_subscriptions: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_bytes: 61_440,
            requests_per_second: 200,
            max_in_flight: 64,
            queue_depth: 256,
            max_presence_subscriptions: 1024,
        }
    }
}

/// Where the gateway's TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// PEM files: the certificate chain and its private key.
    Files {
        /// Certificate chain (leaf first).
        cert: PathBuf,
        /// PKCS#8, PKCS#1 or SEC1 private key.
        key: PathBuf,
    },
    /// A self-signed certificate made at start (dev); peers pin its SHA-256 fingerprint.
    SelfSigned,
}

/// Everything one gateway needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This replica's id (in Welcome, routes, the replica registry).
    pub gateway_id: String,
    /// UDP address of the QUIC listener.
    pub udp_addr: SocketAddr,
    /// Address of the internal Deliver gRPC listener.
    pub grpc_addr: SocketAddr,
    /// How other replicas reach the Deliver listener (`http://host:port`); default: from
    /// `grpc_addr` once bound.
    pub advertised_grpc: Option<String>,
    /// Where peers reach the QUIC listener from outside (a load balancer's or node's address);
    /// printed at start and put in the replica registry. `None`: the bound address.
    pub advertised_quic: Option<SocketAddr>,
    /// The checkpoint's gRPC URL.
    pub checkpoint_url: String,
    /// The index's gRPC URL; `None`: the index code runs in this process over the gateway's
    /// store (same behaviour, no separate index replica needed).
    pub index_url: Option<String>,
    /// The handshake's gRPC URL; `None`: the handshake code runs in this process over the
    /// gateway's store (no relay grants: it has no TURN shared secret).
    pub handshake_url: Option<String>,
    /// The TLS certificate.
    pub cert: CertSource,
    /// Per-session limits.
    pub limits: Limits,
    /// Lifetime of a route peer → gateway without a heartbeat refreshing it.
    pub route_ttl: Duration,
    /// QUIC idle timeout (peers send keep-alives well within it).
    pub idle_timeout: Duration,
    /// Time allowed from connect to a successful login.
    pub login_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            gateway_id: "gw-1".to_owned(),
            udp_addr: DEFAULT_UDP_ADDR,
            grpc_addr: DEFAULT_GRPC_ADDR,
            advertised_grpc: None,
            advertised_quic: None,
            checkpoint_url: DEFAULT_CHECKPOINT_URL.to_owned(),
            index_url: None,
            handshake_url: None,
            cert: CertSource::SelfSigned,
            limits: Limits::default(),
            route_ttl: Duration::from_secs(90),
            idle_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// The loopback dev setup: QUIC on 127.0.0.1:4433, Deliver on a free loopback port, the
    /// checkpoint at `checkpoint_url`, a self-signed certificate.
    pub fn loopback(checkpoint_url: impl Into<String>) -> Config {
        Config {
            grpc_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            checkpoint_url: checkpoint_url.into(),
            ..Config::default()
        }
    }

    /// Takes the address Kubernetes discovery found for the gateway's Service: unless
    /// `--advertised-quic` was given, the advertised QUIC address becomes the discovered IP with
    /// the external port of the Service port named [`SERVICE_PORT_QUIC`] (the bound port when the
    /// Service has no such port). Nothing is changed on error.
    pub fn apply_discovered(&mut self, found: &ExternalAddress) -> Result<(), String> {
        if self.advertised_quic.is_some() {
            return Ok(());
        }
        if found.ip.is_unspecified() || found.ip.is_multicast() {
            return Err(format!(
                "the gateway's Service address {} cannot be reached by peers",
                found.ip
            ));
        }
        let port = found
            .port(SERVICE_PORT_QUIC)
            .unwrap_or(self.udp_addr.port());
        self.advertised_quic = Some(SocketAddr::new(found.ip, port));
        Ok(())
    }
}

/// Command-line flags of `quickp2p-gateway` (each also read from its `QP_GATEWAY_*` variable).
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "quickp2p-gateway",
    version,
    about = "quickP2P gateway: QUIC peer sessions (ALPN quickp2p/1), login through the checkpoint, \
             presence and instant messages across gateway replicas"
)]
pub struct Args {
    /// UDP address of the QUIC listener. [default: 127.0.0.1:4433]
    #[arg(long, env = "QP_GATEWAY_UDP_ADDR", value_name = "IP:PORT")]
    pub udp_addr: Option<String>,
    /// Address of the internal Deliver gRPC listener. [default: 127.0.0.1:4434]
    #[arg(long, env = "QP_GATEWAY_GRPC_ADDR", value_name = "IP:PORT")]
    pub grpc_addr: Option<String>,
    /// URL other replicas use to reach the Deliver listener. [default: http://GRPC-ADDR]
    #[arg(long, env = "QP_GATEWAY_ADVERTISED_GRPC", value_name = "URL")]
    pub advertised_grpc: Option<String>,
    /// Where peers reach the QUIC listener from outside (printed, and put in the replica
    /// registry). [default: the listen address; with --discovery kubernetes, the Service's]
    #[arg(long, env = "QP_GATEWAY_ADVERTISED_QUIC", value_name = "IP:PORT")]
    pub advertised_quic: Option<String>,
    /// The checkpoint's gRPC URL. [default: http://127.0.0.1:50052]
    #[arg(long, env = "QP_GATEWAY_CHECKPOINT_URL", value_name = "URL")]
    pub checkpoint_url: Option<String>,
    /// The index's gRPC URL. [default: none: the index runs inside the gateway, on its store]
    #[arg(long, env = "QP_GATEWAY_INDEX_URL", value_name = "URL")]
    pub index_url: Option<String>,
    /// The handshake's gRPC URL. [default: none: the handshake runs inside the gateway, on its
    /// store, without relay grants]
    #[arg(long, env = "QP_GATEWAY_HANDSHAKE_URL", value_name = "URL")]
    pub handshake_url: Option<String>,
    /// PEM certificate chain; with --key-file. [default: a self-signed certificate]
    #[arg(long, env = "QP_GATEWAY_CERT_FILE", value_name = "PATH")]
    pub cert_file: Option<String>,
    /// PEM private key of --cert-file.
    #[arg(long, env = "QP_GATEWAY_KEY_FILE", value_name = "PATH")]
    pub key_file: Option<String>,
    /// Largest message payload, bytes. [default: 61440]
    #[arg(long, env = "QP_GATEWAY_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<String>,
    /// Sustained requests per second per session. [default: 200]
    #[arg(long, env = "QP_GATEWAY_REQUESTS_PER_SECOND", value_name = "COUNT")]
    pub requests_per_second: Option<String>,
    /// Requests in progress per session (and the rate limiter's burst). [default: 64]
    #[arg(long, env = "QP_GATEWAY_MAX_IN_FLIGHT", value_name = "COUNT")]
    pub max_in_flight: Option<String>,
    /// Frames queued to one peer before deliveries are refused with QUEUE_FULL. [default: 256]
    #[arg(long, env = "QP_GATEWAY_QUEUE_DEPTH", value_name = "COUNT")]
    pub queue_depth: Option<String>,
    /// Route lifetime without a heartbeat, in milliseconds. [default: 90000]
    #[arg(long, env = "QP_GATEWAY_ROUTE_TTL_MS", value_name = "MS")]
    pub route_ttl_ms: Option<String>,
    /// QUIC idle timeout, in milliseconds. [default: 30000]
    #[arg(long, env = "QP_GATEWAY_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub idle_timeout_ms: Option<String>,

    #[command(flatten)]
    /// Flags every quickP2P process takes.
    pub service: ServiceArgs,

    #[command(flatten)]
    /// Where the advertised QUIC address comes from (`--discovery kubernetes` in a cluster; see
    /// [`Config::apply_discovered`]).
    pub discovery: DiscoveryArgs,
}

/// Defaults of a lone gateway process.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    service_name: "quickp2p-gateway",
    http_addr: DEFAULT_HTTP_ADDR,
    embedded_store_allowed: false,
};

impl Args {
    /// Validates every flag; all problems are reported together.
    pub fn resolve(&self) -> Result<(ServiceConfig, Config), quickp2p_service_kit::ConfigError> {
        self.resolve_with_discovery()
            .map(|(service, config, _)| (service, config))
    }

    /// [`resolve`](Self::resolve), plus the discovery settings. With `--discovery kubernetes`
    /// and no `--advertised-quic`, the binary asks the gateway's Service where peers reach it and
    /// records it with [`Config::apply_discovered`] before binding.
    pub fn resolve_with_discovery(
        &self,
    ) -> Result<(ServiceConfig, Config, DiscoveryConfig), quickp2p_service_kit::ConfigError> {
        let mut errs = FieldErrors::new();
        let discovery = self.discovery.resolve(&mut errs);
        // (with no node name either, the kit has already asked for the Service)
        if discovery.mode == DiscoveryMode::Kubernetes && discovery.node_name.is_some() {
            errs.check(
                "--discovery-service / QP_DISCOVERY_SERVICE",
                discovery.service.is_some(),
                "is required for the gateway: its Service says where peers reach it",
            );
        }
        let service = self.service.resolve(&DEFAULTS, &mut errs);
        let d = Config::default();
        let udp_addr = errs.socket_addr(
            "--udp-addr / QP_GATEWAY_UDP_ADDR",
            self.udp_addr.as_deref(),
            d.udp_addr,
        );
        let grpc_addr = errs.socket_addr(
            "--grpc-addr / QP_GATEWAY_GRPC_ADDR",
            self.grpc_addr.as_deref(),
            d.grpc_addr,
        );
        let advertised_quic = self.advertised_quic.as_deref().map(|raw| {
            let name = "--advertised-quic / QP_GATEWAY_ADVERTISED_QUIC";
            let addr = errs.socket_addr(name, Some(raw), udp_addr);
            errs.check(
                name,
                !addr.ip().is_unspecified() && !addr.ip().is_multicast() && addr.port() != 0,
                format!("{addr} cannot be reached by peers"),
            );
            addr
        });
        let url_ok = |u: &str| {
            (u.starts_with("http://") || u.starts_with("https://"))
                && u.parse::<tonic::transport::Uri>().is_ok()
        };
        let checkpoint_url = self
            .checkpoint_url
            .clone()
            .unwrap_or_else(|| d.checkpoint_url.clone());
        errs.check(
            "--checkpoint-url / QP_GATEWAY_CHECKPOINT_URL",
            url_ok(&checkpoint_url),
            format!("{checkpoint_url:?} is not an http:// or https:// URL"),
        );
        let index_url = self.index_url.clone().filter(|u| !u.trim().is_empty());
        if let Some(u) = &index_url {
            errs.check(
                "--index-url / QP_GATEWAY_INDEX_URL",
                url_ok(u),
                format!("{u:?} is not an http:// or https:// URL"),
            );
        }
        let handshake_url = self.handshake_url.clone().filter(|u| !u.trim().is_empty());
        if let Some(u) = &handshake_url {
            errs.check(
                "--handshake-url / QP_GATEWAY_HANDSHAKE_URL",
                url_ok(u),
                format!("{u:?} is not an http:// or https:// URL"),
            );
        }
        if let Some(u) = &self.advertised_grpc {
            errs.check(
                "--advertised-grpc / QP_GATEWAY_ADVERTISED_GRPC",
                url_ok(u),
                format!("{u:?} is not an http:// or https:// URL"),
            );
        }
        let cert = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => CertSource::Files {
                cert: cert.into(),
                key: key.into(),
            },
            (None, None) => CertSource::SelfSigned,
            _ => {
                errs.push(
                    "--cert-file / QP_GATEWAY_CERT_FILE",
                    "--cert-file and --key-file go together".to_owned(),
                );
                CertSource::SelfSigned
            }
        };
        let l = Limits::default();
        let limits = Limits {
            max_message_bytes: errs.parse(
                "--max-message-bytes / QP_GATEWAY_MAX_MESSAGE_BYTES",
                self.max_message_bytes.as_deref(),
                l.max_message_bytes,
            ),
            requests_per_second: errs.parse(
                "--requests-per-second / QP_GATEWAY_REQUESTS_PER_SECOND",
                self.requests_per_second.as_deref(),
                l.requests_per_second,
            ),
            max_in_flight: errs.parse(
                "--max-in-flight / QP_GATEWAY_MAX_IN_FLIGHT",
                self.max_in_flight.as_deref(),
                l.max_in_flight,
            ),
            queue_depth: errs.parse(
                "--queue-depth / QP_GATEWAY_QUEUE_DEPTH",
                self.queue_depth.as_deref(),
                l.queue_depth,
            ),
            max_presence_subscriptions: l.max_presence_subscriptions,
        };
        errs.check(
            "--max-message-bytes / QP_GATEWAY_MAX_MESSAGE_BYTES",
            (1..=61_440).contains(&limits.max_message_bytes),
            "must be 1 to 61440 (a message must fit a 64 KiB frame)",
        );
        for (name, v) in [
            (
                "--requests-per-second / QP_GATEWAY_REQUESTS_PER_SECOND",
                limits.requests_per_second as usize,
            ),
            (
                "--max-in-flight / QP_GATEWAY_MAX_IN_FLIGHT",
                limits.max_in_flight as usize,
            ),
            ("--queue-depth / QP_GATEWAY_QUEUE_DEPTH", limits.queue_depth),
        ] {
            errs.check(name, v >= 1, "must be at least 1");
        }
        let route_ttl = Duration::from_millis(errs.parse(
            "--route-ttl-ms / QP_GATEWAY_ROUTE_TTL_MS",
            self.route_ttl_ms.as_deref(),
            90_000u64,
        ));
        let idle_timeout = Duration::from_millis(errs.parse(
            "--idle-timeout-ms / QP_GATEWAY_IDLE_TIMEOUT_MS",
            self.idle_timeout_ms.as_deref(),
            30_000u64,
        ));
        errs.finish()?;
        Ok((
            service.clone(),
            Config {
                gateway_id: service.replica_id,
                udp_addr,
                grpc_addr,
                advertised_grpc: self.advertised_grpc.clone(),
                advertised_quic,
                checkpoint_url,
                index_url,
                handshake_url,
                cert,
                limits,
                route_ttl,
                idle_timeout,
                login_timeout: d.login_timeout,
            },
            discovery,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickp2p_service_kit::config::parse_flags_only;
    use quickp2p_service_kit::discovery::AddressSource;

    fn resolve(
        args: &[&str],
    ) -> Result<(ServiceConfig, Config, DiscoveryConfig), quickp2p_service_kit::ConfigError> {
        let mut all = vec![
            "quickp2p-gateway",
            "--replica-id",
            "gw-a",
            "--redis",
            "redis://127.0.0.1:6379",
            "--udp-addr",
            "0.0.0.0:4433",
        ];
        all.extend_from_slice(args);
        parse_flags_only::<Args, _, _>(all)
            .unwrap()
            .resolve_with_discovery()
    }

    fn discovered(ip: &str, ports: &[(&str, u16)]) -> ExternalAddress {
        ExternalAddress {
            ip: ip.parse().unwrap(),
            ports: ports.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect(),
            source: AddressSource::LoadBalancer,
            backend: None,
        }
    }

    const KUBE: [&str; 6] = [
        "--discovery",
        "kubernetes",
        "--discovery-service",
        "qp-gateway",
        "--node-name",
        "node-1",
    ];

    #[test]
    fn kubernetes_discovery_sets_the_advertised_quic_address() {
        let (_, mut config, discovery) = resolve(&KUBE).unwrap();
        assert_eq!(discovery.mode, DiscoveryMode::Kubernetes);
        assert_eq!(discovery.service.as_deref(), Some("qp-gateway"));
        assert_eq!(config.advertised_quic, None);
        config
            .apply_discovered(&discovered(
                "203.0.113.8",
                &[("quic", 443), ("deliver", 4434)],
            ))
            .unwrap();
        assert_eq!(
            config.advertised_quic,
            Some("203.0.113.8:443".parse().unwrap())
        );

        // no port named quic: the bound port
        let (_, mut config, _) = resolve(&KUBE).unwrap();
        config
            .apply_discovered(&discovered("203.0.113.8", &[("udp", 443)]))
            .unwrap();
        assert_eq!(
            config.advertised_quic,
            Some("203.0.113.8:4433".parse().unwrap())
        );

        // an unreachable answer is refused and changes nothing
        let (_, mut config, _) = resolve(&KUBE).unwrap();
        assert!(
            config
                .apply_discovered(&discovered("0.0.0.0", &[]))
                .is_err()
        );
        assert_eq!(config.advertised_quic, None);
    }

    #[test]
    fn an_explicit_advertised_quic_address_wins() {
        let (_, mut config, _) =
            resolve(&[&KUBE[..], &["--advertised-quic", "198.51.100.4:4433"]].concat()).unwrap();
        config
            .apply_discovered(&discovered("203.0.113.8", &[("quic", 443)]))
            .unwrap();
        assert_eq!(
            config.advertised_quic,
            Some("198.51.100.4:4433".parse().unwrap())
        );
        let err = resolve(&["--advertised-quic", "0.0.0.0:4433"]).unwrap_err();
        assert!(
            err.errors
                .iter()
                .any(|e| e.name == "--advertised-quic / QP_GATEWAY_ADVERTISED_QUIC"),
            "{err}"
        );
        let (_, config, discovery) = resolve(&[]).unwrap();
        assert_eq!(discovery.mode, DiscoveryMode::Static);
        assert_eq!(config.advertised_quic, None);
    }
}
