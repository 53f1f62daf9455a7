//! The operators' HTTP listener: Prometheus metrics, health checks and the admin API.
//!
//! A listener of its own, apart from the MQTT listeners, with its own trust
//! (STYLE.md item 11, linkerd's admin port): loopback-only by default
//! (`http.listen = 127.0.0.1:8080`, `--http-listen`).
//!
//! | route | what | who |
//! |---|---|---|
//! | `GET /metrics` | Prometheus text format ([`crate::metrics`]) | anyone who reaches the port |
//! | `GET /healthz` | 200 while the process serves HTTP (liveness) | anyone |
//! | `GET /readyz` | 200 when listeners are bound and the store is open, else 503; JSON body with each check | anyone |
//! | `/api/v1/...` | the admin API ([`admin`]) | trusted peers, see below |
//!
//! Trust for the admin API: a request from a loopback peer (127.0.0.0/8, ::1, or
//! ::ffff:127.x) is trusted while `http.trust_loopback` is on (the default). Any other
//! request needs `Authorization: Bearer <http.token>`; without a configured token such
//! requests are refused with 403, with a wrong or missing token with 401. Note that a
//! reverse proxy on the same host makes every request look loopback: set a token and
//! `trust_loopback = false` behind one.
//!
//! # Layout
//! - this file: [`Readiness`], the router, authentication, [`serve`];
//! - [`admin`]: the JSON admin API.

pub mod admin;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ferromq_config::HttpConfig;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::server::BoundListener;

/// What `/readyz` reports. The server sets `listeners`; the store sets `store`; on a
/// cluster node, the cluster must be joined, with a leader seen within
/// `cluster.leader_lost_timeout`, and caught up. `draining` turns readiness off during
/// shutdown.
pub struct Readiness {
    listeners: AtomicBool,
    store: AtomicBool,
    draining: AtomicBool,
    cluster: std::sync::OnceLock<ferromq_cluster::Cluster>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("listeners", &self.listeners)
            .field("store", &self.store)
            .field("draining", &self.draining)
            .field("cluster", &self.cluster.get().is_some())
            .finish()
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            listeners: AtomicBool::new(false),
            store: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            cluster: std::sync::OnceLock::new(),
        }
    }
}

impl Readiness {
    pub fn set_listeners_bound(&self, v: bool) {
        self.listeners.store(v, Ordering::Relaxed);
    }

    pub fn set_store_open(&self, v: bool) {
        self.store.store(v, Ordering::Relaxed);
    }

    pub fn set_draining(&self, v: bool) {
        self.draining.store(v, Ordering::Relaxed);
    }

    /// The cluster's own readiness joins the checks.
    pub fn set_cluster(&self, cluster: ferromq_cluster::Cluster) {
        let _ = self.cluster.set(cluster);
    }

    fn cluster_ready(&self) -> bool {
        self.cluster.get().is_none_or(|c| c.is_ready())
    }

    /// Ready to serve clients: every check passes and the broker is not draining.
    pub fn is_ready(&self) -> bool {
        self.listeners.load(Ordering::Relaxed)
            && self.store.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
            && self.cluster_ready()
    }

    fn checks(&self) -> serde_json::Value {
        let s = |ok: bool, yes: &str, no: &str| if ok { yes.to_owned() } else { no.to_owned() };
        let mut checks = json!({
            "listeners": s(self.listeners.load(Ordering::Relaxed), "ok", "not bound"),
            "store": s(self.store.load(Ordering::Relaxed), "ok", "not open"),
            "shutdown": s(!self.draining.load(Ordering::Relaxed), "ok", "draining"),
        });
        if self.cluster.get().is_some() {
            checks["cluster"] = json!(s(
                self.cluster_ready(),
                "ok",
                "not joined, no leader seen within cluster.leader_lost_timeout, or not caught up"
            ));
        }
        checks
    }
}

/// Shared by every HTTP handler.
#[derive(Debug)]
pub struct HttpState {
    pub broker: Broker,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub config: HttpConfig,
    /// Every bound listener (MQTT and this one), for `/api/v1/broker`.
    pub listeners: Vec<BoundListener>,
    pub started_at: SystemTime,
}

/// The whole HTTP surface.
pub fn router(state: Arc<HttpState>) -> Router {
    let api = admin::routes().layer(axum::middleware::from_fn_with_state(
        state.clone(),
        authorize,
    ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .nest("/api/v1", api)
        .with_state(state)
}

/// Serves `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<HttpState>, stop: CancellationToken) {
    tracing::info!(addr = ?listener.local_addr().ok(), "listening (http: /metrics, /healthz, /readyz, /api/v1)");
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "http listener failed");
    }
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let s = state.clone();
    // Rendering walks every session and the data directory: off the async workers.
    let rendered =
        tokio::task::spawn_blocking(move || s.metrics.render(&s.broker, s.readiness.is_ready()))
            .await;
    match rendered {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    let ready = state.readiness.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({ "ready": ready, "checks": state.readiness.checks() })),
    )
        .into_response()
}

/// A JSON error body `{"error": message}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// Whether `ip` is a loopback address, IPv4-mapped IPv6 included.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Compares without an early exit, so the time taken does not reveal how much of a
/// guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the admin API does with a request from `peer` carrying `authorization`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// No token configured: only trusted loopback peers may use the API.
    Forbidden,
    /// A token is configured and was missing or wrong.
    Unauthorized,
}

pub fn verdict(config: &HttpConfig, peer: IpAddr, authorization: Option<&[u8]>) -> Verdict {
    if config.trust_loopback && is_loopback(peer) {
        return Verdict::Allow;
    }
    let Some(token) = config.token.as_deref() else {
        return Verdict::Forbidden;
    };
    let presented = authorization.and_then(|h| h.strip_prefix(b"Bearer "));
    match presented {
        Some(p) if constant_time_eq(p, token.as_bytes()) => Verdict::Allow,
        _ => Verdict::Unauthorized,
    }
}

async fn authorize(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let auth = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match verdict(&state.config, peer.ip(), auth) {
        Verdict::Allow => next.run(request).await,
        Verdict::Forbidden => {
            tracing::warn!(addr = %peer, path = %request.uri().path(), "admin API request refused: not loopback and no http.token configured");
            error(
                StatusCode::FORBIDDEN,
                "the admin API is only available from loopback unless http.token is set",
            )
        }
        Verdict::Unauthorized => {
            tracing::warn!(addr = %peer, path = %request.uri().path(), "admin API request refused: missing or wrong bearer token");
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ferromq\""),
            );
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(token: Option<&str>, trust_loopback: bool) -> HttpConfig {
        HttpConfig {
            token: token.map(str::to_owned),
            trust_loopback,
            ..HttpConfig::default()
        }
    }

    #[test]
    fn loopback_and_tokens() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let lo6: IpAddr = "::ffff:127.0.0.2"
            .parse()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let remote = IpAddr::from([10, 1, 2, 3]);
        assert_eq!(verdict(&cfg(None, true), lo, None), Verdict::Allow);
        assert_eq!(verdict(&cfg(None, true), lo6, None), Verdict::Allow);
        assert_eq!(verdict(&cfg(None, true), remote, None), Verdict::Forbidden);
        assert_eq!(
            verdict(&cfg(None, true), remote, Some(b"Bearer x")),
            Verdict::Forbidden
        );
        let t = cfg(Some("s3cret"), true);
        assert_eq!(verdict(&t, remote, None), Verdict::Unauthorized);
        assert_eq!(
            verdict(&t, remote, Some(b"Bearer s3cre")),
            Verdict::Unauthorized
        );
        assert_eq!(verdict(&t, remote, Some(b"s3cret")), Verdict::Unauthorized);
        assert_eq!(verdict(&t, remote, Some(b"Bearer s3cret")), Verdict::Allow);
        let strict = cfg(Some("s3cret"), false);
        assert_eq!(verdict(&strict, lo, None), Verdict::Unauthorized);
        assert_eq!(verdict(&strict, lo, Some(b"Bearer s3cret")), Verdict::Allow);
        assert_eq!(verdict(&cfg(None, false), lo, None), Verdict::Forbidden);
    }
}
