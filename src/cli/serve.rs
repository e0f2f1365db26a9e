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
        // The handlers are installed before the gateway says it listens: a SIGTERM that
        // follows the "listening" line at once must drain, not kill.
        let signals = Signals::install();
        tokio::spawn(async move {
            signals.wait().await;
            tracing::info!("shutdown signal received; draining");
            trigger.cancel();
        });
        app.run(shutdown)
            .await
            .map_err(|e| CliError::Runtime(format!("{e:#}")))
    })
}

/// SIGINT and SIGTERM, listened for from the moment they are installed.
struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(int), Ok(term)) => Signals {
                    streams: Some((int, term)),
                },
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot listen for SIGINT/SIGTERM; falling back to Ctrl-C");
                    Signals { streams: None }
                }
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    async fn wait(self) {
        #[cfg(unix)]
        if let Some((mut int, mut term)) = self.streams {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
