//! [`CheckpointError`]: why a checkpoint operation failed, and the one place where it becomes a
//! gRPC status. Every status carries the exact [`v1::ErrorDetail`] in the `quickp2p-error-bin`
//! metadata entry, so the gateway forwards the error to the peer unchanged (e.g. `EXPIRED` and
//! `PEER_OFFLINE` share a gRPC code and only the detail tells them apart).

use quickp2p_proto::v1::{self, ErrorCode};
use quickp2p_store::StoreError;

/// Why a checkpoint operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A field is malformed or out of range.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field, e.g. `login.public_key`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The caller did not prove who it is: bad signature, wrong app credential, unknown or
    /// replayed challenge, unknown application.
    #[error("{0}")]
    Unauthenticated(String),
    /// Proven but not allowed (a revoked application).
    #[error("{0}")]
    NotPermitted(String),
    /// The named application or secret does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The session or challenge has expired.
    #[error("{0}")]
    Expired(String),
    /// A limit was reached (e.g. 4 active secrets).
    #[error("{0}")]
    TooMany(String),
    /// The shared store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Data in the store could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl CheckpointError {
    /// The structured error a caller sees (internal details are not included).
    pub fn detail(&self) -> v1::ErrorDetail {
        match self {
            CheckpointError::Invalid { field, message } => v1::ErrorDetail {
                field: (*field).to_owned(),
                ..v1::ErrorDetail::new(ErrorCode::Invalid, format!("{field}: {message}"))
            },
            CheckpointError::Unauthenticated(m) => {
                v1::ErrorDetail::new(ErrorCode::Unauthenticated, m.clone())
            }
            CheckpointError::NotPermitted(m) => {
                v1::ErrorDetail::new(ErrorCode::NotPermitted, m.clone())
            }
            CheckpointError::NotFound(m) => v1::ErrorDetail::new(ErrorCode::NotFound, m.clone()),
            CheckpointError::AlreadyExists(m) => {
                v1::ErrorDetail::new(ErrorCode::AlreadyExists, m.clone())
            }
            CheckpointError::Expired(m) => v1::ErrorDetail::new(ErrorCode::Expired, m.clone()),
            CheckpointError::TooMany(m) => v1::ErrorDetail::new(ErrorCode::TooLarge, m.clone()),
            CheckpointError::Store(e) if e.is_retryable() => v1::ErrorDetail {
                retry_after_ms: 500,
                ..v1::ErrorDetail::new(
                    ErrorCode::Unavailable,
                    "shared state is unavailable, try again",
                )
            },
            CheckpointError::Store(StoreError::InvalidInput { what }) => {
                v1::ErrorDetail::new(ErrorCode::Invalid, what.clone())
            }
            CheckpointError::Store(_) | CheckpointError::Corrupt(_) => v1::ErrorDetail::new(
                ErrorCode::Internal,
                "internal error (logged by the service)",
            ),
        }
    }
}

impl From<CheckpointError> for tonic::Status {
    fn from(err: CheckpointError) -> Self {
        let detail = err.detail();
        match detail.code() {
            ErrorCode::Internal => tracing::error!(error = %err, "checkpoint internal error"),
            ErrorCode::Unavailable => tracing::warn!(error = %err, "checkpoint: store unavailable"),
            _ => tracing::debug!(error = %err, "checkpoint request refused"),
        }
        metrics::counter!("qp_checkpoint_errors_total", "code" => code_label(detail.code()))
            .increment(1);
        tonic::Status::from(detail)
    }
}

/// A short metric label for an error code.
pub(crate) fn code_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Invalid => "invalid",
        ErrorCode::Unauthenticated => "unauthenticated",
        ErrorCode::NotPermitted => "not_permitted",
        ErrorCode::NotFound => "not_found",
        ErrorCode::AlreadyExists => "already_exists",
        ErrorCode::Expired => "expired",
        ErrorCode::TooLarge => "too_large",
        ErrorCode::Unavailable => "unavailable",
        _ => "internal",
    }
}
