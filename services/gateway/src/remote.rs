//! What the gateway calls: the checkpoint (gRPC, with trace context) and the Deliver service of
//! other gateway replicas (found through the route peer → gateway and the replica registry): one
//! long-lived, batching `DeliverStream` per replica for messages ([`DeliverLink`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quickp2p_proto::v1::{
    self, checkpoint_client::CheckpointClient, deliver_client::DeliverClient,
};
use quickp2p_service_kit::telemetry::inject_trace_context;
use quickp2p_store::Store;
use tokio::sync::{mpsc, oneshot};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A gRPC client that adds the W3C trace context of the current span to every call.
pub type Traced = InterceptedService<
    Channel,
    fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
>;

/// The replica registry role of gateways.
pub const GATEWAY_ROLE: &str = "gateway";

/// How long a gRPC call to another service may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a remote endpoint cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid endpoint {url:?}: {source}")]
pub struct EndpointError {
    url: String,
    source: tonic::transport::Error,
}

fn channel(url: &str) -> Result<Channel, EndpointError> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|source| EndpointError {
            url: url.to_owned(),
            source,
        })?
        .connect_timeout(Duration::from_secs(1))
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// A checkpoint client.
pub fn checkpoint(url: &str) -> Result<CheckpointClient<Traced>, EndpointError> {
    Ok(CheckpointClient::with_interceptor(
        channel(url)?,
        inject_trace_context as fn(_) -> _,
    ))
}

/// Finds other gateways' Deliver endpoints and keeps one client per endpoint.
#[derive(Debug)]
pub struct Peers {
    store: Store,
    cache: Mutex<PeerCache>,
}

#[derive(Debug, Default)]
struct PeerCache {
    endpoints: HashMap<String, String>,
    refreshed: Option<Instant>,
    clients: HashMap<String, DeliverClient<Traced>>,
    links: HashMap<String, DeliverLink>,
}

/// How long the replica list is trusted before it is read again.
const REPLICA_CACHE: Duration = Duration::from_secs(2);

impl Peers {
    /// Lookups through `store`.
    pub fn new(store: Store) -> Peers {
        Peers {
            store,
            cache: Mutex::new(PeerCache::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PeerCache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The Deliver client of gateway `gateway_id`, if it is registered.
    pub async fn client(
        &self,
        gateway_id: &str,
    ) -> Result<Option<DeliverClient<Traced>>, quickp2p_store::StoreError> {
        let fresh = {
            let cache = self.lock();
            if let Some(url) = cache.endpoints.get(gateway_id)
                && let Some(client) = cache.clients.get(url)
            {
                return Ok(Some(client.clone()));
            }
            cache.refreshed.is_some_and(|t| t.elapsed() < REPLICA_CACHE)
        };
        if !fresh {
            let replicas = self.store.list_replicas(GATEWAY_ROLE).await?;
            let mut cache = self.lock();
            cache.endpoints = replicas
                .into_iter()
                .map(|r| (r.replica_id, r.info.advertised_addr))
                .collect();
            cache.refreshed = Some(Instant::now());
        }
        let mut cache = self.lock();
        let Some(url) = cache.endpoints.get(gateway_id).cloned() else {
            return Ok(None);
        };
        if let Some(client) = cache.clients.get(&url) {
            return Ok(Some(client.clone()));
        }
        match channel(&url) {
            Ok(ch) => {
                let client =
                    DeliverClient::with_interceptor(ch, inject_trace_context as fn(_) -> _);
                cache.clients.insert(url, client.clone());
                Ok(Some(client))
            }
            Err(e) => {
                tracing::warn!(error = %e, gateway = gateway_id, "unusable Deliver endpoint");
                Ok(None)
            }
        }
    }

    /// The open delivery stream to gateway `gateway_id`, if one is cached (no store read).
    pub(crate) fn cached_link(&self, gateway_id: &str) -> Option<DeliverLink> {
        let cache = self.lock();
        let url = cache.endpoints.get(gateway_id)?;
        cache.links.get(url).filter(|l| l.is_open()).cloned()
    }

    /// The delivery stream to gateway `gateway_id` (opened on first use), if it is registered.
    pub async fn link(
        &self,
        gateway_id: &str,
        origin: &str,
    ) -> Result<Option<DeliverLink>, quickp2p_store::StoreError> {
        if let Some(link) = self.cached_link(gateway_id) {
            return Ok(Some(link));
        }
        let Some(client) = self.client(gateway_id).await? else {
            return Ok(None);
        };
        let mut cache = self.lock();
        let Some(url) = cache.endpoints.get(gateway_id).cloned() else {
            return Ok(None);
        };
        if let Some(link) = cache.links.get(&url).filter(|l| l.is_open()) {
            return Ok(Some(link.clone()));
        }
        let link = DeliverLink::open(client, origin.to_owned(), gateway_id.to_owned());
        cache.links.insert(url, link.clone());
        Ok(Some(link))
    }

    /// Forgets a gateway's endpoint after a failed call (it may have restarted elsewhere).
    pub fn forget(&self, gateway_id: &str) {
        let mut cache = self.lock();
        if let Some(url) = cache.endpoints.remove(gateway_id) {
            cache.clients.remove(&url);
            cache.links.remove(&url);
        }
        cache.refreshed = None;
    }
}

/// Items one delivery stream may have queued or unanswered before callers are told to retry.
const LINK_QUEUE: usize = 8192;
/// Items sent together at most (the receiver refuses larger batches).
pub const MAX_BATCH: usize = 1024;

/// Why a delivery over a [`DeliverLink`] has no status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Too many deliveries are waiting on this link.
    #[error("too many deliveries queued to the recipient's gateway")]
    Busy,
    /// The stream failed or ended before the item was answered.
    #[error("the delivery stream to the recipient's gateway broke")]
    Broken,
    /// No answer within the call timeout.
    #[error("the recipient's gateway did not answer in time")]
    Timeout,
}

/// Who hears an item's status: an awaiting caller, or a function called in the link's task
/// (the endpoint's fast path, which then answers its peer without a task of its own). A
/// completion that is dropped unanswered tells its caller [`LinkError::Broken`].
pub(crate) struct Completion(Option<Done>);

enum Done {
    Caller(oneshot::Sender<Result<v1::DeliveryStatus, LinkError>>),
    Call(Box<dyn FnOnce(Result<v1::DeliveryStatus, LinkError>) + Send>),
}

impl Completion {
    /// Calls `f` with the status (in the link's task, so it must not block).
    pub(crate) fn call(
        f: impl FnOnce(Result<v1::DeliveryStatus, LinkError>) + Send + 'static,
    ) -> Self {
        Completion(Some(Done::Call(Box::new(f))))
    }

    fn finish(mut self, result: Result<v1::DeliveryStatus, LinkError>) {
        match self.0.take() {
            Some(Done::Caller(tx)) => {
                let _ = tx.send(result);
            }
            Some(Done::Call(f)) => f(result),
            None => {}
        }
    }

    /// Whether nobody waits any more (an awaiting caller gave up).
    fn abandoned(&self) -> bool {
        matches!(&self.0, Some(Done::Caller(tx)) if tx.is_closed())
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            Completion(Some(done)).finish(Err(LinkError::Broken));
        }
    }
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Completion")
    }
}

/// One item waiting to be sent, and who hears its status.
#[derive(Debug)]
struct Queued {
    item: v1::DeliverItem,
    done: Completion,
}

/// A long-lived `DeliverStream` to one other gateway replica. Items queued while the stream is
/// busy go out together in one batch; each caller gets its own item's status. When the stream
/// breaks, every unanswered caller gets [`LinkError::Broken`] and the next item opens a new one;
/// an item unanswered for [`CALL_TIMEOUT`] fails every waiting item with
/// [`LinkError::Timeout`] and the stream is opened anew.
#[derive(Debug, Clone)]
pub struct DeliverLink {
    tx: mpsc::Sender<Queued>,
}

impl DeliverLink {
    fn open(client: DeliverClient<Traced>, origin: String, gateway: String) -> DeliverLink {
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        tokio::spawn(run_link(client, origin, gateway, rx));
        DeliverLink { tx }
    }

    /// Queues `event` to `recipient` of `app` on the linked gateway; resolves with its status.
    pub async fn deliver(
        &self,
        app: &str,
        recipient: &v1::PeerId,
        event: v1::PeerEvent,
    ) -> Result<v1::DeliveryStatus, LinkError> {
        let (tx, status) = oneshot::channel();
        self.submit(app, recipient, event, Completion(Some(Done::Caller(tx))));
        status.await.unwrap_or(Err(LinkError::Broken))
    }

    /// Queues `event` to `recipient` of `app` without waiting; `done` hears the status (at once
    /// when the link is full or gone).
    pub(crate) fn submit(
        &self,
        app: &str,
        recipient: &v1::PeerId,
        event: v1::PeerEvent,
        done: Completion,
    ) {
        let item = v1::DeliverItem {
            seq: 0,
            app_id: Some(v1::AppId::new(app.to_owned())),
            recipient: Some(recipient.clone()),
            event: Some(event),
            traceparent: quickp2p_service_kit::telemetry::current_traceparent(),
        };
        if let Err(e) = self.tx.try_send(Queued { item, done }) {
            let (error, queued) = match e {
                mpsc::error::TrySendError::Full(q) => (LinkError::Busy, q),
                mpsc::error::TrySendError::Closed(q) => (LinkError::Broken, q),
            };
            queued.done.finish(Err(error));
        }
    }

    /// Whether the link's task still runs.
    pub(crate) fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// Runs the stream of one link: opens it when there is something to send, sends what is queued
/// in batches, hands out the answers in order, and reopens after a failure.
async fn run_link(
    mut client: DeliverClient<Traced>,
    origin: String,
    gateway: String,
    mut rx: mpsc::Receiver<Queued>,
) {
    let mut seq = 0u64;
    loop {
        // a new stream only once there is something to send: an idle link costs nothing
        let Some(next) = rx.recv().await else {
            return;
        };
        let (out, out_rx) = mpsc::channel::<v1::DeliverBatch>(16);
        let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx);
        let opened = tokio::time::timeout(CALL_TIMEOUT, client.deliver_stream(stream)).await;
        let mut inbound = match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                tracing::warn!(%gateway, error = %status.message(), "delivery stream refused");
                next.done.finish(Err(LinkError::Broken));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => {
                tracing::warn!(%gateway, "delivery stream not opened in time");
                next.done.finish(Err(LinkError::Timeout));
                continue;
            }
        };
        metrics::counter!("qp_gateway_deliver_streams_opened_total").increment(1);
        // (seq, sent at, completion), oldest first
        let mut waiting: VecDeque<(u64, Instant, Completion)> = VecDeque::new();
        let mut pending = Some(next);
        // one timer for the oldest unanswered item, instead of one per caller
        let overdue = tokio::time::sleep(CALL_TIMEOUT);
        tokio::pin!(overdue);
        loop {
            if let Some((_, sent, _)) = waiting.front() {
                let due = tokio::time::Instant::from_std(*sent + CALL_TIMEOUT);
                if overdue.deadline() != due {
                    overdue.as_mut().reset(due);
                }
            }
            tokio::select! {
                biased;
                answer = inbound.message() => match answer {
                    Ok(Some(result)) => {
                        for r in result.results {
                            let status = r.status();
                            // answers come in order: anything older than this one was lost
                            while let Some((s, _, done)) = waiting.pop_front() {
                                if s == r.seq {
                                    done.finish(Ok(status));
                                    break;
                                }
                                done.finish(Err(LinkError::Broken));
                            }
                        }
                    }
                    Ok(None) => {
                        tracing::debug!(%gateway, "delivery stream ended");
                        break;
                    }
                    Err(status) => {
                        tracing::warn!(%gateway, error = %status.message(), "delivery stream failed");
                        break;
                    }
                },
                queued = async {
                    match pending.take() {
                        Some(q) => Some(q),
                        None => rx.recv().await,
                    }
                }, if waiting.len() < LINK_QUEUE => {
                    let Some(q) = queued else {
                        // every handle is gone (the link was forgotten), and with them every
                        // caller: nobody waits for the answers still due
                        return;
                    };
                    let mut items = Vec::with_capacity(8);
                    let now = Instant::now();
                    let mut push = |q: Queued, items: &mut Vec<v1::DeliverItem>| {
                        if q.done.abandoned() {
                            return; // its caller gave up
                        }
                        seq += 1;
                        let mut item = q.item;
                        item.seq = seq;
                        items.push(item);
                        waiting.push_back((seq, now, q.done));
                    };
                    push(q, &mut items);
                    while items.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(q) => push(q, &mut items),
                            Err(_) => break,
                        }
                    }
                    if items.is_empty() {
                        continue;
                    }
                    metrics::histogram!("qp_gateway_deliver_batch_items").record(items.len() as f64);
                    let batch = v1::DeliverBatch { origin: origin.clone(), items };
                    // a receiver that stops reading stalls the stream: give up on it like on
                    // a broken one (its callers time out meanwhile)
                    match tokio::time::timeout(CALL_TIMEOUT, out.send(batch)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break,
                        Err(_) => {
                            tracing::warn!(%gateway, "delivery stream stalled");
                            break;
                        }
                    }
                }
                () = &mut overdue, if !waiting.is_empty() => {
                    tracing::warn!(%gateway, waiting = waiting.len(), "delivery stream answers overdue");
                    for (_, _, done) in waiting.drain(..) {
                        done.finish(Err(LinkError::Timeout));
                    }
                    break;
                }
            }
        }
        // unanswered callers hear it broke
        for (_, _, done) in waiting.drain(..) {
            done.finish(Err(LinkError::Broken));
        }
        if rx.is_closed() && rx.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The encoded `GatewayFrame` carrying `event`, stamped with the current time.
pub fn event_frame(event: v1::PeerEvent) -> bytes::Bytes {
    crate::frame_bytes(&v1::GatewayFrame {
        server_time_us: crate::now_us(),
        frame: Some(v1::gateway_frame::Frame::Event(event)),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt as _;
    use quickp2p_proto::v1::deliver_server::{Deliver, DeliverServer};
    use tonic::{Request, Response, Status};

    use super::*;

    /// A Deliver server whose streams answer ACCEPTED for recipients whose id starts with an
    /// even byte, NOT_ATTACHED otherwise — except that the first stream it is given ends,
    /// unanswered, at its first batch. A `silent` one reads every batch and answers none.
    #[derive(Clone, Default)]
    struct TestDeliver {
        opened: Arc<AtomicUsize>,
        silent: bool,
    }

    type Answers = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<v1::DeliverBatchResult, Status>> + Send>,
    >;

    #[tonic::async_trait]
    impl Deliver for TestDeliver {
        type DeliverStreamStream = Answers;

        async fn deliver_stream(
            &self,
            request: Request<tonic::Streaming<v1::DeliverBatch>>,
        ) -> Result<Response<Answers>, Status> {
            let first = self.opened.fetch_add(1, Ordering::SeqCst) == 0;
            if self.silent {
                let mut batches = request.into_inner();
                // read (so the sender is not stalled) but answer nothing
                let drain = async move { while let Some(Ok(_)) = batches.next().await {} };
                let none = futures::stream::once(drain).filter_map(|()| std::future::ready(None));
                return Ok(Response::new(Box::pin(none)));
            }
            let answers = request
                .into_inner()
                .take_while(move |_| std::future::ready(!first))
                .map(|batch| {
                    Ok(v1::DeliverBatchResult {
                        results: batch?
                            .items
                            .into_iter()
                            .map(|item| {
                                let even = item.recipient.unwrap().value[0] % 2 == 0;
                                let status = if even {
                                    v1::DeliveryStatus::Accepted
                                } else {
                                    v1::DeliveryStatus::NotAttached
                                };
                                v1::DeliverItemResult {
                                    seq: item.seq,
                                    status: status as i32,
                                }
                            })
                            .collect(),
                    })
                });
            Ok(Response::new(Box::pin(answers)))
        }

        async fn deliver(
            &self,
            _: Request<v1::DeliverRequest>,
        ) -> Result<Response<v1::DeliverResponse>, Status> {
            Err(Status::unimplemented("stream only"))
        }

        async fn broadcast(
            &self,
            _: Request<v1::DeliverBroadcastRequest>,
        ) -> Result<Response<v1::DeliverBroadcastResponse>, Status> {
            Err(Status::unimplemented("stream only"))
        }

        async fn kick(
            &self,
            _: Request<v1::DeliverKickRequest>,
        ) -> Result<Response<v1::DeliverKickResponse>, Status> {
            Err(Status::unimplemented("stream only"))
        }
    }

    fn peer(first: u8) -> v1::PeerId {
        v1::PeerId::from_public_key([first; 32])
    }

    /// Serves `server` on a free loopback port; a link to it.
    fn link_to(server: &TestDeliver) -> DeliverLink {
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let url = format!("http://{}", incoming.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DeliverServer::new(server.clone()))
                .serve_with_incoming(incoming),
        );
        let client = DeliverClient::with_interceptor(
            channel(&url).unwrap(),
            inject_trace_context as fn(_) -> _,
        );
        DeliverLink::open(client, "test".into(), "gw-x".into())
    }

    #[tokio::test]
    async fn a_link_answers_each_item_and_reopens_a_broken_stream() {
        let server = TestDeliver::default();
        let link = link_to(&server);
        let event = v1::PeerEvent::default();

        // the first stream ends without answering: the caller hears it broke
        let broken = link.deliver("app", &peer(2), event.clone()).await;
        assert_eq!(broken, Err(LinkError::Broken));

        // the next items open a new stream; sent together, each gets its own status
        let (p2, p3, p4) = (peer(2), peer(3), peer(4));
        let (a, b, c) = tokio::join!(
            link.deliver("app", &p2, event.clone()),
            link.deliver("app", &p3, event.clone()),
            link.deliver("app", &p4, event.clone()),
        );
        assert_eq!(a, Ok(v1::DeliveryStatus::Accepted));
        assert_eq!(b, Ok(v1::DeliveryStatus::NotAttached));
        assert_eq!(c, Ok(v1::DeliveryStatus::Accepted));
        assert_eq!(server.opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn unanswered_items_time_out_through_their_completions_and_the_stream_reopens() {
        let server = TestDeliver {
            silent: true,
            ..TestDeliver::default()
        };
        let link = link_to(&server);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let started = Instant::now();
        for first in [2, 4] {
            let tx = tx.clone();
            link.submit(
                "app",
                &peer(first),
                v1::PeerEvent::default(),
                Completion::call(move |status| {
                    let _ = tx.send(status);
                }),
            );
        }
        let mut rx = rx;
        for _ in 0..2 {
            let status = tokio::time::timeout(CALL_TIMEOUT * 2, rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(status, Err(LinkError::Timeout));
        }
        assert!(started.elapsed() >= CALL_TIMEOUT, "{:?}", started.elapsed());
        // a completion dropped unanswered reports Broken rather than hanging its caller
        let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel();
        drop(Completion::call(move |status| {
            let _ = tx2.send(status);
        }));
        assert_eq!(rx2.recv().await, Some(Err(LinkError::Broken)));
        // the next item opens a new stream
        let (tx3, mut rx3) = tokio::sync::mpsc::unbounded_channel();
        link.submit(
            "app",
            &peer(6),
            v1::PeerEvent::default(),
            Completion::call(move |status| {
                let _ = tx3.send(status);
            }),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(server.opened.load(Ordering::SeqCst), 2);
        drop(link);
        // the link ended: the waiting item heard it broke
        let status = tokio::time::timeout(CALL_TIMEOUT * 2, rx3.recv())
            .await
            .unwrap();
        assert_eq!(status, Some(Err(LinkError::Broken)));
    }
}
