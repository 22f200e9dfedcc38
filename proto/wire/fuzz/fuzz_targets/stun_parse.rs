//! Fuzzes the STUN decoder: parse, walk every attribute, run every check with a
//! fixed key, re-encode what parsed and require the re-encoding to parse back to
//! the same attributes. Also runs the demultiplexing helpers on the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quickp2p_wire::stun::{Attribute, Message, MessageBuilder, MessageEncoder};
use quickp2p_wire::{DatagramSource, classify, is_stun};

const KEY: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

fuzz_target!(|data: &[u8]| {
    let _ = classify(data, DatagramSource::TurnServer);
    let stun_shaped = is_stun(data);
    let Ok(message) = Message::parse(data) else {
        return;
    };
    assert!(stun_shaped, "parse accepted what is_stun refused");

    let mut count = 0;
    for attribute in message.attributes() {
        count += 1;
        let _ = attribute.encoded_len();
    }
    assert!(count <= quickp2p_wire::stun::MAX_ATTRIBUTES);
    let _ = message.raw_attributes().count();
    let _ = message.get(quickp2p_wire::stun::AttributeType::XOR_MAPPED_ADDRESS);
    let _ = message.verify_integrity(KEY);
    let _ = message.verify_message_integrity(KEY);
    let _ = message.verify_message_integrity_sha256(KEY);
    let _ = message.verify_fingerprint();
    let unknown = message.unknown_comprehension_required();

    // Re-encode verbatim: must succeed and parse back to the same attributes.
    let mut verbatim = Vec::new();
    let mut encoder = MessageEncoder::new(
        &mut verbatim,
        message.message_type(),
        message.transaction_id(),
    );
    for attribute in message.attributes() {
        encoder
            .append(&attribute)
            .expect("an attribute that parsed re-encodes");
    }
    encoder.finish();
    let reparsed = Message::parse(&verbatim).expect("a re-encoded message parses");
    assert!(message.attributes().eq(reparsed.attributes()));
    assert_eq!(
        reparsed.unknown_comprehension_required().as_slice(),
        unknown.as_slice()
    );

    // Re-encode with integrity and fingerprint computed by us: both must verify.
    let plain: Vec<Attribute<'_>> = message
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
    let builder = MessageBuilder::new(message.message_type(), message.transaction_id())
        .attributes(&plain)
        .message_integrity(KEY)
        .message_integrity_sha256(KEY)
        .fingerprint();
    if let Ok(signed) = builder.to_vec() {
        assert_eq!(signed.len(), builder.encoded_len());
        let signed = Message::parse(&signed).expect("a signed message parses");
        assert!(signed.verify_message_integrity(KEY).is_ok());
        assert!(signed.verify_message_integrity_sha256(KEY).is_ok());
        assert!(signed.verify_fingerprint().is_ok());
        assert!(
            signed
                .attributes()
                .take(plain.len())
                .eq(plain.iter().copied())
        );
    }
});
