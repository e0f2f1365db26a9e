//! `[server]` and `[limits]`: listeners, connections, request limits.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration_str;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerConfig {
    /// Public listener.
    pub listen: SocketAddr,
    /// Separate listener for `/metrics`, `/stats`, `/admin/*`; unset = public listener.
    pub admin_listen: Option<SocketAddr>,
    /// Adds `POST /simulate` and `POST /simulate/<route path>` (SPEC §10).
    pub simulator: bool,
    /// Allows the simulator on a non-loopback listener.
    pub simulator_allow_remote: bool,
    /// Time allowed to read a request's head, from the connection's start or the request's
    /// first byte; past it the connection is closed.
    #[serde(with = "duration_str")]
    pub header_read_timeout: Duration,
    /// A kept-alive connection with no request this long after its last answer is closed.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// Open connections per listener; a connection over it is closed at once.
    pub max_connections: usize,
    /// Time allowed to drain in-flight requests on shutdown.
    #[serde(with = "duration_str")]
    pub shutdown_grace: Duration,
    /// Bearer token for `/admin/*` (usually from `COGNIHOOK_ADMIN_TOKEN`); unset = admin disabled.
    pub admin_token: Option<crate::secret::SecretString>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub max_response_bytes: usize,
    /// From request start to response.
    #[serde(with = "duration_str")]
    pub deadline: Duration,
    /// Time allowed to receive the body (answers 408); never more than `deadline`.
    #[serde(with = "duration_str")]
    pub body_read_timeout: Duration,
    /// Webhook requests admitted and not yet answered; one more answers 503 at once.
    pub max_in_flight: usize,
}

impl Default for ServerConfig {
    /// From the built-in defaults (`defaults.toml`).
    fn default() -> Self {
        super::Config::builtin().server.clone()
    }
}

impl Default for LimitsConfig {
    /// From the built-in defaults (`defaults.toml`).
    fn default() -> Self {
        super::Config::builtin().limits.clone()
    }
}
