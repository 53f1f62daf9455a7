//! ferromq's cluster layer: the openraft state plane (routes, shared-subscription
//! groups, retained messages, the persistent-session registry, membership) and the
//! gRPC data plane that forwards PUBLISHes between nodes. See `docs/ARCHITECTURE.md`,
//! "Cluster", and the seam in [`local`]. openraft types never leave this crate.
#![forbid(unsafe_code)]

pub mod local;
pub mod peer;

pub use local::{Forward, LocalNode, NodeId};
