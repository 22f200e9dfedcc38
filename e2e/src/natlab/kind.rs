//! What sits between a lab peer and the WAN: the NAT kinds the lab emulates, in RFC 4787 terms,
//! and the mapping / filtering behaviour each one is built to show.
//!
//! [`NatType`] is one NAT device (one namespace with one nftables ruleset); [`NatKind`] is what a
//! peer is placed behind: nothing, one device, or a device behind a carrier-grade NAT.

use std::fmt;

/// RFC 4787 §4.1 mapping behaviour: what decides whether two outbound flows from the same internal
/// endpoint share one external (reflexive) endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mapping {
    /// Endpoint-independent: one external endpoint for every destination.
    EndpointIndependent,
    /// Address-dependent: one external endpoint per destination IP address.
    AddressDependent,
    /// Address-and-port-dependent: one external endpoint per destination IP address and port.
    AddressAndPortDependent,
}

/// RFC 4787 §5 filtering behaviour: which inbound packets to an existing mapping are let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Filtering {
    /// Endpoint-independent: packets from any remote endpoint.
    EndpointIndependent,
    /// Address-dependent: packets from any port of an address the internal endpoint has sent to.
    AddressDependent,
    /// Address-and-port-dependent: only packets from endpoints the internal endpoint has sent to.
    AddressAndPortDependent,
}

/// One emulated NAT device. The nftables rules behind each variant are in `natlab/nft.rs` and in
/// `e2e/README.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatType {
    /// "Full cone": endpoint-independent mapping (port-preserving), endpoint-independent filtering.
    FullCone,
    /// "Restricted cone": endpoint-independent mapping (port-preserving), address-dependent
    /// filtering.
    Restricted,
    /// "Port-restricted cone": endpoint-independent mapping (port-preserving),
    /// address-and-port-dependent filtering. Plain Linux masquerade.
    PortRestricted,
    /// "Symmetric": address-and-port-dependent mapping with random port allocation,
    /// address-and-port-dependent filtering (`masquerade fully-random`).
    Symmetric,
    /// Symmetric with sequential port allocation: every new mapping takes the next port from
    /// 20000 upwards (delta 1), address-and-port-dependent filtering. For port-prediction tests.
    SymmetricSequential,
    /// Address-dependent mapping (the port is a fixed hash of internal endpoint and destination
    /// address, in 20000..24096) with address-dependent filtering.
    AddressDependent,
}

impl NatType {
    /// Every NAT device type, in a fixed order.
    pub const ALL: [NatType; 6] = [
        NatType::FullCone,
        NatType::Restricted,
        NatType::PortRestricted,
        NatType::Symmetric,
        NatType::SymmetricSequential,
        NatType::AddressDependent,
    ];

    /// The mapping behaviour this device is built to show.
    pub fn mapping(self) -> Mapping {
        match self {
            NatType::FullCone | NatType::Restricted | NatType::PortRestricted => {
                Mapping::EndpointIndependent
            }
            NatType::AddressDependent => Mapping::AddressDependent,
            NatType::Symmetric | NatType::SymmetricSequential => Mapping::AddressAndPortDependent,
        }
    }

    /// The filtering behaviour this device is built to show.
    pub fn filtering(self) -> Filtering {
        match self {
            NatType::FullCone => Filtering::EndpointIndependent,
            NatType::Restricted | NatType::AddressDependent => Filtering::AddressDependent,
            NatType::PortRestricted | NatType::Symmetric | NatType::SymmetricSequential => {
                Filtering::AddressAndPortDependent
            }
        }
    }

    /// Whether the external port equals the internal port (when no other flow holds it).
    pub fn preserves_ports(self) -> bool {
        self.mapping() == Mapping::EndpointIndependent
    }

    /// A short lowercase name, used in namespace-free places such as test output.
    pub fn name(self) -> &'static str {
        match self {
            NatType::FullCone => "full-cone",
            NatType::Restricted => "restricted",
            NatType::PortRestricted => "port-restricted",
            NatType::Symmetric => "symmetric",
            NatType::SymmetricSequential => "symmetric-sequential",
            NatType::AddressDependent => "address-dependent",
        }
    }
}

impl fmt::Display for NatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a lab peer sits behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// No NAT: the peer has a public address directly on the WAN.
    None,
    /// Behind one [`NatType::FullCone`] device.
    FullCone,
    /// Behind one [`NatType::Restricted`] device.
    Restricted,
    /// Behind one [`NatType::PortRestricted`] device.
    PortRestricted,
    /// Behind one [`NatType::Symmetric`] device.
    Symmetric,
    /// Behind one [`NatType::SymmetricSequential`] device.
    SymmetricSequential,
    /// Behind one [`NatType::AddressDependent`] device.
    AddressDependent,
    /// Behind `inner` (the home router, peer side), which is itself behind `outer`, a carrier-grade
    /// NAT; the segment between them uses 100.64.0.0/10 (RFC 6598).
    CarrierNat(NatType, NatType),
}

impl NatKind {
    /// The kinds of issue #3 and #8's matrices: every single-device type the brief names, no NAT,
    /// and port-restricted behind a port-restricted carrier NAT.
    pub const MATRIX: [NatKind; 6] = [
        NatKind::FullCone,
        NatKind::Restricted,
        NatKind::PortRestricted,
        NatKind::Symmetric,
        NatKind::None,
        NatKind::CarrierNat(NatType::PortRestricted, NatType::PortRestricted),
    ];

    /// The NAT devices between the peer and the WAN, peer side first.
    pub fn devices(self) -> Vec<NatType> {
        match self {
            NatKind::None => Vec::new(),
            NatKind::FullCone => vec![NatType::FullCone],
            NatKind::Restricted => vec![NatType::Restricted],
            NatKind::PortRestricted => vec![NatType::PortRestricted],
            NatKind::Symmetric => vec![NatType::Symmetric],
            NatKind::SymmetricSequential => vec![NatType::SymmetricSequential],
            NatKind::AddressDependent => vec![NatType::AddressDependent],
            NatKind::CarrierNat(inner, outer) => vec![inner, outer],
        }
    }

    /// The mapping behaviour a peer behind this kind observes; `None` when there is no NAT.
    /// Through a chain of NATs the most dependent mapping wins.
    pub fn expected_mapping(self) -> Option<Mapping> {
        self.devices().into_iter().map(NatType::mapping).max()
    }

    /// The filtering behaviour a peer behind this kind observes; `None` when there is no NAT (every
    /// packet arrives). Through a chain of NATs the most restrictive filtering wins.
    pub fn expected_filtering(self) -> Option<Filtering> {
        self.devices().into_iter().map(NatType::filtering).max()
    }

    /// Whether the peer's local port is kept as its reflexive port (true without a NAT).
    pub fn preserves_ports(self) -> bool {
        self.devices().into_iter().all(NatType::preserves_ports)
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatKind::None => f.write_str("none"),
            NatKind::CarrierNat(inner, outer) => write!(f, "{inner}-behind-{outer}"),
            single => match single.devices().first() {
                Some(device) => device.fmt(f),
                None => f.write_str("none"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_take_the_most_dependent_behaviour() {
        let kind = NatKind::CarrierNat(NatType::FullCone, NatType::Symmetric);
        assert_eq!(
            kind.expected_mapping(),
            Some(Mapping::AddressAndPortDependent)
        );
        assert_eq!(
            kind.expected_filtering(),
            Some(Filtering::AddressAndPortDependent)
        );
        assert!(!kind.preserves_ports());

        let kind = NatKind::CarrierNat(NatType::Restricted, NatType::FullCone);
        assert_eq!(kind.expected_mapping(), Some(Mapping::EndpointIndependent));
        assert_eq!(kind.expected_filtering(), Some(Filtering::AddressDependent));
        assert!(kind.preserves_ports());
    }

    #[test]
    fn no_nat_has_no_behaviour_and_keeps_ports() {
        assert_eq!(NatKind::None.expected_mapping(), None);
        assert_eq!(NatKind::None.expected_filtering(), None);
        assert!(NatKind::None.preserves_ports());
    }

    #[test]
    fn single_kinds_match_their_device() {
        for device in NatType::ALL {
            let kind = match device {
                NatType::FullCone => NatKind::FullCone,
                NatType::Restricted => NatKind::Restricted,
                NatType::PortRestricted => NatKind::PortRestricted,
                NatType::Symmetric => NatKind::Symmetric,
                NatType::SymmetricSequential => NatKind::SymmetricSequential,
                NatType::AddressDependent => NatKind::AddressDependent,
            };
            assert_eq!(kind.devices(), vec![device]);
            assert_eq!(kind.expected_mapping(), Some(device.mapping()));
            assert_eq!(kind.expected_filtering(), Some(device.filtering()));
            assert_eq!(kind.to_string(), device.name());
        }
        assert_eq!(
            NatKind::CarrierNat(NatType::PortRestricted, NatType::PortRestricted).to_string(),
            "port-restricted-behind-port-restricted"
        );
    }
}
