//! Loading a process's CA, certificate and key from PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// The PEM files of one process: the deployment CA it trusts, and its own certificate and key
/// (a node always has them; a client only for certificate authentication).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// Every certificate in a PEM file, in order (a leaf first, then its intermediates).
pub fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = std::fs::read(path).map_err(|e| TlsError::Read {
        what,
        path: shown(path),
        message: e.to_string(),
    })?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid { what, path: shown(path), message: format!("bad PEM: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            what,
            path: shown(path),
            message: "it holds no CERTIFICATE block; give the PEM file `geokv certs` wrote".into(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "private key";
    let text = std::fs::read(path).map_err(|e| TlsError::Read {
        what,
        path: shown(path),
        message: e.to_string(),
    })?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| TlsError::Invalid {
        what,
        path: shown(path),
        message: format!("no usable PRIVATE KEY block ({e}); give the .key file `geokv certs` wrote"),
    })
}

/// The trust roots of a CA file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, "CA certificate")? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            what: "CA certificate",
            path: shown(path),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A certificate chain and its key, checked to belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(cert, "certificate")?;
    let key_der = load_key(key)?;
    let provider = crate::provider();
    let certified = CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| TlsError::Invalid {
        what: "certificate and key",
        path: format!("{} + {}", shown(cert), shown(key)),
        message: format!("{e}; the key must be the one issued with the certificate"),
    })?;
    Ok(Arc::new(certified))
}

impl TlsFiles {
    /// The certificate and key, which this process must have.
    pub fn identity(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => load_certified_key(cert, key),
            _ => Err(TlsError::Other(
                "a certificate and its key are needed (cert and key files); create them with `geokv certs`"
                    .into(),
            )),
        }
    }
}
