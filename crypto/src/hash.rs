//! BLAKE3 hashing with a distinct key per use.
//!
//! Each [`HashDomain`] has a context string (`"pyralog v1 tx"`, ...). Its 32-byte key is
//! `blake3::derive_key(context, b"")`, computed once, and the domain's hashes are
//! `blake3::keyed_hash(key, data)`. Keyed mode costs one compression less per hash than
//! `derive_key` mode, which matters for Merkle nodes (64-byte inputs), and two domains can
//! never produce each other's hashes without a BLAKE3 collision.
//!
//! File digests (what users notarize) are plain, unkeyed BLAKE3, so they equal `b3sum`'s
//! output and anyone can recompute them with standard tools.

use std::fmt;
use std::path::Path;
use std::sync::LazyLock;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::CryptoError;

/// A 32-byte BLAKE3 output.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The all-zero hash, used as a placeholder (e.g. the parent of the first block).
    pub const ZERO: Hash = Hash([0; 32]);

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, as used in JSON and on the command line.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Hash, CryptoError> {
        crate::parse_hex("hash", text).map(Hash)
    }

    /// The bit at `index` (0 = most significant bit of the first byte).
    pub fn bit(&self, index: usize) -> bool {
        (self.0[index / 8] >> (7 - index % 8)) & 1 == 1
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Hash::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// The uses of hashing in Pyralog; each gets its own BLAKE3 key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashDomain {
    /// Transaction hash (over the signed transaction's canonical bytes).
    Tx,
    /// Header hash (the block's identity).
    Header,
    /// Certificate hash (committed by the next header).
    Certificate,
    /// Genesis document hash.
    Genesis,
    /// Validator set hash.
    ValidatorSet,
    /// Leaf of a block's transaction Merkle tree.
    TxTreeLeaf,
    /// Inner node of a block's transaction Merkle tree.
    TxTreeNode,
    /// Leaf of the append-only log tree.
    LogLeaf,
    /// Inner node of the append-only log tree.
    LogNode,
    /// Key of the state tree (namespace and application key).
    StateKey,
    /// Value stored in a state tree leaf.
    StateValue,
    /// Leaf of the state tree.
    StateLeaf,
    /// Inner node of the state tree.
    StateNode,
    /// Consensus evidence (misbehaviour records).
    Evidence,
    /// A node's address inside the WireGuard overlay (from its WireGuard public key).
    OverlayAddress,
    /// The id of a gossip message (its claimed author, sequence number, topic and data),
    /// under which peers drop the copies they have seen.
    GossipMessage,
}

impl HashDomain {
    /// Every domain, for tests that check they are distinct.
    pub const ALL: [HashDomain; 16] = [
        HashDomain::Tx,
        HashDomain::Header,
        HashDomain::Certificate,
        HashDomain::Genesis,
        HashDomain::ValidatorSet,
        HashDomain::TxTreeLeaf,
        HashDomain::TxTreeNode,
        HashDomain::LogLeaf,
        HashDomain::LogNode,
        HashDomain::StateKey,
        HashDomain::StateValue,
        HashDomain::StateLeaf,
        HashDomain::StateNode,
        HashDomain::Evidence,
        HashDomain::OverlayAddress,
        HashDomain::GossipMessage,
    ];

    /// The context string from which the domain's key is derived.
    pub const fn context(self) -> &'static str {
        match self {
            HashDomain::Tx => "pyralog v1 tx",
            HashDomain::Header => "pyralog v1 header",
            HashDomain::Certificate => "pyralog v1 certificate",
            HashDomain::Genesis => "pyralog v1 genesis",
            HashDomain::ValidatorSet => "pyralog v1 validator set",
            HashDomain::TxTreeLeaf => "pyralog v1 tx tree leaf",
            HashDomain::TxTreeNode => "pyralog v1 tx tree node",
            HashDomain::LogLeaf => "pyralog v1 log leaf",
            HashDomain::LogNode => "pyralog v1 log node",
            HashDomain::StateKey => "pyralog v1 state key",
            HashDomain::StateValue => "pyralog v1 state value",
            HashDomain::StateLeaf => "pyralog v1 state leaf",
            HashDomain::StateNode => "pyralog v1 state node",
            HashDomain::Evidence => "pyralog v1 evidence",
            HashDomain::OverlayAddress => "pyralog v1 overlay address",
            HashDomain::GossipMessage => "pyralog v1 gossip message",
        }
    }

    fn key(self) -> &'static [u8; 32] {
        static KEYS: LazyLock<Vec<[u8; 32]>> = LazyLock::new(|| {
            HashDomain::ALL
                .iter()
                .map(|d| blake3::derive_key(d.context(), b""))
                .collect()
        });
        &KEYS[self as usize]
    }

    /// Hashes `data` in this domain.
    pub fn hash(self, data: &[u8]) -> Hash {
        Hash(*blake3::keyed_hash(self.key(), data).as_bytes())
    }

    /// Hashes the concatenation of two hashes (a Merkle inner node) in this domain.
    pub fn hash_pair(self, left: &Hash, right: &Hash) -> Hash {
        let mut h = self.hasher();
        h.update(&left.0);
        h.update(&right.0);
        h.finalize()
    }

    /// An incremental hasher for this domain.
    pub fn hasher(self) -> Hasher {
        Hasher(blake3::Hasher::new_keyed(self.key()))
    }
}

/// An incremental hasher in one domain.
#[derive(Clone)]
pub struct Hasher(blake3::Hasher);

impl Hasher {
    /// Feeds more bytes.
    pub fn update(&mut self, data: &[u8]) -> &mut Self {
        self.0.update(data);
        self
    }

    /// The hash of everything fed so far.
    pub fn finalize(&self) -> Hash {
        Hash(*self.0.finalize().as_bytes())
    }
}

/// Plain BLAKE3 of bytes in memory: the digest of a file's content (equals `b3sum`).
pub fn content_digest(data: &[u8]) -> Hash {
    Hash(*blake3::hash(data).as_bytes())
}

/// Plain BLAKE3 of a file's content (equals `b3sum FILE`), on all cores for large files.
///
/// Uses a memory map and rayon (blake3's own `update_mmap_rayon`), which falls back to
/// ordinary reads for small files and for files that cannot be mapped.
pub fn hash_file(path: &Path) -> Result<Hash, CryptoError> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_mmap_rayon(path)
        .map_err(|source| CryptoError::HashFile {
            path: path.display().to_string(),
            source,
        })?;
    Ok(Hash(*hasher.finalize().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn domains_are_distinct() {
        let contexts: HashSet<_> = HashDomain::ALL.iter().map(|d| d.context()).collect();
        assert_eq!(contexts.len(), HashDomain::ALL.len());
        let hashes: HashSet<_> = HashDomain::ALL
            .iter()
            .map(|d| d.hash(b"same bytes"))
            .collect();
        assert_eq!(hashes.len(), HashDomain::ALL.len());
        // The index into the key table must follow the declaration order.
        for (i, d) in HashDomain::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
        }
    }

    #[test]
    fn keyed_hash_matches_the_documented_construction() {
        let key = blake3::derive_key("pyralog v1 tx", b"");
        let expected = blake3::keyed_hash(&key, b"abc");
        assert_eq!(HashDomain::Tx.hash(b"abc").0, *expected.as_bytes());
        assert_ne!(HashDomain::Tx.hash(b"abc"), content_digest(b"abc"));
    }

    #[test]
    fn hash_pair_is_hash_of_concatenation() {
        let a = content_digest(b"a");
        let b = content_digest(b"b");
        let mut cat = a.0.to_vec();
        cat.extend_from_slice(&b.0);
        assert_eq!(
            HashDomain::LogNode.hash_pair(&a, &b),
            HashDomain::LogNode.hash(&cat)
        );
    }

    #[test]
    fn file_hash_matches_b3sum_construction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // Large enough for the memory-mapped, multi-threaded path.
        let data: Vec<u8> = (0..(17u32 << 20) + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let expected = content_digest(&data);
        assert_eq!(hash_file(&path).unwrap(), expected);
        // Known answer: BLAKE3 of the empty input.
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(
            hash_file(&empty).unwrap().to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn missing_file_is_an_error_naming_the_path() {
        let err = hash_file(Path::new("/nonexistent/pyralog-test")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/pyralog-test"),
            "{err}"
        );
    }

    #[test]
    fn hex_round_trip_and_bits() {
        let h = content_digest(b"x");
        assert_eq!(Hash::from_hex(&h.to_hex()).unwrap(), h);
        assert!(Hash::from_hex("abcd").is_err());
        let mut one = [0u8; 32];
        one[0] = 0b1000_0001;
        let h = Hash(one);
        assert!(h.bit(0) && !h.bit(1) && h.bit(7) && !h.bit(8));
    }
}
