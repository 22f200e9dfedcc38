//! The sessions attached to this gateway and who watches whose presence.
//!
//! Each attached session is reached through its connection's [`ConnRef`]: frames queued to it
//! count against the per-peer queue depth until the endpoint task writes them to the peer's
//! stream. Deliveries from anywhere — a local sender, the Deliver gRPC service, presence events —
//! go through [`Registry::deliver`], which never waits: a full queue is refused (`QUEUE_FULL`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use bytes::Bytes;

use crate::endpoint::ConnRef;

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
    /// Its connection: queue frames to the peer, close it (kick, duplicate session).
    pub conn: ConnRef,
}

/// Sessions and presence watchers.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<SessionKey, Attached>>,
    /// (app, watched peer) → watching connections.
    watchers: Mutex<HashMap<SessionKey, HashMap<u64, ConnRef>>>,
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
            Some(a) if a.conn.id() == conn_id => sessions.remove(key).is_some(),
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
        // pushing never waits: done under the lock, without cloning the handle
        lock(&self.sessions)
            .get(key)
            .ok_or(QueueError::NotAttached)?
            .conn
            .push(frame)
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

    /// `conn` watches `watched`.
    pub fn watch(&self, watched: SessionKey, conn: ConnRef) {
        lock(&self.watchers)
            .entry(watched)
            .or_default()
            .insert(conn.id(), conn);
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
        let targets: Vec<ConnRef> = lock(&self.watchers)
            .get(watched)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        targets
            .into_iter()
            .filter(|conn| conn.push(frame.clone()).is_ok())
            .count()
    }
}
