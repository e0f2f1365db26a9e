//! `cognihook simulate`: realistic, correctly authenticated Cognigy traffic against a route.
//!
//! Each session walks a conversation (greeting → intent with slots → order lookup → goodbye),
//! one request at a time; sessions run side by side under one global request rate. A share
//! of requests is repeated (duplicates must come back as idempotent replays) and a share is
//! broken on purpose (wrong credentials, a missing field, broken JSON, a replayed signature).
//! The run fails (exit 1) when an answer contradicts what the simulator knows: a valid request
//! refused as invalid, an invalid one accepted, a duplicate not replayed, a session's
//! stateVersion not going up, or a request that got no answer at all.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::send::Scheme;
use super::CliError;
use crate::ingest::auth::client_headers;

/// Payload kinds the simulator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum SimPayload {
    #[value(name = "flow-event")]
    FlowEvent,
    Nlu,
    #[value(name = "cognigy-input")]
    CognigyInput,
    #[value(name = "webhook-output")]
    WebhookOutput,
}

#[derive(Debug, clap::Args)]
#[command(args_override_self = true)]
pub(super) struct SimulateArgs {
    /// The route to send to, e.g. http://127.0.0.1:8080/webhook/cognigy.
    #[arg(long)]
    url: String,
    /// The route's payload kind.
    #[arg(long, value_enum, default_value = "nlu")]
    payload: SimPayload,
    /// Send cognigy-input bodies form-encoded, as an HTTP Request node does by default.
    #[arg(long)]
    form: bool,
    /// The route's authentication scheme.
    #[arg(long, value_enum, default_value = "hmac-sha256")]
    scheme: Scheme,
    /// Secret, key or `user:password` for the scheme; default: the first of
    /// COGNIGY_WEBHOOK_SECRET.
    #[arg(long, env = "COGNIHOOK_SEND_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Requests per second, all sessions together.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// How long to send for.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Conversations in progress at once.
    #[arg(long, default_value_t = 10)]
    sessions: usize,
    /// Share of requests sent twice (0..1).
    #[arg(long, default_value_t = 0.05)]
    duplicates: f64,
    /// Share of requests broken on purpose (0..1).
    #[arg(long, default_value_t = 0.05)]
    invalid: f64,
    /// Seed of the random choices, for a repeatable run.
    #[arg(long)]
    seed: Option<u64>,
    /// Time one request may take.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// `--scheme oauth2`: the token endpoint; default: `/oauth/token` on the route's host.
    #[arg(long, value_name = "URL")]
    token_url: Option<String>,
}

/// xorshift64: spread, not secrecy.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }

    fn hex(&mut self, bytes: usize) -> String {
        (0..bytes)
            .map(|_| format!("{:02x}", self.next() & 0xff))
            .collect()
    }
}

/// One conversation step, before it is encoded for a payload kind.
struct Step {
    text: &'static str,
    intent: &'static str,
    score: f64,
    order: Option<String>,
    /// flow-event: the step is an external action (the order lookup).
    action: Option<&'static str>,
    reply: &'static str,
}

fn conversation(order: &str) -> Vec<Step> {
    vec![
        Step {
            text: "Hi there",
            intent: "greeting",
            score: 0.97,
            order: None,
            action: None,
            reply: "Hello! How can I help you today?",
        },
        Step {
            text: "I want to know where my order is",
            intent: "orderStatus",
            score: 0.91,
            order: Some(order.to_string()),
            action: None,
            reply: "Sure, let me look up your order.",
        },
        Step {
            text: "The order number is on my receipt",
            intent: "orderStatus",
            score: 0.88,
            order: Some(order.to_string()),
            action: Some("lookupOrder"),
            reply: "Your order has shipped and arrives tomorrow.",
        },
        Step {
            text: "Thanks, bye",
            intent: "goodbye",
            score: 0.95,
            order: None,
            action: None,
            reply: "Goodbye!",
        },
    ]
}

/// A session's identity.
struct Session {
    id: String,
    user: String,
    token: String,
}

/// The JSON body of one step for a payload kind.
fn step_body(kind: SimPayload, s: &Session, step: &Step, n: usize) -> Value {
    match kind {
        SimPayload::FlowEvent => {
            let mut b = json!({
                "sessionId": s.id, "userId": s.user, "message": step.text,
                "eventType": if step.action.is_some() { "external.action.trigger" } else { "flow.execution" },
                "flowName": "OrderSupportFlow",
                "timestamp": crate::now_rfc3339(),
                "context": {"intent": step.intent, "orderId": step.order},
            });
            if let Some(a) = step.action {
                b["actionName"] = a.into();
            }
            b
        }
        SimPayload::Nlu => json!({
            "sessionId": s.id, "userId": s.user, "input": step.text,
            "context": {"locale": "en-US", "channel": "webchat", "correlationId": format!("{}-{n}", s.id)},
            "intent": {"name": step.intent, "confidence": step.score},
            "entities": step.order.iter().map(|o| json!({"name": "orderId", "value": o})).collect::<Vec<_>>(),
        }),
        SimPayload::CognigyInput => {
            let mut b = json!({
                "userId": s.user, "sessionId": s.id, "URLToken": s.token, "text": step.text,
                "intent": step.intent, "intentScore": step.score, "language": "en-US",
                "channel": "webchat", "traceId": format!("sim-{}-{n}", s.id),
            });
            if let Some(o) = &step.order {
                b["slots"] = json!({"orderId": [{"keyphrase": o}]});
                b["data"] = json!({"orderId": o});
            }
            b
        }
        SimPayload::WebhookOutput => json!({
            "userId": s.user, "sessionId": s.id,
            "AIOutput": {"text": step.reply, "data": {}, "traceId": format!("sim-{}-{n}", s.id),
                         "disableSensitiveLogging": false, "source": "bot"},
        }),
    }
}

/// Encodes a body as JSON, or as a form for `--form`.
fn encode(body: &Value, form: bool) -> Vec<u8> {
    if !form {
        return serde_json::to_vec(body).unwrap_or_default();
    }
    let mut f = form_urlencoded::Serializer::new(String::new());
    if let Value::Object(m) = body {
        for (k, v) in m {
            match v {
                Value::String(s) => f.append_pair(k, s),
                other => f.append_pair(k, &other.to_string()),
            };
        }
    }
    f.finish().into_bytes()
}

/// What the simulator expects of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A valid, new request: 2xx, or 422 (the route's business rules may say no).
    Valid,
    /// The second send of a request that was answered 200: the same answer, replayed.
    Duplicate,
    /// Broken on purpose: a 4xx that is not 422.
    Refused(&'static str),
}

/// Ways of breaking a request.
#[derive(Debug, Clone, Copy)]
enum Breakage {
    WrongSecret,
    MissingSessionId,
    BrokenJson,
    ReplayedSignature,
}

#[derive(Default)]
struct Stats {
    sent: u64,
    by_status: BTreeMap<u16, u64>,
    no_answer: u64,
    latencies_us: Vec<u64>,
    duplicates: u64,
    invalid: u64,
    contradictions: Vec<String>,
}

struct Shared {
    stats: Mutex<Stats>,
    ticker: tokio::sync::Mutex<tokio::time::Interval>,
    client: reqwest::Client,
    args: SimulateArgs,
    secret: String,
    end: Instant,
}

/// Headers that authenticate a request.
type AuthHeaders = Vec<(&'static str, String)>;

/// An answer: status, the `Idempotent-Replayed` header, the body.
type Answer = Option<(u16, bool, Value)>;

impl Shared {
    async fn send(&self, body: Vec<u8>, headers: AuthHeaders) -> Answer {
        self.ticker.lock().await.tick().await;
        let content_type = if self.args.form {
            "application/x-www-form-urlencoded"
        } else {
            "application/json"
        };
        let mut req = self
            .client
            .post(&self.args.url)
            .header("content-type", content_type)
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let start = Instant::now();
        let r = req.send().await;
        let answer = match r {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let replayed = resp
                    .headers()
                    .get("idempotent-replayed")
                    .is_some_and(|v| v == "true");
                let bytes = resp.bytes().await.unwrap_or_default();
                Ok((
                    status,
                    replayed,
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                ))
            }
            Err(e) => Err(e),
        };
        let took = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut stats = self.stats.lock();
        stats.sent += 1;
        match answer {
            Ok((status, replayed, body)) => {
                *stats.by_status.entry(status).or_default() += 1;
                stats.latencies_us.push(took);
                Some((status, replayed, body))
            }
            Err(e) => {
                stats.no_answer += 1;
                if stats.no_answer <= 3 {
                    stats
                        .contradictions
                        .push(format!("no answer from {}: {e}", self.args.url));
                }
                None
            }
        }
    }

    fn contradiction(&self, what: String) {
        self.stats.lock().contradictions.push(what);
    }

    fn auth(&self, body: &[u8], t: i64, secret: &str) -> AuthHeaders {
        if self.args.scheme == Scheme::None {
            return Vec::new();
        }
        let id = format!("msg_{}", ulid::Ulid::new());
        client_headers(self.args.scheme.config(), secret, body, t, &id).unwrap_or_default()
    }

    /// Checks an answer against what was expected.
    fn judge(&self, expect: Expect, what: &str, answer: &Answer, original: Option<&Value>) {
        let Some((status, replayed, body)) = answer else {
            return; // counted as no answer
        };
        let status = *status;
        let retryable = status == 429 || status == 503;
        match expect {
            Expect::Valid => {
                if !(200..300).contains(&status) && status != 422 && !retryable {
                    self.contradiction(format!(
                        "valid request refused: {what} → {status} {}",
                        body["code"].as_str().unwrap_or("")
                    ));
                }
            }
            Expect::Duplicate => {
                let same = original.is_none_or(|o| o == body);
                if !retryable && (status != 200 || !replayed || !same) {
                    self.contradiction(format!(
                        "duplicate not replayed: {what} → {status} (Idempotent-Replayed: {replayed})"
                    ));
                }
            }
            Expect::Refused(why) => {
                if (200..300).contains(&status) || status == 422 {
                    self.contradiction(format!(
                        "invalid request accepted: {what} ({why}) → {status}"
                    ));
                }
            }
        }
    }
}

async fn run_session(shared: Arc<Shared>, mut rng: Rng) {
    let a = &shared.args;
    let mut breakages = vec![Breakage::MissingSessionId, Breakage::BrokenJson];
    if a.scheme != Scheme::None {
        breakages.push(Breakage::WrongSecret);
    }
    if a.scheme == Scheme::HmacSha256Timestamped {
        breakages.push(Breakage::ReplayedSignature);
    }
    while Instant::now() < shared.end {
        let session = Session {
            id: if a.payload == SimPayload::Nlu {
                uuid::Uuid::new_v4().to_string()
            } else {
                format!("sim-{}", ulid::Ulid::new())
            },
            user: format!("user-{}", rng.next() % 10_000),
            token: rng.hex(32),
        };
        let order = format!("A-{}", 1000 + rng.next() % 9000);
        let mut last_version = 0u64;
        let mut last_signed: Option<(Vec<u8>, AuthHeaders)> = None;
        for (n, step) in conversation(&order).iter().enumerate() {
            if Instant::now() >= shared.end {
                return;
            }
            let body = encode(&step_body(a.payload, &session, step, n), a.form);
            let what = format!("session {} step {}", session.id, n + 1);
            if rng.chance(a.invalid) {
                let breakage = *rng.pick(&breakages);
                let (bad, headers, why) = match (breakage, &last_signed) {
                    (Breakage::ReplayedSignature, Some((b, h))) => {
                        (b.clone(), h.clone(), "replayed signature")
                    }
                    (Breakage::WrongSecret, _) => {
                        let wrong = format!("{}-wrong", shared.secret);
                        let wrong = if a.scheme == Scheme::Basic {
                            format!("{wrong}:x")
                        } else if a.scheme == Scheme::StandardWebhooks {
                            "whsec_d3Jvbmcgc2VjcmV0".to_string()
                        } else {
                            wrong
                        };
                        let h = shared.auth(&body, crate::now_millis() / 1000, &wrong);
                        (body.clone(), h, "wrong credentials")
                    }
                    (Breakage::BrokenJson, _) if !a.form => {
                        let cut = body[..body.len() / 2].to_vec();
                        let h = shared.auth(&cut, crate::now_millis() / 1000, &shared.secret);
                        (cut, h, "broken JSON")
                    }
                    _ => {
                        let mut v = step_body(a.payload, &session, step, n);
                        if let Some(m) = v.as_object_mut() {
                            m.remove("sessionId");
                        }
                        let b = encode(&v, a.form);
                        let h = shared.auth(&b, crate::now_millis() / 1000, &shared.secret);
                        (b, h, "missing sessionId")
                    }
                };
                shared.stats.lock().invalid += 1;
                let answer = shared.send(bad, headers).await;
                shared.judge(Expect::Refused(why), &what, &answer, None);
            }
            let t = crate::now_millis() / 1000;
            let headers = shared.auth(&body, t, &shared.secret);
            let answer = shared.send(body.clone(), headers.clone()).await;
            shared.judge(Expect::Valid, &what, &answer, None);
            last_signed = Some((body.clone(), headers));
            let Some((status, _, response)) = &answer else {
                continue;
            };
            if *status == 200 {
                if let Some(v) = response["data"]["stateVersion"].as_u64() {
                    if v <= last_version {
                        shared.contradiction(format!(
                            "stateVersion went from {last_version} to {v}: {what}"
                        ));
                    }
                    last_version = v;
                }
            }
            if *status == 200 && rng.chance(a.duplicates) {
                shared.stats.lock().duplicates += 1;
                // A retry is signed afresh, as Cognigy would; a later timestamp keeps a
                // timestamped signature from being a replay of the first.
                let again = shared.auth(&body, t + 1, &shared.secret);
                let dup = shared.send(body.clone(), again).await;
                shared.judge(Expect::Duplicate, &what, &dup, Some(response));
            }
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn status_line(s: &Stats) -> String {
    s.by_status
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn run(args: SimulateArgs) -> Result<(), CliError> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err(CliError::Usage("--rate must be greater than 0".into()));
    }
    for (name, v) in [
        ("--duplicates", args.duplicates),
        ("--invalid", args.invalid),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(CliError::Usage(format!("{name} must be between 0 and 1")));
        }
    }
    if args.sessions == 0 {
        return Err(CliError::Usage("--sessions must be at least 1".into()));
    }
    if args.form && args.payload != SimPayload::CognigyInput {
        return Err(CliError::Usage(
            "--form applies to --payload cognigy-input only".into(),
        ));
    }
    let url: reqwest::Url = args
        .url
        .parse()
        .map_err(|e| CliError::Usage(format!("--url `{}`: {e}", args.url)))?;
    let secret = match args.scheme {
        Scheme::None => String::new(),
        _ => super::send::client_secret(args.secret.as_deref())?,
    };
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .user_agent(concat!("cognihook-simulate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| CliError::Runtime(format!("cannot build the HTTP client: {e}")))?;
    let rt = super::runtime()?;
    // oauth2: one token for the run, fetched before anything is sent (the secret is the
    // client's `id:secret`).
    let secret = if args.scheme == Scheme::OAuth2 {
        let token_url = super::send::token_url(args.token_url.as_deref(), &url)?;
        rt.block_on(super::send::fetch_token(&client, &token_url, &secret))?
    } else {
        secret
    };
    // Fail on a secret the scheme cannot use before sending anything.
    if args.scheme != Scheme::None {
        client_headers(args.scheme.config(), &secret, b"{}", 0, "msg_check")
            .map_err(CliError::usage)?;
    }
    let seed = args.seed.unwrap_or_else(|| crate::now_millis() as u64) | 1;
    let started = Instant::now();
    let summary = rt.block_on(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
        // A late tick is sent at once (open loop): the timer's granularity is a millisecond,
        // and skipping the ticks it missed held rates above ~1,000/s well under `--rate`.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let shared = Arc::new(Shared {
            stats: Mutex::new(Stats::default()),
            ticker: tokio::sync::Mutex::new(ticker),
            client,
            end: Instant::now() + args.duration,
            secret,
            args,
        });
        let mut seeds = Rng(seed);
        let tasks: Vec<_> = (0..shared.args.sessions)
            .map(|_| tokio::spawn(run_session(shared.clone(), Rng(seeds.next() | 1))))
            .collect();
        let progress = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                every.tick().await;
                loop {
                    every.tick().await;
                    {
                        let s = shared.stats.lock();
                        eprintln!(
                            "simulate: {:>4.0}s sent {} ({}) no answer {} contradictions {}",
                            started.elapsed().as_secs_f64(),
                            s.sent,
                            status_line(&s),
                            s.no_answer,
                            s.contradictions.len()
                        );
                    }
                }
            })
        };
        for t in tasks {
            let _ = t.await;
        }
        progress.abort();
        let s = std::mem::take(&mut *shared.stats.lock());
        s
    });
    let mut lat = summary.latencies_us.clone();
    lat.sort_unstable();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sent {} requests to {url} in {secs:.1}s ({:.1}/s)",
        summary.sent,
        summary.sent as f64 / secs.max(1e-9)
    );
    println!("status: {}", status_line(&summary));
    println!(
        "duplicates: {}, invalid on purpose: {}, no answer: {}",
        summary.duplicates, summary.invalid, summary.no_answer
    );
    println!(
        "latency: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99)
    );
    println!("contradictions: {}", summary.contradictions.len());
    for c in summary.contradictions.iter().take(20) {
        println!("  {c}");
    }
    if summary.contradictions.is_empty() && summary.no_answer == 0 {
        Ok(())
    } else {
        Err(CliError::Runtime(format!(
            "{} contradiction(s), {} request(s) without an answer",
            summary.contradictions.len(),
            summary.no_answer
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            id: "9b2e4c1a-7d3f-4e8a-b5c6-0a1b2c3d4e5f".into(),
            user: "u".into(),
            token: "t".into(),
        }
    }

    #[test]
    fn every_step_of_every_kind_decodes_as_its_payload_kind() {
        use crate::config::PayloadKind as K;
        use crate::ingest::payload::{BodyFormat, PayloadDecoder};
        let kinds = [
            (SimPayload::FlowEvent, K::FlowEvent, false),
            (SimPayload::Nlu, K::Nlu, false),
            (SimPayload::CognigyInput, K::CognigyInput, false),
            (SimPayload::CognigyInput, K::CognigyInput, true),
            (SimPayload::WebhookOutput, K::WebhookOutput, false),
        ];
        for (sim, kind, form) in kinds {
            for (n, step) in conversation("A-1").iter().enumerate() {
                let body = encode(&step_body(sim, &session(), step, n), form);
                let format = if form {
                    BodyFormat::Form
                } else {
                    BodyFormat::Json
                };
                let d = PayloadDecoder::Builtin(kind)
                    .decode(&body, format)
                    .unwrap_or_else(|e| panic!("{sim:?} step {n} form={form}: {e:?}"));
                if kind == K::CognigyInput && step.order.is_some() {
                    assert_eq!(d.entities["orderId"], "A-1");
                }
            }
        }
    }

    #[test]
    fn percentiles_of_sorted_microseconds() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
