//! The embedded backend: all state in this process, behind one mutex, with the same semantics as
//! the Redis backend (TTL expiry, lazy purge of expired peers and their attributes, stable
//! orders, cursors) so that the all-in-one supernode runs without Redis.
//!
//! Deadlines use [`tokio::time::Instant`], so tests of services built on the embedded store can
//! drive expiry with `tokio::time::pause()` / `advance()`. Every expiring family keeps an ordered
//! set of deadlines and is swept when touched, so memory stays bounded by live data plus what
//! expired since the last access. Pub/sub uses one [`tokio::sync::broadcast`] channel per channel
//! name. The mutex is never held across an `.await`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::limits::{MAX_COUNTER_MAP_FIELDS, MAX_REPLICAS_LISTED};
use crate::model::{
    AppRecord, AttributeRecord, Attributes, PeerRecord, PublishMode, PublishOutcome,
    PublishedAttributes, Replica, ReplicaInfo, ValueMatch, truncate_ms,
};
use crate::subscription::{SUBSCRIPTION_BUFFER, Subscription};
use crate::{StoreError, index_member, split_index_member};

/// The in-process backend. See the module documentation.
#[derive(Default)]
pub(crate) struct EmbeddedBackend {
    state: Mutex<State>,
    channels: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
}

#[derive(Default)]
struct State {
    apps: BTreeMap<String, AppRecord>,
    tenants: HashMap<String, Tenant>,
    counters: HashMap<String, i64>,
    counter_maps: HashMap<String, BTreeMap<String, i64>>,
    ephemeral: Expiring<String, Bytes>,
    replicas: HashMap<String, Expiring<String, ReplicaInfo>>,
}

/// A map whose entries expire, with an ordered deadline set for cheap sweeping.
struct Expiring<K, V> {
    entries: HashMap<K, (V, Instant)>,
    deadlines: BTreeSet<(Instant, K)>,
}

impl<K, V> Default for Expiring<K, V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Ord, V> Expiring<K, V> {
    fn sweep(&mut self, now: Instant) {
        while let Some((deadline, _)) = self.deadlines.first() {
            if *deadline > now {
                break;
            }
            if let Some((_, key)) = self.deadlines.pop_first() {
                self.entries.remove(&key);
            }
        }
    }

    fn insert(&mut self, key: K, value: V, deadline: Instant) {
        if let Some((_, old)) = self.entries.insert(key.clone(), (value, deadline)) {
            self.deadlines.remove(&(old, key.clone()));
        }
        self.deadlines.insert((deadline, key));
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let (value, deadline) = self.entries.remove(key)?;
        self.deadlines.remove(&(deadline, key.clone()));
        Some(value)
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(v, _)| v)
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Everything one application owns.
#[derive(Default)]
struct Tenant {
    peers: BTreeMap<String, PeerEntry>,
    deadlines: BTreeSet<(Instant, String)>,
    /// attribute key → index members (`value NUL peer`), the same encoding as in Redis.
    index: HashMap<String, BTreeSet<String>>,
    routes: Expiring<String, String>,
}

struct PeerEntry {
    record: PeerRecord,
    deadline: Instant,
    attrs: Attributes,
    /// When `attrs` last changed (publish or unpublish) during this presence.
    updated_at: Option<std::time::SystemTime>,
}

impl PeerEntry {
    fn published(&self) -> PublishedAttributes {
        PublishedAttributes {
            attributes: self.attrs.clone(),
            updated_at: self.updated_at,
        }
    }
}

/// Now, with the millisecond precision both backends store.
fn now_ms() -> std::time::SystemTime {
    truncate_ms(std::time::SystemTime::now())
}

impl Tenant {
    fn sweep(&mut self, now: Instant, max: usize) -> usize {
        self.routes.sweep(now);
        let mut purged = 0;
        while purged < max {
            let Some((deadline, peer)) = self.deadlines.first() else {
                break;
            };
            if *deadline > now {
                break;
            }
            let peer = peer.clone();
            self.purge(&peer);
            purged += 1;
        }
        purged
    }

    fn purge(&mut self, peer: &str) -> bool {
        let Some(entry) = self.peers.remove(peer) else {
            return false;
        };
        self.deadlines.remove(&(entry.deadline, peer.to_owned()));
        for (key, value) in &entry.attrs {
            self.unindex(key, value, peer);
        }
        true
    }

    fn unindex(&mut self, key: &str, value: &str, peer: &str) {
        if let Some(set) = self.index.get_mut(key) {
            set.remove(&index_member(value, peer));
            if set.is_empty() {
                self.index.remove(key);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.peers.is_empty() && self.routes.is_empty()
    }
}

impl State {
    /// Runs `f` on the (swept) tenant of `app`, dropping the tenant afterwards if it is empty.
    fn tenant<R>(&mut self, app: &str, f: impl FnOnce(&mut Tenant, Instant) -> R) -> R {
        let now = Instant::now();
        let tenant = self.tenants.entry(app.to_owned()).or_default();
        tenant.sweep(now, usize::MAX);
        let result = f(tenant, now);
        if tenant.is_empty() {
            self.tenants.remove(app);
        }
        result
    }
}

fn deadline(now: Instant, ttl_ms: u64) -> Instant {
    now + Duration::from_millis(ttl_ms)
}

/// Pages through an ordered iterator of `(position, item)`: at most `limit` items, and the
/// position of the last one when more follow.
fn page<T>(mut iter: impl Iterator<Item = (String, T)>, limit: usize) -> (Vec<T>, Option<String>) {
    let mut items = Vec::new();
    let mut last = None;
    for (position, item) in iter.by_ref() {
        items.push(item);
        last = Some(position);
        if items.len() == limit {
            break;
        }
    }
    let more = items.len() == limit && iter.next().is_some();
    (items, if more { last } else { None })
}

fn after_bound(after: Option<&str>) -> Bound<String> {
    match after {
        Some(pos) => Bound::Excluded(pos.to_owned()),
        None => Bound::Unbounded,
    }
}

impl EmbeddedBackend {
    fn state(&self) -> MutexGuard<'_, State> {
        // a panic while holding the lock leaves consistent data (every mutation is completed
        // before any call that could panic), so poisoning is ignored
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    // ---------------------------------------------------------------- applications

    pub(crate) fn create_app(&self, app: &AppRecord) -> Result<(), StoreError> {
        let mut state = self.state();
        if state.apps.contains_key(&app.id) {
            return Err(StoreError::Conflict {
                what: format!("application `{}` already exists", app.id),
            });
        }
        state.apps.insert(app.id.clone(), normalized_app(app));
        Ok(())
    }

    pub(crate) fn put_app(&self, app: &AppRecord) -> Result<(), StoreError> {
        self.state()
            .apps
            .insert(app.id.clone(), normalized_app(app));
        Ok(())
    }

    pub(crate) fn get_app(&self, app: &str) -> Result<Option<AppRecord>, StoreError> {
        Ok(self.state().apps.get(app).cloned())
    }

    pub(crate) fn list_apps(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<AppRecord>, Option<String>), StoreError> {
        let state = self.state();
        let iter = state
            .apps
            .range((after_bound(after), Bound::Unbounded))
            .map(|(id, rec)| (id.clone(), rec.clone()));
        Ok(page(iter, limit))
    }

    pub(crate) fn delete_app(&self, app: &str) -> Result<bool, StoreError> {
        Ok(self.state().apps.remove(app).is_some())
    }

    // ---------------------------------------------------------------- presence

    pub(crate) fn put_peer(&self, record: &PeerRecord, ttl_ms: u64) -> Result<(), StoreError> {
        let mut record = record.clone();
        record.online_since = truncate_ms(record.online_since);
        let app = record.app_id.clone();
        self.state().tenant(&app, |t, now| {
            let peer = record.peer_id.clone();
            let deadline = deadline(now, ttl_ms);
            // expired incarnations were purged by the sweep, so a present entry is live: keep
            // its attributes
            let (attrs, updated_at) = match t.peers.remove(&peer) {
                Some(old) => {
                    t.deadlines.remove(&(old.deadline, peer.clone()));
                    (old.attrs, old.updated_at)
                }
                None => (Attributes::new(), None),
            };
            t.deadlines.insert((deadline, peer.clone()));
            t.peers.insert(
                peer,
                PeerEntry {
                    record,
                    deadline,
                    attrs,
                    updated_at,
                },
            );
        });
        Ok(())
    }

    pub(crate) fn get_peer(&self, app: &str, peer: &str) -> Result<Option<PeerRecord>, StoreError> {
        Ok(self
            .state()
            .tenant(app, |t, _| t.peers.get(peer).map(|e| e.record.clone())))
    }

    pub(crate) fn touch_peer(
        &self,
        app: &str,
        peer: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        Ok(self.state().tenant(app, |t, now| {
            let Some(entry) = t.peers.get_mut(peer) else {
                return false;
            };
            let old = entry.deadline;
            entry.deadline = deadline(now, ttl_ms);
            let new = entry.deadline;
            t.deadlines.remove(&(old, peer.to_owned()));
            t.deadlines.insert((new, peer.to_owned()));
            true
        }))
    }

    pub(crate) fn remove_peer(&self, app: &str, peer: &str) -> Result<bool, StoreError> {
        Ok(self.state().tenant(app, |t, _| t.purge(peer)))
    }

    pub(crate) fn list_peers(
        &self,
        app: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<PeerRecord>, Option<String>), StoreError> {
        Ok(self.state().tenant(app, |t, _| {
            let iter = t
                .peers
                .range((after_bound(after), Bound::Unbounded))
                .map(|(id, e)| (id.clone(), e.record.clone()));
            page(iter, limit)
        }))
    }

    pub(crate) fn count_peers(&self, app: &str) -> Result<u64, StoreError> {
        Ok(self
            .state()
            .tenant(app, |t, _| u64::try_from(t.peers.len()).unwrap_or(u64::MAX)))
    }

    pub(crate) fn sweep_expired_peers(&self, app: &str, max: usize) -> Result<usize, StoreError> {
        let mut state = self.state();
        let now = Instant::now();
        let Some(tenant) = state.tenants.get_mut(app) else {
            return Ok(0);
        };
        let purged = tenant.sweep(now, max);
        if tenant.is_empty() {
            state.tenants.remove(app);
        }
        Ok(purged)
    }

    // ---------------------------------------------------------------- routes

    pub(crate) fn set_route(
        &self,
        app: &str,
        peer: &str,
        gateway: &str,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        self.state().tenant(app, |t, now| {
            t.routes
                .insert(peer.to_owned(), gateway.to_owned(), deadline(now, ttl_ms));
        });
        Ok(())
    }

    pub(crate) fn get_route(&self, app: &str, peer: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .state()
            .tenant(app, |t, _| t.routes.get(&peer.to_owned()).cloned()))
    }

    pub(crate) fn clear_route(
        &self,
        app: &str,
        peer: &str,
        gateway: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.state().tenant(app, |t, _| {
            let key = peer.to_owned();
            if t.routes.get(&key).is_some_and(|g| g == gateway) {
                t.routes.remove(&key);
                true
            } else {
                false
            }
        }))
    }

    // ---------------------------------------------------------------- attributes

    pub(crate) fn publish_attributes(
        &self,
        app: &str,
        peer: &str,
        attrs: &Attributes,
        mode: PublishMode,
        max_attributes: usize,
    ) -> Result<PublishOutcome, StoreError> {
        self.state().tenant(app, |t, _| {
            let Some(entry) = t.peers.get_mut(peer) else {
                return Err(peer_not_online(app, peer));
            };
            let would_hold = match mode {
                PublishMode::Replace => attrs.len(),
                PublishMode::Merge => {
                    entry.attrs.len()
                        + attrs
                            .keys()
                            .filter(|k| !entry.attrs.contains_key(*k))
                            .count()
                }
            };
            if would_hold > max_attributes {
                return Ok(PublishOutcome::TooManyAttributes { would_hold });
            }
            let old = match mode {
                PublishMode::Replace => std::mem::take(&mut entry.attrs),
                PublishMode::Merge => attrs
                    .keys()
                    .filter_map(|k| entry.attrs.remove(k).map(|v| (k.clone(), v)))
                    .collect(),
            };
            entry.attrs.extend(attrs.clone());
            entry.updated_at = Some(now_ms());
            let published = entry.published();
            for (key, value) in &old {
                t.unindex(key, value, peer);
            }
            for (key, value) in attrs {
                t.index
                    .entry(key.clone())
                    .or_default()
                    .insert(index_member(value, peer));
            }
            Ok(PublishOutcome::Published(published))
        })
    }

    pub(crate) fn unpublish_attributes(
        &self,
        app: &str,
        peer: &str,
        keys: &[String],
    ) -> Result<usize, StoreError> {
        Ok(self.state().tenant(app, |t, _| {
            let Some(entry) = t.peers.get_mut(peer) else {
                return 0;
            };
            let removed: Vec<(String, String)> = keys
                .iter()
                .filter_map(|k| entry.attrs.remove(k).map(|v| (k.clone(), v)))
                .collect();
            if !removed.is_empty() {
                entry.updated_at = Some(now_ms());
            }
            for (key, value) in &removed {
                t.unindex(key, value, peer);
            }
            removed.len()
        }))
    }

    pub(crate) fn get_published(
        &self,
        app: &str,
        peer: &str,
    ) -> Result<Option<PublishedAttributes>, StoreError> {
        Ok(self
            .state()
            .tenant(app, |t, _| t.peers.get(peer).map(PeerEntry::published)))
    }

    pub(crate) fn query_attributes(
        &self,
        app: &str,
        key: &str,
        matching: &ValueMatch,
        after: Option<&str>,
        limit: usize,
        with_records: bool,
    ) -> Result<(Vec<AttributeRecord>, Option<String>), StoreError> {
        Ok(self.state().tenant(app, |t, _| {
            let Some(set) = t.index.get(key) else {
                return (Vec::new(), None);
            };
            let (lower, prefix) = match matching {
                // members of value v are `v NUL peer`: they sort between `v NUL` and `v \x01`
                ValueMatch::Exact(v) => (format!("{v}\0"), format!("{v}\0")),
                ValueMatch::Prefix(p) => (p.clone(), p.clone()),
            };
            let lower = match after {
                Some(pos) if pos.as_bytes() >= lower.as_bytes() => Bound::Excluded(pos.to_owned()),
                _ => Bound::Included(lower),
            };
            let peers = &t.peers;
            let iter = set
                .range((lower, Bound::Unbounded))
                .take_while(|m| m.starts_with(&prefix))
                .filter_map(|m| {
                    let (value, peer) = split_index_member(m)?;
                    let published = if with_records {
                        peers.get(peer).map(PeerEntry::published)?
                    } else {
                        PublishedAttributes::default()
                    };
                    Some((
                        m.clone(),
                        AttributeRecord {
                            peer_id: peer.to_owned(),
                            value: value.to_owned(),
                            published,
                        },
                    ))
                });
            page(iter, limit)
        }))
    }

    // ---------------------------------------------------------------- pub/sub

    pub(crate) fn publish(&self, channel: String, payload: Bytes) -> Result<usize, StoreError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(tx) = channels.get(&channel) else {
            return Ok(0);
        };
        match tx.send(payload) {
            Ok(receivers) => Ok(receivers),
            Err(_) => {
                channels.remove(&channel);
                Ok(0)
            }
        }
    }

    pub(crate) fn subscribe(&self, channel: String) -> Result<Subscription, StoreError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        channels.retain(|_, tx| tx.receiver_count() > 0);
        let tx = channels
            .entry(channel)
            .or_insert_with(|| broadcast::channel(SUBSCRIPTION_BUFFER).0);
        Ok(Subscription::new(tx.subscribe(), None))
    }

    // ---------------------------------------------------------------- counters

    pub(crate) fn incr_counter(&self, name: &str, by: i64) -> Result<i64, StoreError> {
        let mut state = self.state();
        let counter = state.counters.entry(name.to_owned()).or_insert(0);
        *counter = counter.checked_add(by).ok_or_else(overflow)?;
        Ok(*counter)
    }

    pub(crate) fn get_counter(&self, name: &str) -> Result<i64, StoreError> {
        Ok(self.state().counters.get(name).copied().unwrap_or(0))
    }

    pub(crate) fn incr_counter_field(
        &self,
        map: &str,
        field: &str,
        by: i64,
    ) -> Result<i64, StoreError> {
        let mut state = self.state();
        let fields = state.counter_maps.entry(map.to_owned()).or_default();
        if !fields.contains_key(field) && fields.len() >= MAX_COUNTER_MAP_FIELDS {
            return Err(counter_map_full(map));
        }
        let counter = fields.entry(field.to_owned()).or_insert(0);
        *counter = counter.checked_add(by).ok_or_else(overflow)?;
        Ok(*counter)
    }

    pub(crate) fn get_counter_map(&self, map: &str) -> Result<BTreeMap<String, i64>, StoreError> {
        Ok(self
            .state()
            .counter_maps
            .get(map)
            .cloned()
            .unwrap_or_default())
    }

    // ---------------------------------------------------------------- ephemeral

    pub(crate) fn put_ephemeral(
        &self,
        key: &str,
        value: Bytes,
        ttl_ms: u64,
        only_if_absent: bool,
    ) -> Result<bool, StoreError> {
        let mut state = self.state();
        let now = Instant::now();
        state.ephemeral.sweep(now);
        if only_if_absent && state.ephemeral.get(&key.to_owned()).is_some() {
            return Ok(false);
        }
        state
            .ephemeral
            .insert(key.to_owned(), value, deadline(now, ttl_ms));
        Ok(true)
    }

    pub(crate) fn put_ephemeral_many(
        &self,
        entries: &[(String, Bytes)],
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        let now = Instant::now();
        state.ephemeral.sweep(now);
        for (key, value) in entries {
            state
                .ephemeral
                .insert(key.clone(), value.clone(), deadline(now, ttl_ms));
        }
        Ok(())
    }

    pub(crate) fn get_ephemeral(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let mut state = self.state();
        state.ephemeral.sweep(Instant::now());
        Ok(state.ephemeral.get(&key.to_owned()).cloned())
    }

    pub(crate) fn take_ephemeral(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let mut state = self.state();
        state.ephemeral.sweep(Instant::now());
        Ok(state.ephemeral.remove(&key.to_owned()))
    }

    pub(crate) fn delete_ephemeral(&self, key: &str) -> Result<bool, StoreError> {
        let mut state = self.state();
        state.ephemeral.sweep(Instant::now());
        Ok(state.ephemeral.remove(&key.to_owned()).is_some())
    }

    // ---------------------------------------------------------------- replicas

    pub(crate) fn register_replica(
        &self,
        role: &str,
        replica: &str,
        info: &ReplicaInfo,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        let now = Instant::now();
        let replicas = state.replicas.entry(role.to_owned()).or_default();
        replicas.sweep(now);
        replicas.insert(replica.to_owned(), info.clone(), deadline(now, ttl_ms));
        Ok(())
    }

    pub(crate) fn deregister_replica(&self, role: &str, replica: &str) -> Result<bool, StoreError> {
        let mut state = self.state();
        let now = Instant::now();
        let Some(replicas) = state.replicas.get_mut(role) else {
            return Ok(false);
        };
        replicas.sweep(now);
        let removed = replicas.remove(&replica.to_owned()).is_some();
        if replicas.is_empty() {
            state.replicas.remove(role);
        }
        Ok(removed)
    }

    pub(crate) fn list_replicas(&self, role: &str) -> Result<Vec<Replica>, StoreError> {
        let mut state = self.state();
        let Some(replicas) = state.replicas.get_mut(role) else {
            return Ok(Vec::new());
        };
        replicas.sweep(Instant::now());
        let mut list: Vec<Replica> = replicas
            .entries
            .iter()
            .map(|(id, (info, _))| Replica {
                replica_id: id.clone(),
                info: info.clone(),
            })
            .collect();
        list.sort_by(|a, b| a.replica_id.cmp(&b.replica_id));
        list.truncate(MAX_REPLICAS_LISTED);
        Ok(list)
    }
}

fn normalized_app(app: &AppRecord) -> AppRecord {
    let mut app = app.clone();
    app.created_at = truncate_ms(app.created_at);
    app
}

pub(crate) fn peer_not_online(app: &str, peer: &str) -> StoreError {
    StoreError::NotFound {
        what: format!("peer `{peer}` of application `{app}` is not online"),
    }
}

pub(crate) fn counter_map_full(map: &str) -> StoreError {
    StoreError::invalid(format!(
        "counter map `{map}` already has {MAX_COUNTER_MAP_FIELDS} fields"
    ))
}

fn overflow() -> StoreError {
    StoreError::invalid("counter would overflow")
}
