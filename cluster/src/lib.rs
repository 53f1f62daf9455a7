//! ferromq's cluster layer: the openraft state plane (routes, shared-subscription
//! groups, retained messages, the persistent-session registry, membership) and the
//! gRPC data plane that forwards PUBLISHes between nodes. See `docs/ARCHITECTURE.md`,
//! "Cluster", and the seam in [`local`]. openraft types never leave this crate.
//!
//! Layout: [`cluster`] (the public handle and start-up), `node` (leader routing,
//! membership changes), `proposer` (route ref-counting and batched proposals),
//! `barrier` (coalesced read index), `raft/` (type config, codec, sled log store,
//! state machine, network, gRPC service), `peers` (one channel per peer), `tls`.
#![forbid(unsafe_code)]

mod barrier;
pub mod cluster;
pub mod error;
pub mod local;
mod metrics;
mod node;
pub mod options;
pub mod peer;
mod peers;
mod proposer;
mod raft;
pub mod status;
mod tls;

#[doc(hidden)]
pub mod testing;

pub use cluster::Cluster;
pub use error::ClusterError;
pub use local::{Forward, LocalNode, NodeId};
pub use options::{Bootstrap, ClusterOptions, ClusterTls, NodeMeta, RaftTuning};
pub use peer::{ForwardError, PeerError, PeerOptions, PeerPlane};
pub use raft::state::RouteMatch;
pub use status::{ClusterStatus, MemberStatus};
