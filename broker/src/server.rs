//! Listeners and the broker's lifecycle: bind everything, serve, shut down.
//!
//! Binding happens only after the whole configuration validated (STYLE.md item 12),
//! and all listeners are bound before the ready file is written, so a test or an
//! orchestrator that sees the file can connect.
//!
//! Shutdown (SIGTERM/SIGINT): listeners stop accepting, every connection sends v5
//! clients DISCONNECT 0x8B and closes, and the server waits for connection tasks up to
//! a grace period.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferromq_config::{Config, ListenerConfig, ListenerProtocol};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::broker::Broker;
use crate::connection;

/// How long shutdown waits for connections to close before giving up on them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind listener `{name}` on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write ready file {path}: {source}")]
    ReadyFile {
        path: String,
        source: std::io::Error,
    },
    /// The password or ACL file cannot be used: a configuration error (exit 78).
    #[error(transparent)]
    Security(#[from] crate::auth::SecurityError),
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
    listeners: Vec<(ListenerConfig, TcpListener)>,
}

fn protocol_name(p: &ListenerProtocol) -> &'static str {
    match p {
        ListenerProtocol::Mqtt => "mqtt",
    }
}

impl Server {
    /// Binds every configured listener; the first failure is returned, naming it.
    pub async fn bind(config: Arc<Config>) -> Result<Server, ServerError> {
        // The password and ACL files are part of the configuration: read them before
        // any port is bound.
        let security = crate::auth::Security::load(&config)?;
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let socket = TcpListener::bind(l.bind)
                .await
                .map_err(|source| ServerError::Bind {
                    name: l.name.clone(),
                    addr: l.bind,
                    source,
                })?;
            listeners.push((l.clone(), socket));
        }
        Ok(Server {
            broker: Broker::with_security(config, security),
            listeners,
        })
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn bound(&self) -> Vec<BoundListener> {
        self.listeners
            .iter()
            .filter_map(|(cfg, l)| {
                Some(BoundListener {
                    name: cfg.name.clone(),
                    protocol: protocol_name(&cfg.protocol),
                    addr: l.local_addr().ok()?,
                })
            })
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
        for (cfg, listener) in self.listeners {
            tokio::spawn(accept_loop(cfg, listener, broker.clone()));
        }
        crate::sys::spawn(&broker);
        crate::auth::spawn_reloader(&broker);
        shutdown.await;
        tracing::info!("shutting down");
        broker.shutdown_token().cancel();
        broker.tasks().close();
        if tokio::time::timeout(SHUTDOWN_GRACE, broker.tasks().wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over with connections still open");
        }
    }
}

async fn accept_loop(cfg: ListenerConfig, listener: TcpListener, broker: Broker) {
    // Per-listener connection limit (overflow policy: the new socket is closed at once).
    let limit = cfg.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    let name: Arc<str> = cfg.name.as_str().into();
    tracing::info!(listener = %name, addr = ?listener.local_addr().ok(), "listening (mqtt)");
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
        let b = broker.clone();
        broker.tasks().spawn(async move {
            connection::serve(socket, peer, b).await;
            drop(permit);
            drop(admission);
        });
    }
}
