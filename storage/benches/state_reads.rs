//! Reads at the tip of a large state through the state-node cache, with no value cache
//! in front: a new notarization's digest, absent (the walk a node makes to admit each
//! new notarization, 6 to 12% of a validator's CPU at saturation), and a notarized one.
//! A walk probes the cache's hash table once per level, at random places in hundreds of
//! megabytes, so it is bound by memory latency; past what the cache holds, by sled.
//! Then the same absent reads answered by a tip cache's filter of present keys, as a
//! node reads them, and the time to build that filter from the store (at a node's start).
//!
//! ```sh
//! cargo bench -p pyralog-storage --bench state_reads
//! # glibc's transparent huge pages for the tables (docs/PERFORMANCE.md, fourteenth session):
//! GLIBC_TUNABLES=glibc.malloc.hugetlb=1 cargo bench -p pyralog-storage --bench state_reads
//! ```
//!
//! `PYRALOG_BENCH_NOTARIZATIONS` (default 300,000) notarizations, each from its own
//! account, so the state holds twice as many keys; the default state-node cache
//! ([`pyralog_storage::sled::DEFAULT_STATE_CACHE_BYTES`]) holds a smaller state's nodes.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use pyralog_crypto::{Hash, content_digest};
use pyralog_ledger::keyfilter::KeyFilter;
use pyralog_ledger::testing::user;
use pyralog_ledger::{BlockExecutor, TipCache};
use pyralog_storage::{SledStore, Store};

#[path = "../tests/common/mod.rs"]
mod common;

const TXS_PER_BLOCK: u64 = 5000;
const READS: u64 = 200_000;

fn digest(i: u64) -> Hash {
    content_digest(&i.to_be_bytes())
}

fn main() {
    let notarizations: u64 = std::env::var("PYRALOG_BENCH_NOTARIZATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("db")).unwrap();
    let chain = common::test_chain();
    let started = Instant::now();
    let mut next = 0;
    while next < notarizations {
        let end = (next + TXS_PER_BLOCK).min(notarizations);
        let txs = (next..end)
            .map(|i| chain.notarize(&user(i), 0, digest(i), ""))
            .collect();
        next = end;
        let (block, cert, exec) = common::next_block(&store, &chain, txs);
        store.commit_block(&block, &cert, &exec).unwrap();
    }
    println!(
        "state_reads: {notarizations} notarizations from as many accounts committed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let tip = store.tip().unwrap();
    let exec = BlockExecutor::new(&store, &store, tip, chain.chain_id(), 0);
    // Digests never notarized, and notarized ones in an order unrelated to the tree's.
    let absent = |i: u64| digest(u64::MAX - i);
    let present = |i: u64| digest(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % notarizations);
    for round in ["warm-up", "measured"] {
        let t = Instant::now();
        for i in 0..READS {
            assert!(exec.notarization(&absent(i)).unwrap().is_none());
        }
        let absent_ns = t.elapsed().as_nanos() as f64 / READS as f64;
        let t = Instant::now();
        for i in 0..READS {
            assert!(exec.notarization(&present(i)).unwrap().is_some());
        }
        let present_ns = t.elapsed().as_nanos() as f64 / READS as f64;
        println!(
            "state_reads ({round}): {absent_ns:.0} ns a read of an absent digest, {present_ns:.0} ns of a notarized one ({READS} each)"
        );
    }
    // The same absent reads answered by a tip cache's filter of present keys, and what
    // building that filter at a node's start costs here.
    let t = Instant::now();
    let tip = store.tip().unwrap();
    let cache = TipCache::new(tip.state_root, 1 << 16);
    let build = cache.begin_filter();
    let mut filter = KeyFilter::new(usize::try_from(tip.log_size * 2).unwrap(), 0x5eed);
    let leaves = store
        .for_each_state_leaf_key(tip.height, |k| {
            filter.insert(k);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    let bytes = filter.bytes();
    assert!(cache.finish_filter(build, filter));
    println!(
        "state_reads: filter of present keys built from {leaves} stored leaves ({} keys) in {:.2} s, {} KiB",
        cache.filter_size().map_or(0, |(keys, _)| keys),
        t.elapsed().as_secs_f64(),
        bytes / 1024
    );
    let filtered = BlockExecutor::new(&store, &store, tip, chain.chain_id(), 0).with_cache(&cache);
    for round in ["warm-up", "measured"] {
        let t = Instant::now();
        for i in 0..READS {
            assert!(filtered.notarization(&absent(i)).unwrap().is_none());
        }
        let absent_ns = t.elapsed().as_nanos() as f64 / READS as f64;
        println!(
            "state_reads ({round}): {absent_ns:.0} ns a read of an absent digest through the filter ({} of {READS} walked: held in the cache after)",
            cache.len()
        );
    }
    let huge = std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("AnonHugePages:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .unwrap_or_else(|| "?".into());
    println!(
        "state_reads: GLIBC_TUNABLES={:?}, {huge} kB of anonymous huge pages",
        std::env::var("GLIBC_TUNABLES").unwrap_or_default()
    );
}
