//! [`Cluster`]: start-up (storage, Raft, gRPC server, bootstrap or join) and the
//! public API the broker uses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferromq_proto::raft::v1 as pb;
use ferromq_proto::raft::v1::command::Kind;
use openraft::async_runtime::{Instant as _, WatchReceiver};
use openraft::{Config, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::NodeId;
use crate::barrier::Barrier;
use crate::error::ClusterError;
use crate::local::{Forward, LocalNode};
use crate::metrics::Metrics;
use crate::node::{Inner, now_ms};
use crate::options::{Bootstrap, ClusterOptions};
use crate::peer::{ForwardError, PeerError, PeerOptions, PeerPlane};
use crate::peers::Peers;
use crate::proposer::{self, Key, Pending, Refs};
use crate::raft::Raft;
use crate::raft::log_store::{LogStore, META_TREE};
use crate::raft::network::NetworkFactory;
use crate::raft::service::RaftService;
use crate::raft::state::{RouteMatch, VERSION};
use crate::raft::state_machine::StateMachine;
use crate::status::{ClusterStatus, MemberStatus};

/// How long `start` waits for the bootstrap / join before returning (the join keeps
/// going in the background; `is_ready()` tells when the node is a member).
const START_JOIN_WAIT: Duration = Duration::from_secs(5);

/// Consecutive quiet seed probes before `Bootstrap::Auto` initialises.
const AUTO_ROUNDS: u32 = 3;

/// A handle to this node's cluster membership; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
    /// The data plane: forwarded publishes, session handover, connect announcements.
    plane: PeerPlane,
}

fn storage(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Storage(e.to_string())
}

fn cmd(kind: Kind) -> pb::Command {
    pb::Command {
        version: VERSION,
        kind: Some(kind),
    }
}

/// This node's id. With Raft state: the id persisted in `raft_meta/node_id`. With an
/// empty store: always a fresh random id (below 2^53, so JSON and metrics carry it
/// exactly), persisted before anything else is written: an id is never reused with
/// an empty log (reference/stack.md 1.5), even if a previous attempt to join crashed
/// before storing anything.
fn node_id(db: &sled::Db, fresh: bool) -> Result<NodeId, ClusterError> {
    let meta = db.open_tree(META_TREE).map_err(storage)?;
    if !fresh {
        let v = meta
            .get(b"node_id")
            .map_err(storage)?
            .ok_or_else(|| storage("Raft state without node_id"))?;
        let raw: [u8; 8] = v
            .as_ref()
            .try_into()
            .map_err(|_| storage("corrupt node_id"))?;
        return Ok(u64::from_be_bytes(raw));
    }
    let id = rand::thread_rng().gen_range(1..(1u64 << 53));
    meta.insert(b"node_id", &id.to_be_bytes())
        .map_err(storage)?;
    meta.flush().map_err(storage)?;
    Ok(id)
}

impl Cluster {
    /// Opens the Raft store in `opts.db`, starts the gRPC server on `opts.listen`
    /// and joins or bootstraps (see [`Bootstrap`]); a node with Raft state restarts.
    pub async fn start(
        opts: ClusterOptions,
        local: Arc<dyn LocalNode>,
    ) -> Result<Cluster, ClusterError> {
        let log_store = LogStore::open(&opts.db).map_err(storage)?;
        let fresh = log_store.is_empty().map_err(storage)?;
        let id = node_id(&opts.db, fresh)?;
        let sm_dir = opts.data_dir.join("cluster");
        if fresh {
            // A snapshot left over from an earlier life of this data dir (sled wiped)
            // belongs to another node id: never start a fresh node from it.
            StateMachine::discard(&sm_dir).map_err(storage)?;
        }
        let sm = StateMachine::open(&sm_dir, local.clone()).map_err(storage)?;
        let sm_shared = sm.shared.clone();

        let (server_tls, client_tls) = match &opts.tls {
            Some(t) => {
                let (s, c) = crate::tls::configs(t)?;
                (Some(s), Some(c))
            }
            None => (None, None),
        };
        let peers = Arc::new(Peers::new(client_tls));

        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|e| ClusterError::Config(format!("bind {}: {e}", opts.listen)))?;
        let bound = listener
            .local_addr()
            .map_err(|e| ClusterError::Config(e.to_string()))?;
        let advertise = opts.advertise.clone().unwrap_or_else(|| bound.to_string());

        let t = &opts.raft;
        let config = Config {
            cluster_name: "ferromq".into(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_min_ms,
            election_timeout_max: t.election_max_ms,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_logs),
            max_in_snapshot_log_to_keep: t.keep_logs,
            // A node cut off (or restarted at a new address) must not depose a healthy
            // leader by bumping terms: elections need a successful pre-vote first.
            enable_pre_vote: Some(true),
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| ClusterError::Config(e.to_string()))?,
        );
        let network = NetworkFactory {
            me: id,
            peers: peers.clone(),
        };
        let raft: Raft = openraft::Raft::new(id, config, network, log_store, sm)
            .await
            .map_err(|e| ClusterError::Storage(e.to_string()))?;

        let inner = Arc::new(Inner {
            id,
            advertise,
            bound,
            raft,
            sm: sm_shared,
            peers,
            voters: opts.voters.max(1),
            meta: opts.meta.clone(),
            leader_lost_timeout: opts.leader_lost_timeout,
            remove_departed_after: opts.remove_departed_after,
            local,
            refs: Mutex::new(Refs::default()),
            pending: Pending::default(),
            barrier: Barrier::default(),
            leader_seen: Mutex::new(None),
            metrics: Metrics::new(),
            stop: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        });

        // gRPC server.
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = server_tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| ClusterError::Config(format!("cluster TLS: {e}")))?;
        }
        let plane = PeerPlane::new(
            id,
            inner.local.clone(),
            PeerOptions {
                forward_queue: opts.forward_queue.max(1),
                ..PeerOptions::default()
            },
        );
        inner.peers.attach_plane(plane.clone());
        // Both planes share the listener (and its mTLS).
        let router = builder
            .add_service(pb::raft_server::RaftServer::new(RaftService {
                inner: inner.clone(),
            }))
            .add_service(plane.service());
        let incoming = tokio_stream_tcp(listener);
        let stop = inner.stop.clone();
        let server = tokio::spawn(async move {
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "cluster gRPC server failed");
            }
        });
        inner.tasks.lock().push(server);
        inner
            .tasks
            .lock()
            .push(tokio::spawn(proposer::run(inner.clone())));
        inner.tasks.lock().push(tokio::spawn(watch(inner.clone())));

        let cluster = Cluster {
            inner: inner.clone(),
            plane,
        };
        if fresh {
            let join = tokio::spawn(bootstrap(inner.clone(), opts.bootstrap, opts.seeds.clone()));
            match tokio::time::timeout(START_JOIN_WAIT, join).await {
                Ok(_) => {}
                Err(_) => tracing::warn!("still joining the cluster in the background"),
            }
        } else {
            tracing::info!(id, "restarting with existing Raft state");
        }
        Ok(cluster)
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.inner.bound
    }

    // ---- routes ----

    /// A local session subscribed to `filter` (non-shared). `persistent`: the session
    /// outlives its connection; a route held only by sessions that do not is
    /// replicated as transient, and publishers elsewhere are acknowledged without
    /// waiting for this node (docs/ARCHITECTURE.md, "Acknowledgements"). The caller
    /// passes the same `persistent` to the matching [`Cluster::route_remove`].
    pub fn route_add(&self, filter: &str, persistent: bool) {
        let mut refs = self.inner.refs.lock();
        let n = refs.routes.entry(filter.to_owned()).or_default();
        n.all += 1;
        n.persistent += u32::from(persistent);
        if n.all == 1 || (persistent && n.persistent == 1) {
            let transient = n.transient();
            self.propose_route(filter, transient);
        }
    }

    pub fn route_remove(&self, filter: &str, persistent: bool) {
        let mut refs = self.inner.refs.lock();
        let Some(n) = refs.routes.get_mut(filter) else {
            return;
        };
        n.all = n.all.saturating_sub(1);
        if persistent {
            n.persistent = n.persistent.saturating_sub(1);
        }
        if n.all == 0 {
            refs.routes.remove(filter);
            self.inner.pending.set(
                Key::Route(filter.to_owned()),
                Kind::RouteRemove(pb::RouteRemove {
                    node: self.inner.id,
                    filter: filter.to_owned(),
                }),
            );
        } else if persistent && n.persistent == 0 {
            self.propose_route(filter, true);
        }
    }

    fn propose_route(&self, filter: &str, transient: bool) {
        self.inner.pending.set(
            Key::Route(filter.to_owned()),
            Kind::RouteAdd(pb::RouteAdd {
                node: self.inner.id,
                filter: filter.to_owned(),
                transient,
            }),
        );
    }

    pub fn shared_add(&self, group: &str, filter: &str) {
        let mut refs = self.inner.refs.lock();
        let n = refs
            .shared
            .entry((group.to_owned(), filter.to_owned()))
            .or_insert(0);
        *n += 1;
        if *n == 1 {
            self.inner.pending.set(
                Key::Shared(group.to_owned(), filter.to_owned()),
                Kind::SharedAdd(pb::SharedAdd {
                    node: self.inner.id,
                    group: group.to_owned(),
                    filter: filter.to_owned(),
                }),
            );
        }
    }

    pub fn shared_remove(&self, group: &str, filter: &str) {
        let mut refs = self.inner.refs.lock();
        let key = (group.to_owned(), filter.to_owned());
        let Some(n) = refs.shared.get_mut(&key) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            refs.shared.remove(&key);
            self.inner.pending.set(
                Key::Shared(group.to_owned(), filter.to_owned()),
                Kind::SharedRemove(pb::SharedRemove {
                    node: self.inner.id,
                    group: group.to_owned(),
                    filter: filter.to_owned(),
                }),
            );
        }
    }

    /// Drops this node's replicated routes and shared memberships whose local count
    /// is 0 (and re-proposes local ones missing from the replicated state, or whose
    /// transient flag differs).
    pub fn routes_reconcile(&self) {
        let me = self.inner.id;
        let (routes, shared) = {
            let s = self.inner.sm.state.read();
            (s.routes_of(me), s.shared_of(me))
        };
        let refs = self.inner.refs.lock();
        for f in routes.keys() {
            if !refs.routes.contains_key(f) {
                self.inner.pending.set(
                    Key::Route(f.clone()),
                    Kind::RouteRemove(pb::RouteRemove {
                        node: me,
                        filter: f.clone(),
                    }),
                );
            }
        }
        for (f, n) in &refs.routes {
            if routes.get(f) != Some(&n.transient()) {
                self.propose_route(f, n.transient());
            }
        }
        for (g, f) in &shared {
            if !refs.shared.contains_key(&(g.clone(), f.clone())) {
                self.inner.pending.set(
                    Key::Shared(g.clone(), f.clone()),
                    Kind::SharedRemove(pb::SharedRemove {
                        node: me,
                        group: g.clone(),
                        filter: f.clone(),
                    }),
                );
            }
        }
        for (g, f) in refs.shared.keys() {
            if !shared.contains(&(g.clone(), f.clone())) {
                self.inner.pending.set(
                    Key::Shared(g.clone(), f.clone()),
                    Kind::SharedAdd(pb::SharedAdd {
                        node: me,
                        group: g.clone(),
                        filter: f.clone(),
                    }),
                );
            }
        }
    }

    /// Other nodes with routes matching `topic`, one entry per node.
    pub fn remote_routes(&self, topic: &str, out: &mut Vec<RouteMatch>) {
        self.inner
            .sm
            .state
            .read()
            .remote_routes(self.inner.id, topic, out);
    }

    /// Whether this node's applied state shows a persistent (not transient) route of
    /// `node` for exactly `filter`: publishers here wait for `node`'s acknowledgement.
    pub fn has_persistent_route(&self, node: NodeId, filter: &str) -> bool {
        self.inner
            .sm
            .state
            .read()
            .has_persistent_route(node, filter)
    }

    pub fn remote_shared(&self, topic: &str, out: &mut Vec<(String, String, Vec<NodeId>)>) {
        self.inner
            .sm
            .state
            .read()
            .remote_shared(self.inner.id, topic, out);
    }

    // ---- retained, barrier, sessions ----

    pub async fn retained_set(
        &self,
        topic: &str,
        message: Option<Bytes>,
        expires_at_ms: u64,
    ) -> Result<(), ClusterError> {
        let kind = match message {
            Some(m) => Kind::RetainedSet(pb::RetainedSet {
                topic: topic.to_owned(),
                message: m.to_vec(),
                expires_at_ms,
            }),
            None => Kind::RetainedClear(pb::RetainedClear {
                topic: topic.to_owned(),
                if_expired_by_ms: 0,
            }),
        };
        let (index, _) = self.inner.propose(cmd(kind)).await?;
        self.inner.wait_applied(index).await
    }

    /// The replicated retained message of `topic` as applied on this node (for
    /// tests and diagnostics; the broker keeps its own index via `retained_applied`).
    pub fn retained_get(&self, topic: &str) -> Option<Bytes> {
        self.inner
            .sm
            .state
            .read()
            .retained_get(topic)
            .map(|v| v.message.clone())
    }

    pub async fn read_barrier(&self) -> Result<(), ClusterError> {
        let index = self.inner.barrier.read_index(&self.inner).await?;
        self.inner.wait_applied(index).await
    }

    pub async fn session_claim(
        &self,
        client_id: &str,
        expiry_secs: u32,
    ) -> Result<Option<NodeId>, ClusterError> {
        self.inner
            .pending
            .cancel(&Key::Release(client_id.to_owned()));
        let kind = Kind::SessionClaim(pb::SessionClaim {
            client_id: client_id.to_owned(),
            node: self.inner.id,
            expiry_secs,
            at_ms: now_ms(),
        });
        let (index, applied) = self.inner.propose(cmd(kind)).await?;
        self.inner.wait_applied(index).await?;
        Ok(applied.prev_owner)
    }

    pub fn session_release(&self, client_id: &str) {
        self.inner.pending.set(
            Key::Release(client_id.to_owned()),
            Kind::SessionRelease(pb::SessionRelease {
                client_id: client_id.to_owned(),
                node: self.inner.id,
            }),
        );
    }

    pub fn session_owner(&self, client_id: &str) -> Option<NodeId> {
        self.inner.sm.state.read().session_owner(client_id)
    }

    // ---- operations ----

    pub fn status(&self) -> ClusterStatus {
        let inner = &self.inner;
        let m = inner.raft.metrics().borrow_watched().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let heartbeat_fresh = Duration::from_millis(inner.raft.config().election_timeout_max * 2);
        let state = inner.sm.state.read();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let meta = state.node_meta(*id);
                let reachable = if *id == inner.id {
                    true
                } else if let Some(hb) = &m.heartbeat {
                    hb.get(id)
                        .and_then(|t| t.as_ref())
                        .is_some_and(|t| t.elapsed() < heartbeat_fresh)
                } else {
                    m.current_leader == Some(*id)
                };
                MemberStatus {
                    id: *id,
                    addr: node.addr.clone(),
                    mqtt_addr: meta
                        .map(|x| x.mqtt_addr.clone())
                        .unwrap_or_else(|| node.mqtt_addr.clone()),
                    http_addr: meta
                        .map(|x| x.http_addr.clone())
                        .unwrap_or_else(|| node.http_addr.clone()),
                    role: if voters.contains(id) {
                        "voter"
                    } else {
                        "learner"
                    },
                    reachable,
                }
            })
            .collect();
        ClusterStatus {
            node_id: inner.id,
            role,
            leader: m.current_leader,
            term: m.current_term,
            commit: m.local_committed.map(|l| l.index).unwrap_or(0),
            applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            members,
        }
    }

    /// Member, a leader known within `leader_lost_timeout`, applied caught up with
    /// the commit index known here.
    pub fn is_ready(&self) -> bool {
        let inner = &self.inner;
        if !inner.is_member() {
            return false;
        }
        let fresh = inner
            .leader_seen
            .lock()
            .is_some_and(|t| t.elapsed() < inner.leader_lost_timeout);
        let m = inner.raft.metrics().borrow_watched().clone();
        // The data plane has a channel to every other member (forwarding, handover
        // and connect announcements reach them all).
        let members = m.membership_config.membership().nodes().count();
        let linked = inner.peers.ids().len() + 1 >= members;
        fresh && linked && m.last_applied.map(|l| l.index) >= m.local_committed.map(|l| l.index)
    }

    /// Asks the leader to remove this node; a leader first hands leadership over, so
    /// the removal (and the cleanup of its routes) is driven by a node that stays.
    /// Call `shutdown()` afterwards.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        if self.inner.current_leader() == Some(self.inner.id)
            && let Err(e) = self.transfer_leadership().await
        {
            tracing::warn!(error = %e, "leadership transfer before leaving failed");
        }
        self.remove(self.inner.id).await
    }

    pub async fn remove(&self, node: NodeId) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.inner.handle_remove(node).await {
                Ok(_) => return Ok(()),
                Err(s) if Instant::now() < deadline => {
                    tracing::debug!(status = %s, node, "remove retry");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(s) => return Err(s.into()),
            }
        }
    }

    /// If this node is the leader, hand leadership to the most up-to-date voter and
    /// wait (up to 5 s) until another node leads.
    pub async fn transfer_leadership(&self) -> Result<(), ClusterError> {
        let inner = &self.inner;
        if inner.current_leader() != Some(inner.id) {
            return Ok(());
        }
        let m = inner.raft.metrics().borrow_watched().clone();
        let target = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != inner.id)
            .max_by_key(|v| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(v).cloned().flatten())
                    .map(|l| l.index)
            });
        let Some(to) = target else { return Ok(()) };
        inner
            .raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| ClusterError::Rpc(e.to_string()))?;
        let r = inner
            .raft
            .wait(Some(Duration::from_secs(5)))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != Some(inner.id),
                "leader moved",
            )
            .await;
        r.map(|_| ()).map_err(|_| ClusterError::Timeout)
    }

    pub fn register_metrics(&self, registry: &prometheus::Registry) {
        self.inner.metrics.register(registry);
        self.plane.register_metrics(registry);
    }

    // ---- data plane ----------------------------------------------------------------

    /// See [`PeerPlane::packets_per_yield`].
    pub fn packets_per_yield(&self) -> u64 {
        self.plane.packets_per_yield()
    }

    /// Queues `msg` for `node` on the data plane (see [`PeerPlane::forward`]): QoS 0 is
    /// fire and forget (`None`); QoS 1/2 resolve when the peer acknowledged the batch.
    pub fn forward(
        &self,
        node: NodeId,
        msg: Forward,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(), ForwardError>>> {
        self.plane.forward(node, msg)
    }

    /// See [`PeerPlane::forward_unawaited`].
    pub fn forward_unawaited(
        &self,
        node: NodeId,
        msg: Forward,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(), ForwardError>>> {
        self.plane.forward_unawaited(node, msg)
    }

    /// Session handover: `owner` closes the client's connection (v5 0x8E) and hands
    /// over its session, or `None` when it had none.
    pub async fn take_session(
        &self,
        owner: NodeId,
        client_id: &str,
    ) -> Result<Option<Bytes>, ClusterError> {
        self.plane
            .take_session(owner, client_id)
            .await
            .map_err(|e| match e {
                PeerError::Timeout(_) => ClusterError::Timeout,
                other => ClusterError::Rpc(other.to_string()),
            })
    }

    /// Tells every peer that `client_id` connected here with a clean session.
    pub fn announce_connect(&self, client_id: &str, connected_at_ms: u64) {
        self.plane.announce_connect(client_id, connected_at_ms);
    }

    /// Stops Raft, the gRPC server and background tasks. Pending route intents that
    /// were not proposed yet are dropped (`routes_reconcile` repairs after restart).
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if inner.stop.is_cancelled() {
            return;
        }
        // The data plane's long-lived streams would keep the gRPC server waiting.
        self.plane.shutdown();
        inner.stop.cancel();
        tracing::debug!(id = inner.id, "shutting down raft");
        match tokio::time::timeout(Duration::from_secs(5), inner.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "raft shutdown"),
            Err(_) => tracing::warn!("raft shutdown did not finish within 5 s"),
        }
        tracing::debug!(id = inner.id, "raft stopped; stopping tasks");
        let tasks: Vec<_> = inner.tasks.lock().drain(..).collect();
        for mut t in tasks {
            // The server's graceful shutdown waits for open streams: bounded, then aborted.
            if tokio::time::timeout(Duration::from_secs(2), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
    }
}

/// A TCP listener as tonic's incoming stream (no Nagle: Raft messages are small).
fn tokio_stream_tcp(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static {
    futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((r, l))
    })
}

/// Bootstrap or join of a node with an empty store (see [`Bootstrap`]).
async fn bootstrap(inner: Arc<Inner>, mode: Bootstrap, seeds: Vec<String>) {
    let seeds: Vec<String> = seeds
        .into_iter()
        .filter(|s| *s != inner.advertise)
        .collect();
    match mode {
        Bootstrap::Always => {
            let _ = inner.initialize_self().await;
            return;
        }
        Bootstrap::Auto if seeds.is_empty() => {
            let _ = inner.initialize_self().await;
            return;
        }
        Bootstrap::Auto => {
            // Initialise only after AUTO_ROUNDS consecutive probes in which no seed
            // was initialised and either none answered or every uninitialised one
            // that answered has a larger address (deterministic tie-break). Several
            // rounds let a peer that is initialising right now show up as such.
            let mut quiet = 0;
            loop {
                if inner.stop.is_cancelled() || inner.is_member() {
                    return;
                }
                let answers = inner.probe_seeds(&seeds).await;
                if answers.iter().any(|(_, init)| *init) {
                    break;
                }
                if answers.iter().all(|(addr, _)| inner.advertise < *addr) {
                    quiet += 1;
                } else {
                    quiet = 0;
                }
                if quiet >= AUTO_ROUNDS {
                    let _ = inner.initialize_self().await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Bootstrap::Never => {}
    }
    loop {
        if inner.stop.is_cancelled() || inner.is_member() {
            return;
        }
        if inner.join_round(&seeds).await {
            return;
        }
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
    }
}

/// Follows Raft metrics: peer channels for members, leader freshness, gauges, node
/// metadata, and (on the leader) learner promotion.
/// How often the leader looks for departed members.
const DEPARTED_CHECK_EVERY: Duration = Duration::from_secs(2);

async fn watch(inner: Arc<Inner>) {
    // A fixed 200 ms period rather than every metrics change: metrics change on every
    // applied entry, and this loop's cost must not scale with the write rate.
    let rx = inner.raft.metrics();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_promote = Instant::now();
    let mut last_rejoin = Instant::now();
    let mut last_sweep = Instant::now();
    let mut last_departed_check = Instant::now();
    let mut departed: std::collections::HashMap<NodeId, Instant> = std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let m = rx.borrow_watched().clone();
        // A leader is "seen" while it works: on the leader, while a quorum acknowledged
        // it recently; elsewhere the Raft service notes each AppendEntries from it. (A
        // follower cut off keeps `current_leader` set, because pre-vote keeps it from
        // starting elections, so that field alone would never expire.)
        #[allow(deprecated)]
        let quorum_acked_ms = m.millis_since_quorum_ack;
        if m.current_leader == Some(inner.id)
            && quorum_acked_ms
                .is_some_and(|ms| u128::from(ms) < inner.leader_lost_timeout.as_millis())
        {
            *inner.leader_seen.lock() = Some(Instant::now());
        }
        // Peer channels follow the membership.
        let membership = m.membership_config.membership();
        for (id, node) in membership.nodes() {
            if *id != inner.id {
                let _ = inner.peers.get(*id, &node.addr);
            }
        }
        for id in inner.peers.ids() {
            if membership.get_node(&id).is_none() {
                inner.peers.remove(id);
            }
        }
        // Gauges.
        let mt = &inner.metrics;
        mt.term.set(m.current_term as i64);
        mt.leader.set(m.current_leader.unwrap_or(0) as i64);
        let commit = m.local_committed.map(|l| l.index).unwrap_or(0);
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        mt.commit.set(commit as i64);
        mt.applied.set(applied as i64);
        mt.apply_lag.set(commit.saturating_sub(applied) as i64);
        let voters = membership.voter_ids().count();
        mt.members.with_label_values(&["voter"]).set(voters as i64);
        mt.members
            .with_label_values(&["learner"])
            .set(membership.learner_ids().count() as i64);
        mt.pending.set(inner.pending.len() as i64);
        let sm = &inner.sm;
        mt.snapshot_bytes
            .set(sm.snapshot_bytes.load(std::sync::atomic::Ordering::Relaxed) as i64);
        mt.snapshot_build.set(
            sm.snapshot_build_micros
                .load(std::sync::atomic::Ordering::Relaxed) as f64
                / 1e6,
        );
        // Our metadata in the replicated state.
        if membership.get_node(&inner.id).is_some() && m.current_leader.is_some() {
            let want = pb::NodeMeta {
                node: inner.id,
                addr: inner.advertise.clone(),
                mqtt_addr: inner.meta.mqtt_addr.clone(),
                http_addr: inner.meta.http_addr.clone(),
            };
            let have = inner.sm.state.read().node_meta(inner.id).cloned();
            if have.as_ref() != Some(&want) {
                inner.pending.set(Key::Meta, Kind::NodeMeta(want));
            }
        }
        // Our addresses changed since we joined (restart with another address): ask
        // the leader to update our member record (a `Join` of an existing member).
        if let Some(me) = membership.get_node(&inner.id)
            && (me.addr != inner.advertise
                || me.mqtt_addr != inner.meta.mqtt_addr
                || me.http_addr != inner.meta.http_addr)
            && last_rejoin.elapsed() > Duration::from_secs(2)
        {
            last_rejoin = Instant::now();
            let i = inner.clone();
            tokio::spawn(async move { i.rejoin().await });
        }
        // Leader: clear expired retained messages (conditional clears: a message set
        // meanwhile survives). The clock is read here, never in apply.
        if m.current_leader == Some(inner.id) && last_sweep.elapsed() > Duration::from_secs(1) {
            last_sweep = Instant::now();
            let now = now_ms();
            let expired = inner
                .sm
                .state
                .read()
                .retained_expired(now, proposer::MAX_BATCH);
            if !expired.is_empty() {
                let commands = expired
                    .into_iter()
                    .map(|topic| {
                        cmd(Kind::RetainedClear(pb::RetainedClear {
                            topic,
                            if_expired_by_ms: now,
                        }))
                    })
                    .collect();
                let i = inner.clone();
                tokio::spawn(async move {
                    if let Err(e) = i.propose(cmd(Kind::Batch(pb::Batch { commands }))).await {
                        tracing::debug!(error = %e, "retained expiry sweep deferred");
                    }
                });
            }
        }
        // Leader: remove members that departed for good: unreachable, and their
        // address's host name stopped resolving (a scaled-down StatefulSet's pod, a
        // removed container), for `remove_departed_after`.
        if m.current_leader == Some(inner.id)
            && let Some(after) = inner.remove_departed_after
            && last_departed_check.elapsed() > DEPARTED_CHECK_EVERY
        {
            last_departed_check = Instant::now();
            let heartbeat_fresh =
                Duration::from_millis(inner.raft.config().election_timeout_max * 2);
            let unreachable: Vec<(NodeId, String)> = membership
                .nodes()
                .filter(|(id, _)| **id != inner.id)
                .filter(|(id, _)| {
                    !m.heartbeat.as_ref().is_some_and(|hb| {
                        hb.get(id)
                            .and_then(|t| t.as_ref())
                            .is_some_and(|t| t.elapsed() < heartbeat_fresh)
                    })
                })
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect();
            departed.retain(|id, _| unreachable.iter().any(|(u, _)| u == id));
            for (id, addr) in unreachable {
                // A name that still resolves is a node that may come back (a restart,
                // a partition): only a vanished DNS record counts as departure.
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::net::lookup_host(addr.as_str()),
                )
                .await
                {
                    Ok(Ok(_)) => {
                        departed.remove(&id);
                        continue;
                    }
                    Ok(Err(_)) => {}
                    // A slow resolver proves nothing either way.
                    Err(_) => continue,
                }
                let since = *departed.entry(id).or_insert_with(Instant::now);
                if since.elapsed() >= after {
                    departed.remove(&id);
                    tracing::warn!(node = id, addr = %addr, gone_for = ?since.elapsed(), "removing a departed member (unreachable, its address no longer resolves)");
                    let i = inner.clone();
                    tokio::spawn(async move {
                        if let Err(e) = i.handle_remove(id).await {
                            tracing::warn!(node = id, status = %e, "cannot remove a departed member");
                        }
                    });
                }
            }
        }
        // Leader: keep the voter count at its target.
        if m.current_leader == Some(inner.id)
            && voters < inner.voters
            && membership.learner_ids().next().is_some()
            && last_promote.elapsed() > Duration::from_secs(1)
        {
            last_promote = Instant::now();
            let i = inner.clone();
            tokio::spawn(async move { i.promote().await });
        }
    }
}
