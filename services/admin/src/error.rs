//! [`AdminError`]: why an admin rpc failed, and the one place where it becomes a gRPC status.
//! Application management errors keep the checkpoint's own mapping (with its `ErrorDetail`);
//! errors of an upstream role (index, gateway) are passed on with their code; store errors go
//! through the service kit's [`ServiceError`].

use quickp2p_checkpoint::CheckpointError;
use quickp2p_service_kit::ServiceError;
use quickp2p_store::StoreError;

/// Why an admin rpc failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// No token, a malformed one, or an unknown one.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token without the access the rpc needs.
    #[error("{message}")]
    PermissionDenied {
        /// The token's name.
        caller: String,
        /// Why.
        message: String,
    },
    /// A field is malformed or out of range.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The peer or object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A gateway or the index answered with an error (passed on with its code).
    #[error("{what}: {status}")]
    Upstream {
        /// Which call.
        what: String,
        /// Its status.
        status: tonic::Status,
    },
    /// Application management failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The shared store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Data in the store could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl AdminError {
    /// An invalid-argument error.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> AdminError {
        AdminError::Invalid {
            field,
            message: message.into(),
        }
    }
}

impl From<AdminError> for tonic::Status {
    fn from(err: AdminError) -> Self {
        match err {
            AdminError::Unauthenticated(m) => {
                metrics::counter!("qp_admin_refused_total", "why" => "unauthenticated")
                    .increment(1);
                tonic::Status::unauthenticated(m)
            }
            AdminError::PermissionDenied { caller, message } => {
                metrics::counter!("qp_admin_refused_total", "why" => "permission_denied")
                    .increment(1);
                tracing::info!(caller = %caller, "admin write refused to a read-only token");
                tonic::Status::permission_denied(message)
            }
            AdminError::Invalid { field, message } => {
                ServiceError::InvalidArgument(format!("{field}: {message}")).into()
            }
            AdminError::NotFound(m) => ServiceError::NotFound(m).into(),
            AdminError::Upstream { what, status } => {
                tracing::warn!(call = %what, code = ?status.code(), message = status.message(), "upstream call failed");
                tonic::Status::new(status.code(), format!("{what}: {}", status.message()))
            }
            AdminError::Checkpoint(e) => e.into(),
            AdminError::Store(e) => ServiceError::Store(e).into(),
            AdminError::Corrupt(m) => ServiceError::Internal(m).into(),
        }
    }
}
