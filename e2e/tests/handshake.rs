//! Tunnel negotiation across real processes: a redis-server the test starts, one
//! `quickp2p-checkpoint`, one `quickp2p-relay` (registered in the store, so instructions carry
//! relay grants), one `quickp2p-handshake` and two `quickp2p-gateway`s pointed at it, and SDK
//! sessions of two applications on different gateways. No punching happens here (that is the
//! punch and tunnel tests' job): this checks the signalling — offers, instructions, trickled
//! candidates, closes, outcome counting — and the isolation between applications.
//!
//! The binaries come from `target/debug` (`cargo build -p quickp2p-checkpoint -p quickp2p-gateway
//! -p quickp2p-handshake -p quickp2p-relay`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use quickp2p_e2e::procs::{self, free_tcp_port, free_udp_port};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use quickp2p::identity::Identity;
use quickp2p::session::{
    AppCredentials, GatewayTrust, HandshakeEvent, Peer, Session, SessionConfig, SessionError,
};
use quickp2p_e2e::binaries::workspace_binary;
use quickp2p_e2e::procs::Proc;
use quickp2p_proto::v1;
use quickp2p_store::{RedisConfig, Store, names};
use quinn::AsyncUdpSocket as _;
use tokio::sync::broadcast;

/// The relays' TURN shared secret, known to the relay and the handshake service.
const SECRET: &str = "handshake-e2e-shared-secret";
/// How long an offer may stay unanswered.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(1500);

fn binary(name: &str) -> std::path::PathBuf {
    workspace_binary(name).unwrap_or_else(|e| panic!("{e}"))
}

fn spawn(name: &str, args: &[String]) -> Proc {
    let program = if name == "redis-server" {
        std::path::PathBuf::from(name)
    } else {
        binary(name)
    };
    let mut command = Command::new(program);
    command.args(args);
    Proc::spawn(name, command).unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Every process of the network; killed (in reverse order) when dropped.
struct Net {
    gateways: Vec<(Proc, SocketAddr, [u8; 32])>,
    /// Two handshake replicas: gateway i calls replica i, so every negotiation between the
    /// gateways' peers is served by both (the state is in the store).
    handshakes: Vec<(Proc, SocketAddr)>,
    relay: Proc,
    relay_addr: SocketAddr,
    checkpoint: Proc,
    redis: Proc,
    redis_url: String,
    secret_a: String,
    secret_b: String,
}

fn create_app(redis_url: &str, id: &str) -> String {
    procs::create_app(Command::new(binary("quickp2p-checkpoint")), redis_url, id)
        .unwrap_or_else(|e| panic!("{e}"))
}

impl Net {
    fn start() -> Net {
        let port = free_tcp_port().unwrap();
        let redis = spawn(
            "redis-server",
            &strings(&[
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]),
        );
        redis
            .wait_for("Ready to accept connections", Duration::from_secs(10))
            .unwrap();
        let redis_url = format!("redis://127.0.0.1:{port}");
        let secret_a = create_app(&redis_url, "app-a");
        let secret_b = create_app(&redis_url, "app-b");
        let checkpoint_port = free_tcp_port().unwrap();
        let checkpoint = spawn(
            "quickp2p-checkpoint",
            &strings(&[
                "--redis",
                &redis_url,
                "--grpc-addr",
                &format!("127.0.0.1:{checkpoint_port}"),
                "--http-addr",
                &format!("127.0.0.1:{}", free_tcp_port().unwrap()),
                "--replica-id",
                "cp-1",
                "--log",
                "error",
            ]),
        );
        checkpoint
            .wait_for("grpc", Duration::from_secs(20))
            .unwrap();
        let relay_addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port().unwrap())
            .parse()
            .unwrap();
        let relay = spawn(
            "quickp2p-relay",
            &strings(&[
                "--redis",
                &redis_url,
                "--listen-addr",
                &relay_addr.to_string(),
                "--control-addr",
                &format!("127.0.0.1:{}", free_tcp_port().unwrap()),
                "--http-addr",
                &format!("127.0.0.1:{}", free_tcp_port().unwrap()),
                // below the ephemeral range the TURN port was picked from
                "--port-range",
                "20000-20999",
                "--shared-secret",
                SECRET,
                "--replica-id",
                "relay-1",
                "--log",
                "error",
            ]),
        );
        relay.wait_for("ops", Duration::from_secs(20)).unwrap();
        let mut handshakes = Vec::new();
        let mut handshake_ports = Vec::new();
        for i in 1..=2 {
            let port = free_tcp_port().unwrap();
            let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port().unwrap())
                .parse()
                .unwrap();
            let handshake = spawn(
                "quickp2p-handshake",
                &strings(&[
                    "--redis",
                    &redis_url,
                    "--grpc-addr",
                    &format!("127.0.0.1:{port}"),
                    "--http-addr",
                    &http.to_string(),
                    "--relay-shared-secret",
                    SECRET,
                    "--answer-timeout-ms",
                    &ANSWER_TIMEOUT.as_millis().to_string(),
                    "--replica-id",
                    &format!("hs-{i}"),
                    "--log",
                    "error",
                ]),
            );
            handshake.wait_for("ops", Duration::from_secs(20)).unwrap();
            handshakes.push((handshake, http));
            handshake_ports.push(port);
        }
        let mut gateways = Vec::new();
        for (i, handshake_port) in (1..=2).zip(handshake_ports) {
            let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port().unwrap())
                .parse()
                .unwrap();
            let gw = spawn(
                "quickp2p-gateway",
                &strings(&[
                    "--redis",
                    &redis_url,
                    "--udp-addr",
                    &quic.to_string(),
                    "--grpc-addr",
                    &format!("127.0.0.1:{}", free_tcp_port().unwrap()),
                    "--checkpoint-url",
                    &format!("http://127.0.0.1:{checkpoint_port}"),
                    "--handshake-url",
                    &format!("http://127.0.0.1:{handshake_port}"),
                    "--http-addr",
                    &format!("127.0.0.1:{}", free_tcp_port().unwrap()),
                    "--replica-id",
                    &format!("gw-{i}"),
                    "--log",
                    "error",
                ]),
            );
            let line = gw
                .wait_for("fingerprint sha256:", Duration::from_secs(20))
                .unwrap();
            let hex_pin = line.split("sha256:").nth(1).unwrap().trim();
            let pin: [u8; 32] = (0..32)
                .map(|k| u8::from_str_radix(&hex_pin[2 * k..2 * k + 2], 16).unwrap())
                .collect::<Vec<u8>>()
                .try_into()
                .unwrap();
            gateways.push((gw, quic, pin));
        }
        // replicas register at start; give Redis a moment
        std::thread::sleep(Duration::from_millis(300));
        Net {
            gateways,
            handshakes,
            relay,
            relay_addr,
            checkpoint,
            redis,
            redis_url,
            secret_a,
            secret_b,
        }
    }

    /// A peer of `app` logged in on gateway `first`.
    async fn peer(&self, app: &str, first: usize) -> Session {
        let secret = if app == "app-a" {
            &self.secret_a
        } else {
            &self.secret_b
        };
        let mut addrs: Vec<SocketAddr> = self.gateways.iter().map(|g| g.1).collect();
        addrs.rotate_left(first);
        let pins = GatewayTrust::Pinned(self.gateways.iter().map(|g| g.2).collect());
        let config = SessionConfig::new(
            addrs,
            AppCredentials::new(app, secret.clone()),
            Identity::generate().unwrap(),
        )
        .trust(pins);
        Peer::connect(config).await.unwrap()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for g in &mut self.gateways {
            g.0.kill();
        }
        for h in &mut self.handshakes {
            h.0.kill();
        }
        self.relay.kill();
        self.checkpoint.kill();
        self.redis.kill();
    }
}

/// The next handshake event `pick` accepts, within `within`.
async fn next_event<T>(
    events: &mut broadcast::Receiver<HandshakeEvent>,
    within: Duration,
    mut pick: impl FnMut(HandshakeEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(within, async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(e) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("handshake events ended: {e}"),
            }
        }
    })
    .await
    .expect("the handshake event in time")
}

fn host_candidate(session: &Session) -> v1::Candidate {
    let port = session.socket().local_addr().unwrap().port();
    v1::Candidate {
        kind: v1::CandidateKind::Host as i32,
        address: Some(SocketAddr::from(([127, 0, 0, 1], port)).into()),
        priority: 126 << 24,
        port_span: 0,
    }
}

fn nat_report(mapping: v1::NatMapping, filtering: v1::NatFiltering) -> v1::NatReport {
    v1::NatReport {
        behaviour: Some(v1::NatBehaviour {
            mapping: mapping as i32,
            filtering: filtering as i32,
            ..v1::NatBehaviour::default()
        }),
        ..v1::NatReport::default()
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

async fn metrics(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    raw
}

fn sample(body: &str, name: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_negotiation_between_two_gateways() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let net = Net::start();
    let a = net.peer("app-a", 0).await;
    let b = net.peer("app-a", 1).await;
    let c = net.peer("app-b", 1).await;

    // the SDK learns its reflexive address and a clock estimate on its own
    let deadline = Instant::now() + Duration::from_secs(3);
    while a.clock_estimate().is_none() || b.clock_estimate().is_none() {
        assert!(Instant::now() < deadline, "no clock estimate after login");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let clock = a.clock_estimate().unwrap();
    assert!(clock.samples >= 1 && clock.rtt_us < 1_000_000, "{clock:?}");
    assert!(
        clock.offset_us.abs() < 1_000_000,
        "same host, same clock: {clock:?}"
    );
    let a_observed = a.observed_address().expect("observed address");
    assert_eq!(a_observed.port(), a.socket().local_addr().unwrap().port());

    // NAT reports are kept for the handshakes: A full cone, B port-restricted cone
    a.report_nat(nat_report(
        v1::NatMapping::EndpointIndependent,
        v1::NatFiltering::EndpointIndependent,
    ))
    .await
    .unwrap();
    b.report_nat(nat_report(
        v1::NatMapping::EndpointIndependent,
        v1::NatFiltering::AddressAndPortDependent,
    ))
    .await
    .unwrap();

    // --- A asks for a tunnel to B (other gateway): B gets the offer
    let mut ea = a.handshake_events();
    let mut eb = b.handshake_events();
    let requested = a
        .request_tunnel(v1::RequestTunnel {
            target: Some(b.peer_id().clone()),
            candidates: vec![host_candidate(&a)],
            clock: a.clock_estimate(),
            ..v1::RequestTunnel::default()
        })
        .await
        .unwrap();
    assert_eq!(requested.handshake_id.len(), 16);
    assert_eq!(requested.attempt, 1);
    let offer = next_event(&mut eb, Duration::from_secs(3), |e| match e {
        HandshakeEvent::Offer(o) => Some(o),
        _ => None,
    })
    .await;
    assert_eq!(offer.handshake_id, requested.handshake_id);
    assert_eq!(offer.initiator.as_ref(), Some(a.peer_id()));
    assert!(offer.answer_by_unix_ms > now_us() / 1000);

    // --- B answers: both get an instruction
    let answered_at_us = now_us();
    b.share_candidates(v1::ShareCandidates {
        handshake_id: offer.handshake_id.clone(),
        attempt: offer.attempt,
        candidates: vec![host_candidate(&b)],
        clock: b.clock_estimate(),
        ..v1::ShareCandidates::default()
    })
    .await
    .unwrap();
    let instruction = |e| match e {
        HandshakeEvent::Instruction {
            instruction,
            server_time_us,
            ..
        } => Some((instruction, server_time_us)),
        _ => None,
    };
    let (ia, sa) = next_event(&mut ea, Duration::from_secs(3), instruction).await;
    let (ib, sb) = next_event(&mut eb, Duration::from_secs(3), instruction).await;
    assert_eq!(ia.handshake_id, requested.handshake_id);
    assert_eq!(ia.role(), v1::HandshakeRole::Initiator);
    assert_eq!(ib.role(), v1::HandshakeRole::Responder);
    assert_eq!(ia.remote_peer.as_ref(), Some(b.peer_id()));
    assert_eq!(ib.remote_peer.as_ref(), Some(a.peer_id()));
    assert_eq!(ia.probe_key.len(), 32);
    assert_eq!(ia.probe_key, ib.probe_key, "one probe key for both");
    // full cone x port-restricted cone: direct simultaneous open
    assert_eq!(ia.strategy(), v1::HandshakeStrategy::Direct);
    assert_eq!(ib.strategy(), v1::HandshakeStrategy::Direct);
    assert_eq!(
        ia.remote_nat.unwrap().filtering(),
        v1::NatFiltering::AddressAndPortDependent
    );
    // each gets the other's candidates (its own host one and the gateway-observed one)
    let addrs = |i: &v1::HandshakeInstruction| -> Vec<SocketAddr> {
        i.remote_candidates
            .iter()
            .filter_map(|c| c.address.as_ref().and_then(|a| a.try_into().ok()))
            .collect()
    };
    assert!(addrs(&ia).contains(&host_candidate(&b).address.unwrap().try_into().unwrap()));
    assert!(addrs(&ib).contains(&host_candidate(&a).address.unwrap().try_into().unwrap()));
    assert!(addrs(&ib).contains(&a_observed));
    // the same start, in the future when sent, soon
    let (schedule_a, schedule_b) = (ia.schedule.unwrap(), ib.schedule.unwrap());
    assert_eq!(schedule_a.start_at_us, schedule_b.start_at_us);
    assert!(schedule_a.start_at_us > sa && schedule_b.start_at_us > sb);
    assert!(schedule_a.start_at_us > answered_at_us);
    assert!(schedule_a.start_at_us < answered_at_us + 3_000_000);
    assert!(schedule_a.budget_ms > 0 && schedule_a.probe_interval_ms > 0);
    // relay grants on the registered relay, one credential per peer
    let (ga, gb) = (
        ia.relay.clone().expect("grant"),
        ib.relay.clone().expect("grant"),
    );
    assert_eq!(ga.relay_id, "relay-1");
    let server: SocketAddr = (&ga.servers[0]).try_into().unwrap();
    assert_eq!(server, net.relay_addr);
    assert!(ga.username.ends_with(&a.peer_id().to_string()));
    assert!(gb.username.ends_with(&b.peer_id().to_string()));
    assert_eq!(
        ga.password,
        quickp2p_relay::credentials::password_for(SECRET.as_bytes(), &ga.username)
    );
    assert!(ga.expires_at_unix_ms > now_us() / 1000);

    // --- a late candidate of A trickles to B
    let late = v1::Candidate {
        kind: v1::CandidateKind::Relay as i32,
        address: Some(SocketAddr::from(([127, 0, 0, 1], 40_001)).into()),
        priority: 5,
        port_span: 0,
    };
    a.share_candidates(v1::ShareCandidates {
        handshake_id: requested.handshake_id.clone(),
        attempt: 1,
        candidates: vec![late.clone()],
        end_of_candidates: true,
        ..v1::ShareCandidates::default()
    })
    .await
    .unwrap();
    let trickled = next_event(&mut eb, Duration::from_secs(3), |e| match e {
        HandshakeEvent::RemoteCandidates(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(trickled.candidates, vec![late]);
    assert!(trickled.end_of_candidates);

    // --- a peer of another application cannot touch the negotiation
    let foreign = c
        .share_candidates(v1::ShareCandidates {
            handshake_id: requested.handshake_id.clone(),
            attempt: 1,
            candidates: vec![host_candidate(&c)],
            ..v1::ShareCandidates::default()
        })
        .await;
    assert!(
        matches!(
            &foreign,
            Err(SessionError::Other {
                code: v1::ErrorCode::NotFound,
                ..
            })
        ),
        "{foreign:?}"
    );

    // --- outcomes: each side once; the attempt is counted once per NAT pair
    let report = |outcome| v1::PunchReport {
        handshake_id: requested.handshake_id.clone(),
        attempt: 1,
        outcome: outcome as i32,
        tunnel_ready_after_ms: 150,
        ..v1::PunchReport::default()
    };
    a.report_punch_outcome(report(v1::PunchOutcome::Direct))
        .await
        .unwrap();
    b.report_punch_outcome(report(v1::PunchOutcome::Direct))
        .await
        .unwrap();
    // a repeated report changes nothing
    a.report_punch_outcome(report(v1::PunchOutcome::Direct))
        .await
        .unwrap();
    let store = Store::redis(RedisConfig::new(net.redis_url.clone()))
        .await
        .unwrap();
    let field = names::outcome_field((1, 1), (1, 3), "direct");
    let counted = store
        .get_counter_map(names::HANDSHAKE_OUTCOMES_MAP)
        .await
        .unwrap();
    assert_eq!(counted.get(&field), Some(&1), "{counted:?}");
    let per_app = store
        .get_counter_map(&names::app_outcomes_map("app-a"))
        .await
        .unwrap();
    assert_eq!(per_app.get(&field), Some(&1));
    let ready = store
        .get_counter_map(names::HANDSHAKE_READY_MS_MAP)
        .await
        .unwrap();
    assert_eq!(
        ready.get(&names::ready_ms_field((1, 1), (1, 3), 150)),
        Some(&1)
    );
    assert!(
        store
            .get_counter(names::HANDSHAKE_COUNTERS_SINCE)
            .await
            .unwrap()
            > 0
    );
    // the attempt was counted by whichever replica got the second report
    let mut body = String::new();
    for h in &net.handshakes {
        body.push_str(&metrics(h.1).await);
    }
    assert_eq!(
        sample(
            &body,
            "qp_handshake_outcomes_total",
            &["outcome=\"direct\"", "strategy=\"direct\""]
        ),
        1.0,
        "{body}"
    );
    assert!(
        sample(
            &body,
            "qp_handshake_nat_behaviour_total",
            &[
                "mapping=\"endpoint_independent\"",
                "filtering=\"address_and_port_dependent\""
            ]
        ) >= 1.0
    );

    // --- other applications' peers look offline, both ways
    let to_other_app = a
        .request_tunnel(v1::RequestTunnel {
            target: Some(c.peer_id().clone()),
            ..v1::RequestTunnel::default()
        })
        .await;
    assert!(
        matches!(to_other_app, Err(SessionError::PeerOffline(_))),
        "{to_other_app:?}"
    );
    let from_other_app = c
        .request_tunnel(v1::RequestTunnel {
            target: Some(b.peer_id().clone()),
            ..v1::RequestTunnel::default()
        })
        .await;
    assert!(
        matches!(from_other_app, Err(SessionError::PeerOffline(_))),
        "{from_other_app:?}"
    );

    // --- an offer nobody answers is closed for both with TIMEOUT after the answer deadline
    let asked = Instant::now();
    let unanswered = a
        .request_tunnel(v1::RequestTunnel {
            target: Some(b.peer_id().clone()),
            candidates: vec![host_candidate(&a)],
            ..v1::RequestTunnel::default()
        })
        .await
        .unwrap();
    let timed_out = |e| match e {
        HandshakeEvent::Closed(c) => Some(c),
        _ => None,
    };
    let closed_a = next_event(&mut ea, ANSWER_TIMEOUT + Duration::from_secs(2), timed_out).await;
    let waited = asked.elapsed();
    assert_eq!(closed_a.handshake_id, unanswered.handshake_id);
    assert_eq!(
        closed_a.reason.as_ref().unwrap().code(),
        v1::ErrorCode::Timeout
    );
    assert!(
        waited >= ANSWER_TIMEOUT - Duration::from_millis(100),
        "{waited:?}"
    );
    let closed_b = next_event(&mut eb, Duration::from_secs(2), timed_out).await;
    assert_eq!(closed_b.handshake_id, unanswered.handshake_id);
    // answering late is refused
    let late_answer = b
        .share_candidates(v1::ShareCandidates {
            handshake_id: unanswered.handshake_id.clone(),
            attempt: 1,
            candidates: vec![host_candidate(&b)],
            ..v1::ShareCandidates::default()
        })
        .await;
    assert!(
        matches!(late_answer, Err(SessionError::Expired(_))),
        "{late_answer:?}"
    );

    // --- a declined offer is closed for the initiator with DECLINED
    let declined = a
        .request_tunnel(v1::RequestTunnel {
            target: Some(b.peer_id().clone()),
            ..v1::RequestTunnel::default()
        })
        .await
        .unwrap();
    let offer = next_event(&mut eb, Duration::from_secs(3), |e| match e {
        HandshakeEvent::Offer(o) if o.handshake_id == declined.handshake_id => Some(o),
        _ => None,
    })
    .await;
    b.report_punch_outcome(v1::PunchReport {
        handshake_id: offer.handshake_id.clone(),
        attempt: offer.attempt,
        outcome: v1::PunchOutcome::Declined as i32,
        ..v1::PunchReport::default()
    })
    .await
    .unwrap();
    let closed = next_event(&mut ea, Duration::from_secs(3), |e| match e {
        HandshakeEvent::Closed(c) if c.handshake_id == declined.handshake_id => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(closed.outcome(), v1::PunchOutcome::Declined);
    // declines are not part of the punch matrix
    let counted = store
        .get_counter_map(names::HANDSHAKE_OUTCOMES_MAP)
        .await
        .unwrap();
    assert_eq!(counted.values().sum::<i64>(), 1, "{counted:?}");

    // --- an address-dependent mapping facing port-restricted filtering: the birthday plan
    let mut hard = nat_report(
        v1::NatMapping::AddressDependent,
        v1::NatFiltering::AddressAndPortDependent,
    );
    if let Some(b) = hard.behaviour.as_mut() {
        b.port_allocation = v1::PortAllocation::Random as i32;
    }
    a.report_nat(hard).await.unwrap();
    let predicted = a
        .request_tunnel(v1::RequestTunnel {
            target: Some(b.peer_id().clone()),
            candidates: vec![host_candidate(&a)],
            ..v1::RequestTunnel::default()
        })
        .await
        .unwrap();
    next_event(&mut eb, Duration::from_secs(3), |e| match e {
        HandshakeEvent::Offer(o) if o.handshake_id == predicted.handshake_id => Some(()),
        _ => None,
    })
    .await;
    b.share_candidates(v1::ShareCandidates {
        handshake_id: predicted.handshake_id.clone(),
        attempt: 1,
        candidates: vec![host_candidate(&b)],
        ..v1::ShareCandidates::default()
    })
    .await
    .unwrap();
    let (ia, _) = next_event(&mut ea, Duration::from_secs(3), instruction).await;
    let (ib, _) = next_event(&mut eb, Duration::from_secs(3), instruction).await;
    assert_eq!(ia.strategy(), v1::HandshakeStrategy::PortPrediction);
    assert_eq!(ib.strategy(), v1::HandshakeStrategy::PortPrediction);
    // A (the hard mapping) opens many sockets toward B's one reflexive port
    let (pa, pb) = (ia.prediction.unwrap(), ib.prediction.unwrap());
    let b_port = u32::from(b.observed_address().unwrap().port());
    assert!(pa.local_socket_count >= 64, "{pa:?}");
    assert_eq!((pa.remote_port_min, pa.remote_port_max), (b_port, b_port));
    assert_eq!(pa.remote_probe_count, 0);
    // B probes many random ports of A's address, bounded in count and rate
    assert_eq!(pb.local_socket_count, 0);
    assert!((512..=2048).contains(&pb.remote_probe_count), "{pb:?}");
    assert!(pb.remote_port_max > pb.remote_port_min);
    assert!((1..=2000).contains(&pb.max_probes_per_second));
    assert!(ia.schedule.unwrap().budget_ms > schedule_a.budget_ms);
    a.report_punch_outcome(v1::PunchReport {
        handshake_id: predicted.handshake_id.clone(),
        attempt: 1,
        outcome: v1::PunchOutcome::Cancelled as i32,
        ..v1::PunchReport::default()
    })
    .await
    .unwrap();
    let closed = next_event(&mut eb, Duration::from_secs(3), |e| match e {
        HandshakeEvent::Closed(c) if c.handshake_id == predicted.handshake_id => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(closed.outcome(), v1::PunchOutcome::Cancelled);

    a.close().await;
    b.close().await;
    c.close().await;
}
