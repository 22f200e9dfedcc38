//! `qp-tunnel-peer`: an SDK peer for the NAT lab's tunnel tests and the punch-matrix benchmark.
//!
//! Logs in to a gateway, starts [`Tunnels`] (NAT report on its tunnel socket, answering offers)
//! and then obeys one command per stdin line, answering on stdout:
//!
//! ```text
//! (start)            PEER <peer id>            NAT <mapping>/<filtering>
//! open <peer id>     TUNNEL <n> <direct|relayed> <path> go_ms=<ms> elapsed_ms=<ms> budget_ms=<ms> strategy=<s>
//!                    | FAILED <why>
//! (offer accepted)   TUNNEL <n> …  (same form; the tunnel echoes whatever it receives)
//! echo <n> <bytes>   ECHO ok <bytes> <ms> | ECHO fail <why>    (a stream on tunnel n)
//! dgram <n>          DGRAM ok | DGRAM fail <why>
//! soak <n> <secs>    SOAK ok <exchanges> | SOAK fail <exchanges> <why>   (one echo per 200 ms)
//! path <n>           PATH <path>
//! quit
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use quickp2p::identity::Identity;
use quickp2p::p2p::{Connected, PathKind, Tunnels, TunnelsConfig};
use quickp2p::session::{AppCredentials, GatewayTrust, Peer, PeerId, SessionConfig};
use quickp2p::tunnel::Tunnel;
use tokio::io::AsyncBufReadExt;
use tokio::sync::Mutex;

#[derive(Parser, Debug)]
#[command(about = "An SDK peer driven over stdin, for tunnel tests in the NAT lab")]
struct Args {
    /// The gateway's QUIC address.
    #[arg(long)]
    gateway: SocketAddr,
    /// The gateway certificate's SHA-256 fingerprint (hex).
    #[arg(long)]
    gateway_pin: String,
    /// The application id.
    #[arg(long)]
    app: String,
    /// The application secret.
    #[arg(long)]
    app_secret: String,
    /// stun-a's primary address.
    #[arg(long)]
    stun: SocketAddr,
}

type Table = Arc<Mutex<HashMap<u32, Arc<Tunnel>>>>;

fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn describe(n: u32, connected: &Connected) -> String {
    let kind = match connected.kind {
        PathKind::Direct => "direct",
        PathKind::Relayed => "relayed",
    };
    let path = connected
        .tunnel
        .path()
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|e| format!("closed:{e}"))
        .replace(' ', "");
    format!(
        "TUNNEL {n} {kind} {path} go_ms={} elapsed_ms={} budget_ms={} strategy={}",
        connected.ready_after_go.as_millis(),
        connected.elapsed.as_millis(),
        connected.punch_budget.as_millis(),
        connected.strategy.as_str_name()
    )
}

/// Echoes every stream and datagram the other side sends on `tunnel`.
fn serve_echo(tunnel: Arc<Tunnel>) {
    let streams = Arc::clone(&tunnel);
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = streams.accept_bi().await {
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    match recv.read(&mut buffer).await {
                        Ok(Some(n)) => {
                            if send.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            let _ = send.finish();
                            return;
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    });
    tokio::spawn(async move {
        while let Ok(datagram) = tunnel.read_datagram().await {
            let _ = tunnel.send_datagram(datagram);
        }
    });
}

async fn echo(tunnel: &Tunnel, bytes: usize) -> Result<Duration, String> {
    let started = Instant::now();
    let (mut send, mut recv) = tunnel.open_bi().await.map_err(|e| e.to_string())?;
    let payload: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let writer = async {
        send.write_all(&payload).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())
    };
    let reader = async { recv.read_to_end(bytes + 1).await.map_err(|e| e.to_string()) };
    let (written, read) = tokio::join!(writer, reader);
    written?;
    let back = read?;
    if back != payload {
        return Err(format!(
            "echo differs ({} of {bytes} bytes back)",
            back.len()
        ));
    }
    Ok(started.elapsed())
}

async fn datagram(tunnel: &Tunnel) -> Result<(), String> {
    let probe = bytes::Bytes::from_static(b"qp-tunnel-peer datagram");
    for _ in 0..10 {
        tunnel
            .send_datagram(probe.clone())
            .map_err(|e| e.to_string())?;
        if let Ok(Ok(back)) =
            tokio::time::timeout(Duration::from_millis(500), tunnel.read_datagram()).await
            && back == probe
        {
            return Ok(());
        }
    }
    Err("no datagram echo in 10 tries".to_owned())
}

async fn soak(tunnel: &Tunnel, seconds: u64) -> (u64, Option<String>) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut exchanges = 0u64;
    while Instant::now() < until {
        let result = tokio::time::timeout(Duration::from_secs(5), echo(tunnel, 1024)).await;
        match result {
            Ok(Ok(_)) => exchanges += 1,
            Ok(Err(e)) => return (exchanges, Some(e)),
            Err(_) => return (exchanges, Some("an echo took over 5 s".to_owned())),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (exchanges, None)
}

async fn run(args: Args) -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let identity = Identity::generate().map_err(|e| e.to_string())?;
    let trust = GatewayTrust::pinned_hex([args.gateway_pin.as_str()])?;
    let config = SessionConfig::new(
        vec![args.gateway],
        AppCredentials::new(args.app, args.app_secret),
        identity.clone(),
    )
    .trust(trust);
    let session = Peer::connect(config).await.map_err(|e| e.to_string())?;
    say(&format!("PEER {}", session.peer_id()));
    let tunnels = Tunnels::start(&session, TunnelsConfig::new().stun(args.stun))
        .await
        .map_err(|e| e.to_string())?;
    let nat = tunnels
        .nat_report()
        .and_then(|r| r.behaviour)
        .map(|b| {
            format!(
                "{}/{}",
                b.mapping().as_str_name(),
                b.filtering().as_str_name()
            )
        })
        .unwrap_or_else(|| "unknown".to_owned());
    say(&format!("NAT {nat}"));

    let table: Table = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicU32::new(1));
    {
        let (tunnels, table, next) = (tunnels.clone(), Arc::clone(&table), Arc::clone(&next));
        tokio::spawn(async move {
            while let Some(connected) = tunnels.accept().await {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                say(&describe(n, &connected));
                let tunnel = Arc::new(connected.tunnel);
                serve_echo(Arc::clone(&tunnel));
                table.lock().await.insert(n, tunnel);
            }
        });
    }

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let tunnel_of = |n: Option<&&str>| {
            let table = Arc::clone(&table);
            let n = n.and_then(|n| n.parse::<u32>().ok());
            async move {
                match n {
                    Some(n) => table.lock().await.get(&n).cloned(),
                    None => None,
                }
            }
        };
        match words.as_slice() {
            ["open", peer] => {
                let peer: PeerId = match peer.parse() {
                    Ok(peer) => peer,
                    Err(e) => {
                        say(&format!("FAILED bad peer id: {e}"));
                        continue;
                    }
                };
                match tunnels.open(&peer).await {
                    Ok(connected) => {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        say(&describe(n, &connected));
                        let tunnel = Arc::new(connected.tunnel);
                        serve_echo(Arc::clone(&tunnel));
                        table.lock().await.insert(n, tunnel);
                    }
                    Err(e) => say(&format!("FAILED {e}")),
                }
            }
            ["echo", n, bytes] => {
                let Some(tunnel) = tunnel_of(Some(n)).await else {
                    say("ECHO fail no such tunnel");
                    continue;
                };
                let bytes = bytes.parse().unwrap_or(1024);
                match echo(&tunnel, bytes).await {
                    Ok(took) => say(&format!("ECHO ok {bytes} {}", took.as_millis())),
                    Err(e) => say(&format!("ECHO fail {e}")),
                }
            }
            ["dgram", n] => {
                let Some(tunnel) = tunnel_of(Some(n)).await else {
                    say("DGRAM fail no such tunnel");
                    continue;
                };
                match datagram(&tunnel).await {
                    Ok(()) => say("DGRAM ok"),
                    Err(e) => say(&format!("DGRAM fail {e}")),
                }
            }
            ["soak", n, seconds] => {
                let Some(tunnel) = tunnel_of(Some(n)).await else {
                    say("SOAK fail 0 no such tunnel");
                    continue;
                };
                match soak(&tunnel, seconds.parse().unwrap_or(10)).await {
                    (count, None) => say(&format!("SOAK ok {count}")),
                    (count, Some(why)) => say(&format!("SOAK fail {count} {why}")),
                }
            }
            ["path", n] => match tunnel_of(Some(n)).await {
                Some(tunnel) => say(&format!(
                    "PATH {}",
                    tunnel
                        .path()
                        .map(|p| format!("{p:?}"))
                        .unwrap_or_else(|e| format!("closed:{e}"))
                )),
                None => say("PATH none"),
            },
            ["quit"] => break,
            _ => say(&format!("ERROR unknown command {line:?}")),
        }
    }
    session.close().await;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("qp-tunnel-peer: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qp-tunnel-peer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
