//! Conversions between protocol types and std types: [`v1::PeerId`] ↔ Ed25519 public key and its
//! hex text form, [`v1::SocketAddress`] ↔ [`std::net::SocketAddr`], [`v1::AppId`] from text.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use bytes::Bytes;

use crate::v1;

/// A peer id that is not 32 bytes, or text that is not 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidPeerId {
    /// The id (or the decoded text) has the wrong number of bytes.
    #[error("a peer id is 32 bytes, this one has {0}")]
    WrongLength(usize),
    /// The text contains a character that is not a hexadecimal digit.
    #[error("a peer id in text is 64 hexadecimal digits")]
    NotHex,
}

/// A [`v1::SocketAddress`] that does not describe a socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidSocketAddress {
    /// The IP is neither 4 nor 16 bytes.
    #[error("an IP address is 4 or 16 bytes, this one has {0}")]
    IpLength(usize),
    /// The port is above 65535.
    #[error("port {0} is out of range")]
    Port(u32),
}

impl v1::PeerId {
    /// Length of a peer id in bytes (an Ed25519 public key).
    pub const LEN: usize = 32;

    /// The peer id of an Ed25519 public key: the key itself.
    pub fn from_public_key(public_key: [u8; 32]) -> Self {
        Self {
            value: Bytes::copy_from_slice(&public_key),
        }
    }

    /// The Ed25519 public key this id names, or an error if the id is not 32 bytes.
    pub fn public_key(&self) -> Result<[u8; 32], InvalidPeerId> {
        <[u8; 32]>::try_from(self.value.as_ref())
            .map_err(|_| InvalidPeerId::WrongLength(self.value.len()))
    }

    /// Whether the id has the required 32 bytes.
    pub fn is_valid(&self) -> bool {
        self.value.len() == Self::LEN
    }
}

/// The text form: lowercase hex of the bytes (64 digits for a valid id).
impl fmt::Display for v1::PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.value.iter() {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Parses the text form: exactly 64 hex digits (either case).
impl FromStr for v1::PeerId {
    type Err = InvalidPeerId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.as_bytes();
        if !digits.len().is_multiple_of(2) {
            return Err(InvalidPeerId::NotHex);
        }
        if digits.len() != 2 * Self::LEN {
            return Err(InvalidPeerId::WrongLength(digits.len() / 2));
        }
        let mut key = [0u8; 32];
        for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Ok(Self::from_public_key(key))
    }
}

fn hex_value(digit: u8) -> Result<u8, InvalidPeerId> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        _ => Err(InvalidPeerId::NotHex),
    }
}

impl v1::AppId {
    /// An application id from its text (not validated here; servers check the documented syntax).
    pub fn new(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
        }
    }
}

impl fmt::Display for v1::AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl From<SocketAddr> for v1::SocketAddress {
    fn from(addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(ip) => Bytes::copy_from_slice(&ip.octets()),
            // IPv4 is always sent as 4 bytes, never as an IPv4-mapped IPv6 address.
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => Bytes::copy_from_slice(&v4.octets()),
                None => Bytes::copy_from_slice(&ip.octets()),
            },
        };
        Self {
            ip,
            port: u32::from(addr.port()),
        }
    }
}

impl TryFrom<&v1::SocketAddress> for SocketAddr {
    type Error = InvalidSocketAddress;

    fn try_from(addr: &v1::SocketAddress) -> Result<Self, Self::Error> {
        let port = u16::try_from(addr.port).map_err(|_| InvalidSocketAddress::Port(addr.port))?;
        let ip = if let Ok(v4) = <[u8; 4]>::try_from(addr.ip.as_ref()) {
            IpAddr::V4(Ipv4Addr::from(v4))
        } else if let Ok(v6) = <[u8; 16]>::try_from(addr.ip.as_ref()) {
            IpAddr::V6(Ipv6Addr::from(v6))
        } else {
            return Err(InvalidSocketAddress::IpLength(addr.ip.len()));
        };
        Ok(SocketAddr::new(ip, port))
    }
}

impl TryFrom<v1::SocketAddress> for SocketAddr {
    type Error = InvalidSocketAddress;

    fn try_from(addr: v1::SocketAddress) -> Result<Self, Self::Error> {
        SocketAddr::try_from(&addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_text_round_trip() {
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = i as u8 * 7;
        }
        let id = v1::PeerId::from_public_key(key);
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert!(text.starts_with("00070e15"));
        assert_eq!(text.parse::<v1::PeerId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<v1::PeerId>().unwrap(), id);
        assert_eq!(id.public_key().unwrap(), key);
    }

    #[test]
    fn peer_id_rejects_bad_text_and_lengths() {
        assert_eq!("abc".parse::<v1::PeerId>(), Err(InvalidPeerId::NotHex));
        assert_eq!(
            "abcd".parse::<v1::PeerId>(),
            Err(InvalidPeerId::WrongLength(2))
        );
        let bad = "g".repeat(64);
        assert_eq!(bad.parse::<v1::PeerId>(), Err(InvalidPeerId::NotHex));
        let short = v1::PeerId {
            value: Bytes::from_static(&[1, 2, 3]),
        };
        assert!(!short.is_valid());
        assert_eq!(short.public_key(), Err(InvalidPeerId::WrongLength(3)));
    }

    #[test]
    fn socket_address_round_trip() {
        for text in ["192.0.2.1:3478", "[2001:db8::1]:443", "127.0.0.1:1"] {
            let addr: SocketAddr = text.parse().unwrap();
            let wire = v1::SocketAddress::from(addr);
            assert_eq!(SocketAddr::try_from(&wire).unwrap(), addr);
        }
    }

    #[test]
    fn ipv4_mapped_is_sent_as_four_bytes() {
        let addr: SocketAddr = "[::ffff:192.0.2.7]:9".parse().unwrap();
        let wire = v1::SocketAddress::from(addr);
        assert_eq!(wire.ip.as_ref(), &[192, 0, 2, 7]);
    }

    #[test]
    fn socket_address_rejects_bad_values() {
        let bad_ip = v1::SocketAddress {
            ip: Bytes::from_static(&[1, 2, 3]),
            port: 1,
        };
        assert_eq!(
            SocketAddr::try_from(&bad_ip),
            Err(InvalidSocketAddress::IpLength(3))
        );
        let bad_port = v1::SocketAddress {
            ip: Bytes::from_static(&[1, 2, 3, 4]),
            port: 70_000,
        };
        assert_eq!(
            SocketAddr::try_from(bad_port),
            Err(InvalidSocketAddress::Port(70_000))
        );
    }
}
