//! Test hooks (hidden from docs): runs openraft's storage conformance suite against
//! the sled log store and the state machine, which are private to this crate.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

use crate::NodeId;
use crate::local::{Forward, LocalNode};
use crate::raft::TypeConfig;
use crate::raft::log_store::LogStore;
use crate::raft::state_machine::StateMachine;

struct Noop;

impl LocalNode for Noop {
    fn deliver(&self, _from: NodeId, _batch: Vec<Forward>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    fn retained_applied(&self, _topic: &str, _message: Option<&Bytes>) {}
    fn take_session(&self, _client_id: &str, _to: NodeId) -> BoxFuture<'static, Option<Bytes>> {
        Box::pin(async { None })
    }
    fn connect_announced(&self, _from: NodeId, _client_id: &str, _connected_at_ms: u64) {}
}

struct Builder {
    base: PathBuf,
    n: AtomicUsize,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for Builder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = self
            .base
            .join(self.n.fetch_add(1, Ordering::SeqCst).to_string());
        let io = |e: std::io::Error| {
            StorageError::from_io_error(openraft::ErrorSubject::Store, openraft::ErrorVerb::Read, e)
        };
        let db = sled::Config::new()
            .path(dir.join("db"))
            .open()
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let log = LogStore::open(&db).map_err(io)?;
        let sm = StateMachine::open(&dir.join("cluster"), Arc::new(Noop)).map_err(io)?;
        Ok(((), log, sm))
    }
}

/// Runs `openraft::testing::log::Suite::test_all` with stores under `base`.
pub async fn log_store_suite(base: PathBuf) -> Result<(), String> {
    Suite::test_all(Builder {
        base,
        n: AtomicUsize::new(0),
    })
    .await
    .map_err(|e| e.to_string())
}
