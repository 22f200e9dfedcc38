//! A whole supernode network inside a NAT lab's supernode host, every role its own process:
//! Redis, the STUN pair (stun-a on the host's first address, stun-b on its second), checkpoint,
//! gateway, relay and handshake, sharing state through the Redis. Peers behind the lab's NATs
//! reach it at public addresses (203.0.113.10/.11), as they would reach a real deployment.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use crate::binaries::workspace_binary;
use crate::natlab::Lab;
use crate::procs::Proc;

/// The application every lab peer logs in to.
pub const LAB_APP: &str = "lab-app";
/// The relay's TURN shared secret (the handshake mints credentials with it).
pub const LAB_TURN_SECRET: &str = "lab-turn-shared-secret";
/// STUN ports on both supernode addresses.
pub const STUN_PRIMARY_PORT: u16 = 3478;
/// The STUN pair's alternate port.
pub const STUN_ALTERNATE_PORT: u16 = 3479;
const STUN_CONTROL_PORT: u16 = 3480;
/// The gateway's QUIC port.
pub const GATEWAY_PORT: u16 = 4433;
/// The relay's TURN port.
pub const RELAY_PORT: u16 = 3482;
const REDIS_PORT: u16 = 6379;
const CHECKPOINT_GRPC_PORT: u16 = 50051;
const GATEWAY_GRPC_PORT: u16 = 50052;
const HANDSHAKE_GRPC_PORT: u16 = 50053;
const RELAY_CONTROL_PORT: u16 = 3483;
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The running network. Dropping it stops every process.
#[derive(Debug)]
pub struct LabNetwork {
    /// Every process, in start order (Redis first).
    processes: Vec<Proc>,
    /// The gateway's QUIC address.
    pub gateway: SocketAddr,
    /// The gateway certificate's SHA-256 fingerprint, hex.
    pub gateway_pin: String,
    /// stun-a's primary address.
    pub stun: SocketAddr,
    /// The relay's TURN address.
    pub relay: SocketAddr,
    /// The application's secret.
    pub app_secret: String,
}

fn binary(name: &str) -> Result<std::path::PathBuf, String> {
    workspace_binary(name)
}

impl LabNetwork {
    /// Starts the network in `lab`'s supernode host.
    ///
    /// # Errors
    /// When a binary is missing or a process does not come up.
    pub fn start(lab: &Lab) -> Result<LabNetwork, String> {
        let host = lab.supernode();
        let ip_a = host.ip_a();
        let ip_b = host.ip_b();
        let redis_url = format!("redis://{ip_a}:{REDIS_PORT}");
        let mut processes = Vec::new();

        let mut redis = host.command("redis-server");
        redis.args([
            "--bind",
            &ip_a.to_string(),
            "--port",
            &REDIS_PORT.to_string(),
        ]);
        redis.args(["--save", "", "--appendonly", "no", "--protected-mode", "no"]);
        let redis = Proc::spawn("redis-server", redis)?;
        redis.wait_for("Ready to accept connections", START_TIMEOUT)?;
        processes.push(redis);

        for (member, own, partner) in [("a", ip_a, ip_b), ("b", ip_b, ip_a)] {
            let mut stun = host.command(binary("quickp2p-stun")?);
            stun.args(["--member", member, "--bind-ip", &own.to_string()])
                .args(["--primary-port", &STUN_PRIMARY_PORT.to_string()])
                .args(["--alternate-port", &STUN_ALTERNATE_PORT.to_string()])
                .args(["--partner-addr", &format!("{partner}:{STUN_PRIMARY_PORT}")])
                .args(["--partner-alternate-port", &STUN_ALTERNATE_PORT.to_string()])
                .args(["--control-addr", &format!("{own}:{STUN_CONTROL_PORT}")])
                .args([
                    "--partner-control-url",
                    &format!("http://{partner}:{STUN_CONTROL_PORT}"),
                ])
                .args(["--http-addr", &format!("{own}:9090")])
                .args(["--redis", &redis_url, "--log", "warn"])
                .args(["--replica-id", &format!("stun-{member}")]);
            let stun = Proc::spawn(format!("stun-{member}"), stun)?;
            stun.wait_for("ops", START_TIMEOUT)?;
            processes.push(stun);
        }

        let app_secret = crate::procs::create_app(
            host.command(binary("quickp2p-checkpoint")?),
            &redis_url,
            LAB_APP,
        )?;

        let mut checkpoint = host.command(binary("quickp2p-checkpoint")?);
        checkpoint
            .args(["--redis", &redis_url])
            .args(["--grpc-addr", &format!("{ip_a}:{CHECKPOINT_GRPC_PORT}")])
            .args(["--http-addr", &format!("{ip_a}:9091")])
            .args(["--replica-id", "checkpoint-lab", "--log", "warn"]);
        let checkpoint = Proc::spawn("checkpoint", checkpoint)?;
        checkpoint.wait_for("grpc", START_TIMEOUT)?;
        processes.push(checkpoint);

        let mut relay = host.command(binary("quickp2p-relay")?);
        relay
            .args(["--listen-addr", &format!("{ip_a}:{RELAY_PORT}")])
            .args(["--control-addr", &format!("{ip_a}:{RELAY_CONTROL_PORT}")])
            .args(["--http-addr", &format!("{ip_a}:9092")])
            .args(["--redis", &redis_url])
            .args(["--shared-secret", LAB_TURN_SECRET])
            .args(["--replica-id", "relay-lab", "--log", "warn"]);
        let relay = Proc::spawn("relay", relay)?;
        relay.wait_for("ops", START_TIMEOUT)?;
        processes.push(relay);

        let mut handshake = host.command(binary("quickp2p-handshake")?);
        handshake
            .args(["--grpc-addr", &format!("{ip_a}:{HANDSHAKE_GRPC_PORT}")])
            .args(["--http-addr", &format!("{ip_a}:9093")])
            .args(["--redis", &redis_url])
            .args(["--relay-shared-secret", LAB_TURN_SECRET])
            .args(["--replica-id", "handshake-lab", "--log", "warn"]);
        let handshake = Proc::spawn("handshake", handshake)?;
        handshake.wait_for("ops", START_TIMEOUT)?;
        processes.push(handshake);

        let mut gateway = host.command(binary("quickp2p-gateway")?);
        gateway
            .args(["--redis", &redis_url])
            .args(["--udp-addr", &format!("{ip_a}:{GATEWAY_PORT}")])
            .args(["--grpc-addr", &format!("{ip_a}:{GATEWAY_GRPC_PORT}")])
            .args([
                "--checkpoint-url",
                &format!("http://{ip_a}:{CHECKPOINT_GRPC_PORT}"),
            ])
            .args([
                "--handshake-url",
                &format!("http://{ip_a}:{HANDSHAKE_GRPC_PORT}"),
            ])
            .args(["--http-addr", &format!("{ip_a}:9094")])
            .args(["--replica-id", "gateway-lab", "--log", "warn"]);
        let gateway = Proc::spawn("gateway", gateway)?;
        let line = gateway.wait_for("fingerprint sha256:", START_TIMEOUT)?;
        let gateway_pin = line
            .split("sha256:")
            .nth(1)
            .map(str::trim)
            .unwrap_or_default()
            .to_owned();
        processes.push(gateway);
        // the replicas register themselves in Redis as they start; give the last one a moment
        std::thread::sleep(Duration::from_millis(200));

        Ok(LabNetwork {
            processes,
            gateway: SocketAddr::from((ip_a, GATEWAY_PORT)),
            gateway_pin,
            stun: SocketAddr::from((ip_a, STUN_PRIMARY_PORT)),
            relay: SocketAddr::from((ip_a, RELAY_PORT)),
            app_secret,
        })
    }

    /// The arguments that point a `qp-tunnel-peer` (or the `quickp2p` CLI) at this network.
    pub fn peer_args(&self) -> Vec<String> {
        vec![
            "--gateway".to_owned(),
            self.gateway.to_string(),
            "--gateway-pin".to_owned(),
            self.gateway_pin.clone(),
            "--app".to_owned(),
            LAB_APP.to_owned(),
            "--app-secret".to_owned(),
            self.app_secret.clone(),
            "--stun".to_owned(),
            self.stun.to_string(),
        ]
    }

    /// Kills every process of the network, Redis included (SIGKILL): nothing of the supernode
    /// is left running.
    pub fn kill_all(&mut self) {
        for process in self.processes.iter_mut().rev() {
            process.kill();
        }
    }

    /// Whether any process of the network still runs.
    pub fn any_alive(&mut self) -> bool {
        self.processes.iter_mut().any(Proc::alive)
    }
}

/// A peer-side command inside the lab (for callers that build one by hand).
pub fn peer_command(lab: &Lab, index: usize, program: &str) -> Result<Command, String> {
    Ok(lab.peer(index).command(binary(program)?))
}

/// The address stun-b answers on (for NAT reports that need the second IP).
pub fn stun_b(lab: &Lab) -> SocketAddr {
    let ip: Ipv4Addr = lab.supernode().ip_b();
    SocketAddr::from((ip, STUN_PRIMARY_PORT))
}

/// How long one step of a [`TunnelPeer`] (start, open, echo) may take.
pub const PEER_STEP: Duration = Duration::from_secs(40);

/// A `qp-tunnel-peer` running behind peer `index`'s NAT, logged in to a [`LabNetwork`].
#[derive(Debug)]
pub struct TunnelPeer {
    /// The process (commands go to its stdin, answers come on its stdout).
    pub proc: Proc,
    /// Its peer id.
    pub id: String,
    /// Its NAT as its own report says, `MAPPING/FILTERING`.
    pub nat: String,
}

/// The initiator's account of an opened tunnel (`TUNNEL n kind path go_ms=… elapsed_ms=… …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedTunnel {
    /// The whole line.
    pub line: String,
    /// The tunnel's number at the initiator.
    pub number: String,
    /// `direct` or `relayed`.
    pub kind: String,
    /// From the go signal to a usable tunnel, milliseconds.
    pub go_ms: u64,
    /// The punch budget of the instruction, milliseconds.
    pub budget_ms: u64,
}

impl OpenedTunnel {
    fn parse(line: &str) -> Option<OpenedTunnel> {
        let mut words = line.split_whitespace();
        if words.next() != Some("TUNNEL") {
            return None;
        }
        let number = words.next()?.to_owned();
        let kind = words.next()?.to_owned();
        let go_ms = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("go_ms="))
            .and_then(|v| v.parse().ok())?;
        let budget_ms = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("budget_ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Some(OpenedTunnel {
            line: line.to_owned(),
            number,
            kind,
            go_ms,
            budget_ms,
        })
    }
}

impl TunnelPeer {
    /// Starts `qp-tunnel-peer` behind peer `index` and waits for its login and NAT report.
    /// `QP_PEER_LOG` sets its `RUST_LOG` (default `warn`).
    ///
    /// # Errors
    /// When it does not come up.
    pub fn start(lab: &Lab, net: &LabNetwork, index: usize) -> Result<TunnelPeer, String> {
        TunnelPeer::start_with(lab, &net.peer_args(), index)
    }

    /// [`start`](Self::start) with the network given by its [`LabNetwork::peer_args`].
    ///
    /// # Errors
    /// When it does not come up.
    pub fn start_with(lab: &Lab, peer_args: &[String], index: usize) -> Result<TunnelPeer, String> {
        let mut command = lab.peer(index).command(binary("qp-tunnel-peer")?);
        command.args(peer_args);
        command.env(
            "RUST_LOG",
            std::env::var("QP_PEER_LOG").unwrap_or_else(|_| "warn".to_owned()),
        );
        let proc = Proc::spawn(format!("peer-{index}"), command)?;
        let id = proc
            .wait_for("PEER ", PEER_STEP)?
            .trim_start_matches("PEER ")
            .trim()
            .to_owned();
        let nat = proc
            .wait_for("NAT ", PEER_STEP)?
            .trim_start_matches("NAT ")
            .trim()
            .to_owned();
        Ok(TunnelPeer { proc, id, nat })
    }

    /// Opens a tunnel to `other` and waits until both sides report it, on the same kind of path.
    ///
    /// # Errors
    /// The initiator's `FAILED …` line, a timeout, or the two sides disagreeing.
    pub fn open_to(&mut self, other: &TunnelPeer) -> Result<OpenedTunnel, String> {
        self.proc.say(&format!("open {}", other.id))?;
        let line = loop {
            let line = self
                .proc
                .next_line(PEER_STEP)
                .ok_or_else(|| format!("{} said nothing after open", self.proc.name()))?;
            if line.starts_with("TUNNEL ") || line.starts_with("FAILED ") {
                break line;
            }
        };
        let opened = OpenedTunnel::parse(&line).ok_or(line)?;
        let accepted = other.proc.wait_for("TUNNEL ", PEER_STEP)?;
        let accepted = OpenedTunnel::parse(&accepted).ok_or(accepted)?;
        if opened.kind != accepted.kind {
            return Err(format!(
                "the sides disagree: {:?} vs {:?}",
                opened.line, accepted.line
            ));
        }
        Ok(opened)
    }

    /// A 200 kB stream echo and a datagram echo over tunnel `number`.
    ///
    /// # Errors
    /// The failing answer.
    pub fn exchange(&mut self, number: &str) -> Result<(), String> {
        self.proc.say(&format!("echo {number} 200000"))?;
        let echo = self.proc.wait_for("ECHO ", PEER_STEP)?;
        if !echo.starts_with("ECHO ok") {
            return Err(echo);
        }
        self.proc.say(&format!("dgram {number}"))?;
        let dgram = self.proc.wait_for("DGRAM ", PEER_STEP)?;
        if dgram != "DGRAM ok" {
            return Err(dgram);
        }
        Ok(())
    }
}
