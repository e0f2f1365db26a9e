//! Typed configuration: built-in defaults → TOML file → environment (SPEC §2).
//!
//! The built-in defaults are one file, `defaults.toml` (embedded; `check-config
//! --print-default` prints it): a configuration file is laid over it key by key, and the
//! sections' `Default` impls read it. Per-table defaults of `[sink.NAME]` and `[[route]]`
//! entries are their structs' serde defaults (`sink.rs`, `route.rs`). One file per concern:
//! `server` (listeners, limits), `store` (store, audit, privacy), `route`, `auth`, `sink`,
//! `delivery`, `alerts`, `telemetry`, `duration` (the `"10s"` adapters).
//!
//! Invariants: unknown keys are errors; every problem found is reported at once
//! ([`ConfigErrors`] holds them all); secrets are only *references* here (`env:NAME`,
//! `file:PATH` or a literal) and are resolved when routes are built (`ingest::Routes::build`),
//! so commands that only need the store (`events show`) work without them.

mod alerts;
mod auth;
mod delivery;
mod route;
mod server;
mod sink;
mod store;
mod telemetry;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::duration::{duration_str, opt_duration_str};
pub use crate::secret::{EnvSource, ProcessEnv};
pub use alerts::{is_web_url, AlertFormat, AlertTargetConfig, AlertsConfig, FailureBurst};
pub use auth::{AuthConfig, AuthScheme, JwtConfig, OAuth2Client, OAuth2Config};
pub use delivery::{BreakerConfig, BusyConfig, DeliveryConfig, RetryPolicy};
pub use route::{
    PayloadKind, PayloadSpec, PayloadTable, RateBy, RespondConfig, RouteConfig, RouteRateLimit,
    RuleConfig,
};
pub use server::{LimitsConfig, ServerConfig};
pub use sink::{BatchConfig, CognigyMode, SinkConfig, SinkKind};
pub use store::{AuditConfig, Backend, PrivacyConfig, StoreConfig, StoreUrlError, SyncMode};
pub use telemetry::TelemetryConfig;

/// Every problem found while loading a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "configuration has {} problem(s):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub store: StoreConfig,
    pub audit: AuditConfig,
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// `[sink.NAME]` tables.
    #[serde(default, rename = "sink", skip_serializing_if = "BTreeMap::is_empty")]
    pub sinks: BTreeMap<String, SinkConfig>,
    pub delivery: DeliveryConfig,
    pub privacy: PrivacyConfig,
    pub oauth2: OAuth2Config,
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    /// The built-in defaults: `defaults.toml`, the file `check-config --print-default` prints.
    fn default() -> Self {
        Config::builtin().clone()
    }
}

impl Config {
    /// Loads defaults → optional TOML file → environment, then validates.
    pub fn load(file: Option<&Path>, env: &dyn EnvSource) -> Result<Config, ConfigErrors> {
        match Self::load_report(file, env) {
            (Some(c), p) if p.is_empty() => Ok(c),
            (_, p) => Err(ConfigErrors(p)),
        }
    }

    /// Like [`Config::load`], but returns the configuration as far as it could be read
    /// together with every problem found, so callers can add their own checks to the list.
    pub fn load_report(file: Option<&Path>, env: &dyn EnvSource) -> (Option<Config>, Vec<String>) {
        let mut problems = Vec::new();
        let mut config = match file {
            Some(path) => {
                let parsed = std::fs::read_to_string(path)
                    .map_err(|e| vec![e.to_string()])
                    .and_then(|text| Self::parse_toml(&text));
                match parsed {
                    Ok((c, unknown)) => {
                        problems.extend(
                            unknown
                                .into_iter()
                                .map(|u| format!("{}: {u}", path.display())),
                        );
                        c
                    }
                    Err(p) => {
                        let p = p
                            .into_iter()
                            .map(|m| format!("{}: {m}", path.display()))
                            .collect();
                        return (None, p);
                    }
                }
            }
            None => Config::default(),
        };
        config.apply_env(env, &mut problems);
        problems.extend(config.validate());
        (Some(config), problems)
    }

    /// Parses a TOML document; unknown keys are errors, all reported at once.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        match Self::parse_toml(text) {
            Ok((c, unknown)) if unknown.is_empty() => Ok(c),
            Ok((_, unknown)) => Err(ConfigErrors(unknown)),
            Err(p) => Err(ConfigErrors(p)),
        }
    }

    /// The built-in defaults, parsed once from `defaults.toml`.
    pub fn builtin() -> &'static Config {
        static BUILTIN: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
        BUILTIN.get_or_init(|| {
            let table = toml::de::DeTable::parse(default_toml())
                .unwrap_or_else(|e| panic!("defaults.toml does not parse: {e}"));
            Config::deserialize(toml::de::Deserializer::from(table))
                .unwrap_or_else(|e| panic!("defaults.toml is not a configuration: {e}"))
        })
    }

    /// Parses a TOML document laid over the built-in defaults (`defaults.toml`): tables merge
    /// key by key, any other value (the `[[route]]` array included) replaces the default.
    /// Returns the config and every unknown key.
    fn parse_toml(text: &str) -> Result<(Config, Vec<String>), Vec<String>> {
        let mut merged = toml::de::DeTable::parse(default_toml())
            .map_err(|e| vec![format!("defaults.toml: {e}")])?;
        let user = toml::de::DeTable::parse(text).map_err(|e| vec![e.to_string()])?;
        lay_over(merged.get_mut(), user.into_inner());
        let sections = merged.get_ref().clone();
        let de = toml::de::Deserializer::from(merged);
        let mut unknown = Vec::new();
        let parsed: Result<Config, _> = serde_ignored::deserialize(de, |path| {
            let path = path.to_string();
            unknown.push(match suggest(&path) {
                Some(near) => format!("unknown key `{path}` (did you mean `{near}`?)"),
                None => format!("unknown key `{path}`"),
            });
        });
        match parsed {
            Ok(c) => Ok((c, unknown)),
            Err(mut e) => {
                // Serde stops at the first bad value; each table on its own gives the others.
                let mut each = section_errors(sections, text);
                if each.is_empty() {
                    // Spans point into the user's text (defaults never fail to deserialize).
                    e.set_input(Some(text));
                    each.push(e.to_string().trim_end().to_string());
                }
                unknown.append(&mut each);
                Err(unknown)
            }
        }
    }

    fn apply_env(&mut self, env: &dyn EnvSource, problems: &mut Vec<String>) {
        if let Some(v) = env.get("COGNIHOOK_LISTEN") {
            match v.parse() {
                Ok(a) => self.server.listen = a,
                Err(e) => problems.push(format!("COGNIHOOK_LISTEN `{v}`: {e}")),
            }
        }
        if let Some(v) = env.get("COGNIHOOK_ADMIN_LISTEN") {
            match v.parse() {
                Ok(a) => self.server.admin_listen = Some(a),
                Err(e) => problems.push(format!("COGNIHOOK_ADMIN_LISTEN `{v}`: {e}")),
            }
        }
        if let Some(v) = env.get("COGNIHOOK_DATA_DIR") {
            self.store.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env.get("COGNIHOOK_DATABASE_URL") {
            self.store.url = Some(v.into());
        }
        if let Some(v) = env.get("COGNIHOOK_ADMIN_TOKEN") {
            self.server.admin_token = Some(v.into());
        }
        self.telemetry.apply_env(env);
    }

    /// Semantic checks; returns every problem.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(mut e) = crate::event::Redaction::compile(&self.privacy.redact) {
            p.append(&mut e);
        }
        if self.limits.max_body_bytes == 0 {
            p.push("limits.max_body_bytes must be greater than 0".into());
        }
        if self.limits.max_response_bytes == 0 {
            p.push("limits.max_response_bytes must be greater than 0".into());
        }
        if self.limits.deadline.is_zero() {
            p.push("limits.deadline must be greater than 0".into());
        }
        if self.limits.max_in_flight == 0 {
            p.push("limits.max_in_flight must be at least 1".into());
        }
        if self.server.max_connections == 0 {
            p.push("server.max_connections must be at least 1".into());
        }
        if self.server.header_read_timeout.is_zero() {
            p.push("server.header_read_timeout must be greater than 0".into());
        }
        if self.server.idle_timeout.is_zero() {
            p.push("server.idle_timeout must be greater than 0".into());
        }
        if self.store.max_batch == 0 {
            p.push("store.max_batch must be greater than 0".into());
        }
        if self.delivery.nice > 19 {
            p.push(format!(
                "delivery.nice must be 0..=19, not {}",
                self.delivery.nice
            ));
        }
        if self.store.background_nice > 19 {
            p.push(format!(
                "store.background_nice must be 0..=19, not {}",
                self.store.background_nice
            ));
        }
        if self.store.queue_depth == 0 {
            p.push("store.queue_depth must be greater than 0".into());
        }
        let share = self.delivery.busy.share;
        if !(share > 0.0 && share <= 1.0) {
            p.push(format!(
                "delivery.busy.share must be more than 0 and at most 1, not {share}"
            ));
        }
        if let Err(e) = self.store.backend() {
            p.push(e.to_string());
        }
        if self.server.simulator
            && !self.server.simulator_allow_remote
            && !self.server.listen.ip().is_loopback()
        {
            p.push(format!(
                "server.simulator is on but the listener {} is not a loopback address; \
                 listen on loopback (COGNIHOOK_LISTEN=127.0.0.1:8080, or serve --listen \
                 127.0.0.1:8080) or set server.simulator_allow_remote = true",
                self.server.listen
            ));
        }
        if self.routes.is_empty() {
            p.push("no routes: define at least one [[route]]".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut paths = std::collections::HashSet::new();
        for r in &self.routes {
            let at = format!("route `{}`", r.name);
            if r.name.is_empty() {
                p.push("a route has an empty name".into());
            }
            if !names.insert(r.name.as_str()) {
                p.push(format!("{at}: name used by more than one route"));
            }
            if r.name == "_alerts" {
                p.push(format!(
                    "{at}: the name is reserved (alerts are events of the route `_alerts`)"
                ));
            }
            if !r.path.starts_with('/') {
                p.push(format!("{at}: path `{}` must start with `/`", r.path));
            } else if r.path.contains(['{', '}', '*']) {
                p.push(format!("{at}: path `{}` must be literal", r.path));
            }
            if !paths.insert(r.path.as_str()) {
                p.push(format!(
                    "{at}: path `{}` used by more than one route",
                    r.path
                ));
            }
            if matches!(
                r.path.as_str(),
                "/healthz" | "/readyz" | "/metrics" | "/stats"
            ) || r.path.starts_with("/admin")
                || r.path.starts_with("/simulate")
                || r.path.starts_with("/oauth")
                || r.path.starts_with("/console")
            {
                p.push(format!("{at}: path `{}` is reserved", r.path));
            }
            // The `auth` table's own keys are checked where the route is built
            // (`ingest::auth::spec::AuthSpec::check`, called by `ingest::Routes::build`).
            if r.max_response_bytes == Some(0) {
                p.push(format!("{at}: max_response_bytes must be greater than 0"));
            }
            if let Some(l) = r.rate_limit {
                if l.max == 0 || l.per.is_zero() {
                    p.push(format!("{at}: rate_limit needs max >= 1 and per > 0"));
                }
            }
            if let Some(resp) = &r.respond {
                match self.sinks.get(&resp.upstream) {
                    None => p.push(format!(
                        "{at}: respond.upstream `{}` is not defined (no [sink.{}] table)",
                        resp.upstream, resp.upstream
                    )),
                    Some(s) if s.kind != SinkKind::Http => p.push(format!(
                        "{at}: respond.upstream `{}` must be an http sink, not {}",
                        resp.upstream,
                        s.kind.name()
                    )),
                    Some(_) => {}
                }
                if r.sinks.contains(&resp.upstream) {
                    p.push(format!(
                        "{at}: respond.upstream `{}` is also in `sinks` (it would be called twice)",
                        resp.upstream
                    ));
                }
                if let Some(late) = &resp.on_late {
                    if !self.sinks.contains_key(late) {
                        p.push(format!(
                            "{at}: respond.on_late `{late}` is not defined (no [sink.{late}] table)"
                        ));
                    }
                    if late == &resp.upstream {
                        p.push(format!(
                            "{at}: respond.on_late must not be the upstream itself"
                        ));
                    }
                    if r.sinks.contains(late) {
                        p.push(format!(
                            "{at}: respond.on_late `{late}` is also in `sinks` (an event has one row per sink)"
                        ));
                    }
                }
                if resp.within.is_zero() || resp.within >= self.limits.deadline {
                    p.push(format!(
                        "{at}: respond.within must be greater than 0 and less than limits.deadline ({})",
                        humantime::format_duration(self.limits.deadline)
                    ));
                }
            }
            let mut seen = std::collections::HashSet::new();
            for s in &r.sinks {
                if !self.sinks.contains_key(s) {
                    p.push(format!(
                        "{at}: sink `{s}` is not defined (no [sink.{s}] table)"
                    ));
                }
                if !seen.insert(s) {
                    p.push(format!("{at}: sink `{s}` listed twice"));
                }
            }
        }
        self.validate_oauth2(&mut p);
        self.alerts.validate(&mut p);
        // Each sink's own keys are checked where it is built (`delivery::spec::SinkSpec::check`, called by
        // `delivery::build_sinks`); `serve` and `check-config` build every sink.
        p
    }

    /// `[oauth2]` and the routes that accept its tokens name each other.
    fn validate_oauth2(&self, p: &mut Vec<String>) {
        let o = &self.oauth2;
        if o.token_ttl.is_zero() {
            p.push("oauth2.token_ttl must be greater than 0".into());
        }
        if o.failed_auth_limit.max == 0 || o.failed_auth_limit.per.is_zero() {
            p.push("oauth2.failed_auth_limit needs max >= 1 and per > 0".into());
        }
        let mut ids = std::collections::HashSet::new();
        for c in &o.clients {
            let at = format!("oauth2.client `{}`", c.id);
            if c.id.is_empty() || c.id.contains(':') {
                p.push(format!("{at}: id must not be empty or contain `:`"));
            }
            if !ids.insert(&c.id) {
                p.push(format!("{at}: id listed twice"));
            }
            if c.routes.is_empty() {
                p.push(format!("{at}: `routes` names no route"));
            }
            for name in &c.routes {
                match self.routes.iter().find(|r| &r.name == name) {
                    None => p.push(format!("{at}: route `{name}` is not defined")),
                    Some(r) if r.auth.scheme != AuthScheme::OAuth2 => p.push(format!(
                        "{at}: route `{name}` has auth scheme {}, not oauth2",
                        r.auth.scheme.name()
                    )),
                    Some(_) => {}
                }
            }
        }
        for r in self
            .routes
            .iter()
            .filter(|r| r.auth.scheme == AuthScheme::OAuth2)
        {
            if !o.clients.iter().any(|c| c.routes.contains(&r.name)) {
                p.push(format!(
                    "route `{}`: auth scheme oauth2 but no [[oauth2.client]] lists it in `routes`",
                    r.name
                ));
            }
        }
    }

    /// The effective configuration as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        // Secrets and URLs that may carry credentials are types that serialise masked
        // (`secret::{SecretRef, SecretString, SecretUrl}`).
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Lays `over` on `base`: where both hold a table the keys merge, anything else replaces.
fn lay_over<'i>(base: &mut toml::de::DeTable<'i>, over: toml::de::DeTable<'i>) {
    use toml::de::DeValue;
    for (key, value) in over {
        let span = value.span();
        match (base.get_mut(&key).map(|b| b.get_mut()), value.into_inner()) {
            (Some(DeValue::Table(b)), DeValue::Table(o)) => lay_over(b, o),
            (_, v) => {
                base.insert(key, toml::Spanned::new(span, v));
            }
        }
    }
}

/// The first bad value of each table of a configuration that does not deserialize: every
/// section, every `[[route]]` and every `[sink.NAME]` on its own, so one run reports them
/// all (within one table serde still stops at the first).
fn section_errors(table: toml::de::DeTable<'_>, text: &str) -> Vec<String> {
    use serde::de::IntoDeserializer as _;
    use toml::de::DeValue;
    fn check<'de, T: serde::Deserialize<'de>>(
        v: toml::Spanned<DeValue<'de>>,
        text: &str,
        out: &mut Vec<String>,
    ) {
        if let Err(mut e) = T::deserialize(v.into_deserializer()) {
            e.set_input(Some(text));
            out.push(e.to_string().trim_end().to_string());
        }
    }
    let mut out = Vec::new();
    for (key, value) in table {
        match key.get_ref().as_ref() {
            "server" => check::<ServerConfig>(value, text, &mut out),
            "limits" => check::<LimitsConfig>(value, text, &mut out),
            "store" => check::<StoreConfig>(value, text, &mut out),
            "audit" => check::<AuditConfig>(value, text, &mut out),
            "delivery" => check::<DeliveryConfig>(value, text, &mut out),
            "privacy" => check::<PrivacyConfig>(value, text, &mut out),
            "oauth2" => check::<OAuth2Config>(value, text, &mut out),
            "alerts" => check::<AlertsConfig>(value, text, &mut out),
            "telemetry" => check::<TelemetryConfig>(value, text, &mut out),
            "route" => match value.into_inner() {
                DeValue::Array(routes) => {
                    for r in routes {
                        check::<RouteConfig>(r, text, &mut out);
                    }
                }
                other => check::<Vec<RouteConfig>>(toml::Spanned::new(0..0, other), text, &mut out),
            },
            "sink" => match value.into_inner() {
                DeValue::Table(sinks) => {
                    for (_, sink) in sinks {
                        check::<SinkConfig>(sink, text, &mut out);
                    }
                }
                other => check::<BTreeMap<String, SinkConfig>>(
                    toml::Spanned::new(0..0, other),
                    text,
                    &mut out,
                ),
            },
            _ => {}
        }
    }
    out
}

/// Every key `defaults.toml` documents, commented-out examples included, as
/// `section.key` (`route.path`, `server.admin_listen`, `oauth2.client.id`).
fn documented_keys() -> &'static [String] {
    static KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let mut section = String::new();
        let mut keys = Vec::new();
        for line in default_toml().lines() {
            let line = line.trim_start_matches('#').trim();
            if let Some(header) = line.strip_prefix('[') {
                section = header.trim_matches(|c| c == '[' || c == ']').to_string();
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            // A TOML value, not prose such as "# unset = served on …".
            let value = value.trim_start();
            let is_value = value.starts_with(['"', '\'', '[', '{', 't', 'f'])
                && !value.starts_with("the ")
                || value.starts_with(|c: char| c.is_ascii_digit());
            if is_value
                && !key.is_empty()
                && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            {
                keys.push(if section.is_empty() {
                    key.to_string()
                } else {
                    format!("{section}.{key}")
                });
            }
        }
        keys
    })
}

/// The documented key nearest to an unknown one in the same table (`server.lisen` →
/// `server.listen`), if one is close.
fn suggest(unknown: &str) -> Option<String> {
    let parts: Vec<&str> = unknown
        .split('.')
        .filter(|p| !p.chars().all(|c| c.is_ascii_digit()))
        .collect();
    let (last, parent) = parts.split_last()?;
    let parent = parent.join(".");
    documented_keys()
        .iter()
        .filter_map(|k| {
            let (kp, kl) = k.rsplit_once('.').unwrap_or(("", k));
            (kp == parent && kl != *last).then_some(kl)
        })
        .map(|k| (strsim::damerau_levenshtein(k, last), k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min()
        .map(|(_, k)| k.to_string())
}

/// The built-in default configuration as a commented TOML file that is itself a valid config
/// (`check-config --print-default`). A test checks that it parses to exactly
/// [`Config::default`].
pub fn default_toml() -> &'static str {
    include_str!("defaults.toml")
}
