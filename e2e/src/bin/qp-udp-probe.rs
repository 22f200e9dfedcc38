//! `qp-udp-probe`: the NAT lab's UDP observation tool (see `quickp2p_e2e::udp_probe`).
//!
//! - `qp-udp-probe serve --bind ADDR…` serves the probe protocol on each address, printing
//!   `READY` once bound;
//! - `qp-udp-probe probe --bind ADDR STEP…` runs `map:IP:PORT` and `from:VIA/FROM` steps from one
//!   socket and prints one outcome line per step;
//! - `qp-udp-probe knock --bind ADDR --to ADDR` sends one unsolicited datagram, prints `KNOCKED`,
//!   then prints `SEEN <source>` for the first datagram it receives, or `NOTHING`.

use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use quickp2p_e2e::udp_probe::{self, ProbeStep, ProbeTiming};

#[derive(Parser)]
#[command(about = "UDP mapping and filtering probe for the quickP2P NAT lab")]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Serve the probe protocol on every --bind address.
    Serve {
        /// Address to bind (repeat for several sockets).
        #[arg(long, required = true)]
        bind: Vec<SocketAddr>,
    },
    /// Run steps from one socket and print one outcome per line.
    Probe {
        /// Local address of the one socket every step uses.
        #[arg(long)]
        bind: SocketAddr,
        /// Milliseconds to wait for an answer before retrying.
        #[arg(long, default_value_t = 250)]
        try_ms: u64,
        /// Requests per step before giving up.
        #[arg(long, default_value_t = 4)]
        tries: u32,
        /// Milliseconds to keep waiting for a filtered datagram after the server's ACK.
        #[arg(long, default_value_t = 200)]
        settle_ms: u64,
        /// Steps: map:IP:PORT or from:VIA_IP:PORT/FROM_IP:PORT.
        #[arg(required = true)]
        steps: Vec<ProbeStep>,
    },
    /// Send one unsolicited datagram, then report who sends to us first.
    Knock {
        /// Local address.
        #[arg(long)]
        bind: SocketAddr,
        /// Where the knock goes.
        #[arg(long)]
        to: SocketAddr,
        /// Milliseconds to wait for a datagram after knocking.
        #[arg(long, default_value_t = 3000)]
        wait_ms: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Mode::Serve { bind } => {
            let sockets = bind
                .iter()
                .map(|addr| UdpSocket::bind(addr).with_context(|| format!("binding {addr}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            say("READY")?;
            match udp_probe::serve(sockets)? {}
        }
        Mode::Probe {
            bind,
            try_ms,
            tries,
            settle_ms,
            steps,
        } => {
            let socket = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
            let timing = ProbeTiming {
                per_try: Duration::from_millis(try_ms),
                tries,
                settle: Duration::from_millis(settle_ms),
            };
            for outcome in udp_probe::run_probe(&socket, &steps, timing)? {
                say(&outcome.to_string())?;
            }
            Ok(())
        }
        Mode::Knock { bind, to, wait_ms } => {
            let socket = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
            let mut said = Ok(());
            let seen = udp_probe::knock(&socket, to, Duration::from_millis(wait_ms), || {
                said = say("KNOCKED");
            })?;
            said?;
            match seen {
                Some(source) => say(&format!("SEEN {source}")),
                None => say("NOTHING"),
            }
        }
    }
}

/// Prints a line and flushes, so a test reading our stdout sees it at once.
fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
