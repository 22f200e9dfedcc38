//! The `quickp2p-stun` binary as operators and the NAT lab run it: stun-a on 127.0.0.1 and stun-b
//! on 127.0.0.2, two separate processes, each the other's partner, talking to real UDP clients.
//!
//! Checked: plain Binding (XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS,
//! FINGERPRINT), change-port from a's alternate port, change-IP from b's primary port, change-IP
//! and change-port from b's alternate port, RESPONSE-PORT, PADDING, that invalid datagrams are
//! never answered and show in `/metrics`, the Ping RPC, `--help`, bad flags, SIGTERM, and — when
//! coturn is installed — `turnutils_stunclient` and `turnutils_natdiscovery` against the pair.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quickp2p_wire::stun::{
    Attribute, AttributeType, ChangeRequest, MAGIC_COOKIE, Message, MessageBuilder, MessageClass,
    MessageType, TransactionId,
};

const A: &str = "127.0.0.1";
const B: &str = "127.0.0.2";

/// One `quickp2p-stun` process, killed on drop.
struct Server {
    child: Child,
    primary: SocketAddr,
    alternate: SocketAddr,
    control: SocketAddr,
    ops: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// The pair: stun-a and stun-b on the same three ports of two loopback addresses.
struct Pair {
    a: Server,
    b: Server,
}

/// Whether UDP and TCP `port` are free on both loopback addresses right now.
fn free_everywhere(port: u16) -> bool {
    [A, B].iter().all(|ip| {
        let addr = SocketAddr::new(ip.parse().unwrap(), port);
        UdpSocket::bind(addr).is_ok() && TcpListener::bind(addr).is_ok()
    })
}

/// Three distinct ports free on both addresses (bound then released: another process may take
/// one before we use it, so callers retry).
fn pick_ports() -> [u16; 3] {
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < 3 {
        let port = UdpSocket::bind((A, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !ports.contains(&port) && free_everywhere(port) {
            ports.push(port);
        }
    }
    [ports[0], ports[1], ports[2]]
}

fn start(member: &str, ports: [u16; 3], extra: &[&str]) -> Option<Server> {
    let (own, other) = if member == "a" { (A, B) } else { (B, A) };
    let [primary, alternate, control] = ports.map(|p| p.to_string());
    let mut child = Command::new(env!("CARGO_BIN_EXE_quickp2p-stun"))
        .env_clear()
        .args(["--member", member, "--bind-ip", own])
        .args(["--primary-port", &primary, "--alternate-port", &alternate])
        .args(["--control-addr", &format!("{own}:{control}")])
        .args(["--partner-addr", &format!("{other}:{primary}")])
        .args([
            "--partner-control-url",
            &format!("http://{other}:{control}"),
        ])
        .args(["--http-addr", &format!("{own}:0"), "--log", "warn"])
        .args(["--replica-id", &format!("stun-{member}-test")])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start quickp2p-stun");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut found: [Option<SocketAddr>; 4] = [None; 4];
    while found.iter().any(Option::is_none) {
        let Some(Ok(line)) = lines.next() else {
            // exited (most likely a port was taken meanwhile)
            let _ = child.kill();
            let _ = child.wait();
            return None;
        };
        let mut words = line.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let slot = match key {
            "primary" => 0,
            "alternate" => 1,
            "control" => 2,
            "ops" => 3,
            _ => continue,
        };
        found[slot] = Some(value.trim_start_matches("http://").parse().unwrap());
    }
    std::thread::spawn(move || for _ in lines {});
    let [primary, alternate, control, ops] = found.map(Option::unwrap);
    Some(Server {
        child,
        primary,
        alternate,
        control,
        ops,
    })
}

fn start_pair(extra: &[&str]) -> Pair {
    for _ in 0..10 {
        let ports = pick_ports();
        let Some(a) = start("a", ports, extra) else {
            continue;
        };
        let Some(b) = start("b", ports, extra) else {
            continue;
        };
        let mut pair = Pair { a, b };
        wait_ready(pair.a.ops);
        wait_ready(pair.b.ops);
        if pair.a.alive() && pair.b.alive() {
            return pair;
        }
    }
    panic!("could not start a STUN pair on free ports");
}

/// A plain HTTP/1.1 GET: status code and body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn wait_ready(ops: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = http_get(ops, "/readyz");
        if code == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "not ready: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of a counter series in Prometheus text, 0 when absent.
fn metric(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn dropped(ops: SocketAddr, member: &str, reason: &str) -> u64 {
    let (_, body) = http_get(ops, "/metrics");
    metric(
        &body,
        &format!("qp_stun_dropped_total{{member=\"{member}\",reason=\"{reason}\"}}"),
    )
}

fn client() -> UdpSocket {
    let s = UdpSocket::bind((A, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

fn tid(n: u8) -> TransactionId {
    TransactionId::new([n; 12])
}

fn request(id: TransactionId, attributes: &[Attribute<'_>]) -> Vec<u8> {
    MessageBuilder::new(MessageType::BINDING_REQUEST, id)
        .attributes(attributes)
        .fingerprint()
        .to_vec()
        .unwrap()
}

/// Sends `datagram` (up to 3 times) and returns the first STUN answer and where it came from.
fn transact(socket: &UdpSocket, to: SocketAddr, datagram: &[u8]) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 4096];
    for _ in 0..3 {
        socket.send_to(datagram, to).unwrap();
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            return (buf[..n].to_vec(), from);
        }
    }
    panic!("no answer from {to}");
}

/// Whether anything arrives on `socket` within `wait`.
fn silent(socket: &UdpSocket, wait: Duration) -> bool {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    let got = socket.recv_from(&mut buf);
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    got.is_err()
}

/// A success response's address attributes, after the checks every response passes.
struct Success {
    xor_mapped: SocketAddr,
    mapped: Option<SocketAddr>,
    origin: Option<SocketAddr>,
    other: Option<SocketAddr>,
    padding: Option<usize>,
}

fn success(bytes: &[u8], id: TransactionId) -> Success {
    let m = Message::parse(bytes).unwrap();
    assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
    assert_eq!(m.transaction_id(), id);
    m.verify_fingerprint().expect("FINGERPRINT is valid");
    let addr = |t| match m.get(t) {
        Some(
            Attribute::XorMappedAddress(a)
            | Attribute::MappedAddress(a)
            | Attribute::ResponseOrigin(a)
            | Attribute::OtherAddress(a),
        ) => Some(a),
        _ => None,
    };
    Success {
        xor_mapped: addr(AttributeType::XOR_MAPPED_ADDRESS).expect("XOR-MAPPED-ADDRESS"),
        mapped: addr(AttributeType::MAPPED_ADDRESS),
        origin: addr(AttributeType::RESPONSE_ORIGIN),
        other: addr(AttributeType::OTHER_ADDRESS),
        padding: match m.get(AttributeType::PADDING) {
            Some(Attribute::Padding(p)) => Some(p.len()),
            _ => None,
        },
    }
}

fn change(change_ip: bool, change_port: bool) -> Attribute<'static> {
    Attribute::ChangeRequest(ChangeRequest {
        change_ip,
        change_port,
    })
}

#[test]
fn binding_and_every_change_request_over_the_real_pair() {
    let pair = start_pair(&[]);
    let (a, b) = (&pair.a, &pair.b);
    assert_eq!(a.primary.ip().to_string(), A);
    assert_eq!(b.primary.ip().to_string(), B);
    assert_eq!(a.primary.port(), b.primary.port());
    let socket = client();
    let me = socket.local_addr().unwrap();

    // plain Binding on the primary port
    let (bytes, from) = transact(&socket, a.primary, &request(tid(1), &[]));
    assert_eq!(from, a.primary);
    let s = success(&bytes, tid(1));
    assert_eq!(s.xor_mapped, me, "XOR-MAPPED-ADDRESS is the client socket");
    assert_eq!(s.mapped, Some(me), "RFC 5780 §6.1: MAPPED-ADDRESS too");
    assert_eq!(s.origin, Some(a.primary));
    // RFC 5780 Table 1: Ca:Cp — the partner's IP with the alternate port
    assert_eq!(s.other, Some(b.alternate));
    assert_eq!(s.padding, None);

    // plain Binding on the alternate port: OTHER-ADDRESS is b's primary
    let (bytes, from) = transact(&socket, a.alternate, &request(tid(2), &[]));
    assert_eq!(from, a.alternate);
    let s = success(&bytes, tid(2));
    assert_eq!((s.origin, s.other), (Some(a.alternate), Some(b.primary)));

    // change-port: a's alternate port answers
    let (bytes, from) = transact(&socket, a.primary, &request(tid(3), &[change(false, true)]));
    assert_eq!(from, a.alternate);
    let s = success(&bytes, tid(3));
    assert_eq!((s.xor_mapped, s.origin), (me, Some(a.alternate)));

    // change-IP: b answers from its primary port, on a's behalf
    let (bytes, from) = transact(&socket, a.primary, &request(tid(4), &[change(true, false)]));
    assert_eq!(from, b.primary);
    let s = success(&bytes, tid(4));
    assert_eq!((s.xor_mapped, s.origin), (me, Some(b.primary)));
    assert_eq!(s.other, Some(b.alternate));

    // change-IP and change-port: b's alternate port
    let (bytes, from) = transact(&socket, a.primary, &request(tid(5), &[change(true, true)]));
    assert_eq!(from, b.alternate);
    let s = success(&bytes, tid(5));
    assert_eq!((s.xor_mapped, s.origin), (me, Some(b.alternate)));

    // and the other way round: b forwards change-IP to a
    let (bytes, from) = transact(&socket, b.primary, &request(tid(6), &[change(true, false)]));
    assert_eq!(from, a.primary);
    assert_eq!(success(&bytes, tid(6)).xor_mapped, me);

    // change-IP alone arriving on b's alternate port: a's alternate port (RFC 5780 Table 1)
    let (_, from) = transact(
        &socket,
        b.alternate,
        &request(tid(7), &[change(true, false)]),
    );
    assert_eq!(from, a.alternate);
}

#[test]
fn response_port_and_padding_are_honoured_within_limits() {
    let pair = start_pair(&[]);
    let (a, b) = (&pair.a, &pair.b);
    let asking = client();
    let receiving = client();
    let me = asking.local_addr().unwrap();
    let target = receiving.local_addr().unwrap().port();
    let mut buf = [0u8; 4096];

    // RESPONSE-PORT: the answer goes to the same IP, the other port; XOR-MAPPED-ADDRESS is still
    // the asking socket
    for (to, attributes, from) in [
        (a.primary, vec![Attribute::ResponsePort(target)], a.primary),
        (
            a.primary,
            vec![change(true, false), Attribute::ResponsePort(target)],
            b.primary,
        ),
    ] {
        asking.send_to(&request(tid(10), &attributes), to).unwrap();
        let (n, source) = receiving
            .recv_from(&mut buf)
            .expect("answer on the RESPONSE-PORT");
        assert_eq!(source, from);
        assert_eq!(success(&buf[..n], tid(10)).xor_mapped, me);
        assert!(
            silent(&asking, Duration::from_millis(100)),
            "nothing to the source port"
        );
    }

    // PADDING: the response is padded up to the request's size, never beyond it
    for padding in [500usize, 1500] {
        let pad = vec![0x55u8; padding];
        let req = request(tid(11), &[Attribute::Padding(&pad)]);
        let (bytes, _) = transact(&asking, a.primary, &req);
        let s = success(&bytes, tid(11));
        assert!(s.padding.is_some_and(|p| p > 0));
        assert!(bytes.len() <= req.len(), "{} > {}", bytes.len(), req.len());
        assert!(
            req.len() - bytes.len() < 8,
            "{} vs {}",
            bytes.len(),
            req.len()
        );
        // the same through the partner
        let req = request(tid(12), &[change(true, true), Attribute::Padding(&pad)]);
        let (bytes, from) = transact(&asking, a.primary, &req);
        assert_eq!(from, b.alternate);
        assert!(success(&bytes, tid(12)).padding.is_some_and(|p| p > 0));
        assert!(bytes.len() <= req.len());
    }

    // PADDING with RESPONSE-PORT: 400, to the source
    let pad = [0u8; 64];
    let (bytes, _) = transact(
        &asking,
        a.primary,
        &request(
            tid(13),
            &[Attribute::Padding(&pad), Attribute::ResponsePort(target)],
        ),
    );
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.class(), MessageClass::ErrorResponse);
    assert!(matches!(
        m.get(AttributeType::ERROR_CODE),
        Some(Attribute::ErrorCode(e)) if e.code == 400
    ));
}

/// Datagrams the server must drop without answering, with the drop reason they count under.
fn invalid_datagrams() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = request(tid(20), &[]);
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 4);
    let mut wrong_cookie = good.clone();
    wrong_cookie[4..8].copy_from_slice(&(MAGIC_COOKIE ^ 0x0100).to_be_bytes());
    let mut wrong_fingerprint = good.clone();
    let last = wrong_fingerprint.len() - 1;
    wrong_fingerprint[last] ^= 0x5A;
    let mut bad_attribute = good[..20].to_vec();
    bad_attribute[3] = 8;
    bad_attribute.extend_from_slice(&[0x00, 0x03, 0x00, 0x03, 0, 0, 4, 0]);
    let pad = vec![0u8; 3000];
    let oversized = request(tid(21), &[Attribute::Padding(&pad)]);
    vec![
        ("empty", Vec::new(), "truncated"),
        ("19 bytes", good[..19].to_vec(), "truncated"),
        ("truncated body", truncated, "truncated"),
        ("HTTP", b"GET / HTTP/1.0\r\n\r\n\r\n".to_vec(), "not_stun"),
        ("wrong cookie", wrong_cookie, "wrong_cookie"),
        ("wrong fingerprint", wrong_fingerprint, "bad_fingerprint"),
        ("malformed CHANGE-REQUEST", bad_attribute, "malformed"),
        ("oversized", oversized, "oversized"),
        ("65507 bytes", vec![0x00; 65_507], "oversized"),
        (
            "indication",
            {
                MessageBuilder::new(MessageType::BINDING_INDICATION, tid(22))
                    .to_vec()
                    .unwrap()
            },
            "indication",
        ),
    ]
}

#[test]
fn invalid_datagrams_are_never_answered_counted_and_survived() {
    let mut pair = start_pair(&[]);
    let socket = client();
    let cases = invalid_datagrams();
    let before: Vec<u64> = cases
        .iter()
        .map(|(_, _, reason)| dropped(pair.a.ops, "a", reason))
        .collect();
    for round in 0..3 {
        for (what, datagram, _) in &cases {
            for to in [pair.a.primary, pair.a.alternate] {
                socket.send_to(datagram, to).unwrap();
            }
            assert!(
                silent(
                    &socket,
                    Duration::from_millis(if round == 0 { 150 } else { 10 })
                ),
                "{what} was answered"
            );
        }
    }
    assert!(silent(&socket, Duration::from_millis(300)), "late answer");
    assert!(pair.a.alive(), "stun-a survived");
    // still answering
    let (bytes, _) = transact(&socket, pair.a.primary, &request(tid(30), &[]));
    success(&bytes, tid(30));
    // counted by reason: 3 rounds to 2 ports
    let mut expected = std::collections::HashMap::<&str, u64>::new();
    for (_, _, reason) in &cases {
        *expected.entry(reason).or_default() += 6;
    }
    for ((what, _, reason), before) in cases.iter().zip(before) {
        let now = dropped(pair.a.ops, "a", reason);
        assert!(
            now >= before + expected[reason],
            "{what}: qp_stun_dropped_total{{reason=\"{reason}\"}} went from {before} to {now}"
        );
    }
    let (_, body) = http_get(pair.a.ops, "/metrics");
    assert!(
        metric(&body, "qp_stun_requests_total{member=\"a\"}") >= 60,
        "{body}"
    );
    assert!(
        metric(
            &body,
            "qp_stun_responses_total{member=\"a\",kind=\"primary\"}"
        ) >= 1,
        "{body}"
    );
    assert!(pair.a.alive() && pair.b.alive());
}

#[test]
fn responses_are_counted_by_kind_and_ping_reports_the_server() {
    let pair = start_pair(&[]);
    let socket = client();
    transact(&socket, pair.a.primary, &request(tid(40), &[]));
    transact(
        &socket,
        pair.a.primary,
        &request(tid(41), &[change(false, true)]),
    );
    transact(
        &socket,
        pair.a.primary,
        &request(tid(42), &[change(true, false)]),
    );
    let unknown = request(
        tid(43),
        &[Attribute::Unknown {
            typ: AttributeType::new(0x7ABC),
            value: &[],
        }],
    );
    let (bytes, _) = transact(&socket, pair.a.primary, &unknown);
    assert_eq!(
        Message::parse(&bytes).unwrap().class(),
        MessageClass::ErrorResponse
    );

    let series = |ops, member: &str, kind: &str| {
        let (_, body) = http_get(ops, "/metrics");
        metric(
            &body,
            &format!("qp_stun_responses_total{{member=\"{member}\",kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(series(pair.a.ops, "a", "primary"), 1);
    assert_eq!(series(pair.a.ops, "a", "alternate"), 1);
    assert_eq!(series(pair.a.ops, "a", "error"), 1);
    assert_eq!(series(pair.b.ops, "b", "for_partner"), 1);
    let (_, body) = http_get(pair.a.ops, "/metrics");
    assert_eq!(metric(&body, "qp_stun_forwarded_total{member=\"a\"}"), 1);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ping = runtime.block_on(async {
        let mut client = quickp2p_proto::v1::stun_client::StunClient::connect(format!(
            "http://{}",
            pair.b.control
        ))
        .await
        .unwrap();
        client
            .ping(quickp2p_proto::v1::StunPingRequest {
                caller_id: "test".into(),
                sent_at_us: 7,
            })
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!(ping.server_id, "stun-b-test");
    assert_eq!(ping.member(), quickp2p_proto::v1::StunPairMember::B);
    assert_eq!(ping.request_sent_at_us, 7);
    assert!(ping.rfc5780_enabled);
    let primary: SocketAddr = ping.primary_address.as_ref().unwrap().try_into().unwrap();
    assert_eq!(primary, pair.b.primary);
    let partner: SocketAddr = ping.partner_address.as_ref().unwrap().try_into().unwrap();
    assert_eq!(partner, pair.a.primary);
    assert_eq!(ping.counters.unwrap().responses_for_partner, 1);
}

#[test]
fn rfc5780_can_be_switched_off() {
    let pair = start_pair(&["--rfc5780", "false"]);
    let socket = client();
    let (bytes, _) = transact(&socket, pair.a.primary, &request(tid(50), &[]));
    let s = success(&bytes, tid(50));
    assert_eq!((s.mapped, s.origin, s.other), (None, None, None));
    let (bytes, from) = transact(
        &socket,
        pair.a.primary,
        &request(tid(51), &[change(true, false)]),
    );
    assert_eq!(from, pair.a.primary);
    let m = Message::parse(&bytes).unwrap();
    assert!(matches!(
        m.get(AttributeType::ERROR_CODE),
        Some(Attribute::ErrorCode(e)) if e.code == 420
    ));
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut pair = start_pair(&[]);
    let pid = pair.a.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = pair.a.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(pair.b.alive());
}

#[test]
fn help_documents_every_flag_and_bad_flags_are_all_reported() {
    let help = Command::new(env!("CARGO_BIN_EXE_quickp2p-stun"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for var in [
        "QP_STUN_MEMBER",
        "QP_STUN_BIND_IP",
        "QP_STUN_ADVERTISED_IP",
        "QP_STUN_PRIMARY_PORT",
        "QP_STUN_ALTERNATE_PORT",
        "QP_STUN_PARTNER_ADDR",
        "QP_STUN_PARTNER_ALTERNATE_PORT",
        "QP_STUN_CONTROL_ADDR",
        "QP_STUN_PARTNER_CONTROL_URL",
        "QP_STUN_RFC5780",
        "QP_STUN_RATE_LIMIT",
        "QP_STUN_RATE_BURST",
        "QP_STUN_RATE_TABLE_SIZE",
        "QP_STUN_MAX_REQUEST_SIZE",
        "QP_STUN_MAX_PADDING",
        "QP_STUN_SOFTWARE",
        "QP_STUN_WORKERS",
        "QP_STUN_FORWARD_TIMEOUT_MS",
        "QP_STUN_FORWARD_STALENESS_MS",
        "QP_STUN_MAX_FORWARDS",
        "QP_HTTP_ADDR",
        "QP_LOG",
    ] {
        assert!(text.contains(var), "--help does not mention {var}:\n{text}");
    }

    let bad = Command::new(env!("CARGO_BIN_EXE_quickp2p-stun"))
        .env_clear()
        .args([
            "--member",
            "c",
            "--primary-port",
            "x",
            "--rfc5780",
            "perhaps",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let text = String::from_utf8(bad.stderr).unwrap();
    assert!(text.contains("3 problems"), "{text}");
    for name in ["QP_STUN_MEMBER", "QP_STUN_PRIMARY_PORT", "QP_STUN_RFC5780"] {
        assert!(text.contains(name), "{text}");
    }
}

/// coturn's clients, when installed (CI installs the `coturn` package).
mod coturn {
    use super::*;

    fn installed(tool: &str) -> bool {
        Command::new(tool).arg("-h").output().is_ok()
    }

    #[test]
    fn turnutils_stunclient_gets_our_mapped_address() {
        if !installed("turnutils_stunclient") {
            eprintln!("skipped: turnutils_stunclient is not installed (apt-get install coturn)");
            return;
        }
        let pair = start_pair(&[]);
        let out = Command::new("turnutils_stunclient")
            .args(["-p", &pair.a.primary.port().to_string(), A])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("UDP reflexive addr: 127.0.0.1:"), "{text}");
        assert!(text.contains("RFC 5780 response"), "{text}");
        // OTHER-ADDRESS: stun-b's IP with the alternate port (RFC 5780 Table 1)
        let other = pair.b.alternate.to_string();
        assert!(
            text.lines()
                .any(|l| l.contains("Other addr") && l.trim_end().ends_with(&other)),
            "{text}"
        );
    }

    #[test]
    fn turnutils_natdiscovery_sees_no_nat_on_loopback() {
        if !installed("turnutils_natdiscovery") {
            eprintln!("skipped: turnutils_natdiscovery is not installed (apt-get install coturn)");
            return;
        }
        let pair = start_pair(&[]);
        let out = Command::new("turnutils_natdiscovery")
            .args(["-m", "-f", "-p", &pair.a.primary.port().to_string(), A])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // Loopback has no NAT: the mapping never changes and every filtering probe (including
        // the change-IP one answered by stun-b) arrives.
        assert!(text.contains("Endpoint Independent Mapping"), "{text}");
        assert!(
            text.contains("NAT with Endpoint Independent Filtering"),
            "{text}"
        );
        assert!(!text.contains("timeout"), "{text}");
    }
}
