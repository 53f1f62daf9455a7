//! The seam between the cluster and the broker: what the cluster asks of the node it
//! runs in. The broker implements [`LocalNode`]; the cluster never depends on the
//! broker crate, and messages cross it as opaque bytes the broker encodes itself.

use bytes::Bytes;
use futures::future::BoxFuture;

/// A cluster node's id: a random `u64` chosen on first start with an empty store and
/// persisted; never reused for a node with an empty log (reference/stack.md 1.5).
pub type NodeId = u64;

/// One message on the data plane, forwarded once to each node with matching routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// UTF-8 topic name, matched again on the receiving node.
    pub topic: Bytes,
    /// QoS of the publish as received (0, 1 or 2).
    pub qos: u8,
    /// The broker's own encoding of the message (opaque to the cluster).
    pub message: Bytes,
    /// `Some((group, filter))`: deliver to one local member of that shared
    /// subscription group only; `None`: to every matching local non-shared subscriber.
    pub shared: Option<(String, String)>,
    /// `Some(client_id)`: relayed by the previous owner of a persistent session that
    /// moved to the receiving node; delivered to that session only, once it is there.
    pub target: Option<String>,
}

/// Implemented by the broker. Called by the cluster; nothing here may block for long.
pub trait LocalNode: Send + Sync + 'static {
    /// A batch forwarded by `from`: deliver to local sessions only (never
    /// re-forward). The sender gets the batch's acknowledgement when the future
    /// completes, so the broker completes it once the messages are as safe as a local
    /// publish would make them.
    fn deliver(&self, from: NodeId, batch: Vec<Forward>) -> BoxFuture<'static, ()>;

    /// A retained change applied by the Raft state machine (also during startup replay
    /// and snapshot install): `None` clears the topic.
    fn retained_applied(&self, topic: &str, message: Option<&Bytes>);

    /// Another node takes over `client_id`: close the local connection (v5
    /// DISCONNECT 0x8E) and return the broker-encoded session, removed locally, or
    /// `None` when there is none here. `to` is the taking node: deliveries that still
    /// reach the moved session here are relayed to it (`Forward::target`).
    fn take_session(&self, client_id: &str, to: NodeId) -> BoxFuture<'static, Option<Bytes>>;

    /// `client_id` connected with a clean session on node `from` at `connected_at_ms`
    /// (unix ms): close the local connection with that id if it is older.
    fn connect_announced(&self, from: NodeId, client_id: &str, connected_at_ms: u64);
}
