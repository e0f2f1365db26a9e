//! The command line (SPEC §1): one file per command. Exit codes: 0 success, 1 runtime
//! failure, 2 usage or configuration error.

mod check_config;
mod dead_letters;
mod events;
mod openapi;
mod send;
mod serve;
mod sessions;
mod simulate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A command's failure, carrying its exit code.
#[derive(Debug)]
pub enum CliError {
    /// Usage or configuration error (exit 2).
    Usage(String),
    /// Runtime failure (exit 1).
    Runtime(String),
}

impl CliError {
    /// A usage or configuration error with the message of `e`.
    pub fn usage(e: impl std::fmt::Display) -> CliError {
        CliError::Usage(e.to_string())
    }

    fn exit(self) -> ExitCode {
        match self {
            CliError::Usage(m) => {
                eprintln!("cognihook: {}", m.trim_end());
                ExitCode::from(2)
            }
            CliError::Runtime(m) => {
                eprintln!("cognihook: {}", m.trim_end());
                ExitCode::from(1)
            }
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "cognihook",
    version,
    about = "Gateway between NICE Cognigy.AI and your backends: authenticated, durable webhook ingest"
)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "COGNIHOOK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway until SIGINT/SIGTERM.
    Serve(serve::ServeArgs),
    /// Load and validate the configuration; print it with secrets masked.
    CheckConfig(check_config::CheckConfigArgs),
    /// Sign a payload and POST it; prints status and body, exits 1 on a non-2xx answer.
    Send(send::SendArgs),
    /// Print the signature header value for a payload.
    Sign(send::SignArgs),
    /// Inspect stored events.
    Events {
        #[command(subcommand)]
        command: events::EventsCommand,
    },
    /// Forget a conversation's session (personal data).
    Sessions {
        #[command(subcommand)]
        command: sessions::SessionsCommand,
    },
    /// Inspect, replay and purge dead letters.
    DeadLetters {
        #[command(subcommand)]
        command: dead_letters::DeadLettersCommand,
    },
    /// Generates realistic, correctly authenticated Cognigy traffic against a route and checks
    /// every answer (exit 1 on a contradiction).
    Simulate(simulate::SimulateArgs),
    /// Print a shell completion script, e.g. `cognihook completions bash > /etc/bash_completion.d/cognihook`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `cognihook man | man -l -`.
    Man,
    /// Print the OpenAPI 3.1 document of the configuration's HTTP API (webhook routes,
    /// operations endpoints, admin API), e.g. `cognihook openapi > openapi.json`.
    /// Reads COGNIHOOK_CONFIG and the variables that override configuration keys.
    Openapi,
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // Files the gateway creates (the store, its log, the audit log) hold payloads: readable
    // by the owner alone, whatever the inherited umask.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let config = cli.config.as_deref();
    let result = match cli.command {
        Command::Serve(a) => serve::run(config, a),
        Command::CheckConfig(a) => check_config::run(config, a),
        Command::Send(a) => send::run_send(a),
        Command::Sign(a) => send::run_sign(a),
        Command::Events { command } => events::run(config, command),
        Command::DeadLetters { command } => dead_letters::run(config, command),
        Command::Sessions { command } => sessions::run(config, command),
        Command::Simulate(a) => simulate::run(a),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "cognihook",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Openapi => openapi::run(config),
        Command::Man => {
            use clap::CommandFactory as _;
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Runtime(
                    format!("cannot write the manual page: {e}"),
                )),
                _ => Ok(()),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(|| {
            crate::priority::shorten_slice("an async worker");
        })
        .build()
        .map_err(|e| CliError::Runtime(format!("cannot start the async runtime: {e}")))
}

/// Says on stderr which store a command opened (the embedded store's file, or PostgreSQL's
/// URL with credentials masked), so reading the wrong one is never silent.
fn announce_store(config: &crate::config::Config) -> Result<(), CliError> {
    use crate::config::Backend;
    match config.store.backend().map_err(CliError::usage)? {
        Backend::Sqlite(path) => eprintln!("cognihook: store: SQLite {}", path.display()),
        Backend::Postgres(url) => eprintln!(
            "cognihook: store: PostgreSQL {}",
            crate::secret::mask_url(&url)
        ),
    }
    Ok(())
}

/// Opens the configured store for `purpose` (`store::Store::open`: the embedded file, which
/// must exist, or PostgreSQL), says which on stderr, runs `f` on it, and closes it. Every
/// command that uses the store goes through here, on either backend.
fn with_store<T, F, Fut>(
    config: &crate::config::Config,
    purpose: crate::store::Purpose,
    f: F,
) -> Result<T, CliError>
where
    F: FnOnce(crate::store::Store) -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::store::StoreError>>,
{
    announce_store(config)?;
    let rt = runtime()?;
    rt.block_on(async {
        let store = crate::store::Store::open(&config.store, purpose)
            .await
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        let out = f(store.clone()).await;
        store.close().await;
        out.map_err(|e| CliError::Runtime(e.to_string()))
    })
}
