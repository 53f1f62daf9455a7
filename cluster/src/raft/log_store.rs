//! The Raft log and vote in the node's sled database.
//!
//! Trees (all prefixed `raft_`, the rest of the Db belongs to the broker):
//! - `raft_log`: big-endian `u64` index -> protobuf [`pb::Entry`]; big-endian keys
//!   keep sled's order equal to log order, so ranges and "last entry" are cheap.
//! - `raft_meta`: `vote` ([`pb::Vote`]), `committed` and `last_purged`
//!   ([`pb::LogId`]), plus `node_id` (written by the cluster on first start).
//!
//! Durability: `save_vote` and `append` return (append: signal `IOFlushed`) only after
//! `flush_async` completed, as Raft requires before answering a vote or acknowledging
//! entries to the leader (reference/stack.md 2.4 rule 3). Truncation and purge are
//! flushed too. Concurrent flushes are grouped by sled.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use ferromq_proto::raft::v1 as pb;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use prost::Message;

use super::codec;
use super::{Entry, LogId, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// Tree names, shared with the cluster for `node_id`.
pub const LOG_TREE: &str = "raft_log";
pub const META_TREE: &str = "raft_meta";

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The sled-backed log store; cheap to clone (the trees are handles).
#[derive(Clone)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    /// Opens (creates) the trees in `db`.
    pub fn open(db: &sled::Db) -> io::Result<Self> {
        Ok(Self {
            log: db.open_tree(LOG_TREE).map_err(io_err)?,
            meta: db.open_tree(META_TREE).map_err(io_err)?,
        })
    }

    /// True when neither a vote nor a log entry was ever stored: a brand-new node.
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.meta.get(KEY_VOTE).map_err(io_err)?.is_none()
            && self.log.is_empty()
            && self.meta.get(KEY_PURGED).map_err(io_err)?.is_none())
    }

    fn get_log_id(&self, key: &[u8]) -> io::Result<Option<LogId>> {
        match self.meta.get(key).map_err(io_err)? {
            None => Ok(None),
            Some(v) => {
                let id = pb::LogId::decode(v.as_ref()).map_err(io_err)?;
                Ok(Some(codec::log_id_from_pb(&id)))
            }
        }
    }

    fn put_log_id(&self, key: &[u8], id: Option<&LogId>) -> io::Result<()> {
        match id {
            Some(id) => {
                self.meta
                    .insert(key, codec::log_id_to_pb(id).encode_to_vec())
                    .map_err(io_err)?;
            }
            None => {
                self.meta.remove(key).map_err(io_err)?;
            }
        }
        Ok(())
    }

    fn decode_entry(v: &[u8]) -> io::Result<Entry> {
        let e = pb::Entry::decode(v).map_err(io_err)?;
        codec::entry_from_pb(e).map_err(io_err)
    }

    async fn flush(&self) -> io::Result<()> {
        self.log.flush_async().await.map_err(io_err)?;
        self.meta.flush_async().await.map_err(io_err)?;
        Ok(())
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(key(*i)),
            Bound::Excluded(i) => Bound::Excluded(key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(key(*i)),
            Bound::Excluded(i) => Bound::Excluded(key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for kv in self.log.range::<[u8; 8], _>((start, end)) {
            let (_, v) = kv.map_err(io_err)?;
            out.push(Self::decode_entry(&v)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        match self.meta.get(KEY_VOTE).map_err(io_err)? {
            None => Ok(None),
            Some(v) => {
                let vote = pb::Vote::decode(v.as_ref()).map_err(io_err)?;
                Ok(Some(codec::vote_from_pb(&vote)))
            }
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id = self.get_log_id(KEY_PURGED)?;
        let last = match self.log.last().map_err(io_err)? {
            Some((_, v)) => Some(Self::decode_entry(&v)?.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.meta
            .insert(KEY_VOTE, codec::vote_to_pb(vote).encode_to_vec())
            .map_err(io_err)?;
        self.meta.flush_async().await.map_err(io_err)?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not flushed: losing it only means replaying less on restart (openraft then
        // learns the commit index from the leader again).
        self.put_log_id(KEY_COMMITTED, committed.as_ref())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.get_log_id(KEY_COMMITTED)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for e in entries {
            batch.insert(&key(e.log_id.index), codec::entry_to_pb(&e).encode_to_vec());
        }
        self.log.apply_batch(batch).map_err(io_err)?;
        let res = self.log.flush_async().await.map(|_| ()).map_err(io_err);
        callback.io_completed(res);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|id| id.index + 1).unwrap_or(0);
        let mut batch = sled::Batch::default();
        for kv in self.log.range(key(from)..) {
            let (k, _) = kv.map_err(io_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(io_err)?;
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Record the purge point first: a crash in between leaves extra entries, never
        // a log whose start is unknown.
        self.put_log_id(KEY_PURGED, Some(&log_id))?;
        self.meta.flush_async().await.map_err(io_err)?;
        let mut batch = sled::Batch::default();
        for kv in self.log.range(..=key(log_id.index)) {
            let (k, _) = kv.map_err(io_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(io_err)?;
        self.flush().await
    }
}
