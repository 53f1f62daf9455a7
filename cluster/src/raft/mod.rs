//! The openraft side of the cluster: type configuration, wire/disk codec, the sled log
//! store, the state machine and the gRPC network. Nothing in here is public outside
//! the crate: openraft types never reach the broker.

pub(crate) mod codec;
pub(crate) mod log_store;
pub(crate) mod network;
pub(crate) mod service;
pub(crate) mod state;
pub(crate) mod state_machine;

use std::fmt;

use ferromq_proto::raft::v1 as pb;

/// Application data of a log entry: one replicated command (possibly a batch).
#[derive(Debug, Clone, PartialEq)]
pub struct Cmd(pub pb::Command);

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.kind {
            Some(k) => write!(f, "{}", state::kind_name(k)),
            None => write!(f, "empty"),
        }
    }
}

/// What applying one command answers to its proposer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// `SessionClaim`: the previous owner when it was another node.
    pub prev_owner: Option<u64>,
}

/// A member as Raft's membership stores it: the address peers dial plus the client
/// facing addresses shown in `status()`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    pub addr: String,
    pub mqtt_addr: String,
    pub http_addr: String,
}

/// Snapshot payload: the encoded [`pb::StateImage`], held in memory (the image is
/// small: routes, groups, retained messages, the session registry) and persisted as a
/// file by the state machine.
pub type SnapshotData = bytes::Bytes;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Cmd,
        R = Applied,
        Node = Member,
);

pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Membership = openraft::Membership<u64, Member>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
