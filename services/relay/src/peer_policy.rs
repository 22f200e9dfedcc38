//! Which peer addresses the relay sends to.
//!
//! A TURN relay is an open UDP forwarder for whoever holds credentials, so by default it refuses
//! (403 Forbidden, RFC 8656 §7.2/§9.1) peers in ranges that reach the relay's own network rather
//! than the Internet:
//!
//! | class | IPv4 | IPv6 |
//! |---|---|---|
//! | unspecified / "this network" | 0.0.0.0/8 | ::/128 |
//! | loopback | 127.0.0.0/8 | ::1/128 |
//! | private | 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 (carrier-grade NAT) | fc00::/7 |
//! | link-local | 169.254.0.0/16 | fe80::/10 |
//! | multicast and broadcast | 224.0.0.0/4, 255.255.255.255 | ff00::/8 |
//! | the relay's own addresses | every configured own IP, except ports of the relay port range | same |
//!
//! Ports of the relay's own range stay reachable so that two clients of one relay can talk to
//! each other's relayed addresses (what two peers that both need a relay do). Port 0 and the
//! relay's own listening addresses are always refused (no loops through the relay).
//!
//! The operator can allow ranges explicitly ([`PeerPolicy::allowed`]; `allow_loopback` adds
//! 127.0.0.0/8 and ::1, which the all-in-one dev mode uses) and deny more
//! ([`PeerPolicy::denied`]). An explicit allow wins over the default classes and over extra
//! denials. IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An IP prefix, e.g. `10.0.0.0/8` or `fe80::/10`. A bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// The range of `network`/`prefix`; the host bits of `network` are cleared. `None` when the
    /// prefix is longer than the address.
    pub fn new(network: IpAddr, prefix: u8) -> Option<IpRange> {
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return None;
        }
        let network = match network {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))),
        };
        Some(IpRange { network, prefix })
    }

    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> IpRange {
        IpRange {
            network: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    const fn v6(bits: u128, prefix: u8) -> IpRange {
        IpRange {
            network: IpAddr::V6(Ipv6Addr::from_bits(bits)),
            prefix,
        }
    }

    /// Whether `ip` is inside the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

const fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    }
}

const fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix as u32)
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A range that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP range (expected ADDRESS/PREFIX, e.g. 10.0.0.0/8, or an address)")]
pub struct InvalidIpRange(pub String);

impl FromStr for IpRange {
    type Err = InvalidIpRange;

    fn from_str(s: &str) -> Result<IpRange, InvalidIpRange> {
        let bad = || InvalidIpRange(s.to_owned());
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        IpRange::new(ip, prefix).ok_or_else(bad)
    }
}

/// Parses a comma-separated list of ranges (empty entries ignored).
pub fn parse_ranges(list: &str) -> Result<Vec<IpRange>, InvalidIpRange> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect()
}

/// The default denied classes (see the module documentation), with their metric-friendly names.
pub const DEFAULT_DENIED: [(IpRange, &str); 14] = [
    (IpRange::v4(0, 0, 0, 0, 8), "unspecified"),
    (IpRange::v4(127, 0, 0, 0, 8), "loopback"),
    (IpRange::v4(10, 0, 0, 0, 8), "private"),
    (IpRange::v4(172, 16, 0, 0, 12), "private"),
    (IpRange::v4(192, 168, 0, 0, 16), "private"),
    (IpRange::v4(100, 64, 0, 0, 10), "private"),
    (IpRange::v4(169, 254, 0, 0, 16), "link_local"),
    (IpRange::v4(224, 0, 0, 0, 4), "multicast"),
    (IpRange::v4(255, 255, 255, 255, 32), "broadcast"),
    (IpRange::v6(0, 128), "unspecified"),
    (IpRange::v6(1, 128), "loopback"),
    (IpRange::v6(0xfc00 << 112, 7), "private"),
    (IpRange::v6(0xfe80 << 112, 10), "link_local"),
    (IpRange::v6(0xff00 << 112, 8), "multicast"),
];

/// The loopback ranges `allow_loopback` adds to the allowed list.
pub const LOOPBACK: [IpRange; 2] = [IpRange::v4(127, 0, 0, 0, 8), IpRange::v6(1, 128)];

/// The relay's peer-address policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Ranges always allowed (beats every denial except port 0 and the listening addresses).
    pub allowed: Vec<IpRange>,
    /// Extra ranges denied on top of the default classes.
    pub denied: Vec<IpRange>,
    /// Allow 127.0.0.0/8 and ::1 (the all-in-one dev mode and loopback tests).
    pub allow_loopback: bool,
}

impl Default for PeerPolicy {
    /// The production policy: the default classes denied, nothing extra.
    fn default() -> PeerPolicy {
        PeerPolicy {
            allowed: Vec::new(),
            denied: Vec::new(),
            allow_loopback: false,
        }
    }
}

/// Why a peer address is refused (the `reason` of the 403's log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Port 0.
    PortZero,
    /// One of the relay's own listening addresses.
    RelayListener,
    /// One of the relay's own IPs, outside the relay port range.
    RelayAddress,
    /// A default class (the name from [`DEFAULT_DENIED`]).
    Class(&'static str),
    /// One of the operator's extra denied ranges.
    Configured,
}

/// What the policy needs to know about the relay itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySelf {
    /// Addresses the relay listens on for TURN (bound and advertised).
    pub listeners: Vec<SocketAddr>,
    /// The relay's own IPs (bind, relayed and advertised IPs).
    pub ips: Vec<IpAddr>,
    /// The relay port range, inclusive.
    pub port_range: (u16, u16),
}

impl PeerPolicy {
    /// Checks an IP alone, as CreatePermission needs (its XOR-PEER-ADDRESS port is ignored,
    /// RFC 8656 §9.1): the relay's own IPs pass here, their ports are checked per datagram by
    /// [`PeerPolicy::check`].
    pub fn check_ip(&self, ip: IpAddr, relay: &RelaySelf) -> Result<(), Denial> {
        let ip = ip.to_canonical();
        let explicitly_allowed = self.allowed.iter().any(|r| r.contains(ip))
            || (self.allow_loopback && LOOPBACK.iter().any(|r| r.contains(ip)));
        if explicitly_allowed || relay.ips.iter().any(|own| own.to_canonical() == ip) {
            return Ok(());
        }
        if let Some((_, class)) = DEFAULT_DENIED.iter().find(|(r, _)| r.contains(ip)) {
            return Err(Denial::Class(class));
        }
        if self.denied.iter().any(|r| r.contains(ip)) {
            return Err(Denial::Configured);
        }
        Ok(())
    }

    /// Checks `peer` (any form; IPv4-mapped IPv6 is canonicalised).
    pub fn check(&self, peer: SocketAddr, relay: &RelaySelf) -> Result<(), Denial> {
        let ip = peer.ip().to_canonical();
        let peer = SocketAddr::new(ip, peer.port());
        if peer.port() == 0 {
            return Err(Denial::PortZero);
        }
        let is_listener = |l: &SocketAddr| {
            l.port() == peer.port() && (l.ip().to_canonical() == ip || l.ip().is_unspecified())
        };
        if relay.listeners.iter().any(is_listener) {
            return Err(Denial::RelayListener);
        }
        let explicitly_allowed = self.allowed.iter().any(|r| r.contains(ip))
            || (self.allow_loopback && LOOPBACK.iter().any(|r| r.contains(ip)));
        if explicitly_allowed {
            return Ok(());
        }
        if relay.ips.iter().any(|own| own.to_canonical() == ip) {
            let (low, high) = relay.port_range;
            return if (low..=high).contains(&peer.port()) {
                Ok(())
            } else {
                Err(Denial::RelayAddress)
            };
        }
        if let Some((_, class)) = DEFAULT_DENIED.iter().find(|(r, _)| r.contains(ip)) {
            return Err(Denial::Class(class));
        }
        if self.denied.iter().any(|r| r.contains(ip)) {
            return Err(Denial::Configured);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> RelaySelf {
        RelaySelf {
            listeners: vec!["203.0.113.10:3482".parse().unwrap()],
            ips: vec!["203.0.113.10".parse().unwrap()],
            port_range: (49152, 65535),
        }
    }

    fn check(policy: &PeerPolicy, peer: &str) -> Result<(), Denial> {
        policy.check(peer.parse().unwrap(), &relay())
    }

    #[test]
    fn default_classes_are_denied() {
        let p = PeerPolicy::default();
        for (peer, class) in [
            ("0.0.0.0:1", "unspecified"),
            ("127.0.0.1:9", "loopback"),
            ("10.1.2.3:9", "private"),
            ("172.31.255.1:9", "private"),
            ("192.168.1.1:9", "private"),
            ("100.64.2.2:9", "private"),
            ("169.254.1.1:9", "link_local"),
            ("239.1.1.1:9", "multicast"),
            ("255.255.255.255:9", "broadcast"),
            ("[::]:9", "unspecified"),
            ("[::1]:9", "loopback"),
            ("[fd00::1]:9", "private"),
            ("[fe80::1]:9", "link_local"),
            ("[ff02::1]:9", "multicast"),
            ("[::ffff:10.0.0.1]:9", "private"),
        ] {
            assert_eq!(check(&p, peer), Err(Denial::Class(class)), "{peer}");
        }
        for ok in [
            "198.51.100.20:4000",
            "172.32.0.1:9",
            "[2a00::1]:9",
            "8.8.8.8:53",
        ] {
            assert_eq!(check(&p, ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn own_addresses_only_in_the_relay_range() {
        let p = PeerPolicy::default();
        assert_eq!(check(&p, "203.0.113.10:50000"), Ok(()));
        assert_eq!(check(&p, "203.0.113.10:9090"), Err(Denial::RelayAddress));
        assert_eq!(check(&p, "203.0.113.10:3482"), Err(Denial::RelayListener));
        assert_eq!(check(&p, "198.51.100.1:0"), Err(Denial::PortZero));
        let ip = |s: &str| p.check_ip(s.parse().unwrap(), &relay());
        assert_eq!(ip("203.0.113.10"), Ok(()));
        assert_eq!(ip("198.51.100.1"), Ok(()));
        assert_eq!(ip("10.0.0.1"), Err(Denial::Class("private")));
    }

    #[test]
    fn explicit_allows_and_denials() {
        let p = PeerPolicy {
            allowed: parse_ranges("10.0.0.0/8, 203.0.113.10").unwrap(),
            denied: parse_ranges("198.51.100.0/24").unwrap(),
            allow_loopback: true,
        };
        assert_eq!(check(&p, "10.9.9.9:1"), Ok(()));
        assert_eq!(check(&p, "127.0.0.1:1"), Ok(()));
        assert_eq!(check(&p, "[::1]:1"), Ok(()));
        assert_eq!(check(&p, "203.0.113.10:9090"), Ok(()));
        assert_eq!(check(&p, "203.0.113.10:3482"), Err(Denial::RelayListener));
        assert_eq!(check(&p, "198.51.100.7:1"), Err(Denial::Configured));
        assert_eq!(check(&p, "192.168.0.1:1"), Err(Denial::Class("private")));
    }

    #[test]
    fn ranges_parse_and_print() {
        let r: IpRange = "10.1.2.3/8".parse().unwrap();
        assert_eq!(r.to_string(), "10.0.0.0/8");
        assert!(r.contains("10.200.0.1".parse().unwrap()));
        assert!(!r.contains("11.0.0.1".parse().unwrap()));
        assert_eq!("::1".parse::<IpRange>().unwrap().to_string(), "::1/128");
        assert!(
            "0.0.0.0/0"
                .parse::<IpRange>()
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "x/8", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
        assert!(parse_ranges("10.0.0.0/8,,bad").is_err());
    }
}
