//! Options of [`Cluster::start`](crate::Cluster::start).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How a node with an empty Raft store gets into a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bootstrap {
    /// Empty store: if no seed answers (or there are no seeds) initialise a
    /// single-node cluster with self; if a seed answers, join through it. When the
    /// seeds that answer are all uninitialised too, the node with the smallest
    /// advertised address initialises and the others join it.
    #[default]
    Auto,
    /// Empty store: always initialise a single-node cluster with self.
    Always,
    /// Empty store: never initialise; join through the seeds until accepted.
    Never,
}

/// PEM files for mutual TLS between nodes: the server requires a client certificate
/// issued by `ca_file` and clients present theirs and verify the server against it.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Client-facing addresses of this node, shown in `status()`.
#[derive(Debug, Clone, Default)]
pub struct NodeMeta {
    pub mqtt_addr: String,
    pub http_addr: String,
}

/// Raft timing and log compaction (milliseconds / entries).
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot (and purge the log) after this many applied entries.
    pub snapshot_logs: u64,
    /// Entries kept in the log behind a snapshot (for lagging followers).
    pub keep_logs: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_ms: 250,
            election_min_ms: 1000,
            election_max_ms: 2000,
            snapshot_logs: 5000,
            keep_logs: 1000,
        }
    }
}

/// Everything `Cluster::start` needs.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// gRPC bind address (port 0 allowed).
    pub listen: SocketAddr,
    /// "host:port" peers dial; default: the bound address.
    pub advertise: Option<String>,
    /// "host:port" of any members; empty = none.
    pub seeds: Vec<String>,
    pub bootstrap: Bootstrap,
    /// Voter count target (default 3); further nodes stay learners.
    pub voters: usize,
    /// The node's one sled Db; the cluster uses trees prefixed `raft_`.
    pub db: sled::Db,
    /// Snapshot files go to `data_dir/cluster/`.
    pub data_dir: PathBuf,
    pub tls: Option<ClusterTls>,
    pub meta: NodeMeta,
    /// `is_ready()` turns false after this long without a known leader.
    pub leader_lost_timeout: Duration,
    /// Leader side: remove a member that has been unreachable, with an address whose
    /// host name no longer resolves, for this long (a StatefulSet scaled down: the
    /// pod's DNS record goes with it). `None`: never (remove with `ctl cluster remove`).
    pub remove_departed_after: Option<Duration>,
    /// Per-peer bounded queue of forwarded messages (data plane).
    pub forward_queue: usize,
    /// Raft timing (not in the original spec: tests need short timeouts).
    pub raft: RaftTuning,
}

impl ClusterOptions {
    /// Defaults for everything but the bind address, the Db and the data dir.
    pub fn new(listen: SocketAddr, db: sled::Db, data_dir: PathBuf) -> Self {
        Self {
            listen,
            advertise: None,
            seeds: Vec::new(),
            bootstrap: Bootstrap::Auto,
            voters: 3,
            db,
            data_dir,
            tls: None,
            meta: NodeMeta::default(),
            leader_lost_timeout: Duration::from_secs(10),
            remove_departed_after: None,
            forward_queue: 65_536,
            raft: RaftTuning::default(),
        }
    }
}
