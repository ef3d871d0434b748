//! Tokens and registrations on disk, shared by every process of the same user.
//!
//! Files are written atomically (temporary file, fsync, rename) with mode 0600 in a 0700 folder.
//! They are sealed with AES-256-GCM, bound to their own name so one file cannot be swapped for
//! another, when a key is available, from the first of: `GATEHOUSE_TOKEN_KEY` (32 bytes in
//! base64), `GATEHOUSE_TOKEN_KEY_FILE`, or the OS keyring (macOS Keychain, Windows Credential
//! Manager, the Secret Service on Linux desktops), where a random key is created on first use
//! (`GATEHOUSE_KEYRING=off` skips it). The tokens stay in files so that any size fits and every
//! platform behaves alike; the keyring holds only the key. Without any key (headless Linux, CI,
//! containers: no Secret Service), what protects them is the file mode alone: any process running
//! as the same user can read them, as with an SSH key without a passphrase.
//!
//! Refreshes are single-flight across processes: a per-server lock file (`flock`) is held from
//! "is the token still fresh?" to "new tokens saved", so two bridges sharing an account refresh
//! once and the second one finds the first one's tokens.
use crate::ClientError;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

const SEALED: &str = "gatehouse-sealed-v1:";
/// The folder of per-server token files (see `session.rs`).
const TOKENS_DIR: &str = "tokens";

pub struct TokenCache {
    dir: PathBuf,
    key: Option<[u8; 32]>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("dir", &self.dir)
            .field("sealed", &self.key.is_some())
            .finish()
    }
}

/// Holds a server's lock until dropped.
pub struct LockGuard {
    _file: std::fs::File,
}

fn err(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Cache(format!("{what}: {e}"))
}

fn parse_key(s: &str) -> Result<[u8; 32], ClientError> {
    let s = s.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s))
        .map_err(|e| err("GATEHOUSE_TOKEN_KEY", e))?;
    bytes
        .try_into()
        .map_err(|_| ClientError::Cache("GATEHOUSE_TOKEN_KEY must be 32 bytes (base64)".into()))
}

/// `$GATEHOUSE_HOME`, else `$XDG_STATE_HOME/gatehouse`, else `~/.local/state/gatehouse`.
pub fn default_dir() -> Result<PathBuf, ClientError> {
    if let Some(d) = std::env::var_os("GATEHOUSE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("gatehouse"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PathBuf::from(h).join(".local/state/gatehouse"))
        .ok_or_else(|| ClientError::Cache("no HOME; set GATEHOUSE_HOME".into()))
}

/// The sealing key from the OS keyring, created there on first use. `None` when there is no
/// keyring (reported once on stderr) or it is turned off.
#[cfg(feature = "keyring")]
fn keyring_key(dir: &Path) -> Option<[u8; 32]> {
    if std::env::var("GATEHOUSE_KEYRING").is_ok_and(|v| v == "off") {
        return None;
    }
    let store = match platform_store() {
        Ok(s) => s,
        Err(e) => {
            // Said once, when the cache is first created, not on every run.
            if !dir.join(TOKENS_DIR).exists() {
                crate::progress(format!(
                    "no OS keyring ({e}); tokens are protected by file permissions only (see GATEHOUSE_TOKEN_KEY)"
                ));
            }
            return None;
        }
    };
    // Nothing silent: a keyring that is there but fails says so, or tokens would quietly be
    // kept unsealed.
    let refused = |e: &dyn std::fmt::Display| {
        crate::progress(format!(
            "the OS keyring refused ({e}); tokens are protected by file permissions only"
        ));
    };
    let entry = match keyring_core::Entry::new_in_store(
        &store,
        "gatehouse",
        &format!("token-cache-key:{}", dir.display()),
    ) {
        Ok(entry) => entry,
        Err(e) => {
            refused(&e);
            return None;
        }
    };
    match entry.get_secret() {
        Ok(k) => match <[u8; 32]>::try_from(k) {
            Ok(k) => Some(k),
            Err(k) => {
                refused(&format_args!("its key has {} bytes, not 32", k.len()));
                None
            }
        },
        Err(keyring_core::Error::NoEntry) => {
            let mut k = [0u8; 32];
            rand::fill(&mut k);
            match entry.set_secret(&k) {
                Ok(()) => Some(k),
                Err(e) => {
                    refused(&e);
                    None
                }
            }
        }
        Err(e) => {
            refused(&e);
            None
        }
    }
}

#[cfg(not(feature = "keyring"))]
fn keyring_key(_dir: &Path) -> Option<[u8; 32]> {
    None
}

#[cfg(all(feature = "keyring", target_os = "linux"))]
fn platform_store() -> keyring_core::Result<std::sync::Arc<keyring_core::CredentialStore>> {
    Ok(zbus_secret_service_keyring_store::Store::new()?)
}

#[cfg(all(feature = "keyring", target_os = "macos"))]
fn platform_store() -> keyring_core::Result<std::sync::Arc<keyring_core::CredentialStore>> {
    Ok(apple_native_keyring_store::keychain::Store::new()?)
}

#[cfg(all(feature = "keyring", windows))]
fn platform_store() -> keyring_core::Result<std::sync::Arc<keyring_core::CredentialStore>> {
    Ok(windows_native_keyring_store::Store::new()?)
}

#[cfg(all(
    feature = "keyring",
    not(any(target_os = "linux", target_os = "macos", windows))
))]
fn platform_store() -> keyring_core::Result<std::sync::Arc<keyring_core::CredentialStore>> {
    Err(keyring_core::Error::NotSupportedByStore(
        "no keyring on this platform".into(),
    ))
}

fn create_private_dir(p: &Path) -> Result<(), ClientError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(p).map_err(|e| err(&p.display().to_string(), e))
}

impl TokenCache {
    /// The cache in `dir` (or the default folder), with the key from the environment if set.
    pub fn open(dir: Option<PathBuf>) -> Result<Self, ClientError> {
        let dir = match dir {
            Some(d) => d,
            None => default_dir()?,
        };
        let key = match (
            std::env::var("GATEHOUSE_TOKEN_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
            std::env::var_os("GATEHOUSE_TOKEN_KEY_FILE"),
        ) {
            (Some(k), _) => Some(parse_key(&k)?),
            (None, Some(f)) => Some(parse_key(
                &std::fs::read_to_string(&f).map_err(|e| err("GATEHOUSE_TOKEN_KEY_FILE", e))?,
            )?),
            (None, None) => keyring_key(&dir),
        };
        Self::with_key(dir, key)
    }

    pub fn with_key(dir: PathBuf, key: Option<[u8; 32]>) -> Result<Self, ClientError> {
        create_private_dir(&dir)?;
        Ok(Self { dir, key })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn name(id: &str) -> String {
        let h = Sha256::digest(id.as_bytes());
        gatehouse_core::hex(&h[..16])
    }

    fn path(&self, kind: &str, id: &str) -> PathBuf {
        self.dir.join(kind).join(format!("{}.json", Self::name(id)))
    }

    fn aead(&self) -> Option<Result<LessSafeKey, ClientError>> {
        self.key.map(|k| {
            UnboundKey::new(&AES_256_GCM, &k)
                .map(LessSafeKey::new)
                .map_err(|_| ClientError::Cache("bad key".into()))
        })
    }

    pub fn load<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<T>, ClientError> {
        let p = self.path(kind, id);
        let raw = match std::fs::read_to_string(&p) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(&p.display().to_string(), e)),
        };
        let plain = match (raw.strip_prefix(SEALED), self.aead()) {
            (Some(b64), Some(key)) => {
                let key = key?;
                let mut data = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| err("sealed file", e))?;
                if data.len() < 12 {
                    return Err(ClientError::Cache("sealed file too short".into()));
                }
                let nonce = Nonce::try_assume_unique_for_key(&data[..12])
                    .map_err(|_| ClientError::Cache("bad nonce".into()))?;
                let mut ct = data.split_off(12);
                let aad = format!("{kind}/{id}");
                let out = key
                    .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut ct)
                    .map_err(|_| {
                        ClientError::Cache(format!(
                            "{} cannot be opened with the configured key",
                            p.display()
                        ))
                    })?;
                out.to_vec()
            }
            (Some(_), None) => {
                return Err(ClientError::Cache(format!(
                    "{} is sealed; set GATEHOUSE_TOKEN_KEY",
                    p.display()
                )));
            }
            (None, _) => raw.into_bytes(),
        };
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| err(&p.display().to_string(), e))
    }

    pub fn save<T: serde::Serialize>(
        &self,
        kind: &str,
        id: &str,
        v: &T,
    ) -> Result<(), ClientError> {
        let p = self.path(kind, id);
        let folder = self.dir.join(kind);
        create_private_dir(&folder)?;
        let json = serde_json::to_vec(v).map_err(|e| err("serialise", e))?;
        let body = match self.aead() {
            Some(key) => {
                let key = key?;
                let mut nonce = [0u8; 12];
                rand::fill(&mut nonce);
                let mut ct = json;
                let aad = format!("{kind}/{id}");
                key.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad.as_bytes()),
                    &mut ct,
                )
                .map_err(|_| ClientError::Cache("sealing failed".into()))?;
                let mut all = nonce.to_vec();
                all.extend_from_slice(&ct);
                format!(
                    "{SEALED}{}",
                    base64::engine::general_purpose::STANDARD.encode(all)
                )
                .into_bytes()
            }
            None => json,
        };
        let mut suffix = [0u8; 8];
        rand::fill(&mut suffix);
        let tmp = folder.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            gatehouse_core::hex(&suffix)
        ));
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let write = || -> std::io::Result<()> {
            let mut f = o.open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &p)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(&p.display().to_string(), e)
        })
    }

    pub fn remove(&self, kind: &str, id: &str) -> Result<bool, ClientError> {
        match std::fs::remove_file(self.path(kind, id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(err("remove", e)),
        }
    }

    /// Takes the cross-process lock for `id`, waiting for another holder to finish.
    pub async fn lock(&self, id: &str) -> Result<LockGuard, ClientError> {
        let folder = self.dir.join("locks");
        create_private_dir(&folder)?;
        let p = folder.join(format!("{}.lock", Self::name(id)));
        tokio::task::spawn_blocking(move || {
            let mut o = std::fs::OpenOptions::new();
            o.read(true).write(true).create(true).truncate(false);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            let f = o.open(&p).map_err(|e| err("lock file", e))?;
            f.lock().map_err(|e| err("lock", e))?;
            Ok(LockGuard { _file: f })
        })
        .await
        .map_err(|e| err("lock", e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("gh-cache-{name}-{}", std::process::id()))
    }

    #[test]
    fn cl21_files_are_private_atomic_and_sealed_with_a_key() {
        let dir = tmp("sealed");
        let c = TokenCache::with_key(dir.clone(), Some([7u8; 32])).expect("open");
        c.save(
            "tokens",
            "https://mcp.example.com/mcp",
            &serde_json::json!({"access_token": "secret-at"}),
        )
        .expect("save");
        let p = c.path("tokens", "https://mcp.example.com/mcp");
        let raw = std::fs::read_to_string(&p).expect("read");
        assert!(raw.starts_with(SEALED) && !raw.contains("secret-at"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let dmode = std::fs::metadata(&dir).expect("meta").permissions().mode();
            assert_eq!(dmode & 0o777, 0o700);
        }
        let v: serde_json::Value = c
            .load("tokens", "https://mcp.example.com/mcp")
            .expect("load")
            .expect("present");
        assert_eq!(v["access_token"], "secret-at");
        // Another key, or no key, cannot read it; a file moved under another name neither.
        let other = TokenCache::with_key(dir.clone(), Some([8u8; 32])).expect("open");
        assert!(
            other
                .load::<serde_json::Value>("tokens", "https://mcp.example.com/mcp")
                .is_err()
        );
        let none = TokenCache::with_key(dir.clone(), None).expect("open");
        assert!(
            none.load::<serde_json::Value>("tokens", "https://mcp.example.com/mcp")
                .is_err()
        );
        std::fs::copy(&p, c.path("tokens", "https://other.example.com/mcp")).expect("copy");
        assert!(
            c.load::<serde_json::Value>("tokens", "https://other.example.com/mcp")
                .is_err()
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("tokens"))
            .expect("ls")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary files left behind");
        let _ = std::fs::remove_dir_all(dir);
    }
}
