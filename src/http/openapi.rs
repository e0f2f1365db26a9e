//! The OpenAPI 3.1 document of the gateway's HTTP API, generated from the code
//! (`cognihook openapi` prints it; `docs/openapi.json` is the built-in configuration's).
//!
//! Two halves: the fixed endpoints (operations, admin API, the token endpoint) are described
//! where they are handled, by `#[utoipa::path]` on each handler and `utoipa::ToSchema` on the
//! types they answer with, and gathered by [`FixedApi`]; the webhook routes are whatever the
//! configuration names, so [`document`] adds one operation per route from its settings: the
//! payload kind's schema (`ingest::payload::PayloadDecoder::request_schema`), its media
//! types, its authentication scheme as a security scheme, and the answers it can give (422
//! only with rules, 429 only with a rate limit, 202 only with `respond`, 401 unless
//! unauthenticated). The console (HTML for a browser) is left out: it is not an API.

use serde_json::{json, Map, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::config::{Config, RouteConfig};
use crate::ingest::auth::spec::AuthSpec;
use crate::ingest::payload::PayloadDecoder;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cognihook",
        description = "A gateway between NICE Cognigy.AI and a team's backends: webhook routes \
            that authenticate, validate, apply rules, commit durably and answer; operations \
            endpoints; the admin API. Every error answer is JSON (`ErrorBody`), including 404 \
            and 405. With `server.admin_listen` set, `/metrics`, `/stats` and `/admin/*` are \
            served on that listener instead of the public one."
    ),
    paths(
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        super::ops::stats,
        super::admin::event,
        super::admin::dead_letters,
        super::admin::replay,
        super::admin::purge,
        super::admin::forget_session,
        super::admin::sinks,
        super::admin::sink_action,
    ),
    components(schemas(super::error::ErrorBody)),
    modifiers(&AdminToken),
    tags(
        (name = "webhooks", description = "The configured routes: what Cognigy calls"),
        (name = "operations", description = "Health, readiness, metrics, figures"),
        (name = "admin", description = "Events, dead letters, sessions and sinks; a bearer token"),
        (name = "oauth2", description = "Tokens for `oauth2` routes"),
    )
)]
struct FixedApi;

/// The token endpoint, present when `[[oauth2.client]]` is configured.
#[derive(OpenApi)]
#[openapi(paths(super::oauth::token))]
struct TokenApi;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        api.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "admin",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "The admin token (`COGNIHOOK_ADMIN_TOKEN`); without one configured \
                         the admin API answers 403 `admin_disabled`.",
                        ))
                        .build(),
                ),
            );
    }
}

/// The document of `config`'s API, or every problem that keeps a route from being described
/// (a schema file that cannot be read, an auth table that does not check).
pub fn document(config: &Config) -> Result<Value, Vec<String>> {
    let mut api = FixedApi::openapi();
    if !config.oauth2.clients.is_empty() {
        api.merge(TokenApi::openapi());
    }
    let mut doc = serde_json::to_value(&api).map_err(|e| vec![e.to_string()])?;
    let mut problems = Vec::new();
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let mut security = Map::new();
    for route in &config.routes {
        match route_operation(route, config, &mut schemas, &mut security) {
            Ok(op) => {
                paths.insert(route.path.clone(), json!({ "post": op }));
                if config.server.simulator {
                    paths.insert(
                        format!("/simulate{}", route.path),
                        json!({ "post": simulated(&op, route) }),
                    );
                }
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let to_object = |v: &mut Value| {
        if !v.is_object() {
            *v = Value::Object(Map::new());
        }
    };
    to_object(&mut doc["components"]);
    to_object(&mut doc["components"]["schemas"]);
    to_object(&mut doc["components"]["securitySchemes"]);
    // Webhook routes first, in the configuration's order; then the fixed endpoints.
    if let Value::Object(fixed) = std::mem::take(&mut doc["paths"]) {
        paths.extend(fixed);
    }
    doc["paths"] = Value::Object(paths);
    if let Some(s) = doc["components"]["schemas"].as_object_mut() {
        s.extend(schemas);
    }
    if let Some(s) = doc["components"]["securitySchemes"].as_object_mut() {
        s.extend(security);
    }
    add_links(&mut doc);
    Ok(doc)
}

/// OpenAPI links between operations: where an identifier one answer gives is used next (an
/// accepted event's journey by its correlation id, a listed sink paused or resumed, a listed
/// dead letter purged). Tools that follow links (schemathesis's stateful phase) reach these
/// operations with identifiers that exist.
fn add_links(doc: &mut Value) {
    let link = |operation: &str, parameter: &str, from: &str, description: &str| {
        json!({
            "operationId": operation,
            "parameters": { parameter: from },
            "description": description,
        })
    };
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for item in paths.values_mut() {
        let Some(op) = item.get_mut("post") else {
            continue;
        };
        if !op["operationId"]
            .as_str()
            .is_some_and(|id| id.starts_with("route."))
        {
            continue;
        }
        for status in ["200", "202"] {
            if let Some(answer) = op["responses"].get_mut(status) {
                answer["links"] = json!({
                    "journey": link(
                        "event",
                        "id",
                        "$response.body#/correlationId",
                        "The event's journey in the admin API, by its correlation id",
                    ),
                });
            }
        }
    }
    let mut add = |path: &str, method: &str, name: &str, to: Value| {
        if let Some(answer) = doc["paths"][path][method]["responses"].get_mut("200") {
            answer["links"] = json!({ name: to });
        }
    };
    add(
        "/admin/sinks",
        "get",
        "pauseOrResume",
        link(
            "sink_action",
            "name",
            "$response.body#/sinks/0/name",
            "Pause or resume the first listed sink",
        ),
    );
    add(
        "/admin/dead-letters",
        "get",
        "purge",
        link(
            "purge",
            "id",
            "$response.body#/items/0/id",
            "Purge the newest listed dead letter",
        ),
    );
}

/// The document as committed and printed: pretty JSON with a final newline.
pub fn render(config: &Config) -> Result<String, Vec<String>> {
    let doc = document(config)?;
    let mut s = serde_json::to_string_pretty(&doc).map_err(|e| vec![e.to_string()])?;
    s.push('\n');
    Ok(s)
}

fn error_answer(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    })
}

fn with_retry_after(mut answer: Value) -> Value {
    answer["headers"] = json!({
        "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer", "minimum": 0}},
    });
    answer
}

/// A name usable in a component's key (letters, digits, `.`, `-`, `_`).
fn component_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn route_operation(
    route: &RouteConfig,
    config: &Config,
    schemas: &mut Map<String, Value>,
    security: &mut Map<String, Value>,
) -> Result<Value, Vec<String>> {
    let at = format!("route `{}`", route.name);
    let decoder = PayloadDecoder::build(&route.payload).map_err(|errors| {
        errors
            .iter()
            .map(|e| format!("{at}: {e}"))
            .collect::<Vec<_>>()
    })?;
    let auth = AuthSpec::check(&route.auth, &at, route.allow_unauthenticated)?;

    let kind = serde_json::to_value(decoder.kind())
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let schema_name = match decoder {
        PayloadDecoder::Builtin(_) => component_name(&format!("payload.{kind}")),
        PayloadDecoder::Schema(_) => component_name(&format!("payload.route.{}", route.name)),
    };
    schemas.insert(schema_name.clone(), decoder.request_schema());
    let content: Map<String, Value> = decoder
        .media_types()
        .iter()
        .map(|m| {
            (
                (*m).to_string(),
                json!({"schema": {"$ref": format!("#/components/schemas/{schema_name}")}}),
            )
        })
        .collect();

    let mut responses = Map::new();
    let answer_headers = json!({
        "X-Correlation-Id": {"description": "The event's correlation id (percent-encoded when not ASCII)",
            "schema": {"type": "string"}},
        "Idempotent-Replayed": {"description": "`true` on a duplicate's answer (the first answer again)",
            "schema": {"type": "string", "enum": ["true"]}},
    });
    let success = success_schema(route);
    match &route.respond {
        None => {
            responses.insert(
                "200".into(),
                json!({"description": "Committed (or a duplicate's first answer)",
                    "headers": answer_headers,
                    "content": {"application/json": {"schema": success}}}),
            );
        }
        Some(r) => {
            responses.insert(
                "200".into(),
                json!({"description": format!("Committed, and the backend `{}` answered in time: its JSON merged into `data`", r.upstream),
                    "headers": answer_headers,
                    "content": {"application/json": {"schema": success}}}),
            );
            responses.insert(
                "202".into(),
                json!({"description": format!("Committed; the backend `{}` did not answer in time (its answer goes to `on_late`)", r.upstream),
                    "headers": answer_headers,
                    "content": {"application/json": {"schema": success}}}),
            );
        }
    }
    responses.insert(
        "400".into(),
        error_answer("`invalid_json` (empty, not UTF-8, not JSON, not an object, too deep), `invalid_payload` (every failing field in `errors`) or `malformed_request` (broken framing)"),
    );
    let (scheme_name, scheme) = security_scheme(route, &auth);
    if let Some(scheme) = scheme {
        let mut refused = error_answer(&refusal_codes(&auth));
        refused["headers"] = json!({"WWW-Authenticate": {
            "description": "The challenge naming what the route expects",
            "schema": {"type": "string"}}});
        responses.insert("401".into(), refused);
        security.insert(scheme_name.clone(), scheme);
    }
    responses.insert(
        "408".into(),
        error_answer(
            "`request_timeout`: the body did not arrive within `limits.body_read_timeout`",
        ),
    );
    responses.insert(
        "413".into(),
        error_answer(&format!(
            "`payload_too_large`: the body is larger than {} bytes",
            config.limits.max_body_bytes
        )),
    );
    responses.insert(
        "415".into(),
        error_answer(&format!(
            "`unsupported_media_type`: the body is not {}",
            decoder.media_types().join(", ")
        )),
    );
    if !route.rules.is_empty() {
        responses.insert(
            "422".into(),
            error_answer("`rule_rejected`: a rule of the route refused the event (its message); nothing is stored"),
        );
    }
    if route.rate_limit.is_some() {
        responses.insert(
            "429".into(),
            with_retry_after(error_answer(
                "`rate_limited`: the route's rate limit is spent",
            )),
        );
    }
    responses.insert(
        "500".into(),
        error_answer("`internal`: the answer would exceed the route's `max_response_bytes`; nothing is committed"),
    );
    responses.insert(
        "503".into(),
        with_retry_after(error_answer("`unavailable`: overloaded (`max_in_flight`, commit queue), the store is unavailable, shutting down, or the deadline passed")),
    );

    let mut description = format!(
        "Payload kind `{kind}`. The event is committed with its session state, idempotency \
         record and one delivery per sink before the answer."
    );
    if !route.rules.is_empty() {
        description.push_str("\n\nRules (422 with the message when one fails):");
        for r in &route.rules {
            description.push_str(&format!("\n- `{}`: {}", r.expr, r.message));
        }
    }
    if !route.sinks.is_empty() {
        description.push_str(&format!("\n\nDelivered to: {}.", route.sinks.join(", ")));
    }
    let mut op = json!({
        "tags": ["webhooks"],
        "operationId": format!("route.{}", route.name),
        "summary": format!("Route `{}`", route.name),
        "description": description,
        "parameters": [{
            "name": "X-Correlation-Id",
            "in": "header",
            "required": false,
            "description": "The correlation id when the payload names none; a value longer \
                than 200 characters is ignored (a new one is made)",
            "schema": {"type": "string"},
        }],
        "requestBody": {"required": true, "content": content},
        "responses": responses,
    });
    op["security"] = if security.contains_key(&scheme_name) {
        json!([{ scheme_name: [] }])
    } else {
        json!([])
    };
    Ok(op)
}

/// The same operation under `/simulate`: no authentication, events marked simulated.
fn simulated(op: &Value, route: &RouteConfig) -> Value {
    let mut op = op.clone();
    op["operationId"] = json!(format!("simulate.{}", route.name));
    op["summary"] = json!(format!(
        "Route `{}`, simulated (no authentication)",
        route.name
    ));
    op["security"] = json!([]);
    if let Some(r) = op["responses"].as_object_mut() {
        r.remove("401");
    }
    op
}

/// The success answer's schema: `data` holds `processed`, `stateVersion` and the route's
/// extracts (each left out when it cannot be evaluated); a `respond` route's backend answer
/// is merged over them, so any of them may then be replaced.
fn success_schema(route: &RouteConfig) -> Value {
    let mut data = json!({"type": "object"});
    if route.respond.is_none() {
        let mut props = json!({
            "processed": {"const": true},
            "stateVersion": {"type": "integer", "minimum": 1,
                "description": "The session's interaction count after this event"},
            "forgotten": {"const": true, "description": "Only on a duplicate's answer once \
                its session was forgotten: the extracts are gone"},
        });
        for name in route.extract.keys() {
            props[name] = json!({"description": "An extract of the route"});
        }
        data["properties"] = props;
        data["required"] = json!(["processed", "stateVersion"]);
    }
    json!({
        "type": "object",
        "required": ["status", "message", "correlationId", "transactionId", "timestamp", "data"],
        "properties": {
            "status": {"enum": ["success", "accepted"]},
            "message": {"type": "string"},
            "correlationId": {"type": "string"},
            "transactionId": {"type": "string"},
            "timestamp": {"type": "string", "format": "date-time"},
            "data": data,
        },
    })
}

fn refusal_codes(auth: &AuthSpec) -> String {
    let codes = match auth {
        AuthSpec::Jwt(_) | AuthSpec::OAuth2 | AuthSpec::Bearer { .. } => {
            "`missing_token`, `invalid_token`, `expired_token` or `token_not_yet_valid`"
        }
        AuthSpec::Timestamped { .. }
        | AuthSpec::Jambonz { .. }
        | AuthSpec::StandardWebhooks { .. } => {
            "`missing_signature`, `invalid_signature`, `stale_timestamp` or `replayed_signature`"
        }
        _ => "`missing_signature` or `invalid_signature`",
    };
    format!("Credentials missing or refused: {codes}")
}

/// The route's security scheme (its name, and none for `none`).
fn security_scheme(route: &RouteConfig, auth: &AuthSpec) -> (String, Option<Value>) {
    let name = component_name(&format!("route.{}", route.name));
    let header = |name: &str, description: String| {
        Some(json!({"type": "apiKey", "in": "header", "name": name, "description": description}))
    };
    let scheme = match auth {
        AuthSpec::None => None,
        AuthSpec::Hmac { headers, .. } => {
            let names: Vec<String> = match headers {
                Some(h) => h.iter().map(ToString::to_string).collect(),
                None => crate::ingest::auth::DEFAULT_SIGNATURE_HEADERS
                    .iter()
                    .map(|h| (*h).to_string())
                    .collect(),
            };
            header(
                &canonical(&names[0]),
                format!(
                    "Hex HMAC-SHA256 of the raw body with the route's secret, optionally \
                     prefixed `sha256=`; accepted in {}.",
                    names.iter().map(|n| format!("`{}`", canonical(n))).collect::<Vec<_>>().join(" or ")
                ),
            )
        }
        AuthSpec::Timestamped { header: h, .. } => header(
            &canonical(h.as_ref().map_or(crate::ingest::auth::DEFAULT_TIMESTAMPED_HEADER, |h| h.as_str())),
            "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<raw body>\">`; the time must be within the tolerance.".into(),
        ),
        AuthSpec::Jambonz { .. } => header(
            &canonical(crate::ingest::auth::JAMBONZ_HEADER),
            "jambonz's signature: `t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<raw body>\">`.".into(),
        ),
        AuthSpec::StandardWebhooks { .. } => header(
            "webhook-signature",
            "Standard Webhooks: `v1,<base64 HMAC-SHA256 of \"<webhook-id>.<webhook-timestamp>.<raw body>\">` with \
             the `whsec_` key; `webhook-id` and `webhook-timestamp` headers are required too."
                .into(),
        ),
        AuthSpec::Basic { .. } => Some(json!({"type": "http", "scheme": "basic"})),
        AuthSpec::ApiKey { header: h, .. } => header(
            &canonical(h.as_ref().map_or(crate::ingest::auth::API_KEY_HEADER, |h| h.as_str())),
            "One of the route's keys (also accepted as `Authorization: ApiKey <key>`).".into(),
        ),
        AuthSpec::Bearer { .. } => Some(json!({"type": "http", "scheme": "bearer",
            "description": "One of the route's static tokens."})),
        AuthSpec::Jwt(_) => Some(json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "A JWT the route's keys, issuer and audience accept."})),
        AuthSpec::OAuth2 => Some(json!({
            "type": "oauth2",
            "description": "A token from this gateway's `/oauth/token` for a client allowed on the route.",
            "flows": {"clientCredentials": {"tokenUrl": "/oauth/token", "scopes": {}}},
        })),
    };
    (name, scheme)
}

/// `x-cognigy-signature` → `X-Cognigy-Signature` (HTTP header names are case-insensitive;
/// the document shows them as people write them).
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}
