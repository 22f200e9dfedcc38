//! The pub/sub hub of the Redis backend: one dedicated RESP3 connection per [`crate::Store`]
//! (created on the first subscription) carries every subscription of the process, and fans the
//! received messages out to local [`Subscription`]s.
//!
//! - One Redis: a [`ConnectionManager`] with a push sender and automatic resubscription; classic
//!   `SUBSCRIBE`.
//! - Redis Cluster: a [`ClusterConnection`] with a push sender; sharded `SSUBSCRIBE`, routed to
//!   the node owning the channel's slot and resubscribed when slots move or nodes come back.
//!
//! Messages flowing through the hub task:
//! - push messages from the connection (`message`/`smessage` → the channel's local broadcast
//!   sender; `disconnect` and subscription confirmations are ignored — the client library
//!   reconnects and resubscribes by itself);
//! - release notices from dropped [`Subscription`]s (→ `UNSUBSCRIBE` when the last local
//!   subscriber of a channel went away).
//!
//! A second task pings over the connection every health-check interval: a reconnect is only
//! attempted when a command needs the connection, so without traffic a subscription-only
//! connection would never come back after Redis restarts.
//!
//! Several local subscriptions of one channel share one Redis subscription, so
//! `publish_delivery` counts subscribed *processes*, not local subscriptions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use super::conn::map_error;
use crate::StoreError;
use crate::subscription::{Release, SUBSCRIPTION_BUFFER, Subscription};

type Channels = Arc<Mutex<HashMap<String, broadcast::Sender<Bytes>>>>;

/// The subscription connection.
#[derive(Clone)]
pub(crate) enum PubSubConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl PubSubConn {
    async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Self::Single(c) => c.subscribe(channel).await,
            Self::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Self::Single(c) => c.unsubscribe(channel).await,
            Self::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }

    async fn ping(&mut self) -> RedisResult<()> {
        let ping = redis::cmd("PING");
        match self {
            Self::Single(c) => ping.query_async(c).await,
            Self::Cluster(c) => ping.query_async(c).await,
        }
    }
}

/// See the module documentation.
pub(crate) struct Hub {
    conn: PubSubConn,
    channels: Channels,
    /// Serializes (un)subscribe commands with the map updates they go with.
    ops: Arc<tokio::sync::Mutex<()>>,
    release_tx: mpsc::UnboundedSender<String>,
    timeout: Duration,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Hub {
    /// Starts the hub tasks on `conn`, whose push messages arrive on `pushes`.
    pub(crate) fn start(
        conn: PubSubConn,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
        timeout: Duration,
        health_check_interval: Duration,
    ) -> Self {
        let channels = Channels::default();
        let ops = Arc::new(tokio::sync::Mutex::new(()));
        let (release_tx, release_rx) = mpsc::unbounded_channel();
        let dispatcher = tokio::spawn(dispatch(
            pushes,
            release_rx,
            channels.clone(),
            ops.clone(),
            conn.clone(),
            timeout,
        ));
        let pinger = tokio::spawn(keep_alive(conn.clone(), timeout, health_check_interval));
        Self {
            conn,
            channels,
            ops,
            release_tx,
            timeout,
            tasks: vec![dispatcher, pinger],
        }
    }

    /// Subscribes to `channel`; returns once Redis confirmed the subscription (or one already
    /// existed), so that a message published afterwards is received.
    pub(crate) async fn subscribe(&self, channel: String) -> Result<Subscription, StoreError> {
        let _serial = self.ops.lock().await;
        let (rx, fresh) = {
            let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
            match channels.get(&channel) {
                Some(tx) => (tx.subscribe(), false),
                None => {
                    let (tx, rx) = broadcast::channel(SUBSCRIPTION_BUFFER);
                    channels.insert(channel.clone(), tx);
                    (rx, true)
                }
            }
        };
        if fresh {
            let mut conn = self.conn.clone();
            let result = tokio::time::timeout(self.timeout, conn.subscribe(&channel)).await;
            let error = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(map_error("subscribe", self.timeout, e)),
                Err(_) => Some(StoreError::Timeout {
                    op: "subscribe",
                    after: self.timeout,
                }),
            };
            if let Some(error) = error {
                self.channels
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&channel);
                return Err(error);
            }
        }
        Ok(Subscription::new(
            rx,
            Some(Release {
                channel,
                tx: self.release_tx.clone(),
            }),
        ))
    }
}

async fn dispatch(
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    mut releases: mpsc::UnboundedReceiver<String>,
    channels: Channels,
    ops: Arc<tokio::sync::Mutex<()>>,
    conn: PubSubConn,
    timeout: Duration,
) {
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let Some(push) = push else { break };
                deliver(&channels, push);
            }
            Some(channel) = releases.recv() => {
                tokio::spawn(release(channel, channels.clone(), ops.clone(), conn.clone(), timeout));
            }
        }
    }
}

fn deliver(channels: &Channels, push: PushInfo) {
    match push.kind {
        PushKind::Message | PushKind::SMessage => {
            let mut data = push.data.into_iter();
            let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                (data.next(), data.next())
            else {
                tracing::debug!("malformed pub/sub message ignored");
                return;
            };
            let channels = channels.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(tx) = std::str::from_utf8(&channel)
                .ok()
                .and_then(|c| channels.get(c))
            {
                // no receiver left: the release notice is on its way
                let _ = tx.send(Bytes::from(payload));
            }
        }
        PushKind::Disconnection => {
            tracing::warn!("pub/sub connection to Redis lost; reconnecting");
        }
        _ => {}
    }
}

async fn release(
    channel: String,
    channels: Channels,
    ops: Arc<tokio::sync::Mutex<()>>,
    mut conn: PubSubConn,
    timeout: Duration,
) {
    let _serial = ops.lock().await;
    let unused = {
        let mut channels = channels.lock().unwrap_or_else(PoisonError::into_inner);
        match channels.get(&channel) {
            Some(tx) if tx.receiver_count() == 0 => {
                channels.remove(&channel);
                true
            }
            _ => false,
        }
    };
    if unused {
        match tokio::time::timeout(timeout, conn.unsubscribe(&channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(%channel, error = %e, "unsubscribe failed"),
            Err(_) => tracing::debug!(%channel, "unsubscribe timed out"),
        }
    }
}

async fn keep_alive(mut conn: PubSubConn, timeout: Duration, every: Duration) {
    let mut healthy = true;
    loop {
        tokio::time::sleep(every).await;
        let ok = matches!(tokio::time::timeout(timeout, conn.ping()).await, Ok(Ok(())));
        if ok != healthy {
            if ok {
                tracing::info!("pub/sub connection to Redis is back");
            } else {
                tracing::warn!("pub/sub connection to Redis is down");
            }
            healthy = ok;
        }
    }
}
