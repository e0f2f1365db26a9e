//! HTTP: the router (webhook routes, simulator, operations and admin endpoints), the shared
//! state handlers see, and the listener loop with graceful shutdown.

pub mod error;
pub mod ops;
pub mod webhook;

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::LimitsConfig;
use crate::ingest::Routes;
use crate::store::Store;
use crate::telemetry::audit::Audit;
use crate::telemetry::stats::Stats;
use error::ApiError;

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub store: Store,
    pub stats: Stats,
    pub audit: Audit,
    pub metrics: PrometheusHandle,
    pub limits: LimitsConfig,
    /// SHA-256 of the admin token; `None` disables the admin API.
    pub admin_token_hash: Option<[u8; 32]>,
    pub deliverer: Arc<crate::delivery::worker::Deliverer>,
    shutting_down: AtomicBool,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(
        store: Store,
        audit: Audit,
        metrics: PrometheusHandle,
        limits: LimitsConfig,
        admin_token: Option<&str>,
        deliverer: Arc<crate::delivery::worker::Deliverer>,
    ) -> AppState {
        AppState(Arc::new(Shared {
            store,
            stats: Stats::default(),
            audit,
            metrics,
            limits,
            admin_token_hash: admin_token.map(|t| Sha256::digest(t.as_bytes()).into()),
            deliverer,
            shutting_down: AtomicBool::new(false),
        }))
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
}

/// The public router: webhook routes, the simulator when on, health endpoints and, when
/// `with_admin`, the operations and admin endpoints too.
pub fn public_router(
    state: AppState,
    routes: &Routes,
    simulator: bool,
    with_admin: bool,
) -> Router {
    let mut r = Router::new();
    let endpoint = |route: &Arc<crate::ingest::Route>, simulated: bool| {
        let (st, ep) = (
            state.clone(),
            Arc::new(webhook::Endpoint::new(route.clone(), simulated)),
        );
        post(move |req: Request| webhook::handle(st, ep, req))
    };
    for route in &routes.0 {
        r = r.route(&route.path, endpoint(route, false));
        if simulator {
            r = r.route(&format!("/simulate{}", route.path), endpoint(route, true));
        }
    }
    if simulator {
        // `/simulate` runs the `/webhook` pipeline (seed 000), or the first route's.
        if let Some(route) = routes
            .0
            .iter()
            .find(|r| r.path == "/webhook")
            .or_else(|| routes.0.first())
        {
            r = r.route("/simulate", endpoint(route, true));
        }
    }
    r = r
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz));
    if with_admin {
        r = r.merge(admin_routes());
    }
    finish(r, state)
}

/// The admin listener's router (`COGNIHOOK_ADMIN_LISTEN`).
pub fn admin_router(state: AppState) -> Router {
    let r = admin_routes()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz));
    finish(r, state)
}

fn admin_routes() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(ops::metrics))
        .route("/stats", get(ops::stats))
        .route("/admin/events/{id}", get(ops::admin_event))
        .route("/admin/dead-letters", get(ops::admin_dead_letters))
        .route("/admin/dead-letters/replay", post(ops::admin_replay))
        .route(
            "/admin/dead-letters/{id}",
            axum::routing::delete(ops::admin_purge),
        )
        .route("/admin/sinks", get(ops::admin_sinks))
        .route("/admin/sinks/{name}/{action}", post(ops::admin_sink_action))
}

fn finish(r: Router<AppState>, state: AppState) -> Router {
    r.fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` fires, then stops accepting and waits up to
/// `grace` for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    header_read_timeout: Duration,
    grace: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(router.clone());
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = shutdown.cancelled() => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace = ?grace, "in-flight requests still running after the grace period");
        }
    }
}
