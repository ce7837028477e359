//! Serving certificates: loaded from PEM files and reloaded when they change, without a restart.
//!
//! A mounted Secret is updated by the kubelet through a `..data` symlink swap, which file watches
//! on the visible paths miss. We poll instead: every tick we read both files through their paths
//! (following the symlinks anew), and swap in the new key only when the pair parses and matches.
//! A half-finished rotation (new cert, old key) is simply retried on the next tick.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key: {reason}")]
    NoKey { path: PathBuf, reason: String },
    #[error("the key in {key} does not belong to the certificate in {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("no rustls crypto provider is installed")]
    NoProvider,
}

/// Parses a PEM certificate chain and private key into a key rustls can serve.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::NoKey {
        path: key_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let provider = CryptoProvider::get_default().ok_or(TlsError::NoProvider)?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Mismatch {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The current serving key, swapped atomically by [`CertificateFiles::watch`].
#[derive(Debug)]
pub struct CurrentKey(RwLock<Arc<CertifiedKey>>);

impl CurrentKey {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Self(RwLock::new(Arc::new(key))))
    }

    fn set(&self, key: CertifiedKey) {
        if let Ok(mut current) = self.0.write() {
            *current = Arc::new(key);
        }
    }

    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|k| k.clone())
    }
}

impl ResolvesServerCert for CurrentKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

/// A certificate and key on disk.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertificateFiles {
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    /// Loads the pair now; fails with a message naming the file at fault.
    pub fn load(&self) -> Result<(CertifiedKey, Vec<u8>), TlsError> {
        let (cert, key) = self.read()?;
        let loaded = certified_key(&cert, &key, &self.cert, &self.key)?;
        Ok((loaded, fingerprint(&cert, &key)))
    }

    /// Polls the files and swaps `current` whenever they change to a valid pair. Runs forever;
    /// spawn it.
    pub async fn watch(self, current: Arc<CurrentKey>, mut seen: Vec<u8>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let Ok((cert, key)) = self.read() else {
                continue; // mid-swap or briefly missing: try again next tick
            };
            let print = fingerprint(&cert, &key);
            if print == seen {
                continue;
            }
            match certified_key(&cert, &key, &self.cert, &self.key) {
                Ok(loaded) => {
                    current.set(loaded);
                    seen = print;
                    tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                }
                Err(error) => {
                    tracing::warn!(%error, "new certificate files are not usable yet; keeping the current one");
                }
            }
        }
    }
}

/// Cheap change detection without hashing secrets into logs: the concatenated bytes.
fn fingerprint(cert: &[u8], key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(cert.len() + key.len());
    v.extend_from_slice(cert);
    v.extend_from_slice(key);
    v
}

/// TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1 by ALPN, certificates from `current`.
pub fn server_config(current: Arc<CurrentKey>) -> Result<ServerConfig, TlsError> {
    let provider = CryptoProvider::get_default()
        .ok_or(TlsError::NoProvider)?
        .clone();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Mismatch {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(current);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Installs ring as the process's rustls provider; harmless if one is already installed.
///
/// kube and rcgen bring ring; with a second provider compiled in, rustls would refuse to pick.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
