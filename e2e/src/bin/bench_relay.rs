//! `bench_relay`: relayed packets per second and Mbit/s through one `quickp2p-relay` process
//! against coturn (`turnserver`) on this machine, in the same run, with the same load generator,
//! at 100- and 1200-byte payloads; and resident memory per allocation.
//!
//! Both servers run on loopback with equivalent configurations: TURN REST API credentials from a
//! shared secret (`--use-auth-secret --static-auth-secret` for coturn), loopback peers allowed,
//! UDP only, a relay port range of their own, no quotas in the way. The load generator is ours:
//! for each allocation a client socket allocates with the SDK's sans-IO `TurnClient` (401 →
//! credentials), binds a channel to an echo peer on loopback, then a thread keeps `--window`
//! ChannelData messages in flight — client → relay → echo peer → relay → client — and counts the
//! echoes that come back. Every echo crossed the relay twice, so relayed packets/s = 2 × echoes/s.
//! Rounds alternate (ours, coturn, ours, …) per payload size; the program prints every round
//! (with the server's CPU time per relayed packet, from /proc/PID/stat — a figure less sensitive
//! to other load on the machine than the rate), the medians, the ratios, and — after the rounds — each server's RSS growth over
//! `--rss-allocations` allocations (each with a channel), per allocation (VmRSS from
//! /proc/PID/status). Only loopback addresses are used. It asserts nothing.
//!
//! ```text
//! cargo build --release -p quickp2p-relay -p quickp2p-e2e --bin bench_relay --bin quickp2p-relay
//! target/release/bench_relay --rounds 3 --duration 5
//! ```
//!
//! Our relay needs Redis for its registry: `--redis URL`, or a private `redis-server` is started.
//! coturn is skipped with a message when `turnserver` is not installed (`apt-get install coturn`).

use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Parser;
use quickp2p::relay::{TurnClient, TurnClientConfig, TurnEvent};
use quickp2p_e2e::bench::{self, median, split_args};

const SECRET: &str = "bench-relay-shared-secret";

/// Relayed packets/s and Mbit/s: quickp2p-relay vs coturn, alternating rounds.
#[derive(Debug, Parser)]
#[command(name = "bench_relay")]
struct Args {
    /// Path of the quickp2p-relay binary.
    #[arg(long, default_value = "target/release/quickp2p-relay")]
    ours: PathBuf,
    /// Path (or name on PATH) of coturn's turnserver.
    #[arg(long, default_value = "turnserver")]
    coturn: PathBuf,
    /// Redis URL for our relay's registry; unset: start a private redis-server.
    #[arg(long)]
    redis: Option<String>,
    /// Rounds per server and payload size.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per round.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Allocations (client sockets and threads) per round.
    #[arg(long, default_value_t = 8)]
    allocations: usize,
    /// Messages each allocation keeps in flight.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Payload sizes, comma-separated.
    #[arg(long, default_value = "100,1200")]
    payloads: String,
    /// Allocations made to measure memory per allocation.
    #[arg(long, default_value_t = 1000)]
    rss_allocations: usize,
    /// Extra arguments for quickp2p-relay, e.g. "--workers 2".
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    ours_args: String,
    /// Extra arguments for turnserver, e.g. "--relay-threads 1".
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    coturn_args: String,
}

/// A process killed on drop.
struct Process {
    name: &'static str,
    child: Child,
    turn: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// CPU time used so far (user + system), in seconds.
    fn cpu_seconds(&self) -> f64 {
        bench::cpu_seconds(self.child.id(), bench::clock_ticks())
    }

    /// VmRSS in KiB.
    fn rss_kib(&self) -> u64 {
        bench::status_kib(self.child.id(), "VmRSS:")
    }
}

fn free_udp_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let port = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        // outside both relay port ranges (40000-49999)
        let in_ranges = (39_999..=50_000).contains(&port);
        if port < 65_000
            && !in_ranges
            && std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok()
        {
            return Ok(port);
        }
    }
    bail!("no free port")
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn start_redis() -> anyhow::Result<(Process, String)> {
    let port = free_udp_port()?;
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
        .context("start redis-server (or pass --redis URL)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("redis://127.0.0.1:{port}");
    Ok((
        Process {
            name: "redis-server",
            child,
            turn: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        },
        url,
    ))
}

fn start_ours(args: &Args, redis: &str) -> anyhow::Result<Process> {
    let port = free_udp_port()?;
    let mut child = Command::new(&args.ours)
        .args(["--listen-addr", &format!("127.0.0.1:{port}")])
        .args(["--control-addr", &format!("127.0.0.1:{}", port + 1)])
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--redis",
            redis,
            "--redis-key-prefix",
            "qp-bench",
        ])
        .args([
            "--shared-secret",
            SECRET,
            "--replica-id",
            "bench",
            "--log",
            "warn",
        ])
        .args(["--port-range", "40000-44999", "--allow-loopback-peers"])
        .args(["--user-quota", "1000000", "--capacity", "1000000"])
        .args(split_args(&args.ours_args))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", args.ours.display()))?;
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
    }
    Ok(Process {
        name: "quickp2p-relay",
        child,
        turn: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
    })
}

fn start_coturn(args: &Args) -> anyhow::Result<Option<Process>> {
    let port = free_udp_port()?;
    let pidfile = std::env::temp_dir().join(format!("bench_relay_turnserver_{port}.pid"));
    let spawned = Command::new(&args.coturn)
        .args([
            "-n",
            "--no-cli",
            "--no-tcp",
            "--no-tls",
            "--no-dtls",
            "--no-tcp-relay",
        ])
        .args([
            "--use-auth-secret",
            &format!("--static-auth-secret={SECRET}"),
            "--realm=quickp2p",
        ])
        .args([
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            &port.to_string(),
        ])
        .args([
            "--relay-ip",
            "127.0.0.1",
            "--min-port",
            "45000",
            "--max-port",
            "49999",
        ])
        .args([
            "--allow-loopback-peers",
            "--log-file",
            "/dev/null",
            "--no-stdout-log",
            "--simple-log",
        ])
        .arg("--pidfile")
        .arg(&pidfile)
        .args(split_args(&args.coturn_args))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => Ok(Some(Process {
            name: "coturn",
            child,
            turn: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
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

/// Waits until a Binding request to the TURN port is answered.
fn wait_answering(server: &mut Process) -> anyhow::Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut request = [0u8; 20];
    request[1] = 1;
    request[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Some(status) = server.child.try_wait()? {
            bail!("{} exited early: {status}", server.name);
        }
        socket.send_to(&request, server.turn)?;
        if socket.recv_from(&mut buf).is_ok() {
            return Ok(());
        }
    }
    bail!("{} does not answer on {}", server.name, server.turn)
}

/// Runs the sans-IO client on a blocking socket until `done` says so.
fn drive(
    client: &mut TurnClient,
    socket: &UdpSocket,
    mut done: impl FnMut(&TurnEvent) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        while let Some(t) = client.poll_transmit(now) {
            socket.send_to(&t.payload, t.destination)?;
        }
        while let Some(event) = client.poll_event() {
            match event {
                TurnEvent::AllocationFailed(e) | TurnEvent::RequestFailed { error: e, .. } => {
                    bail!("{e}")
                }
                event if done(&event) => return Ok(()),
                _ => {}
            }
        }
        if now > deadline {
            bail!("no answer from the TURN server");
        }
        let wait = client
            .poll_timeout()
            .map_or(Duration::from_millis(50), |t| {
                t.saturating_duration_since(now)
            })
            .clamp(Duration::from_millis(1), Duration::from_millis(50));
        socket.set_read_timeout(Some(wait))?;
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            client.handle_datagram(from, &buf[..n], Instant::now());
        }
        client.handle_timeout(Instant::now());
    }
}

/// An allocation with a channel to `peer`.
struct Allocation {
    socket: UdpSocket,
    client: TurnClient,
    channel: u16,
}

fn allocate(server: SocketAddr, peer: SocketAddr, user: &str) -> anyhow::Result<Allocation> {
    let credentials = quickp2p_relay::mint_credentials(
        SECRET.as_bytes(),
        user,
        Duration::from_secs(3600),
        now_unix(),
    )?;
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(socket.local_addr()?.port());
    let mut client = TurnClient::new(
        server,
        credentials.username,
        credentials.password,
        TurnClientConfig::default(),
        seed,
    );
    client.allocate(Instant::now());
    drive(&mut client, &socket, |e| {
        matches!(e, TurnEvent::Allocated { .. })
    })?;
    let (_, channel) = client.bind_channel(peer, Instant::now())?;
    drive(&mut client, &socket, |e| {
        matches!(e, TurnEvent::ChannelBound { .. })
    })?;
    Ok(Allocation {
        socket,
        client,
        channel,
    })
}

fn release(mut allocations: Vec<Allocation>) {
    for a in &mut allocations {
        a.client.release(Instant::now());
        let now = Instant::now();
        while let Some(t) = a.client.poll_transmit(now) {
            let _ = a.socket.send_to(&t.payload, t.destination);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
}

/// An echo peer on loopback: two threads sending every datagram back to its source.
fn start_echo() -> anyhow::Result<SocketAddr> {
    let socket = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?);
    let addr = socket.local_addr()?;
    for _ in 0..2 {
        let socket = Arc::clone(&socket);
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        });
    }
    Ok(addr)
}

/// One round: relayed packets per second through `server` at `payload` bytes.
/// One round's figures.
struct RoundResult {
    /// Relayed packets per second.
    rate: f64,
    /// Server CPU microseconds per relayed packet.
    cpu_us: f64,
}

fn round(
    process: &Process,
    echo: SocketAddr,
    payload: usize,
    args: &Args,
    round: usize,
) -> anyhow::Result<RoundResult> {
    let server = process.turn;
    let allocations: Vec<Allocation> = (0..args.allocations)
        .map(|i| allocate(server, echo, &format!("load-{round}-{i}")))
        .collect::<anyhow::Result<_>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let echoes = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for a in &allocations {
        let socket = a.socket.try_clone()?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let mut frame = Vec::with_capacity(4 + payload);
        frame.extend_from_slice(&a.channel.to_be_bytes());
        frame.extend_from_slice(&u16::try_from(payload)?.to_be_bytes());
        frame.resize(4 + payload, 0xAB);
        let (stop, measuring, echoes) = (stop.clone(), measuring.clone(), echoes.clone());
        let window = args.window;
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            for _ in 0..window {
                let _ = socket.send_to(&frame, server);
            }
            let mut local = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match socket.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        if n == frame.len()
                            && buf[0] & 0xC0 == 0x40
                            && measuring.load(Ordering::Relaxed)
                        {
                            local += 1;
                        }
                        let _ = socket.send_to(&frame, server);
                    }
                    Err(_) => {
                        for _ in 0..window {
                            let _ = socket.send_to(&frame, server);
                        }
                    }
                }
                if local >= 1024 {
                    echoes.fetch_add(local, Ordering::Relaxed);
                    local = 0;
                }
            }
            echoes.fetch_add(local, Ordering::Relaxed);
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let cpu_start = process.cpu_seconds();
    std::thread::sleep(Duration::from_secs(args.duration));
    measuring.store(false, Ordering::Relaxed);
    let cpu = process.cpu_seconds() - cpu_start;
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    release(allocations);
    let packets = 2.0 * echoes.load(Ordering::Relaxed) as f64;
    Ok(RoundResult {
        rate: packets / elapsed.as_secs_f64(),
        cpu_us: if packets > 0.0 {
            cpu * 1e6 / packets
        } else {
            0.0
        },
    })
}

/// RSS growth per allocation (KiB): makes `n` allocations with a channel each.
fn rss_per_allocation(server: &Process, echo: SocketAddr, n: usize) -> anyhow::Result<f64> {
    std::thread::sleep(Duration::from_millis(300));
    let before = server.rss_kib();
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        held.push(allocate(server.turn, echo, &format!("rss-{i}"))?);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = server.rss_kib();
    release(held);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let payloads: Vec<usize> = args
        .payloads
        .split(',')
        .map(|p| p.trim().parse())
        .collect::<Result<_, _>>()
        .context("--payloads")?;
    let (_redis, redis_url) = match &args.redis {
        Some(url) => (None, url.clone()),
        None => {
            let (p, url) = start_redis()?;
            (Some(p), url)
        }
    };
    let echo = start_echo()?;
    let mut ours = start_ours(&args, &redis_url)?;
    wait_answering(&mut ours)?;
    let mut coturn = start_coturn(&args)?;
    if let Some(c) = coturn.as_mut() {
        wait_answering(c)?;
    }
    println!(
        "bench_relay: {} rounds of {} s per server and payload, {} allocations x {} in flight (ChannelData, echo peer), loopback, {} CPUs",
        args.rounds,
        args.duration,
        args.allocations,
        args.window,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for &payload in &payloads {
        let mut ours_rates = Vec::new();
        let mut coturn_rates = Vec::new();
        let mut ours_cpu = Vec::new();
        let mut coturn_cpu = Vec::new();
        let mbit = |rate: f64| rate * payload as f64 * 8.0 / 1e6;
        for r in 1..=args.rounds {
            let got = round(&ours, echo, payload, &args, r)?;
            println!(
                "round {r}  {payload:>5} B  quickp2p-relay  {:>10.0} pkt/s  {:>8.1} Mbit/s  {:>5.2} us CPU/pkt",
                got.rate,
                mbit(got.rate),
                got.cpu_us
            );
            ours_rates.push(got.rate);
            ours_cpu.push(got.cpu_us);
            if let Some(c) = &coturn {
                let got = round(c, echo, payload, &args, r)?;
                println!(
                    "round {r}  {payload:>5} B  coturn          {:>10.0} pkt/s  {:>8.1} Mbit/s  {:>5.2} us CPU/pkt",
                    got.rate,
                    mbit(got.rate),
                    got.cpu_us
                );
                coturn_rates.push(got.rate);
                coturn_cpu.push(got.cpu_us);
            }
        }
        let ours_median = median(&mut ours_rates);
        let ours_cpu_median = median(&mut ours_cpu);
        println!(
            "median    {payload:>5} B  quickp2p-relay  {ours_median:>10.0} pkt/s  {:>8.1} Mbit/s  {ours_cpu_median:>5.2} us CPU/pkt",
            mbit(ours_median)
        );
        if coturn.is_some() {
            let coturn_median = median(&mut coturn_rates);
            let coturn_cpu_median = median(&mut coturn_cpu);
            println!(
                "median    {payload:>5} B  coturn          {coturn_median:>10.0} pkt/s  {:>8.1} Mbit/s  {coturn_cpu_median:>5.2} us CPU/pkt",
                mbit(coturn_median)
            );
            if coturn_median > 0.0 && ours_cpu_median > 0.0 {
                println!(
                    "ratio     {payload:>5} B  quickp2p-relay / coturn = {:.2} (packets/s), {:.2} (packets per CPU second)",
                    ours_median / coturn_median,
                    coturn_cpu_median / ours_cpu_median
                );
            }
        }
    }
    if args.rss_allocations > 0 {
        let per = rss_per_allocation(&ours, echo, args.rss_allocations)?;
        println!(
            "memory    quickp2p-relay  {per:.1} KiB RSS per allocation ({} allocations, RSS now {} KiB)",
            args.rss_allocations,
            ours.rss_kib()
        );
        if let Some(c) = &coturn {
            let per = rss_per_allocation(c, echo, args.rss_allocations)?;
            println!(
                "memory    coturn          {per:.1} KiB RSS per allocation ({} allocations, RSS now {} KiB)",
                args.rss_allocations,
                c.rss_kib()
            );
        }
    }
    Ok(())
}
