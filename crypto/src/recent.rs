//! A bounded map of recently used values, for caches: of things that never change under
//! their key (decompressed public keys), or, with a removal before each change, of values
//! that do (the tip's state values). The state-node cache, which used it until
//! 2026-12-08 and taught most of what is below, now keeps its nodes in slabs
//! (`pyralog_storage::recent`), in less than half the memory a node.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};

/// In the first generation, one insertion in this many is copied into the other table,
/// to map its memory before it is used (see [`Recent`]): for entries of about 150 bytes,
/// enough to touch about 94% of its pages by the time a generation of `capacity` entries
/// has filled.
pub const WARM_EVERY: usize = 4;

/// The values most recently inserted or hit, up to two generations of `capacity` (or
/// more, [`Recent::with_generations`]).
///
/// Two generations approximate least-recently-used at the cost of a hash lookup: a hit
/// in the old generation moves to the young one, and a full young generation becomes
/// the old one while the old one is dropped. That drops about half of what the cache
/// holds at once, and each of the state-node cache's changes slowed every validator for
/// 2 to 5 s under load (docs/PERFORMANCE.md). With more generations of a smaller
/// capacity, a change drops only the oldest, and a lookup that misses probes each.
/// Nothing here invalidates an entry: a value that changes under its key must be
/// [`Recent::remove`]d before the new one is inserted (an older generation may still
/// hold the former one).
///
/// A generation ends when it holds `capacity` entries or after `2 × capacity` insertions,
/// whichever comes first, and its table is sized for `2 × capacity` entries when it
/// starts, so it never grows or rehashes while it fills. A hash table does not get back
/// the room of an entry removed between live ones (it leaves a tombstone): a generation
/// that only counted entries, while [`remove`] dropped others, ran out of free slots
/// before it was full and rehashed, into a new table twice the size when most of its
/// entries were live. For the state-node cache of a validator (then about 450,000
/// nodes a generation), that allocation and the page faults of its fresh memory held a
/// commit for 1.3 s (docs/PERFORMANCE.md).
///
/// The tables are allocated once and reused, but a new table's memory is only
/// mapped by the kernel as it is first touched, and a hash table's inserts land all over
/// it. The second table was first used when the first generation ended, and then nearly
/// every lookup moved a hot entry into it: the state-node cache of every validator (they
/// hold the same nodes, so it happens at the same height) took some 48,000 page faults
/// in two seconds, and a network under load stalled for those two seconds. So while the
/// first generation fills, every [`WARM_EVERY`]th insertion is also made into the other
/// table (and dropped from it at the first change, like any old generation), which
/// touches its memory a little at a time. That work is done once in a cache's life, but
/// earlier: a burst on a fresh network, which ended before the first change, paid it and
/// committed about 5% fewer transactions a second.
///
/// `S` hashes the keys: SipHash by default, which keys a peer can choose need; a cache of
/// keys the node assigns itself may use a cheaper one.
///
/// [`remove`]: Recent::remove
#[derive(Debug)]
pub struct Recent<K, V, S = RandomState> {
    young: HashMap<K, V, S>,
    /// The old generation; in the first one, copies of some young entries, never
    /// returned (see `warming`).
    old: HashMap<K, V, S>,
    /// Generations older than `old`, newest first (none for two generations).
    older: VecDeque<HashMap<K, V, S>>,
    /// Whether this is the first generation, in which `old` holds copies of young
    /// entries only to touch its memory. A lookup finds a key in `young` before it could
    /// find the copy, a removal takes both, and the first change drops the copies.
    warming: bool,
    capacity: usize,
    /// Insertions into `young` since it started (at most `2 × capacity`).
    inserted: usize,
}

impl<K: Hash + Eq + Clone, V: Clone, S: BuildHasher + Default> Recent<K, V, S> {
    /// An empty cache of at most `2 × capacity` entries. It allocates nothing until the
    /// first insertion.
    pub fn new(capacity: usize) -> Recent<K, V, S> {
        Recent::with_generations(capacity, 2)
    }

    /// An empty cache of at most `generations × capacity` entries (fewer than two
    /// generations count as two). The first generation prepares only the table the
    /// first change uses ([`WARM_EVERY`]); the others are mapped as they are first
    /// used.
    pub fn with_generations(capacity: usize, generations: usize) -> Recent<K, V, S> {
        Recent {
            young: HashMap::default(),
            old: HashMap::default(),
            older: (2..generations).map(|_| HashMap::default()).collect(),
            warming: true,
            capacity: capacity.max(1),
            inserted: 0,
        }
    }

    /// The value under `key`, if still held.
    pub fn get(&mut self, key: &K) -> Option<V> {
        if let Some(v) = self.young.get(key) {
            return Some(v.clone());
        }
        let v = match self.old.remove(key) {
            Some(v) => v,
            None => self.older.iter_mut().find_map(|g| g.remove(key))?,
        };
        self.insert(key.clone(), v.clone());
        Some(v)
    }

    /// Holds `value` under `key`.
    pub fn insert(&mut self, key: K, value: V) {
        if self.young.len() >= self.capacity || self.inserted >= self.room() {
            // The young generation becomes the old one, and the old one's table, emptied
            // (tombstones too), the young one: it keeps its allocation, so a cache of a
            // million entries does not build a new table and free the old one every
            // generation.
            // The oldest table is emptied and becomes the young one. At the first
            // change that is `old`, the table the copies prepared (the older ones are
            // still empty then), and the copies go with the emptying.
            match self.older.pop_back() {
                Some(oldest) if !self.warming => {
                    let young = std::mem::replace(&mut self.young, oldest);
                    let old = std::mem::replace(&mut self.old, young);
                    self.older.push_front(old);
                }
                popped => {
                    self.older.extend(popped);
                    std::mem::swap(&mut self.young, &mut self.old);
                }
            }
            self.young.clear();
            self.warming = false;
            if self.young.capacity() < self.room() {
                // An empty table is not cleared, so tombstones left by removals and by
                // hits moved to the young generation keep their slots: start afresh
                // rather than let the reservation below double it.
                self.young = HashMap::default();
            }
            self.inserted = 0;
        }
        if self.inserted == 0 {
            // Room for the whole generation: a no-op for a table that has it already,
            // one allocation for a table new to this cache. Should that allocation fail,
            // the table grows as it fills instead.
            let _ = self.young.try_reserve(self.room());
            if self.warming {
                let _ = self.old.try_reserve(self.room());
            }
        }
        if self.warming && self.inserted.is_multiple_of(WARM_EVERY) {
            // Never found there: a lookup that misses `young` misses this subset of it
            // too, and a removal takes the key out of both.
            self.old.insert(key.clone(), value.clone());
        }
        self.young.insert(key, value);
        self.inserted += 1;
    }

    /// Entries a generation holds, at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Insertions a generation's table has room for.
    fn room(&self) -> usize {
        self.capacity.saturating_mul(2)
    }

    /// Drops the value under `key`, if held: for a value that will not be asked for
    /// again, so that it does not take the room of one that will.
    pub fn remove(&mut self, key: &K) {
        self.young.remove(key);
        self.old.remove(key);
        for g in &mut self.older {
            g.remove(key);
        }
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        if self.warming {
            self.young.len()
        } else {
            self.young.len() + self.old.len() + self.older.iter().map(HashMap::len).sum::<usize>()
        }
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_was_used_last() {
        let mut cache: Recent<i32, &str> = Recent::new(2);
        cache.insert(1, "a");
        cache.insert(2, "b");
        // The young generation is full: it becomes the old one.
        cache.insert(3, "c");
        assert_eq!(cache.get(&1), Some("a"));
        // 1 moved to the young generation, next to 3; 2 is only in the old one.
        cache.insert(4, "d");
        assert_eq!(cache.get(&2), None);
        for (k, v) in [(1, "a"), (3, "c"), (4, "d")] {
            assert_eq!(cache.get(&k), Some(v));
        }
        assert!(cache.len() <= 4);
    }

    thread_local! {
        static HASHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// A key that counts how often it is hashed: once per map operation, and once per
    /// entry again whenever a table rehashes (grows, or cleans out its tombstones).
    #[derive(Clone, Copy, PartialEq, Eq)]
    struct Counted(u64);

    impl Hash for Counted {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            HASHED.with(|n| n.set(n.get() + 1));
            self.0.hash(state);
        }
    }

    /// The state-node cache's pattern: each round inserts new entries and removes one of
    /// them and one inserted long before (a commit's new nodes, and the nodes they
    /// replaced), so most entries stay live while removals leave tombstones between
    /// them. Generations end by their count of insertions, and no table ever rehashes:
    /// every key is hashed once per operation and never again.
    #[test]
    fn removals_never_make_a_generation_rehash() {
        const CAPACITY: usize = 10_000;
        const ROUNDS: usize = 20 * CAPACITY;
        let mut cache: Recent<Counted, u64> = Recent::new(CAPACITY);
        let mut next = 0u64;
        // The first generation hashes its copies into the other table besides.
        while cache.warming {
            cache.insert(Counted(next), next);
            next += 1;
        }
        let before = HASHED.with(|n| n.get());
        let mut by_count = 0;
        for _ in 0..ROUNDS {
            let (held, inserted) = (cache.young.len(), cache.inserted);
            for _ in 0..3 {
                // One hash (the young generation's insert).
                cache.insert(Counted(next), next);
                next += 1;
            }
            // A new generation, started before the young one could hold CAPACITY.
            if cache.inserted < inserted && held + 3 < CAPACITY {
                by_count += 1;
            }
            // Two hashes each (both generations): the second of the three just
            // inserted, and the first of a round 1,667 rounds back.
            cache.remove(&Counted(next - 2));
            cache.remove(&Counted(next.saturating_sub(5_001)));
        }
        let hashed = HASHED.with(|n| n.get()) - before;
        assert_eq!(hashed, 7 * ROUNDS, "a table rehashed its entries");
        assert!(by_count > 10, "{by_count} generations ended by count");
        // It still caches: the newest entry is held, a removed one is not.
        assert_eq!(cache.get(&Counted(next - 1)), Some(next - 1));
        assert_eq!(cache.get(&Counted(next - 2)), None);
        assert!(cache.len() <= 2 * CAPACITY);
    }

    /// The first generation touches the other table as it fills, and its first change
    /// reuses that table rather than allocating one; the copies are never seen.
    #[test]
    fn the_first_generation_prepares_the_second_table() {
        const CAPACITY: usize = 1_000;
        let mut cache: Recent<u64, u64> = Recent::new(CAPACITY);
        for k in 0..CAPACITY as u64 - 1 {
            cache.insert(k, k);
        }
        assert!(cache.warming);
        assert_eq!(cache.old.len(), CAPACITY / WARM_EVERY);
        let prepared = cache.old.capacity();
        assert!(prepared >= 2 * CAPACITY);
        assert_eq!(cache.len(), CAPACITY - 1);
        // A copy is never returned: the young entry's newer value, or nothing once
        // removed.
        cache.insert(0, 100);
        assert_eq!(cache.get(&0), Some(100));
        cache.remove(&4);
        assert_eq!(cache.get(&4), None);
        assert_eq!(cache.len(), CAPACITY - 2);

        // The first change. The new young generation is the prepared table, emptied of
        // its copies.
        let mut next = CAPACITY as u64;
        while cache.warming {
            cache.insert(next, next);
            next += 1;
        }
        assert_eq!(cache.young.capacity(), prepared);
        assert_eq!(cache.young.len(), 1);
        assert_eq!(cache.len(), CAPACITY + 1);
        assert_eq!(cache.get(&0), Some(100));
        assert_eq!(cache.get(&4), None);
        assert_eq!(cache.get(&8), Some(8));
    }

    /// With four generations a change drops only the oldest: what was used in the three
    /// before the young one is still found, where two generations have dropped it, a
    /// hit there moves to the young one, and a removal takes a key from all of them.
    #[test]
    fn more_generations_drop_only_the_oldest() {
        let mut four: Recent<u64, u64> = Recent::with_generations(2, 4);
        let mut two: Recent<u64, u64> = Recent::new(2);
        // Generations of two: {0, 1}, {2, 3}, {4, 5}, {6, 7}, then {8} drops {0, 1}.
        for k in 0..9 {
            four.insert(k, k * 10);
            two.insert(k, k * 10);
        }
        assert_eq!((four.len(), two.len()), (7, 3));
        assert_eq!((four.get(&0), four.get(&1)), (None, None));
        assert_eq!(two.get(&2), None);
        // Found three generations back, and moved to the young one beside 8.
        assert_eq!(four.get(&2), Some(20));
        assert_eq!(four.young.len(), 2);
        assert_eq!(four.len(), 7);
        four.remove(&5);
        assert_eq!(four.get(&5), None);
        assert_eq!(four.len(), 6);
        for k in [8, 2] {
            assert_eq!(four.get(&k), Some(k * 10));
        }
    }

    /// With four generations, the first change still uses the table the first
    /// generation prepared, and its copies are neither returned nor counted.
    #[test]
    fn the_first_change_of_four_generations_uses_the_prepared_table() {
        const CAPACITY: usize = 1_000;
        let mut cache: Recent<u64, u64> = Recent::with_generations(CAPACITY, 4);
        let mut next = 0u64;
        while cache.warming {
            cache.insert(next, next);
            next += 1;
        }
        assert!(cache.young.capacity() >= 2 * CAPACITY);
        assert_eq!(cache.young.len(), 1);
        assert_eq!(cache.len(), CAPACITY + 1);
        // The older tables are still the untouched defaults.
        assert!(cache.older.iter().all(|g| g.capacity() == 0));
        // The next changes hold every generation: nothing was lost to the copies.
        while next < 4 * CAPACITY as u64 {
            cache.insert(next, next);
            next += 1;
        }
        assert_eq!(cache.len(), 4 * CAPACITY);
        assert_eq!(cache.get(&1), Some(1));
    }

    #[test]
    fn a_removed_entry_is_gone_and_frees_its_room() {
        let mut cache: Recent<i32, &str> = Recent::new(2);
        cache.insert(1, "a");
        cache.insert(2, "b");
        cache.remove(&2);
        // Young holds only 1: inserting 3 fills it without starting a new generation.
        cache.insert(3, "c");
        assert_eq!(cache.get(&2), None);
        assert_eq!((cache.get(&1), cache.get(&3)), (Some("a"), Some("c")));
        // From the old generation too.
        cache.insert(4, "d");
        cache.remove(&1);
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.get(&4), Some("d"));
    }
}
