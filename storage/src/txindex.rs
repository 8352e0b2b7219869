//! The transaction index of storage format 3: a transaction's hash → where it is.
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
//! A run is written in the batch of the block that fills it, so it is as atomic and as
//! durable as that block. The transactions of the blocks after the last run are only in
//! memory: on open they are read back from those blocks (fewer than a run of them: the
//! block that fills a run goes into it, whole). A lookup checks memory, then each run from the newest, one sled read of a
//! bucket each: a run of 262,144 transactions has about 64 in a bucket, so a lookup of a
//! hash that is not there, in a chain of 100 million, reads some 380 records of 3.3 KB.
//! Runs are never merged; merging them (a log-structured merge) would bound that.
//!
//! The recent entries take about 30 MB at most (a hash table of up to 2^19 slots of 57
//! bytes, kept allocated between runs). The commit that writes a run sorts them
//! and inserts 4,096 records (about 13.5 MB), once every 262,144 transactions: on an
//! idle machine about 0.11 s more than another commit (52 ms to sort, 61 ms for sled, in
//! a release build), but under 3,000 tx/s on two cores it held every validator of a
//! 4-validator testnet for 1.5 to 1.9 s, and their drivers admitted nothing meanwhile
//! (docs/PERFORMANCE.md, twentieth session). Writing a run a part at a time would
//! spread that out.

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

/// What a commit writes for a full run: its records and the new runs' list.
pub(crate) struct NewRun {
    pub records: Vec<([u8; 11], Vec<u8>)>,
    pub runs: Vec<u8>,
    first: u64,
    last: u64,
}

/// The in-memory part of the index, and the runs' bounds.
#[derive(Debug)]
pub(crate) struct TxIndex {
    /// Transactions of the blocks after the last run.
    recent: HashMap<Hash, TxLocation>,
    /// `(first, last)` heights of each run, oldest first.
    runs: Vec<(u64, u64)>,
    /// Transactions per run.
    run_txs: usize,
}

impl TxIndex {
    /// The index with runs `runs` (from their record) and nothing recent yet.
    pub fn new(runs: Vec<(u64, u64)>) -> TxIndex {
        TxIndex {
            recent: HashMap::new(),
            runs,
            run_txs: RUN_TXS,
        }
    }

    /// Sets the transactions per run (at least 1).
    pub fn set_run_txs(&mut self, n: usize) {
        self.run_txs = n.max(1);
    }

    /// The first height whose transactions are not in a run.
    pub fn recent_from(&self) -> u64 {
        self.runs.last().map_or(1, |r| r.1.saturating_add(1))
    }

    /// Notes committed (or, on open, re-read) locations.
    pub fn add(&mut self, locations: &[(Hash, TxLocation)]) {
        self.recent.extend(locations.iter().copied());
    }

    /// The run a commit of block `height` with `locations` must write, if the block fills
    /// one: the recent transactions and the block's.
    pub fn run_for(&self, height: u64, locations: &[(Hash, TxLocation)]) -> Option<NewRun> {
        if self.recent.len() + locations.len() < self.run_txs {
            return None;
        }
        let mut entries: Vec<(Hash, TxLocation)> = self
            .recent
            .iter()
            .map(|(h, l)| (*h, *l))
            .chain(locations.iter().copied())
            .collect();
        // By hash, then by place; a hash that is there twice (nonces make that
        // impossible) keeps its newest place, as a lookup of memory before runs does.
        entries.sort_unstable_by_key(|e| (e.0.0, e.1.height, e.1.index));
        entries.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                *earlier = *later;
            }
            same
        });
        let first = self.recent_from();
        let mut records: Vec<([u8; 11], Vec<u8>)> = Vec::new();
        for (hash, loc) in entries {
            let k = run_key(first, bucket(&hash));
            if records.last().is_none_or(|(last, _)| *last != k) {
                records.push((k, Vec::new()));
            }
            if let Some((_, v)) = records.last_mut() {
                v.extend_from_slice(&hash.0);
                v.extend_from_slice(&encode_location(&loc));
            }
        }
        let mut runs = self.runs.clone();
        runs.push((first, height));
        Some(NewRun {
            records,
            runs: encode_runs(&runs),
            first,
            last: height,
        })
    }

    /// After the batch with `run` is stored: the recent transactions are in it.
    pub fn ran(&mut self, run: &NewRun) {
        self.runs.push((run.first, run.last));
        self.recent.clear();
    }

    /// `hash`'s location if it is recent, or else the runs to search, newest first.
    pub fn lookup(&self, hash: &Hash) -> Result<TxLocation, Vec<u64>> {
        match self.recent.get(hash) {
            Some(loc) => Ok(*loc),
            None => Err(self.runs.iter().rev().map(|r| r.0).collect()),
        }
    }

    /// Number of runs.
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

    #[test]
    fn a_run_holds_every_entry_in_its_bucket_and_nothing_else() {
        let mut index = TxIndex::new(Vec::new());
        index.set_run_txs(5000);
        let all: Vec<(Hash, TxLocation)> = (0..5000).map(|n| (h(n), loc(n))).collect();
        index.add(&all[..4000]);
        assert!(index.run_for(1000, &all[4000..4999]).is_none());
        let run = index.run_for(1250, &all[4000..]).unwrap();
        assert!(run.records.len() <= RUN_BUCKETS);
        let records: HashMap<[u8; 11], Vec<u8>> = run.records.iter().cloned().collect();
        for (hash, l) in &all {
            let r = records.get(&bucket_key(1, hash)).map(Vec::as_slice);
            assert_eq!(search(r, hash).unwrap(), Some(*l));
        }
        let absent = h(99_999);
        let r = records.get(&bucket_key(1, &absent)).map(Vec::as_slice);
        assert_eq!(search(r, &absent).unwrap(), None);
        assert_eq!(decode_runs(&run.runs).unwrap(), vec![(1, 1250)]);
        index.ran(&run);
        assert_eq!((index.runs(), index.recent_from()), (1, 1251));
        assert_eq!(index.lookup(&all[0].0), Err(vec![1]));
        // Truncated records and lists are corruption, never a panic.
        let some = &run.records[0].1;
        assert!(find(&some[..some.len() - 1], &all[0].0).is_err());
        assert!(decode_runs(&run.runs[..15]).is_err());
        assert!(decode_runs(&encode_runs(&[(5, 9), (3, 4)])).is_err());
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
        let all: Vec<(Hash, TxLocation)> = (0..5000).map(|n| (h(n), loc(n))).collect();
        let run = index.run_for(1250, &all).unwrap();
        let (key, record) = run
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
        let other = run.records.iter().find(|(k, _)| k != key).unwrap();
        assert!(find(&other.1, &first).is_err());
    }

    #[test]
    fn a_hash_there_twice_keeps_its_newest_place() {
        let mut index = TxIndex::new(Vec::new());
        index.set_run_txs(3);
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
        index.add(&[(h(1), older), (h(2), loc(1))]);
        let run = index.run_for(2, &[(h(3), loc(2)), (h(1), newer)]).unwrap();
        let records: HashMap<[u8; 11], Vec<u8>> = run.records.iter().cloned().collect();
        let r = records.get(&bucket_key(1, &h(1))).map(Vec::as_slice);
        assert_eq!(search(r, &h(1)).unwrap(), Some(newer));
        let entries: usize = run.records.iter().map(|(_, r)| r.len() / ENTRY).sum();
        assert_eq!(entries, 3);
    }
}
