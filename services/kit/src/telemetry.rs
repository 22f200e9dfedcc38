//! Logs, traces and trace-context propagation.
//!
//! [`init`] installs the process-wide `tracing` subscriber: an `EnvFilter`, a text or JSON log
//! layer, and — when an OTLP endpoint is configured — a `tracing-opentelemetry` layer exporting
//! spans over OTLP/gRPC in batches. The returned [`Telemetry`] guard flushes pending spans when
//! dropped.
//!
//! One peer request is one trace across processes: gRPC clients attach
//! [`inject_trace_context`] as an interceptor, which writes the current span's context into the
//! request metadata as a W3C `traceparent` header, and gRPC servers add [`GrpcTraceLayer`], which
//! opens a server span per call whose parent is the context found in the request headers.

use std::task::{Context as TaskContext, Poll};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, ServiceConfig};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (bad endpoint).
    #[error("cannot build the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// The exporter's reason.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The log filter does not parse.
    #[error("invalid log filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// A global subscriber was already installed in this process.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the trace pipeline alive; flushes and shuts it down when dropped.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("trace export did not shut down cleanly: {e}");
        }
    }
}

/// Installs logging (and OTLP trace export when configured) for this process.
pub fn init(cfg: &ServiceConfig) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_filter)?;
    let provider = match &cfg.otlp_endpoint {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|source| TelemetryError::Exporter {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.instance.id",
                    cfg.replica_id.clone(),
                ))
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(cfg.service_name.clone())));
    // Logs go to stderr: stdout carries what a process prints for people and scripts (the
    // addresses it listens on), and must not interleave with log lines.
    let (text, json) = match cfg.log_format {
        LogFormat::Text => (
            Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(otel_layer)
        .try_init()?;
    Ok(Telemetry { provider })
}

/// Writes the context of the current `tracing` span into gRPC request metadata.
///
/// Use it as a tonic interceptor: `XClient::with_interceptor(channel, inject_trace_context)`.
/// A request made outside any traced span carries no `traceparent` and starts a new trace at the
/// server.
#[allow(clippy::result_large_err)] // the signature tonic's interceptors require
pub fn inject_trace_context(
    mut request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new()
        .inject_context(&cx, &mut MetadataInjector(request.metadata_mut()));
    Ok(request)
}

/// The W3C `traceparent` of the current `tracing` span, empty when it is not traced: for trace
/// context carried inside a message (one item of a long-lived stream) instead of call metadata.
pub fn current_traceparent() -> String {
    let cx = tracing::Span::current().context();
    let mut carrier = TraceparentCarrier(String::new());
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.0
}

/// Makes `span` a child of the trace a `traceparent` value names (nothing when it is empty or
/// invalid).
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&TraceparentCarrier(traceparent.to_owned()));
    let _ = span.set_parent(cx);
}

/// Holds only the `traceparent` header (trace state is not carried).
struct TraceparentCarrier(String);

impl Injector for TraceparentCarrier {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = value;
        }
    }
}

impl Extractor for TraceparentCarrier {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The trace context carried by incoming HTTP/gRPC headers (empty when there is none).
pub fn extract_trace_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Tower layer for tonic servers: one `grpc` server span per call, child of the caller's trace.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTraceLayer;

impl<S> tower::Layer<S> for GrpcTraceLayer {
    type Service = GrpcTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTrace { inner }
    }
}

/// The service made by [`GrpcTraceLayer`].
#[derive(Debug, Clone)]
pub struct GrpcTrace<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcTrace<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", path));
        let span = tracing::info_span!(
            "grpc",
            otel.name = %path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
        );
        let parent = extract_trace_context(request.headers());
        // A span whose subscriber has no OpenTelemetry layer has no context to set: ignore.
        let _ = span.set_parent(parent);
        self.inner.call(request).instrument(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    /// A client call made inside a span and a server handling it produce one trace: the server's
    /// `grpc` span has the client span as its parent.
    #[tokio::test(flavor = "current_thread")]
    async fn trace_context_crosses_grpc() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _guard = tracing::subscriber::set_default(subscriber);

        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = crate::Shutdown::new();
        let server = tokio::spawn({
            let stop = stop.clone();
            async move {
                tonic::transport::Server::builder()
                    .layer(GrpcTraceLayer)
                    .add_service(health)
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener),
                        stop.cancelled_owned(),
                    )
                    .await
            }
            .in_current_span()
        });

        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = tonic_health::pb::health_client::HealthClient::with_interceptor(
            channel,
            inject_trace_context,
        );
        let client_span = tracing::info_span!("client-call");
        let client_cx = client_span.context();
        let client_trace = client_cx.span().span_context().trace_id();
        let client_span_id = client_cx.span().span_context().span_id();
        let reply = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .instrument(client_span)
            .await
            .unwrap();
        assert_eq!(reply.into_inner().status, 1, "SERVING");
        stop.cancel();
        server.await.unwrap().unwrap();
        provider.force_flush().unwrap();

        let spans = exporter.get_finished_spans().unwrap();
        let server_span = spans
            .iter()
            .find(|s| s.name == "/grpc.health.v1.Health/Check")
            .unwrap_or_else(|| {
                panic!(
                    "no server span among {:?}",
                    spans.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            });
        assert_eq!(server_span.span_context.trace_id(), client_trace);
        assert_eq!(server_span.parent_span_id, client_span_id);
    }

    #[test]
    fn no_traceparent_without_a_span_context() {
        let req = inject_trace_context(tonic::Request::new(())).unwrap();
        assert!(req.metadata().get("traceparent").is_none());
    }
}
