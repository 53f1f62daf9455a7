//! Listeners and the broker's lifecycle: bind everything, serve, shut down.
//!
//! Binding happens only after the whole configuration validated (STYLE.md item 12),
//! and all listeners are bound before the ready file is written, so a test or an
//! orchestrator that sees the file can connect.
//!
//! Shutdown (SIGTERM/SIGINT): listeners stop accepting, every connection sends v5
//! clients DISCONNECT 0x8B and closes, and the server waits for connection tasks up to
//! a grace period.

use futures::FutureExt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferromq_config::{Config, ListenerProtocol};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::broker::Broker;
use crate::http::{HttpState, Readiness};
use crate::metrics::Metrics;
use crate::tls::{TlsContext, TlsErrors};
use crate::transport::{self, Listener};

/// How long shutdown waits for connections to close before giving up on them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Cluster node: how long shutdown keeps serving session handovers to other nodes for
/// the persistent sessions whose clients it just disconnected.
pub const HANDOVER_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] crate::store::OpenError),
    #[error("cannot bind listener `{name}` on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind the HTTP listener on {addr}: {source}")]
    BindHttp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot write ready file {path}: {source}")]
    ReadyFile {
        path: String,
        source: std::io::Error,
    },
    /// A TLS listener's certificate, key or CA file is missing or unusable: a
    /// configuration error, found before any socket is bound.
    #[error("{0}")]
    Tls(TlsErrors),
    /// The password or ACL file cannot be used: a configuration error (exit 78).
    #[error(transparent)]
    Security(#[from] crate::auth::SecurityError),
    /// The cluster layer could not start (its port, its certificates, its store).
    #[error("cannot start the cluster layer: {0}")]
    Cluster(ferromq_cluster::ClusterError),
}

impl ServerError {
    /// The process exit code: 78 (`EX_CONFIG`) for configuration problems found
    /// here, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServerError::Tls(_) | ServerError::Security(_) => 78,
            ServerError::Cluster(ferromq_cluster::ClusterError::Config(_)) => 78,
            ServerError::Store(_) => 74,
            _ => 1,
        }
    }
}

/// A bound listener, as reported in the ready file.
#[derive(Debug, Clone, Serialize)]
pub struct BoundListener {
    pub name: String,
    pub protocol: &'static str,
    pub addr: SocketAddr,
}

pub struct Server {
    broker: Broker,
    listeners: Vec<(Arc<Listener>, TcpListener)>,
    /// Every TLS listener's certificates, for reloads.
    tls: Vec<Arc<TlsContext>>,
    /// The operators' HTTP listener (`http.enabled`), see [`crate::http`].
    http: Option<TcpListener>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    /// The cluster layer, on a cluster node.
    cluster: Option<ferromq_cluster::Cluster>,
}

fn protocol_name(p: &ListenerProtocol) -> &'static str {
    p.as_str()
}

/// Loads every TLS listener's files, reporting every problem at once.
fn load_tls(config: &Config) -> Result<Vec<Option<Arc<TlsContext>>>, ServerError> {
    let mut contexts = Vec::new();
    let mut errors = Vec::new();
    for l in &config.listeners {
        if !l.protocol.is_tls() {
            contexts.push(None);
            continue;
        }
        match TlsContext::load(l.name.as_str().into(), l.tls.clone()) {
            Ok(ctx) => contexts.push(Some(Arc::new(ctx))),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(contexts)
    } else {
        Err(ServerError::Tls(TlsErrors(errors)))
    }
}

impl Server {
    /// Loads the TLS listeners' certificates (every problem reported, nothing bound
    /// yet) and opens the store (when persistence is enabled), restoring its state;
    /// then binds every configured listener; the first bind failure is returned,
    /// naming it.
    pub async fn bind(config: Arc<Config>) -> Result<Server, ServerError> {
        let contexts = load_tls(&config)?;
        // The password and ACL files are part of the configuration: read them before
        // any port is bound.
        let security = crate::auth::Security::load(&config)?;
        let store = if config.persistence.enabled {
            let store = crate::store::Store::open(&config.persistence)?;
            let loaded = store.load()?;
            Some((Arc::new(store), loaded))
        } else {
            None
        };
        let mut listeners = Vec::new();
        for (l, tls) in config.listeners.iter().zip(contexts.iter()) {
            let socket = TcpListener::bind(l.bind)
                .await
                .map_err(|source| ServerError::Bind {
                    name: l.name.clone(),
                    addr: l.bind,
                    source,
                })?;
            let listener = Listener::new(l.clone(), tls.clone(), config.mqtt.max_packet_size);
            listeners.push((Arc::new(listener), socket));
        }
        let broker = match store {
            Some((store, loaded)) => {
                tracing::info!(path = %store.path().display(), durability = store.durability().as_str(), "store opened");
                let broker = Broker::with_security(config.clone(), Some(store), security);
                broker.restore(loaded);
                broker
            }
            None => {
                tracing::info!("persistence disabled: state is kept in memory only");
                Broker::with_security(config.clone(), None, security)
            }
        };
        let http = if config.http.enabled {
            let addr = config.http.listen;
            Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::BindHttp { addr, source })?,
            )
        } else {
            None
        };
        let metrics = Arc::new(Metrics::new(
            config.listeners.iter().map(|l| l.name.clone()).collect(),
        )?);
        let readiness = Arc::new(Readiness::default());
        let mut server = Server {
            broker,
            listeners,
            tls: contexts.into_iter().flatten().collect(),
            http,
            metrics,
            readiness,
            cluster: None,
        };
        if config.cluster.enabled {
            server.start_cluster().await?;
        }
        Ok(server)
    }

    /// Starts the cluster layer (after the listeners are bound, so the node can tell
    /// its peers its MQTT and HTTP addresses, and before any client is accepted) and
    /// announces the routes of the sessions restored from the store.
    async fn start_cluster(&mut self) -> Result<(), ServerError> {
        let config = self.broker.config().clone();
        let c = &config.cluster;
        let Some(store) = self.broker.store().cloned() else {
            return Err(ServerError::Cluster(ferromq_cluster::ClusterError::Config(
                "cluster.enabled needs persistence.enabled".into(),
            )));
        };
        let bound = self.bound();
        let addr_of = |protocol: &str| {
            bound
                .iter()
                .find(|b| b.protocol == protocol)
                .map(|b| b.addr.to_string())
                .unwrap_or_default()
        };
        let tls = match (&c.ca_file, &c.cert_file, &c.key_file) {
            (Some(ca), Some(cert), Some(key)) => Some(ferromq_cluster::ClusterTls {
                ca_file: ca.clone(),
                cert_file: cert.clone(),
                key_file: key.clone(),
            }),
            _ => None,
        };
        let mut options = ferromq_cluster::ClusterOptions::new(
            c.listen,
            store.db().clone(),
            config.persistence.path.clone(),
        );
        options.advertise = (!c.advertise.is_empty()).then(|| c.advertise.clone());
        options.seeds = c.seed_list();
        options.bootstrap = match c.bootstrap {
            ferromq_config::Bootstrap::Auto => ferromq_cluster::Bootstrap::Auto,
            ferromq_config::Bootstrap::Always => ferromq_cluster::Bootstrap::Always,
            ferromq_config::Bootstrap::Never => ferromq_cluster::Bootstrap::Never,
        };
        options.voters = c.voters;
        options.tls = tls;
        options.meta = ferromq_cluster::NodeMeta {
            mqtt_addr: addr_of("mqtt"),
            http_addr: addr_of("http"),
        };
        options.leader_lost_timeout = c.leader_lost_timeout;
        options.forward_queue = c.forward_queue;
        options.remove_departed_after =
            (!c.remove_departed_after.is_zero()).then_some(c.remove_departed_after);
        let node = Arc::new(crate::cluster_link::BrokerNode {
            broker: self.broker.clone(),
        });
        let cluster = ferromq_cluster::Cluster::start(options, node)
            .await
            .map_err(ServerError::Cluster)?;
        tracing::info!(node_id = cluster.node_id(), grpc = %cluster.grpc_addr(), "cluster layer started");
        self.broker.set_cluster(cluster.clone());
        self.readiness.set_cluster(cluster.clone());
        self.metrics.register_cluster(&cluster);
        self.broker.announce_all_routes();
        self.cluster = Some(cluster);
        Ok(())
    }

    /// What `/readyz` reports; the store and the cluster layer set their checks here.
    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.readiness
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The addresses actually bound (port 0 resolved): the MQTT listeners, then the
    /// HTTP listener as `{"name":"http","protocol":"http"}`.
    pub fn bound(&self) -> Vec<BoundListener> {
        self.listeners
            .iter()
            .filter_map(|(listener, l)| {
                let cfg = &listener.cfg;
                Some(BoundListener {
                    name: cfg.name.clone(),
                    protocol: protocol_name(&cfg.protocol),
                    addr: l.local_addr().ok()?,
                })
            })
            .chain(self.http.as_ref().and_then(|l| {
                Some(BoundListener {
                    name: "http".to_owned(),
                    protocol: "http",
                    addr: l.local_addr().ok()?,
                })
            }))
            .chain(self.cluster.as_ref().map(|c| BoundListener {
                name: "cluster".to_owned(),
                protocol: "grpc",
                addr: c.grpc_addr(),
            }))
            .collect()
    }

    /// Writes `{"pid":..,"listeners":[..]}` atomically (temp file + rename).
    pub fn write_ready_file(&self, path: &Path) -> Result<(), ServerError> {
        let body = serde_json::json!({
            "pid": std::process::id(),
            "listeners": self.bound(),
        });
        let tmp = path.with_extension("tmp");
        let err = |source| ServerError::ReadyFile {
            path: path.display().to_string(),
            source,
        };
        std::fs::write(&tmp, body.to_string()).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Serves until `shutdown` resolves, then drains connections.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let broker = self.broker.clone();
        let bound = self.bound();
        // The HTTP side outlives the MQTT drain, so /readyz reports it (503).
        let http_stop = tokio_util::sync::CancellationToken::new();
        let http_task = self.http.map(|listener| {
            let state = Arc::new(HttpState {
                broker: broker.clone(),
                metrics: self.metrics.clone(),
                readiness: self.readiness.clone(),
                config: broker.config().http.clone(),
                listeners: bound,
                started_at: SystemTime::now(),
            });
            tokio::spawn(crate::http::serve(listener, state, http_stop.clone()))
        });
        for (l, listener) in self.listeners {
            tokio::spawn(accept_loop(l, listener, broker.clone()));
        }
        crate::reload::spawn(self.tls, broker.shutdown_token().clone());
        self.readiness.set_listeners_bound(true);
        crate::sys::spawn(&broker);
        let flusher_stop = tokio_util::sync::CancellationToken::new();
        let flusher = broker
            .store()
            .cloned()
            .map(|store| tokio::spawn(store.run_flusher(flusher_stop.clone())));
        crate::auth::spawn_reloader(&broker);
        shutdown.await;
        tracing::info!("shutting down");
        self.readiness.set_draining(true);
        if let Some(cluster) = &self.cluster {
            // Drain: a leader hands leadership to a caught-up voter first, so the
            // cluster does not wait for an election timeout after this node is gone.
            match tokio::time::timeout(Duration::from_secs(6), cluster.transfer_leadership()).await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "leadership transfer before shutdown failed")
                }
                Err(_) => tracing::warn!("leadership transfer before shutdown timed out"),
            }
        }
        // Persistent sessions whose clients are connected now: they will reconnect to
        // another node, which takes the session over from this one (cluster only).
        let moving: Vec<std::sync::Arc<crate::session::Session>> = if self.cluster.is_some() {
            broker
                .sessions()
                .into_iter()
                .filter(|s| {
                    let inner = s.lock();
                    inner.link.is_some() && inner.expiry_interval > 0
                })
                .collect()
        } else {
            Vec::new()
        };
        broker.begin_shutdown();
        broker.tasks().close();
        if tokio::time::timeout(SHUTDOWN_GRACE, broker.tasks().wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over with connections still open");
        }
        if let Some(cluster) = &self.cluster {
            // Keep serving session handovers for a while: the disconnected clients of
            // persistent sessions reconnect elsewhere and their sessions (queue,
            // in-flight, subscriptions) are fetched from here. Bounded by HANDOVER_GRACE.
            let deadline = tokio::time::Instant::now() + HANDOVER_GRACE;
            let left = || {
                moving
                    .iter()
                    .filter(|s| {
                        broker
                            .session(&s.client_id)
                            .is_some_and(|now| std::sync::Arc::ptr_eq(&now, s))
                    })
                    .count()
            };
            let mut waiting = left();
            if waiting > 0 {
                tracing::info!(
                    sessions = waiting,
                    "waiting for other nodes to take over persistent sessions"
                );
            }
            while waiting > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                waiting = left();
            }
            if waiting > 0 {
                tracing::info!(
                    sessions = waiting,
                    "persistent sessions not taken over: they stay here for the next start"
                );
            }
            // Sessions taken over keep relaying late deliveries to their new owners
            // until every node routes to those directly (at most RELAY_GRACE).
            let relay_deadline = tokio::time::Instant::now() + crate::broker::RELAY_GRACE;
            while broker.relaying() > 0 && tokio::time::Instant::now() < relay_deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            cluster.shutdown().await;
        }
        // Last flush after every connection has written its final state.
        flusher_stop.cancel();
        if let Some(f) = flusher {
            let _ = f.await;
        }
        http_stop.cancel();
        if let Some(task) = http_task {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
}

async fn accept_loop(l: Arc<Listener>, listener: TcpListener, broker: Broker) {
    // Per-listener connection limit (overflow policy: the new socket is closed at once).
    let limit = l.cfg.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    let name = l.name.clone();
    tracing::info!(listener = %name, addr = ?listener.local_addr().ok(), protocol = l.cfg.protocol.as_str(), "listening");
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = broker.shutdown_token().cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Broker-wide limits (total connections, rate per address): a refused socket
        // is closed at once; the gate logs it.
        let Some(admission) = broker.admit(peer, &name) else {
            continue;
        };
        let permit = match &limit {
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    tracing::warn!(listener = %name, addr = %peer, "connection refused: max_connections reached");
                    continue;
                }
            },
            None => None,
        };
        let _ = socket.set_nodelay(true);
        // A combinator, not an `async` block: the block would keep the socket, the
        // address and the handles it moves into `serve_socket` in its own state too,
        // for the connection's whole life.
        let serve = transport::serve_socket(socket, peer, l.clone(), broker.clone());
        broker.tasks().spawn(serve.map(move |()| {
            drop(permit);
            drop(admission);
        }));
    }
}
