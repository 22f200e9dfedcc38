//! `quickp2p-supernode`: read config, bind, run until SIGTERM/SIGINT.

use clap::Parser as _;
use quickp2p_service_kit::{shutdown, telemetry};
use quickp2p_supernode::{Args, Supernode};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match Args::parse().resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quickp2p-supernode: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _telemetry = match telemetry::init(&config.service) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("quickp2p-supernode: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match serve(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("quickp2p-supernode: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: quickp2p_supernode::Config) -> anyhow::Result<()> {
    let stop = shutdown::on_signal();
    let node = Supernode::bind(config).await?;
    println!("{}", node.banner()?);
    node.run(stop).await
}
