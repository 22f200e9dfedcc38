//! The `quickp2p.v1.Handshake` gRPC service: Begin, ReportCandidates, ReportOutcome.
//!
//! Every piece of negotiation state lives in the store as ephemeral keys with the negotiation's
//! TTL, so any replica serves any call (`<id>` = the handshake id in hex):
//!
//! | key | value | written |
//! |---|---|---|
//! | `hs:<id>` | [`Negotiation`] (app, attempt, parties' ids, deadlines, held slots) | once, by Begin |
//! | `hs:<id>:i`, `hs:<id>:r` | the initiator's / responder's `HandshakeParty` | Begin / the answer; merged by trickles |
//! | `hs:<id>:decision` | `answered`, `timeout`, `declined` or `cancelled` | `put_ephemeral_if_absent`: the first wins |
//! | `hs:<id>:plan` | [`Plan`] (strategy, NAT classes) | by the winner of `answered` |
//! | `hs:<id>:out:i`, `hs:<id>:out:r` | each side's `PunchReport` | `put_ephemeral_if_absent`: once per side |
//! | `hs:<id>:counted` | `1` | `put_ephemeral_if_absent`: the attempt is counted once |
//! | `hs:slot:<app>:<peer>:<n>` | handshake id | per-peer concurrency slots (initiator: `i`, target: `t`) |
//!
//! The decision key settles every race between replicas: the responder's first answer, the
//! answer timer and a decline cannot both win. Outcomes are counted in the store counter maps of
//! [`quickp2p_store::names`] once both sides reported (per ordered NAT pair), and in the metrics
//! `qp_handshake_outcomes_total{outcome,strategy}`; NAT reports seen in negotiations are counted in
//! `qp_handshake_nat_behaviour_total{mapping,filtering}`.
//!
//! Limits per peer: at most [`Config::max_per_peer`] negotiations started and twice that many
//! offers pending toward it at once, Begin at [`Config::begins_per_second`] (per replica), at
//! most [`MAX_CANDIDATES`] candidates per side, [`MAX_ATTEMPTS`] attempts per negotiation chain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use prost::Message as _;
use quickp2p_proto::v1::{
    self, HandshakeStrategy, NatFiltering, NatMapping, PunchOutcome,
    handshake_server::Handshake as HandshakeRpc, peer_event::Event,
};
use quickp2p_relay::credentials::{SharedSecret, mint_credentials};
use quickp2p_store::{Store, names};
use tonic::{Request, Response, Status};

use crate::push::Gateways;
use crate::strategy;
use crate::{Config, HandshakeError};

/// Most candidates per side.
pub const MAX_CANDIDATES: usize = 64;
/// Most attempts of one negotiation chain (Begin with `retry_of`).
pub const MAX_ATTEMPTS: u32 = 5;
/// Most reflexive addresses in a NAT report.
const MAX_REFLEXIVE: usize = 8;
/// Most local addresses in a NAT report.
const MAX_LOCAL: usize = 16;
/// Most bytes of a punch report's detail.
const MAX_DETAIL: usize = 512;
/// Most rate-limiter entries kept (the map is emptied when full).
const MAX_LIMITER_ENTRIES: usize = 100_000;

/// A negotiation as stored under `hs:<id>`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Negotiation {
    /// The application of both peers.
    #[prost(string, tag = "1")]
    pub app_id: String,
    /// The attempt number.
    #[prost(uint32, tag = "2")]
    pub attempt: u32,
    /// The initiator.
    #[prost(message, optional, tag = "3")]
    pub initiator: Option<v1::PeerId>,
    /// The target (responder).
    #[prost(message, optional, tag = "4")]
    pub target: Option<v1::PeerId>,
    /// When the offer lapses, Unix ms.
    #[prost(uint64, tag = "5")]
    pub answer_by_ms: u64,
    /// When the negotiation is abandoned, Unix ms.
    #[prost(uint64, tag = "6")]
    pub expires_at_ms: u64,
    /// Concurrency slot keys held until the negotiation ends.
    #[prost(string, repeated, tag = "7")]
    pub slots: Vec<String>,
}

/// What was decided when the responder answered, under `hs:<id>:plan`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Plan {
    /// The `HandshakeStrategy` number.
    #[prost(int32, tag = "1")]
    pub strategy: i32,
    /// The initiator's NAT class.
    #[prost(message, optional, tag = "2")]
    pub initiator_nat: Option<v1::NatClass>,
    /// The responder's NAT class.
    #[prost(message, optional, tag = "3")]
    pub responder_nat: Option<v1::NatClass>,
}

/// Which party of a negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Initiator,
    Responder,
}

impl Side {
    fn tag(self) -> &'static str {
        match self {
            Side::Initiator => "i",
            Side::Responder => "r",
        }
    }
    fn other(self) -> Side {
        match self {
            Side::Initiator => Side::Responder,
            Side::Responder => Side::Initiator,
        }
    }
}

const ANSWERED: &[u8] = b"answered";
const TIMEOUT: &[u8] = b"timeout";
const DECLINED: &[u8] = b"declined";
const CANCELLED: &[u8] = b"cancelled";

fn key(id: &[u8], part: &str) -> String {
    if part.is_empty() {
        format!("hs:{}", hex::encode(id))
    } else {
        format!("hs:{}:{part}", hex::encode(id))
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    now_us() / 1000
}

/// A metric label of a NAT mapping.
pub fn mapping_label(m: NatMapping) -> &'static str {
    match m {
        NatMapping::Unspecified => "unspecified",
        NatMapping::EndpointIndependent => "endpoint_independent",
        NatMapping::AddressDependent => "address_dependent",
        NatMapping::AddressAndPortDependent => "address_and_port_dependent",
        NatMapping::None => "none",
    }
}

/// A metric label of a NAT filtering.
pub fn filtering_label(f: NatFiltering) -> &'static str {
    match f {
        NatFiltering::Unspecified => "unspecified",
        NatFiltering::EndpointIndependent => "endpoint_independent",
        NatFiltering::AddressDependent => "address_dependent",
        NatFiltering::AddressAndPortDependent => "address_and_port_dependent",
    }
}

fn strategy_label(s: HandshakeStrategy) -> &'static str {
    match s {
        HandshakeStrategy::Unspecified => "none",
        HandshakeStrategy::Direct => "direct",
        HandshakeStrategy::PortPrediction => "port_prediction",
        HandshakeStrategy::Relay => "relay",
    }
}

fn outcome_label(o: PunchOutcome) -> &'static str {
    match o {
        PunchOutcome::Unspecified => "unspecified",
        PunchOutcome::Direct => "direct",
        PunchOutcome::Relayed => "relayed",
        PunchOutcome::Failed => "failed",
        PunchOutcome::Declined => "declined",
        PunchOutcome::Cancelled => "cancelled",
    }
}

/// The outcome of an attempt from both sides' reports: a tunnel either side saw wins
/// (direct before relayed), else failed, else declined / cancelled.
pub fn combined_outcome(a: PunchOutcome, b: PunchOutcome) -> PunchOutcome {
    use PunchOutcome as O;
    for o in [O::Direct, O::Relayed, O::Failed, O::Declined, O::Cancelled] {
        if a == o || b == o {
            return o;
        }
    }
    O::Unspecified
}

fn class_of(b: &v1::NatBehaviour) -> v1::NatClass {
    v1::NatClass {
        mapping: b.mapping,
        filtering: b.filtering,
    }
}

fn class_pair(c: Option<&v1::NatClass>) -> (i32, i32) {
    c.map_or((0, 0), |c| (c.mapping, c.filtering))
}

/// Counts one NAT report in `qp_handshake_nat_behaviour_total`.
fn count_nat(b: &v1::NatBehaviour) {
    metrics::counter!(
        "qp_handshake_nat_behaviour_total",
        "mapping" => mapping_label(b.mapping()),
        "filtering" => filtering_label(b.filtering()),
    )
    .increment(1);
}

/// ICE-style priority of a reflexive candidate the service adds from the gateway's observation
/// (type preference 100, lowest local preference: the peer's own candidates go first).
const OBSERVED_PRIORITY: u32 = (100 << 24) | 255;

fn validate_party(party: &v1::HandshakeParty, field: &'static str) -> Result<(), HandshakeError> {
    let invalid = |message: String| HandshakeError::Invalid { field, message };
    if !party.peer.as_ref().is_some_and(v1::PeerId::is_valid) {
        return Err(invalid("peer must be a 32-byte peer id".into()));
    }
    if party.candidates.len() > MAX_CANDIDATES {
        return Err(invalid(format!(
            "{} candidates, at most {MAX_CANDIDATES}",
            party.candidates.len()
        )));
    }
    for c in &party.candidates {
        if c.address
            .as_ref()
            .and_then(|a| SocketAddr::try_from(a).ok())
            .is_none_or(|a| a.port() == 0)
        {
            return Err(invalid("a candidate has no valid address".into()));
        }
        if c.port_span > 1024 {
            return Err(invalid("a candidate's port_span exceeds 1024".into()));
        }
    }
    if let Some(r) = &party.nat_report
        && (r.reflexive_addresses.len() > MAX_REFLEXIVE || r.local_addresses.len() > MAX_LOCAL)
    {
        return Err(invalid(format!(
            "a NAT report has at most {MAX_REFLEXIVE} reflexive and {MAX_LOCAL} local addresses"
        )));
    }
    if party.gateway_id.len() > 256 {
        return Err(invalid("gateway_id is longer than 256 bytes".into()));
    }
    Ok(())
}

fn app_of(app: Option<&v1::AppId>) -> Result<String, HandshakeError> {
    match app {
        Some(a) if !a.value.is_empty() && a.value.len() <= 64 => Ok(a.value.clone()),
        _ => Err(HandshakeError::Invalid {
            field: "app_id",
            message: "an application id (1 to 64 bytes) is required".into(),
        }),
    }
}

/// The other side's candidates as the receiver of an instruction gets them: its own, plus the
/// gateway-observed reflexive address when it announced no reflexive candidate itself (the
/// gateway sees the session's socket, which need not be the socket the peer punches from: an SDK
/// that gathers its own reflexive candidates knows better), highest priority first, at most
/// [`MAX_CANDIDATES`].
fn remote_candidates(party: &v1::HandshakeParty) -> Vec<v1::Candidate> {
    let mut out: Vec<v1::Candidate> = party
        .candidates
        .iter()
        .filter(|c| c.kind() != v1::CandidateKind::Unspecified)
        .cloned()
        .collect();
    let has_reflexive = out.iter().any(|c| c.kind() == v1::CandidateKind::Reflexive);
    if !has_reflexive
        && let Some(observed) = &party.gateway_observed_address
        && SocketAddr::try_from(observed).is_ok()
        && !out.iter().any(|c| c.address.as_ref() == Some(observed))
    {
        out.push(v1::Candidate {
            kind: v1::CandidateKind::Reflexive as i32,
            address: Some(observed.clone()),
            priority: OBSERVED_PRIORITY,
            port_span: 0,
        });
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.priority));
    out.truncate(MAX_CANDIDATES);
    out
}

/// Reflexive ports of a party seen so far (STUN pair, its candidates, the gateway).
fn reflexive_ports(party: &v1::HandshakeParty) -> Vec<u16> {
    let mut ports = Vec::new();
    let mut add = |a: Option<&v1::SocketAddress>| {
        if let Some(p) = a
            .and_then(|a| SocketAddr::try_from(a).ok())
            .map(|a| a.port())
            && p != 0
            && !ports.contains(&p)
        {
            ports.push(p);
        }
    };
    if let Some(r) = &party.nat_report {
        for x in &r.reflexive_addresses {
            add(x.observed.as_ref());
        }
    }
    for c in &party.candidates {
        if c.kind() == v1::CandidateKind::Reflexive {
            add(c.address.as_ref());
        }
    }
    add(party.gateway_observed_address.as_ref());
    ports
}

/// Merges `update` into `party`: candidates are added (no duplicates, at most
/// [`MAX_CANDIDATES`]), other fields replaced when set. Returns the candidates that were new.
fn merge_party(party: &mut v1::HandshakeParty, update: &v1::HandshakeParty) -> Vec<v1::Candidate> {
    let mut added = Vec::new();
    for c in &update.candidates {
        if party.candidates.len() >= MAX_CANDIDATES {
            break;
        }
        if !party
            .candidates
            .iter()
            .any(|o| o.address == c.address && o.kind == c.kind)
        {
            party.candidates.push(c.clone());
            added.push(c.clone());
        }
    }
    if update.nat_report.is_some() {
        party.nat_report.clone_from(&update.nat_report);
    }
    if update.gateway_observed_address.is_some() {
        party
            .gateway_observed_address
            .clone_from(&update.gateway_observed_address);
    }
    if update.clock.is_some() {
        party.clock.clone_from(&update.clock);
    }
    if !update.gateway_id.is_empty() {
        party.gateway_id.clone_from(&update.gateway_id);
    }
    added
}

/// Per-peer token buckets for Begin (per replica).
#[derive(Debug, Default)]
struct Limiter {
    buckets: HashMap<(String, v1::PeerId), (f64, Instant)>,
}

impl Limiter {
    fn take(&mut self, key: (String, v1::PeerId), rate: f64, burst: f64) -> bool {
        if self.buckets.len() >= MAX_LIMITER_ENTRIES && !self.buckets.contains_key(&key) {
            self.buckets.clear();
        }
        let now = Instant::now();
        let (tokens, at) = self.buckets.entry(key).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The handshake logic over the store; the tonic service is a thin wrapper.
#[derive(Debug, Clone)]
pub struct HandshakeService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    config: Config,
    gateways: Gateways,
    limiter: Mutex<Limiter>,
}

impl HandshakeService {
    /// The service over `store`; `replica_id` names this replica in Deliver requests.
    pub fn new(store: Store, config: Config, replica_id: &str) -> HandshakeService {
        if config.relay_shared_secret.is_none() {
            tracing::warn!("no relay shared secret configured: instructions carry no relay grant");
        }
        HandshakeService {
            inner: Arc::new(Inner {
                gateways: Gateways::new(store.clone(), replica_id),
                store,
                config,
                limiter: Mutex::new(Limiter::default()),
            }),
        }
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    fn config(&self) -> &Config {
        &self.inner.config
    }

    async fn load<M: prost::Message + Default>(
        &self,
        key: &str,
    ) -> Result<Option<M>, HandshakeError> {
        match self.store().get_ephemeral(key).await? {
            Some(raw) => M::decode(raw)
                .map(Some)
                .map_err(|e| HandshakeError::Corrupt(format!("{key}: {e}"))),
            None => Ok(None),
        }
    }

    async fn save<M: prost::Message>(&self, key: &str, value: &M) -> Result<(), HandshakeError> {
        self.store()
            .put_ephemeral(
                key,
                Bytes::from(value.encode_to_vec()),
                self.config().negotiation_ttl,
            )
            .await?;
        Ok(())
    }

    async fn put_once(&self, key: &str, value: Bytes) -> Result<bool, HandshakeError> {
        Ok(self
            .store()
            .put_ephemeral_if_absent(key, value, self.config().negotiation_ttl)
            .await?)
    }

    /// Takes the first free slot `prefix:0..max` for `id`; `None` when all are held.
    async fn acquire_slot(
        &self,
        prefix: &str,
        max: u32,
        id: &[u8],
    ) -> Result<Option<String>, HandshakeError> {
        for n in 0..max {
            let slot = format!("{prefix}:{n}");
            if self.put_once(&slot, Bytes::copy_from_slice(id)).await? {
                return Ok(Some(slot));
            }
        }
        Ok(None)
    }

    /// Frees the negotiation's slots (those still holding its id).
    async fn release_slots(&self, id: &[u8], slots: &[String]) {
        for slot in slots {
            match self.store().get_ephemeral(slot).await {
                Ok(Some(holder)) if holder.as_ref() == id => {
                    let _ = self.store().delete_ephemeral(slot).await;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, %slot, "slot not released"),
            }
        }
    }

    /// The party's NAT behaviour: from its report, else from the latest report in the store.
    async fn behaviour(&self, app: &str, party: &v1::HandshakeParty) -> v1::NatBehaviour {
        if let Some(b) = party.nat_report.as_ref().and_then(|r| r.behaviour.as_ref()) {
            return *b;
        }
        let Some(peer) = &party.peer else {
            return v1::NatBehaviour::default();
        };
        match self
            .load::<v1::NatReport>(&names::nat_report_key(app, &peer.to_string()))
            .await
        {
            Ok(Some(r)) => r.behaviour.unwrap_or_default(),
            _ => v1::NatBehaviour::default(),
        }
    }

    async fn push(
        &self,
        app: &str,
        peer: &v1::PeerId,
        event: Event,
    ) -> Result<v1::DeliveryStatus, HandshakeError> {
        self.inner
            .gateways
            .deliver(app, peer, v1::PeerEvent { event: Some(event) })
            .await
    }

    /// Pushes without caring about the result (closes, trickles): failures are logged.
    async fn push_quietly(&self, app: &str, peer: &v1::PeerId, event: Event) {
        match self.push(app, peer, event).await {
            Ok(v1::DeliveryStatus::Accepted) => {}
            Ok(status) => tracing::debug!(?status, %peer, "handshake event not delivered"),
            Err(e) => tracing::debug!(error = %e, %peer, "handshake event not delivered"),
        }
    }

    fn closed_event(
        n: &Negotiation,
        id: &[u8],
        outcome: PunchOutcome,
        reason: v1::ErrorDetail,
    ) -> Event {
        Event::HandshakeClosed(v1::HandshakeClosed {
            handshake_id: Bytes::copy_from_slice(id),
            attempt: n.attempt,
            outcome: outcome as i32,
            reason: Some(reason),
        })
    }

    /// Loads a negotiation of `app` and says which side `peer` is.
    async fn negotiation_of(
        &self,
        app: &str,
        id: &[u8],
        peer: Option<&v1::PeerId>,
    ) -> Result<(Negotiation, Side), HandshakeError> {
        if id.len() != 16 {
            return Err(HandshakeError::Invalid {
                field: "handshake_id",
                message: "must be 16 bytes".into(),
            });
        }
        let unknown = || HandshakeError::NotFound("unknown or expired handshake".into());
        let n: Negotiation = self.load(&key(id, "")).await?.ok_or_else(unknown)?;
        if n.app_id != app {
            return Err(unknown());
        }
        let side = match peer {
            Some(p) if n.initiator.as_ref() == Some(p) => Side::Initiator,
            Some(p) if n.target.as_ref() == Some(p) => Side::Responder,
            _ => {
                return Err(HandshakeError::NotPermitted(
                    "the caller is not a party of this handshake".into(),
                ));
            }
        };
        Ok((n, side))
    }

    /// Begin: see the proto.
    pub async fn begin(
        &self,
        req: v1::BeginHandshakeRequest,
    ) -> Result<v1::BeginHandshakeResponse, HandshakeError> {
        let app = app_of(req.app_id.as_ref())?;
        let initiator = req.initiator.unwrap_or_default();
        validate_party(&initiator, "initiator")?;
        let initiator_id = initiator.peer.clone().unwrap_or_default();
        let Some(target) = req.target.filter(v1::PeerId::is_valid) else {
            return Err(HandshakeError::Invalid {
                field: "target",
                message: "must be a 32-byte peer id".into(),
            });
        };
        if target == initiator_id {
            return Err(HandshakeError::Invalid {
                field: "target",
                message: "a peer cannot open a tunnel to itself".into(),
            });
        }
        let config = self.config();
        {
            let mut limiter = self
                .inner
                .limiter
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let rate = config.begins_per_second;
            if !limiter.take(
                (app.clone(), initiator_id.clone()),
                rate,
                (rate * 5.0).max(1.0),
            ) {
                return Err(HandshakeError::RateLimited {
                    message: format!("more than {rate} tunnel requests per second"),
                    retry_after_ms: (1000.0 / rate.max(0.001)).min(60_000.0) as u32,
                    limit: rate.ceil() as u64,
                });
            }
        }
        let attempt = if req.retry_of.is_empty() {
            1
        } else {
            match self
                .negotiation_of(&app, &req.retry_of, Some(&initiator_id))
                .await
            {
                Ok((previous, _)) if previous.attempt >= MAX_ATTEMPTS => {
                    return Err(HandshakeError::RateLimited {
                        message: format!("at most {MAX_ATTEMPTS} attempts per tunnel"),
                        retry_after_ms: 1000,
                        limit: u64::from(MAX_ATTEMPTS),
                    });
                }
                Ok((previous, _)) => previous.attempt + 1,
                Err(_) => 1,
            }
        };
        let offline = || HandshakeError::PeerOffline("the target peer is not online".into());
        // other applications' peers have no route under this app: they look offline
        if self
            .store()
            .get_route(&app, &target.to_string())
            .await?
            .is_none()
        {
            return Err(offline());
        }
        let id: [u8; 16] = rand::random();
        let mut slots = Vec::new();
        let max = config.max_per_peer;
        let initiator_prefix = format!("hs:slot:{app}:{initiator_id}:i");
        let target_prefix = format!("hs:slot:{app}:{target}:t");
        match self.acquire_slot(&initiator_prefix, max, &id).await? {
            Some(s) => slots.push(s),
            None => {
                return Err(HandshakeError::RateLimited {
                    message: format!("at most {max} tunnel negotiations at once"),
                    retry_after_ms: 1000,
                    limit: u64::from(max),
                });
            }
        }
        match self.acquire_slot(&target_prefix, max * 2, &id).await? {
            Some(s) => slots.push(s),
            None => {
                self.release_slots(&id, &slots).await;
                return Err(HandshakeError::RateLimited {
                    message: "the target peer has too many pending tunnel offers".into(),
                    retry_after_ms: 1000,
                    limit: u64::from(max * 2),
                });
            }
        }
        let now = now_ms();
        let answer_by_ms = now + u64::try_from(config.answer_timeout.as_millis()).unwrap_or(0);
        let expires_at_ms = now + u64::try_from(config.negotiation_ttl.as_millis()).unwrap_or(0);
        let negotiation = Negotiation {
            app_id: app.clone(),
            attempt,
            initiator: Some(initiator_id.clone()),
            target: Some(target.clone()),
            answer_by_ms,
            expires_at_ms,
            slots,
        };
        let stored = async {
            self.save(&key(&id, ""), &negotiation).await?;
            self.save(&key(&id, Side::Initiator.tag()), &initiator)
                .await
        };
        if let Err(e) = stored.await {
            self.release_slots(&id, &negotiation.slots).await;
            return Err(e);
        }
        let offer = Event::HandshakeOffer(v1::HandshakeOffer {
            handshake_id: Bytes::copy_from_slice(&id),
            attempt,
            initiator: Some(initiator_id.clone()),
            answer_by_unix_ms: answer_by_ms,
        });
        let delivered = self.push(&app, &target, offer).await;
        let failure = match delivered {
            Ok(v1::DeliveryStatus::Accepted) => None,
            Ok(v1::DeliveryStatus::QueueFull) => Some(HandshakeError::QueueFull(
                "the target peer's queue is full".into(),
            )),
            Ok(_) => Some(offline()),
            Err(e) => Some(e),
        };
        if let Some(e) = failure {
            let _ = self.store().delete_ephemeral(&key(&id, "")).await;
            self.release_slots(&id, &negotiation.slots).await;
            metrics::counter!("qp_handshake_begins_total", "result" => "refused").increment(1);
            return Err(e);
        }
        metrics::counter!("qp_handshake_begins_total", "result" => "offered").increment(1);
        if let Some(b) = initiator
            .nat_report
            .as_ref()
            .and_then(|r| r.behaviour.as_ref())
        {
            count_nat(b);
        }
        // the answer deadline: whoever decides first (answer, decline, this timer) wins
        let this = self.clone();
        let deadline = config.answer_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            this.answer_timer(&id, &negotiation).await;
        });
        tracing::debug!(handshake = %hex::encode(id), attempt, "offer delivered");
        Ok(v1::BeginHandshakeResponse {
            handshake_id: Bytes::copy_from_slice(&id),
            attempt,
            expires_at_unix_ms: expires_at_ms,
        })
    }

    /// Runs when the answer deadline passed: closes the negotiation if nobody decided yet.
    async fn answer_timer(&self, id: &[u8], n: &Negotiation) {
        match self
            .put_once(&key(id, "decision"), Bytes::from_static(TIMEOUT))
            .await
        {
            Ok(true) => self.close_timed_out(id, n).await,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "answer deadline not recorded"),
        }
    }

    /// Tells both peers that the offer lapsed (after this replica recorded the timeout).
    async fn close_timed_out(&self, id: &[u8], n: &Negotiation) {
        metrics::counter!("qp_handshake_outcomes_total", "outcome" => "timeout", "strategy" => "none")
            .increment(1);
        let reason = v1::ErrorDetail::new(
            v1::ErrorCode::Timeout,
            "the peer did not answer the tunnel offer in time",
        );
        for peer in [n.initiator.as_ref(), n.target.as_ref()]
            .into_iter()
            .flatten()
        {
            self.push_quietly(
                &n.app_id,
                peer,
                Self::closed_event(n, id, PunchOutcome::Cancelled, reason.clone()),
            )
            .await;
        }
        self.release_slots(id, &n.slots).await;
    }

    /// ReportCandidates: see the proto.
    pub async fn report_candidates(
        &self,
        req: v1::ReportCandidatesRequest,
    ) -> Result<v1::ReportCandidatesResponse, HandshakeError> {
        let app = app_of(req.app_id.as_ref())?;
        let update = req.party.unwrap_or_default();
        validate_party(&update, "party")?;
        let (n, side) = self
            .negotiation_of(&app, &req.handshake_id, update.peer.as_ref())
            .await?;
        let id = req.handshake_id.as_ref();
        let decision_key = key(id, "decision");
        let mut decision = self.store().get_ephemeral(&decision_key).await?;
        if side == Side::Responder && decision.is_none() && now_ms() > n.answer_by_ms {
            // too late; the timer of the replica that began it may be gone: settle it here
            if self
                .put_once(&decision_key, Bytes::from_static(TIMEOUT))
                .await?
            {
                self.close_timed_out(id, &n).await;
            }
            return Err(HandshakeError::Expired(
                "the offer was not answered in time".into(),
            ));
        }
        if side == Side::Responder && decision.is_none() {
            if self
                .put_once(&decision_key, Bytes::from_static(ANSWERED))
                .await?
            {
                return self.answer(&n, id, update).await;
            }
            decision = self.store().get_ephemeral(&decision_key).await?;
        }
        match decision.as_deref() {
            Some(ANSWERED) => {}
            None if side == Side::Initiator => {}
            Some(DECLINED) => return Err(HandshakeError::Expired("the offer was declined".into())),
            Some(CANCELLED) => {
                return Err(HandshakeError::Expired(
                    "the handshake was cancelled".into(),
                ));
            }
            _ => {
                return Err(HandshakeError::Expired(
                    "the offer was not answered in time".into(),
                ));
            }
        }
        // a trickle: merge into this side's record, forward to the other once it is instructed
        let party_key = key(id, side.tag());
        let mut party: v1::HandshakeParty =
            self.load(&party_key)
                .await?
                .unwrap_or_else(|| v1::HandshakeParty {
                    peer: update.peer.clone(),
                    ..v1::HandshakeParty::default()
                });
        let added = merge_party(&mut party, &update);
        self.save(&party_key, &party).await?;
        let answered = decision.as_deref() == Some(ANSWERED)
            || self.store().get_ephemeral(&decision_key).await?.as_deref() == Some(ANSWERED);
        if answered && (!added.is_empty() || req.end_of_candidates) {
            let other = match side.other() {
                Side::Initiator => n.initiator.as_ref(),
                Side::Responder => n.target.as_ref(),
            };
            if let Some(other) = other {
                let event = Event::RemoteCandidates(v1::RemoteCandidates {
                    handshake_id: Bytes::copy_from_slice(id),
                    attempt: n.attempt,
                    candidates: added,
                    end_of_candidates: req.end_of_candidates,
                });
                self.push_quietly(&app, other, event).await;
            }
        }
        Ok(v1::ReportCandidatesResponse {
            candidate_count: u32::try_from(party.candidates.len()).unwrap_or(u32::MAX),
        })
    }

    /// The responder accepted: choose, schedule, mint and instruct both sides.
    async fn answer(
        &self,
        n: &Negotiation,
        id: &[u8],
        responder: v1::HandshakeParty,
    ) -> Result<v1::ReportCandidatesResponse, HandshakeError> {
        let app = n.app_id.as_str();
        self.save(&key(id, Side::Responder.tag()), &responder)
            .await?;
        let initiator: v1::HandshakeParty = self
            .load(&key(id, Side::Initiator.tag()))
            .await?
            .ok_or_else(|| HandshakeError::NotFound("unknown or expired handshake".into()))?;
        let (bi, br) = tokio::join!(
            self.behaviour(app, &initiator),
            self.behaviour(app, &responder)
        );
        if let Some(b) = responder
            .nat_report
            .as_ref()
            .and_then(|r| r.behaviour.as_ref())
        {
            count_nat(b);
        }
        let choice = strategy::choose(&bi, &br);
        let margin_us = u64::try_from(self.config().start_margin.as_micros()).unwrap_or(0);
        let start = strategy::start_at_us(
            now_us(),
            initiator.clock.as_ref(),
            responder.clock.as_ref(),
            margin_us,
        );
        let schedule = strategy::schedule(&choice, start, strategy::keepalive_ms(&bi, &br));
        let probe_key = Bytes::copy_from_slice(&rand::random::<[u8; 32]>());
        let (pi, pr) = if choice.strategy == HandshakeStrategy::PortPrediction {
            (
                Some(strategy::prediction_plan(
                    &bi,
                    &br,
                    &reflexive_ports(&responder),
                )),
                Some(strategy::prediction_plan(
                    &br,
                    &bi,
                    &reflexive_ports(&initiator),
                )),
            )
        } else {
            (None, None)
        };
        let (ii, ir) = (
            initiator.peer.clone().unwrap_or_default(),
            responder.peer.clone().unwrap_or_default(),
        );
        let (gi, gr) = match self.relay_grants(&[&ii, &ir]).await {
            Some(mut grants) if grants.len() == 2 => {
                let gr = grants.pop();
                (grants.pop(), gr)
            }
            _ => (None, None),
        };
        let plan = Plan {
            strategy: choice.strategy as i32,
            initiator_nat: Some(class_of(&bi)),
            responder_nat: Some(class_of(&br)),
        };
        self.save(&key(id, "plan"), &plan).await?;
        let instruction = |remote: &v1::HandshakeParty,
                           remote_peer: &v1::PeerId,
                           remote_nat: &v1::NatBehaviour,
                           role: v1::HandshakeRole,
                           prediction: Option<v1::PortPredictionPlan>,
                           relay: Option<v1::RelayGrant>| {
            Event::HandshakeInstruction(v1::HandshakeInstruction {
                handshake_id: Bytes::copy_from_slice(id),
                attempt: n.attempt,
                remote_peer: Some(remote_peer.clone()),
                role: role as i32,
                strategy: choice.strategy as i32,
                remote_candidates: remote_candidates(remote),
                remote_nat: Some(*remote_nat),
                schedule: Some(schedule),
                prediction,
                relay,
                probe_key: probe_key.clone(),
                expires_at_unix_ms: n.expires_at_ms,
            })
        };
        let to_initiator = instruction(&responder, &ir, &br, v1::HandshakeRole::Initiator, pi, gi);
        let to_responder = instruction(&initiator, &ii, &bi, v1::HandshakeRole::Responder, pr, gr);
        let (di, dr) = tokio::join!(
            self.push(app, &ii, to_initiator),
            self.push(app, &ir, to_responder)
        );
        let reached = |d: &Result<v1::DeliveryStatus, HandshakeError>| {
            matches!(d, Ok(v1::DeliveryStatus::Accepted))
        };
        if !reached(&di) {
            let reason = v1::ErrorDetail::new(v1::ErrorCode::PeerOffline, "the initiator is gone");
            self.push_quietly(
                app,
                &ir,
                Self::closed_event(n, id, PunchOutcome::Cancelled, reason),
            )
            .await;
            self.release_slots(id, &n.slots).await;
            return Err(HandshakeError::PeerOffline(
                "the peer that asked for the tunnel is not online any more".into(),
            ));
        }
        if !reached(&dr) {
            tracing::debug!(handshake = %hex::encode(id), "instruction to the responder not delivered");
        }
        metrics::counter!("qp_handshake_instructions_total", "strategy" => strategy_label(choice.strategy))
            .increment(1);
        tracing::debug!(
            handshake = %hex::encode(id),
            strategy = strategy_label(choice.strategy),
            start_in_ms = start.saturating_sub(now_us()) / 1000,
            "instructions sent"
        );
        Ok(v1::ReportCandidatesResponse {
            candidate_count: u32::try_from(responder.candidates.len()).unwrap_or(u32::MAX),
        })
    }

    /// One relay grant per peer, all on the least-loaded relay replica that is not draining
    /// and has room; `None` without a shared secret or a usable relay.
    async fn relay_grants(&self, peers: &[&v1::PeerId]) -> Option<Vec<v1::RelayGrant>> {
        let secret: &SharedSecret = self.config().relay_shared_secret.as_ref()?;
        let replicas = match self
            .store()
            .list_replicas(quickp2p_relay::registry::REGISTRY_ROLE)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "relay registry unreadable: no relay grant");
                return None;
            }
        };
        let relay = replicas
            .iter()
            .filter_map(quickp2p_relay::registry::registration_from_replica)
            .filter(|r| !r.draining && (r.capacity == 0 || r.allocations < r.capacity))
            .min_by(|a, b| {
                let load = |r: &v1::RelayRegistration| {
                    f64::from(r.allocations) / f64::from(r.capacity.max(1))
                };
                load(a)
                    .total_cmp(&load(b))
                    .then(a.relay_id.cmp(&b.relay_id))
            })?;
        let now_s = now_ms() / 1000;
        let mut grants = Vec::new();
        for peer in peers {
            let minted = mint_credentials(
                secret.as_bytes(),
                &peer.to_string(),
                self.config().relay_credential_ttl,
                now_s,
            );
            match minted {
                Ok(c) => grants.push(v1::RelayGrant {
                    relay_id: relay.relay_id.clone(),
                    servers: relay.servers.clone(),
                    username: c.username,
                    password: c.password,
                    realm: relay.realm.clone(),
                    expires_at_unix_ms: c.expires_at_unix.saturating_mul(1000),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "relay credentials not minted");
                    return None;
                }
            }
        }
        Some(grants)
    }

    /// ReportOutcome: see the proto.
    pub async fn report_outcome(
        &self,
        req: v1::ReportOutcomeRequest,
    ) -> Result<v1::ReportOutcomeResponse, HandshakeError> {
        let app = app_of(req.app_id.as_ref())?;
        let report = req.report.unwrap_or_default();
        if report.outcome() == PunchOutcome::Unspecified {
            return Err(HandshakeError::Invalid {
                field: "report.outcome",
                message: "an outcome is required".into(),
            });
        }
        if report.detail.len() > MAX_DETAIL {
            return Err(HandshakeError::Invalid {
                field: "report.detail",
                message: format!("at most {MAX_DETAIL} bytes"),
            });
        }
        let id = report.handshake_id.clone();
        let (n, side) = self.negotiation_of(&app, &id, req.peer.as_ref()).await?;
        if report.attempt != 0 && report.attempt != n.attempt {
            return Err(HandshakeError::Invalid {
                field: "report.attempt",
                message: format!("this handshake is attempt {}", n.attempt),
            });
        }
        let own_key = key(&id, &format!("out:{}", side.tag()));
        let other_key = key(&id, &format!("out:{}", side.other().tag()));
        let first = self
            .put_once(&own_key, Bytes::from(report.encode_to_vec()))
            .await?;
        if !first {
            // a repeat (e.g. a retried call): counted already
            let complete = self.store().get_ephemeral(&other_key).await?.is_some();
            return Ok(v1::ReportOutcomeResponse { complete });
        }
        let outcome = report.outcome();
        metrics::counter!(
            "qp_handshake_reports_total",
            "side" => match side { Side::Initiator => "initiator", Side::Responder => "responder" },
            "outcome" => outcome_label(outcome),
        )
        .increment(1);
        let other_peer = match side.other() {
            Side::Initiator => n.initiator.clone(),
            Side::Responder => n.target.clone(),
        };
        if matches!(outcome, PunchOutcome::Declined | PunchOutcome::Cancelled) {
            // a decline or cancel before the answer settles the negotiation
            let value = if outcome == PunchOutcome::Declined {
                DECLINED
            } else {
                CANCELLED
            };
            let decided_now = self
                .put_once(&key(&id, "decision"), Bytes::from_static(value))
                .await?;
            let answered = !decided_now
                && self
                    .store()
                    .get_ephemeral(&key(&id, "decision"))
                    .await?
                    .as_deref()
                    == Some(ANSWERED);
            if decided_now || answered {
                let reason = v1::ErrorDetail::new(
                    v1::ErrorCode::Unspecified,
                    if outcome == PunchOutcome::Declined {
                        "the peer declined the tunnel"
                    } else {
                        "the peer cancelled the tunnel"
                    },
                );
                if let Some(other) = &other_peer {
                    self.push_quietly(&app, other, Self::closed_event(&n, &id, outcome, reason))
                        .await;
                }
            }
            if decided_now {
                metrics::counter!("qp_handshake_outcomes_total", "outcome" => outcome_label(outcome), "strategy" => "none")
                    .increment(1);
                self.release_slots(&id, &n.slots).await;
                return Ok(v1::ReportOutcomeResponse { complete: true });
            }
        }
        let Some(other_raw) = self.store().get_ephemeral(&other_key).await? else {
            return Ok(v1::ReportOutcomeResponse { complete: false });
        };
        let other = v1::PunchReport::decode(other_raw)
            .map_err(|e| HandshakeError::Corrupt(format!("{other_key}: {e}")))?;
        if self
            .put_once(&key(&id, "counted"), Bytes::from_static(b"1"))
            .await?
        {
            self.count_attempt(&n, &id, &report, &other).await;
            self.release_slots(&id, &n.slots).await;
        }
        Ok(v1::ReportOutcomeResponse { complete: true })
    }

    /// Counts a finished attempt: metrics and the store's counter maps per NAT pair.
    async fn count_attempt(
        &self,
        n: &Negotiation,
        id: &[u8],
        a: &v1::PunchReport,
        b: &v1::PunchReport,
    ) {
        let outcome = combined_outcome(a.outcome(), b.outcome());
        let plan: Option<Plan> = self.load(&key(id, "plan")).await.ok().flatten();
        let strategy = plan
            .as_ref()
            .and_then(|p| HandshakeStrategy::try_from(p.strategy).ok())
            .unwrap_or(HandshakeStrategy::Unspecified);
        metrics::counter!(
            "qp_handshake_outcomes_total",
            "outcome" => outcome_label(outcome),
            "strategy" => strategy_label(strategy),
        )
        .increment(1);
        let label = match outcome {
            PunchOutcome::Direct => "direct",
            PunchOutcome::Relayed => "relayed",
            PunchOutcome::Failed => "failed",
            // declined and cancelled attempts are not part of the punch matrix
            _ => return,
        };
        let ci = class_pair(plan.as_ref().and_then(|p| p.initiator_nat.as_ref()));
        let cr = class_pair(plan.as_ref().and_then(|p| p.responder_nat.as_ref()));
        let field = names::outcome_field(ci, cr, label);
        let store = self.store();
        let result: Result<(), quickp2p_store::StoreError> = async {
            if store.get_counter(names::HANDSHAKE_COUNTERS_SINCE).await? == 0 {
                store
                    .incr_counter(
                        names::HANDSHAKE_COUNTERS_SINCE,
                        i64::try_from(now_ms()).unwrap_or(0),
                    )
                    .await?;
            }
            store
                .incr_counter_field(names::HANDSHAKE_OUTCOMES_MAP, &field, 1)
                .await?;
            store
                .incr_counter_field(&names::app_outcomes_map(&n.app_id), &field, 1)
                .await?;
            let ready = [a.tunnel_ready_after_ms, b.tunnel_ready_after_ms]
                .into_iter()
                .filter(|&ms| ms > 0)
                .max();
            if let Some(ms) = ready.filter(|_| label != "failed") {
                let field = names::ready_ms_field(ci, cr, ms);
                store
                    .incr_counter_field(names::HANDSHAKE_READY_MS_MAP, &field, 1)
                    .await?;
                store
                    .incr_counter_field(&names::app_ready_ms_map(&n.app_id), &field, 1)
                    .await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "handshake outcome not counted in the store");
        }
    }
}

#[tonic::async_trait]
impl HandshakeRpc for HandshakeService {
    async fn begin(
        &self,
        request: Request<v1::BeginHandshakeRequest>,
    ) -> Result<Response<v1::BeginHandshakeResponse>, Status> {
        Ok(Response::new(
            HandshakeService::begin(self, request.into_inner()).await?,
        ))
    }

    async fn report_candidates(
        &self,
        request: Request<v1::ReportCandidatesRequest>,
    ) -> Result<Response<v1::ReportCandidatesResponse>, Status> {
        Ok(Response::new(
            HandshakeService::report_candidates(self, request.into_inner()).await?,
        ))
    }

    async fn report_outcome(
        &self,
        request: Request<v1::ReportOutcomeRequest>,
    ) -> Result<Response<v1::ReportOutcomeResponse>, Status> {
        Ok(Response::new(
            HandshakeService::report_outcome(self, request.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(kind: v1::CandidateKind, addr: &str, priority: u32) -> v1::Candidate {
        v1::Candidate {
            kind: kind as i32,
            address: Some(addr.parse::<SocketAddr>().expect("addr").into()),
            priority,
            port_span: 0,
        }
    }

    #[test]
    fn combined_outcome_prefers_a_tunnel() {
        use PunchOutcome as O;
        assert_eq!(combined_outcome(O::Failed, O::Direct), O::Direct);
        assert_eq!(combined_outcome(O::Relayed, O::Direct), O::Direct);
        assert_eq!(combined_outcome(O::Relayed, O::Failed), O::Relayed);
        assert_eq!(combined_outcome(O::Cancelled, O::Failed), O::Failed);
        assert_eq!(combined_outcome(O::Cancelled, O::Declined), O::Declined);
        assert_eq!(
            combined_outcome(O::Unspecified, O::Unspecified),
            O::Unspecified
        );
    }

    #[test]
    fn remote_candidates_add_the_observed_address_only_without_a_reflexive_one() {
        let party = v1::HandshakeParty {
            candidates: vec![
                cand(
                    v1::CandidateKind::Reflexive,
                    "203.0.113.5:4000",
                    (100 << 24) | (1000 << 8) | 255,
                ),
                cand(v1::CandidateKind::Host, "10.0.0.2:4000", 126 << 24),
                cand(v1::CandidateKind::Unspecified, "10.0.0.3:4000", 3 << 30),
            ],
            gateway_observed_address: Some(
                "203.0.113.5:4001"
                    .parse::<SocketAddr>()
                    .expect("addr")
                    .into(),
            ),
            ..v1::HandshakeParty::default()
        };
        // the peer announced a reflexive candidate of its own: the gateway's view (of another
        // socket, possibly) is not added
        let out = remote_candidates(&party);
        assert_eq!(out.len(), 2, "unknown kinds dropped, observed not added");
        assert_eq!(out[0].kind(), v1::CandidateKind::Host);
        // without one, the observed address is the reflexive candidate
        let mut host_only = party.clone();
        host_only.candidates.remove(0);
        let out = remote_candidates(&host_only);
        assert_eq!(out.len(), 2, "unknown kinds dropped, observed added");
        assert_eq!(out[1].priority, OBSERVED_PRIORITY);
        assert_eq!(out[1].kind(), v1::CandidateKind::Reflexive);
        // an observed address already among the candidates is not repeated
        let mut same = party.clone();
        same.gateway_observed_address = Some(
            "203.0.113.5:4000"
                .parse::<SocketAddr>()
                .expect("addr")
                .into(),
        );
        assert_eq!(remote_candidates(&same).len(), 2);
        assert_eq!(reflexive_ports(&party), vec![4000, 4001]);
    }

    #[test]
    fn merging_is_bounded_and_drops_duplicates() {
        let mut party = v1::HandshakeParty::default();
        let update = v1::HandshakeParty {
            candidates: (0..40)
                .map(|i| {
                    cand(
                        v1::CandidateKind::Host,
                        &format!("10.0.0.1:{}", 1000 + i),
                        1,
                    )
                })
                .collect(),
            ..v1::HandshakeParty::default()
        };
        assert_eq!(merge_party(&mut party, &update).len(), 40);
        assert!(
            merge_party(&mut party, &update).is_empty(),
            "duplicates are not added"
        );
        let more = v1::HandshakeParty {
            candidates: (0..40)
                .map(|i| {
                    cand(
                        v1::CandidateKind::Host,
                        &format!("10.0.0.2:{}", 1000 + i),
                        1,
                    )
                })
                .collect(),
            gateway_id: "gw-2".into(),
            ..v1::HandshakeParty::default()
        };
        assert_eq!(merge_party(&mut party, &more).len(), MAX_CANDIDATES - 40);
        assert_eq!(party.candidates.len(), MAX_CANDIDATES);
        assert_eq!(party.gateway_id, "gw-2");
    }

    #[test]
    fn parties_are_validated() {
        let peer = v1::PeerId::from_public_key([7; 32]);
        let ok = v1::HandshakeParty {
            peer: Some(peer.clone()),
            candidates: vec![cand(v1::CandidateKind::Host, "10.0.0.1:1", 1)],
            ..v1::HandshakeParty::default()
        };
        assert!(validate_party(&ok, "p").is_ok());
        let mut bad = ok.clone();
        bad.peer = None;
        assert!(validate_party(&bad, "p").is_err());
        let mut bad = ok.clone();
        bad.candidates = vec![ok.candidates[0].clone(); MAX_CANDIDATES + 1];
        assert!(validate_party(&bad, "p").is_err());
        let mut bad = ok.clone();
        bad.candidates[0].address = Some(v1::SocketAddress {
            ip: Bytes::from_static(&[1, 2, 3]),
            port: 1,
        });
        assert!(validate_party(&bad, "p").is_err());
        let mut bad = ok;
        bad.nat_report = Some(v1::NatReport {
            reflexive_addresses: vec![v1::ReflexiveAddress::default(); MAX_REFLEXIVE + 1],
            ..v1::NatReport::default()
        });
        assert!(validate_party(&bad, "p").is_err());
    }
}
