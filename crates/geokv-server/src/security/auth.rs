//! Who may do what: the `[auth]` section's roles and principals, bearer tokens checked against
//! their SHA-256 hashes in constant time, and grants on key prefixes (as etcd grants key
//! ranges).
//!
//! Without an `[auth]` section every caller with a certificate of the deployment CA may do
//! everything: the CA is the access list. With one, a caller acts as a principal (the name in
//! its client certificate, or the principal a token belongs to) and may do what its roles
//! grant, nothing else.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What an operation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    /// Changing the deployment: residency policies, links, leaves and cleanups, compaction,
    /// anti-entropy runs, fault injection.
    Admin,
}

impl Access {
    pub fn label(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        }
    }
}

/// The `[auth]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub roles: Vec<RoleConfig>,
    pub principals: Vec<PrincipalConfig>,
}

/// `[[auth.roles]]`: key prefixes a role may read and write, and whether it may administer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    pub name: String,
    /// Key prefixes (UTF-8) whose keys the role may read; `""` is every key.
    #[serde(default)]
    pub read: Vec<String>,
    /// Key prefixes whose keys the role may write (put, delete, increment, append, set
    /// changes, compare-and-swap).
    #[serde(default)]
    pub write: Vec<String>,
    /// May change the deployment (residency, links, leave, cleanup, ...).
    #[serde(default)]
    pub admin: bool,
}

/// `[[auth.principals]]`: a caller, its roles, and the SHA-256 (hex) of the tokens that prove
/// it (several during a rotation). A client certificate naming the principal proves it too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    pub name: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub token_sha256: Vec<String>,
}

/// The SHA-256 of a token, hex: what `token_sha256` lists (`geokv certs token` prints both).
pub fn token_hash(token: &str) -> String {
    geokv_tls::hex(&Sha256::digest(token.as_bytes()))
}

use geokv_tls::unhex32 as unhex;

impl AuthConfig {
    /// Checks names, references and hashes; the problem and the fix.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let mut roles = BTreeSet::new();
        for r in &self.roles {
            if !roles.insert(r.name.as_str()) || r.name.is_empty() {
                return Err((
                    format!("role {:?} is empty or declared twice", r.name),
                    "give every role a unique name".into(),
                ));
            }
        }
        let mut principals = BTreeSet::new();
        for p in &self.principals {
            if !geokv_tls::names::valid_name(&p.name) || !principals.insert(p.name.as_str()) {
                return Err((
                    format!("principal {:?} is declared twice or is not a valid name", p.name),
                    "use unique names of letters, digits, '-', '_' and '.' (the name in its client certificate)".into(),
                ));
            }
            if let Some(missing) = p.roles.iter().find(|r| !roles.contains(r.as_str())) {
                return Err((
                    format!("principal {:?} has role {missing:?}, which no [[auth.roles]] declares", p.name),
                    "declare the role or remove it from the principal".into(),
                ));
            }
            if let Some(bad) = p.token_sha256.iter().find(|h| unhex(h).is_none()) {
                return Err((
                    format!("principal {:?} has token_sha256 {bad:?}, which is not 64 hex digits", p.name),
                    "list the hash `geokv certs token` prints, never the token itself".into(),
                ));
            }
        }
        Ok(())
    }
}

/// A role's grants, as byte prefixes.
#[derive(Clone, Debug, Default)]
struct Grants {
    read: Vec<Vec<u8>>,
    write: Vec<Vec<u8>>,
    admin: bool,
}

/// The `[auth]` section made ready for checks.
#[derive(Clone, Debug, Default)]
pub struct Authorizer {
    /// Principal name to its merged grants.
    grants: BTreeMap<String, Grants>,
    /// (token hash, principal), in declaration order.
    tokens: Vec<([u8; 32], String)>,
}

fn covers(prefixes: &[Vec<u8>], key: &[u8]) -> bool {
    prefixes.iter().any(|p| key.starts_with(p))
}

impl Authorizer {
    pub fn new(cfg: &AuthConfig) -> Self {
        let roles: BTreeMap<&str, &RoleConfig> = cfg.roles.iter().map(|r| (r.name.as_str(), r)).collect();
        let mut grants = BTreeMap::new();
        let mut tokens = Vec::new();
        for p in &cfg.principals {
            let mut g = Grants::default();
            for role in p.roles.iter().filter_map(|r| roles.get(r.as_str())) {
                g.read.extend(role.read.iter().map(|s| s.as_bytes().to_vec()));
                g.write.extend(role.write.iter().map(|s| s.as_bytes().to_vec()));
                g.admin |= role.admin;
            }
            grants.insert(p.name.clone(), g);
            tokens.extend(p.token_sha256.iter().filter_map(|h| unhex(h)).map(|h| (h, p.name.clone())));
        }
        Authorizer { grants, tokens }
    }

    /// The principal a bearer token proves, comparing its hash with every listed hash in
    /// constant time (no early exit, so timing tells nothing about which hash came close).
    pub fn principal_of_token(&self, token: &str) -> Option<String> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (hash, principal) in &self.tokens {
            if bool::from(hash.ct_eq(&digest)) && found.is_none() {
                found = Some(principal.clone());
            }
        }
        found
    }

    /// Whether `principal` may do `access` on every key of `keys`; the first key it may not.
    pub fn check<'k>(&self, principal: &str, access: Access, keys: &[&'k [u8]]) -> Result<(), Denied<'k>> {
        let Some(g) = self.grants.get(principal) else { return Err(Denied::UnknownPrincipal) };
        let prefixes = match access {
            Access::Admin => return if g.admin { Ok(()) } else { Err(Denied::NotAdmin) },
            Access::Read => &g.read,
            Access::Write => &g.write,
        };
        match keys.iter().find(|k| !covers(prefixes, k)) {
            Some(k) => Err(Denied::Key(k)),
            None => Ok(()),
        }
    }

    /// Whether `principal` may read every key under `prefix` (a scan).
    pub fn check_prefix(&self, principal: &str, prefix: &[u8]) -> Result<(), Denied<'static>> {
        let Some(g) = self.grants.get(principal) else { return Err(Denied::UnknownPrincipal) };
        if covers(&g.read, prefix) {
            Ok(())
        } else {
            Err(Denied::Prefix)
        }
    }
}

/// What a request's `authorization` header proves: `None` without one, else the principal of
/// its bearer token, or why it proves nothing (a message for the caller; never the token).
pub fn token_principal(
    auth: Option<&Authorizer>,
    headers: &http::HeaderMap,
) -> Option<Result<String, String>> {
    let value = headers.get(http::header::AUTHORIZATION)?;
    let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Some(Err("the authorization header is not `Bearer <token>`".into()));
    };
    let Some(auth) = auth else {
        return Some(Err(
            "this node takes no tokens (its config has no [auth] section); present a client certificate instead".into(),
        ));
    };
    Some(auth.principal_of_token(token).ok_or_else(|| {
        "the token is not valid on this deployment (unknown, mistyped or revoked); ask its administrator for a current one"
            .to_string()
    }))
}

/// Why a principal may not.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied<'k> {
    UnknownPrincipal,
    NotAdmin,
    Key(&'k [u8]),
    Prefix,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AuthConfig {
        toml::from_str(&format!(
            r#"
[[roles]]
name = "reader"
read = ["app/"]
[[roles]]
name = "writer"
write = ["app/orders/"]
[[roles]]
name = "ops"
admin = true
read = [""]
[[principals]]
name = "dashboard"
roles = ["reader"]
token_sha256 = ["{}"]
[[principals]]
name = "orders"
roles = ["reader", "writer"]
[[principals]]
name = "oncall"
roles = ["ops"]
"#,
            token_hash("s3cret")
        ))
        .unwrap()
    }

    #[test]
    fn grants_cover_key_prefixes_per_access_and_tokens_name_their_principal() {
        let c = cfg();
        c.validate().unwrap();
        let a = Authorizer::new(&c);
        assert_eq!(a.principal_of_token("s3cret").as_deref(), Some("dashboard"));
        assert_eq!(a.principal_of_token("s3cret "), None);
        assert_eq!(a.check("dashboard", Access::Read, &[b"app/x"]), Ok(()));
        assert_eq!(a.check("dashboard", Access::Write, &[b"app/x"]), Err(Denied::Key(b"app/x")));
        assert_eq!(
            a.check("orders", Access::Write, &[b"app/orders/1", b"app/users/1"]),
            Err(Denied::Key(b"app/users/1"))
        );
        assert_eq!(a.check("orders", Access::Admin, &[]), Err(Denied::NotAdmin));
        assert_eq!(a.check("oncall", Access::Admin, &[]), Ok(()));
        assert_eq!(a.check("oncall", Access::Read, &[b"anything"]), Ok(()));
        assert_eq!(a.check("nobody", Access::Read, &[b"app/x"]), Err(Denied::UnknownPrincipal));
        assert_eq!(a.check_prefix("dashboard", b"app/orders/"), Ok(()));
        assert_eq!(a.check_prefix("dashboard", b""), Err(Denied::Prefix));
    }

    #[test]
    fn validation_names_the_bad_role_principal_or_hash() {
        let mut c = cfg();
        c.principals[0].roles.push("ghost".into());
        assert!(c.validate().unwrap_err().0.contains("ghost"));
        let mut c = cfg();
        c.principals[0].token_sha256 = vec!["s3cret".into()];
        assert!(c.validate().unwrap_err().1.contains("never the token"));
        let mut c = cfg();
        c.principals[1].name = "dashboard".into();
        assert!(c.validate().is_err());
    }
}
