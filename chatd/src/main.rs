use anyhow::Context;
use chatd::config::Command;
use chatd::{App, Settings};
use clap::Parser;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before anything is created: the event log, read models, search index and secret are
    // readable by chatd's user only.
    chatd::datadir::restrict_new_files();
    let settings = Settings::parse();
    let telemetry =
        observability::init(settings.telemetry.settings("chatd", settings.node_name())?)?;
    let result = run(settings, telemetry.alerts()).await;
    // Give the log shipper and the alert sender a moment to deliver the last lines.
    telemetry.shutdown(Duration::from_secs(5)).await;
    result
}

async fn run(settings: Settings, alerts: observability::Alerts) -> anyhow::Result<()> {
    match settings.command {
        Some(Command::Rebuild) => {
            chatd::app::rebuild(&settings)
                .await
                .context("rebuild failed")?;
            Ok(())
        }
        Some(Command::Serve) | None => {
            let shutdown = shutdown_signal();
            // One descriptor per connection: use all the process may have.
            match rlimit::increase_nofile_limit(u64::MAX) {
                Ok(n) => tracing::info!(limit = n, "open files limit"),
                Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
            }
            let app = App::build(settings).await?.with_alerts(alerts);
            app.run_until_stopped(shutdown).await
        }
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed here, before the server
/// listens: a signal that arrives once `/readyz` answers is never the default (fatal) one.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "cannot listen for SIGINT and SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}
