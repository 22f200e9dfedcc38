//! The conformance suite: every case takes a fresh, empty [`Store`] (embedded, or Redis under a
//! unique prefix) and checks one behaviour of the interface. `all_cases!` lists them so each
//! backend module instantiates them all.
//!
//! Timing: TTL cases use short TTLs (~1 s) and only assert what real time guarantees — "gone"
//! after the TTL surely passed, and "still there" only while the elapsed time proves the TTL
//! has not passed yet — so they hold on a loaded machine.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use quickp2p_store::{
    AttributeHit, AttributeQuery, Attributes, Page, PageRequest, PublishMode, PublishOutcome,
    ReplicaInfo, Store, StoreError,
};

use crate::support::{app, eventually, peer};

/// Invokes `$callback!` with the name of every case.
macro_rules! all_cases {
    ($callback:ident) => {
        $callback! {
            apps_crud_and_conflict,
            apps_pagination,
            peer_record_round_trip,
            put_peer_keeps_attributes_while_online,
            presence_ttl_expiry_and_touch,
            expired_peer_takes_its_attributes,
            relogin_after_expiry_starts_fresh,
            remove_peer_purges_everything,
            list_peers_pagination_is_stable,
            count_and_sweep,
            app_isolation,
            routes_compare_and_delete,
            route_ttl_expiry,
            attributes_replace_and_merge,
            attribute_queries_exact_and_prefix,
            query_pagination_skips_expired_peers,
            index_consistent_under_concurrent_publish_and_expiry,
            capped_publish_records_and_update_times,
            delivery_pubsub,
            event_channels,
            counters,
            ephemeral_values_and_ttl,
            ephemeral_batches_write_every_entry_or_none,
            take_is_once_only,
            put_if_absent_has_one_winner,
            replica_registry_expiry,
            invalid_input_is_refused,
        }
    };
}

const SHORT_TTL: Duration = Duration::from_millis(1000);
const LONG_TTL: Duration = Duration::from_secs(120);
/// Long enough after [`SHORT_TTL`] for any short-lived entry to be gone.
const PAST_SHORT_TTL: Duration = Duration::from_millis(1400);
const WAIT: Duration = Duration::from_secs(10);

fn attrs(pairs: &[(&str, &str)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Follows cursors until the end; checks no page exceeds `limit`.
async fn all_hits(
    store: &Store,
    app: &str,
    query: &AttributeQuery,
    limit: u32,
) -> Vec<AttributeHit> {
    let mut out = Vec::new();
    let mut page = PageRequest::first(limit);
    for _ in 0..10_000 {
        let Page { items, next } = store.query_attributes(app, query, page).await.unwrap();
        assert!(items.len() <= limit as usize);
        out.extend(items);
        match next {
            Some(cursor) => page = PageRequest::after(cursor, limit),
            None => return out,
        }
    }
    panic!("query paging did not end");
}

fn peers_of(hits: &[AttributeHit]) -> Vec<String> {
    hits.iter().map(|h| h.peer_id.clone()).collect()
}

async fn all_peer_ids(store: &Store, app: &str, limit: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut page = PageRequest::first(limit);
    for _ in 0..10_000 {
        let Page { items, next } = store.list_peers(app, page).await.unwrap();
        assert!(items.len() <= limit as usize);
        out.extend(items.into_iter().map(|p| p.peer_id));
        match next {
            Some(cursor) => page = PageRequest::after(cursor, limit),
            None => return out,
        }
    }
    panic!("peer paging did not end");
}

// ---------------------------------------------------------------------------------- apps

pub async fn apps_crud_and_conflict(store: Store) {
    let mut a = app("acme");
    assert_eq!(store.get_app("acme").await.unwrap(), None);
    store.create_app(&a).await.unwrap();
    assert_eq!(store.get_app("acme").await.unwrap(), Some(a.clone()));
    let err = store.create_app(&a).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");

    a.disabled = true;
    a.display_name = "Acme (suspended)".into();
    store.put_app(&a).await.unwrap();
    assert_eq!(store.get_app("acme").await.unwrap(), Some(a.clone()));

    assert!(store.delete_app("acme").await.unwrap());
    assert!(!store.delete_app("acme").await.unwrap());
    assert_eq!(store.get_app("acme").await.unwrap(), None);
    store.create_app(&a).await.unwrap();
}

pub async fn apps_pagination(store: Store) {
    let ids: Vec<String> = (0..7).map(|i| format!("app-{i:02}")).collect();
    for id in ids.iter().rev() {
        store.put_app(&app(id)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut page = PageRequest::first(3);
    loop {
        let Page { items, next } = store.list_apps(page).await.unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.into_iter().map(|a| a.id));
        match next {
            Some(c) => page = PageRequest::after(c, 3),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let all = store.list_apps(PageRequest::default()).await.unwrap();
    assert_eq!(all.items.len(), 7);
    assert_eq!(all.next, None);
}

// ---------------------------------------------------------------------------------- presence

pub async fn peer_record_round_trip(store: Store) {
    let mut p = peer("app1", "peer-a");
    p.nat_behaviour = None;
    p.extension = Bytes::from((0u8..=255).collect::<Vec<_>>());
    store.put_peer(&p, LONG_TTL).await.unwrap();
    assert_eq!(
        store.get_peer("app1", "peer-a").await.unwrap(),
        Some(p.clone())
    );
    let listed = store
        .list_peers("app1", PageRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.items, vec![p]);
    assert_eq!(listed.next, None);
    assert_eq!(store.get_peer("app1", "peer-b").await.unwrap(), None);
}

pub async fn put_peer_keeps_attributes_while_online(store: Store) {
    let p = peer("app1", "mover");
    store.put_peer(&p, LONG_TTL).await.unwrap();
    store
        .publish_attributes(
            "app1",
            "mover",
            &attrs(&[("svc", "chat")]),
            PublishMode::Merge,
        )
        .await
        .unwrap();
    let mut moved = p.clone();
    moved.gateway_id = "gw-2".into();
    moved.session_id = "session-2".into();
    store.put_peer(&moved, LONG_TTL).await.unwrap();
    assert_eq!(store.get_peer("app1", "mover").await.unwrap(), Some(moved));
    assert_eq!(
        store.get_peer_attributes("app1", "mover").await.unwrap(),
        Some(attrs(&[("svc", "chat")]))
    );
    let hits = all_hits(&store, "app1", &AttributeQuery::exact("svc", "chat"), 10).await;
    assert_eq!(peers_of(&hits), vec!["mover"]);
}

pub async fn presence_ttl_expiry_and_touch(store: Store) {
    let start = Instant::now();
    store
        .put_peer(&peer("app1", "short"), SHORT_TTL)
        .await
        .unwrap();
    store
        .put_peer(&peer("app1", "kept"), SHORT_TTL)
        .await
        .unwrap();
    let touched = store.touch_peer("app1", "kept", LONG_TTL).await.unwrap();
    let present = store.get_peer("app1", "short").await.unwrap().is_some();
    if start.elapsed() < SHORT_TTL {
        assert!(touched, "touch of a live peer");
        assert!(present, "peer within its TTL");
    }
    tokio::time::sleep(PAST_SHORT_TTL).await;

    assert_eq!(store.get_peer("app1", "short").await.unwrap(), None);
    assert!(
        !store.touch_peer("app1", "short", LONG_TTL).await.unwrap(),
        "touch resurrected an expired peer"
    );
    assert_eq!(store.get_peer("app1", "short").await.unwrap(), None);
    if touched {
        assert!(store.get_peer("app1", "kept").await.unwrap().is_some());
        assert_eq!(store.count_peers("app1").await.unwrap(), 1);
        assert_eq!(all_peer_ids(&store, "app1", 10).await, vec!["kept"]);
    }
    assert!(!store.touch_peer("app1", "never", LONG_TTL).await.unwrap());
}

pub async fn expired_peer_takes_its_attributes(store: Store) {
    store
        .put_peer(&peer("app1", "gone"), SHORT_TTL)
        .await
        .unwrap();
    let published = store
        .publish_attributes(
            "app1",
            "gone",
            &attrs(&[("color", "red"), ("zone", "eu-1")]),
            PublishMode::Merge,
        )
        .await;
    // the publish may only fail if the TTL already lapsed on a very slow machine
    assert!(published.is_ok() || matches!(published, Err(StoreError::NotFound { .. })));
    store
        .put_peer(&peer("app1", "stays"), LONG_TTL)
        .await
        .unwrap();
    store
        .publish_attributes(
            "app1",
            "stays",
            &attrs(&[("color", "red")]),
            PublishMode::Merge,
        )
        .await
        .unwrap();
    tokio::time::sleep(PAST_SHORT_TTL).await;

    assert_eq!(
        store.get_peer_attributes("app1", "gone").await.unwrap(),
        None
    );
    let red = all_hits(&store, "app1", &AttributeQuery::exact("color", "red"), 10).await;
    assert_eq!(peers_of(&red), vec!["stays"]);
    assert!(
        all_hits(&store, "app1", &AttributeQuery::prefix("zone", ""), 10)
            .await
            .is_empty()
    );
    let err = store
        .publish_attributes(
            "app1",
            "gone",
            &attrs(&[("color", "blue")]),
            PublishMode::Merge,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert_eq!(
        store
            .unpublish_attributes("app1", "gone", &["color".into()])
            .await
            .unwrap(),
        0
    );
    assert!(
        all_hits(&store, "app1", &AttributeQuery::exact("color", "blue"), 10)
            .await
            .is_empty()
    );
}

pub async fn relogin_after_expiry_starts_fresh(store: Store) {
    store.put_peer(&peer("app1", "p"), SHORT_TTL).await.unwrap();
    let _ = store
        .publish_attributes("app1", "p", &attrs(&[("old", "1")]), PublishMode::Merge)
        .await;
    tokio::time::sleep(PAST_SHORT_TTL).await;
    // no read in between: the expired incarnation is still unswept when the peer comes back
    store.put_peer(&peer("app1", "p"), LONG_TTL).await.unwrap();
    assert_eq!(
        store.get_peer_attributes("app1", "p").await.unwrap(),
        Some(Attributes::new())
    );
    assert!(
        all_hits(&store, "app1", &AttributeQuery::exact("old", "1"), 10)
            .await
            .is_empty()
    );
    store
        .publish_attributes("app1", "p", &attrs(&[("new", "2")]), PublishMode::Merge)
        .await
        .unwrap();
    assert_eq!(
        store.get_peer_attributes("app1", "p").await.unwrap(),
        Some(attrs(&[("new", "2")]))
    );
}

pub async fn remove_peer_purges_everything(store: Store) {
    store.put_peer(&peer("app1", "p1"), LONG_TTL).await.unwrap();
    store.put_peer(&peer("app1", "p2"), LONG_TTL).await.unwrap();
    for p in ["p1", "p2"] {
        store
            .publish_attributes(
                "app1",
                p,
                &attrs(&[("k", "v"), ("k2", "w")]),
                PublishMode::Merge,
            )
            .await
            .unwrap();
    }
    assert!(store.remove_peer("app1", "p1").await.unwrap());
    assert!(!store.remove_peer("app1", "p1").await.unwrap());
    assert_eq!(store.get_peer("app1", "p1").await.unwrap(), None);
    assert_eq!(store.get_peer_attributes("app1", "p1").await.unwrap(), None);
    assert_eq!(
        peers_of(&all_hits(&store, "app1", &AttributeQuery::exact("k", "v"), 10).await),
        vec!["p2"]
    );
    assert_eq!(
        peers_of(&all_hits(&store, "app1", &AttributeQuery::prefix("k2", ""), 10).await),
        vec!["p2"]
    );
    assert_eq!(store.count_peers("app1").await.unwrap(), 1);
    assert_eq!(all_peer_ids(&store, "app1", 10).await, vec!["p2"]);
}

pub async fn list_peers_pagination_is_stable(store: Store) {
    let originals: Vec<String> = (0..25).map(|i| format!("peer-{i:03}")).collect();
    for id in originals.iter().rev() {
        store.put_peer(&peer("app1", id), LONG_TTL).await.unwrap();
    }
    assert_eq!(all_peer_ids(&store, "app1", 4).await, originals);

    // page while peers come and go
    let mut seen = Vec::new();
    let mut page = PageRequest::first(4);
    let mut round = 0;
    loop {
        let Page { items, next } = store.list_peers("app1", page).await.unwrap();
        seen.extend(items.into_iter().map(|p| p.peer_id));
        round += 1;
        store
            .put_peer(&peer("app1", &format!("peer-{round:03}-x")), LONG_TTL)
            .await
            .unwrap();
        store
            .put_peer(&peer("app1", &format!("a-early-{round}")), LONG_TTL)
            .await
            .unwrap();
        if round > 1 {
            store
                .remove_peer("app1", &format!("peer-{:03}-x", round - 1))
                .await
                .unwrap();
        }
        match next {
            Some(c) => page = PageRequest::after(c, 4),
            None => break,
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "not strictly ordered: {seen:?}"
    );
    let seen_set: BTreeSet<&String> = seen.iter().collect();
    for id in &originals {
        assert!(seen_set.contains(id), "{id} missing from {seen:?}");
    }
}

pub async fn count_and_sweep(store: Store) {
    for i in 0..5 {
        store
            .put_peer(&peer("app1", &format!("s{i}")), SHORT_TTL)
            .await
            .unwrap();
    }
    for i in 0..3 {
        store
            .put_peer(&peer("app1", &format!("l{i}")), LONG_TTL)
            .await
            .unwrap();
    }
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert_eq!(store.count_peers("app1").await.unwrap(), 3);
    let swept = store.sweep_expired_peers("app1", 100).await.unwrap();
    assert!(swept <= 5, "swept {swept}");
    assert_eq!(store.sweep_expired_peers("app1", 100).await.unwrap(), 0);
    assert_eq!(store.count_peers("app1").await.unwrap(), 3);
    assert_eq!(store.count_peers("empty-app").await.unwrap(), 0);
    assert_eq!(store.sweep_expired_peers("empty-app", 10).await.unwrap(), 0);
}

pub async fn app_isolation(store: Store) {
    let mut a = peer("app-a", "same");
    a.gateway_id = "gw-a".into();
    let mut b = peer("app-b", "same");
    b.gateway_id = "gw-b".into();
    store.put_peer(&a, LONG_TTL).await.unwrap();
    store.put_peer(&b, LONG_TTL).await.unwrap();
    store
        .put_peer(&peer("app-a", "only-a"), LONG_TTL)
        .await
        .unwrap();
    store
        .publish_attributes(
            "app-a",
            "same",
            &attrs(&[("color", "red")]),
            PublishMode::Merge,
        )
        .await
        .unwrap();
    store
        .publish_attributes(
            "app-b",
            "same",
            &attrs(&[("color", "blue")]),
            PublishMode::Merge,
        )
        .await
        .unwrap();
    store
        .set_route("app-a", "same", "gw-a", LONG_TTL)
        .await
        .unwrap();

    assert_eq!(store.get_peer("app-a", "same").await.unwrap(), Some(a));
    assert_eq!(store.get_peer("app-b", "same").await.unwrap(), Some(b));
    assert_eq!(store.get_peer("app-b", "only-a").await.unwrap(), None);
    assert_eq!(store.count_peers("app-a").await.unwrap(), 2);
    assert_eq!(store.count_peers("app-b").await.unwrap(), 1);
    assert_eq!(all_peer_ids(&store, "app-b", 10).await, vec!["same"]);
    assert!(
        all_hits(&store, "app-b", &AttributeQuery::exact("color", "red"), 10)
            .await
            .is_empty()
    );
    assert_eq!(
        all_hits(&store, "app-b", &AttributeQuery::prefix("color", ""), 10).await,
        vec![AttributeHit {
            peer_id: "same".into(),
            value: "blue".into()
        }]
    );
    assert_eq!(store.get_route("app-b", "same").await.unwrap(), None);
    assert_eq!(
        store.get_peer_attributes("app-b", "only-a").await.unwrap(),
        None
    );

    assert!(store.remove_peer("app-a", "same").await.unwrap());
    assert!(store.get_peer("app-b", "same").await.unwrap().is_some());
    assert_eq!(
        store.get_peer_attributes("app-b", "same").await.unwrap(),
        Some(attrs(&[("color", "blue")]))
    );
}

// ---------------------------------------------------------------------------------- routes

pub async fn routes_compare_and_delete(store: Store) {
    assert_eq!(store.get_route("app1", "p").await.unwrap(), None);
    assert!(!store.clear_route("app1", "p", "gw-1").await.unwrap());
    store
        .set_route("app1", "p", "gw-1", LONG_TTL)
        .await
        .unwrap();
    assert_eq!(
        store.get_route("app1", "p").await.unwrap().as_deref(),
        Some("gw-1")
    );
    // the peer moved to gw-2; the stale gw-1 must not erase the new route
    store
        .set_route("app1", "p", "gw-2", LONG_TTL)
        .await
        .unwrap();
    assert!(!store.clear_route("app1", "p", "gw-1").await.unwrap());
    assert_eq!(
        store.get_route("app1", "p").await.unwrap().as_deref(),
        Some("gw-2")
    );
    assert!(store.clear_route("app1", "p", "gw-2").await.unwrap());
    assert_eq!(store.get_route("app1", "p").await.unwrap(), None);
}

pub async fn route_ttl_expiry(store: Store) {
    store
        .set_route("app1", "p", "gw-1", SHORT_TTL)
        .await
        .unwrap();
    store
        .set_route("app1", "q", "gw-1", LONG_TTL)
        .await
        .unwrap();
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert_eq!(store.get_route("app1", "p").await.unwrap(), None);
    assert!(!store.clear_route("app1", "p", "gw-1").await.unwrap());
    assert_eq!(
        store.get_route("app1", "q").await.unwrap().as_deref(),
        Some("gw-1")
    );
}

// ---------------------------------------------------------------------------------- attributes

pub async fn attributes_replace_and_merge(store: Store) {
    store.put_peer(&peer("app1", "p"), LONG_TTL).await.unwrap();
    assert_eq!(
        store.get_peer_attributes("app1", "p").await.unwrap(),
        Some(Attributes::new())
    );
    store
        .publish_attributes(
            "app1",
            "p",
            &attrs(&[("a", "1"), ("b", "2")]),
            PublishMode::Merge,
        )
        .await
        .unwrap();
    store
        .publish_attributes(
            "app1",
            "p",
            &attrs(&[("b", "3"), ("c", "")]),
            PublishMode::Merge,
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_peer_attributes("app1", "p").await.unwrap(),
        Some(attrs(&[("a", "1"), ("b", "3"), ("c", "")]))
    );
    assert!(
        all_hits(&store, "app1", &AttributeQuery::exact("b", "2"), 10)
            .await
            .is_empty()
    );
    assert_eq!(
        peers_of(&all_hits(&store, "app1", &AttributeQuery::exact("b", "3"), 10).await),
        vec!["p"]
    );
    assert_eq!(
        peers_of(&all_hits(&store, "app1", &AttributeQuery::exact("c", ""), 10).await),
        vec!["p"]
    );

    store
        .publish_attributes("app1", "p", &attrs(&[("d", "4")]), PublishMode::Replace)
        .await
        .unwrap();
    assert_eq!(
        store.get_peer_attributes("app1", "p").await.unwrap(),
        Some(attrs(&[("d", "4")]))
    );
    for key in ["a", "b", "c"] {
        assert!(
            all_hits(&store, "app1", &AttributeQuery::prefix(key, ""), 10)
                .await
                .is_empty(),
            "{key}"
        );
    }
    assert_eq!(
        store
            .unpublish_attributes("app1", "p", &["d".into(), "zz".into()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.get_peer_attributes("app1", "p").await.unwrap(),
        Some(Attributes::new())
    );
    assert!(
        all_hits(&store, "app1", &AttributeQuery::exact("d", "4"), 10)
            .await
            .is_empty()
    );
    // replace with nothing clears
    store
        .publish_attributes("app1", "p", &attrs(&[("e", "5")]), PublishMode::Merge)
        .await
        .unwrap();
    store
        .publish_attributes("app1", "p", &Attributes::new(), PublishMode::Replace)
        .await
        .unwrap();
    assert_eq!(
        store.get_peer_attributes("app1", "p").await.unwrap(),
        Some(Attributes::new())
    );
}

pub async fn attribute_queries_exact_and_prefix(store: Store) {
    // values chosen to trip naive range ends: "ab" vs "ab\u{1}" vs "ab/", multi-byte, separators
    let values = [
        ("p01", "ab"),
        ("p02", "ab"),
        ("p03", "abc"),
        ("p04", "ab/x"),
        ("p05", "aa"),
        ("p06", "b"),
        ("p07", "ab\u{1}"),
        ("p08", "äb"),
        ("p09", "ab:p01"),
        ("p10", "ab"),
    ];
    for (p, v) in values {
        store.put_peer(&peer("app1", p), LONG_TTL).await.unwrap();
        store
            .publish_attributes("app1", p, &attrs(&[("name", v)]), PublishMode::Merge)
            .await
            .unwrap();
    }
    for limit in [1, 2, 3, 100] {
        let exact = all_hits(&store, "app1", &AttributeQuery::exact("name", "ab"), limit).await;
        assert_eq!(peers_of(&exact), vec!["p01", "p02", "p10"], "limit {limit}");
        assert!(exact.iter().all(|h| h.value == "ab"));

        let prefix = all_hits(&store, "app1", &AttributeQuery::prefix("name", "ab"), limit).await;
        let got: Vec<(String, String)> = prefix
            .iter()
            .map(|h| (h.value.clone(), h.peer_id.clone()))
            .collect();
        let mut want: Vec<(String, String)> = values
            .iter()
            .filter(|(_, v)| v.starts_with("ab"))
            .map(|(p, v)| ((*v).to_owned(), (*p).to_owned()))
            .collect();
        want.sort();
        assert_eq!(got, want, "limit {limit}");

        let all = all_hits(&store, "app1", &AttributeQuery::prefix("name", ""), limit).await;
        assert_eq!(all.len(), values.len());
        let multi = all_hits(&store, "app1", &AttributeQuery::prefix("name", "ä"), limit).await;
        assert_eq!(peers_of(&multi), vec!["p08"]);
    }
    assert!(
        all_hits(&store, "app1", &AttributeQuery::exact("name", "a"), 5)
            .await
            .is_empty()
    );
    assert!(
        all_hits(&store, "app1", &AttributeQuery::exact("other", "ab"), 5)
            .await
            .is_empty()
    );
    let page = store
        .query_attributes(
            "app1",
            &AttributeQuery::exact("name", "ab"),
            PageRequest::first(2),
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
    assert!(page.next.is_some());
}

pub async fn query_pagination_skips_expired_peers(store: Store) {
    for i in 0..12 {
        store
            .put_peer(&peer("app1", &format!("s{i:02}")), SHORT_TTL)
            .await
            .unwrap();
    }
    for i in 0..4 {
        store
            .put_peer(&peer("app1", &format!("t{i:02}")), LONG_TTL)
            .await
            .unwrap();
    }
    for i in 0..12 {
        let _ = store
            .publish_attributes(
                "app1",
                &format!("s{i:02}"),
                &attrs(&[("color", "blue")]),
                PublishMode::Merge,
            )
            .await;
    }
    for i in 0..4 {
        store
            .publish_attributes(
                "app1",
                &format!("t{i:02}"),
                &attrs(&[("color", "blue")]),
                PublishMode::Merge,
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(PAST_SHORT_TTL).await;
    for limit in [1, 3, 50] {
        let hits = all_hits(
            &store,
            "app1",
            &AttributeQuery::exact("color", "blue"),
            limit,
        )
        .await;
        assert_eq!(
            peers_of(&hits),
            vec!["t00", "t01", "t02", "t03"],
            "limit {limit}"
        );
    }
    assert_eq!(
        all_peer_ids(&store, "app1", 2).await,
        vec!["t00", "t01", "t02", "t03"]
    );
}

/// Many tasks publish, replace, unpublish and query the same index keys while half of the
/// peers expire under them; afterwards the index must agree exactly with the attribute sets of
/// the live peers, and hold nothing of the expired ones.
pub async fn index_consistent_under_concurrent_publish_and_expiry(store: Store) {
    const APP: &str = "conc";
    const COLORS: [&str; 3] = ["red", "green", "blue"];
    let short: Vec<String> = (0..12).map(|i| format!("short-{i:02}")).collect();
    let long: Vec<String> = (0..12).map(|i| format!("long-{i:02}")).collect();
    for p in &short {
        store.put_peer(&peer(APP, p), SHORT_TTL).await.unwrap();
    }
    for p in &long {
        store.put_peer(&peer(APP, p), LONG_TTL).await.unwrap();
    }
    let deadline = Instant::now() + SHORT_TTL + Duration::from_millis(300);

    let mut tasks = Vec::new();
    // one writer per peer, running across the short peers' expiry
    for (n, p) in short.iter().chain(long.iter()).enumerate() {
        let store = store.clone();
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = n;
            while Instant::now() < deadline {
                i += 1;
                let color = COLORS[i % 3];
                let result = match i % 4 {
                    0 => {
                        store
                            .publish_attributes(
                                APP,
                                &p,
                                &attrs(&[("color", color), ("zone", &format!("z{}", i % 2))]),
                                PublishMode::Replace,
                            )
                            .await
                    }
                    1 => store
                        .unpublish_attributes(APP, &p, &["zone".into()])
                        .await
                        .map(|_| ()),
                    _ => {
                        store
                            .publish_attributes(
                                APP,
                                &p,
                                &attrs(&[("color", color)]),
                                PublishMode::Merge,
                            )
                            .await
                    }
                };
                match result {
                    Ok(()) | Err(StoreError::NotFound { .. }) => {}
                    Err(e) => panic!("{p}: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // competing writers on the same long-lived peers
    for w in 0..4 {
        let store = store.clone();
        let targets: Vec<String> = long[..4].to_vec();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < deadline {
                i += 1;
                let p = &targets[i % targets.len()];
                store
                    .publish_attributes(
                        APP,
                        p,
                        &attrs(&[("color", COLORS[(i + w) % 3])]),
                        PublishMode::Merge,
                    )
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }));
    }
    // readers (their lazy purges race with the writers)
    for color in COLORS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let q = AttributeQuery::exact("color", color);
                store
                    .query_attributes(APP, &q, PageRequest::first(5))
                    .await
                    .unwrap();
                store.list_peers(APP, PageRequest::first(7)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
        }));
    }
    for result in join_all(tasks).await {
        result.unwrap();
    }
    let since_deadline = deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(since_deadline + PAST_SHORT_TTL - SHORT_TTL).await;

    // the truth: each live peer's attributes
    let mut truth: BTreeMap<String, Attributes> = BTreeMap::new();
    for p in &long {
        truth.insert(
            p.clone(),
            store.get_peer_attributes(APP, p).await.unwrap().unwrap(),
        );
    }
    for p in &short {
        assert_eq!(
            store.get_peer_attributes(APP, p).await.unwrap(),
            None,
            "{p}"
        );
    }
    for key in ["color", "zone"] {
        let mut want: Vec<(String, String)> = truth
            .iter()
            .filter_map(|(p, a)| a.get(key).map(|v| (v.clone(), p.clone())))
            .collect();
        want.sort();
        for limit in [2, 100] {
            let got: Vec<(String, String)> =
                all_hits(&store, APP, &AttributeQuery::prefix(key, ""), limit)
                    .await
                    .into_iter()
                    .map(|h| (h.value, h.peer_id))
                    .collect();
            assert_eq!(got, want, "index of `{key}` disagrees with the attributes");
        }
    }
    for color in COLORS {
        let want: Vec<String> = truth
            .iter()
            .filter(|(_, a)| a.get("color").map(String::as_str) == Some(color))
            .map(|(p, _)| p.clone())
            .collect();
        let got = peers_of(&all_hits(&store, APP, &AttributeQuery::exact("color", color), 3).await);
        assert_eq!(got, want, "exact query for {color}");
    }
    assert_eq!(store.count_peers(APP).await.unwrap(), long.len() as u64);
    assert_eq!(all_peer_ids(&store, APP, 5).await, long);
}

// ---------------------------------------------------------------------------------- pub/sub

/// The per-peer cap is decided atomically with the write (concurrent merges of distinct keys
/// never push a peer over it), the publish returns the record after the change with its update
/// time, and `query_records` returns each match with everything its peer published.
pub async fn capped_publish_records_and_update_times(store: Store) {
    const APP: &str = "capped";
    const CAP: usize = 5;
    store.put_peer(&peer(APP, "p"), LONG_TTL).await.unwrap();
    store.put_peer(&peer(APP, "q"), LONG_TTL).await.unwrap();
    assert_eq!(
        store
            .get_published(APP, "p")
            .await
            .unwrap()
            .unwrap()
            .updated_at,
        None
    );

    // 20 concurrent merges of one new key each: exactly CAP succeed
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = format!("k{i:02}");
                store
                    .publish_attributes_capped(
                        APP,
                        "p",
                        &attrs(&[(&key, "v")]),
                        PublishMode::Merge,
                        CAP,
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let outcomes: Vec<PublishOutcome> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let ok = outcomes
        .iter()
        .filter(|o| matches!(o, PublishOutcome::Published(_)))
        .count();
    assert_eq!(ok, CAP, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| match o {
        PublishOutcome::Published(r) => r.attributes.len() <= CAP && r.updated_at.is_some(),
        PublishOutcome::TooManyAttributes { would_hold } => *would_hold == CAP + 1,
    }));
    let published = store.get_published(APP, "p").await.unwrap().unwrap();
    assert_eq!(published.attributes.len(), CAP);
    // a refused publish changed nothing, an overwrite of present keys is allowed at the cap
    let present: Vec<String> = published.attributes.keys().cloned().collect();
    let overwrite: Attributes = present
        .iter()
        .map(|k| (k.clone(), "w".to_owned()))
        .collect();
    match store
        .publish_attributes_capped(APP, "p", &overwrite, PublishMode::Merge, CAP)
        .await
        .unwrap()
    {
        PublishOutcome::Published(r) => {
            assert_eq!(r.attributes, overwrite);
            assert!(r.updated_at >= published.updated_at);
        }
        other => panic!("overwrite refused: {other:?}"),
    }
    // replace counts only the new set
    let six = attrs(&[
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("d", "4"),
        ("e", "5"),
        ("f", "6"),
    ]);
    assert_eq!(
        store
            .publish_attributes_capped(APP, "p", &six, PublishMode::Replace, CAP)
            .await
            .unwrap(),
        PublishOutcome::TooManyAttributes { would_hold: 6 }
    );
    assert_eq!(
        store.get_peer_attributes(APP, "p").await.unwrap(),
        Some(overwrite)
    );
    store
        .publish_attributes_capped(
            APP,
            "p",
            &attrs(&[("color", "red"), ("n", "1")]),
            PublishMode::Replace,
            CAP,
        )
        .await
        .unwrap();
    store
        .publish_attributes_capped(
            APP,
            "q",
            &attrs(&[("color", "reddish")]),
            PublishMode::Merge,
            CAP,
        )
        .await
        .unwrap();
    // an offline peer cannot publish
    assert!(matches!(
        store
            .publish_attributes_capped(
                APP,
                "nobody",
                &attrs(&[("a", "1")]),
                PublishMode::Merge,
                CAP
            )
            .await,
        Err(StoreError::NotFound { .. })
    ));

    let page = store
        .query_records(
            APP,
            &AttributeQuery::prefix("color", "red"),
            PageRequest::first(10),
        )
        .await
        .unwrap();
    let got: Vec<(String, String, Attributes)> = page
        .items
        .iter()
        .map(|r| {
            (
                r.peer_id.clone(),
                r.value.clone(),
                r.published.attributes.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "p".to_owned(),
                "red".to_owned(),
                attrs(&[("color", "red"), ("n", "1")])
            ),
            (
                "q".to_owned(),
                "reddish".to_owned(),
                attrs(&[("color", "reddish")])
            ),
        ]
    );
    assert!(page.items.iter().all(|r| r.published.updated_at.is_some()));
    assert_eq!(page.next, None);

    // unpublishing updates the time; removing the peer takes the record with it
    let before = store
        .get_published(APP, "q")
        .await
        .unwrap()
        .unwrap()
        .updated_at;
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        store
            .unpublish_attributes(APP, "q", &["color".into()])
            .await
            .unwrap(),
        1
    );
    let after = store.get_published(APP, "q").await.unwrap().unwrap();
    assert!(after.attributes.is_empty());
    assert!(
        after.updated_at > before,
        "{before:?} -> {:?}",
        after.updated_at
    );
    store.remove_peer(APP, "p").await.unwrap();
    store.put_peer(&peer(APP, "p"), LONG_TTL).await.unwrap();
    assert_eq!(
        store.get_published(APP, "p").await.unwrap().unwrap(),
        Default::default()
    );
    let page = store
        .query_records(
            APP,
            &AttributeQuery::prefix("color", ""),
            PageRequest::first(10),
        )
        .await
        .unwrap();
    assert!(page.items.is_empty(), "{page:?}");
}

async fn recv(sub: &mut quickp2p_store::Subscription) -> Bytes {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("message within the timeout")
        .expect("subscription open")
}

pub async fn delivery_pubsub(store: Store) {
    assert_eq!(
        store
            .publish_delivery("gw-a", Bytes::from_static(b"nobody"))
            .await
            .unwrap(),
        0
    );
    let mut a1 = store.subscribe_delivery("gw-a").await.unwrap();
    let mut a2 = store.subscribe_delivery("gw-a").await.unwrap();
    let mut b = store.subscribe_delivery("gw-b").await.unwrap();

    assert!(
        store
            .publish_delivery("gw-a", Bytes::from_static(b"hello"))
            .await
            .unwrap()
            >= 1
    );
    assert_eq!(recv(&mut a1).await, "hello");
    assert_eq!(recv(&mut a2).await, "hello");

    // order is kept, binary payloads pass
    for i in 0u8..50 {
        store
            .publish_delivery("gw-b", Bytes::from(vec![i, 0, 255]))
            .await
            .unwrap();
    }
    for i in 0u8..50 {
        assert_eq!(recv(&mut b).await, Bytes::from(vec![i, 0, 255]));
    }
    // gw-a's subscribers saw nothing of gw-b
    assert!(
        tokio::time::timeout(Duration::from_millis(100), a1.recv())
            .await
            .is_err()
    );

    drop(a1);
    assert!(
        store
            .publish_delivery("gw-a", Bytes::from_static(b"still"))
            .await
            .unwrap()
            >= 1
    );
    assert_eq!(recv(&mut a2).await, "still");
    drop(a2);
    eventually(WAIT, "gw-a without subscribers", || {
        let store = store.clone();
        async move {
            store
                .publish_delivery("gw-a", Bytes::from_static(b"x"))
                .await
                .unwrap()
                == 0
        }
    })
    .await;
    // subscribing again works
    let mut a3 = store.subscribe_delivery("gw-a").await.unwrap();
    assert!(
        store
            .publish_delivery("gw-a", Bytes::from_static(b"again"))
            .await
            .unwrap()
            >= 1
    );
    assert_eq!(recv(&mut a3).await, "again");
}

pub async fn event_channels(store: Store) {
    let mut presence = store.subscribe_events("presence:app1").await.unwrap();
    let mut other = store.subscribe_events("presence:app2").await.unwrap();
    assert!(
        store
            .publish_event("presence:app1", Bytes::from_static(b"online p1"))
            .await
            .unwrap()
            >= 1
    );
    assert_eq!(recv(&mut presence).await, "online p1");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), other.recv())
            .await
            .is_err()
    );
    // the delivery namespace is separate from events
    assert_eq!(
        store
            .publish_delivery("presence:app1", Bytes::from_static(b"x"))
            .await
            .unwrap(),
        0
    );
    let mut clone_sub = store
        .clone()
        .subscribe_events("presence:app2")
        .await
        .unwrap();
    assert!(
        store
            .publish_event("presence:app2", Bytes::from_static(b"e"))
            .await
            .unwrap()
            >= 1
    );
    assert_eq!(recv(&mut other).await, "e");
    assert_eq!(recv(&mut clone_sub).await, "e");
}

// ---------------------------------------------------------------------------------- counters

pub async fn counters(store: Store) {
    assert_eq!(store.get_counter("punches").await.unwrap(), 0);
    assert_eq!(store.incr_counter("punches", 1).await.unwrap(), 1);
    assert_eq!(store.incr_counter("punches", 41).await.unwrap(), 42);
    assert_eq!(store.incr_counter("punches", -2).await.unwrap(), 40);
    assert_eq!(store.get_counter("punches").await.unwrap(), 40);

    let incrs = (0..20).map(|_| {
        let store = store.clone();
        async move { store.incr_counter("parallel", 1).await.unwrap() }
    });
    join_all(incrs).await;
    assert_eq!(store.get_counter("parallel").await.unwrap(), 20);

    assert!(store.get_counter_map("outcomes").await.unwrap().is_empty());
    assert_eq!(
        store
            .incr_counter_field("outcomes", "eim/eim:direct", 1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .incr_counter_field("outcomes", "eim/eim:direct", 2)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .incr_counter_field("outcomes", "apdm/apdm:relayed", 1)
            .await
            .unwrap(),
        1
    );
    let map = store.get_counter_map("outcomes").await.unwrap();
    assert_eq!(
        map,
        BTreeMap::from([
            ("apdm/apdm:relayed".to_owned(), 1),
            ("eim/eim:direct".to_owned(), 3)
        ])
    );
    store.incr_counter("max", i64::MAX).await.unwrap();
    let err = store.incr_counter("max", 1).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------- ephemeral

pub async fn ephemeral_values_and_ttl(store: Store) {
    let v = Bytes::from_static(b"\x00challenge\xff");
    assert_eq!(store.get_ephemeral("c1").await.unwrap(), None);
    store
        .put_ephemeral("c1", v.clone(), LONG_TTL)
        .await
        .unwrap();
    assert_eq!(store.get_ephemeral("c1").await.unwrap(), Some(v.clone()));
    store
        .put_ephemeral("c1", Bytes::from_static(b"v2"), LONG_TTL)
        .await
        .unwrap();
    assert_eq!(
        store.get_ephemeral("c1").await.unwrap().as_deref(),
        Some(&b"v2"[..])
    );
    assert!(store.delete_ephemeral("c1").await.unwrap());
    assert!(!store.delete_ephemeral("c1").await.unwrap());
    assert_eq!(store.get_ephemeral("c1").await.unwrap(), None);

    store
        .put_ephemeral("short", v.clone(), SHORT_TTL)
        .await
        .unwrap();
    assert!(
        store
            .put_ephemeral_if_absent("short-nx", v.clone(), SHORT_TTL)
            .await
            .unwrap()
    );
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert_eq!(store.get_ephemeral("short").await.unwrap(), None);
    assert_eq!(store.take_ephemeral("short").await.unwrap(), None);
    // an expired value no longer blocks put-if-absent
    assert!(
        store
            .put_ephemeral_if_absent("short-nx", Bytes::from_static(b"new"), LONG_TTL)
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_ephemeral_if_absent("short-nx", Bytes::from_static(b"newer"), LONG_TTL)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_ephemeral("short-nx").await.unwrap().as_deref(),
        Some(&b"new"[..])
    );
    // empty values are values
    store
        .put_ephemeral("empty", Bytes::new(), LONG_TTL)
        .await
        .unwrap();
    assert_eq!(
        store.take_ephemeral("empty").await.unwrap(),
        Some(Bytes::new())
    );
}

pub async fn ephemeral_batches_write_every_entry_or_none(store: Store) {
    store.put_ephemeral_many(&[], LONG_TTL).await.unwrap();
    // enough keys to land in every slot range of a cluster
    let entries: Vec<(String, Bytes)> = (0..300)
        .map(|i| (format!("dedup:{i}"), Bytes::from(format!("value {i}"))))
        .collect();
    store.put_ephemeral_many(&entries, LONG_TTL).await.unwrap();
    for (key, value) in &entries {
        assert_eq!(
            store.get_ephemeral(key).await.unwrap().as_ref(),
            Some(value),
            "{key}"
        );
    }
    // a batch replaces what was there, like single puts
    store
        .put_ephemeral_many(
            &[("dedup:0".to_owned(), Bytes::from_static(b"new"))],
            LONG_TTL,
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_ephemeral("dedup:0").await.unwrap().as_deref(),
        Some(&b"new"[..])
    );
    // one invalid key refuses the whole batch before anything is written
    let bad = vec![
        ("fine".to_owned(), Bytes::from_static(b"x")),
        ("bad{key}".to_owned(), Bytes::from_static(b"x")),
    ];
    let err = store.put_ephemeral_many(&bad, LONG_TTL).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err:?}");
    assert_eq!(store.get_ephemeral("fine").await.unwrap(), None);
    let too_many: Vec<(String, Bytes)> = (0..=quickp2p_store::limits::MAX_BATCH)
        .map(|i| (format!("k{i}"), Bytes::new()))
        .collect();
    let err = store
        .put_ephemeral_many(&too_many, LONG_TTL)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err:?}");
    assert_eq!(store.get_ephemeral("k0").await.unwrap(), None);
    // the TTL applies to every entry
    store
        .put_ephemeral_many(
            &[
                ("brief-a".to_owned(), Bytes::from_static(b"a")),
                ("brief-b".to_owned(), Bytes::from_static(b"b")),
            ],
            SHORT_TTL,
        )
        .await
        .unwrap();
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert_eq!(store.get_ephemeral("brief-a").await.unwrap(), None);
    assert_eq!(store.get_ephemeral("brief-b").await.unwrap(), None);
}

pub async fn take_is_once_only(store: Store) {
    for round in 0..3 {
        let key = format!("challenge-{round}");
        store
            .put_ephemeral(&key, Bytes::from_static(b"nonce"), LONG_TTL)
            .await
            .unwrap();
        let takers = (0..16).map(|_| {
            let store = store.clone();
            let key = key.clone();
            tokio::spawn(async move { store.take_ephemeral(&key).await.unwrap() })
        });
        let got: Vec<Option<Bytes>> = join_all(takers)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got.iter().filter(|g| g.is_some()).count(), 1, "{got:?}");
        assert_eq!(store.get_ephemeral(&key).await.unwrap(), None);
    }
}

pub async fn put_if_absent_has_one_winner(store: Store) {
    let writers = (0..16u8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let won = store
                .put_ephemeral_if_absent("handshake-1", Bytes::from(vec![i]), LONG_TTL)
                .await
                .unwrap();
            (i, won)
        })
    });
    let results: Vec<(u8, bool)> = join_all(writers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let winners: Vec<u8> = results
        .iter()
        .filter(|(_, w)| *w)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(
        store.get_ephemeral("handshake-1").await.unwrap(),
        Some(Bytes::from(vec![winners[0]]))
    );
}

// ---------------------------------------------------------------------------------- replicas

pub async fn replica_registry_expiry(store: Store) {
    let info = |addr: &str, load: u64| ReplicaInfo {
        advertised_addr: addr.to_owned(),
        load,
        metadata: BTreeMap::from([("zone".to_owned(), "z1".to_owned())]),
    };
    assert!(store.list_replicas("relay").await.unwrap().is_empty());
    store
        .register_replica("relay", "relay-b", &info("10.0.0.2:3478", 5), LONG_TTL)
        .await
        .unwrap();
    store
        .register_replica("relay", "relay-a", &info("10.0.0.1:3478", 1), SHORT_TTL)
        .await
        .unwrap();
    store
        .register_replica("stun", "stun-a", &info("10.0.1.1:3478", 0), LONG_TTL)
        .await
        .unwrap();

    let start = Instant::now();
    let listed = store.list_replicas("relay").await.unwrap();
    if start.elapsed() < Duration::from_millis(500) {
        let ids: Vec<&str> = listed.iter().map(|r| r.replica_id.as_str()).collect();
        assert_eq!(ids, vec!["relay-a", "relay-b"]);
    }
    assert!(
        listed
            .iter()
            .any(|r| r.replica_id == "relay-b" && r.info == info("10.0.0.2:3478", 5))
    );
    tokio::time::sleep(PAST_SHORT_TTL).await;
    let ids =
        |v: Vec<quickp2p_store::Replica>| v.into_iter().map(|r| r.replica_id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_replicas("relay").await.unwrap()),
        vec!["relay-b"]
    );
    // refreshing brings it back with new info
    store
        .register_replica("relay", "relay-a", &info("10.0.0.1:3478", 9), LONG_TTL)
        .await
        .unwrap();
    let listed = store.list_replicas("relay").await.unwrap();
    assert_eq!(listed[0].info.load, 9);
    assert_eq!(ids(listed), vec!["relay-a", "relay-b"]);
    assert!(store.deregister_replica("relay", "relay-b").await.unwrap());
    assert!(!store.deregister_replica("relay", "relay-b").await.unwrap());
    assert_eq!(
        ids(store.list_replicas("relay").await.unwrap()),
        vec!["relay-a"]
    );
    assert_eq!(
        ids(store.list_replicas("stun").await.unwrap()),
        vec!["stun-a"]
    );
}

// ---------------------------------------------------------------------------------- validation

pub async fn invalid_input_is_refused(store: Store) {
    fn invalid<T: std::fmt::Debug>(r: Result<T, StoreError>) {
        assert!(matches!(r, Err(StoreError::InvalidInput { .. })), "{r:?}");
    }
    invalid(store.get_peer("", "p").await);
    invalid(store.get_peer("app{1}", "p").await);
    invalid(store.get_peer("app", "p\n").await);
    invalid(store.get_peer("app", &"x".repeat(300)).await);
    invalid(store.put_peer(&peer("app", "p"), Duration::ZERO).await);
    invalid(store.set_route("app", "p", "", LONG_TTL).await);
    invalid(store.put_ephemeral("k", Bytes::new(), Duration::ZERO).await);
    invalid(
        store
            .put_ephemeral("k", Bytes::from(vec![0; 2 * 1024 * 1024]), LONG_TTL)
            .await,
    );

    store.put_peer(&peer("app", "p"), LONG_TTL).await.unwrap();
    invalid(
        store
            .publish_attributes("app", "p", &attrs(&[("k", "a\0b")]), PublishMode::Merge)
            .await,
    );
    invalid(
        store
            .publish_attributes("app", "p", &attrs(&[("", "v")]), PublishMode::Merge)
            .await,
    );
    invalid(
        store
            .query_attributes(
                "app",
                &AttributeQuery::exact("k", "v"),
                PageRequest::after("garbage".into(), 5),
            )
            .await,
    );
    // a cursor of one listing is refused by another
    for i in 0..3 {
        store
            .put_peer(&peer("app", &format!("q{i}")), LONG_TTL)
            .await
            .unwrap();
    }
    let page = store
        .list_peers("app", PageRequest::first(1))
        .await
        .unwrap();
    let cursor = page.next.expect("more peers");
    invalid(
        store
            .query_attributes(
                "app",
                &AttributeQuery::exact("k", "v"),
                PageRequest::after(cursor.clone(), 5),
            )
            .await,
    );
    invalid(store.list_apps(PageRequest::after(cursor, 5)).await);
    // nothing was stored by the refused calls
    assert_eq!(
        store.get_peer_attributes("app", "p").await.unwrap(),
        Some(Attributes::new())
    );
}
