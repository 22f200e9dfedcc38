//! Test support: stores on the shared Redis with a unique key prefix (cleaned on drop), Redis
//! servers and a three-master Redis Cluster started by the test itself (killed on drop, also on
//! panic), record builders and bounded waiting.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use quickp2p_store::{AppRecord, PeerRecord, RedisConfig, Store};

/// The shared Redis of the machine (`QP_REDIS_URL`, default `redis://127.0.0.1:6379`).
pub fn redis_url() -> String {
    std::env::var("QP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix no other test (of this or another run) uses.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "qptest-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000_000
    )
}

/// A store on the shared Redis under a unique prefix; deletes its keys when dropped.
pub struct RedisTestStore {
    pub store: Store,
    pub prefix: String,
    url: String,
}

impl RedisTestStore {
    pub async fn new() -> Self {
        let url = redis_url();
        let prefix = unique_prefix();
        let store = Store::redis(RedisConfig::new(url.clone()).with_key_prefix(prefix.clone()))
            .await
            .expect("valid Redis configuration");
        if let Err(e) = store.ping().await {
            panic!("Redis is not reachable at {url} (set QP_REDIS_URL to another server): {e}");
        }
        Self { store, url, prefix }
    }
}

impl Drop for RedisTestStore {
    fn drop(&mut self) {
        delete_keys(&self.url, &self.prefix);
    }
}

/// Deletes every key under `prefix` (best effort, synchronous so it also runs while unwinding).
pub fn delete_keys(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
        return;
    };
    let keys: Vec<Vec<u8>> = match conn
        .scan_match::<_, Vec<u8>>(format!("{prefix}:*"))
        .map(|iter| iter.filter_map(Result::ok).collect())
    {
        Ok(keys) => keys,
        Err(_) => return,
    };
    for chunk in keys.chunks(500) {
        let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
    }
}

use redis::Commands as _;

/// A free loopback TCP port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", unique_prefix()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` process owned by the test; killed on drop.
pub struct RedisServer {
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on `port` with its files in `dir` and `extra` arguments, and waits
    /// until it answers PING.
    pub fn start(port: u16, dir: &std::path::Path, extra: &[String]) -> Self {
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.display().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend_from_slice(extra);
        let mut server = Self {
            port,
            args,
            child: None,
        };
        server.restart();
        server
    }

    /// (Re)starts the process with the same arguments and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `redis-server` ({e}): the cluster and resilience tests need the \
                     redis-server binary on PATH (Debian/Ubuntu: apt-get install redis-server)"
                )
            });
        self.child = Some(child);
        let url = format!("redis://127.0.0.1:{}", self.port);
        wait_blocking(
            Duration::from_secs(10),
            "redis-server to accept connections",
            || {
                redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                    .is_ok()
            },
        );
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-master Redis Cluster on free loopback ports; its processes and files go away on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: TempDir,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = TempDir::new("qp-store-cluster");
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let bus_port = free_port();
            let node_dir = dir.0.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("create node dir");
            let extra: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
                "--cluster-port",
                &bus_port.to_string(),
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            nodes.push(RedisServer::start(port, &node_dir, &extra));
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let output = create.stdin(Stdio::null()).output().unwrap_or_else(|e| {
            panic!("cannot run `redis-cli --cluster create` ({e}): redis-cli must be on PATH")
        });
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        for node in &nodes {
            let url = format!("redis://127.0.0.1:{}", node.port);
            wait_blocking(
                Duration::from_secs(20),
                "cluster_state:ok on every node",
                || {
                    redis::Client::open(url.as_str())
                        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
                        .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                        .is_ok_and(|info| {
                            info.contains("cluster_state:ok")
                                && info.contains("cluster_slots_ok:16384")
                                && info.contains("cluster_known_nodes:3")
                        })
                },
            );
        }
        Self { nodes, _dir: dir }
    }

    /// The cluster URL form the store accepts.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

/// Polls `ready` until it is true; panics with `what` after `limit`.
pub fn wait_blocking(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls the async condition until it is true; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if ready().await {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Now, truncated to milliseconds (the precision records keep).
pub fn now_ms() -> SystemTime {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

pub fn app(id: &str) -> AppRecord {
    AppRecord {
        id: id.to_owned(),
        display_name: format!("App {id}"),
        secret_verifier: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
        created_at: now_ms(),
        disabled: false,
    }
}

pub fn peer(app: &str, id: &str) -> PeerRecord {
    PeerRecord {
        peer_id: id.to_owned(),
        app_id: app.to_owned(),
        gateway_id: "gw-1".to_owned(),
        session_id: format!("session-{id}"),
        reflexive_addr: "198.51.100.7:40000".to_owned(),
        nat_behaviour: Some("endpoint-independent".to_owned()),
        online_since: now_ms(),
        extension: Bytes::from_static(b"\x00\x01ext\xff"),
    }
}
