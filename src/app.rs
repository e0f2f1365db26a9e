//! `App::build` is the one place everything is wired; `App::run` serves until shutdown.
//!
//! Shutdown order: the trigger fires → `/readyz` turns 503, the listeners stop accepting and
//! the delivery worker stops claiming → in-flight requests and sends finish (each bounded by
//! `server.shutdown_grace`; cut-off sends come due again by lease) → the store writer commits
//! what is queued and stops → the audit log is flushed.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{AuthScheme, Config, EnvSource};
use crate::delivery::sink::SinkRuntime;
use crate::delivery::worker::Deliverer;
use crate::http::{self, AppState};
use crate::ingest::auth::oauth2::TokenIssuer;
use crate::ingest::Routes;
use crate::store::{Purpose, Store};
use crate::telemetry::{self, audit::Audit};

/// What a configuration builds before anything runs: routes (secrets resolved, rules
/// compiled) and sink clients. Every problem is reported at once.
pub struct Wiring {
    pub routes: Routes,
    pub sinks: Vec<Arc<SinkRuntime>>,
    /// `/oauth/token`, when `[oauth2]` has clients.
    pub token_issuer: Option<Arc<TokenIssuer>>,
    /// Where traces go, when `[telemetry]` (or `OTEL_*`) names an endpoint.
    pub traces: Option<telemetry::trace::TraceSettings>,
}

impl Wiring {
    pub fn build(config: &Config, env: &dyn EnvSource) -> Result<Wiring, Vec<String>> {
        // Metric handles made below must find the recorder installed.
        crate::telemetry::metrics::install();
        let routes = Routes::build(config, env);
        let sinks = crate::delivery::build_sinks(config, env).and_then(|mut sinks| {
            let alerts =
                crate::alerts::build_sinks(&config.alerts, config.delivery.lease_margin, env)?;
            sinks.extend(alerts);
            Ok(sinks)
        });
        let keys = install_data_keys(config, env).map_err(|e| vec![e.to_string()]);
        let store = crate::store::check(&config.store).map_err(|e| vec![e.to_string()]);
        let issuer = TokenIssuer::build(&config.oauth2, env);
        let traces = telemetry::trace::TraceSettings::check(&config.telemetry);
        match (routes, sinks, keys, store, issuer, traces) {
            (Ok(routes), Ok(sinks), Ok(()), Ok(_), Ok(issuer), Ok(traces)) => Ok(Wiring {
                routes,
                sinks,
                token_issuer: issuer.map(Arc::new),
                traces,
            }),
            (r, s, k, st, i, t) => Err(r
                .err()
                .unwrap_or_default()
                .into_iter()
                .chain(s.err().unwrap_or_default())
                .chain(k.err().unwrap_or_default())
                .chain(st.err().unwrap_or_default())
                .chain(i.err().unwrap_or_default())
                .chain(t.err().unwrap_or_default())
                .collect()),
        }
    }
}

/// Why `[privacy] encrypt_key` gives no usable data keys.
#[derive(Debug, thiserror::Error)]
pub enum DataKeyError {
    #[error("privacy.encrypt_key: {0}")]
    Secret(#[from] crate::secret::SecretError),
    #[error("privacy.encrypt_key: {0}")]
    Keys(#[from] crate::seal::SealError),
}

/// Resolves `[privacy] encrypt_key` and installs the data keys for this process (see `seal`).
pub fn install_data_keys(config: &Config, env: &dyn EnvSource) -> Result<(), DataKeyError> {
    let Some(reference) = &config.privacy.encrypt_key else {
        return Ok(());
    };
    let values: Vec<Vec<u8>> = reference
        .resolve(env)?
        .into_iter()
        .map(|s| s.value)
        .collect();
    Ok(crate::seal::install_values(&values)?)
}

/// A built gateway, listeners bound, ready to run.
pub struct App {
    config: Config,
    state: AppState,
    deliverer: Arc<Deliverer>,
    /// The alerts, when `[alerts]` has targets.
    alerts: Option<Arc<crate::alerts::Alerts>>,
    console: Arc<http::console::Console>,
    public: (TcpListener, axum::Router, http::Direct),
    admin: Option<(TcpListener, axum::Router)>,
}

impl App {
    /// Opens the store, starts the audit writer, binds the listeners and builds the routers.
    pub async fn build(config: Config, wiring: Wiring) -> anyhow::Result<App> {
        let Wiring {
            routes,
            sinks,
            token_issuer,
            traces,
        } = wiring;
        let tracer = match &traces {
            Some(settings) => {
                let t = telemetry::trace::Tracer::start(settings)?;
                tracing::info!(endpoint = %crate::secret::mask_url(&settings.endpoint),
                    service = %settings.service_name, "exporting traces (OTLP/HTTP)");
                t
            }
            None => telemetry::trace::Tracer::default(),
        };
        for r in &config.routes {
            if r.auth.scheme == AuthScheme::None {
                tracing::warn!(route = %r.name, path = %r.path,
                    "route accepts unauthenticated requests (allow_unauthenticated = true)");
            }
        }
        let store = Store::open(&config.store, Purpose::Serving)
            .await
            .map_err(anyhow::Error::msg)?;
        match &store {
            Store::Sqlite(s) => tracing::info!(path = %s.path().display(),
                sync = ?config.store.sync, "store open (SQLite)"),
            Store::Postgres(p) => {
                tracing::info!(url = %p.display_url(), "store open (PostgreSQL)")
            }
        }
        let ordering: Vec<(String, bool)> = sinks
            .iter()
            .map(|s| (s.name.clone(), s.config.ordered))
            .collect();
        store
            .configure_sinks(&ordering)
            .await
            .map_err(|e| anyhow::anyhow!("cannot record the sinks' settings in the store: {e}"))?;
        // The audit writer records how far its lines are written (beside the embedded
        // store's database; on PostgreSQL in the data directory, per replica host), and after
        // a crash the lines of events committed since are written again from the store.
        let mark = match (&store, config.audit.enabled) {
            (Store::Sqlite(s), true) => Some(s.path().with_extension("audit-mark")),
            (Store::Postgres(_), true) => match std::fs::create_dir_all(&config.store.data_dir) {
                Ok(()) => Some(config.store.data_dir.join("audit-mark")),
                Err(e) => {
                    tracing::warn!(error = %e, dir = %config.store.data_dir.display(),
                        "no data directory for the audit mark: audit lines a crash takes \
                         will not be recovered");
                    None
                }
            },
            _ => None,
        };
        let previous = mark.as_deref().and_then(telemetry::audit::previous_mark);
        let previous_replicas = mark
            .as_deref()
            .map(telemetry::audit::previous_replicas)
            .unwrap_or_default();
        let audit = if config.audit.enabled {
            Audit::start(config.audit.path.as_deref(), mark.as_deref())
                .context("cannot open the audit log")?
        } else {
            Audit::disabled()
        };
        if let Some(telemetry::audit::Mark::WrittenThrough(through)) = previous {
            let since = through - config.limits.deadline.as_millis() as i64;
            match recover_audit(
                &store,
                &audit,
                config.audit.path.as_deref(),
                since,
                &previous_replicas,
            )
            .await
            {
                Ok(()) => audit.release_mark(Some((through, &previous_replicas))),
                Err(e) => tracing::warn!(error = %e, "audit lines lost in the last crash could \
                    not be recovered; the mark is kept, so the next start tries again"),
            }
        } else {
            audit.release_mark(None);
        }
        // Ingest's load: HTTP raises it, the delivery worker paces itself by it.
        let load = Arc::new(crate::load::IngestLoad::new(config.delivery.busy.in_flight));
        let deliverer = Deliverer::new(
            store.clone(),
            sinks,
            audit.clone(),
            config.delivery.poll_interval,
            config.delivery.busy,
            load.clone(),
        );
        match &store {
            Store::Postgres(pg) => {
                // Other replicas' commits wake this one's workers too.
                let d = deliverer.clone();
                pg.listen(move || d.wake());
            }
            Store::Sqlite(sqlite) => {
                // Settlements are written after the workers move on; rows they bring due
                // (retries, an ordered session's next event) wake the workers then.
                let d = Arc::downgrade(&deliverer);
                sqlite.on_settled(move || {
                    if let Some(d) = d.upgrade() {
                        d.wake();
                    }
                });
            }
        }
        let state = AppState::new(
            store,
            audit,
            config.limits.clone(),
            config.server.admin_token.as_ref().map(|t| t.expose()),
            deliverer.clone(),
            load,
            tracer.clone(),
        );
        deliverer.set_tracer(tracer);
        let alerts = (!config.alerts.targets.is_empty()).then(|| {
            Arc::new(crate::alerts::Alerts::new(
                &config.alerts,
                state.store.clone(),
                deliverer.clone(),
                state.signals.clone(),
            ))
        });
        let console = Arc::new(http::console::Console::new(&config));
        let public_listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let admin = match config.server.admin_listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (admin)"))?;
                Some((l, http::admin_router(state.clone(), console.clone())))
            }
            None => {
                if !config.server.listen.ip().is_loopback() {
                    tracing::warn!(listen = %config.server.listen,
                        "/metrics, /stats, /admin/* and /console/ are served on the public listener, which \
                         is not a loopback address; set COGNIHOOK_ADMIN_LISTEN (server.admin_listen, \
                         e.g. 127.0.0.1:9090) to serve them on a listener of their own");
                }
                None
            }
        };
        let (public_router, direct) = http::public_router(
            state.clone(),
            &routes,
            config.server.simulator,
            admin.is_none(),
            token_issuer,
            console.clone(),
        );
        Ok(App {
            config,
            state,
            deliverer,
            alerts,
            console,
            public: (public_listener, public_router, direct),
            admin,
        })
    }

    /// The public listener's address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.public.0.local_addr()
    }

    /// The admin listener's address, when it is separate.
    pub fn admin_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.admin.as_ref().map(|(l, _)| l.local_addr())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The delivery workers (tests drive them with `tick` and `idle`).
    pub fn deliverer(&self) -> &Arc<Deliverer> {
        &self.deliverer
    }

    /// The alerts, when `[alerts]` has targets (tests drive `look_at`).
    pub fn alerts(&self) -> Option<&Arc<crate::alerts::Alerts>> {
        self.alerts.as_ref()
    }

    /// The public router, for driving requests without sockets (tests).
    pub fn public_router(&self) -> axum::Router {
        self.public.1.clone()
    }

    /// Serves until `shutdown` is cancelled, then drains and closes everything.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let App {
            config,
            state,
            deliverer,
            alerts,
            console,
            public,
            admin,
        } = self;
        let limits = http::conn::ConnLimits::from_config(&config.server);
        let grace = config.server.shutdown_grace;
        if let Ok(addr) = public.0.local_addr() {
            tracing::info!(%addr, routes = config.routes.len(), simulator = config.server.simulator,
                "cognihook listening");
        }
        let flag = {
            let (state, shutdown) = (state.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                state.begin_shutdown();
            })
        };
        let delivery_task = (config.delivery.enabled && !deliverer.sinks().is_empty())
            .then(|| {
                spawn_delivery_thread(
                    deliverer.clone(),
                    shutdown.clone(),
                    grace,
                    config.delivery.nice,
                )
            })
            .transpose()?;
        let alerts_task = alerts.map(|a| tokio::spawn(a.run(shutdown.clone())));
        // The histograms' recorded values drained into their buckets (`UPKEEP_EVERY`), and the
        // console overview's 15 minutes of history: one sample every 10 s.
        let sampler = {
            let (state, shutdown) = (state.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut upkeep = tokio::time::interval(telemetry::metrics::UPKEEP_EVERY);
                upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut sample = tokio::time::interval(std::time::Duration::from_secs(10));
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = upkeep.tick() => state.metrics.run_upkeep(),
                        _ = sample.tick() => console.sample(&state),
                    }
                }
            })
        };
        let public_task = tokio::spawn(http::serve(
            "public",
            public.0,
            public.1,
            public.2,
            shutdown.clone(),
            limits,
            grace,
        ));
        let admin_task = admin.map(|(l, r)| {
            tokio::spawn(http::serve(
                "admin",
                l,
                r,
                http::Direct::default(),
                shutdown.clone(),
                limits,
                grace,
            ))
        });
        let _ = public_task.await;
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        if let Some(done) = delivery_task {
            let _ = done.await;
        }
        let _ = flag.await;
        if let Some(t) = alerts_task {
            let _ = t.await;
        }
        let _ = sampler.await;
        state.store.close().await;
        let tracer = state.tracer.clone();
        let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
        let audit = state.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.close()).await;
        tracing::info!("cognihook stopped");
        Ok(())
    }
}

/// After a crash: writes a `webhook_processed` line (marked `recovered`) for each event
/// committed since `since_ms` by one of `replicas` (the replicas the mark covers; on SQLite
/// there is one writer and the name does not matter) that has none. When the audit log is a
/// file, the lines it already holds (its last 64 MiB) are not written twice; on stdout they
/// cannot be read back, so events of the last `limits.deadline` before the crash may get a
/// second, recovered, line.
async fn recover_audit(
    store: &Store,
    audit: &Audit,
    path: Option<&std::path::Path>,
    since_ms: i64,
    replicas: &[String],
) -> anyhow::Result<()> {
    use crate::telemetry::audit::{AuditKind, AuditLine};
    let mut events = Vec::new();
    for replica in replicas {
        events.extend(store.committed_since(since_ms, replica).await?);
    }
    if replicas.is_empty() {
        // A mark from before marks named their replica.
        events = store.committed_since(since_ms, "").await?;
    }
    let written = match path {
        Some(p) => {
            let p = p.to_path_buf();
            tokio::task::spawn_blocking(move || telemetry::audit::processed_in_tail(&p)).await??
        }
        None => Default::default(),
    };
    let mut recovered = 0u64;
    let mut seen = std::collections::HashSet::new();
    // On SQLite every replica's query reads the same events: each is written once.
    events.retain(|e| seen.insert(e.event_id.clone()));
    for e in events.iter().filter(|e| !written.contains(&e.event_id)) {
        audit.write(&AuditLine {
            ts: crate::format_rfc3339(
                time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(e.committed_at) * 1_000_000,
                )
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            ),
            route: &e.route,
            correlation_id: &e.correlation_id,
            event_id: Some(&e.event_id),
            session_id: Some(&e.session_id),
            event_type: Some(&e.event_type),
            status: 200,
            state_version: Some(e.state_version),
            simulated: e.simulated,
            recovered: true,
            ..AuditLine::new(AuditKind::WebhookProcessed)
        });
        recovered += 1;
    }
    metrics::counter!(telemetry::metrics::AUDIT_LINES_RECOVERED_TOTAL).increment(recovered);
    if recovered > 0 {
        tracing::warn!(
            recovered,
            checked = events.len(),
            "the last run stopped without writing every audit line: the lines of events it \
             committed were written again from the store (marked `recovered`)"
        );
    }
    Ok(())
}

/// Runs the delivery workers on a thread of their own, with its own single-threaded runtime,
/// so that the kernel can rank them below ingest (`delivery.nice`). The returned receiver
/// resolves when the workers have stopped.
fn spawn_delivery_thread(
    deliverer: Arc<Deliverer>,
    shutdown: CancellationToken,
    grace: std::time::Duration,
    nice: u8,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the delivery runtime")?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("cognihook-delivery".into())
        .spawn(move || {
            crate::priority::lower_current_thread(nice, "delivery");
            runtime.block_on(deliverer.run(shutdown, grace));
            let _ = done_tx.send(());
        })
        .context("cannot start the delivery thread")?;
    Ok(done_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_with_unusable_tls_options_is_reported_with_the_other_problems() {
        for (url, says) in [
            ("postgres://db/x?sslmode=prefer", "falls back to plain text"),
            (
                "postgres://db/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                "cannot be read",
            ),
        ] {
            let env: std::collections::BTreeMap<String, String> =
                [("COGNIHOOK_DATABASE_URL".to_string(), url.to_string())].into();
            let config = Config::load(None, &env).expect("the file layer has nothing to say");
            let Err(problems) = Wiring::build(&config, &env) else {
                panic!("{url}: accepted");
            };
            assert!(
                problems.iter().any(|p| p.contains(says)),
                "{url}: {problems:?}"
            );
        }
    }
}
