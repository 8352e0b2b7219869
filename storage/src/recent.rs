//! The recently used state nodes that the top levels ([`crate::upper`]) do not hold:
//! leaves, nodes below the top levels, and nodes read without their place.
//!
//! Generations approximate least-recently-used, as [`pyralog_crypto::recent::Recent`]
//! does: a hit in an older generation moves to the young one, and when the young one is
//! full the oldest is emptied and becomes the young one, so a change drops only the
//! oldest quarter (with four generations). Nothing here invalidates an entry: a stored
//! node never changes under its location, and a node a commit replaced is
//! [`RecentNodes::remove`]d only so that it does not take the room of a live one.
//!
//! **Dense.** A generation keeps its nodes in a slab (a vector filled in order, never
//! moved) and, in a hash table, only each node's index in it: 4 bytes a slot.
//! [`Recent`](pyralog_crypto::recent::Recent) keeps its entries (152 bytes for a state
//! node) in the table itself, which has to be sized for twice the entries it holds (a
//! removal leaves a tombstone, and a table that runs out of free slots rehashes) and
//! rounds up to a power of two: 2.3 to 4.6 slots an entry, 350 to 700 bytes a state
//! node. Here a node takes its 152 bytes in the slab, plus 5.7 to 11.4 bytes of table
//! (the table is sized for the slab's length, the only insertions a generation makes).
//! A node removed or moved to the young generation leaves its slab entry unused until
//! its generation is emptied.
//!
//! The slab fills in order, so its memory is mapped by the kernel a page at a time as
//! it fills, rather than all over a table at once: a generation could start unmapped at
//! little cost. A node maps them all when it starts all the same
//! ([`RecentNodes::prefault`]), so that they get huge pages.

use std::collections::VecDeque;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use hashbrown::HashTable;
use pyralog_ledger::Hash;
use pyralog_ledger::state::{NodeRef, StateNode, Subtree};

/// A node in a generation's slab.
struct Slot {
    at: NodeRef,
    hash: Hash,
    node: StateNode,
}

/// What a slab entry holds once its node was removed or moved (no heap memory).
const VACANT: StateNode = StateNode::Internal {
    left: Subtree::EMPTY,
    right: Subtree::EMPTY,
};

/// Bytes a node takes in a generation's slab.
pub const SLOT_BYTES: usize = std::mem::size_of::<Slot>();

/// One generation: the slab and the index of its live entries.
#[derive(Default)]
struct Generation {
    slots: Vec<Slot>,
    index: HashTable<u32>,
}

impl Generation {
    /// The index entry of the node at `at`, if this generation holds it.
    fn find(&self, hash: u64, at: &NodeRef) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(hash, |&i| holds(slots, i, at))
            .map(|&i| i as usize)
    }

    /// Takes the node at `at` out of this generation, if it holds it.
    fn take(&mut self, hash: u64, at: &NodeRef) -> Option<Slot> {
        let Generation { slots, index } = self;
        let entry = index.find_entry(hash, |&i| holds(slots, i, at)).ok()?;
        let (i, _) = entry.remove();
        let slot = slots.get_mut(i as usize)?;
        Some(Slot {
            at: slot.at,
            hash: slot.hash,
            node: std::mem::replace(&mut slot.node, VACANT),
        })
    }

    /// Empties the generation and makes room for `room` nodes (if it can be allocated:
    /// else the slab and table grow as they fill). Returns whether it has that room.
    fn restart(&mut self, room: usize) -> bool {
        let used = !self.slots.is_empty();
        if used && self.index.is_empty() {
            // Every node was removed. `HashTable::clear` leaves an empty table as it is,
            // tombstones included, which would shorten the room of the insertions to
            // come: with an entry in it, it resets every slot. (No entry to hash again
            // if that insertion has to clean the tombstones out first.)
            self.index.insert_unique(0, 0, |_| 0);
        }
        // The index first: it must never name an entry the slab no longer has.
        self.index.clear();
        self.slots.clear();
        let slab = self.slots.try_reserve_exact(room).is_ok();
        // An empty table: no entry to hash again.
        let table = self.index.capacity() >= room || self.index.try_reserve(room, |_| 0).is_ok();
        slab && table
    }

    /// Writes to all of the memory of an empty generation's slab and table, so that
    /// the kernel maps it now (and in huge pages if it grants them: see
    /// [`RecentNodes::prefault`]). Returns whether it has room for `room` nodes.
    fn prefault(&mut self, room: usize) -> bool {
        if !self.restart(room) {
            return false;
        }
        self.slots.resize_with(room, || Slot {
            at: NodeRef::default(),
            hash: Hash([0; 32]),
            node: VACANT,
        });
        self.slots.clear();
        // A placeholder every 1,024 slots of the table (4 KiB of indices): their own
        // slots at first, or a few further. Never found: the table is cleared again.
        let slots = self.index.num_buckets();
        for h in (0..slots as u64).step_by(1024) {
            self.index.insert_unique(h, 0, |_| 0);
        }
        self.index.clear();
        true
    }
}

/// The recently used state nodes ([module docs](self)).
pub struct RecentNodes {
    /// Young first.
    generations: VecDeque<Generation>,
    /// Nodes a generation's slab holds.
    per_generation: usize,
}

impl RecentNodes {
    /// Room for `generations` (at least two) of `per_generation` nodes. It allocates a
    /// generation's memory when the generation is first used.
    pub fn new(per_generation: usize, generations: usize) -> RecentNodes {
        RecentNodes {
            generations: (0..generations.max(2))
                .map(|_| Generation::default())
                .collect(),
            per_generation: per_generation.clamp(1, u32::MAX as usize),
        }
    }

    /// The hash and node stored at `at`, if held.
    pub fn get(&mut self, at: &NodeRef) -> Option<(Hash, StateNode)> {
        let hash = hash_of(at);
        let young = &self.generations[0];
        if let Some(i) = young.find(hash, at) {
            let slot = &young.slots[i];
            return Some((slot.hash, slot.node.clone()));
        }
        let slot = self
            .generations
            .iter_mut()
            .skip(1)
            .find_map(|g| g.take(hash, at))?;
        let found = (slot.hash, slot.node.clone());
        self.push(hash, slot);
        Some(found)
    }

    /// Holds `node`, whose hash is `hash`, under its location `at` (once: a node the
    /// young generation holds already is left as it is). An older generation may hold it
    /// too when two readers missed it at once (the store lets go of the cache while it
    /// reads a page): that copy takes a slab entry until its generation is emptied, and
    /// [`RecentNodes::remove`] takes both.
    pub fn insert(&mut self, at: NodeRef, hash: Hash, node: StateNode) {
        let h = hash_of(&at);
        if self.generations[0].find(h, &at).is_none() {
            self.push(h, Slot { at, hash, node });
        }
    }

    /// Drops the node at `at` from every generation: one that will not be asked for
    /// again (a commit replaced it), so that it does not take the room of one that will.
    pub fn remove(&mut self, at: &NodeRef) {
        let hash = hash_of(at);
        for g in &mut self.generations {
            g.take(hash, at);
        }
    }

    /// Appends `slot` to the young generation, first starting a new one if it is full.
    fn push(&mut self, hash: u64, slot: Slot) {
        let room = self.per_generation;
        if self.generations[0].slots.len() >= room || self.generations[0].slots.capacity() == 0 {
            if !self.generations[0].slots.is_empty() {
                // The oldest generation is emptied and becomes the young one.
                if let Some(oldest) = self.generations.pop_back() {
                    self.generations.push_front(oldest);
                }
            }
            self.generations[0].restart(room);
        }
        let Generation { slots, index } = &mut self.generations[0];
        let i = slots.len() as u32;
        slots.push(slot);
        // The table has room for every entry of the slab: it never rehashes.
        index.insert_unique(hash, i, |&j| {
            #[cfg(test)]
            tests::REHASHED.with(|n| n.set(n.get() + 1));
            slots.get(j as usize).map_or(0, |s| hash_of(&s.at))
        });
    }

    /// Allocates every generation's slab and table now and writes to all of their
    /// memory, so that the kernel maps (and zeroes) it now rather than under the first
    /// loaded blocks, and gives it huge pages while the process takes them: a node does
    /// this when it starts, then turns huge pages off for what it allocates later, and
    /// random lookups over a few hundred megabytes are cheaper on huge pages. Does
    /// nothing once the cache holds anything. Returns whether every generation has its
    /// room: false for a cache in use, or when an allocation failed (that generation
    /// then grows as it fills).
    pub fn prefault(&mut self) -> bool {
        if self.generations.iter().any(|g| !g.slots.is_empty()) {
            return false;
        }
        let room = self.per_generation;
        // Every generation, even after one failed: the others may still get theirs.
        let mut all = true;
        for g in &mut self.generations {
            all &= g.prefault(room);
        }
        all
    }

    /// Number of nodes held.
    pub fn len(&self) -> usize {
        self.generations.iter().map(|g| g.index.len()).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether slab entry `i` holds the node at `at` (an index entry names a slab entry;
/// `get` rather than indexing, so that a cache left half-updated by a panic elsewhere
/// misses rather than panics).
fn holds(slots: &[Slot], i: u32, at: &NodeRef) -> bool {
    slots.get(i as usize).is_some_and(|s| s.at == *at)
}

fn hash_of(at: &NodeRef) -> u64 {
    BuildHasherDefault::<NodeRefHasher>::default().hash_one(at)
}

/// Hashes a [`NodeRef`] with one multiply per word rather than SipHash. A transaction
/// asks the cache for about a hundred nodes on each validator (every read walks the
/// tree from its root), and the locations are numbers the store assigns itself (a
/// height and a position in its block), so no peer can choose them to collide.
#[derive(Default)]
pub(crate) struct NodeRefHasher(u64);

impl NodeRefHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for NodeRefHasher {
    fn finish(&self) -> u64 {
        // The multiply carries only upward: fold the high bits into the low ones, which
        // pick the bucket.
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.add(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Entries a generation's table hashed again (it grew or cleaned out tombstones).
        pub(super) static REHASHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn rehashed() -> usize {
        REHASHED.with(|n| n.get())
    }

    /// The size the memory figures of the docs count on (STATE_CACHE_BYTES_PER_NODE).
    #[test]
    fn a_slab_entry_is_152_bytes() {
        assert_eq!(SLOT_BYTES, 152);
    }

    fn at(version: u64) -> NodeRef {
        NodeRef { version, index: 7 }
    }

    fn leaf(n: u64) -> StateNode {
        StateNode::Leaf {
            key: Hash([n as u8; 32]),
            value: n.to_be_bytes().to_vec(),
        }
    }

    fn put(cache: &mut RecentNodes, n: u64) {
        cache.insert(at(n), Hash([n as u8; 32]), leaf(n));
    }

    /// Each generation's memory, sorted: where its slab is, the slab's capacity and its
    /// table's buckets (a slab or table allocated again changes it).
    fn memory(c: &RecentNodes) -> Vec<(*const Slot, usize, usize)> {
        let mut all: Vec<_> = c
            .generations
            .iter()
            .map(|g| (g.slots.as_ptr(), g.slots.capacity(), g.index.num_buckets()))
            .collect();
        all.sort();
        all
    }

    /// Whether any generation holds node `n` (without moving it).
    fn holds(cache: &RecentNodes, n: u64) -> bool {
        let hash = hash_of(&at(n));
        cache
            .generations
            .iter()
            .any(|g| g.find(hash, &at(n)).is_some())
    }

    fn got(cache: &mut RecentNodes, n: u64) -> Option<u64> {
        cache.get(&at(n)).map(|(hash, node)| {
            assert_eq!((hash, node), (Hash([n as u8; 32]), leaf(n)));
            n
        })
    }

    /// With four generations a change drops only the oldest; a hit in an older one moves
    /// to the young one, and a removal takes a node from whichever holds it.
    #[test]
    fn keeps_four_generations_and_drops_the_oldest() {
        let mut cache = RecentNodes::new(2, 4);
        assert!(cache.is_empty());
        // Generations of two: {0, 1}, {2, 3}, {4, 5}, {6, 7}, then {8} drops {0, 1}.
        for n in 0..9 {
            put(&mut cache, n);
        }
        assert_eq!(cache.len(), 7);
        assert_eq!((got(&mut cache, 0), got(&mut cache, 1)), (None, None));
        // Found three generations back, and moved to the young one beside 8: the young
        // one is full, and {2, 3} is no longer the oldest.
        assert_eq!(got(&mut cache, 2), Some(2));
        assert_eq!(cache.len(), 7);
        assert_eq!(cache.generations[0].index.len(), 2);
        put(&mut cache, 9);
        // {9} took the oldest generation's place, dropping 3 (and 2's vacant entry).
        assert_eq!(got(&mut cache, 3), None);
        assert_eq!(cache.len(), 7);
        cache.remove(&at(6));
        assert_eq!(got(&mut cache, 6), None);
        assert_eq!(cache.len(), 6);
        let held: Vec<u64> = (0..10).filter(|&n| holds(&cache, n)).collect();
        assert_eq!(held, [2, 4, 5, 7, 8, 9]);
    }

    /// A node moved out of an older generation, or removed, leaves no value behind in
    /// its slab (a leaf's value is on the heap), and is returned only once.
    #[test]
    fn a_moved_or_removed_node_leaves_a_vacant_entry() {
        let mut cache = RecentNodes::new(3, 2);
        for n in 0..4 {
            put(&mut cache, n);
        }
        assert_eq!(got(&mut cache, 1), Some(1));
        cache.remove(&at(2));
        let old = &cache.generations[1];
        assert_eq!(old.index.len(), 1);
        for i in [1, 2] {
            assert_eq!(old.slots[i].node, VACANT);
        }
        assert_eq!(old.slots[0].node, leaf(0));
        assert_eq!(cache.len(), 3);
        // Inserted twice, held once.
        put(&mut cache, 3);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.generations[0].slots.len(), 2);
    }

    /// The state-node cache's pattern: each round inserts new nodes and removes one of
    /// them and one inserted long before (a commit's new nodes, and the nodes they
    /// replaced). No generation's table ever hashes an entry again (it never grows, nor
    /// cleans out the tombstones the removals leave) and no slab moves, and every live
    /// node of the last generations is found.
    #[test]
    fn generations_never_grow_under_removals() {
        const ROOM: usize = 10_000;
        let before = rehashed();
        let mut cache = RecentNodes::new(ROOM, 4);
        let mut next = 0u64;
        // Every generation in use.
        while next < 4 * ROOM as u64 {
            put(&mut cache, next);
            next += 1;
        }
        let first = memory(&cache);
        // A table sized for the generation: 10,000 entries need 16,384 buckets.
        assert!(
            first
                .iter()
                .all(|&(_, slab, buckets)| slab == ROOM && buckets == 16_384)
        );
        for _ in 0..20 * ROOM {
            for _ in 0..3 {
                put(&mut cache, next);
                next += 1;
            }
            cache.remove(&at(next - 2));
            cache.remove(&at(next.saturating_sub(5_001)));
        }
        assert_eq!(memory(&cache), first);
        assert_eq!(rehashed() - before, 0, "a table hashed its entries again");
        assert_eq!(got(&mut cache, next - 1), Some(next - 1));
        assert_eq!(got(&mut cache, next - 2), None);
        assert_eq!(got(&mut cache, next - 5_001), None);
        assert_eq!(got(&mut cache, next - 3), Some(next - 3));
        assert!(cache.len() <= 4 * ROOM);
    }

    /// A generation whose nodes were all removed from a full table (so that the
    /// removals left tombstones rather than free slots) holds a whole generation again
    /// in the same table. `HashTable::clear` leaves an empty table as it is, tombstones
    /// and all: reserving a generation's room in it then grew it to twice the buckets.
    #[test]
    fn an_emptied_generation_holds_a_whole_one_again() {
        // 896 entries fill a table of 1,024 buckets to its load limit.
        const ROOM: usize = 896;
        let mut cache = RecentNodes::new(ROOM, 2);
        for n in 0..ROOM as u64 {
            put(&mut cache, n);
        }
        let buckets = cache.generations[0].index.num_buckets();
        assert_eq!(buckets, 1_024);
        for n in 0..ROOM as u64 {
            cache.remove(&at(n));
        }
        assert!(cache.is_empty());
        // Tombstones: the table's room is short of a generation.
        assert!(cache.generations[0].index.capacity() < ROOM);
        // Two changes later that table is the young one again, and fills.
        for n in ROOM as u64..4 * ROOM as u64 {
            put(&mut cache, n);
        }
        assert_eq!(cache.len(), 2 * ROOM);
        for g in &cache.generations {
            assert_eq!((g.index.num_buckets(), g.slots.capacity()), (buckets, ROOM));
        }
    }

    /// Prefaulting allocates every generation at its full size and leaves it empty, so
    /// the generations fill without allocating; a cache in use is left alone.
    #[test]
    fn prefaulting_prepares_every_generation_and_keeps_nothing() {
        const ROOM: usize = 1_000;
        let mut cache = RecentNodes::new(ROOM, 4);
        assert!(cache.prefault());
        assert!(cache.is_empty());
        let prepared = memory(&cache);
        assert!(prepared.iter().all(|&(_, slab, _)| slab == ROOM));
        assert!(cache.generations.iter().all(|g| g.index.capacity() >= ROOM));
        for n in 0..4 * ROOM as u64 {
            assert_eq!(got(&mut cache, n), None);
            put(&mut cache, n);
        }
        assert_eq!(cache.len(), 4 * ROOM);
        assert_eq!(memory(&cache), prepared);
        assert_eq!(got(&mut cache, 0), Some(0));
        assert!(!cache.prefault());
        assert_eq!(cache.len(), 4 * ROOM - ROOM + 1);
    }
}
