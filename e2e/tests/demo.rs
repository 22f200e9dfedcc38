//! The README's main command, `quickp2p-demo`, does what it says: it brings up the network, its
//! peers get their NAT reports, log in, message each other and open a tunnel, and it stops
//! cleanly.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn demo_runs_the_network_and_its_peers() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quickp2p-demo"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("QP_") {
            cmd.env_remove(name);
        }
    }
    // Ports of its own so that it can run beside other tests and a developer's network.
    let out = cmd
        .args(["--once", "--peers", "2", "--log", "warn"])
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .args(["--stun-port-base", "23478", "--gateway-addr", "127.0.0.1:0"])
        .args(["--relay-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stun-a      127.0.0.1:23478"), "{stdout}");
    for n in 1..=2 {
        assert!(
            stdout.contains(&format!("peer {n}: socket 127.0.0.1:")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("no NAT"), "{stdout}");
    // Both peers logged in through the gateway and each got the other's message.
    assert!(
        stdout.contains("peer 1: got \"hello from peer 2\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("peer 2: got \"hello from peer 1\""),
        "{stdout}"
    );
    // Peer 1 opened a tunnel to peer 2 (direct on loopback) and echoed data through it.
    assert!(
        stdout.contains("peer 1 -> peer 2: tunnel Direct(127.0.0.1:"),
        "{stdout}"
    );
    assert!(stdout.contains("64 KiB echoed"), "{stdout}");
    assert!(stdout.contains("2 of 2 peers done"), "{stdout}");
}
