//! Peer sessions across real processes: a redis-server the test starts (append-only file on, so a
//! restart keeps the data), one `quickp2p-checkpoint`, two `quickp2p-gateway`s, and SDK peers
//! (plus a raw protocol client for what the SDK never sends: forged logins, replayed challenges,
//! malformed and oversized frames).
//!
//! The binaries come from `target/debug` (`cargo test --workspace` builds them; so does
//! `cargo build -p quickp2p-checkpoint -p quickp2p-gateway`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use quickp2p_e2e::procs::free_tcp_port;
use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quickp2p::identity::Identity;
use quickp2p::session::{
    AppCredentials, ConnectionState, GatewayTrust, Peer, Presence, Session, SessionConfig,
    SessionError,
};
use quickp2p_e2e::binaries::workspace_binary;
use quickp2p_proto::frame::{FrameReader, write_frame};
use quickp2p_proto::v1::{self, ErrorCode, peer_request::Request, peer_response::Result as Res};
use tokio::io::AsyncWriteExt as _;

// ------------------------------------------------------------------------------ processes

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
    fn spawn(program: &std::path::Path, args: &[String]) -> Proc {
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

    /// Waits for a stdout line containing `pattern` and returns it.
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

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

fn binary(name: &str) -> PathBuf {
    workspace_binary(name).unwrap_or_else(|e| panic!("{e}"))
}

/// A redis-server on a free port with its data in a temporary directory (append-only file).
struct Redis {
    port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Redis {
    fn start() -> Redis {
        let port = free_tcp_port().unwrap();
        let dir = std::env::temp_dir().join(format!("qp-sessions-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            port,
            dir,
            proc: None,
        };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            &self.dir.display().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let proc = Proc::spawn(std::path::Path::new("redis-server"), &args);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ok = Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "ping"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"));
            if ok {
                self.proc = Some(proc);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    fn kill(&mut self) {
        self.proc = None;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.proc = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Gw {
    proc: Proc,
    quic: SocketAddr,
    http: SocketAddr,
    pin: [u8; 32],
}

/// Redis, one checkpoint, two gateways, applications `app-a` and `app-b`.
struct Net {
    redis: Redis,
    checkpoint: Proc,
    checkpoint_http: SocketAddr,
    gateways: Vec<Gw>,
    secret_a: String,
    secret_b: String,
}

fn create_app(redis: &Redis, id: &str) -> String {
    let out = Command::new(binary("quickp2p-checkpoint"))
        .args(["--redis", &redis.url(), "app", "create", "--id", id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "app create failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("secret      "))
        .expect("a secret line")
        .trim()
        .to_owned()
}

impl Net {
    fn start(session_ttl_ms: u64) -> Net {
        let redis = Redis::start();
        let secret_a = create_app(&redis, "app-a");
        let secret_b = create_app(&redis, "app-b");
        let grpc = free_tcp_port().unwrap();
        let checkpoint_http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port().unwrap())
            .parse()
            .unwrap();
        let checkpoint = Proc::spawn(
            &binary("quickp2p-checkpoint"),
            &[
                "--redis".into(),
                redis.url(),
                "--grpc-addr".into(),
                format!("127.0.0.1:{grpc}"),
                "--http-addr".into(),
                checkpoint_http.to_string(),
                "--session-ttl-ms".into(),
                session_ttl_ms.to_string(),
                "--replica-id".into(),
                "cp-1".into(),
                "--log".into(),
                "error".into(),
            ],
        );
        checkpoint.wait_for("grpc");
        let mut gateways = Vec::new();
        for i in 1..=2 {
            gateways.push(start_gateway(&redis, grpc, i));
        }
        Net {
            redis,
            checkpoint,
            checkpoint_http,
            gateways,
            secret_a,
            secret_b,
        }
    }

    fn pins(&self) -> GatewayTrust {
        GatewayTrust::Pinned(self.gateways.iter().map(|g| g.pin).collect())
    }

    /// A peer of `app` preferring gateway `first` (then the other).
    fn config(&self, app: &str, first: usize, identity: Identity) -> SessionConfig {
        let secret = if app == "app-a" {
            &self.secret_a
        } else {
            &self.secret_b
        };
        let mut gateways: Vec<SocketAddr> = self.gateways.iter().map(|g| g.quic).collect();
        gateways.rotate_left(first);
        SessionConfig::new(gateways, AppCredentials::new(app, secret.clone()), identity)
            .trust(self.pins())
    }

    async fn peer(&self, app: &str, first: usize) -> Session {
        Peer::connect(self.config(app, first, Identity::generate().unwrap()))
            .await
            .unwrap()
    }
}

fn start_gateway(redis: &Redis, checkpoint_port: u16, i: usize) -> Gw {
    // every listener on port 0, the bound addresses read from the banner: a port probed free
    // here could be taken by another test before the gateway binds it
    let proc = Proc::spawn(
        &binary("quickp2p-gateway"),
        &[
            "--redis".into(),
            redis.url(),
            "--udp-addr".into(),
            "127.0.0.1:0".into(),
            "--grpc-addr".into(),
            "127.0.0.1:0".into(),
            "--checkpoint-url".into(),
            format!("http://127.0.0.1:{checkpoint_port}"),
            "--http-addr".into(),
            "127.0.0.1:0".into(),
            "--replica-id".into(),
            format!("gw-{i}"),
            "--log".into(),
            "error".into(),
        ],
    );
    // "  quic        127.0.0.1:PORT   (advertised …)", then the fingerprint, …, then
    // "  ops         http://127.0.0.1:PORT   (/healthz …)"
    let banner_addr = |line: &str| -> SocketAddr {
        let word = line.split_whitespace().nth(1).unwrap_or_default();
        word.trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|e| panic!("no address in {line:?}: {e}"))
    };
    let quic = banner_addr(&proc.wait_for("  quic "));
    let line = proc.wait_for("fingerprint sha256:");
    let hex_pin = line.split("sha256:").nth(1).unwrap().trim();
    let pin: [u8; 32] = (0..32)
        .map(|k| u8::from_str_radix(&hex_pin[2 * k..2 * k + 2], 16).unwrap())
        .collect::<Vec<u8>>()
        .try_into()
        .unwrap();
    let http = banner_addr(&proc.wait_for("  ops "));
    // the replica registers itself at once; give Redis a moment
    std::thread::sleep(Duration::from_millis(100));
    Gw {
        proc,
        quic,
        http,
        pin,
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::AsyncReadExt as _;
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.ok()?;
    let code = raw.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, raw.split_once("\r\n\r\n")?.1.to_owned()))
}

/// The value of a Prometheus sample whose line starts with `prefix` (0 when absent).
async fn metric(addr: SocketAddr, prefix: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await.unwrap();
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn recv_within(inbox: &mut quickp2p::session::Messages, secs: u64) -> v1::PeerId {
    tokio::time::timeout(Duration::from_secs(secs), inbox.recv())
        .await
        .expect("a message in time")
        .expect("inbox open")
        .sender
}

// ------------------------------------------------------------------------------ raw client

/// A protocol client that writes whatever frames it is told to.
struct Raw {
    conn: quinn::Connection,
    send: quinn::SendStream,
    reader: FrameReader<quinn::RecvStream>,
    next: u64,
    gateway_id: String,
    _endpoint: quinn::Endpoint,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(
            quickp2p::session::quic_client_config(
                &GatewayTrust::AnyCertificate,
                Duration::from_secs(1),
                Duration::from_secs(20),
            )
            .unwrap(),
        );
        let conn = endpoint.connect(addr, "x").unwrap().await.unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut raw = Raw {
            conn,
            send,
            reader: FrameReader::new(recv),
            next: 1,
            gateway_id: String::new(),
            _endpoint: endpoint,
        };
        match raw
            .request(Request::Hello(v1::Hello {
                protocol_version: 1,
                ..Default::default()
            }))
            .await
        {
            Res::Welcome(w) => raw.gateway_id = w.gateway_id,
            other => panic!("{other:?}"),
        }
        raw
    }

    async fn request(&mut self, request: Request) -> Res {
        let id = self.next;
        self.next += 1;
        write_frame(
            &mut self.send,
            &v1::PeerRequest {
                request_id: id,
                request: Some(request),
            },
        )
        .await
        .unwrap();
        self.response(id).await
    }

    async fn response(&mut self, id: u64) -> Res {
        loop {
            let frame: v1::GatewayFrame = self.reader.read_frame().await.unwrap().unwrap();
            if let Some(v1::gateway_frame::Frame::Response(r)) = frame.frame
                && r.request_id == id
            {
                return r.result.unwrap();
            }
        }
    }

    async fn challenge(&mut self, app: &str) -> Bytes {
        match self
            .request(Request::GetChallenge(v1::GetChallenge {
                app_id: Some(v1::AppId::new(app)),
            }))
            .await
        {
            Res::Challenge(c) => c.challenge,
            other => panic!("{other:?}"),
        }
    }

    /// Logs in with `challenge`; `signer` signs (a different key than `identity` forges).
    async fn login(
        &mut self,
        app: &str,
        secret: &str,
        identity: &Identity,
        signer: &Identity,
        challenge: Bytes,
    ) -> Res {
        let transcript = quickp2p_proto::login::login_transcript(
            &challenge,
            app,
            &self.gateway_id,
            &identity.public_key(),
        )
        .unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        self.request(Request::Login(v1::Login {
            app_id: Some(v1::AppId::new(app)),
            challenge,
            public_key: Bytes::copy_from_slice(&identity.public_key()),
            signature: Bytes::copy_from_slice(&signer.sign(&transcript)),
            app_proof: Bytes::copy_from_slice(ring::hmac::sign(&key, &transcript).as_ref()),
            ..Default::default()
        }))
        .await
    }

    /// The application close code of the connection, once it is closed.
    async fn close_code(&self) -> u64 {
        match tokio::time::timeout(Duration::from_secs(5), self.conn.closed())
            .await
            .expect("closed in time")
        {
            quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
            other => panic!("closed otherwise: {other}"),
        }
    }
}

fn error_code(res: &Res) -> ErrorCode {
    match res {
        Res::Error(e) => e.code(),
        other => panic!("expected an error, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_messages_presence_isolation_and_refusals() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut net = Net::start(3000);
    let x = net.peer("app-a", 0).await;
    let y = net.peer("app-a", 1).await;
    let z = net.peer("app-b", 0).await;
    assert_eq!(x.gateway(), Some(net.gateways[0].quic));
    assert_eq!(y.gateway(), Some(net.gateways[1].quic));
    let mut x_in = x.messages().unwrap();
    let mut y_in = y.messages().unwrap();
    let mut z_in = z.messages().unwrap();

    // messages both ways across the two gateways
    x.send_message(y.peer_id(), "x to y").await.unwrap();
    assert_eq!(&recv_within(&mut y_in, 5).await, x.peer_id());
    y.send_message(x.peer_id(), "y to x").await.unwrap();
    assert_eq!(&recv_within(&mut x_in, 5).await, y.peer_id());

    // presence events: V comes (on gateway 1) and goes, Y (on gateway 2) watches
    let v_key = Identity::generate().unwrap();
    let mut events = y.presence_events();
    let snapshot = y.subscribe_presence(&[v_key.peer_id()]).await.unwrap();
    assert_eq!(snapshot[0].presence, Presence::Offline);
    let v = Peer::connect(net.config("app-a", 0, v_key.clone()))
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&e.peer, e.presence), (&v_key.peer_id(), Presence::Online));
    v.close().await;
    let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&e.peer, e.presence), (&v_key.peer_id(), Presence::Offline));

    // applications are isolated: no messages, presence or lookup across them
    let err = z.send_message(x.peer_id(), "b to a").await.unwrap_err();
    assert!(matches!(err, SessionError::PeerOffline(_)), "{err:?}");
    let err = x.send_message(z.peer_id(), "a to b").await.unwrap_err();
    assert!(matches!(err, SessionError::PeerOffline(_)), "{err:?}");
    let seen = z.subscribe_presence(&[x.peer_id().clone()]).await.unwrap();
    assert_eq!(seen[0].presence, Presence::Offline);

    // refused logins through the SDK
    let wrong = SessionConfig::new(
        vec![net.gateways[0].quic],
        AppCredentials::new("app-a", net.secret_b.clone()),
        Identity::generate().unwrap(),
    )
    .trust(net.pins());
    let err = Peer::connect(wrong).await.unwrap_err();
    assert!(
        matches!(err, SessionError::Unauthenticated(_)),
        "wrong secret: {err:?}"
    );
    let unknown = SessionConfig::new(
        vec![net.gateways[0].quic],
        AppCredentials::new("no-such-app", "x"),
        Identity::generate().unwrap(),
    )
    .trust(net.pins());
    let err = Peer::connect(unknown).await.unwrap_err();
    assert!(
        matches!(err, SessionError::Unauthenticated(_)),
        "unknown app: {err:?}"
    );
    let err = x
        .send_message(y.peer_id(), vec![0u8; 62_000])
        .await
        .unwrap_err();
    assert!(
        matches!(err, SessionError::TooLarge { limit: 61_440, .. }),
        "{err:?}"
    );

    let gw = net.gateways[0].quic;
    let me = Identity::generate().unwrap();
    let other = Identity::generate().unwrap();

    // forged signature: UNAUTHENTICATED, then the connection closes with code 4
    let mut raw = Raw::connect(gw).await;
    let c = raw.challenge("app-a").await;
    let res = raw.login("app-a", &net.secret_a, &me, &other, c).await;
    assert_eq!(error_code(&res), ErrorCode::Unauthenticated, "{res:?}");
    assert_eq!(
        raw.close_code().await,
        v1::ConnectionCloseCode::Unauthenticated as u64
    );

    // replayed challenge: accepted once, refused on another connection
    let mut first = Raw::connect(gw).await;
    let c = first.challenge("app-a").await;
    let res = first
        .login("app-a", &net.secret_a, &me, &me, c.clone())
        .await;
    assert!(matches!(res, Res::LoggedIn(_)), "{res:?}");
    let mut replay = Raw::connect(gw).await;
    let res = replay.login("app-a", &net.secret_a, &me, &me, c).await;
    assert_eq!(error_code(&res), ErrorCode::Unauthenticated, "{res:?}");

    // lookup across applications: another application's peer reads as offline
    let res = first
        .request(Request::LookupPeer(v1::LookupPeer {
            peer: Some(z.peer_id().clone()),
        }))
        .await;
    match res {
        Res::PeerRecord(r) => assert_eq!(r.presence(), Presence::Offline),
        other => panic!("{other:?}"),
    }

    // malformed frame: an INVALID answer, and the session goes on
    first.send.write_all(&[3, 0x08, 0xff, 0xff]).await.unwrap();
    let res = first.response(0).await;
    assert_eq!(error_code(&res), ErrorCode::Invalid, "{res:?}");
    let res = first
        .request(Request::Heartbeat(v1::Heartbeat { clock: None }))
        .await;
    assert!(matches!(res, Res::Heartbeat(_)), "{res:?}");

    // oversized frame: the connection closes with FRAME_TOO_LARGE
    let mut big = Raw::connect(gw).await;
    big.send.write_all(&[0x80, 0x80, 0x40]).await.unwrap(); // 1 MiB announced
    assert_eq!(
        big.close_code().await,
        v1::ConnectionCloseCode::FrameTooLarge as u64
    );

    // expired session: no heartbeat for longer than the session TTL
    tokio::time::sleep(Duration::from_millis(3600)).await;
    let res = first
        .request(Request::Heartbeat(v1::Heartbeat { clock: None }))
        .await;
    assert_eq!(error_code(&res), ErrorCode::Expired, "{res:?}");

    // every refusal is counted
    let gw_ops = net.gateways[0].http;
    for kind in [
        "malformed_frame",
        "frame_too_large",
        "unauthenticated",
        "peer_offline",
        "too_large",
    ] {
        let n = metric(
            gw_ops,
            &format!("qp_gateway_rejections_total{{kind=\"{kind}\"}}"),
        )
        .await;
        assert!(n >= 1.0, "no {kind} rejection counted");
    }
    // accepted messages are timed, in the buckets of a Prometheus histogram
    let timed = metric(gw_ops, "qp_gateway_message_accept_seconds_count").await;
    assert!(timed >= 1.0, "no accepted message timed");
    let in_buckets = metric(
        gw_ops,
        "qp_gateway_message_accept_seconds_bucket{le=\"+Inf\"}",
    )
    .await;
    assert_eq!(in_buckets, timed);
    for reason in ["bad_signature", "bad_app_proof", "unknown_app"] {
        let n = metric(
            net.checkpoint_http,
            &format!("qp_checkpoint_login_failures_total{{reason=\"{reason}\"}}"),
        )
        .await;
        assert!(n >= 1.0, "no {reason} login failure counted");
    }

    // two terminals chat with the CLI
    chat_with_the_cli(&net);

    // nothing else was disturbed
    x.send_message(y.peer_id(), "still here").await.unwrap();
    assert_eq!(&recv_within(&mut y_in, 5).await, x.peer_id());
    assert!(z_in.recv().now_or_never_is_empty());
    assert!(net.checkpoint.alive());

    // revoking application B ends Z's session: its next heartbeat fails, the new login is refused
    let mut z_state = z.state();
    z_state.borrow_and_update();
    let out = Command::new(binary("quickp2p-checkpoint"))
        .args(["--redis", &net.redis.url(), "app", "revoke", "app-b"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reason = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            z_state.changed().await.unwrap();
            if let ConnectionState::Closed { reason } = &*z_state.borrow() {
                return reason.clone();
            }
        }
    })
    .await
    .expect("Z's session ends");
    assert!(reason.contains("not permitted"), "{reason}");
    for g in &mut net.gateways {
        assert!(g.proc.alive());
    }
}

/// `quickp2p keygen` twice, then two `quickp2p chat` processes: a line typed in one is printed by
/// the other, through gateway 1 and gateway 2.
fn chat_with_the_cli(net: &Net) {
    use std::io::Write as _;
    let dir = std::env::temp_dir().join(format!("qp-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cli = binary("quickp2p");
    let keygen = |name: &str| {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let out = Command::new(&cli)
            .args(["keygen", "--out", &path.display().to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (path, String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let (alice_key, alice) = keygen("alice.key");
    let (bob_key, bob) = keygen("bob.key");
    assert_eq!(alice.len(), 64);
    let fingerprints: Vec<String> = net
        .gateways
        .iter()
        .map(|g| g.pin.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let chat = |key: &PathBuf, to: &str, gateway: usize| {
        let mut cmd = Command::new(&cli);
        cmd.args([
            "chat",
            "--gateway",
            &net.gateways[gateway].quic.to_string(),
            "--app",
            "app-a",
            "--secret",
            &net.secret_a,
            "--key",
            &key.display().to_string(),
            "--to",
            to,
            "--fingerprint",
            &fingerprints.join(","),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, _) in std::env::vars() {
            if k.starts_with("QP_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Proc {
            name: "quickp2p chat".into(),
            child,
            lines,
        }
    };
    let mut a = chat(&alice_key, &bob, 0);
    a.wait_for("I am");
    let b = chat(&bob_key, &alice, 1);
    b.wait_for("I am");
    a.wait_for(&format!("* {bob} is online"));
    writeln!(a.child.stdin.as_mut().unwrap(), "hello bob").unwrap();
    let line = b.wait_for("hello bob");
    assert_eq!(line, format!("{alice}: hello bob"));
    drop(a);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `Option::is_none` for a future that must not be ready (no message leaked across apps).
trait NowOrNever {
    fn now_or_never_is_empty(self) -> bool;
}

impl<F: std::future::Future> NowOrNever for F {
    fn now_or_never_is_empty(self) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut fut = std::pin::pin!(self);
        fut.as_mut().poll(&mut cx).is_pending()
    }
}

/// Sends numbered messages from `x` to `y` until told to stop; returns the accepted numbers.
fn sender(
    x: Session,
    to: v1::PeerId,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(BTreeSet<u32>, u32)> {
    tokio::spawn(async move {
        let mut accepted = BTreeSet::new();
        let mut refused = 0;
        let mut n = 0u32;
        while !*stop.borrow() {
            n += 1;
            match x.send_message(&to, n.to_be_bytes().to_vec()).await {
                Ok(_) => {
                    accepted.insert(n);
                }
                Err(_) => refused += 1,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (accepted, refused)
    })
}

/// Collects the numbers received until `stop`, then for one more second.
fn collector(
    mut inbox: quickp2p::session::Messages,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<BTreeSet<u32>> {
    tokio::spawn(async move {
        let mut got = BTreeSet::new();
        let mut record = |m: quickp2p::session::IncomingMessage| {
            if let Ok(b) = <[u8; 4]>::try_from(&m.payload[..]) {
                got.insert(u32::from_be_bytes(b));
            }
        };
        loop {
            tokio::select! {
                m = inbox.recv() => match m { Some(m) => record(m), None => break },
                _ = stop.changed() => break,
            }
        }
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), inbox.recv()).await {
            record(m);
        }
        got
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_loses_no_accepted_message() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut net = Net::start(6000);
    let x = net.peer("app-a", 0).await;
    let y = net.peer("app-a", 1).await;
    let inbox = y.messages().unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let received = collector(inbox, stop.clone());
    let sending = sender(x.clone(), y.peer_id().clone(), stop);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut state = x.state();
    state.borrow_and_update();
    let killed = Instant::now();
    net.gateways[0].proc.child.kill().unwrap();
    let back = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            state.changed().await.unwrap();
            if let ConnectionState::Connected { gateway, .. } = &*state.borrow() {
                return *gateway;
            }
        }
    })
    .await
    .expect("X is back within 5 s");
    assert_eq!(back, net.gateways[1].quic);
    let failover = killed.elapsed();
    // keep sending a while on the new gateway
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop_tx.send(true).unwrap();
    let (accepted, refused) = sending.await.unwrap();
    let got = received.await.unwrap();
    let lost: Vec<&u32> = accepted.difference(&got).collect();
    println!(
        "failover in {failover:?}; {} accepted, {refused} refused, {} received",
        accepted.len(),
        got.len()
    );
    assert!(lost.is_empty(), "accepted but never received: {lost:?}");
    assert!(
        accepted.len() > got.len().saturating_sub(1) / 2 && accepted.len() > 30,
        "too few messages accepted: {}",
        accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_load_recovers_without_restarts() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut net = Net::start(6000);
    let x = net.peer("app-a", 0).await;
    let y = net.peer("app-a", 1).await;
    let mut inbox = y.messages().unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let sending = sender(x.clone(), y.peer_id().clone(), stop);
    tokio::time::sleep(Duration::from_millis(300)).await;

    net.redis.kill();
    let ops = [
        net.gateways[0].http,
        net.gateways[1].http,
        net.checkpoint_http,
    ];
    for addr in ops {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (code, _) = http_get(addr, "/readyz").await.unwrap();
            if code == 503 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{addr} still ready without Redis"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    net.redis.restart();
    let restarted = Instant::now();
    for addr in ops {
        loop {
            let (code, body) = http_get(addr, "/readyz").await.unwrap();
            if code == 200 {
                break;
            }
            assert!(
                restarted.elapsed() < Duration::from_secs(10),
                "{addr} not ready again: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop_tx.send(true).unwrap();
    let (accepted, refused) = sending.await.unwrap();
    println!(
        "around the restart: {} accepted, {refused} refused; ready again after {:?}",
        accepted.len(),
        restarted.elapsed()
    );
    // a message sent now gets through, with no restart of any service
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if x.send_message(y.peer_id(), "after the restart")
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no message accepted 10 s after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .unwrap()
            .unwrap();
        if &m.payload[..] == b"after the restart" {
            break;
        }
    }
    assert!(restarted.elapsed() < Duration::from_secs(10));
    assert!(net.checkpoint.alive());
    for g in &mut net.gateways {
        assert!(g.proc.alive(), "gateway restarted or crashed");
    }
}
