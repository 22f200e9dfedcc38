//! The gRPC control API of one relay replica (`quickp2p.v1.Relay`, see `relay.proto`):
//!
//! * `GetStats` — counters and state ([`RelayState`]);
//! * `ListAllocations` — the live allocations ordered by relayed address, paginated (the cursor
//!   is the last relayed address of the previous page), optionally of one peer;
//! * `Drain` — start or stop refusing new allocations (508); existing ones run until they expire
//!   or are released; the registry record is rewritten at once;
//! * `MintCredentials` — short-lived credentials for a peer ([`crate::credentials`]).
//!
//! Bad input is `INVALID_ARGUMENT`; every error becomes a `tonic::Status` through the service
//! kit's [`ServiceError`].

use std::net::SocketAddr;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quickp2p_proto::v1::{
    self, DrainRequest, DrainResponse, ListAllocationsRequest, ListAllocationsResponse,
    MintCredentialsRequest, MintCredentialsResponse, NextPage, RefusalCount, RelayGrant,
    RelayStats, RelayStatsRequest, RelayStatsResponse,
};
use quickp2p_service_kit::ServiceError;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::core::{AllocationInfo, RelayState};
use crate::counters::{Direction, Refusal};
use crate::credentials::{mint_credentials, parse_username};

/// Default and largest page of ListAllocations.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// The `quickp2p.v1.Relay` service of one replica.
#[derive(Debug, Clone)]
pub(crate) struct ControlService {
    pub(crate) state: Arc<RelayState>,
    pub(crate) advertised: SocketAddr,
    pub(crate) registry_wake: Arc<Notify>,
}

/// The stats message of `state`.
pub fn stats(state: &RelayState, advertised: SocketAddr) -> RelayStats {
    let config = state.config();
    let counters = state.counters();
    let (packets_to_peers, bytes_to_peers) = counters.relayed_totals(Direction::ToPeer);
    let (packets_to_clients, bytes_to_clients) = counters.relayed_totals(Direction::ToClient);
    RelayStats {
        relay_id: config.relay_id.clone(),
        allocations: u32::try_from(state.allocations()).unwrap_or(u32::MAX),
        capacity: config.capacity,
        draining: state.is_draining(),
        bytes_to_peers,
        bytes_to_clients,
        packets_to_peers,
        packets_to_clients,
        allocations_created: counters.created(),
        refusals: Refusal::ALL
            .iter()
            .map(|r| RefusalCount {
                reason: r.as_str().to_owned(),
                count: counters.refusals(*r),
            })
            .filter(|r| r.count > 0)
            .collect(),
        servers: vec![advertised.into()],
    }
}

fn allocation_to_proto(info: &AllocationInfo, now: Instant) -> v1::RelayAllocation {
    let (permissions, channels) = info.counts(now);
    let (to_peer_packets, to_peer_bytes) = info.to_peer.get();
    let (to_client_packets, to_client_bytes) = info.to_client.get();
    let peer = parse_username(&info.username)
        .ok()
        .and_then(|u| v1::PeerId::from_str(u.peer).ok());
    v1::RelayAllocation {
        client_address: Some(info.client.into()),
        relayed_address: Some(info.relayed.into()),
        username: info.username.to_string(),
        peer,
        created_at_unix_ms: info.created_unix_ms,
        expires_at_unix_ms: info.expires_unix_ms(),
        permissions: u32::try_from(permissions).unwrap_or(u32::MAX),
        channels: u32::try_from(channels).unwrap_or(u32::MAX),
        bytes_relayed: to_peer_bytes + to_client_bytes,
        packets_relayed: to_peer_packets + to_client_packets,
    }
}

impl ControlService {
    fn list(
        &self,
        request: ListAllocationsRequest,
    ) -> Result<ListAllocationsResponse, ServiceError> {
        let page = request.page.unwrap_or_default();
        let after = match page.cursor.as_str() {
            "" => None,
            c => Some(c.parse::<SocketAddr>().map_err(|_| {
                ServiceError::InvalidArgument(format!("cursor {c:?} is not one of ours"))
            })?),
        };
        let limit = match page.limit {
            0 => DEFAULT_PAGE,
            n => usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE),
        };
        let peer = match &request.peer {
            Some(p) if !p.is_valid() => {
                return Err(ServiceError::InvalidArgument(
                    "peer must be 32 bytes".into(),
                ));
            }
            Some(p) => Some(p.to_string()),
            None => None,
        };
        let items =
            self.state
                .list_allocations(after, limit + 1, |info| match &peer {
                    None => true,
                    Some(hex) => parse_username(&info.username)
                        .is_ok_and(|u| u.peer.eq_ignore_ascii_case(hex)),
                });
        let now = Instant::now();
        let more = items.len() > limit;
        let items: Vec<_> = items.into_iter().take(limit).collect();
        let cursor = if more {
            items
                .last()
                .map(|i| i.relayed.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListAllocationsResponse {
            allocations: items.iter().map(|i| allocation_to_proto(i, now)).collect(),
            next_page: Some(NextPage { cursor }),
        })
    }

    fn mint(
        &self,
        request: MintCredentialsRequest,
    ) -> Result<MintCredentialsResponse, ServiceError> {
        let config = self.state.config();
        let peer = request
            .peer
            .filter(v1::PeerId::is_valid)
            .ok_or_else(|| ServiceError::InvalidArgument("peer (32 bytes) is required".into()))?;
        let lifetime = match request.lifetime_s {
            0 => config.credential_ttl,
            s => Duration::from_secs(u64::from(s)),
        };
        if lifetime > config.credential_max_ttl {
            return Err(ServiceError::InvalidArgument(format!(
                "lifetime_s {} is above the maximum {}",
                lifetime.as_secs(),
                config.credential_max_ttl.as_secs()
            )));
        }
        let now_unix = self.state.clock().unix(Instant::now()).as_secs();
        let credentials = mint_credentials(
            config.shared_secret.as_bytes(),
            &peer.to_string(),
            lifetime,
            now_unix,
        )
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(MintCredentialsResponse {
            grant: Some(RelayGrant {
                relay_id: config.relay_id.clone(),
                servers: vec![self.advertised.into()],
                username: credentials.username,
                password: credentials.password,
                realm: config.realm.clone(),
                expires_at_unix_ms: credentials.expires_at_unix.saturating_mul(1000),
            }),
            default_lifetime_s: u32::try_from(config.credential_ttl.as_secs()).unwrap_or(u32::MAX),
            max_lifetime_s: u32::try_from(config.credential_max_ttl.as_secs()).unwrap_or(u32::MAX),
        })
    }
}

#[tonic::async_trait]
impl v1::relay_server::Relay for ControlService {
    async fn get_stats(
        &self,
        _request: Request<RelayStatsRequest>,
    ) -> Result<Response<RelayStatsResponse>, Status> {
        Ok(Response::new(RelayStatsResponse {
            stats: Some(stats(&self.state, self.advertised)),
        }))
    }

    async fn list_allocations(
        &self,
        request: Request<ListAllocationsRequest>,
    ) -> Result<Response<ListAllocationsResponse>, Status> {
        self.list(request.into_inner())
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn drain(
        &self,
        request: Request<DrainRequest>,
    ) -> Result<Response<DrainResponse>, Status> {
        let drain = request.into_inner().drain;
        if drain != self.state.is_draining() {
            tracing::info!(drain, "relay drain state changed");
        }
        self.state.set_draining(drain);
        self.registry_wake.notify_one();
        Ok(Response::new(DrainResponse {
            draining: self.state.is_draining(),
            allocations: u32::try_from(self.state.allocations()).unwrap_or(u32::MAX),
        }))
    }

    async fn mint_credentials(
        &self,
        request: Request<MintCredentialsRequest>,
    ) -> Result<Response<MintCredentialsResponse>, Status> {
        self.mint(request.into_inner())
            .map(Response::new)
            .map_err(Status::from)
    }
}
