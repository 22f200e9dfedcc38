//! One peer connection: the QUIC handshake, the control stream, login, and the requests of a
//! logged-in session.
//!
//! One task per connection reads `PeerRequest` frames and writes `GatewayFrame` frames. Requests
//! that wait on other services (heartbeat, send, subscribe, lookup) run in their own tasks and
//! answer through the connection's outbound queue, so a slow delivery never stalls the stream;
//! the queue also carries events pushed from elsewhere ([`Registry::deliver`]). Flow:
//! `Hello` → `GetChallenge` → `Login` (only these and `SyncClock` before login), then anything.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use quickp2p_proto::frame::{DecodeFrameError, FrameReader, ReadFrameError};
use quickp2p_proto::v1::{
    self, ConnectionCloseCode, ErrorCode, ErrorDetail, peer_request::Request,
    peer_response::Result as Res,
};
use tokio::sync::{mpsc, oneshot};

use crate::registry::{Attached, SessionKey, tokio_util_lite::Cancel};
use crate::{Shared, frame_bytes, now_ms, now_us, reject};

/// How long a connection being closed waits for its last frames to be delivered.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

/// A logged-in session on this connection.
#[derive(Debug)]
struct SessionCtx {
    app: String,
    peer: v1::PeerId,
    peer_hex: String,
    key: SessionKey,
    token: Bytes,
    /// Until when sends may be replays of sends made on an earlier connection (the login presented
    /// a previous session token): only then is the dedup record read before delivering.
    replays_until: Option<Instant>,
}

/// How long after a reconnect the dedup record is checked (the SDK replays at once).
const REPLAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// Token bucket of the requests/s limit.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn response(request_id: u64, result: Res) -> Bytes {
    frame_bytes(&v1::GatewayFrame {
        server_time_us: now_us(),
        frame: Some(v1::gateway_frame::Frame::Response(v1::PeerResponse {
            request_id,
            result: Some(result),
        })),
    })
}

fn error(code: ErrorCode, message: impl Into<String>) -> ErrorDetail {
    ErrorDetail::new(code, message)
}

fn unavailable(message: impl Into<String>) -> ErrorDetail {
    ErrorDetail {
        retry_after_ms: 500,
        ..error(ErrorCode::Unavailable, message)
    }
}

/// Why the connection loop ended.
enum End {
    /// The peer closed or the connection failed.
    Gone,
    /// Close with this code and reason.
    Close(ConnectionCloseCode, &'static str),
}

/// State of one connection.
struct Conn {
    shared: Arc<Shared>,
    conn_id: u64,
    conn: quinn::Connection,
    tx: mpsc::Sender<Bytes>,
    close: Cancel,
    welcome: Option<String>,
    challenge: Option<Bytes>,
    session: Option<Arc<SessionCtx>>,
    logged_out: bool,
    bucket: Bucket,
    in_flight: Arc<AtomicU32>,
    watched: Arc<Mutex<HashSet<SessionKey>>>,
}

/// Serves one incoming connection until it ends.
pub(crate) async fn serve(shared: Arc<Shared>, incoming: quinn::Incoming, conn_id: u64) {
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "connection refused");
            return;
        }
    };
    let conn = match tokio::time::timeout(shared.config.login_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => return,
    };
    let (send, recv) =
        match tokio::time::timeout(shared.config.login_timeout, conn.accept_bi()).await {
            Ok(Ok(streams)) => streams,
            _ => {
                conn.close(
                    (ConnectionCloseCode::IdleTimeout as u32).into(),
                    b"no control stream",
                );
                return;
            }
        };
    let limits = shared.config.limits;
    let (tx, rx) = mpsc::channel(limits.queue_depth);
    let mut c = Conn {
        shared: Arc::clone(&shared),
        conn_id,
        conn: conn.clone(),
        tx,
        close: Cancel::default(),
        welcome: None,
        challenge: None,
        session: None,
        logged_out: false,
        bucket: Bucket {
            tokens: f64::from(limits.max_in_flight),
            rate: f64::from(limits.requests_per_second),
            burst: f64::from(limits.max_in_flight),
            at: Instant::now(),
        },
        in_flight: Arc::new(AtomicU32::new(0)),
        watched: Arc::default(),
    };
    let end = Box::pin(c.run(send, recv, rx)).await;
    Box::pin(c.cleanup()).await;
    if let End::Close(code, reason) = end {
        // closing abandons unsent stream data: give the last frames (an error, a Kicked event)
        // a moment to arrive, or the peer a moment to close first
        let _ = tokio::time::timeout(CLOSE_GRACE, conn.closed()).await;
        conn.close((code as u32).into(), reason.as_bytes());
    }
}

impl Conn {
    async fn run(
        &mut self,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
        mut rx: mpsc::Receiver<Bytes>,
    ) -> End {
        let mut reader = FrameReader::new(recv);
        let login_deadline = tokio::time::Instant::now() + self.shared.config.login_timeout;
        let stop = self.shared.stop.clone();
        let close = self.close.clone();
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    let kicked = crate::kicked_frame(v1::KickReason::GatewayShutdown, "gateway shutting down");
                    let _ = send.write_all(&kicked).await;
                    return End::Close(ConnectionCloseCode::GoingAway, "gateway shutting down");
                }
                () = close.cancelled() => {
                    while let Ok(frame) = rx.try_recv() {
                        if send.write_all(&frame).await.is_err() {
                            return End::Gone;
                        }
                    }
                    let _ = send.finish();
                    return End::Close(ConnectionCloseCode::Kicked, "session ended by the network");
                }
                () = tokio::time::sleep_until(login_deadline), if self.session.is_none() => {
                    reject("login_timeout");
                    return End::Close(ConnectionCloseCode::IdleTimeout, "no login in time");
                }
                frame = rx.recv() => {
                    // the sender half lives in `self`, so the queue never ends here
                    if let Some(frame) = frame && send.write_all(&frame).await.is_err() {
                        return End::Gone;
                    }
                }
                read = reader.read_frame::<v1::PeerRequest>() => {
                    let request = match read {
                        Ok(Some(request)) => request,
                        Ok(None) => return End::Gone,
                        Err(ReadFrameError::Frame(DecodeFrameError::Message(e))) => {
                            reject("malformed_frame");
                            let detail = error(ErrorCode::Invalid, format!("undecodable frame: {e}"));
                            if send.write_all(&response(0, Res::Error(detail))).await.is_err() {
                                return End::Gone;
                            }
                            continue;
                        }
                        Err(ReadFrameError::Frame(DecodeFrameError::TooLarge { .. })) => {
                            reject("frame_too_large");
                            return End::Close(ConnectionCloseCode::FrameTooLarge, "frame larger than 65536 bytes");
                        }
                        Err(ReadFrameError::Frame(DecodeFrameError::InvalidLengthPrefix)) => {
                            reject("protocol_violation");
                            return End::Close(ConnectionCloseCode::ProtocolViolation, "invalid frame length prefix");
                        }
                        Err(_) => return End::Gone,
                    };
                    // boxed: the login and checkpoint futures are large, and an idle session
                    // should not carry their space in its task
                    match Box::pin(self.handle(request)).await {
                        Ok(Some(reply)) => {
                            if send.write_all(&reply).await.is_err() {
                                return End::Gone;
                            }
                        }
                        Ok(None) => {}
                        Err((reply, code, reason)) => {
                            if let Some(reply) = reply {
                                let _ = send.write_all(&reply).await;
                            }
                            let _ = send.finish();
                            return End::Close(code, reason);
                        }
                    }
                }
            }
        }
    }

    /// Handles one request: `Ok(Some(frame))` to write now, `Ok(None)` when a task answers later,
    /// `Err` to close the connection (after writing the frame, if any).
    #[allow(clippy::type_complexity)]
    async fn handle(
        &mut self,
        request: v1::PeerRequest,
    ) -> Result<Option<Bytes>, (Option<Bytes>, ConnectionCloseCode, &'static str)> {
        let id = request.request_id;
        let answer = |r: Res| Ok(Some(response(id, r)));
        let Some(body) = request.request else {
            reject("unsupported");
            return answer(Res::Error(error(
                ErrorCode::Unsupported,
                "unknown or missing request kind",
            )));
        };
        if id == 0 {
            reject("invalid");
            return answer(Res::Error(error(
                ErrorCode::Invalid,
                "request_id must not be 0",
            )));
        }
        if !self.bucket.take() {
            reject("rate_limited");
            let limit = self.shared.config.limits.requests_per_second;
            return answer(Res::Error(ErrorDetail {
                retry_after_ms: 1000 / limit.max(1),
                limit: u64::from(limit),
                ..error(
                    ErrorCode::RateLimited,
                    format!("more than {limit} requests per second"),
                )
            }));
        }
        match (&body, self.welcome.is_some(), self.session.is_some()) {
            (Request::Hello(_), false, _) => {}
            (Request::Hello(_), true, _) => {
                reject("protocol_violation");
                return answer(Res::Error(error(
                    ErrorCode::Invalid,
                    "Hello was already sent",
                )));
            }
            (_, false, _) => {
                reject("protocol_violation");
                let reply = response(
                    id,
                    Res::Error(error(ErrorCode::Invalid, "the first frame must be Hello")),
                );
                return Err((
                    Some(reply),
                    ConnectionCloseCode::ProtocolViolation,
                    "no Hello first",
                ));
            }
            (Request::GetChallenge(_) | Request::Login(_) | Request::SyncClock(_), true, _) => {}
            (_, true, false) => {
                reject("unauthenticated");
                return answer(Res::Error(error(
                    ErrorCode::Unauthenticated,
                    "log in first",
                )));
            }
            _ => {}
        }
        match body {
            Request::Hello(hello) => self.hello(id, hello),
            Request::GetChallenge(get) => Ok(Some(self.get_challenge(id, get).await)),
            Request::Login(login) => self.login(id, login).await,
            Request::SyncClock(sync) => {
                let t1 = now_us();
                answer(Res::ClockSample(v1::ClockSample {
                    client_sent_us: sync.client_sent_us,
                    server_received_us: t1,
                    server_sent_us: now_us(),
                }))
            }
            Request::Logout(_) => {
                self.logout().await;
                let reply = response(id, Res::Ack(v1::Ack {}));
                Err((Some(reply), ConnectionCloseCode::Unspecified, "logged out"))
            }
            Request::UnsubscribePresence(u) => {
                self.unsubscribe(u);
                answer(Res::Ack(v1::Ack {}))
            }
            Request::Heartbeat(_)
            | Request::SendMessage(_)
            | Request::SubscribePresence(_)
            | Request::LookupPeer(_)
            | Request::PublishAttributes(_)
            | Request::UnpublishAttributes(_)
            | Request::QueryPeers(_)
            | Request::RequestTunnel(_)
            | Request::ShareCandidates(_)
            | Request::ReportPunchOutcome(_)
            | Request::ReportNat(_) => {
                let max = self.shared.config.limits.max_in_flight;
                if self.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
                    self.in_flight.fetch_sub(1, Ordering::AcqRel);
                    reject("too_many_in_flight");
                    return answer(Res::Error(ErrorDetail {
                        retry_after_ms: 50,
                        limit: u64::from(max),
                        ..error(
                            ErrorCode::RateLimited,
                            format!("more than {max} requests in progress"),
                        )
                    }));
                }
                self.spawn_request(id, body);
                Ok(None)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn hello(
        &mut self,
        id: u64,
        hello: v1::Hello,
    ) -> Result<Option<Bytes>, (Option<Bytes>, ConnectionCloseCode, &'static str)> {
        let max = hello.protocol_version;
        let min = if hello.min_protocol_version == 0 {
            max
        } else {
            hello.min_protocol_version
        };
        if !(min..=max).contains(&quickp2p_proto::PROTOCOL_VERSION) {
            reject("version_mismatch");
            let reply = response(
                id,
                Res::Error(error(
                    ErrorCode::Unsupported,
                    "this gateway speaks protocol version 1",
                )),
            );
            return Err((
                Some(reply),
                ConnectionCloseCode::VersionMismatch,
                "no common version",
            ));
        }
        let limits = self.shared.config.limits;
        self.welcome = Some(hello.sdk.chars().take(128).collect());
        Ok(Some(response(
            id,
            Res::Welcome(v1::Welcome {
                protocol_version: quickp2p_proto::PROTOCOL_VERSION,
                capabilities: Vec::new(),
                gateway_id: self.shared.config.gateway_id.clone(),
                limits: Some(v1::SessionLimits {
                    max_frame_bytes: quickp2p_proto::frame::MAX_FRAME_LEN as u32,
                    max_message_bytes: limits.max_message_bytes,
                    max_attributes: crate::index::ANNOUNCED.max_attributes,
                    max_attribute_key_bytes: crate::index::ANNOUNCED.max_key_bytes,
                    max_attribute_value_bytes: crate::index::ANNOUNCED.max_value_bytes,
                    max_requests_per_second: limits.requests_per_second,
                    max_in_flight_requests: limits.max_in_flight,
                    max_presence_subscriptions: limits.max_presence_subscriptions,
                }),
                observed_address: Some(self.conn.remote_address().into()),
            }),
        )))
    }

    async fn get_challenge(&mut self, id: u64, get: v1::GetChallenge) -> Bytes {
        let request = v1::IssueChallengeRequest {
            gateway_id: self.shared.config.gateway_id.clone(),
            app_id: get.app_id,
            peer_address: Some(self.conn.remote_address().into()),
        };
        match self
            .shared
            .checkpoint
            .clone()
            .issue_challenge(request)
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                self.challenge = Some(r.challenge.clone());
                response(
                    id,
                    Res::Challenge(v1::LoginChallenge {
                        challenge: r.challenge,
                        expires_at_unix_ms: r.expires_at_unix_ms,
                    }),
                )
            }
            Err(status) => {
                reject("challenge_refused");
                response(id, Res::Error(ErrorDetail::from_status(&status)))
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn login(
        &mut self,
        id: u64,
        login: v1::Login,
    ) -> Result<Option<Bytes>, (Option<Bytes>, ConnectionCloseCode, &'static str)> {
        let fail = |detail: ErrorDetail| {
            Err((
                Some(response(id, Res::Error(detail))),
                ConnectionCloseCode::Unauthenticated,
                "login failed",
            ))
        };
        if self.session.is_some() {
            return Ok(Some(response(
                id,
                Res::Error(error(ErrorCode::Invalid, "already logged in")),
            )));
        }
        // a challenge is valid on the connection it was issued to, once
        if self.challenge.take().as_ref() != Some(&login.challenge) {
            reject("unauthenticated");
            return fail(error(
                ErrorCode::Unauthenticated,
                "the challenge was not issued on this connection (or was already used): get a new one",
            ));
        }
        let app_id = login.app_id.clone();
        let request = v1::LoginRequest {
            gateway_id: self.shared.config.gateway_id.clone(),
            app_id: login.app_id,
            challenge: login.challenge,
            public_key: login.public_key.clone(),
            signature: login.signature,
            app_proof: login.app_proof,
            app_secret_id: login.app_secret_id,
            observed_address: Some(self.conn.remote_address().into()),
            protocol_version: quickp2p_proto::PROTOCOL_VERSION,
            sdk: self.welcome.clone().unwrap_or_default(),
            previous_session_token: login.previous_session_token,
        };
        let had_previous = !request.previous_session_token.is_empty();
        let started = now_ms();
        let logged = match self.shared.checkpoint.clone().login(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let detail = ErrorDetail::from_status(&status);
                if detail.code() == ErrorCode::Unavailable {
                    reject("unavailable");
                    return Ok(Some(response(id, Res::Error(detail))));
                }
                reject("unauthenticated");
                return fail(detail);
            }
        };
        let Some(session) = logged.session else {
            return fail(error(ErrorCode::Internal, "checkpoint returned no session"));
        };
        let Some(peer) = session.peer.clone().filter(v1::PeerId::is_valid) else {
            return fail(error(ErrorCode::Internal, "checkpoint returned no peer"));
        };
        let app = app_id.map(|a| a.value).unwrap_or_default();
        let Ok(peer_key) = peer.public_key() else {
            return fail(error(ErrorCode::Internal, "bad peer id"));
        };
        // decoded `bytes` fields share the gRPC response's buffer (8 KiB): copy what the session
        // keeps, or every idle session holds a whole buffer
        let ctx = Arc::new(SessionCtx {
            app: app.clone(),
            peer_hex: peer.to_string(),
            peer: v1::PeerId::from_public_key(peer_key),
            key: (app.clone(), peer_key),
            token: Bytes::copy_from_slice(&logged.session_token),
            replays_until: had_previous.then(|| Instant::now() + REPLAY_WINDOW),
        });
        if let Err(e) = self
            .shared
            .store
            .set_route(
                &app,
                &ctx.peer_hex,
                &self.shared.config.gateway_id,
                self.shared.config.route_ttl,
            )
            .await
        {
            tracing::warn!(error = %e, "route not recorded at login");
            return Ok(Some(response(
                id,
                Res::Error(unavailable("shared state unavailable, retry")),
            )));
        }
        let replaced = self.shared.registry.attach(
            ctx.key.clone(),
            Attached {
                conn_id: self.conn_id,
                tx: self.tx.clone(),
                close: self.close.clone(),
            },
        );
        if let Some(old) = replaced {
            let _ = old.tx.try_send(crate::kicked_frame(
                v1::KickReason::DuplicateSession,
                "the same peer logged in on another connection",
            ));
            old.close.cancel();
        }
        tracing::debug!(peer = %ctx.peer_hex, app = %app, "peer logged in");
        metrics::counter!("qp_gateway_logins_total").increment(1);
        self.session = Some(ctx);
        Ok(Some(response(
            id,
            Res::LoggedIn(v1::LoggedIn {
                peer_id: Some(peer),
                session_token: logged.session_token,
                session_expires_at_unix_ms: session.expires_at_unix_ms,
                heartbeat_interval_ms: logged.heartbeat_interval_ms,
                resumed: had_previous && session.created_at_unix_ms < started,
            }),
        )))
    }

    async fn logout(&mut self) {
        if let Some(ctx) = &self.session {
            let request = v1::LogoutRequest {
                session_token: ctx.token.clone(),
                reason: v1::LogoutReason::PeerRequest as i32,
            };
            if let Err(status) = self.shared.checkpoint.clone().logout(request).await {
                tracing::warn!(error = %status.message(), "logout not recorded");
            }
            self.logged_out = true;
        }
    }

    fn unsubscribe(&mut self, u: v1::UnsubscribePresence) {
        let Some(ctx) = &self.session else { return };
        let mut watched = self
            .watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let keys: Vec<SessionKey> = if u.all {
            watched.drain().collect()
        } else {
            u.peers
                .iter()
                .filter_map(|p| p.public_key().ok())
                .map(|k| (ctx.app.clone(), k))
                .filter(|k| watched.remove(k))
                .collect()
        };
        for key in keys {
            self.shared.registry.unwatch(&key, self.conn_id);
        }
    }

    fn spawn_request(&self, id: u64, body: Request) {
        let Some(ctx) = self.session.clone() else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let tx = self.tx.clone();
        let in_flight = Arc::clone(&self.in_flight);
        let watched = Arc::clone(&self.watched);
        let close = self.close.clone();
        let conn_id = self.conn_id;
        let observed: v1::SocketAddress = self.conn.remote_address().into();
        let span = tracing::debug_span!("peer_request", request_id = id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let result = match body {
                    Request::SendMessage(m) => send_message(&shared, &ctx, m)
                        .await
                        .map(Res::MessageAccepted),
                    Request::SubscribePresence(s) => {
                        subscribe(&shared, &ctx, s, conn_id, &tx, &watched)
                            .await
                            .map(Res::Presence)
                    }
                    Request::LookupPeer(l) => crate::index::lookup(&shared.index, &ctx.app, l)
                        .await
                        .map(Res::PeerRecord),
                    Request::PublishAttributes(p) => {
                        crate::index::publish(&shared.index, &ctx.app, &ctx.peer, p)
                            .await
                            .map(Res::PeerRecord)
                    }
                    Request::UnpublishAttributes(u) => {
                        crate::index::unpublish(&shared.index, &ctx.app, &ctx.peer, u)
                            .await
                            .map(Res::PeerRecord)
                    }
                    Request::QueryPeers(q) => crate::index::query(&shared.index, &ctx.app, q)
                        .await
                        .map(Res::QueryResult),
                    Request::RequestTunnel(r) => {
                        let caller = crate::handshake::Caller {
                            app: &ctx.app,
                            peer: &ctx.peer,
                            observed: observed.clone(),
                        };
                        crate::handshake::request_tunnel(&shared, &caller, r)
                            .await
                            .map(Res::TunnelRequested)
                    }
                    Request::ShareCandidates(s) => {
                        let caller = crate::handshake::Caller {
                            app: &ctx.app,
                            peer: &ctx.peer,
                            observed: observed.clone(),
                        };
                        crate::handshake::share_candidates(&shared, &caller, s)
                            .await
                            .map(Res::Ack)
                    }
                    Request::ReportPunchOutcome(r) => {
                        let caller = crate::handshake::Caller {
                            app: &ctx.app,
                            peer: &ctx.peer,
                            observed: observed.clone(),
                        };
                        crate::handshake::report_outcome(&shared, &caller, r)
                            .await
                            .map(Res::Ack)
                    }
                    Request::ReportNat(r) => {
                        let caller = crate::handshake::Caller {
                            app: &ctx.app,
                            peer: &ctx.peer,
                            observed: observed.clone(),
                        };
                        crate::handshake::report_nat(&shared, &caller, r)
                            .await
                            .map(Res::Ack)
                    }
                    Request::Heartbeat(_) => {
                        let outcome = heartbeat(&shared, &ctx, observed).await;
                        if let Err(detail) = &outcome
                            && matches!(detail.code(), ErrorCode::Expired | ErrorCode::NotFound)
                        {
                            let _ = tx.send(response(id, Res::Error(detail.clone()))).await;
                            let _ = tx
                                .send(crate::kicked_frame(
                                    v1::KickReason::SessionExpired,
                                    "the session expired: log in again",
                                ))
                                .await;
                            close.cancel();
                            in_flight.fetch_sub(1, Ordering::AcqRel);
                            return;
                        }
                        outcome.map(Res::Heartbeat)
                    }
                    _ => Err(error(ErrorCode::Unsupported, "unsupported")),
                };
                let result = result.unwrap_or_else(Res::Error);
                let _ = tx.send(response(id, result)).await;
                in_flight.fetch_sub(1, Ordering::AcqRel);
            },
            span,
        ));
    }

    async fn cleanup(&mut self) {
        let Some(ctx) = self.session.take() else {
            return;
        };
        let watched: HashSet<SessionKey> = std::mem::take(
            &mut *self
                .watched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.shared.registry.unwatch_all(&watched, self.conn_id);
        let ours = self.shared.registry.detach(&ctx.key, self.conn_id);
        if ours
            && let Err(e) = self
                .shared
                .store
                .clear_route(&ctx.app, &ctx.peer_hex, &self.shared.config.gateway_id)
                .await
        {
            tracing::warn!(error = %e, "route not cleared");
        }
        // On shutdown the session stays: the peer resumes it on another gateway.
        if !self.logged_out && ours && !self.shared.stop.is_cancelled() {
            let request = v1::LogoutRequest {
                session_token: ctx.token.clone(),
                reason: v1::LogoutReason::ConnectionLost as i32,
            };
            if let Err(status) = self.shared.checkpoint.clone().logout(request).await {
                tracing::warn!(error = %status.message(), "logout after connection loss not recorded");
            }
        }
        tracing::debug!(peer = %ctx.peer_hex, "session detached");
        let _ = &ctx.peer;
    }
}

async fn heartbeat(
    shared: &Shared,
    ctx: &SessionCtx,
    observed: v1::SocketAddress,
) -> Result<v1::HeartbeatAck, ErrorDetail> {
    let (reply, outcome) = oneshot::channel();
    let beat = crate::heartbeat::Beat {
        token: ctx.token.clone(),
        observed: observed.clone(),
        route: (ctx.app.clone(), ctx.peer_hex.clone()),
        reply,
    };
    if shared.heartbeats.send(beat).await.is_err() {
        return Err(unavailable("gateway shutting down"));
    }
    let result = outcome
        .await
        .map_err(|_| unavailable("heartbeat not processed"))??;
    if let Some(detail) = result.error {
        return Err(detail);
    }
    Ok(v1::HeartbeatAck {
        session_expires_at_unix_ms: result.expires_at_unix_ms,
        observed_address: Some(observed),
    })
}

/// Most bytes of a client_message_id.
const MAX_CLIENT_MESSAGE_ID: usize = 32;
/// How long a client_message_id is remembered for deduplication.
const DEDUP_TTL: std::time::Duration = std::time::Duration::from_secs(300);

fn store_unavailable(e: &quickp2p_store::StoreError) -> ErrorDetail {
    tracing::warn!(error = %e, "store error");
    reject("unavailable");
    unavailable("shared state unavailable, retry")
}

async fn send_message(
    shared: &Shared,
    ctx: &SessionCtx,
    m: v1::SendMessage,
) -> Result<v1::MessageAccepted, ErrorDetail> {
    let limit = shared.config.limits.max_message_bytes;
    if m.payload.len() > limit as usize {
        reject("too_large");
        return Err(ErrorDetail {
            field: "send_message.payload".into(),
            limit: u64::from(limit),
            ..error(
                ErrorCode::TooLarge,
                format!("message of {} bytes exceeds {limit}", m.payload.len()),
            )
        });
    }
    let Some(recipient) = m.recipient.filter(v1::PeerId::is_valid) else {
        reject("invalid");
        return Err(ErrorDetail {
            field: "send_message.recipient".into(),
            ..error(
                ErrorCode::Invalid,
                "the recipient must be a 32-byte peer id",
            )
        });
    };
    if m.client_message_id.len() > MAX_CLIENT_MESSAGE_ID {
        reject("invalid");
        return Err(ErrorDetail {
            field: "send_message.client_message_id".into(),
            ..error(ErrorCode::Invalid, "client_message_id is at most 32 bytes")
        });
    }
    let recipient_hex = recipient.to_string();
    let dedup_key = (!m.client_message_id.is_empty()).then(|| {
        format!(
            "dedup:{}:{}:{}",
            ctx.app,
            ctx.peer_hex,
            hex::encode(&m.client_message_id)
        )
    });
    // the dedup check runs alongside the route lookup
    let may_be_replay = ctx
        .replays_until
        .is_some_and(|until| Instant::now() < until);
    let dedup_check = async {
        match &dedup_key {
            Some(key) if may_be_replay => shared.store.get_ephemeral(key).await,
            _ => Ok(None),
        }
    };
    let (seen, route) = tokio::join!(dedup_check, shared.route(&ctx.app, &recipient_hex, false));
    match seen {
        Ok(Some(raw)) if raw.len() > 8 => {
            let (at, id) = raw.split_at(8);
            let mut ms = [0u8; 8];
            ms.copy_from_slice(at);
            metrics::counter!("qp_gateway_messages_total", "outcome" => "duplicate").increment(1);
            return Ok(v1::MessageAccepted {
                message_id: Bytes::copy_from_slice(id),
                accepted_at_unix_ms: u64::from_be_bytes(ms),
                duplicate: true,
            });
        }
        Ok(_) => {}
        Err(e) => return Err(store_unavailable(&e)),
    }
    let message_id = Bytes::copy_from_slice(&crate::random_bytes::<16>());
    let accepted_at = now_ms();
    let event = v1::PeerEvent {
        event: Some(v1::peer_event::Event::Message(v1::IncomingMessage {
            sender: Some(ctx.peer.clone()),
            payload: m.payload,
            message_id: message_id.clone(),
            client_message_id: m.client_message_id,
            accepted_at_unix_ms: accepted_at,
        })),
    };
    let offline = || {
        reject("peer_offline");
        error(ErrorCode::PeerOffline, "the recipient is not online")
    };
    let route = route.map_err(|e| store_unavailable(&e))?;
    // a cached route may be stale (the peer moved): on a miss, look it up again once
    let mut status = match route {
        Some(gw) => deliver_to(shared, ctx, &gw, &recipient, &event).await,
        None => Ok(v1::DeliveryStatus::NotAttached),
    };
    if !matches!(
        status,
        Ok(v1::DeliveryStatus::Accepted | v1::DeliveryStatus::QueueFull)
    ) {
        status = match shared.route(&ctx.app, &recipient_hex, true).await {
            Ok(Some(gw)) => deliver_to(shared, ctx, &gw, &recipient, &event).await,
            Ok(None) => return Err(offline()),
            Err(e) => return Err(store_unavailable(&e)),
        };
    }
    let status = status?;
    match status {
        v1::DeliveryStatus::Accepted => {}
        v1::DeliveryStatus::QueueFull => {
            reject("queue_full");
            return Err(ErrorDetail {
                retry_after_ms: 100,
                limit: shared.config.limits.queue_depth as u64,
                ..error(ErrorCode::QueueFull, "the recipient's queue is full")
            });
        }
        _ => return Err(offline()),
    }
    if let Some(key) = dedup_key {
        let mut value = accepted_at.to_be_bytes().to_vec();
        value.extend_from_slice(&message_id);
        // written off the acceptance path: the record is read only by a replay, which comes
        // after a reconnect, long after this write
        let store = shared.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store
                .put_ephemeral(&key, Bytes::from(value), DEDUP_TTL)
                .await
            {
                tracing::debug!(error = %e, "dedup record not stored");
            }
        });
    }
    metrics::counter!("qp_gateway_messages_total", "outcome" => "accepted").increment(1);
    Ok(v1::MessageAccepted {
        message_id,
        accepted_at_unix_ms: accepted_at,
        duplicate: false,
    })
}

/// Queues `event` to `recipient` through gateway `gateway` (this one, or another replica's
/// Deliver service). A transport failure is an error; a stale route is `NOT_ATTACHED`.
async fn deliver_to(
    shared: &Shared,
    ctx: &SessionCtx,
    gateway: &str,
    recipient: &v1::PeerId,
    event: &v1::PeerEvent,
) -> Result<v1::DeliveryStatus, ErrorDetail> {
    if gateway == shared.config.gateway_id {
        let key = (ctx.app.clone(), recipient.public_key().unwrap_or([0; 32]));
        return Ok(shared
            .registry
            .deliver_status(&key, crate::remote::event_frame(event.clone())));
    }
    let link = match shared.peers.link(gateway, &shared.config.gateway_id).await {
        Ok(Some(link)) => link,
        Ok(None) => return Ok(v1::DeliveryStatus::NotAttached),
        Err(e) => return Err(store_unavailable(&e)),
    };
    match link.deliver(&ctx.app, recipient, event.clone()).await {
        Ok(status) => Ok(status),
        Err(e) => {
            if e != crate::remote::LinkError::Busy {
                shared.peers.forget(gateway);
            }
            tracing::warn!(%gateway, error = %e, "delivery to another gateway failed");
            reject("unavailable");
            Err(unavailable(format!("{e}, retry")))
        }
    }
}

async fn subscribe(
    shared: &Shared,
    ctx: &SessionCtx,
    s: v1::SubscribePresence,
    conn_id: u64,
    tx: &mpsc::Sender<Bytes>,
    watched: &Mutex<HashSet<SessionKey>>,
) -> Result<v1::PresenceSnapshot, ErrorDetail> {
    if s.peers.is_empty() || s.peers.len() > 256 || s.peers.iter().any(|p| !p.is_valid()) {
        reject("invalid");
        return Err(ErrorDetail {
            field: "subscribe_presence.peers".into(),
            ..error(ErrorCode::Invalid, "1 to 256 valid peer ids")
        });
    }
    let max = shared.config.limits.max_presence_subscriptions as usize;
    {
        let mut set = watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let new: Vec<SessionKey> = s
            .peers
            .iter()
            .filter_map(|p| p.public_key().ok())
            .map(|k| (ctx.app.clone(), k))
            .filter(|k| !set.contains(k))
            .collect();
        if set.len() + new.len() > max {
            reject("too_large");
            return Err(ErrorDetail {
                limit: max as u64,
                ..error(
                    ErrorCode::TooLarge,
                    format!("at most {max} presence subscriptions"),
                )
            });
        }
        // watch before reading, so no change between the snapshot and the events is missed
        for key in new {
            shared.registry.watch(key.clone(), conn_id, tx.clone());
            set.insert(key);
        }
    }
    let request = v1::QueryPresenceRequest {
        app_id: Some(v1::AppId::new(ctx.app.clone())),
        peers: s.peers,
    };
    match shared.checkpoint.clone().query_presence(request).await {
        Ok(r) => Ok(v1::PresenceSnapshot {
            states: r.into_inner().states,
        }),
        Err(status) => Err(ErrorDetail::from_status(&status)),
    }
}
