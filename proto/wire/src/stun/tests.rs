//! Message-level tests that exercise the decoder and the encoders together: typed
//! errors, the integrity rules of RFC 8489 §14.5/§14.6, and encoder refusals.

use super::*;

const TXID: TransactionId = TransactionId::new([0x42; 12]);
const KEY: &[u8] = b"swordfish";

fn request(attributes: &[Attribute<'_>]) -> Vec<u8> {
    MessageBuilder::new(MessageType::BINDING_REQUEST, TXID)
        .attributes(attributes)
        .to_vec()
        .unwrap()
}

/// Appends a raw attribute after the message's current end and fixes the length.
fn append_raw(message: &mut Vec<u8>, typ: u16, value: &[u8]) {
    message.extend_from_slice(&typ.to_be_bytes());
    message.extend_from_slice(&(value.len() as u16).to_be_bytes());
    message.extend_from_slice(value);
    while !message.len().is_multiple_of(4) {
        message.push(0);
    }
    let body = (message.len() - HEADER_LEN) as u16;
    message[2..4].copy_from_slice(&body.to_be_bytes());
}

#[test]
fn empty_message() {
    let bytes = request(&[]);
    assert_eq!(bytes.len(), HEADER_LEN);
    let message = Message::parse(&bytes).unwrap();
    assert_eq!(message.message_type(), MessageType::BINDING_REQUEST);
    assert_eq!(message.method(), Method::BINDING);
    assert_eq!(message.class(), MessageClass::Request);
    assert_eq!(message.transaction_id(), TXID);
    assert_eq!(message.attributes().count(), 0);
    assert_eq!(message.verify_integrity(KEY), Err(IntegrityError::Missing));
    assert_eq!(
        message.verify_message_integrity_sha256(KEY),
        Err(IntegrityError::Missing)
    );
    assert_eq!(message.verify_fingerprint(), Err(FingerprintError::Missing));
    assert!(!message.has_fingerprint());
}

#[test]
fn truncated_attribute_is_typed() {
    let mut bytes = request(&[Attribute::Software("abcd")]);
    // claim 8 value bytes where 4 are present
    bytes[HEADER_LEN + 3] = 8;
    assert_eq!(
        Message::parse(&bytes),
        Err(DecodeError::TruncatedAttribute {
            typ: AttributeType::SOFTWARE,
            offset: HEADER_LEN
        })
    );
}

#[test]
fn fingerprint_must_be_last() {
    let mut bytes = MessageBuilder::new(MessageType::BINDING_REQUEST, TXID)
        .fingerprint()
        .to_vec()
        .unwrap();
    append_raw(&mut bytes, 0x8022, b"late");
    assert_eq!(
        Message::parse(&bytes),
        Err(DecodeError::AttributeAfterFingerprint {
            typ: AttributeType::SOFTWARE
        })
    );
}

#[test]
fn attribute_count_is_bounded() {
    let many = [Attribute::DontFragment; MAX_ATTRIBUTES];
    let bytes = request(&many);
    assert_eq!(
        Message::parse(&bytes).unwrap().attributes().count(),
        MAX_ATTRIBUTES
    );

    let mut too_many = bytes.clone();
    append_raw(&mut too_many, 0x001A, &[]);
    assert_eq!(
        Message::parse(&too_many),
        Err(DecodeError::TooManyAttributes)
    );

    let mut one_more = many.to_vec();
    one_more.push(Attribute::DontFragment);
    assert_eq!(
        MessageBuilder::new(MessageType::BINDING_REQUEST, TXID)
            .attributes(&one_more)
            .to_vec(),
        Err(EncodeError::TooManyAttributes)
    );
}

#[test]
fn bad_integrity_length_is_typed() {
    let mut bytes = request(&[]);
    append_raw(&mut bytes, 0x0008, &[0; 19]);
    assert_eq!(
        Message::parse(&bytes),
        Err(DecodeError::BadIntegrityLength {
            typ: AttributeType::MESSAGE_INTEGRITY,
            len: 19
        })
    );
    let mut bytes = request(&[]);
    append_raw(&mut bytes, 0x001C, &[0; 12]);
    assert_eq!(
        Message::parse(&bytes),
        Err(DecodeError::BadIntegrityLength {
            typ: AttributeType::MESSAGE_INTEGRITY_SHA256,
            len: 12
        })
    );
}

#[test]
fn attributes_after_integrity_are_ignored() {
    let mut bytes = MessageBuilder::new(MessageType::BINDING_REQUEST, TXID)
        .attributes(&[Attribute::Username("u")])
        .message_integrity(KEY)
        .to_vec()
        .unwrap();
    // An attacker appends attributes the HMAC does not cover, one of them
    // malformed: they are framed but neither decoded nor returned.
    append_raw(&mut bytes, 0x8022, b"injected");
    append_raw(&mut bytes, 0x0020, &[0, 9, 0, 0]);
    append_raw(&mut bytes, 0x7777, b"x");
    let message = Message::parse(&bytes).unwrap();
    let types: Vec<_> = message.attributes().map(|a| a.attribute_type()).collect();
    assert_eq!(
        types,
        [AttributeType::USERNAME, AttributeType::MESSAGE_INTEGRITY]
    );
    assert_eq!(message.get(AttributeType::SOFTWARE), None);
    assert!(message.unknown_comprehension_required().is_empty());
    assert_eq!(message.raw_attributes().count(), 5);
    // The HMAC covers the message only up to MESSAGE-INTEGRITY, with the length
    // adjusted, so it still verifies.
    assert_eq!(message.verify_integrity(KEY), Ok(IntegrityAlgorithm::Sha1));
    assert_eq!(
        message.verify_integrity(b"wrong"),
        Err(IntegrityError::Mismatch)
    );
}

#[test]
fn both_integrity_attributes_and_fingerprint() {
    let bytes = MessageBuilder::new(MessageType::BINDING_REQUEST, TXID)
        .attributes(&[Attribute::Username("u"), Attribute::Realm("r")])
        .message_integrity(KEY)
        .message_integrity_sha256_truncated(KEY, 20)
        .fingerprint()
        .to_vec()
        .unwrap();
    let message = Message::parse(&bytes).unwrap();
    assert!(message.has_integrity(IntegrityAlgorithm::Sha1));
    assert!(message.has_integrity(IntegrityAlgorithm::Sha256));
    assert_eq!(message.verify_message_integrity(KEY), Ok(()));
    assert_eq!(message.verify_message_integrity_sha256(KEY), Ok(()));
    assert_eq!(
        message.verify_integrity(KEY),
        Ok(IntegrityAlgorithm::Sha256)
    );
    assert_eq!(message.verify_fingerprint(), Ok(()));
    assert_eq!(message.attributes().count(), 5);

    // flipping a covered byte breaks all three checks
    let mut tampered = bytes.clone();
    tampered[HEADER_LEN + 4] ^= 0x01;
    let message = Message::parse(&tampered).unwrap();
    assert_eq!(
        message.verify_message_integrity(KEY),
        Err(IntegrityError::Mismatch)
    );
    assert_eq!(
        message.verify_message_integrity_sha256(KEY),
        Err(IntegrityError::Mismatch)
    );
    assert!(matches!(
        message.verify_fingerprint(),
        Err(FingerprintError::Mismatch { .. })
    ));
}

#[test]
fn sha256_before_sha1_is_also_accepted() {
    let mut buf = Vec::new();
    let mut encoder = MessageEncoder::new(&mut buf, MessageType::BINDING_REQUEST, TXID);
    encoder.append(&Attribute::Username("u")).unwrap();
    encoder.append_message_integrity_sha256(KEY).unwrap();
    encoder.append_message_integrity(KEY).unwrap();
    encoder.finish();
    let message = Message::parse(&buf).unwrap();
    assert_eq!(message.verify_message_integrity(KEY), Ok(()));
    assert_eq!(message.verify_message_integrity_sha256(KEY), Ok(()));
}

#[test]
fn encoder_refuses_what_receivers_would_ignore() {
    let mut buf = vec![0xAA; 3];
    let mut encoder = MessageEncoder::new(&mut buf, MessageType::BINDING_REQUEST, TXID);
    encoder.append_message_integrity(KEY).unwrap();
    assert_eq!(
        encoder.append(&Attribute::Software("late")),
        Err(EncodeError::AfterIntegrity {
            typ: AttributeType::SOFTWARE
        })
    );
    assert_eq!(
        encoder.append_message_integrity(KEY),
        Err(EncodeError::DuplicateIntegrity {
            typ: AttributeType::MESSAGE_INTEGRITY
        })
    );
    assert_eq!(
        encoder.append_message_integrity_sha256_truncated(KEY, 33),
        Err(EncodeError::BadIntegrityLength { len: 33 })
    );
    encoder.append_fingerprint().unwrap();
    assert_eq!(
        encoder.append_fingerprint(),
        Err(EncodeError::AfterFingerprint {
            typ: AttributeType::FINGERPRINT
        })
    );
    let len = encoder.finish();
    assert_eq!(len, HEADER_LEN + 24 + 8);
    // the encoder appended after what the buffer held
    assert_eq!(&buf[..3], &[0xAA; 3]);
    let message = Message::parse(&buf[3..]).unwrap();
    assert_eq!(message.verify_fingerprint(), Ok(()));
    assert_eq!(message.verify_integrity(KEY), Ok(IntegrityAlgorithm::Sha1));
}

#[test]
fn builder_leaves_buffer_untouched_on_error() {
    let big = vec![0u8; 40_000];
    let attributes = [Attribute::Data(&big), Attribute::Data(&big)];
    let builder = MessageBuilder::new(MessageType::BINDING_REQUEST, TXID).attributes(&attributes);
    let mut out = vec![1, 2, 3];
    assert_eq!(
        builder.encode_into(&mut out),
        Err(EncodeError::MessageTooLong {
            len: 2 * (4 + 40_000)
        })
    );
    assert_eq!(out, [1, 2, 3]);
    assert_eq!(
        MessageBuilder::new(MessageType::BINDING_REQUEST, TXID)
            .attributes(&[Attribute::ErrorCode(ErrorCode::new(700))])
            .to_vec(),
        Err(EncodeError::InvalidErrorCode { code: 700 })
    );
}

#[test]
fn unknown_required_attributes_feed_a_420() {
    let bytes = request(&[
        Attribute::Unknown {
            typ: AttributeType::new(0x7777),
            value: b"a",
        },
        Attribute::Unknown {
            typ: AttributeType::new(0x8888),
            value: b"optional",
        },
        Attribute::Unknown {
            typ: AttributeType::new(0x0002),
            value: b"",
        },
    ]);
    let message = Message::parse(&bytes).unwrap();
    let unknown = message.unknown_comprehension_required();
    assert_eq!(
        unknown.as_slice(),
        [AttributeType::new(0x7777), AttributeType::new(0x0002)]
    );

    let response = MessageBuilder::new(
        MessageType::new(Method::BINDING, MessageClass::ErrorResponse),
        message.transaction_id(),
    )
    .attributes(&[
        Attribute::ErrorCode(ErrorCode::new(ErrorCode::UNKNOWN_ATTRIBUTE)),
        Attribute::UnknownAttributes(UnknownAttributes::new(unknown.as_slice())),
    ])
    .to_vec()
    .unwrap();
    let response = Message::parse(&response).unwrap();
    assert_eq!(
        response.get(AttributeType::ERROR_CODE),
        Some(Attribute::ErrorCode(ErrorCode::with_reason(
            420,
            "Unknown Attribute"
        )))
    );
    let Some(Attribute::UnknownAttributes(list)) = response.get(AttributeType::UNKNOWN_ATTRIBUTES)
    else {
        panic!("no UNKNOWN-ATTRIBUTES");
    };
    assert_eq!(list.iter().collect::<Vec<_>>(), unknown.as_slice());
}

#[test]
fn malformed_known_attribute_fails_the_message() {
    let mut bytes = request(&[]);
    append_raw(&mut bytes, 0x0020, &[0, 7, 0, 0, 1, 2, 3, 4]);
    assert_eq!(
        Message::parse(&bytes),
        Err(DecodeError::BadAddressFamily {
            typ: AttributeType::XOR_MAPPED_ADDRESS,
            family: 7
        })
    );
}
