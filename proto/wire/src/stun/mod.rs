//! STUN messages (RFC 8489) with the attributes of NAT behaviour discovery
//! (RFC 5780), TURN (RFC 8656) and ICE (RFC 8445).
//!
//! * Decoding: [`Message::parse`] borrows a datagram, checks it, and yields typed
//!   [`Attribute`]s; [`Message::verify_integrity`] and
//!   [`Message::verify_fingerprint`] check the checksums.
//! * Encoding: [`MessageBuilder`] (whole message, exact `encoded_len`) or
//!   [`MessageEncoder`] (streaming), both writing into a caller's `Vec<u8>`.
//! * Credentials: [`ShortTermKey`], [`LongTermKey`], [`user_hash`].
//!
//! ```
//! use quickp2p_wire::stun::{Attribute, Message, MessageBuilder, MessageType, ShortTermKey, TransactionId};
//!
//! let key = ShortTermKey::new("secret");
//! let request = MessageBuilder::new(MessageType::BINDING_REQUEST, TransactionId::new([9; 12]))
//!     .attributes(&[Attribute::Username("alice:bob")])
//!     .message_integrity(key.as_bytes())
//!     .fingerprint()
//!     .to_vec()?;
//!
//! let message = Message::parse(&request)?;
//! message.verify_fingerprint()?;
//! message.verify_integrity(key.as_bytes())?;
//! assert_eq!(message.get(quickp2p_wire::stun::AttributeType::USERNAME), Some(Attribute::Username("alice:bob")));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod address;
mod attribute;
mod encoder;
mod error;
mod error_code;
mod header;
mod integrity;
mod message;
mod method;

pub use address::AddressFamily;
pub use attribute::{
    AddressErrorCode, Attribute, AttributeType, ChangeRequest, Icmp, PROTOCOL_TCP, PROTOCOL_UDP,
    PasswordAlgorithm, PasswordAlgorithms, PasswordAlgorithmsIter, UnknownAttributes,
    UnknownAttributesIter,
};
pub use encoder::{MessageBuilder, MessageEncoder};
pub use error::{DecodeError, EncodeError, FingerprintError, IntegrityError};
pub use error_code::{ErrorCode, default_reason};
pub use header::{HEADER_LEN, MAGIC_COOKIE, TransactionId};
pub use integrity::{
    FINGERPRINT_XOR, IntegrityAlgorithm, LongTermKey, SHA1_MAC_LEN, SHA256_MAC_LEN, ShortTermKey,
    fingerprint, user_hash,
};
pub use message::{
    Attributes, MAX_ATTRIBUTES, Message, RawAttribute, RawAttributes, UnknownRequired,
};
pub use method::{MessageClass, MessageType, Method};

#[cfg(test)]
mod tests;
