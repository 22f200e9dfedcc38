//! The STUN server's counters, kept twice: as Prometheus metrics of the process (`/metrics`), and
//! as plain atomics of this instance for the Ping RPC (two instances share one process in the
//! all-in-one supernode; the `member` label tells their series apart).
//!
//! | metric | labels | counts |
//! |---|---|---|
//! | `qp_stun_requests_total` | `member` | datagrams received on the STUN ports, valid or not |
//! | `qp_stun_responses_total` | `member`, `kind` = `primary`, `alternate`, `for_partner`, `error` | answers sent |
//! | `qp_stun_forwarded_total` | `member` | change-IP requests handed to the partner |
//! | `qp_stun_dropped_total` | `member`, `reason` (see [`DropReason::as_str`]) | datagrams or forwards not answered |
//!
//! Metric handles are made once, so counting a packet is an atomic add, not a registry lookup.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;
use quickp2p_proto::v1::StunCounters;

use crate::config::PairMember;
use crate::server::{DropReason, LocalPort, ReplyKind};

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

    fn add(&self) {
        self.metric.increment(1);
        self.value.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Every counter of one STUN server.
#[derive(Debug)]
pub struct StunCountersHandle {
    requests: Tally,
    primary: Tally,
    alternate: Tally,
    for_partner: Tally,
    errors: Tally,
    forwarded: Tally,
    dropped: Vec<Tally>,
}

impl StunCountersHandle {
    /// Registers the series of `member` (making sure the process's recorder is installed first).
    pub fn new(member: PairMember) -> StunCountersHandle {
        let _ = quickp2p_service_kit::ops::metrics_handle();
        let m = member.as_str();
        let response = |kind: &'static str| metrics::counter!("qp_stun_responses_total", "member" => m, "kind" => kind);
        StunCountersHandle {
            requests: Tally::new(metrics::counter!("qp_stun_requests_total", "member" => m)),
            primary: Tally::new(response("primary")),
            alternate: Tally::new(response("alternate")),
            for_partner: Tally::new(response("for_partner")),
            errors: Tally::new(response("error")),
            forwarded: Tally::new(metrics::counter!("qp_stun_forwarded_total", "member" => m)),
            dropped: DropReason::ALL
                .iter()
                .map(|r| {
                    Tally::new(metrics::counter!(
                        "qp_stun_dropped_total",
                        "member" => m,
                        "reason" => r.as_str()
                    ))
                })
                .collect(),
        }
    }

    /// A datagram arrived on a STUN port.
    pub fn request(&self) {
        self.requests.add();
    }

    /// An answer was sent from this server's own port `from`.
    pub fn response(&self, kind: ReplyKind, from: LocalPort) {
        match (kind, from) {
            (ReplyKind::Error(_), _) => self.errors.add(),
            (ReplyKind::Success, LocalPort::Primary) => self.primary.add(),
            (ReplyKind::Success, LocalPort::Alternate) => self.alternate.add(),
        }
    }

    /// A response was sent on the partner's behalf.
    pub fn response_for_partner(&self) {
        self.for_partner.add();
    }

    /// A change-IP request was handed to the partner.
    pub fn forwarded(&self) {
        self.forwarded.add();
    }

    /// Something was not answered.
    pub fn dropped(&self, reason: DropReason) {
        if let Some(t) = self.dropped.get(reason.index()) {
            t.add();
        }
    }

    /// How many were dropped for `reason`.
    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason.index()).map_or(0, Tally::get)
    }

    /// The values for the Ping RPC.
    pub fn snapshot(&self) -> StunCounters {
        StunCounters {
            requests: self.requests.get(),
            responses_primary: self.primary.get(),
            responses_alternate: self.alternate.get(),
            responses_for_partner: self.for_partner.get(),
            forwarded_to_partner: self.forwarded.get(),
            dropped: self.dropped.iter().map(Tally::get).sum(),
        }
    }
}
