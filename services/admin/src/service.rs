//! The `quickp2p.v1.Admin` rpcs. Each handler first checks the caller's token
//! ([`Tokens::authorize`]); write handlers then record an audit event with the outcome, whether
//! the action succeeded or not.
//!
//! Reaching peers: a peer's gateway is its route in the store (or, failing that, the gateway in
//! its presence record); the gateway replica's `Deliver` URL is the `advertised_addr` of its
//! registry record (role `gateway`). Broadcasts fan out to every registered gateway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt as _;
use quickp2p_checkpoint::apps::{now_ms, random_bytes, validate_app_id};
use quickp2p_checkpoint::{CheckpointService, SessionRecord};
use quickp2p_proto::v1::{
    self, admin_server::Admin, deliver_client::DeliverClient, index_client::IndexClient,
};
use quickp2p_store::{AttributeQuery, Cursor, PageRequest, PeerRecord, Store};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::audit::{AuditFilter, AuditLog, truncate};
use crate::error::AdminError;
use crate::stats::{self, all_app_ids};
use crate::tokens::{Access, Caller, Tokens};
use crate::{BindError, CALL_TIMEOUT, Config};

/// Largest broadcast payload, in bytes.
pub const MAX_BROADCAST_BYTES: usize = 61_440;
/// Longest kick message, in bytes.
pub const MAX_KICK_MESSAGE: usize = 1024;
/// Most peers a revocation kicks at once; the others learn at their next heartbeat (their
/// sessions were ended by the checkpoint).
pub const MAX_REVOKE_KICKS: usize = 100_000;
/// How many kicks run concurrently during a revocation.
const REVOKE_CONCURRENCY: usize = 32;
/// How many statistics snapshots (the heaviest read: every application, up to
/// [`stats::MAX_NAT_SCAN`] peers) are computed at once per admin replica; more callers wait.
pub const STATS_CONCURRENCY: usize = 2;

/// The Admin service (clone-cheap).
#[derive(Debug, Clone)]
pub struct AdminService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    tokens: Tokens,
    audit: AuditLog,
    checkpoint: CheckpointService,
    index: Option<IndexClient<Channel>>,
    replica_id: String,
    deliver: Mutex<HashMap<String, DeliverClient<Channel>>>,
    stats_permits: tokio::sync::Semaphore,
}

type RpcResult<T> = Result<Response<T>, Status>;

fn channel(url: &str) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|e| e.to_string())?
        .connect_timeout(std::time::Duration::from_secs(1))
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy())
}

fn app_of(app: Option<&v1::AppId>, field: &'static str) -> Result<String, AdminError> {
    let id = app.map(|a| a.value.clone()).unwrap_or_default();
    validate_app_id(&id).map_err(|_| {
        AdminError::invalid(
            field,
            format!("{id:?} is not an application id (1 to 64 of a-z, 0-9, '-')"),
        )
    })?;
    Ok(id)
}

fn peer_of(peer: Option<&v1::PeerId>, field: &'static str) -> Result<String, AdminError> {
    match peer {
        Some(p) if p.is_valid() => Ok(p.to_string()),
        _ => Err(AdminError::invalid(field, "a peer id is 32 bytes")),
    }
}

fn page_limit(page: &v1::Page) -> usize {
    match page.limit {
        0 => 100,
        n => n.min(1000) as usize,
    }
}

fn next_page(cursor: Option<String>) -> Option<v1::NextPage> {
    Some(v1::NextPage {
        cursor: cursor.unwrap_or_default(),
    })
}

impl AdminService {
    /// The service over `store` with `config`'s tokens and index URL.
    pub fn new(store: Store, config: &Config) -> Result<AdminService, BindError> {
        let index = match &config.index_url {
            Some(url) => Some(IndexClient::new(channel(url).map_err(|message| {
                BindError::IndexUrl {
                    url: url.clone(),
                    message,
                }
            })?)),
            None => None,
        };
        Ok(AdminService {
            inner: Arc::new(Inner {
                audit: AuditLog::new(store.clone()),
                checkpoint: CheckpointService::new(
                    store.clone(),
                    quickp2p_checkpoint::Config::default(),
                ),
                store,
                tokens: config.tokens.clone(),
                index,
                replica_id: config.replica_id.clone(),
                deliver: Mutex::new(HashMap::new()),
                stats_permits: tokio::sync::Semaphore::new(STATS_CONCURRENCY),
            }),
        })
    }

    fn read<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.inner
            .tokens
            .authorize(request.metadata(), Access::Read)
            .map_err(Status::from)
    }

    /// Checks a write; a read-only token's attempt is audited as refused.
    async fn write<T>(
        &self,
        request: &Request<T>,
        action: &str,
        target: &str,
    ) -> Result<Caller, Status> {
        match self
            .inner
            .tokens
            .authorize(request.metadata(), Access::Write)
        {
            Ok(caller) => Ok(caller),
            Err(AdminError::PermissionDenied { caller, message }) => {
                let _ = self
                    .inner
                    .audit
                    .append(
                        &caller,
                        action,
                        target,
                        false,
                        "refused: read-only token".into(),
                    )
                    .await;
                Err(AdminError::PermissionDenied { caller, message }.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records the outcome of a write and returns it as the rpc's result.
    async fn audited<T>(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        detail: String,
        result: Result<T, AdminError>,
    ) -> RpcResult<T> {
        let (success, detail) = match &result {
            Ok(_) => (true, detail),
            Err(e) => (false, format!("{detail}; error: {e}")),
        };
        if let Err(e) = self
            .inner
            .audit
            .append(&caller.name, action, target, success, detail)
            .await
        {
            // the action happened; failing the rpc now would invite a retry of it
            tracing::error!(error = %e, action, target, "audit event not recorded");
        }
        result.map(Response::new).map_err(Status::from)
    }

    // ------------------------------------------------------------------------------ peers

    async fn overview(&self, rec: &PeerRecord) -> Result<v1::PeerOverview, AdminError> {
        let store = &self.inner.store;
        let session = match store
            .get_ephemeral(&format!("sess:{}", rec.session_id))
            .await?
        {
            Some(raw) => serde_json::from_slice::<SessionRecord>(&raw).ok(),
            None => None,
        };
        let session = Some(v1::Session {
            session_id: hex::decode(&rec.session_id)
                .map(Bytes::from)
                .unwrap_or_default(),
            peer: rec.peer_id.parse().ok(),
            app_id: Some(v1::AppId::new(rec.app_id.clone())),
            gateway_id: rec.gateway_id.clone(),
            observed_address: rec
                .reflexive_addr
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(Into::into),
            created_at_unix_ms: session.as_ref().map_or_else(
                || quickp2p_checkpoint::apps::unix_ms(rec.online_since),
                |s| s.created_ms,
            ),
            expires_at_unix_ms: session.as_ref().map_or(0, |s| s.expires_ms),
            protocol_version: session.as_ref().map_or(0, |s| s.protocol_version),
            sdk: session.map(|s| s.sdk).unwrap_or_default(),
        });
        let nat = stats::nat_report(store, &rec.app_id, &rec.peer_id)
            .await?
            .and_then(|r| r.behaviour);
        Ok(v1::PeerOverview {
            peer: rec.peer_id.parse().ok(),
            app_id: Some(v1::AppId::new(rec.app_id.clone())),
            presence: v1::Presence::Online as i32,
            session,
            nat,
        })
    }

    async fn list_peers_impl(
        &self,
        req: v1::ListPeersRequest,
    ) -> Result<v1::ListPeersResponse, AdminError> {
        let search = req.search.unwrap_or_default();
        let page = req.page.unwrap_or_default();
        let limit = page_limit(&page);
        let prefix = search.peer_id_prefix.to_ascii_lowercase();
        if prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AdminError::invalid(
                "search.peer_id_prefix",
                "0 to 64 hexadecimal digits",
            ));
        }
        let apps = match search.app_id.as_ref().filter(|a| !a.value.is_empty()) {
            Some(a) => vec![app_of(Some(a), "search.app_id")?],
            None => all_app_ids(&self.inner.store).await?,
        };
        // cursor: "APP/STORE_CURSOR" (store cursor empty = the start of APP)
        let (mut app_index, mut store_cursor) = if page.cursor.is_empty() {
            (0, None)
        } else {
            let (app, rest) = page.cursor.split_once('/').ok_or_else(|| {
                AdminError::invalid("page.cursor", "not a cursor of this listing")
            })?;
            // the first application at or after the cursor's (it may have been deleted)
            let index = apps.partition_point(|a| a.as_str() < app);
            let cursor = (apps.get(index).map(String::as_str) == Some(app) && !rest.is_empty())
                .then(|| Cursor::from(rest));
            (index, cursor)
        };
        let budget = limit * 4 + 256;
        let mut examined = 0;
        let mut peers = Vec::new();
        // store calls per page: each is bounded, and pages of expired peers may come back empty
        let mut calls = 0;
        while app_index < apps.len() && peers.len() < limit && examined < budget && calls < 64 {
            calls += 1;
            let app = &apps[app_index];
            let want = u32::try_from(limit - peers.len())
                .unwrap_or(1000)
                .clamp(1, 1000);
            let found = self
                .inner
                .store
                .list_peers(
                    app,
                    PageRequest {
                        cursor: store_cursor.take(),
                        limit: want,
                    },
                )
                .await?;
            for rec in &found.items {
                examined += 1;
                if !rec.peer_id.starts_with(&prefix)
                    || (!search.gateway_id.is_empty() && rec.gateway_id != search.gateway_id)
                {
                    continue;
                }
                let overview = self.overview(rec).await?;
                if search.nat_mapping != 0
                    && overview.nat.as_ref().map_or(0, |n| n.mapping) != search.nat_mapping
                {
                    continue;
                }
                peers.push(overview);
            }
            match found.next {
                Some(next) => store_cursor = Some(next),
                None => app_index += 1,
            }
        }
        let cursor = apps.get(app_index).map(|app| {
            format!(
                "{app}/{}",
                store_cursor.map(Cursor::into_string).unwrap_or_default()
            )
        });
        Ok(v1::ListPeersResponse {
            peers,
            next_page: next_page(cursor),
        })
    }

    async fn get_peer_impl(
        &self,
        req: v1::GetPeerRequest,
    ) -> Result<v1::GetPeerResponse, AdminError> {
        let app = app_of(req.app_id.as_ref(), "app_id")?;
        let peer = peer_of(req.peer.as_ref(), "peer")?;
        let store = &self.inner.store;
        let Some(rec) = store.get_peer(&app, &peer).await? else {
            return Err(AdminError::NotFound(format!(
                "peer {peer} of application {app:?} is not online"
            )));
        };
        let overview = self.overview(&rec).await?;
        let nat_report = stats::nat_report(store, &app, &peer).await?;
        let record = store.get_published(&app, &peer).await?.and_then(|p| {
            (p.updated_at.is_some() || !p.attributes.is_empty()).then(|| v1::IndexRecord {
                app_id: Some(v1::AppId::new(app.clone())),
                peer: req.peer.clone(),
                attributes: p
                    .attributes
                    .into_iter()
                    .map(|(key, value)| v1::Attribute { key, value })
                    .collect(),
                updated_at_unix_ms: p.updated_at.map_or(0, quickp2p_checkpoint::apps::unix_ms),
            })
        });
        Ok(v1::GetPeerResponse {
            overview: Some(overview),
            nat_report,
            record,
        })
    }

    async fn query_index_impl(
        &self,
        req: v1::IndexQueryRequest,
    ) -> Result<v1::IndexQueryResponse, AdminError> {
        let app = app_of(req.app_id.as_ref(), "app_id")?;
        if let Some(index) = &self.inner.index {
            let mut client = index.clone();
            return match tokio::time::timeout(CALL_TIMEOUT, client.query(req)).await {
                Ok(Ok(response)) => Ok(response.into_inner()),
                Ok(Err(status)) => Err(AdminError::Upstream {
                    what: "index query".into(),
                    status,
                }),
                Err(_) => Err(AdminError::Upstream {
                    what: "index query".into(),
                    status: Status::deadline_exceeded("the index did not answer in time"),
                }),
            };
        }
        // no Index role configured: the same query straight on the store
        let filter = req.filter.unwrap_or_default();
        if filter.key.is_empty() || filter.key.len() > 64 {
            return Err(AdminError::invalid("filter.key", "1 to 64 bytes"));
        }
        if filter.value.len() > 1024 {
            return Err(AdminError::invalid("filter.value", "at most 1024 bytes"));
        }
        let query = match filter.mode() {
            v1::AttributeMatch::Equal => AttributeQuery::exact(filter.key, filter.value),
            v1::AttributeMatch::Prefix => AttributeQuery::prefix(filter.key, filter.value),
            v1::AttributeMatch::Unspecified => {
                return Err(AdminError::invalid("filter.mode", "EQUAL or PREFIX"));
            }
        };
        let page = req.page.unwrap_or_default();
        let found = self
            .inner
            .store
            .query_records(
                &app,
                &query,
                PageRequest {
                    cursor: (!page.cursor.is_empty()).then(|| Cursor::from(page.cursor.clone())),
                    limit: u32::try_from(page_limit(&page)).unwrap_or(100),
                },
            )
            .await?;
        Ok(v1::IndexQueryResponse {
            records: found
                .items
                .into_iter()
                .map(|r| v1::IndexRecord {
                    app_id: Some(v1::AppId::new(app.clone())),
                    peer: r.peer_id.parse().ok(),
                    attributes: r
                        .published
                        .attributes
                        .into_iter()
                        .map(|(key, value)| v1::Attribute { key, value })
                        .collect(),
                    updated_at_unix_ms: r
                        .published
                        .updated_at
                        .map_or(0, quickp2p_checkpoint::apps::unix_ms),
                })
                .collect(),
            next_page: next_page(found.next.map(Cursor::into_string)),
        })
    }

    // ------------------------------------------------------------------------------ gateways

    /// Registered gateways: replica id → Deliver URL.
    async fn gateways(&self) -> Result<Vec<(String, String)>, AdminError> {
        Ok(self
            .inner
            .store
            .list_replicas("gateway")
            .await?
            .into_iter()
            .map(|r| (r.replica_id, r.info.advertised_addr))
            .collect())
    }

    fn deliver_client(&self, url: &str) -> Result<DeliverClient<Channel>, AdminError> {
        let mut cache = self
            .inner
            .deliver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = cache.get(url) {
            return Ok(c.clone());
        }
        let client = DeliverClient::new(channel(url).map_err(|message| AdminError::Upstream {
            what: format!("gateway endpoint {url:?}"),
            status: Status::unavailable(message),
        })?);
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(url.to_owned(), client.clone());
        Ok(client)
    }

    /// The gateway holding the peer's session, if any.
    async fn gateway_of(&self, app: &str, peer: &str) -> Result<Option<String>, AdminError> {
        if let Some(gw) = self.inner.store.get_route(app, peer).await? {
            return Ok(Some(gw));
        }
        Ok(self
            .inner
            .store
            .get_peer(app, peer)
            .await?
            .map(|r| r.gateway_id))
    }

    /// Kicks one peer on `gateway`; whether it had a session there.
    async fn kick_on(
        &self,
        gateways: &[(String, String)],
        gateway: &str,
        app: &str,
        peer: v1::PeerId,
        kicked: v1::Kicked,
    ) -> Result<bool, AdminError> {
        let Some((_, url)) = gateways.iter().find(|(id, _)| id == gateway) else {
            return Ok(false);
        };
        let mut client = self.deliver_client(url)?;
        let call = client.kick(v1::DeliverKickRequest {
            app_id: Some(v1::AppId::new(app)),
            peer: Some(peer),
            kicked: Some(kicked),
        });
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(r)) => Ok(r.into_inner().was_attached),
            Ok(Err(status)) => Err(AdminError::Upstream {
                what: format!("kick on gateway {gateway}"),
                status,
            }),
            Err(_) => Err(AdminError::Upstream {
                what: format!("kick on gateway {gateway}"),
                status: Status::deadline_exceeded("the gateway did not answer in time"),
            }),
        }
    }

    async fn kick_impl(
        &self,
        req: v1::KickPeerRequest,
    ) -> Result<v1::KickPeerResponse, AdminError> {
        let app = app_of(req.app_id.as_ref(), "app_id")?;
        let peer = peer_of(req.peer.as_ref(), "peer")?;
        if req.message.len() > MAX_KICK_MESSAGE {
            return Err(AdminError::invalid(
                "message",
                format!("at most {MAX_KICK_MESSAGE} bytes"),
            ));
        }
        let Some(gateway) = self.gateway_of(&app, &peer).await? else {
            return Ok(v1::KickPeerResponse {
                was_online: false,
                gateway_id: String::new(),
            });
        };
        let gateways = self.gateways().await?;
        let kicked = v1::Kicked {
            reason: v1::KickReason::Admin as i32,
            message: req.message,
            reconnect_after_ms: req.reconnect_after_ms,
        };
        let peer_id = req.peer.unwrap_or_default();
        let was_online = self
            .kick_on(&gateways, &gateway, &app, peer_id, kicked)
            .await?;
        Ok(v1::KickPeerResponse {
            was_online,
            gateway_id: gateway,
        })
    }

    async fn broadcast_impl(
        &self,
        req: v1::BroadcastRequest,
    ) -> Result<v1::BroadcastResponse, AdminError> {
        let app = app_of(req.app_id.as_ref(), "app_id")?;
        if req.payload.len() > MAX_BROADCAST_BYTES {
            return Err(AdminError::invalid(
                "payload",
                format!("at most {MAX_BROADCAST_BYTES} bytes"),
            ));
        }
        if self.inner.checkpoint.apps().get(&app).await?.is_none() {
            return Err(AdminError::NotFound(format!("no application {app:?}")));
        }
        let broadcast_id = Bytes::copy_from_slice(&random_bytes::<16>());
        let event = v1::PeerEvent {
            event: Some(v1::peer_event::Event::Broadcast(v1::BroadcastMessage {
                broadcast_id: broadcast_id.clone(),
                payload: req.payload,
                sent_at_unix_ms: now_ms(),
            })),
        };
        let gateways = self.gateways().await?;
        let calls = gateways.iter().map(|(id, url)| {
            let request = v1::DeliverBroadcastRequest {
                app_id: Some(v1::AppId::new(app.clone())),
                event: Some(event.clone()),
                origin: self.inner.replica_id.clone(),
            };
            async move {
                let mut client = self.deliver_client(url).ok()?;
                match tokio::time::timeout(CALL_TIMEOUT, client.broadcast(request)).await {
                    Ok(Ok(r)) => Some(r.into_inner().accepted),
                    Ok(Err(status)) => {
                        tracing::warn!(gateway = %id, error = %status, "broadcast refused by a gateway");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(gateway = %id, "broadcast: the gateway did not answer in time");
                        None
                    }
                }
            }
        });
        let results = futures::future::join_all(calls).await;
        let answered: Vec<u64> = results.into_iter().flatten().collect();
        Ok(v1::BroadcastResponse {
            broadcast_id,
            gateways: u32::try_from(answered.len()).unwrap_or(u32::MAX),
            peers_reached: answered.iter().sum(),
        })
    }

    async fn revoke_impl(
        &self,
        req: v1::RevokeApplicationRequest,
    ) -> Result<v1::RevokeApplicationResponse, AdminError> {
        let app = app_of(req.id.as_ref(), "id")?;
        if req.reason.len() > 256 {
            return Err(AdminError::invalid("reason", "at most 256 bytes"));
        }
        // who to kick, gathered before the checkpoint removes their presence
        let mut targets = Vec::new();
        let mut cursor = None;
        while targets.len() < MAX_REVOKE_KICKS {
            let page = self
                .inner
                .store
                .list_peers(
                    &app,
                    PageRequest {
                        cursor,
                        limit: 1000,
                    },
                )
                .await?;
            for rec in page.items {
                let gateway = self
                    .inner
                    .store
                    .get_route(&app, &rec.peer_id)
                    .await?
                    .unwrap_or(rec.gateway_id);
                targets.push((rec.peer_id, gateway));
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let response = self
            .inner
            .checkpoint
            .revoke_application(req.clone())
            .await?;
        let gateways = self.gateways().await?;
        let kicked = v1::Kicked {
            reason: v1::KickReason::AppRevoked as i32,
            message: req.reason,
            reconnect_after_ms: 0,
        };
        let gateways = &gateways;
        let kicked = &kicked;
        let app = &app;
        let failures = futures::stream::iter(targets)
            .map(|(peer, gateway)| async move {
                let Ok(peer_id) = peer.parse::<v1::PeerId>() else {
                    return 1;
                };
                match self
                    .kick_on(gateways, &gateway, app, peer_id, kicked.clone())
                    .await
                {
                    Ok(_) => 0,
                    Err(e) => {
                        tracing::warn!(error = %e, peer = %peer, "revocation kick failed");
                        1
                    }
                }
            })
            .buffer_unordered(REVOKE_CONCURRENCY)
            .fold(0usize, |n, f| async move { n + f })
            .await;
        if failures > 0 {
            tracing::warn!(app = %app, failures, "some peers of a revoked application were not kicked (they learn at their next heartbeat)");
        }
        Ok(response)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_peers(
        &self,
        request: Request<v1::ListPeersRequest>,
    ) -> RpcResult<v1::ListPeersResponse> {
        self.read(&request)?;
        self.list_peers_impl(request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn get_peer(
        &self,
        request: Request<v1::GetPeerRequest>,
    ) -> RpcResult<v1::GetPeerResponse> {
        self.read(&request)?;
        self.get_peer_impl(request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn query_index(
        &self,
        request: Request<v1::IndexQueryRequest>,
    ) -> RpcResult<v1::IndexQueryResponse> {
        self.read(&request)?;
        self.query_index_impl(request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn get_network_stats(
        &self,
        request: Request<v1::GetNetworkStatsRequest>,
    ) -> RpcResult<v1::GetNetworkStatsResponse> {
        self.read(&request)?;
        let req = request.into_inner();
        let result = async {
            let app = match req.app_id.as_ref().filter(|a| !a.value.is_empty()) {
                Some(a) => Some(app_of(Some(a), "app_id")?),
                None => None,
            };
            // the semaphore is never closed
            let _permit = self.inner.stats_permits.acquire().await.ok();
            let stats = stats::network_stats(&self.inner.store, app.as_deref()).await?;
            Ok::<_, AdminError>(v1::GetNetworkStatsResponse { stats: Some(stats) })
        }
        .await;
        result.map(Response::new).map_err(Status::from)
    }

    async fn kick_peer(
        &self,
        request: Request<v1::KickPeerRequest>,
    ) -> RpcResult<v1::KickPeerResponse> {
        let req = request.get_ref();
        let target = format!(
            "{}/{}",
            req.app_id
                .as_ref()
                .map(|a| a.value.as_str())
                .unwrap_or_default(),
            req.peer
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        let caller = self.write(&request, "peer.kick", &target).await?;
        let detail = truncate(format!("message: {:?}", req.message), 512);
        let result = self.kick_impl(request.into_inner()).await;
        let detail = match &result {
            Ok(r) => format!(
                "{detail}; was_online: {}, gateway: {}",
                r.was_online, r.gateway_id
            ),
            Err(_) => detail,
        };
        self.audited(&caller, "peer.kick", &target, detail, result)
            .await
    }

    async fn broadcast(
        &self,
        request: Request<v1::BroadcastRequest>,
    ) -> RpcResult<v1::BroadcastResponse> {
        let target = request
            .get_ref()
            .app_id
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let caller = self.write(&request, "app.broadcast", &target).await?;
        let size = request.get_ref().payload.len();
        let result = self.broadcast_impl(request.into_inner()).await;
        let detail = match &result {
            Ok(r) => format!(
                "{size} bytes, id {}, {} gateways, {} peers",
                hex::encode(&r.broadcast_id),
                r.gateways,
                r.peers_reached
            ),
            Err(_) => format!("{size} bytes"),
        };
        self.audited(&caller, "app.broadcast", &target, detail, result)
            .await
    }

    async fn create_application(
        &self,
        request: Request<v1::CreateApplicationRequest>,
    ) -> RpcResult<v1::CreateApplicationResponse> {
        let wanted = request
            .get_ref()
            .id
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let caller = self.write(&request, "app.create", &wanted).await?;
        let req = request.into_inner();
        let result = self
            .inner
            .checkpoint
            .apps()
            .create(&wanted, &req.display_name, &req.secret_label)
            .await
            .map(|(app, secret)| v1::CreateApplicationResponse {
                application: Some(app.to_proto()),
                secret: Some(secret),
            })
            .map_err(AdminError::from);
        let target = match &result {
            Ok(r) => r
                .application
                .as_ref()
                .and_then(|a| a.id.as_ref())
                .map(|a| a.value.clone())
                .unwrap_or_default(),
            Err(_) => wanted,
        };
        let detail = truncate(format!("display name {:?}", req.display_name), 512);
        self.audited(&caller, "app.create", &target, detail, result)
            .await
    }

    async fn list_applications(
        &self,
        request: Request<v1::ListApplicationsRequest>,
    ) -> RpcResult<v1::ListApplicationsResponse> {
        self.read(&request)?;
        let req = request.into_inner();
        let page = req.page.unwrap_or_default();
        let limit = u32::try_from(page_limit(&page)).unwrap_or(100);
        self.inner
            .checkpoint
            .apps()
            .list(Some(page.cursor), limit, req.include_revoked)
            .await
            .map(|(apps, next)| {
                Response::new(v1::ListApplicationsResponse {
                    applications: apps.iter().map(|a| a.to_proto()).collect(),
                    next_page: next_page(next),
                })
            })
            .map_err(|e| AdminError::from(e).into())
    }

    async fn get_application(
        &self,
        request: Request<v1::GetApplicationRequest>,
    ) -> RpcResult<v1::GetApplicationResponse> {
        self.read(&request)?;
        let result = async {
            let id = app_of(request.get_ref().id.as_ref(), "id")?;
            match self.inner.checkpoint.apps().get(&id).await? {
                Some(app) => Ok(v1::GetApplicationResponse {
                    application: Some(app.to_proto()),
                }),
                None => Err(AdminError::NotFound(format!("no application {id:?}"))),
            }
        }
        .await;
        result.map(Response::new).map_err(Status::from)
    }

    async fn revoke_application(
        &self,
        request: Request<v1::RevokeApplicationRequest>,
    ) -> RpcResult<v1::RevokeApplicationResponse> {
        let target = request
            .get_ref()
            .id
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let caller = self.write(&request, "app.revoke", &target).await?;
        let reason = request.get_ref().reason.clone();
        let result = self.revoke_impl(request.into_inner()).await;
        let detail = match &result {
            Ok(r) => truncate(
                format!("reason {reason:?}; {} sessions ended", r.sessions_ended),
                1024,
            ),
            Err(_) => truncate(format!("reason {reason:?}"), 512),
        };
        self.audited(&caller, "app.revoke", &target, detail, result)
            .await
    }

    async fn create_app_secret(
        &self,
        request: Request<v1::CreateAppSecretRequest>,
    ) -> RpcResult<v1::CreateAppSecretResponse> {
        let target = request
            .get_ref()
            .id
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let caller = self.write(&request, "app_secret.create", &target).await?;
        let req = request.into_inner();
        let result = async {
            let id = app_of(req.id.as_ref(), "id")?;
            let secret = self
                .inner
                .checkpoint
                .apps()
                .create_secret(&id, &req.label)
                .await?;
            Ok(v1::CreateAppSecretResponse {
                secret: Some(secret),
            })
        }
        .await;
        let detail = match &result {
            Ok(r) => format!(
                "secret {}",
                r.secret
                    .as_ref()
                    .map(|s| s.secret_id.as_str())
                    .unwrap_or_default()
            ),
            Err(_) => String::new(),
        };
        self.audited(&caller, "app_secret.create", &target, detail, result)
            .await
    }

    async fn revoke_app_secret(
        &self,
        request: Request<v1::RevokeAppSecretRequest>,
    ) -> RpcResult<v1::RevokeAppSecretResponse> {
        let target = request
            .get_ref()
            .id
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let caller = self.write(&request, "app_secret.revoke", &target).await?;
        let req = request.into_inner();
        let detail = truncate(format!("secret {:?}", req.secret_id), 256);
        let result = async {
            let id = app_of(req.id.as_ref(), "id")?;
            let app = self
                .inner
                .checkpoint
                .apps()
                .revoke_secret(&id, &req.secret_id)
                .await?;
            Ok(v1::RevokeAppSecretResponse {
                application: Some(app.to_proto()),
            })
        }
        .await;
        self.audited(&caller, "app_secret.revoke", &target, detail, result)
            .await
    }

    async fn list_audit_events(
        &self,
        request: Request<v1::ListAuditEventsRequest>,
    ) -> RpcResult<v1::ListAuditEventsResponse> {
        self.read(&request)?;
        let req = request.into_inner();
        let page = req.page.unwrap_or_default();
        let filter = AuditFilter {
            since_unix_ms: req.since_unix_ms,
            until_unix_ms: req.until_unix_ms,
            actor: req.actor,
            action_prefix: req.action_prefix,
        };
        let (events, next) = self
            .inner
            .audit
            .list(&page.cursor, page_limit(&page), &filter)
            .await?;
        Ok(Response::new(v1::ListAuditEventsResponse {
            events,
            next_page: Some(v1::NextPage { cursor: next }),
        }))
    }
}
