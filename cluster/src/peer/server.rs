//! The receiving side of the data plane: the `ferromq.peer.v1.Peer` gRPC service.
//!
//! Per Forward stream one task reads batches in order and hands each to
//! [`LocalNode::deliver`]. Deliveries of consecutive batches are pipelined (up to
//! `window` in flight, after which the task stops reading and HTTP/2 flow control
//! pushes back on the sender), but they complete and are acknowledged strictly in
//! stream order: the ack is a cumulative `up_to`, published through a `watch`
//! channel, so acks that finish together are coalesced and the ack "queue" is one
//! value (bounded by construction). An ack never covers a batch whose delivery has
//! not completed.
//!
//! Duplicate suppression: the last delivered `(epoch, seq)` per sending node is
//! remembered while this process lives; a batch re-sent after a reconnect with a seq
//! at or below it is acknowledged without being delivered again. A batch that was
//! still being delivered when the old stream broke can be delivered twice (the
//! sender re-sends it before the old delivery finished): at-least-once.
//!
//! When the stream ends (sender gone or plane shut down), deliveries already started
//! are driven to completion, never cancelled half way.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use ferromq_proto::peer::v1 as pb;

use super::metrics::Metrics;
use crate::{Forward, LocalNode, NodeId};

/// State shared by every stream the service serves.
pub(crate) struct ServerShared {
    pub local: Arc<dyn LocalNode>,
    pub metrics: Arc<Metrics>,
    /// Deliveries in flight per stream.
    pub window: usize,
    /// Cancelled by `PeerPlane::shutdown`: streams stop reading and end.
    pub shutdown: CancellationToken,
    /// Last delivered (epoch, seq) per sending node; one entry per node.
    delivered: Mutex<HashMap<NodeId, (u64, u64)>>,
}

impl ServerShared {
    pub(crate) fn new(local: Arc<dyn LocalNode>, metrics: Arc<Metrics>, window: usize) -> Self {
        ServerShared {
            local,
            metrics,
            window,
            shutdown: CancellationToken::new(),
            delivered: Mutex::new(HashMap::new()),
        }
    }

    fn already_delivered(&self, from: NodeId, epoch: u64, seq: u64) -> bool {
        matches!(self.delivered.lock().get(&from), Some(&(e, s)) if e == epoch && seq <= s)
    }

    fn record_delivered(&self, from: NodeId, epoch: u64, seq: u64) {
        let mut map = self.delivered.lock();
        let entry = map.entry(from).or_insert((epoch, seq));
        if entry.0 != epoch {
            // A newer link from that node (or, rarely, a late completion of an older
            // one): either way only suppression is lost, never a delivery.
            *entry = (epoch, seq);
        } else if seq > entry.1 {
            entry.1 = seq;
        }
    }
}

/// The gRPC service handed to the tonic `Server` by [`super::PeerPlane::service`].
#[derive(Clone)]
pub struct PeerService {
    pub(crate) shared: Arc<ServerShared>,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::ForwardAck, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    type ForwardStream = AckStream;

    async fn forward(
        &self,
        request: Request<Streaming<pb::ForwardBatch>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let inbound = request.into_inner();
        let (ack_tx, ack_rx) = watch::channel(0u64);
        tokio::spawn(receive(self.shared.clone(), inbound, ack_tx));
        // Ends once the receive task dropped `ack_tx` and the last value was sent.
        let acks = futures::stream::unfold(ack_rx, |mut rx| async move {
            rx.changed().await.ok()?;
            let up_to = *rx.borrow_and_update();
            Some((Ok(pb::ForwardAck { up_to }), rx))
        });
        Ok(Response::new(Box::pin(acks)))
    }

    async fn take_session(
        &self,
        request: Request<pb::TakeSessionRequest>,
    ) -> Result<Response<pb::TakeSessionReply>, Status> {
        let req = request.into_inner();
        tracing::debug!(from = req.from, client_id = %req.client_id, "session handover requested");
        let session = self
            .shared
            .local
            .take_session(&req.client_id, req.from)
            .await;
        Ok(Response::new(pb::TakeSessionReply { session }))
    }

    async fn announce_connect(
        &self,
        request: Request<pb::AnnounceConnectRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let req = request.into_inner();
        for a in &req.announcements {
            self.shared
                .local
                .connect_announced(req.from, &a.client_id, a.connected_at_ms);
        }
        Ok(Response::new(pb::Empty {}))
    }
}

/// A delivery in flight: resolves to the batch's (from, epoch, seq) once delivered.
type Delivery = BoxFuture<'static, (NodeId, u64, u64)>;

async fn receive(
    shared: Arc<ServerShared>,
    mut inbound: Streaming<pb::ForwardBatch>,
    ack_tx: watch::Sender<u64>,
) {
    let window = shared.window.max(1);
    let mut pending: FuturesOrdered<Delivery> = FuturesOrdered::new();
    let mut reading = true;
    loop {
        tokio::select! {
            biased;
            Some(done) = pending.next(), if !pending.is_empty() => {
                ack_completed(&shared, &mut pending, &ack_tx, done);
            }
            _ = shared.shutdown.cancelled(), if reading => reading = false,
            msg = inbound.message(), if reading && pending.len() < window => match msg {
                Ok(Some(batch)) => {
                    pending.push_back(start_delivery(&shared, batch));
                    // A delivery into memory completes at once: acknowledge it now,
                    // then let the local connections write what it queued before the
                    // next batch is decoded, so the sender's batches and this node's
                    // writes to subscribers overlap instead of taking turns. The
                    // connections it woke wait in this worker's LIFO slot, which no
                    // other worker steals: without the yield they wait for as long
                    // as batches keep coming (the sending side's counterpart is
                    // `PeerPlane::packets_per_yield`).
                    if let Some(Some(done)) = pending.next().now_or_never() {
                        ack_completed(&shared, &mut pending, &ack_tx, done);
                    }
                    tokio::task::yield_now().await;
                }
                Ok(None) => reading = false,
                Err(status) => {
                    tracing::debug!(%status, "forward stream from peer broke");
                    reading = false;
                }
            },
            else => break,
        }
    }
}

/// Records `done`, the delivery that just completed at the head of `pending`, and
/// every following one already complete, then publishes one cumulative ack for them.
fn ack_completed(
    shared: &ServerShared,
    pending: &mut FuturesOrdered<Delivery>,
    ack_tx: &watch::Sender<u64>,
    done: (NodeId, u64, u64),
) {
    let mut last = done;
    shared.record_delivered(last.0, last.1, last.2);
    while let Some(Some(more)) = pending.next().now_or_never() {
        shared.record_delivered(more.0, more.1, more.2);
        last = more;
    }
    // Never fails: a watch keeps the value even if the sender went away.
    ack_tx.send_replace(last.2);
}

fn start_delivery(shared: &ServerShared, batch: pb::ForwardBatch) -> Delivery {
    let (from, epoch, seq) = (batch.from, batch.epoch, batch.seq);
    if shared.already_delivered(from, epoch, seq) {
        // Re-sent after a reconnect, delivered before: acknowledge in order only.
        return futures::future::ready((from, epoch, seq)).boxed();
    }
    let mut bytes = 0u64;
    let msgs: Vec<Forward> = batch
        .messages
        .into_iter()
        .map(|m| {
            bytes += (m.topic.len() + m.message.len()) as u64;
            Forward {
                topic: m.topic,
                qos: qos_from_wire(m.qos, from),
                message: m.message,
                shared: m.shared.map(|s| (s.group, s.filter)),
                target: (!m.target_client.is_empty()).then_some(m.target_client),
            }
        })
        .collect();
    shared.metrics.received(from, msgs.len() as u64, bytes);
    let delivery = shared.local.deliver(from, msgs);
    async move {
        delivery.await;
        (from, epoch, seq)
    }
    .boxed()
}

/// Peers are our own code, so an out-of-range QoS is a bug on the sender: deliver at
/// the strongest QoS rather than drop (or loop re-sending a rejected batch).
fn qos_from_wire(qos: u32, from: NodeId) -> u8 {
    match u8::try_from(qos) {
        Ok(q @ 0..=2) => q,
        _ => {
            tracing::warn!(
                qos,
                from,
                "forwarded message with invalid QoS; delivered as QoS 2"
            );
            2
        }
    }
}
