//! The zero-copy STUN message decoder: [`Message::parse`] checks a datagram once and
//! then hands out typed attributes that borrow from it.
//!
//! Parsing checks the header, the framing of every attribute, at most
//! [`MAX_ATTRIBUTES`] attributes, that FINGERPRINT is last, and decodes every
//! attribute that counts, so a malformed known attribute fails the whole message
//! (a server answers 400). Attributes after MESSAGE-INTEGRITY or
//! MESSAGE-INTEGRITY-SHA256, other than those two and FINGERPRINT, are ignored as
//! RFC 8489 §14.5/§14.6 require: they are framed but not decoded or returned.

use super::attribute::{Attribute, AttributeType};
use super::error::{DecodeError, FingerprintError, IntegrityError};
use super::header::{HEADER_LEN, Header, TransactionId, padded, read_u16};
use super::integrity::{self, IntegrityAlgorithm};
use super::method::{MessageClass, MessageType, Method};

/// The most attributes [`Message::parse`] looks at; a message with more is refused
/// with [`DecodeError::TooManyAttributes`]. Real agents send fewer than 20.
pub const MAX_ATTRIBUTES: usize = 64;

/// A parsed STUN message, borrowing the datagram it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    bytes: &'a [u8],
    message_type: MessageType,
    transaction_id: TransactionId,
    /// Offset of the MESSAGE-INTEGRITY attribute that counts.
    integrity_sha1: Option<usize>,
    /// Offset of the MESSAGE-INTEGRITY-SHA256 attribute that counts.
    integrity_sha256: Option<usize>,
    /// Offset of FINGERPRINT.
    fingerprint: Option<usize>,
}

/// An attribute as framed on the wire, before typed decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    /// The attribute type.
    pub typ: AttributeType,
    /// The value, without padding.
    pub value: &'a [u8],
    /// Offset of the attribute header from the start of the message.
    pub offset: usize,
}

/// Iterator over the framed attributes of a message body.
#[derive(Clone, Debug)]
pub struct RawAttributes<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> RawAttributes<'a> {
    fn new(message: &'a [u8]) -> RawAttributes<'a> {
        RawAttributes {
            bytes: message,
            offset: HEADER_LEN,
        }
    }

    /// The next attribute, or the framing error that stops iteration.
    fn next_checked(&mut self) -> Option<Result<RawAttribute<'a>, DecodeError>> {
        let offset = self.offset;
        if offset >= self.bytes.len() {
            return None;
        }
        let truncated = |typ| DecodeError::TruncatedAttribute { typ, offset };
        let (Some(typ), Some(len)) = (
            read_u16(self.bytes, offset),
            read_u16(self.bytes, offset + 2),
        ) else {
            self.offset = self.bytes.len();
            return Some(Err(truncated(AttributeType::default())));
        };
        let typ = AttributeType::new(typ);
        let start = offset + 4;
        let len = usize::from(len);
        let Some(value) = self.bytes.get(start..start + len) else {
            self.offset = self.bytes.len();
            return Some(Err(truncated(typ)));
        };
        // The body length is a multiple of 4 and every attribute starts 4-aligned,
        // so a value that fits leaves room for its padding.
        self.offset = start + padded(len);
        Some(Ok(RawAttribute { typ, value, offset }))
    }
}

impl<'a> Iterator for RawAttributes<'a> {
    type Item = RawAttribute<'a>;

    /// Framed attributes; iteration stops at the first framing error (there is none
    /// in a message [`Message::parse`] accepted).
    fn next(&mut self) -> Option<RawAttribute<'a>> {
        self.next_checked()?.ok()
    }
}

impl<'a> Message<'a> {
    /// Parses and checks one STUN message that fills `bytes` exactly (one UDP
    /// datagram). Does not verify integrity or fingerprint: see
    /// [`Message::verify_integrity`] and [`Message::verify_fingerprint`].
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let header = Header::parse(bytes)?;
        let mut message = Message {
            bytes,
            message_type: header.message_type,
            transaction_id: header.transaction_id,
            integrity_sha1: None,
            integrity_sha256: None,
            fingerprint: None,
        };
        let mut raw = RawAttributes::new(bytes);
        let mut count = 0usize;
        while let Some(attribute) = raw.next_checked() {
            let attribute = attribute?;
            count += 1;
            if count > MAX_ATTRIBUTES {
                return Err(DecodeError::TooManyAttributes);
            }
            if message.fingerprint.is_some() {
                return Err(DecodeError::AttributeAfterFingerprint { typ: attribute.typ });
            }
            let counts = message.counts(&attribute);
            if counts {
                // validate the value now so iteration later cannot fail
                Attribute::decode(attribute.typ, attribute.value, &message.transaction_id)?;
                match attribute.typ {
                    AttributeType::MESSAGE_INTEGRITY => {
                        message.integrity_sha1 = Some(attribute.offset)
                    }
                    AttributeType::MESSAGE_INTEGRITY_SHA256 => {
                        message.integrity_sha256 = Some(attribute.offset)
                    }
                    AttributeType::FINGERPRINT => message.fingerprint = Some(attribute.offset),
                    _ => {}
                }
            }
        }
        Ok(message)
    }

    /// Whether an attribute is processed, given the integrity attributes seen before
    /// it: after an integrity attribute only the first MESSAGE-INTEGRITY, the first
    /// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT count.
    fn counts(&self, attribute: &RawAttribute<'_>) -> bool {
        match attribute.typ {
            AttributeType::MESSAGE_INTEGRITY => self.integrity_sha1.is_none(),
            AttributeType::MESSAGE_INTEGRITY_SHA256 => self.integrity_sha256.is_none(),
            AttributeType::FINGERPRINT => true,
            _ => self.integrity_sha1.is_none() && self.integrity_sha256.is_none(),
        }
    }

    /// Whether the attribute at `offset` is one that counts (see [`Message::parse`]).
    fn counts_at(&self, attribute: &RawAttribute<'_>) -> bool {
        match attribute.typ {
            AttributeType::MESSAGE_INTEGRITY => self.integrity_sha1 == Some(attribute.offset),
            AttributeType::MESSAGE_INTEGRITY_SHA256 => {
                self.integrity_sha256 == Some(attribute.offset)
            }
            AttributeType::FINGERPRINT => self.fingerprint == Some(attribute.offset),
            _ => {
                let first_integrity = match (self.integrity_sha1, self.integrity_sha256) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) | (None, Some(a)) => a,
                    (None, None) => usize::MAX,
                };
                attribute.offset < first_integrity
            }
        }
    }

    /// The whole message as received.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The message type (method and class).
    pub const fn message_type(&self) -> MessageType {
        self.message_type
    }

    /// The method.
    pub const fn method(&self) -> Method {
        self.message_type.method
    }

    /// The class.
    pub const fn class(&self) -> MessageClass {
        self.message_type.class
    }

    /// The transaction id.
    pub const fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    /// The attributes that count, typed, in message order: everything before the
    /// first integrity attribute, then the integrity attributes and FINGERPRINT.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            raw: RawAttributes::new(self.bytes),
            message: *self,
        }
    }

    /// Every framed attribute, including ignored ones, untyped.
    pub fn raw_attributes(&self) -> RawAttributes<'a> {
        RawAttributes::new(self.bytes)
    }

    /// The first attribute of type `typ` that counts.
    pub fn get(&self, typ: AttributeType) -> Option<Attribute<'a>> {
        self.attributes().find(|a| a.attribute_type() == typ)
    }

    /// The comprehension-required attributes this crate does not know (types below
    /// 0x8000 without a typed variant), for the UNKNOWN-ATTRIBUTES of a 420 response.
    pub fn unknown_comprehension_required(&self) -> UnknownRequired {
        let mut unknown = UnknownRequired::default();
        for attribute in self.attributes() {
            if let Attribute::Unknown { typ, .. } = attribute
                && typ.is_comprehension_required()
            {
                unknown.push(typ);
            }
        }
        unknown
    }

    /// The first raw attribute of type `typ` at `offset`, if any.
    fn raw_at(&self, offset: Option<usize>) -> Option<RawAttribute<'a>> {
        let offset = offset?;
        self.raw_attributes().find(|a| a.offset == offset)
    }

    /// Verifies MESSAGE-INTEGRITY (HMAC-SHA1) with `key`.
    pub fn verify_message_integrity(&self, key: &[u8]) -> Result<(), IntegrityError> {
        let attribute = self
            .raw_at(self.integrity_sha1)
            .ok_or(IntegrityError::Missing)?;
        if integrity::verify_sha1(key, self.bytes, attribute.offset, attribute.value) {
            Ok(())
        } else {
            Err(IntegrityError::Mismatch)
        }
    }

    /// Verifies MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256, possibly truncated) with
    /// `key`.
    pub fn verify_message_integrity_sha256(&self, key: &[u8]) -> Result<(), IntegrityError> {
        let attribute = self
            .raw_at(self.integrity_sha256)
            .ok_or(IntegrityError::Missing)?;
        if integrity::verify_sha256(key, self.bytes, attribute.offset, attribute.value) {
            Ok(())
        } else {
            Err(IntegrityError::Mismatch)
        }
    }

    /// Verifies the strongest integrity attribute present: MESSAGE-INTEGRITY-SHA256
    /// if there is one, else MESSAGE-INTEGRITY (RFC 8489 §9.1.4, §9.2.4). Returns
    /// which one was checked.
    pub fn verify_integrity(&self, key: &[u8]) -> Result<IntegrityAlgorithm, IntegrityError> {
        if self.integrity_sha256.is_some() {
            self.verify_message_integrity_sha256(key)
                .map(|()| IntegrityAlgorithm::Sha256)
        } else {
            self.verify_message_integrity(key)
                .map(|()| IntegrityAlgorithm::Sha1)
        }
    }

    /// Which integrity attributes the message carries.
    pub const fn has_integrity(&self, algorithm: IntegrityAlgorithm) -> bool {
        match algorithm {
            IntegrityAlgorithm::Sha1 => self.integrity_sha1.is_some(),
            IntegrityAlgorithm::Sha256 => self.integrity_sha256.is_some(),
        }
    }

    /// Whether the message ends with FINGERPRINT.
    pub const fn has_fingerprint(&self) -> bool {
        self.fingerprint.is_some()
    }

    /// Verifies FINGERPRINT: CRC-32 of everything before it, XOR 0x5354554E.
    pub fn verify_fingerprint(&self) -> Result<(), FingerprintError> {
        let attribute = self
            .raw_at(self.fingerprint)
            .ok_or(FingerprintError::Missing)?;
        let found = attribute
            .value
            .first_chunk::<4>()
            .map(|v| u32::from_be_bytes(*v))
            .ok_or(FingerprintError::Missing)?;
        let covered = self
            .bytes
            .get(..attribute.offset)
            .ok_or(FingerprintError::Missing)?;
        let expected = integrity::fingerprint(covered);
        if expected == found {
            Ok(())
        } else {
            Err(FingerprintError::Mismatch { expected, found })
        }
    }
}

/// Iterator over the typed attributes of a [`Message`] that count.
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    raw: RawAttributes<'a>,
    message: Message<'a>,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Attribute<'a>;

    fn next(&mut self) -> Option<Attribute<'a>> {
        loop {
            let raw = self.raw.next()?;
            if !self.message.counts_at(&raw) {
                continue;
            }
            // Message::parse decoded every attribute that counts, so this succeeds.
            if let Ok(attribute) =
                Attribute::decode(raw.typ, raw.value, &self.message.transaction_id)
            {
                return Some(attribute);
            }
        }
    }
}

/// A bounded list of attribute types (at most [`MAX_ATTRIBUTES`]), built without
/// allocating; see [`Message::unknown_comprehension_required`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownRequired {
    types: [AttributeType; MAX_ATTRIBUTES],
    len: usize,
}

impl Default for UnknownRequired {
    fn default() -> UnknownRequired {
        UnknownRequired {
            types: [AttributeType::default(); MAX_ATTRIBUTES],
            len: 0,
        }
    }
}

impl UnknownRequired {
    fn push(&mut self, typ: AttributeType) {
        if let Some(slot) = self.types.get_mut(self.len) {
            *slot = typ;
            self.len += 1;
        }
    }

    /// The types, in message order.
    pub fn as_slice(&self) -> &[AttributeType] {
        self.types.get(..self.len).unwrap_or(&[])
    }

    /// Whether there are none (then no 420 is needed).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}
