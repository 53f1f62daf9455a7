//! Password files in the format `mosquitto_passwd` writes, so a Mosquitto user's
//! existing file works unchanged.
//!
//! One `username:hash` per line; blank lines and lines starting with `#` are skipped.
//! Two hash formats are understood:
//! - `$7$ITERATIONS$SALT$HASH`: PBKDF2-HMAC-SHA512 (Mosquitto 2.x, 101 iterations by
//!   default, 12-byte salt, 64-byte hash);
//! - `$6$SALT$HASH`: SHA-512 over the password followed by the salt (Mosquitto 1.x).
//!
//! Salt and hash are standard base64. Any other line (plain-text passwords, unknown
//! `$N$` formats, bad base64) makes the whole file invalid and every such line is
//! reported with its number: a half-read password file would lock some users out
//! silently. Comparison is constant-time (`subtle`), and an unknown user costs the
//! same PBKDF2 work as a known one, so timing tells nothing about which names exist.
//!
//! RustCrypto only (`pbkdf2`, `hmac`, `sha2`): no OpenSSL or aws-lc in the build.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Standard base64, with or without `=` padding (Mosquitto writes it padded).
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Mosquitto 2.x's default PBKDF2 iteration count.
pub const DEFAULT_ITERATIONS: u32 = 101;

/// A stored password hash.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// `$6$`: SHA-512(password ‖ salt).
    SaltedSha512 { salt: Vec<u8>, hash: Vec<u8> },
}

impl fmt::Debug for PasswordHash {
    /// Never prints the hash or salt.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Pbkdf2Sha512 { iterations, .. } => {
                write!(f, "Pbkdf2Sha512 {{ iterations: {iterations}, .. }}")
            }
            PasswordHash::SaltedSha512 { .. } => f.write_str("SaltedSha512 { .. }"),
        }
    }
}

impl PasswordHash {
    /// Parses the part of a line after `username:`.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let parts: Vec<&str> = text.split('$').collect();
        match parts.as_slice() {
            ["", "7", iterations, salt, hash] => {
                let iterations: u32 = iterations
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| format!("bad PBKDF2 iteration count `{iterations}`"))?;
                Ok(PasswordHash::Pbkdf2Sha512 {
                    iterations,
                    salt: decode(salt, "salt")?,
                    hash: decode_hash(hash)?,
                })
            }
            ["", "6", salt, hash] => Ok(PasswordHash::SaltedSha512 {
                salt: decode(salt, "salt")?,
                hash: decode_hash(hash)?,
            }),
            ["", kind, ..] if !kind.is_empty() => Err(format!(
                "unknown hash format `${kind}$` (expected `$7$` PBKDF2-SHA512 or `$6$` salted \
                 SHA-512, as written by mosquitto_passwd)"
            )),
            _ => Err(
                "not a mosquitto_passwd hash (plain-text password? hash the file with \
                 `mosquitto_passwd -U FILE`)"
                    .to_owned(),
            ),
        }
    }

    /// A `$7$` hash of `password` with `salt`, as `mosquitto_passwd` would write it.
    pub fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> PasswordHash {
        let mut hash = vec![0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut hash);
        PasswordHash::Pbkdf2Sha512 {
            iterations,
            salt: salt.to_vec(),
            hash,
        }
    }

    /// A `$6$` hash, as `mosquitto_passwd` 1.x wrote it.
    pub fn salted_sha512(password: &[u8], salt: &[u8]) -> PasswordHash {
        PasswordHash::SaltedSha512 {
            salt: salt.to_vec(),
            hash: sha512(password, salt).to_vec(),
        }
    }

    /// Whether `password` matches, in time that depends only on the stored hash's
    /// parameters, never on how much of the password is right.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                out.ct_eq(hash).into()
            }
            PasswordHash::SaltedSha512 { salt, hash } => {
                let out = sha512(password, salt);
                out.as_slice().ct_eq(hash).into()
            }
        }
    }
}

impl fmt::Display for PasswordHash {
    /// The line format after `username:`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                B64.encode(salt),
                B64.encode(hash)
            ),
            PasswordHash::SaltedSha512 { salt, hash } => {
                write!(f, "$6${}${}", B64.encode(salt), B64.encode(hash))
            }
        }
    }
}

fn sha512(password: &[u8], salt: &[u8]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(password);
    h.update(salt);
    h.finalize().into()
}

fn decode(text: &str, what: &str) -> Result<Vec<u8>, String> {
    match B64.decode(text) {
        Ok(bytes) if !bytes.is_empty() => Ok(bytes),
        Ok(_) => Err(format!("empty {what}")),
        Err(e) => Err(format!("{what} is not valid base64: {e}")),
    }
}

fn decode_hash(text: &str) -> Result<Vec<u8>, String> {
    let hash = decode(text, "hash")?;
    if hash.len() == 64 {
        Ok(hash)
    } else {
        Err(format!(
            "hash is {} bytes; SHA-512 hashes are 64 bytes",
            hash.len()
        ))
    }
}

/// One bad line of a password file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProblem {
    /// 1-based line number.
    pub line: usize,
    pub problem: String,
}

/// Why a password file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    #[error("cannot read password_file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid password_file {}: {}", path.display(), Problems(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<LineProblem>,
    },
}

/// `line N: problem; line M: problem`.
pub(crate) struct Problems<'a>(pub &'a [LineProblem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "line {}: {}", p.line, p.problem)?;
        }
        Ok(())
    }
}

/// The users of a password file.
#[derive(Debug, Default)]
pub struct PasswordTable {
    users: HashMap<String, PasswordHash>,
    /// Verified against for unknown users, so they cost the same time.
    dummy: Option<PasswordHash>,
}

impl PasswordTable {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<PasswordTable, PasswdError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswdError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        PasswordTable::parse(&text).map_err(|problems| PasswdError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Parses a file's text; every bad line is reported.
    pub fn parse(text: &str) -> Result<PasswordTable, Vec<LineProblem>> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut users = HashMap::new();
        let mut problems = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end();
            if line.trim_start().is_empty() || line.starts_with('#') {
                continue;
            }
            let problem = |problem: String| LineProblem {
                line: i + 1,
                problem,
            };
            let Some((user, hash)) = line.split_once(':') else {
                problems.push(problem("expected `username:hash`".to_owned()));
                continue;
            };
            if user.is_empty() {
                problems.push(problem("empty username".to_owned()));
                continue;
            }
            match PasswordHash::parse(hash.trim()) {
                Ok(h) => {
                    // Mosquitto keeps one entry per name; the last line wins here.
                    users.insert(user.to_owned(), h);
                }
                Err(e) => problems.push(problem(format!("user `{user}`: {e}"))),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        // The dummy has the parameters of a real entry (the most common case is one
        // format for the whole file), so unknown and known users take as long.
        let dummy = users.values().next().map(|h| match h {
            PasswordHash::Pbkdf2Sha512 {
                iterations, salt, ..
            } => PasswordHash::pbkdf2(b"\0dummy", salt, *iterations),
            PasswordHash::SaltedSha512 { salt, .. } => {
                PasswordHash::salted_sha512(b"\0dummy", salt)
            }
        });
        Ok(PasswordTable { users, dummy })
    }

    /// Whether `username` exists and `password` is its password.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        match self.users.get(username) {
            Some(hash) => hash.verify(password),
            None => {
                if let Some(dummy) = &self.dummy {
                    let _ = dummy.verify(password);
                }
                false
            }
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Written by `mosquitto_passwd -c -b FILE alice secret` (Mosquitto 2.0.11).
    const MOSQUITTO_LINE: &str = "alice:$7$101$Ik4FIvZUVHxbngD8$jfa4HxpkSI8o6wjIuPURWNhVxUkbSnup3zLFoja7uhwOeT3Exf3ZwI//Cc/Iwg8isASbyb9qc7DLgJNEh9VSHA==";

    #[test]
    fn reads_a_mosquitto_passwd_line() {
        let t = PasswordTable::parse(MOSQUITTO_LINE).unwrap();
        assert_eq!(t.len(), 1);
        assert!(t.verify("alice", b"secret"));
        assert!(!t.verify("alice", b"secreT"));
        assert!(!t.verify("alice", b""));
        assert!(!t.verify("bob", b"secret"));
    }

    #[test]
    fn salted_sha512_lines_and_round_trips() {
        let h6 = PasswordHash::salted_sha512(b"pa:ss w", b"0123456789ab");
        let h7 = PasswordHash::pbkdf2(b"hunter2", b"saltsaltsalt", DEFAULT_ITERATIONS);
        let text = format!("# comment\n\ncarol:{h6}\r\ndave:{h7}\n");
        let t = PasswordTable::parse(&text).unwrap();
        assert!(t.verify("carol", b"pa:ss w"));
        assert!(!t.verify("carol", b"pa:ss"));
        assert!(t.verify("dave", b"hunter2"));
        assert_eq!(PasswordHash::parse(&h6.to_string()).unwrap(), h6);
        assert_eq!(PasswordHash::parse(&h7.to_string()).unwrap(), h7);
    }

    #[test]
    fn bad_lines_are_reported_with_their_numbers() {
        let text = format!(
            "{MOSQUITTO_LINE}\nplain:secret\nnocolon\nx:$5$abc$def\ny:$7$0$AAAA$AAAA\n\
             z:$6$!!!$AAAA\n:$6$AAAA$AAAA\nw:$6$QUFB$QUFB\n"
        );
        let problems = PasswordTable::parse(&text).unwrap_err();
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7, 8], "{problems:#?}");
        assert!(problems[0].problem.contains("plain-text"));
        assert!(problems[2].problem.contains("unknown hash format `$5$`"));
        assert!(problems[3].problem.contains("iteration count"));
        assert!(problems[4].problem.contains("base64"));
        assert!(problems[6].problem.contains("64 bytes"));
        let shown = Problems(&problems).to_string();
        assert!(shown.starts_with("line 2: user `plain`: not a mosquitto_passwd hash"));
    }

    #[test]
    fn debug_never_shows_hashes() {
        let h = PasswordHash::salted_sha512(b"x", b"y");
        assert_eq!(format!("{h:?}"), "SaltedSha512 { .. }");
    }
}
