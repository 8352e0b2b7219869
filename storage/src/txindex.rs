//! The transaction index of storage formats 3 and 4: a transaction's hash → where it is.
//!
//! sled spends about 6 µs on every record it inserts, whatever its size, and format 2's
//! record per transaction (`t ‖ hash`) took about 15% of a loaded validator's CPU
//! (docs/PERFORMANCE.md). Format 3 keeps the locations of the latest transactions in
//! memory and writes them to sled in runs of [`RUN_TXS`], each a few thousand records:
//!
//! | key | value |
//! |---|---|
//! | `x` ‖ run's first height (u64 BE) ‖ bucket (u16 BE) | the run's entries whose hash starts with the bucket's 12 bits, sorted by hash: (hash ‖ height u64 BE ‖ index u32 BE ‖ log index u64 BE)* |
//! | `X` | the runs, oldest first: (first height ‖ last height)*, u64 BE each |
//!
//! The block that fills a run seals it: its entries leave the recent table for a table
//! by bucket, still in memory, and the commits after it write it to sled a part (some
//! buckets) at a time, in their batches, so as atomic and as durable as their blocks.
//! The batch that writes its last part lists it in `X`. A commit of `n` transactions
//! writes the fraction `2 n / RUN_TXS` of the 4,096 buckets, rounded up, and at least
//! [`RUN_PART_MIN_BUCKETS`], so that a run is in sled by the time the next is half full
//! (at most 64 commits); a block that fills the next run before that writes all that is
//! left. The transactions of the blocks after the last listed run are only in memory:
//! on open they are read back from those blocks (fewer than a run of them, or up to
//! about one and a half if the node stopped, cleanly or not, while a run was being
//! written), and the next commit seals them again. That run starts at the same height
//! as the one that was being written, and holds all its entries and more, so it writes
//! every bucket of it again before it is listed. Bucket records of an unlisted run are
//! never read. A node that stopped again and again within those commits would seal an
//! ever larger run; nothing bounds that.
//!
//! A lookup checks memory (recent, then sealed), then each run from the newest, one sled
//! read of a bucket each: a run of 262,144 transactions has about 64 in a bucket, so a
//! lookup of a hash that is not there, in a chain of 100 million, reads some 380 records
//! of 3.3 KB. Runs are never merged; merging them (a log-structured merge) would bound
//! that.
//!
//! The recent entries take about 30 MB (a hash table of 2^19 slots of 57 bytes,
//! reserved at the first entry and kept between runs), and a sealed run's table by
//! bucket about 22 MB more (kept too, emptied, for the next run; up to about half as
//! much again if the first run sealed after a start was a larger one read back at
//! open). Writing a run whole, in the batch of the block that filled it (4,096 records, about 13.5 MB, after
//! sorting 262,144 entries), cost that commit about 0.11 s more on an idle machine, but
//! under 3,000 tx/s on two cores it held every validator of a 4-validator testnet for
//! 1.5 to 1.9 s, and their drivers admitted nothing meanwhile (docs/PERFORMANCE.md,
//! twentieth session). Sealing now costs a pass over the entries (under the index's
//! write lock, so lookups wait for it), and a commit sorts and writes only its part's
//! buckets.

use std::collections::HashMap;

use pyralog_ledger::Hash;

use crate::{StorageError, TxLocation};

/// Transactions in a run of the index (the default; [`crate::SledStore::with_tx_run`]).
pub const RUN_TXS: usize = 1 << 18;

/// Buckets of a run: by the first 12 bits of the hash.
pub const RUN_BUCKETS: usize = 4096;

/// Bytes of an entry: hash, then height, index, log index ([`encode_location`]).
const ENTRY: usize = 32 + 20;

/// The key of the runs' list.
pub(crate) const RUNS_KEY: &[u8] = b"X";

/// A run's bucket of `hash`.
fn bucket(hash: &Hash) -> u16 {
    u16::from_be_bytes([hash.0[0], hash.0[1]]) >> 4
}

/// The key of bucket `bucket` of the run that starts at height `first`.
pub(crate) fn run_key(first: u64, bucket: u16) -> [u8; 11] {
    let mut k = [0u8; 11];
    k[0] = b'x';
    k[1..9].copy_from_slice(&first.to_be_bytes());
    k[9..].copy_from_slice(&bucket.to_be_bytes());
    k
}

fn corrupt(reason: String) -> StorageError {
    StorageError::Corrupt {
        what: "transaction index",
        reason,
    }
}

/// The runs' list record: `(first, last)` heights, oldest first, from height 1 without
/// gaps.
pub(crate) fn decode_runs(bytes: &[u8]) -> Result<Vec<(u64, u64)>, StorageError> {
    if !bytes.len().is_multiple_of(16) {
        return Err(corrupt(format!("run list of {} bytes", bytes.len())));
    }
    let u64_at = |c: &[u8]| u64::from_be_bytes(c.try_into().unwrap_or([0; 8]));
    let runs: Vec<(u64, u64)> = bytes
        .chunks_exact(16)
        .map(|c| (u64_at(&c[..8]), u64_at(&c[8..])))
        .collect();
    // Runs cover heights 1, 2, 3... without gaps: each starts where the one before
    // ended, the first at height 1 (the first run holds the chain's first blocks).
    let mut next = 1u64;
    for (first, last) in &runs {
        if *first != next || last < first {
            return Err(corrupt(format!(
                "run of heights {first} to {last} where one from height {next} was due"
            )));
        }
        next = last
            .checked_add(1)
            .ok_or_else(|| corrupt(format!("run ending at height {last}")))?;
    }
    Ok(runs)
}

fn encode_runs(runs: &[(u64, u64)]) -> Vec<u8> {
    runs.iter()
        .flat_map(|(f, l)| f.to_be_bytes().into_iter().chain(l.to_be_bytes()))
        .collect()
}

/// A location's 20 bytes: height, index, log index (big-endian), as format 2's record
/// per transaction holds them and a run's entry after the hash.
pub(crate) fn encode_location(loc: &TxLocation) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[..8].copy_from_slice(&loc.height.to_be_bytes());
    out[8..12].copy_from_slice(&loc.index.to_be_bytes());
    out[12..].copy_from_slice(&loc.log_index.to_be_bytes());
    out
}

/// The location [`encode_location`] wrote.
pub(crate) fn decode_location(bytes: &[u8]) -> Result<TxLocation, StorageError> {
    let b: &[u8; 20] = bytes
        .try_into()
        .map_err(|_| corrupt(format!("{} bytes, expected 20", bytes.len())))?;
    let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    Ok(TxLocation {
        height: u64_at(0),
        index: u32::from_be_bytes(b[8..12].try_into().unwrap_or([0; 4])),
        log_index: u64_at(12),
    })
}

/// `hash`'s location in a run's bucket record, if it is there.
fn find(record: &[u8], hash: &Hash) -> Result<Option<TxLocation>, StorageError> {
    if !record.len().is_multiple_of(ENTRY) {
        return Err(corrupt(format!("run bucket of {} bytes", record.len())));
    }
    let entries: Vec<&[u8]> = record.chunks_exact(ENTRY).collect();
    // A search of entries out of order, or of another bucket, would answer wrongly
    // rather than fail: check them (about 64 in a run of 262,144).
    let wanted = bucket(hash);
    let in_bucket = |e: &&[u8]| u16::from_be_bytes([e[0], e[1]]) >> 4 == wanted;
    if !entries.iter().all(in_bucket) || !entries.windows(2).all(|w| w[0][..32] < w[1][..32]) {
        return Err(corrupt(
            "run bucket out of order or holding another bucket".into(),
        ));
    }
    let Ok(i) = entries.binary_search_by(|e| e[..32].cmp(&hash.0[..])) else {
        return Ok(None);
    };
    decode_location(&entries[i][32..]).map(Some)
}

/// A run's buckets written in a commit, at least (unless fewer are left).
pub const RUN_PART_MIN_BUCKETS: usize = 64;

/// A run taken out of the recent entries, written to sled a part (some buckets) a commit.
#[derive(Debug)]
struct Sealed {
    first: u64,
    last: u64,
    /// Its entries by bucket, in no order.
    buckets: Vec<Vec<(Hash, TxLocation)>>,
    /// Buckets `..written` are in sled.
    written: usize,
}

impl Sealed {
    /// `hash`'s place in the run.
    fn find(&self, hash: &Hash) -> Option<TxLocation> {
        let bucket = self.buckets.get(usize::from(bucket(hash)))?;
        bucket.iter().find(|(h, _)| h == hash).map(|(_, l)| *l)
    }

    /// Bucket `b`'s record, sorted by hash, if it has entries. The entries came from
    /// the recent table, so no hash is there twice.
    fn record(&self, b: usize) -> Option<([u8; 11], Vec<u8>)> {
        let mut entries = self.buckets.get(b)?.clone();
        if entries.is_empty() {
            return None;
        }
        entries.sort_unstable_by_key(|e| e.0.0);
        let mut record = Vec::with_capacity(entries.len() * ENTRY);
        for (hash, loc) in &entries {
            record.extend_from_slice(&hash.0);
            record.extend_from_slice(&encode_location(loc));
        }
        Some((run_key(self.first, b as u16), record))
    }
}

/// What a commit writes of the index: a part of the sealed run, and the runs' list if
/// that part completes it.
#[derive(Debug, Default)]
pub(crate) struct IndexWrite {
    pub records: Vec<([u8; 11], Vec<u8>)>,
    pub runs: Option<Vec<u8>>,
    /// The sealed run's buckets in sled once the batch is.
    written: usize,
}

/// The in-memory part of the index, and the runs' bounds.
#[derive(Debug)]
pub(crate) struct TxIndex {
    /// Transactions of the blocks after the last run, in sled or sealed.
    recent: HashMap<Hash, TxLocation>,
    /// The run being written, if any: listed in `X` once all of it is in sled.
    sealed: Option<Sealed>,
    /// `(first, last)` heights of each run in sled, oldest first.
    runs: Vec<(u64, u64)>,
    /// Transactions per run.
    run_txs: usize,
    /// Buckets written a commit, if set; else from the block's transactions
    /// ([`TxIndex::part_buckets`]).
    part: Option<usize>,
    /// The buckets of the last run written, emptied, for the next: fresh ones (about
    /// 22 MB for a run of 262,144) cost the seal some 5,000 page faults.
    spare: Vec<Vec<(Hash, TxLocation)>>,
}

impl TxIndex {
    /// The index with runs `runs` (from their record) and nothing recent yet.
    pub fn new(runs: Vec<(u64, u64)>) -> TxIndex {
        TxIndex {
            recent: HashMap::new(),
            sealed: None,
            runs,
            run_txs: RUN_TXS,
            part: None,
            spare: Vec::new(),
        }
    }

    /// Sets the transactions per run (at least 1).
    pub fn set_run_txs(&mut self, n: usize) {
        self.run_txs = n.max(1);
    }

    /// Sets the buckets of a run written a commit (at least 1), instead of a number
    /// that follows the block's transactions.
    pub fn set_run_part(&mut self, buckets: usize) {
        self.part = Some(buckets.max(1));
    }

    /// The first height whose transactions are in no run, sealed or in sled.
    pub fn recent_from(&self) -> u64 {
        let last = self
            .sealed
            .as_ref()
            .map(|s| s.last)
            .or(self.runs.last().map(|r| r.1));
        last.map_or(1, |l| l.saturating_add(1))
    }

    /// Notes committed (or, on open, re-read) locations.
    pub fn add(&mut self, locations: &[(Hash, TxLocation)]) {
        // Room for a whole run and the block that fills it, reserved at once: a table
        // that grows as it fills moves all its entries each time it doubles, and the
        // last time (at about 229,000 of a run of 262,144) that held a loaded
        // validator's commit for 60 to 140 ms. Entries land all over the table, so its
        // pages are faulted in over the first tens of thousands. No more than a default
        // run's room is reserved (a larger run grows), and should that fail, the table
        // grows as it fills instead.
        let run = self.run_txs.min(RUN_TXS);
        let room = run.saturating_add(run / 8);
        if self.recent.capacity() < room {
            let _ = self
                .recent
                .try_reserve(room.saturating_sub(self.recent.len()));
        }
        self.recent.extend(locations.iter().copied());
    }

    /// Seals the recent transactions, up to height `height`, into a run if there are
    /// enough of them and no other run is being written.
    fn seal_if_full(&mut self, height: u64) {
        if self.recent.len() < self.run_txs || self.sealed.is_some() {
            return;
        }
        let first = self.recent_from();
        let mut buckets = std::mem::take(&mut self.spare);
        if buckets.len() != RUN_BUCKETS {
            // About 64 a bucket in a run of 262,144, with room for the bucket's spread.
            let room = self.recent.len() / RUN_BUCKETS * 3 / 2;
            buckets = (0..RUN_BUCKETS).map(|_| Vec::with_capacity(room)).collect();
        }
        // A later location of a hash replaced its earlier one in the table (nonces make
        // that impossible, but a lookup of memory before runs would answer so too).
        // Drained, not dropped: the table keeps its slots for the next run.
        for (hash, loc) in self.recent.drain() {
            if let Some(b) = buckets.get_mut(usize::from(bucket(&hash))) {
                b.push((hash, loc));
            }
        }
        self.sealed = Some(Sealed {
            first,
            last: height,
            buckets,
            written: 0,
        });
    }

    /// Buckets of the sealed run a commit of `block_txs` transactions writes: enough
    /// that the run is in sled by the time the next is half full, so that the index
    /// costs each commit about the same per transaction, and at least
    /// [`RUN_PART_MIN_BUCKETS`].
    fn part_buckets(&self, block_txs: usize) -> usize {
        self.part.unwrap_or_else(|| {
            let share = RUN_BUCKETS
                .saturating_mul(2)
                .saturating_mul(block_txs)
                .div_ceil(self.run_txs);
            share.max(RUN_PART_MIN_BUCKETS)
        })
    }

    /// What the commit of a block with `locations` writes: the next part of the sealed
    /// run, or all that is left of it if the block fills the next run.
    pub fn writes_for(&self, locations: &[(Hash, TxLocation)]) -> IndexWrite {
        let Some(sealed) = &self.sealed else {
            return IndexWrite::default();
        };
        let fills = self.recent.len() + locations.len() >= self.run_txs;
        let part = if fills {
            RUN_BUCKETS
        } else {
            self.part_buckets(locations.len())
        };
        let written = sealed.written.saturating_add(part).min(RUN_BUCKETS);
        let records = (sealed.written..written)
            .filter_map(|b| sealed.record(b))
            .collect();
        let runs = (written == RUN_BUCKETS).then(|| {
            let mut runs = self.runs.clone();
            runs.push((sealed.first, sealed.last));
            encode_runs(&runs)
        });
        IndexWrite {
            records,
            runs,
            written,
        }
    }

    /// After the batch with `write` and the block at `height` with `locations` is
    /// stored.
    pub fn committed(&mut self, height: u64, locations: &[(Hash, TxLocation)], write: IndexWrite) {
        if let Some(sealed) = &mut self.sealed {
            sealed.written = sealed.written.max(write.written);
            if sealed.written >= RUN_BUCKETS {
                self.runs.push((sealed.first, sealed.last));
                // Always there (it was just matched); taken so that its tables can be
                // kept for the next run.
                if let Some(mut done) = self.sealed.take() {
                    done.buckets.iter_mut().for_each(Vec::clear);
                    self.spare = done.buckets;
                }
            }
        }
        self.add(locations);
        self.seal_if_full(height);
    }

    /// `hash`'s location if it is in memory, or else the runs to search, newest first.
    pub fn lookup(&self, hash: &Hash) -> Result<TxLocation, Vec<u64>> {
        if let Some(loc) = self.recent.get(hash) {
            return Ok(*loc);
        }
        match self.sealed.as_ref().and_then(|s| s.find(hash)) {
            Some(loc) => Ok(loc),
            None => Err(self.runs.iter().rev().map(|r| r.0).collect()),
        }
    }

    /// Number of runs in sled.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}

/// `hash`'s location in its bucket's record of a run (`None` if the run has no such
/// bucket).
pub(crate) fn search(
    record: Option<&[u8]>,
    hash: &Hash,
) -> Result<Option<TxLocation>, StorageError> {
    record.map_or(Ok(None), |r| find(r, hash))
}

/// The bucket key of `hash` in the run starting at `first`.
pub(crate) fn bucket_key(first: u64, hash: &Hash) -> [u8; 11] {
    run_key(first, bucket(hash))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn h(n: u32) -> Hash {
        pyralog_crypto::content_digest(&n.to_be_bytes())
    }

    fn loc(n: u32) -> TxLocation {
        TxLocation {
            height: u64::from(n / 4) + 1,
            index: n % 4,
            log_index: u64::from(n),
        }
    }

    /// The index and what a store would hold of it: its records and runs' list.
    #[derive(Default)]
    struct Stored {
        records: HashMap<[u8; 11], Vec<u8>>,
        runs: Option<Vec<u8>>,
    }

    impl Stored {
        /// Commits a block at `height` with `locations`, as the store's commit does.
        fn commit(&mut self, index: &mut TxIndex, height: u64, locations: &[(Hash, TxLocation)]) {
            let part = index.writes_for(locations);
            self.records
                .extend(part.records.iter().map(|(k, v)| (*k, v.clone())));
            if let Some(runs) = &part.runs {
                self.runs = Some(runs.clone());
            }
            index.committed(height, locations, part);
        }

        /// A lookup, as the store's.
        fn find(&self, index: &TxIndex, hash: &Hash) -> Option<TxLocation> {
            match index.lookup(hash) {
                Ok(loc) => Some(loc),
                Err(runs) => runs.into_iter().find_map(|first| {
                    let r = self.records.get(&bucket_key(first, hash));
                    search(r.map(Vec::as_slice), hash).unwrap()
                }),
            }
        }

        /// Entries in the records of the run starting at `first`.
        fn entries(&self, first: u64) -> usize {
            let of_run = |k: &&[u8; 11]| k[1..9] == first.to_be_bytes();
            let records = self.records.iter().filter(|(k, _)| of_run(k));
            records.map(|(_, r)| r.len() / ENTRY).sum()
        }
    }

    #[test]
    fn a_run_is_written_a_part_a_commit_and_listed_once_whole() {
        let mut index = TxIndex::new(Vec::new());
        index.set_run_txs(5000);
        index.set_run_part(1024);
        let mut stored = Stored::default();
        let all: Vec<(Hash, TxLocation)> = (0..5008).map(|n| (h(n), loc(n))).collect();
        stored.commit(&mut index, 1000, &all[..4000]);
        stored.commit(&mut index, 1249, &all[4000..4999]);
        // The block that fills a run goes into it, whole; nothing is written yet.
        stored.commit(&mut index, 1250, &all[4999..5000]);
        assert!(stored.records.is_empty() && stored.runs.is_none());
        assert_eq!((index.runs(), index.recent_from()), (0, 1251));
        // Four more commits write it, a quarter of its buckets each, and the last lists
        // it; every entry is found all along, from memory or from the records.
        for (i, n) in (5000..5004).enumerate() {
            for (hash, l) in &all[..n] {
                assert_eq!(stored.find(&index, hash), Some(*l));
            }
            stored.commit(&mut index, 1251 + i as u64, &all[n..n + 1]);
            let whole = i == 3;
            assert_eq!(stored.runs.is_some(), whole, "after part {i}");
            assert_eq!(index.runs(), usize::from(whole));
            assert!(stored.records.len() <= (i + 1) * 1024);
        }
        assert_eq!(stored.entries(1), 5000);
        assert_eq!(
            decode_runs(stored.runs.as_ref().unwrap()).unwrap(),
            vec![(1, 1250)]
        );
        assert_eq!(index.lookup(&all[0].0), Err(vec![1]));
        for (hash, l) in &all[..5004] {
            assert_eq!(stored.find(&index, hash), Some(*l));
        }
        assert_eq!(stored.find(&index, &h(99_999)), None);
        // Truncated records and lists are corruption, never a panic.
        let some = stored.records.values().next().unwrap();
        assert!(find(&some[..some.len() - 1], &all[0].0).is_err());
        let runs = stored.runs.unwrap();
        assert!(decode_runs(&runs[..15]).is_err());
        assert!(decode_runs(&encode_runs(&[(5, 9), (3, 4)])).is_err());
    }

    #[test]
    fn a_block_that_fills_a_run_first_writes_all_of_the_one_before() {
        let mut index = TxIndex::new(Vec::new());
        index.set_run_txs(40);
        index.set_run_part(1);
        let mut stored = Stored::default();
        let all: Vec<(Hash, TxLocation)> = (0..120).map(|n| (h(n), loc(n))).collect();
        for (i, block) in all.chunks(20).enumerate() {
            stored.commit(&mut index, i as u64 + 1, block);
        }
        // Runs sealed at heights 2, 4 and 6; the first two written whole by the blocks
        // that filled the next, the third written one bucket so far (of 4,096).
        assert_eq!(
            decode_runs(stored.runs.as_ref().unwrap()).unwrap(),
            vec![(1, 2), (3, 4)]
        );
        assert_eq!((stored.entries(1), stored.entries(3)), (40, 40));
        assert_eq!(index.recent_from(), 7);
        for (hash, l) in &all {
            assert_eq!(stored.find(&index, hash), Some(*l));
        }
    }

    /// A hash committed again is found at its newest place, whether the older one is
    /// in a listed run, a sealed one or recent (nonces make that impossible, but the
    /// answer must not depend on where the index keeps it).
    #[test]
    fn the_newest_place_wins_across_runs_sealed_and_recent() {
        let mut index = TxIndex::new(Vec::new());
        index.set_run_txs(2);
        index.set_run_part(RUN_BUCKETS);
        let mut stored = Stored::default();
        let at = |height: u64| TxLocation {
            height,
            index: 0,
            log_index: height,
        };
        stored.commit(&mut index, 1, &[(h(1), at(1)), (h(2), loc(2))]);
        stored.commit(&mut index, 2, &[(h(1), at(2))]);
        // Height 1's run is listed; the newer place is recent.
        assert_eq!(index.runs(), 1);
        assert_eq!(stored.find(&index, &h(1)), Some(at(2)));
        // Sealed, over the listed run.
        stored.commit(&mut index, 3, &[(h(3), loc(3))]);
        assert!(index.sealed.is_some());
        assert_eq!(stored.find(&index, &h(1)), Some(at(2)));
        // Recent, over the sealed run (one bucket of it written) and the listed one.
        index.set_run_part(1);
        stored.commit(&mut index, 4, &[(h(1), at(4))]);
        assert_eq!(stored.find(&index, &h(1)), Some(at(4)));
        // All of it in runs: the newest run first.
        stored.commit(&mut index, 5, &[(h(5), loc(5))]);
        stored.commit(&mut index, 6, &[]);
        index.set_run_part(RUN_BUCKETS);
        stored.commit(&mut index, 7, &[]);
        assert_eq!((index.runs(), index.sealed.is_none()), (3, true));
        assert_eq!(stored.find(&index, &h(1)), Some(at(4)));
    }

    /// The recent table has room for a whole run from its first entry, so it never
    /// moves its entries as a run fills.
    #[test]
    fn the_recent_table_never_grows_while_a_run_fills() {
        let mut index = TxIndex::new(Vec::new());
        // 7,000 and the eighth more for the block that fills a run need a table twice
        // the size that 7,000 alone do (7,168 entries).
        index.set_run_txs(7000);
        let all: Vec<(Hash, TxLocation)> = (0..7600).map(|n| (h(n), loc(n))).collect();
        index.add(&all[..1]);
        let room = index.recent.capacity();
        assert!(room >= 7000 + 7000 / 8, "{room}");
        for block in all[1..].chunks(400) {
            index.add(block);
            assert_eq!(index.recent.capacity(), room);
        }
        // Drained into the sealed run, it keeps that room for the next one.
        index.seal_if_full(19);
        assert!(index.recent.is_empty() && index.sealed.is_some());
        assert_eq!(index.recent.capacity(), room);
    }

    /// Defaults: a run's parts follow the blocks' transactions, so that it is written
    /// by the time the next is half full, and are never under the minimum.
    #[test]
    fn a_runs_parts_follow_the_blocks_transactions() {
        let mut index = TxIndex::new(Vec::new());
        assert_eq!(index.part_buckets(1), RUN_PART_MIN_BUCKETS);
        assert_eq!(index.part_buckets(RUN_TXS / 64), 128);
        assert_eq!(index.part_buckets(RUN_TXS), 2 * RUN_BUCKETS);
        index.set_run_txs(1000);
        index.add(&(0..1000).map(|n| (h(n), loc(n))).collect::<Vec<_>>());
        index.seal_if_full(250);
        // A block of 125 transactions writes a quarter of the buckets.
        let block: Vec<(Hash, TxLocation)> = (1000..1125).map(|n| (h(n), loc(n))).collect();
        let part = index.writes_for(&block);
        assert_eq!(part.written, RUN_BUCKETS / 4);
        assert!(part.runs.is_none());
    }

    #[test]
    fn a_corrupt_run_list_or_bucket_is_an_error() {
        assert_eq!(
            decode_runs(&encode_runs(&[(1, 4), (5, 9)])).unwrap(),
            vec![(1, 4), (5, 9)]
        );
        for bad in [
            vec![(2, 4)],                // not from height 1
            vec![(1, 4), (6, 9)],        // a gap
            vec![(1, 4), (4, 9)],        // an overlap
            vec![(1, 4), (5, 3)],        // backwards
            vec![(1, u64::MAX)],         // no height after it
            vec![(1, u64::MAX), (0, 0)], // and one that wraps
        ] {
            assert!(decode_runs(&encode_runs(&bad)).is_err(), "{bad:?}");
        }
        // A bucket of entries out of order, or of another bucket, is refused rather
        // than searched.
        let mut index = TxIndex::new(Vec::new());
        index.set_run_txs(1);
        index.set_run_part(RUN_BUCKETS);
        let all: Vec<(Hash, TxLocation)> = (0..5000).map(|n| (h(n), loc(n))).collect();
        index.add(&all);
        index.seal_if_full(1250);
        let part = index.writes_for(&[]);
        let (key, record) = part
            .records
            .iter()
            .find(|(_, r)| r.len() >= 2 * ENTRY)
            .unwrap();
        let first: Hash = Hash(record[..32].try_into().unwrap());
        assert!(find(record, &first).unwrap().is_some());
        let mut swapped = record[ENTRY..2 * ENTRY].to_vec();
        swapped.extend_from_slice(&record[..ENTRY]);
        swapped.extend_from_slice(&record[2 * ENTRY..]);
        assert!(find(&swapped, &first).is_err());
        let other = part.records.iter().find(|(k, _)| k != key).unwrap();
        assert!(find(&other.1, &first).is_err());
    }

    #[test]
    fn a_hash_there_twice_keeps_its_newest_place() {
        let mut index = TxIndex::new(Vec::new());
        index.set_run_txs(3);
        index.set_run_part(RUN_BUCKETS);
        let mut stored = Stored::default();
        let older = TxLocation {
            height: 1,
            index: 0,
            log_index: 0,
        };
        let newer = TxLocation {
            height: 2,
            index: 1,
            log_index: 2,
        };
        stored.commit(&mut index, 1, &[(h(1), older), (h(2), loc(1))]);
        stored.commit(&mut index, 2, &[(h(3), loc(2)), (h(1), newer)]);
        assert_eq!(stored.find(&index, &h(1)), Some(newer));
        stored.commit(&mut index, 3, &[]);
        assert_eq!(index.runs(), 1);
        assert_eq!(stored.find(&index, &h(1)), Some(newer));
        assert_eq!(stored.entries(1), 3);
    }
}
