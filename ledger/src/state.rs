//! The authenticated state: a sparse Merkle tree over 256-bit keys with compressed paths.
//!
//! ```text
//!                 root                  key bits decide left (0) / right (1)
//!               /      \
//!          node          leaf(k3)       a subtree holding one key is that key's leaf,
//!         /    \                        placed as high as its unique prefix allows
//!   leaf(k1)  leaf(k2)                  an empty subtree is EMPTY (all-zero hash)
//! ```
//!
//! - `leaf = H_leaf(key || H_value(value))`, `node = H_node(left || right)`, empty = zero.
//! - A node always has two non-empty children, or one internal child beside an empty one;
//!   a lone leaf moves up (Diem's sparse Merkle tree). With keys that are BLAKE3 outputs,
//!   a path is O(log n) long, so an update costs O(log n) hashes, not 256.
//! - Nodes never change once written, so the tree at every height stays readable from
//!   that height's root: proofs of a value or of absence work at any height.
//! - A leaf's hash does not depend on its depth, so a leaf that moves (up when its
//!   sibling goes, down when a key is inserted beside it) keeps its node: the new tree
//!   names it where it was stored. An insertion writes the new leaf and the internal
//!   nodes above it, not the leaf it displaced.
//! - A node is stored at a [`NodeRef`]: the height whose block wrote it (its version) and
//!   its position among that block's new nodes. An internal node holds its children's
//!   hashes and locations ([`Subtree`]); only the hashes are hashed. Stores can then keep a
//!   block's nodes side by side under sequential keys instead of scattering them under
//!   their hashes (see `pyralog-storage`).
//!
//! A key is `H_key(namespace || application key)` ([`state_key`]). Proofs carry the
//! sibling hashes from the root down and the leaf met at the end of the key's path; see
//! [`verify_state_proof`].

use std::collections::{BTreeMap, HashMap};

use pyralog_crypto::HashDomain;
use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, Decode, Decoder, Encode, put_bytes};
use crate::tx::MAX_VALUE_BYTES;
use crate::{Hash, StoreError};

/// The root of the empty tree, and the hash of every empty subtree.
pub const EMPTY_ROOT: Hash = Hash::ZERO;

/// Largest value a state leaf may hold.
pub const MAX_STATE_VALUE_BYTES: usize = MAX_VALUE_BYTES + 1024;

/// The namespaces of the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Namespace {
    /// Accounts: sender public key → next nonce.
    Account = 1,
    /// Notarizations: content digest → position, time and sender.
    Notarization = 2,
    /// Key-value store: application key → value.
    Kv = 3,
}

/// The tree key of `key` in `namespace`.
pub fn state_key(namespace: Namespace, key: &[u8]) -> Hash {
    let mut h = HashDomain::StateKey.hasher();
    h.update(&[namespace as u8]);
    h.update(key);
    h.finalize()
}

/// Hash of a stored value (committed in its leaf).
pub fn value_hash(value: &[u8]) -> Hash {
    HashDomain::StateValue.hash(value)
}

/// Hash of the leaf of `key` with value hash `value_hash`.
pub fn leaf_hash(key: &Hash, value_hash: &Hash) -> Hash {
    HashDomain::StateLeaf.hash_pair(key, value_hash)
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    HashDomain::StateNode.hash_pair(left, right)
}

/// Where a stored state node is: the height whose block wrote it, and its position among
/// the nodes that block wrote (in the order [`update`] returns them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeRef {
    /// The height whose block wrote the node.
    pub version: u64,
    /// The node's position among that block's new nodes.
    pub index: u32,
}

/// A subtree: the hash of its top node and where that node is stored. The empty subtree
/// ([`EMPTY_ROOT`]) is stored nowhere; its location is zero and never read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Subtree {
    /// The subtree's hash.
    pub hash: Hash,
    /// Where its top node is stored.
    pub at: NodeRef,
}

impl Subtree {
    /// The empty tree.
    pub const EMPTY: Subtree = Subtree {
        hash: EMPTY_ROOT,
        at: NodeRef {
            version: 0,
            index: 0,
        },
    };

    /// Whether this is the empty subtree.
    pub fn is_empty(&self) -> bool {
        self.hash == EMPTY_ROOT
    }
}

impl Encode for Subtree {
    fn encode(&self, out: &mut Vec<u8>) {
        self.hash.encode(out);
        out.extend_from_slice(&self.at.version.to_be_bytes());
        out.extend_from_slice(&self.at.index.to_be_bytes());
    }
}

impl Decode for Subtree {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        Ok(Subtree {
            hash: d.hash("subtree hash")?,
            at: NodeRef {
                version: d.u64("subtree version")?,
                index: d.u32("subtree index")?,
            },
        })
    }
}

/// A stored node of the state tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateNode {
    /// A key and its value.
    Leaf {
        /// The tree key.
        key: Hash,
        /// The value.
        value: Vec<u8>,
    },
    /// An inner node (either child may be [`EMPTY_ROOT`], not both).
    Internal {
        /// The subtree whose next key bit is 0.
        left: Subtree,
        /// The subtree whose next key bit is 1.
        right: Subtree,
    },
}

impl StateNode {
    /// The node's hash (children's locations are not part of it).
    pub fn hash(&self) -> Hash {
        match self {
            StateNode::Leaf { key, value } => leaf_hash(key, &value_hash(value)),
            StateNode::Internal { left, right } => node_hash(&left.hash, &right.hash),
        }
    }
}

impl Encode for StateNode {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            StateNode::Leaf { key, value } => {
                out.push(1);
                key.encode(out);
                put_bytes(out, value);
            }
            StateNode::Internal { left, right } => {
                out.push(2);
                left.encode(out);
                right.encode(out);
            }
        }
    }
}

impl Decode for StateNode {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        match d.u8("state node tag")? {
            1 => Ok(StateNode::Leaf {
                key: d.hash("leaf key")?,
                value: d.bytes("leaf value", MAX_STATE_VALUE_BYTES)?.to_vec(),
            }),
            2 => Ok(StateNode::Internal {
                left: Subtree::decode(d)?,
                right: Subtree::decode(d)?,
            }),
            tag => Err(CodecError::BadTag {
                what: "state node",
                tag,
            }),
        }
    }
}

/// Read access to stored state nodes.
pub trait StateNodes {
    /// The node stored at `node.at`, if any. A store must return
    /// [`StoreError::Corrupt`] rather than a node whose hash is not `node.hash`
    /// ([`check_node`]).
    fn state_node(&self, node: &Subtree) -> Result<Option<StateNode>, StoreError>;

    /// [`StateNodes::state_node`] for a node the caller reached from a root: it is at
    /// `depth` on the path of `key` (its place in the tree is the first `depth` bits of
    /// `key`). A store may keep nodes by their place; the default ignores it. The walks
    /// of this module ([`get`], [`update`], [`prove`]) read through this.
    fn state_node_on_path(
        &self,
        node: &Subtree,
        depth: usize,
        key: &Hash,
    ) -> Result<Option<StateNode>, StoreError> {
        let _ = (depth, key);
        self.state_node(node)
    }
}

/// `stored` if its hash is `expected.hash`, else the corruption error stores return.
pub fn check_node(expected: &Subtree, stored: StateNode) -> Result<StateNode, StoreError> {
    let hash = stored.hash();
    if hash == expected.hash {
        Ok(stored)
    } else {
        Err(StoreError::Corrupt {
            what: "state node",
            reason: format!(
                "the node at version {} index {} has hash {hash}, expected {}",
                expected.at.version, expected.at.index, expected.hash
            ),
        })
    }
}

fn load<S: StateNodes + ?Sized>(store: &S, node: &Subtree) -> Result<StateNode, StoreError> {
    found(node, store.state_node(node)?)
}

/// [`load`] of the node at `depth` on `key`'s path ([`StateNodes::state_node_on_path`]).
fn load_on_path<S: StateNodes + ?Sized>(
    store: &S,
    node: &Subtree,
    depth: usize,
    key: &Hash,
) -> Result<StateNode, StoreError> {
    found(node, store.state_node_on_path(node, depth, key)?)
}

fn found(node: &Subtree, stored: Option<StateNode>) -> Result<StateNode, StoreError> {
    stored.ok_or_else(|| StoreError::MissingNode {
        what: "state node",
        at: format!(
            "{} (version {} index {})",
            node.hash, node.at.version, node.at.index
        ),
    })
}

/// State nodes in memory (tests and tools).
#[derive(Clone, Debug, Default)]
pub struct MemState {
    nodes: HashMap<NodeRef, StateNode>,
}

impl MemState {
    /// An empty store.
    pub fn new() -> MemState {
        MemState::default()
    }

    /// Stores nodes returned by [`update`].
    pub fn insert_all(&mut self, nodes: Vec<(Subtree, StateNode)>) {
        self.nodes
            .extend(nodes.into_iter().map(|(at, node)| (at.at, node)));
    }

    /// Number of stored nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is stored.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

impl StateNodes for MemState {
    fn state_node(&self, node: &Subtree) -> Result<Option<StateNode>, StoreError> {
        self.nodes
            .get(&node.at)
            .map(|stored| check_node(node, stored.clone()))
            .transpose()
    }
}

/// The value of `key` in the tree `root`.
pub fn get<S: StateNodes + ?Sized>(
    store: &S,
    root: &Subtree,
    key: &Hash,
) -> Result<Option<Vec<u8>>, StoreError> {
    let mut current = *root;
    let mut depth = 0;
    while !current.is_empty() {
        match load_on_path(store, &current, depth, key)? {
            StateNode::Leaf { key: k, value } => return Ok((k == *key).then_some(value)),
            StateNode::Internal { left, right } => {
                current = if key.bit(depth) { right } else { left };
                depth += 1;
            }
        }
    }
    Ok(None)
}

/// What a subtree became after an update: its hash, and its leaf if it is a lone leaf
/// (lone leaves move up to replace a parent whose other child is empty).
#[derive(Clone)]
enum Sub {
    Empty,
    Leaf(Subtree),
    Internal(Subtree),
    /// A non-empty subtree no update reached, whose kind is read only if it matters:
    /// when its sibling became empty, a lone leaf moves up. Without deletions it never
    /// does, and the siblings of the updated paths (about one per level of a path below
    /// the levels a block's updates share) are not read at all.
    Untouched(Subtree),
}

impl Sub {
    fn tree(&self) -> Subtree {
        match self {
            Sub::Empty => Subtree::EMPTY,
            Sub::Leaf(t) | Sub::Internal(t) | Sub::Untouched(t) => *t,
        }
    }
}

/// The new nodes of one block, numbered in order at one version, and the old nodes they
/// replace.
struct Writes {
    version: u64,
    nodes: Vec<(Subtree, StateNode)>,
    replaced: Vec<NodeRef>,
}

/// What [`update_tracked`] did to a tree.
#[derive(Clone, Debug)]
pub struct Update {
    /// The new root.
    pub root: Subtree,
    /// The new nodes to store, at the update's version and indices 0, 1, 2... in order.
    pub writes: Vec<(Subtree, StateNode)>,
    /// Where the old tree's nodes that the new tree no longer holds are stored: exactly
    /// the nodes reachable from the old root and not from the new one. They stay valid
    /// for the old roots; a cache of the nodes reads at the tip use can drop them.
    pub replaced: Vec<NodeRef>,
}

/// Applies `updates` (key → new value, `None` = delete) to the tree `root`, as the block
/// at height `version`. Returns the new root and the new nodes to store, at `version` and
/// indices 0, 1, 2... in order (old nodes stay valid for old roots).
pub fn update<S: StateNodes + ?Sized>(
    store: &S,
    root: &Subtree,
    version: u64,
    updates: &BTreeMap<Hash, Option<Vec<u8>>>,
) -> Result<(Subtree, Vec<(Subtree, StateNode)>), StoreError> {
    let Update { root, writes, .. } = update_tracked(store, root, version, updates)?;
    Ok((root, writes))
}

/// [`update`], also saying which of the old tree's nodes the new tree no longer holds.
pub fn update_tracked<S: StateNodes + ?Sized>(
    store: &S,
    root: &Subtree,
    version: u64,
    updates: &BTreeMap<Hash, Option<Vec<u8>>>,
) -> Result<Update, StoreError> {
    let updates: Vec<(&Hash, &Option<Vec<u8>>)> = updates.iter().collect();
    let mut writes = Writes {
        version,
        nodes: Vec::new(),
        replaced: Vec::new(),
    };
    let sub = update_at(store, *root, 0, &updates, &mut writes)?;
    Ok(Update {
        root: sub.tree(),
        writes: writes.nodes,
        replaced: writes.replaced,
    })
}

fn put(writes: &mut Writes, node: StateNode) -> Subtree {
    let at = Subtree {
        hash: node.hash(),
        at: NodeRef {
            version: writes.version,
            index: writes.nodes.len() as u32,
        },
    };
    writes.nodes.push((at, node));
    at
}

fn update_at<S: StateNodes + ?Sized>(
    store: &S,
    current: Subtree,
    depth: usize,
    updates: &[(&Hash, &Option<Vec<u8>>)],
    writes: &mut Writes,
) -> Result<Sub, StoreError> {
    if updates.is_empty() {
        return Ok(if current.is_empty() {
            Sub::Empty
        } else {
            Sub::Untouched(current)
        });
    }
    if current.is_empty() {
        let leaves: Vec<(&Hash, &[u8])> = updates
            .iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
            .collect();
        return Ok(build(depth, &leaves, None, writes));
    }
    // Every update here shares the first `depth` bits: the node's place.
    match load_on_path(store, &current, depth, updates[0].0)? {
        StateNode::Leaf { key, value } => {
            // Merge the existing leaf into the updates unless an update replaces it.
            let mut leaves: Vec<(&Hash, &[u8])> = updates
                .iter()
                .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
                .collect();
            if !updates.iter().any(|(k, _)| **k == key) {
                let pos = leaves.partition_point(|(k, _)| **k < key);
                leaves.insert(pos, (&key, value.as_slice()));
                if leaves.len() == 1 {
                    return Ok(Sub::Leaf(current));
                }
                // The stored leaf moves down among the new ones, and keeps its node: a
                // leaf's hash does not depend on its depth, and a node is found by the
                // location its parent names. Writing it again would cost a node, a
                // cache entry and its value's bytes on disk for every key inserted
                // beside one.
                return Ok(build(depth, &leaves, Some((&key, current)), writes));
            }
            writes.replaced.push(current.at);
            Ok(build(depth, &leaves, None, writes))
        }
        StateNode::Internal { left, right } => {
            // With updates below it, an internal node is always rewritten (or collapses).
            writes.replaced.push(current.at);
            let split = updates.partition_point(|(k, _)| !k.bit(depth));
            let l = update_at(store, left, depth + 1, &updates[..split], writes)?;
            let r = update_at(store, right, depth + 1, &updates[split..], writes)?;
            let (l, r) = match (l, r) {
                (Sub::Untouched(t), Sub::Empty) => (kind(store, t)?, Sub::Empty),
                (Sub::Empty, Sub::Untouched(t)) => (Sub::Empty, kind(store, t)?),
                pair => pair,
            };
            Ok(join(l, r, writes))
        }
    }
}

/// An untouched subtree as a leaf or an internal node, read from the store.
fn kind<S: StateNodes + ?Sized>(store: &S, tree: Subtree) -> Result<Sub, StoreError> {
    Ok(match load(store, &tree)? {
        StateNode::Leaf { .. } => Sub::Leaf(tree),
        StateNode::Internal { .. } => Sub::Internal(tree),
    })
}

/// A parent of two updated subtrees, collapsing a lone leaf upwards.
fn join(l: Sub, r: Sub, writes: &mut Writes) -> Sub {
    match (&l, &r) {
        (Sub::Empty, Sub::Empty) => Sub::Empty,
        (Sub::Leaf(_), Sub::Empty) => l,
        (Sub::Empty, Sub::Leaf(_)) => r,
        _ => Sub::Internal(put(
            writes,
            StateNode::Internal {
                left: l.tree(),
                right: r.tree(),
            },
        )),
    }
}

/// The subtree at `depth` holding exactly `leaves` (sorted by key, distinct). `stored`
/// names one of them that is stored already, at that location, with that value: it is
/// used where it is rather than written again.
fn build(
    depth: usize,
    leaves: &[(&Hash, &[u8])],
    stored: Option<(&Hash, Subtree)>,
    writes: &mut Writes,
) -> Sub {
    match leaves {
        [] => Sub::Empty,
        [(key, value)] => match stored {
            Some((k, at)) if k == *key => Sub::Leaf(at),
            _ => Sub::Leaf(put(
                writes,
                StateNode::Leaf {
                    key: **key,
                    value: value.to_vec(),
                },
            )),
        },
        _ => {
            let split = leaves.partition_point(|(k, _)| !k.bit(depth));
            let l = build(depth + 1, &leaves[..split], stored, writes);
            let r = build(depth + 1, &leaves[split..], stored, writes);
            join(l, r, writes)
        }
    }
}

/// Proof of a key's value, or of its absence, against a state root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateProof {
    /// The leaf at the end of the key's path: `(key, value hash)`, or `None` if the path
    /// ends in an empty subtree.
    pub leaf: Option<(Hash, Hash)>,
    /// Sibling hashes from the root down to the end of the path.
    pub siblings: Vec<Hash>,
}

impl Encode for StateProof {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(1);
        match &self.leaf {
            None => out.push(0),
            Some((k, v)) => {
                out.push(1);
                k.encode(out);
                v.encode(out);
            }
        }
        crate::codec::put_seq(out, &self.siblings);
    }
}

impl Decode for StateProof {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.version("state proof", 1)?;
        let leaf = if d.bool("proof leaf")? {
            Some((d.hash("leaf key")?, d.hash("leaf value")?))
        } else {
            None
        };
        Ok(StateProof {
            leaf,
            siblings: d.seq("siblings", 256)?,
        })
    }
}

/// Builds the proof for `key` in the tree `root`, with the value if present.
pub fn prove<S: StateNodes + ?Sized>(
    store: &S,
    root: &Subtree,
    key: &Hash,
) -> Result<(Option<Vec<u8>>, StateProof), StoreError> {
    let mut siblings = Vec::new();
    let mut current = *root;
    while !current.is_empty() {
        match load_on_path(store, &current, siblings.len(), key)? {
            StateNode::Leaf { key: k, value } => {
                let proof = StateProof {
                    leaf: Some((k, value_hash(&value))),
                    siblings,
                };
                return Ok(((k == *key).then_some(value), proof));
            }
            StateNode::Internal { left, right } => {
                let (next, sibling) = if key.bit(siblings.len()) {
                    (right, left)
                } else {
                    (left, right)
                };
                siblings.push(sibling.hash);
                current = next;
            }
        }
    }
    Ok((
        None,
        StateProof {
            leaf: None,
            siblings,
        },
    ))
}

/// Why a state proof was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateProofError {
    /// More siblings than key bits.
    #[error("state proof has {0} siblings, more than 256")]
    TooLong(usize),
    /// The proof's leaf is another key whose path does not cover the queried key.
    #[error("proof leaf is for another key that does not share the proven path")]
    LeafNotOnPath,
    /// A value was claimed but the proof shows none, or another value.
    #[error("the proof does not show the claimed value")]
    ValueMismatch,
    /// Absence was claimed but the proof shows the key with a value.
    #[error("the key is present, not absent")]
    KeyPresent,
    /// The recomputed root differs.
    #[error("recomputed state root {computed} does not match {expected}")]
    RootMismatch {
        /// Root the proof leads to.
        computed: Hash,
        /// Root it should lead to.
        expected: Hash,
    },
}

/// Checks that `key` has `value` (or, with `None`, is absent) in the tree with `root`.
pub fn verify_state_proof(
    root: &Hash,
    key: &Hash,
    value: Option<&[u8]>,
    proof: &StateProof,
) -> Result<(), StateProofError> {
    let depth = proof.siblings.len();
    if depth > 256 {
        return Err(StateProofError::TooLong(depth));
    }
    let mut current = match (&proof.leaf, value) {
        (Some((k, vh)), Some(v)) => {
            if k != key || *vh != value_hash(v) {
                return Err(StateProofError::ValueMismatch);
            }
            leaf_hash(k, vh)
        }
        (Some((k, vh)), None) => {
            if k == key {
                return Err(StateProofError::KeyPresent);
            }
            // Another key's leaf proves absence only if it sits on our key's path.
            if (0..depth).any(|i| k.bit(i) != key.bit(i)) {
                return Err(StateProofError::LeafNotOnPath);
            }
            leaf_hash(k, vh)
        }
        (None, Some(_)) => return Err(StateProofError::ValueMismatch),
        (None, None) => EMPTY_ROOT,
    };
    for (i, sibling) in proof.siblings.iter().enumerate().rev() {
        current = if key.bit(i) {
            node_hash(sibling, &current)
        } else {
            node_hash(&current, sibling)
        };
    }
    if current != *root {
        return Err(StateProofError::RootMismatch {
            computed: current,
            expected: *root,
        });
    }
    Ok(())
}
