//! quickp2p-e2e: end-to-end scenarios across real processes and emulated NATs, and the
//! benchmark programs.
//!
//! [`natlab`] builds a small internet out of Linux network namespaces, veth pairs and nftables —
//! a WAN, a supernode host with two public addresses, and peers behind NATs of every RFC 4787
//! kind — and runs real binaries inside it (see `e2e/README.md`). [`udp_probe`] is the tiny UDP
//! tool (`qp-udp-probe`) the lab's own tests use to observe each NAT's mapping and filtering.
//! [`bench`] holds what the benchmark programs share. [`binaries`] finds the workspace's real
//! binaries for tests that run them in the lab, [`procs`] runs them as child processes and
//! [`lab_network`] starts a whole supernode network, one process per role, inside a lab.

pub mod bench;
pub mod binaries;
pub mod lab_network;
pub mod natlab;
pub mod procs;
pub mod udp_probe;
