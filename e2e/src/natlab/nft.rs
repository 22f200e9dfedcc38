//! The nftables ruleset of one emulated NAT device, as text for `nft -f -`.
//!
//! Every device has an interface `lan` (towards the peer, or towards the inner NAT of a carrier
//! chain) and an interface `wan` (towards the WAN router), and one table `ip qpnat`:
//!
//! - chain `outbound` (nat, postrouting, priority srcnat) allocates the external port: `masquerade`
//!   (Linux keeps the source port when the resulting tuple is unique: endpoint-independent mapping,
//!   port-preserving), `masquerade fully-random` (a random port per flow:
//!   address-and-port-dependent mapping), or `snat` to a port looked up in the 4096-entry map
//!   `ports` by `jhash(internal endpoint, destination address)` (address-dependent mapping) or by
//!   `numgen inc` (sequential allocation).
//! - conntrack alone gives address-and-port-dependent filtering: an inbound packet reaches the peer
//!   only as the reply of a flow the peer started.
//! - for wider filtering, chain `track` (filter, postrouting, priority srcnat + 10, i.e. after the
//!   source NAT, so `udp sport` is the external port) records every outbound UDP packet's mapping in
//!   the dynamic map `mapping` — `external port → internal address . internal port` for
//!   endpoint-independent filtering, `external port . remote address → …` for address-dependent
//!   filtering — and chain `inbound` (nat, prerouting, priority dstnat) DNATs the first packet of a
//!   new inbound flow through that map. A packet with no map entry is not translated.
//! - a packet that is not translated is addressed to the NAT itself. With
//!   [`UnsolicitedInbound::KeepConntrack`] it is delivered locally like on any Linux box: conntrack
//!   confirms an entry for it and the kernel answers ICMP port unreachable, which reproduces the
//!   DESIGN.md §4 pitfall. With [`UnsolicitedInbound::Drop`] chain `input` drops it before conntrack
//!   confirms the entry, so nothing is kept.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::kind::NatType;

/// First port of the pool used by [`NatType::SymmetricSequential`] and [`NatType::AddressDependent`].
pub const PORT_POOL_START: u16 = 20000;
/// Size of that pool.
pub const PORT_POOL_SIZE: u16 = 4096;
/// Seed of the address-dependent mapping's hash: fixed, so a lab's mappings are reproducible.
const ADM_HASH_SEED: u32 = 0x5150_7032;

/// What an emulated NAT does with an inbound packet its filtering does not let through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnsolicitedInbound {
    /// Like a plain Linux router: the packet is delivered to the NAT's own stack, conntrack keeps an
    /// entry for it (until the UDP timeout) and the kernel answers ICMP port unreachable. A later
    /// outbound packet of the peer towards that sender then gets a different external port: the
    /// DESIGN.md §4 pitfall.
    #[default]
    KeepConntrack,
    /// Dropped silently in the input hook, before conntrack confirms an entry: no stale state.
    Drop,
}

/// Inputs of one device's ruleset.
#[derive(Clone, Debug)]
pub(crate) struct NatRules {
    /// The device type.
    pub nat_type: NatType,
    /// The device's address on its `wan` interface (the `snat` target).
    pub wan_ip: Ipv4Addr,
    /// Lifetime of entries in the dynamic `mapping` map without outbound traffic.
    pub mapping_timeout: Duration,
    /// What to do with packets the filtering rejects.
    pub unsolicited: UnsolicitedInbound,
}

impl NatRules {
    /// The ruleset text, for `nft -f -` in the device's namespace.
    pub fn ruleset(&self) -> String {
        let timeout = self.mapping_timeout.as_secs().max(1);
        let mut out = String::from("table ip qpnat {\n");

        // dynamic mapping map, for the types that filter wider than conntrack does
        match self.nat_type.filtering_map() {
            FilteringMap::None => {}
            FilteringMap::ByPort => out.push_str(&format!(
                "  map mapping {{\n    type inet_service : ipv4_addr . inet_service\n    \
                 flags dynamic, timeout\n    timeout {timeout}s\n  }}\n"
            )),
            FilteringMap::ByPortAndAddress => out.push_str(&format!(
                "  map mapping {{\n    type inet_service . ipv4_addr : ipv4_addr . inet_service\n    \
                 flags dynamic, timeout\n    timeout {timeout}s\n  }}\n"
            )),
        }
        if matches!(
            self.nat_type,
            NatType::SymmetricSequential | NatType::AddressDependent
        ) {
            out.push_str(
                "  map ports {\n    typeof numgen inc mod 4096 : udp sport\n    elements = { ",
            );
            for i in 0..PORT_POOL_SIZE {
                if i > 0 {
                    out.push_str(", ");
                }
                let _ = write!(out, "{i} : {}", PORT_POOL_START + i);
            }
            out.push_str(" }\n  }\n");
        }

        // inbound: DNAT through the mapping map
        out.push_str(
            "  chain inbound {\n    type nat hook prerouting priority dstnat; policy accept;\n",
        );
        match self.nat_type.filtering_map() {
            FilteringMap::None => {}
            FilteringMap::ByPort => {
                out.push_str("    iifname \"wan\" meta l4proto udp dnat ip to udp dport map @mapping\n")
            }
            FilteringMap::ByPortAndAddress => out.push_str(
                "    iifname \"wan\" meta l4proto udp dnat ip to udp dport . ip saddr map @mapping\n",
            ),
        }
        out.push_str("  }\n");

        // outbound: external port allocation
        out.push_str(
            "  chain outbound {\n    type nat hook postrouting priority srcnat; policy accept;\n",
        );
        let wan_ip = self.wan_ip;
        match self.nat_type {
            NatType::FullCone | NatType::Restricted | NatType::PortRestricted => {}
            NatType::Symmetric => out.push_str("    oifname \"wan\" masquerade fully-random\n"),
            NatType::SymmetricSequential => out.push_str(&format!(
                "    oifname \"wan\" meta l4proto udp snat ip to {wan_ip} : numgen inc mod \
                 {PORT_POOL_SIZE} map @ports\n"
            )),
            NatType::AddressDependent => out.push_str(&format!(
                "    oifname \"wan\" meta l4proto udp snat ip to {wan_ip} : jhash ip saddr . \
                 udp sport . ip daddr mod {PORT_POOL_SIZE} seed {ADM_HASH_SEED:#x} map @ports\n"
            )),
        }
        // everything else (TCP, ICMP, and UDP for the cone types): plain masquerade
        out.push_str("    oifname \"wan\" masquerade\n  }\n");

        // track: record the mapping of every outbound UDP packet, after source NAT
        if self.nat_type.filtering_map() != FilteringMap::None {
            let key = match self.nat_type.filtering_map() {
                FilteringMap::ByPortAndAddress => "udp sport . ip daddr",
                _ => "udp sport",
            };
            out.push_str(
                "  chain track {\n    type filter hook postrouting priority srcnat + 10; policy accept;\n",
            );
            // a flow the peer started: the internal endpoint is the original source
            let _ = writeln!(
                out,
                "    oifname \"wan\" meta l4proto udp ct direction original update @mapping \
                 {{ {key} : ct original ip saddr . ct original proto-src }}"
            );
            // a reply to a flow let in by `inbound`: the internal endpoint is the reply source
            let _ = writeln!(
                out,
                "    oifname \"wan\" meta l4proto udp ct direction reply update @mapping \
                 {{ {key} : ct reply ip saddr . ct reply proto-src }}"
            );
            out.push_str("  }\n");
        }

        if self.unsolicited == UnsolicitedInbound::Drop {
            out.push_str(
                "  chain input {\n    type filter hook input priority filter; policy accept;\n    \
                 iifname \"wan\" ct state new drop\n  }\n",
            );
        }
        out.push_str("}\n");
        out
    }
}

/// Which dynamic map, if any, widens a device's filtering beyond conntrack's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FilteringMap {
    /// Conntrack only: address-and-port-dependent filtering.
    None,
    /// Keyed by external port: endpoint-independent filtering.
    ByPort,
    /// Keyed by external port and remote address: address-dependent filtering.
    ByPortAndAddress,
}

impl NatType {
    fn filtering_map(self) -> FilteringMap {
        match self {
            NatType::FullCone => FilteringMap::ByPort,
            NatType::Restricted | NatType::AddressDependent => FilteringMap::ByPortAndAddress,
            NatType::PortRestricted | NatType::Symmetric | NatType::SymmetricSequential => {
                FilteringMap::None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(nat_type: NatType, unsolicited: UnsolicitedInbound) -> String {
        NatRules {
            nat_type,
            wan_ip: Ipv4Addr::new(198, 51, 100, 20),
            mapping_timeout: Duration::from_secs(120),
            unsolicited,
        }
        .ruleset()
    }

    #[test]
    fn port_restricted_is_plain_masquerade() {
        let text = rules(NatType::PortRestricted, UnsolicitedInbound::KeepConntrack);
        assert_eq!(
            text,
            "table ip qpnat {\n  chain inbound {\n    type nat hook prerouting priority dstnat; \
             policy accept;\n  }\n  chain outbound {\n    type nat hook postrouting priority \
             srcnat; policy accept;\n    oifname \"wan\" masquerade\n  }\n}\n"
        );
    }

    #[test]
    fn full_cone_dnats_by_external_port() {
        let text = rules(NatType::FullCone, UnsolicitedInbound::KeepConntrack);
        assert!(text.contains("type inet_service : ipv4_addr . inet_service"));
        assert!(text.contains("timeout 120s"));
        assert!(text.contains("dnat ip to udp dport map @mapping"));
        assert!(text.contains(
            "ct direction original update @mapping { udp sport : ct original ip saddr . ct original proto-src }"
        ));
        assert!(text.contains(
            "ct direction reply update @mapping { udp sport : ct reply ip saddr . ct reply proto-src }"
        ));
        assert!(!text.contains("chain input"));
    }

    #[test]
    fn restricted_keys_by_port_and_remote_address() {
        let text = rules(NatType::Restricted, UnsolicitedInbound::Drop);
        assert!(text.contains("type inet_service . ipv4_addr : ipv4_addr . inet_service"));
        assert!(text.contains("dnat ip to udp dport . ip saddr map @mapping"));
        assert!(text.contains("update @mapping { udp sport . ip daddr : ct original ip saddr"));
        assert!(text.contains("iifname \"wan\" ct state new drop"));
    }

    #[test]
    fn symmetric_types_allocate_their_own_ports() {
        let text = rules(NatType::Symmetric, UnsolicitedInbound::KeepConntrack);
        assert!(text.contains("masquerade fully-random"));
        assert!(!text.contains("@mapping"));

        let text = rules(
            NatType::SymmetricSequential,
            UnsolicitedInbound::KeepConntrack,
        );
        assert!(text.contains("snat ip to 198.51.100.20 : numgen inc mod 4096 map @ports"));
        assert!(text.contains("0 : 20000, 1 : 20001,"));
        assert!(text.contains("4095 : 24095 }"));

        let text = rules(NatType::AddressDependent, UnsolicitedInbound::KeepConntrack);
        assert!(text.contains("jhash ip saddr . udp sport . ip daddr mod 4096 seed 0x51507032"));
        assert!(text.contains("dnat ip to udp dport . ip saddr map @mapping"));
    }
}
