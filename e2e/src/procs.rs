//! Child processes for end-to-end tests and benchmarks: started from a [`Command`] (possibly
//! inside a lab namespace), stdout read line by line on a thread, killed and reaped when dropped.

use std::io::{self, BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running child process; killed when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `command` with stdin piped (written by [`say`](Self::say)), stdout piped (read by [`wait_for`](Self::wait_for) and
    /// [`next_line`](Self::next_line)) and stderr inherited; `QP_*` variables of this process are
    /// not passed on, so a developer's environment cannot change what a test starts.
    ///
    /// # Errors
    /// When the program cannot be started.
    pub fn spawn(name: impl Into<String>, mut command: Command) -> Result<Proc, String> {
        let name = name.into();
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, _) in std::env::vars() {
            if key.starts_with("QP_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Proc {
            name,
            child: Some(child),
            stdin,
            lines,
        })
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits up to `timeout` for a stdout line containing `pattern` and returns it (lines before
    /// it are skipped).
    ///
    /// # Errors
    /// When the process ends or the time runs out first.
    pub fn wait_for(&self, pattern: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(pattern) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{} did not print {pattern:?} within {timeout:?}",
                        self.name
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("{} ended before printing {pattern:?}", self.name));
                }
            }
        }
    }

    /// The next stdout line, waiting up to `timeout`; `None` on timeout or end of output.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Writes `line` and a newline to the process's stdin.
    ///
    /// # Errors
    /// When its stdin is closed.
    pub fn say(&mut self, line: &str) -> Result<(), String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| format!("{} has no stdin", self.name))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("writing to {}: {e}", self.name))
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        self.stdin = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP port free on 127.0.0.1 when asked (another process may take it before it is used).
///
/// # Errors
/// When no port can be bound.
pub fn free_tcp_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A UDP port free on 127.0.0.1 when asked (another process may take it before it is used).
///
/// # Errors
/// When no port can be bound.
pub fn free_udp_port() -> io::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Creates application `app_id` with `checkpoint` (a command running `quickp2p-checkpoint`,
/// possibly inside a lab namespace) on the Redis at `redis_url`; returns its first secret.
///
/// # Errors
/// When the command fails or prints no secret.
pub fn create_app(
    mut checkpoint: Command,
    redis_url: &str,
    app_id: &str,
) -> Result<String, String> {
    let output = checkpoint
        .args(["--redis", redis_url, "app", "create", "--id", app_id])
        .output()
        .map_err(|e| format!("quickp2p-checkpoint app create: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "quickp2p-checkpoint app create failed: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("secret      "))
        .map(|rest| rest.trim().to_owned())
        .ok_or_else(|| format!("no secret line in: {stdout}"))
}
