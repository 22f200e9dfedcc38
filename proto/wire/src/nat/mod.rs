//! NAT behaviour discovery (RFC 5780), client side, sans IO.
//!
//! [`NatDiscovery`] is a state machine in the quinn-proto style: it never touches
//! a socket or a clock. The caller passes `now` in, feeds it datagrams with
//! [`NatDiscovery::handle_datagram`], sends what [`NatDiscovery::poll_transmit`]
//! yields, and sleeps until [`NatDiscovery::poll_timeout`]. When it is done,
//! [`NatDiscovery::result`] is a [`NatReport`]: mapping and filtering behaviour in
//! RFC 4787 terms, hairpinning, port preservation, the reflexive addresses seen per
//! server address, whether there is a NAT at all, and round-trip times.
//!
//! ```
//! use std::time::Instant;
//! use quickp2p_wire::nat::{NatDiscovery, NatDiscoveryConfig};
//!
//! let now = Instant::now();
//! let server = "192.0.2.1:3478".parse()?;
//! let local = "10.0.0.2:40000".parse()?;
//! let mut discovery = NatDiscovery::new(server, local, NatDiscoveryConfig::default(), [7; 32], now);
//! let first = discovery.poll_transmit(now).expect("test I is due at once");
//! assert_eq!(first.destination, server);
//! // … send it; feed answers to handle_datagram; call handle_timeout at poll_timeout …
//! # Ok::<(), std::net::AddrParseError>(())
//! ```
//!
//! The async driver that runs this on a tokio socket lives in the SDK
//! (`quickp2p::nat`).

mod config;
mod discovery;
mod report;

pub use config::NatDiscoveryConfig;
pub use discovery::{NatDiscovery, Transmit};
pub use report::{
    FilteringBehaviour, MAX_REFLEXIVE, MappingBehaviour, NatReport, ReflexiveAddr, RttSample,
    UnknownReason,
};

#[cfg(test)]
mod tests;
