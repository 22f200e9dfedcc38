//! Batched deduplication records: every accepted message with a `client_message_id` is
//! remembered for [`DEDUP_TTL`] so that a resend after a reconnect gets the original acceptance.
//! Records are collected for up to [`BATCH_WINDOW`] (or [`MAX_BATCH`]) and written to the store
//! in one round trip, off every message's acceptance path.
//!
//! Messages: [`Record`] in (key, value); nothing out. A record that cannot be queued (the store is
//! far behind) or written is dropped and counted in `qp_gateway_dedup_records_dropped_total`:
//! it only serves replays, and the SDK also drops repeats it has seen.

use std::time::Duration;

use bytes::Bytes;
use quickp2p_service_kit::Shutdown;
use quickp2p_store::Store;
use tokio::sync::mpsc;

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

/// Writes records in batches until `done` (then what is still queued, and returns) or until
/// every sender is gone.
pub(crate) async fn run(store: Store, mut rx: mpsc::Receiver<Record>, done: Shutdown) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            first = rx.recv() => first,
            () = done.cancelled() => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(record)) => batch.push(record),
                _ => break,
            }
        }
        write(&store, &mut batch).await;
    }
    // the last records: nothing new comes once the endpoint has stopped
    while let Ok(record) = rx.try_recv() {
        batch.push(record);
        if batch.len() == MAX_BATCH {
            write(&store, &mut batch).await;
        }
    }
    write(&store, &mut batch).await;
}

/// Stores and empties `batch` (counting it as dropped if the store refuses).
async fn write(store: &Store, batch: &mut Vec<Record>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = store.put_ephemeral_many(batch, DEDUP_TTL).await {
        tracing::debug!(error = %e, records = batch.len(), "dedup records not stored");
        metrics::counter!("qp_gateway_dedup_records_dropped_total").increment(batch.len() as u64);
    }
    batch.clear();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn records_reach_the_store_in_batches_and_the_last_ones_at_the_end() {
        let store = Store::embedded();
        let (tx, rx) = mpsc::channel(QUEUE);
        let done = Shutdown::new();
        let writer = tokio::spawn(run(store.clone(), rx, done.clone()));
        // more than one batch at once
        for i in 0..(MAX_BATCH + 10) {
            remember(&tx, (format!("dedup:a:{i}"), Bytes::from(vec![1u8; 9])));
        }
        let last = format!("dedup:a:{}", MAX_BATCH + 9);
        let written = tokio::time::timeout(Duration::from_secs(5), async {
            while store.get_ephemeral(&last).await.unwrap().is_none() {
                tokio::time::sleep(BATCH_WINDOW).await;
            }
        })
        .await;
        assert!(written.is_ok(), "the second batch never reached the store");
        assert!(store.get_ephemeral("dedup:a:0").await.unwrap().is_some());
        // records queued when the writer is told to finish are still stored
        for i in 0..5 {
            remember(&tx, (format!("dedup:b:{i}"), Bytes::from_static(b"late")));
        }
        done.cancel();
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
        for i in 0..5 {
            assert_eq!(
                store
                    .get_ephemeral(&format!("dedup:b:{i}"))
                    .await
                    .unwrap()
                    .as_deref(),
                Some(&b"late"[..])
            );
        }
    }
}
