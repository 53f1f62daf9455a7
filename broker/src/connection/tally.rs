//! What a written batch adds to the broker's counters, added once per batch.
//!
//! At 100 subscribers per PUBLISH every delivery paid five relaxed atomic adds on
//! shared counters and three on the latency histogram: a fifth of the time spent
//! encoding deliveries. The connection counts a batch here, on its own stack, and
//! [`SentTally::add_to`] adds the sums (and flushes this thread's latency histogram)
//! once the batch is encoded. The counters read the same to `$SYS` and `/metrics`;
//! they only move in steps of a batch.

use ferromq_codec::QoS;

use crate::stats::Stats;

/// Counts of one batch; see the module docs.
#[derive(Debug, Default)]
pub(super) struct SentTally {
    /// PUBLISH packets and their payload bytes, by QoS.
    publishes: [u64; 3],
    payload_bytes: [u64; 3],
    /// Packets encoded into the write buffer now (a PUBLISH held behind a durability
    /// gate is counted when it is released).
    pub packets: u64,
}

impl SentTally {
    /// One PUBLISH written (or held back to be written) to the subscriber.
    pub fn publish(&mut self, qos: QoS, payload_len: usize) {
        let i = Stats::qos_index(qos);
        self.publishes[i] += 1;
        self.payload_bytes[i] += payload_len as u64;
    }

    /// Adds the batch to the broker's counters and its latencies to the histogram.
    pub fn add_to(&self, stats: &Stats) {
        let publishes: u64 = self.publishes.iter().sum();
        if publishes > 0 {
            Stats::add(&stats.publish_sent, publishes);
            Stats::add(&stats.publish_bytes_sent, self.payload_bytes.iter().sum());
            for i in 0..3 {
                if self.publishes[i] > 0 {
                    Stats::add(&stats.publish_sent_qos[i], self.publishes[i]);
                    Stats::add(&stats.publish_bytes_sent_qos[i], self.payload_bytes[i]);
                }
            }
            crate::metrics::flush_delivery_latency();
        }
        if self.packets > 0 {
            Stats::add(&stats.packets_sent, self.packets);
        }
    }
}
