//! Per-publisher sequence tracking: which (publisher, sequence) a subscriber group has
//! seen, to count lost and duplicated deliveries.
//!
//! One bit per sequence number (a 10 s run at 300k msg/s is 375 KB per tracked
//! publisher). A subscriber keeps its own sets; members of one shared-subscription
//! group are merged at the end (OR of the sets), since each message goes to one of
//! them.

/// A growable bit set over sequence numbers.
#[derive(Debug, Default, Clone)]
pub struct SeqSet {
    words: Vec<u64>,
    /// Deliveries marked, duplicates included.
    pub received: u64,
}

impl SeqSet {
    /// Marks `seq`; true if it was new.
    pub fn mark(&mut self, seq: u64) -> bool {
        self.received += 1;
        let word = (seq / 64) as usize;
        if word >= self.words.len() {
            self.words.resize((word + 1).max(self.words.len() * 2), 0);
        }
        let bit = 1u64 << (seq % 64);
        let new = self.words[word] & bit == 0;
        self.words[word] |= bit;
        new
    }

    /// Adds `other`'s marks to this set.
    pub fn merge(&mut self, other: &SeqSet) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
        self.received += other.received;
    }

    /// Distinct sequence numbers marked.
    pub fn unique(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Distinct sequence numbers below `limit` (what a publisher actually sent).
    pub fn unique_below(&self, limit: u64) -> u64 {
        let full = (limit / 64) as usize;
        let mut n: u64 = self
            .words
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rem = limit % 64;
        if rem > 0
            && let Some(w) = self.words.get(full)
        {
            n += u64::from((w & ((1u64 << rem) - 1)).count_ones());
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_unique_and_duplicates() {
        let mut s = SeqSet::default();
        assert!(s.mark(0));
        assert!(s.mark(65));
        assert!(!s.mark(65));
        assert_eq!(s.unique(), 2);
        assert_eq!(s.received, 3);
        assert_eq!(s.unique_below(65), 1);
        assert_eq!(s.unique_below(66), 2);
        let mut t = SeqSet::default();
        t.mark(1);
        t.mark(65);
        s.merge(&t);
        assert_eq!(s.unique(), 3);
        assert_eq!(s.received, 5);
    }
}
