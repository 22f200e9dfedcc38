//! quickP2P wire formats: the sans-IO codecs that sit under every socket of the
//! SDK, the STUN services and the relay.
//!
//! This crate owns the bytes on the wire and nothing else: no sockets, no clock,
//! no async runtime, no randomness. It offers
//!
//! * [`stun`]: STUN messages (RFC 8489) with the RFC 5780, TURN (RFC 8656) and ICE
//!   (RFC 8445) attributes; a zero-copy decoder, buffer-writing encoders with exact
//!   `encoded_len`, MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT, short- and long-term
//!   credentials;
//! * [`channel_data`]: TURN ChannelData framing (RFC 8656 §12.4);
//! * [`classify`](mod@classify): first-byte demultiplexing of one UDP socket shared by STUN, QUIC
//!   and TURN (RFC 7983 / RFC 9443);
//! * [`nat`]: the RFC 5780 NAT behaviour discovery state machine ([`NatDiscovery`]) and
//!   the [`NatReport`] it produces;
//! * [`probe`]: authenticated hole-punching probes, ICE-style connectivity checks keyed with a
//!   handshake's probe key ([`probe::ProbeCodec`]).
//!
//! Parsing never panics and never allocates: every decoder borrows its input and
//! bounds how much it looks at (see [`stun::MAX_ATTRIBUTES`]); malformed input is a
//! typed error. The RFC 5769 test vectors are reproduced byte for byte in the tests,
//! and `fuzz/` holds cargo-fuzz targets for the decoders.

pub mod channel_data;
pub mod classify;
pub mod nat;
pub mod probe;
pub mod stun;

pub use channel_data::{ChannelData, ChannelDataError, ChannelDataPadding, ChannelNumber};
pub use classify::{DatagramSource, PacketKind, classify, is_stun};
pub use nat::{FilteringBehaviour, MappingBehaviour, NatDiscovery, NatDiscoveryConfig, NatReport};
