//! The load benchmark's reference: a bare hyper server that only verifies the HMAC of the raw
//! body and parses the JSON, then answers a small JSON body. No store, no rules, no audit.
//!
//! Run: `cargo run --release --example bare_baseline -- 127.0.0.1:8090` with
//! `COGNIGY_WEBHOOK_SECRET` set (see `bench/load.sh`). With a second argument `accept-all` it
//! answers 200 to every POST without checking anything: the load benchmark's HTTP sink.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::Sha256;

async fn handle(
    key: Hmac<Sha256>,
    accept_all: bool,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if accept_all {
        let _ = req.into_body().collect().await;
        return Ok(answer(StatusCode::OK, "received"));
    }
    let sig = req
        .headers()
        .get("x-cognigy-signature")
        .and_then(|v| hex::decode(v.as_bytes()).ok());
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(answer(StatusCode::BAD_REQUEST, "unreadable")),
    };
    let mut mac = key;
    mac.update(&body);
    if sig.is_none_or(|s| mac.verify_slice(&s).is_err()) {
        return Ok(answer(StatusCode::UNAUTHORIZED, "invalid_signature"));
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) if v.is_object() => Ok(answer(StatusCode::OK, "success")),
        _ => Ok(answer(StatusCode::BAD_REQUEST, "invalid_json")),
    }
}

fn answer(status: StatusCode, what: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{{\"status\":\"{what}\"}}"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into())
        .parse()
        .map_err(|e| std::io::Error::other(format!("bad address: {e}")))?;
    let accept_all = std::env::args().nth(2).as_deref() == Some("accept-all");
    let secret = std::env::var("COGNIGY_WEBHOOK_SECRET").unwrap_or_default();
    let key = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("bare baseline listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let key = key.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(key.clone(), accept_all, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
