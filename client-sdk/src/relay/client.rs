//! The sans-IO TURN client (RFC 8656 over UDP): one allocation on one server, from the caller's
//! socket, with no socket and no clock of its own.
//!
//! The caller feeds it every datagram that came from the TURN server
//! ([`TurnClient::handle_datagram`]: a response, a Data indication or ChannelData), sends what
//! [`TurnClient::poll_transmit`] returns to the server, calls [`TurnClient::handle_timeout`] at
//! [`TurnClient::poll_timeout`], and reads [`TurnEvent`]s. It handles the long-term credential
//! exchange (the first Allocate is answered 401 with REALM and NONCE; a 438 brings a new nonce),
//! retransmits requests (RTO 500 ms doubling: sends at 0, 0.5, 1.5, 3.5, 7.5 s, failure at 12 s), refreshes the allocation before it expires,
//! permissions every 4 minutes and channel bindings every 9 minutes, and frames application data:
//! ChannelData on a bound channel, a Send indication otherwise ([`TurnClient::send_to`]).
//!
//! ```
//! use std::time::Instant;
//! use quickp2p::relay::{TurnClient, TurnClientConfig};
//!
//! let server = "192.0.2.1:3482".parse().unwrap();
//! let mut client = TurnClient::new(server, "1700000000:alice", "password", TurnClientConfig::default(), 7);
//! client.allocate(Instant::now());
//! let first = client.poll_transmit(Instant::now()).unwrap();
//! assert_eq!(first.destination, server);
//! // … send it, feed the answers to `client.handle_datagram`, wait for TurnEvent::Allocated
//! ```

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use quickp2p_wire::stun::{
    Attribute, AttributeType, LongTermKey, Message, MessageBuilder, MessageClass, MessageType,
    Method, PROTOCOL_UDP, TransactionId,
};
use quickp2p_wire::{ChannelData, ChannelDataPadding, ChannelNumber};

use super::error::{ClientError, TurnError};

/// Timers of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TurnClientConfig {
    /// Allocation lifetime to ask for; `None` takes the server's default (10 minutes).
    pub lifetime: Option<Duration>,
    /// First retransmission timeout; it doubles after each send.
    pub initial_rto: Duration,
    /// Most sends of one request.
    pub max_sends: u32,
    /// A request with no answer after this long has failed.
    pub transaction_timeout: Duration,
}

impl Default for TurnClientConfig {
    fn default() -> TurnClientConfig {
        TurnClientConfig {
            lifetime: None,
            initial_rto: Duration::from_millis(500),
            max_sends: 5,
            transaction_timeout: Duration::from_millis(12_000),
        }
    }
}

impl TurnClientConfig {
    /// The same timers with `timeout` as the transaction timeout.
    pub fn with_transaction_timeout(mut self, timeout: Duration) -> TurnClientConfig {
        self.transaction_timeout = timeout;
        self
    }

    /// The same timers asking for `lifetime`.
    pub fn with_lifetime(mut self, lifetime: Duration) -> TurnClientConfig {
        self.lifetime = Some(lifetime);
        self
    }
}

/// Identifies one request the caller asked for, in later events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

/// A datagram to send to the TURN server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The server.
    pub destination: SocketAddr,
    /// The bytes.
    pub payload: Vec<u8>,
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TurnEvent {
    /// The allocation exists.
    Allocated {
        /// The relayed transport address peers send to.
        relayed: SocketAddr,
        /// Our address as the server sees it (server-reflexive).
        mapped: Option<SocketAddr>,
        /// Granted lifetime (refreshed automatically).
        lifetime: Duration,
    },
    /// The Allocate failed.
    AllocationFailed(TurnError),
    /// A refresh failed: the allocation is gone or will be.
    AllocationLost(TurnError),
    /// The allocation was released ([`TurnClient::release`]).
    Released,
    /// A permission was installed (request from [`TurnClient::create_permission`]).
    PermissionCreated {
        /// The request.
        request: RequestId,
        /// The peer IP.
        ip: IpAddr,
    },
    /// A channel was bound (request from [`TurnClient::bind_channel`]).
    ChannelBound {
        /// The request.
        request: RequestId,
        /// The peer.
        peer: SocketAddr,
        /// The channel number.
        channel: u16,
    },
    /// A permission or channel request failed.
    RequestFailed {
        /// The request.
        request: RequestId,
        /// Why.
        error: TurnError,
    },
}

/// What [`TurnClient::handle_datagram`] made of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Not from the server, or not TURN (e.g. a STUN answer to someone else's transaction):
    /// hand it to whoever else reads the socket.
    NotOurs,
    /// A TURN message handled inside (a response, or data for an unknown channel).
    Consumed,
    /// Application data from `peer`: `payload` is where it is in the datagram.
    Data {
        /// The peer that sent it to our relayed address.
        peer: SocketAddr,
        /// Its place in the datagram.
        payload: Range<usize>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Allocate,
    Refresh { lifetime: u32 },
    Permission { ip: IpAddr },
    Channel { peer: SocketAddr, channel: u16 },
}

#[derive(Debug)]
struct Transaction {
    id: TransactionId,
    request: Option<RequestId>,
    kind: Kind,
    bytes: Vec<u8>,
    authenticated: bool,
    next_send: Instant,
    sends: u32,
    deadline: Instant,
    retries: u8,
}

#[derive(Debug, Clone, Copy)]
struct PermissionEntry {
    ip: IpAddr,
    installed: bool,
    refresh_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct ChannelEntry {
    channel: u16,
    peer: SocketAddr,
    bound: bool,
    refresh_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Allocating,
    Allocated,
    Releasing,
    Closed,
}

/// Permissions last 300 s; refresh after 240.
const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// Channels last 600 s; refresh after 540.
const CHANNEL_REFRESH: Duration = Duration::from_secs(540);

/// One TURN allocation, sans-IO. See the [module documentation](self).
#[derive(Debug)]
pub struct TurnClient {
    server: SocketAddr,
    username: String,
    password: String,
    config: TurnClientConfig,
    realm: Option<String>,
    nonce: Option<Vec<u8>>,
    key: Option<LongTermKey>,
    state: State,
    relayed: Option<SocketAddr>,
    mapped: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    transactions: Vec<Transaction>,
    permissions: Vec<PermissionEntry>,
    channels: Vec<ChannelEntry>,
    next_channel: u16,
    events: VecDeque<TurnEvent>,
    rng: u64,
    next_request: u64,
}

impl TurnClient {
    /// A client for the TURN server at `server` with long-term credentials; `seed` feeds the
    /// transaction ids (pass something random).
    pub fn new(
        server: SocketAddr,
        username: impl Into<String>,
        password: impl Into<String>,
        config: TurnClientConfig,
        seed: u64,
    ) -> TurnClient {
        TurnClient {
            server,
            username: username.into(),
            password: password.into(),
            config,
            realm: None,
            nonce: None,
            key: None,
            state: State::Idle,
            relayed: None,
            mapped: None,
            refresh_at: None,
            transactions: Vec::new(),
            permissions: Vec::new(),
            channels: Vec::new(),
            next_channel: 0x4000,
            events: VecDeque::new(),
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            next_request: 0,
        }
    }

    /// The TURN server.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The relayed address, once allocated.
    pub fn relayed_address(&self) -> Option<SocketAddr> {
        self.relayed.filter(|_| self.state == State::Allocated)
    }

    /// Our address as the server saw it, once allocated.
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// Whether the allocation exists.
    pub fn is_allocated(&self) -> bool {
        self.state == State::Allocated
    }

    /// The channel bound to `peer`, if confirmed.
    pub fn channel_for(&self, peer: SocketAddr) -> Option<u16> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.bound)
            .map(|c| c.channel)
    }

    fn random(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn transaction_id(&mut self) -> TransactionId {
        let mut id = [0u8; 12];
        let (a, b) = id.split_at_mut(8);
        a.copy_from_slice(&self.random().to_be_bytes());
        b.copy_from_slice(&self.random().to_be_bytes()[..4]);
        TransactionId::new(id)
    }

    fn request_id(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    /// Encodes a request of `kind` with transaction id `id` (credentials when known).
    fn encode(&self, id: TransactionId, kind: Kind) -> (Vec<u8>, bool) {
        let lifetime;
        let mut attributes: Vec<Attribute<'_>> = Vec::with_capacity(8);
        let method = match kind {
            Kind::Allocate => {
                attributes.push(Attribute::RequestedTransport(PROTOCOL_UDP));
                if let Some(l) = self.config.lifetime {
                    lifetime = u32::try_from(l.as_secs()).unwrap_or(u32::MAX);
                    attributes.push(Attribute::Lifetime(lifetime));
                }
                Method::ALLOCATE
            }
            Kind::Refresh { lifetime } => {
                attributes.push(Attribute::Lifetime(lifetime));
                Method::REFRESH
            }
            Kind::Permission { ip } => {
                attributes.push(Attribute::XorPeerAddress(SocketAddr::new(ip, 0)));
                Method::CREATE_PERMISSION
            }
            Kind::Channel { peer, channel } => {
                attributes.push(Attribute::ChannelNumber(channel));
                attributes.push(Attribute::XorPeerAddress(peer));
                Method::CHANNEL_BIND
            }
        };
        let authenticated = match (&self.realm, &self.nonce, &self.key) {
            (Some(realm), Some(nonce), Some(_)) => {
                attributes.push(Attribute::Username(&self.username));
                attributes.push(Attribute::Realm(realm));
                attributes.push(Attribute::Nonce(nonce));
                true
            }
            _ => false,
        };
        let mut builder = MessageBuilder::new(MessageType::new(method, MessageClass::Request), id)
            .attributes(&attributes);
        if authenticated && let Some(key) = &self.key {
            builder = builder.message_integrity(key.as_bytes());
        }
        (
            builder.fingerprint().to_vec().unwrap_or_default(),
            authenticated,
        )
    }

    fn start(&mut self, kind: Kind, request: Option<RequestId>, now: Instant) {
        let id = self.transaction_id();
        let (bytes, authenticated) = self.encode(id, kind);
        self.transactions.push(Transaction {
            id,
            request,
            kind,
            bytes,
            authenticated,
            next_send: now,
            sends: 0,
            deadline: now + self.config.transaction_timeout,
            retries: 0,
        });
    }

    /// Starts the allocation (an Allocate request; the 401 round trip follows by itself).
    pub fn allocate(&mut self, now: Instant) {
        if matches!(self.state, State::Idle | State::Closed) {
            self.state = State::Allocating;
            self.start(Kind::Allocate, None, now);
        }
    }

    /// Installs a permission for `ip` (and keeps it refreshed).
    pub fn create_permission(
        &mut self,
        ip: IpAddr,
        now: Instant,
    ) -> Result<RequestId, ClientError> {
        if self.state != State::Allocated {
            return Err(ClientError::NotAllocated);
        }
        let ip = ip.to_canonical();
        if !self.permissions.iter().any(|p| p.ip == ip) {
            self.permissions.push(PermissionEntry {
                ip,
                installed: false,
                refresh_at: None,
            });
        }
        let request = self.request_id();
        self.start(Kind::Permission { ip }, Some(request), now);
        Ok(request)
    }

    /// Binds a channel to `peer` (installing its permission too, and keeping both refreshed).
    /// Returns the request and the channel number.
    pub fn bind_channel(
        &mut self,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<(RequestId, u16), ClientError> {
        if self.state != State::Allocated {
            return Err(ClientError::NotAllocated);
        }
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let channel = match self.channels.iter().find(|c| c.peer == peer) {
            Some(c) => c.channel,
            None => {
                if self.next_channel > 0x4FFF {
                    return Err(ClientError::ChannelsExhausted);
                }
                let channel = self.next_channel;
                self.next_channel += 1;
                self.channels.push(ChannelEntry {
                    channel,
                    peer,
                    bound: false,
                    refresh_at: None,
                });
                channel
            }
        };
        let request = self.request_id();
        self.start(Kind::Channel { peer, channel }, Some(request), now);
        Ok((request, channel))
    }

    /// Releases the allocation (Refresh with LIFETIME 0); [`TurnEvent::Released`] follows.
    pub fn release(&mut self, now: Instant) {
        if self.state == State::Allocated {
            self.state = State::Releasing;
            self.transactions
                .retain(|t| matches!(t.kind, Kind::Refresh { .. }));
            self.start(Kind::Refresh { lifetime: 0 }, None, now);
        }
    }

    /// Frames `data` for `peer` into `out` (cleared first): ChannelData on a bound channel, else
    /// a Send indication when a permission is installed. Send `out` to [`TurnClient::server`].
    pub fn send_to(
        &mut self,
        peer: SocketAddr,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ClientError> {
        out.clear();
        if self.state != State::Allocated {
            return Err(ClientError::NotAllocated);
        }
        if data.len() > usize::from(u16::MAX) - 64 {
            return Err(ClientError::TooLarge(data.len()));
        }
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        if let Some(channel) = self.channel_for(peer).and_then(ChannelNumber::new) {
            let frame =
                ChannelData::new(channel, data).map_err(|_| ClientError::TooLarge(data.len()))?;
            frame.encode_into(out, ChannelDataPadding::None);
            return Ok(());
        }
        if !self
            .permissions
            .iter()
            .any(|p| p.ip == peer.ip() && p.installed)
        {
            return Err(ClientError::NoPermission(peer.ip()));
        }
        let id = self.transaction_id();
        MessageBuilder::new(MessageType::new(Method::SEND, MessageClass::Indication), id)
            .attributes(&[Attribute::XorPeerAddress(peer), Attribute::Data(data)])
            .encode_into(out)
            .map_err(|_| ClientError::TooLarge(data.len()))?;
        Ok(())
    }

    /// Handles a datagram that arrived from `from`.
    pub fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) -> Received {
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        if from != self.server {
            return Received::NotOurs;
        }
        match datagram.first() {
            Some(0x40..=0x7F) => {
                let ([c0, c1, l0, l1], rest) = match datagram.split_first_chunk::<4>() {
                    Some(parts) => parts,
                    None => return Received::Consumed,
                };
                let channel = u16::from_be_bytes([*c0, *c1]);
                let len = usize::from(u16::from_be_bytes([*l0, *l1]));
                if len > rest.len() {
                    return Received::Consumed;
                }
                match self.channels.iter().find(|c| c.channel == channel) {
                    Some(c) => Received::Data {
                        peer: c.peer,
                        payload: 4..4 + len,
                    },
                    None => Received::Consumed,
                }
            }
            Some(0..=3) => {
                let Ok(message) = Message::parse(datagram) else {
                    return Received::NotOurs;
                };
                match message.class() {
                    MessageClass::Indication if message.method() == Method::DATA => {
                        let peer = match message.get(AttributeType::XOR_PEER_ADDRESS) {
                            Some(Attribute::XorPeerAddress(p)) => p,
                            _ => return Received::Consumed,
                        };
                        match message
                            .raw_attributes()
                            .find(|a| a.typ == AttributeType::DATA)
                        {
                            Some(raw) => Received::Data {
                                peer,
                                payload: raw.offset + 4..raw.offset + 4 + raw.value.len(),
                            },
                            None => Received::Consumed,
                        }
                    }
                    MessageClass::SuccessResponse | MessageClass::ErrorResponse => {
                        let id = message.transaction_id();
                        match self.transactions.iter().position(|t| t.id == id) {
                            Some(i) => {
                                self.response(i, &message, now);
                                Received::Consumed
                            }
                            None => Received::NotOurs,
                        }
                    }
                    _ => Received::NotOurs,
                }
            }
            _ => Received::NotOurs,
        }
    }

    fn response(&mut self, index: usize, message: &Message<'_>, now: Instant) {
        let authenticated = self
            .transactions
            .get(index)
            .is_some_and(|t| t.authenticated);
        if authenticated
            && message.has_integrity(quickp2p_wire::stun::IntegrityAlgorithm::Sha1)
            && let Some(key) = &self.key
            && message.verify_message_integrity(key.as_bytes()).is_err()
        {
            // not from the server we share a key with: ignore, the transaction goes on
            return;
        }
        let transaction = self.transactions.remove(index);
        if message.class() == MessageClass::ErrorResponse {
            let (code, reason) = match message.get(AttributeType::ERROR_CODE) {
                Some(Attribute::ErrorCode(e)) => (e.code, e.reason.to_owned()),
                _ => (500, "no ERROR-CODE".to_owned()),
            };
            let realm = match message.get(AttributeType::REALM) {
                Some(Attribute::Realm(r)) => Some(r.to_owned()),
                _ => None,
            };
            let nonce = match message.get(AttributeType::NONCE) {
                Some(Attribute::Nonce(n)) => Some(n.to_vec()),
                _ => None,
            };
            let retry = match code {
                401 if !transaction.authenticated => true,
                438 => true,
                _ => false,
            };
            if retry && transaction.retries < 3 && nonce.is_some() {
                if let Some(realm) = realm.or_else(|| self.realm.clone()) {
                    self.key = Some(LongTermKey::md5(&self.username, &realm, &self.password));
                    self.realm = Some(realm);
                }
                self.nonce = nonce;
                let id = self.transaction_id();
                let (bytes, authenticated) = self.encode(id, transaction.kind);
                self.transactions.push(Transaction {
                    id,
                    bytes,
                    authenticated,
                    next_send: now,
                    sends: 0,
                    retries: transaction.retries + 1,
                    ..transaction
                });
                return;
            }
            let error = match code {
                401 | 441 => TurnError::Unauthorized { code },
                _ => TurnError::Rejected { code, reason },
            };
            self.fail(transaction, error);
            return;
        }
        match transaction.kind {
            Kind::Allocate => {
                let relayed = match message.get(AttributeType::XOR_RELAYED_ADDRESS) {
                    Some(Attribute::XorRelayedAddress(a)) => a,
                    _ => {
                        self.fail(transaction, TurnError::Malformed("no XOR-RELAYED-ADDRESS"));
                        return;
                    }
                };
                let lifetime = match message.get(AttributeType::LIFETIME) {
                    Some(Attribute::Lifetime(s)) => Duration::from_secs(u64::from(s)),
                    _ => Duration::from_secs(600),
                };
                self.mapped = match message.get(AttributeType::XOR_MAPPED_ADDRESS) {
                    Some(Attribute::XorMappedAddress(a)) => Some(a),
                    _ => None,
                };
                self.relayed = Some(relayed);
                self.state = State::Allocated;
                self.schedule_refresh(lifetime, now);
                self.events.push_back(TurnEvent::Allocated {
                    relayed,
                    mapped: self.mapped,
                    lifetime,
                });
            }
            Kind::Refresh { lifetime: 0 } => {
                self.state = State::Closed;
                self.refresh_at = None;
                self.events.push_back(TurnEvent::Released);
            }
            Kind::Refresh { .. } => {
                let lifetime = match message.get(AttributeType::LIFETIME) {
                    Some(Attribute::Lifetime(s)) => Duration::from_secs(u64::from(s)),
                    _ => Duration::from_secs(600),
                };
                self.schedule_refresh(lifetime, now);
            }
            Kind::Permission { ip } => {
                if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
                    p.installed = true;
                    p.refresh_at = Some(now + PERMISSION_REFRESH);
                }
                if let Some(request) = transaction.request {
                    self.events
                        .push_back(TurnEvent::PermissionCreated { request, ip });
                }
            }
            Kind::Channel { peer, channel } => {
                if let Some(c) = self.channels.iter_mut().find(|c| c.channel == channel) {
                    c.bound = true;
                    c.refresh_at = Some(now + CHANNEL_REFRESH);
                }
                // a binding installs the peer's permission too
                match self.permissions.iter_mut().find(|p| p.ip == peer.ip()) {
                    Some(p) => p.installed = true,
                    None => self.permissions.push(PermissionEntry {
                        ip: peer.ip(),
                        installed: true,
                        refresh_at: None,
                    }),
                }
                if let Some(request) = transaction.request {
                    self.events.push_back(TurnEvent::ChannelBound {
                        request,
                        peer,
                        channel,
                    });
                }
            }
        }
    }

    fn schedule_refresh(&mut self, lifetime: Duration, now: Instant) {
        let margin = (lifetime / 5).clamp(Duration::from_secs(1), Duration::from_secs(60));
        self.refresh_at = Some(now + lifetime.saturating_sub(margin));
    }

    fn fail(&mut self, transaction: Transaction, error: TurnError) {
        match transaction.kind {
            Kind::Allocate => {
                self.state = State::Idle;
                self.events.push_back(TurnEvent::AllocationFailed(error));
            }
            Kind::Refresh { lifetime: 0 } => {
                self.state = State::Closed;
                self.events.push_back(TurnEvent::Released);
            }
            Kind::Refresh { .. } => {
                self.state = State::Closed;
                self.refresh_at = None;
                self.events.push_back(TurnEvent::AllocationLost(error));
            }
            Kind::Permission { .. } | Kind::Channel { .. } => {
                if let Some(request) = transaction.request {
                    self.events
                        .push_back(TurnEvent::RequestFailed { request, error });
                }
            }
        }
    }

    /// The next datagram to send to the server, if one is due at `now`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let rto = self.config.initial_rto;
        let max = self.config.max_sends;
        let t = self
            .transactions
            .iter_mut()
            .find(|t| t.next_send <= now && t.sends < max)?;
        t.sends += 1;
        t.next_send = now + rto * 2u32.saturating_pow(t.sends - 1);
        Some(Transmit {
            destination: self.server,
            payload: t.bytes.clone(),
        })
    }

    /// When [`TurnClient::handle_timeout`] (or [`TurnClient::poll_transmit`]) has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let max = self.config.max_sends;
        let transactions = self.transactions.iter().map(|t| {
            if t.sends < max {
                t.next_send.min(t.deadline)
            } else {
                t.deadline
            }
        });
        let refreshes = self
            .permissions
            .iter()
            .filter_map(|p| p.refresh_at)
            .chain(self.channels.iter().filter_map(|c| c.refresh_at))
            .chain(self.refresh_at)
            .filter(|_| self.state == State::Allocated);
        transactions.chain(refreshes).min()
    }

    /// Fails transactions past their deadline and starts the refreshes that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(i) = self.transactions.iter().position(|t| t.deadline <= now) {
            let t = self.transactions.remove(i);
            self.fail(t, TurnError::Timeout);
        }
        if self.state != State::Allocated {
            return;
        }
        if self.refresh_at.is_some_and(|r| r <= now) {
            self.refresh_at = None;
            let lifetime = self
                .config
                .lifetime
                .map_or(600, |l| u32::try_from(l.as_secs()).unwrap_or(u32::MAX));
            self.start(Kind::Refresh { lifetime }, None, now);
        }
        let due: Vec<IpAddr> = self
            .permissions
            .iter_mut()
            .filter(|p| p.refresh_at.is_some_and(|r| r <= now))
            .map(|p| {
                p.refresh_at = None;
                p.ip
            })
            .collect();
        for ip in due {
            self.start(Kind::Permission { ip }, None, now);
        }
        let due: Vec<(SocketAddr, u16)> = self
            .channels
            .iter_mut()
            .filter(|c| c.refresh_at.is_some_and(|r| r <= now))
            .map(|c| {
                c.refresh_at = None;
                (c.peer, c.channel)
            })
            .collect();
        for (peer, channel) in due {
            self.start(Kind::Channel { peer, channel }, None, now);
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }
}
