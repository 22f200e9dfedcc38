//! The conformance suite on a three-master Redis Cluster started by the test on free loopback
//! ports. One test owns the cluster (statics are never dropped, so the cluster cannot be shared
//! across tests and still be cleaned up): it runs every case concurrently, each with its own store
//! and key prefix, then kills the servers and removes their files (also on panic).

use std::time::Duration;

use futures::future::BoxFuture;
use quickp2p_store::{BackendKind, RedisConfig, Store};

use crate::support::{RedisCluster, unique_prefix};

type Case = fn(Store) -> BoxFuture<'static, ()>;

macro_rules! case_list {
    ($($case:ident),* $(,)?) => {
        vec![$(
            (stringify!($case), (|store| Box::pin(crate::cases::$case(store))) as Case)
        ),*]
    };
}

fn cases() -> Vec<(&'static str, Case)> {
    all_cases!(case_list)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_redis_cluster() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let url = cluster.url();

    let mut running = Vec::new();
    for (name, case) in cases() {
        let config = RedisConfig::new(url.clone()).with_key_prefix(unique_prefix());
        let store = Store::redis(config).await.unwrap();
        assert_eq!(store.backend_kind(), BackendKind::RedisCluster);
        running.push((name, tokio::spawn(case(store))));
    }
    let mut failed = Vec::new();
    for (name, handle) in running {
        match tokio::time::timeout(Duration::from_secs(120), handle).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("{name}: {e}")),
            Err(_) => failed.push(format!("{name}: did not finish within 120 s")),
        }
    }
    drop(cluster);
    assert!(
        failed.is_empty(),
        "cases failed on Redis Cluster:\n{}",
        failed.join("\n")
    );
}
