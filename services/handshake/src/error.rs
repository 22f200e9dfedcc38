//! [`HandshakeError`]: why a handshake operation failed, and the one place where it becomes a
//! gRPC status. The status carries the exact [`v1::ErrorDetail`] (as the checkpoint's do), so
//! the gateway forwards it to the peer unchanged.

use quickp2p_proto::v1::{self, ErrorCode};
use quickp2p_store::StoreError;

/// Why a handshake operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A field is malformed or out of range.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field, e.g. `initiator.candidates`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The target peer is not online in the caller's application (peers of other applications
    /// look exactly like offline ones).
    #[error("{0}")]
    PeerOffline(String),
    /// The caller is not a party of the negotiation.
    #[error("{0}")]
    NotPermitted(String),
    /// The negotiation does not exist (or expired, or belongs to another application).
    #[error("{0}")]
    NotFound(String),
    /// The negotiation ended (timed out, declined, cancelled) before this call.
    #[error("{0}")]
    Expired(String),
    /// Too many negotiations for one peer, or too fast.
    #[error("{message}")]
    RateLimited {
        /// What limit was hit.
        message: String,
        /// When to try again.
        retry_after_ms: u32,
        /// The limit in force.
        limit: u64,
    },
    /// The target's outbound queue is full.
    #[error("{0}")]
    QueueFull(String),
    /// A dependency (a gateway) did not answer.
    #[error("{0}")]
    Unavailable(String),
    /// The shared store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Data in the store could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl HandshakeError {
    /// The structured error a caller sees (internal details are not included).
    pub fn detail(&self) -> v1::ErrorDetail {
        match self {
            HandshakeError::Invalid { field, message } => v1::ErrorDetail {
                field: (*field).to_owned(),
                ..v1::ErrorDetail::new(ErrorCode::Invalid, format!("{field}: {message}"))
            },
            HandshakeError::PeerOffline(m) => {
                v1::ErrorDetail::new(ErrorCode::PeerOffline, m.clone())
            }
            HandshakeError::NotPermitted(m) => {
                v1::ErrorDetail::new(ErrorCode::NotPermitted, m.clone())
            }
            HandshakeError::NotFound(m) => v1::ErrorDetail::new(ErrorCode::NotFound, m.clone()),
            HandshakeError::Expired(m) => v1::ErrorDetail::new(ErrorCode::Expired, m.clone()),
            HandshakeError::RateLimited {
                message,
                retry_after_ms,
                limit,
            } => v1::ErrorDetail {
                retry_after_ms: *retry_after_ms,
                limit: *limit,
                ..v1::ErrorDetail::new(ErrorCode::RateLimited, message.clone())
            },
            HandshakeError::QueueFull(m) => v1::ErrorDetail {
                retry_after_ms: 100,
                ..v1::ErrorDetail::new(ErrorCode::QueueFull, m.clone())
            },
            HandshakeError::Unavailable(m) => v1::ErrorDetail {
                retry_after_ms: 500,
                ..v1::ErrorDetail::new(ErrorCode::Unavailable, m.clone())
            },
            HandshakeError::Store(e) if e.is_retryable() => v1::ErrorDetail {
                retry_after_ms: 500,
                ..v1::ErrorDetail::new(
                    ErrorCode::Unavailable,
                    "shared state is unavailable, try again",
                )
            },
            HandshakeError::Store(StoreError::InvalidInput { what }) => {
                v1::ErrorDetail::new(ErrorCode::Invalid, what.clone())
            }
            HandshakeError::Store(_) | HandshakeError::Corrupt(_) => v1::ErrorDetail::new(
                ErrorCode::Internal,
                "internal error (logged by the service)",
            ),
        }
    }
}

impl From<HandshakeError> for tonic::Status {
    fn from(err: HandshakeError) -> Self {
        let detail = err.detail();
        match detail.code() {
            ErrorCode::Internal => tracing::error!(error = %err, "handshake internal error"),
            ErrorCode::Unavailable => {
                tracing::warn!(error = %err, "handshake: dependency unavailable")
            }
            _ => tracing::debug!(error = %err, "handshake request refused"),
        }
        metrics::counter!("qp_handshake_errors_total", "code" => code_label(detail.code()))
            .increment(1);
        tonic::Status::from(detail)
    }
}

/// A short metric label for an error code.
fn code_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Invalid => "invalid",
        ErrorCode::PeerOffline => "peer_offline",
        ErrorCode::NotPermitted => "not_permitted",
        ErrorCode::NotFound => "not_found",
        ErrorCode::Expired => "expired",
        ErrorCode::RateLimited => "rate_limited",
        ErrorCode::QueueFull => "queue_full",
        ErrorCode::Unavailable => "unavailable",
        _ => "internal",
    }
}
