//! HTTP: the router (webhook routes, simulator, operations and admin endpoints), the shared
//! state handlers see, and the listener loop with graceful shutdown.

pub mod admin;
pub mod admission;
pub mod conn;
pub mod console;
pub mod error;
pub mod oauth;
pub mod openapi;
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
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::LimitsConfig;
use crate::ingest::Routes;
use crate::store::Store;
use crate::telemetry::audit::Audit;
use crate::telemetry::stats::Stats;
use crate::telemetry::throttle::Throttle;
use error::ApiError;

static ACCEPT_FAILED: Throttle = Throttle::new(Duration::from_secs(10));
static CONNECTIONS_REFUSED: Throttle = Throttle::new(Duration::from_secs(10));

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
    /// Ingest's load (webhook requests in flight, rows committed), read by the delivery worker.
    pub load: Arc<crate::load::IngestLoad>,
    /// Webhook requests admitted and not yet answered (`limits.max_in_flight`).
    pub in_flight: admission::InFlight,
    /// Per-route signals for the alerts (refused credentials, secrets matched).
    pub signals: Arc<crate::telemetry::watch::Signals>,
    /// Request spans (off unless `[telemetry]` has an endpoint).
    pub tracer: crate::telemetry::trace::Tracer,
    shutting_down: AtomicBool,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// The state of a gateway; `/metrics` renders the process's recorder (installed here if
    /// it is not yet).
    pub fn new(
        store: Store,
        audit: Audit,
        limits: LimitsConfig,
        admin_token: Option<&str>,
        deliverer: Arc<crate::delivery::worker::Deliverer>,
        load: Arc<crate::load::IngestLoad>,
        tracer: crate::telemetry::trace::Tracer,
    ) -> AppState {
        let max_in_flight = limits.max_in_flight;
        AppState(Arc::new(Shared {
            store,
            stats: Stats::default(),
            audit,
            metrics: crate::telemetry::metrics::install(),
            limits,
            admin_token_hash: admin_token.map(|t| Sha256::digest(t.as_bytes()).into()),
            deliverer,
            load,
            in_flight: admission::InFlight::new(max_in_flight),
            signals: Arc::default(),
            tracer,
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

/// The webhook endpoints by their literal paths (routes' paths are literal: `config`
/// refuses `{`, `}` and `*`), which `serve` answers a POST to without the router: axum's
/// routing and its boxed handler were ~2.7k instructions a request, ~4 % of the request path
/// (bench/README.md, twenty-eighth session). The router has the same endpoints, and every
/// other request (another method on these paths included) goes through it.
#[derive(Clone, Default)]
pub struct Direct {
    posts: Arc<crate::FastMap<String, (AppState, Arc<webhook::Endpoint>)>>,
}

impl Direct {
    /// The endpoint a request is a POST to, if its path is a webhook route's.
    pub fn post_to<B>(&self, req: &http::Request<B>) -> Option<(AppState, Arc<webhook::Endpoint>)> {
        if req.method() != http::Method::POST || self.posts.is_empty() {
            return None;
        }
        self.posts.get(req.uri().path()).cloned()
    }
}

/// The public router: webhook routes, the simulator when on, health endpoints and, when
/// `with_admin`, the operations and admin endpoints too; with the webhook endpoints `serve`
/// takes before the router.
pub fn public_router(
    state: AppState,
    routes: &Routes,
    simulator: bool,
    with_admin: bool,
    token_issuer: Option<Arc<crate::ingest::auth::oauth2::TokenIssuer>>,
    console: Arc<console::Console>,
) -> (Router, Direct) {
    let mut r = Router::new();
    let mut posts = crate::FastMap::default();
    let mut endpoint = |path: String, route: &Arc<crate::ingest::Route>, simulated: bool| {
        let (st, ep) = (
            state.clone(),
            Arc::new(webhook::Endpoint::new(
                route.clone(),
                simulated,
                &state.signals,
            )),
        );
        posts.insert(path, (st.clone(), ep.clone()));
        post(move |req: Request| webhook::handle(st, ep, req))
    };
    for route in &routes.0 {
        r = r.route(&route.path, endpoint(route.path.clone(), route, false));
        if simulator {
            let path = format!("/simulate{}", route.path);
            r = r.route(&path, endpoint(path.clone(), route, true));
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
            r = r.route("/simulate", endpoint("/simulate".to_string(), route, true));
        }
    }
    if let Some(issuer) = token_issuer {
        r = r.route(
            "/oauth/token",
            post(move |req: Request| oauth::token(issuer.clone(), req)),
        );
    }
    r = r
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz));
    if with_admin {
        r = r
            .merge(admin_routes(&state))
            .merge(console::routes(&state, console));
    }
    let direct = Direct {
        posts: Arc::new(posts),
    };
    (finish(r, state), direct)
}

/// The admin listener's router (`COGNIHOOK_ADMIN_LISTEN`).
pub fn admin_router(state: AppState, console: Arc<console::Console>) -> Router {
    let r = admin_routes(&state)
        .merge(console::routes(&state, console))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz));
    finish(r, state)
}

fn admin_routes(state: &AppState) -> Router<AppState> {
    let require_admin = axum::middleware::from_fn_with_state(state.clone(), admin::require_admin);
    Router::new()
        .route("/admin/events/{id}", get(admin::event))
        .route("/admin/dead-letters", get(admin::dead_letters))
        .route("/admin/dead-letters/replay", post(admin::replay))
        .route(
            "/admin/dead-letters/{id}",
            axum::routing::delete(admin::purge),
        )
        .route(
            "/admin/sessions/{id}",
            axum::routing::delete(admin::forget_session),
        )
        .route("/admin/sinks", get(admin::sinks))
        .route("/admin/sinks/{name}/{action}", post(admin::sink_action))
        .route_layer(require_admin)
        .route("/metrics", get(ops::metrics))
        .route("/stats", get(ops::stats))
}

fn finish(r: Router<AppState>, state: AppState) -> Router {
    r.fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` fires, then stops accepting and waits up to
/// `grace` for in-flight requests to finish; a POST to one of `direct`'s paths is answered
/// without the router. `name` labels the listener's connection metrics.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    direct: Direct,
    shutdown: CancellationToken,
    limits: conn::ConnLimits,
    grace: Duration,
) {
    use crate::telemetry::metrics::{
        CONNECTIONS_OPEN, CONNECTIONS_REFUSED_TOTAL, CONNECTIONS_TIMED_OUT_TOTAL,
    };
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let open = metrics::gauge!(CONNECTIONS_OPEN, "listener" => name);
    let refused = metrics::counter!(CONNECTIONS_REFUSED_TOTAL, "listener" => name);
    let occupancy = Arc::new(conn::Occupancy::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        if let Some(suppressed) = ACCEPT_FAILED.check() {
                            tracing::warn!(error = %e, suppressed, "accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                // Over the cap the connection is closed before anything is read from it.
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    refused.increment(1);
                    if let Some(suppressed) = CONNECTIONS_REFUSED.check() {
                        tracing::warn!(listener = name, max_connections = limits.max_connections,
                            suppressed, "connection refused: max_connections are open \
                            (`suppressed`: more since the last line)");
                    }
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let clock = Arc::new(conn::Clock::new());
                let service = {
                    let (router, direct, clock) = (router.clone(), direct.clone(), clock.clone());
                    hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                        let first_byte = clock.request_started();
                        req.extensions_mut().insert(conn::Arrival { peer, first_byte });
                        let (router, to, clock) = (router.clone(), direct.post_to(&req), clock.clone());
                        async move {
                            let r = match to {
                                // Boxed as the router boxes it: the handler's future is large.
                                Some((state, ep)) => Ok(Box::pin(webhook::handle(
                                    state,
                                    ep,
                                    req.map(axum::body::Body::new),
                                ))
                                .await),
                                None => tower::ServiceExt::oneshot(router, req).await,
                            };
                            clock.answered();
                            r
                        }
                    })
                };
                // The watchdog below enforces the head and idle timeouts; hyper's own head
                // timer would also run while a kept-alive connection is idle.
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(None)
                    .serve_connection(TokioIo::new(conn::Watched::new(stream, clock.clone())), service);
                let connection = graceful.watch(connection);
                let (open, occupancy) = (open.clone(), occupancy.clone());
                tokio::spawn(async move {
                    open.increment(1.0);
                    occupancy.opened();
                    tokio::select! {
                        r = connection => if let Err(e) = r {
                            tracing::debug!(error = %e, "connection ended with an error");
                        },
                        why = clock.expired(&limits) => {
                            metrics::counter!(CONNECTIONS_TIMED_OUT_TOTAL, "listener" => name,
                                "phase" => why.label()).increment(1);
                        }
                    }
                    open.decrement(1.0);
                    drop(slot);
                    if occupancy.closed() {
                        tokio::task::spawn_blocking(conn::release_free_memory);
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
