//! Gateways and a checkpoint in one process over the embedded store, with SDK peers: login,
//! messages within one gateway and across two, presence, limits. (The same scenarios with real
//! processes and Redis are in `e2e/tests/sessions.rs`.)

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use quickp2p::identity::Identity;
use quickp2p::session::{
    AppCredentials, GatewayTrust, Peer, Presence, Session, SessionConfig, SessionError,
};
use quickp2p_checkpoint::{Checkpoint, ensure_dev_application};
use quickp2p_gateway::{Config, Gateway};
use quickp2p_service_kit::Shutdown;
use quickp2p_store::Store;

struct Net {
    gateways: Vec<std::net::SocketAddr>,
    /// Each gateway's internal Deliver URL.
    deliver_urls: Vec<String>,
    pins: Vec<[u8; 32]>,
    app: quickp2p_checkpoint::DevApplication,
    stop: Shutdown,
    /// Each gateway's own shutdown (a child of `stop`) and its running `run`.
    gateway_runs: Vec<(
        Shutdown,
        tokio::task::JoinHandle<Result<(), quickp2p_gateway::RunError>>,
    )>,
}

async fn network(gateways: usize) -> Net {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = Store::embedded();
    let app = ensure_dev_application(&store, "test-app").await.unwrap();
    let stop = Shutdown::new();
    let checkpoint = Checkpoint::bind(quickp2p_checkpoint::Config::loopback(), store.clone())
        .await
        .unwrap();
    let url = format!("http://{}", checkpoint.addresses().grpc);
    tokio::spawn(checkpoint.run(stop.clone()));
    let mut addrs = Vec::new();
    let mut pins = Vec::new();
    let mut deliver_urls = Vec::new();
    let mut gateway_runs = Vec::new();
    for i in 0..gateways {
        let mut config = Config::loopback(url.clone());
        config.udp_addr = "127.0.0.1:0".parse().unwrap();
        config.gateway_id = format!("gw-{i}");
        config.limits.requests_per_second = 50;
        config.limits.max_in_flight = 16;
        let gateway = Gateway::bind(config, store.clone()).unwrap();
        addrs.push(gateway.addresses().quic);
        deliver_urls.push(gateway.addresses().advertised_grpc);
        pins.push(gateway.fingerprint());
        let own = stop.child_token();
        gateway_runs.push((own.clone(), tokio::spawn(gateway.run(own))));
    }
    // let the replica registrations land
    tokio::time::sleep(Duration::from_millis(100)).await;
    Net {
        gateways: addrs,
        deliver_urls,
        pins,
        app,
        stop,
        gateway_runs,
    }
}

async fn peer(net: &Net, gateway: usize) -> Session {
    let mut gateways = net.gateways.clone();
    gateways.rotate_left(gateway);
    let config = SessionConfig::new(
        gateways,
        AppCredentials::new(net.app.app_id.clone(), net.app.secret.clone()),
        Identity::generate().unwrap(),
    )
    .trust(GatewayTrust::Pinned(net.pins.clone()));
    Peer::connect(config).await.unwrap()
}

/// The next message of an inbox, within 5 s.
async fn next_message(
    inbox: &mut quickp2p::session::Messages,
) -> quickp2p::session::IncomingMessage {
    tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .expect("a message within 5 s")
        .expect("the inbox is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_presence_across_two_gateways() {
    let net = network(2).await;
    let x = peer(&net, 0).await;
    let y = peer(&net, 1).await;
    assert_eq!(x.gateway(), Some(net.gateways[0]));
    assert_eq!(y.gateway(), Some(net.gateways[1]));
    let mut x_in = x.messages().unwrap();
    let mut y_in = y.messages().unwrap();

    let states = x.subscribe_presence(&[y.peer_id().clone()]).await.unwrap();
    assert_eq!(states[0].presence, Presence::Online);

    x.send_message(y.peer_id(), "hello y").await.unwrap();
    let m = next_message(&mut y_in).await;
    assert_eq!(&m.payload[..], b"hello y");
    assert_eq!(&m.sender, x.peer_id());
    y.send_message(x.peer_id(), "hello x").await.unwrap();
    let m = next_message(&mut x_in).await;
    assert_eq!(&m.payload[..], b"hello x");

    // presence: a new peer comes and goes
    let v_id = Identity::generate().unwrap();
    let mut events = y.presence_events();
    let snapshot = y.subscribe_presence(&[v_id.peer_id()]).await.unwrap();
    assert_eq!(snapshot[0].presence, Presence::Offline);
    let config = SessionConfig::new(
        net.gateways.clone(),
        AppCredentials::new(net.app.app_id.clone(), net.app.secret.clone()),
        v_id.clone(),
    )
    .trust(GatewayTrust::Pinned(net.pins.clone()));
    let v = Peer::connect(config).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (e.peer.clone(), e.presence),
        (v_id.peer_id(), Presence::Online)
    );
    v.close().await;
    let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((e.peer, e.presence), (v_id.peer_id(), Presence::Offline));

    // errors
    let err = x
        .send_message(&v_id.peer_id(), "anyone?")
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::PeerOffline(_)), "{err:?}");
    let err = x
        .send_message(y.peer_id(), vec![0u8; 62_000])
        .await
        .unwrap_err();
    assert!(
        matches!(err, SessionError::TooLarge { limit: 61_440, .. }),
        "{err:?}"
    );
    let bad = SessionConfig::new(
        net.gateways.clone(),
        AppCredentials::new(net.app.app_id.clone(), "wrong-secret"),
        Identity::generate().unwrap(),
    )
    .trust(GatewayTrust::Pinned(net.pins.clone()));
    let err = Peer::connect(bad).await.unwrap_err();
    assert!(matches!(err, SessionError::Unauthenticated(_)), "{err:?}");
    net.stop.cancel();
}

/// A gateway shutting down tells its peers to go away and closes their connections; they resume
/// their sessions on another gateway by themselves, and messages flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_shutting_down_sends_its_peers_to_another() {
    let mut net = network(2).await;
    let x = peer(&net, 0).await;
    let y = peer(&net, 1).await;
    assert_eq!(x.gateway(), Some(net.gateways[0]));
    let mut y_in = y.messages().unwrap();

    let (stop, run) = net.gateway_runs.remove(0);
    let stopped_at = std::time::Instant::now();
    stop.cancel();
    // every connection closed and drained, and the sessions cleaned up, well within the drain
    // timeout (the peer acknowledges its Kicked frame, then the connection closes)
    tokio::time::timeout(
        quickp2p_gateway::DRAIN_TIMEOUT + Duration::from_secs(2),
        run,
    )
    .await
    .expect("the gateway stops within its drain timeout")
    .unwrap()
    .unwrap();
    assert!(
        stopped_at.elapsed() < quickp2p_gateway::DRAIN_TIMEOUT,
        "the gateway waited for its drain timeout: {:?}",
        stopped_at.elapsed()
    );

    let moved = tokio::time::timeout(Duration::from_secs(10), async {
        while x.gateway() != Some(net.gateways[1]) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(moved.is_ok(), "x is still on {:?}", x.gateway());
    // the same session goes on: same peer id, and messages arrive
    x.send_message(y.peer_id(), "after the move").await.unwrap();
    let m = next_message(&mut y_in).await;
    assert_eq!(&m.payload[..], b"after the move");
    assert_eq!(&m.sender, x.peer_id());
    net.stop.cancel();
}

/// The one-socket design: QUIC runs over the session's socket, everything else on it is handed to
/// the application, and the session is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_quic_datagrams_on_the_session_socket_are_diverted() {
    use quinn::AsyncUdpSocket as _;
    let net = network(1).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let mut config = SessionConfig::new(
        net.gateways.clone(),
        AppCredentials::new(net.app.app_id.clone(), net.app.secret.clone()),
        Identity::generate().unwrap(),
    )
    .trust(GatewayTrust::Pinned(net.pins.clone()))
    .non_quic(tx);
    config.bind = "127.0.0.1:0".parse().unwrap();
    let x = Peer::connect(config).await.unwrap();
    let x_addr = x.socket().local_addr().unwrap();
    let stray = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // a STUN-looking datagram (first byte 0) and a DTLS one (first byte 22)
    stray
        .send_to(&[0x00, 0x01, 0x00, 0x00], x_addr)
        .await
        .unwrap();
    stray.send_to(&[22, 0xfe, 0xfd], x_addr).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.kind, quickp2p::wire::PacketKind::Stun);
    assert_eq!(first.from, stray.local_addr().unwrap());
    let second = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.kind, quickp2p::wire::PacketKind::Dtls);
    // and the SDK sends non-QUIC datagrams from the same socket
    x.socket()
        .send_to(b"\x00\x01ping", stray.local_addr().unwrap())
        .unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), stray.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (&buf[..n], from.port()),
        (&b"\x00\x01ping"[..], x_addr.port())
    );
    // the session still works
    let y = peer(&net, 0).await;
    x.send_message(y.peer_id(), "after the noise")
        .await
        .unwrap();
    net.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_beyond_the_limits_are_refused_with_rate_limited() {
    let net = network(1).await;
    let x = peer(&net, 0).await;
    let y = peer(&net, 0).await;
    let sends = (0..100).map(|i| {
        let x = x.clone();
        let to = y.peer_id().clone();
        async move { x.send_message(&to, format!("m{i}")).await }
    });
    let results = futures::future::join_all(sends).await;
    let limited = results
        .iter()
        .filter(|r| matches!(r, Err(SessionError::RateLimited { .. })))
        .count();
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert!(
        limited > 0 && accepted > 0,
        "accepted {accepted}, rate limited {limited}"
    );
    net.stop.cancel();
}

/// The delivery stream between replicas: each item answered with its own status, in order, the
/// accepted one delivered to the peer; a batch outside 1..=1024 items ends the stream with a
/// clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_stream_answers_each_item_and_refuses_bad_batches() {
    use quickp2p_proto::v1;
    let net = network(1).await;
    let x = peer(&net, 0).await;
    let mut inbox = x.messages().unwrap();
    let mut client = v1::deliver_client::DeliverClient::connect(net.deliver_urls[0].clone())
        .await
        .unwrap();
    let item = |seq: u64, app: &str, recipient: v1::PeerId, text: &str| v1::DeliverItem {
        seq,
        app_id: Some(v1::AppId::new(app.to_owned())),
        recipient: Some(recipient),
        event: Some(v1::PeerEvent {
            event: Some(v1::peer_event::Event::Message(v1::IncomingMessage {
                sender: Some(x.peer_id().clone()),
                payload: bytes::Bytes::from(text.to_owned()),
                message_id: bytes::Bytes::from_static(b"0123456789abcdef"),
                client_message_id: bytes::Bytes::new(),
                accepted_at_unix_ms: 1,
            })),
        }),
        traceparent: String::new(),
    };
    let stranger = Identity::generate().unwrap().peer_id();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = client
        .deliver_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(v1::DeliverBatch {
        origin: "test".into(),
        items: vec![
            item(7, &net.app.app_id, x.peer_id().clone(), "for x"),
            item(8, &net.app.app_id, stranger, "for nobody"),
            item(9, "another-app", x.peer_id().clone(), "wrong app"),
        ],
    })
    .await
    .unwrap();
    let result = answers.message().await.unwrap().unwrap();
    let got: Vec<(u64, v1::DeliveryStatus)> =
        result.results.iter().map(|r| (r.seq, r.status())).collect();
    assert_eq!(
        got,
        vec![
            (7, v1::DeliveryStatus::Accepted),
            (8, v1::DeliveryStatus::NotAttached),
            (9, v1::DeliveryStatus::NotAttached),
        ]
    );
    let m = next_message(&mut inbox).await;
    assert_eq!(&m.payload[..], b"for x");
    tx.send(v1::DeliverBatch {
        origin: "test".into(),
        items: Vec::new(),
    })
    .await
    .unwrap();
    let refused = answers.message().await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("1 to 1024 items"), "{refused:?}");
    // the wrong-application item reached nobody
    assert!(
        tokio::time::timeout(Duration::from_millis(300), inbox.recv())
            .await
            .is_err()
    );
    net.stop.cancel();
}
