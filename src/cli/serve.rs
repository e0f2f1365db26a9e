//! `cognihook serve`: run the gateway until SIGINT/SIGTERM.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::CliError;
use crate::app::App;
use crate::app::Wiring;
use crate::config::{self, Config, ProcessEnv};

/// The environment `serve` reads, for `--help`.
const SERVE_ENV: &str = "\
Environment (over the configuration file; flags over both):
  COGNIHOOK_CONFIG         configuration file (same as --config)
  COGNIHOOK_LISTEN         public listener, e.g. 127.0.0.1:8080 (same as --listen)
  COGNIHOOK_ADMIN_LISTEN   listener for /metrics, /stats, /admin/* (same as --admin-listen)
  COGNIHOOK_DATA_DIR       directory of the embedded store (default ./data)
  COGNIHOOK_DATABASE_URL   sqlite://PATH or postgres://… (store.url)
  COGNIHOOK_ADMIN_TOKEN    bearer token of /admin/*; unset: the admin API answers 403
  COGNIGY_WEBHOOK_SECRET   the default routes' HMAC secret (comma-separated to rotate)
  COGNIHOOK_LOG            log filter, e.g. info or cognihook=debug (default info, fjall and lsm_tree at warn)
  COGNIHOOK_LOG_FORMAT     json or pretty (default: pretty on a terminal, else json)";

#[derive(Debug, clap::Args)]
#[command(after_long_help = SERVE_ENV, after_help = "Environment variables: see --help.")]
pub(super) struct ServeArgs {
    /// Add the simulator endpoints (`POST /simulate`, `POST /simulate/<route path>`).
    #[arg(long)]
    simulator: bool,
    /// Public listener address (server.listen).
    #[arg(long, value_name = "ADDR", env = "COGNIHOOK_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Listener of /metrics, /stats and /admin/* (server.admin_listen).
    #[arg(long, value_name = "ADDR", env = "COGNIHOOK_ADMIN_LISTEN")]
    admin_listen: Option<std::net::SocketAddr>,
}

pub(super) fn run(file: Option<&Path>, args: ServeArgs) -> Result<(), CliError> {
    crate::telemetry::init_logging();
    // Every problem at once: the configuration's own, then those its components find when
    // they are built (sink tables, route secrets and rules).
    let (config, mut problems) = Config::load_report(file, &ProcessEnv);
    let Some(mut config) = config else {
        return Err(CliError::Usage(config::ConfigErrors(problems).to_string()));
    };
    let flagged = (args.simulator && !config.server.simulator)
        || args.listen.is_some()
        || args.admin_listen.is_some();
    if flagged {
        // Checked again with the flags applied (the simulator refuses a non-loopback
        // listener, and --listen may change which one it is).
        let before = config.validate();
        problems.retain(|p| !before.contains(p));
        config.server.simulator |= args.simulator;
        if let Some(a) = args.listen {
            config.server.listen = a;
        }
        if let Some(a) = args.admin_listen {
            config.server.admin_listen = Some(a);
        }
        problems.extend(config.validate());
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
