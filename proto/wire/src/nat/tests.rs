//! NAT discovery against a simulated network and clock: a fake RFC 5780 STUN pair
//! on the "WAN", a fake NAT of each RFC 4787 kind in front of the client, fixed
//! latency and optional loss. No sockets, no real time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::stun::{
    Attribute, AttributeType, ErrorCode, Message, MessageBuilder, MessageClass, MessageType,
    TransactionId,
};

const SERVER_A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SERVER_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const PRIMARY_PORT: u16 = 3478;
const ALTERNATE_PORT: u16 = 3479;
const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const LOCAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const LOCAL_PORT: u16 = 50_000;
/// One-way latency between the client's NAT and the servers.
const LATENCY: Duration = Duration::from_millis(10);
/// Extra time a change-IP request takes through the partner service.
const PARTNER_DELAY: Duration = Duration::from_millis(2);

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

fn primary() -> SocketAddr {
    sa(SERVER_A, PRIMARY_PORT)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ports {
    Preserving,
    Random,
}

/// A NAT (or, with `translate: false`, a stateful firewall) in front of the client.
#[derive(Clone, Copy, Debug)]
struct NatModel {
    translate: bool,
    mapping: Kind,
    filtering: Kind,
    ports: Ports,
    hairpin: bool,
}

impl NatModel {
    fn nat(mapping: Kind, filtering: Kind, ports: Ports, hairpin: bool) -> NatModel {
        NatModel {
            translate: true,
            mapping,
            filtering,
            ports,
            hairpin,
        }
    }

    fn open_internet(filtering: Kind) -> NatModel {
        NatModel {
            translate: false,
            mapping: Kind::EndpointIndependent,
            filtering,
            ports: Ports::Preserving,
            hairpin: false,
        }
    }

    fn local(&self) -> SocketAddr {
        if self.translate {
            sa(LOCAL_IP, LOCAL_PORT)
        } else {
            sa(PUBLIC_IP, LOCAL_PORT)
        }
    }
}

struct Binding {
    allowed: HashSet<SocketAddr>,
}

struct Nat {
    model: NatModel,
    /// mapping key → external port
    mappings: HashMap<(Option<IpAddr>, Option<u16>), u16>,
    bindings: HashMap<u16, Binding>,
    rng: u64,
}

impl Nat {
    fn new(model: NatModel) -> Nat {
        Nat {
            model,
            mappings: HashMap::new(),
            bindings: HashMap::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn random_port(&mut self) -> u16 {
        loop {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let port = 1024 + (self.rng % 60_000) as u16;
            if !self.bindings.contains_key(&port) && port != LOCAL_PORT {
                return port;
            }
        }
    }

    /// Translates an outbound packet to `to`; returns the external source.
    fn outbound(&mut self, to: SocketAddr) -> SocketAddr {
        let key = match (self.model.translate, self.model.mapping) {
            (false, _) | (true, Kind::EndpointIndependent) => (None, None),
            (true, Kind::AddressDependent) => (Some(to.ip()), None),
            (true, Kind::AddressAndPortDependent) => (Some(to.ip()), Some(to.port())),
        };
        let port = match self.mappings.get(&key) {
            Some(port) => *port,
            None => {
                let port = if !self.model.translate
                    || (self.model.ports == Ports::Preserving
                        && !self.bindings.contains_key(&LOCAL_PORT))
                {
                    LOCAL_PORT
                } else if self.model.ports == Ports::Preserving {
                    (LOCAL_PORT + 1..)
                        .find(|p| !self.bindings.contains_key(p))
                        .unwrap()
                } else {
                    self.random_port()
                };
                self.mappings.insert(key, port);
                self.bindings.insert(
                    port,
                    Binding {
                        allowed: HashSet::new(),
                    },
                );
                port
            }
        };
        self.bindings.get_mut(&port).unwrap().allowed.insert(to);
        sa(PUBLIC_IP, port)
    }

    /// Whether an inbound packet from `from` to our external `to` gets through.
    fn inbound(&self, from: SocketAddr, to: SocketAddr) -> bool {
        let Some(binding) = self.bindings.get(&to.port()) else {
            return false;
        };
        to.ip() == IpAddr::V4(PUBLIC_IP)
            && match self.model.filtering {
                Kind::EndpointIndependent => true,
                Kind::AddressDependent => binding.allowed.iter().any(|a| a.ip() == from.ip()),
                Kind::AddressAndPortDependent => binding.allowed.contains(&from),
            }
    }
}

/// How the fake STUN pair behaves.
#[derive(Clone, Copy, Debug)]
struct ServerModel {
    /// Sends OTHER-ADDRESS.
    rfc5780: bool,
    /// Answers CHANGE-REQUEST from the right socket (else from the receiving one).
    honours_change: bool,
    /// Server A answers at all.
    a_alive: bool,
    /// Server B answers at all (also for change-IP on A's behalf).
    b_alive: bool,
    /// Extra delay of change-IP answers.
    partner_delay: Duration,
}

impl Default for ServerModel {
    fn default() -> ServerModel {
        ServerModel {
            rfc5780: true,
            honours_change: true,
            a_alive: true,
            b_alive: true,
            partner_delay: PARTNER_DELAY,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loss {
    None,
    /// The first copy of every transaction, in each direction, is lost on the WAN.
    FirstOfEach,
}

#[derive(Debug)]
struct Packet {
    from: SocketAddr,
    to: SocketAddr,
    payload: Vec<u8>,
}

struct Sim {
    now: Instant,
    start: Instant,
    nat: Nat,
    servers: ServerModel,
    loss: Loss,
    lost: HashSet<(bool, TransactionId)>,
    /// (arrival, sequence) → packet
    queue: BTreeMap<(Instant, u64), Packet>,
    seq: u64,
    /// Every transmit of the client, with its time since start.
    sent: Vec<(Duration, SocketAddr)>,
    /// Datagrams the client was handed that it did not claim.
    unclaimed: usize,
}

fn other_ip(ip: IpAddr) -> IpAddr {
    if ip == IpAddr::V4(SERVER_A) {
        IpAddr::V4(SERVER_B)
    } else {
        IpAddr::V4(SERVER_A)
    }
}

fn other_port(port: u16) -> u16 {
    if port == PRIMARY_PORT {
        ALTERNATE_PORT
    } else {
        PRIMARY_PORT
    }
}

impl Sim {
    fn new(nat: NatModel, servers: ServerModel, loss: Loss) -> Sim {
        let now = Instant::now();
        Sim {
            now,
            start: now,
            nat: Nat::new(nat),
            servers,
            loss,
            lost: HashSet::new(),
            queue: BTreeMap::new(),
            seq: 0,
            sent: Vec::new(),
            unclaimed: 0,
        }
    }

    fn schedule(&mut self, at: Instant, packet: Packet) {
        self.seq += 1;
        self.queue.insert((at, self.seq), packet);
    }

    /// Whether the WAN loses this packet (`outbound`: client → servers).
    fn wan_loses(&mut self, outbound: bool, payload: &[u8]) -> bool {
        if self.loss == Loss::None {
            return false;
        }
        let Ok(message) = Message::parse(payload) else {
            return false;
        };
        self.lost.insert((outbound, message.transaction_id()))
    }

    fn client_sends(&mut self, transmit: Transmit) {
        self.sent
            .push((self.now - self.start, transmit.destination));
        let to = transmit.destination;
        let from = self.nat.outbound(to);
        if to.ip() == IpAddr::V4(PUBLIC_IP) {
            // hairpinning: the NAT loops it back, or drops it
            if self.nat.model.hairpin && self.nat.model.translate {
                let at = self.now + Duration::from_millis(1);
                self.schedule(
                    at,
                    Packet {
                        from,
                        to,
                        payload: transmit.payload,
                    },
                );
            }
            return;
        }
        if self.wan_loses(true, &transmit.payload) {
            return;
        }
        let at = self.now + LATENCY;
        self.schedule(
            at,
            Packet {
                from,
                to,
                payload: transmit.payload,
            },
        );
    }

    fn server_alive(&self, ip: IpAddr) -> bool {
        if ip == IpAddr::V4(SERVER_A) {
            self.servers.a_alive
        } else {
            self.servers.b_alive
        }
    }

    /// A server socket answers a request.
    fn server_receives(&mut self, packet: Packet) {
        let receiver = packet.to;
        if !self.server_alive(receiver.ip()) || !packet.payload.is_empty() && packet.payload[0] > 3
        {
            return;
        }
        let Ok(request) = Message::parse(&packet.payload) else {
            return;
        };
        if request.message_type() != MessageType::BINDING_REQUEST {
            return;
        }
        let change = match request.get(AttributeType::CHANGE_REQUEST) {
            Some(Attribute::ChangeRequest(change)) if self.servers.honours_change => change,
            _ => Default::default(),
        };
        let source_ip = if change.change_ip {
            other_ip(receiver.ip())
        } else {
            receiver.ip()
        };
        let source_port = if change.change_port {
            other_port(receiver.port())
        } else {
            receiver.port()
        };
        if !self.server_alive(source_ip) {
            return;
        }
        let source = SocketAddr::new(source_ip, source_port);
        let other = SocketAddr::new(other_ip(receiver.ip()), other_port(receiver.port()));
        let mut attributes = vec![
            Attribute::XorMappedAddress(packet.from),
            Attribute::ResponseOrigin(source),
        ];
        if self.servers.rfc5780 {
            attributes.push(Attribute::OtherAddress(other));
        }
        let payload = MessageBuilder::new(MessageType::BINDING_SUCCESS, request.transaction_id())
            .attributes(&attributes)
            .fingerprint()
            .to_vec()
            .unwrap();
        if self.wan_loses(false, &payload) {
            return;
        }
        let delay = if change.change_ip {
            LATENCY + self.servers.partner_delay
        } else {
            LATENCY
        };
        let at = self.now + delay;
        self.schedule(
            at,
            Packet {
                from: source,
                to: packet.from,
                payload,
            },
        );
    }

    /// Delivers the earliest queued packet.
    fn deliver_next(&mut self, discovery: &mut NatDiscovery) {
        let Some(((at, _), packet)) = self.queue.pop_first() else {
            return;
        };
        self.now = self.now.max(at);
        if packet.to.ip() == IpAddr::V4(PUBLIC_IP) {
            let hairpinned = packet.from.ip() == IpAddr::V4(PUBLIC_IP);
            if (hairpinned || self.nat.inbound(packet.from, packet.to))
                && !discovery.handle_datagram(packet.from, &packet.payload, self.now)
            {
                self.unclaimed += 1;
            }
        } else {
            self.server_receives(packet);
        }
    }

    /// Runs discovery to the end.
    fn run(&mut self, config: NatDiscoveryConfig) -> NatReport {
        let local = self.nat.model.local();
        let mut discovery = NatDiscovery::new(primary(), local, config, [42; 32], self.now);
        for _ in 0..100_000 {
            while let Some(transmit) = discovery.poll_transmit(self.now) {
                self.client_sends(transmit);
            }
            if discovery.is_done() {
                let report = discovery.result().unwrap();
                assert_eq!(report.duration, self.now - self.start);
                return report;
            }
            let timer = discovery.poll_timeout();
            let packet = self.queue.keys().next().map(|(at, _)| *at);
            match (packet, timer) {
                (Some(p), Some(t)) if t < p => {
                    self.now = self.now.max(t);
                    discovery.handle_timeout(self.now);
                }
                (Some(_), _) => self.deliver_next(&mut discovery),
                (None, Some(t)) => {
                    self.now = self.now.max(t);
                    discovery.handle_timeout(self.now);
                }
                (None, None) => panic!("discovery stalled without a timer"),
            }
        }
        panic!("discovery did not finish");
    }
}

fn run(nat: NatModel) -> NatReport {
    run_with(nat, ServerModel::default(), Loss::None)
}

fn run_with(nat: NatModel, servers: ServerModel, loss: Loss) -> NatReport {
    let config = NatDiscoveryConfig::default();
    let report = Sim::new(nat, servers, loss).run(config.clone());
    assert!(
        report.duration <= config.budget(),
        "{:?} over budget",
        report.duration
    );
    report
}

use FilteringBehaviour as F;
use Kind::{AddressAndPortDependent as Apd, AddressDependent as Ad, EndpointIndependent as Ei};
use MappingBehaviour as M;

#[test]
fn full_cone_with_hairpinning() {
    let report = run(NatModel::nat(Ei, Ei, Ports::Preserving, true));
    assert_eq!(report.mapping, M::EndpointIndependent);
    assert_eq!(report.filtering, F::EndpointIndependent);
    assert_eq!(report.hairpinning, Some(true));
    assert_eq!(report.port_preserving, Some(true));
    assert_eq!(report.behind_nat, Some(true));
    assert_eq!(report.public_address, Some(sa(PUBLIC_IP, LOCAL_PORT)));
    assert_eq!(report.other_address, Some(sa(SERVER_B, ALTERNATE_PORT)));
    assert_eq!(report.server_supports_rfc5780(), Some(true));
    assert_eq!(report.label(), "full cone");
    assert_eq!(report.reflexive[0].server, primary());
    assert!(report.reflexive.contains(&ReflexiveAddr {
        server: sa(SERVER_B, PRIMARY_PORT),
        mapped: sa(PUBLIC_IP, LOCAL_PORT)
    }));
    assert_eq!(report.min_rtt(), Some(2 * LATENCY));
    // test I, then filtering and hairpinning, then mapping: three round trips
    assert!(report.duration < Duration::from_millis(100), "{report:?}");
}

#[test]
fn restricted_cone_without_hairpinning() {
    let report = run(NatModel::nat(Ei, Ad, Ports::Preserving, false));
    assert_eq!(report.mapping, M::EndpointIndependent);
    assert_eq!(report.filtering, F::AddressDependent);
    assert_eq!(report.hairpinning, Some(false));
    assert_eq!(report.port_preserving, Some(true));
    assert_eq!(report.label(), "restricted cone");
}

#[test]
fn port_restricted_cone() {
    let report = run(NatModel::nat(Ei, Apd, Ports::Preserving, true));
    assert_eq!(report.mapping, M::EndpointIndependent);
    assert_eq!(report.filtering, F::AddressAndPortDependent);
    assert_eq!(report.hairpinning, Some(true));
    assert_eq!(report.label(), "port-restricted cone");
    // one silent filtering transaction with the RTT-derived RTO of 250 ms: 1.75 s
    assert!(report.duration < Duration::from_millis(1_900), "{report:?}");
}

#[test]
fn address_dependent_mapping() {
    let report = run(NatModel::nat(Ad, Ad, Ports::Preserving, false));
    assert_eq!(report.mapping, M::AddressDependent);
    assert_eq!(report.filtering, F::AddressDependent);
    // The first mapping kept the local port; the second destination needed another one.
    assert_eq!(report.port_preserving, Some(true));
    assert_eq!(report.label(), "symmetric");
    let mapped: HashSet<_> = report.reflexive.iter().map(|r| r.mapped).collect();
    assert_eq!(mapped.len(), 2, "{report:?}");
}

#[test]
fn symmetric_with_random_ports() {
    let report = run(NatModel::nat(Apd, Apd, Ports::Random, false));
    assert_eq!(report.mapping, M::AddressAndPortDependent);
    assert_eq!(report.filtering, F::AddressAndPortDependent);
    assert_eq!(report.port_preserving, Some(false));
    assert_eq!(report.hairpinning, Some(false));
    assert_eq!(report.label(), "symmetric");
    assert_eq!(report.reflexive.len(), 3);
    let mapped: HashSet<_> = report.reflexive.iter().map(|r| r.mapped).collect();
    assert_eq!(mapped.len(), 3, "{report:?}");
    assert_eq!(
        report.rfc4787_description(),
        "address-and-port-dependent mapping, address-and-port-dependent filtering"
    );
}

#[test]
fn no_nat() {
    let nat = NatModel::open_internet(Ei);
    let report = run(nat);
    assert_eq!(report.behind_nat, Some(false));
    assert_eq!(report.public_address, Some(nat.local()));
    assert_eq!(report.mapping, M::EndpointIndependent);
    assert_eq!(report.filtering, F::EndpointIndependent);
    assert_eq!(report.hairpinning, None);
    assert_eq!(report.port_preserving, Some(true));
    assert_eq!(report.label(), "no NAT");
}

#[test]
fn no_nat_behind_a_filtering_firewall() {
    let report = run(NatModel::open_internet(Apd));
    assert_eq!(report.behind_nat, Some(false));
    assert_eq!(report.filtering, F::AddressAndPortDependent);
    assert_eq!(report.label(), "no NAT (port-restricting firewall)");
}

#[test]
fn every_kind_survives_loss() {
    let kinds = [
        NatModel::nat(Ei, Ei, Ports::Preserving, true),
        NatModel::nat(Ei, Ad, Ports::Preserving, false),
        NatModel::nat(Ei, Apd, Ports::Preserving, true),
        NatModel::nat(Ad, Apd, Ports::Preserving, false),
        NatModel::nat(Apd, Apd, Ports::Random, false),
    ];
    for nat in kinds {
        let clean = run(nat);
        let lossy = run_with(nat, ServerModel::default(), Loss::FirstOfEach);
        assert_eq!(lossy.mapping, clean.mapping, "{nat:?}");
        assert_eq!(lossy.filtering, clean.filtering, "{nat:?}");
        assert_eq!(lossy.public_address, clean.public_address, "{nat:?}");
        // every answered transaction was retransmitted: no unambiguous RTT
        assert!(lossy.rtt.is_empty(), "{lossy:?}");
    }
}

#[test]
fn dead_server_times_out_within_the_budget() {
    let servers = ServerModel {
        a_alive: false,
        b_alive: false,
        ..ServerModel::default()
    };
    let mut sim = Sim::new(
        NatModel::nat(Ei, Ei, Ports::Preserving, true),
        servers,
        Loss::None,
    );
    let config = NatDiscoveryConfig::default();
    let report = sim.run(config.clone());
    assert_eq!(report.mapping, M::Unknown(UnknownReason::NoResponse));
    assert_eq!(report.filtering, F::Unknown(UnknownReason::NoResponse));
    assert_eq!(report.public_address, None);
    assert_eq!(report.behind_nat, None);
    assert_eq!(report.hairpinning, None);
    assert_eq!(report.port_preserving, None);
    assert_eq!(report.server_supports_rfc5780(), None);
    assert_eq!(report.label(), "unknown");
    assert_eq!(report.duration, config.transaction_timeout());
    assert_eq!(report.duration, Duration::from_millis(3_500));
    let times: Vec<u64> = sim.sent.iter().map(|(t, _)| t.as_millis() as u64).collect();
    assert_eq!(times, [0, 500, 1_500]);
}

#[test]
fn rfc8489_schedule() {
    let servers = ServerModel {
        a_alive: false,
        ..ServerModel::default()
    };
    let mut sim = Sim::new(NatModel::open_internet(Ei), servers, Loss::None);
    let report = sim.run(NatDiscoveryConfig::rfc8489());
    let times: Vec<u64> = sim.sent.iter().map(|(t, _)| t.as_millis() as u64).collect();
    assert_eq!(times, [0, 500, 1_500, 3_500, 7_500, 15_500, 31_500]);
    assert_eq!(report.duration, Duration::from_millis(39_500));
}

#[test]
fn server_without_rfc5780() {
    let servers = ServerModel {
        rfc5780: false,
        ..ServerModel::default()
    };
    let report = run_with(
        NatModel::nat(Ei, Ei, Ports::Preserving, true),
        servers,
        Loss::None,
    );
    assert_eq!(report.mapping, M::Unknown(UnknownReason::NoOtherAddress));
    assert_eq!(report.filtering, F::Unknown(UnknownReason::NoOtherAddress));
    assert_eq!(report.server_supports_rfc5780(), Some(false));
    assert_eq!(report.public_address, Some(sa(PUBLIC_IP, LOCAL_PORT)));
    assert_eq!(report.hairpinning, Some(true));
    assert_eq!(report.port_preserving, Some(true));
    assert_eq!(report.reflexive.len(), 1);
}

#[test]
fn server_ignoring_change_request() {
    let servers = ServerModel {
        honours_change: false,
        ..ServerModel::default()
    };
    let report = run_with(
        NatModel::nat(Ei, Apd, Ports::Preserving, false),
        servers,
        Loss::None,
    );
    assert_eq!(
        report.filtering,
        F::Unknown(UnknownReason::ChangeRequestIgnored { from: primary() })
    );
    assert_eq!(report.mapping, M::EndpointIndependent);
}

#[test]
fn dead_alternate_address() {
    let servers = ServerModel {
        b_alive: false,
        ..ServerModel::default()
    };
    let report = run_with(
        NatModel::nat(Ei, Ei, Ports::Preserving, false),
        servers,
        Loss::None,
    );
    assert_eq!(
        report.mapping,
        M::Unknown(UnknownReason::AlternateNoResponse)
    );
    assert_eq!(report.public_address, Some(sa(PUBLIC_IP, LOCAL_PORT)));
}

#[test]
fn late_answers_are_consumed_but_do_not_change_a_verdict() {
    // The partner answers change-IP requests after 5 s: filtering test II times
    // out first, and its answer arrives while the mapping tests run.
    let servers = ServerModel {
        partner_delay: Duration::from_secs(5),
        ..ServerModel::default()
    };
    let mut sim = Sim::new(
        NatModel::nat(Ei, Ei, Ports::Preserving, true),
        servers,
        Loss::None,
    );
    let report = sim.run(NatDiscoveryConfig::default());
    assert_eq!(report.filtering, F::AddressDependent);
    assert_eq!(report.mapping, M::EndpointIndependent);
    assert_eq!(sim.unclaimed, 0);
}

#[test]
fn mapping_tests_wait_for_the_filtering_verdict() {
    let mut sim = Sim::new(
        NatModel::nat(Ei, Apd, Ports::Preserving, false),
        ServerModel::default(),
        Loss::None,
    );
    let report = sim.run(NatDiscoveryConfig::default());
    let first_to_b = sim
        .sent
        .iter()
        .find(|(_, to)| to.ip() == IpAddr::V4(SERVER_B))
        .unwrap()
        .0;
    let last_to_a = sim.sent.iter().rfind(|(_, to)| *to == primary()).unwrap().0;
    assert!(first_to_b > last_to_a, "{:?}", sim.sent);
    assert_eq!(report.filtering, F::AddressAndPortDependent);
}

#[test]
fn time_limit_ends_discovery_with_what_is_known() {
    let mut sim = Sim::new(
        NatModel::nat(Ei, Apd, Ports::Preserving, false),
        ServerModel::default(),
        Loss::None,
    );
    let config = NatDiscoveryConfig::default().with_max_duration(Some(Duration::from_secs(1)));
    let report = sim.run(config);
    assert_eq!(report.duration, Duration::from_secs(1));
    assert_eq!(report.public_address, Some(sa(PUBLIC_IP, LOCAL_PORT)));
    assert_eq!(report.filtering, F::Unknown(UnknownReason::DeadlineReached));
    assert_eq!(report.mapping, M::Unknown(UnknownReason::DeadlineReached));
    assert_eq!(report.hairpinning, None);
}

#[test]
fn disabled_tests_are_reported_as_not_tested() {
    let config = NatDiscoveryConfig {
        filtering: false,
        hairpinning: false,
        ..NatDiscoveryConfig::default()
    };
    let report = Sim::new(
        NatModel::nat(Apd, Apd, Ports::Random, true),
        ServerModel::default(),
        Loss::None,
    )
    .run(config);
    assert_eq!(report.filtering, F::Unknown(UnknownReason::NotTested));
    assert_eq!(report.mapping, M::AddressAndPortDependent);
    assert_eq!(report.hairpinning, None);
    assert!(report.duration < Duration::from_millis(100));
}

fn response(id: TransactionId, class: MessageClass, attributes: &[Attribute<'_>]) -> Vec<u8> {
    MessageBuilder::new(MessageType::new(crate::stun::Method::BINDING, class), id)
        .attributes(attributes)
        .fingerprint()
        .to_vec()
        .unwrap()
}

fn started() -> (NatDiscovery, Instant, TransactionId) {
    let now = Instant::now();
    let mut discovery = NatDiscovery::new(
        primary(),
        sa(LOCAL_IP, LOCAL_PORT),
        NatDiscoveryConfig::default(),
        [1; 32],
        now,
    );
    let transmit = discovery.poll_transmit(now).unwrap();
    let id = Message::parse(&transmit.payload).unwrap().transaction_id();
    (discovery, now, id)
}

#[test]
fn foreign_datagrams_are_left_to_the_caller() {
    let (mut discovery, now, id) = started();
    // QUIC long header, garbage, and a STUN response to someone else
    assert!(!discovery.handle_datagram(primary(), &[0xc3, 0, 0, 0, 1], now));
    assert!(!discovery.handle_datagram(primary(), &[], now));
    let other = response(
        TransactionId::new([9; 12]),
        MessageClass::SuccessResponse,
        &[Attribute::XorMappedAddress(sa(PUBLIC_IP, 1))],
    );
    assert!(!discovery.handle_datagram(primary(), &other, now));
    // an error response to ours is ours
    let error = response(
        id,
        MessageClass::ErrorResponse,
        &[Attribute::ErrorCode(ErrorCode::new(500))],
    );
    assert!(discovery.handle_datagram(primary(), &error, now));
    assert!(discovery.is_done());
    let report = discovery.result().unwrap();
    assert_eq!(
        report.mapping,
        M::Unknown(UnknownReason::ServerError { code: 500 })
    );
    // and stays ours after the end
    assert!(discovery.handle_datagram(primary(), &error, now));
    assert_eq!(discovery.poll_timeout(), None);
    assert_eq!(discovery.poll_transmit(now), None);
}

#[test]
fn own_hairpin_request_is_recognised() {
    let (mut discovery, now, id) = started();
    let public = sa(PUBLIC_IP, 40_000);
    let answer = response(
        id,
        MessageClass::SuccessResponse,
        &[Attribute::XorMappedAddress(public)],
    );
    assert!(discovery.handle_datagram(primary(), &answer, now));
    // no OTHER-ADDRESS: only hairpinning is left
    let hairpin = discovery.poll_transmit(now).unwrap();
    assert_eq!(hairpin.destination, public);
    assert_eq!(discovery.poll_transmit(now), None);
    assert!(!discovery.is_done());
    assert!(discovery.handle_datagram(public, &hairpin.payload, now));
    let report = discovery.result().unwrap();
    assert_eq!(report.hairpinning, Some(true));
    assert_eq!(report.port_preserving, Some(false));
    assert_eq!(report.behind_nat, Some(true));
}

#[test]
fn dual_stack_addresses_compare_as_ipv4() {
    let now = Instant::now();
    let mapped_v6: SocketAddr = "[::ffff:192.168.1.10]:50000".parse().unwrap();
    let mut discovery = NatDiscovery::new(
        primary(),
        mapped_v6,
        NatDiscoveryConfig::default(),
        [3; 32],
        now,
    );
    let transmit = discovery.poll_transmit(now).unwrap();
    let id = Message::parse(&transmit.payload).unwrap().transaction_id();
    let answer = response(
        id,
        MessageClass::SuccessResponse,
        &[Attribute::XorMappedAddress(sa(LOCAL_IP, LOCAL_PORT))],
    );
    let from: SocketAddr = "[::ffff:198.51.100.1]:3478".parse().unwrap();
    assert!(discovery.handle_datagram(from, &answer, now));
    let report = discovery.result().unwrap();
    assert_eq!(report.behind_nat, Some(false));
}

/// Input for the never-panic property.
#[derive(Clone, Debug)]
enum Input {
    Bytes(Vec<u8>),
    /// A response to the n-th transmit so far, with these attributes.
    Response {
        nth: usize,
        class: u8,
        mapped: Option<SocketAddr>,
        other: Option<SocketAddr>,
        from: SocketAddr,
    },
    /// The n-th transmit echoed back, possibly mutated.
    Echo {
        nth: usize,
        flip: Option<(usize, u8)>,
    },
    Wait(u16),
}

fn any_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        Just(primary()),
        Just(sa(SERVER_B, ALTERNATE_PORT)),
        Just(sa(SERVER_A, ALTERNATE_PORT)),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Input::Bytes),
        (
            0usize..16,
            0u8..4,
            proptest::option::of(any_addr()),
            proptest::option::of(any_addr()),
            any_addr()
        )
            .prop_map(|(nth, class, mapped, other, from)| Input::Response {
                nth,
                class,
                mapped,
                other,
                from
            }),
        (0usize..16, proptest::option::of((0usize..64, any::<u8>())))
            .prop_map(|(nth, flip)| Input::Echo { nth, flip }),
        (0u16..5000).prop_map(Input::Wait),
    ]
}

proptest! {
    #[test]
    fn random_input_never_panics_and_discovery_ends(
        inputs in proptest::collection::vec(input(), 0..60),
        seed in any::<[u8; 32]>(),
    ) {
        let start = Instant::now();
        let mut now = start;
        let config = NatDiscoveryConfig::default();
        let mut discovery = NatDiscovery::new(primary(), sa(LOCAL_IP, LOCAL_PORT), config.clone(), seed, now);
        let mut sent: Vec<Transmit> = Vec::new();
        for input in inputs {
            while let Some(t) = discovery.poll_transmit(now) {
                sent.push(t);
            }
            match input {
                Input::Bytes(bytes) => {
                    discovery.handle_datagram(primary(), &bytes, now);
                }
                Input::Response { nth, class, mapped, other, from } => {
                    if let Some(t) = sent.get(nth) {
                        let id = Message::parse(&t.payload).unwrap().transaction_id();
                        let mut attributes = Vec::new();
                        attributes.extend(mapped.map(Attribute::XorMappedAddress));
                        attributes.extend(other.map(Attribute::OtherAddress));
                        let class = MessageClass::from_bits(u16::from(class));
                        let bytes = response(id, class, &attributes);
                        discovery.handle_datagram(from, &bytes, now);
                    }
                }
                Input::Echo { nth, flip } => {
                    if let Some(t) = sent.get(nth) {
                        let mut bytes = t.payload.clone();
                        if let Some((at, xor)) = flip && let Some(b) = bytes.get_mut(at) {
                            *b ^= xor;
                        }
                        discovery.handle_datagram(t.destination, &bytes, now);
                    }
                }
                Input::Wait(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    discovery.handle_timeout(now);
                }
            }
            prop_assert!(sent.len() <= 6 * 3, "{} transmits", sent.len());
        }
        // with time alone it always ends, within the budget of its start
        for _ in 0..100 {
            while discovery.poll_transmit(now).is_some() {}
            match discovery.poll_timeout() {
                Some(t) => {
                    now = now.max(t);
                    discovery.handle_timeout(now);
                }
                None => break,
            }
        }
        prop_assert!(discovery.is_done());
        let report = discovery.result().unwrap();
        prop_assert!(report.reflexive.len() <= MAX_REFLEXIVE);
        prop_assert!(report.rtt.len() <= 6);
    }
}
