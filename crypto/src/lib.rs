//! Keys, domain-separated signatures and hashes for Pyralog: ed25519, BLAKE3, x25519 for WireGuard, key files.
//!
//! Everything Pyralog signs or hashes goes through this crate, and every signature and
//! hash names its *domain* (a [`SigDomain`] or a [`HashDomain`]), so bytes signed or hashed
//! for one purpose can never be passed off as another.
//!
//! - [`keys`]: ed25519 key pairs, public keys, signatures, single and batch verification,
//!   and the x25519 (WireGuard) keys derived from an ed25519 node key.
//! - [`hash`]: BLAKE3 in keyed mode with one key per domain, plus plain BLAKE3 file hashing
//!   on all cores (file digests match `b3sum`).
//! - [`keyfile`]: JSON key files created with mode 0600; group- or world-readable secrets are
//!   refused. This and file hashing are the only places the crate touches the disk.
//!
//! Outside of [`keyfile`] and [`hash::hash_file`], the crate reads no clock, disk or global
//! randomness: it is safe to call from the deterministic crates (`ledger`, `consensus`).

pub mod hash;
pub mod keyfile;
pub mod keys;
pub mod recent;
pub mod rule;

pub use hash::{Hash, HashDomain, Hasher, content_digest, hash_file};
pub use keys::{
    BatchItem, Keypair, PublicKey, SigDomain, Signature, verify_batch, verify_batch_report,
    verify_batch_report_parallel,
};

/// Errors of the crypto crate.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Bytes that are not a valid ed25519 public key (not a point on the curve).
    #[error("invalid ed25519 public key")]
    InvalidPublicKey,
    /// A signature that does not verify for the given key, domain and message.
    #[error("signature does not verify")]
    BadSignature,
    /// Hex text that is not the expected number of bytes.
    #[error("invalid hex for {what}: expected {expected} bytes")]
    InvalidHex {
        /// What was being parsed.
        what: &'static str,
        /// The expected length in bytes.
        expected: usize,
    },
    /// A key file that could not be read, written or parsed.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file's path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A key file whose secret is readable by the group or others.
    #[error(
        "key file {path} has mode {mode:o}: the secret is readable by other users; \
         run `chmod 600 {path}` if the key is still safe, or generate a new key"
    )]
    InsecurePermissions {
        /// The file's path.
        path: String,
        /// The permission bits found.
        mode: u32,
    },
    /// An I/O error while hashing a file.
    #[error("hashing {path}: {source}")]
    HashFile {
        /// The file's path.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The operating system's random number generator failed.
    #[error("operating system randomness unavailable: {0}")]
    Randomness(String),
}

/// Parses exactly `N` bytes from hex text.
pub fn parse_hex<const N: usize>(what: &'static str, text: &str) -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| CryptoError::InvalidHex { what, expected: N })?;
    Ok(out)
}
