//! TLS for outgoing gRPC connections, as a tonic connector
//! (`Endpoint::connect_with_connector`): node to node, node to another region, client to node.
//!
//! The settings sit behind a lock so a rotated CA or certificate applies to the next
//! connection without rebuilding the channels that use them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A process's client-side TLS settings: the roots it trusts and, optionally, the certificate
/// it presents.
#[derive(Debug)]
pub struct ClientTls {
    config: RwLock<Arc<ClientConfig>>,
}

/// Builds rustls client settings with ALPN h2.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<Arc<dyn ResolvesClientCert>>,
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

impl ClientTls {
    pub fn new(config: Arc<ClientConfig>) -> Arc<Self> {
        Arc::new(ClientTls { config: RwLock::new(config) })
    }

    /// Replaces the settings for connections made from now on.
    pub fn set(&self, config: Arc<ClientConfig>) {
        *self.config.write().unwrap_or_else(std::sync::PoisonError::into_inner) = config;
    }

    fn get(&self) -> Arc<ClientConfig> {
        self.config.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// A connector that checks the server's certificate against `server_name` (for a node:
    /// [`crate::names::node_dns`]); `None`: the host of the URI connected to.
    pub fn connector(self: &Arc<Self>, server_name: Option<String>) -> Connector {
        Connector { tls: self.clone(), server_name }
    }
}

/// A tonic connector: TCP (Nagle off), then a TLS handshake.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<ClientTls>,
    server_name: Option<String>,
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TlsStream<TcpStream>>, std::io::Error>> + Send>>;

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.tls.get();
        let name = self.server_name.clone();
        Box::pin(async move {
            let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
            let host = uri.host().ok_or_else(|| invalid(format!("{uri} names no host")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let name = name.unwrap_or_else(|| host.clone());
            let server_name = ServerName::try_from(name.clone())
                .map_err(|e| invalid(format!("{name:?} is not a usable TLS server name: {e}")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
