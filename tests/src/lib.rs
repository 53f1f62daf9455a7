//! Black-box tests for the `ferromq` binary.
//!
//! The broker runs as a real process on ephemeral ports; tests talk to it over
//! TCP with a hand-written MQTT client, so they exercise exactly what a client
//! on the network sees: bytes, reason codes, closes, exit codes and log lines.
//! Nothing here depends on the broker's crates.
//!
//! Layout:
//! - [`node`]: [`TestNode`], one broker process (start, log, signals, exit);
//! - [`raw`]: [`RawClient`], raw MQTT over `TcpStream` (send any bytes, read packets);
//! - [`mqtt`]: hand-encoded 3.1.1/5.0 packets and decoders for the broker's replies;
//! - [`witness`]: [`Witness`], a publisher/subscriber pair that proves the
//!   broker still routes after a bad client is thrown out;
//! - [`wait`]: [`wait_until`], deadlines instead of sleeps;
//! - [`certs`]: [`certs::TestCerts`], a CA and server/client certificates made
//!   with rcgen at test time (also the `gen-test-certs OUTDIR` binary);
//! - [`tls`]: TLS client configs for [`RawClient::tls`].
//!
//! The tests themselves are in `tests/tests/`: `malformed.rs`, `config_errors.rs`,
//! `shutdown.rs`. They need a built broker (`cargo build -p ferromq`, or set
//! `FERROMQ_BIN`).

pub mod certs;
pub mod mqtt;
pub mod node;
pub mod raw;
pub mod tls;
pub mod wait;
pub mod witness;

pub use node::{Launch, ListenerInfo, StartError, TestNode};
pub use raw::{CloseKind, Incoming, RawClient};
pub use wait::wait_until;
pub use witness::Witness;
