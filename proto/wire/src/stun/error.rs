//! The error types of the STUN codec, one per operation: [`DecodeError`] for
//! [`Message::parse`](super::Message::parse), [`EncodeError`] for the encoders,
//! [`IntegrityError`] and [`FingerprintError`] for the checks on a parsed message.

use super::attribute::AttributeType;
use super::message::MAX_ATTRIBUTES;

/// Why bytes are not a well-formed STUN message.
///
/// A server answers a request that fails here with 400 (Bad Request) when it can
/// still read the header, and drops everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer than the 20 bytes of the header.
    #[error("{len} bytes is shorter than the 20-byte STUN header")]
    TooShort {
        /// How many bytes there were.
        len: usize,
    },
    /// One of the two top bits of the message is set, so it is not STUN.
    #[error("first byte {first_byte:#04x} has a top bit set: not a STUN message")]
    NotStun {
        /// The first byte of the datagram.
        first_byte: u8,
    },
    /// The magic cookie is not 0x2112A442 (an RFC 3489 message or not STUN at all).
    #[error("magic cookie is {found:#010x}, expected 0x2112a442")]
    BadMagicCookie {
        /// The four bytes found where the cookie belongs.
        found: u32,
    },
    /// The length field is not a multiple of 4.
    #[error("message length {length} is not a multiple of 4")]
    LengthNotMultipleOfFour {
        /// The length field.
        length: u16,
    },
    /// The length field disagrees with the number of bytes after the header.
    #[error("header announces {header} bytes of attributes but {actual} follow")]
    LengthMismatch {
        /// The length field.
        header: u16,
        /// The bytes actually present after the header.
        actual: usize,
    },
    /// An attribute's header or value runs past the end of the message.
    #[error("attribute {typ} at offset {offset} runs past the end of the message")]
    TruncatedAttribute {
        /// The attribute's type, or 0 when even its header was cut.
        typ: AttributeType,
        /// Offset of the attribute header from the start of the message.
        offset: usize,
    },
    /// More attributes than [`MAX_ATTRIBUTES`]; the parser stops looking.
    #[error("more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes,
    /// An attribute follows FINGERPRINT, which must be the last attribute.
    #[error("attribute {typ} follows FINGERPRINT")]
    AttributeAfterFingerprint {
        /// The attribute found after FINGERPRINT.
        typ: AttributeType,
    },
    /// A known attribute has a value length its definition does not allow.
    #[error("attribute {typ} has invalid length {len}")]
    BadAttributeLength {
        /// The attribute type.
        typ: AttributeType,
        /// The value length it carried.
        len: usize,
    },
    /// An address attribute has a family other than 0x01 (IPv4) or 0x02 (IPv6).
    #[error("attribute {typ} has unknown address family {family:#04x}")]
    BadAddressFamily {
        /// The attribute type.
        typ: AttributeType,
        /// The family byte.
        family: u8,
    },
    /// MESSAGE-INTEGRITY is not 20 bytes, or MESSAGE-INTEGRITY-SHA256 is not
    /// 16..=32 bytes in steps of 4 (RFC 8489 §14.5, §14.6).
    #[error("attribute {typ} has invalid HMAC length {len}")]
    BadIntegrityLength {
        /// Which integrity attribute.
        typ: AttributeType,
        /// The value length it carried.
        len: usize,
    },
    /// A text attribute is not UTF-8.
    #[error("attribute {typ} is not valid UTF-8")]
    InvalidUtf8 {
        /// The attribute type.
        typ: AttributeType,
    },
    /// An error code whose class is not 3..=6 or whose number is not 0..=99.
    #[error("attribute {typ} has invalid error class {class} / number {number}")]
    BadErrorCode {
        /// ERROR-CODE or ADDRESS-ERROR-CODE.
        typ: AttributeType,
        /// The class (hundreds digit).
        class: u8,
        /// The number (last two digits).
        number: u8,
    },
    /// A structured value whose inner lengths do not add up (PASSWORD-ALGORITHM(S),
    /// UNKNOWN-ATTRIBUTES with an odd length).
    #[error("attribute {typ} has a malformed value")]
    MalformedValue {
        /// The attribute type.
        typ: AttributeType,
    },
}

/// Why a message could not be encoded. The buffer is left as it was before the
/// failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// An attribute value longer than the 16-bit length field can say.
    #[error("attribute {typ} value of {len} bytes does not fit a STUN attribute")]
    AttributeTooLong {
        /// The attribute type.
        typ: AttributeType,
        /// The value length.
        len: usize,
    },
    /// The attributes would exceed the 16-bit message length.
    #[error("message body of {len} bytes does not fit the 16-bit length field")]
    MessageTooLong {
        /// The body length the message would have had.
        len: usize,
    },
    /// More than [`MAX_ATTRIBUTES`] attributes, which our own parser would refuse.
    #[error("more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes,
    /// An error code outside 300..=699.
    #[error("error code {code} is outside 300..=699")]
    InvalidErrorCode {
        /// The code.
        code: u16,
    },
    /// MESSAGE-INTEGRITY-SHA256 truncated to a length RFC 8489 §14.6 forbids, or a
    /// literal MESSAGE-INTEGRITY-SHA256 value of such a length.
    #[error("MESSAGE-INTEGRITY-SHA256 length {len} is not 16..=32 in steps of 4")]
    BadIntegrityLength {
        /// The requested length.
        len: usize,
    },
    /// An attribute other than MESSAGE-INTEGRITY(-SHA256) or FINGERPRINT after an
    /// integrity attribute: receivers would ignore it (RFC 8489 §14.5).
    #[error("attribute {typ} after an integrity attribute would be ignored")]
    AfterIntegrity {
        /// The refused attribute.
        typ: AttributeType,
    },
    /// Anything after FINGERPRINT, which must be last.
    #[error("attribute {typ} after FINGERPRINT")]
    AfterFingerprint {
        /// The refused attribute.
        typ: AttributeType,
    },
    /// The same integrity attribute twice.
    #[error("attribute {typ} is already present")]
    DuplicateIntegrity {
        /// MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256.
        typ: AttributeType,
    },
}

/// Why MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntegrityError {
    /// The message has no integrity attribute of the kind checked.
    #[error("message has no integrity attribute")]
    Missing,
    /// The HMAC does not match the key: wrong credentials or a tampered message.
    #[error("message integrity does not match")]
    Mismatch,
}

/// Why FINGERPRINT did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintError {
    /// The message has no FINGERPRINT attribute.
    #[error("message has no FINGERPRINT")]
    Missing,
    /// The CRC-32 does not match.
    #[error("FINGERPRINT is {found:#010x}, computed {expected:#010x}")]
    Mismatch {
        /// The value computed over the message.
        expected: u32,
        /// The value the message carried.
        found: u32,
    },
}
