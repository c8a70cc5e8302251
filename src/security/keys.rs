//! API keys: named bearer tokens, `NAME KEY` a line (`#` starts a comment), from a file and from
//! an environment variable (where `;` also separates entries).
//!
//! Invariants:
//! - A key is held only as its SHA-256 digest; what a client presents is hashed and compared
//!   with every key's digest in constant time, whichever matches, so neither the time a check
//!   takes nor anything the server keeps or prints gives a key away.
//! - Errors name the source and the line, never a line's content (it holds a key).
//! - Names are what logs, spans, metrics and error messages show: letters, digits, `.`, `_`, `-`.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest key accepted: 16 characters (a random 16-character key has ~95 bits or more).
pub const MIN_KEY_CHARS: usize = 16;
/// Longest key name: names are metric labels and appear in every refusal.
pub const MAX_NAME_CHARS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{source_name} line {line}: {problem}")]
    Line {
        source_name: String,
        line: usize,
        problem: String,
    },
    #[error("auth.api_keys_env: the variable {0} is not set")]
    MissingVariable(String),
}

/// One key: who it is, and its digest.
struct Entry {
    name: Arc<str>,
    digest: [u8; 32],
}

/// A set of keys. `Debug` shows the names only.
#[derive(Default)]
pub struct ApiKeys {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.name))
            .finish()
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl ApiKeys {
    /// The keys of `file` and of the variable `env`, together; a name or a key that appears twice
    /// is refused.
    pub fn load(file: Option<&Path>, env: Option<&str>) -> Result<ApiKeys, KeysError> {
        let mut keys = ApiKeys::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            keys.add(&path.display().to_string(), text.lines())?;
        }
        if let Some(name) = env {
            let text =
                std::env::var(name).map_err(|_| KeysError::MissingVariable(name.to_string()))?;
            keys.add(
                &format!("environment variable {name}"),
                text.split(['\n', ';']),
            )?;
        }
        Ok(keys)
    }

    /// Parses `lines` of `source_name` into the set.
    pub fn add<'a>(
        &mut self,
        source_name: &str,
        lines: impl Iterator<Item = &'a str>,
    ) -> Result<(), KeysError> {
        for (index, line) in lines.enumerate() {
            let error = |problem: String| KeysError::Line {
                source_name: source_name.to_string(),
                line: index + 1,
                problem,
            };
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(name), Some(key), None) = (words.next(), words.next(), words.next()) else {
                return Err(error("expected `NAME KEY`".into()));
            };
            let name_ok = name.len() <= MAX_NAME_CHARS
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !name_ok {
                return Err(error(format!(
                    "a name is at most {MAX_NAME_CHARS} letters, digits, '.', '_' or '-'"
                )));
            }
            if key.chars().count() < MIN_KEY_CHARS {
                return Err(error(format!(
                    "the key of {name} is shorter than {MIN_KEY_CHARS} characters"
                )));
            }
            if self.entries.iter().any(|e| &*e.name == name) {
                return Err(error(format!("{name} is named twice")));
            }
            let digest = digest(key.as_bytes());
            if self.check(key.as_bytes()).is_some() {
                return Err(error(format!(
                    "the key of {name} is also another name's key"
                )));
            }
            self.entries.push(Entry {
                name: name.into(),
                digest,
            });
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.entries.iter().map(|e| &e.name)
    }

    /// The name of the key `presented`, if it is one. Every digest is compared, in constant time.
    pub fn check(&self, presented: &[u8]) -> Option<Arc<str>> {
        let presented = digest(presented);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&presented)) {
                found = Some(entry.name.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "a-key-of-team-a-0123456789";
    const KEY_B: &str = "a-key-of-team-b-0123456789";

    fn parse(text: &str) -> Result<ApiKeys, KeysError> {
        let mut keys = ApiKeys::default();
        keys.add("keys.txt", text.lines())?;
        Ok(keys)
    }

    #[test]
    fn keys_are_found_by_their_value_and_named() {
        let keys = parse(&format!(
            "# comment\n\nteam-a {KEY_A}\nteam-b {KEY_B} # trailing\n"
        ))
        .unwrap();
        assert_eq!(keys.check(KEY_A.as_bytes()).as_deref(), Some("team-a"));
        assert_eq!(keys.check(KEY_B.as_bytes()).as_deref(), Some("team-b"));
        assert_eq!(keys.check(b"a-key-of-team-c-0123456789"), None);
        assert_eq!(keys.check(&KEY_A.as_bytes()[..KEY_A.len() - 1]), None);
        assert_eq!(format!("{keys:?}"), r#"["team-a", "team-b"]"#);
    }

    #[test]
    fn errors_name_the_line_and_never_show_the_key() {
        let cases = [
            (
                format!("team-a {KEY_A} extra"),
                "keys.txt line 1: expected `NAME KEY`",
            ),
            (
                "team-a short".to_string(),
                "keys.txt line 1: the key of team-a is shorter than 16",
            ),
            (
                format!("team/a {KEY_A}"),
                "keys.txt line 1: a name is at most 64",
            ),
            (
                format!("a {KEY_A}\na {KEY_B}"),
                "keys.txt line 2: a is named twice",
            ),
            (
                format!("a {KEY_A}\nb {KEY_A}"),
                "keys.txt line 2: the key of b is also another name's key",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{error}");
            assert!(!error.contains(KEY_A) && !error.contains(KEY_B), "{error}");
        }
    }
}
