//! A leaf: [`Cause`], the error that caused another, kept with its own causes, for error
//! types that are cloned (one failed commit group answers every request in it) or that wrap
//! errors of many kinds.

use std::sync::Arc;

/// What an error was caused by, kept with its own causes (a PostgreSQL error says what went
/// wrong only in its source). Shared, because one failed commit group answers every
/// request in it. Displayed with its causes; compared by that text.
#[derive(Debug, Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Cause {
        Cause(Arc::from(e.into()))
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::with_causes(&*self.0))
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Cause) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}
