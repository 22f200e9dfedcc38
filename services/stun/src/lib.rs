//! quickP2P STUN service: server-reflexive address discovery (RFC 8489 Binding) and NAT
//! behaviour discovery (RFC 5780), run as a pair of servers on two IP addresses.
//!
//! Each server (stun-a, stun-b) listens on a primary and an alternate UDP port of its own IP.
//! Binding success responses carry XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, RESPONSE-ORIGIN,
//! OTHER-ADDRESS and FINGERPRINT. CHANGE-REQUEST change-port is answered from the alternate port
//! of the same server; change-IP is answered by the partner, which the receiving server asks over
//! the gRPC control API (`quickp2p.v1.Stun`). The crate owns:
//!
//! * [`server`] — the sans-IO core: [`StunResponder`] decides, for one datagram and `now`, whether
//!   to reply (from which port, to where, which bytes), forward to the partner, or drop (and
//!   why); it also builds the responses the partner asks for;
//! * [`limiter`] — per-source token buckets in a bounded table (amplification limits);
//! * [`config`] — [`Config`] and the `quickp2p-stun` flags ([`Args`]);
//! * the driver: [`Stun::bind`] binds the UDP sockets and the control listener,
//!   [`Stun::run`] serves until the shutdown token is cancelled (a receive thread per socket with
//!   batched `recvmmsg`/`sendmmsg`, the control gRPC server, forwards to the partner in their own
//!   tasks).
//!
//! Embedding a pair in one process (what the all-in-one supernode does):
//!
//! ```no_run
//! # async fn pair() -> Result<(), Box<dyn std::error::Error>> {
//! use quickp2p_stun::{Config, PairMember, PairPorts, Stun};
//! let stop = quickp2p_service_kit::Shutdown::new();
//! let readiness = quickp2p_service_kit::Readiness::new();
//! for member in [PairMember::A, PairMember::B] {
//!     let stun = Stun::bind(Config::loopback_pair(member, PairPorts::default()))
//!         .await?
//!         .with_readiness(&readiness);
//!     println!("{:?}", stun.addresses());
//!     tokio::spawn(stun.run(stop.clone()));
//! }
//! # Ok(()) }
//! ```

pub mod config;
mod control;
mod counters;
pub mod limiter;
pub mod server;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quickp2p_proto::v1::stun_server::StunServer;
use quickp2p_service_kit::{Readiness, ReadyFlag, Shutdown, telemetry};
use tracing::Instrument as _;

pub use config::{Args, Config, PairMember, PairPorts, PartnerConfig};
pub use counters::StunCountersHandle;
pub use limiter::{RateLimit, SourceLimiter};
pub use server::{Action, DropReason, LocalPort, PartnerRequest, Refusal, Reply, StunResponder};

/// How long [`Stun::run`] waits for its tasks after shutdown before it returns anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why [`Stun::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// A UDP port could not be bound.
    #[error("cannot bind the {} UDP port on {addr}: {source}", port.as_str())]
    Udp {
        /// Which port.
        port: LocalPort,
        /// The address asked for.
        addr: SocketAddr,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The gRPC control listener could not be bound.
    #[error("cannot bind the gRPC control listener on {addr}: {source}")]
    Control {
        /// The address asked for.
        addr: SocketAddr,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The partner's control URL is not usable.
    #[error("the partner control URL {url:?} is not usable: {source}")]
    PartnerUrl {
        /// The configured URL.
        url: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

/// Why [`Stun::run`] stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The gRPC control server failed.
    #[error("the gRPC control server failed: {0}")]
    Control(#[from] tonic::transport::Error),
    /// A UDP receive thread could not be started.
    #[error("cannot start a UDP receive thread: {0}")]
    Thread(std::io::Error),
}

/// Where a bound STUN server listens (actual local addresses: port 0 resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// Primary UDP port.
    pub primary: SocketAddr,
    /// Alternate UDP port.
    pub alternate: SocketAddr,
    /// gRPC control listener.
    pub control: SocketAddr,
}

/// What every task of one server shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) responder: StunResponder,
    pub(crate) sockets: udp::UdpSockets,
    pub(crate) counters: Arc<StunCountersHandle>,
    pub(crate) forwarder: control::Forwarder,
}

/// The readiness conditions of one server.
#[derive(Debug, Clone)]
struct ReadyFlags {
    primary: ReadyFlag,
    alternate: ReadyFlag,
    control: ReadyFlag,
}

impl ReadyFlags {
    fn register(readiness: &Readiness, member: PairMember, addresses: &Addresses) -> ReadyFlags {
        let m = member.as_str();
        ReadyFlags {
            primary: readiness.flag(&format!("stun-{m} udp primary {}", addresses.primary)),
            alternate: readiness.flag(&format!("stun-{m} udp alternate {}", addresses.alternate)),
            control: readiness.flag(&format!("stun-{m} grpc control {}", addresses.control)),
        }
    }

    fn set(&self, ready: bool) {
        self.primary.set(ready);
        self.alternate.set(ready);
        self.control.set(ready);
    }
}

/// A STUN server whose sockets are bound, ready to [`run`](Stun::run).
#[derive(Debug)]
pub struct Stun {
    shared: Arc<Shared>,
    control: tokio::net::TcpListener,
    addresses: Addresses,
    ready: ReadyFlags,
}

impl Stun {
    /// Binds both UDP ports and the control listener, and prepares the (lazy) partner client.
    /// Ports 0 pick free ports; the configuration is updated with them.
    pub async fn bind(config: Config) -> Result<Stun, BindError> {
        let mut config = config;
        let sockets = udp::UdpSockets::bind(
            config.bind_ip,
            config.primary_port,
            config.alternate_port,
            config.workers,
        )
        .map_err(|(port, addr, source)| BindError::Udp { port, addr, source })?;
        let control = tokio::net::TcpListener::bind(config.control_addr)
            .await
            .map_err(|source| BindError::Control {
                addr: config.control_addr,
                source,
            })?;
        let bind_ip = config.bind_ip;
        let udp_error = |port: LocalPort| {
            move |source| BindError::Udp {
                port,
                addr: SocketAddr::new(bind_ip, 0),
                source,
            }
        };
        let primary = sockets
            .local_addr(LocalPort::Primary)
            .map_err(udp_error(LocalPort::Primary))?;
        let alternate = sockets
            .local_addr(LocalPort::Alternate)
            .map_err(udp_error(LocalPort::Alternate))?;
        let control_addr = control.local_addr().map_err(|source| BindError::Control {
            addr: config.control_addr,
            source,
        })?;
        config.primary_port = primary.port();
        config.alternate_port = alternate.port();
        config.control_addr = control_addr;

        let client = match &config.partner {
            Some(partner) => Some(
                control::partner_client(&partner.control_url, config.forward_timeout).map_err(
                    |source| BindError::PartnerUrl {
                        url: partner.control_url.clone(),
                        source,
                    },
                )?,
            ),
            None => None,
        };
        let counters = Arc::new(StunCountersHandle::new(config.member));
        let forwarder = control::Forwarder::new(
            client,
            config.max_forwards_in_flight,
            Arc::clone(&counters),
            config.server_id.clone(),
            config.forward_timeout,
        );
        let limiter = Arc::new(SourceLimiter::new(
            config.rate_limit,
            config.rate_table_size,
        ));
        let member = config.member;
        let responder = StunResponder::new(Arc::new(config), limiter);
        let addresses = Addresses {
            primary,
            alternate,
            control: control_addr,
        };
        let ready = ReadyFlags::register(&Readiness::new(), member, &addresses);
        Ok(Stun {
            shared: Arc::new(Shared {
                responder,
                sockets,
                counters,
                forwarder,
            }),
            control,
            addresses,
            ready,
        })
    }

    /// Registers this server's readiness conditions (both UDP ports and the control listener) in
    /// `readiness`, the process's `/readyz`.
    #[must_use]
    pub fn with_readiness(mut self, readiness: &Readiness) -> Stun {
        self.ready = ReadyFlags::register(readiness, self.config().member, &self.addresses);
        self
    }

    /// The bound addresses.
    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    /// The configuration in force (ports resolved).
    pub fn config(&self) -> &Config {
        self.shared.responder.config()
    }

    /// This server's counters.
    pub fn counters(&self) -> Arc<StunCountersHandle> {
        Arc::clone(&self.shared.counters)
    }

    /// Serves until `shutdown` is cancelled (or the control server fails), then stops every task.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), RunError> {
        let stop = shutdown.child_token();
        let member = self.config().member;
        let span = tracing::info_span!("stun", member = member.as_str());
        let runtime = tokio::runtime::Handle::current();
        let mut threads = Vec::new();
        for port in [LocalPort::Primary, LocalPort::Alternate] {
            for index in 0..self.shared.sockets.workers() {
                let (shared, thread_stop, runtime) =
                    (Arc::clone(&self.shared), stop.clone(), runtime.clone());
                let thread = std::thread::Builder::new()
                    .name(format!(
                        "stun-{}-{}-{index}",
                        member.as_str(),
                        port.as_str()
                    ))
                    .spawn(move || {
                        // forwards to the partner are tasks of this runtime
                        let _runtime = runtime.enter();
                        udp::serve(&shared, port, index, &thread_stop);
                    });
                match thread {
                    Ok(t) => threads.push(t),
                    Err(e) => {
                        stop.cancel();
                        return Err(RunError::Thread(e));
                    }
                }
            }
        }
        let service = control::ControlService {
            shared: Arc::clone(&self.shared),
        };
        let control_stop = stop.clone();
        let listener = self.control;
        let mut control = tokio::spawn(
            async move {
                tonic::transport::Server::builder()
                    .layer(telemetry::GrpcTraceLayer)
                    .add_service(StunServer::new(service))
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener),
                        control_stop.cancelled_owned(),
                    )
                    .await
            }
            .instrument(span.clone()),
        );
        self.ready.set(true);
        tracing::info!(
            parent: &span,
            primary = %self.addresses.primary,
            alternate = %self.addresses.alternate,
            control = %self.addresses.control,
            "STUN server running"
        );

        let mut result = Ok(());
        tokio::select! {
            () = stop.cancelled() => {}
            finished = &mut control => {
                // The control server only returns early when it fails.
                if let Ok(Err(e)) = finished {
                    tracing::error!(parent: &span, error = %e, "gRPC control server failed");
                    result = Err(RunError::Control(e));
                }
                stop.cancel();
            }
        }
        self.ready.set(false);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            // the receive threads see the cancelled token within udp::POLL_INTERVAL
            let _ = tokio::task::spawn_blocking(move || {
                for thread in threads {
                    let _ = thread.join();
                }
            })
            .await;
            if !control.is_finished() {
                let _ = (&mut control).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(parent: &span, timeout = ?DRAIN_TIMEOUT, "still running after the drain timeout");
            control.abort();
        }
        result
    }
}
