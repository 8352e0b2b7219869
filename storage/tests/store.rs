//! The sled store keeps what was committed and serves every proof at every height.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pyralog_crypto::content_digest;
use pyralog_ledger::state::{self, Namespace, state_key};
use pyralog_ledger::testing::TestChain;
use pyralog_ledger::{Decode, Tip, TxTree, log, verify, verify_receipt};
use pyralog_storage::{SledStore, StorageError, Store};

mod common;

/// Builds a chain of `n` blocks into `store`, mirroring it in memory.
fn build(store: &SledStore, n: u64) -> TestChain {
    let mut chain = common::test_chain();
    for h in 1..=n {
        assert_eq!(common::commit_next(store, &chain), h);
        let block = store.block(h).unwrap().unwrap();
        let cert = store.certificate(h).unwrap().unwrap();
        let exec =
            pyralog_ledger::apply_block(&chain.state, &chain.log, &chain.tip, &block).unwrap();
        chain.apply_committed(block, cert, exec);
    }
    chain
}

#[test]
fn committed_blocks_survive_reopen_and_serve_proofs_at_every_height() {
    let dir = tempfile::tempdir().unwrap();
    let chain = {
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.tip().unwrap(), Tip::genesis());
        // 40 blocks of 4 transactions: the log's pages of 64 nodes fill and continue.
        build(&store, 40)
    };
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.tip().unwrap(), chain.tip);
    for (i, block) in chain.blocks.iter().enumerate() {
        let h = i as u64 + 1;
        assert_eq!(store.block(h).unwrap().as_ref(), Some(block));
        assert_eq!(store.header(h).unwrap().as_ref(), Some(&block.header));
        assert_eq!(
            store.certificate(h).unwrap().as_ref(),
            Some(&chain.certs[i])
        );
        let header = &block.header;
        // Log root recomputed from stored nodes; inclusion and consistency from storage.
        assert_eq!(log::root(&store, header.log_size).unwrap(), header.log_root);
        let hashes: Vec<_> = block.txs.iter().map(|t| t.hash()).collect();
        for (idx, tx_hash) in hashes.iter().enumerate() {
            let loc = store.tx_location(tx_hash).unwrap().unwrap();
            assert_eq!((loc.height, loc.index as usize), (h, idx));
            let proof = log::inclusion_proof(&store, loc.log_index, header.log_size).unwrap();
            verify::verify_log_inclusion(header, tx_hash, loc.log_index, &proof).unwrap();
            // ... and against the newest header too.
            let last = &chain.blocks.last().unwrap().header;
            let proof = log::inclusion_proof(&store, loc.log_index, last.log_size).unwrap();
            verify::verify_log_inclusion(last, tx_hash, loc.log_index, &proof).unwrap();
            let tx_proof = TxTree::new(&hashes).inclusion_proof(idx).unwrap();
            verify::verify_tx_inclusion(header, tx_hash, idx as u32, &tx_proof).unwrap();
        }
        if i > 0 {
            let prev = &chain.blocks[i - 1].header;
            let proof = log::consistency_proof(&store, prev.log_size, header.log_size).unwrap();
            verify::verify_log_consistency(prev, header, &proof).unwrap();
        }
        // Time travel: the counter's value as of height h, proven against header h.
        let key = state_key(Namespace::Kv, b"counter");
        let root = store.state_root(h).unwrap().unwrap();
        assert_eq!(root.hash, header.state_root);
        let (value, proof) = state::prove(&store, &root, &key).unwrap();
        let record = pyralog_ledger::KvRecord::from_bytes(value.as_deref().unwrap()).unwrap();
        assert_eq!(record.value, Some(h.to_be_bytes().to_vec()));
        verify::verify_state(header, Namespace::Kv, b"counter", value.as_deref(), &proof).unwrap();
        let (absent, proof) = state::prove(&store, &root, &state_key(Namespace::Kv, b"x")).unwrap();
        assert!(absent.is_none());
        verify::verify_state(header, Namespace::Kv, b"x", None, &proof).unwrap();
    }
    // A receipt assembled from storage verifies against genesis.
    let receipt = chain.receipt(5, 2);
    verify_receipt(&chain.genesis, &receipt, None).unwrap();
    assert!(
        store
            .tx_location(&content_digest(b"unknown"))
            .unwrap()
            .is_none()
    );
    assert!(store.block(99).unwrap().is_none());
}

#[test]
fn only_the_next_height_can_be_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let chain = build(&store, 2);
    let (block, exec) = chain.make_block(vec![]);
    let cert = chain.certify_all(&block.header);
    // Re-committing height 2 or skipping to 4 is refused.
    let old = store.block(2).unwrap().unwrap();
    assert!(matches!(
        store.commit_block(&old, &chain.certs[1], &chain.executions[1]),
        Err(StorageError::NotNext { height: 2, tip: 2 })
    ));
    let mut skipping = block.clone();
    skipping.header.height = 4;
    assert!(matches!(
        store.commit_block(&skipping, &cert, &exec),
        Err(StorageError::NotNext { .. })
    ));
    // An execution that does not match the header is refused.
    let mut wrong = block.clone();
    wrong.header.state_root.0[0] ^= 1;
    assert!(matches!(
        store.commit_block(&wrong, &cert, &exec),
        Err(StorageError::ExecutionMismatch { .. })
    ));
    // A certificate of another header is refused.
    assert!(matches!(
        store.commit_block(&block, &chain.certs[1], &exec),
        Err(StorageError::ExecutionMismatch { .. })
    ));
    // An execution of other transactions is refused.
    let (_, other_exec) = chain.make_block(vec![chain.put(
        &pyralog_ledger::testing::user(7),
        0,
        b"k",
        b"v",
    )]);
    assert!(matches!(
        store.commit_block(&block, &cert, &other_exec),
        Err(StorageError::ExecutionMismatch { .. })
    ));
    // State nodes that are not numbered 0, 1, 2... at the block's height are refused:
    // they would land in another block's pages.
    let node = chain.executions[1].state_writes[0].clone();
    let mut misnumbered = exec.clone();
    misnumbered.state_writes = vec![node];
    assert!(matches!(
        store.commit_block(&block, &cert, &misnumbered),
        Err(StorageError::ExecutionMismatch { .. })
    ));
    // A node under another hash, or a root location that names no stored node, too.
    let (_, other_node) = chain.executions[1].state_writes[0].clone();
    let mut mislabelled = exec.clone();
    mislabelled.state_writes = vec![(
        state::Subtree {
            hash: pyralog_crypto::Hash([7; 32]),
            at: state::NodeRef {
                version: 3,
                index: 0,
            },
        },
        other_node,
    )];
    assert!(matches!(
        store.commit_block(&block, &cert, &mislabelled),
        Err(StorageError::ExecutionMismatch { .. })
    ));
    let mut lost_root = exec.clone();
    lost_root.state_root_at = state::NodeRef {
        version: 3,
        index: 0,
    };
    assert!(matches!(
        store.commit_block(&block, &cert, &lost_root),
        Err(StorageError::ExecutionMismatch { .. })
    ));
    // Log nodes that skip a position (or repeat one) are refused: a level's page only grows.
    let mut skipping_log = exec.clone();
    let (id, hash) = chain.executions[1].log_writes[0];
    skipping_log.log_writes = vec![(
        pyralog_ledger::log::NodeId {
            index: id.index + 5,
            ..id
        },
        hash,
    )];
    assert!(matches!(
        store.commit_block(&block, &cert, &skipping_log),
        Err(StorageError::ExecutionMismatch { .. })
    ));
    store.commit_block(&block, &cert, &exec).unwrap();
    assert_eq!(store.tip().unwrap().height, 3);
}

#[test]
fn meta_values_are_kept_and_separate_from_the_tip() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        build(&store, 1);
        store.put_meta("tip", b"not the tip").unwrap();
        store.put_meta("signer", &[1, 2, 3]).unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.meta("signer").unwrap(), Some(vec![1, 2, 3]));
    assert_eq!(store.meta("tip").unwrap(), Some(b"not the tip".to_vec()));
    assert_eq!(store.tip().unwrap().height, 1);
    assert!(store.meta("nothing").unwrap().is_none());
}

#[test]
fn unsynced_meta_values_are_read_at_once_and_kept_once_synced() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        build(&store, 1);
        store
            .put_meta_unsynced(&[("signer", &[1, 2, 3]), ("consensus_state", &[4, 5])])
            .unwrap();
        // Visible before the sync: the driver reads its own writes.
        assert_eq!(store.meta("signer").unwrap(), Some(vec![1, 2, 3]));
        store
            .put_meta_unsynced(&[("consensus_state", &[6])])
            .unwrap();
        store.sync().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.meta("signer").unwrap(), Some(vec![1, 2, 3]));
    assert_eq!(store.meta("consensus_state").unwrap(), Some(vec![6]));
    assert_eq!(store.tip().unwrap().height, 1);
}

/// Every transaction of every block `store` holds is found at its place (height, index
/// and log index), and transactions it never had are not found.
fn check_tx_index(store: &SledStore) {
    let mut log_index = 0;
    for h in 1..=store.tip().unwrap().height {
        let block = store.block(h).unwrap().unwrap();
        for (index, tx) in block.txs.iter().enumerate() {
            let loc = store.tx_location(&tx.hash()).unwrap().unwrap();
            assert_eq!(
                (loc.height, loc.index as usize, loc.log_index),
                (h, index, log_index)
            );
            log_index += 1;
        }
    }
    for n in 0..50u32 {
        let unknown = content_digest(&n.to_be_bytes());
        assert_eq!(store.tx_location(&unknown).unwrap(), None);
    }
}

/// Marks the empty directory `dir` as a database of `format`, which the store then
/// opens and writes as such.
fn mark_format(dir: &std::path::Path, format: u8) {
    let db = sled::open(dir).unwrap();
    db.insert(b"F", &[format][..]).unwrap();
    db.flush().unwrap();
}

/// The transaction index in runs (formats 3 and 4): every transaction is found whether
/// it is in memory or in a run, before and after a reopen (which reads the recent ones
/// back from their blocks); a database of format 2 keeps a record per transaction, and
/// all answer alike.
#[test]
fn the_transaction_index_finds_every_transaction_in_every_format() {
    for format in [2u8, 3, 4] {
        let dir = tempfile::tempdir().unwrap();
        if format < 4 {
            mark_format(dir.path(), format);
        }
        let runs = |n: usize| if format >= 3 { n } else { 0 };
        let chain = {
            // Four transactions a block and runs of at least ten: a run sealed every
            // third block (3, 6, ... 24), each written by the two commits after it, so
            // the run of blocks 22 to 24 is mostly written (3,277 of 4,096 buckets),
            // and block 25 in memory only.
            let store = SledStore::open(dir.path()).unwrap().with_tx_run(10);
            assert_eq!(store.format(), format);
            let chain = build(&store, 25);
            check_tx_index(&store);
            assert_eq!(store.tx_index_runs(), runs(7));
            chain
        };
        // A reopen reads blocks 22 to 25 back into memory.
        let store = SledStore::open(dir.path()).unwrap();
        check_tx_index(&store);
        // Blocks after it join the runs as before: the run sealed again at 26, from
        // height 22, is written whole over the buckets written before.
        let store = store.with_tx_run(10);
        for h in 26..=28 {
            assert_eq!(common::commit_next(&store, &chain), h);
            check_tx_index(&store);
        }
        assert_eq!(store.tx_index_runs(), runs(8));
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.tx_index_runs(), runs(8));
        check_tx_index(&store);
    }
}

/// A runs list that does not fit the chain (heights past the tip, a gap, a run that
/// ends at the last height there is) makes the open fail with corruption, never panic
/// or drop the recent transactions.
#[test]
fn a_corrupt_transaction_index_run_list_is_refused_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        // Runs sealed at heights 3 and 6, each written by the two commits after it.
        let store = SledStore::open(dir.path()).unwrap().with_tx_run(10);
        build(&store, 8);
        assert_eq!(store.tx_index_runs(), 2);
    }
    let runs = |list: &[(u64, u64)]| -> Vec<u8> {
        list.iter()
            .flat_map(|(f, l)| f.to_be_bytes().into_iter().chain(l.to_be_bytes()))
            .collect()
    };
    let good = {
        let db = sled::open(dir.path()).unwrap();
        db.get(b"X").unwrap().unwrap().to_vec()
    };
    assert_eq!(good, runs(&[(1, 3), (4, 6)]));
    for bad in [
        runs(&[(1, 3), (4, 9)]),        // past the tip (8)
        runs(&[(1, 3), (5, 6)]),        // a gap
        runs(&[(1, 3), (4, u64::MAX)]), // no height after it
        good[..20].to_vec(),            // truncated
    ] {
        {
            let db = sled::open(dir.path()).unwrap();
            db.insert(b"X", bad.clone()).unwrap();
            db.flush().unwrap();
        }
        match SledStore::open(dir.path()) {
            Err(StorageError::Corrupt { what, .. }) => assert_eq!(what, "transaction index"),
            other => panic!("{bad:?} opened as {:?}", other.map(|s| s.tx_index_runs())),
        }
    }
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"X", good).unwrap();
        db.flush().unwrap();
    }
    assert_eq!(SledStore::open(dir.path()).unwrap().tx_index_runs(), 2);
}

/// A lookup that comes after a block became readable finds that block's transactions,
/// while commits go on and write runs (the index is updated in the same step as the
/// batch, as format 2's record per transaction was), and none finds a transaction whose
/// block is not readable yet. The reader knows each block's transactions before the
/// commit. It keeps looking up the next block's, and as soon as it sees a new tip it
/// looks up that block's and those of a block eight heights back (in a run by then,
/// sealed or written).
#[test]
fn a_readable_blocks_transactions_are_found_while_commits_go_on() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    // A run every five blocks (four transactions each), written over the four commits
    // after it.
    let store = SledStore::open(dir.path())
        .unwrap()
        .with_tx_run(20)
        .with_tx_run_part(1024);
    let next: std::sync::Mutex<std::collections::HashMap<u64, Vec<pyralog_ledger::Hash>>> =
        Default::default();
    let done = AtomicBool::new(false);
    let (seen, early) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let (mut seen, mut early) = (0u64, 0usize);
            let hashes_of = |h: u64| next.lock().unwrap().get(&h).cloned();
            while !done.load(Ordering::Relaxed) {
                let height = store.tip().unwrap().height;
                // The next block's transactions: found only once it is readable.
                for hash in hashes_of(height + 1).unwrap_or_default() {
                    if store.tx_location(&hash).unwrap().is_some() {
                        let tip = store.tip().unwrap().height;
                        assert!(tip > height, "block {} found at tip {tip}", height + 1);
                        early += 1;
                    }
                }
                if height <= seen {
                    continue;
                }
                for h in [height, height.saturating_sub(8)] {
                    for (index, hash) in hashes_of(h).unwrap_or_default().iter().enumerate() {
                        let loc = store.tx_location(hash).unwrap();
                        assert_eq!(
                            loc.map(|l| (l.height, l.index as usize)),
                            Some((h, index)),
                            "a transaction of readable block {h} not found"
                        );
                    }
                }
                seen = height;
            }
            (seen, early)
        });
        let chain = common::test_chain();
        for _ in 0..200 {
            common::commit_next_with(&store, &chain, |block| {
                let hashes = block.txs.iter().map(|t| t.hash()).collect();
                next.lock().unwrap().insert(block.header.height, hashes);
            });
        }
        done.store(true, Ordering::Relaxed);
        reader.join().unwrap()
    });
    assert!(seen > 0);
    println!("{early} lookups found the next block's transactions, committed meanwhile");
    // The run sealed at height 200 is not written yet.
    assert_eq!(store.tx_index_runs(), 39);
}

/// A run not yet written when the block after it fills the next one is written whole
/// in that block's batch, first; and a reopen with another run size, while a run is
/// being written, writes it again over the buckets already written. Every transaction
/// is found at every step.
#[test]
fn a_run_behind_is_written_whole_and_a_reopen_changes_nothing_found() {
    let dir = tempfile::tempdir().unwrap();
    // The index's records in sled: bucket records of the run from `first`, and the
    // runs' list as first and last heights.
    let stored = |first: u64| {
        let db = sled::open(dir.path()).unwrap();
        let prefix: Vec<u8> = [b'x'].into_iter().chain(first.to_be_bytes()).collect();
        let records = db.scan_prefix(prefix).count();
        let list: Vec<u64> = db
            .get(b"X")
            .unwrap()
            .unwrap()
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        (records, list)
    };
    let chain = common::test_chain();
    {
        // Runs of at least ten (three blocks of four), one bucket written a commit:
        // sealed at 3, two buckets written by 4 and 5, all the rest by 6, which seals
        // the next; 7 writes 3,000 of that one's buckets.
        let store = SledStore::open(dir.path())
            .unwrap()
            .with_tx_run(10)
            .with_tx_run_part(1);
        for h in 1..=6 {
            assert_eq!(common::commit_next(&store, &chain), h);
            check_tx_index(&store);
            let runs = if h < 6 { 0 } else { 1 };
            assert_eq!(store.tx_index_runs(), runs, "at height {h}");
        }
        let store = store.with_tx_run_part(3000);
        assert_eq!(common::commit_next(&store, &chain), 7);
        check_tx_index(&store);
        assert_eq!(store.tx_index_runs(), 1);
    }
    let (records, list) = stored(4);
    assert!(records > 0, "no bucket of the run from height 4 written");
    assert_eq!(list, vec![1, 3]);
    {
        // Reopened with runs of twenty: blocks 4 to 7 are read back, and block 8
        // makes twenty recent, so it seals them again from height 4; 9 to 11 write
        // it (1,639 buckets a commit), over the records written before.
        let store = SledStore::open(dir.path()).unwrap().with_tx_run(20);
        check_tx_index(&store);
        for h in 8..=11 {
            assert_eq!(common::commit_next(&store, &chain), h);
            check_tx_index(&store);
        }
        assert_eq!(store.tx_index_runs(), 2);
    }
    // Blocks 4 to 8 are now found through the run's records only.
    let (records, list) = stored(4);
    assert!(records <= 20);
    assert_eq!(list, vec![1, 3, 4, 8]);
    let store = SledStore::open(dir.path()).unwrap();
    check_tx_index(&store);
}

/// The scan a tip cache's filter of present keys is built from finds the key of every
/// leaf any block wrote, and nothing else; a page that does not decode is an error.
#[test]
fn the_state_leaf_scan_finds_every_key_ever_set() {
    let dir = tempfile::tempdir().unwrap();
    let chain = {
        let store = SledStore::open(dir.path()).unwrap();
        let chain = build(&store, 30);
        let mut scanned = std::collections::HashSet::new();
        let leaves = store
            .for_each_state_leaf_key(30, |k| {
                scanned.insert(*k);
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        let set: std::collections::HashSet<_> = chain
            .executions
            .iter()
            .flat_map(|e| e.state_updates.iter().filter(|(_, v)| v.is_some()))
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(scanned, set);
        // 30 blocks of three new accounts and notarizations, and the `counter` key with
        // user 0's account, each written again by every block (and a leaf may be stored
        // again where the tree moves it).
        assert_eq!(set.len(), 30 * 6 + 2);
        assert!(leaves >= 30 * 8, "{leaves} leaves");
        chain
    };
    // Every key present at the tip is among them.
    let store = SledStore::open(dir.path()).unwrap();
    let mut scanned = std::collections::HashSet::new();
    store
        .for_each_state_leaf_key(u64::MAX, |k| {
            scanned.insert(*k);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    for h in [1u64, 17, 30] {
        let key = state_key(
            Namespace::Notarization,
            &content_digest(&[(h >> 8) as u8, h as u8, 2]).0,
        );
        assert!(
            state::get(&store, &chain.tip.state(), &key)
                .unwrap()
                .is_some()
        );
        assert!(scanned.contains(&key));
    }
    // A scan through height 10 sees only the leaves of blocks 1 to 10, and one that
    // breaks stops at once.
    let mut early = std::collections::HashSet::new();
    store
        .for_each_state_leaf_key(10, |k| {
            early.insert(*k);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    let first_ten: std::collections::HashSet<_> = chain.executions[..10]
        .iter()
        .flat_map(|e| e.state_updates.iter().filter(|(_, v)| v.is_some()))
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(early, first_ten);
    let stopped = store
        .for_each_state_leaf_key(u64::MAX, |_| std::ops::ControlFlow::Break(()))
        .unwrap();
    assert_eq!(stopped, 1);
    drop(store);
    {
        let db = sled::open(dir.path()).unwrap();
        let mut key = vec![b'S'];
        key.extend_from_slice(&7u64.to_be_bytes());
        key.extend_from_slice(&9u32.to_be_bytes());
        db.insert(key, vec![1, 0, 0, 0, 99, 1]).unwrap();
        db.flush().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    match store.for_each_state_leaf_key(u64::MAX, |_| std::ops::ControlFlow::Continue(())) {
        Err(StorageError::Corrupt { what, reason }) => {
            assert_eq!(what, "state node page");
            assert!(reason.starts_with("record 53"), "{reason}");
        }
        other => panic!("a corrupt page scanned as {other:?}"),
    }
}

/// A copy of a block whose transactions are not the ones executed (its header and
/// execution agree) is the block's fault, told apart from a store or execution fault,
/// and nothing of it is written.
#[test]
fn a_block_copy_without_the_executed_transactions_is_refused_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let chain = build(&store, 1);
    let put = |n: u64| chain.put(&pyralog_ledger::testing::user(n), 0, b"k", b"v");
    let (block, exec) = chain.make_block(vec![put(7), put(8)]);
    let cert = chain.certify_all(&block.header);
    let mut other = block.clone();
    other.txs[1] = put(9);
    let mut fewer = block.clone();
    fewer.txs.pop();
    for copy in [other, fewer] {
        assert!(matches!(
            store.commit_block(&copy, &cert, &exec),
            Err(StorageError::TxMismatch { height: 2, .. })
        ));
        assert_eq!(store.tip().unwrap().height, 1);
        assert!(store.block(2).unwrap().is_none());
    }
    store.commit_block(&block, &cert, &exec).unwrap();
}

/// State pages in each format a node writes: a format-4 database stores a block's state
/// nodes 32 to a record, a format-3 one (marked so before it opened) 64, before and after
/// a reopen, and both read every key back at every height, with proofs.
#[test]
fn state_pages_of_both_formats_read_back_at_every_height() {
    for (format, page_nodes) in [(4u8, 32usize), (3, 64)] {
        let dir = tempfile::tempdir().unwrap();
        if format == 3 {
            mark_format(dir.path(), 3);
        }
        let mut chain = common::test_chain();
        let digest = |h: u64, i: u64| content_digest(&[h as u8, i as u8, 0xee]);
        let mut writes = Vec::new();
        // Blocks of 40 notarizations, each writing more than a 64-node page: three, then
        // two more after a reopen, which must write pages of the same size.
        for heights in [1..=3u64, 4..=5] {
            let store = SledStore::open(dir.path()).unwrap();
            assert_eq!(store.format(), format);
            for h in heights {
                let txs = (0..40)
                    .map(|i| {
                        let key = pyralog_ledger::testing::user(h * 100 + i);
                        chain.notarize(&key, 0, digest(h, i), "p")
                    })
                    .collect();
                let (block, cert, exec) = common::next_block(&store, &chain, txs);
                store.commit_block(&block, &cert, &exec).unwrap();
                writes.push(exec.state_writes.len());
                chain.apply_committed(block, cert, exec);
            }
        }
        assert!(writes.iter().all(|&n| n > 64), "{writes:?}");
        // The records per version are the format's pages.
        {
            let db = sled::open(dir.path()).unwrap();
            for (i, &n) in writes.iter().enumerate() {
                let mut prefix = vec![b'S'];
                prefix.extend_from_slice(&(i as u64 + 1).to_be_bytes());
                let pages = db.scan_prefix(&prefix).count();
                assert_eq!(pages, n.div_ceil(page_nodes), "format {format}, {n} nodes");
            }
        }
        let store = SledStore::open(dir.path()).unwrap();
        for h in 1..=5u64 {
            let header = &chain.blocks[h as usize - 1].header;
            let root = store.state_root(h).unwrap().unwrap();
            assert_eq!(root.hash, header.state_root);
            for b in 1..=5u64 {
                for i in 0..40 {
                    let key = state_key(Namespace::Notarization, &digest(b, i).0);
                    let ours = state::get(&store, &root, &key).unwrap();
                    assert_eq!(ours.is_some(), b <= h, "format {format}, {b}/{i} at {h}");
                    assert_eq!(ours, state::get(&chain.state, &root, &key).unwrap());
                    let (value, proof) = state::prove(&store, &root, &key).unwrap();
                    assert_eq!(value, ours);
                    verify::verify_state(
                        header,
                        Namespace::Notarization,
                        &digest(b, i).0,
                        value.as_deref(),
                        &proof,
                    )
                    .unwrap();
                }
            }
        }
    }
}
