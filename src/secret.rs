//! Secrets named in the configuration (`env:NAME`, `file:PATH` or a literal), resolved into
//! values that never print. A leaf beside `config`, used by ingest (route secrets) and sinks.

use std::fmt;

use crate::config::EnvSource;

/// A secret value with a printable label saying where it came from (never the value).
#[derive(Clone)]
pub struct Secret {
    pub label: String,
    pub value: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, ********)", self.label)
    }
}

/// Resolves a secret reference (`env:NAME`, `file:PATH` or a literal) into one or more secrets.
///
/// `env:` values are split on commas (several secrets during rotation); `file:` contents are
/// split into lines. Errors name the variable or file, never a value.
pub fn resolve_secret_ref(reference: &str, env: &dyn EnvSource) -> Result<Vec<Secret>, String> {
    let (source, values): (String, Vec<String>) = if let Some(name) = reference.strip_prefix("env:")
    {
        let v = env
            .get(name)
            .ok_or_else(|| format!("environment variable {name} is not set"))?;
        (
            name.to_string(),
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    } else if let Some(path) = reference.strip_prefix("file:") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("secret file {path} cannot be read: {e}"))?;
        (
            format!("file:{path}"),
            text.lines()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    } else {
        ("literal".to_string(), vec![reference.to_string()])
    };
    if values.is_empty() {
        return Err(format!("secret {source} is empty"));
    }
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, v)| Secret {
            label: format!("{source}[{i}]"),
            value: v.into_bytes(),
        })
        .collect())
}
