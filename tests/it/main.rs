//! The one integration-test binary: `support/` plus one file per feature.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

mod alerts;
mod auth;
mod bearer;
mod binary;
mod brokers;
mod browser;
mod cognigy_sink;
mod console;
mod crash;
mod delivery;
mod deploy;
mod docs;
mod openapi;
mod overload;
mod payloads;
mod postgres;
mod properties;
mod recipe;
mod replicas;
mod respond;
mod router;
mod server;
mod simulate;
mod store_suite;
mod traces;
mod upgrade;
