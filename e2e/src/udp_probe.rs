//! The UDP probe the NAT lab's own tests use to observe what an emulated NAT does: a tiny
//! text protocol much like a STUN binding with RFC 5780's CHANGE-REQUEST, without depending on
//! our STUN code (which the lab is there to test).
//!
//! A *server* (`qp-udp-probe serve`, in the supernode namespace) binds several sockets, e.g.
//! 203.0.113.10:3478, :3479, 203.0.113.11:3478. It answers, from the socket that received it:
//!
//! - `MAP <nonce>` with `MAPPED <nonce> <source seen> <own address>`;
//! - `FROM <nonce> <address>` by first sending `FROMPKT <nonce> <address>` from its socket bound
//!   at `<address>` to the requester's source, then `ACK <nonce>` from the receiving socket (or
//!   `ERR <nonce> <reason>` when it has no such socket).
//!
//! A *client* (`qp-udp-probe probe`, in a peer namespace) runs [`ProbeStep`]s from one local
//! socket and prints one [`ProbeOutcome`] line per step: the mapping each destination saw, and
//! whether a packet from another address or port passed the NAT's filtering. Every wait is
//! bounded; requests are retried.
//!
//! A *knocker* (`qp-udp-probe knock`) sends one unsolicited datagram, says so, and then reports the
//! source of the first datagram it receives (answering a `MAP` like a server), which shows the
//! DESIGN.md §4 pitfall.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One step of a client run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeStep {
    /// Ask the server socket at this address which source it sees (`map:IP:PORT`).
    Map(SocketAddr),
    /// Ask the server socket `via` to have its socket `from` send us a datagram
    /// (`from:VIA/FROM`).
    Filter {
        /// The server socket the request goes to (one we already have a mapping towards).
        via: SocketAddr,
        /// The server socket the test datagram comes from.
        from: SocketAddr,
    },
}

impl FromStr for ProbeStep {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let addr = |a: &str| {
            a.parse::<SocketAddr>()
                .map_err(|e| format!("bad address {a:?} in step {s:?}: {e}"))
        };
        if let Some(to) = s.strip_prefix("map:") {
            Ok(ProbeStep::Map(addr(to)?))
        } else if let Some(rest) = s.strip_prefix("from:") {
            let (via, from) = rest
                .split_once('/')
                .ok_or_else(|| format!("expected from:VIA/FROM, got {s:?}"))?;
            Ok(ProbeStep::Filter {
                via: addr(via)?,
                from: addr(from)?,
            })
        } else {
            Err(format!("unknown step {s:?} (map:IP:PORT or from:VIA/FROM)"))
        }
    }
}

impl fmt::Display for ProbeStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeStep::Map(to) => write!(f, "map:{to}"),
            ProbeStep::Filter { via, from } => write!(f, "from:{via}/{from}"),
        }
    }
}

/// Whether a datagram from another server socket reached the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterVerdict {
    /// It arrived.
    Passed,
    /// The server acknowledged sending it, and it did not arrive.
    Blocked,
    /// The server never acknowledged the request: nothing can be concluded.
    NoAck,
}

/// What one step observed; printed one per line by the client, parsed back by tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// `MAPPED <to> <observed>`: the server socket `to` saw us as `observed`.
    Mapped {
        /// The server socket asked.
        to: SocketAddr,
        /// Our source address and port as it saw them (the NAT's mapping).
        observed: SocketAddr,
    },
    /// `MAP-TIMEOUT <to>`: no answer after every retry.
    MapTimeout {
        /// The server socket asked.
        to: SocketAddr,
    },
    /// `FILTER <from> PASSED|BLOCKED|NO-ACK`.
    Filter {
        /// The server socket the test datagram came from.
        from: SocketAddr,
        /// What happened to it.
        verdict: FilterVerdict,
    },
}

impl fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeOutcome::Mapped { to, observed } => write!(f, "MAPPED {to} {observed}"),
            ProbeOutcome::MapTimeout { to } => write!(f, "MAP-TIMEOUT {to}"),
            ProbeOutcome::Filter { from, verdict } => {
                let verdict = match verdict {
                    FilterVerdict::Passed => "PASSED",
                    FilterVerdict::Blocked => "BLOCKED",
                    FilterVerdict::NoAck => "NO-ACK",
                };
                write!(f, "FILTER {from} {verdict}")
            }
        }
    }
}

impl FromStr for ProbeOutcome {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let addr = |a: &str| {
            a.parse::<SocketAddr>()
                .map_err(|e| format!("bad address in {s:?}: {e}"))
        };
        match words.as_slice() {
            ["MAPPED", to, observed] => Ok(ProbeOutcome::Mapped {
                to: addr(to)?,
                observed: addr(observed)?,
            }),
            ["MAP-TIMEOUT", to] => Ok(ProbeOutcome::MapTimeout { to: addr(to)? }),
            ["FILTER", from, verdict] => Ok(ProbeOutcome::Filter {
                from: addr(from)?,
                verdict: match *verdict {
                    "PASSED" => FilterVerdict::Passed,
                    "BLOCKED" => FilterVerdict::Blocked,
                    "NO-ACK" => FilterVerdict::NoAck,
                    other => return Err(format!("unknown verdict {other:?}")),
                },
            }),
            _ => Err(format!("not a probe outcome: {s:?}")),
        }
    }
}

/// How long the client waits and how often it retries.
#[derive(Clone, Copy, Debug)]
pub struct ProbeTiming {
    /// Wait for an answer before sending a request again.
    pub per_try: Duration,
    /// Requests per step before giving up.
    pub tries: u32,
    /// After a `FROM` request is acknowledged, how much longer to wait for the test datagram.
    pub settle: Duration,
}

impl Default for ProbeTiming {
    fn default() -> Self {
        ProbeTiming {
            per_try: Duration::from_millis(250),
            tries: 4,
            settle: Duration::from_millis(200),
        }
    }
}

/// A datagram of the probe protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Message {
    Map { nonce: u64 },
    Mapped { nonce: u64, observed: SocketAddr },
    From { nonce: u64, from: SocketAddr },
    FromPacket { nonce: u64 },
    Ack { nonce: u64 },
    Error { nonce: u64 },
}

impl Message {
    fn parse(datagram: &[u8]) -> Option<Message> {
        let text = std::str::from_utf8(datagram).ok()?;
        let words: Vec<&str> = text.split_whitespace().collect();
        let nonce = words.get(1)?.parse().ok()?;
        let addr = |i: usize| words.get(i).and_then(|w| w.parse().ok());
        Some(match words.first().copied()? {
            "MAP" => Message::Map { nonce },
            "MAPPED" => Message::Mapped {
                nonce,
                observed: addr(2)?,
            },
            "FROM" => Message::From {
                nonce,
                from: addr(2)?,
            },
            "FROMPKT" => Message::FromPacket { nonce },
            "ACK" => Message::Ack { nonce },
            "ERR" => Message::Error { nonce },
            _ => return None,
        })
    }
}

/// Serves the probe protocol on every socket (one thread each); returns only when a socket fails.
pub fn serve(sockets: Vec<UdpSocket>) -> io::Result<Infallible> {
    let mut by_address = HashMap::new();
    for socket in sockets {
        by_address.insert(socket.local_addr()?, socket);
    }
    let sockets = Arc::new(by_address);
    if sockets.is_empty() {
        return Err(io::Error::other("probe server has no sockets"));
    }
    // every socket thread runs until its socket fails: report the first failure
    let (failed, first_failure) = std::sync::mpsc::channel();
    for local in sockets.keys().copied() {
        let sockets = Arc::clone(&sockets);
        let failed = failed.clone();
        std::thread::spawn(move || {
            let Err(e) = serve_socket(&sockets, local);
            let _ = failed.send(e);
        });
    }
    drop(failed);
    Err(first_failure
        .recv()
        .unwrap_or_else(|_| io::Error::other("probe server threads ended")))
}

fn serve_socket(
    sockets: &HashMap<SocketAddr, UdpSocket>,
    local: SocketAddr,
) -> io::Result<Infallible> {
    let socket = sockets
        .get(&local)
        .ok_or_else(|| io::Error::other("socket vanished"))?;
    let mut buf = [0u8; 1500];
    loop {
        let (len, source) = socket.recv_from(&mut buf)?;
        match Message::parse(&buf[..len]) {
            Some(Message::Map { nonce }) => {
                let reply = format!("MAPPED {nonce} {source} {local}");
                socket.send_to(reply.as_bytes(), source)?;
            }
            Some(Message::From { nonce, from }) => match sockets.get(&from) {
                Some(other) => {
                    let packet = format!("FROMPKT {nonce} {from}");
                    other.send_to(packet.as_bytes(), source)?;
                    socket.send_to(format!("ACK {nonce}").as_bytes(), source)?;
                }
                None => {
                    let reply = format!("ERR {nonce} no-socket-at-{from}");
                    socket.send_to(reply.as_bytes(), source)?;
                }
            },
            _ => {}
        }
    }
}

/// Runs `steps` in order from `socket` and returns one outcome per step.
pub fn run_probe(
    socket: &UdpSocket,
    steps: &[ProbeStep],
    timing: ProbeTiming,
) -> io::Result<Vec<ProbeOutcome>> {
    steps
        .iter()
        .map(|step| match *step {
            ProbeStep::Map(to) => probe_mapping(socket, to, timing),
            ProbeStep::Filter { via, from } => probe_filtering(socket, via, from, timing),
        })
        .collect()
}

fn probe_mapping(
    socket: &UdpSocket,
    to: SocketAddr,
    timing: ProbeTiming,
) -> io::Result<ProbeOutcome> {
    let nonce = next_nonce();
    for _ in 0..timing.tries {
        socket.send_to(format!("MAP {nonce}").as_bytes(), to)?;
        let deadline = Instant::now() + timing.per_try;
        while let Some((message, _)) = receive_until(socket, deadline)? {
            if let Message::Mapped { nonce: n, observed } = message
                && n == nonce
            {
                return Ok(ProbeOutcome::Mapped { to, observed });
            }
        }
    }
    Ok(ProbeOutcome::MapTimeout { to })
}

fn probe_filtering(
    socket: &UdpSocket,
    via: SocketAddr,
    from: SocketAddr,
    timing: ProbeTiming,
) -> io::Result<ProbeOutcome> {
    let nonce = next_nonce();
    let mut acked_at = None;
    for _ in 0..timing.tries {
        socket.send_to(format!("FROM {nonce} {from}").as_bytes(), via)?;
        let mut deadline = Instant::now() + timing.per_try;
        while let Some((message, source)) = receive_until(socket, deadline)? {
            match message {
                Message::FromPacket { nonce: n } if n == nonce && source == from => {
                    return Ok(ProbeOutcome::Filter {
                        from,
                        verdict: FilterVerdict::Passed,
                    });
                }
                Message::Ack { nonce: n } if n == nonce && acked_at.is_none() => {
                    let now = Instant::now();
                    acked_at = Some(now);
                    deadline = now + timing.settle;
                }
                Message::Error { nonce: n } if n == nonce => {
                    return Err(io::Error::other(format!("server has no socket at {from}")));
                }
                _ => {}
            }
        }
        if acked_at.is_some() {
            return Ok(ProbeOutcome::Filter {
                from,
                verdict: FilterVerdict::Blocked,
            });
        }
    }
    Ok(ProbeOutcome::Filter {
        from,
        verdict: FilterVerdict::NoAck,
    })
}

/// Sends one unsolicited `KNOCK` datagram from `socket` to `to`, runs `on_sent`, then waits up to
/// `wait` for a datagram and returns its source (answering a `MAP` request like a server).
pub fn knock(
    socket: &UdpSocket,
    to: SocketAddr,
    wait: Duration,
    on_sent: impl FnOnce(),
) -> io::Result<Option<SocketAddr>> {
    socket.send_to(b"KNOCK 0", to)?;
    on_sent();
    let deadline = Instant::now() + wait;
    let local = socket.local_addr()?;
    loop {
        let Some((message, source)) = receive_until(socket, deadline)? else {
            return Ok(None);
        };
        if let Message::Map { nonce } = message {
            let reply = format!("MAPPED {nonce} {source} {local}");
            socket.send_to(reply.as_bytes(), source)?;
            return Ok(Some(source));
        }
    }
}

/// The next protocol message on `socket` before `deadline`; `None` on timeout. Datagrams that
/// are not protocol messages (an ICMP-induced error, stray bytes) are skipped.
fn receive_until(
    socket: &UdpSocket,
    deadline: Instant,
) -> io::Result<Option<(Message, SocketAddr)>> {
    let mut buf = [0u8; 1500];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(None);
        }
        socket.set_read_timeout(Some(remaining))?;
        match socket.recv_from(&mut buf) {
            Ok((len, source)) => {
                if let Some(message) = Message::parse(&buf[..len]) {
                    return Ok(Some((message, source)));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            // an ICMP error reported on the socket (port unreachable after a knock): keep waiting
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e),
        }
    }
}

fn next_nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    seed ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(48)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_outcomes_round_trip_through_text() {
        for text in [
            "map:203.0.113.10:3478",
            "from:203.0.113.10:3478/203.0.113.11:3479",
        ] {
            let step: ProbeStep = text.parse().unwrap();
            assert_eq!(step.to_string(), text);
        }
        assert!("ping:1.2.3.4:5".parse::<ProbeStep>().is_err());
        assert!("from:203.0.113.10:3478".parse::<ProbeStep>().is_err());

        for text in [
            "MAPPED 203.0.113.10:3478 198.51.100.20:40000",
            "MAP-TIMEOUT 203.0.113.10:3478",
            "FILTER 203.0.113.11:3478 PASSED",
            "FILTER 203.0.113.11:3478 BLOCKED",
            "FILTER 203.0.113.11:3478 NO-ACK",
        ] {
            let outcome: ProbeOutcome = text.parse().unwrap();
            assert_eq!(outcome.to_string(), text);
        }
        assert!(
            "FILTER 203.0.113.11:3478 MAYBE"
                .parse::<ProbeOutcome>()
                .is_err()
        );
    }

    #[test]
    fn messages_parse() {
        assert_eq!(Message::parse(b"MAP 7"), Some(Message::Map { nonce: 7 }));
        assert_eq!(
            Message::parse(b"MAPPED 7 10.0.0.2:5 127.0.0.1:1"),
            Some(Message::Mapped {
                nonce: 7,
                observed: "10.0.0.2:5".parse().unwrap()
            })
        );
        assert_eq!(Message::parse(b"MAPPED 7"), None);
        assert_eq!(Message::parse(b"\xff\xfe"), None);
        assert_eq!(Message::parse(b""), None);
    }

    /// The whole protocol over loopback (no lab needed): without a NAT every packet passes.
    #[test]
    fn probe_against_a_loopback_server() {
        let server_sockets: Vec<UdpSocket> = (0..2)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<SocketAddr> = server_sockets
            .iter()
            .map(|s| s.local_addr().unwrap())
            .collect();
        std::thread::spawn(move || serve(server_sockets));

        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let me = client.local_addr().unwrap();
        let outcomes = run_probe(
            &client,
            &[
                ProbeStep::Map(addrs[0]),
                ProbeStep::Filter {
                    via: addrs[0],
                    from: addrs[1],
                },
            ],
            ProbeTiming::default(),
        )
        .unwrap();
        assert_eq!(
            outcomes,
            [
                ProbeOutcome::Mapped {
                    to: addrs[0],
                    observed: me
                },
                ProbeOutcome::Filter {
                    from: addrs[1],
                    verdict: FilterVerdict::Passed
                }
            ]
        );
    }
}
