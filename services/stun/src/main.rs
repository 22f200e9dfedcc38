//! `quickp2p-stun`: read flags, bind, print where it listens, run until SIGTERM/SIGINT.

use anyhow::Context as _;
use clap::Parser as _;
use quickp2p_service_kit::config::ServiceConfig;
use quickp2p_service_kit::{OpsServer, Readiness, shutdown, telemetry};
use quickp2p_stun::{Args, Config, Stun};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let (service, config) = match Args::parse().resolve() {
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
    match serve(service, config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("quickp2p-stun: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
