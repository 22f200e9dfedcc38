//! What NAT behaviour discovery found: [`NatReport`] and its parts, named as in
//! RFC 4787 (mapping and filtering behaviour) and RFC 5780 (the tests).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// How a NAT maps one internal address to external ones (RFC 4787 §4.1), as RFC
/// 5780 §4.3 measures it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MappingBehaviour {
    /// The same external address for every destination (also reported when there
    /// is no NAT: nothing is translated).
    EndpointIndependent,
    /// A new external address for every destination IP address.
    AddressDependent,
    /// A new external address for every destination IP address and port
    /// ("symmetric NAT").
    AddressAndPortDependent,
    /// Not measured; the reason says why.
    Unknown(UnknownReason),
}

impl MappingBehaviour {
    /// The RFC 4787 term, e.g. "endpoint-independent mapping".
    pub fn rfc4787_name(&self) -> &'static str {
        match self {
            MappingBehaviour::EndpointIndependent => "endpoint-independent mapping",
            MappingBehaviour::AddressDependent => "address-dependent mapping",
            MappingBehaviour::AddressAndPortDependent => "address-and-port-dependent mapping",
            MappingBehaviour::Unknown(_) => "unknown mapping",
        }
    }

    /// A short machine-readable name: `endpoint-independent`, `address-dependent`,
    /// `address-and-port-dependent` or `unknown`.
    pub fn as_str(&self) -> &'static str {
        match self {
            MappingBehaviour::EndpointIndependent => "endpoint-independent",
            MappingBehaviour::AddressDependent => "address-dependent",
            MappingBehaviour::AddressAndPortDependent => "address-and-port-dependent",
            MappingBehaviour::Unknown(_) => "unknown",
        }
    }

    /// Why it is unknown, if it is.
    pub fn unknown_reason(&self) -> Option<&UnknownReason> {
        match self {
            MappingBehaviour::Unknown(reason) => Some(reason),
            _ => None,
        }
    }
}

/// Which inbound packets a NAT (or firewall) lets through to a mapping (RFC 4787
/// §5), as RFC 5780 §4.4 measures it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FilteringBehaviour {
    /// Packets from anyone reach the mapping.
    EndpointIndependent,
    /// Only packets from IP addresses the mapping has sent to.
    AddressDependent,
    /// Only packets from IP address and port pairs the mapping has sent to.
    AddressAndPortDependent,
    /// Not measured; the reason says why.
    Unknown(UnknownReason),
}

impl FilteringBehaviour {
    /// The RFC 4787 term, e.g. "address-dependent filtering".
    pub fn rfc4787_name(&self) -> &'static str {
        match self {
            FilteringBehaviour::EndpointIndependent => "endpoint-independent filtering",
            FilteringBehaviour::AddressDependent => "address-dependent filtering",
            FilteringBehaviour::AddressAndPortDependent => "address-and-port-dependent filtering",
            FilteringBehaviour::Unknown(_) => "unknown filtering",
        }
    }

    /// A short machine-readable name, as for [`MappingBehaviour::as_str`].
    pub fn as_str(&self) -> &'static str {
        match self {
            FilteringBehaviour::EndpointIndependent => "endpoint-independent",
            FilteringBehaviour::AddressDependent => "address-dependent",
            FilteringBehaviour::AddressAndPortDependent => "address-and-port-dependent",
            FilteringBehaviour::Unknown(_) => "unknown",
        }
    }

    /// Why it is unknown, if it is.
    pub fn unknown_reason(&self) -> Option<&UnknownReason> {
        match self {
            FilteringBehaviour::Unknown(reason) => Some(reason),
            _ => None,
        }
    }
}

/// Why a behaviour could not be measured.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnknownReason {
    /// The STUN server did not answer the first Binding request in time.
    NoResponse,
    /// The server answered a Binding request with an error response.
    ServerError {
        /// The ERROR-CODE (0 when the response carried none).
        code: u16,
    },
    /// A success response carried no (XOR-)MAPPED-ADDRESS.
    MalformedResponse,
    /// The server sent no OTHER-ADDRESS: it does not support RFC 5780 behaviour
    /// discovery (it may still tell the reflexive address).
    NoOtherAddress,
    /// OTHER-ADDRESS cannot be used: it has the primary IP address or another
    /// address family.
    UnusableOtherAddress(SocketAddr),
    /// OTHER-ADDRESS has the primary port, so no alternate port is known to tell
    /// address-dependent from address-and-port-dependent mapping.
    AlternatePortUnknown,
    /// The server's alternate address did not answer (it may be down, or UDP to it
    /// blocked).
    AlternateNoResponse,
    /// The server answered a CHANGE-REQUEST from the wrong address: it does not
    /// honour CHANGE-REQUEST.
    ChangeRequestIgnored {
        /// Where the answer came from.
        from: SocketAddr,
    },
    /// The server rejected CHANGE-REQUEST with an error response.
    ChangeRequestRejected {
        /// The ERROR-CODE (0 when the response carried none).
        code: u16,
    },
    /// The test is switched off in the configuration.
    NotTested,
    /// The configured time limit ran out before the test finished.
    DeadlineReached,
}

impl UnknownReason {
    /// A stable kebab-case code for machines, e.g. `no-response`.
    pub fn code(&self) -> &'static str {
        match self {
            UnknownReason::NoResponse => "no-response",
            UnknownReason::ServerError { .. } => "server-error",
            UnknownReason::MalformedResponse => "malformed-response",
            UnknownReason::NoOtherAddress => "no-other-address",
            UnknownReason::UnusableOtherAddress(_) => "unusable-other-address",
            UnknownReason::AlternatePortUnknown => "alternate-port-unknown",
            UnknownReason::AlternateNoResponse => "alternate-no-response",
            UnknownReason::ChangeRequestIgnored { .. } => "change-request-ignored",
            UnknownReason::ChangeRequestRejected { .. } => "change-request-rejected",
            UnknownReason::NotTested => "not-tested",
            UnknownReason::DeadlineReached => "deadline-reached",
        }
    }
}

impl fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnknownReason::NoResponse => f.write_str("the STUN server did not answer"),
            UnknownReason::ServerError { code } => {
                write!(f, "the STUN server answered with error {code}")
            }
            UnknownReason::MalformedResponse => {
                f.write_str("the STUN server's response carried no mapped address")
            }
            UnknownReason::NoOtherAddress => f.write_str(
                "the STUN server does not support RFC 5780 behaviour discovery (no OTHER-ADDRESS)",
            ),
            UnknownReason::UnusableOtherAddress(other) => write!(
                f,
                "the STUN server's OTHER-ADDRESS {other} does not differ in IP address or family"
            ),
            UnknownReason::AlternatePortUnknown => f.write_str(
                "the STUN server's OTHER-ADDRESS uses its primary port, so no alternate port is known",
            ),
            UnknownReason::AlternateNoResponse => {
                f.write_str("the STUN server's alternate address did not answer")
            }
            UnknownReason::ChangeRequestIgnored { from } => write!(
                f,
                "the STUN server ignored CHANGE-REQUEST (answered from {from})"
            ),
            UnknownReason::ChangeRequestRejected { code } => {
                write!(f, "the STUN server rejected CHANGE-REQUEST with error {code}")
            }
            UnknownReason::NotTested => f.write_str("not tested"),
            UnknownReason::DeadlineReached => f.write_str("the time limit ran out"),
        }
    }
}

/// One reflexive (server-reflexive) address: what a server saw as our source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReflexiveAddr {
    /// The server address the request was sent to.
    pub server: SocketAddr,
    /// The mapped address it reported (XOR-MAPPED-ADDRESS).
    pub mapped: SocketAddr,
}

/// One round-trip time measured on a transaction answered without
/// retransmission (Karn's rule: retransmitted ones are ambiguous).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RttSample {
    /// The server address the request was sent to.
    pub server: SocketAddr,
    /// Request to response.
    pub rtt: Duration,
}

/// The most reflexive addresses a report holds (one per mapping test).
pub const MAX_REFLEXIVE: usize = 4;

/// What RFC 5780 NAT behaviour discovery found about the path from one local UDP
/// socket to the internet.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatReport {
    /// The STUN server's primary address, where discovery started.
    pub server: SocketAddr,
    /// The local socket address discovery compared mappings with.
    pub local_address: SocketAddr,
    /// The server's OTHER-ADDRESS (its alternate IP address and port), if it sent
    /// one.
    pub other_address: Option<SocketAddr>,
    /// Mapping behaviour (RFC 4787 §4.1).
    pub mapping: MappingBehaviour,
    /// Filtering behaviour (RFC 4787 §5).
    pub filtering: FilteringBehaviour,
    /// Whether a packet sent to our own public address comes back (RFC 4787 §6):
    /// `None` when not tested or not applicable (no NAT).
    pub hairpinning: Option<bool>,
    /// Whether the NAT kept the local port for the first mapping (towards the
    /// server's primary address); `None` without it. Later mappings can get other
    /// ports even on a port-preserving NAT (a conflicting conntrack entry, or a
    /// dependent mapping that needs a fresh port): `reflexive` lists them all.
    pub port_preserving: Option<bool>,
    /// Whether addresses are translated at all: `Some(false)` when the mapped
    /// address equals the local address (a firewall may still filter).
    pub behind_nat: Option<bool>,
    /// The mapped address the primary server saw (RFC 5780 test I, "X1").
    pub public_address: Option<SocketAddr>,
    /// Every mapped address observed, per server address (at most
    /// [`MAX_REFLEXIVE`]).
    pub reflexive: Vec<ReflexiveAddr>,
    /// Round-trip times of transactions answered at the first try.
    pub rtt: Vec<RttSample>,
    /// How long discovery took.
    pub duration: Duration,
}

impl NatReport {
    /// Whether the server supports RFC 5780 (sent OTHER-ADDRESS); `None` when it
    /// did not answer at all.
    pub fn server_supports_rfc5780(&self) -> Option<bool> {
        self.public_address.map(|_| self.other_address.is_some())
    }

    /// The smallest measured round-trip time.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.rtt.iter().map(|s| s.rtt).min()
    }

    /// The familiar name of this NAT: "full cone", "restricted cone",
    /// "port-restricted cone", "symmetric", "no NAT", … — the pre-RFC 4787
    /// vocabulary people search for. See [`NatReport::rfc4787_description`] for
    /// the precise terms.
    pub fn label(&self) -> &'static str {
        use FilteringBehaviour as F;
        use MappingBehaviour as M;
        if self.behind_nat == Some(false) {
            return match self.filtering {
                F::EndpointIndependent => "no NAT",
                F::AddressDependent => "no NAT (address-restricting firewall)",
                F::AddressAndPortDependent => "no NAT (port-restricting firewall)",
                F::Unknown(_) => "no NAT (firewall unknown)",
            };
        }
        match (&self.mapping, &self.filtering) {
            (M::EndpointIndependent, F::EndpointIndependent) => "full cone",
            (M::EndpointIndependent, F::AddressDependent) => "restricted cone",
            (M::EndpointIndependent, F::AddressAndPortDependent) => "port-restricted cone",
            (M::EndpointIndependent, F::Unknown(_)) => "cone (filtering unknown)",
            (M::AddressDependent | M::AddressAndPortDependent, _) => "symmetric",
            (M::Unknown(_), _) => "unknown",
        }
    }

    /// The RFC 4787 terms, e.g. "endpoint-independent mapping,
    /// address-and-port-dependent filtering".
    pub fn rfc4787_description(&self) -> String {
        format!(
            "{}, {}",
            self.mapping.rfc4787_name(),
            self.filtering.rfc4787_name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(mapping: MappingBehaviour, filtering: FilteringBehaviour) -> NatReport {
        let addr: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        NatReport {
            server: addr,
            local_address: addr,
            other_address: None,
            mapping,
            filtering,
            hairpinning: None,
            port_preserving: None,
            behind_nat: Some(true),
            public_address: None,
            reflexive: Vec::new(),
            rtt: Vec::new(),
            duration: Duration::ZERO,
        }
    }

    #[test]
    fn labels_use_the_classic_names() {
        use FilteringBehaviour as F;
        use MappingBehaviour as M;
        let cases = [
            (M::EndpointIndependent, F::EndpointIndependent, "full cone"),
            (
                M::EndpointIndependent,
                F::AddressDependent,
                "restricted cone",
            ),
            (
                M::EndpointIndependent,
                F::AddressAndPortDependent,
                "port-restricted cone",
            ),
            (M::AddressDependent, F::AddressAndPortDependent, "symmetric"),
            (
                M::AddressAndPortDependent,
                F::AddressAndPortDependent,
                "symmetric",
            ),
            (
                M::Unknown(UnknownReason::NoResponse),
                F::Unknown(UnknownReason::NoResponse),
                "unknown",
            ),
        ];
        for (mapping, filtering, label) in cases {
            assert_eq!(report(mapping, filtering).label(), label);
        }
        let mut open = report(M::EndpointIndependent, F::EndpointIndependent);
        open.behind_nat = Some(false);
        assert_eq!(open.label(), "no NAT");
        let r = report(M::EndpointIndependent, F::AddressAndPortDependent);
        assert_eq!(
            r.rfc4787_description(),
            "endpoint-independent mapping, address-and-port-dependent filtering"
        );
    }

    #[test]
    fn reasons_have_codes_and_text() {
        let reason = UnknownReason::ChangeRequestRejected { code: 420 };
        assert_eq!(reason.code(), "change-request-rejected");
        assert!(reason.to_string().contains("420"));
    }
}
