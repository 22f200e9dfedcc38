//! The Redis backend: one Redis server (`redis://`, `rediss://`) or a Redis Cluster
//! (`redis+cluster://h1:p1,h2:p2` or several URLs), with the same code for both.
//!
//! Connections are opened lazily and re-opened by themselves: a [`ConnectionManager`] for one
//! server, a [`ClusterConnection`] (topology discovery, `MOVED`/`ASK` handling) for a cluster.
//! Every operation is bounded by [`RedisConfig::command_timeout`]; while Redis is unreachable
//! operations fail fast with [`StoreError::Unavailable`] (or [`StoreError::Timeout`]).
//! Multi-key updates are Lua scripts (see [`scripts`]); the key layout is documented in
//! [`keys`]. Requires Redis ≥ 6.2 (`GETDEL`, `SET … PXAT`); Redis Cluster ≥ 7.0 (sharded
//! pub/sub).

mod conn;
pub(crate) mod keys;
mod pubsub;
pub(crate) mod scripts;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, FromRedisValue, ProtocolVersion, RedisResult, ScriptInvocation};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{OnceCell, mpsc};

use self::conn::{Conn, Topology, map_error, parse_topology, redact_url};
use self::keys::Keys;
use self::pubsub::{Hub, PubSubConn};
use crate::embedded::{counter_map_full, peer_not_online};
use crate::limits::{self, MAX_COUNTER_MAP_FIELDS, MAX_REPLICAS_LISTED, SWEEP_BATCH};
use crate::model::{
    AppRecord, AttributeRecord, Attributes, BackendKind, PeerRecord, PublishMode, PublishOutcome,
    PublishedAttributes, Replica, ReplicaInfo,
};
use crate::subscription::Subscription;
use crate::{StoreError, split_index_member};

/// How to reach Redis. `Default` is the local development setup.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Where Redis is:
    /// - `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS) for one server;
    /// - `redis+cluster://[user:password@]host1:port1,host2:port2,…` (or `rediss+cluster://`)
    ///   for a Redis Cluster, given some of its nodes;
    /// - several `redis://` URLs separated by commas, also a cluster.
    ///
    /// Default `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prefix of every key and channel name, so several deployments (or tests) can share one
    /// Redis. Same rules as identifiers (no braces, no control characters). Default `qp`.
    pub key_prefix: String,
    /// Bound of one connection attempt. Default 1 s.
    pub connect_timeout: Duration,
    /// Bound of one store operation, including waiting for a reconnect. Default 1 s.
    pub command_timeout: Duration,
    /// How often the pub/sub connection is checked (and re-established after a loss).
    /// Default 1 s.
    pub health_check_interval: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "qp".into(),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            health_check_interval: Duration::from_secs(1),
        }
    }
}

impl RedisConfig {
    /// The default configuration with another URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// The same configuration with another key prefix.
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("health_check_interval", &self.health_check_interval)
            .finish()
    }
}

enum Commands {
    Single(ConnectionManager),
    Cluster {
        client: Box<ClusterClient>,
        conn: OnceCell<ClusterConnection>,
    },
}

/// The Redis backend. See the module documentation.
pub(crate) struct RedisBackend {
    config: RedisConfig,
    keys: Keys,
    topology: Topology,
    commands: Commands,
    hub: OnceCell<Hub>,
}

impl RedisBackend {
    pub(crate) fn open(config: RedisConfig) -> Result<Self, StoreError> {
        limits::id("key prefix", &config.key_prefix).map_err(|e| StoreError::Config {
            reason: e.to_string(),
        })?;
        for (name, value) in [
            ("connect_timeout", config.connect_timeout),
            ("command_timeout", config.command_timeout),
            ("health_check_interval", config.health_check_interval),
        ] {
            if value.is_zero() {
                return Err(StoreError::Config {
                    reason: format!("{name} is zero"),
                });
            }
        }
        let topology = parse_topology(&config.url)?;
        let commands = match &topology {
            Topology::Single(info) => {
                let client = Client::open((**info).clone()).map_err(config_error)?;
                let manager =
                    ConnectionManager::new_lazy_with_config(client, manager_config(&config))
                        .map_err(config_error)?;
                Commands::Single(manager)
            }
            Topology::Cluster(nodes) => Commands::Cluster {
                client: Box::new(
                    cluster_builder(nodes.clone(), &config)
                        .build()
                        .map_err(config_error)?,
                ),
                conn: OnceCell::new(),
            },
        };
        Ok(Self {
            keys: Keys::new(&config.key_prefix),
            config,
            topology,
            commands,
            hub: OnceCell::new(),
        })
    }

    pub(crate) fn kind(&self) -> BackendKind {
        match self.topology {
            Topology::Single(_) => BackendKind::Redis,
            Topology::Cluster(_) => BackendKind::RedisCluster,
        }
    }

    pub(crate) fn key_prefix(&self) -> &str {
        self.keys.prefix()
    }

    async fn conn(&self) -> RedisResult<Conn> {
        match &self.commands {
            Commands::Single(manager) => Ok(Conn::Single(manager.clone())),
            Commands::Cluster { client, conn } => conn
                .get_or_try_init(|| client.get_async_connection())
                .await
                .map(|c| Conn::Cluster(c.clone())),
        }
    }

    /// Runs `fut` within the command timeout, mapping errors.
    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let after = self.config.command_timeout;
        match tokio::time::timeout(after, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(map_error(op, after, e)),
            Err(_) => Err(StoreError::Timeout { op, after }),
        }
    }

    async fn query<T: FromRedisValue>(&self, op: &'static str, cmd: Cmd) -> Result<T, StoreError> {
        self.timed(op, async {
            let mut conn = self.conn().await?;
            cmd.query_async(&mut conn).await
        })
        .await
    }

    async fn invoke<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: ScriptInvocation<'static>,
    ) -> Result<T, StoreError> {
        self.timed(op, async {
            let mut conn = self.conn().await?;
            invocation.invoke_async(&mut conn).await
        })
        .await
    }

    async fn hub(&self) -> Result<&Hub, StoreError> {
        self.hub
            .get_or_try_init(|| async {
                let (tx, rx) = mpsc::unbounded_channel();
                let conn = self
                    .timed("subscribe", async {
                        match &self.topology {
                            Topology::Single(info) => {
                                let settings = info
                                    .redis_settings()
                                    .clone()
                                    .set_protocol(ProtocolVersion::RESP3);
                                let info = (**info).clone().set_redis_settings(settings);
                                let client = Client::open(info)?;
                                let config = manager_config(&self.config)
                                    .set_push_sender(tx)
                                    .set_automatic_resubscription();
                                let manager =
                                    ConnectionManager::new_lazy_with_config(client, config)?;
                                Ok(PubSubConn::Single(manager))
                            }
                            Topology::Cluster(nodes) => {
                                let client = cluster_builder(nodes.clone(), &self.config)
                                    .use_protocol(ProtocolVersion::RESP3)
                                    .push_sender(tx)
                                    .build()?;
                                Ok(PubSubConn::Cluster(client.get_async_connection().await?))
                            }
                        }
                    })
                    .await?;
                Ok(Hub::start(
                    conn,
                    rx,
                    self.config.command_timeout,
                    self.config.health_check_interval,
                ))
            })
            .await
    }

    // ---------------------------------------------------------------- health

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.query("ping", redis::cmd("PING")).await
    }

    // ---------------------------------------------------------------- applications

    pub(crate) async fn create_app(&self, app: &AppRecord) -> Result<(), StoreError> {
        let mut inv = scripts::PUT_APP.prepare_invoke();
        inv.key(self.keys.apps())
            .arg(&app.id)
            .arg(to_json(app)?)
            .arg("1");
        let created: i64 = self.invoke("create_app", inv).await?;
        if created == 0 {
            return Err(StoreError::Conflict {
                what: format!("application `{}` already exists", app.id),
            });
        }
        Ok(())
    }

    pub(crate) async fn put_app(&self, app: &AppRecord) -> Result<(), StoreError> {
        let mut inv = scripts::PUT_APP.prepare_invoke();
        inv.key(self.keys.apps())
            .arg(&app.id)
            .arg(to_json(app)?)
            .arg("0");
        let _: i64 = self.invoke("put_app", inv).await?;
        Ok(())
    }

    pub(crate) async fn get_app(&self, app: &str) -> Result<Option<AppRecord>, StoreError> {
        let key = format!("{}:rec", self.keys.apps());
        let mut cmd = redis::cmd("HGET");
        cmd.arg(&key).arg(app);
        let json: Option<String> = self.query("get_app", cmd).await?;
        json.map(|j| from_json(&key, &j)).transpose()
    }

    pub(crate) async fn list_apps(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<AppRecord>, Option<String>), StoreError> {
        let mut inv = scripts::LIST_APPS.prepare_invoke();
        inv.key(self.keys.apps()).arg(lex_after(after)).arg(limit);
        let reply: Vec<String> = self.invoke("list_apps", inv).await?;
        let key = format!("{}:rec", self.keys.apps());
        decode_page(reply, |json| from_json(&key, &json))
    }

    pub(crate) async fn delete_app(&self, app: &str) -> Result<bool, StoreError> {
        let mut inv = scripts::DELETE_APP.prepare_invoke();
        inv.key(self.keys.apps()).arg(app);
        let removed: i64 = self.invoke("delete_app", inv).await?;
        Ok(removed > 0)
    }

    // ---------------------------------------------------------------- presence

    pub(crate) async fn put_peer(
        &self,
        record: &PeerRecord,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let mut inv = scripts::PUT_PEER.prepare_invoke();
        inv.key(self.keys.app(&record.app_id))
            .arg(&record.peer_id)
            .arg(to_json(record)?)
            .arg(ttl_ms)
            .arg(SWEEP_BATCH);
        let _: i64 = self.invoke("put_peer", inv).await?;
        Ok(())
    }

    pub(crate) async fn get_peer(
        &self,
        app: &str,
        peer: &str,
    ) -> Result<Option<PeerRecord>, StoreError> {
        let key = self.keys.peer_record(app, peer);
        let mut cmd = redis::cmd("GET");
        cmd.arg(&key);
        let json: Option<String> = self.query("get_peer", cmd).await?;
        json.map(|j| from_json(&key, &j)).transpose()
    }

    pub(crate) async fn touch_peer(
        &self,
        app: &str,
        peer: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut inv = scripts::TOUCH_PEER.prepare_invoke();
        inv.key(self.keys.app(app))
            .arg(peer)
            .arg(ttl_ms)
            .arg(SWEEP_BATCH);
        let touched: i64 = self.invoke("touch_peer", inv).await?;
        Ok(touched == 1)
    }

    pub(crate) async fn remove_peer(&self, app: &str, peer: &str) -> Result<bool, StoreError> {
        let mut inv = scripts::REMOVE_PEER.prepare_invoke();
        inv.key(self.keys.app(app)).arg(peer);
        let removed: i64 = self.invoke("remove_peer", inv).await?;
        Ok(removed == 1)
    }

    pub(crate) async fn list_peers(
        &self,
        app: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<PeerRecord>, Option<String>), StoreError> {
        let mut inv = scripts::LIST_PEERS.prepare_invoke();
        inv.key(self.keys.app(app))
            .arg(after.unwrap_or(""))
            .arg(limit)
            .arg(limits::scan_budget(limit))
            .arg(SWEEP_BATCH);
        let reply: Vec<String> = self.invoke("list_peers", inv).await?;
        let key = format!("{}:peer:*", self.keys.app(app));
        decode_page(reply, |json| from_json(&key, &json))
    }

    pub(crate) async fn count_peers(&self, app: &str) -> Result<u64, StoreError> {
        let mut inv = scripts::COUNT_PEERS.prepare_invoke();
        inv.key(self.keys.app(app));
        self.invoke("count_peers", inv).await
    }

    pub(crate) async fn sweep_expired_peers(
        &self,
        app: &str,
        max: usize,
    ) -> Result<usize, StoreError> {
        let mut inv = scripts::SWEEP.prepare_invoke();
        inv.key(self.keys.app(app)).arg(max);
        self.invoke("sweep_expired_peers", inv).await
    }

    // ---------------------------------------------------------------- routes

    pub(crate) async fn set_route(
        &self,
        app: &str,
        peer: &str,
        gateway: &str,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.route(app, peer))
            .arg(gateway)
            .arg("PX")
            .arg(ttl_ms);
        self.query("set_route", cmd).await
    }

    pub(crate) async fn get_route(
        &self,
        app: &str,
        peer: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.keys.route(app, peer));
        self.query("get_route", cmd).await
    }

    pub(crate) async fn clear_route(
        &self,
        app: &str,
        peer: &str,
        gateway: &str,
    ) -> Result<bool, StoreError> {
        let mut inv = scripts::CLEAR_ROUTE.prepare_invoke();
        inv.key(self.keys.route(app, peer)).arg(gateway);
        let removed: i64 = self.invoke("clear_route", inv).await?;
        Ok(removed == 1)
    }

    // ---------------------------------------------------------------- attributes

    pub(crate) async fn publish_attributes(
        &self,
        app: &str,
        peer: &str,
        attrs: &Attributes,
        mode: PublishMode,
        max_attributes: usize,
    ) -> Result<PublishOutcome, StoreError> {
        let mut inv = scripts::PUBLISH_ATTRIBUTES.prepare_invoke();
        // 0 = no cap (usize::MAX would not survive Lua's doubles)
        let cap = if max_attributes >= 1 << 50 {
            0
        } else {
            max_attributes
        };
        inv.key(self.keys.app(app))
            .arg(peer)
            .arg(match mode {
                PublishMode::Replace => "r",
                PublishMode::Merge => "m",
            })
            .arg(SWEEP_BATCH)
            .arg(cap);
        for (key, value) in attrs {
            inv.arg(key).arg(value);
        }
        let reply: Vec<String> = self.invoke("publish_attributes", inv).await?;
        let where_ = || format!("{}:attrs:{peer}", self.keys.app(app));
        let mut it = reply.into_iter();
        match it.next().as_deref() {
            Some("ok") => Ok(PublishOutcome::Published(decode_published(it, &where_())?)),
            Some("offline") => Err(peer_not_online(app, peer)),
            Some("toomany") => {
                let would_hold = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| StoreError::corrupt(where_(), "bad publish reply"))?;
                Ok(PublishOutcome::TooManyAttributes { would_hold })
            }
            _ => Err(StoreError::corrupt(where_(), "bad publish reply")),
        }
    }

    pub(crate) async fn unpublish_attributes(
        &self,
        app: &str,
        peer: &str,
        keys: &[String],
    ) -> Result<usize, StoreError> {
        let mut inv = scripts::UNPUBLISH_ATTRIBUTES.prepare_invoke();
        inv.key(self.keys.app(app)).arg(peer).arg(SWEEP_BATCH);
        for key in keys {
            inv.arg(key);
        }
        self.invoke("unpublish_attributes", inv).await
    }

    pub(crate) async fn get_published(
        &self,
        app: &str,
        peer: &str,
    ) -> Result<Option<PublishedAttributes>, StoreError> {
        let mut inv = scripts::GET_ATTRIBUTES.prepare_invoke();
        inv.key(self.keys.app(app)).arg(peer);
        let flat: Option<Vec<String>> = self.invoke("get_peer_attributes", inv).await?;
        let where_ = format!("{}:attrs:{peer}", self.keys.app(app));
        flat.map(|flat| decode_published(flat.into_iter(), &where_))
            .transpose()
    }

    pub(crate) async fn query_attributes(
        &self,
        app: &str,
        key: &str,
        min: Vec<u8>,
        max: Vec<u8>,
        limit: usize,
        with_records: bool,
    ) -> Result<(Vec<AttributeRecord>, Option<String>), StoreError> {
        let mut inv = scripts::QUERY_ATTRIBUTES.prepare_invoke();
        inv.key(self.keys.app(app))
            .arg(key)
            .arg(min)
            .arg(max)
            .arg(limit)
            .arg(limits::scan_budget(limit))
            .arg(SWEEP_BATCH)
            .arg(if with_records { "1" } else { "0" });
        let reply: Vec<String> = self.invoke("query_attributes", inv).await?;
        let index = format!("{}:idx:{key}", self.keys.app(app));
        let mut it = reply.into_iter();
        let next = it.next().filter(|n| !n.is_empty());
        let mut items = Vec::new();
        while let Some(member) = it.next() {
            let (value, peer) = split_index_member(&member)
                .ok_or_else(|| StoreError::corrupt(&index, "index member without separator"))?;
            let published = if with_records {
                let n: usize = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| StoreError::corrupt(&index, "bad query reply"))?;
                let fields: Vec<String> = it.by_ref().take(n).collect();
                if fields.len() != n {
                    return Err(StoreError::corrupt(&index, "short query reply"));
                }
                decode_published(fields.into_iter(), &index)?
            } else {
                PublishedAttributes::default()
            };
            items.push(AttributeRecord {
                peer_id: peer.to_owned(),
                value: value.to_owned(),
                published,
            });
        }
        Ok((items, next))
    }

    // ---------------------------------------------------------------- pub/sub

    pub(crate) fn delivery_channel(&self, gateway: &str) -> String {
        self.keys.delivery_channel(gateway)
    }

    pub(crate) fn event_channel(&self, channel: &str) -> String {
        self.keys.event_channel(channel)
    }

    pub(crate) async fn publish(
        &self,
        channel: String,
        payload: Bytes,
    ) -> Result<usize, StoreError> {
        let mut cmd = redis::cmd(match self.topology {
            Topology::Single(_) => "PUBLISH",
            Topology::Cluster(_) => "SPUBLISH",
        });
        cmd.arg(channel).arg(payload.as_ref());
        self.query("publish", cmd).await
    }

    pub(crate) async fn subscribe(&self, channel: String) -> Result<Subscription, StoreError> {
        self.hub().await?.subscribe(channel).await
    }

    // ---------------------------------------------------------------- counters

    pub(crate) async fn incr_counter(&self, name: &str, by: i64) -> Result<i64, StoreError> {
        let mut cmd = redis::cmd("INCRBY");
        cmd.arg(self.keys.counter(name)).arg(by);
        self.query("incr_counter", cmd).await
    }

    pub(crate) async fn get_counter(&self, name: &str) -> Result<i64, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.keys.counter(name));
        let value: Option<i64> = self.query("get_counter", cmd).await?;
        Ok(value.unwrap_or(0))
    }

    pub(crate) async fn incr_counter_field(
        &self,
        map: &str,
        field: &str,
        by: i64,
    ) -> Result<i64, StoreError> {
        let mut inv = scripts::INCR_COUNTER_FIELD.prepare_invoke();
        inv.key(self.keys.counter_map(map))
            .arg(field)
            .arg(by)
            .arg(MAX_COUNTER_MAP_FIELDS);
        let reply: Vec<i64> = self.invoke("incr_counter_field", inv).await?;
        match reply.as_slice() {
            [1, value] => Ok(*value),
            _ => Err(counter_map_full(map)),
        }
    }

    pub(crate) async fn get_counter_map(
        &self,
        map: &str,
    ) -> Result<BTreeMap<String, i64>, StoreError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.keys.counter_map(map));
        self.query("get_counter_map", cmd).await
    }

    // ---------------------------------------------------------------- ephemeral

    pub(crate) async fn put_ephemeral(
        &self,
        key: &str,
        value: Bytes,
        ttl_ms: u64,
        only_if_absent: bool,
    ) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.ephemeral(key))
            .arg(value.as_ref())
            .arg("PX")
            .arg(ttl_ms);
        if only_if_absent {
            cmd.arg("NX");
        }
        let reply: Option<String> = self.query("put_ephemeral", cmd).await?;
        Ok(reply.is_some())
    }

    pub(crate) async fn put_ephemeral_many(
        &self,
        entries: &[(String, Bytes)],
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let set = |key: &str, value: &Bytes| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.keys.ephemeral(key))
                .arg(value.as_ref())
                .arg("PX")
                .arg(ttl_ms);
            cmd
        };
        if matches!(self.topology, Topology::Cluster(_)) {
            // the keys hash to different slots: one command each, all in flight together
            let writes = entries.iter().map(|(key, value)| {
                self.query::<Option<String>>("put_ephemeral_many", set(key, value))
            });
            for result in futures::future::join_all(writes).await {
                result?;
            }
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (key, value) in entries {
            pipe.add_command(set(key, value)).ignore();
        }
        self.timed("put_ephemeral_many", async {
            let mut conn = self.conn().await?;
            pipe.query_async::<()>(&mut conn).await
        })
        .await
    }

    pub(crate) async fn get_ephemeral(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.keys.ephemeral(key));
        let value: Option<Vec<u8>> = self.query("get_ephemeral", cmd).await?;
        Ok(value.map(Bytes::from))
    }

    pub(crate) async fn take_ephemeral(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(self.keys.ephemeral(key));
        let value: Option<Vec<u8>> = self.query("take_ephemeral", cmd).await?;
        Ok(value.map(Bytes::from))
    }

    pub(crate) async fn delete_ephemeral(&self, key: &str) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.keys.ephemeral(key));
        let removed: i64 = self.query("delete_ephemeral", cmd).await?;
        Ok(removed > 0)
    }

    // ---------------------------------------------------------------- replicas

    pub(crate) async fn register_replica(
        &self,
        role: &str,
        replica: &str,
        info: &ReplicaInfo,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let mut inv = scripts::REGISTER_REPLICA.prepare_invoke();
        inv.key(self.keys.replicas(role))
            .arg(replica)
            .arg(to_json(info)?)
            .arg(ttl_ms);
        let _: i64 = self.invoke("register_replica", inv).await?;
        Ok(())
    }

    pub(crate) async fn deregister_replica(
        &self,
        role: &str,
        replica: &str,
    ) -> Result<bool, StoreError> {
        let mut inv = scripts::DEREGISTER_REPLICA.prepare_invoke();
        inv.key(self.keys.replicas(role)).arg(replica);
        let removed: i64 = self.invoke("deregister_replica", inv).await?;
        Ok(removed == 1)
    }

    pub(crate) async fn list_replicas(&self, role: &str) -> Result<Vec<Replica>, StoreError> {
        let mut inv = scripts::LIST_REPLICAS.prepare_invoke();
        inv.key(self.keys.replicas(role)).arg(MAX_REPLICAS_LISTED);
        let flat: Vec<String> = self.invoke("list_replicas", inv).await?;
        let key = format!("{}:info", self.keys.replicas(role));
        let mut list = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(id), Some(json)) = (it.next(), it.next()) {
            list.push(Replica {
                replica_id: id,
                info: from_json(&key, &json)?,
            });
        }
        list.sort_by(|a, b| a.replica_id.cmp(&b.replica_id));
        Ok(list)
    }
}

fn manager_config(config: &RedisConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.command_timeout))
        // fail fast while Redis is down; the next operation starts a new attempt
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
}

fn cluster_builder(
    nodes: Vec<redis::ConnectionInfo>,
    config: &RedisConfig,
) -> ClusterClientBuilder {
    ClusterClient::builder(nodes)
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.command_timeout)
        .retries(3)
        .min_retry_wait(10)
        .max_retry_wait(200)
}

fn config_error(e: redis::RedisError) -> StoreError {
    StoreError::Config {
        reason: e.to_string(),
    }
}

/// The lexicographic lower bound of a listing after `after`.
fn lex_after(after: Option<&str>) -> String {
    match after {
        Some(position) => format!("({position}"),
        None => "-".to_owned(),
    }
}

/// Splits a script page reply `{next ('' = none), item...}`.
/// Decodes a record as the scripts' `published` returns it: updated ms ('0' = never), then
/// key, value, ...
fn decode_published(
    mut flat: impl Iterator<Item = String>,
    key: &str,
) -> Result<PublishedAttributes, StoreError> {
    let updated_ms: u64 = flat
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| StoreError::corrupt(key, "bad update time"))?;
    let mut attributes = Attributes::new();
    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
        attributes.insert(k, v);
    }
    Ok(PublishedAttributes {
        attributes,
        updated_at: (updated_ms > 0)
            .then(|| std::time::UNIX_EPOCH + Duration::from_millis(updated_ms)),
    })
}

fn decode_page<T>(
    reply: Vec<String>,
    decode: impl Fn(String) -> Result<T, StoreError>,
) -> Result<(Vec<T>, Option<String>), StoreError> {
    let mut it = reply.into_iter();
    let next = it.next().filter(|n| !n.is_empty());
    let items = it.map(decode).collect::<Result<Vec<_>, _>>()?;
    Ok((items, next))
}

fn to_json(value: &impl Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend {
        reason: format!("encoding a record: {e}"),
    })
}

fn from_json<T: DeserializeOwned>(key: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::corrupt(key, e))
}
