//! The API document (`cognihook openapi`, `docs/openapi.json`): committed as generated,
//! describing each configured route from its settings, and true of the answers the gateway
//! gives (bodies checked against the document's schemas here; `scripts/api-check` runs
//! schemathesis against the real binary in CI).

use std::collections::BTreeMap;

use cognihook::config::Config;
use serde_json::{json, Value};

use crate::support::{self, flow_body, nlu_body, TestApp};

fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn the_committed_document_is_what_the_code_generates() {
    let config = Config::load(None, &BTreeMap::new()).expect("built-in configuration");
    let generated = cognihook::http::openapi::render(&config).expect("document");
    let committed = std::fs::read_to_string(repo_file("docs/openapi.json")).unwrap_or_default();
    assert!(
        generated == committed,
        "docs/openapi.json differs from the document the code generates; regenerate it with \
         `cargo run -- openapi > docs/openapi.json` and commit it"
    );
    let doc: Value = serde_json::from_str(&committed).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/webhook",
        "/webhook/cognigy",
        "/healthz",
        "/readyz",
        "/metrics",
        "/stats",
        "/admin/events/{id}",
        "/admin/dead-letters",
        "/admin/dead-letters/replay",
        "/admin/dead-letters/{id}",
        "/admin/sessions/{id}",
        "/admin/sinks",
        "/admin/sinks/{name}/{action}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
    // No oauth2 client in the built-in configuration: no token endpoint.
    assert!(doc["paths"].get("/oauth/token").is_none());
}

#[test]
fn the_openapi_command_prints_the_document_of_the_given_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        r#"
[[route]]
name = "orders"
path = "/hooks/orders"
payload = "cognigy-input"
auth = { scheme = "api-key", keys = ["env:ORDERS_KEY"] }
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cognihook"))
        .args(["--config", file.to_str().unwrap(), "openapi"])
        .env_remove("COGNIHOOK_CONFIG")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let op = &doc["paths"]["/hooks/orders"]["post"];
    assert_eq!(op["operationId"], "route.orders");
    assert_eq!(
        doc["components"]["securitySchemes"]["route.orders"]["name"],
        "X-Api-Key"
    );
    assert!(
        doc["paths"].get("/webhook").is_none(),
        "built-in routes replaced"
    );
}

#[test]
fn each_route_is_described_from_its_settings() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("order.json");
    std::fs::write(
        &schema,
        r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
            "required": ["conversation"], "properties": {"conversation": {"type": "object"}}}"#,
    )
    .unwrap();
    let mut config = Config::load(None, &BTreeMap::new()).unwrap();
    config.server.simulator = true;
    support::set_routes(
        &mut config,
        &format!(
            r#"
[[route]]
name = "orders"
path = "/hooks/orders"
payload = {{ kind = "json-schema", schema = "{}", pointers = {{ sessionId = "/conversation/id", userId = "/conversation/user" }} }}
auth = {{ scheme = "oauth2" }}
rate_limit = {{ per = "1s", max = 5 }}

[[route]]
name = "input"
path = "/hooks/input"
payload = "cognigy-input"
auth = {{ scheme = "hmac-sha256", secrets = ["env:S"], headers = ["X-Hub-Signature"] }}
rules = [{{ expr = "has(event.text)", message = "text is required" }}]
extract = {{ said = "event.text" }}
"#,
            schema.display()
        ),
    );
    let client: cognihook::config::OAuth2Client = toml::from_str(
        r#"id = "bot"
secret = "env:CLIENT_SECRET"
routes = ["orders"]"#,
    )
    .expect("client table");
    config.oauth2.clients.push(client);
    let doc = cognihook::http::openapi::document(&config).expect("document");

    let orders = &doc["paths"]["/hooks/orders"]["post"];
    let codes = |op: &Value| -> Vec<String> {
        op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(
        codes(orders),
        ["200", "400", "401", "408", "413", "415", "429", "500", "503"]
    );
    assert_eq!(
        orders["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/payload.route.orders"
    );
    // The route's own schema file, without its `$schema`.
    let embedded = &doc["components"]["schemas"]["payload.route.orders"];
    assert_eq!(embedded["required"], json!(["conversation"]));
    assert!(embedded.get("$schema").is_none());
    let scheme = &doc["components"]["securitySchemes"]["route.orders"];
    assert_eq!(scheme["type"], "oauth2");
    assert_eq!(
        scheme["flows"]["clientCredentials"]["tokenUrl"],
        "/oauth/token"
    );
    assert!(
        doc["paths"]["/oauth/token"]["post"].is_object(),
        "token endpoint with a client"
    );

    let input = &doc["paths"]["/hooks/input"]["post"];
    assert_eq!(
        codes(input),
        ["200", "400", "401", "408", "413", "415", "422", "500", "503"]
    );
    let media: Vec<&String> = input["requestBody"]["content"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        media,
        [
            "application/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data"
        ]
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["route.input"]["name"],
        "X-Hub-Signature"
    );
    let data =
        &input["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["data"];
    assert!(
        data["properties"].get("said").is_some(),
        "extracts are named in the answer"
    );
    assert!(input["description"]
        .as_str()
        .unwrap()
        .contains("text is required"));

    // The simulator's twin: no security, no 401.
    let simulated = &doc["paths"]["/simulate/hooks/input"]["post"];
    assert_eq!(simulated["security"], json!([]));
    assert!(simulated["responses"].get("401").is_none());
}

/// `schema` of the document validates `instance` (the document is the root its `$ref`s
/// resolve against).
fn fits(doc: &Value, schema: &Value, instance: &Value) -> Result<(), String> {
    let mut root = doc.clone();
    if let (Some(r), Some(s)) = (root.as_object_mut(), schema.as_object()) {
        for (k, v) in s {
            r.insert(k.clone(), v.clone());
        }
    }
    let validator = jsonschema::draft202012::new(&root).map_err(|e| e.to_string())?;
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn answer_schema(doc: &Value, path: &str, method: &str, status: u16) -> Value {
    let r = &doc["paths"][path][method]["responses"][status.to_string()];
    assert!(r.is_object(), "{method} {path} documents no {status}");
    r["content"]["application/json"]["schema"].clone()
}

#[tokio::test]
async fn answers_fit_the_schemas_the_document_gives_them() {
    let app = TestApp::spawn().await;
    let config = Config::load(None, &BTreeMap::new()).unwrap();
    let doc = cognihook::http::openapi::document(&config).unwrap();
    let check = |path: &str, method: &str, status: u16, body: &Value| {
        let schema = answer_schema(&doc, path, method, status);
        fits(&doc, &schema, body)
            .unwrap_or_else(|e| panic!("{method} {path} {status}: {e}: {body}"));
    };

    let ok = app
        .post_signed(
            "/webhook/cognigy",
            &nlu_body("3f1c8a52-3c1e-4c55-9d2e-1f0a9b7c6d5e", "A-1", "c-1"),
        )
        .await;
    assert_eq!(ok.status, 200);
    check("/webhook/cognigy", "post", 200, &ok.json());
    // The check can fail: a success body is no error body.
    let error_schema = answer_schema(&doc, "/webhook/cognigy", "post", 400);
    assert!(fits(&doc, &error_schema, &ok.json()).is_err());
    let flow = app.post_signed("/webhook", &flow_body("s-1", "c-2")).await;
    check("/webhook", "post", 200, &flow.json());
    let mut low: Value = serde_json::from_slice(&nlu_body(
        "3f1c8a52-3c1e-4c55-9d2e-1f0a9b7c6d5f",
        "A-2",
        "c-3",
    ))
    .unwrap();
    low["intent"]["confidence"] = json!(0.1);
    let rejected = app
        .post_signed("/webhook/cognigy", &serde_json::to_vec(&low).unwrap())
        .await;
    assert_eq!(rejected.status, 422);
    check("/webhook/cognigy", "post", 422, &rejected.json());
    let invalid = app.post_signed("/webhook", br#"{"sessionId": 3}"#).await;
    assert_eq!(invalid.status, 400);
    check("/webhook", "post", 400, &invalid.json());
    let unsigned = app
        .post(
            "/webhook",
            &flow_body("s-1", "c-4"),
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(unsigned.status, 401);
    check("/webhook", "post", 401, &unsigned.json());
    assert!(
        doc["paths"]["/webhook"]["post"]["responses"]["401"]["headers"]
            .get("WWW-Authenticate")
            .is_some()
    );
    assert!(
        unsigned.header("www-authenticate").is_some(),
        "a documented header is sent"
    );

    for (path, documented) in [
        ("/healthz", "/healthz"),
        ("/readyz", "/readyz"),
        ("/stats", "/stats"),
    ] {
        let r = app.get(path, &[]).await;
        check(documented, "get", r.status.as_u16(), &r.json());
    }
    let journey = app.admin_get("/admin/events/c-1").await;
    assert_eq!(journey.status, 200);
    check("/admin/events/{id}", "get", 200, &journey.json());
    let dead = app.admin_get("/admin/dead-letters?limit=5").await;
    check("/admin/dead-letters", "get", 200, &dead.json());
    let sinks = app.admin_get("/admin/sinks").await;
    check("/admin/sinks", "get", 200, &sinks.json());
    let dry = app
        .admin_post("/admin/dead-letters/replay", &json!({"dry_run": true}))
        .await;
    check("/admin/dead-letters/replay", "post", 200, &dry.json());
    let forbidden = app.get("/admin/sinks", &[]).await;
    assert_eq!(forbidden.status, 403);
    check("/admin/sinks", "get", 403, &forbidden.json());
    let not_a_number = app.admin_get("/admin/events/none").await;
    check("/admin/events/{id}", "get", 404, &not_a_number.json());
    app.stop().await;
}

/// Every link names an operation of the document and parameters it has, and the journey
/// link, resolved against a real answer, finds the event that answer was for.
#[tokio::test]
async fn links_name_real_operations_and_lead_from_an_answer_to_its_journey() {
    let config = Config::load(None, &BTreeMap::new()).unwrap();
    let doc = cognihook::http::openapi::document(&config).unwrap();
    let mut operations = BTreeMap::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            if let Some(id) = op["operationId"].as_str() {
                let params: Vec<String> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter_map(|p| p["name"].as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                operations.insert(id.to_string(), params);
            }
        }
    }
    let mut links = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, answer) in op["responses"].as_object().into_iter().flatten() {
                for (name, link) in answer["links"].as_object().into_iter().flatten() {
                    let target = link["operationId"].as_str().expect("operationId");
                    let params = operations
                        .get(target)
                        .unwrap_or_else(|| panic!("{method} {path} {status} {name}: {target}?"));
                    for p in link["parameters"].as_object().unwrap().keys() {
                        assert!(params.contains(p), "{target} has no parameter {p}");
                    }
                    links.push((path.clone(), name.clone(), link.clone()));
                }
            }
        }
    }
    let names: Vec<(&str, &str)> = links
        .iter()
        .map(|(p, n, _)| (p.as_str(), n.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("/webhook", "journey"),
            ("/webhook/cognigy", "journey"),
            ("/admin/dead-letters", "purge"),
            ("/admin/sinks", "pauseOrResume"),
        ]
    );

    let app = TestApp::spawn().await;
    let ok = app
        .post_signed("/webhook", &flow_body("s-l", "c-link"))
        .await;
    assert_eq!(ok.status, 200);
    let from = links[0].2["parameters"]["id"].as_str().unwrap();
    let pointer = from
        .strip_prefix("$response.body#")
        .expect("a body pointer");
    let id = ok.json().pointer(pointer).cloned().expect("in the answer");
    let journey = app
        .admin_get(&format!("/admin/events/{}", id.as_str().unwrap()))
        .await;
    assert_eq!(journey.status, 200);
    assert_eq!(journey.json()["event"]["correlationId"], "c-link");
    app.stop().await;
}
