//! How the CLI's operator commands reach a node: the Admin service at the client endpoint
//! (`--endpoint`, with the client's certificate or token; the admin grant decides), or, with
//! `--peer`, the node-to-node service at a peer address (which only a node certificate may call
//! when TLS is on). Both answer the same calls with the same messages.

use anyhow::Context;
use geokv_client::proto;
use proto::admin_client::AdminClient;
use proto::cluster_client::ClusterClient;

use crate::client_cmd::{endpoint, security};

pub enum AdminConn {
    Client(AdminClient<geokv_client::grpc::Transport>),
    Peer(ClusterClient<tonic::transport::Channel>),
}

impl AdminConn {
    /// The peer service at `peer` if given, else the Admin service at the global `--endpoint`.
    pub async fn open(peer: Option<&str>) -> anyhow::Result<AdminConn> {
        match peer {
            Some(peer) => Ok(AdminConn::Peer(crate::client_cmd::peer_client(peer).await?)),
            None => {
                let ep = endpoint();
                let c = geokv_client::grpc::admin(&ep, &security())
                    .await
                    .with_context(|| format!("cannot connect to {ep}"))?;
                Ok(AdminConn::Client(c))
            }
        }
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
