//! The file store: every app's token (and tickets) in one JSON file, so a
//! restart within their life needs no fetch.
//!
//! The file is read once, at start; a missing, unreadable or corrupt file is
//! reported once and treated as empty. After every successful fetch the whole
//! file is rewritten atomically: a temporary file in the same directory,
//! created with mode 0600, written, flushed to disk, then renamed over the
//! old one, so a crash leaves the old file or the new one, never half of one.
//!
//! The file holds live tokens: keep its directory private.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{unix_ms, Key, Registered, Saved, StoreError};

/// The file's shape: `{"tokens": [{"appid", "api", "token",
/// "expires_at_ms"}], "authorizers": [{"component_appid", "appid",
/// "refresh_token"}]}` (the second list only once a platform registered
/// one, so files of before read and look the same).
#[derive(Serialize, Deserialize, Default)]
struct Contents {
    tokens: Vec<Saved>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    authorizers: Vec<Registered>,
}

/// A token file and what it holds.
pub struct FileStore {
    /// The file.
    path: PathBuf,
    /// The entries as last read or written; the file is only ever replaced
    /// with a snapshot of these. Never held across an await.
    entries: Mutex<Contents>,
    /// Held for the whole of a write, so two apps refreshing at once write
    /// one after the other and the last write holds both tokens.
    writing: tokio::sync::Mutex<()>,
}

impl FileStore {
    /// Reads `path`. Never fails: a file that cannot be used is reported
    /// (once, here) and the proxy fetches as if it were empty.
    pub fn open(path: PathBuf) -> FileStore {
        let file = path.display().to_string();
        let entries = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Contents>(&bytes) {
                Ok(contents) => contents,
                Err(e) => {
                    tracing::warn!(%file, error = %e, "the token file is corrupt; ignoring it, tokens will be fetched");
                    Contents::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(%file, "no token file yet; it will be written after the first fetch");
                Contents::default()
            }
            Err(e) => {
                tracing::warn!(%file, error = %e, "cannot read the token file; ignoring it, tokens will be fetched");
                Contents::default()
            }
        };
        FileStore {
            path,
            entries: Mutex::new(entries),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// The entry for `key`, if the file had one.
    pub fn load(&self, key: Key<'_>) -> Option<Saved> {
        self.lock_entries()
            .tokens
            .iter()
            .find(|s| s.belongs_to(key))
            .cloned()
    }

    /// Replaces the entry for `saved`'s appid and kind (expired entries are
    /// dropped on the way) and rewrites the file.
    pub async fn save(&self, saved: Saved) -> Result<(), StoreError> {
        self.rewrite(|contents| {
            let now = unix_ms(SystemTime::now());
            contents.tokens.retain(|s| {
                s.expires_at_ms > now && !(s.appid == saved.appid && s.api == saved.api)
            });
            contents.tokens.push(saved);
        })
        .await
    }

    /// The authorizers the file holds for `component_appid`.
    pub fn authorizers(&self, component_appid: &str) -> Vec<Registered> {
        self.lock_entries()
            .authorizers
            .iter()
            .filter(|a| a.component_appid == component_appid)
            .cloned()
            .collect()
    }

    /// Adds or replaces `entries` and rewrites the file.
    pub async fn register(&self, entries: &[Registered]) -> Result<(), StoreError> {
        self.rewrite(|contents| {
            for entry in entries {
                let same = |a: &Registered| {
                    a.component_appid == entry.component_appid && a.appid == entry.appid
                };
                match contents.authorizers.iter_mut().find(|a| same(a)) {
                    Some(held) => held.refresh_token.clone_from(&entry.refresh_token),
                    None => contents.authorizers.push(entry.clone()),
                }
            }
        })
        .await
    }

    /// Replaces the refresh token of `entry`'s authorizer if it is still
    /// registered, and rewrites the file; says whether it was.
    pub async fn rotate(&self, entry: &Registered) -> Result<bool, StoreError> {
        let mut registered = false;
        self.rewrite(|contents| {
            let held = contents
                .authorizers
                .iter_mut()
                .find(|a| a.component_appid == entry.component_appid && a.appid == entry.appid);
            if let Some(held) = held {
                held.refresh_token.clone_from(&entry.refresh_token);
                registered = true;
            }
        })
        .await?;
        Ok(registered)
    }

    /// Removes an authorizer and rewrites the file.
    pub async fn unregister(&self, component_appid: &str, appid: &str) -> Result<(), StoreError> {
        self.rewrite(|contents| {
            contents
                .authorizers
                .retain(|a| !(a.component_appid == component_appid && a.appid == appid));
        })
        .await
    }

    /// Applies `change` to the entries and replaces the file with them.
    async fn rewrite(&self, change: impl FnOnce(&mut Contents)) -> Result<(), StoreError> {
        let _writing = self.writing.lock().await;
        let bytes = {
            let mut contents = self.lock_entries();
            change(&mut contents);
            serde_json::to_vec_pretty(&*contents).expect("plain strings and numbers serialize")
        };
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(|e| e.to_string())
            .and_then(|written| written.map_err(|e| e.to_string()))
            .map_err(|problem| StoreError::Write {
                file: self.path.display().to_string(),
                problem,
            })
    }

    fn lock_entries(&self) -> std::sync::MutexGuard<'_, Contents> {
        // Plain values: a panic elsewhere cannot leave them half-written.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Replaces `path` with `bytes`: temporary file (mode 0600 from its creation,
/// so the tokens are never readable by others, not even for a moment), fsync,
/// rename, then fsync of the directory so the rename itself survives a crash.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tokens".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // A leftover from a crashed run of the same pid would keep its old mode.
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}
