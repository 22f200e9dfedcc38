//! The `quickp2p-supernode` binary as an operator runs it: it starts, prints where it listens,
//! answers `/healthz`, `/readyz`, `/metrics` and gRPC health, and stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running supernode process, killed on drop if the test did not stop it.
struct Node {
    child: Child,
    ops: SocketAddr,
    grpc: SocketAddr,
    stun_a: SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The supernode binary with none of the machine's `QP_*` variables: only the test's flags count.
fn supernode() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quickp2p-supernode"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("QP_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// A base port P such that P and P+1 (UDP) and P+2 (TCP) are free on 127.0.0.1 and 127.0.0.2, for
/// the supernode's STUN pair. Tests run in parallel, so each picks its own.
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

fn start(extra: &[&str]) -> Node {
    let base = free_stun_port_base().to_string();
    let mut child = supernode()
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .args([
            "--log",
            "warn",
            "--stun-port-base",
            &base,
            "--gateway-addr",
            "127.0.0.1:0",
        ])
        .args(["--relay-addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start quickp2p-supernode");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut ops, mut grpc, mut stun) = (None, None, None);
    while ops.is_none() || grpc.is_none() || stun.is_none() {
        let line = lines
            .next()
            .expect("supernode exited before printing its addresses")
            .unwrap();
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("ops"), Some(url)) => {
                ops = Some(url.trim_start_matches("http://").parse().unwrap())
            }
            (Some("grpc"), Some(addr)) => grpc = Some(addr.parse().unwrap()),
            (Some("stun-a"), Some(addr)) => stun = Some(addr.parse().unwrap()),
            _ => {}
        }
    }
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Node {
        child,
        ops: ops.unwrap(),
        grpc: grpc.unwrap(),
        stun_a: stun.unwrap(),
    }
}

/// A plain HTTP/1.1 GET: status code and body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `/readyz` until it answers `want` or 10 s pass; returns the last answer.
fn wait_ready(addr: SocketAddr, want: u16) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = http_get(addr, "/readyz");
        if got.0 == want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sigterm_and_wait(node: &mut Node) -> std::process::ExitStatus {
    let pid = node.child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success(), "kill -TERM {pid} failed");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "supernode did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn embedded_supernode_serves_health_ready_metrics_and_stops_on_sigterm() {
    let mut node = start(&[]);
    let (code, body) = http_get(node.ops, "/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = wait_ready(node.ops, 200);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("ok store") && body.contains("ok grpc listener"),
        "{body}"
    );
    let (code, _) = http_get(node.ops, "/metrics");
    assert_eq!(code, 200);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let serving = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        client
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    });
    assert_eq!(
        serving,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // A peer asks the supernode's STUN pair what its NAT does: on loopback there is none.
    let report = rt.block_on(async {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let options = quickp2p::nat::NatReportOptions::default();
        quickp2p::nat::nat_report(&socket, node.stun_a, options)
            .await
            .unwrap()
    });
    use quickp2p_wire::nat::{FilteringBehaviour, MappingBehaviour};
    assert_eq!(report.behind_nat, Some(false), "{report:?}");
    assert_eq!(report.mapping, MappingBehaviour::EndpointIndependent);
    assert_eq!(report.filtering, FilteringBehaviour::EndpointIndependent);
    let (_, body) = http_get(node.ops, "/readyz");
    assert!(
        body.contains("ok stun-a udp primary")
            && body.contains("ok stun-b grpc control")
            && body.contains("ok gateway")
            && body.contains("ok checkpoint")
            && body.contains("ok relay udp turn"),
        "{body}"
    );
    drop(rt); // closes the client's connection, as a client going away does

    let status = sigterm_and_wait(&mut node);
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn redis_backed_supernode_is_ready_when_redis_answers() {
    let url = std::env::var("QP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("qp-test-supernode-{}", std::process::id());
    let mut node = start(&["--redis", &url, "--redis-key-prefix", &prefix]);
    let (code, body) = wait_ready(node.ops, 200);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ok store"), "{body}");
    assert!(sigterm_and_wait(&mut node).success());
}

#[test]
fn unreachable_redis_makes_it_not_ready_not_dead() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut node = start(&["--redis", &url]);
    assert_eq!(http_get(node.ops, "/healthz").0, 200);
    let (code, body) = http_get(node.ops, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("FAIL store"), "{body}");
    assert!(sigterm_and_wait(&mut node).success());
}

#[test]
fn bad_configuration_is_reported_all_at_once() {
    let out = supernode()
        .args([
            "--http-addr",
            "nowhere",
            "--grpc-addr",
            "1.2.3.4",
            "--log-format",
            "xml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 problems"), "{err}");
    for name in ["QP_HTTP_ADDR", "QP_GRPC_ADDR", "QP_LOG_FORMAT"] {
        assert!(err.contains(name), "{name} missing from: {err}");
    }
}
