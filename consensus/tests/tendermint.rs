#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Table-style tests of the Tendermint round state machine: one engine (validator 1 of 4,
//! equal power) is fed crafted, correctly signed messages, and each case checks the
//! rule of Algorithm 1 it names.

use std::collections::BTreeSet;

use pyralog_consensus::engine::{Carried, Engine, Input, Output, Timeout};
use pyralog_consensus::proposer::ProposerRotation;
use pyralog_consensus::sim::app::App;
use pyralog_consensus::sim::sim_params;
use pyralog_consensus::tendermint::{
    self, Message, Proposal, RoundStep, SignedVote, Tendermint, timer,
};
use pyralog_consensus::{MemSignerStore, Signer};
use pyralog_crypto::{Hash, Keypair};
use pyralog_ledger::codec::Encode;
use pyralog_ledger::verify::verify_certificate;
use pyralog_ledger::{
    Block, ChainId, EngineId, Genesis, GenesisValidator, Validator, ValidatorSet, Vote, VoteKind,
};

const ME: u32 = 1;
const T0: u64 = 1_700_000_010_000;

struct Harness {
    keys: Vec<Keypair>,
    set: ValidatorSet,
    chain_id: ChainId,
    engine: Tendermint<MemSignerStore>,
    app: App,
    /// Blocks the host calls invalid.
    invalid: BTreeSet<Hash>,
    now: u64,
    outputs: Vec<Output>,
}

fn genesis(keys: &[Keypair]) -> Genesis {
    Genesis {
        chain_id: ChainId::new("table-chain").unwrap(),
        genesis_time_ms: T0 - 10_000,
        engine: EngineId::Tendermint,
        validators: keys
            .iter()
            .map(|k| GenesisValidator {
                public_key: k.public(),
                power: 10,
                name: None,
                node_key: None,
            })
            .collect(),
        params: sim_params(),
    }
}

impl Harness {
    fn new() -> Harness {
        let mut keys: Vec<Keypair> = (0..4u8)
            .map(|i| Keypair::from_seed(&[i + 40; 32]))
            .collect();
        keys.sort_by_key(|k| k.public());
        let g = genesis(&keys);
        let set = g.validator_set().unwrap();
        let signer = Signer::open(
            keys[ME as usize].clone(),
            g.chain_id.clone(),
            MemSignerStore::default(),
            0,
        )
        .unwrap();
        let engine = Tendermint::new(
            tendermint::Config {
                chain_id: g.chain_id.clone(),
                validators: set.clone(),
                params: g.params.clone(),
            },
            Some(signer),
        );
        let mut h = Harness {
            app: App::new(g.clone(), set.clone()),
            keys,
            set,
            chain_id: g.chain_id,
            engine,
            invalid: BTreeSet::new(),
            now: T0,
            outputs: vec![],
        };
        h.input(Input::Start {
            height: 1,
            persisted: None,
        });
        h
    }

    /// Feeds an input and answers validation requests (valid unless listed invalid).
    fn input(&mut self, input: Input) {
        let mut pending = vec![input];
        while let Some(input) = pending.pop() {
            let outs = self.engine.handle(self.now, input);
            for o in &outs {
                if let Output::ValidateBlock(b) = o {
                    let hash = b.header.hash();
                    pending.push(Input::BlockValidated {
                        height: b.header.height,
                        block: hash,
                        valid: !self.invalid.contains(&hash),
                    });
                }
            }
            self.outputs.extend(outs);
        }
    }

    fn block(&self, salt: u64) -> Block {
        let proposer = self.keys[0].public();
        let users: Vec<Keypair> = vec![Keypair::from_seed(&[9; 32])];
        self.app.build_block(proposer, &users, 1, salt).unwrap()
    }

    fn proposal(&mut self, round: u32, vr: Option<u32>, block: &Block, from: u32) {
        let bytes = self.signed_proposal(1, round, vr, block, from);
        self.input(Input::Message(bytes));
    }

    /// A proposal message signed by validator `by`.
    fn signed_proposal(
        &self,
        height: u64,
        round: u32,
        valid_round: Option<u32>,
        block: &Block,
        by: u32,
    ) -> Vec<u8> {
        let p = Proposal {
            height,
            round,
            valid_round,
            block: block.clone(),
        };
        let signature = p.sign(&self.keys[by as usize], &self.chain_id);
        Message::Proposal {
            proposal: p,
            signature,
        }
        .to_bytes()
    }

    fn signed_vote(&self, kind: VoteKind, round: u32, block: Option<Hash>, from: u32) -> Vec<u8> {
        let vote = Vote {
            kind,
            height: 1,
            round,
            block,
            time_ms: self.now + u64::from(from),
        };
        let signature = vote.sign(&self.keys[from as usize], &self.chain_id);
        Message::Vote(SignedVote {
            validator: from,
            vote,
            signature,
        })
        .to_bytes()
    }

    fn vote(&mut self, kind: VoteKind, round: u32, block: Option<Hash>, from: &[u32]) {
        for &i in from {
            let bytes = self.signed_vote(kind, round, block, i);
            self.input(Input::Message(bytes));
        }
    }

    fn timeout(&mut self, kind: u8, round: u32) {
        self.input(Input::Timeout(Timeout {
            height: 1,
            round,
            kind,
        }));
    }

    /// The votes this engine broadcast since the last call, as (kind, round, block).
    fn my_votes(&mut self) -> Vec<(VoteKind, u32, Option<Hash>)> {
        let votes = self
            .my_vote_messages()
            .into_iter()
            .map(|(sv, _)| (sv.vote.kind, sv.vote.round, sv.vote.block))
            .collect();
        self.outputs.clear();
        votes
    }

    /// The votes this engine broadcast among the outputs, decoded and as sent.
    fn my_vote_messages(&self) -> Vec<(SignedVote, Vec<u8>)> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Broadcast(b) => match Message::decode_limited(b) {
                    Ok(Message::Vote(sv)) if sv.validator == ME => Some((sv, b.clone())),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    fn scheduled(&self, kind: u8) -> Vec<(u32, u64)> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::ScheduleTimeout { timeout, after_ms } if timeout.kind == kind => {
                    Some((timeout.round, *after_ms))
                }
                _ => None,
            })
            .collect()
    }

    /// Locks the engine on `block` in `round` (L36) with prevotes from 0, 2, 3.
    fn lock_on(&mut self, round: u32, block: &Block) {
        let proposer = proposer_of(&self.set, round);
        self.proposal(round, None, block, proposer);
        self.vote(
            VoteKind::Prevote,
            round,
            Some(block.header.hash()),
            &[0, 2, 3],
        );
        assert_eq!(self.engine.locked(), Some((round, block.header.hash())));
    }

    /// The engine states persisted since the outputs were last cleared, oldest first.
    fn persisted(&self) -> Vec<Vec<u8>> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Persist(b) => Some(b.clone()),
                _ => None,
            })
            .collect()
    }

    /// Restarts: a new engine on the same signer store, started from `persisted`.
    fn restart(&mut self, persisted: Vec<u8>) {
        let store = self.engine.signer().unwrap().store().clone();
        let signer = Signer::open(
            self.keys[ME as usize].clone(),
            self.chain_id.clone(),
            store,
            0,
        )
        .unwrap();
        self.engine = Tendermint::new(
            tendermint::Config {
                chain_id: self.chain_id.clone(),
                validators: self.set.clone(),
                params: sim_params(),
            },
            Some(signer),
        );
        self.outputs.clear();
        self.input(Input::Start {
            height: 1,
            persisted: Some(persisted),
        });
    }

    /// How many proposals the engine broadcast since the outputs were last cleared.
    fn proposals_sent(&self) -> usize {
        self.outputs
            .iter()
            .filter(|o| {
                matches!(o, Output::Broadcast(b)
                    if matches!(Message::decode_limited(b), Ok(Message::Proposal { .. })))
            })
            .count()
    }

    /// Moves the engine to `round` through nil precommits and the precommit timeout.
    fn advance_to_round(&mut self, round: u32) {
        while self.engine.round() < round {
            let r = self.engine.round();
            self.vote(VoteKind::Precommit, r, None, &[0, 2, 3]);
            self.timeout(timer::PRECOMMIT, r);
        }
        self.outputs.clear();
    }
}

fn proposer_of(set: &ValidatorSet, round: u32) -> u32 {
    ProposerRotation::new(set).proposer_at_round(round)
}

fn round_where_proposer_is_not(set: &ValidatorSet, me: u32, from: u32) -> u32 {
    (from..100).find(|r| proposer_of(set, *r) != me).unwrap()
}

#[test]
fn l22_prevotes_a_valid_proposal_when_unlocked() {
    let mut h = Harness::new();
    let b = h.block(1);
    h.proposal(0, None, &b, proposer_of(&h.set, 0));
    assert_eq!(
        h.my_votes(),
        vec![(VoteKind::Prevote, 0, Some(b.header.hash()))]
    );
    assert_eq!(h.engine.step(), RoundStep::Prevote);
}

#[test]
fn l26_prevotes_nil_for_an_invalid_proposal() {
    let mut h = Harness::new();
    let b = h.block(1);
    h.invalid.insert(b.header.hash());
    h.proposal(0, None, &b, proposer_of(&h.set, 0));
    assert_eq!(h.my_votes(), vec![(VoteKind::Prevote, 0, None)]);
}

#[test]
fn l26_prevotes_nil_when_locked_on_another_value() {
    let mut h = Harness::new();
    let locked = h.block(1);
    h.lock_on(0, &locked);
    h.advance_to_round(1);
    let r = round_where_proposer_is_not(&h.set, ME, 1);
    h.advance_to_round(r);
    let other = h.block(2);
    h.proposal(r, None, &other, proposer_of(&h.set, r));
    assert_eq!(h.my_votes(), vec![(VoteKind::Prevote, r, None)]);
}

#[test]
fn l30_prevotes_a_proposal_with_a_newer_polka_than_the_lock() {
    let mut h = Harness::new();
    let locked = h.block(1);
    h.lock_on(0, &locked);
    let r = round_where_proposer_is_not(&h.set, ME, 2);
    h.advance_to_round(r);
    // A polka for `other` in round 1 (after the lock in round 0), which this node missed.
    let other = h.block(2);
    h.vote(VoteKind::Prevote, 1, Some(other.header.hash()), &[0, 2, 3]);
    h.proposal(r, Some(1), &other, proposer_of(&h.set, r));
    assert_eq!(
        h.my_votes(),
        vec![(VoteKind::Prevote, r, Some(other.header.hash()))]
    );
}

#[test]
fn l32_prevotes_nil_when_the_claimed_polka_is_older_than_the_lock() {
    let mut h = Harness::new();
    let early = h.block(2);
    // Polka for `early` in round 0 that this node does not act on (it is past round 0).
    let locked = h.block(1);
    h.advance_to_round(1);
    h.vote(VoteKind::Prevote, 0, Some(early.header.hash()), &[0, 2, 3]);
    h.lock_on(1, &locked);
    let r = round_where_proposer_is_not(&h.set, ME, 2);
    h.advance_to_round(r);
    h.proposal(r, Some(0), &early, proposer_of(&h.set, r));
    assert_eq!(h.my_votes(), vec![(VoteKind::Prevote, r, None)]);
}

#[test]
fn l28_waits_for_the_claimed_polka() {
    let mut h = Harness::new();
    let r = round_where_proposer_is_not(&h.set, ME, 1);
    h.advance_to_round(r);
    let b = h.block(3);
    h.proposal(r, Some(0), &b, proposer_of(&h.set, r));
    assert!(
        h.my_votes().is_empty(),
        "no prevote before the polka is seen"
    );
    h.vote(VoteKind::Prevote, 0, Some(b.header.hash()), &[0, 2, 3]);
    assert_eq!(
        h.my_votes(),
        vec![(VoteKind::Prevote, r, Some(b.header.hash()))]
    );
}

#[test]
fn l57_timeout_propose_prevotes_nil() {
    let mut h = Harness::new();
    h.timeout(timer::PROPOSE, 0);
    assert_eq!(h.my_votes(), vec![(VoteKind::Prevote, 0, None)]);
    // A stale timeout (other round) does nothing.
    h.timeout(timer::PROPOSE, 5);
    assert!(h.my_votes().is_empty());
}

#[test]
fn l36_a_polka_locks_and_precommits() {
    let mut h = Harness::new();
    let b = h.block(1);
    h.proposal(0, None, &b, proposer_of(&h.set, 0));
    h.vote(VoteKind::Prevote, 0, Some(b.header.hash()), &[0]);
    assert_eq!(
        h.engine.locked(),
        None,
        "2 of 4 (with its own) is not a quorum"
    );
    h.vote(VoteKind::Prevote, 0, Some(b.header.hash()), &[2]);
    assert_eq!(h.engine.locked(), Some((0, b.header.hash())));
    assert_eq!(h.engine.valid(), Some((0, b.header.hash())));
    let votes = h.my_votes();
    assert_eq!(
        votes.last(),
        Some(&(VoteKind::Precommit, 0, Some(b.header.hash())))
    );
    assert_eq!(h.engine.step(), RoundStep::Precommit);
}

#[test]
fn l42_a_polka_seen_after_precommitting_nil_updates_only_the_valid_value() {
    let mut h = Harness::new();
    let b = h.block(1);
    h.timeout(timer::PROPOSE, 0);
    h.timeout(timer::PREVOTE, 0);
    assert_eq!(h.engine.step(), RoundStep::Precommit);
    h.proposal(0, None, &b, proposer_of(&h.set, 0));
    h.vote(VoteKind::Prevote, 0, Some(b.header.hash()), &[0, 2, 3]);
    assert_eq!(h.engine.locked(), None);
    assert_eq!(h.engine.valid(), Some((0, b.header.hash())));
}

#[test]
fn l44_a_nil_polka_precommits_nil() {
    let mut h = Harness::new();
    h.timeout(timer::PROPOSE, 0);
    h.my_votes();
    h.vote(VoteKind::Prevote, 0, None, &[0, 2]);
    assert_eq!(h.my_votes(), vec![(VoteKind::Precommit, 0, None)]);
}

#[test]
fn l34_l61_mixed_prevotes_schedule_the_prevote_timeout_which_precommits_nil() {
    let mut h = Harness::new();
    let b = h.block(1);
    h.timeout(timer::PROPOSE, 0);
    h.outputs.clear();
    h.vote(VoteKind::Prevote, 0, Some(b.header.hash()), &[0]);
    h.vote(VoteKind::Prevote, 0, None, &[2]);
    assert_eq!(h.scheduled(timer::PREVOTE), vec![(0, 150)]);
    h.timeout(timer::PREVOTE, 0);
    assert_eq!(h.my_votes(), vec![(VoteKind::Precommit, 0, None)]);
}

#[test]
fn l47_l65_precommits_of_any_kind_schedule_the_next_round() {
    let mut h = Harness::new();
    h.outputs.clear();
    h.vote(VoteKind::Precommit, 0, None, &[0, 2]);
    assert!(h.scheduled(timer::PRECOMMIT).is_empty());
    h.vote(VoteKind::Precommit, 0, Some(Hash([1; 32])), &[3]);
    assert_eq!(h.scheduled(timer::PRECOMMIT), vec![(0, 150)]);
    h.timeout(timer::PRECOMMIT, 0);
    assert_eq!((h.engine.round(), h.engine.step()), (1, RoundStep::Propose));
}

#[test]
fn timeouts_grow_with_the_round() {
    let mut h = Harness::new();
    let base = sim_params();
    for r in 1..4u32 {
        h.advance_to_round(r);
        h.vote(VoteKind::Precommit, r, None, &[0, 2, 3]);
        let precommit = h.scheduled(timer::PRECOMMIT);
        assert_eq!(
            precommit,
            vec![(
                r,
                base.timeout_precommit_ms + u64::from(r) * base.timeout_delta_ms
            )]
        );
    }
}

#[test]
fn l49_decides_with_a_certificate_the_light_client_accepts() {
    let mut h = Harness::new();
    let b = h.block(1);
    h.proposal(0, None, &b, proposer_of(&h.set, 0));
    h.vote(VoteKind::Precommit, 0, Some(b.header.hash()), &[0, 2, 3]);
    let commit = h.outputs.iter().find_map(|o| match o {
        Output::Commit { block, certificate } => Some((block.clone(), certificate.clone())),
        _ => None,
    });
    let (block, cert) = commit.expect("decided");
    assert_eq!(block.header.hash(), b.header.hash());
    verify_certificate(EngineId::Tendermint, &h.set, &block.header, &cert).unwrap();
    assert_eq!(h.engine.height(), 2);
}

#[test]
fn l49_decides_in_an_earlier_round_than_the_current_one() {
    let mut h = Harness::new();
    let b = h.block(1);
    h.proposal(0, None, &b, proposer_of(&h.set, 0));
    h.advance_to_round(2);
    h.vote(VoteKind::Precommit, 0, Some(b.header.hash()), &[0, 2, 3]);
    assert_eq!(h.engine.height(), 2);
}

#[test]
fn l55_f_plus_one_messages_of_a_later_round_skip_to_it() {
    let mut h = Harness::new();
    h.vote(VoteKind::Prevote, 3, None, &[0]);
    assert_eq!(h.engine.round(), 0, "one validator (f) is not enough");
    h.vote(VoteKind::Precommit, 3, None, &[2]);
    assert_eq!(h.engine.round(), 3);
}

#[test]
fn proposals_not_from_the_rounds_proposer_are_rejected() {
    let mut h = Harness::new();
    let b = h.block(1);
    let wrong = (proposer_of(&h.set, 0) + 2) % 4;
    h.proposal(0, None, &b, wrong);
    assert!(
        h.outputs
            .iter()
            .any(|o| matches!(o, Output::Rejected { reason } if reason.contains("not signed by its proposer")))
    );
    assert!(h.my_votes().is_empty());
}

#[test]
fn a_tampered_body_under_a_signed_header_is_rejected() {
    let mut h = Harness::new();
    let mut b = h.block(1);
    b.txs.clear(); // the header still commits to one transaction
    h.proposal(0, None, &b, proposer_of(&h.set, 0));
    assert!(h.my_votes().is_empty());
    assert_eq!(h.engine.step(), RoundStep::Propose);
}

#[test]
fn conflicting_votes_give_evidence_that_verifies() {
    let mut h = Harness::new();
    let b = h.block(1);
    h.vote(VoteKind::Prevote, 0, Some(b.header.hash()), &[2]);
    h.vote(VoteKind::Prevote, 0, None, &[2]);
    h.vote(VoteKind::Prevote, 0, Some(Hash([3; 32])), &[2]); // reported once only
    let evidence: Vec<_> = h
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Evidence(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(evidence.len(), 1);
    evidence[0].verify(&h.chain_id, &h.set).unwrap();
    assert_eq!(evidence[0].validator, h.keys[2].public());
}

#[test]
fn precommit_time_is_after_the_block_time() {
    let mut h = Harness::new();
    let b = h.block(1);
    h.now = b.header.time_ms - 5_000; // a clock behind the block's BFT time
    h.proposal(0, None, &b, proposer_of(&h.set, 0));
    h.vote(VoteKind::Prevote, 0, Some(b.header.hash()), &[0, 2, 3]);
    let time = h.outputs.iter().find_map(|o| match o {
        Output::Broadcast(bytes) => match Message::decode_limited(bytes) {
            Ok(Message::Vote(sv)) if sv.vote.kind == VoteKind::Precommit => Some(sv.vote.time_ms),
            _ => None,
        },
        _ => None,
    });
    assert_eq!(time, Some(b.header.time_ms + 1));
}

#[test]
fn a_decision_with_a_valid_certificate_commits_and_a_forged_one_is_rejected() {
    let mut h = Harness::new();
    let b = h.block(1);
    let cert = h.certify(&b); // precommits of 0, 2, 3
    let mut forged = cert.clone();
    forged.votes.truncate(2); // below the quorum
    let bytes = h.engine.decision_message(&b, &forged);
    h.input(Input::Message(bytes));
    assert_eq!(h.engine.height(), 1);
    let bytes = h.engine.decision_message(&b, &cert);
    h.input(Input::Message(bytes));
    assert_eq!(h.engine.height(), 2);
}

#[test]
fn a_restart_keeps_the_lock() {
    let mut h = Harness::new();
    let locked = h.block(1);
    h.lock_on(0, &locked);
    let persisted = h.persisted().pop().unwrap();
    h.restart(persisted);
    assert_eq!(h.engine.locked(), Some((0, locked.header.hash())));
    // Its signed precommit is re-sent (crash between persist and send).
    assert_eq!(
        h.my_votes(),
        vec![
            (VoteKind::Prevote, 0, Some(locked.header.hash())),
            (VoteKind::Precommit, 0, Some(locked.header.hash()))
        ]
    );
    let r = round_where_proposer_is_not(&h.set, ME, 1);
    h.advance_to_round(r);
    let other = h.block(2);
    h.proposal(r, None, &other, proposer_of(&h.set, r));
    assert_eq!(h.my_votes(), vec![(VoteKind::Prevote, r, None)]);
}

#[test]
fn proposer_rotation_is_weighted_by_power_and_periodic() {
    let mut keys: Vec<Keypair> = (0..4u8)
        .map(|i| Keypair::from_seed(&[i + 70; 32]))
        .collect();
    keys.sort_by_key(|k| k.public());
    let powers = [10u64, 20, 30, 40];
    let set = ValidatorSet::new(
        keys.iter()
            .zip(powers)
            .map(|(k, power)| Validator {
                public_key: k.public(),
                power,
            })
            .collect(),
    )
    .unwrap();
    let mut rotation = ProposerRotation::new(&set);
    let mut counts = [0u32; 4];
    let picks: Vec<u32> = (0..10).map(|_| rotation.advance()).collect();
    for p in &picks {
        counts[*p as usize] += 1;
    }
    // Period total/gcd = 10: each proposes power/10 times.
    assert_eq!(counts, [1, 2, 3, 4]);
    // Spread out: the heaviest never proposes more than twice in a row.
    assert!(picks.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])));
    // Jumping to a height gives the same proposer as stepping there.
    let mut stepped = ProposerRotation::new(&set);
    for h in 1..40u64 {
        assert_eq!(
            ProposerRotation::at_height(&set, h).current(),
            stepped.current(),
            "height {h}"
        );
        stepped.advance();
    }
}

#[test]
fn the_wire_format_round_trips_and_rejects_trailing_bytes() {
    let h = Harness::new();
    let b = h.block(1);
    let bytes = h.signed_vote(VoteKind::Prevote, 0, Some(b.header.hash()), 2);
    let m = Message::decode_limited(&bytes).unwrap();
    assert_eq!(m.to_bytes(), bytes);
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Message::decode_limited(&longer).is_err());
    let huge = vec![0u8; tendermint::MAX_MESSAGE_BYTES + 1];
    assert!(Message::decode_limited(&huge).is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// Untrusted bytes never panic the engine: random input, and every single-bit flip
    /// of valid messages, are rejected or ignored.
    #[test]
    fn garbage_and_bit_flips_never_panic(
        random in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        flip in 0usize..4096,
        bit in 0u8..8,
    ) {
        let mut h = Harness::new();
        h.input(Input::Message(random));
        let b = h.block(1);
        let proposal = h.signed_proposal(1, 0, None, &b, proposer_of(&h.set, 0));
        // The compact form's decoder too (a host's, before the engine).
        let mut compact = h.engine.compact_message(&proposal).unwrap().0;
        let i = flip % compact.len();
        compact[i] ^= 1 << bit;
        if let Ok(Carried::Block { block, .. }) = h.engine.carried(&compact) {
            proptest::prop_assert_eq!(&block.header, &b.header);
        }
        let _ = h.engine.expand_message(&compact, &b);
        let messages = [
            proposal,
            h.signed_vote(VoteKind::Precommit, 0, Some(b.header.hash()), 2),
            h.engine.decision_message(&b, &pyralog_ledger::Certificate {
                height: 1, round: 0, header_hash: b.header.hash(), votes: vec![],
            }),
        ];
        for m in messages {
            let mut bad = m.clone();
            let i = flip % bad.len();
            bad[i] ^= 1 << bit;
            h.input(Input::Message(bad));
        }
        proptest::prop_assert_eq!(h.engine.height(), 1);
    }
}

impl Harness {
    /// A certificate of `block` signed by validators 0, 2 and 3.
    fn certify(&self, block: &Block) -> pyralog_ledger::Certificate {
        let mut votes = vec![];
        for i in [0u32, 2, 3] {
            let vote = Vote {
                kind: VoteKind::Precommit,
                height: block.header.height,
                round: 0,
                block: Some(block.header.hash()),
                time_ms: block.header.time_ms + 1 + u64::from(i),
            };
            votes.push(pyralog_ledger::CommitSig {
                validator: i,
                time_ms: vote.time_ms,
                signature: vote.sign(&self.keys[i as usize], &self.chain_id),
            });
        }
        pyralog_ledger::Certificate {
            height: block.header.height,
            round: 0,
            header_hash: block.header.hash(),
            votes,
        }
    }

    /// Decides heights 1 to `n` from decision messages, then clears the outputs.
    fn decide_heights(&mut self, n: u64) {
        for m in self.decisions(n) {
            self.input(Input::Message(m));
        }
        assert_eq!(self.engine.height(), n + 1);
        self.outputs.clear();
    }

    /// Decision messages for heights 1..=n of a chain built elsewhere.
    fn decisions(&self, n: u64) -> Vec<Vec<u8>> {
        let mut other = self.app.clone();
        let users: Vec<Keypair> = vec![Keypair::from_seed(&[9; 32])];
        (1..=n)
            .map(|h| {
                let block = other
                    .build_block(self.keys[0].public(), &users, 1, h)
                    .unwrap();
                let cert = self.certify(&block);
                let message = self.engine.decision_message(&block, &cert);
                other.commit(block, cert).unwrap();
                message
            })
            .collect()
    }
}

#[test]
fn a_burst_of_decisions_is_kept_and_committed_in_order() {
    let mut h = Harness::new();
    let decisions = h.decisions(3);
    for m in decisions.into_iter().rev() {
        h.input(Input::Message(m)); // worst order: the latest first
    }
    let committed: Vec<u64> = h
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Commit { block, .. } => Some(block.header.height),
            _ => None,
        })
        .collect();
    assert_eq!(committed, vec![1, 2, 3]);
    assert_eq!(h.engine.height(), 4);
}

#[test]
fn replayed_old_votes_trigger_at_most_one_sync_per_window() {
    let mut h = Harness::new();
    h.decide_heights(3);
    for i in 0..6u64 {
        let vote = Vote {
            kind: VoteKind::Prevote,
            height: 1 + i % 2,
            round: 0,
            block: None,
            time_ms: T0,
        };
        let signature = vote.sign(&h.keys[2], &h.chain_id);
        let bytes = Message::Vote(SignedVote {
            validator: 2,
            vote,
            signature,
        })
        .to_bytes();
        h.input(Input::Message(bytes));
    }
    let syncs = h
        .outputs
        .iter()
        .filter(|o| matches!(o, Output::SyncPeer { to: 2, .. }))
        .count();
    assert_eq!(syncs, 1);
}

#[test]
fn l55_also_pulls_a_validator_that_fell_far_behind() {
    let mut h = Harness::new();
    let far = tendermint::MAX_ROUNDS_AHEAD + 100;
    h.vote(VoteKind::Prevote, far, None, &[0]);
    h.vote(VoteKind::Precommit, far + 7, None, &[2]);
    // f+1 validators are at round `far` or beyond: at least one honest one is.
    assert_eq!(h.engine.round(), far);
}

#[test]
fn oversized_proposals_are_rejected_before_anything_is_kept() {
    let mut h = Harness::new();
    let mut b = h.block(1);
    let tx = b.txs[0].clone();
    b.txs = vec![tx; sim_params().max_block_txs as usize + 1];
    h.proposal(0, None, &b, proposer_of(&h.set, 0));
    assert!(
        h.outputs
            .iter()
            .any(|o| matches!(o, Output::Rejected { .. }))
    );
    assert!(
        !h.outputs
            .iter()
            .any(|o| matches!(o, Output::ValidateBlock(_)))
    );
}

#[test]
fn a_prevote_signed_but_lost_in_a_crash_is_sent_rather_than_refused() {
    let mut h = Harness::new();
    let r = round_where_proposer_is_not(&h.set, ME, 1);
    h.advance_to_round(r - 1);
    h.vote(VoteKind::Precommit, r - 1, None, &[0, 2, 3]);
    h.timeout(timer::PRECOMMIT, r - 1);
    // The state persisted when round r started; then the propose timeout signs a nil
    // prevote, and the process dies before its engine state or the vote is written.
    let before = h.persisted().pop().unwrap();
    h.timeout(timer::PROPOSE, r);
    assert_eq!(h.my_votes(), vec![(VoteKind::Prevote, r, None)]);
    h.restart(before);
    assert_eq!(h.my_votes(), vec![]);
    // A valid proposal now: the engine would prevote it, but its vote in this round is
    // the nil one it signed, and that is what it sends (not nothing, which would leave
    // the round an honest vote short for good).
    let block = h.block(1);
    h.proposal(r, None, &block, proposer_of(&h.set, r));
    assert!(
        !h.outputs
            .iter()
            .any(|o| matches!(o, Output::SignerRefused(_)))
    );
    assert_eq!(h.my_votes(), vec![(VoteKind::Prevote, r, None)]);
    assert_eq!(h.engine.step(), RoundStep::Prevote);
}

#[test]
fn a_precommit_lost_in_a_crash_is_sent_with_its_lock() {
    let mut h = Harness::new();
    let r = round_where_proposer_is_not(&h.set, ME, 0);
    h.advance_to_round(r);
    let block = h.block(1);
    h.lock_on(r, &block);
    // Persisted: after the prevote (no lock yet), then with the lock and the precommit.
    // The crash loses the second, and the precommit with it.
    let states = h.persisted();
    let before = states[states.len() - 2].clone();
    let my_precommits = |h: &Harness| -> Vec<Vec<u8>> {
        h.my_vote_messages()
            .into_iter()
            .filter(|(sv, _)| sv.vote.kind == VoteKind::Precommit)
            .map(|(_, bytes)| bytes)
            .collect()
    };
    let signed = my_precommits(&h);
    assert_eq!(signed.len(), 1);
    h.restart(before);
    let hash = block.header.hash();
    assert_eq!(h.engine.locked(), None);
    assert_eq!(h.my_votes(), vec![(VoteKind::Prevote, r, Some(hash))]);
    // The proposal comes again (relays), so the block is known.
    h.proposal(r, None, &block, proposer_of(&h.set, r));
    assert_eq!(h.my_votes(), vec![]);
    // The prevote timeout would precommit nil; the precommit it signed, for the block, is
    // sent instead: the same bytes (time and signature), with the lock and valid value.
    h.timeout(timer::PREVOTE, r);
    assert_eq!(my_precommits(&h), signed);
    assert_eq!(h.engine.locked(), Some((r, hash)));
    assert_eq!(h.engine.valid(), Some((r, hash)));
    // Persisted before it was sent: a second crash right after keeps the lock.
    let after = h.persisted().pop().unwrap();
    h.restart(after);
    assert_eq!(h.engine.locked(), Some((r, hash)));
}

#[test]
fn a_validator_one_height_behind_is_sent_the_decision_only_after_a_grace() {
    let mut h = Harness::new();
    h.decide_heights(1);
    let syncs = |h: &Harness| {
        h.outputs
            .iter()
            .filter(|o| matches!(o, Output::SyncPeer { to: 2, height: 1 }))
            .count()
    };
    // Validator 2's precommit of height 1 arrives just after this node decided: it is
    // finishing that height on the same votes.
    let late = h.signed_vote(VoteKind::Precommit, 0, None, 2);
    h.input(Input::Message(late));
    assert_eq!(syncs(&h), 0);
    // It is still at height 1 a propose timeout later: it gets the decision.
    h.now += sim_params().timeout_propose_ms;
    let stuck = h.signed_vote(VoteKind::Prevote, 0, None, 2);
    h.input(Input::Message(stuck));
    assert_eq!(syncs(&h), 1);
}

#[test]
fn a_proposal_is_rebroadcast_only_until_every_validator_prevoted_in_its_round() {
    let mut h = Harness::new();
    let r = (0..100).find(|r| proposer_of(&h.set, *r) == ME).unwrap();
    h.advance_to_round(r);
    let block = h.block(1);
    h.input(Input::ProposalReady {
        height: 1,
        round: r,
        block: Box::new(block.clone()),
    });
    assert_eq!(h.proposals_sent(), 1);
    let rebroadcast = |h: &mut Harness| {
        h.outputs.clear();
        h.timeout(timer::REBROADCAST, 0);
        h.proposals_sent()
    };
    assert_eq!(rebroadcast(&mut h), 1);
    h.vote(VoteKind::Prevote, r, None, &[0, 2]);
    assert_eq!(rebroadcast(&mut h), 1);
    // Validator 3 prevotes too: every validator has, and the block is not sent again;
    // this validator's own votes still are.
    h.vote(VoteKind::Prevote, r, Some(block.header.hash()), &[3]);
    assert_eq!(rebroadcast(&mut h), 0);
    assert!(
        h.my_votes()
            .contains(&(VoteKind::Prevote, r, Some(block.header.hash())))
    );
}

/// A proposal travels compact (its transactions by hash) between hosts: the compact form
/// carries the proposer's signature over, expands back to the very bytes the engine
/// sent, and the engine votes on the expanded proposal. The compact bytes themselves are
/// not a message the engine takes.
#[test]
fn a_compact_proposal_expands_to_the_proposal_the_engine_sent() {
    let mut h = Harness::new();
    let users: Vec<Keypair> = (0..5u8)
        .map(|i| Keypair::from_seed(&[i + 90; 32]))
        .collect();
    let b = h.app.build_block(h.keys[0].public(), &users, 5, 1).unwrap();
    assert_eq!(b.txs.len(), 5);
    let full = h.signed_proposal(1, 0, None, &b, proposer_of(&h.set, 0));

    let (wire, block) = h
        .engine
        .compact_message(&full)
        .expect("a proposal compacts");
    assert_eq!(block, b);
    assert!(
        wire.len() + 5 * 80 < full.len(),
        "{} vs {}",
        wire.len(),
        full.len()
    );
    let Ok(Carried::Block {
        block: named,
        round: 0,
    }) = h.engine.carried(&wire)
    else {
        panic!("a compact proposal");
    };
    assert_eq!(named.header, b.header);
    assert_eq!(
        named.tx_hashes,
        b.txs.iter().map(|t| t.hash()).collect::<Vec<_>>()
    );
    assert_eq!(named.assemble(|i, _| Some(b.txs[i].clone())), Ok(b.clone()));
    assert_eq!(
        named.assemble(|i, _| (i % 2 == 0).then(|| b.txs[i].clone())),
        Err(vec![1, 3])
    );
    assert_eq!(h.engine.expand_message(&wire, &b).unwrap(), full);
    // Another block is not the one the proposal names.
    assert!(h.engine.expand_message(&wire, &h.block(2)).is_err());

    // Every cut short is an error, never a panic (under two bytes it is no compact
    // proposal, and goes to the engine, which refuses it).
    for n in 0..wire.len() {
        let named = h.engine.carried(&wire[..n]);
        assert!(
            named.is_err() || (n < 2 && named == Ok(Carried::Message)),
            "{n}"
        );
        assert!(h.engine.expand_message(&wire[..n], &b).is_err());
    }
    let mut longer = wire.clone();
    longer.push(0);
    assert!(h.engine.carried(&longer).is_err());

    // Votes and decisions go as they are.
    let vote = h.signed_vote(VoteKind::Prevote, 0, None, 2);
    assert!(h.engine.compact_message(&vote).is_none());
    assert_eq!(h.engine.carried(&vote), Ok(Carried::Message));

    // The engine takes only the expanded form.
    h.input(Input::Message(wire));
    assert!(
        h.outputs
            .iter()
            .any(|o| matches!(o, Output::Rejected { reason } if reason.contains("undecodable")))
    );
    assert!(h.my_votes().is_empty());
    h.input(Input::Message(full));
    assert_eq!(
        h.my_votes(),
        vec![(VoteKind::Prevote, 0, Some(b.header.hash()))]
    );
}

/// The compact form of a proposal signed by validator `by`.
fn compact_proposal(
    h: &Harness,
    height: u64,
    round: u32,
    valid_round: Option<u32>,
    block: &Block,
    by: u32,
) -> Vec<u8> {
    let full = h.signed_proposal(height, round, valid_round, block, by);
    h.engine.compact_message(&full).unwrap().0
}

/// The host fetches transactions only for a compact proposal the engine would take:
/// signed by its round's proposer, for this height or the next, in a round not too far
/// ahead.
#[test]
fn a_compact_proposal_is_checked_before_anything_is_fetched_for_it() {
    let h = Harness::new();
    let users: Vec<Keypair> = (0..3u8)
        .map(|i| Keypair::from_seed(&[i + 90; 32]))
        .collect();
    let b = h.app.build_block(h.keys[0].public(), &users, 3, 1).unwrap();
    assert_eq!(b.txs.len(), 3);
    let p0 = proposer_of(&h.set, 0);
    let ok = compact_proposal(&h, 1, 0, None, &b, p0);
    assert!(
        matches!(h.engine.carried(&ok), Ok(Carried::Block { block, round: 0 }) if block.header == b.header)
    );
    let wrong = compact_proposal(&h, 1, 0, None, &b, (p0 + 1) % 4);
    let err = h.engine.carried(&wrong).unwrap_err().to_string();
    assert!(err.contains("not signed by its proposer"), "{err}");
    let bad_round = compact_proposal(&h, 1, 2, Some(2), &b, proposer_of(&h.set, 2));
    assert!(h.engine.carried(&bad_round).is_err());
    // The next height has its own proposer (a block for height 2 by its header, which is
    // all this check reads).
    let mut b2 = b.clone();
    b2.header.height = 2;
    let next = ProposerRotation::at_height(&h.set, 2).proposer_at_round(0);
    let ahead = compact_proposal(&h, 2, 0, None, &b2, next);
    assert!(matches!(
        h.engine.carried(&ahead),
        Ok(Carried::Block { .. })
    ));
    let by_another = compact_proposal(&h, 2, 0, None, &b2, (next + 1) % 4);
    assert!(h.engine.carried(&by_another).is_err());
    // A proposal for a height its header does not have.
    let misplaced = compact_proposal(&h, 2, 0, None, &b, next);
    assert!(h.engine.carried(&misplaced).is_err());
    // The signature covers the header only; hashes other than those the header commits
    // to (a relay's rewrite) are refused before anything is fetched for them.
    let mut swapped = b.clone();
    swapped.txs.swap(0, 1);
    let rewritten = compact_proposal(&h, 1, 0, None, &swapped, p0);
    let err = h.engine.carried(&rewritten).unwrap_err().to_string();
    assert!(err.contains("do not match the header"), "{err}");
    let mut shorter = b.clone();
    shorter.txs.pop();
    assert!(
        h.engine
            .carried(&compact_proposal(&h, 1, 0, None, &shorter, p0))
            .is_err()
    );
    // Heights and rounds the engine would drop are stale, whoever signed them.
    for (height, round) in [(3, 0), (0, 0), (1, tendermint::MAX_ROUNDS_AHEAD + 1)] {
        let stale = compact_proposal(&h, height, round, None, &b, p0);
        assert_eq!(
            h.engine.carried(&stale),
            Ok(Carried::Stale),
            "{height} {round}"
        );
    }
}
