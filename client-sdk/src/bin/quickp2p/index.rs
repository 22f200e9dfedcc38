//! `quickp2p publish` and `quickp2p find`: publish attributes (and stay online, since published
//! attributes live as long as the peer's presence), and look peers up by id or attribute.
//!
//! `publish` prints the own record, then stays online until Ctrl-C, the end of standard input, or
//! `--for SECONDS`. `find` prints one line per peer, `PEER_ID\tonline|offline\tkey=value …`,
//! ascending by the matched value then peer id, and exits.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::time::Duration;

use quickp2p::identity::Identity;
use quickp2p::session::{
    AppCredentials, GatewayTrust, Peer, PeerId, PeerInfo, PeerQuery, Session, SessionConfig,
};
use tokio::io::AsyncBufReadExt as _;

/// How to reach and log in to the network (shared by `publish` and `find`).
#[derive(Debug, clap::Args)]
pub struct Connect {
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

impl Connect {
    async fn session(self) -> Result<Session, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let identity = Identity::load(&self.key).map_err(|e| e.to_string())?;
        let trust = if self.insecure {
            GatewayTrust::AnyCertificate
        } else if self.fingerprints.is_empty() {
            return Err(
                "give the gateway's --fingerprint (it prints it at start) or --insecure".into(),
            );
        } else {
            GatewayTrust::pinned_hex(self.fingerprints.iter().map(String::as_str))?
        };
        let config = SessionConfig::new(
            resolve(&self.gateways)?,
            AppCredentials::new(self.app, self.secret),
            identity,
        )
        .trust(trust);
        Peer::connect(config).await.map_err(|e| e.to_string())
    }
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

/// Flags of `quickp2p publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    #[command(flatten)]
    connect: Connect,
    /// Attributes to publish, KEY=VALUE (the value may be empty or contain '=').
    #[arg(value_name = "KEY=VALUE", required = true)]
    attributes: Vec<String>,
    /// Replace every published attribute (default: merge with earlier ones).
    #[arg(long)]
    replace: bool,
    /// Stay online this many seconds, then log out (default: until Ctrl-C or end of input).
    #[arg(long = "for", value_name = "SECONDS")]
    stay_for: Option<u64>,
}

/// Flags of `quickp2p find`.
#[derive(Debug, clap::Args)]
pub struct FindArgs {
    #[command(flatten)]
    connect: Connect,
    /// Look up one peer by id (64 hex digits) instead of querying.
    #[arg(long, conflicts_with_all = ["attribute", "prefix"])]
    peer: Option<String>,
    /// KEY=VALUE: peers whose attribute KEY equals VALUE (with --prefix: starts with VALUE).
    #[arg(value_name = "KEY=VALUE", required_unless_present = "peer")]
    attribute: Option<String>,
    /// Match VALUE as a prefix.
    #[arg(long)]
    prefix: bool,
    /// Most peers to print. [default: 100]
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

fn split_pair(pair: &str) -> Result<(String, String), String> {
    pair.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{pair:?} is not KEY=VALUE"))
}

fn line(info: &PeerInfo) -> String {
    let state = if info.is_online() {
        "online"
    } else {
        "offline"
    };
    let attrs: Vec<String> = info
        .attributes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{}\t{state}\t{}", info.peer, attrs.join(" "))
}

/// `quickp2p publish`.
pub async fn publish(args: PublishArgs) -> Result<(), String> {
    let attributes = args
        .attributes
        .iter()
        .map(|a| split_pair(a))
        .collect::<Result<Vec<_>, _>>()?;
    let session = args.connect.session().await?;
    let published = if args.replace {
        session.replace_attributes(attributes).await
    } else {
        session.publish(attributes).await
    };
    let record = match published {
        Ok(r) => r,
        Err(e) => {
            session.close().await;
            return Err(e.to_string());
        }
    };
    println!("{}", line(&record));
    eprintln!("published; the attributes stay visible while this peer is online (Ctrl-C to stop)");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let until = async {
        match args.stay_for {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = until => {}
        // the end of standard input ends the presence too (unless --for is given)
        () = async {
            if args.stay_for.is_some() {
                std::future::pending::<()>().await;
            }
            while let Ok(Some(_)) = lines.next_line().await {}
        } => {}
    }
    session.close().await;
    Ok(())
}

/// `quickp2p find`.
pub async fn find(args: FindArgs) -> Result<(), String> {
    let lookup = match &args.peer {
        Some(p) => Some(
            p.parse::<PeerId>()
                .map_err(|e| format!("--peer {p:?}: {e}"))?,
        ),
        None => None,
    };
    let query = match &args.attribute {
        Some(a) => {
            let (key, value) = split_pair(a)?;
            Some(if args.prefix {
                PeerQuery::prefix(key, value)
            } else {
                PeerQuery::equal(key, value)
            })
        }
        None => None,
    };
    let session = args.connect.session().await?;
    let result = run_find(&session, lookup, query, args.limit).await;
    session.close().await;
    result
}

async fn run_find(
    session: &Session,
    lookup: Option<PeerId>,
    query: Option<PeerQuery>,
    limit: u32,
) -> Result<(), String> {
    if let Some(peer) = lookup {
        let info = session.lookup(&peer).await.map_err(|e| e.to_string())?;
        println!("{}", line(&info));
        return Ok(());
    }
    let Some(query) = query else {
        return Err("give KEY=VALUE or --peer".into());
    };
    let mut printed = 0u32;
    let mut cursor: Option<String> = None;
    while printed < limit {
        let page = session
            .find(&query, cursor.as_deref(), (limit - printed).min(1000))
            .await
            .map_err(|e| e.to_string())?;
        for info in &page.peers {
            println!("{}", line(info));
            printed += 1;
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok(())
}
