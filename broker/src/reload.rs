//! Reloading files while the broker runs, without dropping connected clients.
//!
//! Two triggers: SIGHUP (as with Mosquitto: `kill -HUP`, `systemctl reload`), and a
//! poll of the files' modification time and size every [`FILE_POLL_INTERVAL`] (no
//! inotify: polling also sees Kubernetes' symlink swaps of mounted secrets, and
//! costs one `stat` per file). Today that is the TLS listeners' certificate, key and
//! CA files ([`TlsContext::reload`]); a failed reload keeps what was loaded before.
//!
//! The SIGHUP handler is installed even when nothing is reloadable, so a SIGHUP
//! never kills the broker (the default action of the signal).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::tls::TlsContext;

/// How often certificate files are checked for changes.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Spawns the reload task; it ends when `shutdown` is cancelled.
pub fn spawn(tls: Vec<Arc<TlsContext>>, shutdown: CancellationToken) {
    #[cfg(unix)]
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the SIGHUP handler; reload on file change only");
            None
        }
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FILE_POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let sighup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let sighup = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sighup => {
                    tracing::info!(tls_listeners = tls.len(), "SIGHUP: reloading");
                    off_runtime(&tls, |ctx| {
                        ctx.reload("SIGHUP");
                    })
                    .await;
                }
                _ = tick.tick() => {
                    off_runtime(&tls, |ctx| {
                        if ctx.files_changed() {
                            ctx.reload("certificate files changed");
                        }
                    })
                    .await;
                }
            }
        }
    });
}

/// Runs `f` on every context on the blocking pool: it reads files.
async fn off_runtime(tls: &[Arc<TlsContext>], f: fn(&TlsContext)) {
    if tls.is_empty() {
        return;
    }
    let tls = tls.to_vec();
    let _ = tokio::task::spawn_blocking(move || tls.iter().for_each(|ctx| f(ctx))).await;
}
