//! Writes the seed corpora under `fuzz/seeds/`: the RFC 5769 and RFC 8489 B.1
//! vectors plus messages from our own encoder that carry every attribute type, and
//! a few ChannelData frames. Run from anywhere:
//!
//! ```sh
//! cargo run --manifest-path proto/wire/fuzz/Cargo.toml --example make_seeds
//! ```

use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use quickp2p_wire::stun::{
    AddressErrorCode, AddressFamily, Attribute, AttributeType, ChangeRequest, ErrorCode, Icmp,
    LongTermKey, Message, MessageBuilder, MessageClass, MessageType, Method, PROTOCOL_UDP,
    PasswordAlgorithm, PasswordAlgorithms, TransactionId, UnknownAttributes,
};
use quickp2p_wire::{ChannelData, ChannelDataPadding, ChannelNumber};

/// RFC 5769 §2.1-2.4 and RFC 8489 B.1 (erratum 6268), as hex.
const VECTORS: [(&str, &str); 5] = [
    (
        "rfc5769-2.1-request",
        "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e7400240004\
         6e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb56\
         781ef2b5b2d3f249c1b571a280280004e57a3bcf",
    ),
    (
        "rfc5769-2.2-ipv4-response",
        "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000080001a147\
         e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96",
    ),
    (
        "rfc5769-2.3-ipv6-response",
        "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000140002a147\
         0113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed4180280004\
         c8fb0b4c",
    ),
    (
        "rfc5769-2.4-long-term-request",
        "000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae38383e382afe382b90000\
         0015001c662f2f3439396b39353464364f4c33346f4c394653547679363473410014000b6578616d706c652e\
         6f72670000080014f67024656dd64a3e02b8e0712e85c9a28ca89666",
    ),
    (
        "rfc8489-b1-sha256-request",
        "000100902112a44278ad3433c6ad72c029da412e001e00204a3cf38fef6992bda952c6780417da0f24819415\
         569e60b205c46e41407f1704001500296f624d61744a6f733241414143662f2f3439396b39353464364f4c33\
         346f4c394653547679363473410000000014000b6578616d706c652e6f726700001d000400020000001c0020\
         b5c7bf005b6c52a21c51c5e892f81924136296cb927c43149309278cc6518e65",
    ),
];

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).expect("ascii");
            u8::from_str_radix(text, 16).expect("hex digit pair")
        })
        .collect()
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let stun = root.join("stun_parse");
    let channel = root.join("channel_data");
    fs::create_dir_all(&stun).expect("create seeds/stun_parse");
    fs::create_dir_all(&channel).expect("create seeds/channel_data");

    for (name, dump) in VECTORS {
        let bytes = hex(dump);
        Message::parse(&bytes).expect("the RFC vectors parse");
        fs::write(stun.join(format!("{name}.bin")), bytes).expect("write vector seed");
    }

    let txid = TransactionId::new(*b"quickp2pseed");
    let v4: SocketAddr = "192.0.2.1:32853".parse().expect("address");
    let v6: SocketAddr = "[2001:db8::1]:3478".parse().expect("address");
    let hash = [7u8; 32];
    let token = [9u8; 8];
    let algorithms = [
        PasswordAlgorithm::new(PasswordAlgorithm::MD5),
        PasswordAlgorithm::new(PasswordAlgorithm::SHA256),
    ];
    let unknown = [AttributeType::new(0x7777), AttributeType::new(0x0002)];
    let key = LongTermKey::sha256("user", "realm", "pass");

    let messages: Vec<(&str, MessageType, Vec<Attribute<'_>>)> = vec![
        (
            "stun-attributes",
            MessageType::BINDING_SUCCESS,
            vec![
                Attribute::MappedAddress(v4),
                Attribute::XorMappedAddress(v6),
                Attribute::Username("user"),
                Attribute::UserHash(&hash),
                Attribute::Realm("realm"),
                Attribute::Nonce(b"nonce"),
                Attribute::PasswordAlgorithms(PasswordAlgorithms::new(&algorithms)),
                Attribute::PasswordAlgorithm(algorithms[1]),
                Attribute::Software("quickp2p"),
                Attribute::AlternateServer(v4),
                Attribute::AlternateDomain("example.org"),
            ],
        ),
        (
            "rfc5780-attributes",
            MessageType::BINDING_REQUEST,
            vec![
                Attribute::ChangeRequest(ChangeRequest {
                    change_ip: true,
                    change_port: true,
                }),
                Attribute::ResponseOrigin(v4),
                Attribute::OtherAddress(v6),
                Attribute::ResponsePort(40000),
                Attribute::Padding(&[0; 13]),
            ],
        ),
        (
            "turn-attributes",
            MessageType::new(Method::ALLOCATE, MessageClass::SuccessResponse),
            vec![
                Attribute::ChannelNumber(0x4001),
                Attribute::Lifetime(600),
                Attribute::XorPeerAddress(v6),
                Attribute::Data(b"payload"),
                Attribute::XorRelayedAddress(v4),
                Attribute::RequestedAddressFamily(AddressFamily::V6),
                Attribute::EvenPort { reserve_next: true },
                Attribute::RequestedTransport(PROTOCOL_UDP),
                Attribute::DontFragment,
                Attribute::ReservationToken(&token),
                Attribute::AdditionalAddressFamily(AddressFamily::V6),
                Attribute::AddressErrorCode(AddressErrorCode {
                    family: AddressFamily::V6,
                    code: 440,
                    reason: "Address Family not Supported",
                }),
                Attribute::Icmp(Icmp {
                    icmp_type: 3,
                    code: 4,
                    error_data: 1280,
                }),
            ],
        ),
        (
            "ice-attributes",
            MessageType::BINDING_REQUEST,
            vec![
                Attribute::Priority(0x6e00_01ff),
                Attribute::UseCandidate,
                Attribute::IceControlled(1),
                Attribute::IceControlling(2),
            ],
        ),
        (
            "error-420",
            MessageType::BINDING_ERROR,
            vec![
                Attribute::ErrorCode(ErrorCode::new(ErrorCode::UNKNOWN_ATTRIBUTE)),
                Attribute::UnknownAttributes(UnknownAttributes::new(&unknown)),
                Attribute::Unknown {
                    typ: AttributeType::new(0x7777),
                    value: b"?",
                },
            ],
        ),
    ];
    for (name, message_type, attributes) in &messages {
        let bytes = MessageBuilder::new(*message_type, txid)
            .attributes(attributes)
            .message_integrity(key.as_bytes())
            .message_integrity_sha256_truncated(key.as_bytes(), 24)
            .fingerprint()
            .to_vec()
            .expect("seed message encodes");
        fs::write(stun.join(format!("{name}.bin")), bytes).expect("write seed");
    }

    for (name, number, data, padding) in [
        (
            "min-channel-unpadded",
            0x4000,
            &b"hello"[..],
            ChannelDataPadding::None,
        ),
        (
            "max-channel-padded",
            0x4FFF,
            &b"hello"[..],
            ChannelDataPadding::FourBytes,
        ),
        ("empty", 0x4123, &b""[..], ChannelDataPadding::None),
    ] {
        let channel_number = ChannelNumber::new(number).expect("valid channel");
        let message = ChannelData::new(channel_number, data).expect("small data");
        let mut out = Vec::new();
        message.encode_into(&mut out, padding);
        fs::write(channel.join(format!("{name}.bin")), out).expect("write seed");
    }
    println!("seeds written to {}", root.display());
}
