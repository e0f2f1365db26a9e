//! The operator console at `/console/`: server-rendered HTML from the binary (no external
//! network, no build step; pages work without JavaScript), on the admin listener (the public
//! one when there is none).
//!
//! Sign-in is the admin token, typed into a form once: the answer sets a session cookie
//! (`HttpOnly; SameSite=Strict; Path=/console`, `Secure` behind a TLS proxy that says
//! `X-Forwarded-Proto: https`). The cookie is stateless, `<expiry>.<nonce>.<HMAC>`, keyed by
//! the admin token, so every replica with the same token accepts it and a new token ends
//! every session; logging out revokes it on the replica that served the logout (and the
//! browser forgets it). Every state-changing form carries a CSRF token bound to the session
//! (an HMAC of its nonce); a POST without it is 403. Failed sign-ins are limited per client
//! address. Without `COGNIHOOK_ADMIN_TOKEN` the console says it is disabled.

mod history;
mod pages;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{header, HeaderMap, StatusCode};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::rate::{Bucket, RateLimit};

/// The cookie's name.
const COOKIE: &str = "cognihook_console";
/// Failed sign-ins per client address.
const LOGIN_LIMIT: RateLimit = RateLimit {
    per: Duration::from_secs(60),
    max: 5,
};

/// What the console keeps: the session key, revoked sessions, failed sign-ins, and the
/// configuration as it may be shown.
pub struct Console {
    /// HMAC key of session cookies and CSRF tokens, derived from the admin token.
    key: Option<[u8; 32]>,
    session_ttl: Duration,
    revoked: Mutex<HashMap<String, i64>>,
    failures: Mutex<HashMap<IpAddr, Bucket>>,
    /// `check-config --print`'s text: secrets masked.
    pub(crate) config_text: String,
    /// The overview's last 15 minutes.
    history: history::History,
}

impl Console {
    /// A console for `config`; disabled when there is no admin token.
    pub fn new(config: &crate::config::Config) -> Console {
        let key = config.server.admin_token.as_ref().map(|t| {
            let mut h = Sha256::new();
            h.update(b"cognihook console session key\0");
            h.update(t.expose().as_bytes());
            h.finalize().into()
        });
        Console {
            key,
            session_ttl: Duration::from_secs(8 * 3600),
            revoked: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            config_text: config.to_masked_toml(),
            history: history::History::default(),
        }
    }

    /// Takes a sample of this process's counters for the overview's charts (`App::run`
    /// does every 10 s; the overview also does when it is shown).
    pub fn sample(&self, state: &AppState) {
        self.history
            .sample(&state.metrics.render(), crate::now_millis());
    }

    fn mac(&self, key: &[u8; 32], parts: &[&str]) -> String {
        #[allow(clippy::expect_used)]
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        for p in parts {
            m.update(p.as_bytes());
            m.update(b"|");
        }
        hex::encode(m.finalize().into_bytes())
    }

    /// A new session cookie value.
    fn issue(&self, key: &[u8; 32], now_s: i64) -> String {
        let expires = now_s + self.session_ttl.as_secs() as i64;
        let nonce = hex::encode(uuid::Uuid::new_v4().as_bytes());
        let mac = self.mac(key, &["session", &expires.to_string(), &nonce]);
        format!("{expires}.{nonce}.{mac}")
    }

    /// The session a cookie value names, if it is genuine, unexpired and not revoked.
    fn session(&self, value: &str, now_s: i64) -> Option<Session> {
        let key = self.key.as_ref()?;
        let mut it = value.splitn(3, '.');
        let (expires, nonce, mac) = (it.next()?, it.next()?, it.next()?);
        let want = self.mac(key, &["session", expires, nonce]);
        if !bool::from(want.as_bytes().ct_eq(mac.as_bytes())) {
            return None;
        }
        let expires: i64 = expires.parse().ok()?;
        if expires <= now_s || self.revoked.lock().contains_key(nonce) {
            return None;
        }
        Some(Session {
            csrf: self.mac(key, &["csrf", nonce])[..32].to_string(),
            nonce: nonce.to_string(),
            expires,
        })
    }

    fn revoke(&self, s: &Session, now_s: i64) {
        let mut r = self.revoked.lock();
        r.retain(|_, exp| *exp > now_s);
        r.insert(s.nonce.clone(), s.expires);
    }

    /// Whether `ip` may try to sign in now (a failed try spends from its bucket).
    fn may_try(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut f = self.failures.lock();
        if f.len() > 10_000 {
            f.retain(|_, b| b.available(now) < LOGIN_LIMIT.max as usize);
        }
        let bucket = f.entry(ip).or_insert_with(|| Bucket::new(LOGIN_LIMIT, now));
        if bucket.available(now) == 0 {
            return Err(LOGIN_LIMIT.per / LOGIN_LIMIT.max);
        }
        Ok(())
    }

    fn failed(&self, ip: IpAddr, now: Instant) {
        if let Some(b) = self.failures.lock().get_mut(&ip) {
            b.take(1, now);
        }
    }
}

/// A signed-in operator's session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The token every state-changing form must carry.
    pub(crate) csrf: String,
    nonce: String,
    expires: i64,
}

/// The console's routes (merged where the admin API is served).
pub fn routes(state: &AppState, console: Arc<Console>) -> Router<AppState> {
    let signed_in = axum::middleware::from_fn_with_state(state.clone(), require_session);
    Router::new()
        .route("/console/", get(pages::overview))
        .route("/console/sinks", get(pages::sinks))
        .route("/console/sinks/{name}/{action}", post(pages::sink_action))
        .route("/console/events", get(pages::events))
        .route("/console/events/{id}/reveal", post(pages::reveal))
        .route("/console/dead-letters", get(pages::dead_letters))
        .route("/console/dead-letters/replay", post(pages::replay))
        .route("/console/dead-letters/purge", post(pages::purge))
        .route("/console/configuration", get(pages::configuration))
        .route("/console/logout", post(logout))
        .route_layer(signed_in)
        .route("/console/login", get(login_form).post(login))
        .route("/console", get(|| async { redirect("/console/") }))
        .layer(Extension(console))
}

fn now_s() -> i64 {
    crate::now_millis() / 1000
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, v)| v)
}

fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

fn client_ip(req_ext: &http::Extensions) -> IpAddr {
    req_ext
        .get::<super::conn::Arrival>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |a| a.peer.ip())
}

/// In front of every page but the login: no console → "disabled"; no valid session → the
/// login page; a POST without the session's CSRF token → 403. The session is handed on.
async fn require_session(
    State(_state): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if console.key.is_none() {
        return disabled();
    }
    let Some(session) = cookie_value(req.headers()).and_then(|v| console.session(v, now_s()))
    else {
        return redirect("/console/login");
    };
    let (mut parts, body) = req.into_parts();
    let body = if parts.method == http::Method::POST {
        let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
            return forbidden("the form is too large");
        };
        let given = form_value(&bytes, "csrf").unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(session.csrf.as_bytes())) {
            return forbidden("the form's CSRF token is missing or wrong; reload the page");
        }
        axum::body::Body::from(bytes)
    } else {
        body
    };
    parts.extensions.insert(session);
    next.run(Request::from_parts(parts, body)).await
}

/// A field of a url-encoded form.
pub(crate) fn form_value(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn disabled() -> Response {
    page_response(
        StatusCode::FORBIDDEN,
        &layout(
            "Console disabled",
            None,
            "<p>The console is disabled: set <code>COGNIHOOK_ADMIN_TOKEN</code> to enable it \
             (it signs in with the admin token).</p>",
        ),
    )
}

fn forbidden(why: &str) -> Response {
    page_response(
        StatusCode::FORBIDDEN,
        &layout("Forbidden", None, &format!("<p>{}</p>", esc(why))),
    )
}

async fn login_form(Extension(console): Extension<Arc<Console>>) -> Response {
    if console.key.is_none() {
        return disabled();
    }
    page_response(StatusCode::OK, &login_page(None))
}

fn login_page(error: Option<&str>) -> String {
    let mut body = String::new();
    if let Some(e) = error {
        let _ = write!(body, r#"<p class="error" role="alert">{}</p>"#, esc(e));
    }
    body.push_str(
        r#"<form method="post" action="/console/login" class="login">
<label>Admin token <input type="password" name="token" autocomplete="current-password" required autofocus></label>
<button type="submit">Sign in</button>
</form>"#,
    );
    layout("Sign in", None, &body)
}

async fn login(
    Extension(console): Extension<Arc<Console>>,
    State(state): State<AppState>,
    req: Request,
) -> Response {
    let Some(key) = console.key else {
        return disabled();
    };
    let ip = client_ip(req.extensions());
    let tls = over_tls(req.headers());
    let now = Instant::now();
    if let Err(wait) = console.may_try(ip, now) {
        let mut r = page_response(
            StatusCode::TOO_MANY_REQUESTS,
            &login_page(Some(
                "Too many failed sign-ins from this address; wait a minute.",
            )),
        );
        if let Ok(v) = http::HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let Ok(body) = axum::body::to_bytes(req.into_body(), 16 * 1024).await else {
        return forbidden("the form is too large");
    };
    let token = form_value(&body, "token").unwrap_or_default();
    let given: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    let right = state
        .admin_token_hash
        .as_ref()
        .is_some_and(|want| bool::from(given.ct_eq(want)));
    if !right {
        console.failed(ip, now);
        metrics::counter!(crate::telemetry::metrics::ADMIN_AUTH_FAILURES_TOTAL, "reason" => "console_login")
            .increment(1);
        return page_response(
            StatusCode::UNAUTHORIZED,
            &login_page(Some("That is not the admin token.")),
        );
    }
    let value = console.issue(&key, now_s());
    let cookie = format!(
        "{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
        console.session_ttl.as_secs(),
        if tls { "; Secure" } else { "" }
    );
    let mut r = redirect("/console/");
    if let Ok(v) = http::HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(
    Extension(console): Extension<Arc<Console>>,
    Extension(session): Extension<Session>,
) -> Response {
    console.revoke(&session, now_s());
    let mut r = redirect("/console/login");
    r.headers_mut().insert(
        header::SET_COOKIE,
        http::HeaderValue::from_static(
            "cognihook_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

/// HTML-escapes text.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1f24}\
header{background:#1b2b44;color:#fff;padding:.6em 1em;display:flex;gap:1.2em;align-items:center}\
header a{color:#cfe0ff;text-decoration:none}header a.here{color:#fff;font-weight:600}\
header form{margin-left:auto}main{padding:1em 1.4em}table{border-collapse:collapse;margin:.5em 0}\
th,td{border-bottom:1px solid #dde;padding:.3em .7em;text-align:left;vertical-align:top}\
th{background:#f3f5f8}.error{color:#a40000}.ok{color:#116611}.muted{color:#666}\
pre{background:#f6f8fa;padding:.8em;overflow:auto}button{cursor:pointer}\
.login{display:flex;gap:.6em;align-items:end}svg{background:#fafbfc;border:1px solid #e3e6ea}";

/// A whole page: the navigation (when signed in) and `body`.
pub(crate) fn layout(title: &str, nav: Option<(&str, &Session)>, body: &str) -> String {
    let mut out = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><link rel=\"icon\" href=\"data:,\">\
         <title>{} · cognihook</title><style>{STYLE}</style></head><body><header><strong>cognihook</strong>",
        esc(title)
    );
    if let Some((here, session)) = nav {
        for (path, name) in [
            ("/console/", "Overview"),
            ("/console/events", "Events"),
            ("/console/dead-letters", "Dead letters"),
            ("/console/sinks", "Sinks"),
            ("/console/configuration", "Configuration"),
        ] {
            let class = if path == here { " class=\"here\"" } else { "" };
            let _ = write!(out, "<a href=\"{path}\"{class}>{name}</a>");
        }
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/console/logout\"><input type=\"hidden\" name=\"csrf\" \
             value=\"{}\"><button type=\"submit\">Sign out</button></form>",
            esc(&session.csrf)
        );
    }
    let _ = write!(
        out,
        "</header><main><h1>{}</h1>{body}</main></body></html>",
        esc(title)
    );
    out
}

/// A page answer: HTML, never cached, never framed.
pub(crate) fn page_response(status: StatusCode, html: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; \
                 form-action 'self'; frame-ancestors 'none'",
            ),
        ],
        Bytes::from(html.to_string()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(token: Option<&str>) -> Console {
        let mut c = crate::config::Config::default();
        c.server.admin_token = token.map(|t| t.to_string().into());
        Console::new(&c)
    }

    #[test]
    fn a_session_cookie_holds_until_it_expires_is_revoked_or_the_token_changes() {
        let c = console(Some("tok"));
        let key = c.key.expect("enabled");
        let v = c.issue(&key, 1000);
        let s = c.session(&v, 1001).expect("valid");
        assert_eq!(s.csrf.len(), 32);
        assert!(c.session(&v, 1000 + 8 * 3600).is_none(), "expired");
        let mut forged = v.clone();
        forged.replace_range(0..4, "9999");
        assert!(c.session(&forged, 1001).is_none(), "expiry is signed");
        assert!(
            console(Some("other")).session(&v, 1001).is_none(),
            "new token, new key"
        );
        assert!(console(None).session(&v, 1001).is_none());
        c.revoke(&s, 1001);
        assert!(c.session(&v, 1002).is_none(), "revoked");
        let again = c.issue(&key, 1002);
        assert_ne!(c.session(&again, 1003).expect("valid").csrf, s.csrf);
    }

    #[test]
    fn failed_sign_ins_are_limited_per_address() {
        let c = console(Some("tok"));
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let now = Instant::now();
        for _ in 0..5 {
            assert!(c.may_try(a, now).is_ok());
            c.failed(a, now);
        }
        assert!(c.may_try(a, now).is_err());
        assert!(c.may_try(b, now).is_ok(), "another address is not held");
        assert!(
            c.may_try(a, now + Duration::from_secs(13)).is_ok(),
            "refills"
        );
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
