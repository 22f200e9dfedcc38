//! The SDK's relay client (`quickp2p::relay`) against the relay library run in-process, the way
//! the all-in-one supernode embeds it (`Relay::bind(Config::loopback_dev(..), Store::embedded())`
//! then `run(shutdown)`): two clients allocate, bind channels to each other's relayed addresses
//! and exchange data both ways; a Send-indication path; a client fed by its caller's
//! demultiplexer; credentials refused; the allocation released.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quickp2p::relay::{RelayClient, RelayCredentials, RelayError, RelayOptions, TurnError};
use quickp2p_relay::{Config, Relay, mint_credentials};
use quickp2p_store::Store;
use tokio::net::UdpSocket;

const SECRET: &str = "in-process-secret";

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn credentials(peer: &str) -> RelayCredentials {
    let c = mint_credentials(
        SECRET.as_bytes(),
        peer,
        Duration::from_secs(600),
        now_unix(),
    )
    .unwrap();
    RelayCredentials {
        username: c.username,
        password: c.password,
    }
}

async fn start() -> (
    quickp2p_service_kit::Shutdown,
    quickp2p_relay::Addresses,
    Arc<quickp2p_relay::RelayState>,
) {
    let mut config = Config::loopback_dev(SECRET);
    config.listen.set_port(0);
    config.advertised.set_port(0);
    config.control_addr.set_port(0);
    config.port_range = (43000, 43999);
    let relay = Relay::bind(config, Store::embedded()).await.unwrap();
    let addresses = relay.addresses();
    let state = relay.state();
    let stop = quickp2p_service_kit::Shutdown::new();
    tokio::spawn(relay.run(stop.clone()));
    (stop, addresses, state)
}

async fn socket() -> Arc<UdpSocket> {
    Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap())
}

async fn recv(client: &RelayClient) -> (Vec<u8>, std::net::SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("nothing relayed to {:?} within 5 s", client.allocation()))
        .unwrap();
    (buf[..n].to_vec(), from)
}

#[tokio::test]
async fn two_sdk_clients_talk_through_the_relay() {
    let (stop, addresses, state) = start().await;
    let server = addresses.turn;
    let (alice, a) = RelayClient::connect(
        socket().await,
        server,
        credentials("alice"),
        RelayOptions::default(),
    )
    .await
    .unwrap();
    let (bob, b) = RelayClient::connect(
        socket().await,
        server,
        credentials("bob"),
        RelayOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(a.relayed.ip(), server.ip());
    assert!((43000..=43999).contains(&a.relayed.port()));
    assert_eq!(a.lifetime, Duration::from_secs(600));
    assert_eq!(state.allocations(), 2);

    // channels both ways
    let ch = alice.bind_channel(b.relayed).await.unwrap();
    assert!((0x4000..=0x4FFF).contains(&ch));
    bob.bind_channel(a.relayed).await.unwrap();
    for i in 0..20u8 {
        alice.send_to(&[i; 100], b.relayed).await.unwrap();
        let (data, from) = recv(&bob).await;
        assert_eq!((data, from), (vec![i; 100], a.relayed));
        bob.send_to(&[i; 1200], a.relayed).await.unwrap();
        let (data, from) = recv(&alice).await;
        assert_eq!((data.len(), from), (1200, b.relayed));
    }

    // a third client with only a permission: Send indications out, Data indications in
    let (carol, c) = RelayClient::connect(
        socket().await,
        server,
        credentials("carol"),
        RelayOptions::default(),
    )
    .await
    .unwrap();
    let err = carol.send_to(b"too early", a.relayed).await.unwrap_err();
    assert!(matches!(err, RelayError::Client(_)), "{err:?}");
    carol.create_permission(a.relayed.ip()).await.unwrap();
    alice.create_permission(c.relayed.ip()).await.unwrap();
    carol
        .send_to(b"via send indication", a.relayed)
        .await
        .unwrap();
    assert_eq!(
        recv(&alice).await,
        (b"via send indication".to_vec(), c.relayed)
    );
    alice
        .send_to(b"back as data indication", c.relayed)
        .await
        .unwrap();
    assert_eq!(
        recv(&carol).await,
        (b"back as data indication".to_vec(), a.relayed)
    );

    // counts reach the shared counters within a second (the worker's sweep)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stats = quickp2p_relay::stats(&state, addresses.advertised);
    assert_eq!(stats.packets_to_peers, 42);
    assert_eq!(stats.packets_to_clients, 42);

    // release
    carol.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(state.allocations(), 2);
    stop.cancel();
}

#[tokio::test]
async fn a_fed_client_shares_its_socket_with_other_traffic() {
    let (stop, addresses, _state) = start().await;
    let server = addresses.turn;
    let shared = socket().await;
    let (client, feed) = RelayClient::with_feed(
        Arc::clone(&shared),
        server,
        credentials("dave"),
        RelayOptions::default(),
    );
    let (other_tx, mut other_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let reader = Arc::clone(&shared);
    tokio::spawn(async move {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = reader.recv_from(&mut buf).await {
            if from == feed.server() {
                feed.push(from, &buf[..n]);
            } else {
                let _ = other_tx.send(buf[..n].to_vec()).await;
            }
        }
    });
    let allocation = client.allocate().await.unwrap();
    // a direct datagram to the shared socket is not the relay client's
    let direct = socket().await;
    direct
        .send_to(b"direct", shared.local_addr().unwrap())
        .await
        .unwrap();
    assert_eq!(other_rx.recv().await.unwrap(), b"direct");
    // and relayed data still arrives through the feed
    let (erin, e) = RelayClient::connect(
        socket().await,
        server,
        credentials("erin"),
        RelayOptions::default(),
    )
    .await
    .unwrap();
    erin.bind_channel(allocation.relayed).await.unwrap();
    client.bind_channel(e.relayed).await.unwrap();
    erin.send_to(b"through the feed", allocation.relayed)
        .await
        .unwrap();
    assert_eq!(
        recv(&client).await,
        (b"through the feed".to_vec(), e.relayed)
    );
    stop.cancel();
}

#[tokio::test]
async fn wrong_credentials_and_denied_peers_are_typed_errors() {
    let (stop, addresses, state) = start().await;
    let server = addresses.turn;
    let bad = RelayCredentials {
        username: credentials("frank").username,
        password: "wrong".into(),
    };
    let err = RelayClient::connect(socket().await, server, bad, RelayOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RelayError::Turn {
                error: TurnError::Unauthorized { code: 401 },
                ..
            }
        ),
        "{err:?}"
    );

    let (grace, _) = RelayClient::connect(
        socket().await,
        server,
        credentials("grace"),
        RelayOptions::default(),
    )
    .await
    .unwrap();
    let err = grace
        .create_permission("10.0.0.1".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RelayError::Turn {
                error: TurnError::Rejected { code: 403, .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        state
            .counters()
            .refusals(quickp2p_relay::counters::Refusal::DeniedPeerAddress),
        1
    );

    // draining: 508
    state.set_draining(true);
    let err = RelayClient::connect(
        socket().await,
        server,
        credentials("heidi"),
        RelayOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            RelayError::Turn {
                error: TurnError::Rejected { code: 508, .. },
                ..
            }
        ),
        "{err:?}"
    );
    stop.cancel();
}
