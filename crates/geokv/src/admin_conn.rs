//! How the CLI's operator commands reach a node: the Admin service at the client endpoint
//! (`--endpoint`, with the client's certificate or token; the admin grant decides), or, with
//! `--peer`, the node-to-node service at a peer address (which only a node certificate may call
//! when TLS is on). Both answer the same calls with the same messages.

use anyhow::Context;
use geokv_client::proto;
use proto::admin_client::AdminClient;
use proto::cluster_client::ClusterClient;

use crate::client_cmd::{endpoints, security};

pub enum AdminConn {
    Client(AdminClient<geokv_client::grpc::Transport>),
    Peer(ClusterClient<tonic::transport::Channel>),
}

impl AdminConn {
    /// The peer service at `peer` if given, else the Admin service at the first of
    /// `--endpoints` that takes the connection (a node that is down is skipped; commands that
    /// change one node refuse a list before they get here).
    pub async fn open(peer: Option<&str>) -> anyhow::Result<AdminConn> {
        if let Some(peer) = peer {
            return Ok(AdminConn::Peer(crate::client_cmd::peer_client(peer).await?));
        }
        let mut failed = None;
        for ep in endpoints() {
            match geokv_client::grpc::admin(&ep, &security()).await {
                Ok(c) => return Ok(AdminConn::Client(c)),
                Err(e @ geokv_client::ClientError::Connect { .. }) => failed = Some((ep, e)),
                Err(e) => return Err(anyhow::Error::from(e).context(format!("cannot connect to {ep}"))),
            }
        }
        let (ep, e) = failed.context("no endpoint given")?;
        Err(anyhow::Error::from(e).context(format!("cannot connect to {ep}")))
    }
}

macro_rules! calls {
    ($($method:ident($req:ty) -> $resp:ty;)*) => {
        impl AdminConn {
            $(
                pub async fn $method(&mut self, req: $req) -> Result<$resp, tonic::Status> {
                    match self {
                        AdminConn::Client(c) => c.$method(req).await.map(tonic::Response::into_inner),
                        AdminConn::Peer(c) => c.$method(req).await.map(tonic::Response::into_inner),
                    }
                }
            )*
        }
    };
}

calls! {
    cluster_status(proto::ClusterStatusRequest) -> proto::ClusterStatusResponse;
    stats(proto::StatsRequest) -> proto::StatsResponse;
    replication_status(proto::ReplicationStatusRequest) -> proto::ReplicationStatusResponse;
    set_link(proto::SetLinkRequest) -> proto::SetLinkResponse;
    apply_residency(proto::ApplyResidencyRequest) -> tonic::Streaming<proto::ResidencyReport>;
    explain_residency(proto::ExplainResidencyRequest) -> proto::ResidencyExplanation;
    leave(proto::LeaveRequest) -> proto::MoveReport;
    cleanup(proto::CleanupRequest) -> proto::MoveReport;
}
