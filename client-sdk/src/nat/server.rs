//! [`StunServer`]: a STUN server as a user writes it (`HOST[:PORT]`), and its
//! resolution to the one address a given socket can reach.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use super::NatReportError;

/// The STUN port (RFC 8489 §18.4), used when none is given.
pub const DEFAULT_STUN_PORT: u16 = 3478;

/// A STUN server named by host (DNS name or IP address) and port.
///
/// Parses `HOST`, `HOST:PORT`, `IP`, `IP:PORT`, `IPv6` and `[IPv6]:PORT`; the port
/// defaults to [`DEFAULT_STUN_PORT`].
///
/// ```
/// use quickp2p::nat::StunServer;
/// let server: StunServer = "stun.example.net".parse()?;
/// assert_eq!(server.port(), 3478);
/// assert_eq!("[2001:db8::1]:3479".parse::<StunServer>()?.to_string(), "[2001:db8::1]:3479");
/// # Ok::<(), quickp2p::nat::InvalidStunServer>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StunServer {
    host: String,
    port: u16,
}

/// A STUN server string that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid STUN server {input:?}: {problem} (expected HOST, HOST:PORT, IP:PORT or [IPv6]:PORT)"
)]
pub struct InvalidStunServer {
    input: String,
    problem: &'static str,
}

impl StunServer {
    /// A server from its parts.
    pub fn new(host: impl Into<String>, port: u16) -> StunServer {
        StunServer {
            host: host.into(),
            port,
        }
    }

    /// The host: a DNS name or an IP address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The UDP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Resolves the server to one address that a socket bound at `local` can
    /// send to: an IPv4 address for an IPv4 socket; for an IPv6 socket, the first
    /// address (a dual-stack socket reaches both families).
    pub async fn resolve_for(&self, local: SocketAddr) -> Result<SocketAddr, NatReportError> {
        let usable = |addr: &SocketAddr| local.is_ipv6() || addr.is_ipv4();
        let candidates: Vec<SocketAddr> = match self.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, self.port)],
            Err(_) => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|source| NatReportError::Resolve {
                    host: self.host.clone(),
                    source,
                })?
                .collect(),
        };
        candidates
            .into_iter()
            .find(usable)
            .ok_or_else(|| NatReportError::NoUsableAddress {
                host: self.host.clone(),
                family: if local.is_ipv4() { "IPv4" } else { "IPv6" },
                local,
            })
    }
}

impl fmt::Display for StunServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for StunServer {
    type Err = InvalidStunServer;

    fn from_str(input: &str) -> Result<StunServer, InvalidStunServer> {
        let invalid = |problem| InvalidStunServer {
            input: input.to_owned(),
            problem,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(invalid("empty"));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(StunServer::new(addr.ip().to_string(), addr.port()));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(StunServer::new(ip.to_string(), DEFAULT_STUN_PORT));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or(invalid("missing ']'"))?;
            let ip: IpAddr = inner.parse().map_err(|_| invalid("bad IPv6 address"))?;
            let port = match after {
                "" => DEFAULT_STUN_PORT,
                _ => parse_port(after.strip_prefix(':').ok_or(invalid("junk after ']'"))?)
                    .ok_or(invalid("bad port"))?,
            };
            (ip.to_string(), port)
        } else {
            let (host, port) = match s.rsplit_once(':') {
                Some((host, port)) => (host, parse_port(port).ok_or(invalid("bad port"))?),
                None => (s, DEFAULT_STUN_PORT),
            };
            let valid_host = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
            if !valid_host {
                return Err(invalid("bad host name"));
            }
            (host.to_owned(), port)
        };
        Ok(StunServer::new(host, port))
    }
}

fn parse_port(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|port| *port != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let cases = [
            ("stun.example.net", "stun.example.net", 3478),
            ("stun.example.net:3479", "stun.example.net", 3479),
            ("192.0.2.1", "192.0.2.1", 3478),
            ("192.0.2.1:5000", "192.0.2.1", 5000),
            ("::1", "::1", 3478),
            ("[::1]", "::1", 3478),
            ("[2001:db8::1]:3479", "2001:db8::1", 3479),
            (" localhost ", "localhost", 3478),
        ];
        for (input, host, port) in cases {
            let server: StunServer = input.parse().unwrap();
            assert_eq!((server.host(), server.port()), (host, port), "{input}");
        }
        for bad in [
            "",
            "host:",
            "host:0",
            "host:99999",
            "host:x",
            "[::1",
            "[::1]x",
            "a b",
            "2001:db8::1::5",
        ] {
            assert!(bad.parse::<StunServer>().is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn literal_addresses_resolve_by_family() {
        let v4_socket: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let v6_socket: SocketAddr = "[::]:0".parse().unwrap();
        let v6_server: StunServer = "[2001:db8::1]:3478".parse().unwrap();
        assert!(matches!(
            v6_server.resolve_for(v4_socket).await,
            Err(NatReportError::NoUsableAddress { .. })
        ));
        assert_eq!(
            v6_server.resolve_for(v6_socket).await.unwrap(),
            "[2001:db8::1]:3478".parse().unwrap()
        );
        let local = StunServer::new("localhost", 3478);
        assert_eq!(
            local.resolve_for(v4_socket).await.unwrap(),
            "127.0.0.1:3478".parse().unwrap()
        );
    }
}
