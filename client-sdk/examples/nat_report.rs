//! Measures this host's NAT with the SDK's NAT report, on the one UDP socket a
//! peer would use for everything, and prints it.
//!
//! ```text
//! cargo run -p quickp2p --example nat_report -- 192.0.2.1:3478
//! ```
//!
//! The argument is a STUN server supporting RFC 5780 (HOST[:PORT], default
//! 127.0.0.1:3478: the all-in-one supernode's stun-a).

use quickp2p::nat::{NatReportOptions, StunServer, nat_report};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server: StunServer = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3478".to_owned())
        .parse()?;

    // The peer's one socket: later also QUIC to the gateway, TURN and tunnels.
    let socket = UdpSocket::bind("0.0.0.0:0").await?;
    let stun = server.resolve_for(socket.local_addr()?).await?;

    // Anything that is not part of the report (say, an early QUIC packet) comes
    // out here instead of being lost.
    let (unclaimed, mut other_traffic) = mpsc::channel(64);
    let options = NatReportOptions::default().with_unclaimed(unclaimed);
    let report = nat_report(&socket, stun, options).await?;

    println!("{} ({})", report.label(), report.rfc4787_description());
    println!("public address: {:?}", report.public_address);
    println!("hairpinning:    {:?}", report.hairpinning);
    println!("port preserved: {:?}", report.port_preserving);
    for reflexive in &report.reflexive {
        println!("  {} saw us as {}", reflexive.server, reflexive.mapped);
    }
    while let Ok(datagram) = other_traffic.try_recv() {
        println!(
            "(not STUN: {} bytes from {})",
            datagram.payload.len(),
            datagram.from
        );
    }
    Ok(())
}
