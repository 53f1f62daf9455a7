//! The table of scalar keys, shared by every source.
//!
//! Each entry knows its `section.name`, its type (how to parse it from TOML or from
//! text, what to say when that fails, how to render it back) and its documentation.
//! The TOML reader, the `FERROMQ_<SECTION>_<KEY>` environment reader, the mosquitto.conf
//! reader and the commented TOML renderer all go through [`KEYS`], so a key added here
//! is accepted, overridable and documented everywhere at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml_edit::Value;

use crate::model::{Bootstrap, Config, Durability, LogFormat};

/// A value as it arrived, before it is parsed into a field's type.
#[derive(Clone, Copy)]
pub(crate) enum Raw<'a> {
    /// Text from an environment variable, a mosquitto.conf line or a listener address
    /// list: numbers and booleans are read from their spelling.
    Text(&'a str),
    /// A typed TOML value, strictly typed (`max_qos = "1"` is an error), with the
    /// source text it was parsed from for error messages.
    Toml { value: &'a Value, source: &'a str },
}

impl<'a> Raw<'a> {
    /// The value as the user wrote it, shortened for an error message.
    pub(crate) fn shown(self) -> String {
        let text = match self {
            Raw::Text(s) => s,
            Raw::Toml { source, .. } => source,
        };
        shorten(text)
    }

    fn int(self) -> Option<i128> {
        match self {
            Raw::Text(s) => {
                let s = s.trim();
                // Reason codes read best in hex (`0x87`), as TOML allows too.
                match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                    Some(hex) => i128::from_str_radix(hex, 16).ok(),
                    None => s.parse().ok(),
                }
            }
            Raw::Toml {
                value: Value::Integer(i),
                ..
            } => Some(i128::from(*i.value())),
            Raw::Toml { .. } => None,
        }
    }

    pub(crate) fn string(self) -> Option<&'a str> {
        match self {
            Raw::Text(s) => Some(s),
            Raw::Toml {
                value: Value::String(s),
                ..
            } => Some(s.value().as_str()),
            Raw::Toml { .. } => None,
        }
    }

    /// `true`/`false`, and in text also `1`/`0` like Mosquitto's parser.
    fn bool(self) -> Option<bool> {
        match self {
            Raw::Text(s) => parse_bool(s),
            Raw::Toml {
                value: Value::Boolean(b),
                ..
            } => Some(*b.value()),
            Raw::Toml { .. } => None,
        }
    }
}

pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        t if t.eq_ignore_ascii_case("true") || t == "1" => Some(true),
        t if t.eq_ignore_ascii_case("false") || t == "0" => Some(false),
        _ => None,
    }
}

pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A field type: parsed from a [`Raw`] value and rendered as a TOML literal.
pub(crate) trait FieldType: Sized {
    /// What is accepted, for error messages ("expected ...").
    const EXPECTED: &'static str;
    /// `None` when the value has the wrong type or is out of the type's range.
    fn parse(raw: Raw<'_>) -> Option<Self>;
    /// The value as a TOML literal.
    fn render(&self) -> String;
}

impl FieldType for bool {
    const EXPECTED: &'static str = "`true` or `false`";
    fn parse(raw: Raw<'_>) -> Option<Self> {
        raw.bool()
    }
    fn render(&self) -> String {
        self.to_string()
    }
}

macro_rules! int_field {
    ($ty:ty, $expected:literal) => {
        impl FieldType for $ty {
            const EXPECTED: &'static str = $expected;
            fn parse(raw: Raw<'_>) -> Option<Self> {
                raw.int().and_then(|i| <$ty>::try_from(i).ok())
            }
            fn render(&self) -> String {
                self.to_string()
            }
        }
    };
}

int_field!(u8, "an integer from 0 to 255");
int_field!(u16, "an integer from 0 to 65535");
int_field!(u32, "an integer from 0 to 4294967295");
int_field!(usize, "a non-negative integer");
int_field!(u64, "a non-negative integer");

/// `max_payload_size` has this type: 0 means "no limit", as with Mosquitto's
/// `message_size_limit`, because TOML and the environment cannot spell `None`.
impl FieldType for Option<u32> {
    const EXPECTED: &'static str = "an integer from 0 (no limit) to 4294967295";
    fn parse(raw: Raw<'_>) -> Option<Self> {
        let n = u32::parse(raw)?;
        Some((n != 0).then_some(n))
    }
    fn render(&self) -> String {
        self.unwrap_or(0).to_string()
    }
}

/// Only `http.token` has this type: the empty string means "none", because TOML and
/// the environment cannot spell `None`.
impl FieldType for Option<String> {
    const EXPECTED: &'static str = "a string (empty for none)";
    fn parse(raw: Raw<'_>) -> Option<Self> {
        let s = raw.string()?;
        Some((!s.is_empty()).then(|| s.to_owned()))
    }
    fn render(&self) -> String {
        toml_string(self.as_deref().unwrap_or(""))
    }
}

impl FieldType for SocketAddr {
    const EXPECTED: &'static str =
        "an IP address and port such as \"127.0.0.1:8080\" (host names are not resolved)";
    fn parse(raw: Raw<'_>) -> Option<Self> {
        raw.string().and_then(|s| s.trim().parse().ok())
    }
    fn render(&self) -> String {
        toml_string(&self.to_string())
    }
}

/// `limits.max_connections`: 0 means "no configured limit", as above.
impl FieldType for Option<usize> {
    const EXPECTED: &'static str = "a non-negative integer (0: no limit)";
    fn parse(raw: Raw<'_>) -> Option<Self> {
        let n = usize::parse(raw)?;
        Some((n != 0).then_some(n))
    }
    fn render(&self) -> String {
        self.unwrap_or(0).to_string()
    }
}

/// Optional files (`auth.password_file`, `auth.acl_file`): the empty string means
/// "none", because TOML and the environment cannot spell `None`.
impl FieldType for Option<PathBuf> {
    const EXPECTED: &'static str = "a path (a string; \"\" for none)";
    fn parse(raw: Raw<'_>) -> Option<Self> {
        let s = raw.string()?;
        Some((!s.trim().is_empty()).then(|| PathBuf::from(s)))
    }
    fn render(&self) -> String {
        toml_string(
            &self
                .as_deref()
                .map(|p| p.to_string_lossy())
                .unwrap_or_default(),
        )
    }
}

impl FieldType for String {
    const EXPECTED: &'static str = "a string";
    fn parse(raw: Raw<'_>) -> Option<Self> {
        raw.string().map(str::to_owned)
    }
    fn render(&self) -> String {
        toml_string(self)
    }
}

impl FieldType for PathBuf {
    const EXPECTED: &'static str = "a path (a string)";
    fn parse(raw: Raw<'_>) -> Option<Self> {
        raw.string().map(PathBuf::from)
    }
    /// Non-UTF-8 paths are rendered lossily.
    fn render(&self) -> String {
        toml_string(&self.to_string_lossy())
    }
}

impl FieldType for LogFormat {
    const EXPECTED: &'static str = "`text` or `json`";
    fn parse(raw: Raw<'_>) -> Option<Self> {
        raw.string().and_then(|s| s.trim().parse().ok())
    }
    fn render(&self) -> String {
        toml_string(self.as_str())
    }
}

impl FieldType for Durability {
    const EXPECTED: &'static str = "`strict` or `periodic`";
    fn parse(raw: Raw<'_>) -> Option<Self> {
        match raw.string()?.trim().to_ascii_lowercase().as_str() {
            "strict" => Some(Durability::Strict),
            "periodic" => Some(Durability::Periodic),
            _ => None,
        }
    }
    fn render(&self) -> String {
        toml_string(self.as_str())
    }
}

impl FieldType for Bootstrap {
    const EXPECTED: &'static str = "`auto`, `always` or `never`";
    fn parse(raw: Raw<'_>) -> Option<Self> {
        match raw.string()?.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Bootstrap::Auto),
            "always" => Some(Bootstrap::Always),
            "never" => Some(Bootstrap::Never),
            _ => None,
        }
    }
    fn render(&self) -> String {
        toml_string(self.as_str())
    }
}

/// Durations are whole seconds (`10`) or a string of number-unit pairs with units
/// `ms`, `s`, `m`, `h` (`"10s"`, `"500ms"`, `"1m30s"`); the first is what Mosquitto
/// uses, the second is what people write.
impl FieldType for Duration {
    const EXPECTED: &'static str =
        "a duration: whole seconds (10) or a string such as \"10s\", \"500ms\", \"5m\", \"1h\"";
    fn parse(raw: Raw<'_>) -> Option<Self> {
        match raw {
            Raw::Toml {
                value: Value::Integer(i),
                ..
            } => u64::try_from(*i.value()).ok().map(Duration::from_secs),
            _ => raw.string().and_then(parse_duration),
        }
    }
    fn render(&self) -> String {
        toml_string(&render_duration(*self))
    }
}

pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Duration::from_secs);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(part)?;
    }
    Some(total)
}

/// Whole seconds as `"10s"`, anything finer as milliseconds (sub-millisecond parts are
/// dropped; no key needs them).
pub(crate) fn render_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A TOML basic string.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One scalar key.
pub(crate) struct KeySpec {
    pub section: &'static str,
    pub name: &'static str,
    pub expected: &'static str,
    /// The mosquitto.conf directive that sets it, for the rendered docs.
    pub mosquitto: Option<&'static str>,
    /// Comment lines for the rendered TOML.
    pub doc: &'static str,
    /// Parses `raw` into the field; `None` leaves the config untouched.
    pub set: fn(&mut Config, Raw<'_>) -> Option<()>,
    pub render: fn(&Config) -> String,
}

impl KeySpec {
    /// `section.name`, as in error messages.
    pub(crate) fn path(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }

    /// `FERROMQ_SECTION_NAME`.
    pub(crate) fn env_var(&self) -> String {
        format!("FERROMQ_{}_{}", self.section, self.name).to_ascii_uppercase()
    }
}

/// The TOML sections holding scalar keys, in rendering order, with their docs.
pub(crate) const SECTIONS: [(&str, &str); 8] = [
    (
        "mqtt",
        "Protocol limits and behaviour, shared by every listener.",
    ),
    (
        "auth",
        "Authentication and authorisation, with Mosquitto's password and ACL files.\n\
         Both files are read at start (a missing or unreadable one stops the broker)\n\
         and again on SIGHUP (a broken one is logged and the old content kept).",
    ),
    (
        "limits",
        "Resource limits against misbehaving or hostile clients; the overflow policy\n\
         of each is in its comment.",
    ),
    (
        "persistence",
        "Sessions, subscriptions, queued and retained messages survive restarts when\n\
         persistence is enabled.",
    ),
    ("sys", "$SYS statistics topics."),
    (
        "cluster",
        "Clustering: nodes share routes, shared-subscription groups, retained messages\n\
         and the persistent-session registry through Raft (openraft over gRPC) and\n\
         forward messages to each other over gRPC streams.",
    ),
    ("log", "Logging."),
    (
        "http",
        "The operators' HTTP listener: /metrics (Prometheus), /healthz, /readyz and the\n\
         admin API (/api/v1/...). /metrics and the health checks are open to every peer;\n\
         the admin API needs `Authorization: Bearer <token>` from any peer that is not a\n\
         trusted loopback peer, and is refused (403) to such peers when no token is set.",
    ),
];

macro_rules! key {
    ($section:literal, $name:literal, $($field:ident).+ : $ty:ty, $mosquitto:expr, $doc:literal) => {
        KeySpec {
            section: $section,
            name: $name,
            expected: <$ty as FieldType>::EXPECTED,
            mosquitto: $mosquitto,
            doc: $doc,
            set: |c: &mut Config, raw: Raw<'_>| {
                c.$($field).+ = <$ty as FieldType>::parse(raw)?;
                Some(())
            },
            render: |c: &Config| FieldType::render(&c.$($field).+),
        }
    };
}

/// Every scalar key, in rendering order.
pub(crate) static KEYS: &[KeySpec] = &[
    key!("mqtt", "allow_anonymous", mqtt.allow_anonymous: bool, Some("allow_anonymous"),
        "Accept clients that connect without a username. A listener's own\n\
         `allow_anonymous` overrides this."),
    key!("mqtt", "allow_zero_length_clientid", mqtt.allow_zero_length_clientid: bool,
        Some("allow_zero_length_clientid"),
        "Accept an empty client identifier and assign one (MQTT 3.1.1 with a clean\n\
         session, and MQTT 5)."),
    key!("mqtt", "auto_id_prefix", mqtt.auto_id_prefix: String, Some("auto_id_prefix"),
        "Prefix of the client identifiers the broker assigns."),
    key!("mqtt", "max_keepalive", mqtt.max_keepalive: u16, Some("max_keepalive"),
        "Largest keep-alive, in seconds, a client may use. An MQTT 5 client asking for\n\
         more, or for 0, is told to use this (Server Keep Alive). 1 to 65535."),
    key!("mqtt", "max_inflight_messages", mqtt.max_inflight_messages: u16,
        Some("max_inflight_messages"),
        "Outgoing QoS 1 and 2 messages in flight per client, further limited by the\n\
         client's Receive Maximum. At least 1. (mosquitto.conf's max_inflight_messages\n\
         sets this and receive_maximum.)"),
    key!("mqtt", "receive_maximum", mqtt.receive_maximum: u16, None,
        "Receive Maximum sent in CONNACK: incoming QoS 1 and 2 publishes a client may\n\
         have unacknowledged. At least 1."),
    key!("mqtt", "max_queued_messages", mqtt.max_queued_messages: usize,
        Some("max_queued_messages"),
        "Messages queued for one offline or slow session. At least 1."),
    key!("mqtt", "max_queued_bytes", mqtt.max_queued_bytes: usize, Some("max_queued_bytes"),
        "Payload bytes queued for one offline or slow session. At least 1."),
    key!("mqtt", "queue_qos0_messages", mqtt.queue_qos0_messages: bool,
        Some("queue_qos0_messages"),
        "Queue QoS 0 messages for offline persistent sessions, as well as QoS 1 and 2."),
    key!("mqtt", "max_packet_size", mqtt.max_packet_size: u32, Some("max_packet_size"),
        "Largest packet accepted, in bytes, fixed header included. 1 to 268435460."),
    key!("mqtt", "max_payload_size", mqtt.max_payload_size: Option<u32>,
        Some("message_size_limit"),
        "Largest PUBLISH payload accepted, in bytes; 0 means no limit beyond\n\
         max_packet_size."),
    key!("mqtt", "topic_alias_maximum", mqtt.topic_alias_maximum: u16,
        Some("max_topic_alias"),
        "Topic aliases an MQTT 5 client may use towards the broker; 0 disables them."),
    key!("mqtt", "retain_available", mqtt.retain_available: bool, Some("retain_available"),
        "Support retained messages."),
    key!("mqtt", "max_qos", mqtt.max_qos: u8, Some("max_qos"),
        "Highest QoS granted to publishes and subscriptions: 0, 1 or 2."),
    key!("mqtt", "max_session_expiry_interval", mqtt.max_session_expiry_interval: u32, None,
        "Cap, in seconds, on the Session Expiry Interval a client may ask for.\n\
         4294967295 means sessions may be kept forever."),
    key!("mqtt", "connect_timeout", mqtt.connect_timeout: Duration, None,
        "How long a new connection has to send CONNECT before it is closed."),
    key!("mqtt", "handshake_timeout", mqtt.handshake_timeout: Duration, None,
        "How long a new connection on an mqtts, ws or wss listener has for its TLS\n\
         handshake, and again for its WebSocket upgrade, before it is closed."),
    key!("mqtt", "max_topic_levels", mqtt.max_topic_levels: usize, None,
        "Levels a topic name or filter may have. At least 1."),
    key!("mqtt", "max_topic_length", mqtt.max_topic_length: usize, None,
        "Bytes a topic name or filter may have, 1 to 65535. A longer PUBLISH topic\n\
         closes the connection (v5: DISCONNECT 0x90); a longer SUBSCRIBE filter is\n\
         refused (0x8F; 3.1.1: 0x80)."),
    key!("auth", "password_file", auth.password_file: Option<PathBuf>, Some("password_file"),
        "A mosquitto_passwd file; \"\" for none. Clients giving a username must\n\
         match a line of it (CONNACK 0x86, 3.1.1: 0x05, otherwise)."),
    key!("auth", "acl_file", auth.acl_file: Option<PathBuf>, Some("acl_file"),
        "A Mosquitto acl_file; \"\" for none (everything allowed). With one, what no\n\
         rule allows is denied."),
    key!("auth", "acl_subscribe_failure_code", auth.acl_subscribe_failure_code: u8, None,
        "SUBACK code for an MQTT 5 subscription the ACL refuses: 128 (0x80,\n\
         Unspecified error) or 135 (0x87, Not authorized). 3.1.1 always gets 0x80."),
    key!("auth", "failure_limit", auth.failure_limit: u32, None,
        "Failed logins from one IP address within failure_window after which its\n\
         CONNECTs are refused at once (CONNACK 0x9F, 3.1.1: 0x05) for failure_block.\n\
         0 disables this."),
    key!("auth", "failure_window", auth.failure_window: Duration, None,
        "Window over which failed logins are counted."),
    key!("auth", "failure_block", auth.failure_block: Duration, None,
        "How long an address that reached failure_limit is refused."),
    key!("limits", "max_connections", limits.max_connections: Option<usize>,
        Some("max_connections (outside a listener block)"),
        "Connections over all listeners; 0 means the file-descriptor limit (raised to\n\
         its hard limit at start) minus a reserve. A socket above it is closed at once."),
    key!("limits", "max_subscriptions_per_client", limits.max_subscriptions_per_client: usize,
        None,
        "Subscriptions one session may hold. A SUBSCRIBE adding more gets 0x97 (Quota\n\
         exceeded; 3.1.1: 0x80) for each filter beyond it. At least 1."),
    key!("limits", "publish_rate_messages", limits.publish_rate_messages: u32, None,
        "PUBLISH packets per second one connection may send; 0 = no limit. Above it\n\
         the broker stops reading the socket until the rate allows (nothing dropped)."),
    key!("limits", "publish_rate_bytes", limits.publish_rate_bytes: u64, None,
        "PUBLISH payload bytes per second one connection may send; 0 = no limit.\n\
         Same policy as publish_rate_messages."),
    key!("limits", "retained_max_bytes", limits.retained_max_bytes: usize, None,
        "Bytes all retained messages may hold together. A retained PUBLISH that would\n\
         exceed it is neither stored nor routed (v5: PUBACK/PUBREC 0x97) and logged.\n\
         At least 1."),
    key!("limits", "connection_rate_per_ip", limits.connection_rate_per_ip: u32, None,
        "New connections per second from one IP address; 0 = no limit. Sockets above\n\
         it are closed at once, with a log line."),
    key!("limits", "worker_threads", limits.worker_threads: usize, None,
        "Threads that run connections and the cluster planes; 0 = one per CPU the\n\
         process may use (its affinity and cgroup quota). Set it when brokers share a\n\
         machine, e.g. cluster nodes side by side on one host."),
    key!("persistence", "enabled", persistence.enabled: bool, Some("persistence"),
        "Store state on disk. When false, everything is lost on restart."),
    key!("persistence", "path", persistence.path: PathBuf, Some("persistence_location"),
        "Data directory. A relative path is relative to the working directory."),
    key!("persistence", "durability", persistence.durability: Durability, None,
        "\"strict\": a QoS 1/2 message stored for a persistent session or as retained is\n\
         acknowledged only once it is on disk (group commit; nothing acknowledged is\n\
         lost on kill -9). \"periodic\": acknowledged at once, flushed every\n\
         flush_interval (a crash loses at most that interval)."),
    key!("persistence", "flush_interval", persistence.flush_interval: Duration, None,
        "Flush interval of durability = \"periodic\"."),
    key!("persistence", "cache_capacity", persistence.cache_capacity: u64, None,
        "Bytes of the store's page cache (sled cache_capacity)."),
    key!("persistence", "queue_memory_window", persistence.queue_memory_window: usize, None,
        "QoS 1/2 deliveries of a persistent session's queue held in memory. Beyond\n\
         them the queue lives on disk only (the memory keeps a sequence number and a\n\
         size per message) and is read back in batches as the client takes it.\n\
         max_queued_messages and max_queued_bytes still bound the whole queue. At\n\
         least 1."),
    key!("sys", "interval", sys.interval: Duration, Some("sys_interval"),
        "How often $SYS topics are published; 0 disables them."),
    key!("log", "level", log.level: String, None,
        "A level (error, warn, info, debug, trace, off) or a tracing filter such as\n\
         \"info,ferromq=debug\"."),
    key!("log", "format", log.format: LogFormat, None,
        "\"text\" for people, \"json\" for log collectors."),
    key!("http", "enabled", http.enabled: bool, None,
        "Serve the HTTP listener."),
    key!("http", "listen", http.listen: SocketAddr, None,
        "Address of the HTTP listener. Loopback only by default; binding beyond loopback\n\
         without a token leaves the admin API closed to remote peers. Also --http-listen."),
    key!("http", "token", http.token: Option<String>, None,
        "Bearer token for the admin API from non-loopback peers; empty for none."),
    key!("http", "trust_loopback", http.trust_loopback: bool, None,
        "Let loopback peers use the admin API without the token."),
    key!("cluster", "enabled", cluster.enabled: bool, None,
        "Run as a cluster node (needs persistence: the Raft log lives in the data\n\
         directory). Off: a single node opens no cluster port."),
    key!("cluster", "listen", cluster.listen: SocketAddr, None,
        "gRPC address of the cluster port (Raft and message forwarding)."),
    key!("cluster", "advertise", cluster.advertise: String, None,
        "host:port other nodes dial to reach this one (e.g. the pod's DNS name);\n\
         empty: the bound address."),
    key!("cluster", "seeds", cluster.seeds: String, None,
        "Comma-separated host:port list of members to join through (DNS names allowed)."),
    key!("cluster", "bootstrap", cluster.bootstrap: Bootstrap, None,
        "How a node with an empty Raft store enters a cluster: `auto` joins through a\n\
         seed that answers, else starts a new cluster; `always` starts a new cluster;\n\
         `never` waits for a seed. A node with Raft state on disk just restarts."),
    key!("cluster", "voters", cluster.voters: usize, None,
        "Voting members wanted; further nodes are learners that serve clients and\n\
         receive all state (horizontal scale without growing the quorum)."),
    key!("cluster", "leader_lost_timeout", cluster.leader_lost_timeout: Duration, None,
        "/readyz reports not-ready after this long without a known Raft leader."),
    key!("cluster", "ca_file", cluster.ca_file: Option<PathBuf>, None,
        "PEM CA of the cluster port's mutual TLS (with cert_file and key_file); nodes\n\
         without a certificate from it can neither join nor forward. Empty: plain gRPC."),
    key!("cluster", "cert_file", cluster.cert_file: Option<PathBuf>, None,
        "PEM certificate chain this node presents on the cluster port."),
    key!("cluster", "key_file", cluster.key_file: Option<PathBuf>, None,
        "PEM private key of cluster.cert_file."),
    key!("cluster", "remove_departed_after", cluster.remove_departed_after: Duration, None,
        "Leader side: remove a member that has been unreachable, with an address whose\n\
         host name no longer resolves, for this long (a StatefulSet scaled down). 0: never;\n\
         remove by hand with `ferromq ctl cluster remove ID`."),
    key!("cluster", "forward_queue", cluster.forward_queue: usize, None,
        "Messages queued per peer for forwarding. Overflow: QoS 0 is dropped and\n\
         counted; QoS 1/2 is refused to the publisher (v5 0x97), never lost silently."),
];

/// The scalar key `section.name`, if there is one.
pub(crate) fn find(section: &str, name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.section == section && k.name == name)
}

/// The key with dotted path `path`; a programming error if absent, so callers pass
/// literals covered by tests.
pub(crate) fn by_path(path: &str) -> Option<&'static KeySpec> {
    let (section, name) = path.split_once('.')?;
    find(section, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_parse_in_both_spellings() {
        let d = |s| parse_duration(s);
        assert_eq!(d("10"), Some(Duration::from_secs(10)));
        assert_eq!(d("10s"), Some(Duration::from_secs(10)));
        assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(d("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(d("0"), Some(Duration::ZERO));
        for bad in [
            "",
            "s",
            "10x",
            "-1",
            "1.5s",
            "ms10",
            "99999999999999999999h",
        ] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_key_is_unique_and_resolvable() {
        for (i, k) in KEYS.iter().enumerate() {
            assert!(
                SECTIONS.iter().any(|(s, _)| *s == k.section),
                "{}",
                k.path()
            );
            assert!(
                KEYS[..i].iter().all(|o| o.env_var() != k.env_var()),
                "{} collides",
                k.env_var()
            );
            assert!(by_path(&k.path()).is_some());
        }
    }

    proptest! {
        #[test]
        fn rendered_durations_parse_back(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&render_duration(d)), Some(d));
        }

        #[test]
        fn duration_parser_never_panics(s in "\\PC{0,20}") {
            let _ = parse_duration(&s);
        }
    }
}
