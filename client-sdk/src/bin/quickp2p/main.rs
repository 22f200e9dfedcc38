//! `quickp2p`: the quickP2P command-line peer.
//!
//! Subcommands:
//!
//! * `nat-report`: measure this host's NAT against a STUN server pair (RFC 5780).
//! * `keygen`: make a peer key file and print the peer id.
//! * `chat`: log in through a gateway and chat with one peer.
//! * `publish`: publish attributes and stay online (they expire with the presence).
//! * `find`: look a peer up by id, or find peers by attribute (equality or prefix).
//! * `send-file`, `recv-file`: send a file over a tunnel (direct or relayed), verified by SHA-256.
//! * `tunnel`: a line pipe over a tunnel to one peer.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod chat;
mod index;
mod keygen;
mod nat_report;
mod tunnel;

/// quickP2P command-line peer.
#[derive(Debug, Parser)]
#[command(name = "quickp2p", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure the NAT in front of this host (RFC 5780 behaviour discovery):
    /// mapping and filtering behaviour, hairpinning, port preservation and the
    /// reflexive addresses, seen from one UDP socket.
    NatReport(nat_report::Args),
    /// Make an Ed25519 key pair, write it to a key file and print the peer id.
    Keygen(keygen::Args),
    /// Log in through a gateway and chat with one peer (lines in, messages out).
    Chat(chat::Args),
    /// Log in, publish attributes (KEY=VALUE …) and stay online: they are visible to the
    /// application's peers while this peer is online.
    Publish(index::PublishArgs),
    /// Look a peer up by id (--peer), or find online peers by attribute (KEY=VALUE, --prefix).
    Find(index::FindArgs),
    /// Open a tunnel to a peer and send it a file (with a progress bar); exits 0 once the
    /// receiver verified it.
    SendFile(tunnel::SendArgs),
    /// Log in, print this peer's id and receive files over incoming tunnels into --dir.
    RecvFile(tunnel::RecvArgs),
    /// A line pipe over a tunnel: --to PEER opens it, --listen waits for one.
    Tunnel(tunnel::PipeArgs),
}

fn main() -> ExitCode {
    // clap prints usage errors and exits with 2, help and version with 0
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::NatReport(args) => nat_report::run(args).await,
            Command::Keygen(args) => keygen::run(args),
            Command::Chat(args) => chat::run(args).await,
            Command::Publish(args) => index::publish(args).await,
            Command::Find(args) => index::find(args).await,
            Command::SendFile(args) => tunnel::send_file(args).await,
            Command::RecvFile(args) => tunnel::recv_file(args).await,
            Command::Tunnel(args) => tunnel::pipe(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
