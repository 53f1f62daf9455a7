//! Layering: defaults, then the file, then the environment, then the command line;
//! then one validation pass over the result.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, ConfigErrors, Location};
use crate::keys::{KeySpec, Raw};
use crate::model::{Config, ListenerConfig, LogFormat};
use crate::{env, mosquitto, toml_file, validate};

/// Values given on the command line; they override everything else.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CliOverrides {
    /// `--listen ADDR` (repeatable): when non-empty, replaces the listener list.
    pub listen: Vec<SocketAddr>,
    /// `--data-dir PATH`: sets `persistence.path`.
    pub data_dir: Option<PathBuf>,
    /// `--log-level LEVEL`: sets `log.level`.
    pub log_level: Option<String>,
    /// `--log-format FORMAT`: sets `log.format`.
    pub log_format: Option<LogFormat>,
    /// `--http-listen ADDR`: sets `http.listen`.
    pub http_listen: Option<SocketAddr>,
}

/// How a config file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// ferromq's own format (see `ferromq.example.toml`).
    Toml,
    /// Mosquitto's `mosquitto.conf` format, for the directives ferromq shares.
    Mosquitto,
}

impl FileFormat {
    /// `.toml` (any case) is TOML; anything else is mosquitto.conf.
    pub fn from_path(path: &Path) -> Self {
        match path.extension() {
            Some(ext) if ext.eq_ignore_ascii_case("toml") => Self::Toml,
            _ => Self::Mosquitto,
        }
    }
}

/// Loads the configuration: defaults, then the file at `path` (if any), then the
/// `FERROMQ_*` variables among `env`, then `cli`; then validates the result as a whole.
///
/// `env` is every environment variable (name, value); variables not starting with
/// `FERROMQ_` are ignored. Tests pass a literal list, `main` uses
/// [`load_from_process_env`].
///
/// # Errors
/// Every problem found, from every source, at once.
pub fn load<I, K, V>(
    path: Option<&Path>,
    env: I,
    cli: &CliOverrides,
) -> Result<Config, ConfigErrors>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    let mut b = Builder::default();
    if let Some(path) = path {
        match std::fs::read_to_string(path) {
            Ok(text) => b.apply_file(path, FileFormat::from_path(path), &text),
            Err(source) => b.errors.push(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
    env::apply(&mut b, env);
    b.apply_cli(cli);
    b.finish()
}

/// [`load`] with this process's environment.
///
/// # Errors
/// As [`load`].
pub fn load_from_process_env(
    path: Option<&Path>,
    cli: &CliOverrides,
) -> Result<Config, ConfigErrors> {
    load(path, std::env::vars_os(), cli)
}

/// Loads from file contents already in memory; `path` only names the file in
/// messages.
///
/// # Errors
/// As [`load`].
pub fn load_str<I, K, V>(
    path: &Path,
    format: FileFormat,
    text: &str,
    env: I,
    cli: &CliOverrides,
) -> Result<Config, ConfigErrors>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    let mut b = Builder::default();
    b.apply_file(path, format, text);
    env::apply(&mut b, env);
    b.apply_cli(cli);
    b.finish()
}

/// Where each value last came from, so validation errors can name it.
#[derive(Debug, Default)]
pub(crate) struct Origins {
    /// By dotted key path.
    pub keys: HashMap<String, Location>,
    /// Parallel to `Config::listeners`; `None` for the built-in default.
    pub listeners: Vec<Option<Location>>,
}

/// The configuration being assembled, with everything found wrong so far.
#[derive(Default)]
pub(crate) struct Builder {
    pub config: Config,
    pub errors: Vec<ConfigError>,
    pub notes: Vec<String>,
    pub origins: Origins,
    /// A listener definition failed to parse, so "no listeners" would be misleading.
    pub listeners_incomplete: bool,
    /// Said only if the built-in listener survives every layer (see `mosquitto`).
    pub pending_default_listener_note: Option<String>,
}

impl Builder {
    fn apply_file(&mut self, path: &Path, format: FileFormat, text: &str) {
        match format {
            FileFormat::Toml => toml_file::apply(self, path, text),
            FileFormat::Mosquitto => mosquitto::apply(self, path, text),
        }
    }

    /// Sets a scalar key, or records why not. `shown_key` is the key as the user
    /// wrote it (a TOML path, a directive).
    pub(crate) fn set(&mut self, spec: &KeySpec, raw: Raw<'_>, shown_key: &str, at: Location) {
        if (spec.set)(&mut self.config, raw).is_some() {
            self.origins.keys.insert(spec.path(), at);
        } else {
            self.errors.push(ConfigError::InvalidValue {
                key: shown_key.to_owned(),
                value: raw.shown(),
                at,
                expected: spec.expected.to_owned(),
            });
        }
    }

    /// Records that `path` was set (by code other than [`Builder::set`]) at `at`.
    pub(crate) fn mark(&mut self, path: &str, at: Location) {
        self.origins.keys.insert(path.to_owned(), at);
    }

    pub(crate) fn replace_listeners(&mut self, listeners: Vec<(ListenerConfig, Location)>) {
        let (listeners, origins) = listeners.into_iter().map(|(l, at)| (l, Some(at))).unzip();
        self.config.listeners = listeners;
        self.origins.listeners = origins;
    }

    pub(crate) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    fn apply_cli(&mut self, cli: &CliOverrides) {
        if !cli.listen.is_empty() {
            let at = Location::cli("--listen");
            let listeners = cli
                .listen
                .iter()
                .enumerate()
                .map(|(i, addr)| (ListenerConfig::mqtt(listener_name(i), *addr), at.clone()))
                .collect();
            self.replace_listeners(listeners);
        }
        if let Some(dir) = &cli.data_dir {
            self.config.persistence.path.clone_from(dir);
            self.mark("persistence.path", Location::cli("--data-dir"));
        }
        if let Some(level) = &cli.log_level {
            self.config.log.level.clone_from(level);
            self.mark("log.level", Location::cli("--log-level"));
        }
        if let Some(format) = cli.log_format {
            self.config.log.format = format;
            self.mark("log.format", Location::cli("--log-format"));
        }
        if let Some(addr) = cli.http_listen {
            self.config.http.listen = addr;
            self.mark("http.listen", Location::cli("--http-listen"));
        }
    }

    fn finish(mut self) -> Result<Config, ConfigErrors> {
        validate::check(
            &self.config,
            &self.origins,
            self.listeners_incomplete,
            &mut self.errors,
        );
        if self.errors.is_empty() {
            if self.origins.listeners.iter().all(Option::is_none) {
                self.notes.extend(self.pending_default_listener_note);
            }
            let http = &self.config.http;
            if http.enabled && !http.listen.ip().is_loopback() && http.token.is_none() {
                self.notes.push(format!(
                    "http.listen = {} is not loopback and http.token is not set: the admin \
                     API is refused (403) to non-loopback peers; /metrics, /healthz and \
                     /readyz are open to them",
                    http.listen
                ));
            }
            self.config.notes = self.notes;
            Ok(self.config)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// Name of the `i`th (0-based) listener of a file, `FERROMQ_LISTEN` or `--listen` when
/// none is given.
pub(crate) fn listener_name(i: usize) -> String {
    format!("listener-{}", i + 1)
}
