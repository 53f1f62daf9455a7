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
//! - [`router`]: subscription index (topic trie, shared groups, overlapping
//!   subscriptions).
//! - [`retained`]: retained message store.
//! - [`message`]: the shared, reference-counted application message.
//! - [`sys`]: `$SYS/broker/...` statistics.
//! - [`stats`]: broker-wide counters.
//! - [`auth`]: password file, ACL file, failed-login limits (`Security`).
//! - [`limits`]: connection gate, per-address tables, publish throttle, fd limit.
#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod connection;
pub mod limits;
pub mod message;
pub mod retained;
pub mod router;
pub mod server;
pub mod session;
pub mod stats;
pub mod sys;

pub use broker::Broker;
pub use server::Server;
