//! Batched heartbeats: peers' Heartbeat requests are collected for a few milliseconds (or up to
//! [`MAX_BATCH`]) and sent to the checkpoint as one `Heartbeat` call; each peer gets its own
//! result. Successful heartbeats also refresh the peer's route.
//!
//! Messages: [`Beat`] in (token, observed address, app and peer for the route, reply channel);
//! one `Result<HeartbeatResult, ErrorDetail>` out per beat.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quickp2p_proto::v1;
use tokio::sync::{mpsc, oneshot};

use crate::Shared;

/// Most sessions in one checkpoint call.
pub const MAX_BATCH: usize = 1000;
/// How long a beat waits for others to share its call.
pub const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// One peer's heartbeat waiting for its batch.
#[derive(Debug)]
pub struct Beat {
    /// The session token.
    pub token: Bytes,
    /// The address the gateway sees now.
    pub observed: v1::SocketAddress,
    /// Application and peer hex id, for the route refresh.
    pub route: (String, String),
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<v1::HeartbeatResult, v1::ErrorDetail>>,
}

/// Runs the batcher until every sender is gone.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Beat>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(beat)) => batch.push(beat),
                _ => break,
            }
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move { flush(shared, batch).await });
    }
}

async fn flush(shared: Arc<Shared>, batch: Vec<Beat>) {
    let request = v1::HeartbeatRequest {
        gateway_id: shared.config.gateway_id.clone(),
        sessions: batch
            .iter()
            .map(|b| v1::SessionHeartbeat {
                session_token: b.token.clone(),
                observed_address: Some(b.observed.clone()),
            })
            .collect(),
    };
    let outcome = shared.checkpoint.clone().heartbeat(request).await;
    match outcome {
        Ok(response) => {
            let results = response.into_inner().results;
            for (beat, result) in batch.into_iter().zip(results) {
                if result.error.is_none() {
                    let (app, peer) = &beat.route;
                    if let Err(e) = shared
                        .store
                        .set_route(
                            app,
                            peer,
                            &shared.config.gateway_id,
                            shared.config.route_ttl,
                        )
                        .await
                    {
                        tracing::warn!(error = %e, "route not refreshed");
                    }
                }
                let _ = beat.reply.send(Ok(result));
            }
        }
        Err(status) => {
            let detail = v1::ErrorDetail::from_status(&status);
            tracing::warn!(error = %status.message(), "heartbeat batch failed");
            for beat in batch {
                let _ = beat.reply.send(Err(detail.clone()));
            }
        }
    }
}
