//! The durable store: sessions, their queues and in-flight state, and retained
//! messages, in one sled database per node.
//!
//! # Guarantee
//! With `durability = "strict"` (the default) a QoS 1/2 message is acknowledged to its
//! publisher (PUBACK / PUBREC) only after every record it produced (a queue entry of
//! each persistent subscriber, the retained record, the inbound QoS 2 packet id) is
//! flushed to disk. Flushes are group-committed: one `flush_async` covers every write
//! made before it started, so throughput does not collapse to one fsync per message.
//! A `kill -9` therefore loses nothing that was acknowledged. State changes that only
//! cost a redelivery if lost (a message sent, an ack received) are not waited for;
//! the PUBREL of an outbound QoS 2 flow is, so a restart never sends a completed
//! message again. `periodic` acknowledges at once and flushes every `flush_interval`.
//!
//! # Layout on disk
//! `DIR/FORMAT` holds `ferromq-store 1`; `DIR/store/` is the sled database with trees:
//! - `sessions`: client id -> JSON [`SessionRecord`] (expiry, subscriptions, when it
//!   went offline);
//! - `outbound`: `client 0x00 seq` -> envelope of a queued or in-flight delivery;
//! - `outstate`: `client 0x00 seq` -> `[stage][packet id]` once it was sent;
//! - `inbound`: `client 0x00 packet id` -> `[]`, QoS 2 ids awaiting PUBREL;
//! - `wills`: client id -> `[deadline ms][envelope]`, a delayed will pending;
//! - `retained`: topic -> envelope. With persistence on this tree *is* the retained
//!   index: nothing of it is held in memory (beyond sled's page cache, bounded by
//!   `cache_capacity`). A SUBSCRIBE is answered by a [`RetainedCursor`] that scans the
//!   key range of the filter's literal prefix in batches.
//!
//! # Bounded memory
//! - Queues: loading at start reads in-flight entries and the first
//!   `queue_memory_window` queued deliveries of each session; the rest become markers
//!   (sequence number + weight, see `session::state`) read back as the client drains.
//! - Retained: loading at start reads only the 9-byte envelope header of each record
//!   (to count them and drop the expired), never a payload.
//!
//! # Layout
//! - [`codec`]: envelopes and keys.
//! - this file: opening (format check), writes, group commit, loading.

pub mod codec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ferromq_config::{Durability, PersistenceConfig};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use tokio::sync::{Notify, watch};

use crate::message::{Delivery, Message};
use crate::retained::OverBudget;
use crate::session::state::Stage;

/// A raw key and value for the store.
type KeyValue = (Vec<u8>, Vec<u8>);

thread_local! {
    /// Queue writes collected while a QoS 2 message is routed (see
    /// [`Store::route_qos2_atomically`]); routing is synchronous, so the collection
    /// never spans an `.await` or another task.
    static COLLECTED: std::cell::RefCell<Option<Vec<KeyValue>>> =
        const { std::cell::RefCell::new(None) };
}

/// The format this version reads and writes.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_FILE: &str = "FORMAT";
/// The last flushed generation, written (atomically, by rename) after each flush.
/// sled silently truncates its log at a damaged record on open; a database whose own
/// high-water mark is below this file's lost acknowledged records and is refused.
const HWM_FILE: &str = "CHECKPOINT";
const HWM_KEY: &[u8] = b"hwm";
const FORMAT_PREFIX: &str = "ferromq-store ";

/// Why the store cannot be opened. Each names the path and the problem; the broker
/// exits with code 74 and writes nothing.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} was written by a newer ferromq (store format {found}, this version reads {FORMAT_VERSION}); refusing to start so nothing is overwritten"
    )]
    NewerVersion { path: PathBuf, found: u32 },
    #[error("{path} is corrupt: {problem}; refusing to start so nothing is overwritten")]
    Corrupt { path: PathBuf, problem: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A failed write (disk full, I/O error): the affected publish is refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store write failed: {0}")]
pub struct StoreError(pub String);

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// A subscription as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubscriptionRow {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub identifier: Option<u32>,
}

/// A persistent session as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionRecord {
    pub expiry_interval: u32,
    /// When the client went offline (Unix ms); `None` while connected.
    pub offline_since_unix_ms: Option<u64>,
    pub subscriptions: Vec<SubscriptionRow>,
}

/// Progress of the group commit, published to waiting connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Every write with a generation up to this is on disk.
    pub done: u64,
    /// Writes up to this generation may be lost: a flush failed (disk full, I/O).
    pub failed: u64,
}

/// A stored delivery: its sequence number, the delivery, and where its flow stands
/// if it was sent (stage and packet id).
pub type StoredDelivery = (u64, Delivery, Option<(Stage, u16)>);

/// A session loaded at start.
#[derive(Debug)]
pub struct LoadedSession {
    pub client_id: String,
    pub record: SessionRecord,
    /// In-flight entries and the first `queue_memory_window` queued ones, in
    /// sequence order.
    pub outbound: Vec<StoredDelivery>,
    /// Queued entries beyond the memory window, left on disk: (sequence number,
    /// weight), in sequence order, all after the queued ones of `outbound`.
    pub outbound_on_disk: Vec<(u64, usize)>,
    pub inbound_qos2: Vec<u16>,
    /// A pending delayed will: its deadline (Unix ms) and message.
    pub will: Option<(u64, Arc<Message>)>,
}

/// Everything loaded at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub sessions: Vec<LoadedSession>,
    /// Retained messages in the store (they stay there).
    pub retained: usize,
    /// Messages and sessions found expired across the downtime and removed.
    pub expired_messages: usize,
}

pub struct Store {
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    sessions: sled::Tree,
    outbound: sled::Tree,
    outstate: sled::Tree,
    inbound: sled::Tree,
    wills: sled::Tree,
    retained: sled::Tree,
    /// Records in `retained`, kept exactly from sled's insert/remove results
    /// (`Tree::len` walks the whole tree).
    retained_count: AtomicU64,
    /// Bytes of the records in `retained` (key + stored record), the measure of
    /// `limits.retained_max_bytes` with persistence on; kept from sled's results too.
    retained_bytes: AtomicU64,
    /// Makes a budgeted retained write's check and insert one step.
    retained_write: parking_lot::Mutex<()>,
    queue_memory_window: usize,
    durability: Durability,
    written: AtomicU64,
    flush_requested: Notify,
    flushed_tx: watch::Sender<Flushed>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Opens a copy of the database first and checks its high-water mark against
/// `CHECKPOINT`: sled repairs (truncates) a damaged log when it opens it, so only a copy
/// may be opened before we know the store is whole. Costs one copy of the database per
/// start; the copy lives in `DIR/.verify` and is removed afterwards.
fn verify_on_copy(dir: &Path, db_path: &Path, cache_capacity: u64) -> Result<(), OpenError> {
    let scratch = dir.join(".verify");
    let _ = std::fs::remove_dir_all(&scratch);
    let copy = scratch.join("store");
    copy_dir(db_path, &copy).map_err(|source| OpenError::Write {
        path: scratch.clone(),
        source,
    })?;
    let result = (|| {
        let db = sled::Config::new()
            .path(&copy)
            .cache_capacity(cache_capacity.min(16 << 20))
            .open()
            .map_err(|e| corrupt(db_path, e.to_string()))?;
        let meta = db
            .open_tree("meta")
            .map_err(|e| corrupt(db_path, e.to_string()))?;
        check_hwm(dir, db_path, &meta)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result.map(|_| ())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Compares the database's high-water mark with `CHECKPOINT`; returns the database's.
fn check_hwm(dir: &Path, db_path: &Path, meta: &sled::Tree) -> Result<u64, OpenError> {
    let sled_hwm = match meta
        .get(HWM_KEY)
        .map_err(|e| corrupt(db_path, e.to_string()))?
    {
        Some(v) => u64::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| corrupt(db_path, "unreadable high-water mark"))?,
        ),
        None => 0,
    };
    let hwm_path = dir.join(HWM_FILE);
    match std::fs::read_to_string(&hwm_path) {
        Ok(text) => {
            let file_hwm: u64 = text.trim().parse().map_err(|_| {
                corrupt(
                    &hwm_path,
                    format!("unreadable checkpoint {:?}", text.trim()),
                )
            })?;
            if file_hwm > sled_hwm {
                return Err(corrupt(
                    db_path,
                    format!(
                        "the database ends at checkpoint {sled_hwm} but {} records checkpoint {file_hwm}: flushed records are missing (damaged or truncated log)",
                        hwm_path.display()
                    ),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(OpenError::Read {
                path: hwm_path,
                source,
            });
        }
    }
    Ok(sled_hwm)
}

fn corrupt(path: &Path, problem: impl Into<String>) -> OpenError {
    OpenError::Corrupt {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

impl Store {
    /// Opens (or creates) the store in `cfg.path`, checking the format version first.
    pub fn open(cfg: &PersistenceConfig) -> Result<Store, OpenError> {
        let dir = cfg.path.clone();
        std::fs::create_dir_all(&dir).map_err(|source| OpenError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let format_path = dir.join(FORMAT_FILE);
        let db_path = dir.join("store");
        let fresh = match std::fs::read(&format_path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let version = text
                    .trim()
                    .strip_prefix(FORMAT_PREFIX)
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .ok_or_else(|| {
                        corrupt(
                            &format_path,
                            format!("unreadable format marker {:?}", text.trim()),
                        )
                    })?;
                if version > FORMAT_VERSION {
                    return Err(OpenError::NewerVersion {
                        path: format_path,
                        found: version,
                    });
                }
                if !db_path.exists() {
                    return Err(corrupt(&db_path, "the database directory is missing"));
                }
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if db_path.exists() {
                    return Err(corrupt(
                        &format_path,
                        "missing format marker next to an existing database",
                    ));
                }
                true
            }
            Err(source) => {
                return Err(OpenError::Read {
                    path: format_path,
                    source,
                });
            }
        };
        if !fresh && dir.join(HWM_FILE).exists() {
            verify_on_copy(&dir, &db_path, cfg.cache_capacity)?;
        }
        let flush_every = match cfg.durability {
            Durability::Strict => Some(1000),
            Durability::Periodic => Some(cfg.flush_interval.as_millis().max(1) as u64),
        };
        let db = sled::Config::new()
            .path(&db_path)
            .cache_capacity(cfg.cache_capacity)
            .flush_every_ms(flush_every)
            .open()
            .map_err(|e| corrupt(&db_path, e.to_string()))?;
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| corrupt(&db_path, e.to_string()))
        };
        let meta = tree("meta")?;
        let sled_hwm = check_hwm(&dir, &db_path, &meta)?;
        let store = Store {
            meta,
            sessions: tree("sessions")?,
            outbound: tree("outbound")?,
            outstate: tree("outstate")?,
            inbound: tree("inbound")?,
            wills: tree("wills")?,
            retained: tree("retained")?,
            retained_count: AtomicU64::new(0),
            retained_bytes: AtomicU64::new(0),
            retained_write: parking_lot::Mutex::new(()),
            queue_memory_window: cfg.queue_memory_window.max(1),
            path: dir,
            db,
            durability: cfg.durability,
            written: AtomicU64::new(sled_hwm),
            flush_requested: Notify::new(),
            flushed_tx: watch::Sender::new(Flushed {
                done: sled_hwm,
                failed: 0,
            }),
        };
        if fresh {
            store
                .db
                .flush()
                .map_err(|e| corrupt(&db_path, e.to_string()))?;
            let tmp = format_path.with_extension("tmp");
            std::fs::write(&tmp, format!("{FORMAT_PREFIX}{FORMAT_VERSION}\n"))
                .and_then(|_| std::fs::rename(&tmp, &format_path))
                .map_err(|source| OpenError::Write {
                    path: format_path,
                    source,
                })?;
        }
        Ok(store)
    }

    /// The sled database: the cluster layer keeps its Raft log and state in trees of
    /// its own in it (sled allows one open instance per directory).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn wrote(&self) -> u64 {
        self.written.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The generation of the latest write: a caller that wrote waits for
    /// `Flushed::done >= generation()` before acknowledging (strict mode).
    pub fn generation(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Whether acknowledgements wait for flushes.
    pub fn strict(&self) -> bool {
        self.durability == Durability::Strict
    }

    /// Asks the flusher for a flush covering every write made so far.
    pub fn request_flush(&self) {
        self.flush_requested.notify_one();
    }

    /// Watches the group commit's progress.
    pub fn flushed(&self) -> watch::Receiver<Flushed> {
        self.flushed_tx.subscribe()
    }

    /// The group-commit loop: each round flushes everything written before it began,
    /// then tells the waiters. Runs until `stop` is cancelled, then flushes once more.
    pub async fn run_flusher(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = self.flush_requested.notified() => {}
                _ = stop.cancelled() => {
                    let target = self.generation();
                    let _ = self.meta.insert(HWM_KEY, &target.to_be_bytes());
                    if self.db.flush_async().await.is_ok() {
                        self.write_checkpoint(target);
                    }
                    return;
                }
            }
            let target = self.generation();
            if target <= self.flushed_tx.borrow().done {
                continue;
            }
            let start = Instant::now();
            let _ = self.meta.insert(HWM_KEY, &target.to_be_bytes());
            match self.db.flush_async().await {
                Ok(_) => {
                    crate::store::observe_flush(start.elapsed());
                    self.write_checkpoint(target);
                    self.flushed_tx.send_modify(|f| f.done = f.done.max(target));
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "store flush failed: acknowledgements of affected messages are refused");
                    self.flushed_tx
                        .send_modify(|f| f.failed = f.failed.max(target));
                }
            }
        }
    }

    /// Records the flushed generation outside sled (temp file + rename, so it is
    /// never torn). Losing this write only makes the check weaker, never wrong.
    fn write_checkpoint(&self, generation: u64) {
        let path = self.path.join(HWM_FILE);
        let tmp = path.with_extension("tmp");
        if let Err(e) =
            std::fs::write(&tmp, generation.to_string()).and_then(|_| std::fs::rename(&tmp, &path))
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the store checkpoint");
        }
    }

    // ---- writes -------------------------------------------------------------

    pub fn put_session(&self, client_id: &str, record: &SessionRecord) -> Result<u64, StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|e| StoreError(e.to_string()))?;
        self.sessions.insert(client_id.as_bytes(), bytes)?;
        Ok(self.wrote())
    }

    /// Removes every record of a session.
    pub fn delete_session(&self, client_id: &str) -> Result<u64, StoreError> {
        self.sessions.remove(client_id.as_bytes())?;
        self.wills.remove(client_id.as_bytes())?;
        let prefix = codec::session_prefix(client_id);
        for tree in [&self.outbound, &self.outstate, &self.inbound] {
            let keys: Vec<sled::IVec> =
                tree.scan_prefix(&prefix).keys().collect::<Result<_, _>>()?;
            for k in keys {
                tree.remove(k)?;
            }
        }
        Ok(self.wrote())
    }

    pub fn put_outbound(
        &self,
        client_id: &str,
        seq: u64,
        delivery: &Delivery,
    ) -> Result<u64, StoreError> {
        let key = codec::session_key(client_id, &seq.to_be_bytes());
        let value = codec::encode_delivery(delivery);
        let pending = COLLECTED.with(|c| match c.borrow_mut().as_mut() {
            Some(writes) => {
                writes.push((key, value));
                None
            }
            None => Some((key, value)),
        });
        match pending {
            // Collected: written by `route_qos2_atomically` in one transaction.
            None => Ok(self.generation()),
            Some((key, value)) => {
                self.outbound.insert(key, value)?;
                Ok(self.wrote())
            }
        }
    }

    /// Runs `route` (which queues a QoS 2 message for persistent sessions) with their
    /// queue writes collected, then writes them and the publisher's inbound packet id
    /// in one sled transaction. Either both are on disk or neither: a PUBLISH resent
    /// after a crash is then recognised as a duplicate exactly when its deliveries
    /// were stored, so it is neither lost nor delivered twice [MQTT-4.3.3-9].
    pub fn route_qos2_atomically<R>(
        &self,
        client_id: &str,
        packet_id: u16,
        route: impl FnOnce() -> R,
    ) -> (R, Result<u64, StoreError>) {
        COLLECTED.with(|c| *c.borrow_mut() = Some(Vec::new()));
        let routed = route();
        let writes = COLLECTED
            .with(|c| c.borrow_mut().take())
            .unwrap_or_default();
        let inbound_key = codec::session_key(client_id, &packet_id.to_be_bytes());
        let result: sled::transaction::TransactionResult<(), ()> = (&self.outbound, &self.inbound)
            .transaction(|(outbound, inbound)| {
                for (k, v) in &writes {
                    outbound.insert(k.as_slice(), v.as_slice())?;
                }
                inbound.insert(inbound_key.as_slice(), Vec::<u8>::new())?;
                Ok(())
            });
        let written = match result {
            Ok(()) => Ok(self.wrote()),
            Err(e) => Err(StoreError(format!("{e:?}"))),
        };
        (routed, written)
    }

    pub fn set_outbound_state(
        &self,
        client_id: &str,
        seq: u64,
        stage: Stage,
        packet_id: u16,
    ) -> Result<u64, StoreError> {
        let [a, b] = packet_id.to_be_bytes();
        let stage_byte = match stage {
            Stage::AwaitPubAck => 1u8,
            Stage::AwaitPubRec => 2,
            Stage::AwaitPubComp => 3,
        };
        self.outstate.insert(
            codec::session_key(client_id, &seq.to_be_bytes()),
            vec![stage_byte, a, b],
        )?;
        Ok(self.wrote())
    }

    pub fn remove_outbound(&self, client_id: &str, seq: u64) -> Result<u64, StoreError> {
        let key = codec::session_key(client_id, &seq.to_be_bytes());
        self.outbound.remove(&key)?;
        self.outstate.remove(&key)?;
        Ok(self.wrote())
    }

    pub fn put_inbound(&self, client_id: &str, packet_id: u16) -> Result<u64, StoreError> {
        self.inbound.insert(
            codec::session_key(client_id, &packet_id.to_be_bytes()),
            Vec::<u8>::new(),
        )?;
        Ok(self.wrote())
    }

    pub fn remove_inbound(&self, client_id: &str, packet_id: u16) -> Result<u64, StoreError> {
        self.inbound
            .remove(codec::session_key(client_id, &packet_id.to_be_bytes()))?;
        Ok(self.wrote())
    }

    pub fn put_will(
        &self,
        client_id: &str,
        deadline_unix_ms: u64,
        message: &Message,
    ) -> Result<u64, StoreError> {
        let mut v = deadline_unix_ms.to_be_bytes().to_vec();
        v.extend_from_slice(&codec::encode_message(message));
        self.wills.insert(client_id.as_bytes(), v)?;
        Ok(self.wrote())
    }

    pub fn remove_will(&self, client_id: &str) -> Result<u64, StoreError> {
        self.wills.remove(client_id.as_bytes())?;
        Ok(self.wrote())
    }

    /// Stores a retained message, or clears the topic for an empty payload, within `limits.retained_max_bytes` (`max_bytes`,
    /// measured as key + stored record bytes): a message that would take the retained
    /// tree above it is not stored ([`OverBudget`]) and the topic keeps its previous
    /// message; replacing with a smaller message and clearing always succeed.
    pub fn put_retained_within(
        &self,
        message: &Message,
        max_bytes: usize,
    ) -> Result<Result<u64, OverBudget>, StoreError> {
        if message.payload.is_empty() {
            return self.remove_retained(&message.topic).map(Ok);
        }
        let key = message.topic.as_bytes();
        let value = codec::encode_message(message);
        let added = (key.len() + value.len()) as u64;
        let _write = self.retained_write.lock();
        let replaced = self
            .retained
            .get(key)?
            .map_or(0, |v| (key.len() + v.len()) as u64);
        let total = self.retained_bytes.load(Ordering::Acquire);
        if total.saturating_sub(replaced).saturating_add(added) > max_bytes as u64 {
            return Ok(Err(OverBudget));
        }
        match self.retained.insert(key, value)? {
            None => {
                self.retained_count.fetch_add(1, Ordering::AcqRel);
            }
            Some(old) => {
                self.retained_bytes
                    .fetch_sub((key.len() + old.len()) as u64, Ordering::AcqRel);
            }
        }
        self.retained_bytes.fetch_add(added, Ordering::AcqRel);
        Ok(Ok(self.wrote()))
    }

    pub fn remove_retained(&self, topic: &str) -> Result<u64, StoreError> {
        self.remove_retained_key(topic.as_bytes())?;
        Ok(self.wrote())
    }

    fn remove_retained_key(&self, key: &[u8]) -> Result<(), StoreError> {
        if let Some(old) = self.retained.remove(key)? {
            self.retained_count.fetch_sub(1, Ordering::AcqRel);
            self.retained_bytes
                .fetch_sub((key.len() + old.len()) as u64, Ordering::AcqRel);
        }
        Ok(())
    }

    /// The live retained message of `topic`, read from disk.
    pub fn get_retained(&self, topic: &str) -> Option<Arc<Message>> {
        let v = self.retained.get(topic.as_bytes()).ok()??;
        let stored = codec::decode(&v)?;
        if stored.expired(codec::now_unix_ms()) {
            return None;
        }
        Some(stored.into_message())
    }

    /// Up to `limit` live retained messages matching `filter` (admin listing), in topic
    /// order, and whether more matched.
    pub fn list_retained(&self, filter: &str, limit: usize) -> (Vec<Arc<Message>>, bool) {
        let now = codec::now_unix_ms();
        let mut out = Vec::new();
        for item in self.retained.iter() {
            let Ok((k, v)) = item else { break };
            let Ok(topic) = std::str::from_utf8(&k) else {
                continue;
            };
            if !ferromq_topic::matches(filter, topic) {
                continue;
            }
            if let Some(stored) = codec::decode(&v).filter(|s| !s.expired(now)) {
                if out.len() == limit {
                    return (out, true);
                }
                out.push(stored.into_message());
            }
        }
        (out, false)
    }

    /// Retained messages in the store.
    pub fn retained_count(&self) -> usize {
        self.retained_count.load(Ordering::Acquire) as usize
    }

    /// Bytes of the retained records (key + stored record).
    pub fn retained_bytes(&self) -> usize {
        self.retained_bytes.load(Ordering::Acquire) as usize
    }

    /// Scans the retained tree from `from` (inclusive) while keys start with
    /// `prefix`: calls `visit(topic, record)` for each live record until it returns
    /// false, or until `max_keys` keys were looked at. Expired records are deleted on
    /// the way [MQTT-3.3.2-5]. Returns where to resume (`None`: the range is done).
    pub fn scan_retained(
        &self,
        prefix: &[u8],
        from: &[u8],
        max_keys: usize,
        mut visit: impl FnMut(&str, codec::Stored) -> bool,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let now_ms = codec::now_unix_ms();
        for (looked, item) in self.retained.range(from..).enumerate() {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                return Ok(None);
            }
            if looked == max_keys {
                return Ok(Some(k.to_vec()));
            }
            if codec::header_expired(&v, now_ms) {
                self.remove_retained_key(&k)?;
                continue;
            }
            let Ok(topic) = std::str::from_utf8(&k) else {
                continue;
            };
            let Some(stored) = codec::decode(&v) else {
                tracing::warn!(topic, "undecodable retained record skipped");
                continue;
            };
            if !visit(topic, stored) {
                return Ok(Some(k.to_vec()));
            }
        }
        Ok(None)
    }

    /// Reads the queued deliveries `seqs` (ascending) of a session: one range read
    /// from the first to the last. Missing records are simply absent from the result.
    pub fn read_outbound(
        &self,
        client_id: &str,
        seqs: &[u64],
    ) -> Result<Vec<(u64, Delivery)>, StoreError> {
        let (Some(first), Some(last)) = (seqs.first(), seqs.last()) else {
            return Ok(Vec::new());
        };
        let lo = codec::session_key(client_id, &first.to_be_bytes());
        let hi = codec::session_key(client_id, &last.to_be_bytes());
        let mut out = Vec::with_capacity(seqs.len());
        let mut want = seqs.iter().copied().peekable();
        for item in self.outbound.range(lo..=hi) {
            let (k, v) = item?;
            let Some(seq) = codec::split_key(&k)
                .and_then(|(_, suffix)| <[u8; 8]>::try_from(suffix).ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            while want.peek().is_some_and(|w| *w < seq) {
                want.next();
            }
            if want.peek() != Some(&seq) {
                continue;
            }
            match codec::decode(&v) {
                Some(stored) => out.push((seq, stored.into_delivery())),
                None => tracing::warn!(client_id, seq, "undecodable queued record skipped"),
            }
        }
        Ok(out)
    }

    // ---- loading ------------------------------------------------------------

    /// Reads everything back, dropping what expired while the broker was down. A
    /// record this version cannot decode is reported as corruption (the broker stops
    /// before writing anything).
    pub fn load(&self) -> Result<Loaded, OpenError> {
        let now_ms = codec::now_unix_ms();
        let bad = |tree: &str, e: String| {
            corrupt(&self.path.join("store"), format!("tree `{tree}`: {e}"))
        };
        let mut loaded = Loaded::default();
        let mut expired_keys: Vec<(&sled::Tree, sled::IVec)> = Vec::new();

        // Headers only: the retained messages stay on disk (see "Bounded memory").
        let mut retained_bytes = 0u64;
        for item in self.retained.iter() {
            let (k, v) = item.map_err(|e| bad("retained", e.to_string()))?;
            if !codec::header_ok(&v) {
                return Err(bad(
                    "retained",
                    format!("undecodable record {:?}", String::from_utf8_lossy(&k)),
                ));
            }
            if codec::header_expired(&v, now_ms) {
                loaded.expired_messages += 1;
                expired_keys.push((&self.retained, k));
            } else {
                loaded.retained += 1;
                retained_bytes += (k.len() + v.len()) as u64;
            }
        }
        self.retained_count
            .store(loaded.retained as u64, Ordering::Release);
        self.retained_bytes.store(retained_bytes, Ordering::Release);
        for (tree, key) in expired_keys {
            let _ = tree.remove(key);
        }
        let (sessions, expired) = self.load_sessions(None)?;
        loaded.sessions = sessions;
        loaded.expired_messages += expired;
        Ok(loaded)
    }

    /// The records of every session (`only` = `None`) or of one client, with the
    /// number of expired messages dropped on the way.
    fn load_sessions(&self, only: Option<&str>) -> Result<(Vec<LoadedSession>, usize), OpenError> {
        let now_ms = codec::now_unix_ms();
        let bad = |tree: &str, e: String| {
            corrupt(&self.path.join("store"), format!("tree `{tree}`: {e}"))
        };
        let mut expired_messages = 0usize;
        let mut expired_keys: Vec<(&sled::Tree, sled::IVec)> = Vec::new();
        // Sessions and wills are keyed by client id; queues by `client id NUL suffix`.
        let by_id = |tree: &sled::Tree| -> sled::Iter {
            match only {
                None => tree.iter(),
                Some(id) => tree.range::<&[u8], _>(id.as_bytes()..=id.as_bytes()),
            }
        };
        let by_prefix = |tree: &sled::Tree| -> sled::Iter {
            match only {
                None => tree.iter(),
                Some(id) => tree.scan_prefix(codec::session_prefix(id)),
            }
        };
        let mut by_client: HashMap<String, LoadedSession> = HashMap::new();
        for item in by_id(&self.sessions) {
            let (k, v) = item.map_err(|e| bad("sessions", e.to_string()))?;
            let client_id =
                String::from_utf8(k.to_vec()).map_err(|e| bad("sessions", e.to_string()))?;
            let record: SessionRecord = serde_json::from_slice(&v)
                .map_err(|e| bad("sessions", format!("{client_id}: {e}")))?;
            by_client.insert(
                client_id.clone(),
                LoadedSession {
                    client_id,
                    record,
                    outbound: Vec::new(),
                    outbound_on_disk: Vec::new(),
                    inbound_qos2: Vec::new(),
                    will: None,
                },
            );
        }

        let mut states: HashMap<Vec<u8>, (Stage, u16)> = HashMap::new();
        for item in by_prefix(&self.outstate) {
            let (k, v) = item.map_err(|e| bad("outstate", e.to_string()))?;
            if v.len() != 3 {
                return Err(bad("outstate", "record of the wrong length".into()));
            }
            let stage = match v[0] {
                1 => Stage::AwaitPubAck,
                2 => Stage::AwaitPubRec,
                3 => Stage::AwaitPubComp,
                other => return Err(bad("outstate", format!("unknown stage {other}"))),
            };
            states.insert(k.to_vec(), (stage, u16::from_be_bytes([v[1], v[2]])));
        }

        for item in by_prefix(&self.outbound) {
            let (k, v) = item.map_err(|e| bad("outbound", e.to_string()))?;
            let (client_id, suffix) =
                codec::split_key(&k).ok_or_else(|| bad("outbound", "bad key".into()))?;
            let seq = u64::from_be_bytes(
                suffix
                    .try_into()
                    .map_err(|_| bad("outbound", "bad sequence".into()))?,
            );
            let stored = codec::decode(&v)
                .ok_or_else(|| bad("outbound", format!("undecodable record of {client_id}")))?;
            let state = states.get(&k.to_vec()).copied();
            let Some(session) = by_client.get_mut(client_id) else {
                expired_keys.push((&self.outbound, k.clone()));
                continue;
            };
            // Expired while down: dropped, unless already past PUBREC (its flow must
            // complete) [MQTT-3.3.2-5].
            if stored.expired(now_ms) && !matches!(state, Some((Stage::AwaitPubComp, _))) {
                expired_messages += 1;
                expired_keys.push((&self.outbound, k.clone()));
                continue;
            }
            // Keys come in (client, seq) order, so the queued entries met first are
            // the front of the queue: those are loaded, the rest stay on disk.
            if state.is_none()
                && (!session.outbound_on_disk.is_empty()
                    || session
                        .outbound
                        .iter()
                        .filter(|(_, _, st)| st.is_none())
                        .count()
                        >= self.queue_memory_window)
            {
                let message = stored.into_message();
                session.outbound_on_disk.push((seq, message.weight()));
                continue;
            }
            session.outbound.push((seq, stored.into_delivery(), state));
        }

        for item in by_prefix(&self.inbound) {
            let (k, _) = item.map_err(|e| bad("inbound", e.to_string()))?;
            let (client_id, suffix) =
                codec::split_key(&k).ok_or_else(|| bad("inbound", "bad key".into()))?;
            let pid = u16::from_be_bytes(
                suffix
                    .try_into()
                    .map_err(|_| bad("inbound", "bad packet id".into()))?,
            );
            if let Some(session) = by_client.get_mut(client_id) {
                session.inbound_qos2.push(pid);
            }
        }

        for item in by_id(&self.wills) {
            let (k, v) = item.map_err(|e| bad("wills", e.to_string()))?;
            let client_id =
                String::from_utf8(k.to_vec()).map_err(|e| bad("wills", e.to_string()))?;
            if v.len() < 8 {
                return Err(bad("wills", "record too short".into()));
            }
            let deadline = u64::from_be_bytes(
                v[..8]
                    .try_into()
                    .map_err(|_| bad("wills", "bad deadline".into()))?,
            );
            let stored = codec::decode(&v[8..])
                .ok_or_else(|| bad("wills", format!("undecodable will of {client_id}")))?;
            if let Some(session) = by_client.get_mut(&client_id) {
                session.will = Some((deadline, stored.into_message()));
            }
        }

        for (tree, key) in expired_keys {
            let _ = tree.remove(key);
        }
        let mut sessions: Vec<LoadedSession> = by_client.into_values().collect();
        for s in &mut sessions {
            s.outbound.sort_by_key(|(seq, _, _)| *seq);
        }
        Ok((sessions, expired_messages))
    }

    // ---- session handover (cluster) ----------------------------------------------

    /// Every record of one client's session (record, queue, in-flight states, inbound
    /// QoS 2 ids, pending will) as one blob another node's [`Store::import_session`]
    /// reads: both run the same store format, so the records travel as they are.
    /// `None` when the client has no stored session.
    pub fn export_session(&self, client_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(record) = self.sessions.get(client_id.as_bytes())? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(record.len() + 64);
        out.extend_from_slice(HANDOVER_MAGIC);
        push_record(&mut out, 0, client_id.as_bytes(), &record);
        for (tag, tree) in [
            (1u8, &self.outbound),
            (2, &self.outstate),
            (3, &self.inbound),
        ] {
            for item in tree.scan_prefix(codec::session_prefix(client_id)) {
                let (k, v) = item?;
                push_record(&mut out, tag, &k, &v);
            }
        }
        if let Some(will) = self.wills.get(client_id.as_bytes())? {
            push_record(&mut out, 4, client_id.as_bytes(), &will);
        }
        Ok(Some(out))
    }

    /// Writes a session exported by another node in place of any local copy and
    /// loads it. Errors name what is wrong with the blob; nothing is written then.
    pub fn import_session(
        &self,
        client_id: &str,
        blob: &[u8],
    ) -> Result<Option<LoadedSession>, StoreError> {
        let records = parse_handover(blob)
            .ok_or_else(|| StoreError("malformed session handover blob".into()))?;
        let prefix = codec::session_prefix(client_id);
        let owned = |tag: u8, key: &[u8]| match tag {
            0 | 4 => key == client_id.as_bytes(),
            _ => key.starts_with(&prefix),
        };
        if !records
            .iter()
            .all(|(tag, k, _)| *tag <= 4 && owned(*tag, k))
        {
            return Err(StoreError(format!(
                "session handover blob holds records of another client than {client_id}"
            )));
        }
        self.delete_session(client_id)?;
        for (tag, k, v) in records {
            let tree = match tag {
                0 => &self.sessions,
                1 => &self.outbound,
                2 => &self.outstate,
                3 => &self.inbound,
                _ => &self.wills,
            };
            tree.insert(k, v)?;
        }
        self.wrote();
        self.load_sessions(Some(client_id))
            .map(|(mut sessions, _)| sessions.pop())
            .map_err(|e| StoreError(e.to_string()))
    }
}

/// First bytes of a session handover blob (format version 1).
const HANDOVER_MAGIC: &[u8] = b"FMQH1";

/// Takes one length-prefixed field off the front of `rest`.
fn take_field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let field = rest.get(4..4usize.checked_add(len)?)?;
    *rest = &rest[4 + len..];
    Some(field)
}

/// `tag u8, key len u32, key, value len u32, value`.
fn push_record(out: &mut Vec<u8>, tag: u8, key: &[u8], value: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
}

/// One record of a handover blob: tree tag, key, value.
type HandoverRecord<'a> = (u8, &'a [u8], &'a [u8]);

fn parse_handover(blob: &[u8]) -> Option<Vec<HandoverRecord<'_>>> {
    let mut rest = blob.strip_prefix(HANDOVER_MAGIC)?;
    let mut out = Vec::new();
    while let Some((&tag, tail)) = rest.split_first() {
        rest = tail;
        let key = take_field(&mut rest)?;
        let value = take_field(&mut rest)?;
        out.push((tag, key, value));
    }
    Some(out)
}

/// Reports a flush's latency to the metrics endpoint.
pub fn observe_flush(elapsed: std::time::Duration) {
    crate::metrics::observe_flush(elapsed);
}
