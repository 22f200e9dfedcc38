//! Tunnels across real NATs: a whole supernode network (Redis, STUN pair, checkpoint, gateway,
//! relay, handshake — each its own process) in the lab's supernode host, and SDK peers
//! (`qp-tunnel-peer`) behind NATs of every kind opening tunnels to each other.
//!
//! - Every pair of NAT kinds: a tunnel opens and carries a stream echo and a datagram; the path
//!   is direct wherever the issue expects it to be, relayed or direct where it allows both.
//! - Independence: with every supernode process and Redis killed, a tunnel keeps carrying data
//!   both ways (60 s with `QP_TUNNEL_SOAK_SECS` unset).
//! - A third peer cannot get into a tunnel, and forged probes do not divert a punch (unit-tested
//!   in the punch engine; here: a third peer's `open` toward a peer yields its own tunnel, never
//!   a view of another).
//!
//! Each test builds its own lab and prints `SKIP: …` where a lab cannot be built.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use quickp2p_e2e::lab_network::{LabNetwork, TunnelPeer};
use quickp2p_e2e::natlab::{Lab, NatKind};

/// Which path a pair must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Direct,
    /// Direct or relayed (birthday technique, or symmetric on both sides).
    Either,
}

fn expectation(a: NatKind, b: NatKind) -> Expect {
    use NatKind::*;
    let hard = |k: NatKind| matches!(k, Symmetric | SymmetricSequential);
    let port_restricted = |k: NatKind| matches!(k, PortRestricted | CarrierNat(..));
    match (hard(a), hard(b)) {
        (false, false) => Expect::Direct,
        (true, true) => Expect::Either,
        (true, false) if port_restricted(b) => Expect::Either,
        (false, true) if port_restricted(a) => Expect::Either,
        _ => Expect::Direct,
    }
}

/// One-way delay the WAN adds (so peers are 20 ms of round trip apart, the supernode too). The
/// punch needs some: DESIGN.md §4's pitfall strikes a NAT that receives the other side's first
/// probe before it sent its own, so simultaneous open relies on both sides starting within less
/// than the one-way delay of each other — true on real links (the lab's namespaces share one
/// clock), impossible on a lab link of a few microseconds.
const WAN_DELAY: Duration = Duration::from_millis(10);

/// Builds a lab with `kinds`, the network, one peer per kind.
fn setup(kinds: &[NatKind]) -> Option<(Lab, LabNetwork, Vec<TunnelPeer>)> {
    let mut builder = Lab::builder().wan_delay(WAN_DELAY);
    for kind in kinds {
        builder = builder.peer(*kind);
    }
    let lab = builder.build_or_skip().unwrap()?;
    let net = LabNetwork::start(&lab).unwrap();
    let peers = (0..kinds.len())
        .map(|i| TunnelPeer::start(&lab, &net, i).unwrap())
        .collect();
    Some((lab, net, peers))
}

/// The NAT kinds of the matrix (issue 8): full cone, restricted, port-restricted, symmetric, none,
/// and port-restricted behind a port-restricted carrier NAT.
fn matrix_kinds() -> Vec<NatKind> {
    use quickp2p_e2e::natlab::NatType;
    vec![
        NatKind::FullCone,
        NatKind::Restricted,
        NatKind::PortRestricted,
        NatKind::Symmetric,
        NatKind::None,
        NatKind::CarrierNat(NatType::PortRestricted, NatType::PortRestricted),
    ]
}

/// Every pair of NAT kinds (each kind with itself too): one lab with two peers of each kind, one
/// network, 21 tunnels opened one after another; each must open with the sides agreeing on the
/// path, be direct where expected, and carry a 200 kB stream echo and a datagram.
#[test]
fn every_pair_of_nat_kinds_opens_a_tunnel() {
    let kinds = matrix_kinds();
    let mut lab_kinds = kinds.clone();
    lab_kinds.extend(kinds.iter().copied());
    let Some((_lab, _net, mut peers)) = setup(&lab_kinds) else {
        return;
    };
    let mut table = Vec::new();
    let mut failures = Vec::new();
    for i in 0..kinds.len() {
        for j in i..kinds.len() {
            // peer i (first set) initiates toward peer j of the second set
            let (a, b) = (kinds[i], kinds[j]);
            let (left, right) = peers.split_at_mut(kinds.len() + j);
            let (pa, pb) = (&mut left[i], &right[0]);
            let result = pa.open_to(pb).and_then(|opened| {
                if expectation(a, b) == Expect::Direct && opened.kind != "direct" {
                    return Err(format!("expected a direct path, got {}", opened.line));
                }
                pa.exchange(&opened.number)?;
                Ok(opened.line)
            });
            let row = format!("{a:?} ({}) -> {b:?} ({})", pa.nat, pb.nat);
            match result {
                Ok(line) => table.push(format!("{row}: {line}")),
                Err(e) => {
                    table.push(format!("{row}: FAILED {e}"));
                    failures.push(format!("{row}: {e}"));
                }
            }
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(
        failures.is_empty(),
        "{} of 21 pairs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Once open, a tunnel needs no supernode: every process of the network and Redis are killed,
/// and both peers keep exchanging stream echoes over the tunnel for `QP_TUNNEL_SOAK_SECS`
/// (default 60) seconds.
#[test]
fn a_tunnel_outlives_every_supernode_process_and_redis() {
    let soak: u64 = std::env::var("QP_TUNNEL_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let Some((_lab, mut net, mut peers)) = setup(&[NatKind::PortRestricted, NatKind::Restricted])
    else {
        return;
    };
    let (first, second) = peers.split_at_mut(1);
    let (a, b) = (&mut first[0], &mut second[0]);
    let opened = a.open_to(b).unwrap();
    assert_eq!(opened.kind, "direct", "{}", opened.line);
    let n = opened.number;
    a.exchange(&n).unwrap();

    net.kill_all();
    assert!(!net.any_alive(), "a supernode process survived");

    // both directions at once: each side opens streams the other echoes
    a.proc.say(&format!("soak {n} {soak}")).unwrap();
    b.proc.say(&format!("soak 1 {soak}")).unwrap();
    let limit = Duration::from_secs(soak + 30);
    for peer in [&*a, &*b] {
        let result = peer.proc.wait_for("SOAK ", limit).unwrap();
        let count: u64 = result
            .split_whitespace()
            .nth(2)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        assert!(
            result.starts_with("SOAK ok"),
            "{}: {result}",
            peer.proc.name()
        );
        // one exchange per ~200 ms plus its round trip: at least one per second
        assert!(
            count >= soak,
            "{}: only {count} exchanges in {soak} s",
            peer.proc.name()
        );
    }
}

/// A tunnel that had to open through the relay (direct traffic between the peers blocked in the
/// WAN) moves to a direct path by itself once a later punch gets through; data keeps flowing.
#[test]
fn a_relayed_tunnel_moves_to_a_direct_path_when_a_later_punch_succeeds() {
    let Some((lab, _net, mut peers)) = setup(&[NatKind::PortRestricted, NatKind::Restricted])
    else {
        return;
    };
    let wan = lab.wan();
    wan.run("nft", &["add", "table", "ip", "qpblock"]).unwrap();
    wan.run(
        "nft",
        &[
            "add",
            "chain",
            "ip",
            "qpblock",
            "blockpeers",
            "{ type filter hook forward priority -5 ; policy accept ; }",
        ],
    )
    .unwrap();
    wan.run(
        "nft",
        &[
            "add",
            "rule",
            "ip",
            "qpblock",
            "blockpeers",
            "ip",
            "saddr",
            "198.51.100.0/24",
            "ip",
            "daddr",
            "198.51.100.0/24",
            "drop",
        ],
    )
    .unwrap();
    let (first, second) = peers.split_at_mut(1);
    let (a, b) = (&mut first[0], &mut second[0]);
    let opened = a.open_to(b).unwrap();
    assert_eq!(opened.kind, "relayed", "{}", opened.line);
    a.exchange(&opened.number).unwrap();
    wan.run("nft", &["delete", "table", "ip", "qpblock"])
        .unwrap();

    // the initiator punches again 2 s after opening (then 10 s, 30 s later)
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let path = |peer: &mut TunnelPeer, n: &str| {
        peer.proc.say(&format!("path {n}")).unwrap();
        peer.proc
            .wait_for("PATH ", Duration::from_secs(10))
            .unwrap()
    };
    loop {
        let (pa, pb) = (path(a, &opened.number), path(b, "1"));
        if pa.starts_with("PATH Direct(") && pb.starts_with("PATH Direct(") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still not direct after 30 s: {pa} / {pb}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    a.exchange(&opened.number).unwrap();
}
