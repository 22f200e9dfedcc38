//! The admin API over real gRPC on loopback, in process, on the embedded store: tokens and access,
//! application and secret management with their audit events, paging of the audit log, input
//! limits, and server reflection without a token. (Peers, kicks and the index across real
//! gateways and Redis are in `e2e/tests/admin.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use quickp2p_admin::{Access, Admin, AdminToken, Config, Tokens};
use quickp2p_proto::v1::{self, admin_client::AdminClient};
use quickp2p_service_kit::Shutdown;
use quickp2p_store::Store;
use tonic::Code;
use tonic::transport::Channel;

const WRITE: &str = "write-token-for-the-api-test-0001";
const READ: &str = "read-token-for-the-api-test-00002";

struct Running {
    client: AdminClient<Channel>,
    channel: Channel,
    stop: Shutdown,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(store: Store) -> Running {
    let tokens = Tokens::from_tokens(vec![
        AdminToken::new("ops", Access::Write, WRITE).unwrap(),
        AdminToken::new("support", Access::Read, READ).unwrap(),
    ])
    .unwrap();
    let admin = Admin::bind(Config::loopback(tokens), store).await.unwrap();
    let addr = admin.grpc_addr();
    let stop = Shutdown::new();
    tokio::spawn(admin.run(stop.clone()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Running {
        client: AdminClient::new(channel.clone()),
        channel,
        stop,
    }
}

fn with<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn app(id: &str) -> Option<v1::AppId> {
    Some(v1::AppId::new(id))
}

#[tokio::test]
async fn applications_secrets_and_audit() {
    let mut api = start(Store::embedded()).await;
    let c = &mut api.client;

    // no token, a bad token, a read-only token on a write
    let create = v1::CreateApplicationRequest {
        id: app("shop"),
        display_name: "Shop".into(),
        secret_label: "first".into(),
    };
    let no_token = c
        .create_application(tonic::Request::new(create.clone()))
        .await
        .unwrap_err();
    assert_eq!(no_token.code(), Code::Unauthenticated);
    let bad = c
        .list_applications(with(
            "x".repeat(30).as_str(),
            v1::ListApplicationsRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::Unauthenticated);
    let read_only = c
        .create_application(with(READ, create.clone()))
        .await
        .unwrap_err();
    assert_eq!(read_only.code(), Code::PermissionDenied);

    // create, list, get
    let created = c
        .create_application(with(WRITE, create.clone()))
        .await
        .unwrap()
        .into_inner();
    let secret = created.secret.unwrap();
    assert_eq!(secret.secret.len(), 43);
    assert_eq!(
        c.create_application(with(WRITE, create.clone()))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    let listed = c
        .list_applications(with(READ, v1::ListApplicationsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.applications.len(), 1);
    assert_eq!(listed.applications[0].display_name, "Shop");

    // a second secret, revoke the first, revoke the application
    let s2 = c
        .create_app_secret(with(
            WRITE,
            v1::CreateAppSecretRequest {
                id: app("shop"),
                label: "rotation".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .secret
        .unwrap();
    assert_eq!(s2.secret_id, "s2");
    let after = c
        .revoke_app_secret(with(
            WRITE,
            v1::RevokeAppSecretRequest {
                id: app("shop"),
                secret_id: secret.secret_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    assert!(after.secrets[0].revoked_at_unix_ms > 0);
    assert_eq!(after.secrets[1].revoked_at_unix_ms, 0);
    let revoked = c
        .revoke_application(with(
            WRITE,
            v1::RevokeApplicationRequest {
                id: app("shop"),
                reason: "closed".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        revoked.application.unwrap().state(),
        v1::ApplicationState::Revoked
    );
    let got = c
        .get_application(with(READ, v1::GetApplicationRequest { id: app("shop") }))
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    assert_eq!(got.state(), v1::ApplicationState::Revoked);
    assert_eq!(
        c.get_application(with(READ, v1::GetApplicationRequest { id: app("nope") }))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // the audit log: every write, the refused one, the failed one; never a secret
    let events = c
        .list_audit_events(with(READ, v1::ListAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .events;
    let summary: Vec<(&str, &str, bool)> = events
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str(), e.success))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("ops", "app.revoke", true),
            ("ops", "app_secret.revoke", true),
            ("ops", "app_secret.create", true),
            ("ops", "app.create", false),
            ("ops", "app.create", true),
            ("support", "app.create", false),
        ]
    );
    for e in &events {
        assert!(!e.detail.contains(&secret.secret) && !e.detail.contains(&s2.secret));
        assert!(!e.actor.contains(WRITE));
    }
    assert_eq!(events[0].target, "shop");

    // paging and filters
    let page = c
        .list_audit_events(with(
            READ,
            v1::ListAuditEventsRequest {
                page: Some(v1::Page {
                    cursor: String::new(),
                    limit: 4,
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 4);
    let rest = c
        .list_audit_events(with(
            READ,
            v1::ListAuditEventsRequest {
                page: Some(v1::Page {
                    cursor: page.next_page.unwrap().cursor,
                    limit: 4,
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.events.len(), 2);
    assert!(rest.next_page.unwrap().cursor.is_empty());
    let secrets_only = c
        .list_audit_events(with(
            READ,
            v1::ListAuditEventsRequest {
                action_prefix: "app_secret.".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(secrets_only.events.len(), 2);
    let by_support = c
        .list_audit_events(with(
            READ,
            v1::ListAuditEventsRequest {
                actor: "support".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_support.events.len(), 1);
}

#[tokio::test]
async fn limits_kicks_of_offline_peers_and_stats() {
    let store = Store::embedded();
    let mut api = start(store.clone()).await;
    let c = &mut api.client;
    c.create_application(with(
        WRITE,
        v1::CreateApplicationRequest {
            id: app("game"),
            ..Default::default()
        },
    ))
    .await
    .unwrap();

    let peer = Some(v1::PeerId::from_public_key([7; 32]));
    let kick = c
        .kick_peer(with(
            WRITE,
            v1::KickPeerRequest {
                app_id: app("game"),
                peer: peer.clone(),
                message: "bye".into(),
                reconnect_after_ms: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!kick.was_online, "nobody to kick");
    let too_long = c
        .kick_peer(with(
            WRITE,
            v1::KickPeerRequest {
                app_id: app("game"),
                peer: peer.clone(),
                message: "x".repeat(1025),
                reconnect_after_ms: 0,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), Code::InvalidArgument);
    let bad_peer = c
        .get_peer(with(
            READ,
            v1::GetPeerRequest {
                app_id: app("game"),
                peer: Some(v1::PeerId {
                    value: vec![1, 2, 3].into(),
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_peer.code(), Code::InvalidArgument);
    let offline = c
        .get_peer(with(
            READ,
            v1::GetPeerRequest {
                app_id: app("game"),
                peer,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(offline.code(), Code::NotFound);
    let big = c
        .broadcast(with(
            WRITE,
            v1::BroadcastRequest {
                app_id: app("game"),
                payload: vec![0u8; 61_441].into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(big.code(), Code::InvalidArgument);
    let unknown = c
        .broadcast(with(
            WRITE,
            v1::BroadcastRequest {
                app_id: app("nope"),
                payload: vec![1].into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let sent = c
        .broadcast(with(
            WRITE,
            v1::BroadcastRequest {
                app_id: app("game"),
                payload: vec![1].into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.broadcast_id.len(), 16);
    assert_eq!(sent.gateways, 0, "no gateway registered");

    // handshake counters written under the documented names show up in the matrix
    let names = quickp2p_store::names::outcome_field((1, 1), (3, 3), "direct");
    store
        .incr_counter_field(quickp2p_store::names::HANDSHAKE_OUTCOMES_MAP, &names, 4)
        .await
        .unwrap();
    let stats = c
        .get_network_stats(with(READ, v1::GetNetworkStatsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(stats.peers_online, 0);
    assert_eq!(stats.peers_per_app.len(), 1);
    assert_eq!(stats.punch_matrix.len(), 1);
    assert_eq!(stats.punch_matrix[0].direct, 4);
    let admins = stats
        .replicas
        .iter()
        .find(|r| r.role() == v1::ServiceRole::Admin)
        .expect("the admin registers itself");
    assert_eq!(admins.replicas.len(), 1);

    let index = c
        .query_index(with(
            READ,
            v1::IndexQueryRequest {
                app_id: app("game"),
                filter: Some(v1::AttributeFilter {
                    key: "k".into(),
                    mode: v1::AttributeMatch::Unspecified as i32,
                    value: String::new(),
                }),
                page: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(index.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn reflection_needs_no_token() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let api = start(Store::embedded()).await;
    let mut reflection = ServerReflectionClient::new(api.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"quickp2p.v1.Admin".to_owned()), "{names:?}");
}

#[tokio::test]
async fn refuses_to_start_without_tokens() {
    let err = Admin::bind(Config::loopback(Tokens::default()), Store::embedded())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no admin token"), "{err}");
}

#[tokio::test]
async fn peers_and_index_from_the_store() {
    use quickp2p_store::{Attributes, PeerRecord, PublishMode};
    let store = Store::embedded();
    let mut api = start(store.clone()).await;
    let c = &mut api.client;
    for id in ["aa", "bb"] {
        c.create_application(with(
            WRITE,
            v1::CreateApplicationRequest {
                id: app(id),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    }
    let mut peers = Vec::new();
    for (i, (app_id, gateway)) in [("aa", "g1"), ("aa", "g2"), ("aa", "g1"), ("bb", "g2")]
        .into_iter()
        .enumerate()
    {
        let peer = v1::PeerId::from_public_key([u8::try_from(i).unwrap() + 1; 32]);
        let hex = peer.to_string();
        store
            .put_peer(
                &PeerRecord {
                    peer_id: hex.clone(),
                    app_id: app_id.into(),
                    gateway_id: gateway.into(),
                    session_id: "00".repeat(16),
                    reflexive_addr: "192.0.2.1:4000".into(),
                    nat_behaviour: None,
                    online_since: std::time::SystemTime::now(),
                    extension: Default::default(),
                },
                std::time::Duration::from_secs(60),
            )
            .await
            .unwrap();
        let attrs: Attributes = [("color".to_owned(), format!("c{i}"))].into();
        store
            .publish_attributes(app_id, &hex, &attrs, PublishMode::Replace)
            .await
            .unwrap();
        peers.push((app_id, gateway, peer));
    }

    // every peer, one per page, ordered by application then peer id
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10 {
        let page = c
            .list_peers(with(
                READ,
                v1::ListPeersRequest {
                    search: None,
                    page: Some(v1::Page { cursor, limit: 1 }),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.peers.len() <= 1);
        seen.extend(page.peers.into_iter().map(|o| {
            (
                o.app_id.unwrap().value,
                o.session.unwrap().gateway_id,
                o.peer.unwrap(),
            )
        }));
        cursor = page.next_page.unwrap().cursor;
        if cursor.is_empty() {
            break;
        }
    }
    let mut want: Vec<(String, String, v1::PeerId)> = peers
        .iter()
        .map(|(a, g, p)| ((*a).to_owned(), (*g).to_owned(), p.clone()))
        .collect();
    want.sort_by(|x, y| (&x.0, x.2.to_string()).cmp(&(&y.0, y.2.to_string())));
    assert_eq!(seen, want);

    // search: application + gateway, and a peer id prefix
    let found = c
        .list_peers(with(
            READ,
            v1::ListPeersRequest {
                search: Some(v1::PeerSearch {
                    app_id: app("aa"),
                    gateway_id: "g1".into(),
                    ..Default::default()
                }),
                page: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.peers.len(), 2);
    let prefix = c
        .list_peers(with(
            READ,
            v1::ListPeersRequest {
                search: Some(v1::PeerSearch {
                    peer_id_prefix: "0202".into(),
                    ..Default::default()
                }),
                page: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(prefix.peers.len(), 1);
    assert_eq!(prefix.peers[0].peer.as_ref(), Some(&peers[1].2));

    // one peer with its record; the index of one application only
    let one = c
        .get_peer(with(
            READ,
            v1::GetPeerRequest {
                app_id: app("aa"),
                peer: Some(peers[0].2.clone()),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let record = one.record.unwrap();
    assert_eq!(record.attributes[0].value, "c0");
    assert!(record.updated_at_unix_ms > 0);
    let query = |app_id: &str| v1::IndexQueryRequest {
        app_id: app(app_id),
        filter: Some(v1::AttributeFilter {
            key: "color".into(),
            mode: v1::AttributeMatch::Prefix as i32,
            value: "c".into(),
        }),
        page: None,
    };
    let aa = c
        .query_index(with(READ, query("aa")))
        .await
        .unwrap()
        .into_inner();
    let values: Vec<&str> = aa
        .records
        .iter()
        .map(|r| r.attributes[0].value.as_str())
        .collect();
    assert_eq!(values, ["c0", "c1", "c2"]);
    let bb = c
        .query_index(with(READ, query("bb")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bb.records.len(), 1);
    assert_eq!(bb.records[0].attributes[0].value, "c3");
}
