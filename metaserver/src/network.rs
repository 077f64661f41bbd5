//! Raft transport over gRPC: [`Network`] dials peers (one cached channel per
//! peer) for openraft, and [`RaftServer`] receives their messages. Messages
//! travel as openraft's own serde (JSON) forms inside a `RaftMessage`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
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
use shardfs_proto::transport;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::types::{NodeId, TypeConfig};

/// Dials metaservers for openraft. Clones share the channel cache.
#[derive(Clone, Default)]
pub struct Network {
    /// One channel per peer, by id, replaced when the peer's address changes.
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
}

impl Network {
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().expect("channel cache");
        if let Some((cached_addr, channel)) = channels.get(&target)
            && cached_addr == addr
        {
            return Ok(channel.clone());
        }
        let channel = transport::lazy_channel(addr)?;
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
                    .max_decoding_message_size(crate::server::MAX_RAFT_MESSAGE_BYTES)
                    .max_encoding_message_size(crate::server::MAX_RAFT_MESSAGE_BYTES)
            })
            .map_err(|e| format!("bad address {:?} for metaserver {target}: {e}", node.addr));
        PeerClient { target, client }
    }
}

/// The connection to one peer.
pub struct PeerClient {
    target: NodeId,
    client: Result<RaftServiceClient<Channel>, String>,
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerClient {
    async fn exchange<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = match &self.client {
            Ok(client) => client.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::from(AnyError::error(e)))),
        };
        let message = RaftMessage {
            json: serde_json::to_vec(request)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?
                .into(),
        };
        let call = async move {
            match rpc {
                Rpc::AppendEntries => client.append_entries(message).await,
                Rpc::Vote => client.vote(message).await,
                Rpc::InstallSnapshot => client.install_snapshot(message).await,
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
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.json)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.exchange(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.exchange(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.exchange(Rpc::Vote, &rpc, &option).await
    }
}

/// Receives Raft messages from peers and hands them to the local node.
pub struct RaftServer {
    raft: Raft<TypeConfig>,
}

impl RaftServer {
    pub fn new(raft: Raft<TypeConfig>) -> Self {
        Self { raft }
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftMessage>) -> Result<T, Status> {
    serde_json::from_slice(&request.into_inner().json)
        .map_err(|e| Status::invalid_argument(format!("malformed raft message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    let json = serde_json::to_vec(value)
        .map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))?;
    Ok(Response::new(RaftMessage { json: json.into() }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        encode(&self.raft.append_entries(decode(request)?).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        encode(&self.raft.vote(decode(request)?).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        encode(&self.raft.install_snapshot(decode(request)?).await)
    }
}
