//! The admin API from a Python management client, across real processes: a redis-server the test
//! starts, one `quickp2p-checkpoint`, two `quickp2p-gateway`s, `quickp2p-index` when it is built
//! (otherwise the admin reads the index from the store), one `quickp2p-admin`, and SDK peers of
//! two applications attached to both gateways.
//!
//! The Python client (`e2e/python/admin_client.py`) generates its stubs from `proto/` with
//! grpcio-tools at run time, lists the peers of both gateways, searches, queries the index, reads
//! one peer and the network statistics, is refused without a token and with a read-only token on
//! a write, kicks a peer with the read-write token and reads the audit log. The test then checks
//! that the kicked SDK peer saw the Kicked event (its session closes with the operator's text)
//! while the others stay connected.
//!
//! The peers publish their attributes and one of them its NAT report through their gateways (the
//! gateways store reports under `quickp2p_store::names::nat_report_key`, where the admin reads
//! them).
//!
//! Needs `python3` with `grpcio` and `grpcio-tools` (`.ci/run` installs them) and the binaries
//! in `target/debug` (`cargo test --workspace` builds them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use quickp2p_e2e::procs::{self, free_tcp_port, free_udp_port};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use quickp2p::identity::Identity;
use quickp2p::session::{
    AppCredentials, ConnectionState, GatewayTrust, Peer, Session, SessionConfig,
};
use quickp2p_e2e::binaries::workspace_binary;
use quickp2p_proto::v1;
use serde_json::Value;

/// A child process, killed when dropped; its stdout lines arrive on `lines`.
struct Proc {
    name: String,
    child: Child,
    lines: std_mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn spawn(program: &Path, args: &[String]) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, _) in std::env::vars() {
            if key.starts_with("QP_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Proc {
            name: program.display().to_string(),
            child,
            lines,
        }
    }

    fn wait_for(&self, pattern: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(pattern) => return line,
                Ok(_) => {}
                Err(_) => panic!("{} never printed {pattern:?}", self.name),
            }
        }
    }
}

fn binary(name: &str) -> PathBuf {
    workspace_binary(name).unwrap_or_else(|e| panic!("{e}"))
}

/// A scratch directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A redis-server on a free port keeping nothing on disk.
fn start_redis(dir: &Path) -> (Proc, String) {
    let port = free_tcp_port().unwrap();
    let args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let proc = Proc::spawn(Path::new("redis-server"), &args);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let ok = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "ping"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"));
        if ok {
            return (proc, format!("redis://127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("redis-server did not start on port {port}");
}

fn create_app(redis: &str, id: &str) -> String {
    procs::create_app(Command::new(binary("quickp2p-checkpoint")), redis, id)
        .unwrap_or_else(|e| panic!("{e}"))
}

struct Gw {
    _proc: Proc,
    quic: SocketAddr,
    pin: [u8; 32],
}

fn start_gateway(redis: &str, checkpoint: SocketAddr, i: usize) -> Gw {
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port().unwrap())
        .parse()
        .unwrap();
    let proc = Proc::spawn(
        &binary("quickp2p-gateway"),
        &[
            "--redis".into(),
            redis.into(),
            "--udp-addr".into(),
            quic.to_string(),
            "--grpc-addr".into(),
            format!("127.0.0.1:{}", free_tcp_port().unwrap()),
            "--checkpoint-url".into(),
            format!("http://{checkpoint}"),
            "--http-addr".into(),
            format!("127.0.0.1:{}", free_tcp_port().unwrap()),
            "--replica-id".into(),
            format!("gw-{i}"),
            "--log".into(),
            "error".into(),
        ],
    );
    let line = proc.wait_for("fingerprint sha256:");
    let hex_pin = line.split("sha256:").nth(1).unwrap().trim();
    let pin: [u8; 32] = (0..32)
        .map(|k| u8::from_str_radix(&hex_pin[2 * k..2 * k + 2], 16).unwrap())
        .collect::<Vec<u8>>()
        .try_into()
        .unwrap();
    Gw {
        _proc: proc,
        quic,
        pin,
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn connect(gateways: &[Gw], first: usize, app: &str, secret: &str) -> Session {
    let mut addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.quic).collect();
    addrs.rotate_left(first);
    let config = SessionConfig::new(
        addrs,
        AppCredentials::new(app, secret.to_owned()),
        Identity::generate().unwrap(),
    )
    .trust(GatewayTrust::Pinned(
        gateways.iter().map(|g| g.pin).collect(),
    ));
    let session = Peer::connect(config).await.unwrap();
    assert_eq!(
        session.gateway(),
        Some(gateways[first].quic),
        "the peer attached to the gateway it was pointed at"
    );
    session
}

fn python_has_grpc_tools() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_lists_queries_and_kicks_across_two_gateways() {
    assert!(
        python_has_grpc_tools(),
        "python3 lacks grpcio / grpcio-tools: pip install grpcio grpcio-tools (.ci/run does)"
    );
    let dir = std::env::temp_dir().join(format!("qp-admin-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = TempDir(dir);
    let (_redis, redis) = start_redis(&dir.0);
    let secret_a = create_app(&redis, "app-a");
    let secret_b = create_app(&redis, "app-b");

    let checkpoint_addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port().unwrap())
        .parse()
        .unwrap();
    let checkpoint = Proc::spawn(
        &binary("quickp2p-checkpoint"),
        &[
            "--redis".into(),
            redis.clone(),
            "--grpc-addr".into(),
            checkpoint_addr.to_string(),
            "--http-addr".into(),
            format!("127.0.0.1:{}", free_tcp_port().unwrap()),
            "--replica-id".into(),
            "cp-1".into(),
            "--log".into(),
            "error".into(),
        ],
    );
    checkpoint.wait_for("grpc");
    let gateways: Vec<Gw> = (1..=2)
        .map(|i| start_gateway(&redis, checkpoint_addr, i))
        .collect();

    // the Index role when it is built; otherwise the admin answers index queries from the store
    let index = workspace_binary("quickp2p-index").ok().map(|path| {
        let addr = format!("127.0.0.1:{}", free_tcp_port().unwrap());
        let proc = Proc::spawn(
            &path,
            &[
                "--redis".into(),
                redis.clone(),
                "--grpc-addr".into(),
                addr.clone(),
                "--http-addr".into(),
                format!("127.0.0.1:{}", free_tcp_port().unwrap()),
                "--log".into(),
                "error".into(),
            ],
        );
        proc.wait_for("grpc");
        (proc, format!("http://{addr}"))
    });

    let write_token = random_token();
    let read_token = random_token();
    let tokens_file = dir.0.join("admin-tokens");
    std::fs::write(
        &tokens_file,
        format!("# test tokens\nwrite ops {write_token}\nread support {read_token}\n"),
    )
    .unwrap();
    let admin_addr = format!("127.0.0.1:{}", free_tcp_port().unwrap());
    let mut admin_args = vec![
        "--redis".into(),
        redis.clone(),
        "--grpc-addr".into(),
        admin_addr.clone(),
        "--http-addr".into(),
        format!("127.0.0.1:{}", free_tcp_port().unwrap()),
        "--tokens-file".into(),
        tokens_file.display().to_string(),
        "--replica-id".into(),
        "admin-1".into(),
        "--log".into(),
        "warn".into(),
    ];
    if let Some((_, url)) = &index {
        admin_args.extend(["--index-url".into(), url.clone()]);
    }
    let admin = Proc::spawn(&binary("quickp2p-admin"), &admin_args);
    admin.wait_for("grpc");

    // peers: two of app-a (one per gateway), one of app-b
    let a1 = connect(&gateways, 0, "app-a", &secret_a).await;
    let a2 = connect(&gateways, 1, "app-a", &secret_a).await;
    let b1 = connect(&gateways, 0, "app-b", &secret_b).await;
    let hex = |s: &Session| s.peer_id().to_string();
    let (a1_hex, a2_hex, b1_hex) = (hex(&a1), hex(&a2), hex(&b1));

    // what they publish, and a1's NAT report (endpoint-independent mapping, port-dependent
    // filtering), through their gateways
    for (session, role) in [
        (&a1, "relay-eu"),
        (&a2, "relay-us"),
        (&b1, "relay-other-tenant"),
    ] {
        session.publish([("role", role), ("v", "1")]).await.unwrap();
    }
    a1.report_nat(v1::NatReport {
        behaviour: Some(v1::NatBehaviour {
            mapping: v1::NatMapping::EndpointIndependent as i32,
            filtering: v1::NatFiltering::AddressAndPortDependent as i32,
            ..v1::NatBehaviour::default()
        }),
        ..v1::NatReport::default()
    })
    .await
    .unwrap();

    let mut a2_state = a2.state();
    let mut b1_state = b1.state();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/admin_client.py");
    let args: Vec<String> = vec![
        script.display().to_string(),
        "--addr".into(),
        admin_addr.clone(),
        "--read-token".into(),
        read_token.clone(),
        "--write-token".into(),
        write_token.clone(),
        "--app".into(),
        "app-a".into(),
        "--kick".into(),
        format!("app-a/{a2_hex}"),
        "--query-key".into(),
        "role".into(),
        "--query-value".into(),
        "relay-".into(),
        "--revoke".into(),
        "app-b".into(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(&args)
            .env_remove("PYTHONPATH")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    eprintln!("python client saw: {seen}");

    // no token, no data
    assert_eq!(seen["no_token"], "UNAUTHENTICATED");
    assert_eq!(seen["wrong_token"], "UNAUTHENTICATED");
    assert_eq!(seen["kick_no_token"], "UNAUTHENTICATED");
    assert_eq!(seen["kick_read_only"], "PERMISSION_DENIED");

    // every peer of both gateways, over several pages, ordered by application then peer id
    let peers = seen["peers"].as_array().unwrap();
    let listed: Vec<(String, String, String)> = peers
        .iter()
        .map(|p| {
            (
                p["app"].as_str().unwrap().to_owned(),
                p["peer"].as_str().unwrap().to_owned(),
                p["gateway"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut expected = vec![
        ("app-a".to_owned(), a1_hex.clone(), "gw-1".to_owned()),
        ("app-a".to_owned(), a2_hex.clone(), "gw-2".to_owned()),
        ("app-b".to_owned(), b1_hex.clone(), "gw-1".to_owned()),
    ];
    expected.sort();
    assert_eq!(listed, expected);
    assert!(seen["peer_pages"].as_u64().unwrap() >= 2, "two per page");
    let first_gw = seen["search_gateway"].as_str().unwrap();
    let want: Vec<&String> = expected
        .iter()
        .filter(|(app, _, gw)| app == "app-a" && gw == first_gw)
        .map(|(_, p, _)| p)
        .collect();
    let found: Vec<&str> = seen["search_found"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(found, want, "search by application and gateway");

    // the index of app-a: its two peers, never app-b's
    let mut index_peers: Vec<(String, String)> = seen["index"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["peer"].as_str().unwrap().to_owned(),
                r["attributes"]["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    index_peers.sort();
    let mut want_index = vec![
        (a1_hex.clone(), "relay-eu".to_owned()),
        (a2_hex.clone(), "relay-us".to_owned()),
    ];
    want_index.sort();
    assert_eq!(index_peers, want_index);

    // one peer in detail, NAT classes in the listing and the statistics
    assert_eq!(seen["get_peer"]["gateway"], "gw-2");
    assert_eq!(seen["get_peer"]["attributes"]["role"], "relay-us");
    let a1_listed = peers.iter().find(|p| p["peer"] == a1_hex.as_str()).unwrap();
    assert_eq!(a1_listed["nat_mapping"], 1);
    let stats = &seen["stats"];
    assert_eq!(stats["peers_online"], 3);
    assert_eq!(stats["per_app"]["app-a"], 2);
    assert_eq!(stats["per_app"]["app-b"], 1);
    assert_eq!(stats["nat"]["1/3"], 1);
    assert_eq!(stats["nat"]["0/0"], 2);
    assert_eq!(stats["gateways"], serde_json::json!(["gw-1", "gw-2"]));

    // the kick: answered by gw-2, and the peer is told why
    assert_eq!(seen["kick"]["was_online"], true);
    assert_eq!(seen["kick"]["gateway"], "gw-2");
    let reason = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let ConnectionState::Closed { reason } = a2_state.borrow_and_update().clone() {
                return reason;
            }
            a2_state.changed().await.unwrap();
        }
    })
    .await
    .expect("the kicked peer's session closes");
    assert!(reason.contains("kicked"), "{reason}");
    assert!(
        reason.contains("kicked by the Python admin client"),
        "{reason}"
    );
    assert!(
        matches!(*a1.state().borrow(), ConnectionState::Connected { .. }),
        "the other peer of app-a stays connected"
    );

    // the broadcast reached app-a's two peers through both gateways (app-b's peer is not counted)
    assert_eq!(seen["broadcast"]["gateways"], 2);
    assert_eq!(seen["broadcast"]["peers"], 2);
    assert_eq!(seen["broadcast"]["id_len"], 16);

    // revoking app-b ended its peer's session, and the peer was told why
    assert_eq!(
        seen["revoke"]["state"],
        v1::ApplicationState::Revoked as i32
    );
    assert_eq!(seen["revoke"]["sessions_ended"], 1);
    let reason = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let ConnectionState::Closed { reason } = b1_state.borrow_and_update().clone() {
                return reason;
            }
            b1_state.changed().await.unwrap();
        }
    })
    .await
    .expect("the revoked application's peer is kicked");
    assert!(
        reason.contains("AppRevoked") && reason.contains("tenant closed"),
        "{reason}"
    );

    // the audit log: the refused and the done kick
    let audit = seen["audit"].as_array().unwrap();
    let target = format!("app-a/{a2_hex}");
    assert!(audit.iter().any(|e| e["actor"] == "support"
        && e["action"] == "peer.kick"
        && e["target"] == target.as_str()
        && e["success"] == false));
    let actions: Vec<(&str, &str, bool)> = audit
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["success"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("ops", "app.revoke", true),
            ("ops", "peer.kick", true),
            ("support", "peer.kick", false),
            ("ops", "app.broadcast", true),
        ],
        "newest first"
    );
    drop(index);
}
