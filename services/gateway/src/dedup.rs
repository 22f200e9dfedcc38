//! Batched deduplication records: every accepted message with a `client_message_id` is
//! remembered for [`DEDUP_TTL`] so that a resend after a reconnect gets the original acceptance.
//! Records are collected for up to [`BATCH_WINDOW`] (or [`MAX_BATCH`]) and written to the store
//! in one round trip, off every message's acceptance path.
//!
//! Messages: [`Record`] in (key, value); nothing out. A record that cannot be queued (the store is
//! far behind) or written is dropped and counted in `qp_gateway_dedup_records_dropped_total`:
//! it only serves replays, and the SDK also drops repeats it has seen.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::Shared;

/// How long a `client_message_id` is remembered.
pub const DEDUP_TTL: Duration = Duration::from_secs(300);
/// Most records in one store write.
pub const MAX_BATCH: usize = 1024;
/// How long a record waits for others to share its write.
pub const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// Records queued at most before new ones are dropped.
pub const QUEUE: usize = 16 * 1024;

/// One record: its store key and value (acceptance time and message id).
pub(crate) type Record = (String, Bytes);

/// Queues a record without waiting; drops (and counts) it when the writer is far behind.
pub(crate) fn remember(records: &mpsc::Sender<Record>, record: Record) {
    if records.try_send(record).is_err() {
        metrics::counter!("qp_gateway_dedup_records_dropped_total").increment(1);
    }
}

/// Writes records in batches until every sender is gone.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Record>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(record)) => batch.push(record),
                _ => break,
            }
        }
        if let Err(e) = shared.store.put_ephemeral_many(&batch, DEDUP_TTL).await {
            tracing::debug!(error = %e, records = batch.len(), "dedup records not stored");
            metrics::counter!("qp_gateway_dedup_records_dropped_total")
                .increment(batch.len() as u64);
        }
        batch.clear();
    }
}
