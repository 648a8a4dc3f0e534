//! Issuing a deployment's certificates with rcgen: a CA, a certificate per node (its identity
//! URI, its `node-<id>.geokv` name and the hosts it is reached at) and client certificates.
//! Keys are ECDSA P-256.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::names::{client_uri, node_dns, node_uri, valid_name};

/// When a certificate is valid: from `not_before` for `days` days.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub days: u32,
}

impl Validity {
    /// From an hour ago (clocks differ) for `days` days.
    pub fn days(days: u32) -> Self {
        Validity { not_before: OffsetDateTime::now_utc() - Duration::hours(1), days }
    }

    fn apply(&self, params: &mut CertificateParams) {
        params.not_before = self.not_before;
        params.not_after = self.not_before + Duration::days(i64::from(self.days));
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A deployment CA that can sign node and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca")
    }
}

fn err(e: rcgen::Error) -> String {
    e.to_string()
}

fn serial(params: &mut CertificateParams) {
    use std::hash::{BuildHasher, Hasher};
    // 16 random bytes: two SipHash outputs under fresh random keys.
    let mut bytes = Vec::with_capacity(16);
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(OffsetDateTime::now_utc().unix_timestamp_nanos() as u128);
        bytes.extend_from_slice(&h.finish().to_be_bytes());
    }
    bytes[0] &= 0x7f; // a positive serial
    params.serial_number = Some(rcgen::SerialNumber::from(bytes));
}

impl Ca {
    /// A new CA named `name`.
    pub fn create(name: &str, validity: Validity) -> Result<(Ca, Issued), String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.distinguished_name.push(DnType::OrganizationName, "geokv");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity.apply(&mut params);
        serial(&mut params);
        let cert = params.self_signed(&key).map_err(err)?;
        let issued = Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        let ca = Ca { issuer: Issuer::new(params, key), cert_pem: issued.cert_pem.clone() };
        Ok((ca, issued))
    }

    /// A CA from its certificate and key (as `create` wrote them).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("the CA key is not usable: {e}"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| format!("the CA certificate is not usable: {e}"))?;
        Ok(Ca { issuer, cert_pem: cert_pem.to_owned() })
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn leaf(&self, mut params: CertificateParams, validity: Validity) -> Result<Issued, String> {
        validity.apply(&mut params);
        serial(&mut params);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// The certificate of node `id` of `region`, also valid for the `hosts` (IP addresses or
    /// DNS names) clients reach it at.
    pub fn node(
        &self,
        id: u64,
        region: &str,
        hosts: &[String],
        validity: Validity,
    ) -> Result<Issued, String> {
        if id == 0 || !valid_name(region) {
            return Err(format!(
                "node {id} of region {region:?}: ids are positive and region names are letters, digits, '-', '_' and '.'"
            ));
        }
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, node_dns(id));
        params.distinguished_name.push(DnType::OrganizationName, "geokv");
        let mut sans = vec![
            SanType::URI(node_uri(region, id).try_into().map_err(err)?),
            SanType::DnsName(node_dns(id).try_into().map_err(err)?),
        ];
        for host in hosts {
            let san = match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    host.clone().try_into().map_err(|e| format!("host {host:?} is not a DNS name: {e}"))?,
                ),
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        params.subject_alt_names = sans;
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf(params, validity)
    }

    /// The certificate of client principal `name`.
    pub fn client(&self, name: &str, validity: Validity) -> Result<Issued, String> {
        if !valid_name(name) {
            return Err(format!("client name {name:?}: use letters, digits, '-', '_' and '.' (1 to 64)"));
        }
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.distinguished_name.push(DnType::OrganizationName, "geokv");
        params.subject_alt_names = vec![SanType::URI(client_uri(name).try_into().map_err(err)?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf(params, validity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{identity_of, Identity};
    use crate::verify::Verifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    fn der(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap()
    }

    fn verifier(ca: &Issued) -> Verifier {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&ca.cert_pem).remove(0)).unwrap();
        Verifier::new(roots).unwrap()
    }

    #[test]
    fn issued_certificates_carry_their_identity_and_verify_only_against_their_ca() {
        let (ca, ca_files) = Ca::create("test CA", Validity::days(30)).unwrap();
        let node =
            ca.node(3, "eu-west", &["127.0.0.1".into(), "db.example".into()], Validity::days(1)).unwrap();
        let client = ca.client("app", Validity::days(1)).unwrap();
        let v = verifier(&ca_files);
        assert_eq!(
            v.verify(&der(&node.cert_pem)).unwrap(),
            Identity::Node { id: 3, region: "eu-west".into() }
        );
        assert_eq!(v.verify(&der(&client.cert_pem)).unwrap(), Identity::Client { name: "app".into() });
        assert_eq!(
            identity_of(&der(&node.cert_pem)[0]).unwrap(),
            Identity::Node { id: 3, region: "eu-west".into() }
        );

        let (other, other_files) = Ca::create("other CA", Validity::days(30)).unwrap();
        let foreign = other.client("app", Validity::days(1)).unwrap();
        let refused = v.verify(&der(&foreign.cert_pem)).unwrap_err();
        assert_eq!(refused.reason, "unknown_ca", "{refused:?}");
        assert!(refused.message.contains("CA"), "{refused:?}");
        assert!(verifier(&other_files).verify(&der(&client.cert_pem)).is_err());

        let past = Validity { not_before: OffsetDateTime::now_utc() - Duration::days(10), days: 2 };
        let expired = ca.client("old", past).unwrap();
        let refused = v.verify(&der(&expired.cert_pem)).unwrap_err();
        assert_eq!(refused.reason, "expired", "{refused:?}");

        let reloaded = Ca::load(&ca_files.cert_pem, &ca_files.key_pem).unwrap();
        let again = reloaded.client("again", Validity::days(1)).unwrap();
        assert_eq!(v.verify(&der(&again.cert_pem)).unwrap(), Identity::Client { name: "again".into() });
        assert!(ca.client("a/b", Validity::days(1)).is_err());
        assert!(ca.node(1, "bad region", &[], Validity::days(1)).is_err());
    }
}
