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
