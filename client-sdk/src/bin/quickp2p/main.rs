//! `quickp2p`: the quickP2P command-line peer.
//!
//! Subcommands (more arrive with later features: `tunnel`, …):
//!
//! * `nat-report`: measure this host's NAT against a STUN server pair (RFC 5780).
//! * `keygen`: make a peer key file and print the peer id.
//! * `chat`: log in through a gateway and chat with one peer.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod chat;
mod keygen;
mod nat_report;

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
