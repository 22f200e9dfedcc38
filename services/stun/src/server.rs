//! The sans-IO STUN responder: what to do with one datagram, decided without sockets or a clock.
//!
//! [`StunResponder::handle_datagram`] takes a datagram, its source, the local port it arrived on
//! ([`LocalPort`]) and `now`, writes any answer into the caller's buffer and returns an
//! [`Action`]:
//!
//! * [`Action::Reply`]: send the buffer from one of this server's ports to an address — a Binding
//!   success response (RFC 8489 §7.3.1, RFC 5780 §6.1) or an error response (400, 420);
//! * [`Action::Forward`]: a change-IP request, to be answered by the partner server; the driver
//!   sends the [`PartnerRequest`] over the control API;
//! * [`Action::Drop`]: nothing is sent, for the [`DropReason`] the driver counts.
//!
//! [`StunResponder::handle_partner_request`] is the other half of a forward: the partner builds
//! the response it was asked for, or refuses ([`Refusal`]).
//!
//! What is never answered (RFC 8489 §6.3, and so that the server cannot be used to reflect
//! traffic): datagrams larger than the configured maximum, anything [`Message::parse`] rejects
//! (too short, not STUN, wrong magic cookie, bad length, truncated or malformed attribute), a
//! FINGERPRINT that does not match, indications and responses. What is answered is bounded
//! (RFC 5780 §10): every answer takes a token from the source's bucket in the
//! [`SourceLimiter`], and a response with PADDING is never larger than the request that asked
//! for it (nor its padding larger than `max_padding`). A request with both PADDING and
//! RESPONSE-PORT gets 400 (RFC 5780 §6.1, §7.5); a request for another method than Binding gets
//! 400 (RFC 8489 §6.3.1); comprehension-required attributes this server does not process get 420
//! with UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1.1) — with RFC 5780 switched off, or no partner,
//! that includes CHANGE-REQUEST (RFC 5780 §6), RESPONSE-PORT and PADDING (§5).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quickp2p_wire::stun::{
    Attribute, AttributeType, DecodeError, ErrorCode, MAX_ATTRIBUTES, Message, MessageBuilder,
    MessageClass, MessageType, Method, TransactionId, UnknownAttributes,
};

use crate::config::Config;
use crate::limiter::SourceLimiter;

/// One of the two UDP ports of a STUN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocalPort {
    /// The primary port (3478), the one clients are configured with.
    Primary,
    /// The alternate port (3479), which answers change-port requests.
    Alternate,
}

impl LocalPort {
    /// The other port.
    pub const fn other(self) -> LocalPort {
        match self {
            LocalPort::Primary => LocalPort::Alternate,
            LocalPort::Alternate => LocalPort::Primary,
        }
    }

    /// `"primary"` or `"alternate"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LocalPort::Primary => "primary",
            LocalPort::Alternate => "alternate",
        }
    }
}

/// Why a datagram was not answered (the `reason` label of `qp_stun_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Larger than the configured maximum request size.
    Oversized,
    /// Shorter than a STUN header, or shorter than its header or an attribute says.
    Truncated,
    /// Not a STUN message (a top bit of the first byte set).
    NotStun,
    /// The magic cookie is not 0x2112A442 (RFC 3489 clients, junk).
    WrongCookie,
    /// Framed wrongly or a known attribute with an invalid value.
    Malformed,
    /// FINGERPRINT present but wrong.
    BadFingerprint,
    /// A STUN indication (no answer is ever due).
    Indication,
    /// A STUN success or error response (we sent no request).
    Response,
    /// The source is over its rate limit.
    RateLimited,
    /// A forwarded request arrived after the staleness limit.
    Stale,
    /// A forwarded request named a destination we do not send to.
    DeniedDestination,
    /// A forwarded request arrived while RFC 5780 is switched off here.
    Disabled,
    /// Too many forwards to the partner in flight.
    ForwardBacklog,
    /// The partner could not be reached or failed the call.
    ForwardFailed,
    /// The partner refused the forwarded request.
    PartnerRefused,
    /// The socket refused to send the answer.
    SendFailed,
}

impl DropReason {
    /// Every reason, for registering metrics up front.
    pub const ALL: [DropReason; 16] = [
        DropReason::Oversized,
        DropReason::Truncated,
        DropReason::NotStun,
        DropReason::WrongCookie,
        DropReason::Malformed,
        DropReason::BadFingerprint,
        DropReason::Indication,
        DropReason::Response,
        DropReason::RateLimited,
        DropReason::Stale,
        DropReason::DeniedDestination,
        DropReason::Disabled,
        DropReason::ForwardBacklog,
        DropReason::ForwardFailed,
        DropReason::PartnerRefused,
        DropReason::SendFailed,
    ];

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Oversized => "oversized",
            DropReason::Truncated => "truncated",
            DropReason::NotStun => "not_stun",
            DropReason::WrongCookie => "wrong_cookie",
            DropReason::Malformed => "malformed",
            DropReason::BadFingerprint => "bad_fingerprint",
            DropReason::Indication => "indication",
            DropReason::Response => "response",
            DropReason::RateLimited => "rate_limited",
            DropReason::Stale => "stale",
            DropReason::DeniedDestination => "denied_destination",
            DropReason::Disabled => "disabled",
            DropReason::ForwardBacklog => "forward_backlog",
            DropReason::ForwardFailed => "forward_failed",
            DropReason::PartnerRefused => "partner_refused",
            DropReason::SendFailed => "send_failed",
        }
    }

    /// Position in [`DropReason::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    fn of_decode_error(error: &DecodeError) -> DropReason {
        match error {
            DecodeError::TooShort { .. } | DecodeError::TruncatedAttribute { .. } => {
                DropReason::Truncated
            }
            DecodeError::LengthMismatch { header, actual } if usize::from(*header) > *actual => {
                DropReason::Truncated
            }
            DecodeError::NotStun { .. } => DropReason::NotStun,
            DecodeError::BadMagicCookie { .. } => DropReason::WrongCookie,
            _ => DropReason::Malformed,
        }
    }
}

/// What kind of answer a [`Reply`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// A Binding success response.
    Success,
    /// An error response with this code.
    Error(u16),
}

/// An answer to send: the bytes are in the caller's output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// Which of this server's ports sends it.
    pub from: LocalPort,
    /// Where it goes.
    pub to: SocketAddr,
    /// Success or error.
    pub kind: ReplyKind,
}

/// A change-IP request the partner must answer (sent as a `SendBindingResponseRequest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartnerRequest {
    /// The request's transaction id.
    pub transaction_id: TransactionId,
    /// The client's address as seen here (XOR-MAPPED-ADDRESS).
    pub client: SocketAddr,
    /// RESPONSE-PORT, when the request had one.
    pub response_port: Option<u16>,
    /// The request's change-port flag.
    pub change_port: bool,
    /// Which port the request arrived on here.
    pub received_on: LocalPort,
    /// Length of the PADDING to send; 0 for none.
    pub padding_len: u16,
    /// Whether to include the RFC 5780 attributes.
    pub rfc5780_attributes: bool,
}

impl PartnerRequest {
    /// The partner port that answers, per RFC 5780 Table 1: the kind the request arrived on for
    /// change-IP alone, the other kind with change-port too.
    pub const fn answering_port(&self) -> LocalPort {
        if self.change_port {
            self.received_on.other()
        } else {
            self.received_on
        }
    }
}

/// Why the partner did not send a forwarded response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Older than the staleness limit.
    Stale,
    /// The client is over its rate limit here.
    RateLimited,
    /// Port 0, an unspecified, multicast or broadcast address, or the wrong address family.
    DeniedDestination,
    /// RFC 5780 is switched off here.
    Disabled,
}

impl Refusal {
    /// The matching drop reason.
    pub const fn drop_reason(self) -> DropReason {
        match self {
            Refusal::Stale => DropReason::Stale,
            Refusal::RateLimited => DropReason::RateLimited,
            Refusal::DeniedDestination => DropReason::DeniedDestination,
            Refusal::Disabled => DropReason::Disabled,
        }
    }
}

/// What to do with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the output buffer.
    Reply(Reply),
    /// Ask the partner to answer.
    Forward(PartnerRequest),
    /// Send nothing.
    Drop(DropReason),
}

/// The request attributes that decide the answer.
#[derive(Debug)]
struct RequestOptions {
    change_ip: bool,
    change_port: bool,
    response_port: Option<u16>,
    padding: bool,
    unknown: [AttributeType; MAX_ATTRIBUTES],
    unknown_len: usize,
}

impl Default for RequestOptions {
    fn default() -> RequestOptions {
        RequestOptions {
            change_ip: false,
            change_port: false,
            response_port: None,
            padding: false,
            unknown: [AttributeType::default(); MAX_ATTRIBUTES],
            unknown_len: 0,
        }
    }
}

impl RequestOptions {
    fn push_unknown(&mut self, typ: AttributeType) {
        if let Some(slot) = self.unknown.get_mut(self.unknown_len) {
            *slot = typ;
            self.unknown_len += 1;
        }
    }

    fn unknown(&self) -> &[AttributeType] {
        self.unknown.get(..self.unknown_len).unwrap_or(&[])
    }
}

/// The STUN logic of one server: stateless per request except for the shared per-source rate
/// limit. `&self` everywhere, so one responder serves every receive worker and the control API.
#[derive(Debug)]
pub struct StunResponder {
    config: Arc<Config>,
    limiter: Arc<SourceLimiter>,
    /// Zeros for PADDING values, `max_padding` long.
    zeros: Vec<u8>,
}

/// Upper bound of a PADDING value, whatever the configuration (RFC 5780 §7.6: the datagram stays
/// under 64 KiB).
const PADDING_LIMIT: usize = 65_000;

impl StunResponder {
    /// A responder for `config`, answering within `limiter`'s budgets.
    pub fn new(config: Arc<Config>, limiter: Arc<SourceLimiter>) -> StunResponder {
        let zeros = vec![0; config.max_padding.min(PADDING_LIMIT) & !3];
        StunResponder {
            config,
            limiter,
            zeros,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Decides what to do with `datagram` from `source`, received on `arrived_on` at `now`. When
    /// the action is [`Action::Reply`], `out` holds exactly the bytes to send.
    pub fn handle_datagram(
        &self,
        datagram: &[u8],
        source: SocketAddr,
        arrived_on: LocalPort,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Action {
        out.clear();
        if datagram.len() > self.config.max_request_size {
            return Action::Drop(DropReason::Oversized);
        }
        let message = match Message::parse(datagram) {
            Ok(m) => m,
            Err(e) => return Action::Drop(DropReason::of_decode_error(&e)),
        };
        if message.has_fingerprint() && message.verify_fingerprint().is_err() {
            return Action::Drop(DropReason::BadFingerprint);
        }
        match message.class() {
            MessageClass::Request => {}
            MessageClass::Indication => return Action::Drop(DropReason::Indication),
            MessageClass::SuccessResponse | MessageClass::ErrorResponse => {
                return Action::Drop(DropReason::Response);
            }
        }
        if source.port() == 0 || source.ip().is_unspecified() {
            return Action::Drop(DropReason::DeniedDestination);
        }
        // Everything below answers (or forwards): it costs the source a token.
        if !self.limiter.allow(source.ip(), now) {
            return Action::Drop(DropReason::RateLimited);
        }
        let tid = message.transaction_id();
        if message.method() != Method::BINDING {
            return self.error(
                message.method(),
                tid,
                ErrorCode::with_reason(ErrorCode::BAD_REQUEST, "Only Binding is supported"),
                &[],
                source,
                arrived_on,
                out,
            );
        }
        let options = self.read_options(&message);
        if options.unknown_len > 0 {
            return self.error(
                Method::BINDING,
                tid,
                ErrorCode::new(ErrorCode::UNKNOWN_ATTRIBUTE),
                options.unknown(),
                source,
                arrived_on,
                out,
            );
        }
        if options.padding && options.response_port.is_some() {
            return self.error(
                Method::BINDING,
                tid,
                ErrorCode::with_reason(
                    ErrorCode::BAD_REQUEST,
                    "PADDING and RESPONSE-PORT together",
                ),
                &[],
                source,
                arrived_on,
                out,
            );
        }
        if options.response_port == Some(0) {
            return self.error(
                Method::BINDING,
                tid,
                ErrorCode::with_reason(ErrorCode::BAD_REQUEST, "RESPONSE-PORT 0"),
                &[],
                source,
                arrived_on,
                out,
            );
        }
        let destination = match options.response_port {
            Some(port) => SocketAddr::new(source.ip(), port),
            None => source,
        };
        // Padding budget: the response may be as large as the request, no larger.
        let padding_budget = options.padding.then_some(datagram.len());
        if options.change_ip {
            let Some(partner) = &self.config.partner else {
                // read_options already answers 420 without a partner
                return Action::Drop(DropReason::Disabled);
            };
            let answering = if options.change_port {
                arrived_on.other()
            } else {
                arrived_on
            };
            // The partner's response: estimated with the same attributes from its address.
            let padding_len = padding_budget
                .map(|budget| {
                    let base = self.success_builder_len(
                        tid,
                        source,
                        partner.address_of(answering),
                        Some(partner.address_of(arrived_on.other())),
                    );
                    self.padding_for(base, budget)
                })
                .unwrap_or(0);
            return Action::Forward(PartnerRequest {
                transaction_id: tid,
                client: source,
                response_port: options.response_port,
                change_port: options.change_port,
                received_on: arrived_on,
                padding_len: u16::try_from(padding_len).unwrap_or(0),
                rfc5780_attributes: self.config.rfc5780,
            });
        }
        let from = if options.change_port {
            arrived_on.other()
        } else {
            arrived_on
        };
        let other = self
            .config
            .partner
            .as_ref()
            .map(|p| p.address_of(arrived_on.other()));
        self.encode_success(
            tid,
            source,
            self.config.advertised(from),
            other,
            self.config.rfc5780,
            padding_budget.map(Padding::Budget),
            out,
        );
        Action::Reply(Reply {
            from,
            to: destination,
            kind: ReplyKind::Success,
        })
    }

    /// Builds the response a partner asked for (a change-IP request it received), from this
    /// server's own port per RFC 5780 Table 1. `age` is how long ago the partner received the
    /// request. On success `out` holds the bytes to send.
    pub fn handle_partner_request(
        &self,
        request: &PartnerRequest,
        age: Duration,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<Reply, Refusal> {
        out.clear();
        if !self.config.rfc5780 {
            return Err(Refusal::Disabled);
        }
        if age > self.config.forward_staleness {
            return Err(Refusal::Stale);
        }
        let client = request.client;
        let destination =
            SocketAddr::new(client.ip(), request.response_port.unwrap_or(client.port()));
        if !is_deliverable(destination) || !same_family(destination.ip(), self.config.bind_ip) {
            return Err(Refusal::DeniedDestination);
        }
        if !self.limiter.allow(client.ip(), now) {
            return Err(Refusal::RateLimited);
        }
        let from = request.answering_port();
        // RFC 5780 Table 1: OTHER-ADDRESS is Ca:Cp seen from the request's destination, i.e. this
        // server's IP with the port of the other kind than the one the request arrived on.
        let other = request
            .rfc5780_attributes
            .then(|| self.config.advertised(request.received_on.other()));
        let padding =
            (request.padding_len > 0).then_some(Padding::Exact(usize::from(request.padding_len)));
        self.encode_success(
            request.transaction_id,
            client,
            self.config.advertised(from),
            other,
            request.rfc5780_attributes,
            padding,
            out,
        );
        Ok(Reply {
            from,
            to: destination,
            kind: ReplyKind::Success,
        })
    }

    fn read_options(&self, message: &Message<'_>) -> RequestOptions {
        let mut options = RequestOptions::default();
        let rfc5780 = self.config.rfc5780;
        for attribute in message.attributes() {
            match attribute {
                Attribute::ChangeRequest(flags) => {
                    if rfc5780 && self.config.partner.is_some() {
                        options.change_ip = flags.change_ip;
                        options.change_port = flags.change_port;
                    } else {
                        options.push_unknown(AttributeType::CHANGE_REQUEST);
                    }
                }
                Attribute::ResponsePort(port) => {
                    if rfc5780 {
                        options.response_port = Some(port);
                    } else {
                        options.push_unknown(AttributeType::RESPONSE_PORT);
                    }
                }
                Attribute::Padding(_) => {
                    if rfc5780 {
                        options.padding = true;
                    } else {
                        options.push_unknown(AttributeType::PADDING);
                    }
                }
                Attribute::Unknown { typ, .. } if typ.is_comprehension_required() => {
                    options.push_unknown(typ);
                }
                _ => {}
            }
        }
        options
    }

    /// Length of the success response without PADDING.
    fn success_builder_len(
        &self,
        tid: TransactionId,
        client: SocketAddr,
        origin: SocketAddr,
        other: Option<SocketAddr>,
    ) -> usize {
        let mut attributes = [Attribute::DontFragment; 6];
        let n =
            self.success_attributes(&mut attributes, client, origin, other, self.config.rfc5780);
        MessageBuilder::new(MessageType::BINDING_SUCCESS, tid)
            .attributes(attributes.get(..n).unwrap_or(&[]))
            .fingerprint()
            .encoded_len()
    }

    /// PADDING length for a response of `base` bytes that must not exceed `budget` bytes.
    fn padding_for(&self, base: usize, budget: usize) -> usize {
        budget.saturating_sub(base + 4).min(self.zeros.len()) & !3
    }

    /// Fills `attributes` with the success response's attributes before PADDING; returns how
    /// many.
    fn success_attributes<'a>(
        &'a self,
        attributes: &mut [Attribute<'a>; 6],
        client: SocketAddr,
        origin: SocketAddr,
        other: Option<SocketAddr>,
        rfc5780: bool,
    ) -> usize {
        let mut n = 0;
        let mut push = |a: Attribute<'a>| {
            if let Some(slot) = attributes.get_mut(n) {
                *slot = a;
                n += 1;
            }
        };
        push(Attribute::XorMappedAddress(client));
        if rfc5780 {
            // RFC 5780 §6.1: both MAPPED-ADDRESS and XOR-MAPPED-ADDRESS.
            push(Attribute::MappedAddress(client));
            push(Attribute::ResponseOrigin(origin));
            if let Some(other) = other {
                push(Attribute::OtherAddress(other));
            }
        }
        if let Some(software) = &self.config.software {
            push(Attribute::Software(software));
        }
        n
    }

    #[allow(clippy::too_many_arguments)]
    fn encode_success(
        &self,
        tid: TransactionId,
        client: SocketAddr,
        origin: SocketAddr,
        other: Option<SocketAddr>,
        rfc5780: bool,
        padding: Option<Padding>,
        out: &mut Vec<u8>,
    ) {
        let mut attributes = [Attribute::DontFragment; 6];
        let mut n = self.success_attributes(&mut attributes, client, origin, other, rfc5780);
        let base = MessageBuilder::new(MessageType::BINDING_SUCCESS, tid)
            .attributes(attributes.get(..n).unwrap_or(&[]))
            .fingerprint()
            .encoded_len();
        let padding_len = match padding {
            None => None,
            Some(Padding::Budget(budget)) => Some(self.padding_for(base, budget)),
            Some(Padding::Exact(len)) => Some(len.min(self.zeros.len()) & !3),
        };
        let mut all = [Attribute::DontFragment; 7];
        for (slot, a) in all.iter_mut().zip(attributes.iter().take(n)) {
            *slot = *a;
        }
        if let Some(len) = padding_len
            && let (Some(slot), Some(zeros)) = (all.get_mut(n), self.zeros.get(..len))
        {
            *slot = Attribute::Padding(zeros);
            n += 1;
        }
        let builder = MessageBuilder::new(MessageType::BINDING_SUCCESS, tid)
            .attributes(all.get(..n).unwrap_or(&[]))
            .fingerprint();
        out.reserve(builder.encoded_len());
        // Only our own well-formed attributes, far below every limit: encoding cannot fail.
        if builder.encode_into(out).is_err() {
            out.clear();
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn error(
        &self,
        method: Method,
        tid: TransactionId,
        code: ErrorCode<'_>,
        unknown: &[AttributeType],
        source: SocketAddr,
        arrived_on: LocalPort,
        out: &mut Vec<u8>,
    ) -> Action {
        let error = Attribute::ErrorCode(code);
        let list = Attribute::UnknownAttributes(UnknownAttributes::new(unknown));
        let attributes = [error, list];
        let n = if unknown.is_empty() { 1 } else { 2 };
        let builder =
            MessageBuilder::new(MessageType::new(method, MessageClass::ErrorResponse), tid)
                .attributes(attributes.get(..n).unwrap_or(&[]))
                .fingerprint();
        if builder.encode_into(out).is_err() {
            out.clear();
            return Action::Drop(DropReason::Malformed);
        }
        Action::Reply(Reply {
            from: arrived_on,
            to: source,
            kind: ReplyKind::Error(code.code),
        })
    }
}

/// How much PADDING a response carries.
#[derive(Debug, Clone, Copy)]
enum Padding {
    /// As much as keeps the response within this many bytes.
    Budget(usize),
    /// This many bytes (a partner's request), capped by `max_padding`.
    Exact(usize),
}

/// Whether a response may be sent to `addr` at all.
pub fn is_deliverable(addr: SocketAddr) -> bool {
    let ip = addr.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

/// Whether a socket bound to `local` can send to `remote`.
fn same_family(remote: IpAddr, local: IpAddr) -> bool {
    match (remote, local) {
        (IpAddr::V4(_), IpAddr::V4(_)) => true,
        // an IPv6 socket bound to :: reaches IPv4 through mapped addresses
        (IpAddr::V6(_), IpAddr::V6(_)) | (IpAddr::V4(_), IpAddr::V6(_)) => true,
        (IpAddr::V6(_), IpAddr::V4(_)) => false,
    }
}

#[cfg(test)]
mod tests;
