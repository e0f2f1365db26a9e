//! What ingest tells the alerts about each route, kept in atomics so the request path pays
//! an increment and never waits: refused credentials (a running count) and when each secret
//! of the route's rotation set last matched. `crate::alerts` reads them on its schedule.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Every route's signals, by route name.
#[derive(Default)]
pub struct Signals {
    routes: Mutex<BTreeMap<String, Arc<RouteSignals>>>,
}

/// One route's signals.
pub struct RouteSignals {
    auth_failures: AtomicU64,
    /// The labels of the route's secrets (never the values), each with the Unix
    /// milliseconds it last matched (0: not since this process started).
    secrets: Vec<(String, AtomicI64)>,
}

impl Signals {
    /// The signals of `route` (created on first use; the labels of its secrets fixed then).
    pub fn route(&self, route: &str, secret_labels: Vec<String>) -> Arc<RouteSignals> {
        self.routes
            .lock()
            .entry(route.to_string())
            .or_insert_with(|| {
                Arc::new(RouteSignals {
                    auth_failures: AtomicU64::new(0),
                    secrets: secret_labels
                        .into_iter()
                        .map(|l| (l, AtomicI64::new(0)))
                        .collect(),
                })
            })
            .clone()
    }

    /// Every route's signals, by name.
    pub fn routes(&self) -> Vec<(String, Arc<RouteSignals>)> {
        self.routes
            .lock()
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }
}

impl RouteSignals {
    /// A request refused for its credentials.
    pub fn refused(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The secret labelled `label` matched at `now_ms`.
    pub fn matched(&self, label: &str, now_ms: i64) {
        if let Some((_, at)) = self.secrets.iter().find(|(l, _)| l == label) {
            at.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Refused requests since the start.
    pub fn auth_failures(&self) -> u64 {
        self.auth_failures.load(Ordering::Relaxed)
    }

    /// Each secret's label and when it last matched (`None`: not since the start).
    pub fn secrets(&self) -> Vec<(String, Option<i64>)> {
        self.secrets
            .iter()
            .map(|(l, at)| {
                let at = at.load(Ordering::Relaxed);
                (l.clone(), (at > 0).then_some(at))
            })
            .collect()
    }
}
