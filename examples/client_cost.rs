//! CPU per POST of three HTTP client paths on one thread: reqwest (`reqwest`), hyper-util's
//! pooled client (`legacy`, what the http sink sends with) and hyper's connections used
//! directly, one per task (`conn`, the floor). `CONC` tasks send `N / CONC` POSTs each of a
//! ~1 KiB JSON body; the thread's CPU time per POST is printed (bench/README.md, twenty-eighth
//! session).
//!
//! Run against a fast receiver on the other CPU:
//! `taskset -c 1 target/release/examples/bare_baseline 127.0.0.1:18092 accept-all &`, then
//! `taskset -c 0 target/release/examples/client_cost http://127.0.0.1:18092/ VARIANT N CONC`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn body() -> Bytes {
    let mut s = String::from("{\"eventId\":\"01JEXAMPLE\",\"data\":{");
    for i in 0..20 {
        s.push_str(&format!("\"field{i}\":\"value value value {i}\","));
    }
    s.push_str("\"end\":1}}");
    Bytes::from(s)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args[1].clone();
    let variant = args[2].clone();
    let n: usize = args[3].parse().expect("n");
    let conc: usize = args[4].parse().expect("conc");
    let per = n / conc;
    let body = body();
    let start = thread_cpu();
    let wall = std::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    match variant.as_str() {
        "reqwest" => {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .retry(reqwest::retry::never())
                .build()
                .expect("client");
            let url = reqwest::Url::parse(&url).expect("url");
            for _ in 0..conc {
                let client = client.clone();
                let url = url.clone();
                let body = body.clone();
                set.spawn(async move {
                    for i in 0..per {
                        let mut req = reqwest::Request::new(reqwest::Method::POST, url.clone());
                        let h = req.headers_mut();
                        h.insert("content-type", "application/json".parse().expect("h"));
                        h.insert(
                            "x-cognihook-event-id",
                            "01JEXAMPLEEXAMPLEEXAMPLE".parse().expect("h"),
                        );
                        h.insert("x-cognihook-attempt", (i as u64).into());
                        *req.body_mut() = Some(body.clone().into());
                        let resp = client.execute(req).await.expect("send");
                        assert!(resp.status().is_success());
                    }
                });
            }
        }
        "legacy" => {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<Full<Bytes>>();
            let uri: http::Uri = url.parse().expect("uri");
            for _ in 0..conc {
                let client = client.clone();
                let uri = uri.clone();
                let body = body.clone();
                set.spawn(async move {
                    for i in 0..per {
                        let req = http::Request::post(uri.clone())
                            .header("content-type", "application/json")
                            .header("x-cognihook-event-id", "01JEXAMPLEEXAMPLEEXAMPLE")
                            .header("x-cognihook-attempt", i as u64)
                            .body(Full::new(body.clone()))
                            .expect("req");
                        let resp =
                            tokio::time::timeout(Duration::from_secs(10), client.request(req))
                                .await
                                .expect("time")
                                .expect("send");
                        assert!(resp.status().is_success());
                        let _ = resp.into_body().collect().await;
                    }
                });
            }
        }
        "conn" => {
            let uri: http::Uri = url.parse().expect("uri");
            let authority = uri.authority().expect("authority").clone();
            for _ in 0..conc {
                let uri = uri.clone();
                let body = body.clone();
                let authority = authority.clone();
                set.spawn(async move {
                    let stream = tokio::net::TcpStream::connect(authority.as_str())
                        .await
                        .expect("connect");
                    stream.set_nodelay(true).expect("nodelay");
                    let (mut send, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                            .await
                            .expect("handshake");
                    tokio::spawn(conn);
                    for i in 0..per {
                        let req = http::Request::post(uri.path())
                            .header("host", authority.as_str())
                            .header("content-type", "application/json")
                            .header("x-cognihook-event-id", "01JEXAMPLEEXAMPLEEXAMPLE")
                            .header("x-cognihook-attempt", i as u64)
                            .body(Full::new(body.clone()))
                            .expect("req");
                        send.ready().await.expect("ready");
                        let resp =
                            tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
                                .await
                                .expect("time")
                                .expect("send");
                        assert!(resp.status().is_success());
                        let _ = resp.into_body().collect().await;
                    }
                });
            }
        }
        other => panic!("variant {other}"),
    }
    while let Some(r) = set.join_next().await {
        r.expect("task");
    }
    let cpu = thread_cpu() - start;
    println!(
        "{variant}: {n} POSTs, conc {conc}: {:.1} µs CPU per POST, {:.0} POST/s",
        cpu.as_secs_f64() * 1e6 / n as f64,
        n as f64 / wall.elapsed().as_secs_f64()
    );
}
