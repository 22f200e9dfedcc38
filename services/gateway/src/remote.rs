//! What the gateway calls: the checkpoint (gRPC, with trace context) and the Deliver service of
//! other gateway replicas (found through the route peer → gateway and the replica registry).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quickp2p_proto::v1::{
    self, checkpoint_client::CheckpointClient, deliver_client::DeliverClient,
};
use quickp2p_service_kit::telemetry::inject_trace_context;
use quickp2p_store::Store;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A gRPC client that adds the W3C trace context of the current span to every call.
pub type Traced = InterceptedService<
    Channel,
    fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
>;

/// The replica registry role of gateways.
pub const GATEWAY_ROLE: &str = "gateway";

/// How long a gRPC call to another service may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a remote endpoint cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid endpoint {url:?}: {source}")]
pub struct EndpointError {
    url: String,
    source: tonic::transport::Error,
}

fn channel(url: &str) -> Result<Channel, EndpointError> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|source| EndpointError {
            url: url.to_owned(),
            source,
        })?
        .connect_timeout(Duration::from_secs(1))
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// A checkpoint client.
pub fn checkpoint(url: &str) -> Result<CheckpointClient<Traced>, EndpointError> {
    Ok(CheckpointClient::with_interceptor(
        channel(url)?,
        inject_trace_context as fn(_) -> _,
    ))
}

/// Finds other gateways' Deliver endpoints and keeps one client per endpoint.
#[derive(Debug)]
pub struct Peers {
    store: Store,
    cache: Mutex<PeerCache>,
}

#[derive(Debug, Default)]
struct PeerCache {
    endpoints: HashMap<String, String>,
    refreshed: Option<Instant>,
    clients: HashMap<String, DeliverClient<Traced>>,
}

/// How long the replica list is trusted before it is read again.
const REPLICA_CACHE: Duration = Duration::from_secs(2);

impl Peers {
    /// Lookups through `store`.
    pub fn new(store: Store) -> Peers {
        Peers {
            store,
            cache: Mutex::new(PeerCache::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PeerCache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The Deliver client of gateway `gateway_id`, if it is registered.
    pub async fn client(
        &self,
        gateway_id: &str,
    ) -> Result<Option<DeliverClient<Traced>>, quickp2p_store::StoreError> {
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
        match channel(&url) {
            Ok(ch) => {
                let client =
                    DeliverClient::with_interceptor(ch, inject_trace_context as fn(_) -> _);
                cache.clients.insert(url, client.clone());
                Ok(Some(client))
            }
            Err(e) => {
                tracing::warn!(error = %e, gateway = gateway_id, "unusable Deliver endpoint");
                Ok(None)
            }
        }
    }

    /// Forgets a gateway's endpoint after a failed call (it may have restarted elsewhere).
    pub fn forget(&self, gateway_id: &str) {
        let mut cache = self.lock();
        if let Some(url) = cache.endpoints.remove(gateway_id) {
            cache.clients.remove(&url);
        }
        cache.refreshed = None;
    }
}

/// The encoded `GatewayFrame` carrying `event`, stamped with the current time.
pub fn event_frame(event: v1::PeerEvent) -> bytes::Bytes {
    crate::frame_bytes(&v1::GatewayFrame {
        server_time_us: crate::now_us(),
        frame: Some(v1::gateway_frame::Frame::Event(event)),
    })
}
