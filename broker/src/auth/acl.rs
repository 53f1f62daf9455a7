//! Access control lists in Mosquitto's `acl_file` format.
//!
//! ```text
//! # Rules before the first `user` line apply to anonymous clients.
//! topic read $SYS/#
//!
//! user alice
//! topic readwrite home/alice/#
//! topic deny home/alice/secret
//!
//! # Patterns apply to every client; %u is the username, %c the client id.
//! pattern write devices/%c/telemetry
//! pattern read users/%u/#
//! ```
//!
//! `topic [read|write|readwrite|deny] FILTER` (no access word means `readwrite`; the
//! filter is the rest of the line and may contain spaces), `user NAME`, `pattern
//! [access] FILTER`, `#` comments. Any other line makes the file invalid, reported with
//! its line number.
//!
//! Evaluation follows Mosquitto 2.x (`security_default.c`) exactly, for a topic and an
//! access (read or write):
//! 1. the client's own rules (its `user` block, or the anonymous block): any matching
//!    `deny` refuses; then the first matching rule that grants the access allows;
//! 2. then the patterns, after refusing outright a client whose username or client id
//!    contains `+` or `#` (it could otherwise widen a pattern): matching `deny`
//!    refuses, a matching grant allows; a pattern using `%u` is skipped for a client
//!    without a username;
//! 3. nothing matched: denied.
//!
//! A topic starting with `$` is only matched by rules whose filter starts with `$`.
//!
//! Subscriptions are checked on their filter: refused if a `deny` rule covers the whole
//! filter (every topic it can match), allowed if some `read` rule can match at least one
//! of its topics, in the same order as above. So `#` may be subscribed with a `read`
//! rule for `a/#` only, and each message is then checked for `read` when it is
//! delivered (as Mosquitto does for wildcard subscriptions); retained messages too.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::auth::passwd::{LineProblem, Problems};

/// What a rule grants. `deny` grants nothing and refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Deny,
    Read,
    Write,
    ReadWrite,
}

impl Access {
    fn parse(word: &str) -> Option<Access> {
        match word {
            "deny" => Some(Access::Deny),
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "readwrite" => Some(Access::ReadWrite),
            _ => None,
        }
    }

    fn grants(self, op: Op) -> bool {
        matches!(
            (self, op),
            (Access::ReadWrite, _) | (Access::Read, Op::Read) | (Access::Write, Op::Write)
        )
    }
}

/// The access a check asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Receive messages on a topic (delivery, retained messages, subscribe).
    Read,
    /// Publish to a topic (PUBLISH, will messages).
    Write,
}

/// The client a check is for.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub username: Option<&'a str>,
    pub client_id: &'a str,
}

/// Rules of one block (a user, the anonymous clients, or the patterns), split so
/// denials are looked at first, as Mosquitto inserts them first.
#[derive(Debug, Default)]
struct Rules {
    deny: Vec<String>,
    grant: Vec<(Access, String)>,
}

impl Rules {
    fn push(&mut self, access: Access, filter: String) {
        match access {
            Access::Deny => self.deny.push(filter),
            _ => self.grant.push((access, filter)),
        }
    }
}

/// Outcome of one block of rules.
enum Verdict {
    Allow,
    Deny,
    NoMatch,
}

/// A parsed ACL file.
#[derive(Debug, Default)]
pub struct Acl {
    anonymous: Rules,
    users: HashMap<String, Rules>,
    patterns: Rules,
}

/// Why an ACL file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read acl_file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid acl_file {}: {}", path.display(), Problems(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<LineProblem>,
    },
}

impl Acl {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Acl::parse(&text).map_err(|problems| AclError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Parses a file's text; every bad line is reported.
    pub fn parse(text: &str) -> Result<Acl, Vec<LineProblem>> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut acl = Acl::default();
        let mut current: Option<String> = None;
        let mut problems = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let problem = |problem: String| LineProblem {
                line: i + 1,
                problem,
            };
            let (keyword, rest) = line
                .split_once(char::is_whitespace)
                .map_or((line, ""), |(k, r)| (k, r.trim()));
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        problems.push(problem("`user` without a name".to_owned()));
                    } else {
                        acl.users.entry(rest.to_owned()).or_default();
                        current = Some(rest.to_owned());
                    }
                }
                "topic" | "pattern" => match parse_rule(rest) {
                    Ok((access, filter)) => {
                        let rules = if keyword == "pattern" {
                            &mut acl.patterns
                        } else {
                            match &current {
                                Some(user) => acl.users.entry(user.clone()).or_default(),
                                None => &mut acl.anonymous,
                            }
                        };
                        rules.push(access, filter);
                    }
                    Err(e) => problems.push(problem(format!("`{keyword}`: {e}"))),
                },
                other => problems.push(problem(format!(
                    "unknown rule `{other}` (expected `user`, `topic` or `pattern`)"
                ))),
            }
        }
        if problems.is_empty() {
            Ok(acl)
        } else {
            Err(problems)
        }
    }

    /// Whether `subject` may `op` on the topic name `topic`.
    pub fn check(&self, subject: Subject<'_>, topic: &str, op: Op) -> bool {
        self.evaluate(
            subject,
            |rule| ferromq_topic::matches(rule, topic),
            |rule| ferromq_topic::matches(rule, topic),
            op,
        )
    }

    /// Whether `subject` may subscribe to `filter` (the part after `$share/{group}/`).
    pub fn check_subscribe(&self, subject: Subject<'_>, filter: &str) -> bool {
        self.evaluate(
            subject,
            |rule| covers(rule, filter),
            |rule| intersects(rule, filter),
            Op::Read,
        )
    }

    fn evaluate(
        &self,
        subject: Subject<'_>,
        denies: impl Fn(&str) -> bool,
        grants: impl Fn(&str) -> bool,
        op: Op,
    ) -> bool {
        let own = match subject.username {
            Some(user) => self.users.get(user),
            None => Some(&self.anonymous),
        };
        if let Some(rules) = own {
            match block(rules, op, &denies, &grants, None) {
                Verdict::Allow => return true,
                Verdict::Deny => return false,
                Verdict::NoMatch => {}
            }
        }
        if self.patterns.deny.is_empty() && self.patterns.grant.is_empty() {
            return false;
        }
        let dangerous = |s: &str| s.contains(['+', '#']);
        if subject.username.is_some_and(dangerous) || dangerous(subject.client_id) {
            return false;
        }
        matches!(
            block(&self.patterns, op, &denies, &grants, Some(subject)),
            Verdict::Allow
        )
    }

    /// Users with a `user` block (for the reload log line).
    pub fn user_count(&self) -> usize {
        self.users.len()
    }
}

/// One block's verdict; `patterns_for` substitutes `%c` / `%u` for that client.
fn block(
    rules: &Rules,
    op: Op,
    denies: &impl Fn(&str) -> bool,
    grants: &impl Fn(&str) -> bool,
    patterns_for: Option<Subject<'_>>,
) -> Verdict {
    for rule in &rules.deny {
        if let Some(rule) = resolve(rule, patterns_for)
            && denies(&rule)
        {
            return Verdict::Deny;
        }
    }
    for (access, rule) in &rules.grant {
        if access.grants(op)
            && let Some(rule) = resolve(rule, patterns_for)
            && grants(&rule)
        {
            return Verdict::Allow;
        }
    }
    Verdict::NoMatch
}

/// A rule's filter for this client: `%c` and `%u` replaced in patterns; `None` for a
/// `%u` pattern and a client without a username (the rule does not apply).
fn resolve<'r>(rule: &'r str, patterns_for: Option<Subject<'_>>) -> Option<Cow<'r, str>> {
    let Some(subject) = patterns_for else {
        return Some(Cow::Borrowed(rule));
    };
    if !rule.contains('%') {
        return Some(Cow::Borrowed(rule));
    }
    // One pass, so a client id containing `%u` is not substituted again.
    let mut out = String::with_capacity(rule.len() + subject.client_id.len());
    let mut rest = rule;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        if let Some(t) = tail.strip_prefix('c') {
            out.push_str(subject.client_id);
            rest = t;
        } else if let Some(t) = tail.strip_prefix('u') {
            out.push_str(subject.username?);
            rest = t;
        } else {
            out.push('%');
            rest = tail;
        }
    }
    out.push_str(rest);
    Some(Cow::Owned(out))
}

/// `[access] FILTER`; the filter is the rest of the line.
fn parse_rule(rest: &str) -> Result<(Access, String), String> {
    let (first, tail) = rest
        .split_once(char::is_whitespace)
        .map_or((rest, ""), |(f, t)| (f, t.trim()));
    let (access, filter) = match Access::parse(first) {
        Some(access) => (access, tail),
        None => (Access::ReadWrite, rest),
    };
    if filter.is_empty() {
        return Err("missing topic filter".to_owned());
    }
    ferromq_topic::validate_topic_filter(filter)
        .map_err(|e| format!("invalid topic filter `{filter}`: {e}"))?;
    Ok((access, filter.to_owned()))
}

/// Whether every topic `sub` can match is matched by `rule` (both valid filters).
pub fn covers(rule: &str, sub: &str) -> bool {
    if rule.starts_with('$') != sub.starts_with('$') {
        return false;
    }
    let mut r = rule.split('/');
    let mut s = sub.split('/');
    loop {
        match (r.next(), s.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
            (Some("+"), Some(level)) => {
                if level == "#" {
                    return false;
                }
            }
            (Some(a), Some(b)) => {
                if b == "+" || b == "#" || a != b {
                    return false;
                }
            }
        }
    }
}

/// Whether some topic is matched by both filters.
pub fn intersects(a: &str, b: &str) -> bool {
    if a.starts_with('$') != b.starts_with('$') {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
            (Some(p), Some(q)) => {
                if p != "+" && q != "+" && p != q {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn anon(id: &str) -> Subject<'_> {
        Subject {
            username: None,
            client_id: id,
        }
    }

    fn user<'a>(name: &'a str, id: &'a str) -> Subject<'a> {
        Subject {
            username: Some(name),
            client_id: id,
        }
    }

    const FILE: &str = "\
# anonymous clients
topic read public/#
topic deny public/secret

user alice
topic readwrite home/alice/#
topic deny home/alice/locked
topic write drop box
topic read $SYS/#

user bob
topic home/bob/#

pattern write devices/%c/telemetry
pattern read users/%u/inbox/#
pattern deny users/%u/inbox/blocked
";

    #[test]
    fn anonymous_rules_come_before_the_first_user() {
        let acl = Acl::parse(FILE).unwrap();
        let a = anon("c1");
        assert!(acl.check(a, "public/news", Op::Read));
        assert!(!acl.check(a, "public/news", Op::Write));
        assert!(!acl.check(a, "public/secret", Op::Read), "deny wins");
        assert!(!acl.check(a, "home/alice/x", Op::Read));
        // Patterns with %c apply to anonymous clients; %u ones do not.
        assert!(acl.check(a, "devices/c1/telemetry", Op::Write));
        assert!(!acl.check(a, "devices/c2/telemetry", Op::Write));
    }

    #[test]
    fn user_blocks_deny_first_and_access_kinds() {
        let acl = Acl::parse(FILE).unwrap();
        let alice = user("alice", "a1");
        assert!(acl.check(alice, "home/alice/kitchen", Op::Write));
        assert!(
            acl.check(alice, "home/alice", Op::Read),
            "# matches the parent"
        );
        assert!(!acl.check(alice, "home/alice/locked", Op::Write));
        assert!(
            acl.check(alice, "drop box", Op::Write),
            "topics may contain spaces"
        );
        assert!(!acl.check(alice, "drop box", Op::Read));
        assert!(!acl.check(alice, "home/bob/x", Op::Read));
        assert!(acl.check(alice, "$SYS/broker/uptime", Op::Read));
        // No access word: readwrite.
        assert!(acl.check(user("bob", "b"), "home/bob/x", Op::Write));
        // A user without a block only has the patterns.
        let carol = user("carol", "c9");
        assert!(acl.check(carol, "users/carol/inbox/1", Op::Read));
        assert!(!acl.check(carol, "users/carol/inbox/blocked", Op::Read));
        assert!(!acl.check(carol, "users/dave/inbox/1", Op::Read));
        assert!(acl.check(carol, "devices/c9/telemetry", Op::Write));
        assert!(
            !acl.check(carol, "public/news", Op::Read),
            "anonymous rules are not hers"
        );
    }

    #[test]
    fn dollar_topics_need_dollar_rules() {
        let acl = Acl::parse("topic readwrite #\n").unwrap();
        assert!(acl.check(anon("x"), "a/b", Op::Read));
        assert!(!acl.check(anon("x"), "$SYS/uptime", Op::Read));
        assert!(!acl.check_subscribe(anon("x"), "$SYS/#"));
    }

    #[test]
    fn wildcard_identities_are_refused_by_patterns() {
        let acl = Acl::parse("pattern readwrite clients/%c/#\n").unwrap();
        assert!(acl.check(anon("ok"), "clients/ok/x", Op::Write));
        assert!(!acl.check(anon("a+"), "clients/a+/x", Op::Write));
        assert!(!acl.check(user("#", "ok"), "clients/ok/x", Op::Write));
    }

    #[test]
    fn subscribe_checks_the_filter() {
        let acl = Acl::parse("topic deny test/nosubscribe\ntopic readwrite #\n").unwrap();
        let a = anon("c");
        assert!(!acl.check_subscribe(a, "test/nosubscribe"));
        assert!(
            acl.check_subscribe(a, "test/+"),
            "partly allowed: checked on delivery"
        );
        assert!(acl.check_subscribe(a, "#"));
        assert!(!acl.check(a, "test/nosubscribe", Op::Read));

        let acl = Acl::parse("topic read a/#\ntopic deny a/b/#\n").unwrap();
        assert!(acl.check_subscribe(a, "#"));
        assert!(acl.check_subscribe(a, "a/+"));
        assert!(!acl.check_subscribe(a, "a/b/c"));
        assert!(!acl.check_subscribe(a, "a/b/#"));
        assert!(!acl.check_subscribe(a, "x/#"));
        assert!(
            !acl.check_subscribe(user("u", "c"), "a/x"),
            "no rules for u"
        );
    }

    #[test]
    fn filter_relations() {
        for (rule, sub) in [
            ("#", "a/+/#"),
            ("a/+", "a/b"),
            ("a/#", "a"),
            ("a/+/c", "a/+/c"),
        ] {
            assert!(covers(rule, sub), "{rule} covers {sub}");
        }
        for (rule, sub) in [
            ("a/b", "a/+"),
            ("a/+", "a/#"),
            ("a", "a/#"),
            ("#", "$SYS/x"),
        ] {
            assert!(!covers(rule, sub), "{rule} does not cover {sub}");
        }
        for (x, y) in [
            ("a/+", "+/b"),
            ("#", "x/y"),
            ("a/b", "a/#"),
            ("a/+/c", "a/b/+"),
        ] {
            assert!(intersects(x, y) && intersects(y, x), "{x} meets {y}");
        }
        for (x, y) in [
            ("a/b", "a/c"),
            ("a/+", "a"),
            ("$SYS/#", "#"),
            ("a/b/c", "+/+"),
        ] {
            assert!(!intersects(x, y), "{x} misses {y}");
        }
    }

    #[test]
    fn bad_lines_are_reported_with_their_numbers() {
        let problems =
            Acl::parse("topic read\nuser\ntopic read a/#/b\nfrobnicate x\ntopic ok\n").unwrap_err();
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [1, 2, 3, 4], "{problems:#?}");
        assert!(problems[0].problem.contains("missing topic filter"));
        assert!(problems[3].problem.contains("unknown rule `frobnicate`"));
    }
}
