//! openraft's network over tonic: one [`RaftClient`] on the peer's shared channel.
//!
//! Every call is bounded by openraft's `RPCOption::hard_ttl`. Transport failures map
//! to `Unreachable` (openraft backs off), timeouts to `Timeout`, malformed answers to
//! `Network`. Snapshots stream as 1 MiB chunks over a client-streaming RPC; the
//! chunk queue is bounded (4 chunks) and the producer awaits space (back-pressure).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferromq_proto::raft::v1 as pb;
use ferromq_proto::raft::v1::raft_client::RaftClient;
use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, OptionalSend};
use tonic::transport::Channel;

use super::{Member, Snapshot, SnapshotData, TypeConfig, Vote, codec};
use crate::NodeId;
use crate::peers::Peers;

/// Snapshot chunk size on the wire.
pub const CHUNK: usize = 1024 * 1024;

/// Creates per-target clients for openraft.
pub struct NetworkFactory {
    pub me: NodeId,
    pub peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Connection {
        Connection {
            me: self.me,
            target,
            peers: self.peers.clone(),
            client: self
                .peers
                .get(target, &node.addr)
                .map(RaftClient::new)
                .map_err(|e| e.to_string()),
        }
    }
}

/// A Raft client to one peer.
pub struct Connection {
    me: NodeId,
    target: NodeId,
    /// Looked up on every call: openraft keeps a connection across a change of the
    /// peer's address (member record updated after a restart elsewhere), the
    /// registry follows the membership.
    peers: Arc<Peers>,
    client: Result<RaftClient<Channel>, String>,
}

type RpcErr = RPCError<TypeConfig>;

fn unreachable(e: impl std::fmt::Display) -> RpcErr {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(e.to_string())))
}

fn network(e: impl std::fmt::Display) -> RpcErr {
    RPCError::Network(NetworkError::new(&AnyError::error(e.to_string())))
}

fn status_err(s: tonic::Status) -> RpcErr {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => unreachable(s),
        _ => network(s),
    }
}

impl Connection {
    fn client(&self) -> Result<RaftClient<Channel>, RpcErr> {
        if let Some(ch) = self.peers.cached(self.target) {
            return Ok(RaftClient::new(ch));
        }
        self.client.clone().map_err(unreachable)
    }

    fn timeout(&self, action: RPCTypes, ttl: Duration) -> RpcErr {
        RPCError::Timeout(Timeout {
            action,
            id: self.me,
            target: self.target,
            timeout: ttl,
        })
    }

    async fn call<T, F>(&self, action: RPCTypes, ttl: Duration, fut: F) -> Result<T, RpcErr>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(ttl, fut).await {
            Err(_) => Err(self.timeout(action, ttl)),
            Ok(Err(s)) => Err(status_err(s)),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for Connection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcErr> {
        let mut c = self.client()?;
        let req = codec::append_req_to_pb(&rpc);
        let resp = self
            .call(
                RPCTypes::AppendEntries,
                option.hard_ttl(),
                c.append_entries(req),
            )
            .await?;
        codec::append_resp_from_pb(resp).map_err(network)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        let mut c = self.client()?;
        let resp = self
            .call(
                RPCTypes::Vote,
                option.hard_ttl(),
                c.vote(codec::vote_req_to_pb(&rpc)),
            )
            .await?;
        codec::vote_resp_from_pb(&resp).map_err(network)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        let mut c = self.client()?;
        let resp = self
            .call(
                RPCTypes::Vote,
                option.hard_ttl(),
                c.pre_vote(codec::vote_req_to_pb(&rpc)),
            )
            .await?;
        codec::vote_resp_from_pb(&resp).map_err(network)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut c = self.client()?;
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
        let meta = codec::snapshot_meta_to_pb(&snapshot.meta);
        let data = snapshot.snapshot.clone();
        let producer = async move {
            let mut first = true;
            let mut off = 0;
            loop {
                let end = (off + CHUNK).min(data.len());
                let chunk = pb::SnapshotChunk {
                    vote: first.then(|| codec::vote_to_pb(&vote)),
                    meta: first.then(|| meta.clone()),
                    data: data[off..end].to_vec(),
                };
                first = false;
                if tx.send(chunk).await.is_err() {
                    break;
                }
                off = end;
                if off >= data.len() {
                    break;
                }
            }
        };
        tokio::spawn(producer);
        let stream = tokio_stream_from(rx);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = c.install_snapshot(stream) => match r {
                Ok(resp) => {
                    let vote = codec::req_vote(resp.into_inner().vote.as_ref()).map_err(|e| {
                        StreamingError::Network(NetworkError::new(&AnyError::error(e.to_string())))
                    })?;
                    Ok(SnapshotResponse::new(vote))
                }
                Err(s) => Err(StreamingError::from(status_err(s))),
            }
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcErr> {
        let mut c = self.client()?;
        let pbreq = pb::TransferLeaderRequest {
            from_leader: Some(codec::vote_to_pb(req.from_leader())),
            to_node_id: *req.to_node_id(),
            last_log_id: codec::opt_log_id_to_pb(req.last_log_id()),
        };
        let resp = self
            .call(
                RPCTypes::TransferLeader,
                option.hard_ttl(),
                c.transfer_leader(pbreq),
            )
            .await?;
        if resp.error.is_empty() {
            Ok(Ok(()))
        } else {
            Err(network(resp.error))
        }
    }
}

/// An mpsc receiver as a `Stream` (tonic's client-streaming input).
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
