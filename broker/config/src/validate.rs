//! Whole-config validation, run once after every layer has been applied, so a bound
//! broken by the file but fixed by the environment is not an error, and every broken
//! rule is reported together (nats-server `validateMQTTOptions`).

use std::net::SocketAddr;

use crate::error::{ConfigError, ConfigErrors, Location};
use crate::keys;
use crate::load::Origins;
use crate::model::{Config, ListenerConfig, MAX_PACKET_SIZE_LIMIT};

impl Config {
    /// Checks every rule the loader checks, for a `Config` built in code.
    ///
    /// # Errors
    /// Every broken rule; messages name keys but no sources.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        check(self, &Origins::default(), false, &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

pub(crate) fn check(
    config: &Config,
    origins: &Origins,
    listeners_incomplete: bool,
    errors: &mut Vec<ConfigError>,
) {
    let mut v = Validator {
        config,
        origins,
        errors,
    };
    v.listeners(listeners_incomplete);

    let m = &config.mqtt;
    v.rule(
        "mqtt.max_keepalive",
        m.max_keepalive >= 1,
        "must be from 1 to 65535 seconds: it caps the keep-alive clients may ask for",
    );
    v.rule(
        "mqtt.max_inflight_messages",
        m.max_inflight_messages >= 1,
        "must be at least 1: it is each client's window of unacknowledged QoS 1/2 deliveries",
    );
    v.rule(
        "mqtt.receive_maximum",
        m.receive_maximum >= 1,
        "must be at least 1: MQTT 5 forbids a Receive Maximum of 0 (MQTT 5 §3.2.2.3.3)",
    );
    v.rule(
        "mqtt.max_queued_messages",
        m.max_queued_messages >= 1,
        "must be at least 1: every session queue is bounded",
    );
    v.rule(
        "mqtt.max_queued_bytes",
        m.max_queued_bytes >= 1,
        "must be at least 1: every session queue is bounded",
    );
    v.rule(
        "mqtt.max_packet_size",
        (1..=MAX_PACKET_SIZE_LIMIT).contains(&m.max_packet_size),
        "must be from 1 to 268435460, the largest packet MQTT can encode (MQTT 5 §2.1.4)",
    );
    v.rule("mqtt.max_qos", m.max_qos <= 2, "must be 0, 1 or 2");
    v.rule(
        "mqtt.connect_timeout",
        !m.connect_timeout.is_zero(),
        "must be longer than zero, or no client could ever connect",
    );
    v.rule(
        "mqtt.handshake_timeout",
        !m.handshake_timeout.is_zero(),
        "must be longer than zero, or no TLS or WebSocket client could ever connect",
    );
    v.rule(
        "mqtt.max_topic_levels",
        m.max_topic_levels >= 1,
        "must be at least 1",
    );
    v.rule(
        "mqtt.max_topic_length",
        (1..=65_535).contains(&m.max_topic_length),
        "must be from 1 to 65535 bytes, the longest topic MQTT can encode",
    );
    let a = &config.auth;
    v.rule(
        "auth.acl_subscribe_failure_code",
        matches!(a.acl_subscribe_failure_code, 0x80 | 0x87),
        "must be 128 (0x80, Unspecified error) or 135 (0x87, Not authorized)",
    );
    v.rule(
        "auth.failure_window",
        a.failure_limit == 0 || !a.failure_window.is_zero(),
        "must be longer than zero while auth.failure_limit is set",
    );
    let l = &config.limits;
    v.rule(
        "limits.max_subscriptions_per_client",
        l.max_subscriptions_per_client >= 1,
        "must be at least 1: every session's subscriptions are bounded",
    );
    v.rule(
        "limits.retained_max_bytes",
        l.retained_max_bytes >= 1,
        "must be at least 1: the retained store is bounded",
    );
    v.rule(
        "persistence.path",
        !config.persistence.enabled || !config.persistence.path.as_os_str().is_empty(),
        "must not be empty while persistence is enabled",
    );
    v.rule(
        "http.token",
        config
            .http
            .token
            .as_deref()
            .is_none_or(|t| t.bytes().all(|b| b.is_ascii_graphic())),
        "must be printable ASCII without spaces: it is sent in an HTTP header",
    );
    v.rule(
        "persistence.queue_memory_window",
        config.persistence.queue_memory_window >= 1,
        "must be at least 1: the connection sends from the in-memory part of a queue",
    );
    let c = &config.cluster;
    v.rule(
        "cluster.enabled",
        !c.enabled || config.persistence.enabled,
        "needs persistence.enabled = true: the Raft log and state live in the data directory",
    );
    v.rule(
        "cluster.voters",
        (1..=9).contains(&c.voters),
        "must be from 1 to 9 (3 or 5 in practice): more voters make every commit slower",
    );
    v.rule(
        "cluster.forward_queue",
        c.forward_queue >= 1,
        "must be at least 1: every peer's forward queue is bounded",
    );
    let tls_set = [&c.ca_file, &c.cert_file, &c.key_file]
        .iter()
        .filter(|f| f.is_some())
        .count();
    v.rule(
        "cluster.ca_file",
        tls_set == 0 || tls_set == 3,
        "cluster.ca_file, cluster.cert_file and cluster.key_file go together: set all three \
         for mutual TLS on the cluster port, or none",
    );
    v.rule(
        "cluster.advertise",
        c.advertise.is_empty()
            || c.advertise
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
        "must be host:port (e.g. ferromq-0.ferromq-headless:7946) or empty",
    );
    v.rule(
        "cluster.seeds",
        c.seed_list().iter().all(|s| {
            s.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        }),
        "must be a comma-separated list of host:port",
    );
    v.rule(
        "log.level",
        log_level_ok(&config.log.level),
        "must be a level (error, warn, info, debug, trace, off) or a tracing filter \
         such as \"info,ferromq=debug\"",
    );
}

struct Validator<'a> {
    config: &'a Config,
    origins: &'a Origins,
    errors: &'a mut Vec<ConfigError>,
}

impl Validator<'_> {
    /// Reports `key` with its current value unless `ok`.
    fn rule(&mut self, key: &str, ok: bool, problem: &str) {
        if ok {
            return;
        }
        let value = keys::by_path(key).map_or_else(String::new, |k| (k.render)(self.config));
        self.errors.push(ConfigError::Invalid {
            subject: format!("`{key}` = {value}"),
            at: self.origins.keys.get(key).cloned(),
            problem: problem.to_owned(),
        });
    }

    fn listener_at(&self, i: usize) -> Option<Location> {
        self.origins.listeners.get(i).cloned().flatten()
    }

    fn listeners(&mut self, incomplete: bool) {
        let listeners = &self.config.listeners;
        if listeners.is_empty() && !incomplete {
            self.errors.push(ConfigError::Invalid {
                subject: "no listeners".to_owned(),
                at: None,
                problem: "at least one is required: add a [[listener]] section, a \
                          `listener PORT` line, FERROMQ_LISTEN or --listen"
                    .to_owned(),
            });
        }
        for (i, l) in listeners.iter().enumerate() {
            let at = self.listener_at(i);
            if l.name.trim().is_empty() {
                self.errors.push(ConfigError::Invalid {
                    subject: format!("listener #{} ({})", i + 1, l.bind),
                    at: at.clone(),
                    problem: "`name` must not be empty".to_owned(),
                });
            }
            if l.max_connections == Some(0) {
                self.errors.push(ConfigError::Invalid {
                    subject: format!("listener `{}` max_connections = 0", l.name),
                    at: at.clone(),
                    problem: "must be at least 1 (leave it out for no per-listener limit)"
                        .to_owned(),
                });
            }
            for problem in transport_problems(l) {
                self.errors.push(ConfigError::Invalid {
                    subject: format!("listener `{}` ({})", l.name, l.protocol),
                    at: at.clone(),
                    problem,
                });
            }
            for (j, earlier) in listeners[..i].iter().enumerate() {
                let earlier_at = self
                    .listener_at(j)
                    .map_or_else(String::new, |a| format!(", from {a}"));
                if !l.name.trim().is_empty() && l.name == earlier.name {
                    self.errors.push(ConfigError::Invalid {
                        subject: format!("listener name `{}`", l.name),
                        at: at.clone(),
                        problem: format!(
                            "already used by the listener on {}{earlier_at}",
                            earlier.bind
                        ),
                    });
                }
                if let Some(why) = bind_conflict(earlier.bind, l.bind) {
                    self.errors.push(ConfigError::Invalid {
                        subject: format!("listener `{}` bind = {}", l.name, l.bind),
                        at: at.clone(),
                        problem: format!(
                            "{why} listener `{}` ({}{earlier_at})",
                            earlier.name, earlier.bind
                        ),
                    });
                }
            }
        }
    }
}

/// What is wrong with a listener's TLS and WebSocket settings for its protocol. The
/// files themselves are read by the broker before it binds (the config stays pure).
fn transport_problems(l: &ListenerConfig) -> Vec<String> {
    let t = &l.tls;
    let mut problems = Vec::new();
    if l.protocol.is_tls() {
        for (key, file) in [("certfile", &t.certfile), ("keyfile", &t.keyfile)] {
            if file.is_none() {
                problems.push(format!(
                    "`{key}` is required on a TLS listener (a PEM file with the server's {})",
                    if key == "certfile" {
                        "certificate chain"
                    } else {
                        "private key"
                    }
                ));
            }
        }
        if t.require_certificate && t.cafile.is_none() {
            problems.push(
                "`require_certificate` needs `cafile`: the CA that client certificates must \
                 chain to"
                    .to_owned(),
            );
        }
        if t.use_identity_as_username && t.cafile.is_none() {
            problems.push(
                "`use_identity_as_username` needs `cafile` (and usually `require_certificate \
                 true`): without it no client certificate can be verified"
                    .to_owned(),
            );
        }
    } else {
        let set: Vec<&str> = [
            ("cafile", t.cafile.is_some()),
            ("certfile", t.certfile.is_some()),
            ("keyfile", t.keyfile.is_some()),
            ("require_certificate", t.require_certificate),
            ("use_identity_as_username", t.use_identity_as_username),
        ]
        .into_iter()
        .filter_map(|(k, on)| on.then_some(k))
        .collect();
        if !set.is_empty() {
            problems.push(format!(
                "{} set on a listener without TLS: use protocol `mqtts` or `wss`",
                set.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if l.protocol.is_websocket() && !l.ws_path.starts_with('/') {
        problems.push(format!(
            "WebSocket `path` `{}` must start with `/`",
            l.ws_path
        ));
    }
    problems
}

/// Why two listeners cannot both bind, if they cannot. Port 0 (ephemeral) never
/// conflicts. A wildcard address covers every address of its family on that port.
/// (Whether `[::]` also covers IPv4 depends on the OS; that is left to bind time.)
fn bind_conflict(a: SocketAddr, b: SocketAddr) -> Option<&'static str> {
    if a.port() != b.port() || a.port() == 0 {
        None
    } else if a.ip() == b.ip() {
        Some("same address as")
    } else if a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified()) {
        Some("overlaps (a wildcard address covers every interface)")
    } else {
        None
    }
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

fn is_level(s: &str) -> bool {
    LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s.trim()))
}

/// A level, or a comma-separated tracing `EnvFilter` list whose directives each end
/// in `=LEVEL` or name a path (`a::b`) or span filter (`[...]`). A bare word that is
/// not a level is refused: `EnvFilter` would read `debgu` as a target name and
/// silently log nothing.
fn log_level_ok(spec: &str) -> bool {
    !spec.trim().is_empty()
        && spec.split(',').all(|directive| {
            let directive = directive.trim();
            match directive.rsplit_once('=') {
                Some((target, level)) => !target.trim().is_empty() && is_level(level),
                None => is_level(directive) || directive.contains("::") || directive.contains('['),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "info,ferromq=debug",
            "ferromq::session",
            "a[span{x=1}]=trace",
        ] {
            assert!(log_level_ok(ok), "{ok}");
        }
        for bad in ["", "debgu", "info,", "=debug", "ferromq=loud", "verbose"] {
            assert!(!log_level_ok(bad), "{bad}");
        }
    }

    #[test]
    fn bind_conflicts() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("test address");
        assert!(bind_conflict(a("0.0.0.0:1883"), a("0.0.0.0:1883")).is_some());
        assert!(bind_conflict(a("0.0.0.0:1883"), a("127.0.0.1:1883")).is_some());
        assert!(bind_conflict(a("127.0.0.1:1883"), a("[::]:1883")).is_none());
        assert!(bind_conflict(a("127.0.0.1:1883"), a("127.0.0.2:1883")).is_none());
        assert!(bind_conflict(a("127.0.0.1:0"), a("127.0.0.1:0")).is_none());
        assert!(bind_conflict(a("127.0.0.1:1883"), a("127.0.0.1:1884")).is_none());
    }
}
