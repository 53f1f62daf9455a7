//! One long-lived gRPC [`Channel`] per peer, shared by Raft replication, management
//! RPCs and the data plane ([`PeerPlane`]).
//!
//! Channels are created lazily (`connect_lazy`: no I/O until the first call) and
//! reconnect by themselves, so a peer that is down costs nothing but failed calls.
//! The registry is keyed by node id and re-created when a peer's address changes.
//! Ad-hoc channels to seed addresses (node id unknown yet) are not cached.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::RwLock;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::NodeId;
use crate::error::ClusterError;
use crate::peer::PeerPlane;

/// Peer channel registry.
pub struct Peers {
    tls: Option<ClientTlsConfig>,
    map: RwLock<HashMap<NodeId, (String, Channel)>>,
    /// The data plane, handed every member's channel as the membership changes.
    plane: std::sync::OnceLock<PeerPlane>,
}

impl Peers {
    pub fn new(tls: Option<ClientTlsConfig>) -> Self {
        Self {
            tls,
            map: RwLock::new(HashMap::new()),
            plane: std::sync::OnceLock::new(),
        }
    }

    /// Attaches the data plane (once, at start).
    pub fn attach_plane(&self, plane: PeerPlane) {
        let _ = self.plane.set(plane);
    }

    /// A lazily connecting channel to `addr` ("host:port").
    pub fn dial(&self, addr: &str) -> Result<Channel, ClusterError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| ClusterError::Config(format!("peer address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            ep = ep
                .tls_config(tls.clone())
                .map_err(|e| ClusterError::Config(format!("cluster TLS: {e}")))?;
        }
        Ok(ep.connect_lazy())
    }

    /// The channel to member `id` at `addr`, created (or replaced when the address
    /// changed) on demand.
    pub fn get(&self, id: NodeId, addr: &str) -> Result<Channel, ClusterError> {
        if let Some((a, ch)) = self.map.read().get(&id)
            && a == addr
        {
            return Ok(ch.clone());
        }
        let ch = self.dial(addr)?;
        self.map.write().insert(id, (addr.to_owned(), ch.clone()));
        // The data plane's forward stream rides the same channel (one per peer).
        if let Some(plane) = self.plane.get() {
            plane.set_peer(id, ch.clone());
        }
        Ok(ch)
    }

    /// The current channel of `id` (follows address changes made by the watcher).
    pub fn cached(&self, id: NodeId) -> Option<Channel> {
        self.map.read().get(&id).map(|(_, c)| c.clone())
    }

    /// Drops the channel of a node that left the membership.
    pub fn remove(&self, id: NodeId) {
        self.map.write().remove(&id);
        if let Some(plane) = self.plane.get() {
            plane.remove_peer(id);
        }
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.map.read().keys().copied().collect()
    }
}
