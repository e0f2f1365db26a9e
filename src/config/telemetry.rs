//! `[telemetry]`: OpenTelemetry trace export. Each key has the standard variable that
//! overrides it (`OTEL_*`, read in `Config::apply_env`); with no endpoint, tracing is off.

use serde::{Deserialize, Serialize};

use crate::secret::SecretString;

/// `[telemetry]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base URL; traces go to `<endpoint>/v1/traces`
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The traces URL itself, used as given (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traces_endpoint: Option<String>,
    /// `key=value,…` headers on every export, e.g. an API key (`OTEL_EXPORTER_OTLP_HEADERS`;
    /// `OTEL_EXPORTER_OTLP_TRACES_HEADERS` adds to it). Never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<SecretString>,
    /// `service.name` (`OTEL_SERVICE_NAME`); default `cognihook`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// `key=value,…` resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_attributes: Option<String>,
    /// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on` (the default),
    /// `parentbased_always_off` or `parentbased_traceidratio` (`OTEL_TRACES_SAMPLER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    /// The ratio of the `…traceidratio` samplers (`OTEL_TRACES_SAMPLER_ARG`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler_arg: Option<String>,
    /// `OTEL_SDK_DISABLED=true`: no traces whatever else is set.
    #[serde(default)]
    pub disabled: bool,
}

impl TelemetryConfig {
    /// Lays the standard `OTEL_*` variables over the file's keys.
    pub fn apply_env(&mut self, env: &dyn crate::secret::EnvSource) {
        let get = |name: &str| env.get(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            self.endpoint = Some(v);
        }
        if let Some(v) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            self.traces_endpoint = Some(v);
        }
        let headers: Vec<String> = [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ]
        .iter()
        .filter_map(|n| get(n))
        .collect();
        if !headers.is_empty() {
            self.headers = Some(headers.join(",").into());
        }
        if let Some(v) = get("OTEL_SERVICE_NAME") {
            self.service_name = Some(v);
        }
        if let Some(v) = get("OTEL_RESOURCE_ATTRIBUTES") {
            self.resource_attributes = Some(v);
        }
        if let Some(v) = get("OTEL_TRACES_SAMPLER") {
            self.sampler = Some(v);
        }
        if let Some(v) = get("OTEL_TRACES_SAMPLER_ARG") {
            self.sampler_arg = Some(v);
        }
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            self.disabled = true;
        }
    }
}
