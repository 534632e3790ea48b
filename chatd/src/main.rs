use anyhow::Context;
use chatd::config::Command;
use chatd::{App, Settings};
use clap::Parser;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
            // One descriptor per connection: use all the process may have.
            match rlimit::increase_nofile_limit(u64::MAX) {
                Ok(n) => tracing::info!(limit = n, "open files limit"),
                Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
            }
            let app = App::build(settings).await?.with_alerts(alerts);
            app.run_until_stopped(shutdown_signal()).await
        }
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
