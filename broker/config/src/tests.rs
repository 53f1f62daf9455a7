//! Loader tests: every source, every layer, and the messages users see.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;

use crate::*;

const NO_ENV: [(&str, &str); 0] = [];

fn toml(text: &str) -> Result<Config, ConfigErrors> {
    load_str(
        Path::new("ferromq.toml"),
        FileFormat::Toml,
        text,
        NO_ENV,
        &CliOverrides::default(),
    )
}

fn mosquitto(text: &str) -> Result<Config, ConfigErrors> {
    load_str(
        Path::new("mosquitto.conf"),
        FileFormat::Mosquitto,
        text,
        NO_ENV,
        &CliOverrides::default(),
    )
}

fn env(vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    load(None, vars.iter().copied(), &CliOverrides::default())
}

fn ok(result: Result<Config, ConfigErrors>) -> Config {
    match result {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

/// The error lines, as `main` would print them.
fn errors(result: Result<Config, ConfigErrors>) -> Vec<String> {
    match result {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(errors) => errors.to_string().lines().map(str::to_owned).collect(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = Config::default();
    assert_eq!(
        c.listeners,
        vec![ListenerConfig::mqtt("default", addr("0.0.0.0:1883"))]
    );
    let m = &c.mqtt;
    assert!(m.allow_anonymous && m.allow_zero_length_clientid && m.retain_available);
    assert!(!m.queue_qos0_messages);
    assert_eq!(m.auto_id_prefix, "auto-");
    assert_eq!(m.max_keepalive, 65535);
    assert_eq!((m.max_inflight_messages, m.receive_maximum), (100, 100));
    assert_eq!(
        (m.max_queued_messages, m.max_queued_bytes),
        (1000, 64 << 20)
    );
    assert_eq!((m.max_packet_size, m.max_payload_size), (2 << 20, None));
    assert_eq!((m.topic_alias_maximum, m.max_qos), (10, 2));
    assert_eq!(m.max_session_expiry_interval, u32::MAX);
    assert_eq!(m.connect_timeout, Duration::from_secs(10));
    assert_eq!(m.max_topic_levels, 128);
    assert!(c.persistence.enabled);
    assert_eq!(c.persistence.path, PathBuf::from("./data"));
    assert_eq!(c.sys.interval, Duration::from_secs(10));
    assert_eq!(
        (c.log.level.as_str(), c.log.format),
        ("info", LogFormat::Text)
    );
    assert!(c.validate().is_ok());
    // No file, no environment, no flags: the defaults, valid as they are.
    assert_eq!(ok(load(None, NO_ENV, &CliOverrides::default())), c);
}

const FULL_TOML: &str = r#"
[[listener]]
name = "public"
bind = "0.0.0.0:1883"

[[listener]]
name = "local"
bind = "[::1]:0"
protocol = "mqtt"
allow_anonymous = false
max_connections = 500

[[listener]]
name = "secure"
bind = "0.0.0.0:8883"
protocol = "mqtts"
cafile = "/etc/ferromq/ca.pem"
certfile = "/etc/ferromq/server.pem"
keyfile = "/etc/ferromq/server.key"
require_certificate = true
use_identity_as_username = true
tls_version = "tlsv1.3"

[[listener]]
name = "browser"
bind = "0.0.0.0:8443"
protocol = "wss"
certfile = "/etc/ferromq/server.pem"
keyfile = "/etc/ferromq/server.key"
path = "/ws"

[[listener]]
name = "plain-ws"
bind = "127.0.0.1:8080"
protocol = "ws"

[mqtt]
allow_anonymous = false
allow_zero_length_clientid = false
auto_id_prefix = "gen-"
max_keepalive = 300
max_inflight_messages = 20
receive_maximum = 30
max_queued_messages = 5000
max_queued_bytes = 1048576
queue_qos0_messages = true
max_packet_size = 65536
max_payload_size = 60000
topic_alias_maximum = 0
retain_available = false
max_qos = 1
max_session_expiry_interval = 86400
connect_timeout = "1500ms"
handshake_timeout = "3s"
max_topic_levels = 16
max_topic_length = 1024

[auth]
password_file = "/etc/ferromq/passwd"
acl_file = "/etc/ferromq/acl"
acl_subscribe_failure_code = 0x87
failure_limit = 3
failure_window = "30s"
failure_block = "5m"

[limits]
max_connections = 20000
max_subscriptions_per_client = 50
publish_rate_messages = 100
publish_rate_bytes = 1048576
retained_max_bytes = 16777216
connection_rate_per_ip = 10
worker_threads = 3

[persistence]
enabled = false
path = "/var/lib/ferromq"

[cluster]
enabled = false
listen = "127.0.0.1:17946"
advertise = "ferromq-0.ferromq-headless:7946"
seeds = "ferromq-0.ferromq-headless:7946, ferromq-1.ferromq-headless:7946"
bootstrap = "never"
voters = 5
leader_lost_timeout = "15s"
ca_file = "/etc/ferromq/cluster/ca.pem"
cert_file = "/etc/ferromq/cluster/tls.crt"
key_file = "/etc/ferromq/cluster/tls.key"
forward_queue = 1000
remove_departed_after = "2m"

[sys]
interval = 0

[log]
level = "info,ferromq=debug"
format = "json"

[http]
enabled = false
listen = "[::1]:9100"
token = "t0ken"
trust_loopback = false
"#;

fn full_config() -> Config {
    Config {
        listeners: vec![
            ListenerConfig::mqtt("public", addr("0.0.0.0:1883")),
            ListenerConfig {
                name: "local".into(),
                bind: addr("[::1]:0"),
                protocol: ListenerProtocol::Mqtt,
                allow_anonymous: Some(false),
                max_connections: Some(500),
                tls: TlsSettings::default(),
                ws_path: "/mqtt".into(),
            },
            ListenerConfig {
                protocol: ListenerProtocol::Mqtts,
                tls: TlsSettings {
                    cafile: Some("/etc/ferromq/ca.pem".into()),
                    certfile: Some("/etc/ferromq/server.pem".into()),
                    keyfile: Some("/etc/ferromq/server.key".into()),
                    require_certificate: true,
                    use_identity_as_username: true,
                    min_version: TlsVersion::Tls13,
                },
                ..ListenerConfig::mqtt("secure", addr("0.0.0.0:8883"))
            },
            ListenerConfig {
                protocol: ListenerProtocol::Wss,
                tls: TlsSettings {
                    certfile: Some("/etc/ferromq/server.pem".into()),
                    keyfile: Some("/etc/ferromq/server.key".into()),
                    ..TlsSettings::default()
                },
                ws_path: "/ws".into(),
                ..ListenerConfig::mqtt("browser", addr("0.0.0.0:8443"))
            },
            ListenerConfig {
                protocol: ListenerProtocol::Ws,
                ..ListenerConfig::mqtt("plain-ws", addr("127.0.0.1:8080"))
            },
        ],
        mqtt: MqttConfig {
            allow_anonymous: false,
            allow_zero_length_clientid: false,
            auto_id_prefix: "gen-".into(),
            max_keepalive: 300,
            max_inflight_messages: 20,
            receive_maximum: 30,
            max_queued_messages: 5000,
            max_queued_bytes: 1 << 20,
            queue_qos0_messages: true,
            max_packet_size: 65536,
            max_payload_size: Some(60000),
            topic_alias_maximum: 0,
            retain_available: false,
            max_qos: 1,
            max_session_expiry_interval: 86400,
            connect_timeout: Duration::from_millis(1500),
            handshake_timeout: Duration::from_secs(3),
            max_topic_levels: 16,
            max_topic_length: 1024,
        },
        auth: AuthConfig {
            password_file: Some("/etc/ferromq/passwd".into()),
            acl_file: Some("/etc/ferromq/acl".into()),
            acl_subscribe_failure_code: 0x87,
            failure_limit: 3,
            failure_window: Duration::from_secs(30),
            failure_block: Duration::from_secs(300),
        },
        limits: LimitsConfig {
            max_connections: Some(20000),
            max_subscriptions_per_client: 50,
            publish_rate_messages: 100,
            publish_rate_bytes: 1 << 20,
            retained_max_bytes: 1 << 24,
            connection_rate_per_ip: 10,
            worker_threads: 3,
        },
        persistence: PersistenceConfig {
            enabled: false,
            path: "/var/lib/ferromq".into(),
            ..PersistenceConfig::default()
        },
        sys: SysConfig {
            interval: Duration::ZERO,
        },
        log: LogConfig {
            level: "info,ferromq=debug".into(),
            format: LogFormat::Json,
        },
        http: HttpConfig {
            enabled: false,
            listen: addr("[::1]:9100"),
            token: Some("t0ken".into()),
            trust_loopback: false,
        },
        cluster: ClusterConfig {
            enabled: false,
            listen: addr("127.0.0.1:17946"),
            advertise: "ferromq-0.ferromq-headless:7946".into(),
            seeds: "ferromq-0.ferromq-headless:7946, ferromq-1.ferromq-headless:7946".into(),
            bootstrap: Bootstrap::Never,
            voters: 5,
            leader_lost_timeout: Duration::from_secs(15),
            ca_file: Some("/etc/ferromq/cluster/ca.pem".into()),
            cert_file: Some("/etc/ferromq/cluster/tls.crt".into()),
            key_file: Some("/etc/ferromq/cluster/tls.key".into()),
            forward_queue: 1000,
            remove_departed_after: Duration::from_secs(120),
        },
        notes: vec![],
    }
}

#[test]
fn cluster_rules_are_checked_together() {
    let errors = errors(toml(
        "[cluster]\nenabled = true\nvoters = 0\nseeds = \"nohost\"\ncert_file = \"/x.pem\"\n\n[persistence]\nenabled = false\n",
    ));
    for key in [
        "cluster.enabled",
        "cluster.voters",
        "cluster.seeds",
        "cluster.ca_file",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(key)),
            "{key} missing from: {errors:?}"
        );
    }
}

#[test]
fn full_toml_parses_to_the_expected_config() {
    assert_eq!(ok(toml(FULL_TOML)), full_config());
}

#[test]
fn rendered_toml_reads_back_to_the_same_config() {
    let config = full_config();
    assert_eq!(ok(toml(&config.to_toml_string())), config);
    assert_eq!(ok(toml(&default_toml())), Config::default());
}

#[test]
fn empty_toml_and_partial_sections_keep_defaults() {
    assert_eq!(ok(toml("")), Config::default());
    let c = ok(toml("[mqtt]\nmax_qos = 1\n"));
    assert_eq!(c.mqtt.max_qos, 1);
    assert_eq!(c.listeners, Config::default().listeners);
    // Inline tables and dotted keys are the same TOML.
    let c = ok(toml(
        "mqtt = { max_qos = 0 }\nlog.format = \"json\"\nlistener = [{ bind = \"127.0.0.1:0\" }]\n",
    ));
    assert_eq!((c.mqtt.max_qos, c.log.format), (0, LogFormat::Json));
    assert_eq!(
        c.listeners,
        vec![ListenerConfig::mqtt("listener-1", addr("127.0.0.1:0"))]
    );
}

/// The shipped example is exactly the rendered default. Regenerate with
/// `UPDATE_EXPECT=1 cargo test -p ferromq-config`.
#[test]
fn shipped_example_is_the_rendered_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ferromq.example.toml");
    let expected = default_toml();
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, &expected).expect("write ferromq.example.toml");
    }
    let shipped = std::fs::read_to_string(&path).expect("read ferromq.example.toml");
    assert!(
        shipped == expected,
        "ferromq.example.toml is stale; run UPDATE_EXPECT=1 cargo test -p ferromq-config"
    );
    let loaded = ok(load(Some(&path), NO_ENV, &CliOverrides::default()));
    assert_eq!(loaded, Config::default());
    // Every key is documented in it.
    for key in crate::keys::KEYS {
        assert!(
            shipped.contains(&format!("\n{} = ", key.name)),
            "{}",
            key.path()
        );
        assert!(shipped.contains(&key.env_var()), "{}", key.env_var());
    }
}

#[test]
fn unknown_toml_key_is_an_error_with_its_line() {
    assert_eq!(
        errors(toml("[mqtt]\nmax_qos = 1\nmax_keepalivee = 5\n")),
        [
            "unknown key `mqtt.max_keepalivee` at ferromq.toml:3 (did you mean `mqtt.max_keepalive`?)"
        ]
    );
    assert_eq!(
        errors(toml("[mqt]\n")),
        ["unknown key `mqt` at ferromq.toml:1 (did you mean `mqtt`?)"]
    );
    assert_eq!(
        errors(toml("[[listener]]\nbind = \"0.0.0.0:1\"\nport = 1\n")),
        ["unknown key `listener.port` at ferromq.toml:3"]
    );
}

#[test]
fn every_error_in_a_toml_file_is_reported_at_once() {
    let text = r#"
[[listener]]
bind = "localhost:1883"

[[listener]]
name = "b"

[mqtt]
max_keepalive = 70000
max_qos = 3
max_inflight_messages = 0
retain_available = "yes"
colour = "blue"

[log]
format = "xml"
"#;
    assert_eq!(
        errors(toml(text)),
        [
            "invalid value `\"localhost:1883\"` for `listener.bind` at ferromq.toml:3: expected an IP \
             address and port such as \"0.0.0.0:1883\" or \"[::]:1883\" (host names are not resolved)",
            "missing value for `listener.bind` at ferromq.toml:5: expected an IP address and port \
             such as \"0.0.0.0:1883\" or \"[::]:1883\" (host names are not resolved)",
            "invalid value `70000` for `mqtt.max_keepalive` at ferromq.toml:9: expected an integer \
             from 0 to 65535",
            "invalid value `\"yes\"` for `mqtt.retain_available` at ferromq.toml:12: expected `true` \
             or `false`",
            "unknown key `mqtt.colour` at ferromq.toml:13",
            "invalid value `\"xml\"` for `log.format` at ferromq.toml:16: expected `text` or `json`",
            "`mqtt.max_inflight_messages` = 0 (from ferromq.toml:11): must be at least 1: it is \
             each client's window of unacknowledged QoS 1/2 deliveries",
            "`mqtt.max_qos` = 3 (from ferromq.toml:10): must be 0, 1 or 2",
        ]
    );
}

#[test]
fn toml_types_are_strict_and_shapes_checked() {
    let e = errors(toml(
        "mqtt = 5\nlistener = \"0.0.0.0:1883\"\n[sys]\ninterval = -1\n",
    ));
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(e[0].starts_with("invalid value `5` for `mqtt` at ferromq.toml:1: expected a table"));
    assert!(e[1].contains("`listener` at ferromq.toml:2: expected one [[listener]] section"));
    assert!(e[2].starts_with(
        "invalid value `-1` for `sys.interval` at ferromq.toml:4: expected a duration"
    ));
    // A quoted number is not a number in TOML.
    assert_eq!(
        errors(toml("[mqtt]\nmax_qos = \"1\"\n")),
        [
            "invalid value `\"1\"` for `mqtt.max_qos` at ferromq.toml:2: expected an integer from 0 to 255"
        ]
    );
}

#[test]
fn toml_syntax_error_names_the_line() {
    let e = errors(toml("[mqtt]\nmax_qos = = 1\n"));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("invalid TOML at ferromq.toml:2: "),
        "{}",
        e[0]
    );
}

#[test]
fn toml_transport_rules_are_checked_whole() {
    let e = errors(toml(
        "[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:8883\"\nprotocol = \"mqtts\"\n\
         require_certificate = true\n\
         [[listener]]\nname = \"b\"\nbind = \"0.0.0.0:1883\"\ncertfile = \"/c.pem\"\n\
         use_identity_as_username = true\n\
         [[listener]]\nname = \"c\"\nbind = \"0.0.0.0:9001\"\nprotocol = \"ws\"\npath = \"mqtt\"\n\
         [[listener]]\nname = \"d\"\nbind = \"0.0.0.0:9002\"\nprotocol = \"websocket\"\n\
         tls_version = \"tlsv1.0\"\n",
    ));
    assert_eq!(
        e,
        [
            "invalid value `\"websocket\"` for `listener.protocol` at ferromq.toml:19: expected \
             \"mqtt\", \"mqtts\", \"ws\" or \"wss\"",
            "invalid value `\"tlsv1.0\"` for `listener.tls_version` at ferromq.toml:20: expected \
             \"tlsv1.2\" (TLS 1.2 and 1.3) or \"tlsv1.3\"",
            "listener `a` (mqtts) (from ferromq.toml:1): `certfile` is required on a TLS listener \
             (a PEM file with the server's certificate chain)",
            "listener `a` (mqtts) (from ferromq.toml:1): `keyfile` is required on a TLS listener \
             (a PEM file with the server's private key)",
            "listener `a` (mqtts) (from ferromq.toml:1): `require_certificate` needs `cafile`: the \
             CA that client certificates must chain to",
            "listener `b` (mqtt) (from ferromq.toml:6): `certfile`, `use_identity_as_username` set \
             on a listener without TLS: use protocol `mqtts` or `wss`",
            "listener `c` (ws) (from ferromq.toml:11): WebSocket `path` `mqtt` must start with `/`",
        ]
    );
}

#[test]
fn mosquitto_tutorial_config_parses() {
    let c = ok(mosquitto(
        "# Mosquitto tutorial\nlistener 1883\nallow_anonymous true\npersistence true\n\
         persistence_location /var/lib/mosquitto/\n",
    ));
    assert_eq!(
        c.listeners,
        vec![ListenerConfig::mqtt("listener-1", addr("0.0.0.0:1883"))]
    );
    assert!(c.mqtt.allow_anonymous && c.persistence.enabled);
    assert_eq!(c.persistence.path, PathBuf::from("/var/lib/mosquitto/"));
    assert!(c.notes.is_empty(), "{:?}", c.notes);
}

#[test]
fn mosquitto_ephemeral_listener_parses() {
    let c = ok(mosquitto("listener 0 127.0.0.1\n"));
    assert_eq!(
        c.listeners,
        vec![ListenerConfig::mqtt("listener-1", addr("127.0.0.1:0"))]
    );
    // Two ephemeral listeners on one address do not conflict.
    let c = ok(mosquitto("listener 0 127.0.0.1\nlistener 0 127.0.0.1\n"));
    assert_eq!(c.listeners.len(), 2);
}

#[test]
fn mosquitto_unknown_directive_names_file_and_line() {
    assert_eq!(
        errors(mosquitto(
            "listener 1883\n\n# comment\nallow_anonymus true\nfrobnicate 3\n"
        )),
        [
            "unknown directive `allow_anonymus` at mosquitto.conf:4 (did you mean `allow_anonymous`?)",
            "unknown directive `frobnicate` at mosquitto.conf:5",
        ]
    );
}

#[test]
fn mosquitto_tls_and_websocket_listeners() {
    // Mosquitto's usual secure set-up: TLS on 8883 (mTLS), WebSockets on 9001 and
    // 9443; a block with certificate files is TLS whatever `protocol` says.
    let c = ok(mosquitto(
        "listener 8883\ncafile /etc/mosquitto/ca_certificates/ca.crt\n\
         certfile /etc/mosquitto/certs/server.crt\nkeyfile /etc/mosquitto/certs/server key.pem\n\
         require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.3\n\
         listener 9001\nprotocol websockets\n\
         listener 9443\nprotocol websockets\ncertfile /s.pem\nkeyfile /s.key\ntls_version tlsv1.1\n\
         websockets_log_level 255\n",
    ));
    assert_eq!(
        c.listeners,
        [
            ListenerConfig {
                protocol: ListenerProtocol::Mqtts,
                tls: TlsSettings {
                    cafile: Some("/etc/mosquitto/ca_certificates/ca.crt".into()),
                    certfile: Some("/etc/mosquitto/certs/server.crt".into()),
                    keyfile: Some("/etc/mosquitto/certs/server key.pem".into()),
                    require_certificate: true,
                    use_identity_as_username: true,
                    min_version: TlsVersion::Tls13,
                },
                ..ListenerConfig::mqtt("listener-1", addr("0.0.0.0:8883"))
            },
            ListenerConfig {
                protocol: ListenerProtocol::Ws,
                ..ListenerConfig::mqtt("listener-2", addr("0.0.0.0:9001"))
            },
            ListenerConfig {
                protocol: ListenerProtocol::Wss,
                tls: TlsSettings {
                    certfile: Some("/s.pem".into()),
                    keyfile: Some("/s.key".into()),
                    ..TlsSettings::default()
                },
                ..ListenerConfig::mqtt("listener-3", addr("0.0.0.0:9443"))
            },
        ]
    );
    assert_eq!(c.notes.len(), 2, "{:#?}", c.notes);
    assert!(
        c.notes[0].contains("TLS 1.1 is not supported"),
        "{}",
        c.notes[0]
    );
    assert!(
        c.notes[1].starts_with("`websockets_log_level`"),
        "{}",
        c.notes[1]
    );

    // A CA without a server certificate and key is a TLS listener missing both.
    let e = errors(mosquitto("listener 8883\ncafile /ca.pem\n"));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].starts_with(
        "listener `listener-1` (mqtts) (from mosquitto.conf:1): `certfile` is required"
    ));
    assert!(e[1].contains("`keyfile` is required"));
}

#[test]
fn mosquitto_security_directives_not_implemented_are_refused() {
    let text = "listener 8883\ncafile /etc/ca.pem\ncertfile /etc/c.pem\nkeyfile /etc/k.pem\n\
                require_certificate true\ncapath /etc/ssl/certs\nlistener 9001\nprotocol websockets\n\
                password_file /etc/pw\nacl_file /etc/acl\nauth_plugin /x.so\n\
                include_dir /etc/mosquitto/conf.d\ntls_version sslv3\n";
    let e = errors(mosquitto(text));
    // password_file and acl_file are supported since issue #4: no error for them.
    assert_eq!(e.len(), 4, "{e:#?}");
    assert_eq!(
        e[0],
        "`capath` at mosquitto.conf:6 is recognised but not supported yet (this TLS option or \
         auth plugin arrives in a later release); refusing to start rather than running \
         without it"
    );
    assert!(e[1].starts_with("`auth_plugin` at mosquitto.conf:11"));
    assert_eq!(
        e[2],
        "`include_dir` at mosquitto.conf:12 is recognised but not supported: put every directive \
         in this one file"
    );
    assert_eq!(
        e[3],
        "invalid value `sslv3` for `tls_version` at mosquitto.conf:13: expected `tlsv1.2` (TLS 1.2 \
         and 1.3) or `tlsv1.3`"
    );
}

#[test]
fn mosquitto_bridge_is_one_error() {
    let e = errors(mosquitto(
        "listener 1883\nconnection up\naddress 10.0.0.1:1883\ntopic # both 0\n",
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].starts_with(
        "`connection` at mosquitto.conf:2 is recognised but not supported: ferromq does not bridge"
    ));
}

#[test]
fn mosquitto_accepted_but_ignored_directives_become_notes() {
    let c = ok(mosquitto(
        "listener 1883\npersistence_file mosquitto.db\nautosave_interval 60\nlog_type all\n\
         log_dest stdout\nconnection_messages true\nlog_timestamp true\n",
    ));
    assert_eq!(
        c.notes,
        [
            "`persistence_file` at mosquitto.conf:2 is accepted but ignored: ferromq writes every change durably",
            "`autosave_interval` at mosquitto.conf:3 is accepted but ignored: ferromq writes every change durably",
            "`log_type` at mosquitto.conf:4 is accepted but ignored: set log.level (FERROMQ_LOG_LEVEL) instead",
            "`connection_messages` at mosquitto.conf:6 is accepted but ignored: set log.level (FERROMQ_LOG_LEVEL) instead",
            "`log_timestamp` at mosquitto.conf:7 is accepted but ignored: ferromq always timestamps its log",
        ]
    );
}

#[test]
fn mosquitto_limits_map_onto_ferromq_keys() {
    let c = ok(mosquitto(
        "listener 1883\nmax_connections 50\nallow_zero_length_clientid false\nauto_id_prefix id \
         \nmax_keepalive 120\nmax_inflight_messages 5\nmax_queued_messages 10\nmax_queued_bytes 4096\n\
         queue_qos0_messages true\nmessage_size_limit 1000\nmax_packet_size 2000\nsys_interval 0\n\
         persistence false\nretain_available false\nmax_qos 1\nmax_topic_alias 3\n",
    ));
    assert_eq!(c.listeners[0].max_connections, Some(50));
    let m = &c.mqtt;
    assert!(!m.allow_zero_length_clientid && m.queue_qos0_messages && !m.retain_available);
    assert_eq!(m.auto_id_prefix, "id");
    assert_eq!(m.max_keepalive, 120);
    // Mosquitto documents max_inflight_messages as also setting Receive Maximum.
    assert_eq!((m.max_inflight_messages, m.receive_maximum), (5, 5));
    assert_eq!((m.max_queued_messages, m.max_queued_bytes), (10, 4096));
    assert_eq!((m.max_payload_size, m.max_packet_size), (Some(1000), 2000));
    assert_eq!((m.max_qos, m.topic_alias_maximum), (1, 3));
    assert_eq!(c.sys.interval, Duration::ZERO);
    assert!(!c.persistence.enabled);

    // Mosquitto's "0 = unlimited" where ferromq can honour it with a bound...
    let c = ok(mosquitto(
        "listener 1883\nmax_inflight_messages 0\nmax_packet_size 0\nmessage_size_limit 0\nmax_connections -1\n",
    ));
    assert_eq!(
        (c.mqtt.max_inflight_messages, c.mqtt.receive_maximum),
        (65535, 65535)
    );
    assert_eq!(c.mqtt.max_packet_size, MAX_PACKET_SIZE_LIMIT);
    assert_eq!(
        (c.mqtt.max_payload_size, c.listeners[0].max_connections),
        (None, None)
    );
    assert_eq!(c.notes.len(), 2, "{:?}", c.notes);
    // ...and where it cannot.
    assert_eq!(
        errors(mosquitto("listener 1883\nmax_queued_messages 0\n")),
        [
            "invalid value `0` for `max_queued_messages` at mosquitto.conf:2: expected a positive \
          integer (Mosquitto's 0 = unlimited is not supported: ferromq bounds every session queue)"
        ]
    );
}

#[test]
fn mosquitto_bad_values_name_line_and_directive() {
    let e = errors(mosquitto(
        "listener eighty\nlistener 1883 example.com\nmax_keepalive\nallow_anonymous maybe\n\
         max_qos 1 2\nlog_dest file /var/log/mosquitto.log\nprotocol http\n",
    ));
    assert_eq!(
        e,
        [
            "invalid value `eighty` for `listener` at mosquitto.conf:1: expected a port number from 0 to 65535",
            "invalid value `example.com` for `listener` at mosquitto.conf:2: expected an IP address \
             such as 127.0.0.1 or :: (host names other than localhost are not resolved; unix sockets \
             are not supported)",
            "missing value for `max_keepalive` at mosquitto.conf:3: expected an integer from 0 to 65535",
            "invalid value `maybe` for `allow_anonymous` at mosquitto.conf:4: expected `true` or `false`",
            "invalid value `1 2` for `max_qos` at mosquitto.conf:5: expected a single value",
            "invalid value `file /var/log/mosquitto.log` for `log_dest` at mosquitto.conf:6: expected \
             `stdout`, `stderr` or `none` (the `file`, `syslog`, `topic` and `dlt` destinations are \
             not supported; redirect the broker's output)",
            "invalid value `http` for `protocol` at mosquitto.conf:7: expected `mqtt` or `websockets`",
        ]
    );
}

#[test]
fn mosquitto_listener_blocks_and_default_listener() {
    // `port`/`bind_address` configure the default listener, which then exists
    // alongside `listener` blocks; per-listener settings attach to the latest block.
    let c = ok(mosquitto(
        "per_listener_settings true\nport 1884\nbind_address 127.0.0.1\nmax_connections 7\n\
         allow_anonymous false\nlistener 1885 ::1\nmax_connections 9\nprotocol mqtt\n\
         allow_anonymous true\nlistener 1886\n",
    ));
    assert_eq!(
        c.listeners,
        [
            ListenerConfig {
                max_connections: Some(7),
                allow_anonymous: Some(false),
                ..ListenerConfig::mqtt("default", addr("127.0.0.1:1884"))
            },
            ListenerConfig {
                max_connections: Some(9),
                allow_anonymous: Some(true),
                ..ListenerConfig::mqtt("listener-1", addr("[::1]:1885"))
            },
            ListenerConfig::mqtt("listener-2", addr("0.0.0.0:1886")),
        ]
    );
    assert!(c.mqtt.allow_anonymous, "global stays at its default");

    // Without per_listener_settings, allow_anonymous is global wherever it appears,
    // and per_listener_settings applies even when it comes later in the file.
    let c = ok(mosquitto("listener 1883\nallow_anonymous false\n"));
    assert!(!c.mqtt.allow_anonymous);
    assert_eq!(c.listeners[0].allow_anonymous, None);
    let c = ok(mosquitto(
        "listener 1883\nallow_anonymous false\nper_listener_settings true\n",
    ));
    assert!(c.mqtt.allow_anonymous);
    assert_eq!(c.listeners[0].allow_anonymous, Some(false));
}

#[test]
fn mosquitto_without_listener_keeps_the_default_and_says_so() {
    let c = ok(mosquitto("\u{feff}allow_anonymous true\r\n"));
    assert_eq!(c.listeners, Config::default().listeners);
    assert_eq!(c.notes.len(), 1);
    assert!(
        c.notes[0].contains("Mosquitto 2 would listen on localhost only"),
        "{}",
        c.notes[0]
    );
    // No such note when the environment supplies the listeners.
    let c = ok(load_str(
        Path::new("m.conf"),
        FileFormat::Mosquitto,
        "allow_anonymous true\n",
        [("FERROMQ_LISTEN", "127.0.0.1:0")],
        &CliOverrides::default(),
    ));
    assert!(c.notes.is_empty(), "{:?}", c.notes);
}

#[test]
fn mosquitto_localhost_binds_loopback_with_a_note() {
    let c = ok(mosquitto("listener 1883 localhost\n"));
    assert_eq!(c.listeners[0].bind, addr("127.0.0.1:1883"));
    assert_eq!(c.notes.len(), 1);
}

#[test]
fn env_overrides_every_section() {
    let c = ok(env(&[
        ("FERROMQ_MQTT_MAX_KEEPALIVE", "60"),
        ("FERROMQ_MQTT_MAX_PAYLOAD_SIZE", "0"),
        ("FERROMQ_MQTT_CONNECT_TIMEOUT", "500ms"),
        ("FERROMQ_PERSISTENCE_PATH", "/data"),
        ("FERROMQ_PERSISTENCE_ENABLED", "false"),
        ("FERROMQ_LOG_LEVEL", "debug"),
        ("FERROMQ_LOG_FORMAT", "json"),
        ("FERROMQ_SYS_INTERVAL", "5"),
        ("FERROMQ_LISTEN", "127.0.0.1:1883, [::1]:0"),
        ("PATH", "/usr/bin"),
        ("FERROMQ_TEST_BROKER", "ferromq"),
        ("FERROMQ_BIN", "/target/debug/ferromq"),
    ]));
    assert_eq!(c.mqtt.max_keepalive, 60);
    assert_eq!(c.mqtt.max_payload_size, None);
    assert_eq!(c.mqtt.connect_timeout, Duration::from_millis(500));
    assert_eq!(
        c.persistence,
        PersistenceConfig {
            enabled: false,
            path: "/data".into(),
            ..PersistenceConfig::default()
        }
    );
    assert_eq!(
        c.log,
        LogConfig {
            level: "debug".into(),
            format: LogFormat::Json
        }
    );
    assert_eq!(c.sys.interval, Duration::from_secs(5));
    assert_eq!(
        c.listeners,
        [
            ListenerConfig::mqtt("listener-1", addr("127.0.0.1:1883")),
            ListenerConfig::mqtt("listener-2", addr("[::1]:0")),
        ]
    );
}

#[test]
fn env_bad_values_and_unknown_variables_are_named() {
    assert_eq!(
        errors(env(&[
            ("FERROMQ_MQTT_MAX_KEEPALIVE", "sixty"),
            ("FERROMQ_MQTT_MAX_KEEPALIV", "60"),
            ("FERROMQ_PERSISTENCE_ENABLED", "yes"),
            ("FERROMQ_LISTEN", "0.0.0.0"),
            ("FERROMQ_COLOUR", "blue"),
            ("FERROMQ_MQTT_MAX_QOS", "3"),
        ])),
        [
            "unknown environment variable FERROMQ_COLOUR",
            "invalid value `0.0.0.0` for environment variable FERROMQ_LISTEN: expected a \
             comma-separated list of IP addresses with ports, such as \"0.0.0.0:1883,[::]:1883\"",
            "unknown environment variable FERROMQ_MQTT_MAX_KEEPALIV (did you mean \
             `FERROMQ_MQTT_MAX_KEEPALIVE`?)",
            "invalid value `sixty` for environment variable FERROMQ_MQTT_MAX_KEEPALIVE: expected an \
             integer from 0 to 65535",
            "invalid value `yes` for environment variable FERROMQ_PERSISTENCE_ENABLED: expected \
             `true` or `false`",
            "`mqtt.max_qos` = 3 (from environment variable FERROMQ_MQTT_MAX_QOS): must be 0, 1 or 2",
        ]
    );
    assert_eq!(
        errors(env(&[("FERROMQ_LISTEN", " , ")])),
        [
            "missing value for environment variable FERROMQ_LISTEN: expected a comma-separated list \
          of IP addresses with ports, such as \"0.0.0.0:1883,[::]:1883\""
        ]
    );
}

#[cfg(unix)]
#[test]
fn env_non_utf8_value_is_an_error_not_a_panic() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let vars = [(
        OsString::from("FERROMQ_LOG_LEVEL"),
        OsString::from_vec(vec![b'd', 0xff]),
    )];
    let e = errors(load(None, vars, &CliOverrides::default()));
    assert_eq!(
        e,
        [
            "invalid value `d\u{fffd}` for environment variable FERROMQ_LOG_LEVEL: expected valid UTF-8 text"
        ]
    );
}

#[test]
fn precedence_is_defaults_file_env_cli() {
    let file = "[[listener]]\nbind = \"0.0.0.0:1\"\n[mqtt]\nmax_qos = 0\nmax_keepalive = 10\n\
                [log]\nlevel = \"warn\"\nformat = \"json\"\n[persistence]\npath = \"/file\"\n";
    let vars = [
        ("FERROMQ_MQTT_MAX_KEEPALIVE", "20"),
        ("FERROMQ_LOG_LEVEL", "debug"),
        ("FERROMQ_LISTEN", "0.0.0.0:2"),
    ];
    let path = Path::new("f.toml");

    let c = ok(load_str(
        path,
        FileFormat::Toml,
        file,
        vars,
        &CliOverrides::default(),
    ));
    assert_eq!(
        (c.mqtt.max_qos, c.mqtt.max_keepalive),
        (0, 20),
        "env beats file"
    );
    assert_eq!(c.log.level, "debug");
    assert_eq!(c.listeners[0].bind, addr("0.0.0.0:2"));

    let cli = CliOverrides {
        listen: vec![addr("127.0.0.1:3"), addr("127.0.0.1:4")],
        data_dir: Some("/cli".into()),
        log_level: Some("trace".into()),
        log_format: Some(LogFormat::Text),
        http_listen: Some(addr("127.0.0.1:5")),
    };
    let c = ok(load_str(path, FileFormat::Toml, file, vars, &cli));
    assert_eq!(c.mqtt.max_keepalive, 20, "untouched by the CLI");
    assert_eq!(
        c.log,
        LogConfig {
            level: "trace".into(),
            format: LogFormat::Text
        }
    );
    assert_eq!(c.persistence.path, PathBuf::from("/cli"));
    assert_eq!(c.http.listen, addr("127.0.0.1:5"));
    let binds: Vec<_> = c.listeners.iter().map(|l| l.bind).collect();
    assert_eq!(binds, [addr("127.0.0.1:3"), addr("127.0.0.1:4")]);

    // Validation runs on the merged result: a bad file value fixed by a later layer
    // is fine, a good one broken by a later layer is not, and the error names the layer.
    let c = ok(load_str(
        path,
        FileFormat::Toml,
        "[mqtt]\nmax_qos = 7\n",
        [("FERROMQ_MQTT_MAX_QOS", "1")],
        &CliOverrides::default(),
    ));
    assert_eq!(c.mqtt.max_qos, 1);
    let cli = CliOverrides {
        log_level: Some("loud".into()),
        ..CliOverrides::default()
    };
    assert_eq!(
        errors(load(None, NO_ENV, &cli)),
        [
            "`log.level` = \"loud\" (from command-line option --log-level): must be a level (error, \
          warn, info, debug, trace, off) or a tracing filter such as \"info,ferromq=debug\""
        ]
    );
}

#[test]
fn validation_reports_bounds_and_listener_conflicts() {
    let text = "[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:1883\"\n\
                [[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1883\"\nmax_connections = 0\n\
                [[listener]]\nname = \"c\"\nbind = \"0.0.0.0:1883\"\n\
                [mqtt]\nmax_inflight_messages = 0\nmax_qos = 3\nmax_packet_size = 0\n\
                connect_timeout = 0\nmax_keepalive = 0\n";
    assert_eq!(
        errors(toml(text)),
        [
            "listener `a` max_connections = 0 (from ferromq.toml:4): must be at least 1 (leave it \
             out for no per-listener limit)",
            "listener name `a` (from ferromq.toml:4): already used by the listener on 0.0.0.0:1883, \
             from ferromq.toml:1",
            "listener `a` bind = 127.0.0.1:1883 (from ferromq.toml:4): overlaps (a wildcard address \
             covers every interface) listener `a` (0.0.0.0:1883, from ferromq.toml:1)",
            "listener `c` bind = 0.0.0.0:1883 (from ferromq.toml:8): same address as listener `a` \
             (0.0.0.0:1883, from ferromq.toml:1)",
            "listener `c` bind = 0.0.0.0:1883 (from ferromq.toml:8): overlaps (a wildcard address \
             covers every interface) listener `a` (127.0.0.1:1883, from ferromq.toml:4)",
            "`mqtt.max_keepalive` = 0 (from ferromq.toml:16): must be from 1 to 65535 seconds: it \
             caps the keep-alive clients may ask for",
            "`mqtt.max_inflight_messages` = 0 (from ferromq.toml:12): must be at least 1: it is \
             each client's window of unacknowledged QoS 1/2 deliveries",
            "`mqtt.max_packet_size` = 0 (from ferromq.toml:14): must be from 1 to 268435460, the \
             largest packet MQTT can encode (MQTT 5 §2.1.4)",
            "`mqtt.max_qos` = 3 (from ferromq.toml:13): must be 0, 1 or 2",
            "`mqtt.connect_timeout` = \"0s\" (from ferromq.toml:15): must be longer than zero, or \
             no client could ever connect",
        ]
    );
    assert_eq!(
        errors(toml("listener = []\n")),
        [
            "no listeners: at least one is required: add a [[listener]] section, a `listener PORT` \
          line, FERROMQ_LISTEN or --listen"
        ]
    );
    // The same rules hold for a Config built in code.
    let mut c = Config::default();
    c.mqtt.max_qos = 3;
    c.listeners.push(c.listeners[0].clone());
    let e = c.validate().expect_err("invalid");
    assert_eq!(
        e.to_string(),
        "listener name `default`: already used by the listener on 0.0.0.0:1883\n\
         listener `default` bind = 0.0.0.0:1883: same address as listener `default` (0.0.0.0:1883)\n\
         `mqtt.max_qos` = 3: must be 0, 1 or 2"
    );
}

#[test]
fn files_are_read_by_extension() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml_path = dir.path().join("broker.TOML");
    std::fs::write(&toml_path, "[mqtt]\nmax_qos = 1\n").expect("write");
    let conf_path = dir.path().join("ferromq.conf");
    std::fs::write(&conf_path, "listener 0 127.0.0.1\nmax_qos 0\n").expect("write");
    let cli = CliOverrides::default();

    assert_eq!(ok(load(Some(&toml_path), NO_ENV, &cli)).mqtt.max_qos, 1);
    let c = ok(load(Some(&conf_path), NO_ENV, &cli));
    assert_eq!(
        (c.mqtt.max_qos, c.listeners[0].bind),
        (0, addr("127.0.0.1:0"))
    );

    let missing = dir.path().join("nope.toml");
    let e = errors(load(Some(&missing), [("FERROMQ_BOGUS", "1")], &cli));
    assert_eq!(e.len(), 2, "the environment is still checked: {e:#?}");
    assert!(e[0].starts_with(&format!("cannot read config file {}: ", missing.display())));
    // Errors in a real file name its path.
    std::fs::write(&conf_path, "listener 0 127.0.0.1\nmax_qos x\n").expect("write");
    assert_eq!(
        errors(load(Some(&conf_path), NO_ENV, &cli)),
        [format!(
            "invalid value `x` for `max_qos` at {}:2: expected an integer from 0 to 255",
            conf_path.display()
        )]
    );
}

#[test]
fn mosquitto_password_and_acl_files_map_onto_auth() {
    let c = ok(mosquitto(
        "listener 0 127.0.0.1\npassword_file /etc/mosquitto/passwd\nacl_file /etc/mosquitto/my acl\n",
    ));
    assert_eq!(
        c.auth.password_file.as_deref(),
        Some(Path::new("/etc/mosquitto/passwd"))
    );
    // The rest of the line, spaces included, as Mosquitto reads it.
    assert_eq!(
        c.auth.acl_file.as_deref(),
        Some(Path::new("/etc/mosquitto/my acl"))
    );
    assert!(c.notes.is_empty(), "{:?}", c.notes);

    // per_listener_settings: the same file in two blocks is fine (with a note that it
    // applies to every listener); two different files are refused, not half-applied.
    let c = ok(mosquitto(
        "per_listener_settings true\nlistener 1883\npassword_file /pw\nlistener 1884\n\
         password_file /pw\n",
    ));
    assert_eq!(c.auth.password_file.as_deref(), Some(Path::new("/pw")));
    assert!(
        c.notes
            .iter()
            .any(|n| n.contains("applies to every listener"))
    );
    let e = errors(mosquitto(
        "per_listener_settings true\nlistener 1883\nacl_file /a\nlistener 1884\nacl_file /b\n",
    ));
    assert_eq!(
        e,
        [
            "`acl_file /b` (from mosquitto.conf:5): a different acl_file (`/a`) was given at \
          mosquitto.conf:3; ferromq applies one acl_file to every listener"
        ]
    );
    assert_eq!(
        errors(mosquitto("listener 1883\npassword_file\n")),
        ["missing value for `password_file` at mosquitto.conf:2: expected a file path"]
    );
}

#[test]
fn mosquitto_max_connections_outside_a_listener_is_global() {
    let c = ok(mosquitto(
        "max_connections 300\nlistener 1883\nmax_connections 100\nlistener 1884\n",
    ));
    assert_eq!(c.limits.max_connections, Some(300));
    assert_eq!(
        (
            c.listeners[0].max_connections,
            c.listeners[1].max_connections
        ),
        (Some(100), None)
    );
    assert_eq!(c.listeners.len(), 2, "no default listener is created");
    let c = ok(mosquitto("max_connections -1\nlistener 1883\n"));
    assert_eq!(c.limits.max_connections, None);
}

#[test]
fn auth_and_limits_keys_from_env_and_their_rules() {
    let c = ok(env(&[
        ("FERROMQ_AUTH_PASSWORD_FILE", "/pw"),
        ("FERROMQ_AUTH_ACL_SUBSCRIBE_FAILURE_CODE", "0x87"),
        ("FERROMQ_LIMITS_PUBLISH_RATE_MESSAGES", "50"),
        ("FERROMQ_LIMITS_MAX_CONNECTIONS", "0"),
        ("FERROMQ_MQTT_CONNECT_TIMEOUT", "500ms"),
    ]));
    assert_eq!(c.auth.password_file.as_deref(), Some(Path::new("/pw")));
    assert_eq!(c.auth.acl_subscribe_failure_code, 0x87);
    assert_eq!(c.limits.publish_rate_messages, 50);
    assert_eq!(c.limits.max_connections, None);
    assert_eq!(c.mqtt.connect_timeout, Duration::from_millis(500));
    // An empty path means none.
    assert_eq!(
        ok(env(&[("FERROMQ_AUTH_ACL_FILE", "")])).auth.acl_file,
        None
    );

    let e = errors(toml(
        "[auth]\nacl_subscribe_failure_code = 0x81\nfailure_window = 0\n\
         [limits]\nmax_subscriptions_per_client = 0\nretained_max_bytes = 0\n\
         [mqtt]\nmax_topic_length = 70000\n",
    ));
    assert_eq!(e.len(), 5, "{e:#?}");
    assert!(e.iter().any(|l| l.starts_with(
        "`auth.acl_subscribe_failure_code` = 129 (from ferromq.toml:2): must be 128"
    )));
    assert!(
        e.iter()
            .any(|l| l.starts_with("`mqtt.max_topic_length` = 70000"))
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("`limits.max_subscriptions_per_client` = 0"))
    );
}

#[test]
fn log_format_parses_for_cli_use() {
    assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
    assert_eq!(
        "xml".parse::<LogFormat>().map_err(|e| e.to_string()),
        Err("unknown log format `xml`: expected `text` or `json`".to_owned())
    );
}

proptest! {
    #[test]
    fn mosquitto_reader_never_panics(text in "(\\PC{0,30}\n){0,8}") {
        let _ = mosquitto(&text);
    }

    #[test]
    fn toml_reader_never_panics(text in "(\\PC{0,30}\n){0,8}") {
        let _ = toml(&text);
    }

    #[test]
    fn mosquitto_reader_never_panics_on_known_directives(
        lines in proptest::collection::vec(
            ("(listener|port|bind_address|max_connections|protocol|allow_anonymous|max_qos|\
              max_inflight_messages|max_packet_size|log_dest|per_listener_settings|sys_interval)",
             "[ 0-9a-z.:\\-\\[\\]]{0,12}"),
            0..8,
        )
    ) {
        let text: String = lines.iter().map(|(d, v)| format!("{d} {v}\n")).collect();
        let _ = mosquitto(&text);
    }
}

#[test]
fn http_section_from_every_layer() {
    let path = Path::new("ferromq.toml");
    let c = ok(load_str(
        path,
        FileFormat::Toml,
        "[http]\nlisten = \"0.0.0.0:9090\"\ntoken = \"s3cret\"\ntrust_loopback = false\n",
        NO_ENV,
        &CliOverrides::default(),
    ));
    assert_eq!(c.http.listen, addr("0.0.0.0:9090"));
    assert_eq!(c.http.token.as_deref(), Some("s3cret"));
    assert!(!c.http.trust_loopback);
    assert!(c.http.enabled);
    assert!(c.notes.is_empty(), "{:?}", c.notes);

    let c = ok(load(
        None,
        [
            ("FERROMQ_HTTP_LISTEN", "0.0.0.0:0"),
            ("FERROMQ_HTTP_TOKEN", ""),
        ],
        &CliOverrides::default(),
    ));
    assert_eq!(c.http.token, None, "an empty token is no token");
    assert!(
        c.notes.iter().any(|n| n.contains("http.token is not set")),
        "a non-loopback listener without a token is noted: {:?}",
        c.notes
    );

    let e = errors(load(
        None,
        [
            ("FERROMQ_HTTP_LISTEN", "localhost:80"),
            ("FERROMQ_HTTP_TOKEN", "a b"),
        ],
        &CliOverrides::default(),
    ));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].contains("FERROMQ_HTTP_LISTEN"), "{e:?}");
    assert!(e[1].contains("http.token"), "{e:?}");
}
