//! TLS on the listener (issue 18, TL-1): rustls with its safe defaults (TLS 1.2 and 1.3, modern
//! AEAD suites only, no renegotiation), ALPN `h2` and `http/1.1`. The certificate and key are
//! re-read when either file changes (checked every 2 s) or on SIGHUP: new connections get the
//! new pair, open ones keep theirs, nothing is dropped. A pair that does not load (half-written
//! files, a key that does not match) is refused and the one in use stays.
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ServerConfig, crypto::CryptoProvider};

/// The listener's certificate, kept current.
#[derive(Debug)]
struct Reloading {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times when last loaded.
    stamp: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

fn modified(p: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Reads a certificate chain and its private key (PEM) and checks that they belong together.
fn load_pair(cert_file: &PathBuf, key_file: &PathBuf) -> Result<CertifiedKey, String> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls.cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert_file {}: no certificate in it",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| {
        format!(
            "tls: the key in {} does not belong to the certificate in {}: {e}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(ck)
}

/// TLS for a listener.
#[derive(Clone)]
pub(crate) struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<Reloading>,
}

impl Tls {
    /// Loads the pair (an error names the file and what is wrong with it).
    pub(crate) fn load(cert_file: &str, key_file: &str) -> Result<Self, String> {
        let (cert_file, key_file) = (PathBuf::from(cert_file), PathBuf::from(key_file));
        let stamp = (modified(&cert_file), modified(&key_file));
        let ck = load_pair(&cert_file, &key_file)?;
        let resolver = Arc::new(Reloading {
            cert_file,
            key_file,
            current: RwLock::new(Arc::new(ck)),
            stamp: Mutex::new(stamp),
        });
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
            resolver,
        })
    }

    pub(crate) fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Re-reads the pair if `force` or either file changed; true when a new pair is in use.
    fn reload(&self, force: bool) -> bool {
        let r = &self.resolver;
        let now = (modified(&r.cert_file), modified(&r.key_file));
        {
            let stamp = r.stamp.lock().unwrap_or_else(PoisonError::into_inner);
            if !force && *stamp == now {
                return false;
            }
        }
        match load_pair(&r.cert_file, &r.key_file) {
            Ok(ck) => {
                *r.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ck);
                *r.stamp.lock().unwrap_or_else(PoisonError::into_inner) = now;
                tracing::info!(cert = %r.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                // Often a pair caught half-written: the next check tries again.
                tracing::warn!(error = %e, "TLS certificate not reloaded; the current one stays");
                false
            }
        }
    }

    /// Watches the files (every 2 s) and SIGHUP until `stop`.
    pub(crate) fn spawn_reloader(&self, stop: tokio_util::sync::CancellationToken) {
        let tls = self.clone();
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                #[cfg(unix)]
                let hangup = async {
                    match hup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup = std::future::pending::<()>();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => { tls.reload(false); }
                    _ = hangup => { tls.reload(true); }
                }
            }
        });
    }
}
