//! One allocation's state that both directions of the data path need: who the client is, what
//! its relayed address is, its permissions and channel bindings ([`PeerTable`]), and its
//! counters. The worker that owns the allocation (client side) and the allocation's peer-side
//! task share it as an `Arc<AllocationInfo>`; the peer table sits behind a mutex that each
//! datagram takes for a few comparisons (never contended for long: installs and lookups only).
//!
//! Also here: the pure framing of what goes to the client — the 4-byte ChannelData header written
//! in place in front of a received payload, and Data indications (RFC 8656 §11.6, §12.4).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use quickp2p_wire::stun::{
    Attribute, EncodeError, MessageBuilder, MessageClass, MessageType, Method, TransactionId,
};

use crate::config::{CHANNEL_LIFETIME, CHANNEL_REUSE_DELAY, PERMISSION_LIFETIME};

use super::state::{UserEntry, lock};

/// A permission (RFC 8656 §9): datagrams from and to this IP are relayed until `expires`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Permission {
    ip: IpAddr,
    expires: Instant,
}

/// A channel binding (RFC 8656 §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Binding {
    channel: u16,
    peer: SocketAddr,
    expires: Instant,
}

/// Why a ChannelBind cannot be done (400, 508).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindRefusal {
    /// The channel is bound to another peer, or the peer to another channel (400).
    Conflict,
    /// The allocation has as many channels as allowed (508).
    Full,
}

/// What to do with a datagram a peer sent to the relayed address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerVerdict {
    /// Send it to the client as ChannelData on this channel number.
    Channel(u16),
    /// Send it to the client in a Data indication.
    Indication,
    /// No permission for the peer's IP: drop it.
    NoPermission,
}

/// The permissions and channel bindings of one allocation. Lists are short (bounded by the
/// configured maxima; typically one or two entries), so they are scanned, not hashed.
#[derive(Debug, Default, Clone)]
pub struct PeerTable {
    permissions: Vec<Permission>,
    bindings: Vec<Binding>,
}

impl PeerTable {
    /// Whether `ip` has a live permission at `now`.
    pub fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = ip.to_canonical();
        self.permissions
            .iter()
            .any(|p| p.ip == ip && p.expires > now)
    }

    /// The peer a live channel `channel` leads to, if its permission is live too.
    pub fn channel_peer(&self, channel: u16, now: Instant) -> Option<SocketAddr> {
        let binding = self
            .bindings
            .iter()
            .find(|b| b.channel == channel && b.expires > now)?;
        self.permitted(binding.peer.ip(), now)
            .then_some(binding.peer)
    }

    /// What to do with a datagram from `peer` at `now`.
    pub fn verdict(&self, peer: SocketAddr, now: Instant) -> PeerVerdict {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        if !self.permitted(peer.ip(), now) {
            return PeerVerdict::NoPermission;
        }
        match self
            .bindings
            .iter()
            .find(|b| b.peer == peer && b.expires > now)
        {
            Some(b) => PeerVerdict::Channel(b.channel),
            None => PeerVerdict::Indication,
        }
    }

    /// Installs or refreshes permissions for every IP of `ips` (all or none: `false` when they
    /// would exceed `max`).
    pub fn install_permissions(&mut self, ips: &[IpAddr], now: Instant, max: usize) -> bool {
        self.permissions.retain(|p| p.expires > now);
        let new = ips
            .iter()
            .enumerate()
            .filter(|(i, ip)| {
                !self.permissions.iter().any(|p| p.ip == ip.to_canonical())
                    && !ips[..*i].contains(ip)
            })
            .count();
        if self.permissions.len() + new > max {
            return false;
        }
        for ip in ips {
            self.permit(ip.to_canonical(), now);
        }
        true
    }

    fn permit(&mut self, ip: IpAddr, now: Instant) {
        let expires = now + PERMISSION_LIFETIME;
        match self.permissions.iter_mut().find(|p| p.ip == ip) {
            Some(p) => p.expires = expires,
            None => self.permissions.push(Permission { ip, expires }),
        }
    }

    /// Binds (or refreshes) `channel` to `peer` and refreshes the peer's permission (RFC 8656
    /// §12.2). A channel or peer bound otherwise stays so until 5 minutes after its binding
    /// expired.
    pub fn bind(
        &mut self,
        channel: u16,
        peer: SocketAddr,
        now: Instant,
        max_channels: usize,
        max_permissions: usize,
    ) -> Result<(), BindRefusal> {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        self.bindings
            .retain(|b| b.expires + CHANNEL_REUSE_DELAY > now);
        let existing = self
            .bindings
            .iter()
            .position(|b| b.channel == channel || b.peer == peer);
        if let Some(i) = existing {
            let b = self.bindings.get(i).copied();
            if b.is_some_and(|b| b.channel != channel || b.peer != peer) {
                return Err(BindRefusal::Conflict);
            }
        } else if self.bindings.len() >= max_channels {
            return Err(BindRefusal::Full);
        }
        if !self.install_permissions(&[peer.ip()], now, max_permissions) {
            return Err(BindRefusal::Full);
        }
        let expires = now + CHANNEL_LIFETIME;
        match existing.and_then(|i| self.bindings.get_mut(i)) {
            Some(b) => b.expires = expires,
            None => self.bindings.push(Binding {
                channel,
                peer,
                expires,
            }),
        }
        Ok(())
    }

    /// Forgets expired permissions and bindings past their reuse delay.
    pub fn purge(&mut self, now: Instant) {
        self.permissions.retain(|p| p.expires > now);
        self.bindings
            .retain(|b| b.expires + CHANNEL_REUSE_DELAY > now);
    }

    /// (live permissions, live channels) at `now`.
    pub fn counts(&self, now: Instant) -> (usize, usize) {
        (
            self.permissions.iter().filter(|p| p.expires > now).count(),
            self.bindings.iter().filter(|b| b.expires > now).count(),
        )
    }
}

/// Packets and bytes one way, on a cache line of their own (the two directions are counted by
/// different threads).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct DirectionTally {
    packets: AtomicU64,
    bytes: AtomicU64,
}

impl DirectionTally {
    /// Adds `packets` datagrams of `bytes` payload bytes in all.
    pub fn add(&self, packets: u64, bytes: u64) {
        self.packets.fetch_add(packets, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// (packets, bytes).
    pub fn get(&self) -> (u64, u64) {
        (
            self.packets.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// An allocation as its two data-path halves and the control API see it.
#[derive(Debug)]
pub struct AllocationInfo {
    /// The client's transport address (the 5-tuple's client side).
    pub client: SocketAddr,
    /// The relayed transport address as advertised in XOR-RELAYED-ADDRESS.
    pub relayed: SocketAddr,
    /// The TURN username it was made with.
    pub username: Box<str>,
    /// The user it counts against.
    pub user: Arc<UserEntry>,
    /// When it was made, Unix milliseconds.
    pub created_unix_ms: u64,
    expires_unix_ms: AtomicU64,
    /// Permissions and channels.
    pub peers: Mutex<PeerTable>,
    /// Client → peer traffic.
    pub to_peer: DirectionTally,
    /// Peer → client traffic.
    pub to_client: DirectionTally,
}

impl AllocationInfo {
    pub(crate) fn new(
        client: SocketAddr,
        relayed: SocketAddr,
        username: &str,
        user: Arc<UserEntry>,
        created_unix_ms: u64,
        expires_unix_ms: u64,
    ) -> AllocationInfo {
        AllocationInfo {
            client,
            relayed,
            username: username.into(),
            user,
            created_unix_ms,
            expires_unix_ms: AtomicU64::new(expires_unix_ms),
            peers: Mutex::new(PeerTable::default()),
            to_peer: DirectionTally::default(),
            to_client: DirectionTally::default(),
        }
    }

    /// When it expires unless refreshed, Unix milliseconds.
    pub fn expires_unix_ms(&self) -> u64 {
        self.expires_unix_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn set_expires_unix_ms(&self, ms: u64) {
        self.expires_unix_ms.store(ms, Ordering::Relaxed);
    }

    /// What to do with a datagram from `peer` at `now`.
    pub fn verdict(&self, peer: SocketAddr, now: Instant) -> PeerVerdict {
        lock(&self.peers).verdict(peer, now)
    }

    /// (live permissions, live channels) at `now`.
    pub fn counts(&self, now: Instant) -> (usize, usize) {
        lock(&self.peers).counts(now)
    }
}

/// Writes the ChannelData header for `len` payload bytes into `header` (the 4 bytes right in
/// front of the payload in the receive buffer), so header and payload go out as one slice.
pub fn write_channel_header(header: &mut [u8; 4], channel: u16, len: usize) {
    let [c0, c1] = channel.to_be_bytes();
    let [l0, l1] = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
    *header = [c0, c1, l0, l1];
}

/// Reads a ChannelData datagram from a client (RFC 8656 §12.4): the channel number and where the
/// data is. Padding to 4 bytes is accepted, not required. The number is not range-checked here.
pub fn parse_channel_data(datagram: &[u8]) -> Option<(u16, std::ops::Range<usize>)> {
    let ([c0, c1, l0, l1], rest) = datagram.split_first_chunk::<4>()?;
    let channel = u16::from_be_bytes([*c0, *c1]);
    let len = usize::from(u16::from_be_bytes([*l0, *l1]));
    let padding = rest.len().checked_sub(len)?;
    if padding > (4 - len % 4) % 4 {
        return None;
    }
    Some((channel, 4..4 + len))
}

/// Encodes a Data indication (XOR-PEER-ADDRESS, DATA) into `out` (cleared first).
pub fn encode_data_indication(
    peer: SocketAddr,
    data: &[u8],
    transaction_id: TransactionId,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    out.clear();
    let attributes = [Attribute::XorPeerAddress(peer), Attribute::Data(data)];
    MessageBuilder::new(
        MessageType::new(Method::DATA, MessageClass::Indication),
        transaction_id,
    )
    .attributes(&attributes)
    .encode_into(out)
}

/// A cheap source of distinct transaction ids for indications (which need no unpredictability:
/// nothing answers them): a 64-bit counter after a random 32-bit prefix.
#[derive(Debug, Clone)]
pub struct IndicationIds {
    prefix: [u8; 4],
    counter: u64,
}

impl IndicationIds {
    /// Ids starting from `seed`.
    pub fn new(seed: u64) -> IndicationIds {
        IndicationIds {
            prefix: ((seed >> 32) as u32).to_be_bytes(),
            counter: seed,
        }
    }

    /// The next id.
    pub fn next_id(&mut self) -> TransactionId {
        self.counter = self.counter.wrapping_add(1);
        let mut id = [0u8; 12];
        let (head, tail) = id.split_at_mut(4);
        head.copy_from_slice(&self.prefix);
        tail.copy_from_slice(&self.counter.to_be_bytes());
        TransactionId::new(id)
    }
}
