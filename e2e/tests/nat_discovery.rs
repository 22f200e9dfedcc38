//! NAT behaviour discovery across real emulated NATs (issue 3).
//!
//! For every NAT kind of the lab, our STUN pair (`quickp2p-stun` twice: stun-a and stun-b on the
//! supernode host's two public addresses, each with a primary and an alternate port, talking over
//! their gRPC control API) is asked, from a peer behind that NAT:
//! - by coturn's `turnutils_natdiscovery -m -f` (a third-party RFC 5780 client), and
//! - by our own `quickp2p nat-report --json` (the SDK's `NatReport`),
//!
//! and both must report the mapping and filtering behaviour the NAT was built with. Each test
//! builds its own lab and prints `SKIP: …` where a lab cannot be built (not root, no nft).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};

use quickp2p_e2e::binaries::workspace_binary;
use quickp2p_e2e::natlab::{Filtering, Lab, Mapping, NatKind, NatType, Peer};

const PRIMARY_PORT: u16 = 3478;
const ALTERNATE_PORT: u16 = 3479;
const CONTROL_PORT: u16 = 7000;

/// A child process killed (and reaped) when dropped, even when the test panics.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binary(name: &str) -> PathBuf {
    workspace_binary(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Starts stun-a on the host's first address and stun-b on its second, each other's partner,
/// and waits until both have printed their addresses (sockets and control listener bound).
fn start_stun_pair(lab: &Lab) -> [Running; 2] {
    let host = lab.supernode();
    let (ip_a, ip_b) = (host.ip_a(), host.ip_b());
    let stun = binary("quickp2p-stun");
    let start = |member: &str, ip: Ipv4Addr, partner: Ipv4Addr| {
        let mut child = host
            .command(&stun)
            .args(["--member", member, "--bind-ip", &ip.to_string()])
            .args(["--primary-port", &PRIMARY_PORT.to_string()])
            .args(["--alternate-port", &ALTERNATE_PORT.to_string()])
            .args(["--partner-addr", &format!("{partner}:{PRIMARY_PORT}")])
            .args(["--partner-alternate-port", &ALTERNATE_PORT.to_string()])
            .args(["--control-addr", &format!("{ip}:{CONTROL_PORT}")])
            .args([
                "--partner-control-url",
                &format!("http://{partner}:{CONTROL_PORT}"),
            ])
            .args(["--http-addr", &format!("{ip}:9090"), "--log", "warn"])
            .args(["--replica-id", &format!("stun-{member}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("stun-{member} exited before it was ready"))
                .unwrap();
            if line.trim_start().starts_with("ops") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Running(child)
    };
    [start("a", ip_a, ip_b), start("b", ip_b, ip_a)]
}

fn mapping_words(m: Mapping) -> (&'static str, &'static str) {
    match m {
        Mapping::EndpointIndependent => ("Endpoint Independent Mapping", "endpoint-independent"),
        Mapping::AddressDependent => ("Address Dependent Mapping", "address-dependent"),
        Mapping::AddressAndPortDependent => (
            "Address and Port Dependent Mapping",
            "address-and-port-dependent",
        ),
    }
}

fn filtering_words(f: Filtering) -> (&'static str, &'static str) {
    match f {
        Filtering::EndpointIndependent => {
            ("Endpoint Independent Filtering", "endpoint-independent")
        }
        Filtering::AddressDependent => ("Address Dependent Filtering", "address-dependent"),
        Filtering::AddressAndPortDependent => (
            "Address and Port Dependent Filtering",
            "address-and-port-dependent",
        ),
    }
}

/// coturn's verdict lines, e.g. "NAT with Endpoint Independent Mapping!".
fn coturn_verdicts(peer: &Peer, stun: Ipv4Addr) -> Vec<String> {
    let out: std::process::Output = peer
        .command("turnutils_natdiscovery")
        // -L: bind the peer's own address, so that coturn can tell "no NAT" (it compares the
        // reflexive address with its local one, which is the wildcard otherwise).
        .args([
            "-m",
            "-f",
            "-L",
            &peer.private_ip().to_string(),
            &stun.to_string(),
        ])
        .output()
        .expect("run turnutils_natdiscovery (Debian package coturn; .ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let verdicts: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("NAT with ") || l.starts_with("No NAT!"))
        .map(str::to_owned)
        .collect();
    assert!(!verdicts.is_empty(), "no verdict from coturn:\n{text}");
    verdicts
}

fn our_report(peer: &Peer, stun: Ipv4Addr) -> serde_json::Value {
    let out = peer
        .command(binary("quickp2p"))
        .args(["nat-report", "--stun", &stun.to_string(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "quickp2p nat-report failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn discovery_matches_the_nat(kind: NatKind) {
    let Some(lab) = Lab::builder().peer(kind).build_or_skip().unwrap() else {
        return;
    };
    let _stun = start_stun_pair(&lab);
    let peer = lab.peer(0);
    let stun_a = lab.supernode().ip_a();
    // Without a NAT (and no firewall) every destination sees the same address and every packet
    // arrives: endpoint-independent in RFC 4787 terms.
    let mapping = kind
        .expected_mapping()
        .unwrap_or(Mapping::EndpointIndependent);
    let filtering = kind
        .expected_filtering()
        .unwrap_or(Filtering::EndpointIndependent);
    let (coturn_mapping, our_mapping) = mapping_words(mapping);
    let (coturn_filtering, our_filtering) = filtering_words(filtering);

    let verdicts = coturn_verdicts(peer, stun_a);
    // Without a NAT coturn still runs the RFC 5780 tests and words them "NAT with …".
    assert!(
        verdicts
            .iter()
            .any(|v| v == &format!("NAT with {coturn_mapping}!")),
        "{kind:?}: coturn says {verdicts:?}, expected {coturn_mapping}"
    );
    assert!(
        verdicts
            .iter()
            .any(|v| v == &format!("NAT with {coturn_filtering}!")),
        "{kind:?}: coturn says {verdicts:?}, expected {coturn_filtering}"
    );
    assert_eq!(
        verdicts.iter().any(|v| v.starts_with("No NAT!")),
        kind == NatKind::None,
        "{kind:?}: coturn's NAT/no-NAT verdict: {verdicts:?}"
    );

    let report = our_report(peer, stun_a);
    assert_eq!(
        report["mapping"]["behaviour"], our_mapping,
        "{kind:?}: {report:#}"
    );
    assert_eq!(
        report["filtering"]["behaviour"], our_filtering,
        "{kind:?}: {report:#}"
    );
    assert_eq!(
        report["behind_nat"],
        kind != NatKind::None,
        "{kind:?}: {report:#}"
    );
    assert_eq!(
        report["public_address"]
            .as_str()
            .and_then(|a| a.split(':').next()),
        Some(peer.public_ip().to_string().as_str()),
        "{kind:?}: {report:#}"
    );
    if kind.preserves_ports() {
        assert_eq!(report["port_preserving"], true, "{kind:?}: {report:#}");
    }
    assert_eq!(report["server_supports_rfc5780"], true, "{report:#}");
}

#[test]
fn full_cone() {
    discovery_matches_the_nat(NatKind::FullCone);
}

#[test]
fn restricted_cone() {
    discovery_matches_the_nat(NatKind::Restricted);
}

#[test]
fn port_restricted_cone() {
    discovery_matches_the_nat(NatKind::PortRestricted);
}

#[test]
fn symmetric() {
    discovery_matches_the_nat(NatKind::Symmetric);
}

#[test]
fn no_nat() {
    discovery_matches_the_nat(NatKind::None);
}

#[test]
fn port_restricted_behind_carrier_nat() {
    discovery_matches_the_nat(NatKind::CarrierNat(
        NatType::PortRestricted,
        NatType::PortRestricted,
    ));
}

/// The pair must survive hostile input inside the lab too: garbage from a peer behind a NAT does
/// not stop it answering the next well-formed discovery.
#[test]
fn garbage_does_not_disturb_discovery() {
    let Some(lab) = Lab::builder()
        .peer(NatKind::FullCone)
        .build_or_skip()
        .unwrap()
    else {
        return;
    };
    let _stun = start_stun_pair(&lab);
    let peer = lab.peer(0);
    let stun_a = lab.supernode().ip_a();
    // Short, wrong-cookie and oversized datagrams, sent with bash's /dev/udp from the peer.
    let script = format!(
        "for i in $(seq 50); do printf 'garbage' > /dev/udp/{stun_a}/{PRIMARY_PORT}; \
         head -c 1400 /dev/zero > /dev/udp/{stun_a}/{PRIMARY_PORT}; \
         printf '\\x00\\x01\\x00\\x00\\x21\\x12\\xa4\\x43abcdefghijkl' > /dev/udp/{stun_a}/{PRIMARY_PORT}; done"
    );
    let status = peer.command("bash").args(["-c", &script]).status().unwrap();
    assert!(status.success());
    let report = our_report(peer, stun_a);
    assert_eq!(
        report["mapping"]["behaviour"], "endpoint-independent",
        "{report:#}"
    );
}
