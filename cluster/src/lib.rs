//! ferromq's cluster layer.
//!
//! This crate will hold the openraft type configuration, the sled-backed Raft log and
//! state machine, the tonic Raft service and network, and the peer data plane that
//! forwards PUBLISHes between nodes (see `docs/ARCHITECTURE.md`, "Cluster"). It is
//! deliberately empty until the cluster issue lands: the single-node broker does not
//! depend on it, so the single-node path carries no cluster cost.
#![forbid(unsafe_code)]
