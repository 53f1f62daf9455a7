//! Helpers for the cluster tests: in-process nodes on 127.0.0.1 port 0 with real
//! gRPC, a recording `LocalNode`, condition waits with deadlines, test certificates.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferromq_cluster::{
    Bootstrap, Cluster, ClusterOptions, ClusterTls, Forward, LocalNode, NodeId, RaftTuning,
    RouteMatch,
};
use futures::future::BoxFuture;
use parking_lot::Mutex;

/// Records what the cluster reports to the broker.
#[derive(Default)]
pub struct RecLocal {
    pub retained: Mutex<HashMap<String, Option<Bytes>>>,
    pub retained_calls: Mutex<u64>,
}

impl LocalNode for RecLocal {
    fn deliver(&self, _from: NodeId, _batch: Vec<Forward>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    fn retained_applied(&self, topic: &str, message: Option<&Bytes>) {
        self.retained
            .lock()
            .insert(topic.to_owned(), message.cloned());
        *self.retained_calls.lock() += 1;
    }
    fn take_session(&self, _client_id: &str, _to: NodeId) -> BoxFuture<'static, Option<Bytes>> {
        Box::pin(async { None })
    }
    fn connect_announced(&self, _from: NodeId, _client_id: &str, _connected_at_ms: u64) {}
}

pub fn tuning() -> RaftTuning {
    RaftTuning {
        heartbeat_ms: 100,
        election_min_ms: 400,
        election_max_ms: 700,
        snapshot_logs: 5000,
        keep_logs: 100,
    }
}

/// One test node: its directory, Db, cluster handle and recorder.
pub struct Node {
    pub dir: PathBuf,
    pub db: Option<sled::Db>,
    pub cluster: Cluster,
    pub local: Arc<RecLocal>,
}

pub struct Spec {
    pub listen: Option<std::net::SocketAddr>,
    pub seeds: Vec<String>,
    pub voters: usize,
    pub tls: Option<ClusterTls>,
    pub bootstrap: Bootstrap,
    pub tuning: RaftTuning,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            listen: None,
            seeds: vec![],
            voters: 3,
            tls: None,
            bootstrap: Bootstrap::Auto,
            tuning: tuning(),
        }
    }
}

/// Opens a sled Db, retrying while a previous instance in this process still holds
/// the lock (restart tests).
pub async fn open_db(dir: &Path) -> sled::Db {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(8 << 20)
            .open()
        {
            Ok(db) => return db,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("open sled: {e}"),
        }
    }
}

pub async fn start(dir: &Path, spec: Spec) -> Node {
    // Logs with RUST_LOG=ferromq_cluster=debug (captured per test by the harness).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    std::fs::create_dir_all(dir).unwrap();
    let db = open_db(dir).await;
    let listen = spec
        .listen
        .unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
    let mut opts = ClusterOptions::new(listen, db.clone(), dir.to_path_buf());
    opts.seeds = spec.seeds;
    opts.voters = spec.voters;
    opts.tls = spec.tls;
    opts.bootstrap = spec.bootstrap;
    opts.raft = spec.tuning;
    opts.leader_lost_timeout = Duration::from_secs(3);
    opts.meta.mqtt_addr = "127.0.0.1:1883".into();
    let local = Arc::new(RecLocal::default());
    let cluster = Cluster::start(opts, local.clone()).await.unwrap();
    Node {
        dir: dir.to_path_buf(),
        db: Some(db),
        cluster,
        local,
    }
}

/// Polls `cond` until true or the deadline passes (then panics with `what`).
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn seed(n: &Node) -> Vec<String> {
    vec![n.cluster.grpc_addr().to_string()]
}

/// Every node reports the same leader, which is one of them.
pub fn agreed_leader(nodes: &[&Node]) -> Option<NodeId> {
    let l = nodes[0].cluster.status().leader?;
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.cluster.node_id()).collect();
    (ids.contains(&l) && nodes.iter().all(|n| n.cluster.status().leader == Some(l))).then_some(l)
}

pub fn voters(n: &Node) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = n
        .cluster
        .status()
        .members
        .iter()
        .filter(|m| m.role == "voter")
        .map(|m| m.id)
        .collect();
    v.sort_unstable();
    v
}

pub fn learners(n: &Node) -> Vec<NodeId> {
    n.cluster
        .status()
        .members
        .iter()
        .filter(|m| m.role == "learner")
        .map(|m| m.id)
        .collect()
}

/// The nodes with routes matching `topic`, as `n` sees them, sorted.
pub fn remote_routes(n: &Node, topic: &str) -> Vec<NodeId> {
    route_matches(n, topic).iter().map(|m| m.node).collect()
}

/// [`remote_routes`] with each node's transient flag.
pub fn route_matches(n: &Node, topic: &str) -> Vec<RouteMatch> {
    let mut out = Vec::new();
    n.cluster.remote_routes(topic, &mut out);
    out.sort_unstable_by_key(|m| m.node);
    out
}

/// Starts node 1 (bootstraps) and nodes 2.. joining through node 1.
pub async fn cluster_of(base: &Path, n: usize, voters: usize) -> Vec<Node> {
    let first = start(
        &base.join("n1"),
        Spec {
            voters,
            ..Default::default()
        },
    )
    .await;
    let seeds = seed(&first);
    let mut nodes = vec![first];
    for i in 2..=n {
        let node = start(
            &base.join(format!("n{i}")),
            Spec {
                seeds: seeds.clone(),
                voters,
                ..Default::default()
            },
        )
        .await;
        nodes.push(node);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_until(
        "all nodes agree on a leader and membership",
        Duration::from_secs(15),
        || {
            agreed_leader(&refs).is_some()
                && refs.iter().all(|x| x.cluster.status().members.len() == n)
        },
    )
    .await;
    nodes
}

// ---- certificates ----

pub struct Pki {
    pub dir: PathBuf,
}

fn ca(cn: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

fn node_cert(dir: &Path, name: &str, issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

impl Pki {
    /// CA `ca` with node certs `node`, and an unrelated CA `other-ca` with `intruder`.
    pub fn generate(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ca1 = ca("ferromq cluster test CA");
        let ca2 = ca("unrelated CA");
        std::fs::write(dir.join("ca.pem"), ca1.pem()).unwrap();
        std::fs::write(dir.join("other-ca.pem"), ca2.pem()).unwrap();
        node_cert(dir, "node", &ca1);
        node_cert(dir, "intruder", &ca2);
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    pub fn tls(&self, ca: &str, name: &str) -> ClusterTls {
        ClusterTls {
            ca_file: self.dir.join(format!("{ca}.pem")),
            cert_file: self.dir.join(format!("{name}.pem")),
            key_file: self.dir.join(format!("{name}.key")),
        }
    }
}
