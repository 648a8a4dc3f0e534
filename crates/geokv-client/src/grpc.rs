//! The gRPC layer under [`crate::Client`], for tools that need calls the client does not
//! shape (the Admin service, requests with deliberately bad fields): tonic channels and the
//! generated stubs. These are tonic's types and follow tonic's versions; the rest of the
//! crate's API does not expose them.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::{proto, Client, ClientError, Result, Security, REQUEST_DEADLINE};

/// Adds the bearer token, if any, to every request.
#[derive(Clone, Debug, Default)]
pub struct Bearer(pub(crate) Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The client's transport: a channel, with the bearer token on every request.
pub type Transport = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// A channel to `endpoint` (`host:port`, `http://host:port` or `https://host:port`) with
/// `security`, connected before it is returned; every request on it has [`REQUEST_DEADLINE`].
pub async fn channel(endpoint: &str, security: &Security) -> Result<Channel> {
    channel_with_deadline(endpoint, security, REQUEST_DEADLINE).await
}

/// [`channel`] whose requests have `deadline` (operations that take long by nature: a
/// node's backup checkpoint).
pub async fn channel_with_deadline(
    endpoint: &str,
    security: &Security,
    deadline: Duration,
) -> Result<Channel> {
    let (ep, tls, shown) = endpoint_of(endpoint, security, deadline)?;
    let connected = match tls {
        None => ep.connect().await,
        Some(tls) => ep.connect_with_connector(tls.connector(security.server_name.clone())).await,
    };
    connected.map_err(|e| ClientError::Connect { endpoint: shown, message: describe(&e) })
}

/// A channel to `endpoint` that connects on its first request (and again after the
/// connection breaks): a node that is down now is not an error until a request needs it.
pub fn lazy_channel(endpoint: &str, security: &Security) -> Result<Channel> {
    let (ep, tls, _) = endpoint_of(endpoint, security, REQUEST_DEADLINE)?;
    Ok(match tls {
        None => ep.connect_lazy(),
        Some(tls) => ep.connect_with_connector_lazy(tls.connector(security.server_name.clone())),
    })
}

/// The tonic endpoint for `endpoint`, its TLS settings, and how to name it in errors.
fn endpoint_of(
    endpoint: &str,
    security: &Security,
    deadline: Duration,
) -> Result<(Endpoint, Option<std::sync::Arc<geokv_tls::client::ClientTls>>, String)> {
    let tls = security.client_tls()?;
    let bare = endpoint.trim_start_matches("http://").trim_start_matches("https://");
    if endpoint.starts_with("https://") && tls.is_none() {
        return Err(ClientError::Tls(format!(
            "{endpoint} is a TLS endpoint: give the deployment CA (--ca or GEOKV_CA)"
        )));
    }
    let uri = format!("http://{bare}");
    let shown = if tls.is_some() { format!("https://{bare}") } else { uri.clone() };
    let ep = Endpoint::from_shared(uri)
        .map_err(|e| ClientError::Endpoint { endpoint: endpoint.into(), message: e.to_string() })?
        .connect_timeout(deadline.min(Duration::from_secs(5)))
        .timeout(deadline)
        .tcp_nodelay(true);
    Ok((ep, tls, shown))
}

/// A client of the Admin service at `endpoint` (operating the deployment: status, links,
/// residency, leave, cleanup), with `security`'s credentials.
pub async fn admin(
    endpoint: &str,
    security: &Security,
) -> Result<proto::admin_client::AdminClient<Transport>> {
    admin_with_deadline(endpoint, security, REQUEST_DEADLINE).await
}

/// [`admin`] whose requests have `deadline`.
pub async fn admin_with_deadline(
    endpoint: &str,
    security: &Security,
    deadline: Duration,
) -> Result<proto::admin_client::AdminClient<Transport>> {
    let bearer = security.bearer()?;
    let channel = channel_with_deadline(endpoint, security, deadline).await?;
    Ok(proto::admin_client::AdminClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(256 * 1024 * 1024))
}

/// A transport error with its causes, which say what failed (refused, bad certificate, ...).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The generated Kv stub under `client` (sharing its connection and bearer token; without its
/// consistency level and per-call deadline).
pub fn kv(client: &Client) -> proto::kv_client::KvClient<Transport> {
    client.stub()
}

/// A tonic status (from a call made through this module) as the client's own, with geokv's
/// details read.
pub fn status_of(s: &tonic::Status) -> crate::Status {
    crate::Status::from_grpc(s)
}
