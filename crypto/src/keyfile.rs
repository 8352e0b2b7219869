//! JSON key files: `{"kind": "ed25519", "public_key": "<hex>", "secret_key": "<hex seed>"}`.
//!
//! Files are created with mode 0600 and never overwritten. Loading refuses a file whose
//! permission bits let the group or others read it (as OpenSSH does for private keys),
//! a file larger than [`MAX_KEY_FILE_BYTES`], an unknown `kind`, and a `public_key` that
//! does not belong to `secret_key`.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{CryptoError, Keypair};

/// Key files larger than this are not key files.
pub const MAX_KEY_FILE_BYTES: u64 = 4096;

/// The only key kind Pyralog uses.
pub const KIND_ED25519: &str = "ed25519";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileJson {
    kind: String,
    public_key: String,
    secret_key: String,
}

impl Drop for KeyFileJson {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret_key);
    }
}

fn err(path: &Path, reason: impl Into<String>) -> CryptoError {
    CryptoError::KeyFile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Writes `key` to a new file at `path` with mode 0600. Fails if the file exists.
pub fn write_key_file(path: &Path, key: &Keypair) -> Result<(), CryptoError> {
    let json = KeyFileJson {
        kind: KIND_ED25519.to_string(),
        public_key: key.public().to_hex(),
        secret_key: hex::encode(*key.seed()),
    };
    let text = Zeroizing::new(
        serde_json::to_string_pretty(&json).map_err(|e| err(path, e.to_string()))? + "\n",
    );
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                err(path, "already exists; refusing to overwrite a key")
            }
            _ => err(path, e.to_string()),
        })?;
    // The mode passed to open() is filtered by the umask; make sure it is exactly 0600.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err(path, e.to_string()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| err(path, e.to_string()))?;
    file.sync_all().map_err(|e| err(path, e.to_string()))?;
    Ok(())
}

/// Reads a key file, refusing insecure permissions and inconsistent contents.
pub fn read_key_file(path: &Path) -> Result<Keypair, CryptoError> {
    let file = std::fs::File::open(path).map_err(|e| err(path, e.to_string()))?;
    let meta = file.metadata().map_err(|e| err(path, e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::InsecurePermissions {
            path: path.display().to_string(),
            mode,
        });
    }
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(err(path, format!("larger than {MAX_KEY_FILE_BYTES} bytes")));
    }
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(path, e.to_string()))?;
    let json: KeyFileJson =
        serde_json::from_str(&text).map_err(|e| err(path, format!("not a key file: {e}")))?;
    if json.kind != KIND_ED25519 {
        return Err(err(path, format!("unsupported key kind {:?}", json.kind)));
    }
    let seed = Zeroizing::new(
        crate::parse_hex::<32>("secret_key", &json.secret_key)
            .map_err(|e| err(path, e.to_string()))?,
    );
    let key = Keypair::from_seed(&seed);
    let public =
        crate::PublicKey::from_hex(&json.public_key).map_err(|e| err(path, e.to_string()))?;
    if public != key.public() {
        return Err(err(path, "public_key does not match secret_key"));
    }
    Ok(key)
}

/// Generates a new key and writes it to `path` (mode 0600, never overwriting).
pub fn generate_key_file(path: &Path) -> Result<Keypair, CryptoError> {
    let key = Keypair::generate()?;
    write_key_file(path, &key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        let key = generate_key_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = read_key_file(&path).unwrap();
        assert_eq!(back.public(), key.public());
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["kind"], "ed25519");
        assert_eq!(json["public_key"], key.public().to_hex());
        assert_eq!(json["secret_key"], hex::encode(*key.seed()));
    }

    #[test]
    fn never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        let first = generate_key_file(&path).unwrap();
        let e = generate_key_file(&path).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert_eq!(read_key_file(&path).unwrap().public(), first.public());
    }

    #[test]
    fn readable_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        generate_key_file(&path).unwrap();
        for mode in [0o640, 0o604, 0o644, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_key_file(&path).unwrap_err();
            assert!(
                matches!(e, CryptoError::InsecurePermissions { .. }),
                "{mode:o}: {e}"
            );
            assert!(e.to_string().contains("chmod 600"));
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        read_key_file(&path).unwrap();
    }

    #[test]
    fn bad_contents_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p
        };
        let k = Keypair::from_seed(&[9; 32]);
        let other = Keypair::from_seed(&[8; 32]);
        let cases = [
            ("garbage", "not json".to_string(), "not a key file"),
            (
                "kind",
                format!(
                    r#"{{"kind":"rsa","public_key":"{}","secret_key":"{}"}}"#,
                    k.public().to_hex(),
                    hex::encode(*k.seed())
                ),
                "unsupported key kind",
            ),
            (
                "mismatch",
                format!(
                    r#"{{"kind":"ed25519","public_key":"{}","secret_key":"{}"}}"#,
                    other.public().to_hex(),
                    hex::encode(*k.seed())
                ),
                "does not match",
            ),
            (
                "short",
                format!(
                    r#"{{"kind":"ed25519","public_key":"{}","secret_key":"abcd"}}"#,
                    k.public().to_hex()
                ),
                "secret_key",
            ),
            ("huge", " ".repeat(5000), "larger than"),
        ];
        for (name, text, expected) in cases {
            let e = read_key_file(&write(name, &text)).unwrap_err().to_string();
            assert!(e.contains(expected), "{name}: {e}");
            assert!(
                !e.contains(&hex::encode(*k.seed())),
                "{name}: error leaks the secret"
            );
        }
        let e = read_key_file(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
