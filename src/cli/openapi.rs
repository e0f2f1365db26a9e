//! `cognihook openapi`: prints the OpenAPI 3.1 document of the configuration's HTTP API
//! (`http::openapi`). Secrets are not needed: only the routes' settings are read.

use std::path::Path;

use super::CliError;
use crate::config::{Config, ProcessEnv};

pub(super) fn run(file: Option<&Path>) -> Result<(), CliError> {
    let config = Config::load(file, &ProcessEnv).map_err(CliError::usage)?;
    let doc = crate::http::openapi::render(&config)
        .map_err(|p| CliError::Usage(crate::config::ConfigErrors(p).to_string()))?;
    print!("{doc}");
    Ok(())
}
