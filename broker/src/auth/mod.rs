//! Authentication and authorisation, with Mosquitto's file formats so a Mosquitto
//! setup carries over unchanged.
//!
//! [`Security`] lives in the [`Broker`](crate::Broker) and answers four questions:
//! may this CONNECT log in ([`Security::login`], [`Security::authenticate`]), may this
//! client publish to a topic ([`Security::can_publish`]), subscribe to a filter
//! ([`Security::can_subscribe`]), receive a message on a topic
//! ([`Security::can_read`]).
//!
//! # Auth flow (CONNECT)
//! 1. The source address is blocked (too many failed logins): refused at once, CONNACK
//!    0x9F (v5) / 0x05 (3.1.1), without looking at the credentials.
//! 2. No username: accepted if the listener allows anonymous clients, else 0x87 / 0x05.
//! 3. A username and a password file: the password must verify (constant time), else
//!    0x86 / 0x05. A username without a password file: accepted unverified when
//!    anonymous access is allowed (as Mosquitto does), else 0x86 / 0x05.
//! 4. Each failure counts against the source address: `auth.failure_limit` failures
//!    within `auth.failure_window` block it for `auth.failure_block`. The table of
//!    addresses is bounded ([`crate::limits::AddressTable`]).
//!
//! # Files and reloading
//! Both files are read at start ([`Security::load`]: a missing, unreadable or invalid
//! file is an error naming it, and the broker exits 78) and on SIGHUP
//! ([`spawn_reloader`]): a file that fails to load then is logged with the reason and
//! the previous content stays in force. Checks take a snapshot (`Arc`) of the current
//! tables, so a reload never blocks a check for long and never mixes two versions.
//!
//! With no ACL file every check answers yes without touching a lock, so brokers
//! without ACLs pay nothing per message.
//!
//! # Layout
//! - [`passwd`]: `mosquitto_passwd` files (`$7$` PBKDF2-SHA512, `$6$` salted SHA-512).
//! - [`acl`]: `acl_file` parsing and Mosquitto's evaluation order.

pub mod acl;
pub mod passwd;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferromq_codec::ReasonCode;
use ferromq_config::Config;
use parking_lot::{Mutex, RwLock};

use crate::limits::{AddressTable, MAX_TRACKED_ADDRESSES, Tracked};
pub use acl::{Acl, AclError, Op, Subject};
pub use passwd::{PasswdError, PasswordTable};

/// Who a connection logged in as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The CONNECT username (verified when a password file is configured); for ACL
    /// `user` blocks and `%u`.
    pub username: Option<ferromq_codec::ByteString>,
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    /// The source address is blocked after too many failures.
    Blocked,
    /// Unknown user or wrong password (or a username nobody can verify).
    BadCredentials,
    /// No username where anonymous clients are not allowed.
    NotAuthorized,
}

impl LoginError {
    /// The MQTT 5 CONNACK reason code.
    pub fn reason_code(self) -> ReasonCode {
        match self {
            LoginError::Blocked => ReasonCode::CONNECTION_RATE_EXCEEDED,
            LoginError::BadCredentials => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            LoginError::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
        }
    }

    /// The MQTT 3.1.1 CONNACK return code: 0x05 (Not authorized) for all three, as
    /// Mosquitto answers a failed login.
    pub fn v3_return_code(self) -> ReasonCode {
        ReasonCode::V3_NOT_AUTHORIZED
    }
}

/// Why [`Security::load`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Passwd(#[from] PasswdError),
    #[error(transparent)]
    Acl(#[from] AclError),
}

/// Failed logins of one source address.
#[derive(Debug)]
struct Failures {
    window_start: Instant,
    count: u32,
    blocked_until: Option<Instant>,
    last_seen: Instant,
    window: Duration,
}

impl Tracked for Failures {
    fn is_stale(&mut self, now: Instant) -> bool {
        self.blocked_until.is_none_or(|t| now >= t)
            && now.saturating_duration_since(self.window_start) >= self.window
    }
    fn last_seen(&self) -> Instant {
        self.last_seen
    }
}

/// What a reload did, for the log and the tests.
#[derive(Debug, Default)]
pub struct ReloadReport {
    pub errors: Vec<String>,
}

/// The broker's authentication and authorisation state.
#[derive(Debug)]
pub struct Security {
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    passwords: RwLock<Option<Arc<PasswordTable>>>,
    acl: RwLock<Option<Arc<Acl>>>,
    failures: Mutex<AddressTable<Failures>>,
    failure_limit: u32,
    failure_window: Duration,
    failure_block: Duration,
    subscribe_failure_code: ReasonCode,
}

impl Security {
    fn empty(config: &Config) -> Security {
        let a = &config.auth;
        Security {
            password_file: a.password_file.clone(),
            acl_file: a.acl_file.clone(),
            passwords: RwLock::new(None),
            acl: RwLock::new(None),
            failures: Mutex::new(AddressTable::new(MAX_TRACKED_ADDRESSES)),
            failure_limit: a.failure_limit,
            failure_window: a.failure_window,
            failure_block: a.failure_block,
            subscribe_failure_code: ReasonCode(a.acl_subscribe_failure_code),
        }
    }

    /// Reads the configured password and ACL files.
    ///
    /// # Errors
    /// The first file that is missing, unreadable or invalid, naming it (every bad
    /// line of it).
    pub fn load(config: &Config) -> Result<Security, SecurityError> {
        let s = Security::empty(config);
        if let Some(path) = &s.password_file {
            *s.passwords.write() = Some(Arc::new(PasswordTable::load(path)?));
        }
        if let Some(path) = &s.acl_file {
            *s.acl.write() = Some(Arc::new(Acl::load(path)?));
        }
        Ok(s)
    }

    /// [`Security::load`], or, if a file cannot be used, a state that refuses every
    /// username and denies every topic (fail closed), logging why. For brokers built
    /// in code; the binary refuses to start instead.
    pub fn load_or_fail_closed(config: &Config) -> Security {
        match Security::load(config) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}; refusing every login with a username and every topic");
                let s = Security::empty(config);
                if s.password_file.is_some() {
                    *s.passwords.write() = Some(Arc::new(PasswordTable::default()));
                }
                if s.acl_file.is_some() {
                    *s.acl.write() = Some(Arc::new(Acl::default()));
                }
                s
            }
        }
    }

    /// Re-reads both files (SIGHUP). A file that fails keeps its previous content in
    /// force; the report says why.
    pub fn reload(&self) -> ReloadReport {
        let mut report = ReloadReport::default();
        if let Some(path) = &self.password_file {
            match PasswordTable::load(path) {
                Ok(t) => {
                    tracing::info!(file = %path.display(), users = t.len(), "password_file reloaded");
                    *self.passwords.write() = Some(Arc::new(t));
                }
                Err(e) => {
                    tracing::error!("{e}; keeping the previous password_file content");
                    report.errors.push(e.to_string());
                }
            }
        }
        if let Some(path) = &self.acl_file {
            match Acl::load(path) {
                Ok(a) => {
                    tracing::info!(file = %path.display(), users = a.user_count(), "acl_file reloaded");
                    *self.acl.write() = Some(Arc::new(a));
                }
                Err(e) => {
                    tracing::error!("{e}; keeping the previous acl_file content");
                    report.errors.push(e.to_string());
                }
            }
        }
        report
    }

    /// Checks credentials without the per-address failure accounting of
    /// [`Security::login`]. `anonymous_allowed` is the listener's setting.
    pub fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        anonymous_allowed: bool,
    ) -> Result<Identity, LoginError> {
        let Some(username) = username else {
            return if anonymous_allowed {
                Ok(Identity::default())
            } else {
                Err(LoginError::NotAuthorized)
            };
        };
        let table = self.passwords.read().clone();
        let ok = match table {
            Some(table) => table.verify(username, password.unwrap_or_default()),
            // No password file: nobody can be verified; Mosquitto then takes the
            // username as given where anonymous clients are allowed anyway.
            None => anonymous_allowed,
        };
        if ok {
            Ok(Identity {
                username: Some(username.into()),
            })
        } else {
            Err(LoginError::BadCredentials)
        }
    }

    /// The whole CONNECT decision for a client from `ip`: refused at once while the
    /// address is blocked; otherwise [`Security::authenticate`], counting a failure
    /// against the address.
    pub fn login(
        &self,
        ip: IpAddr,
        username: Option<&str>,
        password: Option<&[u8]>,
        anonymous_allowed: bool,
    ) -> Result<Identity, LoginError> {
        let now = Instant::now();
        if self.failure_limit > 0
            && let Some(f) = self.failures.lock().get_mut(&ip)
            && f.blocked_until.is_some_and(|t| now < t)
        {
            f.last_seen = now;
            return Err(LoginError::Blocked);
        }
        let result = self.authenticate(username, password, anonymous_allowed);
        if result.is_err() && self.failure_limit > 0 {
            self.record_failure(ip, now);
        }
        result
    }

    fn record_failure(&self, ip: IpAddr, now: Instant) {
        let window = self.failure_window;
        let mut table = self.failures.lock();
        let f = table.entry(ip, now, || Failures {
            window_start: now,
            count: 0,
            blocked_until: None,
            last_seen: now,
            window,
        });
        f.last_seen = now;
        if now.saturating_duration_since(f.window_start) >= window {
            f.window_start = now;
            f.count = 0;
        }
        f.count += 1;
        if f.count >= self.failure_limit {
            f.blocked_until = Some(now + self.failure_block);
            f.count = 0;
            f.window_start = now;
            tracing::warn!(
                addr = %ip,
                failures = self.failure_limit,
                block_secs = self.failure_block.as_secs(),
                "failed logins from this address reached auth.failure_limit: refusing its CONNECTs"
            );
        }
    }

    /// The ACL in force, `None` when no ACL file is configured (everything allowed).
    /// A snapshot: take it once per batch of checks.
    pub fn acl(&self) -> Option<Arc<Acl>> {
        self.acl_file.as_ref()?;
        self.acl.read().clone()
    }

    /// Whether an ACL file is configured (checks are needed at all).
    pub fn acl_enabled(&self) -> bool {
        self.acl_file.is_some()
    }

    /// Whether `subject` may publish to `topic`.
    pub fn can_publish(&self, subject: Subject<'_>, topic: &str) -> bool {
        self.acl()
            .is_none_or(|acl| acl.check(subject, topic, Op::Write))
    }

    /// Whether `subject` may receive messages on `topic`.
    pub fn can_read(&self, subject: Subject<'_>, topic: &str) -> bool {
        self.acl()
            .is_none_or(|acl| acl.check(subject, topic, Op::Read))
    }

    /// Whether `subject` may subscribe to `filter` (without `$share/{group}/`).
    pub fn can_subscribe(&self, subject: Subject<'_>, filter: &str) -> bool {
        self.acl()
            .is_none_or(|acl| acl.check_subscribe(subject, filter))
    }

    /// The v5 SUBACK code for a subscription the ACL refuses
    /// (`auth.acl_subscribe_failure_code`).
    pub fn subscribe_failure_code(&self) -> ReasonCode {
        self.subscribe_failure_code
    }
}

/// Re-reads the password and ACL files on every SIGHUP until the broker shuts down.
pub fn spawn_reloader(broker: &crate::Broker) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let a = &broker.config().auth;
        if a.password_file.is_none() && a.acl_file.is_none() {
            return;
        }
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: password_file and acl_file will not be reloaded");
                return;
            }
        };
        let b = broker.clone();
        broker.tasks().spawn(async move {
            loop {
                tokio::select! {
                    got = hangup.recv() => {
                        if got.is_none() {
                            return;
                        }
                        tracing::info!("SIGHUP: reloading password_file and acl_file");
                        b.security().reload();
                    }
                    _ = b.shutdown_token().cancelled() => return,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use passwd::PasswordHash;

    fn config_with(dir: &std::path::Path, pw: Option<&str>, acl: Option<&str>) -> Config {
        let mut c = Config::default();
        if let Some(text) = pw {
            let p = dir.join("passwd");
            std::fs::write(&p, text).unwrap();
            c.auth.password_file = Some(p);
        }
        if let Some(text) = acl {
            let p = dir.join("acl");
            std::fs::write(&p, text).unwrap();
            c.auth.acl_file = Some(p);
        }
        c
    }

    fn line(user: &str, pass: &str) -> String {
        format!(
            "{user}:{}\n",
            PasswordHash::pbkdf2(pass.as_bytes(), b"salt", 101)
        )
    }

    #[test]
    fn login_rules() {
        let dir = tempfile::tempdir().unwrap();
        let s = Security::load(&config_with(dir.path(), Some(&line("u", "p")), None)).unwrap();
        let ok = s.authenticate(Some("u"), Some(b"p"), false).unwrap();
        assert_eq!(ok.username.as_deref(), Some("u"));
        assert_eq!(
            s.authenticate(Some("u"), Some(b"x"), true),
            Err(LoginError::BadCredentials)
        );
        assert_eq!(
            s.authenticate(Some("u"), None, true),
            Err(LoginError::BadCredentials)
        );
        assert_eq!(
            s.authenticate(None, None, false),
            Err(LoginError::NotAuthorized)
        );
        assert!(s.authenticate(None, None, true).is_ok());

        // No password file: a username is taken as given where anonymous is allowed.
        let open = Security::load(&Config::default()).unwrap();
        assert!(open.authenticate(Some("any"), None, true).is_ok());
        assert_eq!(
            open.authenticate(Some("any"), None, false),
            Err(LoginError::BadCredentials)
        );
    }

    #[test]
    fn failed_logins_block_the_address() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config_with(dir.path(), Some(&line("u", "p")), None);
        c.auth.failure_limit = 3;
        let s = Security::load(&c).unwrap();
        let bad: IpAddr = "10.1.1.1".parse().unwrap();
        let good: IpAddr = "10.1.1.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(
                s.login(bad, Some("u"), Some(b"wrong"), false),
                Err(LoginError::BadCredentials)
            );
        }
        // Blocked now, even with the right password; other addresses are not.
        assert_eq!(
            s.login(bad, Some("u"), Some(b"p"), false),
            Err(LoginError::Blocked)
        );
        assert!(s.login(good, Some("u"), Some(b"p"), false).is_ok());
    }

    #[test]
    fn missing_files_are_named_and_reload_keeps_the_old_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.auth.acl_file = Some(dir.path().join("nope.acl"));
        let e = Security::load(&c).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read acl_file ") && e.contains("nope.acl"),
            "{e}"
        );

        let c = config_with(dir.path(), Some(&line("u", "p")), Some("topic read a/#\n"));
        let s = Security::load(&c).unwrap();
        let who = Subject {
            username: None,
            client_id: "c",
        };
        assert!(s.can_read(who, "a/b") && !s.can_publish(who, "a/b"));
        // Break both files: the old content stays.
        std::fs::write(dir.path().join("passwd"), "u:plain\n").unwrap();
        std::fs::write(dir.path().join("acl"), "topic read a/#\nbogus\n").unwrap();
        let report = s.reload();
        assert_eq!(report.errors.len(), 2, "{report:?}");
        assert!(report.errors[0].contains("line 1"), "{report:?}");
        assert!(report.errors[1].contains("line 2"), "{report:?}");
        assert!(s.authenticate(Some("u"), Some(b"p"), false).is_ok());
        assert!(s.can_read(who, "a/b"));
        // Fix them: the new content applies.
        std::fs::write(dir.path().join("passwd"), line("v", "q")).unwrap();
        std::fs::write(dir.path().join("acl"), "topic write a/#\n").unwrap();
        assert!(s.reload().errors.is_empty());
        assert!(s.authenticate(Some("u"), Some(b"p"), false).is_err());
        assert!(s.authenticate(Some("v"), Some(b"q"), false).is_ok());
        assert!(!s.can_read(who, "a/b") && s.can_publish(who, "a/b"));
    }

    #[test]
    fn no_acl_file_allows_everything() {
        let s = Security::load(&Config::default()).unwrap();
        let who = Subject {
            username: Some("x"),
            client_id: "c",
        };
        assert!(s.acl().is_none());
        assert!(s.can_publish(who, "$SYS/x") && s.can_subscribe(who, "#"));
    }
}
