//! `[alerts]`: what the gateway watches and where it says so (see `crate::alerts`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::SecretRef;

/// `[alerts]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertsConfig {
    /// How often conditions are checked (pending age, store, circuits, counters).
    #[serde(with = "super::duration_str")]
    pub interval: Duration,
    /// One alert per kind and subject per window; what else happens inside it is counted
    /// and reported when the window ends.
    #[serde(with = "super::duration_str")]
    pub window: Duration,
    /// Links in alerts point into the console under this URL (e.g.
    /// `https://gw.example/console/`); unset = alerts carry no link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_url: Option<String>,
    /// A sink's oldest pending delivery older than this fires `pending_age`.
    #[serde(with = "super::duration_str")]
    pub pending_age: Duration,
    /// This many refused credentials on one route within `within` fire `auth_failures`.
    pub auth_failures: FailureBurst,
    /// A secret of a rotation set (a route with two or more) that has not matched for this
    /// long, while another one of the set has, fires `secret_unused`.
    #[serde(with = "super::duration_str")]
    pub secret_unused: Duration,
    /// `[alerts.target.NAME]` tables.
    #[serde(default, rename = "target", skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<String, AlertTargetConfig>,
}

impl Default for AlertsConfig {
    /// From the built-in defaults (`defaults.toml`).
    fn default() -> Self {
        super::Config::builtin().alerts.clone()
    }
}

/// `auth_failures = { count = 20, within = "1m" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureBurst {
    pub count: u32,
    #[serde(with = "super::duration_str")]
    pub within: Duration,
}

/// Formats of an alert target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    /// A Slack incoming webhook (`{"text": …}` with blocks).
    Slack,
    /// A Microsoft Teams workflow webhook (an Adaptive Card message).
    Teams,
    /// The alert itself as JSON.
    Webhook,
}

/// One `[alerts.target.NAME]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertTargetConfig {
    pub kind: AlertFormat,
    /// A secret reference (`env:NAME`, `file:PATH`) or the URL itself: a Slack or Teams
    /// webhook URL is a credential, so it is never shown.
    pub url: SecretRef,
    /// Signs each alert like the http sink (`X-Cognihook-Signature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretRef>,
    /// Time one attempt may take.
    #[serde(default = "default_timeout", with = "super::duration_str")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl AlertsConfig {
    /// Checks the section; adds every problem to `p`.
    pub fn validate(&self, p: &mut Vec<String>) {
        if self.interval.is_zero() {
            p.push("alerts.interval must be greater than 0".into());
        }
        if self.window < self.interval {
            p.push("alerts.window must be at least alerts.interval".into());
        }
        if self.auth_failures.count == 0 || self.auth_failures.within.is_zero() {
            p.push("alerts.auth_failures needs count >= 1 and within > 0".into());
        }
        if let Some(u) = &self.console_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                p.push(format!(
                    "alerts.console_url `{u}` must be an http:// or https:// URL"
                ));
            }
        }
        for (name, t) in &self.targets {
            let at = format!("alerts.target `{name}`");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                p.push(format!("{at}: names use letters, digits, `-` and `_`"));
            }
            // A reference is resolved (and its URL checked) when the alerts are built.
            let literal = t.url.expose();
            if !(literal.starts_with("env:") || literal.starts_with("file:") || is_web_url(literal))
            {
                p.push(format!(
                    "{at}: url must be an absolute http:// or https:// URL (or env:NAME, file:PATH)"
                ));
            }
            if t.timeout.is_zero() {
                p.push(format!("{at}: timeout must be greater than 0"));
            }
        }
    }
}

/// An absolute `http://` or `https://` URL with a host.
pub fn is_web_url(text: &str) -> bool {
    matches!(text.parse::<http::Uri>(),
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some())
}
