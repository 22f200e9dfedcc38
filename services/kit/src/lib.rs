//! The service kit: what every quickP2P role process shares, so each role's crate holds only its
//! own protocol logic.
//!
//! - [`config`]: typed configuration from flags and `QP_*` environment variables, with every bad
//!   value reported at once, by name.
//! - [`telemetry`]: tracing logs (text or JSON), OpenTelemetry traces exported over OTLP when
//!   `QP_OTLP_ENDPOINT` is set, and trace-context propagation through gRPC metadata.
//! - [`ops`]: the axum operations server every process runs: `/healthz`, `/readyz` (reflects the
//!   store and listeners) and `/metrics` (Prometheus text).
//! - [`shutdown`]: SIGTERM/SIGINT handling and the drain token passed to every `run` function.
//! - [`errors`]: the one place where service errors become `tonic::Status`.
//! - [`discovery`]: the addresses a process advertises and its partner's, from flags or (feature
//!   `kubernetes`, on by default) from its Service and nodes in the Kubernetes API.

pub mod config;
pub mod discovery;
pub mod errors;
pub mod ops;
pub mod shutdown;
pub mod telemetry;

pub use config::{ConfigError, FieldErrors, ServiceArgs, ServiceConfig};
pub use errors::ServiceError;
pub use ops::{OpsServer, Readiness, ReadyFlag};
pub use shutdown::Shutdown;
