//! Errors at the data plane's boundary: what a forwarded message's receiver or a
//! peer RPC's caller is told, typed so the broker can map each to an MQTT outcome
//! (`QueueFull` -> v5 PUBACK 0x97 "quota exceeded", or no acknowledgement).

use std::time::Duration;

use crate::NodeId;

/// Why a QoS 1/2 forward was not acknowledged by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The peer's bounded forward queue was full when the message was offered
    /// (reported immediately; the message was not queued).
    #[error("forward queue to the peer is full")]
    QueueFull,
    /// The peer was removed (or the plane shut down) before it acknowledged.
    #[error("peer removed before acknowledging")]
    PeerRemoved,
    /// No peer with that id is set on this plane.
    #[error("unknown peer: node {0}")]
    UnknownPeer(NodeId),
}

/// A peer RPC (session handover) that did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// No peer with that id is set on this plane.
    #[error("unknown peer: node {0}")]
    UnknownPeer(NodeId),
    /// The peer did not answer within the RPC deadline.
    #[error("peer did not answer within {0:?}")]
    Timeout(Duration),
    /// Transport or remote failure (gRPC status rendered as text).
    #[error("peer rpc failed: {0}")]
    Rpc(String),
}
