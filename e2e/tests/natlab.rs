//! The NAT lab's own tests: for every NAT kind, a peer behind it observes with `qp-udp-probe` the
//! mapping and filtering behaviour that kind stands for; plus impairments, the DESIGN.md §4
//! pitfall, peer-to-peer reachability and cleanup. Each test builds its own lab (they run in
//! parallel) and prints `SKIP: <reason>` and passes where a lab cannot be built (not root, no
//! `ip`/`nft`).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Child, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use quickp2p_e2e::natlab::{
    Filtering, Impairment, Lab, LabBuilder, Mapping, NatKind, NatType, Peer, UnsolicitedInbound,
    lab_namespaces,
};
use quickp2p_e2e::udp_probe::{FilterVerdict, ProbeOutcome, ProbeStep};

const PROBE: &str = env!("CARGO_BIN_EXE_qp-udp-probe");
const PRIMARY_PORT: u16 = 3478;
const ALTERNATE_PORT: u16 = 3479;

/// Builds the lab, or prints `SKIP: …` and gives `None`.
fn lab(builder: LabBuilder) -> Option<Lab> {
    builder.build_or_skip().unwrap()
}

/// A child process killed (and reaped) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads one line of a child's stdout (bounded by the child itself: it prints or exits).
fn read_line(stdout: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    line.trim().to_owned()
}

/// Starts the probe server on the supernode host: both addresses, primary and alternate port.
fn start_server(lab: &Lab) -> Running {
    let host = lab.supernode();
    let mut command = host.command(PROBE);
    command.arg("serve");
    for ip in [host.ip_a(), host.ip_b()] {
        for port in [PRIMARY_PORT, ALTERNATE_PORT] {
            command.arg("--bind").arg(format!("{ip}:{port}"));
        }
    }
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    assert_eq!(
        read_line(&mut stdout),
        "READY",
        "probe server did not start"
    );
    Running(child)
}

/// Runs `qp-udp-probe probe` in the peer's namespace from local port `port`.
fn probe(peer: &Peer, port: u16, steps: &[ProbeStep]) -> Vec<ProbeOutcome> {
    let output = peer
        .command(PROBE)
        .args(["probe", "--bind", &format!("0.0.0.0:{port}")])
        .args(steps.iter().map(ToString::to_string))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "probe failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let outcomes: Vec<ProbeOutcome> = stdout.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(outcomes.len(), steps.len(), "{stdout}");
    outcomes
}

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// The mappings one local socket gets towards IP1:P1, IP1:P2 and IP2:P1.
fn observe_mapping(lab: &Lab, peer: &Peer, port: u16) -> [SocketAddr; 3] {
    let host = lab.supernode();
    let steps = [
        ProbeStep::Map(addr(host.ip_a(), PRIMARY_PORT)),
        ProbeStep::Map(addr(host.ip_a(), ALTERNATE_PORT)),
        ProbeStep::Map(addr(host.ip_b(), PRIMARY_PORT)),
    ];
    let observed: Vec<SocketAddr> = probe(peer, port, &steps)
        .into_iter()
        .map(|outcome| match outcome {
            ProbeOutcome::Mapped { observed, .. } => observed,
            other => panic!("peer {} got {other}", peer.kind()),
        })
        .collect();
    [observed[0], observed[1], observed[2]]
}

/// RFC 4787 mapping from the three observations; `None` when nothing was translated.
fn classify_mapping(peer: &Peer, local_port: u16, observed: [SocketAddr; 3]) -> Option<Mapping> {
    for seen in observed {
        assert_eq!(
            seen.ip(),
            peer.public_ip(),
            "wrong public address: {observed:?}"
        );
    }
    let [p1, p2, p3] = observed.map(|a| a.port());
    if peer.private_ip() == peer.public_ip() && [p1, p2, p3] == [local_port; 3] {
        None
    } else if p1 == p2 && p2 == p3 {
        Some(Mapping::EndpointIndependent)
    } else if p1 == p2 {
        Some(Mapping::AddressDependent)
    } else {
        Some(Mapping::AddressAndPortDependent)
    }
}

/// RFC 4787 filtering of a fresh mapping towards IP1:P1: does a datagram from IP1:P2, then one
/// from IP2:P1, reach the peer? `None` stands for "no NAT": everything arrives.
fn observe_filtering(lab: &Lab, peer: &Peer, port: u16) -> Option<Filtering> {
    let host = lab.supernode();
    let primary = addr(host.ip_a(), PRIMARY_PORT);
    let steps = [
        ProbeStep::Map(primary),
        ProbeStep::Filter {
            via: primary,
            from: addr(host.ip_a(), ALTERNATE_PORT),
        },
        ProbeStep::Filter {
            via: primary,
            from: addr(host.ip_b(), PRIMARY_PORT),
        },
    ];
    let outcomes = probe(peer, port, &steps);
    let verdict = |outcome: &ProbeOutcome| match outcome {
        ProbeOutcome::Filter { verdict, .. } => *verdict,
        other => panic!("expected a filter outcome, got {other}"),
    };
    match (verdict(&outcomes[1]), verdict(&outcomes[2])) {
        (FilterVerdict::Passed, FilterVerdict::Passed) if peer.nats().is_empty() => None,
        (FilterVerdict::Passed, FilterVerdict::Passed) => Some(Filtering::EndpointIndependent),
        (FilterVerdict::Passed, FilterVerdict::Blocked) => Some(Filtering::AddressDependent),
        (FilterVerdict::Blocked, FilterVerdict::Blocked) => {
            Some(Filtering::AddressAndPortDependent)
        }
        other => panic!("peer {}: unexpected filtering {other:?}", peer.kind()),
    }
}

/// What a peer behind `kind` must observe.
struct Expect {
    mapping: Option<Mapping>,
    filtering: Option<Filtering>,
    port_preserving: bool,
}

/// Builds a lab with one peer behind `kind` and checks mapping, port allocation and filtering.
fn check_kind(kind: NatKind, expect: Expect) {
    let Some(lab) = lab(Lab::builder().peer(kind)) else {
        return;
    };
    let _server = start_server(&lab);
    let peer = lab.peer(0);

    // mapping, from one socket; a random allocator may repeat a port by chance: one more socket
    let mut attempts = 0;
    let (local_port, observed, mapping) = loop {
        let local_port = 40000 + attempts;
        let observed = observe_mapping(&lab, peer, local_port);
        let mapping = classify_mapping(peer, local_port, observed);
        attempts += 1;
        if mapping == expect.mapping || attempts == 2 {
            break (local_port, observed, mapping);
        }
    };
    assert_eq!(
        mapping, expect.mapping,
        "{kind}: mapping, observed {observed:?}"
    );
    let ports = observed.map(|a| a.port());
    if expect.port_preserving {
        assert_eq!(ports, [local_port; 3], "{kind}: port preservation");
    } else {
        assert!(
            ports.iter().any(|&p| p != local_port),
            "{kind}: ports {ports:?} all preserved"
        );
    }

    // filtering, from a fresh socket
    let filtering = observe_filtering(&lab, peer, 41000);
    assert_eq!(filtering, expect.filtering, "{kind}: filtering");

    // the library's own description of the kind agrees with what was measured
    assert_eq!(kind.expected_mapping(), expect.mapping, "{kind}");
    assert_eq!(kind.expected_filtering(), expect.filtering, "{kind}");
    assert_eq!(kind.preserves_ports(), expect.port_preserving, "{kind}");
}

#[test]
fn full_cone_is_eim_with_endpoint_independent_filtering() {
    check_kind(
        NatKind::FullCone,
        Expect {
            mapping: Some(Mapping::EndpointIndependent),
            filtering: Some(Filtering::EndpointIndependent),
            port_preserving: true,
        },
    );
}

#[test]
fn restricted_is_eim_with_address_dependent_filtering() {
    check_kind(
        NatKind::Restricted,
        Expect {
            mapping: Some(Mapping::EndpointIndependent),
            filtering: Some(Filtering::AddressDependent),
            port_preserving: true,
        },
    );
}

#[test]
fn port_restricted_is_eim_with_address_and_port_dependent_filtering() {
    check_kind(
        NatKind::PortRestricted,
        Expect {
            mapping: Some(Mapping::EndpointIndependent),
            filtering: Some(Filtering::AddressAndPortDependent),
            port_preserving: true,
        },
    );
}

#[test]
fn symmetric_maps_per_destination_with_random_ports() {
    check_kind(
        NatKind::Symmetric,
        Expect {
            mapping: Some(Mapping::AddressAndPortDependent),
            filtering: Some(Filtering::AddressAndPortDependent),
            port_preserving: false,
        },
    );
}

#[test]
fn address_dependent_mapping_with_address_dependent_filtering() {
    check_kind(
        NatKind::AddressDependent,
        Expect {
            mapping: Some(Mapping::AddressDependent),
            filtering: Some(Filtering::AddressDependent),
            port_preserving: false,
        },
    );
}

#[test]
fn no_nat_sees_the_peer_itself_and_filters_nothing() {
    check_kind(
        NatKind::None,
        Expect {
            mapping: None,
            filtering: None,
            port_preserving: true,
        },
    );
}

#[test]
fn port_restricted_behind_port_restricted_carrier_nat() {
    check_kind(
        NatKind::CarrierNat(NatType::PortRestricted, NatType::PortRestricted),
        Expect {
            mapping: Some(Mapping::EndpointIndependent),
            filtering: Some(Filtering::AddressAndPortDependent),
            port_preserving: true,
        },
    );
}

#[test]
fn full_cone_behind_full_cone_carrier_nat_stays_open() {
    check_kind(
        NatKind::CarrierNat(NatType::FullCone, NatType::FullCone),
        Expect {
            mapping: Some(Mapping::EndpointIndependent),
            filtering: Some(Filtering::EndpointIndependent),
            port_preserving: true,
        },
    );
}

#[test]
fn restricted_behind_symmetric_carrier_nat_is_symmetric() {
    check_kind(
        NatKind::CarrierNat(NatType::Restricted, NatType::Symmetric),
        Expect {
            mapping: Some(Mapping::AddressAndPortDependent),
            filtering: Some(Filtering::AddressAndPortDependent),
            port_preserving: false,
        },
    );
}

#[test]
fn symmetric_sequential_allocates_consecutive_ports() {
    check_kind(
        NatKind::SymmetricSequential,
        Expect {
            mapping: Some(Mapping::AddressAndPortDependent),
            filtering: Some(Filtering::AddressAndPortDependent),
            port_preserving: false,
        },
    );
    let Some(lab) = lab(Lab::builder().peer(NatKind::SymmetricSequential)) else {
        return;
    };
    let _server = start_server(&lab);
    let ports = observe_mapping(&lab, lab.peer(0), 40000).map(|a| a.port());
    assert_eq!(
        ports,
        [20000, 20001, 20002],
        "a fresh NAT allocates from 20000 up"
    );
}

/// Two peers of one lab reach each other across the WAN: a port-restricted peer's datagram to a
/// public peer arrives from its NAT's address, and the reply comes back through the NAT.
#[test]
fn peers_reach_each_other_through_the_wan() {
    let Some(lab) = lab(Lab::builder()
        .peer(NatKind::None)
        .peer(NatKind::PortRestricted)
        .peer(NatKind::CarrierNat(
            NatType::PortRestricted,
            NatType::PortRestricted,
        )))
    else {
        return;
    };
    let public = lab.peer(0);
    let server_addr = addr(public.public_ip(), 5000);
    let mut child = public
        .command(PROBE)
        .args(["serve", "--bind", &server_addr.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let _server = Running(child);
    assert_eq!(read_line(&mut stdout), "READY");
    for behind in &lab.peers()[1..] {
        let outcomes = probe(behind, 42000, &[ProbeStep::Map(server_addr)]);
        assert_eq!(
            outcomes,
            [ProbeOutcome::Mapped {
                to: server_addr,
                observed: addr(behind.public_ip(), 42000)
            }]
        );
    }
}

/// The DESIGN.md §4 pitfall: an unsolicited datagram that reaches a port-preserving NAT before the
/// peer's own first packet to that sender leaves a conntrack entry, and the peer's packet then gets
/// another external port. With `UnsolicitedInbound::Drop` the port is kept.
#[test]
fn early_inbound_packet_changes_the_port_unless_dropped() {
    for (unsolicited, port_kept) in [
        (UnsolicitedInbound::KeepConntrack, false),
        (UnsolicitedInbound::Drop, true),
    ] {
        let Some(lab) = lab(Lab::builder()
            .peer(NatKind::PortRestricted)
            .unsolicited(unsolicited))
        else {
            return;
        };
        let peer = lab.peer(0);
        let knocker = addr(lab.supernode().ip_b(), 4000);
        let mut child = lab
            .supernode()
            .command(PROBE)
            .args(["knock", "--bind", &knocker.to_string()])
            .args(["--to", &addr(peer.public_ip(), 43000).to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let _knocker = Running(child);
        assert_eq!(read_line(&mut stdout), "KNOCKED");
        std::thread::sleep(Duration::from_millis(100));

        let outcomes = probe(peer, 43000, &[ProbeStep::Map(knocker)]);
        let ProbeOutcome::Mapped { observed, .. } = outcomes[0] else {
            panic!("{unsolicited:?}: {outcomes:?}");
        };
        assert_eq!(
            observed.port() == 43000,
            port_kept,
            "{unsolicited:?}: observed {observed}"
        );
        assert_eq!(read_line(&mut stdout), format!("SEEN {observed}"));

        let conntrack = peer.nats()[0].netns().conntrack().unwrap();
        let stale = conntrack
            .lines()
            .any(|l| l.contains("src=203.0.113.11") && l.contains("dport=43000 [UNREPLIED]"));
        assert_eq!(stale, !port_kept, "{unsolicited:?}:\n{conntrack}");
    }
}

/// WAN delay is added once per direction on every path; link delay once per direction on its link.
#[test]
fn delays_add_up_on_the_round_trip() {
    let delay = Duration::from_millis(40);
    let Some(lab) = lab(Lab::builder()
        .wan_delay(delay)
        .peer(NatKind::PortRestricted)
        .peer_with_link(NatKind::FullCone, Impairment::delay(delay)))
    else {
        return;
    };
    let _server = start_server(&lab);
    let target = addr(lab.supernode().ip_a(), PRIMARY_PORT);
    for (peer, minimum_rtt) in [(lab.peer(0), delay * 2), (lab.peer(1), delay * 4)] {
        let started = Instant::now();
        let output = peer
            .command(PROBE)
            .args(["probe", "--bind", "0.0.0.0:44000", "--try-ms", "2000"])
            .arg(ProbeStep::Map(target).to_string())
            .output()
            .unwrap();
        let elapsed = started.elapsed();
        assert!(String::from_utf8_lossy(&output.stdout).starts_with("MAPPED"));
        assert!(
            elapsed >= minimum_rtt,
            "peer {}: round trip took {elapsed:?}, expected at least {minimum_rtt:?}",
            peer.index()
        );
    }
}

/// Loss can be switched on and off while the lab runs.
#[test]
fn total_loss_blocks_and_clearing_it_restores() {
    let Some(lab) = lab(Lab::builder().peer(NatKind::FullCone)) else {
        return;
    };
    let _server = start_server(&lab);
    let target = addr(lab.supernode().ip_a(), PRIMARY_PORT);
    let peer = lab.peer(0);

    lab.set_wan_impairment(Impairment::loss(100.0)).unwrap();
    assert_eq!(
        probe(peer, 45000, &[ProbeStep::Map(target)]),
        [ProbeOutcome::MapTimeout { to: target }]
    );
    lab.set_wan_impairment(Impairment::NONE).unwrap();
    lab.set_peer_impairment(0, Impairment::loss(100.0)).unwrap();
    assert_eq!(
        probe(peer, 45001, &[ProbeStep::Map(target)]),
        [ProbeOutcome::MapTimeout { to: target }]
    );
    lab.set_peer_impairment(0, Impairment::NONE).unwrap();
    assert!(matches!(
        probe(peer, 45002, &[ProbeStep::Map(target)])[..],
        [ProbeOutcome::Mapped { .. }]
    ));
}

/// Addresses, namespace names and the NAT devices' settings are what the documentation says.
#[test]
fn addresses_names_and_conntrack_timeouts() {
    let kinds = [
        NatKind::PortRestricted,
        NatKind::None,
        NatKind::CarrierNat(NatType::Restricted, NatType::PortRestricted),
    ];
    let mut builder = Lab::builder()
        .supernode_addresses(3)
        .udp_timeouts(Duration::from_secs(7), Duration::from_secs(70));
    for kind in kinds {
        builder = builder.peer(kind);
    }
    let Some(lab) = lab(builder) else {
        return;
    };
    assert_eq!(
        lab.supernode().ips(),
        [
            Ipv4Addr::new(203, 0, 113, 10),
            Ipv4Addr::new(203, 0, 113, 11),
            Ipv4Addr::new(203, 0, 113, 12)
        ]
    );
    assert_eq!(lab.peers().len(), 3);
    assert_eq!(lab.peer(0).private_ip(), Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(lab.peer(0).public_ip(), Ipv4Addr::new(198, 51, 100, 20));
    assert_eq!(lab.peer(1).private_ip(), Ipv4Addr::new(198, 51, 100, 21));
    assert_eq!(lab.peer(1).public_ip(), Ipv4Addr::new(198, 51, 100, 21));
    let carrier = lab.peer(2);
    assert_eq!(carrier.private_ip(), Ipv4Addr::new(10, 2, 0, 2));
    assert_eq!(carrier.public_ip(), Ipv4Addr::new(198, 51, 100, 22));
    assert_eq!(carrier.nats()[0].nat_type(), NatType::Restricted);
    assert_eq!(carrier.nats()[0].wan_ip(), Ipv4Addr::new(100, 64, 2, 2));
    assert_eq!(carrier.nats()[1].lan_ip(), Ipv4Addr::new(100, 64, 2, 1));
    assert_eq!(carrier.nats()[1].wan_ip(), carrier.public_ip());

    let existing = lab_namespaces();
    for name in lab.namespaces() {
        assert!(name.starts_with(lab.id()), "{name}");
        assert!(
            existing.contains(name),
            "{name} missing from `ip netns list`"
        );
    }
    // every NAT device has the configured conntrack timeouts and mapping lifetime
    for nat in lab.peers().iter().flat_map(Peer::nats) {
        let read = |key: &str| {
            nat.netns()
                .run("cat", &[format!("/proc/sys/net/netfilter/{key}")])
        };
        assert_eq!(read("nf_conntrack_udp_timeout").unwrap().trim(), "7");
        assert_eq!(
            read("nf_conntrack_udp_timeout_stream").unwrap().trim(),
            "70"
        );
        assert_eq!(
            nat.netns()
                .run("cat", &["/proc/sys/net/ipv4/ip_forward"])
                .unwrap()
                .trim(),
            "1"
        );
    }
    let ruleset = carrier.nats()[0].netns().nft_ruleset().unwrap();
    assert!(ruleset.contains("timeout 1m10s"), "{ruleset}");
}

/// Processes started through the lab die with it.
#[test]
fn dropping_the_lab_kills_its_processes() {
    let Some(lab) = lab(Lab::builder().peer(NatKind::FullCone)) else {
        return;
    };
    let mut sleeper = lab.peer(0).command("sleep").arg("60").spawn().unwrap();
    let mut in_supernode = lab.supernode().command("sleep").arg("60").spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.peer(0).netns().pids().is_empty() {
        assert!(
            Instant::now() < deadline,
            "sleep never showed up in the namespace"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(lab);
    for child in [&mut sleeper, &mut in_supernode] {
        assert!(!wait_bounded(child).success());
    }
}

/// Waits up to 5 s for a child that should be dying.
fn wait_bounded(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process survived its lab");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A test that panics with a lab (and a process in it) leaves no namespace behind.
#[test]
fn a_panic_inside_a_test_leaves_no_namespaces() {
    if let Err(reason) = Lab::available() {
        eprintln!("SKIP: {reason}");
        return;
    }
    let mut names = Vec::new();
    let mut children = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::builder()
            .peer(NatKind::CarrierNat(NatType::FullCone, NatType::Symmetric))
            .peer(NatKind::None)
            .build()
            .unwrap();
        names = lab.namespaces().to_vec();
        children.push(lab.peer(0).command("sleep").arg("60").spawn().unwrap());
        panic!("deliberate panic with a lab in scope");
    }));
    assert!(result.is_err());
    for child in &mut children {
        assert!(!wait_bounded(child).success());
    }
    assert_eq!(
        names.len(),
        2 + 3 + 1,
        "wan, supernode, 2 NATs + peer, public peer"
    );
    let left = lab_namespaces();
    for name in &names {
        assert!(!left.contains(name), "{name} survived the panic");
    }
}

/// Namespaces named after a process that no longer exists, or after this process but not created
/// by it (an earlier process with the same pid), are removed when a lab starts.
#[test]
fn stale_namespaces_are_swept() {
    if let Err(reason) = Lab::available() {
        eprintln!("SKIP: {reason}");
        return;
    }
    // above the kernel's largest pid (4194304): that process cannot exist
    let dead = "qpl-7ffffff0-0-wan".to_owned();
    let same_pid = format!("qpl-{:x}-999999-wan", std::process::id());
    for stale in [&dead, &same_pid] {
        // another test's lab may sweep it at once: only its absence afterwards matters
        let _ = std::process::Command::new("ip")
            .args(["netns", "add", stale])
            .status()
            .unwrap();
    }
    let Some(lab) = lab(Lab::builder()) else {
        return;
    };
    let left = lab_namespaces();
    assert!(!left.contains(&dead), "{left:?}");
    assert!(!left.contains(&same_pid), "{left:?}");
    assert!(left.contains(&format!("{}-wan", lab.id())));
}

/// `tokio_command` runs inside the namespace: the peer sees its own private address on `eth0`.
#[tokio::test]
async fn tokio_commands_run_inside_the_namespace() {
    let Some(lab) = lab(Lab::builder().peer(NatKind::Restricted)) else {
        return;
    };
    let output = lab
        .peer(0)
        .tokio_command("ip")
        .args(["-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("inet 10.0.0.2/24"), "{text}");
}
