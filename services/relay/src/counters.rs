//! The relay's counters, kept twice: as Prometheus series of the process (`/metrics`) and as plain
//! atomics of this instance (GetStats, tests; several relays can share a process in tests).
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `qp_relay_allocations` | | live allocations (gauge) |
//! | `qp_relay_draining` | | 1 while draining (gauge) |
//! | `qp_relay_allocations_created_total` | | allocations made |
//! | `qp_relay_allocations_ended_total` | `cause` = `expired` \| `released` \| `shutdown` | allocations gone |
//! | `qp_relay_challenges_total` | | 401 answers to requests without credentials (the normal first step) |
//! | `qp_relay_refusals_total` | `method`, `reason` ([`Refusal::as_str`]) | error responses; `method="allocate"` are refused allocations |
//! | `qp_relay_auth_failures_total` | `reason` = `bad_credentials` \| `expired_credentials` \| `stale_nonce` \| `wrong_credentials` | failed authentications |
//! | `qp_relay_packets_total`, `qp_relay_bytes_total` | `direction` = `to_peer` \| `to_client` | relayed datagrams and their payload bytes |
//! | `qp_relay_dropped_total` | `reason` ([`DropReason::as_str`]) | datagrams neither answered nor relayed |
//!
//! Metric handles are made once; the data path adds per batch, not per packet.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge};

/// A TURN request method, for the `method` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestMethod {
    /// Allocate.
    Allocate,
    /// Refresh.
    Refresh,
    /// CreatePermission.
    CreatePermission,
    /// ChannelBind.
    ChannelBind,
    /// Binding (plain STUN on the TURN port).
    Binding,
    /// Any other method.
    Other,
}

impl RequestMethod {
    /// Every method.
    pub const ALL: [RequestMethod; 6] = [
        RequestMethod::Allocate,
        RequestMethod::Refresh,
        RequestMethod::CreatePermission,
        RequestMethod::ChannelBind,
        RequestMethod::Binding,
        RequestMethod::Other,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RequestMethod::Allocate => "allocate",
            RequestMethod::Refresh => "refresh",
            RequestMethod::CreatePermission => "create_permission",
            RequestMethod::ChannelBind => "channel_bind",
            RequestMethod::Binding => "binding",
            RequestMethod::Other => "other",
        }
    }
}

/// Why a request got an error response (the `reason` label; stable snake_case names shared with
/// the gRPC `RefusalCount`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// 400: malformed request or missing attribute.
    Malformed,
    /// 401: wrong password / unknown username scheme / wrong realm.
    BadCredentials,
    /// 401: the username's expiry has passed (new allocations only).
    ExpiredCredentials,
    /// 438: the nonce expired or is not ours.
    StaleNonce,
    /// 441: another username than the allocation's.
    WrongCredentials,
    /// 420: unknown comprehension-required attributes.
    UnknownAttribute,
    /// 437: no allocation for this 5-tuple, or one exists already.
    AllocationMismatch,
    /// 442: a transport other than UDP.
    UnsupportedTransport,
    /// 440 / 443: address family not supported or not matching.
    AddressFamily,
    /// 486: the user's allocation quota is reached.
    QuotaExceeded,
    /// 403: the peer address is denied by policy.
    DeniedPeerAddress,
    /// 508: capacity, relay ports, permissions or channels exhausted, or unsupported reservation.
    InsufficientCapacity,
    /// 508: the replica is draining.
    Draining,
}

impl Refusal {
    /// Every reason.
    pub const ALL: [Refusal; 13] = [
        Refusal::Malformed,
        Refusal::BadCredentials,
        Refusal::ExpiredCredentials,
        Refusal::StaleNonce,
        Refusal::WrongCredentials,
        Refusal::UnknownAttribute,
        Refusal::AllocationMismatch,
        Refusal::UnsupportedTransport,
        Refusal::AddressFamily,
        Refusal::QuotaExceeded,
        Refusal::DeniedPeerAddress,
        Refusal::InsufficientCapacity,
        Refusal::Draining,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::BadCredentials => "bad_credentials",
            Refusal::ExpiredCredentials => "expired_credentials",
            Refusal::StaleNonce => "stale_nonce",
            Refusal::WrongCredentials => "wrong_credentials",
            Refusal::UnknownAttribute => "unknown_attribute",
            Refusal::AllocationMismatch => "allocation_mismatch",
            Refusal::UnsupportedTransport => "unsupported_transport",
            Refusal::AddressFamily => "address_family",
            Refusal::QuotaExceeded => "quota_exceeded",
            Refusal::DeniedPeerAddress => "denied_peer_address",
            Refusal::InsufficientCapacity => "insufficient_capacity",
            Refusal::Draining => "draining",
        }
    }

    /// Whether this is an authentication failure (also counted in `qp_relay_auth_failures_total`).
    pub const fn is_auth_failure(self) -> bool {
        matches!(
            self,
            Refusal::BadCredentials
                | Refusal::ExpiredCredentials
                | Refusal::StaleNonce
                | Refusal::WrongCredentials
        )
    }
}

/// Why a datagram was neither answered nor relayed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Larger than the configured maximum payload.
    Oversized,
    /// Neither STUN nor ChannelData, or malformed.
    Malformed,
    /// FINGERPRINT present but wrong.
    BadFingerprint,
    /// ChannelData or Send from a client without an allocation.
    NoAllocation,
    /// ChannelData on an unbound (or expired) channel.
    NoChannel,
    /// Data to or from a peer without a permission.
    NoPermission,
    /// A Send indication to an address the peer policy denies (a permission covers every port
    /// of an IP; the relay's own listener and ports outside its range stay unreachable).
    DeniedPeer,
    /// The user is over its bandwidth limit.
    BandwidthLimit,
    /// Responses, unexpected indications, or a Send indication without the attributes it needs.
    Unexpected,
    /// The socket refused to send.
    SendFailed,
}

impl DropReason {
    /// Every reason.
    pub const ALL: [DropReason; 10] = [
        DropReason::Oversized,
        DropReason::Malformed,
        DropReason::BadFingerprint,
        DropReason::NoAllocation,
        DropReason::NoChannel,
        DropReason::NoPermission,
        DropReason::DeniedPeer,
        DropReason::BandwidthLimit,
        DropReason::Unexpected,
        DropReason::SendFailed,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Oversized => "oversized",
            DropReason::Malformed => "malformed",
            DropReason::BadFingerprint => "bad_fingerprint",
            DropReason::NoAllocation => "no_allocation",
            DropReason::NoChannel => "no_channel",
            DropReason::NoPermission => "no_permission",
            DropReason::DeniedPeer => "denied_peer",
            DropReason::BandwidthLimit => "bandwidth_limit",
            DropReason::Unexpected => "unexpected",
            DropReason::SendFailed => "send_failed",
        }
    }
}

/// Which way relayed data went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a client, out of its relayed address, to a peer.
    ToPeer,
    /// From a peer to the client (ChannelData or Data indication).
    ToClient,
}

/// How an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndCause {
    /// Its lifetime ran out.
    Expired,
    /// The client sent Refresh with LIFETIME 0.
    Released,
    /// The relay stopped.
    Shutdown,
}

/// One counter: the Prometheus series and this instance's own value.
#[derive(Debug)]
struct Tally {
    metric: Counter,
    value: AtomicU64,
}

impl Tally {
    fn new(metric: Counter) -> Tally {
        Tally {
            metric,
            value: AtomicU64::new(0),
        }
    }

    fn add(&self, n: u64) {
        if n > 0 {
            self.metric.increment(n);
            self.value.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Every counter of one relay.
#[derive(Debug)]
pub struct RelayCounters {
    allocations: Gauge,
    draining: Gauge,
    created: Tally,
    ended: [Tally; 3],
    challenges: Tally,
    refusals: Vec<Tally>,
    auth_failures: [Tally; 4],
    packets: [Tally; 2],
    bytes: [Tally; 2],
    dropped: Vec<Tally>,
}

impl Default for RelayCounters {
    fn default() -> RelayCounters {
        RelayCounters::new()
    }
}

impl RelayCounters {
    /// Registers the series (making sure the process's recorder is installed first).
    pub fn new() -> RelayCounters {
        let _ = quickp2p_service_kit::ops::metrics_handle();
        let ended = |cause: &'static str| {
            Tally::new(metrics::counter!("qp_relay_allocations_ended_total", "cause" => cause))
        };
        let auth = |reason: &'static str| {
            Tally::new(metrics::counter!("qp_relay_auth_failures_total", "reason" => reason))
        };
        let dir = |name: &'static str, d: &'static str| {
            Tally::new(metrics::counter!(name, "direction" => d))
        };
        let mut refusals = Vec::with_capacity(RequestMethod::ALL.len() * Refusal::ALL.len());
        for method in RequestMethod::ALL {
            for reason in Refusal::ALL {
                refusals.push(Tally::new(metrics::counter!(
                    "qp_relay_refusals_total",
                    "method" => method.as_str(),
                    "reason" => reason.as_str()
                )));
            }
        }
        RelayCounters {
            allocations: metrics::gauge!("qp_relay_allocations"),
            draining: metrics::gauge!("qp_relay_draining"),
            created: Tally::new(metrics::counter!("qp_relay_allocations_created_total")),
            ended: [ended("expired"), ended("released"), ended("shutdown")],
            challenges: Tally::new(metrics::counter!("qp_relay_challenges_total")),
            refusals,
            auth_failures: [
                auth("bad_credentials"),
                auth("expired_credentials"),
                auth("stale_nonce"),
                auth("wrong_credentials"),
            ],
            packets: [
                dir("qp_relay_packets_total", "to_peer"),
                dir("qp_relay_packets_total", "to_client"),
            ],
            bytes: [
                dir("qp_relay_bytes_total", "to_peer"),
                dir("qp_relay_bytes_total", "to_client"),
            ],
            dropped: DropReason::ALL
                .iter()
                .map(|r| {
                    Tally::new(metrics::counter!("qp_relay_dropped_total", "reason" => r.as_str()))
                })
                .collect(),
        }
    }

    /// An allocation was made; `live` is the new total.
    pub fn allocation_created(&self, live: usize) {
        self.created.add(1);
        self.allocations.set(live as f64);
    }

    /// An allocation ended; `live` is the new total.
    pub fn allocation_ended(&self, cause: EndCause, live: usize) {
        let i = match cause {
            EndCause::Expired => 0,
            EndCause::Released => 1,
            EndCause::Shutdown => 2,
        };
        if let Some(t) = self.ended.get(i) {
            t.add(1);
        }
        self.allocations.set(live as f64);
    }

    /// Draining turned on or off.
    pub fn set_draining(&self, draining: bool) {
        self.draining.set(if draining { 1.0 } else { 0.0 });
    }

    /// A 401 challenge was sent to a request without credentials.
    pub fn challenge(&self) {
        self.challenges.add(1);
    }

    /// A request got an error response.
    pub fn refused(&self, method: RequestMethod, reason: Refusal) {
        let m = RequestMethod::ALL
            .iter()
            .position(|x| *x == method)
            .unwrap_or(0);
        let r = Refusal::ALL.iter().position(|x| *x == reason).unwrap_or(0);
        if let Some(t) = self.refusals.get(m * Refusal::ALL.len() + r) {
            t.add(1);
        }
        let auth = match reason {
            Refusal::BadCredentials => Some(0),
            Refusal::ExpiredCredentials => Some(1),
            Refusal::StaleNonce => Some(2),
            Refusal::WrongCredentials => Some(3),
            _ => None,
        };
        if let Some(t) = auth.and_then(|i| self.auth_failures.get(i)) {
            t.add(1);
        }
    }

    /// Datagrams were relayed.
    pub fn relayed(&self, direction: Direction, packets: u64, bytes: u64) {
        let i = match direction {
            Direction::ToPeer => 0,
            Direction::ToClient => 1,
        };
        if let (Some(p), Some(b)) = (self.packets.get(i), self.bytes.get(i)) {
            p.add(packets);
            b.add(bytes);
        }
    }

    /// Datagrams were dropped.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        let i = DropReason::ALL
            .iter()
            .position(|x| *x == reason)
            .unwrap_or(0);
        if let Some(t) = self.dropped.get(i) {
            t.add(n);
        }
    }

    /// Allocations made since start.
    pub fn created(&self) -> u64 {
        self.created.get()
    }

    /// Allocations ended for `cause` since start.
    pub fn ended(&self, cause: EndCause) -> u64 {
        let i = match cause {
            EndCause::Expired => 0,
            EndCause::Released => 1,
            EndCause::Shutdown => 2,
        };
        self.ended.get(i).map_or(0, Tally::get)
    }

    /// 401 challenges since start.
    pub fn challenges(&self) -> u64 {
        self.challenges.get()
    }

    /// Error responses for `reason`, all methods together.
    pub fn refusals(&self, reason: Refusal) -> u64 {
        let r = Refusal::ALL.iter().position(|x| *x == reason).unwrap_or(0);
        (0..RequestMethod::ALL.len())
            .filter_map(|m| self.refusals.get(m * Refusal::ALL.len() + r))
            .map(Tally::get)
            .sum()
    }

    /// Error responses to `method` for `reason`.
    pub fn refusals_of(&self, method: RequestMethod, reason: Refusal) -> u64 {
        let m = RequestMethod::ALL
            .iter()
            .position(|x| *x == method)
            .unwrap_or(0);
        let r = Refusal::ALL.iter().position(|x| *x == reason).unwrap_or(0);
        self.refusals
            .get(m * Refusal::ALL.len() + r)
            .map_or(0, Tally::get)
    }

    /// Packets and bytes relayed in `direction` since start.
    pub fn relayed_totals(&self, direction: Direction) -> (u64, u64) {
        let i = match direction {
            Direction::ToPeer => 0,
            Direction::ToClient => 1,
        };
        (
            self.packets.get(i).map_or(0, Tally::get),
            self.bytes.get(i).map_or(0, Tally::get),
        )
    }

    /// Datagrams dropped for `reason` since start.
    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        let i = DropReason::ALL
            .iter()
            .position(|x| *x == reason)
            .unwrap_or(0);
        self.dropped.get(i).map_or(0, Tally::get)
    }
}
