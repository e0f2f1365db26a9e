//! The decisions of the alerts, with the clock a parameter: what one look at the gateway saw
//! ([`Look`]) becomes the alerts to send now. Pure: no I/O, no timers, so every kind and the
//! debounce are tested by handing it looks and times.
//!
//! Two shapes of alert share one debounce per kind and subject ([`Track`]):
//! - *conditions* (a circuit open, a pending delivery too old, refused credentials over the
//!   threshold, a secret unused, the store unavailable) fire when they begin and are said to
//!   be resolved once when they end;
//! - *occurrences* (dead letters) fire on the first one and count the rest.
//!
//! Within `window` of the last alert of a kind and subject nothing more is sent: what
//! happened meanwhile is counted and sent as one alert when the window has passed (its
//! status is the condition's state then). A resolution of an alert that was sent is always
//! sent, once.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use super::{Alert, Kind, Status};
use crate::store::DeadReason;

/// The thresholds, in milliseconds where they are times.
#[derive(Debug, Clone)]
pub struct Settings {
    pub window_ms: i64,
    pub pending_age_ms: i64,
    pub auth_failures: u64,
    pub auth_within_ms: i64,
    pub secret_unused_ms: i64,
    /// The console's base URL, for links.
    pub console_url: Option<String>,
}

impl Settings {
    pub fn from_config(c: &crate::config::AlertsConfig) -> Settings {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
        Settings {
            window_ms: ms(c.window),
            pending_age_ms: ms(c.pending_age),
            auth_failures: u64::from(c.auth_failures.count),
            auth_within_ms: ms(c.auth_failures.within),
            secret_unused_ms: ms(c.secret_unused),
            console_url: c.console_url.clone(),
        }
    }
}

/// What one look at the gateway saw.
#[derive(Debug, Clone, Default)]
pub struct Look {
    /// `Some(why)` when the store cannot take events.
    pub store_down: Option<String>,
    pub sinks: Vec<SinkLook>,
    pub routes: Vec<RouteLook>,
}

/// One sink, as a look sees it.
#[derive(Debug, Clone)]
pub struct SinkLook {
    pub name: String,
    /// `closed`, `half-open` or `open`.
    pub circuit: &'static str,
    /// Times the circuit opened since the start (an opening between two looks shows here).
    pub times_opened: u64,
    /// The outbox's oldest pending delivery and how many are pending (`None` when the store
    /// could not say).
    pub oldest_pending_seconds: Option<f64>,
    pub pending: Option<u64>,
    /// Dead letters made since the start, by reason.
    pub dead_letters: [(DeadReason, u64); 3],
}

/// One route, as a look sees it.
#[derive(Debug, Clone)]
pub struct RouteLook {
    pub name: String,
    /// Refused credentials since the start.
    pub auth_failures: u64,
    /// Each secret's label and when it last matched (Unix ms; `None`: not since the start).
    pub secrets: Vec<(String, Option<i64>)>,
}

/// The debounce of one kind and subject.
#[derive(Debug, Default)]
struct Track {
    /// A condition that holds now.
    active: bool,
    /// The current firing was sent (so its resolution will be).
    announced: bool,
    last_sent: Option<i64>,
    /// Firings or occurrences not yet in a sent alert.
    unreported: u64,
}

/// The alerts' memory between looks.
pub struct Monitor {
    settings: Settings,
    started_ms: i64,
    tracks: BTreeMap<(Kind, String), Track>,
    /// Counters at the previous look: sink → (times opened, dead letters per reason).
    sinks: BTreeMap<String, (u64, [u64; 3])>,
    /// Per route: refused credentials at the previous look, and the recent increases.
    auth: BTreeMap<String, (u64, VecDeque<(i64, u64)>)>,
}

/// What the caller knows of an alert before the debounce decides.
struct Raised {
    kind: Kind,
    subject: Vec<(&'static str, String)>,
    summary: String,
    figures: Map<String, Value>,
    /// A console page under `console_url`.
    page: String,
}

impl Raised {
    fn key(&self) -> (Kind, String) {
        let mut s = String::new();
        for (k, v) in &self.subject {
            let _ = write!(s, "{k}={v};");
        }
        (self.kind, s)
    }
}

impl Monitor {
    pub fn new(settings: Settings, started_ms: i64) -> Monitor {
        Monitor {
            settings,
            started_ms,
            tracks: BTreeMap::new(),
            sinks: BTreeMap::new(),
            auth: BTreeMap::new(),
        }
    }

    /// The alerts to send after a look at `now_ms`.
    pub fn look(&mut self, now_ms: i64, look: &Look) -> Vec<Alert> {
        let mut out = Vec::new();
        self.store(now_ms, look, &mut out);
        for s in &look.sinks {
            self.sink(now_ms, s, look.store_down.is_none(), &mut out);
        }
        for r in &look.routes {
            self.route(now_ms, r, &mut out);
        }
        out
    }

    fn store(&mut self, now: i64, look: &Look, out: &mut Vec<Alert>) {
        let why = look.store_down.clone();
        let raised = Raised {
            kind: Kind::StoreUnavailable,
            subject: vec![],
            summary: match &why {
                Some(w) => format!("the store cannot take events: {w}; webhooks answer 503"),
                None => "the store takes events again".into(),
            },
            figures: Map::new(),
            page: String::new(),
        };
        self.condition(now, why.is_some(), raised, out);
    }

    fn sink(&mut self, now: i64, s: &SinkLook, store_up: bool, out: &mut Vec<Alert>) {
        let dead_now = s.dead_letters.map(|(_, n)| n);
        let (opened_before, dead_before) = self
            .sinks
            .insert(s.name.clone(), (s.times_opened, dead_now))
            .unwrap_or((0, [0; 3]));
        let opened = s.times_opened.saturating_sub(opened_before);
        let open = s.circuit != "closed" || opened > 0;
        let mut figures = Map::new();
        figures.insert("circuit".into(), json!(s.circuit));
        figures.insert("timesOpened".into(), json!(s.times_opened));
        self.condition(
            now,
            open,
            Raised {
                kind: Kind::CircuitOpen,
                subject: vec![("sink", s.name.clone())],
                summary: if open {
                    format!(
                        "the circuit of sink `{}` opened: deliveries wait for its cool-down",
                        s.name
                    )
                } else {
                    format!("the circuit of sink `{}` closed again", s.name)
                },
                figures,
                page: format!("sinks#{}", s.name),
            },
            out,
        );
        for (i, (reason, _)) in s.dead_letters.iter().enumerate() {
            let made = dead_now[i].saturating_sub(dead_before[i]);
            let key = (
                Kind::DeadLetters,
                format!("sink={};class={};", s.name, reason.as_str()),
            );
            if made == 0 && !self.tracks.contains_key(&key) {
                continue;
            }
            let mut figures = Map::new();
            figures.insert("class".into(), json!(reason.as_str()));
            figures.insert("sinceStart".into(), json!(dead_now[i]));
            self.occurrence(
                now,
                made,
                Raised {
                    kind: Kind::DeadLetters,
                    subject: vec![("sink", s.name.clone()), ("class", reason.as_str().into())],
                    summary: format!(
                        "deliveries to sink `{}` were dead-lettered ({}); replay them once the \
                         cause is fixed",
                        s.name,
                        reason.as_str()
                    ),
                    figures,
                    page: format!("dead-letters?sink={}&class={}", s.name, reason.as_str()),
                },
                out,
            );
        }
        if !store_up {
            return;
        }
        let Some(age) = s.oldest_pending_seconds else {
            return;
        };
        let old = age * 1000.0 > self.settings.pending_age_ms as f64;
        let mut figures = Map::new();
        figures.insert("oldestPendingSeconds".into(), json!(age.round()));
        if let Some(p) = s.pending {
            figures.insert("pending".into(), json!(p));
        }
        figures.insert(
            "thresholdSeconds".into(),
            json!(self.settings.pending_age_ms / 1000),
        );
        self.condition(
            now,
            old,
            Raised {
                kind: Kind::PendingAge,
                subject: vec![("sink", s.name.clone())],
                summary: if old {
                    format!(
                        "sink `{}` has a delivery pending for {}s, longer than the threshold",
                        s.name,
                        age.round()
                    )
                } else {
                    format!("sink `{}` keeps pace again", s.name)
                },
                figures,
                page: format!("sinks#{}", s.name),
            },
            out,
        );
    }

    fn route(&mut self, now: i64, r: &RouteLook, out: &mut Vec<Alert>) {
        let (total_before, recent) = self
            .auth
            .entry(r.name.clone())
            .or_insert_with(|| (0, VecDeque::new()));
        let added = r.auth_failures.saturating_sub(*total_before);
        *total_before = r.auth_failures;
        if added > 0 {
            recent.push_back((now, added));
        }
        while recent
            .front()
            .is_some_and(|(t, _)| now - t >= self.settings.auth_within_ms)
        {
            recent.pop_front();
        }
        let within: u64 = recent.iter().map(|(_, n)| n).sum();
        let burst = within >= self.settings.auth_failures;
        let mut figures = Map::new();
        figures.insert("refused".into(), json!(within));
        figures.insert("threshold".into(), json!(self.settings.auth_failures));
        figures.insert(
            "withinSeconds".into(),
            json!(self.settings.auth_within_ms / 1000),
        );
        self.condition(
            now,
            burst,
            Raised {
                kind: Kind::AuthFailures,
                subject: vec![("route", r.name.clone())],
                summary: if burst {
                    format!(
                        "route `{}` refused {within} requests for their signature or credentials \
                         recently: a misconfigured secret, or someone probing",
                        r.name
                    )
                } else {
                    format!(
                        "refused credentials on route `{}` are back below the threshold",
                        r.name
                    )
                },
                figures,
                page: format!("events?route={}", r.name),
            },
            out,
        );
        if r.secrets.len() < 2 {
            return;
        }
        let limit = self.settings.secret_unused_ms;
        for (label, used) in &r.secrets {
            let idle_ms = now - used.unwrap_or(self.started_ms);
            let others_used = r
                .secrets
                .iter()
                .any(|(other, at)| other != label && at.is_some_and(|t| now - t < limit));
            // Once said, it holds until this secret matches again (the others going quiet
            // too does not make it needed).
            let said = self
                .tracks
                .get(&(
                    Kind::SecretUnused,
                    format!("route={};secret={label};", r.name),
                ))
                .is_some_and(|t| t.active);
            let unused = idle_ms >= limit && (others_used || said);
            let mut figures = Map::new();
            figures.insert("unusedForSeconds".into(), json!(idle_ms / 1000));
            figures.insert("rotationSet".into(), json!(r.secrets.len()));
            self.condition(
                now,
                unused,
                Raised {
                    kind: Kind::SecretUnused,
                    subject: vec![("route", r.name.clone()), ("secret", label.clone())],
                    summary: if unused {
                        format!(
                            "secret `{label}` of route `{}` has not matched for {} while another \
                             one has: it can be removed from the rotation set",
                            r.name,
                            humantime::format_duration(std::time::Duration::from_secs(
                                (idle_ms / 1000).max(0) as u64
                            ))
                        )
                    } else {
                        format!("secret `{label}` of route `{}` matched again", r.name)
                    },
                    figures,
                    page: "configuration".into(),
                },
                out,
            );
        }
    }

    fn due(&self, t: &Track, now: i64) -> bool {
        t.last_sent
            .is_none_or(|last| now - last >= self.settings.window_ms)
    }

    /// A condition that holds (`active`) or not at `now`.
    fn condition(&mut self, now: i64, active: bool, r: Raised, out: &mut Vec<Alert>) {
        let key = r.key();
        let mut t = self.tracks.remove(&key).unwrap_or_default();
        let began = active && !t.active;
        let ended = !active && t.active;
        t.active = active;
        if began {
            t.unreported += 1;
        }
        if ended && t.announced {
            t.announced = false;
            out.push(self.alert(now, Status::Resolved, 1, &r));
        } else if t.unreported > 0 && self.due(&t, now) {
            let status = if active {
                Status::Firing
            } else {
                Status::Resolved
            };
            out.push(self.alert(now, status, t.unreported, &r));
            t.announced = active;
            t.unreported = 0;
            t.last_sent = Some(now);
        }
        if !t.active
            && t.unreported == 0
            && t.last_sent
                .is_none_or(|l| now - l >= self.settings.window_ms)
        {
            // Nothing left to say: forget it (the next firing is sent at once).
            return;
        }
        self.tracks.insert(key, t);
    }

    /// `n` new occurrences (maybe none) at `now`.
    fn occurrence(&mut self, now: i64, n: u64, r: Raised, out: &mut Vec<Alert>) {
        let key = r.key();
        let mut t = self.tracks.remove(&key).unwrap_or_default();
        t.unreported += n;
        if t.unreported > 0 && self.due(&t, now) {
            out.push(self.alert(now, Status::Firing, t.unreported, &r));
            t.unreported = 0;
            t.last_sent = Some(now);
        }
        if t.unreported == 0
            && t.last_sent
                .is_none_or(|l| now - l >= self.settings.window_ms)
        {
            return;
        }
        self.tracks.insert(key, t);
    }

    fn alert(&self, now: i64, status: Status, count: u64, r: &Raised) -> Alert {
        Alert {
            kind: r.kind,
            status,
            severity: r.kind.severity(),
            subject: r
                .subject
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
            summary: r.summary.clone(),
            figures: r.figures.clone(),
            count,
            window_seconds: (self.settings.window_ms / 1000).max(0) as u64,
            at_ms: now,
            link: self
                .settings
                .console_url
                .as_ref()
                .map(|base| format!("{}/{}", base.trim_end_matches('/'), r.page)),
        }
    }
}

#[cfg(test)]
mod tests;
