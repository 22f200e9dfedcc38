//! Configuration of one relay replica: the plain [`Config`] the library runs from, and the
//! `quickp2p-relay` flags ([`Args`]) it is read from, each backed by a `QP_RELAY_*` variable.
//!
//! [`Config::loopback_dev`] is the local dev setup (what the all-in-one supernode runs): TURN on
//! 127.0.0.1:3482 (3478–3480 belong to the STUN pair), gRPC control on 127.0.0.1:3483, relayed
//! ports 49152–65535 on 127.0.0.1, loopback peers allowed. Every bad flag is reported at once, by
//! name.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use quickp2p_service_kit::config::{FieldErrors, ServiceArgs, ServiceConfig, ServiceDefaults};
use quickp2p_service_kit::discovery::{
    DiscoveryArgs, DiscoveryConfig, DiscoveryMode, ExternalAddress,
};

use crate::credentials::SharedSecret;
use crate::peer_policy::{IpRange, PeerPolicy, RelaySelf, parse_ranges};

/// Default UDP port of the TURN listener. Not 3478: the STUN pair owns 3478–3480 on the same
/// hosts (stun-a/stun-b primary, alternate, control).
pub const DEFAULT_TURN_PORT: u16 = 3482;
/// Default TCP port of the gRPC control listener.
pub const DEFAULT_CONTROL_PORT: u16 = 3483;
/// Default TCP port of the operations HTTP server of a lone `quickp2p-relay` process.
pub const DEFAULT_HTTP_PORT: u16 = 9482;
/// Name of the TURN port in the relay's Kubernetes Service (discovery reads its external port).
pub const SERVICE_PORT_TURN: &str = "turn";
/// Default relay port range (RFC 8656 §7.2 recommends the dynamic range 49152–65535).
pub const DEFAULT_PORT_RANGE: (u16, u16) = (49152, 65535);
/// Default TURN realm.
pub const DEFAULT_REALM: &str = "quickp2p";
/// Allocation lifetime when the client asks for none or less (RFC 8656 §7.2: 10 minutes).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// Longest allocation lifetime granted by default (RFC 8656 suggests 3600 s).
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a nonce is accepted before 438 Stale Nonce.
pub const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(600);
/// Permission lifetime (RFC 8656 §9: 300 s, not configurable).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel binding lifetime (RFC 8656 §12: 600 s, not configurable).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// After a channel binding expires its number and peer stay reserved this long (RFC 8656 §12).
pub const CHANNEL_REUSE_DELAY: Duration = Duration::from_secs(300);

/// Everything one relay replica needs to run. Plain data: runtime handles (store, metrics,
/// readiness, sockets) are given to or made by [`Relay::bind`](crate::Relay::bind).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// This replica's id (registry key, stats, logs).
    pub relay_id: String,
    /// Where the TURN UDP listener binds. Port 0 picks one (tests).
    pub listen: SocketAddr,
    /// The TURN server address clients use (registry, minted grants); behind a load balancer or
    /// NAT this differs from `listen`. Port 0 means "the bound port".
    pub advertised: SocketAddr,
    /// IP the relayed sockets bind to.
    pub relay_ip: IpAddr,
    /// IP put in XOR-RELAYED-ADDRESS (what peers send to); differs from `relay_ip` behind 1:1 NAT.
    pub relay_advertised_ip: IpAddr,
    /// Relayed ports, inclusive.
    pub port_range: (u16, u16),
    /// Address of the gRPC control listener (Relay service). Port 0 picks one.
    pub control_addr: SocketAddr,
    /// TURN REALM.
    pub realm: String,
    /// The secret credentials are derived from (see [`crate::credentials`]).
    pub shared_secret: SharedSecret,
    /// Lifetime granted when the client asks for none or less.
    pub default_lifetime: Duration,
    /// Longest lifetime granted.
    pub max_lifetime: Duration,
    /// How long a nonce stays valid.
    pub nonce_lifetime: Duration,
    /// Allocations one user (the peer id part of the username) may hold at once (486 beyond).
    pub user_quota: u32,
    /// Allocations this replica accepts in all (508 beyond).
    pub capacity: u32,
    /// Bytes per second one user may relay, both directions and all its allocations together;
    /// 0 = unlimited. Excess datagrams are dropped.
    pub user_bandwidth: u64,
    /// Bytes a user may send at once above its rate (token bucket depth).
    pub user_burst: u64,
    /// Which peers may be relayed to.
    pub peer_policy: PeerPolicy,
    /// Permissions one allocation may hold (508 beyond).
    pub max_permissions: usize,
    /// Channels one allocation may bind (508 beyond).
    pub max_channels: usize,
    /// Largest datagram relayed or processed (application data of ChannelData / DATA, or a
    /// peer's datagram); bigger ones are dropped.
    pub max_payload: usize,
    /// Worker threads, each with a socket on the TURN port (SO_REUSEPORT above 1) and a
    /// single-threaded runtime. The kernel keeps each client on one socket, so a worker owns its
    /// clients' allocations, both directions, on its own thread.
    pub workers: usize,
    /// TTL of the replica's registration in the store; it is refreshed every third of it.
    pub registry_ttl: Duration,
    /// Lifetime of credentials minted by the MintCredentials RPC when the caller asks for none.
    pub credential_ttl: Duration,
    /// Longest lifetime MintCredentials grants.
    pub credential_max_ttl: Duration,
    /// SOFTWARE attribute of success responses; `None` sends none.
    pub software: Option<String>,
    /// Accept channel numbers 0x5000–0x7FFF too (RFC 5766's range; RFC 8656 reserves them).
    /// coturn's `turnutils_uclient` and other RFC 5766 clients pick numbers there.
    pub legacy_channel_numbers: bool,
}

impl Config {
    /// The local dev setup on loopback: TURN on 127.0.0.1:3482, control on 127.0.0.1:3483,
    /// relayed ports 49152–65535 on 127.0.0.1, **loopback peers allowed** (everything in the
    /// all-in-one runs on loopback), realm `quickp2p`, with `shared_secret`.
    ///
    /// ```
    /// let config = quickp2p_relay::Config::loopback_dev("dev-secret");
    /// assert_eq!(config.listen, "127.0.0.1:3482".parse().unwrap());
    /// assert!(config.peer_policy.allow_loopback);
    /// ```
    pub fn loopback_dev(shared_secret: impl AsRef<[u8]>) -> Config {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Config {
            relay_id: "relay-0".to_owned(),
            listen: SocketAddr::new(ip, DEFAULT_TURN_PORT),
            advertised: SocketAddr::new(ip, DEFAULT_TURN_PORT),
            relay_ip: ip,
            relay_advertised_ip: ip,
            port_range: DEFAULT_PORT_RANGE,
            control_addr: SocketAddr::new(ip, DEFAULT_CONTROL_PORT),
            realm: DEFAULT_REALM.to_owned(),
            shared_secret: SharedSecret::new(shared_secret),
            default_lifetime: DEFAULT_LIFETIME,
            max_lifetime: DEFAULT_MAX_LIFETIME,
            nonce_lifetime: DEFAULT_NONCE_LIFETIME,
            user_quota: 10,
            capacity: 10_000,
            user_bandwidth: 0,
            user_burst: 1 << 20,
            peer_policy: PeerPolicy {
                allow_loopback: true,
                ..PeerPolicy::default()
            },
            max_permissions: 64,
            max_channels: 64,
            max_payload: 2048,
            workers: 1,
            registry_ttl: Duration::from_secs(30),
            credential_ttl: Duration::from_secs(3600),
            credential_max_ttl: Duration::from_secs(86_400),
            software: None,
            legacy_channel_numbers: true,
        }
    }

    /// The relay's own addresses, as the peer policy sees them.
    pub fn relay_self(&self) -> RelaySelf {
        let mut ips = vec![
            self.listen.ip(),
            self.advertised.ip(),
            self.relay_ip,
            self.relay_advertised_ip,
        ];
        ips.retain(|ip| !ip.is_unspecified());
        ips.sort();
        ips.dedup();
        let mut listeners = vec![self.listen, self.advertised];
        listeners.dedup();
        RelaySelf {
            listeners,
            ips,
            port_range: self.port_range,
        }
    }

    /// The lifetime granted for a requested one (RFC 8656 §7.2: absent or below the default →
    /// the default; above the maximum → the maximum).
    pub fn granted_lifetime(&self, requested: Option<u32>) -> Duration {
        match requested {
            Some(s) if Duration::from_secs(u64::from(s)) > self.default_lifetime => {
                Duration::from_secs(u64::from(s)).min(self.max_lifetime)
            }
            _ => self.default_lifetime,
        }
    }

    /// Takes the address Kubernetes discovery found for the relay's Service. What
    /// [`Args::resolve_with_discovery`] left unspecified (the flags not given explicitly) is
    /// filled in: the advertised TURN address becomes the discovered IP with the external port of
    /// the Service port named [`SERVICE_PORT_TURN`] (the configured port when the Service has no
    /// such port), and the XOR-RELAYED-ADDRESS IP the discovered IP. An explicit
    /// `--advertised-addr` or `--relay-advertised-ip` is kept. Nothing is changed on error.
    pub fn apply_discovered(&mut self, found: &ExternalAddress) -> Result<(), String> {
        if found.ip.is_unspecified() || found.ip.is_multicast() {
            return Err(format!(
                "the relay's Service address {} cannot be reached by clients",
                found.ip
            ));
        }
        let advertised = if self.advertised.ip().is_unspecified() {
            let port = found
                .port(SERVICE_PORT_TURN)
                .unwrap_or(self.advertised.port());
            SocketAddr::new(found.ip, port)
        } else {
            self.advertised
        };
        let relay_advertised_ip = if self.relay_advertised_ip.is_unspecified() {
            if found.ip.is_ipv4() != self.relay_ip.is_ipv4() {
                return Err(format!(
                    "the relay's Service address {} is not of the address family of the relay IP {}",
                    found.ip, self.relay_ip
                ));
            }
            found.ip
        } else {
            self.relay_advertised_ip
        };
        self.advertised = advertised;
        self.relay_advertised_ip = relay_advertised_ip;
        Ok(())
    }

    /// Whether [`apply_discovered`](Self::apply_discovered) has something to fill in: the
    /// advertised address or the XOR-RELAYED-ADDRESS IP is still unspecified.
    pub fn needs_discovery(&self) -> bool {
        self.advertised.ip().is_unspecified() || self.relay_advertised_ip.is_unspecified()
    }
}

/// Command-line flags of `quickp2p-relay`; each is also read from its `QP_RELAY_*` variable.
/// Values are kept as text so that every bad one is reported, by name, at once.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "quickp2p-relay",
    version,
    about = "quickP2P relay: a TURN server (RFC 8656) with shared-secret credentials, quotas and a gRPC control API"
)]
pub struct Args {
    #[command(flatten)]
    /// Flags every quickP2P process takes.
    pub service: ServiceArgs,

    /// UDP address of the TURN listener [default: 127.0.0.1:3482].
    #[arg(long, env = "QP_RELAY_LISTEN_ADDR", value_name = "IP:PORT")]
    pub listen_addr: Option<String>,
    /// TURN address clients use (registry, minted grants) [default: the listen address; required
    /// when it is a wildcard].
    #[arg(long, env = "QP_RELAY_ADVERTISED_ADDR", value_name = "IP:PORT")]
    pub advertised_addr: Option<String>,
    /// IP the relayed sockets bind to [default: the listen IP].
    #[arg(long, env = "QP_RELAY_RELAY_IP", value_name = "IP")]
    pub relay_ip: Option<String>,
    /// IP of XOR-RELAYED-ADDRESS, what peers send to [default: the relay IP, or the advertised IP
    /// when the relay IP is a wildcard].
    #[arg(long, env = "QP_RELAY_RELAY_ADVERTISED_IP", value_name = "IP")]
    pub relay_advertised_ip: Option<String>,
    /// Relayed ports, MIN-MAX inclusive [default: 49152-65535].
    #[arg(long, env = "QP_RELAY_PORT_RANGE", value_name = "MIN-MAX")]
    pub port_range: Option<String>,
    /// Address of the gRPC control listener [default: listen IP, port 3483].
    #[arg(long, env = "QP_RELAY_CONTROL_ADDR", value_name = "IP:PORT")]
    pub control_addr: Option<String>,
    /// TURN realm [default: quickp2p].
    #[arg(long, env = "QP_RELAY_REALM", value_name = "TEXT")]
    pub realm: Option<String>,
    /// The shared secret credentials are derived from (prefer --shared-secret-file).
    #[arg(
        long,
        env = "QP_RELAY_SHARED_SECRET",
        value_name = "TEXT",
        hide_env_values = true
    )]
    pub shared_secret: Option<String>,
    /// File holding the shared secret (trailing newline ignored), e.g. a mounted Kubernetes Secret.
    #[arg(long, env = "QP_RELAY_SHARED_SECRET_FILE", value_name = "PATH")]
    pub shared_secret_file: Option<String>,
    /// Allocation lifetime granted when the client asks for none or less, seconds [default: 600].
    #[arg(long, env = "QP_RELAY_DEFAULT_LIFETIME_S", value_name = "SECONDS")]
    pub default_lifetime_s: Option<String>,
    /// Longest allocation lifetime granted, seconds [default: 3600].
    #[arg(long, env = "QP_RELAY_MAX_LIFETIME_S", value_name = "SECONDS")]
    pub max_lifetime_s: Option<String>,
    /// Seconds a nonce is valid before 438 Stale Nonce [default: 600].
    #[arg(long, env = "QP_RELAY_NONCE_LIFETIME_S", value_name = "SECONDS")]
    pub nonce_lifetime_s: Option<String>,
    /// Allocations one user (peer id) may hold at once; more get 486 [default: 10].
    #[arg(long, env = "QP_RELAY_USER_QUOTA", value_name = "N")]
    pub user_quota: Option<String>,
    /// Allocations this replica accepts in all; more get 508 [default: 10000].
    #[arg(long, env = "QP_RELAY_CAPACITY", value_name = "N")]
    pub capacity: Option<String>,
    /// Kilobits per second one user may relay (both directions, all its allocations); 0 =
    /// unlimited [default: 0].
    #[arg(long, env = "QP_RELAY_USER_BANDWIDTH_KBPS", value_name = "KBIT/S")]
    pub user_bandwidth_kbps: Option<String>,
    /// Kilobytes a user may send at once above its rate [default: 1024].
    #[arg(long, env = "QP_RELAY_USER_BURST_KB", value_name = "KB")]
    pub user_burst_kb: Option<String>,
    /// Allow loopback peers (127.0.0.0/8, ::1): dev and loopback tests only [default: false].
    #[arg(long, env = "QP_RELAY_ALLOW_LOOPBACK_PEERS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub allow_loopback_peers: Option<String>,
    /// Peer ranges always allowed, comma-separated CIDRs (e.g. 10.0.0.0/8).
    #[arg(long, env = "QP_RELAY_ALLOWED_PEER_RANGES", value_name = "CIDR,...")]
    pub allowed_peer_ranges: Option<String>,
    /// Peer ranges denied on top of the default classes, comma-separated CIDRs.
    #[arg(long, env = "QP_RELAY_DENIED_PEER_RANGES", value_name = "CIDR,...")]
    pub denied_peer_ranges: Option<String>,
    /// Permissions one allocation may hold [default: 64].
    #[arg(long, env = "QP_RELAY_MAX_PERMISSIONS", value_name = "N")]
    pub max_permissions: Option<String>,
    /// Channels one allocation may bind [default: 64].
    #[arg(long, env = "QP_RELAY_MAX_CHANNELS", value_name = "N")]
    pub max_channels: Option<String>,
    /// Largest datagram payload relayed, bytes [default: 2048].
    #[arg(long, env = "QP_RELAY_MAX_PAYLOAD", value_name = "BYTES")]
    pub max_payload: Option<String>,
    /// Worker threads, each with its own socket on the TURN port (SO_REUSEPORT above 1)
    /// [default: the number of CPUs].
    #[arg(long, env = "QP_RELAY_WORKERS", value_name = "N")]
    pub workers: Option<String>,
    /// TTL of the registration in the store, seconds; refreshed every third [default: 30].
    #[arg(long, env = "QP_RELAY_REGISTRY_TTL_S", value_name = "SECONDS")]
    pub registry_ttl_s: Option<String>,
    /// Default lifetime of credentials from the MintCredentials RPC, seconds [default: 3600].
    #[arg(long, env = "QP_RELAY_CREDENTIAL_TTL_S", value_name = "SECONDS")]
    pub credential_ttl_s: Option<String>,
    /// Longest lifetime MintCredentials grants, seconds [default: 86400].
    #[arg(long, env = "QP_RELAY_CREDENTIAL_MAX_TTL_S", value_name = "SECONDS")]
    pub credential_max_ttl_s: Option<String>,
    /// SOFTWARE attribute of success responses [default: none].
    #[arg(long, env = "QP_RELAY_SOFTWARE", value_name = "TEXT")]
    pub software: Option<String>,
    /// Accept RFC 5766 channel numbers 0x5000-0x7FFF too (coturn's clients use them) [default: true].
    #[arg(long, env = "QP_RELAY_LEGACY_CHANNEL_NUMBERS", value_name = "BOOL")]
    pub legacy_channel_numbers: Option<String>,

    #[command(flatten)]
    /// Where the advertised addresses come from (`--discovery kubernetes` in a cluster; see
    /// [`Config::apply_discovered`]).
    pub discovery: DiscoveryArgs,
}

fn name(flag: &str, var: &str) -> String {
    format!("--{flag} / {var}")
}

impl Args {
    /// Validates every flag; all problems are reported together.
    pub fn resolve(&self) -> Result<(ServiceConfig, Config), quickp2p_service_kit::ConfigError> {
        self.resolve_with_discovery()
            .map(|(service, config, _)| (service, config))
    }

    /// [`resolve`](Self::resolve), plus the discovery settings. With `--discovery kubernetes`
    /// the advertised TURN address and the XOR-RELAYED-ADDRESS IP may be left to discovery (they
    /// are then unspecified in the returned configuration): the binary completes the
    /// configuration with [`Config::apply_discovered`] before binding.
    pub fn resolve_with_discovery(
        &self,
    ) -> Result<(ServiceConfig, Config, DiscoveryConfig), quickp2p_service_kit::ConfigError> {
        let mut errs = FieldErrors::new();
        let discovery = self.discovery.resolve(&mut errs);
        let discovered = discovery.mode == DiscoveryMode::Kubernetes;
        // (with no node name either, the kit has already asked for the Service)
        if discovered && discovery.node_name.is_some() {
            errs.check(
                "--discovery-service / QP_DISCOVERY_SERVICE",
                discovery.service.is_some(),
                "is required for the relay: its Service says where clients reach it",
            );
        }
        let listen_name = name("listen-addr", "QP_RELAY_LISTEN_ADDR");
        let listen = errs.socket_addr(
            &listen_name,
            self.listen_addr.as_deref(),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_TURN_PORT),
        );
        let adv_name = name("advertised-addr", "QP_RELAY_ADVERTISED_ADDR");
        // Left to discovery: unspecified until `Config::apply_discovered`.
        let adv_discovered = discovered && self.advertised_addr.is_none();
        let adv_default = if adv_discovered {
            SocketAddr::new(unspecified_like(listen.ip()), listen.port())
        } else {
            listen
        };
        let advertised = errs.socket_addr(&adv_name, self.advertised_addr.as_deref(), adv_default);
        errs.check(
            &adv_name,
            adv_discovered
                || (!advertised.ip().is_unspecified() && !advertised.ip().is_multicast()),
            format!("{advertised} cannot be reached by clients: give the address clients use (required when --listen-addr is a wildcard)"),
        );
        let relay_ip: IpAddr = errs.parse(
            &name("relay-ip", "QP_RELAY_RELAY_IP"),
            self.relay_ip.as_deref(),
            listen.ip(),
        );
        let relay_adv_discovered = discovered && self.relay_advertised_ip.is_none();
        let default_relay_adv = if relay_ip.is_unspecified() {
            advertised.ip()
        } else if relay_adv_discovered {
            unspecified_like(relay_ip)
        } else {
            relay_ip
        };
        let relay_adv_name = name("relay-advertised-ip", "QP_RELAY_RELAY_ADVERTISED_IP");
        let relay_advertised_ip: IpAddr = errs.parse(
            &relay_adv_name,
            self.relay_advertised_ip.as_deref(),
            default_relay_adv,
        );
        errs.check(
            &relay_adv_name,
            (relay_adv_discovered && relay_advertised_ip.is_unspecified())
                || (!relay_advertised_ip.is_unspecified() && !relay_advertised_ip.is_multicast()),
            format!("{relay_advertised_ip} cannot be reached by peers"),
        );
        errs.check(
            &relay_adv_name,
            relay_advertised_ip.is_ipv4() == relay_ip.is_ipv4(),
            "must be of the same address family as --relay-ip".to_owned(),
        );
        let range_name = name("port-range", "QP_RELAY_PORT_RANGE");
        let port_range = match self.port_range.as_deref().map(str::trim) {
            None => DEFAULT_PORT_RANGE,
            Some(raw) => match raw
                .split_once('-')
                .map(|(a, b)| (a.trim().parse::<u16>(), b.trim().parse::<u16>()))
            {
                Some((Ok(a), Ok(b))) if a >= 1 && a <= b => (a, b),
                _ => {
                    errs.push(
                        &range_name,
                        format!("{raw:?} is not MIN-MAX with 1 <= MIN <= MAX <= 65535"),
                    );
                    DEFAULT_PORT_RANGE
                }
            },
        };
        errs.check(
            &range_name,
            !(port_range.0..=port_range.1).contains(&listen.port())
                || relay_ip.to_canonical() != listen.ip().to_canonical(),
            format!(
                "the range {}-{} holds the TURN port {}",
                port_range.0,
                port_range.1,
                listen.port()
            ),
        );
        let control_addr = errs.socket_addr(
            &name("control-addr", "QP_RELAY_CONTROL_ADDR"),
            self.control_addr.as_deref(),
            SocketAddr::new(listen.ip(), DEFAULT_CONTROL_PORT),
        );
        let realm = self
            .realm
            .clone()
            .unwrap_or_else(|| DEFAULT_REALM.to_owned());
        errs.check(
            &name("realm", "QP_RELAY_REALM"),
            !realm.is_empty()
                && realm.len() < 128
                && !realm.chars().any(|c| c.is_control() || c == '"'),
            format!("{realm:?} must be 1 to 127 characters, no quotes or control characters"),
        );
        let secret_name = name("shared-secret", "QP_RELAY_SHARED_SECRET");
        let file_name = name("shared-secret-file", "QP_RELAY_SHARED_SECRET_FILE");
        let secret = match (&self.shared_secret, &self.shared_secret_file) {
            (Some(_), Some(_)) => {
                errs.push(
                    &secret_name,
                    format!("give either it or {file_name}, not both"),
                );
                String::new()
            }
            (Some(s), None) => s.clone(),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(s) => s.trim_end_matches(['\r', '\n']).to_owned(),
                Err(e) => {
                    errs.push(&file_name, format!("cannot read {path:?}: {e}"));
                    String::new()
                }
            },
            (None, None) => {
                errs.push(
                    &secret_name,
                    format!("is required (or {file_name}): TURN credentials are derived from it"),
                );
                String::new()
            }
        };
        let given = match (&self.shared_secret, &self.shared_secret_file) {
            (Some(_), None) => Some(&secret_name),
            (None, Some(path)) if std::fs::metadata(path).is_ok() => Some(&file_name),
            _ => None,
        };
        if let Some(given) = given {
            errs.check(
                given,
                secret.len() >= 8,
                "the secret must be at least 8 bytes".to_owned(),
            );
        }
        let secs = |errs: &mut FieldErrors,
                    flag: &str,
                    var: &str,
                    raw: Option<&str>,
                    default: Duration,
                    min: u64,
                    max: u64| {
            let n = name(flag, var);
            let v: u64 = errs.parse(&n, raw, default.as_secs());
            errs.check(
                &n,
                (min..=max).contains(&v),
                format!("{v} must be between {min} and {max} seconds"),
            );
            Duration::from_secs(v)
        };
        let default_lifetime = secs(
            &mut errs,
            "default-lifetime-s",
            "QP_RELAY_DEFAULT_LIFETIME_S",
            self.default_lifetime_s.as_deref(),
            DEFAULT_LIFETIME,
            30,
            86_400,
        );
        let max_lifetime = secs(
            &mut errs,
            "max-lifetime-s",
            "QP_RELAY_MAX_LIFETIME_S",
            self.max_lifetime_s.as_deref(),
            DEFAULT_MAX_LIFETIME,
            30,
            86_400,
        );
        errs.check(
            &name("max-lifetime-s", "QP_RELAY_MAX_LIFETIME_S"),
            max_lifetime >= default_lifetime,
            "must not be below --default-lifetime-s".to_owned(),
        );
        let nonce_lifetime = secs(
            &mut errs,
            "nonce-lifetime-s",
            "QP_RELAY_NONCE_LIFETIME_S",
            self.nonce_lifetime_s.as_deref(),
            DEFAULT_NONCE_LIFETIME,
            10,
            86_400,
        );
        let count = |errs: &mut FieldErrors,
                     flag: &str,
                     var: &str,
                     raw: Option<&str>,
                     default: u64,
                     min: u64,
                     max: u64| {
            let n = name(flag, var);
            let v: u64 = errs.parse(&n, raw, default);
            errs.check(
                &n,
                (min..=max).contains(&v),
                format!("{v} must be between {min} and {max}"),
            );
            v
        };
        let user_quota = count(
            &mut errs,
            "user-quota",
            "QP_RELAY_USER_QUOTA",
            self.user_quota.as_deref(),
            10,
            1,
            1_000_000,
        ) as u32;
        let capacity = count(
            &mut errs,
            "capacity",
            "QP_RELAY_CAPACITY",
            self.capacity.as_deref(),
            10_000,
            1,
            1_000_000,
        ) as u32;
        let kbps = count(
            &mut errs,
            "user-bandwidth-kbps",
            "QP_RELAY_USER_BANDWIDTH_KBPS",
            self.user_bandwidth_kbps.as_deref(),
            0,
            0,
            100_000_000,
        );
        let burst_kb = count(
            &mut errs,
            "user-burst-kb",
            "QP_RELAY_USER_BURST_KB",
            self.user_burst_kb.as_deref(),
            1024,
            2,
            1_048_576,
        );
        let allow_loopback = errs.one_of(
            &name("allow-loopback-peers", "QP_RELAY_ALLOW_LOOPBACK_PEERS"),
            self.allow_loopback_peers.as_deref(),
            &[
                ("true", true),
                ("false", false),
                ("1", true),
                ("0", false),
                ("on", true),
                ("off", false),
            ],
            false,
        );
        let ranges =
            |errs: &mut FieldErrors, flag: &str, var: &str, raw: Option<&str>| -> Vec<IpRange> {
                match raw.map(parse_ranges) {
                    None => Vec::new(),
                    Some(Ok(r)) => r,
                    Some(Err(e)) => {
                        errs.push(&name(flag, var), e.to_string());
                        Vec::new()
                    }
                }
            };
        let allowed = ranges(
            &mut errs,
            "allowed-peer-ranges",
            "QP_RELAY_ALLOWED_PEER_RANGES",
            self.allowed_peer_ranges.as_deref(),
        );
        let denied = ranges(
            &mut errs,
            "denied-peer-ranges",
            "QP_RELAY_DENIED_PEER_RANGES",
            self.denied_peer_ranges.as_deref(),
        );
        let max_permissions = count(
            &mut errs,
            "max-permissions",
            "QP_RELAY_MAX_PERMISSIONS",
            self.max_permissions.as_deref(),
            64,
            1,
            4096,
        ) as usize;
        let max_channels = count(
            &mut errs,
            "max-channels",
            "QP_RELAY_MAX_CHANNELS",
            self.max_channels.as_deref(),
            64,
            1,
            4096,
        ) as usize;
        let max_payload = count(
            &mut errs,
            "max-payload",
            "QP_RELAY_MAX_PAYLOAD",
            self.max_payload.as_deref(),
            2048,
            576,
            65_000,
        ) as usize;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let workers = count(
            &mut errs,
            "workers",
            "QP_RELAY_WORKERS",
            self.workers.as_deref(),
            cpus,
            1,
            256,
        ) as usize;
        let registry_ttl = secs(
            &mut errs,
            "registry-ttl-s",
            "QP_RELAY_REGISTRY_TTL_S",
            self.registry_ttl_s.as_deref(),
            Duration::from_secs(30),
            3,
            3600,
        );
        let credential_ttl = secs(
            &mut errs,
            "credential-ttl-s",
            "QP_RELAY_CREDENTIAL_TTL_S",
            self.credential_ttl_s.as_deref(),
            Duration::from_secs(3600),
            1,
            604_800,
        );
        let credential_max_ttl = secs(
            &mut errs,
            "credential-max-ttl-s",
            "QP_RELAY_CREDENTIAL_MAX_TTL_S",
            self.credential_max_ttl_s.as_deref(),
            Duration::from_secs(86_400),
            1,
            604_800,
        );
        errs.check(
            &name("credential-max-ttl-s", "QP_RELAY_CREDENTIAL_MAX_TTL_S"),
            credential_max_ttl >= credential_ttl,
            "must not be below --credential-ttl-s".to_owned(),
        );
        let software = self
            .software
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if let Some(text) = &software {
            errs.check(
                &name("software", "QP_RELAY_SOFTWARE"),
                text.chars().count() < 128,
                "must be fewer than 128 characters (RFC 8489 §14.14)".to_owned(),
            );
        }
        let legacy_channel_numbers = errs.one_of(
            &name("legacy-channel-numbers", "QP_RELAY_LEGACY_CHANNEL_NUMBERS"),
            self.legacy_channel_numbers.as_deref(),
            &[
                ("true", true),
                ("false", false),
                ("1", true),
                ("0", false),
                ("on", true),
                ("off", false),
            ],
            true,
        );
        let service_defaults = ServiceDefaults {
            service_name: "quickp2p-relay",
            http_addr: SocketAddr::new(listen.ip(), DEFAULT_HTTP_PORT),
            // The registry lives in the shared store: a lone relay process needs Redis.
            embedded_store_allowed: false,
        };
        let service = self.service.resolve(&service_defaults, &mut errs);
        errs.finish()?;
        let config = Config {
            relay_id: service.replica_id.clone(),
            listen,
            advertised,
            relay_ip,
            relay_advertised_ip,
            port_range,
            control_addr,
            realm,
            shared_secret: SharedSecret::new(secret),
            default_lifetime,
            max_lifetime,
            nonce_lifetime,
            user_quota,
            capacity,
            user_bandwidth: kbps.saturating_mul(1000) / 8,
            user_burst: burst_kb.saturating_mul(1024),
            peer_policy: PeerPolicy {
                allowed,
                denied,
                allow_loopback,
            },
            max_permissions,
            max_channels,
            max_payload,
            workers,
            registry_ttl,
            credential_ttl,
            credential_max_ttl,
            software,
            legacy_channel_numbers,
        };
        Ok((service, config, discovery))
    }
}

/// The unspecified address of `ip`'s family (the placeholder of an address left to discovery).
fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickp2p_service_kit::config::parse_flags_only;

    fn resolve(
        args: &[&str],
    ) -> Result<(ServiceConfig, Config), quickp2p_service_kit::ConfigError> {
        let mut all = vec!["quickp2p-relay", "--replica-id", "r1"];
        all.extend_from_slice(args);
        parse_flags_only::<Args, _, _>(all).unwrap().resolve()
    }

    const BASE: [&str; 4] = [
        "--redis",
        "redis://127.0.0.1:6379",
        "--shared-secret",
        "0123456789",
    ];

    #[test]
    fn defaults_are_the_loopback_setup_without_loopback_peers() {
        let (service, config) = resolve(&BASE).unwrap();
        let mut expected = Config::loopback_dev("0123456789");
        expected.relay_id = "r1".into();
        expected.peer_policy.allow_loopback = false;
        expected.workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(config, expected);
        assert_eq!(service.http_addr, "127.0.0.1:9482".parse().unwrap());
        let (_, config) = resolve(&[&BASE[..], &["--allow-loopback-peers"]].concat()).unwrap();
        assert!(config.peer_policy.allow_loopback);
    }

    #[test]
    fn everything_can_be_placed_by_flags() {
        let (_, c) = resolve(
            &[
                &BASE[..],
                &[
                    "--listen-addr",
                    "0.0.0.0:3478",
                    "--advertised-addr",
                    "198.51.100.7:3478",
                    "--relay-ip",
                    "0.0.0.0",
                    "--port-range",
                    "40000-40099",
                    "--control-addr",
                    "10.0.0.1:7000",
                    "--realm",
                    "example.org",
                    "--user-quota",
                    "3",
                    "--capacity",
                    "99",
                    "--user-bandwidth-kbps",
                    "8000",
                    "--allowed-peer-ranges",
                    "10.0.0.0/8",
                    "--denied-peer-ranges",
                    "198.18.0.0/15",
                    "--workers",
                    "2",
                    "--software",
                    "quickp2p",
                ],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(
            c.relay_advertised_ip,
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(c.port_range, (40000, 40099));
        assert_eq!(c.user_bandwidth, 1_000_000);
        assert_eq!((c.user_quota, c.capacity, c.workers), (3, 99, 2));
        assert_eq!(c.peer_policy.allowed.len(), 1);
        assert_eq!(
            c.relay_self().ips,
            vec!["198.51.100.7".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let err = resolve(&[
            "--listen-addr",
            "0.0.0.0:3482",
            "--port-range",
            "9-3",
            "--user-quota",
            "0",
            "--allowed-peer-ranges",
            "10.0.0.0/40",
            "--max-lifetime-s",
            "10",
            "--allow-loopback-peers",
            "maybe",
        ])
        .unwrap_err();
        let names: Vec<&str> = err.errors.iter().map(|e| e.name.as_str()).collect();
        for expected in [
            "--advertised-addr / QP_RELAY_ADVERTISED_ADDR",
            "--port-range / QP_RELAY_PORT_RANGE",
            "--shared-secret / QP_RELAY_SHARED_SECRET",
            "--user-quota / QP_RELAY_USER_QUOTA",
            "--allowed-peer-ranges / QP_RELAY_ALLOWED_PEER_RANGES",
            "--max-lifetime-s / QP_RELAY_MAX_LIFETIME_S",
            "--allow-loopback-peers / QP_RELAY_ALLOW_LOOPBACK_PEERS",
            "--redis / QP_REDIS_URL",
        ] {
            assert!(names.contains(&expected), "{expected} missing from {err}");
        }
    }

    fn discovered(ip: &str, ports: &[(&str, u16)]) -> ExternalAddress {
        ExternalAddress {
            ip: ip.parse().unwrap(),
            ports: ports.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect(),
            source: quickp2p_service_kit::discovery::AddressSource::HostNetwork {
                node: "node-1".to_owned(),
            },
            backend: None,
        }
    }

    fn resolve_discovered(
        args: &[&str],
    ) -> Result<(ServiceConfig, Config, DiscoveryConfig), quickp2p_service_kit::ConfigError> {
        let mut all = vec![
            "quickp2p-relay",
            "--replica-id",
            "r1",
            "--discovery",
            "kubernetes",
            "--discovery-service",
            "qp-relay",
            "--node-name",
            "node-1",
            "--listen-addr",
            "0.0.0.0:3482",
        ];
        all.extend_from_slice(&BASE);
        all.extend_from_slice(args);
        parse_flags_only::<Args, _, _>(all)
            .unwrap()
            .resolve_with_discovery()
    }

    #[test]
    fn kubernetes_discovery_accepts_a_wildcard_listen_address() {
        let (_, config, discovery) = resolve_discovered(&[]).unwrap();
        assert_eq!(discovery.mode, DiscoveryMode::Kubernetes);
        assert_eq!(discovery.service.as_deref(), Some("qp-relay"));
        assert!(config.needs_discovery());
        assert!(config.advertised.ip().is_unspecified());
        assert!(config.relay_advertised_ip.is_unspecified());
        // without discovery the same flags are refused
        let err = resolve(&["--listen-addr", "0.0.0.0:3482"]).unwrap_err();
        assert!(
            err.errors
                .iter()
                .any(|e| e.name == "--advertised-addr / QP_RELAY_ADVERTISED_ADDR"),
            "{err}"
        );
        // a multicast address given explicitly is still refused
        let err = resolve_discovered(&["--advertised-addr", "224.0.0.1:3482"]).unwrap_err();
        assert!(
            err.errors
                .iter()
                .any(|e| e.name == "--advertised-addr / QP_RELAY_ADVERTISED_ADDR"),
            "{err}"
        );
    }

    #[test]
    fn apply_discovered_fills_what_was_left_to_discovery() {
        let (_, mut config, _) = resolve_discovered(&[]).unwrap();
        config
            .apply_discovered(&discovered(
                "203.0.113.5",
                &[("turn", 3482), ("control", 3483)],
            ))
            .unwrap();
        assert_eq!(config.advertised, "203.0.113.5:3482".parse().unwrap());
        assert_eq!(
            config.relay_advertised_ip,
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        assert!(!config.needs_discovery());

        // a node port: the external port is advertised; no port named turn: the configured one
        let (_, mut config, _) = resolve_discovered(&[]).unwrap();
        config
            .apply_discovered(&discovered("203.0.113.5", &[("turn", 31482)]))
            .unwrap();
        assert_eq!(config.advertised, "203.0.113.5:31482".parse().unwrap());
        let (_, mut config, _) = resolve_discovered(&[]).unwrap();
        config
            .apply_discovered(&discovered("203.0.113.5", &[("udp", 9999)]))
            .unwrap();
        assert_eq!(config.advertised, "203.0.113.5:3482".parse().unwrap());
    }

    #[test]
    fn explicit_addresses_win_over_discovery() {
        let (_, mut config, _) =
            resolve_discovered(&["--relay-advertised-ip", "198.51.100.9"]).unwrap();
        config
            .apply_discovered(&discovered("203.0.113.5", &[("turn", 3482)]))
            .unwrap();
        assert_eq!(config.advertised, "203.0.113.5:3482".parse().unwrap());
        assert_eq!(
            config.relay_advertised_ip,
            "198.51.100.9".parse::<IpAddr>().unwrap()
        );

        let (_, config, _) =
            resolve_discovered(&["--advertised-addr", "198.51.100.7:3482"]).unwrap();
        assert_eq!(config.advertised, "198.51.100.7:3482".parse().unwrap());
        assert_eq!(
            config.relay_advertised_ip,
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert!(!config.needs_discovery(), "nothing left to discover");
    }

    #[test]
    fn a_refused_discovery_changes_nothing() {
        let (_, mut config, _) = resolve_discovered(&[]).unwrap();
        let before = config.clone();
        let err = config
            .apply_discovered(&discovered("0.0.0.0", &[("turn", 3482)]))
            .unwrap_err();
        assert!(err.contains("cannot be reached"), "{err}");
        let err = config
            .apply_discovered(&discovered("2001:db8::5", &[("turn", 3482)]))
            .unwrap_err();
        assert!(err.contains("address family"), "{err}");
        assert_eq!(config, before);
    }

    #[test]
    fn lifetimes_follow_rfc_8656() {
        let c = Config::loopback_dev("x");
        assert_eq!(c.granted_lifetime(None), DEFAULT_LIFETIME);
        assert_eq!(c.granted_lifetime(Some(30)), DEFAULT_LIFETIME);
        assert_eq!(c.granted_lifetime(Some(1200)), Duration::from_secs(1200));
        assert_eq!(c.granted_lifetime(Some(99_999)), DEFAULT_MAX_LIFETIME);
    }
}
