//! The state tree's upper levels in memory, by their place in the tree.
//!
//! Every read and write walks the state tree from its root to a key's leaf, and the keys
//! of notarizations are hashes, spread evenly over the tree: with `N` keys a path is about
//! `log2 N + 1` nodes long. A cache of recently used nodes
//! ([`RecentNodes`](crate::recent::RecentNodes)) keeps the levels every few thousand
//! transactions pass through, but a node at depth 18 is on the path of one key in
//! 262,144, so it is read again only long after such a cache dropped it. Once the tree
//! held some 400,000 keys, each transaction of a validator read four or five nodes from
//! sled that way, and a fifth of its CPU went to those reads (docs/PERFORMANCE.md).
//!
//! [`UpperNodes`] keeps one internal node for each place in the top `levels` levels of
//! the tree, in an array where the place's index is computed from the path, with no key
//! and no hashing: of the nodes written or read there, the one of the highest version.
//! The tip's node at a place is the last written there, so it is always kept once
//! written or read, and a node an older root's walk reads never displaces it. There are
//! at most `2^levels - 1` places, so its memory has a bound that does not grow with the
//! tree. A node is returned only for the exact location asked for (and its hash is then
//! checked), so an entry left at a place that the tip's tree no longer uses is still the
//! node stored at its location: a stored node never changes.
//!
//! Memory is taken a chunk of places at a time as commits first write into it, or all at
//! once by [`UpperNodes::prefault`].

use pyralog_ledger::Hash;
use pyralog_ledger::state::{NodeRef, StateNode, Subtree};

/// Places per chunk of memory (each 144 bytes: a chunk is 576 KiB).
const CHUNK: usize = 4096;

/// An internal node at its place: where it is stored, its hash and its children.
#[derive(Clone, Copy, Default)]
struct Slot {
    /// Version 0 (no stored node has it) marks an empty slot.
    at: NodeRef,
    hash: Hash,
    left: Subtree,
    right: Subtree,
}

/// Bytes a place takes.
pub const BYTES_PER_PLACE: usize = std::mem::size_of::<Slot>();

/// The top levels of the state tree, by place ([module docs](self)).
pub struct UpperNodes {
    levels: usize,
    chunks: Vec<Option<Box<[Slot]>>>,
}

impl UpperNodes {
    /// Room for the nodes at depths `0..levels` (at most 32 levels).
    pub fn new(levels: usize) -> UpperNodes {
        let levels = levels.min(32).min(usize::BITS as usize - 2);
        let places = (1usize << levels) - 1;
        UpperNodes {
            levels,
            chunks: (0..places.div_ceil(CHUNK)).map(|_| None).collect(),
        }
    }

    /// The most levels whose places fit in `bytes`.
    pub fn levels_for(bytes: usize) -> usize {
        (0..32)
            .take_while(|&l| ((1usize << (l + 1)) - 1).saturating_mul(BYTES_PER_PLACE) <= bytes)
            .last()
            .map_or(0, |l| l + 1)
    }

    /// The levels kept.
    pub fn levels(&self) -> usize {
        self.levels
    }

    /// The bytes the places take once all are used.
    pub fn bytes(&self) -> usize {
        ((1usize << self.levels) - 1) * BYTES_PER_PLACE
    }

    /// The index of the place at `depth` on `key`'s path, if kept.
    fn place(&self, depth: usize, key: &Hash) -> Option<usize> {
        // Paths run to 256 bits; only the kept depths (at most 32) have places, and
        // `prefix` takes fewer than 64.
        if depth >= self.levels {
            return None;
        }
        self.place_of(depth, prefix(key, depth))
    }

    /// The index of the place at `depth` whose path bits are `bits`, if kept.
    fn place_of(&self, depth: usize, bits: usize) -> Option<usize> {
        (depth < self.levels).then(|| (1usize << depth) - 1 + bits)
    }

    /// The internal node stored at `node.at`, if it is the one kept at `depth` on `key`'s
    /// path. A kept node under the location asked for whose hash differs is returned as
    /// it is, for the caller's hash check to report.
    pub fn get(&self, node: &Subtree, depth: usize, key: &Hash) -> Option<(Hash, StateNode)> {
        let i = self.place(depth, key)?;
        let slot = self.chunks[i / CHUNK].as_ref()?[i % CHUNK];
        (slot.at == node.at && slot.at.version != 0).then_some((
            slot.hash,
            StateNode::Internal {
                left: slot.left,
                right: slot.right,
            },
        ))
    }

    /// Keeps `node` (stored at `at`) at `depth` on `key`'s path if it is internal, the
    /// depth is kept, and the place holds no node of the same or a higher version (the
    /// tip's node at a place has the highest: see the [module docs](self)). Returns
    /// whether the node is kept; not if the place's memory could not be allocated.
    pub fn put(&mut self, at: &Subtree, node: &StateNode, depth: usize, key: &Hash) -> bool {
        match self.place(depth, key) {
            Some(i) => self.put_at(i, at, node),
            None => false,
        }
    }

    /// [`UpperNodes::put`] at place index `i`.
    fn put_at(&mut self, i: usize, at: &Subtree, node: &StateNode) -> bool {
        let StateNode::Internal { left, right } = node else {
            return false;
        };
        if at.at.version == 0 {
            return false;
        }
        let chunk = &mut self.chunks[i / CHUNK];
        if chunk.is_none() {
            *chunk = new_chunk();
        }
        let Some(chunk) = chunk else {
            return false;
        };
        let slot = &mut chunk[i % CHUNK];
        if slot.at.version >= at.at.version {
            return false;
        }
        *slot = Slot {
            at: at.at,
            hash: at.hash,
            left: *left,
            right: *right,
        };
        true
    }

    /// Keeps the internal nodes a commit wrote at the kept depths: `writes` are a
    /// block's new nodes at `version`, children before parents (as
    /// [`pyralog_ledger::state::update`] returns them), and `root` the tree's new root.
    /// Their places are found from the root down. Returns how many are kept; the others
    /// (leaves, deeper nodes) are for the caller to cache otherwise, marked `false` in
    /// the returned flags.
    pub fn put_writes(
        &mut self,
        version: u64,
        root: &Subtree,
        writes: &[(Subtree, StateNode)],
    ) -> Vec<bool> {
        let mut kept = vec![false; writes.len()];
        // The place of each written node reached from the root: its depth and path bits.
        let mut places: Vec<Option<(usize, usize)>> = vec![None; writes.len()];
        if root.at.version == version
            && let Some(p) = places.get_mut(root.at.index as usize)
        {
            *p = Some((0, 0));
        }
        for i in (0..writes.len()).rev() {
            let Some((depth, bits)) = places[i] else {
                continue;
            };
            let Some(place) = self.place_of(depth, bits) else {
                continue;
            };
            let (at, node) = &writes[i];
            kept[i] = self.put_at(place, at, node);
            let StateNode::Internal { left, right } = node else {
                continue;
            };
            for (child, bit) in [(left, 0), (right, 1)] {
                let index = child.at.index as usize;
                // Children come before their parent; anything else is not this shape.
                if child.at.version == version && !child.is_empty() && index < i {
                    places[index] = Some((depth + 1, (bits << 1) | bit));
                }
            }
        }
        kept
    }

    /// Takes all the places' memory now, so that commits do not wait for the kernel to
    /// zero it page by page. Returns whether anything was taken; it stops at the first
    /// allocation that fails (places then take memory as they are first used).
    pub fn prefault(&mut self) -> bool {
        let mut any = false;
        for chunk in self.chunks.iter_mut().filter(|c| c.is_none()) {
            *chunk = new_chunk();
            if chunk.is_none() {
                break;
            }
            any = true;
        }
        any
    }

    /// How many places hold a node (tests).
    pub fn len(&self) -> usize {
        self.chunks
            .iter()
            .flatten()
            .map(|c| c.iter().filter(|s| s.at.version != 0).count())
            .sum()
    }

    /// Whether no place holds a node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A chunk of empty places, written (so mapped) now; `None` if it cannot be allocated.
fn new_chunk() -> Option<Box<[Slot]>> {
    let mut chunk = Vec::new();
    chunk.try_reserve_exact(CHUNK).ok()?;
    chunk.resize(CHUNK, Slot::default());
    Some(chunk.into_boxed_slice())
}

/// The first `depth` bits of `key` as a number (`depth` < 64).
fn prefix(key: &Hash, depth: usize) -> usize {
    if depth == 0 {
        return 0;
    }
    let mut top = [0u8; 8];
    top.copy_from_slice(&key.0[..8]);
    (u64::from_be_bytes(top) >> (64 - depth)) as usize
}

/// Sets bit `index` of `key` (0 = the first byte's most significant bit).
#[cfg(test)]
pub(crate) fn set_bit(key: &mut Hash, index: usize, bit: bool) {
    let mask = 1u8 << (7 - index % 8);
    if bit {
        key.0[index / 8] |= mask;
    } else {
        key.0[index / 8] &= !mask;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyralog_ledger::state::{self, MemState, StateNodes};
    use std::collections::BTreeMap;

    fn key(i: u32) -> Hash {
        state::value_hash(&i.to_be_bytes())
    }

    /// Every internal node of the tree `root` at depth < `levels`, with a key on its path.
    fn upper_nodes(
        store: &MemState,
        root: &Subtree,
        levels: usize,
    ) -> Vec<(Subtree, usize, Hash, StateNode)> {
        let mut out = Vec::new();
        let mut stack = vec![(*root, 0usize, Hash::ZERO)];
        while let Some((tree, depth, path)) = stack.pop() {
            if tree.is_empty() || depth >= levels {
                continue;
            }
            let node = store.state_node(&tree).unwrap().unwrap();
            if let StateNode::Internal { left, right } = &node {
                let mut l = path;
                set_bit(&mut l, depth, false);
                let mut r = path;
                set_bit(&mut r, depth, true);
                stack.push((*left, depth + 1, l));
                stack.push((*right, depth + 1, r));
                out.push((tree, depth, path, node));
            }
        }
        out
    }

    #[test]
    fn levels_fit_the_budget() {
        assert_eq!(BYTES_PER_PLACE, 144);
        assert_eq!(UpperNodes::levels_for(0), 0);
        assert_eq!(UpperNodes::levels_for(143), 0);
        assert_eq!(UpperNodes::levels_for(144), 1);
        assert_eq!(UpperNodes::levels_for(3 * 144), 2);
        let l = UpperNodes::levels_for(128 << 20);
        assert_eq!(l, 19);
        assert!(UpperNodes::new(l).bytes() <= 128 << 20);
        assert!(UpperNodes::new(l + 1).bytes() > 128 << 20);
        assert_eq!(UpperNodes::new(40).levels(), 32);
    }

    #[test]
    fn places_are_the_path_bits() {
        let upper = UpperNodes::new(4);
        let mut k = Hash::ZERO;
        assert_eq!(upper.place(0, &k), Some(0));
        assert_eq!(upper.place(1, &k), Some(1));
        set_bit(&mut k, 0, true);
        assert_eq!(upper.place(1, &k), Some(2));
        set_bit(&mut k, 2, true);
        // Depth 3: bits 1 0 1 → 5, after the 7 places above it.
        assert_eq!(upper.place(3, &k), Some(7 + 5));
        assert_eq!(upper.place(4, &k), None);
        assert_eq!(prefix(&Hash([0xff; 32]), 63), (1usize << 63) - 1);
    }

    /// After each block, the kept places hold exactly the tip's internal nodes at the
    /// kept depths (none missing, none of an older tree under a place the tip uses), and
    /// a walk by path finds every one of them.
    #[test]
    fn commits_keep_the_tips_upper_nodes_at_their_places() {
        let levels = 6;
        let mut upper = UpperNodes::new(levels);
        let mut store = MemState::new();
        let mut root = Subtree::EMPTY;
        let mut next = 0u32;
        for version in 1..=40u64 {
            let mut updates = BTreeMap::new();
            for _ in 0..(version as u32 * 3) {
                updates.insert(key(next), Some(vec![version as u8]));
                next += 1;
            }
            // Some deletions, so that leaves move up and places empty.
            if version % 5 == 0 {
                for i in (0..next).step_by(7) {
                    updates.insert(key(i), None);
                }
            }
            let up = state::update_tracked(&store, &root, version, &updates).unwrap();
            let kept = upper.put_writes(version, &up.root, &up.writes);
            for ((at, node), kept) in up.writes.iter().zip(&kept) {
                if *kept {
                    assert!(matches!(node, StateNode::Internal { .. }), "{at:?}");
                }
            }
            store.insert_all(up.writes);
            root = up.root;
            let tip = upper_nodes(&store, &root, levels);
            // The kept nodes this commit wrote are among the tip's.
            assert!(kept.iter().filter(|k| **k).count() <= tip.len());
            for (tree, depth, path, node) in &tip {
                let (hash, found) = upper
                    .get(tree, *depth, path)
                    .unwrap_or_else(|| panic!("version {version}: depth {depth} not kept"));
                assert_eq!(hash, tree.hash);
                assert_eq!(&found, node);
            }
            // Places the tip no longer uses keep nodes of older trees.
            assert!(upper.len() >= tip.len());
        }
        assert!(upper.len() > 20, "{}", upper.len());
    }

    #[test]
    fn a_place_keeps_the_newest_node() {
        let mut upper = UpperNodes::new(3);
        let node = |v: u64| {
            (
                Subtree {
                    hash: key(v as u32),
                    at: NodeRef {
                        version: v,
                        index: 0,
                    },
                },
                StateNode::Internal {
                    left: Subtree::EMPTY,
                    right: Subtree::EMPTY,
                },
            )
        };
        let (a, n) = node(1);
        let (b, _) = node(2);
        let path = Hash::ZERO;
        assert!(upper.put(&b, &n, 2, &path));
        // An older root's node read there does not displace the newer one...
        assert!(!upper.put(&a, &n, 2, &path));
        assert!(upper.get(&b, 2, &path).is_some());
        assert!(upper.get(&a, 2, &path).is_none());
        // ...and a newer one does.
        let (c, _) = node(3);
        assert!(upper.put(&c, &n, 2, &path));
        assert!(upper.get(&c, 2, &path).is_some());
        assert!(upper.get(&b, 2, &path).is_none());
        // Leaves and places beyond the levels are not kept.
        let leaf = StateNode::Leaf {
            key: path,
            value: vec![],
        };
        assert!(!upper.put(&a, &leaf, 0, &path));
        assert!(!upper.put(&a, &n, 3, &path));
        // Paths deeper than 64 bits (two keys sharing that much) have no place.
        assert!(!upper.put(&a, &n, 200, &path));
        assert!(upper.get(&a, 200, &path).is_none());
        assert_eq!(upper.len(), 1);
        // A prefault takes the chunks not taken yet, and keeps what is held.
        let mut upper = UpperNodes::new(14);
        assert!(upper.put(&a, &n, 0, &path));
        assert_eq!(upper.chunks.iter().flatten().count(), 1);
        assert!(upper.prefault());
        assert_eq!(upper.chunks.iter().flatten().count(), 4);
        assert!(!upper.prefault());
        assert_eq!(upper.len(), 1);
        assert!(upper.get(&a, 0, &path).is_some());
    }
}
