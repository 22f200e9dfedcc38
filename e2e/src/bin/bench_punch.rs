//! `bench_punch`: the punch matrix. For every pair of the lab's NAT kinds, `--tries` times: two
//! fresh SDK peers (`qp-tunnel-peer`, new sockets, new NAT mappings) behind those NATs log in to
//! a whole supernode network in the lab (one process per role, Redis) and one opens a tunnel to
//! the other, with `--rtt-ms` of round trip added by the WAN. Prints per pair: direct %,
//! relayed %, failed %, median and p95 time from the go signal (the instruction's start time) to
//! a usable tunnel, and for relayed tunnels the time after the punch budget ran out; then the
//! issue's targets next to what was measured.
//!
//! Needs root (network namespaces), `nft`, and for the delay `iptables` (NFQUEUE delay line) or
//! netem. Build everything it runs in release first:
//!
//! ```text
//! cargo build --release -p quickp2p-e2e -p quickp2p-stun -p quickp2p-checkpoint \
//!   -p quickp2p-gateway -p quickp2p-relay -p quickp2p-handshake --bins
//! target/release/bench_punch --tries 5
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use quickp2p_e2e::lab_network::{LabNetwork, OpenedTunnel, TunnelPeer};
use quickp2p_e2e::natlab::{Lab, NatKind, NatType};

#[derive(Parser, Debug)]
#[command(
    about = "Hole-punching matrix over the NAT lab: direct/relayed/failed and time to tunnel"
)]
struct Args {
    /// Tries per NAT pair (fresh peers each time).
    #[arg(long, default_value_t = 5)]
    tries: usize,
    /// Round trip between any two lab hosts, milliseconds (half of it added each way by the WAN).
    #[arg(long, default_value_t = 50)]
    rtt_ms: u64,
    /// Only pairs whose label contains this text (e.g. "Symmetric").
    #[arg(long)]
    only: Option<String>,
}

fn kinds() -> Vec<(NatKind, &'static str)> {
    vec![
        (NatKind::FullCone, "full-cone"),
        (NatKind::Restricted, "restricted"),
        (NatKind::PortRestricted, "port-restricted"),
        (NatKind::Symmetric, "symmetric"),
        (NatKind::None, "none"),
        (
            NatKind::CarrierNat(NatType::PortRestricted, NatType::PortRestricted),
            "port-restricted+CGN",
        ),
    ]
}

/// What the issue expects of a pair.
fn expectation(a: &str, b: &str) -> &'static str {
    let symmetric = |k: &str| k == "symmetric";
    let port_restricted = |k: &str| k.starts_with("port-restricted");
    match (symmetric(a), symmetric(b)) {
        (false, false) => "direct 100%",
        (true, true) => "relayed (direct a bonus)",
        (true, false) if port_restricted(b) => "direct >= 60%",
        (false, true) if port_restricted(a) => "direct >= 60%",
        _ => "direct 100%",
    }
}

#[derive(Default)]
struct PairResult {
    direct: usize,
    relayed: usize,
    failed: usize,
    direct_go_ms: Vec<u64>,
    relayed_go_ms: Vec<u64>,
    fallback_ms: Vec<u64>,
    errors: Vec<String>,
}

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted.get(rank.min(sorted.len() - 1)).copied()
}

fn fmt_ms(v: Option<u64>) -> String {
    v.map(|v| format!("{v}")).unwrap_or_else(|| "-".to_owned())
}

fn one_try(
    lab: &Lab,
    net: &LabNetwork,
    a_index: usize,
    b_index: usize,
) -> Result<OpenedTunnel, String> {
    let peer_args = net.peer_args();
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| TunnelPeer::start_with(lab, &peer_args, a_index));
        let b = scope.spawn(|| TunnelPeer::start_with(lab, &peer_args, b_index));
        (
            a.join()
                .unwrap_or_else(|_| Err("peer start panicked".to_owned())),
            b.join()
                .unwrap_or_else(|_| Err("peer start panicked".to_owned())),
        )
    });
    let (mut a, b) = (a?, b?);
    let opened = a.open_to(&b)?;
    a.exchange(&opened.number)?;
    Ok(opened)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let kinds = kinds();
    let one_way = Duration::from_millis(args.rtt_ms / 2);
    let mut builder = Lab::builder().wan_delay(one_way);
    // two peers of each kind: pairs of the same kind need two NATs of it
    for (kind, _) in kinds.iter().chain(kinds.iter()) {
        builder = builder.peer(*kind);
    }
    let lab = match builder.build() {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("bench_punch: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let net = match LabNetwork::start(&lab) {
        Ok(net) => net,
        Err(e) => {
            eprintln!("bench_punch: supernode network: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!(
        "punch matrix: {} tries per pair, {} ms RTT between lab hosts (WAN adds {} ms each way)",
        args.tries,
        args.rtt_ms,
        one_way.as_millis()
    );
    let started = Instant::now();
    let mut rows = Vec::new();
    for i in 0..kinds.len() {
        for j in i..kinds.len() {
            let (a_name, b_name) = (kinds[i].1, kinds[j].1);
            let label = format!("{a_name} -> {b_name}");
            if args
                .only
                .as_deref()
                .is_some_and(|only| !label.contains(only))
            {
                continue;
            }
            let mut result = PairResult::default();
            for attempt in 0..args.tries {
                eprint!(
                    "\r{label}: try {}/{} ({:.0} s)     ",
                    attempt + 1,
                    args.tries,
                    started.elapsed().as_secs_f64()
                );
                match one_try(&lab, &net, i, kinds.len() + j) {
                    Ok(opened) if opened.kind == "direct" => {
                        result.direct += 1;
                        result.direct_go_ms.push(opened.go_ms);
                    }
                    Ok(opened) => {
                        result.relayed += 1;
                        result.relayed_go_ms.push(opened.go_ms);
                        result
                            .fallback_ms
                            .push(opened.go_ms.saturating_sub(opened.budget_ms));
                    }
                    Err(e) => {
                        result.failed += 1;
                        result.errors.push(e);
                    }
                }
            }
            eprintln!();
            rows.push((label, expectation(a_name, b_name), result));
        }
    }

    println!(
        "\n{:<42} {:>7} {:>8} {:>7} {:>10} {:>9} {:>11} {:>12}  expected",
        "pair (initiator -> responder)",
        "direct",
        "relayed",
        "failed",
        "direct p50",
        "p95 (ms)",
        "relayed p50",
        "fallback p95"
    );
    let pct = |n: usize| 100.0 * n as f64 / args.tries.max(1) as f64;
    let mut all_direct = Vec::new();
    let mut all_fallback = Vec::new();
    let mut misses = Vec::new();
    for (label, expected, result) in &mut rows {
        result.direct_go_ms.sort_unstable();
        result.relayed_go_ms.sort_unstable();
        result.fallback_ms.sort_unstable();
        all_direct.extend(result.direct_go_ms.iter().copied());
        all_fallback.extend(result.fallback_ms.iter().copied());
        println!(
            "{:<42} {:>6.0}% {:>7.0}% {:>6.0}% {:>10} {:>9} {:>11} {:>12}  {expected}",
            label,
            pct(result.direct),
            pct(result.relayed),
            pct(result.failed),
            fmt_ms(percentile(&result.direct_go_ms, 50.0)),
            fmt_ms(percentile(&result.direct_go_ms, 95.0)),
            fmt_ms(percentile(&result.relayed_go_ms, 50.0)),
            fmt_ms(percentile(&result.fallback_ms, 95.0)),
        );
        let direct_share = pct(result.direct);
        let met = match *expected {
            "direct 100%" => direct_share >= 100.0,
            "direct >= 60%" => direct_share >= 60.0,
            _ => result.failed == 0,
        };
        if !met {
            misses.push(format!(
                "{label}: {direct_share:.0}% direct, expected {expected}"
            ));
        }
        for e in result.errors.iter().take(2) {
            println!("    failure: {e}");
        }
    }
    all_direct.sort_unstable();
    all_fallback.sort_unstable();
    let direct_target = 2 * args.rtt_ms + 100;
    println!(
        "\ntargets: direct tunnel ready <= 2 RTT + 100 ms = {direct_target} ms after go: p50 {} ms, p95 {} ms, max {} ms",
        fmt_ms(percentile(&all_direct, 50.0)),
        fmt_ms(percentile(&all_direct, 95.0)),
        fmt_ms(all_direct.last().copied())
    );
    println!(
        "         relay fallback ready <= 3 s after the punch budget: p50 {} ms, p95 {} ms, max {} ms",
        fmt_ms(percentile(&all_fallback, 50.0)),
        fmt_ms(percentile(&all_fallback, 95.0)),
        fmt_ms(all_fallback.last().copied())
    );
    if misses.is_empty() {
        println!("         path expectations: all pairs met");
    } else {
        println!("         path expectations missed:");
        for miss in &misses {
            println!("           {miss}");
        }
    }
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    drop(net);
    drop(lab);
    std::process::ExitCode::SUCCESS
}
