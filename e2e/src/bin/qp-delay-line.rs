//! `qp-delay-line`: the NAT lab's userspace delay line, for kernels without the netem qdisc.
//!
//! Runs inside the lab's WAN router namespace. An `NFQUEUE` rule there hands every forwarded
//! packet to this program (metadata only: the payload is never copied), which holds the packet's
//! verdict until its delay has passed and then accepts it, so the kernel forwards it unchanged.
//! A packet's delay is the WAN delay plus the delay of the access link it came in on and of the
//! one it goes out on (the same totals the netem qdiscs give), plus a random jitter in
//! `[-jitter, +jitter]` clamped at zero (which, as with netem, can reorder packets).
//!
//! ```text
//! qp-delay-line --queue 7 --wan-us 25000 [--jitter-us 0] [--link n0=10000 ...]
//! ```
//!
//! It prints `READY` on stdout once bound to the queue; the lab inserts the `NFQUEUE` rule (with
//! `--queue-bypass`, so packets pass undelayed if this program is gone) after that line.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

/// Most packets held at once; the kernel queue is sized to match (beyond it, packets are dropped
/// as a full link would).
const MAX_HELD: u32 = 65_536;
/// How long to sleep when nothing is due and nothing arrives.
const IDLE_POLL: Duration = Duration::from_micros(200);

#[derive(Parser, Debug)]
#[command(about = "Delay forwarded packets through NFQUEUE (the NAT lab's netem substitute)")]
struct Args {
    /// The NFQUEUE number to bind.
    #[arg(long)]
    queue: u16,
    /// Delay added to every packet, in microseconds.
    #[arg(long, default_value_t = 0)]
    wan_us: u64,
    /// Random variation of the delay, in microseconds (uniform in [-jitter, +jitter]).
    #[arg(long, default_value_t = 0)]
    jitter_us: u64,
    /// Extra delay for packets entering or leaving interface IF, in microseconds: `IF=US`.
    #[arg(long = "link", value_parser = parse_link)]
    links: Vec<(String, u64)>,
}

fn parse_link(text: &str) -> Result<(String, u64), String> {
    let (name, micros) = text
        .split_once('=')
        .ok_or_else(|| format!("expected IF=MICROSECONDS, got {text:?}"))?;
    let micros = micros
        .parse()
        .map_err(|e| format!("bad delay in {text:?}: {e}"))?;
    Ok((name.to_owned(), micros))
}

/// A packet waiting for its verdict, ordered by release time (then arrival, for FIFO on ties).
struct Held {
    due: Instant,
    seq: u64,
    message: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// A small xorshift generator for the jitter (no need for cryptographic quality).
struct Jitter {
    state: u64,
    span_us: u64,
}

impl Jitter {
    fn sample(&mut self, base: Duration) -> Duration {
        if self.span_us == 0 {
            return base;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let offset = (self.state % (2 * self.span_us + 1)) as i64 - self.span_us as i64;
        let micros = (base.as_micros() as i64 + offset).max(0);
        Duration::from_micros(micros as u64)
    }
}

fn interface_index(name: &str) -> Result<u32, String> {
    nix::net::if_::if_nametoindex(name).map_err(|e| format!("no interface {name:?} here: {e}"))
}

fn run(args: Args) -> Result<(), String> {
    let mut links: HashMap<u32, Duration> = HashMap::new();
    for (name, micros) in &args.links {
        links.insert(interface_index(name)?, Duration::from_micros(*micros));
    }
    let wan = Duration::from_micros(args.wan_us);
    let mut jitter = Jitter {
        state: u64::from(std::process::id()) | 1 << 40,
        span_us: args.jitter_us,
    };

    let mut queue = nfq::Queue::open().map_err(|e| format!("cannot open nfnetlink: {e}"))?;
    queue
        .bind(args.queue)
        .map_err(|e| format!("cannot bind NFQUEUE {}: {e}", args.queue))?;
    // metadata only: the payload is never needed
    queue
        .set_copy_range(args.queue, 0)
        .map_err(|e| format!("cannot set the copy range: {e}"))?;
    queue
        .set_queue_max_len(args.queue, MAX_HELD)
        .map_err(|e| format!("cannot size the queue: {e}"))?;
    queue.set_nonblocking(true);
    println!("READY");
    std::io::stdout()
        .flush()
        .map_err(|e| format!("stdout: {e}"))?;

    let mut held: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        // take everything that has arrived
        let mut arrived = false;
        loop {
            match queue.recv() {
                Ok(mut message) => {
                    arrived = true;
                    let base = wan
                        + links.get(&message.get_indev()).copied().unwrap_or_default()
                        + links
                            .get(&message.get_outdev())
                            .copied()
                            .unwrap_or_default();
                    message.set_verdict(nfq::Verdict::Accept);
                    seq += 1;
                    held.push(Reverse(Held {
                        due: Instant::now() + jitter.sample(base),
                        seq,
                        message,
                    }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // the kernel dropped messages for a full socket buffer: those packets are lost,
                // as on a congested link; carry on
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => continue,
                Err(e) => return Err(format!("receiving from the queue: {e}")),
            }
        }
        // release what is due
        let now = Instant::now();
        while held.peek().is_some_and(|Reverse(next)| next.due <= now) {
            let Some(Reverse(next)) = held.pop() else {
                break;
            };
            queue
                .verdict(next.message)
                .map_err(|e| format!("sending a verdict: {e}"))?;
        }
        if !arrived {
            let wait = held
                .peek()
                .map(|Reverse(next)| next.due.saturating_duration_since(Instant::now()))
                .unwrap_or(IDLE_POLL)
                .min(IDLE_POLL);
            std::thread::sleep(wait);
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("qp-delay-line: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_arguments_parse() {
        assert_eq!(parse_link("n0=1500"), Ok(("n0".to_owned(), 1500)));
        assert!(parse_link("n0").is_err());
        assert!(parse_link("n0=x").is_err());
    }

    #[test]
    fn jitter_stays_in_its_span_and_never_goes_negative() {
        let mut jitter = Jitter {
            state: 12345,
            span_us: 1000,
        };
        let base = Duration::from_micros(500);
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..10_000 {
            let d = jitter.sample(base);
            assert!(d <= Duration::from_micros(1500), "{d:?}");
            seen_low |= d == Duration::ZERO;
            seen_high |= d > Duration::from_micros(1200);
        }
        assert!(seen_low && seen_high);
        let mut none = Jitter {
            state: 1,
            span_us: 0,
        };
        assert_eq!(none.sample(base), base);
    }
}
