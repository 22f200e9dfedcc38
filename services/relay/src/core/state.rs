//! What every worker's [`TurnServer`](super::TurnServer), every allocation's peer-side task and
//! the control API share: the configuration, the clocks, the nonce key, per-user accounting
//! (quota and bandwidth), the capacity and drain state, the directory of live allocations, and
//! the counters. Locks here are taken when allocations come and go, not per datagram (except a
//! user's token bucket, and only when a bandwidth limit is configured).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::counters::{Refusal, RelayCounters};
use crate::peer_policy::RelaySelf;

use super::allocation::AllocationInfo;

/// Locks a mutex, ignoring poisoning (the data stays consistent: every critical section here is
/// a few assignments that cannot panic halfway).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Network time as a function of the monotonic `now` the core is given: `unix(now)` =
/// `unix_at_epoch + (now - epoch)`. Tests pick both, so expiry of usernames and nonces is
/// deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    epoch: Instant,
    unix_at_epoch: Duration,
}

impl Clock {
    /// A clock where `epoch` is `unix_at_epoch` after 1970.
    pub const fn new(epoch: Instant, unix_at_epoch: Duration) -> Clock {
        Clock {
            epoch,
            unix_at_epoch,
        }
    }

    /// The system's clocks now.
    pub fn system() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock::new(Instant::now(), unix)
    }

    /// Network time at `now`, since the Unix epoch.
    pub fn unix(&self, now: Instant) -> Duration {
        self.unix_at_epoch
            .saturating_add(now.saturating_duration_since(self.epoch))
    }

    /// Network time at `now` in milliseconds.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        u64::try_from(self.unix(now).as_millis()).unwrap_or(u64::MAX)
    }
}

/// A token bucket in bytes.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    depth: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    fn take(&mut self, bytes: usize, now: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.depth);
        }
        self.last = Some(now);
        let need = bytes as f64;
        if self.tokens >= need {
            self.tokens -= need;
            true
        } else {
            false
        }
    }
}

/// One user (the peer id part of TURN usernames): its live allocations and bandwidth budget.
#[derive(Debug)]
pub struct UserEntry {
    name: Arc<str>,
    allocations: AtomicUsize,
    bucket: Option<Mutex<TokenBucket>>,
}

impl UserEntry {
    /// The user's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Live allocations of this user.
    pub fn allocations(&self) -> usize {
        self.allocations.load(Ordering::Relaxed)
    }

    /// Whether `bytes` more may be relayed for this user at `now` (always, without a limit).
    pub fn allow(&self, bytes: usize, now: Instant) -> bool {
        match &self.bucket {
            None => true,
            Some(bucket) => lock(bucket).take(bytes, now),
        }
    }
}

/// The state shared by every part of one relay.
#[derive(Debug)]
pub struct RelayState {
    config: Arc<Config>,
    relay_self: RelaySelf,
    clock: Clock,
    nonce_key: [u8; 32],
    live: AtomicUsize,
    draining: AtomicBool,
    users: Mutex<HashMap<Arc<str>, Arc<UserEntry>>>,
    directory: Mutex<BTreeMap<SocketAddr, Arc<AllocationInfo>>>,
    counters: RelayCounters,
}

impl RelayState {
    /// Shared state for `config`, with `clock` and a random `nonce_key` (tests pass fixed ones).
    pub fn new(config: Arc<Config>, clock: Clock, nonce_key: [u8; 32]) -> RelayState {
        RelayState {
            relay_self: config.relay_self(),
            config,
            clock,
            nonce_key,
            live: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            users: Mutex::new(HashMap::new()),
            directory: Mutex::new(BTreeMap::new()),
            counters: RelayCounters::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The relay's own addresses (peer policy).
    pub fn relay_self(&self) -> &RelaySelf {
        &self.relay_self
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub(crate) fn nonce_key(&self) -> &[u8; 32] {
        &self.nonce_key
    }

    /// The counters.
    pub fn counters(&self) -> &RelayCounters {
        &self.counters
    }

    /// Live allocations.
    pub fn allocations(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Whether new allocations are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts (`true`) or stops draining.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
        self.counters.set_draining(draining);
    }

    /// Reserves an allocation slot for `user`: refuses while draining (508), at capacity (508),
    /// or at the user's quota (486).
    pub(crate) fn reserve(&self, user: &str) -> Result<Arc<UserEntry>, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        let mut users = lock(&self.users);
        if self.live.load(Ordering::Relaxed) >= self.config.capacity as usize {
            return Err(Refusal::InsufficientCapacity);
        }
        let entry = match users.get(user) {
            Some(e) => Arc::clone(e),
            None => {
                let name: Arc<str> = Arc::from(user);
                let bucket = (self.config.user_bandwidth > 0).then(|| {
                    Mutex::new(TokenBucket {
                        rate: self.config.user_bandwidth as f64,
                        depth: self.config.user_burst.max(self.config.max_payload as u64) as f64,
                        tokens: self.config.user_burst.max(self.config.max_payload as u64) as f64,
                        last: None,
                    })
                });
                let e = Arc::new(UserEntry {
                    name: Arc::clone(&name),
                    allocations: AtomicUsize::new(0),
                    bucket,
                });
                users.insert(name, Arc::clone(&e));
                e
            }
        };
        if entry.allocations() >= self.config.user_quota as usize {
            return Err(Refusal::QuotaExceeded);
        }
        entry.allocations.fetch_add(1, Ordering::Relaxed);
        self.live.fetch_add(1, Ordering::Relaxed);
        Ok(entry)
    }

    /// Gives back a slot taken by [`RelayState::reserve`].
    pub(crate) fn release(&self, user: &UserEntry) {
        let mut users = lock(&self.users);
        self.live.fetch_sub(1, Ordering::Relaxed);
        if user.allocations.fetch_sub(1, Ordering::Relaxed) <= 1 {
            users.remove(user.name());
        }
    }

    pub(crate) fn insert_directory(&self, info: Arc<AllocationInfo>) {
        lock(&self.directory).insert(info.relayed, info);
    }

    pub(crate) fn remove_directory(&self, relayed: SocketAddr) {
        lock(&self.directory).remove(&relayed);
    }

    /// The live allocations ordered by relayed address, from just after `after`, at most `limit`.
    pub fn list_allocations(
        &self,
        after: Option<SocketAddr>,
        limit: usize,
        filter: impl Fn(&AllocationInfo) -> bool,
    ) -> Vec<Arc<AllocationInfo>> {
        let directory = lock(&self.directory);
        let range = match after {
            Some(a) => directory.range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => directory.range(..),
        };
        range
            .map(|(_, info)| info)
            .filter(|info| filter(info))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Live allocations of `user`.
    pub fn user_allocations(&self, user: &str) -> usize {
        lock(&self.users).get(user).map_or(0, |u| u.allocations())
    }
}
