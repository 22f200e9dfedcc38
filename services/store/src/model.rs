//! The records the store keeps and the small types its operations take and return: applications,
//! peer presence records, replica registrations, attribute queries and pagination.
//!
//! Records are encoded as JSON in Redis (readable with `redis-cli`); unknown fields are ignored
//! when decoding, so a newer writer can add fields without breaking older readers. Times are kept
//! with millisecond precision by both backends.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::limits::{DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};

/// A peer's published attributes: key → value.
pub type Attributes = BTreeMap<String, String>;

/// An application (tenant): the unit that scopes peers, their attributes and routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// The application id (see [`crate::limits::MAX_ID_LEN`] for the allowed form).
    pub id: String,
    /// Human-readable name shown to operators.
    pub display_name: String,
    /// Opaque verifier of the application secret (e.g. a PHC password-hash string). The store
    /// never interprets it.
    pub secret_verifier: String,
    /// When the application was created (millisecond precision).
    #[serde(with = "unix_ms")]
    pub created_at: SystemTime,
    /// A disabled application keeps its record but its peers must be refused at login.
    #[serde(default)]
    pub disabled: bool,
}

/// The presence record of one online peer, kept with a TTL refreshed by heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The peer id (derived from the peer's public key by the caller).
    pub peer_id: String,
    /// The application the peer belongs to.
    pub app_id: String,
    /// The gateway replica holding the peer's control session.
    pub gateway_id: String,
    /// The control session id.
    pub session_id: String,
    /// The server-reflexive address the gateway observed, as text (`ip:port`).
    pub reflexive_addr: String,
    /// The NAT behaviour the peer reported (RFC 4787 terms), if known.
    #[serde(default)]
    pub nat_behaviour: Option<String>,
    /// When this presence started (millisecond precision).
    #[serde(with = "unix_ms")]
    pub online_since: SystemTime,
    /// Opaque extension data for later use; empty when unused.
    #[serde(default, with = "base64_bytes")]
    pub extension: Bytes,
}

/// What a replica of a role advertises in the replica registry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// The address other services or peers use to reach the replica (`host:port`, URL, ...).
    pub advertised_addr: String,
    /// Abstract load figure (e.g. sessions or allocations); lower means less loaded.
    #[serde(default)]
    pub load: u64,
    /// Free-form metadata (zone, version, public addresses, ...).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A live entry of the replica registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// The replica id it registered with.
    pub replica_id: String,
    /// What it advertised in its latest registration.
    pub info: ReplicaInfo,
}

/// How [`crate::Store::publish_attributes`] combines new attributes with the ones already
/// published by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublishMode {
    /// The given attributes become the peer's whole attribute set; keys not given are removed.
    Replace,
    /// The given keys are inserted or overwritten; other published keys stay.
    #[default]
    Merge,
}

/// How an attribute query matches values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// The value equals this string.
    Exact(String),
    /// The value starts with this string (byte-wise; an empty prefix matches every value).
    Prefix(String),
}

/// A query over one attribute key of one application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeQuery {
    /// The attribute key.
    pub key: String,
    /// How the value must match.
    pub value: ValueMatch,
}

impl AttributeQuery {
    /// Peers whose attribute `key` equals `value`.
    pub fn exact(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: ValueMatch::Exact(value.into()),
        }
    }

    /// Peers whose attribute `key` starts with `prefix`.
    pub fn prefix(key: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: ValueMatch::Prefix(prefix.into()),
        }
    }
}

/// One result of an attribute query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeHit {
    /// The matching peer.
    pub peer_id: String,
    /// The peer's value of the queried key.
    pub value: String,
}

/// Everything one online peer has published, with when it last changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishedAttributes {
    /// The attributes, ordered by key.
    pub attributes: Attributes,
    /// When a publish or unpublish last changed them (whole milliseconds, the writer's clock:
    /// the Redis server's in the Redis backend); `None` if the peer never published during its
    /// current presence.
    pub updated_at: Option<SystemTime>,
}

/// The result of [`crate::Store::publish_attributes_capped`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// The attributes were published; this is the peer's record after the change.
    Published(PublishedAttributes),
    /// Nothing was changed: the peer would have held `would_hold` attributes, more than the
    /// cap. Decided atomically with the write, so concurrent publishes cannot exceed the cap.
    TooManyAttributes {
        /// How many attributes the peer would have held after the publish.
        would_hold: usize,
    },
}

/// One result of [`crate::Store::query_records`]: a matching peer with everything it published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeRecord {
    /// The matching peer.
    pub peer_id: String,
    /// The peer's value of the queried key.
    pub value: String,
    /// Everything the peer published (read in the same atomic step as the match).
    pub published: PublishedAttributes,
}

/// Which backend a [`crate::Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// In-process state (single process only).
    Embedded,
    /// One Redis server.
    Redis,
    /// A Redis Cluster.
    RedisCluster,
}

/// An opaque position in a paginated listing, returned in [`Page::next`].
///
/// Cursors are printable ASCII, safe to hand to clients (gRPC page tokens, URL query
/// parameters) and stay valid across replicas and backend restarts: they name the last item
/// returned, not a server-side state. A cursor is only meaningful for the listing that produced
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor(String);

impl Cursor {
    /// The cursor as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The cursor as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }

    pub(crate) fn encode(kind: char, position: &str) -> Self {
        let mut s = String::with_capacity(1 + 2 * position.len());
        s.push(kind);
        s.push_str(&hex::encode(position));
        Self(s)
    }

    pub(crate) fn decode(&self, kind: char) -> Result<String, StoreError> {
        let bad = || StoreError::invalid("cursor: not a cursor of this listing");
        let rest = self.0.strip_prefix(kind).ok_or_else(bad)?;
        let raw = hex::decode(rest).map_err(|_| bad())?;
        String::from_utf8(raw).map_err(|_| bad())
    }
}

impl From<String> for Cursor {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Cursor {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which page of a listing to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Continue after this cursor; `None` starts at the beginning.
    pub cursor: Option<Cursor>,
    /// Maximum number of items. `0` means [`DEFAULT_PAGE_LIMIT`]; values above
    /// [`MAX_PAGE_LIMIT`] are capped.
    pub limit: u32,
}

impl PageRequest {
    /// The first page, with at most `limit` items.
    pub fn first(limit: u32) -> Self {
        Self {
            cursor: None,
            limit,
        }
    }

    /// The page after `cursor`, with at most `limit` items.
    pub fn after(cursor: Cursor, limit: u32) -> Self {
        Self {
            cursor: Some(cursor),
            limit,
        }
    }

    /// The effective limit: `limit` with `0` replaced by the default and capped at the maximum.
    pub fn effective_limit(&self) -> usize {
        let limit = if self.limit == 0 {
            DEFAULT_PAGE_LIMIT
        } else {
            self.limit.min(MAX_PAGE_LIMIT)
        };
        limit as usize
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self::first(DEFAULT_PAGE_LIMIT)
    }
}

/// One page of a listing, in the listing's stable order.
///
/// A page may hold fewer than `limit` items even when more follow (the store bounds the work of
/// one call, e.g. when it skips many expired entries): keep following [`Page::next`] until it
/// is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Where the next page starts; `None` when the listing is complete.
    pub next: Option<Cursor>,
}

/// Truncates a time to whole milliseconds since the Unix epoch, as both backends store it.
pub(crate) fn truncate_ms(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(unix_ms::to_ms(t))
}

mod unix_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn to_ms(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(to_ms(*t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let ms = u64::deserialize(d)?;
        Ok(UNIX_EPOCH + Duration::from_millis(ms))
    }
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(Bytes::from)
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_kind_check() {
        let c = Cursor::encode('p', "peer\0ä");
        assert!(c.as_str().chars().all(|ch| ch.is_ascii_alphanumeric()));
        assert_eq!(c.decode('p').unwrap(), "peer\0ä");
        assert!(c.decode('q').is_err());
        assert!(Cursor::from("pzz").decode('p').is_err());
    }

    #[test]
    fn peer_record_json_round_trip() {
        let rec = PeerRecord {
            peer_id: "p1".into(),
            app_id: "a".into(),
            gateway_id: "g".into(),
            session_id: "s".into(),
            reflexive_addr: "192.0.2.1:4000".into(),
            nat_behaviour: None,
            online_since: truncate_ms(SystemTime::now()),
            extension: Bytes::from_static(b"\x00\xffext"),
        };
        let json = serde_json::to_string(&rec).unwrap();
        let back: PeerRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
        // forward compatible: unknown fields ignored, optional fields defaulted
        let minimal = r#"{"peer_id":"p","app_id":"a","gateway_id":"g","session_id":"s",
            "reflexive_addr":"x","online_since":5,"future":1}"#;
        let rec: PeerRecord = serde_json::from_str(minimal).unwrap();
        assert!(rec.extension.is_empty());
    }

    #[test]
    fn page_limits() {
        assert_eq!(
            PageRequest::first(0).effective_limit(),
            DEFAULT_PAGE_LIMIT as usize
        );
        assert_eq!(
            PageRequest::first(1_000_000).effective_limit(),
            MAX_PAGE_LIMIT as usize
        );
        assert_eq!(PageRequest::first(7).effective_limit(), 7);
    }
}
