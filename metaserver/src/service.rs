//! The gRPC `MetaService`: thin adapters from requests to calls on the
//! metaserver's node (namespace writes through Raft, linearizable reads)
//! and its owners (chunk servers, repair and GC counters).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use shardfs_proto::ChunkId;
use shardfs_proto::capability::Access;

use shardfs_proto::meta::v1 as pb;
use shardfs_proto::meta::v1::meta_service_server::MetaService;
use shardfs_proto::now_ms;
use shardfs_proto::security::{chunk_member, require_member};
use tonic::{Request, Response, Status};

use crate::chunks::ChunkManager;
use crate::convert::{entry_to_wire, id_from_wire};
use crate::error::MetaError;
use crate::metaserver::Metaserver;
use crate::namespace::{Inode, NsError};
use crate::node::MetaNode;
use crate::requests;
use crate::tokens::{Caller, Right, Role, TokenRecord, check_name, new_token};
use crate::types::{Command, Outcome};

/// Default and largest page of a listing.
const LIST_DEFAULT_LIMIT: usize = 1000;
const LIST_MAX_LIMIT: usize = 10_000;

pub struct MetaServiceImpl {
    node: MetaNode,
    chunks: Arc<ChunkManager>,
    metaserver: Metaserver,
}

impl MetaServiceImpl {
    pub fn new(metaserver: Metaserver) -> Self {
        Self {
            node: metaserver.node.clone(),
            chunks: metaserver.chunks.clone(),
            metaserver,
        }
    }

    /// The key of chunk server `id` for its register or heartbeat answer;
    /// empty (the server asks again with its next beat) while no key can
    /// be had.
    async fn capability_key_for(&self, id: u64) -> bytes::Bytes {
        match self.chunks.server_key(id).await {
            Ok(key) => key.to_wire(),
            Err(e) => {
                tracing::warn!("no capability key for chunk server {id} yet: {e}");
                bytes::Bytes::new()
            }
        }
    }

    /// Refuses a token's LocateChunks unless every id is a chunk of one of
    /// the files at `paths` (which the token may read, as checked): a
    /// chunk id alone locates nothing.
    fn check_chunks_of(
        &self,
        token: &str,
        ids: &[ChunkId],
        paths: &[String],
    ) -> Result<(), Status> {
        if ids.is_empty() {
            return Ok(());
        }
        if paths.is_empty() {
            return Err(Status::permission_denied(format!(
                "token {token} must name the files whose chunks it locates"
            )));
        }
        let stray = self.node.read_local(|state| {
            let mut theirs = HashSet::new();
            for path in paths {
                let Ok(path) = shardfs_proto::DfsPath::parse(path) else {
                    continue;
                };
                if let Ok(Inode::File(file)) = state.namespace.lookup(&path) {
                    theirs.extend(file.chunks.iter().map(|c| c.id));
                }
            }
            ids.iter().find(|id| !theirs.contains(*id)).copied()
        });
        match stray {
            None => Ok(()),
            Some(id) => {
                tracing::warn!(target: "shardfs::audit", token, chunk = %id, ?paths, "refused: locate a chunk outside the files named");
                Err(Status::permission_denied(format!(
                    "chunk {id} is not part of {} (a file may have changed since it was read; a chunk id alone grants nothing)",
                    paths.join(", ")
                )))
            }
        }
    }

    /// Refuses `request` unless its caller may `right` on `paths`.
    fn allow<T>(
        &self,
        request: &Request<T>,
        right: Right,
        paths: &[&str],
        what: &str,
    ) -> Result<Caller, Status> {
        let records = |name: &str| {
            self.node
                .read_local(|state| state.tokens.get(name).cloned())
        };
        self.metaserver
            .authority
            .check(records, request, right, paths, what)
    }
}

#[tonic::async_trait]
impl MetaService for MetaServiceImpl {
    async fn mkdir(
        &self,
        request: Request<pb::MkdirRequest>,
    ) -> Result<Response<pb::MkdirResponse>, Status> {
        let path = requests::path(&request.get_ref().path)?.to_string();
        self.allow(&request, Right::Write, &[&path], "mkdir")?;
        let command = requests::mkdir(&request.into_inner(), now_ms())?;
        let created = matches!(self.node.write(command).await?, Outcome::Created(true));
        Ok(Response::new(pb::MkdirResponse { created }))
    }

    async fn commit_file(
        &self,
        request: Request<pb::CommitFileRequest>,
    ) -> Result<Response<pb::CommitFileResponse>, Status> {
        let path = requests::path(&request.get_ref().path)?.to_string();
        self.allow(&request, Right::Write, &[&path], "commit")?;
        let request = request.into_inner();
        let now = now_ms();
        let commit = requests::commit(&request, now)?;
        let content_id = commit.file.content_id.to_vec().into();
        let outcome = self
            .chunks
            .commit_file(
                commit.path,
                commit.file,
                commit.if_absent,
                commit.request_id,
                now,
            )
            .await?;
        let replaced = matches!(outcome, Outcome::Replaced(true));
        Ok(Response::new(pb::CommitFileResponse {
            replaced,
            content_id,
        }))
    }

    async fn lookup(
        &self,
        request: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        let path = requests::path(&request.get_ref().path)?.to_string();
        self.allow(&request, Right::Read, &[&path], "lookup")?;
        let path = requests::path(&request.into_inner().path)?;
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
        let path = requests::path(&request.get_ref().path)?.to_string();
        self.allow(&request, Right::Read, &[&path], "list")?;
        let request = request.into_inner();
        let path = requests::path(&request.path)?;
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
        let paths = [
            requests::path(&request.get_ref().from)?.to_string(),
            requests::path(&request.get_ref().to)?.to_string(),
        ];
        self.allow(&request, Right::Write, &[&paths[0], &paths[1]], "rename")?;
        let command = requests::rename(&request.into_inner(), now_ms())?;
        self.node.write(command).await?;
        Ok(Response::new(pb::RenameResponse {}))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let path = requests::path(&request.get_ref().path)?.to_string();
        self.allow(&request, Right::Write, &[&path], "delete")?;
        let command = requests::delete(&request.into_inner(), now_ms())?;
        let files_deleted = match self.node.write(command).await? {
            Outcome::Deleted(files) => files,
            _ => 0,
        };
        Ok(Response::new(pb::DeleteResponse { files_deleted }))
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.allow(&request, Right::Read, &[], "cluster status")?;
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
                // Others' progress is known on the leader (matched log index).
                last_applied: if *id == status.self_id {
                    status.last_applied
                } else {
                    status.matched.get(id).copied().unwrap_or(0)
                },
                voter: *voter,
            })
            .collect();
        let (leader_id, leader_addr) = status.leader.clone().unwrap_or_default();
        let (servers, under_replicated) = self.chunks.chunk_server_view();
        let chunk_servers = servers
            .into_iter()
            .map(|v| pb::ChunkServerStatus {
                id: v.id,
                addr: v.info.addr,
                zone: v.info.zone,
                alive: v.alive,
                chunks: v.chunks,
                used_bytes: v.usage.map(|u| u.used_bytes).unwrap_or(0),
                capacity_bytes: v
                    .usage
                    .map(|u| u.capacity_bytes)
                    .unwrap_or(v.info.capacity_bytes),
                free_bytes: v.usage.map(|u| u.free_bytes).unwrap_or(0),
                scrub_passes: v.scrub.map(|s| s.passes).unwrap_or(0),
                scrub_bytes: v.scrub.map(|s| s.bytes).unwrap_or(0),
                scrub_corrupt: v.scrub.map(|s| s.corrupt).unwrap_or(0),
                scrub_pass_permille: v.scrub.map(|s| s.pass_permille).unwrap_or(0),
                draining: v.info.draining,
            })
            .collect();
        Ok(Response::new(pb::ClusterStatusResponse {
            leader_id,
            leader_addr,
            term: status.term,
            self_id: status.self_id,
            metaservers,
            last_applied: status.last_applied,
            chunk_servers,
            under_replicated,
            bad_replicas_reported: self.chunks.bad_replicas.reported.load(Ordering::Relaxed),
            bad_replicas_confirmed: self.chunks.bad_replicas.confirmed.load(Ordering::Relaxed),
            repair_copies: self
                .metaserver
                .repair
                .counters
                .copies
                .load(Ordering::Relaxed),
            repair_bytes: self
                .metaserver
                .repair
                .counters
                .copied_bytes
                .load(Ordering::Relaxed),
            repair_failures: self
                .metaserver
                .repair
                .counters
                .copy_failures
                .load(Ordering::Relaxed),
            repair_trimmed: self
                .metaserver
                .repair
                .counters
                .trimmed
                .load(Ordering::Relaxed),
            repair_in_flight: self.metaserver.repair.in_flight(),
            repair_examined: self
                .metaserver
                .repair
                .counters
                .examined
                .load(Ordering::Relaxed),
            repair_full_rounds: self
                .metaserver
                .repair
                .counters
                .full_rounds
                .load(Ordering::Relaxed),
            gc_collected: self.metaserver.gc.collected.load(Ordering::Relaxed),
            gc_pending: self.metaserver.gc.pending.load(Ordering::Relaxed),
        }))
    }

    async fn add_metaserver(
        &self,
        request: Request<pb::AddMetaserverRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.allow(&request, Right::Admin, &[], "add metaserver")?;
        let request = request.into_inner();
        requests::metaserver(&request)?;
        let (voters, learners) = self
            .node
            .add_metaserver(request.id, &request.addr, request.learner_only)
            .await?;
        Ok(Response::new(pb::MembershipResponse { voters, learners }))
    }

    async fn register_chunk_server(
        &self,
        request: Request<pb::RegisterChunkServerRequest>,
    ) -> Result<Response<pb::RegisterChunkServerResponse>, Status> {
        let id = request.get_ref().id;
        require_member(&request, &chunk_member(id), "RegisterChunkServer")?;
        let request = request.into_inner();
        let info = requests::chunk_server(&request)?;
        self.chunks.register_chunk_server(request.id, info).await?;
        Ok(Response::new(pb::RegisterChunkServerResponse {
            capability_key: self.capability_key_for(id).await,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let id = request.get_ref().id;
        require_member(&request, &chunk_member(id), "Heartbeat")?;
        let request = request.into_inner();
        let beat = requests::beat(&request)?;
        let known = self.chunks.heartbeat(beat).await?;
        Ok(Response::new(pb::HeartbeatResponse {
            reregister: !known,
            capability_key: self.capability_key_for(id).await,
        }))
    }

    async fn allocate_chunks(
        &self,
        request: Request<pb::AllocateChunksRequest>,
    ) -> Result<Response<pb::AllocateChunksResponse>, Status> {
        self.allow(&request, Right::Write, &[], "allocate chunks")?;
        let request = request.into_inner();
        let (chunks, replication) = requests::allocation(&request)?;
        let placements = self
            .chunks
            .allocate(&chunks, replication, &request.exclude)?;
        let ids: Vec<_> = placements.iter().map(|p| p.id).collect();
        let servers: Vec<Vec<_>> = placements
            .iter()
            .map(|p| p.targets.iter().map(|(server, _)| *server).collect())
            .collect();
        let grants = self.chunks.grant(Access::Write, &ids, &servers).await?;
        let placements = placements
            .into_iter()
            .zip(grants)
            .map(|(p, target_capabilities)| pb::ChunkPlacement {
                id: p.id.to_vec().into(),
                stored_at: p.stored_at,
                targets: p.targets.into_iter().map(|(_, addr)| addr).collect(),
                target_capabilities,
            })
            .collect();
        Ok(Response::new(pb::AllocateChunksResponse { placements }))
    }

    async fn locate_chunks(
        &self,
        request: Request<pb::LocateChunksRequest>,
    ) -> Result<Response<pb::LocateChunksResponse>, Status> {
        let ids = requests::locate(request.get_ref())?;
        let paths = request
            .get_ref()
            .paths
            .iter()
            .map(|p| requests::path(p).map(|p| p.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let path_refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let caller = self.allow(&request, Right::Read, &path_refs, "locate chunks")?;
        // An admin of the whole namespace may read every file anyway.
        if let Caller::Token { name, role, prefix } = &caller
            && !(*role == Role::Admin && prefix == "/")
        {
            self.check_chunks_of(name, &ids, &paths)?;
        }
        let located = self.chunks.locate(&ids)?;
        let servers: Vec<Vec<_>> = located
            .iter()
            .map(|holders| holders.iter().map(|(server, _)| *server).collect())
            .collect();
        let grants = self.chunks.grant(Access::Read, &ids, &servers).await?;
        let chunks = located
            .into_iter()
            .zip(grants)
            .zip(&ids)
            .map(|((holders, capabilities), id)| pb::ChunkLocations {
                id: id.to_vec().into(),
                addrs: holders.into_iter().map(|(_, addr)| addr).collect(),
                capabilities,
            })
            .collect();
        Ok(Response::new(pb::LocateChunksResponse { chunks }))
    }

    async fn report_bad_replica(
        &self,
        request: Request<pb::ReportBadReplicaRequest>,
    ) -> Result<Response<pb::ReportBadReplicaResponse>, Status> {
        self.allow(&request, Right::Read, &[], "report bad replica")?;
        let request = request.into_inner();
        let id = id_from_wire(&request.id)?;
        let confirmed = self
            .chunks
            .report_bad_replica(id, &request.addr, &request.reason)
            .await?;
        Ok(Response::new(pb::ReportBadReplicaResponse { confirmed }))
    }

    async fn drain_chunk_server(
        &self,
        request: Request<pb::DrainChunkServerRequest>,
    ) -> Result<Response<pb::DrainChunkServerResponse>, Status> {
        self.allow(&request, Right::Admin, &[], "drain chunk server")?;
        let request = request.into_inner();
        self.node.ensure_leader()?;
        self.node
            .write(Command::SetDraining {
                id: request.id,
                draining: !request.cancel,
            })
            .await?;
        Ok(Response::new(pb::DrainChunkServerResponse {}))
    }

    async fn remove_chunk_server(
        &self,
        request: Request<pb::RemoveChunkServerRequest>,
    ) -> Result<Response<pb::RemoveChunkServerResponse>, Status> {
        self.allow(&request, Right::Admin, &[], "remove chunk server")?;
        self.chunks
            .remove_chunk_server(request.into_inner().id)
            .await?;
        Ok(Response::new(pb::RemoveChunkServerResponse {}))
    }

    async fn remove_metaserver(
        &self,
        request: Request<pb::RemoveMetaserverRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.allow(&request, Right::Admin, &[], "remove metaserver")?;
        let (voters, learners) = self.node.remove_metaserver(request.into_inner().id).await?;
        Ok(Response::new(pb::MembershipResponse { voters, learners }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.allow(&request, Right::Admin, &[], "create token")?;
        let request = request.into_inner();
        let role = Role::parse(&request.role).map_err(Status::invalid_argument)?;
        let prefix = match request.prefix.as_str() {
            "" => "/".to_string(),
            prefix => requests::path(prefix)?.to_string(),
        };
        let (token, hash) = match request.secret_hash.len() {
            0 => new_token(&request.name).map_err(Status::invalid_argument)?,
            32 => {
                check_name(&request.name).map_err(Status::invalid_argument)?;
                let hash: [u8; 32] = request.secret_hash[..].try_into().expect("32 bytes");
                (String::new(), hash)
            }
            n => {
                return Err(Status::invalid_argument(format!(
                    "a token's secret hash is 32 bytes, not {n}"
                )));
            }
        };
        self.node.ensure_leader()?;
        self.node
            .write(Command::CreateToken {
                name: request.name,
                record: TokenRecord {
                    hash,
                    role,
                    prefix,
                    created_ms: now_ms(),
                },
            })
            .await?;
        Ok(Response::new(pb::CreateTokenResponse { token }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.allow(&request, Right::Admin, &[], "revoke token")?;
        let name = request.into_inner().name;
        self.node.write(Command::RevokeToken { name }).await?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.allow(&request, Right::Admin, &[], "list tokens")?;
        let tokens = self
            .node
            .read(|state| {
                state
                    .tokens
                    .iter()
                    .map(|(name, record)| pb::TokenInfo {
                        name: name.clone(),
                        role: record.role.name().to_string(),
                        prefix: record.prefix.clone(),
                        created_ms: record.created_ms,
                    })
                    .collect()
            })
            .await?;
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }
}
