//! Secrets: AppSecrets and inbound keys, where they are read from, and the
//! wrapper that keeps them out of every log line and message.
//!
//! Its own module so that both the config (which resolves secrets) and
//! [`crate::inbound::auth`] (which compares keys) depend on it, and not on each other.

use std::fmt;
use std::path::PathBuf;

/// Where configuration values that live outside the file come from.
///
/// A trait so tests can hand in variables without touching the process
/// environment.
pub trait Environment {
    /// The value of variable `name`, if it is set and valid Unicode.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// An AppSecret or a key. Its `Debug` never shows the value, and it has no
/// `Display`, so it cannot end up in a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the one place that sends it to WeChat.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Where a secret is read from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// An environment variable, read once at start.
    Env(String),
    /// A file (a mounted Kubernetes Secret), re-read when WeChat says the
    /// secret is wrong, so a rotation needs no restart.
    File(PathBuf),
}

/// Why a secret could not be read. Names the variable or the path, never
/// the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The variable is not set (or not valid Unicode).
    #[error("environment variable {0} is not set")]
    Unset(String),
    /// The variable holds only whitespace.
    #[error("environment variable {0} is empty")]
    EmptyVar(String),
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The secret file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file holds only whitespace.
    #[error("{} is empty", .0.display())]
    EmptyFile(PathBuf),
}

impl SecretSource {
    /// Reads the secret now, without surrounding whitespace (a file's
    /// trailing newline).
    pub fn read(&self, env: &dyn Environment) -> Result<Secret, SecretError> {
        let value = match self {
            SecretSource::Env(name) => env
                .var(name)
                .ok_or_else(|| SecretError::Unset(name.clone()))?,
            SecretSource::File(path) => {
                std::fs::read_to_string(path).map_err(|source| SecretError::Unreadable {
                    path: path.clone(),
                    source,
                })?
            }
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(match self {
                SecretSource::Env(name) => SecretError::EmptyVar(name.clone()),
                SecretSource::File(path) => SecretError::EmptyFile(path.clone()),
            });
        }
        Ok(Secret(value.to_owned()))
    }
}
