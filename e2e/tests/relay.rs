//! Two SDK peers behind **symmetric** NATs (address-and-port-dependent mapping and filtering:
//! no direct path can be punched) exchange data through our relay (`quickp2p-relay`, on the
//! supernode host, with Redis for its registry). Each peer is `qp-relay-peer`: it allocates with
//! credentials minted from the relay's shared secret, prints its relayed address, binds a channel
//! to the other's relayed address (which the test passes on), and sends numbered messages; both
//! must receive every message of the other. Builds its own lab and prints `SKIP: …` where one
//! cannot be built (not root, no nft).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Lines, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quickp2p_e2e::binaries::workspace_binary;
use quickp2p_e2e::natlab::{Lab, NatKind};

const SECRET: &str = "lab-relay-secret";
const COUNT: u32 = 100;

/// A child process killed (and reaped) when dropped.
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

fn wait_line(lines: &mut Lines<BufReader<ChildStdout>>, prefix: &str, who: &str) -> String {
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{who} exited while we waited for {prefix:?}"))
            .unwrap();
        if let Some(rest) = line.trim().strip_prefix(prefix) {
            return rest.trim().to_owned();
        }
    }
}

fn start_relay(lab: &Lab) -> (Running, Running, SocketAddr) {
    let host = lab.supernode();
    let ip: Ipv4Addr = host.ip_a();
    let redis = host
        .command("redis-server")
        .args([
            "--bind",
            &ip.to_string(),
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server in the lab");
    std::thread::sleep(Duration::from_millis(300));
    let mut relay = host
        .command(binary("quickp2p-relay"))
        .args([
            "--listen-addr",
            &format!("{ip}:3482"),
            "--control-addr",
            &format!("{ip}:3483"),
        ])
        .args([
            "--http-addr",
            &format!("{ip}:9482"),
            "--redis",
            &format!("redis://{ip}:6379"),
        ])
        .args([
            "--shared-secret",
            SECRET,
            "--replica-id",
            "relay-lab",
            "--log",
            "warn",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(relay.stdout.take().unwrap()).lines();
    wait_line(&mut lines, "ops", "quickp2p-relay");
    std::thread::spawn(move || for _ in lines {});
    (Running(redis), Running(relay), SocketAddr::from((ip, 3482)))
}

struct SdkPeer {
    process: Running,
    lines: Lines<BufReader<ChildStdout>>,
    relayed: SocketAddr,
    mapped: SocketAddr,
}

fn start_peer(lab: &Lab, index: usize, relay: SocketAddr) -> SdkPeer {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let name = format!("lab-peer-{index}");
    let credentials =
        quickp2p_relay::mint_credentials(SECRET.as_bytes(), &name, Duration::from_secs(600), now)
            .unwrap();
    let mut child = lab
        .peer(index)
        .command(binary("qp-relay-peer"))
        .args(["--relay", &relay.to_string()])
        .args([
            "--username",
            &credentials.username,
            "--password",
            &credentials.password,
        ])
        .args(["--count", &COUNT.to_string(), "--size", "300"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let relayed = wait_line(&mut lines, "relayed", &name).parse().unwrap();
    let mapped = wait_line(&mut lines, "mapped", &name).parse().unwrap();
    SdkPeer {
        process: Running(child),
        lines,
        relayed,
        mapped,
    }
}

impl SdkPeer {
    fn say(&mut self, line: &str) {
        let stdin = self.process.0.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }
}

#[test]
fn symmetric_nat_peers_talk_through_the_relay() {
    let Some(lab) = Lab::builder()
        .peer(NatKind::Symmetric)
        .peer(NatKind::Symmetric)
        .build_or_skip()
        .unwrap()
    else {
        return;
    };
    let (_redis, _relay, relay) = start_relay(&lab);
    let mut a = start_peer(&lab, 0, relay);
    let mut b = start_peer(&lab, 1, relay);
    // the relay saw each peer at its NAT's public address, and relays on its own
    assert_eq!(a.mapped.ip(), lab.peer(0).public_ip());
    assert_eq!(b.mapped.ip(), lab.peer(1).public_ip());
    assert_eq!(a.relayed.ip(), relay.ip());
    assert_ne!(a.relayed, b.relayed);

    let (ra, rb) = (a.relayed, b.relayed);
    a.say(&format!("peer {rb}"));
    b.say(&format!("peer {ra}"));
    wait_line(&mut a.lines, "ready", "peer 0");
    wait_line(&mut b.lines, "ready", "peer 1");
    a.say("go");
    b.say("go");
    let got_a: u32 = wait_line(&mut a.lines, "received", "peer 0")
        .parse()
        .unwrap();
    let got_b: u32 = wait_line(&mut b.lines, "received", "peer 1")
        .parse()
        .unwrap();
    assert_eq!(
        (got_a, got_b),
        (COUNT, COUNT),
        "messages received by peer 0 and peer 1"
    );
}
