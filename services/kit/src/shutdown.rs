//! Graceful shutdown.
//!
//! Every `run` function in quickP2P takes a [`Shutdown`] token. `main` cancels it when SIGTERM or
//! SIGINT arrives ([`signal`]); tests cancel it directly. Tasks select on
//! [`Shutdown::cancelled`] and finish their in-flight work before returning.

use tokio_util::sync::CancellationToken;

/// The drain token shared by every task of a process. Cheap to clone; cancelling any clone
/// cancels all of them.
pub type Shutdown = CancellationToken;

/// Resolves when the process receives SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C).
///
/// If a signal handler cannot be installed, the failure is logged and the future waits on the
/// other signal only; it never resolves spuriously.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                    _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
                }
            }
            (Err(e), Ok(mut int)) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                int.recv().await;
            }
            (Ok(mut term), Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for SIGINT");
                term.recv().await;
            }
            (Err(a), Err(b)) => {
                tracing::error!(sigterm = %a, sigint = %b, "cannot listen for any signal");
                std::future::pending::<()>().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A [`Shutdown`] token that is cancelled when [`signal`] resolves.
pub fn on_signal() -> Shutdown {
    let token = Shutdown::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        signal().await;
        trigger.cancel();
    });
    token
}
