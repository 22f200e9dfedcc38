//! The internal `quickp2p.v1.Deliver` gRPC service: other replicas queue events to the peers
//! attached here. A recipient is `ACCEPTED` only once the event is in its outbound queue — the
//! acknowledgement the sending gateway waits for before it tells its peer `MessageAccepted`.

use std::sync::Arc;

use quickp2p_proto::v1::{self, deliver_server::Deliver};
use tonic::{Request, Response, Status};

use crate::Shared;

/// The Deliver service of one gateway.
#[derive(Debug, Clone)]
pub struct DeliverService {
    pub(crate) shared: Arc<Shared>,
}

fn app_of(app: Option<v1::AppId>) -> Result<String, Status> {
    match app {
        Some(a) if !a.value.is_empty() => Ok(a.value),
        _ => Err(Status::invalid_argument("app_id is required")),
    }
}

impl DeliverService {
    /// Queues one item of a delivery stream; its status.
    fn deliver_item(&self, item: v1::DeliverItem) -> v1::DeliverItemResult {
        let status = match (
            item.app_id,
            item.recipient.as_ref().map(v1::PeerId::public_key),
            item.event,
        ) {
            (Some(app), Some(Ok(key)), Some(event)) if !app.value.is_empty() => {
                let span = tracing::debug_span!("deliver_item", seq = item.seq);
                quickp2p_service_kit::telemetry::set_parent_from_traceparent(
                    &span,
                    &item.traceparent,
                );
                let _enter = span.enter();
                self.shared
                    .registry
                    .deliver_status(&(app.value, key), crate::remote::event_frame(event))
            }
            // an item without an application, recipient or event reaches nobody
            _ => v1::DeliveryStatus::NotAttached,
        };
        v1::DeliverItemResult {
            seq: item.seq,
            status: status as i32,
        }
    }
}

/// The answers of one delivery stream.
type ResultStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<v1::DeliverBatchResult, Status>> + Send>>;

#[tonic::async_trait]
impl Deliver for DeliverService {
    type DeliverStreamStream = ResultStream;

    async fn deliver_stream(
        &self,
        request: Request<tonic::Streaming<v1::DeliverBatch>>,
    ) -> Result<Response<ResultStream>, Status> {
        use futures::StreamExt as _;
        let service = self.clone();
        let answers = request.into_inner().map(move |batch| {
            let batch = batch?;
            if batch.items.is_empty() || batch.items.len() > crate::remote::MAX_BATCH {
                return Err(Status::invalid_argument(format!(
                    "a batch carries 1 to {} items, not {}",
                    crate::remote::MAX_BATCH,
                    batch.items.len()
                )));
            }
            Ok(v1::DeliverBatchResult {
                results: batch
                    .items
                    .into_iter()
                    .map(|item| service.deliver_item(item))
                    .collect(),
            })
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn deliver(
        &self,
        request: Request<v1::DeliverRequest>,
    ) -> Result<Response<v1::DeliverResponse>, Status> {
        let req = request.into_inner();
        let app = app_of(req.app_id)?;
        if req.recipients.is_empty() || req.recipients.len() > 1000 {
            return Err(Status::invalid_argument("1 to 1000 recipients"));
        }
        let event = req
            .event
            .ok_or_else(|| Status::invalid_argument("event is required"))?;
        let frame = crate::remote::event_frame(event);
        let results = req
            .recipients
            .into_iter()
            .map(|peer| {
                let status = match peer.public_key() {
                    Ok(key) => self
                        .shared
                        .registry
                        .deliver_status(&(app.clone(), key), frame.clone()),
                    Err(_) => v1::DeliveryStatus::NotAttached,
                };
                v1::RecipientStatus {
                    peer: Some(peer),
                    status: status as i32,
                }
            })
            .collect();
        Ok(Response::new(v1::DeliverResponse { results }))
    }

    async fn broadcast(
        &self,
        request: Request<v1::DeliverBroadcastRequest>,
    ) -> Result<Response<v1::DeliverBroadcastResponse>, Status> {
        let req = request.into_inner();
        let app = app_of(req.app_id)?;
        let event = req
            .event
            .ok_or_else(|| Status::invalid_argument("event is required"))?;
        let frame = crate::remote::event_frame(event);
        let (mut accepted, mut queue_full) = (0, 0);
        for session in self.shared.registry.of_app(&app) {
            if session.conn.push(frame.clone()).is_ok() {
                accepted += 1;
            } else {
                queue_full += 1;
            }
        }
        Ok(Response::new(v1::DeliverBroadcastResponse {
            accepted,
            queue_full,
        }))
    }

    async fn kick(
        &self,
        request: Request<v1::DeliverKickRequest>,
    ) -> Result<Response<v1::DeliverKickResponse>, Status> {
        let req = request.into_inner();
        let app = app_of(req.app_id)?;
        let key = req
            .peer
            .and_then(|p| p.public_key().ok())
            .ok_or_else(|| Status::invalid_argument("peer must be a 32-byte peer id"))?;
        let Some(session) = self.shared.registry.get(&(app, key)) else {
            return Ok(Response::new(v1::DeliverKickResponse {
                was_attached: false,
            }));
        };
        let kicked = req.kicked.unwrap_or_default();
        session
            .conn
            .push_uncounted(crate::remote::event_frame(v1::PeerEvent {
                event: Some(v1::peer_event::Event::Kicked(kicked)),
            }));
        session.conn.close(
            v1::ConnectionCloseCode::Kicked,
            "session ended by the network",
        );
        Ok(Response::new(v1::DeliverKickResponse {
            was_attached: true,
        }))
    }
}
