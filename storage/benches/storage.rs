//! Block commit to sled (one atomic batch and a flush) next to the cost of one fsync of a
//! small write measured in the same run.
//!
//! `cargo bench -p pyralog-storage`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use pyralog_crypto::content_digest;
use pyralog_ledger::testing::user;
use pyralog_storage::{SledStore, Store};

#[path = "../tests/common/mod.rs"]
mod common;

const TXS_PER_BLOCK: u64 = 1000;

fn bench_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("db")).unwrap();
    let chain = common::test_chain();
    let mut g = c.benchmark_group("storage");
    g.bench_function(
        "commit a block of 1000 notarizations (batch + flush)",
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let h = store.tip().unwrap().height + 1;
                    let txs = (0..TXS_PER_BLOCK)
                        .map(|i| {
                            chain.notarize(
                                &user(h * 100_000 + i),
                                0,
                                content_digest(&(h * 100_000 + i).to_be_bytes()),
                                "",
                            )
                        })
                        .collect();
                    let (block, cert, exec) = common::next_block(&store, &chain, txs);
                    let start = Instant::now();
                    store.commit_block(&block, &cert, &exec).unwrap();
                    total += start.elapsed();
                }
                total
            })
        },
    );
    let path = dir.path().join("fsync-probe");
    let mut file = std::fs::File::create(&path).unwrap();
    g.bench_function("baseline: write 4 KiB + fsync", |b| {
        b.iter(|| {
            file.write_all(&[1u8; 4096]).unwrap();
            file.sync_all().unwrap();
        })
    });
    g.finish();
    let tip = store.tip().unwrap();
    let bytes = store.size_on_disk().unwrap();
    let raw: u64 = (1..=tip.height)
        .map(|h| {
            store
                .block(h)
                .unwrap()
                .unwrap()
                .txs
                .iter()
                .map(|t| pyralog_ledger::Encode::to_bytes(t).len() as u64)
                .sum::<u64>()
        })
        .sum();
    println!(
        "storage: {} blocks, {} tx, {} bytes on disk, {:.1} bytes per tx, {:.1}x raw transaction bytes",
        tip.height,
        tip.log_size,
        bytes,
        bytes as f64 / tip.log_size.max(1) as f64,
        bytes as f64 / raw.max(1) as f64
    );
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! { name = benches; config = config(); targets = bench_commit }
criterion_main!(benches);
