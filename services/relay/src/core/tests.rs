//! The sans-IO core, request by request, with a simulated clock: every RFC behaviour and error,
//! each counted, none disturbing an allocation that is not its target.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use quickp2p_wire::stun::{
    Attribute, AttributeType, ErrorCode, LongTermKey, Message, MessageBuilder, MessageClass,
    MessageType, Method, PROTOCOL_TCP, PROTOCOL_UDP, TransactionId,
};
use quickp2p_wire::{ChannelData, ChannelDataPadding, ChannelNumber};

use super::*;
use crate::config::Config;
use crate::counters::{DropReason, EndCause, Refusal, RequestMethod};
use crate::credentials::mint_credentials;

const SECRET: &str = "test-shared-secret";
const UNIX_START: u64 = 1_700_000_000;
const RELAY_IP: &str = "203.0.113.10";

fn config() -> Config {
    let mut c = Config::loopback_dev(SECRET);
    let ip = RELAY_IP.parse().unwrap();
    c.listen = SocketAddr::new(ip, 3482);
    c.advertised = c.listen;
    c.relay_ip = ip;
    c.relay_advertised_ip = ip;
    c.peer_policy.allow_loopback = false;
    c.user_quota = 2;
    c.capacity = 5;
    c
}

/// What the server did with one datagram, owned.
#[derive(Debug)]
enum Outcome {
    Reply(Vec<u8>),
    Relay {
        via: u32,
        peer: SocketAddr,
        payload: Vec<u8>,
    },
    Drop(DropReason),
}

impl Outcome {
    fn reply(&self) -> Message<'_> {
        match self {
            Outcome::Reply(bytes) => Message::parse(bytes).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn error_code(&self) -> Option<u16> {
        let m = self.reply();
        match m.get(AttributeType::ERROR_CODE) {
            Some(Attribute::ErrorCode(e)) => Some(e.code),
            _ => None,
        }
    }
}

struct Harness {
    server: TurnServer<u32>,
    start: Instant,
    now: Instant,
    next_port: u16,
    next_tid: u32,
}

impl Harness {
    fn new(config: Config) -> Harness {
        let start = Instant::now();
        let state = Arc::new(RelayState::new(
            Arc::new(config),
            Clock::new(start, Duration::from_secs(UNIX_START)),
            [42; 32],
        ));
        Harness {
            server: TurnServer::new(state),
            start,
            now: start,
            next_port: 50_000,
            next_tid: 0,
        }
    }

    fn state(&self) -> &RelayState {
        self.server.state()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
    }

    fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        let mut id = [7u8; 12];
        id[..4].copy_from_slice(&self.next_tid.to_be_bytes());
        TransactionId::new(id)
    }

    fn send(&mut self, from: SocketAddr, datagram: &[u8]) -> Outcome {
        let mut out = Vec::new();
        let now = self.now;
        match self
            .server
            .handle_client_datagram(datagram, from, now, &mut out)
        {
            ClientAction::Reply { to } => {
                assert_eq!(to, from);
                Outcome::Reply(out)
            }
            ClientAction::Relay { via, peer, payload } => Outcome::Relay {
                via: *via,
                peer,
                payload: datagram[payload].to_vec(),
            },
            ClientAction::Drop(r) => Outcome::Drop(r),
            ClientAction::Allocate(pending) => {
                assert_eq!(pending.client, from);
                let port = if pending.even_port && self.next_port % 2 == 1 {
                    self.next_port + 1
                } else {
                    self.next_port
                };
                self.next_port = port + 1;
                let completed = self.server.complete_allocation(
                    pending,
                    Some((port, u32::from(port))),
                    now,
                    &mut out,
                );
                assert_eq!(completed.to, from);
                assert!(completed.allocation.is_some());
                Outcome::Reply(out)
            }
        }
    }
}

/// A TURN client: an address and credentials, learning the nonce from 401s.
#[derive(Clone)]
struct Client {
    addr: SocketAddr,
    username: String,
    password: String,
    nonce: std::cell::RefCell<Vec<u8>>,
    fingerprint: bool,
}

impl Client {
    fn new(addr: &str, user: &str) -> Client {
        let c = mint_credentials(
            SECRET.as_bytes(),
            user,
            Duration::from_secs(3600),
            UNIX_START,
        )
        .unwrap();
        Client {
            addr: addr.parse().unwrap(),
            username: c.username,
            password: c.password,
            nonce: std::cell::RefCell::new(Vec::new()),
            fingerprint: true,
        }
    }

    fn key(&self) -> LongTermKey {
        LongTermKey::md5(&self.username, "quickp2p", &self.password)
    }

    /// A request with credentials (and FINGERPRINT), after `attrs`.
    fn request(&self, tid: TransactionId, method: Method, attrs: &[Attribute<'_>]) -> Vec<u8> {
        let mut all = attrs.to_vec();
        all.push(Attribute::Username(&self.username));
        all.push(Attribute::Realm("quickp2p"));
        let nonce = self.nonce.borrow().clone();
        all.push(Attribute::Nonce(&nonce));
        let key = self.key();
        let mut b = MessageBuilder::new(MessageType::new(method, MessageClass::Request), tid)
            .attributes(&all)
            .message_integrity(key.as_bytes());
        if self.fingerprint {
            b = b.fingerprint();
        }
        b.to_vec().unwrap()
    }

    /// Learns a nonce with an unauthenticated Allocate (checking the 401).
    fn learn_nonce(&mut self, h: &mut Harness) {
        let tid = h.tid();
        let bare = MessageBuilder::new(
            MessageType::new(Method::ALLOCATE, MessageClass::Request),
            tid,
        )
        .attributes(&[Attribute::RequestedTransport(PROTOCOL_UDP)])
        .to_vec()
        .unwrap();
        let out = h.send(self.addr, &bare);
        let m = out.reply();
        assert_eq!(m.class(), MessageClass::ErrorResponse);
        assert_eq!(out.error_code(), Some(401));
        assert!(!m.has_integrity(quickp2p_wire::stun::IntegrityAlgorithm::Sha1));
        assert_eq!(
            m.get(AttributeType::REALM),
            Some(Attribute::Realm("quickp2p"))
        );
        let Some(Attribute::Nonce(n)) = m.get(AttributeType::NONCE) else {
            panic!("no nonce")
        };
        *self.nonce.borrow_mut() = n.to_vec();
    }

    /// One request, as is.
    fn call_once(&self, h: &mut Harness, method: Method, attrs: &[Attribute<'_>]) -> Outcome {
        let tid = h.tid();
        let bytes = self.request(tid, method, attrs);
        h.send(self.addr, &bytes)
    }

    /// A request, retried once with the fresh nonce of a 438 (what clients do).
    fn call(&self, h: &mut Harness, method: Method, attrs: &[Attribute<'_>]) -> Outcome {
        let out = self.call_once(h, method, attrs);
        if out.error_code() != Some(438) {
            return out;
        }
        if let Some(Attribute::Nonce(n)) = out.reply().get(AttributeType::NONCE) {
            *self.nonce.borrow_mut() = n.to_vec();
        }
        self.call_once(h, method, attrs)
    }

    /// Allocates; returns the relayed address.
    fn allocate(&mut self, h: &mut Harness) -> SocketAddr {
        if self.nonce.borrow().is_empty() {
            self.learn_nonce(h);
        }
        let out = self.call(
            h,
            Method::ALLOCATE,
            &[Attribute::RequestedTransport(PROTOCOL_UDP)],
        );
        let m = out.reply();
        assert_eq!(
            m.class(),
            MessageClass::SuccessResponse,
            "{:?}",
            out.error_code()
        );
        m.verify_message_integrity(self.key().as_bytes()).unwrap();
        m.verify_fingerprint().unwrap();
        assert_eq!(
            m.get(AttributeType::LIFETIME),
            Some(Attribute::Lifetime(600))
        );
        assert_eq!(
            m.get(AttributeType::XOR_MAPPED_ADDRESS),
            Some(Attribute::XorMappedAddress(self.addr))
        );
        match m.get(AttributeType::XOR_RELAYED_ADDRESS) {
            Some(Attribute::XorRelayedAddress(a)) => a,
            _ => panic!("no relayed address"),
        }
    }

    fn permit(&self, h: &mut Harness, peer: SocketAddr) -> Outcome {
        self.call(
            h,
            Method::CREATE_PERMISSION,
            &[Attribute::XorPeerAddress(peer)],
        )
    }

    fn bind(&self, h: &mut Harness, channel: u16, peer: SocketAddr) -> Outcome {
        self.call(
            h,
            Method::CHANNEL_BIND,
            &[
                Attribute::ChannelNumber(channel),
                Attribute::XorPeerAddress(peer),
            ],
        )
    }

    fn channel_data(&self, h: &mut Harness, channel: u16, data: &[u8]) -> Outcome {
        let mut bytes = channel.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(data.len() as u16).to_be_bytes());
        bytes.extend_from_slice(data);
        if channel < 0x5000 {
            let mut wire = Vec::new();
            ChannelData::new(ChannelNumber::new(channel).unwrap(), data)
                .unwrap()
                .encode_into(&mut wire, ChannelDataPadding::None);
            assert_eq!(wire, bytes);
        }
        h.send(self.addr, &bytes)
    }
}

fn is_success(out: &Outcome) -> bool {
    out.reply().class() == MessageClass::SuccessResponse
}

const PEER: &str = "198.51.100.20:4000";

/// A client with an allocation and a channel to PEER, whose relaying is checked after each
/// error case (errors must not disturb it).
struct Bystander {
    client: Client,
    relayed: SocketAddr,
}

impl Bystander {
    fn new(h: &mut Harness) -> Bystander {
        let mut client = Client::new("198.51.100.99:7000", "bystander");
        let relayed = client.allocate(h);
        assert!(is_success(&client.call(
            h,
            Method::REFRESH,
            &[Attribute::Lifetime(3600)]
        )));
        assert!(is_success(&client.bind(h, 0x4000, PEER.parse().unwrap())));
        let b = Bystander { client, relayed };
        b.check(h);
        b
    }

    fn check(&self, h: &mut Harness) {
        // a client refreshes its binding (and so its permission) as time goes by
        assert!(is_success(&self.client.bind(
            h,
            0x4000,
            PEER.parse().unwrap()
        )));
        match self.client.channel_data(h, 0x4000, b"still here") {
            Outcome::Relay { via, peer, payload } => {
                assert_eq!(via, u32::from(self.relayed.port()));
                assert_eq!(peer, PEER.parse::<SocketAddr>().unwrap());
                assert_eq!(payload, b"still here");
            }
            other => panic!("bystander disturbed: {other:?}"),
        }
        let info = h.server.allocation(self.client.addr).unwrap().clone();
        assert_eq!(
            info.verdict(PEER.parse().unwrap(), h.now),
            PeerVerdict::Channel(0x4000)
        );
    }
}

#[test]
fn allocate_after_a_challenge_then_relay_both_ways() {
    let mut h = Harness::new(config());
    let mut alice = Client::new("198.51.100.20:5000", "alice");
    let relayed = alice.allocate(&mut h);
    assert_eq!(relayed, SocketAddr::new(RELAY_IP.parse().unwrap(), 50_000));
    assert_eq!(h.state().counters().challenges(), 1);
    assert_eq!(h.state().counters().created(), 1);
    assert_eq!(h.state().allocations(), 1);
    assert_eq!(h.state().user_allocations("alice"), 1);

    let peer: SocketAddr = "198.51.100.30:6000".parse().unwrap();
    // nothing is relayed before a permission
    let info = h.server.allocation(alice.addr).unwrap().clone();
    assert_eq!(info.verdict(peer, h.now), PeerVerdict::NoPermission);
    assert!(matches!(
        alice.channel_data(&mut h, 0x4001, b"x"),
        Outcome::Drop(DropReason::NoChannel)
    ));

    let out = alice.permit(&mut h, peer);
    assert!(is_success(&out));
    out.reply()
        .verify_message_integrity(alice.key().as_bytes())
        .unwrap();
    assert_eq!(info.verdict(peer, h.now), PeerVerdict::Indication);

    // Send indication → relayed without copy
    let tid = h.tid();
    let send = MessageBuilder::new(
        MessageType::new(Method::SEND, MessageClass::Indication),
        tid,
    )
    .attributes(&[
        Attribute::XorPeerAddress(peer),
        Attribute::Data(b"hello peer"),
    ])
    .to_vec()
    .unwrap();
    match h.send(alice.addr, &send) {
        Outcome::Relay {
            via,
            peer: p,
            payload,
        } => {
            assert_eq!(
                (via, p, payload.as_slice()),
                (50_000, peer, &b"hello peer"[..])
            );
        }
        other => panic!("{other:?}"),
    }

    // channel
    assert!(is_success(&alice.bind(&mut h, 0x4001, peer)));
    assert_eq!(info.verdict(peer, h.now), PeerVerdict::Channel(0x4001));
    match alice.channel_data(&mut h, 0x4001, b"over the channel") {
        Outcome::Relay {
            payload, peer: p, ..
        } => {
            assert_eq!((p, payload.as_slice()), (peer, &b"over the channel"[..]))
        }
        other => panic!("{other:?}"),
    }
    // another port of a permitted IP gets Data indications (permissions are per IP)
    let other_port: SocketAddr = "198.51.100.30:6001".parse().unwrap();
    assert_eq!(info.verdict(other_port, h.now), PeerVerdict::Indication);
    let mut frame = Vec::new();
    encode_data_indication(other_port, b"back", TransactionId::new([1; 12]), &mut frame).unwrap();
    let m = Message::parse(&frame).unwrap();
    assert_eq!(
        m.message_type(),
        MessageType::new(Method::DATA, MessageClass::Indication)
    );
    assert_eq!(
        m.get(AttributeType::XOR_PEER_ADDRESS),
        Some(Attribute::XorPeerAddress(other_port))
    );
    assert_eq!(m.get(AttributeType::DATA), Some(Attribute::Data(b"back")));
    assert_eq!(
        parse_channel_data(&[0x40, 0, 0, 1, 9, 0, 0, 0]),
        Some((0x4000, 4..5))
    );
    assert_eq!(
        parse_channel_data(&[0x40, 0, 0, 1, 9, 0, 0, 0, 0]),
        None,
        "more than padding"
    );
    assert_eq!(parse_channel_data(&[0x40, 0, 0, 5, 9]), None, "truncated");
    let mut header = [0u8; 4];
    write_channel_header(&mut header, 0x4001, 300);
    assert_eq!(header, [0x40, 0x01, 0x01, 0x2c]);
    assert_eq!(info.to_peer.get(), (2, 26));

    // permissions last 300 s, channels 600 s
    h.advance(Duration::from_secs(301));
    assert_eq!(info.verdict(peer, h.now), PeerVerdict::NoPermission);
    assert!(matches!(
        alice.channel_data(&mut h, 0x4001, b"x"),
        Outcome::Drop(DropReason::NoChannel)
    ));
}

#[test]
fn binding_requests_are_answered() {
    let mut h = Harness::new(config());
    let from: SocketAddr = "198.51.100.20:5000".parse().unwrap();
    let tid = h.tid();
    let req = MessageBuilder::new(MessageType::BINDING_REQUEST, tid)
        .fingerprint()
        .to_vec()
        .unwrap();
    let out = h.send(from, &req);
    let m = out.reply();
    assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
    assert_eq!(
        m.get(AttributeType::XOR_MAPPED_ADDRESS),
        Some(Attribute::XorMappedAddress(from))
    );
    m.verify_fingerprint().unwrap();
}

#[test]
fn bad_credentials_get_401_and_are_counted() {
    let mut h = Harness::new(config());
    let bystander = Bystander::new(&mut h);
    let mut mallory = Client::new("198.51.100.66:5000", "mallory");
    mallory.learn_nonce(&mut h);
    mallory.password = "guessed".into();
    let out = mallory.call(
        &mut h,
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(PROTOCOL_UDP)],
    );
    assert_eq!(out.error_code(), Some(401));
    let m = out.reply();
    assert!(m.get(AttributeType::NONCE).is_some() && m.get(AttributeType::REALM).is_some());
    assert!(!m.has_integrity(quickp2p_wire::stun::IntegrityAlgorithm::Sha1));
    // wrong realm, and a username that is not of the scheme
    let mut other = Client::new("198.51.100.67:5000", "x");
    other.learn_nonce(&mut h);
    other.username = "plainuser".into();
    assert_eq!(
        other
            .call(
                &mut h,
                Method::ALLOCATE,
                &[Attribute::RequestedTransport(PROTOCOL_UDP)]
            )
            .error_code(),
        Some(401)
    );
    // missing NONCE → 400
    let tid = h.tid();
    let key = mallory.key();
    let no_nonce = MessageBuilder::new(
        MessageType::new(Method::ALLOCATE, MessageClass::Request),
        tid,
    )
    .attributes(&[
        Attribute::RequestedTransport(PROTOCOL_UDP),
        Attribute::Username(&mallory.username),
    ])
    .message_integrity(key.as_bytes())
    .to_vec()
    .unwrap();
    assert_eq!(h.send(mallory.addr, &no_nonce).error_code(), Some(400));
    let c = h.state().counters();
    assert_eq!(
        c.refusals_of(RequestMethod::Allocate, Refusal::BadCredentials),
        2
    );
    assert_eq!(
        c.refusals_of(RequestMethod::Allocate, Refusal::Malformed),
        1
    );
    assert_eq!(h.state().allocations(), 1);
    bystander.check(&mut h);
}

#[test]
fn stale_nonces_get_438_with_a_fresh_one() {
    let mut h = Harness::new(config());
    let bystander = Bystander::new(&mut h);
    let mut bob = Client::new("198.51.100.21:5000", "bob");
    bob.learn_nonce(&mut h);
    // a nonce issued to another IP is not valid here
    let mut thief = bob.clone();
    thief.addr = "198.51.100.22:5000".parse().unwrap();
    assert_eq!(
        thief
            .call_once(
                &mut h,
                Method::ALLOCATE,
                &[Attribute::RequestedTransport(PROTOCOL_UDP)]
            )
            .error_code(),
        Some(438)
    );
    // nonces expire after 600 s
    h.advance(Duration::from_secs(601));
    let out = bob.call_once(
        &mut h,
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(PROTOCOL_UDP)],
    );
    assert_eq!(out.error_code(), Some(438));
    let m = out.reply();
    assert_eq!(
        m.get(AttributeType::REALM),
        Some(Attribute::Realm("quickp2p"))
    );
    let Some(Attribute::Nonce(fresh)) = m.get(AttributeType::NONCE) else {
        panic!()
    };
    assert_ne!(fresh, bob.nonce.borrow().as_slice());
    *bob.nonce.borrow_mut() = fresh.to_vec();
    bob.allocate(&mut h);
    assert_eq!(h.state().counters().refusals(Refusal::StaleNonce), 2);
    // the bystander's nonce is stale too, but its relaying never depended on it
    bystander.check(&mut h);
}

#[test]
fn expired_usernames_cannot_allocate_but_allocations_outlive_them() {
    let mut h = Harness::new(config());
    let mut late = Client::new("198.51.100.23:5000", "late");
    let c = mint_credentials(
        SECRET.as_bytes(),
        "late",
        Duration::from_secs(10),
        UNIX_START,
    )
    .unwrap();
    late.username = c.username;
    late.password = c.password;
    late.allocate(&mut h);
    h.advance(Duration::from_secs(11));
    // refreshing the existing allocation still works
    let out = late.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(600)]);
    assert!(is_success(&out), "{:?}", out.error_code());
    // a new allocation from another 5-tuple does not
    let mut again = late.clone();
    again.addr = "198.51.100.23:5001".parse().unwrap();
    again.learn_nonce(&mut h);
    let out = again.call(
        &mut h,
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(PROTOCOL_UDP)],
    );
    assert_eq!(out.error_code(), Some(401));
    assert_eq!(
        h.state().counters().refusals(Refusal::ExpiredCredentials),
        1
    );
}

#[test]
fn allocations_expire_and_refresh_extends_or_deletes() {
    let mut h = Harness::new(config());
    let bystander = Bystander::new(&mut h);
    let mut carol = Client::new("198.51.100.24:5000", "carol");
    carol.allocate(&mut h);
    // LIFETIME 1200 is granted; a short request gets the default
    let out = carol.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(1200)]);
    assert_eq!(
        out.reply().get(AttributeType::LIFETIME),
        Some(Attribute::Lifetime(1200))
    );
    let out = carol.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(5)]);
    assert_eq!(
        out.reply().get(AttributeType::LIFETIME),
        Some(Attribute::Lifetime(600))
    );
    // keep the bystander alive, let carol's run out
    for _ in 0..6 {
        h.advance(Duration::from_secs(100));
        assert!(is_success(&bystander.client.call(
            &mut h,
            Method::REFRESH,
            &[]
        )));
    }
    h.advance(Duration::from_secs(1));
    assert!(h.server.allocation(carol.addr).is_none());
    assert_eq!(h.state().counters().ended(EndCause::Expired), 1);
    assert_eq!(
        carol.call(&mut h, Method::REFRESH, &[]).error_code(),
        Some(437)
    );
    assert!(matches!(
        carol.channel_data(&mut h, 0x4000, b"x"),
        Outcome::Drop(DropReason::NoAllocation)
    ));
    // LIFETIME 0 deletes
    let mut dave = Client::new("198.51.100.25:5000", "dave");
    dave.allocate(&mut h);
    let out = dave.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(0)]);
    assert_eq!(
        out.reply().get(AttributeType::LIFETIME),
        Some(Attribute::Lifetime(0))
    );
    assert_eq!(h.state().counters().ended(EndCause::Released), 1);
    assert_eq!(h.state().user_allocations("dave"), 0);
    assert_eq!(h.state().allocations(), 1);
    assert!(h.state().list_allocations(None, 10, |_| true).len() == 1);
    bystander.check(&mut h);
}

#[test]
fn the_user_quota_gives_486() {
    let mut h = Harness::new(config());
    let bystander = Bystander::new(&mut h);
    let mut first = Client::new("198.51.100.26:5000", "erin");
    let mut second = Client::new("198.51.100.26:5001", "erin");
    let mut third = Client::new("198.51.100.26:5002", "erin");
    first.allocate(&mut h);
    second.allocate(&mut h);
    third.learn_nonce(&mut h);
    let out = third.call(
        &mut h,
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(PROTOCOL_UDP)],
    );
    assert_eq!(out.error_code(), Some(486));
    out.reply()
        .verify_message_integrity(third.key().as_bytes())
        .unwrap();
    assert_eq!(
        h.state()
            .counters()
            .refusals_of(RequestMethod::Allocate, Refusal::QuotaExceeded),
        1
    );
    // releasing one makes room
    assert!(is_success(&first.call(
        &mut h,
        Method::REFRESH,
        &[Attribute::Lifetime(0)]
    )));
    third.allocate(&mut h);
    bystander.check(&mut h);
}

#[test]
fn capacity_and_draining_give_508() {
    let mut cfg = config();
    cfg.capacity = 2;
    let mut h = Harness::new(cfg);
    let bystander = Bystander::new(&mut h);
    let mut a = Client::new("198.51.100.27:5000", "frank");
    a.allocate(&mut h);
    let mut b = Client::new("198.51.100.27:5001", "grace");
    b.learn_nonce(&mut h);
    assert_eq!(
        b.call(
            &mut h,
            Method::ALLOCATE,
            &[Attribute::RequestedTransport(PROTOCOL_UDP)]
        )
        .error_code(),
        Some(508)
    );
    assert!(is_success(&a.call(
        &mut h,
        Method::REFRESH,
        &[Attribute::Lifetime(0)]
    )));
    h.state().set_draining(true);
    let out = b.call(
        &mut h,
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(PROTOCOL_UDP)],
    );
    assert_eq!(out.error_code(), Some(508));
    let c = h.state().counters();
    assert_eq!(
        (
            c.refusals(Refusal::InsufficientCapacity),
            c.refusals(Refusal::Draining)
        ),
        (1, 1)
    );
    // existing allocations keep working while draining
    assert!(is_success(&bystander.client.call(
        &mut h,
        Method::REFRESH,
        &[]
    )));
    bystander.check(&mut h);
    h.state().set_draining(false);
    b.allocate(&mut h);
}

#[test]
fn denied_peer_addresses_get_403_and_nothing_is_installed() {
    let mut h = Harness::new(config());
    let bystander = Bystander::new(&mut h);
    let mut ivan = Client::new("198.51.100.28:5000", "ivan");
    ivan.allocate(&mut h);
    for denied in [
        "10.0.0.1:9",
        "127.0.0.1:9",
        "192.168.1.1:9",
        "169.254.0.1:9",
        "224.0.0.1:9",
        "0.0.0.0:9",
    ] {
        let out = ivan.permit(&mut h, denied.parse().unwrap());
        assert_eq!(out.error_code(), Some(403), "{denied}");
        out.reply()
            .verify_message_integrity(ivan.key().as_bytes())
            .unwrap();
    }
    // channels name an exact address: the relay's own listener and ports outside its range are
    // refused; so is a private address
    for denied in [
        "172.16.0.1:9",
        "203.0.113.10:9090",
        "203.0.113.10:3482",
        "198.51.100.1:0",
    ] {
        assert_eq!(
            ivan.bind(&mut h, 0x4000, denied.parse().unwrap())
                .error_code(),
            Some(403),
            "{denied}"
        );
    }
    // a permission for the relay's own IP covers its relay range only: Send indications to its
    // other ports are dropped
    assert!(is_success(
        &ivan.permit(&mut h, "203.0.113.10:0".parse().unwrap())
    ));
    let tid = h.tid();
    let send = MessageBuilder::new(
        MessageType::new(Method::SEND, MessageClass::Indication),
        tid,
    )
    .attributes(&[
        Attribute::XorPeerAddress("203.0.113.10:3482".parse().unwrap()),
        Attribute::Data(b"loop"),
    ])
    .to_vec()
    .unwrap();
    assert!(matches!(
        h.send(ivan.addr, &send),
        Outcome::Drop(DropReason::DeniedPeer)
    ));
    // all or nothing: an allowed peer listed with a denied one is not installed either
    let ok: SocketAddr = "198.51.100.40:9".parse().unwrap();
    let out = ivan.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[
            Attribute::XorPeerAddress(ok),
            Attribute::XorPeerAddress("10.1.1.1:9".parse().unwrap()),
        ],
    );
    assert_eq!(out.error_code(), Some(403));
    let info = h.server.allocation(ivan.addr).unwrap().clone();
    assert_eq!(info.verdict(ok, h.now), PeerVerdict::NoPermission);
    // another allocation on this relay (its own range) is a fine peer
    assert!(is_success(&ivan.permit(&mut h, bystander.relayed)));
    assert_eq!(
        h.state().counters().refusals(Refusal::DeniedPeerAddress),
        11
    );
    bystander.check(&mut h);

    // loopback is allowed when configured (the all-in-one dev mode)
    let mut dev = config();
    dev.peer_policy.allow_loopback = true;
    let mut h = Harness::new(dev);
    let mut judy = Client::new("198.51.100.29:5000", "judy");
    judy.allocate(&mut h);
    assert!(is_success(
        &judy.permit(&mut h, "127.0.0.1:3480".parse().unwrap())
    ));
    assert_eq!(
        judy.permit(&mut h, "10.0.0.1:1".parse().unwrap())
            .error_code(),
        Some(403)
    );
}

#[test]
fn wrong_transport_gets_442() {
    let mut h = Harness::new(config());
    let bystander = Bystander::new(&mut h);
    let mut kim = Client::new("198.51.100.31:5000", "kim");
    kim.learn_nonce(&mut h);
    let out = kim.call(
        &mut h,
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(PROTOCOL_TCP)],
    );
    assert_eq!(out.error_code(), Some(442));
    assert_eq!(
        kim.call(&mut h, Method::ALLOCATE, &[]).error_code(),
        Some(400)
    );
    let c = h.state().counters();
    assert_eq!(
        c.refusals_of(RequestMethod::Allocate, Refusal::UnsupportedTransport),
        1
    );
    assert_eq!(h.state().user_allocations("kim"), 0);
    bystander.check(&mut h);
}

#[test]
fn allocation_mismatch_gets_437_and_retransmissions_the_same_success() {
    let mut h = Harness::new(config());
    let bystander = Bystander::new(&mut h);
    let mut leo = Client::new("198.51.100.32:5000", "leo");
    leo.learn_nonce(&mut h);
    let tid = h.tid();
    let request = leo.request(
        tid,
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(PROTOCOL_UDP)],
    );
    let first = h.send(leo.addr, &request);
    let again = h.send(leo.addr, &request);
    assert!(is_success(&first) && is_success(&again));
    assert_eq!(
        first.reply().get(AttributeType::XOR_RELAYED_ADDRESS),
        again.reply().get(AttributeType::XOR_RELAYED_ADDRESS)
    );
    assert_eq!(h.state().allocations(), 2);
    // a new Allocate on the same 5-tuple
    let out = leo.call(
        &mut h,
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(PROTOCOL_UDP)],
    );
    assert_eq!(out.error_code(), Some(437));
    // requests without an allocation
    let mut mia = Client::new("198.51.100.33:5000", "mia");
    mia.learn_nonce(&mut h);
    assert_eq!(
        mia.call(&mut h, Method::REFRESH, &[]).error_code(),
        Some(437)
    );
    assert_eq!(
        mia.permit(&mut h, "198.51.100.1:1".parse().unwrap())
            .error_code(),
        Some(437)
    );
    assert_eq!(
        mia.bind(&mut h, 0x4000, "198.51.100.1:1".parse().unwrap())
            .error_code(),
        Some(437)
    );
    assert_eq!(
        h.state().counters().refusals(Refusal::AllocationMismatch),
        4
    );
    // another user on leo's allocation: 441
    let impostor = Client::new("198.51.100.32:5000", "nina");
    *impostor.nonce.borrow_mut() = leo.nonce.borrow().clone();
    assert_eq!(
        impostor.call(&mut h, Method::REFRESH, &[]).error_code(),
        Some(441)
    );
    assert_eq!(h.state().counters().refusals(Refusal::WrongCredentials), 1);
    bystander.check(&mut h);
}

#[test]
fn unknown_comprehension_required_attributes_get_420() {
    let mut h = Harness::new(config());
    let bystander = Bystander::new(&mut h);
    let mut olga = Client::new("198.51.100.34:5000", "olga");
    olga.learn_nonce(&mut h);
    let out = olga.call(
        &mut h,
        Method::ALLOCATE,
        &[
            Attribute::RequestedTransport(PROTOCOL_UDP),
            Attribute::Unknown {
                typ: AttributeType::new(0x7777),
                value: b"??",
            },
        ],
    );
    assert_eq!(out.error_code(), Some(420));
    match out.reply().get(AttributeType::UNKNOWN_ATTRIBUTES) {
        Some(Attribute::UnknownAttributes(list)) => {
            assert_eq!(
                list.iter().collect::<Vec<_>>(),
                vec![AttributeType::new(0x7777)]
            )
        }
        other => panic!("{other:?}"),
    }
    // DONT-FRAGMENT is not supported: 420 too
    let out = olga.call(
        &mut h,
        Method::ALLOCATE,
        &[
            Attribute::RequestedTransport(PROTOCOL_UDP),
            Attribute::DontFragment,
        ],
    );
    assert_eq!(out.error_code(), Some(420));
    // comprehension-optional unknowns are ignored
    let out = olga.call(
        &mut h,
        Method::ALLOCATE,
        &[
            Attribute::RequestedTransport(PROTOCOL_UDP),
            Attribute::Unknown {
                typ: AttributeType::new(0x8777),
                value: b"ok",
            },
        ],
    );
    assert!(is_success(&out));
    assert_eq!(h.state().counters().refusals(Refusal::UnknownAttribute), 2);
    bystander.check(&mut h);
}

#[test]
fn channel_binding_rules() {
    let mut h = Harness::new(config());
    let mut pat = Client::new("198.51.100.35:5000", "pat");
    pat.allocate(&mut h);
    assert!(is_success(&pat.call(
        &mut h,
        Method::REFRESH,
        &[Attribute::Lifetime(3600)]
    )));
    let p1: SocketAddr = "198.51.100.50:1".parse().unwrap();
    let p2: SocketAddr = "198.51.100.51:1".parse().unwrap();
    assert!(is_success(&pat.bind(&mut h, 0x4000, p1)));
    assert!(
        is_success(&pat.bind(&mut h, 0x4000, p1)),
        "refreshing is fine"
    );
    assert_eq!(
        pat.bind(&mut h, 0x4000, p2).error_code(),
        Some(400),
        "channel taken"
    );
    assert_eq!(
        pat.bind(&mut h, 0x4001, p1).error_code(),
        Some(400),
        "peer taken"
    );
    assert_eq!(
        pat.bind(&mut h, 0x3FFF, p2).error_code(),
        Some(400),
        "out of range"
    );
    assert_eq!(
        pat.bind(&mut h, 0x8000, p2).error_code(),
        Some(400),
        "out of range"
    );
    assert_eq!(
        pat.bind(&mut h, 0x4001, "[2001:db8::1]:1".parse().unwrap())
            .error_code(),
        Some(443)
    );
    // RFC 5766 numbers are accepted in legacy mode (the default), refused in strict mode
    let p3: SocketAddr = "198.51.100.52:1".parse().unwrap();
    assert!(is_success(&pat.bind(&mut h, 0x7FFF, p3)));
    match pat.channel_data(&mut h, 0x7FFF, b"legacy") {
        Outcome::Relay { peer, .. } => assert_eq!(peer, p3),
        other => panic!("{other:?}"),
    }
    let mut strict = config();
    strict.legacy_channel_numbers = false;
    let mut hs = Harness::new(strict);
    let mut s = Client::new("198.51.100.35:5000", "strict");
    s.allocate(&mut hs);
    assert_eq!(s.bind(&mut hs, 0x5000, p3).error_code(), Some(400));
    // after expiry plus 5 minutes the channel can go to another peer
    h.advance(Duration::from_secs(601));
    assert_eq!(pat.bind(&mut h, 0x4000, p2).error_code(), Some(400));
    assert!(is_success(&pat.call(&mut h, Method::REFRESH, &[])));
    h.advance(Duration::from_secs(300));
    assert!(is_success(&pat.bind(&mut h, 0x4000, p2)));
}

#[test]
fn bandwidth_limit_drops_excess() {
    let mut cfg = config();
    cfg.user_bandwidth = 10_000;
    cfg.user_burst = 3_000;
    let mut h = Harness::new(cfg);
    let bystander = Bystander::new(&mut h);
    let mut quinn = Client::new("198.51.100.36:5000", "quinn");
    quinn.allocate(&mut h);
    let peer: SocketAddr = "198.51.100.60:1".parse().unwrap();
    assert!(is_success(&quinn.bind(&mut h, 0x4000, peer)));
    let payload = [0u8; 1000];
    let mut relayed = 0;
    let mut dropped = 0;
    for _ in 0..10 {
        match quinn.channel_data(&mut h, 0x4000, &payload) {
            Outcome::Relay { .. } => relayed += 1,
            Outcome::Drop(DropReason::BandwidthLimit) => dropped += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((relayed, dropped), (3, 7));
    h.advance(Duration::from_millis(100)); // 1000 bytes more
    assert!(matches!(
        quinn.channel_data(&mut h, 0x4000, &payload),
        Outcome::Relay { .. }
    ));
    // another user's budget is its own
    bystander.check(&mut h);
}

#[test]
fn junk_and_responses_are_dropped() {
    let mut h = Harness::new(config());
    let from: SocketAddr = "198.51.100.37:5000".parse().unwrap();
    assert!(matches!(
        h.send(from, b"\x80junk"),
        Outcome::Drop(DropReason::Malformed)
    ));
    assert!(matches!(
        h.send(from, &[0, 1, 0]),
        Outcome::Drop(DropReason::Malformed)
    ));
    let tid = h.tid();
    let response = MessageBuilder::new(MessageType::BINDING_SUCCESS, tid)
        .to_vec()
        .unwrap();
    assert!(matches!(
        h.send(from, &response),
        Outcome::Drop(DropReason::Unexpected)
    ));
    let mut bad_fp = MessageBuilder::new(MessageType::BINDING_REQUEST, tid)
        .fingerprint()
        .to_vec()
        .unwrap();
    let last = bad_fp.len() - 1;
    bad_fp[last] ^= 1;
    assert!(matches!(
        h.send(from, &bad_fp),
        Outcome::Drop(DropReason::BadFingerprint)
    ));
    assert!(matches!(
        h.send(from, &vec![0x40; 4000]),
        Outcome::Drop(DropReason::Oversized)
    ));
    let unknown = MessageBuilder::new(
        MessageType::new(Method::new(0x0AB).unwrap(), MessageClass::Request),
        tid,
    )
    .to_vec()
    .unwrap();
    assert_eq!(h.send(from, &unknown).error_code(), Some(400));
    let _ = ErrorCode::new(400);
}

#[test]
fn shutdown_ends_every_allocation() {
    let mut h = Harness::new(config());
    let mut a = Client::new("198.51.100.38:5000", "a");
    a.allocate(&mut h);
    let state = Arc::clone(h.server.state());
    drop(h);
    assert_eq!(state.allocations(), 0);
    assert_eq!(state.counters().ended(EndCause::Shutdown), 1);
    assert!(state.list_allocations(None, 10, |_| true).is_empty());
}

proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), first in 0u8..0x80) {
        let mut h = Harness::new(config());
        let mut a = Client::new("198.51.100.39:5000", "a");
        a.allocate(&mut h);
        let mut datagram = bytes;
        if let Some(b) = datagram.first_mut() { *b = first; }
        let _ = h.send(a.addr, &datagram);
        let _ = h.send("198.51.100.1:1".parse().unwrap(), &datagram);
    }
}

#[test]
fn time_moves_with_the_clock() {
    let h = Harness::new(config());
    assert_eq!(
        h.state()
            .clock()
            .unix(h.start + Duration::from_secs(5))
            .as_secs(),
        UNIX_START + 5
    );
}
