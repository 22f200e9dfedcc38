//! [`IndexError`]: why an index operation failed, and the one place where it becomes a gRPC
//! status. Every status carries the exact [`v1::ErrorDetail`] in the `quickp2p-error-bin`
//! metadata entry, so a gateway forwards the error to the peer unchanged (code, field, limit).

use quickp2p_proto::v1::{self, ErrorCode};
use quickp2p_store::StoreError;

/// Why an index operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// A field is malformed.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field, e.g. `filter.key`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A field or the peer's record would exceed a limit.
    #[error("{field}: {message} (limit {limit})")]
    TooLarge {
        /// The offending field.
        field: &'static str,
        /// What is too large.
        message: String,
        /// The limit in force (bytes or items, as the message says).
        limit: u64,
    },
    /// The peer is not online (publishing needs a live presence).
    #[error("{0}")]
    PeerOffline(String),
    /// The peer has no record (offline, unknown, or in another application).
    #[error("{0}")]
    NotFound(String),
    /// The shared store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl IndexError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> IndexError {
        IndexError::Invalid {
            field,
            message: message.into(),
        }
    }

    pub(crate) fn too_large(
        field: &'static str,
        message: impl Into<String>,
        limit: u64,
    ) -> IndexError {
        IndexError::TooLarge {
            field,
            message: message.into(),
            limit,
        }
    }

    /// The protocol error code of this error.
    pub fn code(&self) -> ErrorCode {
        self.detail().code()
    }

    /// The structured error a caller sees (internal details are not included).
    pub fn detail(&self) -> v1::ErrorDetail {
        match self {
            IndexError::Invalid { field, message } => v1::ErrorDetail {
                field: (*field).to_owned(),
                ..v1::ErrorDetail::new(ErrorCode::Invalid, format!("{field}: {message}"))
            },
            IndexError::TooLarge {
                field,
                message,
                limit,
            } => v1::ErrorDetail {
                field: (*field).to_owned(),
                limit: *limit,
                ..v1::ErrorDetail::new(ErrorCode::TooLarge, format!("{field}: {message}"))
            },
            IndexError::PeerOffline(m) => v1::ErrorDetail::new(ErrorCode::PeerOffline, m.clone()),
            IndexError::NotFound(m) => v1::ErrorDetail::new(ErrorCode::NotFound, m.clone()),
            IndexError::Store(e) if e.is_retryable() => v1::ErrorDetail {
                retry_after_ms: 500,
                ..v1::ErrorDetail::new(
                    ErrorCode::Unavailable,
                    "shared state is unavailable, try again",
                )
            },
            IndexError::Store(StoreError::InvalidInput { what }) => {
                v1::ErrorDetail::new(ErrorCode::Invalid, what.clone())
            }
            IndexError::Store(_) => v1::ErrorDetail::new(
                ErrorCode::Internal,
                "internal error (logged by the service)",
            ),
        }
    }
}

impl From<IndexError> for tonic::Status {
    fn from(err: IndexError) -> Self {
        let detail = err.detail();
        match detail.code() {
            ErrorCode::Internal => tracing::error!(error = %err, "index internal error"),
            ErrorCode::Unavailable => tracing::warn!(error = %err, "index: store unavailable"),
            _ => tracing::debug!(error = %err, "index request refused"),
        }
        metrics::counter!("qp_index_errors_total", "code" => code_label(detail.code()))
            .increment(1);
        tonic::Status::from(detail)
    }
}

fn code_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Invalid => "invalid",
        ErrorCode::TooLarge => "too_large",
        ErrorCode::PeerOffline => "peer_offline",
        ErrorCode::NotFound => "not_found",
        ErrorCode::Unavailable => "unavailable",
        _ => "internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickp2p_proto::v1::ErrorDetail;

    #[test]
    fn status_carries_the_exact_detail() {
        let err = IndexError::too_large("attributes", "too many", 32);
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        let detail = ErrorDetail::from_status(&status);
        assert_eq!(detail.code(), ErrorCode::TooLarge);
        assert_eq!(detail.limit, 32);
        assert_eq!(detail.field, "attributes");
        let offline = tonic::Status::from(IndexError::PeerOffline("x".into()));
        assert_eq!(
            ErrorDetail::from_status(&offline).code(),
            ErrorCode::PeerOffline
        );
        let down = IndexError::Store(StoreError::Unavailable { reason: "x".into() });
        assert_eq!(down.code(), ErrorCode::Unavailable);
        assert!(down.detail().retry_after_ms > 0);
    }
}
