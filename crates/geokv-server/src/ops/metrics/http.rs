//! The metrics port: `/metrics` (Prometheus text format), `/` (the status page: the
//! deployment's nodes and lag matrix as plain HTML, refreshed every 5 s), `/status.json` (the
//! same as JSON) and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::{Cluster, Node};

#[derive(Clone)]
struct Ctx {
    node: Arc<Node>,
    cluster: Option<Arc<Cluster>>,
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
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(page))
        .route("/status.json", get(status_json))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(Ctx { node, cluster });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok((addr, task))
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
