//! The gRPC control side of the pair (`quickp2p.v1.Stun`, see `stun.proto`).
//!
//! * [`Forwarder`] — the asking side. A change-IP request found by a receive thread becomes a
//!   `SendBindingResponseRequest` sent to the partner from a task of its own, so the UDP loop
//!   never waits on the network: at most `max_forwards_in_flight` calls at once (more are dropped,
//!   `forward_backlog`), each with a deadline (`forward_timeout`), over a lazily connected channel
//!   that carries the caller's trace context (`inject_trace_context`).
//! * [`ControlService`] — the answering side. `SendBindingResponse` checks the request, lets the
//!   [`StunResponder`](crate::server::StunResponder) build the response (or refuse it: stale,
//!   rate limited, denied destination, RFC 5780 off) and sends it from this server's own port;
//!   `Ping` describes the server and its counters.
//!
//! Malformed calls (transaction id not 12 bytes, bad address, padding above 1500) are
//! `INVALID_ARGUMENT`; every error becomes a `tonic::Status` through the service kit's
//! [`ServiceError`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quickp2p_proto::v1::stun_client::StunClient;
use quickp2p_proto::v1::{
    self, BindingResponseRefusal, SendBindingResponseRequest, SendBindingResponseResponse,
    StunPairMember, StunPingRequest, StunPingResponse,
};
use quickp2p_service_kit::ServiceError;
use quickp2p_service_kit::telemetry::inject_trace_context;
use quickp2p_wire::stun::TransactionId;
use tokio::sync::Semaphore;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::Shared;
use crate::config::{MAX_FORWARDED_PADDING, PairMember};
use crate::counters::StunCountersHandle;
use crate::server::{DropReason, LocalPort, PartnerRequest, Refusal};

/// The interceptor type of the partner client.
type TraceInterceptor = fn(Request<()>) -> Result<Request<()>, Status>;

/// A client of the partner's control API.
pub(crate) type PartnerClient = StunClient<InterceptedService<Channel, TraceInterceptor>>;

/// Network time now, in microseconds since the Unix epoch.
pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A lazily connected client of the partner's control API at `url`.
pub(crate) fn partner_client(
    url: &str,
    timeout: Duration,
) -> Result<PartnerClient, tonic::transport::Error> {
    let channel = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(StunClient::with_interceptor(
        channel,
        inject_trace_context as TraceInterceptor,
    ))
}

/// Hands change-IP requests to the partner without blocking the receive threads.
#[derive(Debug)]
pub(crate) struct Forwarder {
    client: Option<PartnerClient>,
    permits: Arc<Semaphore>,
    counters: Arc<StunCountersHandle>,
    server_id: String,
    timeout: Duration,
}

impl Forwarder {
    pub(crate) fn new(
        client: Option<PartnerClient>,
        max_in_flight: usize,
        counters: Arc<StunCountersHandle>,
        server_id: String,
        timeout: Duration,
    ) -> Forwarder {
        Forwarder {
            client,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            counters,
            server_id,
            timeout,
        }
    }

    /// Starts a SendBindingResponse call for `request`; returns at once.
    pub(crate) fn forward(&self, request: PartnerRequest) {
        let Some(client) = &self.client else {
            self.counters.dropped(DropReason::ForwardFailed);
            return;
        };
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.counters.dropped(DropReason::ForwardBacklog);
            return;
        };
        self.counters.forwarded();
        let message = to_proto(&request, unix_micros(), &self.server_id);
        let mut client = client.clone();
        let counters = Arc::clone(&self.counters);
        let timeout = self.timeout;
        let span = tracing::debug_span!(
            "stun_forward",
            client = %request.client,
            change_port = request.change_port,
        );
        tokio::spawn(
            async move {
                let _permit = permit;
                match tokio::time::timeout(timeout, client.send_binding_response(message)).await {
                    Ok(Ok(reply)) => {
                        let reply = reply.into_inner();
                        if !reply.sent {
                            tracing::debug!(refusal = ?reply.refusal(), "partner refused a forwarded request");
                            counters.dropped(DropReason::PartnerRefused);
                        }
                    }
                    Ok(Err(status)) => {
                        tracing::debug!(%status, "forward to the partner failed");
                        counters.dropped(DropReason::ForwardFailed);
                    }
                    Err(_) => {
                        tracing::debug!(?timeout, "forward to the partner timed out");
                        counters.dropped(DropReason::ForwardFailed);
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// The wire form of a forwarded request.
pub(crate) fn to_proto(
    request: &PartnerRequest,
    received_at_us: u64,
    origin: &str,
) -> SendBindingResponseRequest {
    SendBindingResponseRequest {
        transaction_id: request.transaction_id.as_bytes().to_vec().into(),
        client_address: Some(request.client.into()),
        response_port: request.response_port.map_or(0, u32::from),
        change_port: request.change_port,
        padding_length: u32::from(request.padding_len),
        rfc5780_attributes: request.rfc5780_attributes,
        received_at_us,
        origin_server_id: origin.to_owned(),
        received_on_alternate: request.received_on == LocalPort::Alternate,
    }
}

/// A forwarded request read back from the wire.
pub(crate) fn from_proto(
    message: &SendBindingResponseRequest,
) -> Result<PartnerRequest, ServiceError> {
    let id: [u8; 12] = message.transaction_id.as_ref().try_into().map_err(|_| {
        ServiceError::InvalidArgument(format!(
            "transaction_id must be 12 bytes, not {}",
            message.transaction_id.len()
        ))
    })?;
    let client = message
        .client_address
        .as_ref()
        .ok_or_else(|| ServiceError::InvalidArgument("client_address is required".into()))
        .and_then(|a| {
            SocketAddr::try_from(a)
                .map_err(|e| ServiceError::InvalidArgument(format!("client_address: {e}")))
        })?;
    let response_port = match message.response_port {
        0 => None,
        p => Some(u16::try_from(p).map_err(|_| {
            ServiceError::InvalidArgument(format!("response_port {p} is out of range"))
        })?),
    };
    if message.padding_length > MAX_FORWARDED_PADDING {
        return Err(ServiceError::InvalidArgument(format!(
            "padding_length {} is above {MAX_FORWARDED_PADDING}",
            message.padding_length
        )));
    }
    Ok(PartnerRequest {
        transaction_id: TransactionId::new(id),
        client,
        response_port,
        change_port: message.change_port,
        received_on: if message.received_on_alternate {
            LocalPort::Alternate
        } else {
            LocalPort::Primary
        },
        padding_len: u16::try_from(message.padding_length).unwrap_or(0),
        rfc5780_attributes: message.rfc5780_attributes,
    })
}

/// The `quickp2p.v1.Stun` service of one STUN server.
#[derive(Debug, Clone)]
pub(crate) struct ControlService {
    pub(crate) shared: Arc<Shared>,
}

impl ControlService {
    async fn send_binding_response_inner(
        &self,
        message: SendBindingResponseRequest,
    ) -> Result<SendBindingResponseResponse, ServiceError> {
        let request = from_proto(&message)?;
        let shared = &self.shared;
        let age = Duration::from_micros(unix_micros().saturating_sub(message.received_at_us));
        let mut out = Vec::new();
        let reply = match shared.responder.handle_partner_request(
            &request,
            age,
            Instant::now(),
            &mut out,
        ) {
            Ok(reply) => reply,
            Err(refusal) => {
                shared.counters.dropped(refusal.drop_reason());
                tracing::debug!(?refusal, origin = %message.origin_server_id, client = %request.client, "forwarded request refused");
                return Ok(SendBindingResponseResponse {
                    sent: false,
                    refusal: refusal_to_proto(refusal) as i32,
                    ..Default::default()
                });
            }
        };
        // a UDP send does not block (short of a full socket buffer)
        match shared.sockets.send_to(reply.from, &out, reply.to) {
            Ok(bytes) => {
                shared.counters.response_for_partner();
                Ok(SendBindingResponseResponse {
                    sent: true,
                    refusal: BindingResponseRefusal::Unspecified as i32,
                    sent_from: Some(shared.responder.config().advertised(reply.from).into()),
                    sent_to: Some(reply.to.into()),
                    bytes_sent: u32::try_from(bytes).unwrap_or(u32::MAX),
                })
            }
            Err(e) => {
                shared.counters.dropped(DropReason::SendFailed);
                Err(ServiceError::Unavailable(format!(
                    "cannot send to {}: {e}",
                    reply.to
                )))
            }
        }
    }
}

fn refusal_to_proto(refusal: Refusal) -> BindingResponseRefusal {
    match refusal {
        Refusal::Stale => BindingResponseRefusal::Stale,
        Refusal::RateLimited => BindingResponseRefusal::RateLimited,
        Refusal::DeniedDestination => BindingResponseRefusal::DeniedDestination,
        Refusal::Disabled => BindingResponseRefusal::Disabled,
    }
}

#[tonic::async_trait]
impl v1::stun_server::Stun for ControlService {
    async fn send_binding_response(
        &self,
        request: Request<SendBindingResponseRequest>,
    ) -> Result<Response<SendBindingResponseResponse>, Status> {
        self.send_binding_response_inner(request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn ping(
        &self,
        request: Request<StunPingRequest>,
    ) -> Result<Response<StunPingResponse>, Status> {
        let request = request.into_inner();
        let config = self.shared.responder.config();
        Ok(Response::new(StunPingResponse {
            server_id: config.server_id.clone(),
            member: match config.member {
                PairMember::A => StunPairMember::A,
                PairMember::B => StunPairMember::B,
            } as i32,
            primary_address: Some(config.advertised(LocalPort::Primary).into()),
            alternate_address: Some(config.advertised(LocalPort::Alternate).into()),
            partner_address: config.partner.as_ref().map(|p| p.address.into()),
            rfc5780_enabled: config.rfc5780,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            request_sent_at_us: request.sent_at_us,
            server_time_us: unix_micros(),
            counters: Some(self.shared.counters.snapshot()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_requests_round_trip_through_the_wire_form() {
        let request = PartnerRequest {
            transaction_id: TransactionId::new([7; 12]),
            client: "192.0.2.1:5000".parse().unwrap(),
            response_port: Some(6000),
            change_port: true,
            received_on: LocalPort::Alternate,
            padding_len: 0,
            rfc5780_attributes: true,
        };
        let wire = to_proto(&request, 42, "stun-a");
        assert_eq!(wire.received_at_us, 42);
        assert!(wire.received_on_alternate);
        assert_eq!(from_proto(&wire).unwrap(), request);
    }

    #[test]
    fn malformed_calls_are_invalid_arguments() {
        let good = to_proto(
            &PartnerRequest {
                transaction_id: TransactionId::new([1; 12]),
                client: "192.0.2.1:5000".parse().unwrap(),
                response_port: None,
                change_port: false,
                received_on: LocalPort::Primary,
                padding_len: 100,
                rfc5780_attributes: true,
            },
            0,
            "x",
        );
        let mut short_id = good.clone();
        short_id.transaction_id = vec![1; 11].into();
        let mut no_client = good.clone();
        no_client.client_address = None;
        let mut big_padding = good.clone();
        big_padding.padding_length = 1501;
        let mut bad_port = good.clone();
        bad_port.response_port = 70_000;
        for bad in [short_id, no_client, big_padding, bad_port] {
            let status = Status::from(from_proto(&bad).unwrap_err());
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        }
    }
}
