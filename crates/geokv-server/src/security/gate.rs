//! The layer in front of a node's client and peer ports: with TLS on, every request's caller
//! is verified against the deployment CA before any handler runs, and refused with
//! UNAUTHENTICATED (no or bad credentials) or PERMISSION_DENIED (good credentials, wrong
//! port or wrong claim), counted in `geokv_auth_rejected_total` and logged.
//!
//! - The peer port serves only nodes: a certificate naming a node of the topology (its
//!   region as the topology has it), whose node id is the one the call claims to come from.
//! - The client port serves clients and nodes (a request forwarded from another region
//!   comes with the forwarding node's certificate); gRPC health needs no credentials.
//!
//! On the client port a caller may also prove a principal with a bearer token
//! (`authorization: Bearer ...`, checked against the `[auth]` section's hashes), and a node
//! forwarding a client's request names that client ([`ON_BEHALF_HEADER`]).
//!
//! The verified caller goes into the request's extensions as a [`Caller`]; the client API
//! asks it whether it may read or write the request's keys ([`Caller::may`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use geokv_core::NodeId;
use geokv_tls::Identity;
use tonic::{Code, Status};

use super::auth::{token_principal, Access, Authorizer, Denied};
use super::listen::ConnInfo;
use super::NodeTls;

/// Which port a gate guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Client,
    Peer,
}

impl Port {
    fn label(self) -> &'static str {
        match self {
            Port::Client => "client",
            Port::Peer => "peer",
        }
    }
}

/// The header in which a node forwarding a client request to another region names the
/// principal it acts for; honoured only from a node certificate.
pub const ON_BEHALF_HEADER: &str = "x-geokv-on-behalf-of";

tokio::task_local! {
    /// The principal the current client request acts as (for requests forwarded on its behalf).
    static PRINCIPAL: Option<String>;
}

/// Runs a client request's handler as `principal`.
pub async fn acting_as<F: Future>(principal: Option<String>, fut: F) -> F::Output {
    PRINCIPAL.scope(principal, fut).await
}

/// The principal the current request acts as, if any.
pub fn on_behalf() -> Option<String> {
    PRINCIPAL.try_with(Clone::clone).ok().flatten()
}

/// Whether a client-port request's caller may do every access in `needs` on `keys` (or, for a
/// scan, on every key under `prefix`); with TLS on, a request with no verified caller may do
/// nothing. Refusals are counted and logged. Returns the principal the request acts as.
pub fn authorize(
    extensions: &http::Extensions,
    tls: Option<&Arc<NodeTls>>,
    needs: &[Access],
    keys: &[&[u8]],
    prefix: Option<&[u8]>,
) -> Result<Option<String>, Status> {
    let Some(caller) = extensions.get::<Caller>() else {
        return match tls {
            None => Ok(None),
            Some(_) => Err(refusal(Code::Unauthenticated, "no verified caller", "UNAUTHENTICATED")),
        };
    };
    for access in needs {
        if let Err(status) = caller.may(*access, keys, prefix) {
            if let Some(tls) = tls {
                tls.count_rejection_on("client", "not_granted");
            }
            tracing::warn!(caller = %caller.identity, principal = ?caller.principal, message = %status.message(), "request not granted");
            return Err(status);
        }
    }
    Ok(caller.principal.clone())
}

/// The verified caller of a request (absent when the node runs without TLS): its certificate's
/// identity, and the principal it acts as.
#[derive(Clone, Debug)]
pub struct Caller {
    pub identity: Identity,
    /// The principal whose grants apply: a client's own name (from its certificate or token),
    /// the client a node forwards for, or `None` for a node acting as itself.
    pub principal: Option<String>,
    /// The `[auth]` grants; `None`: every authenticated caller may do everything.
    pub auth: Option<Arc<Authorizer>>,
}

impl Caller {
    /// Whether this caller may do `access` on `keys` (or, for a scan, on every key under
    /// `prefix`); PERMISSION_DENIED saying what is missing otherwise.
    pub fn may(&self, access: Access, keys: &[&[u8]], prefix: Option<&[u8]>) -> Result<(), Status> {
        let Some(auth) = &self.auth else { return Ok(()) };
        let Some(principal) = &self.principal else {
            return match self.identity {
                Identity::Node { .. } => Err(refusal(
                    Code::PermissionDenied,
                    format!(
                        "{} made a client request without naming the client it acts for ({ON_BEHALF_HEADER})",
                        self.identity
                    ),
                    "NO_PRINCIPAL",
                )),
                Identity::Client { .. } => {
                    Err(refusal(Code::PermissionDenied, "no principal", "NO_PRINCIPAL"))
                }
            };
        };
        let result = match prefix {
            Some(p) => auth.check_prefix(principal, p),
            None => auth.check(principal, access, keys),
        };
        result.map_err(|denied| {
            let reason = match denied {
                Denied::UnknownPrincipal => "UNKNOWN_PRINCIPAL",
                Denied::NotAdmin => "NOT_ADMIN",
                Denied::Key(_) | Denied::Prefix => "NOT_GRANTED",
            };
            let what = match denied {
                Denied::UnknownPrincipal => format!("principal {principal:?} is not in this node's [auth] principals; add it with its roles"),
                Denied::NotAdmin => format!("principal {principal:?} has no role with admin = true; this call changes the deployment"),
                Denied::Key(k) => format!(
                    "principal {principal:?} may not {} key {:?}: none of its roles grants {} on a prefix of it",
                    access.label(),
                    String::from_utf8_lossy(k),
                    access.label()
                ),
                Denied::Prefix => format!(
                    "principal {principal:?} may not scan prefix {:?}: none of its roles grants read on a prefix of it (scan a prefix it may read)",
                    String::from_utf8_lossy(prefix.unwrap_or_default())
                ),
            };
            refusal(Code::PermissionDenied, what, reason)
        })
    }
}

/// The nodes and regions of the deployment, as certificates are checked against them.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    pub regions: BTreeSet<String>,
    pub nodes: BTreeMap<NodeId, String>,
}

impl Directory {
    pub fn of(topology: &geokv_topology::Topology) -> Self {
        Directory {
            regions: topology.regions.iter().map(|r| r.name.clone()).collect(),
            nodes: topology.nodes.iter().map(|n| (n.id, n.region.clone())).collect(),
        }
    }
}

/// Guards one port of node `node`.
#[derive(Clone)]
pub struct GateLayer {
    pub port: Port,
    pub node: NodeId,
    pub tls: Option<Arc<NodeTls>>,
    pub directory: Arc<Directory>,
    /// The `[auth]` grants (client port).
    pub auth: Option<Arc<Authorizer>>,
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Gate { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    layer: GateLayer,
}

/// A refusal: its status and a short reason for the metric.
struct Refusal {
    status: Status,
    reason: &'static str,
}

fn unauthenticated(reason: &'static str, message: String) -> Refusal {
    Refusal { status: refusal(Code::Unauthenticated, message, &reason.to_ascii_uppercase()), reason }
}

fn denied(reason: &'static str, message: String) -> Refusal {
    Refusal { status: refusal(Code::PermissionDenied, message, &reason.to_ascii_uppercase()), reason }
}

/// A refusal's status, with its `ErrorInfo` reason (docs/api.md, "Error details").
fn refusal(code: Code, message: impl Into<String>, reason: &str) -> Status {
    crate::api::status::detailed(code, message, reason, tonic::metadata::MetadataMap::new())
}

impl GateLayer {
    /// Who may make this request, or why not.
    fn admit<B>(&self, req: &http::Request<B>) -> Result<Option<Caller>, Refusal> {
        let port = self.port.label();
        let info = req.extensions().get::<ConnInfo>();
        if !info.is_some_and(|i| i.tls) {
            return Err(unauthenticated(
                "plaintext",
                format!(
                    "the {port} port of node {} takes only TLS connections; connect with https:// and trust the deployment CA (--ca or GEOKV_CA)",
                    self.node
                ),
            ));
        }
        let path = req.uri().path();
        if self.port == Port::Client && path.starts_with("/grpc.health.v1.Health/") {
            return Ok(None);
        }
        if self.port == Port::Client {
            if let Some(caller) = self.token_caller(req.headers())? {
                return Ok(Some(caller));
            }
        }
        let Some(presented) = info.and_then(|i| i.presented.as_ref()) else {
            return Err(unauthenticated(
                "no_credentials",
                match self.port {
                    Port::Client => "no credentials: present a client certificate issued by the deployment CA (--cert and --key, or GEOKV_CERT and GEOKV_KEY); `geokv certs client` makes one".into(),
                    Port::Peer => "no credentials: the peer port serves only the nodes of the topology, with their node certificates".into(),
                },
            ));
        };
        let identity = presented.identity().map_err(|r| unauthenticated(r.reason, r.message))?;
        if self.port == Port::Peer {
            self.check_node(&identity, req.headers())?;
        }
        let principal = match &identity {
            Identity::Client { name } => Some(name.clone()),
            Identity::Node { .. } => req
                .headers()
                .get(ON_BEHALF_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|p| geokv_tls::names::valid_name(p))
                .map(str::to_owned),
        };
        Ok(Some(Caller { identity, principal, auth: self.auth.clone() }))
    }

    /// The caller a bearer token proves, if the request carries one.
    fn token_caller(&self, headers: &http::HeaderMap) -> Result<Option<Caller>, Refusal> {
        match token_principal(self.auth.as_deref(), headers) {
            None => Ok(None),
            Some(Err(message)) => Err(unauthenticated("bad_token", message)),
            Some(Ok(name)) => Ok(Some(Caller {
                identity: Identity::Client { name: name.clone() },
                principal: Some(name),
                auth: self.auth.clone(),
            })),
        }
    }

    /// A peer-port caller must be a node of the topology, and the node it claims to be.
    fn check_node(&self, identity: &Identity, headers: &http::HeaderMap) -> Result<(), Refusal> {
        let Identity::Node { id, region } = identity else {
            return Err(denied(
                "client_on_peer_port",
                format!(
                    "{identity} presented a client certificate to the peer port of node {}; clients call the client port (the node's client_addr), the peer port serves only nodes",
                    self.node
                ),
            ));
        };
        let d = &self.directory;
        match d.nodes.get(id) {
            Some(r) if r != region => {
                return Err(denied(
                    "wrong_region",
                    format!("the certificate names node {id} of region {region}, but the topology puts node {id} in region {r}; issue the node a certificate for its region"),
                ))
            }
            None if !d.regions.contains(region) => {
                return Err(denied(
                    "unknown_node",
                    format!("the certificate names node {id} of region {region}, which is not a region of this deployment"),
                ))
            }
            _ => {}
        }
        if let Some(claimed) = crate::trace::caller(headers) {
            if claimed != *id {
                return Err(denied(
                    "wrong_node",
                    format!(
                        "the call claims to come from node {claimed} but its certificate names node {id}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, RB> tower::Service<http::Request<B>> for Gate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let Some(tls) = self.layer.tls.clone() else {
            return Box::pin(self.inner.call(req));
        };
        match self.layer.admit(&req) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    req.extensions_mut().insert(caller);
                }
                Box::pin(self.inner.call(req))
            }
            Err(refusal) => {
                let port = self.layer.port.label();
                let remote = req.extensions().get::<ConnInfo>().and_then(|i| i.remote);
                tracing::warn!(
                    port,
                    remote = ?remote,
                    method = %req.uri().path(),
                    reason = refusal.reason,
                    message = %refusal.status.message(),
                    "request refused"
                );
                tls.count_rejection_on(port, refusal.reason);
                let resp = refusal.status.into_http::<RB>();
                Box::pin(async move { Ok(resp) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer() -> GateLayer {
        let directory = Directory {
            regions: ["eu-west", "us-east"].iter().map(|s| s.to_string()).collect(),
            nodes: [(1, "eu-west".to_string()), (2, "us-east".to_string())].into_iter().collect(),
        };
        GateLayer { port: Port::Peer, node: 1, tls: None, directory: Arc::new(directory), auth: None }
    }

    fn node(id: u64, region: &str) -> Identity {
        Identity::Node { id, region: region.into() }
    }

    fn reason(r: Result<(), Refusal>) -> &'static str {
        r.err().map_or("admitted", |r| r.reason)
    }

    #[test]
    fn the_peer_port_admits_the_nodes_of_the_topology_as_themselves_only() {
        let g = layer();
        let none = http::HeaderMap::new();
        assert_eq!(reason(g.check_node(&node(2, "us-east"), &none)), "admitted");
        // A node that joined after the topology file was written: its region must exist.
        assert_eq!(reason(g.check_node(&node(9, "us-east"), &none)), "admitted");
        assert_eq!(reason(g.check_node(&node(9, "mars"), &none)), "unknown_node");
        assert_eq!(reason(g.check_node(&node(2, "eu-west"), &none)), "wrong_region");
        let client = Identity::Client { name: "app".into() };
        assert_eq!(reason(g.check_node(&client, &none)), "client_on_peer_port");
        let mut claims_1 = http::HeaderMap::new();
        claims_1.insert(crate::trace::FROM_HEADER, "1".parse().unwrap());
        assert_eq!(reason(g.check_node(&node(2, "us-east"), &claims_1)), "wrong_node");
        assert_eq!(reason(g.check_node(&node(1, "eu-west"), &claims_1)), "admitted");
    }
}
