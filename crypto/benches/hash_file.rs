//! `cargo bench -p pyralog-crypto --bench hash_file`: hashing a 1 GiB file the way
//! `pyralog notarize` does, against raw BLAKE3 on all cores over the same bytes in memory,
//! in one run. Target (issue 8): at least 0.9 of raw.
// A benchmark reads the clock: that is what it is for.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    missing_docs
)]

use std::io::Write;
use std::time::Instant;

const SIZE: usize = 1 << 30;

fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 31 + i / 4096) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one-gib");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&data)
        .unwrap();
    let raw_hash = blake3::Hasher::new().update_rayon(&data).finalize();
    let raw = best_of(3, || {
        std::hint::black_box(blake3::Hasher::new().update_rayon(&data).finalize());
    });
    let mut got = None;
    let file = best_of(3, || got = Some(pyralog_crypto::hash_file(&path).unwrap()));
    assert_eq!(got.unwrap().0, *raw_hash.as_bytes());
    let gib = |secs: f64| 1.0 / secs;
    println!("1 GiB, best of 3, file in the page cache:");
    println!("  raw BLAKE3 in memory, all cores  {:.2} GiB/s", gib(raw));
    println!(
        "  hash_file (mmap, all cores)       {:.2} GiB/s ({:.2} of raw)",
        gib(file),
        raw / file
    );
}
