//! [`StoreError`]: the one error type of every store operation, whatever the backend.
//!
//! The variants are chosen so that the service kit can map them to gRPC status codes in one
//! place: `Unavailable`/`Timeout` → `UNAVAILABLE`/`DEADLINE_EXCEEDED` (retryable), `Conflict` →
//! `ALREADY_EXISTS`, `NotFound` → `NOT_FOUND`, `InvalidInput` → `INVALID_ARGUMENT`, the rest →
//! `INTERNAL`.

use std::time::Duration;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend cannot be reached or cannot serve right now (connection refused or lost,
    /// cluster down, fail-over in progress, server still loading). The store reconnects by
    /// itself; retry later.
    #[error("store unavailable: {reason}")]
    Unavailable {
        /// What the backend or the connection reported.
        reason: String,
    },
    /// The backend did not answer within the configured command timeout. The operation may or
    /// may not have been applied.
    #[error("store operation `{op}` timed out after {after:?}")]
    Timeout {
        /// The store operation that timed out.
        op: &'static str,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// A conditional write found the target already present (e.g. [`crate::Store::create_app`]
    /// for an existing application id).
    #[error("conflict: {what}")]
    Conflict {
        /// What already exists.
        what: String,
    },
    /// The operation needs something that does not exist, e.g. publishing attributes for a peer
    /// that is not online.
    #[error("not found: {what}")]
    NotFound {
        /// What is missing.
        what: String,
    },
    /// Data read from the backend could not be decoded (written by an incompatible version, or
    /// changed by hand).
    #[error("corrupt data at `{key}`: {reason}")]
    Corrupt {
        /// The key (or key family) holding the data.
        key: String,
        /// The decoding error.
        reason: String,
    },
    /// The caller passed an invalid argument: empty or oversized id, forbidden character, zero
    /// TTL, malformed cursor, etc. Retrying the same call fails again.
    #[error("invalid input: {what}")]
    InvalidInput {
        /// Which argument is wrong and why.
        what: String,
    },
    /// The store configuration is invalid (bad URL, empty key prefix, zero timeout).
    #[error("invalid store configuration: {reason}")]
    Config {
        /// What is wrong with the configuration.
        reason: String,
    },
    /// The backend returned an error the store does not expect (script error, permission
    /// denied, protocol error). Usually a bug or a misconfigured server.
    #[error("store backend error: {reason}")]
    Backend {
        /// The backend's error message.
        reason: String,
    },
}

impl StoreError {
    /// True when the same call may succeed later without any change by the caller
    /// ([`StoreError::Unavailable`] and [`StoreError::Timeout`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }

    pub(crate) fn invalid(what: impl Into<String>) -> Self {
        Self::InvalidInput { what: what.into() }
    }

    pub(crate) fn corrupt(key: impl Into<String>, reason: impl ToString) -> Self {
        Self::Corrupt {
            key: key.into(),
            reason: reason.to_string(),
        }
    }
}
