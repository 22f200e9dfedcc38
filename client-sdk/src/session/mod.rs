//! Peer sessions: log in to a quickP2P network through any gateway, send and receive instant
//! messages, watch other peers' presence.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use quickp2p::identity::Identity;
//! use quickp2p::session::{AppCredentials, GatewayTrust, Peer, SessionConfig};
//!
//! let identity = Identity::load("peer.key")?;
//! let config = SessionConfig::new(
//!     vec!["127.0.0.1:4433".parse()?],
//!     AppCredentials::new("dev", "the-app-secret"),
//!     identity,
//! )
//! .trust(GatewayTrust::AnyCertificate); // dev only: pin fingerprints in production
//! let session = Peer::connect(config).await?;
//! let mut inbox = session.messages().expect("taken once");
//! let to = "7f…".parse()?; // another peer's id
//! session.send_message(&to, "hello").await?;
//! while let Some(message) = inbox.recv().await {
//!     println!("{}: {:?}", message.sender, message.payload);
//! }
//! # Ok(()) }
//! ```
//!
//! **Delivery.** `send_message` resolves when the recipient's gateway has queued the message to
//! the recipient (`MessageReceipt`), or with a typed error ([`SessionError::PeerOffline`],
//! [`SessionError::TooLarge`], [`SessionError::RateLimited`], …). Every message carries a
//! random client message id; sends still unanswered when the connection drops are replayed after
//! reconnecting with the same id, and the gateway answers a replay of an accepted message with the
//! original acceptance, so none that was reported accepted is lost or reported twice. A message
//! that its sender had to replay may reach the recipient twice (its first gateway died after
//! handing it over); the receiving session drops the repeat by (sender, client message id).
//!
//! **Reconnects.** When the gateway goes away (connection lost, `GOING_AWAY`, idle timeout) the
//! session reconnects to the next gateway of the list with exponential backoff, resumes the
//! session with its token (no offline/online flap), subscribes to presence again and replays
//! unanswered sends. [`Session::state`] tells where it is.
//!
//! **One socket.** The session binds one UDP socket and runs QUIC over it through
//! [`SharedSocket`]; datagrams that are not QUIC go to [`SessionConfig::non_quic`], and
//! [`Session::socket`] sends on the same socket (for STUN, TURN, hole punching).

mod driver;
mod handshake;
mod index;
mod socket;
mod tls;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
pub use quickp2p_proto::v1::{ErrorCode, PeerId, Presence};
use tokio::sync::{Mutex, broadcast, mpsc, oneshot, watch};

use crate::identity::Identity;
pub use handshake::HandshakeEvent;
pub use index::{PeerInfo, PeerPage, PeerQuery};
pub use socket::{NonQuicDatagram, SharedSocket};

/// An application's credentials.
#[derive(Clone)]
pub struct AppCredentials {
    /// The application id.
    pub app_id: String,
    /// The app secret (the HMAC key of the login proof; never sent).
    pub secret: String,
    /// Which secret it is (empty: the checkpoint tries each active one).
    pub secret_id: String,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials")
            .field("app_id", &self.app_id)
            .field("secret_id", &self.secret_id)
            .finish_non_exhaustive()
    }
}

impl AppCredentials {
    /// Credentials of `app_id` with `secret`.
    pub fn new(app_id: impl Into<String>, secret: impl Into<String>) -> AppCredentials {
        AppCredentials {
            app_id: app_id.into(),
            secret: secret.into(),
            secret_id: String::new(),
        }
    }
}

/// Which gateway certificates the session accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayTrust {
    /// Only certificates whose SHA-256 is one of these (gateways print theirs at start).
    Pinned(Vec<[u8; 32]>),
    /// Any certificate: for local development only (no protection against impersonation).
    AnyCertificate,
}

impl GatewayTrust {
    /// Parses pins given as 64 hex digits each (an optional `sha256:` prefix is allowed).
    pub fn pinned_hex<'a>(pins: impl IntoIterator<Item = &'a str>) -> Result<GatewayTrust, String> {
        let mut out = Vec::new();
        for pin in pins {
            let text = pin.trim().trim_start_matches("sha256:");
            let bytes: [u8; 32] = hex::decode(text)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("{pin:?} is not a SHA-256 fingerprint (64 hex digits)"))?;
            out.push(bytes);
        }
        Ok(GatewayTrust::Pinned(out))
    }
}

/// How a session connects and behaves.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Gateways to use, tried in order (any gateway of the network serves any peer).
    pub gateways: Vec<SocketAddr>,
    /// The application credentials.
    pub app: AppCredentials,
    /// The peer's key.
    pub identity: Identity,
    /// Gateway certificate trust.
    pub trust: GatewayTrust,
    /// Local address of the one UDP socket (default `0.0.0.0:0`).
    pub bind: SocketAddr,
    /// Where non-QUIC datagrams received on the socket go.
    pub non_quic: Option<mpsc::Sender<NonQuicDatagram>>,
    /// First reconnect delay; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// QUIC keep-alive interval (also what detects a dead gateway, with `idle_timeout`).
    pub keep_alive: Duration,
    /// A gateway silent this long is given up.
    pub idle_timeout: Duration,
    /// Time allowed for connecting and logging in to one gateway.
    pub connect_timeout: Duration,
    /// Incoming messages buffered for the application before the gateway is made to hold them.
    pub inbox_capacity: usize,
}

impl SessionConfig {
    /// A configuration with defaults: trust [`GatewayTrust::Pinned`] with no pins must be
    /// replaced with [`SessionConfig::trust`].
    pub fn new(
        gateways: Vec<SocketAddr>,
        app: AppCredentials,
        identity: Identity,
    ) -> SessionConfig {
        SessionConfig {
            gateways,
            app,
            identity,
            trust: GatewayTrust::Pinned(Vec::new()),
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            non_quic: None,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            keep_alive: Duration::from_millis(1000),
            idle_timeout: Duration::from_millis(3000),
            connect_timeout: Duration::from_secs(5),
            inbox_capacity: 4096,
        }
    }

    /// Sets the certificate trust.
    #[must_use]
    pub fn trust(mut self, trust: GatewayTrust) -> SessionConfig {
        self.trust = trust;
        self
    }

    /// Sends non-QUIC datagrams of the shared socket to `tx`.
    #[must_use]
    pub fn non_quic(mut self, tx: mpsc::Sender<NonQuicDatagram>) -> SessionConfig {
        self.non_quic = Some(tx);
        self
    }
}

/// Why a session operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The recipient is not online (or belongs to another application).
    #[error("peer offline: {0}")]
    PeerOffline(String),
    /// Not allowed (e.g. a revoked application).
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// The payload (or a list) exceeds the gateway's limit.
    #[error("too large: {message} (limit {limit})")]
    TooLarge {
        /// What the gateway said.
        message: String,
        /// The limit in force.
        limit: u64,
    },
    /// Too many requests; retry after the delay.
    #[error("rate limited: {message}")]
    RateLimited {
        /// What the gateway said.
        message: String,
        /// Wait at least this long.
        retry_after: Duration,
    },
    /// The recipient's queue is full; retry after the delay.
    #[error("queue full: {message}")]
    QueueFull {
        /// What the gateway said.
        message: String,
        /// Wait at least this long.
        retry_after: Duration,
    },
    /// Login refused: bad signature, wrong app credential, unknown application…
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The session or challenge expired.
    #[error("expired: {0}")]
    Expired(String),
    /// The request was malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The network is temporarily unavailable; retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No gateway could be reached.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The session is closed (by [`Session::close`], a kick, or a fatal error).
    #[error("session closed: {0}")]
    Closed(String),
    /// Another error reported by the network.
    #[error("{code:?}: {message}")]
    Other {
        /// The protocol error code.
        code: ErrorCode,
        /// What the network said.
        message: String,
    },
}

impl SessionError {
    pub(crate) fn from_detail(detail: &quickp2p_proto::v1::ErrorDetail) -> SessionError {
        let message = detail.message.clone();
        let retry_after = Duration::from_millis(u64::from(detail.retry_after_ms));
        match detail.code() {
            ErrorCode::PeerOffline => SessionError::PeerOffline(message),
            ErrorCode::NotPermitted => SessionError::NotPermitted(message),
            ErrorCode::TooLarge => SessionError::TooLarge {
                message,
                limit: detail.limit,
            },
            ErrorCode::RateLimited => SessionError::RateLimited {
                message,
                retry_after,
            },
            ErrorCode::QueueFull => SessionError::QueueFull {
                message,
                retry_after,
            },
            ErrorCode::Unauthenticated => SessionError::Unauthenticated(message),
            ErrorCode::Expired => SessionError::Expired(message),
            ErrorCode::Invalid => SessionError::Invalid(message),
            ErrorCode::Unavailable => SessionError::Unavailable(message),
            code => SessionError::Other { code, message },
        }
    }

    /// Whether the error ends the session for good (no reconnect helps).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            SessionError::Unauthenticated(_)
                | SessionError::NotPermitted(_)
                | SessionError::Closed(_)
        )
    }
}

/// The network's acknowledgement of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageReceipt {
    /// The network's id of the message (16 bytes).
    pub message_id: Bytes,
    /// When the recipient's gateway accepted it, network time (Unix ms).
    pub accepted_at_unix_ms: u64,
}

/// An instant message from another peer of the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The sender (authenticated by its login).
    pub sender: PeerId,
    /// The payload as sent.
    pub payload: Bytes,
    /// The network's id of the message.
    pub message_id: Bytes,
    /// The sender's client message id.
    pub client_message_id: Bytes,
    /// When the recipient's gateway accepted it, Unix ms.
    pub accepted_at_unix_ms: u64,
}

/// A watched peer's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceUpdate {
    /// The peer.
    pub peer: PeerId,
    /// Whether it is online.
    pub presence: Presence,
    /// Since when, network time (Unix ms); 0 if unknown.
    pub since_unix_ms: u64,
}

/// Where the session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Logged in through this gateway.
    Connected {
        /// The gateway's address.
        gateway: SocketAddr,
        /// Its replica id.
        gateway_id: String,
        /// Whether the login resumed an earlier session.
        resumed: bool,
    },
    /// Looking for a gateway.
    Reconnecting {
        /// Why the last connection ended.
        reason: String,
    },
    /// Closed for good.
    Closed {
        /// Why.
        reason: String,
    },
}

/// Incoming messages, in arrival order.
#[derive(Debug)]
pub struct Messages {
    rx: mpsc::Receiver<IncomingMessage>,
}

impl Messages {
    /// The next message; `None` once the session is closed.
    pub async fn recv(&mut self) -> Option<IncomingMessage> {
        self.rx.recv().await
    }
}

impl futures::Stream for Messages {
    type Item = IncomingMessage;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<IncomingMessage>> {
        self.rx.poll_recv(cx)
    }
}

/// Requests from the handle to the driver task.
#[derive(Debug)]
pub(crate) enum Command {
    Send {
        recipient: PeerId,
        payload: Bytes,
        reply: oneshot::Sender<Result<MessageReceipt, SessionError>>,
    },
    Subscribe {
        peers: Vec<PeerId>,
        reply: oneshot::Sender<Result<Vec<PresenceUpdate>, SessionError>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
    /// A request answered by one response (handshake signalling): sent as is, answered with
    /// the response's result (an error result becomes the error).
    Call {
        request: quickp2p_proto::v1::peer_request::Request,
        reply: handshake::CallReply,
    },
}

/// The QUIC client configuration the session uses for `trust` (TLS 1.3, ALPN `quickp2p/1`, ring
/// provider, the given keep-alive and idle timeout), for tools that speak the peer protocol
/// themselves.
pub fn quic_client_config(
    trust: &GatewayTrust,
    keep_alive: Duration,
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, String> {
    tls::client_config(trust, keep_alive, idle_timeout)
}

/// Connects peers.
#[derive(Debug)]
pub struct Peer;

impl Peer {
    /// Connects to the first gateway of `config.gateways` that answers and logs in. Fails with
    /// [`SessionError::Unauthenticated`] / [`SessionError::NotPermitted`] when the network
    /// refuses the credentials, or [`SessionError::Connect`] when no gateway answers.
    pub async fn connect(config: SessionConfig) -> Result<Session, SessionError> {
        driver::start(config).await
    }
}

/// A logged-in session; cheap to clone. Dropping every clone closes it.
#[derive(Debug, Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

#[derive(Debug)]
struct SessionInner {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<ConnectionState>,
    messages: Mutex<Option<mpsc::Receiver<IncomingMessage>>>,
    presence: broadcast::Sender<PresenceUpdate>,
    socket: Arc<SharedSocket>,
    watched: std::sync::Mutex<HashSet<PeerId>>,
    /// Handshake events pushed by the gateway.
    handshake: broadcast::Sender<HandshakeEvent>,
    /// Observed address and clock estimate, kept up to date by the driver.
    network: Arc<handshake::NetworkView>,
    /// The key pair the session logged in with.
    identity: Identity,
}

impl Session {
    /// This peer's id.
    pub fn peer_id(&self) -> &PeerId {
        &self.inner.peer_id
    }

    /// The key pair the session logged in with (its public key is the peer id).
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// Sends an instant message; resolves when the recipient's gateway accepted it.
    pub async fn send_message(
        &self,
        recipient: &PeerId,
        payload: impl Into<Bytes>,
    ) -> Result<MessageReceipt, SessionError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Send {
            recipient: recipient.clone(),
            payload: payload.into(),
            reply,
        })
        .await?;
        rx.await
            .map_err(|_| SessionError::Closed("the session ended".into()))?
    }

    /// The incoming messages; `None` after the first call (one consumer).
    pub fn messages(&self) -> Option<Messages> {
        self.inner
            .messages
            .try_lock()
            .ok()
            .and_then(|mut m| m.take())
            .map(|rx| Messages { rx })
    }

    /// Watches peers' presence; returns their current state. Changes arrive on
    /// [`Session::presence_events`]. Subscriptions survive reconnects.
    pub async fn subscribe_presence(
        &self,
        peers: &[PeerId],
    ) -> Result<Vec<PresenceUpdate>, SessionError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Subscribe {
            peers: peers.to_vec(),
            reply,
        })
        .await?;
        let states = rx
            .await
            .map_err(|_| SessionError::Closed("the session ended".into()))??;
        if let Ok(mut watched) = self.inner.watched.lock() {
            watched.extend(peers.iter().cloned());
        }
        Ok(states)
    }

    /// Presence changes of watched peers (a lagging receiver loses the oldest).
    pub fn presence_events(&self) -> broadcast::Receiver<PresenceUpdate> {
        self.inner.presence.subscribe()
    }

    /// The connection state, as it changes.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// The gateway the session is on now, if connected.
    pub fn gateway(&self) -> Option<SocketAddr> {
        match &*self.inner.state.borrow() {
            ConnectionState::Connected { gateway, .. } => Some(*gateway),
            _ => None,
        }
    }

    /// The one UDP socket (send STUN or other non-QUIC datagrams on it).
    pub fn socket(&self) -> &Arc<SharedSocket> {
        &self.inner.socket
    }

    /// Logs out and closes the connection.
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.command(Command::Close { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn command(&self, command: Command) -> Result<(), SessionError> {
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| SessionError::Closed(self.closed_reason()))
    }

    fn closed_reason(&self) -> String {
        match &*self.inner.state.borrow() {
            ConnectionState::Closed { reason } => reason.clone(),
            _ => "the session ended".into(),
        }
    }
}
