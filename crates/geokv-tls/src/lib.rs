//! geokv-tls: who a TLS certificate says it is, and the TLS plumbing every geokv process
//! shares.
//!
//! - [`names`]: the identities a deployment's certificates carry. A node certificate names its
//!   node id and region in a URI SAN (`spiffe://geokv/region/<region>/node/<id>`) and answers
//!   to the DNS name `node-<id>.geokv`; a client certificate names its principal
//!   (`spiffe://geokv/client/<name>`).
//! - [`files`]: the CA, certificate and key PEM files of a process.
//! - [`client`]: TLS for outgoing gRPC connections (node to node, client to node), as a
//!   tonic connector whose settings can be swapped while connections live (rotation).
//! - [`server`]: the rustls server settings of a node: a certificate that can be swapped
//!   (reload on SIGHUP or file change), and client certificates checked after the handshake
//!   so a bad one gets a gRPC status rather than a TLS alert ([`verify`]).
//! - [`issue`]: creating a deployment CA and its node and client certificates (rcgen), and
//!   [`layout`]: the directory `geokv certs` writes them to.
//!
//! The crypto provider is *ring* (`docs/security.md` says why); nothing here reads a
//! process-wide default provider.

pub mod client;
pub mod files;
pub mod issue;
pub mod layout;
pub mod names;
pub mod server;
pub mod verify;

use std::sync::Arc;

pub use names::Identity;
pub use rustls;

/// The crypto provider of every TLS setting geokv makes: ring.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Errors of loading or using TLS material; messages name the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {message}")]
    Read { what: &'static str, path: String, message: String },
    #[error("{what} {path} is not usable: {message}")]
    Invalid { what: &'static str, path: String, message: String },
    #[error("{0}")]
    Other(String),
}
