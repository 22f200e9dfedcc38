//! `quickp2p send-file` and `quickp2p recv-file` as a user runs them: the all-in-one
//! `quickp2p-supernode` on loopback ports of its own, a receiver printing its peer id, and senders
//! whose files arrive byte for byte over a tunnel — or are refused clearly (an announced name with
//! path components is reduced to its base name inside the receiver's directory and never
//! overwrites; a file above the receiver's `--max-size` is refused and nothing is stored; a
//! stream that is no file transfer is refused with a reason) — and `quickp2p tunnel`, a line pipe
//! between two terminals.
//!
//! In a NAT lab (root only; `SKIP: …` otherwise), a file crosses two symmetric NATs — through
//! the relay or by port prediction, whichever the network manages — and arrives intact.
//!
//! Needs the `quickp2p` and `quickp2p-supernode` binaries next to the test (and the per-role
//! service binaries for the lab) — `cargo build --bins`, or `cargo test --workspace`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quickp2p_e2e::binaries::workspace_binary;
use quickp2p_e2e::lab_network::{LAB_APP, LabNetwork};
use quickp2p_e2e::natlab::{Lab, NatKind};
use quickp2p_e2e::procs::Proc;

const START: Duration = Duration::from_secs(15);

fn binary(name: &str) -> PathBuf {
    workspace_binary(name).unwrap_or_else(|e| panic!("{e}"))
}

/// A base port P such that P and P+1 (UDP) and P+2 (TCP) are free on 127.0.0.1 and 127.0.0.2,
/// for the supernode's STUN pair.
fn free_stun_port_base() -> u16 {
    use std::net::{TcpListener, UdpSocket};
    for _ in 0..200 {
        let base = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if base > 65533 {
            continue;
        }
        let free = ["127.0.0.1", "127.0.0.2"].iter().all(|ip| {
            UdpSocket::bind((*ip, base)).is_ok()
                && UdpSocket::bind((*ip, base + 1)).is_ok()
                && TcpListener::bind((*ip, base + 2)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no free port triple for the STUN pair");
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("qp-cli-tunnel-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bytes no compressor helps with (xorshift64*; the seed varies from run to run).
fn noise(len: usize) -> Vec<u8> {
    let mut x = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs `cmd` to its end, killing it after `limit`; its output.
fn run(mut cmd: Command, limit: Duration) -> Output {
    for (key, _) in std::env::vars() {
        if key.starts_with("QP_") {
            cmd.env_remove(key);
        }
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{cmd:?} did not end within {limit:?}");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The network's coordinates from the supernode's banner.
struct Network {
    _node: Proc,
    gateway: String,
    fingerprint: String,
    secret: String,
    stun: String,
}

impl Network {
    fn start() -> Network {
        // the STUN ports are probed free, then bound by the supernode: another process may take
        // one in between (the supernode then ends, naming the port), so a start is tried again
        // on a fresh triple
        let mut attempts = 0;
        let (node, stun) = loop {
            let base = free_stun_port_base();
            let mut cmd = Command::new(binary("quickp2p-supernode"));
            cmd.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
                .args(["--log", "warn", "--stun-port-base", &base.to_string()])
                .args([
                    "--gateway-addr",
                    "127.0.0.1:0",
                    "--relay-addr",
                    "127.0.0.1:0",
                ]);
            let node = Proc::spawn("quickp2p-supernode", cmd).unwrap();
            match node.wait_for("stun-a ", START) {
                Ok(stun) => break (node, stun),
                Err(e) if attempts < 3 => {
                    attempts += 1;
                    eprintln!("supernode start {attempts} failed ({e}); trying other ports");
                }
                Err(e) => panic!("{e}"),
            }
        };
        let gateway = node.wait_for("gateway ", START).unwrap();
        let dev_app = node.wait_for("dev app ", START).unwrap();
        let word = |line: &str, n: usize| line.split_whitespace().nth(n).unwrap_or("").to_owned();
        let fingerprint = gateway
            .split("sha256:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_hexdigit()).next())
            .expect("fingerprint in the banner")
            .to_owned();
        // "dev app     id dev  secret SECRET"
        assert_eq!(word(&dev_app, 2), "id", "{dev_app}");
        assert_eq!(word(&dev_app, 4), "secret", "{dev_app}");
        Network {
            stun: word(&stun, 1),
            gateway: word(&gateway, 1),
            secret: word(&dev_app, 5),
            fingerprint,
            _node: node,
        }
    }

    /// `quickp2p SUBCOMMAND` with this network's session flags and `key`.
    fn cli(&self, subcommand: &str, key: &Path) -> Command {
        let mut cmd = Command::new(binary("quickp2p"));
        cmd.arg(subcommand)
            .args(["--gateway", &self.gateway, "--app", "dev"])
            .args(["--secret", &self.secret, "--fingerprint", &self.fingerprint])
            .args(["--stun", &self.stun])
            .arg("--key")
            .arg(key);
        cmd
    }
}

/// Makes a key file; the peer id.
fn keygen(path: &Path) -> String {
    let mut cmd = Command::new(binary("quickp2p"));
    cmd.arg("keygen").arg("-o").arg(path);
    let out = run(cmd, Duration::from_secs(10));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    assert_eq!(id.len(), 64, "peer id {id:?}");
    id
}

#[test]
fn files_cross_a_tunnel_intact_and_bad_ones_are_refused() {
    let started = Instant::now();
    let scratch = Scratch::new();
    let net = Network::start();
    let (alice_key, bob_key) = (scratch.0.join("alice.key"), scratch.0.join("bob.key"));
    let _alice = keygen(&alice_key);
    let bob = keygen(&bob_key);
    let inbox = scratch.0.join("inbox");

    let mut cmd = net.cli("recv-file", &bob_key);
    cmd.arg("--dir").arg(&inbox).args(["--max-size", "4M"]);
    let receiver = Proc::spawn("recv-file", cmd).unwrap();
    let hello = receiver.wait_for("I am ", START).unwrap();
    assert_eq!(hello.trim(), format!("I am {bob}"));

    // 1. a 3 MiB file arrives byte for byte; the sender names the path kind and the verdict
    let data = noise(3 << 20);
    let file = scratch.0.join("data.bin");
    std::fs::write(&file, &data).unwrap();
    let mut cmd = net.cli("send-file", &alice_key);
    cmd.args(["--to", &bob]).arg(&file);
    let out = run(cmd, Duration::from_secs(40));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "send-file failed:\n{stdout}\n{stderr}"
    );
    let opened = stdout
        .lines()
        .find(|l| l.starts_with(&format!("tunnel to {bob}: ")))
        .unwrap_or_else(|| panic!("no tunnel line:\n{stdout}"));
    assert!(
        opened.contains(": direct ") || opened.contains(": relayed via "),
        "{opened}"
    );
    assert!(
        stdout.contains(&format!("sent data.bin: {} bytes", data.len()))
            && stdout.contains("verified by the receiver"),
        "{stdout}"
    );
    // stderr is not a terminal here: the bar comes as plain lines, the last one complete
    assert!(stderr.contains("100%"), "no progress lines:\n{stderr}");
    assert_eq!(std::fs::read(inbox.join("data.bin")).unwrap(), data);
    let line = receiver.wait_for("received ", START).unwrap();
    assert!(
        line.contains("SHA-256 ok") && (line.contains("direct") || line.contains("relayed")),
        "{line}"
    );

    // 2. an announced name with path components lands inside the inbox under its base name,
    //    next to (never over) the file already there
    let mut cmd = net.cli("send-file", &alice_key);
    cmd.args(["--to", &bob, "--as", "../escape/data.bin"])
        .arg(&file);
    let out = run(cmd, Duration::from_secs(40));
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("stored as \"data-1.bin\""),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(std::fs::read(inbox.join("data-1.bin")).unwrap(), data);
    assert_eq!(std::fs::read(inbox.join("data.bin")).unwrap(), data);
    assert!(!scratch.0.join("escape").exists());

    // 3. a file above the receiver's --max-size is refused with the reason; nothing is stored
    let big = scratch.0.join("big.bin");
    std::fs::write(&big, noise(5 << 20)).unwrap();
    let mut cmd = net.cli("send-file", &alice_key);
    cmd.args(["--to", &bob, "--no-progress"]).arg(&big);
    let out = run(cmd, Duration::from_secs(40));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused big.bin: file too large: 5242880 bytes announced"),
        "{stderr}"
    );
    let line = receiver.wait_for("refused ", START).unwrap();
    assert!(
        line.contains("big.bin") && line.contains("too large"),
        "{line}"
    );
    let mut stored: Vec<String> = std::fs::read_dir(&inbox)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    stored.sort();
    assert_eq!(stored, ["data-1.bin", "data.bin"]);

    // 4. a stream that is no file transfer (the line pipe's) gets the refusal as its first line
    let mut cmd = net.cli("tunnel", &alice_key);
    cmd.args(["--to", &bob]);
    let out = run(cmd, Duration::from_secs(40));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout
            .lines()
            .any(|l| l == "ERR not a quickp2p file transfer"),
        "{stdout}"
    );
    let line = receiver.wait_for("refused ", START).unwrap();
    assert!(line.contains("not a quickp2p file transfer"), "{line}");
    drop(receiver);

    // 5. `quickp2p tunnel`: lines typed on one side come out on the other, both ways
    let carol_key = scratch.0.join("carol.key");
    let carol = keygen(&carol_key);
    let mut cmd = net.cli("tunnel", &carol_key);
    cmd.arg("--listen");
    let mut listener = Proc::spawn("tunnel --listen", cmd).unwrap();
    listener.wait_for("* waiting for a tunnel", START).unwrap();
    let mut cmd = net.cli("tunnel", &alice_key);
    cmd.args(["--to", &carol]);
    let mut opener = Proc::spawn("tunnel --to", cmd).unwrap();
    let opened = opener.wait_for("* tunnel to ", START).unwrap();
    assert!(
        opened.contains(": direct ") || opened.contains(": relayed via "),
        "{opened}"
    );
    listener.wait_for("* tunnel from ", START).unwrap();
    opener.say("hello carol").unwrap();
    assert_eq!(listener.wait_for("hello", START).unwrap(), "hello carol");
    listener.say("hi alice").unwrap();
    assert_eq!(opener.wait_for("hi", START).unwrap(), "hi alice");
    eprintln!("cli_tunnel: {:?}", started.elapsed());
}

#[test]
fn a_file_crosses_two_symmetric_nats() {
    let started = Instant::now();
    let Some(lab) = Lab::builder()
        .peer(NatKind::Symmetric)
        .peer(NatKind::Symmetric)
        .build_or_skip()
        .unwrap()
    else {
        return;
    };
    let net = LabNetwork::start(&lab).unwrap();
    let scratch = Scratch::new();
    let (alice_key, bob_key) = (scratch.0.join("alice.key"), scratch.0.join("bob.key"));
    keygen(&alice_key);
    let bob = keygen(&bob_key);
    let inbox = scratch.0.join("inbox");
    let cli = |index: usize, subcommand: &str, key: &Path| {
        let mut cmd = lab.peer(index).command(binary("quickp2p"));
        cmd.arg(subcommand)
            .args(["--gateway", &net.gateway.to_string(), "--app", LAB_APP])
            .args([
                "--secret",
                &net.app_secret,
                "--fingerprint",
                &net.gateway_pin,
            ])
            .args(["--stun", &net.stun.to_string()])
            .arg("--key")
            .arg(key);
        cmd
    };

    let mut cmd = cli(1, "recv-file", &bob_key);
    cmd.arg("--dir").arg(&inbox);
    let receiver = Proc::spawn("recv-file", cmd).unwrap();
    receiver.wait_for("I am ", START).unwrap();

    let data = noise(1 << 20);
    let file = scratch.0.join("across.bin");
    std::fs::write(&file, &data).unwrap();
    let mut cmd = cli(0, "send-file", &alice_key);
    cmd.args(["--to", &bob]).arg(&file);
    let out = run(cmd, Duration::from_secs(60));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let opened = stdout
        .lines()
        .find(|l| l.starts_with("tunnel to "))
        .unwrap_or_else(|| panic!("{stdout}"));
    // the relay's address, or a public address of bob's NAT — never a private one
    let relayed = format!("relayed via {}", net.relay);
    let direct = format!("direct {}:", lab.peer(1).public_ip());
    assert!(
        opened.contains(&relayed) || opened.contains(&direct),
        "{opened}"
    );
    assert_eq!(std::fs::read(inbox.join("across.bin")).unwrap(), data);
    let line = receiver.wait_for("received ", START).unwrap();
    assert!(line.contains("SHA-256 ok"), "{line}");
    eprintln!("cli_tunnel (lab): {opened}; {:?}", started.elapsed());
}
