//! The sans-IO TURN server (RFC 8656 over UDP): what to do with each datagram a client sends to
//! the TURN port, decided without sockets or a clock.
//!
//! A [`TurnServer`] owns the allocations of the clients one receive worker serves (the kernel
//! keeps a client on one worker socket, so nothing here is shared between workers except the
//! [`RelayState`]: quotas, capacity, drain, the directory, counters). For each datagram,
//! [`TurnServer::handle_client_datagram`] returns a [`ClientAction`]:
//!
//! * [`ClientAction::Reply`]: send the output buffer to the client (success and error responses,
//!   401/438 challenges);
//! * [`ClientAction::Relay`]: send `payload` (a range of the received datagram — ChannelData or
//!   the DATA of a Send indication, no copy) from the allocation's relayed socket to `peer`;
//! * [`ClientAction::Allocate`]: an Allocate request passed every check and holds a quota slot;
//!   the driver binds a relayed socket from the port range and calls
//!   [`TurnServer::complete_allocation`], which answers (success, or 508 when no port is free);
//! * [`ClientAction::Drop`]: nothing to send, for a [`DropReason`].
//!
//! Time comes in as `now` (a monotonic [`Instant`]); network time for username and nonce expiry
//! is derived from it by the state's [`Clock`]. [`TurnServer::handle_timeout`] expires
//! allocations (and forgets stale permissions and channels) once a second.
//!
//! The other direction — a peer's datagram arriving on a relayed socket — needs only the
//! allocation's [`AllocationInfo`]: [`AllocationInfo::verdict`] says whether to frame it as
//! ChannelData ([`write_channel_header`]) or a Data indication ([`encode_data_indication`]), or
//! to drop it.
//!
//! # RFC behaviour
//!
//! * Long-term credentials (RFC 8489 §9.2) with the TURN REST API password scheme
//!   ([`crate::credentials`]): a request without MESSAGE-INTEGRITY gets 401 with REALM and NONCE;
//!   missing USERNAME/REALM/NONCE → 400; a nonce that is not ours, for another IP, or expired →
//!   438 with a fresh NONCE; a wrong realm, a username not of the scheme, a wrong MAC → 401; an
//!   expired username → 401 for Allocate (an existing allocation may still be refreshed).
//!   Success and error responses to authenticated requests carry MESSAGE-INTEGRITY; every
//!   response carries FINGERPRINT when the request did.
//! * 420 with UNKNOWN-ATTRIBUTES for unknown comprehension-required attributes (after
//!   authentication), including DONT-FRAGMENT in Allocate (not supported, RFC 8656 §7.2).
//! * Allocate: 437 when the 5-tuple has an allocation (a retransmission of the request that made
//!   it gets the success again); 400 without REQUESTED-TRANSPORT, 442 for anything but UDP; 440
//!   for an address family the relay has not; ADDITIONAL-ADDRESS-FAMILY → IPv4 relayed address
//!   plus ADDRESS-ERROR-CODE 440 for IPv6; EVEN-PORT honoured, its R bit and RESERVATION-TOKEN →
//!   508 (no port reservations); draining, capacity → 508; the user's quota → 486. Lifetime: the
//!   default for none or less, at most the maximum.
//! * Refresh: 437 without an allocation, 441 with another username, 443 for a mismatching
//!   REQUESTED-ADDRESS-FAMILY; LIFETIME 0 deletes the allocation.
//! * CreatePermission / ChannelBind: 400 without XOR-PEER-ADDRESS (or CHANNEL-NUMBER, or with a
//!   channel outside 0x4000–0x4FFF — 0x4000–0x7FFF, RFC 5766's range, with
//!   `legacy_channel_numbers`, which coturn's clients need — or one bound otherwise), 443 on a family mismatch, 403 for
//!   peers the [`PeerPolicy`](crate::peer_policy::PeerPolicy) denies (nothing is installed then),
//!   508 beyond the configured permission or channel count. Permissions last 300 s, channels
//!   600 s (and stay reserved 300 s more).
//! * Send indications and ChannelData from the client are relayed only with a live permission
//!   (and channel); Binding requests on the TURN port are answered (XOR-MAPPED-ADDRESS);
//!   responses and other indications are dropped.

mod allocation;
mod nonce;
mod state;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quickp2p_wire::stun::{
    AddressErrorCode, AddressFamily, Attribute, AttributeType, ErrorCode, IntegrityAlgorithm,
    LongTermKey, Message, MessageBuilder, MessageClass, MessageType, Method, PROTOCOL_UDP,
    TransactionId, UnknownAttributes,
};

pub use allocation::{
    AllocationInfo, BindRefusal, DirectionTally, IndicationIds, PeerTable, PeerVerdict,
    encode_data_indication, parse_channel_data, write_channel_header,
};
pub use nonce::NONCE_LEN;
pub use state::{Clock, RelayState, UserEntry};

use crate::counters::{DropReason, EndCause, Refusal, RequestMethod};
use crate::credentials::{parse_username, password_for};
use state::lock;

/// Bytes a STUN message may carry on top of the largest payload (a Send indication's header and
/// attributes); a datagram from a client longer than `max_payload + MAX_OVERHEAD` is dropped.
pub const MAX_OVERHEAD: usize = 256;

/// How often [`TurnServer::handle_timeout`] looks for expired allocations.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What to do with one datagram from a client.
#[derive(Debug)]
pub enum ClientAction<'a, S> {
    /// Send the output buffer to `to`.
    Reply {
        /// The client.
        to: SocketAddr,
    },
    /// Send `datagram[payload]` from the allocation's relayed socket `via` to `peer`.
    Relay {
        /// The driver's handle of the allocation's relayed socket.
        via: &'a S,
        /// The peer.
        peer: SocketAddr,
        /// Where the application data is in the received datagram.
        payload: Range<usize>,
    },
    /// Bind a relayed socket and call [`TurnServer::complete_allocation`].
    Allocate(PendingAllocation),
    /// Send nothing.
    Drop(DropReason),
}

/// An Allocate request that passed every check and holds a slot of its user's quota. Give it to
/// [`TurnServer::complete_allocation`]; dropped instead, it gives the slot back.
#[derive(Debug)]
pub struct PendingAllocation {
    /// The client.
    pub client: SocketAddr,
    /// The family of the relayed address to bind.
    pub family: AddressFamily,
    /// Whether the relayed port must be even (EVEN-PORT).
    pub even_port: bool,
    transaction_id: TransactionId,
    username: Box<str>,
    key: LongTermKey,
    lifetime: Duration,
    fingerprint: bool,
    refuse_ipv6: bool,
    reservation: Option<Arc<UserEntry>>,
    state: Arc<RelayState>,
}

impl Drop for PendingAllocation {
    fn drop(&mut self) {
        if let Some(user) = self.reservation.take() {
            self.state.release(&user);
        }
    }
}

/// What [`TurnServer::complete_allocation`] did.
#[derive(Debug)]
pub struct Completed {
    /// Send the output buffer (the response) here.
    pub to: SocketAddr,
    /// The new allocation, when it was made (start its peer-side task with it).
    pub allocation: Option<Arc<AllocationInfo>>,
}

/// One live allocation as its worker keeps it.
#[derive(Debug)]
struct Allocation<S> {
    info: Arc<AllocationInfo>,
    handle: S,
    key: LongTermKey,
    allocate_tid: TransactionId,
    expires: Instant,
}

/// A request that passed authentication.
struct Authenticated<'m> {
    username: &'m str,
    key: LongTermKey,
}

/// Why authentication did not pass.
enum AuthFailure {
    /// No credentials: the 401 that starts every exchange.
    Challenge,
    /// A refusal with its code and reason.
    Refused(Refusal, u16, &'static str),
}

/// The TURN logic of one receive worker; `S` is the driver's handle of a relayed socket.
#[derive(Debug)]
pub struct TurnServer<S> {
    state: Arc<RelayState>,
    allocations: HashMap<SocketAddr, Allocation<S>>,
    next_sweep: Option<Instant>,
}

impl<S> Drop for TurnServer<S> {
    fn drop(&mut self) {
        let clients: Vec<SocketAddr> = self.allocations.keys().copied().collect();
        for client in clients {
            self.remove(client, EndCause::Shutdown);
        }
    }
}

fn request_method(method: Method) -> RequestMethod {
    match method {
        Method::ALLOCATE => RequestMethod::Allocate,
        Method::REFRESH => RequestMethod::Refresh,
        Method::CREATE_PERMISSION => RequestMethod::CreatePermission,
        Method::CHANNEL_BIND => RequestMethod::ChannelBind,
        Method::BINDING => RequestMethod::Binding,
        _ => RequestMethod::Other,
    }
}

const fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::V4,
        IpAddr::V6(_) => AddressFamily::V6,
    }
}

/// The offset and length of the first DATA attribute's value.
fn data_range(message: &Message<'_>) -> Option<Range<usize>> {
    let raw = message
        .raw_attributes()
        .find(|a| a.typ == AttributeType::DATA)?;
    let start = raw.offset + 4;
    Some(start..start + raw.value.len())
}

impl<S> TurnServer<S> {
    /// A server for one worker, sharing `state` with the others.
    pub fn new(state: Arc<RelayState>) -> TurnServer<S> {
        TurnServer {
            state,
            allocations: HashMap::new(),
            next_sweep: None,
        }
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<RelayState> {
        &self.state
    }

    /// Allocations this worker holds.
    pub fn len(&self) -> usize {
        self.allocations.len()
    }

    /// Whether this worker holds no allocation.
    pub fn is_empty(&self) -> bool {
        self.allocations.is_empty()
    }

    /// The allocation of `client`, if any.
    pub fn allocation(&self, client: SocketAddr) -> Option<&Arc<AllocationInfo>> {
        self.allocations.get(&client).map(|a| &a.info)
    }

    /// The largest datagram a client may send.
    pub fn max_datagram(&self) -> usize {
        self.state.config().max_payload + MAX_OVERHEAD
    }

    /// Decides what to do with `datagram` from `from` at `now`. For [`ClientAction::Reply`],
    /// `out` holds exactly the bytes to send.
    pub fn handle_client_datagram(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> ClientAction<'_, S> {
        out.clear();
        if datagram.len() > self.max_datagram() {
            return ClientAction::Drop(DropReason::Oversized);
        }
        match datagram.first() {
            Some(0x40..=0x7F) => self.channel_data(datagram, from, now),
            Some(0..=3) => self.stun(datagram, from, now, out),
            _ => ClientAction::Drop(DropReason::Malformed),
        }
    }

    fn channel_data(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> ClientAction<'_, S> {
        let Some((channel, payload)) = parse_channel_data(datagram) else {
            return ClientAction::Drop(DropReason::Malformed);
        };
        let Some(allocation) = self.allocations.get(&from) else {
            return ClientAction::Drop(DropReason::NoAllocation);
        };
        let len = payload.len();
        if len > self.state.config().max_payload {
            return ClientAction::Drop(DropReason::Oversized);
        }
        let Some(peer) = lock(&allocation.info.peers).channel_peer(channel, now) else {
            return ClientAction::Drop(DropReason::NoChannel);
        };
        if !allocation.info.user.allow(len, now) {
            return ClientAction::Drop(DropReason::BandwidthLimit);
        }
        allocation.info.to_peer.add(1, len as u64);
        ClientAction::Relay {
            via: &allocation.handle,
            peer,
            payload,
        }
    }

    fn stun(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> ClientAction<'_, S> {
        let Ok(message) = Message::parse(datagram) else {
            return ClientAction::Drop(DropReason::Malformed);
        };
        if message.has_fingerprint() && message.verify_fingerprint().is_err() {
            return ClientAction::Drop(DropReason::BadFingerprint);
        }
        match message.class() {
            MessageClass::Request => self.request(&message, from, now, out),
            MessageClass::Indication if message.method() == Method::SEND => {
                self.send_indication(&message, from, now)
            }
            _ => ClientAction::Drop(DropReason::Unexpected),
        }
    }

    fn send_indication(
        &mut self,
        message: &Message<'_>,
        from: SocketAddr,
        now: Instant,
    ) -> ClientAction<'_, S> {
        let Some(allocation) = self.allocations.get(&from) else {
            return ClientAction::Drop(DropReason::NoAllocation);
        };
        let (Some(Attribute::XorPeerAddress(peer)), Some(payload)) = (
            message.get(AttributeType::XOR_PEER_ADDRESS),
            data_range(message),
        ) else {
            return ClientAction::Drop(DropReason::Unexpected);
        };
        let len = payload.len();
        if len > self.state.config().max_payload {
            return ClientAction::Drop(DropReason::Oversized);
        }
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        if family_of(peer.ip()) != family_of(allocation.info.relayed.ip())
            || !lock(&allocation.info.peers).permitted(peer.ip(), now)
        {
            return ClientAction::Drop(DropReason::NoPermission);
        }
        // a permission covers every port of an IP: the exact address is checked here (the
        // relay's own listener and ports outside its range stay unreachable)
        let config = self.state.config();
        if config
            .peer_policy
            .check(peer, self.state.relay_self())
            .is_err()
        {
            return ClientAction::Drop(DropReason::DeniedPeer);
        }
        if !allocation.info.user.allow(len, now) {
            return ClientAction::Drop(DropReason::BandwidthLimit);
        }
        allocation.info.to_peer.add(1, len as u64);
        ClientAction::Relay {
            via: &allocation.handle,
            peer,
            payload,
        }
    }

    fn request(
        &mut self,
        message: &Message<'_>,
        from: SocketAddr,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> ClientAction<'_, S> {
        let method = message.method();
        let rm = request_method(method);
        let respond = Respond {
            method,
            rm,
            tid: message.transaction_id(),
            fingerprint: message.has_fingerprint(),
            to: from,
        };
        if method == Method::BINDING {
            return self.binding(message, &respond, out);
        }
        if rm == RequestMethod::Other {
            return self.refuse(
                &respond,
                Refusal::Malformed,
                400,
                "Unknown method",
                &[],
                None,
                out,
            );
        }
        let auth = match self.authenticate(message, from, now, method) {
            Ok(a) => a,
            Err(AuthFailure::Challenge) => {
                self.state.counters().challenge();
                return self.challenge(&respond, 401, "Unauthenticated", now, out);
            }
            Err(AuthFailure::Refused(refusal, code, reason)) => {
                self.state.counters().refused(rm, refusal);
                if code == 400 {
                    respond.write(
                        self.state.config(),
                        &[Attribute::ErrorCode(ErrorCode::with_reason(code, reason))],
                        None,
                        out,
                    );
                    return ClientAction::Reply { to: from };
                }
                return self.challenge(&respond, code, reason, now, out);
            }
        };
        let unknown = message.unknown_comprehension_required();
        if !unknown.is_empty() {
            return self.refuse(
                &respond,
                Refusal::UnknownAttribute,
                420,
                "Unknown Attribute",
                &[Attribute::UnknownAttributes(UnknownAttributes::new(
                    unknown.as_slice(),
                ))],
                Some(&auth.key),
                out,
            );
        }
        match method {
            Method::ALLOCATE => self.allocate(message, &auth, &respond, now, out),
            Method::REFRESH => self.refresh(message, &auth, &respond, now, out),
            Method::CREATE_PERMISSION => self.create_permission(message, &auth, &respond, now, out),
            _ => self.channel_bind(message, &auth, &respond, now, out),
        }
    }

    /// Answers a Binding request (plain STUN on the TURN port, for ICE).
    fn binding(
        &self,
        message: &Message<'_>,
        respond: &Respond,
        out: &mut Vec<u8>,
    ) -> ClientAction<'_, S> {
        let unknown = message.unknown_comprehension_required();
        if !unknown.is_empty() {
            return self.refuse(
                respond,
                Refusal::UnknownAttribute,
                420,
                "Unknown Attribute",
                &[Attribute::UnknownAttributes(UnknownAttributes::new(
                    unknown.as_slice(),
                ))],
                None,
                out,
            );
        }
        respond.success(
            self.state.config(),
            &[Attribute::XorMappedAddress(respond.to)],
            None,
            out,
        );
        ClientAction::Reply { to: respond.to }
    }

    fn authenticate<'m>(
        &self,
        message: &Message<'m>,
        from: SocketAddr,
        now: Instant,
        method: Method,
    ) -> Result<Authenticated<'m>, AuthFailure> {
        if !message.has_integrity(IntegrityAlgorithm::Sha1)
            && !message.has_integrity(IntegrityAlgorithm::Sha256)
        {
            return Err(AuthFailure::Challenge);
        }
        let (
            Some(Attribute::Username(username)),
            Some(Attribute::Realm(realm)),
            Some(Attribute::Nonce(nonce)),
        ) = (
            message.get(AttributeType::USERNAME),
            message.get(AttributeType::REALM),
            message.get(AttributeType::NONCE),
        )
        else {
            return Err(AuthFailure::Refused(
                Refusal::Malformed,
                400,
                "USERNAME, REALM and NONCE are required",
            ));
        };
        let config = self.state.config();
        let now_unix = self.state.clock().unix(now).as_secs();
        if !nonce::is_valid(self.state.nonce_key(), nonce, from.ip(), now_unix) {
            return Err(AuthFailure::Refused(
                Refusal::StaleNonce,
                438,
                "Stale Nonce",
            ));
        }
        let bad = AuthFailure::Refused(Refusal::BadCredentials, 401, "Unauthenticated");
        if realm != config.realm {
            return Err(bad);
        }
        let Ok(rest) = parse_username(username) else {
            return Err(bad);
        };
        let key = match self.allocations.get(&from) {
            Some(a) if &*a.info.username == username => a.key,
            _ => {
                let password = password_for(config.shared_secret.as_bytes(), username);
                LongTermKey::md5(username, realm, &password)
            }
        };
        let verified = if message.has_integrity(IntegrityAlgorithm::Sha1) {
            message.verify_message_integrity(key.as_bytes())
        } else {
            message.verify_message_integrity_sha256(key.as_bytes())
        };
        if verified.is_err() {
            return Err(bad);
        }
        if method == Method::ALLOCATE && rest.expires_at_unix <= now_unix {
            return Err(AuthFailure::Refused(
                Refusal::ExpiredCredentials,
                401,
                "Credentials expired",
            ));
        }
        Ok(Authenticated { username, key })
    }

    /// A 401 or 438 with REALM and a fresh NONCE (never MESSAGE-INTEGRITY).
    fn challenge(
        &self,
        respond: &Respond,
        code: u16,
        reason: &str,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> ClientAction<'_, S> {
        let config = self.state.config();
        let expiry = self.state.clock().unix(now).as_secs() + config.nonce_lifetime.as_secs();
        let nonce = nonce::issue(self.state.nonce_key(), respond.to.ip(), expiry);
        let attributes = [
            Attribute::ErrorCode(ErrorCode::with_reason(code, reason)),
            Attribute::Realm(&config.realm),
            Attribute::Nonce(&nonce),
        ];
        respond.write(config, &attributes, None, out);
        ClientAction::Reply { to: respond.to }
    }

    /// An error response, counted.
    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &self,
        respond: &Respond,
        refusal: Refusal,
        code: u16,
        reason: &str,
        extra: &[Attribute<'_>],
        key: Option<&LongTermKey>,
        out: &mut Vec<u8>,
    ) -> ClientAction<'_, S> {
        self.state.counters().refused(respond.rm, refusal);
        let mut attributes = Vec::with_capacity(1 + extra.len());
        attributes.push(Attribute::ErrorCode(ErrorCode::with_reason(code, reason)));
        attributes.extend_from_slice(extra);
        respond.write(self.state.config(), &attributes, key, out);
        ClientAction::Reply { to: respond.to }
    }

    /// 437 (no allocation) or 441 (another username) for requests that need an allocation.
    fn owned_allocation(
        &self,
        client: SocketAddr,
        auth: &Authenticated<'_>,
    ) -> Result<(), (Refusal, u16, &'static str)> {
        match self.allocations.get(&client) {
            None => Err((Refusal::AllocationMismatch, 437, "Allocation Mismatch")),
            Some(a) if &*a.info.username != auth.username => {
                Err((Refusal::WrongCredentials, 441, "Wrong Credentials"))
            }
            Some(_) => Ok(()),
        }
    }

    fn allocate(
        &mut self,
        message: &Message<'_>,
        auth: &Authenticated<'_>,
        respond: &Respond,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> ClientAction<'_, S> {
        let key = Some(&auth.key);
        if let Some(existing) = self.allocations.get(&respond.to) {
            if existing.allocate_tid == respond.tid && &*existing.info.username == auth.username {
                let lifetime = existing.expires.saturating_duration_since(now);
                let attributes = [
                    Attribute::XorRelayedAddress(existing.info.relayed),
                    Attribute::Lifetime(u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX)),
                    Attribute::XorMappedAddress(respond.to),
                ];
                respond.success(self.state.config(), &attributes, key, out);
                return ClientAction::Reply { to: respond.to };
            }
            return self.refuse(
                respond,
                Refusal::AllocationMismatch,
                437,
                "Allocation Mismatch",
                &[],
                key,
                out,
            );
        }
        match message.get(AttributeType::REQUESTED_TRANSPORT) {
            Some(Attribute::RequestedTransport(PROTOCOL_UDP)) => {}
            Some(_) => {
                return self.refuse(
                    respond,
                    Refusal::UnsupportedTransport,
                    442,
                    "Unsupported Transport Protocol",
                    &[],
                    key,
                    out,
                );
            }
            None => {
                return self.refuse(
                    respond,
                    Refusal::Malformed,
                    400,
                    "REQUESTED-TRANSPORT is required",
                    &[],
                    key,
                    out,
                );
            }
        }
        if message.get(AttributeType::DONT_FRAGMENT).is_some() {
            return self.refuse(
                respond,
                Refusal::UnknownAttribute,
                420,
                "Unknown Attribute",
                &[Attribute::UnknownAttributes(UnknownAttributes::new(&[
                    AttributeType::DONT_FRAGMENT,
                ]))],
                key,
                out,
            );
        }
        let token = message.get(AttributeType::RESERVATION_TOKEN).is_some();
        let even = match message.get(AttributeType::EVEN_PORT) {
            Some(Attribute::EvenPort { reserve_next }) => Some(reserve_next),
            _ => None,
        };
        let requested = match message.get(AttributeType::REQUESTED_ADDRESS_FAMILY) {
            Some(Attribute::RequestedAddressFamily(f)) => Some(f),
            _ => None,
        };
        let additional = match message.get(AttributeType::ADDITIONAL_ADDRESS_FAMILY) {
            Some(Attribute::AdditionalAddressFamily(f)) => Some(f),
            _ => None,
        };
        if token && (even.is_some() || requested.is_some())
            || requested.is_some() && additional.is_some()
        {
            return self.refuse(
                respond,
                Refusal::Malformed,
                400,
                "Conflicting attributes",
                &[],
                key,
                out,
            );
        }
        if additional.is_some_and(|f| f != AddressFamily::V6) {
            return self.refuse(
                respond,
                Refusal::Malformed,
                400,
                "ADDITIONAL-ADDRESS-FAMILY must be IPv6",
                &[],
                key,
                out,
            );
        }
        if token {
            return self.refuse(
                respond,
                Refusal::InsufficientCapacity,
                508,
                "Unknown reservation token",
                &[],
                key,
                out,
            );
        }
        if even == Some(true) {
            return self.refuse(
                respond,
                Refusal::InsufficientCapacity,
                508,
                "Port reservation not supported",
                &[],
                key,
                out,
            );
        }
        let config = self.state.config();
        let relay_family = family_of(config.relay_advertised_ip);
        if requested.unwrap_or(AddressFamily::V4) != relay_family {
            return self.refuse(
                respond,
                Refusal::AddressFamily,
                440,
                "Address Family not Supported",
                &[],
                key,
                out,
            );
        }
        let lifetime = config.granted_lifetime(match message.get(AttributeType::LIFETIME) {
            Some(Attribute::Lifetime(s)) => Some(s),
            _ => None,
        });
        let user = parse_username(auth.username)
            .map(|r| r.peer)
            .unwrap_or(auth.username);
        let reservation = match self.state.reserve(user) {
            Ok(r) => r,
            Err(refusal) => {
                let (code, reason) = match refusal {
                    Refusal::QuotaExceeded => (486, "Allocation Quota Reached"),
                    Refusal::Draining => (508, "Draining: try another relay"),
                    _ => (508, "Insufficient Capacity"),
                };
                return self.refuse(respond, refusal, code, reason, &[], key, out);
            }
        };
        ClientAction::Allocate(PendingAllocation {
            client: respond.to,
            family: relay_family,
            even_port: even.is_some(),
            transaction_id: respond.tid,
            username: auth.username.into(),
            key: auth.key,
            lifetime,
            fingerprint: respond.fingerprint,
            refuse_ipv6: additional.is_some() && relay_family == AddressFamily::V4,
            reservation: Some(reservation),
            state: Arc::clone(&self.state),
        })
    }

    /// Finishes an Allocate: with `bound` = the relayed socket's local port and the driver's
    /// handle, makes the allocation and writes the success response into `out`; with `None` (no
    /// port free in the range), writes 508.
    pub fn complete_allocation(
        &mut self,
        mut pending: PendingAllocation,
        bound: Option<(u16, S)>,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Completed {
        out.clear();
        let respond = Respond {
            method: Method::ALLOCATE,
            rm: RequestMethod::Allocate,
            tid: pending.transaction_id,
            fingerprint: pending.fingerprint,
            to: pending.client,
        };
        let (Some((port, handle)), Some(user)) = (bound, pending.reservation.take()) else {
            // dropping `pending` gives the quota slot back
            let key = pending.key;
            drop(pending);
            self.refuse(
                &respond,
                Refusal::InsufficientCapacity,
                508,
                "No relay port available",
                &[],
                Some(&key),
                out,
            );
            return Completed {
                to: respond.to,
                allocation: None,
            };
        };
        let config = self.state.config();
        let clock = self.state.clock();
        let relayed = SocketAddr::new(config.relay_advertised_ip, port);
        let info = Arc::new(AllocationInfo::new(
            pending.client,
            relayed,
            &pending.username,
            user,
            clock.unix_ms(now),
            clock.unix_ms(now + pending.lifetime),
        ));
        let lifetime = u32::try_from(pending.lifetime.as_secs()).unwrap_or(u32::MAX);
        let refused_v6 = AddressErrorCode {
            family: AddressFamily::V6,
            code: 440,
            reason: "Address Family not Supported",
        };
        let mut attributes = vec![
            Attribute::XorRelayedAddress(relayed),
            Attribute::Lifetime(lifetime),
            Attribute::XorMappedAddress(pending.client),
        ];
        if pending.refuse_ipv6 {
            attributes.push(Attribute::AddressErrorCode(refused_v6));
        }
        respond.success(config, &attributes, Some(&pending.key), out);
        self.state.insert_directory(Arc::clone(&info));
        self.allocations.insert(
            pending.client,
            Allocation {
                info: Arc::clone(&info),
                handle,
                key: pending.key,
                allocate_tid: pending.transaction_id,
                expires: now + pending.lifetime,
            },
        );
        self.state
            .counters()
            .allocation_created(self.state.allocations());
        Completed {
            to: pending.client,
            allocation: Some(info),
        }
    }

    fn refresh(
        &mut self,
        message: &Message<'_>,
        auth: &Authenticated<'_>,
        respond: &Respond,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> ClientAction<'_, S> {
        let key = Some(&auth.key);
        if let Err((refusal, code, reason)) = self.owned_allocation(respond.to, auth) {
            return self.refuse(respond, refusal, code, reason, &[], key, out);
        }
        let requested = match message.get(AttributeType::LIFETIME) {
            Some(Attribute::Lifetime(s)) => Some(s),
            _ => None,
        };
        let state = Arc::clone(&self.state);
        let Some(relayed) = self.allocation(respond.to).map(|i| i.relayed) else {
            return ClientAction::Drop(DropReason::NoAllocation);
        };
        if let Some(Attribute::RequestedAddressFamily(f)) =
            message.get(AttributeType::REQUESTED_ADDRESS_FAMILY)
            && f != family_of(relayed.ip())
        {
            return self.refuse(
                respond,
                Refusal::AddressFamily,
                443,
                "Peer Address Family Mismatch",
                &[],
                key,
                out,
            );
        }
        let lifetime = if requested == Some(0) {
            Duration::ZERO
        } else {
            state.config().granted_lifetime(requested)
        };
        if lifetime.is_zero() {
            self.remove(respond.to, EndCause::Released);
        } else if let Some(allocation) = self.allocations.get_mut(&respond.to) {
            allocation.expires = now + lifetime;
            allocation
                .info
                .set_expires_unix_ms(state.clock().unix_ms(now + lifetime));
        }
        let seconds = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
        respond.success(state.config(), &[Attribute::Lifetime(seconds)], key, out);
        ClientAction::Reply { to: respond.to }
    }

    fn check_peer(
        &self,
        peer: SocketAddr,
        relayed: SocketAddr,
    ) -> Result<(), (Refusal, u16, &'static str)> {
        if family_of(peer.ip().to_canonical()) != family_of(relayed.ip()) {
            return Err((Refusal::AddressFamily, 443, "Peer Address Family Mismatch"));
        }
        self.state
            .config()
            .peer_policy
            .check(peer, self.state.relay_self())
            .map_err(|_| (Refusal::DeniedPeerAddress, 403, "Forbidden"))
    }

    fn create_permission(
        &mut self,
        message: &Message<'_>,
        auth: &Authenticated<'_>,
        respond: &Respond,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> ClientAction<'_, S> {
        let key = Some(&auth.key);
        if let Err((refusal, code, reason)) = self.owned_allocation(respond.to, auth) {
            return self.refuse(respond, refusal, code, reason, &[], key, out);
        }
        let peers: Vec<SocketAddr> = message
            .attributes()
            .filter_map(|a| match a {
                Attribute::XorPeerAddress(p) => Some(p),
                _ => None,
            })
            .collect();
        if peers.is_empty() {
            return self.refuse(
                respond,
                Refusal::Malformed,
                400,
                "XOR-PEER-ADDRESS is required",
                &[],
                key,
                out,
            );
        }
        let Some(info) = self.allocation(respond.to).cloned() else {
            return ClientAction::Drop(DropReason::NoAllocation);
        };
        for peer in &peers {
            // the port of a permission's address is ignored (RFC 8656 §9.1): check the IP
            if family_of(peer.ip().to_canonical()) != family_of(info.relayed.ip()) {
                return self.refuse(
                    respond,
                    Refusal::AddressFamily,
                    443,
                    "Peer Address Family Mismatch",
                    &[],
                    key,
                    out,
                );
            }
            let config = self.state.config();
            if config
                .peer_policy
                .check_ip(peer.ip(), self.state.relay_self())
                .is_err()
            {
                return self.refuse(
                    respond,
                    Refusal::DeniedPeerAddress,
                    403,
                    "Forbidden",
                    &[],
                    key,
                    out,
                );
            }
        }
        let ips: Vec<IpAddr> = peers.iter().map(|p| p.ip().to_canonical()).collect();
        let max = self.state.config().max_permissions;
        if !lock(&info.peers).install_permissions(&ips, now, max) {
            return self.refuse(
                respond,
                Refusal::InsufficientCapacity,
                508,
                "Too many permissions",
                &[],
                key,
                out,
            );
        }
        respond.success(self.state.config(), &[], key, out);
        ClientAction::Reply { to: respond.to }
    }

    fn channel_bind(
        &mut self,
        message: &Message<'_>,
        auth: &Authenticated<'_>,
        respond: &Respond,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> ClientAction<'_, S> {
        let key = Some(&auth.key);
        if let Err((refusal, code, reason)) = self.owned_allocation(respond.to, auth) {
            return self.refuse(respond, refusal, code, reason, &[], key, out);
        }
        let (Some(Attribute::ChannelNumber(number)), Some(Attribute::XorPeerAddress(peer))) = (
            message.get(AttributeType::CHANNEL_NUMBER),
            message.get(AttributeType::XOR_PEER_ADDRESS),
        ) else {
            return self.refuse(
                respond,
                Refusal::Malformed,
                400,
                "CHANNEL-NUMBER and XOR-PEER-ADDRESS are required",
                &[],
                key,
                out,
            );
        };
        let highest = if self.state.config().legacy_channel_numbers {
            0x7FFF
        } else {
            0x4FFF
        };
        if !(0x4000..=highest).contains(&number) {
            return self.refuse(
                respond,
                Refusal::Malformed,
                400,
                "Channel number out of range",
                &[],
                key,
                out,
            );
        }
        let channel = number;
        let Some(info) = self.allocation(respond.to).cloned() else {
            return ClientAction::Drop(DropReason::NoAllocation);
        };
        if let Err((refusal, code, reason)) = self.check_peer(peer, info.relayed) {
            return self.refuse(respond, refusal, code, reason, &[], key, out);
        }
        let config = self.state.config();
        let bound = lock(&info.peers).bind(
            channel,
            peer,
            now,
            config.max_channels,
            config.max_permissions,
        );
        match bound {
            Ok(()) => {
                respond.success(config, &[], key, out);
                ClientAction::Reply { to: respond.to }
            }
            Err(BindRefusal::Conflict) => self.refuse(
                respond,
                Refusal::Malformed,
                400,
                "Channel or peer bound otherwise",
                &[],
                key,
                out,
            ),
            Err(BindRefusal::Full) => self.refuse(
                respond,
                Refusal::InsufficientCapacity,
                508,
                "Too many channels or permissions",
                &[],
                key,
                out,
            ),
        }
    }

    /// When [`TurnServer::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Expires allocations whose lifetime ran out and forgets stale permissions and channels.
    /// Returns how many allocations ended.
    pub fn handle_timeout(&mut self, now: Instant) -> usize {
        let expired: Vec<SocketAddr> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(c, _)| *c)
            .collect();
        for client in &expired {
            self.remove(*client, EndCause::Expired);
        }
        for allocation in self.allocations.values() {
            lock(&allocation.info.peers).purge(now);
        }
        self.next_sweep = Some(now + SWEEP_INTERVAL);
        expired.len()
    }

    /// Ends every allocation (shutdown).
    pub fn close_all(&mut self) {
        let clients: Vec<SocketAddr> = self.allocations.keys().copied().collect();
        for client in clients {
            self.remove(client, EndCause::Shutdown);
        }
    }

    fn remove(&mut self, client: SocketAddr, cause: EndCause) {
        if let Some(allocation) = self.allocations.remove(&client) {
            self.state.remove_directory(allocation.info.relayed);
            self.state.release(&allocation.info.user);
            self.state
                .counters()
                .allocation_ended(cause, self.state.allocations());
        }
    }
}

/// How to answer one request.
#[derive(Debug, Clone, Copy)]
struct Respond {
    method: Method,
    rm: RequestMethod,
    tid: TransactionId,
    fingerprint: bool,
    to: SocketAddr,
}

impl Respond {
    fn success(
        &self,
        config: &crate::Config,
        attributes: &[Attribute<'_>],
        key: Option<&LongTermKey>,
        out: &mut Vec<u8>,
    ) {
        let class = MessageClass::SuccessResponse;
        match &config.software {
            Some(software) => {
                let mut all = attributes.to_vec();
                all.push(Attribute::Software(software));
                self.encode(class, &all, key, out);
            }
            None => self.encode(class, attributes, key, out),
        }
    }

    fn write(
        &self,
        _config: &crate::Config,
        attributes: &[Attribute<'_>],
        key: Option<&LongTermKey>,
        out: &mut Vec<u8>,
    ) {
        self.encode(MessageClass::ErrorResponse, attributes, key, out);
    }

    fn encode(
        &self,
        class: MessageClass,
        attributes: &[Attribute<'_>],
        key: Option<&LongTermKey>,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        let mut builder = MessageBuilder::new(MessageType::new(self.method, class), self.tid)
            .attributes(attributes);
        if let Some(key) = key {
            builder = builder.message_integrity(key.as_bytes());
        }
        if self.fingerprint {
            builder = builder.fingerprint();
        }
        if let Err(e) = builder.encode_into(out) {
            // Only a reason phrase or SOFTWARE too long could do this; config checks prevent it.
            tracing::warn!(error = %e, "cannot encode a TURN response");
        }
    }
}
