//! A filter of state keys: "certainly not inserted" or "maybe inserted", in two to four
//! bytes a distinct key and one cache line a query.
//!
//! [`crate::TipCache`] uses it to answer reads of absent keys without walking the state
//! tree (a new notarization's digest, read at admission and again in execution). Its
//! negative answers are exact as long as every key present in the state was inserted,
//! which is the cache's invariant; a positive answer only sends the read to the tree, so
//! false positives cost a walk and nothing else.
//!
//! The filter is a blocked Bloom filter: a key sets one bit in each of the eight 64-bit
//! words of one 64-byte block, so a query reads one cache line. At 16 bits a key (a
//! part's blocks are a power of two, so up to 32) a full part answers about 0.1% of
//! absent keys "maybe". It grows by adding parts of twice the previous capacity rather
//! than rebuilding; a query asks each part (a handful at most). Keys are never removed.
//!
//! State keys are BLAKE3 outputs, but of digests a user chooses, so the bits a key picks
//! are mixed with a seed the owner chooses at random: without it a user could grind
//! digests that land in one block and make other keys of that block walk. That is only a
//! cost, never a wrong answer; the seed takes it away.

use crate::Hash;

/// Filter bits per key of a part's capacity.
pub const BITS_PER_KEY: usize = 16;

/// The smallest part, in keys.
const MIN_CAPACITY: usize = 1 << 12;

/// The largest part, in keys (a 2 GiB part; a larger capacity asked for is capped, and
/// the filter goes on adding parts of this size).
const MAX_CAPACITY: usize = 1 << 30;

/// One fixed-size blocked Bloom filter.
#[derive(Clone, Debug)]
struct Part {
    blocks: Vec<[u64; 8]>,
    /// Keys it is sized for; the filter starts a new part when it is reached.
    capacity: usize,
    inserted: usize,
    salt: u64,
}

/// The splitmix64 finalizer: a bijection of `u64` that spreads every input bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn word(key: &Hash, at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&key.0[at..at + 8]);
    u64::from_le_bytes(w)
}

impl Part {
    fn new(capacity: usize, salt: u64) -> Part {
        let capacity = capacity.clamp(MIN_CAPACITY, MAX_CAPACITY);
        let blocks = (capacity * BITS_PER_KEY).div_ceil(512).next_power_of_two();
        Part {
            blocks: vec![[0; 8]; blocks],
            capacity,
            inserted: 0,
            salt,
        }
    }

    /// The block and the eight bits (one per word) of `key`.
    fn locate(&self, key: &Hash) -> (usize, u64) {
        let block = mix(word(key, 0) ^ self.salt) as usize & (self.blocks.len() - 1);
        let bits = mix(word(key, 8) ^ self.salt.rotate_left(29));
        (block, bits)
    }

    fn insert(&mut self, key: &Hash) {
        let (block, bits) = self.locate(key);
        let words = &mut self.blocks[block];
        for (i, w) in words.iter_mut().enumerate() {
            *w |= 1 << ((bits >> (8 * i)) & 63);
        }
        self.inserted += 1;
    }

    fn may_contain(&self, key: &Hash) -> bool {
        let (block, bits) = self.locate(key);
        let words = &self.blocks[block];
        words
            .iter()
            .enumerate()
            .all(|(i, w)| w & (1 << ((bits >> (8 * i)) & 63)) != 0)
    }
}

/// A growing filter of 32-byte keys with no false negatives.
#[derive(Clone, Debug)]
pub struct KeyFilter {
    parts: Vec<Part>,
    seed: u64,
}

impl KeyFilter {
    /// An empty filter whose first part is sized for `capacity` keys, its bits picked
    /// with `seed` (choose it at random: see the module's documentation).
    pub fn new(capacity: usize, seed: u64) -> KeyFilter {
        KeyFilter {
            parts: vec![Part::new(capacity, mix(seed))],
            seed,
        }
    }

    /// Inserts `key`. A key the filter already answers "maybe" for (one inserted
    /// before, or a false positive) is not inserted again: that would change no answer,
    /// and the filter's size follows the distinct keys however often they are set.
    pub fn insert(&mut self, key: &Hash) {
        if self.may_contain(key) {
            return;
        }
        let last = self.parts.len() - 1;
        if self.parts[last].inserted >= self.parts[last].capacity {
            let capacity = self.parts[last].capacity.saturating_mul(2);
            let salt = mix(self.seed ^ mix(self.parts.len() as u64));
            self.parts.push(Part::new(capacity, salt));
        }
        let last = self.parts.len() - 1;
        self.parts[last].insert(key);
    }

    /// Whether `key` may have been inserted: `false` means it certainly was not.
    pub fn may_contain(&self, key: &Hash) -> bool {
        self.parts.iter().any(|p| p.may_contain(key))
    }

    /// Keys inserted so far: the distinct keys given to [`KeyFilter::insert`], less the
    /// few that were false positives when they came.
    pub fn inserted(&self) -> usize {
        self.parts.iter().map(|p| p.inserted).sum()
    }

    /// Bytes of filter held.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.blocks.len() * 64).sum()
    }

    /// Number of parts (the filter adds one each time the last is full).
    pub fn parts(&self) -> usize {
        self.parts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u64) -> Hash {
        pyralog_crypto::content_digest(&i.to_le_bytes())
    }

    #[test]
    fn every_inserted_key_is_found_across_parts() {
        let mut f = KeyFilter::new(1000, 7);
        for i in 0..50_000 {
            f.insert(&key(i));
        }
        // 4,096 (the smallest part), then 8,192, 16,384 and 32,768.
        assert_eq!(f.parts(), 4);
        // Less the few false positives when they came.
        assert!(
            f.inserted() > 49_500 && f.inserted() <= 50_000,
            "{}",
            f.inserted()
        );
        for i in 0..50_000 {
            assert!(f.may_contain(&key(i)), "key {i}");
        }
    }

    #[test]
    fn few_absent_keys_are_answered_maybe() {
        // Full parts, the worst case: a part answers about 0.1% of absent keys "maybe",
        // so two parts about 0.2%. 200,000 queries, at most 0.5% allowed.
        let mut f = KeyFilter::new(1 << 16, 99);
        for i in 0..(1 << 16) + (1 << 17) {
            f.insert(&key(i));
        }
        assert_eq!(f.parts(), 2);
        let maybe = (1u64 << 40..(1 << 40) + 200_000)
            .filter(|&i| f.may_contain(&key(i)))
            .count();
        assert!(
            maybe < 1_000,
            "{maybe} of 200,000 absent keys answered maybe"
        );
        assert_eq!(f.bytes(), ((1 << 16) + (1 << 17)) * BITS_PER_KEY / 8);
    }

    #[test]
    fn keys_set_again_do_not_grow_the_filter() {
        let mut f = KeyFilter::new(0, 11);
        for _ in 0..10 {
            for i in 0..4_000 {
                f.insert(&key(i));
            }
        }
        assert_eq!(f.parts(), 1);
        assert!(
            f.inserted() <= 4_000 && f.inserted() > 3_990,
            "{}",
            f.inserted()
        );
    }

    #[test]
    fn the_seed_changes_which_bits_a_key_sets() {
        let mut a = KeyFilter::new(0, 1);
        let mut b = KeyFilter::new(0, 2);
        a.insert(&key(1));
        b.insert(&key(1));
        assert_ne!(a.parts[0].blocks, b.parts[0].blocks);
    }

    proptest! {
        #[test]
        fn no_false_negatives(
            seed in any::<u64>(),
            capacity in 0usize..10_000,
            keys in proptest::collection::vec(any::<[u8; 32]>(), 0..3_000),
        ) {
            let mut f = KeyFilter::new(capacity, seed);
            for k in &keys {
                f.insert(&Hash(*k));
            }
            for k in &keys {
                prop_assert!(f.may_contain(&Hash(*k)));
            }
        }
    }
}
