use super::*;
use crate::alerts::Severity;

const MIN: i64 = 60_000;

fn settings() -> Settings {
    Settings {
        window_ms: 10 * MIN,
        pending_age_ms: 5 * MIN,
        auth_failures: 20,
        auth_within_ms: MIN,
        secret_unused_ms: 7 * 24 * 60 * MIN,
        console_url: Some("https://gw.example/console/".into()),
    }
}

fn sink(circuit: &'static str, opened: u64) -> SinkLook {
    SinkLook {
        name: "crm".into(),
        circuit,
        times_opened: opened,
        oldest_pending_seconds: Some(0.0),
        pending: Some(0),
        dead_letters: [
            (DeadReason::Permanent, 0),
            (DeadReason::Exhausted, 0),
            (DeadReason::Expired, 0),
        ],
    }
}

fn with_sink(s: SinkLook) -> Look {
    Look {
        sinks: vec![s],
        ..Look::default()
    }
}

fn brief(alerts: &[Alert]) -> Vec<(&'static str, Status, u64)> {
    alerts
        .iter()
        .map(|a| (a.kind.name(), a.status, a.count))
        .collect()
}

#[test]
fn a_circuit_alert_fires_once_resolves_once_and_flaps_inside_the_window_are_counted() {
    let mut m = Monitor::new(settings(), 0);
    assert!(m.look(0, &with_sink(sink("closed", 0))).is_empty());
    let fired = m.look(MIN, &with_sink(sink("open", 1)));
    assert_eq!(brief(&fired), [("circuit_open", Status::Firing, 1)]);
    assert_eq!(fired[0].subject["sink"], "crm");
    assert_eq!(fired[0].severity, Severity::Critical);
    assert_eq!(
        fired[0].link.as_deref(),
        Some("https://gw.example/console/sinks#crm")
    );
    assert!(
        m.look(2 * MIN, &with_sink(sink("open", 1))).is_empty(),
        "still open: said already"
    );
    let resolved = m.look(3 * MIN, &with_sink(sink("closed", 1)));
    assert_eq!(brief(&resolved), [("circuit_open", Status::Resolved, 1)]);
    // Opens and closes twice more inside the window (once between two looks): counted.
    assert!(m.look(4 * MIN, &with_sink(sink("open", 2))).is_empty());
    assert!(m.look(5 * MIN, &with_sink(sink("closed", 2))).is_empty());
    assert!(m.look(6 * MIN, &with_sink(sink("closed", 3))).is_empty());
    assert!(m.look(7 * MIN, &with_sink(sink("closed", 3))).is_empty());
    // The window since the first alert is over: one alert with the count, its state now.
    let summary = m.look(11 * MIN, &with_sink(sink("closed", 3)));
    assert_eq!(brief(&summary), [("circuit_open", Status::Resolved, 2)]);
    assert!(m.look(12 * MIN, &with_sink(sink("closed", 3))).is_empty());
    // Long after, a new opening is sent at once.
    let again = m.look(30 * MIN, &with_sink(sink("open", 4)));
    assert_eq!(brief(&again), [("circuit_open", Status::Firing, 1)]);
}

#[test]
fn dead_letters_fire_on_the_first_and_count_the_rest_per_sink_and_class() {
    let mut m = Monitor::new(settings(), 0);
    let mut s = sink("closed", 0);
    s.dead_letters[1].1 = 1;
    let first = m.look(0, &with_sink(s.clone()));
    assert_eq!(brief(&first), [("dead_letters", Status::Firing, 1)]);
    assert_eq!(first[0].subject["class"], "exhausted");
    assert_eq!(
        first[0].link.as_deref(),
        Some("https://gw.example/console/dead-letters?sink=crm&class=exhausted")
    );
    s.dead_letters[1].1 = 5;
    s.dead_letters[0].1 = 2;
    let other_class = m.look(MIN, &with_sink(s.clone()));
    assert_eq!(
        brief(&other_class),
        [("dead_letters", Status::Firing, 2)],
        "permanent is its own subject; the 4 exhausted wait for the window"
    );
    assert_eq!(other_class[0].subject["class"], "permanent");
    assert!(m.look(5 * MIN, &with_sink(s.clone())).is_empty());
    let counted = m.look(10 * MIN, &with_sink(s.clone()));
    assert_eq!(brief(&counted), [("dead_letters", Status::Firing, 4)]);
    assert!(m.look(25 * MIN, &with_sink(s)).is_empty(), "nothing new");
}

#[test]
fn an_old_pending_delivery_fires_and_resolves_but_not_while_the_store_is_down() {
    let mut m = Monitor::new(settings(), 0);
    let mut s = sink("closed", 0);
    s.oldest_pending_seconds = Some(400.0);
    s.pending = Some(12);
    let fired = m.look(0, &with_sink(s.clone()));
    assert_eq!(brief(&fired), [("pending_age", Status::Firing, 1)]);
    assert_eq!(fired[0].figures["pending"], 12);
    assert_eq!(fired[0].figures["oldestPendingSeconds"], 400.0);
    s.oldest_pending_seconds = Some(2.0);
    let down = Look {
        store_down: Some("gone".into()),
        sinks: vec![s.clone()],
        routes: vec![],
    };
    assert_eq!(
        brief(&m.look(MIN, &down)),
        [("store_unavailable", Status::Firing, 1)],
        "no look at the outbox while the store is down"
    );
    let back = m.look(2 * MIN, &with_sink(s));
    assert_eq!(
        brief(&back),
        [
            ("store_unavailable", Status::Resolved, 1),
            ("pending_age", Status::Resolved, 1)
        ]
    );
}

fn route(failures: u64, secrets: Vec<(&str, Option<i64>)>) -> Look {
    Look {
        routes: vec![RouteLook {
            name: "cognigy".into(),
            auth_failures: failures,
            secrets: secrets
                .into_iter()
                .map(|(l, at)| (l.to_string(), at))
                .collect(),
        }],
        ..Look::default()
    }
}

#[test]
fn refused_credentials_fire_only_above_the_threshold_within_its_time() {
    let mut m = Monitor::new(settings(), 0);
    assert!(m.look(0, &route(0, vec![])).is_empty());
    // 19 within a minute: below 20.
    assert!(m.look(10_000, &route(19, vec![])).is_empty());
    // The 19 age out; 15 more later do not add up to a burst.
    assert!(m.look(80_000, &route(34, vec![])).is_empty());
    let fired = m.look(90_000, &route(40, vec![]));
    assert_eq!(brief(&fired), [("auth_failures", Status::Firing, 1)]);
    assert_eq!(fired[0].figures["refused"], 21);
    assert_eq!(fired[0].subject["route"], "cognigy");
    let resolved = m.look(200_000, &route(40, vec![]));
    assert_eq!(brief(&resolved), [("auth_failures", Status::Resolved, 1)]);
}

#[test]
fn a_secret_of_a_rotation_set_unused_while_another_matches_is_reported_once() {
    let day = 24 * 60 * MIN;
    let mut m = Monitor::new(settings(), 0);
    let lone = route(0, vec![("env:S[0]", None)]);
    assert!(
        m.look(8 * day, &lone).is_empty(),
        "one secret is no rotation set"
    );
    let mut m = Monitor::new(settings(), 0);
    let both_used = route(0, vec![("env:S[0]", Some(day)), ("env:S[1]", Some(day))]);
    assert!(m.look(2 * day, &both_used).is_empty());
    // S[0] not since day 1, S[1] yesterday: S[0] is idle for 7 days on day 8.
    let old_idle = route(
        0,
        vec![("env:S[0]", Some(day)), ("env:S[1]", Some(7 * day))],
    );
    assert!(m.look(7 * day, &old_idle).is_empty());
    let fired = m.look(8 * day, &old_idle);
    assert_eq!(brief(&fired), [("secret_unused", Status::Firing, 1)]);
    assert_eq!(fired[0].subject["secret"], "env:S[0]");
    assert!(
        fired[0].summary.contains("can be removed"),
        "{}",
        fired[0].summary
    );
    assert!(m.look(9 * day, &old_idle).is_empty(), "said once");
    assert!(
        m.look(20 * day, &old_idle).is_empty(),
        "the other one going quiet too does not make it needed"
    );
    let matched = route(
        0,
        vec![("env:S[0]", Some(21 * day)), ("env:S[1]", Some(7 * day))],
    );
    let after = m.look(21 * day, &matched);
    assert_eq!(
        brief(&after),
        [
            ("secret_unused", Status::Resolved, 1),
            ("secret_unused", Status::Firing, 1)
        ],
        "S[0] is used again; now S[1] is the idle one"
    );
    assert_eq!(after[0].subject["secret"], "env:S[0]");
    assert_eq!(after[1].subject["secret"], "env:S[1]");
    // Nobody used any secret for a week (no traffic): nothing is safe to conclude.
    let mut m = Monitor::new(settings(), 0);
    assert!(m
        .look(9 * day, &route(0, vec![("a", None), ("b", None)]))
        .is_empty());
}

#[test]
fn a_store_outage_is_said_and_its_end_too_with_flaps_counted() {
    let mut m = Monitor::new(settings(), 0);
    let down = Look {
        store_down: Some("PostgreSQL does not answer".into()),
        ..Look::default()
    };
    let up = Look::default();
    let fired = m.look(0, &down);
    assert_eq!(brief(&fired), [("store_unavailable", Status::Firing, 1)]);
    assert!(fired[0].summary.contains("PostgreSQL does not answer"));
    assert_eq!(
        brief(&m.look(MIN, &up)),
        [("store_unavailable", Status::Resolved, 1)]
    );
    assert!(m.look(2 * MIN, &down).is_empty(), "inside the window");
    let summary = m.look(10 * MIN, &down);
    assert_eq!(brief(&summary), [("store_unavailable", Status::Firing, 1)]);
    assert_eq!(
        brief(&m.look(11 * MIN, &up)),
        [("store_unavailable", Status::Resolved, 1)]
    );
}

#[test]
fn alerts_carry_no_link_without_a_console_url() {
    let mut m = Monitor::new(
        Settings {
            console_url: None,
            ..settings()
        },
        0,
    );
    let fired = m.look(0, &with_sink(sink("open", 1)));
    assert_eq!(fired[0].link, None);
    assert!(fired[0].to_json().get("link").is_none());
    assert_eq!(fired[0].to_json()["kind"], "circuit_open");
}
