//! Pushing events to peers: find the peer's gateway through the route peer → gateway in the
//! store and the gateway replica registry (role `gateway`, advertised address = its Deliver
//! URL), then call that gateway's `Deliver` service (gRPC, with W3C trace context). Clients are
//! kept per URL; the replica list is re-read at most every 2 s, and at once after a failure.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quickp2p_proto::v1::{self, deliver_client::DeliverClient};
use quickp2p_service_kit::telemetry::inject_trace_context;
use quickp2p_store::Store;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::HandshakeError;

/// The replica registry role of gateways.
pub const GATEWAY_ROLE: &str = "gateway";
/// How long one Deliver call may take.
pub const DELIVER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the replica list is trusted before it is read again.
const REPLICA_CACHE: Duration = Duration::from_secs(2);

type Traced = InterceptedService<
    Channel,
    fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
>;

/// Delivers events to peers through their gateways.
#[derive(Debug)]
pub struct Gateways {
    store: Store,
    origin: String,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    endpoints: HashMap<String, String>,
    refreshed: Option<Instant>,
    clients: HashMap<String, DeliverClient<Traced>>,
}

impl Gateways {
    /// Lookups through `store`; `origin` names this replica in Deliver requests.
    pub fn new(store: Store, origin: impl Into<String>) -> Gateways {
        Gateways {
            store,
            origin: origin.into(),
            cache: Mutex::new(Cache::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn client(
        &self,
        gateway_id: &str,
    ) -> Result<Option<DeliverClient<Traced>>, HandshakeError> {
        let fresh = {
            let cache = self.lock();
            if let Some(url) = cache.endpoints.get(gateway_id)
                && let Some(client) = cache.clients.get(url)
            {
                return Ok(Some(client.clone()));
            }
            cache.refreshed.is_some_and(|t| t.elapsed() < REPLICA_CACHE)
        };
        if !fresh {
            let replicas = self.store.list_replicas(GATEWAY_ROLE).await?;
            let mut cache = self.lock();
            cache.endpoints = replicas
                .into_iter()
                .map(|r| (r.replica_id, r.info.advertised_addr))
                .collect();
            cache.refreshed = Some(Instant::now());
        }
        let mut cache = self.lock();
        let Some(url) = cache.endpoints.get(gateway_id).cloned() else {
            return Ok(None);
        };
        if let Some(client) = cache.clients.get(&url) {
            return Ok(Some(client.clone()));
        }
        let endpoint = match Endpoint::from_shared(url.clone()) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, gateway = gateway_id, %url, "unusable Deliver endpoint");
                return Ok(None);
            }
        };
        let channel = endpoint
            .connect_timeout(Duration::from_secs(1))
            .timeout(DELIVER_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        let client = DeliverClient::with_interceptor(channel, inject_trace_context as fn(_) -> _);
        cache.clients.insert(url, client.clone());
        Ok(Some(client))
    }

    fn forget(&self, gateway_id: &str) {
        let mut cache = self.lock();
        if let Some(url) = cache.endpoints.remove(gateway_id) {
            cache.clients.remove(&url);
        }
        cache.refreshed = None;
    }

    /// Queues `event` to `peer` of `app` on the gateway holding its session.
    /// `NOT_ATTACHED` when the peer has no route or its gateway is unknown or does not hold it.
    pub async fn deliver(
        &self,
        app: &str,
        peer: &v1::PeerId,
        event: v1::PeerEvent,
    ) -> Result<v1::DeliveryStatus, HandshakeError> {
        let Some(gateway) = self.store.get_route(app, &peer.to_string()).await? else {
            return Ok(v1::DeliveryStatus::NotAttached);
        };
        let Some(client) = self.client(&gateway).await? else {
            return Ok(v1::DeliveryStatus::NotAttached);
        };
        let request = v1::DeliverRequest {
            app_id: Some(v1::AppId::new(app)),
            recipients: vec![peer.clone()],
            event: Some(event),
            origin: self.origin.clone(),
        };
        match client.clone().deliver(request).await {
            Ok(r) => Ok(r
                .into_inner()
                .results
                .first()
                .map_or(v1::DeliveryStatus::NotAttached, |r| r.status())),
            Err(status) => {
                self.forget(&gateway);
                tracing::warn!(%gateway, error = %status.message(), "Deliver failed");
                Err(HandshakeError::Unavailable(
                    "the peer's gateway did not answer".into(),
                ))
            }
        }
    }
}
