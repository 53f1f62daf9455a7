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
//!   rest waits in the queue.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use crate::message::Delivery;
use ferromq_codec::QoS;

/// Limits of one session's queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub queue_qos0: bool,
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
    limits: QueueLimits,
    /// Deliveries not yet sent, with their sequence numbers.
    queue: VecDeque<(u64, Delivery)>,
    /// Sequence number of the next delivery: orders the store's records.
    next_seq: u64,
    queued_bytes: usize,
    /// Sent QoS 1/2 messages in sending order, so a resume resends them in that order
    /// [MQTT-4.6.0-1]. At most `window` entries: removal by packet id is a short scan.
    inflight: VecDeque<Inflight>,
    next_packet_id: u16,
    /// Inbound QoS 2 packet ids answered with PUBREC, waiting for PUBREL.
    incoming_qos2: HashSet<u16>,
    /// Deliveries dropped since the last `take_dropped`, by reason (for statistics).
    dropped_full: u64,
    dropped_expired: u64,
}

impl SessionState {
    pub fn new(limits: QueueLimits) -> Self {
        SessionState {
            limits,
            queue: VecDeque::new(),
            next_seq: 1,
            queued_bytes: 0,
            inflight: VecDeque::new(),
            next_packet_id: 1,
            incoming_qos2: HashSet::new(),
            dropped_full: 0,
            dropped_expired: 0,
        }
    }

    /// Adds a delivery to the queue, applying the overflow policy in the module docs.
    /// Returns its sequence number.
    pub fn enqueue(&mut self, delivery: Delivery, online: bool) -> Result<u64, DropReason> {
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
        self.queue.push_back((seq, delivery));
        Ok(seq)
    }

    /// Takes back the delivery just queued (its store write failed).
    pub fn unqueue_last(&mut self, seq: u64) {
        if self.queue.back().is_some_and(|(s, _)| *s == seq)
            && let Some((_, d)) = self.queue.pop_back()
        {
            self.queued_bytes -= d.message.weight();
        }
    }

    /// Restores a queued delivery loaded from the store.
    pub fn restore_queued(&mut self, seq: u64, delivery: Delivery) {
        self.queued_bytes += delivery.message.weight();
        self.queue.push_back((seq, delivery));
        self.next_seq = self.next_seq.max(seq + 1);
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
        self.incoming_qos2.insert(packet_id);
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
            self.queue.retain(|(_, d)| {
                let keep = d.qos != QoS::AtMostOnce;
                if !keep {
                    bytes -= d.message.weight();
                }
                keep
            });
            self.queued_bytes = bytes;
        }
    }

    /// Takes the next packet to send, if the in-flight window allows. Expired messages
    /// are discarded on the way [MQTT-3.3.2-5].
    pub fn next_outgoing(&mut self, window: usize, now: Instant) -> Option<Outgoing> {
        loop {
            let (_, front) = self.queue.front()?;
            if front.message.is_expired(now) {
                let (_, d) = self.queue.pop_front()?;
                self.queued_bytes -= d.message.weight();
                self.dropped_expired += 1;
                continue;
            }
            if front.qos != QoS::AtMostOnce && self.inflight.len() >= window {
                return None;
            }
            let (seq, delivery) = self.queue.pop_front()?;
            self.queued_bytes -= delivery.message.weight();
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
        if self.incoming_qos2.contains(&packet_id) {
            return IncomingQos2::Duplicate;
        }
        if self.incoming_qos2.len() >= usize::from(receive_maximum) {
            return IncomingQos2::ReceiveMaximumExceeded;
        }
        self.incoming_qos2.insert(packet_id);
        IncomingQos2::New
    }

    /// Inbound PUBREL: releases the packet id. False if it was unknown (v5 answers
    /// PUBCOMP 0x92).
    pub fn on_pubrel(&mut self, packet_id: u16) -> bool {
        self.incoming_qos2.remove(&packet_id)
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
            s.enqueue(delivery(QoS::AtLeastOnce, p), true).unwrap();
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
        s.enqueue(delivery(QoS::AtLeastOnce, "a"), true).unwrap();
        s.enqueue(delivery(QoS::AtMostOnce, "b"), true).unwrap();
        let now = Instant::now();
        assert_eq!(payload(&s.next_outgoing(1, now).unwrap()).0, 1);
        assert_eq!(payload(&s.next_outgoing(1, now).unwrap()).0, 0);
    }

    #[test]
    fn full_queue_drops_newest() {
        let mut s = SessionState::new(limits(2));
        s.enqueue(delivery(QoS::AtLeastOnce, "1"), false).unwrap();
        s.enqueue(delivery(QoS::AtLeastOnce, "2"), false).unwrap();
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, "3"), false),
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
            s.enqueue(delivery(QoS::AtMostOnce, "x"), false),
            Err(DropReason::OfflineQos0)
        );
        let mut keep = SessionState::new(QueueLimits {
            queue_qos0: true,
            ..limits(10)
        });
        assert!(keep.enqueue(delivery(QoS::AtMostOnce, "x"), false).is_ok());
    }

    #[test]
    fn resume_resends_with_dup_and_pubrel_in_order() {
        // [MQTT-4.4.0-1] unacknowledged PUBLISH resent with DUP, PUBREL resent.
        let mut s = SessionState::new(limits(10));
        s.enqueue(delivery(QoS::ExactlyOnce, "q2"), true).unwrap();
        s.enqueue(delivery(QoS::AtLeastOnce, "q1"), true).unwrap();
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
        s.enqueue(d, false).unwrap();
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
        s.enqueue(delivery(QoS::AtLeastOnce, "a"), true).unwrap();
        s.enqueue(delivery(QoS::AtLeastOnce, "b"), true).unwrap();
        let now = Instant::now();
        assert_eq!(payload(&s.next_outgoing(10, now).unwrap()).0, u16::MAX);
        assert_eq!(payload(&s.next_outgoing(10, now).unwrap()).0, 1);
    }
}
