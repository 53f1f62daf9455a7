//! ferromq: an MQTT 3.1 / 3.1.1 / 5.0 broker, single node or clustered.
//!
//! This crate is the broker's core and its `ferromq` binary. The wire codec, the topic
//! index and the configuration live in their own crates (`ferromq-codec`,
//! `ferromq-topic`, `ferromq-config`) so they stay free of tokio and can be tested and
//! fuzzed alone; `docs/ARCHITECTURE.md` draws the whole picture.
//!
//! # Layout
//! - [`server`]: binds listeners, accepts, runs and shuts down.
//! - [`connection`]: one task per connection: CONNECT handshake, packet handlers,
//!   batched writes, keep alive, topic aliases.
//! - [`broker`]: the shared state handle: session registry, takeover, wills, session
//!   expiry, publish routing, subscriptions, retained messages.
//! - [`session`]: per-session delivery state machine (queue, in-flight window, packet
//!   ids, QoS 2 state), without I/O.
//! - [`fanout`]: reused per-thread buffers of the fan-out path.
//! - [`router`]: subscription index (topic trie, shared groups, overlapping
//!   subscriptions).
//! - [`retained`]: retained message store.
//! - [`message`]: the shared, reference-counted application message.
//! - [`sys`]: `$SYS/broker/...` statistics.
//! - [`stats`]: broker-wide counters.
//! - [`transport`]: per listener protocol (`mqtt`, `mqtts`, `ws`, `wss`), the TLS
//!   handshake and WebSocket upgrade before MQTT.
//! - [`tls`]: rustls server configs from PEM files, client certificates, reloads.
//! - [`ws`]: the WebSocket upgrade and the byte-stream adapter over its messages.
//! - [`reload`]: SIGHUP and file-change reloads.
//! - [`metrics`]: the Prometheus registry and every metric family.
//! - [`http`]: the operators' HTTP listener: `/metrics`, `/healthz`, `/readyz`, the
//!   admin API.
//! - [`ctl`]: `ferromq ctl`, the command-line client of the admin API.
//! - [`auth`]: password file, ACL file, failed-login limits (`Security`).
//! - [`limits`]: connection gate, per-address tables, publish throttle, fd limit.
#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod cluster_link;
pub mod connection;
pub mod ctl;
pub mod fanout;
pub mod http;
pub mod limits;
pub mod message;
pub mod metrics;
pub mod reload;
pub mod retained;
pub mod router;
pub mod server;
pub mod session;
pub mod stats;
pub mod store;
pub mod sys;
pub mod tls;
pub mod transport;
pub mod ws;

pub use broker::Broker;
pub use server::Server;
