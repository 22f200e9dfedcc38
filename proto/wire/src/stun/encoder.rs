//! The STUN encoders, writing into a caller's `Vec<u8>`:
//!
//! * [`MessageEncoder`] streams attributes one call at a time and keeps the header
//!   length current, so MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT can be computed
//!   over what is already written.
//! * [`MessageBuilder`] describes a whole message up front (attributes borrowed from
//!   a slice, then optional integrity and fingerprint), knows its exact
//!   [`encoded_len`](MessageBuilder::encoded_len) before writing, and encodes in one
//!   call.
//!
//! Both refuse, before writing anything, what a receiver would reject or ignore:
//! oversized values, more than [`MAX_ATTRIBUTES`] attributes, attributes after an
//! integrity attribute, anything after FINGERPRINT.

use super::attribute::{Attribute, AttributeType, is_valid_sha256_len, pad};
use super::error::EncodeError;
use super::header::{HEADER_LEN, MAGIC_COOKIE, TransactionId, padded};
use super::integrity::{self, SHA1_MAC_LEN, SHA256_MAC_LEN};
use super::message::MAX_ATTRIBUTES;
use super::method::MessageType;

/// The largest body the 16-bit length field can announce that is also a multiple of 4.
const MAX_BODY_LEN: usize = 0xFFFC;

/// Where a streaming encoder is in the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stage {
    sha1: bool,
    sha256: bool,
    fingerprint: bool,
}

/// Streams a STUN message into a `Vec<u8>`, appending after whatever the vector
/// already holds.
///
/// ```
/// use quickp2p_wire::stun::{Attribute, MessageEncoder, MessageType, TransactionId};
///
/// let mut buf = Vec::new();
/// let mut encoder = MessageEncoder::new(&mut buf, MessageType::BINDING_REQUEST, TransactionId::new([7; 12]));
/// encoder.append(&Attribute::Software("quickp2p"))?;
/// encoder.append_message_integrity(b"password")?;
/// encoder.append_fingerprint()?;
/// let len = encoder.finish();
/// assert_eq!(len, buf.len());
/// # Ok::<(), quickp2p_wire::stun::EncodeError>(())
/// ```
#[derive(Debug)]
pub struct MessageEncoder<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
    transaction_id: TransactionId,
    padding_byte: u8,
    attributes: usize,
    stage: Stage,
}

impl<'b> MessageEncoder<'b> {
    /// Starts a message at the end of `buf` by writing its header.
    pub fn new(
        buf: &'b mut Vec<u8>,
        message_type: MessageType,
        transaction_id: TransactionId,
    ) -> MessageEncoder<'b> {
        let start = buf.len();
        buf.extend_from_slice(&message_type.to_bits().to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(transaction_id.as_bytes());
        MessageEncoder {
            buf,
            start,
            transaction_id,
            padding_byte: 0,
            attributes: 0,
            stage: Stage {
                sha1: false,
                sha256: false,
                fingerprint: false,
            },
        }
    }

    /// Sets the byte used to pad attribute values to 4 bytes (default 0). RFC 8489
    /// lets senders pad with anything; RFC 5769's vectors use 0x20.
    pub fn set_padding_byte(&mut self, byte: u8) {
        self.padding_byte = byte;
    }

    /// Bytes written so far, header included. Always a multiple of 4.
    pub fn encoded_len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The message written so far.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or(&[])
    }

    /// Checks that an attribute of `typ` whose whole TLV is `tlv_len` bytes may come
    /// next.
    fn check_next(&self, typ: AttributeType, tlv_len: usize) -> Result<(), EncodeError> {
        if self.stage.fingerprint {
            return Err(EncodeError::AfterFingerprint { typ });
        }
        let integrity_seen = self.stage.sha1 || self.stage.sha256;
        match typ {
            AttributeType::FINGERPRINT => {}
            AttributeType::MESSAGE_INTEGRITY if self.stage.sha1 => {
                return Err(EncodeError::DuplicateIntegrity { typ });
            }
            AttributeType::MESSAGE_INTEGRITY_SHA256 if self.stage.sha256 => {
                return Err(EncodeError::DuplicateIntegrity { typ });
            }
            AttributeType::MESSAGE_INTEGRITY | AttributeType::MESSAGE_INTEGRITY_SHA256 => {}
            _ if integrity_seen => return Err(EncodeError::AfterIntegrity { typ }),
            _ => {}
        }
        if self.attributes >= MAX_ATTRIBUTES {
            return Err(EncodeError::TooManyAttributes);
        }
        let body = self.encoded_len() - HEADER_LEN + tlv_len;
        if body > MAX_BODY_LEN {
            return Err(EncodeError::MessageTooLong { len: body });
        }
        Ok(())
    }

    /// Records that an attribute of `typ` was written.
    fn note(&mut self, typ: AttributeType) {
        self.attributes += 1;
        match typ {
            AttributeType::MESSAGE_INTEGRITY => self.stage.sha1 = true,
            AttributeType::MESSAGE_INTEGRITY_SHA256 => self.stage.sha256 = true,
            AttributeType::FINGERPRINT => self.stage.fingerprint = true,
            _ => {}
        }
    }

    /// Rewrites the header length so the message ends `extra` bytes after what is
    /// written now.
    fn set_length(&mut self, extra: usize) {
        let body = self.encoded_len() - HEADER_LEN + extra;
        let length = u16::try_from(body).unwrap_or(u16::MAX).to_be_bytes();
        if let Some(field) = self.buf.get_mut(self.start + 2..self.start + 4) {
            field.copy_from_slice(&length);
        }
    }

    /// Writes an attribute header.
    fn write_header(&mut self, typ: AttributeType, len: usize) {
        self.buf.extend_from_slice(&typ.value().to_be_bytes());
        let len = u16::try_from(len).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_be_bytes());
    }

    /// Appends one attribute. Integrity and fingerprint variants are written
    /// verbatim; to compute them use the `append_message_integrity*` and
    /// [`append_fingerprint`](Self::append_fingerprint) methods.
    pub fn append(&mut self, attribute: &Attribute<'_>) -> Result<(), EncodeError> {
        attribute.check_encodable()?;
        let typ = attribute.attribute_type();
        self.check_next(typ, attribute.encoded_len())?;
        let len = attribute.value_len();
        self.write_header(typ, len);
        attribute.write_value(&self.transaction_id, self.buf);
        pad(self.buf, len, self.padding_byte);
        self.note(typ);
        self.set_length(0);
        Ok(())
    }

    /// Appends MESSAGE-INTEGRITY: HMAC-SHA1 with `key` (a [`ShortTermKey`] or
    /// [`LongTermKey`]'s bytes) over the message so far.
    ///
    /// [`ShortTermKey`]: super::ShortTermKey
    /// [`LongTermKey`]: super::LongTermKey
    pub fn append_message_integrity(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        let typ = AttributeType::MESSAGE_INTEGRITY;
        self.check_next(typ, 4 + SHA1_MAC_LEN)?;
        self.set_length(4 + SHA1_MAC_LEN);
        let offset = self.encoded_len();
        let mac = integrity::compute_sha1(key, self.as_bytes(), offset).unwrap_or_default();
        self.write_header(typ, SHA1_MAC_LEN);
        self.buf.extend_from_slice(&mac);
        self.note(typ);
        Ok(())
    }

    /// Appends a full 32-byte MESSAGE-INTEGRITY-SHA256.
    pub fn append_message_integrity_sha256(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        self.append_message_integrity_sha256_truncated(key, SHA256_MAC_LEN)
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 truncated to `len` bytes, which RFC 8489
    /// §14.6 allows for 16..=32 in steps of 4 (when the peer agreed to it).
    pub fn append_message_integrity_sha256_truncated(
        &mut self,
        key: &[u8],
        len: usize,
    ) -> Result<(), EncodeError> {
        if !is_valid_sha256_len(len) {
            return Err(EncodeError::BadIntegrityLength { len });
        }
        let typ = AttributeType::MESSAGE_INTEGRITY_SHA256;
        self.check_next(typ, 4 + len)?;
        self.set_length(4 + len);
        let offset = self.encoded_len();
        let mac = integrity::compute_sha256(key, self.as_bytes(), offset, len).unwrap_or_default();
        self.write_header(typ, len);
        self.buf.extend_from_slice(mac.get(..len).unwrap_or(&mac));
        self.note(typ);
        Ok(())
    }

    /// Appends FINGERPRINT over the message so far. Nothing can follow it.
    pub fn append_fingerprint(&mut self) -> Result<(), EncodeError> {
        let typ = AttributeType::FINGERPRINT;
        self.check_next(typ, 8)?;
        self.set_length(8);
        let crc = integrity::fingerprint(self.as_bytes());
        self.write_header(typ, 4);
        self.buf.extend_from_slice(&crc.to_be_bytes());
        self.note(typ);
        Ok(())
    }

    /// Ends the message; returns its length in bytes.
    pub fn finish(self) -> usize {
        self.encoded_len()
    }
}

/// A whole STUN message described up front and encoded in one call.
///
/// ```
/// use quickp2p_wire::stun::{Attribute, MessageBuilder, MessageType, TransactionId};
///
/// let attributes = [Attribute::XorMappedAddress("192.0.2.1:32853".parse().unwrap())];
/// let builder = MessageBuilder::new(MessageType::BINDING_SUCCESS, TransactionId::new([1; 12]))
///     .attributes(&attributes)
///     .fingerprint();
/// let mut out = Vec::with_capacity(builder.encoded_len());
/// let len = builder.encode_into(&mut out)?;
/// assert_eq!(len, builder.encoded_len());
/// # Ok::<(), quickp2p_wire::stun::EncodeError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct MessageBuilder<'a> {
    message_type: MessageType,
    transaction_id: TransactionId,
    padding_byte: u8,
    attributes: &'a [Attribute<'a>],
    integrity_sha1: Option<&'a [u8]>,
    integrity_sha256: Option<(&'a [u8], usize)>,
    fingerprint: bool,
}

impl<'a> MessageBuilder<'a> {
    /// A message with no attributes.
    pub const fn new(
        message_type: MessageType,
        transaction_id: TransactionId,
    ) -> MessageBuilder<'a> {
        MessageBuilder {
            message_type,
            transaction_id,
            padding_byte: 0,
            attributes: &[],
            integrity_sha1: None,
            integrity_sha256: None,
            fingerprint: false,
        }
    }

    /// The attributes, in order, before any integrity attribute.
    pub const fn attributes(mut self, attributes: &'a [Attribute<'a>]) -> MessageBuilder<'a> {
        self.attributes = attributes;
        self
    }

    /// The byte to pad values with (default 0).
    pub const fn padding_byte(mut self, byte: u8) -> MessageBuilder<'a> {
        self.padding_byte = byte;
        self
    }

    /// Adds MESSAGE-INTEGRITY (HMAC-SHA1) with `key` after the attributes.
    pub const fn message_integrity(mut self, key: &'a [u8]) -> MessageBuilder<'a> {
        self.integrity_sha1 = Some(key);
        self
    }

    /// Adds a full MESSAGE-INTEGRITY-SHA256 with `key`, after MESSAGE-INTEGRITY if
    /// both are asked for.
    pub const fn message_integrity_sha256(mut self, key: &'a [u8]) -> MessageBuilder<'a> {
        self.integrity_sha256 = Some((key, SHA256_MAC_LEN));
        self
    }

    /// Adds MESSAGE-INTEGRITY-SHA256 truncated to `len` bytes (16..=32, step 4;
    /// checked when encoding).
    pub const fn message_integrity_sha256_truncated(
        mut self,
        key: &'a [u8],
        len: usize,
    ) -> MessageBuilder<'a> {
        self.integrity_sha256 = Some((key, len));
        self
    }

    /// Adds FINGERPRINT at the end.
    pub const fn fingerprint(mut self) -> MessageBuilder<'a> {
        self.fingerprint = true;
        self
    }

    /// Exactly how many bytes [`encode_into`](Self::encode_into) writes when it
    /// succeeds. Always a multiple of 4.
    pub fn encoded_len(&self) -> usize {
        let attributes = self
            .attributes
            .iter()
            .fold(0usize, |sum, a| sum.saturating_add(a.encoded_len()));
        let sha1 = if self.integrity_sha1.is_some() {
            4 + SHA1_MAC_LEN
        } else {
            0
        };
        let sha256 = match self.integrity_sha256 {
            Some((_, len)) => 4 + padded(len),
            None => 0,
        };
        let fingerprint = if self.fingerprint { 8 } else { 0 };
        HEADER_LEN
            .saturating_add(attributes)
            .saturating_add(sha1 + sha256 + fingerprint)
    }

    /// Appends the message to `out` and returns its length. On error `out` is left
    /// as it was.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
        let before = out.len();
        let result = self.write(out);
        if result.is_err() {
            out.truncate(before);
        }
        result
    }

    /// The message in a new vector.
    pub fn to_vec(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out)?;
        Ok(out)
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
        let mut encoder = MessageEncoder::new(out, self.message_type, self.transaction_id);
        encoder.set_padding_byte(self.padding_byte);
        for attribute in self.attributes {
            encoder.append(attribute)?;
        }
        if let Some(key) = self.integrity_sha1 {
            encoder.append_message_integrity(key)?;
        }
        if let Some((key, len)) = self.integrity_sha256 {
            encoder.append_message_integrity_sha256_truncated(key, len)?;
        }
        if self.fingerprint {
            encoder.append_fingerprint()?;
        }
        Ok(encoder.finish())
    }
}
