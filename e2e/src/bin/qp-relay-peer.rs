//! `qp-relay-peer`: an SDK peer that talks to another peer only through a TURN relay, for the
//! NAT-lab test `e2e/tests/relay.rs`. Line protocol on stdin/stdout:
//!
//! ```text
//! out: relayed <addr>        its relayed address (after Allocate)
//! out: mapped <addr>         its address as the relay saw it (the NAT's public side)
//! in:  peer <addr>           the other peer's relayed address
//! out: ready                 channel bound (and permission installed) to it
//! in:  go                    both sides are ready
//! out: received <n>          distinct messages that arrived from the peer (of --count)
//! ```
//!
//! It sends `--count` numbered messages of `--size` bytes, paced, and keeps listening until all
//! of the peer's have arrived or `--timeout-s` passed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use quickp2p::relay::{RelayClient, RelayCredentials, RelayOptions};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// An SDK peer reachable only through a TURN relay.
#[derive(Debug, Parser)]
#[command(name = "qp-relay-peer")]
struct Args {
    /// The relay's TURN address.
    #[arg(long)]
    relay: SocketAddr,
    /// TURN username.
    #[arg(long)]
    username: String,
    /// TURN password.
    #[arg(long)]
    password: String,
    /// Messages to send.
    #[arg(long, default_value_t = 50)]
    count: u32,
    /// Bytes per message (at least 8).
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 20)]
    timeout_s: u64,
}

async fn line(
    lines: &mut tokio::io::Lines<BufReader<tokio::io::Stdin>>,
    word: &str,
) -> anyhow::Result<String> {
    loop {
        let Some(l) = lines.next_line().await? else {
            bail!("stdin closed while waiting for {word:?}");
        };
        if let Some(rest) = l.trim().strip_prefix(word) {
            return Ok(rest.trim().to_owned());
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let socket = Arc::new(tokio::net::UdpSocket::bind("0.0.0.0:0").await?);
    let credentials = RelayCredentials {
        username: args.username.clone(),
        password: args.password.clone(),
    };
    let (client, allocation) =
        RelayClient::connect(socket, args.relay, credentials, RelayOptions::default())
            .await
            .context("allocate")?;
    println!("relayed {}", allocation.relayed);
    println!(
        "mapped {}",
        allocation.mapped.map_or("-".to_owned(), |m| m.to_string())
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let peer: SocketAddr = line(&mut lines, "peer")
        .await?
        .parse()
        .context("peer address")?;
    client.bind_channel(peer).await.context("bind a channel")?;
    println!("ready");
    line(&mut lines, "go").await?;

    let client = Arc::new(client);
    let receiver = Arc::clone(&client);
    let count = args.count;
    let collect = tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut buf = [0u8; 2048];
        while seen.len() < count as usize {
            let Ok((n, from)) = receiver.recv_from(&mut buf).await else {
                break;
            };
            if from == peer && n >= 8 && buf[..4] == *b"qp-r" {
                seen.insert(u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]));
            }
        }
        seen.len()
    });
    let mut message = vec![0u8; args.size.max(8)];
    message[..4].copy_from_slice(b"qp-r");
    for i in 0..args.count {
        message[4..8].copy_from_slice(&i.to_be_bytes());
        client.send_to(&message, peer).await.context("send")?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let received = match tokio::time::timeout(Duration::from_secs(args.timeout_s), collect).await {
        Ok(Ok(n)) => n,
        _ => 0,
    };
    println!("received {received}");
    // give the other side time to finish before the allocation goes away
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}
