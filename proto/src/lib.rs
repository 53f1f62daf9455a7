//! Generated code for the cluster's gRPC services, and nothing else: the `.proto`
//! files under `proto/` are the wire contract between ferromq nodes.
#![allow(clippy::all, missing_docs, unreachable_pub)]

/// Raft RPCs, membership and replicated commands (`proto/raft.proto`).
pub mod raft {
    pub mod v1 {
        tonic::include_proto!("ferromq.raft.v1");
    }
}

/// Peer data plane: forwarded publishes, session handover (`proto/peer.proto`).
pub mod peer {
    pub mod v1 {
        tonic::include_proto!("ferromq.peer.v1");
    }
}
