//! A client for the metaserver group: finds the leader, follows redirects,
//! and keeps one cached channel per metaserver.
//!
//! Writes and linearizable reads must reach the leader. A follower answers
//! UNAVAILABLE naming the leader in the `shardfs-leader` metadata; the
//! client switches to it and retries. When no metaserver answers, or none
//! knows a leader (an election is running), it tries the others in turn
//! until its deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::meta::v1 as pb;
use crate::meta::v1::meta_service_client::MetaServiceClient;
use crate::security::{Security, ServerKind};

/// One replica of a chunk as the metaserver handed it out: where it is,
/// and the capability that chunk server asks for (empty when none came).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub addr: String,
    pub capability: bytes::Bytes,
}

impl Replica {
    /// Addresses with the capabilities listed beside them (a list shorter
    /// than the addresses, as an old metaserver sends, leaves them empty).
    pub fn pair(addrs: Vec<String>, capabilities: Vec<bytes::Bytes>) -> Vec<Self> {
        let mut capabilities = capabilities.into_iter();
        addrs
            .into_iter()
            .map(|addr| Self {
                addr,
                capability: capabilities.next().unwrap_or_default(),
            })
            .collect()
    }
}

/// The response metadata key naming the leader's address.
pub const LEADER_METADATA: &str = "shardfs-leader";
/// How long a call keeps looking for a leader before it gives up.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(15);

/// Puts the caller's token, if any, on every call.
#[derive(Clone, Debug)]
pub struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

/// The metadata key of a caller's token.
pub const AUTHORIZATION: &str = "authorization";

/// A generated client over one metaserver's channel, sending the token.
pub type MetaRpc =
    MetaServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
pub struct MetaClient {
    inner: Arc<Inner>,
}

struct Inner {
    addrs: Vec<String>,
    security: Security,
    bearer: Bearer,
    channels: Mutex<HashMap<String, Channel>>,
    /// Where the last call succeeded: tried first.
    leader: Mutex<Option<String>>,
    deadline: Duration,
    /// How long one metaserver may take to answer one attempt (None: a
    /// third of the deadline, 1-10 s).
    attempt: Option<Duration>,
}

/// True when a call failed because its connection broke (the metaserver
/// died mid-call), not because the metaserver answered with an error.
/// Such calls are retried elsewhere: reads and allocations are harmless to
/// repeat, and mkdir, commit, rename and delete carry a request id, so the
/// metaservers answer a retry whose first attempt was applied with that
/// attempt's answer. Operator calls (drain, remove) are idempotent.
///
/// The code does not tell: a connection closed mid-call arrives as UNKNOWN,
/// INTERNAL or CANCELLED depending on where it broke. What tells is the
/// cause: an answer from a metaserver carries none, a broken transport
/// carries its I/O, h2 or hyper error.
fn lost_connection(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.downcast_ref::<std::io::Error>().is_some()
            || err.downcast_ref::<h2::Error>().is_some()
            || err.downcast_ref::<hyper::Error>().is_some()
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// A fresh id for one call that changes the namespace, kept by all its
/// retries so the metaserver group applies the call once (a retried rename
/// whose first attempt was applied gets that attempt's answer, not "not
/// found"). 128 bits from the process's random hasher keys, the clock and a
/// counter: unique without coordination.
pub fn request_id() -> bytes::Bytes {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = blake3::Hasher::new();
    let keyed = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.update(&keyed.finish().to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&CALLS.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.update(&now.as_nanos().to_le_bytes());
    bytes::Bytes::copy_from_slice(&hasher.finalize().as_bytes()[..16])
}

impl MetaClient {
    /// A client for the metaservers at `addrs` (host:port each), dialed
    /// with `security`.
    pub fn new(addrs: &[String], security: &Security) -> Result<Self, Status> {
        if addrs.is_empty() {
            return Err(Status::invalid_argument("no metaserver addresses given"));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                addrs: addrs.to_vec(),
                security: security.clone(),
                bearer: Bearer(None),
                channels: Mutex::new(HashMap::new()),
                leader: Mutex::new(None),
                deadline: DEFAULT_DEADLINE,
                attempt: None,
            }),
        })
    }

    /// The same client sending `token` (sfs1.NAME.SECRET) with every call.
    pub fn with_token(&self, token: &str) -> Result<Self, Status> {
        let value = format!("Bearer {}", token.trim()).parse().map_err(|_| {
            Status::invalid_argument("the token holds characters a token cannot have")
        })?;
        let mut client = self.with_timing(self.inner.deadline, self.inner.attempt);
        Arc::get_mut(&mut client.inner)
            .expect("a fresh client")
            .bearer = Bearer(Some(value));
        Ok(client)
    }

    /// The same client with another deadline for finding a leader.
    pub fn with_deadline(&self, deadline: Duration) -> Self {
        self.with_timing(deadline, self.inner.attempt)
    }

    /// The same client giving each metaserver up to `attempt` to answer a
    /// call before trying another (for calls known to take long, like the
    /// largest commits in a debug build).
    pub fn with_attempt_timeout(&self, attempt: Duration) -> Self {
        self.with_timing(self.inner.deadline, Some(attempt))
    }

    fn with_timing(&self, deadline: Duration, attempt: Option<Duration>) -> Self {
        Self {
            inner: Arc::new(Inner {
                addrs: self.inner.addrs.clone(),
                security: self.inner.security.clone(),
                bearer: self.inner.bearer.clone(),
                channels: Mutex::new(self.inner.channels.lock().unwrap().clone()),
                leader: Mutex::new(self.inner.leader.lock().unwrap().clone()),
                deadline,
                attempt,
            }),
        }
    }

    /// A client for one metaserver, without redirects.
    pub fn direct(&self, addr: &str) -> Result<MetaRpc, Status> {
        let mut channels = self.inner.channels.lock().unwrap();
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let channel = self
                    .inner
                    .security
                    .lazy_channel(addr, ServerKind::Meta)
                    .map_err(|e| {
                        Status::invalid_argument(format!("bad metaserver address {addr:?}: {e}"))
                    })?;
                channels.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        Ok(
            MetaServiceClient::with_interceptor(channel, self.inner.bearer.clone())
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
    }

    /// Runs `call` against the leader, following redirects and trying other
    /// metaservers until one answers or the deadline passes.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(MetaRpc) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut next = 0usize;
        let mut target = self.inner.leader.lock().unwrap().clone();
        let mut last_error: Option<Status>;
        loop {
            let addr = match target.take() {
                Some(addr) => addr,
                None => {
                    let addr = self.inner.addrs[next % self.inner.addrs.len()].clone();
                    next += 1;
                    addr
                }
            };
            // One metaserver may hang (cut off by a partition): give each
            // attempt a share of the deadline, then try the others.
            let attempt = self.inner.attempt.unwrap_or_else(|| {
                (self.inner.deadline / 3).clamp(Duration::from_secs(1), Duration::from_secs(10))
            });
            let answer = match tokio::time::timeout(attempt, call(self.direct(&addr)?)).await {
                Ok(answer) => answer,
                Err(_) => Err(Status::unavailable(format!(
                    "metaserver {addr} did not answer within {attempt:?}"
                ))),
            };
            match answer {
                Ok(response) => {
                    *self.inner.leader.lock().unwrap() = Some(addr);
                    return Ok(response.into_inner());
                }
                Err(status) if status.code() == Code::Unavailable || lost_connection(&status) => {
                    let leader = status
                        .metadata()
                        .get(LEADER_METADATA)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    *self.inner.leader.lock().unwrap() = None;
                    last_error = Some(status);
                    if let Some(leader) = leader
                        && !leader.is_empty()
                        && leader != addr
                    {
                        target = Some(leader);
                        continue;
                    }
                }
                Err(status) => return Err(status),
            }
            if started.elapsed() > self.inner.deadline {
                let detail = last_error
                    .map(|s| s.message().to_string())
                    .unwrap_or_default();
                return Err(Status::unavailable(format!(
                    "no metaserver leader reachable at {} within {:?}: {detail}",
                    self.inner.addrs.join(","),
                    self.inner.deadline
                )));
            }
            if next.is_multiple_of(self.inner.addrs.len()) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<bool, Status> {
        let request = pb::MkdirRequest {
            path: path.to_string(),
            parents,
            request_id: request_id(),
        };
        let response = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.mkdir(request).await }
            })
            .await?;
        Ok(response.created)
    }

    pub async fn commit(
        &self,
        path: &str,
        file: pb::FileInfo,
        if_absent: bool,
    ) -> Result<pb::CommitFileResponse, Status> {
        let request = pb::CommitFileRequest {
            path: path.to_string(),
            file: Some(file),
            if_absent,
            request_id: request_id(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.commit_file(request).await }
        })
        .await
    }

    pub async fn lookup(&self, path: &str) -> Result<pb::Entry, Status> {
        let request = pb::LookupRequest {
            path: path.to_string(),
        };
        let response = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.lookup(request).await }
            })
            .await?;
        response
            .entry
            .ok_or_else(|| Status::internal("lookup answered without an entry"))
    }

    /// One page of a directory listing.
    pub async fn list_page(
        &self,
        path: &str,
        after: &str,
        limit: u32,
    ) -> Result<pb::ListResponse, Status> {
        let request = pb::ListRequest {
            path: path.to_string(),
            after: after.to_string(),
            limit,
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.list(request).await }
        })
        .await
    }

    /// A whole directory listing, page by page.
    pub async fn list(&self, path: &str) -> Result<Vec<pb::Entry>, Status> {
        let mut all: Vec<pb::Entry> = Vec::new();
        loop {
            let after = all.last().map(|e| e.name.clone()).unwrap_or_default();
            let page = self.list_page(path, &after, 0).await?;
            all.extend(page.entries);
            if !page.more {
                return Ok(all);
            }
        }
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<(), Status> {
        let request = pb::RenameRequest {
            from: from.to_string(),
            to: to.to_string(),
            request_id: request_id(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.rename(request).await }
        })
        .await?;
        Ok(())
    }

    /// Deletes a file or directory; returns how many files went.
    pub async fn delete(&self, path: &str, recursive: bool) -> Result<u64, Status> {
        let request = pb::DeleteRequest {
            path: path.to_string(),
            recursive,
            request_id: request_id(),
        };
        let response = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.delete(request).await }
            })
            .await?;
        Ok(response.files_deleted)
    }

    /// The group's status as the leader sees it.
    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusResponse, Status> {
        self.call(|mut c| async move {
            let status = c.cluster_status(pb::ClusterStatusRequest {}).await?;
            // Only a leader's view is authoritative: redirect otherwise.
            let inner = status.get_ref();
            if inner.leader_id != inner.self_id {
                let mut redirect = Status::unavailable(format!(
                    "metaserver {} is not the leader{}",
                    inner.self_id,
                    if inner.leader_addr.is_empty() {
                        "; no leader is known yet".to_string()
                    } else {
                        format!("; the leader is at {}", inner.leader_addr)
                    }
                ));
                if !inner.leader_addr.is_empty()
                    && let Ok(value) = inner.leader_addr.parse()
                {
                    redirect.metadata_mut().insert(LEADER_METADATA, value);
                }
                return Err(redirect);
            }
            Ok(status)
        })
        .await
    }

    /// Where to store `chunks` (id, length) so each ends up on
    /// `replication` live chunk servers, leaving out the servers at `exclude`.
    pub async fn allocate(
        &self,
        chunks: &[(crate::ChunkId, u64)],
        replication: u32,
        exclude: &[String],
    ) -> Result<Vec<pb::ChunkPlacement>, Status> {
        let request = pb::AllocateChunksRequest {
            chunks: chunks
                .iter()
                .map(|(id, length)| pb::ChunkToPlace {
                    id: id.to_vec().into(),
                    length: *length,
                })
                .collect(),
            replication,
            exclude: exclude.to_vec(),
        };
        let response = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.allocate_chunks(request).await }
            })
            .await?;
        Ok(response.placements)
    }

    /// The live chunk servers holding each of `ids`, in order, each with a
    /// read capability. `paths` are the files the chunks belong to (a
    /// caller with a token must name them).
    pub async fn locate(
        &self,
        ids: &[crate::ChunkId],
        paths: &[String],
    ) -> Result<Vec<Vec<Replica>>, Status> {
        let request = pb::LocateChunksRequest {
            ids: ids.iter().map(|id| id.to_vec().into()).collect(),
            paths: paths.to_vec(),
        };
        let response = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.locate_chunks(request).await }
            })
            .await?;
        if response.chunks.len() != ids.len() {
            return Err(Status::internal(format!(
                "LocateChunks answered for {} of {} chunks",
                response.chunks.len(),
                ids.len()
            )));
        }
        Ok(response
            .chunks
            .into_iter()
            .map(|c| Replica::pair(c.addrs, c.capabilities))
            .collect())
    }

    /// Tells the leader that the chunk server at `addr` served bytes that
    /// do not match `id`. Returns whether that server confirmed it.
    pub async fn report_bad_replica(
        &self,
        id: crate::ChunkId,
        addr: &str,
        reason: &str,
    ) -> Result<bool, Status> {
        let request = pb::ReportBadReplicaRequest {
            id: id.to_vec().into(),
            addr: addr.to_string(),
            reason: reason.to_string(),
        };
        let response = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.report_bad_replica(request).await }
            })
            .await?;
        Ok(response.confirmed)
    }

    /// Starts (or with `cancel` stops) draining chunk server `id`.
    pub async fn drain_chunk_server(&self, id: u64, cancel: bool) -> Result<(), Status> {
        let request = pb::DrainChunkServerRequest { id, cancel };
        self.call(|mut c| async move { c.drain_chunk_server(request).await })
            .await?;
        Ok(())
    }

    /// A new token: its text (shown once).
    pub async fn create_token(
        &self,
        name: &str,
        role: &str,
        prefix: &str,
    ) -> Result<String, Status> {
        // The secret is made here and only its hash is sent: it never
        // crosses the network, and a retry after a lost answer creates
        // the same token (the metaserver accepts an identical record).
        let (token, hash) = crate::token::new_token(name).map_err(Status::invalid_argument)?;
        let request = pb::CreateTokenRequest {
            name: name.to_string(),
            role: role.to_string(),
            prefix: prefix.to_string(),
            secret_hash: hash.to_vec().into(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.create_token(request).await }
        })
        .await?;
        Ok(token)
    }

    pub async fn revoke_token(&self, name: &str) -> Result<(), Status> {
        let request = pb::RevokeTokenRequest {
            name: name.to_string(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.revoke_token(request).await }
        })
        .await?;
        Ok(())
    }

    pub async fn list_tokens(&self) -> Result<Vec<pb::TokenInfo>, Status> {
        let response = self
            .call(|mut c| async move { c.list_tokens(pb::ListTokensRequest {}).await })
            .await?;
        Ok(response.tokens)
    }

    /// Forgets chunk server `id` (refused while that would lose a replica).
    pub async fn remove_chunk_server(&self, id: u64) -> Result<(), Status> {
        let request = pb::RemoveChunkServerRequest { id };
        self.call(|mut c| async move { c.remove_chunk_server(request).await })
            .await?;
        Ok(())
    }

    pub async fn add_metaserver(
        &self,
        id: u64,
        addr: &str,
        learner_only: bool,
    ) -> Result<pb::MembershipResponse, Status> {
        let request = pb::AddMetaserverRequest {
            id,
            addr: addr.to_string(),
            learner_only,
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.add_metaserver(request).await }
        })
        .await
    }

    pub async fn remove_metaserver(&self, id: u64) -> Result<pb::MembershipResponse, Status> {
        self.call(|mut c| async move {
            c.remove_metaserver(pb::RemoveMetaserverRequest { id })
                .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call whose stream was cancelled under it (the metaserver died)
    /// arrives as CANCELLED with the h2 error as its cause: retried. The
    /// same code answered by a metaserver carries no cause: not retried.
    #[test]
    fn a_broken_transport_counts_as_lost_whatever_the_code() {
        let broken = Status::from_error(Box::new(h2::Error::from(h2::Reason::CANCEL)));
        assert_eq!(broken.code(), Code::Cancelled);
        assert!(lost_connection(&broken));
        assert!(!lost_connection(&Status::cancelled(
            "cancelled by the server"
        )));
        assert!(!lost_connection(&Status::not_found("/x")));
    }

    #[test]
    fn request_ids_differ() {
        let ids: std::collections::BTreeSet<_> = (0..1000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.len() == 16));
    }
}
