//! [`Subscription`]: the receiving end of a pub/sub channel, the same type for both backends.
//!
//! Delivery is at most once: messages published while no subscription exists, while the
//! connection to Redis is being re-established, or that a slow consumer let pile up beyond
//! [`SUBSCRIPTION_BUFFER`] are lost (the latter are counted in [`Subscription::lagged`]).
//! Protocols built on top must tolerate loss (the gateway re-sends or refuses clearly).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

/// How many messages a subscription buffers for a slow consumer before it drops the oldest.
pub const SUBSCRIPTION_BUFFER: usize = 1024;

/// A stream of the payloads published on one channel.
///
/// Dropping it unsubscribes. With the Redis backend it keeps working across Redis restarts and
/// reconnects (the store resubscribes by itself); the stream only ends when the [`crate::Store`]
/// it came from is dropped.
pub struct Subscription {
    stream: Option<BroadcastStream<Bytes>>,
    release: Option<Release>,
    lagged: u64,
}

/// Tells the Redis pub/sub hub that a local subscriber went away.
pub(crate) struct Release {
    pub(crate) channel: String,
    pub(crate) tx: mpsc::UnboundedSender<String>,
}

impl Subscription {
    pub(crate) fn new(
        rx: tokio::sync::broadcast::Receiver<Bytes>,
        release: Option<Release>,
    ) -> Self {
        Self {
            stream: Some(BroadcastStream::new(rx)),
            release,
            lagged: 0,
        }
    }

    /// Waits for the next payload; `None` when the store is gone.
    pub async fn recv(&mut self) -> Option<Bytes> {
        futures::StreamExt::next(self).await
    }

    /// How many messages were dropped so far because this subscription was not read fast
    /// enough.
    pub fn lagged(&self) -> u64 {
        self.lagged
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("lagged", &self.lagged)
            .finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = &mut *self;
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match Pin::new(&mut *stream).poll_next(cx) {
                Poll::Ready(Some(Ok(payload))) => return Poll::Ready(Some(payload)),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => {
                    tracing::warn!(dropped = n, "slow subscriber: pub/sub messages dropped");
                    this.lagged += n;
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // drop the receiver first, so that the hub sees the subscriber count already lowered
        self.stream = None;
        if let Some(release) = self.release.take() {
            let _ = release.tx.send(release.channel);
        }
    }
}
