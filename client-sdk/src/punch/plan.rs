//! [`PunchPlan`]: what one side must do in one punching attempt, checked and bounded, built from a
//! `v1::HandshakeInstruction` ([`PunchPlan::from_instruction`]) or directly (tests, tools).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quickp2p_proto::v1;
use quickp2p_wire::probe::{MAX_HANDSHAKE_ID_LEN, PROBE_KEY_LEN, ProbeRole};

/// Most remote candidates taken from an instruction (the proto allows 64 per party).
pub const MAX_REMOTE_CANDIDATES: usize = 64;
/// Most addresses the candidates expand to (a predicted candidate spans up to 1024 ports).
pub const MAX_CANDIDATE_ADDRESSES: usize = 4096;
/// Most extra local sockets of the birthday side (the proto's bound).
pub const MAX_LOCAL_SOCKETS: u16 = 256;
/// Most random remote ports probed by the other side (the proto's bound).
pub const MAX_REMOTE_PROBES: u16 = 2048;
/// Probe rate used when the plan sets none (DIRECT, or a prediction plan with 0), per second.
pub const DEFAULT_MAX_PROBES_PER_SECOND: u32 = 1000;
/// Highest probe rate accepted; higher values are lowered to it.
pub const MAX_PROBES_PER_SECOND: u32 = 5000;
/// Probe interval used when the schedule sets none.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Shortest probe interval accepted (shorter ones are raised to it).
pub const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// Longest probe interval accepted (longer ones are lowered to it).
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest budget accepted (longer ones are lowered to it).
pub const MAX_BUDGET: Duration = Duration::from_secs(60);
/// IP TTL of the birthday side's *openers* when the plan sets none (see
/// [`PunchPlan::opener_ttl`]): enough to cross one NAT in front of this host and expire at the
/// next router, before the far NAT.
pub const DEFAULT_OPENER_TTL: u8 = 2;
/// Highest opener TTL accepted (higher values are lowered to it).
pub const MAX_OPENER_TTL: u8 = 16;

/// How to punch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PunchStrategy {
    /// Probe every remote candidate from the main socket (HANDSHAKE_STRATEGY_DIRECT).
    Direct,
    /// Direct, plus the [`PortPrediction`] birthday technique
    /// (HANDSHAKE_STRATEGY_PORT_PREDICTION).
    PortPrediction,
}

/// One remote candidate to probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteCandidate {
    /// Host, reflexive or predicted (relay candidates are not probed: the relay is the fallback).
    pub kind: v1::CandidateKind,
    /// The address to probe (for a predicted candidate, the first of `port_span` ports).
    pub address: SocketAddr,
    /// Its priority (higher first).
    pub priority: u32,
    /// For a predicted candidate, how many consecutive ports from `address` (1 to 1024).
    pub port_span: u16,
}

/// The port-prediction parameters (`v1::PortPredictionPlan`), checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortPrediction {
    /// Extra local sockets this side opens, each probing the remote reflexive candidate
    /// (0 to [`MAX_LOCAL_SOCKETS`]).
    pub local_socket_count: u16,
    /// Lowest remote port to spray on the remote reflexive IP.
    pub remote_port_min: u16,
    /// Highest remote port to spray (inclusive).
    pub remote_port_max: u16,
    /// Distinct random ports to spray from the main socket (0 to [`MAX_REMOTE_PROBES`]).
    pub remote_probe_count: u16,
}

/// One side's punching attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PunchPlan {
    /// The negotiation id (1 to 32 bytes).
    pub handshake_id: Vec<u8>,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// This side's role: the initiator nominates the path, the responder confirms it.
    pub role: ProbeRole,
    /// The strategy.
    pub strategy: PunchStrategy,
    /// The other side's candidates, highest priority first.
    pub remote_candidates: Vec<RemoteCandidate>,
    /// The attempt's probe key.
    pub probe_key: [u8; PROBE_KEY_LEN],
    /// When to send the first probe, on this host's monotonic clock.
    pub start: Instant,
    /// Interval between two probes of the same pair.
    pub probe_interval: Duration,
    /// How long after `start` to give up.
    pub budget: Duration,
    /// Port prediction; `None` for [`PunchStrategy::Direct`].
    pub prediction: Option<PortPrediction>,
    /// Upper bound on connectivity checks sent per second over all sockets (responses to the
    /// other side's checks are not counted: there is one per authenticated check received).
    pub max_probes_per_second: u32,
    /// IP TTL (IPv6 hop limit) of the birthday side's *openers*: until an extra socket has
    /// received an authenticated probe, it sends only datagrams with this TTL, which open and
    /// keep its mapping on the NAT(s) in front of this host but expire before the far NAT, so
    /// they leave no conntrack entry there that would move the far side's mapping (DESIGN.md §4).
    /// 2 crosses one NAT (the host's own router); behind a carrier-grade NAT as well use 3.
    /// 0 turns openers off: extra sockets send full-TTL checks from the start. Set to
    /// [`DEFAULT_OPENER_TTL`] by [`PunchPlan::from_instruction`]; unused without extra sockets.
    pub opener_ttl: u8,
}

/// Why an instruction cannot be punched.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The strategy is RELAY or unknown: nothing to punch.
    #[error("strategy {0} is not a punching strategy")]
    NotAPunchStrategy(i32),
    /// The role is unknown.
    #[error("handshake role {0} is unknown")]
    UnknownRole(i32),
    /// The probe key is not 32 bytes.
    #[error("probe key must be {PROBE_KEY_LEN} bytes, got {0}")]
    ProbeKey(usize),
    /// The handshake id is empty or too long.
    #[error("handshake id must be 1 to {MAX_HANDSHAKE_ID_LEN} bytes, got {0}")]
    HandshakeId(usize),
    /// Attempt 0.
    #[error("attempt numbers start at 1")]
    Attempt,
    /// No schedule, or a zero budget.
    #[error("the instruction has no schedule or a zero budget")]
    Schedule,
    /// No candidate to probe.
    #[error("no remote candidate to probe (host, reflexive or predicted)")]
    NoCandidates,
    /// The port-prediction parameters are missing or out of range.
    #[error("port prediction plan: {0}")]
    Prediction(String),
}

impl PunchPlan {
    /// The plan of `instruction`, whose first probe is due at `start` on this host's clock (see
    /// [`local_start`]). Candidates that cannot be probed (relay, unknown kind, bad address) are
    /// skipped; counts and timers are bounded by the constants of this module.
    pub fn from_instruction(
        instruction: &v1::HandshakeInstruction,
        start: Instant,
    ) -> Result<PunchPlan, PlanError> {
        let strategy = match instruction.strategy() {
            v1::HandshakeStrategy::Direct => PunchStrategy::Direct,
            v1::HandshakeStrategy::PortPrediction => PunchStrategy::PortPrediction,
            _ => return Err(PlanError::NotAPunchStrategy(instruction.strategy)),
        };
        let role = match instruction.role() {
            v1::HandshakeRole::Initiator => ProbeRole::Initiator,
            v1::HandshakeRole::Responder => ProbeRole::Responder,
            v1::HandshakeRole::Unspecified => return Err(PlanError::UnknownRole(instruction.role)),
        };
        let probe_key: [u8; PROBE_KEY_LEN] = instruction
            .probe_key
            .as_ref()
            .try_into()
            .map_err(|_| PlanError::ProbeKey(instruction.probe_key.len()))?;
        let schedule = instruction.schedule.as_ref().ok_or(PlanError::Schedule)?;
        if schedule.budget_ms == 0 {
            return Err(PlanError::Schedule);
        }
        let interval = match schedule.probe_interval_ms {
            0 => DEFAULT_PROBE_INTERVAL,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let remote_candidates = instruction
            .remote_candidates
            .iter()
            .filter_map(candidate)
            .take(MAX_REMOTE_CANDIDATES)
            .collect();
        let (prediction, rate) = match (strategy, &instruction.prediction) {
            (PunchStrategy::Direct, _) => (None, DEFAULT_MAX_PROBES_PER_SECOND),
            (PunchStrategy::PortPrediction, None) => {
                return Err(PlanError::Prediction("missing".into()));
            }
            (PunchStrategy::PortPrediction, Some(p)) => (
                Some(prediction(p)?),
                match p.max_probes_per_second {
                    0 => DEFAULT_MAX_PROBES_PER_SECOND,
                    n => n,
                },
            ),
        };
        PunchPlan {
            handshake_id: instruction.handshake_id.to_vec(),
            attempt: instruction.attempt,
            role,
            strategy,
            remote_candidates,
            probe_key,
            start,
            probe_interval: interval,
            budget: Duration::from_millis(u64::from(schedule.budget_ms)),
            prediction,
            max_probes_per_second: rate,
            opener_ttl: DEFAULT_OPENER_TTL,
        }
        .checked()
    }

    /// The plan with its timers and rates brought into range, or why it cannot run.
    pub fn checked(mut self) -> Result<PunchPlan, PlanError> {
        if self.handshake_id.is_empty() || self.handshake_id.len() > MAX_HANDSHAKE_ID_LEN {
            return Err(PlanError::HandshakeId(self.handshake_id.len()));
        }
        if self.attempt == 0 {
            return Err(PlanError::Attempt);
        }
        if self.budget.is_zero() {
            return Err(PlanError::Schedule);
        }
        self.budget = self.budget.min(MAX_BUDGET);
        self.probe_interval = self
            .probe_interval
            .clamp(MIN_PROBE_INTERVAL, MAX_PROBE_INTERVAL);
        self.max_probes_per_second = self.max_probes_per_second.clamp(1, MAX_PROBES_PER_SECOND);
        self.opener_ttl = self.opener_ttl.min(MAX_OPENER_TTL);
        self.remote_candidates.truncate(MAX_REMOTE_CANDIDATES);
        for c in &mut self.remote_candidates {
            c.port_span = c.port_span.clamp(1, 1024);
        }
        if self.remote_candidates.is_empty() {
            return Err(PlanError::NoCandidates);
        }
        match (self.strategy, &mut self.prediction) {
            (PunchStrategy::Direct, prediction) => *prediction = None,
            (PunchStrategy::PortPrediction, None) => {
                return Err(PlanError::Prediction("missing".into()));
            }
            (PunchStrategy::PortPrediction, Some(p)) => {
                check_prediction(p)?;
            }
        }
        Ok(self)
    }
}

fn candidate(c: &v1::Candidate) -> Option<RemoteCandidate> {
    let kind = c.kind();
    if !matches!(
        kind,
        v1::CandidateKind::Host | v1::CandidateKind::Reflexive | v1::CandidateKind::Predicted
    ) {
        return None;
    }
    let address = SocketAddr::try_from(c.address.as_ref()?).ok()?;
    if address.port() == 0 || address.ip().is_unspecified() {
        return None;
    }
    let port_span = if kind == v1::CandidateKind::Predicted {
        u16::try_from(c.port_span.clamp(1, 1024)).unwrap_or(1)
    } else {
        1
    };
    Some(RemoteCandidate {
        kind,
        address,
        priority: c.priority,
        port_span,
    })
}

fn prediction(p: &v1::PortPredictionPlan) -> Result<PortPrediction, PlanError> {
    let port = |value: u32, name: &str| {
        u16::try_from(value)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| PlanError::Prediction(format!("{name} {value} is not a port")))
    };
    let count = |value: u32, max: u16, name: &str| {
        u16::try_from(value)
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| PlanError::Prediction(format!("{name} {value} is above {max}")))
    };
    let local_socket_count = count(
        p.local_socket_count,
        MAX_LOCAL_SOCKETS,
        "local_socket_count",
    )?;
    let remote_probe_count = count(
        p.remote_probe_count,
        MAX_REMOTE_PROBES,
        "remote_probe_count",
    )?;
    let (remote_port_min, remote_port_max) = if remote_probe_count == 0 {
        (1, 65535)
    } else {
        (
            port(p.remote_port_min, "remote_port_min")?,
            port(p.remote_port_max, "remote_port_max")?,
        )
    };
    let plan = PortPrediction {
        local_socket_count,
        remote_port_min,
        remote_port_max,
        remote_probe_count,
    };
    check_prediction(&plan)?;
    Ok(plan)
}

fn check_prediction(p: &PortPrediction) -> Result<(), PlanError> {
    if p.local_socket_count > MAX_LOCAL_SOCKETS {
        return Err(PlanError::Prediction(format!(
            "local_socket_count {} is above {MAX_LOCAL_SOCKETS}",
            p.local_socket_count
        )));
    }
    if p.remote_probe_count > MAX_REMOTE_PROBES {
        return Err(PlanError::Prediction(format!(
            "remote_probe_count {} is above {MAX_REMOTE_PROBES}",
            p.remote_probe_count
        )));
    }
    if p.remote_probe_count > 0 && (p.remote_port_min == 0 || p.remote_port_min > p.remote_port_max)
    {
        return Err(PlanError::Prediction(format!(
            "remote port range {}..={} is empty",
            p.remote_port_min, p.remote_port_max
        )));
    }
    Ok(())
}

/// The local [`Instant`] of the network time `start_at_us` (`PunchSchedule.start_at_us`), as
/// the schedule's documentation says: with a clock estimate, local = network − offset; without
/// one, `received_at` + (`start_at_us` − `server_time_us`) − `rtt / 2` from the frame that
/// carried the instruction. A start already past is now.
pub fn local_start(
    start_at_us: u64,
    clock: Option<&v1::ClockEstimate>,
    server_time_us: u64,
    received_at: Instant,
    rtt: Duration,
) -> Instant {
    let now = Instant::now();
    match clock {
        Some(estimate) => {
            let local_now_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| i128::try_from(d.as_micros()).unwrap_or(i128::MAX))
                .unwrap_or(0);
            let network_now_us = local_now_us + i128::from(estimate.offset_us);
            let ahead_us = i128::from(start_at_us) - network_now_us;
            offset(now, ahead_us)
        }
        None => {
            let ahead_us = i128::from(start_at_us)
                - i128::from(server_time_us)
                - i128::try_from(rtt.as_micros() / 2).unwrap_or(0);
            offset(received_at, ahead_us).max(now)
        }
    }
}

/// `base` moved by `micros` (negative: earlier), saturating at `base` for times in the past
/// that the clock cannot represent.
fn offset(base: Instant, micros: i128) -> Instant {
    let magnitude = Duration::from_micros(u64::try_from(micros.unsigned_abs()).unwrap_or(u64::MAX));
    if micros >= 0 {
        base.checked_add(magnitude.min(MAX_BUDGET * 10))
            .unwrap_or(base)
    } else {
        base.checked_sub(magnitude).unwrap_or(base)
    }
}
