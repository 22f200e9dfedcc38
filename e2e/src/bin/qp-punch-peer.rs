//! `qp-punch-peer`: runs the SDK's hole-punching engine (`quickp2p::punch`) inside a NAT-lab
//! namespace, for `e2e/tests/punch.rs`. No supernode: the test builds the instruction (candidates,
//! key, schedule) and passes it on the command line.
//!
//! ```text
//! qp-punch-peer punch --bind 0.0.0.0:5000 --role initiator --handshake-id HEX --key HEX \
//!     --candidate reflexive=198.51.100.21:5000 --candidate host=10.1.0.2:5000 \
//!     --start-unix-ms MS [--strategy prediction --local-sockets N | --remote-probes M ...] [--hello]
//! out: local <addr>
//! out: selected socket=<main|extra> local=<addr> remote=<addr> kind=<kind> peer_reflexive=<bool>
//!      mapped=<addr|-> sent=<n> openers=<n> received=<n> rejected=<n> integrity=<n> first_ms=<n>
//!      selected_ms=<n>
//! out: hello <n>        (with --hello: datagrams of the other side received over the path)
//! out: failed <error> sent=<n> openers=<n> received=<n> rejected=<n> integrity=<n>
//!
//! qp-punch-peer forge --target ADDR --handshake-id HEX --duration-ms D
//! out: forged <n> answers <m>   probes with a wrong key sent to ADDR (a stranger's attempt to
//!                               divert a punch), datagrams received back
//! ```

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use quickp2p::punch::{
    Candidate, CandidateKind, ClockEstimate, HandshakeInstruction, HandshakeRole,
    HandshakeStrategy, MainSocket, PathSocket, PortPredictionPlan, PunchPlan, PunchSchedule,
    local_start, punch,
};
use quickp2p::wire::probe::{ProbeCodec, ProbeRequest, ProbeRole};
use quickp2p::wire::stun::TransactionId;
use tokio::net::UdpSocket;

/// Runs the punch engine with an instruction built from the arguments.
#[derive(Debug, Parser)]
#[command(name = "qp-punch-peer")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Punch toward the other peer.
    Punch(PunchArgs),
    /// Flood a target with probes signed with a wrong key.
    Forge(ForgeArgs),
}

#[derive(Debug, clap::Args)]
struct PunchArgs {
    /// Local address of the main socket.
    #[arg(long)]
    bind: SocketAddr,
    /// initiator or responder.
    #[arg(long)]
    role: String,
    /// The handshake id, hex.
    #[arg(long)]
    handshake_id: String,
    /// The attempt number.
    #[arg(long, default_value_t = 1)]
    attempt: u32,
    /// The 32-byte probe key, hex.
    #[arg(long)]
    key: String,
    /// direct or prediction.
    #[arg(long, default_value = "direct")]
    strategy: String,
    /// A remote candidate, KIND=ADDR (host, reflexive, predicted); repeatable.
    #[arg(long = "candidate")]
    candidates: Vec<String>,
    /// The start, Unix milliseconds (the lab's hosts share one clock).
    #[arg(long)]
    start_unix_ms: u64,
    /// Probe interval.
    #[arg(long, default_value_t = 20)]
    interval_ms: u32,
    /// Budget.
    #[arg(long, default_value_t = 4000)]
    budget_ms: u32,
    /// Port prediction: extra local sockets (birthday side).
    #[arg(long, default_value_t = 0)]
    local_sockets: u32,
    /// Port prediction: random remote ports to spray.
    #[arg(long, default_value_t = 0)]
    remote_probes: u32,
    /// Port prediction: lowest remote port.
    #[arg(long, default_value_t = 1024)]
    port_min: u32,
    /// Port prediction: highest remote port.
    #[arg(long, default_value_t = 65535)]
    port_max: u32,
    /// Port prediction: probes per second over all sockets.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// IP TTL of the birthday side's openers (0: no openers); default: the engine's.
    #[arg(long)]
    opener_ttl: Option<u8>,
    /// After selecting, exchange datagrams over the path and report how many arrived.
    #[arg(long)]
    hello: bool,
}

#[derive(Debug, clap::Args)]
struct ForgeArgs {
    /// Where to send the forged probes.
    #[arg(long)]
    target: String,
    /// The handshake id the forger learned (hex); the key it does not have.
    #[arg(long)]
    handshake_id: String,
    /// How long to flood.
    #[arg(long, default_value_t = 3000)]
    duration_ms: u64,
}

fn hex(text: &str) -> anyhow::Result<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        bail!("odd-length hex {text:?}");
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(text.get(i..i + 2).unwrap_or_default(), 16)
                .with_context(|| format!("bad hex {text:?}"))
        })
        .collect()
}

fn candidate(text: &str) -> anyhow::Result<Candidate> {
    let (kind, address) = text
        .split_once('=')
        .with_context(|| format!("expected KIND=ADDR, got {text:?}"))?;
    let kind = match kind {
        "host" => CandidateKind::Host,
        "reflexive" => CandidateKind::Reflexive,
        "predicted" => CandidateKind::Predicted,
        other => bail!("unknown candidate kind {other:?}"),
    };
    let address: SocketAddr = address.parse().context("candidate address")?;
    Ok(Candidate {
        kind: kind as i32,
        address: Some(address.into()),
        priority: 0,
        port_span: 1,
    })
}

fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn run_punch(args: PunchArgs) -> anyhow::Result<()> {
    let role = match args.role.as_str() {
        "initiator" => HandshakeRole::Initiator,
        "responder" => HandshakeRole::Responder,
        other => bail!("unknown role {other:?}"),
    };
    let strategy = match args.strategy.as_str() {
        "direct" => HandshakeStrategy::Direct,
        "prediction" => HandshakeStrategy::PortPrediction,
        other => bail!("unknown strategy {other:?}"),
    };
    let mut instruction = HandshakeInstruction {
        handshake_id: hex(&args.handshake_id)?.into(),
        attempt: args.attempt,
        remote_candidates: args
            .candidates
            .iter()
            .map(|c| candidate(c))
            .collect::<anyhow::Result<_>>()?,
        schedule: Some(PunchSchedule {
            start_at_us: args.start_unix_ms * 1000,
            probe_interval_ms: args.interval_ms,
            budget_ms: args.budget_ms,
            keepalive_interval_ms: 0,
        }),
        probe_key: hex(&args.key)?.into(),
        ..Default::default()
    };
    instruction.set_role(role);
    instruction.set_strategy(strategy);
    if strategy == HandshakeStrategy::PortPrediction {
        instruction.prediction = Some(PortPredictionPlan {
            local_socket_count: args.local_sockets,
            remote_port_min: args.port_min,
            remote_port_max: args.port_max,
            remote_probe_count: args.remote_probes,
            max_probes_per_second: args.rate,
        });
    }
    let socket = UdpSocket::bind(args.bind).await.context("bind")?;
    println!("local {}", socket.local_addr()?);
    // the lab's hosts share this machine's clock: a zero offset
    let clock = ClockEstimate::default();
    let start = local_start(
        instruction
            .schedule
            .as_ref()
            .map(|s| s.start_at_us)
            .unwrap_or(0),
        Some(&clock),
        unix_now_us(),
        std::time::Instant::now(),
        Duration::ZERO,
    );
    let mut plan = PunchPlan::from_instruction(&instruction, start)?;
    if let Some(ttl) = args.opener_ttl {
        plan.opener_ttl = ttl;
    }
    match punch(&plan, MainSocket::Udp(&socket)).await {
        Ok(success) => {
            let path = success.path;
            let stats = success.stats;
            let ms = |d: Option<Duration>| d.map(|d| d.as_millis()).unwrap_or(0);
            println!(
                "selected socket={} local={} remote={} kind={} peer_reflexive={} mapped={} sent={} openers={} received={} rejected={} integrity={} first_ms={} selected_ms={}",
                match path.socket {
                    PathSocket::Main => "main",
                    PathSocket::Extra(_) => "extra",
                },
                path.local,
                path.remote,
                path.remote_kind.as_str_name(),
                path.peer_reflexive,
                path.mapped
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into()),
                stats.probes_sent(),
                stats.openers_sent,
                stats.probes_received,
                stats.rejected.total(),
                stats.rejected.integrity,
                ms(stats.first_probe_after),
                ms(stats.selected_after),
            );
            if args.hello {
                let path_socket = match &path.socket {
                    PathSocket::Main => &socket,
                    PathSocket::Extra(extra) => extra,
                };
                let got = hello(path_socket, path.remote).await;
                println!("hello {got}");
            }
        }
        Err(error) => {
            let stats = error.stats().copied().unwrap_or_default();
            println!(
                "failed {error} sent={} openers={} received={} rejected={} integrity={}",
                stats.probes_sent(),
                stats.openers_sent,
                stats.probes_received,
                stats.rejected.total(),
                stats.rejected.integrity
            );
        }
    }
    Ok(())
}

/// Sends ten `qp-hello` datagrams over the path (one every 50 ms) while counting the other side's
/// for up to 2 s.
async fn hello(socket: &UdpSocket, remote: SocketAddr) -> u32 {
    const HELLO: &[u8] = b"qp-hello";
    let mut got = 0;
    let mut sent = 0;
    let mut buffer = [0u8; 2048];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = tick.tick(), if sent < 10 => {
                let _ = socket.send_to(HELLO, remote).await;
                sent += 1;
            }
            received = socket.recv_from(&mut buffer) => {
                if let Ok((len, from)) = received
                    && from == remote
                    && buffer.get(..len) == Some(HELLO)
                {
                    got += 1;
                    if got >= 10 && sent >= 10 {
                        return got;
                    }
                }
            }
            () = tokio::time::sleep_until(deadline) => return got,
        }
    }
}

async fn run_forge(args: ForgeArgs) -> anyhow::Result<()> {
    let target: SocketAddr = args.target.parse().context("target")?;
    let id = hex(&args.handshake_id)?;
    let socket = UdpSocket::bind("0.0.0.0:0").await?;
    let mut forged = 0u64;
    let mut answers = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(args.duration_ms);
    let mut n = 0u8;
    while tokio::time::Instant::now() < deadline {
        for role in [ProbeRole::Initiator, ProbeRole::Responder] {
            let codec = ProbeCodec::new(&id, 1, &[0x66; 32], role)?;
            let mut bytes = Vec::new();
            n = n.wrapping_add(1);
            codec.encode_request(
                &ProbeRequest {
                    transaction_id: TransactionId::new([n; 12]),
                    priority: u32::MAX,
                    tie_breaker: 1,
                    nominate: true,
                },
                &mut bytes,
            )?;
            let _ = socket.send_to(&bytes, target).await;
            bytes.clear();
            codec.encode_response(TransactionId::new([n; 12]), target, &mut bytes)?;
            let _ = socket.send_to(&bytes, target).await;
            forged += 2;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        answers += drain(&socket);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    answers += drain(&socket);
    println!("forged {forged} answers {answers}");
    Ok(())
}

/// Datagrams waiting on `socket`, read and counted.
fn drain(socket: &UdpSocket) -> u64 {
    let mut buffer = [0u8; 2048];
    let mut n = 0;
    while socket.try_recv_from(&mut buffer).is_ok() {
        n += 1;
    }
    n
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Punch(args) => run_punch(args).await,
        Command::Forge(args) => run_forge(args).await,
    }
}
