//! The address value shared by MAPPED-ADDRESS-style attributes (RFC 8489 §14.1) and
//! its XOR-obfuscated form (§14.2), used by XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS and
//! XOR-RELAYED-ADDRESS.
//!
//! ```text
//! |0 0 0 0 0 0 0 0|    Family     |           Port                |
//! |                 Address (32 bits or 128 bits)                 |
//! ```
//!
//! In the XOR form the port is XORed with the top 16 bits of the magic cookie, an
//! IPv4 address with the cookie, and an IPv6 address with the cookie followed by the
//! transaction id.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::attribute::AttributeType;
use super::error::DecodeError;
use super::header::{MAGIC_COOKIE, TransactionId};

/// An address family as STUN and TURN number it (RFC 8489 §14.1, RFC 8656 §18.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// IPv4, family 0x01.
    V4,
    /// IPv6, family 0x02.
    V6,
}

impl AddressFamily {
    /// The family byte on the wire.
    pub const fn to_byte(self) -> u8 {
        match self {
            AddressFamily::V4 => 0x01,
            AddressFamily::V6 => 0x02,
        }
    }

    /// The family from its byte, if it is one of the two STUN knows.
    pub const fn from_byte(byte: u8) -> Option<AddressFamily> {
        match byte {
            0x01 => Some(AddressFamily::V4),
            0x02 => Some(AddressFamily::V6),
            _ => None,
        }
    }

    /// The family of a socket address.
    pub const fn of(addr: &SocketAddr) -> AddressFamily {
        match addr {
            SocketAddr::V4(_) => AddressFamily::V4,
            SocketAddr::V6(_) => AddressFamily::V6,
        }
    }
}

/// Length of an encoded address value: 8 bytes for IPv4, 20 for IPv6.
pub(crate) const fn value_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    }
}

/// The 16-byte XOR mask for IPv6 addresses: magic cookie then transaction id.
fn xor_mask(transaction_id: &TransactionId) -> [u8; 16] {
    let mut mask = [0u8; 16];
    let (cookie, id) = mask.split_at_mut(4);
    cookie.copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    id.copy_from_slice(transaction_id.as_bytes());
    mask
}

/// Top 16 bits of the magic cookie, the port's XOR mask.
const PORT_MASK: u16 = (MAGIC_COOKIE >> 16) as u16;

/// Decodes a plain address value (MAPPED-ADDRESS, ALTERNATE-SERVER, RESPONSE-ORIGIN,
/// OTHER-ADDRESS). The first (reserved) byte is ignored as RFC 8489 asks.
pub(crate) fn decode(typ: AttributeType, value: &[u8]) -> Result<SocketAddr, DecodeError> {
    decode_masked(typ, value, 0, [0; 16])
}

/// Decodes an XOR address value.
pub(crate) fn decode_xor(
    typ: AttributeType,
    value: &[u8],
    transaction_id: &TransactionId,
) -> Result<SocketAddr, DecodeError> {
    decode_masked(typ, value, PORT_MASK, xor_mask(transaction_id))
}

fn decode_masked(
    typ: AttributeType,
    value: &[u8],
    port_mask: u16,
    mask: [u8; 16],
) -> Result<SocketAddr, DecodeError> {
    let bad_len = DecodeError::BadAttributeLength {
        typ,
        len: value.len(),
    };
    let Some(([_reserved, family, p0, p1], address)) = value.split_first_chunk::<4>() else {
        return Err(bad_len);
    };
    let port = u16::from_be_bytes([*p0, *p1]) ^ port_mask;
    let ip = match AddressFamily::from_byte(*family) {
        Some(AddressFamily::V4) => {
            let octets: [u8; 4] = address.try_into().map_err(|_| bad_len)?;
            IpAddr::V4(Ipv4Addr::from(xor_bytes(octets, &mask)))
        }
        Some(AddressFamily::V6) => {
            let octets: [u8; 16] = address.try_into().map_err(|_| bad_len)?;
            IpAddr::V6(Ipv6Addr::from(xor_bytes(octets, &mask)))
        }
        None => {
            return Err(DecodeError::BadAddressFamily {
                typ,
                family: *family,
            });
        }
    };
    Ok(SocketAddr::new(ip, port))
}

/// XORs `bytes` with the first `N` bytes of `mask`.
fn xor_bytes<const N: usize>(mut bytes: [u8; N], mask: &[u8; 16]) -> [u8; N] {
    for (byte, m) in bytes.iter_mut().zip(mask) {
        *byte ^= m;
    }
    bytes
}

/// Appends a plain address value (reserved byte zero).
pub(crate) fn write(addr: &SocketAddr, out: &mut Vec<u8>) {
    write_masked(addr, out, 0, [0; 16]);
}

/// Appends an XOR address value.
pub(crate) fn write_xor(addr: &SocketAddr, transaction_id: &TransactionId, out: &mut Vec<u8>) {
    write_masked(addr, out, PORT_MASK, xor_mask(transaction_id));
}

fn write_masked(addr: &SocketAddr, out: &mut Vec<u8>, port_mask: u16, mask: [u8; 16]) {
    out.push(0);
    out.push(AddressFamily::of(addr).to_byte());
    out.extend_from_slice(&(addr.port() ^ port_mask).to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&xor_bytes(ip.octets(), &mask)),
        IpAddr::V6(ip) => out.extend_from_slice(&xor_bytes(ip.octets(), &mask)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: TransactionId = TransactionId::new([
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ]);

    #[test]
    fn rfc5769_xor_addresses() {
        // The XOR-MAPPED-ADDRESS values of RFC 5769 §2.2 and §2.3.
        let v4 = [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43];
        let addr = decode_xor(AttributeType::XOR_MAPPED_ADDRESS, &v4, &TXID).unwrap();
        assert_eq!(addr, "192.0.2.1:32853".parse().unwrap());
        let mut out = Vec::new();
        write_xor(&addr, &TXID, &mut out);
        assert_eq!(out, v4);

        let v6 = [
            0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
            0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        ];
        let addr = decode_xor(AttributeType::XOR_MAPPED_ADDRESS, &v6, &TXID).unwrap();
        assert_eq!(
            addr,
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap()
        );
        let mut out = Vec::new();
        write_xor(&addr, &TXID, &mut out);
        assert_eq!(out, v6);
    }

    #[test]
    fn plain_address_and_errors() {
        let typ = AttributeType::MAPPED_ADDRESS;
        let value = [0xff, 0x01, 0x12, 0x34, 10, 0, 0, 1];
        // the reserved byte is ignored
        assert_eq!(
            decode(typ, &value).unwrap(),
            "10.0.0.1:4660".parse().unwrap()
        );
        assert_eq!(
            decode(typ, &[0, 0x03, 0, 1, 10, 0, 0, 1]),
            Err(DecodeError::BadAddressFamily { typ, family: 3 })
        );
        assert_eq!(
            decode(typ, &[0, 0x02, 0, 1, 10, 0, 0, 1]),
            Err(DecodeError::BadAttributeLength { typ, len: 8 })
        );
        assert_eq!(
            decode(typ, &[0, 0x01, 0]),
            Err(DecodeError::BadAttributeLength { typ, len: 3 })
        );
    }
}
