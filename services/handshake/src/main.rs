//! `quickp2p-handshake`: serve the Handshake gRPC service.

use anyhow::Context as _;
use clap::Parser as _;
use quickp2p_handshake::{Args, Config, Handshake};
use quickp2p_service_kit::config::{ServiceConfig, StoreTarget};
use quickp2p_service_kit::{OpsServer, Readiness, shutdown, telemetry};
use quickp2p_store::{RedisConfig, Store};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let (service, config) = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quickp2p-handshake: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let _telemetry = match telemetry::init(&service) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("quickp2p-handshake: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match serve(service, config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickp2p-handshake: {e:#}");
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
    let relay = if config.relay_shared_secret.is_some() {
        "grants minted"
    } else {
        "no shared secret: no grants"
    };
    let handshake = Handshake::bind(config.clone(), store, &service.replica_id)
        .await?
        .with_readiness(&readiness);
    println!(
        "quickp2p-handshake {version} (replica {replica})\n\
         \x20 grpc       {grpc}\n\
         \x20 offers     answer within {answer} ms, negotiation ttl {ttl} ms\n\
         \x20 relay      {relay}\n\
         \x20 ops        http://{ops_addr}   (/healthz /readyz /metrics)",
        version = env!("CARGO_PKG_VERSION"),
        replica = service.replica_id,
        grpc = handshake.addresses().grpc,
        answer = config.answer_timeout.as_millis(),
        ttl = config.negotiation_ttl.as_millis(),
    );
    let ops_task = tokio::spawn(ops.run(stop.clone()));
    let result = handshake.run(stop.clone()).await;
    stop.cancel();
    let _ = ops_task.await;
    result.context("handshake failed")
}
