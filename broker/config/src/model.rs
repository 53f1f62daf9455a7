//! The configuration types and their defaults.
//!
//! These are plain data: every value here has already been parsed and, when it comes
//! out of [`crate::load`], validated as a whole. The broker binds them; it never
//! re-parses or re-checks them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The IANA port for unencrypted MQTT.
pub const DEFAULT_PORT: u16 = 1883;

/// The largest packet MQTT can express: a Remaining Length of 268,435,455 bytes plus
/// a 5-byte fixed header (MQTT 5 §1.5.5, §2.1.4).
pub const MAX_PACKET_SIZE_LIMIT: u32 = 268_435_455 + 5;

/// The whole broker configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// MQTT listeners. Default: one listener `default` on `0.0.0.0:1883`.
    pub listeners: Vec<ListenerConfig>,
    /// Protocol limits and behaviour shared by every listener.
    pub mqtt: MqttConfig,
    /// Where and whether sessions, retained messages and queues are stored.
    pub persistence: PersistenceConfig,
    /// `$SYS` statistics topics.
    pub sys: SysConfig,
    /// Logging.
    pub log: LogConfig,
    /// The operators' HTTP listener: metrics, health, admin API.
    pub http: HttpConfig,
    /// Authentication (password file, failed-login limits) and authorisation (ACL file).
    pub auth: AuthConfig,
    /// Resource limits against misbehaving or hostile clients.
    pub limits: LimitsConfig,
    /// Clustering (Raft state plane and gRPC data plane). Off by default.
    pub cluster: ClusterConfig,
    /// Diagnostics from loading that are not errors, such as mosquitto.conf directives
    /// that are accepted but have no effect. `main` logs each one as a warning at
    /// startup. Not configuration: never rendered, never read from a file.
    pub notes: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listeners: vec![ListenerConfig::mqtt(
                "default",
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
            )],
            mqtt: MqttConfig::default(),
            persistence: PersistenceConfig::default(),
            sys: SysConfig::default(),
            log: LogConfig::default(),
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            cluster: ClusterConfig::default(),
            notes: Vec::new(),
        }
    }
}

/// The wire protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ListenerProtocol {
    /// MQTT 3.1, 3.1.1 and 5.0 over plain TCP.
    #[default]
    Mqtt,
    /// MQTT over TLS 1.2/1.3 (rustls). Needs `certfile` and `keyfile`.
    Mqtts,
    /// MQTT over WebSocket (subprotocol `mqtt`, binary frames) on plain TCP.
    Ws,
    /// MQTT over WebSocket over TLS. Needs `certfile` and `keyfile`.
    Wss,
}

impl ListenerProtocol {
    /// The name used in config files and the ready file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mqtt => "mqtt",
            Self::Mqtts => "mqtts",
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }

    /// Whether connections start with a TLS handshake.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Mqtts | Self::Wss)
    }

    /// Whether connections start with a WebSocket upgrade.
    pub fn is_websocket(self) -> bool {
        matches!(self, Self::Ws | Self::Wss)
    }
}

impl fmt::Display for ListenerProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The default WebSocket path.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

/// One MQTT listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// A name for logs, metrics and the ready file; unique among listeners.
    pub name: String,
    /// Address and port to bind. Port 0 asks the OS for an ephemeral port.
    pub bind: SocketAddr,
    /// The protocol spoken on this listener.
    pub protocol: ListenerProtocol,
    /// Overrides [`MqttConfig::allow_anonymous`] for this listener when set.
    pub allow_anonymous: Option<bool>,
    /// Maximum simultaneous client connections on this listener; `None` = no
    /// per-listener limit (the broker's global bounds still apply).
    pub max_connections: Option<usize>,
    /// Certificates and client authentication, for `mqtts` and `wss` listeners
    /// (validation refuses them on the others).
    pub tls: TlsSettings,
    /// The HTTP path a WebSocket upgrade must ask for (`ws` and `wss`). Default
    /// [`DEFAULT_WS_PATH`].
    pub ws_path: String,
}

impl ListenerConfig {
    /// A plain MQTT listener with no per-listener overrides.
    pub fn mqtt(name: impl Into<String>, bind: SocketAddr) -> Self {
        Self {
            name: name.into(),
            bind,
            protocol: ListenerProtocol::Mqtt,
            allow_anonymous: None,
            max_connections: None,
            tls: TlsSettings::default(),
            ws_path: DEFAULT_WS_PATH.to_owned(),
        }
    }
}

/// A listener's TLS settings, named after Mosquitto's directives. Files are PEM; they
/// are read and checked when the broker starts (a missing or unparsable one stops it,
/// naming the file) and again on SIGHUP or when they change.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsSettings {
    /// CA certificates that client certificates must chain to. Required with
    /// `require_certificate`; without it, clients may still present a certificate
    /// signed by one of these.
    pub cafile: Option<PathBuf>,
    /// The server's certificate chain, leaf first.
    pub certfile: Option<PathBuf>,
    /// The server's private key (PKCS#8, PKCS#1 or SEC1).
    pub keyfile: Option<PathBuf>,
    /// Refuse clients without a valid certificate signed by `cafile` (mutual TLS).
    pub require_certificate: bool,
    /// Use the client certificate's Common Name as the MQTT username; a client
    /// without a certificate is then refused (Not Authorized).
    pub use_identity_as_username: bool,
    /// The lowest TLS version accepted. Default TLS 1.2.
    pub min_version: TlsVersion,
}

/// A TLS protocol version. Only 1.2 and 1.3 exist in rustls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2 (and 1.3).
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl TlsVersion {
    /// Mosquitto's spelling, used in both config formats.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls12 => "tlsv1.2",
            Self::Tls13 => "tlsv1.3",
        }
    }

    /// `tlsv1.2`, `tlsv1.3` (also `1.2`, `1.3`, any case).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.strip_prefix("tlsv").unwrap_or(&s) {
            "1.2" => Some(Self::Tls12),
            "1.3" => Some(Self::Tls13),
            _ => None,
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Protocol limits and behaviour. Field docs give the default and the bound checked by
/// validation.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// Accept clients that send no username. Default `true`, so the Mosquitto tutorial
    /// works without a config file.
    pub allow_anonymous: bool,
    /// Accept an empty client identifier and assign one (MQTT 3.1.1 with a clean
    /// session, and MQTT 5). Default `true`.
    pub allow_zero_length_clientid: bool,
    /// Prefix of assigned client identifiers. Default `"auto-"`.
    pub auto_id_prefix: String,
    /// Largest keep-alive, in seconds, a client may use; an MQTT 5 client asking for
    /// more (or for 0) is sent this as Server Keep Alive. Default 65535; must be >= 1.
    pub max_keepalive: u16,
    /// Outgoing QoS 1/2 messages in flight per client (further clamped by the client's
    /// Receive Maximum). Default 100; must be >= 1.
    pub max_inflight_messages: u16,
    /// Receive Maximum the server sends in CONNACK: incoming QoS 1/2 publishes a client
    /// may have unacknowledged. Default 100; must be >= 1.
    pub receive_maximum: u16,
    /// Messages queued per offline or slow session. Default 1000; must be >= 1.
    pub max_queued_messages: usize,
    /// Bytes queued per offline or slow session. Default 64 MiB; must be >= 1.
    pub max_queued_bytes: usize,
    /// Queue QoS 0 messages for offline persistent sessions. Default `false`, like
    /// Mosquitto.
    pub queue_qos0_messages: bool,
    /// Largest packet accepted, in bytes, fixed header included. Default 2 MiB; must be
    /// 1..=[`MAX_PACKET_SIZE_LIMIT`].
    pub max_packet_size: u32,
    /// Largest PUBLISH payload accepted (Mosquitto's `message_size_limit`); `None` = no
    /// limit beyond `max_packet_size`. Written as 0 in files and the environment.
    pub max_payload_size: Option<u32>,
    /// Topic aliases a client may use towards the server (MQTT 5). Default 10; 0
    /// disables topic aliases.
    pub topic_alias_maximum: u16,
    /// Whether retained messages are supported. Default `true`.
    pub retain_available: bool,
    /// Highest QoS granted. Default 2; must be 0, 1 or 2.
    pub max_qos: u8,
    /// Cap on the Session Expiry Interval a client may ask for, in seconds. Default
    /// `u32::MAX` (MQTT 5's "never expires").
    pub max_session_expiry_interval: u32,
    /// How long a new connection has to send CONNECT. Default 10 s; must be > 0.
    pub connect_timeout: Duration,
    /// How long a new connection on a TLS or WebSocket listener has for its TLS
    /// handshake, and again for its WebSocket upgrade, before it is closed. Default
    /// 10 s; must be > 0.
    pub handshake_timeout: Duration,
    /// Levels a topic name or filter may have. Default 128; must be >= 1.
    pub max_topic_levels: usize,
    /// Bytes a topic name or filter may have. Default 65535 (the protocol's own
    /// maximum); must be 1..=65535.
    pub max_topic_length: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: true,
            allow_zero_length_clientid: true,
            auto_id_prefix: "auto-".to_owned(),
            max_keepalive: u16::MAX,
            max_inflight_messages: 100,
            receive_maximum: 100,
            max_queued_messages: 1000,
            max_queued_bytes: 64 * 1024 * 1024,
            queue_qos0_messages: false,
            max_packet_size: 2 * 1024 * 1024,
            max_payload_size: None,
            topic_alias_maximum: 10,
            retain_available: true,
            max_qos: 2,
            max_session_expiry_interval: u32::MAX,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_topic_levels: 128,
            max_topic_length: 65_535,
        }
    }
}

/// Authentication and authorisation, in Mosquitto's file formats.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    /// A `mosquitto_passwd` file (`user:$7$...` PBKDF2-SHA512 or `user:$6$...` salted
    /// SHA-512 lines). Read at start and on SIGHUP. `None`: no password checks (a
    /// username is then accepted as given when anonymous access is allowed, as
    /// Mosquitto does). Written as `""` in files and the environment.
    pub password_file: Option<PathBuf>,
    /// A Mosquitto `acl_file`. Read at start and on SIGHUP. `None`: every client may
    /// publish and subscribe to everything.
    pub acl_file: Option<PathBuf>,
    /// SUBACK reason code for an MQTT 5 subscription the ACL refuses: 0x80
    /// (Unspecified error, the default: what Mosquitto and the Paho suites expect) or
    /// 0x87 (Not authorized). MQTT 3.1.1 always gets 0x80.
    pub acl_subscribe_failure_code: u8,
    /// Failed logins from one source address within `failure_window` after which
    /// further CONNECTs from that address are refused at once (0x9F / 0x05) for
    /// `failure_block`. Default 5; 0 disables the limit.
    pub failure_limit: u32,
    /// Window over which failed logins are counted. Default 10 s; must be > 0.
    pub failure_window: Duration,
    /// How long an address is refused after reaching the limit. Default 60 s.
    pub failure_block: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            password_file: None,
            acl_file: None,
            acl_subscribe_failure_code: 0x80,
            failure_limit: 5,
            failure_window: Duration::from_secs(10),
            failure_block: Duration::from_secs(60),
        }
    }
}

/// Resource limits. Each has a written overflow policy (README "Limits").
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Simultaneous connections over all listeners. `None` (written 0): the file
    /// descriptor limit, which the broker raises to its hard limit at start, minus a
    /// reserve. A new socket above it is closed at once.
    pub max_connections: Option<usize>,
    /// Subscriptions one session may hold. Default 1000; must be >= 1. Above it a
    /// SUBSCRIBE gets 0x97 (Quota exceeded; 0x80 for 3.1.1) for each new filter.
    pub max_subscriptions_per_client: usize,
    /// PUBLISH packets per second one connection may send; 0 (the default) = no
    /// limit. Above it the broker stops reading that socket until the rate allows.
    pub publish_rate_messages: u32,
    /// PUBLISH payload bytes per second one connection may send; 0 (the default) = no
    /// limit. Same policy as `publish_rate_messages`.
    pub publish_rate_bytes: u64,
    /// Bytes all retained messages together may hold. Default 256 MiB; must be >= 1.
    /// A retained PUBLISH that would exceed it is refused (v5: PUBACK/PUBREC 0x97).
    pub retained_max_bytes: usize,
    /// New connections per second one source IP address may open; 0 (the default) =
    /// no limit. Excess sockets are closed at once with a log line.
    pub connection_rate_per_ip: u32,
    /// Threads that run connections and the cluster planes; 0 (the default) = one per
    /// CPU this process may use (affinity and cgroup quota). Set it when several
    /// brokers share a machine, e.g. cluster nodes side by side on one host.
    pub worker_threads: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: None,
            max_subscriptions_per_client: 1000,
            publish_rate_messages: 0,
            publish_rate_bytes: 0,
            retained_max_bytes: 256 * 1024 * 1024,
            connection_rate_per_ip: 0,
            worker_threads: 0,
        }
    }
}

/// Storage of sessions, retained messages and queues.
#[derive(Debug, Clone, PartialEq)]
pub struct PersistenceConfig {
    /// Store state on disk. Default `true`.
    pub enabled: bool,
    /// Data directory. Default `./data`.
    pub path: PathBuf,
    /// When acknowledged messages are on disk. Default [`Durability::Strict`].
    pub durability: Durability,
    /// Flush interval of [`Durability::Periodic`]. Default 100 ms.
    pub flush_interval: Duration,
    /// Bytes of the store's page cache (sled `cache_capacity`). Default 64 MiB.
    pub cache_capacity: u64,
    /// Deliveries of a persistent session's queue kept in memory; further QoS 1/2
    /// deliveries stay on disk only until the connection reaches them. Default 256.
    pub queue_memory_window: usize,
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: PathBuf::from("./data"),
            durability: Durability::Strict,
            flush_interval: Duration::from_millis(100),
            cache_capacity: 64 * 1024 * 1024,
            queue_memory_window: 256,
        }
    }
}

/// The durability policy of acknowledged QoS 1/2 messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A QoS 1/2 PUBLISH stored for a persistent session or as a retained message is
    /// acknowledged (PUBACK/PUBREC) only after the store was flushed to disk; one
    /// flush covers every message that arrived while the previous flush ran (group
    /// commit). A `kill -9` loses nothing that was acknowledged.
    #[default]
    Strict,
    /// Acknowledged at once; the store is flushed every `flush_interval`. A crash
    /// loses at most the last interval of acknowledged messages.
    Periodic,
}

impl Durability {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Strict => "strict",
            Durability::Periodic => "periodic",
        }
    }
}

/// `$SYS` topics.
#[derive(Debug, Clone, PartialEq)]
pub struct SysConfig {
    /// Publish interval. Default 10 s; zero disables `$SYS`.
    pub interval: Duration,
}

impl Default for SysConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
        }
    }
}

/// The operators' HTTP listener (`/metrics`, `/healthz`, `/readyz`, `/api/v1/...`),
/// separate from the MQTT listeners and with its own trust (STYLE.md item 11).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Serve the HTTP listener at all. Default `true`.
    pub enabled: bool,
    /// Address to bind. Default `127.0.0.1:8080` (loopback only). Port 0 asks the OS
    /// for an ephemeral port (the ready file reports it).
    pub listen: SocketAddr,
    /// Bearer token the admin API requires from peers that are not trusted loopback
    /// peers. `None` (written as an empty string): such requests are refused (403).
    /// `/metrics`, `/healthz` and `/readyz` never need it.
    pub token: Option<String>,
    /// Treat requests from a loopback peer (127.0.0.0/8, ::1) as trusted, without a
    /// token. Default `true`; `false` makes every admin request need the token.
    pub trust_loopback: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            token: None,
            trust_loopback: true,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// A level (`error`, `warn`, `info`, `debug`, `trace`, `off`) or a tracing
    /// `EnvFilter` directive list such as `info,ferromq=debug`. Default `info`.
    pub level: String,
    /// Output format. Default [`LogFormat::Text`].
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The name used in files, the environment and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`LogFormat`]: the input was neither `text` nor `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log format `{0}`: expected `text` or `json`")]
pub struct ParseLogFormatError(pub String);

impl FromStr for LogFormat {
    type Err = ParseLogFormatError;

    /// Case-insensitive, so a CLI parser can use it directly.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("text") {
            Ok(Self::Text)
        } else if s.eq_ignore_ascii_case("json") {
            Ok(Self::Json)
        } else {
            Err(ParseLogFormatError(s.to_owned()))
        }
    }
}

/// How a node with an empty Raft store enters a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bootstrap {
    /// Join through a seed that answers; with no seeds, or none answering, start a
    /// new single-node cluster. A node that already holds Raft state just restarts.
    #[default]
    Auto,
    /// Always start a new cluster when the store is empty (the first node).
    Always,
    /// Never start a new cluster: wait until a seed answers and join through it.
    Never,
}

impl Bootstrap {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Bootstrap::Auto => "auto",
            Bootstrap::Always => "always",
            Bootstrap::Never => "never",
        }
    }
}

/// Clustering: several nodes share routes, shared-subscription groups, retained
/// messages and the persistent-session registry through Raft, and forward messages
/// to each other over gRPC (docs/ARCHITECTURE.md, "Cluster").
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Run as a cluster node. Default `false`: a single node opens no cluster port.
    pub enabled: bool,
    /// gRPC address of the cluster port (Raft and forwarding). Default `0.0.0.0:7946`.
    pub listen: SocketAddr,
    /// `host:port` other nodes dial to reach this one (a DNS name on Kubernetes).
    /// Empty: the bound address.
    pub advertise: String,
    /// Comma-separated `host:port` list of members to join through (DNS names allowed).
    pub seeds: String,
    /// How a node with an empty Raft store enters a cluster.
    pub bootstrap: Bootstrap,
    /// Voting members wanted; further nodes are learners that still serve clients and
    /// receive all state. Default 3.
    pub voters: usize,
    /// `/readyz` turns not-ready after this long without a known leader. Default 10 s.
    pub leader_lost_timeout: Duration,
    /// PEM CA for the cluster port's mutual TLS; with `cert_file` and `key_file` set,
    /// nodes without a certificate from this CA can neither join nor forward.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain this node presents on the cluster port.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Messages queued per peer on the data plane. Overflow: QoS 0 dropped and
    /// counted; QoS 1/2 refused back to the publisher (v5 0x97) rather than lost.
    pub forward_queue: usize,
    /// The leader removes a member that has been unreachable, with a host name that
    /// no longer resolves, for this long (scale-down). Zero: never. Default 0.
    pub remove_departed_after: Duration,
}

impl ClusterConfig {
    /// The seeds as a list, blanks dropped.
    pub fn seed_list(&self) -> Vec<String> {
        self.seeds
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7946),
            advertise: String::new(),
            seeds: String::new(),
            bootstrap: Bootstrap::Auto,
            voters: 3,
            leader_lost_timeout: Duration::from_secs(10),
            ca_file: None,
            cert_file: None,
            key_file: None,
            forward_queue: 65_536,
            remove_departed_after: Duration::ZERO,
        }
    }
}
