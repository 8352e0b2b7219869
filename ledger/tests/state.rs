//! The sparse Merkle state tree against a plain map model: values and absence proven at
//! every version, deletes collapse, tampering fails, and updates cost O(log n) nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use pyralog_crypto::{Hash, content_digest};
use pyralog_ledger::StoreError;
use pyralog_ledger::state::{
    self, EMPTY_ROOT, MemState, NodeRef, StateNode, StateNodes, StateProofError, Subtree,
    verify_state_proof,
};

/// Where the nodes of the tree `root` are stored.
fn reachable(store: &MemState, root: &Subtree) -> BTreeSet<NodeRef> {
    let mut found = BTreeSet::new();
    let mut todo = vec![*root];
    while let Some(at) = todo.pop() {
        if at.is_empty() {
            continue;
        }
        assert!(found.insert(at.at), "{at:?} twice in one tree");
        if let Some(StateNode::Internal { left, right }) = store.state_node(&at).unwrap() {
            todo.extend([left, right]);
        }
    }
    found
}

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
        let mut versions: Vec<(Subtree, BTreeMap<Hash, Vec<u8>>)> = vec![(Subtree::EMPTY, model.clone())];
        let mut root = Subtree::EMPTY;
        for (height, ops) in (1..).zip(blocks) {
            let mut updates = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Set(k, v) => { updates.insert(key(k), Some(v.clone())); model.insert(key(k), v); }
                    Op::Del(k) => { updates.insert(key(k), None); model.remove(&key(k)); }
                }
            }
            let state::Update { root: new_root, writes, replaced } =
                state::update_tracked(&store, &root, height, &updates).unwrap();
            // The block's new nodes are numbered in order at its height.
            for (i, (at, node)) in writes.iter().enumerate() {
                prop_assert_eq!(at.at, NodeRef { version: height, index: i as u32 });
                prop_assert_eq!(at.hash, node.hash());
            }
            store.insert_all(writes);
            // Replaced: exactly the old tree's nodes the new one no longer holds.
            let (old_nodes, new_nodes) = (reachable(&store, &root), reachable(&store, &new_root));
            let gone: BTreeSet<NodeRef> = old_nodes.difference(&new_nodes).copied().collect();
            prop_assert_eq!(replaced.len(), gone.len(), "a node replaced twice");
            prop_assert_eq!(replaced.iter().copied().collect::<BTreeSet<_>>(), gone);
            root = new_root;
            versions.push((root, model.clone()));
        }
        // The root depends only on the contents, not on the history.
        let mut fresh = MemState::new();
        let all: BTreeMap<Hash, Option<Vec<u8>>> = model.iter().map(|(k, v)| (*k, Some(v.clone()))).collect();
        let (fresh_root, writes) = state::update(&fresh, &Subtree::EMPTY, 1, &all).unwrap();
        fresh.insert_all(writes);
        prop_assert_eq!(fresh_root.hash, root.hash);
        // Every version: every key's value or absence is proven and verifies.
        for (root, contents) in &versions {
            for k in 0..64u16 {
                let k = key(k);
                let expected = contents.get(&k);
                let got = state::get(&store, root, &k).unwrap();
                prop_assert_eq!(got.as_ref(), expected);
                let (value, proof) = state::prove(&store, root, &k).unwrap();
                prop_assert_eq!(value.as_ref(), expected);
                prop_assert!(verify_state_proof(&root.hash, &k, expected.map(Vec::as_slice), &proof).is_ok());
                // The opposite claim fails.
                match expected {
                    Some(v) => {
                        prop_assert!(verify_state_proof(&root.hash, &k, None, &proof).is_err());
                        let mut other = v.clone();
                        other.push(1);
                        prop_assert!(verify_state_proof(&root.hash, &k, Some(&other), &proof).is_err());
                    }
                    None => prop_assert!(verify_state_proof(&root.hash, &k, Some(b"x"), &proof).is_err()),
                }
                // Tampered siblings fail.
                if !proof.siblings.is_empty() {
                    let mut bad = proof.clone();
                    bad.siblings[0].0[0] ^= 1;
                    prop_assert!(verify_state_proof(&root.hash, &k, expected.map(Vec::as_slice), &bad).is_err());
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
    let (root, writes) = state::update(&store, &Subtree::EMPTY, 1, &updates).unwrap();
    store.insert_all(writes);
    assert_ne!(root.hash, EMPTY_ROOT);
    let deletes: BTreeMap<Hash, Option<Vec<u8>>> = (0..100).map(|k| (key(k), None)).collect();
    let (root, writes) = state::update(&store, &root, 2, &deletes).unwrap();
    assert!(root.is_empty());
    assert!(writes.is_empty());
}

#[test]
fn absence_proof_with_a_foreign_leaf_must_share_the_path() {
    let mut store = MemState::new();
    let updates: BTreeMap<Hash, Option<Vec<u8>>> = [(key(1), Some(b"one".to_vec()))].into();
    let (root, writes) = state::update(&store, &Subtree::EMPTY, 1, &updates).unwrap();
    store.insert_all(writes);
    let (tree, root) = (root, root.hash);
    // One key: the root is its leaf; any other key's absence is proven by that leaf.
    let (value, proof) = state::prove(&store, &tree, &key(2)).unwrap();
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
            &state::prove(&store, &tree, &key(1)).unwrap().1
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
    let (mut root, writes) = state::update(&store, &Subtree::EMPTY, 1, &updates).unwrap();
    store.insert_all(writes);
    let log2n = (n as f64).log2();
    for (height, k) in (2..).zip(0..50u32) {
        let key = content_digest(&(k * 7919).to_be_bytes());
        let single: BTreeMap<Hash, Option<Vec<u8>>> = [(key, Some(vec![2, k as u8]))].into();
        // A new key whose path ends at another key's leaf displaces that leaf.
        let (existing, proof) = state::prove(&store, &root, &key).unwrap();
        let displaces = existing.is_none() && proof.leaf.is_some();
        let counted = Counted(store, Cell::new(0));
        let state::Update {
            root: new_root,
            writes,
            replaced,
        } = state::update_tracked(&counted, &root, height, &single).unwrap();
        store = counted.0;
        // One leaf plus one inner node per level of the path: about log2(n), not 256.
        assert!(
            (writes.len() as f64) < 2.0 * log2n + 8.0,
            "{} nodes written for one update in a tree of {n} keys",
            writes.len()
        );
        // Only the nodes on the key's path are read, and each is replaced (their
        // siblings are not read: a sibling's hash is in its parent already), but for
        // a displaced leaf, which moves down and keeps its node.
        assert_eq!(
            counted.1.get(),
            replaced.len() + usize::from(displaces),
            "nodes read for one update"
        );
        store.insert_all(writes);
        root = new_root;
    }
}

/// A key inserted beside a stored leaf moves that leaf down without writing it again:
/// the new tree names the leaf's node where it was stored, nothing replaces it, and the
/// root is the one the same contents give written afresh.
#[test]
fn a_key_inserted_beside_a_leaf_keeps_that_leafs_node() {
    let mut store = MemState::new();
    let one: BTreeMap<Hash, Option<Vec<u8>>> = [(key(1), Some(b"one".to_vec()))].into();
    let (first, writes) = state::update(&store, &Subtree::EMPTY, 1, &one).unwrap();
    store.insert_all(writes);
    // One key: the root is its leaf.
    assert_eq!(
        first.at,
        NodeRef {
            version: 1,
            index: 0
        }
    );
    let two: BTreeMap<Hash, Option<Vec<u8>>> = [(key(2), Some(b"two".to_vec()))].into();
    let state::Update {
        root,
        writes,
        replaced,
    } = state::update_tracked(&store, &first, 2, &two).unwrap();
    assert!(replaced.is_empty(), "{replaced:?}");
    let leaves: Vec<Hash> = writes
        .iter()
        .filter_map(|(_, n)| match n {
            StateNode::Leaf { key, .. } => Some(*key),
            StateNode::Internal { .. } => None,
        })
        .collect();
    assert_eq!(leaves, [key(2)]);
    store.insert_all(writes);
    assert!(reachable(&store, &root).contains(&first.at));
    for (k, v) in [(1, b"one"), (2, b"two")] {
        assert_eq!(
            state::get(&store, &root, &key(k)).unwrap().as_deref(),
            Some(&v[..])
        );
        let (value, proof) = state::prove(&store, &root, &key(k)).unwrap();
        verify_state_proof(&root.hash, &key(k), value.as_deref(), &proof).unwrap();
    }
    // The old version still reads as it was.
    assert_eq!(state::get(&store, &first, &key(2)).unwrap(), None);
    let both: BTreeMap<Hash, Option<Vec<u8>>> = one.into_iter().chain(two).collect();
    let (fresh, _) = state::update(&MemState::new(), &Subtree::EMPTY, 1, &both).unwrap();
    assert_eq!(fresh.hash, root.hash);
}

/// A store that counts the nodes read from it.
struct Counted(MemState, Cell<usize>);

impl StateNodes for Counted {
    fn state_node(&self, node: &Subtree) -> Result<Option<StateNode>, StoreError> {
        self.1.set(self.1.get() + 1);
        self.0.state_node(node)
    }
}

/// A store whose node at a location is not the one the parent's hash names.
struct Swapped(MemState, NodeRef, StateNode);

impl StateNodes for Swapped {
    fn state_node(&self, node: &Subtree) -> Result<Option<StateNode>, StoreError> {
        if node.at == self.1 {
            return state::check_node(node, self.2.clone()).map(Some);
        }
        self.0.state_node(node)
    }
}

#[test]
fn a_node_whose_hash_is_not_the_parents_is_corruption() {
    let mut store = MemState::new();
    let updates: BTreeMap<Hash, Option<Vec<u8>>> =
        (0..8).map(|k| (key(k), Some(vec![k as u8]))).collect();
    let (root, writes) = state::update(&store, &Subtree::EMPTY, 1, &updates).unwrap();
    let (leaf_at, _) = writes[0].clone();
    store.insert_all(writes.clone());
    let wrong = StateNode::Leaf {
        key: key(99),
        value: b"other".to_vec(),
    };
    // The same location answered with another node, in memory or through `check_node`.
    let mut swapped_mem = MemState::new();
    swapped_mem.insert_all(
        writes
            .iter()
            .map(|(at, node)| match at.at == leaf_at.at {
                true => (*at, wrong.clone()),
                false => (*at, node.clone()),
            })
            .collect(),
    );
    let swapped = Swapped(store, leaf_at.at, wrong);
    let StateNode::Leaf { key: leaf_key, .. } = &writes[0].1 else {
        panic!("the first node written is a leaf");
    };
    for s in [&swapped as &dyn StateNodes, &swapped_mem] {
        let got = state::get(s, &root, leaf_key);
        assert!(
            matches!(
                got,
                Err(StoreError::Corrupt {
                    what: "state node",
                    ..
                })
            ),
            "{got:?}"
        );
        assert!(state::prove(s, &root, leaf_key).is_err());
    }
}
