//! ferromq's native TOML format: reading (every error, each with its line) and
//! rendering (a commented file listing every key).
//!
//! The document is walked by hand rather than deserialised with serde
//! `deny_unknown_fields`: serde stops at the first unknown key or mistyped value,
//! and here every problem in the file is reported at once, each with its line. Keys
//! are looked up in [`crate::keys::KEYS`], the same table the environment uses, so an
//! unknown key is an error exactly as `deny_unknown_fields` would make it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;

use toml_edit::{ImDocument, Item, TableLike, Value};

use crate::error::{ConfigError, Location, UnsupportedFeature, suggest};
use crate::keys::{self, FieldType, KEYS, Raw, SECTIONS};
use crate::load::{Builder, listener_name};
use crate::model::{Config, DEFAULT_WS_PATH, ListenerConfig, ListenerProtocol, TlsVersion};

const LISTENER: &str = "listener";
const LISTENER_KEYS: [&str; 12] = [
    "name",
    "bind",
    "protocol",
    "allow_anonymous",
    "max_connections",
    "cafile",
    "certfile",
    "keyfile",
    "require_certificate",
    "use_identity_as_username",
    "tls_version",
    "path",
];
pub(crate) const BIND_EXPECTED: &str = "an IP address and port such as \"0.0.0.0:1883\" or \"[::]:1883\" (host names are not resolved)";
const PROTOCOL_EXPECTED: &str = "\"mqtt\", \"mqtts\", \"ws\" or \"wss\"";
pub(crate) const TLS_VERSION_EXPECTED: &str = "\"tlsv1.2\" (TLS 1.2 and 1.3) or \"tlsv1.3\"";

/// The file being read, for locations and the text of values.
struct File<'a> {
    path: &'a Path,
    text: &'a str,
}

impl File<'_> {
    fn at(&self, span: Option<Range<usize>>) -> Location {
        Location::File {
            path: self.path.to_path_buf(),
            line: span.map(|s| line_of(self.text, s.start)),
        }
    }

    /// The location of `key` in `table`, falling back to its value, then to `parent`.
    fn at_key(&self, table: &dyn TableLike, key: &str, item: &Item, parent: &Location) -> Location {
        match table
            .key(key)
            .and_then(|k| k.span())
            .or_else(|| item.span())
        {
            Some(span) => self.at(Some(span)),
            None => parent.clone(),
        }
    }

    fn source(&self, span: Option<Range<usize>>) -> &str {
        span.and_then(|s| self.text.get(s)).unwrap_or("").trim()
    }

    /// How an item looks in an error message.
    fn shown(&self, item: &Item) -> String {
        match item {
            Item::Table(_) => "a table".to_owned(),
            Item::ArrayOfTables(_) => "an array of tables".to_owned(),
            Item::Value(Value::InlineTable(_)) => "an inline table".to_owned(),
            _ => keys::shorten(self.source(item.span())),
        }
    }

    fn raw<'v>(&'v self, value: &'v Value) -> Raw<'v> {
        Raw::Toml {
            value,
            source: self.source(value.span()),
        }
    }
}

/// 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

pub(crate) fn apply(b: &mut Builder, path: &Path, text: &str) {
    let f = File { path, text };
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            b.errors.push(ConfigError::TomlSyntax {
                at: f.at(e.span()),
                message: e.message().trim().replace('\n', "; "),
            });
            b.listeners_incomplete = true;
            return;
        }
    };
    let root = doc.as_table();
    let file_at = f.at(None);
    for (key, item) in root.iter() {
        let at = f.at_key(root, key, item, &file_at);
        if key == LISTENER {
            listeners(b, &f, item, &at);
        } else if SECTIONS.iter().any(|(s, _)| *s == key) {
            section(b, &f, key, item, &at);
        } else {
            let top = std::iter::once(LISTENER).chain(SECTIONS.iter().map(|(s, _)| *s));
            b.errors.push(ConfigError::UnknownKey {
                key: key.to_owned(),
                at,
                suggestion: suggest(key, top),
            });
        }
    }
}

fn section(b: &mut Builder, f: &File<'_>, name: &str, item: &Item, at: &Location) {
    let Some(table) = item.as_table_like() else {
        b.errors.push(ConfigError::InvalidValue {
            key: name.to_owned(),
            value: f.shown(item),
            at: at.clone(),
            expected: format!("a table ([{name}])"),
        });
        return;
    };
    for (key, item) in table.iter() {
        let key_at = f.at_key(table, key, item, at);
        let Some(spec) = keys::find(name, key) else {
            let known = KEYS.iter().filter(|k| k.section == name).map(|k| k.name);
            b.errors.push(ConfigError::UnknownKey {
                key: format!("{name}.{key}"),
                at: key_at,
                suggestion: suggest(key, known).map(|s| format!("{name}.{s}")),
            });
            continue;
        };
        match item.as_value() {
            Some(value) => b.set(spec, f.raw(value), &spec.path(), key_at),
            None => b.errors.push(ConfigError::InvalidValue {
                key: spec.path(),
                value: f.shown(item),
                at: key_at,
                expected: spec.expected.to_owned(),
            }),
        }
    }
}

fn listeners(b: &mut Builder, f: &File<'_>, item: &Item, at: &Location) {
    let mut tables: Vec<(&dyn TableLike, Location)> = Vec::new();
    match item {
        Item::ArrayOfTables(array) => {
            for table in array.iter() {
                tables.push((table, f.at(table.span()).or(at)));
            }
        }
        Item::Value(Value::Array(array)) => {
            for value in array.iter() {
                match value.as_inline_table() {
                    Some(table) => tables.push((table, f.at(value.span()).or(at))),
                    None => {
                        b.errors.push(ConfigError::InvalidValue {
                            key: LISTENER.to_owned(),
                            value: keys::shorten(f.source(value.span())),
                            at: f.at(value.span()).or(at),
                            expected: "a table of listener settings".to_owned(),
                        });
                        b.listeners_incomplete = true;
                    }
                }
            }
        }
        _ => {
            b.errors.push(ConfigError::InvalidValue {
                key: LISTENER.to_owned(),
                value: f.shown(item),
                at: at.clone(),
                expected: "one [[listener]] section per listener".to_owned(),
            });
            b.listeners_incomplete = true;
            return;
        }
    }

    let mut parsed = Vec::new();
    for (i, (table, table_at)) in tables.into_iter().enumerate() {
        match listener(b, f, i, table, &table_at) {
            Some(l) => parsed.push((l, table_at)),
            None => b.listeners_incomplete = true,
        }
    }
    b.replace_listeners(parsed);
}

fn listener(
    b: &mut Builder,
    f: &File<'_>,
    index: usize,
    table: &dyn TableLike,
    at: &Location,
) -> Option<ListenerConfig> {
    let errors_before = b.errors.len();
    let mut l = ListenerConfig::mqtt(listener_name(index), SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut bind = None;
    for (key, item) in table.iter() {
        let key_at = f.at_key(table, key, item, at);
        let path = format!("{LISTENER}.{key}");
        if !LISTENER_KEYS.contains(&key) {
            b.errors.push(ConfigError::UnknownKey {
                suggestion: suggest(key, LISTENER_KEYS).map(|s| format!("{LISTENER}.{s}")),
                key: path,
                at: key_at,
            });
            continue;
        }
        let Some(value) = item.as_value() else {
            b.errors.push(ConfigError::InvalidValue {
                key: path,
                value: f.shown(item),
                at: key_at,
                expected: "a value, not a table".to_owned(),
            });
            continue;
        };
        let raw = f.raw(value);
        match key {
            "name" => {
                if let Some(name) = typed::<String>(b, raw, &path, &key_at) {
                    l.name = name;
                }
            }
            "bind" => match raw.string().and_then(|s| s.parse::<SocketAddr>().ok()) {
                Some(addr) => bind = Some(addr),
                None => invalid(b, raw, &path, &key_at, BIND_EXPECTED),
            },
            "protocol" => match protocol(raw.string()) {
                Ok(p) => l.protocol = p,
                Err(Some(feature)) => b.errors.push(ConfigError::Unsupported {
                    directive: format!("{path} = {}", raw.shown()),
                    at: key_at,
                    feature,
                }),
                Err(None) => invalid(b, raw, &path, &key_at, PROTOCOL_EXPECTED),
            },
            "allow_anonymous" => l.allow_anonymous = typed(b, raw, &path, &key_at),
            "max_connections" => l.max_connections = typed(b, raw, &path, &key_at),
            "cafile" => l.tls.cafile = typed(b, raw, &path, &key_at),
            "certfile" => l.tls.certfile = typed(b, raw, &path, &key_at),
            "keyfile" => l.tls.keyfile = typed(b, raw, &path, &key_at),
            "require_certificate" => {
                if let Some(v) = typed(b, raw, &path, &key_at) {
                    l.tls.require_certificate = v;
                }
            }
            "use_identity_as_username" => {
                if let Some(v) = typed(b, raw, &path, &key_at) {
                    l.tls.use_identity_as_username = v;
                }
            }
            "tls_version" => match raw.string().and_then(TlsVersion::parse) {
                Some(v) => l.tls.min_version = v,
                None => invalid(b, raw, &path, &key_at, TLS_VERSION_EXPECTED),
            },
            _ => {
                if let Some(p) = typed::<String>(b, raw, &path, &key_at) {
                    l.ws_path = p;
                }
            }
        }
    }
    match bind {
        Some(addr) => l.bind = addr,
        // A present but bad `bind` has been reported already.
        None if !table.contains_key("bind") => b.errors.push(ConfigError::MissingValue {
            key: format!("{LISTENER}.bind"),
            at: at.clone(),
            expected: BIND_EXPECTED.to_owned(),
        }),
        None => {}
    }
    (b.errors.len() == errors_before).then_some(l)
}

/// `Err(Some(_))` for protocols ferromq knows but does not serve yet (none today).
pub(crate) fn protocol(name: Option<&str>) -> Result<ListenerProtocol, Option<UnsupportedFeature>> {
    match name.map(str::trim) {
        Some("mqtt") => Ok(ListenerProtocol::Mqtt),
        Some("mqtts") => Ok(ListenerProtocol::Mqtts),
        Some("ws") => Ok(ListenerProtocol::Ws),
        Some("wss") => Ok(ListenerProtocol::Wss),
        _ => Err(None),
    }
}

fn typed<T: FieldType>(b: &mut Builder, raw: Raw<'_>, key: &str, at: &Location) -> Option<T> {
    let value = T::parse(raw);
    if value.is_none() {
        invalid(b, raw, key, at, T::EXPECTED);
    }
    value
}

fn invalid(b: &mut Builder, raw: Raw<'_>, key: &str, at: &Location, expected: &str) {
    b.errors.push(ConfigError::InvalidValue {
        key: key.to_owned(),
        value: raw.shown(),
        at: at.clone(),
        expected: expected.to_owned(),
    });
}

trait OrLocation {
    fn or(self, fallback: &Location) -> Location;
}

impl OrLocation for Location {
    /// `self` if it has a line, else `fallback`.
    fn or(self, fallback: &Location) -> Location {
        match self {
            Location::File { line: None, .. } => fallback.clone(),
            located => located,
        }
    }
}

const HEADER: &str = "\
# ferromq configuration.
#
# Every key is optional: a key left out keeps the default shown here.
# Precedence: built-in defaults < this file < FERROMQ_* environment variables
# < command-line options. Each key's environment variable is named next to it;
# FERROMQ_LISTEN=\"addr[,addr...]\" replaces the whole listener list.
# Durations are whole seconds (10) or strings such as \"10s\", \"500ms\", \"5m\".
# Unknown keys are errors. A file whose name does not end in .toml is read as
# mosquitto.conf instead; the mosquitto.conf directive for a key is named next
# to it where there is one.
";

const LISTENER_DOC: &str = "\
# One [[listener]] section per MQTT listener.
#   name             unique name for logs and metrics (default \"listener-N\")
#   bind             required: IP address and port; port 0 picks a free port
#   protocol         \"mqtt\" (TCP), \"mqtts\" (TLS), \"ws\" (WebSocket), \"wss\"
#                    (WebSocket over TLS)
#   allow_anonymous  overrides mqtt.allow_anonymous on this listener
#   max_connections  connection limit for this listener (default: none)
#   certfile, keyfile  PEM server certificate chain and private key (mqtts, wss)
#   cafile           PEM CA certificates that client certificates must chain to
#   require_certificate       refuse clients without a valid certificate (mTLS)
#   use_identity_as_username  the client certificate's CN is the username
#   tls_version      lowest TLS version: \"tlsv1.2\" (default) or \"tlsv1.3\"
#   path             WebSocket path (ws, wss; default \"/mqtt\")
# Certificate files are reloaded on SIGHUP and when they change on disk.
# mosquitto.conf: listener PORT [ADDRESS], then protocol, cafile, certfile,
# keyfile, require_certificate, use_identity_as_username, tls_version
";

impl Config {
    /// This configuration as a commented TOML file that [`crate::load`] reads back to
    /// the same value (except [`Config::notes`], which are not configuration).
    /// `Config::default().to_toml_string()` is the shipped `ferromq.example.toml`.
    pub fn to_toml_string(&self) -> String {
        let mut out = String::from(HEADER);
        out.push('\n');
        out.push_str(LISTENER_DOC);
        if self.listeners.is_empty() {
            out.push_str("listener = []\n");
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            // Writing to a String cannot fail.
            let _ = writeln!(out, "[[listener]]");
            let _ = writeln!(out, "name = {}", keys::toml_string(&l.name));
            let _ = writeln!(out, "bind = {}", keys::toml_string(&l.bind.to_string()));
            let _ = writeln!(out, "protocol = {}", keys::toml_string(l.protocol.as_str()));
            match l.allow_anonymous {
                Some(v) => writeln!(out, "allow_anonymous = {v}"),
                None => writeln!(out, "# allow_anonymous = false"),
            }
            .ok();
            match l.max_connections {
                Some(v) => writeln!(out, "max_connections = {v}"),
                None => writeln!(out, "# max_connections = 10000"),
            }
            .ok();
            render_transport(&mut out, l);
        }
        for (section, doc) in SECTIONS {
            out.push('\n');
            comment(&mut out, doc);
            let _ = writeln!(out, "[{section}]");
            for (i, key) in KEYS.iter().filter(|k| k.section == section).enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                comment(&mut out, key.doc);
                let mut origin = format!("Environment: {}.", key.env_var());
                if let Some(m) = key.mosquitto {
                    let _ = write!(origin, " mosquitto.conf: {m}.");
                }
                comment(&mut out, &origin);
                let _ = writeln!(out, "{} = {}", key.name, (key.render)(self));
            }
        }
        out
    }
}

/// The TLS and WebSocket keys of a listener, only those that differ from the
/// defaults (a plain listener gets none, so the example file stays short).
fn render_transport(out: &mut String, l: &ListenerConfig) {
    let t = &l.tls;
    for (key, file) in [
        ("cafile", &t.cafile),
        ("certfile", &t.certfile),
        ("keyfile", &t.keyfile),
    ] {
        if let Some(f) = file {
            let _ = writeln!(out, "{key} = {}", keys::toml_string(&f.to_string_lossy()));
        }
    }
    if t.require_certificate {
        let _ = writeln!(out, "require_certificate = true");
    }
    if t.use_identity_as_username {
        let _ = writeln!(out, "use_identity_as_username = true");
    }
    if t.min_version != TlsVersion::default() {
        let _ = writeln!(
            out,
            "tls_version = {}",
            keys::toml_string(t.min_version.as_str())
        );
    }
    if l.ws_path != DEFAULT_WS_PATH {
        let _ = writeln!(out, "path = {}", keys::toml_string(&l.ws_path));
    }
}

fn comment(out: &mut String, text: &str) {
    for line in text.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
}
