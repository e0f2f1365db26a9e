//! `cognihook sessions forget ID`: forgets a session (SPEC §12.3) and prints what it did.

use std::path::Path;

use super::CliError;
use crate::config::{Config, ProcessEnv};

#[derive(Debug, clap::Subcommand)]
pub(super) enum SessionsCommand {
    /// Forget a session: its state (its next event is version 1), its events' payloads (ids,
    /// times and outcomes stay), its undelivered deliveries and its dead letters. On the
    /// embedded store the gateway must be stopped (while it runs, use
    /// `DELETE /admin/sessions/{id}`); on PostgreSQL any time. Prints
    /// `{"sessionId", "events", "cancelledDeliveries"}` and, with `[audit] path`, writes a
    /// `session_forgotten` audit line there.
    Forget {
        /// The session id (Cognigy's sessionId).
        id: String,
    },
}

pub(super) fn run(file: Option<&Path>, cmd: SessionsCommand) -> Result<(), CliError> {
    let SessionsCommand::Forget { id } = cmd;
    let config = Config::load(file, &ProcessEnv).map_err(CliError::usage)?;
    let f = super::with_store(
        &config,
        crate::store::Purpose::Changing,
        move |s| async move { s.forget_session(&id).await },
    )?;
    if let (true, Some(path)) = (config.audit.enabled, config.audit.path.as_deref()) {
        let audit = crate::telemetry::audit::Audit::start(Some(path), None)
            .map_err(|e| CliError::Runtime(format!("cannot open the audit log: {e}")))?;
        audit.write(&crate::telemetry::audit::session_forgotten(
            &f.session_id,
            f.events,
        ));
        audit.close();
    }
    let text = serde_json::json!({
        "sessionId": f.session_id,
        "events": f.events,
        "cancelledDeliveries": f.cancelled_deliveries,
    });
    println!("{text}");
    Ok(())
}
