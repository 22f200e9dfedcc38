//! `quickp2p-demo`: a whole quickP2P network and its peers in one command.
//!
//! It starts the all-in-one supernode (every role that exists, embedded state, loopback), then
//! runs a few peers against it and narrates what each learns, and keeps the network up until
//! Ctrl-C so that other programs (the `quickp2p` CLI in another terminal) can use it too. The
//! peers do everything the network offers today; they do more as the roles land.
//!
//! ```text
//! cargo run --release -p quickp2p-e2e --bin quickp2p-demo
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use quickp2p::nat::{NatReportOptions, nat_report};
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
    let network = tokio::spawn(node.run(stop.clone()));

    println!("peers ({peers}):");
    let mut failures = 0;
    for n in 1..=peers {
        match run_peer(n, addresses.stun_a.primary).await {
            Ok(line) => println!("  {line}"),
            Err(e) => {
                failures += 1;
                println!("  peer {n}: FAILED: {e:#}");
            }
        }
    }
    println!(
        "\n{} of {peers} peers done. Try it yourself: quickp2p nat-report --stun {}",
        peers - failures,
        addresses.stun_a.primary
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

/// One peer: binds its one UDP socket and asks the STUN pair what its NAT does.
async fn run_peer(n: u16, stun: SocketAddr) -> anyhow::Result<String> {
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
