//! openraft's network: Raft calls (append entries, vote, install snapshot)
//! as authenticated HTTP requests to the other members (see [`crate::net`]),
//! answered by the handlers in [`crate::http`].

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::Serialize;

use crate::{net, ClusterError, NodeId, TypeConfig};

/// Makes a client per member for openraft.
pub(crate) struct Net {
    pub(crate) caller: net::Caller,
}

/// Raft calls to one member.
pub(crate) struct NetClient {
    caller: net::Caller,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Net {
    type Network = NetClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> NetClient {
        NetClient {
            caller: self.caller.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

impl NetClient {
    async fn rpc<Req: Serialize, Resp: serde::de::DeserializeOwned, E>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let r: Result<Resp, RaftError<NodeId, E>> = self
            .caller
            .post(&self.addr, path, req)
            .await
            .map_err(|e| match e {
            ClusterError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
            other => RPCError::Network(NetworkError::new(&other)),
        })?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for NetClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc("/raft/append", &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc("/raft/snapshot", &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc("/raft/vote", &rpc).await
    }
}
