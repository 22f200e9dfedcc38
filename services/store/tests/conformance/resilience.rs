//! Redis loss and return: a redis-server started by the test is killed under an open store with
//! an active subscription; operations must fail quickly with a retryable error (not hang), and
//! after the server comes back on the same port both the operations and the subscription must
//! recover by themselves.

use std::time::{Duration, Instant};

use bytes::Bytes;
use quickp2p_store::{PageRequest, RedisConfig, Store, StoreError};

use crate::support::{RedisServer, TempDir, eventually, free_port, peer, unique_prefix};

const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
/// An operation against a dead server must return within this bound.
const FAIL_FAST: Duration = Duration::from_secs(3);
const RECOVERY: Duration = Duration::from_secs(15);

fn assert_retryable<T: std::fmt::Debug>(
    what: &str,
    started: Instant,
    result: Result<T, StoreError>,
) {
    let elapsed = started.elapsed();
    eprintln!("{what}: {elapsed:?} {result:?}");
    match result {
        Err(e) if e.is_retryable() => {}
        other => panic!("{what} while Redis is down: expected Unavailable/Timeout, got {other:?}"),
    }
    assert!(
        elapsed < FAIL_FAST,
        "{what} took {elapsed:?} while Redis is down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_subscription_survive_redis_restart() {
    let dir = TempDir::new("qp-store-resilience");
    let port = free_port();
    let mut server = tokio::task::spawn_blocking({
        let path = dir.0.clone();
        move || RedisServer::start(port, &path, &[])
    })
    .await
    .unwrap();

    let config = RedisConfig {
        url: format!("redis://127.0.0.1:{port}"),
        key_prefix: unique_prefix(),
        connect_timeout: COMMAND_TIMEOUT,
        command_timeout: COMMAND_TIMEOUT,
        health_check_interval: Duration::from_millis(200),
    };
    let store = Store::redis(config).await.unwrap();
    store.ping().await.unwrap();
    store
        .put_peer(&peer("app1", "p1"), Duration::from_secs(60))
        .await
        .unwrap();
    let mut sub = store.subscribe_delivery("gw-1").await.unwrap();
    assert_eq!(
        store
            .publish_delivery("gw-1", Bytes::from_static(b"before"))
            .await
            .unwrap(),
        1
    );
    let got = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&b"before"[..]));

    server.kill();

    for round in 0..3 {
        let t = Instant::now();
        assert_retryable("ping", t, store.ping().await);
        let t = Instant::now();
        assert_retryable("get_peer", t, store.get_peer("app1", "p1").await);
        let t = Instant::now();
        assert_retryable(
            "put_ephemeral",
            t,
            store
                .put_ephemeral("k", Bytes::from_static(b"v"), Duration::from_secs(5))
                .await,
        );
        let t = Instant::now();
        assert_retryable(
            "list_peers",
            t,
            store.list_peers("app1", PageRequest::first(10)).await,
        );
        let t = Instant::now();
        assert_retryable(
            "publish_delivery",
            t,
            store
                .publish_delivery("gw-1", Bytes::from_static(b"lost"))
                .await,
        );
        let t = Instant::now();
        assert_retryable("subscribe_events", t, store.subscribe_events("ev").await);
        if round < 2 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    recover(&store, sub).await;
    drop(server);
}

/// Checks that the store and the subscription come back once the server is up again.
async fn recover(store: &Store, mut sub: quickp2p_store::Subscription) {
    eventually(RECOVERY, "ping to succeed after the restart", || {
        let store = store.clone();
        async move { store.ping().await.is_ok() }
    })
    .await;
    // the restarted server is empty (no persistence): writes and reads work again
    store
        .put_peer(&peer("app1", "p2"), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(store.get_peer("app1", "p2").await.unwrap().is_some());

    // the old subscription resubscribes by itself
    let start = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let payload = Bytes::from(format!("after-{attempt}"));
        let receivers = store
            .publish_delivery("gw-1", payload.clone())
            .await
            .unwrap();
        if receivers > 0 {
            let got = tokio::time::timeout(Duration::from_secs(5), sub.recv())
                .await
                .expect("message on the resubscribed channel")
                .expect("subscription open");
            // earlier attempts published while nobody listened are lost; this one arrives
            assert_eq!(got, payload);
            eprintln!(
                "resubscribed after {:?}, {attempt} attempts",
                start.elapsed()
            );
            break;
        }
        assert!(
            start.elapsed() < RECOVERY,
            "subscription did not recover within {RECOVERY:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // and new subscriptions work too
    let mut events = store.subscribe_events("ev").await.unwrap();
    assert_eq!(
        store
            .publish_event("ev", Bytes::from_static(b"e"))
            .await
            .unwrap(),
        1
    );
    let got = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&b"e"[..]));
}

/// A store opened while Redis is down (a service starting before its Redis) reports
/// unavailability, then works — including pub/sub — once Redis is up, without being reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_opened_before_redis_starts() {
    let dir = TempDir::new("qp-store-late-redis");
    let port = free_port();
    let config = RedisConfig {
        url: format!("redis://127.0.0.1:{port}"),
        key_prefix: unique_prefix(),
        connect_timeout: COMMAND_TIMEOUT,
        command_timeout: COMMAND_TIMEOUT,
        health_check_interval: Duration::from_millis(200),
    };
    let store = Store::redis(config).await.unwrap();
    let t = Instant::now();
    assert_retryable("ping", t, store.ping().await);
    let t = Instant::now();
    assert_retryable(
        "subscribe_delivery",
        t,
        store.subscribe_delivery("gw-1").await,
    );

    let server = tokio::task::spawn_blocking({
        let path = dir.0.clone();
        move || RedisServer::start(port, &path, &[])
    })
    .await
    .unwrap();
    eventually(RECOVERY, "ping to succeed once Redis is up", || {
        let store = store.clone();
        async move { store.ping().await.is_ok() }
    })
    .await;
    let mut sub = store.subscribe_delivery("gw-1").await.unwrap();
    assert_eq!(
        store
            .publish_delivery("gw-1", Bytes::from_static(b"hello"))
            .await
            .unwrap(),
        1
    );
    let got = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&b"hello"[..]));
    drop(server);
}
