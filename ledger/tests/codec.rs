//! Canonical encoding: decode(encode(x)) = x, one encoding per value, and decoders that
//! reject trailing bytes, bad tags and oversize lengths without panicking.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use pyralog_crypto::{Hash, Keypair, Signature};
use pyralog_ledger::codec::{CodecError, Decode, Encode};
use pyralog_ledger::state::{NodeRef, StateNode, StateProof, Subtree};
use pyralog_ledger::{
    Block, Certificate, ChainId, CommitSig, EngineId, Header, Payload, Transaction, Validator,
    ValidatorSet, Vote, VoteKind,
};

fn hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash)
}
fn sig() -> impl Strategy<Value = Signature> {
    (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
        let mut s = [0u8; 64];
        s[..32].copy_from_slice(&a);
        s[32..].copy_from_slice(&b);
        Signature(s)
    })
}
fn key() -> impl Strategy<Value = pyralog_crypto::PublicKey> {
    (0u8..=255).prop_map(|n| Keypair::from_seed(&[n; 32]).public())
}
fn chain() -> impl Strategy<Value = ChainId> {
    "[a-z0-9][a-z0-9._-]{0,63}".prop_map(|s| ChainId::new(&s).unwrap())
}
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}
fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        (hash(), "\\PC{0,40}").prop_map(|(digest, meta)| Payload::Notarize { digest, meta }),
        (bytes(40), bytes(100)).prop_map(|(mut key, value)| {
            key.push(1);
            Payload::Put { key, value }
        }),
        bytes(40).prop_map(|mut key| {
            key.push(0);
            Payload::Delete { key }
        }),
    ]
}
fn tx() -> impl Strategy<Value = Transaction> {
    (chain(), key(), any::<u64>(), payload(), sig()).prop_map(
        |(chain_id, sender, nonce, payload, signature)| Transaction {
            chain_id,
            sender,
            nonce,
            payload,
            signature,
        },
    )
}
fn engine() -> impl Strategy<Value = EngineId> {
    prop_oneof![
        Just(EngineId::Tendermint),
        Just(EngineId::Pbft),
        Just(EngineId::Raft)
    ]
}
fn header() -> impl Strategy<Value = Header> {
    (
        chain(),
        any::<(u64, u64, u32, u64)>(),
        proptest::collection::vec(hash(), 7),
        engine(),
        key(),
    )
        .prop_map(
            |(chain_id, (height, time_ms, tx_count, log_size), h, engine, proposer)| Header {
                chain_id,
                height,
                time_ms,
                prev_hash: h[0],
                last_certificate_hash: h[1],
                tx_root: h[2],
                tx_count,
                log_size,
                log_root: h[3],
                state_root: h[4],
                validators_hash: h[5],
                next_validators_hash: h[6],
                engine,
                proposer,
            },
        )
}
fn cert() -> impl Strategy<Value = Certificate> {
    (
        any::<(u64, u32)>(),
        hash(),
        proptest::collection::btree_map(any::<u32>(), (any::<u64>(), sig()), 0..8),
    )
        .prop_map(|((height, round), header_hash, votes)| Certificate {
            height,
            round,
            header_hash,
            votes: votes
                .into_iter()
                .map(|(validator, (time_ms, signature))| CommitSig {
                    validator,
                    time_ms,
                    signature,
                })
                .collect(),
        })
}
fn block() -> impl Strategy<Value = Block> {
    (
        header(),
        proptest::option::of(cert()),
        proptest::collection::vec(tx(), 0..4),
    )
        .prop_map(|(header, last_certificate, txs)| Block {
            header,
            last_certificate,
            txs,
        })
}
fn vote() -> impl Strategy<Value = Vote> {
    (
        prop_oneof![
            Just(VoteKind::Prevote),
            Just(VoteKind::Precommit),
            Just(VoteKind::Prepare),
            Just(VoteKind::Commit),
            Just(VoteKind::RaftAck)
        ],
        any::<(u64, u32, u64)>(),
        proptest::option::of(hash()),
    )
        .prop_map(|(kind, (height, round, time_ms), block)| Vote {
            kind,
            height,
            round,
            block,
            time_ms,
        })
}
fn valset() -> impl Strategy<Value = ValidatorSet> {
    proptest::collection::btree_map(0u8..=255, 1u64..1000, 1..6).prop_map(|m| {
        ValidatorSet::new(
            m.into_iter()
                .map(|(n, power)| Validator {
                    public_key: Keypair::from_seed(&[n; 32]).public(),
                    power,
                })
                .collect(),
        )
        .unwrap()
    })
}
fn state_node() -> impl Strategy<Value = StateNode> {
    prop_oneof![
        (hash(), bytes(50)).prop_map(|(key, value)| StateNode::Leaf { key, value }),
        (subtree(), subtree()).prop_map(|(left, right)| StateNode::Internal { left, right }),
    ]
}
fn subtree() -> impl Strategy<Value = Subtree> {
    (hash(), any::<u64>(), any::<u32>()).prop_map(|(hash, version, index)| Subtree {
        hash,
        at: NodeRef { version, index },
    })
}
fn state_proof() -> impl Strategy<Value = StateProof> {
    (
        proptest::option::of((hash(), hash())),
        proptest::collection::vec(hash(), 0..20),
    )
        .prop_map(|(leaf, siblings)| StateProof { leaf, siblings })
}

/// Round trip, canonical form, trailing bytes and every truncation.
fn check<T: Encode + Decode + PartialEq + std::fmt::Debug>(value: &T) -> Result<(), TestCaseError> {
    let bytes = value.to_bytes();
    let back = T::from_bytes(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, value);
    prop_assert_eq!(back.to_bytes(), bytes.clone());
    let mut longer = bytes.clone();
    longer.push(0);
    prop_assert_eq!(
        T::from_bytes(&longer),
        Err(CodecError::TrailingBytes { count: 1 })
    );
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        prop_assert!(T::from_bytes(&bytes[..cut.min(bytes.len() - 1)]).is_err());
    }
    // A wrong format version is refused.
    let mut versioned = bytes.clone();
    if versioned[0] == 1 {
        versioned[0] = 9;
        prop_assert!(T::from_bytes(&versioned).is_err());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test] fn transaction_round_trip(v in tx()) { check(&v)?; }

    #[test]
    fn a_transactions_hash_is_its_encodings(v in tx()) {
        let bytes = v.to_bytes();
        let (hash, len) = v.hash_and_len();
        prop_assert_eq!(hash, pyralog_crypto::HashDomain::Tx.hash(&bytes));
        prop_assert_eq!(len, bytes.len());
        prop_assert_eq!(v.hash(), hash);
    }
    #[test] fn header_round_trip(v in header()) { check(&v)?; }
    #[test] fn certificate_round_trip(v in cert()) { check(&v)?; }
    #[test] fn block_round_trip(v in block()) { check(&v)?; }
    #[test] fn vote_round_trip(v in vote()) { check(&v)?; }
    #[test] fn validator_set_round_trip(v in valset()) { check(&v)?; }
    #[test] fn state_node_round_trip(v in state_node()) { check(&v)?; }
    #[test] fn state_proof_round_trip(v in state_proof()) { check(&v)?; }

    #[test]
    fn random_bytes_never_panic(data in bytes(400)) {
        let _ = Transaction::from_bytes(&data);
        let _ = Header::from_bytes(&data);
        let _ = Certificate::from_bytes(&data);
        let _ = Block::from_bytes(&data);
        let _ = Vote::from_bytes(&data);
        let _ = ValidatorSet::from_bytes(&data);
        let _ = StateNode::from_bytes(&data);
        let _ = StateProof::from_bytes(&data);
    }

    #[test]
    fn mutated_encodings_never_panic(v in block(), pos in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = v.to_bytes();
        let i = pos % bytes.len();
        bytes[i] = byte;
        let _ = Block::from_bytes(&bytes);
    }
}

#[test]
fn bad_tags_and_oversize_lengths_are_rejected() {
    let k = Keypair::from_seed(&[1; 32]);
    let chain = ChainId::new("c").unwrap();
    let tx = Transaction::new_signed(&k, chain.clone(), 0, Payload::Delete { key: b"k".to_vec() })
        .unwrap();
    let mut bytes = tx.to_bytes();
    // version(1) chain(4+1) sender(32) nonce(8) -> payload tag at 46.
    assert_eq!(bytes[46], 3);
    bytes[46] = 7;
    assert_eq!(
        Transaction::from_bytes(&bytes),
        Err(CodecError::BadTag {
            what: "payload",
            tag: 7
        })
    );
    // A key length over the limit is refused before reading the bytes.
    let mut bytes = tx.to_bytes();
    bytes[47..51].copy_from_slice(&(10_000u32).to_be_bytes());
    assert!(matches!(
        Transaction::from_bytes(&bytes),
        Err(CodecError::TooLong { what: "key", .. })
    ));
    // An empty key is refused when decoding (key length 0 at offset 47).
    let mut empty_key = tx.to_bytes()[..47].to_vec();
    empty_key.extend_from_slice(&0u32.to_be_bytes());
    empty_key.extend_from_slice(&tx.signature.0);
    assert!(matches!(
        Transaction::from_bytes(&empty_key),
        Err(CodecError::Invalid { what: "key", .. })
    ));
    // Limits are checked when building too.
    let big = Payload::Put {
        key: vec![1; 257],
        value: vec![],
    };
    assert!(Transaction::new_signed(&k, chain.clone(), 0, big).is_err());
    let empty = Payload::Delete { key: vec![] };
    assert!(Transaction::new_signed(&k, chain, 0, empty).is_err());
    // Chain ids.
    assert!(ChainId::new("").is_err());
    assert!(ChainId::new("UPPER").is_err());
    assert!(ChainId::new("..").is_err() && ChainId::new(".hidden").is_err());
    assert!(ChainId::new("a.b-c_d").is_ok());
    assert!(ChainId::new(&"a".repeat(65)).is_err());
}

#[test]
fn certificate_votes_must_be_strictly_ordered() {
    let sig = Signature([0; 64]);
    let cert = Certificate {
        height: 1,
        round: 0,
        header_hash: Hash::ZERO,
        votes: vec![
            CommitSig {
                validator: 2,
                time_ms: 0,
                signature: sig,
            },
            CommitSig {
                validator: 2,
                time_ms: 0,
                signature: sig,
            },
        ],
    };
    assert!(matches!(
        Certificate::from_bytes(&cert.to_bytes()),
        Err(CodecError::Invalid { .. })
    ));
}

#[test]
fn validator_sets_are_canonical() {
    let a = Validator {
        public_key: Keypair::from_seed(&[1; 32]).public(),
        power: 1,
    };
    let b = Validator {
        public_key: Keypair::from_seed(&[2; 32]).public(),
        power: 1,
    };
    let set = ValidatorSet::new(vec![b.clone(), a.clone()]).unwrap();
    assert_eq!(set, ValidatorSet::new(vec![a.clone(), b.clone()]).unwrap());
    assert!(ValidatorSet::new(vec![a.clone(), a.clone()]).is_err());
    assert!(ValidatorSet::new(vec![]).is_err());
    assert!(
        ValidatorSet::new(vec![Validator {
            power: 0,
            ..a.clone()
        }])
        .is_err()
    );
    // An unsorted encoding of the same set is rejected.
    let mut bytes = set.to_bytes();
    let (first, second) = (5..45, 45..85);
    let mut swapped = bytes.clone();
    swapped[first.clone()].copy_from_slice(&bytes[second.clone()]);
    swapped[second].copy_from_slice(&bytes[first]);
    assert!(ValidatorSet::from_bytes(&swapped).is_err());
    bytes.push(0);
    assert!(ValidatorSet::from_bytes(&bytes).is_err());
}

#[test]
fn quorum_rules() {
    let set = |powers: &[u64]| {
        ValidatorSet::new(
            powers
                .iter()
                .enumerate()
                .map(|(i, &power)| Validator {
                    public_key: Keypair::from_seed(&[i as u8; 32]).public(),
                    power,
                })
                .collect(),
        )
        .unwrap()
    };
    // 4 equal validators: BFT needs 3 (power 30 of 40 > 2/3), Raft needs 3 (> 1/2).
    let s = set(&[10, 10, 10, 10]);
    assert_eq!(s.quorum_power(EngineId::Tendermint), 27);
    assert_eq!(s.quorum_power(EngineId::Raft), 21);
    assert_eq!(s.one_third_plus(), 14);
    // Exactly 2/3 is not a quorum.
    let s = set(&[1, 1, 1]);
    assert_eq!(s.quorum_power(EngineId::Pbft), 3);
    let s = set(&[1; 7]);
    assert_eq!(s.quorum_power(EngineId::Tendermint), 5);
    assert_eq!(s.quorum_power(EngineId::Raft), 4);
}
