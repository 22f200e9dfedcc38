//! `bench_tunnel`: bulk stream throughput of an SDK tunnel on loopback, next to a plain quinn
//! connection as the reference, in the same run.
//!
//! * **tunnel**: two [`TunnelEndpoint`]s on 127.0.0.1 (each its own `SharedSocket`, so every
//!   datagram goes through the route table: virtual address → direct route), identity TLS (raw
//!   Ed25519 keys, expected peer checked both ways), a direct route each way;
//! * **plain quinn**: two `quinn::Endpoint`s on 127.0.0.1 with default configurations, a
//!   self-signed rcgen certificate trusted by the client.
//!
//! Each run sends `--mib` MiB from the client side to the server side over `--streams` streams
//! (64 KiB chunks, zero-copy writes; the receiver reads chunks and counts), timed from the first
//! write to the last byte received. Runs alternate (plain, tunnel, plain, …) `--runs` times; the
//! median of each is printed in Gbit/s with the ratio tunnel / plain (of the medians, and the
//! median of each pair's ratio, which is steadier on a busy machine).
//!
//! With `--relayed`, it also starts `quickp2p-relay` (release build from `--bin-dir`, registry in
//! the Redis at `--redis` under a unique key prefix, loopback peers allowed) and times tunnels
//! through it: both peers allocate, bind a channel to the other's relayed address, and every
//! QUIC packet travels as ChannelData via the relay.
//!
//! ```text
//! cargo build --release -p quickp2p-relay -p quickp2p-e2e --bin quickp2p-relay --bin bench_tunnel
//! target/release/bench_tunnel --mib 1024 --runs 3 [--relayed]
//! ```
//!
//! This is a benchmark program: it prints figures and asserts nothing. Only loopback is used.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use quickp2p::identity::Identity;
use quickp2p::tunnel::{TunnelConfig, TunnelEndpoint, TunnelRelay, TunnelRoute};
use quickp2p_e2e::bench::median;

/// Tunnel vs plain quinn bulk throughput on loopback.
#[derive(Debug, Parser)]
#[command(name = "bench_tunnel")]
struct Args {
    /// MiB sent per run.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Runs of each kind (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Parallel streams per run (the volume is split between them).
    #[arg(long, default_value_t = 1)]
    streams: u64,
    /// Also measure a tunnel through `quickp2p-relay` (started from `--bin-dir`, its registry
    /// in the Redis at `--redis` under a unique key prefix), runs of `--relayed-mib` MiB.
    #[arg(long)]
    relayed: bool,
    /// Directory with the quickp2p-relay binary.
    #[arg(long, default_value = "target/release")]
    bin_dir: std::path::PathBuf,
    /// Redis for the relay's registry.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// MiB per relayed run.
    #[arg(long, default_value_t = 256)]
    relayed_mib: u64,
}

const RELAY_SECRET: &str = "bench-tunnel-secret";

/// A child process killed (and reaped) when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `quickp2p-relay` on loopback; returns it and its TURN address.
fn start_relay(args: &Args) -> anyhow::Result<(Running, SocketAddr)> {
    use std::io::BufRead as _;
    let binary = args.bin_dir.join("quickp2p-relay");
    let prefix = format!("qp-bench-tunnel-{}", std::process::id());
    let mut child = std::process::Command::new(&binary)
        .args([
            "--listen-addr",
            "127.0.0.1:0",
            "--control-addr",
            "127.0.0.1:0",
        ])
        .args(["--http-addr", "127.0.0.1:0", "--redis", &args.redis])
        .args([
            "--redis-key-prefix",
            &prefix,
            "--shared-secret",
            RELAY_SECRET,
        ])
        .args([
            "--replica-id",
            "bench-tunnel",
            "--allow-loopback-peers",
            "true",
        ])
        .args(["--log", "warn"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let stdout = child.stdout.take().context("relay stdout")?;
    let running = Running(child);
    let mut turn = None;
    let mut lines = std::io::BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line?;
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("turn") {
            turn = rest.split_whitespace().next().map(str::parse).transpose()?;
        }
        if line.starts_with("ops") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok((running, turn.context("the relay printed no TURN address")?))
}

/// A tunnel pair through the relay at `turn`.
async fn relayed_pair(
    turn: SocketAddr,
) -> anyhow::Result<(
    (TunnelEndpoint, TunnelEndpoint),
    quickp2p::tunnel::Tunnel,
    quickp2p::tunnel::Tunnel,
)> {
    let alice = Identity::generate()?;
    let bob = Identity::generate()?;
    let credentials = |id: &Identity| -> anyhow::Result<quickp2p::relay::RelayCredentials> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let minted = quickp2p_relay::mint_credentials(
            RELAY_SECRET.as_bytes(),
            &id.peer_id().to_string(),
            Duration::from_secs(3600),
            now.as_secs(),
        )?;
        Ok(quickp2p::relay::RelayCredentials {
            username: minted.username,
            password: minted.password,
        })
    };
    let (ca, cb) = (credentials(&alice)?, credentials(&bob)?);
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let a = TunnelEndpoint::bind(loopback, alice)?;
    let b = TunnelEndpoint::bind(loopback, bob)?;
    let ra = TunnelRelay::allocate(a.socket(), turn, ca).await?;
    let rb = TunnelRelay::allocate(b.socket(), turn, cb).await?;
    let a_route = ra.route_to(rb.relayed_addr()).await?;
    let b_route = rb.route_to(ra.relayed_addr()).await?;
    let (ta, tb) = tokio::join!(
        a.connect(b.peer_id(), a_route, TunnelConfig::default()),
        b.accept(a.peer_id(), b_route, TunnelConfig::default()),
    );
    let (ta, tb) = (ta?, tb?);
    ta.hold_relay(ra);
    tb.hold_relay(rb);
    Ok(((a, b), ta, tb))
}

const CHUNK: usize = 64 << 10;

/// Sends `total` bytes from `client` to `server` over `streams` streams; returns the elapsed time.
async fn bulk(
    client: &quinn::Connection,
    server: &quinn::Connection,
    total: u64,
    streams: u64,
) -> anyhow::Result<Duration> {
    let chunk = Bytes::from(vec![0x5a_u8; CHUNK]);
    let per_stream = total / streams;
    let start = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..streams {
        let client = client.clone();
        let chunk = chunk.clone();
        senders.push(tokio::spawn(async move {
            let mut send = client.open_uni().await?;
            let mut sent = 0u64;
            while sent < per_stream {
                let n = (per_stream - sent).min(CHUNK as u64) as usize;
                send.write_chunk(chunk.slice(..n)).await?;
                sent += n as u64;
            }
            send.finish()?;
            anyhow::Ok(())
        }));
    }
    let mut receivers = Vec::new();
    for _ in 0..streams {
        let mut recv = server.accept_uni().await?;
        receivers.push(tokio::spawn(async move {
            let mut got = 0u64;
            while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
                got += chunk.bytes.len() as u64;
            }
            anyhow::Ok(got)
        }));
    }
    let mut received = 0;
    for r in receivers {
        received += r.await??;
    }
    let elapsed = start.elapsed();
    for s in senders {
        s.await??;
    }
    if received != per_stream * streams {
        bail!(
            "received {received} bytes, expected {}",
            per_stream * streams
        );
    }
    Ok(elapsed)
}

fn gbits(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
}

/// A plain quinn pair with default configurations: (client side, server side).
async fn plain_pair() -> anyhow::Result<(
    (quinn::Endpoint, quinn::Endpoint),
    quinn::Connection,
    quinn::Connection,
)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let cert_der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let server_config = quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key)?;
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der)?;
    let client_config = quinn::ClientConfig::with_root_certificates(Arc::new(roots))?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(client_config);
    let server_addr = server.local_addr()?;
    let accept = async {
        let incoming = server.accept().await.context("server endpoint closed")?;
        anyhow::Ok(incoming.await?)
    };
    let (client_conn, server_conn) = tokio::join!(
        async { anyhow::Ok(client.connect(server_addr, "localhost")?.await?) },
        accept
    );
    let (client_conn, server_conn) = (client_conn?, server_conn?);
    Ok(((client, server), client_conn, server_conn))
}

/// A direct tunnel pair: (client side, server side), with the endpoints kept alive.
async fn tunnel_pair() -> anyhow::Result<(
    (TunnelEndpoint, TunnelEndpoint),
    quickp2p::tunnel::Tunnel,
    quickp2p::tunnel::Tunnel,
)> {
    let alice = Identity::generate()?;
    let bob = Identity::generate()?;
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let a = TunnelEndpoint::bind(loopback, alice)?;
    let b = TunnelEndpoint::bind(loopback, bob)?;
    let (a_addr, b_addr) = (a.local_addr()?, b.local_addr()?);
    let (ta, tb) = tokio::join!(
        a.connect(
            b.peer_id(),
            TunnelRoute::Direct(b_addr),
            TunnelConfig::default()
        ),
        b.accept(
            a.peer_id(),
            TunnelRoute::Direct(a_addr),
            TunnelConfig::default()
        ),
    );
    Ok(((a, b), ta?, tb?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.streams == 0 || args.runs == 0 || args.mib == 0 {
        bail!("--mib, --runs and --streams must be at least 1");
    }
    let total = args.mib << 20;
    println!(
        "bench_tunnel: {} MiB per run over {} stream(s), {} run(s) each, loopback",
        args.mib, args.streams, args.runs
    );
    let mut plain = Vec::new();
    let mut tunnel = Vec::new();
    for run in 1..=args.runs {
        let (_endpoints, client, server) = plain_pair().await?;
        let elapsed = bulk(&client, &server, total, args.streams).await?;
        let rate = gbits(total, elapsed);
        println!("  run {run}: plain quinn  {rate:6.2} Gbit/s  ({elapsed:.2?})");
        plain.push(rate);
        client.close(0u32.into(), b"done");
        drop((client, server));

        let (_endpoints, ta, tb) = tunnel_pair().await?;
        let elapsed = bulk(ta.connection(), tb.connection(), total, args.streams).await?;
        let rate = gbits(total, elapsed);
        println!("  run {run}: tunnel       {rate:6.2} Gbit/s  ({elapsed:.2?})");
        tunnel.push(rate);
        drop((ta, tb));
    }
    let mut ratios: Vec<f64> = tunnel.iter().zip(&plain).map(|(t, p)| t / p).collect();
    let plain = median(&mut plain);
    let tunnel = median(&mut tunnel);
    println!("median: plain quinn {plain:.2} Gbit/s, tunnel {tunnel:.2} Gbit/s");
    println!(
        "ratio tunnel / plain: {:.2} (of the medians), {:.2} (median of the paired runs)",
        tunnel / plain,
        median(&mut ratios)
    );
    if args.relayed {
        let (_relay, turn) = start_relay(&args)?;
        let total = args.relayed_mib << 20;
        let mut relayed = Vec::new();
        for run in 1..=args.runs {
            let (_endpoints, ta, tb) = relayed_pair(turn).await?;
            let elapsed = bulk(ta.connection(), tb.connection(), total, args.streams).await?;
            let rate = gbits(total, elapsed);
            println!("  run {run}: relayed tunnel {rate:6.2} Gbit/s  ({elapsed:.2?})");
            relayed.push(rate);
        }
        println!(
            "median: relayed tunnel {:.2} Gbit/s ({} MiB per run, quickp2p-relay on loopback)",
            median(&mut relayed),
            args.relayed_mib
        );
    }
    Ok(())
}
