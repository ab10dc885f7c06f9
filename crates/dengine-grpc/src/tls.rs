//! TLS on the client and peer ports, with etcd's settings: a certificate
//! and key (`--cert-file`, `--key-file`; `--peer-cert-file`,
//! `--peer-key-file`), a CA that signs the certificates the other side
//! must present (`--trusted-ca-file`, `--peer-trusted-ca-file`), and
//! whether the other side must present one (`--client-cert-auth`,
//! `--peer-client-cert-auth`).
//!
//! rustls (on ring) does the work. The server accepts TCP connections
//! itself and makes the TLS handshake with the configuration of the
//! moment: the files are looked at again (their modification times, at
//! most once a second) when a connection comes, and a changed set is
//! loaded, so a renewed certificate is served without a restart.
//! Connections already open keep what they began with. A set that fails
//! to load is logged and the last good one stays.
//!
//! Towards peers the same files serve the other way round: the member
//! presents its peer certificate as a client and checks the peer's
//! against the peer CA ([`PeerConnector`]).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Files are looked at again at most this often.
const RECHECK: Duration = Duration::from_secs(1);

/// The files of one port's TLS settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain this member presents (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// The CA certificates (PEM) that sign what the other side presents.
    pub trusted_ca_file: Option<PathBuf>,
    /// Whether the other side must present a certificate signed by the
    /// trusted CA (etcd's `--client-cert-auth` / `--peer-client-cert-auth`).
    pub client_cert_auth: bool,
}

/// Why TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file holds no certificate, or no key.
    #[error("{path}: no {what} found (PEM expected)")]
    Empty {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// The settings do not go together, or rustls refused them.
    #[error("{0}")]
    Invalid(String),
}

/// What a set of files gave.
struct Loaded {
    stamps: Vec<Option<SystemTime>>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// One port's TLS: the files and the configurations loaded from them,
/// loaded again when the files change.
pub struct Tls {
    files: TlsFiles,
    loaded: RwLock<Arc<Loaded>>,
    checked: Mutex<Instant>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Loads `files`; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        if files.client_cert_auth && files.trusted_ca_file.is_none() {
            return Err(TlsError::Invalid(
                "client certificate authentication needs a trusted CA file".into(),
            ));
        }
        let loaded = build(&files)?;
        Ok(Arc::new(Tls {
            files,
            loaded: RwLock::new(Arc::new(loaded)),
            checked: Mutex::new(Instant::now()),
        }))
    }

    /// The files.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration a new server-side connection gets.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current().server.clone()
    }

    /// The configuration a new connection to a peer gets.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current().client.clone()
    }

    fn current(&self) -> Arc<Loaded> {
        self.reload_if_changed();
        self.loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Loads the files again if one changed since the last load (looked
    /// at most once per [`RECHECK`]).
    fn reload_if_changed(&self) {
        {
            let mut checked = self
                .checked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if checked.elapsed() < RECHECK {
                return;
            }
            *checked = Instant::now();
        }
        let stamps = stamps(&self.files);
        let old = self
            .loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stamps
            .clone();
        if stamps == old {
            return;
        }
        match build(&self.files) {
            Ok(loaded) => {
                tracing::info!(cert = %self.files.cert_file.display(),
                    "TLS certificate files changed: loaded again for new connections");
                metrics::counter!("dengine_tls_reloads_total").increment(1);
                *self
                    .loaded
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
            }
            Err(e) => {
                // Files replaced one at a time can be caught half-way: the
                // next connection tries again.
                tracing::warn!(error = %e, "TLS certificate files changed but do not load; keeping the last good ones");
            }
        }
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [
        Some(&files.cert_file),
        Some(&files.key_file),
        files.trusted_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Empty {
        path: path.to_path_buf(),
        what: "private key",
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Invalid(format!("{}: {e}", path.display())))?;
    }
    Ok(roots)
}

fn build(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let stamps = stamps(files);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates(&files.cert_file)?;
    let key = private_key(&files.key_file)?;
    let roots = files.trusted_ca_file.as_deref().map(roots).transpose()?;
    let invalid = |e: rustls::Error| TlsError::Invalid(e.to_string());

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?;
    let builder = match (&roots, files.client_cert_auth) {
        (Some(roots), true) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots.clone()),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|e| {
            TlsError::Invalid(format!(
                "{} and {}: {e}",
                files.cert_file.display(),
                files.key_file.display()
            ))
        })?;
    server.alpn_protocols = vec![b"h2".to_vec()];

    // Towards peers: their certificates are checked against the CA; this
    // member's certificate is its client identity.
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_root_certificates(roots.unwrap_or_else(RootCertStore::empty))
        .with_client_auth_cert(certs, key)
        .map_err(invalid)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        stamps,
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// The TLS connections a listener accepts: each handshake runs in a task
/// of its own (a slow or silent client does not hold the others up) and
/// is bounded by 10 seconds. A refused handshake is logged and
/// counted (`dengine_tls_handshakes_refused_total{port}`). The listener
/// is closed when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Tls>,
    port: &'static str,
) -> impl tokio_stream::Stream<Item = io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: pause, go on.
                    tracing::warn!(error = %e, port, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        let _ = tx.send(Ok(tls_stream)).await;
                    }
                    Ok(Err(e)) => refused(port, remote, &e.to_string()),
                    Err(_) => refused(port, remote, "the handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn refused(port: &'static str, remote: std::net::SocketAddr, why: &str) {
    tracing::warn!(port, %remote, reason = why, "TLS handshake refused");
    metrics::counter!("dengine_tls_handshakes_refused_total", "port" => port).increment(1);
}

/// Connects to peers over TLS for tonic's channels: TCP, then a handshake
/// with the peer configuration of the moment. The channel's URL must be
/// `http://` (tonic refuses `https://` without its own TLS); the host in
/// it is the name the peer's certificate must carry.
#[derive(Clone, Debug)]
pub struct PeerConnector {
    tls: Arc<Tls>,
}

impl PeerConnector {
    /// A connector with `tls`' peer settings.
    pub fn new(tls: Arc<Tls>) -> PeerConnector {
        PeerConnector { tls }
    }
}

type Connecting = Pin<
    Box<
        dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
    >,
>;

impl tower_service::Service<http::Uri> for PeerConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.tls.client_config();
        Box::pin(async move {
            let bad =
                |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {why}"));
            let host = uri.host().ok_or_else(|| bad("no host"))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
            let name = ServerName::try_from(host.clone()).map_err(|_| bad("not a host name"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// A lazy channel to the peer at `url` through `endpoint` (made from
/// [`plain_scheme`] of it): over TLS when `url` is `https://`.
pub fn peer_channel(
    endpoint: &tonic::transport::Endpoint,
    url: &str,
    tls: Option<&Arc<Tls>>,
) -> tonic::transport::Channel {
    match (is_https(url), tls) {
        (true, Some(tls)) => endpoint.connect_with_connector_lazy(PeerConnector::new(tls.clone())),
        (true, None) => {
            tracing::warn!(
                peer = url,
                "the peer's URL is https but this member has no peer TLS settings (--peer-cert-file, --peer-key-file): connecting without TLS"
            );
            endpoint.connect_lazy()
        }
        (false, _) => endpoint.connect_lazy(),
    }
}

/// `url` with `https://` made `http://` (see [`PeerConnector`]).
pub fn plain_scheme(url: &str) -> String {
    match url.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => url.to_string(),
    }
}

/// Whether `url` asks for TLS.
pub fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        TlsFiles {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            trusted_ca_file: None,
            client_cert_auth: false,
        }
    }

    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn bad_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        assert!(Tls::load(files(dir.path(), &cert, &key)).is_ok());

        let missing = TlsFiles {
            cert_file: dir.path().join("nowhere.pem"),
            ..files(dir.path(), &cert, &key)
        };
        let e = Tls::load(missing).unwrap_err().to_string();
        assert!(e.contains("nowhere.pem"), "{e}");

        let e = Tls::load(files(dir.path(), "not a certificate", &key))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cert.pem") && e.contains("no certificate"),
            "{e}"
        );

        let e = Tls::load(files(dir.path(), &cert, "no key here"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key.pem") && e.contains("no private key"), "{e}");

        let e = Tls::load(files(dir.path(), &cert, &other_key))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cert.pem and"),
            "a key that is not the certificate's: {e}"
        );

        let no_ca = TlsFiles {
            client_cert_auth: true,
            ..files(dir.path(), &cert, &key)
        };
        assert!(Tls::load(no_ca).is_err());
    }

    #[test]
    fn changed_files_are_loaded_again_and_bad_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let tls = Tls::load(files(dir.path(), &cert, &key)).unwrap();
        let first = tls.server_config();
        // Not looked at again within a second.
        let (cert2, key2) = self_signed();
        files(dir.path(), &cert2, &key2);
        std::fs::File::options()
            .append(true)
            .open(dir.path().join("cert.pem"))
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(2))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &tls.server_config()));
        *tls.checked.lock().unwrap() = Instant::now() - RECHECK;
        let second = tls.server_config();
        assert!(
            !Arc::ptr_eq(&first, &second),
            "the new files were not loaded"
        );
        // A broken set keeps the last good one.
        std::fs::write(dir.path().join("key.pem"), "broken").unwrap();
        // (Modification times can be coarse: make sure this one differs.)
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .append(true)
            .open(dir.path().join("key.pem"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        *tls.checked.lock().unwrap() = Instant::now() - RECHECK;
        assert!(Arc::ptr_eq(&second, &tls.server_config()));
    }

    #[test]
    fn https_urls_become_plain_for_tonic() {
        assert_eq!(
            plain_scheme("https://10.0.0.1:2380"),
            "http://10.0.0.1:2380"
        );
        assert_eq!(plain_scheme("http://a:1"), "http://a:1");
        assert!(is_https("https://a:1") && !is_https("http://a:1"));
    }
}
