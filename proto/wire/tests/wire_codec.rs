//! Integration tests of the public codec API: the RFC 5769 and RFC 8489 test
//! vectors byte for byte, and proptest round trips and robustness properties for
//! STUN, ChannelData and classification.

// Test helpers outside `#[test]` functions panic on purpose too.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use quickp2p_wire::stun::{
    AddressErrorCode, AddressFamily, Attribute, AttributeType, ChangeRequest, DecodeError,
    ErrorCode, FingerprintError, HEADER_LEN, Icmp, IntegrityAlgorithm, IntegrityError, LongTermKey,
    Message, MessageBuilder, MessageClass, MessageEncoder, MessageType, Method, PasswordAlgorithm,
    PasswordAlgorithms, ShortTermKey, TransactionId, UnknownAttributes, user_hash,
};
use quickp2p_wire::{
    ChannelData, ChannelDataPadding, ChannelNumber, DatagramSource, PacketKind, classify, is_stun,
};

/// Bytes from an RFC-style hex dump; `#` starts a comment.
fn hex_dump(dump: &str) -> Vec<u8> {
    let digits: String = dump
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.chars().filter(|c| c.is_ascii_hexdigit()))
        .collect();
    hex::decode(digits).expect("valid hex dump")
}

// ---------------------------------------------------------------------------
// RFC 5769 test vectors, transcribed from the RFC text.
// ---------------------------------------------------------------------------

const RFC5769_TXID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];
const RFC5769_SHORT_TERM_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";

/// RFC 5769 §2.1 Sample Request (108 bytes).
fn rfc5769_request() -> Vec<u8> {
    hex_dump(
        "
        00 01 00 58  # Request type and message length
        21 12 a4 42  # Magic cookie
        b7 e7 a7 01  # Transaction ID
        bc 34 d6 86
        fa 87 df ae
        80 22 00 10  # SOFTWARE attribute header
        53 54 55 4e  # 'STUN test client'
        20 74 65 73
        74 20 63 6c
        69 65 6e 74
        00 24 00 04  # PRIORITY attribute header
        6e 00 01 ff
        80 29 00 08  # ICE-CONTROLLED attribute header
        93 2f f9 b1
        51 26 3b 36
        00 06 00 09  # USERNAME attribute header
        65 76 74 6a  # 'evtj:h6vY' and padding (3 bytes of 0x20)
        3a 68 36 76
        59 20 20 20
        00 08 00 14  # MESSAGE-INTEGRITY attribute header
        9a ea a7 0c  # HMAC-SHA1 fingerprint
        bf d8 cb 56
        78 1e f2 b5
        b2 d3 f2 49
        c1 b5 71 a2
        80 28 00 04  # FINGERPRINT attribute header
        e5 7a 3b cf  # CRC32 fingerprint
        ",
    )
}

/// RFC 5769 §2.2 Sample IPv4 Response (80 bytes).
fn rfc5769_ipv4_response() -> Vec<u8> {
    hex_dump(
        "
        01 01 00 3c  # Response type and message length
        21 12 a4 42  # Magic cookie
        b7 e7 a7 01  # Transaction ID
        bc 34 d6 86
        fa 87 df ae
        80 22 00 0b  # SOFTWARE attribute header
        74 65 73 74  # 'test vector' and padding (0x20)
        20 76 65 63
        74 6f 72 20
        00 20 00 08  # XOR-MAPPED-ADDRESS attribute header
        00 01 a1 47  # Address family (IPv4) and xor'd mapped port number
        e1 12 a6 43  # Xor'd mapped IPv4 address
        00 08 00 14  # MESSAGE-INTEGRITY attribute header
        2b 91 f5 99  # HMAC-SHA1 fingerprint
        fd 9e 90 c3
        8c 74 89 f9
        2a f9 ba 53
        f0 6b e7 d7
        80 28 00 04  # FINGERPRINT attribute header
        c0 7d 4c 96  # CRC32 fingerprint
        ",
    )
}

/// RFC 5769 §2.3 Sample IPv6 Response (92 bytes).
fn rfc5769_ipv6_response() -> Vec<u8> {
    hex_dump(
        "
        01 01 00 48  # Response type and message length
        21 12 a4 42  # Magic cookie
        b7 e7 a7 01  # Transaction ID
        bc 34 d6 86
        fa 87 df ae
        80 22 00 0b  # SOFTWARE attribute header
        74 65 73 74  # 'test vector' and padding (0x20)
        20 76 65 63
        74 6f 72 20
        00 20 00 14  # XOR-MAPPED-ADDRESS attribute header
        00 02 a1 47  # Address family (IPv6) and xor'd mapped port number
        01 13 a9 fa  # Xor'd mapped IPv6 address
        a5 d3 f1 79
        bc 25 f4 b5
        be d2 b9 d9
        00 08 00 14  # MESSAGE-INTEGRITY attribute header
        a3 82 95 4e  # HMAC-SHA1 fingerprint
        4b e6 7b f1
        17 84 c9 7c
        82 92 c2 75
        bf e3 ed 41
        80 28 00 04  # FINGERPRINT attribute header
        c8 fb 0b 4c  # CRC32 fingerprint
        ",
    )
}

/// RFC 5769 §2.4 Sample Request with Long-Term Authentication (116 bytes).
fn rfc5769_long_term_request() -> Vec<u8> {
    hex_dump(
        "
        00 01 00 60  # Request type and message length
        21 12 a4 42  # Magic cookie
        78 ad 34 33  # Transaction ID
        c6 ad 72 c0
        29 da 41 2e
        00 06 00 12  # USERNAME attribute header
        e3 83 9e e3  # Username value (18 bytes) and padding (2 bytes)
        83 88 e3 83
        aa e3 83 83
        e3 82 af e3
        82 b9 00 00
        00 15 00 1c  # NONCE attribute header
        66 2f 2f 34  # Nonce value
        39 39 6b 39
        35 34 64 36
        4f 4c 33 34
        6f 4c 39 46
        53 54 76 79
        36 34 73 41
        00 14 00 0b  # REALM attribute header
        65 78 61 6d  # Realm value (11 bytes) and padding (1 byte)
        70 6c 65 2e
        6f 72 67 00
        00 08 00 14  # MESSAGE-INTEGRITY attribute header
        f6 70 24 65  # HMAC-SHA1 fingerprint
        6d d6 4a 3e
        02 b8 e0 71
        2e 85 c9 a2
        8c a8 96 66
        ",
    )
}

/// The RFC 5769 §2.4 / RFC 8489 B.1 username, U+30DE U+30C8 U+30EA U+30C3 U+30AF U+30B9.
const MATRIX_USER: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
/// The password "The<U+00AD>M<U+00AA>trIX" after SASLprep / OpaqueString (the soft
/// hyphen maps to nothing, U+00AA to "a"). Preparation is the caller's job.
const MATRIX_PASSWORD: &str = "TheMatrIX";
const MATRIX_REALM: &str = "example.org";

/// Re-encodes the attributes of `message` that come before its integrity
/// attribute, then adds integrity with `key` (SHA-1 or SHA-256 as the message had)
/// and a fingerprint if it had one.
fn reencode(message: &Message<'_>, key: &[u8], padding: u8) -> Vec<u8> {
    let attributes: Vec<Attribute<'_>> = message
        .attributes()
        .filter(|a| {
            !matches!(
                a,
                Attribute::MessageIntegrity(_)
                    | Attribute::MessageIntegritySha256(_)
                    | Attribute::Fingerprint(_)
            )
        })
        .collect();
    let mut builder = MessageBuilder::new(message.message_type(), message.transaction_id())
        .padding_byte(padding)
        .attributes(&attributes);
    if message.has_integrity(IntegrityAlgorithm::Sha1) {
        builder = builder.message_integrity(key);
    }
    if let Some(Attribute::MessageIntegritySha256(mac)) =
        message.get(AttributeType::MESSAGE_INTEGRITY_SHA256)
    {
        builder = builder.message_integrity_sha256_truncated(key, mac.len());
    }
    if message.has_fingerprint() {
        builder = builder.fingerprint();
    }
    let bytes = builder.to_vec().unwrap();
    assert_eq!(bytes.len(), builder.encoded_len());
    bytes
}

/// Re-encodes every attribute verbatim, MACs and fingerprint included.
fn reencode_verbatim(message: &Message<'_>, padding: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder =
        MessageEncoder::new(&mut out, message.message_type(), message.transaction_id());
    encoder.set_padding_byte(padding);
    for attribute in message.attributes() {
        encoder.append(&attribute).unwrap();
    }
    encoder.finish();
    out
}

#[test]
fn rfc5769_sample_request_vector() {
    let bytes = rfc5769_request();
    assert_eq!(bytes.len(), 108);
    let message = Message::parse(&bytes).unwrap();
    assert_eq!(message.message_type(), MessageType::BINDING_REQUEST);
    assert_eq!(message.transaction_id(), TransactionId::new(RFC5769_TXID));
    let attributes: Vec<_> = message.attributes().collect();
    assert_eq!(attributes.len(), 6);
    assert_eq!(attributes[0], Attribute::Software("STUN test client"));
    assert_eq!(attributes[1], Attribute::Priority(0x6e00_01ff));
    assert_eq!(
        attributes[2],
        Attribute::IceControlled(0x932f_f9b1_5126_3b36)
    );
    assert_eq!(attributes[3], Attribute::Username("evtj:h6vY"));
    assert!(matches!(attributes[4], Attribute::MessageIntegrity(_)));
    assert_eq!(attributes[5], Attribute::Fingerprint(0xe57a_3bcf));

    let key = ShortTermKey::new(RFC5769_SHORT_TERM_PASSWORD);
    assert_eq!(message.verify_fingerprint(), Ok(()));
    assert_eq!(
        message.verify_integrity(key.as_bytes()),
        Ok(IntegrityAlgorithm::Sha1)
    );
    assert_eq!(
        message.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBu"),
        Err(IntegrityError::Mismatch)
    );
    assert!(message.unknown_comprehension_required().is_empty());

    assert_eq!(reencode(&message, key.as_bytes(), 0x20), bytes);
    assert_eq!(reencode_verbatim(&message, 0x20), bytes);
}

#[test]
fn rfc5769_ipv4_response_vector() {
    let bytes = rfc5769_ipv4_response();
    assert_eq!(bytes.len(), 80);
    let message = Message::parse(&bytes).unwrap();
    assert_eq!(message.message_type(), MessageType::BINDING_SUCCESS);
    assert_eq!(message.transaction_id(), TransactionId::new(RFC5769_TXID));
    assert_eq!(
        message.get(AttributeType::SOFTWARE),
        Some(Attribute::Software("test vector"))
    );
    assert_eq!(
        message.get(AttributeType::XOR_MAPPED_ADDRESS),
        Some(Attribute::XorMappedAddress(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            32853
        )))
    );
    let key = ShortTermKey::new(RFC5769_SHORT_TERM_PASSWORD);
    assert_eq!(message.verify_fingerprint(), Ok(()));
    assert_eq!(
        message.verify_integrity(key.as_bytes()),
        Ok(IntegrityAlgorithm::Sha1)
    );
    assert_eq!(reencode(&message, key.as_bytes(), 0x20), bytes);
    assert_eq!(reencode_verbatim(&message, 0x20), bytes);
}

#[test]
fn rfc5769_ipv6_response_vector() {
    let bytes = rfc5769_ipv6_response();
    assert_eq!(bytes.len(), 92);
    let message = Message::parse(&bytes).unwrap();
    assert_eq!(message.message_type(), MessageType::BINDING_SUCCESS);
    let expected = SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(
            0x2001, 0xdb8, 0x1234, 0x5678, 0x11, 0x2233, 0x4455, 0x6677,
        )),
        32853,
    );
    assert_eq!(
        message.get(AttributeType::XOR_MAPPED_ADDRESS),
        Some(Attribute::XorMappedAddress(expected))
    );
    let key = ShortTermKey::new(RFC5769_SHORT_TERM_PASSWORD);
    assert_eq!(message.verify_fingerprint(), Ok(()));
    assert_eq!(
        message.verify_integrity(key.as_bytes()),
        Ok(IntegrityAlgorithm::Sha1)
    );
    assert_eq!(reencode(&message, key.as_bytes(), 0x20), bytes);
    assert_eq!(reencode_verbatim(&message, 0x20), bytes);
}

#[test]
fn rfc5769_long_term_request_vector() {
    let bytes = rfc5769_long_term_request();
    assert_eq!(bytes.len(), 116);
    let message = Message::parse(&bytes).unwrap();
    assert_eq!(message.message_type(), MessageType::BINDING_REQUEST);
    let attributes: Vec<_> = message.attributes().collect();
    assert_eq!(attributes[0], Attribute::Username(MATRIX_USER));
    assert_eq!(
        attributes[1],
        Attribute::Nonce(b"f//499k954d6OL34oL9FSTvy64sA")
    );
    assert_eq!(attributes[2], Attribute::Realm(MATRIX_REALM));
    assert!(matches!(attributes[3], Attribute::MessageIntegrity(_)));
    assert_eq!(attributes.len(), 4);
    assert_eq!(message.verify_fingerprint(), Err(FingerprintError::Missing));

    let key = LongTermKey::md5(MATRIX_USER, MATRIX_REALM, MATRIX_PASSWORD);
    assert_eq!(
        message.verify_integrity(key.as_bytes()),
        Ok(IntegrityAlgorithm::Sha1)
    );
    // Unprepared, the password gives another key: SASLprep is the caller's job.
    let unprepared = LongTermKey::md5(MATRIX_USER, MATRIX_REALM, "The\u{00AD}M\u{00AA}trIX");
    assert_eq!(
        message.verify_integrity(unprepared.as_bytes()),
        Err(IntegrityError::Mismatch)
    );
    assert_eq!(reencode(&message, key.as_bytes(), 0x00), bytes);
    assert_eq!(reencode_verbatim(&message, 0x00), bytes);
}

/// RFC 8489 Appendix B.1, as corrected by erratum 6268 (the published vector's
/// lengths and MAC are wrong): long-term credentials with USERHASH,
/// PASSWORD-ALGORITHM SHA-256 and MESSAGE-INTEGRITY-SHA256.
fn rfc8489_b1_request() -> Vec<u8> {
    hex_dump(
        "
        00 01 00 90  # Request type and message length
        21 12 a4 42  # Magic cookie
        78 ad 34 33  # Transaction ID
        c6 ad 72 c0
        29 da 41 2e
        00 1e 00 20  # USERHASH attribute header
        4a 3c f3 8f  # Userhash value (32 bytes)
        ef 69 92 bd
        a9 52 c6 78
        04 17 da 0f
        24 81 94 15
        56 9e 60 b2
        05 c4 6e 41
        40 7f 17 04
        00 15 00 29  # NONCE attribute header
        6f 62 4d 61  # Nonce value and padding (3 bytes)
        74 4a 6f 73
        32 41 41 41
        43 66 2f 2f
        34 39 39 6b
        39 35 34 64
        36 4f 4c 33
        34 6f 4c 39
        46 53 54 76
        79 36 34 73
        41 00 00 00
        00 14 00 0b  # REALM attribute header
        65 78 61 6d  # Realm value (11 bytes) and padding (1 byte)
        70 6c 65 2e
        6f 72 67 00
        00 1d 00 04  # PASSWORD-ALGORITHM attribute header
        00 02 00 00  # PASSWORD-ALGORITHM value (SHA-256, no parameters)
        00 1c 00 20  # MESSAGE-INTEGRITY-SHA256 attribute header
        b5 c7 bf 00  # HMAC-SHA256 value
        5b 6c 52 a2
        1c 51 c5 e8
        92 f8 19 24
        13 62 96 cb
        92 7c 43 14
        93 09 27 8c
        c6 51 8e 65
        ",
    )
}

#[test]
fn rfc8489_b1_request_with_sha256_and_userhash() {
    let bytes = rfc8489_b1_request();
    assert_eq!(bytes.len(), 164);
    let message = Message::parse(&bytes).unwrap();
    let hash = user_hash(MATRIX_USER, MATRIX_REALM);
    let attributes: Vec<_> = message.attributes().collect();
    assert_eq!(attributes[0], Attribute::UserHash(&hash));
    assert_eq!(
        attributes[1],
        Attribute::Nonce(b"obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA")
    );
    assert_eq!(attributes[2], Attribute::Realm(MATRIX_REALM));
    assert_eq!(
        attributes[3],
        Attribute::PasswordAlgorithm(PasswordAlgorithm::new(PasswordAlgorithm::SHA256))
    );
    assert!(matches!(attributes[4], Attribute::MessageIntegritySha256(mac) if mac.len() == 32));
    assert_eq!(attributes.len(), 5);

    let key = LongTermKey::for_algorithm(
        PasswordAlgorithm::SHA256,
        MATRIX_USER,
        MATRIX_REALM,
        MATRIX_PASSWORD,
    )
    .unwrap();
    assert_eq!(
        message.verify_integrity(key.as_bytes()),
        Ok(IntegrityAlgorithm::Sha256)
    );
    let md5 = LongTermKey::md5(MATRIX_USER, MATRIX_REALM, MATRIX_PASSWORD);
    assert_eq!(
        message.verify_integrity(md5.as_bytes()),
        Err(IntegrityError::Mismatch)
    );
    assert_eq!(
        message.verify_message_integrity(key.as_bytes()),
        Err(IntegrityError::Missing)
    );
    assert_eq!(reencode(&message, key.as_bytes(), 0x00), bytes);
    assert_eq!(reencode_verbatim(&message, 0x00), bytes);
}

#[test]
fn every_truncation_of_the_vectors_is_a_typed_error() {
    for bytes in [
        rfc5769_request(),
        rfc5769_ipv4_response(),
        rfc5769_ipv6_response(),
        rfc5769_long_term_request(),
        rfc8489_b1_request(),
    ] {
        for len in 0..bytes.len() {
            let err = Message::parse(&bytes[..len]).unwrap_err();
            if len < HEADER_LEN {
                assert_eq!(err, DecodeError::TooShort { len });
            } else {
                let header = u16::from_be_bytes([bytes[2], bytes[3]]);
                assert_eq!(
                    err,
                    DecodeError::LengthMismatch {
                        header,
                        actual: len - HEADER_LEN
                    }
                );
            }
        }
    }
}

#[test]
fn header_faults_and_checksum_faults_are_typed() {
    let good = rfc5769_request();

    let mut cookie = good.clone();
    cookie[4] = 0x22;
    assert_eq!(
        Message::parse(&cookie),
        Err(DecodeError::BadMagicCookie { found: 0x2212_a442 })
    );

    let mut length = good.clone();
    length[3] = 0x5c; // 92 announced, 88 present
    assert_eq!(
        Message::parse(&length),
        Err(DecodeError::LengthMismatch {
            header: 0x5c,
            actual: 0x58
        })
    );
    let mut unaligned = good.clone();
    unaligned[3] = 0x57;
    assert_eq!(
        Message::parse(&unaligned),
        Err(DecodeError::LengthNotMultipleOfFour { length: 0x57 })
    );

    let mut top_bits = good.clone();
    top_bits[0] = 0x80;
    assert_eq!(
        Message::parse(&top_bits),
        Err(DecodeError::NotStun { first_byte: 0x80 })
    );

    let mut fingerprint = good.clone();
    *fingerprint.last_mut().unwrap() ^= 0xff;
    let message = Message::parse(&fingerprint).unwrap();
    assert_eq!(
        message.verify_fingerprint(),
        Err(FingerprintError::Mismatch {
            expected: 0xe57a_3bcf,
            found: 0xe57a_3b30
        })
    );
    // a broken fingerprint leaves MESSAGE-INTEGRITY, which it does not cover, valid
    let key = ShortTermKey::new(RFC5769_SHORT_TERM_PASSWORD);
    assert_eq!(
        message.verify_integrity(key.as_bytes()),
        Ok(IntegrityAlgorithm::Sha1)
    );

    let mut mac = good.clone();
    mac[84] ^= 0x01; // inside the HMAC value
    let message = Message::parse(&mac).unwrap();
    assert_eq!(
        message.verify_integrity(key.as_bytes()),
        Err(IntegrityError::Mismatch)
    );
    assert!(matches!(
        message.verify_fingerprint(),
        Err(FingerprintError::Mismatch { .. })
    ));
}

#[test]
fn sha256_integrity_round_trips_with_both_key_kinds() {
    let short = ShortTermKey::new("short-term secret");
    let long = LongTermKey::sha256("alice", "quickp2p.example", "hunter2");
    let long_md5 = LongTermKey::md5("alice", "quickp2p.example", "hunter2");
    let txid = TransactionId::new([3; 12]);
    let attributes = [
        Attribute::Username("alice"),
        Attribute::Realm("quickp2p.example"),
        Attribute::Nonce(b"nonce-123"),
        Attribute::PasswordAlgorithm(PasswordAlgorithm::new(PasswordAlgorithm::SHA256)),
        Attribute::RequestedTransport(quickp2p_wire::stun::PROTOCOL_UDP),
    ];
    for key in [short.as_bytes(), long.as_bytes(), long_md5.as_bytes()] {
        for len in [16, 20, 24, 28, 32] {
            let builder = MessageBuilder::new(
                MessageType::new(Method::ALLOCATE, MessageClass::Request),
                txid,
            )
            .attributes(&attributes)
            .message_integrity_sha256_truncated(key, len)
            .fingerprint();
            let bytes = builder.to_vec().unwrap();
            assert_eq!(bytes.len(), builder.encoded_len());
            let message = Message::parse(&bytes).unwrap();
            assert_eq!(
                message.verify_integrity(key),
                Ok(IntegrityAlgorithm::Sha256)
            );
            assert_eq!(
                message.verify_integrity(b"other"),
                Err(IntegrityError::Mismatch)
            );
            assert_eq!(message.verify_fingerprint(), Ok(()));
            assert!(matches!(
                message.get(AttributeType::MESSAGE_INTEGRITY_SHA256),
                Some(Attribute::MessageIntegritySha256(mac)) if mac.len() == len
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------

fn leak_str(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn leak_bytes(v: Vec<u8>) -> &'static [u8] {
    Box::leak(v.into_boxed_slice())
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn arb_text() -> impl Strategy<Value = &'static str> {
    ".{0,24}".prop_map(leak_str)
}

fn arb_bytes(max: usize) -> impl Strategy<Value = &'static [u8]> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(leak_bytes)
}

fn arb_family() -> impl Strategy<Value = AddressFamily> {
    prop_oneof![Just(AddressFamily::V4), Just(AddressFamily::V6)]
}

fn arb_password_algorithm() -> impl Strategy<Value = PasswordAlgorithm<'static>> {
    (any::<u16>(), arb_bytes(9)).prop_map(|(algorithm, parameters)| PasswordAlgorithm {
        algorithm,
        parameters,
    })
}

/// Every attribute except the integrity and fingerprint ones.
fn arb_plain_attribute() -> impl Strategy<Value = Attribute<'static>> {
    prop_oneof![
        arb_addr().prop_map(Attribute::MappedAddress),
        arb_addr().prop_map(Attribute::XorMappedAddress),
        arb_text().prop_map(Attribute::Username),
        any::<[u8; 32]>().prop_map(|h| Attribute::UserHash(Box::leak(Box::new(h)))),
        (300u16..700, arb_text())
            .prop_map(|(code, reason)| Attribute::ErrorCode(ErrorCode::with_reason(code, reason))),
        arb_text().prop_map(Attribute::Realm),
        arb_bytes(40).prop_map(Attribute::Nonce),
        proptest::collection::vec(arb_password_algorithm(), 0..4).prop_map(|list| {
            Attribute::PasswordAlgorithms(PasswordAlgorithms::new(Box::leak(
                list.into_boxed_slice(),
            )))
        }),
        arb_password_algorithm().prop_map(Attribute::PasswordAlgorithm),
        proptest::collection::vec(any::<u16>(), 0..6).prop_map(|types| {
            let types: Vec<AttributeType> = types.into_iter().map(AttributeType::new).collect();
            Attribute::UnknownAttributes(UnknownAttributes::new(Box::leak(
                types.into_boxed_slice(),
            )))
        }),
        arb_text().prop_map(Attribute::Software),
        arb_addr().prop_map(Attribute::AlternateServer),
        arb_text().prop_map(Attribute::AlternateDomain),
        (any::<bool>(), any::<bool>()).prop_map(|(change_ip, change_port)| {
            Attribute::ChangeRequest(ChangeRequest {
                change_ip,
                change_port,
            })
        }),
        arb_addr().prop_map(Attribute::ResponseOrigin),
        arb_addr().prop_map(Attribute::OtherAddress),
        any::<u16>().prop_map(Attribute::ResponsePort),
        arb_bytes(40).prop_map(Attribute::Padding),
        any::<u16>().prop_map(Attribute::ChannelNumber),
        any::<u32>().prop_map(Attribute::Lifetime),
        arb_addr().prop_map(Attribute::XorPeerAddress),
        arb_bytes(64).prop_map(Attribute::Data),
        arb_addr().prop_map(Attribute::XorRelayedAddress),
        arb_family().prop_map(Attribute::RequestedAddressFamily),
        any::<bool>().prop_map(|reserve_next| Attribute::EvenPort { reserve_next }),
        any::<u8>().prop_map(Attribute::RequestedTransport),
        Just(Attribute::DontFragment),
        any::<[u8; 8]>().prop_map(|t| Attribute::ReservationToken(Box::leak(Box::new(t)))),
        arb_family().prop_map(Attribute::AdditionalAddressFamily),
        (arb_family(), 300u16..700, arb_text()).prop_map(|(family, code, reason)| {
            Attribute::AddressErrorCode(AddressErrorCode {
                family,
                code,
                reason,
            })
        }),
        (any::<u8>(), any::<u8>(), any::<u32>()).prop_map(|(icmp_type, code, error_data)| {
            Attribute::Icmp(Icmp {
                icmp_type,
                code,
                error_data,
            })
        }),
        any::<u32>().prop_map(Attribute::Priority),
        Just(Attribute::UseCandidate),
        any::<u64>().prop_map(Attribute::IceControlled),
        any::<u64>().prop_map(Attribute::IceControlling),
        (any::<u16>(), arb_bytes(20)).prop_filter_map("known type", |(typ, value)| {
            let typ = AttributeType::new(typ);
            (!typ.is_known()).then_some(Attribute::Unknown { typ, value })
        }),
    ]
}

/// Integrity and fingerprint attributes as literal values.
fn arb_trailer_attribute() -> impl Strategy<Value = Attribute<'static>> {
    prop_oneof![
        any::<[u8; 20]>().prop_map(|m| Attribute::MessageIntegrity(Box::leak(Box::new(m)))),
        (4usize..=8, any::<[u8; 32]>()).prop_map(|(words, mac)| {
            Attribute::MessageIntegritySha256(leak_bytes(mac[..words * 4].to_vec()))
        }),
        any::<u32>().prop_map(Attribute::Fingerprint),
    ]
}

fn arb_message_type() -> impl Strategy<Value = MessageType> {
    (0u16..=0x3FFF).prop_map(|bits| MessageType::from_bits(bits).unwrap())
}

#[derive(Debug, Clone)]
struct MessageCase {
    message_type: MessageType,
    transaction_id: TransactionId,
    padding: u8,
    attributes: Vec<Attribute<'static>>,
    sha1: bool,
    sha256: Option<usize>,
    fingerprint: bool,
    key: Vec<u8>,
}

impl MessageCase {
    fn builder(&self) -> MessageBuilder<'_> {
        let mut builder = MessageBuilder::new(self.message_type, self.transaction_id)
            .padding_byte(self.padding)
            .attributes(&self.attributes);
        if self.sha1 {
            builder = builder.message_integrity(&self.key);
        }
        if let Some(len) = self.sha256 {
            builder = builder.message_integrity_sha256_truncated(&self.key, len);
        }
        if self.fingerprint {
            builder = builder.fingerprint();
        }
        builder
    }
}

fn arb_message() -> impl Strategy<Value = MessageCase> {
    (
        arb_message_type(),
        any::<[u8; 12]>(),
        any::<u8>(),
        proptest::collection::vec(arb_plain_attribute(), 0..12),
        any::<bool>(),
        proptest::option::of((4usize..=8).prop_map(|w| w * 4)),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(
            |(message_type, id, padding, attributes, sha1, sha256, fingerprint, key)| MessageCase {
                message_type,
                transaction_id: TransactionId::new(id),
                padding,
                attributes,
                sha1,
                sha256,
                fingerprint,
                key,
            },
        )
}

/// Parses, walks every attribute and runs every check; must never panic.
fn exercise(bytes: &[u8]) {
    let _ = is_stun(bytes);
    let _ = classify(bytes, DatagramSource::TurnServer);
    let _ = ChannelData::parse(bytes);
    let _ = ChannelData::parse_stream(bytes);
    if let Ok(message) = Message::parse(bytes) {
        assert!(is_stun(bytes));
        for attribute in message.attributes() {
            let _ = attribute.encoded_len();
        }
        let _ = message.raw_attributes().count();
        let _ = message.verify_integrity(b"key");
        let _ = message.verify_message_integrity(b"key");
        let _ = message.verify_message_integrity_sha256(b"key");
        let _ = message.verify_fingerprint();
        let _ = message.unknown_comprehension_required();
        // What parsed re-encodes, and re-parses to the same attributes.
        let again = reencode_verbatim(&message, 0);
        let reparsed = Message::parse(&again).unwrap();
        assert!(message.attributes().eq(reparsed.attributes()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_attribute_round_trips(
        attribute in prop_oneof![arb_plain_attribute(), arb_trailer_attribute()],
        id in any::<[u8; 12]>(),
        padding in any::<u8>(),
    ) {
        let attributes = [attribute];
        let builder = MessageBuilder::new(MessageType::BINDING_REQUEST, TransactionId::new(id))
            .padding_byte(padding)
            .attributes(&attributes);
        let bytes = builder.to_vec().unwrap();
        prop_assert_eq!(bytes.len(), HEADER_LEN + attribute.encoded_len());
        prop_assert_eq!(attribute.encoded_len() % 4, 0);
        let message = Message::parse(&bytes).unwrap();
        let decoded: Vec<_> = message.attributes().collect();
        prop_assert_eq!(decoded, vec![attribute]);
    }

    #[test]
    fn whole_messages_round_trip(case in arb_message()) {
        let builder = case.builder();
        let bytes = builder.to_vec().unwrap();
        // encoded_len is exact and a multiple of 4
        prop_assert_eq!(bytes.len(), builder.encoded_len());
        prop_assert_eq!(bytes.len() % 4, 0);
        prop_assert!(is_stun(&bytes));
        // methods 0x100..=0xFFF push the first byte past 3, out of STUN's RFC 7983
        // range (IANA keeps them reserved for that reason)
        if case.message_type.method.value() < 0x100 {
            prop_assert_eq!(classify(&bytes, DatagramSource::Other), PacketKind::Stun);
        }

        let message = Message::parse(&bytes).unwrap();
        prop_assert_eq!(message.message_type(), case.message_type);
        prop_assert_eq!(message.transaction_id(), case.transaction_id);
        let decoded: Vec<_> = message.attributes().take(case.attributes.len()).collect();
        prop_assert_eq!(&decoded, &case.attributes);
        let trailer = usize::from(case.sha1) + usize::from(case.sha256.is_some()) + usize::from(case.fingerprint);
        prop_assert_eq!(message.attributes().count(), case.attributes.len() + trailer);

        if case.sha1 {
            prop_assert_eq!(message.verify_message_integrity(&case.key), Ok(()));
        }
        if case.sha256.is_some() {
            prop_assert_eq!(message.verify_message_integrity_sha256(&case.key), Ok(()));
        }
        if case.sha1 || case.sha256.is_some() {
            prop_assert!(message.verify_integrity(&case.key).is_ok());
            let mut wrong = case.key.clone();
            wrong.push(1);
            prop_assert_eq!(message.verify_integrity(&wrong).err(), Some(IntegrityError::Mismatch));
        } else {
            prop_assert_eq!(message.verify_integrity(&case.key).err(), Some(IntegrityError::Missing));
        }
        if case.fingerprint {
            prop_assert_eq!(message.verify_fingerprint(), Ok(()));
        }

        // the streaming encoder's running length agrees with the builder
        let mut streamed = Vec::new();
        let mut encoder = MessageEncoder::new(&mut streamed, case.message_type, case.transaction_id);
        encoder.set_padding_byte(case.padding);
        let mut expected = HEADER_LEN;
        for attribute in &case.attributes {
            encoder.append(attribute).unwrap();
            expected += attribute.encoded_len();
            prop_assert_eq!(encoder.encoded_len(), expected);
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        exercise(&bytes);
    }

    #[test]
    fn parse_never_panics_on_stun_shaped_bytes(
        typ in 0u16..0x4000,
        id in any::<[u8; 12]>(),
        body in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        // A valid header in front of random attributes reaches the attribute parser.
        let body_len = body.len() / 4 * 4;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&typ.to_be_bytes());
        bytes.extend_from_slice(&(body_len as u16).to_be_bytes());
        bytes.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        bytes.extend_from_slice(&id);
        bytes.extend_from_slice(&body[..body_len]);
        exercise(&bytes);
    }

    #[test]
    fn parse_never_panics_on_mutated_messages(
        case in arb_message(),
        mutations in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<proptest::sample::Index>()),
    ) {
        let mut bytes = case.builder().to_vec().unwrap();
        for (index, value) in mutations {
            let i = index.index(bytes.len());
            bytes[i] = value;
        }
        exercise(&bytes);
        if let Some(cut) = cut {
            exercise(&bytes[..cut.index(bytes.len())]);
        }
    }

    #[test]
    fn parse_never_panics_on_mutated_vectors(
        which in 0usize..5,
        mutations in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = [
            rfc5769_request(),
            rfc5769_ipv4_response(),
            rfc5769_ipv6_response(),
            rfc5769_long_term_request(),
            rfc8489_b1_request(),
        ][which].clone();
        for (index, value) in mutations {
            // keep the header intact so the mutations land in attributes
            let i = HEADER_LEN + index.index(bytes.len() - HEADER_LEN);
            bytes[i] = value;
        }
        exercise(&bytes);
    }

    #[test]
    fn channel_data_round_trips(
        channel in 0x4000u16..=0x4FFF,
        data in proptest::collection::vec(any::<u8>(), 0..200),
        padded in any::<bool>(),
    ) {
        let channel = ChannelNumber::new(channel).unwrap();
        let message = ChannelData::new(channel, &data).unwrap();
        let padding = if padded { ChannelDataPadding::FourBytes } else { ChannelDataPadding::None };
        let mut out = Vec::new();
        let written = message.encode_into(&mut out, padding);
        prop_assert_eq!(written, out.len());
        prop_assert_eq!(written, message.encoded_len(padding));
        if padded {
            prop_assert_eq!(written % 4, 0);
            prop_assert_eq!(ChannelData::parse_stream(&out), Ok((message, written)));
        }
        prop_assert_eq!(ChannelData::parse(&out), Ok(message));
        prop_assert_eq!(classify(&out, DatagramSource::TurnServer), PacketKind::ChannelData);
        prop_assert_eq!(classify(&out, DatagramSource::Other), PacketKind::Quic);
        prop_assert!(!is_stun(&out));
    }

    #[test]
    fn channel_data_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(message) = ChannelData::parse(&bytes) {
            prop_assert!(message.data().len() <= bytes.len() - 4);
        }
        if let Ok((_, used)) = ChannelData::parse_stream(&bytes) {
            prop_assert!(used <= bytes.len());
            prop_assert_eq!(used % 4, 0);
        }
    }
}
