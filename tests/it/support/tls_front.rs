//! A TLS front on loopback with a certificate the test makes (for `localhost`, from a test CA
//! written to a PEM file): it takes the TLS handshake and passes the plain bytes on to a real
//! server. For PostgreSQL it first answers the client's SSLRequest with `S`; a client that
//! does not ask for TLS is turned away, so a connection that works went through TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

/// The PostgreSQL protocol's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// What the server behind the front speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// PostgreSQL: TLS starts after the SSLRequest exchange.
    Postgres,
    /// HTTP: TLS from the first byte.
    Http,
}

pub struct TlsFront {
    pub addr: SocketAddr,
    /// The test CA's certificate (PEM).
    pub ca_file: PathBuf,
    handshakes: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Starts a front whose certificate is valid for `localhost` only.
    pub async fn start(upstream: SocketAddr, speaks: Speaks) -> TlsFront {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "cognihook test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf_params.subject_alt_names = vec![SanType::DnsName("localhost".try_into().unwrap())];
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = handshakes.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    if speaks == Speaks::Postgres {
                        let mut first = [0u8; 8];
                        if inbound.read_exact(&mut first).await.is_err() || first != SSL_REQUEST {
                            return; // not asking for TLS: dropped
                        }
                        if inbound.write_all(b"S").await.is_err() {
                            return;
                        }
                    }
                    let Ok(mut tls) = acceptor.accept(inbound).await else {
                        return; // the client refused the certificate
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut out) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut out).await;
                    }
                });
            }
        });
        TlsFront {
            addr,
            ca_file,
            handshakes,
            _dir: dir,
            task,
        }
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
