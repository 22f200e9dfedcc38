//! [`NatReportError`]: everything that can keep [`nat_report`](super::nat_report)
//! from producing a report.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use quickp2p_wire::nat::UnknownReason;

/// Why a NAT report could not be made.
///
/// A report in which only *some* tests failed (say, the server does not support
/// RFC 5780, or the time limit ran out during the filtering tests) is not an
/// error: those behaviours are [`Unknown`](super::MappingBehaviour::Unknown) with a
/// reason. Errors are for when nothing useful was learnt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatReportError {
    /// The STUN server's host name could not be resolved.
    #[error("cannot resolve STUN server {host}: {source}")]
    Resolve {
        /// The host as given.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The host name resolved, but to no address of the socket's family.
    #[error("STUN server {host} has no {family} address (the socket is bound to {local})")]
    NoUsableAddress {
        /// The host as given.
        host: String,
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// The socket's local address.
        local: SocketAddr,
    },
    /// The UDP socket failed (other than ICMP errors, which count as loss).
    #[error("UDP socket error: {0}")]
    Socket(#[from] io::Error),
    /// The STUN server did not answer the first Binding request in time.
    #[error(
        "STUN server {server} did not answer within {:.1} s: is the STUN server up, and is UDP to it allowed (firewall, port)?{}",
        waited.as_secs_f64(),
        last_send_error.as_ref().map(|e| format!(" (sending failed: {e})")).unwrap_or_default()
    )]
    Unreachable {
        /// The server's address.
        server: SocketAddr,
        /// How long we waited.
        waited: Duration,
        /// The last error sending to it, if sending failed.
        last_send_error: Option<io::Error>,
    },
    /// The STUN server answered, but not usefully (an error response, or no
    /// mapped address).
    #[error("STUN server {server} failed: {reason}")]
    ServerFailed {
        /// The server's address.
        server: SocketAddr,
        /// What went wrong.
        reason: UnknownReason,
    },
}
