//! A node's address in a topology: an IP address or a DNS name, and a port. A name is not
//! resolved when the topology is loaded: the node that connects resolves it at connect time,
//! and again on every reconnect, so an address can follow a Kubernetes pod or a compose
//! service that moves.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// An IP address or a DNS name (no brackets around IPv6).
    host: String,
    port: u16,
}

impl HostPort {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The IP address, when the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The same port on `host`.
    pub fn with_host(&self, host: IpAddr) -> HostPort {
        HostPort { host: host.to_string(), port: self.port }
    }

    /// Where to listen for this address: the address itself when its host is an IP, else
    /// every IPv4 interface at its port (a node cannot bind a name; in Kubernetes or compose
    /// the name resolves to the node's own address).
    pub fn listen(&self) -> SocketAddr {
        match self.ip() {
            Some(ip) => SocketAddr::new(ip, self.port),
            None => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), self.port),
        }
    }

    /// Every interface of the address's family at its port.
    pub fn listen_any(&self) -> SocketAddr {
        match self.ip() {
            Some(IpAddr::V6(_)) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), self.port),
            _ => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), self.port),
        }
    }
}

impl From<SocketAddr> for HostPort {
    fn from(a: SocketAddr) -> Self {
        HostPort { host: a.ip().to_string(), port: a.port() }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A DNS name as RFC 1123 allows it: labels of letters, digits and '-', not starting or
/// ending with '-', separated by dots, at most 253 characters.
fn dns_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(a.into());
        }
        let bad = || format!("{s:?} is not HOST:PORT (an IP address or a DNS name, and a port)");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.parse::<IpAddr>().is_err() && !dns_name(host) {
            return Err(bad());
        }
        Ok(HostPort { host: host.to_owned(), port })
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_ips_or_dns_names_with_a_port() {
        let a: HostPort = "127.0.0.1:7400".parse().unwrap();
        assert_eq!(
            (a.ip(), a.port(), a.to_string()),
            (Some([127, 0, 0, 1].into()), 7400, "127.0.0.1:7400".into())
        );
        let v6: HostPort = "[::1]:7500".parse().unwrap();
        assert_eq!(v6.to_string(), "[::1]:7500");
        let name: HostPort = "geokv-eu-0.geokv-eu.db.svc.cluster.local:7400".parse().unwrap();
        assert_eq!((name.ip(), name.host()), (None, "geokv-eu-0.geokv-eu.db.svc.cluster.local"));
        assert_eq!(name.listen().to_string(), "0.0.0.0:7400");
        for bad in ["node1", "node1:", "node1:99999", "-bad-:1", "a b:1", "a..b:1", ":7400"] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad}");
        }
    }
}
