//! `quickp2p-index`: serve the Index gRPC service.

use anyhow::Context as _;
use clap::Parser as _;
use quickp2p_index::{Args, Config, Index};
use quickp2p_service_kit::config::{ServiceConfig, StoreTarget};
use quickp2p_service_kit::{OpsServer, Readiness, shutdown, telemetry};
use quickp2p_store::{RedisConfig, Store};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let (service, config) = match Args::parse().resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quickp2p-index: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let _telemetry = match telemetry::init(&service) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("quickp2p-index: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match serve(service, config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickp2p-index: {e:#}");
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
    let index = Index::bind(config, store).await?.with_readiness(&readiness);
    println!(
        "quickp2p-index {version} (replica {replica})\n\
         \x20 grpc       {grpc}\n\
         \x20 limits     {attrs} attributes per peer, keys {key} bytes, values {value} bytes\n\
         \x20 ops        http://{ops_addr}   (/healthz /readyz /metrics)",
        version = env!("CARGO_PKG_VERSION"),
        replica = service.replica_id,
        grpc = index.addresses().grpc,
        attrs = config.limits.max_attributes,
        key = config.limits.max_key_bytes,
        value = config.limits.max_value_bytes,
    );
    let ops_task = tokio::spawn(ops.run(stop.clone()));
    let result = index.run(stop.clone()).await;
    stop.cancel();
    let _ = ops_task.await;
    result.context("index failed")
}
