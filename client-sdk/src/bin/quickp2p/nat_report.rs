//! `quickp2p nat-report`: bind, resolve, run [`quickp2p::nat::nat_report`], print.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use quickp2p::nat::{
    FilteringBehaviour, MappingBehaviour, NatReport, NatReportOptions, StunServer, nat_report,
    report_json_pretty,
};
use tokio::net::UdpSocket;

/// Arguments of `quickp2p nat-report`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The STUN server: HOST, HOST:PORT, IP:PORT or [IPv6]:PORT (default port 3478).
    /// Mapping and filtering need an RFC 5780 server (quickP2P's stun pair, coturn).
    #[arg(long, value_name = "HOST[:PORT]", env = "QP_STUN")]
    stun: StunServer,
    /// Local address to bind the UDP socket to.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:0")]
    bind: SocketAddr,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Give up after this many seconds; tests still running then are reported as
    /// unknown. Without it the retransmission schedule ends a report within 10.5 s.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    timeout: Option<Duration>,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= 3600.0) {
        return Err("must be more than 0 and at most 3600 seconds".to_owned());
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub async fn run(args: Args) -> Result<(), String> {
    let socket = UdpSocket::bind(args.bind)
        .await
        .map_err(|e| format!("cannot bind a UDP socket to {}: {e}", args.bind))?;
    let bound = socket.local_addr().map_err(|e| e.to_string())?;
    let server = args
        .stun
        .resolve_for(bound)
        .await
        .map_err(|e| e.to_string())?;
    let options = NatReportOptions::default().with_timeout(args.timeout);
    let report = nat_report(&socket, server, options)
        .await
        .map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", report_json_pretty(&report));
    } else {
        print!("{}", render(&args.stun, &report));
    }
    Ok(())
}

fn yes_no(value: Option<bool>, unknown: &str) -> String {
    match value {
        Some(true) => "yes".to_owned(),
        Some(false) => "no".to_owned(),
        None => unknown.to_owned(),
    }
}

fn mapping(m: &MappingBehaviour) -> String {
    match m.unknown_reason() {
        Some(reason) => format!("unknown: {reason}"),
        None => m.as_str().to_owned(),
    }
}

fn filtering(f: &FilteringBehaviour) -> String {
    match f.unknown_reason() {
        Some(reason) => format!("unknown: {reason}"),
        None => f.as_str().to_owned(),
    }
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The human-readable report.
fn render(stun: &StunServer, report: &NatReport) -> String {
    let mut out = String::new();
    let server = match report.other_address {
        Some(other) => format!(
            "{} ({stun}; RFC 5780, other address {other})",
            report.server
        ),
        None => format!(
            "{} ({stun}; no RFC 5780 support: mapping and filtering cannot be measured)",
            report.server
        ),
    };
    let behind = match report.behind_nat {
        Some(true) => "yes".to_owned(),
        Some(false) => format!(
            "no (the public address is this host's own {})",
            report.local_address
        ),
        None => "unknown (the socket's local IP is a wildcard)".to_owned(),
    };
    let hairpin = match (report.hairpinning, report.behind_nat) {
        (Some(true), _) => "yes".to_owned(),
        (Some(false), _) => "no".to_owned(),
        (None, Some(false)) => "not applicable (no NAT)".to_owned(),
        (None, _) => "not tested".to_owned(),
    };
    let public = report
        .public_address
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let lines = [
        ("STUN server", server),
        ("local address", report.local_address.to_string()),
        (
            "NAT type",
            format!(
                "{} (RFC 4787: {})",
                report.label(),
                report.rfc4787_description()
            ),
        ),
        ("behind NAT", behind),
        ("mapping", mapping(&report.mapping)),
        ("filtering", filtering(&report.filtering)),
        ("hairpinning", hairpin),
        (
            "port preservation",
            yes_no(report.port_preserving, "unknown"),
        ),
        ("public address", public),
    ];
    for (name, value) in lines {
        let _ = writeln!(out, "{:<19}{value}", format!("{name}:"));
    }
    let _ = writeln!(out, "reflexive addresses:");
    for r in &report.reflexive {
        let _ = writeln!(out, "  via {:<24} -> {}", r.server, r.mapped);
    }
    if report.rtt.is_empty() {
        let _ = writeln!(
            out,
            "{:<19}not measured (every answer needed a retransmission)",
            "round-trip time:"
        );
    } else {
        let _ = writeln!(out, "round-trip time:");
        for sample in &report.rtt {
            let _ = writeln!(out, "  to {:<25} {}", sample.server, millis(sample.rtt));
        }
    }
    let _ = writeln!(out, "{:<19}{:.2} s", "took:", report.duration.as_secs_f64());
    out
}
