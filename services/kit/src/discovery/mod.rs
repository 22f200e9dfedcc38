//! Where a process is reached from outside, and where its partner is: from flags, or from the
//! Kubernetes API.
//!
//! A UDP role (gateway, stun-a/stun-b, relay) must advertise the address peers reach it at, which in
//! a cluster is not the pod's own: it is the load-balancer ingress of its Service, an external IP of
//! the Service, or the external address of a node with the Service's node port (or the node's own
//! port for a `hostNetwork` pod). With `--discovery kubernetes` (`QP_DISCOVERY=kubernetes`) a
//! process reads these from the API at start; with `--discovery static` (the default) its own flags
//! (`--advertised-ip`, `--partner-addr`, …) say the same things.
//!
//! - [`DiscoveryArgs`] are the flags, flattened into a binary's clap struct; [`DiscoveryArgs::resolve`]
//!   checks them into a plain [`DiscoveryConfig`].
//! - [`KubeDiscovery`] (cargo feature `kubernetes`, on by default) asks the API server: one
//!   [`KubeDiscovery::service_address`] call turns a Service name into an [`ExternalAddress`]: one
//!   IP and the externally reachable port of each named Service port, and for node-bound answers
//!   the pod behind it ([`Backend`]). [`KubeDiscovery::wait_service_address`] retries while a load
//!   balancer is still pending.
//!
//! How a Service becomes an address, first match wins:
//!
//! | Service | IP | port of each named port |
//! |---|---|---|
//! | `status.loadBalancer.ingress[0]` has an `ip` (or a `hostname`, resolved by DNS) | that | `port` |
//! | `spec.externalIPs` is not empty | the first | `port` |
//! | type `LoadBalancer` without ingress yet | — | pending: retried |
//! | type `NodePort` | the node's external address | `nodePort` |
//! | any other (ClusterIP or headless) over `hostNetwork` pods | the node's external address | the endpoint's port |
//!
//! "The node" is the one named by `--node-name` (`QP_NODE_NAME`, from the downward API's
//! `spec.nodeName`) when asking about the process's own Service, else the node of the first ready
//! endpoint of the Service (endpoints sorted by node, then address, so every asker picks the same
//! one). A node's external address is its first `status.addresses` entry whose type comes first in
//! `--discovery-node-address-types` (default `ExternalIP`; `ExternalIP,InternalIP` for bare-metal
//! clusters whose nodes only report internal addresses that are public).
//!
//! The reads this needs, and no more: `get` on services and `list` on
//! `discovery.k8s.io/endpointslices` in the namespace, `get` on nodes (cluster-wide).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::config::FieldErrors;

/// How addresses are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiscoveryMode {
    /// From the process's flags (outside a cluster, or when the operator knows the addresses).
    #[default]
    Static,
    /// From the Kubernetes API (the process runs in a pod with a service account).
    Kubernetes,
}

/// The discovery flags, each also read from its `QP_*` variable. Flatten into a binary's clap
/// struct with `#[command(flatten)]`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DiscoveryArgs {
    /// How advertised and partner addresses are found: `static` (from flags) or `kubernetes`
    /// (from this pod's Service and nodes, through the Kubernetes API). [default: static]
    #[arg(long, env = "QP_DISCOVERY", value_name = "static|kubernetes")]
    pub discovery: Option<String>,

    /// Namespace of the Services to read. [default: the pod's own namespace]
    #[arg(long, env = "QP_DISCOVERY_NAMESPACE", value_name = "NAMESPACE")]
    pub discovery_namespace: Option<String>,

    /// The Service that exposes this process to peers; its address is the one to advertise.
    #[arg(long, env = "QP_DISCOVERY_SERVICE", value_name = "NAME")]
    pub discovery_service: Option<String>,

    /// The Service of this process's partner (stun-a's is stun-b's and the reverse).
    #[arg(long, env = "QP_DISCOVERY_PARTNER_SERVICE", value_name = "NAME")]
    pub discovery_partner_service: Option<String>,

    /// The node this pod runs on (downward API `spec.nodeName`); its address is used for node-port
    /// and hostNetwork exposure.
    #[arg(long, env = "QP_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// Node address types to advertise, in order of preference. [default: ExternalIP]
    #[arg(long, env = "QP_DISCOVERY_NODE_ADDRESS_TYPES", value_name = "TYPE,...")]
    pub discovery_node_address_types: Option<String>,

    /// How long to wait at start for a load balancer's address or a ready partner, in seconds.
    /// [default: 300]
    #[arg(long, env = "QP_DISCOVERY_WAIT_S", value_name = "SECONDS")]
    pub discovery_wait_s: Option<String>,
}

/// The node address types a Node's `status.addresses` may carry.
const NODE_ADDRESS_TYPES: [&str; 5] = [
    "ExternalIP",
    "InternalIP",
    "ExternalDNS",
    "InternalDNS",
    "Hostname",
];

/// The checked discovery settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Static or Kubernetes.
    pub mode: DiscoveryMode,
    /// Namespace to read; `None` is the pod's own.
    pub namespace: Option<String>,
    /// This process's Service.
    pub service: Option<String>,
    /// The partner's Service.
    pub partner_service: Option<String>,
    /// This pod's node.
    pub node_name: Option<String>,
    /// Node address types to advertise, most preferred first.
    pub node_address_types: Vec<String>,
    /// How long to wait for pending addresses at start.
    pub wait: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            mode: DiscoveryMode::Static,
            namespace: None,
            service: None,
            partner_service: None,
            node_name: None,
            node_address_types: vec!["ExternalIP".to_owned()],
            wait: Duration::from_secs(300),
        }
    }
}

/// Whether `s` is a DNS-1123 label (Kubernetes object names of Services, namespaces).
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl DiscoveryArgs {
    /// Checks every flag, recording problems in `errs` (so they are reported with the binary's
    /// other flags), and returns the settings (meaningful only if `errs` stays empty).
    pub fn resolve(&self, errs: &mut FieldErrors) -> DiscoveryConfig {
        let defaults = DiscoveryConfig::default();
        let mode = errs.one_of(
            "--discovery / QP_DISCOVERY",
            self.discovery.as_deref(),
            &[
                ("static", DiscoveryMode::Static),
                ("kubernetes", DiscoveryMode::Kubernetes),
            ],
            DiscoveryMode::Static,
        );
        let name = |errs: &mut FieldErrors, field: &str, raw: &Option<String>| {
            let value = raw
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned);
            if let Some(v) = &value {
                errs.check(
                    field,
                    is_dns_label(v),
                    format!("{v:?} is not a Kubernetes name (lowercase letters, digits and '-')"),
                );
            }
            value
        };
        let namespace = name(
            errs,
            "--discovery-namespace / QP_DISCOVERY_NAMESPACE",
            &self.discovery_namespace,
        );
        let service = name(
            errs,
            "--discovery-service / QP_DISCOVERY_SERVICE",
            &self.discovery_service,
        );
        let partner_service = name(
            errs,
            "--discovery-partner-service / QP_DISCOVERY_PARTNER_SERVICE",
            &self.discovery_partner_service,
        );
        let node_name = self
            .node_name
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let types_name = "--discovery-node-address-types / QP_DISCOVERY_NODE_ADDRESS_TYPES";
        let node_address_types = match self.discovery_node_address_types.as_deref() {
            None => defaults.node_address_types,
            Some(raw) => {
                let mut types = Vec::new();
                for word in raw.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                    match NODE_ADDRESS_TYPES
                        .iter()
                        .find(|t| t.eq_ignore_ascii_case(word))
                    {
                        Some(t) => types.push((*t).to_owned()),
                        None => errs.push(
                            types_name,
                            format!("{word:?} is not one of: {}", NODE_ADDRESS_TYPES.join(", ")),
                        ),
                    }
                }
                errs.check(types_name, !types.is_empty(), "names no address type");
                types
            }
        };
        let wait_name = "--discovery-wait-s / QP_DISCOVERY_WAIT_S";
        let wait_s: u64 = errs.parse(wait_name, self.discovery_wait_s.as_deref(), 300);
        errs.check(
            wait_name,
            wait_s <= 3600,
            format!("{wait_s} must be at most 3600 seconds"),
        );
        if mode == DiscoveryMode::Kubernetes {
            errs.check(
                "--discovery-service / QP_DISCOVERY_SERVICE",
                service.is_some() || node_name.is_some(),
                "is required with --discovery kubernetes (or --node-name / QP_NODE_NAME for a \
                 hostNetwork pod without a Service)",
            );
            #[cfg(not(feature = "kubernetes"))]
            errs.push(
                "--discovery / QP_DISCOVERY",
                "kubernetes: this binary was built without the `kubernetes` feature".to_owned(),
            );
        }
        DiscoveryConfig {
            mode,
            namespace,
            service,
            partner_service,
            node_name,
            node_address_types,
            wait: Duration::from_secs(wait_s),
        }
    }
}

/// How an [`ExternalAddress`] was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressSource {
    /// The Service's load-balancer ingress.
    LoadBalancer,
    /// The Service's `spec.externalIPs`.
    ExternalIp,
    /// A node's address with the Service's node ports.
    NodePort {
        /// The node.
        node: String,
    },
    /// A node's address with the ports of a `hostNetwork` pod.
    HostNetwork {
        /// The node.
        node: String,
    },
}

/// The pod behind a node-bound address (the first ready endpoint of the Service, or the one on the
/// asking process's node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The pod's IP (for a `hostNetwork` pod, the node's cluster-internal IP): where its internal
    /// listeners (gRPC control) are reached.
    pub pod_ip: IpAddr,
    /// The pod's ports by name, as the EndpointSlice lists them.
    pub ports: BTreeMap<String, u16>,
}

/// Where a Service is reached from outside the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalAddress {
    /// The IP peers send to.
    pub ip: IpAddr,
    /// The externally reachable port of each named Service port.
    pub ports: BTreeMap<String, u16>,
    /// Where the IP came from.
    pub source: AddressSource,
    /// The pod behind a node-bound address, when one was looked up.
    pub backend: Option<Backend>,
}

impl ExternalAddress {
    /// The external port of the Service port named `name`.
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports.get(name).copied()
    }
}

/// Why discovery found no address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// No in-cluster configuration (service account token, `KUBERNETES_SERVICE_HOST`).
    #[error("not running in a Kubernetes pod with a service account: {0}")]
    NotInCluster(String),
    /// Kubernetes discovery was asked for without naming this process's Service.
    #[error("--discovery-service / QP_DISCOVERY_SERVICE is required with --discovery kubernetes")]
    NoService,
    /// The API server refused or failed a read.
    #[error("cannot read {what} from the Kubernetes API: {source}")]
    Api {
        /// What was read, e.g. `service quickp2p/stun-a`.
        what: String,
        /// The HTTP status the API server answered with, when it answered (404: no such object,
        /// 403: the service account may not read it).
        status: Option<u16>,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A load balancer has no address yet.
    #[error("service {service}: the load balancer has no address yet")]
    Pending {
        /// The Service.
        service: String,
    },
    /// A node-bound Service has no ready endpoint to take the node from.
    #[error("service {service}: no ready endpoint yet")]
    NoReadyEndpoint {
        /// The Service.
        service: String,
    },
    /// A node has none of the wanted address types.
    #[error("node {node} has no address of type {wanted} (it has: {has})")]
    NoNodeAddress {
        /// The node.
        node: String,
        /// The wanted types.
        wanted: String,
        /// What it has.
        has: String,
    },
    /// A load balancer's host name did not resolve.
    #[error("service {service}: the load balancer's host name {hostname} does not resolve")]
    Unresolvable {
        /// The Service.
        service: String,
        /// The host name.
        hostname: String,
    },
    /// A ClusterIP Service whose endpoints are not `hostNetwork` pods: nothing outside the
    /// cluster reaches it.
    #[error(
        "service {service} is not exposed: it is a {kind} Service with no load balancer, \
         external IP or node port, and its endpoints are not hostNetwork pods"
    )]
    NotExposed {
        /// The Service.
        service: String,
        /// Its type.
        kind: String,
    },
    /// An address or port in an API object that is not one.
    #[error("{what}: {value:?} is not valid")]
    Invalid {
        /// Where it was.
        what: String,
        /// The value.
        value: String,
    },
}

impl DiscoveryError {
    /// Whether waiting may cure it (a load balancer being provisioned, a partner starting, an API
    /// server restarting, a Service created by the same install a moment later).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DiscoveryError::Pending { .. }
                | DiscoveryError::NoReadyEndpoint { .. }
                | DiscoveryError::Unresolvable { .. }
        ) || matches!(self, DiscoveryError::Api { status, .. } if !matches!(status, Some(400 | 401 | 403 | 405 | 422)))
    }
}

#[cfg(feature = "kubernetes")]
pub use self::kube_api::KubeDiscovery;

#[cfg(test)]
mod tests;

#[cfg(feature = "kubernetes")]
mod kube_api {
    use std::collections::BTreeMap;
    use std::net::IpAddr;
    use std::time::Duration;

    use k8s_openapi::api::core::v1::{Node, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, ListParams};

    use super::{AddressSource, Backend, DiscoveryConfig, DiscoveryError, ExternalAddress};

    /// Reads Services, EndpointSlices and Nodes to find external addresses. Holds a client and
    /// the namespace; every call is a fresh read (discovery runs at start, not per request).
    #[derive(Clone)]
    pub struct KubeDiscovery {
        client: kube::Client,
        namespace: String,
        node_address_types: Vec<String>,
        poll_interval: Duration,
    }

    impl std::fmt::Debug for KubeDiscovery {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("KubeDiscovery")
                .field("namespace", &self.namespace)
                .field("node_address_types", &self.node_address_types)
                .finish_non_exhaustive()
        }
    }

    impl KubeDiscovery {
        /// A client from the pod's service account (`KUBERNETES_SERVICE_HOST`, the mounted token
        /// and CA), reading `config.namespace` or else the pod's own namespace.
        pub fn in_cluster(config: &DiscoveryConfig) -> Result<KubeDiscovery, DiscoveryError> {
            // kube's TLS is rustls with ring, which needs the process-wide provider; installing
            // it twice is harmless.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let kube_config = kube::Config::incluster()
                .map_err(|e| DiscoveryError::NotInCluster(e.to_string()))?;
            let namespace = config
                .namespace
                .clone()
                .unwrap_or_else(|| kube_config.default_namespace.clone());
            let client = kube::Client::try_from(kube_config)
                .map_err(|e| DiscoveryError::NotInCluster(e.to_string()))?;
            Ok(KubeDiscovery::new(client, namespace)
                .with_node_address_types(&config.node_address_types))
        }

        /// Discovery through `client` (any `kube::Client`: a test's fake API server too), reading
        /// Services in `namespace`, advertising nodes' `ExternalIP`s.
        pub fn new(client: kube::Client, namespace: impl Into<String>) -> KubeDiscovery {
            KubeDiscovery {
                client,
                namespace: namespace.into(),
                node_address_types: vec!["ExternalIP".to_owned()],
                poll_interval: Duration::from_secs(2),
            }
        }

        /// Node address types to advertise, most preferred first.
        pub fn with_node_address_types(mut self, types: &[String]) -> KubeDiscovery {
            self.node_address_types = types.to_vec();
            self
        }

        /// How often [`wait_service_address`](Self::wait_service_address) asks again (2 s).
        pub fn with_poll_interval(mut self, every: Duration) -> KubeDiscovery {
            self.poll_interval = every;
            self
        }

        /// The namespace read.
        pub fn namespace(&self) -> &str {
            &self.namespace
        }

        /// Where `service` is reached from outside (see the module documentation for the rules).
        /// `own_node` is the asking pod's node when `service` is its own Service: node-bound
        /// answers then use that node, whose endpoint is not ready yet while the pod starts.
        pub async fn service_address(
            &self,
            service: &str,
            own_node: Option<&str>,
        ) -> Result<ExternalAddress, DiscoveryError> {
            let what = format!("service {}/{service}", self.namespace);
            let svc = Api::<Service>::namespaced(self.client.clone(), &self.namespace)
                .get(service)
                .await
                .map_err(|e| api_error(&what, e))?;
            let spec = svc.spec.unwrap_or_default();
            let kind = spec.type_.clone().unwrap_or_else(|| "ClusterIP".to_owned());
            let svc_ports = spec.ports.clone().unwrap_or_default();
            let named = |pick: fn(&k8s_openapi::api::core::v1::ServicePort) -> Option<i32>| {
                svc_ports
                    .iter()
                    .filter_map(|p| {
                        let port = u16::try_from(pick(p)?).ok()?;
                        Some((p.name.clone().unwrap_or_default(), port))
                    })
                    .collect::<BTreeMap<String, u16>>()
            };

            let ingress = svc
                .status
                .and_then(|s| s.load_balancer)
                .and_then(|lb| lb.ingress)
                .unwrap_or_default();
            if let Some(first) = ingress.first() {
                let ip = match (&first.ip, &first.hostname) {
                    (Some(ip), _) => parse_ip(&format!("{what} load-balancer ingress"), ip)?,
                    (None, Some(host)) => resolve(service, host).await?,
                    (None, None) => {
                        return Err(DiscoveryError::Pending {
                            service: service.to_owned(),
                        });
                    }
                };
                return Ok(ExternalAddress {
                    ip,
                    ports: named(|p| Some(p.port)),
                    source: AddressSource::LoadBalancer,
                    backend: None,
                });
            }
            if let Some(ip) = spec.external_ips.as_ref().and_then(|ips| ips.first()) {
                return Ok(ExternalAddress {
                    ip: parse_ip(&format!("{what} externalIPs"), ip)?,
                    ports: named(|p| Some(p.port)),
                    source: AddressSource::ExternalIp,
                    backend: None,
                });
            }
            if kind == "LoadBalancer" {
                return Err(DiscoveryError::Pending {
                    service: service.to_owned(),
                });
            }
            if kind == "ExternalName" {
                return Err(DiscoveryError::NotExposed {
                    service: service.to_owned(),
                    kind,
                });
            }

            // Node-bound: a node's address, with node ports or the hostNetwork pod's own ports.
            let backend = self.backend(service, own_node).await?;
            let node = match (own_node, &backend) {
                (Some(n), _) => n.to_owned(),
                (None, Some((_, node))) => node.clone(),
                (None, None) => {
                    return Err(DiscoveryError::NoReadyEndpoint {
                        service: service.to_owned(),
                    });
                }
            };
            let (node_ip, node_ips) = self.node_address(&node).await?;
            let backend = backend.map(|(b, _)| b);
            if kind == "NodePort" {
                return Ok(ExternalAddress {
                    ip: node_ip,
                    ports: named(|p| p.node_port),
                    source: AddressSource::NodePort { node },
                    backend,
                });
            }
            // ClusterIP or headless: reachable from outside only when its pods are on the host
            // network (the endpoint's address is one of the node's). The asking pod's own
            // endpoint may not be listed yet: then it vouches for itself.
            let host_network = match &backend {
                Some(b) => node_ips.contains(&b.pod_ip),
                None => own_node.is_some(),
            };
            if !host_network {
                return Err(DiscoveryError::NotExposed {
                    service: service.to_owned(),
                    kind,
                });
            }
            let ports = match &backend {
                Some(b) => b.ports.clone(),
                None => named(|p| match &p.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                        Some(*n)
                    }
                    _ => Some(p.port),
                }),
            };
            Ok(ExternalAddress {
                ip: node_ip,
                ports,
                source: AddressSource::HostNetwork { node },
                backend,
            })
        }

        /// This process's own external address: the Service named by `--discovery-service`
        /// (node-bound addresses on `--node-name`), waiting up to `--discovery-wait-s`. Every role
        /// that advertises an address starts with this.
        pub async fn own_address(
            &self,
            config: &DiscoveryConfig,
        ) -> Result<ExternalAddress, DiscoveryError> {
            let service = config.service.as_deref().ok_or(DiscoveryError::NoService)?;
            self.wait_service_address(service, config.node_name.as_deref(), config.wait)
                .await
        }

        /// [`service_address`](Self::service_address), asked again every poll interval while the
        /// answer is [transient](DiscoveryError::is_transient), for at most `wait`.
        pub async fn wait_service_address(
            &self,
            service: &str,
            own_node: Option<&str>,
            wait: Duration,
        ) -> Result<ExternalAddress, DiscoveryError> {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                match self.service_address(service, own_node).await {
                    Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                        tracing::info!(error = %e, "waiting for the address of service {service}");
                        tokio::time::sleep(self.poll_interval).await;
                    }
                    other => return other,
                }
            }
        }

        /// The preferred external address of `node` and all its IP addresses.
        pub async fn node_address(
            &self,
            node: &str,
        ) -> Result<(IpAddr, Vec<IpAddr>), DiscoveryError> {
            let what = format!("node {node}");
            let n = Api::<Node>::all(self.client.clone())
                .get(node)
                .await
                .map_err(|e| api_error(&what, e))?;
            let addresses = n.status.and_then(|s| s.addresses).unwrap_or_default();
            let all: Vec<IpAddr> = addresses
                .iter()
                .filter_map(|a| a.address.parse().ok())
                .collect();
            for wanted in &self.node_address_types {
                if let Some(a) = addresses.iter().find(|a| &a.type_ == wanted) {
                    return Ok((parse_ip(&format!("{what} {wanted}"), &a.address)?, all));
                }
            }
            Err(DiscoveryError::NoNodeAddress {
                node: node.to_owned(),
                wanted: self.node_address_types.join(" or "),
                has: if addresses.is_empty() {
                    "none".to_owned()
                } else {
                    addresses
                        .iter()
                        .map(|a| format!("{} {}", a.type_, a.address))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
        }

        /// The endpoint behind `service` and its node: the one on `own_node` when given (ready
        /// or not: the asking pod itself), else the first ready one by node name and address.
        async fn backend(
            &self,
            service: &str,
            own_node: Option<&str>,
        ) -> Result<Option<(Backend, String)>, DiscoveryError> {
            let what = format!("endpointslices of service {}/{service}", self.namespace);
            let slices = Api::<EndpointSlice>::namespaced(self.client.clone(), &self.namespace)
                .list(
                    &ListParams::default().labels(&format!("kubernetes.io/service-name={service}")),
                )
                .await
                .map_err(|e| api_error(&what, e))?;
            let mut candidates: Vec<(String, IpAddr, BTreeMap<String, u16>)> = Vec::new();
            for slice in slices.items {
                let ports: BTreeMap<String, u16> = slice
                    .ports
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| {
                        Some((p.name.unwrap_or_default(), u16::try_from(p.port?).ok()?))
                    })
                    .collect();
                for endpoint in slice.endpoints {
                    let Some(node) = endpoint.node_name.clone() else {
                        continue;
                    };
                    let ready = endpoint
                        .conditions
                        .as_ref()
                        .and_then(|c| c.ready)
                        .unwrap_or(true);
                    let wanted = match own_node {
                        Some(own) => node == own,
                        None => ready,
                    };
                    if !wanted {
                        continue;
                    }
                    if let Some(ip) = endpoint.addresses.iter().find_map(|a| a.parse().ok()) {
                        candidates.push((node, ip, ports.clone()));
                    }
                }
            }
            candidates.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
            Ok(candidates
                .into_iter()
                .next()
                .map(|(node, pod_ip, ports)| (Backend { pod_ip, ports }, node)))
        }
    }

    fn api_error(what: &str, source: kube::Error) -> DiscoveryError {
        let status = match &source {
            kube::Error::Api(s) => Some(s.code),
            _ => None,
        };
        DiscoveryError::Api {
            what: what.to_owned(),
            status,
            source: Box::new(source),
        }
    }

    fn parse_ip(what: &str, value: &str) -> Result<IpAddr, DiscoveryError> {
        value.trim().parse().map_err(|_| DiscoveryError::Invalid {
            what: what.to_owned(),
            value: value.to_owned(),
        })
    }

    /// A load balancer known by host name (AWS ELB/NLB): its first IPv4 address, else its first.
    async fn resolve(service: &str, host: &str) -> Result<IpAddr, DiscoveryError> {
        let unresolvable = || DiscoveryError::Unresolvable {
            service: service.to_owned(),
            hostname: host.to_owned(),
        };
        let found: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|_| unresolvable())?
            .map(|a| a.ip())
            .collect();
        found
            .iter()
            .find(|ip| ip.is_ipv4())
            .or(found.first())
            .copied()
            .ok_or_else(unresolvable)
    }
}
