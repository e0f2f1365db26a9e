//! The Cognigy-side recipe (`examples/cognigy/`): what its JavaScript signs verifies here,
//! byte for byte, and its `signedPost` gets a 200 from a real gateway route.
//!
//! Runs the snippet with the machine's Node.js. Without `node` on PATH the test is skipped,
//! unless `COGNIHOOK_TEST_NODE` is set (as `.ci/run` does), in which case it fails.

use std::io::Write;
use std::process::{Command, Stdio};

use http::StatusCode;

use crate::support::{set_routes, unix_now, TestApp};

const SNIPPET: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/cognigy/extension/src/signed-request.js"
);

/// What spawning Node.js gave: the value, or `None` (skipped, and said so) when it cannot
/// run and `COGNIHOOK_TEST_NODE` does not require it.
fn node_or_skip<T>(spawned: std::io::Result<T>) -> Option<T> {
    match spawned {
        Ok(v) => Some(v),
        Err(e) if std::env::var_os("COGNIHOOK_TEST_NODE").is_some() => {
            panic!("COGNIHOOK_TEST_NODE is set but node cannot run: {e}")
        }
        Err(e) => {
            eprintln!("skipped: node cannot run ({e}); set COGNIHOOK_TEST_NODE to require it");
            None
        }
    }
}

/// Runs the snippet with `args`, feeding `stdin`; `None` when Node.js is absent and not required.
fn node(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Option<String> {
    let mut cmd = Command::new("node");
    cmd.arg(SNIPPET)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = node_or_skip(cmd.spawn())?;
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap().trim().to_string())
}

#[test]
fn the_snippet_signs_exactly_as_the_gateway_verifies() {
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cognigy/http-request-node-body.rendered.json"
    ))
    .unwrap();
    let Some(header) = node(
        &["sign"],
        &[
            ("COGNIHOOK_SECRET", "recipe-secret"),
            ("COGNIHOOK_T", "1764000000"),
        ],
        &body,
    ) else {
        return;
    };
    assert_eq!(
        header,
        cognihook::ingest::auth::sign_timestamped(b"recipe-secret", 1_764_000_000, &body)
    );
}

/// A gateway with one `cognigy-input` route at `/cognigy/orders` that takes
/// `hmac-sha256-timestamped` signatures made with `secret`.
async fn timestamped_gateway(secret: &str) -> TestApp {
    let route = format!(
        r#"
[[route]]
name = "recipe"
path = "/cognigy/orders"
payload = "cognigy-input"
auth = {{ scheme = "hmac-sha256-timestamped", secrets = ["{secret}"] }}
"#
    );
    TestApp::spawn_with(|c| set_routes(c, &route)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snippets_signed_post_is_accepted_by_a_timestamped_route() {
    let app = timestamped_gateway("recipe-secret").await;
    let url = app.url("/cognigy/orders");
    let payload = format!(
        r#"{{"userId":"user123","sessionId":"recipe-{}","text":"Where is my order?","intent":"orderStatus","intentScore":"0.91"}}"#,
        unix_now()
    );
    let out = tokio::task::spawn_blocking(move || {
        node(
            &["post", &url],
            &[("COGNIHOOK_SECRET", "recipe-secret")],
            payload.as_bytes(),
        )
    })
    .await
    .unwrap();
    let Some(out) = out else { return };
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["status"], StatusCode::OK.as_u16(), "{r}");
    assert_eq!(r["body"]["status"], "success");
    assert_eq!(r["body"]["data"]["stateVersion"], 1);
}

/// A stand-in for `@cognigy/extension-tools` (what the module calls of it), so the module
/// loads as Cognigy loads it without the package.
const EXTENSION_TOOLS_STUB: &str = r#"
exports.createNodeDescriptor = (d) => d;
exports.createExtension = (e) => ({ ...e, __createdBy: "createExtension" });
"#;

/// Loads `module.js` the way Cognigy does (its default export), checks the extension's
/// shape, and runs its node's function with `config`; prints the Context afterwards.
const DRIVER: &str = r#"
const ext = require(process.env.MODULE).default;
if (!ext || ext.__createdBy !== "createExtension") throw new Error("no default export made by createExtension");
const node = ext.nodes.find((n) => n.type === "cognihookSignedRequest");
const cognigy = { context: {} };
const config = JSON.parse(process.env.CONFIG);
node.function({ cognigy, config }).then(() => process.stdout.write(JSON.stringify(cognigy.context)));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extension_module_loads_as_cognigy_loads_it_and_its_node_is_accepted() {
    let app = timestamped_gateway("ext-secret").await;
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("node_modules/@cognigy/extension-tools");
    std::fs::create_dir_all(&stub).unwrap();
    std::fs::write(stub.join("index.js"), EXTENSION_TOOLS_STUB).unwrap();
    let driver = dir.path().join("driver.js");
    std::fs::write(&driver, DRIVER).unwrap();
    let module = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/cognigy/extension/src/module.js"
    );
    let config = serde_json::json!({
        "connection": {"secret": "ext-secret"},
        "url": app.url("/cognigy/orders"),
        "payload": {"userId": "user123", "sessionId": format!("ext-{}", unix_now()),
                    "intent": "orderStatus", "intentScore": "0.9"},
        "contextKey": "cognihook",
    });
    let node_path = dir.path().join("node_modules");
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("node");
        cmd.arg(&driver)
            .env("MODULE", module)
            .env("CONFIG", config.to_string())
            .env("NODE_PATH", &node_path);
        node_or_skip(cmd.output())
    })
    .await
    .unwrap();
    let Some(out) = out else { return };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let context: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(context["cognihook"]["status"], 200, "{context}");
    assert_eq!(context["cognihook"]["body"]["status"], "success");
    assert_eq!(context["cognihook"]["body"]["data"]["stateVersion"], 1);
}

#[test]
fn the_extension_package_has_what_cognigys_upload_expects() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cognigy/extension");
    let icon = std::fs::read(format!("{dir}/icon.png")).unwrap();
    assert_eq!(&icon[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (
        u32::from_be_bytes(icon[16..20].try_into().unwrap()),
        u32::from_be_bytes(icon[20..24].try_into().unwrap()),
    );
    assert_eq!((w, h), (64, 64), "Cognigy wants a 64x64 icon");
    let package: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{dir}/package.json")).unwrap()).unwrap();
    let zip = package["scripts"]["zip"].as_str().unwrap();
    for part in [
        "package.json",
        "package-lock.json",
        "README.md",
        "icon.png",
        "src/",
    ] {
        assert!(zip.contains(part), "npm run zip packs {part}: {zip}");
        let path = format!("{dir}/{}", part.trim_end_matches('/'));
        assert!(std::path::Path::new(&path).exists(), "{path}");
    }
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{dir}/package-lock.json")).unwrap())
            .unwrap();
    assert!(lock["packages"]["node_modules/@cognigy/extension-tools"]["integrity"].is_string());
}
