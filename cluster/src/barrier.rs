//! Coalesced read index for `read_barrier`.
//!
//! A caller may reuse a ReadIndex round only if that round *started after* the
//! caller arrived (otherwise a write committed just before the call could be
//! missed). Callers take a ticket; rounds run one at a time; a round records the
//! highest ticket issued when it started, and every caller whose ticket it covers
//! takes its result. Callers arriving during a round share the next one.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::ClusterError;
use crate::node::Inner;

#[derive(Default)]
pub struct Barrier {
    tickets: AtomicU64,
    round: tokio::sync::Mutex<()>,
    /// (highest ticket covered, read index) of the last successful round.
    last: Mutex<(u64, u64)>,
}

impl Barrier {
    /// The leader's read index, shared with concurrent callers where safe.
    pub async fn read_index(&self, inner: &Inner) -> Result<u64, ClusterError> {
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let _round = self.round.lock().await;
        {
            let (covered, index) = *self.last.lock();
            if covered >= ticket {
                return Ok(index);
            }
        }
        let covers = self.tickets.load(Ordering::SeqCst);
        let index = inner.read_index().await?;
        *self.last.lock() = (covers, index);
        Ok(index)
    }
}
