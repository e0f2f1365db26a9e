//! `cognihook check-config [--print-default]`.

use std::path::Path;

use super::CliError;
use crate::app::Wiring;
use crate::config::{self, Config, ProcessEnv};

#[derive(Debug, clap::Args)]
pub(super) struct CheckConfigArgs {
    /// Print the built-in default configuration as a commented TOML file and exit.
    #[arg(long)]
    print_default: bool,
}

pub(super) fn run(file: Option<&Path>, args: CheckConfigArgs) -> Result<(), CliError> {
    if args.print_default {
        print!("{}", config::default_toml());
        return Ok(());
    }
    let (config, mut problems) = Config::load_report(file, &ProcessEnv);
    if let Some(c) = &config {
        if let Err(mut p) = Wiring::build(c, &ProcessEnv) {
            problems.append(&mut p);
        }
    }
    if !problems.is_empty() {
        return Err(CliError::Usage(config::ConfigErrors(problems).to_string()));
    }
    if let Some(c) = config {
        print!("{}", c.to_masked_toml());
        let store = match c.store.backend() {
            Ok(crate::config::Backend::Postgres(_)) => "PostgreSQL".to_string(),
            Ok(crate::config::Backend::Sqlite(p)) => format!("SQLite at {}", p.display()),
            Err(_) => "?".to_string(),
        };
        eprintln!(
            "cognihook: configuration OK ({}; {} route(s), {} sink(s), store: {store})",
            file.map_or("built-in defaults and environment".to_string(), |f| f
                .display()
                .to_string()),
            c.routes.len(),
            c.sinks.len(),
        );
    }
    Ok(())
}
