//! The parts of a connection that most connections never use, allocated on first use.
//!
//! Topic aliases (v5 clients that ask for them), acknowledgements held until their
//! store write is durable or a cluster peer confirmed them, and the retained messages
//! a SUBSCRIBE still has to send: empty tables and queues are ~170 bytes, which every
//! idle connection would carry inline. The connection holds `Option<Box<Rare>>`
//! instead (one pointer), allocated by the first use and kept from then on.
//!
//! The waits these parts need (the group commit, a confirmation, a read barrier) are
//! one boxed future, built only while one is due, for the same reason: the state of a
//! `select!` branch sits in every connection's future whether it runs or not.

use std::collections::VecDeque;

use ferromq_codec::{Packet, ReasonCode};
use tokio::sync::{oneshot, watch};

use super::alias::{InboundAliases, OutboundAliases};
use crate::broker::Confirm;
use crate::retained::RetainedCursor;
use crate::store::Flushed;

/// See the module docs.
pub(super) struct Rare {
    pub inbound_aliases: InboundAliases,
    pub outbound_aliases: OutboundAliases,
    /// Packets that may go out only once the store generation they carry is on disk
    /// (PUBACK/PUBREC of stored messages, PUBREL), in order: once one waits, later
    /// acknowledgements queue behind it [MQTT-4.6.0-2] [MQTT-4.6.0-3].
    pub gated: VecDeque<Gated>,
    /// Retained messages still to send for SUBSCRIBEs (persistence on), in order.
    pub retained_cursors: VecDeque<RetainedCursor>,
    /// Cluster node: the read barrier the retained cursors wait for, so a SUBSCRIBE
    /// sees every retained write acknowledged anywhere before it (read-your-writes).
    pub retained_barrier: Option<oneshot::Receiver<()>>,
}

/// An acknowledgement (or a PUBREL, or a PUBLISH behind one) held until its store
/// write is durable and, on a cluster node, its confirmation came.
pub(super) struct Gated {
    pub generation: u64,
    pub confirm: Option<Confirm>,
    /// The confirmation failed with this reason code.
    pub failure: Option<ReasonCode>,
    pub packet: Packet,
}

/// What [`wait`] saw.
pub(super) enum Event {
    /// The group commit made progress.
    Flushed,
    /// The retained cursors' read barrier passed.
    Barrier,
    /// The oldest held packet's confirmation came.
    Confirmed(Result<(), ReasonCode>),
}

impl Rare {
    /// Empty, with the Topic Alias Maximums in both directions.
    pub fn new(inbound_alias_maximum: u16, outbound_alias_maximum: u16) -> Rare {
        Rare {
            inbound_aliases: InboundAliases::new(inbound_alias_maximum),
            outbound_aliases: OutboundAliases::new(outbound_alias_maximum),
            gated: VecDeque::new(),
            retained_cursors: VecDeque::new(),
            retained_barrier: None,
        }
    }

    /// Whether [`wait`] has something to wait for; `flushing` says the connection
    /// follows the group commit (strict durability).
    pub fn waiting(&self, flushing: bool) -> bool {
        (flushing && !self.gated.is_empty())
            || self.retained_barrier.is_some()
            || self.front_confirm_due()
    }

    fn front_confirm_due(&self) -> bool {
        self.gated.front().is_some_and(|g| g.confirm.is_some())
    }

    /// Applies what [`wait`] saw.
    pub fn on_event(&mut self, event: Event) {
        match event {
            Event::Flushed => {}
            Event::Barrier => self.retained_barrier = None,
            Event::Confirmed(result) => {
                if let Some(front) = self.gated.front_mut() {
                    front.confirm = None;
                    front.failure = result.err();
                }
            }
        }
    }
}

/// Waits for the group commit (while packets are held for it), the read barrier and
/// the oldest held packet's confirmation, in that order of preference. Call it only
/// while [`Rare::waiting`]; it never resolves otherwise.
pub(super) async fn wait(rare: &mut Rare, flushed: &mut Option<watch::Receiver<Flushed>>) -> Event {
    let flush_due = flushed.is_some() && !rare.gated.is_empty();
    let confirm_due = rare.front_confirm_due();
    let Rare {
        gated,
        retained_barrier,
        ..
    } = rare;
    let barrier_due = retained_barrier.is_some();
    tokio::select! {
        biased;
        _ = wait_flushed(flushed), if flush_due => Event::Flushed,
        _ = async {
            if let Some(rx) = retained_barrier.as_mut() {
                let _ = rx.await;
            }
        }, if barrier_due => Event::Barrier,
        result = front_confirm(gated), if confirm_due => Event::Confirmed(result),
        else => std::future::pending().await,
    }
}

/// The confirmation the oldest held packet waits for.
async fn front_confirm(gated: &mut VecDeque<Gated>) -> Result<(), ReasonCode> {
    match gated.front_mut().and_then(|g| g.confirm.as_mut()) {
        Some(confirm) => confirm.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the group commit made progress (or never, without a store).
async fn wait_flushed(flushed: &mut Option<watch::Receiver<Flushed>>) {
    match flushed {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
