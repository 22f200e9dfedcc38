//! Named network namespaces (`ip netns`): creating them, running processes inside them, tearing
//! them down, and sweeping the ones a dead test process left behind.
//!
//! Every lab namespace is named `qpl-<pid in hex>-<lab number>-<role>`, so a namespace whose
//! process is gone can be recognised and removed by the next lab that starts (on this machine, from
//! any process). Processes run inside a namespace through `ip netns exec NAME program …`: the
//! workspace forbids `unsafe`, so no `setns` here.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::error::LabError;

/// Prefix of every namespace a lab creates.
pub const NAMESPACE_PREFIX: &str = "qpl-";

/// `ip netns add` mounts `/run/netns` on first use; serialise creations within this process.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// Namespaces this process created and has not deleted yet. A namespace named after this process
/// but missing here was left by an earlier process with the same pid, and is swept.
static OWNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn owned() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    OWNED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A named network namespace of a lab. Cloning the handle does not extend the namespace's life:
/// it is deleted when its [`Lab`](super::Lab) is dropped.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside this namespace (`ip netns exec NAME program`). Add
    /// arguments, environment and stdio as usual; the spawned process's pid is `program`'s own.
    /// Every process left in the namespace is killed when the lab is dropped.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// The same as [`command`](Self::command) for tokio, with `kill_on_drop(true)`.
    pub fn tokio_command(&self, program: impl AsRef<OsStr>) -> tokio::process::Command {
        let mut command = tokio::process::Command::from(self.command(program));
        command.kill_on_drop(true);
        command
    }

    /// Runs `program args…` inside the namespace to completion and returns its stdout; fails when
    /// it exits unsuccessfully.
    pub fn run<S: AsRef<str>>(&self, program: &str, args: &[S]) -> Result<String, LabError> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend(args.iter().map(AsRef::as_ref));
        run_tool("ip", &full, None)
    }

    /// The kernel's connection tracking table of this namespace (`/proc/net/nf_conntrack`), one
    /// entry per line; empty before the namespace has tracked anything.
    pub fn conntrack(&self) -> Result<String, LabError> {
        self.run("cat", &["/proc/net/nf_conntrack"])
    }

    /// The nftables ruleset loaded in this namespace, with the dynamic maps' current elements.
    pub fn nft_ruleset(&self) -> Result<String, LabError> {
        self.run("nft", &["list", "ruleset"])
    }

    /// Runs `ip -n NAME -batch -` with `commands`, one per line.
    pub(crate) fn ip_batch(&self, commands: &[String]) -> Result<(), LabError> {
        if commands.is_empty() {
            return Ok(());
        }
        let mut script = commands.join("\n");
        script.push('\n');
        run_tool("ip", &["-n", &self.name, "-batch", "-"], Some(&script)).map(drop)
    }

    /// Loads an nftables ruleset with `nft -f -` inside the namespace.
    pub(crate) fn nft_load(&self, ruleset: &str) -> Result<(), LabError> {
        run_tool(
            "ip",
            &["netns", "exec", &self.name, "nft", "-f", "-"],
            Some(ruleset),
        )
        .map(drop)
    }

    /// Writes `value` to each `/proc/sys/<key>` (keys with `/`), inside the namespace.
    pub(crate) fn sysctl(&self, settings: &[(&str, String)]) -> Result<(), LabError> {
        let script: String = settings
            .iter()
            .map(|(key, value)| format!("echo {value} > /proc/sys/{key}\n"))
            .collect();
        run_tool(
            "ip",
            &["netns", "exec", &self.name, "sh", "-e", "-c", &script],
            None,
        )
        .map(drop)
    }

    /// Process ids of everything running in the namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.name)
    }
}

/// Creates the namespace `name`. Bring its loopback up with [`Netns::ip_batch`].
pub(crate) fn create(name: &str) -> Result<Netns, LabError> {
    let _guard = CREATE_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    owned().insert(name.to_owned());
    if let Err(e) = run_tool("ip", &["netns", "add", name], None) {
        owned().remove(name);
        return Err(e);
    }
    Ok(Netns {
        name: name.to_owned(),
    })
}

/// Kills every process in the namespace `name` and deletes it. Best effort: returns what failed.
pub(crate) fn destroy(name: &str) -> Result<(), String> {
    let pids = pids_in(name);
    if !pids.is_empty() {
        let mut kill = Command::new("kill");
        kill.arg("-KILL").args(pids.iter().map(u32::to_string));
        // a process may exit on its own meanwhile: ignore kill's complaints
        let _ = kill.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
    let deleted = run_tool("ip", &["netns", "del", name], None);
    owned().remove(name);
    deleted.map(drop).map_err(|e| e.to_string())
}

fn pids_in(name: &str) -> Vec<u32> {
    run_tool("ip", &["netns", "pids", name], None)
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every namespace on the machine whose name starts with [`NAMESPACE_PREFIX`].
pub fn lab_namespaces() -> Vec<String> {
    run_tool("ip", &["netns", "list"], None)
        .map(|out| {
            out.lines()
                .filter_map(|line| line.split_whitespace().next())
                .filter(|name| name.starts_with(NAMESPACE_PREFIX))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The pid encoded in a lab namespace name, `qpl-<pid hex>-…`.
pub(crate) fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAMESPACE_PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    u32::from_str_radix(pid, 16).ok()
}

/// Removes lab namespaces whose creating process no longer exists (or that carry this process's pid
/// without having been created by it: left by an earlier process with the same pid). Returns the
/// names removed.
pub(crate) fn sweep_stale() -> Vec<String> {
    let me = std::process::id();
    let mut removed = Vec::new();
    for name in lab_namespaces() {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        let alive = if pid == me {
            owned().contains(&name)
        } else {
            Path::new(&format!("/proc/{pid}")).exists()
        };
        if alive {
            continue;
        }
        // another lab may sweep the same namespace at the same moment: errors are fine
        if destroy(&name).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// Whether this machine can host a lab; the reason when it cannot. Checked once per process.
pub fn available() -> Result<(), String> {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    AVAILABLE.get_or_init(check_available).clone()
}

fn check_available() -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        return Err("the NAT lab needs Linux network namespaces".to_owned());
    }
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Err(format!(
            "not root (effective uid {euid}); the NAT lab needs root for network namespaces"
        ));
    }
    for (tool, version_flag, package) in
        [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")]
    {
        if let Err(e) = run_tool(tool, &[version_flag], None) {
            return Err(format!(
                "`{tool}` is not usable ({e}); install it with `apt-get install {package}`"
            ));
        }
    }
    // a trial namespace with an nftables table proves namespaces and nf_tables both work
    let name = format!("{NAMESPACE_PREFIX}{:x}-avail", std::process::id());
    create(&name).map_err(|e| format!("cannot create a network namespace: {e}"))?;
    // from here on the trial namespace is destroyed whatever happens
    let trial = run_tool(
        "ip",
        &[
            "netns", "exec", &name, "nft", "add", "table", "ip", "qptrial",
        ],
        None,
    );
    let _ = destroy(&name);
    trial.map_err(|e| format!("nftables does not work inside a namespace: {e}"))?;
    Ok(())
}

/// Whether this machine has the netem qdisc (the kernel's own delay); the reason when it has
/// not. Checked once per process.
pub fn netem_available() -> Result<(), String> {
    static NETEM_AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    available()?;
    NETEM_AVAILABLE.get_or_init(check_netem_available).clone()
}

/// Whether this machine can add delay to lab links, with netem or else with the userspace delay
/// line (`qp-delay-line` behind an iptables `NFQUEUE` rule); the reasons when it cannot.
pub fn delay_available() -> Result<(), String> {
    static DELAY_LINE_AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    let Err(netem) = netem_available() else {
        return Ok(());
    };
    DELAY_LINE_AVAILABLE
        .get_or_init(check_delay_line_available)
        .clone()
        .map_err(|line| format!("{netem}; and the userspace delay line cannot run: {line}"))
}

fn check_delay_line_available() -> Result<(), String> {
    crate::binaries::workspace_binary(DELAY_LINE_BINARY)?;
    if let Err(e) = run_tool("iptables", &["-V"], None) {
        return Err(format!(
            "`iptables` is not usable ({e}); install it with `apt-get install iptables`"
        ));
    }
    let name = format!("{NAMESPACE_PREFIX}{:x}-nfq", std::process::id());
    create(&name).map_err(|e| format!("cannot create a network namespace: {e}"))?;
    let mut rule = vec!["netns", "exec", &name, "iptables"];
    rule.extend(DELAY_LINE_RULE);
    let trial = run_tool("ip", &rule, None);
    let _ = destroy(&name);
    trial
        .map(drop)
        .map_err(|e| format!("the kernel refuses an NFQUEUE rule: {e}"))
}

/// The delay line's program name (an e2e binary).
pub(crate) const DELAY_LINE_BINARY: &str = "qp-delay-line";
/// The NFQUEUE number the delay line binds in a WAN namespace (queues are per namespace).
pub(crate) const DELAY_LINE_QUEUE: &str = "7";
/// The iptables arguments that send forwarded packets to the delay line; with `--queue-bypass`
/// they pass undelayed while no delay line is bound.
pub(crate) const DELAY_LINE_RULE: [&str; 9] = [
    "-t",
    "mangle",
    "-A",
    "FORWARD",
    "-j",
    "NFQUEUE",
    "--queue-num",
    DELAY_LINE_QUEUE,
    "--queue-bypass",
];

fn check_netem_available() -> Result<(), String> {
    if let Err(e) = run_tool("tc", &["-V"], None) {
        return Err(format!(
            "`tc` is not usable ({e}); install it with `apt-get install iproute2`"
        ));
    }
    let name = format!("{NAMESPACE_PREFIX}{:x}-netem", std::process::id());
    create(&name).map_err(|e| format!("cannot create a network namespace: {e}"))?;
    let trial = run_tool(
        "tc",
        &[
            "-n", &name, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
        ],
        None,
    );
    let _ = destroy(&name);
    trial.map(drop).map_err(|e| {
        format!(
            "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM), so the lab cannot add delay: {e}"
        )
    })
}

/// Runs a tool to completion, feeding it `stdin`; its stdout on success.
pub(crate) fn run_tool(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, LabError> {
    let command_line = || {
        let mut line = program.to_owned();
        for arg in args {
            line.push(' ');
            line.push_str(arg);
        }
        line
    };
    let spawn_error = |source| LabError::Spawn {
        command: command_line(),
        source,
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(spawn_error)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn_error)?;
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if stderr.len() > 2000 {
            stderr.truncate(2000);
            stderr.push('…');
        }
        Err(LabError::Command {
            command: command_line(),
            status: output.status.to_string(),
            stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_is_read_from_the_name() {
        assert_eq!(owner_pid("qpl-1a2b-0-wan"), Some(0x1a2b));
        assert_eq!(owner_pid("qpl-ff-12-p3"), Some(0xff));
        assert_eq!(owner_pid("qpl-zz-0-wan"), None);
        assert_eq!(owner_pid("other-1a2b-0-wan"), None);
        assert_eq!(owner_pid("qpl-1a2b"), None);
    }

    #[test]
    fn commands_go_through_ip_netns_exec() {
        let netns = Netns {
            name: "qpl-1-0-p0".to_owned(),
        };
        let command = netns.command("/bin/true");
        assert_eq!(command.get_program(), "ip");
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(args, ["netns", "exec", "qpl-1-0-p0", "/bin/true"]);
    }
}
