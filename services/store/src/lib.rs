//! `quickp2p-store`: the shared state of a quickP2P supernode network.
//!
//! Every supernode role reads and writes its state through one [`Store`] handle (cheap to clone),
//! backed either by **Redis** (one server or a Redis Cluster; what multi-replica deployments
//! use) or by the **embedded** in-process backend (the all-in-one supernode, tests). Both backends
//! have the same semantics and pass the same conformance suite (`tests/conformance`).
//!
//! What the store owns:
//!
//! | family | operations | used by |
//! |---|---|---|
//! | applications (tenants) | [`Store::create_app`], [`Store::put_app`], [`Store::get_app`], [`Store::list_apps`], [`Store::delete_app`] | checkpoint, admin |
//! | presence (peer records with TTL) | [`Store::put_peer`], [`Store::get_peer`], [`Store::touch_peer`], [`Store::remove_peer`], [`Store::list_peers`], [`Store::count_peers`], [`Store::sweep_expired_peers`] | checkpoint, admin |
//! | routes peer → gateway (TTL) | [`Store::set_route`], [`Store::get_route`], [`Store::clear_route`] (compare-and-delete) | gateway |
//! | attribute index, expiring with presence | [`Store::publish_attributes`], [`Store::publish_attributes_capped`], [`Store::unpublish_attributes`], [`Store::get_peer_attributes`], [`Store::get_published`], [`Store::query_attributes`], [`Store::query_records`] | index, admin |
//! | pub/sub | [`Store::publish_delivery`], [`Store::subscribe_delivery`] (per gateway), [`Store::publish_event`], [`Store::subscribe_events`] (named channels) | gateway, checkpoint |
//! | counters | [`Store::incr_counter`], [`Store::get_counter`], [`Store::incr_counter_field`], [`Store::get_counter_map`] | handshake, relay, admin |
//! | ephemeral key/value (TTL) | [`Store::put_ephemeral`], [`Store::put_ephemeral_if_absent`], [`Store::get_ephemeral`], [`Store::take_ephemeral`] (once only), [`Store::delete_ephemeral`] | checkpoint (login challenges), handshake (sessions) |
//! | replica registry (TTL) | [`Store::register_replica`], [`Store::deregister_replica`], [`Store::list_replicas`] | every role |
//!
//! **Tenancy.** Presence, routes and attributes are scoped by application id: no call taking an
//! application id ever sees another application's data. Counters, ephemeral keys, channels and
//! replicas are global names; callers that need per-application names put the id in the name.
//!
//! **Expiry.** A peer is online until its presence TTL lapses or it is removed; from then on it
//! is absent from every read, and everything it published (attributes and their index entries)
//! goes with it — purged lazily and atomically (see *Expiry* under the key layout). Expiry uses the
//! Redis server's clock (so replicas with skewed clocks agree), or [`tokio::time::Instant`] in
//! the embedded backend.
//!
//! **Limits.** Every call is bounded: identifiers, values, pages and per-call work are capped
//! (see [`limits`]); invalid input fails with [`StoreError::InvalidInput`] before reaching the
//! backend.
//!
//! ## Key layout (Redis)
//!
//! `P` is the configured prefix (default `qp`), `A` an application id, `p` a peer id. The part
//! in braces is the Redis Cluster hash tag: every key of one family shares it, so the Lua
//! scripts that update several keys touch one slot, and the same code runs on one Redis and on
//! Redis Cluster.
//!
//! | key | type | content |
//! |---|---|---|
//! | `P:{apps}:rec` | hash | application id → [`crate::AppRecord`] JSON |
//! | `P:{apps}:ids` | zset (score 0) | application ids, for lexicographic paging |
//! | `P:{app:A}:presence` | zset | peer id → presence deadline (Unix ms, Redis clock); the source of truth for liveness: live iff deadline ≥ now |
//! | `P:{app:A}:peers` | zset (score 0) | peer ids, for lexicographic paging |
//! | `P:{app:A}:peer:p` | string, `PXAT` deadline | [`crate::PeerRecord`] JSON |
//! | `P:{app:A}:attrs:p` | hash | the peer's attributes key → value (no TTL: removed with the peer by the purge) |
//! | `P:{app:A}:idx:K` | zset (score 0) | index of attribute key `K`: members `value NUL peer` |
//! | `P:{app:A}:updated` | hash | peer id → when its attributes last changed (Unix ms, Redis clock); removed with the peer by the purge |
//! | `P:{app:A}:route:p` | string, `PX` ttl | gateway id holding the peer's session |
//! | `P:{ctr:N}` | string | counter `N` |
//! | `P:{ctrmap:N}` | hash | counter map `N`: field → count |
//! | `P:{eph:K}` | string, `PX` ttl | ephemeral value `K` |
//! | `P:{replicas:R}:live` | zset | replica id of role `R` → registration deadline (Unix ms) |
//! | `P:{replicas:R}:info` | hash | replica id → [`crate::ReplicaInfo`] JSON |
//!
//! Pub/sub channels: `P:{gw:G}:delivery` (delivery to gateway `G`) and `P:{ev:C}:events`
//! (event channel `C`); sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`) on Redis Cluster, classic
//! pub/sub on one Redis.
//!
//! **Expiry.** A peer expires when its presence deadline passes (or it is removed). Everything it
//! published is then removed by one atomic *purge* (index members, attribute hash, record,
//! presence, listing entry). Purges happen lazily: every presence/attribute script first purges a
//! bounded batch of expired peers of the application ([`crate::limits::SWEEP_BATCH`]), and
//! queries and listings skip — and purge — expired peers they meet, so an expired peer is never
//! returned even before it is purged. The record key also carries a `PXAT` expiry equal to the
//! deadline, so a plain `GET` never returns an expired record.
//!
//! **Granularity.** All data of one application lives in one hash slot (one shard of a cluster):
//! that keeps every index update atomic, and applications spread over the shards. A single
//! application larger than one shard would need the index split per attribute key, which loses
//! the atomic multi-attribute publish.
//!
//! **Errors.** One enum, [`StoreError`]; [`StoreError::is_retryable`] tells transient failures
//! (Redis down, timeout) from the rest.

mod embedded;
mod error;
pub mod limits;
mod model;
pub mod names;
mod redis_backend;
mod subscription;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use crate::error::StoreError;
pub use crate::model::{
    AppRecord, AttributeHit, AttributeQuery, AttributeRecord, Attributes, BackendKind, Cursor,
    Page, PageRequest, PeerRecord, PublishMode, PublishOutcome, PublishedAttributes, Replica,
    ReplicaInfo, ValueMatch,
};
pub use crate::redis_backend::RedisConfig;
pub use crate::subscription::{SUBSCRIPTION_BUFFER, Subscription};

use crate::embedded::EmbeddedBackend;
use crate::redis_backend::RedisBackend;

/// Cursor kinds: a cursor of one listing is refused by another.
const CURSOR_APPS: char = 'a';
const CURSOR_PEERS: char = 'p';
const CURSOR_QUERY: char = 'q';

/// The handle to the shared state. Clones share the same backend and connections.
///
/// See the [crate documentation](crate) for what it holds.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Embedded(Arc<EmbeddedBackend>),
    Redis(Arc<RedisBackend>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("Store");
        s.field("backend", &self.backend_kind());
        if let Backend::Redis(r) = &self.backend {
            s.field("key_prefix", &r.key_prefix());
        }
        s.finish()
    }
}

/// Calls the same method on whichever backend; the embedded one is synchronous.
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* $(,)? )) => {
        match &$self.backend {
            Backend::Embedded(b) => b.$method($($arg),*),
            Backend::Redis(b) => b.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// A new, empty in-process store. Each call creates an independent store; clone the handle
    /// to share it.
    pub fn embedded() -> Self {
        Self {
            backend: Backend::Embedded(Arc::new(EmbeddedBackend::default())),
        }
    }

    /// A store on Redis (one server or a cluster, see [`RedisConfig::url`]).
    ///
    /// Connections are opened lazily, so this succeeds while Redis is down (operations then
    /// fail with [`StoreError::Unavailable`] until it is back; use [`Store::ping`] for
    /// readiness). Fails only on an invalid configuration ([`StoreError::Config`]). Must be
    /// called inside a Tokio runtime.
    pub async fn redis(config: RedisConfig) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Redis(Arc::new(RedisBackend::open(config)?)),
        })
    }

    /// Which backend this store runs on.
    pub fn backend_kind(&self) -> BackendKind {
        match &self.backend {
            Backend::Embedded(_) => BackendKind::Embedded,
            Backend::Redis(r) => r.kind(),
        }
    }

    /// Checks that the backend answers (every primary, on a cluster). Use for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(()),
            Backend::Redis(r) => r.ping().await,
        }
    }

    // ------------------------------------------------------------------------------ applications

    /// Stores a new application; [`StoreError::Conflict`] if the id is taken.
    pub async fn create_app(&self, app: &AppRecord) -> Result<(), StoreError> {
        check_app(app)?;
        dispatch!(self.create_app(app))
    }

    /// Stores an application, replacing any record with the same id.
    pub async fn put_app(&self, app: &AppRecord) -> Result<(), StoreError> {
        check_app(app)?;
        dispatch!(self.put_app(app))
    }

    /// The application with this id, if any.
    pub async fn get_app(&self, app_id: &str) -> Result<Option<AppRecord>, StoreError> {
        limits::id("app id", app_id)?;
        dispatch!(self.get_app(app_id))
    }

    /// Applications ordered by id, one page at a time.
    pub async fn list_apps(&self, page: PageRequest) -> Result<Page<AppRecord>, StoreError> {
        let after = decode_cursor(&page, CURSOR_APPS)?;
        let limit = page.effective_limit();
        let (items, next) = dispatch!(self.list_apps(after.as_deref(), limit))?;
        Ok(make_page(items, next, CURSOR_APPS))
    }

    /// Deletes an application record; true if it existed. The application's peers are not
    /// touched: they expire with their TTL (services refuse unknown applications at login).
    pub async fn delete_app(&self, app_id: &str) -> Result<bool, StoreError> {
        limits::id("app id", app_id)?;
        dispatch!(self.delete_app(app_id))
    }

    // ------------------------------------------------------------------------------ presence

    /// Marks a peer online for `ttl` with this record (the record names its application).
    ///
    /// If the peer is already online (e.g. it moved to another gateway) the record and TTL are
    /// replaced and its published attributes are kept. If it was not online, it starts fresh:
    /// nothing published by an earlier, expired presence comes back. Use
    /// [`Store::remove_peer`] first to drop the attributes of a live presence.
    pub async fn put_peer(&self, peer: &PeerRecord, ttl: Duration) -> Result<(), StoreError> {
        check_peer(peer)?;
        let ttl = limits::ttl(ttl)?;
        dispatch!(self.put_peer(peer, ttl))
    }

    /// The record of an online peer; `None` if it is not online.
    pub async fn get_peer(
        &self,
        app_id: &str,
        peer_id: &str,
    ) -> Result<Option<PeerRecord>, StoreError> {
        check_app_peer(app_id, peer_id)?;
        dispatch!(self.get_peer(app_id, peer_id))
    }

    /// Extends an online peer's presence to `ttl` from now (heartbeat). False if the peer is
    /// not online (expired or removed): it must log in again, nothing is resurrected.
    pub async fn touch_peer(
        &self,
        app_id: &str,
        peer_id: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        check_app_peer(app_id, peer_id)?;
        let ttl = limits::ttl(ttl)?;
        dispatch!(self.touch_peer(app_id, peer_id, ttl))
    }

    /// Takes a peer offline now, with everything it published. True if it was online.
    pub async fn remove_peer(&self, app_id: &str, peer_id: &str) -> Result<bool, StoreError> {
        check_app_peer(app_id, peer_id)?;
        dispatch!(self.remove_peer(app_id, peer_id))
    }

    /// Online peers of an application ordered by peer id, one page at a time. Peers that come
    /// online or go offline while paging appear or not, but a peer online during the whole
    /// paging is returned exactly once.
    pub async fn list_peers(
        &self,
        app_id: &str,
        page: PageRequest,
    ) -> Result<Page<PeerRecord>, StoreError> {
        limits::id("app id", app_id)?;
        let after = decode_cursor(&page, CURSOR_PEERS)?;
        let limit = page.effective_limit();
        let (items, next) = dispatch!(self.list_peers(app_id, after.as_deref(), limit))?;
        Ok(make_page(items, next, CURSOR_PEERS))
    }

    /// Number of online peers of an application.
    pub async fn count_peers(&self, app_id: &str) -> Result<u64, StoreError> {
        limits::id("app id", app_id)?;
        dispatch!(self.count_peers(app_id))
    }

    /// Purges up to `max` expired peers of an application (with what they published) and
    /// returns how many it purged. Reads never return expired peers anyway and writes purge in
    /// small batches; a janitor can call this to reclaim memory of idle applications sooner.
    pub async fn sweep_expired_peers(&self, app_id: &str, max: usize) -> Result<usize, StoreError> {
        limits::id("app id", app_id)?;
        let max = max.min(limits::MAX_PAGE_LIMIT as usize);
        dispatch!(self.sweep_expired_peers(app_id, max))
    }

    // ------------------------------------------------------------------------------ routes

    /// Records that `gateway_id` holds the peer's session, for `ttl`.
    pub async fn set_route(
        &self,
        app_id: &str,
        peer_id: &str,
        gateway_id: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        check_app_peer(app_id, peer_id)?;
        limits::id("gateway id", gateway_id)?;
        let ttl = limits::ttl(ttl)?;
        dispatch!(self.set_route(app_id, peer_id, gateway_id, ttl))
    }

    /// The gateway currently holding the peer's session, if any.
    pub async fn get_route(
        &self,
        app_id: &str,
        peer_id: &str,
    ) -> Result<Option<String>, StoreError> {
        check_app_peer(app_id, peer_id)?;
        dispatch!(self.get_route(app_id, peer_id))
    }

    /// Removes the peer's route only if it still names `gateway_id` (compare-and-delete), so a
    /// gateway closing a stale session cannot erase the route a newer session set. True if it
    /// removed the route.
    pub async fn clear_route(
        &self,
        app_id: &str,
        peer_id: &str,
        gateway_id: &str,
    ) -> Result<bool, StoreError> {
        check_app_peer(app_id, peer_id)?;
        limits::id("gateway id", gateway_id)?;
        dispatch!(self.clear_route(app_id, peer_id, gateway_id))
    }

    // ------------------------------------------------------------------------------ attributes

    /// Publishes attributes of an online peer, atomically with their index entries.
    ///
    /// [`PublishMode::Replace`]: `attributes` becomes the whole set; [`PublishMode::Merge`]:
    /// the given keys are set, others kept. [`StoreError::NotFound`] if the peer is not online.
    /// At most [`limits::MAX_ATTRIBUTES_PER_CALL`] attributes per call.
    pub async fn publish_attributes(
        &self,
        app_id: &str,
        peer_id: &str,
        attributes: &Attributes,
        mode: PublishMode,
    ) -> Result<(), StoreError> {
        match self
            .publish_attributes_capped(app_id, peer_id, attributes, mode, usize::MAX)
            .await?
        {
            PublishOutcome::Published(_) => Ok(()),
            // unreachable with an unlimited cap; reported rather than ignored
            PublishOutcome::TooManyAttributes { would_hold } => Err(StoreError::invalid(format!(
                "attributes: the peer would hold {would_hold}"
            ))),
        }
    }

    /// Like [`Store::publish_attributes`], but refuses (changing nothing) when the peer would
    /// hold more than `max_attributes` attributes afterwards, and returns the peer's record after
    /// the change. The check and the write are one atomic step, so concurrent merges from
    /// several replicas can never push a peer over the cap.
    pub async fn publish_attributes_capped(
        &self,
        app_id: &str,
        peer_id: &str,
        attributes: &Attributes,
        mode: PublishMode,
        max_attributes: usize,
    ) -> Result<PublishOutcome, StoreError> {
        check_app_peer(app_id, peer_id)?;
        if attributes.len() > limits::MAX_ATTRIBUTES_PER_CALL {
            return Err(StoreError::invalid(format!(
                "attributes: more than {} in one call",
                limits::MAX_ATTRIBUTES_PER_CALL
            )));
        }
        for (key, value) in attributes {
            limits::attribute_key(key)?;
            limits::attribute_value("attribute value", value)?;
        }
        dispatch!(self.publish_attributes(app_id, peer_id, attributes, mode, max_attributes))
    }

    /// Removes some published attributes of a peer; returns how many were present. A peer that
    /// is not online has nothing published: returns 0.
    pub async fn unpublish_attributes(
        &self,
        app_id: &str,
        peer_id: &str,
        keys: &[String],
    ) -> Result<usize, StoreError> {
        check_app_peer(app_id, peer_id)?;
        if keys.len() > limits::MAX_ATTRIBUTES_PER_CALL {
            return Err(StoreError::invalid(format!(
                "keys: more than {} in one call",
                limits::MAX_ATTRIBUTES_PER_CALL
            )));
        }
        for key in keys {
            limits::attribute_key(key)?;
        }
        dispatch!(self.unpublish_attributes(app_id, peer_id, keys))
    }

    /// The attributes an online peer published (possibly none); `None` if it is not online.
    pub async fn get_peer_attributes(
        &self,
        app_id: &str,
        peer_id: &str,
    ) -> Result<Option<Attributes>, StoreError> {
        Ok(self
            .get_published(app_id, peer_id)
            .await?
            .map(|p| p.attributes))
    }

    /// What an online peer published (possibly nothing) and when it last changed; `None` if it
    /// is not online.
    pub async fn get_published(
        &self,
        app_id: &str,
        peer_id: &str,
    ) -> Result<Option<PublishedAttributes>, StoreError> {
        check_app_peer(app_id, peer_id)?;
        dispatch!(self.get_published(app_id, peer_id))
    }

    /// Online peers of an application whose attribute matches the query, one page at a time.
    ///
    /// Order: by value, then by peer id (for an exact match: by peer id), byte-wise. Like
    /// [`Store::list_peers`], paging is stable: a match present during the whole paging is
    /// returned exactly once.
    pub async fn query_attributes(
        &self,
        app_id: &str,
        query: &AttributeQuery,
        page: PageRequest,
    ) -> Result<Page<AttributeHit>, StoreError> {
        let found = self.query_index(app_id, query, page, false).await?;
        Ok(Page {
            items: found
                .items
                .into_iter()
                .map(|r| AttributeHit {
                    peer_id: r.peer_id,
                    value: r.value,
                })
                .collect(),
            next: found.next,
        })
    }

    /// Like [`Store::query_attributes`], but each match comes with everything the peer
    /// published, read in the same atomic step (one round trip per page on Redis).
    pub async fn query_records(
        &self,
        app_id: &str,
        query: &AttributeQuery,
        page: PageRequest,
    ) -> Result<Page<AttributeRecord>, StoreError> {
        self.query_index(app_id, query, page, true).await
    }

    async fn query_index(
        &self,
        app_id: &str,
        query: &AttributeQuery,
        page: PageRequest,
        with_records: bool,
    ) -> Result<Page<AttributeRecord>, StoreError> {
        limits::id("app id", app_id)?;
        limits::attribute_key(&query.key)?;
        // the lowest index member (`value NUL peer`) that can match
        let lower = match &query.value {
            ValueMatch::Exact(v) => {
                limits::attribute_value("query value", v)?;
                index_member(v, "")
            }
            ValueMatch::Prefix(p) => {
                limits::attribute_value("query prefix", p)?;
                p.clone()
            }
        };
        let after = decode_cursor(&page, CURSOR_QUERY)?;
        let limit = page.effective_limit();
        let (items, next) = match &self.backend {
            Backend::Embedded(b) => b.query_attributes(
                app_id,
                &query.key,
                &query.value,
                after.as_deref(),
                limit,
                with_records,
            )?,
            Backend::Redis(b) => {
                // lexicographic range of the index members `value NUL peer` to scan
                let min = match after.as_deref() {
                    Some(pos) if pos.as_bytes() >= lower.as_bytes() => {
                        [b"(".as_slice(), pos.as_bytes()].concat()
                    }
                    _ => [b"[".as_slice(), lower.as_bytes()].concat(),
                };
                let max = match &query.value {
                    // members of value v sort below `v \x01`
                    ValueMatch::Exact(v) => [b"(".as_slice(), v.as_bytes(), b"\x01"].concat(),
                    // no UTF-8 text contains the byte 0xFF
                    ValueMatch::Prefix(p) => [b"(".as_slice(), p.as_bytes(), b"\xff"].concat(),
                };
                b.query_attributes(app_id, &query.key, min, max, limit, with_records)
                    .await?
            }
        };
        Ok(make_page(items, next, CURSOR_QUERY))
    }

    // ------------------------------------------------------------------------------ pub/sub

    /// Publishes a payload on a gateway's delivery channel. Returns how many subscribers got it
    /// (Redis: subscribed processes; embedded: subscriptions); 0 means no gateway listens on
    /// this id, so the message was not delivered.
    pub async fn publish_delivery(
        &self,
        gateway_id: &str,
        payload: Bytes,
    ) -> Result<usize, StoreError> {
        limits::id("gateway id", gateway_id)?;
        limits::blob("payload", payload.len())?;
        match &self.backend {
            Backend::Embedded(b) => b.publish(format!("delivery:{gateway_id}"), payload),
            Backend::Redis(b) => b.publish(b.delivery_channel(gateway_id), payload).await,
        }
    }

    /// Subscribes to a gateway's delivery channel. Returns once the subscription is active: a
    /// payload published after this returns is delivered. The subscription survives Redis
    /// reconnects (messages published meanwhile are lost).
    pub async fn subscribe_delivery(&self, gateway_id: &str) -> Result<Subscription, StoreError> {
        limits::id("gateway id", gateway_id)?;
        match &self.backend {
            Backend::Embedded(b) => b.subscribe(format!("delivery:{gateway_id}")),
            Backend::Redis(b) => b.subscribe(b.delivery_channel(gateway_id)).await,
        }
    }

    /// Publishes a payload on a named event channel (e.g. presence events of an application:
    /// put the application id in the name). Returns the number of subscribers, as
    /// [`Store::publish_delivery`].
    pub async fn publish_event(&self, channel: &str, payload: Bytes) -> Result<usize, StoreError> {
        limits::id("channel", channel)?;
        limits::blob("payload", payload.len())?;
        match &self.backend {
            Backend::Embedded(b) => b.publish(format!("event:{channel}"), payload),
            Backend::Redis(b) => b.publish(b.event_channel(channel), payload).await,
        }
    }

    /// Subscribes to a named event channel, as [`Store::subscribe_delivery`].
    pub async fn subscribe_events(&self, channel: &str) -> Result<Subscription, StoreError> {
        limits::id("channel", channel)?;
        match &self.backend {
            Backend::Embedded(b) => b.subscribe(format!("event:{channel}")),
            Backend::Redis(b) => b.subscribe(b.event_channel(channel)).await,
        }
    }

    // ------------------------------------------------------------------------------ counters

    /// Adds `by` (may be negative) to a counter and returns the new value. Counters start at 0
    /// and never expire.
    pub async fn incr_counter(&self, name: &str, by: i64) -> Result<i64, StoreError> {
        limits::id("counter name", name)?;
        dispatch!(self.incr_counter(name, by))
    }

    /// The value of a counter (0 if never incremented).
    pub async fn get_counter(&self, name: &str) -> Result<i64, StoreError> {
        limits::id("counter name", name)?;
        dispatch!(self.get_counter(name))
    }

    /// Adds `by` to one field of a counter map (e.g. punch outcomes per NAT pair) and returns
    /// the field's new value. A map holds at most [`limits::MAX_COUNTER_MAP_FIELDS`] fields;
    /// adding a field to a full map fails with [`StoreError::InvalidInput`].
    pub async fn incr_counter_field(
        &self,
        map: &str,
        field: &str,
        by: i64,
    ) -> Result<i64, StoreError> {
        limits::id("counter map name", map)?;
        limits::id("counter field", field)?;
        dispatch!(self.incr_counter_field(map, field, by))
    }

    /// Every field of a counter map (empty if never incremented).
    pub async fn get_counter_map(&self, map: &str) -> Result<BTreeMap<String, i64>, StoreError> {
        limits::id("counter map name", map)?;
        dispatch!(self.get_counter_map(map))
    }

    // ------------------------------------------------------------------------------ ephemeral

    /// Stores a short-lived value for `ttl`, replacing any value under the key.
    pub async fn put_ephemeral(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let ttl = check_ephemeral(key, &value, ttl)?;
        dispatch!(self.put_ephemeral(key, value, ttl, false)).map(|_| ())
    }

    /// Stores many short-lived values with the same `ttl` in one round trip (a pipeline on one
    /// Redis; on a cluster, one command per key sent together, since the keys live in different
    /// slots). Not atomic: after an error some values may be stored. All keys and values are
    /// checked before anything is written; at most [`limits::MAX_BATCH`] at once.
    pub async fn put_ephemeral_many(
        &self,
        entries: &[(String, Bytes)],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if entries.len() > limits::MAX_BATCH {
            return Err(StoreError::invalid(format!(
                "ephemeral batch: {} entries, at most {} at once",
                entries.len(),
                limits::MAX_BATCH
            )));
        }
        let ttl_ms = limits::ttl(ttl)?;
        for (key, value) in entries {
            check_ephemeral_entry(key, value)?;
        }
        if entries.is_empty() {
            return Ok(());
        }
        dispatch!(self.put_ephemeral_many(entries, ttl_ms))
    }

    /// Stores a short-lived value only if the key holds none; true if it stored it.
    pub async fn put_ephemeral_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let ttl = check_ephemeral(key, &value, ttl)?;
        dispatch!(self.put_ephemeral(key, value, ttl, true))
    }

    /// The value under the key, if present and not expired.
    pub async fn get_ephemeral(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        limits::id("ephemeral key", key)?;
        dispatch!(self.get_ephemeral(key))
    }

    /// Atomically reads and deletes the value under the key: among concurrent callers (on any
    /// replica) exactly one gets it — a login challenge can be used once.
    pub async fn take_ephemeral(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        limits::id("ephemeral key", key)?;
        dispatch!(self.take_ephemeral(key))
    }

    /// Deletes the value under the key; true if one was present.
    pub async fn delete_ephemeral(&self, key: &str) -> Result<bool, StoreError> {
        limits::id("ephemeral key", key)?;
        dispatch!(self.delete_ephemeral(key))
    }

    // ------------------------------------------------------------------------------ replicas

    /// Registers (or refreshes) a replica of `role` for `ttl`; re-register before it lapses.
    pub async fn register_replica(
        &self,
        role: &str,
        replica_id: &str,
        info: &ReplicaInfo,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        limits::id("role", role)?;
        limits::id("replica id", replica_id)?;
        limits::text("advertised address", &info.advertised_addr)?;
        let metadata_len: usize = info.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if metadata_len > limits::MAX_TEXT_LEN {
            return Err(StoreError::invalid(format!(
                "replica metadata: larger than {} bytes",
                limits::MAX_TEXT_LEN
            )));
        }
        let ttl = limits::ttl(ttl)?;
        dispatch!(self.register_replica(role, replica_id, info, ttl))
    }

    /// Removes a replica registration (graceful shutdown); true if it was live.
    pub async fn deregister_replica(
        &self,
        role: &str,
        replica_id: &str,
    ) -> Result<bool, StoreError> {
        limits::id("role", role)?;
        limits::id("replica id", replica_id)?;
        dispatch!(self.deregister_replica(role, replica_id))
    }

    /// Live replicas of `role`, ordered by replica id (at most
    /// [`limits::MAX_REPLICAS_LISTED`]).
    pub async fn list_replicas(&self, role: &str) -> Result<Vec<Replica>, StoreError> {
        limits::id("role", role)?;
        dispatch!(self.list_replicas(role))
    }
}

/// The index member of `value` for `peer`: `value NUL peer` (values never contain NUL), so
/// that members sort by value, then peer.
pub(crate) fn index_member(value: &str, peer: &str) -> String {
    let mut m = String::with_capacity(value.len() + 1 + peer.len());
    m.push_str(value);
    m.push('\0');
    m.push_str(peer);
    m
}

/// Splits an index member into value and peer.
pub(crate) fn split_index_member(member: &str) -> Option<(&str, &str)> {
    member.split_once('\0')
}

fn decode_cursor(page: &PageRequest, kind: char) -> Result<Option<String>, StoreError> {
    page.cursor.as_ref().map(|c| c.decode(kind)).transpose()
}

fn make_page<T>(items: Vec<T>, next: Option<String>, kind: char) -> Page<T> {
    Page {
        items,
        next: next.map(|position| Cursor::encode(kind, &position)),
    }
}

fn check_app_peer(app_id: &str, peer_id: &str) -> Result<(), StoreError> {
    limits::id("app id", app_id)?;
    limits::id("peer id", peer_id)
}

fn check_app(app: &AppRecord) -> Result<(), StoreError> {
    limits::id("app id", &app.id)?;
    limits::text("display name", &app.display_name)?;
    limits::text("secret verifier", &app.secret_verifier)
}

fn check_peer(peer: &PeerRecord) -> Result<(), StoreError> {
    check_app_peer(&peer.app_id, &peer.peer_id)?;
    limits::id("gateway id", &peer.gateway_id)?;
    limits::text("session id", &peer.session_id)?;
    limits::text("reflexive address", &peer.reflexive_addr)?;
    if let Some(nat) = &peer.nat_behaviour {
        limits::text("NAT behaviour", nat)?;
    }
    limits::blob("extension", peer.extension.len())
}

fn check_ephemeral(key: &str, value: &Bytes, ttl: Duration) -> Result<u64, StoreError> {
    check_ephemeral_entry(key, value)?;
    limits::ttl(ttl)
}

fn check_ephemeral_entry(key: &str, value: &Bytes) -> Result<(), StoreError> {
    limits::id("ephemeral key", key)?;
    limits::blob("ephemeral value", value.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_sync<T: Send + Sync + Unpin + 'static>() {}

    /// Handlers (tonic, axum, spawned tasks) need `Send` futures and handles.
    #[test]
    fn handles_and_futures_are_send() {
        assert_send_sync::<Store>();
        assert_send_sync::<Subscription>();
        assert_send_sync::<StoreError>();
        let store = Store::embedded();
        let query = AttributeQuery::exact("k", "v");
        let attrs = Attributes::new();
        assert_send(&store.ping());
        assert_send(&store.put_peer(&peer_record(), Duration::from_secs(1)));
        assert_send(&store.query_attributes("a", &query, PageRequest::default()));
        assert_send(&store.publish_attributes("a", "p", &attrs, PublishMode::Merge));
        assert_send(&store.subscribe_delivery("g"));
        assert_send(&store.publish_delivery("g", Bytes::new()));
        assert_send(&store.list_peers("a", PageRequest::default()));
        assert_send(&store.take_ephemeral("k"));
        assert_send(&store.list_replicas("r"));
    }

    fn peer_record() -> PeerRecord {
        PeerRecord {
            peer_id: "p".into(),
            app_id: "a".into(),
            gateway_id: "g".into(),
            session_id: "s".into(),
            reflexive_addr: "x".into(),
            nat_behaviour: None,
            online_since: std::time::SystemTime::UNIX_EPOCH,
            extension: Bytes::new(),
        }
    }
}
