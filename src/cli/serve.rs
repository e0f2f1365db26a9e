//! `cognihook serve`: run the gateway until SIGINT/SIGTERM.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::CliError;
use crate::app::App;
use crate::app::Wiring;
use crate::config::{self, Config, ProcessEnv};

#[derive(Debug, clap::Args)]
pub(super) struct ServeArgs {
    /// Add the simulator endpoints (`POST /simulate`, `POST /simulate/<route path>`).
    #[arg(long)]
    simulator: bool,
}

pub(super) fn run(file: Option<&Path>, args: ServeArgs) -> Result<(), CliError> {
    crate::telemetry::init_logging();
    let mut config = Config::load(file, &ProcessEnv).map_err(|e| CliError::Usage(e.to_string()))?;
    if args.simulator {
        config.server.simulator = true;
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(CliError::Usage(config::ConfigErrors(problems).to_string()));
        }
    }
    let wiring = Wiring::build(&config, &ProcessEnv)
        .map_err(|p| CliError::Usage(config::ConfigErrors(p).to_string()))?;
    let rt = super::runtime()?;
    rt.block_on(async move {
        let app = App::build(config, wiring)
            .await
            .map_err(|e| CliError::Runtime(format!("{e:#}")))?;
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received; draining");
            trigger.cancel();
        });
        app.run(shutdown)
            .await
            .map_err(|e| CliError::Runtime(format!("{e:#}")))
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the gateway");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
