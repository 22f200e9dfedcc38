//! `bench_sessions`: instant-message throughput and latency across two gateways, and the memory of
//! idle sessions on one gateway.
//!
//! It starts its own redis-server (free port, no persistence), one `quickp2p-checkpoint` and three
//! `quickp2p-gateway`s from `--bin-dir`, creates an application, then:
//!
//! 1. **latency at fixed rates** (one phase per `--rates` value, fresh sessions each, measured
//!    in the steady state: after one unmeasured message per peer and a 2 s pause): `--peers` SDK
//!    sessions (half on each of gateways 1 and 2); peer i sends to peer i + peers/2 on the other
//!    gateway, all together at the offered rate (open loop: sends start on schedule whatever the
//!    answers do) for `--duration` seconds. Each payload carries its send time; the receiver
//!    computes the one-way delivery latency (same process, same clock). Also the send →
//!    `MessageAccepted` latency.
//! 2. **throughput**: the peers send as fast as the acknowledgements come back (closed loop), each
//!    with `--window` messages in flight, for `--duration` seconds.
//! 3. **memory**: `--idle` sessions log in to a third gateway that served nothing before and stay
//!    idle; its RSS before and after, divided by the number of sessions.
//!
//! Each message phase also prints the CPU of every process (per 1,000 messages), how busy the
//! machine was, how long the gateways' and this process's threads waited for a CPU, how late the
//! open-loop sends started against their schedule (not counted in the latencies), and the
//! gateways' own `qp_gateway_message_accept_seconds` quantiles (bucket bounds); `--trace` adds
//! the delivered latency per 100 ms of send time.
//!
//! ```text
//! cargo build --release -p quickp2p-checkpoint -p quickp2p-gateway -p quickp2p-e2e \
//!   --bin quickp2p-checkpoint --bin quickp2p-gateway --bin bench_sessions
//! target/release/bench_sessions
//! ```
//!
//! This is a benchmark program: it prints figures and asserts nothing. Only loopback is used.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use quickp2p::identity::Identity;
use quickp2p::session::{AppCredentials, GatewayTrust, Peer, Session, SessionConfig};
use quickp2p_e2e::bench::{
    clock_ticks, cpu_seconds, machine_cpu_seconds, runqueue_wait_seconds, status_kib,
};

/// Message throughput/latency over two gateways and idle-session memory on one.
#[derive(Debug, Parser)]
#[command(name = "bench_sessions")]
struct Args {
    /// Directory with the quickp2p-checkpoint and quickp2p-gateway binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Peers in the message phases (half on each gateway).
    #[arg(long, default_value_t = 1000)]
    peers: usize,
    /// Total messages per second offered in the latency phases, one phase per rate.
    #[arg(long, value_delimiter = ',', default_value = "1000,2500,5000,10000")]
    rates: Vec<u64>,
    /// Seconds per message phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Messages in flight per peer in the throughput phase (0 skips it).
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Idle sessions for the memory phase (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Seconds the idle sessions stay open after the memory figure is printed (to look at the
    /// gateway with a profiler meanwhile).
    #[arg(long, default_value_t = 0)]
    hold_idle: u64,
    /// Also print the delivered latency per 100 ms of each phase.
    #[arg(long)]
    trace: bool,
    /// Payload size in bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    payload: usize,
}

/// What a warm-up message carries instead of a send time; its receiver ignores it.
const WARM_UP_MARK: u64 = u64::MAX;

/// The gateways' own histogram of the time from taking a message up to its acceptance.
const ACCEPT_HISTOGRAM: &str = "qp_gateway_message_accept_seconds";

/// Pause between logging the sessions of a phase in and measuring.
const SETTLE: Duration = Duration::from_secs(2);

/// A child process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU used by each part of the setup, to print per message after a phase.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    /// Runqueue waits (ms) of the two message gateways and of this process.
    waits: (f64, f64),
    /// CPU time (ms) of each part.
    gateways: f64,
    clients: f64,
    checkpoint: f64,
    redis: f64,
    /// The machine's (busy, interrupt work, all) CPU time in ms.
    machine: (f64, f64, f64),
}

impl Network {
    fn cpu(&self) -> CpuSample {
        let ms = |pid: u32| cpu_seconds(pid, self.ticks) * 1000.0;
        let (busy, interrupts, all) = machine_cpu_seconds(self.ticks);
        let message_gateways = || self.gateways[..2].iter().map(|g| g.0.0.id());
        CpuSample {
            gateways: message_gateways().map(ms).sum(),
            clients: ms(std::process::id()),
            checkpoint: ms(self.checkpoint.0.id()),
            redis: ms(self.redis.0.id()),
            machine: (busy * 1000.0, interrupts * 1000.0, all * 1000.0),
            waits: (
                message_gateways().map(runqueue_wait_seconds).sum::<f64>() * 1000.0,
                runqueue_wait_seconds(std::process::id()) * 1000.0,
            ),
        }
    }
}

impl CpuSample {
    /// Prints the CPU each part used since `self` (`elapsed` ago): in cores, and per 1,000
    /// messages.
    fn report(&self, now: CpuSample, elapsed: Duration, messages: usize) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let parts = [
            ("gateways (both)", now.gateways - self.gateways),
            ("SDK clients (this process)", now.clients - self.clients),
            ("redis", now.redis - self.redis),
            ("checkpoint", now.checkpoint - self.checkpoint),
        ];
        let line: Vec<String> = parts
            .iter()
            .map(|(name, used)| {
                format!(
                    "{name} {:.2} cores = {:.0} ms/1k msgs",
                    used / ms,
                    used * 1000.0 / messages.max(1) as f64
                )
            })
            .collect();
        println!("  CPU: {}", line.join(", "));
        let busy = now.machine.0 - self.machine.0;
        let interrupts = now.machine.1 - self.machine.1;
        let all = (now.machine.2 - self.machine.2).max(1.0);
        println!(
            "  machine: {:.0} % busy ({:.2} of {} cores), of which interrupt work {:.2} cores",
            busy * 100.0 / all,
            busy / ms,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            interrupts / ms
        );
        println!(
            "  waiting for a CPU (runnable threads, summed): gateways {:.0} ms, SDK clients {:.0} ms per second",
            (now.waits.0 - self.waits.0) * 1000.0 / ms,
            (now.waits.1 - self.waits.1) * 1000.0 / ms
        );
    }
}

/// Every session has its own UDP socket: raises this process's open-file limit (and the
/// gateways', which inherit it) to at least `want` when it is lower, warning when it cannot.
fn raise_open_files(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= want {
        return;
    }
    // root may raise the hard limit too; anyone may raise the soft one up to the hard one
    if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_err()
        && setrlimit(Resource::RLIMIT_NOFILE, hard.min(want), hard).is_err()
    {
        eprintln!("warning: cannot raise the open-file limit from {soft} to {want}");
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(
    program: &std::path::Path,
    args: &[String],
) -> anyhow::Result<(
    Proc,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
)> {
    use std::io::BufRead as _;
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
        .with_context(|| format!("cannot start {}", program.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    Ok((Proc(child), std::io::BufReader::new(stdout).lines()))
}

fn wait_line(
    lines: &mut std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    pattern: &str,
) -> anyhow::Result<String> {
    for line in lines.by_ref() {
        let line = line?;
        if line.contains(pattern) {
            return Ok(line);
        }
    }
    bail!("the process ended before printing {pattern:?}")
}

/// The processes drop (are killed) in field order: gateways first, Redis last, so that no
/// gateway spends its last moments logging a lost store or checkpoint.
struct Network {
    gateways: Vec<(Proc, SocketAddr, [u8; 32])>,
    /// Clock ticks per second, for the CPU figures.
    ticks: f64,
    /// Each gateway's operations address (`/metrics`).
    gateway_ops: Vec<SocketAddr>,
    checkpoint: Proc,
    redis: Proc,
    secret: String,
}

fn start(args: &Args) -> anyhow::Result<Network> {
    let redis_port = free_port()?;
    let (redis, redis_lines) = spawn(
        std::path::Path::new("redis-server"),
        &[
            "--port".into(),
            redis_port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ],
    )?;
    // keep reading its log: a closed pipe would kill it
    std::thread::spawn(move || redis_lines.for_each(drop));
    let url = format!("redis://127.0.0.1:{redis_port}");
    for _ in 0..100 {
        let pong = Command::new("redis-cli")
            .args(["-p", &redis_port.to_string(), "ping"])
            .output();
        if pong.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let checkpoint_bin = args.bin_dir.join("quickp2p-checkpoint");
    let out = Command::new(&checkpoint_bin)
        .args(["--redis", &url, "app", "create", "--id", "bench"])
        .output()
        .with_context(|| format!("cannot run {}", checkpoint_bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("secret      "))
        .with_context(|| {
            format!(
                "no secret printed: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?
        .trim()
        .to_owned();
    let grpc = free_port()?;
    let (checkpoint, mut lines) = spawn(
        &checkpoint_bin,
        &[
            "--redis".into(),
            url.clone(),
            "--grpc-addr".into(),
            format!("127.0.0.1:{grpc}"),
            "--http-addr".into(),
            format!("127.0.0.1:{}", free_port()?),
            "--replica-id".into(),
            "cp".into(),
            "--log".into(),
            "warn".into(),
        ],
    )?;
    wait_line(&mut lines, "grpc")?;
    std::thread::spawn(move || lines.for_each(drop));
    let mut gateways = Vec::new();
    let mut gateway_ops = Vec::new();
    // gateways 1 and 2 carry the message phases; gateway 3 stays empty until the memory phase
    for i in 1..=3 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
        let ops: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let (gw, mut lines) = spawn(
            &args.bin_dir.join("quickp2p-gateway"),
            &[
                "--redis".into(),
                url.clone(),
                "--udp-addr".into(),
                udp.to_string(),
                "--grpc-addr".into(),
                format!("127.0.0.1:{}", free_port()?),
                "--checkpoint-url".into(),
                format!("http://127.0.0.1:{grpc}"),
                "--http-addr".into(),
                ops.to_string(),
                "--replica-id".into(),
                format!("gw-{i}"),
                "--log".into(),
                "warn".into(),
                "--requests-per-second".into(),
                "100000".into(),
                "--max-in-flight".into(),
                "1024".into(),
                "--queue-depth".into(),
                "4096".into(),
            ],
        )?;
        let line = wait_line(&mut lines, "fingerprint sha256:")?;
        std::thread::spawn(move || lines.for_each(drop));
        let hex = line
            .split("sha256:")
            .nth(1)
            .context("fingerprint")?
            .trim()
            .to_owned();
        let mut pin = [0u8; 32];
        for (k, b) in pin.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * k..2 * k + 2], 16)?;
        }
        gateways.push((gw, udp, pin));
        gateway_ops.push(ops);
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(Network {
        gateways,
        ticks: clock_ticks(),
        gateway_ops,
        checkpoint,
        redis,
        secret,
    })
}

async fn connect(
    net: &Network,
    gateway: usize,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Session>> {
    let pins = GatewayTrust::Pinned(net.gateways.iter().map(|g| g.2).collect());
    let addr = net.gateways[gateway].1;
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let mut config = SessionConfig::new(
            vec![addr],
            AppCredentials::new("bench", net.secret.clone()),
            Identity::generate()?,
        )
        .trust(pins.clone());
        config.bind = "127.0.0.1:0".parse()?;
        config.keep_alive = Duration::from_secs(5);
        config.idle_timeout = Duration::from_secs(30);
        config.connect_timeout = Duration::from_secs(60);
        tasks.push(tokio::spawn(async move {
            // a login that fails on the loaded machine is tried again (and counted), twice
            let mut failures = Vec::new();
            let session = loop {
                match Peer::connect(config.clone()).await {
                    Ok(session) => break Ok(session),
                    Err(e) if failures.len() < 2 => {
                        failures.push(e.to_string());
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => break Err(e),
                }
            };
            drop(permit);
            session.map(|s| (s, failures))
        }));
    }
    let mut sessions = Vec::with_capacity(count);
    let mut retried = Vec::new();
    for t in tasks {
        let (session, failures) = t.await??;
        sessions.push(session);
        retried.extend(failures);
    }
    if let Some(first) = retried.first() {
        println!(
            "  ({} logins failed and were tried again; first error: {first})",
            retried.len()
        );
    }
    Ok(sessions)
}

/// Before a phase measures the steady state: every peer sends one message to its partner
/// (unmeasured: the gateways read each recipient's route and open their delivery streams on
/// first use), then everything waits [`SETTLE`] — each session also takes a burst of clock
/// samples right after login (5 over 250 ms: 20,000 requests/s for 1,000 sessions).
async fn warm_up(peers: &[Session]) {
    let half = peers.len() / 2;
    let sends = (0..half * 2).map(|i| {
        let from = peers[i].clone();
        let to = peers[(i + half) % (half * 2)].peer_id().clone();
        async move {
            let mut body = vec![0u8; 16];
            body[..8].copy_from_slice(&WARM_UP_MARK.to_be_bytes());
            from.send_message(&to, body).await.is_ok()
        }
    });
    let failed = futures::future::join_all(sends)
        .await
        .into_iter()
        .filter(|ok| !ok)
        .count();
    if failed > 0 {
        println!("  ({failed} warm-up messages failed)");
    }
    tokio::time::sleep(SETTLE).await;
}

/// The cumulative bucket counts `(upper bound in seconds, count)` of a histogram, summed over
/// the message gateways' `/metrics` (empty when a scrape fails).
async fn buckets(net: &Network, name: &str) -> Vec<(f64, f64)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut sum: Vec<(f64, f64)> = Vec::new();
    for ops in &net.gateway_ops[..2] {
        let Ok(mut s) = tokio::net::TcpStream::connect(ops).await else {
            return Vec::new();
        };
        let mut body = String::new();
        let request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        if s.write_all(request.as_bytes()).await.is_err()
            || s.read_to_string(&mut body).await.is_err()
        {
            return Vec::new();
        }
        let prefix = format!("{name}_bucket{{le=\"");
        for line in body.lines() {
            let Some((le, count)) = line
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_once("\"} "))
            else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            let count: f64 = count.trim().parse().unwrap_or(0.0);
            match sum.iter_mut().find(|(b, _)| *b == le) {
                Some(slot) => slot.1 += count,
                None => sum.push((le, count)),
            }
        }
    }
    sum.sort_by(|a, b| a.0.total_cmp(&b.0));
    sum
}

/// The smallest bucket bound (in ms) below which a fraction `p` of the observations between two
/// scrapes fell.
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], p: f64) -> Option<f64> {
    let count = |v: &[(f64, f64)], le: f64| v.iter().find(|(b, _)| *b == le).map_or(0.0, |x| x.1);
    let total = after.last().map(|(le, n)| n - count(before, *le))?;
    if total <= 0.0 {
        return None;
    }
    after
        .iter()
        .find(|(le, n)| n - count(before, *le) >= p * total)
        .map(|(le, _)| le * 1000.0)
}

/// Prints the delivered latency of the messages sent in each 100 ms of a phase (`--trace`): a
/// tail made of a few slow stretches looks different from one spread evenly.
fn print_trace(delivered: &[(u64, u64)]) {
    let mut slots: std::collections::BTreeMap<u64, Vec<u64>> = std::collections::BTreeMap::new();
    for (sent, lat) in delivered {
        slots.entry(sent / 100_000).or_default().push(*lat);
    }
    println!("  delivered, by 100 ms of send time: [start s] n p50/p99/max ms");
    for (slot, mut lats) in slots {
        lats.sort_unstable();
        println!(
            "    [{:>5.1}] {:>5} {:>7.2} {:>7.2} {:>7.2}",
            slot as f64 / 10.0,
            lats.len(),
            percentile(&lats, 0.5),
            percentile(&lats, 0.99),
            lats.last().copied().unwrap_or(0) as f64 / 1000.0
        );
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn report(name: &str, mut micros: Vec<u64>) {
    micros.sort_unstable();
    println!(
        "  {name:<22} n={:<8} p50 {:>7.3} ms   p99 {:>7.3} ms   max {:>8.3} ms",
        micros.len(),
        percentile(&micros, 0.50),
        percentile(&micros, 0.99),
        micros.last().copied().unwrap_or(0) as f64 / 1000.0
    );
}

/// Runs one message phase; `pace` = Some(interval per peer) for a fixed rate, None for as fast as
/// possible with `--window` in flight.
async fn phase(
    net: &Network,
    peers: &[Session],
    args: &Args,
    pace: Option<Duration>,
) -> anyhow::Result<()> {
    let (payload, window, trace) = (args.payload, args.window, args.trace);
    let duration = Duration::from_secs(args.duration);
    let cpu_before = net.cpu();
    let accept_before = buckets(net, ACCEPT_HISTOGRAM).await;
    let epoch = Instant::now();
    let half = peers.len() / 2;
    // (send time, one-way latency) in µs since `epoch`
    let delivered = Arc::new(tokio::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let received = Arc::new(AtomicU64::new(0));
    let (stop_readers, stop_rx) = tokio::sync::watch::channel(false);
    let mut readers = Vec::new();
    for p in peers {
        let Some(mut inbox) = p.messages() else {
            continue;
        };
        let delivered = Arc::clone(&delivered);
        let received = Arc::clone(&received);
        let mut stop = stop_rx.clone();
        readers.push(tokio::spawn(async move {
            let mut local = Vec::new();
            let mut record = |m: quickp2p::session::IncomingMessage| {
                let mut ts = [0u8; 8];
                ts.copy_from_slice(&m.payload[..8]);
                let sent = u64::from_be_bytes(ts);
                if sent == WARM_UP_MARK {
                    return;
                }
                local.push((
                    sent,
                    (epoch.elapsed().as_micros() as u64).saturating_sub(sent),
                ));
                received.fetch_add(1, Ordering::Relaxed);
            };
            loop {
                tokio::select! {
                    m = inbox.recv() => match m { Some(m) => record(m), None => break },
                    _ = stop.changed() => break,
                }
            }
            while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), inbox.recv()).await
            {
                record(m);
            }
            delivered.lock().await.extend(local);
        }));
    }
    let accepted = Arc::new(tokio::sync::Mutex::new(Vec::<u64>::new()));
    // how late each open-loop send started against its schedule (µs)
    let late = Arc::new(tokio::sync::Mutex::new(Vec::<u64>::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let stop_at = epoch + duration;
    let mut senders = Vec::new();
    for i in 0..half * 2 {
        let from = peers[i].clone();
        let to = peers[(i + half) % (half * 2)].peer_id().clone();
        let lanes = if pace.is_some() { 1 } else { window };
        for lane in 0..lanes {
            let from = from.clone();
            let to = to.clone();
            let accepted = Arc::clone(&accepted);
            let errors = Arc::clone(&errors);
            let late = Arc::clone(&late);
            senders.push(tokio::spawn(async move {
                use futures::StreamExt as _;
                let mut local = Vec::new();
                let record = |r: Option<u64>, local: &mut Vec<u64>| match r {
                    Some(lat) => local.push(lat),
                    None => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                };
                let send = |from: Session, to: quickp2p::session::PeerId| async move {
                    let t = epoch.elapsed().as_micros() as u64;
                    let mut body = vec![0u8; payload];
                    body[..8].copy_from_slice(&t.to_be_bytes());
                    from.send_message(&to, body)
                        .await
                        .ok()
                        .map(|_| (epoch.elapsed().as_micros() as u64).saturating_sub(t))
                };
                match pace {
                    // open loop: a send starts every interval, whatever the answers do; the
                    // sends in flight are polled here (no task per message: the load generator
                    // shares the cores with what it measures)
                    Some(p) => {
                        // spread the peers over the interval
                        let start = tokio::time::Instant::now()
                            + p.mul_f64((i * lanes + lane) as f64 / (half * 2) as f64);
                        let mut ticks = tokio::time::interval_at(start, p);
                        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                        let mut inflight = futures::stream::FuturesUnordered::new();
                        let mut late_local = Vec::new();
                        while Instant::now() < stop_at {
                            tokio::select! {
                                scheduled = ticks.tick() => {
                                    if Instant::now() < stop_at {
                                        late_local.push(scheduled.elapsed().as_micros() as u64);
                                        inflight.push(send(from.clone(), to.clone()));
                                    }
                                }
                                Some(r) = inflight.next(), if !inflight.is_empty() => {
                                    record(r, &mut local);
                                }
                            }
                        }
                        while let Some(r) = inflight.next().await {
                            record(r, &mut local);
                        }
                        late.lock().await.extend(late_local);
                    }
                    // closed loop: the next send starts when the previous is answered
                    None => {
                        while Instant::now() < stop_at {
                            let r = send(from.clone(), to.clone()).await;
                            record(r, &mut local);
                        }
                    }
                }
                accepted.lock().await.extend(local);
            }));
        }
    }
    for s in senders {
        s.await?;
    }
    let elapsed = epoch.elapsed().min(duration + Duration::from_secs(1));
    let _ = stop_readers.send(true);
    for r in readers {
        let _ = r.await;
    }
    let accepted = std::mem::take(&mut *accepted.lock().await);
    let delivered = std::mem::take(&mut *delivered.lock().await);
    println!(
        "  accepted {:.0} msg/s ({} sent in {:.1} s, answered within {:.1} s), delivered {}, errors {}",
        accepted.len() as f64 / duration.as_secs_f64(),
        accepted.len(),
        duration.as_secs_f64(),
        elapsed.as_secs_f64(),
        received.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    cpu_before.report(net.cpu(), epoch.elapsed(), accepted.len());
    let late = std::mem::take(&mut *late.lock().await);
    if !late.is_empty() {
        report("send started late by", late);
    }
    report("send -> accepted", accepted);
    if trace {
        print_trace(&delivered);
    }
    report(
        "send -> delivered",
        delivered.into_iter().map(|(_, lat)| lat).collect(),
    );
    let accept_after = buckets(net, ACCEPT_HISTOGRAM).await;
    let bound = |p| {
        bucket_quantile(&accept_before, &accept_after, p)
            .map_or_else(|| "?".to_owned(), |ms| format!("≤ {ms} ms"))
    };
    println!(
        "  in the gateways         (sender's gateway, take-up -> accepted; {ACCEPT_HISTOGRAM}) p50 {}   p99 {}",
        bound(0.5),
        bound(0.99)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    anyhow::ensure!(args.payload >= 16, "--payload must be at least 16");
    // two descriptors per session: its socket and the duplicate its SharedSocket keeps
    raise_open_files((args.idle as u64 + args.peers as u64) * 2 + 1024);
    let net = start(&args)?;
    println!(
        "bench_sessions: {} peers over 2 gateways, payload {} B, {} s per phase",
        args.peers, args.payload, args.duration
    );

    let half = args.peers / 2;
    for rate in &args.rates {
        let t = Instant::now();
        let mut peers = connect(&net, 0, half, 64).await?;
        peers.extend(connect(&net, 1, half, 64).await?);
        println!(
            "latency at {rate} msg/s offered (open loop; every message crosses gateways; {} sessions logged in in {:.2} s):",
            peers.len(),
            t.elapsed().as_secs_f64()
        );
        warm_up(&peers).await;
        let per_peer = Duration::from_secs_f64(peers.len() as f64 / *rate as f64);
        phase(&net, &peers, &args, Some(per_peer)).await?;
        for p in &peers {
            p.close().await;
        }
    }

    if args.window > 0 {
        let mut peers = connect(&net, 0, half, 64).await?;
        peers.extend(connect(&net, 1, half, 64).await?);
        warm_up(&peers).await;
        println!("throughput, {} in flight per peer:", args.window);
        phase(&net, &peers, &args, None).await?;
        for p in &peers {
            p.close().await;
        }
    }

    if args.idle > 0 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let gw = &net.gateways[2].0;
        let before = status_kib(gw.0.id(), "VmRSS:");
        let t = Instant::now();
        let idle = connect(&net, 2, args.idle, 64).await?;
        let connect_time = t.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = status_kib(gw.0.id(), "VmRSS:");
        println!(
            "memory: {} idle sessions on a fresh gateway (logged in in {:.1} s): RSS {} -> {} KiB, {:.1} KiB per session",
            idle.len(),
            connect_time.as_secs_f64(),
            before,
            after,
            (after.saturating_sub(before)) as f64 / idle.len() as f64
        );
        if args.hold_idle > 0 {
            println!(
                "holding the idle sessions for {} s (gateway 3 is pid {})",
                args.hold_idle,
                gw.0.id()
            );
            tokio::time::sleep(Duration::from_secs(args.hold_idle)).await;
        }
    }
    Ok(())
}
