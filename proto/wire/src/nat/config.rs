//! Timing of NAT behaviour discovery: the RFC 8489 §6.2.1 retransmission schedule
//! and the knobs that make a report quick enough for interactive use.

use std::time::Duration;

/// How [`NatDiscovery`](super::NatDiscovery) times its STUN transactions and which
/// tests it runs.
///
/// Every request is a STUN transaction retransmitted per RFC 8489 §6.2.1: sent at
/// `t`, again after RTO, then after 2·RTO, 4·RTO, … until `max_requests` (Rc) have
/// gone out; the transaction fails when `final_wait_multiplier` (Rm) times RTO
/// passes after the last one without a response.
///
/// The [`Default`] is an *interactive* budget: RTO 500 ms, Rc = 3, Rm = 4, so one
/// silent transaction gives up after 500 + 1000 + 4·500 = **3.5 s**
/// ([`transaction_timeout`](Self::transaction_timeout)). Once the first response
/// has measured the round-trip time, later transactions use the RFC 6298 estimate
/// `SRTT + 4·RTTVAR` clamped to `min_rto..=initial_rto` (250..=500 ms), so a
/// filtering test that gets no answer (the normal outcome behind a restrictive NAT)
/// costs 1.75 s on paths under ~80 ms. Discovery runs at most three transaction
/// timeouts back to back (the primary test, the filtering tests, the mapping
/// tests; hairpinning overlaps them), so it always ends within
/// [`budget`](Self::budget) = **10.5 s**, and usually within 2 RTT + 1.75 s.
/// [`NatDiscoveryConfig::rfc8489`] gives the RFC's own values (39.5 s per
/// transaction).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatDiscoveryConfig {
    /// The first retransmission timeout (RFC 8489 "RTO"), doubled after every
    /// retransmission. Default 500 ms, the RFC's recommended initial value.
    pub initial_rto: Duration,
    /// Lower bound of the RTO computed from measured round trips (RFC 6298). Set it
    /// to `initial_rto` to keep the RTO fixed. Default 250 ms: room for the STUN
    /// pair to forward a change-IP request to its partner.
    pub min_rto: Duration,
    /// Requests sent per transaction (RFC 8489 "Rc"), at least 1. Default 3
    /// (the RFC says 7).
    pub max_requests: u32,
    /// How many RTOs to wait after the last request before the transaction fails
    /// (RFC 8489 "Rm"), at least 1. Default 4 (the RFC says 16).
    pub final_wait_multiplier: u32,
    /// Run the filtering tests (RFC 5780 §4.4). Default true.
    pub filtering: bool,
    /// Run the hairpinning test (RFC 5780 §4.5). Default true.
    pub hairpinning: bool,
    /// A hard limit on the whole discovery, counted from its start: tests still
    /// running then are abandoned and reported as unknown ("time limit reached").
    /// Default `None`: only the retransmission schedule bounds it (see
    /// [`budget`](Self::budget)).
    pub max_duration: Option<Duration>,
}

impl Default for NatDiscoveryConfig {
    fn default() -> NatDiscoveryConfig {
        NatDiscoveryConfig {
            initial_rto: Duration::from_millis(500),
            min_rto: Duration::from_millis(250),
            max_requests: 3,
            final_wait_multiplier: 4,
            filtering: true,
            hairpinning: true,
            max_duration: None,
        }
    }
}

impl NatDiscoveryConfig {
    /// The schedule RFC 8489 §6.2.1 recommends: RTO 500 ms fixed, Rc = 7, Rm = 16,
    /// so a silent transaction gives up after 39.5 s.
    pub fn rfc8489() -> NatDiscoveryConfig {
        NatDiscoveryConfig {
            initial_rto: Duration::from_millis(500),
            min_rto: Duration::from_millis(500),
            max_requests: 7,
            final_wait_multiplier: 16,
            ..NatDiscoveryConfig::default()
        }
    }

    /// Sets [`max_duration`](Self::max_duration).
    pub fn with_max_duration(mut self, limit: Option<Duration>) -> NatDiscoveryConfig {
        self.max_duration = limit;
        self
    }

    /// Sets [`initial_rto`](Self::initial_rto), and lowers
    /// [`min_rto`](Self::min_rto) to it if it was above.
    pub fn with_initial_rto(mut self, rto: Duration) -> NatDiscoveryConfig {
        self.initial_rto = rto;
        self.min_rto = self.min_rto.min(rto);
        self
    }

    /// Sets [`min_rto`](Self::min_rto).
    pub fn with_min_rto(mut self, rto: Duration) -> NatDiscoveryConfig {
        self.min_rto = rto;
        self
    }

    /// Sets [`max_requests`](Self::max_requests) (Rc) and
    /// [`final_wait_multiplier`](Self::final_wait_multiplier) (Rm).
    pub fn with_retransmissions(mut self, requests: u32, final_wait: u32) -> NatDiscoveryConfig {
        self.max_requests = requests;
        self.final_wait_multiplier = final_wait;
        self
    }

    /// Switches the filtering tests on or off.
    pub fn with_filtering(mut self, on: bool) -> NatDiscoveryConfig {
        self.filtering = on;
        self
    }

    /// Switches the hairpinning test on or off.
    pub fn with_hairpinning(mut self, on: bool) -> NatDiscoveryConfig {
        self.hairpinning = on;
        self
    }

    /// Rc as used: `max_requests` clamped to 1..=16.
    pub(crate) fn requests(&self) -> u32 {
        self.max_requests.clamp(1, 16)
    }

    /// Rm as used: `final_wait_multiplier` clamped to 1..=64.
    pub(crate) fn final_wait(&self) -> u32 {
        self.final_wait_multiplier.clamp(1, 64)
    }

    /// The initial RTO as used: at least 1 ms, at most 60 s.
    pub(crate) fn rto(&self) -> Duration {
        self.initial_rto
            .clamp(Duration::from_millis(1), Duration::from_secs(60))
    }

    /// The lower bound for measured RTOs as used: at least 1 ms, at most the
    /// initial RTO.
    pub(crate) fn rto_floor(&self) -> Duration {
        self.min_rto.clamp(Duration::from_millis(1), self.rto())
    }

    /// How long one transaction lasts when nothing answers, with the initial RTO:
    /// the sum of the Rc − 1 doubling intervals plus Rm·RTO.
    pub fn transaction_timeout(&self) -> Duration {
        transaction_timeout(self.rto(), self.requests(), self.final_wait())
    }

    /// The longest a whole discovery can take: three transaction timeouts one after
    /// the other (or `max_duration`, if shorter).
    pub fn budget(&self) -> Duration {
        let natural = self.transaction_timeout().saturating_mul(3);
        match self.max_duration {
            Some(limit) => natural.min(limit),
            None => natural,
        }
    }
}

/// The time from the first request until a transaction with base RTO `rto` gives up.
pub(crate) fn transaction_timeout(rto: Duration, requests: u32, final_wait: u32) -> Duration {
    let mut total = Duration::ZERO;
    let mut interval = rto;
    for _ in 1..requests {
        total = total.saturating_add(interval);
        interval = interval.saturating_mul(2);
    }
    total.saturating_add(rto.saturating_mul(final_wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_match_the_documentation() {
        let config = NatDiscoveryConfig::default();
        assert_eq!(config.transaction_timeout(), Duration::from_millis(3500));
        assert_eq!(config.budget(), Duration::from_millis(10_500));
        assert_eq!(
            transaction_timeout(Duration::from_millis(250), 3, 4),
            Duration::from_millis(1750)
        );
        let rfc = NatDiscoveryConfig::rfc8489();
        assert_eq!(rfc.transaction_timeout(), Duration::from_millis(39_500));
        let limited = config.with_max_duration(Some(Duration::from_secs(2)));
        assert_eq!(limited.budget(), Duration::from_secs(2));
    }
}
