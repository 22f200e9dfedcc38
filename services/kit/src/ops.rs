//! The operations HTTP server every quickP2P process runs (axum).
//!
//! - `GET /healthz` — liveness: 200 while the process and its runtime answer.
//! - `GET /readyz` — readiness: 200 only while every registered check passes (the store answers a
//!   ping, each listener is bound) and the process is not draining; otherwise 503. The body lists
//!   each check as `ok NAME` or `FAIL NAME: reason`, so an operator sees why.
//! - `GET /metrics` — every `metrics` counter, gauge and histogram of the process, in the
//!   Prometheus text format.
//!
//! Components register their readiness with a [`Readiness`] handle: a [`ReadyFlag`] for things
//! they know themselves (a listener is up), or a store to ping.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::Shutdown;

/// How long `/readyz` waits for the store to answer a ping.
pub const STORE_PING_TIMEOUT: Duration = Duration::from_millis(800);

/// What a process must have before it is ready to take traffic.
#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

#[derive(Default)]
struct ReadinessInner {
    checks: Mutex<Vec<(String, Check)>>,
    draining: AtomicBool,
}

#[derive(Clone)]
enum Check {
    Flag(Arc<AtomicBool>),
    Store(quickp2p_store::Store),
}

/// A readiness condition a component sets itself, e.g. "the UDP listener is bound".
#[derive(Debug, Clone)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    /// Marks the condition as met (`true`) or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
}

/// One line of a readiness report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// `None` when it passes, else why not.
    pub failure: Option<String>,
}

/// The outcome of all readiness checks at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyReport {
    /// Whether the process is shutting down (never ready again).
    pub draining: bool,
    /// Every check, in registration order.
    pub checks: Vec<CheckResult>,
}

impl ReadyReport {
    /// Ready to take traffic: not draining and every check passes.
    pub fn is_ready(&self) -> bool {
        !self.draining && self.checks.iter().all(|c| c.failure.is_none())
    }
}

impl Readiness {
    /// A new, empty set of checks (ready until something is registered).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a condition that starts unmet; the component sets it when it is ready.
    pub fn flag(&self, name: &str) -> ReadyFlag {
        let flag = Arc::new(AtomicBool::new(false));
        self.push(name, Check::Flag(flag.clone()));
        ReadyFlag(flag)
    }

    /// Registers the store: ready only while it answers a ping within [`STORE_PING_TIMEOUT`].
    pub fn watch_store(&self, name: &str, store: quickp2p_store::Store) {
        self.push(name, Check::Store(store));
    }

    /// Marks the process as shutting down: `/readyz` answers 503 from now on, so load balancers
    /// stop sending new work while in-flight work finishes.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    fn push(&self, name: &str, check: Check) {
        let mut checks = self
            .inner
            .checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        checks.push((name.to_owned(), check));
    }

    /// Runs every check now.
    pub async fn report(&self) -> ReadyReport {
        let checks = self
            .inner
            .checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut results = Vec::with_capacity(checks.len());
        for (name, check) in checks {
            let failure = match check {
                Check::Flag(flag) => (!flag.load(Ordering::Acquire)).then(|| "not up yet".into()),
                Check::Store(store) => {
                    match tokio::time::timeout(STORE_PING_TIMEOUT, store.ping()).await {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(_) => Some(format!(
                            "no answer within {} ms",
                            STORE_PING_TIMEOUT.as_millis()
                        )),
                    }
                }
            };
            results.push(CheckResult { name, failure });
        }
        ReadyReport {
            draining: self.inner.draining.load(Ordering::Acquire),
            checks: results,
        }
    }
}

/// Bucket bounds (seconds) of every histogram whose name ends in `_seconds`: from 100 µs (a
/// message through one gateway on an idle machine) to 2.5 s (a request that waited on a timeout).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The process-wide Prometheus recorder, installed on first use.
///
/// Every role in a process (one in a pod, all of them in the all-in-one supernode) records into
/// the same registry, and every `/metrics` endpoint of the process renders it. Histograms named
/// `*_seconds` are Prometheus histograms with [`LATENCY_BUCKETS`] (they add up across replicas);
/// other histograms are summaries.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .expect("LATENCY_BUCKETS is not empty, the only refusal")
                .build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %e, "another metrics recorder is installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// The bound operations server, ready to [`run`](OpsServer::run).
pub struct OpsServer {
    listener: tokio::net::TcpListener,
    state: OpsState,
}

impl OpsServer {
    /// Binds the operations server. Port 0 picks a free port (tests).
    pub async fn bind(addr: SocketAddr, readiness: Readiness) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Ok(Self::from_listener(listener, readiness))
    }

    /// Wraps an already bound listener.
    pub fn from_listener(listener: tokio::net::TcpListener, readiness: Readiness) -> Self {
        Self {
            listener,
            state: OpsState {
                readiness,
                metrics: metrics_handle(),
            },
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled. Readiness turns to draining at that moment.
    pub async fn run(self, shutdown: Shutdown) -> std::io::Result<()> {
        let readiness = self.state.readiness.clone();
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .with_state(self.state);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                shutdown.cancelled().await;
                readiness.set_draining();
            })
            .await
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    let report = state.readiness.report().await;
    let mut body = String::new();
    if report.draining {
        body.push_str("FAIL draining: shutting down\n");
    }
    for c in &report.checks {
        match &c.failure {
            None => body.push_str(&format!("ok {}\n", c.name)),
            Some(why) => body.push_str(&format!("FAIL {}: {}\n", c.name, why)),
        }
    }
    let status = if report.is_ready() {
        body.insert_str(0, "ready\n");
        StatusCode::OK
    } else {
        body.insert_str(0, "not ready\n");
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

async fn metrics_text(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let code = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = raw.split_once("\r\n\r\n").unwrap().1.to_owned();
        (code, body)
    }

    #[tokio::test]
    async fn readyz_follows_flags_store_and_draining() {
        let readiness = Readiness::new();
        readiness.watch_store("store", quickp2p_store::Store::embedded());
        let listener = readiness.flag("udp listener");
        let server = OpsServer::bind("127.0.0.1:0".parse().unwrap(), readiness.clone())
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let stop = Shutdown::new();
        let task = tokio::spawn(server.run(stop.clone()));

        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
        let (code, body) = get(addr, "/readyz").await;
        assert_eq!(code, 503);
        assert_eq!(body, "not ready\nok store\nFAIL udp listener: not up yet\n");

        listener.set(true);
        let (code, body) = get(addr, "/readyz").await;
        assert_eq!(
            (code, body.as_str()),
            (200, "ready\nok store\nok udp listener\n")
        );

        metrics::counter!("qp_test_ops_counter_total").increment(3);
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("qp_test_ops_counter_total 3"), "{body}");

        readiness.set_draining();
        let (code, body) = get(addr, "/readyz").await;
        assert_eq!(code, 503);
        assert!(body.contains("FAIL draining"), "{body}");

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("ops server stops on shutdown")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn unreachable_redis_is_not_ready_with_the_reason() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = quickp2p_store::Store::redis(quickp2p_store::RedisConfig::new(format!(
            "redis://127.0.0.1:{port}"
        )))
        .await
        .unwrap();
        let readiness = Readiness::new();
        readiness.watch_store("store", store);
        let report = readiness.report().await;
        assert!(!report.is_ready());
        assert!(report.checks[0].failure.is_some(), "{report:?}");
    }
}
