//! The MQTT 3.1, 3.1.1 and 5.0 wire codec.
//!
//! Pure: no tokio, no sockets, no clocks, so it can be fuzzed and property-tested in
//! isolation and reused by the broker, the benchmark loader and the tests.
//!
//! Decoding follows *check, then parse* (mini-redis `Frame::check`): [`check`] reads
//! only the fixed header, enforces the maximum packet size **before** any payload is
//! buffered, and reports an incomplete frame as `Ok(None)` (an expected condition,
//! not an error). [`decode`] then parses one complete frame, cutting topics and
//! payloads out of the read buffer as [`bytes::Bytes`] without copying.
//!
//! # Layout
//! - [`packet`]: the packet types (one struct per control packet) and [`QoS`].
//! - [`properties`]: the MQTT 5 property sets, one struct per packet kind.
//! - [`reason`]: [`ReasonCode`] and the v3 CONNACK return codes.
//! - [`error`]: [`DecodeError`] / [`EncodeError`], each mapping to the reason code the
//!   spec names for it.
//! - `decode` / `encode`: the wire format, both directions ([`check`], [`decode`],
//!   [`encode`], [`encoded_len`], and the fan-out hot path [`encode_publish`] /
//!   [`publish_encoded_len`]).
//! - `primitives`: varints, strings, binary data; the bounds-checked `Reader` and the
//!   `Sink` the encoder writes through (once to count, once to write).
//! - `properties_codec`: MQTT 5 property blocks, with the per-packet allowed sets.
//!
//! # What the codec leaves to the broker
//! Rules that need session state or policy: topic filter syntax (wildcard placement,
//! shared subscriptions), Topic Alias resolution and range, a client sending a
//! Subscription Identifier in PUBLISH [MQTT-3.3.4-6], Authentication Data without a
//! Method, client identifier policy, reason-code validity per packet, and the
//! Maximum Packet Size the *client* announced (use [`encoded_len`]).
#![forbid(unsafe_code)]

pub mod error;
pub mod packet;
pub mod properties;
pub mod reason;

mod decode;
mod encode;
mod primitives;
mod properties_codec;

pub use bytestring::ByteString;
pub use decode::{FrameInfo, check, decode};
pub use encode::{
    encode, encode_publish, encode_publish_ref, encoded_len, publish_encoded_len,
    publish_ref_encoded_len,
};
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use properties::*;
pub use reason::ReasonCode;
