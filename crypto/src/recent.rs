//! A bounded map of recently used values, for caches: of things that never change under
//! their key (decompressed public keys, state nodes at their storage location), or, with
//! a removal before each change, of values that do (the tip's state values).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};

/// The values most recently inserted or hit, up to two generations of `capacity`.
///
/// Two generations approximate least-recently-used at the cost of a hash lookup: a hit
/// in the old generation moves to the young one, and a full young generation becomes
/// the old one while the old one is dropped. Nothing here invalidates an entry: a value
/// that changes under its key must be [`Recent::remove`]d before the new one is inserted
/// (the old generation may still hold the former one).
///
/// `S` hashes the keys: SipHash by default, which keys a peer can choose need; a cache of
/// keys the node assigns itself may use a cheaper one.
#[derive(Debug)]
pub struct Recent<K, V, S = RandomState> {
    young: HashMap<K, V, S>,
    old: HashMap<K, V, S>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V: Clone, S: BuildHasher + Default> Recent<K, V, S> {
    /// An empty cache of at most `2 × capacity` entries.
    pub fn new(capacity: usize) -> Recent<K, V, S> {
        Recent {
            young: HashMap::default(),
            old: HashMap::default(),
            capacity: capacity.max(1),
        }
    }

    /// The value under `key`, if still held.
    pub fn get(&mut self, key: &K) -> Option<V> {
        if let Some(v) = self.young.get(key) {
            return Some(v.clone());
        }
        let v = self.old.remove(key)?;
        self.insert(key.clone(), v.clone());
        Some(v)
    }

    /// Holds `value` under `key`.
    pub fn insert(&mut self, key: K, value: V) {
        if self.young.len() >= self.capacity {
            // The young generation becomes the old one, and the old one's table, emptied,
            // the young one: it keeps its allocation, so a cache of a million entries
            // does not grow a new table (rehashing each entry at every doubling) and
            // free the old one every generation.
            std::mem::swap(&mut self.young, &mut self.old);
            self.young.clear();
        }
        self.young.insert(key, value);
    }

    /// Drops the value under `key`, if held: for a value that will not be asked for
    /// again, so that it does not take the room of one that will.
    pub fn remove(&mut self, key: &K) {
        self.young.remove(key);
        self.old.remove(key);
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
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
