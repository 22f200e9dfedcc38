//! The smallest chat peer: log in, print incoming messages, send each line typed to one peer.
//!
//! ```text
//! cargo run -p quickp2p --example chat -- 127.0.0.1:4433 APP_ID APP_SECRET PEER_ID
//! ```
//!
//! A fresh key is made on every run (the `quickp2p chat` CLI takes a key file instead); the
//! gateway certificate is not checked (development only: pin it with `GatewayTrust::Pinned`).

use quickp2p::identity::Identity;
use quickp2p::session::{AppCredentials, GatewayTrust, Peer, SessionConfig};
use tokio::io::AsyncBufReadExt as _;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [gateway, app, secret, to] = args.as_slice() else {
        eprintln!("usage: chat GATEWAY_ADDR APP_ID APP_SECRET PEER_ID");
        std::process::exit(2);
    };
    let identity = Identity::generate()?;
    let config = SessionConfig::new(
        vec![gateway.parse()?],
        AppCredentials::new(app.as_str(), secret.as_str()),
        identity,
    )
    .trust(GatewayTrust::AnyCertificate);
    let session = Peer::connect(config).await?;
    println!("I am {}", session.peer_id());
    let to = to.parse()?;
    let mut inbox = session.messages().ok_or("inbox already taken")?;
    tokio::spawn(async move {
        while let Some(m) = inbox.recv().await {
            println!("{}: {}", m.sender, String::from_utf8_lossy(&m.payload));
        }
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if let Err(e) = session.send_message(&to, line).await {
            eprintln!("not sent: {e}");
        }
    }
    session.close().await;
    Ok(())
}
