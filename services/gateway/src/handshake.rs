//! The gateway's side of the handshake role: peers' `RequestTunnel`, `ShareCandidates`,
//! `ReportPunchOutcome` and `ReportNat` requests.
//!
//! The gateway fills what only it knows and what a peer must not choose: the session's own
//! application and peer id (never values from the request), this gateway's id, the reflexive
//! address it observes on the peer's connection, and the peer's latest NAT report when the
//! request carries none. `ReportNat` is kept in the store under
//! [`quickp2p_store::names::nat_report_key`] for [`NAT_REPORT_TTL`] (read by handshakes and the
//! admin role). With `QP_GATEWAY_HANDSHAKE_URL` set the gateway calls that Handshake replica over
//! gRPC (with trace context); unset, it runs the handshake code in process over its own store
//! (no relay grants then: the in-process service has no TURN shared secret). Errors reach the
//! peer with the handshake service's exact code, field and limit.

use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use quickp2p_handshake::{HandshakeError, HandshakeService};
use quickp2p_proto::v1::{self, ErrorCode, ErrorDetail, handshake_client::HandshakeClient};
use quickp2p_service_kit::telemetry::inject_trace_context;
use quickp2p_store::{Store, names};
use tonic::transport::Endpoint;

use crate::remote::{CALL_TIMEOUT, Traced};
use crate::{Shared, reject};

/// How long a peer's NAT report is kept in the store after its last `ReportNat`.
pub const NAT_REPORT_TTL: Duration = Duration::from_secs(3600);
/// Most reflexive addresses in a reported NAT report.
const MAX_REFLEXIVE: usize = 8;
/// Most local addresses in a reported NAT report.
const MAX_LOCAL: usize = 16;

/// Why the handshake URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid handshake URL {url:?} (QP_GATEWAY_HANDSHAKE_URL): {source}")]
pub struct HandshakeUrlError {
    url: String,
    source: tonic::transport::Error,
}

/// Where handshake requests go.
#[derive(Debug, Clone)]
pub(crate) enum HandshakeBackend {
    /// A Handshake replica (or a load-balanced Service of them) over gRPC.
    Remote(HandshakeClient<Traced>),
    /// The handshake code in this process, over the gateway's store.
    Local(HandshakeService),
}

impl HandshakeBackend {
    /// The backend for `url` (`None`: in process over `store`, named `gateway_id`).
    pub(crate) fn new(
        url: Option<&str>,
        store: Store,
        gateway_id: &str,
    ) -> Result<HandshakeBackend, HandshakeUrlError> {
        Ok(match url {
            Some(url) => {
                let channel = Endpoint::from_shared(url.to_owned())
                    .map_err(|source| HandshakeUrlError {
                        url: url.to_owned(),
                        source,
                    })?
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(CALL_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy();
                HandshakeBackend::Remote(HandshakeClient::with_interceptor(
                    channel,
                    inject_trace_context as fn(_) -> _,
                ))
            }
            None => HandshakeBackend::Local(HandshakeService::new(
                store,
                quickp2p_handshake::Config::default(),
                gateway_id,
            )),
        })
    }
}

fn local<T>(r: Result<T, HandshakeError>) -> Result<T, ErrorDetail> {
    r.map_err(|e| {
        if e.detail().code() == ErrorCode::Internal {
            tracing::error!(error = %e, "handshake internal error");
        }
        e.detail()
    })
}

fn remote<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, ErrorDetail> {
    r.map(tonic::Response::into_inner)
        .map_err(|s| ErrorDetail::from_status(&s))
}

/// Who is asking: the session's application and peer, and what the gateway sees of it.
pub(crate) struct Caller<'a> {
    /// The session's application.
    pub(crate) app: &'a str,
    /// The session's peer.
    pub(crate) peer: &'a v1::PeerId,
    /// The peer's address as this gateway sees it now.
    pub(crate) observed: v1::SocketAddress,
}

impl Caller<'_> {
    /// The party as the handshake service gets it: the gateway's facts, the peer's candidates,
    /// and the NAT report given or else the last one reported.
    async fn party(
        &self,
        shared: &Shared,
        candidates: Vec<v1::Candidate>,
        nat_report: Option<v1::NatReport>,
        clock: Option<v1::ClockEstimate>,
    ) -> v1::HandshakeParty {
        let nat_report = match nat_report {
            Some(r) => Some(r),
            None => shared
                .store
                .get_ephemeral(&names::nat_report_key(self.app, &self.peer.to_string()))
                .await
                .ok()
                .flatten()
                .and_then(|raw| v1::NatReport::decode(raw).ok()),
        };
        v1::HandshakeParty {
            peer: Some(self.peer.clone()),
            gateway_id: shared.config.gateway_id.clone(),
            candidates,
            nat_report,
            gateway_observed_address: Some(self.observed.clone()),
            clock,
        }
    }
}

/// `RequestTunnel` → Handshake.Begin.
pub(crate) async fn request_tunnel(
    shared: &Shared,
    caller: &Caller<'_>,
    r: v1::RequestTunnel,
) -> Result<v1::TunnelRequested, ErrorDetail> {
    let initiator = caller
        .party(shared, r.candidates, r.nat_report, r.clock)
        .await;
    let req = v1::BeginHandshakeRequest {
        app_id: Some(v1::AppId::new(caller.app)),
        initiator: Some(initiator),
        target: r.target,
        retry_of: r.retry_of,
    };
    let begun = match &shared.handshake {
        HandshakeBackend::Remote(c) => remote(c.clone().begin(req).await),
        HandshakeBackend::Local(s) => local(s.begin(req).await),
    }?;
    Ok(v1::TunnelRequested {
        handshake_id: begun.handshake_id,
        attempt: begun.attempt,
        expires_at_unix_ms: begun.expires_at_unix_ms,
    })
}

/// `ShareCandidates` → Handshake.ReportCandidates.
pub(crate) async fn share_candidates(
    shared: &Shared,
    caller: &Caller<'_>,
    s: v1::ShareCandidates,
) -> Result<v1::Ack, ErrorDetail> {
    let party = caller
        .party(shared, s.candidates, s.nat_report, s.clock)
        .await;
    let req = v1::ReportCandidatesRequest {
        app_id: Some(v1::AppId::new(caller.app)),
        handshake_id: s.handshake_id,
        party: Some(party),
        end_of_candidates: s.end_of_candidates,
    };
    match &shared.handshake {
        HandshakeBackend::Remote(c) => remote(c.clone().report_candidates(req).await),
        HandshakeBackend::Local(s) => local(s.report_candidates(req).await),
    }?;
    Ok(v1::Ack {})
}

/// `ReportPunchOutcome` → Handshake.ReportOutcome.
pub(crate) async fn report_outcome(
    shared: &Shared,
    caller: &Caller<'_>,
    r: v1::ReportPunchOutcome,
) -> Result<v1::Ack, ErrorDetail> {
    let Some(report) = r.report else {
        reject("invalid");
        return Err(ErrorDetail {
            field: "report_punch_outcome.report".into(),
            ..ErrorDetail::new(ErrorCode::Invalid, "a punch report is required")
        });
    };
    let req = v1::ReportOutcomeRequest {
        app_id: Some(v1::AppId::new(caller.app)),
        peer: Some(caller.peer.clone()),
        report: Some(report),
    };
    match &shared.handshake {
        HandshakeBackend::Remote(c) => remote(c.clone().report_outcome(req).await),
        HandshakeBackend::Local(s) => local(s.report_outcome(req).await),
    }?;
    Ok(v1::Ack {})
}

/// `ReportNat`: kept in the store as the peer's latest report.
pub(crate) async fn report_nat(
    shared: &Shared,
    caller: &Caller<'_>,
    r: v1::ReportNat,
) -> Result<v1::Ack, ErrorDetail> {
    let invalid = |message: &str| {
        reject("invalid");
        ErrorDetail {
            field: "report_nat.report".into(),
            ..ErrorDetail::new(ErrorCode::Invalid, message)
        }
    };
    let Some(report) = r.report else {
        return Err(invalid("a NAT report is required"));
    };
    if report.reflexive_addresses.len() > MAX_REFLEXIVE || report.local_addresses.len() > MAX_LOCAL
    {
        return Err(invalid(
            "a NAT report has at most 8 reflexive and 16 local addresses",
        ));
    }
    let key = names::nat_report_key(caller.app, &caller.peer.to_string());
    shared
        .store
        .put_ephemeral(&key, Bytes::from(report.encode_to_vec()), NAT_REPORT_TTL)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "NAT report not stored");
            reject("unavailable");
            ErrorDetail {
                retry_after_ms: 500,
                ..ErrorDetail::new(ErrorCode::Unavailable, "shared state unavailable, retry")
            }
        })?;
    Ok(v1::Ack {})
}
