//! The log tree and transaction tree against an independent RFC 6962 implementation
//! (ct-merkle), for every size up to 1,000, with tampered proofs rejected.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use digest::consts::U32;
use digest::{FixedOutput, HashMarker, Output, OutputSizeUser, Update};
use proptest::prelude::*;
use pyralog_crypto::{Hash, content_digest};
use pyralog_ledger::log::{self, MemLog};
use pyralog_ledger::merkle::{
    ProofError, TreeHasher, TxTree, verify_consistency, verify_inclusion,
};

/// ct-merkle hashes `0x00 || leaf` and `0x01 || left || right` with a `Digest`. This
/// digest maps those two prefixes to Pyralog's two log-tree domains, so ct-merkle builds
/// the tree Pyralog's rules define, with its own (independent) tree and proof code.
#[derive(Default, Clone)]
struct LogDomains(Vec<u8>);

impl HashMarker for LogDomains {}
impl OutputSizeUser for LogDomains {
    type OutputSize = U32;
}
impl Update for LogDomains {
    fn update(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
    }
}
impl FixedOutput for LogDomains {
    fn finalize_into(self, out: &mut Output<Self>) {
        let t = TreeHasher::LOG_TREE;
        let h = match self.0.split_first() {
            None => t.empty_root(),
            Some((0, leaf)) => t.leaf(&Hash(leaf.try_into().expect("32-byte entries"))),
            Some((1, pair)) if pair.len() == 64 => t.node(
                &Hash(pair[..32].try_into().expect("32")),
                &Hash(pair[32..].try_into().expect("32")),
            ),
            Some(_) => panic!("unexpected input to the oracle's hash"),
        };
        out.copy_from_slice(&h.0);
    }
}

fn entry(i: u64) -> Hash {
    content_digest(&i.to_be_bytes())
}

fn hashes(bytes: &[u8]) -> Vec<Hash> {
    bytes
        .chunks(32)
        .map(|c| Hash(c.try_into().expect("32")))
        .collect()
}

const N: u64 = 1000;

#[test]
fn log_tree_matches_oracle_for_every_size_up_to_1000() {
    let mut ours = MemLog::new();
    let all: Vec<Hash> = (0..N).map(entry).collect();
    // Append in uneven batches: proofs for old sizes must come from the full store.
    for chunk in all.chunks(7) {
        ours.append(chunk).unwrap();
    }
    let mut oracle = MemoryBackedTree::<LogDomains, [u8; 32]>::new();
    assert_eq!(oracle.root().as_bytes().as_slice(), ours.root(0).unwrap().0);
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    for n in 1..=N {
        oracle.push(all[n as usize - 1].0);
        let root = ours.root(n).unwrap();
        assert_eq!(
            oracle.root().as_bytes().as_slice(),
            root.0,
            "root at size {n}"
        );
        let indices: Vec<u64> = if n <= 64 {
            (0..n).collect()
        } else {
            vec![0, n - 1, next(n), next(n), next(n), n / 2]
        };
        for i in indices {
            let proof = log::inclusion_proof(&ours, i, n).unwrap();
            let theirs = oracle.prove_inclusion(i as usize);
            assert_eq!(
                hashes(theirs.as_bytes()),
                proof,
                "inclusion proof {i} at {n}"
            );
            verify_inclusion(TreeHasher::LOG_TREE, i, n, &all[i as usize], &proof, &root).unwrap();
        }
        let olds: Vec<u64> = if n <= 64 {
            (1..n).collect()
        } else {
            vec![1, n - 1, next(n - 1) + 1, next(n - 1) + 1]
        };
        for m in olds {
            let proof = log::consistency_proof(&ours, m, n).unwrap();
            let theirs = oracle.prove_consistency((n - m) as usize);
            assert_eq!(hashes(theirs.as_bytes()), proof, "consistency {m} -> {n}");
            let old_root = ours.root(m).unwrap();
            verify_consistency(TreeHasher::LOG_TREE, m, &old_root, n, &root, &proof).unwrap();
        }
    }
}

#[test]
fn trivial_consistency_cases() {
    let mut ours = MemLog::new();
    ours.append(&(0..10).map(entry).collect::<Vec<_>>())
        .unwrap();
    let r10 = ours.root(10).unwrap();
    let r0 = ours.root(0).unwrap();
    verify_consistency(TreeHasher::LOG_TREE, 0, &r0, 10, &r10, &[]).unwrap();
    // The empty tree has one root; any other "size 0" root is rejected.
    assert!(verify_consistency(TreeHasher::LOG_TREE, 0, &r10, 10, &r10, &[]).is_err());
    verify_consistency(TreeHasher::LOG_TREE, 10, &r10, 10, &r10, &[]).unwrap();
    let r9 = ours.root(9).unwrap();
    assert!(verify_consistency(TreeHasher::LOG_TREE, 10, &r10, 10, &r9, &[]).is_err());
    assert_eq!(
        verify_consistency(TreeHasher::LOG_TREE, 11, &r10, 10, &r10, &[]),
        Err(ProofError::SizesOutOfOrder { old: 11, new: 10 })
    );
    assert!(log::consistency_proof(&ours, 11, 10).is_err());
    assert!(log::inclusion_proof(&ours, 10, 10).is_err());
}

#[test]
fn tx_tree_has_the_log_shape_and_its_proofs_verify_with_the_rfc_algorithm() {
    for n in 0..=130u64 {
        let txs: Vec<Hash> = (0..n).map(entry).collect();
        let tree = TxTree::new(&txs);
        // Same shape as the log: the RFC 6962 root, only the domains differ.
        let mut shape = MemLog::new();
        shape.append(&txs).unwrap();
        assert_eq!(n == 0, tree.root() == TreeHasher::TX_TREE.empty_root());
        for i in 0..n {
            let proof = tree.inclusion_proof(i as usize).unwrap();
            assert_eq!(
                proof.len(),
                log::inclusion_proof(&shape, i, n).unwrap().len()
            );
            verify_inclusion(
                TreeHasher::TX_TREE,
                i,
                n,
                &txs[i as usize],
                &proof,
                &tree.root(),
            )
            .unwrap_or_else(|e| panic!("tx {i} of {n}: {e}"));
            // A log-domain check of a tx-tree proof must fail: the domains differ.
            assert!(
                verify_inclusion(
                    TreeHasher::LOG_TREE,
                    i,
                    n,
                    &txs[i as usize],
                    &proof,
                    &tree.root()
                )
                .is_err()
            );
        }
        assert!(tree.inclusion_proof(n as usize).is_none());
    }
}

fn tamper_cases(proof: &[Hash]) -> Vec<Vec<Hash>> {
    let mut cases = Vec::new();
    for i in 0..proof.len() {
        let mut p = proof.to_vec();
        p[i].0[i % 32] ^= 1;
        cases.push(p);
        let mut p = proof.to_vec();
        p.remove(i);
        cases.push(p);
    }
    let mut longer = proof.to_vec();
    longer.push(Hash([7; 32]));
    cases.push(longer);
    if proof.len() >= 2 {
        let mut swapped = proof.to_vec();
        swapped.swap(0, 1);
        if swapped != proof {
            cases.push(swapped);
        }
    }
    cases
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn tampered_inclusion_proofs_fail(n in 2u64..300, i_seed in any::<u64>(), j_seed in any::<u64>()) {
        let all: Vec<Hash> = (0..n).map(entry).collect();
        let mut ours = MemLog::new();
        ours.append(&all).unwrap();
        let i = i_seed % n;
        let root = ours.root(n).unwrap();
        let proof = log::inclusion_proof(&ours, i, n).unwrap();
        let t = TreeHasher::LOG_TREE;
        prop_assert!(verify_inclusion(t, i, n, &all[i as usize], &proof, &root).is_ok());
        for bad in tamper_cases(&proof) {
            prop_assert!(verify_inclusion(t, i, n, &all[i as usize], &bad, &root).is_err());
        }
        let j = j_seed % n;
        if j != i {
            prop_assert!(verify_inclusion(t, j, n, &all[i as usize], &proof, &root).is_err());
            prop_assert!(verify_inclusion(t, i, n, &all[j as usize], &proof, &root).is_err());
        }
        prop_assert!(verify_inclusion(t, i, n, &all[i as usize], &proof, &ours.root(n - 1).unwrap()).is_err());
        prop_assert!(verify_inclusion(t, i, n + 1000, &all[i as usize], &proof, &root).is_err());
    }

    #[test]
    fn tampered_consistency_proofs_fail(n in 3u64..300, m_seed in any::<u64>()) {
        let all: Vec<Hash> = (0..n).map(entry).collect();
        let mut ours = MemLog::new();
        ours.append(&all).unwrap();
        let m = 1 + m_seed % (n - 1);
        let (rm, rn) = (ours.root(m).unwrap(), ours.root(n).unwrap());
        let proof = log::consistency_proof(&ours, m, n).unwrap();
        let t = TreeHasher::LOG_TREE;
        prop_assert!(verify_consistency(t, m, &rm, n, &rn, &proof).is_ok());
        for bad in tamper_cases(&proof) {
            prop_assert!(verify_consistency(t, m, &rm, n, &rn, &bad).is_err());
        }
        // A rewritten history: same sizes, one old entry changed.
        let mut forged = all.clone();
        forged[(m_seed % m) as usize] = Hash([0xee; 32]);
        let mut other = MemLog::new();
        other.append(&forged).unwrap();
        prop_assert!(verify_consistency(t, m, &rm, n, &other.root(n).unwrap(), &proof).is_err());
        prop_assert!(verify_consistency(t, m, &other.root(m).unwrap(), n, &rn, &proof).is_err());
        let other_proof = log::consistency_proof(&other, m, n).unwrap();
        prop_assert!(verify_consistency(t, m, &rm, n, &other.root(n).unwrap(), &other_proof).is_err());
    }

    #[test]
    fn garbage_proofs_never_panic(
        idx in any::<u64>(), size in any::<u64>(), old in any::<u64>(),
        proof in proptest::collection::vec(any::<[u8; 32]>(), 0..140),
    ) {
        let proof: Vec<Hash> = proof.into_iter().map(Hash).collect();
        let t = TreeHasher::LOG_TREE;
        let _ = verify_inclusion(t, idx, size, &Hash([1; 32]), &proof, &Hash([2; 32]));
        let _ = verify_consistency(t, old, &Hash([1; 32]), size, &Hash([2; 32]), &proof);
    }
}
