//! The append-only log: an RFC 9162 Merkle tree over every transaction hash since genesis.
//!
//! The tree is stored as the roots of its *complete* subtrees: node `(level, index)` is the
//! root of entries `[index * 2^level, (index + 1) * 2^level)`, written once when its last
//! entry arrives and never changed. Appending an entry writes the leaf and one node per
//! trailing one bit of its index (O(1) amortised). Any root, inclusion proof or
//! consistency proof for any size up to the current one is assembled from those nodes
//! with O(log n) reads, following RFC 6962 §2.1.1–2.1.2 (`MTH`, `PATH`, `SUBPROOF`).
//!
//! The tree reads nodes through [`LogNodes`], which storage implements; appends return the
//! nodes to write so the caller can put them in the same atomic batch as the block.

use std::collections::HashMap;

use crate::merkle::{TreeHasher, split_point};
use crate::{Hash, StoreError};

/// Position of a stored log node: the complete subtree of `2^level` entries at `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// Height above the leaves (0 = leaf).
    pub level: u8,
    /// Index among the nodes of that level.
    pub index: u64,
}

/// Read access to stored log nodes.
pub trait LogNodes {
    /// The node at `id`, if stored.
    fn log_node(&self, id: NodeId) -> Result<Option<Hash>, StoreError>;
}

/// Log nodes in memory (tests, tools, and the overlay of an uncommitted block).
#[derive(Clone, Debug, Default)]
pub struct MemLog {
    nodes: HashMap<NodeId, Hash>,
    size: u64,
}

impl MemLog {
    /// An empty log.
    pub fn new() -> MemLog {
        MemLog::default()
    }

    /// Number of entries.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends entries (transaction hashes).
    pub fn append(&mut self, entries: &[Hash]) -> Result<(), StoreError> {
        let writes = append(self, self.size, entries)?;
        self.nodes.extend(writes);
        self.size += entries.len() as u64;
        Ok(())
    }

    /// The root at `size` (at most the current size).
    pub fn root(&self, size: u64) -> Result<Hash, StoreError> {
        root(self, size)
    }
}

impl LogNodes for MemLog {
    fn log_node(&self, id: NodeId) -> Result<Option<Hash>, StoreError> {
        Ok(self.nodes.get(&id).copied())
    }
}

struct Overlay<'a, S: ?Sized> {
    base: &'a S,
    pending: HashMap<NodeId, Hash>,
}

impl<S: LogNodes + ?Sized> LogNodes for Overlay<'_, S> {
    fn log_node(&self, id: NodeId) -> Result<Option<Hash>, StoreError> {
        match self.pending.get(&id) {
            Some(h) => Ok(Some(*h)),
            None => self.base.log_node(id),
        }
    }
}

fn node<S: LogNodes + ?Sized>(store: &S, id: NodeId) -> Result<Hash, StoreError> {
    store.log_node(id)?.ok_or(StoreError::MissingNode {
        what: "log node",
        at: format!("level {} index {}", id.level, id.index),
    })
}

/// Appends `entries` to a log of `size` entries; returns the nodes to store.
pub fn append<S: LogNodes + ?Sized>(
    store: &S,
    size: u64,
    entries: &[Hash],
) -> Result<Vec<(NodeId, Hash)>, StoreError> {
    let tree = TreeHasher::LOG_TREE;
    let mut overlay = Overlay {
        base: store,
        pending: HashMap::new(),
    };
    let mut writes = Vec::with_capacity(entries.len() * 2);
    for (i, entry) in entries.iter().enumerate() {
        let mut id = NodeId {
            level: 0,
            index: size + i as u64,
        };
        let mut hash = tree.leaf(entry);
        loop {
            overlay.pending.insert(id, hash);
            writes.push((id, hash));
            if id.index & 1 == 0 {
                break;
            }
            let left = node(
                &overlay,
                NodeId {
                    level: id.level,
                    index: id.index - 1,
                },
            )?;
            hash = tree.node(&left, &hash);
            id = NodeId {
                level: id.level + 1,
                index: id.index >> 1,
            };
        }
    }
    Ok(writes)
}

/// Appends `entries` and returns the nodes to store with the root after the append.
pub fn append_with_root<S: LogNodes + ?Sized>(
    store: &S,
    size: u64,
    entries: &[Hash],
) -> Result<(Vec<(NodeId, Hash)>, Hash), StoreError> {
    let writes = append(store, size, entries)?;
    let overlay = Overlay {
        base: store,
        pending: writes.iter().copied().collect(),
    };
    let root = root(&overlay, size + entries.len() as u64)?;
    Ok((writes, root))
}

/// Root of the `len` entries starting at `start` (`start` is a multiple of the largest
/// power of two not above `len`, as in every RFC 6962 recursion).
fn subtree<S: LogNodes + ?Sized>(store: &S, start: u64, len: u64) -> Result<Hash, StoreError> {
    if len.is_power_of_two() && start.is_multiple_of(len) {
        let level = len.trailing_zeros() as u8;
        return node(
            store,
            NodeId {
                level,
                index: start >> level,
            },
        );
    }
    let k = split_point(len);
    let left = subtree(store, start, k)?;
    let right = subtree(store, start + k, len - k)?;
    Ok(TreeHasher::LOG_TREE.node(&left, &right))
}

/// The root of the first `size` entries (RFC 6962 `MTH`).
pub fn root<S: LogNodes + ?Sized>(store: &S, size: u64) -> Result<Hash, StoreError> {
    if size == 0 {
        return Ok(TreeHasher::LOG_TREE.empty_root());
    }
    subtree(store, 0, size)
}

/// Inclusion proof of entry `index` in the tree of the first `size` entries (RFC 6962
/// `PATH`), bottom-up. The caller guarantees `index < size <= current size`.
pub fn inclusion_proof<S: LogNodes + ?Sized>(
    store: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, StoreError> {
    if index >= size {
        return Err(StoreError::OutOfRange {
            what: "log index",
            value: index,
            limit: size,
        });
    }
    let mut out = Vec::new();
    path(store, index, 0, size, &mut out)?;
    Ok(out)
}

fn path<S: LogNodes + ?Sized>(
    store: &S,
    m: u64,
    start: u64,
    n: u64,
    out: &mut Vec<Hash>,
) -> Result<(), StoreError> {
    if n == 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < k {
        path(store, m, start, k, out)?;
        out.push(subtree(store, start + k, n - k)?);
    } else {
        path(store, m - k, start + k, n - k, out)?;
        out.push(subtree(store, start, k)?);
    }
    Ok(())
}

/// Consistency proof from the first `old_size` entries to the first `new_size` (RFC 6962
/// `PROOF`); empty when `old_size` is 0 or equal to `new_size`.
pub fn consistency_proof<S: LogNodes + ?Sized>(
    store: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, StoreError> {
    if old_size > new_size {
        return Err(StoreError::OutOfRange {
            what: "old log size",
            value: old_size,
            limit: new_size,
        });
    }
    let mut out = Vec::new();
    if old_size > 0 && old_size < new_size {
        subproof(store, old_size, 0, new_size, true, &mut out)?;
    }
    Ok(out)
}

fn subproof<S: LogNodes + ?Sized>(
    store: &S,
    m: u64,
    start: u64,
    n: u64,
    complete: bool,
    out: &mut Vec<Hash>,
) -> Result<(), StoreError> {
    if m == n {
        if !complete {
            out.push(subtree(store, start, n)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(store, m, start, k, complete, out)?;
        out.push(subtree(store, start + k, n - k)?);
    } else {
        subproof(store, m - k, start + k, n - k, false, out)?;
        out.push(subtree(store, start, k)?);
    }
    Ok(())
}
