//! Names of shared records that one role writes and another reads, kept here so that writer and
//! reader agree: counter maps of handshake outcomes, the latest NAT report of each peer, and the
//! admin audit log. Every name is a global store name (counter map, counter or ephemeral key, see
//! the [crate documentation](crate)); values are described next to each name.
//!
//! NAT classes in field names are written `M/F`: the numbers of the protobuf enums
//! `quickp2p.v1.NatMapping` (M) and `quickp2p.v1.NatFiltering` (F), e.g. `1/3` for
//! endpoint-independent mapping with address-and-port-dependent filtering, `0/0` for unknown.

/// Counter map of handshake (punch) outcomes per ordered NAT pair, written by the handshake role
/// with [`crate::Store::incr_counter_field`] (`by` = 1) when an attempt ends, read by the admin
/// role's network statistics.
///
/// Field: `{initiator_mapping}/{initiator_filtering}|{responder_mapping}/{responder_filtering}|{outcome}`
/// where the NAT classes are enum numbers (see the module documentation) and `outcome` is one of
/// `direct`, `relayed`, `failed` (the `PunchOutcome` values that count as attempts; declined and
/// cancelled handshakes are not counted). Example: `1/1|3/3|relayed`. Use [`outcome_field`].
pub const HANDSHAKE_OUTCOMES_MAP: &str = "handshake:outcomes";

/// Counter map of how long successful handshakes took to give a usable tunnel, per ordered NAT
/// pair, as a histogram: field `{initiator}|{responder}|{bucket}` (NAT classes as in
/// [`HANDSHAKE_OUTCOMES_MAP`]), `bucket` = the smallest of [`READY_MS_BUCKETS`] that is at least
/// the duration in milliseconds. Use [`ready_ms_field`]. The admin role derives the median and
/// 95th percentile from it (as bucket upper bounds).
pub const HANDSHAKE_READY_MS_MAP: &str = "handshake:ready_ms";

/// The per-application twin of [`HANDSHAKE_OUTCOMES_MAP`] (same fields), written alongside it, so
/// that statistics can be restricted to one application.
pub fn app_outcomes_map(app_id: &str) -> String {
    format!("{HANDSHAKE_OUTCOMES_MAP}:app:{app_id}")
}

/// The per-application twin of [`HANDSHAKE_READY_MS_MAP`] (same fields), written alongside it.
pub fn app_ready_ms_map(app_id: &str) -> String {
    format!("{HANDSHAKE_READY_MS_MAP}:app:{app_id}")
}

/// Counter holding when the handshake counters started counting (Unix ms): the first writer that
/// reads 0 from [`crate::Store::get_counter`] adds the current time. 0 = nothing counted yet.
pub const HANDSHAKE_COUNTERS_SINCE: &str = "handshake:since_unix_ms";

/// Upper bounds (milliseconds) of the buckets of [`HANDSHAKE_READY_MS_MAP`]; the last one
/// catches everything longer.
pub const READY_MS_BUCKETS: [u32; 12] = [
    25,
    50,
    100,
    200,
    400,
    800,
    1_600,
    3_200,
    6_400,
    12_800,
    25_600,
    u32::MAX,
];

/// The [`HANDSHAKE_OUTCOMES_MAP`] field of one attempt. NAT classes are `(mapping, filtering)`
/// enum numbers.
pub fn outcome_field(initiator: (i32, i32), responder: (i32, i32), outcome: &str) -> String {
    format!(
        "{}/{}|{}/{}|{outcome}",
        initiator.0, initiator.1, responder.0, responder.1
    )
}

/// The [`HANDSHAKE_READY_MS_MAP`] field of one successful attempt that took `ready_ms`.
pub fn ready_ms_field(initiator: (i32, i32), responder: (i32, i32), ready_ms: u32) -> String {
    let bucket = READY_MS_BUCKETS
        .iter()
        .copied()
        .find(|b| *b >= ready_ms)
        .unwrap_or(u32::MAX);
    format!(
        "{}/{}|{}/{}|{bucket}",
        initiator.0, initiator.1, responder.0, responder.1
    )
}

/// Ephemeral key of a peer's latest NAT report: the protobuf-encoded `quickp2p.v1.NatReport`,
/// written by whoever receives the peer's `ReportNat` (the gateway or the handshake role) with
/// the session's TTL and refreshed with it, read by the admin role (peer details, NAT histogram)
/// and by handshakes that were given no fresh report.
pub fn nat_report_key(app_id: &str, peer_id: &str) -> String {
    format!("nat:{app_id}:{peer_id}")
}

/// Counter of the admin audit log: the sequence number of the newest event (events are numbered
/// from 1).
pub const AUDIT_SEQUENCE: &str = "admin:audit:seq";

/// How many audit events are kept: appending event `n` deletes event `n - AUDIT_KEEP`.
pub const AUDIT_KEEP: u64 = 10_000;

/// Ephemeral key of audit event number `seq` (the protobuf-encoded `quickp2p.v1.AuditEvent`,
/// kept for [`crate::limits::MAX_TTL`] at most).
pub fn audit_event_key(seq: u64) -> String {
    format!("admin:audit:{seq}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        assert_eq!(outcome_field((1, 1), (3, 3), "relayed"), "1/1|3/3|relayed");
        assert_eq!(ready_ms_field((1, 2), (0, 0), 0), "1/2|0/0|25");
        assert_eq!(ready_ms_field((1, 2), (0, 0), 101), "1/2|0/0|200");
        assert_eq!(
            ready_ms_field((1, 2), (0, 0), 1_000_000),
            format!("1/2|0/0|{}", u32::MAX)
        );
        assert_eq!(nat_report_key("a", "p"), "nat:a:p");
        assert_eq!(app_outcomes_map("a"), "handshake:outcomes:app:a");
        assert_eq!(audit_event_key(7), "admin:audit:7");
    }
}
