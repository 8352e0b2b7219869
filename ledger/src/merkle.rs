//! RFC 9162-shaped Merkle trees: hashing rules, the RFC's proof verification algorithms,
//! and the per-block transaction tree.
//!
//! Both Pyralog Merkle trees (a block's transactions, and the log of every transaction)
//! have the RFC 6962 / 9162 §2.1 shape: the root of `n > 1` leaves is
//! `node(root(first k), root(rest))` with `k` the largest power of two below `n`. Where
//! the RFC prefixes leaves with `0x00` and inner nodes with `0x01`, Pyralog hashes them in
//! two BLAKE3 domains ([`TreeHasher`]), which gives the same separation. The root of the
//! empty tree is the node-domain hash of the empty string (inner nodes always hash 64
//! bytes, so it cannot collide with one).
//!
//! The transaction tree of a block is built with `rs_merkle`, whose bottom-up pairing with
//! promotion of an unpaired node yields exactly this shape; its proofs are checked by the
//! same RFC algorithm as log proofs, so there is one verification path.

use pyralog_crypto::HashDomain;
use rs_merkle::MerkleTree;

use crate::Hash;

/// Longest proof accepted by the verifiers: a tree of 2^64 leaves needs 64 hashes for
/// an inclusion proof and at most 2 * 64 for a consistency proof.
pub const MAX_PROOF_HASHES: usize = 130;

/// Why a Merkle proof was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Entry index not inside the tree.
    #[error("index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// The claimed index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// Sizes out of order for a consistency proof.
    #[error("consistency from size {old} to size {new}: the old size must not be larger")]
    SizesOutOfOrder {
        /// The older size.
        old: u64,
        /// The newer size.
        new: u64,
    },
    /// The proof has the wrong number of hashes for the claimed position.
    #[error("proof has the wrong number of hashes ({len}) for this position")]
    WrongLength {
        /// Number of hashes in the proof.
        len: usize,
    },
    /// The recomputed root differs from the expected one.
    #[error("recomputed root {computed} does not match expected root {expected}")]
    RootMismatch {
        /// The root the proof leads to.
        computed: Hash,
        /// The root it should lead to.
        expected: Hash,
    },
}

/// The two hash domains of one kind of Merkle tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeHasher {
    leaf: HashDomain,
    node: HashDomain,
}

impl TreeHasher {
    /// A block's transaction tree.
    pub const TX_TREE: TreeHasher = TreeHasher {
        leaf: HashDomain::TxTreeLeaf,
        node: HashDomain::TxTreeNode,
    };
    /// The append-only log tree.
    pub const LOG_TREE: TreeHasher = TreeHasher {
        leaf: HashDomain::LogLeaf,
        node: HashDomain::LogNode,
    };

    /// Hash of a leaf whose entry (a transaction hash) is `entry`.
    pub fn leaf(&self, entry: &Hash) -> Hash {
        self.leaf.hash(&entry.0)
    }

    /// Hash of an inner node.
    pub fn node(&self, left: &Hash, right: &Hash) -> Hash {
        self.node.hash_pair(left, right)
    }

    /// Root of the empty tree.
    pub fn empty_root(&self) -> Hash {
        self.node.hash(b"")
    }
}

/// The largest power of two strictly smaller than `n` (`n >= 2`).
pub(crate) fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// RFC 9162 §2.1.3.2: checks that `entry` is at `index` in the tree of `size` entries
/// whose root is `root`, given the inclusion proof `proof` (bottom-up sibling hashes).
pub fn verify_inclusion(
    tree: TreeHasher,
    index: u64,
    size: u64,
    entry: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    if proof.len() > MAX_PROOF_HASHES {
        return Err(ProofError::WrongLength { len: proof.len() });
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = tree.leaf(entry);
    for p in proof {
        if s_n == 0 {
            return Err(ProofError::WrongLength { len: proof.len() });
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = tree.node(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = tree.node(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength { len: proof.len() });
    }
    if r != *root {
        return Err(ProofError::RootMismatch {
            computed: r,
            expected: *root,
        });
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: checks that the tree of `new_size` entries with root `new_root`
/// extends the tree of `old_size` entries with root `old_root`.
///
/// Equal sizes need an empty proof and equal roots; every tree extends the empty tree
/// (whose root must then be the empty root).
pub fn verify_consistency(
    tree: TreeHasher,
    old_size: u64,
    old_root: &Hash,
    new_size: u64,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesOutOfOrder {
            old: old_size,
            new: new_size,
        });
    }
    if proof.len() > MAX_PROOF_HASHES {
        return Err(ProofError::WrongLength { len: proof.len() });
    }
    if old_size == 0 || old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength { len: proof.len() });
        }
        if old_size == 0 && *old_root != tree.empty_root() {
            return Err(ProofError::RootMismatch {
                computed: tree.empty_root(),
                expected: *old_root,
            });
        }
        if old_size == new_size && old_root != new_root {
            return Err(ProofError::RootMismatch {
                computed: *new_root,
                expected: *old_root,
            });
        }
        return Ok(());
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength { len: 0 });
    };
    let (mut f_n, mut s_n) = (old_size - 1, new_size - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut f_r, mut s_r) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return Err(ProofError::WrongLength { len: proof.len() });
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = tree.node(c, &f_r);
            s_r = tree.node(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = tree.node(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength { len: proof.len() });
    }
    if f_r != *old_root {
        return Err(ProofError::RootMismatch {
            computed: f_r,
            expected: *old_root,
        });
    }
    if s_r != *new_root {
        return Err(ProofError::RootMismatch {
            computed: s_r,
            expected: *new_root,
        });
    }
    Ok(())
}

#[derive(Clone)]
struct TxTreeHasher;

impl rs_merkle::Hasher for TxTreeHasher {
    type Hash = [u8; 32];

    fn hash(data: &[u8]) -> [u8; 32] {
        HashDomain::TxTreeNode.hash(data).0
    }

    fn concat_and_hash(left: &[u8; 32], right: Option<&[u8; 32]>) -> [u8; 32] {
        match right {
            Some(r) => TreeHasher::TX_TREE.node(&Hash(*left), &Hash(*r)).0,
            None => *left,
        }
    }
}

/// A block's transaction tree over the transaction hashes, in block order.
pub struct TxTree {
    tree: MerkleTree<TxTreeHasher>,
    len: usize,
}

impl TxTree {
    /// Builds the tree of `tx_hashes`.
    pub fn new(tx_hashes: &[Hash]) -> TxTree {
        let leaves: Vec<[u8; 32]> = tx_hashes
            .iter()
            .map(|h| TreeHasher::TX_TREE.leaf(h).0)
            .collect();
        TxTree {
            tree: MerkleTree::from_leaves(&leaves),
            len: tx_hashes.len(),
        }
    }

    /// The root (the header's `tx_root`).
    pub fn root(&self) -> Hash {
        self.tree
            .root()
            .map(Hash)
            .unwrap_or_else(|| TreeHasher::TX_TREE.empty_root())
    }

    /// The inclusion proof of the transaction at `index`, checked by [`verify_inclusion`]
    /// with [`TreeHasher::TX_TREE`]. `None` if `index` is out of range.
    pub fn inclusion_proof(&self, index: usize) -> Option<Vec<Hash>> {
        if index >= self.len {
            return None;
        }
        Some(
            self.tree
                .proof(&[index])
                .proof_hashes()
                .iter()
                .copied()
                .map(Hash)
                .collect(),
        )
    }
}
