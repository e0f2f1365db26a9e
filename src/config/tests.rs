use super::*;
use std::time::Duration;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn default_config_serves_both_seed_routes() {
    let c = Config::load(None, &env(&[])).expect("default config is valid");
    let paths: Vec<_> = c.routes.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/webhook", "/webhook/cognigy"]);
    assert_eq!(c.routes[1].rules.len(), 2);
    assert_eq!(c.store.sync, SyncMode::Full);
}

#[test]
fn env_overrides_file_and_defaults() {
    let c = Config::load(
        None,
        &env(&[
            ("COGNIHOOK_LISTEN", "127.0.0.1:9999"),
            ("COGNIHOOK_DATA_DIR", "/tmp/x"),
        ]),
    )
    .expect("valid");
    assert_eq!(c.server.listen.port(), 9999);
    assert_eq!(
        c.store.sqlite_path().expect("path"),
        PathBuf::from("/tmp/x/cognihook.db")
    );
}

#[test]
fn reports_every_unknown_key_at_once() {
    let err = Config::from_toml(
        "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n[limits]\nmax_bdy = 3\n[bogus]\nx = 1\n",
    )
    .expect_err("unknown keys");
    assert_eq!(err.0.len(), 3, "{err}");
    assert!(err.0.iter().any(|p| p.contains("server.lisen")), "{err}");
    assert!(err.0.iter().any(|p| p.contains("limits.max_bdy")), "{err}");
    assert!(err.0.iter().any(|p| p.contains("bogus")), "{err}");
}

#[test]
fn reports_every_semantic_problem_at_once() {
    let text = r#"
[limits]
max_body_bytes = 0
[store]
background_nice = 20
[[route]]
name = "a"
path = "nope"
payload = "nlu"
auth = { scheme = "none" }
[[route]]
name = "a"
path = "/x"
payload = { kind = "flow-event" }
auth = { scheme = "hmac-sha256" }
"#;
    let c = Config::from_toml(text).expect("parses");
    // The configuration's checks, then each auth table's own (run when routes are built).
    let mut p = c.validate();
    p.extend(
        crate::ingest::Routes::build(&c, &env(&[]))
            .err()
            .unwrap_or_default(),
    );
    assert!(p.iter().any(|m| m.contains("max_body_bytes")), "{p:?}");
    assert!(
        p.iter()
            .any(|m| m == "store.background_nice must be 0..=19, not 20"),
        "{p:?}"
    );
    assert!(p.iter().any(|m| m.contains("must start with `/`")), "{p:?}");
    assert!(
        p.iter().any(|m| m.contains("allow_unauthenticated")),
        "{p:?}"
    );
    assert!(p.iter().any(|m| m.contains("more than one route")), "{p:?}");
    assert!(p.iter().any(|m| m.contains("needs `secrets`")), "{p:?}");
}

#[test]
fn durations_are_human_strings() {
    let c = Config::from_toml("[limits]\ndeadline = \"500ms\"\n").expect("parses");
    assert_eq!(c.limits.deadline, Duration::from_millis(500));
    let e = Config::from_toml("[limits]\ndeadline = \"soon\"\n").expect_err("bad");
    assert!(e.0[0].contains("invalid duration `soon`"), "{e}");
}

#[test]
fn a_partial_file_keeps_the_built_in_value_of_every_key_it_does_not_set() {
    let c = Config::from_toml(
        "[server]\nlisten = \"127.0.0.1:9\"\n[delivery]\nbusy = { in_flight = 4 }\n",
    )
    .expect("parses");
    let d = Config::default();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:9");
    assert_eq!(c.server.idle_timeout, d.server.idle_timeout);
    assert_eq!(c.server.max_connections, 10_000);
    assert_eq!(c.delivery.busy.in_flight, 4);
    assert_eq!(
        c.delivery.busy.interval,
        Duration::from_millis(100),
        "inline tables merge too"
    );
    assert_eq!(c.delivery.busy.share, d.delivery.busy.share);
    assert_eq!(c.routes.len(), 2, "no [[route]]: the built-in ones");
    assert_eq!(
        toml::to_string(&c.store).expect("store"),
        toml::to_string(&d.store).expect("store")
    );
}

#[test]
fn the_section_defaults_are_the_embedded_files_values() {
    // One source: every Default impl reads defaults.toml (spot checks of its values).
    assert_eq!(LimitsConfig::default().deadline, Duration::from_secs(7));
    assert_eq!(StoreConfig::default().queue_depth, 8192);
    assert!(default_toml().contains("queue_depth = 8192"));
    assert!(AuditConfig::default().enabled);
    assert_eq!(BusyConfig::default().in_flight, 16);
    assert!(default_toml().contains("busy = { in_flight = 16,"));
}

#[test]
fn print_default_is_a_valid_config_equal_to_the_built_in_default() {
    let text = default_toml();
    let c = Config::from_toml(text).expect("default TOML parses");
    assert!(c.validate().is_empty());
    let as_toml = |c: &Config| toml::to_string(c).expect("serialise");
    assert_eq!(as_toml(&c), as_toml(&Config::default()));
}

#[test]
fn simulator_refuses_non_loopback_listener() {
    let mut c = Config::default();
    c.server.simulator = true;
    assert!(c
        .validate()
        .iter()
        .any(|p| p.contains("not a loopback address")));
    c.server.listen = "127.0.0.1:8080".parse().expect("addr");
    assert!(c.validate().is_empty());
    c.server.listen = "0.0.0.0:8080".parse().expect("addr");
    c.server.simulator_allow_remote = true;
    assert!(c.validate().is_empty());
}

#[test]
fn file_routes_replace_builtin_ones() {
    let c = Config::from_toml(
        "[[route]]\nname = \"x\"\npath = \"/x\"\npayload = \"nlu\"\nauth = { scheme = \"hmac-sha256\", secrets = [\"lit\"] }\n",
    )
    .expect("parses");
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].name, "x");
}

#[test]
fn masked_config_hides_literal_secrets_and_token() {
    let mut c = Config::default();
    c.routes[0].auth.secrets = vec!["supersecret".into(), "env:X".into()];
    c.server.admin_token = Some("tok123".into());
    let sink: SinkConfig = toml::from_str(
        "kind = \"http\"\nurl = \"http://user:pw123@host/x\"\nsecret = \"sinksecret\"",
    )
    .expect("sink");
    c.sinks.insert("s".into(), sink);
    c.store.url = Some("postgres://app:dbpass42@db:5432/cognihook".into());
    c.routes[1].auth = AuthConfig {
        password: Some("basicpw".into()),
        username: Some("u".into()),
        ..AuthConfig::with_secrets(AuthScheme::Basic, Vec::new())
    };
    let out = c.to_masked_toml();
    assert!(!out.contains("dbpass42"));
    assert!(out.contains("@db:5432/cognihook"));
    assert!(!out.contains("basicpw"));
    assert!(!out.contains("sinksecret"));
    assert!(!out.contains("pw123"));
    assert!(!out.contains("supersecret"));
    assert!(!out.contains("tok123"));
    assert!(out.contains("env:X"));
}

#[test]
fn the_configuration_reference_lists_every_key_the_defaults_document() {
    let reference = include_str!("../../docs/configuration.md");
    let missing: Vec<&String> = documented_keys()
        .iter()
        .filter(|k| {
            let last = k.rsplit('.').next().unwrap_or(k);
            !(reference.contains(&format!("{last} =")) || reference.contains(&format!("`{last}`")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not mention: {missing:?}"
    );
    assert!(documented_keys().len() > 40, "{:?}", documented_keys());
}

#[test]
fn bad_values_in_different_tables_are_all_reported_at_once() {
    let text = r#"
[server]
idle_timeout = "soon"
[store]
sync = "always"
[limits]
max_body_bytes = "big"
[[route]]
name = "a"
path = "/a"
payload = "nlu"
auth = { scheme = "api-key", keys = ["k"] }
[[route]]
name = "b"
path = "/b"
payload = "nope"
auth = { scheme = "api-key", keys = ["k"] }
[sink.x]
kind = "http"
url = "http://x"
timeout = "never"
[sink.y]
kind = "carrier-pigeon"
"#;
    let errors = Config::from_toml(text).expect_err("six bad values").0;
    let all = errors.join("\n");
    for want in [
        "invalid duration `soon`",
        "unknown variant `always`",
        "expected usize",
        "unknown variant `nope`",
        "invalid duration `never`",
        "unknown variant `carrier-pigeon`",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    assert_eq!(errors.len(), 6, "{all}");
    assert!(all.contains("line 16"), "each names its line: {all}");
}

#[test]
fn route_paths_the_gateway_serves_itself_are_reserved() {
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/stats",
        "/admin/hooks",
        "/simulate/x",
        "/oauth/token",
        "/console",
        "/console/hook",
    ] {
        let text = format!(
            "[[route]]\nname = \"r\"\npath = \"{path}\"\npayload = \"nlu\"\n\
             auth = {{ scheme = \"hmac-sha256\", secrets = [\"s\"] }}\n"
        );
        let c = Config::from_toml(&text).expect("parses");
        let p = c.validate();
        assert!(
            p.iter()
                .any(|m| m.contains(&format!("path `{path}` is reserved"))),
            "{path}: {p:?}"
        );
    }
    let alerts = Config::from_toml(
        "[[route]]\nname = \"_alerts\"\npath = \"/a\"\npayload = \"nlu\"\n\
         auth = { scheme = \"hmac-sha256\", secrets = [\"s\"] }\n",
    )
    .expect("parses");
    assert!(alerts
        .validate()
        .iter()
        .any(|m| m.contains("the name is reserved")));
    let c = Config::from_toml(
        "[[route]]\nname = \"r\"\npath = \"/hooks/console\"\npayload = \"nlu\"\n\
         auth = { scheme = \"hmac-sha256\", secrets = [\"s\"] }\n",
    )
    .expect("parses");
    assert!(c.validate().is_empty(), "{:?}", c.validate());
}
