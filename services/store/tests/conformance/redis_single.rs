//! The conformance suite on the machine's Redis (`QP_REDIS_URL`, default
//! `redis://127.0.0.1:6379`): one test per case, each under its own key prefix (so tests run in
//! parallel without colliding), whose keys are deleted when the test ends, pass or fail.

macro_rules! redis_tests {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let ctx = crate::support::RedisTestStore::new().await;
                crate::cases::$case(ctx.store.clone()).await;
            }
        )*
    };
}

all_cases!(redis_tests);

/// White-box check of the Redis layout after concurrent writes and expiry: once expired peers
/// are swept, the raw index sets hold exactly the members of the live peers' attributes (so it
/// is not only the query script's defensive filtering that keeps results right), and nothing of
/// the expired peers is left in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_index_matches_attributes_after_concurrency_and_sweep() {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use quickp2p_store::{Attributes, PublishMode};

    use crate::support::{RedisTestStore, peer, redis_url};

    const APP: &str = "raw";
    const KEYS: [&str; 4] = ["color", "k0", "k1", "k2"];
    let ctx = RedisTestStore::new().await;
    let store = ctx.store.clone();
    let live: Vec<String> = (0..6).map(|i| format!("l{i}")).collect();
    for (i, long) in live.iter().enumerate() {
        let short = format!("s{i}");
        store
            .put_peer(&peer(APP, &short), Duration::from_millis(800))
            .await
            .unwrap();
        store
            .put_peer(&peer(APP, long), Duration::from_secs(120))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..6 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40usize {
                let p = format!("{}{}", if i % 2 == 0 { "l" } else { "s" }, (i + w) % 6);
                // a peer is written every 6th round by one writer: vary values over rounds
                let color = ["red", "green", "blue"][(i / 6 + w) % 3];
                let attrs: Attributes = [
                    ("color".to_owned(), color.to_owned()),
                    (format!("k{}", (i / 6) % 3), format!("x{}", i % 4)),
                ]
                .into();
                let mode = if i % 5 == 0 {
                    PublishMode::Replace
                } else {
                    PublishMode::Merge
                };
                let _ = store.publish_attributes(APP, &p, &attrs, mode).await;
                if i % 7 == 0 {
                    let _ = store
                        .unpublish_attributes(APP, &p, &["color".to_owned()])
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let swept = store.sweep_expired_peers(APP, 100).await.unwrap();
    assert!(swept <= 6, "swept {swept}");

    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let base = format!("{}:{{app:{APP}}}", ctx.prefix);
    for key in KEYS {
        let mut expected = BTreeSet::new();
        for p in &live {
            let attrs = store.get_peer_attributes(APP, p).await.unwrap().unwrap();
            if let Some(v) = attrs.get(key) {
                expected.insert([v.as_bytes(), b"\0", p.as_bytes()].concat());
            }
        }
        let raw: BTreeSet<Vec<u8>> = redis::cmd("ZRANGE")
            .arg(format!("{base}:idx:{key}"))
            .arg(0)
            .arg(-1)
            .query(&mut conn)
            .unwrap();
        assert_eq!(raw, expected, "raw index of `{key}`");
    }
    let presence: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{base}:presence"))
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        presence.into_iter().collect::<BTreeSet<_>>(),
        live.iter().cloned().collect()
    );
    for i in 0..6 {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(format!("{base}:attrs:s{i}"))
            .arg(format!("{base}:peer:s{i}"))
            .query(&mut conn)
            .unwrap();
        assert_eq!(exists, 0, "expired peer s{i} left data behind");
    }
}
