//! The signer's double-sign guard: a table of requests, and the crash cases (crash between
//! persist and send, restart with stale state, restart with wiped state, failing store).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pyralog_consensus::signer::{MemSignerStore, Signer, SignerError, Step};
use pyralog_crypto::{Hash, Keypair};
use pyralog_ledger::{ChainId, Vote, VoteKind};

fn key() -> Keypair {
    Keypair::from_seed(&[3; 32])
}

fn chain() -> ChainId {
    ChainId::new("test-chain").unwrap()
}

fn vote(kind: VoteKind, height: u64, round: u32, block: Option<u8>) -> Vote {
    Vote {
        kind,
        height,
        round,
        block: block.map(|b| Hash([b; 32])),
        time_ms: 1000 + height,
    }
}

fn open(store: MemSignerStore, committed: u64) -> Signer<MemSignerStore> {
    Signer::open(key(), chain(), store, committed).unwrap()
}

#[derive(Debug, PartialEq)]
enum Expect {
    Sign,
    Regression,
    Equivocation,
    Decided,
}

#[test]
fn guard_table() {
    use VoteKind::{Precommit, Prevote};
    // Requests in order, each with what the signer must do given everything before it.
    let table: Vec<(Vote, Expect)> = vec![
        (vote(Prevote, 5, 0, Some(1)), Expect::Sign),
        (vote(Prevote, 5, 0, Some(1)), Expect::Sign), // same message again (resend)
        (vote(Prevote, 5, 0, Some(2)), Expect::Equivocation),
        (vote(Prevote, 5, 0, None), Expect::Equivocation),
        (vote(Precommit, 5, 0, None), Expect::Sign), // nil precommit
        (vote(Precommit, 5, 0, Some(1)), Expect::Equivocation),
        (vote(Prevote, 5, 0, Some(1)), Expect::Regression), // earlier step
        (vote(Prevote, 5, 1, Some(3)), Expect::Sign),       // next round
        (vote(Precommit, 5, 0, None), Expect::Regression),  // earlier round
        (vote(Prevote, 6, 0, Some(4)), Expect::Sign),       // next height
        (vote(Precommit, 5, 9, Some(4)), Expect::Regression), // earlier height, later round
        (vote(Precommit, 6, 0, Some(4)), Expect::Sign),
        (vote(Prevote, 4, 0, Some(4)), Expect::Decided), // at or below committed height 4
    ];
    // A fresh validator (empty store at genesis) that has since seen height 4 commit.
    let mut signer = open(MemSignerStore::default(), 0);
    signer.note_committed(4);
    for (i, (v, expect)) in table.iter().enumerate() {
        let got = match signer.sign_vote(v) {
            Ok(sig) => {
                v.verify(&signer.public_key(), &chain(), &sig).unwrap();
                Expect::Sign
            }
            Err(SignerError::Regression { .. }) => Expect::Regression,
            Err(SignerError::Equivocation { .. }) => Expect::Equivocation,
            Err(SignerError::Decided { .. }) => Expect::Decided,
            Err(e) => panic!("row {i}: unexpected {e}"),
        };
        assert_eq!(&got, expect, "row {i}: {v:?}");
    }
    let last = signer.last_signed().unwrap();
    assert_eq!(
        (last.height, last.round, last.step),
        (6, 0, Step::Precommit)
    );
}

#[test]
fn proposals_are_guarded_too() {
    let mut signer = open(MemSignerStore::default(), 0);
    signer
        .sign_proposal(1, 0, Hash([1; 32]), b"proposal A")
        .unwrap();
    assert!(matches!(
        signer.sign_proposal(1, 0, Hash([2; 32]), b"proposal B"),
        Err(SignerError::Equivocation { .. })
    ));
    // After prevoting, a proposal of the same round is a regression.
    signer
        .sign_vote(&vote(VoteKind::Prevote, 1, 0, Some(1)))
        .unwrap();
    assert!(matches!(
        signer.sign_proposal(1, 0, Hash([1; 32]), b"proposal A"),
        Err(SignerError::Regression { .. })
    ));
    signer
        .sign_proposal(1, 1, Hash([2; 32]), b"proposal B")
        .unwrap();
}

#[test]
fn crash_between_persist_and_send_never_allows_a_conflicting_vote() {
    let mut signer = open(MemSignerStore::default(), 0);
    // The signature is produced (so persisted) but the process dies before sending it.
    let lost = signer
        .sign_vote(&vote(VoteKind::Prevote, 3, 2, Some(7)))
        .unwrap();
    let disk = signer.store().clone();
    drop(signer);
    // Restart from what was on disk: the vote itself is there, to be sent instead.
    let mut signer = open(disk, 2);
    let (kept, signature) = signer.last_vote().unwrap();
    assert_eq!(kept, vote(VoteKind::Prevote, 3, 2, Some(7)));
    assert_eq!(signature, lost);
    kept.verify(&key().public(), &chain(), &signature).unwrap();
    assert!(matches!(
        signer.sign_vote(&vote(VoteKind::Prevote, 3, 2, Some(8))),
        Err(SignerError::Equivocation { .. })
    ));
    assert!(matches!(
        signer.sign_vote(&vote(VoteKind::Prevote, 3, 2, None)),
        Err(SignerError::Equivocation { .. })
    ));
    // Re-sending the same vote is fine.
    signer
        .sign_vote(&vote(VoteKind::Prevote, 3, 2, Some(7)))
        .unwrap();
    signer
        .sign_vote(&vote(VoteKind::Precommit, 3, 2, Some(7)))
        .unwrap();
}

#[test]
fn a_failing_store_releases_no_signature() {
    let mut signer = open(
        MemSignerStore {
            bytes: None,
            fail_saves: true,
        },
        0,
    );
    assert!(matches!(
        signer.sign_vote(&vote(VoteKind::Prevote, 1, 0, Some(1))),
        Err(SignerError::Store(_))
    ));
    assert_eq!(signer.last_signed(), None);
    assert!(signer.store().bytes.is_none());
}

#[test]
fn restart_with_stale_state_refuses_decided_heights() {
    // The disk holds height 3, but the chain (and so this validator) is at height 10:
    // the state is stale (e.g. restored from a backup).
    let mut fresh = open(MemSignerStore::default(), 0);
    fresh
        .sign_vote(&vote(VoteKind::Precommit, 3, 0, Some(1)))
        .unwrap();
    let stale = fresh.store().clone();
    let mut signer = open(stale, 10);
    for h in [4, 7, 10] {
        assert!(
            matches!(
                signer.sign_vote(&vote(VoteKind::Prevote, h, 0, Some(9))),
                Err(SignerError::Decided { committed: 10, .. })
            ),
            "height {h}"
        );
    }
    signer
        .sign_vote(&vote(VoteKind::Prevote, 11, 0, Some(9)))
        .unwrap();
    // Commits learned while running move the floor up.
    signer.note_committed(11);
    assert!(matches!(
        signer.sign_vote(&vote(VoteKind::Precommit, 11, 0, Some(9))),
        Err(SignerError::Decided { .. })
    ));
}

#[test]
fn restart_with_wiped_state_refuses_until_overridden() {
    let mut signer = open(MemSignerStore::default(), 10);
    assert_eq!(
        signer.sign_vote(&vote(VoteKind::Prevote, 11, 0, Some(1))),
        Err(SignerError::WipedState { committed: 10 })
    );
    assert!(signer.sign_proposal(11, 0, Hash([1; 32]), b"p").is_err());
    signer.override_wiped_state();
    signer
        .sign_vote(&vote(VoteKind::Prevote, 11, 0, Some(1)))
        .unwrap();
    // The override does not open decided heights.
    assert!(matches!(
        signer.sign_vote(&vote(VoteKind::Prevote, 10, 5, Some(1))),
        Err(SignerError::Decided { .. })
    ));
    // A brand-new chain (height 0) needs no override.
    let mut genesis = open(MemSignerStore::default(), 0);
    genesis
        .sign_vote(&vote(VoteKind::Prevote, 1, 0, Some(1)))
        .unwrap();
}

#[test]
fn corrupt_state_is_an_error_not_a_fresh_start() {
    let store = MemSignerStore {
        bytes: Some(vec![1, 2, 3]),
        fail_saves: false,
    };
    assert!(matches!(
        Signer::open(key(), chain(), store, 0),
        Err(SignerError::Store(_))
    ));
}

#[test]
fn a_state_saved_by_version_1_still_guards() {
    // Version 1 kept the position and block, not the vote: height 3, round 2, prevote,
    // block [7; 32].
    let mut bytes = vec![1];
    bytes.extend_from_slice(&3u64.to_be_bytes());
    bytes.extend_from_slice(&2u32.to_be_bytes());
    bytes.push(Step::Prevote as u8);
    bytes.push(1);
    bytes.extend_from_slice(&[7; 32]);
    let store = MemSignerStore {
        bytes: Some(bytes),
        fail_saves: false,
    };
    let mut signer = open(store, 2);
    assert_eq!(signer.last_vote(), None);
    assert!(matches!(
        signer.sign_vote(&vote(VoteKind::Prevote, 3, 2, None)),
        Err(SignerError::Equivocation { .. })
    ));
    signer
        .sign_vote(&vote(VoteKind::Precommit, 3, 2, Some(7)))
        .unwrap();
    // Saved again in the current version, with the vote.
    let reopened = open(signer.store().clone(), 2);
    assert_eq!(
        reopened.last_vote().map(|(v, _)| v),
        Some(vote(VoteKind::Precommit, 3, 2, Some(7)))
    );
}

#[test]
fn a_state_whose_vote_is_not_at_its_position_or_that_does_not_parse_is_refused() {
    let mut signer = open(MemSignerStore::default(), 0);
    signer
        .sign_vote(&vote(VoteKind::Precommit, 3, 2, Some(7)))
        .unwrap();
    let good = signer.store().bytes.clone().unwrap();
    let with = |bytes: Vec<u8>| MemSignerStore {
        bytes: Some(bytes),
        fail_saves: false,
    };
    assert!(Signer::open(key(), chain(), with(good.clone()), 0).is_ok());
    // The position says height 4, the kept vote height 3.
    let mut moved = good.clone();
    moved[1..9].copy_from_slice(&4u64.to_be_bytes());
    // An unknown version, and a trailing byte.
    let mut version = good.clone();
    version[0] = 3;
    let mut trailing = good;
    trailing.push(0);
    for bad in [moved, version, trailing] {
        assert!(matches!(
            Signer::open(key(), chain(), with(bad), 0),
            Err(SignerError::Store(_))
        ));
    }
}
