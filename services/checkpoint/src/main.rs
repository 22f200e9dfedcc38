//! `quickp2p-checkpoint`: serve the Checkpoint gRPC service, or manage applications in the store.

use anyhow::Context as _;
use clap::Parser as _;
use quickp2p_checkpoint::apps::Apps;
use quickp2p_checkpoint::{AppCommand, Args, Checkpoint, CheckpointService, Command, Config};
use quickp2p_service_kit::config::{ServiceConfig, StoreTarget};
use quickp2p_service_kit::{OpsServer, Readiness, shutdown, telemetry};
use quickp2p_store::{RedisConfig, Store};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let (service, config) = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quickp2p-checkpoint: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = match args.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let _telemetry = match telemetry::init(&service) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("quickp2p-checkpoint: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            serve(service, config).await
        }
        Command::App(command) => manage(&service, command).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickp2p-checkpoint: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn open_store(service: &ServiceConfig) -> anyhow::Result<Store> {
    match &service.store {
        StoreTarget::Embedded => anyhow::bail!("--redis / QP_REDIS_URL is required"),
        StoreTarget::Redis { url, key_prefix } => {
            Store::redis(RedisConfig::new(url.clone()).with_key_prefix(key_prefix.clone()))
                .await
                .with_context(|| format!("cannot use Redis at {url}"))
        }
    }
}

async fn serve(service: ServiceConfig, config: Config) -> anyhow::Result<()> {
    let stop = shutdown::on_signal();
    let store = open_store(&service).await?;
    let readiness = Readiness::new();
    readiness.watch_store("store", store.clone());
    let ops = OpsServer::bind(service.http_addr, readiness.clone())
        .await
        .with_context(|| format!("cannot bind the ops HTTP server on {}", service.http_addr))?;
    let ops_addr = ops.local_addr()?;
    let checkpoint = Checkpoint::bind(config.clone(), store)
        .await?
        .with_readiness(&readiness);
    println!(
        "quickp2p-checkpoint {version} (replica {replica})\n\
         \x20 grpc       {grpc}\n\
         \x20 sessions   ttl {ttl} ms, heartbeat every {hb} ms\n\
         \x20 ops        http://{ops_addr}   (/healthz /readyz /metrics)",
        version = env!("CARGO_PKG_VERSION"),
        replica = service.replica_id,
        grpc = checkpoint.addresses().grpc,
        ttl = config.session_ttl.as_millis(),
        hb = config.heartbeat_interval.as_millis(),
    );
    let ops_task = tokio::spawn(ops.run(stop.clone()));
    let result = checkpoint.run(stop.clone()).await;
    stop.cancel();
    let _ = ops_task.await;
    result.context("checkpoint failed")
}

async fn manage(service: &ServiceConfig, command: AppCommand) -> anyhow::Result<()> {
    let store = open_store(service).await?;
    let apps = Apps::new(store.clone());
    match command {
        AppCommand::Create { id, name } => {
            let (app, secret) = apps.create(id.as_deref().unwrap_or(""), &name, "").await?;
            println!(
                "application {}\nsecret id   {}\nsecret      {}\n(the secret is shown only now)",
                app.record.id, secret.secret_id, secret.secret
            );
        }
        AppCommand::List { all } => {
            let mut cursor = None;
            loop {
                let (page, next) = apps.list(cursor, 500, all).await?;
                for app in page {
                    let active: Vec<&str> = app.secrets.active().map(|s| s.id.as_str()).collect();
                    println!(
                        "{}\t{}\tsecrets: {}\t{}",
                        app.record.id,
                        if app.is_active() { "active" } else { "revoked" },
                        active.join(","),
                        app.record.display_name
                    );
                }
                match next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
        }
        AppCommand::Revoke { id } => {
            let revoked = CheckpointService::new(store, Config::default())
                .revoke_application(quickp2p_proto::v1::RevokeApplicationRequest {
                    id: Some(quickp2p_proto::v1::AppId::new(id.clone())),
                    reason: "revoked with quickp2p-checkpoint app revoke".into(),
                })
                .await?;
            println!(
                "application {id} revoked: logins refused, {} sessions ended (their peers are told at their next heartbeat)",
                revoked.sessions_ended
            );
        }
        AppCommand::SecretCreate { id, label } => {
            let secret = apps.create_secret(&id, &label).await?;
            println!(
                "secret id   {}\nsecret      {}\n(the secret is shown only now)",
                secret.secret_id, secret.secret
            );
        }
        AppCommand::SecretRevoke { id, secret_id } => {
            apps.revoke_secret(&id, &secret_id).await?;
            println!("secret {secret_id} of {id} revoked");
        }
    }
    Ok(())
}
