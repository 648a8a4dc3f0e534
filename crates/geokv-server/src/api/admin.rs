//! The `geokv.v1.Admin` service: operating the deployment from the client port, with a client's
//! credentials (the peer port serves only nodes). Each call is authorised (the `admin` grant;
//! read on the key for ExplainResidency) and then served as the node-to-node service serves it;
//! the backup calls are the Admin service's own (`ops/backup.rs`).

use geokv_proto::v1 as pb;
use pb::admin_server::Admin;
use pb::cluster_server::Cluster as ClusterRpc;
use tonic::{Request, Response, Status};

use crate::peer::service::ClusterService;
use crate::security::auth::Access;
use crate::security::gate::authorize;

pub struct AdminService {
    inner: ClusterService,
    node: std::sync::Arc<crate::Node>,
    backups: crate::ops::backup::Backups,
}

impl AdminService {
    pub fn new(cluster: std::sync::Arc<crate::Cluster>) -> Self {
        AdminService {
            node: cluster.node().clone(),
            backups: crate::ops::backup::Backups::new(cluster.clone()),
            inner: ClusterService::new(cluster),
        }
    }

    fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        authorize(req.extensions(), self.node.tls(), &[Access::Admin], &[], None).map(drop)
    }
}

/// The Admin service: the calls that need the admin grant are served as the peer service
/// serves them; ExplainResidency needs read on its key.
macro_rules! as_admin {
    ($($method:ident($req:ty) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl Admin for AdminService {
            type ApplyResidencyStream = <ClusterService as ClusterRpc>::ApplyResidencyStream;

            $(
                async fn $method(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                    self.admin(&req)?;
                    ClusterRpc::$method(&self.inner, req).await
                }
            )*

            async fn explain_residency(
                &self,
                req: Request<pb::ExplainResidencyRequest>,
            ) -> Result<Response<pb::ResidencyExplanation>, Status> {
                let key = req.get_ref().key.clone();
                authorize(req.extensions(), self.node.tls(), &[Access::Read], &[&key], None)?;
                ClusterRpc::explain_residency(&self.inner, req).await
            }

            async fn backup_begin(
                &self,
                req: Request<pb::BackupBeginRequest>,
            ) -> Result<Response<pb::BackupCheckpoint>, Status> {
                self.admin(&req)?;
                Ok(Response::new(self.backups.begin().await?))
            }

            async fn backup_read(
                &self,
                req: Request<pb::BackupReadRequest>,
            ) -> Result<Response<pb::BackupChunk>, Status> {
                self.admin(&req)?;
                Ok(Response::new(self.backups.read(req.into_inner()).await?))
            }

            async fn backup_end(
                &self,
                req: Request<pb::BackupEndRequest>,
            ) -> Result<Response<pb::BackupEndResponse>, Status> {
                self.admin(&req)?;
                self.backups.end(&req.get_ref().id).await?;
                Ok(Response::new(pb::BackupEndResponse {}))
            }
        }
    };
}

as_admin! {
    cluster_status(pb::ClusterStatusRequest) -> pb::ClusterStatusResponse;
    stats(pb::StatsRequest) -> pb::StatsResponse;
    replication_status(pb::ReplicationStatusRequest) -> pb::ReplicationStatusResponse;
    set_link(pb::SetLinkRequest) -> pb::SetLinkResponse;
    apply_residency(pb::ApplyResidencyRequest) -> Self::ApplyResidencyStream;
    leave(pb::LeaveRequest) -> pb::MoveReport;
    cleanup(pb::CleanupRequest) -> pb::MoveReport;
    run_anti_entropy(pb::RunAntiEntropyRequest) -> pb::StatsResponse;
    compact(pb::CompactRequest) -> pb::CompactResponse;
    inject_faults(pb::InjectFaultsRequest) -> pb::InjectFaultsResponse;
}
