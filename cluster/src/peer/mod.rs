//! The cluster's data plane: PUBLISHes forwarded between nodes over one long-lived
//! gRPC bidirectional stream per peer, session handover and clean-session
//! announcements. Nothing here goes through Raft; the state plane only hands over
//! one tonic [`Channel`] per peer ([`PeerPlane::set_peer`]) and serves
//! [`PeerPlane::service`] on its tonic `Server`.
//!
//! # Delivery guarantees between nodes
//!
//! - **Order**: messages to one peer are delivered in the order they were offered
//!   while the stream stays up. After a reconnect, re-sent QoS 1/2 messages come
//!   first, still in order, but a delivery of the old stream that was still running
//!   may overlap with the new stream. The receiver calls `LocalNode::deliver` in
//!   stream order, but the futures of up to `window` consecutive batches run
//!   concurrently: the broker hands a batch to its sessions within the call and uses
//!   the future only to signal that the batch is safe (its completion gates the ack).
//! - **QoS 0**: at most once. Dropped (counted in
//!   `ferromq_cluster_forward_dropped_total{reason}`) when the peer's queue is full
//!   (`queue_full`), when its stream is down after a failure (`peer_down`), when the
//!   node is not a set peer (`unknown_peer`), when written but unacknowledged as the
//!   stream broke (`stream_lost`), or on removal (`peer_removed`).
//! - **QoS 1/2**: at least once. [`PeerPlane::forward`] returns a receiver resolved
//!   `Ok(())` once the peer acknowledged the batch holding the message, i.e. once its
//!   `LocalNode::deliver` future completed. Unacknowledged batches are re-sent after
//!   the stream reconnects, so the receiving node can see a message twice; the
//!   receiver suppresses re-sent batches it already delivered (per sender epoch,
//!   while its process lives), which leaves duplicates only when a stream breaks
//!   during a delivery or when the receiving process restarted.
//! - **Overflow**: each peer's queue holds `forward_queue` messages. A QoS 1/2 offer
//!   to a full queue resolves `Err(ForwardError::QueueFull)` immediately, so the
//!   publisher's node can refuse the PUBACK (v5 0x97) or not acknowledge instead of
//!   losing the message silently.
//! - **Peer down**: QoS 1/2 stay queued (bounded as above) and are retried with
//!   backoff until the peer returns, or until [`PeerPlane::remove_peer`] answers them
//!   `Err(ForwardError::PeerRemoved)`. No timeout gives up on them earlier: whether to
//!   wait is the caller's choice (drop the receiver; the message is still sent).
//!
//! Liveness: a peer that vanishes without closing TCP is noticed through the
//! channel's HTTP/2 keepalive (configured by the channel's owner), not here; no ack
//! timeout gives up on a slow `deliver`.
//!
//! Bounds: queue `forward_queue` messages per peer; `window` unacknowledged batches
//! of at most `batch_max` messages / about `batch_max_bytes` per peer (and the same
//! window of pipelined deliveries per incoming stream); `announce_queue` per peer.

mod announce;
mod error;
mod link;
mod metrics;
mod server;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use tonic::transport::Channel;

use ferromq_proto::peer::v1 as pb;

pub use error::{ForwardError, PeerError};
pub use server::PeerService;

use link::Link;
use metrics::Metrics;
use server::ServerShared;

use crate::{Forward, LocalNode, NodeId};

/// Packets a broker connection handles between yields on a runtime with more than one
/// worker ([`PeerPlane::packets_per_yield`]). Chosen by measurement: of 32, 64, 128,
/// 256 and 512, 128 gave the highest cross-node QoS 0 rate (docs/BENCHMARKS.md,
/// cluster section). Fewer packets cost more wake-ups; more leave a burst in too few
/// batches for the peer to overlap with.
pub const PACKETS_PER_YIELD: u64 = 128;

/// Tuning of the data plane. Zero values are treated as 1 where a zero would stall.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Messages queued per peer before offers are refused. Default 65 536.
    pub forward_queue: usize,
    /// Messages per batch at most. Default 1024.
    pub batch_max: usize,
    /// Bytes (topic + message) per batch, about: a batch is cut before the message
    /// that would pass it; a single larger message travels alone. Default 1 MiB.
    pub batch_max_bytes: usize,
    /// Unacknowledged batches per peer; also the number of deliveries pipelined per
    /// incoming stream. Default 16.
    pub window: usize,
    /// gRPC message size limit both ways (a batch, a session). Default 257 MiB
    /// (MQTT's 256 MiB packet limit plus headroom).
    pub max_message_bytes: usize,
    /// Deadline of unary RPCs and of opening the Forward stream. Default 5 s.
    pub rpc_timeout: Duration,
    /// Reconnect backoff of the Forward stream: first wait, doubling up to `reconnect_max`
    /// (plus up to 50% jitter). Defaults 50 ms and 2 s.
    pub reconnect_min: Duration,
    /// Longest reconnect wait (before jitter); a stream up this long resets the backoff.
    pub reconnect_max: Duration,
    /// Clean-session announcements queued per peer. Default 4096.
    pub announce_queue: usize,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            forward_queue: 65_536,
            batch_max: 1024,
            batch_max_bytes: 1 << 20,
            window: 16,
            max_message_bytes: 257 << 20,
            rpc_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            announce_queue: 4096,
        }
    }
}

/// The data plane of one node. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct PeerPlane {
    inner: Arc<Inner>,
}

struct Inner {
    self_id: NodeId,
    opts: Arc<PeerOptions>,
    metrics: Arc<Metrics>,
    peers: RwLock<HashMap<NodeId, Link>>,
    server: Arc<ServerShared>,
    /// See [`PeerPlane::packets_per_yield`]: fixed by the runtime's worker count.
    packets_per_yield: u64,
}

impl PeerPlane {
    /// Call it on the node's runtime: how often the node's connections yield to the
    /// data plane ([`PeerPlane::packets_per_yield`]) depends on its worker count.
    pub fn new(self_id: NodeId, local: Arc<dyn LocalNode>, opts: PeerOptions) -> PeerPlane {
        let metrics = Arc::new(Metrics::new());
        let one_worker =
            tokio::runtime::Handle::try_current().is_ok_and(|h| h.metrics().num_workers() == 1);
        let server = Arc::new(ServerShared::new(
            local,
            metrics.clone(),
            opts.window.max(1),
        ));
        PeerPlane {
            inner: Arc::new(Inner {
                self_id,
                opts: Arc::new(opts),
                metrics,
                peers: RwLock::new(HashMap::new()),
                server,
                packets_per_yield: if one_worker { 1 } else { PACKETS_PER_YIELD },
            }),
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.self_id
    }

    /// How many packets a broker connection handles before it yields to the runtime,
    /// so the link writers send what it forwarded while it goes on reading. Without
    /// the yields a publisher's burst leaves in one batch at the end and the peer
    /// starts on it only then: each node waits for the other. A task the connection
    /// wakes (the link writer) waits in the worker's LIFO slot, which other workers
    /// do not steal, until the connection lets go. The receiving side yields after
    /// each delivered batch for the same reason (`server::receive`).
    /// - One runtime worker (`limits.worker_threads = 1`, nodes that share a host):
    ///   1, a yield after every read; nothing else runs on the node meanwhile.
    /// - More workers: [`PACKETS_PER_YIELD`]. Each yield costs a wake-up and a
    ///   context switch; one per read was slower than none (cross-node QoS 0, three
    ///   nodes on two cores: 366-435k msg/s against 422-516k), one per 128 packets
    ///   with the receiving side's yields faster (docs/BENCHMARKS.md, cluster
    ///   section).
    pub fn packets_per_yield(&self) -> u64 {
        self.inner.packets_per_yield
    }

    /// The gRPC service to `add_service` on the node's tonic `Server`.
    pub fn service(&self) -> pb::peer_server::PeerServer<PeerService> {
        pb::peer_server::PeerServer::new(PeerService {
            shared: self.inner.server.clone(),
        })
        .max_decoding_message_size(self.inner.opts.max_message_bytes)
        .max_encoding_message_size(self.inner.opts.max_message_bytes)
    }

    /// Hand over the long-lived channel to `node` (must run inside a Tokio runtime).
    /// The first call opens the Forward stream and keeps re-opening it with backoff
    /// while the peer is set; a later call replaces the channel (the stream re-opens
    /// on it, queued and unacknowledged messages kept). `node == self` is ignored.
    pub fn set_peer(&self, node: NodeId, channel: Channel) {
        if node == self.inner.self_id {
            tracing::warn!(node, "set_peer with this node's own id ignored");
            return;
        }
        let mut peers = self.inner.peers.write();
        if let Some(link) = peers.get(&node) {
            link.channel.send_replace(channel);
            return;
        }
        let metrics = Arc::new(self.inner.metrics.peer(node));
        let link = Link::spawn(
            self.inner.self_id,
            node,
            channel,
            self.inner.opts.clone(),
            metrics,
        );
        peers.insert(node, link);
    }

    /// Forget `node`: its stream closes and every message still queued or
    /// unacknowledged for it is answered `Err(ForwardError::PeerRemoved)`.
    pub fn remove_peer(&self, node: NodeId) {
        let removed = self.inner.peers.write().remove(&node);
        if removed.is_some() {
            // Dropping the link cancels its tasks; its metric handles stay valid but
            // the series leave the registry.
            drop(removed);
            self.inner.metrics.remove_peer(node);
        }
    }

    /// The peers currently set.
    pub fn peers(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.inner.peers.read().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Queue `msg` for `node`; never waits. QoS 0: `None` (fire and forget; see the
    /// module docs for when it is dropped). QoS 1/2: a receiver resolved `Ok(())` when
    /// the peer acknowledged the batch holding it, or with the [`ForwardError`] that
    /// ended it (`QueueFull` and `UnknownPeer` are answered at once).
    pub fn forward(
        &self,
        node: NodeId,
        msg: Forward,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(), ForwardError>>> {
        let qos = msg.qos;
        {
            let peers = self.inner.peers.read();
            if let Some(link) = peers.get(&node) {
                return link.offer(msg);
            }
        }
        self.inner.metrics.unknown_peer_drop(node);
        if qos == 0 {
            return None;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(Err(ForwardError::UnknownPeer(node)));
        Some(rx)
    }

    /// Like [`PeerPlane::forward`], for a QoS 1/2 message whose publisher need not
    /// wait for this peer (every route of the peer that it matches is held by
    /// sessions that end with their connection): `None` once it is queued; it is sent,
    /// acknowledged and retried like any other, only nobody waits for it (counted in
    /// `ferromq_cluster_forward_unawaited_total`). While the peer's stream is down
    /// or its queue more than half full, a receiver to wait on as from `forward`
    /// (backpressure); a refusal comes back as a receiver already answered.
    pub fn forward_unawaited(
        &self,
        node: NodeId,
        msg: Forward,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(), ForwardError>>> {
        {
            let peers = self.inner.peers.read();
            if let Some(link) = peers.get(&node) {
                return link.offer_unawaited(msg);
            }
        }
        self.forward(node, msg)
    }

    /// Session handover: ask `owner` to close the client's connection and hand over
    /// its session (`None`: it had none). One unary RPC; this side waits `rpc_timeout`.
    /// On `Timeout` the owner may still have completed the handover (its session is
    /// then gone with the lost reply): the caller decides whether to retry or start clean.
    pub async fn take_session(
        &self,
        owner: NodeId,
        client_id: &str,
    ) -> Result<Option<Bytes>, PeerError> {
        let channel = {
            let peers = self.inner.peers.read();
            let link = peers.get(&owner).ok_or(PeerError::UnknownPeer(owner))?;
            link.channel.borrow().clone()
        };
        let timeout = self.inner.opts.rpc_timeout;
        let mut client = pb::peer_client::PeerClient::new(channel)
            .max_decoding_message_size(self.inner.opts.max_message_bytes);
        // No grpc-timeout header on purpose: the owner's handover runs to completion
        // even when this side stops waiting, rather than being cancelled half way.
        let req = tonic::Request::new(pb::TakeSessionRequest {
            from: self.inner.self_id,
            client_id: client_id.to_owned(),
        });
        match tokio::time::timeout(timeout, client.take_session(req)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner().session),
            Ok(Err(status)) => Err(PeerError::Rpc(status.to_string())),
            Err(_) => Err(PeerError::Timeout(timeout)),
        }
    }

    /// Tell every set peer that `client_id` connected here with a clean session at
    /// `connected_at_ms` (unix ms). Fire and forget; bounded per peer (see `announce`).
    pub fn announce_connect(&self, client_id: &str, connected_at_ms: u64) {
        let peers = self.inner.peers.read();
        tracing::debug!(
            client_id,
            peers = peers.len(),
            "announcing a clean-session connect"
        );
        for link in peers.values() {
            let a = pb::Announcement {
                client_id: client_id.to_owned(),
                connected_at_ms,
            };
            if link.announce.try_send(a).is_err() {
                link.metrics.announce_dropped.inc();
            }
        }
    }

    /// Register the data plane's series (`ferromq_cluster_forward*`, `_peer_up`).
    pub fn register_metrics(&self, registry: &prometheus::Registry) {
        self.inner.metrics.register(registry);
    }

    /// Stop (the plane is not meant to be reused afterwards): every peer is removed (waiting receivers get `PeerRemoved`) and incoming
    /// Forward streams stop reading, finish the deliveries they started and end, so a
    /// graceful tonic shutdown does not wait on them for ever.
    pub fn shutdown(&self) {
        self.inner.server.shutdown.cancel();
        let nodes = self.peers();
        for node in nodes {
            self.remove_peer(node);
        }
    }
}
