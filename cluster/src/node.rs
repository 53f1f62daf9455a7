//! The running node: the shared [`Inner`] behind every `Cluster` clone and the gRPC
//! service, with the leader routing every write and read index goes through.
//!
//! Writes (`propose`) and read indexes go to the leader this node currently knows:
//! locally when it is the leader, else by RPC over the leader's shared channel. On a
//! leader change, an unreachable leader or no leader, the call retries with a short
//! backoff until its deadline; every replicated command is idempotent (set semantics,
//! last-writer-wins registers), so a retry after an unknown outcome is harmless.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferromq_proto::raft::v1 as pb;
use ferromq_proto::raft::v1::raft_client::RaftClient;
use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::transport::Channel;

use crate::NodeId;
use crate::barrier::Barrier;
use crate::error::ClusterError;
use crate::local::LocalNode;
use crate::metrics::Metrics;
use crate::options::NodeMeta;
use crate::peers::Peers;
use crate::proposer::{Pending, Refs};
use crate::raft::state_machine::SmShared;
use crate::raft::{Applied, Cmd, Member, Raft};

/// Deadline of one proposal (including leader changes on the way).
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one membership change (joint consensus, two commits).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one RPC to the leader.
const RPC_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a leader-only operation goes.
pub enum Target {
    Local,
    Remote(RaftClient<Channel>),
}

/// State shared by every `Cluster` clone, the gRPC service and background tasks.
pub struct Inner {
    pub id: NodeId,
    pub advertise: String,
    pub bound: SocketAddr,
    pub raft: Raft,
    pub sm: Arc<SmShared>,
    pub peers: Arc<Peers>,
    pub voters: usize,
    pub meta: NodeMeta,
    pub leader_lost_timeout: Duration,
    /// See `ClusterOptions::remove_departed_after`.
    pub remove_departed_after: Option<Duration>,
    // PEER PLANE: the data plane delivers forwarded batches through it.
    #[allow(dead_code)]
    pub local: Arc<dyn LocalNode>,
    pub refs: Mutex<Refs>,
    pub pending: Pending,
    pub barrier: Barrier,
    /// When a leader was last known (for `is_ready`).
    pub leader_seen: Mutex<Option<Instant>>,
    pub metrics: Metrics,
    pub stop: CancellationToken,
    pub tasks: Mutex<Vec<JoinHandle<()>>>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

impl Inner {
    /// The member record of `id` in the current membership.
    pub fn member(&self, id: NodeId) -> Option<Member> {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    }

    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// The leader to send a leader-only operation to.
    pub fn leader_target(&self) -> Result<Target, ClusterError> {
        let leader = self.current_leader().ok_or(ClusterError::NoLeader)?;
        if leader == self.id {
            return Ok(Target::Local);
        }
        let member = self.member(leader).ok_or(ClusterError::NoLeader)?;
        let ch = self.peers.get(leader, &member.addr)?;
        Ok(Target::Remote(RaftClient::new(ch)))
    }

    /// Proposes `cmd` through the leader; returns its log index and apply result
    /// (not yet necessarily applied on this node).
    pub async fn propose(&self, cmd: pb::Command) -> Result<(u64, Applied), ClusterError> {
        let started = Instant::now();
        let deadline = started + PROPOSE_TIMEOUT;
        let mut backoff = Duration::from_millis(20);
        loop {
            let last;
            if self.stop.is_cancelled() {
                return Err(ClusterError::NotMember);
            }
            match self.leader_target() {
                Ok(Target::Local) => match self.write_local(cmd.clone()).await {
                    Ok(r) => {
                        self.metrics
                            .proposal_latency
                            .observe(started.elapsed().as_secs_f64());
                        return Ok(r);
                    }
                    Err(e) => last = e,
                },
                Ok(Target::Remote(mut client)) => {
                    let req = pb::ProposeRequest {
                        command: Some(cmd.clone()),
                    };
                    match tokio::time::timeout(RPC_TIMEOUT, client.propose(req)).await {
                        Ok(Ok(r)) => {
                            let r = r.into_inner();
                            self.metrics
                                .proposal_latency
                                .observe(started.elapsed().as_secs_f64());
                            return Ok((
                                r.index,
                                Applied {
                                    prev_owner: r.prev_owner,
                                },
                            ));
                        }
                        Ok(Err(s)) => last = s.into(),
                        Err(_) => last = ClusterError::Timeout,
                    }
                }
                Err(e) => last = e,
            }
            if Instant::now() + backoff > deadline {
                return Err(last);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
    }

    /// `Propose` RPC: only the leader writes.
    pub async fn propose_local(&self, cmd: pb::Command) -> Result<(u64, Applied), Status> {
        self.write_local(cmd).await.map_err(unavailable)
    }

    /// `client_write` on this node, bounded: an entry appended by a leader that is
    /// deposed (or removed itself) meanwhile may never get an answer.
    async fn write_local(&self, cmd: pb::Command) -> Result<(u64, Applied), ClusterError> {
        match tokio::time::timeout(RPC_TIMEOUT, self.raft.client_write(Cmd(cmd))).await {
            Ok(Ok(r)) => Ok((r.log_id.index, r.data)),
            Ok(Err(e)) => Err(ClusterError::Rpc(e.to_string())),
            Err(_) => Err(ClusterError::Timeout),
        }
    }

    /// `ReadIndex` RPC: the leader confirms its leadership with a quorum and returns
    /// the index reads must wait for.
    pub async fn read_index_local(&self) -> Result<u64, Status> {
        let call = self.raft.ensure_linearizable(ReadPolicy::ReadIndex);
        match tokio::time::timeout(RPC_TIMEOUT, call).await {
            Ok(r) => Ok(r.map_err(unavailable)?.index()),
            Err(_) => Err(Status::deadline_exceeded("read index timed out")),
        }
    }

    /// A read index from the leader (one round, with retries until the deadline).
    pub async fn read_index(&self) -> Result<u64, ClusterError> {
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        let mut backoff = Duration::from_millis(20);
        loop {
            let last = match self.leader_target() {
                Ok(Target::Local) => match self.read_index_local().await {
                    Ok(i) => return Ok(i),
                    Err(s) => ClusterError::from(s),
                },
                Ok(Target::Remote(mut c)) => {
                    match tokio::time::timeout(RPC_TIMEOUT, c.read_index(pb::ReadIndexRequest {}))
                        .await
                    {
                        Ok(Ok(r)) => return Ok(r.into_inner().index),
                        Ok(Err(s)) => s.into(),
                        Err(_) => ClusterError::Timeout,
                    }
                }
                Err(e) => e,
            };
            if Instant::now() + backoff > deadline || self.stop.is_cancelled() {
                return Err(last);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
    }

    /// Waits until this node applied `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<(), ClusterError> {
        let mut rx = self.sm.applied_index.subscribe();
        match tokio::time::timeout(PROPOSE_TIMEOUT, rx.wait_for(|i| *i >= index)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ClusterError::NotMember),
            Err(_) => Err(ClusterError::Timeout),
        }
    }

    // ---- membership (leader side) ----

    /// `Join` RPC: the leader adds the node as a learner (blocking until it caught
    /// up), then promotes learners while the voter count is below the target.
    /// Followers forward once to the leader.
    pub async fn handle_join(&self, req: pb::JoinRequest) -> Result<pb::JoinResponse, Status> {
        match self.leader_target().map_err(unavailable)? {
            Target::Remote(mut c) => {
                match tokio::time::timeout(Duration::from_secs(30), c.join(req)).await {
                    Ok(r) => Ok(r?.into_inner()),
                    Err(_) => Err(Status::deadline_exceeded(
                        "join forwarded to the leader timed out",
                    )),
                }
            }
            Target::Local => self.join_local(req).await,
        }
    }

    async fn join_local(&self, req: pb::JoinRequest) -> Result<pb::JoinResponse, Status> {
        if req.node_id == 0 || req.addr.is_empty() {
            return Err(Status::invalid_argument(
                "join needs a node id and an address",
            ));
        }
        let member = Member {
            addr: req.addr.clone(),
            mqtt_addr: req.mqtt_addr,
            http_addr: req.http_addr,
        };
        // add_learner fails with InProgress until this leader's first log is committed
        // (reference/stack.md 1.5): wait for that, then retry briefly on InProgress.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let current = self.member(req.node_id);
            if current.as_ref() == Some(&member) {
                break;
            }
            let res = if current.is_some() {
                // A member whose addresses changed (restart elsewhere): same node id,
                // same log, so replacing its record is safe (AddNodes never replaces).
                let nodes = [(req.node_id, member.clone())].into_iter().collect();
                let set = openraft::ChangeMembers::SetNodes(nodes);
                tokio::time::timeout(MEMBERSHIP_TIMEOUT, self.raft.change_membership(set, false))
                    .await
            } else {
                // Blocks until the learner caught up; bounded (the joiner retries).
                let add = self.raft.add_learner(req.node_id, member.clone(), true);
                tokio::time::timeout(Duration::from_secs(25), add).await
            };
            let res = match res {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("membership change timed out".to_string()),
            };
            match res {
                Ok(_) => break,
                Err(e) => {
                    if Instant::now() > deadline {
                        return Err(unavailable(e));
                    }
                    tracing::debug!(error = %e, node = req.node_id, "add_learner retry");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        self.peers
            .get(req.node_id, &req.addr)
            .map_err(unavailable)?;
        self.promote().await;
        let voter = self.raft.voter_ids().any(|v| v == req.node_id);
        tracing::info!(node = req.node_id, addr = %req.addr, voter, "node joined");
        Ok(pb::JoinResponse { voter })
    }

    /// Leader only: promotes learners to voters while voters < target.
    pub async fn promote(&self) {
        if self.current_leader() != Some(self.id) {
            return;
        }
        let voters: Vec<NodeId> = self.raft.voter_ids().collect();
        if voters.len() >= self.voters {
            return;
        }
        let mut learners: Vec<NodeId> = self.raft.learner_ids().collect();
        learners.sort_unstable();
        let add: std::collections::BTreeSet<NodeId> = learners
            .into_iter()
            .take(self.voters - voters.len())
            .collect();
        if add.is_empty() {
            return;
        }
        let change = self
            .raft
            .change_membership(openraft::ChangeMembers::AddVoterIds(add.clone()), false);
        match tokio::time::timeout(MEMBERSHIP_TIMEOUT, change).await {
            Ok(Ok(_)) => tracing::info!(?add, "promoted learners to voters"),
            Ok(Err(e)) => tracing::debug!(error = %e, "promotion deferred"),
            Err(_) => tracing::debug!("promotion timed out"),
        }
    }

    /// `Remove` RPC; followers forward once to the leader.
    pub async fn handle_remove(&self, node: NodeId) -> Result<pb::RemoveResponse, Status> {
        match self.leader_target().map_err(unavailable)? {
            Target::Remote(mut c) => {
                let call = c.remove(pb::RemoveRequest { node_id: node });
                match tokio::time::timeout(Duration::from_secs(30), call).await {
                    Ok(r) => Ok(r?.into_inner()),
                    Err(_) => Err(Status::deadline_exceeded(
                        "remove forwarded to the leader timed out",
                    )),
                }
            }
            Target::Local => {
                self.remove_local(node).await.map_err(unavailable)?;
                Ok(pb::RemoveResponse {})
            }
        }
    }

    async fn remove_local(&self, node: NodeId) -> Result<(), ClusterError> {
        let is_voter = self.raft.voter_ids().any(|v| v == node);
        let is_learner = self.raft.learner_ids().any(|v| v == node);
        let change = if is_voter {
            Some(openraft::ChangeMembers::RemoveVoters([node].into()))
        } else if is_learner {
            Some(openraft::ChangeMembers::RemoveNodes([node].into()))
        } else {
            None
        };
        if let Some(change) = change {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let call = self.raft.change_membership(change.clone(), false);
                let res = match tokio::time::timeout(MEMBERSHIP_TIMEOUT, call).await {
                    Ok(r) => r.map_err(|e| ClusterError::Rpc(e.to_string())),
                    Err(_) => Err(ClusterError::Timeout),
                };
                match res {
                    Ok(_) => break,
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!(error = %e, node, "remove retry");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        tracing::debug!(node, "membership without the node committed");
        // Its routes, shared memberships and sessions go with it.
        let forget = pb::Command {
            version: crate::raft::state::VERSION,
            kind: Some(pb::command::Kind::NodeForget(pb::NodeForget { node })),
        };
        self.propose(forget).await?;
        tracing::debug!(node, "node forgotten");
        self.peers.remove(node);
        self.promote().await;
        tracing::info!(node, "node removed");
        Ok(())
    }

    /// Initialises a single-node cluster with self.
    pub async fn initialize_self(&self) -> Result<(), ClusterError> {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            self.id,
            Member {
                addr: self.advertise.clone(),
                mqtt_addr: self.meta.mqtt_addr.clone(),
                http_addr: self.meta.http_addr.clone(),
            },
        );
        match self.raft.initialize(nodes).await {
            Ok(()) => {
                tracing::info!(id = self.id, "initialised a new single-node cluster");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "initialize");
                Ok(())
            }
        }
    }

    pub fn is_member(&self) -> bool {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&self.id)
            .is_some()
    }

    /// One round of `Join` through the seeds; true once accepted.
    pub async fn join_round(&self, seeds: &[String]) -> bool {
        let req = pb::JoinRequest {
            node_id: self.id,
            addr: self.advertise.clone(),
            mqtt_addr: self.meta.mqtt_addr.clone(),
            http_addr: self.meta.http_addr.clone(),
        };
        for seed in seeds {
            let Ok(ch) = self.peers.dial(seed) else {
                continue;
            };
            let mut c = RaftClient::new(ch);
            match tokio::time::timeout(Duration::from_secs(30), c.join(req.clone())).await {
                Ok(Ok(r)) => {
                    tracing::info!(seed, voter = r.get_ref().voter, "joined the cluster");
                    return true;
                }
                Ok(Err(s)) => tracing::debug!(seed, status = %s, "join refused"),
                Err(_) => tracing::debug!(seed, "join timed out"),
            }
        }
        false
    }

    /// Sends our current addresses to the leader (through any member we know).
    pub async fn rejoin(&self) {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.current_leader == Some(self.id) {
            let req = pb::JoinRequest {
                node_id: self.id,
                addr: self.advertise.clone(),
                mqtt_addr: self.meta.mqtt_addr.clone(),
                http_addr: self.meta.http_addr.clone(),
            };
            if let Err(e) = self.join_local(req).await {
                tracing::debug!(error = %e, "member record update deferred");
            }
            return;
        }
        let mut addrs: Vec<String> = Vec::new();
        if let Some(l) = m.current_leader
            && let Some(n) = m.membership_config.membership().get_node(&l)
        {
            addrs.push(n.addr.clone());
        }
        addrs.extend(
            m.membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self.id)
                .map(|(_, n)| n.addr.clone()),
        );
        self.join_round(&addrs).await;
    }

    /// Status of every seed that answers: (addr, initialized).
    pub async fn probe_seeds(&self, seeds: &[String]) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for seed in seeds {
            let Ok(ch) = self.peers.dial(seed) else {
                continue;
            };
            let mut c = RaftClient::new(ch);
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_secs(1), c.status(pb::StatusRequest {})).await
            {
                let r = r.into_inner();
                if r.node_id != self.id {
                    out.push((r.addr, r.initialized));
                }
            }
        }
        out
    }
}
