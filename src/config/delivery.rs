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
/// requests are being handled at once (seen within the last `interval`), ingest is saturated
/// and the workers start, per `interval`, sends for `share` of the rows accepted in the
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
