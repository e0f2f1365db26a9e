//! `cognihook send` and `cognihook sign`: sign a payload the way a route expects and POST it,
//! or just print the signature header value.

use std::io::Read;

use super::CliError;
use crate::config::AuthScheme;
use crate::ingest::auth::client_headers;

/// Built-in sample payloads (`--example NAME`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum Example {
    /// Seed 000: a `flow.execution` event, for `POST /webhook`.
    FlowEvent,
    /// Seed 004: an NLU result with intent and orderId, for `POST /webhook/cognigy`.
    Nlu,
}

impl Example {
    fn body(self) -> &'static [u8] {
        match self {
            Example::FlowEvent => include_bytes!("examples/flow-event.json"),
            Example::Nlu => include_bytes!("examples/nlu.json"),
        }
    }

    fn path(self) -> &'static str {
        match self {
            Example::FlowEvent => "/webhook",
            Example::Nlu => "/webhook/cognigy",
        }
    }
}

/// Authentication schemes `send`/`sign` can produce (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scheme {
    /// Hex HMAC-SHA256 of the raw body (`X-Cognigy-Signature`).
    #[value(name = "hmac-sha256")]
    HmacSha256,
    /// `X-Cognigy-Signature: t=<unix>,v1=<hex>` over `"<t>.<body>"`.
    #[value(name = "hmac-sha256-timestamped")]
    HmacSha256Timestamped,
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature`; the secret is `whsec_…`.
    #[value(name = "standard-webhooks")]
    StandardWebhooks,
    /// `Jambonz-Signature: t=<unix>,v1=<hex>`.
    Jambonz,
    /// `Authorization: Basic …`; the secret is `user:password`.
    Basic,
    /// `X-API-Key: <secret>`.
    #[value(name = "api-key")]
    ApiKey,
    /// `Authorization: Bearer <secret>`: a static token or a JWT obtained elsewhere.
    Bearer,
    /// The secret is `client_id:client_secret`; a token is fetched from the gateway's
    /// `/oauth/token` (or `--token-url`) first and sent as `Authorization: Bearer`.
    #[value(name = "oauth2")]
    OAuth2,
    /// No signature.
    None,
}

impl Scheme {
    pub(crate) fn config(self) -> AuthScheme {
        match self {
            Scheme::HmacSha256 => AuthScheme::HmacSha256,
            Scheme::HmacSha256Timestamped => AuthScheme::HmacSha256Timestamped,
            Scheme::StandardWebhooks => AuthScheme::StandardWebhooks,
            Scheme::Jambonz => AuthScheme::Jambonz,
            Scheme::Basic => AuthScheme::Basic,
            Scheme::ApiKey => AuthScheme::ApiKey,
            Scheme::Bearer => AuthScheme::Bearer,
            Scheme::OAuth2 => AuthScheme::OAuth2,
            Scheme::None => AuthScheme::None,
        }
    }
}

#[derive(Debug, clap::Args)]
pub(super) struct PayloadArgs {
    /// Payload file, or `-` for standard input.
    #[arg(value_name = "FILE|-", conflicts_with = "example")]
    file: Option<String>,
    /// Use a built-in sample payload instead of a file.
    #[arg(long, value_enum)]
    example: Option<Example>,
    /// Signing scheme.
    #[arg(long, value_enum, default_value = "hmac-sha256")]
    scheme: Scheme,
    /// Secret to sign with; default: the first of COGNIGY_WEBHOOK_SECRET.
    #[arg(long, env = "COGNIHOOK_SEND_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(super) struct SignArgs {
    #[command(flatten)]
    payload: PayloadArgs,
}

#[derive(Debug, clap::Args)]
pub(super) struct SendArgs {
    #[command(flatten)]
    payload: PayloadArgs,
    /// Target URL; default http://127.0.0.1:8080 plus the example's route path (`/webhook`).
    #[arg(long)]
    url: Option<String>,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// For https:// URLs: also trust the CA certificates in this PEM file (besides the
    /// Mozilla roots), e.g. a private CA in front of the gateway.
    #[arg(long, value_name = "PEM")]
    cacert: Option<std::path::PathBuf>,
    /// `--scheme oauth2`: the token endpoint; default: `/oauth/token` on the target's host.
    #[arg(long, value_name = "URL")]
    token_url: Option<String>,
}

impl PayloadArgs {
    fn body(&self) -> Result<Vec<u8>, CliError> {
        if let Some(e) = self.example {
            return Ok(e.body().to_vec());
        }
        match self.file.as_deref() {
            Some("-") => {
                let mut b = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut b)
                    .map_err(|e| CliError::Runtime(format!("cannot read standard input: {e}")))?;
                Ok(b)
            }
            Some(path) => {
                std::fs::read(path).map_err(|e| CliError::Usage(format!("cannot read {path}: {e}")))
            }
            None => Err(CliError::Usage(
                "give a payload FILE, `-` for standard input, or --example flow-event|nlu".into(),
            )),
        }
    }

    fn secret(&self) -> Result<String, CliError> {
        client_secret(self.secret.as_deref())
    }

    /// The headers that authenticate the request in the chosen scheme (none for `none`);
    /// `token` is the bearer token fetched for `oauth2`.
    fn auth_headers(
        &self,
        body: &[u8],
        token: Option<&str>,
    ) -> Result<Vec<(&'static str, String)>, CliError> {
        let secret = match (self.scheme, token) {
            (Scheme::None, _) => return Ok(Vec::new()),
            (Scheme::OAuth2, Some(t)) => t.to_string(),
            (Scheme::OAuth2, None) => {
                return Err(CliError::Usage(
                    "scheme oauth2 needs a token from the gateway: use `cognihook send`".into(),
                ))
            }
            _ => self.secret()?,
        };
        let now = crate::now_millis() / 1000;
        let id = format!("msg_{}", ulid::Ulid::new());
        client_headers(self.scheme.config(), &secret, body, now, &id).map_err(CliError::usage)
    }
}

/// The secret a client command signs with: `--secret`, else the first value of
/// `COGNIGY_WEBHOOK_SECRET` (the one that signs during a rotation).
pub(super) fn client_secret(given: Option<&str>) -> Result<String, CliError> {
    if let Some(s) = given {
        return Ok(s.to_string());
    }
    std::env::var("COGNIGY_WEBHOOK_SECRET")
        .ok()
        .and_then(|v| {
            v.split(',')
                .map(str::trim)
                .find(|s| !s.is_empty())
                .map(str::to_string)
        })
        .ok_or_else(|| {
            CliError::Usage("no secret: pass --secret or set COGNIGY_WEBHOOK_SECRET".into())
        })
}

/// The token endpoint: `given`, else `/oauth/token` on the target's scheme, host and port.
pub(super) fn token_url(given: Option<&str>, target: &reqwest::Url) -> Result<String, CliError> {
    if let Some(u) = given {
        return Ok(u.to_string());
    }
    let mut u = target.clone();
    u.set_path("/oauth/token");
    u.set_query(None);
    Ok(u.to_string())
}

/// Fetches a token with the client-credentials grant, authenticating as `id:secret` by
/// HTTP Basic (RFC 6749 §2.3.1: each part form-encoded).
pub(super) async fn fetch_token(
    client: &reqwest::Client,
    token_url: &str,
    credentials: &str,
) -> Result<String, CliError> {
    let (id, secret) = credentials.split_once(':').ok_or_else(|| {
        CliError::Usage("scheme oauth2 needs the secret as `client_id:client_secret`".into())
    })?;
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let answer = client
        .post(token_url)
        .basic_auth(encode(id), Some(encode(secret)))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .map_err(|e| {
            CliError::Runtime(format!(
                "token request to {token_url} failed: {}",
                crate::with_causes(&e)
            ))
        })?;
    let status = answer.status();
    let bytes = answer.bytes().await.unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    match body["access_token"].as_str() {
        Some(t) if status.is_success() => Ok(t.to_string()),
        _ => Err(CliError::Runtime(format!(
            "{token_url} gave no token: HTTP {} {}",
            status.as_u16(),
            body
        ))),
    }
}

/// Prints the signature value, or `Name: value` lines when the scheme needs several headers.
pub(super) fn run_sign(args: SignArgs) -> Result<(), CliError> {
    let body = args.payload.body()?;
    match args.payload.auth_headers(&body, None)?.as_slice() {
        [] => Err(CliError::Usage("scheme `none` has no signature".into())),
        [(_, value)] => {
            println!("{value}");
            Ok(())
        }
        several => {
            for (name, value) in several {
                println!("{name}: {value}");
            }
            Ok(())
        }
    }
}

pub(super) fn run_send(args: SendArgs) -> Result<(), CliError> {
    let body = args.payload.body()?;
    let url = args.url.clone().unwrap_or_else(|| {
        let path = args.payload.example.map_or("/webhook", Example::path);
        format!("http://127.0.0.1:8080{path}")
    });
    let target: reqwest::Url = url
        .parse()
        .map_err(|e| CliError::Usage(format!("--url `{url}`: {e}")))?;
    if !matches!(target.scheme(), "http" | "https") {
        return Err(CliError::Usage(format!(
            "--url `{url}`: expected an http:// or https:// URL"
        )));
    }
    let mut client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("cognihook-send/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &args.cacert {
        let at = format!("--cacert {}", path.display());
        let pem = std::fs::read(path).map_err(|e| CliError::Usage(format!("{at}: {e}")))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| CliError::Usage(format!("{at}: {e}")))?;
        if certs.is_empty() {
            return Err(CliError::Usage(format!("{at}: no certificate in the file")));
        }
        for cert in certs {
            client = client.add_root_certificate(cert);
        }
    }
    let client = client
        .build()
        .map_err(|e| CliError::Runtime(format!("cannot build the HTTP client: {e}")))?;
    let rt = super::runtime()?;
    let token = match args.payload.scheme {
        Scheme::OAuth2 => {
            let credentials = args.payload.secret()?;
            let token_url = token_url(args.token_url.as_deref(), &target)?;
            Some(rt.block_on(fetch_token(&client, &token_url, &credentials))?)
        }
        _ => None,
    };
    let mut req = client
        .post(target)
        .header("content-type", "application/json");
    for (name, value) in args.payload.auth_headers(&body, token.as_deref())? {
        req = req.header(name, value);
    }
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| CliError::Usage(format!("--header `{h}`: expected `Name: value`")))?;
        req = req.header(name.trim(), value.trim());
    }
    let req = req
        .body(body)
        .build()
        .map_err(|e| CliError::Usage(format!("invalid request: {e}")))?;

    let (status, headers, body) = rt.block_on(async {
        let resp = client.execute(req).await.map_err(|e| {
            if e.is_timeout() {
                CliError::Runtime(format!("no answer from {url} within 30s"))
            } else {
                CliError::Runtime(format!(
                    "request to {url} failed: {}",
                    crate::with_causes(&e)
                ))
            }
        })?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let body = resp
            .bytes()
            .await
            .map_err(|e| CliError::Runtime(format!("reading the answer failed: {e}")))?;
        Ok::<_, CliError>((status, headers, body))
    })?;
    println!("HTTP {}", status.as_u16());
    for name in ["x-correlation-id", "idempotent-replayed", "retry-after"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            println!("{name}: {v}");
        }
    }
    println!("{}", String::from_utf8_lossy(&body));
    if status.is_success() {
        Ok(())
    } else {
        Err(CliError::Runtime(format!("the gateway answered {status}")))
    }
}
