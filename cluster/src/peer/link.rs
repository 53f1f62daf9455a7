//! The sending side of the data plane: one [`Link`] per set peer, and its writer
//! task that owns the peer's Forward stream.
//!
//! Flow: [`Link::offer`] puts a message into the peer's bounded queue (never waits);
//! the writer drains the queue into batches (up to `batch_max` messages or about
//! `batch_max_bytes`), writes them to the stream and keeps them until the peer's
//! cumulative ack covers them; at most `window` batches are unacknowledged. When the
//! window is full the writer stops draining, the queue fills and new offers are
//! refused: backpressure ends at the publisher's node as `QueueFull`.
//!
//! When the stream breaks, QoS 1/2 messages of unacknowledged batches are re-sent,
//! in order and under their original seq, on the next stream before anything new;
//! QoS 0 messages of those batches are dropped (`stream_lost`). While the peer is
//! down the queue keeps QoS 1/2 (bounded) and the writer reconnects with jittered
//! exponential backoff until the peer returns or the link is removed, which fails
//! every waiting receiver with `PeerRemoved`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use ferromq_proto::peer::v1 as pb;

use super::PeerOptions;
use super::error::ForwardError;
use super::metrics::PeerMetrics;
use crate::{Forward, NodeId};

pub(crate) type AckSender = oneshot::Sender<Result<(), ForwardError>>;
pub(crate) type AckReceiver = oneshot::Receiver<Result<(), ForwardError>>;

/// Stream state, read on the offer path to decide QoS 0 admission.
const CONNECTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

struct Item {
    msg: Forward,
    ack: Option<AckSender>,
}

/// What the plane keeps per set peer. Dropping it stops the writer and announcer.
pub(crate) struct Link {
    queue: mpsc::Sender<Item>,
    state: Arc<AtomicU8>,
    pub(crate) channel: watch::Sender<Channel>,
    pub(crate) announce: mpsc::Sender<pb::Announcement>,
    pub(crate) metrics: Arc<PeerMetrics>,
    cancel: CancellationToken,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Link {
    /// Create the link and spawn its writer (needs a Tokio runtime).
    pub(crate) fn spawn(
        self_id: NodeId,
        node: NodeId,
        channel: Channel,
        opts: Arc<PeerOptions>,
        metrics: Arc<PeerMetrics>,
    ) -> Link {
        // Capacity 0 would panic in tokio: an option of 0 means 1.
        let (queue, rx) = mpsc::channel(opts.forward_queue.max(1));
        let (announce, announce_rx) = mpsc::channel(opts.announce_queue.max(1));
        let (chan_tx, chan_rx) = watch::channel(channel);
        let state = Arc::new(AtomicU8::new(CONNECTING));
        let cancel = CancellationToken::new();
        let writer = Writer {
            self_id,
            node,
            epoch: rand::random(),
            next_seq: 1,
            rx,
            channel: chan_rx.clone(),
            state: state.clone(),
            metrics: metrics.clone(),
            cancel: cancel.clone(),
            carry: Vec::new(),
            in_flight: VecDeque::new(),
            opts: opts.clone(),
        };
        tokio::spawn(writer.run());
        tokio::spawn(super::announce::run(
            self_id,
            node,
            announce_rx,
            chan_rx,
            opts,
            metrics.clone(),
            cancel.clone(),
        ));
        Link {
            queue,
            state,
            channel: chan_tx,
            announce,
            metrics,
            cancel,
        }
    }

    /// Whether the stream is not up or the queue is more than half full.
    fn backlogged(&self) -> bool {
        self.state.load(Ordering::Relaxed) != UP
            || self.queue.capacity() < self.queue.max_capacity() / 2
    }

    /// Offer a message whose publisher need not wait for this peer (see
    /// `PeerPlane::forward_unawaited`): `None` once queued, unless the link is
    /// backlogged. Waiting while it is backlogged is the backpressure that keeps
    /// publishers from filling the queue with messages acknowledged at once, which
    /// would end in `QueueFull` refusals instead of slower acknowledgements. A
    /// refusal (full queue, removed link) comes back as a receiver already answered.
    pub(crate) fn offer_unawaited(&self, msg: Forward) -> Option<AckReceiver> {
        if msg.qos == 0 || self.backlogged() {
            return self.offer(msg);
        }
        let mut rx = self.offer(msg)?;
        match rx.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => {
                self.metrics.unawaited.inc();
                None
            }
            Ok(answer) => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(answer);
                Some(rx)
            }
            Err(oneshot::error::TryRecvError::Closed) => Some(rx),
        }
    }

    /// Offer one message. Overflow policy (enforced here, never blocking the caller):
    /// - queue full: QoS 0 dropped (`queue_full`), QoS 1/2 answered `QueueFull` at once;
    /// - stream down after a failure: QoS 0 dropped (`peer_down`), QoS 1/2 queued;
    /// - link removed meanwhile: QoS 0 dropped, QoS 1/2 answered `PeerRemoved`.
    pub(crate) fn offer(&self, msg: Forward) -> Option<AckReceiver> {
        if msg.qos == 0 {
            if self.state.load(Ordering::Relaxed) == DOWN {
                self.metrics.peer_down.inc();
                return None;
            }
            match self.queue.try_send(Item { msg, ack: None }) {
                Ok(()) => self.metrics.depth.inc(),
                Err(mpsc::error::TrySendError::Full(_)) => self.metrics.queue_full.inc(),
                Err(mpsc::error::TrySendError::Closed(_)) => self.metrics.peer_removed.inc(),
            }
            return None;
        }
        let (tx, rx) = oneshot::channel();
        match self.queue.try_send(Item { msg, ack: Some(tx) }) {
            Ok(()) => self.metrics.depth.inc(),
            Err(mpsc::error::TrySendError::Full(item)) => {
                self.metrics.queue_full.inc();
                item.fail(ForwardError::QueueFull);
            }
            Err(mpsc::error::TrySendError::Closed(item)) => {
                self.metrics.peer_removed.inc();
                item.fail(ForwardError::PeerRemoved);
            }
        }
        Some(rx)
    }
}

impl Item {
    fn fail(self, err: ForwardError) {
        if let Some(ack) = self.ack {
            // The publisher may have stopped waiting: nothing to tell then.
            let _ = ack.send(Err(err));
        }
    }
}

fn wire_size(m: &pb::ForwardMessage) -> usize {
    m.topic.len() + m.message.len()
}

fn to_wire(msg: Forward) -> pb::ForwardMessage {
    pb::ForwardMessage {
        topic: msg.topic,
        qos: u32::from(msg.qos),
        message: msg.message,
        shared: msg
            .shared
            .map(|(group, filter)| pb::SharedTarget { group, filter }),
        target_client: msg.target.unwrap_or_default(),
    }
}

/// A batch written to the stream and not yet acknowledged.
struct InFlight {
    seq: u64,
    /// QoS 1/2 messages, kept for a re-send after a reconnect.
    resend: Vec<pb::ForwardMessage>,
    /// QoS 0 messages in the batch as last written (not re-sent).
    qos0: u64,
    /// Messages and bytes counted as sent when acknowledged.
    messages: u64,
    bytes: u64,
    acks: Vec<AckSender>,
}

enum End {
    /// Link removed or plane dropped.
    Stopped,
    /// The stream failed or was never opened.
    Lost(String),
    /// A new channel was set for the peer.
    NewChannel,
}

struct Writer {
    self_id: NodeId,
    node: NodeId,
    epoch: u64,
    next_seq: u64,
    rx: mpsc::Receiver<Item>,
    channel: watch::Receiver<Channel>,
    state: Arc<AtomicU8>,
    metrics: Arc<PeerMetrics>,
    cancel: CancellationToken,
    /// Drained from the queue, not yet in a batch (at most `batch_max`). A `Vec`, so
    /// `recv_many` fills it in place and a batch drains it from the front: each
    /// message is moved as few times as possible on the way to the stream.
    carry: Vec<Item>,
    in_flight: VecDeque<InFlight>,
    opts: Arc<PeerOptions>,
}

impl Writer {
    async fn run(mut self) {
        let min = self.opts.reconnect_min.max(Duration::from_millis(1));
        let max = self.opts.reconnect_max.max(min);
        let mut backoff = min;
        loop {
            let channel = self.channel.borrow_and_update().clone();
            let started = tokio::time::Instant::now();
            let end = self.session(channel).await;
            // A stream that stayed up a while resets the backoff; one that opens and
            // drops at once (peer shutting down) keeps backing off.
            if self.state.load(Ordering::Relaxed) == UP && started.elapsed() >= max {
                backoff = min;
            }
            match end {
                End::Stopped => break,
                End::NewChannel => {
                    self.set_state(CONNECTING);
                    self.prepare_resend();
                    continue;
                }
                End::Lost(why) => {
                    tracing::debug!(peer = self.node, %why, "forward stream to peer lost");
                    self.set_state(DOWN);
                    self.prepare_resend();
                }
            }
            let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
            let wait = backoff + Duration::from_millis(jitter);
            backoff = (backoff * 2).min(max);
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                changed = self.channel.changed() => if changed.is_err() { break },
            }
        }
        self.set_state(DOWN);
        self.fail_all().await;
    }

    fn set_state(&self, s: u8) {
        self.state.store(s, Ordering::Relaxed);
        self.metrics.up.set(i64::from(s == UP));
    }

    /// One stream: open it, re-send what is unacknowledged, then pump.
    async fn session(&mut self, channel: Channel) -> End {
        let window = self.opts.window.max(1);
        // Never more than `window` batches are unacknowledged, so this never fills.
        let (out_tx, out_rx) = mpsc::channel::<pb::ForwardBatch>(window);
        let outbound =
            futures::stream::unfold(
                out_rx,
                |mut rx| async move { rx.recv().await.map(|b| (b, rx)) },
            );
        let mut client = pb::peer_client::PeerClient::new(channel)
            .max_decoding_message_size(self.opts.max_message_bytes)
            .max_encoding_message_size(self.opts.max_message_bytes);
        let opened = tokio::select! {
            _ = self.cancel.cancelled() => return End::Stopped,
            r = tokio::time::timeout(self.opts.rpc_timeout, client.forward(outbound)) => r,
        };
        let mut acks = match opened {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => return End::Lost(status.to_string()),
            Err(_) => return End::Lost("stream open timed out".into()),
        };
        self.set_state(UP);
        for b in &self.in_flight {
            let batch = pb::ForwardBatch {
                from: self.self_id,
                epoch: self.epoch,
                seq: b.seq,
                messages: b.resend.clone(),
            };
            if out_tx.try_send(batch).is_err() {
                return End::Lost("outbound closed".into());
            }
        }
        let batch_max = self.opts.batch_max.max(1);
        loop {
            if let Err(end) = self.flush(&out_tx, window) {
                return end;
            }
            let room = self.in_flight.len() < window && self.carry.len() < batch_max;
            let want = batch_max.saturating_sub(self.carry.len());
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return End::Stopped,
                changed = self.channel.changed() => {
                    return if changed.is_err() { End::Stopped } else { End::NewChannel };
                }
                ack = acks.message() => match ack {
                    Ok(Some(a)) => self.acked(a.up_to),
                    Ok(None) => return End::Lost("peer ended the stream".into()),
                    Err(status) => return End::Lost(status.to_string()),
                },
                n = self.rx.recv_many(&mut self.carry, want), if room => {
                    if n == 0 {
                        return End::Stopped;
                    }
                }
            }
        }
    }

    /// Cut batches from `carry` while the window has room and write them.
    fn flush(&mut self, out: &mpsc::Sender<pb::ForwardBatch>, window: usize) -> Result<(), End> {
        let batch_max = self.opts.batch_max.max(1);
        while self.in_flight.len() < window && !self.carry.is_empty() {
            // The batch: the longest prefix of `carry` within both limits (at least
            // one message, however large).
            let mut take = 0;
            let mut bytes = 0usize;
            for item in &self.carry {
                let size = item.msg.topic.len() + item.msg.message.len();
                if take >= batch_max || (take > 0 && bytes + size > self.opts.batch_max_bytes) {
                    break;
                }
                take += 1;
                bytes += size;
            }
            let mut messages = Vec::with_capacity(take);
            let mut resend = Vec::new();
            let mut acks = Vec::new();
            let mut qos0 = 0u64;
            for item in self.carry.drain(..take) {
                let m = to_wire(item.msg);
                match item.ack {
                    Some(ack) => {
                        resend.push(m.clone());
                        acks.push(ack);
                    }
                    None => qos0 += 1,
                }
                messages.push(m);
            }
            let count = messages.len() as u64;
            self.metrics.depth.sub(count as i64);
            let seq = self.next_seq;
            self.next_seq += 1;
            self.in_flight.push_back(InFlight {
                seq,
                resend,
                qos0,
                messages: count,
                bytes: bytes as u64,
                acks,
            });
            let batch = pb::ForwardBatch {
                from: self.self_id,
                epoch: self.epoch,
                seq,
                messages,
            };
            if out.try_send(batch).is_err() {
                return Err(End::Lost("outbound closed".into()));
            }
        }
        Ok(())
    }

    fn acked(&mut self, up_to: u64) {
        while self.in_flight.front().is_some_and(|b| b.seq <= up_to) {
            let Some(b) = self.in_flight.pop_front() else {
                break;
            };
            self.metrics.sent_messages.inc_by(b.messages);
            self.metrics.sent_bytes.inc_by(b.bytes);
            for ack in b.acks {
                let _ = ack.send(Ok(()));
            }
        }
    }

    /// After a lost stream: unacknowledged QoS 0 is dropped, QoS 1/2 kept for re-send.
    fn prepare_resend(&mut self) {
        for b in &mut self.in_flight {
            self.metrics.stream_lost.inc_by(b.qos0);
            b.qos0 = 0;
            b.messages = b.resend.len() as u64;
            b.bytes = b.resend.iter().map(wire_size).sum::<usize>() as u64;
        }
        self.in_flight.retain(|b| !b.acks.is_empty());
    }

    /// Link removed: everything still held is answered `PeerRemoved`.
    async fn fail_all(&mut self) {
        let mut dropped = 0u64;
        for b in self.in_flight.drain(..) {
            dropped += b.messages;
            for ack in b.acks {
                let _ = ack.send(Err(ForwardError::PeerRemoved));
            }
        }
        let mut queued = 0i64;
        // Close first so offers racing with the removal are refused, then drain.
        self.rx.close();
        let carried: Vec<Item> = self.carry.drain(..).collect();
        for item in carried {
            queued += 1;
            item.fail(ForwardError::PeerRemoved);
        }
        while let Some(item) = self.rx.recv().await {
            queued += 1;
            item.fail(ForwardError::PeerRemoved);
        }
        self.metrics.depth.sub(queued);
        self.metrics
            .peer_removed
            .inc_by(dropped + u64::try_from(queued).unwrap_or(0));
    }
}
