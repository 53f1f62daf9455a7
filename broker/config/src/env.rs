//! The environment layer: `FERROMQ_<SECTION>_<KEY>` for every scalar key, and
//! `FERROMQ_LISTEN=addr[,addr...]` replacing the listener list.
//!
//! Any other `FERROMQ_*` variable is an error (a typo must not be silently ignored),
//! except the few that belong to ferromq's tooling rather than to the broker, listed
//! in [`NOT_BROKER_CONFIG`]: the test harness exports those and the broker inherits
//! them.

use std::ffi::OsString;
use std::net::SocketAddr;

use crate::error::{ConfigError, Location, suggest};
use crate::keys::{KEYS, Raw, shorten};
use crate::load::{Builder, listener_name};
use crate::model::ListenerConfig;

const PREFIX: &str = "FERROMQ_";

/// The variable replacing the listener list.
pub const LISTEN_VAR: &str = "FERROMQ_LISTEN";

/// `FERROMQ_*` variables (exact names, or prefixes ending in `_`) that configure tools
/// around the broker, not the broker, and are therefore ignored:
/// `FERROMQ_BIN` and `FERROMQ_TEST_*` are read by `tests/python`, `FERROMQ_CTL_*` by
/// `ferromq ctl`.
pub const NOT_BROKER_CONFIG: &[&str] = &["FERROMQ_BIN", "FERROMQ_TEST_", "FERROMQ_CTL_"];

const LISTEN_EXPECTED: &str =
    "a comma-separated list of IP addresses with ports, such as \"0.0.0.0:1883,[::]:1883\"";

pub(crate) fn apply<I, K, V>(b: &mut Builder, env: I)
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    let mut vars: Vec<(String, OsString)> = env
        .into_iter()
        .map(|(k, v)| (k.into().to_string_lossy().into_owned(), v.into()))
        .filter(|(k, _)| k.starts_with(PREFIX) && !ignored(k))
        .collect();
    // The process environment has no order; sort so errors come out the same way
    // every time. The sort is stable, so with an injected list the last duplicate wins.
    vars.sort_by(|a, b| a.0.cmp(&b.0));

    for (var, value) in vars {
        let at = Location::env(&var);
        let spec = KEYS.iter().find(|k| k.env_var() == var);
        if var != LISTEN_VAR && spec.is_none() {
            let names: Vec<String> = KEYS.iter().map(|k| k.env_var()).collect();
            let suggestion = suggest(
                &var,
                names
                    .iter()
                    .map(String::as_str)
                    .chain(std::iter::once(LISTEN_VAR)),
            );
            b.errors
                .push(ConfigError::UnknownEnvVar { var, suggestion });
            continue;
        }
        let Some(value) = value.to_str() else {
            b.errors.push(ConfigError::InvalidValue {
                key: var,
                value: shorten(&value.to_string_lossy()),
                at,
                expected: "valid UTF-8 text".to_owned(),
            });
            continue;
        };
        match spec {
            Some(spec) => b.set(spec, Raw::Text(value), &var, at),
            None => listen(b, value, at),
        }
    }
}

fn ignored(var: &str) -> bool {
    NOT_BROKER_CONFIG.iter().any(|&n| {
        if n.ends_with('_') {
            var.starts_with(n)
        } else {
            var == n
        }
    })
}

fn listen(b: &mut Builder, value: &str, at: Location) {
    let mut listeners = Vec::new();
    let mut bad = false;
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<SocketAddr>() {
            Ok(addr) => listeners.push((
                ListenerConfig::mqtt(listener_name(listeners.len()), addr),
                at.clone(),
            )),
            Err(_) => {
                b.errors.push(ConfigError::InvalidValue {
                    key: LISTEN_VAR.to_owned(),
                    value: shorten(part),
                    at: at.clone(),
                    expected: LISTEN_EXPECTED.to_owned(),
                });
                bad = true;
            }
        }
    }
    if listeners.is_empty() {
        if !bad {
            b.errors.push(ConfigError::MissingValue {
                key: LISTEN_VAR.to_owned(),
                at,
                expected: LISTEN_EXPECTED.to_owned(),
            });
        }
        b.listeners_incomplete = true;
    } else {
        b.listeners_incomplete |= bad;
        b.replace_listeners(listeners);
    }
}
