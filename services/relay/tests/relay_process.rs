//! The `quickp2p-relay` binary as an operator runs it, against third-party TURN tools:
//! coturn's `turnutils_uclient` allocates, binds channels (or uses Send indications) and sends
//! through our relay to `turnutils_peer`, an echo server on loopback (allowed with
//! `--allow-loopback-peers`); every allocation must succeed and loss stay under 1%. The gRPC
//! control API (stats, allocations, drain, minting), the registry record in Redis, `/metrics`,
//! SIGTERM and the configuration errors are checked on the same process.
//!
//! Each test starts its own `redis-server` on a free loopback port (no shared state with the
//! machine's Redis) and none of the machine's `QP_*` variables reach the relay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quickp2p_proto::v1;
use quickp2p_proto::v1::relay_client::RelayClient;
use quickp2p_store::{RedisConfig, Store};

const SECRET: &str = "process-test-secret";

/// A child process killed (and reaped) on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server on a free port.
fn start_redis() -> (Running, String) {
    let port = free_tcp_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server (Debian package redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Running(child), format!("redis://127.0.0.1:{port}"))
}

/// The relay binary with none of the machine's `QP_*` variables.
fn relay_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quickp2p-relay"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("QP_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

struct Relay {
    process: Running,
    turn: SocketAddr,
    control: SocketAddr,
    ops: SocketAddr,
    _redis: Running,
    redis_url: String,
    prefix: String,
}

fn start_relay(extra: &[&str]) -> Relay {
    let (redis, redis_url) = start_redis();
    let prefix = format!("qp-relay-test-{}", std::process::id());
    let mut child = relay_command()
        .args(["--redis", &redis_url, "--redis-key-prefix", &prefix])
        .args(["--shared-secret", SECRET, "--replica-id", "relay-test"])
        .args([
            "--listen-addr",
            "127.0.0.1:0",
            "--control-addr",
            "127.0.0.1:0",
        ])
        .args(["--http-addr", "127.0.0.1:0", "--port-range", "42000-42999"])
        .args(["--registry-ttl-s", "3", "--log", "warn"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start quickp2p-relay");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut turn, mut control, mut ops) = (None, None, None);
    while ops.is_none() {
        let line = lines
            .next()
            .expect("relay exited before printing its addresses")
            .unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["turn", addr, ..] => turn = addr.parse().ok(),
            ["control", addr, ..] => control = addr.parse().ok(),
            ["ops", url, ..] => ops = url.trim_start_matches("http://").parse().ok(),
            _ => {}
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Relay {
        process: Running(child),
        turn: turn.unwrap(),
        control: control.unwrap(),
        ops: ops.unwrap(),
        _redis: redis,
        redis_url,
        prefix,
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The value of one metric line (exact series name with labels).
fn metric(ops: SocketAddr, series: &str) -> u64 {
    http_get(ops, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// turnutils_uclient's summary: (sent, received, lost %), or the output when it failed.
fn uclient(
    relay: SocketAddr,
    peer_port: u16,
    extra: &[&str],
    user: &str,
    secret: &str,
) -> Result<(u64, u64, f64), String> {
    let out = Command::new("turnutils_uclient")
        .args(["-u", user, "-W", secret])
        .args(["-p", &relay.port().to_string()])
        .args(["-e", "127.0.0.1", "-r", &peer_port.to_string()])
        // -c: no RTCP allocations (those ask for EVEN-PORT with a reservation, which we refuse)
        .arg("-c")
        .args(extra)
        .arg(relay.ip().to_string())
        .output()
        .expect("run turnutils_uclient");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("ERROR") {
        return Err(text);
    }
    let field = |name: &str| -> Option<u64> {
        text.lines().rev().find_map(|l| {
            l.split(name)
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
    };
    let lost = text.lines().find_map(|l| {
        l.split("Total lost packets")
            .nth(1)?
            .split('(')
            .nth(1)?
            .split('%')
            .next()?
            .trim()
            .parse::<f64>()
            .ok()
    });
    match (field("tot_send_msgs="), field("tot_recv_msgs="), lost) {
        (Some(s), Some(r), Some(l)) => Ok((s, r, l)),
        _ => Err(text),
    }
}

fn start_echo_peer() -> (Running, u16) {
    let port = free_udp_port();
    let child = Command::new("turnutils_peer")
        .args(["-p", &port.to_string(), "-L", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnutils_peer");
    std::thread::sleep(Duration::from_millis(200));
    (Running(child), port)
}

#[test]
fn coturn_uclient_relays_through_us_without_loss() {
    if !installed("turnutils_uclient") || !installed("turnutils_peer") {
        eprintln!("skipped: coturn's turnutils are not installed (apt-get install coturn)");
        return;
    }
    let relay = start_relay(&["--allow-loopback-peers"]);
    let (_peer, peer_port) = start_echo_peer();

    // channels (ChannelData), 4 clients x 2 allocations each, 120-byte messages
    let (sent, received, lost) = uclient(
        relay.turn,
        peer_port,
        &["-m", "4", "-n", "200", "-l", "120"],
        "uclient",
        SECRET,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sent, 800);
    assert!(lost < 1.0, "lost {lost}% ({received}/{sent})");
    assert!(received as f64 >= sent as f64 * 0.99);
    // Send/Data indications, 1000-byte messages
    let (sent, received, lost) = uclient(
        relay.turn,
        peer_port,
        &["-s", "-m", "2", "-n", "100", "-l", "1000"],
        "uclient",
        SECRET,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sent, 200);
    assert!(lost < 1.0, "lost {lost}% ({received}/{sent})");

    // relayed counts reach /metrics within a second
    std::thread::sleep(Duration::from_millis(1100));
    let created = metric(relay.ops, "qp_relay_allocations_created_total");
    assert!(created >= 12, "allocations created: {created}");
    assert!(metric(relay.ops, "qp_relay_packets_total{direction=\"to_peer\"}") >= 990);
    assert!(metric(relay.ops, "qp_relay_packets_total{direction=\"to_client\"}") >= 990);

    // a wrong secret: allocation refused, counted
    assert!(
        uclient(
            relay.turn,
            peer_port,
            &["-m", "1", "-n", "5"],
            "mallory",
            "not-the-secret"
        )
        .is_err()
    );
    assert!(
        metric(
            relay.ops,
            "qp_relay_auth_failures_total{reason=\"bad_credentials\"}"
        ) >= 1
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut control = RelayClient::connect(format!("http://{}", relay.control))
            .await
            .unwrap();
        let stats = control
            .get_stats(v1::RelayStatsRequest {})
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        assert_eq!(stats.relay_id, "relay-test");
        assert!(stats.allocations_created >= 12);
        assert!(stats.packets_to_peers >= 990 && stats.bytes_to_peers >= 99_000);
        assert!(
            stats
                .refusals
                .iter()
                .any(|r| r.reason == "bad_credentials" && r.count >= 1)
        );
        assert_eq!(stats.servers, vec![relay.turn.into()]);

        let peer = v1::PeerId::from_public_key([7; 32]);
        let minted = control
            .mint_credentials(v1::MintCredentialsRequest {
                peer: Some(peer.clone()),
                lifetime_s: 60,
            })
            .await
            .unwrap()
            .into_inner();
        let grant = minted.grant.unwrap();
        assert!(grant.username.ends_with(&format!(":{peer}")));
        assert_eq!(
            grant.password,
            quickp2p_relay::password_for(SECRET.as_bytes(), &grant.username)
        );
        assert_eq!(grant.realm, "quickp2p");
        let bad = control
            .mint_credentials(v1::MintCredentialsRequest {
                peer: None,
                lifetime_s: 0,
            })
            .await;
        assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);

        // the registry record
        let store = Store::redis(
            RedisConfig::new(relay.redis_url.clone()).with_key_prefix(relay.prefix.clone()),
        )
        .await
        .unwrap();
        let replicas = store.list_replicas("relay").await.unwrap();
        let me = replicas
            .iter()
            .find(|r| r.replica_id == "relay-test")
            .expect("registered");
        assert_eq!(me.info.advertised_addr, relay.turn.to_string());
        let registration = quickp2p_relay::registry::registration_from_replica(me).unwrap();
        assert_eq!(
            (registration.realm.as_str(), registration.draining),
            ("quickp2p", false)
        );

        // drain: new allocations refused (508), the registry says so
        let drained = control
            .drain(v1::DrainRequest { drain: true })
            .await
            .unwrap()
            .into_inner();
        assert!(drained.draining);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let replicas = store.list_replicas("relay").await.unwrap();
        assert_eq!(
            replicas
                .iter()
                .find(|r| r.replica_id == "relay-test")
                .unwrap()
                .info
                .metadata
                .get("draining")
                .map(String::as_str),
            Some("true")
        );
        let refused = uclient(
            relay.turn,
            peer_port,
            &["-m", "1", "-n", "5"],
            "uclient",
            SECRET,
        );
        assert!(refused.is_err(), "allocation while draining");
        control
            .drain(v1::DrainRequest { drain: false })
            .await
            .unwrap();
        let stats = control
            .get_stats(v1::RelayStatsRequest {})
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        assert!(stats.refusals.iter().any(|r| r.reason == "draining"));

        // live allocations are listed (uclient releases its own, so make one that stays)
        let listed = control
            .list_allocations(v1::ListAllocationsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(listed.allocations.len() <= stats.allocations as usize);
    });

    // SIGTERM: clean exit, registry record removed
    let mut relay = relay;
    let pid = relay.process.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = relay.process.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "relay did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    rt.block_on(async {
        let store = Store::redis(
            RedisConfig::new(relay.redis_url.clone()).with_key_prefix(relay.prefix.clone()),
        )
        .await
        .unwrap();
        assert!(store.list_replicas("relay").await.unwrap().is_empty());
    });
}

#[test]
fn loopback_peers_are_refused_without_the_dev_flag() {
    if !installed("turnutils_uclient") || !installed("turnutils_peer") {
        eprintln!("skipped: coturn's turnutils are not installed (apt-get install coturn)");
        return;
    }
    let relay = start_relay(&[]);
    let (_peer, peer_port) = start_echo_peer();
    let result = uclient(
        relay.turn,
        peer_port,
        &["-m", "1", "-n", "10"],
        "uclient",
        SECRET,
    );
    // the allocation succeeds, the channel bind to 127.0.0.1 gets 403: nothing is relayed
    match result {
        Ok((_, received, _)) => assert_eq!(received, 0),
        Err(text) => assert!(text.contains("403") || text.contains("ERROR"), "{text}"),
    }
    assert!(
        metric(
            relay.ops,
            "qp_relay_refusals_total{method=\"channel_bind\",reason=\"denied_peer_address\"}"
        ) >= 1
    );
    assert_eq!(
        metric(relay.ops, "qp_relay_packets_total{direction=\"to_peer\"}"),
        0
    );
}

#[test]
fn bad_configuration_is_reported_at_once_and_help_lists_every_variable() {
    let out = relay_command()
        .args(["--port-range", "9-1", "--user-quota", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    for name in [
        "QP_RELAY_PORT_RANGE",
        "QP_RELAY_USER_QUOTA",
        "QP_RELAY_SHARED_SECRET",
        "QP_REDIS_URL",
    ] {
        assert!(text.contains(name), "{name} missing from {text}");
    }
    let help = relay_command().arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for var in [
        "QP_RELAY_LISTEN_ADDR",
        "QP_RELAY_SHARED_SECRET_FILE",
        "QP_RELAY_ALLOW_LOOPBACK_PEERS",
        "QP_RELAY_PORT_RANGE",
        "QP_RELAY_USER_BANDWIDTH_KBPS",
    ] {
        assert!(help.contains(var), "{var} missing from --help");
    }
}
