//! Checking a peer's certificate chain against the deployment CA after the handshake, so a
//! bad certificate is answered with a gRPC status a person can act on (a TLS alert would
//! reach the caller as a bare connection error).

use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::names::{identity_of, Identity};

/// Why a presented certificate was refused: a short label (for metrics) and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

/// Verifies chains against one set of trust roots (the deployment CA).
#[derive(Clone)]
pub struct Verifier {
    webpki: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier")
    }
}

impl Verifier {
    pub fn new(roots: RootCertStore) -> Result<Self, String> {
        let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::provider())
            .build()
            .map_err(|e| format!("the CA file cannot verify certificates: {e}"))?;
        Ok(Verifier { webpki })
    }

    /// The identity of a presented chain (leaf first), if the deployment CA issued it, it is
    /// valid now, and it names a geokv identity.
    pub fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<Identity, Rejection> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(Rejection {
                reason: "no_certificate",
                message: "no client certificate was presented".into(),
            });
        };
        if let Err(e) = self.webpki.verify_client_cert(leaf, intermediates, UnixTime::now()) {
            return Err(rejection(&e));
        }
        identity_of(leaf).map_err(|message| Rejection { reason: "no_identity", message })
    }
}

/// A chain presented on a connection, verified once when the connection was accepted (chain
/// verification costs a signature check per certificate: per request it would cost more than
/// the request), with its leaf's expiry so a connection that outlives its certificate is
/// refused from then on.
#[derive(Clone, Debug)]
pub struct Presented {
    result: Result<Identity, Rejection>,
    not_after: Option<std::time::SystemTime>,
}

impl Presented {
    pub fn new(verifier: &Verifier, chain: &[CertificateDer<'static>]) -> Self {
        let not_after = chain.first().and_then(|leaf| not_after(leaf));
        Presented { result: verifier.verify(chain), not_after }
    }

    /// The verified identity, or why not (an expiry since the handshake included).
    pub fn identity(&self) -> Result<Identity, Rejection> {
        if self.result.is_ok() && self.not_after.is_some_and(|t| std::time::SystemTime::now() > t) {
            return Err(Rejection {
                reason: "expired",
                message:
                    "the certificate expired after this connection was opened; reconnect with a current one"
                        .into(),
            });
        }
        self.result.clone()
    }
}

/// When a DER certificate stops being valid.
fn not_after(der: &CertificateDer<'_>) -> Option<std::time::SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

fn rejection(e: &rustls::Error) -> Rejection {
    use CertificateError as C;
    let (reason, message) = match e {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => (
            "expired",
            format!("the certificate has expired ({e}); issue a new one with `geokv certs client` or `geokv certs node`"),
        ),
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => (
            "not_yet_valid",
            format!("the certificate is not valid yet ({e}); check the clocks of the issuing host and this node"),
        ),
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => (
            "unknown_ca",
            format!("the certificate was not issued by this deployment's CA ({e}); use a certificate signed by the CA in the node's [tls] ca file"),
        ),
        rustls::Error::InvalidCertificate(C::Revoked) => ("revoked", format!("the certificate is revoked ({e})")),
        _ => ("bad_certificate", format!("the certificate is not acceptable: {e}")),
    };
    Rejection { reason, message }
}
