//! `quickp2p-gateway`: read flags, bind, print where it listens (and the certificate
//! fingerprint peers pin), run until SIGTERM/SIGINT.

use anyhow::Context as _;
use clap::Parser as _;
use quickp2p_gateway::{Args, Config, Gateway};
use quickp2p_service_kit::config::{ServiceConfig, StoreTarget};
use quickp2p_service_kit::{OpsServer, Readiness, shutdown, telemetry};
use quickp2p_store::{RedisConfig, Store};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let (service, config) = match Args::parse().resolve() {
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
    match serve(service, config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("quickp2p-gateway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
         \x20 quic        {quic}   (ALPN quickp2p/1)\n\
         \x20 fingerprint sha256:{fp}\n\
         \x20 deliver     {grpc}   (advertised {adv})\n\
         \x20 checkpoint  {checkpoint_url}\n\
         \x20 ops         http://{ops_addr}   (/healthz /readyz /metrics)",
        version = env!("CARGO_PKG_VERSION"),
        id = gateway.gateway_id(),
        quic = a.quic,
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
