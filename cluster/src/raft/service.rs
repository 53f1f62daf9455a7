//! The server side of `raft.proto`: Raft protocol RPCs go straight to openraft;
//! management RPCs go to the node's logic in [`crate::node`].
//!
//! Forwarding: `Join` and `Remove` received by a follower are forwarded once to the
//! leader (a joining node does not know the leader); `Propose` and `ReadIndex` are
//! only served by the leader and answer `Unavailable` elsewhere (callers in this
//! crate always send them to the leader they know and retry on a change).

use std::sync::Arc;

use ferromq_proto::raft::v1 as pb;
use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use tonic::{Request, Response, Status, Streaming};

use super::{Snapshot, codec};
use crate::node::Inner;

/// Largest snapshot accepted over the wire (bounded buffering on the receiver).
const MAX_SNAPSHOT: usize = 1 << 30;

pub struct RaftService {
    pub inner: Arc<Inner>,
}

fn bad(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let req = codec::append_req_from_pb(req.into_inner()).map_err(bad)?;
        let resp = self
            .inner
            .raft
            .append_entries(req)
            .await
            .map_err(internal)?;
        // A leader reached us: `is_ready` counts the leader as seen.
        *self.inner.leader_seen.lock() = Some(std::time::Instant::now());
        Ok(Response::new(codec::append_resp_to_pb(&resp)))
    }

    async fn vote(
        &self,
        req: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let req = codec::vote_req_from_pb(req.get_ref()).map_err(bad)?;
        let resp = self.inner.raft.vote(req).await.map_err(internal)?;
        Ok(Response::new(codec::vote_resp_to_pb(&resp)))
    }

    async fn pre_vote(
        &self,
        req: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let req = codec::vote_req_from_pb(req.get_ref()).map_err(bad)?;
        let resp = self.inner.raft.pre_vote(req).await.map_err(internal)?;
        Ok(Response::new(codec::vote_resp_to_pb(&resp)))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let mut stream = req.into_inner();
        let mut vote = None;
        let mut meta = None;
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if vote.is_none() {
                vote = Some(codec::req_vote(chunk.vote.as_ref()).map_err(bad)?);
                let m = chunk
                    .meta
                    .as_ref()
                    .ok_or_else(|| bad("first snapshot chunk without meta"))?;
                meta = Some(codec::snapshot_meta_from_pb(m).map_err(bad)?);
            }
            if data.len() + chunk.data.len() > MAX_SNAPSHOT {
                return Err(Status::resource_exhausted("snapshot too large"));
            }
            data.extend_from_slice(&chunk.data);
        }
        let (Some(vote), Some(meta)) = (vote, meta) else {
            return Err(bad("empty snapshot stream"));
        };
        let snapshot = Snapshot {
            meta,
            snapshot: bytes::Bytes::from(data),
        };
        let resp = self
            .inner
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::SnapshotResponse {
            vote: Some(codec::vote_to_pb(&resp.vote)),
        }))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let r = req.into_inner();
        let from = codec::req_vote(r.from_leader.as_ref()).map_err(bad)?;
        let req = openraft::raft::TransferLeaderRequest::new(
            from,
            r.to_node_id,
            codec::opt_log_id_from_pb(r.last_log_id.as_ref()),
        );
        let resp = self
            .inner
            .raft
            .handle_transfer_leader(req)
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::TransferLeaderResponse {
            error: resp.err().map(|e| e.to_string()).unwrap_or_default(),
        }))
    }

    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        self.inner
            .handle_join(req.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        self.inner
            .handle_remove(req.into_inner().node_id)
            .await
            .map(Response::new)
    }

    async fn propose(
        &self,
        req: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        let cmd = req
            .into_inner()
            .command
            .ok_or_else(|| bad("propose without command"))?;
        let (index, applied) = self.inner.propose_local(cmd).await?;
        Ok(Response::new(pb::ProposeResponse {
            index,
            prev_owner: applied.prev_owner,
        }))
    }

    async fn read_index(
        &self,
        _req: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let index = self.inner.read_index_local().await?;
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        // Authoritative (metrics lag right after `initialize`): a bootstrapping peer
        // must never see "uninitialised" once this node initialised.
        let initialized = self.inner.raft.is_initialized().await.map_err(internal)?
            || m.membership_config
                .membership()
                .voter_ids()
                .next()
                .is_some();
        Ok(Response::new(pb::StatusResponse {
            node_id: self.inner.id,
            initialized,
            addr: self.inner.advertise.clone(),
            leader: m.current_leader,
        }))
    }
}
