//! SDK tunnels on loopback: authenticated QUIC between two peers' tunnel endpoints, directly and
//! through the real `quickp2p-relay` binary (its registry on the machine's Redis at
//! 127.0.0.1:6379 under a unique key prefix; loopback peers allowed by flag).
//!
//! * a direct tunnel carries streams and datagrams both ways and reports `Direct` (IPv4, and
//!   IPv6 loopback where there is one); an initiator that starts before its responder waits still
//!   gets through; keep-alives hold an idle tunnel open past its idle timeout;
//! * a wrong expected peer id fails the handshake on both sides, with typed errors;
//! * a third peer (another key) can neither pass for an expected peer nor get a responder that
//!   expects someone else to answer it;
//! * a tunnel runs on a session-style socket and QUIC endpoint next to another QUIC connection
//!   (a stand-in gateway), in both roles;
//! * a relayed tunnel carries data through the relay, then moves to the direct path while a
//!   stream is running — no byte lost, `path()` reports the change, and the tunnel keeps working
//!   after both relay allocations are released.
//!
//! The relay binary comes from `target/debug` (`cargo build -p quickp2p-relay`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use quickp2p::identity::Identity;
use quickp2p::relay::RelayCredentials;
use quickp2p::tunnel::{
    Tunnel, TunnelConfig, TunnelEndpoint, TunnelError, TunnelPath, TunnelRelay, TunnelRoute,
};
use quickp2p_e2e::binaries::workspace_binary;

const SECRET: &str = "tunnel-test-secret";

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn config() -> TunnelConfig {
    TunnelConfig::default()
        .keep_alive(Duration::from_millis(500))
        .handshake_timeout(Duration::from_secs(5))
}

fn endpoint(identity: &Identity) -> (TunnelEndpoint, SocketAddr) {
    let ep = TunnelEndpoint::bind(loopback(), identity.clone()).unwrap();
    let addr = ep.local_addr().unwrap();
    (ep, addr)
}

/// Opens A → B (A initiator, B responder) over the given routes.
async fn open_pair(
    a: &TunnelEndpoint,
    b: &TunnelEndpoint,
    a_route: TunnelRoute,
    b_route: TunnelRoute,
) -> (Tunnel, Tunnel) {
    let (ta, tb) = tokio::join!(
        a.connect(b.peer_id(), a_route, config()),
        b.accept(a.peer_id(), b_route, config()),
    );
    (ta.unwrap(), tb.unwrap())
}

/// Sends `data` on a new stream from `from`; `to` echoes it back; checks the echo.
async fn echo_round_trip(from: &Tunnel, to: &Tunnel, data: &[u8]) {
    let (mut send, mut recv) = from.open_bi().await.unwrap();
    send.write_all(data).await.unwrap();
    send.finish().unwrap();
    let (mut back, mut incoming) = to.accept_bi().await.unwrap();
    let got = incoming.read_to_end(1 << 24).await.unwrap();
    assert_eq!(got, data);
    back.write_all(&got).await.unwrap();
    back.finish().unwrap();
    let echoed = recv.read_to_end(1 << 24).await.unwrap();
    assert_eq!(echoed, data);
}

/// Datagrams are unreliable: send a few until one arrives.
async fn datagram_arrives(from: &Tunnel, to: &Tunnel, data: &'static [u8]) {
    let receive = async {
        loop {
            let got = to.read_datagram().await.unwrap();
            if got == data {
                return;
            }
        }
    };
    let send = async {
        for _ in 0..20 {
            from.send_datagram(Bytes::from_static(data)).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        () = receive => {}
        () = send => panic!("no datagram arrived"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tunnel_carries_streams_and_datagrams_both_ways() {
    let alice = Identity::generate().unwrap();
    let bob = Identity::generate().unwrap();
    let (a, a_addr) = endpoint(&alice);
    let (b, b_addr) = endpoint(&bob);
    let (ta, tb) = open_pair(
        &a,
        &b,
        TunnelRoute::Direct(b_addr),
        TunnelRoute::Direct(a_addr),
    )
    .await;
    assert_eq!(ta.remote_peer(), &bob.peer_id());
    assert_eq!(tb.remote_peer(), &alice.peer_id());
    assert_eq!(ta.path().unwrap(), TunnelPath::Direct(b_addr));
    assert_eq!(tb.path().unwrap(), TunnelPath::Direct(a_addr));
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    echo_round_trip(&ta, &tb, &big).await;
    echo_round_trip(&tb, &ta, b"from the responder").await;
    datagram_arrives(&ta, &tb, b"datagram a->b").await;
    datagram_arrives(&tb, &ta, b"datagram b->a").await;
    let stats = ta.stats().unwrap();
    assert!(stats.bytes_sent > 300_000, "{stats:?}");
    ta.close(7, b"bye");
    match tb.closed().await {
        TunnelError::Connection(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.reason.as_ref(), b"bye");
        }
        other => panic!("unexpected close: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initiator_may_start_before_the_responder_waits() {
    let alice = Identity::generate().unwrap();
    let bob = Identity::generate().unwrap();
    let (a, a_addr) = endpoint(&alice);
    let (b, b_addr) = endpoint(&bob);
    // alice's first Initial reaches bob before bob waits for her: ignored (not refused), and
    // her retransmission gets through
    let late_accept = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        b.accept(a.peer_id(), TunnelRoute::Direct(a_addr), config())
            .await
    };
    let (ta, tb) = tokio::join!(
        a.connect(b.peer_id(), TunnelRoute::Direct(b_addr), config()),
        late_accept,
    );
    let (ta, tb) = (ta.unwrap(), tb.unwrap());
    echo_round_trip(&ta, &tb, b"late but fine").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_hold_an_idle_tunnel_open() {
    let alice = Identity::generate().unwrap();
    let bob = Identity::generate().unwrap();
    let (a, a_addr) = endpoint(&alice);
    let (b, b_addr) = endpoint(&bob);
    let config = config()
        .keep_alive(Duration::from_millis(200))
        .idle_timeout(Duration::from_millis(1000));
    let (ta, tb) = tokio::join!(
        a.connect(b.peer_id(), TunnelRoute::Direct(b_addr), config),
        b.accept(a.peer_id(), TunnelRoute::Direct(a_addr), config),
    );
    let (ta, tb) = (ta.unwrap(), tb.unwrap());
    // idle for more than twice the idle timeout: only the keep-alives cross the routes
    let before = ta.stats().unwrap().bytes_received;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(ta.stats().unwrap().bytes_received > before);
    echo_round_trip(&ta, &tb, b"still open").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tunnel_over_ipv6_loopback() {
    // virtual addresses are IPv4 (240.0.0.0/4): on an IPv6 socket quinn sees them v4-mapped
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        println!("SKIP: no IPv6 loopback");
        return;
    }
    let alice = Identity::generate().unwrap();
    let bob = Identity::generate().unwrap();
    let a = TunnelEndpoint::bind("[::1]:0".parse().unwrap(), alice).unwrap();
    let b = TunnelEndpoint::bind("[::1]:0".parse().unwrap(), bob).unwrap();
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let (ta, tb) = open_pair(
        &a,
        &b,
        TunnelRoute::Direct(b_addr),
        TunnelRoute::Direct(a_addr),
    )
    .await;
    assert_eq!(ta.path().unwrap(), TunnelPath::Direct(b_addr));
    echo_round_trip(&ta, &tb, b"over IPv6").await;
    datagram_arrives(&tb, &ta, b"v6 datagram").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expected_peer_fails_on_both_sides() {
    let alice = Identity::generate().unwrap();
    let bob = Identity::generate().unwrap();
    let carol = Identity::generate().unwrap();
    let (a, a_addr) = endpoint(&alice);
    let (b, b_addr) = endpoint(&bob);

    // the initiator expects carol, but bob answers: alice refuses, bob hears it
    let (ta, tb) = tokio::join!(
        a.connect(carol.peer_id(), TunnelRoute::Direct(b_addr), config()),
        b.accept(alice.peer_id(), TunnelRoute::Direct(a_addr), config()),
    );
    match ta {
        Err(TunnelError::PeerRejected(why)) => {
            assert!(why.contains(&carol.peer_id().to_string()), "{why}");
        }
        other => panic!("alice: expected PeerRejected, got {other:?}"),
    }
    assert!(
        matches!(tb, Err(TunnelError::RejectedByPeer(_))),
        "bob: {tb:?}"
    );

    // the responder expects carol, but alice connects: bob refuses, alice hears it
    let (ta, tb) = tokio::join!(
        a.connect(bob.peer_id(), TunnelRoute::Direct(b_addr), config()),
        b.accept(carol.peer_id(), TunnelRoute::Direct(a_addr), config()),
    );
    match tb {
        Err(TunnelError::PeerRejected(why)) => {
            assert!(why.contains(&alice.peer_id().to_string()), "{why}");
        }
        other => panic!("bob: expected PeerRejected, got {other:?}"),
    }
    assert!(
        matches!(ta, Err(TunnelError::RejectedByPeer(_))),
        "alice: {ta:?}"
    );

    // the endpoints are still good for the right peers
    let (ta, tb) = open_pair(
        &a,
        &b,
        TunnelRoute::Direct(b_addr),
        TunnelRoute::Direct(a_addr),
    )
    .await;
    echo_round_trip(&ta, &tb, b"still fine").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_peer_cannot_join_or_impersonate() {
    let alice = Identity::generate().unwrap();
    let bob = Identity::generate().unwrap();
    let mallory = Identity::generate().unwrap();
    let (a, a_addr) = endpoint(&alice);
    let (b, b_addr) = endpoint(&bob);
    let (m, m_addr) = endpoint(&mallory);
    let (ta, tb) = open_pair(
        &a,
        &b,
        TunnelRoute::Direct(b_addr),
        TunnelRoute::Direct(a_addr),
    )
    .await;

    // mallory dials bob while the tunnel runs: bob waits for nobody at mallory's address, so
    // mallory gets no answer at all
    let short = config().handshake_timeout(Duration::from_millis(1500));
    let attempt = m
        .connect(bob.peer_id(), TunnelRoute::Direct(b_addr), short)
        .await;
    assert!(
        matches!(attempt, Err(TunnelError::Timeout(_))),
        "{attempt:?}"
    );

    // the punched path was diverted to mallory: bob expects alice there, mallory presents its
    // own key (it has no other) and is refused
    // (bob keeps waiting for alice after refusing mallory, until its deadline)
    let (tm, tb2) = tokio::join!(
        m.connect(bob.peer_id(), TunnelRoute::Direct(b_addr), config()),
        b.accept(alice.peer_id(), TunnelRoute::Direct(m_addr), short),
    );
    assert!(
        matches!(tb2, Err(TunnelError::PeerRejected(_))),
        "bob: {tb2:?}"
    );
    assert!(
        matches!(tm, Err(TunnelError::RejectedByPeer(_))),
        "mallory: {tm:?}"
    );

    // and alice, diverted to mallory, refuses mallory posing as bob
    let (ta2, tm2) = tokio::join!(
        a.connect(bob.peer_id(), TunnelRoute::Direct(m_addr), config()),
        m.accept(alice.peer_id(), TunnelRoute::Direct(a_addr), config()),
    );
    assert!(
        matches!(ta2, Err(TunnelError::PeerRejected(_))),
        "alice: {ta2:?}"
    );
    assert!(tm2.is_err(), "mallory: {tm2:?}");

    // the real tunnel was not disturbed
    echo_round_trip(&ta, &tb, b"private").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_shares_the_socket_and_endpoint_with_a_gateway_connection() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // a stand-in gateway: any QUIC server (rcgen certificate) that echoes one stream
    let cert = rcgen::generate_simple_self_signed(vec!["gateway".into()]).unwrap();
    let cert_der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let gateway = quinn::Endpoint::server(
        quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key).unwrap(),
        loopback(),
    )
    .unwrap();
    let gateway_addr = gateway.local_addr().unwrap();
    let echo = tokio::spawn(async move {
        let conn = gateway.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let got = recv.read_to_end(1 << 20).await.unwrap();
        send.write_all(&got).await.unwrap();
        send.finish().unwrap();
        conn.closed().await;
    });

    // alice's one socket and endpoint, as a session has them
    let alice = Identity::generate().unwrap();
    let bob = Identity::generate().unwrap();
    let socket = quickp2p::session::SharedSocket::bind(loopback(), None).unwrap();
    let a_addr = quinn::AsyncUdpSocket::local_addr(&*socket).unwrap();
    let mut endpoint_config = quinn::EndpointConfig::default();
    endpoint_config.grease_quic_bit(false);
    let mut quic = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config,
        None,
        Arc::clone(&socket) as Arc<dyn quinn::AsyncUdpSocket>,
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    quic.set_default_client_config(
        quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap(),
    );
    let to_gateway = quic
        .connect(gateway_addr, "gateway")
        .unwrap()
        .await
        .unwrap();
    let a =
        TunnelEndpoint::with_endpoint(quic.clone(), Arc::clone(&socket), alice.clone()).unwrap();
    let (b, b_addr) = endpoint(&bob);
    let (ta, tb) = open_pair(
        &a,
        &b,
        TunnelRoute::Direct(b_addr),
        TunnelRoute::Direct(a_addr),
    )
    .await;
    // both run at once on the one socket
    let gateway_round_trip = async {
        let (mut send, mut recv) = to_gateway.open_bi().await.unwrap();
        send.write_all(b"to the gateway").await.unwrap();
        send.finish().unwrap();
        recv.read_to_end(1 << 20).await.unwrap()
    };
    let data = pattern(0, 200_000);
    let (echoed, ()) = tokio::join!(gateway_round_trip, echo_round_trip(&ta, &tb, &data));
    assert_eq!(echoed, b"to the gateway");
    // the responder role works on the shared endpoint too
    let (tb2, ta2) = open_pair(
        &b,
        &a,
        TunnelRoute::Direct(a_addr),
        TunnelRoute::Direct(b_addr),
    )
    .await;
    echo_round_trip(&tb2, &ta2, b"responder on the session socket").await;
    to_gateway.close(0u32.into(), b"done");
    echo.await.unwrap();
}

// ------------------------------------------------------------------------------------ relay

/// A child process killed (and reaped) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `quickp2p-relay` on loopback ports chosen by the system; returns its TURN and ops
/// addresses.
fn start_relay() -> (Running, SocketAddr, SocketAddr) {
    let binary = workspace_binary("quickp2p-relay").unwrap_or_else(|e| panic!("{e}"));
    let prefix = format!(
        "qp-tunnel-test-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut child = Command::new(binary)
        .args(["--listen-addr", "127.0.0.1:0"])
        .args(["--control-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0"])
        .args(["--redis", "redis://127.0.0.1:6379"])
        .args(["--redis-key-prefix", &prefix])
        .args(["--shared-secret", SECRET])
        .args(["--replica-id", "relay-tunnel-test"])
        .args(["--allow-loopback-peers", "true"])
        .args(["--log", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut turn = None;
    let mut ops = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("turn") {
            turn = rest.split_whitespace().next().map(|a| a.parse().unwrap());
        }
        if let Some(rest) = line.strip_prefix("ops") {
            let url = rest.split_whitespace().next().unwrap();
            ops = Some(url.trim_start_matches("http://").parse().unwrap());
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (
        running,
        turn.expect("the relay printed its TURN address"),
        ops.expect("the relay printed its ops address"),
    )
}

/// Bytes the relay forwarded to its clients so far (its `/metrics`).
fn relayed_bytes(ops: SocketAddr) -> u64 {
    use std::io::{Read as _, Write as _};
    let mut http = std::net::TcpStream::connect(ops).unwrap();
    http.write_all(b"GET /metrics HTTP/1.0\r\nHost: relay\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    http.read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| l.starts_with("qp_relay_bytes_total") && l.contains("to_client"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn credentials(identity: &Identity) -> RelayCredentials {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let minted = quickp2p_relay::mint_credentials(
        SECRET.as_bytes(),
        &identity.peer_id().to_string(),
        Duration::from_secs(600),
        now,
    )
    .unwrap();
    RelayCredentials {
        username: minted.username,
        password: minted.password,
    }
}

fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_tunnel_moves_to_the_direct_path_without_losing_data() {
    let (relay, turn, ops) = start_relay();
    let alice = Identity::generate().unwrap();
    let bob = Identity::generate().unwrap();
    let (a, a_addr) = endpoint(&alice);
    let (b, b_addr) = endpoint(&bob);

    // both allocate; each routes to the other's relayed address
    let (ra, rb) = tokio::join!(
        TunnelRelay::allocate(a.socket(), turn, credentials(&alice)),
        TunnelRelay::allocate(b.socket(), turn, credentials(&bob)),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_ne!(ra.relayed_addr(), rb.relayed_addr());
    let (a_route, b_route) = tokio::join!(
        ra.route_to(rb.relayed_addr()),
        rb.route_to(ra.relayed_addr())
    );
    let (ta, tb) = open_pair(&a, &b, a_route.unwrap(), b_route.unwrap()).await;
    ta.hold_relay(Arc::clone(&ra));
    tb.hold_relay(Arc::clone(&rb));
    assert_eq!(ta.path().unwrap(), TunnelPath::Relayed { relay: turn });
    assert_eq!(tb.path().unwrap(), TunnelPath::Relayed { relay: turn });
    echo_round_trip(&ta, &tb, &pattern(0, 100_000)).await;
    datagram_arrives(&tb, &ta, b"relayed datagram").await;
    // the relay's workers publish their counts on their next packet after 50 ms: the
    // keep-alives bring one
    let mut before = 0;
    for _ in 0..40 {
        before = relayed_bytes(ops);
        if before >= 200_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(before >= 200_000, "the relay forwarded only {before} bytes");

    // a stream runs while both sides move to the punched path
    const TOTAL: usize = 8 << 20;
    const CHUNK: usize = 64 << 10;
    let (mut send, _recv) = ta.open_bi().await.unwrap();
    let (switch_tx, mut switch_rx) = tokio::sync::mpsc::channel::<()>(1);
    let writer = async {
        let mut sent = 0;
        while sent < TOTAL {
            send.write_all(&pattern(sent, CHUNK)).await.unwrap();
            sent += CHUNK;
            if sent == TOTAL / 2 {
                switch_tx.send(()).await.unwrap();
            }
        }
        send.finish().unwrap();
    };
    let reader = async {
        let (_back, mut recv) = tb.accept_bi().await.unwrap();
        recv.read_to_end(TOTAL + 1).await.unwrap()
    };
    let switcher = async {
        switch_rx.recv().await.unwrap();
        ta.switch_to_direct(b_addr).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        tb.switch_to_direct(a_addr).unwrap();
    };
    let ((), got, ()) = tokio::join!(writer, reader, switcher);
    assert_eq!(got.len(), TOTAL);
    assert!(got == pattern(0, TOTAL), "stream content differs");
    assert_eq!(ta.path().unwrap(), TunnelPath::Direct(b_addr));
    assert_eq!(tb.path().unwrap(), TunnelPath::Direct(a_addr));

    let during = relayed_bytes(ops) - before;
    assert!(
        during < TOTAL as u64,
        "the whole stream went through the relay ({during} bytes)"
    );
    // the direct path carries the traffic now: release the allocations, stop the relay, the
    // tunnel keeps working
    drop((ra, rb));
    ta.release_relays().await.unwrap();
    tb.release_relays().await.unwrap();
    drop(relay);
    echo_round_trip(&ta, &tb, b"direct after the relay is gone").await;
    datagram_arrives(&ta, &tb, b"direct datagram").await;
}
