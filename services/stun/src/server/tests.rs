//! Every branch of the sans-IO responder, with a fixed clock and no sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use quickp2p_wire::stun::{
    Attribute, AttributeType, ChangeRequest, ErrorCode, MAGIC_COOKIE, Message, MessageBuilder,
    MessageClass, MessageType, Method, TransactionId,
};

use super::*;
use crate::config::{Config, PairMember, PairPorts};
use crate::limiter::{RateLimit, SourceLimiter};

const TID: TransactionId = TransactionId::new([0x5a; 12]);

fn client() -> SocketAddr {
    "192.0.2.10:40000".parse().unwrap()
}

fn config() -> Config {
    let mut c = Config::loopback_pair(PairMember::A, PairPorts::default());
    c.rate_limit = RateLimit::OFF;
    c
}

fn responder(config: Config) -> StunResponder {
    let limiter = Arc::new(SourceLimiter::new(
        config.rate_limit,
        config.rate_table_size,
    ));
    StunResponder::new(Arc::new(config), limiter)
}

fn request(attributes: &[Attribute<'_>]) -> Vec<u8> {
    MessageBuilder::new(MessageType::BINDING_REQUEST, TID)
        .attributes(attributes)
        .fingerprint()
        .to_vec()
        .unwrap()
}

fn handle(r: &StunResponder, datagram: &[u8], on: LocalPort) -> (Action, Vec<u8>) {
    let mut out = Vec::new();
    let action = r.handle_datagram(datagram, client(), on, Instant::now(), &mut out);
    (action, out)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Parses a success response and checks what every success response has.
fn success(bytes: &[u8]) -> Message<'_> {
    let m = Message::parse(bytes).unwrap();
    assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
    assert_eq!(m.transaction_id(), TID);
    m.verify_fingerprint().unwrap();
    assert_eq!(
        m.get(AttributeType::XOR_MAPPED_ADDRESS),
        Some(Attribute::XorMappedAddress(client()))
    );
    m
}

fn error_code(bytes: &[u8]) -> (Method, u16, Vec<AttributeType>) {
    let m = Message::parse(bytes).unwrap();
    assert_eq!(m.class(), MessageClass::ErrorResponse);
    assert_eq!(m.transaction_id(), TID);
    m.verify_fingerprint().unwrap();
    let Some(Attribute::ErrorCode(code)) = m.get(AttributeType::ERROR_CODE) else {
        panic!("no ERROR-CODE");
    };
    let unknown = match m.get(AttributeType::UNKNOWN_ATTRIBUTES) {
        Some(Attribute::UnknownAttributes(list)) => list.iter().collect(),
        _ => Vec::new(),
    };
    (m.method(), code.code, unknown)
}

fn reply(action: Action) -> Reply {
    match action {
        Action::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn plain_binding_on_the_primary_port() {
    let r = responder(config());
    let (action, out) = handle(&r, &request(&[]), LocalPort::Primary);
    assert_eq!(
        reply(action),
        Reply {
            from: LocalPort::Primary,
            to: client(),
            kind: ReplyKind::Success
        }
    );
    let m = success(&out);
    assert_eq!(
        m.get(AttributeType::MAPPED_ADDRESS),
        Some(Attribute::MappedAddress(client()))
    );
    assert_eq!(
        m.get(AttributeType::RESPONSE_ORIGIN),
        Some(Attribute::ResponseOrigin(addr("127.0.0.1:3478")))
    );
    // RFC 5780 Table 1: Ca:Cp, the partner's IP with the other port
    assert_eq!(
        m.get(AttributeType::OTHER_ADDRESS),
        Some(Attribute::OtherAddress(addr("127.0.0.2:3479")))
    );
    assert_eq!(m.get(AttributeType::SOFTWARE), None);
    assert_eq!(m.get(AttributeType::PADDING), None);
}

#[test]
fn plain_binding_on_the_alternate_port() {
    let r = responder(config());
    let (action, out) = handle(&r, &request(&[]), LocalPort::Alternate);
    assert_eq!(reply(action).from, LocalPort::Alternate);
    let m = success(&out);
    assert_eq!(
        m.get(AttributeType::RESPONSE_ORIGIN),
        Some(Attribute::ResponseOrigin(addr("127.0.0.1:3479")))
    );
    assert_eq!(
        m.get(AttributeType::OTHER_ADDRESS),
        Some(Attribute::OtherAddress(addr("127.0.0.2:3478")))
    );
}

#[test]
fn requests_without_fingerprint_are_answered_too() {
    let r = responder(config());
    let bare = MessageBuilder::new(MessageType::BINDING_REQUEST, TID)
        .to_vec()
        .unwrap();
    let (action, out) = handle(&r, &bare, LocalPort::Primary);
    assert_eq!(reply(action).kind, ReplyKind::Success);
    success(&out);
}

#[test]
fn software_is_sent_when_configured() {
    let mut c = config();
    c.software = Some("quickp2p test".into());
    let r = responder(c);
    let (_, out) = handle(&r, &request(&[]), LocalPort::Primary);
    assert_eq!(
        success(&out).get(AttributeType::SOFTWARE),
        Some(Attribute::Software("quickp2p test"))
    );
}

fn change(change_ip: bool, change_port: bool) -> Attribute<'static> {
    Attribute::ChangeRequest(ChangeRequest {
        change_ip,
        change_port,
    })
}

#[test]
fn change_port_is_answered_from_the_other_port() {
    let r = responder(config());
    for (on, from, origin) in [
        (LocalPort::Primary, LocalPort::Alternate, "127.0.0.1:3479"),
        (LocalPort::Alternate, LocalPort::Primary, "127.0.0.1:3478"),
    ] {
        let (action, out) = handle(&r, &request(&[change(false, true)]), on);
        assert_eq!(reply(action).from, from);
        assert_eq!(
            success(&out).get(AttributeType::RESPONSE_ORIGIN),
            Some(Attribute::ResponseOrigin(addr(origin)))
        );
    }
}

#[test]
fn change_ip_is_forwarded_to_the_partner() {
    let r = responder(config());
    let (action, out) = handle(&r, &request(&[change(true, false)]), LocalPort::Primary);
    assert!(out.is_empty());
    let Action::Forward(f) = action else {
        panic!("{action:?}")
    };
    assert_eq!(
        f,
        PartnerRequest {
            transaction_id: TID,
            client: client(),
            response_port: None,
            change_port: false,
            received_on: LocalPort::Primary,
            padding_len: 0,
            rfc5780_attributes: true,
        }
    );
    assert_eq!(f.answering_port(), LocalPort::Primary);

    let (action, _) = handle(&r, &request(&[change(true, true)]), LocalPort::Primary);
    let Action::Forward(f) = action else {
        panic!("{action:?}")
    };
    assert!(f.change_port);
    assert_eq!(f.answering_port(), LocalPort::Alternate);

    // arriving on the alternate port, change-IP alone is answered from the partner's alternate
    let (action, _) = handle(&r, &request(&[change(true, false)]), LocalPort::Alternate);
    let Action::Forward(f) = action else {
        panic!("{action:?}")
    };
    assert_eq!(f.answering_port(), LocalPort::Alternate);

    // with RESPONSE-PORT, the partner is told
    let (action, _) = handle(
        &r,
        &request(&[change(true, false), Attribute::ResponsePort(5555)]),
        LocalPort::Primary,
    );
    let Action::Forward(f) = action else {
        panic!("{action:?}")
    };
    assert_eq!(f.response_port, Some(5555));
}

#[test]
fn response_port_redirects_the_answer() {
    let r = responder(config());
    let (action, out) = handle(
        &r,
        &request(&[Attribute::ResponsePort(5555)]),
        LocalPort::Primary,
    );
    assert_eq!(reply(action).to, addr("192.0.2.10:5555"));
    // XOR-MAPPED-ADDRESS is still the request's source
    success(&out);
    let (action, out) = handle(
        &r,
        &request(&[Attribute::ResponsePort(0)]),
        LocalPort::Primary,
    );
    assert_eq!(reply(action).kind, ReplyKind::Error(400));
    assert_eq!(error_code(&out).1, 400);
}

#[test]
fn padding_makes_the_response_as_large_as_the_request_never_larger() {
    let r = responder(config());
    // the unpadded response plus an empty PADDING attribute: the floor
    let floor = handle(&r, &request(&[]), LocalPort::Primary).1.len() + 4;
    for request_padding in [0usize, 4, 40, 100, 500, 1500] {
        let pad = vec![0xAB; request_padding];
        let req = request(&[Attribute::Padding(&pad)]);
        let (action, out) = handle(&r, &req, LocalPort::Primary);
        assert_eq!(reply(action).kind, ReplyKind::Success);
        assert!(
            out.len() <= req.len().max(floor),
            "{} > {}",
            out.len(),
            req.len()
        );
        let m = success(&out);
        let Some(Attribute::Padding(p)) = m.get(AttributeType::PADDING) else {
            panic!("PADDING must be included (RFC 5780 §6.1)");
        };
        // as close to the request size as 4-byte alignment allows
        if req.len() > 100 {
            assert!(req.len() - out.len() < 4, "{} vs {}", out.len(), req.len());
            assert!(!p.is_empty());
        }
    }
}

#[test]
fn padding_is_capped_by_max_padding() {
    let mut c = config();
    c.max_padding = 200;
    let r = responder(c);
    let pad = vec![0; 1500];
    let (_, out) = handle(
        &r,
        &request(&[Attribute::Padding(&pad)]),
        LocalPort::Primary,
    );
    let Some(Attribute::Padding(p)) = success(&out).get(AttributeType::PADDING) else {
        panic!("no PADDING");
    };
    assert_eq!(p.len(), 200);
}

#[test]
fn padding_with_response_port_is_a_bad_request() {
    let r = responder(config());
    let pad = [0u8; 8];
    let (action, out) = handle(
        &r,
        &request(&[Attribute::Padding(&pad), Attribute::ResponsePort(9)]),
        LocalPort::Primary,
    );
    let rep = reply(action);
    assert_eq!(rep.kind, ReplyKind::Error(400));
    assert_eq!(
        rep.to,
        client(),
        "errors go to the source, not RESPONSE-PORT"
    );
    assert_eq!(error_code(&out), (Method::BINDING, 400, vec![]));
}

#[test]
fn unknown_comprehension_required_attributes_get_420() {
    let r = responder(config());
    let req = request(&[
        Attribute::Unknown {
            typ: AttributeType::new(0x7777),
            value: &[1, 2, 3, 4],
        },
        Attribute::Unknown {
            typ: AttributeType::new(0xC001),
            value: &[1],
        },
        Attribute::Unknown {
            typ: AttributeType::new(0x0042),
            value: &[],
        },
    ]);
    let (action, out) = handle(&r, &req, LocalPort::Alternate);
    let rep = reply(action);
    assert_eq!(
        (rep.kind, rep.from),
        (ReplyKind::Error(420), LocalPort::Alternate)
    );
    assert_eq!(
        error_code(&out),
        (
            Method::BINDING,
            ErrorCode::UNKNOWN_ATTRIBUTE,
            vec![AttributeType::new(0x7777), AttributeType::new(0x0042)]
        )
    );
    // comprehension-optional unknowns alone are ignored
    let req = request(&[Attribute::Unknown {
        typ: AttributeType::new(0xC001),
        value: &[1],
    }]);
    assert_eq!(
        reply(handle(&r, &req, LocalPort::Primary).0).kind,
        ReplyKind::Success
    );
}

#[test]
fn with_rfc5780_off_its_attributes_are_unknown_and_responses_are_minimal() {
    let mut c = config();
    c.rfc5780 = false;
    let r = responder(c);
    let (_, out) = handle(&r, &request(&[]), LocalPort::Primary);
    let m = success(&out);
    for absent in [
        AttributeType::MAPPED_ADDRESS,
        AttributeType::RESPONSE_ORIGIN,
        AttributeType::OTHER_ADDRESS,
    ] {
        assert_eq!(m.get(absent), None, "{absent}");
    }
    assert_eq!(out.len(), 20 + 12 + 8);
    let pad = [0u8; 4];
    for (attribute, typ) in [
        (change(true, true), AttributeType::CHANGE_REQUEST),
        (Attribute::ResponsePort(7), AttributeType::RESPONSE_PORT),
        (Attribute::Padding(&pad), AttributeType::PADDING),
    ] {
        let (action, out) = handle(&r, &request(&[attribute]), LocalPort::Primary);
        assert_eq!(reply(action).kind, ReplyKind::Error(420));
        assert_eq!(error_code(&out).2, vec![typ]);
    }
}

#[test]
fn a_lone_server_answers_change_request_with_420_and_sends_no_other_address() {
    let mut c = config();
    c.partner = None;
    let r = responder(c);
    let (_, out) = handle(&r, &request(&[]), LocalPort::Primary);
    let m = success(&out);
    assert_eq!(m.get(AttributeType::OTHER_ADDRESS), None);
    assert!(m.get(AttributeType::RESPONSE_ORIGIN).is_some());
    for flags in [
        change(true, false),
        change(false, true),
        change(false, false),
    ] {
        let (action, out) = handle(&r, &request(&[flags]), LocalPort::Primary);
        assert_eq!(reply(action).kind, ReplyKind::Error(420));
        assert_eq!(error_code(&out).2, vec![AttributeType::CHANGE_REQUEST]);
    }
}

#[test]
fn other_methods_get_400() {
    let r = responder(config());
    let allocate = MessageBuilder::new(
        MessageType::new(Method::ALLOCATE, MessageClass::Request),
        TID,
    )
    .to_vec()
    .unwrap();
    let (action, out) = handle(&r, &allocate, LocalPort::Primary);
    assert_eq!(reply(action).kind, ReplyKind::Error(400));
    assert_eq!(error_code(&out).0, Method::ALLOCATE);
}

#[test]
fn indications_and_responses_are_dropped_silently() {
    let r = responder(config());
    for (typ, reason) in [
        (MessageType::BINDING_INDICATION, DropReason::Indication),
        (MessageType::BINDING_SUCCESS, DropReason::Response),
        (MessageType::BINDING_ERROR, DropReason::Response),
    ] {
        let m = MessageBuilder::new(typ, TID)
            .fingerprint()
            .to_vec()
            .unwrap();
        let (action, out) = handle(&r, &m, LocalPort::Primary);
        assert_eq!(action, Action::Drop(reason));
        assert!(out.is_empty());
    }
}

/// The invalid datagrams of the integration test, each with the reason it is dropped for.
pub(crate) fn invalid_datagrams(max: usize) -> Vec<(&'static str, Vec<u8>, DropReason)> {
    let good = request(&[]);
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 4);
    let mut wrong_cookie = good.clone();
    wrong_cookie[4..8].copy_from_slice(&(MAGIC_COOKIE ^ 1).to_be_bytes());
    let mut bad_fingerprint = good.clone();
    let last = bad_fingerprint.len() - 1;
    bad_fingerprint[last] ^= 0xFF;
    let mut odd_length = request(&[Attribute::ResponsePort(1)]);
    odd_length[3] = odd_length[3].wrapping_sub(1);
    odd_length.pop();
    // CHANGE-REQUEST with a 3-byte value
    let mut bad_value = Vec::new();
    bad_value.extend_from_slice(&0x0001u16.to_be_bytes());
    bad_value.extend_from_slice(&8u16.to_be_bytes());
    bad_value.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    bad_value.extend_from_slice(TID.as_bytes());
    bad_value.extend_from_slice(&[0x00, 0x03, 0x00, 0x03, 0, 0, 4, 0]);
    let pad = vec![0u8; max];
    let oversized = request(&[Attribute::Padding(&pad)]);
    vec![
        ("empty", Vec::new(), DropReason::Truncated),
        ("short header", good[..19].to_vec(), DropReason::Truncated),
        ("truncated body", truncated, DropReason::Truncated),
        (
            "not STUN",
            b"GET / HTTP/1.1\r\n\r\n!!".to_vec(),
            DropReason::NotStun,
        ),
        ("wrong cookie", wrong_cookie, DropReason::WrongCookie),
        (
            "bad fingerprint",
            bad_fingerprint,
            DropReason::BadFingerprint,
        ),
        (
            "length not a multiple of 4",
            odd_length,
            DropReason::Malformed,
        ),
        ("malformed CHANGE-REQUEST", bad_value, DropReason::Malformed),
        ("oversized", oversized, DropReason::Oversized),
    ]
}

#[test]
fn invalid_datagrams_are_dropped_with_their_reason_never_answered() {
    let c = config();
    let max = c.max_request_size;
    let r = responder(c);
    for (what, datagram, reason) in invalid_datagrams(max) {
        let (action, out) = handle(&r, &datagram, LocalPort::Primary);
        assert_eq!(action, Action::Drop(reason), "{what}");
        assert!(out.is_empty(), "{what}");
    }
}

#[test]
fn a_request_of_exactly_the_maximum_size_is_processed() {
    let c = config();
    let max = c.max_request_size;
    let r = responder(c);
    let pad = vec![0u8; max - 20 - 4 - 8];
    let req = request(&[Attribute::Padding(&pad)]);
    assert_eq!(req.len(), max);
    assert_eq!(
        reply(handle(&r, &req, LocalPort::Primary).0).kind,
        ReplyKind::Success
    );
}

#[test]
fn source_port_zero_is_not_answered() {
    let r = responder(config());
    let mut out = Vec::new();
    let action = r.handle_datagram(
        &request(&[]),
        addr("192.0.2.1:0"),
        LocalPort::Primary,
        Instant::now(),
        &mut out,
    );
    assert_eq!(action, Action::Drop(DropReason::DeniedDestination));
}

#[test]
fn answers_are_rate_limited_per_source_and_drops_cost_nothing() {
    let mut c = config();
    c.rate_limit = RateLimit {
        per_second: 1.0,
        burst: 2.0,
    };
    let r = responder(c);
    let now = Instant::now();
    let mut out = Vec::new();
    let mut go = |datagram: &[u8], source: &str, at: Instant| {
        r.handle_datagram(datagram, addr(source), LocalPort::Primary, at, &mut out)
    };
    let good = request(&[]);
    let junk = [0xFFu8; 40];
    for _ in 0..10 {
        assert_eq!(
            go(&junk, "192.0.2.1:1", now),
            Action::Drop(DropReason::NotStun)
        );
    }
    assert!(matches!(go(&good, "192.0.2.1:1", now), Action::Reply(_)));
    // errors and forwards count too
    let unknown = request(&[Attribute::Unknown {
        typ: AttributeType::new(0x7001),
        value: &[],
    }]);
    assert!(matches!(go(&unknown, "192.0.2.1:2", now), Action::Reply(_)));
    assert_eq!(
        go(&good, "192.0.2.1:3", now),
        Action::Drop(DropReason::RateLimited)
    );
    let forward = request(&[change(true, false)]);
    assert_eq!(
        go(&forward, "192.0.2.1:3", now),
        Action::Drop(DropReason::RateLimited)
    );
    // another source is not affected
    assert!(matches!(go(&good, "192.0.2.2:1", now), Action::Reply(_)));
    // a second later one more answer
    let later = now + Duration::from_secs(1);
    assert!(matches!(
        go(&forward, "192.0.2.1:4", later),
        Action::Forward(_)
    ));
    assert_eq!(
        go(&good, "192.0.2.1:4", later),
        Action::Drop(DropReason::RateLimited)
    );
}

fn partner_request(change_port: bool, received_on: LocalPort) -> PartnerRequest {
    PartnerRequest {
        transaction_id: TID,
        client: client(),
        response_port: None,
        change_port,
        received_on,
        padding_len: 0,
        rfc5780_attributes: true,
    }
}

/// stun-b, answering for stun-a.
fn partner_responder(adjust: impl FnOnce(&mut Config)) -> StunResponder {
    let mut c = Config::loopback_pair(PairMember::B, PairPorts::default());
    c.rate_limit = RateLimit::OFF;
    adjust(&mut c);
    responder(c)
}

#[test]
fn the_partner_answers_from_the_port_rfc5780_table_1_names() {
    let b = partner_responder(|_| {});
    let now = Instant::now();
    for (change_port, received_on, from, origin) in [
        (
            false,
            LocalPort::Primary,
            LocalPort::Primary,
            "127.0.0.2:3478",
        ),
        (
            true,
            LocalPort::Primary,
            LocalPort::Alternate,
            "127.0.0.2:3479",
        ),
        (
            false,
            LocalPort::Alternate,
            LocalPort::Alternate,
            "127.0.0.2:3479",
        ),
        (
            true,
            LocalPort::Alternate,
            LocalPort::Primary,
            "127.0.0.2:3478",
        ),
    ] {
        let mut out = Vec::new();
        let rep = b
            .handle_partner_request(
                &partner_request(change_port, received_on),
                Duration::from_millis(3),
                now,
                &mut out,
            )
            .unwrap();
        assert_eq!((rep.from, rep.to), (from, client()));
        let m = success(&out);
        assert_eq!(
            m.get(AttributeType::RESPONSE_ORIGIN),
            Some(Attribute::ResponseOrigin(addr(origin)))
        );
        // Ca:Cp seen from the original destination: b's IP, the other port of the one it
        // arrived on at a
        let other = match received_on {
            LocalPort::Primary => "127.0.0.2:3479",
            LocalPort::Alternate => "127.0.0.2:3478",
        };
        assert_eq!(
            m.get(AttributeType::OTHER_ADDRESS),
            Some(Attribute::OtherAddress(addr(other)))
        );
    }
}

#[test]
fn the_partner_honours_response_port_and_padding_within_its_cap() {
    let b = partner_responder(|c| c.max_padding = 100);
    let mut request = partner_request(false, LocalPort::Primary);
    request.response_port = Some(7000);
    request.padding_len = 1000;
    let mut out = Vec::new();
    let rep = b
        .handle_partner_request(&request, Duration::ZERO, Instant::now(), &mut out)
        .unwrap();
    assert_eq!(rep.to, addr("192.0.2.10:7000"));
    let Some(Attribute::Padding(p)) = success(&out).get(AttributeType::PADDING) else {
        panic!("no PADDING")
    };
    assert_eq!(p.len(), 100);
}

#[test]
fn the_partner_refuses_stale_disabled_denied_and_rate_limited_requests() {
    let now = Instant::now();
    let mut out = Vec::new();
    let b = partner_responder(|_| {});
    let fresh = partner_request(false, LocalPort::Primary);
    assert_eq!(
        b.handle_partner_request(&fresh, Duration::from_millis(501), now, &mut out),
        Err(Refusal::Stale)
    );
    for client in [
        "192.0.2.1:0",
        "0.0.0.0:5",
        "224.0.0.1:5",
        "255.255.255.255:5",
        "[2001:db8::1]:5",
    ] {
        let mut r = fresh;
        r.client = addr(client);
        assert_eq!(
            b.handle_partner_request(&r, Duration::ZERO, now, &mut out),
            Err(Refusal::DeniedDestination),
            "{client}"
        );
    }
    let off = partner_responder(|c| c.rfc5780 = false);
    assert_eq!(
        off.handle_partner_request(&fresh, Duration::ZERO, now, &mut out),
        Err(Refusal::Disabled)
    );
    let limited = partner_responder(|c| {
        c.rate_limit = RateLimit {
            per_second: 1.0,
            burst: 1.0,
        }
    });
    assert!(
        limited
            .handle_partner_request(&fresh, Duration::ZERO, now, &mut out)
            .is_ok()
    );
    assert_eq!(
        limited.handle_partner_request(&fresh, Duration::ZERO, now, &mut out),
        Err(Refusal::RateLimited)
    );
    assert!(out.is_empty());
}

#[test]
fn forwarded_padding_keeps_the_partners_response_within_the_request_size() {
    let r = responder(config());
    let b = partner_responder(|_| {});
    let pad = vec![0u8; 600];
    let req = request(&[change(true, true), Attribute::Padding(&pad)]);
    let (action, _) = handle(&r, &req, LocalPort::Primary);
    let Action::Forward(f) = action else {
        panic!("{action:?}")
    };
    assert!(f.padding_len > 0);
    let mut out = Vec::new();
    b.handle_partner_request(&f, Duration::ZERO, Instant::now(), &mut out)
        .unwrap();
    assert!(out.len() <= req.len(), "{} > {}", out.len(), req.len());
    assert!(req.len() - out.len() < 8);
}

proptest! {
    /// Whatever arrives: no panic, and an answer is never larger than the request or a small
    /// fixed size (the amplification bound).
    #[test]
    fn never_panics_and_never_amplifies(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        on_alternate in any::<bool>(),
    ) {
        let r = responder(config());
        let on = if on_alternate { LocalPort::Alternate } else { LocalPort::Primary };
        let (action, out) = handle(&r, &bytes, on);
        if let Action::Reply(_) = action {
            prop_assert!(out.len() <= bytes.len().max(128));
        } else {
            prop_assert!(out.is_empty());
        }
    }

    /// Valid requests with arbitrary attributes: parses back, bounded size.
    #[test]
    fn valid_requests_get_well_formed_bounded_answers(
        change_ip in any::<bool>(),
        change_port in any::<bool>(),
        response_port in proptest::option::of(any::<u16>()),
        padding in proptest::option::of(0usize..1600),
        unknown in proptest::option::of(0u16..0x8000),
    ) {
        let r = responder(config());
        let pad = vec![7u8; padding.unwrap_or(0)];
        let mut attributes = vec![change(change_ip, change_port)];
        if let Some(p) = response_port { attributes.push(Attribute::ResponsePort(p)); }
        if padding.is_some() { attributes.push(Attribute::Padding(&pad)); }
        if let Some(t) = unknown.filter(|t| !AttributeType::new(*t).is_known()) {
            attributes.push(Attribute::Unknown { typ: AttributeType::new(t), value: &[] });
        }
        let req = request(&attributes);
        let (action, out) = handle(&r, &req, LocalPort::Primary);
        match action {
            Action::Reply(_) => {
                let m = Message::parse(&out).unwrap();
                prop_assert!(m.verify_fingerprint().is_ok());
                prop_assert_eq!(m.transaction_id(), TID);
                prop_assert!(out.len() <= req.len().max(128));
            }
            Action::Forward(f) => {
                prop_assert!(change_ip);
                prop_assert_eq!(f.change_port, change_port);
            }
            Action::Drop(reason) => prop_assert!(false, "valid request dropped: {reason:?}"),
        }
    }
}
