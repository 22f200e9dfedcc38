//! Per-source rate limiting: a token bucket per client IP address (per /64 for IPv6) in a table of
//! bounded size, so that a flood of spoofed sources can neither exhaust memory nor turn the
//! server into an amplifier (RFC 5780 §10, RFC 8489 §16.1.4).
//!
//! Every answer the server sends on behalf of a source — success or error, from its own ports or
//! from the partner's after a change-IP forward, to the source port or to a RESPONSE-PORT — takes
//! one token from that source's bucket; datagrams that are dropped take none. The table is split
//! into shards, each behind its own mutex, so the receive workers of one process share one budget
//! per source. A full shard first forgets buckets that have refilled completely (they carry no
//! information) at most once per [`SWEEP_INTERVAL`], then an arbitrary bucket: an attacker with
//! many addresses can reset a victim's bucket to full, never grow the table.
//!
//! Time comes in as `now`; nothing here reads a clock.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often a full shard may scan for idle buckets.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Number of independently locked shards.
const SHARDS: usize = 16;

/// A token-bucket rate: sustained responses per second and burst size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Responses per second a source may get on average; 0 switches limiting off.
    pub per_second: f64,
    /// How many responses a source may get at once after being idle.
    pub burst: f64,
}

impl RateLimit {
    /// No limit at all.
    pub const OFF: RateLimit = RateLimit {
        per_second: 0.0,
        burst: 0.0,
    };

    /// Whether this limit restricts anything.
    pub fn is_enabled(&self) -> bool {
        self.per_second > 0.0
    }
}

/// Whom a bucket belongs to: an IPv4 address, or the /64 prefix of an IPv6 address (one host
/// usually holds a whole /64, so per-address buckets would be free to multiply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(u32),
    V6Prefix(u64),
}

impl SourceKey {
    fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(u32::from(v4)),
                None => SourceKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
struct Shard {
    buckets: HashMap<SourceKey, Bucket>,
    last_sweep: Option<Instant>,
}

/// The per-source token buckets of one STUN server, shared by its receive workers and its
/// control service.
#[derive(Debug)]
pub struct SourceLimiter {
    limit: RateLimit,
    shard_capacity: usize,
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
}

impl SourceLimiter {
    /// A limiter holding at most `max_sources` buckets in total (at least one per shard).
    pub fn new(limit: RateLimit, max_sources: usize) -> SourceLimiter {
        let shard_capacity = max_sources.div_ceil(SHARDS).max(1);
        SourceLimiter {
            limit,
            shard_capacity,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::new(),
                        last_sweep: None,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// The configured limit.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one token from `source`'s bucket; `false` when the bucket is empty (the source is
    /// over its limit and must not be answered).
    pub fn allow(&self, source: IpAddr, now: Instant) -> bool {
        if !self.limit.is_enabled() {
            return true;
        }
        let key = SourceKey::of(source);
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        let Some(shard) = self.shards.get(index) else {
            return true;
        };
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let limit = self.limit;
        if let Some(bucket) = shard.buckets.get_mut(&key) {
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(limit.burst);
            bucket.updated = now;
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                return true;
            }
            return false;
        }
        if shard.buckets.len() >= self.shard_capacity {
            self.make_room(&mut shard, now);
        }
        // A new source starts with a full bucket, less the token this answer takes.
        shard.buckets.insert(
            key,
            Bucket {
                tokens: (limit.burst - 1.0).max(0.0),
                updated: now,
            },
        );
        limit.burst >= 1.0
    }

    /// Frees at least one slot in a full shard.
    fn make_room(&self, shard: &mut Shard, now: Instant) {
        let may_sweep = shard
            .last_sweep
            .is_none_or(|last| now.saturating_duration_since(last) >= SWEEP_INTERVAL);
        if may_sweep {
            shard.last_sweep = Some(now);
            let limit = self.limit;
            // Idle long enough to have refilled completely: same as absent.
            let refill = Duration::from_secs_f64((limit.burst / limit.per_second).max(0.0));
            shard
                .buckets
                .retain(|_, b| now.saturating_duration_since(b.updated) < refill);
        }
        if shard.buckets.len() >= self.shard_capacity
            && let Some(victim) = shard.buckets.keys().next().copied()
        {
            shard.buckets.remove(&victim);
        }
    }

    /// How many sources have a bucket now.
    pub fn tracked_sources(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .buckets
                    .len()
            })
            .sum()
    }

    /// The most sources the table holds.
    pub fn capacity(&self) -> usize {
        self.shard_capacity * SHARDS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        let limiter = SourceLimiter::new(
            RateLimit {
                per_second: 10.0,
                burst: 3.0,
            },
            100,
        );
        let t0 = Instant::now();
        assert!(limiter.allow(v4(1), t0));
        assert!(limiter.allow(v4(1), t0));
        assert!(limiter.allow(v4(1), t0));
        assert!(!limiter.allow(v4(1), t0), "burst of 3 used up");
        // another source is independent
        assert!(limiter.allow(v4(2), t0));
        // 100 ms later one token is back, not two
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.allow(v4(1), t1));
        assert!(!limiter.allow(v4(1), t1));
        // a long pause refills to the burst, no more
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.allow(v4(1), t2));
        }
        assert!(!limiter.allow(v4(1), t2));
    }

    #[test]
    fn off_allows_everything_and_tracks_nothing() {
        let limiter = SourceLimiter::new(RateLimit::OFF, 10);
        let now = Instant::now();
        for _ in 0..1000 {
            assert!(limiter.allow(v4(1), now));
        }
        assert_eq!(limiter.tracked_sources(), 0);
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_64() {
        let limiter = SourceLimiter::new(
            RateLimit {
                per_second: 1.0,
                burst: 1.0,
            },
            100,
        );
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse::<Ipv6Addr>().unwrap().into();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse::<Ipv6Addr>().unwrap().into();
        let c: IpAddr = "2001:db8:1:3::1".parse::<Ipv6Addr>().unwrap().into();
        assert!(limiter.allow(a, now));
        assert!(!limiter.allow(b, now), "same /64");
        assert!(limiter.allow(c, now), "other /64");
        // IPv4-mapped IPv6 is the IPv4 source
        let mapped: IpAddr = Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped().into();
        assert!(limiter.allow(v4(7), now));
        assert!(!limiter.allow(mapped, now));
    }

    #[test]
    fn the_table_never_grows_past_its_capacity() {
        let limiter = SourceLimiter::new(
            RateLimit {
                per_second: 1.0,
                burst: 5.0,
            },
            64,
        );
        let now = Instant::now();
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i));
            assert!(limiter.allow(ip, now), "a new source gets its burst");
        }
        assert!(limiter.tracked_sources() <= limiter.capacity());
        assert_eq!(limiter.capacity(), 64);
    }

    #[test]
    fn idle_buckets_are_swept_before_active_ones_are_evicted() {
        let limiter = SourceLimiter::new(
            RateLimit {
                per_second: 10.0,
                burst: 1.0,
            },
            16,
        );
        let t0 = Instant::now();
        // fill every shard with some sources
        for i in 0..200u32 {
            limiter.allow(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i)), t0);
        }
        // much later, all of them are idle and refilled: new sources sweep them away
        let t1 = t0 + Duration::from_secs(10);
        for i in 0..16u32 {
            assert!(limiter.allow(IpAddr::V4(Ipv4Addr::from(0x0B00_0000 + i)), t1));
        }
        assert!(limiter.tracked_sources() <= 16);
    }
}
