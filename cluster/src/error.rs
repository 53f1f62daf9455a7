//! The cluster's error type at its public boundary.

/// Errors of the cluster API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// No leader is known (election in progress, or no quorum).
    #[error("no Raft leader")]
    NoLeader,
    /// The operation did not complete within its deadline.
    #[error("cluster operation timed out")]
    Timeout,
    /// A gRPC call to a peer failed.
    #[error("cluster RPC failed: {0}")]
    Rpc(String),
    /// Local storage (sled, snapshot files) failed.
    #[error("cluster storage: {0}")]
    Storage(String),
    /// This node is not (or no longer) a member of the cluster.
    #[error("this node is not a cluster member")]
    NotMember,
    /// Invalid options (addresses, TLS files).
    #[error("cluster configuration: {0}")]
    Config(String),
}

impl From<tonic::Status> for ClusterError {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::DeadlineExceeded => ClusterError::Timeout,
            _ => ClusterError::Rpc(format!("{}: {}", s.code(), s.message())),
        }
    }
}
