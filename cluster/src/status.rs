//! `Cluster::status()`: a serialisable view for the HTTP API.

use serde::Serialize;

use crate::NodeId;

/// The node's view of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    /// "leader" | "follower" | "candidate" | "learner" | "shutdown".
    pub role: &'static str,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub members: Vec<MemberStatus>,
}

/// One member.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub addr: String,
    pub mqtt_addr: String,
    pub http_addr: String,
    /// "voter" | "learner".
    pub role: &'static str,
    /// On the leader: acknowledged a heartbeat recently. Elsewhere only self and the
    /// current leader are known reachable.
    pub reachable: bool,
}
