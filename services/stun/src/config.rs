//! Configuration of one STUN server of the pair: the plain [`Config`] the library runs from, and
//! the `quickp2p-stun` flags ([`Args`]) it is read from, each backed by a `QP_STUN_*` variable.
//!
//! [`Config::default`] is the local dev setup: stun-a on 127.0.0.1 with ports 3478 (primary),
//! 3479 (alternate) and 3480 (gRPC control), its partner stun-b on 127.0.0.2 with the same ports.
//! [`Config::loopback_pair`] builds either member of that pair with other ports, which is what the
//! all-in-one supernode and the tests use. Every bad flag is reported at once, by name.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use quickp2p_service_kit::config::{FieldErrors, ServiceArgs, ServiceConfig, ServiceDefaults};
use quickp2p_service_kit::discovery::{
    DiscoveryArgs, DiscoveryConfig, DiscoveryMode, ExternalAddress,
};

use crate::limiter::RateLimit;

/// The default primary STUN port (RFC 8489 §9).
pub const DEFAULT_PRIMARY_PORT: u16 = 3478;
/// The default alternate port, for change-port answers (RFC 5780).
pub const DEFAULT_ALTERNATE_PORT: u16 = 3479;
/// The default TCP port of the gRPC control listener.
pub const DEFAULT_CONTROL_PORT: u16 = 3480;
/// The default TCP port of the operations HTTP server of a lone `quickp2p-stun` process.
pub const DEFAULT_HTTP_PORT: u16 = 9478;
/// Name of the primary UDP port in the member's Kubernetes Service (discovery reads it).
pub const SERVICE_PORT_PRIMARY: &str = "stun";
/// Name of the alternate UDP port in the member's Kubernetes Service.
pub const SERVICE_PORT_ALTERNATE: &str = "stun-alt";
/// Name of the gRPC control port of a `hostNetwork` member's pod (its EndpointSlice lists it).
pub const SERVICE_PORT_CONTROL: &str = "control";
/// Loopback address of stun-a in the dev setup.
pub const LOOPBACK_A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// Loopback address of stun-b in the dev setup (any 127.0.0.0/8 address works on Linux).
pub const LOOPBACK_B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Default sustained answers per second per source IP.
pub const DEFAULT_RATE_PER_SECOND: f64 = 50.0;
/// Default burst per source IP.
pub const DEFAULT_RATE_BURST: f64 = 100.0;
/// Default number of sources the rate-limit table tracks.
pub const DEFAULT_RATE_TABLE_SIZE: usize = 65_536;
/// Default largest datagram accepted. Binding requests are under 100 bytes; an RFC 5780 PADDING
/// probe is about the path MTU (coturn's `turnutils_natdiscovery -P` sends 1500 bytes of
/// padding, about 1530 in all), so 2048 keeps those and drops anything bigger.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 2048;
/// Default cap on the PADDING of a response (on top of the rule that a padded response is never
/// larger than its request).
pub const DEFAULT_MAX_PADDING: usize = 1500;
/// The largest padding the control API accepts in a SendBindingResponse call.
pub const MAX_FORWARDED_PADDING: u32 = 1500;

/// Which member of the STUN pair a server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PairMember {
    /// stun-a.
    A,
    /// stun-b.
    B,
}

impl PairMember {
    /// `"a"` or `"b"`, as in flags and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            PairMember::A => "a",
            PairMember::B => "b",
        }
    }

    /// The other member.
    pub const fn partner(self) -> PairMember {
        match self {
            PairMember::A => PairMember::B,
            PairMember::B => PairMember::A,
        }
    }

    /// This member's loopback address in the dev setup.
    pub const fn loopback_ip(self) -> IpAddr {
        match self {
            PairMember::A => LOOPBACK_A,
            PairMember::B => LOOPBACK_B,
        }
    }
}

/// The partner server: where it answers clients, and where its control API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerConfig {
    /// The partner's primary address as advertised to clients: its IP is the "other IP" of
    /// RFC 5780 (OTHER-ADDRESS, change-IP answers).
    pub address: SocketAddr,
    /// The partner's alternate port (OTHER-ADDRESS carries it for requests that arrived on the
    /// primary port).
    pub alternate_port: u16,
    /// URL of the partner's gRPC control listener, e.g. `http://127.0.0.2:3480`.
    pub control_url: String,
}

impl PartnerConfig {
    /// The partner's advertised address with the port of `kind`.
    pub fn address_of(&self, kind: crate::server::LocalPort) -> SocketAddr {
        let port = match kind {
            crate::server::LocalPort::Primary => self.address.port(),
            crate::server::LocalPort::Alternate => self.alternate_port,
        };
        SocketAddr::new(self.address.ip(), port)
    }
}

/// Everything one STUN server needs to run. Plain data: runtime handles (metrics, readiness,
/// sockets) are made by [`Stun::bind`](crate::Stun::bind).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Which member of the pair this is (metric label `member`, Ping).
    pub member: PairMember,
    /// This replica's id (logs, `origin_server_id` of forwarded requests, Ping).
    pub server_id: String,
    /// IP the UDP sockets bind to (may be the unspecified address).
    pub bind_ip: IpAddr,
    /// IP clients reach this server at (RESPONSE-ORIGIN, the partner's OTHER-ADDRESS); behind a
    /// load balancer or NAT this differs from `bind_ip`.
    pub advertised_ip: IpAddr,
    /// Primary UDP port (3478). 0 picks a free port (tests with no partner).
    pub primary_port: u16,
    /// Alternate UDP port (3479), for change-port answers. 0 picks a free port.
    pub alternate_port: u16,
    /// Address of this server's gRPC control listener (the partner calls it). Port 0 picks one.
    pub control_addr: SocketAddr,
    /// The partner; `None` runs a lone server, which answers CHANGE-REQUEST with 420 and sends no
    /// OTHER-ADDRESS (RFC 5780 §6).
    pub partner: Option<PartnerConfig>,
    /// RFC 5780 behaviour discovery. Off: CHANGE-REQUEST, RESPONSE-PORT and PADDING get 420
    /// (Unknown Attribute), responses carry no MAPPED-ADDRESS, RESPONSE-ORIGIN or OTHER-ADDRESS,
    /// and the control API refuses forwarded requests.
    pub rfc5780: bool,
    /// Answers per source IP (per /64 for IPv6), shared by every kind of answer.
    pub rate_limit: RateLimit,
    /// How many sources the rate-limit table tracks at most.
    pub rate_table_size: usize,
    /// Largest datagram processed; bigger ones are dropped (reason `oversized`).
    pub max_request_size: usize,
    /// Cap on the PADDING of a response; a padded response is also never larger than its request.
    pub max_padding: usize,
    /// SOFTWARE attribute of success responses; `None` sends none (smaller responses).
    pub software: Option<String>,
    /// Sockets per UDP port, each with its own receive thread (SO_REUSEPORT when above 1).
    pub workers: usize,
    /// Deadline of a SendBindingResponse call to the partner (connecting included).
    pub forward_timeout: Duration,
    /// Forwarded requests older than this when they reach this server are refused (`stale`): the
    /// client has retransmitted by then.
    pub forward_staleness: Duration,
    /// Forwards to the partner in flight at once; more are dropped (`forward_backlog`).
    pub max_forwards_in_flight: usize,
}

/// Ports of a loopback pair: both members use the same three, on 127.0.0.1 and 127.0.0.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairPorts {
    /// Primary UDP port.
    pub primary: u16,
    /// Alternate UDP port.
    pub alternate: u16,
    /// gRPC control TCP port.
    pub control: u16,
}

impl Default for PairPorts {
    fn default() -> PairPorts {
        PairPorts {
            primary: DEFAULT_PRIMARY_PORT,
            alternate: DEFAULT_ALTERNATE_PORT,
            control: DEFAULT_CONTROL_PORT,
        }
    }
}

impl Config {
    /// One member of a loopback pair: stun-a on 127.0.0.1 and stun-b on 127.0.0.2, both with
    /// `ports`, each the other's partner. The all-in-one supernode runs both in one process:
    ///
    /// ```
    /// use quickp2p_stun::{Config, PairMember, PairPorts};
    /// let a = Config::loopback_pair(PairMember::A, PairPorts::default());
    /// let b = Config::loopback_pair(PairMember::B, PairPorts::default());
    /// assert_eq!(a.partner.as_ref().unwrap().address, "127.0.0.2:3478".parse().unwrap());
    /// assert_eq!(b.control_addr, "127.0.0.2:3480".parse().unwrap());
    /// ```
    pub fn loopback_pair(member: PairMember, ports: PairPorts) -> Config {
        let own = member.loopback_ip();
        let other = member.partner().loopback_ip();
        Config {
            member,
            server_id: format!("stun-{}", member.as_str()),
            bind_ip: own,
            advertised_ip: own,
            primary_port: ports.primary,
            alternate_port: ports.alternate,
            control_addr: SocketAddr::new(own, ports.control),
            partner: Some(PartnerConfig {
                address: SocketAddr::new(other, ports.primary),
                alternate_port: ports.alternate,
                control_url: format!("http://{}", SocketAddr::new(other, ports.control)),
            }),
            rfc5780: true,
            rate_limit: RateLimit {
                per_second: DEFAULT_RATE_PER_SECOND,
                burst: DEFAULT_RATE_BURST,
            },
            rate_table_size: DEFAULT_RATE_TABLE_SIZE,
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
            max_padding: DEFAULT_MAX_PADDING,
            software: None,
            workers: 1,
            forward_timeout: Duration::from_millis(500),
            forward_staleness: Duration::from_millis(500),
            max_forwards_in_flight: 256,
        }
    }

    /// The advertised address of one of this server's ports (RESPONSE-ORIGIN).
    pub fn advertised(&self, kind: crate::server::LocalPort) -> SocketAddr {
        let port = match kind {
            crate::server::LocalPort::Primary => self.primary_port,
            crate::server::LocalPort::Alternate => self.alternate_port,
        };
        SocketAddr::new(self.advertised_ip, port)
    }

    /// Takes the addresses Kubernetes discovery found: this member's Service address becomes
    /// the advertised IP, and the partner's (when given and this server has a partner) its
    /// address and alternate port; for a `hostNetwork` partner the control URL also points at
    /// the very pod behind that address. The Service must forward the STUN ports unchanged
    /// (ports named [`SERVICE_PORT_PRIMARY`] and [`SERVICE_PORT_ALTERNATE`]), because a STUN
    /// server advertises the ports it binds (RESPONSE-ORIGIN, OTHER-ADDRESS).
    pub fn apply_discovered(
        &mut self,
        own: &ExternalAddress,
        partner: Option<&ExternalAddress>,
    ) -> Result<(), String> {
        let port = |address: &ExternalAddress, name: &str, whose: &str| {
            address.port(name).ok_or_else(|| {
                let names: Vec<&str> = address.ports.keys().map(String::as_str).collect();
                format!(
                    "{whose} Service has no port named {name:?} (it has: {})",
                    names.join(", ")
                )
            })
        };
        for (name, bound) in [
            (SERVICE_PORT_PRIMARY, self.primary_port),
            (SERVICE_PORT_ALTERNATE, self.alternate_port),
        ] {
            let exposed = port(own, name, "this member's")?;
            if exposed != bound {
                return Err(format!(
                    "this member's Service exposes port {name:?} as {exposed} but the server binds \
                     {bound}: STUN advertises the ports it binds, so the Service must forward them \
                     unchanged (a node port must equal the bound port)"
                ));
            }
        }
        if let (Some(found), Some(partner_config)) = (partner, self.partner.as_mut()) {
            if found.ip == own.ip {
                return Err(format!(
                    "the partner's address {} is this member's own: RFC 5780 needs the pair on two IPs",
                    found.ip
                ));
            }
            partner_config.address = SocketAddr::new(
                found.ip,
                port(found, SERVICE_PORT_PRIMARY, "the partner's")?,
            );
            partner_config.alternate_port = port(found, SERVICE_PORT_ALTERNATE, "the partner's")?;
            if let Some(backend) = &found.backend
                && let Some(control) = backend.ports.get(SERVICE_PORT_CONTROL)
            {
                partner_config.control_url =
                    format!("http://{}", SocketAddr::new(backend.pod_ip, *control));
            }
        }
        self.advertised_ip = own.ip;
        Ok(())
    }
}

impl Default for Config {
    /// stun-a of the loopback pair on the default ports.
    fn default() -> Config {
        Config::loopback_pair(PairMember::A, PairPorts::default())
    }
}

/// Command-line flags of `quickp2p-stun`, each also read from its `QP_STUN_*` variable (the
/// shared flags from their `QP_*` variables). Values are kept as text so that every bad one is
/// reported at once by [`Args::resolve`].
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "quickp2p-stun",
    version,
    about = "STUN server (RFC 8489 Binding) with RFC 5780 NAT behaviour discovery, run as a pair: \
             stun-a and stun-b on two IPs, each with a primary and an alternate port; change-IP \
             requests are answered by the partner, asked over gRPC."
)]
pub struct Args {
    /// Which member of the pair this is: `a` or `b`. Sets the defaults of the addresses (a:
    /// 127.0.0.1 with partner 127.0.0.2, b: the reverse).
    #[arg(long, env = "QP_STUN_MEMBER", value_name = "a|b")]
    pub member: Option<String>,

    /// IP the UDP sockets bind to. [default: 127.0.0.1 for a, 127.0.0.2 for b]
    #[arg(long, env = "QP_STUN_BIND_IP", value_name = "IP")]
    pub bind_ip: Option<String>,

    /// IP clients reach this server at, sent in RESPONSE-ORIGIN and used by the partner for
    /// OTHER-ADDRESS; required when --bind-ip is 0.0.0.0 or ::. [default: --bind-ip]
    #[arg(long, env = "QP_STUN_ADVERTISED_IP", value_name = "IP")]
    pub advertised_ip: Option<String>,

    /// Primary UDP port. [default: 3478]
    #[arg(long, env = "QP_STUN_PRIMARY_PORT", value_name = "PORT")]
    pub primary_port: Option<String>,

    /// Alternate UDP port, which answers change-port requests. [default: 3479]
    #[arg(long, env = "QP_STUN_ALTERNATE_PORT", value_name = "PORT")]
    pub alternate_port: Option<String>,

    /// The partner's advertised primary address (its IP is the other IP of RFC 5780), or `none`
    /// for a lone server that answers CHANGE-REQUEST with 420. [default: 127.0.0.2:3478 for a,
    /// 127.0.0.1:3478 for b]
    #[arg(long, env = "QP_STUN_PARTNER_ADDR", value_name = "IP:PORT|none")]
    pub partner_addr: Option<String>,

    /// The partner's alternate port. [default: partner port + (alternate port - primary port)]
    #[arg(long, env = "QP_STUN_PARTNER_ALTERNATE_PORT", value_name = "PORT")]
    pub partner_alternate_port: Option<String>,

    /// Address of this server's gRPC control listener, which the partner calls to have change-IP
    /// requests answered from here. Keep it internal. [default: bind IP, port 3480]
    #[arg(long, env = "QP_STUN_CONTROL_ADDR", value_name = "IP:PORT")]
    pub control_addr: Option<String>,

    /// URL of the partner's gRPC control listener. [default: http://PARTNER-IP:3480]
    #[arg(long, env = "QP_STUN_PARTNER_CONTROL_URL", value_name = "URL")]
    pub partner_control_url: Option<String>,

    /// RFC 5780 behaviour discovery: `true` or `false`. Off: CHANGE-REQUEST, RESPONSE-PORT and
    /// PADDING are answered with 420 and responses carry only XOR-MAPPED-ADDRESS. [default: true]
    #[arg(long, env = "QP_STUN_RFC5780", value_name = "BOOL")]
    pub rfc5780: Option<String>,

    /// Answers per second per source IP (per /64 for IPv6), sustained; 0 switches rate limiting
    /// off. [default: 50]
    #[arg(long, env = "QP_STUN_RATE_LIMIT", value_name = "PER_SECOND")]
    pub rate_limit: Option<String>,

    /// Answers a source IP may get at once after being idle. [default: 100]
    #[arg(long, env = "QP_STUN_RATE_BURST", value_name = "COUNT")]
    pub rate_burst: Option<String>,

    /// Most source IPs the rate-limit table tracks; beyond it old entries are evicted. [default:
    /// 65536]
    #[arg(long, env = "QP_STUN_RATE_TABLE_SIZE", value_name = "COUNT")]
    pub rate_table_size: Option<String>,

    /// Largest datagram processed, in bytes; bigger ones are dropped. [default: 2048]
    #[arg(long, env = "QP_STUN_MAX_REQUEST_SIZE", value_name = "BYTES")]
    pub max_request_size: Option<String>,

    /// Cap on the PADDING of a response, in bytes; a padded response is also never larger than its
    /// request. [default: 1500]
    #[arg(long, env = "QP_STUN_MAX_PADDING", value_name = "BYTES")]
    pub max_padding: Option<String>,

    /// SOFTWARE attribute to put in success responses (empty: none). [default: none]
    #[arg(long, env = "QP_STUN_SOFTWARE", value_name = "TEXT")]
    pub software: Option<String>,

    /// Sockets per UDP port, each served by its own thread (SO_REUSEPORT when above 1). [default:
    /// 1]
    #[arg(long, env = "QP_STUN_WORKERS", value_name = "COUNT")]
    pub workers: Option<String>,

    /// Deadline of a call to the partner's control API, in milliseconds. [default: 500]
    #[arg(long, env = "QP_STUN_FORWARD_TIMEOUT_MS", value_name = "MS")]
    pub forward_timeout_ms: Option<String>,

    /// Forwarded requests older than this when they arrive are refused, in milliseconds.
    /// [default: 500]
    #[arg(long, env = "QP_STUN_FORWARD_STALENESS_MS", value_name = "MS")]
    pub forward_staleness_ms: Option<String>,

    /// Calls to the partner in flight at once; change-IP requests beyond it are dropped.
    /// [default: 256]
    #[arg(long, env = "QP_STUN_MAX_FORWARDS", value_name = "COUNT")]
    pub max_forwards: Option<String>,

    #[command(flatten)]
    /// Flags every quickP2P process takes.
    pub service: ServiceArgs,

    #[command(flatten)]
    /// Where the advertised and partner addresses come from (`--discovery kubernetes` in a
    /// cluster; see [`Config::apply_discovered`]).
    pub discovery: DiscoveryArgs,
}

/// The flag and variable names of a field, as errors quote them.
fn name(flag: &str, var: &str) -> String {
    format!("--{flag} / {var}")
}

impl Args {
    /// Validates every flag and returns the shared service settings and the STUN configuration;
    /// all problems are reported together.
    pub fn resolve(&self) -> Result<(ServiceConfig, Config), quickp2p_service_kit::ConfigError> {
        self.resolve_with_discovery()
            .map(|(service, config, _)| (service, config))
    }

    /// [`resolve`](Self::resolve), plus the discovery settings. With `--discovery kubernetes`
    /// the advertised IP and the partner's address may be left to discovery: the binary then
    /// completes the configuration with [`Config::apply_discovered`] before binding.
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
                "is required for the STUN server: its Service says where clients reach it",
            );
        }
        let member = errs.one_of(
            &name("member", "QP_STUN_MEMBER"),
            self.member.as_deref(),
            &[("a", PairMember::A), ("b", PairMember::B)],
            PairMember::A,
        );
        let defaults = Config::loopback_pair(member, PairPorts::default());
        let bind_ip: IpAddr = errs.parse(
            &name("bind-ip", "QP_STUN_BIND_IP"),
            self.bind_ip.as_deref(),
            defaults.bind_ip,
        );
        let advertised_ip: IpAddr = errs.parse(
            &name("advertised-ip", "QP_STUN_ADVERTISED_IP"),
            self.advertised_ip.as_deref(),
            bind_ip,
        );
        errs.check(
            &name("advertised-ip", "QP_STUN_ADVERTISED_IP"),
            (discovered && self.advertised_ip.is_none())
                || (!advertised_ip.is_unspecified() && !advertised_ip.is_multicast()),
            format!(
                "{advertised_ip} cannot be reached by clients: give the address clients use (required when --bind-ip is unspecified)"
            ),
        );
        let primary_port: u16 = errs.parse(
            &name("primary-port", "QP_STUN_PRIMARY_PORT"),
            self.primary_port.as_deref(),
            DEFAULT_PRIMARY_PORT,
        );
        let alternate_port: u16 = errs.parse(
            &name("alternate-port", "QP_STUN_ALTERNATE_PORT"),
            self.alternate_port.as_deref(),
            DEFAULT_ALTERNATE_PORT,
        );
        errs.check(
            &name("alternate-port", "QP_STUN_ALTERNATE_PORT"),
            primary_port != alternate_port || primary_port == 0,
            format!("{alternate_port} is also the primary port: the two ports must differ"),
        );

        let partner_name = name("partner-addr", "QP_STUN_PARTNER_ADDR");
        let partner_addr = match self.partner_addr.as_deref().map(str::trim) {
            Some(raw) if raw.is_empty() || raw.eq_ignore_ascii_case("none") => None,
            raw => {
                let default = defaults
                    .partner
                    .as_ref()
                    .map(|p| p.address)
                    .unwrap_or_else(|| SocketAddr::new(LOOPBACK_B, DEFAULT_PRIMARY_PORT));
                let addr = errs.socket_addr(&partner_name, raw, default);
                errs.check(
                    &partner_name,
                    addr.ip() != advertised_ip,
                    format!(
                        "{addr} has this server's own IP: RFC 5780 needs the partner on another IP"
                    ),
                );
                errs.check(
                    &partner_name,
                    addr.port() != 0 && !addr.ip().is_unspecified(),
                    format!("{addr} is not an address clients can reach"),
                );
                Some(addr)
            }
        };
        let partner_alt_name = name("partner-alternate-port", "QP_STUN_PARTNER_ALTERNATE_PORT");
        let derived_alt = partner_addr.and_then(|p| {
            let offset = i32::from(alternate_port) - i32::from(primary_port);
            u16::try_from(i32::from(p.port()) + offset).ok()
        });
        let partner_alternate_port: Option<u16> =
            errs.parse_opt(&partner_alt_name, self.partner_alternate_port.as_deref());
        if partner_addr.is_some() && partner_alternate_port.is_none() && derived_alt.is_none() {
            errs.push(
                &partner_alt_name,
                "cannot be derived from the partner's port: give it".to_owned(),
            );
        }

        let control_name = name("control-addr", "QP_STUN_CONTROL_ADDR");
        let control_addr = errs.socket_addr(
            &control_name,
            self.control_addr.as_deref(),
            SocketAddr::new(bind_ip, DEFAULT_CONTROL_PORT),
        );
        let control_url_name = name("partner-control-url", "QP_STUN_PARTNER_CONTROL_URL");
        let control_url = match &self.partner_control_url {
            Some(url) => url.trim().to_owned(),
            None => partner_addr
                .map(|p| format!("http://{}", SocketAddr::new(p.ip(), DEFAULT_CONTROL_PORT)))
                .unwrap_or_default(),
        };
        if partner_addr.is_some() {
            errs.check(
                &control_url_name,
                (control_url.starts_with("http://") || control_url.starts_with("https://"))
                    && control_url.parse::<tonic::transport::Uri>().is_ok(),
                format!("{control_url:?} is not an http:// or https:// URL"),
            );
        }

        let rfc5780 = errs.one_of(
            &name("rfc5780", "QP_STUN_RFC5780"),
            self.rfc5780.as_deref(),
            &[
                ("true", true),
                ("false", false),
                ("on", true),
                ("off", false),
                ("1", true),
                ("0", false),
            ],
            true,
        );
        let rate_name = name("rate-limit", "QP_STUN_RATE_LIMIT");
        let per_second: f64 = errs.parse(
            &rate_name,
            self.rate_limit.as_deref(),
            DEFAULT_RATE_PER_SECOND,
        );
        errs.check(
            &rate_name,
            per_second.is_finite() && per_second >= 0.0,
            format!("{per_second} must be 0 (off) or a positive number"),
        );
        let burst_name = name("rate-burst", "QP_STUN_RATE_BURST");
        let burst: f64 = errs.parse(
            &burst_name,
            self.rate_burst.as_deref(),
            DEFAULT_RATE_BURST.max(per_second),
        );
        errs.check(
            &burst_name,
            burst.is_finite() && (burst >= 1.0 || per_second == 0.0),
            format!("{burst} must be at least 1"),
        );
        let table_name = name("rate-table-size", "QP_STUN_RATE_TABLE_SIZE");
        let rate_table_size: usize = errs.parse(
            &table_name,
            self.rate_table_size.as_deref(),
            DEFAULT_RATE_TABLE_SIZE,
        );
        errs.check(
            &table_name,
            (16..=16_777_216).contains(&rate_table_size),
            format!("{rate_table_size} must be between 16 and 16777216"),
        );
        let size_name = name("max-request-size", "QP_STUN_MAX_REQUEST_SIZE");
        let max_request_size: usize = errs.parse(
            &size_name,
            self.max_request_size.as_deref(),
            DEFAULT_MAX_REQUEST_SIZE,
        );
        errs.check(
            &size_name,
            (548..=65_507).contains(&max_request_size),
            format!("{max_request_size} must be between 548 and 65507"),
        );
        let padding_name = name("max-padding", "QP_STUN_MAX_PADDING");
        let max_padding: usize = errs.parse(
            &padding_name,
            self.max_padding.as_deref(),
            DEFAULT_MAX_PADDING,
        );
        errs.check(
            &padding_name,
            max_padding <= 65_000,
            format!("{max_padding} must be at most 65000"),
        );
        let software = self
            .software
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if let Some(text) = &software {
            errs.check(
                &name("software", "QP_STUN_SOFTWARE"),
                text.chars().count() < 128 && text.len() <= 763,
                "must be fewer than 128 characters (RFC 8489 §14.14)".to_owned(),
            );
        }
        let workers_name = name("workers", "QP_STUN_WORKERS");
        let workers: usize = errs.parse(&workers_name, self.workers.as_deref(), 1);
        errs.check(
            &workers_name,
            (1..=256).contains(&workers),
            format!("{workers} must be between 1 and 256"),
        );
        let ms = |errs: &mut FieldErrors, flag: &str, var: &str, raw: Option<&str>, default| {
            let n = name(flag, var);
            let v: u64 = errs.parse(&n, raw, default);
            errs.check(
                &n,
                (1..=60_000).contains(&v),
                format!("{v} must be between 1 and 60000 milliseconds"),
            );
            Duration::from_millis(v)
        };
        let forward_timeout = ms(
            &mut errs,
            "forward-timeout-ms",
            "QP_STUN_FORWARD_TIMEOUT_MS",
            self.forward_timeout_ms.as_deref(),
            500,
        );
        let forward_staleness = ms(
            &mut errs,
            "forward-staleness-ms",
            "QP_STUN_FORWARD_STALENESS_MS",
            self.forward_staleness_ms.as_deref(),
            500,
        );
        let forwards_name = name("max-forwards", "QP_STUN_MAX_FORWARDS");
        let max_forwards_in_flight: usize =
            errs.parse(&forwards_name, self.max_forwards.as_deref(), 256);
        errs.check(
            &forwards_name,
            (1..=65_536).contains(&max_forwards_in_flight),
            format!("{max_forwards_in_flight} must be between 1 and 65536"),
        );

        let service_defaults = ServiceDefaults {
            service_name: "quickp2p-stun",
            http_addr: SocketAddr::new(bind_ip, DEFAULT_HTTP_PORT),
            // The STUN service keeps no shared state: it never needs Redis.
            embedded_store_allowed: true,
        };
        let service = self.service.resolve(&service_defaults, &mut errs);
        errs.finish()?;

        let partner = partner_addr.map(|address| PartnerConfig {
            address,
            alternate_port: partner_alternate_port
                .or(derived_alt)
                .unwrap_or(DEFAULT_ALTERNATE_PORT),
            control_url,
        });
        let config = Config {
            member,
            server_id: service.replica_id.clone(),
            bind_ip,
            advertised_ip,
            primary_port,
            alternate_port,
            control_addr,
            partner,
            rfc5780,
            rate_limit: RateLimit { per_second, burst },
            rate_table_size,
            max_request_size,
            max_padding,
            software,
            workers,
            forward_timeout,
            forward_staleness,
            max_forwards_in_flight,
        };
        Ok((service, config, discovery))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn resolve(
        args: &[&str],
    ) -> Result<(ServiceConfig, Config), quickp2p_service_kit::ConfigError> {
        let mut all = vec!["quickp2p-stun", "--replica-id", "t1"];
        all.extend_from_slice(args);
        Args::try_parse_from(all).unwrap().resolve()
    }

    #[test]
    fn defaults_are_stun_a_of_the_loopback_pair() {
        let (service, config) = resolve(&[]).unwrap();
        let expected = Config {
            server_id: "t1".into(),
            ..Config::default()
        };
        assert_eq!(config, expected);
        assert_eq!(service.http_addr, "127.0.0.1:9478".parse().unwrap());
        assert_eq!(service.service_name, "quickp2p-stun");
        let partner = config.partner.unwrap();
        assert_eq!(partner.address, "127.0.0.2:3478".parse().unwrap());
        assert_eq!(partner.alternate_port, 3479);
        assert_eq!(partner.control_url, "http://127.0.0.2:3480");
    }

    #[test]
    fn member_b_mirrors_a() {
        let (_, config) = resolve(&["--member", "B"]).unwrap();
        assert_eq!(config.member, PairMember::B);
        assert_eq!(config.bind_ip, LOOPBACK_B);
        assert_eq!(config.control_addr, "127.0.0.2:3480".parse().unwrap());
        assert_eq!(
            config.partner.unwrap().address,
            "127.0.0.1:3478".parse().unwrap()
        );
    }

    #[test]
    fn everything_can_be_placed_by_flags() {
        let (service, config) = resolve(&[
            "--bind-ip",
            "0.0.0.0",
            "--advertised-ip",
            "198.51.100.7",
            "--primary-port",
            "40000",
            "--alternate-port",
            "40001",
            "--partner-addr",
            "198.51.100.8:41000",
            "--control-addr",
            "10.0.0.7:7000",
            "--partner-control-url",
            "http://10.0.0.8:7000",
            "--rfc5780",
            "off",
            "--rate-limit",
            "0",
            "--software",
            "quickp2p",
            "--workers",
            "2",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .unwrap();
        assert_eq!(service.http_addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(
            config.advertised_ip,
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!((config.primary_port, config.alternate_port), (40000, 40001));
        let partner = config.partner.unwrap();
        assert_eq!(
            partner.alternate_port, 41001,
            "derived from the port offset"
        );
        assert_eq!(partner.control_url, "http://10.0.0.8:7000");
        assert!(!config.rfc5780);
        assert!(!config.rate_limit.is_enabled());
        assert_eq!(config.software.as_deref(), Some("quickp2p"));
        assert_eq!(config.workers, 2);
    }

    #[test]
    fn a_lone_server_has_no_partner() {
        let (_, config) = resolve(&["--partner-addr", "none"]).unwrap();
        assert_eq!(config.partner, None);
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let err = resolve(&[
            "--member",
            "c",
            "--bind-ip",
            "0.0.0.0",
            "--primary-port",
            "70000",
            "--alternate-port",
            "3478",
            "--partner-addr",
            "nowhere",
            "--rfc5780",
            "maybe",
            "--rate-limit=-1",
            "--max-request-size",
            "100",
            "--workers",
            "0",
            "--forward-timeout-ms",
            "0",
            "--partner-control-url",
            "grpc://x",
            "--log-format",
            "yaml",
        ])
        .unwrap_err();
        let names: Vec<&str> = err.errors.iter().map(|e| e.name.as_str()).collect();
        for expected in [
            "--member / QP_STUN_MEMBER",
            "--advertised-ip / QP_STUN_ADVERTISED_IP",
            "--primary-port / QP_STUN_PRIMARY_PORT",
            "--alternate-port / QP_STUN_ALTERNATE_PORT",
            "--partner-addr / QP_STUN_PARTNER_ADDR",
            "--partner-control-url / QP_STUN_PARTNER_CONTROL_URL",
            "--rfc5780 / QP_STUN_RFC5780",
            "--rate-limit / QP_STUN_RATE_LIMIT",
            "--max-request-size / QP_STUN_MAX_REQUEST_SIZE",
            "--workers / QP_STUN_WORKERS",
            "--forward-timeout-ms / QP_STUN_FORWARD_TIMEOUT_MS",
            "--log-format / QP_LOG_FORMAT",
        ] {
            assert!(names.contains(&expected), "{expected} missing from {err}");
        }
        // a store is never required
        assert!(!names.contains(&"--redis / QP_REDIS_URL"), "{err}");
    }

    fn discovered(ip: &str, ports: &[(&str, u16)]) -> ExternalAddress {
        ExternalAddress {
            ip: ip.parse().unwrap(),
            ports: ports.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect(),
            source: quickp2p_service_kit::discovery::AddressSource::LoadBalancer,
            backend: None,
        }
    }

    #[test]
    fn kubernetes_discovery_leaves_the_addresses_to_the_service() {
        let (_, mut config, discovery) = Args::try_parse_from([
            "quickp2p-stun",
            "--replica-id",
            "t1",
            "--bind-ip",
            "0.0.0.0",
            "--discovery",
            "kubernetes",
            "--discovery-service",
            "qp-stun-a",
            "--discovery-partner-service",
            "qp-stun-b",
            "--partner-control-url",
            "http://qp-stun-b-control:3480",
        ])
        .unwrap()
        .resolve_with_discovery()
        .unwrap();
        assert_eq!(discovery.mode, DiscoveryMode::Kubernetes);
        assert_eq!(discovery.partner_service.as_deref(), Some("qp-stun-b"));

        let own = discovered("203.0.113.10", &[("stun", 3478), ("stun-alt", 3479)]);
        let partner = discovered("203.0.113.11", &[("stun", 3478), ("stun-alt", 3479)]);
        config.apply_discovered(&own, Some(&partner)).unwrap();
        assert_eq!(
            config.advertised_ip,
            "203.0.113.10".parse::<IpAddr>().unwrap()
        );
        assert_eq!(config.bind_ip, "0.0.0.0".parse::<IpAddr>().unwrap());
        let partner = config.partner.unwrap();
        assert_eq!(partner.address, "203.0.113.11:3478".parse().unwrap());
        assert_eq!(partner.alternate_port, 3479);
        assert_eq!(
            partner.control_url, "http://qp-stun-b-control:3480",
            "the flag's"
        );
    }

    #[test]
    fn a_host_network_partner_is_called_on_its_pod() {
        let mut config = Config::default();
        let own = discovered("198.51.100.30", &[("stun", 3478), ("stun-alt", 3479)]);
        let mut partner = discovered("198.51.100.31", &[("stun", 3478), ("stun-alt", 3479)]);
        partner.backend = Some(quickp2p_service_kit::discovery::Backend {
            pod_ip: "10.0.0.8".parse().unwrap(),
            ports: [("control".to_owned(), 3480)].into(),
        });
        config.apply_discovered(&own, Some(&partner)).unwrap();
        assert_eq!(config.partner.unwrap().control_url, "http://10.0.0.8:3480");
    }

    #[test]
    fn discovered_ports_must_be_the_bound_ones() {
        let mut config = Config::default();
        let node_port = discovered("198.51.100.21", &[("stun", 31478), ("stun-alt", 31479)]);
        let err = config.apply_discovered(&node_port, None).unwrap_err();
        assert!(
            err.contains("exposes port \"stun\" as 31478 but the server binds 3478"),
            "{err}"
        );
        let unnamed = discovered("198.51.100.21", &[("udp", 3478)]);
        let err = config.apply_discovered(&unnamed, None).unwrap_err();
        assert!(
            err.contains("no port named \"stun\" (it has: udp)"),
            "{err}"
        );
        let own = discovered("198.51.100.21", &[("stun", 3478), ("stun-alt", 3479)]);
        let err = config.apply_discovered(&own, Some(&own)).unwrap_err();
        assert!(err.contains("two IPs"), "{err}");
        assert_eq!(
            config,
            Config::default(),
            "nothing taken from a refused discovery"
        );
    }

    #[test]
    fn kubernetes_discovery_needs_the_member_service() {
        let err = resolve(&[
            "--bind-ip",
            "0.0.0.0",
            "--discovery",
            "kubernetes",
            "--node-name",
            "n1",
        ])
        .unwrap_err();
        assert_eq!(err.errors.len(), 1, "{err}");
        assert_eq!(
            err.errors[0].name,
            "--discovery-service / QP_DISCOVERY_SERVICE"
        );
    }

    #[test]
    fn the_partner_must_be_on_another_ip() {
        let err = resolve(&["--partner-addr", "127.0.0.1:3478"]).unwrap_err();
        assert_eq!(err.errors.len(), 1, "{err}");
        assert!(err.errors[0].message.contains("another IP"), "{err}");
    }
}
