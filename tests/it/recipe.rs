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

/// Runs the snippet with `args`, feeding `stdin`; `None` when Node.js is absent and not required.
fn node(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Option<String> {
    let mut cmd = Command::new("node");
    cmd.arg(SNIPPET)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if std::env::var_os("COGNIHOOK_TEST_NODE").is_some() => {
            panic!("COGNIHOOK_TEST_NODE is set but node cannot run: {e}")
        }
        Err(e) => {
            eprintln!("skipped: node cannot run ({e}); set COGNIHOOK_TEST_NODE to require it");
            return None;
        }
    };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snippets_signed_post_is_accepted_by_a_timestamped_route() {
    let app = TestApp::spawn_with(|c| {
        set_routes(
            c,
            r#"
[[route]]
name = "recipe"
path = "/cognigy/orders"
payload = "cognigy-input"
auth = { scheme = "hmac-sha256-timestamped", secrets = ["recipe-secret"] }
"#,
        )
    })
    .await;
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
