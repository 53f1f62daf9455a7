//! Configuration errors: each names where the bad input came from (file and line,
//! environment variable, or command-line option) and what was expected.
//!
//! Loading collects every error instead of stopping at the first, and returns them
//! together as [`ConfigErrors`], whose `Display` prints one per line.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A config file, with the 1-based line when known.
    File {
        /// The path as given to the loader.
        path: PathBuf,
        /// 1-based line number.
        line: Option<usize>,
    },
    /// An environment variable.
    Env {
        /// The variable's name.
        var: String,
    },
    /// A command-line option.
    Cli {
        /// The option as typed, e.g. `--listen`.
        flag: String,
    },
}

impl Location {
    pub(crate) fn file(path: &std::path::Path, line: usize) -> Self {
        Self::File {
            path: path.to_path_buf(),
            line: Some(line),
        }
    }

    pub(crate) fn env(var: &str) -> Self {
        Self::Env {
            var: var.to_owned(),
        }
    }

    pub(crate) fn cli(flag: &str) -> Self {
        Self::Cli {
            flag: flag.to_owned(),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File {
                path,
                line: Some(line),
            } => write!(f, "{}:{line}", path.display()),
            Self::File { path, line: None } => write!(f, "{}", path.display()),
            Self::Env { var } => write!(f, "environment variable {var}"),
            Self::Cli { flag } => write!(f, "command-line option {flag}"),
        }
    }
}

/// A feature that a recognised directive needs and ferromq does not provide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsupportedFeature {
    /// A TLS option ferromq does not implement (`capath`, CRLs, PSK, ciphers), or an
    /// auth plugin (`password_file` and `acl_file` are implemented).
    TlsWebSocketsAuth,
    /// mosquitto.conf `include_dir`.
    IncludeDir,
    /// Mosquitto bridges (`connection` blocks).
    Bridge,
}

impl fmt::Display for UnsupportedFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TlsWebSocketsAuth => {
                " yet (this TLS option or auth plugin arrives in a later release); \
                 refusing to start rather than running without it"
            }
            Self::IncludeDir => ": put every directive in this one file",
            Self::Bridge => {
                ": ferromq does not bridge to other brokers; run the nodes as one \
                 ferromq cluster instead"
            }
        })
    }
}

/// One configuration problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The path as given.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The TOML file is not valid TOML. Reported alone for that file: after a syntax
    /// error nothing else in it can be trusted.
    #[error("invalid TOML at {at}: {message}")]
    TomlSyntax {
        /// File and line of the error.
        at: Location,
        /// The parser's message.
        message: String,
    },
    /// A TOML key that ferromq does not know.
    #[error("unknown key `{key}` at {at}{}", DidYouMean(.suggestion))]
    UnknownKey {
        /// Dotted path of the key, e.g. `mqtt.max_keepalive`.
        key: String,
        /// File and line.
        at: Location,
        /// The nearest known key, if one is close.
        suggestion: Option<String>,
    },
    /// A mosquitto.conf directive that ferromq does not know.
    #[error("unknown directive `{directive}` at {at}{}", DidYouMean(.suggestion))]
    UnknownDirective {
        /// The directive as written.
        directive: String,
        /// File and line.
        at: Location,
        /// The nearest known directive, if one is close.
        suggestion: Option<String>,
    },
    /// A `FERROMQ_*` environment variable that ferromq does not know.
    #[error("unknown environment variable {var}{}", DidYouMean(.suggestion))]
    UnknownEnvVar {
        /// The variable's name.
        var: String,
        /// The nearest known variable, if one is close.
        suggestion: Option<String>,
    },
    /// A value that does not parse as the key's type.
    #[error("invalid value `{value}` for {}: expected {expected}", Subject(.key, .at))]
    InvalidValue {
        /// The key or directive as the user wrote it.
        key: String,
        /// The offending text (shortened if long).
        value: String,
        /// Where it came from.
        at: Location,
        /// What would have been accepted.
        expected: String,
    },
    /// A key or directive given without its value.
    #[error("missing value for {}: expected {expected}", Subject(.key, .at))]
    MissingValue {
        /// The key or directive as the user wrote it.
        key: String,
        /// Where it came from.
        at: Location,
        /// What would have been accepted.
        expected: String,
    },
    /// A directive ferromq recognises but whose feature it does not provide; refusing
    /// is safer than running, say, without the TLS or password file the user asked for.
    #[error("`{directive}` at {at} is recognised but not supported{feature}")]
    Unsupported {
        /// The directive as written.
        directive: String,
        /// Where it came from.
        at: Location,
        /// The missing feature.
        feature: UnsupportedFeature,
    },
    /// The merged configuration breaks a rule (a bound, a uniqueness constraint).
    /// Checked after every source has been applied.
    #[error("{subject}{}: {problem}", From(.at))]
    Invalid {
        /// The key and value, e.g. "`mqtt.max_qos` = 3".
        subject: String,
        /// The source that last set the value, if it was not a default.
        at: Option<Location>,
        /// What is wrong and what is allowed.
        problem: String,
    },
}

/// Every error found while loading, in source order (file, environment, command line,
/// then validation). Never empty when returned by the loader.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// How many errors there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (never true for the loader's result).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    /// One error per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// " (did you mean `x`?)" or nothing.
struct DidYouMean<'a>(&'a Option<String>);

impl fmt::Display for DidYouMean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, " (did you mean `{s}`?)"),
            None => Ok(()),
        }
    }
}

/// "`key` at file:line", or just the variable / option, which already names the key.
struct Subject<'a>(&'a str, &'a Location);

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Location::File { .. } => write!(f, "`{}` at {}", self.0, self.1),
            Location::Env { .. } | Location::Cli { .. } => write!(f, "{}", self.1),
        }
    }
}

/// " (from X)" or nothing.
struct From<'a>(&'a Option<Location>);

impl fmt::Display for From<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(at) => write!(f, " (from {at})"),
            None => Ok(()),
        }
    }
}

/// The closest candidate to `word` by edit distance, if it is close enough to be a
/// plausible typo.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let word = word.to_ascii_lowercase();
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c.to_owned())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, &cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur.push(substitute.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_typos_only() {
        let known = ["max_keepalive", "max_qos", "persistence"];
        assert_eq!(
            suggest("max_keepalivee", known).as_deref(),
            Some("max_keepalive")
        );
        assert_eq!(
            suggest("persistance", known).as_deref(),
            Some("persistence")
        );
        assert_eq!(suggest("listener_port", known), None);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
