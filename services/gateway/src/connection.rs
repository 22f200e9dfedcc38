//! The peer session protocol on one connection: `Hello`, challenge, login, and the requests of a
//! logged-in session. Flow: `Hello` → `GetChallenge` → `Login` (only these and `SyncClock` before
//! login), then anything.
//!
//! [`Session`] is driven by the endpoint task ([`crate::endpoint`]), one decoded request at a
//! time, and answers with a [`Step`]: a frame to write now, nothing (a request task answers
//! later through the connection's [`ConnRef`]), a pause (challenge, login and logout hold the
//! stream until their outcome comes back as [`Resumed`]), or a close. Nothing here touches the
//! socket; what waits on another service runs in a task of its own.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use quickp2p_proto::v1::{
    self, ConnectionCloseCode, ErrorCode, ErrorDetail, peer_request::Request,
    peer_response::Result as Res,
};
use tokio::sync::oneshot;

use crate::endpoint::ConnRef;
use crate::registry::{Attached, SessionKey};
use crate::{Shared, frame_bytes, now_ms, now_us, reject};

/// A logged-in session on this connection.
#[derive(Debug)]
pub(crate) struct SessionCtx {
    app: String,
    peer: v1::PeerId,
    peer_hex: String,
    key: SessionKey,
    token: Bytes,
    /// Until when sends may be replays of sends made on an earlier connection (the login presented
    /// a previous session token): only then is the dedup record read before delivering.
    replays_until: Option<Instant>,
}

impl SessionCtx {
    /// Whether a send now may be a replay of one made on an earlier connection.
    fn may_be_replay(&self) -> bool {
        self.replays_until
            .is_some_and(|until| Instant::now() < until)
    }
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

/// What the endpoint does after the session handled something.
#[derive(Debug)]
pub(crate) enum Step {
    /// Nothing now (a request task answers later).
    Nothing,
    /// Write this frame.
    Reply(Bytes),
    /// Read no further frames until the operation's [`Resumed`] comes back.
    Pause,
    /// Write the frame (if any), then close the connection with this code.
    Close(Option<Bytes>, ConnectionCloseCode, &'static str),
}

/// The outcome of an operation that held the stream.
#[derive(Debug)]
pub(crate) enum Resumed {
    /// `GetChallenge` answered; the challenge now valid on this connection, if one was issued.
    Challenge {
        reply: Bytes,
        challenge: Option<Bytes>,
    },
    /// `Login` answered.
    Login(LoginOutcome),
    /// `Logout` recorded: answer and close.
    LoggedOut { reply: Bytes },
}

/// How a login ended.
#[derive(Debug)]
pub(crate) enum LoginOutcome {
    /// Logged in: the route is recorded, the session is to be attached here.
    LoggedIn { ctx: Arc<SessionCtx>, reply: Bytes },
    /// Not logged in; `close`: the connection ends after the answer (refused credentials),
    /// otherwise the peer may try again (a service was unavailable).
    Refused { reply: Bytes, close: bool },
}

/// The answer to a frame that is not a valid `PeerRequest`: the session goes on.
pub(crate) fn undecodable(e: &prost::DecodeError) -> Step {
    reject("malformed_frame");
    let detail = error(ErrorCode::Invalid, format!("undecodable frame: {e}"));
    Step::Reply(response(0, Res::Error(detail)))
}

/// The session state of one connection.
#[derive(Debug)]
pub(crate) struct Session {
    shared: Arc<Shared>,
    conn: ConnRef,
    /// The SDK's self-description from `Hello`; `None` until `Hello`.
    welcome: Option<String>,
    challenge: Option<Bytes>,
    ctx: Option<Arc<SessionCtx>>,
    logged_out: bool,
    bucket: Bucket,
    in_flight: u32,
    /// The peers whose presence this session watches (shared with subscribe tasks).
    watched: Arc<Mutex<HashSet<SessionKey>>>,
}

impl Session {
    pub(crate) fn new(shared: Arc<Shared>, conn: ConnRef) -> Session {
        let limits = shared.config.limits;
        Session {
            shared,
            conn,
            welcome: None,
            challenge: None,
            ctx: None,
            logged_out: false,
            bucket: Bucket {
                tokens: f64::from(limits.max_in_flight),
                rate: f64::from(limits.requests_per_second),
                burst: f64::from(limits.max_in_flight),
                at: Instant::now(),
            },
            in_flight: 0,
            watched: Arc::default(),
        }
    }

    /// Whether a peer is logged in on this connection.
    pub(crate) fn logged_in(&self) -> bool {
        self.ctx.is_some()
    }

    /// A request task answered.
    pub(crate) fn answered(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Handles one request; `remote` is the address the connection sees now.
    pub(crate) fn on_request(&mut self, request: v1::PeerRequest, remote: SocketAddr) -> Step {
        let id = request.request_id;
        let answer = |r: Res| Step::Reply(response(id, r));
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
        match (&body, self.welcome.is_some(), self.ctx.is_some()) {
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
                return Step::Close(
                    Some(reply),
                    ConnectionCloseCode::ProtocolViolation,
                    "no Hello first",
                );
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
            Request::Hello(hello) => self.hello(id, hello, remote),
            Request::GetChallenge(get) => self.get_challenge(id, get, remote),
            Request::Login(login) => self.login(id, login, remote),
            Request::SyncClock(sync) => {
                let t1 = now_us();
                answer(Res::ClockSample(v1::ClockSample {
                    client_sent_us: sync.client_sent_us,
                    server_received_us: t1,
                    server_sent_us: now_us(),
                }))
            }
            Request::Logout(_) => self.logout(id),
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
                if self.in_flight >= max {
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
                match body {
                    Request::SendMessage(m) => self.send_fast(id, m, remote),
                    body => self.spawn_counted(id, body, remote),
                }
            }
        }
    }

    fn hello(&mut self, id: u64, hello: v1::Hello, remote: SocketAddr) -> Step {
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
            return Step::Close(
                Some(reply),
                ConnectionCloseCode::VersionMismatch,
                "no common version",
            );
        }
        let limits = self.shared.config.limits;
        self.welcome = Some(hello.sdk.chars().take(128).collect());
        Step::Reply(response(
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
                observed_address: Some(remote.into()),
            }),
        ))
    }

    /// Asks the checkpoint for a challenge; the stream waits for it.
    fn get_challenge(&mut self, id: u64, get: v1::GetChallenge, remote: SocketAddr) -> Step {
        let request = v1::IssueChallengeRequest {
            gateway_id: self.shared.config.gateway_id.clone(),
            app_id: get.app_id,
            peer_address: Some(remote.into()),
        };
        let shared = Arc::clone(&self.shared);
        let conn = self.conn.clone();
        let span = tracing::debug_span!("get_challenge", request_id = id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let outcome = match shared.checkpoint.clone().issue_challenge(request).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        Resumed::Challenge {
                            challenge: Some(r.challenge.clone()),
                            reply: response(
                                id,
                                Res::Challenge(v1::LoginChallenge {
                                    challenge: r.challenge,
                                    expires_at_unix_ms: r.expires_at_unix_ms,
                                }),
                            ),
                        }
                    }
                    Err(status) => {
                        reject("challenge_refused");
                        Resumed::Challenge {
                            challenge: None,
                            reply: response(id, Res::Error(ErrorDetail::from_status(&status))),
                        }
                    }
                };
                conn.resume(outcome);
            },
            span,
        ));
        Step::Pause
    }

    /// Checks the login against the checkpoint and records the route; the stream waits for it.
    fn login(&mut self, id: u64, login: v1::Login, remote: SocketAddr) -> Step {
        if self.ctx.is_some() {
            return Step::Reply(response(
                id,
                Res::Error(error(ErrorCode::Invalid, "already logged in")),
            ));
        }
        // a challenge is valid on the connection it was issued to, once
        if self.challenge.take().as_ref() != Some(&login.challenge) {
            reject("unauthenticated");
            let detail = error(
                ErrorCode::Unauthenticated,
                "the challenge was not issued on this connection (or was already used): get a new one",
            );
            return Step::Close(
                Some(response(id, Res::Error(detail))),
                ConnectionCloseCode::Unauthenticated,
                "login failed",
            );
        }
        let shared = Arc::clone(&self.shared);
        let conn = self.conn.clone();
        let sdk = self.welcome.clone().unwrap_or_default();
        let span = tracing::debug_span!("login", request_id = id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let outcome = Box::pin(check_login(&shared, id, login, remote, sdk)).await;
                conn.resume(Resumed::Login(outcome));
            },
            span,
        ));
        Step::Pause
    }

    fn logout(&mut self, id: u64) -> Step {
        let Some(ctx) = &self.ctx else {
            let reply = response(id, Res::Ack(v1::Ack {}));
            return Step::Close(Some(reply), ConnectionCloseCode::Unspecified, "logged out");
        };
        let request = v1::LogoutRequest {
            session_token: ctx.token.clone(),
            reason: v1::LogoutReason::PeerRequest as i32,
        };
        let shared = Arc::clone(&self.shared);
        let conn = self.conn.clone();
        tokio::spawn(async move {
            if let Err(status) = shared.checkpoint.clone().logout(request).await {
                tracing::warn!(error = %status.message(), "logout not recorded");
            }
            conn.resume(Resumed::LoggedOut {
                reply: response(id, Res::Ack(v1::Ack {})),
            });
        });
        Step::Pause
    }

    /// The outcome of the operation the stream waited for.
    pub(crate) fn resume(&mut self, outcome: Resumed) -> Step {
        match outcome {
            Resumed::Challenge { reply, challenge } => {
                self.challenge = challenge;
                Step::Reply(reply)
            }
            Resumed::Login(LoginOutcome::Refused { reply, close: true }) => Step::Close(
                Some(reply),
                ConnectionCloseCode::Unauthenticated,
                "login failed",
            ),
            Resumed::Login(LoginOutcome::Refused {
                reply,
                close: false,
            }) => Step::Reply(reply),
            Resumed::Login(LoginOutcome::LoggedIn { ctx, reply }) => {
                let replaced = self.shared.registry.attach(
                    ctx.key.clone(),
                    Attached {
                        conn: self.conn.clone(),
                    },
                );
                if let Some(old) = replaced {
                    old.conn.push_uncounted(crate::kicked_frame(
                        v1::KickReason::DuplicateSession,
                        "the same peer logged in on another connection",
                    ));
                    old.conn
                        .close(ConnectionCloseCode::Kicked, "session ended by the network");
                }
                tracing::debug!(peer = %ctx.peer_hex, app = %ctx.app, "peer logged in");
                metrics::counter!("qp_gateway_logins_total").increment(1);
                self.ctx = Some(ctx);
                Step::Reply(reply)
            }
            Resumed::LoggedOut { reply } => {
                self.logged_out = true;
                Step::Close(Some(reply), ConnectionCloseCode::Unspecified, "logged out")
            }
        }
    }

    fn unsubscribe(&mut self, u: v1::UnsubscribePresence) {
        let Some(ctx) = &self.ctx else { return };
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
            self.shared.registry.unwatch(&key, self.conn.id());
        }
    }

    fn spawn_request(&self, id: u64, body: Request, remote: SocketAddr) {
        let Some(ctx) = self.ctx.clone() else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let conn = self.conn.clone();
        let watched = Arc::clone(&self.watched);
        let observed: v1::SocketAddress = remote.into();
        let span = tracing::debug_span!("peer_request", request_id = id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let result = match body {
                    Request::SendMessage(m) => send_message(&shared, &ctx, m)
                        .await
                        .map(Res::MessageAccepted),
                    Request::SubscribePresence(s) => subscribe(&shared, &ctx, s, &conn, &watched)
                        .await
                        .map(Res::Presence),
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
                            conn.answer(response(id, Res::Error(detail.clone())));
                            conn.push_uncounted(crate::kicked_frame(
                                v1::KickReason::SessionExpired,
                                "the session expired: log in again",
                            ));
                            conn.close(ConnectionCloseCode::Kicked, "session ended by the network");
                            return;
                        }
                        outcome.map(Res::Heartbeat)
                    }
                    _ => Err(error(ErrorCode::Unsupported, "unsupported")),
                };
                let result = result.unwrap_or_else(Res::Error);
                conn.answer(response(id, result));
            },
            span,
        ));
    }

    /// The session ends (the connection is closing or gone): detached here at once; the route
    /// and, unless the peer logged out or the gateway is shutting down (the peer then resumes
    /// its session on another gateway), the checkpoint session are cleared in a task.
    pub(crate) fn end(self, stopping: bool, cleanups: &mut tokio::task::JoinSet<()>) {
        let Some(ctx) = self.ctx else {
            return;
        };
        let watched: HashSet<SessionKey> = std::mem::take(
            &mut *self
                .watched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let conn_id = self.conn.id();
        self.shared.registry.unwatch_all(&watched, conn_id);
        let ours = self.shared.registry.detach(&ctx.key, conn_id);
        if !ours {
            return;
        }
        cleanups.spawn(cleanup(self.shared, ctx, !self.logged_out && !stopping));
    }
}

/// Clears the route of a session that ended here, and logs it out of the checkpoint when
/// `logout` (connection lost).
async fn cleanup(shared: Arc<Shared>, ctx: Arc<SessionCtx>, logout: bool) {
    if let Err(e) = shared
        .store
        .clear_route(&ctx.app, &ctx.peer_hex, &shared.config.gateway_id)
        .await
    {
        tracing::warn!(error = %e, "route not cleared");
    }
    if logout {
        let request = v1::LogoutRequest {
            session_token: ctx.token.clone(),
            reason: v1::LogoutReason::ConnectionLost as i32,
        };
        if let Err(status) = shared.checkpoint.clone().logout(request).await {
            tracing::warn!(error = %status.message(), "logout after connection loss not recorded");
        }
    }
    tracing::debug!(peer = %ctx.peer_hex, "session detached");
}

/// An operation's outcome whose connection is gone: a login that succeeded meanwhile is undone
/// like a session that ended.
pub(crate) fn abandon(
    shared: &Arc<Shared>,
    outcome: Resumed,
    cleanups: &mut tokio::task::JoinSet<()>,
    stopping: bool,
) {
    if let Resumed::Login(LoginOutcome::LoggedIn { ctx, .. }) = outcome {
        cleanups.spawn(cleanup(Arc::clone(shared), ctx, !stopping));
    }
}

/// The login check: the checkpoint verifies the credentials and the key's signature, then the
/// route peer → this gateway is recorded.
async fn check_login(
    shared: &Shared,
    id: u64,
    login: v1::Login,
    remote: SocketAddr,
    sdk: String,
) -> LoginOutcome {
    let refused = |detail: ErrorDetail| LoginOutcome::Refused {
        reply: response(id, Res::Error(detail)),
        close: true,
    };
    let app_id = login.app_id.clone();
    let request = v1::LoginRequest {
        gateway_id: shared.config.gateway_id.clone(),
        app_id: login.app_id,
        challenge: login.challenge,
        public_key: login.public_key.clone(),
        signature: login.signature,
        app_proof: login.app_proof,
        app_secret_id: login.app_secret_id,
        observed_address: Some(remote.into()),
        protocol_version: quickp2p_proto::PROTOCOL_VERSION,
        sdk,
        previous_session_token: login.previous_session_token,
    };
    let had_previous = !request.previous_session_token.is_empty();
    let started = now_ms();
    let logged = match shared.checkpoint.clone().login(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let detail = ErrorDetail::from_status(&status);
            if detail.code() == ErrorCode::Unavailable {
                reject("unavailable");
                return LoginOutcome::Refused {
                    reply: response(id, Res::Error(detail)),
                    close: false,
                };
            }
            reject("unauthenticated");
            return refused(detail);
        }
    };
    let Some(session) = logged.session else {
        return refused(error(ErrorCode::Internal, "checkpoint returned no session"));
    };
    let Some(peer) = session.peer.clone().filter(v1::PeerId::is_valid) else {
        return refused(error(ErrorCode::Internal, "checkpoint returned no peer"));
    };
    let app = app_id.map(|a| a.value).unwrap_or_default();
    let Ok(peer_key) = peer.public_key() else {
        return refused(error(ErrorCode::Internal, "bad peer id"));
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
    if let Err(e) = shared
        .store
        .set_route(
            &app,
            &ctx.peer_hex,
            &shared.config.gateway_id,
            shared.config.route_ttl,
        )
        .await
    {
        tracing::warn!(error = %e, "route not recorded at login");
        return LoginOutcome::Refused {
            reply: response(
                id,
                Res::Error(unavailable("shared state unavailable, retry")),
            ),
            close: false,
        };
    }
    LoginOutcome::LoggedIn {
        reply: response(
            id,
            Res::LoggedIn(v1::LoggedIn {
                peer_id: Some(peer),
                session_token: logged.session_token,
                session_expires_at_unix_ms: session.expires_at_unix_ms,
                heartbeat_interval_ms: logged.heartbeat_interval_ms,
                resumed: had_previous && session.created_at_unix_ms < started,
            }),
        ),
        ctx,
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

fn store_unavailable(e: &quickp2p_store::StoreError) -> ErrorDetail {
    tracing::warn!(error = %e, "store error");
    reject("unavailable");
    unavailable("shared state unavailable, retry")
}

/// A validated message on its way: what every delivery path needs.
struct Outgoing {
    recipient: v1::PeerId,
    recipient_key: [u8; 32],
    dedup_key: Option<String>,
    message_id: Bytes,
    accepted_at: u64,
    event: v1::PeerEvent,
    /// When the gateway took the `SendMessage` up (for `qp_gateway_message_accept_seconds`).
    taken: std::time::Instant,
}

/// Checks a `SendMessage` against the limits and builds the event the recipient gets.
fn prepare_send(
    shared: &Shared,
    ctx: &SessionCtx,
    m: v1::SendMessage,
) -> Result<Outgoing, ErrorDetail> {
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
    let recipient = m.recipient.filter(v1::PeerId::is_valid);
    let Some((recipient, recipient_key)) =
        recipient.and_then(|r| r.public_key().ok().map(|k| (r, k)))
    else {
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
    let dedup_key = (!m.client_message_id.is_empty()).then(|| {
        format!(
            "dedup:{}:{}:{}",
            ctx.app,
            ctx.peer_hex,
            hex::encode(&m.client_message_id)
        )
    });
    let taken = std::time::Instant::now();
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
    Ok(Outgoing {
        recipient,
        recipient_key,
        dedup_key,
        message_id,
        accepted_at,
        event,
        taken,
    })
}

/// The answer to a message the recipient's gateway accepted; its dedup record goes to the store.
fn accepted(shared: &Shared, out: Outgoing) -> v1::MessageAccepted {
    if let Some(key) = out.dedup_key {
        let mut value = out.accepted_at.to_be_bytes().to_vec();
        value.extend_from_slice(&out.message_id);
        // written off the acceptance path, in batches: the record is read only by a replay,
        // which comes after a reconnect, long after this write
        crate::dedup::remember(&shared.dedup, (key, Bytes::from(value)));
    }
    metrics::counter!("qp_gateway_messages_total", "outcome" => "accepted").increment(1);
    metrics::histogram!("qp_gateway_message_accept_seconds")
        .record(out.taken.elapsed().as_secs_f64());
    v1::MessageAccepted {
        message_id: out.message_id,
        accepted_at_unix_ms: out.accepted_at,
        duplicate: false,
    }
}

fn queue_full(shared: &Shared) -> ErrorDetail {
    reject("queue_full");
    ErrorDetail {
        retry_after_ms: 100,
        limit: shared.config.limits.queue_depth as u64,
        ..error(ErrorCode::QueueFull, "the recipient's queue is full")
    }
}

fn peer_offline() -> ErrorDetail {
    reject("peer_offline");
    error(ErrorCode::PeerOffline, "the recipient is not online")
}

/// A delivery stream to `gateway` failed: forget it (unless it was only busy).
fn forget_link(shared: &Shared, gateway: &str, e: crate::remote::LinkError) {
    if e != crate::remote::LinkError::Busy {
        shared.peers.forget(gateway);
    }
    tracing::warn!(%gateway, error = %e, "delivery to another gateway failed");
}

/// A delivery stream to `gateway` failed: forget it and tell the sender to retry.
fn link_failed(shared: &Shared, gateway: &str, e: crate::remote::LinkError) -> ErrorDetail {
    forget_link(shared, gateway, e);
    reject("unavailable");
    unavailable(format!("{e}, retry"))
}

impl Session {
    /// `SendMessage` without a task of its own when the recipient's route is cached: queued here
    /// at once, or handed to the delivery stream to its gateway, whose answer becomes the
    /// peer's answer in the stream's task. Everything else (a replay window, a route to read,
    /// a stale route) takes the general path in a task.
    fn send_fast(&mut self, id: u64, m: v1::SendMessage, remote: SocketAddr) -> Step {
        let Some(ctx) = self.ctx.clone() else {
            return Step::Nothing;
        };
        if ctx.may_be_replay() {
            return self.spawn_counted(id, Request::SendMessage(m), remote);
        }
        let shared = Arc::clone(&self.shared);
        let out = match prepare_send(&shared, &ctx, m) {
            Ok(out) => out,
            Err(detail) => return Step::Reply(response(id, Res::Error(detail))),
        };
        let Some(gateway) = shared.cached_route(&ctx.app, &out.recipient_key) else {
            return self.spawn_send(id, ctx, out, false);
        };
        if *gateway == *shared.config.gateway_id {
            return match deliver_here(&shared, &ctx, &out) {
                v1::DeliveryStatus::Accepted => {
                    Step::Reply(response(id, Res::MessageAccepted(accepted(&shared, out))))
                }
                v1::DeliveryStatus::QueueFull => {
                    Step::Reply(response(id, Res::Error(queue_full(&shared))))
                }
                // the cached route is stale: read it again
                _ => self.spawn_send(id, ctx, out, true),
            };
        }
        let Some(link) = shared.peers.cached_link(&gateway) else {
            return self.spawn_send(id, ctx, out, false);
        };
        self.in_flight += 1;
        let conn = self.conn.clone();
        let (app, recipient, event) = (ctx.app.clone(), out.recipient.clone(), out.event.clone());
        let done = crate::remote::Completion::call(move |status| {
            let answer = match status {
                Ok(v1::DeliveryStatus::Accepted) => Res::MessageAccepted(accepted(&shared, out)),
                Ok(v1::DeliveryStatus::QueueFull) => Res::Error(queue_full(&shared)),
                // the peer moved, or its gateway's stream failed: the general path reads the
                // route again (as it does after a cached route fails)
                other => {
                    if let Err(e) = other {
                        forget_link(&shared, &gateway, e);
                    }
                    spawn_delivery(shared, ctx, conn, id, out, true);
                    return;
                }
            };
            conn.answer(response(id, answer));
        });
        link.submit(&app, &recipient, event, done);
        Step::Nothing
    }

    /// Delivers a prepared message in a task (the route is read from the store when `fresh`).
    fn spawn_send(&mut self, id: u64, ctx: Arc<SessionCtx>, out: Outgoing, fresh: bool) -> Step {
        self.in_flight += 1;
        let (shared, conn) = (Arc::clone(&self.shared), self.conn.clone());
        spawn_delivery(shared, ctx, conn, id, out, fresh);
        Step::Nothing
    }

    /// Runs a request in its own task, counted in flight.
    fn spawn_counted(&mut self, id: u64, body: Request, remote: SocketAddr) -> Step {
        self.in_flight += 1;
        self.spawn_request(id, body, remote);
        Step::Nothing
    }
}

/// Delivers a prepared message in a task that answers request `id` through `conn` (the route is
/// read from the store when `fresh`).
fn spawn_delivery(
    shared: Arc<Shared>,
    ctx: Arc<SessionCtx>,
    conn: ConnRef,
    id: u64,
    out: Outgoing,
    fresh: bool,
) {
    tokio::spawn(async move {
        let result = deliver_message(&shared, &ctx, out, fresh).await;
        conn.answer(response(
            id,
            result.map_or_else(Res::Error, Res::MessageAccepted),
        ));
    });
}

/// `SendMessage` the general way: a resend within the replay window is answered from its dedup
/// record; otherwise the message is delivered.
async fn send_message(
    shared: &Shared,
    ctx: &SessionCtx,
    m: v1::SendMessage,
) -> Result<v1::MessageAccepted, ErrorDetail> {
    let out = prepare_send(shared, ctx, m)?;
    if let Some(key) = &out.dedup_key
        && ctx.may_be_replay()
    {
        match shared.store.get_ephemeral(key).await {
            Ok(Some(raw)) if raw.len() > 8 => {
                let (at, id) = raw.split_at(8);
                let mut ms = [0u8; 8];
                ms.copy_from_slice(at);
                metrics::counter!("qp_gateway_messages_total", "outcome" => "duplicate")
                    .increment(1);
                return Ok(v1::MessageAccepted {
                    message_id: Bytes::copy_from_slice(id),
                    accepted_at_unix_ms: u64::from_be_bytes(ms),
                    duplicate: true,
                });
            }
            Ok(_) => {}
            Err(e) => return Err(store_unavailable(&e)),
        }
    }
    deliver_message(shared, ctx, out, false).await
}

/// Delivers a prepared message through the recipient's route (read from the store when
/// `fresh`, else from the cache); a cached route that turns out stale is read again once.
async fn deliver_message(
    shared: &Shared,
    ctx: &SessionCtx,
    out: Outgoing,
    fresh: bool,
) -> Result<v1::MessageAccepted, ErrorDetail> {
    let recipient_hex = out.recipient.to_string();
    let route = shared
        .route(&ctx.app, &out.recipient_key, &recipient_hex, fresh)
        .await
        .map_err(|e| store_unavailable(&e))?;
    let mut status = match route {
        Some(gw) => deliver_to(shared, ctx, &gw, &out).await,
        None => Ok(v1::DeliveryStatus::NotAttached),
    };
    if !fresh
        && !matches!(
            status,
            Ok(v1::DeliveryStatus::Accepted | v1::DeliveryStatus::QueueFull)
        )
    {
        status = match shared
            .route(&ctx.app, &out.recipient_key, &recipient_hex, true)
            .await
        {
            Ok(Some(gw)) => deliver_to(shared, ctx, &gw, &out).await,
            Ok(None) => return Err(peer_offline()),
            Err(e) => return Err(store_unavailable(&e)),
        };
    }
    match status? {
        v1::DeliveryStatus::Accepted => Ok(accepted(shared, out)),
        v1::DeliveryStatus::QueueFull => Err(queue_full(shared)),
        _ => Err(peer_offline()),
    }
}

/// Queues a message to a recipient attached here.
fn deliver_here(shared: &Shared, ctx: &SessionCtx, out: &Outgoing) -> v1::DeliveryStatus {
    let key = (ctx.app.clone(), out.recipient_key);
    shared
        .registry
        .deliver_status(&key, crate::remote::event_frame(out.event.clone()))
}

/// Queues a message to its recipient through gateway `gateway` (this one, or another replica's
/// Deliver service). A transport failure is an error; a stale route is `NOT_ATTACHED`.
async fn deliver_to(
    shared: &Shared,
    ctx: &SessionCtx,
    gateway: &str,
    out: &Outgoing,
) -> Result<v1::DeliveryStatus, ErrorDetail> {
    if gateway == shared.config.gateway_id {
        return Ok(deliver_here(shared, ctx, out));
    }
    let link = match shared.peers.link(gateway, &shared.config.gateway_id).await {
        Ok(Some(link)) => link,
        Ok(None) => return Ok(v1::DeliveryStatus::NotAttached),
        Err(e) => return Err(store_unavailable(&e)),
    };
    link.deliver(&ctx.app, &out.recipient, out.event.clone())
        .await
        .map_err(|e| link_failed(shared, gateway, e))
}

async fn subscribe(
    shared: &Shared,
    ctx: &SessionCtx,
    s: v1::SubscribePresence,
    conn: &ConnRef,
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
            shared.registry.watch(key.clone(), conn.clone());
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
