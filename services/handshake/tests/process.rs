//! The `quickp2p-handshake` binary as an operator runs it: bad settings are refused all at once,
//! by name, with exit code 2; with Redis it starts, prints where it listens, reports ready on
//! `/readyz`, and stops cleanly on SIGTERM. (Having an integration test also makes
//! `cargo test --workspace` build the binary, which the end-to-end tests run.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binary with none of the machine's `QP_*` variables: only the test's flags count.
fn handshake() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quickp2p-handshake"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("QP_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn redis_url() -> String {
    std::env::var("QP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response))
}

#[test]
fn bad_settings_are_all_refused_by_name() {
    let out = handshake()
        .args(["--grpc-addr", "not-an-address"])
        .args(["--relay-shared-secret", "short"])
        .args(["--redis", &redis_url()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("grpc"), "{stderr}");
    assert!(stderr.contains("shared"), "{stderr}");
}

#[test]
fn starts_reports_ready_and_stops_on_sigterm() {
    let prefix = format!("qp-handshake-process-{}", std::process::id());
    let mut child = handshake()
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--redis", &redis_url(), "--redis-key-prefix", &prefix])
        .args(["--relay-shared-secret", "a-long-enough-shared-secret"])
        .args(["--replica-id", "hs-process-test", "--log", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut ops = None;
    let mut grpc = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("grpc") {
            grpc = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.trim().strip_prefix("ops") {
            let url = rest.split_whitespace().next().unwrap();
            ops = Some(
                url.trim_start_matches("http://")
                    .parse::<SocketAddr>()
                    .unwrap(),
            );
            break;
        }
    }
    let ops = ops.expect("an ops line");
    assert!(grpc.is_some_and(|g| g.starts_with("127.0.0.1:")));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match http_get(ops, "/readyz") {
            Some((200, _)) => break,
            other => {
                assert!(Instant::now() < deadline, "not ready: {other:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    assert_eq!(
        http_get(ops, "/healthz").map(|(status, _)| status),
        Some(200)
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
