//! [`IndexService`]: the `quickp2p.v1.Index` operations over the shared [`Store`], and their
//! tonic binding.
//!
//! Every operation validates its request completely (ids, keys, values, filter, page) before it
//! touches the store, so a bad request costs no store work. The store does the rest atomically:
//! the per-peer attribute cap is checked in the same step as the write (concurrent publishes
//! through several replicas cannot exceed it), records vanish with the peer's presence, and a
//! query page with every matching record is one store round trip.
//!
//! Cursors handed out by [`IndexService::query`] name the last record returned (not server
//! state, so they survive restarts and work on any replica) and are bound to their query: a
//! cursor of another query (another application, key, mode or value) is refused.

use std::time::UNIX_EPOCH;

use quickp2p_proto::v1::{self, index_server::Index as IndexRpc};
use quickp2p_store::{
    AttributeQuery, Cursor, PageRequest, PublishMode, PublishOutcome, PublishedAttributes, Store,
};
use tonic::{Request, Response, Status};

use crate::IndexError;
use crate::limits::{self, AttributeLimits, MAX_FILTER_VALUE_BYTES};

/// Page size when a request asks for 0.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
/// Largest page size.
pub const MAX_PAGE_LIMIT: u32 = 1000;
/// Longest accepted cursor (bytes): a query tag plus the hex of one index position.
pub const MAX_CURSOR_BYTES: usize = 8192;

/// The index operations; cheap to clone.
#[derive(Debug, Clone)]
pub struct IndexService {
    store: Store,
    limits: AttributeLimits,
}

impl IndexService {
    /// The index over `store`, enforcing `limits`.
    pub fn new(store: Store, limits: AttributeLimits) -> IndexService {
        IndexService { store, limits }
    }

    /// The limits in force.
    pub fn limits(&self) -> AttributeLimits {
        self.limits
    }

    /// Sets attributes of an online peer (merge or replace), atomically with its indexes.
    pub async fn publish(
        &self,
        req: v1::IndexPublishRequest,
    ) -> Result<v1::IndexPublishResponse, IndexError> {
        count("publish");
        let app = limits::app_id("app_id", req.app_id.as_ref())?;
        let peer = limits::peer_id("peer", req.peer.as_ref())?;
        let attributes = self.limits.attributes("attributes", req.attributes)?;
        let mode = if req.replace_all {
            PublishMode::Replace
        } else {
            PublishMode::Merge
        };
        let record = self.publish_checked(&app, &peer, &attributes, mode).await?;
        Ok(v1::IndexPublishResponse {
            record: Some(index_record(&app, req.peer, record)),
        })
    }

    async fn publish_checked(
        &self,
        app: &str,
        peer: &str,
        attributes: &quickp2p_store::Attributes,
        mode: PublishMode,
    ) -> Result<PublishedAttributes, IndexError> {
        let outcome = self
            .store
            .publish_attributes_capped(
                app,
                peer,
                attributes,
                mode,
                self.limits.max_attributes as usize,
            )
            .await
            .map_err(|e| offline_if_not_found(e, peer))?;
        match outcome {
            PublishOutcome::Published(record) => Ok(record),
            PublishOutcome::TooManyAttributes { would_hold } => {
                Err(self.limits.too_many("attributes", would_hold))
            }
        }
    }

    /// Removes attributes of an online peer (unknown keys are ignored).
    pub async fn unpublish(
        &self,
        req: v1::IndexUnpublishRequest,
    ) -> Result<v1::IndexUnpublishResponse, IndexError> {
        count("unpublish");
        let app = limits::app_id("app_id", req.app_id.as_ref())?;
        let peer = limits::peer_id("peer", req.peer.as_ref())?;
        let record = if req.all {
            let none = quickp2p_store::Attributes::new();
            self.publish_checked(&app, &peer, &none, PublishMode::Replace)
                .await?
        } else {
            self.limits.keys("keys", &req.keys)?;
            self.store
                .unpublish_attributes(&app, &peer, &req.keys)
                .await?;
            self.store
                .get_published(&app, &peer)
                .await?
                .ok_or_else(|| not_online(&peer))?
        };
        Ok(v1::IndexUnpublishResponse {
            record: Some(index_record(&app, req.peer, record)),
        })
    }

    /// The record of one online peer of the application (`NotFound` otherwise).
    pub async fn get(&self, req: v1::IndexGetRequest) -> Result<v1::IndexGetResponse, IndexError> {
        count("get");
        let app = limits::app_id("app_id", req.app_id.as_ref())?;
        let peer = limits::peer_id("peer", req.peer.as_ref())?;
        let record = self
            .store
            .get_published(&app, &peer)
            .await?
            .ok_or_else(|| {
                IndexError::NotFound(format!("no online peer {peer} in this application"))
            })?;
        Ok(v1::IndexGetResponse {
            record: Some(index_record(&app, req.peer, record)),
        })
    }

    /// Records of online peers of the application matching the filter, ascending by the
    /// filtered value then by peer id bytes, one page at a time.
    pub async fn query(
        &self,
        req: v1::IndexQueryRequest,
    ) -> Result<v1::IndexQueryResponse, IndexError> {
        count("query");
        let app = limits::app_id("app_id", req.app_id.as_ref())?;
        let filter = req
            .filter
            .ok_or_else(|| IndexError::invalid("filter", "a filter is required"))?;
        self.limits.key("filter.key", &filter.key)?;
        if filter.value.len() > MAX_FILTER_VALUE_BYTES {
            return Err(IndexError::too_large(
                "filter.value",
                format!(
                    "{} bytes, more than {MAX_FILTER_VALUE_BYTES}",
                    filter.value.len()
                ),
                MAX_FILTER_VALUE_BYTES as u64,
            ));
        }
        if filter.value.contains('\0') {
            return Err(IndexError::invalid("filter.value", "contains NUL"));
        }
        let query = match filter.mode() {
            v1::AttributeMatch::Equal => AttributeQuery::exact(&filter.key, &filter.value),
            v1::AttributeMatch::Prefix => AttributeQuery::prefix(&filter.key, &filter.value),
            v1::AttributeMatch::Unspecified => {
                return Err(IndexError::invalid(
                    "filter.mode",
                    "must be ATTRIBUTE_MATCH_EQUAL or ATTRIBUTE_MATCH_PREFIX",
                ));
            }
        };
        let page = req.page.unwrap_or_default();
        let limit = match page.limit {
            0 => DEFAULT_PAGE_LIMIT,
            l if l <= MAX_PAGE_LIMIT => l,
            l => {
                return Err(IndexError::invalid(
                    "page.limit",
                    format!("{l} is more than {MAX_PAGE_LIMIT}"),
                ));
            }
        };
        let tag = query_tag(&app, &filter);
        let cursor = match page.cursor.as_str() {
            "" => None,
            c => Some(unwrap_cursor(&tag, c)?),
        };
        let found = self
            .store
            .query_records(
                &app,
                &query,
                PageRequest {
                    cursor: cursor.map(Cursor::from),
                    limit,
                },
            )
            .await?;
        let records = found
            .items
            .into_iter()
            .filter_map(|hit| {
                let peer = hit.peer_id.parse::<v1::PeerId>().ok()?;
                Some(index_record(&app, Some(peer), hit.published))
            })
            .collect();
        Ok(v1::IndexQueryResponse {
            records,
            next_page: Some(v1::NextPage {
                cursor: found
                    .next
                    .map(|c| format!("{tag}.{}", c.as_str()))
                    .unwrap_or_default(),
            }),
        })
    }
}

fn count(op: &'static str) {
    metrics::counter!("qp_index_requests_total", "op" => op).increment(1);
}

fn not_online(peer: &str) -> IndexError {
    IndexError::PeerOffline(format!(
        "peer {peer} is not online in this application (publishing needs a live session)"
    ))
}

fn offline_if_not_found(e: quickp2p_store::StoreError, peer: &str) -> IndexError {
    match e {
        quickp2p_store::StoreError::NotFound { .. } => not_online(peer),
        e => IndexError::Store(e),
    }
}

/// The protocol record of a peer.
pub fn index_record(
    app: &str,
    peer: Option<v1::PeerId>,
    published: PublishedAttributes,
) -> v1::IndexRecord {
    v1::IndexRecord {
        app_id: Some(v1::AppId::new(app)),
        peer,
        attributes: published
            .attributes
            .into_iter()
            .map(|(key, value)| v1::Attribute { key, value })
            .collect(),
        updated_at_unix_ms: published
            .updated_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
    }
}

/// 16 hex digits naming a query (FNV-1a over its parts), so a cursor is only used with the
/// query that produced it.
fn query_tag(app: &str, filter: &v1::AttributeFilter) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mode = filter.mode.to_le_bytes();
    for part in [
        app.as_bytes(),
        filter.key.as_bytes(),
        &mode,
        filter.value.as_bytes(),
    ] {
        for &b in part.iter().chain(&[0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn unwrap_cursor(tag: &str, cursor: &str) -> Result<String, IndexError> {
    let bad = || IndexError::invalid("page.cursor", "not a cursor of this query");
    if cursor.len() > MAX_CURSOR_BYTES {
        return Err(bad());
    }
    match cursor.split_once('.') {
        Some((t, rest)) if t == tag && !rest.is_empty() => Ok(rest.to_owned()),
        _ => Err(bad()),
    }
}

type RpcResult<T> = Result<Response<T>, Status>;

fn reply<T>(result: Result<T, IndexError>) -> RpcResult<T> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl IndexRpc for IndexService {
    async fn publish(
        &self,
        request: Request<v1::IndexPublishRequest>,
    ) -> RpcResult<v1::IndexPublishResponse> {
        reply(IndexService::publish(self, request.into_inner()).await)
    }

    async fn unpublish(
        &self,
        request: Request<v1::IndexUnpublishRequest>,
    ) -> RpcResult<v1::IndexUnpublishResponse> {
        reply(IndexService::unpublish(self, request.into_inner()).await)
    }

    async fn get(&self, request: Request<v1::IndexGetRequest>) -> RpcResult<v1::IndexGetResponse> {
        reply(IndexService::get(self, request.into_inner()).await)
    }

    async fn query(
        &self,
        request: Request<v1::IndexQueryRequest>,
    ) -> RpcResult<v1::IndexQueryResponse> {
        reply(IndexService::query(self, request.into_inner()).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(key: &str, value: &str) -> v1::AttributeFilter {
        v1::AttributeFilter {
            key: key.into(),
            mode: v1::AttributeMatch::Equal as i32,
            value: value.into(),
        }
    }

    #[test]
    fn cursors_are_bound_to_their_query() {
        let tag = query_tag("app", &filter("k", "v"));
        assert_eq!(unwrap_cursor(&tag, &format!("{tag}.q01")).unwrap(), "q01");
        for other in [
            query_tag("app2", &filter("k", "v")),
            query_tag("app", &filter("k2", "v")),
            query_tag("app", &filter("k", "v2")),
            query_tag(
                "app",
                &v1::AttributeFilter {
                    mode: v1::AttributeMatch::Prefix as i32,
                    ..filter("k", "v")
                },
            ),
        ] {
            assert_ne!(other, tag);
            assert!(unwrap_cursor(&other, &format!("{tag}.q01")).is_err());
        }
        assert!(unwrap_cursor(&tag, "garbage").is_err());
        assert!(unwrap_cursor(&tag, &format!("{tag}.")).is_err());
        assert!(unwrap_cursor(&tag, &format!("{tag}.{}", "a".repeat(MAX_CURSOR_BYTES))).is_err());
    }
}
