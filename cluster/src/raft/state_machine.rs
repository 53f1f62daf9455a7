//! openraft's state machine over [`State`], with snapshots as files.
//!
//! Persistence (chosen so a restart needs no wiping and no second copy of the state in
//! sled): the state lives in memory; every snapshot (built locally or installed from
//! the leader) is written to `data_dir/cluster/snapshot.bin` (temp file, fsync,
//! rename) *before* openraft is told about it, and openraft only purges log entries
//! covered by a snapshot. On start the state machine loads that file (state and
//! applied log id) and openraft replays the log after it, up to the persisted commit
//! index (`save_committed`). Every retained message loaded at start is reported to
//! the broker through [`LocalNode::retained_applied`], like every applied change and
//! the diff on snapshot install.
//!
//! Snapshots are built off the Raft core task: openraft runs the builder in its own
//! task; the builder encodes the image under a read lock and writes the file on a
//! blocking thread.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use ferromq_proto::raft::v1 as pb;
use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use parking_lot::{Mutex, RwLock};
use prost::Message;

use super::state::{RetainedChange, State};
use super::{
    Applied, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig, codec,
};
use crate::local::LocalNode;

const SNAPSHOT_FILE: &str = "snapshot.bin";

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Everything the state machine shares with the cluster's read paths.
pub struct SmShared {
    /// The replicated state; read by `remote_routes` & co. (short read locks).
    pub state: RwLock<State>,
    /// Last applied log id and membership (openraft's `applied_state`).
    applied: Mutex<(Option<LogId>, StoredMembership)>,
    /// Last applied index, for waiters (`retained_set`, `read_barrier`).
    pub applied_index: tokio::sync::watch::Sender<u64>,
    current: Mutex<Option<(SnapshotMeta, SnapshotData)>>,
    dir: PathBuf,
    local: Arc<dyn LocalNode>,
    pub snapshot_bytes: AtomicU64,
    pub snapshot_build_micros: AtomicU64,
}

impl SmShared {
    fn notify(&self, changes: Vec<RetainedChange>) {
        for (topic, msg) in changes {
            self.local.retained_applied(&topic, msg.as_ref());
        }
    }

    /// Writes the snapshot file durably (temp + fsync + rename + dir fsync).
    fn persist(dir: &Path, meta: &SnapshotMeta, data: &Bytes) -> io::Result<()> {
        let file = pb::SnapshotFile {
            meta: Some(codec::snapshot_meta_to_pb(meta)),
            data: data.to_vec(),
        };
        let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&file.encode_to_vec())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    async fn persist_async(&self, meta: &SnapshotMeta, data: &Bytes) -> io::Result<()> {
        let dir = self.dir.clone();
        let (meta, data) = (meta.clone(), data.clone());
        tokio::task::spawn_blocking(move || Self::persist(&dir, &meta, &data))
            .await
            .map_err(io_err)?
    }
}

/// The openraft state machine handle (one per node).
#[derive(Clone)]
pub struct StateMachine {
    pub shared: Arc<SmShared>,
}

impl StateMachine {
    /// Removes a snapshot file from `dir` (fresh node with a leftover data dir).
    pub fn discard(dir: &Path) -> io::Result<()> {
        match std::fs::remove_file(dir.join(SNAPSHOT_FILE)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Opens the state machine: loads `dir/snapshot.bin` if present and reports its
    /// retained messages to `local`.
    pub fn open(dir: &Path, local: Arc<dyn LocalNode>) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut state = State::default();
        let mut applied = (None, StoredMembership::default());
        let mut current = None;
        let path = dir.join(SNAPSHOT_FILE);
        if path.exists() {
            let raw = std::fs::read(&path)?;
            let file = pb::SnapshotFile::decode(raw.as_slice()).map_err(io_err)?;
            let meta = codec::snapshot_meta_from_pb(
                file.meta
                    .as_ref()
                    .ok_or_else(|| io_err("snapshot file without meta"))?,
            )
            .map_err(io_err)?;
            let data = Bytes::from(file.data);
            let img = pb::StateImage::decode(data.as_ref()).map_err(io_err)?;
            state = State::from_image(img);
            applied = (meta.last_log_id, meta.last_membership.clone());
            current = Some((meta, data));
        }
        let index = applied.0.map(|l| l.index).unwrap_or(0);
        let retained: Vec<RetainedChange> = state
            .retained()
            .map(|(t, v)| (t.clone(), Some(v.message.clone())))
            .collect();
        let shared = Arc::new(SmShared {
            state: RwLock::new(state),
            applied: Mutex::new(applied),
            applied_index: tokio::sync::watch::Sender::new(index),
            current: Mutex::new(current),
            dir: dir.to_path_buf(),
            local,
            snapshot_bytes: AtomicU64::new(0),
            snapshot_build_micros: AtomicU64::new(0),
        });
        shared.notify(retained);
        Ok(Self { shared })
    }
}

/// Builds a snapshot from a consistent view of the state.
pub struct SnapshotBuilder {
    shared: Arc<SmShared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let started = Instant::now();
        let (meta, data) = {
            // Hold the state's read lock while reading `applied` so both describe the
            // same point (apply takes the write lock before updating either).
            let state = self.shared.state.read();
            let (last, membership) = self.shared.applied.lock().clone();
            let data = Bytes::from(state.to_image().encode_to_vec());
            (
                SnapshotMeta {
                    last_log_id: last,
                    last_membership: membership,
                },
                data,
            )
        };
        self.shared.persist_async(&meta, &data).await?;
        self.shared
            .snapshot_bytes
            .store(data.len() as u64, Ordering::Relaxed);
        self.shared
            .snapshot_build_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        *self.shared.current.lock() = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok(self.shared.applied.lock().clone())
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let mut changes = Vec::new();
            let index = entry.log_id.index;
            let resp = {
                let mut state = self.shared.state.write();
                let resp = match &entry.payload {
                    EntryPayload::Blank => Applied::default(),
                    EntryPayload::Normal(cmd) => {
                        let applied = self.shared.applied.lock();
                        let membership = applied.1.membership();
                        state.apply(&cmd.0, &|n| membership.get_node(&n).is_some(), &mut changes)
                    }
                    EntryPayload::Membership(m) => {
                        self.shared.applied.lock().1 =
                            StoredMembership::new(Some(entry.log_id), m.clone());
                        Applied::default()
                    }
                };
                self.shared.applied.lock().0 = Some(entry.log_id);
                resp
            };
            self.shared.notify(changes);
            self.shared.applied_index.send_replace(index);
            if let Some(r) = responder {
                r.send(resp);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let img = pb::StateImage::decode(snapshot.as_ref()).map_err(io_err)?;
        let new = State::from_image(img);
        // Durable first: after a crash the node restarts from this snapshot.
        self.shared.persist_async(meta, &snapshot).await?;
        let changes = {
            let mut state = self.shared.state.write();
            let changes = state.retained_diff(&new);
            *state = new;
            *self.shared.applied.lock() = (meta.last_log_id, meta.last_membership.clone());
            changes
        };
        *self.shared.current.lock() = Some((meta.clone(), snapshot.clone()));
        self.shared
            .snapshot_bytes
            .store(snapshot.len() as u64, Ordering::Relaxed);
        self.shared.notify(changes);
        self.shared
            .applied_index
            .send_replace(meta.last_log_id.map(|l| l.index).unwrap_or(0));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self
            .shared
            .current
            .lock()
            .clone()
            .map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}
