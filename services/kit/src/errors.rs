//! The one place where service errors become gRPC statuses.
//!
//! Role services return [`ServiceError`] (or an error that converts into it) from their handlers;
//! `From<ServiceError> for tonic::Status` decides the gRPC code, the message the caller sees and
//! the `retry-after-ms` metadata, and counts the error in `qp_grpc_errors_total{code}`. Internal
//! details (a store's connection error, a bug) are logged here and never sent to callers.

use std::time::Duration;

use quickp2p_store::StoreError;
use tonic::{Code, Status};

/// Metadata key carrying how long a caller should wait before retrying, in milliseconds.
pub const RETRY_AFTER_METADATA: &str = "retry-after-ms";

/// What went wrong while a role served a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The request is malformed or a value is out of range; retrying it unchanged cannot work.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The thing asked for does not exist (or is not visible to this caller's application).
    #[error("not found: {0}")]
    NotFound(String),
    /// The thing to create exists already.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The caller did not prove who it is (bad credential, expired session, bad signature).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A limit was reached (rate, quota, queue depth, size).
    #[error("{what}")]
    ResourceExhausted {
        /// Which limit, said so that the caller understands it.
        what: String,
        /// When trying again may succeed.
        retry_after: Option<Duration>,
    },
    /// The system is not in a state that allows this (e.g. the target peer is offline).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A dependency is down or the process is draining; the same request may succeed later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The shared store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug or an unexpected state; details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::ResourceExhausted { .. } => Code::ResourceExhausted,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Store(e) => store_code(e),
            Self::Internal(_) => Code::Internal,
        }
    }
}

/// Store failures as the caller should see them: a store that cannot be reached is a retryable
/// `UNAVAILABLE`, a conditional write that found its target is `ALREADY_EXISTS`, bad input is the
/// caller's, anything else (corrupt data, backend or configuration errors) is internal.
fn store_code(e: &StoreError) -> Code {
    match e {
        StoreError::Unavailable { .. } => Code::Unavailable,
        StoreError::Timeout { .. } => Code::DeadlineExceeded,
        StoreError::Conflict { .. } => Code::AlreadyExists,
        StoreError::NotFound { .. } => Code::NotFound,
        StoreError::InvalidInput { .. } => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        let code = err.code();
        metrics::counter!("qp_grpc_errors_total", "code" => format!("{code:?}")).increment(1);
        let message = match (&err, code) {
            (_, Code::Internal) => {
                tracing::error!(error = %err, "internal error while serving a request");
                "internal error (logged by the service)".to_owned()
            }
            (ServiceError::Store(e), _) => {
                tracing::warn!(error = %e, "store error while serving a request");
                match code {
                    Code::Unavailable => "shared state is unavailable, try again".to_owned(),
                    Code::DeadlineExceeded => "shared state did not answer in time".to_owned(),
                    _ => e.to_string(),
                }
            }
            _ => err.to_string(),
        };
        let mut status = Status::new(code, message);
        if let ServiceError::ResourceExhausted {
            retry_after: Some(after),
            ..
        } = &err
            && let Ok(v) = after.as_millis().to_string().parse()
        {
            status.metadata_mut().insert(RETRY_AFTER_METADATA, v);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let s: Status = ServiceError::NotFound("peer abc".into()).into();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "not found: peer abc");

        let s: Status = ServiceError::ResourceExhausted {
            what: "rate limit of 50 requests/s reached".into(),
            retry_after: Some(Duration::from_millis(250)),
        }
        .into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "rate limit of 50 requests/s reached");
        assert_eq!(
            s.metadata()
                .get(RETRY_AFTER_METADATA)
                .unwrap()
                .to_str()
                .unwrap(),
            "250"
        );
    }

    #[test]
    fn store_errors_map_to_retryable_codes_without_details() {
        let s: Status = ServiceError::Store(StoreError::Unavailable {
            reason: "Connection refused (os error 111) at 10.0.0.7:6379".into(),
        })
        .into();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.message().contains("10.0.0.7"), "{}", s.message());
        let s: Status = ServiceError::Store(StoreError::Conflict {
            what: "application acme".into(),
        })
        .into();
        assert_eq!(s.code(), Code::AlreadyExists);
    }

    #[test]
    fn internal_details_are_not_sent() {
        let s: Status = ServiceError::Internal("index 7 out of range in slot table".into()).into();
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("slot table"), "{}", s.message());
    }
}
