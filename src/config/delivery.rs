//! `[delivery]`: the delivery workers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration_str;

/// `[delivery]`: the delivery workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryConfig {
    /// Run the delivery workers in `serve`.
    pub enabled: bool,
    /// Poll for due rows at least this often (new events wake the workers at once).
    #[serde(with = "duration_str")]
    pub poll_interval: Duration,
    /// Niceness (0..=19) of the delivery thread. Above 0, the kernel favours ingest when both
    /// want the CPU: answers to Cognigy stay fast under load and deliveries catch up after.
    pub nice: u8,
    /// A claim's lease is two sends' timeouts plus this; after a crash, another worker takes
    /// the row over once the lease has run out.
    #[serde(with = "duration_str")]
    pub lease_margin: Duration,
    /// Delivery holds back while ingest is saturated.
    pub busy: BusyConfig,
}

/// `[delivery] busy = { in_flight, interval, share }`: while at least `in_flight` webhook
/// requests are being handled at once (seen within the last `interval`) and the process keeps
/// its CPUs busy (see `delivery::pace`), ingest is saturated and the workers start, per `interval`, sends for `share` of the rows accepted in the
/// interval before (and at least one round of every sink's `concurrency`): the answers
/// Cognigy waits for keep most of the CPU, deliveries keep going, and the backlog drains at
/// full speed once the load eases. `interval = "0s"` turns this off (see `delivery::pace`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusyConfig {
    pub in_flight: usize,
    #[serde(with = "duration_str")]
    pub interval: Duration,
    pub share: f64,
}

impl Default for BusyConfig {
    /// From the built-in defaults (`defaults.toml`).
    fn default() -> Self {
        super::Config::builtin().delivery.busy
    }
}

impl Default for DeliveryConfig {
    /// From the built-in defaults (`defaults.toml`).
    fn default() -> Self {
        super::Config::builtin().delivery.clone()
    }
}

/// Per-sink retry settings (defaults from the seeds: 3 attempts, base 1 s, max 10 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    #[serde(with = "super::duration_str")]
    pub base_delay: Duration,
    #[serde(with = "super::duration_str")]
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// Breaker settings of one sink.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// Time open before one probe is let through.
    #[serde(with = "super::duration_str")]
    pub cool_down: Duration,
    /// Also open when this share of the last `window` outcomes failed (0 disables).
    pub failure_ratio: f64,
    /// Outcomes the ratio is computed over; the ratio applies once the window is full.
    pub window: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down: Duration::from_secs(30),
            failure_ratio: 0.0,
            window: 20,
        }
    }
}
