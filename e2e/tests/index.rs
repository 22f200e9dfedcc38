//! The index role across real processes: a redis-server the test starts, one
//! `quickp2p-checkpoint` (short session TTL, so a vanished peer's presence lapses in seconds), one
//! `quickp2p-index`, two `quickp2p-gateway`s — gw-1 calls the index process over gRPC
//! (`--index-url`), gw-2 runs the index code in process on the same Redis (no `--index-url`) — and
//! SDK peers plus the `quickp2p publish` / `quickp2p find` CLI as separate processes.
//!
//! What it shows: published data disappears when its peer goes offline (logout, and a killed
//! process whose session lapses); queries and lookups never return another application's data;
//! oversized or too many attributes are refused with TOO_LARGE and the limit; pages follow the
//! documented order (value, then peer id) across both gateways.
//!
//! The binaries come from `target/debug` (`cargo test --workspace` builds them; so does
//! `cargo build -p quickp2p-checkpoint -p quickp2p-gateway -p quickp2p-index -p quickp2p`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use quickp2p_e2e::procs::{self, free_tcp_port, free_udp_port};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use quickp2p::identity::Identity;
use quickp2p::session::{
    AppCredentials, GatewayTrust, Peer, PeerQuery, Presence, Session, SessionConfig, SessionError,
};
use quickp2p_e2e::binaries::workspace_binary;
use quickp2p_e2e::procs::Proc;

/// Session (and presence) lifetime without heartbeats.
const SESSION_TTL_MS: u64 = 3000;
const START: Duration = Duration::from_secs(20);

fn binary(name: &str) -> PathBuf {
    workspace_binary(name).unwrap_or_else(|e| panic!("{e}"))
}

fn spawn(name: &str, args: &[String]) -> Proc {
    let mut cmd = Command::new(binary(name));
    cmd.args(args);
    Proc::spawn(name, cmd).unwrap()
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// Redis, checkpoint, index, two gateways; applications `app-a` and `app-b`.
struct Net {
    redis_port: u16,
    secret_a: String,
    secret_b: String,
    gateways: Vec<SocketAddr>,
    // killed when dropped, gateways first
    _procs: Vec<Proc>,
    _redis: Proc,
    dir: PathBuf,
}

impl Drop for Net {
    fn drop(&mut self) {
        self._procs.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn create_app(redis: &str, id: &str) -> String {
    procs::create_app(Command::new(binary("quickp2p-checkpoint")), redis, id)
        .unwrap_or_else(|e| panic!("{e}"))
}

impl Net {
    fn start() -> Net {
        let redis_port = free_tcp_port().unwrap();
        let dir =
            std::env::temp_dir().join(format!("qp-index-{}-{redis_port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &s(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir", &dir.display().to_string()]);
        let redis_proc = Proc::spawn("redis-server", cmd).unwrap();
        redis_proc
            .wait_for("Ready to accept connections", START)
            .unwrap();
        let redis = format!("redis://127.0.0.1:{redis_port}");
        let secret_a = create_app(&redis, "app-a");
        let secret_b = create_app(&redis, "app-b");
        let common = |http: u16| {
            vec![
                s("--redis"),
                redis.clone(),
                s("--http-addr"),
                format!("127.0.0.1:{http}"),
                s("--log"),
                s("error"),
            ]
        };
        let cp_grpc = free_tcp_port().unwrap();
        let mut args = common(free_tcp_port().unwrap());
        args.extend([
            s("--grpc-addr"),
            format!("127.0.0.1:{cp_grpc}"),
            s("--session-ttl-ms"),
            s(SESSION_TTL_MS),
        ]);
        let checkpoint = spawn("quickp2p-checkpoint", &args);
        checkpoint.wait_for("grpc", START).unwrap();
        let index_grpc = free_tcp_port().unwrap();
        let mut args = common(free_tcp_port().unwrap());
        args.extend([s("--grpc-addr"), format!("127.0.0.1:{index_grpc}")]);
        let index = spawn("quickp2p-index", &args);
        index.wait_for("grpc", START).unwrap();
        let mut procs = vec![checkpoint, index];
        let mut gateways = Vec::new();
        for i in 1..=2 {
            let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port().unwrap())
                .parse()
                .unwrap();
            let mut args = common(free_tcp_port().unwrap());
            args.extend([
                s("--udp-addr"),
                quic.to_string(),
                s("--grpc-addr"),
                format!("127.0.0.1:{}", free_tcp_port().unwrap()),
                s("--checkpoint-url"),
                format!("http://127.0.0.1:{cp_grpc}"),
                s("--replica-id"),
                format!("gw-{i}"),
            ]);
            if i == 1 {
                args.extend([s("--index-url"), format!("http://127.0.0.1:{index_grpc}")]);
            }
            let gw = spawn("quickp2p-gateway", &args);
            gw.wait_for("fingerprint sha256:", START).unwrap();
            gateways.push(quic);
            procs.insert(0, gw);
        }
        Net {
            redis_port,
            secret_a,
            secret_b,
            gateways,
            _procs: procs,
            _redis: redis_proc,
            dir,
        }
    }

    fn secret(&self, app: &str) -> String {
        if app == "app-a" {
            self.secret_a.clone()
        } else {
            self.secret_b.clone()
        }
    }

    /// A peer of `app` on gateway `gw` (0 or 1).
    async fn peer(&self, app: &str, gw: usize) -> Session {
        let config = SessionConfig::new(
            vec![self.gateways[gw]],
            AppCredentials::new(app, self.secret(app)),
            Identity::generate().unwrap(),
        )
        .trust(GatewayTrust::AnyCertificate);
        Peer::connect(config).await.unwrap()
    }

    /// The CLI's connection flags for a peer of `app` on gateway `gw` with key file `key`.
    fn cli_args(&self, app: &str, gw: usize, key: &std::path::Path) -> Vec<String> {
        vec![
            s("--gateway"),
            self.gateways[gw].to_string(),
            s("--app"),
            s(app),
            s("--secret"),
            self.secret(app),
            s("--key"),
            key.display().to_string(),
            s("--insecure"),
        ]
    }
}

/// Peer ids found for `query`, following every page of `limit`.
async fn find_all(session: &Session, query: &PeerQuery, limit: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cursor = None;
    for _ in 0..1000 {
        let page = session.find(query, cursor.as_deref(), limit).await.unwrap();
        assert!(page.peers.len() <= limit as usize);
        for p in page.peers {
            assert!(p.is_online());
            out.push((p.peer.to_string(), p.attributes[&query.key].clone()));
        }
        cursor = page.next_cursor;
        if cursor.is_none() {
            return out;
        }
    }
    panic!("paging never ended");
}

/// Polls `find` until `check` holds (at most `within`); returns how long it took.
async fn until_found(
    session: &Session,
    query: &PeerQuery,
    within: Duration,
    check: impl Fn(&[(String, String)]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let found = find_all(session, query, 100).await;
        if check(&found) {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "still {found:?} after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_data_disappears_when_its_peer_goes_offline() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let net = Net::start();
    let a = net.peer("app-a", 0).await;
    let b = net.peer("app-a", 1).await;
    let printers = PeerQuery::equal("role", "printer");

    // A publishes through gw-1 (index process); B on gw-2 (in-process index) sees it
    let mine = a
        .publish([("role", "printer"), ("floor", "2")])
        .await
        .unwrap();
    assert_eq!(mine.peer, *a.peer_id());
    assert_eq!(mine.attributes.len(), 2);
    assert!(mine.updated_at_unix_ms > 0);
    let found = find_all(&b, &printers, 10).await;
    assert_eq!(found, vec![(a.peer_id().to_string(), "printer".to_owned())]);
    let seen = b.lookup(a.peer_id()).await.unwrap();
    assert_eq!(seen.presence, Presence::Online);
    assert_eq!(seen.attributes["floor"], "2");

    // a peer published by the CLI, in its own process, on gw-2
    let key = net.dir.join("cli.key");
    let keygen = Command::new(binary("quickp2p"))
        .args(["keygen", "--out", &key.display().to_string()])
        .output()
        .unwrap();
    assert!(keygen.status.success());
    let cli_id = String::from_utf8_lossy(&keygen.stdout).trim().to_owned();
    let mut args = vec![s("publish")];
    args.extend(net.cli_args("app-a", 1, &key));
    args.extend([s("role=printer"), s("floor=7"), s("--for"), s("600")]);
    let mut publisher = spawn("quickp2p", &args);
    let line = publisher.wait_for(&cli_id, START).unwrap();
    assert!(
        line.contains("floor=7") && line.contains("online"),
        "{line}"
    );
    until_found(&b, &printers, Duration::from_secs(5), |f| f.len() == 2).await;

    // the CLI's `find` (its own process, on gw-1) prints both printers
    let key2 = net.dir.join("finder.key");
    Identity::generate().unwrap().save(&key2).unwrap();
    let mut args = vec![s("find")];
    args.extend(net.cli_args("app-a", 0, &key2));
    args.push(s("role=printer"));
    let out = Command::new(binary("quickp2p"))
        .args(&args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&a.peer_id().to_string()) && text.contains(&cli_id),
        "{text}"
    );

    // A logs out: its record is gone at once
    a.close().await;
    let found = find_all(&b, &printers, 10).await;
    assert_eq!(found, vec![(cli_id.clone(), "printer".to_owned())]);
    let gone = b.lookup(a.peer_id()).await.unwrap();
    assert_eq!(gone.presence, Presence::Offline);
    assert!(gone.attributes.is_empty());

    // the CLI process is killed (no logout): its record goes when its presence lapses
    publisher.kill();
    let took = until_found(&b, &printers, Duration::from_secs(40), <[_]>::is_empty).await;
    eprintln!("killed publisher's record gone after {took:?} (session TTL {SESSION_TTL_MS} ms)");
    let gone = b.lookup(&cli_id.parse().unwrap()).await.unwrap();
    assert_eq!(gone.presence, Presence::Offline);
    drop(net);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_never_return_another_applications_data() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let net = Net::start();
    let mut a_peers = Vec::new();
    // five app-a peers over both gateways; values chosen so value order ≠ peer order
    for (i, room) in ["room-b", "room-a", "room-b", "room-c", "room-a"]
        .iter()
        .enumerate()
    {
        let p = net.peer("app-a", i % 2).await;
        p.publish([("room", *room)]).await.unwrap();
        a_peers.push((p, *room));
    }
    let c = net.peer("app-b", 0).await;
    let d = net.peer("app-b", 1).await;
    c.publish([("room", "room-a"), ("secret", "b-only")])
        .await
        .unwrap();
    d.publish([("room", "room-z")]).await.unwrap();

    let viewer = &a_peers[0].0;
    let mut want: Vec<(String, String)> = a_peers
        .iter()
        .map(|(p, r)| (p.peer_id().to_string(), (*r).to_owned()))
        .collect();
    want.sort_by(|x, y| (x.1.as_bytes(), x.0.as_bytes()).cmp(&(y.1.as_bytes(), y.0.as_bytes())));
    // pages of 2 through both gateways: the documented order, each peer once, no app-b peer
    for asker in [&a_peers[0].0, &a_peers[1].0] {
        let got = find_all(asker, &PeerQuery::prefix("room", "room-"), 2).await;
        assert_eq!(got, want);
    }
    let equal = find_all(viewer, &PeerQuery::equal("room", "room-a"), 10).await;
    assert_eq!(equal.len(), 2);
    assert!(equal.iter().all(|(_, v)| v == "room-a"));
    assert!(
        find_all(viewer, &PeerQuery::prefix("secret", ""), 10)
            .await
            .is_empty()
    );
    assert!(
        find_all(viewer, &PeerQuery::equal("room", "room-z"), 10)
            .await
            .is_empty()
    );
    // lookups across applications read as offline, with nothing published
    for (asker, other) in [(viewer, &c), (&c, viewer)] {
        let seen = asker.lookup(other.peer_id()).await.unwrap();
        assert_eq!(seen.presence, Presence::Offline);
        assert!(seen.attributes.is_empty());
    }
    // app-b sees only its own two peers
    let b_view = find_all(&d, &PeerQuery::prefix("room", ""), 10).await;
    let ids: Vec<String> = b_view.iter().map(|(p, _)| p.clone()).collect();
    let mut want_b = vec![c.peer_id().to_string(), d.peer_id().to_string()];
    want_b.sort();
    let mut ids_sorted = ids.clone();
    ids_sorted.sort();
    assert_eq!(ids_sorted, want_b);
    drop(net);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_too_many_attributes_are_refused_clearly() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let net = Net::start();
    for gw in [0, 1] {
        let p = net.peer("app-a", gw).await;
        // 33 attributes in one request
        let many: Vec<(String, String)> = (0..33).map(|i| (format!("k{i}"), s(i))).collect();
        match p.publish(many).await {
            Err(SessionError::TooLarge { limit, message }) => {
                assert_eq!(limit, 32, "{message}");
                assert!(message.contains("at most 32 attributes"), "{message}");
            }
            other => panic!("gw-{}: {other:?}", gw + 1),
        }
        // 30 then 3 more by merge: 33 > 32
        let thirty: Vec<(String, String)> = (0..30).map(|i| (format!("k{i}"), s(i))).collect();
        p.publish(thirty).await.unwrap();
        let more = [("x1", "1"), ("x2", "2"), ("x3", "3")];
        assert!(matches!(
            p.publish(more).await,
            Err(SessionError::TooLarge { limit: 32, .. })
        ));
        // a value of 1025 bytes, a key of 65 bytes, a key with a space
        let big = "v".repeat(1025);
        assert!(matches!(
            p.publish([("k0", big.as_str())]).await,
            Err(SessionError::TooLarge { limit: 1024, .. })
        ));
        let long_key = "k".repeat(65);
        assert!(matches!(
            p.publish([(long_key.as_str(), "1")]).await,
            Err(SessionError::TooLarge { limit: 64, .. })
        ));
        assert!(matches!(
            p.publish([("a key", "1")]).await,
            Err(SessionError::Invalid(_))
        ));
        // nothing of the refused requests was applied
        let me = p.lookup(p.peer_id()).await.unwrap();
        assert_eq!(me.attributes.len(), 30);
        assert!(!me.attributes.contains_key("x1"));
        // a replace within the limit, then unpublish
        let r = p
            .replace_attributes([("only", "1"), ("two", "2")])
            .await
            .unwrap();
        assert_eq!(r.attributes.len(), 2);
        let r = p.unpublish(["two", "unknown"]).await.unwrap();
        assert_eq!(r.attributes.keys().collect::<Vec<_>>(), ["only"]);
        assert!(p.unpublish_all().await.unwrap().attributes.is_empty());
        // a foreign cursor is refused
        assert!(matches!(
            p.find(&PeerQuery::equal("only", "1"), Some("not-a-cursor"), 10)
                .await,
            Err(SessionError::Invalid(_))
        ));
    }
    // the CLI reports the refusal and exits 1
    let key = net.dir.join("big.key");
    Identity::generate().unwrap().save(&key).unwrap();
    let mut args = vec![s("publish")];
    args.extend(net.cli_args("app-a", 0, &key));
    args.extend([format!("big={}", "v".repeat(2000)), s("--for"), s("1")]);
    let out = Command::new(binary("quickp2p"))
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("too large") && err.contains("1024"), "{err}");
    let _ = net.redis_port;
    drop(net);
}
