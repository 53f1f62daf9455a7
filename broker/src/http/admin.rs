//! The JSON admin API under `/api/v1` (authorisation in [`super`]).
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/v1/broker` | version, uptime, readiness, listeners, totals |
//! | `GET /api/v1/clients?limit=N` | sessions, sorted by client id: address, protocol, connected since, subscription count, queue |
//! | `GET /api/v1/clients/{id}` | one session, with its subscriptions |
//! | `POST /api/v1/clients/{id}/kick` | disconnect it (v5: DISCONNECT 0x98 Administrative action); the session stays, as after any disconnect |
//! | `GET /api/v1/subscriptions?limit=N` | every subscription: client, filter, share group, QoS, options |
//! | `GET /api/v1/retained?topic=T` | one retained message (payload as UTF-8 when it is, and base64) |
//! | `GET /api/v1/retained?filter=F&limit=N` | retained messages matching a filter (default `#`) |
//! | `DELETE /api/v1/retained?topic=T` | clear a retained message without publishing anything |
//!
//! Bound: a list returns at most `limit` entries (default [`DEFAULT_LIMIT`], at most
//! [`MAX_LIMIT`]) and says `"truncated": true` when there were more; `total` is the
//! number before truncation. A client id in a path is percent-decoded (`%2F` for `/`).

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferromq_codec::ReasonCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{HttpState, error};
use crate::broker::{SessionSnapshot, SubscriptionSnapshot};
use crate::message::Message;
use crate::stats::{Stats, protocol_label};

/// Entries a list returns when no `limit` is given.
pub const DEFAULT_LIMIT: usize = 1000;
/// The largest `limit` honoured (larger values are clamped).
pub const MAX_LIMIT: usize = 100_000;

type St = State<Arc<HttpState>>;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/broker", get(broker_info))
        .route("/clients", get(clients))
        .route("/clients/{id}", get(client))
        .route("/clients/{id}/kick", post(kick))
        .route("/subscriptions", get(subscriptions))
        .route("/retained", get(retained_get).delete(retained_delete))
        .route("/cluster", get(cluster_status))
        .route("/cluster/leave", post(cluster_leave))
        .route("/cluster/nodes/{id}", axum::routing::delete(cluster_remove))
}

fn not_clustered() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "this broker is not a cluster node (cluster.enabled = false)",
    )
}

/// The node's view of the cluster: id, role, leader, term, indexes, members.
async fn cluster_status(State(st): St) -> Response {
    match st.broker.cluster() {
        Some(c) => Json(serde_json::to_value(c.status()).unwrap_or(Value::Null)).into_response(),
        None => not_clustered(),
    }
}

/// This node asks the leader to remove it from the membership.
async fn cluster_leave(State(st): St) -> Response {
    let Some(c) = st.broker.cluster() else {
        return not_clustered();
    };
    match c.leave().await {
        Ok(()) => {
            tracing::info!("left the cluster (admin API)");
            Json(json!({ "node_id": c.node_id(), "left": true })).into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("cannot leave: {e}"),
        ),
    }
}

/// Removes another node from the membership (through the leader).
async fn cluster_remove(State(st): St, Path(id): Path<u64>) -> Response {
    let Some(c) = st.broker.cluster() else {
        return not_clustered();
    };
    match c.remove(id).await {
        Ok(()) => {
            tracing::info!(node_id = id, "node removed from the cluster (admin API)");
            Json(json!({ "node_id": id, "removed": true })).into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("cannot remove node {id}: {e}"),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

fn limit(q: Option<usize>) -> usize {
    q.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT)
}

async fn broker_info(State(st): St) -> Json<Value> {
    let b = &st.broker;
    let s = b.stats();
    let totals = b.session_totals();
    let (direct, shared) = b.subscription_counts();
    let dropped = Stats::get(&s.publish_dropped_no_subscribers)
        + Stats::get(&s.dropped_queue_full)
        + Stats::get(&s.dropped_expired)
        + Stats::get(&s.dropped_too_large)
        + Stats::get(&s.dropped_payload_too_large)
        + Stats::get(&s.dropped_not_authorized)
        + Stats::get(&s.dropped_rate_limited)
        + Stats::get(&s.dropped_offline_qos0);
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": rfc3339(st.started_at),
        "uptime_seconds": b.uptime().as_secs(),
        "ready": st.readiness.is_ready(),
        "listeners": st.listeners,
        "clients": {
            "connected": Stats::get(&s.clients_connected),
            "maximum": Stats::get(&s.clients_maximum),
            "sessions_online": totals.online,
            "sessions_offline": totals.offline,
        },
        "subscriptions": direct,
        "shared_subscriptions": shared,
        "retained": { "messages": b.retained_count(), "bytes": b.retained_bytes() },
        "messages": {
            "received": Stats::get(&s.publish_received),
            "sent": Stats::get(&s.publish_sent),
            "dropped": dropped,
            "queued": totals.queued,
            "inflight": totals.inflight,
        },
    }))
}

fn client_json(s: &SessionSnapshot, with_subscriptions: bool) -> Value {
    let conn = s.connection.as_ref();
    let mut v = json!({
        "client_id": s.client_id.to_string(),
        "connected": s.online,
        "address": conn.map(|c| c.addr.to_string()),
        "listener": conn.map(|c| c.listener.to_string()),
        "protocol": conn.map(|c| protocol_label(c.protocol)),
        "keep_alive": conn.map(|c| c.keep_alive),
        "connected_since": conn.map(|c| rfc3339(c.connected_at)),
        "subscriptions": s.subscriptions.len(),
        "queued": s.queued,
        "inflight": s.inflight,
        "session_expiry_interval": s.expiry_interval,
    });
    if with_subscriptions {
        v["subscriptions"] = Value::Array(s.subscriptions.iter().map(subscription_json).collect());
    }
    v
}

fn subscription_json(s: &SubscriptionSnapshot) -> Value {
    json!({
        "client_id": s.client_id.to_string(),
        "filter": s.filter,
        "share_group": s.share_group,
        "qos": s.options.qos as u8,
        "no_local": s.options.no_local,
        "retain_as_published": s.options.retain_as_published,
        "retain_handling": s.options.retain_handling as u8,
        "subscription_identifier": s.identifier,
    })
}

async fn clients(State(st): St, Query(q): Query<ListQuery>) -> Json<Value> {
    let limit = limit(q.limit);
    let mut sessions = st.broker.sessions();
    sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    let total = sessions.len();
    let list: Vec<Value> = sessions
        .iter()
        .take(limit)
        .map(|s| client_json(&st.broker.snapshot(s), false))
        .collect();
    Json(json!({ "total": total, "truncated": total > limit, "clients": list }))
}

async fn client(State(st): St, Path(id): Path<String>) -> Response {
    match st.broker.session(&id) {
        Some(s) => Json(client_json(&st.broker.snapshot(&s), true)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            &format!("no session for client id {id:?}"),
        ),
    }
}

async fn kick(State(st): St, Path(id): Path<String>) -> Response {
    if st.broker.kick(&id, ReasonCode::ADMINISTRATIVE_ACTION) {
        tracing::info!(client_id = %id, "client kicked by the admin API");
        Json(json!({ "client_id": id, "kicked": true })).into_response()
    } else if st.broker.session(&id).is_some() {
        error(
            StatusCode::CONFLICT,
            &format!("client {id:?} has a session but is not connected"),
        )
    } else {
        error(
            StatusCode::NOT_FOUND,
            &format!("no session for client id {id:?}"),
        )
    }
}

async fn subscriptions(State(st): St, Query(q): Query<ListQuery>) -> Json<Value> {
    let limit = limit(q.limit);
    let mut all: Vec<SubscriptionSnapshot> = st
        .broker
        .sessions()
        .iter()
        .flat_map(|s| st.broker.snapshot(s).subscriptions)
        .collect();
    all.sort_by(|a, b| (&a.client_id, &a.filter).cmp(&(&b.client_id, &b.filter)));
    let total = all.len();
    let list: Vec<Value> = all.iter().take(limit).map(subscription_json).collect();
    Json(json!({ "total": total, "truncated": total > limit, "subscriptions": list }))
}

#[derive(Debug, Deserialize)]
struct RetainedQuery {
    topic: Option<String>,
    filter: Option<String>,
    limit: Option<usize>,
}

fn retained_json(m: &Message) -> Value {
    let now = Instant::now();
    json!({
        "topic": m.topic.to_string(),
        "qos": m.qos as u8,
        "payload_size": m.payload.len(),
        "payload": std::str::from_utf8(&m.payload).ok(),
        "payload_base64": base64(&m.payload),
        "age_seconds": now.saturating_duration_since(m.received_at).as_secs(),
        "message_expiry_interval": m.remaining_expiry(now),
        "content_type": m.properties.content_type.as_ref().map(|c| c.to_string()),
    })
}

async fn retained_get(State(st): St, Query(q): Query<RetainedQuery>) -> Response {
    if let Some(topic) = q.topic {
        if let Err(e) = ferromq_topic::validate_topic_name(&topic) {
            return error(StatusCode::BAD_REQUEST, &format!("invalid topic: {e}"));
        }
        return match st.broker.retained_get(&topic) {
            Some(m) => Json(retained_json(&m)).into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("no retained message on {topic:?}"),
            ),
        };
    }
    let filter = q.filter.unwrap_or_else(|| "#".to_owned());
    if let Err(e) = ferromq_topic::validate_topic_filter(&filter) {
        return error(StatusCode::BAD_REQUEST, &format!("invalid filter: {e}"));
    }
    let limit = limit(q.limit);
    let (list, truncated) = st.broker.retained_list(&filter, limit);
    let list: Vec<Value> = list.iter().map(|m| retained_json(m)).collect();
    Json(json!({ "truncated": truncated, "retained": list })).into_response()
}

async fn retained_delete(State(st): St, Query(q): Query<RetainedQuery>) -> Response {
    let Some(topic) = q.topic else {
        return error(
            StatusCode::BAD_REQUEST,
            "the `topic` query parameter is required",
        );
    };
    if let Err(e) = ferromq_topic::validate_topic_name(&topic) {
        return error(StatusCode::BAD_REQUEST, &format!("invalid topic: {e}"));
    }
    if st.broker.retained_delete(&topic) {
        tracing::info!(topic = %topic, "retained message deleted by the admin API");
        Json(json!({ "topic": topic, "deleted": true })).into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            &format!("no retained message on {topic:?}"),
        )
    }
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `2024-05-01T12:34:56Z` (UTC, whole seconds).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn base64_vectors() {
        // RFC 4648 §10.
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn rfc3339_dates() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(at(1_714_566_896)), "2024-05-01T12:34:56Z");
    }
}
