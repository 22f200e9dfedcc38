//! Hole punching: the engine that turns a `HandshakeInstruction` into a direct UDP path to the
//! other peer, or a typed failure after the budget (then the caller uses the relay).
//!
//! * [`PunchPlan`]: the checked, bounded plan of one attempt
//!   ([`PunchPlan::from_instruction`], with the start converted by [`local_start`]);
//! * [`Punch`]: the sans-IO state machine — ICE-style authenticated connectivity checks
//!   ([`quickp2p_wire::probe`]), peer-reflexive learning, the birthday technique of
//!   `HANDSHAKE_STRATEGY_PORT_PREDICTION` (whose extra sockets open their NAT mappings with
//!   TTL-limited *openers* until they hear the other side, [`PunchPlan::opener_ttl`]), nomination
//!   by the initiator and confirmation by the responder (details in [`machine`]);
//! * [`punch()`]: the tokio driver, on the session's [`SharedSocket`](crate::session::SharedSocket)
//!   or a plain UDP socket ([`MainSocket`]), opening the birthday side's extra sockets itself;
//! * [`punch_report`]: the `PunchReport` of an attempt.
//!
//! ```no_run
//! # async fn demo(
//! #     instruction: quickp2p::punch::HandshakeInstruction,
//! #     socket: &quickp2p::session::SharedSocket,
//! #     incoming: &mut tokio::sync::mpsc::Receiver<quickp2p::session::NonQuicDatagram>,
//! #     start: std::time::Instant,
//! # ) -> Result<(), quickp2p::punch::PunchError> {
//! use quickp2p::punch::{MainSocket, PathSocket, PunchPlan, punch};
//!
//! let plan = PunchPlan::from_instruction(&instruction, start)?;
//! let success = punch(&plan, MainSocket::Shared { socket, incoming }).await?;
//! match success.path.socket {
//!     PathSocket::Main => { /* QUIC to success.path.remote on the session's endpoint */ }
//!     PathSocket::Extra(udp) => { /* a new quinn endpoint on `udp` */ let _ = udp; }
//! }
//! # Ok(())
//! # }
//! ```

mod driver;
pub mod machine;
mod plan;

pub use driver::{
    MainSocket, PathSocket, PunchError, PunchSuccess, PunchedPath, punch, punch_report,
};
pub use machine::{
    Disposition, MAX_BIRTHDAY_TARGETS, OPENER_REFRESH, Punch, PunchState, PunchStats,
    RejectedProbes, SelectedPair, Transmit,
};
pub use plan::{
    DEFAULT_MAX_PROBES_PER_SECOND, DEFAULT_OPENER_TTL, DEFAULT_PROBE_INTERVAL, MAX_BUDGET,
    MAX_CANDIDATE_ADDRESSES, MAX_LOCAL_SOCKETS, MAX_OPENER_TTL, MAX_PROBE_INTERVAL,
    MAX_PROBES_PER_SECOND, MAX_REMOTE_CANDIDATES, MAX_REMOTE_PROBES, MIN_PROBE_INTERVAL, PlanError,
    PortPrediction, PunchPlan, PunchStrategy, RemoteCandidate, local_start,
};
/// The protocol types the punch API reads and writes.
pub use quickp2p_proto::v1::{
    Candidate, CandidateKind, ClockEstimate, HandshakeInstruction, HandshakeRole,
    HandshakeStrategy, PortPredictionPlan, PunchOutcome, PunchReport, PunchSchedule, SocketAddress,
};
/// The probe roles (the initiator nominates, the responder confirms).
pub use quickp2p_wire::probe::ProbeRole;

#[cfg(test)]
mod tests;
