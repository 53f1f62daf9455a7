//! ferromq's cluster layer: the openraft state plane (routes, shared-subscription
//! groups, retained messages, the persistent-session registry, membership) and the
//! gRPC data plane that forwards PUBLISHes between nodes. See `docs/ARCHITECTURE.md`,
//! "Cluster", and the seam in [`local`]. openraft types never leave this crate.
#![forbid(unsafe_code)]

pub mod local;
pub mod peer;

pub use local::{Forward, LocalNode, NodeId};
pub use peer::{ForwardError, PeerError, PeerOptions, PeerPlane};

// ---- TEMPORARY API STUB (replaced by the state-plane branch on merge) ----
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no leader")]
    NoLeader,
    #[error("timeout")]
    Timeout,
    #[error("rpc: {0}")]
    Rpc(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("not a member")]
    NotMember,
    #[error("config: {0}")]
    Config(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone)]
pub struct ClusterTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NodeMeta {
    pub mqtt_addr: String,
    pub http_addr: String,
}

pub struct ClusterOptions {
    pub listen: SocketAddr,
    pub advertise: Option<String>,
    pub seeds: Vec<String>,
    pub bootstrap: Bootstrap,
    pub voters: usize,
    pub db: sled::Db,
    pub data_dir: PathBuf,
    pub tls: Option<ClusterTls>,
    pub meta: NodeMeta,
    pub leader_lost_timeout: Duration,
    pub forward_queue: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
}

#[derive(Clone)]
pub struct Cluster {
    _local: Arc<dyn LocalNode>,
}

#[allow(unused_variables, clippy::unused_async, clippy::ptr_arg)]
impl Cluster {
    pub async fn start(
        opts: ClusterOptions,
        local: Arc<dyn LocalNode>,
    ) -> Result<Cluster, ClusterError> {
        Err(ClusterError::Config("stub".into()))
    }
    pub fn node_id(&self) -> NodeId {
        0
    }
    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }
    pub fn route_add(&self, filter: &str) {}
    pub fn route_remove(&self, filter: &str) {}
    pub fn shared_add(&self, group: &str, filter: &str) {}
    pub fn shared_remove(&self, group: &str, filter: &str) {}
    pub fn routes_reconcile(&self) {}
    pub fn remote_routes(&self, topic: &str, out: &mut Vec<NodeId>) {}
    pub fn remote_shared(&self, topic: &str, out: &mut Vec<(String, String, Vec<NodeId>)>) {}
    pub async fn retained_set(
        &self,
        topic: &str,
        message: Option<Bytes>,
        expires_at_ms: u64,
    ) -> Result<(), ClusterError> {
        Ok(())
    }
    pub async fn read_barrier(&self) -> Result<(), ClusterError> {
        Ok(())
    }
    pub async fn session_claim(
        &self,
        client_id: &str,
        expiry_secs: u32,
    ) -> Result<Option<NodeId>, ClusterError> {
        Ok(None)
    }
    pub fn session_release(&self, client_id: &str) {}
    pub fn session_owner(&self, client_id: &str) -> Option<NodeId> {
        None
    }
    pub fn forward(
        &self,
        node: NodeId,
        msg: Forward,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(), ForwardError>>> {
        None
    }
    pub async fn take_session(
        &self,
        owner: NodeId,
        client_id: &str,
    ) -> Result<Option<Bytes>, ClusterError> {
        Ok(None)
    }
    pub fn announce_connect(&self, client_id: &str, connected_at_ms: u64) {}
    pub fn status(&self) -> ClusterStatus {
        ClusterStatus { node_id: 0 }
    }
    pub fn is_ready(&self) -> bool {
        true
    }
    pub async fn leave(&self) -> Result<(), ClusterError> {
        Ok(())
    }
    pub async fn remove(&self, node: NodeId) -> Result<(), ClusterError> {
        Ok(())
    }
    pub async fn transfer_leadership(&self) -> Result<(), ClusterError> {
        Ok(())
    }
    pub fn register_metrics(&self, registry: &prometheus::Registry) {}
    pub async fn shutdown(&self) {}
}
