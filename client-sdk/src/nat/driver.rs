//! The async driver: runs the sans-IO [`NatDiscovery`] on a tokio UDP socket.
//!
//! One loop: send every due [`Transmit`](quickp2p_wire::nat::Transmit), then wait
//! for either a datagram (offered to the machine; unclaimed ones are passed on)
//! or the machine's next timer. Time comes from `tokio::time::Instant`, so tests
//! with a paused clock work too.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use quickp2p_wire::nat::{NatDiscovery, NatDiscoveryConfig, NatReport, UnknownReason};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::NatReportError;

/// A datagram that arrived on the socket during a report and was not part of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnclaimedDatagram {
    /// Its source.
    pub from: SocketAddr,
    /// Its bytes.
    pub payload: Vec<u8>,
}

/// How [`nat_report`] runs.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct NatReportOptions {
    /// Timers, retransmissions, which tests run and an optional overall limit
    /// (see [`NatDiscoveryConfig`] for the default budget).
    pub discovery: NatDiscoveryConfig,
    /// The socket's address as seen on this host, used to tell "no NAT". Default:
    /// the socket's local address, with a wildcard IP replaced by the source
    /// address the host's routing table picks toward the server.
    pub local_address: Option<SocketAddr>,
    /// Where datagrams that are not part of the report go (see the
    /// [module docs](super#sharing-the-socket)). Sent with `try_send`: a full or
    /// closed channel drops the datagram and logs a warning.
    pub unclaimed: Option<mpsc::Sender<UnclaimedDatagram>>,
}

impl NatReportOptions {
    /// Limits the whole report to `timeout` (tests still running then are
    /// reported as unknown; no answer at all is [`NatReportError::Unreachable`]).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> NatReportOptions {
        self.discovery.max_duration = timeout;
        self
    }

    /// Uses `config` for timers and tests.
    pub fn with_discovery(mut self, config: NatDiscoveryConfig) -> NatReportOptions {
        self.discovery = config;
        self
    }

    /// Forwards unclaimed datagrams to `sender`.
    pub fn with_unclaimed(mut self, sender: mpsc::Sender<UnclaimedDatagram>) -> NatReportOptions {
        self.unclaimed = Some(sender);
        self
    }

    /// Overrides the local address discovery compares mappings with.
    pub fn with_local_address(mut self, local: SocketAddr) -> NatReportOptions {
        self.local_address = Some(local);
        self
    }
}

/// Measures the NAT in front of `socket` with RFC 5780 behaviour discovery
/// against the STUN server whose primary address is `stun`.
///
/// `socket` is the peer's one socket; while this runs it must be its only
/// reader. Datagrams that are not answers to the report go to
/// [`NatReportOptions::unclaimed`] (or are dropped with a log line when it is not
/// set). Errors: [`NatReportError::Unreachable`] when the server never answers,
/// [`NatReportError::ServerFailed`] when its answer is an error,
/// [`NatReportError::Socket`] when the socket fails.
pub async fn nat_report(
    socket: &UdpSocket,
    stun: SocketAddr,
    options: NatReportOptions,
) -> Result<NatReport, NatReportError> {
    let unclaimed = options.unclaimed.clone();
    let mut dropped: u64 = 0;
    let result = nat_report_with(socket, stun, options, |from, payload| {
        let Some(sender) = &unclaimed else {
            dropped += 1;
            tracing::debug!(%from, len = payload.len(), "NAT report: dropping a datagram that is not ours (no unclaimed channel)");
            return;
        };
        let datagram = UnclaimedDatagram {
            from,
            payload: payload.to_vec(),
        };
        if let Err(error) = sender.try_send(datagram) {
            dropped += 1;
            tracing::warn!(%from, %error, "NAT report: dropping a datagram that is not ours");
        }
    })
    .await;
    if dropped > 0 {
        tracing::debug!(dropped, "NAT report: unclaimed datagrams dropped");
    }
    result
}

/// Like [`nat_report`], but hands every datagram that is not part of the report
/// to `on_unclaimed` (source, bytes) as it arrives; [`NatReportOptions::unclaimed`]
/// is not used.
pub async fn nat_report_with<F>(
    socket: &UdpSocket,
    stun: SocketAddr,
    options: NatReportOptions,
    mut on_unclaimed: F,
) -> Result<NatReport, NatReportError>
where
    F: FnMut(SocketAddr, &[u8]),
{
    let bound = socket.local_addr()?;
    let local = options
        .local_address
        .unwrap_or_else(|| route_source(bound, stun));
    let server = SocketAddr::new(stun.ip().to_canonical(), stun.port());
    let mut discovery = NatDiscovery::new(
        server,
        local,
        options.discovery,
        rand::random(),
        Instant::now().into_std(),
    );
    tracing::debug!(%server, %local, "NAT report: starting");
    let mut buffer = vec![0u8; 65_536];
    let mut last_send_error: Option<io::Error> = None;
    loop {
        let now = Instant::now().into_std();
        while let Some(transmit) = discovery.poll_transmit(now) {
            let Some(destination) = reachable_from(bound, transmit.destination) else {
                tracing::debug!(destination = %transmit.destination, "NAT report: address family not reachable from this socket");
                continue;
            };
            if let Err(error) = socket.send_to(&transmit.payload, destination).await {
                // a failed send is a lost request: the schedule retransmits
                tracing::debug!(%destination, %error, "NAT report: send failed");
                last_send_error = Some(error);
            }
        }
        if discovery.is_done() {
            break;
        }
        let Some(deadline) = discovery.poll_timeout() else {
            break;
        };
        tokio::select! {
            received = socket.recv_from(&mut buffer) => match received {
                Ok((len, from)) => {
                    let datagram = buffer.get(..len).unwrap_or_default();
                    let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                    if !discovery.handle_datagram(from, datagram, Instant::now().into_std()) {
                        on_unclaimed(from, datagram);
                    }
                }
                // ICMP errors reported on the socket (Windows, or IP_RECVERR) are loss
                Err(error) if is_icmp_error(&error) => {
                    tracing::debug!(%error, "NAT report: ICMP error on the socket");
                }
                Err(error) => return Err(NatReportError::Socket(error)),
            },
            () = tokio::time::sleep_until(Instant::from_std(deadline)) => {
                discovery.handle_timeout(Instant::now().into_std());
            }
        }
    }
    let Some(report) = discovery.into_result() else {
        return Err(NatReportError::Unreachable {
            server,
            waited: Duration::ZERO,
            last_send_error,
        });
    };
    tracing::debug!(?report, "NAT report: done");
    if report.public_address.is_none() {
        return Err(match report.mapping.unknown_reason() {
            Some(
                reason @ (UnknownReason::ServerError { .. } | UnknownReason::MalformedResponse),
            ) => NatReportError::ServerFailed {
                server,
                reason: reason.clone(),
            },
            _ => NatReportError::Unreachable {
                server,
                waited: report.duration,
                last_send_error,
            },
        });
    }
    Ok(report)
}

fn is_icmp_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// `destination` in the form a socket bound at `bound` can send to: IPv4 as
/// IPv4-mapped IPv6 on an IPv6 socket; `None` for IPv6 on an IPv4 socket.
fn reachable_from(bound: SocketAddr, destination: SocketAddr) -> Option<SocketAddr> {
    match (bound.ip(), destination.ip()) {
        (IpAddr::V6(_), IpAddr::V4(ip)) => Some(SocketAddr::new(
            IpAddr::V6(ip.to_ipv6_mapped()),
            destination.port(),
        )),
        (IpAddr::V4(_), IpAddr::V6(ip)) => ip
            .to_ipv4_mapped()
            .map(|v4| SocketAddr::new(IpAddr::V4(v4), destination.port())),
        _ => Some(destination),
    }
}

/// The socket's address with a wildcard IP replaced by the source address the
/// routing table picks toward `server` (found by connecting a throwaway UDP
/// socket, which sends nothing).
pub(crate) fn route_source(bound: SocketAddr, server: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let server = SocketAddr::new(server.ip().to_canonical(), server.port());
    let any: IpAddr = if server.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    let probe = std::net::UdpSocket::bind(SocketAddr::new(any, 0))
        .and_then(|probe| probe.connect(server).map(|()| probe))
        .and_then(|probe| probe.local_addr());
    match probe {
        Ok(source) => SocketAddr::new(source.ip(), bound.port()),
        Err(error) => {
            tracing::debug!(%error, "NAT report: cannot find the route's source address");
            bound
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_follow_the_socket_family() {
        let v4: SocketAddr = "0.0.0.0:1".parse().unwrap();
        let v6: SocketAddr = "[::]:1".parse().unwrap();
        let server4: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let server6: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        assert_eq!(reachable_from(v4, server4), Some(server4));
        assert_eq!(reachable_from(v4, server6), None);
        assert_eq!(
            reachable_from(v6, server4),
            Some("[::ffff:192.0.2.1]:3478".parse().unwrap())
        );
        assert_eq!(reachable_from(v6, server6), Some(server6));
    }

    #[test]
    fn wildcard_is_replaced_by_the_route_source() {
        let bound: SocketAddr = "0.0.0.0:4242".parse().unwrap();
        let local = route_source(bound, "127.0.0.1:3478".parse().unwrap());
        assert_eq!(local, "127.0.0.1:4242".parse().unwrap());
        let fixed: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        assert_eq!(
            route_source(fixed, "127.0.0.2:3478".parse().unwrap()),
            fixed
        );
    }
}
