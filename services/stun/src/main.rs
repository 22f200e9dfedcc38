//! `quickp2p-stun`: read flags (and, with `--discovery kubernetes`, the member's and its
//! partner's Service addresses), bind, print where it listens, run until SIGTERM/SIGINT.

use anyhow::Context as _;
use clap::Parser as _;
use quickp2p_service_kit::config::ServiceConfig;
use quickp2p_service_kit::discovery::{DiscoveryConfig, DiscoveryMode, KubeDiscovery};
use quickp2p_service_kit::{OpsServer, Readiness, shutdown, telemetry};
use quickp2p_stun::{Args, Config, Stun};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let (service, mut config, discovery) = match Args::parse().resolve_with_discovery() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quickp2p-stun: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let _telemetry = match telemetry::init(&service) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("quickp2p-stun: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if discovery.mode == DiscoveryMode::Kubernetes
        && let Err(e) = discover(&mut config, &discovery).await
    {
        tracing::error!("{e:#}");
        eprintln!("quickp2p-stun: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    match serve(service, config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("quickp2p-stun: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Completes `config` from the Kubernetes API: this member's Service address and, when it has a
/// partner, the partner's (waiting up to `--discovery-wait-s` for load balancers and pods).
async fn discover(config: &mut Config, discovery: &DiscoveryConfig) -> anyhow::Result<()> {
    let kube = KubeDiscovery::in_cluster(discovery)?;
    let own = kube
        .own_address(discovery)
        .await
        .context("cannot find this member's address")?;
    let partner = match (&config.partner, &discovery.partner_service) {
        (Some(_), Some(partner)) => Some(
            kube.wait_service_address(partner, None, discovery.wait)
                .await
                .with_context(|| {
                    format!("cannot find the partner's address (service {partner})")
                })?,
        ),
        _ => None,
    };
    config
        .apply_discovered(&own, partner.as_ref())
        .map_err(anyhow::Error::msg)?;
    tracing::info!(
        advertised = %config.advertised_ip, source = ?own.source,
        partner = ?config.partner.as_ref().map(|p| (p.address, &p.control_url)),
        "addresses discovered in namespace {}", kube.namespace()
    );
    Ok(())
}

async fn serve(service: ServiceConfig, config: Config) -> anyhow::Result<()> {
    let stop = shutdown::on_signal();
    let readiness = Readiness::new();
    let ops = OpsServer::bind(service.http_addr, readiness.clone())
        .await
        .with_context(|| format!("cannot bind the ops HTTP server on {}", service.http_addr))?;
    let ops_addr = ops.local_addr()?;
    let stun = Stun::bind(config).await?.with_readiness(&readiness);
    let a = stun.addresses();
    let c = stun.config();
    let partner = match &c.partner {
        Some(p) => format!(
            "{} (alternate port {}, control {})",
            p.address, p.alternate_port, p.control_url
        ),
        None => "none (CHANGE-REQUEST is answered with 420)".to_owned(),
    };
    println!(
        "quickp2p-stun {version} member {member} (replica {replica})\n\
         \x20 primary    {primary}\n\
         \x20 alternate  {alternate}\n\
         \x20 control    {control}\n\
         \x20 partner    {partner}\n\
         \x20 rfc5780    {rfc5780}\n\
         \x20 ops        http://{ops_addr}   (/healthz /readyz /metrics)",
        version = env!("CARGO_PKG_VERSION"),
        member = c.member.as_str(),
        replica = c.server_id,
        primary = a.primary,
        alternate = a.alternate,
        control = a.control,
        rfc5780 = if c.rfc5780 { "on" } else { "off" },
    );
    let ops_task = tokio::spawn(ops.run(stop.clone()));
    let result = stun.run(stop.clone()).await;
    stop.cancel();
    match ops_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "ops server failed"),
        Err(e) => tracing::warn!(error = %e, "ops server task failed"),
    }
    result.context("STUN server failed")
}
