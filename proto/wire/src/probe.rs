//! Authenticated hole-punching probes: ICE-style connectivity checks (RFC 8445 §7.2) keyed with
//! the `probe_key` of a `HandshakeInstruction`.
//!
//! A probe is a STUN Binding request or success response (RFC 8489) with a short-term credential:
//!
//! * `USERNAME` = `qp1:<handshake id, lowercase hex>:<attempt>:<sender role>`, the sender role
//!   being `i` (the initiator, ICE's controlling agent) or `r` (the responder, controlled). It names
//!   the negotiation, the attempt and the direction, so a probe of another negotiation, a stale
//!   probe of an earlier attempt and a probe reflected back at its sender are all told apart and
//!   ignored. Responses carry it too (RFC 8489 allows it), with the responder's own role.
//! * requests carry `PRIORITY` (RFC 8445 §7.1.1), `ICE-CONTROLLING` from the initiator or
//!   `ICE-CONTROLLED` from the responder (the 64-bit tie-breaker, informative: roles are fixed by
//!   the instruction and must agree with the USERNAME) and, when the initiator nominates the pair,
//!   `USE-CANDIDATE` (§7.1.2);
//! * responses carry `XOR-MAPPED-ADDRESS`: the source the responder saw the request come from (the
//!   requester's reflexive or peer-reflexive address on that path);
//! * every probe ends with `MESSAGE-INTEGRITY-SHA256` (full 32-byte HMAC-SHA256 keyed with the
//!   32-byte probe key, RFC 8489 §14.6) and `FINGERPRINT` (§14.7).
//!
//! [`ProbeCodec`] holds one side's view of an attempt (id, attempt, key, own role) and encodes and
//! checks probes. [`ProbeCodec::decode`] accepts a probe only when it is a well-formed Binding
//! request or success response with a valid fingerprint, a USERNAME of this negotiation and
//! attempt sent by the *other* role, and a valid HMAC; anything else is a typed
//! [`ProbeRejection`] the caller counts. It never panics and never allocates: the STUN decoder is
//! bounded (see [`stun::MAX_ATTRIBUTES`](crate::stun::MAX_ATTRIBUTES)).

use std::fmt::{self, Write as _};
use std::net::SocketAddr;

use crate::stun::{
    Attribute, AttributeType, DecodeError, EncodeError, Message, MessageBuilder, MessageClass,
    MessageType, Method, TransactionId,
};

/// Length of a probe key (the instruction's `probe_key`).
pub const PROBE_KEY_LEN: usize = 32;
/// Longest handshake id accepted (the handshake service mints 16 bytes).
pub const MAX_HANDSHAKE_ID_LEN: usize = 32;
/// The USERNAME prefix naming this probe format and its version.
pub const USERNAME_PREFIX: &str = "qp1";
/// Longest USERNAME this format produces: prefix, 64 hex digits, a 10-digit attempt, a role and
/// three separators.
pub const MAX_USERNAME_LEN: usize = 3 + 1 + 2 * MAX_HANDSHAKE_ID_LEN + 1 + 10 + 1 + 1;

/// Which end of the negotiation sent a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeRole {
    /// The peer that asked for the tunnel; ICE's controlling agent, which nominates the path.
    Initiator,
    /// The peer that was asked; ICE's controlled agent, which confirms the nomination.
    Responder,
}

impl ProbeRole {
    /// The other role.
    pub const fn other(self) -> ProbeRole {
        match self {
            ProbeRole::Initiator => ProbeRole::Responder,
            ProbeRole::Responder => ProbeRole::Initiator,
        }
    }

    /// The one-letter tag used in the USERNAME.
    const fn tag(self) -> char {
        match self {
            ProbeRole::Initiator => 'i',
            ProbeRole::Responder => 'r',
        }
    }
}

/// A probe key of the wrong size, or a handshake id that is empty or too long.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeCodecError {
    /// The key is not [`PROBE_KEY_LEN`] bytes.
    #[error("probe key must be {PROBE_KEY_LEN} bytes, got {len}")]
    KeyLength {
        /// The length received.
        len: usize,
    },
    /// The handshake id is empty or longer than [`MAX_HANDSHAKE_ID_LEN`].
    #[error("handshake id must be 1 to {MAX_HANDSHAKE_ID_LEN} bytes, got {len}")]
    HandshakeIdLength {
        /// The length received.
        len: usize,
    },
}

/// Why [`ProbeCodec::decode`] ignored a datagram. Every variant is a datagram to count and drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeRejection {
    /// Not a well-formed STUN message.
    #[error("not a STUN message: {0}")]
    Malformed(DecodeError),
    /// STUN, but not a Binding request or success response.
    #[error("not a Binding request or success response")]
    NotAProbe,
    /// No FINGERPRINT, or a wrong one.
    #[error("missing or wrong FINGERPRINT")]
    Fingerprint,
    /// No USERNAME, or one not in this format.
    #[error("missing or foreign USERNAME")]
    Username,
    /// A probe of another negotiation.
    #[error("probe of another handshake")]
    OtherHandshake,
    /// A probe of another attempt of this negotiation.
    #[error("probe of another attempt")]
    OtherAttempt,
    /// Sent by our own role (a reflection), or role attributes that contradict the USERNAME, or
    /// USE-CANDIDATE from the responder.
    #[error("probe from the wrong role")]
    WrongRole,
    /// No MESSAGE-INTEGRITY-SHA256, or a tag that does not verify with the probe key.
    #[error("missing or invalid MESSAGE-INTEGRITY-SHA256")]
    Integrity,
    /// A success response without XOR-MAPPED-ADDRESS.
    #[error("response without XOR-MAPPED-ADDRESS")]
    NoMappedAddress,
}

/// A connectivity check to send ([`ProbeCodec::encode_request`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeRequest {
    /// The transaction id; the response echoes it.
    pub transaction_id: TransactionId,
    /// PRIORITY: the priority the pair's local candidate would have as a peer-reflexive one.
    pub priority: u32,
    /// ICE tie-breaker sent in ICE-CONTROLLING / ICE-CONTROLLED.
    pub tie_breaker: u64,
    /// USE-CANDIDATE: the initiator nominates this pair (ignored, and not sent, by the responder).
    pub nominate: bool,
}

/// An authenticated probe of this attempt from the other side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A connectivity check to answer.
    Request {
        /// Its transaction id, to echo.
        transaction_id: TransactionId,
        /// Its PRIORITY, 0 when absent.
        priority: u32,
        /// Whether it carries USE-CANDIDATE (only ever from the initiator).
        nominate: bool,
    },
    /// The answer to one of our checks.
    Response {
        /// The transaction id of our request.
        transaction_id: TransactionId,
        /// Where the other side saw our request come from.
        mapped: SocketAddr,
    },
}

/// One side's probe codec for one attempt of one negotiation.
#[derive(Clone)]
pub struct ProbeCodec {
    key: [u8; PROBE_KEY_LEN],
    handshake_id: [u8; MAX_HANDSHAKE_ID_LEN],
    handshake_id_len: usize,
    attempt: u32,
    local_role: ProbeRole,
}

impl fmt::Debug for ProbeCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeCodec")
            .field("handshake_id", &HexId(self.handshake_id()))
            .field("attempt", &self.attempt)
            .field("local_role", &self.local_role)
            .finish_non_exhaustive()
    }
}

/// Lowercase hex of a byte string.
struct HexId<'a>(&'a [u8]);

impl fmt::Display for HexId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for HexId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A USERNAME of this format in a fixed buffer (no allocation).
struct UsernameBuf {
    bytes: [u8; MAX_USERNAME_LEN],
    len: usize,
}

impl fmt::Write for UsernameBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        let slot = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl UsernameBuf {
    fn as_str(&self) -> &str {
        // only ASCII is ever written
        std::str::from_utf8(self.bytes.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

impl ProbeCodec {
    /// The codec of the side playing `local_role` in attempt `attempt` of negotiation
    /// `handshake_id`, keyed with the instruction's 32-byte `probe_key`.
    pub fn new(
        handshake_id: &[u8],
        attempt: u32,
        probe_key: &[u8],
        local_role: ProbeRole,
    ) -> Result<ProbeCodec, ProbeCodecError> {
        let key: [u8; PROBE_KEY_LEN] =
            probe_key
                .try_into()
                .map_err(|_| ProbeCodecError::KeyLength {
                    len: probe_key.len(),
                })?;
        if handshake_id.is_empty() || handshake_id.len() > MAX_HANDSHAKE_ID_LEN {
            return Err(ProbeCodecError::HandshakeIdLength {
                len: handshake_id.len(),
            });
        }
        let mut id = [0u8; MAX_HANDSHAKE_ID_LEN];
        if let Some(slot) = id.get_mut(..handshake_id.len()) {
            slot.copy_from_slice(handshake_id);
        }
        Ok(ProbeCodec {
            key,
            handshake_id: id,
            handshake_id_len: handshake_id.len(),
            attempt,
            local_role,
        })
    }

    /// The negotiation id.
    pub fn handshake_id(&self) -> &[u8] {
        self.handshake_id
            .get(..self.handshake_id_len)
            .unwrap_or_default()
    }

    /// The attempt number.
    pub const fn attempt(&self) -> u32 {
        self.attempt
    }

    /// This side's role.
    pub const fn local_role(&self) -> ProbeRole {
        self.local_role
    }

    fn username(&self, sender: ProbeRole) -> UsernameBuf {
        let mut buf = UsernameBuf {
            bytes: [0; MAX_USERNAME_LEN],
            len: 0,
        };
        // cannot fail: the buffer holds the longest username
        let _ = write!(
            buf,
            "{USERNAME_PREFIX}:{}:{}:{}",
            HexId(self.handshake_id()),
            self.attempt,
            sender.tag()
        );
        buf
    }

    /// The USERNAME our probes carry.
    pub fn local_username(&self) -> String {
        self.username(self.local_role).as_str().to_owned()
    }

    /// Appends a request probe to `out`; returns its length. On error `out` is unchanged.
    pub fn encode_request(
        &self,
        request: &ProbeRequest,
        out: &mut Vec<u8>,
    ) -> Result<usize, EncodeError> {
        let username = self.username(self.local_role);
        let role = match self.local_role {
            ProbeRole::Initiator => Attribute::IceControlling(request.tie_breaker),
            ProbeRole::Responder => Attribute::IceControlled(request.tie_breaker),
        };
        let with_nomination = [
            Attribute::Username(username.as_str()),
            Attribute::Priority(request.priority),
            role,
            Attribute::UseCandidate,
        ];
        let nominate = request.nominate && self.local_role == ProbeRole::Initiator;
        let attributes = if nominate {
            &with_nomination[..]
        } else {
            with_nomination.get(..3).unwrap_or_default()
        };
        MessageBuilder::new(MessageType::BINDING_REQUEST, request.transaction_id)
            .attributes(attributes)
            .message_integrity_sha256(&self.key)
            .fingerprint()
            .encode_into(out)
    }

    /// Appends the success response to request `transaction_id`, which arrived from `mapped`, to
    /// `out`; returns its length. On error `out` is unchanged.
    pub fn encode_response(
        &self,
        transaction_id: TransactionId,
        mapped: SocketAddr,
        out: &mut Vec<u8>,
    ) -> Result<usize, EncodeError> {
        let username = self.username(self.local_role);
        let attributes = [
            Attribute::XorMappedAddress(mapped),
            Attribute::Username(username.as_str()),
        ];
        MessageBuilder::new(MessageType::BINDING_SUCCESS, transaction_id)
            .attributes(&attributes)
            .message_integrity_sha256(&self.key)
            .fingerprint()
            .encode_into(out)
    }

    /// Checks one datagram: `Ok` only for an authenticated probe of this attempt sent by the other
    /// role.
    pub fn decode(&self, datagram: &[u8]) -> Result<Probe, ProbeRejection> {
        let message = Message::parse(datagram).map_err(ProbeRejection::Malformed)?;
        if message.method() != Method::BINDING {
            return Err(ProbeRejection::NotAProbe);
        }
        let class = message.class();
        if class != MessageClass::Request && class != MessageClass::SuccessResponse {
            return Err(ProbeRejection::NotAProbe);
        }
        if message.verify_fingerprint().is_err() {
            return Err(ProbeRejection::Fingerprint);
        }
        let Some(Attribute::Username(username)) = message.get(AttributeType::USERNAME) else {
            return Err(ProbeRejection::Username);
        };
        self.check_username(username)?;
        if message.verify_message_integrity_sha256(&self.key).is_err() {
            return Err(ProbeRejection::Integrity);
        }
        let transaction_id = message.transaction_id();
        if class == MessageClass::SuccessResponse {
            return match message.get(AttributeType::XOR_MAPPED_ADDRESS) {
                Some(Attribute::XorMappedAddress(mapped)) => Ok(Probe::Response {
                    transaction_id,
                    mapped,
                }),
                _ => Err(ProbeRejection::NoMappedAddress),
            };
        }
        let mut priority = 0;
        let mut nominate = false;
        let mut controlling = false;
        let mut controlled = false;
        for attribute in message.attributes() {
            match attribute {
                Attribute::Priority(p) => priority = p,
                Attribute::UseCandidate => nominate = true,
                Attribute::IceControlling(_) => controlling = true,
                Attribute::IceControlled(_) => controlled = true,
                _ => {}
            }
        }
        let consistent = match self.local_role.other() {
            ProbeRole::Initiator => !controlled,
            ProbeRole::Responder => !controlling && !nominate,
        };
        if !consistent {
            return Err(ProbeRejection::WrongRole);
        }
        Ok(Probe::Request {
            transaction_id,
            priority,
            nominate,
        })
    }

    /// Compares a received USERNAME with the one the other role would send.
    fn check_username(&self, username: &str) -> Result<(), ProbeRejection> {
        let mut parts = username.split(':');
        let (Some(prefix), Some(id), Some(attempt), Some(role), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ProbeRejection::Username);
        };
        if prefix != USERNAME_PREFIX {
            return Err(ProbeRejection::Username);
        }
        let mut ours = UsernameBuf {
            bytes: [0; MAX_USERNAME_LEN],
            len: 0,
        };
        let _ = write!(ours, "{}", HexId(self.handshake_id()));
        if !id.eq_ignore_ascii_case(ours.as_str()) {
            return Err(ProbeRejection::OtherHandshake);
        }
        match attempt.parse::<u32>() {
            Ok(a) if a == self.attempt => {}
            Ok(_) => return Err(ProbeRejection::OtherAttempt),
            Err(_) => return Err(ProbeRejection::Username),
        }
        let expected = self.local_role.other().tag();
        let mut chars = role.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if c == expected => Ok(()),
            (Some('i' | 'r'), None) => Err(ProbeRejection::WrongRole),
            _ => Err(ProbeRejection::Username),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ID: [u8; 16] = [0xA5; 16];
    const KEY: [u8; 32] = [7; 32];

    fn pair() -> (ProbeCodec, ProbeCodec) {
        (
            ProbeCodec::new(&ID, 1, &KEY, ProbeRole::Initiator).unwrap(),
            ProbeCodec::new(&ID, 1, &KEY, ProbeRole::Responder).unwrap(),
        )
    }

    fn request(nominate: bool) -> ProbeRequest {
        ProbeRequest {
            transaction_id: TransactionId::new([3; 12]),
            priority: 0x6E00_01FF,
            tie_breaker: 42,
            nominate,
        }
    }

    fn encode_request(codec: &ProbeCodec, nominate: bool) -> Vec<u8> {
        let mut out = Vec::new();
        codec.encode_request(&request(nominate), &mut out).unwrap();
        out
    }

    #[test]
    fn request_and_response_round_trip() {
        let (initiator, responder) = pair();
        let bytes = encode_request(&initiator, true);
        assert_eq!(
            responder.decode(&bytes),
            Ok(Probe::Request {
                transaction_id: TransactionId::new([3; 12]),
                priority: 0x6E00_01FF,
                nominate: true,
            })
        );
        let mapped: SocketAddr = "198.51.100.20:40000".parse().unwrap();
        let mut out = Vec::new();
        let len = responder
            .encode_response(TransactionId::new([3; 12]), mapped, &mut out)
            .unwrap();
        assert_eq!(len, out.len());
        assert_eq!(
            initiator.decode(&out),
            Ok(Probe::Response {
                transaction_id: TransactionId::new([3; 12]),
                mapped,
            })
        );
    }

    #[test]
    fn wire_layout_is_ice_like() {
        let (initiator, _) = pair();
        let bytes = encode_request(&initiator, true);
        let message = Message::parse(&bytes).unwrap();
        assert_eq!(message.message_type(), MessageType::BINDING_REQUEST);
        let types: Vec<AttributeType> = message.attributes().map(|a| a.attribute_type()).collect();
        assert_eq!(
            types,
            [
                AttributeType::USERNAME,
                AttributeType::PRIORITY,
                AttributeType::ICE_CONTROLLING,
                AttributeType::USE_CANDIDATE,
                AttributeType::MESSAGE_INTEGRITY_SHA256,
                AttributeType::FINGERPRINT,
            ]
        );
        assert_eq!(
            initiator.local_username(),
            format!("qp1:{}:1:i", "a5".repeat(16))
        );
        // an independent HMAC check with the key
        assert!(message.verify_message_integrity_sha256(&KEY).is_ok());
        assert!(message.verify_fingerprint().is_ok());
    }

    #[test]
    fn responder_never_nominates() {
        let (initiator, responder) = pair();
        let bytes = encode_request(&responder, true);
        let message = Message::parse(&bytes).unwrap();
        assert!(message.get(AttributeType::USE_CANDIDATE).is_none());
        assert!(matches!(
            initiator.decode(&bytes),
            Ok(Probe::Request {
                nominate: false,
                ..
            })
        ));
    }

    #[test]
    fn wrong_key_is_rejected() {
        let (_, responder) = pair();
        let forger = ProbeCodec::new(&ID, 1, &[8; 32], ProbeRole::Initiator).unwrap();
        assert_eq!(
            responder.decode(&encode_request(&forger, true)),
            Err(ProbeRejection::Integrity)
        );
    }

    #[test]
    fn other_handshake_attempt_and_role_are_rejected() {
        let (initiator, responder) = pair();
        let other_id = ProbeCodec::new(&[1; 16], 1, &KEY, ProbeRole::Initiator).unwrap();
        assert_eq!(
            responder.decode(&encode_request(&other_id, false)),
            Err(ProbeRejection::OtherHandshake)
        );
        let other_attempt = ProbeCodec::new(&ID, 2, &KEY, ProbeRole::Initiator).unwrap();
        assert_eq!(
            responder.decode(&encode_request(&other_attempt, false)),
            Err(ProbeRejection::OtherAttempt)
        );
        // our own request reflected back
        assert_eq!(
            initiator.decode(&encode_request(&initiator, false)),
            Err(ProbeRejection::WrongRole)
        );
    }

    #[test]
    fn contradicting_role_attribute_is_rejected() {
        let (initiator, responder) = pair();
        // claims to be the initiator in USERNAME but sends ICE-CONTROLLED
        let username = initiator.local_username();
        let attributes = [Attribute::Username(&username), Attribute::IceControlled(1)];
        let bytes = MessageBuilder::new(MessageType::BINDING_REQUEST, TransactionId::new([1; 12]))
            .attributes(&attributes)
            .message_integrity_sha256(&KEY)
            .fingerprint()
            .to_vec()
            .unwrap();
        assert_eq!(responder.decode(&bytes), Err(ProbeRejection::WrongRole));
    }

    #[test]
    fn tampering_and_missing_parts_are_rejected() {
        let (initiator, responder) = pair();
        let mut bytes = encode_request(&initiator, false);
        // flip the priority: fingerprint no longer matches
        if let Some(b) = bytes.get_mut(HEADER_OFFSET_OF_PRIORITY) {
            *b ^= 1;
        }
        assert_eq!(responder.decode(&bytes), Err(ProbeRejection::Fingerprint));

        let username = initiator.local_username();
        let attributes = [Attribute::Username(&username)];
        let unsigned =
            MessageBuilder::new(MessageType::BINDING_REQUEST, TransactionId::new([1; 12]))
                .attributes(&attributes)
                .fingerprint()
                .to_vec()
                .unwrap();
        assert_eq!(responder.decode(&unsigned), Err(ProbeRejection::Integrity));
        let sha1_only =
            MessageBuilder::new(MessageType::BINDING_REQUEST, TransactionId::new([1; 12]))
                .attributes(&attributes)
                .message_integrity(&KEY)
                .fingerprint()
                .to_vec()
                .unwrap();
        assert_eq!(responder.decode(&sha1_only), Err(ProbeRejection::Integrity));
        let no_fingerprint =
            MessageBuilder::new(MessageType::BINDING_REQUEST, TransactionId::new([1; 12]))
                .attributes(&attributes)
                .message_integrity_sha256(&KEY)
                .to_vec()
                .unwrap();
        assert_eq!(
            responder.decode(&no_fingerprint),
            Err(ProbeRejection::Fingerprint)
        );
        let no_username =
            MessageBuilder::new(MessageType::BINDING_REQUEST, TransactionId::new([1; 12]))
                .message_integrity_sha256(&KEY)
                .fingerprint()
                .to_vec()
                .unwrap();
        assert_eq!(
            responder.decode(&no_username),
            Err(ProbeRejection::Username)
        );
        let response_without_mapped =
            MessageBuilder::new(MessageType::BINDING_SUCCESS, TransactionId::new([1; 12]))
                .attributes(&attributes)
                .message_integrity_sha256(&KEY)
                .fingerprint()
                .to_vec()
                .unwrap();
        assert_eq!(
            responder.decode(&response_without_mapped),
            Err(ProbeRejection::NoMappedAddress)
        );
        let indication = MessageBuilder::new(
            MessageType::new(Method::BINDING, MessageClass::Indication),
            TransactionId::new([1; 12]),
        )
        .fingerprint()
        .to_vec()
        .unwrap();
        assert_eq!(
            responder.decode(&indication),
            Err(ProbeRejection::NotAProbe)
        );
        assert!(matches!(
            responder.decode(b"\x01\x02"),
            Err(ProbeRejection::Malformed(_))
        ));
        for bad in [
            "qp1",
            "qp2:aa:1:i",
            "qp1:a5:x:i",
            "qp1:a5:1:i:extra",
            "qp1:a5:1:ii",
        ] {
            assert!(responder.check_username(bad).is_err(), "{bad}");
        }
    }

    /// USERNAME starts at 20 + 4; flipping a byte of the value breaks FINGERPRINT first.
    const HEADER_OFFSET_OF_PRIORITY: usize = 30;

    #[test]
    fn codec_arguments_are_checked() {
        assert_eq!(
            ProbeCodec::new(&ID, 1, &[0; 16], ProbeRole::Initiator).unwrap_err(),
            ProbeCodecError::KeyLength { len: 16 }
        );
        assert_eq!(
            ProbeCodec::new(&[], 1, &KEY, ProbeRole::Initiator).unwrap_err(),
            ProbeCodecError::HandshakeIdLength { len: 0 }
        );
        assert!(ProbeCodec::new(&[0; 33], 1, &KEY, ProbeRole::Initiator).is_err());
        let longest = ProbeCodec::new(&[0xFF; 32], u32::MAX, &KEY, ProbeRole::Responder).unwrap();
        assert_eq!(longest.local_username().len(), MAX_USERNAME_LEN);
        assert!(!format!("{longest:?}").contains("key: "));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let (initiator, responder) = pair();
            let _ = initiator.decode(&bytes);
            let _ = responder.decode(&bytes);
        }

        #[test]
        fn round_trip(
            id in proptest::collection::vec(any::<u8>(), 1..=32),
            attempt in any::<u32>(),
            key in proptest::array::uniform32(any::<u8>()),
            tid in proptest::array::uniform12(any::<u8>()),
            priority in any::<u32>(),
            tie_breaker in any::<u64>(),
            nominate in any::<bool>(),
            mapped in any::<(std::net::IpAddr, u16)>().prop_map(SocketAddr::from),
        ) {
            let a = ProbeCodec::new(&id, attempt, &key, ProbeRole::Initiator).unwrap();
            let b = ProbeCodec::new(&id, attempt, &key, ProbeRole::Responder).unwrap();
            let transaction_id = TransactionId::new(tid);
            let mut out = vec![0xEE];
            let len = a.encode_request(&ProbeRequest { transaction_id, priority, tie_breaker, nominate }, &mut out).unwrap();
            prop_assert_eq!(len + 1, out.len());
            prop_assert_eq!(
                b.decode(&out[1..]),
                Ok(Probe::Request { transaction_id, priority, nominate })
            );
            // the same request is refused by its sender (reflection) and by a third key
            prop_assert!(a.decode(&out[1..]).is_err());
            let mut response = Vec::new();
            b.encode_response(transaction_id, mapped, &mut response).unwrap();
            prop_assert_eq!(a.decode(&response), Ok(Probe::Response { transaction_id, mapped }));
            prop_assert!(b.decode(&response).is_err());
        }
    }
}
