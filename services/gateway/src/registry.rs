//! The sessions attached to this gateway and who watches whose presence.
//!
//! Each attached session has an outbound queue of encoded `GatewayFrame`s (bounded: its depth is
//! the per-peer queue limit) drained by its connection task. Deliveries from anywhere — a local
//! sender, the Deliver gRPC service, presence events — go through [`Registry::deliver`], which
//! never waits: a full queue is refused (`QUEUE_FULL`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util_lite::Cancel;

/// A session's key: application id and peer id bytes.
pub type SessionKey = (String, [u8; 32]);

/// Why a frame could not be queued to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The peer has no session here.
    NotAttached,
    /// Its queue is full.
    Full,
}

/// One attached session.
#[derive(Debug, Clone)]
pub struct Attached {
    /// The connection's id (unique in this process).
    pub conn_id: u64,
    /// Its outbound queue.
    pub tx: mpsc::Sender<Bytes>,
    /// Cancelled to close the connection (kick, duplicate session).
    pub close: Cancel,
}

/// Sessions and presence watchers.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<SessionKey, Attached>>,
    /// (app, watched peer) → watching connections.
    watchers: Mutex<HashMap<SessionKey, HashMap<u64, mpsc::Sender<Bytes>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Registry {
    /// Attaches a session; returns the one it replaces (same peer logged in again here).
    pub fn attach(&self, key: SessionKey, attached: Attached) -> Option<Attached> {
        let previous = lock(&self.sessions).insert(key, attached);
        metrics::gauge!("qp_gateway_sessions").set(self.len() as f64);
        previous
    }

    /// Detaches a session if it is still the one of `conn_id`; true if it was.
    pub fn detach(&self, key: &SessionKey, conn_id: u64) -> bool {
        let mut sessions = lock(&self.sessions);
        let removed = match sessions.get(key) {
            Some(a) if a.conn_id == conn_id => sessions.remove(key).is_some(),
            _ => false,
        };
        let n = sessions.len();
        drop(sessions);
        metrics::gauge!("qp_gateway_sessions").set(n as f64);
        removed
    }

    /// Number of attached sessions.
    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Whether no session is attached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The attached session of a peer.
    pub fn get(&self, key: &SessionKey) -> Option<Attached> {
        lock(&self.sessions).get(key).cloned()
    }

    /// Queues an encoded frame to a peer attached here, without waiting.
    pub fn deliver(&self, key: &SessionKey, frame: Bytes) -> Result<(), QueueError> {
        let tx = self.get(key).ok_or(QueueError::NotAttached)?.tx;
        tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => QueueError::Full,
            mpsc::error::TrySendError::Closed(_) => QueueError::NotAttached,
        })
    }

    /// [`Registry::deliver`] as the status the Deliver service and the sender's gateway answer.
    pub fn deliver_status(
        &self,
        key: &SessionKey,
        frame: Bytes,
    ) -> quickp2p_proto::v1::DeliveryStatus {
        use quickp2p_proto::v1::DeliveryStatus;
        match self.deliver(key, frame) {
            Ok(()) => DeliveryStatus::Accepted,
            Err(QueueError::Full) => DeliveryStatus::QueueFull,
            Err(QueueError::NotAttached) => DeliveryStatus::NotAttached,
        }
    }

    /// Every attached session of an application (for broadcast).
    pub fn of_app(&self, app: &str) -> Vec<Attached> {
        lock(&self.sessions)
            .iter()
            .filter(|((a, _), _)| a == app)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Every attached session (shutdown).
    pub fn all(&self) -> Vec<Attached> {
        lock(&self.sessions).values().cloned().collect()
    }

    /// `conn_id` watches `watched`.
    pub fn watch(&self, watched: SessionKey, conn_id: u64, tx: mpsc::Sender<Bytes>) {
        lock(&self.watchers)
            .entry(watched)
            .or_default()
            .insert(conn_id, tx);
    }

    /// `conn_id` stops watching `watched`.
    pub fn unwatch(&self, watched: &SessionKey, conn_id: u64) {
        let mut watchers = lock(&self.watchers);
        if let Some(set) = watchers.get_mut(watched) {
            set.remove(&conn_id);
            if set.is_empty() {
                watchers.remove(watched);
            }
        }
    }

    /// Stops every watch of `conn_id` over `watched` keys.
    pub fn unwatch_all(&self, watched: &HashSet<SessionKey>, conn_id: u64) {
        for key in watched {
            self.unwatch(key, conn_id);
        }
    }

    /// Queues `frame` to every watcher of `watched`; returns how many got it.
    pub fn notify_watchers(&self, watched: &SessionKey, frame: &Bytes) -> usize {
        let targets: Vec<mpsc::Sender<Bytes>> = lock(&self.watchers)
            .get(watched)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        targets
            .into_iter()
            .filter(|tx| tx.try_send(frame.clone()).is_ok())
            .count()
    }
}

/// A tiny cancellation flag (a `Notify` plus a bit), enough to close a connection from outside.
pub mod tokio_util_lite {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::Notify;

    /// Cancelled once; waiters wake.
    #[derive(Debug, Clone, Default)]
    pub struct Cancel(Arc<(AtomicBool, Notify)>);

    impl Cancel {
        /// Cancels.
        pub fn cancel(&self) {
            self.0.0.store(true, Ordering::Release);
            self.0.1.notify_waiters();
        }

        /// Whether it was cancelled.
        pub fn is_cancelled(&self) -> bool {
            self.0.0.load(Ordering::Acquire)
        }

        /// Resolves once cancelled.
        pub async fn cancelled(&self) {
            loop {
                let notified = self.0.1.notified();
                if self.is_cancelled() {
                    return;
                }
                notified.await;
            }
        }
    }
}
