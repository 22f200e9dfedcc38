//! The session's driver task: owns the QUIC endpoint and the current gateway connection.
//!
//! Messages in: [`Command`]s from [`Session`] handles. Out: replies on their oneshot channels,
//! incoming messages on the inbox channel, presence updates on the broadcast channel, and the
//! [`ConnectionState`] watch. Sends are kept until the gateway answers them; when the connection
//! is lost they are replayed on the next gateway with the same client message id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quickp2p_proto::frame::{FrameReader, write_frame};
use quickp2p_proto::v1::{
    self, KickReason, gateway_frame::Frame, peer_event::Event, peer_request::Request,
    peer_response::Result as Res,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::handshake::{CallReply, NetworkView, unix_now_us};
use super::{
    Command, ConnectionState, HandshakeEvent, IncomingMessage, MessageReceipt, PresenceUpdate,
    Session, SessionConfig, SessionError, SessionInner, SharedSocket, tls,
};

/// The server name sent in the TLS handshake (certificates are pinned, not name-checked).
const SERVER_NAME: &str = "quickp2p-gateway";

struct Link {
    conn: quinn::Connection,
    send: quinn::SendStream,
    reader: FrameReader<quinn::RecvStream>,
    heartbeat: Duration,
}

/// Where the answer to a presence subscription goes.
type SubscribeReply = oneshot::Sender<Result<Vec<PresenceUpdate>, SessionError>>;

struct OutgoingSend {
    recipient: v1::PeerId,
    payload: Bytes,
    client_message_id: Bytes,
    reply: oneshot::Sender<Result<MessageReceipt, SessionError>>,
}

enum Pending {
    Send(u64),
    Subscribe(Vec<v1::PeerId>, SubscribeReply),
    Resubscribe,
    Heartbeat,
    Logout,
    /// A [`Command::Call`]: the answer goes to the caller.
    Call(CallReply),
    /// A SyncClock sample.
    Clock,
}

/// Clock samples taken right after each login.
const CLOCK_SAMPLES_AT_LOGIN: u32 = 5;
/// Time between the samples of a burst.
const CLOCK_BURST_SPACING: Duration = Duration::from_millis(50);
/// Time between samples outside bursts.
const CLOCK_RESAMPLE: Duration = Duration::from_secs(30);
/// Most samples taken for one `ClockSyncRequested`.
const CLOCK_SAMPLES_MAX: u32 = 8;

/// Why serving a connection ended.
enum Exit {
    Lost(String),
    Closed(String),
}

struct Driver {
    config: SessionConfig,
    endpoint: quinn::Endpoint,
    commands: mpsc::Receiver<Command>,
    state: watch::Sender<ConnectionState>,
    inbox: mpsc::Sender<IncomingMessage>,
    presence: broadcast::Sender<PresenceUpdate>,
    next_id: u64,
    next_seq: u64,
    token: Bytes,
    current: usize,
    unacked: BTreeMap<u64, OutgoingSend>,
    pending: HashMap<u64, Pending>,
    subscriptions: HashSet<v1::PeerId>,
    waiting_subscribes: Vec<(Vec<v1::PeerId>, SubscribeReply)>,
    /// Recently received (sender, client message id): a message replayed by its sender after a
    /// gateway failure may arrive twice; the repeat is dropped.
    recent: RecentIds,
    /// Handshake events for the handles.
    handshake: broadcast::Sender<HandshakeEvent>,
    /// Observed address and clock estimate, shared with the handles.
    network: Arc<NetworkView>,
    /// Signalling requests made while disconnected, sent after the next login.
    waiting_calls: Vec<(Request, CallReply)>,
    /// Clock samples still to take in the current burst.
    clock_burst: u32,
    /// When the next clock sample is due.
    next_clock: tokio::time::Instant,
}

/// How many received message ids are remembered for dropping repeats.
const RECENT_IDS: usize = 4096;

/// A bounded set of recently seen message ids, oldest forgotten first.
#[derive(Default)]
struct RecentIds {
    order: std::collections::VecDeque<(Bytes, Bytes)>,
    set: HashSet<(Bytes, Bytes)>,
}

impl RecentIds {
    /// Records the id; false if it was seen already.
    fn insert(&mut self, id: (Bytes, Bytes)) -> bool {
        if !self.set.insert(id.clone()) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > RECENT_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

fn random_id() -> Bytes {
    Bytes::copy_from_slice(&rand::random::<[u8; 16]>())
}

fn to_update(state: &v1::PresenceState) -> Option<PresenceUpdate> {
    Some(PresenceUpdate {
        peer: state.peer.clone()?,
        presence: state.presence(),
        since_unix_ms: state.since_unix_ms,
    })
}

pub(super) async fn start(config: SessionConfig) -> Result<Session, SessionError> {
    if config.gateways.is_empty() {
        return Err(SessionError::Connect("no gateway given".into()));
    }
    let socket = SharedSocket::bind(config.bind, config.non_quic.clone())
        .map_err(|e| SessionError::Connect(format!("cannot bind {}: {e}", config.bind)))?;
    let mut endpoint_config = quinn::EndpointConfig::default();
    // the socket is demultiplexed by first byte (RFC 9443): never grease the QUIC bit
    endpoint_config.grease_quic_bit(false);
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config,
        None,
        Arc::clone(&socket) as Arc<dyn quinn::AsyncUdpSocket>,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| SessionError::Connect(format!("QUIC endpoint: {e}")))?;
    endpoint.set_default_client_config(
        tls::client_config(&config.trust, config.keep_alive, config.idle_timeout)
            .map_err(SessionError::Connect)?,
    );
    let (commands_tx, commands) = mpsc::channel(256);
    let (state, state_rx) = watch::channel(ConnectionState::Reconnecting {
        reason: "connecting".into(),
    });
    let (inbox, inbox_rx) = mpsc::channel(config.inbox_capacity.max(1));
    let (presence, _) = broadcast::channel(1024);
    let (handshake, _) = broadcast::channel(256);
    let network = Arc::new(NetworkView::default());
    let peer_id = config.identity.peer_id();
    let mut driver = Driver {
        config,
        endpoint,
        commands,
        state,
        inbox,
        presence: presence.clone(),
        next_id: 1,
        next_seq: 1,
        token: Bytes::new(),
        current: 0,
        unacked: BTreeMap::new(),
        pending: HashMap::new(),
        subscriptions: HashSet::new(),
        waiting_subscribes: Vec::new(),
        recent: RecentIds::default(),
        handshake: handshake.clone(),
        network: Arc::clone(&network),
        waiting_calls: Vec::new(),
        clock_burst: 0,
        next_clock: tokio::time::Instant::now(),
    };
    // the first connection: every gateway once, the last error wins
    let mut last = SessionError::Connect("no gateway answered".into());
    let mut link = None;
    for i in 0..driver.config.gateways.len() {
        match driver.login(i).await {
            Ok(l) => {
                link = Some(l);
                break;
            }
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => last = e,
        }
    }
    let link = link.ok_or(last)?;
    let identity = driver.config.identity.clone();
    tokio::spawn(driver.run(link));
    Ok(Session {
        inner: Arc::new(SessionInner {
            peer_id,
            commands: commands_tx,
            state: state_rx,
            messages: tokio::sync::Mutex::new(Some(inbox_rx)),
            presence,
            socket,
            watched: std::sync::Mutex::new(HashSet::new()),
            handshake,
            network,
            identity,
        }),
    })
}

impl Driver {
    fn request(&mut self, request: Request) -> (u64, v1::PeerRequest) {
        let id = self.next_id;
        self.next_id += 1;
        (
            id,
            v1::PeerRequest {
                request_id: id,
                request: Some(request),
            },
        )
    }

    /// Connects to gateway `index` and logs in (resuming the session when there is a token).
    async fn login(&mut self, index: usize) -> Result<Link, SessionError> {
        let timeout = self.config.connect_timeout;
        match tokio::time::timeout(timeout, self.login_inner(index)).await {
            Ok(result) => result,
            Err(_) => Err(SessionError::Connect(format!(
                "gateway {} did not log us in within {timeout:?}",
                self.config.gateways[index]
            ))),
        }
    }

    async fn login_inner(&mut self, index: usize) -> Result<Link, SessionError> {
        let addr = self.config.gateways[index];
        let connect = |e: &dyn std::fmt::Display| SessionError::Connect(format!("{addr}: {e}"));
        let conn = self
            .endpoint
            .connect(addr, SERVER_NAME)
            .map_err(|e| connect(&e))?
            .await
            .map_err(|e| connect(&e))?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| connect(&e))?;
        let mut reader = FrameReader::new(recv);
        let io = |e: &dyn std::fmt::Display| SessionError::Unavailable(format!("{addr}: {e}"));
        let (hello_id, hello) = self.request(Request::Hello(v1::Hello {
            protocol_version: quickp2p_proto::PROTOCOL_VERSION,
            min_protocol_version: quickp2p_proto::PROTOCOL_VERSION,
            capabilities: Vec::new(),
            sdk: concat!("quickp2p-rust/", env!("CARGO_PKG_VERSION")).to_owned(),
        }));
        let app_id = v1::AppId::new(self.config.app.app_id.clone());
        let (challenge_id, get) = self.request(Request::GetChallenge(v1::GetChallenge {
            app_id: Some(app_id.clone()),
        }));
        write_frame(&mut send, &hello).await.map_err(|e| io(&e))?;
        write_frame(&mut send, &get).await.map_err(|e| io(&e))?;
        let welcome = match read_response(&mut reader, hello_id).await? {
            Res::Welcome(w) => w,
            _ => {
                return Err(SessionError::Unavailable(
                    "unexpected answer to Hello".into(),
                ));
            }
        };
        let challenge = match read_response(&mut reader, challenge_id).await? {
            Res::Challenge(c) => c.challenge,
            _ => {
                return Err(SessionError::Unavailable(
                    "unexpected answer to GetChallenge".into(),
                ));
            }
        };
        let identity = &self.config.identity;
        let public_key = identity.public_key();
        let transcript = quickp2p_proto::login::login_transcript(
            &challenge,
            &self.config.app.app_id,
            &welcome.gateway_id,
            &public_key,
        )
        .map_err(|e| SessionError::Invalid(e.to_string()))?;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.config.app.secret.as_bytes());
        let proof = ring::hmac::sign(&key, &transcript);
        let (login_id, login) = self.request(Request::Login(v1::Login {
            app_id: Some(app_id),
            challenge,
            public_key: Bytes::copy_from_slice(&public_key),
            signature: Bytes::copy_from_slice(&identity.sign(&transcript)),
            app_proof: Bytes::copy_from_slice(proof.as_ref()),
            app_secret_id: self.config.app.secret_id.clone(),
            previous_session_token: self.token.clone(),
        }));
        write_frame(&mut send, &login).await.map_err(|e| io(&e))?;
        let logged = match read_response(&mut reader, login_id).await? {
            Res::LoggedIn(l) => l,
            _ => {
                return Err(SessionError::Unavailable(
                    "unexpected answer to Login".into(),
                ));
            }
        };
        self.token = logged.session_token;
        self.current = index;
        self.network.set_observed(welcome.observed_address.as_ref());
        self.clock_burst = CLOCK_SAMPLES_AT_LOGIN;
        self.next_clock = tokio::time::Instant::now();
        let _ = self.state.send(ConnectionState::Connected {
            gateway: addr,
            gateway_id: welcome.gateway_id,
            resumed: logged.resumed,
        });
        tracing::debug!(gateway = %addr, resumed = logged.resumed, "logged in");
        Ok(Link {
            conn,
            send,
            reader,
            heartbeat: Duration::from_millis(u64::from(logged.heartbeat_interval_ms.max(100))),
        })
    }

    async fn run(mut self, mut link: Link) {
        loop {
            let exit = self.serve(&mut link).await;
            let reason = match exit {
                Exit::Closed(reason) => {
                    link.conn.close(0u32.into(), b"closed");
                    self.finish(reason);
                    return;
                }
                Exit::Lost(reason) => reason,
            };
            link.conn.close(0u32.into(), b"reconnecting");
            tracing::info!(%reason, "gateway connection lost; reconnecting");
            let _ = self.state.send(ConnectionState::Reconnecting {
                reason: reason.clone(),
            });
            // requests in flight on the lost connection: sends stay in `unacked` (replayed),
            // subscribes are asked again
            for (_, pending) in self.pending.drain() {
                match pending {
                    Pending::Subscribe(peers, reply) => {
                        self.waiting_subscribes.push((peers, reply))
                    }
                    Pending::Call(reply) => {
                        let _ = reply.send(Err(SessionError::Unavailable(format!(
                            "the gateway connection was lost before the answer ({reason})"
                        ))));
                    }
                    _ => {}
                }
            }
            match self.reconnect().await {
                Ok(l) => link = l,
                Err(reason) => {
                    self.finish(reason);
                    return;
                }
            }
            if let Err(reason) = self.resume(&mut link).await {
                tracing::debug!(%reason, "resume failed");
            }
        }
    }

    /// Tries the other gateways, then all, with exponential backoff; commands keep queueing.
    async fn reconnect(&mut self) -> Result<Link, String> {
        let n = self.config.gateways.len();
        let mut delay = self.config.initial_backoff;
        let mut index = (self.current + 1) % n;
        loop {
            match self.login(index).await {
                Ok(link) => return Ok(link),
                Err(e) if e.is_fatal() => return Err(e.to_string()),
                Err(e) => tracing::debug!(error = %e, "reconnect attempt failed"),
            }
            index = (index + 1) % n;
            let jitter = 0.5 + rand::random::<f64>() / 2.0;
            let sleep = tokio::time::sleep(delay.mul_f64(jitter));
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    command = self.commands.recv() => match command {
                        None => return Err("every session handle was dropped".into()),
                        Some(Command::Close { reply }) => {
                            let _ = reply.send(());
                            return Err("closed by the application".into());
                        }
                        Some(command) => self.queue(command),
                    }
                }
            }
            delay = (delay * 2).min(self.config.max_backoff);
        }
    }

    /// Queues a command while disconnected.
    fn queue(&mut self, command: Command) {
        match command {
            Command::Send {
                recipient,
                payload,
                reply,
            } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.unacked.insert(
                    seq,
                    OutgoingSend {
                        recipient,
                        payload,
                        client_message_id: random_id(),
                        reply,
                    },
                );
            }
            Command::Subscribe { peers, reply } => self.waiting_subscribes.push((peers, reply)),
            Command::Call { request, reply } => self.waiting_calls.push((request, reply)),
            Command::Close { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// After a reconnect: watch again, ask queued subscribes, replay unanswered sends.
    async fn resume(&mut self, link: &mut Link) -> Result<(), String> {
        if !self.subscriptions.is_empty() {
            let peers: Vec<v1::PeerId> = self.subscriptions.iter().cloned().collect();
            for chunk in peers.chunks(256) {
                let (id, req) = self.request(Request::SubscribePresence(v1::SubscribePresence {
                    peers: chunk.to_vec(),
                }));
                write_frame(&mut link.send, &req)
                    .await
                    .map_err(|e| e.to_string())?;
                self.pending.insert(id, Pending::Resubscribe);
            }
        }
        for (peers, reply) in std::mem::take(&mut self.waiting_subscribes) {
            let (id, req) = self.request(Request::SubscribePresence(v1::SubscribePresence {
                peers: peers.clone(),
            }));
            write_frame(&mut link.send, &req)
                .await
                .map_err(|e| e.to_string())?;
            self.pending.insert(id, Pending::Subscribe(peers, reply));
        }
        for (request, reply) in std::mem::take(&mut self.waiting_calls) {
            self.write_call(link, request, reply).await?;
        }
        let seqs: Vec<u64> = self.unacked.keys().copied().collect();
        for seq in seqs {
            self.write_send(link, seq).await?;
        }
        Ok(())
    }

    /// Writes a [`Command::Call`] request; a frame too large is answered at once.
    async fn write_call(
        &mut self,
        link: &mut Link,
        request: Request,
        reply: CallReply,
    ) -> Result<(), String> {
        let (id, req) = self.request(request);
        match write_frame(&mut link.send, &req).await {
            Ok(()) => {
                self.pending.insert(id, Pending::Call(reply));
                Ok(())
            }
            Err(quickp2p_proto::frame::WriteFrameError::Frame(e)) => {
                let _ = reply.send(Err(SessionError::TooLarge {
                    message: e.to_string(),
                    limit: quickp2p_proto::frame::MAX_FRAME_LEN as u64,
                }));
                Ok(())
            }
            Err(e) => {
                let _ = reply.send(Err(SessionError::Unavailable(format!(
                    "writing to the gateway: {e}"
                ))));
                Err(e.to_string())
            }
        }
    }

    /// Writes one SyncClock request and schedules the next sample.
    async fn write_clock_sample(&mut self, link: &mut Link) -> Result<(), String> {
        self.clock_burst = self.clock_burst.saturating_sub(1);
        self.next_clock = tokio::time::Instant::now()
            + if self.clock_burst > 0 {
                CLOCK_BURST_SPACING
            } else {
                CLOCK_RESAMPLE
            };
        let (id, req) = self.request(Request::SyncClock(v1::SyncClock {
            client_sent_us: unix_now_us(),
        }));
        write_frame(&mut link.send, &req)
            .await
            .map_err(|e| e.to_string())?;
        self.pending.insert(id, Pending::Clock);
        Ok(())
    }

    async fn write_send(&mut self, link: &mut Link, seq: u64) -> Result<(), String> {
        let Some(out) = self.unacked.get(&seq) else {
            return Ok(());
        };
        let request = Request::SendMessage(v1::SendMessage {
            recipient: Some(out.recipient.clone()),
            payload: out.payload.clone(),
            client_message_id: out.client_message_id.clone(),
        });
        let (id, req) = self.request(request);
        match write_frame(&mut link.send, &req).await {
            Ok(()) => {
                self.pending.insert(id, Pending::Send(seq));
                Ok(())
            }
            Err(quickp2p_proto::frame::WriteFrameError::Frame(e)) => {
                if let Some(out) = self.unacked.remove(&seq) {
                    let _ = out.reply.send(Err(SessionError::TooLarge {
                        message: e.to_string(),
                        limit: quickp2p_proto::frame::MAX_FRAME_LEN as u64,
                    }));
                }
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    async fn serve(&mut self, link: &mut Link) -> Exit {
        let mut heartbeat = tokio::time::interval(link.heartbeat);
        heartbeat.tick().await;
        // one timer for the clock samples, moved when `next_clock` changes: a fresh `sleep_until`
        // in the select would register and cancel a timer on every frame and command
        let clock = tokio::time::sleep_until(self.next_clock);
        tokio::pin!(clock);
        loop {
            if clock.deadline() != self.next_clock {
                clock.as_mut().reset(self.next_clock);
            }
            tokio::select! {
                command = self.commands.recv() => {
                    let Some(command) = command else {
                        self.logout(link).await;
                        return Exit::Closed("every session handle was dropped".into());
                    };
                    match command {
                        Command::Close { reply } => {
                            self.logout(link).await;
                            let _ = reply.send(());
                            return Exit::Closed("closed by the application".into());
                        }
                        Command::Send { .. } => {
                            let seq = self.next_seq;
                            self.queue(command);
                            if let Err(e) = self.write_send(link, seq).await {
                                return Exit::Lost(e);
                            }
                        }
                        Command::Subscribe { peers, reply } => {
                            let (id, req) = self.request(Request::SubscribePresence(v1::SubscribePresence { peers: peers.clone() }));
                            if let Err(e) = write_frame(&mut link.send, &req).await {
                                self.waiting_subscribes.push((peers, reply));
                                return Exit::Lost(e.to_string());
                            }
                            self.pending.insert(id, Pending::Subscribe(peers, reply));
                        }
                        Command::Call { request, reply } => {
                            if let Err(e) = self.write_call(link, request, reply).await {
                                return Exit::Lost(e);
                            }
                        }
                    }
                }
                () = &mut clock => {
                    if let Err(e) = self.write_clock_sample(link).await {
                        return Exit::Lost(e);
                    }
                }
                frame = link.reader.read_frame::<v1::GatewayFrame>() => match frame {
                    Ok(Some(frame)) => {
                        if let Some(exit) = self.on_frame(frame).await {
                            return exit;
                        }
                    }
                    Ok(None) => return Exit::Lost("the gateway closed the control stream".into()),
                    Err(e) => return Exit::Lost(match link.conn.close_reason() {
                        Some(reason) => reason.to_string(),
                        None => e.to_string(),
                    }),
                },
                _ = heartbeat.tick() => {
                    let clock = self.network.clock_estimate();
                    let (id, req) = self.request(Request::Heartbeat(v1::Heartbeat { clock }));
                    if let Err(e) = write_frame(&mut link.send, &req).await {
                        return Exit::Lost(e.to_string());
                    }
                    self.pending.insert(id, Pending::Heartbeat);
                }
            }
        }
    }

    async fn logout(&mut self, link: &mut Link) {
        let (id, req) = self.request(Request::Logout(v1::Logout {}));
        if write_frame(&mut link.send, &req).await.is_ok() {
            self.pending.insert(id, Pending::Logout);
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Ok(Some(frame)) = link.reader.read_frame::<v1::GatewayFrame>().await {
                    if let Some(Frame::Response(r)) = &frame.frame
                        && r.request_id == id
                    {
                        break;
                    }
                }
            })
            .await;
        }
    }

    async fn on_frame(&mut self, frame: v1::GatewayFrame) -> Option<Exit> {
        let received_at = std::time::Instant::now();
        let server_time_us = frame.server_time_us;
        match frame.frame? {
            Frame::Response(response) => {
                let pending = self.pending.remove(&response.request_id)?;
                let Some(result) = response.result else {
                    if let Pending::Call(reply) = pending {
                        let _ = reply.send(Err(SessionError::Unavailable("empty answer".into())));
                    }
                    return None;
                };
                self.on_response(pending, result)
            }
            Frame::Event(event) => {
                self.on_event(event.event?, server_time_us, received_at)
                    .await
            }
        }
    }

    fn on_response(&mut self, pending: Pending, result: Res) -> Option<Exit> {
        match (pending, result) {
            (Pending::Call(reply), Res::Error(e)) => {
                let _ = reply.send(Err(SessionError::from_detail(&e)));
            }
            (Pending::Call(reply), result) => {
                let _ = reply.send(Ok(result));
            }
            (Pending::Clock, Res::ClockSample(sample)) => {
                let t3 = unix_now_us();
                if let Ok(mut clock) = self.network.clock.lock() {
                    clock.add(
                        sample.client_sent_us,
                        sample.server_received_us,
                        sample.server_sent_us,
                        t3,
                    );
                }
            }
            (Pending::Heartbeat, Res::Heartbeat(ack)) => {
                self.network.set_observed(ack.observed_address.as_ref());
            }
            (Pending::Send(seq), Res::MessageAccepted(a)) => {
                if let Some(out) = self.unacked.remove(&seq) {
                    let _ = out.reply.send(Ok(MessageReceipt {
                        message_id: a.message_id,
                        accepted_at_unix_ms: a.accepted_at_unix_ms,
                    }));
                }
            }
            (Pending::Send(seq), Res::Error(e)) => {
                if let Some(out) = self.unacked.remove(&seq) {
                    let _ = out.reply.send(Err(SessionError::from_detail(&e)));
                }
            }
            (Pending::Subscribe(peers, reply), Res::Presence(p)) => {
                self.subscriptions.extend(peers);
                let _ = reply.send(Ok(p.states.iter().filter_map(to_update).collect()));
            }
            (Pending::Subscribe(_, reply), Res::Error(e)) => {
                let _ = reply.send(Err(SessionError::from_detail(&e)));
            }
            (Pending::Resubscribe, Res::Presence(p)) => {
                for update in p.states.iter().filter_map(to_update) {
                    let _ = self.presence.send(update);
                }
            }
            (Pending::Heartbeat, Res::Error(e))
                if matches!(e.code(), v1::ErrorCode::Expired | v1::ErrorCode::NotFound) =>
            {
                self.token = Bytes::new();
                return Some(Exit::Lost(format!("session expired: {}", e.message)));
            }
            (Pending::Send(seq), _) => {
                if let Some(out) = self.unacked.remove(&seq) {
                    let _ = out.reply.send(Err(SessionError::Unavailable(
                        "unexpected answer to SendMessage".into(),
                    )));
                }
            }
            (Pending::Subscribe(_, reply), _) => {
                let _ = reply.send(Err(SessionError::Unavailable(
                    "unexpected answer to SubscribePresence".into(),
                )));
            }
            _ => {}
        }
        None
    }

    async fn on_event(
        &mut self,
        event: Event,
        server_time_us: u64,
        received_at: std::time::Instant,
    ) -> Option<Exit> {
        match event {
            Event::HandshakeOffer(offer) => {
                let _ = self.handshake.send(HandshakeEvent::Offer(offer));
            }
            Event::HandshakeInstruction(instruction) => {
                let _ = self.handshake.send(HandshakeEvent::Instruction {
                    instruction,
                    server_time_us,
                    received_at,
                });
            }
            Event::RemoteCandidates(candidates) => {
                let _ = self
                    .handshake
                    .send(HandshakeEvent::RemoteCandidates(candidates));
            }
            Event::HandshakeClosed(closed) => {
                let _ = self.handshake.send(HandshakeEvent::Closed(closed));
            }
            Event::ClockSyncRequested(request) => {
                self.clock_burst = request.samples.clamp(1, CLOCK_SAMPLES_MAX);
                self.next_clock = tokio::time::Instant::now();
            }
            Event::Message(m) => {
                let sender = m.sender.as_ref()?;
                if !m.client_message_id.is_empty()
                    && !self.recent.insert((
                        Bytes::copy_from_slice(&sender.value),
                        Bytes::copy_from_slice(&m.client_message_id),
                    ))
                {
                    tracing::debug!("repeated message dropped");
                    return None;
                }
                let message = IncomingMessage {
                    sender: m.sender?,
                    payload: m.payload,
                    message_id: m.message_id,
                    client_message_id: m.client_message_id,
                    accepted_at_unix_ms: m.accepted_at_unix_ms,
                };
                // a full inbox holds the gateway back (its queue then refuses with QUEUE_FULL)
                let _ = self.inbox.send(message).await;
            }
            Event::PresenceChanged(p) => {
                if let Some(update) = p.state.as_ref().and_then(to_update) {
                    let _ = self.presence.send(update);
                }
            }
            Event::Kicked(k) => {
                let reason = format!("kicked ({:?}): {}", k.reason(), k.message);
                return Some(match k.reason() {
                    KickReason::GatewayShutdown => Exit::Lost(reason),
                    KickReason::SessionExpired => {
                        self.token = Bytes::new();
                        Exit::Lost(reason)
                    }
                    _ => Exit::Closed(reason),
                });
            }
            _ => {}
        }
        None
    }

    /// Ends the session: every waiting caller gets `Closed`.
    fn finish(&mut self, reason: String) {
        for (_, out) in std::mem::take(&mut self.unacked) {
            let _ = out.reply.send(Err(SessionError::Closed(reason.clone())));
        }
        for (_, reply) in std::mem::take(&mut self.waiting_subscribes) {
            let _ = reply.send(Err(SessionError::Closed(reason.clone())));
        }
        for (_, reply) in std::mem::take(&mut self.waiting_calls) {
            let _ = reply.send(Err(SessionError::Closed(reason.clone())));
        }
        for (_, pending) in self.pending.drain() {
            match pending {
                Pending::Subscribe(_, reply) => {
                    let _ = reply.send(Err(SessionError::Closed(reason.clone())));
                }
                Pending::Call(reply) => {
                    let _ = reply.send(Err(SessionError::Closed(reason.clone())));
                }
                _ => {}
            }
        }
        self.commands.close();
        let _ = self.state.send(ConnectionState::Closed { reason });
        self.endpoint.close(0u32.into(), b"session closed");
    }
}

/// Reads frames until the response to `id`; events before it are ignored (none come before
/// login).
async fn read_response(
    reader: &mut FrameReader<quinn::RecvStream>,
    id: u64,
) -> Result<Res, SessionError> {
    loop {
        let frame = reader
            .read_frame::<v1::GatewayFrame>()
            .await
            .map_err(|e| SessionError::Unavailable(format!("reading the gateway's answer: {e}")))?
            .ok_or_else(|| SessionError::Unavailable("the gateway closed the stream".into()))?;
        if let Some(Frame::Response(r)) = frame.frame
            && (r.request_id == id || r.request_id == 0)
        {
            match r.result {
                Some(Res::Error(e)) => return Err(SessionError::from_detail(&e)),
                Some(result) => return Ok(result),
                None => return Err(SessionError::Unavailable("empty answer".into())),
            }
        }
    }
}
