//! The checkpoint's login, session and application rules, called directly over the embedded
//! store (what the gateway calls over gRPC), plus the operator CLI's argument checks.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use quickp2p::identity::Identity;
use quickp2p_checkpoint::{CheckpointError, CheckpointService, Config, ensure_dev_application};
use quickp2p_proto::v1;
use quickp2p_store::Store;

const GW: &str = "gw-test";

fn service(session_ttl: Duration) -> (CheckpointService, Store) {
    let store = Store::embedded();
    let config = Config {
        session_ttl,
        heartbeat_interval: session_ttl / 3,
        ..Config::loopback()
    };
    (CheckpointService::new(store.clone(), config), store)
}

async fn challenge(cp: &CheckpointService, app: &str) -> Bytes {
    cp.issue_challenge(v1::IssueChallengeRequest {
        gateway_id: GW.into(),
        app_id: Some(v1::AppId::new(app)),
        peer_address: None,
    })
    .await
    .unwrap()
    .challenge
}

fn login_request(
    app: &str,
    secret: &str,
    key: &Identity,
    signer: &Identity,
    challenge: Bytes,
) -> v1::LoginRequest {
    let transcript =
        quickp2p_proto::login::login_transcript(&challenge, app, GW, &key.public_key()).unwrap();
    v1::LoginRequest {
        gateway_id: GW.into(),
        app_id: Some(v1::AppId::new(app)),
        challenge,
        public_key: Bytes::copy_from_slice(&key.public_key()),
        signature: Bytes::copy_from_slice(&signer.sign(&transcript)),
        app_proof: Bytes::copy_from_slice(&quickp2p_checkpoint::apps::app_proof(
            secret,
            &transcript,
        )),
        protocol_version: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn login_checks_every_proof_and_uses_a_challenge_once() {
    let (cp, store) = service(Duration::from_secs(30));
    let app = ensure_dev_application(&store, "app-a").await.unwrap();
    let me = Identity::generate().unwrap();
    let other = Identity::generate().unwrap();

    let c = challenge(&cp, "app-a").await;
    let ok = cp
        .login(login_request("app-a", &app.secret, &me, &me, c.clone()))
        .await
        .unwrap();
    let session = ok.session.unwrap();
    assert_eq!(session.peer.unwrap(), me.peer_id());
    assert_eq!(ok.session_token.len(), 32);

    // replay of a used challenge
    let err = cp
        .login(login_request("app-a", &app.secret, &me, &me, c))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CheckpointError::Unauthenticated(ref m) if m.contains("already used")),
        "{err}"
    );
    // forged signature
    let c = challenge(&cp, "app-a").await;
    let err = cp
        .login(login_request("app-a", &app.secret, &me, &other, c))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CheckpointError::Unauthenticated(ref m) if m.contains("signature")),
        "{err}"
    );
    // wrong app secret
    let c = challenge(&cp, "app-a").await;
    let err = cp
        .login(login_request("app-a", "wrong", &me, &me, c))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CheckpointError::Unauthenticated(ref m) if m.contains("app proof")),
        "{err}"
    );
    // a challenge of another application
    ensure_dev_application(&store, "app-b").await.unwrap();
    let c = challenge(&cp, "app-b").await;
    let err = cp
        .login(login_request("app-a", &app.secret, &me, &me, c))
        .await
        .unwrap_err();
    assert!(matches!(err, CheckpointError::Unauthenticated(_)), "{err}");
    // the peer is online in app-a only
    let presence = cp
        .query_presence(v1::QueryPresenceRequest {
            app_id: Some(v1::AppId::new("app-b")),
            peers: vec![me.peer_id()],
        })
        .await
        .unwrap();
    assert_eq!(presence.states[0].presence(), v1::Presence::Offline);
}

#[tokio::test]
async fn sessions_expire_resume_and_end_with_the_application() {
    let (cp, store) = service(Duration::from_millis(300));
    let app = ensure_dev_application(&store, "app-a").await.unwrap();
    let me = Identity::generate().unwrap();
    let c = challenge(&cp, "app-a").await;
    let first = cp
        .login(login_request("app-a", &app.secret, &me, &me, c))
        .await
        .unwrap();

    // a resume moves the session (same creation time) and retires the old token
    let c = challenge(&cp, "app-a").await;
    let mut request = login_request("app-a", &app.secret, &me, &me, c);
    request.previous_session_token = first.session_token.clone();
    let second = cp.login(request).await.unwrap();
    assert_eq!(
        second.session.as_ref().unwrap().created_at_unix_ms,
        first.session.as_ref().unwrap().created_at_unix_ms
    );
    let beat = |token: Bytes| v1::HeartbeatRequest {
        gateway_id: GW.into(),
        sessions: vec![v1::SessionHeartbeat {
            session_token: token,
            observed_address: None,
        }],
    };
    let r = cp
        .heartbeat(beat(first.session_token.clone()))
        .await
        .unwrap();
    assert_eq!(
        r.results[0].error.as_ref().unwrap().code(),
        v1::ErrorCode::Expired
    );
    let r = cp
        .heartbeat(beat(second.session_token.clone()))
        .await
        .unwrap();
    assert!(r.results[0].error.is_none());

    // no heartbeat for longer than the TTL: expired
    tokio::time::sleep(Duration::from_millis(450)).await;
    let r = cp
        .heartbeat(beat(second.session_token.clone()))
        .await
        .unwrap();
    assert_eq!(
        r.results[0].error.as_ref().unwrap().code(),
        v1::ErrorCode::Expired
    );

    // revoked applications refuse logins
    cp.apps().revoke("app-a").await.unwrap();
    let c = challenge(&cp, "app-a").await;
    let err = cp
        .login(login_request("app-a", &app.secret, &me, &me, c))
        .await
        .unwrap_err();
    assert!(matches!(err, CheckpointError::NotPermitted(_)), "{err}");
}

#[tokio::test]
async fn secrets_rotate() {
    let (cp, store) = service(Duration::from_secs(30));
    let (_, first) = cp.apps().create("rot", "rotation", "").await.unwrap();
    let second = cp.apps().create_secret("rot", "next").await.unwrap();
    cp.apps()
        .revoke_secret("rot", &first.secret_id)
        .await
        .unwrap();
    let me = Identity::generate().unwrap();
    let c = challenge(&cp, "rot").await;
    assert!(
        cp.login(login_request("rot", &first.secret, &me, &me, c))
            .await
            .is_err()
    );
    let c = challenge(&cp, "rot").await;
    cp.login(login_request("rot", &second.secret, &me, &me, c))
        .await
        .unwrap();
    let err = cp.apps().create("rot", "again", "").await.unwrap_err();
    assert!(matches!(err, CheckpointError::AlreadyExists(_)));
    drop(store);
}

#[test]
fn the_cli_reports_bad_flags_by_name() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quickp2p-checkpoint"))
        .args([
            "--session-ttl-ms",
            "10",
            "--heartbeat-interval-ms",
            "x",
            "--replica-id",
            "c",
        ])
        .env_remove("QP_REDIS_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("QP_CHECKPOINT_SESSION_TTL_MS"), "{err}");
    assert!(err.contains("QP_CHECKPOINT_HEARTBEAT_INTERVAL_MS"), "{err}");
    assert!(err.contains("QP_REDIS_URL"), "{err}");
}
