//! The errors of the relay client: [`TurnError`] from the sans-IO core (why a TURN transaction
//! failed), [`RelayError`] from the async [`RelayClient`](super::RelayClient).

use std::io;
use std::net::{IpAddr, SocketAddr};

/// Why a TURN transaction failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// No answer before the transaction timeout.
    #[error("no answer from the TURN server in time")]
    Timeout,
    /// The server refused our credentials (401 to an authenticated request, or 441).
    #[error("the TURN server refused the credentials ({code})")]
    Unauthorized {
        /// 401 or 441.
        code: u16,
    },
    /// Any other error response, e.g. 403 (peer address denied), 486 (quota), 508 (capacity or
    /// draining), 437 (allocation mismatch).
    #[error("the TURN server answered {code} {reason}")]
    Rejected {
        /// The error code.
        code: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// A success response without the attributes it must carry.
    #[error("malformed response from the TURN server: {0}")]
    Malformed(&'static str),
}

/// Why a local call cannot be made now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// There is no allocation (yet, or any more).
    #[error("there is no TURN allocation")]
    NotAllocated,
    /// No permission is installed for the peer's IP: call `create_permission` (or `bind_channel`)
    /// first.
    #[error("no permission is installed for {0}")]
    NoPermission(IpAddr),
    /// Every channel number is in use.
    #[error("all channel numbers are in use")]
    ChannelsExhausted,
    /// More than 65535 bytes of data.
    #[error("{0} bytes do not fit one TURN datagram")]
    TooLarge(usize),
}

/// Why a [`RelayClient`](super::RelayClient) call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The UDP socket failed.
    #[error("UDP socket error: {0}")]
    Socket(#[from] io::Error),
    /// A TURN transaction failed.
    #[error("TURN server {server}: {error}")]
    Turn {
        /// The server.
        server: SocketAddr,
        /// What failed.
        #[source]
        error: TurnError,
    },
    /// The call needs something the client does not have.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The allocation ended (a refresh failed or the server forgot it).
    #[error("the TURN allocation on {server} was lost: {error}")]
    AllocationLost {
        /// The server.
        server: SocketAddr,
        /// The failed refresh.
        error: TurnError,
    },
    /// The client's task stopped (the client was closed, or the feed dropped in feed mode).
    #[error("the relay client has stopped")]
    Closed,
}
