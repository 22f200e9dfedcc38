//! [`v1::ErrorDetail`] ↔ [`tonic::Status`]: the gRPC status code of each [`v1::ErrorCode`] (as
//! documented in `common.proto`) and the `quickp2p-error-bin` metadata entry that carries the whole
//! encoded `ErrorDetail` through a gRPC hop, so a gateway forwards a role service's error to the peer
//! unchanged. The service kit's single error → status mapping builds on these.

use bytes::Bytes;
use prost::Message;
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::v1::{self, ErrorCode};

/// The binary gRPC metadata key carrying an encoded [`v1::ErrorDetail`].
pub const ERROR_DETAIL_METADATA_KEY: &str = "quickp2p-error-bin";

impl ErrorCode {
    /// The gRPC status code that stands for this error code.
    pub fn grpc_code(self) -> Code {
        match self {
            ErrorCode::Unspecified => Code::Unknown,
            ErrorCode::Invalid => Code::InvalidArgument,
            ErrorCode::Unauthenticated => Code::Unauthenticated,
            ErrorCode::NotPermitted => Code::PermissionDenied,
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::PeerOffline | ErrorCode::Expired => Code::FailedPrecondition,
            ErrorCode::TooLarge => Code::OutOfRange,
            ErrorCode::RateLimited | ErrorCode::QueueFull => Code::ResourceExhausted,
            ErrorCode::Unsupported => Code::Unimplemented,
            ErrorCode::AlreadyExists => Code::AlreadyExists,
            ErrorCode::Timeout => Code::DeadlineExceeded,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::Internal => Code::Internal,
        }
    }

    /// The closest error code for a gRPC status code that came without an `ErrorDetail`.
    pub fn from_grpc_code(code: Code) -> Self {
        match code {
            Code::InvalidArgument | Code::FailedPrecondition => ErrorCode::Invalid,
            Code::Unauthenticated => ErrorCode::Unauthenticated,
            Code::PermissionDenied => ErrorCode::NotPermitted,
            Code::NotFound => ErrorCode::NotFound,
            Code::OutOfRange => ErrorCode::TooLarge,
            Code::ResourceExhausted => ErrorCode::RateLimited,
            Code::Unimplemented => ErrorCode::Unsupported,
            Code::AlreadyExists => ErrorCode::AlreadyExists,
            Code::DeadlineExceeded => ErrorCode::Timeout,
            Code::Unavailable | Code::Cancelled | Code::Aborted => ErrorCode::Unavailable,
            Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => ErrorCode::Internal,
        }
    }
}

impl v1::ErrorDetail {
    /// An error with a code and a human-readable message (no retry advice, field or limit).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code as i32,
            message: message.into(),
            ..Self::default()
        }
    }

    /// The error a gRPC status stands for: the `quickp2p-error-bin` entry when present and valid,
    /// otherwise one built from the status code and message.
    pub fn from_status(status: &tonic::Status) -> Self {
        status
            .metadata()
            .get_bin(ERROR_DETAIL_METADATA_KEY)
            .and_then(|value| value.to_bytes().ok())
            .and_then(|bytes| Self::decode(bytes).ok())
            .unwrap_or_else(|| {
                Self::new(
                    ErrorCode::from_grpc_code(status.code()),
                    status.message().to_owned(),
                )
            })
    }
}

/// A status with the error code's gRPC code, the message, and the whole `ErrorDetail` in the
/// `quickp2p-error-bin` metadata entry.
impl From<v1::ErrorDetail> for tonic::Status {
    fn from(detail: v1::ErrorDetail) -> Self {
        let mut status = tonic::Status::new(detail.code().grpc_code(), detail.message.clone());
        status.metadata_mut().insert_bin(
            ERROR_DETAIL_METADATA_KEY,
            MetadataValue::from_bytes(&Bytes::from(detail.encode_to_vec())),
        );
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_detail_survives_a_grpc_hop() {
        let detail = v1::ErrorDetail {
            code: ErrorCode::QueueFull as i32,
            message: "recipient queue full".into(),
            retry_after_ms: 250,
            field: String::new(),
            limit: 1024,
        };
        let status = tonic::Status::from(detail.clone());
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "recipient queue full");
        assert_eq!(v1::ErrorDetail::from_status(&status), detail);
    }

    #[test]
    fn plain_status_maps_by_code() {
        let status = tonic::Status::unauthenticated("no token");
        let detail = v1::ErrorDetail::from_status(&status);
        assert_eq!(detail.code(), ErrorCode::Unauthenticated);
        assert_eq!(detail.message, "no token");
    }

    #[test]
    fn unambiguous_codes_round_trip_through_grpc_codes() {
        for code in [
            ErrorCode::Invalid,
            ErrorCode::Unauthenticated,
            ErrorCode::NotPermitted,
            ErrorCode::NotFound,
            ErrorCode::TooLarge,
            ErrorCode::RateLimited,
            ErrorCode::Unsupported,
            ErrorCode::AlreadyExists,
            ErrorCode::Timeout,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            assert_eq!(ErrorCode::from_grpc_code(code.grpc_code()), code);
        }
    }
}
