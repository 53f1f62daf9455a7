//! The `mosquitto.conf` reader, for users arriving from the Mosquitto tutorial.
//!
//! Format (man mosquitto.conf): one directive per line, `#` starts a comment line,
//! blank lines are ignored, booleans are `true`/`false` (`1`/`0` also accepted, as
//! Mosquitto does). Supported directives map onto [`Config`](crate::Config); three
//! other kinds are handled deliberately:
//!
//! - *accepted, no effect* (`persistence_file`, `autosave_*`, `log_type`, ...): a note
//!   in [`Config::notes`](crate::Config::notes), because what they ask for either
//!   happens anyway or has a ferromq equivalent;
//! - *recognised, refused* (`capath`, CRLs, PSK, cipher lists, auth plugins,
//!   `include_dir`, bridges): an error, because running without the TLS option or
//!   plugin a user configured would be worse than not starting;
//! - everything else: "unknown directive", with a suggestion when it looks like a typo.
//!
//! Listener blocks follow Mosquitto: `listener PORT [ADDRESS]` starts a block, and
//! `max_connections`, `protocol`, the TLS directives (`cafile`, `certfile`,
//! `keyfile`, `require_certificate`, `use_identity_as_username`, `tls_version`) and
//! (with `per_listener_settings true`) `allow_anonymous` apply to the latest block.
//! Before the first `listener` they apply to the default listener, which `port` and
//! `bind_address` also configure and which exists only if one of them was used;
//! without a default listener, `max_connections` there is the broker-wide limit
//! (`limits.max_connections`). `password_file` and `acl_file` are broker-wide
//! wherever they appear (see `Reader::auth_file`).
//!
//! As in Mosquitto, a block with `cafile`, `certfile` or `keyfile` is a TLS listener:
//! `protocol mqtt` becomes `mqtts` and `protocol websockets` becomes `wss`. A
//! WebSocket listener serves the path `/mqtt` (Mosquitto accepts any path).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, Location, UnsupportedFeature, suggest};
use crate::keys::{self, FieldType, Raw, parse_bool, shorten};
use crate::load::{Builder, listener_name};
use crate::model::{
    DEFAULT_PORT, ListenerConfig, ListenerProtocol, MAX_PACKET_SIZE_LIMIT, TlsSettings, TlsVersion,
};

/// Directives taking one value that maps directly onto a key.
const SIMPLE: &[(&str, &str)] = &[
    (
        "allow_zero_length_clientid",
        "mqtt.allow_zero_length_clientid",
    ),
    ("max_keepalive", "mqtt.max_keepalive"),
    ("queue_qos0_messages", "mqtt.queue_qos0_messages"),
    ("message_size_limit", "mqtt.max_payload_size"),
    ("max_topic_alias", "mqtt.topic_alias_maximum"),
    ("retain_available", "mqtt.retain_available"),
    ("max_qos", "mqtt.max_qos"),
    ("sys_interval", "sys.interval"),
    ("persistence", "persistence.enabled"),
];

/// Directives whose value is the rest of the line (Mosquitto allows spaces in them).
const REST_OF_LINE: &[(&str, &str)] = &[
    ("auto_id_prefix", "mqtt.auto_id_prefix"),
    ("persistence_location", "persistence.path"),
];

/// Directives with their own handling below.
const SPECIAL: &[&str] = &[
    "listener",
    "port",
    "bind_address",
    "max_connections",
    "protocol",
    "allow_anonymous",
    "per_listener_settings",
    "max_inflight_messages",
    "max_queued_messages",
    "max_queued_bytes",
    "max_packet_size",
    "log_dest",
    "include_dir",
    "connection",
    "cafile",
    "certfile",
    "keyfile",
    "require_certificate",
    "use_identity_as_username",
    "tls_version",
    "password_file",
    "acl_file",
];

/// Accepted with a note: what they ask for needs no setting in ferromq.
const IGNORED: &[(&str, &str)] = &[
    ("persistence_file", "ferromq writes every change durably"),
    ("autosave_interval", "ferromq writes every change durably"),
    ("autosave_on_changes", "ferromq writes every change durably"),
    ("log_type", "set log.level (FERROMQ_LOG_LEVEL) instead"),
    (
        "connection_messages",
        "set log.level (FERROMQ_LOG_LEVEL) instead",
    ),
    ("log_timestamp", "ferromq always timestamps its log"),
    ("log_timestamp_format", "ferromq always timestamps its log"),
    ("pid_file", "ferromq does not write a pid file"),
    (
        "user",
        "ferromq does not switch users; start it as the user it should run as",
    ),
    (
        "websockets_log_level",
        "WebSocket events are logged with the broker's log (log.level)",
    ),
    (
        "websockets_headers_size",
        "the WebSocket upgrade request is bounded by the handshake parser",
    ),
];

/// Recognised, refused: the TLS options ferromq does not implement and auth plugins
/// (`password_file` and `acl_file` are implemented).
const TLS_WS_AUTH: &[&str] = &[
    "capath",
    "use_subject_as_username",
    "crlfile",
    "ciphers",
    "ciphers_tls1.3",
    "dhparamfile",
    "psk_file",
    "psk_hint",
    "tls_engine",
    "tls_engine_kpass_sha1",
    "tls_keyform",
    "auth_plugin",
    "plugin",
    "http_dir",
];
const TLS_WS_AUTH_PREFIXES: &[&str] = &["auth_opt_", "plugin_opt_"];

const PORT_EXPECTED: &str = "a port number from 0 to 65535";
const ADDRESS_EXPECTED: &str = "an IP address such as 127.0.0.1 or :: \
    (host names other than localhost are not resolved; unix sockets are not supported)";

/// A listener block being read.
#[derive(Default)]
struct Draft {
    port: Option<u16>,
    addr: Option<IpAddr>,
    /// `protocol websockets`; whether it is `ws` or `wss` depends on the TLS files.
    websockets: bool,
    tls: TlsSettings,
    allow_anonymous: Option<bool>,
    max_connections: Option<usize>,
    /// Where the block started; for the default listener, the first directive that
    /// configured it (it exists only if one did).
    at: Option<Location>,
    /// The `listener` line itself was bad; keep reading the block for its other
    /// errors, but don't create the listener.
    broken: bool,
}

impl Draft {
    fn build(self, name: String) -> ListenerConfig {
        // Mosquitto turns TLS on for a listener with any of these files.
        let t = &self.tls;
        let tls = t.cafile.is_some() || t.certfile.is_some() || t.keyfile.is_some();
        let protocol = match (self.websockets, tls) {
            (false, false) => ListenerProtocol::Mqtt,
            (false, true) => ListenerProtocol::Mqtts,
            (true, false) => ListenerProtocol::Ws,
            (true, true) => ListenerProtocol::Wss,
        };
        ListenerConfig {
            protocol,
            allow_anonymous: self.allow_anonymous,
            max_connections: self.max_connections,
            tls: self.tls,
            ..ListenerConfig::mqtt(
                name,
                SocketAddr::new(
                    self.addr.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                    self.port.unwrap_or(DEFAULT_PORT),
                ),
            )
        }
    }
}

struct Reader<'a> {
    b: &'a mut Builder,
    path: &'a Path,
    per_listener_settings: bool,
    default: Draft,
    blocks: Vec<Draft>,
    /// After a `connection` line: bridge directives follow; the `connection` error
    /// covers them all.
    in_bridge: bool,
    /// `password_file` / `acl_file` lines seen: (directive, value, where).
    auth_files: Vec<(String, String, Location)>,
    /// `max_connections` before the first `listener`: the default listener's limit if
    /// `port`/`bind_address` created one (as in Mosquitto), else the broker-wide one.
    global_max_connections: Option<(Option<usize>, Location)>,
}

pub(crate) fn apply(b: &mut Builder, path: &Path, text: &str) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut r = Reader {
        b,
        path,
        per_listener_settings: per_listener_settings(text),
        default: Draft::default(),
        blocks: Vec::new(),
        in_bridge: false,
        auth_files: Vec::new(),
        global_max_connections: None,
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (directive, rest) = line
            .split_once(char::is_whitespace)
            .map_or((line, ""), |(d, rest)| (d, rest.trim()));
        r.directive(directive, rest, Location::file(path, i + 1));
    }
    r.finish();
}

/// Mosquitto reads `per_listener_settings` as a global option wherever it appears;
/// look for it first so `allow_anonymous` lines before it are placed correctly.
fn per_listener_settings(text: &str) -> bool {
    text.lines()
        .filter_map(|line| {
            let mut tokens = line.split_whitespace();
            (tokens.next()? == "per_listener_settings")
                .then(|| tokens.next().and_then(parse_bool))?
        })
        .next_back()
        .unwrap_or(false)
}

impl Reader<'_> {
    fn directive(&mut self, directive: &str, rest: &str, at: Location) {
        if let Some(&(_, path)) = SIMPLE.iter().find(|(d, _)| *d == directive) {
            if let (Some(spec), Some(value)) =
                (keys::by_path(path), self.single(directive, rest, &at, None))
            {
                self.b.set(spec, Raw::Text(value), directive, at);
            }
            return;
        }
        if let Some(&(_, path)) = REST_OF_LINE.iter().find(|(d, _)| *d == directive) {
            let Some(spec) = keys::by_path(path) else {
                return;
            };
            if rest.is_empty() {
                self.missing(directive, at, spec.expected);
            } else {
                self.b.set(spec, Raw::Text(rest), directive, at);
            }
            return;
        }
        if let Some(&(_, why)) = IGNORED.iter().find(|(d, _)| *d == directive) {
            self.b.note(format!(
                "`{directive}` at {at} is accepted but ignored: {why}"
            ));
            return;
        }
        if TLS_WS_AUTH.contains(&directive)
            || TLS_WS_AUTH_PREFIXES
                .iter()
                .any(|p| directive.starts_with(p))
        {
            self.unsupported(directive, at, UnsupportedFeature::TlsWebSocketsAuth);
            return;
        }
        match directive {
            "listener" => self.listener(rest, at),
            "port" => {
                if let Some(port) =
                    self.parsed(directive, rest, &at, PORT_EXPECTED, |s| s.parse().ok())
                {
                    self.default.port = Some(port);
                    self.default.at.get_or_insert(at);
                }
            }
            "bind_address" => {
                if let Some(addr) = self.parsed(directive, rest, &at, ADDRESS_EXPECTED, address) {
                    self.note_localhost(directive, rest, &at);
                    self.default.addr = Some(addr);
                    self.default.at.get_or_insert(at);
                }
            }
            "max_connections" => {
                let expected = "-1 (no limit) or a positive integer";
                let parsed =
                    self.parsed(directive, rest, &at, expected, |s| match s.parse::<i64>() {
                        Ok(-1) => Some(None),
                        Ok(n) => usize::try_from(n).ok().map(Some),
                        Err(_) => None,
                    });
                if let Some(limit) = parsed {
                    match self.blocks.last_mut() {
                        Some(block) => block.max_connections = limit,
                        // Before the first `listener`: decided in `finish`.
                        None => self.global_max_connections = Some((limit, at)),
                    }
                }
            }
            "password_file" | "acl_file" => self.auth_file(directive, rest, at),
            "protocol" => match self.single(directive, rest, &at, Some("`mqtt` or `websockets`")) {
                Some("mqtt") => self.current(&at).websockets = false,
                Some("websockets") => self.current(&at).websockets = true,
                Some(other) => self.invalid(directive, other, at, "`mqtt` or `websockets`"),
                None => {}
            },
            "cafile" | "certfile" | "keyfile" => {
                if rest.is_empty() {
                    self.missing(directive, at, "a path to a PEM file");
                    return;
                }
                // The rest of the line: Mosquitto allows spaces in paths.
                let path = Some(PathBuf::from(rest));
                let tls = &mut self.current(&at).tls;
                match directive {
                    "cafile" => tls.cafile = path,
                    "certfile" => tls.certfile = path,
                    _ => tls.keyfile = path,
                }
            }
            "require_certificate" | "use_identity_as_username" => {
                if let Some(v) = self.parsed(directive, rest, &at, bool::EXPECTED, parse_bool) {
                    let tls = &mut self.current(&at).tls;
                    if directive == "require_certificate" {
                        tls.require_certificate = v;
                    } else {
                        tls.use_identity_as_username = v;
                    }
                }
            }
            "tls_version" => {
                let expected = "`tlsv1.2` (TLS 1.2 and 1.3) or `tlsv1.3`";
                match self.single(directive, rest, &at, Some(expected)) {
                    Some(v) if v.eq_ignore_ascii_case("tlsv1.1") => {
                        self.b.note(format!(
                            "`tls_version tlsv1.1` at {at}: TLS 1.1 is not supported (rustls \
                             speaks TLS 1.2 and 1.3); the minimum is TLS 1.2"
                        ));
                        self.current(&at).tls.min_version = TlsVersion::Tls12;
                    }
                    Some(v) => match TlsVersion::parse(v) {
                        Some(version) => self.current(&at).tls.min_version = version,
                        None => self.invalid(directive, v, at, expected),
                    },
                    None => {}
                }
            }
            "allow_anonymous" => {
                if self.per_listener_settings {
                    if let Some(v) = self.parsed(directive, rest, &at, bool::EXPECTED, parse_bool) {
                        self.current(&at).allow_anonymous = Some(v);
                    }
                } else if let (Some(spec), Some(v)) = (
                    keys::find("mqtt", "allow_anonymous"),
                    self.single(directive, rest, &at, Some(bool::EXPECTED)),
                ) {
                    self.b.set(spec, Raw::Text(v), directive, at);
                }
            }
            "per_listener_settings" => {
                // Already applied by the pre-scan; only check the value here.
                self.parsed(directive, rest, &at, bool::EXPECTED, parse_bool);
            }
            "max_inflight_messages" => {
                let Some(n) = self.parsed(directive, rest, &at, u16::EXPECTED, |s| {
                    u16::parse(Raw::Text(s))
                }) else {
                    return;
                };
                let n = if n == 0 {
                    self.b.note(format!(
                        "`max_inflight_messages 0` at {at} means \"no limit\" to Mosquitto; \
                         using the MQTT maximum of 65535"
                    ));
                    u16::MAX
                } else {
                    n
                };
                // Mosquitto documents this as also setting the MQTT 5 Receive Maximum.
                self.b.config.mqtt.max_inflight_messages = n;
                self.b.config.mqtt.receive_maximum = n;
                self.b.mark("mqtt.max_inflight_messages", at.clone());
                self.b.mark("mqtt.receive_maximum", at);
            }
            "max_queued_messages" | "max_queued_bytes" => {
                let expected = "a positive integer (Mosquitto's 0 = unlimited is not supported: \
                                ferromq bounds every session queue)";
                let Some(n) = self.parsed(directive, rest, &at, expected, |s| {
                    s.parse::<usize>().ok().filter(|&n| n > 0)
                }) else {
                    return;
                };
                if directive == "max_queued_messages" {
                    self.b.config.mqtt.max_queued_messages = n;
                    self.b.mark("mqtt.max_queued_messages", at);
                } else {
                    self.b.config.mqtt.max_queued_bytes = n;
                    self.b.mark("mqtt.max_queued_bytes", at);
                }
            }
            "max_packet_size" => {
                let Some(n) = self.parsed(directive, rest, &at, u32::EXPECTED, |s| {
                    u32::parse(Raw::Text(s))
                }) else {
                    return;
                };
                let n = if n == 0 {
                    self.b.note(format!(
                        "`max_packet_size 0` at {at} means \"no limit\" to Mosquitto; \
                         using the MQTT maximum of {MAX_PACKET_SIZE_LIMIT} bytes"
                    ));
                    MAX_PACKET_SIZE_LIMIT
                } else {
                    n
                };
                self.b.config.mqtt.max_packet_size = n;
                self.b.mark("mqtt.max_packet_size", at);
            }
            "log_dest" => {
                let expected = "`stdout`, `stderr` or `none` (the `file`, `syslog`, `topic` and \
                                `dlt` destinations are not supported; redirect the broker's output)";
                match rest.split_whitespace().next() {
                    Some("stdout" | "stderr") => {}
                    Some("none") => {
                        self.b.config.log.level = "off".to_owned();
                        self.b.mark("log.level", at);
                    }
                    Some(_) => self.invalid(directive, rest, at, expected),
                    None => self.missing(directive, at, expected),
                }
            }
            "include_dir" => self.unsupported(directive, at, UnsupportedFeature::IncludeDir),
            "connection" => {
                self.unsupported(directive, at, UnsupportedFeature::Bridge);
                self.in_bridge = true;
            }
            _ if self.in_bridge => {}
            _ => {
                let known = SIMPLE
                    .iter()
                    .chain(REST_OF_LINE)
                    .chain(IGNORED)
                    .map(|(d, _)| *d)
                    .chain(SPECIAL.iter().copied())
                    .chain(TLS_WS_AUTH.iter().copied());
                self.b.errors.push(ConfigError::UnknownDirective {
                    directive: directive.to_owned(),
                    at,
                    suggestion: suggest(directive, known),
                });
            }
        }
    }

    /// `password_file` / `acl_file`: one file for the whole broker. Mosquitto with
    /// `per_listener_settings true` can give each listener its own; ferromq applies one
    /// to every listener (stricter, never looser), so a second, different file is an
    /// error rather than silently ignored.
    fn auth_file(&mut self, directive: &str, rest: &str, at: Location) {
        let path = if directive == "password_file" {
            "auth.password_file"
        } else {
            "auth.acl_file"
        };
        if rest.is_empty() {
            self.missing(directive, at, "a file path");
            return;
        }
        if let Some((earlier, earlier_at)) = self
            .auth_files
            .iter()
            .find(|(d, _, _)| d == directive)
            .map(|(_, v, a)| (v.clone(), a.clone()))
        {
            if earlier != rest {
                self.b.errors.push(ConfigError::Invalid {
                    subject: format!("`{directive} {rest}`"),
                    at: Some(at),
                    problem: format!(
                        "a different {directive} (`{earlier}`) was given at {earlier_at}; \
                         ferromq applies one {directive} to every listener"
                    ),
                });
            }
            return;
        }
        if self.per_listener_settings && !self.blocks.is_empty() {
            self.b.note(format!(
                "`{directive}` at {at} applies to every listener: ferromq has one \
                 {directive} for the whole broker"
            ));
        }
        self.auth_files
            .push((directive.to_owned(), rest.to_owned(), at.clone()));
        if let Some(spec) = keys::by_path(path) {
            self.b.set(spec, Raw::Text(rest), directive, at);
        }
    }

    fn listener(&mut self, rest: &str, at: Location) {
        let args: Vec<&str> = rest.split_whitespace().collect();
        let mut draft = Draft {
            at: Some(at.clone()),
            ..Draft::default()
        };
        match args.as_slice() {
            [] => {
                self.missing("listener", at, "PORT [BIND_ADDRESS]");
                draft.broken = true;
            }
            [port, addr @ ..] if addr.len() <= 1 => {
                match port.parse::<u16>() {
                    Ok(port) => draft.port = Some(port),
                    Err(_) => {
                        self.invalid("listener", port, at.clone(), PORT_EXPECTED);
                        draft.broken = true;
                    }
                }
                if let Some(addr) = addr.first() {
                    match address(addr) {
                        Some(ip) => {
                            self.note_localhost("listener", rest, &at);
                            draft.addr = Some(ip);
                        }
                        None => {
                            self.invalid("listener", addr, at, ADDRESS_EXPECTED);
                            draft.broken = true;
                        }
                    }
                }
            }
            _ => {
                self.invalid("listener", rest, at, "PORT [BIND_ADDRESS]");
                draft.broken = true;
            }
        }
        self.blocks.push(draft);
    }

    /// The listener block per-listener directives apply to.
    fn current(&mut self, at: &Location) -> &mut Draft {
        match self.blocks.last_mut() {
            Some(block) => block,
            None => {
                self.default.at.get_or_insert_with(|| at.clone());
                &mut self.default
            }
        }
    }

    fn finish(self) {
        let Reader {
            b,
            path,
            mut default,
            blocks,
            global_max_connections,
            ..
        } = self;
        if let Some((limit, at)) = global_max_connections {
            if default.at.is_some() {
                default.max_connections = limit;
            } else {
                b.config.limits.max_connections = limit;
                b.mark("limits.max_connections", at);
            }
        }
        if default.at.is_none() && blocks.is_empty() {
            b.pending_default_listener_note = Some(format!(
                "{} declares no `listener`: listening on the default 0.0.0.0:{DEFAULT_PORT}, \
                 every interface (Mosquitto 2 would listen on localhost only); add \
                 `listener {DEFAULT_PORT} 127.0.0.1` to restrict it",
                path.display()
            ));
            return;
        }
        let mut listeners = Vec::new();
        if let Some(at) = default.at.clone() {
            listeners.push((default.build("default".to_owned()), at));
        }
        for (i, block) in blocks.into_iter().enumerate() {
            match block.at.clone() {
                Some(at) if !block.broken => listeners.push((block.build(listener_name(i)), at)),
                _ => b.listeners_incomplete = true,
            }
        }
        b.replace_listeners(listeners);
    }

    fn note_localhost(&mut self, directive: &str, rest: &str, at: &Location) {
        if rest.split_whitespace().any(|t| t == "localhost") {
            self.b.note(format!(
                "`{directive} {rest}` at {at}: `localhost` is bound as 127.0.0.1 only (not ::1)"
            ));
        }
    }

    /// Exactly one value token, or an error (`expected` defaults to "a single value").
    fn single<'r>(
        &mut self,
        directive: &str,
        rest: &'r str,
        at: &Location,
        expected: Option<&str>,
    ) -> Option<&'r str> {
        let mut tokens = rest.split_whitespace();
        match (tokens.next(), tokens.next()) {
            (Some(value), None) => Some(value),
            (None, _) => {
                let expected = expected
                    .or_else(|| self.expected_for(directive))
                    .unwrap_or("a value");
                self.missing(directive, at.clone(), expected);
                None
            }
            (Some(_), Some(_)) => {
                self.invalid(directive, rest, at.clone(), "a single value");
                None
            }
        }
    }

    /// One value token parsed by `parse`, or an error naming `expected`.
    fn parsed<T>(
        &mut self,
        directive: &str,
        rest: &str,
        at: &Location,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let value = self.single(directive, rest, at, Some(expected))?;
        let parsed = parse(value);
        if parsed.is_none() {
            self.invalid(directive, value, at.clone(), expected);
        }
        parsed
    }

    fn expected_for(&self, directive: &str) -> Option<&'static str> {
        let path = SIMPLE.iter().find(|(d, _)| *d == directive)?.1;
        keys::by_path(path).map(|k| k.expected)
    }

    fn invalid(&mut self, directive: &str, value: &str, at: Location, expected: &str) {
        self.b.errors.push(ConfigError::InvalidValue {
            key: directive.to_owned(),
            value: shorten(value),
            at,
            expected: expected.to_owned(),
        });
    }

    fn missing(&mut self, directive: &str, at: Location, expected: &str) {
        self.b.errors.push(ConfigError::MissingValue {
            key: directive.to_owned(),
            at,
            expected: expected.to_owned(),
        });
    }

    fn unsupported(&mut self, directive: &str, at: Location, feature: UnsupportedFeature) {
        self.b.errors.push(ConfigError::Unsupported {
            directive: directive.to_owned(),
            at,
            feature,
        });
    }
}

/// An IP address, optionally in brackets, or `localhost` as 127.0.0.1.
fn address(text: &str) -> Option<IpAddr> {
    if text.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    text.parse().ok()
}
