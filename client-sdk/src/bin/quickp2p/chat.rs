//! `quickp2p chat`: log in and chat with one peer: each line typed is sent, each message
//! received is printed as `PEER_ID: text`.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;

use quickp2p::identity::Identity;
use quickp2p::session::{
    AppCredentials, ConnectionState, GatewayTrust, Peer, PeerId, Presence, SessionConfig,
};
use tokio::io::AsyncBufReadExt as _;

/// Flags of `quickp2p chat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A gateway, HOST:PORT; repeat for failover. [default: 127.0.0.1:4433]
    #[arg(long = "gateway", env = "QP_GATEWAY", value_delimiter = ',')]
    gateways: Vec<String>,
    /// The application id.
    #[arg(long, env = "QP_APP_ID")]
    app: String,
    /// The application secret.
    #[arg(long, env = "QP_APP_SECRET", hide_env_values = true)]
    secret: String,
    /// The key file (make one with `quickp2p keygen`).
    #[arg(long, env = "QP_KEY_FILE")]
    key: PathBuf,
    /// The peer to chat with (64 hex digits).
    #[arg(long)]
    to: String,
    /// SHA-256 fingerprint(s) of the gateway certificates (printed by the gateway).
    #[arg(
        long = "fingerprint",
        env = "QP_GATEWAY_FINGERPRINT",
        value_delimiter = ','
    )]
    fingerprints: Vec<String>,
    /// Accept any gateway certificate (development only).
    #[arg(long, conflicts_with = "fingerprints")]
    insecure: bool,
}

fn resolve(gateways: &[String]) -> Result<Vec<SocketAddr>, String> {
    let list: Vec<String> = if gateways.is_empty() {
        vec!["127.0.0.1:4433".into()]
    } else {
        gateways.to_vec()
    };
    let mut out = Vec::new();
    for g in &list {
        let addr = g
            .to_socket_addrs()
            .map_err(|e| format!("gateway {g:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("gateway {g:?} has no address"))?;
        out.push(addr);
    }
    Ok(out)
}

pub async fn run(args: Args) -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let identity = Identity::load(&args.key).map_err(|e| e.to_string())?;
    let to: PeerId = args
        .to
        .parse()
        .map_err(|e| format!("--to {:?}: {e}", args.to))?;
    let trust = if args.insecure {
        GatewayTrust::AnyCertificate
    } else if args.fingerprints.is_empty() {
        return Err(
            "give the gateway's --fingerprint (it prints it at start) or --insecure".into(),
        );
    } else {
        GatewayTrust::pinned_hex(args.fingerprints.iter().map(String::as_str))?
    };
    let config = SessionConfig::new(
        resolve(&args.gateways)?,
        AppCredentials::new(args.app, args.secret),
        identity,
    )
    .trust(trust);
    let session = Peer::connect(config).await.map_err(|e| e.to_string())?;
    println!("I am {}", session.peer_id());
    let mut inbox = session.messages().ok_or("inbox already taken")?;
    let mut presence = session.presence_events();
    match session.subscribe_presence(std::slice::from_ref(&to)).await {
        Ok(states) => {
            for s in states {
                let word = if s.presence == Presence::Online {
                    "online"
                } else {
                    "offline"
                };
                println!("* {} is {word}", s.peer);
            }
        }
        Err(e) => eprintln!("* presence unavailable: {e}"),
    }
    let mut state = session.state();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            message = inbox.recv() => match message {
                Some(m) => println!("{}: {}", m.sender, String::from_utf8_lossy(&m.payload)),
                None => break,
            },
            Ok(update) = presence.recv() => {
                let word = if update.presence == Presence::Online { "online" } else { "offline" };
                println!("* {} is {word}", update.peer);
            }
            Ok(()) = state.changed() => {
                let now = state.borrow_and_update().clone();
                match now {
                    ConnectionState::Connected { gateway, .. } => println!("* connected via {gateway}"),
                    ConnectionState::Reconnecting { reason } => println!("* reconnecting ({reason})"),
                    ConnectionState::Closed { reason } => return Err(format!("session closed: {reason}")),
                }
            }
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if let Err(e) = session.send_message(&to, line).await {
                        println!("* not sent: {e}");
                    }
                }
                _ => break,
            },
        }
    }
    session.close().await;
    Ok(())
}
