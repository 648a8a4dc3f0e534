//! The identities geokv certificates carry, and reading them back out of a certificate.

use std::fmt;

/// Who a certificate of the deployment's CA says its holder is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A node of the topology: its id and region.
    Node { id: u64, region: String },
    /// A client (a person or a program), by its principal name.
    Client { name: String },
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node { id, region } => write!(f, "node {id} of region {region}"),
            Identity::Client { name } => write!(f, "client {name:?}"),
        }
    }
}

const NODE_PREFIX: &str = "spiffe://geokv/region/";
const CLIENT_PREFIX: &str = "spiffe://geokv/client/";

/// The URI SAN of node `id` of `region`.
pub fn node_uri(region: &str, id: u64) -> String {
    format!("{NODE_PREFIX}{region}/node/{id}")
}

/// The URI SAN of client `name`.
pub fn client_uri(name: &str) -> String {
    format!("{CLIENT_PREFIX}{name}")
}

/// The DNS name a node's certificate answers to, whatever its address: what a node checks
/// when it connects to node `id`.
pub fn node_dns(id: u64) -> String {
    format!("node-{id}.geokv")
}

/// Whether `name` can go into a certificate's names: letters, digits, `-`, `_` and `.`, 1 to 64
/// characters (region names and principal names alike).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Reads the identity out of a DER certificate (it is not verified here: see
/// [`crate::verify`]).
pub fn identity_of(der: &[u8]) -> Result<Identity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("the certificate's subject alternative names cannot be parsed: {e}"))?;
    let mut found = None;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if let Some(identity) = parse_uri(uri) {
                if found.as_ref().is_some_and(|f| f != &identity) {
                    return Err("the certificate names two different geokv identities".into());
                }
                found = Some(identity);
            }
        }
    }
    found.ok_or_else(|| {
        "the certificate names no geokv identity (no spiffe://geokv/... URI); issue it with `geokv certs`"
            .into()
    })
}

fn parse_uri(uri: &str) -> Option<Identity> {
    if let Some(rest) = uri.strip_prefix(NODE_PREFIX) {
        let (region, id) = rest.split_once("/node/")?;
        let id: u64 = id.parse().ok()?;
        (valid_name(region) && id > 0).then(|| Identity::Node { id, region: region.to_owned() })
    } else {
        let name = uri.strip_prefix(CLIENT_PREFIX)?;
        valid_name(name).then(|| Identity::Client { name: name.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_uris() {
        assert_eq!(
            parse_uri(&node_uri("eu-west", 3)),
            Some(Identity::Node { id: 3, region: "eu-west".into() })
        );
        assert_eq!(
            parse_uri(&client_uri("app.reader")),
            Some(Identity::Client { name: "app.reader".into() })
        );
        assert_eq!(parse_uri("spiffe://geokv/region/eu/node/0"), None);
        assert_eq!(parse_uri("spiffe://geokv/region/e u/node/1"), None);
        assert_eq!(parse_uri("spiffe://other/client/x"), None);
        assert!(!valid_name("") && !valid_name("a/b") && valid_name("us-east_1.b"));
    }
}
