//! Clean-session connect announcements to one peer: fire and forget, batched.
//!
//! `PeerPlane::announce_connect` puts an announcement into each peer's bounded queue
//! (`announce_queue`); when full the announcement is dropped and counted
//! (`ferromq_cluster_announcements_dropped_total`). This task drains up to
//! [`BATCH`] at a time into one unary RPC with the RPC deadline; a failed RPC drops
//! its batch (counted). Duplicate clean-session ids across nodes are best effort:
//! an announcement lost while a peer is unreachable is not retried.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use ferromq_proto::peer::v1 as pb;

use super::PeerOptions;
use super::metrics::PeerMetrics;
use crate::NodeId;

/// Announcements per RPC.
const BATCH: usize = 256;

pub(crate) async fn run(
    self_id: NodeId,
    node: NodeId,
    mut rx: mpsc::Receiver<pb::Announcement>,
    channel: watch::Receiver<Channel>,
    opts: Arc<PeerOptions>,
    metrics: Arc<PeerMetrics>,
    cancel: CancellationToken,
) {
    let mut buf = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            _ = cancel.cancelled() => return,
            n = rx.recv_many(&mut buf, BATCH) => n,
        };
        if n == 0 {
            return;
        }
        let announcements: Vec<pb::Announcement> = std::mem::take(&mut buf);
        let count = announcements.len() as u64;
        let mut client = pb::peer_client::PeerClient::new(channel.borrow().clone());
        let mut req = tonic::Request::new(pb::AnnounceConnectRequest {
            from: self_id,
            announcements,
        });
        req.set_timeout(opts.rpc_timeout);
        let sent = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(opts.rpc_timeout, client.announce_connect(req)) => r,
        };
        match sent {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                tracing::debug!(peer = node, %status, "connect announcements not delivered");
                metrics.announce_dropped.inc_by(count);
            }
            Err(_) => {
                tracing::debug!(peer = node, "connect announcements timed out");
                metrics.announce_dropped.inc_by(count);
            }
        }
        buf = Vec::with_capacity(BATCH);
    }
}
