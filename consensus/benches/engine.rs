//! Engine throughput in the deterministic simulator: decisions per second of CPU, next to
//! the signature work a decision needs at minimum, measured in the same run.
//!
//! Each simulated height costs every one of the n nodes one proposal and 2(n−1) vote
//! signature checks (plus block validation: the carried certificate, transaction
//! signatures, execution). The baseline `signature_bound` times exactly n × (2n − 1)
//! vote verifications, so `decide / signature_bound` is the overhead of everything else
//! (state machine, encoding, simulation, validation).
//!
//! `cargo bench -p pyralog-consensus`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pyralog_consensus::sim::Scenario;
use pyralog_crypto::{Hash, Keypair};
use pyralog_ledger::{ChainId, Vote, VoteKind};

const HEIGHTS: u64 = 20;

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("tendermint_sim");
    group.measurement_time(Duration::from_secs(10));
    group.sample_size(10);
    group.throughput(Throughput::Elements(HEIGHTS));
    for n in [4usize, 7] {
        group.bench_function(format!("decide_{HEIGHTS}_heights_n{n}"), |b| {
            b.iter(|| {
                let report = Scenario::new(n).blocks_after_heal(HEIGHTS).run();
                assert!(report.ok());
                black_box(report.decided)
            })
        });
        let key = Keypair::from_seed(&[1; 32]);
        let chain = ChainId::new("bench").unwrap();
        let vote = Vote {
            kind: VoteKind::Prevote,
            height: 1,
            round: 0,
            block: Some(Hash([2; 32])),
            time_ms: 1,
        };
        let sig = vote.sign(&key, &chain);
        let public = key.public();
        let per_height = n * (2 * n - 1);
        group.bench_function(format!("signature_bound_{HEIGHTS}_heights_n{n}"), |b| {
            b.iter(|| {
                for _ in 0..HEIGHTS as usize * per_height {
                    vote.verify(&public, &chain, &sig).unwrap();
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
