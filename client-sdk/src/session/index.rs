//! Publishing attributes and finding peers: [`Session::publish`], [`Session::replace_attributes`],
//! [`Session::unpublish`], [`Session::unpublish_all`], [`Session::lookup`] and
//! [`Session::find`].
//!
//! A peer publishes string key/value attributes (at most 32 by default, keys of 1 to 64 bytes of
//! ASCII letters, digits and `. _ - : /`, values of at most 1024 bytes: the gateway announces the
//! limits); they are visible to the peers of its own application only, and disappear when the
//! peer goes offline. Lookups and queries only ever see the own application. Refusals are typed:
//! [`SessionError::TooLarge`] (with the limit) for too many or too long attributes,
//! [`SessionError::Invalid`] for a malformed key, filter or cursor.
//!
//! ```no_run
//! # async fn demo(session: quickp2p::session::Session) -> Result<(), quickp2p::session::SessionError> {
//! use quickp2p::session::PeerQuery;
//! session.publish([("role", "printer"), ("floor", "2")]).await?;
//! let page = session.find(&PeerQuery::equal("role", "printer"), None, 50).await?;
//! for peer in &page.peers {
//!     println!("{} {:?}", peer.peer, peer.attributes);
//! }
//! # Ok(()) }
//! ```
//!
//! Each method is one request through the session's driver ([`Command::Call`]); a request
//! unanswered when the gateway connection drops fails with [`SessionError::Unavailable`] (it is
//! not replayed: publishing again is harmless, so callers may simply retry).

use std::collections::BTreeMap;
use std::time::Duration;

use quickp2p_proto::v1::{self, peer_request::Request, peer_response::Result as Res};
use tokio::sync::oneshot;

use super::{Command, PeerId, Presence, Session, SessionError};

/// How long an index request may take before it fails with [`SessionError::Unavailable`].
const INDEX_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a peer sees of another peer of its application (or of itself after a publish).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer.
    pub peer: PeerId,
    /// Whether it is online. Unknown peers and peers of other applications read as offline.
    pub presence: Presence,
    /// Its published attributes (empty when offline).
    pub attributes: BTreeMap<String, String>,
    /// When its attributes last changed, network time (Unix ms); 0 if never.
    pub updated_at_unix_ms: u64,
}

impl PeerInfo {
    fn from_record(record: v1::PeerRecord) -> Result<PeerInfo, SessionError> {
        let presence = record.presence();
        let peer = record
            .peer
            .ok_or_else(|| SessionError::Unavailable("a peer record without a peer id".into()))?;
        Ok(PeerInfo {
            peer,
            presence,
            attributes: record
                .attributes
                .into_iter()
                .map(|a| (a.key, a.value))
                .collect(),
            updated_at_unix_ms: record.updated_at_unix_ms,
        })
    }

    /// Whether the peer is online.
    pub fn is_online(&self) -> bool {
        self.presence == Presence::Online
    }
}

/// Which peers [`Session::find`] returns: those with attribute `key` equal to, or starting with,
/// `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerQuery {
    /// The attribute key.
    pub key: String,
    /// The value (or prefix) to match, byte-wise.
    pub value: String,
    /// true: `value` is a prefix (an empty prefix matches every peer with the key).
    pub prefix: bool,
}

impl PeerQuery {
    /// Peers whose attribute `key` equals `value`.
    pub fn equal(key: impl Into<String>, value: impl Into<String>) -> PeerQuery {
        PeerQuery {
            key: key.into(),
            value: value.into(),
            prefix: false,
        }
    }

    /// Peers whose attribute `key` starts with `prefix`.
    pub fn prefix(key: impl Into<String>, prefix: impl Into<String>) -> PeerQuery {
        PeerQuery {
            key: key.into(),
            value: prefix.into(),
            prefix: true,
        }
    }
}

/// One page of [`Session::find`] results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPage {
    /// Matching online peers, ascending by the matched value, then by peer id.
    pub peers: Vec<PeerInfo>,
    /// Pass to [`Session::find`] for the next page; `None` on the last page. A page may be
    /// shorter than asked even when more follow.
    pub next_cursor: Option<String>,
}

impl Session {
    /// Publishes attributes, keeping the ones published before under other keys. Returns the
    /// own record after the change.
    pub async fn publish<K, V>(
        &self,
        attributes: impl IntoIterator<Item = (K, V)>,
    ) -> Result<PeerInfo, SessionError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.publish_attributes(attributes, false).await
    }

    /// Publishes exactly these attributes: every other published key is removed.
    pub async fn replace_attributes<K, V>(
        &self,
        attributes: impl IntoIterator<Item = (K, V)>,
    ) -> Result<PeerInfo, SessionError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.publish_attributes(attributes, true).await
    }

    async fn publish_attributes<K, V>(
        &self,
        attributes: impl IntoIterator<Item = (K, V)>,
        replace_all: bool,
    ) -> Result<PeerInfo, SessionError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let attributes = attributes
            .into_iter()
            .map(|(k, v)| v1::Attribute {
                key: k.into(),
                value: v.into(),
            })
            .collect();
        let request = Request::PublishAttributes(v1::PublishAttributes {
            attributes,
            replace_all,
        });
        self.record_call(request, "publish_attributes").await
    }

    /// Removes published attributes (unknown keys are ignored). Returns the own record after the
    /// change.
    pub async fn unpublish<K: Into<String>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<PeerInfo, SessionError> {
        let request = Request::UnpublishAttributes(v1::UnpublishAttributes {
            keys: keys.into_iter().map(Into::into).collect(),
            all: false,
        });
        self.record_call(request, "unpublish_attributes").await
    }

    /// Removes every published attribute.
    pub async fn unpublish_all(&self) -> Result<PeerInfo, SessionError> {
        let request = Request::UnpublishAttributes(v1::UnpublishAttributes {
            keys: Vec::new(),
            all: true,
        });
        self.record_call(request, "unpublish_attributes").await
    }

    /// Looks up one peer of the own application: its presence and attributes (offline, with no
    /// attributes, for unknown peers and peers of other applications).
    pub async fn lookup(&self, peer: &PeerId) -> Result<PeerInfo, SessionError> {
        let request = Request::LookupPeer(v1::LookupPeer {
            peer: Some(peer.clone()),
        });
        self.record_call(request, "lookup_peer").await
    }

    /// Finds online peers of the own application by attribute, one page of at most `limit`
    /// (1 to 1000; 0 = 100) at a time. Start with `cursor = None`, then pass
    /// [`PeerPage::next_cursor`].
    pub async fn find(
        &self,
        query: &PeerQuery,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<PeerPage, SessionError> {
        let mode = if query.prefix {
            v1::AttributeMatch::Prefix
        } else {
            v1::AttributeMatch::Equal
        };
        let request = Request::QueryPeers(v1::QueryPeers {
            filter: Some(v1::AttributeFilter {
                key: query.key.clone(),
                mode: mode as i32,
                value: query.value.clone(),
            }),
            page: Some(v1::Page {
                cursor: cursor.unwrap_or_default().to_owned(),
                limit,
            }),
        });
        match self.index_call(request).await? {
            Res::QueryResult(result) => Ok(PeerPage {
                peers: result
                    .peers
                    .into_iter()
                    .map(PeerInfo::from_record)
                    .collect::<Result<_, _>>()?,
                next_cursor: result.next_page.map(|p| p.cursor).filter(|c| !c.is_empty()),
            }),
            _ => Err(unexpected("query_peers")),
        }
    }

    async fn record_call(
        &self,
        request: Request,
        what: &'static str,
    ) -> Result<PeerInfo, SessionError> {
        match self.index_call(request).await? {
            Res::PeerRecord(record) => PeerInfo::from_record(record),
            _ => Err(unexpected(what)),
        }
    }

    async fn index_call(&self, request: Request) -> Result<Res, SessionError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Call { request, reply }).await?;
        match tokio::time::timeout(INDEX_CALL_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SessionError::Closed("the session ended".into())),
            Err(_) => Err(SessionError::Unavailable(format!(
                "the gateway did not answer within {INDEX_CALL_TIMEOUT:?}"
            ))),
        }
    }
}

fn unexpected(what: &str) -> SessionError {
    SessionError::Unavailable(format!("unexpected answer to {what}"))
}
