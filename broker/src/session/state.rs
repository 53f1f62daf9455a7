//! The per-session delivery state machine, without I/O (raft-rs `RawNode` style).
//!
//! Deliveries go in (`enqueue`), packets to send come out (`next_outgoing`,
//! `resume`), acknowledgements move entries through the QoS 1 / QoS 2 stages. The
//! connection task drives it; unit tests drive it directly.
//!
//! Bounds and overflow policy (enforced in [`SessionState::enqueue`]):
//! - the queue of not-yet-sent deliveries holds at most `max_messages` entries and
//!   `max_bytes` bytes; when full, the **newest** delivery is dropped (as Mosquitto
//!   does), so what a client already waits for keeps its order;
//! - QoS 0 deliveries for an offline session are dropped unless `queue_qos0` is set
//!   (Mosquitto's `queue_qos0_messages`);
//! - in flight (sent, not acknowledged) at most `window` QoS 1/2 messages, the smaller
//!   of the client's Receive Maximum [MQTT-3.3.4-9] and `max_inflight_messages`; the
//!   rest waits in the queue;
//! - at most `memory_window` deliveries of a persistent session's queue are held in
//!   memory ([`Slot::Loaded`]); once that many are, further QoS 1/2 deliveries (which
//!   the store already holds) are queued as [`Slot::OnDisk`] markers: a sequence number
//!   and a weight, about 40 bytes instead of the message. The queue stays one ordered
//!   sequence, so `max_messages` / `max_bytes` and the drop policy above cover markers
//!   too. When a marker reaches the front, [`SessionState::wanted`] names the next
//!   markers to read back and [`SessionState::load`] puts the messages in; the I/O
//!   itself is the caller's (`Session::next_outgoing`).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::message::Delivery;
use ferromq_codec::QoS;

/// Limits of one session's queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub queue_qos0: bool,
    /// Deliveries held in memory before further stored ones are kept as markers.
    pub memory_window: usize,
}

/// A queued delivery: in memory, or only in the store.
#[derive(Debug, Clone)]
pub enum Slot {
    Loaded(Delivery),
    /// The delivery is in the store under this entry's sequence number (QoS 1/2
    /// only: QoS 0 is never stored).
    OnDisk,
}

/// One entry of the queue. `weight` is what it counts against `max_bytes`, fixed at
/// enqueue so that loading a marker never changes the accounting.
#[derive(Debug, Clone)]
pub struct Queued {
    pub seq: u64,
    pub weight: usize,
    pub slot: Slot,
}

/// How [`SessionState::enqueue`] queued a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Held in memory.
    Loaded(u64),
    /// Kept as a marker: the caller must have the delivery in the store under `seq`.
    OnDisk(u64),
}

impl Enqueued {
    pub fn seq(&self) -> u64 {
        match self {
            Enqueued::Loaded(s) | Enqueued::OnDisk(s) => *s,
        }
    }
}

/// Whether a retained delivery may be queued now (see
/// [`SessionState::room_for_retained`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    Yes,
    /// Not now: wait for the queue to drain.
    Later,
    /// Never: the message alone exceeds `max_bytes`.
    Never,
}

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue reached its message or byte limit (newest dropped).
    QueueFull,
    /// QoS 0 to an offline session, `queue_qos0_messages` off.
    OfflineQos0,
    /// The message expired before it could be sent [MQTT-3.3.2-5].
    Expired,
    /// Storing it for a persistent session failed (disk full, I/O error).
    StoreFailed,
    /// The session has ended and left this node (the caller may relay it: a
    /// cluster handover, see `Broker::hand_over_session`).
    Ended,
}

/// Where an outbound QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 sent, waiting for PUBREC.
    AwaitPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp,
}

#[derive(Debug, Clone)]
pub struct Inflight {
    /// The delivery's sequence number (its key in the durable store).
    pub seq: u64,
    pub packet_id: u16,
    pub delivery: Delivery,
    pub stage: Stage,
}

/// A packet the connection must send, produced by the state machine.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A PUBLISH; `packet_id` is 0 for QoS 0.
    Publish {
        /// Sequence number of the delivery in this session (store key).
        seq: u64,
        packet_id: u16,
        dup: bool,
        delivery: Delivery,
    },
    /// A PUBREL being resent on resume [MQTT-4.4.0-1].
    PubRel { packet_id: u16 },
}

/// What a PUBREC did to the outbound QoS 2 flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubRecOutcome {
    /// Moved to "PUBREL sent": send PUBREL (after the state is durable).
    Released(u64),
    /// An error PUBREC ended the flow.
    Ended(u64),
    /// Already released: send PUBREL again.
    AlreadyReleased,
    /// Unknown packet id.
    Unknown,
}

/// Result of an incoming QoS 2 PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingQos2 {
    /// First time this packet id is seen: route the message, answer PUBREC.
    New,
    /// A retransmission of a message already routed: answer PUBREC, do not route again
    /// [MQTT-4.3.3-9].
    Duplicate,
    /// Routing it would exceed the server Receive Maximum: DISCONNECT 0x93
    /// [MQTT-3.3.4-9].
    ReceiveMaximumExceeded,
}

#[derive(Debug)]
pub struct SessionState {
    /// Shared by every session of a broker.
    limits: Arc<QueueLimits>,
    /// Deliveries not yet sent, in sequence order.
    queue: VecDeque<Queued>,
    /// Entries of `queue` that are [`Slot::OnDisk`] markers.
    on_disk: usize,
    /// Sequence number of the next delivery: orders the store's records.
    next_seq: u64,
    queued_bytes: usize,
    /// Sent QoS 1/2 messages in sending order, so a resume resends them in that order
    /// [MQTT-4.6.0-1]. At most `window` entries: removal by packet id is a short scan.
    inflight: VecDeque<Inflight>,
    next_packet_id: u16,
    /// Inbound QoS 2 packet ids answered with PUBREC, waiting for PUBREL. Allocated
    /// by the first one: most sessions never receive QoS 2, and an empty set is 48
    /// bytes in every session.
    #[expect(
        clippy::box_collection,
        reason = "a box is 8 bytes inline, an empty set 48: the set is rarely used"
    )]
    incoming_qos2: Option<Box<HashSet<u16>>>,
    /// Deliveries dropped since the last `take_dropped`, by reason (for statistics).
    dropped_full: u64,
    dropped_expired: u64,
}

impl SessionState {
    pub fn new(limits: impl Into<Arc<QueueLimits>>) -> Self {
        SessionState {
            limits: limits.into(),
            queue: VecDeque::new(),
            on_disk: 0,
            next_seq: 1,
            queued_bytes: 0,
            inflight: VecDeque::new(),
            next_packet_id: 1,
            incoming_qos2: None,
            dropped_full: 0,
            dropped_expired: 0,
        }
    }

    /// Adds a delivery to the queue, applying the overflow policy in the module docs.
    /// `stored` says the caller writes this delivery to the store (persistent session,
    /// QoS 1/2): it may then be queued as a marker ([`Enqueued::OnDisk`]), which it is
    /// when `memory_window` deliveries are in memory, or when markers are queued
    /// already (so that the markers stay one contiguous run behind the loaded ones).
    pub fn enqueue(
        &mut self,
        delivery: Delivery,
        online: bool,
        stored: bool,
    ) -> Result<Enqueued, DropReason> {
        if !online && delivery.qos == QoS::AtMostOnce && !self.limits.queue_qos0 {
            return Err(DropReason::OfflineQos0);
        }
        let weight = delivery.message.weight();
        if self.queue.len() >= self.limits.max_messages
            || self.queued_bytes + weight > self.limits.max_bytes
        {
            self.dropped_full += 1;
            return Err(DropReason::QueueFull);
        }
        self.queued_bytes += weight;
        let seq = self.next_seq;
        self.next_seq += 1;
        let spill = stored
            && delivery.qos != QoS::AtMostOnce
            && (self.on_disk > 0 || self.loaded() >= self.limits.memory_window);
        if spill {
            self.on_disk += 1;
            self.queue.push_back(Queued {
                seq,
                weight,
                slot: Slot::OnDisk,
            });
            Ok(Enqueued::OnDisk(seq))
        } else {
            self.queue.push_back(Queued {
                seq,
                weight,
                slot: Slot::Loaded(delivery),
            });
            Ok(Enqueued::Loaded(seq))
        }
    }

    /// Whether a retained message of `weight` bytes sent on SUBSCRIBE may be queued
    /// now. Retained messages are paced so that they fill at most half of the queue
    /// (`max_messages` and `max_bytes`), leaving the other half to live traffic, and
    /// so are never dropped for a full queue; into an empty queue one always fits
    /// unless it alone exceeds `max_bytes`.
    pub fn room_for_retained(&self, weight: usize) -> Room {
        if weight > self.limits.max_bytes {
            return Room::Never;
        }
        if self.queue.is_empty() {
            return Room::Yes;
        }
        let half_messages = (self.limits.max_messages / 2).max(1);
        let half_bytes = self.limits.max_bytes / 2;
        if self.queue.len() < half_messages && self.queued_bytes + weight <= half_bytes {
            Room::Yes
        } else {
            Room::Later
        }
    }

    /// Deliveries held in memory in the queue.
    pub fn loaded(&self) -> usize {
        self.queue.len() - self.on_disk
    }

    /// Queued entries that are markers of deliveries held only in the store.
    pub fn on_disk(&self) -> usize {
        self.on_disk
    }

    /// Takes back the delivery just queued (its store write failed).
    pub fn unqueue_last(&mut self, seq: u64) {
        if self.queue.back().is_some_and(|q| q.seq == seq)
            && let Some(q) = self.queue.pop_back()
        {
            self.remove_accounting(&q);
        }
    }

    fn remove_accounting(&mut self, q: &Queued) {
        self.queued_bytes -= q.weight;
        if matches!(q.slot, Slot::OnDisk) {
            self.on_disk -= 1;
        }
    }

    /// Restores a queued delivery loaded from the store.
    pub fn restore_queued(&mut self, seq: u64, delivery: Delivery) {
        let weight = delivery.message.weight();
        self.queued_bytes += weight;
        self.queue.push_back(Queued {
            seq,
            weight,
            slot: Slot::Loaded(delivery),
        });
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Restores a queued delivery left in the store (beyond the memory window at
    /// start), as a marker.
    pub fn restore_on_disk(&mut self, seq: u64, weight: usize) {
        self.queued_bytes += weight;
        self.on_disk += 1;
        self.queue.push_back(Queued {
            seq,
            weight,
            slot: Slot::OnDisk,
        });
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// The markers to read from the store next, in order: empty unless a marker is at
    /// the front of the queue and the in-flight window has room for it (markers are
    /// QoS 1/2). At most enough to bring the memory window back to full (at least one).
    pub fn wanted(&self, window: usize) -> Vec<u64> {
        if !self
            .queue
            .front()
            .is_some_and(|q| matches!(q.slot, Slot::OnDisk))
            || self.inflight.len() >= window
        {
            return Vec::new();
        }
        let max = self
            .limits
            .memory_window
            .saturating_sub(self.loaded())
            .max(1);
        self.queue
            .iter()
            .filter(|q| matches!(q.slot, Slot::OnDisk))
            .take(max)
            .map(|q| q.seq)
            .collect()
    }

    /// Puts deliveries read from the store in place of the markers `wanted` named.
    /// A wanted marker without a delivery in `found` (the record is gone: it expired
    /// on load) is dropped from the queue. Returns how many were dropped that way.
    pub fn load(&mut self, wanted: &[u64], found: Vec<(u64, Delivery)>) -> usize {
        let mut found = found.into_iter().peekable();
        let mut missing = 0;
        let mut i = 0;
        for &seq in wanted {
            while i < self.queue.len() && self.queue[i].seq < seq {
                i += 1;
            }
            if i >= self.queue.len() || self.queue[i].seq != seq {
                continue;
            }
            if !matches!(self.queue[i].slot, Slot::OnDisk) {
                i += 1;
                continue;
            }
            while found.peek().is_some_and(|(s, _)| *s < seq) {
                found.next();
            }
            match found.next_if(|(s, _)| *s == seq) {
                Some((_, delivery)) => {
                    self.queue[i].slot = Slot::Loaded(delivery);
                    self.on_disk -= 1;
                    i += 1;
                }
                None => {
                    if let Some(q) = self.queue.remove(i) {
                        self.remove_accounting(&q);
                    }
                    missing += 1;
                }
            }
        }
        missing
    }

    /// Every marker, to read back the whole queue (the session stops being
    /// persistent, so its records are about to be deleted).
    pub fn all_on_disk(&self) -> Vec<u64> {
        self.queue
            .iter()
            .filter(|q| matches!(q.slot, Slot::OnDisk))
            .map(|q| q.seq)
            .collect()
    }

    /// Restores an in-flight delivery loaded from the store.
    pub fn restore_inflight(&mut self, seq: u64, delivery: Delivery, stage: Stage, packet_id: u16) {
        self.inflight.push_back(Inflight {
            seq,
            packet_id,
            delivery,
            stage,
        });
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Restores an inbound QoS 2 packet id awaiting PUBREL.
    pub fn restore_incoming_qos2(&mut self, packet_id: u16) {
        self.incoming_qos2.get_or_insert_default().insert(packet_id);
    }

    /// Number of deliveries waiting to be sent.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Number of QoS 1/2 messages sent and not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Drops queued QoS 0 deliveries when the client goes offline, unless configured
    /// to keep them.
    pub fn on_offline(&mut self) {
        if !self.limits.queue_qos0 {
            let mut bytes = self.queued_bytes;
            self.queue.retain(|q| {
                // Markers are QoS 1/2: kept.
                let keep = !matches!(&q.slot, Slot::Loaded(d) if d.qos == QoS::AtMostOnce);
                if !keep {
                    bytes -= q.weight;
                }
                keep
            });
            self.queued_bytes = bytes;
        }
    }

    /// Takes the next packet to send, if the in-flight window allows. Expired messages
    /// are discarded on the way [MQTT-3.3.2-5]. Stops at a marker: see
    /// [`SessionState::wanted`].
    pub fn next_outgoing(&mut self, window: usize, now: Instant) -> Option<Outgoing> {
        loop {
            let front = match &self.queue.front()?.slot {
                Slot::Loaded(d) => d,
                Slot::OnDisk => return None,
            };
            if front.message.is_expired(now) {
                let q = self.queue.pop_front()?;
                self.remove_accounting(&q);
                self.dropped_expired += 1;
                continue;
            }
            if front.qos != QoS::AtMostOnce && self.inflight.len() >= window {
                return None;
            }
            let q = self.queue.pop_front()?;
            self.remove_accounting(&q);
            let (seq, delivery) = match q.slot {
                Slot::Loaded(d) => (q.seq, d),
                Slot::OnDisk => return None,
            };
            if delivery.qos == QoS::AtMostOnce {
                return Some(Outgoing::Publish {
                    seq,
                    packet_id: 0,
                    dup: false,
                    delivery,
                });
            }
            let packet_id = self.allocate_packet_id();
            let stage = if delivery.qos == QoS::AtLeastOnce {
                Stage::AwaitPubAck
            } else {
                Stage::AwaitPubRec
            };
            self.inflight.push_back(Inflight {
                seq,
                packet_id,
                delivery: delivery.clone(),
                stage,
            });
            return Some(Outgoing::Publish {
                seq,
                packet_id,
                dup: false,
                delivery,
            });
        }
    }

    /// The next free non-zero packet id [MQTT-2.2.1-3]; ids of messages in flight are
    /// never reused before their flow completes [MQTT-2.2.1-4].
    fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|f| f.packet_id == id) {
                return id;
            }
        }
    }

    fn position(&self, packet_id: u16, stage: Stage) -> Option<usize> {
        self.inflight
            .iter()
            .position(|f| f.packet_id == packet_id && f.stage == stage)
    }

    /// PUBACK received: the QoS 1 flow is complete. Returns the delivery's sequence
    /// number, `None` if the id is unknown.
    pub fn on_puback(&mut self, packet_id: u16) -> Option<u64> {
        let i = self.position(packet_id, Stage::AwaitPubAck)?;
        self.inflight.remove(i).map(|f| f.seq)
    }

    /// PUBREC received: answer PUBREL and wait for PUBCOMP [MQTT-4.3.3-4]. A PUBREC
    /// with an error reason ends the flow (v5). Returns what changed.
    pub fn on_pubrec(&mut self, packet_id: u16, success: bool) -> PubRecOutcome {
        if let Some(i) = self.position(packet_id, Stage::AwaitPubRec) {
            let seq = self.inflight[i].seq;
            if success {
                self.inflight[i].stage = Stage::AwaitPubComp;
                return PubRecOutcome::Released(seq);
            }
            self.inflight.remove(i);
            return PubRecOutcome::Ended(seq);
        }
        // A retransmitted PUBREC for a flow already in PUBREL: answer PUBREL again.
        if self.position(packet_id, Stage::AwaitPubComp).is_some() {
            PubRecOutcome::AlreadyReleased
        } else {
            PubRecOutcome::Unknown
        }
    }

    /// PUBCOMP received: the QoS 2 flow is complete. Returns the sequence number.
    pub fn on_pubcomp(&mut self, packet_id: u16) -> Option<u64> {
        let i = self.position(packet_id, Stage::AwaitPubComp)?;
        self.inflight.remove(i).map(|f| f.seq)
    }

    /// Forgets an in-flight message that will never be sent (it exceeds the client's
    /// Maximum Packet Size [MQTT-3.1.2-25]).
    pub fn forget(&mut self, packet_id: u16) -> Option<u64> {
        let i = self
            .inflight
            .iter()
            .position(|f| f.packet_id == packet_id)?;
        self.inflight.remove(i).map(|f| f.seq)
    }

    /// Inbound QoS 2 PUBLISH with `packet_id`.
    pub fn on_incoming_qos2(&mut self, packet_id: u16, receive_maximum: u16) -> IncomingQos2 {
        let ids = self.incoming_qos2.get_or_insert_default();
        if ids.contains(&packet_id) {
            return IncomingQos2::Duplicate;
        }
        if ids.len() >= usize::from(receive_maximum) {
            return IncomingQos2::ReceiveMaximumExceeded;
        }
        ids.insert(packet_id);
        IncomingQos2::New
    }

    /// Inbound PUBREL: releases the packet id. False if it was unknown (v5 answers
    /// PUBCOMP 0x92).
    pub fn on_pubrel(&mut self, packet_id: u16) -> bool {
        self.incoming_qos2
            .as_mut()
            .is_some_and(|ids| ids.remove(&packet_id))
    }

    /// Packets to resend when a session resumes on a new connection: unacknowledged
    /// PUBLISHes with DUP set and PUBRELs, in original order [MQTT-4.4.0-1]
    /// [MQTT-3.3.1-1].
    pub fn resume(&mut self, now: Instant) -> Vec<Outgoing> {
        let mut out = Vec::with_capacity(self.inflight.len());
        let mut expired = 0;
        self.inflight.retain(|f| {
            // A QoS 1 / QoS 2-before-PUBREC message that expired while offline is not
            // resent; one past PUBREC must complete its flow.
            if f.stage != Stage::AwaitPubComp && f.delivery.message.is_expired(now) {
                expired += 1;
                return false;
            }
            out.push(match f.stage {
                Stage::AwaitPubComp => Outgoing::PubRel {
                    packet_id: f.packet_id,
                },
                _ => Outgoing::Publish {
                    seq: f.seq,
                    packet_id: f.packet_id,
                    dup: true,
                    delivery: f.delivery.clone(),
                },
            });
            true
        });
        self.dropped_expired += expired;
        out
    }

    /// Returns and resets the drop counters (queue full, expired).
    pub fn take_dropped(&mut self) -> (u64, u64) {
        let r = (self.dropped_full, self.dropped_expired);
        self.dropped_full = 0;
        self.dropped_expired = 0;
        r
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::message::Message;
    use bytes::Bytes;
    use ferromq_codec::{ByteString, PublishProperties};
    use std::time::Duration;

    fn limits(max_messages: usize) -> QueueLimits {
        QueueLimits {
            max_messages,
            max_bytes: usize::MAX,
            queue_qos0: false,
            memory_window: usize::MAX,
        }
    }

    fn delivery(qos: QoS, payload: &'static str) -> Delivery {
        Delivery {
            message: Message::new(
                ByteString::from("t"),
                Bytes::from_static(payload.as_bytes()),
                qos,
                false,
                PublishProperties::default(),
                None,
            ),
            qos,
            retain: false,
            subscription_ids: vec![],
        }
    }

    fn payload(o: &Outgoing) -> (u16, bool, Bytes) {
        match o {
            Outgoing::Publish {
                packet_id,
                dup,
                delivery,
                ..
            } => (*packet_id, *dup, delivery.message.payload.clone()),
            Outgoing::PubRel { packet_id } => (*packet_id, false, Bytes::new()),
        }
    }

    #[test]
    fn window_holds_back_qos1_until_ack() {
        // [MQTT-3.3.4-9] no more than Receive Maximum unacknowledged QoS 1/2 PUBLISHes.
        let mut s = SessionState::new(limits(100));
        for p in ["a", "b", "c"] {
            s.enqueue(delivery(QoS::AtLeastOnce, p), true, false)
                .unwrap();
        }
        let now = Instant::now();
        let a = s.next_outgoing(2, now).unwrap();
        let b = s.next_outgoing(2, now).unwrap();
        assert!(s.next_outgoing(2, now).is_none());
        assert!(s.on_puback(payload(&a).0).is_some());
        let c = s.next_outgoing(2, now).unwrap();
        assert_eq!(payload(&c).2, Bytes::from_static(b"c"));
        assert_ne!(
            payload(&b).0,
            payload(&c).0,
            "packet ids in flight are unique [MQTT-2.2.1-4]"
        );
    }

    #[test]
    fn qos0_is_not_counted_in_window() {
        let mut s = SessionState::new(limits(100));
        s.enqueue(delivery(QoS::AtLeastOnce, "a"), true, false)
            .unwrap();
        s.enqueue(delivery(QoS::AtMostOnce, "b"), true, false)
            .unwrap();
        let now = Instant::now();
        assert_eq!(payload(&s.next_outgoing(1, now).unwrap()).0, 1);
        assert_eq!(payload(&s.next_outgoing(1, now).unwrap()).0, 0);
    }

    #[test]
    fn full_queue_drops_newest() {
        let mut s = SessionState::new(limits(2));
        s.enqueue(delivery(QoS::AtLeastOnce, "1"), false, false)
            .unwrap();
        s.enqueue(delivery(QoS::AtLeastOnce, "2"), false, false)
            .unwrap();
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, "3"), false, false),
            Err(DropReason::QueueFull)
        );
        let now = Instant::now();
        assert_eq!(
            payload(&s.next_outgoing(10, now).unwrap()).2,
            Bytes::from_static(b"1")
        );
        assert_eq!(
            payload(&s.next_outgoing(10, now).unwrap()).2,
            Bytes::from_static(b"2")
        );
        assert!(s.next_outgoing(10, now).is_none());
    }

    #[test]
    fn offline_qos0_is_dropped_unless_configured() {
        let mut s = SessionState::new(limits(10));
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce, "x"), false, false),
            Err(DropReason::OfflineQos0)
        );
        let mut keep = SessionState::new(QueueLimits {
            queue_qos0: true,
            ..limits(10)
        });
        assert!(
            keep.enqueue(delivery(QoS::AtMostOnce, "x"), false, false)
                .is_ok()
        );
    }

    #[test]
    fn resume_resends_with_dup_and_pubrel_in_order() {
        // [MQTT-4.4.0-1] unacknowledged PUBLISH resent with DUP, PUBREL resent.
        let mut s = SessionState::new(limits(10));
        s.enqueue(delivery(QoS::ExactlyOnce, "q2"), true, false)
            .unwrap();
        s.enqueue(delivery(QoS::AtLeastOnce, "q1"), true, false)
            .unwrap();
        let now = Instant::now();
        let first = s.next_outgoing(10, now).unwrap();
        let second = s.next_outgoing(10, now).unwrap();
        assert!(matches!(
            s.on_pubrec(payload(&first).0, true),
            PubRecOutcome::Released(_)
        ));
        let resent = s.resume(now);
        assert_eq!(resent.len(), 2);
        assert!(
            matches!(resent[0], Outgoing::PubRel { packet_id } if packet_id == payload(&first).0)
        );
        let (id, dup, body) = payload(&resent[1]);
        assert_eq!(
            (id, dup, body),
            (payload(&second).0, true, Bytes::from_static(b"q1"))
        );
        assert!(s.on_pubcomp(payload(&first).0).is_some());
        assert!(s.on_puback(payload(&second).0).is_some());
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn incoming_qos2_dedup_and_receive_maximum() {
        let mut s = SessionState::new(limits(10));
        assert_eq!(s.on_incoming_qos2(1, 2), IncomingQos2::New);
        // [MQTT-4.3.3-9] a retransmission is not delivered again.
        assert_eq!(s.on_incoming_qos2(1, 2), IncomingQos2::Duplicate);
        assert_eq!(s.on_incoming_qos2(2, 2), IncomingQos2::New);
        assert_eq!(
            s.on_incoming_qos2(3, 2),
            IncomingQos2::ReceiveMaximumExceeded
        );
        assert!(s.on_pubrel(1));
        assert!(!s.on_pubrel(1));
        assert_eq!(s.on_incoming_qos2(3, 2), IncomingQos2::New);
    }

    #[test]
    fn expired_messages_are_not_sent() {
        let mut s = SessionState::new(limits(10));
        let mut d = delivery(QoS::AtLeastOnce, "old");
        let props = PublishProperties {
            message_expiry_interval: Some(1),
            ..Default::default()
        };
        d.message = Message::new(
            ByteString::from("t"),
            Bytes::new(),
            QoS::AtLeastOnce,
            false,
            props,
            None,
        );
        s.enqueue(d, false, false).unwrap();
        assert!(
            s.next_outgoing(10, Instant::now() + Duration::from_secs(2))
                .is_none()
        );
        assert_eq!(s.take_dropped(), (0, 1));
    }

    #[test]
    fn packet_ids_wrap_and_skip_zero_and_inflight() {
        let mut s = SessionState::new(limits(usize::MAX));
        s.next_packet_id = u16::MAX;
        s.enqueue(delivery(QoS::AtLeastOnce, "a"), true, false)
            .unwrap();
        s.enqueue(delivery(QoS::AtLeastOnce, "b"), true, false)
            .unwrap();
        let now = Instant::now();
        assert_eq!(payload(&s.next_outgoing(10, now).unwrap()).0, u16::MAX);
        assert_eq!(payload(&s.next_outgoing(10, now).unwrap()).0, 1);
    }

    fn windowed(max_messages: usize, memory_window: usize) -> SessionState {
        SessionState::new(QueueLimits {
            memory_window,
            ..limits(max_messages)
        })
    }

    fn body(o: &Outgoing) -> Bytes {
        payload(o).2
    }

    #[test]
    fn stored_deliveries_beyond_the_window_become_markers() {
        let mut s = windowed(100, 2);
        let mut seqs = Vec::new();
        for p in ["1", "2", "3", "4", "5"] {
            seqs.push(
                s.enqueue(delivery(QoS::AtLeastOnce, p), false, true)
                    .unwrap(),
            );
        }
        assert!(matches!(seqs[0], Enqueued::Loaded(1)));
        assert!(matches!(seqs[1], Enqueued::Loaded(2)));
        assert!(seqs[2..].iter().all(|e| matches!(e, Enqueued::OnDisk(_))));
        assert_eq!((s.queued(), s.loaded(), s.on_disk()), (5, 2, 3));
        let bytes = s.queued_bytes;
        assert_eq!(bytes, 5 * delivery(QoS::AtLeastOnce, "1").message.weight());

        let now = Instant::now();
        assert_eq!(body(&s.next_outgoing(10, now).unwrap()), "1");
        assert_eq!(body(&s.next_outgoing(10, now).unwrap()), "2");
        // A marker at the front: nothing to send until it is loaded.
        assert!(s.next_outgoing(10, now).is_none());
        // Refill up to the memory window, in order.
        assert_eq!(s.wanted(10), vec![3, 4]);
        let missing = s.load(
            &[3, 4],
            vec![
                (3, delivery(QoS::AtLeastOnce, "3")),
                (4, delivery(QoS::AtLeastOnce, "4")),
            ],
        );
        assert_eq!(missing, 0);
        assert_eq!((s.loaded(), s.on_disk()), (2, 1));
        assert_eq!(body(&s.next_outgoing(10, now).unwrap()), "3");
        assert_eq!(body(&s.next_outgoing(10, now).unwrap()), "4");
        assert_eq!(s.wanted(10), vec![5]);
        s.load(&[5], vec![(5, delivery(QoS::AtLeastOnce, "5"))]);
        assert_eq!(body(&s.next_outgoing(10, now).unwrap()), "5");
        assert_eq!((s.queued(), s.queued_bytes), (0, 0));
    }

    #[test]
    fn limits_and_drop_policy_cover_markers() {
        // Newest dropped, counting markers as queued messages and bytes.
        let mut s = windowed(3, 1);
        for p in ["1", "2", "3"] {
            s.enqueue(delivery(QoS::AtLeastOnce, p), false, true)
                .unwrap();
        }
        assert_eq!(s.on_disk(), 2);
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, "4"), false, true),
            Err(DropReason::QueueFull)
        );
        let w = delivery(QoS::AtLeastOnce, "1").message.weight();
        let mut b = SessionState::new(QueueLimits {
            max_bytes: 2 * w,
            memory_window: 1,
            ..limits(100)
        });
        b.enqueue(delivery(QoS::AtLeastOnce, "1"), false, true)
            .unwrap();
        b.enqueue(delivery(QoS::AtLeastOnce, "2"), false, true)
            .unwrap();
        assert_eq!(
            b.enqueue(delivery(QoS::AtLeastOnce, "3"), false, true),
            Err(DropReason::QueueFull)
        );
        assert_eq!(b.take_dropped(), (1, 0));
    }

    #[test]
    fn only_stored_qos12_spill_and_markers_stay_contiguous() {
        let mut s = windowed(100, 1);
        s.enqueue(delivery(QoS::AtLeastOnce, "1"), true, true)
            .unwrap();
        // Not stored (clean session) or QoS 0 (never stored): always in memory.
        assert!(matches!(
            s.enqueue(delivery(QoS::AtLeastOnce, "2"), true, false),
            Ok(Enqueued::Loaded(_))
        ));
        assert!(matches!(
            s.enqueue(delivery(QoS::AtMostOnce, "3"), true, true),
            Ok(Enqueued::Loaded(_))
        ));
        assert!(matches!(
            s.enqueue(delivery(QoS::ExactlyOnce, "4"), true, true),
            Ok(Enqueued::OnDisk(4))
        ));
        let now = Instant::now();
        for p in ["1", "2", "3"] {
            assert_eq!(body(&s.next_outgoing(10, now).unwrap()), p);
        }
        // The window has room again, but a marker is queued: the next stored
        // delivery goes behind it as a marker, so order is kept.
        assert!(matches!(
            s.enqueue(delivery(QoS::AtLeastOnce, "5"), true, true),
            Ok(Enqueued::OnDisk(5))
        ));
        assert_eq!(s.wanted(10), vec![4]);
    }

    #[test]
    fn nothing_is_loaded_while_the_inflight_window_is_full() {
        let mut s = windowed(100, 1);
        s.enqueue(delivery(QoS::AtLeastOnce, "1"), true, true)
            .unwrap();
        s.enqueue(delivery(QoS::AtLeastOnce, "2"), true, true)
            .unwrap();
        let first = s.next_outgoing(1, Instant::now()).unwrap();
        assert!(s.wanted(1).is_empty());
        s.on_puback(payload(&first).0);
        assert_eq!(s.wanted(1), vec![2]);
    }

    #[test]
    fn missing_records_drop_their_markers() {
        let mut s = windowed(100, 1);
        for p in ["1", "2", "3", "4"] {
            s.enqueue(delivery(QoS::AtLeastOnce, p), false, true)
                .unwrap();
        }
        let now = Instant::now();
        s.next_outgoing(10, now).unwrap();
        let wanted = s.wanted(10);
        assert_eq!(wanted, vec![2]);
        // Record 2 is gone (expired on load): dropped; 3 and 4 still wait.
        assert_eq!(s.load(&wanted, vec![]), 1);
        assert_eq!((s.queued(), s.on_disk()), (2, 2));
        let all = s.all_on_disk();
        assert_eq!(all, vec![3, 4]);
        s.load(&all, vec![(4, delivery(QoS::AtLeastOnce, "4"))]);
        assert_eq!(s.queued(), 1);
        assert_eq!(body(&s.next_outgoing(10, now).unwrap()), "4");
        assert_eq!(s.queued_bytes, 0);
    }

    #[test]
    fn restored_markers_and_offline_keep_them() {
        let mut s = windowed(100, 1);
        let w = delivery(QoS::AtLeastOnce, "1").message.weight();
        s.restore_queued(7, delivery(QoS::AtLeastOnce, "7"));
        s.restore_on_disk(8, w);
        s.restore_on_disk(9, w);
        s.on_offline();
        assert_eq!((s.queued(), s.on_disk(), s.queued_bytes), (3, 2, 3 * w));
        let next = s
            .enqueue(delivery(QoS::AtLeastOnce, "x"), false, true)
            .unwrap();
        assert_eq!(next, Enqueued::OnDisk(10));
        s.unqueue_last(10);
        assert_eq!((s.queued(), s.on_disk()), (3, 2));
    }

    #[test]
    fn retained_fill_at_most_half_the_queue() {
        let w = delivery(QoS::AtLeastOnce, "1").message.weight();
        let mut s = SessionState::new(QueueLimits {
            max_bytes: 100 * w,
            ..limits(10)
        });
        for _ in 0..4 {
            assert_eq!(s.room_for_retained(w), Room::Yes);
            s.enqueue(delivery(QoS::AtLeastOnce, "1"), true, false)
                .unwrap();
        }
        assert_eq!(s.room_for_retained(w), Room::Yes);
        s.enqueue(delivery(QoS::AtLeastOnce, "1"), true, false)
            .unwrap();
        assert_eq!(s.room_for_retained(w), Room::Later);
        // Byte half, and a message that can never fit.
        let mut b = SessionState::new(QueueLimits {
            max_bytes: 3 * w,
            ..limits(100)
        });
        assert_eq!(
            b.room_for_retained(2 * w),
            Room::Yes,
            "empty queue takes one"
        );
        b.enqueue(delivery(QoS::AtLeastOnce, "1"), true, false)
            .unwrap();
        assert_eq!(b.room_for_retained(w), Room::Later);
        assert_eq!(b.room_for_retained(4 * w), Room::Never);
        let mut one = SessionState::new(limits(1));
        assert_eq!(one.room_for_retained(w), Room::Yes);
        one.enqueue(delivery(QoS::AtLeastOnce, "1"), true, false)
            .unwrap();
        assert_eq!(one.room_for_retained(w), Room::Later);
    }
}
