//! Execution rules, certificate and header checks, and receipts, on real signed chains.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pyralog_crypto::{Hash, content_digest};
use pyralog_ledger::codec::{Decode, Encode};
use pyralog_ledger::exec::{BlockExecutor, ExecError, TxError};
use pyralog_ledger::state::{self, Namespace, state_key};
use pyralog_ledger::testing::{TestChain, user};
use pyralog_ledger::verify::{self, VerifyError};
use pyralog_ledger::{
    EngineId, Header, KvRecord, Receipt, ReceiptError, apply_block, log, verify_receipt,
    verify_tx_signatures,
};

/// An executor of the next block on `chain`'s tip (BFT time 1), reading the state
/// nodes through `state` (the chain's own, or a wrapper of them).
fn at_tip<'a, S: pyralog_ledger::state::StateNodes + ?Sized>(
    chain: &'a TestChain,
    state: &'a S,
) -> BlockExecutor<'a, S, log::MemLog> {
    BlockExecutor::new(state, &chain.log, chain.tip.clone(), chain.chain_id(), 1)
}

fn exec_error(chain: &TestChain, txs: &[pyralog_ledger::Transaction]) -> TxError {
    let mut exec = at_tip(chain, &chain.state);
    for (i, tx) in txs.iter().enumerate() {
        match exec.apply(tx) {
            Ok(()) => continue,
            Err(ExecError::Tx { index, error }) => {
                assert_eq!(index, i);
                return error;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("all transactions applied");
}

#[test]
fn nonces_are_strictly_sequential() {
    let mut chain = TestChain::new(4, EngineId::Tendermint);
    let alice = user(1);
    let d = |n: u8| content_digest(&[n]);
    chain.commit(vec![
        chain.notarize(&alice, 0, d(0), ""),
        chain.notarize(&alice, 1, d(1), ""),
    ]);
    assert_eq!(
        exec_error(&chain, &[chain.notarize(&alice, 1, d(2), "")]),
        TxError::NonceReplayed {
            expected: 2,
            found: 1
        }
    );
    assert_eq!(
        exec_error(&chain, &[chain.notarize(&alice, 3, d(2), "")]),
        TxError::NonceGap {
            expected: 2,
            found: 3
        }
    );
    // The same transaction twice in one block is a replay.
    let tx = chain.notarize(&alice, 2, d(2), "");
    assert_eq!(
        exec_error(&chain, &[tx.clone(), tx]),
        TxError::NonceReplayed {
            expected: 3,
            found: 2
        }
    );
    // Another sender starts at 0.
    let bob = user(2);
    assert_eq!(
        exec_error(&chain, &[chain.notarize(&bob, 1, d(9), "")]),
        TxError::NonceGap {
            expected: 0,
            found: 1
        }
    );
}

#[test]
fn digests_are_notarized_once_and_failed_transactions_change_nothing() {
    let mut chain = TestChain::new(4, EngineId::Tendermint);
    let (alice, bob) = (user(1), user(2));
    let digest = content_digest(b"contract.pdf");
    chain.commit(vec![chain.notarize(&alice, 0, digest, "contract")]);
    match exec_error(&chain, &[chain.notarize(&bob, 0, digest, "mine")]) {
        TxError::AlreadyNotarized(first) => {
            assert_eq!(
                (first.height, first.index, first.sender),
                (1, 0, alice.public())
            );
        }
        e => panic!("{e}"),
    }
    // A failed transaction leaves the block's pending state as it was.
    let mut exec = BlockExecutor::new(
        &chain.state,
        &chain.log,
        chain.tip.clone(),
        chain.chain_id(),
        5,
    );
    assert!(exec.apply(&chain.notarize(&bob, 0, digest, "")).is_err());
    assert_eq!(exec.next_nonce(&bob.public()).unwrap(), 0);
    exec.apply(&chain.notarize(&bob, 0, content_digest(b"other"), ""))
        .unwrap();
    assert_eq!(exec.next_nonce(&bob.public()).unwrap(), 1);
    assert_eq!(exec.len(), 1);
}

#[test]
fn put_delete_and_limits() {
    let mut chain = TestChain::new(1, EngineId::Raft);
    let alice = user(1);
    chain.commit(vec![chain.put(&alice, 0, b"k", b"v1")]);
    let root_1 = chain.tip.state();
    let del = pyralog_ledger::Transaction::new_signed(
        &alice,
        chain.chain_id(),
        1,
        pyralog_ledger::Payload::Delete { key: b"k".to_vec() },
    )
    .unwrap();
    chain.commit(vec![del]);
    let kv = state_key(Namespace::Kv, b"k");
    let record = |root| {
        state::get(&chain.state, root, &kv)
            .unwrap()
            .map(|b| KvRecord::from_bytes(&b).unwrap())
    };
    assert_eq!(
        record(&root_1),
        Some(KvRecord {
            value: Some(b"v1".to_vec()),
            height: 1,
            prev_height: 0
        })
    );
    // A delete leaves a tombstone that links back to the deleted version.
    assert_eq!(
        record(&chain.tip.state()),
        Some(KvRecord {
            value: None,
            height: 2,
            prev_height: 1
        })
    );
    let del_again = pyralog_ledger::Transaction::new_signed(
        &alice,
        chain.chain_id(),
        2,
        pyralog_ledger::Payload::Delete { key: b"k".to_vec() },
    )
    .unwrap();
    assert_eq!(exec_error(&chain, &[del_again]), TxError::KeyNotFound);
    // A transaction for another chain.
    let mut other = TestChain::new(1, EngineId::Raft);
    other.genesis.chain_id = pyralog_ledger::ChainId::new("other").unwrap();
    let foreign = other.put(&alice, 2, b"x", b"y");
    assert!(matches!(
        exec_error(&chain, &[foreign]),
        TxError::WrongChain { .. }
    ));
}

#[test]
fn kv_versions_link_back_one_per_height() {
    let mut chain = TestChain::new(1, EngineId::Raft);
    let alice = user(1);
    let del = |nonce| {
        pyralog_ledger::Transaction::new_signed(
            &alice,
            chain.chain_id(),
            nonce,
            pyralog_ledger::Payload::Delete { key: b"k".to_vec() },
        )
        .unwrap()
    };
    let del_2 = del(2);
    // Height 1: two writes make one version; 2: a delete; 3: nothing; 4: a put again.
    chain.commit(vec![
        chain.put(&alice, 0, b"k", b"a"),
        chain.put(&alice, 1, b"k", b"b"),
    ]);
    chain.commit(vec![del_2]);
    chain.commit(vec![]);
    chain.commit(vec![chain.put(&alice, 3, b"k", b"c")]);
    let kv = state_key(Namespace::Kv, b"k");
    let at = |height: u64| {
        let root = chain.state_at(height);
        KvRecord::from_bytes(&state::get(&chain.state, &root, &kv).unwrap().unwrap()).unwrap()
    };
    // Walk back from the newest version, as `pyralog history` does.
    let mut versions = vec![];
    let mut record = at(4);
    loop {
        versions.push((record.height, record.value.clone()));
        if record.prev_height == 0 {
            break;
        }
        record = at(record.prev_height);
    }
    assert_eq!(
        versions,
        vec![
            (4, Some(b"c".to_vec())),
            (2, None),
            (1, Some(b"b".to_vec()))
        ]
    );
    // A record whose previous height is not below its own does not decode.
    let bad = KvRecord {
        value: None,
        height: 3,
        prev_height: 3,
    };
    assert!(KvRecord::from_bytes(&bad.to_bytes()).is_err());
}

#[test]
fn re_execution_reproduces_every_header_and_certificates_verify() {
    let mut chain = TestChain::new(4, EngineId::Tendermint);
    let users: Vec<_> = (0..5).map(user).collect();
    for h in 0..6u64 {
        let txs = users
            .iter()
            .enumerate()
            .map(|(i, u)| chain.notarize(u, h, content_digest(&[h as u8, i as u8]), "x"))
            .collect();
        chain.commit(txs);
    }
    chain.commit(vec![]);
    // A fresh replica re-executes every block and gets the same roots.
    let mut replica = TestChain::new(4, EngineId::Tendermint);
    for (i, block) in chain.blocks.iter().enumerate() {
        let exec = apply_block(&replica.state, &replica.log, &replica.tip, block).unwrap();
        verify::verify_execution(&block.header, &exec).unwrap();
        verify_tx_signatures(&block.txs).unwrap();
        if i == 0 {
            verify::verify_first_header(&chain.genesis, &block.header).unwrap();
            verify::verify_last_certificate(block, None).unwrap();
        } else {
            let prev = &chain.blocks[i - 1].header;
            verify::verify_header_step(prev, &block.header, &chain.validators, &chain.certs[i])
                .unwrap();
            verify::verify_last_certificate(block, Some((prev, &chain.validators))).unwrap();
            let proof =
                log::consistency_proof(&chain.log, prev.log_size, block.header.log_size).unwrap();
            verify::verify_log_consistency(prev, &block.header, &proof).unwrap();
        }
        verify::verify_certificate(
            EngineId::Tendermint,
            &chain.validators,
            &block.header,
            &chain.certs[i],
        )
        .unwrap();
        let cert = chain.certs[i].clone();
        replica.apply_committed(block.clone(), cert, exec);
    }
    // A header whose state root was altered no longer matches re-execution.
    let mut bad = chain.blocks[2].clone();
    bad.header.state_root.0[0] ^= 1;
    let mut fresh = TestChain::new(4, EngineId::Tendermint);
    for b in &chain.blocks[..2] {
        let exec = apply_block(&fresh.state, &fresh.log, &fresh.tip, b).unwrap();
        fresh.apply_committed(b.clone(), chain.certs[0].clone(), exec);
    }
    let exec = apply_block(&fresh.state, &fresh.log, &fresh.tip, &bad).unwrap();
    assert!(matches!(
        verify::verify_execution(&bad.header, &exec),
        Err(VerifyError::ExecutionMismatch {
            field: "state_root",
            ..
        })
    ));
    // State proofs against a certified header.
    let alice = &users[0];
    let header = &chain.blocks.last().unwrap().header;
    let key = state_key(Namespace::Account, alice.public().as_bytes());
    let (value, proof) = state::prove(&chain.state, &chain.state_at(header.height), &key).unwrap();
    verify::verify_state(
        header,
        Namespace::Account,
        alice.public().as_bytes(),
        value.as_deref(),
        &proof,
    )
    .unwrap();
    let account = pyralog_ledger::exec::Account::from_bytes(&value.unwrap()).unwrap();
    assert_eq!(account.next_nonce, 6);
    let (none, proof) = state::prove(
        &chain.state,
        &chain.state_at(header.height),
        &state_key(Namespace::Kv, b"nope"),
    )
    .unwrap();
    assert!(none.is_none());
    verify::verify_state(header, Namespace::Kv, b"nope", None, &proof).unwrap();
}

#[test]
fn certificates_need_a_quorum_of_valid_signatures() {
    let mut chain = TestChain::new(4, EngineId::Tendermint);
    chain.commit(vec![]);
    let header = chain.blocks[0].header.clone();
    let engine = EngineId::Tendermint;
    // 3 of 4 (power 30 of 40) is a quorum; 2 of 4 is not.
    verify::verify_certificate(
        engine,
        &chain.validators,
        &header,
        &chain.certify(&header, &[0, 1, 3]),
    )
    .unwrap();
    assert_eq!(
        verify::verify_certificate(
            engine,
            &chain.validators,
            &header,
            &chain.certify(&header, &[0, 2])
        ),
        Err(VerifyError::InsufficientPower {
            have: 20,
            need: 27,
            total: 40
        })
    );
    // Raft's rule: 3 of 4 as well (more than half), but 2 of 4 is not.
    // A bad signature names its validator.
    let mut cert = chain.certify(&header, &[0, 1, 2, 3]);
    cert.votes[2].signature.0[5] ^= 1;
    assert_eq!(
        verify::verify_certificate(engine, &chain.validators, &header, &cert),
        Err(VerifyError::BadVoteSignatures {
            keys: vec![chain.validator_keys[2].public()]
        })
    );
    // A vote whose time was changed no longer verifies either.
    let mut cert = chain.certify(&header, &[0, 1, 2]);
    cert.votes[0].time_ms += 1;
    assert!(matches!(
        verify::verify_certificate(engine, &chain.validators, &header, &cert),
        Err(VerifyError::BadVoteSignatures { .. })
    ));
    let mut cert = chain.certify(&header, &[0, 1, 2]);
    cert.votes[2].validator = 9;
    assert_eq!(
        verify::verify_certificate(engine, &chain.validators, &header, &cert),
        Err(VerifyError::UnknownValidator { index: 9, len: 4 })
    );
    // The certificate of one header does not certify another.
    let mut other = header.clone();
    other.time_ms += 1;
    assert!(matches!(
        verify::verify_certificate(engine, &chain.validators, &other, &chain.certs[0]),
        Err(VerifyError::HashMismatch {
            what: "certified header hash",
            ..
        })
    ));
    // Votes of another engine's kind (same keys) are not commit votes here.
    assert!(
        verify::verify_certificate(EngineId::Pbft, &chain.validators, &header, &chain.certs[0])
            .is_err()
    );
}

#[test]
fn header_links_are_checked() {
    let mut chain = TestChain::new(4, EngineId::Tendermint);
    chain.commit(vec![]);
    chain.commit(vec![]);
    let (h1, h2) = (
        chain.blocks[0].header.clone(),
        chain.blocks[1].header.clone(),
    );
    verify::verify_header_link(&h1, &h2).unwrap();
    let tweak = |f: &dyn Fn(&mut Header)| {
        let mut h = h2.clone();
        f(&mut h);
        verify::verify_header_link(&h1, &h).unwrap_err()
    };
    assert!(matches!(
        tweak(&|h| h.height = 3),
        VerifyError::WrongHeight { .. }
    ));
    assert!(matches!(
        tweak(&|h| h.prev_hash = Hash::ZERO),
        VerifyError::HashMismatch { .. }
    ));
    assert!(matches!(
        tweak(&|h| h.time_ms = h1.time_ms),
        VerifyError::TimeNotMonotonic { .. }
    ));
    assert!(matches!(
        tweak(&|h| h.validators_hash = Hash::ZERO),
        VerifyError::HashMismatch { .. }
    ));
    assert!(matches!(
        tweak(&|h| h.engine = EngineId::Raft),
        VerifyError::WrongEngine { .. }
    ));
    let mut wrong_genesis = chain.genesis.clone();
    wrong_genesis.genesis_time_ms += 1;
    assert!(verify::verify_first_header(&wrong_genesis, &h1).is_err());
}

fn receipt_chain() -> (TestChain, Receipt, Hash) {
    let mut chain = TestChain::new(4, EngineId::Tendermint);
    let alice = user(1);
    let file = b"the file's bytes";
    let digest = content_digest(file);
    chain.commit(vec![chain.put(&alice, 0, b"a", b"b")]);
    let bob = user(2);
    chain.commit(vec![
        chain.notarize(&bob, 0, content_digest(b"x"), ""),
        chain.notarize(&alice, 1, digest, "signed contract"),
        chain.notarize(&bob, 1, content_digest(b"y"), ""),
    ]);
    let receipt = chain.receipt(2, 1);
    (chain, receipt, digest)
}

#[test]
fn a_receipt_verifies_offline_and_says_what_it_proves() {
    let (chain, receipt, digest) = receipt_chain();
    let json = receipt.to_json();
    let parsed = Receipt::from_json(&json).unwrap();
    let proven = verify_receipt(&chain.genesis, &parsed, Some(&digest)).unwrap();
    assert_eq!(proven.digest, digest);
    assert_eq!(proven.signer, user(1).public());
    assert_eq!((proven.height, proven.index, proven.log_index), (2, 1, 2));
    assert_eq!(proven.time_ms, chain.blocks[1].header.time_ms);
    assert_eq!(proven.meta, "signed contract");
    assert_eq!(
        verify_receipt(
            &chain.genesis,
            &parsed,
            Some(&content_digest(b"another file"))
        ),
        Err(ReceiptError::FileDigestMismatch {
            file: content_digest(b"another file"),
            notarized: digest
        })
    );
    // Another chain's genesis does not accept it.
    let other = TestChain::new(4, EngineId::Tendermint);
    let mut g = other.genesis.clone();
    g.chain_id = pyralog_ledger::ChainId::new("other").unwrap();
    assert!(verify_receipt(&g, &parsed, None).is_err());
    // Validators of another chain (same name, other keys) do not certify it.
    let stranger = TestChain::new(3, EngineId::Tendermint);
    assert!(verify_receipt(&stranger.genesis, &parsed, None).is_err());
}

/// Changing any single field of a receipt's JSON makes verification fail.
#[test]
fn every_receipt_field_is_bound() {
    let (chain, receipt, _) = receipt_chain();
    let json: serde_json::Value = serde_json::from_str(&receipt.to_json()).unwrap();
    let obj = json.as_object().unwrap();
    let mut checked = 0;
    for (field, value) in obj {
        let mut variants: Vec<serde_json::Value> = Vec::new();
        match value {
            serde_json::Value::Number(n) => {
                let n = n.as_u64().unwrap();
                variants.push((n + 1).into());
                if n > 0 {
                    variants.push((n - 1).into());
                }
            }
            serde_json::Value::String(s) if field == "chain_id" => {
                variants.push(format!("{s}x").into())
            }
            serde_json::Value::String(s) => {
                // Flip one hex digit at several places, including inside signatures.
                for pos in [0, s.len() / 3, s.len() / 2, s.len() - 1] {
                    let mut chars: Vec<char> = s.chars().collect();
                    chars[pos] = if chars[pos] == '0' { '1' } else { '0' };
                    variants.push(chars.into_iter().collect::<String>().into());
                }
            }
            serde_json::Value::Array(items) => {
                for i in 0..items.len() {
                    let mut changed = items.clone();
                    let h = changed[i].as_str().unwrap();
                    changed[i] =
                        format!("{}{}", if h.starts_with('0') { '1' } else { '0' }, &h[1..]).into();
                    variants.push(changed.into());
                    let mut shorter = items.clone();
                    shorter.remove(i);
                    variants.push(shorter.into());
                }
                variants.push(serde_json::Value::Array(vec![]));
            }
            _ => {}
        }
        for variant in variants {
            let mut altered = obj.clone();
            altered.insert(field.clone(), variant.clone());
            let text = serde_json::Value::Object(altered).to_string();
            let outcome = Receipt::from_json(&text)
                .map_err(|e| e.to_string())
                .and_then(|r| verify_receipt(&chain.genesis, &r, None).map_err(|e| e.to_string()));
            if field == "validator_set_changes" && variant == serde_json::Value::Array(vec![]) {
                continue; // already empty: not a change
            }
            assert!(
                outcome.is_err(),
                "receipt with {field} = {variant} still verifies"
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} alterations tried");
    // An extra, unknown field is refused too rather than silently ignored.
    let mut extra = obj.clone();
    extra.insert("note".into(), "trust me".into());
    assert!(Receipt::from_json(&serde_json::Value::Object(extra).to_string()).is_err());
}

#[test]
fn a_receipt_with_a_forged_certificate_fails_at_the_certificate_step() {
    let (chain, mut receipt, _) = receipt_chain();
    let header = Header::from_bytes(&receipt.header).unwrap();
    receipt.certificate = chain.certify(&header, &[0, 1]).to_bytes();
    match verify_receipt(&chain.genesis, &receipt, None) {
        Err(ReceiptError::Verify {
            step: "header certificate",
            error: VerifyError::InsufficientPower { .. },
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_carried_last_certificate_is_bound_and_checked() {
    let mut chain = TestChain::new(4, EngineId::Tendermint);
    chain.commit(vec![]);
    chain.commit(vec![]);
    let prev = chain.blocks[0].header.clone();
    let block = chain.blocks[1].clone();
    let ok = Some((&prev, &chain.validators));
    verify::verify_last_certificate(&block, ok).unwrap();
    // Swapping in another valid certificate of the same header (other signers, other
    // times) breaks the binding to last_certificate_hash.
    let mut swapped = block.clone();
    swapped.last_certificate = Some(chain.certify(&prev, &[0, 1, 2]));
    assert!(matches!(
        verify::verify_last_certificate(&swapped, ok),
        Err(VerifyError::HashMismatch {
            what: "last certificate hash",
            ..
        })
    ));
    // A proposer who forges vote times (invalid signatures) and commits to that
    // certificate in its header is caught by the certificate check.
    let mut forged = block.clone();
    let mut cert = chain.certs[0].clone();
    for v in &mut cert.votes {
        v.time_ms += 1_000_000;
    }
    forged.header.last_certificate_hash = cert.hash();
    forged.header.time_ms = cert.bft_time(&chain.validators).unwrap();
    forged.last_certificate = Some(cert);
    assert!(matches!(
        verify::verify_last_certificate(&forged, ok),
        Err(VerifyError::BadVoteSignatures { .. })
    ));
    // A header time that is not the BFT time of a valid certificate.
    let mut late = block.clone();
    late.header.time_ms += 1;
    assert!(matches!(
        verify::verify_last_certificate(&late, ok),
        Err(VerifyError::WrongBftTime { .. })
    ));
    // Missing at height 2; present at height 1.
    let mut missing = block.clone();
    missing.last_certificate = None;
    assert_eq!(
        verify::verify_last_certificate(&missing, ok),
        Err(VerifyError::MissingLastCertificate)
    );
    let mut first = chain.blocks[0].clone();
    verify::verify_last_certificate(&first, None).unwrap();
    first.last_certificate = Some(chain.certs[0].clone());
    assert_eq!(
        verify::verify_last_certificate(&first, None),
        Err(VerifyError::UnexpectedLastCertificate)
    );
}

#[test]
fn a_genesis_without_the_commit_pause_keeps_the_pause_and_hash_it_was_written_with() {
    // New genesis files get a 10 ms pause; one written when the default was 100 ms and
    // leaving the field out still means 100 ms, and names the same chain.
    assert_eq!(pyralog_ledger::ChainParams::default().timeout_commit_ms, 10);
    let mut genesis = TestChain::new(1, EngineId::Tendermint).genesis;
    genesis.params.timeout_commit_ms = 100;
    let mut json: serde_json::Value = serde_json::from_str(&genesis.to_json()).unwrap();
    let removed = json["params"]
        .as_object_mut()
        .unwrap()
        .remove("timeout_commit_ms");
    assert_eq!(removed, Some(serde_json::json!(100)));
    let read = pyralog_ledger::Genesis::from_json(&json.to_string()).unwrap();
    assert_eq!(read.params.timeout_commit_ms, 100);
    assert_eq!(read.hash().unwrap(), genesis.hash().unwrap());
}

/// State nodes read through a counter, to see which reads walk the tree.
struct Counting<'a> {
    inner: &'a pyralog_ledger::state::MemState,
    reads: std::cell::Cell<usize>,
}

impl pyralog_ledger::state::StateNodes for Counting<'_> {
    fn state_node(
        &self,
        node: &pyralog_ledger::state::Subtree,
    ) -> Result<Option<pyralog_ledger::state::StateNode>, pyralog_ledger::StoreError> {
        self.reads.set(self.reads.get() + 1);
        self.inner.state_node(node)
    }
}

#[test]
fn a_tip_cache_gives_the_trees_results_block_after_block_and_saves_the_walks() {
    use pyralog_ledger::{Payload, TipCache, Transaction, apply_block_cached};
    let mut chain = TestChain::new(1, EngineId::Raft);
    let users: Vec<_> = (1..=5).map(user).collect();
    let mut nonces = [0u64; 5];
    let cache = TipCache::new(chain.tip.state_root, 1 << 10);
    for height in 1..=12u64 {
        // Each block: every user writes one of three keys (so keys change from block to
        // block), deletes one some blocks, and notarizes a new digest.
        let mut txs = Vec::new();
        for (i, key) in users.iter().enumerate() {
            let k = [b'k', ((height + i as u64) % 3) as u8];
            let payload = if height % 4 == 0 && i == 0 {
                Payload::Delete { key: k.to_vec() }
            } else if i % 2 == 0 {
                Payload::Put {
                    key: k.to_vec(),
                    value: format!("{height}/{i}").into_bytes(),
                }
            } else {
                Payload::Notarize {
                    digest: content_digest(format!("{height}/{i}").as_bytes()),
                    meta: String::new(),
                }
            };
            let tx = Transaction::new_signed(key, chain.chain_id(), nonces[i], payload).unwrap();
            nonces[i] += 1;
            txs.push(tx);
        }
        let (block, expected) = chain.make_block(txs);
        let counting = Counting {
            inner: &chain.state,
            reads: std::cell::Cell::new(0),
        };
        let cached =
            apply_block_cached(&counting, &chain.log, &chain.tip, &block, Some(&cache)).unwrap();
        assert_eq!(cached.state_root, expected.state_root, "height {height}");
        assert_eq!(
            cached.state_writes, expected.state_writes,
            "height {height}"
        );
        assert_eq!(
            cached.state_updates, expected.state_updates,
            "height {height}"
        );
        // The same block again: every value it reads at the tip is now in the cache.
        let walked = counting.reads.get();
        apply_block_cached(&counting, &chain.log, &chain.tip, &block, Some(&cache)).unwrap();
        let rewalked = counting.reads.get() - walked;
        // The second run reads nodes only to compute the new root, not to read values.
        assert!(
            rewalked < walked || walked == 0,
            "height {height}: {rewalked} of {walked}"
        );
        let before = chain.tip.state_root;
        let cert = chain.certify_all(&block.header);
        chain.apply_committed(block, cert, expected);
        cache.advance(&before, chain.executions.last().unwrap());
        // What the cache now says of every user is what the new tree says.
        let with = at_tip(&chain, &chain.state).with_cache(&cache);
        let without = at_tip(&chain, &chain.state);
        for key in &users {
            assert_eq!(
                with.next_nonce(&key.public()).unwrap(),
                without.next_nonce(&key.public()).unwrap()
            );
        }
        for i in 0..5 {
            let digest = content_digest(format!("{height}/{i}").as_bytes());
            assert_eq!(
                with.notarization(&digest).unwrap(),
                without.notarization(&digest).unwrap()
            );
        }
    }
    assert!(!cache.is_empty());
    // Without walks: a user's account read at the tip through a warm cache reads no node.
    let counting = Counting {
        inner: &chain.state,
        reads: std::cell::Cell::new(0),
    };
    let exec = at_tip(&chain, &counting).with_cache(&cache);
    assert_eq!(exec.next_nonce(&users[0].public()).unwrap(), 12);
    assert_eq!(counting.reads.get(), 0);
    // The same read of an older state walks the tree: the cache answers only for its own.
    let old = BlockExecutor::new(
        &counting,
        &chain.log,
        pyralog_ledger::Tip {
            height: 11,
            ..chain.executions[10].tip(11)
        },
        chain.chain_id(),
        1,
    )
    .with_cache(&cache);
    assert_eq!(old.next_nonce(&users[0].public()).unwrap(), 11);
    assert!(counting.reads.get() > 0);
    // A cache moved from a state it did not follow forgets everything it held.
    let other = TipCache::new(Hash([7u8; 32]), 1 << 10);
    other.note(&Hash([7u8; 32]), &Hash([1u8; 32]), &Some(vec![1]));
    other.advance(&chain.tip.state_root, chain.executions.last().unwrap());
    assert!(other.is_empty());
    assert_eq!(other.get(&chain.tip.state_root, &Hash([1u8; 32])), None);
}

#[test]
fn a_tip_cache_holds_no_long_value_and_drops_a_short_one_a_long_one_replaced() {
    use pyralog_ledger::{TipCache, apply_block_cached};
    let mut chain = TestChain::new(1, EngineId::Raft);
    let alice = user(1);
    let cache = TipCache::new(chain.tip.state_root, 1 << 10);
    let long = vec![7u8; TipCache::MAX_VALUE_BYTES + 1];
    let kv = state_key(Namespace::Kv, b"k");
    for (nonce, value) in [(0, b"short".to_vec()), (1, long)] {
        let (block, execution) = chain.make_block(vec![chain.put(&alice, nonce, b"k", &value)]);
        let cached =
            apply_block_cached(&chain.state, &chain.log, &chain.tip, &block, Some(&cache)).unwrap();
        assert_eq!(cached.state_root, execution.state_root);
        let before = chain.tip.state_root;
        let cert = chain.certify_all(&block.header);
        chain.apply_committed(block, cert, execution);
        cache.advance(&before, chain.executions.last().unwrap());
        let held = cache
            .get(&chain.tip.state_root, &kv)
            .map(|v| v.map(|b| KvRecord::from_bytes(&b).unwrap().value));
        if value.len() <= TipCache::MAX_VALUE_BYTES {
            // A short record is held after the commit that wrote it.
            assert_eq!(held, Some(Some(Some(value))));
        } else {
            // A long one is not, and neither is the short one it replaced.
            assert_eq!(held, None);
        }
    }
    // Read at the tip, the long record comes from the tree (the next version links to
    // it) and is still not held.
    let mut exec = at_tip(&chain, &chain.state).with_cache(&cache);
    exec.apply(&chain.put(&alice, 2, b"k", b"again")).unwrap();
    let execution = exec.finish().unwrap();
    let record = KvRecord::from_bytes(execution.state_updates[&kv].as_ref().unwrap()).unwrap();
    assert_eq!(record.prev_height, 2);
    assert_eq!(cache.get(&chain.tip.state_root, &kv), None);
}

#[test]
fn a_tip_cache_filter_answers_absent_keys_without_a_walk_and_as_the_tree_does() {
    use pyralog_ledger::keyfilter::KeyFilter;
    use pyralog_ledger::{Payload, TipCache, Transaction, apply_block_cached};
    let mut chain = TestChain::new(1, EngineId::Raft);
    let users: Vec<_> = (1..=4).map(user).collect();
    let mut nonces = [0u64; 4];
    // A cache of two values: nearly every read, of present keys too, goes past the
    // values to the filter.
    let cache = TipCache::new(chain.tip.state_root, 1);
    let digest = |height: u64, i: usize| content_digest(format!("{height}/{i}").as_bytes());
    // Every key set so far, in order; the build begun at height 4 gets those present
    // then, and ends at height 8, after four more blocks the cache followed.
    let mut written = std::collections::BTreeSet::<Hash>::new();
    let mut build = None;
    for height in 1..=14u64 {
        if height == 4 {
            build = Some((cache.begin_filter(), written.clone()));
        }
        if height == 8 {
            let (b, keys) = build.take().unwrap();
            let mut filter = KeyFilter::new(0, 5);
            keys.iter().for_each(|k| filter.insert(k));
            assert_eq!(cache.filter_size(), None);
            assert!(cache.finish_filter(b, filter));
            // A build's number is used once.
            assert!(!cache.finish_filter(b, KeyFilter::new(0, 5)));
            let (keys_in, _) = cache.filter_size().unwrap();
            assert_eq!(keys_in, written.len());
        }
        let mut txs = Vec::new();
        for (i, key) in users.iter().enumerate() {
            let k = [b'k', ((height + i as u64) % 3) as u8];
            let payload = match (height + i as u64) % 3 {
                0 if height % 4 == 0 => Payload::Delete { key: k.to_vec() },
                0 => Payload::Put {
                    key: k.to_vec(),
                    value: format!("{height}/{i}").into_bytes(),
                },
                _ => Payload::Notarize {
                    digest: digest(height, i),
                    meta: String::new(),
                },
            };
            let tx = Transaction::new_signed(key, chain.chain_id(), nonces[i], payload).unwrap();
            txs.push(tx);
        }
        // Keep only what applies (a delete of a key never put fails).
        let mut exec = at_tip(&chain, &chain.state);
        txs.retain(|tx| exec.apply(tx).is_ok());
        for tx in &txs {
            let i = users.iter().position(|u| u.public() == tx.sender).unwrap();
            nonces[i] += 1;
        }
        let (block, expected) = chain.make_block(txs);
        let cached =
            apply_block_cached(&chain.state, &chain.log, &chain.tip, &block, Some(&cache)).unwrap();
        assert_eq!(cached.state_root, expected.state_root, "height {height}");
        assert_eq!(
            cached.state_writes, expected.state_writes,
            "height {height}"
        );
        let before = chain.tip.state_root;
        let cert = chain.certify_all(&block.header);
        chain.apply_committed(block, cert, expected);
        let execution = chain.executions.last().unwrap();
        written.extend(
            execution
                .state_updates
                .iter()
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| *k),
        );
        cache.advance(&before, execution);

        // What the cache says of every key read so far and of keys never set is what
        // the tree says: notarized digests, the next heights' digests, every user's keys.
        let counting = Counting {
            inner: &chain.state,
            reads: std::cell::Cell::new(0),
        };
        let with = at_tip(&chain, &counting).with_cache(&cache);
        let without = at_tip(&chain, &chain.state);
        for h in 1..=height + 3 {
            for i in 0..users.len() {
                assert_eq!(
                    with.notarization(&digest(h, i)).unwrap(),
                    without.notarization(&digest(h, i)).unwrap(),
                    "height {height}: digest {h}/{i}"
                );
            }
        }
        for u in &users {
            assert_eq!(
                with.next_nonce(&u.public()).unwrap(),
                without.next_nonce(&u.public()).unwrap()
            );
        }
        // Once the filter answers, digests nobody notarized cost no walk (a false
        // positive would cost one: with a few dozen keys in 64 KiB of filter, none).
        if height >= 8 {
            let reads = counting.reads.get();
            for i in 0..users.len() {
                assert_eq!(with.notarization(&digest(height + 100, i)).unwrap(), None);
            }
            assert_eq!(counting.reads.get(), reads, "height {height}");
        }
    }
    // A second build replaces the first; the first's end is refused.
    let first = cache.begin_filter();
    let second = cache.begin_filter();
    assert!(!cache.finish_filter(first, KeyFilter::new(0, 1)));
    assert_eq!(cache.filter_size(), None);
    let mut filter = KeyFilter::new(0, 1);
    written.iter().for_each(|k| filter.insert(k));
    assert!(cache.finish_filter(second, filter));
    // A cancelled build is not taken, and leaves the cache without a filter; cancelling
    // a build that is not the current one changes nothing.
    let cancelled = cache.begin_filter();
    cache.cancel_filter(cancelled);
    assert!(!cache.finish_filter(cancelled, KeyFilter::new(0, 1)));
    assert_eq!(cache.filter_size(), None);
    let second = cache.begin_filter();
    cache.cancel_filter(cancelled);
    let mut filter = KeyFilter::new(0, 1);
    written.iter().for_each(|k| filter.insert(k));
    assert!(cache.finish_filter(second, filter));
    // A cache moved from a state it did not follow drops its filter with its values.
    let absent = state_key(Namespace::Notarization, &digest(999, 0).0);
    assert_eq!(cache.get(&chain.tip.state_root, &absent), Some(None));
    let foreign = Hash([9u8; 32]);
    cache.advance(&foreign, chain.executions.last().unwrap());
    assert_eq!(cache.filter_size(), None);
    assert_eq!(cache.get(&chain.tip.state_root, &absent), None);
}

#[test]
fn a_filter_build_is_dropped_when_the_cache_loses_track_of_the_blocks() {
    use pyralog_ledger::TipCache;
    use pyralog_ledger::keyfilter::KeyFilter;
    let mut chain = TestChain::new(1, EngineId::Raft);
    let cache = TipCache::new(chain.tip.state_root, 1 << 10);
    let build = cache.begin_filter();
    let (block, execution) = chain.make_block(vec![chain.put(&user(1), 0, b"k", b"v")]);
    let cert = chain.certify_all(&block.header);
    chain.apply_committed(block, cert, execution);
    // Moved from a state it did not follow: the keys of the block before are unknown.
    cache.advance(&Hash([3u8; 32]), chain.executions.last().unwrap());
    assert!(!cache.finish_filter(build, KeyFilter::new(0, 1)));
    assert_eq!(cache.filter_size(), None);
}

/// One transaction of [`random_chain_reads_through_the_filter_are_the_trees`]: a user
/// (of four) puts or deletes one of four keys or notarizes one of 24 digests.
#[derive(Clone, Debug)]
enum RandomTx {
    Put(usize, u8),
    Delete(usize, u8),
    Notarize(usize, u8),
}

fn random_tx() -> impl proptest::strategy::Strategy<Value = RandomTx> {
    use proptest::prelude::*;
    prop_oneof![
        (0..4usize, 0..4u8).prop_map(|(u, k)| RandomTx::Put(u, k)),
        (0..4usize, 0..4u8).prop_map(|(u, k)| RandomTx::Delete(u, k)),
        (0..4usize, 0..24u8).prop_map(|(u, d)| RandomTx::Notarize(u, d)),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    /// Random blocks of puts, deletes and notarizations (repeated digests fail and are
    /// left out), a filter build begun and finished at random heights, with a cache of
    /// two values and one large enough for all: every account, key and digest reads
    /// through the cache as it does from the tree, after every block.
    #[test]
    fn random_chain_reads_through_the_filter_are_the_trees(
        blocks in proptest::collection::vec(proptest::collection::vec(random_tx(), 0..6), 1..9),
        begin in 0usize..9,
        length in 0usize..9,
        small in proptest::bool::ANY,
    ) {
        use pyralog_ledger::keyfilter::KeyFilter;
        use pyralog_ledger::{Payload, TipCache, Transaction, apply_block_cached};
        let mut chain = TestChain::new(1, EngineId::Raft);
        let users: Vec<_> = (1..=4).map(user).collect();
        let mut nonces = [0u64; 4];
        let cache = TipCache::new(chain.tip.state_root, if small { 1 } else { 1 << 10 });
        let digest = |d: u8| content_digest(&[d]);
        let mut present = std::collections::BTreeSet::<Hash>::new();
        let mut build = None;
        for (height, txs) in blocks.iter().enumerate() {
            if height == begin {
                build = Some((cache.begin_filter(), present.clone()));
            }
            if height == begin + length
                && let Some((b, keys)) = build.take()
            {
                let mut filter = KeyFilter::new(0, height as u64);
                keys.iter().for_each(|k| filter.insert(k));
                proptest::prop_assert!(cache.finish_filter(b, filter));
            }
            // Which transactions apply, decided through the cache (as a proposer does)
            // and from the tree alone: the same.
            let mut exec = at_tip(&chain, &chain.state)
            .with_cache(&cache);
            let mut tree = at_tip(&chain, &chain.state);
            let mut applied = Vec::new();
            for t in txs {
                let (u, payload) = match *t {
                    RandomTx::Put(u, k) => (
                        u,
                        Payload::Put {
                            key: vec![k],
                            value: vec![height as u8],
                        },
                    ),
                    RandomTx::Delete(u, k) => (u, Payload::Delete { key: vec![k] }),
                    RandomTx::Notarize(u, d) => (
                        u,
                        Payload::Notarize {
                            digest: digest(d),
                            meta: String::new(),
                        },
                    ),
                };
                let tx = Transaction::new_signed(&users[u], chain.chain_id(), nonces[u], payload)
                    .unwrap();
                let ok = exec.apply(&tx).is_ok();
                proptest::prop_assert_eq!(ok, tree.apply(&tx).is_ok());
                if ok {
                    nonces[u] += 1;
                    applied.push(tx);
                }
            }
            let (block, expected) = chain.make_block(applied);
            let cached =
                apply_block_cached(&chain.state, &chain.log, &chain.tip, &block, Some(&cache))
                    .unwrap();
            proptest::prop_assert_eq!(cached.state_root, expected.state_root);
            let before = chain.tip.state_root;
            let cert = chain.certify_all(&block.header);
            chain.apply_committed(block, cert, expected);
            let execution = chain.executions.last().unwrap();
            present.extend(execution.state_updates.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| *k));
            cache.advance(&before, execution);
            let with = at_tip(&chain, &chain.state)
                .with_cache(&cache);
            let without = at_tip(&chain, &chain.state);
            for d in 0..24 {
                proptest::prop_assert_eq!(
                    with.notarization(&digest(d)).unwrap(),
                    without.notarization(&digest(d)).unwrap()
                );
            }
            for u in &users {
                proptest::prop_assert_eq!(
                    with.next_nonce(&u.public()).unwrap(),
                    without.next_nonce(&u.public()).unwrap()
                );
            }
            for k in 0..4u8 {
                let key = state_key(Namespace::Kv, &[k]);
                proptest::prop_assert_eq!(
                    cache.get(&chain.tip.state_root, &key).unwrap_or_else(|| state::get(&chain.state, &chain.tip.state(), &key).unwrap()),
                    state::get(&chain.state, &chain.tip.state(), &key).unwrap()
                );
            }
        }
    }
}
