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
    // Every problem at once: the configuration's own, then those its components find when
    // they are built (sink tables, route secrets and rules).
    let (config, mut problems) = Config::load_report(file, &ProcessEnv);
    let Some(mut config) = config else {
        return Err(CliError::Usage(config::ConfigErrors(problems).to_string()));
    };
    if args.simulator && !config.server.simulator {
        config.server.simulator = true;
        // Checked again with the simulator on (it refuses a non-loopback listener).
        for p in config.validate() {
            if !problems.contains(&p) {
                problems.push(p);
            }
        }
    }
    let wiring = Wiring::build(&config, &ProcessEnv);
    if let Err(p) = &wiring {
        problems.extend(p.iter().cloned());
    }
    let wiring = match wiring {
        Ok(w) if problems.is_empty() => w,
        _ => return Err(CliError::Usage(config::ConfigErrors(problems).to_string())),
    };
    let rt = super::runtime()?;
    rt.block_on(async move {
        let app = App::build(config, wiring)
            .await
            .map_err(|e| CliError::Runtime(format!("{e:#}")))?;
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        // The handlers are installed before the gateway says it listens: a SIGTERM that
        // follows the "listening" line at once must drain, not kill.
        let mut signals = Signals::install();
        let audit = app.state().audit.clone();
        tokio::spawn(async move {
            loop {
                match signals.next().await {
                    Signal::Stop => {
                        tracing::info!("shutdown signal received; draining");
                        trigger.cancel();
                        return;
                    }
                    Signal::Reopen => match audit.reopen() {
                        Ok(()) => tracing::info!("SIGHUP: the audit log was opened again"),
                        Err(e) => tracing::warn!(error = %e,
                            "SIGHUP: the audit log could not be opened again; writing on to \
                             the old file"),
                    },
                }
            }
        });
        app.run(shutdown)
            .await
            .map_err(|e| CliError::Runtime(format!("{e:#}")))
    })
}

/// What a signal asks for.
enum Signal {
    /// SIGINT, SIGTERM: drain and stop.
    Stop,
    /// SIGHUP: open the audit log's file again (log rotation); never stops the gateway.
    Reopen,
}

/// SIGINT, SIGTERM and SIGHUP, listened for from the moment they are installed.
struct Signals {
    #[cfg(unix)]
    streams: Option<[tokio::signal::unix::Signal; 3]>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(int), Ok(term), Ok(hup)) => Signals {
                    streams: Some([int, term, hup]),
                },
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    tracing::warn!(error = %e, "cannot listen for SIGINT/SIGTERM/SIGHUP; falling back to Ctrl-C");
                    Signals { streams: None }
                }
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        if let Some([int, term, hup]) = &mut self.streams {
            return tokio::select! {
                _ = int.recv() => Signal::Stop,
                _ = term.recv() => Signal::Stop,
                _ = hup.recv() => Signal::Reopen,
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        Signal::Stop
    }
}
