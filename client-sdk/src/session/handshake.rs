//! Handshake signalling on the session: asking for a tunnel, answering offers, trickling
//! candidates, reporting outcomes and NAT behaviour, and the events the handshake role pushes
//! back ([`HandshakeEvent`]). Also the session's view of the network it talks through: the
//! reflexive address the gateway observes and the clock estimate against network time, which the
//! punching engine needs to start probing at the scheduled instant.
//!
//! The requests travel on the control stream like any other (the driver matches answers by
//! request id). A request in flight when the gateway connection drops fails with
//! [`SessionError::Unavailable`] (it is not replayed: a handshake is short-lived, the caller
//! decides whether to ask again); one made while reconnecting waits for the next gateway.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quickp2p_proto::v1::{self, peer_request::Request, peer_response::Result as Res};
use tokio::sync::{broadcast, oneshot};

use super::{Command, Session, SessionError};

/// How long a signalling request may wait for the gateway's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A handshake signalling event pushed by the gateway.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "a few events per handshake; matching by value is simpler for the punching engine"
)]
pub enum HandshakeEvent {
    /// A peer asks for a tunnel to this peer: answer with [`Session::share_candidates`] (accept)
    /// or [`Session::report_punch_outcome`] with `PUNCH_OUTCOME_DECLINED`.
    Offer(v1::HandshakeOffer),
    /// Punch now: the plan for an attempt, tailored to this peer.
    Instruction {
        /// The instruction.
        instruction: v1::HandshakeInstruction,
        /// `GatewayFrame.server_time_us` of the frame that carried it (network time when the
        /// gateway wrote it), for converting the start time without a clock estimate.
        server_time_us: u64,
        /// The local instant the frame arrived.
        received_at: Instant,
    },
    /// More candidates of the other peer of a running attempt.
    RemoteCandidates(v1::RemoteCandidates),
    /// A handshake ended without this peer's doing (declined, cancelled, timed out, peer gone).
    Closed(v1::HandshakeClosed),
}

/// How many clock samples the estimator remembers (the lowest-RTT one of them wins).
const CLOCK_SAMPLES: usize = 8;

/// Combines NTP-style clock samples into a [`v1::ClockEstimate`]: the sample with the lowest
/// round-trip time among the last few gives the offset (its error is at most half its RTT).
/// Pure: all times come in as arguments.
#[derive(Debug, Default, Clone)]
pub(crate) struct ClockEstimator {
    /// (offset_us, rtt_us, network time of the sample in µs), oldest first.
    samples: VecDeque<(i64, u32, u64)>,
    total: u32,
}

impl ClockEstimator {
    /// Adds one sample: t0 = peer clock when the request was written, t1/t2 = network time
    /// when the gateway read it / wrote the answer, t3 = peer clock when the answer arrived
    /// (all µs since the Unix epoch). Samples with impossible times are ignored.
    pub(crate) fn add(&mut self, t0: u64, t1: u64, t2: u64, t3: u64) {
        if t3 < t0 || t2 < t1 || t0 == 0 || t1 == 0 {
            return;
        }
        let (t0, t1, t2, t3) = (
            i128::from(t0),
            i128::from(t1),
            i128::from(t2),
            i128::from(t3),
        );
        let rtt = ((t3 - t0) - (t2 - t1)).max(0);
        let offset = ((t1 - t0) + (t2 - t3)) / 2;
        let (Ok(offset), Ok(rtt), Ok(at)) = (
            i64::try_from(offset),
            u32::try_from(rtt),
            u64::try_from(t3 + offset),
        ) else {
            return;
        };
        if self.samples.len() == CLOCK_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((offset, rtt, at));
        self.total = self.total.saturating_add(1);
    }

    /// The current estimate, if any sample was taken.
    pub(crate) fn estimate(&self) -> Option<v1::ClockEstimate> {
        let newest = self.samples.back()?.2;
        let &(offset_us, rtt_us, _) = self.samples.iter().min_by_key(|s| s.1)?;
        Some(v1::ClockEstimate {
            offset_us,
            rtt_us,
            error_us: rtt_us.div_ceil(2).max(1),
            samples: self.total,
            updated_at_us: newest,
        })
    }
}

/// Microseconds since the Unix epoch on this host's clock.
pub(crate) fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What the driver learns about the network for the handles to read.
#[derive(Debug, Default)]
pub(crate) struct NetworkView {
    pub(crate) observed: std::sync::Mutex<Option<SocketAddr>>,
    pub(crate) clock: std::sync::Mutex<ClockEstimator>,
}

impl NetworkView {
    pub(crate) fn set_observed(&self, address: Option<&v1::SocketAddress>) {
        if let Some(addr) = address.and_then(|a| SocketAddr::try_from(a).ok())
            && let Ok(mut observed) = self.observed.lock()
        {
            *observed = Some(addr);
        }
    }

    pub(crate) fn clock_estimate(&self) -> Option<v1::ClockEstimate> {
        self.clock.lock().ok().and_then(|c| c.estimate())
    }
}

/// The answer of a request sent through [`Command::Call`].
pub(crate) type CallReply = oneshot::Sender<Result<Res, SessionError>>;

impl Session {
    /// Handshake events pushed by the gateway (offers, instructions, trickled candidates,
    /// closes). Each receiver sees the events from its creation on; a lagging receiver loses
    /// the oldest (capacity 256).
    pub fn handshake_events(&self) -> broadcast::Receiver<HandshakeEvent> {
        self.inner.handshake.subscribe()
    }

    /// Asks the network for a tunnel to `request.target` (a peer of the same application).
    /// Resolves when the negotiation started; the instruction (or a close) follows as a
    /// [`HandshakeEvent`]. Errors: [`SessionError::PeerOffline`] (also for peers of another
    /// application), [`SessionError::RateLimited`], [`SessionError::Unavailable`].
    pub async fn request_tunnel(
        &self,
        request: v1::RequestTunnel,
    ) -> Result<v1::TunnelRequested, SessionError> {
        match self.call(Request::RequestTunnel(request)).await? {
            Res::TunnelRequested(t) => Ok(t),
            _ => Err(unexpected("RequestTunnel")),
        }
    }

    /// Gives this peer's candidates for a handshake: accepts an offer, or trickles late
    /// candidates (e.g. a relay allocation) of a running attempt.
    pub async fn share_candidates(&self, share: v1::ShareCandidates) -> Result<(), SessionError> {
        match self.call(Request::ShareCandidates(share)).await? {
            Res::Ack(_) => Ok(()),
            _ => Err(unexpected("ShareCandidates")),
        }
    }

    /// Reports how an attempt ended for this peer (`PUNCH_OUTCOME_DECLINED` declines an offer,
    /// `PUNCH_OUTCOME_CANCELLED` gives up).
    pub async fn report_punch_outcome(&self, report: v1::PunchReport) -> Result<(), SessionError> {
        let request = Request::ReportPunchOutcome(v1::ReportPunchOutcome {
            report: Some(report),
        });
        match self.call(request).await? {
            Res::Ack(_) => Ok(()),
            _ => Err(unexpected("ReportPunchOutcome")),
        }
    }

    /// Reports this peer's NAT behaviour (a [`crate::nat`] report); the latest one is used for
    /// handshakes and statistics.
    pub async fn report_nat(&self, report: v1::NatReport) -> Result<(), SessionError> {
        let request = Request::ReportNat(v1::ReportNat {
            report: Some(report),
        });
        match self.call(request).await? {
            Res::Ack(_) => Ok(()),
            _ => Err(unexpected("ReportNat")),
        }
    }

    /// The session socket's reflexive address as the gateway sees it (Welcome/HeartbeatAck
    /// observed_address).
    pub fn observed_address(&self) -> Option<SocketAddr> {
        self.inner.network.observed.lock().ok().and_then(|o| *o)
    }

    /// Best clock estimate against network time (offset/rtt), from SyncClock samples, if any.
    /// The session takes 5 samples after each login, one every 30 s after that, and more when
    /// the gateway asks (`ClockSyncRequested`).
    pub fn clock_estimate(&self) -> Option<v1::ClockEstimate> {
        self.inner.network.clock_estimate()
    }

    /// Sends one request and waits for its answer (an error answer becomes the error).
    async fn call(&self, request: Request) -> Result<Res, SessionError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Call { request, reply }).await?;
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SessionError::Closed("the session ended".into())),
            Err(_) => Err(SessionError::Unavailable(format!(
                "the gateway did not answer within {CALL_TIMEOUT:?}"
            ))),
        }
    }
}

fn unexpected(what: &str) -> SessionError {
    SessionError::Unavailable(format!("unexpected answer to {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_estimate_uses_the_lowest_rtt_sample() {
        let mut c = ClockEstimator::default();
        assert!(c.estimate().is_none());
        // peer clock 1 s behind network time; 10 ms RTT, symmetric
        c.add(1_000_000, 2_005_000, 2_005_100, 1_010_100);
        // 2 ms RTT sample, offset exactly 1 s
        c.add(3_000_000, 4_001_000, 4_001_000, 3_002_000);
        // asymmetric slow sample: would give a wrong offset
        c.add(5_000_000, 6_040_000, 6_040_000, 5_050_000);
        let e = c.estimate().expect("estimate");
        assert_eq!(e.offset_us, 1_000_000);
        assert_eq!(e.rtt_us, 2_000);
        assert_eq!(e.error_us, 1_000);
        assert_eq!(e.samples, 3);
        assert_eq!(e.updated_at_us, 5_050_000 + 1_015_000);
    }

    #[test]
    fn impossible_samples_are_ignored_and_old_ones_forgotten() {
        let mut c = ClockEstimator::default();
        c.add(10, 5, 4, 20); // server sent before it received
        c.add(10, 5, 6, 9); // answer before the request
        assert!(c.estimate().is_none());
        c.add(1_000, 1_000, 1_000, 1_010);
        for i in 0..CLOCK_SAMPLES as u64 {
            c.add(10_000 + i, 10_000 + i, 10_000 + i, 10_100 + i);
        }
        // the 10 µs sample fell out of the window
        assert_eq!(c.estimate().expect("estimate").rtt_us, 100);
    }
}
