//! The gRPC `MetaService`: thin adapters from requests to [`MetaNode`]
//! calls. Writes go through Raft; reads are linearizable (read index).

use shardfs_proto::DfsPath;
use shardfs_proto::meta::v1 as pb;
use shardfs_proto::meta::v1::meta_service_server::MetaService;
use tonic::{Request, Response, Status};

use crate::convert::{entry_to_wire, file_from_wire};
use crate::error::MetaError;
use crate::namespace::NsError;
use crate::node::MetaNode;
use crate::types::{Command, Outcome};

/// Default and largest page of a listing.
const LIST_DEFAULT_LIMIT: usize = 1000;
const LIST_MAX_LIMIT: usize = 10_000;

pub struct MetaServiceImpl {
    node: MetaNode,
}

impl MetaServiceImpl {
    pub fn new(node: MetaNode) -> Self {
        Self { node }
    }
}

fn path(text: &str) -> Result<DfsPath, MetaError> {
    Ok(DfsPath::parse(text)?)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tonic::async_trait]
impl MetaService for MetaServiceImpl {
    async fn mkdir(
        &self,
        request: Request<pb::MkdirRequest>,
    ) -> Result<Response<pb::MkdirResponse>, Status> {
        let request = request.into_inner();
        let command = Command::Mkdir {
            path: path(&request.path)?.to_string(),
            parents: request.parents,
            mtime_ms: now_ms(),
        };
        let created = matches!(self.node.write(command).await?, Outcome::Created(true));
        Ok(Response::new(pb::MkdirResponse { created }))
    }

    async fn commit_file(
        &self,
        request: Request<pb::CommitFileRequest>,
    ) -> Result<Response<pb::CommitFileResponse>, Status> {
        let request = request.into_inner();
        let file = request
            .file
            .ok_or_else(|| MetaError::InvalidArgument("commit without a file".into()))?;
        let file = file_from_wire(&file, now_ms())?;
        let content_id = file.content_id.to_vec().into();
        let command = Command::Commit {
            path: path(&request.path)?.to_string(),
            file,
            if_absent: request.if_absent,
        };
        let replaced = matches!(self.node.write(command).await?, Outcome::Replaced(Some(_)));
        Ok(Response::new(pb::CommitFileResponse {
            replaced,
            content_id,
        }))
    }

    async fn lookup(
        &self,
        request: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        let path = path(&request.into_inner().path)?;
        let entry = self
            .node
            .read(|state| {
                let inode = state.namespace.lookup(&path)?;
                Ok::<_, NsError>(entry_to_wire(path.name().unwrap_or("/"), inode))
            })
            .await?
            .map_err(MetaError::from)?;
        Ok(Response::new(pb::LookupResponse { entry: Some(entry) }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let request = request.into_inner();
        let path = path(&request.path)?;
        let limit = match request.limit as usize {
            0 => LIST_DEFAULT_LIMIT,
            n => n.min(LIST_MAX_LIMIT),
        };
        let after = (!request.after.is_empty()).then_some(request.after.as_str());
        let (entries, more) = self
            .node
            .read(|state| {
                let (entries, more) = state.namespace.list(&path, after, limit)?;
                let entries = entries
                    .iter()
                    .map(|e| entry_to_wire(&e.name, &e.inode))
                    .collect();
                Ok::<_, NsError>((entries, more))
            })
            .await?
            .map_err(MetaError::from)?;
        Ok(Response::new(pb::ListResponse { entries, more }))
    }

    async fn rename(
        &self,
        request: Request<pb::RenameRequest>,
    ) -> Result<Response<pb::RenameResponse>, Status> {
        let request = request.into_inner();
        let command = Command::Rename {
            from: path(&request.from)?.to_string(),
            to: path(&request.to)?.to_string(),
        };
        self.node.write(command).await?;
        Ok(Response::new(pb::RenameResponse {}))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let request = request.into_inner();
        let command = Command::Delete {
            path: path(&request.path)?.to_string(),
            recursive: request.recursive,
        };
        let files_deleted = match self.node.write(command).await? {
            Outcome::Deleted(files) => files.len() as u64,
            _ => 0,
        };
        Ok(Response::new(pb::DeleteResponse { files_deleted }))
    }

    async fn cluster_status(
        &self,
        _: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let status = self.node.status();
        let metaservers = status
            .members
            .iter()
            .map(|(id, addr, voter)| pb::MetaserverStatus {
                id: *id,
                addr: addr.clone(),
                role: if *id == status.self_id {
                    status.role.to_string()
                } else if status.leader.as_ref().is_some_and(|(l, _)| l == id) {
                    "leader".to_string()
                } else if *voter {
                    "follower".to_string()
                } else {
                    "learner".to_string()
                },
                last_applied: if *id == status.self_id {
                    status.last_applied
                } else {
                    0
                },
                voter: *voter,
            })
            .collect();
        let (leader_id, leader_addr) = status.leader.clone().unwrap_or_default();
        Ok(Response::new(pb::ClusterStatusResponse {
            leader_id,
            leader_addr,
            term: status.term,
            self_id: status.self_id,
            metaservers,
            last_applied: status.last_applied,
        }))
    }

    async fn add_metaserver(
        &self,
        request: Request<pb::AddMetaserverRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let request = request.into_inner();
        if request.id == 0 || request.addr.is_empty() {
            return Err(MetaError::InvalidArgument(
                "AddMetaserver needs a non-zero id and an address".into(),
            )
            .into());
        }
        let (voters, learners) = self
            .node
            .add_metaserver(request.id, &request.addr, request.learner_only)
            .await?;
        Ok(Response::new(pb::MembershipResponse { voters, learners }))
    }

    async fn remove_metaserver(
        &self,
        request: Request<pb::RemoveMetaserverRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let (voters, learners) = self.node.remove_metaserver(request.into_inner().id).await?;
        Ok(Response::new(pb::MembershipResponse { voters, learners }))
    }
}
