//! Strategy choice and punch scheduling: pure functions over the two parties' NAT behaviour,
//! clock estimates and observed ports. No store, no sockets, no clock (time comes in as `now`).
//!
//! **The NAT matrix** (RFC 4787 terms). A side's mapping is *predictable* when it is
//! endpoint-independent (or there is no NAT, or it was not measured — optimistic, the relay is
//! the fallback): the reflexive address the STUN pair saw is the address the other peer must
//! send to. A side's filtering *lets an unknown port through* when it is endpoint-independent or
//! address-dependent (it has sent to the other peer's IP, so any port of that IP passes);
//! address-and-port-dependent filtering, or filtering not measured behind a NAT, does not.
//!
//! | initiator mapping | responder mapping | filtering | strategy |
//! |---|---|---|---|
//! | predictable | predictable | any | DIRECT |
//! | hard (address[-and-port]-dependent) | predictable | responder lets it through | DIRECT |
//! | hard | predictable | responder APDF | PORT_PREDICTION (birthday) |
//! | hard | hard | both let through | DIRECT, short budget |
//! | hard | hard | both APDF, both address-and-port-dependent mapping | RELAY |
//! | hard | hard | otherwise | PORT_PREDICTION, short budget |
//!
//! (and symmetrically). With PORT_PREDICTION the side behind the hard mapping opens many local
//! sockets that all send to the other side's reflexive address, while the other side probes many
//! ports of the hard side's reflexive IP; one collision opens the path (the birthday technique).

use quickp2p_proto::v1::{
    ClockEstimate, HandshakeStrategy, NatBehaviour, NatFiltering, NatMapping, PortAllocation,
    PortPredictionPlan, PunchSchedule,
};

/// Punching budget when a direct path is expected, milliseconds.
pub const DIRECT_BUDGET_MS: u32 = 5_000;
/// Punching budget of port prediction facing one hard NAT, milliseconds.
pub const PREDICTION_BUDGET_MS: u32 = 8_000;
/// Budget when both sides are behind hard NATs ("try within a budget, then relay").
pub const DOUBLE_HARD_BUDGET_MS: u32 = 3_000;
/// Probe interval of direct simultaneous open, milliseconds.
pub const DIRECT_INTERVAL_MS: u32 = 50;
/// Probe interval of port prediction (per socket and target), milliseconds.
pub const PREDICTION_INTERVAL_MS: u32 = 20;
/// Most probes per second over all sockets of one side.
pub const MAX_PROBES_PER_SECOND: u32 = 1_000;
/// Remote ports probed when the other side's allocation is random (or unknown).
pub const RANDOM_PROBE_COUNT: u32 = 1_024;
/// Remote ports probed when the other side's allocation is sequential.
pub const SEQUENTIAL_PROBE_COUNT: u32 = 512;
/// Local sockets opened by a hard side whose allocation is random (or unknown).
pub const RANDOM_LOCAL_SOCKETS: u32 = 256;
/// Local sockets opened by a hard side whose allocation is sequential.
pub const SEQUENTIAL_LOCAL_SOCKETS: u32 = 64;
/// Lowest port probed when the range is not narrowed (ports below are rarely allocated).
pub const LOWEST_PROBED_PORT: u32 = 1_024;
/// Keep-alive interval when the mapping lifetime is unknown, milliseconds.
pub const DEFAULT_KEEPALIVE_MS: u32 = 15_000;
/// One-way delay assumed for a side without a clock estimate, microseconds.
pub const UNKNOWN_ONE_WAY_US: u64 = 150_000;
/// Extra delay for the hop gateway → peer and the service's own work, microseconds.
pub const DELIVERY_OVERHEAD_US: u64 = 20_000;
/// The start is never scheduled further ahead than this, microseconds.
pub const MAX_START_DELAY_US: u64 = 3_000_000;

/// A side's NAT behaviour, `UNSPECIFIED` everywhere when unknown.
pub fn behaviour_or_default(b: Option<&NatBehaviour>) -> NatBehaviour {
    b.copied().unwrap_or_default()
}

/// Whether the reflexive address seen by the STUN pair is where the other peer must send.
pub fn predictable(b: &NatBehaviour) -> bool {
    matches!(
        b.mapping(),
        NatMapping::Unspecified | NatMapping::EndpointIndependent | NatMapping::None
    )
}

/// Whether the side's filtering admits packets from an IP it has sent to, whatever the port.
pub fn lets_through(b: &NatBehaviour) -> bool {
    match b.filtering() {
        NatFiltering::EndpointIndependent | NatFiltering::AddressDependent => true,
        NatFiltering::AddressAndPortDependent => false,
        // a public host with unmeasured filtering: nothing translates, assume open
        NatFiltering::Unspecified => b.mapping() == NatMapping::None,
    }
}

/// What to do for one attempt, before per-side details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// The strategy.
    pub strategy: HandshakeStrategy,
    /// How long to punch before falling back to the relay, milliseconds (0 for RELAY).
    pub budget_ms: u32,
    /// Interval between probe rounds, milliseconds (0 for RELAY).
    pub probe_interval_ms: u32,
}

/// Picks the strategy for the NAT pair (see the module table).
pub fn choose(initiator: &NatBehaviour, responder: &NatBehaviour) -> Choice {
    let direct = |budget_ms| Choice {
        strategy: HandshakeStrategy::Direct,
        budget_ms,
        probe_interval_ms: DIRECT_INTERVAL_MS,
    };
    let predict = |budget_ms| Choice {
        strategy: HandshakeStrategy::PortPrediction,
        budget_ms,
        probe_interval_ms: PREDICTION_INTERVAL_MS,
    };
    match (predictable(initiator), predictable(responder)) {
        (true, true) => direct(DIRECT_BUDGET_MS),
        (false, true) if lets_through(responder) => direct(DIRECT_BUDGET_MS),
        (true, false) if lets_through(initiator) => direct(DIRECT_BUDGET_MS),
        (false, true) | (true, false) => predict(PREDICTION_BUDGET_MS),
        (false, false) if lets_through(initiator) && lets_through(responder) => {
            direct(DOUBLE_HARD_BUDGET_MS)
        }
        (false, false)
            if symmetric(initiator)
                && symmetric(responder)
                && !lets_through(initiator)
                && !lets_through(responder) =>
        {
            Choice {
                strategy: HandshakeStrategy::Relay,
                budget_ms: 0,
                probe_interval_ms: 0,
            }
        }
        (false, false) => predict(DOUBLE_HARD_BUDGET_MS),
    }
}

fn symmetric(b: &NatBehaviour) -> bool {
    b.mapping() == NatMapping::AddressAndPortDependent
}

/// The port prediction plan of one side (`own`) facing the other (`remote`), whose reflexive
/// ports observed so far (by the STUN pair and the gateway) are `remote_ports`.
pub fn prediction_plan(
    own: &NatBehaviour,
    remote: &NatBehaviour,
    remote_ports: &[u16],
) -> PortPredictionPlan {
    let local_socket_count = if predictable(own) {
        0
    } else if own.port_allocation() == PortAllocation::Sequential {
        SEQUENTIAL_LOCAL_SOCKETS
    } else {
        RANDOM_LOCAL_SOCKETS
    };
    let (remote_port_min, remote_port_max, remote_probe_count) = if predictable(remote) {
        // the other side's mapping is known: our sockets send to its reflexive address
        match remote_ports.first() {
            Some(&p) if p != 0 => (u32::from(p), u32::from(p), 0),
            _ => (1, 65_535, 0),
        }
    } else {
        remote_range(remote, remote_ports)
    };
    PortPredictionPlan {
        local_socket_count,
        remote_port_min,
        remote_port_max,
        remote_probe_count,
        max_probes_per_second: MAX_PROBES_PER_SECOND,
    }
}

/// The remote port range to probe and how many ports of it: narrowed to the ports a
/// sequential NAT allocates next, else everything from 1024 up.
fn remote_range(remote: &NatBehaviour, observed: &[u16]) -> (u32, u32, u32) {
    let delta = remote.port_delta;
    let ports: Vec<i64> = observed
        .iter()
        .filter(|&&p| p != 0)
        .map(|&p| i64::from(p))
        .collect();
    if remote.port_allocation() == PortAllocation::Sequential
        && delta != 0
        && let (Some(&lo), Some(&hi)) = (ports.iter().min(), ports.iter().max())
    {
        let step = i64::from(delta);
        let span = i64::from(SEQUENTIAL_PROBE_COUNT) * step.abs();
        let (a, b) = if step > 0 {
            (hi + step.min(1), hi + span)
        } else {
            (lo - span, lo - 1)
        };
        let a = a.clamp(i64::from(LOWEST_PROBED_PORT), 65_535);
        let b = b.clamp(i64::from(LOWEST_PROBED_PORT), 65_535);
        if a <= b {
            let count = u32::try_from((b - a + 1).min(i64::from(SEQUENTIAL_PROBE_COUNT)))
                .unwrap_or(SEQUENTIAL_PROBE_COUNT);
            return (
                u32::try_from(a).unwrap_or(LOWEST_PROBED_PORT),
                u32::try_from(b).unwrap_or(65_535),
                count,
            );
        }
    }
    (LOWEST_PROBED_PORT, 65_535, RANDOM_PROBE_COUNT)
}

/// The one-way delay between a peer and the network, from its clock estimate, plus the
/// estimate's uncertainty, in microseconds.
pub fn one_way_us(clock: Option<&ClockEstimate>) -> u64 {
    match clock {
        Some(c) if c.samples > 0 => u64::from(c.rtt_us / 2) + u64::from(c.error_us),
        _ => UNKNOWN_ONE_WAY_US,
    }
}

/// When both sides start probing, network time in µs: late enough that the instruction has
/// reached the slower side (and its clock uncertainty is covered), plus `margin_us`, so both
/// send their first probes within each other's uncertainty.
pub fn start_at_us(
    now_us: u64,
    initiator: Option<&ClockEstimate>,
    responder: Option<&ClockEstimate>,
    margin_us: u64,
) -> u64 {
    let slowest = one_way_us(initiator).max(one_way_us(responder));
    let delay = (slowest + DELIVERY_OVERHEAD_US + margin_us).min(MAX_START_DELAY_US);
    now_us.saturating_add(delay)
}

/// The keep-alive interval for the punched path: a third of the shorter measured mapping
/// lifetime, 1 to 25 s.
pub fn keepalive_ms(a: &NatBehaviour, b: &NatBehaviour) -> u32 {
    let lifetimes = [a.mapping_lifetime_s, b.mapping_lifetime_s];
    match lifetimes.iter().filter(|&&s| s > 0).min() {
        Some(&s) => s
            .saturating_mul(1000)
            .saturating_div(3)
            .clamp(1_000, 25_000),
        None => DEFAULT_KEEPALIVE_MS,
    }
}

/// The schedule both sides receive.
pub fn schedule(choice: &Choice, start_at_us: u64, keepalive_interval_ms: u32) -> PunchSchedule {
    PunchSchedule {
        start_at_us,
        probe_interval_ms: choice.probe_interval_ms,
        budget_ms: choice.budget_ms,
        keepalive_interval_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nat(m: NatMapping, f: NatFiltering) -> NatBehaviour {
        NatBehaviour {
            mapping: m as i32,
            filtering: f as i32,
            ..NatBehaviour::default()
        }
    }

    const MAPPINGS: [NatMapping; 5] = [
        NatMapping::Unspecified,
        NatMapping::EndpointIndependent,
        NatMapping::AddressDependent,
        NatMapping::AddressAndPortDependent,
        NatMapping::None,
    ];
    const FILTERINGS: [NatFiltering; 4] = [
        NatFiltering::Unspecified,
        NatFiltering::EndpointIndependent,
        NatFiltering::AddressDependent,
        NatFiltering::AddressAndPortDependent,
    ];

    /// The expected strategy, written from the issue text independently of `choose`.
    fn expected(a: &NatBehaviour, b: &NatBehaviour) -> HandshakeStrategy {
        use NatFiltering as F;
        use NatMapping as M;
        let hard = |n: &NatBehaviour| {
            matches!(
                n.mapping(),
                M::AddressDependent | M::AddressAndPortDependent
            )
        };
        let open = |n: &NatBehaviour| {
            matches!(n.filtering(), F::EndpointIndependent | F::AddressDependent)
                || (n.mapping() == M::None && n.filtering() == F::Unspecified)
        };
        match (hard(a), hard(b)) {
            (false, false) => HandshakeStrategy::Direct,
            (true, false) => {
                if open(b) {
                    HandshakeStrategy::Direct
                } else {
                    HandshakeStrategy::PortPrediction
                }
            }
            (false, true) => {
                if open(a) {
                    HandshakeStrategy::Direct
                } else {
                    HandshakeStrategy::PortPrediction
                }
            }
            (true, true) => {
                if open(a) && open(b) {
                    HandshakeStrategy::Direct
                } else if a.mapping() == M::AddressAndPortDependent
                    && b.mapping() == M::AddressAndPortDependent
                    && !open(a)
                    && !open(b)
                {
                    HandshakeStrategy::Relay
                } else {
                    HandshakeStrategy::PortPrediction
                }
            }
        }
    }

    #[test]
    fn every_nat_pair_gets_the_matrix_strategy_symmetrically() {
        let mut seen = std::collections::HashSet::new();
        for ma in MAPPINGS {
            for fa in FILTERINGS {
                for mb in MAPPINGS {
                    for fb in FILTERINGS {
                        let (a, b) = (nat(ma, fa), nat(mb, fb));
                        let c = choose(&a, &b);
                        assert_eq!(
                            c.strategy,
                            expected(&a, &b),
                            "{ma:?}/{fa:?} x {mb:?}/{fb:?}"
                        );
                        // the choice does not depend on who initiates
                        assert_eq!(choose(&b, &a), c, "{ma:?}/{fa:?} x {mb:?}/{fb:?}");
                        match c.strategy {
                            HandshakeStrategy::Relay => assert_eq!(c.budget_ms, 0),
                            _ => assert!(c.budget_ms > 0 && c.probe_interval_ms > 0),
                        }
                        seen.insert(c.strategy);
                    }
                }
            }
        }
        assert_eq!(seen.len(), 3, "all three strategies occur in the matrix");
    }

    #[test]
    fn named_cases_of_the_issue() {
        use NatFiltering as F;
        use NatMapping as M;
        // full cone x port-restricted cone
        let c = choose(
            &nat(M::EndpointIndependent, F::EndpointIndependent),
            &nat(M::EndpointIndependent, F::AddressAndPortDependent),
        );
        assert_eq!(c.strategy, HandshakeStrategy::Direct);
        assert_eq!(c.budget_ms, DIRECT_BUDGET_MS);
        // address-dependent mapping facing restricted-cone filtering: direct
        let c = choose(
            &nat(M::AddressDependent, F::AddressDependent),
            &nat(M::EndpointIndependent, F::AddressDependent),
        );
        assert_eq!(c.strategy, HandshakeStrategy::Direct);
        // address-dependent mapping facing port-restricted filtering: birthday
        let c = choose(
            &nat(M::AddressDependent, F::AddressAndPortDependent),
            &nat(M::EndpointIndependent, F::AddressAndPortDependent),
        );
        assert_eq!(c.strategy, HandshakeStrategy::PortPrediction);
        assert_eq!(c.budget_ms, PREDICTION_BUDGET_MS);
        // both address-dependent: a short try, then the relay
        let c = choose(
            &nat(M::AddressDependent, F::AddressAndPortDependent),
            &nat(M::AddressDependent, F::AddressAndPortDependent),
        );
        assert_eq!(c.strategy, HandshakeStrategy::PortPrediction);
        assert_eq!(c.budget_ms, DOUBLE_HARD_BUDGET_MS);
        // symmetric x symmetric: relay at once
        let sym = nat(M::AddressAndPortDependent, F::AddressAndPortDependent);
        assert_eq!(choose(&sym, &sym).strategy, HandshakeStrategy::Relay);
        // nothing measured: optimistic direct
        let unknown = NatBehaviour::default();
        assert_eq!(
            choose(&unknown, &unknown).strategy,
            HandshakeStrategy::Direct
        );
    }

    #[test]
    fn birthday_plan_splits_the_work_between_the_sides() {
        use NatFiltering as F;
        use NatMapping as M;
        let hard = NatBehaviour {
            port_allocation: PortAllocation::Random as i32,
            ..nat(M::AddressDependent, F::AddressAndPortDependent)
        };
        let easy = nat(M::EndpointIndependent, F::AddressAndPortDependent);
        // the hard side opens many sockets toward the easy side's one reflexive port
        let p = prediction_plan(&hard, &easy, &[40_000]);
        assert_eq!(p.local_socket_count, RANDOM_LOCAL_SOCKETS);
        assert_eq!((p.remote_port_min, p.remote_port_max), (40_000, 40_000));
        assert_eq!(p.remote_probe_count, 0);
        // the easy side probes random ports of the hard side, whole range
        let p = prediction_plan(&easy, &hard, &[50_000, 50_007]);
        assert_eq!(p.local_socket_count, 0);
        assert_eq!((p.remote_port_min, p.remote_port_max), (1_024, 65_535));
        assert_eq!(p.remote_probe_count, RANDOM_PROBE_COUNT);
        assert!(p.max_probes_per_second > 0 && p.max_probes_per_second <= 2_000);
        assert!(p.local_socket_count <= 256 && p.remote_probe_count <= 2_048);
    }

    #[test]
    fn sequential_allocation_narrows_the_probed_range() {
        use NatFiltering as F;
        use NatMapping as M;
        let seq = NatBehaviour {
            port_allocation: PortAllocation::Sequential as i32,
            port_delta: 2,
            ..nat(M::AddressDependent, F::AddressAndPortDependent)
        };
        let easy = nat(M::EndpointIndependent, F::AddressAndPortDependent);
        let p = prediction_plan(&easy, &seq, &[30_000, 30_002]);
        assert_eq!(p.remote_port_min, 30_003);
        assert_eq!(p.remote_port_max, 30_002 + 2 * SEQUENTIAL_PROBE_COUNT);
        assert_eq!(p.remote_probe_count, SEQUENTIAL_PROBE_COUNT);
        // going down, near the bottom: clipped at 1024, count bounded by the range
        let down = NatBehaviour {
            port_delta: -1,
            ..seq
        };
        let p = prediction_plan(&easy, &down, &[1_100]);
        assert_eq!((p.remote_port_min, p.remote_port_max), (1_024, 1_099));
        assert_eq!(p.remote_probe_count, 76);
        // near the top: the range ends at 65535
        let p = prediction_plan(&easy, &seq, &[65_000]);
        assert_eq!(p.remote_port_max, 65_535);
        // sequential without an observed port: the whole range
        let p = prediction_plan(&easy, &seq, &[]);
        assert_eq!(
            (p.remote_port_min, p.remote_probe_count),
            (1_024, RANDOM_PROBE_COUNT)
        );
        // the sequential hard side needs fewer sockets
        assert_eq!(
            prediction_plan(&seq, &easy, &[1]).local_socket_count,
            SEQUENTIAL_LOCAL_SOCKETS
        );
    }

    fn clock(rtt_us: u32, error_us: u32) -> ClockEstimate {
        ClockEstimate {
            rtt_us,
            error_us,
            samples: 5,
            ..ClockEstimate::default()
        }
    }

    #[test]
    fn start_waits_for_the_slower_side_plus_the_margin() {
        let now = 1_700_000_000_000_000;
        // 40 ms RTT (20 ms one way + 20 ms error) vs 10 ms RTT: the slower decides
        let s = start_at_us(
            now,
            Some(&clock(40_000, 20_000)),
            Some(&clock(10_000, 5_000)),
            75_000,
        );
        assert_eq!(s, now + 40_000 + DELIVERY_OVERHEAD_US + 75_000);
        // symmetric in the sides
        assert_eq!(
            s,
            start_at_us(
                now,
                Some(&clock(10_000, 5_000)),
                Some(&clock(40_000, 20_000)),
                75_000
            )
        );
        // no estimate: a conservative one-way delay
        let s = start_at_us(now, None, Some(&clock(10_000, 5_000)), 75_000);
        assert_eq!(s, now + UNKNOWN_ONE_WAY_US + DELIVERY_OVERHEAD_US + 75_000);
        // an estimate with no samples counts as none
        let empty = ClockEstimate::default();
        assert_eq!(
            start_at_us(now, Some(&empty), None, 0),
            now + UNKNOWN_ONE_WAY_US + DELIVERY_OVERHEAD_US
        );
        // bounded: a terrible estimate never pushes the start beyond 3 s
        let s = start_at_us(now, Some(&clock(u32::MAX, u32::MAX)), None, 75_000);
        assert_eq!(s, now + MAX_START_DELAY_US);
        // always in the future
        assert!(start_at_us(now, None, None, 0) > now);
    }

    #[test]
    fn keepalive_follows_the_shorter_mapping_lifetime() {
        let mut a = NatBehaviour::default();
        let mut b = NatBehaviour::default();
        assert_eq!(keepalive_ms(&a, &b), DEFAULT_KEEPALIVE_MS);
        a.mapping_lifetime_s = 30;
        b.mapping_lifetime_s = 120;
        assert_eq!(keepalive_ms(&a, &b), 10_000);
        a.mapping_lifetime_s = 1;
        assert_eq!(keepalive_ms(&a, &b), 1_000);
        a.mapping_lifetime_s = 3600;
        b.mapping_lifetime_s = 0;
        assert_eq!(keepalive_ms(&a, &b), 25_000);
    }
}
