//! The async relay client: runs the sans-IO [`TurnClient`] on a tokio UDP socket the caller gives
//! it — the SDK's one socket.
//!
//! A task owns the timers and the incoming side: it sends what the core wants sent, waits for a
//! datagram, a command or the next timer, and routes what arrives — responses to the core,
//! application data to [`RelayClient::recv_from`], anything else to the unclaimed channel. The
//! datagrams come either from the socket itself ([`RelayClient::new`]: the client is the
//! socket's only reader) or from the caller ([`RelayClient::with_feed`]: the caller reads the
//! socket, demultiplexes with [`classify`](crate::wire::classify) and pushes what the TURN
//! server sent into the [`RelayFeed`]). Sends ([`RelayClient::send_to`]) go straight to the socket
//! from the caller's task.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::client::{Received, RequestId, TurnClient, TurnClientConfig, TurnEvent};
use super::error::{ClientError, RelayError, TurnError};
use crate::nat::UnclaimedDatagram;

/// Credentials for a TURN server (e.g. a `RelayGrant` from the handshake service).
#[derive(Clone, PartialEq, Eq)]
pub struct RelayCredentials {
    /// TURN USERNAME (`<expiry>:<peer id>` for quickP2P relays).
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for RelayCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// How a [`RelayClient`] runs.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RelayOptions {
    /// Timers of the TURN client.
    pub turn: TurnClientConfig,
    /// Datagrams that are not the TURN server's go here (exclusive-reader mode only); without
    /// it they are dropped with a debug log line.
    pub unclaimed: Option<mpsc::Sender<UnclaimedDatagram>>,
}

impl RelayOptions {
    /// Uses `config` for the TURN client's timers.
    pub fn with_turn(mut self, config: TurnClientConfig) -> RelayOptions {
        self.turn = config;
        self
    }

    /// Forwards datagrams that are not the TURN server's to `sender`.
    pub fn with_unclaimed(mut self, sender: mpsc::Sender<UnclaimedDatagram>) -> RelayOptions {
        self.unclaimed = Some(sender);
        self
    }
}

/// A granted allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayAllocation {
    /// The relayed address: give it to the peer.
    pub relayed: SocketAddr,
    /// Our address as the TURN server saw it.
    pub mapped: Option<SocketAddr>,
    /// The granted lifetime (refreshed automatically).
    pub lifetime: Duration,
}

/// How many received application datagrams wait for [`RelayClient::recv_from`].
const INCOMING: usize = 1024;

type Reply<T> = oneshot::Sender<Result<T, RelayError>>;

struct Core {
    client: TurnClient,
    allocate: Vec<Reply<RelayAllocation>>,
    release: Vec<Reply<()>>,
    requests: HashMap<RequestId, Reply<Option<u16>>>,
    lost: Option<TurnError>,
    allocation: Option<RelayAllocation>,
}

struct Shared {
    core: Mutex<Core>,
    socket: Arc<UdpSocket>,
    server: SocketAddr,
    wake: Notify,
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn turn_error(&self, error: TurnError) -> RelayError {
        RelayError::Turn {
            server: self.server,
            error,
        }
    }
}

/// Where datagrams from the TURN server come from.
enum Source {
    Socket(Option<mpsc::Sender<UnclaimedDatagram>>),
    Feed(mpsc::Receiver<(SocketAddr, Vec<u8>)>),
}

/// The caller's side of feed mode: push every datagram that came from the TURN server.
#[derive(Debug, Clone)]
pub struct RelayFeed {
    sender: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    server: SocketAddr,
}

impl RelayFeed {
    /// The TURN server's address: datagrams from it belong here.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Hands a datagram from `from` to the client; `false` when the client has stopped or is
    /// too far behind (the datagram is dropped, as UDP would).
    pub fn push(&self, from: SocketAddr, datagram: &[u8]) -> bool {
        self.sender.try_send((from, datagram.to_vec())).is_ok()
    }
}

/// A TURN allocation used from the caller's UDP socket. See the [module docs](super).
pub struct RelayClient {
    shared: Arc<Shared>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<(SocketAddr, Vec<u8>)>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayClient")
            .field("server", &self.shared.server)
            .finish_non_exhaustive()
    }
}

impl Drop for RelayClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RelayClient {
    /// A client that reads `socket` itself (it must be the socket's only reader); call
    /// [`RelayClient::allocate`] next. Must be called within a tokio runtime.
    pub fn new(
        socket: Arc<UdpSocket>,
        server: SocketAddr,
        credentials: RelayCredentials,
        options: RelayOptions,
    ) -> RelayClient {
        let source = Source::Socket(options.unclaimed.clone());
        RelayClient::start(socket, server, credentials, options, source)
    }

    /// A client fed by the caller, who reads `socket` and pushes into the returned
    /// [`RelayFeed`] every datagram from [`RelayFeed::server`]. Call [`RelayClient::allocate`]
    /// next (with the caller's reading loop already running).
    pub fn with_feed(
        socket: Arc<UdpSocket>,
        server: SocketAddr,
        credentials: RelayCredentials,
        options: RelayOptions,
    ) -> (RelayClient, RelayFeed) {
        let (sender, receiver) = mpsc::channel(INCOMING);
        let client =
            RelayClient::start(socket, server, credentials, options, Source::Feed(receiver));
        (client, RelayFeed { sender, server })
    }

    /// [`RelayClient::new`] then [`RelayClient::allocate`].
    pub async fn connect(
        socket: Arc<UdpSocket>,
        server: SocketAddr,
        credentials: RelayCredentials,
        options: RelayOptions,
    ) -> Result<(RelayClient, RelayAllocation), RelayError> {
        let client = RelayClient::new(socket, server, credentials, options);
        let allocation = client.allocate().await?;
        Ok((client, allocation))
    }

    fn start(
        socket: Arc<UdpSocket>,
        server: SocketAddr,
        credentials: RelayCredentials,
        options: RelayOptions,
        source: Source,
    ) -> RelayClient {
        let server = SocketAddr::new(server.ip().to_canonical(), server.port());
        let client = TurnClient::new(
            server,
            credentials.username,
            credentials.password,
            options.turn,
            rand::random(),
        );
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                client,
                allocate: Vec::new(),
                release: Vec::new(),
                requests: HashMap::new(),
                lost: None,
                allocation: None,
            }),
            socket,
            server,
            wake: Notify::new(),
        });
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING);
        let task = tokio::spawn(drive(Arc::clone(&shared), source, incoming_tx));
        RelayClient {
            shared,
            incoming: tokio::sync::Mutex::new(incoming_rx),
            task,
        }
    }

    /// The TURN server.
    pub fn server(&self) -> SocketAddr {
        self.shared.server
    }

    /// The allocation, once granted (and not lost).
    pub fn allocation(&self) -> Option<RelayAllocation> {
        let core = self.shared.core();
        core.allocation.filter(|_| core.client.is_allocated())
    }

    /// Allocates (handling the 401/438 exchanges); resolves when the server granted it.
    pub async fn allocate(&self) -> Result<RelayAllocation, RelayError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut core = self.shared.core();
            if let Some(a) = core.allocation.filter(|_| core.client.is_allocated()) {
                return Ok(a);
            }
            core.allocate.push(tx);
            core.client.allocate(Instant::now().into_std());
        }
        self.shared.wake.notify_one();
        rx.await.map_err(|_| RelayError::Closed)?
    }

    async fn request(
        &self,
        start: impl FnOnce(&mut TurnClient) -> Result<RequestId, ClientError>,
    ) -> Result<Option<u16>, RelayError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut core = self.shared.core();
            let id = start(&mut core.client)?;
            core.requests.insert(id, tx);
        }
        self.shared.wake.notify_one();
        rx.await.map_err(|_| RelayError::Closed)?
    }

    /// Installs a permission for `peer` (refreshed automatically): datagrams from any port of
    /// that IP reach us, and [`RelayClient::send_to`] may send to it.
    pub async fn create_permission(&self, peer: IpAddr) -> Result<(), RelayError> {
        let now = Instant::now().into_std();
        self.request(|c| c.create_permission(peer, now))
            .await
            .map(|_| ())
    }

    /// Binds a channel to `peer` (and installs its permission; both refreshed automatically), so
    /// data to and from it travels as 4-byte-header ChannelData. Returns the channel number.
    pub async fn bind_channel(&self, peer: SocketAddr) -> Result<u16, RelayError> {
        let now = Instant::now().into_std();
        self.request(|c| c.bind_channel(peer, now).map(|(id, _)| id))
            .await?
            .ok_or(RelayError::Closed)
    }

    /// Sends `data` to `peer` through the relay (ChannelData on a bound channel, else a Send
    /// indication; a permission is needed either way).
    pub async fn send_to(&self, data: &[u8], peer: SocketAddr) -> Result<(), RelayError> {
        let mut frame = Vec::with_capacity(data.len() + 40);
        {
            let mut core = self.shared.core();
            if let Some(error) = &core.lost {
                return Err(RelayError::AllocationLost {
                    server: self.shared.server,
                    error: error.clone(),
                });
            }
            core.client.send_to(peer, data, &mut frame)?;
        }
        self.shared
            .socket
            .send_to(&frame, self.shared.server)
            .await?;
        Ok(())
    }

    /// The next application datagram a peer sent through the relay: (bytes copied into `buf`,
    /// truncated to its length; the peer).
    pub async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), RelayError> {
        let (peer, data) = self
            .incoming
            .lock()
            .await
            .recv()
            .await
            .ok_or(RelayError::Closed)?;
        let n = data.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), data.get(..n)) {
            dst.copy_from_slice(src);
        }
        Ok((n, peer))
    }

    /// Releases the allocation (Refresh with LIFETIME 0) and stops the client.
    pub async fn close(self) -> Result<(), RelayError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut core = self.shared.core();
            if !core.client.is_allocated() {
                return Ok(());
            }
            core.release.push(tx);
            core.client.release(Instant::now().into_std());
        }
        self.shared.wake.notify_one();
        rx.await.map_err(|_| RelayError::Closed)?
    }
}

/// Hands the core's events to whoever waits for them.
fn dispatch(shared: &Shared, core: &mut Core) {
    while let Some(event) = core.client.poll_event() {
        match event {
            TurnEvent::Allocated {
                relayed,
                mapped,
                lifetime,
            } => {
                let allocation = RelayAllocation {
                    relayed,
                    mapped,
                    lifetime,
                };
                core.allocation = Some(allocation);
                core.lost = None;
                for w in core.allocate.drain(..) {
                    let _ = w.send(Ok(allocation));
                }
            }
            TurnEvent::AllocationFailed(error) => {
                for w in core.allocate.drain(..) {
                    let _ = w.send(Err(shared.turn_error(error.clone())));
                }
            }
            TurnEvent::AllocationLost(error) => {
                tracing::warn!(server = %shared.server, %error, "TURN allocation lost");
                core.lost = Some(error);
            }
            TurnEvent::Released => {
                for w in core.release.drain(..) {
                    let _ = w.send(Ok(()));
                }
            }
            TurnEvent::PermissionCreated { request, .. } => {
                if let Some(w) = core.requests.remove(&request) {
                    let _ = w.send(Ok(None));
                }
            }
            TurnEvent::ChannelBound {
                request, channel, ..
            } => {
                if let Some(w) = core.requests.remove(&request) {
                    let _ = w.send(Ok(Some(channel)));
                }
            }
            TurnEvent::RequestFailed { request, error } => {
                if let Some(w) = core.requests.remove(&request) {
                    let _ = w.send(Err(shared.turn_error(error)));
                }
            }
        }
    }
}

/// The client's task.
async fn drive(
    shared: Arc<Shared>,
    mut source: Source,
    incoming: mpsc::Sender<(SocketAddr, Vec<u8>)>,
) {
    let mut buf = vec![0u8; 65_536];
    let mut transmits = Vec::new();
    loop {
        let deadline = {
            let mut core = shared.core();
            let now = Instant::now().into_std();
            core.client.handle_timeout(now);
            while let Some(t) = core.client.poll_transmit(now) {
                transmits.push(t);
            }
            dispatch(&shared, &mut core);
            core.client.poll_timeout()
        };
        for t in transmits.drain(..) {
            if let Err(error) = shared.socket.send_to(&t.payload, t.destination).await {
                // a lost request: the core retransmits
                tracing::debug!(%error, server = %t.destination, "TURN send failed");
            }
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        let received: Option<(SocketAddr, Vec<u8>)> = tokio::select! {
            () = shared.wake.notified() => None,
            () = sleep => None,
            got = next(&mut source, &shared.socket, &mut buf) => match got {
                Next::Datagram(from, bytes) => Some((from, bytes)),
                Next::Skip => None,
                Next::Stop => {
                    let mut core = shared.core();
                    core.lost.get_or_insert(TurnError::Timeout);
                    core.allocate.clear();
                    core.requests.clear();
                    core.release.clear();
                    return;
                }
            },
        };
        let Some((from, bytes)) = received else {
            continue;
        };
        let outcome = {
            let mut core = shared.core();
            core.client
                .handle_datagram(from, &bytes, Instant::now().into_std())
        };
        match outcome {
            Received::Data { peer, payload } => {
                let data = bytes.get(payload).map(<[u8]>::to_vec).unwrap_or_default();
                if incoming.try_send((peer, data)).is_err() {
                    tracing::debug!(%peer, "relayed datagram dropped: recv_from is behind");
                }
            }
            Received::Consumed => {}
            Received::NotOurs => match &source {
                Source::Socket(Some(unclaimed)) => {
                    let _ = unclaimed.try_send(UnclaimedDatagram {
                        from,
                        payload: bytes,
                    });
                }
                _ => tracing::debug!(%from, "datagram not for the relay client dropped"),
            },
        }
    }
}

enum Next {
    Datagram(SocketAddr, Vec<u8>),
    Skip,
    Stop,
}

async fn next(source: &mut Source, socket: &UdpSocket, buf: &mut [u8]) -> Next {
    match source {
        Source::Feed(receiver) => match receiver.recv().await {
            Some((from, bytes)) => Next::Datagram(from, bytes),
            None => Next::Stop,
        },
        Source::Socket(_) => match socket.recv_from(buf).await {
            Ok((n, from)) => {
                Next::Datagram(from, buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default())
            }
            // ICMP errors surface as receive errors on some systems: not fatal
            Err(error) => {
                tracing::debug!(%error, "relay client: receive error");
                Next::Skip
            }
        },
    }
}
