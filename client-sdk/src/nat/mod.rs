//! NAT reports: what the NAT (or firewall) in front of this peer does, measured
//! with RFC 5780 behaviour discovery from the peer's one UDP socket.
//!
//! [`nat_report`] drives the sans-IO [`NatDiscovery`](quickp2p_wire::nat::NatDiscovery)
//! machine on a `tokio` [`UdpSocket`](tokio::net::UdpSocket) against a STUN server
//! pair (quickP2P's `stun-a`/`stun-b`, or any RFC 5780 server such as coturn) and
//! returns a [`NatReport`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use quickp2p::nat::{NatReportOptions, StunServer, nat_report};
//!
//! let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
//! let stun = "stun.example.net".parse::<StunServer>()?.resolve_for(socket.local_addr()?).await?;
//! let report = nat_report(&socket, stun, NatReportOptions::default()).await?;
//! println!("{} ({})", report.label(), report.rfc4787_description());
//! # Ok(()) }
//! ```
//!
//! # Sharing the socket
//!
//! The report runs on the caller's socket — the same one the SDK later uses for
//! QUIC and TURN — and, while it runs, must be the socket's **only reader**.
//! Datagrams that are not STUN answers to the report's own transactions are not
//! dropped silently: [`nat_report`] forwards them to
//! [`NatReportOptions::unclaimed`] (a bounded channel; when it is full or closed,
//! or not set, each dropped datagram is logged with `tracing` at warn or debug
//! level), and [`nat_report_with`] hands each one to a callback instead.
//!
//! # Timing
//!
//! With the default [`NatDiscoveryConfig`] a report takes about three round trips
//! when the NAT lets the server's change-address answers through, plus one
//! transaction timeout (1.75 s on paths under ~80 ms) when it filters; it never
//! takes longer than [`NatDiscoveryConfig::budget`] (10.5 s). A server that does
//! not answer at all is reported as [`NatReportError::Unreachable`] after 3.5 s.

mod driver;
mod error;
mod json;
mod server;

pub(crate) use driver::route_source;
pub use driver::{NatReportOptions, UnclaimedDatagram, nat_report, nat_report_with};
pub use error::NatReportError;
pub use json::{report_json, report_json_pretty};
pub use quickp2p_wire::nat::{
    FilteringBehaviour, MappingBehaviour, NatDiscoveryConfig, NatReport, ReflexiveAddr, RttSample,
    UnknownReason,
};
pub use server::{DEFAULT_STUN_PORT, InvalidStunServer, StunServer};
