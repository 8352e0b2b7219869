//! The sparse Merkle state tree against a plain map model: values and absence proven at
//! every version, deletes collapse, tampering fails, and updates cost O(log n) nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use pyralog_crypto::{Hash, content_digest};
use pyralog_ledger::state::{self, EMPTY_ROOT, MemState, StateProofError, verify_state_proof};

fn key(k: u16) -> Hash {
    content_digest(&k.to_be_bytes())
}

#[derive(Debug, Clone)]
enum Op {
    Set(u16, Vec<u8>),
    Del(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u16..64, proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(k, v)| Op::Set(k, v)),
        1 => (0u16..64).prop_map(Op::Del),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn matches_model_at_every_version(blocks in proptest::collection::vec(proptest::collection::vec(op(), 0..12), 1..10)) {
        let mut store = MemState::new();
        let mut model: BTreeMap<Hash, Vec<u8>> = BTreeMap::new();
        let mut versions: Vec<(Hash, BTreeMap<Hash, Vec<u8>>)> = vec![(EMPTY_ROOT, model.clone())];
        let mut root = EMPTY_ROOT;
        for ops in blocks {
            let mut updates = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Set(k, v) => { updates.insert(key(k), Some(v.clone())); model.insert(key(k), v); }
                    Op::Del(k) => { updates.insert(key(k), None); model.remove(&key(k)); }
                }
            }
            let (new_root, writes) = state::update(&store, &root, &updates).unwrap();
            store.insert_all(writes);
            root = new_root;
            versions.push((root, model.clone()));
        }
        // The root depends only on the contents, not on the history.
        let mut fresh = MemState::new();
        let all: BTreeMap<Hash, Option<Vec<u8>>> = model.iter().map(|(k, v)| (*k, Some(v.clone()))).collect();
        let (fresh_root, writes) = state::update(&fresh, &EMPTY_ROOT, &all).unwrap();
        fresh.insert_all(writes);
        prop_assert_eq!(fresh_root, root);
        // Every version: every key's value or absence is proven and verifies.
        for (root, contents) in &versions {
            for k in 0..64u16 {
                let k = key(k);
                let expected = contents.get(&k);
                let got = state::get(&store, root, &k).unwrap();
                prop_assert_eq!(got.as_ref(), expected);
                let (value, proof) = state::prove(&store, root, &k).unwrap();
                prop_assert_eq!(value.as_ref(), expected);
                prop_assert!(verify_state_proof(root, &k, expected.map(Vec::as_slice), &proof).is_ok());
                // The opposite claim fails.
                match expected {
                    Some(v) => {
                        prop_assert!(verify_state_proof(root, &k, None, &proof).is_err());
                        let mut other = v.clone();
                        other.push(1);
                        prop_assert!(verify_state_proof(root, &k, Some(&other), &proof).is_err());
                    }
                    None => prop_assert!(verify_state_proof(root, &k, Some(b"x"), &proof).is_err()),
                }
                // Tampered siblings fail.
                if !proof.siblings.is_empty() {
                    let mut bad = proof.clone();
                    bad.siblings[0].0[0] ^= 1;
                    prop_assert!(verify_state_proof(root, &k, expected.map(Vec::as_slice), &bad).is_err());
                }
            }
        }
    }
}

#[test]
fn deleting_everything_returns_to_the_empty_root() {
    let mut store = MemState::new();
    let updates: BTreeMap<Hash, Option<Vec<u8>>> =
        (0..100).map(|k| (key(k), Some(vec![k as u8]))).collect();
    let (root, writes) = state::update(&store, &EMPTY_ROOT, &updates).unwrap();
    store.insert_all(writes);
    assert_ne!(root, EMPTY_ROOT);
    let deletes: BTreeMap<Hash, Option<Vec<u8>>> = (0..100).map(|k| (key(k), None)).collect();
    let (root, _) = state::update(&store, &root, &deletes).unwrap();
    assert_eq!(root, EMPTY_ROOT);
}

#[test]
fn absence_proof_with_a_foreign_leaf_must_share_the_path() {
    let mut store = MemState::new();
    let updates: BTreeMap<Hash, Option<Vec<u8>>> = [(key(1), Some(b"one".to_vec()))].into();
    let (root, writes) = state::update(&store, &EMPTY_ROOT, &updates).unwrap();
    store.insert_all(writes);
    // One key: the root is its leaf; any other key's absence is proven by that leaf.
    let (value, proof) = state::prove(&store, &root, &key(2)).unwrap();
    assert_eq!(value, None);
    assert!(proof.siblings.is_empty());
    verify_state_proof(&root, &key(2), None, &proof).unwrap();
    // Claiming a deeper position for that leaf, on a diverging path, is rejected.
    let mut fake = proof.clone();
    let first_diff = (0..256).find(|&i| key(1).bit(i) != key(2).bit(i)).unwrap();
    fake.siblings = vec![EMPTY_ROOT; first_diff + 1];
    assert_eq!(
        verify_state_proof(&root, &key(2), None, &fake),
        Err(StateProofError::LeafNotOnPath)
    );
    assert_eq!(
        verify_state_proof(
            &root,
            &key(1),
            None,
            &state::prove(&store, &root, &key(1)).unwrap().1
        ),
        Err(StateProofError::KeyPresent)
    );
}

#[test]
fn a_single_update_writes_o_log_n_nodes() {
    let mut store = MemState::new();
    let n = 20_000u32;
    let updates: BTreeMap<Hash, Option<Vec<u8>>> = (0..n)
        .map(|k| (content_digest(&k.to_be_bytes()), Some(vec![1])))
        .collect();
    let (mut root, writes) = state::update(&store, &EMPTY_ROOT, &updates).unwrap();
    store.insert_all(writes);
    let log2n = (n as f64).log2();
    for k in 0..50u32 {
        let key = content_digest(&(k * 7919).to_be_bytes());
        let single: BTreeMap<Hash, Option<Vec<u8>>> = [(key, Some(vec![2, k as u8]))].into();
        let (new_root, writes) = state::update(&store, &root, &single).unwrap();
        // One leaf plus one inner node per level of the path: about log2(n), not 256.
        assert!(
            (writes.len() as f64) < 2.0 * log2n + 8.0,
            "{} nodes written for one update in a tree of {n} keys",
            writes.len()
        );
        store.insert_all(writes);
        root = new_root;
    }
}
