//! [`NatDiscovery`]: the sans-IO state machine that runs RFC 5780 NAT behaviour
//! discovery from one UDP socket.
//!
//! The caller owns the socket and the clock. It feeds received datagrams to
//! [`NatDiscovery::handle_datagram`], sends what [`NatDiscovery::poll_transmit`]
//! returns, wakes up at [`NatDiscovery::poll_timeout`] to call
//! [`NatDiscovery::handle_timeout`], and reads [`NatDiscovery::result`] once
//! [`NatDiscovery::is_done`].
//!
//! The tests, their order and the concurrency rules are described on
//! [`NatDiscovery`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::config::NatDiscoveryConfig;
use super::report::{
    FilteringBehaviour, MAX_REFLEXIVE, MappingBehaviour, NatReport, ReflexiveAddr, RttSample,
    UnknownReason,
};
use crate::classify::is_stun;
use crate::stun::{
    Attribute, AttributeType, ChangeRequest, Message, MessageBuilder, MessageClass, MessageType,
    Method, TransactionId,
};

/// A datagram the caller should send from its socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The STUN message.
    pub payload: Vec<u8>,
}

/// The tests, in the order their states are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Test {
    Primary,
    FilterChangeAddress,
    FilterChangePort,
    MappingAlternateAddress,
    MappingAlternateBoth,
    Hairpin,
}

const TEST_COUNT: usize = 6;
const TESTS: [Test; TEST_COUNT] = [
    Test::Primary,
    Test::FilterChangeAddress,
    Test::FilterChangePort,
    Test::MappingAlternateAddress,
    Test::MappingAlternateBoth,
    Test::Hairpin,
];

impl Test {
    const fn index(self) -> usize {
        self as usize
    }

    /// Whether answers to this test measure the round trip to its destination.
    const fn measures_rtt(self) -> bool {
        matches!(
            self,
            Test::Primary | Test::MappingAlternateAddress | Test::MappingAlternateBoth
        )
    }
}

/// One STUN transaction in flight (RFC 8489 §6.2.1).
#[derive(Clone, Debug)]
struct Transaction {
    destination: SocketAddr,
    change: Option<ChangeRequest>,
    /// Requests sent so far.
    sent: u32,
    /// When the next request is due, or, after the last one, when the
    /// transaction fails.
    next_at: Instant,
    /// The wait after the next request.
    interval: Duration,
    /// The RTO this transaction started with (the final wait is Rm times it).
    rto: Duration,
    first_sent: Option<Instant>,
}

/// What answered a test.
#[derive(Clone, Copy, Debug)]
struct Answer {
    /// Where the request went.
    destination: SocketAddr,
    /// Where the answer came from.
    from: SocketAddr,
    /// The mapped address (for hairpinning: the source of our own request).
    mapped: SocketAddr,
    /// OTHER-ADDRESS, if any.
    other: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    TimedOut,
    Error(u16),
    Malformed,
    Aborted,
}

#[derive(Clone, Debug)]
enum TestState {
    NotStarted,
    Running(Transaction),
    Answered(Answer),
    Failed(Failure),
    Skipped(UnknownReason),
}

impl TestState {
    const fn is_pending(&self) -> bool {
        matches!(self, TestState::NotStarted | TestState::Running(_))
    }
}

/// RFC 6298 smoothed round-trip estimate.
#[derive(Clone, Copy, Debug)]
struct RttEstimate {
    srtt: Duration,
    rttvar: Duration,
}

/// The sans-IO RFC 5780 NAT behaviour discovery.
///
/// Drive it with [`handle_datagram`](Self::handle_datagram),
/// [`poll_transmit`](Self::poll_transmit), [`poll_timeout`](Self::poll_timeout) and
/// [`handle_timeout`](Self::handle_timeout); read [`result`](Self::result) once
/// [`is_done`](Self::is_done).
///
/// # Tests and their order
///
/// With the server's primary address `P = (A1, p1)` and its OTHER-ADDRESS
/// `O = (A2, p2)`:
///
/// | test | request | tells |
/// |---|---|---|
/// | I (primary) | to P | mapped address X1, OTHER-ADDRESS, whether there is a NAT |
/// | filtering II | to P, CHANGE-REQUEST change IP and port (answer from O) | answered ⇒ endpoint-independent filtering |
/// | filtering III | to P, CHANGE-REQUEST change port (answer from (A1, p2)) | answered ⇒ address-dependent, else address-and-port-dependent |
/// | mapping II | to (A2, p1) | X2 = X1 ⇒ endpoint-independent mapping |
/// | mapping III | to O | X3 = X2 ⇒ address-dependent, else address-and-port-dependent |
/// | hairpinning | to X1 | our own request comes back ⇒ hairpinning |
///
/// Test I runs alone: everything else needs its answer. Then the two filtering
/// tests and hairpinning run at once. The mapping tests wait until filtering is
/// decided: a request to A2 opens the NAT's filter for A2, after which the answer
/// of filtering test II would pass even an address-dependent filter. Mapping II and
/// III then run at once (III speculatively: it is only needed when X1 ≠ X2, and is
/// abandoned as soon as it is not). Late answers to tests that are already decided
/// or abandoned are consumed and ignored, so they cannot change a verdict. Every
/// request is a retransmitted STUN transaction (see
/// [`NatDiscoveryConfig`]); all share the caller's one
/// socket and are told apart by transaction id. Transaction ids are derived from a
/// caller-supplied random seed, so the machine itself needs no randomness.
///
/// An answer to a filtering test counts only when it comes from the changed
/// address (other IP and port for II, same IP and other port for III); from
/// anywhere else it shows that the server ignores CHANGE-REQUEST, and filtering is
/// reported unknown. Without a NAT (X1 is the local address) hairpinning is not
/// applicable and not tested; without OTHER-ADDRESS only test I and hairpinning
/// run.
///
/// A limit of measuring from one socket: when the NAT drops the filtering tests'
/// answers, a conntrack-based NAT (Linux, most home routers) still records those
/// unsolicited flows from O and (A1, p2), and a later request *to* O gets a
/// fresh external port even from an endpoint-independent NAT (DESIGN.md §4 has
/// the same pitfall for punching). Mapping II goes to (A2, p1), which no answer
/// came from, so endpoint-independent mapping is still recognised; but an
/// address-dependent mapping behind an address-and-port-dependent filter may be
/// reported as address-and-port-dependent.
///
/// State is bounded: six tests, one transaction each, at most
/// [`MAX_REFLEXIVE`] reflexive addresses and six RTT samples. Nothing here
/// panics on any input.
#[derive(Clone, Debug)]
pub struct NatDiscovery {
    config: NatDiscoveryConfig,
    server: SocketAddr,
    local: SocketAddr,
    started: Instant,
    deadline: Option<Instant>,
    id_seed: [u8; 32],
    ids: [Option<TransactionId>; TEST_COUNT],
    tests: [TestState; TEST_COUNT],
    rtt: Vec<RttSample>,
    estimate: Option<RttEstimate>,
    report: Option<NatReport>,
}

impl NatDiscovery {
    /// Starts discovery against the STUN server at `server` (its primary address)
    /// from the socket bound at `local`.
    ///
    /// `local` should be the address the socket is reachable at on its own host
    /// (not a wildcard), so that "no NAT" can be told: with an unspecified IP only a
    /// changed port proves a NAT. `id_seed` must be 32 random bytes from a
    /// cryptographically secure source; transaction ids are derived from it
    /// (RFC 8489 §6 asks for unpredictable ids). The first request is due at `now`.
    pub fn new(
        server: SocketAddr,
        local: SocketAddr,
        config: NatDiscoveryConfig,
        id_seed: [u8; 32],
        now: Instant,
    ) -> NatDiscovery {
        let deadline = config.max_duration.map(|d| later(now, d));
        let mut discovery = NatDiscovery {
            config,
            server: canonical(server),
            local: canonical(local),
            started: now,
            deadline,
            id_seed,
            ids: [None; TEST_COUNT],
            tests: std::array::from_fn(|_| TestState::NotStarted),
            rtt: Vec::new(),
            estimate: None,
            report: None,
        };
        discovery.start(Test::Primary, discovery.server, None, now);
        discovery
    }

    /// The server's primary address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Offers a received datagram. Returns `true` when it belonged to this
    /// discovery (a response to one of its transactions, or its own hairpinning
    /// request coming back), `false` otherwise: the caller then routes it elsewhere
    /// (QUIC, TURN, …) on the shared socket.
    pub fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) -> bool {
        if !is_stun(datagram) {
            return false;
        }
        let Ok(message) = Message::parse(datagram) else {
            return false;
        };
        let id = message.transaction_id();
        let Some(index) = self.ids.iter().position(|known| *known == Some(id)) else {
            return false;
        };
        // From here on the datagram is ours, whatever we make of it.
        if message.has_fingerprint() && message.verify_fingerprint().is_err() {
            return true;
        }
        if message.method() != Method::BINDING || self.report.is_some() {
            return true;
        }
        let Some(test) = TESTS.get(index).copied() else {
            return true;
        };
        let Some(TestState::Running(transaction)) = self.tests.get(index) else {
            return true; // a duplicate or late answer: already decided
        };
        let transaction = transaction.clone();
        let from = canonical(from);
        let outcome = match (test, message.class()) {
            (Test::Hairpin, MessageClass::Request) => TestState::Answered(Answer {
                destination: transaction.destination,
                from,
                mapped: from,
                other: None,
            }),
            (Test::Hairpin, _) => return true,
            (_, MessageClass::SuccessResponse) => match mapped_address(&message) {
                Some(mapped) => TestState::Answered(Answer {
                    destination: transaction.destination,
                    from,
                    mapped,
                    other: other_address(&message),
                }),
                None => TestState::Failed(Failure::Malformed),
            },
            (_, MessageClass::ErrorResponse) => {
                TestState::Failed(Failure::Error(error_code(&message)))
            }
            _ => return true,
        };
        if test.measures_rtt()
            && transaction.sent == 1
            && let Some(first) = transaction.first_sent
        {
            self.record_rtt(
                transaction.destination,
                now.saturating_duration_since(first),
            );
        }
        self.set(test, outcome);
        self.advance(now);
        true
    }

    /// The next datagram to send, if one is due at `now`. Call repeatedly until
    /// `None` after every other call.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if self.report.is_some() {
            return None;
        }
        let requests = self.config.requests();
        let final_wait = self.config.final_wait();
        for index in 0..TEST_COUNT {
            let Some(id) = self.ids.get(index).copied().flatten() else {
                continue;
            };
            let Some(state) = self.tests.get_mut(index) else {
                continue;
            };
            let TestState::Running(transaction) = state else {
                continue;
            };
            if transaction.sent >= requests || transaction.next_at > now {
                continue;
            }
            let Some(payload) = binding_request(id, transaction.change) else {
                // cannot happen for a Binding request; never retry forever
                *state = TestState::Failed(Failure::Malformed);
                continue;
            };
            transaction.sent = transaction.sent.saturating_add(1);
            if transaction.first_sent.is_none() {
                transaction.first_sent = Some(now);
            }
            if transaction.sent < requests {
                transaction.next_at = later(now, transaction.interval);
                transaction.interval = transaction.interval.saturating_mul(2);
            } else {
                transaction.next_at = later(now, transaction.rto.saturating_mul(final_wait));
            }
            return Some(Transmit {
                destination: transaction.destination,
                payload,
            });
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) (and then
    /// [`poll_transmit`](Self::poll_transmit)) should next be called; `None` once
    /// done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.report.is_some() {
            return None;
        }
        self.tests
            .iter()
            .filter_map(|state| match state {
                TestState::Running(transaction) => Some(transaction.next_at),
                _ => None,
            })
            .chain(self.deadline)
            .min()
    }

    /// Processes timers due at `now`: transactions that waited out their last
    /// request fail, and the time limit (if any) ends the discovery.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.report.is_some() {
            return;
        }
        let requests = self.config.requests();
        for state in &mut self.tests {
            if let TestState::Running(transaction) = state
                && transaction.sent >= requests
                && transaction.next_at <= now
            {
                *state = TestState::Failed(Failure::TimedOut);
            }
        }
        self.advance(now);
    }

    /// Whether discovery has finished.
    pub fn is_done(&self) -> bool {
        self.report.is_some()
    }

    /// The report, once done.
    pub fn result(&self) -> Option<NatReport> {
        self.report.clone()
    }

    /// Consumes the machine, returning the report if done.
    pub fn into_result(self) -> Option<NatReport> {
        self.report
    }

    fn state(&self, test: Test) -> &TestState {
        // `tests` has one entry per `Test`, so this always finds one.
        self.tests
            .get(test.index())
            .unwrap_or(&TestState::NotStarted)
    }

    fn set(&mut self, test: Test, state: TestState) {
        if let Some(slot) = self.tests.get_mut(test.index()) {
            *slot = state;
        }
    }

    fn answer(&self, test: Test) -> Option<Answer> {
        match self.state(test) {
            TestState::Answered(answer) => Some(*answer),
            _ => None,
        }
    }

    fn start(
        &mut self,
        test: Test,
        destination: SocketAddr,
        change: Option<ChangeRequest>,
        now: Instant,
    ) {
        let rto = self.current_rto();
        let id = self.transaction_id(test);
        if let Some(slot) = self.ids.get_mut(test.index()) {
            *slot = Some(id);
        }
        self.set(
            test,
            TestState::Running(Transaction {
                destination,
                change,
                sent: 0,
                next_at: now,
                interval: rto,
                rto,
                first_sent: None,
            }),
        );
    }

    /// Abandons a running test whose answer no longer matters; its id stays known
    /// so late answers are still consumed.
    fn cancel(&mut self, test: Test) {
        if let TestState::Running(_) = self.state(test) {
            self.set(test, TestState::Skipped(UnknownReason::NotTested));
        }
    }

    fn transaction_id(&self, test: Test) -> TransactionId {
        let digest = Sha256::new()
            .chain_update(b"quickp2p nat discovery transaction")
            .chain_update(self.id_seed)
            .chain_update([test as u8])
            .finalize();
        let mut id = [0u8; 12];
        for (out, byte) in id.iter_mut().zip(digest.iter()) {
            *out = *byte;
        }
        TransactionId::new(id)
    }

    fn current_rto(&self) -> Duration {
        let initial = self.config.rto();
        match self.estimate {
            Some(e) => e
                .srtt
                .saturating_add(e.rttvar.saturating_mul(4))
                .clamp(self.config.rto_floor(), initial),
            None => initial,
        }
    }

    fn record_rtt(&mut self, server: SocketAddr, rtt: Duration) {
        if self.rtt.len() < TEST_COUNT {
            self.rtt.push(RttSample { server, rtt });
        }
        self.estimate = Some(match self.estimate {
            None => RttEstimate {
                srtt: rtt,
                rttvar: rtt / 2,
            },
            Some(e) => {
                let delta = if e.srtt > rtt {
                    e.srtt.saturating_sub(rtt)
                } else {
                    rtt.saturating_sub(e.srtt)
                };
                RttEstimate {
                    rttvar: (e.rttvar.saturating_mul(3) / 4).saturating_add(delta / 4),
                    srtt: (e.srtt.saturating_mul(7) / 8).saturating_add(rtt / 8),
                }
            }
        });
    }

    /// Whether there is a NAT, from X1 and the local address.
    fn behind_nat(&self) -> Option<bool> {
        let x1 = self.answer(Test::Primary)?.mapped;
        if x1 == self.local {
            Some(false)
        } else if self.local.ip().is_unspecified() && x1.port() == self.local.port() {
            None
        } else {
            Some(true)
        }
    }

    /// Why the primary test gave nothing, if it did.
    fn primary_failure(&self) -> Option<UnknownReason> {
        match self.state(Test::Primary) {
            TestState::Failed(failure) => Some(match failure {
                Failure::TimedOut => UnknownReason::NoResponse,
                Failure::Error(code) => UnknownReason::ServerError { code: *code },
                Failure::Malformed => UnknownReason::MalformedResponse,
                Failure::Aborted => UnknownReason::DeadlineReached,
            }),
            TestState::Skipped(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// The server's alternate address, if it has a usable one.
    fn other_address(&self) -> Option<Result<SocketAddr, UnknownReason>> {
        let answer = self.answer(Test::Primary)?;
        let Some(other) = answer.other else {
            return Some(Err(UnknownReason::NoOtherAddress));
        };
        let usable = other.is_ipv4() == self.server.is_ipv4()
            && other.ip() != self.server.ip()
            && !other.ip().is_unspecified()
            && other.port() != 0;
        Some(if usable {
            Ok(other)
        } else {
            Err(UnknownReason::UnusableOtherAddress(other))
        })
    }

    /// The filtering verdict, once the tests decide it.
    fn filtering_verdict(&self) -> Option<FilteringBehaviour> {
        if let Some(reason) = self.primary_failure() {
            return Some(FilteringBehaviour::Unknown(reason));
        }
        if let Err(reason) = self.other_address()? {
            return Some(FilteringBehaviour::Unknown(reason));
        }
        let server = self.server;
        let unknown = |failure: &Failure| {
            FilteringBehaviour::Unknown(match failure {
                Failure::Error(code) => UnknownReason::ChangeRequestRejected { code: *code },
                Failure::Malformed => UnknownReason::MalformedResponse,
                Failure::Aborted => UnknownReason::DeadlineReached,
                Failure::TimedOut => UnknownReason::NoResponse,
            })
        };
        match self.state(Test::FilterChangeAddress) {
            TestState::NotStarted | TestState::Running(_) => None,
            TestState::Skipped(reason) => Some(FilteringBehaviour::Unknown(reason.clone())),
            TestState::Answered(answer) => Some(
                if answer.from.ip() != server.ip() && answer.from.port() != server.port() {
                    FilteringBehaviour::EndpointIndependent
                } else {
                    FilteringBehaviour::Unknown(UnknownReason::ChangeRequestIgnored {
                        from: answer.from,
                    })
                },
            ),
            TestState::Failed(Failure::TimedOut) => match self.state(Test::FilterChangePort) {
                TestState::NotStarted | TestState::Running(_) => None,
                TestState::Skipped(reason) => Some(FilteringBehaviour::Unknown(reason.clone())),
                TestState::Answered(answer) => Some(
                    if answer.from.ip() == server.ip() && answer.from.port() != server.port() {
                        FilteringBehaviour::AddressDependent
                    } else {
                        FilteringBehaviour::Unknown(UnknownReason::ChangeRequestIgnored {
                            from: answer.from,
                        })
                    },
                ),
                TestState::Failed(Failure::TimedOut) => {
                    Some(FilteringBehaviour::AddressAndPortDependent)
                }
                TestState::Failed(failure) => Some(unknown(failure)),
            },
            TestState::Failed(failure) => Some(unknown(failure)),
        }
    }

    /// The mapping verdict, once the tests decide it.
    fn mapping_verdict(&self) -> Option<MappingBehaviour> {
        if let Some(reason) = self.primary_failure() {
            return Some(MappingBehaviour::Unknown(reason));
        }
        if let Err(reason) = self.other_address()? {
            return Some(MappingBehaviour::Unknown(reason));
        }
        let x1 = self.answer(Test::Primary)?.mapped;
        let unknown = |state: &TestState| {
            MappingBehaviour::Unknown(match state {
                TestState::Skipped(reason) => reason.clone(),
                TestState::Failed(Failure::Error(code)) => {
                    UnknownReason::ServerError { code: *code }
                }
                TestState::Failed(Failure::Malformed) => UnknownReason::MalformedResponse,
                TestState::Failed(Failure::Aborted) => UnknownReason::DeadlineReached,
                _ => UnknownReason::AlternateNoResponse,
            })
        };
        let x2 = match self.state(Test::MappingAlternateAddress) {
            TestState::NotStarted | TestState::Running(_) => return None,
            TestState::Answered(answer) => answer.mapped,
            state => return Some(unknown(state)),
        };
        if x2 == x1 {
            return Some(MappingBehaviour::EndpointIndependent);
        }
        match self.state(Test::MappingAlternateBoth) {
            TestState::NotStarted | TestState::Running(_) => None,
            TestState::Answered(answer) if answer.mapped == x2 => {
                Some(MappingBehaviour::AddressDependent)
            }
            TestState::Answered(_) => Some(MappingBehaviour::AddressAndPortDependent),
            state => Some(unknown(state)),
        }
    }

    /// Starts every test whose prerequisites are met, abandons tests that no longer
    /// matter, and finishes when nothing is left.
    fn advance(&mut self, now: Instant) {
        if self.report.is_some() {
            return;
        }
        if self.deadline.is_some_and(|deadline| now >= deadline) {
            for state in &mut self.tests {
                match state {
                    TestState::Running(_) => *state = TestState::Failed(Failure::Aborted),
                    TestState::NotStarted => {
                        *state = TestState::Skipped(UnknownReason::DeadlineReached)
                    }
                    _ => {}
                }
            }
            self.finish(now);
            return;
        }
        if let Some(primary) = self.answer(Test::Primary) {
            if matches!(self.state(Test::Hairpin), TestState::NotStarted) {
                if self.config.hairpinning && self.behind_nat() != Some(false) {
                    self.start(Test::Hairpin, primary.mapped, None, now);
                } else {
                    self.set(Test::Hairpin, TestState::Skipped(UnknownReason::NotTested));
                }
            }
            match self.other_address() {
                Some(Ok(other)) => self.advance_rfc5780(other, now),
                Some(Err(reason)) => {
                    for test in [
                        Test::FilterChangeAddress,
                        Test::FilterChangePort,
                        Test::MappingAlternateAddress,
                        Test::MappingAlternateBoth,
                    ] {
                        self.set(test, TestState::Skipped(reason.clone()));
                    }
                }
                None => {}
            }
        }
        if !self
            .tests
            .iter()
            .any(|state| matches!(state, TestState::Running(_)))
        {
            // Nothing in flight: whatever has not started never will.
            for state in &mut self.tests {
                if state.is_pending() {
                    *state = TestState::Skipped(UnknownReason::NotTested);
                }
            }
            self.finish(now);
        }
    }

    fn advance_rfc5780(&mut self, other: SocketAddr, now: Instant) {
        let server = self.server;
        if matches!(self.state(Test::FilterChangeAddress), TestState::NotStarted) {
            if self.config.filtering {
                let both = ChangeRequest {
                    change_ip: true,
                    change_port: true,
                };
                let port = ChangeRequest {
                    change_ip: false,
                    change_port: true,
                };
                self.start(Test::FilterChangeAddress, server, Some(both), now);
                self.start(Test::FilterChangePort, server, Some(port), now);
            } else {
                for test in [Test::FilterChangeAddress, Test::FilterChangePort] {
                    self.set(test, TestState::Skipped(UnknownReason::NotTested));
                }
            }
        }
        if self.filtering_verdict().is_none() {
            return;
        }
        self.cancel(Test::FilterChangePort);
        if matches!(
            self.state(Test::MappingAlternateAddress),
            TestState::NotStarted
        ) {
            let alternate_address = SocketAddr::new(other.ip(), server.port());
            self.start(Test::MappingAlternateAddress, alternate_address, None, now);
            if other.port() != server.port() {
                self.start(Test::MappingAlternateBoth, other, None, now);
            } else {
                self.set(
                    Test::MappingAlternateBoth,
                    TestState::Skipped(UnknownReason::AlternatePortUnknown),
                );
            }
        }
        if self.mapping_verdict().is_some() {
            self.cancel(Test::MappingAlternateBoth);
        }
    }

    fn finish(&mut self, now: Instant) {
        let primary = self.answer(Test::Primary);
        let mut reflexive: Vec<ReflexiveAddr> = Vec::new();
        for test in [
            Test::Primary,
            Test::MappingAlternateAddress,
            Test::MappingAlternateBoth,
        ] {
            if let Some(answer) = self.answer(test) {
                let entry = ReflexiveAddr {
                    server: answer.destination,
                    mapped: answer.mapped,
                };
                if reflexive.len() < MAX_REFLEXIVE && !reflexive.contains(&entry) {
                    reflexive.push(entry);
                }
            }
        }
        // Judged on the first mapping (test I) only: later mappings may get other ports for
        // reasons that are not the NAT's allocation policy — a Linux NAT whose conntrack kept
        // an entry for a filtered inbound answer (DESIGN.md §4) must pick a new port for the
        // same destination, and a dependent mapping cannot reuse a port it already gave out.
        let local_port = self.local.port();
        let port_preserving = match primary {
            Some(p) if local_port != 0 => Some(p.mapped.port() == local_port),
            _ => None,
        };
        let hairpinning = match self.state(Test::Hairpin) {
            TestState::Answered(_) => Some(true),
            TestState::Failed(Failure::TimedOut) => Some(false),
            _ => None,
        };
        let unknown = UnknownReason::NotTested;
        self.report = Some(NatReport {
            server: self.server,
            local_address: self.local,
            other_address: primary.and_then(|p| p.other),
            mapping: self
                .mapping_verdict()
                .unwrap_or(MappingBehaviour::Unknown(unknown.clone())),
            filtering: self
                .filtering_verdict()
                .unwrap_or(FilteringBehaviour::Unknown(unknown)),
            hairpinning,
            port_preserving,
            behind_nat: self.behind_nat(),
            public_address: primary.map(|p| p.mapped),
            reflexive,
            rtt: self.rtt.clone(),
            duration: now.saturating_duration_since(self.started),
        });
    }
}

/// `now + d`, or `now` in the (unreachable) case the clock would overflow.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}

/// IPv4-mapped IPv6 addresses as plain IPv4, so that addresses from a dual-stack
/// socket compare equal to what servers report.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn binding_request(id: TransactionId, change: Option<ChangeRequest>) -> Option<Vec<u8>> {
    let with_change;
    let attributes: &[Attribute<'_>] = match change {
        Some(change) => {
            with_change = [Attribute::ChangeRequest(change)];
            &with_change
        }
        None => &[],
    };
    MessageBuilder::new(MessageType::BINDING_REQUEST, id)
        .attributes(attributes)
        .fingerprint()
        .to_vec()
        .ok()
}

/// XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from an RFC 3489 server.
fn mapped_address(message: &Message<'_>) -> Option<SocketAddr> {
    let mut mapped = None;
    for attribute in message.attributes() {
        match attribute {
            Attribute::XorMappedAddress(addr) => return Some(canonical(addr)),
            Attribute::MappedAddress(addr) if mapped.is_none() => mapped = Some(canonical(addr)),
            _ => {}
        }
    }
    mapped
}

fn other_address(message: &Message<'_>) -> Option<SocketAddr> {
    match message.get(AttributeType::OTHER_ADDRESS) {
        Some(Attribute::OtherAddress(addr)) => Some(canonical(addr)),
        _ => None,
    }
}

fn error_code(message: &Message<'_>) -> u16 {
    match message.get(AttributeType::ERROR_CODE) {
        Some(Attribute::ErrorCode(code)) => code.code,
        _ => 0,
    }
}
