#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Duplicate-vote evidence: canonical, verifiable by anyone holding the validator set,
//! and refused when anything is off.

use pyralog_crypto::Hash;
use pyralog_ledger::codec::{Decode, Encode};
use pyralog_ledger::evidence::EvidenceError;
use pyralog_ledger::testing::TestChain;
use pyralog_ledger::{ChainId, DuplicateVote, EngineId, Vote, VoteKind};

fn votes(
    chain: &TestChain,
    signer: usize,
) -> (
    (Vote, pyralog_crypto::Signature),
    (Vote, pyralog_crypto::Signature),
) {
    let a = Vote {
        kind: VoteKind::Precommit,
        height: 5,
        round: 2,
        block: Some(Hash([1; 32])),
        time_ms: 10,
    };
    let b = Vote {
        block: None,
        time_ms: 11,
        ..a
    };
    let key = &chain.validator_keys[signer];
    let id = chain.chain_id();
    ((a, a.sign(key, &id)), (b, b.sign(key, &id)))
}

#[test]
fn evidence_is_canonical_and_verifies() {
    let chain = TestChain::new(4, EngineId::Tendermint);
    let (a, b) = votes(&chain, 2);
    let key = chain.validator_keys[2].public();
    let ev1 = DuplicateVote::new(chain.chain_id(), key, a, b).unwrap();
    let ev2 = DuplicateVote::new(chain.chain_id(), key, b, a).unwrap();
    assert_eq!(ev1, ev2, "one pair of votes, one evidence object");
    assert_eq!(ev1.hash(), ev2.hash());
    ev1.verify(&chain.chain_id(), &chain.validators).unwrap();
    let bytes = ev1.to_bytes();
    assert_eq!(DuplicateVote::from_bytes(&bytes).unwrap(), ev1);
    for cut in 0..bytes.len() {
        assert!(DuplicateVote::from_bytes(&bytes[..cut]).is_err());
    }
}

#[test]
fn evidence_that_does_not_hold_is_refused() {
    let chain = TestChain::new(4, EngineId::Tendermint);
    let (a, b) = votes(&chain, 2);
    let key = chain.validator_keys[2].public();
    assert!(
        DuplicateVote::new(chain.chain_id(), key, a, a).is_none(),
        "same vote"
    );
    let good = DuplicateVote::new(chain.chain_id(), key, a, b).unwrap();
    let set = &chain.validators;
    let id = chain.chain_id();

    let other_chain = ChainId::new("other").unwrap();
    assert!(matches!(
        good.verify(&other_chain, set),
        Err(EvidenceError::WrongChain { .. })
    ));

    let mut wrong_key = good.clone();
    wrong_key.validator = chain.validator_keys[1].public();
    assert_eq!(
        wrong_key.verify(&id, set),
        Err(EvidenceError::BadSignature("first"))
    );

    let mut outsider = good.clone();
    outsider.validator = pyralog_ledger::testing::user(1).public();
    assert!(matches!(
        outsider.verify(&id, set),
        Err(EvidenceError::NotAValidator(_))
    ));

    let mut swapped = good.clone();
    std::mem::swap(&mut swapped.first, &mut swapped.second);
    assert_eq!(swapped.verify(&id, set), Err(EvidenceError::NotCanonical));

    let mut moved = good.clone();
    moved.second.0.round += 1;
    assert_eq!(
        moved.verify(&id, set),
        Err(EvidenceError::DifferentPositions)
    );

    let mut same = good.clone();
    same.second.0.block = same.first.0.block;
    assert!(matches!(
        same.verify(&id, set),
        Err(EvidenceError::SameBlock | EvidenceError::NotCanonical)
    ));

    let mut forged = good.clone();
    forged.second.1.0[0] ^= 1;
    assert!(forged.verify(&id, set).is_err());
}
