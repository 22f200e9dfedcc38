//! `quickp2p-demo`: a whole quickP2P network and its peers in one command.
//!
//! It starts the all-in-one supernode (every role that exists, embedded state, loopback), then
//! runs a few peers against it and narrates what they do — each learns its NAT behaviour from the
//! STUN pair, logs in through the gateway with the dev application and a fresh Ed25519 key, and
//! sends an instant message to the next peer — and keeps the network up until Ctrl-C so that
//! other programs (`quickp2p chat` in two terminals) can use it too. The peers do everything the
//! network offers today; they do more as the roles land.
//!
//! ```text
//! cargo run --release -p quickp2p-e2e --bin quickp2p-demo
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use quickp2p::identity::Identity;
use quickp2p::nat::{NatReportOptions, nat_report};
use quickp2p::p2p::{Tunnels, TunnelsConfig};
use quickp2p::session::{AppCredentials, GatewayTrust, Peer, Session, SessionConfig};
use quickp2p_service_kit::{shutdown, telemetry};
use quickp2p_supernode::{Args as SupernodeArgs, Supernode};

/// Run a quickP2P supernode network on loopback with a few peers that use it.
#[derive(Debug, Parser)]
#[command(name = "quickp2p-demo", version)]
struct DemoArgs {
    /// How many peers to run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    peers: u16,

    /// Stop after the peers are done instead of serving until Ctrl-C.
    #[arg(long)]
    once: bool,

    /// Flags of the supernode (see `quickp2p-supernode --help`).
    #[command(flatten)]
    supernode: SupernodeArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = DemoArgs::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match args.supernode.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quickp2p-demo: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let _telemetry = match telemetry::init(&config.service) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("quickp2p-demo: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match demo(config, args.peers, args.once).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickp2p-demo: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn demo(config: quickp2p_supernode::Config, peers: u16, once: bool) -> anyhow::Result<()> {
    let stop = shutdown::on_signal();
    let node = Supernode::bind(config).await?;
    println!("{}\n", node.banner()?);
    let addresses = node.addresses()?;
    let app = node
        .dev_application()
        .context("the dev application could not be created")?
        .clone();
    let fingerprint = node.gateway_fingerprint();
    let network = tokio::spawn(node.run(stop.clone()));

    println!("peers ({peers}):");
    let mut failures = 0;
    for n in 1..=peers {
        match nat_line(n, addresses.stun_a.primary).await {
            Ok(line) => println!("  {line}"),
            Err(e) => {
                failures += 1;
                println!("  peer {n}: FAILED: {e:#}");
            }
        }
    }
    match messages(
        peers,
        addresses.gateway.quic,
        addresses.stun_a.primary,
        &app,
        &fingerprint,
    )
    .await
    {
        Ok(lines) => lines.iter().for_each(|l| println!("  {l}")),
        Err(e) => {
            failures += 1;
            println!("  messages: FAILED: {e:#}");
        }
    }
    println!(
        "\n{} of {peers} peers done. Try it yourself (cargo run --release -p quickp2p --bin quickp2p -- …):\n\
         \x20 quickp2p nat-report --stun {stun}\n\
         \x20 quickp2p keygen --out me.key          (and again: --out you.key)\n\
         \x20 quickp2p chat --gateway {gw} --app {app_id} --secret {secret} \\\n\
         \x20     --fingerprint {fingerprint} --key me.key --to PEER_ID",
        peers - failures.min(peers),
        stun = addresses.stun_a.primary,
        gw = addresses.gateway.quic,
        app_id = app.app_id,
        secret = app.secret,
    );
    if once {
        stop.cancel();
    } else {
        println!("The network keeps running; Ctrl-C stops it.");
    }
    network.await.context("supernode task failed")??;
    anyhow::ensure!(failures == 0, "{failures} peer(s) failed");
    Ok(())
}

/// Logs every peer in through the gateway, then each sends one message to the next and waits for
/// the one from the previous; then peer 1 opens a tunnel to peer 2 and echoes data through it.
async fn messages(
    peers: u16,
    gateway: SocketAddr,
    stun: SocketAddr,
    app: &quickp2p_checkpoint::DevApplication,
    fingerprint: &str,
) -> anyhow::Result<Vec<String>> {
    let trust = GatewayTrust::pinned_hex([fingerprint]).map_err(anyhow::Error::msg)?;
    let mut sessions: Vec<Session> = Vec::new();
    let mut lines = Vec::new();
    for n in 1..=peers {
        let config = SessionConfig::new(
            vec![gateway],
            AppCredentials::new(app.app_id.as_str(), app.secret.as_str()),
            Identity::generate().context("cannot make a key pair")?,
        )
        .trust(trust.clone());
        let session = Peer::connect(config)
            .await
            .with_context(|| format!("peer {n} cannot log in"))?;
        lines.push(format!("peer {n}: logged in as {}", session.peer_id()));
        sessions.push(session);
    }
    let count = sessions.len();
    for (i, session) in sessions.iter().enumerate() {
        let to = sessions[(i + 1) % count].peer_id().clone();
        let text = format!("hello from peer {}", i + 1);
        session
            .send_message(&to, text.clone())
            .await
            .with_context(|| format!("peer {} cannot send", i + 1))?;
    }
    for (i, session) in sessions.iter().enumerate() {
        let mut inbox = session.messages().context("the inbox was already taken")?;
        let message = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .with_context(|| format!("peer {} got no message within 5 s", i + 1))?
            .context("the session ended")?;
        lines.push(format!(
            "peer {}: got {:?} from {}",
            i + 1,
            String::from_utf8_lossy(&message.payload),
            message.sender
        ));
    }
    if let [first, second, ..] = sessions.as_slice() {
        lines.push(tunnel(first, second, stun).await?);
    }
    for session in sessions {
        session.close().await;
    }
    Ok(lines)
}

/// Peer 1 opens a tunnel to peer 2 (signalling through the gateway and the handshake role, hole
/// punching, QUIC with both peer ids verified) and echoes 64 KiB through it.
async fn tunnel(one: &Session, two: &Session, stun: SocketAddr) -> anyhow::Result<String> {
    let config = TunnelsConfig::new()
        .stun(stun)
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)));
    let opener = Tunnels::start(one, config.clone().accept_offers(false)).await?;
    let acceptor = Tunnels::start(two, config).await?;
    let echo = tokio::spawn(async move {
        let connected = acceptor.accept().await.context("no incoming tunnel")?;
        let (mut send, mut recv) = connected.tunnel.accept_bi().await?;
        let data = recv.read_to_end(1 << 20).await?;
        send.write_all(&data).await?;
        send.finish()?;
        connected.tunnel.closed().await;
        anyhow::Ok(())
    });
    let connected = opener
        .open(two.peer_id())
        .await
        .context("peer 1 cannot open a tunnel to peer 2")?;
    let started = std::time::Instant::now();
    let (mut send, mut recv) = connected.tunnel.open_bi().await?;
    let payload = vec![7u8; 64 * 1024];
    send.write_all(&payload).await?;
    send.finish()?;
    let back = recv.read_to_end(1 << 20).await?;
    anyhow::ensure!(back == payload, "the echo differs");
    let took = started.elapsed();
    let path = connected.tunnel.path()?;
    connected.tunnel.close(0, b"done");
    let _ = tokio::time::timeout(Duration::from_secs(2), echo).await;
    Ok(format!(
        "peer 1 -> peer 2: tunnel {path:?} ({:?}, ready {} ms after the go signal), 64 KiB echoed in {} ms",
        connected.kind,
        connected.ready_after_go.as_millis(),
        took.as_millis()
    ))
}

/// One peer: binds its one UDP socket and asks the STUN pair what its NAT does.
async fn nat_line(n: u16, stun: SocketAddr) -> anyhow::Result<String> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .context("cannot bind a UDP socket")?;
    let options = NatReportOptions::default().with_timeout(Some(Duration::from_secs(5)));
    let report = nat_report(&socket, stun, options)
        .await
        .context("NAT report")?;
    Ok(format!(
        "peer {n}: socket {} -> {} ({}), public address {}, hairpinning {}, {:.1} ms",
        report.local_address,
        report.label(),
        report.rfc4787_description(),
        report
            .public_address
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
        report
            .hairpinning
            .map_or("not tested", |h| if h { "yes" } else { "no" }),
        report.duration.as_secs_f64() * 1000.0,
    ))
}
