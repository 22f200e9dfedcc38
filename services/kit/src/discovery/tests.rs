//! Discovery against a fake Kubernetes API.
//!
//! No real API server of a current Kubernetes version can run on the build machines (no container
//! engine, no kind/k3s), so these tests serve the JSON of Services, EndpointSlices and Nodes — as
//! a real API server returns them — from a small axum server on loopback, and point a real
//! `kube::Client` at it over plain HTTP. Everything above the socket (kube's request building,
//! its decoding into k8s-openapi types, status errors) is the real code path.

#![cfg(feature = "kubernetes")]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::*;
use crate::config::{FieldErrors, parse_flags_only};

/// The answers for one object, in turn: (HTTP status, JSON body); the last one stays.
type Answers = VecDeque<(u16, Value)>;

/// What the fake API server answers, by object, and the requests it saw.
#[derive(Clone, Default)]
struct FakeApi {
    objects: Arc<Mutex<HashMap<String, Answers>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeApi {
    fn set(&self, key: &str, answers: Vec<(u16, Value)>) {
        self.objects
            .lock()
            .unwrap()
            .insert(key.to_owned(), answers.into());
    }
    fn service(&self, ns: &str, body: Value) {
        let name = body["metadata"]["name"].as_str().unwrap().to_owned();
        self.set(&format!("services/{ns}/{name}"), vec![(200, body)]);
    }
    fn node(&self, name: &str, addresses: &[(&str, &str)]) {
        let addresses: Vec<Value> = addresses
            .iter()
            .map(|(t, a)| json!({"type": t, "address": a}))
            .collect();
        self.set(
            &format!("nodes/{name}"),
            vec![(
                200,
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                       "status": {"addresses": addresses}}),
            )],
        );
    }
    /// One EndpointSlice of `service` with `endpoints` = (address, node, ready).
    fn endpoints(
        &self,
        ns: &str,
        service: &str,
        ports: &[(&str, u16)],
        endpoints: &[(&str, &str, bool)],
    ) {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(n, p)| json!({"name": n, "port": p, "protocol": "UDP"}))
            .collect();
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|(a, n, r)| json!({"addresses": [a], "nodeName": n, "conditions": {"ready": r}}))
            .collect();
        self.set(
            &format!("endpointslices/{ns}/{service}"),
            vec![(
                200,
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                       "metadata": {"resourceVersion": "1"},
                       "items": [{"metadata": {"name": format!("{service}-x1"), "namespace": ns,
                                              "labels": {"kubernetes.io/service-name": service}},
                                  "addressType": "IPv4", "ports": ports, "endpoints": endpoints}]}),
            )],
        );
    }
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve_fake(
    State(api): State<FakeApi>,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    api.requests.lock().unwrap().push(uri.to_string());
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let key = match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "services", name] => format!("services/{ns}/{name}"),
        ["api", "v1", "nodes", name] => format!("nodes/{name}"),
        [
            "apis",
            "discovery.k8s.io",
            "v1",
            "namespaces",
            ns,
            "endpointslices",
        ] => {
            let selector = query.get("labelSelector").cloned().unwrap_or_default();
            let service = selector
                .strip_prefix("kubernetes.io/service-name=")
                .unwrap_or("?");
            format!("endpointslices/{ns}/{service}")
        }
        _ => "?".to_owned(),
    };
    let answer = {
        let mut objects = api.objects.lock().unwrap();
        match objects.get_mut(&key) {
            Some(queue) if queue.len() > 1 => queue.pop_front(),
            Some(queue) => queue.front().cloned(),
            None if key.starts_with("endpointslices/") => Some((
                200,
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                       "metadata": {}, "items": []}),
            )),
            None => None,
        }
    };
    let (status, body) = answer.unwrap_or_else(|| {
        (
            404,
            json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                   "message": format!("{key} not found"), "reason": "NotFound", "code": 404}),
        )
    });
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
}

/// A fake API server on loopback and a discovery reading namespace `qp` through it.
async fn fake_cluster() -> (FakeApi, KubeDiscovery) {
    let api = FakeApi::default();
    let app = Router::new().fallback(serve_fake).with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let discovery = KubeDiscovery::new(client, "qp").with_poll_interval(Duration::from_millis(20));
    (api, discovery)
}

fn service(name: &str, kind: &str, ports: &[(&str, u16, Option<u16>)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, np)| {
            let mut port = json!({"name": n, "port": p, "targetPort": n, "protocol": "UDP"});
            if let Some(np) = np {
                port["nodePort"] = json!(np);
            }
            port
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "qp"},
           "spec": {"type": kind, "ports": ports, "externalTrafficPolicy": "Local"},
           "status": {"loadBalancer": {}}})
}

const STUN_PORTS: [(&str, u16, Option<u16>); 2] =
    [("stun", 3478, Some(31478)), ("stun-alt", 3479, Some(31479))];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn a_load_balancer_ingress_ip_is_the_address_with_the_service_ports() {
    let (api, discovery) = fake_cluster().await;
    let mut svc = service("stun-a", "LoadBalancer", &STUN_PORTS);
    svc["status"]["loadBalancer"]["ingress"] = json!([{"ip": "203.0.113.10", "ipMode": "VIP"}]);
    api.service("qp", svc);

    let found = discovery
        .service_address("stun-a", Some("node-1"))
        .await
        .unwrap();
    assert_eq!(found.ip, ip("203.0.113.10"));
    assert_eq!(found.port("stun"), Some(3478));
    assert_eq!(found.port("stun-alt"), Some(3479));
    assert_eq!(found.source, AddressSource::LoadBalancer);
    assert_eq!(found.backend, None);
    // one read: no node or endpoint lookups for a load balancer
    assert_eq!(api.requests(), ["/api/v1/namespaces/qp/services/stun-a"]);
}

#[tokio::test]
async fn a_load_balancer_known_by_host_name_is_resolved() {
    let (api, discovery) = fake_cluster().await;
    let mut svc = service("gateway", "LoadBalancer", &[("quic", 4433, None)]);
    svc["status"]["loadBalancer"]["ingress"] = json!([{"hostname": "localhost"}]);
    api.service("qp", svc);
    let found = discovery.service_address("gateway", None).await.unwrap();
    assert!(found.ip.is_loopback(), "{found:?}");
    assert_eq!(found.port("quic"), Some(4433));
}

#[tokio::test]
async fn external_ips_come_before_node_ports() {
    let (api, discovery) = fake_cluster().await;
    let mut svc = service("stun-b", "NodePort", &STUN_PORTS);
    svc["spec"]["externalIPs"] = json!(["198.51.100.7"]);
    api.service("qp", svc);
    let found = discovery.service_address("stun-b", None).await.unwrap();
    assert_eq!(
        (found.ip, found.port("stun")),
        (ip("198.51.100.7"), Some(3478))
    );
    assert_eq!(found.source, AddressSource::ExternalIp);
}

#[tokio::test]
async fn a_pending_load_balancer_is_waited_for() {
    let (api, discovery) = fake_cluster().await;
    let pending = service("stun-b", "LoadBalancer", &STUN_PORTS);
    let mut ready = pending.clone();
    ready["status"]["loadBalancer"]["ingress"] = json!([{"ip": "203.0.113.11"}]);
    // the API server restarts once, then the load balancer is pending twice, then has its IP
    api.set(
        "services/qp/stun-b",
        vec![
            (
                503,
                json!({"kind": "Status", "apiVersion": "v1", "code": 503, "message": "restarting"}),
            ),
            (200, pending.clone()),
            (200, pending),
            (200, ready),
        ],
    );
    let found = discovery
        .wait_service_address("stun-b", None, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(found.ip, ip("203.0.113.11"));
    assert_eq!(api.requests().len(), 4);
}

#[tokio::test]
async fn waiting_ends_with_the_last_reason() {
    let (api, discovery) = fake_cluster().await;
    api.service("qp", service("stun-b", "LoadBalancer", &STUN_PORTS));
    let err = discovery
        .wait_service_address("stun-b", None, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, DiscoveryError::Pending { .. }), "{err}");
    assert!(api.requests().len() >= 2, "asked again while waiting");
}

#[tokio::test]
async fn forbidden_is_not_waited_for() {
    let (api, discovery) = fake_cluster().await;
    api.set(
        "services/qp/stun-a",
        vec![(
            403,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
                   "message": "services \"stun-a\" is forbidden: User \"system:serviceaccount:qp:default\" cannot get resource \"services\"",
                   "code": 403}),
        )],
    );
    let err = discovery
        .wait_service_address("stun-a", None, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DiscoveryError::Api {
                status: Some(403),
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_transient());
    assert_eq!(api.requests().len(), 1);
    assert!(err.to_string().contains("service qp/stun-a"), "{err}");
}

#[tokio::test]
async fn a_missing_service_is_reported_by_name() {
    let (_api, discovery) = fake_cluster().await;
    let err = discovery.service_address("nope", None).await.unwrap_err();
    assert!(
        matches!(
            err,
            DiscoveryError::Api {
                status: Some(404),
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.is_transient(),
        "a Service of the same install may come a moment later"
    );
}

#[tokio::test]
async fn a_node_port_uses_the_own_node_external_ip() {
    let (api, discovery) = fake_cluster().await;
    api.service("qp", service("stun-a", "NodePort", &STUN_PORTS));
    api.node(
        "node-1",
        &[
            ("InternalIP", "10.0.0.5"),
            ("ExternalIP", "198.51.100.21"),
            ("Hostname", "node-1"),
        ],
    );
    let found = discovery
        .service_address("stun-a", Some("node-1"))
        .await
        .unwrap();
    assert_eq!(found.ip, ip("198.51.100.21"));
    assert_eq!(found.port("stun"), Some(31478));
    assert_eq!(found.port("stun-alt"), Some(31479));
    assert_eq!(
        found.source,
        AddressSource::NodePort {
            node: "node-1".into()
        }
    );
}

#[tokio::test]
async fn a_partner_node_port_uses_the_node_of_its_first_ready_endpoint() {
    let (api, discovery) = fake_cluster().await;
    api.service("qp", service("stun-b", "NodePort", &STUN_PORTS));
    api.endpoints(
        "qp",
        "stun-b",
        &[("stun", 3478), ("stun-alt", 3479)],
        &[
            ("10.1.3.4", "node-c", true),
            ("10.1.2.9", "node-a", false),
            ("10.1.1.7", "node-b", true),
        ],
    );
    api.node("node-b", &[("ExternalIP", "198.51.100.22")]);
    let found = discovery.service_address("stun-b", None).await.unwrap();
    assert_eq!(
        found.ip,
        ip("198.51.100.22"),
        "node-a is not ready; node-b sorts before node-c"
    );
    assert_eq!(found.port("stun"), Some(31478));
    let backend = found.backend.unwrap();
    assert_eq!(backend.pod_ip, ip("10.1.1.7"));
}

#[tokio::test]
async fn no_ready_endpoint_is_transient() {
    let (api, discovery) = fake_cluster().await;
    api.service("qp", service("stun-b", "NodePort", &STUN_PORTS));
    api.endpoints(
        "qp",
        "stun-b",
        &[("stun", 3478)],
        &[("10.1.2.9", "node-a", false)],
    );
    let err = discovery.service_address("stun-b", None).await.unwrap_err();
    assert!(
        matches!(err, DiscoveryError::NoReadyEndpoint { .. }),
        "{err}"
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn a_host_network_partner_is_its_node_with_the_pod_ports_and_pod_ip() {
    let (api, discovery) = fake_cluster().await;
    let mut svc = service("stun-b", "ClusterIP", &STUN_PORTS);
    svc["spec"]["clusterIP"] = json!("None");
    api.service("qp", svc);
    // a hostNetwork pod's address is its node's InternalIP
    api.endpoints(
        "qp",
        "stun-b",
        &[("stun", 3478), ("stun-alt", 3479), ("control", 3480)],
        &[("10.0.0.8", "edge-2", true)],
    );
    api.node(
        "edge-2",
        &[("InternalIP", "10.0.0.8"), ("ExternalIP", "198.51.100.31")],
    );
    let found = discovery.service_address("stun-b", None).await.unwrap();
    assert_eq!(found.ip, ip("198.51.100.31"));
    assert_eq!(
        found.source,
        AddressSource::HostNetwork {
            node: "edge-2".into()
        }
    );
    assert_eq!(found.port("stun-alt"), Some(3479));
    let backend = found.backend.unwrap();
    assert_eq!(backend.pod_ip, ip("10.0.0.8"));
    assert_eq!(backend.ports.get("control"), Some(&3480));
}

#[tokio::test]
async fn a_host_network_pod_finds_itself_before_its_endpoint_is_listed() {
    let (api, discovery) = fake_cluster().await;
    let mut svc = service("stun-a", "ClusterIP", &STUN_PORTS);
    svc["spec"]["ports"][0]["targetPort"] = json!(3478);
    svc["spec"]["ports"][1]["targetPort"] = json!(3479);
    api.service("qp", svc);
    api.node(
        "edge-1",
        &[("InternalIP", "10.0.0.7"), ("ExternalIP", "198.51.100.30")],
    );
    let found = discovery
        .service_address("stun-a", Some("edge-1"))
        .await
        .unwrap();
    assert_eq!(found.ip, ip("198.51.100.30"));
    assert_eq!(found.port("stun"), Some(3478));
    assert_eq!(found.backend, None);
}

#[tokio::test]
async fn a_cluster_ip_service_over_ordinary_pods_is_not_exposed() {
    let (api, discovery) = fake_cluster().await;
    api.service(
        "qp",
        service("checkpoint", "ClusterIP", &[("grpc", 50052, None)]),
    );
    api.endpoints(
        "qp",
        "checkpoint",
        &[("grpc", 50052)],
        &[("10.1.0.4", "node-1", true)],
    );
    api.node(
        "node-1",
        &[("InternalIP", "10.0.0.5"), ("ExternalIP", "198.51.100.21")],
    );
    let err = discovery
        .service_address("checkpoint", None)
        .await
        .unwrap_err();
    assert!(matches!(err, DiscoveryError::NotExposed { .. }), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn node_address_types_are_tried_in_order() {
    let (api, discovery) = fake_cluster().await;
    api.node(
        "metal-1",
        &[("Hostname", "metal-1"), ("InternalIP", "192.0.2.44")],
    );
    let err = discovery.node_address("metal-1").await.unwrap_err();
    assert!(
        err.to_string().contains(
            "no address of type ExternalIP (it has: Hostname metal-1, InternalIP 192.0.2.44)"
        ),
        "{err}"
    );
    let discovery = discovery.with_node_address_types(&["ExternalIP".into(), "InternalIP".into()]);
    let (found, all) = discovery.node_address("metal-1").await.unwrap();
    assert_eq!(found, ip("192.0.2.44"));
    assert_eq!(all, [ip("192.0.2.44")]);
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    discovery: DiscoveryArgs,
}

fn resolve(args: &[&str]) -> (DiscoveryConfig, FieldErrors) {
    let mut all = vec!["t"];
    all.extend_from_slice(args);
    let cli = parse_flags_only::<Cli, _, _>(all).unwrap();
    let mut errs = FieldErrors::new();
    let config = cli.discovery.resolve(&mut errs);
    (config, errs)
}

#[test]
fn static_is_the_default() {
    let (config, errs) = resolve(&[]);
    errs.finish().unwrap();
    assert_eq!(config, DiscoveryConfig::default());
    assert_eq!(config.mode, DiscoveryMode::Static);
}

#[test]
fn kubernetes_flags_are_read() {
    let (config, errs) = resolve(&[
        "--discovery",
        "Kubernetes",
        "--discovery-service",
        "qp-stun-a",
        "--discovery-partner-service",
        "qp-stun-b",
        "--node-name",
        "ip-10-0-0-7.ec2.internal",
        "--discovery-node-address-types",
        "externalip, InternalIP",
        "--discovery-wait-s",
        "60",
    ]);
    errs.finish().unwrap();
    assert_eq!(
        config,
        DiscoveryConfig {
            mode: DiscoveryMode::Kubernetes,
            namespace: None,
            service: Some("qp-stun-a".into()),
            partner_service: Some("qp-stun-b".into()),
            node_name: Some("ip-10-0-0-7.ec2.internal".into()),
            node_address_types: vec!["ExternalIP".into(), "InternalIP".into()],
            wait: Duration::from_secs(60),
        }
    );
}

#[test]
fn every_bad_discovery_flag_is_reported_at_once() {
    let (_, errs) = resolve(&[
        "--discovery",
        "consul",
        "--discovery-namespace",
        "Not_A_Name",
        "--discovery-node-address-types",
        "PublicIP",
        "--discovery-wait-s",
        "9999",
    ]);
    let err = errs.finish().unwrap_err();
    let names: Vec<&str> = err.errors.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "--discovery / QP_DISCOVERY",
            "--discovery-namespace / QP_DISCOVERY_NAMESPACE",
            "--discovery-node-address-types / QP_DISCOVERY_NODE_ADDRESS_TYPES",
            "--discovery-node-address-types / QP_DISCOVERY_NODE_ADDRESS_TYPES",
            "--discovery-wait-s / QP_DISCOVERY_WAIT_S",
        ],
        "{err}"
    );
}

#[test]
fn kubernetes_needs_a_service_or_a_node() {
    let (_, errs) = resolve(&["--discovery", "kubernetes"]);
    let err = errs.finish().unwrap_err();
    assert_eq!(err.errors.len(), 1, "{err}");
    assert_eq!(
        err.errors[0].name,
        "--discovery-service / QP_DISCOVERY_SERVICE"
    );
}

#[test]
fn external_address_ports_by_name() {
    let address = ExternalAddress {
        ip: ip("203.0.113.1"),
        ports: BTreeMap::from([("stun".to_owned(), 3478)]),
        source: AddressSource::LoadBalancer,
        backend: None,
    };
    assert_eq!(address.port("stun"), Some(3478));
    assert_eq!(address.port("stun-alt"), None);
}

#[tokio::test]
async fn own_address_reads_the_configured_service_and_needs_one() {
    let (api, discovery) = fake_cluster().await;
    let mut svc = service("relay", "LoadBalancer", &STUN_PORTS);
    svc["status"]["loadBalancer"]["ingress"] = json!([{"ip": "203.0.113.12"}]);
    api.service("qp", svc);
    let mut config = DiscoveryConfig {
        mode: DiscoveryMode::Kubernetes,
        namespace: None,
        service: Some("relay".into()),
        partner_service: None,
        node_name: None,
        node_address_types: vec!["ExternalIP".into()],
        wait: Duration::from_secs(1),
    };
    let found = discovery.own_address(&config).await.unwrap();
    assert_eq!(found.ip, ip("203.0.113.12"));

    config.service = None;
    let err = discovery.own_address(&config).await.unwrap_err();
    assert!(matches!(err, DiscoveryError::NoService), "{err}");
    assert!(!err.is_transient());
}
