//! Ledger hot paths next to baselines measured in the same run: raw BLAKE3 over the same
//! bytes (what the hashing alone costs) for log appends, proofs and state updates.
//!
//! `cargo bench -p pyralog-ledger`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use pyralog_crypto::{Hash, content_digest};
use pyralog_ledger::log::{self, MemLog};
use pyralog_ledger::merkle::{TreeHasher, verify_consistency, verify_inclusion};
use pyralog_ledger::state::{self, MemState, Subtree, verify_state_proof};

const LOG_SIZE: u64 = 1 << 17;
const STATE_KEYS: u32 = 100_000;

fn entry(i: u64) -> Hash {
    content_digest(&i.to_be_bytes())
}

fn raw_hashes(n: usize, len: usize) -> Hash {
    let data = vec![7u8; len];
    let mut acc = [0u8; 32];
    for _ in 0..n {
        acc = *blake3::hash(&data).as_bytes();
    }
    Hash(acc)
}

fn bench_log(c: &mut Criterion) {
    let mut log = MemLog::new();
    let all: Vec<Hash> = (0..LOG_SIZE).map(entry).collect();
    log.append(&all).unwrap();
    let batch: Vec<Hash> = (LOG_SIZE..LOG_SIZE + 1024).map(entry).collect();
    let mut g = c.benchmark_group("log");
    g.bench_function("append 1024 entries to 131072 (roots included)", |b| {
        b.iter(|| log::append_with_root(&log, LOG_SIZE, black_box(&batch)).unwrap())
    });
    g.bench_function("baseline: 2048 raw BLAKE3 of 32 bytes", |b| {
        b.iter(|| raw_hashes(2048, 32))
    });
    let n = LOG_SIZE;
    let root = log.root(n).unwrap();
    let i = n / 3;
    let proof = log::inclusion_proof(&log, i, n).unwrap();
    g.bench_function("inclusion proof build (n=131072)", |b| {
        b.iter(|| log::inclusion_proof(&log, black_box(i), n).unwrap())
    });
    g.bench_function("inclusion proof verify (n=131072)", |b| {
        b.iter(|| {
            verify_inclusion(
                TreeHasher::LOG_TREE,
                i,
                n,
                &all[i as usize],
                black_box(&proof),
                &root,
            )
            .unwrap()
        })
    });
    let m = n / 2 + 12345;
    let old_root = log.root(m).unwrap();
    let cproof = log::consistency_proof(&log, m, n).unwrap();
    g.bench_function("consistency proof build (77k -> 131k)", |b| {
        b.iter(|| log::consistency_proof(&log, black_box(m), n).unwrap())
    });
    g.bench_function("consistency proof verify (77k -> 131k)", |b| {
        b.iter(|| {
            verify_consistency(
                TreeHasher::LOG_TREE,
                m,
                &old_root,
                n,
                &root,
                black_box(&cproof),
            )
            .unwrap()
        })
    });
    g.bench_function("baseline: 17 raw BLAKE3 of 64 bytes (one path)", |b| {
        b.iter(|| raw_hashes(17, 64))
    });
    g.finish();
}

fn bench_state(c: &mut Criterion) {
    let mut store = MemState::new();
    let all: BTreeMap<Hash, Option<Vec<u8>>> = (0..STATE_KEYS)
        .map(|k| (content_digest(&k.to_be_bytes()), Some(vec![1u8; 16])))
        .collect();
    let (root, writes) = state::update(&store, &Subtree::EMPTY, 1, &all).unwrap();
    store.insert_all(writes);
    let mut g = c.benchmark_group("state");
    let one: BTreeMap<Hash, Option<Vec<u8>>> =
        [(content_digest(b"new key"), Some(vec![2u8; 16]))].into();
    g.bench_function("update 1 key in 100k", |b| {
        b.iter(|| state::update(&store, &root, 2, black_box(&one)).unwrap())
    });
    let thousand: BTreeMap<Hash, Option<Vec<u8>>> = (0..1000u32)
        .map(|k| {
            (
                content_digest(&(k + 10_000_000).to_be_bytes()),
                Some(vec![3u8; 16]),
            )
        })
        .collect();
    g.bench_function("update 1000 keys in 100k (one block)", |b| {
        b.iter_batched(
            || thousand.clone(),
            |u| state::update(&store, &root, 2, &u).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("baseline: 1000 x 18 raw BLAKE3 of 64 bytes", |b| {
        b.iter(|| raw_hashes(18_000, 64))
    });
    let key = content_digest(&77u32.to_be_bytes());
    let (value, proof) = state::prove(&store, &root, &key).unwrap();
    g.bench_function("prove a key in 100k", |b| {
        b.iter(|| state::prove(&store, &root, black_box(&key)).unwrap())
    });
    g.bench_function("verify a value proof in 100k", |b| {
        b.iter(|| {
            verify_state_proof(&root.hash, &key, value.as_deref(), black_box(&proof)).unwrap()
        })
    });
    g.bench_function("baseline: 18 raw BLAKE3 of 64 bytes (one path)", |b| {
        b.iter(|| raw_hashes(18, 64))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = bench_log, bench_state }
criterion_main!(benches);
