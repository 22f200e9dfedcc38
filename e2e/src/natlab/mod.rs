//! The NAT lab: a small internet on this machine, built from Linux network namespaces, veth pairs
//! and nftables, in which tests run the real binaries (DESIGN.md §7).
//!
//! ```text
//!                        ┌──────────── supernode host (ns …-sn) ───────────┐
//!                        │ wan: 203.0.113.10/24, 203.0.113.11/24 (, .12 …) │
//!                        └───────────────────────┬─────────────────────────┘
//!                                                │ sn: 203.0.113.1/24
//!   ┌───────────────────────── WAN router (ns …-wan), stateless ─────────────────────────┐
//!   └───┬ n0: 198.51.100.1 ⇄ .20 ────────┬ n1: ⇄ .21 ──────────────┬ n2: ⇄ .22 ───────────┘
//!       │                                │                          │
//!  NAT (ns …-n0)                    peer (ns …-p1)             carrier NAT (ns …-c2)
//!   wan 198.51.100.20                eth0 198.51.100.21          wan 198.51.100.22
//!   lan 10.0.0.1/24                  (NatKind::None)             lan 100.64.2.1/24
//!       │                                                           │
//!  peer (ns …-p0)                                              home NAT (ns …-n2)
//!   eth0 10.0.0.2/24                                            wan 100.64.2.2/24, lan 10.2.0.1/24
//!                                                                   │
//!                                                              peer (ns …-p2) eth0 10.2.0.2/24
//! ```
//!
//! Peer `i` gets the public address 198.51.100.(20+i) (on its outermost NAT, or on itself with
//! [`NatKind::None`]) and, behind a NAT, the private address 10.i.0.2. Each access link is a
//! point-to-point veth pair; the WAN router routes between them and the supernode segment and has
//! no other routes, so private addresses never cross it. Every lab has its own WAN namespace, so
//! labs running at once (cargo runs tests in parallel) reuse the same addresses without meeting.
//!
//! The NAT devices' nftables rules are described in `nft.rs` and `e2e/README.md`. Building needs
//! root, `ip` and `nft` ([`Lab::available`]); added delay also needs `tc` and the kernel's netem
//! qdisc, or else `iptables` for the userspace delay line `qp-delay-line`
//! ([`Lab::delay_available`]); loss needs neither. Dropping the [`Lab`]
//! kills every process left in its namespaces and deletes them, also when a test panics; a lab
//! that starts removes namespaces left by processes that died without dropping theirs.

mod error;
mod impairment;
mod kind;
mod netns;
mod nft;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use error::LabError;
pub use impairment::Impairment;
pub use kind::{Filtering, Mapping, NatKind, NatType};
pub use netns::{NAMESPACE_PREFIX, Netns, lab_namespaces};
pub use nft::{PORT_POOL_SIZE, PORT_POOL_START, UnsolicitedInbound};

use netns::run_tool;
use nft::NatRules;

/// Most peers one lab holds (their public addresses come from one /24).
pub const MAX_PEERS: usize = 200;
/// The WAN router's address on the supernode segment.
pub const WAN_SUPERNODE_GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The WAN router's address on every access link.
pub const WAN_ACCESS_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// Labs created by this process so far, for unique namespace names.
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running NAT lab. See the module documentation for the topology.
#[derive(Debug)]
pub struct Lab {
    id: String,
    wan: Netns,
    supernode: SupernodeHost,
    peers: Vec<Peer>,
    impairments: Mutex<Impairments>,
    /// Declared last: everything above is plain data; this deletes the namespaces.
    namespaces: NamespaceGuard,
}

#[derive(Debug)]
struct Impairments {
    wan: Impairment,
    links: Vec<Impairment>,
    /// Interfaces (namespace, name) that have a netem qdisc now.
    netem: HashSet<(String, String)>,
    /// The userspace delay line, when delay is asked for on a kernel without netem.
    delay_line: Option<DelayLine>,
    /// Whether the WAN router has the NFQUEUE rule that feeds the delay line.
    delay_rule: bool,
}

/// A running `qp-delay-line` in the WAN router; killed when dropped.
#[derive(Debug)]
struct DelayLine {
    args: Vec<String>,
    child: std::process::Child,
}

impl DelayLine {
    /// Starts it and waits until it has bound its queue.
    fn start(wan: &Netns, args: Vec<String>) -> Result<DelayLine, LabError> {
        use std::io::BufRead as _;
        let binary = crate::binaries::workspace_binary(netns::DELAY_LINE_BINARY)
            .map_err(LabError::Unavailable)?;
        let command_line = format!("{} {}", binary.display(), args.join(" "));
        let mut child = wan
            .command(&binary)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| LabError::Spawn {
                command: command_line.clone(),
                source,
            })?;
        let mut first = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = std::io::BufReader::new(stdout).read_line(&mut first);
        }
        if first.trim() == "READY" {
            return Ok(DelayLine { args, child });
        }
        let _ = child.kill();
        let output = child.wait_with_output();
        let (status, stderr) = match output {
            Ok(output) => (
                output.status.to_string(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ),
            Err(e) => ("unknown".to_owned(), e.to_string()),
        };
        Err(LabError::Command {
            command: command_line,
            status,
            stderr,
        })
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Lab {
    /// A builder with no peers, two supernode addresses, Linux's UDP conntrack timeouts and no
    /// impairment.
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// `Ok` when this machine can build a lab; otherwise the reason (not root, `ip` or `nft`
    /// missing, namespaces or nftables not usable). Checked once per process.
    pub fn available() -> Result<(), String> {
        netns::available()
    }

    /// This lab's name prefix, `qpl-<pid hex>-<n>`; every namespace name starts with it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The WAN router's namespace.
    pub fn wan(&self) -> &Netns {
        &self.wan
    }

    /// The supernode host: one namespace with the supernode's public addresses.
    pub fn supernode(&self) -> &SupernodeHost {
        &self.supernode
    }

    /// Peer `index`, in the order the builder added them.
    ///
    /// # Panics
    /// When there is no such peer, like slice indexing.
    pub fn peer(&self, index: usize) -> &Peer {
        &self.peers[index]
    }

    /// All peers, in the order the builder added them.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// The names of all namespaces of this lab.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces.names
    }

    /// Whether this machine can add delay (the kernel's netem qdisc, or the userspace delay line
    /// when the kernel has no netem); the reason when it cannot. Loss works without it.
    pub fn delay_available() -> Result<(), String> {
        netns::delay_available()
    }

    /// Replaces the impairment of every packet crossing the WAN router (so once on every path
    /// between two lab hosts: the round trip between any two gets twice the delay).
    pub fn set_wan_impairment(&self, impairment: Impairment) -> Result<(), LabError> {
        let mut state = self.lock_impairments();
        let previous = state.wan;
        state.wan = impairment;
        let applied = self.apply_impairments(&mut state);
        if applied.is_err() {
            state.wan = previous;
        }
        applied
    }

    /// Replaces the impairment of peer `index`'s access link (between its outermost NAT, or the
    /// peer itself, and the WAN router), added in both directions.
    pub fn set_peer_impairment(
        &self,
        index: usize,
        impairment: Impairment,
    ) -> Result<(), LabError> {
        let mut state = self.lock_impairments();
        let Some(slot) = state.links.get_mut(index) else {
            return Err(LabError::Config(format!("no peer {index}")));
        };
        let previous = std::mem::replace(slot, impairment);
        let applied = self.apply_impairments(&mut state);
        if applied.is_err() {
            state.links[index] = previous;
        }
        applied
    }

    /// Makes the delays (netem qdiscs, or the delay line) and the WAN's loss chain match `state`.
    fn apply_impairments(&self, state: &mut Impairments) -> Result<(), LabError> {
        let any_delay = state.wan.has_delay() || state.links.iter().any(Impairment::has_delay);
        if any_delay {
            Lab::delay_available().map_err(LabError::Unavailable)?;
        }
        if netns::netem_available().is_ok() {
            self.apply_netem(state)?;
        } else {
            self.apply_delay_line(state, any_delay)?;
        }
        // loss: nftables in the WAN router
        let links: Vec<f64> = state.links.iter().map(|link| link.loss_percent).collect();
        self.wan
            .nft_load(&impairment::loss_ruleset(state.wan.loss_percent, &links))
    }

    /// Delay with netem: a qdisc on the egress of both ends of each link.
    fn apply_netem(&self, state: &mut Impairments) -> Result<(), LabError> {
        let mut delays = vec![(&self.wan, "sn".to_owned(), state.wan)];
        for (peer, link) in self.peers.iter().zip(&state.links) {
            delays.push((&self.wan, format!("n{}", peer.index), state.wan.then(*link)));
            delays.push((
                peer.access_netns(),
                peer.access_interface().to_owned(),
                *link,
            ));
        }
        for (netns, interface, impairment) in delays {
            let key = (netns.name().to_owned(), interface.clone());
            if impairment.has_delay() {
                let mut args = vec!["-n", netns.name(), "qdisc", "replace", "dev", &interface];
                let netem = impairment.netem_args();
                args.extend(["root", "netem"]);
                args.extend(netem.iter().map(String::as_str));
                run_tool("tc", &args, None)?;
                state.netem.insert(key);
            } else if state.netem.remove(&key) {
                run_tool(
                    "tc",
                    &[
                        "-n",
                        netns.name(),
                        "qdisc",
                        "del",
                        "dev",
                        &interface,
                        "root",
                    ],
                    None,
                )?;
            }
        }
        Ok(())
    }

    /// Delay without netem: the userspace delay line in the WAN router (see `qp-delay-line`),
    /// which gives each forwarded packet the WAN delay plus the delays of the access links it
    /// enters and leaves by, the same totals as the netem qdiscs. Jitter is the WAN's plus the
    /// largest link's (one jitter for all packets). Restarted when the delays change.
    fn apply_delay_line(&self, state: &mut Impairments, any_delay: bool) -> Result<(), LabError> {
        if !any_delay {
            state.delay_line = None;
            return Ok(());
        }
        let jitter = state.wan.jitter
            + state
                .links
                .iter()
                .map(|link| link.jitter)
                .max()
                .unwrap_or_default();
        let mut args = vec![
            "--queue".to_owned(),
            netns::DELAY_LINE_QUEUE.to_owned(),
            "--wan-us".to_owned(),
            state.wan.delay.as_micros().to_string(),
            "--jitter-us".to_owned(),
            jitter.as_micros().to_string(),
        ];
        for (peer, link) in self.peers.iter().zip(&state.links) {
            if !link.delay.is_zero() {
                args.push("--link".to_owned());
                args.push(format!("n{}={}", peer.index, link.delay.as_micros()));
            }
        }
        if state
            .delay_line
            .as_ref()
            .is_some_and(|line| line.args == args)
        {
            return Ok(());
        }
        // stop the old one first: one process per queue
        state.delay_line = None;
        let line = DelayLine::start(&self.wan, args)?;
        if !state.delay_rule {
            let mut rule = vec!["iptables"];
            rule.extend(netns::DELAY_LINE_RULE);
            self.wan.run(rule[0], &rule[1..])?;
            state.delay_rule = true;
        }
        state.delay_line = Some(line);
        Ok(())
    }

    fn lock_impairments(&self) -> std::sync::MutexGuard<'_, Impairments> {
        self.impairments
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The namespace hosting the supernode processes (stun-a, stun-b, gateway, relay, …), with two or
/// more public addresses on the WAN.
#[derive(Clone, Debug)]
pub struct SupernodeHost {
    netns: Netns,
    ips: Vec<Ipv4Addr>,
}

impl SupernodeHost {
    /// The namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// All public addresses: 203.0.113.10, 203.0.113.11, …
    pub fn ips(&self) -> &[Ipv4Addr] {
        &self.ips
    }

    /// The first address (203.0.113.10): stun-a's, the gateway's.
    pub fn ip_a(&self) -> Ipv4Addr {
        self.ips[0]
    }

    /// The second address (203.0.113.11): stun-b's.
    pub fn ip_b(&self) -> Ipv4Addr {
        self.ips[1]
    }

    /// A command running `program` in this namespace; see [`Netns::command`].
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        self.netns.command(program)
    }

    /// A tokio command running `program` in this namespace; see [`Netns::tokio_command`].
    pub fn tokio_command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        self.netns.tokio_command(program)
    }
}

/// A peer host of the lab and the NAT devices in front of it.
#[derive(Clone, Debug)]
pub struct Peer {
    index: usize,
    kind: NatKind,
    netns: Netns,
    private_ip: Ipv4Addr,
    public_ip: Ipv4Addr,
    nats: Vec<NatDevice>,
}

impl Peer {
    /// Its position in the lab.
    pub fn index(&self) -> usize {
        self.index
    }

    /// What it sits behind.
    pub fn kind(&self) -> NatKind {
        self.kind
    }

    /// The peer's namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The address on the peer's own interface `eth0`: 10.i.0.2 behind a NAT, the public address
    /// with [`NatKind::None`].
    pub fn private_ip(&self) -> Ipv4Addr {
        self.private_ip
    }

    /// The address the WAN sees the peer's traffic come from: its outermost NAT's (198.51.100.(20+i)).
    pub fn public_ip(&self) -> Ipv4Addr {
        self.public_ip
    }

    /// The NAT devices in front of the peer, peer side first; empty with [`NatKind::None`].
    pub fn nats(&self) -> &[NatDevice] {
        &self.nats
    }

    /// A command running `program` in the peer's namespace; see [`Netns::command`].
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        self.netns.command(program)
    }

    /// A tokio command running `program` in the peer's namespace; see [`Netns::tokio_command`].
    pub fn tokio_command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        self.netns.tokio_command(program)
    }

    /// The namespace holding the peer's end of its access link.
    fn access_netns(&self) -> &Netns {
        self.nats.last().map_or(&self.netns, |nat| &nat.netns)
    }

    fn access_interface(&self) -> &'static str {
        if self.nats.is_empty() { "eth0" } else { "wan" }
    }
}

/// One emulated NAT device: a namespace with interfaces `lan` and `wan` and an nftables ruleset.
#[derive(Clone, Debug)]
pub struct NatDevice {
    nat_type: NatType,
    netns: Netns,
    lan_ip: Ipv4Addr,
    wan_ip: Ipv4Addr,
}

impl NatDevice {
    /// Its behaviour.
    pub fn nat_type(&self) -> NatType {
        self.nat_type
    }

    /// Its namespace: inspect it with [`Netns::conntrack`] and [`Netns::nft_ruleset`].
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Its address on `lan` (the inside gateway).
    pub fn lan_ip(&self) -> Ipv4Addr {
        self.lan_ip
    }

    /// Its address on `wan` (the translated source address).
    pub fn wan_ip(&self) -> Ipv4Addr {
        self.wan_ip
    }
}

/// How to build a [`Lab`].
#[derive(Clone, Debug)]
pub struct LabBuilder {
    peers: Vec<(NatKind, Impairment)>,
    supernode_addresses: usize,
    wan: Impairment,
    udp_timeout: Duration,
    udp_timeout_stream: Duration,
    unsolicited: UnsolicitedInbound,
}

impl Default for LabBuilder {
    fn default() -> Self {
        LabBuilder {
            peers: Vec::new(),
            supernode_addresses: 2,
            wan: Impairment::NONE,
            udp_timeout: Duration::from_secs(30),
            udp_timeout_stream: Duration::from_secs(120),
            unsolicited: UnsolicitedInbound::KeepConntrack,
        }
    }
}

impl LabBuilder {
    /// Adds a peer behind `kind`.
    pub fn peer(self, kind: NatKind) -> Self {
        self.peer_with_link(kind, Impairment::NONE)
    }

    /// Adds a peer behind `kind` whose access link adds `impairment` in both directions (delay
    /// needs netem, see [`wan_delay`](Self::wan_delay)).
    pub fn peer_with_link(mut self, kind: NatKind, impairment: Impairment) -> Self {
        self.peers.push((kind, impairment));
        self
    }

    /// Number of public addresses of the supernode host, from 203.0.113.10 up (default 2, at
    /// least 2: stun-a and stun-b need distinct addresses).
    pub fn supernode_addresses(mut self, count: usize) -> Self {
        self.supernode_addresses = count;
        self
    }

    /// Adds `delay` to every packet leaving the WAN router: each path between two lab hosts gets it
    /// once per direction. Needs the kernel's netem qdisc or the userspace delay line
    /// ([`Lab::delay_available`]); without either, [`build`](Self::build) fails with
    /// [`LabError::Unavailable`].
    pub fn wan_delay(mut self, delay: Duration) -> Self {
        self.wan.delay = delay;
        self
    }

    /// Drops `percent` of the packets crossing the WAN router (nftables; works on any kernel).
    pub fn wan_loss(mut self, percent: f64) -> Self {
        self.wan.loss_percent = percent;
        self
    }

    /// Sets the whole impairment of packets crossing the WAN router.
    pub fn wan_impairment(mut self, impairment: Impairment) -> Self {
        self.wan = impairment;
        self
    }

    /// The NAT devices' UDP conntrack timeouts: `unreplied` for flows that have only seen packets
    /// one way (Linux default 30 s: the life of a mapping nobody answered, and of the stale entry
    /// of the DESIGN.md §4 pitfall), `replied` for flows seen both ways (Linux default 120 s). The
    /// dynamic maps of the full-cone and restricted types expire after `replied` without outbound
    /// traffic.
    pub fn udp_timeouts(mut self, unreplied: Duration, replied: Duration) -> Self {
        self.udp_timeout = unreplied;
        self.udp_timeout_stream = replied;
        self
    }

    /// What the NATs do with inbound packets their filtering rejects (default: keep conntrack
    /// state like plain Linux, which reproduces the DESIGN.md §4 pitfall).
    pub fn unsolicited(mut self, unsolicited: UnsolicitedInbound) -> Self {
        self.unsolicited = unsolicited;
        self
    }

    /// Builds the lab. Fails with [`LabError::Unavailable`] when this machine cannot host one; on
    /// any failure, whatever was already created is removed.
    pub fn build(self) -> Result<Lab, LabError> {
        self.validate()?;
        Lab::available().map_err(LabError::Unavailable)?;
        netns::sweep_stale();
        let id = format!(
            "{NAMESPACE_PREFIX}{:x}-{}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut namespaces = NamespaceGuard { names: Vec::new() };
        let wan = namespaces.create(&format!("{id}-wan"))?;
        let supernode_netns = namespaces.create(&format!("{id}-sn"))?;

        // WAN router ⇄ supernode host
        let supernode_ips: Vec<Ipv4Addr> = (0..self.supernode_addresses)
            .map(|k| Ipv4Addr::new(203, 0, 113, 10 + k as u8))
            .collect();
        let mut wan_commands = vec![
            format!(
                "link add sn type veth peer name wan netns {}",
                supernode_netns.name()
            ),
            format!("addr add {WAN_SUPERNODE_GATEWAY}/24 dev sn"),
            "link set sn up".to_owned(),
        ];
        let mut supernode_commands: Vec<String> = supernode_ips
            .iter()
            .map(|ip| format!("addr add {ip}/24 dev wan"))
            .collect();
        supernode_commands.push("link set wan up".to_owned());
        supernode_commands.push(format!("route add default via {WAN_SUPERNODE_GATEWAY}"));

        let mut peers = Vec::with_capacity(self.peers.len());
        for (index, (kind, _)) in self.peers.iter().enumerate() {
            let peer = build_peer(&id, index, *kind, &mut namespaces, &mut wan_commands)?;
            peers.push(peer);
        }
        wan.ip_batch(&wan_commands)?;
        supernode_netns.ip_batch(&supernode_commands)?;
        for peer in &peers {
            configure_peer(peer)?;
        }

        wan.sysctl(&[("net/ipv4/ip_forward", "1".to_owned())])?;
        for nat in peers.iter().flat_map(|peer| &peer.nats) {
            let rules = NatRules {
                nat_type: nat.nat_type,
                wan_ip: nat.wan_ip,
                mapping_timeout: self.udp_timeout_stream,
                unsolicited: self.unsolicited,
            };
            nat.netns.nft_load(&rules.ruleset())?;
            // conntrack's per-namespace sysctls exist once the ruleset has loaded it
            nat.netns.sysctl(&[
                ("net/ipv4/ip_forward", "1".to_owned()),
                (
                    "net/netfilter/nf_conntrack_udp_timeout",
                    self.udp_timeout.as_secs().max(1).to_string(),
                ),
                (
                    "net/netfilter/nf_conntrack_udp_timeout_stream",
                    self.udp_timeout_stream.as_secs().max(1).to_string(),
                ),
            ])?;
        }

        let lab = Lab {
            id,
            wan,
            supernode: SupernodeHost {
                netns: supernode_netns,
                ips: supernode_ips,
            },
            impairments: Mutex::new(Impairments {
                wan: self.wan,
                links: self.peers.iter().map(|(_, link)| *link).collect(),
                netem: HashSet::new(),
                delay_line: None,
                delay_rule: false,
            }),
            peers,
            namespaces,
        };
        {
            let mut state = lab.lock_impairments();
            lab.apply_impairments(&mut state)?;
        }
        Ok(lab)
    }

    /// [`build`](Self::build), except that an unavailable machine gives `Ok(None)` after printing
    /// `SKIP: <reason>` to stderr, so a test can `return` and pass:
    ///
    /// ```no_run
    /// # use quickp2p_e2e::natlab::{Lab, NatKind};
    /// let Some(lab) = Lab::builder().peer(NatKind::Symmetric).build_or_skip().unwrap() else {
    ///     return;
    /// };
    /// # drop(lab);
    /// ```
    pub fn build_or_skip(self) -> Result<Option<Lab>, LabError> {
        match self.build() {
            Ok(lab) => Ok(Some(lab)),
            Err(LabError::Unavailable(reason)) => {
                eprintln!("SKIP: {reason}");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn validate(&self) -> Result<(), LabError> {
        let mut problems = Vec::new();
        if self.peers.len() > MAX_PEERS {
            problems.push(format!("{} peers (at most {MAX_PEERS})", self.peers.len()));
        }
        if !(2..=50).contains(&self.supernode_addresses) {
            problems.push(format!(
                "{} supernode addresses (2 to 50)",
                self.supernode_addresses
            ));
        }
        if self.udp_timeout.is_zero() || self.udp_timeout_stream.is_zero() {
            problems.push("zero UDP timeout".to_owned());
        }
        let impairments = std::iter::once(&self.wan).chain(self.peers.iter().map(|(_, i)| i));
        if impairments
            .clone()
            .any(|i| !(0.0..=100.0).contains(&i.loss_percent))
        {
            problems.push("loss outside 0..=100 %".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LabError::Config(problems.join("; ")))
        }
    }
}

/// Creates peer `index`'s namespaces and veth pairs and adds the WAN side of its access link to
/// `wan_commands`; addresses inside are set by [`configure_peer`].
fn build_peer(
    id: &str,
    index: usize,
    kind: NatKind,
    namespaces: &mut NamespaceGuard,
    wan_commands: &mut Vec<String>,
) -> Result<Peer, LabError> {
    let octet = index as u8;
    let public_ip = Ipv4Addr::new(198, 51, 100, 20 + octet);
    let peer_netns = namespaces.create(&format!("{id}-p{index}"))?;
    let devices = kind.devices();
    let mut nats = Vec::with_capacity(devices.len());
    for (position, nat_type) in devices.iter().enumerate() {
        // peer side first: the home NAT is `n`, the carrier NAT `c`
        let (suffix, lan_ip, wan_ip) = match (position, devices.len()) {
            (0, 1) => ("n", Ipv4Addr::new(10, octet, 0, 1), public_ip),
            (0, _) => (
                "n",
                Ipv4Addr::new(10, octet, 0, 1),
                Ipv4Addr::new(100, 64, octet, 2),
            ),
            _ => ("c", Ipv4Addr::new(100, 64, octet, 1), public_ip),
        };
        nats.push(NatDevice {
            nat_type: *nat_type,
            netns: namespaces.create(&format!("{id}-{suffix}{index}"))?,
            lan_ip,
            wan_ip,
        });
    }
    let access_netns = nats.last().map_or(&peer_netns, |nat| &nat.netns);
    let access_if = if nats.is_empty() { "eth0" } else { "wan" };
    wan_commands.push(format!(
        "link add n{index} type veth peer name {access_if} netns {}",
        access_netns.name()
    ));
    wan_commands.push(format!(
        "addr add {WAN_ACCESS_GATEWAY}/32 peer {public_ip}/32 dev n{index}"
    ));
    wan_commands.push(format!("link set n{index} up"));
    let private_ip = if nats.is_empty() {
        public_ip
    } else {
        Ipv4Addr::new(10, octet, 0, 2)
    };
    Ok(Peer {
        index,
        kind,
        netns: peer_netns,
        private_ip,
        public_ip,
        nats,
    })
}

/// Addresses and routes inside a peer's namespaces (after the WAN side created the access link).
fn configure_peer(peer: &Peer) -> Result<(), LabError> {
    let Some(home) = peer.nats.first() else {
        return peer.netns.ip_batch(&[
            format!(
                "addr add {}/32 peer {WAN_ACCESS_GATEWAY}/32 dev eth0",
                peer.public_ip
            ),
            "link set eth0 up".to_owned(),
            format!("route add default via {WAN_ACCESS_GATEWAY}"),
        ]);
    };
    // home NAT ⇄ peer
    home.netns.ip_batch(&[format!(
        "link add lan type veth peer name eth0 netns {}",
        peer.netns.name()
    )])?;
    peer.netns.ip_batch(&[
        format!("addr add {}/24 dev eth0", peer.private_ip),
        "link set eth0 up".to_owned(),
        format!("route add default via {}", home.lan_ip),
    ])?;
    let mut home_commands = vec![
        format!("addr add {}/24 dev lan", home.lan_ip),
        "link set lan up".to_owned(),
    ];
    match peer.nats.get(1) {
        None => home_commands.extend([
            format!(
                "addr add {}/32 peer {WAN_ACCESS_GATEWAY}/32 dev wan",
                home.wan_ip
            ),
            "link set wan up".to_owned(),
            format!("route add default via {WAN_ACCESS_GATEWAY}"),
        ]),
        Some(carrier) => {
            // home NAT ⇄ carrier NAT over 100.64.i.0/24
            carrier.netns.ip_batch(&[
                format!(
                    "link add lan type veth peer name wan netns {}",
                    home.netns.name()
                ),
                format!("addr add {}/24 dev lan", carrier.lan_ip),
                "link set lan up".to_owned(),
                format!(
                    "addr add {}/32 peer {WAN_ACCESS_GATEWAY}/32 dev wan",
                    carrier.wan_ip
                ),
                "link set wan up".to_owned(),
                format!("route add default via {WAN_ACCESS_GATEWAY}"),
            ])?;
            home_commands.extend([
                format!("addr add {}/24 dev wan", home.wan_ip),
                "link set wan up".to_owned(),
                format!("route add default via {}", carrier.lan_ip),
            ]);
        }
    }
    home.netns.ip_batch(&home_commands)
}

/// Owns a lab's namespaces: deletes them (after killing their processes) when dropped.
#[derive(Debug)]
struct NamespaceGuard {
    names: Vec<String>,
}

impl NamespaceGuard {
    fn create(&mut self, name: &str) -> Result<Netns, LabError> {
        let netns = netns::create(name)?;
        self.names.push(name.to_owned());
        netns.ip_batch(&["link set lo up".to_owned()])?;
        Ok(netns)
    }
}

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            if let Err(e) = netns::destroy(name) {
                eprintln!("natlab: could not delete namespace {name}: {e}");
            }
        }
    }
}
