//! `cognihook events show ID`: an event's journey, read straight from the store.

use std::path::Path;

use super::CliError;
use crate::config::{Config, ProcessEnv};
use crate::store::Purpose;

#[derive(Debug, clap::Subcommand)]
pub(super) enum EventsCommand {
    /// Show an event's journey (ID = event id or correlation id) as JSON.
    Show {
        /// Event id or correlation id.
        id: String,
    },
}

pub(super) fn run(file: Option<&Path>, cmd: EventsCommand) -> Result<(), CliError> {
    let EventsCommand::Show { id } = cmd;
    let config = Config::load(file, &ProcessEnv).map_err(CliError::usage)?;
    // Bodies sealed at rest are opened with the configured keys.
    crate::app::install_data_keys(&config, &ProcessEnv).map_err(CliError::usage)?;
    let journey = {
        let id = id.clone();
        super::with_store(&config, Purpose::Reading, move |s| async move {
            s.journey(&id).await
        })?
    };
    match journey {
        Some(j) => {
            let text =
                serde_json::to_string_pretty(&j).map_err(|e| CliError::Runtime(e.to_string()))?;
            println!("{text}");
            Ok(())
        }
        None => Err(CliError::Runtime(format!(
            "no event with event id or correlation id `{id}`"
        ))),
    }
}
