//! `bench_index`: index query throughput and latency with many published records.
//!
//! It starts its own redis-server (free port, no persistence) and one `quickp2p-index` from
//! `--bin-dir`, then:
//!
//! 1. **populate**: `--records` peers of one application come online (presence written into the
//!    store, as the checkpoint does at login) and each publishes, through the Index gRPC service,
//!    `group = g0000 … g0999` (`--values` distinct values, spread evenly: 100 peers per value by
//!    default) plus `n = <its number>`. Prints the publish rate and latency.
//! 2. **queries** (one phase per `--limits` × `--concurrency` × mode): gRPC `Index.Query` from
//!    `--concurrency` closed-loop workers for `--duration` seconds. `equal`: `group` equals a
//!    random value (a full page of matches); `prefix`: `group` starts with a random 3-digit prefix
//!    such as `g042` (10 values, 1,000 matches). Each query returns whole records (every attribute
//!    of each matching peer). Prints queries/s and p50/p99/p99.9/max latency measured at the
//!    client (the loopback gRPC round trip included), and the mean time Redis spent in the query
//!    script (`INFO commandstats`, read with `redis-cli`), to tell the store's share.
//!
//! ```text
//! cargo build --release -p quickp2p-index -p quickp2p-e2e --bin quickp2p-index --bin bench_index
//! target/release/bench_index
//! ```
//!
//! This is a benchmark program: it prints figures and asserts nothing. Only loopback is used.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use quickp2p_proto::v1::{self, index_client::IndexClient};
use quickp2p_store::{PeerRecord, RedisConfig, Store};
use tonic::transport::Channel;

/// Index query throughput/latency over many published records.
#[derive(Debug, Parser)]
#[command(name = "bench_index")]
struct Args {
    /// Directory with the quickp2p-index binary.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Published records (one peer each).
    #[arg(long, default_value_t = 100_000)]
    records: u32,
    /// Distinct values of the queried attribute.
    #[arg(long, default_value_t = 1_000)]
    values: u32,
    /// Page sizes of the query phases.
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    limits: Vec<u32>,
    /// Concurrent clients of the query phases (one phase per value).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Seconds per query phase.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Concurrent publishers while populating.
    #[arg(long, default_value_t = 64)]
    publishers: usize,
}

/// A child process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn peer(i: u32) -> v1::PeerId {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&i.to_be_bytes());
    key[31] = 1;
    v1::PeerId::from_public_key(key)
}

/// Percentile of sorted microseconds.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(label: &str, mut lat_us: Vec<f64>, secs: f64, extra: &str) {
    lat_us.sort_by(f64::total_cmp);
    println!(
        "{label:<34} {n:>8} ops  {rate:>9.0}/s  p50 {p50:>7.3} ms  p99 {p99:>7.3} ms  p99.9 {p999:>7.3} ms  max {max:>7.3} ms{extra}",
        n = lat_us.len(),
        rate = lat_us.len() as f64 / secs,
        p50 = pct(&lat_us, 0.50) / 1000.0,
        p99 = pct(&lat_us, 0.99) / 1000.0,
        p999 = pct(&lat_us, 0.999) / 1000.0,
        max = lat_us.last().copied().unwrap_or(0.0) / 1000.0,
    );
}

/// `redis-cli -p PORT ARGS…`'s output (empty when it fails: the figure is then omitted).
fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Mean microseconds per EVALSHA since the last `CONFIG RESETSTAT`.
fn script_usec_per_call(port: u16) -> Option<f64> {
    redis_cli(port, &["info", "commandstats"])
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))?
        .split(',')
        .find_map(|kv| kv.strip_prefix("usec_per_call="))?
        .trim()
        .parse()
        .ok()
}

/// xorshift64*: cheap, deterministic per worker.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as u32 % n.max(1)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let index_bin = args.bin_dir.join("quickp2p-index");
    if !index_bin.is_file() {
        bail!(
            "{} is missing: cargo build --release -p quickp2p-index",
            index_bin.display()
        );
    }
    let redis_port = free_tcp_port()?;
    let _redis = Proc(
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start redis-server")?,
    );
    let url = format!("redis://127.0.0.1:{redis_port}");
    let store = Store::redis(RedisConfig::new(url.clone())).await?;
    let mut up = false;
    for _ in 0..100 {
        if store.ping().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !up {
        bail!("redis-server did not start on port {redis_port}");
    }
    let grpc_port = free_tcp_port()?;
    let http_port = free_tcp_port()?;
    let _index = Proc(
        Command::new(&index_bin)
            .args(["--redis", &url, "--log", "warn"])
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
            .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", index_bin.display()))?,
    );
    let endpoint = format!("http://127.0.0.1:{grpc_port}");
    let mut channel = None;
    for _ in 0..100 {
        if let Ok(c) = Channel::from_shared(endpoint.clone())?.connect().await {
            channel = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let channel = channel.context("the index did not start")?;
    println!(
        "bench_index: {} records over {} values of `group`, index {endpoint}, redis {url}",
        args.records, args.values
    );

    // ---------------------------------------------------------------- populate
    let app = "bench";
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.publishers {
        let (store, next, channel) = (store.clone(), Arc::clone(&next), channel.clone());
        let (records, values) = (args.records, args.values);
        tasks.push(tokio::spawn(async move {
            let mut client = IndexClient::new(channel);
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Ok(i) = u32::try_from(i) else { break };
                if i >= records {
                    break;
                }
                let id = peer(i);
                let record = PeerRecord {
                    peer_id: id.to_string(),
                    app_id: app.to_owned(),
                    gateway_id: "bench-gw".into(),
                    session_id: format!("s{i}"),
                    reflexive_addr: String::new(),
                    nat_behaviour: None,
                    online_since: std::time::SystemTime::now(),
                    extension: Default::default(),
                };
                store.put_peer(&record, Duration::from_secs(3600)).await?;
                let t = Instant::now();
                client
                    .publish(v1::IndexPublishRequest {
                        app_id: Some(v1::AppId::new(app)),
                        peer: Some(id),
                        attributes: vec![
                            v1::Attribute {
                                key: "group".into(),
                                value: format!("g{:04}", i % values),
                            },
                            v1::Attribute {
                                key: "n".into(),
                                value: i.to_string(),
                            },
                        ],
                        replace_all: false,
                    })
                    .await?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut publish_lat = Vec::new();
    for t in tasks {
        publish_lat.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "populated {} records in {secs:.1} s ({} publishers; each: presence put + gRPC Publish)",
        args.records, args.publishers
    );
    summary("publish (gRPC, 2 attributes)", publish_lat, secs, "");

    // ---------------------------------------------------------------- queries
    for prefix in [false, true] {
        for &limit in &args.limits {
            for &workers in &args.concurrency {
                redis_cli(redis_port, &["config", "resetstat"]);
                let deadline = Instant::now() + Duration::from_secs(args.duration);
                let started = Instant::now();
                let mut tasks = Vec::new();
                for w in 0..workers {
                    let channel = channel.clone();
                    let values = args.values;
                    tasks.push(tokio::spawn(async move {
                        let mut client = IndexClient::new(channel);
                        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1));
                        let mut lat = Vec::new();
                        let mut returned = 0u64;
                        while Instant::now() < deadline {
                            let v = rng.below(values);
                            let (mode, value) = if prefix {
                                (v1::AttributeMatch::Prefix, format!("g{:03}", v / 10))
                            } else {
                                (v1::AttributeMatch::Equal, format!("g{v:04}"))
                            };
                            let t = Instant::now();
                            let r = client
                                .query(v1::IndexQueryRequest {
                                    app_id: Some(v1::AppId::new(app)),
                                    filter: Some(v1::AttributeFilter {
                                        key: "group".into(),
                                        mode: mode as i32,
                                        value,
                                    }),
                                    page: Some(v1::Page {
                                        cursor: String::new(),
                                        limit,
                                    }),
                                })
                                .await?;
                            lat.push(t.elapsed().as_secs_f64() * 1e6);
                            returned += r.into_inner().records.len() as u64;
                        }
                        anyhow::Ok((lat, returned))
                    }));
                }
                let mut lat = Vec::new();
                let mut returned = 0;
                for t in tasks {
                    let (l, r) = t.await??;
                    lat.extend(l);
                    returned += r;
                }
                let secs = started.elapsed().as_secs_f64();
                let per_query = returned as f64 / lat.len().max(1) as f64;
                summary(
                    &format!(
                        "query {} limit {limit} c={workers}",
                        if prefix { "prefix" } else { "equal " }
                    ),
                    lat,
                    secs,
                    &format!(
                        "  ({per_query:.0} records/query; Redis script {:.0} µs/query)",
                        script_usec_per_call(redis_port).unwrap_or(f64::NAN)
                    ),
                );
            }
        }
    }
    Ok(())
}
