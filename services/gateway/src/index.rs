//! The gateway's side of the index role: peers' `PublishAttributes`, `UnpublishAttributes`,
//! `LookupPeer` and `QueryPeers` requests, answered through the Index service.
//!
//! Every call carries the session's own application and (for writes) the session's own peer id,
//! never values from the request, so a peer can only change its own record and only ever sees
//! its own application. With `QP_GATEWAY_INDEX_URL` set the gateway calls that Index replica over
//! gRPC (with trace context); unset, it runs the same index code in process over its own store
//! connection ([`IndexBackend::Local`]), so a lone gateway still serves the whole peer protocol.
//! Errors reach the peer with the index's exact code, field and limit.

use quickp2p_index::{AttributeLimits, IndexError, IndexService};
use quickp2p_proto::v1::{self, ErrorDetail, index_client::IndexClient};
use quickp2p_store::Store;

use std::time::Duration;

use quickp2p_service_kit::telemetry::inject_trace_context;
use tonic::transport::Endpoint;

use crate::remote::{CALL_TIMEOUT, Traced};

/// Why the index URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid index URL {url:?} (QP_GATEWAY_INDEX_URL): {source}")]
pub struct IndexUrlError {
    url: String,
    source: tonic::transport::Error,
}

/// Where index requests go.
#[derive(Debug, Clone)]
pub(crate) enum IndexBackend {
    /// An Index replica (or a load-balanced Service of them) over gRPC.
    Remote(IndexClient<Traced>),
    /// The index code in this process, over the gateway's store.
    Local(IndexService),
}

impl IndexBackend {
    /// The backend for `url` (`None`: in process over `store`).
    pub(crate) fn new(url: Option<&str>, store: Store) -> Result<IndexBackend, IndexUrlError> {
        Ok(match url {
            Some(url) => {
                let channel = Endpoint::from_shared(url.to_owned())
                    .map_err(|source| IndexUrlError {
                        url: url.to_owned(),
                        source,
                    })?
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(CALL_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy();
                IndexBackend::Remote(IndexClient::with_interceptor(
                    channel,
                    inject_trace_context as fn(_) -> _,
                ))
            }
            None => IndexBackend::Local(IndexService::new(store, AttributeLimits::default())),
        })
    }

    async fn publish(&self, req: v1::IndexPublishRequest) -> Result<v1::IndexRecord, ErrorDetail> {
        let response = match self {
            IndexBackend::Remote(c) => c.clone().publish(req).await.map(|r| r.into_inner()),
            IndexBackend::Local(s) => {
                return local(s.publish(req).await).map(|r| r.record.unwrap_or_default());
            }
        };
        remote(response).map(|r| r.record.unwrap_or_default())
    }

    async fn unpublish(
        &self,
        req: v1::IndexUnpublishRequest,
    ) -> Result<v1::IndexRecord, ErrorDetail> {
        let response = match self {
            IndexBackend::Remote(c) => c.clone().unpublish(req).await.map(|r| r.into_inner()),
            IndexBackend::Local(s) => {
                return local(s.unpublish(req).await).map(|r| r.record.unwrap_or_default());
            }
        };
        remote(response).map(|r| r.record.unwrap_or_default())
    }

    async fn get(&self, req: v1::IndexGetRequest) -> Result<v1::IndexRecord, ErrorDetail> {
        let response = match self {
            IndexBackend::Remote(c) => c.clone().get(req).await.map(|r| r.into_inner()),
            IndexBackend::Local(s) => {
                return local(s.get(req).await).map(|r| r.record.unwrap_or_default());
            }
        };
        remote(response).map(|r| r.record.unwrap_or_default())
    }

    async fn query(
        &self,
        req: v1::IndexQueryRequest,
    ) -> Result<v1::IndexQueryResponse, ErrorDetail> {
        match self {
            IndexBackend::Remote(c) => remote(c.clone().query(req).await.map(|r| r.into_inner())),
            IndexBackend::Local(s) => local(s.query(req).await),
        }
    }
}

fn remote<T>(result: Result<T, tonic::Status>) -> Result<T, ErrorDetail> {
    result.map_err(|status| {
        let detail = ErrorDetail::from_status(&status);
        crate::reject(reject_kind(&detail));
        detail
    })
}

fn local<T>(result: Result<T, IndexError>) -> Result<T, ErrorDetail> {
    result.map_err(|e| {
        let detail = e.detail();
        match detail.code() {
            v1::ErrorCode::Internal | v1::ErrorCode::Unavailable => {
                tracing::warn!(error = %e, "index request failed");
            }
            _ => tracing::debug!(error = %e, "index request refused"),
        }
        crate::reject(reject_kind(&detail));
        detail
    })
}

fn reject_kind(detail: &ErrorDetail) -> &'static str {
    match detail.code() {
        v1::ErrorCode::Invalid => "invalid",
        v1::ErrorCode::TooLarge => "too_large",
        v1::ErrorCode::NotFound => "not_found",
        v1::ErrorCode::PeerOffline => "peer_offline",
        _ => "unavailable",
    }
}

/// The peer's view of a record (attributes only while online).
fn peer_record(record: v1::IndexRecord, fallback: &v1::PeerId) -> v1::PeerRecord {
    v1::PeerRecord {
        peer: Some(record.peer.unwrap_or_else(|| fallback.clone())),
        presence: v1::Presence::Online as i32,
        attributes: record.attributes,
        updated_at_unix_ms: record.updated_at_unix_ms,
    }
}

/// `PublishAttributes` of the session's own peer.
pub(crate) async fn publish(
    index: &IndexBackend,
    app: &str,
    me: &v1::PeerId,
    p: v1::PublishAttributes,
) -> Result<v1::PeerRecord, ErrorDetail> {
    let record = index
        .publish(v1::IndexPublishRequest {
            app_id: Some(v1::AppId::new(app)),
            peer: Some(me.clone()),
            attributes: p.attributes,
            replace_all: p.replace_all,
        })
        .await?;
    Ok(peer_record(record, me))
}

/// `UnpublishAttributes` of the session's own peer.
pub(crate) async fn unpublish(
    index: &IndexBackend,
    app: &str,
    me: &v1::PeerId,
    u: v1::UnpublishAttributes,
) -> Result<v1::PeerRecord, ErrorDetail> {
    let record = index
        .unpublish(v1::IndexUnpublishRequest {
            app_id: Some(v1::AppId::new(app)),
            peer: Some(me.clone()),
            keys: u.keys,
            all: u.all,
        })
        .await?;
    Ok(peer_record(record, me))
}

/// `LookupPeer` in the session's application: a peer without a record (offline, unknown or of
/// another application) reads as OFFLINE with no attributes.
pub(crate) async fn lookup(
    index: &IndexBackend,
    app: &str,
    l: v1::LookupPeer,
) -> Result<v1::PeerRecord, ErrorDetail> {
    let Some(peer) = l.peer.filter(v1::PeerId::is_valid) else {
        crate::reject("invalid");
        return Err(ErrorDetail {
            field: "lookup_peer.peer".into(),
            ..ErrorDetail::new(
                v1::ErrorCode::Invalid,
                "lookup_peer.peer must be a 32-byte peer id",
            )
        });
    };
    let request = v1::IndexGetRequest {
        app_id: Some(v1::AppId::new(app)),
        peer: Some(peer.clone()),
    };
    match index.get(request).await {
        Ok(record) => Ok(peer_record(record, &peer)),
        Err(detail) if detail.code() == v1::ErrorCode::NotFound => Ok(v1::PeerRecord {
            peer: Some(peer),
            presence: v1::Presence::Offline as i32,
            attributes: Vec::new(),
            updated_at_unix_ms: 0,
        }),
        Err(detail) => Err(detail),
    }
}

/// `QueryPeers` in the session's application.
pub(crate) async fn query(
    index: &IndexBackend,
    app: &str,
    q: v1::QueryPeers,
) -> Result<v1::QueryResult, ErrorDetail> {
    let response = index
        .query(v1::IndexQueryRequest {
            app_id: Some(v1::AppId::new(app)),
            filter: q.filter,
            page: q.page,
        })
        .await?;
    Ok(v1::QueryResult {
        peers: response
            .records
            .into_iter()
            .filter_map(|r| {
                let peer = r.peer.clone()?;
                Some(peer_record(r, &peer))
            })
            .collect(),
        next_page: response.next_page,
    })
}

/// The limits announced to peers in `Welcome.limits`: the index's defaults (an index replica
/// configured otherwise still enforces its own, with the limit in each refusal).
pub(crate) const ANNOUNCED: AttributeLimits = AttributeLimits {
    max_attributes: 32,
    max_key_bytes: 64,
    max_value_bytes: 1024,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_limits_are_the_index_defaults() {
        assert_eq!(ANNOUNCED, AttributeLimits::default());
    }
}
