//! How cognihook connects to PostgreSQL: the `store.url` with its TLS options (`sslmode`,
//! `sslrootcert`, named as libpq names them) taken out and turned into a rustls connector.
//!
//! | `sslmode`            | connection                                                         |
//! |----------------------|--------------------------------------------------------------------|
//! | absent, `disable`    | plain TCP (the URL asks for nothing else)                          |
//! | `require`            | TLS or nothing; the server's certificate is verified, name included |
//! | `verify-full`        | the same                                                           |
//! | `verify-ca`          | TLS; the chain is verified, the host name is not                   |
//! | `prefer`, `allow`    | refused: they fall back to plain text without saying so             |
//!
//! `require` verifies more than libpq's `require` does (libpq checks nothing without a root
//! certificate): an unverified TLS connection stops only passive listeners. Trust comes from
//! `sslrootcert` (a PEM file of CA certificates) or, without it, the Mozilla roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Cause;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;

/// A parsed `store.url`.
#[derive(Clone)]
pub struct PgTarget {
    /// The connection settings, TLS options removed.
    pub config: tokio_postgres::Config,
    pub tls: PgTls,
}

/// The TLS a connection uses.
#[derive(Clone)]
pub enum PgTls {
    Off,
    /// TLS required, with this client configuration (trust roots and verifier).
    On {
        client: Arc<rustls::ClientConfig>,
        /// For messages: `verify-full` or `verify-ca`.
        mode: &'static str,
    },
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = match &self.tls {
            PgTls::Off => "off",
            PgTls::On { mode, .. } => mode,
        };
        f.debug_struct("PgTarget").field("tls", &tls).finish()
    }
}

/// Why a `postgres://` store URL cannot be used; each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("store.url is not a valid PostgreSQL URL: {0}")]
    Invalid(#[source] tokio_postgres::Error),
    #[error(
        "store.url: sslrootcert is set but TLS is not; add sslmode=verify-full (or verify-ca)"
    )]
    RootCertWithoutTls,
    #[error(
        "store.url: sslmode={0} is not supported: it falls back to plain text without a word; \
         use disable, require, verify-ca or verify-full"
    )]
    Fallback(String),
    #[error("store.url: unknown sslmode `{0}` (disable, require, verify-ca, verify-full)")]
    UnknownMode(String),
    #[error("store.url: sslrootcert `{}` {what}: {source}", path.display())]
    RootCert {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: Cause,
    },
    #[error("store.url: sslrootcert `{}` holds no certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("TLS set-up failed: {0}")]
    Tls(#[source] rustls::Error),
}

impl PgTarget {
    /// Parses a `postgres://` URL, reading the `sslrootcert` file if it names one.
    pub fn parse(url: &str) -> Result<PgTarget, UrlError> {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        // The other options stay byte for byte as written: decoding and encoding them again
        // would turn `%20` into `+`, which tokio-postgres reads as a plus sign.
        let mut sslmode = None;
        let mut rootcert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = || {
                percent_encoding::percent_decode_str(value)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            match key {
                "sslmode" => sslmode = Some(value()),
                "sslrootcert" => rootcert = Some(PathBuf::from(value())),
                _ => kept.push(pair),
            }
        }
        let rest = kept.join("&");
        let stripped = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{rest}")
        };
        let mut config: tokio_postgres::Config = stripped.parse().map_err(UrlError::Invalid)?;
        let verify_name = match sslmode.as_deref() {
            None | Some("disable") => {
                if rootcert.is_some() {
                    return Err(UrlError::RootCertWithoutTls);
                }
                config.ssl_mode(SslMode::Disable);
                return Ok(PgTarget {
                    config,
                    tls: PgTls::Off,
                });
            }
            Some("require" | "verify-full") => true,
            Some("verify-ca") => false,
            Some(m @ ("prefer" | "allow")) => return Err(UrlError::Fallback(m.to_string())),
            Some(other) => return Err(UrlError::UnknownMode(other.to_string())),
        };
        let roots = match &rootcert {
            Some(path) => roots_from(path)?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        config.ssl_mode(SslMode::Require);
        Ok(PgTarget {
            config,
            tls: PgTls::On {
                client: Arc::new(client_config(roots, verify_name)?),
                mode: if verify_name {
                    "verify-full"
                } else {
                    "verify-ca"
                },
            },
        })
    }
}

/// The CA certificates of a PEM file; an unreadable file or one without any is an error.
fn roots_from(path: &PathBuf) -> Result<RootCertStore, UrlError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(problem(path, "cannot be read"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(problem(path, "is not a PEM file of certificates"))?;
    if certs.is_empty() {
        return Err(UrlError::NoCertificate(path.clone()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(problem(path, "holds a certificate rustls cannot use"))?;
    }
    Ok(roots)
}

/// Maps an error met reading the `sslrootcert` file into the [`UrlError`] that says `what`.
fn problem<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    path: &Path,
    what: &'static str,
) -> impl FnOnce(E) -> UrlError {
    let path = path.to_path_buf();
    move |e| UrlError::RootCert {
        path,
        what,
        source: Cause::new(e),
    }
}

fn client_config(
    roots: RootCertStore,
    verify_name: bool,
) -> Result<rustls::ClientConfig, UrlError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(UrlError::Tls)?;
    let config = if verify_name {
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| UrlError::Tls(rustls::Error::General(e.to_string())))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
            .with_no_client_auth()
    };
    Ok(config)
}

/// `verify-ca`: the chain must lead to a trusted root; the name in the certificate need not
/// match the host connected to.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        PgTarget::parse(url).expect_err(url).to_string()
    }

    #[test]
    fn without_sslmode_the_connection_is_plain_and_other_options_stay() {
        let t = PgTarget::parse(
            "postgres://app@db.internal:6432/cgh?options=-c%20search_path%3Dcgh+x&connect_timeout=3",
        )
        .expect("parse");
        assert!(matches!(t.tls, PgTls::Off));
        assert_eq!(t.config.get_ssl_mode(), SslMode::Disable);
        assert_eq!(t.config.get_options(), Some("-c search_path=cgh+x"));
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert_eq!(t.config.get_user(), Some("app"));
        // The same options with TLS options among them come out the same.
        let dir = tempfile::tempdir().expect("tmp");
        let ca = dir.path().join("my ca.pem");
        let pem = rcgen::generate_simple_self_signed(vec!["db".to_string()])
            .expect("cert")
            .cert
            .pem();
        std::fs::write(&ca, pem).expect("write");
        let t = PgTarget::parse(&format!(
            "postgres://app@db/cgh?sslmode=verify-full&options=-c%20search_path%3Dcgh+x\
             &sslrootcert={}",
            ca.display().to_string().replace(' ', "%20")
        ))
        .expect("parse with TLS");
        assert_eq!(t.config.get_options(), Some("-c search_path=cgh+x"));
        assert!(matches!(t.tls, PgTls::On { .. }));
    }

    #[test]
    fn require_and_verify_modes_turn_tls_on_with_the_right_checks() {
        for (url, mode) in [
            ("postgres://h/db?sslmode=require", "verify-full"),
            ("postgres://h/db?sslmode=verify-full", "verify-full"),
            ("postgres://h/db?sslmode=verify-ca", "verify-ca"),
        ] {
            let t = PgTarget::parse(url).expect(url);
            assert_eq!(t.config.get_ssl_mode(), SslMode::Require, "{url}");
            match t.tls {
                PgTls::On { mode: m, .. } => assert_eq!(m, mode, "{url}"),
                PgTls::Off => panic!("{url}: TLS off"),
            }
        }
    }

    #[test]
    fn modes_that_fall_back_to_plain_text_and_unknown_ones_are_refused() {
        assert!(err("postgres://h/db?sslmode=prefer").contains("falls back to plain text"));
        assert!(err("postgres://h/db?sslmode=allow").contains("falls back to plain text"));
        assert!(err("postgres://h/db?sslmode=verify_full").contains("unknown sslmode"));
    }

    #[test]
    fn a_root_certificate_file_must_exist_hold_certificates_and_come_with_tls() {
        let dir = tempfile::tempdir().expect("tmp");
        let missing = dir.path().join("nope.pem");
        let e = err(&format!(
            "postgres://h/db?sslmode=verify-full&sslrootcert={}",
            missing.display()
        ));
        assert!(e.contains("cannot be read"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let e = err(&format!(
            "postgres://h/db?sslmode=verify-full&sslrootcert={}",
            empty.display()
        ));
        assert!(e.contains("holds no certificate"), "{e}");
        let e = err(&format!("postgres://h/db?sslrootcert={}", empty.display()));
        assert!(e.contains("TLS is not"), "{e}");
    }
}
