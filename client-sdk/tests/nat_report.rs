//! The SDK's NAT report and the `quickp2p nat-report` CLI against a tiny RFC 5780
//! STUN pair written here, on loopback: "server A" on 127.0.0.1 and "server B"
//! on 127.0.0.2, each with the same primary and alternate ports. A CHANGE-REQUEST
//! is answered from the socket with the changed IP and/or port. Without a NAT in
//! between, the report must say: no NAT, endpoint-independent mapping and
//! filtering, port preserving.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use quickp2p::nat::{
    FilteringBehaviour, MappingBehaviour, NatDiscoveryConfig, NatReportError, NatReportOptions,
    nat_report,
};
use quickp2p::wire::stun::{Attribute, AttributeType, Message, MessageBuilder, MessageType};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const IP_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Four sockets: `sockets[ip][port]`, ip 0 = A, 1 = B; port 0 = primary, 1 = alternate.
struct FakeStunPair {
    addresses: [[SocketAddr; 2]; 2],
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeStunPair {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl FakeStunPair {
    fn primary(&self) -> SocketAddr {
        self.addresses[0][0]
    }

    async fn start() -> FakeStunPair {
        for _ in 0..50 {
            let a_primary = UdpSocket::bind((IP_A, 0)).await.expect("bind");
            let a_alternate = UdpSocket::bind((IP_A, 0)).await.expect("bind");
            let ports = [
                a_primary.local_addr().expect("address").port(),
                a_alternate.local_addr().expect("address").port(),
            ];
            let (Ok(b_primary), Ok(b_alternate)) = (
                UdpSocket::bind((IP_B, ports[0])).await,
                UdpSocket::bind((IP_B, ports[1])).await,
            ) else {
                continue; // a port is taken on 127.0.0.2: try others
            };
            let sockets = Arc::new([[a_primary, a_alternate], [b_primary, b_alternate]]);
            let addresses = [0, 1]
                .map(|ip| [0, 1].map(|port| sockets[ip][port].local_addr().expect("address")));
            let mut tasks = Vec::new();
            for ip in 0..2 {
                for port in 0..2 {
                    let sockets = sockets.clone();
                    tasks.push(tokio::spawn(serve(sockets, addresses, ip, port)));
                }
            }
            return FakeStunPair { addresses, tasks };
        }
        panic!("no free port pair on 127.0.0.1 and 127.0.0.2");
    }
}

async fn serve(
    sockets: Arc<[[UdpSocket; 2]; 2]>,
    addresses: [[SocketAddr; 2]; 2],
    ip: usize,
    port: usize,
) {
    let mut buffer = vec![0u8; 2048];
    loop {
        let Ok((len, from)) = sockets[ip][port].recv_from(&mut buffer).await else {
            continue;
        };
        let Ok(request) = Message::parse(&buffer[..len]) else {
            continue;
        };
        if request.message_type() != MessageType::BINDING_REQUEST {
            continue;
        }
        let change = match request.get(AttributeType::CHANGE_REQUEST) {
            Some(Attribute::ChangeRequest(change)) => change,
            _ => Default::default(),
        };
        let out_ip = ip ^ usize::from(change.change_ip);
        let out_port = port ^ usize::from(change.change_port);
        let attributes = [
            Attribute::XorMappedAddress(from),
            Attribute::ResponseOrigin(addresses[out_ip][out_port]),
            Attribute::OtherAddress(addresses[1 - ip][1 - port]),
        ];
        let response = MessageBuilder::new(MessageType::BINDING_SUCCESS, request.transaction_id())
            .attributes(&attributes)
            .fingerprint()
            .to_vec()
            .expect("encodable");
        let _ = sockets[out_ip][out_port].send_to(&response, from).await;
    }
}

#[tokio::test]
async fn report_against_a_loopback_pair() {
    let pair = FakeStunPair::start().await;
    let socket = UdpSocket::bind((IP_A, 0)).await.unwrap();
    let local = socket.local_addr().unwrap();

    // something else arrives on the shared socket during the report
    let other = UdpSocket::bind((IP_A, 0)).await.unwrap();
    other.send_to(b"\xc0quic-ish", local).await.unwrap();

    let (sender, mut unclaimed) = mpsc::channel(8);
    let options = NatReportOptions::default().with_unclaimed(sender);
    let report = nat_report(&socket, pair.primary(), options).await.unwrap();

    assert_eq!(report.mapping, MappingBehaviour::EndpointIndependent);
    assert_eq!(report.filtering, FilteringBehaviour::EndpointIndependent);
    assert_eq!(report.behind_nat, Some(false));
    assert_eq!(report.port_preserving, Some(true));
    assert_eq!(report.hairpinning, None);
    assert_eq!(report.public_address, Some(local));
    assert_eq!(report.other_address, Some(pair.addresses[1][1]));
    assert_eq!(report.server_supports_rfc5780(), Some(true));
    assert_eq!(report.label(), "no NAT");
    assert!(report.reflexive.len() >= 2, "{report:?}");
    assert!(report.reflexive.iter().all(|r| r.mapped == local));
    assert!(!report.rtt.is_empty());
    assert!(report.duration < Duration::from_secs(2), "{report:?}");

    let datagram = unclaimed.try_recv().unwrap();
    assert_eq!(datagram.from, other.local_addr().unwrap());
    assert_eq!(datagram.payload, b"\xc0quic-ish");
}

#[tokio::test]
async fn wildcard_socket_still_tells_no_nat() {
    let pair = FakeStunPair::start().await;
    let socket = UdpSocket::bind("0.0.0.0:0").await.unwrap();
    let report = nat_report(&socket, pair.primary(), NatReportOptions::default())
        .await
        .unwrap();
    assert_eq!(report.behind_nat, Some(false));
    assert_eq!(report.local_address.ip(), IpAddr::V4(IP_A));
}

#[tokio::test]
async fn silent_server_is_unreachable() {
    // a bound socket that never answers
    let silent = UdpSocket::bind((IP_A, 0)).await.unwrap();
    let socket = UdpSocket::bind((IP_A, 0)).await.unwrap();
    let config = NatDiscoveryConfig::default().with_initial_rto(Duration::from_millis(50));
    let options = NatReportOptions::default().with_discovery(config);
    let started = std::time::Instant::now();
    let error = nat_report(&socket, silent.local_addr().unwrap(), options)
        .await
        .unwrap_err();
    assert!(
        matches!(error, NatReportError::Unreachable { waited, .. }
            if waited >= Duration::from_millis(350) && waited < Duration::from_secs(1)),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        error.to_string().contains("is the STUN server up"),
        "{error}"
    );
}

async fn cli(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_quickp2p"))
        .args(args)
        .stdin(Stdio::null())
        .env_remove("QP_STUN")
        .output()
        .await
        .expect("the quickp2p binary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_prints_json() {
    let pair = FakeStunPair::start().await;
    let stun = pair.primary().to_string();
    let output = cli(&[
        "nat-report",
        "--stun",
        &stun,
        "--bind",
        "127.0.0.1:0",
        "--json",
    ])
    .await;
    assert!(output.status.success(), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["mapping"]["behaviour"], "endpoint-independent");
    assert_eq!(json["filtering"]["behaviour"], "endpoint-independent");
    assert_eq!(json["behind_nat"], false);
    assert_eq!(json["port_preserving"], true);
    assert_eq!(json["hairpinning"], serde_json::Value::Null);
    assert_eq!(json["label"], "no NAT");
    assert_eq!(json["server"], stun.as_str());
    assert_eq!(json["server_supports_rfc5780"], true);
    assert_eq!(
        json["server_other_address"],
        pair.addresses[1][1].to_string()
    );
    assert_eq!(json["public_address"], json["local_address"]);
    assert!(json["reflexive"].as_array().unwrap().len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_prints_text() {
    let pair = FakeStunPair::start().await;
    let stun = pair.primary().to_string();
    let output = cli(&["nat-report", "--stun", &stun, "--bind", "127.0.0.1:0"]).await;
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    println!("{text}");
    for expected in [
        "NAT type:          no NAT (RFC 4787: endpoint-independent mapping, endpoint-independent filtering)",
        "behind NAT:        no",
        "port preservation: yes",
        "hairpinning:       not applicable (no NAT)",
        "reflexive addresses:",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_explains_a_silent_server_and_exits_1() {
    let silent = UdpSocket::bind((IP_A, 0)).await.unwrap();
    let stun = silent.local_addr().unwrap().to_string();
    let output = cli(&["nat-report", "--stun", &stun, "--timeout", "0.5"]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("did not answer"), "{stderr}");
    assert!(stderr.contains("UDP"), "{stderr}");
}

#[tokio::test]
async fn cli_usage_errors_exit_2() {
    for args in [
        &["nat-report"][..],
        &["nat-report", "--stun", "host:notaport"][..],
        &["nat-report", "--stun", "127.0.0.1", "--timeout", "-1"][..],
        &["no-such-command"][..],
    ] {
        let output = cli(args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
    }
    let help = cli(&["nat-report", "--help"]).await;
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--stun"));
}
