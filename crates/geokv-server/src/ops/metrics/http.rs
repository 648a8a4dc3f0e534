//! The metrics port: `/metrics` (Prometheus text format), `/` (the status page: the
//! deployment's nodes and lag matrix as plain HTML, refreshed every 5 s), `/status.json` (the
//! same as JSON), `/healthz` (liveness: the process answers) and `/readyz` (readiness, see
//! `ops::health`).
//!
//! With TLS (the node's `[tls]` section) the port speaks HTTPS with the node's certificate,
//! and everything but `/healthz` needs a certificate of the deployment CA (Prometheus's
//! `tls_config`) or, with `[auth]`, a principal's bearer token: the status page gathers the
//! whole deployment's status. A plaintext request is answered 400, saying to use HTTPS.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::ops::health::{Readiness, Ready};
use crate::security::auth::Authorizer;
use crate::security::listen::{incoming, ConnInfo};
use crate::security::NodeTls;
use crate::{Cluster, Node};

#[derive(Clone)]
struct Ctx {
    node: Arc<Node>,
    cluster: Option<Arc<Cluster>>,
    ready: Arc<Ready>,
}

/// Binds the metrics address (before the node starts anything else, so a taken port fails
/// the start cleanly).
pub async fn bind(listen: &str) -> Result<TcpListener, String> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on metrics address {listen}: {e}; pick a free address"))
}

/// Serves the metrics port on `listener` until the task is aborted.
pub fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    cluster: Option<Arc<Cluster>>,
    auth: Option<Arc<Authorizer>>,
    ready: Arc<Ready>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let tls = node.tls().cloned();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(page))
        .route("/status.json", get(status_json))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ctx { node, cluster, ready });
    let task = match tls {
        None => tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        }),
        Some(tls) => {
            let guard = Guard { tls: tls.clone(), auth };
            let app = app.layer(axum::middleware::from_fn_with_state(guard, admit));
            tokio::spawn(serve_tls(listener, app, tls))
        }
    };
    Ok((addr, task))
}

/// Serves HTTP/1 over the connections `listen::incoming` accepts (TLS, or plaintext to be
/// refused), each with its `ConnInfo` in the requests' extensions.
async fn serve_tls(listener: TcpListener, app: Router, tls: Arc<NodeTls>) {
    use futures::StreamExt as _;
    let mut conns = std::pin::pin!(incoming(listener, Some(tls), crate::security::Alpn::Http1));
    while let Some(conn) = conns.next().await {
        let Ok(conn) = conn else { continue };
        let info = tonic::transport::server::Connected::connect_info(&conn);
        let svc = hyper_util::service::TowerToHyperService::new(app.clone().layer(axum::Extension(info)));
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(conn);
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

/// Who may read the metrics port under TLS.
#[derive(Clone)]
struct Guard {
    tls: Arc<NodeTls>,
    auth: Option<Arc<Authorizer>>,
}

impl Guard {
    /// Why a request may not read the port, if it may not: (status, reason, message).
    fn refusal(&self, req: &axum::extract::Request) -> Option<(StatusCode, &'static str, String)> {
        let info = req.extensions().get::<ConnInfo>();
        if !info.is_some_and(|i| i.tls) {
            return Some((
                StatusCode::BAD_REQUEST,
                "plaintext",
                "this port takes only HTTPS: use https:// and trust the deployment CA\n".into(),
            ));
        }
        if matches!(req.uri().path(), "/healthz" | "/readyz") {
            return None;
        }
        if let Some(proved) = crate::security::auth::token_principal(self.auth.as_deref(), req.headers()) {
            return proved.err().map(|why| (StatusCode::UNAUTHORIZED, "bad_token", format!("{why}\n")));
        }
        match info.and_then(|i| i.presented.as_ref()) {
            None => Some((
                StatusCode::UNAUTHORIZED,
                "no_credentials",
                "present a certificate of the deployment CA (Prometheus: tls_config cert_file and key_file) or a token\n".into(),
            )),
            Some(presented) => match presented.identity() {
                Ok(_) => None,
                Err(r) => Some((StatusCode::UNAUTHORIZED, r.reason, format!("{}\n", r.message))),
            },
        }
    }
}

async fn admit(
    State(guard): State<Guard>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match guard.refusal(&req) {
        None => next.run(req).await,
        Some((code, reason, message)) => {
            guard.tls.count_rejection_on("metrics", reason);
            tracing::warn!(port = "metrics", reason, path = %req.uri().path(), "request refused");
            (code, message).into_response()
        }
    }
}

/// 200 `ready` when the node should get client traffic, else 503 and why.
async fn readyz(State(ctx): State<Ctx>) -> Response {
    match ctx.ready.get() {
        Readiness::Ready => "ready\n".into_response(),
        Readiness::Starting(why) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("starting: {why}\n")).into_response()
        }
        Readiness::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response(),
    }
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    let text = crate::blocking::run(move || {
        super::collect::refresh(&ctx.node, ctx.cluster.as_ref());
        ctx.node.metrics().encode()
    })
    .await;
    match text {
        Ok(text) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
        }
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("collecting metrics failed: {e}\n")).into_response()
        }
    }
}

async fn page(State(ctx): State<Ctx>) -> Html<String> {
    match &ctx.cluster {
        Some(cluster) => Html(super::page::render(&cluster.cluster_status().await)),
        None => Html(super::page::render_single(ctx.node.id(), &ctx.node.engine().stats())),
    }
}

async fn status_json(State(ctx): State<Ctx>) -> Response {
    match &ctx.cluster {
        Some(cluster) => axum::Json(cluster.cluster_status().await).into_response(),
        None => axum::Json(serde_json::json!({
            "node_id": ctx.node.id(),
            "storage": ctx.node.engine().stats(),
        }))
        .into_response(),
    }
}
