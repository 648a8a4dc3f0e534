//! Accepting connections on a node's ports: TLS when the node has a `[tls]` section, with a
//! plaintext caller on a TLS port still served just far enough to be told, as a gRPC status,
//! that the port wants TLS ([`super::gate`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use geokv_tls::verify::Presented;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use super::{Alpn, NodeTls};

/// Longest a new connection may take to send its first byte and finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for the server to take them.
const BACKLOG: usize = 1024;
/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// One accepted connection: plaintext, or TLS with the chain its caller presented, verified
/// against the CA once, at accept.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>, Option<Arc<Presented>>),
}

/// What the gate knows of a connection: where it comes from, whether it is TLS, and the
/// certificate its caller presented, verified.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    pub tls: bool,
    pub presented: Option<Arc<Presented>>,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(s) => ConnInfo { remote: s.peer_addr().ok(), tls: false, presented: None },
            Conn::Tls(s, presented) => {
                ConnInfo { remote: s.get_ref().0.peer_addr().ok(), tls: true, presented: presented.clone() }
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }
}

/// The connections accepted on `listener`, as tonic's `serve_with_incoming` takes them.
/// Handshakes run in tasks of their own, so a slow or silent caller holds up no other.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<NodeTls>>,
    alpn: Alpn,
) -> impl futures::Stream<Item = io::Result<Conn>> + Send + 'static {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                return;
            }
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let conn = match tls {
                    None => Some(Conn::Plain(tcp)),
                    Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(tcp, &tls, alpn)).await
                    {
                        Ok(Ok(conn)) => Some(conn),
                        Ok(Err(e)) => {
                            tracing::info!(%remote, error = %e, "TLS handshake failed");
                            tls.count_rejection("handshake");
                            None
                        }
                        Err(_) => {
                            tracing::info!(%remote, "TLS handshake timed out");
                            None
                        }
                    },
                };
                if let Some(conn) = conn {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|conn| (conn, rx)) })
}

/// A TLS connection, or a plaintext one (its first byte is no TLS handshake) for the gate to
/// refuse with a status.
async fn accept(tcp: TcpStream, tls: &NodeTls, alpn: Alpn) -> io::Result<Conn> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before sending anything"));
    }
    if first[0] != TLS_HANDSHAKE {
        return Ok(Conn::Plain(tcp));
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config(alpn));
    let stream = acceptor.accept(tcp).await?;
    let presented = stream.get_ref().1.peer_certificates().map(|chain| {
        let chain: Vec<CertificateDer<'static>> = chain.iter().map(|c| c.clone().into_owned()).collect();
        Arc::new(Presented::new(&tls.verifier(), &chain))
    });
    Ok(Conn::Tls(Box::new(stream), presented))
}
