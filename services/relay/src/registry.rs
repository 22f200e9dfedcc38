//! The replica registry: each relay replica keeps a record of itself in the shared store under
//! role [`REGISTRY_ROLE`] with a TTL, refreshed every third of it (and at once when draining
//! changes), so the handshake service can pick the least-loaded relay that is not draining.
//!
//! The record is a [`ReplicaInfo`]: `advertised_addr` = the TURN address clients use
//! (`IP:PORT`), `load` = live allocations, and `metadata`:
//!
//! | key | value |
//! |---|---|
//! | `realm` | the TURN realm |
//! | `allocations` | live allocations |
//! | `capacity` | most allocations accepted |
//! | `draining` | `true` or `false` |
//! | `control` | the gRPC control address (`IP:PORT`) |
//! | `refreshed_at_unix_ms` | when it was written |
//!
//! [`registration_from_replica`] reads a record back as the protobuf `RelayRegistration`.
//! Store failures are logged and retried at the next tick; the record is removed on shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quickp2p_proto::v1::RelayRegistration;
use quickp2p_service_kit::Shutdown;
use quickp2p_store::{Replica, ReplicaInfo, Store};
use tokio::sync::Notify;

use crate::core::RelayState;

/// The role name relay replicas register under.
pub const REGISTRY_ROLE: &str = "relay";

/// The record this replica writes now.
pub fn replica_info(
    state: &RelayState,
    advertised: SocketAddr,
    control: SocketAddr,
) -> ReplicaInfo {
    let config = state.config();
    let allocations = state.allocations();
    let mut metadata = BTreeMap::new();
    metadata.insert("realm".to_owned(), config.realm.clone());
    metadata.insert("allocations".to_owned(), allocations.to_string());
    metadata.insert("capacity".to_owned(), config.capacity.to_string());
    metadata.insert("draining".to_owned(), state.is_draining().to_string());
    metadata.insert("control".to_owned(), control.to_string());
    metadata.insert(
        "refreshed_at_unix_ms".to_owned(),
        state.clock().unix_ms(std::time::Instant::now()).to_string(),
    );
    ReplicaInfo {
        advertised_addr: advertised.to_string(),
        load: allocations as u64,
        metadata,
    }
}

/// A registry record as the protobuf `RelayRegistration`; `None` when its address is not
/// `IP:PORT`.
pub fn registration_from_replica(replica: &Replica) -> Option<RelayRegistration> {
    let server: SocketAddr = replica.info.advertised_addr.parse().ok()?;
    let meta = |key: &str| replica.info.metadata.get(key).map(String::as_str);
    Some(RelayRegistration {
        relay_id: replica.replica_id.clone(),
        servers: vec![server.into()],
        realm: meta("realm").unwrap_or_default().to_owned(),
        allocations: u32::try_from(replica.info.load).unwrap_or(u32::MAX),
        capacity: meta("capacity").and_then(|c| c.parse().ok()).unwrap_or(0),
        draining: meta("draining") == Some("true"),
        refreshed_at_unix_ms: meta("refreshed_at_unix_ms")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
    })
}

/// Keeps the registration fresh until `stop`, then removes it.
pub(crate) async fn maintain(
    state: Arc<RelayState>,
    store: Store,
    advertised: SocketAddr,
    control: SocketAddr,
    wake: Arc<Notify>,
    stop: Shutdown,
) {
    let config = state.config();
    let ttl = config.registry_ttl;
    let id = config.relay_id.clone();
    let period = (ttl / 3).max(Duration::from_secs(1));
    let mut failing = false;
    loop {
        let info = replica_info(&state, advertised, control);
        match tokio::time::timeout(
            period,
            store.register_replica(REGISTRY_ROLE, &id, &info, ttl),
        )
        .await
        {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!("relay registration restored");
                }
                failing = false;
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot register the relay in the store; retrying");
                }
                failing = true;
            }
            Err(_) => {
                if !failing {
                    tracing::warn!("the store did not answer the relay registration; retrying");
                }
                failing = true;
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = wake.notified() => {}
            () = tokio::time::sleep(period) => {}
        }
    }
    let removed = tokio::time::timeout(
        Duration::from_secs(2),
        store.deregister_replica(REGISTRY_ROLE, &id),
    )
    .await;
    if !matches!(removed, Ok(Ok(_))) {
        tracing::debug!("relay registration not removed; it expires with its TTL");
    }
}
