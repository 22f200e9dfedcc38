//! Tests of the punch engine: the state machine on a simulated network with a simulated clock
//! (selection, peer-reflexive learning, forged probes, budget, rate bound, birthday sockets), the
//! plan built from an instruction, and the tokio driver on loopback sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quickp2p_proto::v1;
use quickp2p_wire::probe::{ProbeCodec, ProbeRequest, ProbeRole};
use quickp2p_wire::stun::TransactionId;

use super::*;

const ID: [u8; 16] = [0x11; 16];
const KEY: [u8; 32] = [0x42; 32];
const STEP: Duration = Duration::from_millis(1);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn candidate(kind: v1::CandidateKind, address: &str) -> RemoteCandidate {
    RemoteCandidate {
        kind,
        address: addr(address),
        priority: 0,
        port_span: 1,
    }
}

fn plan(role: ProbeRole, start: Instant, remote: Vec<RemoteCandidate>) -> PunchPlan {
    PunchPlan {
        handshake_id: ID.to_vec(),
        attempt: 1,
        role,
        strategy: PunchStrategy::Direct,
        remote_candidates: remote,
        probe_key: KEY,
        start,
        probe_interval: Duration::from_millis(20),
        budget: Duration::from_secs(2),
        prediction: None,
        max_probes_per_second: DEFAULT_MAX_PROBES_PER_SECOND,
        opener_ttl: DEFAULT_OPENER_TTL,
    }
    .checked()
    .unwrap()
}

/// One simulated host: a machine and the address of each of its sockets (no NAT: what it sends
/// from socket i arrives from `addresses[i]`).
struct Host {
    punch: Punch,
    addresses: Vec<SocketAddr>,
}

impl Host {
    fn new(plan: &PunchPlan, now: Instant, main: &str) -> Host {
        let punch = Punch::new(plan, 7, now).unwrap();
        let mut addresses = vec![addr(main)];
        let ip = addresses[0].ip();
        for i in 0..punch.extra_sockets() {
            addresses.push(SocketAddr::new(ip, 40000 + i as u16));
        }
        Host { punch, addresses }
    }
}

/// Every transmit of the run: (time, sender host, transmit).
type Log = Vec<(Instant, usize, Transmit)>;

/// Runs the hosts on a lossless zero-delay network for `duration` in 1 ms steps. `extra` is called
/// every step and may inject datagrams: (target host, socket, from, bytes).
fn simulate(
    hosts: &mut [Host],
    start: Instant,
    duration: Duration,
    extra: impl FnMut(Instant) -> Vec<(usize, usize, SocketAddr, Vec<u8>)>,
) -> Log {
    simulate_lossy(hosts, start, duration, extra, |_, _| false)
}

/// [`simulate`], losing what `lose(sender host, transmit)` says.
fn simulate_lossy(
    hosts: &mut [Host],
    start: Instant,
    duration: Duration,
    mut extra: impl FnMut(Instant) -> Vec<(usize, usize, SocketAddr, Vec<u8>)>,
    lose: impl Fn(usize, &Transmit) -> bool,
) -> Log {
    let mut log = Vec::new();
    let mut now = start;
    while now <= start + duration {
        let mut deliveries = extra(now);
        for (h, host) in hosts.iter_mut().enumerate() {
            host.punch.handle_timeout(now);
            while let Some(t) = host.punch.poll_transmit(now) {
                let from = host.addresses[t.socket];
                log.push((now, h, t.clone()));
                if lose(h, &t) {
                    continue;
                }
                deliveries.push((
                    route_host(t.destination),
                    route_socket(t.destination),
                    from,
                    t.payload,
                ));
            }
        }
        for (target, socket, from, bytes) in deliveries {
            if let Some(host) = hosts.get_mut(target)
                && host.addresses.get(socket).is_some()
            {
                host.punch.handle_datagram(now, socket, from, &bytes);
            }
        }
        if hosts.iter().all(|h| h.punch.is_done()) {
            break;
        }
        now += STEP;
    }
    log
}

/// Host number by address: 192.0.2.(10+h) belongs to host h; anything else nowhere.
fn route_host(to: SocketAddr) -> usize {
    match to.ip() {
        std::net::IpAddr::V4(ip) if ip.octets()[..3] == [192, 0, 2] => {
            usize::from(ip.octets()[3]).wrapping_sub(10)
        }
        _ => usize::MAX,
    }
}

/// Socket number by port: 5000 = main, 40000 + i = extra i + 1.
fn route_socket(to: SocketAddr) -> usize {
    match to.port() {
        5000 => 0,
        p if p >= 40000 => usize::from(p - 40000) + 1,
        _ => usize::MAX,
    }
}

fn selected(host: &Host) -> SelectedPair {
    match host.punch.state() {
        PunchState::Selected(pair) => pair,
        other => panic!("not selected: {other:?}"),
    }
}

#[test]
fn direct_punch_selects_the_same_path_on_both_sides() {
    let t0 = Instant::now();
    let start = t0 + Duration::from_millis(100);
    let a_plan = plan(
        ProbeRole::Initiator,
        start,
        vec![
            candidate(v1::CandidateKind::Host, "10.9.9.9:5000"),
            candidate(v1::CandidateKind::Reflexive, "192.0.2.11:5000"),
        ],
    );
    let b_plan = plan(
        ProbeRole::Responder,
        start,
        vec![candidate(v1::CandidateKind::Reflexive, "192.0.2.10:5000")],
    );
    let mut hosts = [
        Host::new(&a_plan, t0, "192.0.2.10:5000"),
        Host::new(&b_plan, t0, "192.0.2.11:5000"),
    ];
    let log = simulate(&mut hosts, t0, Duration::from_secs(3), |_| Vec::new());
    let (a, b) = (selected(&hosts[0]), selected(&hosts[1]));
    assert_eq!(a.remote, addr("192.0.2.11:5000"));
    assert_eq!(b.remote, addr("192.0.2.10:5000"));
    assert_eq!(a.remote_kind, v1::CandidateKind::Reflexive);
    assert!(!a.peer_reflexive && !b.peer_reflexive);
    assert_eq!(a.mapped, Some(addr("192.0.2.10:5000")));
    assert_eq!(b.mapped, Some(addr("192.0.2.11:5000")));
    // nobody sent a check before the start
    assert!(log.iter().all(|(at, _, _)| *at >= start));
    let stats = hosts[0].punch.stats();
    assert!(
        stats.requests_sent >= 1 && stats.probes_received >= 2,
        "{stats:?}"
    );
    assert_eq!(stats.first_probe_after, Some(Duration::ZERO));
    assert!(stats.selected_after.unwrap() < Duration::from_millis(200));
    assert_eq!(stats.rejected.total(), 0);
    assert!(hosts[1].punch.stats().selected_after.is_some());
}

#[test]
fn unknown_source_becomes_a_peer_reflexive_path() {
    // B was told a stale port for A (a symmetric NAT maps A elsewhere): A's check arrives from
    // an address B never heard of, and B must learn it
    let t0 = Instant::now();
    let a_plan = plan(
        ProbeRole::Initiator,
        t0,
        vec![candidate(v1::CandidateKind::Reflexive, "192.0.2.11:5000")],
    );
    let b_plan = plan(
        ProbeRole::Responder,
        t0,
        vec![candidate(v1::CandidateKind::Reflexive, "192.0.2.10:7777")],
    );
    let mut hosts = [
        Host::new(&a_plan, t0, "192.0.2.10:5000"),
        Host::new(&b_plan, t0, "192.0.2.11:5000"),
    ];
    simulate(&mut hosts, t0, Duration::from_secs(2), |_| Vec::new());
    let b = selected(&hosts[1]);
    assert_eq!(b.remote, addr("192.0.2.10:5000"));
    assert!(b.peer_reflexive);
    assert_eq!(hosts[1].punch.stats().peer_reflexive, 1);
    assert_eq!(selected(&hosts[0]).remote, addr("192.0.2.11:5000"));
}

#[test]
fn an_unconfirmed_nomination_is_given_up() {
    // A's answers to B are lost: A's checks succeed and it nominates, but B's own check never
    // does, so B never confirms; A must stop nominating after a bounded number and neither side
    // may select
    let t0 = Instant::now();
    let a_plan = plan(
        ProbeRole::Initiator,
        t0,
        vec![candidate(v1::CandidateKind::Reflexive, "192.0.2.11:5000")],
    );
    let b_plan = plan(
        ProbeRole::Responder,
        t0,
        vec![candidate(v1::CandidateKind::Reflexive, "192.0.2.10:5000")],
    );
    let mut hosts = [
        Host::new(&a_plan, t0, "192.0.2.10:5000"),
        Host::new(&b_plan, t0, "192.0.2.11:5000"),
    ];
    let is_response = |t: &Transmit| {
        quickp2p_wire::stun::Message::parse(&t.payload)
            .unwrap()
            .class()
            == quickp2p_wire::stun::MessageClass::SuccessResponse
    };
    let log = simulate_lossy(
        &mut hosts,
        t0,
        Duration::from_secs(3),
        |_| Vec::new(),
        |sender, t| sender == 0 && is_response(t),
    );
    assert_eq!(hosts[0].punch.state(), PunchState::Failed);
    assert_eq!(hosts[1].punch.state(), PunchState::Failed);
    let nominations = log
        .iter()
        .filter(|(_, h, t)| {
            *h == 0
                && quickp2p_wire::stun::Message::parse(&t.payload)
                    .unwrap()
                    .get(quickp2p_wire::stun::AttributeType::USE_CANDIDATE)
                    .is_some()
        })
        .count();
    assert_eq!(nominations, 10);
    // and A went on checking after giving up
    let last_nomination_checks = log
        .iter()
        .filter(|(_, h, t)| *h == 0 && !is_response(t))
        .count();
    assert!(last_nomination_checks > 50, "{last_nomination_checks}");
}

/// Probes of a stranger who knows the handshake id but not the key, and of another attempt,
/// claiming to come from `sender`.
fn forgeries(sender: ProbeRole) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let wrong_key = ProbeCodec::new(&ID, 1, &[9; 32], sender).unwrap();
    let other_attempt = ProbeCodec::new(&ID, 2, &KEY, sender).unwrap();
    for (i, codec) in [wrong_key, other_attempt].iter().enumerate() {
        for nominate in [false, true] {
            let mut bytes = Vec::new();
            codec
                .encode_request(
                    &ProbeRequest {
                        transaction_id: TransactionId::new([i as u8; 12]),
                        priority: 1,
                        tie_breaker: 1,
                        nominate,
                    },
                    &mut bytes,
                )
                .unwrap();
            out.push(bytes);
        }
        let mut bytes = Vec::new();
        codec
            .encode_response(
                TransactionId::new([0; 12]),
                addr("203.0.113.66:1"),
                &mut bytes,
            )
            .unwrap();
        out.push(bytes);
    }
    out.push(b"\x00\x01garbage".to_vec());
    out
}

#[test]
fn forged_probes_cannot_divert_the_punch() {
    let t0 = Instant::now();
    let forger = addr("203.0.113.66:6666");
    let a_plan = plan(
        ProbeRole::Initiator,
        t0,
        vec![candidate(v1::CandidateKind::Reflexive, "192.0.2.11:5000")],
    );
    let b_plan = plan(
        ProbeRole::Responder,
        t0,
        vec![candidate(v1::CandidateKind::Reflexive, "192.0.2.10:5000")],
    );
    // B alone first: the forger floods it and B must neither answer nor select
    let mut alone = [Host::new(&b_plan, t0, "192.0.2.11:5000")];
    let forged_a = forgeries(ProbeRole::Initiator);
    let log = simulate(&mut alone, t0, Duration::from_secs(3), |_| {
        forged_a
            .iter()
            .map(|bytes| (0, 0, forger, bytes.clone()))
            .collect()
    });
    assert_eq!(alone[0].punch.state(), PunchState::Failed);
    let stats = alone[0].punch.stats();
    assert_eq!(stats.responses_sent, 0);
    assert_eq!(stats.peer_reflexive, 0);
    assert_eq!(stats.probes_received, 0);
    assert!(stats.rejected.integrity >= 100, "{stats:?}");
    assert!(stats.rejected.other_attempt >= 100, "{stats:?}");
    assert!(stats.rejected.malformed >= 100, "{stats:?}");
    assert!(log.iter().all(|(_, _, t)| t.destination != forger));

    // with the real peer and the forger flooding both: the real path wins on both sides
    let forged_b = forgeries(ProbeRole::Responder);
    let mut hosts = [
        Host::new(&a_plan, t0, "192.0.2.10:5000"),
        Host::new(&b_plan, t0, "192.0.2.11:5000"),
    ];
    let log = simulate(&mut hosts, t0, Duration::from_secs(3), |_| {
        let to_b = forged_a.iter().map(|bytes| (1, 0, forger, bytes.clone()));
        let to_a = forged_b.iter().map(|bytes| (0, 0, forger, bytes.clone()));
        to_b.chain(to_a).collect()
    });
    assert_eq!(selected(&hosts[0]).remote, addr("192.0.2.11:5000"));
    assert_eq!(selected(&hosts[1]).remote, addr("192.0.2.10:5000"));
    assert!(log.iter().all(|(_, _, t)| t.destination != forger));
    assert!(hosts[1].punch.stats().rejected.integrity > 0);
}

#[test]
fn the_budget_ends_the_attempt_and_all_sending() {
    let t0 = Instant::now();
    let start = t0 + Duration::from_millis(50);
    let a_plan = plan(
        ProbeRole::Initiator,
        start,
        vec![
            candidate(v1::CandidateKind::Reflexive, "198.51.100.9:1000"),
            candidate(v1::CandidateKind::Host, "10.1.1.1:1000"),
        ],
    );
    let mut hosts = [Host::new(&a_plan, t0, "192.0.2.10:5000")];
    let log = simulate(&mut hosts, t0, Duration::from_secs(4), |_| Vec::new());
    assert_eq!(hosts[0].punch.state(), PunchState::Failed);
    assert!(hosts[0].punch.poll_timeout().is_none());
    let deadline = start + Duration::from_secs(2);
    assert!(log.iter().all(|(at, _, _)| *at >= start && *at < deadline));
    // two pairs, one check each per 20 ms interval over 2 s: about 200 checks
    let sent = hosts[0].punch.stats().requests_sent;
    assert!((180..=204).contains(&sent), "{sent} checks");
    assert_eq!(log.len(), sent as usize);
    assert!(
        hosts[0]
            .punch
            .poll_transmit(deadline + Duration::from_secs(1))
            .is_none()
    );
}

fn prediction_plan(
    role: ProbeRole,
    start: Instant,
    prediction: PortPrediction,
    rate: u32,
) -> PunchPlan {
    PunchPlan {
        strategy: PunchStrategy::PortPrediction,
        prediction: Some(prediction),
        max_probes_per_second: rate,
        probe_interval: Duration::from_millis(10),
        budget: Duration::from_secs(3),
        ..plan(
            role,
            start,
            vec![
                candidate(v1::CandidateKind::Reflexive, "198.51.100.9:1000"),
                candidate(v1::CandidateKind::Host, "10.1.1.1:1000"),
            ],
        )
    }
    .checked()
    .unwrap()
}

#[test]
fn checks_never_exceed_the_rate_of_the_plan() {
    let t0 = Instant::now();
    let rate = 600;
    let a_plan = prediction_plan(
        ProbeRole::Responder,
        t0,
        PortPrediction {
            local_socket_count: 0,
            remote_port_min: 1024,
            remote_port_max: 65535,
            remote_probe_count: 2048,
        },
        rate,
    );
    let mut hosts = [Host::new(&a_plan, t0, "192.0.2.10:5000")];
    let log = simulate(&mut hosts, t0, Duration::from_secs(4), |_| Vec::new());
    let times: Vec<Instant> = log.iter().map(|(at, _, _)| *at).collect();
    let burst = (rate / 50) as usize;
    for (i, at) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|t| **t < *at + Duration::from_secs(1))
            .count();
        assert!(
            in_window <= rate as usize + burst,
            "{in_window} checks in 1 s"
        );
    }
    // the limiter is the bound, not a trickle: the plan's rate is reached
    assert!(
        log.len() >= 3 * rate as usize - 10,
        "{} checks in 3 s",
        log.len()
    );
    // sprayed ports: distinct, in range, on the reflexive IP; candidates still probed every round
    let sprayed: std::collections::HashSet<u16> = log
        .iter()
        .filter(|(_, _, t)| {
            t.destination.ip() == addr("198.51.100.9:1").ip() && t.destination.port() != 1000
        })
        .map(|(_, _, t)| t.destination.port())
        .collect();
    // 2 candidate pairs every 10 ms take 200 checks/s, the spray the other 400/s
    assert!(sprayed.len() > 1000, "{} sprayed ports", sprayed.len());
    assert!(sprayed.iter().all(|p| *p >= 1024));
    let host_checks = log
        .iter()
        .filter(|(_, _, t)| t.destination == addr("10.1.1.1:1000"))
        .count();
    assert!(
        host_checks >= 250,
        "{host_checks} checks of the host candidate"
    );
    assert_eq!(hosts[0].punch.stats().pairs, 2 + 2048);
}

#[test]
fn the_birthday_side_probes_from_its_extra_sockets() {
    let t0 = Instant::now();
    let a_plan = prediction_plan(
        ProbeRole::Initiator,
        t0,
        PortPrediction {
            local_socket_count: 16,
            remote_port_min: 1,
            remote_port_max: 65535,
            remote_probe_count: 0,
        },
        1000,
    );
    let mut hosts = [Host::new(&a_plan, t0, "192.0.2.10:5000")];
    assert_eq!(hosts[0].punch.extra_sockets(), 16);
    let log = simulate(&mut hosts, t0, Duration::from_millis(100), |_| Vec::new());
    let mut used = std::collections::BTreeSet::new();
    for (_, _, t) in &log {
        if t.socket > 0 {
            assert_eq!(t.destination, addr("198.51.100.9:1000"));
            used.insert(t.socket);
        }
    }
    assert_eq!(used, (1..=16).collect());
    assert_eq!(hosts[0].punch.stats().extra_sockets, 16);
}

/// A simulated symmetric NAT in front of the birthday side: every (socket, destination) gets a
/// random external port and only the destination it sent to may answer. The spray side sits
/// behind a port-restricted NAT (only addresses it sent to may reach it).
#[test]
fn birthday_meets_spray_through_simulated_nats() {
    use std::collections::{HashMap, HashSet};

    let t0 = Instant::now();
    let sym_ip = addr("192.0.2.10:1").ip();
    let cone = addr("192.0.2.11:5000");
    let birthday = PunchPlan {
        remote_candidates: vec![candidate(v1::CandidateKind::Reflexive, "192.0.2.11:5000")],
        ..prediction_plan(
            ProbeRole::Initiator,
            t0,
            PortPrediction {
                local_socket_count: 64,
                remote_port_min: 1,
                remote_port_max: 65535,
                remote_probe_count: 0,
            },
            1000,
        )
    };
    let spray = PunchPlan {
        remote_candidates: vec![candidate(v1::CandidateKind::Reflexive, "192.0.2.10:5000")],
        ..prediction_plan(
            ProbeRole::Responder,
            t0,
            PortPrediction {
                local_socket_count: 0,
                remote_port_min: 20000,
                remote_port_max: 24095,
                remote_probe_count: 2048,
            },
            1000,
        )
    };
    let mut a = Punch::new(&birthday, 1, t0).unwrap();
    let mut b = Punch::new(&spray, 2, t0).unwrap();
    let mut rng_port = 20000u16;
    let mut sym_out: HashMap<(usize, SocketAddr), u16> = HashMap::new();
    let mut sym_in: HashMap<u16, (usize, SocketAddr)> = HashMap::new();
    let mut cone_sent: HashSet<SocketAddr> = HashSet::new();
    let mut now = t0;
    while now < t0 + Duration::from_secs(3) && !(a.is_done() && b.is_done()) {
        a.handle_timeout(now);
        b.handle_timeout(now);
        let mut to_b = Vec::new();
        while let Some(t) = a.poll_transmit(now) {
            // pseudo-random but deterministic allocation in 20000..24096
            let port = *sym_out.entry((t.socket, t.destination)).or_insert_with(|| {
                rng_port = 20000 + ((u32::from(rng_port) * 7919 + 13) % 4096) as u16;
                rng_port
            });
            sym_in.insert(port, (t.socket, t.destination));
            // openers open the mapping and expire before the other NAT
            if t.destination == cone && t.ttl.is_none() {
                to_b.push((SocketAddr::new(sym_ip, port), t.payload));
            }
        }
        let mut to_a = Vec::new();
        while let Some(t) = b.poll_transmit(now) {
            cone_sent.insert(t.destination);
            if t.destination.ip() == sym_ip {
                to_a.push((t.destination.port(), t.payload));
            }
        }
        for (from, bytes) in to_b {
            if cone_sent.contains(&from) {
                b.handle_datagram(now, 0, from, &bytes);
            }
        }
        for (port, bytes) in to_a {
            if let Some((socket, peer)) = sym_in.get(&port)
                && *peer == cone
            {
                a.handle_datagram(now, *socket, cone, &bytes);
            }
        }
        now += STEP;
    }
    let (PunchState::Selected(pa), PunchState::Selected(pb)) = (a.state(), b.state()) else {
        panic!("no path: {:?} / {:?}", a.state(), b.state());
    };
    assert!(pa.socket >= 1, "the birthday side selects an extra socket");
    assert_eq!(pa.remote, cone);
    assert_eq!(pb.remote.ip(), sym_ip);
    assert_eq!(pb.remote_kind, v1::CandidateKind::Predicted);
    assert_eq!(pa.mapped, Some(pb.remote));
}

fn instruction() -> v1::HandshakeInstruction {
    let candidate = |kind: v1::CandidateKind, a: &str, span: u32| v1::Candidate {
        kind: kind as i32,
        address: Some(addr(a).into()),
        priority: 1,
        port_span: span,
    };
    v1::HandshakeInstruction {
        handshake_id: ID.to_vec().into(),
        attempt: 2,
        role: v1::HandshakeRole::Responder as i32,
        strategy: v1::HandshakeStrategy::Direct as i32,
        remote_candidates: vec![
            candidate(v1::CandidateKind::Host, "10.0.0.2:4000", 0),
            candidate(v1::CandidateKind::Reflexive, "198.51.100.20:4000", 0),
            candidate(v1::CandidateKind::Predicted, "198.51.100.20:4001", 3),
            candidate(v1::CandidateKind::Relay, "203.0.113.10:50000", 0),
            candidate(v1::CandidateKind::Unspecified, "203.0.113.10:50001", 0),
        ],
        probe_key: KEY.to_vec().into(),
        schedule: Some(v1::PunchSchedule {
            start_at_us: 0,
            probe_interval_ms: 1,
            budget_ms: 120_000,
            keepalive_interval_ms: 0,
        }),
        ..Default::default()
    }
}

#[test]
fn plans_come_from_instructions_bounded() {
    let start = Instant::now();
    let plan = PunchPlan::from_instruction(&instruction(), start).unwrap();
    assert_eq!(plan.role, ProbeRole::Responder);
    assert_eq!(plan.attempt, 2);
    assert_eq!(plan.strategy, PunchStrategy::Direct);
    assert_eq!(
        plan.remote_candidates.len(),
        3,
        "relay and unknown kinds are not probed"
    );
    assert_eq!(plan.remote_candidates[2].port_span, 3);
    assert_eq!(plan.probe_interval, MIN_PROBE_INTERVAL);
    assert_eq!(plan.budget, MAX_BUDGET);
    assert_eq!(plan.max_probes_per_second, DEFAULT_MAX_PROBES_PER_SECOND);
    assert!(plan.prediction.is_none());
    let machine = Punch::new(&plan, 1, start).unwrap();
    assert_eq!(machine.stats().pairs, 1 + 1 + 3);

    let mut relay = instruction();
    relay.set_strategy(v1::HandshakeStrategy::Relay);
    assert_eq!(
        PunchPlan::from_instruction(&relay, start),
        Err(PlanError::NotAPunchStrategy(3))
    );
    let mut short_key = instruction();
    short_key.probe_key = vec![1; 16].into();
    assert_eq!(
        PunchPlan::from_instruction(&short_key, start),
        Err(PlanError::ProbeKey(16))
    );
    let mut no_role = instruction();
    no_role.role = 0;
    assert!(matches!(
        PunchPlan::from_instruction(&no_role, start),
        Err(PlanError::UnknownRole(0))
    ));
    let mut prediction = instruction();
    prediction.set_strategy(v1::HandshakeStrategy::PortPrediction);
    assert!(matches!(
        PunchPlan::from_instruction(&prediction, start),
        Err(PlanError::Prediction(_))
    ));
    prediction.prediction = Some(v1::PortPredictionPlan {
        local_socket_count: 300,
        ..Default::default()
    });
    assert!(matches!(
        PunchPlan::from_instruction(&prediction, start),
        Err(PlanError::Prediction(_))
    ));
    prediction.prediction = Some(v1::PortPredictionPlan {
        local_socket_count: 8,
        remote_port_min: 2000,
        remote_port_max: 1000,
        remote_probe_count: 10,
        max_probes_per_second: 9_999_999,
    });
    assert!(matches!(
        PunchPlan::from_instruction(&prediction, start),
        Err(PlanError::Prediction(_))
    ));
    prediction.prediction = Some(v1::PortPredictionPlan {
        local_socket_count: 8,
        remote_port_min: 1000,
        remote_port_max: 2000,
        remote_probe_count: 10,
        max_probes_per_second: 9_999_999,
    });
    let plan = PunchPlan::from_instruction(&prediction, start).unwrap();
    assert_eq!(plan.max_probes_per_second, MAX_PROBES_PER_SECOND);
    assert_eq!(plan.prediction.unwrap().local_socket_count, 8);
    let mut none = instruction();
    none.remote_candidates.truncate(0);
    assert_eq!(
        PunchPlan::from_instruction(&none, start),
        Err(PlanError::NoCandidates)
    );
}

#[test]
fn local_start_follows_the_schedule_rules() {
    let now = Instant::now();
    // without an estimate: received_at + (start - server time) - rtt/2
    let at = local_start(5_000_000, None, 4_000_000, now, Duration::from_millis(20));
    let ahead = at.duration_since(now);
    assert!(
        ahead >= Duration::from_millis(989) && ahead <= Duration::from_millis(991),
        "{ahead:?}"
    );
    // a start in the past is now
    let past = local_start(1_000_000, None, 4_000_000, now, Duration::ZERO);
    assert!(past >= now);
    // with an estimate: network now = local now + offset
    let unix_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let clock = v1::ClockEstimate {
        offset_us: -3_000_000,
        ..Default::default()
    };
    let at = local_start(
        unix_us - 3_000_000 + 500_000,
        Some(&clock),
        0,
        now,
        Duration::ZERO,
    );
    let ahead = at.saturating_duration_since(Instant::now());
    assert!(
        ahead > Duration::from_millis(400) && ahead <= Duration::from_millis(501),
        "{ahead:?}"
    );
}

#[test]
fn reports_carry_the_counters() {
    let start = Instant::now();
    let plan = PunchPlan::from_instruction(&instruction(), start).unwrap();
    let stats = PunchStats {
        requests_sent: 10,
        responses_sent: 3,
        probes_received: 4,
        first_probe_after: Some(Duration::from_micros(10)),
        ..Default::default()
    };
    let report = punch_report(
        &plan,
        v1::PunchOutcome::Failed,
        &stats,
        None,
        &"x".repeat(600),
    );
    assert_eq!(report.outcome(), v1::PunchOutcome::Failed);
    assert_eq!(report.probes_sent, 13);
    assert_eq!(report.probes_received, 4);
    assert_eq!(report.first_probe_after_ms, 1);
    assert_eq!(report.detail.len(), 512);
    assert_eq!(report.attempt, 2);
    assert!(report.remote_address.is_none());
}

async fn loopback_pair(
    initiator_prediction: Option<PortPrediction>,
) -> (
    Result<PunchSuccess, PunchError>,
    Result<PunchSuccess, PunchError>,
) {
    let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let start = Instant::now() + Duration::from_millis(50);
    let mut a_plan = plan(
        ProbeRole::Initiator,
        start,
        vec![RemoteCandidate {
            kind: v1::CandidateKind::Host,
            address: b.local_addr().unwrap(),
            priority: 1,
            port_span: 1,
        }],
    );
    if let Some(prediction) = initiator_prediction {
        a_plan.strategy = PunchStrategy::PortPrediction;
        a_plan.prediction = Some(prediction);
        a_plan.remote_candidates[0].kind = v1::CandidateKind::Reflexive;
    }
    let b_plan = plan(
        ProbeRole::Responder,
        start,
        vec![RemoteCandidate {
            kind: v1::CandidateKind::Host,
            address: a.local_addr().unwrap(),
            priority: 1,
            port_span: 1,
        }],
    );
    tokio::join!(
        punch(&a_plan, MainSocket::Udp(&a)),
        punch(&b_plan, MainSocket::Udp(&b))
    )
}

#[tokio::test]
async fn the_driver_punches_between_two_loopback_sockets() {
    let (a, b) = loopback_pair(None).await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(matches!(a.path.socket, PathSocket::Main));
    assert_eq!(a.path.remote, b.path.local);
    assert_eq!(b.path.remote, a.path.local);
    assert_eq!(a.path.local_kind, v1::CandidateKind::Host);
    assert!(a.stats.selected_after.is_some());
}

#[tokio::test]
async fn the_driver_opens_and_hands_back_extra_sockets() {
    let (a, b) = loopback_pair(Some(PortPrediction {
        local_socket_count: 4,
        remote_port_min: 1,
        remote_port_max: 65535,
        remote_probe_count: 0,
    }))
    .await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.stats.extra_sockets, 4);
    // whichever socket won, the path is consistent, and an extra socket is handed back open
    // (extra sockets are bound to the unspecified address)
    assert_eq!(b.path.remote.port(), a.path.local.port());
    if matches!(a.path.socket, PathSocket::Main) {
        assert_eq!(b.path.remote, a.path.local);
    }
    if let PathSocket::Extra(socket) = &a.path.socket {
        assert_eq!(socket.local_addr().unwrap(), a.path.local);
        // the openers' TTL is not left on the tunnel's socket
        let fresh = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(socket.ttl().unwrap(), fresh.ttl().unwrap());
    }
}

#[tokio::test]
async fn the_driver_fails_after_the_budget_with_its_counters() {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut a_plan = plan(
        ProbeRole::Initiator,
        Instant::now(),
        vec![RemoteCandidate {
            kind: v1::CandidateKind::Host,
            address: silent.local_addr().unwrap(),
            priority: 1,
            port_span: 1,
        }],
    );
    a_plan.budget = Duration::from_millis(300);
    let error = punch(&a_plan, MainSocket::Udp(&socket)).await.unwrap_err();
    let stats = *error.stats().unwrap();
    assert!(matches!(error, PunchError::NoPath { .. }), "{error}");
    assert!(stats.requests_sent >= 10, "{stats:?}");
    assert_eq!(stats.probes_received, 0);
    // the silent socket got exactly the checks the counter says
    let mut buffer = [0u8; 2048];
    let mut got = 0;
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(20), silent.recv_from(&mut buffer)).await
    {
        got += 1;
    }
    assert_eq!(got, stats.requests_sent, "{stats:?}");
}

#[tokio::test]
async fn the_driver_punches_on_session_sockets_next_to_quic() {
    use std::sync::Arc;

    use crate::session::SharedSocket;

    // two session sockets, each read by a quinn endpoint that diverts non-QUIC datagrams
    let mut sides = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let socket = SharedSocket::bind(addr("127.0.0.1:0"), Some(tx)).unwrap();
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            Arc::clone(&socket) as Arc<dyn quinn::AsyncUdpSocket>,
            Arc::new(quinn::TokioRuntime),
        )
        .unwrap();
        sides.push((socket, rx, endpoint));
    }
    let local = |i: usize| quinn::AsyncUdpSocket::local_addr(&*sides[i].0).unwrap();
    let start = Instant::now() + Duration::from_millis(30);
    let host = |a: SocketAddr| RemoteCandidate {
        kind: v1::CandidateKind::Host,
        address: a,
        priority: 1,
        port_span: 1,
    };
    let a_plan = plan(ProbeRole::Initiator, start, vec![host(local(1))]);
    let b_plan = plan(ProbeRole::Responder, start, vec![host(local(0))]);
    let (a_local, b_local) = (local(0), local(1));
    let [
        (a_socket, mut a_rx, _a_endpoint),
        (b_socket, mut b_rx, _b_endpoint),
    ]: [_; 2] = sides.try_into().unwrap();
    let (a, b) = tokio::join!(
        punch(
            &a_plan,
            MainSocket::Shared {
                socket: &a_socket,
                incoming: &mut a_rx,
            }
        ),
        punch(
            &b_plan,
            MainSocket::Shared {
                socket: &b_socket,
                incoming: &mut b_rx,
            }
        )
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(matches!(a.path.socket, PathSocket::Main));
    assert_eq!(a.path.remote, b_local);
    assert_eq!(b.path.remote, a_local);
    assert_eq!(a.path.mapped, Some(a_local));
}

#[test]
fn unchecked_plans_do_not_panic() {
    // public fields let a caller skip PunchPlan::checked: the machine must stay bounded
    let t0 = Instant::now();
    let mut odd = plan(
        ProbeRole::Initiator,
        t0,
        vec![candidate(v1::CandidateKind::Reflexive, "192.0.2.11:65535")],
    );
    odd.strategy = PunchStrategy::PortPrediction;
    odd.remote_candidates[0].port_span = 1024;
    odd.max_probes_per_second = 0;
    odd.probe_interval = Duration::ZERO;
    for (min, max, count) in [(2000, 1000, 0), (2000, 1000, 5), (0, 10, 5), (5, 5, 2048)] {
        odd.prediction = Some(PortPrediction {
            local_socket_count: 2,
            remote_port_min: min,
            remote_port_max: max,
            remote_probe_count: count,
        });
        let mut machine = Punch::new(&odd, 3, t0).unwrap();
        let mut sent = 0;
        let mut now = t0;
        while now < t0 + Duration::from_millis(100) {
            while machine.poll_transmit(now).is_some() {
                sent += 1;
            }
            now += STEP;
        }
        // rate 0 is read as 1 per second: one burst token, no more, besides the two extra
        // sockets' first openers
        assert_eq!(machine.stats().openers_sent.min(2), 2);
        assert!(sent <= 2 + 2, "{sent} datagrams at rate 0");
    }
    let mut bad_key = odd.clone();
    bad_key.handshake_id.clear();
    assert!(Punch::new(&bad_key, 3, t0).is_err());
}

/// A request of the other side (the spray side, responder) as it reaches us from `from`.
fn far_request(n: u8) -> Vec<u8> {
    let codec = ProbeCodec::new(&ID, 1, &KEY, ProbeRole::Responder).unwrap();
    let mut bytes = Vec::new();
    codec
        .encode_request(
            &ProbeRequest {
                transaction_id: TransactionId::new([n; 12]),
                priority: 1,
                tie_breaker: 9,
                nominate: false,
            },
            &mut bytes,
        )
        .unwrap();
    bytes
}

fn birthday_plan(t0: Instant, sockets: u16, rate: u32, opener_ttl: u8) -> PunchPlan {
    PunchPlan {
        opener_ttl,
        start: t0 + Duration::from_millis(500),
        ..prediction_plan(
            ProbeRole::Initiator,
            t0,
            PortPrediction {
                local_socket_count: sockets,
                remote_port_min: 1,
                remote_port_max: 65535,
                remote_probe_count: 0,
            },
            rate,
        )
    }
    .checked()
    .unwrap()
}

#[test]
fn extra_sockets_send_low_ttl_openers_first_and_full_ttl_only_once_heard() {
    let t0 = Instant::now();
    // a rate of 1/s: the burst of openers is outside the bound, nothing else is
    let plan = birthday_plan(t0, 32, 1, 2);
    assert_eq!(plan.opener_ttl, 2);
    let mut punch = Punch::new(&plan, 3, t0).unwrap();
    assert_eq!(punch.poll_timeout(), Some(t0));
    // the burst: one opener per extra socket at once, before the start, nothing from main
    let mut burst = Vec::new();
    while let Some(t) = punch.poll_transmit(t0) {
        burst.push(t);
    }
    assert_eq!(burst.len(), 32);
    let sockets: std::collections::BTreeSet<usize> = burst.iter().map(|t| t.socket).collect();
    assert_eq!(sockets, (1..=32).collect());
    assert!(burst.iter().all(|t| t.ttl == Some(2)));
    assert!(
        burst
            .iter()
            .all(|t| t.destination == addr("198.51.100.9:1000"))
    );
    assert_eq!(punch.stats().openers_sent, 32);
    assert_eq!(punch.stats().requests_sent, 0);
    // until the start nothing else goes; the next wake-up is a refresh or the start
    assert!(
        punch
            .poll_transmit(t0 + Duration::from_millis(400))
            .is_none()
    );
    // 3 s with nothing heard: extra sockets send openers only, refreshes within the rate
    let mut later = Vec::new();
    let mut now = t0;
    while now < t0 + Duration::from_secs(3) {
        now += STEP;
        punch.handle_timeout(now);
        while let Some(t) = punch.poll_transmit(now) {
            later.push((now, t));
        }
    }
    assert!(later.iter().all(|(_, t)| t.socket == 0 || t.ttl == Some(2)));
    assert!(later.iter().all(|(_, t)| t.socket > 0 || t.ttl.is_none()));
    assert!(later.len() <= 3 + 1, "{} datagrams at 1/s", later.len());
    // the other side's probe reaches extra socket 5: from now on it answers and checks at the
    // normal TTL, the others still send openers only
    let far = addr("198.51.100.9:1000");
    assert_eq!(
        punch.handle_datagram(now, 5, far, &far_request(1)),
        Disposition::Probe
    );
    let answer = punch.poll_transmit(now).unwrap();
    assert_eq!(
        (answer.socket, answer.destination, answer.ttl),
        (5, far, None)
    );
}

#[test]
fn a_heard_socket_joins_the_regular_schedule_and_the_rest_keep_their_mappings() {
    let t0 = Instant::now();
    let plan = birthday_plan(t0, 8, 1000, 3);
    let mut punch = Punch::new(&plan, 4, t0).unwrap();
    let far = addr("198.51.100.9:1000");
    let mut log = Vec::new();
    let mut now = t0;
    let heard_at = t0 + Duration::from_millis(1500);
    while now < t0 + Duration::from_millis(2600) {
        if now == heard_at {
            punch.handle_datagram(now, 3, far, &far_request(2));
        }
        punch.handle_timeout(now);
        while let Some(t) = punch.poll_transmit(now) {
            log.push((now, t));
        }
        now += STEP;
    }
    for (at, t) in &log {
        if t.socket == 0 {
            assert_eq!(t.ttl, None);
        } else if t.socket == 3 && *at >= heard_at {
            assert_eq!(t.ttl, None, "socket 3 heard the other side");
        } else {
            // never a full-TTL datagram from a socket that has heard nothing
            assert_eq!(t.ttl, Some(3), "{t:?} at {:?}", at.duration_since(t0));
        }
    }
    // socket 3 after hearing: the answer, then checks every probe interval (10 ms)
    let full = log
        .iter()
        .filter(|(at, t)| t.socket == 3 && *at >= heard_at)
        .count();
    assert!(full >= 90, "{full} datagrams from socket 3 in 1.1 s");
    // every other extra socket: the burst at t0, refreshes at 1 s and 2 s
    for socket in [1, 2, 4, 8] {
        let openers: Vec<Duration> = log
            .iter()
            .filter(|(_, t)| t.socket == socket)
            .map(|(at, _)| at.duration_since(t0))
            .collect();
        assert_eq!(
            openers,
            [Duration::ZERO, OPENER_REFRESH, 2 * OPENER_REFRESH],
            "socket {socket}"
        );
    }
    assert_eq!(punch.stats().openers_sent, 8 + 2 * 7 + 1);
}

#[test]
fn opener_ttl_zero_sends_full_ttl_checks_from_the_start() {
    let t0 = Instant::now();
    let plan = birthday_plan(t0, 8, 1000, 0);
    let mut punch = Punch::new(&plan, 5, t0).unwrap();
    assert!(
        punch.poll_transmit(t0).is_none(),
        "nothing before the start"
    );
    let mut sockets = std::collections::BTreeSet::new();
    let mut now = plan.start;
    while now < plan.start + Duration::from_millis(50) {
        while let Some(t) = punch.poll_transmit(now) {
            assert_eq!(t.ttl, None);
            sockets.insert(t.socket);
        }
        now += STEP;
    }
    assert_eq!(sockets, (0..=8).collect());
    assert_eq!(punch.stats().openers_sent, 0);
}

#[test]
fn opener_ttl_comes_from_the_plan_bounded() {
    let plan = PunchPlan::from_instruction(&instruction(), Instant::now()).unwrap();
    assert_eq!(plan.opener_ttl, DEFAULT_OPENER_TTL);
    let mut high = plan.clone();
    high.opener_ttl = 200;
    assert_eq!(high.checked().unwrap().opener_ttl, MAX_OPENER_TTL);
}

#[test]
fn extra_sockets_open_toward_every_reflexive_candidate_the_tunnel_socket_first() {
    // the other side announced the mappings of two of its sockets; the one whose port its host
    // candidate has (a port-preserving NAT) is its punching socket
    let t0 = Instant::now();
    let plan = PunchPlan {
        remote_candidates: vec![
            candidate(v1::CandidateKind::Reflexive, "198.51.100.22:42212"),
            candidate(v1::CandidateKind::Reflexive, "198.51.100.22:59929"),
            candidate(v1::CandidateKind::Host, "10.2.0.2:59929"),
        ],
        ..birthday_plan(t0, 4, 1000, 2)
    }
    .checked()
    .unwrap();
    let mut punch = Punch::new(&plan, 6, t0).unwrap();
    let mut burst = Vec::new();
    while let Some(t) = punch.poll_transmit(t0) {
        burst.push(t);
    }
    assert_eq!(burst.len(), 8, "{burst:?}");
    for socket in 1..=4 {
        let targets: Vec<SocketAddr> = burst
            .iter()
            .filter(|t| t.socket == socket)
            .map(|t| t.destination)
            .collect();
        assert_eq!(
            targets,
            [addr("198.51.100.22:59929"), addr("198.51.100.22:42212")]
        );
    }
    assert!(burst.iter().all(|t| t.ttl == Some(2)));
}
