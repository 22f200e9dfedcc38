//! [`Punch`]: the sans-IO hole-punching state machine (no sockets, no clock).
//!
//! The caller feeds it datagrams ([`Punch::handle_datagram`]) and the time
//! ([`Punch::handle_timeout`]), and pulls datagrams to send ([`Punch::poll_transmit`]) and the next
//! wake-up ([`Punch::poll_timeout`]) until [`Punch::state`] is no longer
//! [`PunchState::Punching`]. Sockets are numbered: 0 is the main socket, 1..=N the extra sockets
//! of the birthday side ([`Punch::extra_sockets`]).
//!
//! # Checks and selection (RFC 8445 §7.2, simplified)
//! A *pair* is (local socket, remote address). The pairs are the main socket × every remote
//! candidate address (host, reflexive, each port of a predicted span), and with port prediction
//! every extra socket × the remote reflexive candidates (birthday side, at most
//! [`MAX_BIRTHDAY_TARGETS`], one whose port is also a host candidate's first) and the main socket ×
//! `remote_probe_count` random ports of the remote reflexive IP (spray side). From the start time,
//! every pair gets a check (an authenticated Binding request, see
//! [`quickp2p_wire::probe`]) every probe interval, candidate pairs before birthday and spray
//! pairs, never more than `max_probes_per_second` checks per second (token bucket, bursts of
//! 20 ms worth), and none after the budget.
//!
//! An authenticated request is answered with a response carrying the source it came from; a
//! request from an address that is no pair yet creates a *peer-reflexive* pair (what a symmetric
//! NAT produces) and a *triggered check* back on it. A response counts only if it arrives on the
//! socket and from the address its request went to (the transaction id names the pair). A pair
//! whose own check got a response has *succeeded*.
//!
//! The initiator nominates the first pair that has succeeded and on which it also received an
//! authenticated request (so the path works both ways): it sends USE-CANDIDATE checks on it every
//! interval. The responder answers a nominating check only on a pair whose own check has
//! succeeded, selects that pair, and answers twice (a lost answer is covered by the duplicate);
//! otherwise it sends a triggered check and waits for the next nomination. The initiator selects
//! the pair when the answer to a nominating check arrives. So the initiator selects only pairs the
//! responder has selected, and both select the same pair. After ten unconfirmed nominations the
//! initiator gives the pair up and goes on checking the others. A stranger without the probe key cannot
//! produce a request or response that passes, so it can neither create pairs nor make one succeed.
//!
//! # Openers (birthday side)
//! With [`PunchPlan::opener_ttl`] > 0 an extra socket that has not yet received an authenticated
//! probe sends only *openers*: its birthday check with the IP TTL set to `opener_ttl`
//! ([`Transmit::ttl`]), which crosses the NAT(s) in front of this host — creating the mapping the
//! other side's spray must hit — and expires before the far NAT. A full-TTL check from a random
//! port reaching a Linux-like far NAT that keeps conntrack state for unsolicited packets would
//! leave an entry there that makes the far side's later spray to that port leave through another
//! external port, which our address-and-port-dependent filter then drops (DESIGN.md §4). The
//! openers go out as one burst as soon as the machine exists (before the start: they never reach
//! the other side, and mappings opened early cannot be taken by the far side's spray arriving
//! first), then every [`OPENER_REFRESH`] to keep the mappings. Rate bound: the burst — one opener
//! per birthday pair, i.e. per extra socket and remote reflexive candidate, at most
//! [`MAX_LOCAL_SOCKETS`](super::MAX_LOCAL_SOCKETS) × [`MAX_BIRTHDAY_TARGETS`] datagrams that leave
//! no further than the local NATs — is not counted against `max_probes_per_second`; refreshes
//! and everything else are. Once an extra socket receives an authenticated probe it is *live*:
//! it answers and checks like the main socket, at the normal TTL, and its birthday pair joins the
//! regular schedule at once. Openers are not counted in [`PunchStats::requests_sent`] but in
//! [`PunchStats::openers_sent`].

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quickp2p_proto::v1;
use quickp2p_wire::probe::{Probe, ProbeCodec, ProbeRejection, ProbeRequest, ProbeRole};
use quickp2p_wire::stun::TransactionId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::plan::{PlanError, PunchPlan, PunchStrategy};

/// Most peer-reflexive pairs learned from authenticated requests.
pub const MAX_PEER_REFLEXIVE: usize = 64;
/// How many times the responder sends the answer that confirms a nomination.
const CONFIRMATIONS: usize = 2;
/// Unanswered nominations after which the initiator gives a pair up and may nominate another.
const MAX_NOMINATIONS: u32 = 10;
/// Flag bit in the transaction id: the check nominated its pair.
const NOMINATING: u8 = 0x01;
/// Most remote reflexive candidates each extra socket of the birthday side probes.
pub const MAX_BIRTHDAY_TARGETS: usize = 4;
/// How often an extra socket that has heard nothing yet re-sends its opener (conntrack keeps an
/// unreplied UDP flow 30 s; home routers often less).
pub const OPENER_REFRESH: Duration = Duration::from_secs(1);

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The local socket: 0 = main, 1..=N = extra socket N.
    pub socket: usize,
    /// Where to send it.
    pub destination: SocketAddr,
    /// The bytes.
    pub payload: Vec<u8>,
    /// `Some(ttl)` for an opener (see the [module documentation](self#openers-birthday-side)):
    /// send it with this IP TTL / IPv6 hop limit. `None`: the socket's normal TTL. Only extra
    /// sockets (1..=N) send openers.
    pub ttl: Option<u8>,
}

/// Authenticated-probe rejections, by reason (see [`ProbeRejection`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RejectedProbes {
    /// Not STUN, or malformed STUN.
    pub malformed: u32,
    /// STUN but not a Binding request or success response.
    pub not_a_probe: u32,
    /// Missing or wrong FINGERPRINT.
    pub fingerprint: u32,
    /// Missing or foreign USERNAME.
    pub username: u32,
    /// Another negotiation's probe.
    pub other_handshake: u32,
    /// Another attempt's probe.
    pub other_attempt: u32,
    /// Wrong sender role (e.g. our own probe reflected).
    pub wrong_role: u32,
    /// Missing or invalid MESSAGE-INTEGRITY-SHA256: a forged or corrupted probe.
    pub integrity: u32,
    /// A response without XOR-MAPPED-ADDRESS.
    pub no_mapped_address: u32,
    /// An authenticated response that does not match a check we sent on that socket to that
    /// address.
    pub unmatched_response: u32,
    /// An authenticated request from an unknown address once [`MAX_PEER_REFLEXIVE`] are known.
    pub too_many_peer_reflexive: u32,
}

impl RejectedProbes {
    /// All rejections.
    pub fn total(&self) -> u32 {
        [
            self.malformed,
            self.not_a_probe,
            self.fingerprint,
            self.username,
            self.other_handshake,
            self.other_attempt,
            self.wrong_role,
            self.integrity,
            self.no_mapped_address,
            self.unmatched_response,
            self.too_many_peer_reflexive,
        ]
        .iter()
        .fold(0u32, |a, b| a.saturating_add(*b))
    }

    fn count(&mut self, rejection: ProbeRejection) {
        let slot = match rejection {
            ProbeRejection::Malformed(_) => &mut self.malformed,
            ProbeRejection::NotAProbe => &mut self.not_a_probe,
            ProbeRejection::Fingerprint => &mut self.fingerprint,
            ProbeRejection::Username => &mut self.username,
            ProbeRejection::OtherHandshake => &mut self.other_handshake,
            ProbeRejection::OtherAttempt => &mut self.other_attempt,
            ProbeRejection::WrongRole => &mut self.wrong_role,
            ProbeRejection::Integrity => &mut self.integrity,
            ProbeRejection::NoMappedAddress => &mut self.no_mapped_address,
            _ => &mut self.malformed,
        };
        *slot = slot.saturating_add(1);
    }
}

/// Counters of one attempt, for the `PunchReport`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PunchStats {
    /// Connectivity checks (requests) sent, openers not included.
    pub requests_sent: u32,
    /// Openers sent: TTL-limited checks of extra sockets that have not heard the other side yet
    /// (they expire before the far NAT).
    pub openers_sent: u32,
    /// Responses sent to the other side's checks.
    pub responses_sent: u32,
    /// Authenticated probes (requests and responses) received.
    pub probes_received: u32,
    /// Datagrams ignored, by reason.
    pub rejected: RejectedProbes,
    /// Time from the scheduled start to the first authenticated probe received (zero when it came
    /// before the start).
    pub first_probe_after: Option<Duration>,
    /// Time from the scheduled start to the selection.
    pub selected_after: Option<Duration>,
    /// Extra local sockets used (birthday side).
    pub extra_sockets: u16,
    /// Peer-reflexive pairs learned.
    pub peer_reflexive: u32,
    /// Pairs checked in all.
    pub pairs: u32,
}

impl PunchStats {
    /// Probes sent, requests and responses.
    pub fn probes_sent(&self) -> u32 {
        self.requests_sent.saturating_add(self.responses_sent)
    }
}

/// The selected path, as the machine knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectedPair {
    /// The local socket: 0 = main, 1..=N = extra socket N.
    pub socket: usize,
    /// The remote address.
    pub remote: SocketAddr,
    /// The remote candidate's kind; a peer-reflexive address is REFLEXIVE (the proto has no
    /// peer-reflexive kind) with `peer_reflexive` set, a sprayed port is PREDICTED.
    pub remote_kind: v1::CandidateKind,
    /// Whether the remote address was learned from the other side's check.
    pub peer_reflexive: bool,
    /// Our address on this path as the other side saw it (XOR-MAPPED-ADDRESS).
    pub mapped: Option<SocketAddr>,
}

/// Where an attempt is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PunchState {
    /// Still punching.
    Punching,
    /// A path was selected.
    Selected(SelectedPair),
    /// The budget ran out.
    Failed,
}

/// What [`Punch::handle_datagram`] made of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// An authenticated probe of this attempt.
    Probe,
    /// Ignored (and counted).
    Rejected(ProbeRejection),
    /// Authenticated, but ignored: see [`RejectedProbes::unmatched_response`] and
    /// [`RejectedProbes::too_many_peer_reflexive`].
    Unusable,
}

/// Which queue a pair's regular checks come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Main socket × listed candidates, and peer-reflexive pairs.
    Candidate,
    /// Birthday and spray pairs.
    Wide,
    /// Birthday pairs sending openers (queued by the caller).
    Opener,
}

#[derive(Clone, Debug)]
struct Pair {
    socket: usize,
    remote: SocketAddr,
    kind: v1::CandidateKind,
    peer_reflexive: bool,
    succeeded: bool,
    request_received: bool,
    mapped: Option<SocketAddr>,
    last_triggered: Option<Instant>,
    /// The initiator nominated it [`MAX_NOMINATIONS`] times without a confirmation.
    abandoned: bool,
    /// A birthday pair whose socket has not heard the other side yet: it sends openers, from the
    /// opener queue.
    opener: bool,
}

/// A token bucket in micro-tokens.
#[derive(Clone, Debug)]
struct Bucket {
    rate: u64,
    capacity: u64,
    tokens: u64,
    updated: Instant,
}

const TOKEN: u64 = 1_000_000;

impl Bucket {
    fn new(rate: u32, now: Instant) -> Bucket {
        let rate = u64::from(rate.max(1));
        let capacity = (rate / 50).max(1) * TOKEN;
        Bucket {
            rate,
            capacity,
            tokens: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.tokens = self
            .tokens
            .saturating_add(micros.saturating_mul(self.rate))
            .min(self.capacity);
        self.updated = now.max(self.updated);
    }

    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= TOKEN {
            self.tokens -= TOKEN;
            true
        } else {
            false
        }
    }

    /// When the next token is there.
    fn next_token(&self, now: Instant) -> Instant {
        if self.tokens >= TOKEN {
            return self.updated.max(now);
        }
        let missing = TOKEN - self.tokens;
        self.updated + Duration::from_micros(missing.div_ceil(self.rate))
    }
}

/// The hole-punching state machine of one side of one attempt. See the
/// [module documentation](self).
#[derive(Debug)]
pub struct Punch {
    codec: ProbeCodec,
    role: ProbeRole,
    start: Instant,
    deadline: Instant,
    interval: Duration,
    extra_sockets: usize,
    pairs: Vec<Pair>,
    index: HashMap<(usize, SocketAddr), usize>,
    candidate_queue: BinaryHeap<Reverse<(Instant, usize)>>,
    wide_queue: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Opener pairs, by when their next opener is due (entries of pairs gone live are skipped).
    opener_queue: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Openers still to send outside the rate bound (the initial burst).
    opener_burst: usize,
    /// The openers' TTL; 0: no openers.
    opener_ttl: u8,
    /// Per socket (0 = main): whether an authenticated probe arrived on it.
    heard: Vec<bool>,
    triggered: VecDeque<usize>,
    outbox: VecDeque<Transmit>,
    bucket: Bucket,
    rng: StdRng,
    tie_breaker: u64,
    /// The pair being nominated, when its next nominating check is due, and how many were sent.
    nominated: Option<(usize, Instant, u32)>,
    state: PunchState,
    stats: PunchStats,
    /// The latest time the caller passed in.
    now: Instant,
}

impl Punch {
    /// A machine for `plan`; `seed` seeds transaction ids, tie-breaker and sprayed ports (pass
    /// `rand::random()` outside tests). `now` is the current time on the plan's clock. Fails only
    /// for a plan [`PunchPlan::checked`] would refuse.
    pub fn new(plan: &PunchPlan, seed: u64, now: Instant) -> Result<Punch, PlanError> {
        let codec = ProbeCodec::new(&plan.handshake_id, plan.attempt, &plan.probe_key, plan.role)
            .map_err(|_| PlanError::HandshakeId(plan.handshake_id.len()))?;
        let mut rng = StdRng::seed_from_u64(seed);
        let tie_breaker = rng.random();
        let start = plan.start;
        let mut punch = Punch {
            codec,
            role: plan.role,
            start,
            deadline: start + plan.budget,
            interval: plan.probe_interval,
            extra_sockets: 0,
            pairs: Vec::new(),
            index: HashMap::new(),
            candidate_queue: BinaryHeap::new(),
            wide_queue: BinaryHeap::new(),
            opener_queue: BinaryHeap::new(),
            opener_burst: 0,
            opener_ttl: plan.opener_ttl,
            heard: vec![true],
            triggered: VecDeque::new(),
            outbox: VecDeque::new(),
            bucket: Bucket::new(plan.max_probes_per_second, now.max(start)),
            rng,
            tie_breaker,
            nominated: None,
            state: PunchState::Punching,
            stats: PunchStats::default(),
            now,
        };
        punch.add_pairs(plan, now);
        Ok(punch)
    }

    fn add_pairs(&mut self, plan: &PunchPlan, now: Instant) {
        let mut budget = super::plan::MAX_CANDIDATE_ADDRESSES;
        for candidate in &plan.remote_candidates {
            for offset in 0..candidate.port_span {
                if budget == 0 {
                    break;
                }
                let Some(port) = candidate.address.port().checked_add(offset) else {
                    break;
                };
                let remote = SocketAddr::new(candidate.address.ip(), port);
                if self
                    .add_pair(0, remote, candidate.kind, false, Class::Candidate)
                    .is_some()
                {
                    budget -= 1;
                }
            }
        }
        let Some(prediction) = plan
            .prediction
            .filter(|_| plan.strategy == PunchStrategy::PortPrediction)
        else {
            return;
        };
        let reflexive = plan
            .remote_candidates
            .iter()
            .find(|c| c.kind == v1::CandidateKind::Reflexive)
            .or_else(|| plan.remote_candidates.first())
            .map(|c| c.address);
        let Some(reflexive) = reflexive else {
            return;
        };
        // birthday side: every extra socket probes the remote reflexive candidates (several when
        // the other side announced mappings of several of its sockets; the one whose port is also
        // a host candidate's, which a port-preserving NAT kept, first)
        let host_ports: HashSet<u16> = plan
            .remote_candidates
            .iter()
            .filter(|c| c.kind == v1::CandidateKind::Host)
            .map(|c| c.address.port())
            .collect();
        let mut targets: Vec<SocketAddr> = Vec::new();
        for c in &plan.remote_candidates {
            let address = canonical(c.address);
            if c.kind == v1::CandidateKind::Reflexive && !targets.contains(&address) {
                targets.push(address);
            }
        }
        targets.sort_by_key(|t| !host_ports.contains(&t.port()));
        targets.truncate(MAX_BIRTHDAY_TARGETS);
        if targets.is_empty() {
            targets.push(reflexive);
        }
        self.extra_sockets = usize::from(prediction.local_socket_count);
        self.stats.extra_sockets = prediction.local_socket_count;
        let openers = self.opener_ttl > 0;
        self.heard.resize(self.extra_sockets + 1, !openers);
        let class = if openers { Class::Opener } else { Class::Wide };
        for socket in 1..=self.extra_sockets {
            for target in &targets {
                if let Some(index) =
                    self.add_pair(socket, *target, v1::CandidateKind::Reflexive, false, class)
                    && openers
                {
                    // the burst goes out now, before the start
                    self.opener_queue.push(Reverse((now, index)));
                    self.opener_burst += 1;
                }
            }
        }
        // spray side: random distinct ports of the remote reflexive IP from the main socket
        if prediction.remote_probe_count == 0
            || prediction.remote_port_min == 0
            || prediction.remote_port_min > prediction.remote_port_max
        {
            return;
        }
        let range =
            u32::from(prediction.remote_port_max) - u32::from(prediction.remote_port_min) + 1;
        let wanted = u32::from(prediction.remote_probe_count).min(range);
        let mut ports: Vec<u16> = if wanted == range {
            (prediction.remote_port_min..=prediction.remote_port_max).collect()
        } else {
            let mut chosen = HashSet::new();
            let mut ports = Vec::new();
            while ports.len() < usize::try_from(wanted).unwrap_or(0) {
                let port = self
                    .rng
                    .random_range(prediction.remote_port_min..=prediction.remote_port_max);
                if chosen.insert(port) {
                    ports.push(port);
                }
            }
            ports
        };
        if wanted == range {
            // same order a random draw would give
            for i in (1..ports.len()).rev() {
                let j = self.rng.random_range(0..=i);
                ports.swap(i, j);
            }
        }
        for port in ports {
            self.add_pair(
                0,
                SocketAddr::new(reflexive.ip(), port),
                v1::CandidateKind::Predicted,
                false,
                Class::Wide,
            );
        }
    }

    /// Adds a pair if it is new; returns its index.
    fn add_pair(
        &mut self,
        socket: usize,
        remote: SocketAddr,
        kind: v1::CandidateKind,
        peer_reflexive: bool,
        class: Class,
    ) -> Option<usize> {
        let remote = canonical(remote);
        let index = self.pairs.len();
        match self.index.entry((socket, remote)) {
            Entry::Occupied(_) => return None,
            Entry::Vacant(slot) => slot.insert(index),
        };
        self.pairs.push(Pair {
            socket,
            remote,
            kind,
            peer_reflexive,
            succeeded: false,
            request_received: false,
            mapped: None,
            last_triggered: None,
            abandoned: false,
            opener: class == Class::Opener,
        });
        self.stats.pairs = self.stats.pairs.saturating_add(1);
        match class {
            Class::Candidate => self.candidate_queue.push(Reverse((self.start, index))),
            Class::Wide => self.wide_queue.push(Reverse((self.start, index))),
            Class::Opener => {}
        }
        Some(index)
    }

    /// Extra local sockets the caller must open (birthday side), numbered 1..=N.
    pub fn extra_sockets(&self) -> usize {
        self.extra_sockets
    }

    /// The state.
    pub fn state(&self) -> PunchState {
        self.state
    }

    /// The counters so far.
    pub fn stats(&self) -> PunchStats {
        self.stats
    }

    /// When the attempt gives up.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether nothing is left to do (decided and nothing queued to send).
    pub fn is_done(&self) -> bool {
        self.state != PunchState::Punching && self.outbox.is_empty()
    }

    /// Processes one datagram that arrived on local `socket` from `from`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        socket: usize,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Disposition {
        self.now = self.now.max(now);
        let from = canonical(from);
        let probe = match self.codec.decode(datagram) {
            Ok(probe) => probe,
            Err(rejection) => {
                self.stats.rejected.count(rejection);
                return Disposition::Rejected(rejection);
            }
        };
        if self.state != PunchState::Punching {
            return Disposition::Unusable;
        }
        match probe {
            Probe::Request {
                transaction_id,
                nominate,
                ..
            } => self.on_request(now, socket, from, transaction_id, nominate),
            Probe::Response {
                transaction_id,
                mapped,
            } => self.on_response(now, socket, from, transaction_id, mapped),
        }
    }

    fn received(&mut self, now: Instant, socket: usize) {
        self.stats.probes_received = self.stats.probes_received.saturating_add(1);
        if self.heard.get(socket) == Some(&false) {
            self.go_live(now, socket);
        }
        if self.stats.first_probe_after.is_none() {
            self.stats.first_probe_after = Some(now.saturating_duration_since(self.start));
        }
    }

    fn on_request(
        &mut self,
        now: Instant,
        socket: usize,
        from: SocketAddr,
        transaction_id: TransactionId,
        nominate: bool,
    ) -> Disposition {
        if socket > self.extra_sockets {
            return Disposition::Unusable;
        }
        let index = match self.index.get(&(socket, from)) {
            Some(index) => *index,
            None => {
                if self.stats.peer_reflexive as usize >= MAX_PEER_REFLEXIVE {
                    self.stats.rejected.too_many_peer_reflexive = self
                        .stats
                        .rejected
                        .too_many_peer_reflexive
                        .saturating_add(1);
                    return Disposition::Unusable;
                }
                let Some(index) = self.add_pair(
                    socket,
                    from,
                    v1::CandidateKind::Reflexive,
                    true,
                    Class::Candidate,
                ) else {
                    return Disposition::Unusable;
                };
                self.stats.peer_reflexive = self.stats.peer_reflexive.saturating_add(1);
                index
            }
        };
        self.received(now, socket);
        let Some(pair) = self.pairs.get_mut(index) else {
            return Disposition::Unusable;
        };
        pair.request_received = true;
        let succeeded = pair.succeeded;
        let abandoned = pair.abandoned;
        match (self.role, nominate) {
            (ProbeRole::Responder, true) if succeeded => {
                for _ in 0..CONFIRMATIONS {
                    self.respond(socket, from, transaction_id);
                }
                self.select(now, index);
                return Disposition::Probe;
            }
            (ProbeRole::Responder, true) => {
                // confirm only a pair our own check has proven: check it first
            }
            _ => self.respond(socket, from, transaction_id),
        }
        if succeeded {
            if self.role == ProbeRole::Initiator && self.nominated.is_none() && !abandoned {
                self.nominated = Some((index, now, 0));
            }
        } else {
            self.trigger(now, index);
        }
        Disposition::Probe
    }

    fn on_response(
        &mut self,
        now: Instant,
        socket: usize,
        from: SocketAddr,
        transaction_id: TransactionId,
        mapped: SocketAddr,
    ) -> Disposition {
        let tid = transaction_id.as_bytes();
        let index = u32::from_be_bytes([tid[0], tid[1], tid[2], tid[3]]) as usize;
        let nominating = tid[4] & NOMINATING != 0;
        let matches = self
            .pairs
            .get(index)
            .is_some_and(|pair| pair.socket == socket && pair.remote == from);
        if !matches {
            self.stats.rejected.unmatched_response =
                self.stats.rejected.unmatched_response.saturating_add(1);
            return Disposition::Unusable;
        }
        self.received(now, socket);
        let Some(pair) = self.pairs.get_mut(index) else {
            return Disposition::Unusable;
        };
        pair.succeeded = true;
        pair.mapped = Some(mapped);
        let request_received = pair.request_received;
        let abandoned = pair.abandoned;
        if self.role == ProbeRole::Initiator {
            if nominating && self.nominated.is_some_and(|(n, _, _)| n == index) {
                self.select(now, index);
            } else if request_received && self.nominated.is_none() && !abandoned {
                self.nominated = Some((index, now, 0));
            }
        }
        Disposition::Probe
    }

    /// `socket` heard the other side: its opener pairs become regular wide pairs, due now.
    fn go_live(&mut self, now: Instant, socket: usize) {
        if let Some(heard) = self.heard.get_mut(socket) {
            *heard = true;
        }
        let due = now.max(self.start);
        for (index, pair) in self.pairs.iter_mut().enumerate() {
            if pair.socket == socket && pair.opener {
                pair.opener = false;
                self.wide_queue.push(Reverse((due, index)));
            }
        }
        let pairs = &self.pairs;
        self.opener_queue
            .retain(|Reverse((_, index))| pairs.get(*index).is_some_and(|p| p.opener));
        self.opener_burst = self.opener_burst.min(self.opener_queue.len());
    }

    fn respond(&mut self, socket: usize, to: SocketAddr, transaction_id: TransactionId) {
        let mut payload = Vec::with_capacity(128);
        if self
            .codec
            .encode_response(transaction_id, to, &mut payload)
            .is_ok()
        {
            self.stats.responses_sent = self.stats.responses_sent.saturating_add(1);
            self.outbox.push_back(Transmit {
                socket,
                destination: to,
                payload,
                ttl: None,
            });
        }
    }

    fn trigger(&mut self, now: Instant, index: usize) {
        let interval = self.interval;
        let Some(pair) = self.pairs.get_mut(index) else {
            return;
        };
        if pair
            .last_triggered
            .is_some_and(|at| now.saturating_duration_since(at) < interval)
        {
            return;
        }
        pair.last_triggered = Some(now);
        if !self.triggered.contains(&index) {
            self.triggered.push_back(index);
        }
    }

    fn select(&mut self, now: Instant, index: usize) {
        let Some(pair) = self.pairs.get(index) else {
            return;
        };
        self.stats.selected_after = Some(now.saturating_duration_since(self.start));
        self.state = PunchState::Selected(SelectedPair {
            socket: pair.socket,
            remote: pair.remote,
            remote_kind: pair.kind,
            peer_reflexive: pair.peer_reflexive,
            mapped: pair.mapped,
        });
        self.triggered.clear();
    }

    /// Checks the budget.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.state == PunchState::Punching && now >= self.deadline {
            self.state = PunchState::Failed;
            self.triggered.clear();
        }
    }

    /// The next datagram to send now, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.now = self.now.max(now);
        if let Some(transmit) = self.outbox.pop_front() {
            return Some(transmit);
        }
        self.handle_timeout(now);
        if self.state != PunchState::Punching {
            return None;
        }
        // what is due, in order: nomination, triggered checks, openers (also before the start),
        // candidate pairs, wide pairs
        if let Some((index, _, sent)) = self.nominated
            && sent >= MAX_NOMINATIONS
        {
            // the responder never confirmed (its own check on the pair keeps failing): let
            // another pair be nominated
            self.nominated = None;
            if let Some(pair) = self.pairs.get_mut(index) {
                pair.abandoned = true;
            }
        }
        let (index, nominate) = if let Some((index, due, sent)) = self.nominated {
            if due > now || !self.bucket.take(now) {
                return None;
            }
            self.nominated = Some((index, now + self.interval, sent + 1));
            (index, true)
        } else if !self.triggered.is_empty() {
            if !self.bucket.take(now) {
                return None;
            }
            (self.triggered.pop_front()?, false)
        } else if let Some(index) = self.due_opener(now) {
            return self.request(index, false);
        } else if now < self.start {
            return None;
        } else {
            let queue = match (self.candidate_queue.peek(), self.wide_queue.peek()) {
                (Some(Reverse((due, _))), _) if *due <= now => &mut self.candidate_queue,
                (_, Some(Reverse((due, _)))) if *due <= now => &mut self.wide_queue,
                _ => return None,
            };
            if !self.bucket.take(now) {
                return None;
            }
            let Reverse((_, index)) = queue.pop()?;
            queue.push(Reverse((now + self.interval, index)));
            (index, false)
        };
        self.request(index, nominate)
    }

    /// The opener pair due now whose opener may go (burst, or a token), rescheduled.
    fn due_opener(&mut self, now: Instant) -> Option<usize> {
        loop {
            let Reverse((due, index)) = *self.opener_queue.peek()?;
            if !self.pairs.get(index).is_some_and(|p| p.opener) {
                // gone live: the regular schedule has it
                self.opener_queue.pop();
                continue;
            }
            if due > now {
                return None;
            }
            if self.opener_burst > 0 {
                self.opener_burst -= 1;
            } else if !self.bucket.take(now) {
                return None;
            }
            self.opener_queue.pop();
            self.opener_queue
                .push(Reverse((now + OPENER_REFRESH, index)));
            return Some(index);
        }
    }

    fn request(&mut self, index: usize, nominate: bool) -> Option<Transmit> {
        let pair = self.pairs.get(index)?;
        let opener = pair.opener;
        let mut tid = [0u8; 12];
        let [a, b, c, d] = u32::try_from(index).unwrap_or(u32::MAX).to_be_bytes();
        tid[..4].copy_from_slice(&[a, b, c, d]);
        tid[4] = if nominate { NOMINATING } else { 0 };
        self.rng.fill(&mut tid[5..]);
        let socket_preference = 65535u32.saturating_sub(u32::try_from(pair.socket).unwrap_or(0));
        let request = ProbeRequest {
            transaction_id: TransactionId::new(tid),
            // peer-reflexive type preference (RFC 8445 §5.1.2.1), one local preference per socket
            priority: (110 << 24) | (socket_preference << 8) | 255,
            tie_breaker: self.tie_breaker,
            nominate,
        };
        let mut payload = Vec::with_capacity(128);
        self.codec.encode_request(&request, &mut payload).ok()?;
        let ttl = if opener {
            self.stats.openers_sent = self.stats.openers_sent.saturating_add(1);
            Some(self.opener_ttl)
        } else {
            self.stats.requests_sent = self.stats.requests_sent.saturating_add(1);
            None
        };
        Some(Transmit {
            socket: pair.socket,
            destination: pair.remote,
            payload,
            ttl,
        })
    }

    /// When [`poll_transmit`](Self::poll_transmit) or [`handle_timeout`](Self::handle_timeout)
    /// next has something to do; `None` once [`is_done`](Self::is_done).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.outbox.is_empty() {
            return Some(self.now);
        }
        if self.state != PunchState::Punching {
            return None;
        }
        let mut due = self.deadline;
        let mut candidates = Vec::with_capacity(4);
        if let Some((_, at, _)) = self.nominated {
            candidates.push(at);
        } else {
            if !self.triggered.is_empty() {
                candidates.push(self.now);
            }
            for queue in [&self.candidate_queue, &self.wide_queue] {
                if let Some(Reverse((at, _))) = queue.peek() {
                    candidates.push((*at).max(self.start));
                }
            }
        }
        let next_token = self.bucket.next_token(self.now);
        for at in candidates {
            due = due.min(at.max(next_token));
        }
        if self.nominated.is_none()
            && let Some(Reverse((at, _))) = self.opener_queue.peek()
        {
            let at = if self.opener_burst > 0 {
                *at
            } else {
                (*at).max(next_token)
            };
            due = due.min(at);
        }
        Some(due)
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so pairs compare equal whatever the socket reports.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
