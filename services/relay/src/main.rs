//! `quickp2p-relay`: read flags (and, with `--discovery kubernetes`, the relay's Service
//! address), open the store, bind, print where it listens, run until SIGTERM/SIGINT.

use anyhow::Context as _;
use clap::Parser as _;
use quickp2p_relay::{Args, Config, Relay};
use quickp2p_service_kit::config::{ServiceConfig, StoreTarget};
use quickp2p_service_kit::discovery::{DiscoveryConfig, DiscoveryMode, KubeDiscovery};
use quickp2p_service_kit::{OpsServer, Readiness, shutdown, telemetry};
use quickp2p_store::{RedisConfig, Store};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let (service, mut config, discovery) = match Args::parse().resolve_with_discovery() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quickp2p-relay: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let _telemetry = match telemetry::init(&service) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("quickp2p-relay: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if discovery.mode == DiscoveryMode::Kubernetes
        && config.needs_discovery()
        && let Err(e) = discover(&mut config, &discovery).await
    {
        tracing::error!("{e:#}");
        eprintln!("quickp2p-relay: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    match serve(service, config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("quickp2p-relay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Completes `config` from the Kubernetes API: the relay's Service address (waiting up to
/// `--discovery-wait-s` for a load balancer) becomes the advertised TURN address and the
/// XOR-RELAYED-ADDRESS IP, where those were not given explicitly.
async fn discover(config: &mut Config, discovery: &DiscoveryConfig) -> anyhow::Result<()> {
    let kube = KubeDiscovery::in_cluster(discovery)?;
    let found = kube
        .own_address(discovery)
        .await
        .context("cannot find the relay's address")?;
    config
        .apply_discovered(&found)
        .map_err(anyhow::Error::msg)?;
    tracing::info!(
        advertised = %config.advertised, relay_advertised_ip = %config.relay_advertised_ip,
        source = ?found.source,
        "addresses discovered in namespace {}", kube.namespace()
    );
    Ok(())
}

async fn serve(service: ServiceConfig, config: Config) -> anyhow::Result<()> {
    let stop = shutdown::on_signal();
    let store = match &service.store {
        StoreTarget::Embedded => Store::embedded(),
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
    let relay = Relay::bind(config, store).await?.with_readiness(&readiness);
    let a = relay.addresses();
    let c = relay.config();
    println!(
        "quickp2p-relay {version} (replica {replica})\n\
         \x20 turn       {turn}   (advertised {advertised}, realm {realm})\n\
         \x20 relayed    {relay_ip} ports {low}-{high}   (advertised {relay_adv})\n\
         \x20 control    {control}\n\
         \x20 ops        http://{ops_addr}   (/healthz /readyz /metrics)",
        version = env!("CARGO_PKG_VERSION"),
        replica = c.relay_id,
        turn = a.turn,
        advertised = a.advertised,
        realm = c.realm,
        relay_ip = c.relay_ip,
        low = c.port_range.0,
        high = c.port_range.1,
        relay_adv = c.relay_advertised_ip,
        control = a.control,
    );
    let ops_task = tokio::spawn(ops.run(stop.clone()));
    let result = relay.run(stop.clone()).await;
    stop.cancel();
    match ops_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "ops server failed"),
        Err(e) => tracing::warn!(error = %e, "ops server task failed"),
    }
    result.context("relay failed")
}
