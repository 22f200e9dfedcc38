//! Protocol-level tests of quickp2p-proto: frame round trips of real peer-protocol messages (sans-IO
//! and over tokio streams), forward compatibility (unknown fields, enum values and oneof cases from a
//! newer peer), and checks on the compiled descriptors: every element documented, every service
//! present.

#![allow(clippy::unwrap_used)] // a test crate: helpers outside #[test] fns unwrap too

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use prost::Message;
use prost_types::source_code_info::Location;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto};
use quickp2p_proto::frame::{
    self, DecodeFrameError, FrameDecoder, FrameReader, MAX_FRAME_LEN, ReadFrameError,
};
use quickp2p_proto::v1::{self, gateway_frame, peer_event, peer_request, peer_response};
use tokio::io::AsyncWriteExt;

fn peer(n: u8) -> v1::PeerId {
    v1::PeerId::from_public_key([n; 32])
}

fn addr(text: &str) -> v1::SocketAddress {
    text.parse::<std::net::SocketAddr>().unwrap().into()
}

fn requests() -> Vec<v1::PeerRequest> {
    let r = |id, request| v1::PeerRequest {
        request_id: id,
        request: Some(request),
    };
    vec![
        r(
            1,
            peer_request::Request::Hello(v1::Hello {
                protocol_version: quickp2p_proto::PROTOCOL_VERSION,
                min_protocol_version: 1,
                capabilities: vec![],
                sdk: "quickp2p-rust/0.1.0".into(),
            }),
        ),
        r(
            2,
            peer_request::Request::GetChallenge(v1::GetChallenge {
                app_id: Some(v1::AppId::new("chat-demo")),
            }),
        ),
        r(
            3,
            peer_request::Request::Login(v1::Login {
                app_id: Some(v1::AppId::new("chat-demo")),
                challenge: Bytes::from(vec![9; 32]),
                public_key: Bytes::from(vec![1; 32]),
                signature: Bytes::from(vec![2; 64]),
                app_proof: Bytes::from(vec![3; 32]),
                app_secret_id: "s1".into(),
                previous_session_token: Bytes::new(),
            }),
        ),
        r(
            4,
            peer_request::Request::SendMessage(v1::SendMessage {
                recipient: Some(peer(2)),
                payload: Bytes::from_static(b"hello, B"),
                client_message_id: Bytes::from_static(b"m-1"),
            }),
        ),
        r(
            5,
            peer_request::Request::QueryPeers(v1::QueryPeers {
                filter: Some(v1::AttributeFilter {
                    key: "room".into(),
                    mode: v1::AttributeMatch::Prefix as i32,
                    value: "lobby".into(),
                }),
                page: Some(v1::Page {
                    cursor: String::new(),
                    limit: 50,
                }),
            }),
        ),
        r(
            6,
            peer_request::Request::ReportNat(v1::ReportNat {
                report: Some(v1::NatReport {
                    behaviour: Some(v1::NatBehaviour {
                        mapping: v1::NatMapping::EndpointIndependent as i32,
                        filtering: v1::NatFiltering::AddressAndPortDependent as i32,
                        hairpinning: v1::TriState::No as i32,
                        port_allocation: v1::PortAllocation::Preserving as i32,
                        port_delta: 0,
                        mapping_lifetime_s: 120,
                    }),
                    reflexive_addresses: vec![v1::ReflexiveAddress {
                        observed: Some(addr("203.0.113.5:40000")),
                        server: Some(addr("192.0.2.1:3478")),
                    }],
                    local_addresses: vec![addr("10.0.0.2:40000")],
                    measured_at_unix_ms: 1_700_000_000_000,
                    duration_ms: 640,
                    rfc5780_supported: v1::TriState::Yes as i32,
                }),
            }),
        ),
        r(
            7,
            peer_request::Request::RequestTunnel(v1::RequestTunnel {
                target: Some(peer(2)),
                candidates: vec![v1::Candidate {
                    kind: v1::CandidateKind::Reflexive as i32,
                    address: Some(addr("203.0.113.5:40000")),
                    priority: 1_694_498_815,
                    port_span: 0,
                }],
                nat_report: None,
                clock: Some(v1::ClockEstimate {
                    offset_us: -1_250,
                    rtt_us: 800,
                    error_us: 400,
                    samples: 5,
                    updated_at_us: 1_700_000_000_000_000,
                }),
                retry_of: Bytes::new(),
            }),
        ),
        r(
            8,
            peer_request::Request::SyncClock(v1::SyncClock {
                client_sent_us: 1_700_000_000_123_456,
            }),
        ),
    ]
}

fn gateway_frames() -> Vec<v1::GatewayFrame> {
    let f = |frame| v1::GatewayFrame {
        server_time_us: 1_700_000_000_500_000,
        frame: Some(frame),
    };
    let response = |id, result| {
        gateway_frame::Frame::Response(v1::PeerResponse {
            request_id: id,
            result: Some(result),
        })
    };
    let event = |event| gateway_frame::Frame::Event(v1::PeerEvent { event: Some(event) });
    vec![
        f(response(
            4,
            peer_response::Result::Error(v1::ErrorDetail {
                code: v1::ErrorCode::PeerOffline as i32,
                message: "peer is offline".into(),
                retry_after_ms: 0,
                field: "send_message.recipient".into(),
                limit: 0,
            }),
        )),
        f(response(
            4,
            peer_response::Result::MessageAccepted(v1::MessageAccepted {
                message_id: Bytes::from(vec![5; 16]),
                accepted_at_unix_ms: 1_700_000_000_000,
                duplicate: false,
            }),
        )),
        f(response(
            8,
            peer_response::Result::ClockSample(v1::ClockSample {
                client_sent_us: 1_700_000_000_123_456,
                server_received_us: 1_700_000_000_124_000,
                server_sent_us: 1_700_000_000_124_010,
            }),
        )),
        f(event(peer_event::Event::Message(v1::IncomingMessage {
            sender: Some(peer(1)),
            payload: Bytes::from_static(b"hello, B"),
            message_id: Bytes::from(vec![5; 16]),
            client_message_id: Bytes::from_static(b"m-1"),
            accepted_at_unix_ms: 1_700_000_000_000,
        }))),
        f(event(peer_event::Event::PresenceChanged(
            v1::PresenceChanged {
                state: Some(v1::PresenceState {
                    peer: Some(peer(3)),
                    presence: v1::Presence::Offline as i32,
                    since_unix_ms: 1_700_000_000_001,
                }),
            },
        ))),
        f(event(peer_event::Event::HandshakeInstruction(
            v1::HandshakeInstruction {
                handshake_id: Bytes::from(vec![7; 16]),
                attempt: 1,
                remote_peer: Some(peer(2)),
                role: v1::HandshakeRole::Initiator as i32,
                strategy: v1::HandshakeStrategy::Direct as i32,
                remote_candidates: vec![v1::Candidate {
                    kind: v1::CandidateKind::Host as i32,
                    address: Some(addr("[2001:db8::2]:50000")),
                    priority: 2_130_706_431,
                    port_span: 0,
                }],
                remote_nat: None,
                schedule: Some(v1::PunchSchedule {
                    start_at_us: 1_700_000_000_700_000,
                    probe_interval_ms: 50,
                    budget_ms: 2_000,
                    keepalive_interval_ms: 15_000,
                }),
                prediction: None,
                relay: Some(v1::RelayGrant {
                    relay_id: "relay-0".into(),
                    servers: vec![addr("192.0.2.10:3478")],
                    username: "1700000600:0101".into(),
                    password: "c2VjcmV0".into(),
                    realm: "quickp2p".into(),
                    expires_at_unix_ms: 1_700_000_600_000,
                }),
                probe_key: Bytes::from(vec![8; 32]),
                expires_at_unix_ms: 1_700_000_010_000,
            },
        ))),
        f(event(peer_event::Event::Kicked(v1::Kicked {
            reason: v1::KickReason::Admin as i32,
            message: "maintenance".into(),
            reconnect_after_ms: 60_000,
        }))),
    ]
}

#[test]
fn request_frames_round_trip_through_the_decoder_in_any_chunking() {
    let sent = requests();
    let mut stream = BytesMut::new();
    for request in &sent {
        frame::encode_frame(request, &mut stream).unwrap();
    }
    for chunk in [1, 2, 3, 7, 64, stream.len()] {
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            decoder.feed(piece);
            while let Some(request) = decoder.decode_next::<v1::PeerRequest>().unwrap() {
                got.push(request);
            }
        }
        decoder.finish().unwrap();
        assert_eq!(got, sent, "chunk size {chunk}");
    }
}

#[test]
fn gateway_frames_round_trip_through_decode_frame() {
    let sent = gateway_frames();
    let mut stream = BytesMut::new();
    for f in &sent {
        frame::encode_frame(f, &mut stream).unwrap();
    }
    let mut rest = &stream[..];
    let mut got = Vec::new();
    while !rest.is_empty() {
        let (f, used) = frame::decode_frame::<v1::GatewayFrame>(rest, MAX_FRAME_LEN).unwrap();
        got.push(f);
        rest = &rest[used..];
    }
    assert_eq!(got, sent);
}

#[tokio::test]
async fn frames_round_trip_over_an_async_stream() {
    let (client, server) = tokio::io::duplex(256);
    let (server_read, mut server_write) = tokio::io::split(server);
    let (client_read, mut client_write) = tokio::io::split(client);

    let sent_requests = requests();
    let sent_frames = gateway_frames();
    let to_send = sent_requests.clone();
    let peer_side = tokio::spawn(async move {
        for request in &to_send {
            frame::write_frame(&mut client_write, request)
                .await
                .unwrap();
        }
        client_write.shutdown().await.unwrap();
        let mut reader = FrameReader::new(client_read);
        let mut got = Vec::new();
        while let Some(f) = reader.read_frame::<v1::GatewayFrame>().await.unwrap() {
            got.push(f);
        }
        got
    });

    let mut reader = FrameReader::new(server_read);
    let mut got = Vec::new();
    while let Some(request) = reader.read_frame::<v1::PeerRequest>().await.unwrap() {
        got.push(request);
    }
    assert_eq!(got, sent_requests);
    for f in &sent_frames {
        frame::write_frame(&mut server_write, f).await.unwrap();
    }
    server_write.shutdown().await.unwrap();
    assert_eq!(peer_side.await.unwrap(), sent_frames);
}

#[tokio::test]
async fn async_reader_reports_oversize_and_truncated_frames() {
    // A prefix announcing 1 MiB: refused as soon as the prefix is read.
    let mut prefix = Vec::new();
    prost::encode_length_delimiter(1 << 20, &mut prefix).unwrap();
    let mut reader = FrameReader::new(&prefix[..]);
    match reader.read_frame::<v1::PeerRequest>().await {
        Err(ReadFrameError::Frame(DecodeFrameError::TooLarge { len, max })) => {
            assert_eq!((len, max), (1 << 20, MAX_FRAME_LEN));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(reader.decoder().buffered() <= prefix.len());

    // A frame cut short by the end of the stream.
    let whole = frame::frame_to_bytes(&requests()[2]).unwrap();
    let cut = &whole[..whole.len() - 10];
    let mut reader = FrameReader::new(cut);
    match reader.read_frame::<v1::PeerRequest>().await {
        Err(ReadFrameError::Frame(DecodeFrameError::Truncated { expected, buffered })) => {
            assert_eq!(expected, Some(whole.len()));
            assert_eq!(buffered, cut.len());
        }
        other => panic!("expected Truncated, got {other:?}"),
    }

    // The writer refuses an oversize message before writing anything.
    let big = v1::PeerRequest {
        request_id: 1,
        request: Some(peer_request::Request::SendMessage(v1::SendMessage {
            recipient: Some(peer(2)),
            payload: Bytes::from(vec![0; MAX_FRAME_LEN]),
            client_message_id: Bytes::new(),
        })),
    };
    let mut sink = Vec::new();
    assert!(matches!(
        frame::write_frame(&mut sink, &big).await,
        Err(frame::WriteFrameError::Frame(
            frame::EncodeFrameError::TooLarge { .. }
        ))
    ));
    assert!(sink.is_empty());
}

/// Appends an unknown field as a newer sender would: field 1000 as a varint and field 1001 as bytes.
fn with_unknown_fields(mut encoded: Vec<u8>) -> Vec<u8> {
    prost::encoding::encode_key(1000, prost::encoding::WireType::Varint, &mut encoded);
    prost::encoding::encode_varint(42, &mut encoded);
    prost::encoding::bytes::encode(1001, &Bytes::from_static(b"future"), &mut encoded);
    encoded
}

#[test]
fn unknown_fields_from_a_newer_peer_are_ignored() {
    for request in requests() {
        let newer = with_unknown_fields(request.encode_to_vec());
        assert_eq!(v1::PeerRequest::decode(&newer[..]).unwrap(), request);
    }
    // Also inside a nested message.
    let hello = v1::Hello {
        protocol_version: 2,
        min_protocol_version: 1,
        capabilities: vec!["presence.batch".into()],
        sdk: "quickp2p-rust/9.0.0".into(),
    };
    // PeerRequest { request_id: 7, hello: <Hello with unknown fields> }, built by hand.
    let mut outer = Vec::new();
    prost::encoding::uint64::encode(1, &7, &mut outer);
    prost::encoding::bytes::encode(
        2,
        &Bytes::from(with_unknown_fields(hello.encode_to_vec())),
        &mut outer,
    );
    let decoded = v1::PeerRequest::decode(&outer[..]).unwrap();
    assert_eq!(decoded.request_id, 7);
    assert_eq!(decoded.request, Some(peer_request::Request::Hello(hello)));
}

#[test]
fn unknown_oneof_cases_and_enum_values_are_tolerated() {
    // A request kind added in a later version (field 99 of PeerRequest): decodes with no request,
    // which the gateway answers with ERROR_CODE_UNSUPPORTED.
    let mut encoded = Vec::new();
    prost::encoding::uint64::encode(1, &11, &mut encoded);
    prost::encoding::bytes::encode(99, &Bytes::from_static(&[0x08, 0x01]), &mut encoded);
    let decoded = v1::PeerRequest::decode(&encoded[..]).unwrap();
    assert_eq!(decoded.request_id, 11);
    assert_eq!(decoded.request, None);

    // An error code added later: kept as its number, unknown to this version.
    let mut encoded = Vec::new();
    prost::encoding::int32::encode(1, &77, &mut encoded);
    let detail = v1::ErrorDetail::decode(&encoded[..]).unwrap();
    assert_eq!(detail.code, 77);
    assert!(v1::ErrorCode::try_from(detail.code).is_err());
    assert_eq!(detail.code(), v1::ErrorCode::Unspecified);
    // Re-encoding keeps the number, so a relaying service passes it on unchanged.
    assert_eq!(detail.encode_to_vec(), encoded);
}

// ---- descriptor checks ----

/// Field numbers inside descriptor messages (descriptor.proto), used in source-info paths.
mod path {
    pub const FILE_MESSAGE: i32 = 4;
    pub const FILE_ENUM: i32 = 5;
    pub const FILE_SERVICE: i32 = 6;
    pub const MESSAGE_FIELD: i32 = 2;
    pub const MESSAGE_NESTED: i32 = 3;
    pub const MESSAGE_ENUM: i32 = 4;
    pub const MESSAGE_ONEOF: i32 = 8;
    pub const ENUM_VALUE: i32 = 2;
    pub const SERVICE_METHOD: i32 = 2;
}

struct DocCheck<'a> {
    comments: BTreeMap<Vec<i32>, &'a Location>,
    file: &'a str,
    missing: Vec<String>,
    checked: usize,
}

impl DocCheck<'_> {
    fn require(&mut self, path: &[i32], what: String) {
        self.checked += 1;
        let documented = self
            .comments
            .get(path)
            .and_then(|l| l.leading_comments.as_deref())
            .is_some_and(|c| !c.trim().is_empty());
        if !documented {
            self.missing.push(format!("{}: {what}", self.file));
        }
    }

    fn message(&mut self, m: &DescriptorProto, path: Vec<i32>, name: String) {
        self.require(&path, format!("message {name}"));
        for (i, f) in m.field.iter().enumerate() {
            let p = [&path[..], &[path::MESSAGE_FIELD, i as i32]].concat();
            self.require(&p, format!("field {name}.{}", f.name()));
        }
        for (i, o) in m.oneof_decl.iter().enumerate() {
            let p = [&path[..], &[path::MESSAGE_ONEOF, i as i32]].concat();
            self.require(&p, format!("oneof {name}.{}", o.name()));
        }
        for (i, n) in m.nested_type.iter().enumerate() {
            let p = [&path[..], &[path::MESSAGE_NESTED, i as i32]].concat();
            self.message(n, p, format!("{name}.{}", n.name()));
        }
        for (i, e) in m.enum_type.iter().enumerate() {
            let p = [&path[..], &[path::MESSAGE_ENUM, i as i32]].concat();
            self.enumeration(e, p, format!("{name}.{}", e.name()));
        }
    }

    fn enumeration(&mut self, e: &EnumDescriptorProto, path: Vec<i32>, name: String) {
        self.require(&path, format!("enum {name}"));
        for (i, v) in e.value.iter().enumerate() {
            let p = [&path[..], &[path::ENUM_VALUE, i as i32]].concat();
            self.require(&p, format!("enum value {name}.{}", v.name()));
        }
    }
}

fn our_files() -> Vec<FileDescriptorProto> {
    let set = quickp2p_proto::file_descriptor_set().unwrap();
    let files: Vec<_> = set
        .file
        .into_iter()
        .filter(|f| f.package() == quickp2p_proto::PACKAGE)
        .collect();
    assert!(files.len() >= 9, "expected the 9 quickp2p.v1 files");
    files
}

#[test]
fn every_element_of_the_protocol_is_documented() {
    let mut missing = Vec::new();
    let mut checked = 0;
    for file in our_files() {
        let info = file
            .source_code_info
            .as_ref()
            .expect("protox keeps source info");
        let mut check = DocCheck {
            comments: info.location.iter().map(|l| (l.path.clone(), l)).collect(),
            file: file.name(),
            missing: Vec::new(),
            checked: 0,
        };
        for (i, m) in file.message_type.iter().enumerate() {
            check.message(m, vec![path::FILE_MESSAGE, i as i32], m.name().to_owned());
        }
        for (i, e) in file.enum_type.iter().enumerate() {
            check.enumeration(e, vec![path::FILE_ENUM, i as i32], e.name().to_owned());
        }
        for (i, s) in file.service.iter().enumerate() {
            let p = vec![path::FILE_SERVICE, i as i32];
            check.require(&p, format!("service {}", s.name()));
            for (j, m) in s.method.iter().enumerate() {
                let p = vec![path::FILE_SERVICE, i as i32, path::SERVICE_METHOD, j as i32];
                check.require(&p, format!("rpc {}.{}", s.name(), m.name()));
            }
        }
        missing.extend(check.missing);
        checked += check.checked;
    }
    assert!(checked > 500, "walked only {checked} elements");
    assert!(
        missing.is_empty(),
        "{} undocumented elements (add a leading // comment):\n{}",
        missing.len(),
        missing.join("\n")
    );
}

#[test]
fn descriptor_set_holds_every_service_and_rpc() {
    let mut services: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in our_files() {
        for s in &file.service {
            services.insert(
                s.name().to_owned(),
                s.method.iter().map(|m| m.name().to_owned()).collect(),
            );
        }
    }
    let expected: &[(&str, &[&str])] = &[
        (
            "Checkpoint",
            &[
                "IssueChallenge",
                "Login",
                "Heartbeat",
                "Logout",
                "ValidateSession",
                "QueryPresence",
                "CreateApplication",
                "ListApplications",
                "RevokeApplication",
                "CreateAppSecret",
                "RevokeAppSecret",
            ],
        ),
        ("Handshake", &["Begin", "ReportCandidates", "ReportOutcome"]),
        ("Stun", &["SendBindingResponse", "Ping"]),
        (
            "Relay",
            &["GetStats", "ListAllocations", "Drain", "MintCredentials"],
        ),
        ("Index", &["Publish", "Unpublish", "Get", "Query"]),
        (
            "Admin",
            &[
                "ListPeers",
                "GetPeer",
                "QueryIndex",
                "GetNetworkStats",
                "KickPeer",
                "Broadcast",
                "CreateApplication",
                "ListApplications",
                "RevokeApplication",
                "CreateAppSecret",
                "RevokeAppSecret",
                "ListAuditEvents",
            ],
        ),
        ("Deliver", &["Deliver", "Broadcast", "Kick"]),
    ];
    for (service, rpcs) in expected {
        let have = services
            .get(*service)
            .unwrap_or_else(|| panic!("service quickp2p.v1.{service} missing"));
        for rpc in *rpcs {
            assert!(
                have.contains(*rpc),
                "rpc quickp2p.v1.{service}.{rpc} missing"
            );
        }
    }
    // The peer protocol's frames are there too.
    let messages: BTreeSet<String> = our_files()
        .iter()
        .flat_map(|f| f.message_type.iter().map(|m| m.name().to_owned()))
        .collect();
    for m in ["PeerRequest", "PeerResponse", "GatewayFrame", "PeerEvent"] {
        assert!(messages.contains(m), "message {m} missing");
    }
}

#[test]
fn generated_clients_and_servers_exist() {
    // Compile-time check that tonic generated both sides of every service.
    fn client<T>() {}
    client::<v1::checkpoint_client::CheckpointClient<tonic::transport::Channel>>();
    client::<v1::handshake_client::HandshakeClient<tonic::transport::Channel>>();
    client::<v1::stun_client::StunClient<tonic::transport::Channel>>();
    client::<v1::relay_client::RelayClient<tonic::transport::Channel>>();
    client::<v1::index_client::IndexClient<tonic::transport::Channel>>();
    client::<v1::admin_client::AdminClient<tonic::transport::Channel>>();
    client::<v1::deliver_client::DeliverClient<tonic::transport::Channel>>();
    assert_eq!(
        <v1::stun_server::StunServer<NoStun> as tonic::server::NamedService>::NAME,
        "quickp2p.v1.Stun"
    );
}

#[test]
fn reflection_accepts_the_descriptor_set() {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quickp2p_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("tonic-reflection parses FILE_DESCRIPTOR_SET");
}

/// A do-nothing Stun server, to name the generated server type.
struct NoStun;

#[tonic::async_trait]
impl v1::stun_server::Stun for NoStun {
    async fn send_binding_response(
        &self,
        _: tonic::Request<v1::SendBindingResponseRequest>,
    ) -> Result<tonic::Response<v1::SendBindingResponseResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("test"))
    }

    async fn ping(
        &self,
        _: tonic::Request<v1::StunPingRequest>,
    ) -> Result<tonic::Response<v1::StunPingResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("test"))
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn arb_request() -> impl Strategy<Value = v1::PeerRequest> {
        (
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..2048),
            proptest::collection::vec(any::<u8>(), 0..33),
            any::<u8>(),
        )
            .prop_map(|(id, payload, dedupe, to)| v1::PeerRequest {
                request_id: id,
                request: Some(peer_request::Request::SendMessage(v1::SendMessage {
                    recipient: Some(peer(to)),
                    payload: payload.into(),
                    client_message_id: dedupe.into(),
                })),
            })
    }

    proptest! {
        #[test]
        fn any_frames_in_any_chunks_round_trip(
            msgs in proptest::collection::vec(arb_request(), 0..8),
            cuts in proptest::collection::vec(1usize..600, 1..16),
        ) {
            let mut stream = BytesMut::new();
            for m in &msgs {
                frame::encode_frame(m, &mut stream).unwrap();
                prop_assert!(frame::encoded_frame_len(m) > 0);
            }
            let mut decoder = FrameDecoder::new();
            let mut got = Vec::new();
            let mut rest = &stream[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                decoder.feed(&rest[..n]);
                rest = &rest[n..];
                i += 1;
                while let Some(m) = decoder.decode_next::<v1::PeerRequest>().unwrap() {
                    got.push(m);
                }
            }
            decoder.finish().unwrap();
            prop_assert_eq!(got, msgs);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut decoder = FrameDecoder::with_max_frame_len(256);
            decoder.feed(&data);
            for _ in 0..data.len() + 1 {
                match decoder.decode_next::<v1::PeerRequest>() {
                    Ok(Some(_)) | Err(DecodeFrameError::Message(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            prop_assert!(decoder.buffered() <= data.len());
        }
    }
}
