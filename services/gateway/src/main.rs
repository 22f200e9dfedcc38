//! `quickp2p-gateway`: read flags (and, with `--discovery kubernetes`, where peers reach the
//! gateway's Service), bind, print where it listens (and the certificate
//! fingerprint peers pin), run until SIGTERM/SIGINT.

use anyhow::Context as _;
use clap::Parser as _;
use quickp2p_gateway::{Args, Config, Gateway};
use quickp2p_service_kit::config::{ServiceConfig, StoreTarget};
use quickp2p_service_kit::discovery::{DiscoveryConfig, DiscoveryMode, KubeDiscovery};
use quickp2p_service_kit::{OpsServer, Readiness, shutdown, telemetry};
use quickp2p_store::{RedisConfig, Store};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let (service, mut config, discovery) = match Args::parse().resolve_with_discovery() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quickp2p-gateway: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _telemetry = match telemetry::init(&service) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("quickp2p-gateway: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if discovery.mode == DiscoveryMode::Kubernetes
        && config.advertised_quic.is_none()
        && let Err(e) = discover(&mut config, &discovery).await
    {
        tracing::error!("{e:#}");
        eprintln!("quickp2p-gateway: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    match serve(service, config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("quickp2p-gateway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Completes `config` from the Kubernetes API: the gateway's Service address (waiting up to
/// `--discovery-wait-s` for a load balancer) becomes the advertised QUIC address.
async fn discover(config: &mut Config, discovery: &DiscoveryConfig) -> anyhow::Result<()> {
    let kube = KubeDiscovery::in_cluster(discovery)?;
    let found = kube
        .own_address(discovery)
        .await
        .context("cannot find the gateway's address")?;
    config
        .apply_discovered(&found)
        .map_err(anyhow::Error::msg)?;
    tracing::info!(
        advertised_quic = ?config.advertised_quic, source = ?found.source,
        "address discovered in namespace {}", kube.namespace()
    );
    Ok(())
}

async fn serve(service: ServiceConfig, config: Config) -> anyhow::Result<()> {
    let stop = shutdown::on_signal();
    let store = match &service.store {
        StoreTarget::Embedded => anyhow::bail!("--redis / QP_REDIS_URL is required"),
        StoreTarget::Redis { url, key_prefix } => {
            Store::redis(RedisConfig::new(url.clone()).with_key_prefix(key_prefix.clone()))
                .await
                .with_context(|| format!("cannot use Redis at {url}"))?
        }
    };
    let readiness = Readiness::new();
    readiness.watch_store("store", store.clone());
    let ops = OpsServer::bind(service.http_addr, readiness.clone())
        .await
        .with_context(|| format!("cannot bind the ops HTTP server on {}", service.http_addr))?;
    let ops_addr = ops.local_addr()?;
    let checkpoint_url = config.checkpoint_url.clone();
    let gateway = Gateway::bind(config, store)?.with_readiness(&readiness);
    let a = gateway.addresses();
    println!(
        "quickp2p-gateway {version} (replica {id})\n\
         \x20 quic        {quic}   (advertised {adv_quic}, ALPN quickp2p/1)\n\
         \x20 fingerprint sha256:{fp}\n\
         \x20 deliver     {grpc}   (advertised {adv})\n\
         \x20 checkpoint  {checkpoint_url}\n\
         \x20 ops         http://{ops_addr}   (/healthz /readyz /metrics)",
        version = env!("CARGO_PKG_VERSION"),
        id = gateway.gateway_id(),
        quic = a.quic,
        adv_quic = a.advertised_quic,
        fp = gateway.fingerprint_hex(),
        grpc = a.grpc,
        adv = a.advertised_grpc,
    );
    let ops_task = tokio::spawn(ops.run(stop.clone()));
    let result = gateway.run(stop.clone()).await;
    stop.cancel();
    let _ = ops_task.await;
    result.context("gateway failed")
}
