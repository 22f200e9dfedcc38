//! The JSON form of a [`NatReport`] (what `quickp2p nat-report --json` prints).
//!
//! The wire crate stays serde-free; this module maps the report onto a stable
//! JSON shape:
//!
//! ```json
//! {
//!   "server": "192.0.2.1:3478", "server_other_address": "192.0.2.2:3479",
//!   "server_supports_rfc5780": true, "local_address": "10.0.0.2:40000",
//!   "label": "port-restricted cone",
//!   "rfc4787": "endpoint-independent mapping, address-and-port-dependent filtering",
//!   "mapping": {"behaviour": "endpoint-independent"},
//!   "filtering": {"behaviour": "address-and-port-dependent"},
//!   "behind_nat": true, "hairpinning": false, "port_preserving": true,
//!   "public_address": "198.51.100.7:40000",
//!   "reflexive": [{"server": "192.0.2.1:3478", "mapped": "198.51.100.7:40000"}],
//!   "rtt_ms": [{"server": "192.0.2.1:3478", "rtt_ms": 21.3}],
//!   "duration_ms": 1793.4
//! }
//! ```
//!
//! An unknown behaviour reads `{"behaviour": "unknown", "reason": "no-other-address",
//! "explanation": "the STUN server does not support …"}`; `null` stands for "not
//! measured" in the optional fields.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::{NatReport, UnknownReason};

#[derive(Serialize)]
struct ReportJson {
    server: SocketAddr,
    server_other_address: Option<SocketAddr>,
    server_supports_rfc5780: Option<bool>,
    local_address: SocketAddr,
    label: &'static str,
    rfc4787: String,
    mapping: BehaviourJson,
    filtering: BehaviourJson,
    behind_nat: Option<bool>,
    hairpinning: Option<bool>,
    port_preserving: Option<bool>,
    public_address: Option<SocketAddr>,
    reflexive: Vec<ReflexiveJson>,
    rtt_ms: Vec<RttJson>,
    duration_ms: f64,
}

#[derive(Serialize)]
struct BehaviourJson {
    behaviour: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    explanation: Option<String>,
}

impl BehaviourJson {
    fn new(behaviour: &'static str, reason: Option<&UnknownReason>) -> BehaviourJson {
        BehaviourJson {
            behaviour,
            reason: reason.map(UnknownReason::code),
            explanation: reason.map(ToString::to_string),
        }
    }
}

#[derive(Serialize)]
struct ReflexiveJson {
    server: SocketAddr,
    mapped: SocketAddr,
}

#[derive(Serialize)]
struct RttJson {
    server: SocketAddr,
    rtt_ms: f64,
}

fn millis(d: Duration) -> f64 {
    // three decimals are plenty and keep the output tidy
    (d.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}

/// The report as a JSON value, in the shape shown in this module's docs (a
/// `serde_json::Value` sorts its keys; see [`report_json_pretty`] for the
/// documented order).
pub fn report_json(report: &NatReport) -> serde_json::Value {
    serde_json::to_value(shape(report)).unwrap_or(serde_json::Value::Null)
}

/// The report as indented JSON text, keys in the documented order.
pub fn report_json_pretty(report: &NatReport) -> String {
    serde_json::to_string_pretty(&shape(report)).unwrap_or_default()
}

fn shape(report: &NatReport) -> ReportJson {
    ReportJson {
        server: report.server,
        server_other_address: report.other_address,
        server_supports_rfc5780: report.server_supports_rfc5780(),
        local_address: report.local_address,
        label: report.label(),
        rfc4787: report.rfc4787_description(),
        mapping: BehaviourJson::new(report.mapping.as_str(), report.mapping.unknown_reason()),
        filtering: BehaviourJson::new(report.filtering.as_str(), report.filtering.unknown_reason()),
        behind_nat: report.behind_nat,
        hairpinning: report.hairpinning,
        port_preserving: report.port_preserving,
        public_address: report.public_address,
        reflexive: report
            .reflexive
            .iter()
            .map(|r| ReflexiveJson {
                server: r.server,
                mapped: r.mapped,
            })
            .collect(),
        rtt_ms: report
            .rtt
            .iter()
            .map(|s| RttJson {
                server: s.server,
                rtt_ms: millis(s.rtt),
            })
            .collect(),
        duration_ms: millis(report.duration),
    }
}
