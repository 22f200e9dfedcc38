//! `quickp2p send-file`, `quickp2p recv-file` and `quickp2p tunnel`: files and text lines over
//! direct (or relayed) tunnels between two peers of one application.
//!
//! **File transfer.** One file per QUIC bidirectional stream of a tunnel. The sender writes a
//! header, then exactly `size` bytes, then finishes its side:
//!
//! ```text
//! "QPF1" | name length: u16 BE (1..=1024) | name: UTF-8 | size: u64 BE | SHA-256: 32 bytes | bytes
//! ```
//!
//! The receiver answers one verdict line on the same stream, `OK <stored name>\n` or
//! `ERR <reason>\n` (at most [`MAX_VERDICT`] bytes). It refuses before any byte is stored when
//! the header is malformed, the size exceeds its `--max-size`, or the name has nothing usable left
//! after sanitizing; it then stops reading the stream, so the sender learns the verdict at once. Names are reduced to their
//! base name (no `/`, `\`, control characters, `.` or `..`; at most [`MAX_STORED_NAME`] bytes) and
//! never overwrite: a taken name gets a `-1`, `-2`, … suffix. A file whose size or SHA-256 does
//! not match is deleted.
//!
//! **Line pipe.** `quickp2p tunnel` opens (or, with `--listen`, accepts) one tunnel and one stream,
//! announced by the line `QPL1`; after it, each line typed goes to the peer and each line of the
//! peer is printed. Lines longer than [`MAX_LINE`] end the pipe with an error.

use std::io::{IsTerminal as _, Write as _};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quickp2p::identity::Identity;
use quickp2p::p2p::{Connected, PathKind, Tunnels, TunnelsConfig};
use quickp2p::session::{AppCredentials, GatewayTrust, Peer, PeerId, Session, SessionConfig};
use quickp2p::tunnel::{Tunnel, TunnelPath};
use quickp2p_proto::v1::HandshakeStrategy;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

/// The magic that opens a file-transfer stream.
const FILE_MAGIC: &[u8; 4] = b"QPF1";
/// The line that opens a line-pipe stream.
const LINE_MAGIC: &str = "QPL1";
/// Longest file name accepted in a header (bytes on the wire).
const MAX_WIRE_NAME: usize = 1024;
/// Longest file name stored (bytes), leaving room for a collision suffix.
const MAX_STORED_NAME: usize = 200;
/// Longest verdict line.
const MAX_VERDICT: usize = 512;
/// Longest line of the line pipe.
const MAX_LINE: usize = 64 * 1024;
/// Time the header (and the verdict after the last byte) may take.
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest silence while bytes are expected.
const DATA_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Read/write chunk.
const CHUNK: usize = 256 * 1024;
/// QUIC application error code for a stream we stop reading (a refusal).
const REFUSED: u32 = 1;
/// Incoming tunnels `recv-file` serves at once (more are closed at once).
const MAX_TUNNELS: usize = 16;
/// `recv-file` closes a tunnel that opens no new stream for this long.
const TUNNEL_IDLE: Duration = Duration::from_secs(60);

/// How to reach and log in to the network, and the tunnels' STUN server.
#[derive(Debug, clap::Args)]
pub struct Connect {
    /// A gateway, HOST:PORT; repeat for failover. [default: 127.0.0.1:4433]
    #[arg(long = "gateway", env = "QP_GATEWAY", value_delimiter = ',')]
    gateways: Vec<String>,
    /// The application id.
    #[arg(long, env = "QP_APP_ID")]
    app: String,
    /// The application secret.
    #[arg(long, env = "QP_APP_SECRET", hide_env_values = true)]
    secret: String,
    /// The key file (make one with `quickp2p keygen`).
    #[arg(long, env = "QP_KEY_FILE")]
    key: PathBuf,
    /// SHA-256 fingerprint(s) of the gateway certificates (printed by the gateway).
    #[arg(
        long = "fingerprint",
        env = "QP_GATEWAY_FINGERPRINT",
        value_delimiter = ','
    )]
    fingerprints: Vec<String>,
    /// Accept any gateway certificate (development only).
    #[arg(long, conflicts_with = "fingerprints")]
    insecure: bool,
    /// STUN server (stun-a's primary address) for this peer's reflexive candidate and NAT
    /// report.
    #[arg(long, env = "QP_STUN", default_value = "127.0.0.1:3478")]
    stun: String,
    /// Gather host candidates only (no STUN; the relay remains the fallback); wins over
    /// --stun and QP_STUN.
    #[arg(long)]
    no_stun: bool,
}

impl Connect {
    /// Logs in and starts the tunnels (answering offers only when `accept` is set).
    async fn tunnels(self, accept: bool) -> Result<(Session, Tunnels), String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let identity =
            Identity::load(&self.key).map_err(|e| format!("{}: {e}", self.key.display()))?;
        let trust = if self.insecure {
            GatewayTrust::AnyCertificate
        } else if self.fingerprints.is_empty() {
            return Err(
                "give the gateway's --fingerprint (it prints it at start) or --insecure".into(),
            );
        } else {
            GatewayTrust::pinned_hex(self.fingerprints.iter().map(String::as_str))?
        };
        let stun = if self.no_stun {
            None
        } else {
            Some(resolve_one("--stun", &self.stun)?)
        };
        let gateways = if self.gateways.is_empty() {
            vec![resolve_one("--gateway", "127.0.0.1:4433")?]
        } else {
            self.gateways
                .iter()
                .map(|g| resolve_one("--gateway", g))
                .collect::<Result<Vec<_>, _>>()?
        };
        let config = SessionConfig::new(
            gateways,
            AppCredentials::new(self.app, self.secret),
            identity,
        )
        .trust(trust);
        let session = Peer::connect(config)
            .await
            .map_err(|e| format!("login failed: {e}"))?;
        let mut tunnels_config = TunnelsConfig::new().accept_offers(accept);
        if let Some(stun) = stun {
            tunnels_config = tunnels_config.stun(stun);
        }
        let tunnels = Tunnels::start(&session, tunnels_config)
            .await
            .map_err(|e| format!("cannot start tunnels: {e}"))?;
        Ok((session, tunnels))
    }
}

fn resolve_one(flag: &str, addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("{flag} {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{flag} {addr:?} has no address"))
}

fn parse_peer(flag: &str, text: &str) -> Result<PeerId, String> {
    text.parse().map_err(|e| format!("{flag} {text:?}: {e}"))
}

/// Flags of `quickp2p send-file`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    #[command(flatten)]
    connect: Connect,
    /// The receiving peer (64 hex digits; `quickp2p recv-file` prints it).
    #[arg(long)]
    to: String,
    /// The file to send.
    file: PathBuf,
    /// Announce the file under this name instead of its own (the receiver keeps only a
    /// sanitized base name).
    #[arg(long = "as", value_name = "NAME")]
    name: Option<String>,
    /// Do not draw the progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// Flags of `quickp2p recv-file`.
#[derive(Debug, clap::Args)]
pub struct RecvArgs {
    #[command(flatten)]
    connect: Connect,
    /// Where received files are written (created if missing); existing files are never
    /// overwritten.
    #[arg(long)]
    dir: PathBuf,
    /// Refuse files larger than this many bytes (suffixes K, M, G, T: powers of 1024).
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    max_size: u64,
    /// Accept tunnels only from this peer; repeat for more. [default: any peer of the app]
    #[arg(long = "from", value_name = "PEER")]
    from: Vec<String>,
    /// Exit after this many files were received (verified); 0 runs until Ctrl-C.
    #[arg(long, default_value_t = 0)]
    count: u64,
}

/// Flags of `quickp2p tunnel`.
#[derive(Debug, clap::Args)]
pub struct PipeArgs {
    #[command(flatten)]
    connect: Connect,
    /// The peer to open a tunnel to.
    #[arg(long, required_unless_present = "listen", conflicts_with = "listen")]
    to: Option<String>,
    /// Wait for a peer to open a tunnel to this one instead.
    #[arg(long)]
    listen: bool,
}

/// `4096`, `64K`, `10M`, `4G`, `1T` (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix {c:?} (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// How the tunnel runs, for humans: `direct 1.2.3.4:5` or `relayed via 1.2.3.4:5`.
fn describe_path(connected: &Connected) -> String {
    match connected.tunnel.path() {
        Ok(TunnelPath::Direct(addr)) => format!("direct {addr}"),
        Ok(TunnelPath::Relayed { relay }) => format!("relayed via {relay}"),
        // a tunnel closed already; say what it opened as
        Err(_) => match connected.kind {
            PathKind::Direct => "direct".to_owned(),
            PathKind::Relayed => "relayed".to_owned(),
        },
    }
}

fn path_word(tunnel: &Tunnel) -> String {
    match tunnel.path() {
        Ok(TunnelPath::Direct(addr)) => format!("direct {addr}"),
        Ok(TunnelPath::Relayed { relay }) => format!("relayed via {relay}"),
        Err(_) => "closed path".to_owned(),
    }
}

fn opened_line(peer: &PeerId, connected: &Connected, towards: bool) -> String {
    format!(
        "tunnel {} {peer}: {} (ready in {} ms, {} ms after go; strategy {})",
        if towards { "to" } else { "from" },
        describe_path(connected),
        connected.elapsed.as_millis(),
        connected.ready_after_go.as_millis(),
        match connected.strategy {
            HandshakeStrategy::Direct => "direct",
            HandshakeStrategy::PortPrediction => "port prediction",
            HandshakeStrategy::Relay => "relay",
            HandshakeStrategy::Unspecified => "unspecified",
        },
    )
}

// ----------------------------------------------------------------------------------------------
// send-file

/// `quickp2p send-file`.
pub async fn send_file(args: SendArgs) -> Result<(), String> {
    let to = parse_peer("--to", &args.to)?;
    let meta =
        std::fs::metadata(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", args.file.display()));
    }
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("{} has no file name", args.file.display()))?,
    };
    if name.is_empty() || name.len() > MAX_WIRE_NAME {
        return Err(format!(
            "the file name must have 1 to {MAX_WIRE_NAME} bytes"
        ));
    }
    let size = meta.len();
    // the header carries the SHA-256, so the file is read once before the tunnel opens
    if size >= 256 << 20 && !args.no_progress {
        eprintln!("hashing {} ({})…", args.file.display(), human_bytes(size));
    }
    let path = args.file.clone();
    let digest = tokio::task::spawn_blocking(move || sha256_file(&path))
        .await
        .map_err(|e| format!("hashing: {e}"))?
        .map_err(|e| format!("{}: {e}", args.file.display()))?;

    let (session, tunnels) = args.connect.tunnels(false).await?;
    let result = send_over(
        &tunnels,
        &to,
        &args.file,
        &name,
        size,
        &digest,
        !args.no_progress,
    )
    .await;
    session.close().await;
    result
}

async fn send_over(
    tunnels: &Tunnels,
    to: &PeerId,
    file: &Path,
    name: &str,
    size: u64,
    digest: &[u8; 32],
    progress: bool,
) -> Result<(), String> {
    let connected = tunnels
        .open(to)
        .await
        .map_err(|e| format!("no tunnel to {to}: {e}"))?;
    println!("{}", opened_line(to, &connected, true));
    let kind = describe_path(&connected);
    let tunnel = &connected.tunnel;
    let (mut send, mut recv) = tunnel
        .open_bi()
        .await
        .map_err(|e| format!("cannot open a stream: {e}"))?;

    let header = FileHeader {
        name: name.to_owned(),
        size,
        sha256: *digest,
    }
    .encode();

    let started = Instant::now();
    let mut bar = Progress::new(size, progress);
    let sent: Result<(), String> = async {
        send.write_all(&header)
            .await
            .map_err(|e| format!("sending the header: {e}"))?;
        let mut f = tokio::fs::File::open(file)
            .await
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let mut buf = vec![0u8; CHUNK];
        let mut done = 0u64;
        while done < size {
            let want = usize::try_from((size - done).min(CHUNK as u64)).unwrap_or(CHUNK);
            let n = f
                .read(&mut buf[..want])
                .await
                .map_err(|e| format!("{}: {e}", file.display()))?;
            if n == 0 {
                return Err(format!("{} shrank while being sent", file.display()));
            }
            tokio::time::timeout(DATA_IDLE_TIMEOUT, send.write_all(&buf[..n]))
                .await
                .map_err(|_| format!("the receiver took no data for {DATA_IDLE_TIMEOUT:?}"))?
                .map_err(|e| format!("sending: {e}"))?;
            done += n as u64;
            bar.update(done);
        }
        send.finish().map_err(|e| format!("finishing: {e}"))?;
        Ok(())
    }
    .await;
    if sent.is_err() {
        // tell the receiver at once (it answers a broken transfer with its verdict)
        let _ = send.reset(REFUSED.into());
    }
    bar.finish();
    // the verdict explains a refusal even when sending failed because the receiver stopped reading
    let verdict = tokio::time::timeout(HEADER_TIMEOUT, read_line(&mut recv, MAX_VERDICT)).await;
    let seconds = started.elapsed().as_secs_f64();
    tunnel.close(0, b"done");
    match verdict {
        Ok(Ok(Some(line))) if line == "OK" || line.starts_with("OK ") => {
            sent?;
            let mb_s = size as f64 / seconds.max(1e-6) / 1e6;
            let stored = line.strip_prefix("OK ").unwrap_or(name);
            println!(
                "sent {name}: {size} bytes in {seconds:.2} s ({mb_s:.1} MB/s), {kind}; verified by the receiver (SHA-256), stored as {stored:?}"
            );
            Ok(())
        }
        Ok(Ok(Some(line))) => Err(format!(
            "the receiver refused {name}: {}",
            printable(line.strip_prefix("ERR ").unwrap_or(&line))
        )),
        Ok(Ok(None)) | Ok(Err(_)) | Err(_) => match sent {
            Err(e) => Err(e),
            Ok(()) => Err(format!("no verdict from the receiver for {name}")),
        },
    }
}

fn sha256_file(path: &Path) -> std::io::Result<[u8; 32]> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// Reads one `\n`-terminated line of at most `max` bytes (without the newline); `None` when the
/// stream ends before any byte.
async fn read_line(recv: &mut quinn::RecvStream, max: usize) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match recv.read(&mut byte).await {
            Ok(Some(0)) => continue,
            Ok(Some(_)) => {
                if byte[0] == b'\n' {
                    break;
                }
                if line.len() >= max {
                    return Err(format!("line longer than {max} bytes"));
                }
                line.push(byte[0]);
            }
            Ok(None) if line.is_empty() => return Ok(None),
            Ok(None) => break,
            // the peer closed the whole tunnel normally (code 0): the same as the end of stream
            Err(quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(
                close,
            ))) if close.error_code == quinn::VarInt::from_u32(0) => {
                if line.is_empty() {
                    return Ok(None);
                }
                break;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// A progress bar on stderr: redrawn in place at most 10 times a second on a terminal, a plain
/// line about once a second otherwise, nothing when disabled.
struct Progress {
    total: u64,
    done: u64,
    started: Instant,
    last: Option<Instant>,
    tty: bool,
    enabled: bool,
}

impl Progress {
    fn new(total: u64, enabled: bool) -> Progress {
        Progress {
            total,
            done: 0,
            started: Instant::now(),
            last: None,
            tty: std::io::stderr().is_terminal(),
            enabled,
        }
    }

    fn update(&mut self, done: u64) {
        self.done = done;
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        if self.last.is_some_and(|last| last.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        self.draw(false);
    }

    fn finish(&mut self) {
        if self.last.is_some() || !self.tty {
            self.draw(true);
        }
    }

    fn draw(&self, last: bool) {
        if !self.enabled {
            return;
        }
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        let rate = self.done as f64 / secs;
        let fraction = if self.total == 0 {
            1.0
        } else {
            self.done as f64 / self.total as f64
        };
        let eta = if rate > 0.0 {
            format_eta((self.total.saturating_sub(self.done)) as f64 / rate)
        } else {
            "--:--".to_owned()
        };
        let width = 30usize;
        let filled = ((fraction * width as f64) as usize).min(width);
        let text = format!(
            "[{}{}] {:>3.0}% {}/{} {}/s ETA {eta}",
            "#".repeat(filled),
            "-".repeat(width - filled),
            (fraction * 100.0).floor(),
            human_bytes(self.done),
            human_bytes(self.total),
            human_bytes(rate as u64),
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r{text}\x1b[K{}", if last { "\n" } else { "" })
        } else {
            writeln!(err, "{text}")
        };
        let _ = err.flush();
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn format_eta(seconds: f64) -> String {
    let s = seconds.round().clamp(0.0, 359_999.0) as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

// ----------------------------------------------------------------------------------------------
// recv-file

/// `quickp2p recv-file`.
pub async fn recv_file(args: RecvArgs) -> Result<(), String> {
    let allowed: Vec<PeerId> = args
        .from
        .iter()
        .map(|p| parse_peer("--from", p))
        .collect::<Result<_, _>>()?;
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let (session, tunnels) = args.connect.tunnels(true).await?;
    println!("I am {}", session.peer_id());
    println!(
        "receiving files into {} (at most {} each)",
        args.dir.display(),
        human_bytes(args.max_size)
    );
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut received = 0u64;
    let mut workers = tokio::task::JoinSet::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            incoming = tunnels.accept() => {
                let Some(connected) = incoming else {
                    return Err("the session ended".into());
                };
                let peer = connected.tunnel.remote_peer().clone();
                if !allowed.is_empty() && !allowed.contains(&peer) {
                    println!("tunnel from {peer} closed: not a --from peer");
                    connected.tunnel.close(REFUSED, b"not accepted");
                    continue;
                }
                if workers.len() >= MAX_TUNNELS {
                    println!("tunnel from {peer} closed: {MAX_TUNNELS} tunnels are being served");
                    connected.tunnel.close(REFUSED, b"busy");
                    continue;
                }
                println!("{}", opened_line(&peer, &connected, false));
                let dir = args.dir.clone();
                let max = args.max_size;
                let done = done_tx.clone();
                workers.spawn(async move { serve_tunnel(connected, dir, max, done).await });
            }
            Some(_) = workers.join_next(), if !workers.is_empty() => {}
            Some(()) = done_rx.recv() => {
                received += 1;
                if args.count > 0 && received >= args.count {
                    break;
                }
            }
            _ = &mut ctrl_c => break,
        }
    }
    // let the last verdicts reach their senders
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    session.close().await;
    Ok(())
}

/// Serves one incoming tunnel's file streams, one after the other, until it closes.
async fn serve_tunnel(
    connected: Connected,
    dir: PathBuf,
    max_size: u64,
    done: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let tunnel = &connected.tunnel;
    let peer = tunnel.remote_peer().clone();
    loop {
        let (mut send, mut recv) = match tokio::time::timeout(TUNNEL_IDLE, tunnel.accept_bi()).await
        {
            Ok(Ok(streams)) => streams,
            Ok(Err(_)) => break,
            Err(_) => {
                tunnel.close(0, b"idle");
                break;
            }
        };
        let started = Instant::now();
        let verdict = receive_one(&mut recv, &dir, max_size).await;
        let answer = match &verdict {
            Ok(stored) => format!(
                "OK {}\n",
                stored
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            Err(refusal) => {
                let _ = recv.stop(REFUSED.into());
                let line = format!("ERR {}", refusal.reason);
                format!("{}\n", cut(&line, MAX_VERDICT - 1))
            }
        };
        let _ = send.write_all(answer.as_bytes()).await;
        let _ = send.finish();
        let path = path_word(tunnel);
        match verdict {
            Ok(stored) => {
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "received {} from {peer}: {} bytes in {secs:.2} s ({:.1} MB/s), SHA-256 ok, {path}",
                    stored.path.display(),
                    stored.size,
                    stored.size as f64 / secs.max(1e-6) / 1e6,
                );
                let _ = done.send(());
            }
            Err(refusal) => println!(
                "refused {} from {peer}: {}, {path}",
                refusal.name.as_deref().unwrap_or("a transfer"),
                refusal.reason
            ),
        }
        // wait until the sender has the verdict (or gives up) before serving the next stream
        let _ = tokio::time::timeout(HEADER_TIMEOUT, send.stopped()).await;
    }
    println!("tunnel from {peer} closed");
}

/// `text` from another peer, safe for a terminal: control characters (escape sequences) other
/// than tab become `?`.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
}

/// `text` cut to at most `max` bytes at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A verified, stored file.
struct Stored {
    path: PathBuf,
    size: u64,
}

/// Why a transfer was refused (`name`: the announced name, sanitized, when known).
struct Refusal {
    name: Option<String>,
    reason: String,
}

fn refuse(name: Option<&str>, reason: impl Into<String>) -> Refusal {
    Refusal {
        name: name.map(str::to_owned),
        reason: reason.into(),
    }
}

/// A file-transfer header as on the wire (the name as announced, not yet sanitized).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileHeader {
    name: String,
    size: u64,
    sha256: [u8; 32],
}

/// What the first bytes of a stream hold.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    /// More bytes are needed: at least this many in all.
    NeedAtLeast(usize),
    /// A whole header, of this many bytes.
    Header(FileHeader, usize),
}

impl FileHeader {
    /// Magic and name length.
    const PREFIX: usize = 4 + 2;
    /// Size and SHA-256.
    const TAIL: usize = 8 + 32;

    /// The wire form (the name must have 1 to [`MAX_WIRE_NAME`] bytes).
    fn encode(&self) -> Vec<u8> {
        let name = cut(&self.name, MAX_WIRE_NAME).as_bytes();
        let mut out = Vec::with_capacity(Self::PREFIX + name.len() + Self::TAIL);
        out.extend_from_slice(FILE_MAGIC);
        out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.sha256);
        out
    }

    /// Decodes a header from the start of `buf` (bounded: never asks for more than
    /// `6 + MAX_WIRE_NAME + 40` bytes; a name that is not UTF-8 is decoded lossily).
    fn decode(buf: &[u8]) -> Result<Decoded, String> {
        let magic = &buf[..buf.len().min(FILE_MAGIC.len())];
        if magic != &FILE_MAGIC[..magic.len()] {
            return Err("not a quickp2p file transfer".to_owned());
        }
        if buf.len() < Self::PREFIX {
            return Ok(Decoded::NeedAtLeast(Self::PREFIX));
        }
        let name_len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
        if name_len == 0 || name_len > MAX_WIRE_NAME {
            return Err(format!(
                "file name length {name_len} (allowed 1 to {MAX_WIRE_NAME})"
            ));
        }
        let total = Self::PREFIX + name_len + Self::TAIL;
        let Some(header) = buf.get(..total) else {
            return Ok(Decoded::NeedAtLeast(total));
        };
        let (name, tail) = header[Self::PREFIX..].split_at(name_len);
        let (size, sha) = tail.split_at(8);
        let mut size_bytes = [0u8; 8];
        size_bytes.copy_from_slice(size);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(sha);
        Ok(Decoded::Header(
            FileHeader {
                name: String::from_utf8_lossy(name).into_owned(),
                size: u64::from_be_bytes(size_bytes),
                sha256,
            },
            total,
        ))
    }
}

/// Reads exactly one header off `recv` (no byte of the file), within [`HEADER_TIMEOUT`].
async fn read_header(recv: &mut quinn::RecvStream) -> Result<FileHeader, Refusal> {
    let read = async {
        let mut buf = Vec::new();
        let mut want = FILE_MAGIC.len();
        loop {
            let have = buf.len();
            buf.resize(want, 0);
            recv.read_exact(&mut buf[have..])
                .await
                .map_err(|e| refuse(None, format!("incomplete header: {e}")))?;
            match FileHeader::decode(&buf).map_err(|reason| refuse(None, reason))? {
                Decoded::NeedAtLeast(n) if n > buf.len() => want = n,
                Decoded::NeedAtLeast(_) => return Err(refuse(None, "malformed header")),
                Decoded::Header(header, _) => return Ok(header),
            }
        }
    };
    tokio::time::timeout(HEADER_TIMEOUT, read)
        .await
        .map_err(|_| {
            refuse(
                None,
                format!("no complete header within {HEADER_TIMEOUT:?}"),
            )
        })?
}

/// Receives one file from `recv` into `dir`: the header, the bytes, the checks.
async fn receive_one(
    recv: &mut quinn::RecvStream,
    dir: &Path,
    max_size: u64,
) -> Result<Stored, Refusal> {
    let mut header = read_header(recv).await?;
    header.name = sanitize_name(&header.name)
        .ok_or_else(|| refuse(None, format!("no usable file name in {:?}", header.name)))?;
    let name = Some(header.name.as_str());
    if header.size > max_size {
        return Err(refuse(
            name,
            format!(
                "file too large: {} bytes announced, at most {max_size} accepted",
                header.size
            ),
        ));
    }
    let (path, file) = create_unique(dir, &header.name).map_err(|e| {
        refuse(
            name,
            format!("cannot create a file in {}: {e}", dir.display()),
        )
    })?;
    let stored_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let result = receive_bytes(recv, tokio::fs::File::from_std(file), &header).await;
    match result {
        Ok(()) => Ok(Stored {
            path,
            size: header.size,
        }),
        Err(reason) => {
            let _ = tokio::fs::remove_file(&path).await;
            Err(refuse(Some(&stored_name), reason))
        }
    }
}

async fn receive_bytes(
    recv: &mut quinn::RecvStream,
    mut file: tokio::fs::File,
    header: &FileHeader,
) -> Result<(), String> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let read = tokio::time::timeout(DATA_IDLE_TIMEOUT, recv.read(&mut buf))
            .await
            .map_err(|_| format!("no data for {DATA_IDLE_TIMEOUT:?}"))?
            .map_err(|e| format!("transfer broken after {got} bytes: {e}"))?;
        let Some(n) = read else { break };
        got += n as u64;
        if got > header.size {
            return Err(format!(
                "size mismatch: more than the {} bytes announced",
                header.size
            ));
        }
        ctx.update(&buf[..n]);
        file.write_all(&buf[..n])
            .await
            .map_err(|e| format!("writing: {e}"))?;
    }
    file.flush().await.map_err(|e| format!("writing: {e}"))?;
    if got != header.size {
        return Err(format!(
            "size mismatch: {got} bytes received, {} announced",
            header.size
        ));
    }
    if ctx.finish().as_ref() != header.sha256 {
        return Err("SHA-256 mismatch: the file arrived damaged".into());
    }
    Ok(())
}

/// The base name of `announced` fit to store: the last component after any `/` or `\`, control
/// characters removed, surrounding spaces trimmed, at most [`MAX_STORED_NAME`] bytes (cut at a
/// character boundary, keeping the extension when it is short); `None` when nothing usable is
/// left (`""`, `"."`, `".."`).
fn sanitize_name(announced: &str) -> Option<String> {
    let base = announced
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>();
    let base = base.trim();
    if base.is_empty() || base == "." || base == ".." {
        return None;
    }
    if base.len() <= MAX_STORED_NAME {
        return Some(base.to_owned());
    }
    let (stem, ext) = match base.rfind('.') {
        Some(i) if i > 0 && base.len() - i <= 16 => (&base[..i], &base[i..]),
        _ => (base, ""),
    };
    let mut end = MAX_STORED_NAME - ext.len();
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}{ext}", &stem[..end]))
}

/// Creates `dir/name`, or `dir/stem-N.ext` for the first free N when taken (never overwrites).
fn create_unique(dir: &Path, name: &str) -> std::io::Result<(PathBuf, std::fs::File)> {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    for n in 0..10_000u32 {
        let candidate = if n == 0 {
            name.to_owned()
        } else {
            format!("{stem}-{n}{ext}")
        };
        let path = dir.join(candidate);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(format!(
        "{name} and 10000 suffixed names are taken"
    )))
}

// ----------------------------------------------------------------------------------------------
// tunnel (line pipe)

/// `quickp2p tunnel`.
pub async fn pipe(args: PipeArgs) -> Result<(), String> {
    let to = args
        .to
        .as_deref()
        .map(|to| parse_peer("--to", to))
        .transpose()?;
    let (session, tunnels) = args.connect.tunnels(to.is_none()).await?;
    println!("I am {}", session.peer_id());
    let result = match to {
        Some(to) => {
            let connected = tunnels
                .open(&to)
                .await
                .map_err(|e| format!("no tunnel to {to}: {e}"))?;
            println!("* {}", opened_line(&to, &connected, true));
            let (mut send, recv) = connected
                .tunnel
                .open_bi()
                .await
                .map_err(|e| format!("cannot open a stream: {e}"))?;
            // a stream reaches the peer with its first bytes: announce it at once
            send.write_all(format!("{LINE_MAGIC}\n").as_bytes())
                .await
                .map_err(|e| format!("sending: {e}"))?;
            run_pipe(&connected.tunnel, send, recv).await
        }
        None => {
            println!("* waiting for a tunnel");
            let connected = tunnels.accept().await.ok_or("the session ended")?;
            let peer = connected.tunnel.remote_peer().clone();
            println!("* {}", opened_line(&peer, &connected, false));
            let (send, mut recv) =
                tokio::time::timeout(HEADER_TIMEOUT, connected.tunnel.accept_bi())
                    .await
                    .map_err(|_| format!("{peer} opened no stream within {HEADER_TIMEOUT:?}"))?
                    .map_err(|e| format!("tunnel from {peer}: {e}"))?;
            match read_line(&mut recv, 16).await {
                Ok(Some(line)) if line == LINE_MAGIC => {}
                _ => return Err(format!("{peer} does not speak the line pipe")),
            }
            run_pipe(&connected.tunnel, send, recv).await
        }
    };
    session.close().await;
    result
}

/// Standard input lines to `send`, lines of `recv` to standard output, until the peer ends its
/// side (after the end of standard input our side is finished and the peer's is still printed).
async fn run_pipe(
    tunnel: &Tunnel,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), String> {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut incoming = Box::pin(async move {
        loop {
            match read_line(&mut recv, MAX_LINE).await {
                Ok(Some(line)) => println!("{}", printable(&line)),
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    loop {
        tokio::select! {
            ended = &mut incoming => {
                // finish our side and let the peer acknowledge it before closing
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                tunnel.close(0, b"done");
                return match ended {
                    Ok(()) => { println!("* the peer closed the pipe"); Ok(()) }
                    Err(e) => Err(format!("pipe broken: {e}")),
                };
            }
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(mut line)) => {
                    if line.len() > MAX_LINE {
                        return Err(format!("line longer than {MAX_LINE} bytes"));
                    }
                    line.push('\n');
                    send.write_all(line.as_bytes()).await.map_err(|e| format!("sending: {e}"))?;
                }
                _ => {
                    stdin_open = false;
                    let _ = send.finish();
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_only_a_safe_base_name() {
        assert_eq!(sanitize_name("a.txt").as_deref(), Some("a.txt"));
        assert_eq!(sanitize_name("../../etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(sanitize_name("C:\\x\\y.bin").as_deref(), Some("y.bin"));
        assert_eq!(sanitize_name("dir/..").as_deref(), None);
        assert_eq!(sanitize_name("..").as_deref(), None);
        assert_eq!(sanitize_name("x/").as_deref(), None);
        assert_eq!(sanitize_name("a\u{0}b\nc").as_deref(), Some("abc"));
        let long = format!("{}.tar.gz", "é".repeat(300));
        let cut = sanitize_name(&long).unwrap_or_default();
        assert!(
            cut.len() <= MAX_STORED_NAME && cut.ends_with(".gz"),
            "{cut}"
        );
    }

    #[test]
    fn verdicts_are_cut_at_character_boundaries() {
        let long = "é".repeat(600);
        let cut = cut(&long, MAX_VERDICT - 1);
        assert_eq!(cut.len(), MAX_VERDICT - 2);
        assert_eq!(super::cut("ok", 10), "ok");
    }

    fn header() -> FileHeader {
        FileHeader {
            name: "../x/photo.jpg".to_owned(),
            size: 3 << 20,
            sha256: [7; 32],
        }
    }

    #[test]
    fn headers_round_trip_and_ask_for_exactly_what_they_lack() {
        let wire = header().encode();
        assert_eq!(wire.len(), 6 + 14 + 40);
        assert_eq!(&wire[..6], b"QPF1\x00\x0e");
        assert_eq!(
            FileHeader::decode(&wire),
            Ok(Decoded::Header(header(), wire.len()))
        );
        // file bytes after the header are not part of it
        let mut more = wire.clone();
        more.extend_from_slice(b"file bytes");
        assert_eq!(
            FileHeader::decode(&more),
            Ok(Decoded::Header(header(), wire.len()))
        );
        for len in 0..wire.len() {
            let want = if len < 6 { 6 } else { wire.len() };
            assert_eq!(
                FileHeader::decode(&wire[..len]),
                Ok(Decoded::NeedAtLeast(want)),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn bad_headers_are_refused_with_a_reason() {
        assert!(FileHeader::decode(b"QPL1\n").is_err());
        assert!(FileHeader::decode(b"X").is_err());
        let mut zero = header().encode();
        zero[4..6].copy_from_slice(&0u16.to_be_bytes());
        assert!(FileHeader::decode(&zero).is_err());
        let mut huge = header().encode();
        huge[4..6].copy_from_slice(&u16::MAX.to_be_bytes());
        let refused = FileHeader::decode(&huge).err().unwrap_or_default();
        assert!(refused.contains("65535"), "{refused}");
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics_nor_asks_for_unbounded_input() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 1200) as usize;
            let mut buf: Vec<u8> = (0..len)
                .map(|i| (x.rotate_left(i as u32 % 64) >> 3) as u8)
                .collect();
            if round % 2 == 0 && buf.len() >= 4 {
                buf[..4].copy_from_slice(FILE_MAGIC);
            }
            match FileHeader::decode(&buf) {
                Ok(Decoded::NeedAtLeast(n)) => assert!(n > buf.len() && n <= 6 + 1024 + 40),
                Ok(Decoded::Header(_, n)) => assert!(n <= buf.len()),
                Err(_) => {}
            }
        }
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("10m"), Ok(10 << 20));
        assert!(parse_size("3X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn taken_names_get_a_suffix() {
        let dir = std::env::temp_dir().join(format!("qp-unique-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let (a, _) = create_unique(&dir, "f.txt").unwrap_or_else(|e| panic!("{e}"));
        let (b, _) = create_unique(&dir, "f.txt").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.file_name().and_then(|n| n.to_str()), Some("f.txt"));
        assert_eq!(b.file_name().and_then(|n| n.to_str()), Some("f-1.txt"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
