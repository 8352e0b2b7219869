//! Crash safety: a child process commits blocks in a loop and is killed with SIGKILL at
//! random moments; after each kill the store must reopen at a committed height with every
//! block, certificate, index entry and tree node of that height, and with no commit the
//! child reported lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pyralog_ledger::{Decode, Tip, apply_block, log, state, verify};
use pyralog_storage::{SledStore, Store};

const CHILD_DIR_VAR: &str = "PYRALOG_CRASH_CHILD_DIR";
const KILLS: usize = 24;

/// The child's loop: commit blocks until killed, announcing each durable commit.
#[test]
#[ignore = "entry point of the crash test's child process, run by kills_at_random_moments_never_lose_a_reported_commit"]
fn crash_child_entry() {
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        return;
    };
    // Runs of the transaction index every three blocks (four transactions each), each
    // written in halves by the two commits after, so kills land in the commits that
    // write them, and between the halves, too.
    let store = SledStore::open(dir.as_ref())
        .unwrap()
        .with_tx_run(12)
        .with_tx_run_part(2048);
    let chain = common::test_chain();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let h = common::commit_next(&store, &chain);
        println!("committed {h}");
    }
}

/// Checks heights `from..=tip` of a reopened store.
fn check_store(store: &SledStore, from: u64) -> Tip {
    let chain = common::test_chain();
    let tip = store.tip().unwrap();
    for h in from.max(1)..=tip.height {
        let block = store
            .block(h)
            .unwrap()
            .unwrap_or_else(|| panic!("block {h} missing"));
        let cert = store
            .certificate(h)
            .unwrap()
            .unwrap_or_else(|| panic!("certificate {h} missing"));
        let header = store.header(h).unwrap().unwrap();
        assert_eq!(header, block.header);
        verify::verify_certificate(chain.genesis.engine, &chain.validators, &header, &cert)
            .unwrap();
        if h > 1 {
            let prev = store.header(h - 1).unwrap().unwrap();
            verify::verify_header_link(&prev, &header).unwrap();
        } else {
            verify::verify_first_header(&chain.genesis, &header).unwrap();
        }
        assert_eq!(
            log::root(store, header.log_size).unwrap(),
            header.log_root,
            "log root at {h}"
        );
        for tx in &block.txs {
            assert_eq!(
                store.tx_location(&tx.hash()).unwrap().map(|l| l.height),
                Some(h)
            );
        }
        // The state at h is complete: re-executing block h on the state of h - 1 gives
        // the header's roots.
        let before = match h {
            1 => Tip::genesis(),
            _ => {
                let p = store.header(h - 1).unwrap().unwrap();
                let state = store.state_root(h - 1).unwrap().unwrap();
                assert_eq!(state.hash, p.state_root);
                Tip {
                    height: h - 1,
                    log_size: p.log_size,
                    state_root: state.hash,
                    state_root_at: state.at,
                }
            }
        };
        let exec = apply_block(store, store, &before, &block).unwrap();
        verify::verify_execution(&header, &exec).unwrap();
        let key = pyralog_ledger::state::state_key(pyralog_ledger::Namespace::Kv, b"counter");
        let state = store.state_root(h).unwrap().unwrap();
        assert_eq!(state.hash, header.state_root);
        let stored = state::get(store, &state, &key).unwrap().unwrap();
        let record = pyralog_ledger::KvRecord::from_bytes(&stored).unwrap();
        assert_eq!(record.value, Some(h.to_be_bytes().to_vec()));
    }
    if tip.height > 0 {
        let last = store.header(tip.height).unwrap().unwrap();
        assert_eq!(
            (tip.log_size, tip.state_root),
            (last.log_size, last.state_root)
        );
    }
    // Nothing beyond the tip.
    assert!(store.block(tip.height + 1).unwrap().is_none());
    tip
}

#[test]
fn kills_at_random_moments_never_lose_a_reported_commit() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let seed: u64 = std::env::var("PYRALOG_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c0de);
    println!("crash test seed={seed} (set PYRALOG_CRASH_SEED to replay the kill schedule)");
    let mut rng = seed;
    let mut next_delay = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        Duration::from_millis(20 + rng % 380)
    };
    let mut checked_up_to: u64 = 0;
    let mut reported_total = 0;
    for kill in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "crash_child_entry",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = next_delay();
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let reported = out
            .lines()
            .filter_map(|l| l.strip_prefix("committed "))
            .filter_map(|n| n.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        reported_total = reported_total.max(reported);
        let store = SledStore::open(dir.path()).unwrap();
        let tip = check_store(&store, checked_up_to.saturating_sub(2));
        assert!(
            tip.height >= reported,
            "kill {kill} after {delay:?}: the child reported height {reported} durable, the store reopened at {}",
            tip.height
        );
        checked_up_to = tip.height;
    }
    let store = SledStore::open(dir.path()).unwrap();
    let tip = check_store(&store, 1);
    println!(
        "{KILLS} kills, store at height {}, reported {reported_total}, {} index runs",
        tip.height,
        store.tx_index_runs()
    );
    assert!(
        tip.height >= 10,
        "too few blocks committed to mean anything: {}",
        tip.height
    );
    // Most of the transactions were found in the index's runs, not in memory: a kill
    // while a run is being written costs at most that run, which is sealed again, with
    // more blocks, after the reopen.
    assert!(
        store.tx_index_runs() as u64 >= (tip.height / 3).saturating_sub(1 + KILLS as u64),
        "{} runs at height {}",
        store.tx_index_runs(),
        tip.height
    );
}
