//! The sans-IO client against a scripted server: the 401 and 438 exchanges, retransmissions and
//! their timeout, refreshes, channels and framing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quickp2p_wire::stun::{
    Attribute, AttributeType, ErrorCode, LongTermKey, Message, MessageBuilder, MessageClass,
    MessageType, Method,
};

use super::*;

const SERVER: &str = "192.0.2.1:3482";

fn client() -> TurnClient {
    TurnClient::new(
        SERVER.parse().unwrap(),
        "100:alice",
        "pw",
        TurnClientConfig::default(),
        1,
    )
}

fn answer(
    request: &[u8],
    class: MessageClass,
    attributes: &[Attribute<'_>],
    key: Option<&LongTermKey>,
) -> Vec<u8> {
    let m = Message::parse(request).unwrap();
    let mut b = MessageBuilder::new(MessageType::new(m.method(), class), m.transaction_id())
        .attributes(attributes);
    if let Some(k) = key {
        b = b.message_integrity(k.as_bytes());
    }
    b.to_vec().unwrap()
}

fn allocated(c: &mut TurnClient, now: Instant) -> LongTermKey {
    let server: SocketAddr = SERVER.parse().unwrap();
    c.allocate(now);
    let first = c.poll_transmit(now).unwrap();
    let m = Message::parse(&first.payload).unwrap();
    assert!(
        m.get(AttributeType::USERNAME).is_none(),
        "the first Allocate has no credentials"
    );
    let challenge = answer(
        &first.payload,
        MessageClass::ErrorResponse,
        &[
            Attribute::ErrorCode(ErrorCode::new(401)),
            Attribute::Realm("quickp2p"),
            Attribute::Nonce(b"n1"),
        ],
        None,
    );
    assert_eq!(
        c.handle_datagram(server, &challenge, now),
        Received::Consumed
    );
    let key = LongTermKey::md5("100:alice", "quickp2p", "pw");
    let second = c.poll_transmit(now).unwrap();
    let m = Message::parse(&second.payload).unwrap();
    m.verify_message_integrity(key.as_bytes()).unwrap();
    m.verify_fingerprint().unwrap();
    assert_eq!(m.get(AttributeType::NONCE), Some(Attribute::Nonce(b"n1")));
    // a stale nonce: retried with the new one
    let stale = answer(
        &second.payload,
        MessageClass::ErrorResponse,
        &[
            Attribute::ErrorCode(ErrorCode::new(438)),
            Attribute::Nonce(b"n2"),
        ],
        None,
    );
    c.handle_datagram(server, &stale, now);
    let third = c.poll_transmit(now).unwrap();
    assert_eq!(
        Message::parse(&third.payload)
            .unwrap()
            .get(AttributeType::NONCE),
        Some(Attribute::Nonce(b"n2"))
    );
    let ok = answer(
        &third.payload,
        MessageClass::SuccessResponse,
        &[
            Attribute::XorRelayedAddress("192.0.2.1:50000".parse().unwrap()),
            Attribute::Lifetime(600),
            Attribute::XorMappedAddress("198.51.100.1:4000".parse().unwrap()),
        ],
        Some(&key),
    );
    c.handle_datagram(server, &ok, now);
    assert_eq!(
        c.poll_event(),
        Some(TurnEvent::Allocated {
            relayed: "192.0.2.1:50000".parse().unwrap(),
            mapped: Some("198.51.100.1:4000".parse().unwrap()),
            lifetime: Duration::from_secs(600)
        })
    );
    key
}

#[test]
fn allocation_with_401_and_438_then_refresh() {
    let mut c = client();
    let now = Instant::now();
    allocated(&mut c, now);
    assert!(c.is_allocated());
    // the refresh is due 60 s before expiry
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(540)));
    c.handle_timeout(now + Duration::from_secs(540));
    let refresh = c.poll_transmit(now + Duration::from_secs(540)).unwrap();
    assert_eq!(
        Message::parse(&refresh.payload).unwrap().method(),
        Method::REFRESH
    );
}

#[test]
fn channels_frame_data_and_unknown_sources_are_not_ours() {
    let server: SocketAddr = SERVER.parse().unwrap();
    let mut c = client();
    let now = Instant::now();
    let key = allocated(&mut c, now);
    let peer: SocketAddr = "203.0.113.5:7000".parse().unwrap();
    let mut out = Vec::new();
    assert_eq!(
        c.send_to(peer, b"x", &mut out),
        Err(ClientError::NoPermission(peer.ip()))
    );
    let (request, channel) = c.bind_channel(peer, now).unwrap();
    assert_eq!(channel, 0x4000);
    let bind = c.poll_transmit(now).unwrap();
    let ok = answer(
        &bind.payload,
        MessageClass::SuccessResponse,
        &[],
        Some(&key),
    );
    c.handle_datagram(server, &ok, now);
    assert_eq!(
        c.poll_event(),
        Some(TurnEvent::ChannelBound {
            request,
            peer,
            channel
        })
    );
    c.send_to(peer, b"hello", &mut out).unwrap();
    assert_eq!(out, [0x40, 0x00, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o']);
    let incoming = [0x40, 0x00, 0x00, 0x02, b'h', b'i', 0, 0];
    assert_eq!(
        c.handle_datagram(server, &incoming, now),
        Received::Data {
            peer,
            payload: 4..6
        }
    );
    assert_eq!(
        c.handle_datagram("192.0.2.9:1".parse().unwrap(), &incoming, now),
        Received::NotOurs
    );
}

#[test]
fn an_unanswered_allocate_times_out_after_its_retransmissions() {
    let mut c = client();
    let start = Instant::now();
    c.allocate(start);
    let mut sends = 0;
    let mut now = start;
    while c.poll_event().is_none() {
        while c.poll_transmit(now).is_some() {
            sends += 1;
        }
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
    }
    assert_eq!(sends, 5, "sent at 0, 0.5, 1.5, 3.5 and 7.5 s");
    assert_eq!(now - start, Duration::from_secs(12));
    assert!(!c.is_allocated());
}

#[test]
fn refusals_and_bad_credentials_are_typed() {
    let server: SocketAddr = SERVER.parse().unwrap();
    let mut c = client();
    let now = Instant::now();
    c.allocate(now);
    let first = c.poll_transmit(now).unwrap();
    let challenge = answer(
        &first.payload,
        MessageClass::ErrorResponse,
        &[
            Attribute::ErrorCode(ErrorCode::new(401)),
            Attribute::Realm("r"),
            Attribute::Nonce(b"n"),
        ],
        None,
    );
    c.handle_datagram(server, &challenge, now);
    let second = c.poll_transmit(now).unwrap();
    let again = answer(
        &second.payload,
        MessageClass::ErrorResponse,
        &[
            Attribute::ErrorCode(ErrorCode::new(401)),
            Attribute::Realm("r"),
            Attribute::Nonce(b"n"),
        ],
        None,
    );
    c.handle_datagram(server, &again, now);
    assert_eq!(
        c.poll_event(),
        Some(TurnEvent::AllocationFailed(TurnError::Unauthorized {
            code: 401
        }))
    );
    c.allocate(now);
    let third = c.poll_transmit(now).unwrap();
    let quota = answer(
        &third.payload,
        MessageClass::ErrorResponse,
        &[Attribute::ErrorCode(ErrorCode::new(486))],
        None,
    );
    c.handle_datagram(server, &quota, now);
    assert_eq!(
        c.poll_event(),
        Some(TurnEvent::AllocationFailed(TurnError::Rejected {
            code: 486,
            reason: "Allocation Quota Reached".into()
        }))
    );
}
