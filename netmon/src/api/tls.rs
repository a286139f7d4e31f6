//! TLS for the API (`--api-tls-cert`, `--api-tls-key`): the certificate chain and key
//! read from PEM files into a rustls server configuration, and read again after a
//! SIGHUP (`request_reload`), so a renewed certificate needs no restart. A reload that
//! fails keeps the configuration that works and says why.
use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio_rustls::TlsAcceptor;

/// The certificate (chain, leaf first) and private key files, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the TLS files cannot be used; each says which file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the API certificate {}: {source}", .path.display())]
    ReadCert {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error(
        "the API certificate file {} holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----`)",
        .0.display()
    )]
    NoCert(PathBuf),
    #[error(
        "cannot read a private key from {}: {source} (expected a PEM PKCS#8, RSA or EC private key)",
        .path.display()
    )]
    ReadKey {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the API certificate {} and key {} cannot be used together: {source}", .cert.display(), .key.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The cryptography both ends of the API use: rustls's *ring* provider, which builds
/// with nothing but cargo. rustls 0.23.48 deprecates it for lacking post-quantum key
/// exchange, which only its aws-lc-rs provider has (a C library built with cmake). The
/// API's TLS protects tokens and events in transit today; moving to aws-lc-rs is a
/// decision for the API's TLS, not something a `cargo update` should force through
/// a lint.
#[allow(deprecated)]
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads both files and builds the server configuration (HTTP/1.1 only, as served).
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::ReadKey {
        path: files.key.clone(),
        source,
    })?;
    let mut cfg = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|source| TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Every certificate in a PEM file (a chain: leaf first).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::ReadCert {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(path.to_owned()));
    }
    Ok(certs)
}

/// Bumped by SIGHUP (`pipeline.rs`); each listener compares it with the generation it
/// loaded at its next connection.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Asks every TLS listener to read its files again before its next handshake.
pub fn request_reload() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The acceptor every connection of the API uses, reloaded when asked.
pub struct Reloading {
    files: TlsFiles,
    current: Mutex<(u64, TlsAcceptor)>,
}

impl Reloading {
    /// Loads the files now: at start a bad file is an error (exit 2, nothing attached).
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let cfg = load(&files)?;
        Ok(Self {
            files,
            current: Mutex::new((GENERATION.load(Ordering::Relaxed), TlsAcceptor::from(cfg))),
        })
    }

    /// The acceptor to use now: after a reload request the files are read again; if
    /// they no longer load, the previous configuration goes on serving.
    pub fn acceptor(&self) -> TlsAcceptor {
        let wanted = GENERATION.load(Ordering::Relaxed);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != wanted {
            current.0 = wanted;
            match load(&self.files) {
                Ok(cfg) => {
                    current.1 = TlsAcceptor::from(cfg);
                    crate::eline!(
                        "netmon: the API's TLS certificate was read again from {}",
                        self.files.cert.display()
                    );
                }
                Err(e) => crate::eline!(
                    "netmon: warning: {e}; the API goes on with the certificate it had"
                ),
            }
        }
        current.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_file_without_a_certificate_or_key_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(dir.path(), "empty.pem", "not pem at all\n");
        let files = TlsFiles {
            cert: empty.clone(),
            key: empty.clone(),
        };
        let e = load(&files).unwrap_err().to_string();
        assert!(e.contains("holds no certificate"), "{e}");
        assert!(e.contains("empty.pem"), "{e}");
        let missing = TlsFiles {
            cert: dir.path().join("missing.pem"),
            key: empty,
        };
        let e = load(&missing).unwrap_err().to_string();
        assert!(e.contains("cannot read the API certificate"), "{e}");
        assert!(e.contains("missing.pem"), "{e}");
    }
}
