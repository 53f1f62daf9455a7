//! Malformed and forbidden input: each case must close only the offending
//! connection, with the reason code the spec names, and leave the broker working.
//!
//! For every case, on a broker of its own:
//! - a 5.0 client that sends the bad packet gets a DISCONNECT with the reason the
//!   spec names and then the connection closes (5.0 section 4.13, [MQTT-4.13.1-1]);
//! - a 3.1.1 client doing the same sees the connection close with no packet at
//!   all: 3.1.1 has no server DISCONNECT ([MQTT-4.8.0-1]);
//! - bytes before a valid CONNECT get the connection closed without a CONNACK;
//! - afterwards a [`Witness`] (a 5.0 publisher and a 3.1.1 subscriber connected
//!   before the case) still completes a QoS 1 round-trip;
//! - the broker's stderr has a line naming the client (its id, or its address
//!   as `127.0.0.1:PORT` when no id is known) and the problem, which the test
//!   recognises by one of the phrases in the case's [`Problem`] (matched
//!   case-insensitively; extend a list rather than weaken a check).
//!
//! Not covered here: a socket that connects and never sends CONNECT is closed after
//! `mqtt.connect_timeout`; `tests/python/test_abuse.py` checks that with 10,000 of them.

use std::time::Duration;

use ferromq_tests::mqtt::{
    self, Connack, Props, check_frame, connect_body, connect_flags, frame, prop, publish_body,
    publish_first_byte, reason, subscribe_body, unsubscribe_body,
};
use ferromq_tests::raw::REPLY_TIMEOUT;
use ferromq_tests::{RawClient, TestNode, Witness};

const BASE_CONFIG: &str = "listener 0 127.0.0.1\nsys_interval 0\n";
const LOG_TIMEOUT: Duration = Duration::from_secs(5);
/// What "at once" means for a header the broker must refuse without the body.
const IMMEDIATE: Duration = Duration::from_secs(2);

/// How a log line names a problem: any one of `phrases`, case-insensitively.
struct Problem {
    what: &'static str,
    phrases: &'static [&'static str],
}

const REMAINING_LENGTH: Problem = Problem {
    what: "a Remaining Length longer than four bytes",
    phrases: &[
        "remaining length",
        "variable byte integer",
        "varint",
        "variable length",
    ],
};
const EOF_MID_PACKET: Problem = Problem {
    what: "EOF inside a packet",
    phrases: &[
        "eof",
        "end of file",
        "end of stream",
        "truncated",
        "incomplete",
        "partial",
        "unexpected end",
        "mid-packet",
        "mid packet",
    ],
};
const TRUNCATED_FIELD: Problem = Problem {
    what: "a field running past the end of its packet",
    phrases: &[
        "truncated",
        "too short",
        "incomplete",
        "overrun",
        "overflow",
        "exceeds",
        "unexpected end",
        "insufficient",
        "not enough",
        "length",
        "malformed",
    ],
};
const INVALID_UTF8: Problem = Problem {
    what: "invalid UTF-8",
    phrases: &["utf"],
};
const NUL_CHARACTER: Problem = Problem {
    what: "U+0000 in a string",
    phrases: &["u+0000", "nul", "\\0", "\\u{0}", "zero byte"],
};
const RESERVED_BITS: Problem = Problem {
    what: "reserved bits set",
    phrases: &["flag", "reserved"],
};
const BEFORE_CONNECT: Problem = Problem {
    what: "a packet other than CONNECT first",
    phrases: &[
        "before connect",
        "before a connect",
        "expected connect",
        "not connect",
        "not a connect",
        "first packet",
        "without connect",
        "prior to connect",
        "must be connect",
        "instead of connect",
        "unexpected",
    ],
};
const SECOND_CONNECT: Problem = Problem {
    what: "a second CONNECT",
    phrases: &[
        "second connect",
        "duplicate connect",
        "connect twice",
        "connect again",
        "repeated connect",
        "unexpected connect",
        "another connect",
        "more than one connect",
        "already connected",
    ],
};
const WILDCARD_TOPIC: Problem = Problem {
    what: "a wildcard in a Topic Name",
    phrases: &["wildcard"],
};
const BAD_QOS: Problem = Problem {
    what: "QoS 3",
    phrases: &["qos"],
};
const DUPLICATE_PROPERTY: Problem = Problem {
    what: "a property included twice",
    phrases: &["duplicate", "more than once", "twice", "repeated"],
};
const TOPIC_ALIAS: Problem = Problem {
    what: "an invalid Topic Alias",
    phrases: &["alias"],
};
const EMPTY_TOPIC: Problem = Problem {
    what: "an empty Topic Name",
    phrases: &["empty", "zero length", "zero-length", "alias"],
};
const NO_FILTERS: Problem = Problem {
    what: "SUBSCRIBE/UNSUBSCRIBE without topic filters",
    phrases: &[
        "no topic filter",
        "no filter",
        "without filter",
        "without topic filter",
        "empty",
        "no subscription",
        "zero filters",
        "at least one",
    ],
};
const TOO_LARGE: Problem = Problem {
    what: "a packet over the maximum packet size",
    phrases: &[
        "too large",
        "too big",
        "packet size",
        "maximum packet",
        "max_packet_size",
        "exceeds",
        "oversize",
    ],
};
const PROTOCOL_VERSION: Problem = Problem {
    what: "an unsupported protocol version",
    phrases: &["protocol version", "protocol level", "unsupported"],
};
const PROTOCOL_NAME: Problem = Problem {
    what: "a bad protocol name",
    phrases: &["protocol name", "invalid protocol"],
};
const NOT_MQTT: Problem = Problem {
    what: "an HTTP request",
    phrases: &[
        "http",
        "flag",
        "reserved",
        "before connect",
        "expected connect",
        "not connect",
        "not a connect",
        "first packet",
        "unexpected",
    ],
};

/// One broker, its witness, and the checks every case shares.
struct Bench {
    node: TestNode,
    witness: Witness,
}

impl Bench {
    async fn start() -> Bench {
        Bench::with_config(BASE_CONFIG).await
    }

    async fn with_config(config: &str) -> Bench {
        let node = TestNode::start(config).await;
        let witness = Witness::connect(node.mqtt_addr(), "witness").await;
        Bench { node, witness }
    }

    async fn v5(&self, id: &str) -> (RawClient, Connack) {
        RawClient::connect_v5(self.node.mqtt_addr(), id, &Props::new())
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:#}"))
    }

    async fn v311(&self, id: &str) -> RawClient {
        RawClient::connect_v311(self.node.mqtt_addr(), id, 60)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:#}"))
    }

    /// A connected 5.0 client `id` sends `bad`: DISCONNECT with one of `allowed`,
    /// then close [MQTT-4.13.1-1]; then the shared checks.
    async fn reject_v5(&mut self, id: &str, bad: &[u8], allowed: &[u8], problem: &Problem) {
        let (mut client, _) = self.v5(id).await;
        self.send_then_reject_v5(&mut client, id, bad, allowed, problem)
            .await;
    }

    async fn send_then_reject_v5(
        &mut self,
        client: &mut RawClient,
        id: &str,
        bad: &[u8],
        allowed: &[u8],
        problem: &Problem,
    ) {
        client
            .send(bad)
            .await
            .unwrap_or_else(|e| panic!("{id}: send: {e}"));
        client
            .expect_disconnect_then_close(allowed, REPLY_TIMEOUT)
            .await;
        self.after_close(id, Some(id), client, problem).await;
    }

    /// A connected 3.1.1 client `id` sends `bad`: the connection closes with no
    /// packet [MQTT-4.8.0-1]; then the shared checks.
    async fn reject_v311(&mut self, id: &str, bad: &[u8], problem: &Problem) {
        let mut client = self.v311(id).await;
        client
            .send(bad)
            .await
            .unwrap_or_else(|e| panic!("{id}: send: {e}"));
        client.expect_closed_silently(REPLY_TIMEOUT).await;
        self.after_close(id, Some(id), &client, problem).await;
    }

    /// A fresh TCP connection sends `bad` before any CONNECT: closed with no
    /// CONNACK [MQTT-3.1.0-1]; then the shared checks.
    async fn reject_before_connect(&mut self, case: &str, bad: &[u8], problem: &Problem) {
        let mut client = RawClient::tcp(self.node.mqtt_addr())
            .await
            .unwrap_or_else(|e| panic!("{case}: connect: {e}"));
        client
            .send(bad)
            .await
            .unwrap_or_else(|e| panic!("{case}: send: {e}"));
        client.expect_closed_silently(REPLY_TIMEOUT).await;
        self.after_close(case, None, &client, problem).await;
    }

    /// The broker still routes, and it logged the problem against the client.
    async fn after_close(
        &mut self,
        case: &str,
        client_id: Option<&str>,
        client: &RawClient,
        problem: &Problem,
    ) {
        self.node.assert_running();
        self.witness.round_trip(case).await;
        let addr = client.local_addr().to_string();
        let what = format!(
            "naming {} or {addr} and {} (one of {:?})",
            client_id.unwrap_or("(no client id)"),
            problem.what,
            problem.phrases
        );
        self.node
            .wait_log_line(&what, LOG_TIMEOUT, |line| {
                let names_client =
                    names(line, &addr) || client_id.is_some_and(|id| names(line, id));
                // The phrase must come from the message, not from the client id
                // (`utf8-ff-v5` must not count as naming invalid UTF-8).
                let mut message = line.replace(&addr, " ");
                if let Some(id) = client_id {
                    message = message.replace(id, " ");
                }
                let message = message.to_lowercase();
                names_client && problem.phrases.iter().any(|p| message.contains(p))
            })
            .await;
    }
}

/// Whether `line` contains `token` as a whole word: ids and addresses that are
/// prefixes of others (`127.0.0.1:5432` vs `127.0.0.1:54321`) do not count.
fn names(line: &str, token: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    line.match_indices(token).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + token.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// A PUBLISH whose topic is raw bytes: QoS 0, 5.0 form with no properties.
fn publish_raw_topic_v5(topic: &[u8]) -> Vec<u8> {
    frame(
        0x30,
        &publish_body(topic, None, Some(&Props::new()), b"payload"),
    )
}

fn publish_raw_topic_v311(topic: &[u8]) -> Vec<u8> {
    frame(0x30, &publish_body(topic, None, None, b"payload"))
}

/// A QoS 1 PUBLISH of exactly `total` bytes on the wire (fixed header included).
fn publish_of_size(total: usize, v5: bool) -> Vec<u8> {
    let props = Props::new();
    let empty = publish_body(b"big", Some(1), v5.then_some(&props), b"");
    // Try each Remaining Length width until the payload fills the packet exactly.
    for len_bytes in 1..=4 {
        let Some(payload_len) = total.checked_sub(1 + len_bytes + empty.len()) else {
            continue;
        };
        let payload = vec![b'x'; payload_len];
        let packet = frame(
            publish_first_byte(1, false, false),
            &publish_body(b"big", Some(1), v5.then_some(&props), &payload),
        );
        if packet.len() == total {
            return packet;
        }
    }
    panic!("no PUBLISH of exactly {total} bytes");
}

// ---------------------------------------------------------------------------

/// A Variable Byte Integer has at most four bytes (5.0 section 1.5.5, 3.1.1
/// section 2.2.3); a fifth is a Malformed Packet.
#[tokio::test]
async fn remaining_length_with_five_bytes_is_malformed() {
    let mut b = Bench::start().await;
    let bad = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    b.reject_v5(
        "remlen-v5",
        &bad,
        &[reason::MALFORMED_PACKET],
        &REMAINING_LENGTH,
    )
    .await;
    b.reject_v311("remlen-v311", &bad, &REMAINING_LENGTH).await;
    b.reject_before_connect(
        "remlen-connect",
        &[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        &REMAINING_LENGTH,
    )
    .await;
}

/// A packet cut off by EOF: the broker drops the connection and logs why.
#[tokio::test]
async fn truncated_packet_then_eof_closes_the_connection() {
    let mut b = Bench::start().await;
    // PUBLISH announcing 10 bytes, only 4 sent, then FIN.
    let cut = [0x30, 0x0A, 0x00, 0x03, b'a', b'b'];

    let (mut v5, _) = b.v5("eof-v5").await;
    v5.send(&cut).await.expect("send");
    v5.shutdown_write().await.expect("half-close");
    let seen = v5.expect_closed(REPLY_TIMEOUT).await;
    // The broker may still say why on the half-open connection; if it does, it
    // must be Malformed Packet.
    for p in &seen {
        let d = mqtt::Disconnect::parse(p).unwrap_or_else(|e| panic!("eof-v5: got {p}: {e}"));
        assert_eq!(
            d.reason,
            reason::MALFORMED_PACKET,
            "eof-v5: DISCONNECT reason"
        );
    }
    b.after_close("eof-v5", Some("eof-v5"), &v5, &EOF_MID_PACKET)
        .await;

    let mut v311 = b.v311("eof-v311").await;
    v311.send(&cut).await.expect("send");
    v311.shutdown_write().await.expect("half-close");
    v311.expect_closed_silently(REPLY_TIMEOUT).await;
    b.after_close("eof-v311", Some("eof-v311"), &v311, &EOF_MID_PACKET)
        .await;

    let mut raw = RawClient::tcp(b.node.mqtt_addr()).await.expect("tcp");
    let connect = mqtt::connect_v311("eof-connect", 60);
    raw.send(&connect[..connect.len() - 3]).await.expect("send");
    raw.shutdown_write().await.expect("half-close");
    raw.expect_closed_silently(REPLY_TIMEOUT).await;
    b.after_close("eof-connect", None, &raw, &EOF_MID_PACKET)
        .await;
}

/// A complete frame whose fields need more bytes than its Remaining Length gives
/// is a Malformed Packet (5.0 section 4.13: reason 0x81).
#[tokio::test]
async fn fields_longer_than_the_frame_are_malformed() {
    let mut b = Bench::start().await;
    // PUBLISH: topic length 5, one byte of topic left in the frame.
    let topic_overrun = [0x30, 0x03, 0x00, 0x05, b'a'];
    // 5.0 PUBLISH: topic "a", Property Length 10, two bytes of properties left.
    let props_overrun = frame(0x30, &[0x00, 0x01, b'a', 0x0A, 0x01, 0x00]);
    // 5.0 SUBSCRIBE: filter length 9, one byte of filter and no options byte.
    let filter_overrun_v5 = frame(0x82, &[0x00, 0x01, 0x00, 0x00, 0x09, b'a']);
    // 3.1.1 SUBSCRIBE: filter "ab" without its requested QoS byte.
    let missing_qos_v311 = frame(0x82, &[0x00, 0x01, 0x00, 0x02, b'a', b'b']);

    let malformed = [reason::MALFORMED_PACKET];
    b.reject_v5(
        "short-topic-v5",
        &topic_overrun,
        &malformed,
        &TRUNCATED_FIELD,
    )
    .await;
    b.reject_v5(
        "short-props-v5",
        &props_overrun,
        &malformed,
        &TRUNCATED_FIELD,
    )
    .await;
    b.reject_v5(
        "short-filter-v5",
        &filter_overrun_v5,
        &malformed,
        &TRUNCATED_FIELD,
    )
    .await;
    b.reject_v311("short-topic-v311", &topic_overrun, &TRUNCATED_FIELD)
        .await;
    b.reject_v311("short-sub-v311", &missing_qos_v311, &TRUNCATED_FIELD)
        .await;
}

/// Ill-formed UTF-8 in a Topic Name or filter is a Malformed Packet: 5.0
/// [MQTT-1.5.4-1], 3.1.1 [MQTT-1.5.3-1].
#[tokio::test]
async fn invalid_utf8_in_topic_is_malformed() {
    let mut b = Bench::start().await;
    let topics: [(&str, &[u8]); 4] = [
        ("ff", b"a/\xFF"),
        ("cut", b"a/\xC3"),
        // U+D800, a UTF-16 surrogate, which [MQTT-1.5.4-1] names explicitly.
        ("surrogate", b"a/\xED\xA0\x80"),
        ("overlong", b"a/\xC0\xAF"),
    ];
    for (name, topic) in topics {
        b.reject_v5(
            &format!("utf8-{name}-v5"),
            &publish_raw_topic_v5(topic),
            &[reason::MALFORMED_PACKET],
            &INVALID_UTF8,
        )
        .await;
        b.reject_v311(
            &format!("utf8-{name}-v311"),
            &publish_raw_topic_v311(topic),
            &INVALID_UTF8,
        )
        .await;
    }
    let sub = frame(
        0x82,
        &subscribe_body(1, Some(&Props::new()), &[(b"a/\xFF/#", 0)]),
    );
    b.reject_v5(
        "utf8-filter-v5",
        &sub,
        &[reason::MALFORMED_PACKET],
        &INVALID_UTF8,
    )
    .await;
}

/// U+0000 in a UTF-8 string is a Malformed Packet: 5.0 [MQTT-1.5.4-2], 3.1.1
/// [MQTT-1.5.3-2].
#[tokio::test]
async fn nul_character_in_topic_is_malformed() {
    let mut b = Bench::start().await;
    b.reject_v5(
        "nul-topic-v5",
        &publish_raw_topic_v5(b"a\x00b"),
        &[reason::MALFORMED_PACKET],
        &NUL_CHARACTER,
    )
    .await;
    b.reject_v311(
        "nul-topic-v311",
        &publish_raw_topic_v311(b"a\x00b"),
        &NUL_CHARACTER,
    )
    .await;
    let sub = frame(
        0x82,
        &subscribe_body(1, Some(&Props::new()), &[(b"a/\x00", 0)]),
    );
    b.reject_v5(
        "nul-filter-v5",
        &sub,
        &[reason::MALFORMED_PACKET],
        &NUL_CHARACTER,
    )
    .await;
}

/// Reserved bits must have their listed values, else the packet is malformed:
/// fixed-header flags (5.0 [MQTT-2.1.3-1], 3.1.1 [MQTT-2.2.2-2]), SUBSCRIBE
/// flags [MQTT-3.8.1-1], UNSUBSCRIBE flags [MQTT-3.10.1-1], 5.0 Subscription
/// Options bits 6-7 [MQTT-3.8.3-5], the upper bits of the 3.1.1 requested-QoS
/// byte (3.1.1 [MQTT-3-8.3-4], sic).
#[tokio::test]
async fn reserved_flag_bits_are_malformed() {
    let mut b = Bench::start().await;
    let malformed = [reason::MALFORMED_PACKET];
    let props = Props::new();

    let sub_flags_v5 = frame(0x80, &subscribe_body(1, Some(&props), &[(b"a", 0)]));
    let unsub_flags_v5 = frame(0xA0, &unsubscribe_body(1, Some(&props), &[b"a"]));
    let ping_flags = [0xC1, 0x00];
    let sub_options_v5 = frame(0x82, &subscribe_body(1, Some(&props), &[(b"a", 0xC0)]));

    b.reject_v5("flags-sub-v5", &sub_flags_v5, &malformed, &RESERVED_BITS)
        .await;
    b.reject_v5(
        "flags-unsub-v5",
        &unsub_flags_v5,
        &malformed,
        &RESERVED_BITS,
    )
    .await;
    b.reject_v5("flags-ping-v5", &ping_flags, &malformed, &RESERVED_BITS)
        .await;
    b.reject_v5(
        "flags-options-v5",
        &sub_options_v5,
        &malformed,
        &RESERVED_BITS,
    )
    .await;

    let sub_flags_v311 = frame(0x80, &subscribe_body(1, None, &[(b"a", 0)]));
    let unsub_flags_v311 = frame(0xA0, &unsubscribe_body(1, None, &[b"a"]));
    let sub_qos_bits_v311 = frame(0x82, &subscribe_body(1, None, &[(b"a", 0x04)]));
    b.reject_v311("flags-sub-v311", &sub_flags_v311, &RESERVED_BITS)
        .await;
    b.reject_v311("flags-unsub-v311", &unsub_flags_v311, &RESERVED_BITS)
        .await;
    b.reject_v311("flags-ping-v311", &ping_flags, &RESERVED_BITS)
        .await;
    b.reject_v311("flags-qos-v311", &sub_qos_bits_v311, &RESERVED_BITS)
        .await;
}

/// The first packet must be CONNECT; anything else closes the connection and
/// gets no CONNACK [MQTT-3.1.0-1].
#[tokio::test]
async fn packet_before_connect_closes_without_connack() {
    let mut b = Bench::start().await;
    b.reject_before_connect(
        "publish-first",
        &mqtt::publish_v311("a", 0, 0, b"x"),
        &BEFORE_CONNECT,
    )
    .await;
    b.reject_before_connect("pingreq-first", &mqtt::pingreq(), &BEFORE_CONNECT)
        .await;
    b.reject_before_connect(
        "subscribe-first",
        &mqtt::subscribe_v311(1, &[("a", 0)]),
        &BEFORE_CONNECT,
    )
    .await;
}

/// A second CONNECT on a connection is a Protocol Error [MQTT-3.1.0-2].
#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    let mut b = Bench::start().await;
    b.reject_v5(
        "twice-v5",
        &mqtt::connect_v5("twice-v5", 60, &Props::new()),
        &[reason::PROTOCOL_ERROR],
        &SECOND_CONNECT,
    )
    .await;
    b.reject_v311(
        "twice-v311",
        &mqtt::connect_v311("twice-v311", 60),
        &SECOND_CONNECT,
    )
    .await;
}

/// A Topic Name must not contain wildcards [MQTT-3.3.2-2]; 5.0 allows either
/// Protocol Error or Topic Name invalid as the reason.
#[tokio::test]
async fn wildcard_in_publish_topic_is_rejected() {
    let mut b = Bench::start().await;
    let allowed = [reason::PROTOCOL_ERROR, reason::TOPIC_NAME_INVALID];
    for (name, topic) in [
        ("plus", "a/+"),
        ("hash", "a/#"),
        ("bare-hash", "#"),
        ("mid-plus", "a/+/b"),
    ] {
        b.reject_v5(
            &format!("wild-{name}-v5"),
            &mqtt::publish_v5(topic, 0, 0, &Props::new(), b"x"),
            &allowed,
            &WILDCARD_TOPIC,
        )
        .await;
        b.reject_v311(
            &format!("wild-{name}-v311"),
            &mqtt::publish_v311(topic, 0, 0, b"x"),
            &WILDCARD_TOPIC,
        )
        .await;
    }
}

/// A PUBLISH with both QoS bits set is a Malformed Packet [MQTT-3.3.1-4].
#[tokio::test]
async fn publish_with_qos_3_is_malformed() {
    let mut b = Bench::start().await;
    let first = publish_first_byte(3, false, false);
    let v5 = frame(
        first,
        &publish_body(b"a", Some(1), Some(&Props::new()), b"x"),
    );
    let v311 = frame(first, &publish_body(b"a", Some(1), None, b"x"));
    b.reject_v5("qos3-v5", &v5, &[reason::MALFORMED_PACKET], &BAD_QOS)
        .await;
    b.reject_v311("qos3-v311", &v311, &BAD_QOS).await;
}

/// Properties that may appear once are a Protocol Error when repeated (5.0
/// sections 3.3.2.3.3 and 3.8.2.1.2); User Property may repeat (2.2.2.2).
#[tokio::test]
async fn duplicate_property_is_a_protocol_error() {
    let mut b = Bench::start().await;

    // The control: repeated User Properties are fine.
    let (mut ok, _) = b.v5("dup-user-ok").await;
    let users = Props::new().user("k", "1").user("k", "2");
    ok.send(&mqtt::publish_v5("dup/ok", 1, 7, &users, b"x"))
        .await
        .expect("send");
    let p = ok.expect_packet(REPLY_TIMEOUT).await;
    let ack = mqtt::Ack::parse(&p, true).unwrap_or_else(|e| panic!("dup-user-ok: {p}: {e}"));
    // Any reason below 0x80 is a success, e.g. 0x10 No matching subscribers.
    assert!(
        ack.packet_id == 7 && ack.reason < 0x80,
        "two User Properties must be accepted, got {ack:?}"
    );

    let twice_expiry = Props::new()
        .u32(prop::MESSAGE_EXPIRY_INTERVAL, 10)
        .u32(prop::MESSAGE_EXPIRY_INTERVAL, 20);
    b.reject_v5(
        "dup-expiry",
        &mqtt::publish_v5("dup/a", 0, 0, &twice_expiry, b"x"),
        &[reason::PROTOCOL_ERROR],
        &DUPLICATE_PROPERTY,
    )
    .await;

    let twice_sub_id = Props::new()
        .varint(prop::SUBSCRIPTION_IDENTIFIER, 1)
        .varint(prop::SUBSCRIPTION_IDENTIFIER, 2);
    b.reject_v5(
        "dup-sub-id",
        &mqtt::subscribe_v5(1, &twice_sub_id, &[("dup/#", 0)]),
        &[reason::PROTOCOL_ERROR],
        &DUPLICATE_PROPERTY,
    )
    .await;
}

/// Topic Alias 0 is not permitted [MQTT-3.3.2-8], nor one above the Topic Alias
/// Maximum the server sent in CONNACK (absent means 0) [MQTT-3.3.2-9]; the
/// reason is Topic Alias invalid (Protocol Error also allowed for 0).
#[tokio::test]
async fn invalid_topic_alias_is_rejected() {
    let mut b = Bench::start().await;
    b.reject_v5(
        "alias-zero",
        &mqtt::publish_v5(
            "alias/a",
            0,
            0,
            &Props::new().u16(prop::TOPIC_ALIAS, 0),
            b"x",
        ),
        &[reason::TOPIC_ALIAS_INVALID, reason::PROTOCOL_ERROR],
        &TOPIC_ALIAS,
    )
    .await;

    let (mut client, connack) = b.v5("alias-over").await;
    let max = connack
        .props
        .get_u16(prop::TOPIC_ALIAS_MAXIMUM)
        .unwrap_or(0);
    let Some(over) = max.checked_add(1) else {
        // Topic Alias Maximum 65535 leaves no alias above it to send.
        return;
    };
    let bad = mqtt::publish_v5(
        "alias/b",
        0,
        0,
        &Props::new().u16(prop::TOPIC_ALIAS, over),
        b"x",
    );
    b.send_then_reject_v5(
        &mut client,
        "alias-over",
        &bad,
        &[reason::TOPIC_ALIAS_INVALID],
        &TOPIC_ALIAS,
    )
    .await;
}

/// An empty Topic Name needs a Topic Alias that is already mapped (5.0 section
/// 3.3.2.3.4), else Protocol Error; 3.1.1 forbids it outright [MQTT-4.7.3-1].
#[tokio::test]
async fn empty_topic_without_alias_is_rejected() {
    let mut b = Bench::start().await;
    b.reject_v5(
        "empty-topic-v5",
        &publish_raw_topic_v5(b""),
        &[reason::PROTOCOL_ERROR, reason::TOPIC_NAME_INVALID],
        &EMPTY_TOPIC,
    )
    .await;
    b.reject_v311(
        "empty-topic-v311",
        &publish_raw_topic_v311(b""),
        &EMPTY_TOPIC,
    )
    .await;

    let (mut client, connack) = b.v5("empty-unmapped").await;
    if connack
        .props
        .get_u16(prop::TOPIC_ALIAS_MAXIMUM)
        .unwrap_or(0)
        >= 1
    {
        let bad = frame(
            0x30,
            &publish_body(
                b"",
                None,
                Some(&Props::new().u16(prop::TOPIC_ALIAS, 1)),
                b"x",
            ),
        );
        b.send_then_reject_v5(
            &mut client,
            "empty-unmapped",
            &bad,
            &[reason::PROTOCOL_ERROR, reason::TOPIC_ALIAS_INVALID],
            &EMPTY_TOPIC,
        )
        .await;
    }
}

/// SUBSCRIBE needs at least one filter (5.0 [MQTT-3.8.3-2], 3.1.1
/// [MQTT-3.8.3-3]; the labels differ between versions), UNSUBSCRIBE too
/// [MQTT-3.10.3-2]: Protocol Error.
#[tokio::test]
async fn subscribe_without_filters_is_a_protocol_error() {
    let mut b = Bench::start().await;
    let props = Props::new();
    b.reject_v5(
        "nofilter-sub-v5",
        &frame(0x82, &subscribe_body(1, Some(&props), &[])),
        &[reason::PROTOCOL_ERROR],
        &NO_FILTERS,
    )
    .await;
    b.reject_v5(
        "nofilter-unsub-v5",
        &frame(0xA2, &unsubscribe_body(1, Some(&props), &[])),
        &[reason::PROTOCOL_ERROR],
        &NO_FILTERS,
    )
    .await;
    b.reject_v311(
        "nofilter-sub-v311",
        &frame(0x82, &subscribe_body(1, None, &[])),
        &NO_FILTERS,
    )
    .await;
    b.reject_v311(
        "nofilter-unsub-v311",
        &frame(0xA2, &unsubscribe_body(1, None, &[])),
        &NO_FILTERS,
    )
    .await;
}

const SMALL_MAX_CONFIG: &str = "listener 0 127.0.0.1\nsys_interval 0\nmax_packet_size 1024\n";

/// `max_packet_size 1024` is announced in CONNACK and enforced on the whole
/// packet (fixed header included, 5.0 section 3.2.2.3.6): 1024 bytes pass,
/// 1025 and 2000 get Packet too large. (Mosquitto 2.0.11 counts Remaining
/// Length + 1 instead and lets 1025 and 1026 through.)
#[tokio::test]
async fn packet_over_max_packet_size_is_too_large() {
    let mut b = Bench::with_config(SMALL_MAX_CONFIG).await;

    let (mut ok, connack) = b.v5("size-ok").await;
    assert_eq!(
        connack.props.get_u32(prop::MAXIMUM_PACKET_SIZE),
        Some(1024),
        "CONNACK Maximum Packet Size"
    );
    let fits = publish_of_size(1024, true);
    assert_eq!(check_frame(&fits, usize::MAX), Ok(Some((3, 1024))));
    ok.send(&fits).await.expect("send");
    let p = ok.expect_packet(REPLY_TIMEOUT).await;
    let ack = mqtt::Ack::parse(&p, true).unwrap_or_else(|e| panic!("size-ok: {p}: {e}"));
    assert!(
        ack.reason < 0x80,
        "a 1024-byte PUBLISH fits max_packet_size 1024, got {ack:?}"
    );

    let too_large = [reason::PACKET_TOO_LARGE];
    b.reject_v5(
        "size-1025-v5",
        &publish_of_size(1025, true),
        &too_large,
        &TOO_LARGE,
    )
    .await;
    b.reject_v5(
        "size-2000-v5",
        &publish_of_size(2000, true),
        &too_large,
        &TOO_LARGE,
    )
    .await;
    b.reject_v311("size-2000-v311", &publish_of_size(2000, false), &TOO_LARGE)
        .await;
}

/// A header announcing a huge packet is refused from the header alone: the
/// broker must not wait for (or buffer) a body it will reject anyway.
#[tokio::test]
async fn huge_remaining_length_is_refused_without_waiting_for_the_body() {
    let mut b = Bench::with_config(SMALL_MAX_CONFIG).await;
    // 16,777,215 and 268,435,455 (the largest Variable Byte Integer) bytes.
    let headers: [(&str, [u8; 5]); 2] = [
        ("16m", [0x30, 0xFF, 0xFF, 0xFF, 0x07]),
        ("256m", [0x30, 0xFF, 0xFF, 0xFF, 0x7F]),
    ];
    for (name, header) in headers {
        let id = format!("huge-{name}-v5");
        let (mut client, _) = b.v5(&id).await;
        client.send(&header).await.expect("send");
        client
            .expect_disconnect_then_close(&[reason::PACKET_TOO_LARGE], IMMEDIATE)
            .await;
        b.after_close(&id, Some(&id), &client, &TOO_LARGE).await;

        let id = format!("huge-{name}-v311");
        let mut client = b.v311(&id).await;
        client.send(&header).await.expect("send");
        client.expect_closed_silently(IMMEDIATE).await;
        b.after_close(&id, Some(&id), &client, &TOO_LARGE).await;
    }
    let mut raw = RawClient::tcp(b.node.mqtt_addr()).await.expect("tcp");
    raw.send(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F])
        .await
        .expect("send");
    raw.expect_closed_silently(IMMEDIATE).await;
    b.after_close("huge-connect", None, &raw, &TOO_LARGE).await;
}

/// An unsupported protocol level gets CONNACK "unsupported protocol version"
/// and a close [MQTT-3.1.2-2]: 0x84 in the 5.0 form for level 6, return code
/// 0x01 in the 3.1.1 form for level 2.
#[tokio::test]
async fn unsupported_protocol_level_gets_connack_then_close() {
    let mut b = Bench::start().await;
    let addr = b.node.mqtt_addr();

    let mut v6 = RawClient::tcp(addr).await.expect("tcp");
    v6.set_v5(true);
    let props = Props::new();
    let connect = frame(
        0x10,
        &connect_body(
            b"MQTT",
            6,
            connect_flags::CLEAN_START,
            60,
            Some(&props),
            b"level-6",
        ),
    );
    v6.send(&connect).await.expect("send");
    let connack = v6
        .expect_connack(REPLY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("level-6: {e:#}"));
    assert_eq!(
        connack.code,
        reason::UNSUPPORTED_PROTOCOL_VERSION,
        "level-6 CONNACK"
    );
    v6.expect_closed_silently(REPLY_TIMEOUT).await;
    b.after_close("level-6", Some("level-6"), &v6, &PROTOCOL_VERSION)
        .await;

    let mut v2 = RawClient::tcp(addr).await.expect("tcp");
    let connect = frame(
        0x10,
        &connect_body(b"MQTT", 2, connect_flags::CLEAN_START, 60, None, b"level-2"),
    );
    v2.send(&connect).await.expect("send");
    let connack = v2
        .expect_connack(REPLY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("level-2: {e:#}"));
    assert_eq!(
        connack.code,
        reason::V311_UNACCEPTABLE_PROTOCOL_VERSION,
        "level-2 CONNACK"
    );
    v2.expect_closed_silently(REPLY_TIMEOUT).await;
    b.after_close("level-2", Some("level-2"), &v2, &PROTOCOL_VERSION)
        .await;
}

/// A wrong protocol name closes the connection; a CONNACK, if any, must not
/// accept it [MQTT-3.1.2-1].
#[tokio::test]
async fn bad_protocol_name_closes_the_connection() {
    let mut b = Bench::start().await;
    for (case, name, level) in [
        ("name-mqtx", &b"MQTX"[..], 4u8),
        ("name-http", &b"HTTP"[..], 5u8),
    ] {
        let mut raw = RawClient::tcp(b.node.mqtt_addr()).await.expect("tcp");
        let props = Props::new();
        let connect = frame(
            0x10,
            &connect_body(
                name,
                level,
                connect_flags::CLEAN_START,
                60,
                (level == 5).then_some(&props),
                case.as_bytes(),
            ),
        );
        raw.send(&connect).await.expect("send");
        let seen = raw.expect_closed(REPLY_TIMEOUT).await;
        for p in &seen {
            assert_eq!(
                p.kind(),
                mqtt::kind::CONNACK,
                "{case}: only a CONNACK may answer, got {p}"
            );
            let code = p.body.get(1).copied().unwrap_or(0);
            assert_ne!(code, 0, "{case}: CONNACK accepted a bad protocol name: {p}");
        }
        b.after_close(case, Some(case), &raw, &PROTOCOL_NAME).await;
    }
}

/// An HTTP request on the MQTT port is closed without any reply. Its first
/// byte `G` (0x47) reads as a PUBACK with reserved flags set, before CONNECT;
/// the request is longer than the Remaining Length its second byte `E` (69)
/// announces, so a broker waiting for a whole frame has one.
#[tokio::test]
async fn http_request_on_mqtt_port_is_closed() {
    let mut b = Bench::start().await;
    let request = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: ferromq-tests\r\n\
                   Accept: */*\r\nConnection: keep-alive\r\n\r\n";
    assert!(request.len() > 2 + 69);
    b.reject_before_connect("http-get", request.as_bytes(), &NOT_MQTT)
        .await;
}

/// A CONNECT with its reserved flag set is malformed [MQTT-3.1.2-3]; one with
/// Session Expiry Interval twice is a Protocol Error. The connection closes; a
/// 5.0 CONNACK before the close, if any, carries that reason.
#[tokio::test]
async fn malformed_connect_closes_the_connection() {
    let mut b = Bench::start().await;
    let props = Props::new();
    let twice = Props::new()
        .u32(prop::SESSION_EXPIRY_INTERVAL, 1)
        .u32(prop::SESSION_EXPIRY_INTERVAL, 2);
    // The third field is the reason a 5.0 CONNACK may carry, None for 3.1.1
    // (which has no CONNACK code for a malformed CONNECT: just the close).
    let cases: [(&str, Vec<u8>, Option<u8>, &Problem); 3] = [
        (
            "connect-reserved-v5",
            frame(
                0x10,
                &connect_body(
                    b"MQTT",
                    5,
                    connect_flags::CLEAN_START | connect_flags::RESERVED,
                    60,
                    Some(&props),
                    b"connect-reserved-v5",
                ),
            ),
            Some(reason::MALFORMED_PACKET),
            &RESERVED_BITS,
        ),
        (
            "connect-reserved-v311",
            frame(
                0x10,
                &connect_body(
                    b"MQTT",
                    4,
                    connect_flags::CLEAN_START | connect_flags::RESERVED,
                    60,
                    None,
                    b"connect-reserved-v311",
                ),
            ),
            None,
            &RESERVED_BITS,
        ),
        (
            "connect-dup-expiry",
            mqtt::connect_v5("connect-dup-expiry", 60, &twice),
            Some(reason::PROTOCOL_ERROR),
            &DUPLICATE_PROPERTY,
        ),
    ];
    for (case, connect, connack_reason, problem) in cases {
        let mut raw = RawClient::tcp(b.node.mqtt_addr()).await.expect("tcp");
        raw.set_v5(connack_reason.is_some());
        raw.send(&connect).await.expect("send");
        let seen = raw.expect_closed(REPLY_TIMEOUT).await;
        match connack_reason {
            Some(want) => {
                for p in &seen {
                    let connack = Connack::parse(p, true)
                        .unwrap_or_else(|e| panic!("{case}: only a CONNACK may answer: {p}: {e}"));
                    assert_eq!(connack.code, want, "{case}: CONNACK reason");
                }
            }
            None => assert!(
                seen.is_empty(),
                "{case}: 3.1.1 connection must close with no packet, got {seen:?}"
            ),
        }
        b.after_close(case, Some(case), &raw, problem).await;
    }
}

#[test]
fn names_matches_whole_tokens_only() {
    assert!(names("client eof-v5 (127.0.0.1:5432): eof", "eof-v5"));
    assert!(names("peer 127.0.0.1:5432 sent junk", "127.0.0.1:5432"));
    assert!(!names("peer 127.0.0.1:54321 sent junk", "127.0.0.1:5432"));
    assert!(!names("client eof-v5-2: eof", "eof-v5"));
}

#[test]
fn publish_of_size_is_exact() {
    for total in [100, 1024, 1025, 2000, 20_000] {
        for v5 in [false, true] {
            assert_eq!(publish_of_size(total, v5).len(), total);
        }
    }
}
