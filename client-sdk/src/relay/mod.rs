//! The relay client: a TURN allocation (RFC 8656 over UDP) on a quickP2P relay — or any TURN
//! server — used from the peer's one UDP socket, the fallback path when no direct path works.
//!
//! * [`TurnClient`] is the sans-IO core: allocation with long-term credentials (401 → retry with
//!   credentials, 438 → retry with the new nonce), retransmissions, refreshes before expiry,
//!   permissions, channel bindings, and framing (ChannelData on bound channels, Send/Data
//!   indications otherwise). It never touches a socket or a clock.
//! * [`RelayClient`] runs it on a tokio [`UdpSocket`](tokio::net::UdpSocket): either as the
//!   socket's only reader ([`RelayClient::new`], [`RelayClient::connect`]) or fed by the
//!   caller's own demultiplexer ([`RelayClient::with_feed`]).
//!
//! Errors are typed: [`RelayError`] (socket, [`TurnError`] from the server — 401/441
//! unauthorized, 403 forbidden peer, 486 quota, 508 capacity or draining —, [`ClientError`] for
//! calls made too early, allocation lost, closed).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use quickp2p::relay::{RelayClient, RelayCredentials, RelayOptions};
//!
//! let socket = Arc::new(tokio::net::UdpSocket::bind("0.0.0.0:0").await?);
//! let relay = "203.0.113.10:3482".parse()?;
//! let credentials = RelayCredentials { username: "1700003600:alice".into(), password: "…".into() };
//! let (client, allocation) = RelayClient::connect(socket, relay, credentials, RelayOptions::default()).await?;
//! println!("peers reach me at {}", allocation.relayed);
//!
//! let peer = "198.51.100.7:50000".parse()?;       // the other peer's relayed address
//! client.bind_channel(peer).await?;               // permission + channel, kept fresh
//! client.send_to(b"hello", peer).await?;
//! let mut buf = [0u8; 1500];
//! let (n, from) = client.recv_from(&mut buf).await?;
//! # let _ = (n, from);
//! client.close().await?;                          // release the allocation
//! # Ok(()) }
//! ```
//!
//! # Sharing the socket
//!
//! When something else reads the socket too (QUIC, STUN), demultiplex each datagram by source
//! and first byte and hand the TURN server's to the [`RelayFeed`]:
//!
//! ```no_run
//! # async fn demo(socket: std::sync::Arc<tokio::net::UdpSocket>, credentials: quickp2p::relay::RelayCredentials) -> Result<(), Box<dyn std::error::Error>> {
//! use quickp2p::relay::{RelayClient, RelayOptions};
//! use quickp2p::wire::{DatagramSource, PacketKind, classify};
//!
//! let relay = "203.0.113.10:3482".parse()?;
//! let (client, feed) = RelayClient::with_feed(socket.clone(), relay, credentials, RelayOptions::default());
//! tokio::spawn(async move {
//!     let mut buf = [0u8; 65536];
//!     while let Ok((n, from)) = socket.recv_from(&mut buf).await {
//!         let source = if from == feed.server() { DatagramSource::TurnServer } else { DatagramSource::Other };
//!         match classify(&buf[..n], source) {
//!             PacketKind::ChannelData | PacketKind::Stun if from == feed.server() => { feed.push(from, &buf[..n]); }
//!             _ => { /* QUIC, other STUN, … */ }
//!         }
//!     }
//! });
//! let allocation = client.allocate().await?;
//! # let _ = allocation;
//! # Ok(()) }
//! ```

mod client;
mod driver;
mod error;
#[cfg(test)]
mod tests;

pub use client::{Received, RequestId, Transmit, TurnClient, TurnClientConfig, TurnEvent};
pub use driver::{RelayAllocation, RelayClient, RelayCredentials, RelayFeed, RelayOptions};
pub use error::{ClientError, RelayError, TurnError};
