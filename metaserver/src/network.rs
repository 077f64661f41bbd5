//! Raft transport over gRPC: [`Network`] dials peers (one cached channel per
//! peer) for openraft, and [`RaftServer`] receives their messages. Messages
//! travel as openraft's own serde forms, encoded by [`crate::codec`], inside
//! a `RaftMessage`. Every message a node sends passes its
//! [`crate::filter::Filters`] first (tests inject faults there).
//!
//! openraft gives an AppendEntries one heartbeat interval to complete, and
//! re-sends the same range after a timeout: a batch that a follower cannot
//! take in (decode, write, flush) within it would be re-sent forever and the
//! group would never commit again. So a batch is kept under
//! [`APPEND_BATCH_BYTES`]: a larger one is answered `PayloadTooLarge` with
//! the number of entries that fit, and openraft sends that many.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, Raft};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shardfs_proto::meta::v1::RaftMessage;
use shardfs_proto::meta::v1::raft_service_client::RaftServiceClient;
use shardfs_proto::meta::v1::raft_service_server::RaftService;
use shardfs_proto::security::{META_NAME, Security, ServerKind, require_member};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::codec;
use crate::filter::{Filters, RaftRpc, Verdict};
use crate::types::{NodeId, TypeConfig};

/// Largest Raft message accepted between metaservers. Batches of entries
/// stay under [`APPEND_BATCH_BYTES`] and snapshot pieces are 3 MiB;
/// the largest single entry, a commit of `MAX_CHUNKS_PER_FILE` chunks with
/// every replica confirmed, is about 9 MB. Anything larger is refused
/// before it is buffered.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 << 20;

/// Most bytes of entries in one AppendEntries (a single larger entry still
/// goes alone). About 25 ms of decoding in a debug build.
pub const APPEND_BATCH_BYTES: usize = 4 << 20;

/// How many of `sizes` (encoded entry sizes, in order) fit in `budget`
/// bytes; at least one.
pub fn entries_that_fit(sizes: impl IntoIterator<Item = usize>, budget: usize) -> usize {
    let mut total = 0usize;
    let mut count = 0usize;
    for size in sizes {
        total = total.saturating_add(size);
        if count > 0 && total > budget {
            break;
        }
        count += 1;
    }
    count.max(1)
}

/// Dials metaservers for openraft. Clones share the channel cache.
#[derive(Clone)]
pub struct Network {
    /// The node sending.
    from: NodeId,
    /// One channel per peer, by id, replaced when the peer's address changes.
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
    /// Faults to inject (none in production).
    filters: Filters,
    security: Security,
}

impl Network {
    /// The transport of node `from`, with `filters` deciding the fate of
    /// every message it sends, dialing with `security`.
    pub fn new(from: NodeId, filters: Filters, security: Security) -> Self {
        Self {
            from,
            channels: Arc::default(),
            filters,
            security,
        }
    }

    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().expect("channel cache");
        if let Some((cached_addr, channel)) = channels.get(&target)
            && cached_addr == addr
        {
            return Ok(channel.clone());
        }
        let channel = self.security.lazy_channel(addr, ServerKind::Meta)?;
        channels.insert(target, (addr.to_string(), channel.clone()));
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let client = self
            .channel(target, &node.addr)
            .map(|channel| {
                RaftServiceClient::new(channel)
                    .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            })
            .map_err(|e| format!("bad address {:?} for metaserver {target}: {e}", node.addr));
        PeerClient {
            from: self.from,
            target,
            client,
            filters: self.filters.clone(),
        }
    }
}

/// The connection to one peer.
pub struct PeerClient {
    from: NodeId,
    target: NodeId,
    client: Result<RaftServiceClient<Channel>, String>,
    filters: Filters,
}

impl PeerClient {
    /// Sends an already encoded request and decodes the answer.
    async fn exchange<Resp, E>(
        &mut self,
        rpc: RaftRpc,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = match &self.client {
            Ok(client) => client.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::from(AnyError::error(e)))),
        };
        match self.filters.verdict(self.from, self.target, rpc) {
            Verdict::Deliver => {}
            Verdict::Drop => {
                return Err(RPCError::Unreachable(Unreachable::from(AnyError::error(
                    format!("{rpc:?} to metaserver {} dropped by a filter", self.target),
                ))));
            }
            Verdict::Delay(delay) => tokio::time::sleep(delay).await,
        }
        let message = RaftMessage { body: body.into() };
        let call = async move {
            match rpc {
                RaftRpc::AppendEntries => client.append_entries(message).await,
                RaftRpc::Vote => client.vote(message).await,
                RaftRpc::InstallSnapshot => client.install_snapshot(message).await,
            }
        };
        let reply = match tokio::time::timeout(option.hard_ttl(), call).await {
            Err(_) => {
                return Err(RPCError::Network(NetworkError::from(AnyError::error(
                    format!(
                        "metaserver {} did not answer within {:?}",
                        self.target,
                        option.hard_ttl()
                    ),
                ))));
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
            Ok(Err(status)) => return Err(RPCError::Network(NetworkError::new(&status))),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&reply.body).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body = codec::encode(&rpc);
        // Sizes per entry only for a batch that is too big (rare): the
        // common case encodes once.
        if rpc.entries.len() > 1 && body.len() > APPEND_BATCH_BYTES {
            let sizes = rpc.entries.iter().map(codec::encoded_len);
            let fit = entries_that_fit(sizes, APPEND_BATCH_BYTES);
            if fit < rpc.entries.len() {
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(fit as u64),
                ));
            }
        }
        self.exchange(RaftRpc::AppendEntries, body, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.exchange(RaftRpc::InstallSnapshot, codec::encode(&rpc), &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.exchange(RaftRpc::Vote, codec::encode(&rpc), &option)
            .await
    }
}

/// Receives Raft messages from peers and hands them to the local node:
/// only from peers whose certificate names a metaserver.
pub struct RaftServer {
    raft: Raft<TypeConfig>,
}

impl RaftServer {
    pub fn new(raft: Raft<TypeConfig>) -> Self {
        Self { raft }
    }
}

/// The request's message. The error names what was wrong, never the bytes
/// (a decoder's message can quote its input).
fn decode<T: DeserializeOwned>(request: Request<RaftMessage>) -> Result<T, Status> {
    let body = request.into_inner().body;
    codec::decode(&body).map_err(|e| {
        let kind = match e {
            codec::DecodeError::Empty => "empty",
            codec::DecodeError::Binary(_) => "not a valid binary message",
            codec::DecodeError::Json(_) => "not valid JSON",
            codec::DecodeError::Invalid(_) => "invalid",
        };
        Status::invalid_argument(format!(
            "malformed raft message ({} bytes): {kind}",
            body.len()
        ))
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage {
        body: codec::encode(value).into(),
    }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        require_member(&request, META_NAME, "Raft AppendEntries")?;
        encode(&self.raft.append_entries(decode(request)?).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        require_member(&request, META_NAME, "Raft Vote")?;
        encode(&self.raft.vote(decode(request)?).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        require_member(&request, META_NAME, "Raft InstallSnapshot")?;
        encode(&self.raft.install_snapshot(decode(request)?).await)
    }
}
