//! The real binary: exit codes, CLI commands, graceful shutdown and kill -9 durability.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::binary::{command, run, Server};
use crate::support::{count, flow_body, sign, SECRET};

const T: Duration = Duration::from_secs(60);

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn serve_without_the_secret_exits_2_naming_the_variable() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = command(dir.path());
    c.arg("serve");
    let o = run(c, T);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("COGNIGY_WEBHOOK_SECRET"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn simulator_on_a_public_listener_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", SECRET)
        .env("COGNIHOOK_LISTEN", "0.0.0.0:0")
        .args(["serve", "--simulator"]);
    let o = run(c, T);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not a loopback address"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("COGNIHOOK_LISTEN=127.0.0.1:8080"),
        "the message names the fix: {}",
        stderr(&o)
    );
    // --listen wins over the environment: on loopback the simulator starts.
    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", SECRET)
        .env("COGNIHOOK_LISTEN", "0.0.0.0:0");
    let mut server = Server::start_with(c, &["--listen", "127.0.0.1:0", "--simulator"]);
    assert!(server.addr.ip().is_loopback(), "{}", server.addr);
    server.terminate();
    server.wait(T);
}

#[test]
fn check_config_lists_every_problem_and_masks_secrets() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[limits]\nmax_body_bytes = 0\ntypo = 1\n[[route]]\nname = \"r\"\npath = \"/r\"\npayload = \"nlu\"\n\
         auth = { scheme = \"hmac-sha256\", secrets = [\"env:MISSING_ONE\"] }\n\
         rules = [{ expr = \"event.intent.score >=\", message = \"m\" }]\n",
    )
    .expect("write");
    let mut c = command(dir.path());
    c.arg("--config").arg(&file).arg("check-config");
    let o = run(c, T);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    for want in [
        "unknown key `limits.typo`",
        "max_body_bytes",
        "MISSING_ONE",
        "does not compile",
    ] {
        assert!(err.contains(want), "missing {want}: {err}");
    }

    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", SECRET)
        .env("COGNIHOOK_ADMIN_TOKEN", "tok-very-secret")
        .arg("check-config");
    let o = run(c, T);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("/webhook/cognigy"), "{out}");
    assert!(!out.contains("tok-very-secret"), "{out}");
    assert!(!out.contains(SECRET), "{out}");
}

#[test]
fn check_config_suggests_the_nearest_key_and_confirms_a_valid_file_in_one_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisen = \"127.0.0.1:1\"\n[store]\nsyncc = \"full\"\n",
    )
    .unwrap();
    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", SECRET)
        .arg("--config")
        .arg(&bad)
        .arg("check-config");
    let o = run(c, T);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("`server.lisen` (did you mean `listen`?)"),
        "{err}"
    );
    assert!(
        err.contains("`store.syncc` (did you mean `sync`?)"),
        "{err}"
    );

    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", SECRET).arg("check-config");
    let o = run(c, T);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let confirmations: Vec<&str> = std::str::from_utf8(&o.stderr)
        .unwrap()
        .lines()
        .filter(|l| l.contains("configuration OK"))
        .collect();
    assert_eq!(confirmations.len(), 1, "{}", stderr(&o));
    assert!(
        confirmations[0].contains("2 route(s)"),
        "{}",
        confirmations[0]
    );
}

#[test]
fn every_example_configuration_passes_check_config() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config");
    let mut files: Vec<_> = std::fs::read_dir(examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = command(dir.path());
        c.current_dir(dir.path())
            .env("COGNIGY_WEBHOOK_SECRET", SECRET)
            .env("COGNIGY_API_KEY", "k")
            .env("ORDERS_SIGNING_SECRET", "o")
            .arg("--config")
            .arg(&file)
            .arg("check-config");
        let o = run(c, T);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}: {}",
            file.display(),
            stderr(&o)
        );
        assert!(
            stderr(&o).contains("configuration OK"),
            "{}",
            file.display()
        );
    }
}

#[test]
fn completions_and_the_manual_page_come_from_the_command_line_definition() {
    let dir = tempfile::tempdir().expect("tmp");
    for (shell, marker) in [
        ("bash", "_cognihook()"),
        ("zsh", "#compdef cognihook"),
        ("fish", "complete -c cognihook"),
    ] {
        let mut c = command(dir.path());
        c.args(["completions", shell]);
        let o = run(c, T);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains(marker), "{shell}: {out}");
        assert!(
            out.contains("check-config") && out.contains("dead-letters"),
            "{shell}"
        );
    }
    let mut c = command(dir.path());
    c.arg("man");
    let o = run(c, T);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let page = stdout(&o);
    assert!(page.contains(".TH cognihook 1"), "{page}");
    assert!(page.contains("check\\-config"), "{page}");
}

#[test]
fn print_default_is_a_valid_config_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = command(dir.path());
    c.args(["check-config", "--print-default"]);
    let o = run(c, T);
    assert_eq!(o.status.code(), Some(0));
    let file = dir.path().join("default.toml");
    std::fs::write(&file, o.stdout).expect("write");
    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", SECRET)
        .arg("--config")
        .arg(&file)
        .arg("check-config");
    let o = run(c, T);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn sign_prints_the_hmac_of_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("p.json");
    let body = flow_body("s", "c");
    std::fs::write(&file, &body).expect("write");
    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", format!("{SECRET},other"))
        .arg("sign")
        .arg(&file);
    let o = run(c, T);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), sign(&body));
}

#[test]
fn send_example_is_accepted_then_replayed_and_events_show_finds_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", SECRET);
    let mut server = Server::start(c);
    let url = format!("http://{}/webhook/cognigy", server.addr);

    let send = |secret: &str| {
        let mut c = command(dir.path());
        c.env("COGNIGY_WEBHOOK_SECRET", secret)
            .args(["send", "--example", "nlu", "--url", &url]);
        run(c, T)
    };
    let o = send(SECRET);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).starts_with("HTTP 200"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("\"orderId\":\"A-1001\""),
        "{}",
        stdout(&o)
    );
    let o = send(SECRET);
    assert!(
        stdout(&o).contains("idempotent-replayed: true"),
        "{}",
        stdout(&o)
    );
    let o = send("wrong-secret");
    assert_eq!(o.status.code(), Some(1), "non-2xx exits 1");
    assert!(stdout(&o).contains("HTTP 401"), "{}", stdout(&o));

    let mut c = command(dir.path());
    c.args(["events", "show", "corr-example-nlu-1"]);
    let o = run(c, T);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j: Value = serde_json::from_slice(&o.stdout).expect("journey JSON");
    // It says which store it read.
    let db = dir.path().join("cognihook.db");
    assert!(
        stderr(&o).contains(&format!("store: SQLite {}", db.display())),
        "{}",
        stderr(&o)
    );
    assert_eq!(j["event"]["route"], "nlu-orders");
    assert_eq!(j["event"]["entities"]["orderId"], "A-1001");

    let mut c = command(dir.path());
    c.args(["events", "show", "no-such-event"]);
    let o = run(c, T);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no-such-event"));

    // `sessions forget`: refused while the gateway owns the store (its in-memory session
    // versions would not forget), then done once it has stopped.
    let session = j["event"]["sessionId"]
        .as_str()
        .expect("session")
        .to_string();
    let forget = || {
        let mut c = command(dir.path());
        c.args(["sessions", "forget", &session]);
        run(c, T)
    };
    let o = forget();
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("DELETE /admin/sessions/"),
        "{}",
        stderr(&o)
    );
    server.terminate();
    assert_eq!(server.wait(T), Some(0));
    let o = forget();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let f: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(f["events"], 1, "{f}");
    let mut c = command(dir.path());
    c.args(["events", "show", "corr-example-nlu-1"]);
    let j: Value = serde_json::from_slice(&run(c, T).stdout).expect("journey JSON");
    assert_eq!(j["event"]["forgotten"], true, "{j}");
    assert!(j["event"].get("entities").is_none(), "{j}");
}

/// The bytes of every file under `dir`, one after another.
fn files_under(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            all.extend(files_under(&path));
        } else {
            all.extend(std::fs::read(&path).expect("read file"));
        }
    }
    all
}

/// Schema 18's packed records: an event the gateway made is kept in the log and beside the
/// database without its answer's envelope or the columns its body repeats, and its duplicate
/// still gets the first answer byte for byte, after a `kill -9` (the log is read again) and
/// after a clean stop (from the record beside the database).
#[test]
fn a_stored_event_keeps_its_answer_packed_and_a_duplicate_gets_it_back_whole() {
    let dir = tempfile::tempdir().expect("tmp");
    let start = || {
        let mut c = command(dir.path());
        c.env("COGNIGY_WEBHOOK_SECRET", SECRET);
        Server::start(c)
    };
    let send = |server: &Server| {
        let url = format!("http://{}/webhook/cognigy", server.addr);
        let mut c = command(dir.path());
        c.env("COGNIGY_WEBHOOK_SECRET", SECRET)
            .args(["send", "--example", "nlu", "--url", &url]);
        let o = run(c, T);
        assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
        let out = stdout(&o);
        let answer = out
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no answer in {out}"))
            .to_string();
        (answer, out.contains("idempotent-replayed: true"))
    };
    let server = start();
    let (first, replayed) = send(&server);
    assert!(!replayed);
    assert!(
        first.contains("\"message\":\"Payload processed successfully\""),
        "{first}"
    );
    drop(server); // SIGKILL
    let mut server = start();
    assert_eq!(send(&server), (first.clone(), true));
    // Stopped: the record is beside the database, the log's segment gone.
    server.terminate();
    assert_eq!(server.wait(T), Some(0));
    let kept = [
        files_under(&dir.path().join("cognihook.log")),
        files_under(&dir.path().join("cognihook.bodies")),
    ];
    let transaction = first
        .split("\"transactionId\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a transaction id")
        .to_string();
    for bytes in &kept {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains("Payload processed successfully"));
        // Once, in the body, wherever a record is.
        for at in text.match_indices(&transaction).map(|(at, _)| at) {
            assert!(text[..at].ends_with("\"transactionId\":\""), "{text}");
        }
    }
    assert!(
        String::from_utf8_lossy(&kept[1]).contains(&transaction),
        "the record is beside the database"
    );
    let server = start();
    assert_eq!(send(&server), (first, true));
}

/// Starts a request whose body is held back, so it is in flight while the server shuts down.
fn start_slow_request(addr: std::net::SocketAddr, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    let head = format!(
        "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         x-cognigy-signature: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        sign(body),
        body.len()
    );
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(&body[..10]).expect("part");
    s.flush().expect("flush");
    s
}

#[test]
fn sigterm_answers_in_flight_requests_then_exits_0() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", SECRET);
    let mut server = Server::start(c);
    let body = flow_body("s-term", "corr-term");
    let mut s = start_slow_request(server.addr, &body);
    // Make sure the request is being read (its connection accepted) before the signal.
    let probe = flow_body("s-probe", "corr-probe");
    let mut p = start_slow_request(server.addr, &probe);
    p.write_all(&probe[10..]).expect("rest");
    let mut out = String::new();
    p.read_to_string(&mut out).expect("probe answer");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    server.terminate();
    s.write_all(&body[10..]).expect("rest of body");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("answer");
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "in-flight request answered: {out}"
    );
    assert_eq!(server.wait(T), Some(0));
    let audit: Vec<String> = server.stdout_lines();
    assert!(
        audit.iter().any(|l| l.contains("corr-term")),
        "audit flushed before exit: {audit:?}"
    );
    let db = rusqlite::Connection::open(dir.path().join("cognihook.db")).expect("db");
    cognihook::store::sqlite::add_event_body_function(&db, &dir.path().join("cognihook.db"))
        .unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM all_events WHERE correlation_id = 'corr-term'"
        ),
        1
    );
}

#[test]
fn every_acknowledged_event_survives_kill_9_under_load() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", SECRET);
    let mut server = Server::start(c);
    let addr = server.addr;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (acked, stop) = (acked.clone(), stop.clone());
        workers.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let corr = format!("kill9-{w}-{i}");
                let body = flow_body(&format!("sess-{w}-{}", i % 5), &corr);
                i += 1;
                let Ok(mut s) = TcpStream::connect(addr) else {
                    break;
                };
                let head = format!(
                    "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                     x-cognigy-signature: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    sign(&body),
                    body.len()
                );
                if s.write_all(head.as_bytes())
                    .and_then(|()| s.write_all(&body))
                    .is_err()
                {
                    break;
                }
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200") {
                    acked.lock().expect("lock").push(corr);
                }
            }
        }));
    }
    // Kill once a good number of events has been acknowledged, with requests still in flight.
    while acked.lock().expect("lock").len() < 300 {
        std::thread::sleep(Duration::from_millis(5));
    }
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("worker");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 300);

    // Restart on the same data dir (recovers the WAL), then check every acknowledged event.
    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", SECRET);
    let mut server = Server::start(c);
    let db = rusqlite::Connection::open(dir.path().join("cognihook.db")).expect("db");
    cognihook::store::sqlite::add_event_body_function(&db, &dir.path().join("cognihook.db"))
        .unwrap();
    let mut stmt = db
        .prepare("SELECT count(*) FROM all_events WHERE correlation_id = ?1")
        .expect("stmt");
    let missing: Vec<&String> = acked
        .iter()
        .filter(|c| {
            stmt.query_row([c.as_str()], |r| r.get::<_, i64>(0))
                .expect("q")
                != 1
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // Session versions are gap-free after the crash: max version equals the event count.
    let gaps = count(
        &db,
        "SELECT count(*) FROM (SELECT session_id, max(state_version) AS m, count(*) AS n \
         FROM all_events GROUP BY session_id) WHERE m != n",
    );
    assert_eq!(gaps, 0);
    server.terminate();
    assert_eq!(server.wait(T), Some(0));
}

#[test]
fn send_speaks_https_and_trusts_a_private_ca_given_with_cacert() {
    use crate::support::tls_front::{Speaks, TlsFront};
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", SECRET);
    let server = Server::start(c);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let front = rt.block_on(TlsFront::start(server.addr, Speaks::Http));
    let url = format!("https://localhost:{}/webhook", front.addr.port());
    let send = |extra: &[&str]| {
        let mut c = command(dir.path());
        c.env("COGNIGY_WEBHOOK_SECRET", SECRET)
            .args(["send", "--example", "flow-event", "--url", &url])
            .args(extra);
        run(c, T)
    };

    let ca = front.ca_file.to_str().expect("utf-8 path").to_string();
    let o = send(&["--cacert", &ca]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).starts_with("HTTP 200"), "{}", stdout(&o));
    assert_eq!(front.handshakes(), 1);

    // Without the CA the certificate is refused, and the error says so.
    let o = send(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("UnknownIssuer"), "{}", stderr(&o));
    assert_eq!(front.handshakes(), 1);
}

#[test]
fn the_store_is_private_to_its_owner_and_a_wider_one_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    let dir = tempfile::tempdir().expect("tmp");
    // A data directory the gateway creates, under a permissive umask (cognihook sets its own).
    let data = dir.path().join("data");
    let start = || {
        let mut c = command(&data);
        c.env("COGNIGY_WEBHOOK_SECRET", SECRET);
        Server::start(c)
    };
    let mut server = start();
    let mut send = command(&data);
    send.env("COGNIGY_WEBHOOK_SECRET", SECRET).args([
        "send",
        "--example",
        "flow-event",
        "--url",
        &format!("http://{}/webhook", server.addr),
    ]);
    let o = run(send, T);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    server.terminate();
    assert_eq!(server.wait(T), Some(0));
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("cognihook.db")), 0o600);
    let log = data.join("cognihook.log");
    assert_eq!(mode(&log), 0o700);
    for segment in std::fs::read_dir(&log).expect("log") {
        let segment = segment.expect("entry").path();
        assert_eq!(mode(&segment), 0o600, "{}", segment.display());
    }
    // The idempotency keys (an LSM tree in a directory of its own): nothing for others.
    let keys = data.join("cognihook.keys");
    assert_eq!(mode(&keys), 0o700);
    let mut pending = vec![keys];
    let mut files = 0;
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("keys") {
            let path = entry.expect("entry").path();
            assert_eq!(mode(&path) & 0o077, 0, "{}", path.display());
            if path.is_dir() {
                pending.push(path);
            } else {
                files += 1;
            }
        }
    }
    assert!(files > 0, "the keys directory holds the keys");
    assert!(
        !server
            .stderr_lines()
            .iter()
            .any(|l| l.contains("other users can read")),
        "no warning for a private store"
    );

    // Opened up by hand: the next start says so.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut server = start();
    let warned: Vec<String> = server
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("other users can read"))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("\"mode\":\"755\""), "{}", warned[0]);
    server.terminate();
    assert_eq!(server.wait(T), Some(0));
}

#[test]
fn sighup_reopens_the_audit_log_and_never_stops_the_gateway() {
    let dir = tempfile::tempdir().expect("tmp");
    let audit = dir.path().join("audit.jsonl");
    let file = dir.path().join("cognihook.toml");
    std::fs::write(&file, format!("[audit]\npath = \"{}\"\n", audit.display())).expect("config");
    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", SECRET)
        .arg("--config")
        .arg(&file);
    let mut server = Server::start(c);
    let send = |body: &[u8]| {
        let mut c = command(dir.path());
        c.env("COGNIGY_WEBHOOK_SECRET", SECRET).args([
            "send",
            "--url",
            &format!("http://{}/webhook", server.addr),
            "-",
        ]);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().expect("send");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(body)
            .expect("body");
        let o = child.wait_with_output().expect("send");
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    };
    send(&flow_body("s-hup", "before-rotation"));
    // Audit lines are buffered for up to 20 ms; wait until the first one is written.
    let deadline = std::time::Instant::now() + T;
    while !std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .contains("before-rotation")
    {
        assert!(std::time::Instant::now() < deadline, "no audit line");
        std::thread::sleep(Duration::from_millis(10));
    }
    let rotated = dir.path().join("audit.1");
    std::fs::rename(&audit, &rotated).expect("rotate");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    // The gateway goes on, and once it has reopened, lines go to a new file at the path.
    let deadline = std::time::Instant::now() + T;
    while !server
        .stderr_lines()
        .iter()
        .any(|l| l.contains("the audit log was opened again"))
    {
        assert!(std::time::Instant::now() < deadline, "SIGHUP not handled");
        assert!(
            server.child.try_wait().expect("wait").is_none(),
            "SIGHUP stopped the gateway"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    send(&flow_body("s-hup", "after-rotation"));
    server.terminate();
    assert_eq!(server.wait(T), Some(0));
    let old = std::fs::read_to_string(&rotated).expect("old");
    let new = std::fs::read_to_string(&audit).expect("new");
    assert!(old.contains("before-rotation"), "{old}");
    assert!(new.contains("after-rotation"), "{new}");
    assert!(!new.contains("before-rotation"), "{new}");
}

#[test]
fn admin_endpoints_on_a_public_non_loopback_listener_are_warned_about() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", SECRET)
        .env("COGNIHOOK_LISTEN", "0.0.0.0:0");
    let mut server = Server::start(c);
    server.terminate();
    assert_eq!(server.wait(T), Some(0));
    let warned = server
        .stderr_lines()
        .into_iter()
        .any(|l| l.contains("COGNIHOOK_ADMIN_LISTEN") && l.contains("WARN"));
    assert!(warned, "{:?}", server.stderr_lines());
    // On loopback (the other tests' listener) there is nothing to warn about.
    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", SECRET);
    let mut server = Server::start(c);
    server.terminate();
    assert_eq!(server.wait(T), Some(0));
    assert!(!server
        .stderr_lines()
        .iter()
        .any(|l| l.contains("COGNIHOOK_ADMIN_LISTEN")));
}

#[test]
fn logs_on_a_pipe_are_json_lines_and_name_the_store() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", SECRET);
    let mut server = Server::start(c);
    server.terminate();
    server.wait(T);
    let lines = server.stderr_lines();
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let listening = parsed
        .iter()
        .find(|l| l["message"] == "cognihook listening")
        .unwrap_or_else(|| panic!("no listening line in {lines:#?}"));
    assert_eq!(listening["level"], "INFO");
    assert!(listening["addr"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert!(
        parsed.iter().any(|l| l["message"] == "store open (SQLite)"),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains('\u{1b}')),
        "no colour codes"
    );
}
