//! `bench_stun`: Binding responses per second from one `quickp2p-stun` process against coturn
//! run as a STUN-only server, on this machine, in the same run, with the same load generator.
//!
//! It starts both servers itself on loopback ports, then runs alternating rounds (ours, coturn,
//! ours, coturn, …) of a fixed duration. In each round several client threads, each with its own
//! UDP socket on its own loopback source address (127.0.0.10, .11, …), keep a window of Binding
//! requests in flight and count the valid Binding success responses that come back. It prints the
//! rate of every round, the server's CPU use in that round (from /proc/PID/stat) and so its
//! responses per CPU-second — the figure that stays meaningful when other work shares the
//! machine — the median of each server, the ratios, each response's size, and each server's
//! resident memory (VmRSS and peak VmHWM from /proc). Only loopback addresses are used.
//!
//! ```text
//! cargo build --release -p quickp2p-stun -p quickp2p-e2e --bin bench_stun --bin quickp2p-stun
//! target/release/bench_stun --rounds 3 --duration 5
//! ```
//!
//! coturn is skipped with a message when `turnserver` is not installed (`apt-get install coturn`).
//! This is a benchmark program: it prints figures and asserts nothing.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use quickp2p_e2e::bench::{self, clock_ticks, cpu_seconds, median, split_args};

/// Binding responses per second: quickp2p-stun vs coturn (STUN-only), alternating rounds.
#[derive(Debug, Parser)]
#[command(name = "bench_stun")]
struct Args {
    /// Path of the quickp2p-stun binary.
    #[arg(long, default_value = "target/release/quickp2p-stun")]
    ours: PathBuf,
    /// Path (or name on PATH) of coturn's turnserver.
    #[arg(long, default_value = "turnserver")]
    coturn: PathBuf,
    /// Rounds per server.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per round.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Client threads, each with its own socket and source address. Default: half the CPUs (at
    /// least 1), so that the load generator leaves the server CPU to work with.
    #[arg(long)]
    senders: Option<usize>,
    /// Requests each sender keeps in flight.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Extra arguments for quickp2p-stun, e.g. "--workers 2".
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    ours_args: String,
    /// Extra arguments for turnserver, e.g. "--relay-threads 1".
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    coturn_args: String,
}

/// A server process, killed on drop.
struct Server {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// (VmRSS, VmHWM) in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let pid = self.child.id();
        (
            bench::status_kib(pid, "VmRSS:"),
            bench::status_kib(pid, "VmHWM:"),
        )
    }
}

/// One round's figures.
#[derive(Debug, Clone, Copy)]
struct RoundResult {
    /// Responses per second.
    rate: f64,
    /// Server CPU use, in cores (1.0 = one core busy all the time).
    cores: f64,
}

impl RoundResult {
    /// Responses per CPU-second of the server.
    fn per_cpu_second(&self) -> f64 {
        if self.cores > 0.0 {
            self.rate / self.cores
        } else {
            0.0
        }
    }
}

/// A UDP port free on 127.0.0.1 (and the next one, for an alternate port), released for use.
fn free_port_pair() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let port = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if port < 65_000
            && UdpSocket::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok()
            && std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port + 2)).is_ok()
        {
            return Ok(port);
        }
    }
    bail!("no free port pair found")
}

fn binding_request(id: u64) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    m[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    m[8..16].copy_from_slice(&id.to_be_bytes());
    m
}

fn is_binding_success(bytes: &[u8]) -> bool {
    bytes.len() >= 20 && bytes[0..2] == [0x01, 0x01] && bytes[4..8] == 0x2112_A442u32.to_be_bytes()
}

/// Sends one request and waits for its answer: the response size, or `None`.
fn probe(addr: SocketAddr) -> Option<usize> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .ok()?;
    let mut buf = [0u8; 2048];
    socket.send_to(&binding_request(1), addr).ok()?;
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    is_binding_success(&buf[..n]).then_some(n)
}

fn wait_answering(server: &mut Server) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(status) = server.child.try_wait()? {
            bail!("{} exited early: {status}", server.name);
        }
        if let Some(size) = probe(server.addr) {
            return Ok(size);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{} does not answer on {}", server.name, server.addr)
}

fn start_ours(args: &Args) -> anyhow::Result<Server> {
    let port = free_port_pair()?;
    let mut child = Command::new(&args.ours)
        .args(["--member", "a", "--bind-ip", "127.0.0.1"])
        .args(["--primary-port", &port.to_string()])
        .args(["--alternate-port", &(port + 1).to_string()])
        .args(["--control-addr", &format!("127.0.0.1:{}", port + 2)])
        // A partner address (never contacted: plain Bindings only) so that responses carry
        // OTHER-ADDRESS like coturn's, not the smaller lone-server response.
        .args(["--partner-addr", &format!("127.0.0.2:{port}")])
        .args(["--partner-control-url", "http://127.0.0.2:9"])
        .args(["--http-addr", "127.0.0.1:0"])
        // The limiter stays on (its cost is measured) but far above the load.
        .args(["--rate-limit", "100000000", "--rate-burst", "100000000"])
        .args(["--log", "warn", "--replica-id", "bench"])
        .args(split_args(&args.ours_args))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", args.ours.display()))?;
    if let Some(stdout) = child.stdout.take() {
        // drain the banner so the process never blocks on a full pipe
        std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
    }
    Ok(Server {
        name: "quickp2p-stun",
        child,
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
    })
}

fn start_coturn(args: &Args) -> anyhow::Result<Option<Server>> {
    let port = free_port_pair()?;
    let pidfile = std::env::temp_dir().join(format!("bench_stun_turnserver_{port}.pid"));
    let spawned = Command::new(&args.coturn)
        .args([
            "-n",
            "--stun-only",
            "--no-cli",
            "--no-tcp",
            "--no-tls",
            "--no-dtls",
        ])
        .args(["--listening-ip", "127.0.0.1"])
        .args(["--listening-port", &port.to_string()])
        .args(["--alt-listening-port", &(port + 1).to_string()])
        .args(["--log-file", "/dev/null", "--no-stdout-log", "--simple-log"])
        .arg("--pidfile")
        .arg(&pidfile)
        .args(split_args(&args.coturn_args))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => Ok(Some(Server {
            name: "coturn",
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "coturn skipped: {} is not installed (apt-get install coturn)",
                args.coturn.display()
            );
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("cannot start {}", args.coturn.display())),
    }
}

/// One round: responses per second received from `server`, and the server's CPU use.
fn round(server: &Server, args: &Args, ticks: f64) -> anyhow::Result<RoundResult> {
    let target = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 0..args.senders.unwrap_or(1) {
        let source = Ipv4Addr::new(127, 0, 0, 10 + (i % 200) as u8);
        let socket = UdpSocket::bind((source, 0))
            .with_context(|| format!("cannot bind a client socket on {source}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let (stop, received, measuring) = (stop.clone(), received.clone(), measuring.clone());
        let window = args.window;
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut id = (i as u64) << 48;
            let send = |id: &mut u64| {
                *id += 1;
                let _ = socket.send_to(&binding_request(*id), target);
            };
            for _ in 0..window {
                send(&mut id);
            }
            let mut local = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match socket.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        if is_binding_success(&buf[..n]) && measuring.load(Ordering::Relaxed) {
                            local += 1;
                        }
                        send(&mut id);
                    }
                    // lost datagrams: fill the window again
                    Err(_) => {
                        for _ in 0..window {
                            send(&mut id);
                        }
                    }
                }
                if local >= 1024 {
                    received.fetch_add(local, Ordering::Relaxed);
                    local = 0;
                }
            }
            received.fetch_add(local, Ordering::Relaxed);
        }));
    }
    // warm-up, then measure
    std::thread::sleep(Duration::from_millis(500));
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let cpu_before = cpu_seconds(server.child.id(), ticks);
    std::thread::sleep(Duration::from_secs(args.duration));
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let cpu = cpu_seconds(server.child.id(), ticks) - cpu_before;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let seconds = elapsed.as_secs_f64();
    Ok(RoundResult {
        rate: received.load(Ordering::Relaxed) as f64 / seconds,
        cores: cpu / seconds,
    })
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let senders = *args.senders.get_or_insert((cpus / 2).max(1));
    let mut ours = start_ours(&args)?;
    let ours_size = wait_answering(&mut ours)?;
    let mut coturn = start_coturn(&args)?;
    let coturn_size = match coturn.as_mut() {
        Some(server) => Some(wait_answering(server)?),
        None => None,
    };
    println!(
        "bench_stun: {} rounds of {} s per server, {} senders x {} in flight, loopback, {} CPUs",
        args.rounds, args.duration, senders, args.window, cpus
    );
    println!(
        "response sizes: quickp2p-stun {ours_size} B{}",
        coturn_size.map_or(String::new(), |s| format!(", coturn {s} B"))
    );

    let ticks = clock_ticks();
    let mut ours_rounds = Vec::new();
    let mut coturn_rounds = Vec::new();
    let report = |r: usize, name: &str, x: &RoundResult| {
        println!(
            "round {r}  {name:<14} {:>10.0} responses/s   server CPU {:>4.0}%   {:>10.0} responses per CPU-second",
            x.rate,
            x.cores * 100.0,
            x.per_cpu_second()
        );
    };
    for r in 1..=args.rounds {
        let x = round(&ours, &args, ticks)?;
        report(r, "quickp2p-stun", &x);
        ours_rounds.push(x);
        if let Some(server) = &coturn {
            let x = round(server, &args, ticks)?;
            report(r, "coturn", &x);
            coturn_rounds.push(x);
        }
    }
    let summary = |rounds: &[RoundResult]| {
        let mut rates: Vec<f64> = rounds.iter().map(|x| x.rate).collect();
        let mut efficiency: Vec<f64> = rounds.iter().map(RoundResult::per_cpu_second).collect();
        (median(&mut rates), median(&mut efficiency))
    };
    let (ours_rate, ours_eff) = summary(&ours_rounds);
    let (rss, hwm) = ours.memory_kib();
    println!(
        "median   quickp2p-stun  {ours_rate:>10.0} responses/s   {ours_eff:>10.0} per CPU-second   RSS {rss} KiB (peak {hwm} KiB)"
    );
    if let Some(server) = &coturn {
        let (coturn_rate, coturn_eff) = summary(&coturn_rounds);
        let (rss, hwm) = server.memory_kib();
        println!(
            "median   coturn         {coturn_rate:>10.0} responses/s   {coturn_eff:>10.0} per CPU-second   RSS {rss} KiB (peak {hwm} KiB)"
        );
        if coturn_rate > 0.0 && coturn_eff > 0.0 {
            println!(
                "ratio    quickp2p-stun / coturn = {:.2} (responses/s), {:.2} (responses per CPU-second)",
                ours_rate / coturn_rate,
                ours_eff / coturn_eff
            );
        }
    }
    Ok(())
}
