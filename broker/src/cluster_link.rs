//! The broker's side of the cluster: what a node does differently when
//! `cluster.enabled` (docs/ARCHITECTURE.md, "Cluster").
//!
//! The cluster crate knows nothing of MQTT sessions; this module is the seam:
//! - **Data plane.** After local routing, a PUBLISH goes once to each other node with
//!   a matching route, and once to one node per shared group that has no local member
//!   (a local member is preferred). The receiving node delivers to its own sessions
//!   only ([`Broker::deliver_forwarded`]). A QoS 1/2 publisher's PUBACK/PUBREC waits
//!   for the acknowledgements of the peers that hold a persistent session's matching
//!   route, or a shared group's member, up to [`FORWARD_ACK_WAIT`]; after that the
//!   message stays queued for the peer (retried until it returns or is removed from
//!   the cluster) and the publisher is acknowledged, so a node that is down does not
//!   stall publishers on the others. A peer whose matching routes are all transient
//!   (only sessions that end with their connection) is not waited for unless its link
//!   is backlogged (down, or its queue half full): those subscribers lose what is
//!   queued if the publisher's node crashes, as they lose their own session if theirs
//!   does. A full forward queue refuses the message to the publisher instead (v5
//!   0x97; 3.1.1 closes unacknowledged so the client resends).
//! - **Retained messages** go through Raft: the publisher is acknowledged after the
//!   commit, and every node applies the change to its own store
//!   ([`LocalNode::retained_applied`]). A SUBSCRIBE reads retained messages after a
//!   read barrier (see `connection`), so any node answers at least as new as any
//!   acknowledged write: read-your-writes across the cluster.
//! - **Persistent sessions** are claimed in the Raft registry at CONNECT; when another
//!   node owned the session, it closes the old connection (v5 0x8E) and hands the
//!   session over (its store records travel as they are). Without a leader the claim
//!   fails and the CONNECT is refused with 0x88 / 3.1.1 0x03 (server unavailable):
//!   a minority node does not take sessions over. Deliveries that reach the old
//!   node after the handover are relayed to the new owner ([`relay`]).
//! - **Clean sessions** never touch Raft at CONNECT: the node announces the client id
//!   to its peers, and a peer with an older connection of that id closes it (0x8E).
//!   Race window: two CONNECTs of one id on two nodes within one announcement's
//!   flight time both survive until the later announcement arrives (the older one is
//!   then closed); announcements are fire-and-forget, so a peer that is unreachable at
//!   that moment keeps its connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ferromq_cluster::{Cluster, Forward, ForwardError, LocalNode, NodeId, RouteMatch};
use ferromq_codec::{ByteString, ReasonCode};
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::broker::{Broker, Confirm, PublishOutcome};
use crate::message::Message;
use crate::store::codec;

/// How long a QoS 1/2 publisher's acknowledgement waits for peer nodes before the
/// message is left to the forward queue's retries.
pub const FORWARD_ACK_WAIT: Duration = Duration::from_secs(2);

/// How long a takeover waits for the old connection on this node to let go.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// Round-robin over the nodes of a shared group that has no local member.
static SHARED_CURSOR: AtomicUsize = AtomicUsize::new(0);

/// Sends `message` to every other node with a matching route, and to one node per
/// matching shared group not served here (`local_groups`). Adds the peers'
/// acknowledgements of QoS 1/2 messages to `outcome`.
pub fn forward(
    cluster: &Cluster,
    message: &Arc<Message>,
    local_groups: &[(ByteString, ByteString)],
    outcome: &mut PublishOutcome,
) {
    let mut nodes: Vec<RouteMatch> = Vec::new();
    cluster.remote_routes(&message.topic, &mut nodes);
    let mut groups: Vec<(String, String, Vec<NodeId>)> = Vec::new();
    cluster.remote_shared(&message.topic, &mut groups);
    groups.retain(|(g, f, members)| {
        !members.is_empty()
            && !local_groups
                .iter()
                .any(|(lg, lf)| lg.as_ref() as &str == g && lf.as_ref() as &str == f)
    });
    if nodes.is_empty() && groups.is_empty() {
        return;
    }
    let encoded = codec::encode_message_bytes(message);
    let topic = message.topic.as_bytes().clone();
    let qos = message.qos as u8;
    let mut send = |node: NodeId, shared: Option<(String, String)>, wait: bool| {
        let msg = Forward {
            topic: topic.clone(),
            qos,
            message: encoded.clone(),
            shared,
            target: None,
        };
        outcome.matched += 1;
        let ack = if wait {
            cluster.forward(node, msg)
        } else {
            cluster.forward_unawaited(node, msg)
        };
        if let Some(ack) = ack {
            outcome.confirms.push(confirm_forward(node, ack));
        }
    };
    for route in nodes {
        // Only a peer whose matching routes are all transient is not waited for.
        send(route.node, None, !route.transient);
    }
    for (group, filter, members) in groups {
        let node = members[SHARED_CURSOR.fetch_add(1, Ordering::Relaxed) % members.len()];
        // Replicated shared groups do not say whether the chosen node's members are
        // persistent: always waited for.
        send(node, Some((group, filter)), true);
    }
}

/// Relays `message` to `node`, the new owner of `client_id`'s session, for that
/// session only (see `Broker::hand_over_session`). The confirmation resolves as for a
/// forward; `None` for QoS 0.
pub fn relay(
    cluster: &Cluster,
    node: NodeId,
    client_id: &ByteString,
    message: &Arc<Message>,
) -> Option<Confirm> {
    let msg = Forward {
        topic: message.topic.as_bytes().clone(),
        qos: message.qos as u8,
        message: codec::encode_message_bytes(message),
        shared: None,
        target: Some(client_id.to_string()),
    };
    cluster
        .forward(node, msg)
        .map(|ack| confirm_forward(node, ack))
}

/// Adds a delivery's store generation and confirmations to a batch's.
fn note_outcome(
    outcome: PublishOutcome,
    generation: &mut Option<u64>,
    confirms: &mut Vec<Confirm>,
) {
    *generation = (*generation).max(outcome.generation);
    confirms.extend(outcome.confirms);
}

fn confirm_forward(
    node: NodeId,
    ack: tokio::sync::oneshot::Receiver<Result<(), ForwardError>>,
) -> Confirm {
    async move {
        match tokio::time::timeout(FORWARD_ACK_WAIT, ack).await {
            Ok(Ok(Ok(()))) => Ok(()),
            // Still queued for the peer, retried until it returns (module docs).
            Err(_elapsed) => Ok(()),
            Ok(Ok(Err(ForwardError::QueueFull))) => {
                tracing::warn!(
                    peer = node,
                    "forward queue to peer full: publish refused (0x97)"
                );
                Err(ReasonCode::QUOTA_EXCEEDED)
            }
            Ok(Ok(Err(e))) => {
                tracing::warn!(peer = node, error = %e, "message not forwarded");
                Err(ReasonCode::UNSPECIFIED_ERROR)
            }
            Ok(Err(_closed)) => Err(ReasonCode::UNSPECIFIED_ERROR),
        }
    }
    .boxed()
}

/// On a cluster node, proposes a retained set/clear through Raft; the returned
/// confirmation resolves after the commit (and the local apply). `None` on a single
/// node, and for `$` topics (per node, like `$SYS`).
pub fn commit_retained(broker: &Broker, message: &Arc<Message>) -> Option<Confirm> {
    let cluster = broker.cluster()?.clone();
    if message.topic.starts_with('$') {
        return None;
    }
    let topic = message.topic.clone();
    let body = (!message.payload.is_empty()).then(|| codec::encode_message_bytes(message));
    let expires = message
        .expires_at
        .map(codec::instant_to_unix_ms)
        .unwrap_or(0);
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Spawned, so the commit proceeds even when nobody awaits it (wills) and several
    // retained publishes of one connection commit concurrently.
    tokio::spawn(async move {
        let result = cluster.retained_set(&topic, body, expires).await;
        if let Err(e) = &result {
            tracing::warn!(topic = %topic, error = %e, "retained message not committed (no quorum?)");
        }
        let _ = tx.send(result.is_ok());
    });
    Some(
        async move {
            match rx.await {
                Ok(true) => Ok(()),
                _ => Err(ReasonCode::UNSPECIFIED_ERROR),
            }
        }
        .boxed(),
    )
}

/// Cluster steps before a CONNECT opens its session. `Err` refuses the CONNECT as
/// "server unavailable" (the registry cannot be reached: no leader).
pub async fn before_open(
    broker: &Broker,
    client_id: &ByteString,
    clean_start: bool,
    expiry_interval: u32,
) -> Result<(), ferromq_cluster::ClusterError> {
    let Some(cluster) = broker.cluster() else {
        return Ok(());
    };
    let me = cluster.node_id();
    if expiry_interval > 0 {
        let previous = cluster.session_claim(client_id, expiry_interval).await?;
        if let Some(owner) = previous.filter(|o| *o != me) {
            match cluster.take_session(owner, client_id).await {
                Ok(Some(blob)) if !clean_start => {
                    broker.import_session(client_id, &blob);
                }
                Ok(_) => {}
                Err(e) => {
                    // The previous node is unreachable: the session continues from what
                    // this node has (nothing, usually); logged so it is not silent.
                    tracing::warn!(client_id = %client_id, previous_owner = owner, error = %e, "session handover failed: starting from this node's copy");
                }
            }
        }
    } else {
        tracing::debug!(client_id = %client_id, "clean session: announcing the connect to the other nodes");
        cluster.announce_connect(client_id, codec::now_unix_ms());
        if let Some(owner) = cluster.session_owner(client_id).filter(|o| *o != me) {
            // A persistent session of this id lives elsewhere: a clean start ends it.
            if let Err(e) = cluster.take_session(owner, client_id).await {
                tracing::warn!(client_id = %client_id, previous_owner = owner, error = %e, "cannot end the session on its previous node");
            }
            cluster.session_release(client_id);
        }
    }
    Ok(())
}

/// The broker as the cluster's [`LocalNode`].
pub struct BrokerNode {
    pub broker: Broker,
}

impl LocalNode for BrokerNode {
    fn deliver(&self, _from: NodeId, batch: Vec<Forward>) -> BoxFuture<'static, ()> {
        let mut generation: Option<u64> = None;
        let mut confirms = Vec::new();
        let mut relayed = Vec::new();
        // One clock read for the batch: its messages arrived together.
        let now = std::time::Instant::now();
        for fwd in batch {
            // Decoded from a copy: topic and payload slices of `fwd.message` would keep
            // the whole received batch's buffer alive for as long as one of its
            // messages waits in a session queue.
            let Some(stored) = codec::decode(&fwd.message) else {
                tracing::warn!("undecodable forwarded message dropped");
                continue;
            };
            let message = stored.into_message_received(now);
            if message.is_expired(now) {
                continue;
            }
            if let Some(client_id) = fwd.target {
                // Relayed by a session's previous owner: may have to wait for the
                // handover, so it is delivered in the future below.
                relayed.push((client_id, message));
                continue;
            }
            let shared = fwd.shared.as_ref().map(|(g, f)| (g.as_str(), f.as_str()));
            let outcome = self.broker.deliver_forwarded(message, shared);
            note_outcome(outcome, &mut generation, &mut confirms);
        }
        // Acknowledged to the sending node once durable here (strict durability) and
        // once the nodes this one relayed to acknowledged.
        let broker = self.broker.clone();
        async move {
            for (client_id, message) in relayed {
                let outcome = broker
                    .deliver_to_moved(&client_id, message, TAKEOVER_WAIT)
                    .await;
                note_outcome(outcome, &mut generation, &mut confirms);
            }
            if let (Some(store), Some(g)) = (broker.store(), generation)
                && store.strict()
            {
                let mut flushed = store.flushed();
                store.request_flush();
                let _ = flushed.wait_for(|f| f.done >= g || f.failed >= g).await;
            }
            // Errors were logged where they happened; the peer only needs to know
            // the batch is done.
            futures::future::join_all(confirms).await;
        }
        .boxed()
    }

    fn retained_applied(&self, topic: &str, message: Option<&Bytes>) {
        self.broker.apply_retained(topic, message);
    }

    fn take_session(&self, client_id: &str, to: NodeId) -> BoxFuture<'static, Option<Bytes>> {
        let broker = self.broker.clone();
        let client_id = ByteString::from(client_id);
        async move {
            broker
                .hand_over_session(&client_id, TAKEOVER_WAIT, to)
                .await
        }
        .boxed()
    }

    fn connect_announced(&self, from: NodeId, client_id: &str, connected_at_ms: u64) {
        self.broker
            .end_older_connection(from, client_id, connected_at_ms);
    }
}
