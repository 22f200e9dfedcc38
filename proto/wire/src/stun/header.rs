//! The fixed 20-byte STUN header (RFC 8489 §5): type, length, magic cookie and
//! transaction id, plus the byte-reading helpers the rest of the codec uses.
//!
//! ```text
//!  0                   1                   2                   3
//! |0 0|     STUN Message Type     |         Message Length        |
//! |                         Magic Cookie                          |
//! |                     Transaction ID (96 bits)                  |
//! ```

use std::fmt;

use super::error::DecodeError;
use super::method::MessageType;

/// The magic cookie every RFC 5389/8489 message carries in bytes 4..8.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// Length of the STUN header in bytes.
pub const HEADER_LEN: usize = 20;

/// The 96-bit transaction id that ties a response to its request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TransactionId([u8; 12]);

impl TransactionId {
    /// Length of a transaction id in bytes.
    pub const LEN: usize = 12;

    /// A transaction id from its 12 bytes. Requests need 96 bits from a
    /// cryptographically random source (RFC 8489 §6); this crate has no randomness,
    /// the caller brings it.
    pub const fn new(bytes: [u8; 12]) -> TransactionId {
        TransactionId(bytes)
    }

    /// The 12 bytes of the id.
    pub const fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

impl From<[u8; 12]> for TransactionId {
    fn from(bytes: [u8; 12]) -> TransactionId {
        TransactionId(bytes)
    }
}

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransactionId({self})")
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The decoded fixed header of a STUN message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) message_type: MessageType,
    pub(crate) length: u16,
    pub(crate) transaction_id: TransactionId,
}

impl Header {
    /// Reads and checks the header of `bytes`: at least 20 bytes, top two bits zero,
    /// magic cookie, a length that is a multiple of 4 and equal to what follows.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Header, DecodeError> {
        let Some((head, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(DecodeError::TooShort { len: bytes.len() });
        };
        let [t0, t1, l0, l1, c0, c1, c2, c3, id @ ..] = *head;
        let message_type = MessageType::from_bits(u16::from_be_bytes([t0, t1]))
            .ok_or(DecodeError::NotStun { first_byte: t0 })?;
        let cookie = u32::from_be_bytes([c0, c1, c2, c3]);
        if cookie != MAGIC_COOKIE {
            return Err(DecodeError::BadMagicCookie { found: cookie });
        }
        let length = u16::from_be_bytes([l0, l1]);
        if !length.is_multiple_of(4) {
            return Err(DecodeError::LengthNotMultipleOfFour { length });
        }
        if usize::from(length) != body.len() {
            return Err(DecodeError::LengthMismatch {
                header: length,
                actual: body.len(),
            });
        }
        Ok(Header {
            message_type,
            length,
            transaction_id: TransactionId(id),
        })
    }
}

/// Rounds `len` up to the next multiple of 4 (STUN's attribute padding).
pub(crate) const fn padded(len: usize) -> usize {
    len.div_ceil(4) * 4
}

/// The big-endian `u16` at `at`, if `bytes` holds it.
pub(crate) fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let chunk = bytes.get(at..)?.first_chunk::<2>()?;
    Some(u16::from_be_bytes(*chunk))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(typ: u16, len: u16, cookie: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&typ.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&cookie.to_be_bytes());
        out.extend_from_slice(&[7; 12]);
        out
    }

    #[test]
    fn typed_errors_for_each_header_fault() {
        assert_eq!(
            Header::parse(&[0; 19]),
            Err(DecodeError::TooShort { len: 19 })
        );
        assert_eq!(
            Header::parse(&header(0x4001, 0, MAGIC_COOKIE)),
            Err(DecodeError::NotStun { first_byte: 0x40 })
        );
        assert_eq!(
            Header::parse(&header(0x0001, 0, 0x2112_A443)),
            Err(DecodeError::BadMagicCookie { found: 0x2112_A443 })
        );
        let mut odd = header(0x0001, 2, MAGIC_COOKIE);
        odd.extend_from_slice(&[0, 0]);
        assert_eq!(
            Header::parse(&odd),
            Err(DecodeError::LengthNotMultipleOfFour { length: 2 })
        );
        assert_eq!(
            Header::parse(&header(0x0001, 4, MAGIC_COOKIE)),
            Err(DecodeError::LengthMismatch {
                header: 4,
                actual: 0
            })
        );
        let ok = Header::parse(&header(0x0101, 0, MAGIC_COOKIE)).unwrap();
        assert_eq!(ok.message_type, MessageType::BINDING_SUCCESS);
        assert_eq!(ok.transaction_id, TransactionId::new([7; 12]));
    }

    #[test]
    fn padding_and_reads() {
        assert_eq!(padded(0), 0);
        assert_eq!(padded(1), 4);
        assert_eq!(padded(4), 4);
        assert_eq!(padded(5), 8);
        assert_eq!(read_u16(&[1, 2, 3], 1), Some(0x0203));
        assert_eq!(read_u16(&[1, 2, 3], 2), None);
        assert_eq!(read_u16(&[1, 2, 3], 9), None);
    }
}
