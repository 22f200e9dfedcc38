//! The Index gRPC service against the machine's Redis (`QP_REDIS_URL`, default
//! `redis://127.0.0.1:6379`, under a unique key prefix removed at the end): a real tonic client
//! talks to [`Index::run`] on a loopback port. Presence is put into the store directly, as the
//! checkpoint does at login.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use quickp2p_index::{Config, Index};
use quickp2p_proto::v1::{self, ErrorCode, ErrorDetail, index_client::IndexClient};
use quickp2p_service_kit::Shutdown;
use quickp2p_store::{PeerRecord, RedisConfig, Store};
use tonic::transport::Channel;

struct Fixture {
    client: IndexClient<Channel>,
    store: Store,
    prefix: String,
    stop: Shutdown,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
        // remove the keys of this test
        let url = redis_url();
        if let Ok(client) = redis_client(&url)
            && let Ok(mut conn) = client.get_connection()
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query(&mut conn)
                .unwrap_or_default();
            for key in keys {
                let _: Result<(), _> = redis::cmd("DEL").arg(key).query(&mut conn);
            }
        }
    }
}

fn redis_url() -> String {
    std::env::var("QP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn redis_client(url: &str) -> redis::RedisResult<redis::Client> {
    redis::Client::open(url)
}

async fn fixture() -> Fixture {
    let prefix = format!(
        "qptest-index-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let store = Store::redis(RedisConfig::new(redis_url()).with_key_prefix(prefix.clone()))
        .await
        .unwrap();
    store.ping().await.expect("Redis must be reachable");
    let config = Config {
        limits: quickp2p_index::AttributeLimits {
            max_attributes: 4,
            ..Default::default()
        },
        ..Config::loopback()
    };
    let index = Index::bind(config, store.clone()).await.unwrap();
    let url = format!("http://{}", index.addresses().grpc);
    let stop = Shutdown::new();
    tokio::spawn(index.run(stop.clone()));
    let client = IndexClient::connect(url).await.unwrap();
    Fixture {
        client,
        store,
        prefix,
        stop,
    }
}

fn peer(n: u8) -> v1::PeerId {
    v1::PeerId::from_public_key([n; 32])
}

async fn online(store: &Store, app: &str, n: u8, ttl: Duration) {
    let record = PeerRecord {
        peer_id: peer(n).to_string(),
        app_id: app.to_owned(),
        gateway_id: "gw".into(),
        session_id: format!("s{n}"),
        reflexive_addr: String::new(),
        nat_behaviour: None,
        online_since: std::time::SystemTime::now(),
        extension: Default::default(),
    };
    store.put_peer(&record, ttl).await.unwrap();
}

fn attrs(pairs: &[(&str, &str)]) -> Vec<v1::Attribute> {
    pairs
        .iter()
        .map(|(k, v)| v1::Attribute {
            key: (*k).into(),
            value: (*v).into(),
        })
        .collect()
}

async fn publish(
    client: &mut IndexClient<Channel>,
    app: &str,
    n: u8,
    pairs: &[(&str, &str)],
    replace_all: bool,
) -> Result<v1::IndexRecord, ErrorDetail> {
    client
        .publish(v1::IndexPublishRequest {
            app_id: Some(v1::AppId::new(app)),
            peer: Some(peer(n)),
            attributes: attrs(pairs),
            replace_all,
        })
        .await
        .map(|r| r.into_inner().record.unwrap())
        .map_err(|s| ErrorDetail::from_status(&s))
}

async fn query_all(
    client: &mut IndexClient<Channel>,
    app: &str,
    key: &str,
    mode: v1::AttributeMatch,
    value: &str,
    limit: u32,
) -> Vec<(v1::PeerId, String)> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = client
            .query(v1::IndexQueryRequest {
                app_id: Some(v1::AppId::new(app)),
                filter: Some(v1::AttributeFilter {
                    key: key.into(),
                    mode: mode as i32,
                    value: value.into(),
                }),
                page: Some(v1::Page {
                    cursor: cursor.clone(),
                    limit,
                }),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.records.len() <= limit as usize);
        for rec in r.records {
            let v = rec
                .attributes
                .iter()
                .find(|a| a.key == key)
                .unwrap()
                .value
                .clone();
            assert_eq!(rec.app_id.unwrap().value, app);
            out.push((rec.peer.unwrap(), v));
        }
        cursor = r.next_page.unwrap_or_default().cursor;
        if cursor.is_empty() {
            return out;
        }
    }
}

#[tokio::test]
async fn publish_query_order_pages_tenancy_and_expiry() {
    let mut f = fixture().await;
    let client = &mut f.client;
    for n in 1..=6 {
        online(&f.store, "app-a", n, Duration::from_secs(60)).await;
    }
    online(&f.store, "app-b", 9, Duration::from_secs(60)).await;
    online(&f.store, "app-a", 7, Duration::from_millis(800)).await;
    // values chosen so that value order and peer order disagree
    for (n, v) in [
        (1, "room-b"),
        (2, "room-a"),
        (3, "room-b"),
        (4, "room-c"),
        (5, "x"),
        (6, "room-a"),
        (7, "room-a"),
    ] {
        let rec = publish(client, "app-a", n, &[("room", v), ("kind", "chat")], false)
            .await
            .unwrap();
        assert_eq!(rec.attributes, attrs(&[("kind", "chat"), ("room", v)]));
        assert!(rec.updated_at_unix_ms > 0);
    }
    publish(client, "app-b", 9, &[("room", "room-a")], false)
        .await
        .unwrap();

    // prefix query: ascending value, then peer id; pages of 2 see everything once
    let got = query_all(
        client,
        "app-a",
        "room",
        v1::AttributeMatch::Prefix,
        "room-",
        2,
    )
    .await;
    let want: Vec<(v1::PeerId, String)> = [
        (2, "room-a"),
        (6, "room-a"),
        (7, "room-a"),
        (1, "room-b"),
        (3, "room-b"),
        (4, "room-c"),
    ]
    .iter()
    .map(|(n, v)| (peer(*n), (*v).to_owned()))
    .collect();
    assert_eq!(got, want);
    let eq = query_all(
        client,
        "app-a",
        "room",
        v1::AttributeMatch::Equal,
        "room-a",
        10,
    )
    .await;
    assert_eq!(
        eq.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
        [peer(2), peer(6), peer(7)]
    );
    // app-b sees only its own peer; app-a never sees app-b's
    let b = query_all(client, "app-b", "room", v1::AttributeMatch::Prefix, "", 10).await;
    assert_eq!(b, vec![(peer(9), "room-a".to_owned())]);
    assert!(!got.iter().any(|(p, _)| *p == peer(9)));
    let cross = f
        .client
        .get(v1::IndexGetRequest {
            app_id: Some(v1::AppId::new("app-b")),
            peer: Some(peer(1)),
        })
        .await
        .unwrap_err();
    assert_eq!(ErrorDetail::from_status(&cross).code(), ErrorCode::NotFound);

    // peer 7's presence lapses: its record and index entries go with it
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let eq = query_all(
        &mut f.client,
        "app-a",
        "room",
        v1::AttributeMatch::Equal,
        "room-a",
        10,
    )
    .await;
    assert_eq!(
        eq.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
        [peer(2), peer(6)]
    );
    let gone = f
        .client
        .get(v1::IndexGetRequest {
            app_id: Some(v1::AppId::new("app-a")),
            peer: Some(peer(7)),
        })
        .await
        .unwrap_err();
    assert_eq!(ErrorDetail::from_status(&gone).code(), ErrorCode::NotFound);
    // and it cannot publish any more
    let e = publish(&mut f.client, "app-a", 7, &[("room", "z")], false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::PeerOffline);
}

#[tokio::test]
async fn limits_are_refused_clearly_and_unpublish_works() {
    let mut f = fixture().await;
    online(&f.store, "app-a", 1, Duration::from_secs(60)).await;
    let client = &mut f.client;
    publish(
        client,
        "app-a",
        1,
        &[("a", "1"), ("b", "2"), ("c", "3")],
        false,
    )
    .await
    .unwrap();
    // a merge that would make 5 > 4 attributes
    let e = publish(client, "app-a", 1, &[("d", "4"), ("e", "5")], false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::TooLarge);
    assert_eq!(e.limit, 4);
    assert!(e.message.contains("at most 4 attributes"), "{}", e.message);
    // oversized value and key, bad key, duplicate key
    let big = "v".repeat(1025);
    let e = publish(client, "app-a", 1, &[("a", &big)], false)
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.limit), (ErrorCode::TooLarge, 1024));
    let long_key = "k".repeat(65);
    let e = publish(client, "app-a", 1, &[(&long_key, "1")], false)
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.limit), (ErrorCode::TooLarge, 64));
    let e = publish(client, "app-a", 1, &[("a b", "1")], false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Invalid);
    let e = publish(client, "app-a", 1, &[("a", "1"), ("a", "2")], false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Invalid);
    // nothing changed
    let rec = client
        .get(v1::IndexGetRequest {
            app_id: Some(v1::AppId::new("app-a")),
            peer: Some(peer(1)),
        })
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(rec.attributes, attrs(&[("a", "1"), ("b", "2"), ("c", "3")]));
    // replace within the cap works
    publish(client, "app-a", 1, &[("d", "4"), ("e", "5")], true)
        .await
        .unwrap();
    let r = client
        .unpublish(v1::IndexUnpublishRequest {
            app_id: Some(v1::AppId::new("app-a")),
            peer: Some(peer(1)),
            keys: vec!["d".into(), "unknown".into()],
            all: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.record.unwrap().attributes, attrs(&[("e", "5")]));
    let r = client
        .unpublish(v1::IndexUnpublishRequest {
            app_id: Some(v1::AppId::new("app-a")),
            peer: Some(peer(1)),
            keys: vec![],
            all: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.record.unwrap().attributes.is_empty());

    // bad queries: unspecified mode, cursor of another query, page too large
    let q =
        |mode: v1::AttributeMatch, value: &str, cursor: &str, limit: u32| v1::IndexQueryRequest {
            app_id: Some(v1::AppId::new("app-a")),
            filter: Some(v1::AttributeFilter {
                key: "e".into(),
                mode: mode as i32,
                value: value.into(),
            }),
            page: Some(v1::Page {
                cursor: cursor.into(),
                limit,
            }),
        };
    for (req, field) in [
        (q(v1::AttributeMatch::Unspecified, "", "", 0), "filter.mode"),
        (
            q(v1::AttributeMatch::Equal, "5", "0123456789abcdef.q00", 0),
            "page.cursor",
        ),
        (q(v1::AttributeMatch::Equal, "5", "", 1001), "page.limit"),
    ] {
        let e = ErrorDetail::from_status(&client.query(req).await.unwrap_err());
        assert_eq!((e.code(), e.field.as_str()), (ErrorCode::Invalid, field));
    }
}
