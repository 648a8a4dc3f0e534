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

/// The crypto provider of every TLS setting geokv makes: ring, with AES-128-GCM preferred
/// (then AES-256-GCM, then ChaCha20-Poly1305; TLS 1.3 before 1.2). Every request and answer
/// is a TLS record of its own, so the per-record cost shows in throughput, and AES-128-GCM is
/// the cheapest of rustls's safe defaults on CPUs with AES instructions.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite as C;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        C::TLS13_AES_128_GCM_SHA256 => 0,
        C::TLS13_AES_256_GCM_SHA384 => 1,
        C::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        _ => 4,
    });
    Arc::new(p)
}

/// Lowercase hex of `bytes` (tokens, token hashes, the gossip key).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The 32 bytes of 64 hex digits (a token hash, the gossip key), if `s` is that.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
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
