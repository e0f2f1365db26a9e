//! `cognihook dead-letters list|show|replay|purge`: inspect and replay dead letters straight
//! in the store. A running gateway picks replayed rows up on its next poll.

use std::path::Path;

use super::{with_store, CliError};
use crate::config::{Config, ProcessEnv};
use crate::store::{parse_time_bound, DeadLetterFilter, DeadReason, Purpose};

#[derive(Debug, clap::Args)]
pub(super) struct Filter {
    /// Only this sink.
    #[arg(long)]
    sink: Option<String>,
    /// Only this route.
    #[arg(long)]
    route: Option<String>,
    /// Only this reason.
    #[arg(long, value_enum)]
    reason: Option<Reason>,
    /// Dead-lettered at or after: RFC 3339, or a duration ago such as 2h.
    #[arg(long)]
    since: Option<String>,
    /// Dead-lettered before: RFC 3339, or a duration ago.
    #[arg(long)]
    until: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum Reason {
    Permanent,
    Exhausted,
    Expired,
}

#[derive(Debug, clap::Subcommand)]
pub(super) enum DeadLettersCommand {
    /// List dead letters (newest first) as JSON: {"total", "items"}.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Most items to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter and its event's journey.
    Show { id: i64 },
    /// Put dead letters back in the outbox: by id, or every one matching the filter.
    Replay {
        ids: Vec<i64>,
        #[command(flatten)]
        filter: Filter,
        /// Only say how many would be replayed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters: by id, or every one matching the filter.
    Purge {
        ids: Vec<i64>,
        #[command(flatten)]
        filter: Filter,
        /// Required to purge every dead letter when no id or filter is given.
        #[arg(long)]
        all: bool,
    },
}

impl Filter {
    fn is_empty(&self) -> bool {
        self.sink.is_none()
            && self.route.is_none()
            && self.reason.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    fn build(self, ids: Vec<i64>) -> Result<DeadLetterFilter, CliError> {
        let time = |v: Option<String>, flag: &str| {
            v.map(|s| parse_time_bound(&s).map_err(|e| CliError::Usage(format!("--{flag}: {e}"))))
                .transpose()
        };
        Ok(DeadLetterFilter {
            ids,
            sink: self.sink,
            route: self.route,
            reason: self.reason.map(|r| match r {
                Reason::Permanent => DeadReason::Permanent,
                Reason::Exhausted => DeadReason::Exhausted,
                Reason::Expired => DeadReason::Expired,
            }),
            since_ms: time(self.since, "since")?,
            until_ms: time(self.until, "until")?,
        })
    }
}

fn print_json(v: &serde_json::Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| CliError::Runtime(e.to_string()))?;
    println!("{text}");
    Ok(())
}

pub(super) fn run(file: Option<&Path>, cmd: DeadLettersCommand) -> Result<(), CliError> {
    let config = Config::load(file, &ProcessEnv).map_err(CliError::usage)?;
    // Bodies sealed at rest are opened with the configured keys.
    crate::app::install_data_keys(&config, &ProcessEnv).map_err(CliError::usage)?;
    match cmd {
        DeadLettersCommand::List { filter, limit } => {
            let f = filter.build(Vec::new())?;
            let (total, items) = with_store(&config, Purpose::Reading, move |s| async move {
                s.dead_letters(&f, limit).await
            })?;
            print_json(&serde_json::json!({ "total": total, "items": items }))
        }
        DeadLettersCommand::Show { id } => {
            let f = DeadLetterFilter {
                ids: vec![id],
                ..Default::default()
            };
            let (item, journey) = with_store(&config, Purpose::Reading, move |s| async move {
                let (_, items) = s.dead_letters(&f, 1).await?;
                let item = items.into_iter().next();
                let journey = match &item {
                    Some(i) => s.journey(&i.event_id).await?,
                    None => None,
                };
                Ok((item, journey))
            })?;
            let Some(item) = item else {
                return Err(CliError::Runtime(format!("no dead letter with id {id}")));
            };
            print_json(&serde_json::json!({ "deadLetter": item, "journey": journey }))
        }
        DeadLettersCommand::Replay {
            ids,
            filter,
            dry_run,
        } => {
            let f = filter.build(ids)?;
            let n = with_store(&config, Purpose::Changing, move |s| async move {
                s.replay(&f, dry_run).await
            })?;
            let key = if dry_run { "would_replay" } else { "replayed" };
            print_json(&serde_json::json!({ key: n }))
        }
        DeadLettersCommand::Purge { ids, filter, all } => {
            if ids.is_empty() && filter.is_empty() && !all {
                return Err(CliError::Usage(
                    "purge needs dead-letter ids, a filter (--sink, --route, --reason, --since, \
                     --until), or --all"
                        .into(),
                ));
            }
            let f = filter.build(ids)?;
            let n = with_store(&config, Purpose::Changing, move |s| async move {
                s.purge(&f).await
            })?;
            print_json(&serde_json::json!({ "deleted": n }))
        }
    }
}
