//! quickP2P client SDK: what peer programs embed.
//!
//! A peer binds **one UDP socket** and uses it for everything — STUN, QUIC to the
//! gateway, TURN, hole punching and tunnels — so that the NAT mapping the STUN
//! services observe is the mapping later used for punching. The SDK grows as the
//! supernode roles land; today it offers
//!
//! * [`session`]: peer sessions — [`session::Peer::connect`] logs in through any
//!   gateway (QUIC over the one socket), then instant messages, presence, and
//!   automatic reconnects to another gateway;
//! * [`identity`]: the peer's Ed25519 key pair and key files;
//! * [`nat`]: the NAT report — RFC 5780 behaviour discovery (mapping, filtering,
//!   hairpinning, port preservation, reflexive addresses) driven on the caller's
//!   socket by [`nat::nat_report`];
//! * [`wire`]: the sans-IO codecs and state machines underneath
//!   (`quickp2p-wire`).
//!
//! The crate also builds the `quickp2p` command-line tool (feature `cli`, on by
//! default): `quickp2p nat-report --stun HOST[:PORT]`, `quickp2p keygen`,
//! `quickp2p chat --gateway ADDR --app ID --secret S --key FILE --to PEER`.

pub mod identity;
pub mod nat;
pub mod p2p;
pub mod punch;
pub mod relay;
pub mod session;
pub mod tunnel;

pub use quickp2p_wire as wire;
