//! Helpers shared by the storage tests and benches (each uses some of them).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use pyralog_crypto::content_digest;
use pyralog_ledger::EngineId;
use pyralog_ledger::testing::{TestChain, user};
use pyralog_ledger::{Block, Certificate, Execution, Transaction};
use pyralog_storage::{SledStore, Store};

/// The deterministic test chain every storage test builds.
pub fn test_chain() -> TestChain {
    TestChain::new(4, EngineId::Tendermint)
}

/// Builds block `tip + 1` on `store` (three notarizations by new users and an update of
/// the `counter` key by user 0), certifies it and commits it. Returns the new height.
pub fn commit_next(store: &SledStore, chain: &TestChain) -> u64 {
    commit_next_with(store, chain, |_| {})
}

/// [`commit_next`], showing the block to `before` just before it is committed.
pub fn commit_next_with(
    store: &SledStore,
    chain: &TestChain,
    before: impl FnOnce(&pyralog_ledger::Block),
) -> u64 {
    let tip = store.tip().unwrap();
    let h = tip.height + 1;
    let txs = (0..3)
        .map(|i| {
            chain.notarize(
                &user(h * 10 + i),
                0,
                content_digest(&[(h >> 8) as u8, h as u8, i as u8]),
                "m",
            )
        })
        .chain([chain.put(&user(0), h - 1, b"counter", &h.to_be_bytes())])
        .collect();
    let (block, cert, exec) = next_block(store, chain, txs);
    before(&block);
    store.commit_block(&block, &cert, &exec).unwrap();
    h
}

/// Block `tip + 1` of `store` over `txs`, executed on it and certified by every
/// validator of `chain`, not committed.
pub fn next_block(
    store: &SledStore,
    chain: &TestChain,
    txs: Vec<Transaction>,
) -> (Block, Certificate, Execution) {
    let tip = store.tip().unwrap();
    let h = tip.height + 1;
    let prev = store
        .header(h - 1)
        .unwrap()
        .zip(store.certificate(h - 1).unwrap());
    let (block, exec) =
        chain.build_block(store, store, &tip, prev.as_ref().map(|(h, c)| (h, c)), txs);
    let cert = chain.certify_all(&block.header);
    (block, cert, exec)
}
