//! The `quickp2p.v1.Checkpoint` gRPC service: challenges, login, sessions, presence and the
//! application rpcs.
//!
//! State in the store (all expiring):
//!
//! | what | where | TTL |
//! |---|---|---|
//! | issued challenge | ephemeral `chal:<hex>` → JSON (gateway, app) | `challenge_ttl`; taken once by Login |
//! | session | ephemeral `sess:<hex session id>` → JSON [`SessionRecord`] | `session_ttl`, renewed by heartbeats |
//! | presence | the store's peer record (app, peer hex id) with `session_id` | `session_ttl`, renewed by heartbeats |
//!
//! The session id is the first 16 bytes of SHA-256(token); the record keeps the full hash, so the
//! token itself is never stored. Online and offline changes are published as
//! [`v1::PresenceEvent`] on the event channel [`PRESENCE_CHANNEL`].

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use quickp2p_proto::v1::{self, checkpoint_server::Checkpoint as CheckpointRpc};
use quickp2p_store::{PeerRecord, Store};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::apps::{Apps, ms, now_ms, random_bytes, validate_app_id, verify_app_proof};
use crate::{CheckpointError, Config};

/// The store event channel carrying [`v1::PresenceEvent`]s to the gateways.
pub const PRESENCE_CHANNEL: &str = "presence";

/// Most sessions in one heartbeat batch, peers in one presence query.
pub const MAX_BATCH: usize = 1000;

/// A challenge waiting to be answered.
#[derive(Debug, Serialize, Deserialize)]
struct IssuedChallenge {
    gateway_id: String,
    app_id: String,
}

/// A session as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    /// Hex peer id.
    pub peer: String,
    /// Application id.
    pub app_id: String,
    /// Gateway the session is attached to.
    pub gateway_id: String,
    /// Observed address `ip:port` (may be empty).
    pub observed: String,
    /// Creation, Unix ms.
    pub created_ms: u64,
    /// Expiry, Unix ms.
    pub expires_ms: u64,
    /// Negotiated protocol version.
    pub protocol_version: u32,
    /// SDK self-description.
    pub sdk: String,
}

/// The checkpoint's logic over the store; the tonic service is a thin wrapper.
#[derive(Debug, Clone)]
pub struct CheckpointService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    apps: Apps,
    config: Config,
}

fn challenge_key(challenge: &[u8]) -> String {
    format!("chal:{}", hex::encode(challenge))
}

fn session_key(session_id: &[u8]) -> String {
    format!("sess:{}", hex::encode(session_id))
}

fn token_hash(token: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The session id of a token: the first 16 bytes of its SHA-256.
pub fn session_id_of(token: &[u8]) -> [u8; 16] {
    let hash = token_hash(token);
    let mut id = [0u8; 16];
    id.copy_from_slice(&hash[..16]);
    id
}

fn addr_text(addr: Option<&v1::SocketAddress>) -> String {
    addr.and_then(|a| std::net::SocketAddr::try_from(a).ok())
        .map(|a| a.to_string())
        .unwrap_or_default()
}

fn app_id_of(app: Option<&v1::AppId>, field: &'static str) -> Result<String, CheckpointError> {
    let id = app.map(|a| a.value.clone()).unwrap_or_default();
    validate_app_id(&id).map_err(|_| CheckpointError::Invalid {
        field,
        message: format!("{id:?} is not an application id"),
    })?;
    Ok(id)
}

fn peer_hex(peer: Option<&v1::PeerId>, field: &'static str) -> Result<String, CheckpointError> {
    match peer {
        Some(p) if p.is_valid() => Ok(p.to_string()),
        _ => Err(CheckpointError::Invalid {
            field,
            message: "a peer id is 32 bytes".into(),
        }),
    }
}

fn count_login_failure(reason: &'static str) {
    metrics::counter!("qp_checkpoint_login_failures_total", "reason" => reason).increment(1);
}

impl CheckpointService {
    /// The service over `store` with `config`'s timings.
    pub fn new(store: Store, config: Config) -> CheckpointService {
        CheckpointService {
            inner: Arc::new(Inner {
                apps: Apps::new(store.clone()),
                store,
                config,
            }),
        }
    }

    /// Application management on the same store.
    pub fn apps(&self) -> &Apps {
        &self.inner.apps
    }

    async fn load_session(&self, token: &[u8]) -> Result<Option<SessionRecord>, CheckpointError> {
        if token.len() != 32 {
            return Ok(None);
        }
        let key = session_key(&session_id_of(token));
        let Some(raw) = self.inner.store.get_ephemeral(&key).await? else {
            return Ok(None);
        };
        let record: SessionRecord = serde_json::from_slice(&raw)
            .map_err(|e| CheckpointError::Corrupt(format!("session: {e}")))?;
        // compare the whole hash: the id is only half of it
        if record.token_hash != hex::encode(token_hash(token)) {
            return Ok(None);
        }
        Ok(Some(record))
    }

    async fn save_session(
        &self,
        session_id: &[u8; 16],
        record: &SessionRecord,
    ) -> Result<(), CheckpointError> {
        let raw = serde_json::to_vec(record)
            .map_err(|e| CheckpointError::Corrupt(format!("session: {e}")))?;
        self.inner
            .store
            .put_ephemeral(
                &session_key(session_id),
                Bytes::from(raw),
                self.inner.config.session_ttl,
            )
            .await?;
        Ok(())
    }

    async fn publish_presence(&self, app_id: &str, peer: &str, presence: v1::Presence) {
        let Ok(peer_id) = peer.parse::<v1::PeerId>() else {
            return;
        };
        let event = v1::PresenceEvent {
            app_id: Some(v1::AppId::new(app_id)),
            state: Some(v1::PresenceState {
                peer: Some(peer_id),
                presence: presence as i32,
                since_unix_ms: now_ms(),
            }),
        };
        let kind = if presence == v1::Presence::Online {
            "online"
        } else {
            "offline"
        };
        metrics::counter!("qp_checkpoint_presence_events_total", "kind" => kind).increment(1);
        if let Err(e) = self
            .inner
            .store
            .publish_event(PRESENCE_CHANNEL, Bytes::from(event.encode_to_vec()))
            .await
        {
            tracing::warn!(error = %e, "presence event not published");
        }
    }

    /// Issues a single-use challenge.
    pub async fn issue_challenge(
        &self,
        req: v1::IssueChallengeRequest,
    ) -> Result<v1::IssueChallengeResponse, CheckpointError> {
        let app_id = app_id_of(req.app_id.as_ref(), "app_id")?;
        if req.gateway_id.is_empty() || req.gateway_id.len() > 128 {
            return Err(CheckpointError::Invalid {
                field: "gateway_id",
                message: "1 to 128 bytes".into(),
            });
        }
        let challenge = random_bytes::<32>();
        let issued = IssuedChallenge {
            gateway_id: req.gateway_id,
            app_id,
        };
        let raw = serde_json::to_vec(&issued)
            .map_err(|e| CheckpointError::Corrupt(format!("challenge: {e}")))?;
        self.inner
            .store
            .put_ephemeral(
                &challenge_key(&challenge),
                Bytes::from(raw),
                self.inner.config.challenge_ttl,
            )
            .await?;
        Ok(v1::IssueChallengeResponse {
            challenge: Bytes::copy_from_slice(&challenge),
            expires_at_unix_ms: now_ms() + ms(self.inner.config.challenge_ttl),
        })
    }

    /// Verifies a login and opens (or resumes) a session.
    pub async fn login(&self, req: v1::LoginRequest) -> Result<v1::LoginResponse, CheckpointError> {
        let app_id = app_id_of(req.app_id.as_ref(), "login.app_id")?;
        let public_key: [u8; 32] =
            req.public_key
                .as_ref()
                .try_into()
                .map_err(|_| CheckpointError::Invalid {
                    field: "login.public_key",
                    message: format!(
                        "an Ed25519 public key is 32 bytes, not {}",
                        req.public_key.len()
                    ),
                })?;
        if req.challenge.len() != 32 {
            count_login_failure("bad_challenge");
            return Err(CheckpointError::Unauthenticated(
                "the challenge is not one this network issued".into(),
            ));
        }
        // once only: among concurrent logins (on any replica) exactly one takes it
        let Some(raw) = self
            .inner
            .store
            .take_ephemeral(&challenge_key(&req.challenge))
            .await?
        else {
            count_login_failure("challenge_reused_or_expired");
            return Err(CheckpointError::Unauthenticated(
                "the challenge is unknown, expired or already used: get a new one".into(),
            ));
        };
        let issued: IssuedChallenge = serde_json::from_slice(&raw)
            .map_err(|e| CheckpointError::Corrupt(format!("challenge: {e}")))?;
        if issued.gateway_id != req.gateway_id || issued.app_id != app_id {
            count_login_failure("challenge_mismatch");
            return Err(CheckpointError::Unauthenticated(
                "the challenge was issued for another gateway or application".into(),
            ));
        }
        let Some(app) = self.inner.apps.get(&app_id).await? else {
            count_login_failure("unknown_app");
            return Err(CheckpointError::Unauthenticated(format!(
                "unknown application {app_id:?}"
            )));
        };
        if !app.is_active() {
            count_login_failure("app_revoked");
            return Err(CheckpointError::NotPermitted(format!(
                "application {app_id:?} is revoked"
            )));
        }
        let transcript = quickp2p_proto::login::login_transcript(
            &req.challenge,
            &app_id,
            &req.gateway_id,
            &public_key,
        )
        .map_err(|e| CheckpointError::Invalid {
            field: "login",
            message: e.to_string(),
        })?;
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key);
        if key.verify(&transcript, &req.signature).is_err() {
            count_login_failure("bad_signature");
            return Err(CheckpointError::Unauthenticated(
                "the signature does not verify with the public key".into(),
            ));
        }
        if !verify_app_proof(
            &app.secrets,
            &req.app_secret_id,
            &transcript,
            &req.app_proof,
        ) {
            count_login_failure("bad_app_proof");
            return Err(CheckpointError::Unauthenticated(
                "the app proof does not match an active secret of the application".into(),
            ));
        }

        let peer = v1::PeerId::from_public_key(public_key);
        let peer_text = peer.to_string();
        let now = now_ms();
        // resume the earlier session of the same peer, if its token is still valid
        let previous = if req.previous_session_token.is_empty() {
            None
        } else {
            self.load_session(&req.previous_session_token)
                .await?
                .filter(|s| s.peer == peer_text && s.app_id == app_id)
        };
        let resumed = previous.is_some();
        if resumed {
            let old_id = session_id_of(&req.previous_session_token);
            self.inner
                .store
                .delete_ephemeral(&session_key(&old_id))
                .await?;
        }
        let token = random_bytes::<32>();
        let session_id = session_id_of(&token);
        let observed = addr_text(req.observed_address.as_ref());
        let record = SessionRecord {
            token_hash: hex::encode(token_hash(&token)),
            peer: peer_text.clone(),
            app_id: app_id.clone(),
            gateway_id: req.gateway_id.clone(),
            observed: observed.clone(),
            created_ms: previous.as_ref().map_or(now, |p| p.created_ms),
            expires_ms: now + ms(self.inner.config.session_ttl),
            protocol_version: req.protocol_version,
            sdk: req.sdk.chars().take(128).collect(),
        };
        self.save_session(&session_id, &record).await?;
        let was_online = self
            .inner
            .store
            .get_peer(&app_id, &peer_text)
            .await?
            .is_some();
        let presence = PeerRecord {
            peer_id: peer_text.clone(),
            app_id: app_id.clone(),
            gateway_id: req.gateway_id.clone(),
            session_id: hex::encode(session_id),
            reflexive_addr: observed,
            nat_behaviour: None,
            online_since: std::time::SystemTime::now(),
            extension: Bytes::new(),
        };
        self.inner
            .store
            .put_peer(&presence, self.inner.config.session_ttl)
            .await?;
        if !resumed && !was_online {
            self.publish_presence(&app_id, &peer_text, v1::Presence::Online)
                .await;
        }
        metrics::counter!("qp_checkpoint_logins_total", "resumed" => if resumed { "true" } else { "false" })
            .increment(1);
        Ok(v1::LoginResponse {
            session: Some(to_proto_session(&session_id, &record)),
            session_token: Bytes::copy_from_slice(&token),
            heartbeat_interval_ms: u32::try_from(ms(self.inner.config.heartbeat_interval))
                .unwrap_or(u32::MAX),
        })
    }

    async fn heartbeat_one(
        &self,
        gateway_id: &str,
        hb: &v1::SessionHeartbeat,
    ) -> Result<u64, CheckpointError> {
        let Some(mut record) = self.load_session(&hb.session_token).await? else {
            return Err(CheckpointError::Expired(
                "the session has expired or ended: log in again".into(),
            ));
        };
        if record.gateway_id != gateway_id {
            return Err(CheckpointError::NotFound(
                "the session is attached to another gateway".into(),
            ));
        }
        let ttl = self.inner.config.session_ttl;
        record.expires_ms = now_ms() + ms(ttl);
        if hb.observed_address.is_some() {
            record.observed = addr_text(hb.observed_address.as_ref());
        }
        let session_id = session_id_of(&hb.session_token);
        self.save_session(&session_id, &record).await?;
        if !self
            .inner
            .store
            .touch_peer(&record.app_id, &record.peer, ttl)
            .await?
        {
            // presence lapsed (e.g. the store was restarted without its data): restore it
            let presence = PeerRecord {
                peer_id: record.peer.clone(),
                app_id: record.app_id.clone(),
                gateway_id: record.gateway_id.clone(),
                session_id: hex::encode(session_id),
                reflexive_addr: record.observed.clone(),
                nat_behaviour: None,
                online_since: std::time::SystemTime::now(),
                extension: Bytes::new(),
            };
            self.inner.store.put_peer(&presence, ttl).await?;
        }
        Ok(record.expires_ms)
    }

    /// Refreshes a batch of sessions; one result per session.
    pub async fn heartbeat(
        &self,
        req: v1::HeartbeatRequest,
    ) -> Result<v1::HeartbeatResponse, CheckpointError> {
        if req.sessions.len() > MAX_BATCH {
            return Err(CheckpointError::Invalid {
                field: "sessions",
                message: format!("at most {MAX_BATCH} per call"),
            });
        }
        let outcomes = futures::future::join_all(
            req.sessions
                .iter()
                .map(|hb| self.heartbeat_one(&req.gateway_id, hb)),
        )
        .await;
        let mut results = Vec::with_capacity(outcomes.len());
        for (hb, outcome) in req.sessions.iter().zip(outcomes) {
            results.push(match outcome {
                Ok(expires) => v1::HeartbeatResult {
                    session_token: hb.session_token.clone(),
                    error: None,
                    expires_at_unix_ms: expires,
                },
                // the store being down fails the whole call, so the gateway keeps its sessions
                Err(CheckpointError::Store(e)) => return Err(CheckpointError::Store(e)),
                Err(e) => v1::HeartbeatResult {
                    session_token: hb.session_token.clone(),
                    error: Some(e.detail()),
                    expires_at_unix_ms: 0,
                },
            });
        }
        metrics::counter!("qp_checkpoint_heartbeats_total").increment(results.len() as u64);
        Ok(v1::HeartbeatResponse { results })
    }

    /// Ends a session; the peer goes offline unless a newer session of it lives.
    pub async fn logout(
        &self,
        req: v1::LogoutRequest,
    ) -> Result<v1::LogoutResponse, CheckpointError> {
        let Some(record) = self.load_session(&req.session_token).await? else {
            return Ok(v1::LogoutResponse {
                peer_offline: false,
            });
        };
        let session_id = hex::encode(session_id_of(&req.session_token));
        self.end_session(&record, &session_id).await
    }

    async fn end_session(
        &self,
        record: &SessionRecord,
        session_id: &str,
    ) -> Result<v1::LogoutResponse, CheckpointError> {
        let store = &self.inner.store;
        store
            .delete_ephemeral(&format!("sess:{session_id}"))
            .await?;
        let current = store.get_peer(&record.app_id, &record.peer).await?;
        let peer_offline = match current {
            Some(p) if p.session_id == session_id => {
                store.remove_peer(&record.app_id, &record.peer).await?;
                self.publish_presence(&record.app_id, &record.peer, v1::Presence::Offline)
                    .await;
                true
            }
            Some(_) => false,
            None => true,
        };
        Ok(v1::LogoutResponse { peer_offline })
    }

    /// Checks a token.
    pub async fn validate_session(
        &self,
        req: v1::ValidateSessionRequest,
    ) -> Result<v1::ValidateSessionResponse, CheckpointError> {
        let record = self
            .load_session(&req.session_token)
            .await?
            .ok_or_else(|| CheckpointError::Unauthenticated("no such live session".into()))?;
        Ok(v1::ValidateSessionResponse {
            session: Some(to_proto_session(
                &session_id_of(&req.session_token),
                &record,
            )),
        })
    }

    /// Presence of peers of one application.
    pub async fn query_presence(
        &self,
        req: v1::QueryPresenceRequest,
    ) -> Result<v1::QueryPresenceResponse, CheckpointError> {
        let app_id = app_id_of(req.app_id.as_ref(), "app_id")?;
        if req.peers.len() > MAX_BATCH {
            return Err(CheckpointError::Invalid {
                field: "peers",
                message: format!("at most {MAX_BATCH} per call"),
            });
        }
        let mut states = Vec::with_capacity(req.peers.len());
        for peer in &req.peers {
            let hex_id = peer_hex(Some(peer), "peers")?;
            let record = self.inner.store.get_peer(&app_id, &hex_id).await?;
            states.push(v1::PresenceState {
                peer: Some(peer.clone()),
                presence: if record.is_some() {
                    v1::Presence::Online
                } else {
                    v1::Presence::Offline
                } as i32,
                since_unix_ms: record
                    .map(|r| crate::apps::unix_ms(r.online_since))
                    .unwrap_or(0),
            });
        }
        Ok(v1::QueryPresenceResponse { states })
    }

    /// Revokes an application and ends the sessions of its online peers.
    pub async fn revoke_application(
        &self,
        req: v1::RevokeApplicationRequest,
    ) -> Result<v1::RevokeApplicationResponse, CheckpointError> {
        let app_id = app_id_of(req.id.as_ref(), "id")?;
        let app = self.inner.apps.revoke(&app_id).await?;
        let mut ended = 0u64;
        let mut cursor = None;
        loop {
            let page = self
                .inner
                .store
                .list_peers(&app_id, quickp2p_store::PageRequest { cursor, limit: 500 })
                .await?;
            for peer in page.items {
                let _ = self
                    .inner
                    .store
                    .delete_ephemeral(&format!("sess:{}", peer.session_id))
                    .await?;
                if self.inner.store.remove_peer(&app_id, &peer.peer_id).await? {
                    ended += 1;
                    self.publish_presence(&app_id, &peer.peer_id, v1::Presence::Offline)
                        .await;
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        tracing::info!(app = %app_id, reason = %req.reason, sessions_ended = ended, "application revoked");
        Ok(v1::RevokeApplicationResponse {
            application: Some(app.to_proto()),
            sessions_ended: ended,
        })
    }
}

fn to_proto_session(session_id: &[u8; 16], r: &SessionRecord) -> v1::Session {
    v1::Session {
        session_id: Bytes::copy_from_slice(session_id),
        peer: r.peer.parse().ok(),
        app_id: Some(v1::AppId::new(r.app_id.clone())),
        gateway_id: r.gateway_id.clone(),
        observed_address: r
            .observed
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(Into::into),
        created_at_unix_ms: r.created_ms,
        expires_at_unix_ms: r.expires_ms,
        protocol_version: r.protocol_version,
        sdk: r.sdk.clone(),
    }
}

type RpcResult<T> = Result<Response<T>, Status>;

fn reply<T>(result: Result<T, CheckpointError>) -> RpcResult<T> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl CheckpointRpc for CheckpointService {
    async fn issue_challenge(
        &self,
        request: Request<v1::IssueChallengeRequest>,
    ) -> RpcResult<v1::IssueChallengeResponse> {
        reply(CheckpointService::issue_challenge(self, request.into_inner()).await)
    }

    async fn login(&self, request: Request<v1::LoginRequest>) -> RpcResult<v1::LoginResponse> {
        reply(CheckpointService::login(self, request.into_inner()).await)
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> RpcResult<v1::HeartbeatResponse> {
        reply(CheckpointService::heartbeat(self, request.into_inner()).await)
    }

    async fn logout(&self, request: Request<v1::LogoutRequest>) -> RpcResult<v1::LogoutResponse> {
        reply(CheckpointService::logout(self, request.into_inner()).await)
    }

    async fn validate_session(
        &self,
        request: Request<v1::ValidateSessionRequest>,
    ) -> RpcResult<v1::ValidateSessionResponse> {
        reply(CheckpointService::validate_session(self, request.into_inner()).await)
    }

    async fn query_presence(
        &self,
        request: Request<v1::QueryPresenceRequest>,
    ) -> RpcResult<v1::QueryPresenceResponse> {
        reply(CheckpointService::query_presence(self, request.into_inner()).await)
    }

    async fn create_application(
        &self,
        request: Request<v1::CreateApplicationRequest>,
    ) -> RpcResult<v1::CreateApplicationResponse> {
        let req = request.into_inner();
        let id = req.id.map(|a| a.value).unwrap_or_default();
        reply(
            self.apps()
                .create(&id, &req.display_name, &req.secret_label)
                .await
                .map(|(app, secret)| v1::CreateApplicationResponse {
                    application: Some(app.to_proto()),
                    secret: Some(secret),
                }),
        )
    }

    async fn list_applications(
        &self,
        request: Request<v1::ListApplicationsRequest>,
    ) -> RpcResult<v1::ListApplicationsResponse> {
        let req = request.into_inner();
        let page = req.page.unwrap_or_default();
        reply(
            self.apps()
                .list(Some(page.cursor), page.limit, req.include_revoked)
                .await
                .map(|(apps, next)| v1::ListApplicationsResponse {
                    applications: apps.iter().map(|a| a.to_proto()).collect(),
                    next_page: Some(v1::NextPage {
                        cursor: next.unwrap_or_default(),
                    }),
                }),
        )
    }

    async fn get_application(
        &self,
        request: Request<v1::GetApplicationRequest>,
    ) -> RpcResult<v1::GetApplicationResponse> {
        let id = request.into_inner().id.map(|a| a.value).unwrap_or_default();
        let result = match self.apps().get(&id).await {
            Ok(Some(app)) => Ok(v1::GetApplicationResponse {
                application: Some(app.to_proto()),
            }),
            Ok(None) => Err(CheckpointError::NotFound(format!("no application {id:?}"))),
            Err(e) => Err(e),
        };
        reply(result)
    }

    async fn revoke_application(
        &self,
        request: Request<v1::RevokeApplicationRequest>,
    ) -> RpcResult<v1::RevokeApplicationResponse> {
        reply(CheckpointService::revoke_application(self, request.into_inner()).await)
    }

    async fn create_app_secret(
        &self,
        request: Request<v1::CreateAppSecretRequest>,
    ) -> RpcResult<v1::CreateAppSecretResponse> {
        let req = request.into_inner();
        let id = req.id.map(|a| a.value).unwrap_or_default();
        reply(
            self.apps()
                .create_secret(&id, &req.label)
                .await
                .map(|secret| v1::CreateAppSecretResponse {
                    secret: Some(secret),
                }),
        )
    }

    async fn revoke_app_secret(
        &self,
        request: Request<v1::RevokeAppSecretRequest>,
    ) -> RpcResult<v1::RevokeAppSecretResponse> {
        let req = request.into_inner();
        let id = req.id.map(|a| a.value).unwrap_or_default();
        reply(
            self.apps()
                .revoke_secret(&id, &req.secret_id)
                .await
                .map(|app| v1::RevokeAppSecretResponse {
                    application: Some(app.to_proto()),
                }),
        )
    }
}
