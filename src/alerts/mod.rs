//! Alerts that reach the team: `[alerts]` watches the gateway and tells every
//! `[alerts.target.NAME]` (Slack, Teams, or any webhook) when something needs a person.
//!
//! ```text
//! every alerts.interval:  Alerts::look → a Look (store readiness, each sink's circuit,
//!                         outbox age and dead letters, each route's refused credentials and
//!                         secrets matched: telemetry::watch) → monitor::Monitor (debounce)
//!                         → each alert committed as an event of the route `_alerts` with one
//!                         outbox row per target (sink `alert:NAME`, kind `alert`)
//! delivery:               the ordinary delivery path (retries, breaker, dead letters, replay);
//!                         sinks::alert renders the target's format
//! store unavailable:      that alert cannot wait for the store: it is sent straight to each
//!                         target, retried in memory a few times
//! ```
//!
//! Invariants: ingest never waits for an alert (it only bumps counters); one alert per kind
//! and subject per `window`, with a count of what else happened; a resolution is said once;
//! replicas sharing a PostgreSQL store send one alert between them for the same kind,
//! subject, status and window (the idempotency key says so).

pub mod monitor;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{AlertsConfig, EnvSource, SinkKind};
use crate::delivery::sink::SinkRuntime;
use crate::delivery::spec::SinkSpec;
use crate::delivery::worker::Deliverer;
use crate::event::NormalisedEvent;
use crate::sinks::spec::{AlertTarget, Target};
use crate::store::{Acceptance, Store};
use crate::telemetry::watch::Signals;
use monitor::{Look, Monitor, RouteLook, Settings, SinkLook};

/// The route alert events are committed on.
pub const ROUTE: &str = "_alerts";
/// Alerts that could not be committed (the store refused them) wait here for the next look;
/// past this many the oldest are dropped (and logged).
const HELD_MAX: usize = 256;

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    CircuitOpen,
    DeadLetters,
    PendingAge,
    AuthFailures,
    SecretUnused,
    StoreUnavailable,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::CircuitOpen => "circuit_open",
            Kind::DeadLetters => "dead_letters",
            Kind::PendingAge => "pending_age",
            Kind::AuthFailures => "auth_failures",
            Kind::SecretUnused => "secret_unused",
            Kind::StoreUnavailable => "store_unavailable",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Kind::StoreUnavailable | Kind::CircuitOpen => Severity::Critical,
            Kind::DeadLetters | Kind::PendingAge | Kind::AuthFailures => Severity::Warning,
            Kind::SecretUnused => Severity::Info,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// One alert, as targets receive it (`kind = "webhook"` gets exactly this JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub kind: Kind,
    pub status: Status,
    pub severity: Severity,
    /// What it is about: `sink`, `class`, `route`, `secret` (a label, never a value).
    pub subject: BTreeMap<String, String>,
    pub summary: String,
    pub figures: Map<String, Value>,
    /// Firings or occurrences this alert stands for (more than 1 after a debounced window).
    pub count: u64,
    pub window_seconds: u64,
    pub at_ms: i64,
    pub link: Option<String>,
}

impl Alert {
    /// The alert as JSON.
    pub fn to_json(&self) -> Value {
        let at =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.at_ms) * 1_000_000)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let mut v = serde_json::json!({
            "kind": self.kind,
            "status": self.status,
            "severity": self.severity,
            "subject": self.subject,
            "summary": self.summary,
            "figures": self.figures,
            "count": self.count,
            "windowSeconds": self.window_seconds,
            "at": crate::format_rfc3339(at),
            "replica": crate::replica_id(),
        });
        if let Some(link) = &self.link {
            v["link"] = Value::String(link.clone());
        }
        v
    }

    /// The idempotency key: one alert per kind, subject, status and window among replicas.
    fn key(&self, window_ms: i64) -> String {
        let subject: Vec<String> = self
            .subject
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "alert:{}:{}:{}:{}",
            self.kind.name(),
            subject.join(","),
            self.status.name(),
            self.at_ms / window_ms.max(1)
        )
    }

    /// The event that carries it through the outbox.
    fn event(&self) -> NormalisedEvent {
        NormalisedEvent::new(
            ROUTE,
            format!("alert-{}", ulid::Ulid::new()),
            ulid::Ulid::new().to_string(),
            ROUTE.to_string(),
            "cognihook".to_string(),
            format!("alert.{}.{}", self.kind.name(), self.status.name()),
            self.to_json(),
        )
    }
}

/// The sink name of alert target `name`.
pub fn sink_name(name: &str) -> String {
    format!("alert:{name}")
}

/// Builds one delivery sink per `[alerts.target.NAME]`; returns every problem.
pub fn build_sinks(
    config: &AlertsConfig,
    lease_margin: Duration,
    env: &dyn EnvSource,
) -> Result<Vec<Arc<SinkRuntime>>, Vec<String>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (name, t) in &config.targets {
        let spec = SinkSpec {
            name: sink_name(name),
            timeout: t.timeout,
            retry: crate::config::RetryPolicy {
                max_attempts: 10,
                base_delay: Duration::from_secs(2),
                max_delay: Duration::from_secs(300),
            },
            breaker: crate::config::BreakerConfig::default(),
            concurrency: 2,
            ordered: false,
            rate_limit: None,
            batch: None,
            target: Target::Alert(AlertTarget {
                format: t.kind,
                url: t.url.clone(),
                secret: t.secret.clone(),
            }),
        };
        match crate::sinks::build(&spec.target, spec.timeout, env) {
            Ok(sink) => out.push(Arc::new(SinkRuntime::new(spec, sink, lease_margin))),
            Err(e) => problems.push(format!("alerts.target `{name}`: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The alerts of a running gateway.
pub struct Alerts {
    monitor: Mutex<Monitor>,
    window_ms: i64,
    interval: Duration,
    store: Store,
    deliverer: Arc<Deliverer>,
    signals: Arc<Signals>,
    /// Committed but not yet accepted by the store (it was unavailable).
    held: Mutex<VecDeque<Alert>>,
}

impl Alerts {
    pub fn new(
        config: &AlertsConfig,
        store: Store,
        deliverer: Arc<Deliverer>,
        signals: Arc<Signals>,
    ) -> Alerts {
        Alerts {
            monitor: Mutex::new(Monitor::new(
                Settings::from_config(config),
                crate::now_millis(),
            )),
            window_ms: i64::try_from(config.window.as_millis()).unwrap_or(i64::MAX / 4),
            interval: config.interval,
            store,
            deliverer,
            signals,
            held: Mutex::new(VecDeque::new()),
        }
    }

    /// The alert targets' sinks.
    fn targets(&self) -> Vec<&Arc<SinkRuntime>> {
        self.deliverer
            .sinks()
            .iter()
            .filter(|s| s.config.kind() == SinkKind::Alert)
            .collect()
    }

    /// Looks at the gateway at `now_ms`, and commits (or, for the store itself, sends) the
    /// alerts that follow. Returns them (tests read what a look decided).
    pub async fn look_at(&self, now_ms: i64) -> Vec<Alert> {
        let look = self.gather().await;
        let alerts = self.monitor.lock().look(now_ms, &look);
        let mut committed = false;
        let held: Vec<Alert> = self.held.lock().drain(..).collect();
        for alert in held.iter().chain(&alerts) {
            if alert.kind == Kind::StoreUnavailable {
                self.send_direct(alert);
            } else {
                committed |= self.commit(alert).await;
            }
        }
        if committed {
            self.deliverer.wake();
        }
        alerts
    }

    /// Runs `look_at` every `alerts.interval` until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the first look is one interval after the start.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.look_at(crate::now_millis()).await;
        }
    }

    async fn gather(&self) -> Look {
        let store_down =
            match tokio::time::timeout(Duration::from_secs(5), self.store.readiness()).await {
                Ok(Ok(())) => None,
                Ok(Err(why)) => Some(why.to_string()),
                Err(_) => Some("the store did not answer within 5s".to_string()),
            };
        let watched: Vec<&Arc<SinkRuntime>> = self
            .deliverer
            .sinks()
            .iter()
            .filter(|s| s.config.kind() != SinkKind::Alert)
            .collect();
        let names: Vec<String> = watched.iter().map(|s| s.name.clone()).collect();
        let counts = if store_down.is_none() && !names.is_empty() {
            tokio::time::timeout(Duration::from_secs(5), self.store.sink_counts(&names))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let sinks = watched
            .iter()
            .map(|s| {
                let c = counts.iter().find(|c| c.sink == s.name);
                SinkLook {
                    name: s.name.clone(),
                    circuit: s.circuit().name(),
                    times_opened: s.times_opened(),
                    oldest_pending_seconds: c.map(|c| c.oldest_pending_age_seconds),
                    pending: c.map(|c| c.pending),
                    dead_letters: s.dead_letters_made(),
                }
            })
            .collect();
        let routes = self
            .signals
            .routes()
            .into_iter()
            .map(|(name, r)| RouteLook {
                name,
                auth_failures: r.auth_failures(),
                secrets: r.secrets(),
            })
            .collect();
        Look {
            store_down,
            sinks,
            routes,
        }
    }

    /// Commits `alert` as an event with one outbox row per target; true when committed.
    /// A store that refuses keeps it for the next look.
    async fn commit(&self, alert: &Alert) -> bool {
        let targets: Vec<String> = self.targets().iter().map(|s| s.name.clone()).collect();
        if targets.is_empty() {
            return false;
        }
        let acceptance = Acceptance {
            idempotency_key: alert.key(self.window_ms),
            event: alert.event(),
            answer: crate::store::decide::Answer::new(
                b"{\"stateVersion\":".to_vec(),
                b"}".to_vec(),
            ),
            sinks: targets,
            max_response_bytes: 1024,
            spend: None,
            status: 200,
            respond: None,
        };
        match self.store.accept(acceptance).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(kind = alert.kind.name(), error = %e,
                    "an alert could not be committed; it is tried again at the next look");
                let mut held = self.held.lock();
                if held.len() >= HELD_MAX {
                    held.pop_front();
                    tracing::warn!("too many alerts wait for the store: the oldest was dropped");
                }
                held.push_back(alert.clone());
                false
            }
        }
    }

    /// Sends `alert` to every target now, without the store, retrying a few times in a
    /// task of its own.
    fn send_direct(&self, alert: &Alert) {
        let event = alert.event();
        let body = match serde_json::to_vec(&event) {
            Ok(b) => b,
            Err(_) => return,
        };
        for target in self.targets() {
            let (target, body, event) = (target.clone(), body.clone(), event.clone());
            tokio::spawn(async move {
                let mut wait = Duration::from_secs(1);
                for attempt in 1..=6u32 {
                    let d = crate::sinks::Delivery {
                        event_id: &event.event_id,
                        correlation_id: &event.correlation_id,
                        route: ROUTE,
                        event_type: &event.event_type,
                        session_id: &event.session_id,
                        attempt,
                        body: &body,
                        traceparent: None,
                    };
                    match target.client().send(&d).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::warn!(target = %target.name, attempt, error = %e,
                                "a store alert could not be sent");
                        }
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
            });
        }
    }
}
