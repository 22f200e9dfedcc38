//! STUN attributes: their type registry ([`AttributeType`]), the typed, zero-copy
//! [`Attribute`] enum, and how each value is read from and written to the wire.
//!
//! Covered: RFC 8489 (STUN), RFC 5780 (NAT behaviour discovery), RFC 8656 (TURN) and
//! the ICE attributes of RFC 8445. Anything else decodes as [`Attribute::Unknown`],
//! keeping its type so a server can list comprehension-required ones in a 420
//! response.
//!
//! Each attribute is a type-length-value record padded to a multiple of 4 bytes:
//!
//! ```text
//! |         Type                  |            Length             |
//! |                         Value (variable)                ....
//! ```

use std::fmt;
use std::net::SocketAddr;

use super::address::{self, AddressFamily};
use super::error::{DecodeError, EncodeError};
use super::error_code::ErrorCode;
use super::header::{TransactionId, padded, read_u16};

/// The 16-bit type of a STUN attribute.
///
/// Types below 0x8000 are comprehension-required: an agent that does not know one
/// must reject the message (420). Types from 0x8000 up are comprehension-optional.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct AttributeType(u16);

impl AttributeType {
    /// MAPPED-ADDRESS (RFC 8489 §14.1).
    pub const MAPPED_ADDRESS: AttributeType = AttributeType(0x0001);
    /// CHANGE-REQUEST (RFC 5780 §7.2).
    pub const CHANGE_REQUEST: AttributeType = AttributeType(0x0003);
    /// USERNAME (RFC 8489 §14.3).
    pub const USERNAME: AttributeType = AttributeType(0x0006);
    /// MESSAGE-INTEGRITY (RFC 8489 §14.5).
    pub const MESSAGE_INTEGRITY: AttributeType = AttributeType(0x0008);
    /// ERROR-CODE (RFC 8489 §14.8).
    pub const ERROR_CODE: AttributeType = AttributeType(0x0009);
    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.9).
    pub const UNKNOWN_ATTRIBUTES: AttributeType = AttributeType(0x000A);
    /// CHANNEL-NUMBER (RFC 8656 §18.1).
    pub const CHANNEL_NUMBER: AttributeType = AttributeType(0x000C);
    /// LIFETIME (RFC 8656 §18.2).
    pub const LIFETIME: AttributeType = AttributeType(0x000D);
    /// XOR-PEER-ADDRESS (RFC 8656 §18.3).
    pub const XOR_PEER_ADDRESS: AttributeType = AttributeType(0x0012);
    /// DATA (RFC 8656 §18.4).
    pub const DATA: AttributeType = AttributeType(0x0013);
    /// REALM (RFC 8489 §14.9).
    pub const REALM: AttributeType = AttributeType(0x0014);
    /// NONCE (RFC 8489 §14.10).
    pub const NONCE: AttributeType = AttributeType(0x0015);
    /// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
    pub const XOR_RELAYED_ADDRESS: AttributeType = AttributeType(0x0016);
    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6).
    pub const REQUESTED_ADDRESS_FAMILY: AttributeType = AttributeType(0x0017);
    /// EVEN-PORT (RFC 8656 §18.7).
    pub const EVEN_PORT: AttributeType = AttributeType(0x0018);
    /// REQUESTED-TRANSPORT (RFC 8656 §18.8).
    pub const REQUESTED_TRANSPORT: AttributeType = AttributeType(0x0019);
    /// DONT-FRAGMENT (RFC 8656 §18.9).
    pub const DONT_FRAGMENT: AttributeType = AttributeType(0x001A);
    /// MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6).
    pub const MESSAGE_INTEGRITY_SHA256: AttributeType = AttributeType(0x001C);
    /// PASSWORD-ALGORITHM (RFC 8489 §14.12).
    pub const PASSWORD_ALGORITHM: AttributeType = AttributeType(0x001D);
    /// USERHASH (RFC 8489 §14.4).
    pub const USERHASH: AttributeType = AttributeType(0x001E);
    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    pub const XOR_MAPPED_ADDRESS: AttributeType = AttributeType(0x0020);
    /// RESERVATION-TOKEN (RFC 8656 §18.10).
    pub const RESERVATION_TOKEN: AttributeType = AttributeType(0x0022);
    /// PRIORITY (RFC 8445 §16.1).
    pub const PRIORITY: AttributeType = AttributeType(0x0024);
    /// USE-CANDIDATE (RFC 8445 §16.1).
    pub const USE_CANDIDATE: AttributeType = AttributeType(0x0025);
    /// PADDING (RFC 5780 §7.6).
    pub const PADDING: AttributeType = AttributeType(0x0026);
    /// RESPONSE-PORT (RFC 5780 §7.5).
    pub const RESPONSE_PORT: AttributeType = AttributeType(0x0027);
    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11).
    pub const ADDITIONAL_ADDRESS_FAMILY: AttributeType = AttributeType(0x8000);
    /// ADDRESS-ERROR-CODE (RFC 8656 §18.12).
    pub const ADDRESS_ERROR_CODE: AttributeType = AttributeType(0x8001);
    /// PASSWORD-ALGORITHMS (RFC 8489 §14.11).
    pub const PASSWORD_ALGORITHMS: AttributeType = AttributeType(0x8002);
    /// ALTERNATE-DOMAIN (RFC 8489 §14.16).
    pub const ALTERNATE_DOMAIN: AttributeType = AttributeType(0x8003);
    /// ICMP (RFC 8656 §18.13).
    pub const ICMP: AttributeType = AttributeType(0x8004);
    /// SOFTWARE (RFC 8489 §14.14).
    pub const SOFTWARE: AttributeType = AttributeType(0x8022);
    /// ALTERNATE-SERVER (RFC 8489 §14.15).
    pub const ALTERNATE_SERVER: AttributeType = AttributeType(0x8023);
    /// FINGERPRINT (RFC 8489 §14.7).
    pub const FINGERPRINT: AttributeType = AttributeType(0x8028);
    /// ICE-CONTROLLED (RFC 8445 §16.1).
    pub const ICE_CONTROLLED: AttributeType = AttributeType(0x8029);
    /// ICE-CONTROLLING (RFC 8445 §16.1).
    pub const ICE_CONTROLLING: AttributeType = AttributeType(0x802A);
    /// RESPONSE-ORIGIN (RFC 5780 §7.3).
    pub const RESPONSE_ORIGIN: AttributeType = AttributeType(0x802B);
    /// OTHER-ADDRESS (RFC 5780 §7.4).
    pub const OTHER_ADDRESS: AttributeType = AttributeType(0x802C);

    /// An attribute type from its number.
    pub const fn new(value: u16) -> AttributeType {
        AttributeType(value)
    }

    /// The type number.
    pub const fn value(self) -> u16 {
        self.0
    }

    /// Whether an agent that does not understand this type must reject the message
    /// (types 0x0000..=0x7FFF).
    pub const fn is_comprehension_required(self) -> bool {
        self.0 < 0x8000
    }

    /// Whether [`Attribute`] has a typed variant for this type.
    pub const fn is_known(self) -> bool {
        self.name().is_some()
    }

    /// The registered name, for the types this crate decodes.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0001 => "MAPPED-ADDRESS",
            0x0003 => "CHANGE-REQUEST",
            0x0006 => "USERNAME",
            0x0008 => "MESSAGE-INTEGRITY",
            0x0009 => "ERROR-CODE",
            0x000A => "UNKNOWN-ATTRIBUTES",
            0x000C => "CHANNEL-NUMBER",
            0x000D => "LIFETIME",
            0x0012 => "XOR-PEER-ADDRESS",
            0x0013 => "DATA",
            0x0014 => "REALM",
            0x0015 => "NONCE",
            0x0016 => "XOR-RELAYED-ADDRESS",
            0x0017 => "REQUESTED-ADDRESS-FAMILY",
            0x0018 => "EVEN-PORT",
            0x0019 => "REQUESTED-TRANSPORT",
            0x001A => "DONT-FRAGMENT",
            0x001C => "MESSAGE-INTEGRITY-SHA256",
            0x001D => "PASSWORD-ALGORITHM",
            0x001E => "USERHASH",
            0x0020 => "XOR-MAPPED-ADDRESS",
            0x0022 => "RESERVATION-TOKEN",
            0x0024 => "PRIORITY",
            0x0025 => "USE-CANDIDATE",
            0x0026 => "PADDING",
            0x0027 => "RESPONSE-PORT",
            0x8000 => "ADDITIONAL-ADDRESS-FAMILY",
            0x8001 => "ADDRESS-ERROR-CODE",
            0x8002 => "PASSWORD-ALGORITHMS",
            0x8003 => "ALTERNATE-DOMAIN",
            0x8004 => "ICMP",
            0x8022 => "SOFTWARE",
            0x8023 => "ALTERNATE-SERVER",
            0x8028 => "FINGERPRINT",
            0x8029 => "ICE-CONTROLLED",
            0x802A => "ICE-CONTROLLING",
            0x802B => "RESPONSE-ORIGIN",
            0x802C => "OTHER-ADDRESS",
            _ => return None,
        })
    }
}

impl From<u16> for AttributeType {
    fn from(value: u16) -> AttributeType {
        AttributeType(value)
    }
}

impl fmt::Debug for AttributeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for AttributeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{:#06x}", self.0),
        }
    }
}

/// IANA protocol number for UDP, the usual REQUESTED-TRANSPORT value.
pub const PROTOCOL_UDP: u8 = 17;
/// IANA protocol number for TCP (RFC 6062 allocations).
pub const PROTOCOL_TCP: u8 = 6;

/// The CHANGE-REQUEST flags (RFC 5780 §7.2): ask the server to answer from its
/// other IP address and/or port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ChangeRequest {
    /// Flag A: answer from the alternate IP address.
    pub change_ip: bool,
    /// Flag B: answer from the alternate port.
    pub change_port: bool,
}

impl ChangeRequest {
    const CHANGE_IP: u32 = 0x04;
    const CHANGE_PORT: u32 = 0x02;

    fn to_bits(self) -> u32 {
        let ip = if self.change_ip { Self::CHANGE_IP } else { 0 };
        let port = if self.change_port {
            Self::CHANGE_PORT
        } else {
            0
        };
        ip | port
    }

    fn from_bits(bits: u32) -> ChangeRequest {
        ChangeRequest {
            change_ip: bits & Self::CHANGE_IP != 0,
            change_port: bits & Self::CHANGE_PORT != 0,
        }
    }
}

/// An ADDRESS-ERROR-CODE value (RFC 8656 §18.12): why the server could not
/// allocate an address of one family in a dual-stack Allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddressErrorCode<'a> {
    /// The family the error is about.
    pub family: AddressFamily,
    /// The error code, 300..=699 (typically 440 or 508).
    pub code: u16,
    /// The reason phrase.
    pub reason: &'a str,
}

/// An ICMP value (RFC 8656 §18.13): the ICMP error a relay received from a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Icmp {
    /// ICMP type.
    pub icmp_type: u8,
    /// ICMP code.
    pub code: u8,
    /// Type-specific data, for example the next-hop MTU.
    pub error_data: u32,
}

/// One entry of PASSWORD-ALGORITHM(S) (RFC 8489 §14.11, §14.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PasswordAlgorithm<'a> {
    /// The algorithm number, [`PasswordAlgorithm::MD5`] or
    /// [`PasswordAlgorithm::SHA256`].
    pub algorithm: u16,
    /// Algorithm parameters (empty for both registered algorithms).
    pub parameters: &'a [u8],
}

impl PasswordAlgorithm<'static> {
    /// Algorithm 0x0001: long-term key = MD5(username ":" realm ":" password).
    pub const MD5: u16 = 0x0001;
    /// Algorithm 0x0002: long-term key = SHA-256(username ":" realm ":" password).
    pub const SHA256: u16 = 0x0002;

    /// An algorithm without parameters.
    pub const fn new(algorithm: u16) -> PasswordAlgorithm<'static> {
        PasswordAlgorithm {
            algorithm,
            parameters: &[],
        }
    }
}

impl<'a> PasswordAlgorithm<'a> {
    /// Bytes this entry takes on the wire, parameters padded to 4.
    fn wire_len(&self) -> usize {
        4usize.saturating_add(padded(self.parameters.len()))
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.algorithm.to_be_bytes());
        let len = u16::try_from(self.parameters.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(self.parameters);
        pad(out, self.parameters.len(), 0);
    }

    /// Reads one entry from the front of `bytes`, returning it and the rest.
    fn read(bytes: &'a [u8]) -> Option<(PasswordAlgorithm<'a>, &'a [u8])> {
        let algorithm = read_u16(bytes, 0)?;
        let len = usize::from(read_u16(bytes, 2)?);
        let parameters = bytes.get(4..4 + len)?;
        let next = (4 + padded(len)).min(bytes.len());
        Some((
            PasswordAlgorithm {
                algorithm,
                parameters,
            },
            bytes.get(next..)?,
        ))
    }
}

/// The list in a PASSWORD-ALGORITHMS attribute: either read from the wire or
/// given by the caller to encode.
#[derive(Clone, Copy)]
pub struct PasswordAlgorithms<'a>(AlgorithmList<'a>);

#[derive(Clone, Copy)]
enum AlgorithmList<'a> {
    /// Validated wire bytes.
    Wire(&'a [u8]),
    /// A caller's list.
    List(&'a [PasswordAlgorithm<'a>]),
}

impl<'a> PasswordAlgorithms<'a> {
    /// A list to encode.
    pub const fn new(algorithms: &'a [PasswordAlgorithm<'a>]) -> PasswordAlgorithms<'a> {
        PasswordAlgorithms(AlgorithmList::List(algorithms))
    }

    /// The algorithms, in order.
    pub fn iter(&self) -> PasswordAlgorithmsIter<'a> {
        PasswordAlgorithmsIter(self.0)
    }

    fn decode(typ: AttributeType, value: &'a [u8]) -> Result<PasswordAlgorithms<'a>, DecodeError> {
        let mut rest = value;
        while !rest.is_empty() {
            let (_, next) =
                PasswordAlgorithm::read(rest).ok_or(DecodeError::MalformedValue { typ })?;
            rest = next;
        }
        Ok(PasswordAlgorithms(AlgorithmList::Wire(value)))
    }

    fn wire_len(&self) -> usize {
        match self.0 {
            AlgorithmList::Wire(bytes) => bytes.len(),
            AlgorithmList::List(list) => list
                .iter()
                .fold(0usize, |sum, a| sum.saturating_add(a.wire_len())),
        }
    }
}

impl PartialEq for PasswordAlgorithms<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for PasswordAlgorithms<'_> {}

impl fmt::Debug for PasswordAlgorithms<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterator over [`PasswordAlgorithms`].
#[derive(Clone, Debug)]
pub struct PasswordAlgorithmsIter<'a>(AlgorithmList<'a>);

impl fmt::Debug for AlgorithmList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlgorithmList::Wire(bytes) => write!(f, "Wire({} bytes)", bytes.len()),
            AlgorithmList::List(list) => write!(f, "List({} entries)", list.len()),
        }
    }
}

impl<'a> Iterator for PasswordAlgorithmsIter<'a> {
    type Item = PasswordAlgorithm<'a>;

    fn next(&mut self) -> Option<PasswordAlgorithm<'a>> {
        match &mut self.0 {
            AlgorithmList::Wire(bytes) => {
                let (algorithm, rest) = PasswordAlgorithm::read(bytes)?;
                *bytes = rest;
                Some(algorithm)
            }
            AlgorithmList::List(list) => {
                let (first, rest) = list.split_first()?;
                *list = rest;
                Some(*first)
            }
        }
    }
}

/// The list in an UNKNOWN-ATTRIBUTES attribute: either read from the wire or given
/// by the caller (see [`Message::unknown_comprehension_required`](super::Message::unknown_comprehension_required)).
#[derive(Clone, Copy)]
pub struct UnknownAttributes<'a>(TypeList<'a>);

#[derive(Clone, Copy)]
enum TypeList<'a> {
    /// Wire bytes of even length.
    Wire(&'a [u8]),
    /// A caller's list.
    Types(&'a [AttributeType]),
}

impl<'a> UnknownAttributes<'a> {
    /// A list to encode.
    pub const fn new(types: &'a [AttributeType]) -> UnknownAttributes<'a> {
        UnknownAttributes(TypeList::Types(types))
    }

    /// How many types the list holds.
    pub const fn len(&self) -> usize {
        match self.0 {
            TypeList::Wire(bytes) => bytes.len() / 2,
            TypeList::Types(types) => types.len(),
        }
    }

    /// Whether the list is empty.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The attribute types, in order.
    pub fn iter(&self) -> UnknownAttributesIter<'a> {
        UnknownAttributesIter(self.0)
    }
}

impl PartialEq for UnknownAttributes<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for UnknownAttributes<'_> {}

impl fmt::Debug for UnknownAttributes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterator over [`UnknownAttributes`].
#[derive(Clone)]
pub struct UnknownAttributesIter<'a>(TypeList<'a>);

impl fmt::Debug for UnknownAttributesIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

impl Iterator for UnknownAttributesIter<'_> {
    type Item = AttributeType;

    fn next(&mut self) -> Option<AttributeType> {
        match &mut self.0 {
            TypeList::Wire(bytes) => {
                let (pair, rest) = bytes.split_first_chunk::<2>()?;
                *bytes = rest;
                Some(AttributeType(u16::from_be_bytes(*pair)))
            }
            TypeList::Types(types) => {
                let (first, rest) = types.split_first()?;
                *types = rest;
                Some(*first)
            }
        }
    }
}

/// A typed STUN attribute, borrowing its variable-length parts from the message.
///
/// Decoding checks each value against its definition; encoding writes exactly
/// [`Attribute::encoded_len`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Attribute<'a> {
    /// MAPPED-ADDRESS: the reflexive address, unobfuscated (RFC 3489 servers).
    MappedAddress(SocketAddr),
    /// XOR-MAPPED-ADDRESS: the reflexive address the server saw.
    XorMappedAddress(SocketAddr),
    /// USERNAME: UTF-8, fewer than 509 bytes.
    Username(&'a str),
    /// USERHASH: SHA-256(username ":" realm), see [`user_hash`](super::user_hash).
    UserHash(&'a [u8; 32]),
    /// MESSAGE-INTEGRITY: HMAC-SHA1 as found in a message. To add one, use the
    /// encoder's `message_integrity(key)`; this variant encodes its bytes verbatim.
    MessageIntegrity(&'a [u8; 20]),
    /// MESSAGE-INTEGRITY-SHA256: HMAC-SHA256, possibly truncated to 16..=32 bytes
    /// in steps of 4. Encoded verbatim like [`Attribute::MessageIntegrity`].
    MessageIntegritySha256(&'a [u8]),
    /// FINGERPRINT: CRC-32 of the message XOR 0x5354554E, encoded verbatim; use the
    /// encoder's `fingerprint()` to compute one.
    Fingerprint(u32),
    /// ERROR-CODE.
    ErrorCode(ErrorCode<'a>),
    /// REALM: UTF-8 quoted-string text.
    Realm(&'a str),
    /// NONCE: opaque bytes the client echoes back (kept as bytes so a server's
    /// non-UTF-8 nonce still round-trips).
    Nonce(&'a [u8]),
    /// PASSWORD-ALGORITHMS: the algorithms a server supports.
    PasswordAlgorithms(PasswordAlgorithms<'a>),
    /// PASSWORD-ALGORITHM: the algorithm a client chose.
    PasswordAlgorithm(PasswordAlgorithm<'a>),
    /// UNKNOWN-ATTRIBUTES: in a 420 response, the types not understood.
    UnknownAttributes(UnknownAttributes<'a>),
    /// SOFTWARE: UTF-8 description of the agent.
    Software(&'a str),
    /// ALTERNATE-SERVER: where a 300 response redirects to.
    AlternateServer(SocketAddr),
    /// ALTERNATE-DOMAIN: the TLS domain of the alternate server.
    AlternateDomain(&'a str),
    /// CHANGE-REQUEST (RFC 5780).
    ChangeRequest(ChangeRequest),
    /// RESPONSE-ORIGIN (RFC 5780): the address the response was sent from.
    ResponseOrigin(SocketAddr),
    /// OTHER-ADDRESS (RFC 5780): the server's alternate IP and port.
    OtherAddress(SocketAddr),
    /// RESPONSE-PORT (RFC 5780): the port to send the response to.
    ResponsePort(u16),
    /// PADDING (RFC 5780): filler to probe fragmentation; content ignored.
    Padding(&'a [u8]),
    /// CHANNEL-NUMBER (RFC 8656); valid channels are 0x4000..=0x4FFF, checked by
    /// [`ChannelNumber::new`](crate::channel_data::ChannelNumber::new).
    ChannelNumber(u16),
    /// LIFETIME (RFC 8656): seconds until the allocation expires.
    Lifetime(u32),
    /// XOR-PEER-ADDRESS (RFC 8656).
    XorPeerAddress(SocketAddr),
    /// DATA (RFC 8656): the application payload of Send/Data indications.
    Data(&'a [u8]),
    /// XOR-RELAYED-ADDRESS (RFC 8656): the address allocated on the relay.
    XorRelayedAddress(SocketAddr),
    /// REQUESTED-ADDRESS-FAMILY (RFC 8656).
    RequestedAddressFamily(AddressFamily),
    /// EVEN-PORT (RFC 8656); `reserve_next` is the R bit.
    EvenPort {
        /// Ask the server to reserve the next-higher port too.
        reserve_next: bool,
    },
    /// REQUESTED-TRANSPORT (RFC 8656): an IANA protocol number, see
    /// [`PROTOCOL_UDP`].
    RequestedTransport(u8),
    /// DONT-FRAGMENT (RFC 8656).
    DontFragment,
    /// RESERVATION-TOKEN (RFC 8656).
    ReservationToken(&'a [u8; 8]),
    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656).
    AdditionalAddressFamily(AddressFamily),
    /// ADDRESS-ERROR-CODE (RFC 8656).
    AddressErrorCode(AddressErrorCode<'a>),
    /// ICMP (RFC 8656).
    Icmp(Icmp),
    /// PRIORITY (RFC 8445).
    Priority(u32),
    /// USE-CANDIDATE (RFC 8445).
    UseCandidate,
    /// ICE-CONTROLLED (RFC 8445): the agent's tie-breaker.
    IceControlled(u64),
    /// ICE-CONTROLLING (RFC 8445): the agent's tie-breaker.
    IceControlling(u64),
    /// Any attribute this crate has no variant for. Encoding one whose type *is*
    /// known writes the raw value, which then decodes as that type.
    Unknown {
        /// The attribute type.
        typ: AttributeType,
        /// The raw value, without padding.
        value: &'a [u8],
    },
}

/// The text of a UTF-8 attribute.
fn text(typ: AttributeType, value: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(value).map_err(|_| DecodeError::InvalidUtf8 { typ })
}

/// A value of exactly `N` bytes.
fn exact<const N: usize>(typ: AttributeType, value: &[u8]) -> Result<&[u8; N], DecodeError> {
    value
        .try_into()
        .map_err(|_| DecodeError::BadAttributeLength {
            typ,
            len: value.len(),
        })
}

/// Class and number of an (ADDRESS-)ERROR-CODE, checked; returns the code.
fn error_code(typ: AttributeType, class_byte: u8, number: u8) -> Result<u16, DecodeError> {
    let class = class_byte & 0x07;
    if !(3..=6).contains(&class) || number > 99 {
        return Err(DecodeError::BadErrorCode { typ, class, number });
    }
    Ok(u16::from(class) * 100 + u16::from(number))
}

/// Whether a MESSAGE-INTEGRITY-SHA256 value length is allowed (RFC 8489 §14.6).
pub(crate) const fn is_valid_sha256_len(len: usize) -> bool {
    len >= 16 && len <= 32 && len.is_multiple_of(4)
}

/// Appends padding bytes to bring a value of `len` bytes to a multiple of 4.
pub(crate) fn pad(out: &mut Vec<u8>, len: usize, byte: u8) {
    let padding = padded(len) - len;
    out.extend(std::iter::repeat_n(byte, padding));
}

impl<'a> Attribute<'a> {
    /// Decodes the value of an attribute of type `typ`. `transaction_id` unmasks
    /// XOR addresses.
    pub fn decode(
        typ: AttributeType,
        value: &'a [u8],
        transaction_id: &TransactionId,
    ) -> Result<Attribute<'a>, DecodeError> {
        use AttributeType as T;
        let attribute = match typ {
            T::MAPPED_ADDRESS => Attribute::MappedAddress(address::decode(typ, value)?),
            T::XOR_MAPPED_ADDRESS => {
                Attribute::XorMappedAddress(address::decode_xor(typ, value, transaction_id)?)
            }
            T::USERNAME => Attribute::Username(text(typ, value)?),
            T::USERHASH => Attribute::UserHash(exact::<32>(typ, value)?),
            T::MESSAGE_INTEGRITY => {
                Attribute::MessageIntegrity(value.try_into().map_err(|_| {
                    DecodeError::BadIntegrityLength {
                        typ,
                        len: value.len(),
                    }
                })?)
            }
            T::MESSAGE_INTEGRITY_SHA256 => {
                if !is_valid_sha256_len(value.len()) {
                    return Err(DecodeError::BadIntegrityLength {
                        typ,
                        len: value.len(),
                    });
                }
                Attribute::MessageIntegritySha256(value)
            }
            T::FINGERPRINT => Attribute::Fingerprint(u32::from_be_bytes(*exact::<4>(typ, value)?)),
            T::ERROR_CODE => {
                let Some(([_, _, class, number], reason)) = value.split_first_chunk::<4>() else {
                    return Err(DecodeError::BadAttributeLength {
                        typ,
                        len: value.len(),
                    });
                };
                Attribute::ErrorCode(ErrorCode {
                    code: error_code(typ, *class, *number)?,
                    reason: text(typ, reason)?,
                })
            }
            T::REALM => Attribute::Realm(text(typ, value)?),
            T::NONCE => Attribute::Nonce(value),
            T::PASSWORD_ALGORITHMS => {
                Attribute::PasswordAlgorithms(PasswordAlgorithms::decode(typ, value)?)
            }
            T::PASSWORD_ALGORITHM => match PasswordAlgorithm::read(value) {
                Some((algorithm, [])) => Attribute::PasswordAlgorithm(algorithm),
                _ => return Err(DecodeError::MalformedValue { typ }),
            },
            T::UNKNOWN_ATTRIBUTES => {
                if !value.len().is_multiple_of(2) {
                    return Err(DecodeError::MalformedValue { typ });
                }
                Attribute::UnknownAttributes(UnknownAttributes(TypeList::Wire(value)))
            }
            T::SOFTWARE => Attribute::Software(text(typ, value)?),
            T::ALTERNATE_SERVER => Attribute::AlternateServer(address::decode(typ, value)?),
            T::ALTERNATE_DOMAIN => Attribute::AlternateDomain(text(typ, value)?),
            T::CHANGE_REQUEST => Attribute::ChangeRequest(ChangeRequest::from_bits(
                u32::from_be_bytes(*exact::<4>(typ, value)?),
            )),
            T::RESPONSE_ORIGIN => Attribute::ResponseOrigin(address::decode(typ, value)?),
            T::OTHER_ADDRESS => Attribute::OtherAddress(address::decode(typ, value)?),
            T::RESPONSE_PORT => match value {
                // RFC 5780 §7.5: the port followed by 2 bytes of padding; a bare
                // 2-byte value is accepted too.
                [p0, p1] | [p0, p1, _, _] => {
                    Attribute::ResponsePort(u16::from_be_bytes([*p0, *p1]))
                }
                _ => {
                    return Err(DecodeError::BadAttributeLength {
                        typ,
                        len: value.len(),
                    });
                }
            },
            T::PADDING => Attribute::Padding(value),
            T::CHANNEL_NUMBER => {
                let [c0, c1, _, _] = *exact::<4>(typ, value)?;
                Attribute::ChannelNumber(u16::from_be_bytes([c0, c1]))
            }
            T::LIFETIME => Attribute::Lifetime(u32::from_be_bytes(*exact::<4>(typ, value)?)),
            T::XOR_PEER_ADDRESS => {
                Attribute::XorPeerAddress(address::decode_xor(typ, value, transaction_id)?)
            }
            T::DATA => Attribute::Data(value),
            T::XOR_RELAYED_ADDRESS => {
                Attribute::XorRelayedAddress(address::decode_xor(typ, value, transaction_id)?)
            }
            T::REQUESTED_ADDRESS_FAMILY => {
                Attribute::RequestedAddressFamily(family(typ, exact::<4>(typ, value)?[0])?)
            }
            T::EVEN_PORT => match value {
                // one byte by definition; a value padded into 4 bytes is tolerated
                [flags] | [flags, _, _, _] => Attribute::EvenPort {
                    reserve_next: flags & 0x80 != 0,
                },
                _ => {
                    return Err(DecodeError::BadAttributeLength {
                        typ,
                        len: value.len(),
                    });
                }
            },
            T::REQUESTED_TRANSPORT => Attribute::RequestedTransport(exact::<4>(typ, value)?[0]),
            T::DONT_FRAGMENT => {
                exact::<0>(typ, value)?;
                Attribute::DontFragment
            }
            T::RESERVATION_TOKEN => Attribute::ReservationToken(exact::<8>(typ, value)?),
            T::ADDITIONAL_ADDRESS_FAMILY => {
                Attribute::AdditionalAddressFamily(family(typ, exact::<4>(typ, value)?[0])?)
            }
            T::ADDRESS_ERROR_CODE => {
                let Some(([fam, _, class, number], reason)) = value.split_first_chunk::<4>() else {
                    return Err(DecodeError::BadAttributeLength {
                        typ,
                        len: value.len(),
                    });
                };
                Attribute::AddressErrorCode(AddressErrorCode {
                    family: family(typ, *fam)?,
                    code: error_code(typ, *class, *number)?,
                    reason: text(typ, reason)?,
                })
            }
            T::ICMP => {
                let [_, _, icmp_type, code, d0, d1, d2, d3] = *exact::<8>(typ, value)?;
                Attribute::Icmp(Icmp {
                    icmp_type,
                    code,
                    error_data: u32::from_be_bytes([d0, d1, d2, d3]),
                })
            }
            T::PRIORITY => Attribute::Priority(u32::from_be_bytes(*exact::<4>(typ, value)?)),
            T::USE_CANDIDATE => {
                exact::<0>(typ, value)?;
                Attribute::UseCandidate
            }
            T::ICE_CONTROLLED => {
                Attribute::IceControlled(u64::from_be_bytes(*exact::<8>(typ, value)?))
            }
            T::ICE_CONTROLLING => {
                Attribute::IceControlling(u64::from_be_bytes(*exact::<8>(typ, value)?))
            }
            _ => Attribute::Unknown { typ, value },
        };
        Ok(attribute)
    }

    /// The attribute's type.
    pub const fn attribute_type(&self) -> AttributeType {
        use AttributeType as T;
        match self {
            Attribute::MappedAddress(_) => T::MAPPED_ADDRESS,
            Attribute::XorMappedAddress(_) => T::XOR_MAPPED_ADDRESS,
            Attribute::Username(_) => T::USERNAME,
            Attribute::UserHash(_) => T::USERHASH,
            Attribute::MessageIntegrity(_) => T::MESSAGE_INTEGRITY,
            Attribute::MessageIntegritySha256(_) => T::MESSAGE_INTEGRITY_SHA256,
            Attribute::Fingerprint(_) => T::FINGERPRINT,
            Attribute::ErrorCode(_) => T::ERROR_CODE,
            Attribute::Realm(_) => T::REALM,
            Attribute::Nonce(_) => T::NONCE,
            Attribute::PasswordAlgorithms(_) => T::PASSWORD_ALGORITHMS,
            Attribute::PasswordAlgorithm(_) => T::PASSWORD_ALGORITHM,
            Attribute::UnknownAttributes(_) => T::UNKNOWN_ATTRIBUTES,
            Attribute::Software(_) => T::SOFTWARE,
            Attribute::AlternateServer(_) => T::ALTERNATE_SERVER,
            Attribute::AlternateDomain(_) => T::ALTERNATE_DOMAIN,
            Attribute::ChangeRequest(_) => T::CHANGE_REQUEST,
            Attribute::ResponseOrigin(_) => T::RESPONSE_ORIGIN,
            Attribute::OtherAddress(_) => T::OTHER_ADDRESS,
            Attribute::ResponsePort(_) => T::RESPONSE_PORT,
            Attribute::Padding(_) => T::PADDING,
            Attribute::ChannelNumber(_) => T::CHANNEL_NUMBER,
            Attribute::Lifetime(_) => T::LIFETIME,
            Attribute::XorPeerAddress(_) => T::XOR_PEER_ADDRESS,
            Attribute::Data(_) => T::DATA,
            Attribute::XorRelayedAddress(_) => T::XOR_RELAYED_ADDRESS,
            Attribute::RequestedAddressFamily(_) => T::REQUESTED_ADDRESS_FAMILY,
            Attribute::EvenPort { .. } => T::EVEN_PORT,
            Attribute::RequestedTransport(_) => T::REQUESTED_TRANSPORT,
            Attribute::DontFragment => T::DONT_FRAGMENT,
            Attribute::ReservationToken(_) => T::RESERVATION_TOKEN,
            Attribute::AdditionalAddressFamily(_) => T::ADDITIONAL_ADDRESS_FAMILY,
            Attribute::AddressErrorCode(_) => T::ADDRESS_ERROR_CODE,
            Attribute::Icmp(_) => T::ICMP,
            Attribute::Priority(_) => T::PRIORITY,
            Attribute::UseCandidate => T::USE_CANDIDATE,
            Attribute::IceControlled(_) => T::ICE_CONTROLLED,
            Attribute::IceControlling(_) => T::ICE_CONTROLLING,
            Attribute::Unknown { typ, .. } => *typ,
        }
    }

    /// Length of the value on the wire, without the 4-byte header and padding.
    pub fn value_len(&self) -> usize {
        match self {
            Attribute::MappedAddress(a)
            | Attribute::XorMappedAddress(a)
            | Attribute::AlternateServer(a)
            | Attribute::ResponseOrigin(a)
            | Attribute::OtherAddress(a)
            | Attribute::XorPeerAddress(a)
            | Attribute::XorRelayedAddress(a) => address::value_len(a),
            Attribute::Username(s)
            | Attribute::Realm(s)
            | Attribute::Software(s)
            | Attribute::AlternateDomain(s) => s.len(),
            Attribute::Nonce(b)
            | Attribute::Padding(b)
            | Attribute::Data(b)
            | Attribute::MessageIntegritySha256(b)
            | Attribute::Unknown { value: b, .. } => b.len(),
            Attribute::UserHash(_) => 32,
            Attribute::MessageIntegrity(_) => 20,
            Attribute::ErrorCode(e) => 4usize.saturating_add(e.reason.len()),
            Attribute::AddressErrorCode(e) => 4usize.saturating_add(e.reason.len()),
            Attribute::PasswordAlgorithms(list) => list.wire_len(),
            Attribute::PasswordAlgorithm(a) => a.wire_len(),
            Attribute::UnknownAttributes(list) => list.len().saturating_mul(2),
            Attribute::EvenPort { .. } => 1,
            Attribute::DontFragment | Attribute::UseCandidate => 0,
            Attribute::ReservationToken(_)
            | Attribute::Icmp(_)
            | Attribute::IceControlled(_)
            | Attribute::IceControlling(_) => 8,
            Attribute::Fingerprint(_)
            | Attribute::ChangeRequest(_)
            | Attribute::ResponsePort(_)
            | Attribute::ChannelNumber(_)
            | Attribute::Lifetime(_)
            | Attribute::RequestedAddressFamily(_)
            | Attribute::RequestedTransport(_)
            | Attribute::AdditionalAddressFamily(_)
            | Attribute::Priority(_) => 4,
        }
    }

    /// Bytes the whole attribute takes on the wire: 4-byte header, value, padding
    /// to a multiple of 4. Exact.
    pub fn encoded_len(&self) -> usize {
        4usize.saturating_add(padded(self.value_len()))
    }

    /// Checks that the attribute can be encoded, before any byte is written.
    pub(crate) fn check_encodable(&self) -> Result<(), EncodeError> {
        let typ = self.attribute_type();
        let len = self.value_len();
        if len > usize::from(u16::MAX) {
            return Err(EncodeError::AttributeTooLong { typ, len });
        }
        match self {
            Attribute::ErrorCode(e) if !e.is_valid() => {
                Err(EncodeError::InvalidErrorCode { code: e.code })
            }
            Attribute::AddressErrorCode(e) if !(300..=699).contains(&e.code) => {
                Err(EncodeError::InvalidErrorCode { code: e.code })
            }
            Attribute::MessageIntegritySha256(mac) if !is_valid_sha256_len(mac.len()) => {
                Err(EncodeError::BadIntegrityLength { len: mac.len() })
            }
            Attribute::PasswordAlgorithm(a) if a.parameters.len() > usize::from(u16::MAX) => {
                Err(EncodeError::AttributeTooLong { typ, len })
            }
            Attribute::PasswordAlgorithms(list)
                if list
                    .iter()
                    .any(|a| a.parameters.len() > usize::from(u16::MAX)) =>
            {
                Err(EncodeError::AttributeTooLong { typ, len })
            }
            _ => Ok(()),
        }
    }

    /// Appends the value (no header, no padding). Call [`Attribute::check_encodable`]
    /// first.
    pub(crate) fn write_value(&self, transaction_id: &TransactionId, out: &mut Vec<u8>) {
        match self {
            Attribute::MappedAddress(a)
            | Attribute::AlternateServer(a)
            | Attribute::ResponseOrigin(a)
            | Attribute::OtherAddress(a) => address::write(a, out),
            Attribute::XorMappedAddress(a)
            | Attribute::XorPeerAddress(a)
            | Attribute::XorRelayedAddress(a) => address::write_xor(a, transaction_id, out),
            Attribute::Username(s)
            | Attribute::Realm(s)
            | Attribute::Software(s)
            | Attribute::AlternateDomain(s) => out.extend_from_slice(s.as_bytes()),
            Attribute::Nonce(b)
            | Attribute::Padding(b)
            | Attribute::Data(b)
            | Attribute::MessageIntegritySha256(b)
            | Attribute::Unknown { value: b, .. } => out.extend_from_slice(b),
            Attribute::UserHash(h) => out.extend_from_slice(&h[..]),
            Attribute::MessageIntegrity(mac) => out.extend_from_slice(&mac[..]),
            Attribute::ReservationToken(token) => out.extend_from_slice(&token[..]),
            Attribute::Fingerprint(v) | Attribute::Lifetime(v) | Attribute::Priority(v) => {
                out.extend_from_slice(&v.to_be_bytes())
            }
            Attribute::ErrorCode(e) => {
                out.extend_from_slice(&[0, 0, e.class(), e.number()]);
                out.extend_from_slice(e.reason.as_bytes());
            }
            Attribute::AddressErrorCode(e) => {
                let code = ErrorCode::with_reason(e.code, e.reason);
                out.extend_from_slice(&[e.family.to_byte(), 0, code.class(), code.number()]);
                out.extend_from_slice(e.reason.as_bytes());
            }
            Attribute::PasswordAlgorithms(list) => match list.0 {
                // as received, so the length stays what `value_len` said
                AlgorithmList::Wire(bytes) => out.extend_from_slice(bytes),
                AlgorithmList::List(algorithms) => {
                    for algorithm in algorithms {
                        algorithm.write(out);
                    }
                }
            },
            Attribute::PasswordAlgorithm(a) => a.write(out),
            Attribute::UnknownAttributes(list) => {
                for typ in list.iter() {
                    out.extend_from_slice(&typ.0.to_be_bytes());
                }
            }
            Attribute::ChangeRequest(c) => out.extend_from_slice(&c.to_bits().to_be_bytes()),
            Attribute::ResponsePort(port) | Attribute::ChannelNumber(port) => {
                out.extend_from_slice(&port.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            Attribute::RequestedAddressFamily(f) | Attribute::AdditionalAddressFamily(f) => {
                out.extend_from_slice(&[f.to_byte(), 0, 0, 0])
            }
            Attribute::EvenPort { reserve_next } => out.push(if *reserve_next { 0x80 } else { 0 }),
            Attribute::RequestedTransport(protocol) => out.extend_from_slice(&[*protocol, 0, 0, 0]),
            Attribute::DontFragment | Attribute::UseCandidate => {}
            Attribute::Icmp(icmp) => {
                out.extend_from_slice(&[0, 0, icmp.icmp_type, icmp.code]);
                out.extend_from_slice(&icmp.error_data.to_be_bytes());
            }
            Attribute::IceControlled(v) | Attribute::IceControlling(v) => {
                out.extend_from_slice(&v.to_be_bytes())
            }
        }
    }
}

/// A family byte of REQUESTED-/ADDITIONAL-ADDRESS-FAMILY or ADDRESS-ERROR-CODE.
fn family(typ: AttributeType, byte: u8) -> Result<AddressFamily, DecodeError> {
    AddressFamily::from_byte(byte).ok_or(DecodeError::BadAddressFamily { typ, family: byte })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: TransactionId = TransactionId::new([1; 12]);

    fn encode(attribute: &Attribute<'_>) -> Vec<u8> {
        attribute.check_encodable().unwrap();
        let mut out = Vec::new();
        attribute.write_value(&TXID, &mut out);
        assert_eq!(out.len(), attribute.value_len());
        out
    }

    #[test]
    fn fixed_values_have_rfc_layouts() {
        let algorithms = [
            PasswordAlgorithm::new(PasswordAlgorithm::MD5),
            PasswordAlgorithm {
                algorithm: PasswordAlgorithm::SHA256,
                parameters: b"abc",
            },
        ];
        let types = [AttributeType::new(0x7777), AttributeType::new(0x0002)];
        let cases: Vec<(Attribute<'_>, Vec<u8>)> = vec![
            (
                Attribute::ChangeRequest(ChangeRequest {
                    change_ip: true,
                    change_port: true,
                }),
                vec![0, 0, 0, 6],
            ),
            (
                Attribute::ChangeRequest(ChangeRequest {
                    change_ip: false,
                    change_port: true,
                }),
                vec![0, 0, 0, 2],
            ),
            (Attribute::ResponsePort(0x1234), vec![0x12, 0x34, 0, 0]),
            (Attribute::ChannelNumber(0x4001), vec![0x40, 0x01, 0, 0]),
            (Attribute::Lifetime(600), vec![0, 0, 0x02, 0x58]),
            (
                Attribute::RequestedAddressFamily(AddressFamily::V6),
                vec![2, 0, 0, 0],
            ),
            (Attribute::EvenPort { reserve_next: true }, vec![0x80]),
            (
                Attribute::RequestedTransport(PROTOCOL_UDP),
                vec![17, 0, 0, 0],
            ),
            (Attribute::DontFragment, vec![]),
            (
                Attribute::ErrorCode(ErrorCode::with_reason(438, "Stale Nonce")),
                [&[0u8, 0, 4, 38][..], b"Stale Nonce"].concat(),
            ),
            (
                Attribute::AddressErrorCode(AddressErrorCode {
                    family: AddressFamily::V6,
                    code: 440,
                    reason: "x",
                }),
                vec![2, 0, 4, 40, b'x'],
            ),
            (
                Attribute::Icmp(Icmp {
                    icmp_type: 3,
                    code: 4,
                    error_data: 1280,
                }),
                vec![0, 0, 3, 4, 0, 0, 5, 0],
            ),
            (
                Attribute::PasswordAlgorithms(PasswordAlgorithms::new(&algorithms)),
                vec![0, 1, 0, 0, 0, 2, 0, 3, b'a', b'b', b'c', 0],
            ),
            (
                Attribute::UnknownAttributes(UnknownAttributes::new(&types)),
                vec![0x77, 0x77, 0, 2],
            ),
        ];
        for (attribute, bytes) in cases {
            assert_eq!(encode(&attribute), bytes, "{attribute:?}");
            let decoded = Attribute::decode(attribute.attribute_type(), &bytes, &TXID).unwrap();
            assert_eq!(decoded, attribute);
        }
    }

    #[test]
    fn decode_errors_are_typed() {
        let t = AttributeType::ERROR_CODE;
        assert_eq!(
            Attribute::decode(t, &[0, 0, 7, 0], &TXID),
            Err(DecodeError::BadErrorCode {
                typ: t,
                class: 7,
                number: 0
            })
        );
        assert_eq!(
            Attribute::decode(t, &[0, 0, 4, 100], &TXID),
            Err(DecodeError::BadErrorCode {
                typ: t,
                class: 4,
                number: 100
            })
        );
        assert_eq!(
            Attribute::decode(t, &[0, 0, 4], &TXID),
            Err(DecodeError::BadAttributeLength { typ: t, len: 3 })
        );
        let t = AttributeType::USERNAME;
        assert_eq!(
            Attribute::decode(t, &[0xff, 0xfe], &TXID),
            Err(DecodeError::InvalidUtf8 { typ: t })
        );
        let t = AttributeType::MESSAGE_INTEGRITY_SHA256;
        for len in [0, 12, 18, 36] {
            assert_eq!(
                Attribute::decode(t, &vec![0; len], &TXID),
                Err(DecodeError::BadIntegrityLength { typ: t, len })
            );
        }
        for len in [16, 20, 24, 28, 32] {
            assert!(Attribute::decode(t, &vec![0; len], &TXID).is_ok());
        }
        let t = AttributeType::UNKNOWN_ATTRIBUTES;
        assert_eq!(
            Attribute::decode(t, &[0, 1, 0], &TXID),
            Err(DecodeError::MalformedValue { typ: t })
        );
        let t = AttributeType::PASSWORD_ALGORITHMS;
        assert_eq!(
            Attribute::decode(t, &[0, 1, 0, 8, 1], &TXID),
            Err(DecodeError::MalformedValue { typ: t })
        );
        let t = AttributeType::REQUESTED_ADDRESS_FAMILY;
        assert_eq!(
            Attribute::decode(t, &[9, 0, 0, 0], &TXID),
            Err(DecodeError::BadAddressFamily { typ: t, family: 9 })
        );
        let t = AttributeType::PRIORITY;
        assert_eq!(
            Attribute::decode(t, &[0, 0, 1], &TXID),
            Err(DecodeError::BadAttributeLength { typ: t, len: 3 })
        );
    }

    #[test]
    fn lenient_forms_are_accepted() {
        assert_eq!(
            Attribute::decode(AttributeType::RESPONSE_PORT, &[0x12, 0x34], &TXID),
            Ok(Attribute::ResponsePort(0x1234))
        );
        assert_eq!(
            Attribute::decode(AttributeType::EVEN_PORT, &[0x80, 0, 0, 0], &TXID),
            Ok(Attribute::EvenPort { reserve_next: true })
        );
        let unknown = AttributeType::new(0x7fff);
        assert_eq!(
            Attribute::decode(unknown, b"zz", &TXID),
            Ok(Attribute::Unknown {
                typ: unknown,
                value: b"zz"
            })
        );
    }

    #[test]
    fn encode_checks() {
        assert_eq!(
            Attribute::ErrorCode(ErrorCode::new(200)).check_encodable(),
            Err(EncodeError::InvalidErrorCode { code: 200 })
        );
        assert_eq!(
            Attribute::MessageIntegritySha256(&[0; 15]).check_encodable(),
            Err(EncodeError::BadIntegrityLength { len: 15 })
        );
        let big = vec![0u8; 70_000];
        assert_eq!(
            Attribute::Data(&big).check_encodable(),
            Err(EncodeError::AttributeTooLong {
                typ: AttributeType::DATA,
                len: 70_000
            })
        );
        assert_eq!(Attribute::Data(b"abcde").encoded_len(), 12);
        assert_eq!(AttributeType::new(0x8123).to_string(), "0x8123");
        assert!(AttributeType::USERNAME.is_comprehension_required());
        assert!(!AttributeType::SOFTWARE.is_comprehension_required());
    }
}
