//! Tendermint: Buchman, Kwon and Milosevic, "The latest gossip on BFT consensus" (2018),
//! Algorithm 1, as a deterministic, sans-IO [`Engine`].
//!
//! # Protocol
//!
//! Each height runs rounds `0, 1, 2, ...` until a block is decided. A round has three steps.
//! `n` validators with total power `N`; a quorum is more than `2N/3` (written `2f+1`), and
//! `f+1` is more than `N/3`.
//!
//! ```text
//!              StartRound(r)                           OnTimeoutPrecommit / f+1 at r' > r
//!   +-----------------------------------------------------------------------------+
//!   v                                                                             |
//! PROPOSE ---- proposal v from proposer(h,r), valid, not locked elsewhere ---+    |
//!   |          (L22, L28)                       prevote id(v)                |    |
//!   | timeoutPropose (L57): prevote nil / invalid or locked elsewhere: nil   |    |
//!   v                                                                        v    |
//! PREVOTE ---- 2f+1 prevotes for id(v) (L36): lock v, precommit id(v) ---------+  |
//!   |          2f+1 prevotes nil (L44) or timeoutPrevote (L61): precommit nil  |  |
//!   v                                                                          v  |
//! PRECOMMIT -- 2f+1 precommits any (L47): start timeoutPrecommit ------------------+
//!   |
//!   +-- any step, any round r: proposal v + 2f+1 precommits for id(v) (L49): DECIDE v,
//!       height + 1, round 0 after timeout_commit
//! ```
//!
//! # Invariants
//!
//! - **Agreement.** If 2f+1 precommit `v` in round `r`, at least f+1 honest validators are
//!   locked on `v` from `r` on (L38), and they prevote only `v` unless shown 2f+1 prevotes
//!   for another value in a later round (L29), which cannot exist; so no other value
//!   gathers 2f+1 prevotes, hence precommits, in any later round.
//! - **No equivocation by this node, even across crashes.** Votes and proposals are signed
//!   through the [`Signer`], which persists before it releases a signature; the lock and
//!   valid value are emitted as [`Output::Persist`] before the precommit that depends on
//!   them.
//! - **Validity.** A block is prevoted or precommitted only once the host said it is valid
//!   (`valid(v)` of the paper is [`Output::ValidateBlock`] / [`Input::BlockValidated`]),
//!   and only decided when valid.
//! - **BFT time.** Precommits for a block carry `max(now, block time + 1)`, so the
//!   power-weighted median of a certificate (the next block's time) is later than the
//!   block: time is monotonic, and f faulty validators cannot move it outside the honest
//!   times.
//! - **Progress after GST.** Timeouts grow with the round (`base + round × delta`), f+1
//!   messages from a later round pull a validator forward (L55), every validator
//!   re-broadcasts its own current messages periodically (Algorithm 1 assumes gossip that
//!   eventually delivers; a proposal only until every validator prevoted in its round),
//!   and a validator that is seen behind is sent the committed blocks it misses
//!   ([`Output::SyncPeer`]; one height behind, only once a propose timeout has passed
//!   since this node decided that height).
//!
//! Evidence: two conflicting signed votes from one validator at one (height, round, kind)
//! give a [`DuplicateVote`], reported once as [`Output::Evidence`].

mod message;

use std::collections::{BTreeMap, BTreeSet};

use pyralog_ledger::codec::{CodecError, Decode, Decoder, Encode};
use pyralog_ledger::verify::{
    verify_block_contents, verify_certificate, verify_compact_block_contents,
};
use pyralog_ledger::{
    Block, Certificate, ChainId, ChainParams, CommitSig, DuplicateVote, EngineId, Hash, Header,
    ValidatorSet, Vote, VoteKind,
};

pub use message::{
    MAX_MESSAGE_BYTES, MESSAGE_VERSION, Message, Proposal, SignedVote, compact, expand,
};

use crate::engine::{Carried, Engine, Input, Output, Timeout};
use crate::proposer::ProposerRotation;
use crate::signer::{Signer, SignerError, SignerStore};

/// Messages more rounds ahead than this are dropped (bounds memory per height).
pub const MAX_ROUNDS_AHEAD: u32 = 64;
/// Messages for the next height kept until this node gets there.
const MAX_FUTURE_MESSAGES: usize = 4096;
/// Decisions of later heights kept while this node catches up.
const MAX_FUTURE_DECISIONS: u64 = 64;
/// Bytes of messages and decisions kept for later heights.
const MAX_FUTURE_BYTES: usize = 64 << 20;
/// Room for the header, certificate and framing around a block's transactions.
const PROPOSAL_OVERHEAD_BYTES: u64 = 256 << 10;
/// Distinct proposals kept per round (an equivocating proposer sends several).
const MAX_PROPOSALS_PER_ROUND: usize = 4;

/// Kinds of Tendermint timers ([`Timeout::kind`]).
pub mod timer {
    /// timeoutPropose (L21, L57).
    pub const PROPOSE: u8 = 1;
    /// timeoutPrevote (L35, L61).
    pub const PREVOTE: u8 = 2;
    /// timeoutPrecommit (L48, L65).
    pub const PRECOMMIT: u8 = 3;
    /// The pause after a decision before round 0 of the next height.
    pub const COMMIT: u8 = 4;
    /// Periodic re-broadcast of this validator's own current messages.
    pub const REBROADCAST: u8 = 5;
}

/// Where a validator's own vote is kept in its message log: by round and step (the
/// step numbers are those of the step's timer).
fn own_key(round: u32, kind: VoteKind) -> (u32, u8) {
    let step = if kind == VoteKind::Prevote {
        timer::PREVOTE
    } else {
        timer::PRECOMMIT
    };
    (round, step)
}

/// What a Tendermint engine needs to know about its chain.
#[derive(Clone, Debug)]
pub struct Config {
    /// The chain.
    pub chain_id: ChainId,
    /// The validator set (fixed for the chain's life in this version).
    pub validators: ValidatorSet,
    /// Timeouts and limits from genesis.
    pub params: ChainParams,
}

/// The step of the current round (`step_p`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RoundStep {
    /// Waiting for the proposal.
    Propose,
    /// Prevoted, waiting for prevotes.
    Prevote,
    /// Precommitted, waiting for precommits.
    Precommit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Validity {
    Pending,
    Valid,
    Invalid,
}

/// The votes of one kind in one round.
///
/// A validator's first vote counts towards the "any" total (L34, L47). A tally per block
/// also accepts a conflicting vote (evidence is reported) when it is for nil or for a
/// block this node knows: an equivocator may have shown another node a vote that
/// completed a polka there, and that node relays it. Counting it is safe: two tallies of
/// 2f+1 intersect in f+1 validators, one of them honest, who never votes twice. Votes for
/// unknown blocks beyond the first are dropped, which bounds memory (known blocks are
/// bounded per round); relays repeat them once the block is known. (CometBFT tracks such
/// votes per block for the same reason.)
#[derive(Default)]
struct VoteSet {
    first: BTreeMap<u32, Vote>,
    total: u64,
    by_block: BTreeMap<Option<Hash>, BTreeMap<u32, (Vote, pyralog_crypto::Signature)>>,
    power: BTreeMap<Option<Hash>, u64>,
}

impl VoteSet {
    fn power_for(&self, block: Option<Hash>) -> u64 {
        self.power.get(&block).copied().unwrap_or(0)
    }

    fn has(&self, validator: u32, block: Option<Hash>) -> bool {
        self.by_block
            .get(&block)
            .is_some_and(|t| t.contains_key(&validator))
    }

    /// Adds a verified vote; a second vote of the validator only if `known` (see above).
    fn add(
        &mut self,
        validator: u32,
        power: u64,
        vote: Vote,
        sig: pyralog_crypto::Signature,
        known: bool,
    ) {
        if self.has(validator, vote.block) {
            return;
        }
        match self.first.entry(validator) {
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(vote);
                self.total += power;
            }
            std::collections::btree_map::Entry::Occupied(_) if !known => return,
            std::collections::btree_map::Entry::Occupied(_) => {}
        }
        self.by_block
            .entry(vote.block)
            .or_default()
            .insert(validator, (vote, sig));
        *self.power.entry(vote.block).or_insert(0) += power;
    }

    fn tally(
        &self,
        block: Option<Hash>,
    ) -> impl Iterator<Item = (&u32, &(Vote, pyralog_crypto::Signature))> {
        self.by_block.get(&block).into_iter().flatten()
    }
}

/// The state persisted through [`Output::Persist`]: what a restart needs to stay safe
/// (the lock) and live (the valid value to re-propose, and this validator's own signed
/// messages of the last two rounds, which others may still need: the signer would refuse
/// to sign them again differently, and a lost precommit can stall a round).
#[derive(Clone, Debug, PartialEq, Eq)]
struct PersistedState {
    height: u64,
    round: u32,
    locked: Option<(u32, Hash)>,
    valid: Option<(u32, Block)>,
    own: Vec<Vec<u8>>,
}

/// Own messages kept in the persisted state (proposal, prevote, precommit of two rounds).
const MAX_PERSISTED_OWN: usize = 6;

impl Encode for PersistedState {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(1);
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&self.round.to_be_bytes());
        match &self.locked {
            None => out.push(0),
            Some((r, h)) => {
                out.push(1);
                out.extend_from_slice(&r.to_be_bytes());
                h.encode(out);
            }
        }
        match &self.valid {
            None => out.push(0),
            Some((r, b)) => {
                out.push(1);
                out.extend_from_slice(&r.to_be_bytes());
                b.encode(out);
            }
        }
        pyralog_ledger::codec::put_count(out, self.own.len());
        for m in &self.own {
            pyralog_ledger::codec::put_bytes(out, m);
        }
    }
}

impl Decode for PersistedState {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.version("tendermint state", 1)?;
        let height = d.u64("height")?;
        let round = d.u32("round")?;
        let locked = if d.bool("locked")? {
            Some((d.u32("locked round")?, d.hash("locked value")?))
        } else {
            None
        };
        let valid = if d.bool("valid")? {
            Some((d.u32("valid round")?, Block::decode(d)?))
        } else {
            None
        };
        let n = d.count("own messages", MAX_PERSISTED_OWN)?;
        let mut own = Vec::new();
        for _ in 0..n {
            own.push(d.bytes("own message", MAX_MESSAGE_BYTES)?.to_vec());
        }
        Ok(PersistedState {
            height,
            round,
            locked,
            valid,
            own,
        })
    }
}

/// The Tendermint engine of one node (a validator if its signer's key is in the set).
pub struct Tendermint<S: SignerStore> {
    cfg: Config,
    signer: Option<Signer<S>>,
    me: Option<u32>,
    quorum: u64,
    one_third: u64,
    running: bool,
    now: u64,
    out: Vec<Output>,

    // Algorithm 1 state (L2-L9).
    height: u64,
    round: u32,
    step: RoundStep,
    /// Whether StartRound has run at this height (false during the commit pause).
    started: bool,
    locked: Option<(u32, Hash)>,
    valid: Option<(u32, Hash)>,

    // The message log of the current height.
    blocks: BTreeMap<Hash, Block>,
    validity: BTreeMap<Hash, Validity>,
    proposals: BTreeMap<u32, Vec<(Hash, Option<u32>)>>,
    votes: BTreeMap<(u32, VoteKind), VoteSet>,
    /// The highest round of this height each validator sent a verified message for.
    highest: BTreeMap<u32, u32>,
    fired: BTreeSet<(u32, u8)>,
    evidence_seen: BTreeSet<(u32, u32, VoteKind)>,
    decision: Option<(Hash, Certificate)>,
    own: BTreeMap<(u32, u8), Vec<u8>>,
    awaiting_proposal: Option<u32>,

    rotation: ProposerRotation,
    proposers: BTreeMap<u32, u32>,
    future: Vec<Vec<u8>>,
    future_decisions: BTreeMap<u64, Vec<u8>>,
    synced: BTreeMap<u32, u64>,
    future_bytes: usize,
    /// When this node reached its current height (its last decision, or its start).
    height_since: u64,
}

impl<S: SignerStore> Tendermint<S> {
    /// An engine for `cfg`, signing through `signer` (`None`: a non-voting follower).
    /// Nothing happens until [`Input::Start`].
    pub fn new(cfg: Config, signer: Option<Signer<S>>) -> Tendermint<S> {
        let me = signer
            .as_ref()
            .and_then(|s| cfg.validators.index_of(&s.public_key()))
            .map(|i| i as u32);
        Tendermint {
            quorum: cfg.validators.quorum_power(EngineId::Tendermint),
            one_third: cfg.validators.one_third_plus(),
            rotation: ProposerRotation::new(&cfg.validators),
            cfg,
            signer,
            me,
            running: false,
            now: 0,
            out: Vec::new(),
            height: 0,
            round: 0,
            step: RoundStep::Propose,
            started: false,
            locked: None,
            valid: None,
            blocks: BTreeMap::new(),
            validity: BTreeMap::new(),
            proposals: BTreeMap::new(),
            votes: BTreeMap::new(),
            highest: BTreeMap::new(),
            fired: BTreeSet::new(),
            evidence_seen: BTreeSet::new(),
            decision: None,
            own: BTreeMap::new(),
            awaiting_proposal: None,
            proposers: BTreeMap::new(),
            future: Vec::new(),
            future_decisions: BTreeMap::new(),
            synced: BTreeMap::new(),
            future_bytes: 0,
            height_since: 0,
        }
    }

    /// The current step.
    pub fn step(&self) -> RoundStep {
        self.step
    }

    /// The locked round and value (`lockedRound_p`, `lockedValue_p`).
    pub fn locked(&self) -> Option<(u32, Hash)> {
        self.locked
    }

    /// The valid round and value (`validRound_p`, `validValue_p`).
    pub fn valid(&self) -> Option<(u32, Hash)> {
        self.valid
    }

    /// This node's index in the validator set, if it is a validator.
    pub fn index(&self) -> Option<u32> {
        self.me
    }

    /// The signer (e.g. to inspect its store).
    pub fn signer(&self) -> Option<&Signer<S>> {
        self.signer.as_ref()
    }

    /// The public key of the validator with this index, if there is one.
    fn validator_key(&self, index: u32) -> Option<pyralog_crypto::PublicKey> {
        self.cfg
            .validators
            .get(index as usize)
            .map(|v| v.public_key)
    }

    /// `proposer(h_p, round)` (weighted rotation, see [`crate::proposer`]).
    pub fn proposer(&mut self, round: u32) -> u32 {
        if let Some(p) = self.proposers.get(&round) {
            return *p;
        }
        let p = self.rotation.proposer_at_round(round);
        self.proposers.insert(round, p);
        p
    }

    fn timeout_ms(&self, base: u64, round: u32) -> u64 {
        base.saturating_add(
            self.cfg
                .params
                .timeout_delta_ms
                .saturating_mul(round.into()),
        )
    }

    fn schedule(&mut self, kind: u8, round: u32, after_ms: u64) {
        self.out.push(Output::ScheduleTimeout {
            timeout: Timeout {
                height: self.height,
                round,
                kind,
            },
            after_ms,
        });
    }

    fn reject(&mut self, reason: String) {
        self.out.push(Output::Rejected { reason });
    }

    // ----- heights and rounds -------------------------------------------------------

    /// Clears the message log and the per-height state (L53) for `height`.
    fn reset_height(&mut self, height: u64) {
        if height == self.height + 1 && self.running {
            self.rotation.advance();
        } else {
            self.rotation = ProposerRotation::at_height(&self.cfg.validators, height);
        }
        self.height = height;
        self.height_since = self.now;
        self.round = 0;
        self.step = RoundStep::Propose;
        self.started = false;
        self.locked = None;
        self.valid = None;
        self.blocks.clear();
        self.validity.clear();
        self.proposals.clear();
        self.votes.clear();
        self.highest.clear();
        self.fired.clear();
        self.evidence_seen.clear();
        self.decision = None;
        self.own.clear();
        self.awaiting_proposal = None;
        self.proposers.clear();
    }

    fn on_start(&mut self, height: u64, persisted: Option<Vec<u8>>) {
        let height = height.max(1);
        self.reset_height(height);
        self.running = true;
        self.future.clear();
        self.future_decisions.clear();
        self.future_bytes = 0;
        if let Some(signer) = &mut self.signer {
            signer.note_committed(height - 1);
        }
        let restored = persisted.and_then(|bytes| match PersistedState::from_bytes(&bytes) {
            Ok(s) if s.height == height => Some(s),
            Ok(_) => None,
            Err(e) => {
                self.reject(format!(
                    "persisted engine state unreadable, starting fresh: {e}"
                ));
                None
            }
        });
        let mut round = 0;
        if let Some(s) = restored {
            round = s.round;
            self.round = round;
            self.locked = s.locked;
            if let Some((vr, block)) = s.valid {
                let hash = block.header.hash();
                self.blocks.insert(hash, block);
                self.validity.insert(hash, Validity::Valid);
                self.valid = Some((vr, hash));
            }
            for bytes in s.own {
                self.restore_own(bytes);
            }
        }
        self.schedule(timer::REBROADCAST, 0, self.cfg.params.timeout_propose_ms);
        self.start_round(round);
        // Resume where this validator was: what it signed in this round is already out
        // (or will be re-sent now), and the signer would refuse to sign it differently.
        if self.own.contains_key(&(round, timer::PRECOMMIT)) {
            self.step = RoundStep::Precommit;
        } else if self.own.contains_key(&(round, timer::PREVOTE)) {
            self.step = RoundStep::Prevote;
        }
        let mine: Vec<Vec<u8>> = self.own.values().cloned().collect();
        self.out.extend(mine.into_iter().map(Output::Broadcast));
    }

    /// Re-enters one of this validator's own persisted messages into the message log.
    fn restore_own(&mut self, bytes: Vec<u8>) {
        let Some(me) = self.me else { return };
        match Message::decode_limited(&bytes) {
            Ok(Message::Vote(sv)) if sv.validator == me && sv.vote.height == self.height => {
                self.own.insert(own_key(sv.vote.round, sv.vote.kind), bytes);
                self.add_vote(sv);
            }
            Ok(Message::Proposal { proposal, .. }) if proposal.height == self.height => {
                self.own.insert((proposal.round, timer::PROPOSE), bytes);
                self.record_proposal(me, proposal, Validity::Valid);
            }
            _ => {}
        }
    }

    /// L11-L21: StartRound(round).
    fn start_round(&mut self, round: u32) {
        self.round = round; // L12
        self.step = RoundStep::Propose; // L13
        self.started = true;
        self.persist();
        let proposer = self.proposer(round);
        if Some(proposer) == self.me {
            // L14
            if let Some(sent) = self.own.get(&(round, timer::PROPOSE)).cloned() {
                // Restarted after proposing in this round: the same proposal again.
                self.out.push(Output::Broadcast(sent));
            } else if let Some((vr, hash)) = self.valid {
                // L15-L16, L19: re-propose the valid value with its round.
                if let Some(block) = self.blocks.get(&hash).cloned() {
                    self.propose(block, Some(vr));
                    let polka = self.polka_messages(vr, hash);
                    self.out.extend(polka.into_iter().map(Output::Broadcast));
                }
            } else {
                // L18: getValue(), answered by Input::ProposalReady.
                self.awaiting_proposal = Some(round);
                self.out.push(Output::RequestProposal {
                    height: self.height,
                    round,
                });
            }
        }
        // L21. The proposer schedules it too: if its host never delivers a block, it
        // prevotes nil like everyone else instead of stalling its round.
        let after = self.timeout_ms(self.cfg.params.timeout_propose_ms, round);
        self.schedule(timer::PROPOSE, round, after);
    }

    /// L19: broadcast ⟨PROPOSAL, h_p, round_p, proposal, validRound_p⟩.
    fn propose(&mut self, block: Block, valid_round: Option<u32>) {
        let Some(me) = self.me else { return };
        let proposal = Proposal {
            height: self.height,
            round: self.round,
            valid_round,
            block,
        };
        let hash = proposal.block.header.hash();
        let Some(signer) = self.signer.as_mut() else {
            return;
        };
        let signature =
            match signer.sign_proposal(self.height, self.round, hash, &proposal.signing_bytes()) {
                Ok(s) => s,
                Err(e) => {
                    self.out.push(Output::SignerRefused(e));
                    return;
                }
            };
        let round = self.round;
        let message = Message::Proposal {
            proposal,
            signature,
        };
        let bytes = message.to_bytes();
        self.own.insert((round, timer::PROPOSE), bytes.clone());
        self.persist();
        self.out.push(Output::Broadcast(bytes));
        if let Message::Proposal { proposal, .. } = message {
            self.record_proposal(me, proposal, Validity::Valid);
        }
    }

    fn record_proposal(&mut self, proposer: u32, proposal: Proposal, validity: Validity) {
        let hash = proposal.block.header.hash();
        self.proposals
            .entry(proposal.round)
            .or_default()
            .push((hash, proposal.valid_round));
        self.note_round(proposer, proposal.round);
        self.blocks.entry(hash).or_insert(proposal.block);
        self.request_validation(hash, validity);
    }

    fn request_validation(&mut self, hash: Hash, known: Validity) {
        if self.validity.contains_key(&hash) {
            return;
        }
        self.validity.insert(hash, known);
        if known == Validity::Pending
            && let Some(block) = self.blocks.get(&hash)
        {
            self.out
                .push(Output::ValidateBlock(Box::new(block.clone())));
        }
    }

    fn is_valid(&self, hash: &Hash) -> Option<bool> {
        match self.validity.get(hash) {
            Some(Validity::Valid) => Some(true),
            Some(Validity::Invalid) => Some(false),
            Some(Validity::Pending) | None => None,
        }
    }

    fn persist(&mut self) {
        let state = PersistedState {
            height: self.height,
            round: self.round,
            locked: self.locked,
            valid: self
                .valid
                .and_then(|(r, h)| self.blocks.get(&h).map(|b| (r, b.clone()))),
            own: self
                .own
                .range((self.round.saturating_sub(1), 0)..)
                .map(|(_, b)| b.clone())
                .take(MAX_PERSISTED_OWN)
                .collect(),
        };
        self.out.push(Output::Persist(state.to_bytes()));
    }

    /// Signs and broadcasts a prevote or precommit for `block` in the current round.
    fn vote(&mut self, kind: VoteKind, block: Option<Hash>) {
        let (Some(me), Some(signer)) = (self.me, self.signer.as_mut()) else {
            return;
        };
        // BFT time: a precommit for a block is later than the block, so the certificate's
        // median (the next block's time) is too.
        let time_ms = match (kind, block.and_then(|h| self.blocks.get(&h))) {
            (VoteKind::Precommit, Some(b)) => self.now.max(b.header.time_ms.saturating_add(1)),
            _ => self.now,
        };
        let mut vote = Vote {
            kind,
            height: self.height,
            round: self.round,
            block,
            time_ms,
        };
        let signature = match signer.sign_vote(&vote) {
            Ok(s) => s,
            Err(e) => match signer.last_vote() {
                // This validator signed another vote here and crashed before its state
                // kept it (or it was sent): that vote is its vote, so send it. Refusing
                // to vote at all would leave the round one honest vote short for good.
                Some((signed, s))
                    if matches!(e, SignerError::Equivocation { .. })
                        && (signed.height, signed.round, signed.kind)
                            == (vote.height, vote.round, kind) =>
                {
                    // A precommit for a block came with a lock on it and the valid
                    // value (L38-L43), lost in the same crash: take them again. No lock
                    // is from a later round than this one.
                    if let (VoteKind::Precommit, Some(hash)) = (kind, signed.block) {
                        self.locked = Some((self.round, hash));
                        if self.blocks.contains_key(&hash) {
                            self.valid = Some((self.round, hash));
                        }
                    }
                    vote = signed;
                    s
                }
                _ => {
                    self.out.push(Output::SignerRefused(e));
                    return;
                }
            },
        };
        let signed = SignedVote {
            validator: me,
            vote,
            signature,
        };
        let bytes = Message::Vote(signed).to_bytes();
        self.own.insert(own_key(self.round, kind), bytes.clone());
        self.persist();
        self.out.push(Output::Broadcast(bytes));
        self.add_vote(signed);
    }

    fn add_vote(&mut self, sv: SignedVote) {
        let power = self
            .cfg
            .validators
            .get(sv.validator as usize)
            .map_or(0, |v| v.power);
        let known = sv.vote.block.is_none_or(|h| self.blocks.contains_key(&h));
        self.votes
            .entry((sv.vote.round, sv.vote.kind))
            .or_default()
            .add(sv.validator, power, sv.vote, sv.signature, known);
        self.note_round(sv.validator, sv.vote.round);
    }

    fn note_round(&mut self, validator: u32, round: u32) {
        let r = self.highest.entry(validator).or_insert(round);
        *r = (*r).max(round);
    }

    /// The signed prevotes that make the polka for `block` in `round`, as messages to
    /// relay (Algorithm 1 assumes gossip; a validator that saw a polka helps the others
    /// see it, so they accept a re-proposal with this valid round, L28).
    fn polka_messages(&self, round: u32, block: Hash) -> Vec<Vec<u8>> {
        self.prevotes(round)
            .into_iter()
            .flat_map(|set| set.tally(Some(block)))
            .map(|(i, (vote, signature))| {
                Message::Vote(SignedVote {
                    validator: *i,
                    vote: *vote,
                    signature: *signature,
                })
                .to_bytes()
            })
            .collect()
    }

    fn prevotes(&self, round: u32) -> Option<&VoteSet> {
        self.votes.get(&(round, VoteKind::Prevote))
    }

    fn precommits(&self, round: u32) -> Option<&VoteSet> {
        self.votes.get(&(round, VoteKind::Precommit))
    }

    /// L49-L54: decide `hash` with `certificate`, move to the next height.
    /// Returns false (and changes nothing) if the block is not known.
    fn decide(&mut self, hash: Hash, certificate: Certificate) -> bool {
        let Some(block) = self.blocks.remove(&hash) else {
            return false;
        };
        let decided = self.height;
        self.out.push(Output::Commit {
            block: Box::new(block),
            certificate,
        });
        if let Some(signer) = &mut self.signer {
            signer.note_committed(decided);
        }
        // L52-L53: next height, reset; L54 StartRound(0) after the commit pause.
        self.reset_height(decided + 1);
        self.persist();
        self.schedule(timer::COMMIT, 0, self.cfg.params.timeout_commit_ms);
        self.schedule(timer::REBROADCAST, 0, self.cfg.params.timeout_propose_ms);
        for bytes in std::mem::take(&mut self.future) {
            self.on_message(bytes);
        }
        if let Some(bytes) = self.future_decisions.remove(&self.height) {
            self.on_message(bytes);
        }
        let stale: Vec<u64> = self
            .future_decisions
            .range(..self.height)
            .map(|(h, _)| *h)
            .collect();
        for h in stale {
            self.future_decisions.remove(&h);
        }
        self.future_bytes = self.future.iter().map(Vec::len).sum::<usize>()
            + self.future_decisions.values().map(Vec::len).sum::<usize>();
        true
    }

    // ----- incoming messages ------------------------------------------------------

    fn on_message(&mut self, bytes: Vec<u8>) {
        let message = match Message::decode_limited(&bytes) {
            Ok(m) => m,
            Err(e) => return self.reject(format!("undecodable consensus message: {e}")),
        };
        match message {
            Message::Vote(sv) => self.on_vote(sv, bytes),
            Message::Proposal {
                proposal,
                signature,
            } => self.on_proposal(proposal, signature, bytes),
            Message::Decision { block, certificate } => self.on_decision(block, certificate, bytes),
        }
    }

    fn buffer_future(&mut self, height: u64, bytes: Vec<u8>) {
        if height == self.height + 1
            && self.future.len() < MAX_FUTURE_MESSAGES
            && self.future_bytes + bytes.len() <= MAX_FUTURE_BYTES
        {
            self.future_bytes += bytes.len();
            self.future.push(bytes);
        }
    }

    fn on_vote(&mut self, sv: SignedVote, bytes: Vec<u8>) {
        let v = sv.vote;
        if !matches!(v.kind, VoteKind::Prevote | VoteKind::Precommit) {
            return self.reject(format!("{:?} is not a Tendermint vote", v.kind));
        }
        let Some(key) = self.validator_key(sv.validator) else {
            return self.reject(format!(
                "vote from unknown validator index {}",
                sv.validator
            ));
        };
        if v.height < self.height {
            // The sender is behind: once its signature checks, send it what it misses.
            // Unless it is one height behind and this node decided only just now: then it
            // is most likely finishing that height on the same votes (this is the vote
            // that came after the quorum), and sending it the decided block would cost
            // every peer a copy of it. If it is stuck, it re-broadcasts its votes, and
            // one of them comes after this grace.
            let settling = v.height + 1 == self.height
                && self.now.saturating_sub(self.height_since) < self.cfg.params.timeout_propose_ms;
            if !settling
                && self.sync_due(sv.validator)
                && v.verify(&key, &self.cfg.chain_id, &sv.signature).is_ok()
            {
                self.sync(sv.validator, v.height);
            }
            return;
        }
        if v.height > self.height {
            return self.buffer_future(v.height, bytes);
        }
        if v.round > self.round.saturating_add(MAX_ROUNDS_AHEAD) {
            // Too far ahead to keep, but it still tells us where that validator is (L55).
            if self.highest.get(&sv.validator).is_none_or(|r| *r < v.round)
                && v.verify(&key, &self.cfg.chain_id, &sv.signature).is_ok()
            {
                self.note_round(sv.validator, v.round);
            }
            return;
        }
        let (first, already) = self
            .votes
            .get(&(v.round, v.kind))
            .map_or((None, false), |set| {
                (
                    set.first.get(&sv.validator).copied(),
                    set.has(sv.validator, v.block),
                )
            });
        if already {
            return; // a duplicate (or the same vote re-signed after a restart)
        }
        let known = v.block.is_none_or(|h| self.blocks.contains_key(&h));
        if first.is_some()
            && !known
            && self
                .evidence_seen
                .contains(&(sv.validator, v.round, v.kind))
        {
            return; // a further conflicting vote for an unknown block: nothing to learn
        }
        if v.verify(&key, &self.cfg.chain_id, &sv.signature).is_err() {
            return self.reject(format!("bad vote signature from validator {key}"));
        }
        if let Some(old) = first
            && self.evidence_seen.insert((sv.validator, v.round, v.kind))
        {
            let old_sig = self
                .votes
                .get(&(v.round, v.kind))
                .and_then(|set| set.tally(old.block).find(|(i, _)| **i == sv.validator))
                .map(|(_, (_, sig))| *sig);
            if let Some(ev) = old_sig.and_then(|old_sig| {
                DuplicateVote::new(
                    self.cfg.chain_id.clone(),
                    key,
                    (old, old_sig),
                    (v, sv.signature),
                )
            }) {
                self.out.push(Output::Evidence(Box::new(ev)));
            }
        }
        self.add_vote(sv);
    }

    fn on_proposal(&mut self, p: Proposal, signature: pyralog_crypto::Signature, bytes: Vec<u8>) {
        if p.height < self.height {
            return;
        }
        if p.height > self.height {
            return self.buffer_future(p.height, bytes);
        }
        if p.round > self.round.saturating_add(MAX_ROUNDS_AHEAD) {
            return;
        }
        let limit = u64::from(self.cfg.params.max_block_bytes) + PROPOSAL_OVERHEAD_BYTES;
        if bytes.len() as u64 > limit {
            return self.reject(format!(
                "proposal of {} bytes, over the chain's block limit",
                bytes.len()
            ));
        }
        if p.valid_round.is_some_and(|vr| vr >= p.round) {
            return self.reject(format!(
                "proposal for round {} names valid round {:?}",
                p.round, p.valid_round
            ));
        }
        let hash = p.block.header.hash();
        let known = self.proposals.get(&p.round).map_or(&[][..], Vec::as_slice);
        if known.iter().any(|(h, _)| *h == hash) || known.len() >= MAX_PROPOSALS_PER_ROUND {
            return;
        }
        let proposer = self.proposer(p.round);
        let Some(key) = self.validator_key(proposer) else {
            return;
        };
        if p.verify(&key, &self.cfg.chain_id, &signature).is_err() {
            return self.reject(format!(
                "proposal for round {} not signed by its proposer {key}",
                p.round
            ));
        }
        if let Err(e) = self.check_block_shape(&p.block, self.height) {
            return self.reject(format!("proposal from {key}: {e}"));
        }
        self.record_proposal(proposer, p, Validity::Pending);
    }

    fn check_block_shape(&self, block: &Block, height: u64) -> Result<(), String> {
        self.check_header_shape(&block.header, block.txs.len(), height)?;
        verify_block_contents(block).map_err(|e| format!("body does not match header: {e}"))
    }

    /// [`Self::check_block_shape`] but the body: chain, height, engine, and the
    /// transaction count against the chain's limit.
    fn check_header_shape(&self, h: &Header, txs: usize, height: u64) -> Result<(), String> {
        if h.chain_id != self.cfg.chain_id {
            return Err(format!("block of chain {}", h.chain_id));
        }
        if h.height != height {
            return Err(format!(
                "block at height {} where {height} is expected",
                h.height
            ));
        }
        if txs > self.cfg.params.max_block_txs as usize {
            return Err(format!(
                "{txs} transactions, over the chain's {} per block",
                self.cfg.params.max_block_txs
            ));
        }
        if h.engine != EngineId::Tendermint {
            return Err(format!("block of engine {:?}", h.engine));
        }
        Ok(())
    }

    fn on_decision(&mut self, block: Block, certificate: Certificate, bytes: Vec<u8>) {
        let height = block.header.height;
        if height < self.height
            || (height == self.height && self.decision.is_some())
            || height > self.height + MAX_FUTURE_DECISIONS
            || self.future_decisions.contains_key(&height)
        {
            return;
        }
        if let Err(e) = self.check_block_shape(&block, height) {
            return self.reject(format!("decision: {e}"));
        }
        // The light-client check: a quorum of this set certified this header.
        if let Err(e) = verify_certificate(
            EngineId::Tendermint,
            &self.cfg.validators,
            &block.header,
            &certificate,
        ) {
            return self.reject(format!("decision certificate: {e}"));
        }
        if height > self.height {
            // Certified, so it is the decision of that height: keep it for later.
            if self.future_bytes + bytes.len() <= MAX_FUTURE_BYTES {
                self.future_bytes += bytes.len();
                self.future_decisions.insert(height, bytes);
            }
            return;
        }
        let hash = block.header.hash();
        self.blocks.entry(hash).or_insert(block);
        self.decision = Some((hash, certificate));
        self.request_validation(hash, Validity::Pending);
    }

    /// At most one sync per validator per `timeout_propose_ms`, whatever height its
    /// (possibly replayed) message names.
    fn sync_due(&self, validator: u32) -> bool {
        Some(validator) != self.me
            && self
                .synced
                .get(&validator)
                .is_none_or(|at| self.now.saturating_sub(*at) >= self.cfg.params.timeout_propose_ms)
    }

    fn sync(&mut self, validator: u32, height: u64) {
        self.synced.insert(validator, self.now);
        self.out.push(Output::SyncPeer {
            to: validator,
            height,
        });
    }

    // ----- timeouts and host answers ------------------------------------------------

    fn on_timeout(&mut self, t: Timeout) {
        if t.height != self.height {
            return;
        }
        match t.kind {
            timer::REBROADCAST => {
                // Own messages of this round and the one before; a proposal only while
                // some validator has not prevoted in its round. Once all have, it can
                // change no prevote, and a validator that still lacks its block gets it
                // with the decision; re-sending a large block every period to peers
                // that have it is most of the traffic of a loaded network.
                let from = self.round.saturating_sub(1);
                let everyone = self.cfg.validators.total_power();
                let mut mine: Vec<Vec<u8>> = self
                    .own
                    .range((from, 0)..)
                    .filter(|((round, step), _)| {
                        *step != timer::PROPOSE
                            || self.prevotes(*round).is_none_or(|s| s.total < everyone)
                    })
                    .map(|(_, b)| b.clone())
                    .collect();
                // Relay the polkas others need for L28: the one behind our valid value,
                // and the one the current proposal claims.
                let mut polkas: BTreeSet<(u32, Hash)> = self.valid.into_iter().collect();
                if let Some(&(hash, Some(vr))) =
                    self.proposals.get(&self.round).and_then(|p| p.first())
                {
                    polkas.insert((vr, hash));
                }
                for (vr, hash) in polkas {
                    mine.extend(self.polka_messages(vr, hash));
                }
                self.out.extend(mine.into_iter().map(Output::Broadcast));
                self.schedule(timer::REBROADCAST, 0, self.cfg.params.timeout_propose_ms);
            }
            timer::COMMIT if !self.started => self.start_round(0), // L54
            // L57-L60: OnTimeoutPropose.
            timer::PROPOSE
                if t.round == self.round && self.started && self.step == RoundStep::Propose =>
            {
                self.vote(VoteKind::Prevote, None);
                self.step = RoundStep::Prevote;
            }
            // L61-L64: OnTimeoutPrevote.
            timer::PREVOTE if t.round == self.round && self.step == RoundStep::Prevote => {
                self.vote(VoteKind::Precommit, None);
                self.step = RoundStep::Precommit;
            }
            // L65-L67: OnTimeoutPrecommit.
            timer::PRECOMMIT if t.round == self.round && self.started => {
                self.start_round(self.round + 1);
            }
            _ => {}
        }
    }

    fn on_proposal_ready(&mut self, height: u64, round: u32, block: Block) {
        if height != self.height
            || round != self.round
            || self.awaiting_proposal != Some(round)
            || self.step != RoundStep::Propose
        {
            return; // the round moved on while the host built the block
        }
        self.awaiting_proposal = None;
        if let Err(e) = self.check_block_shape(&block, self.height) {
            return self.reject(format!("host built a bad proposal: {e}"));
        }
        self.propose(block, None); // L19 with validRound_p = −1
    }

    fn on_validated(&mut self, height: u64, hash: Hash, valid: bool) {
        if height == self.height && self.validity.get(&hash) == Some(&Validity::Pending) {
            let v = if valid {
                Validity::Valid
            } else {
                Validity::Invalid
            };
            self.validity.insert(hash, v);
        }
    }

    // ----- the upon rules ------------------------------------------------------------

    /// Applies the rules of Algorithm 1 until none fires.
    fn check_rules(&mut self) {
        if !self.running {
            return;
        }
        loop {
            if self.rule_decide() {
                continue;
            }
            if !self.started {
                return;
            }
            let fired = self.rule_round_skip()
                || self.rule_prevote_on_proposal()
                || self.rule_prevote_quorum_any()
                || self.rule_polka()
                || self.rule_polka_nil()
                || self.rule_precommit_quorum_any();
            if !fired {
                return;
            }
        }
    }

    /// L49-L54: ⟨PROPOSAL, h_p, r, v, ∗⟩ AND 2f+1 ⟨PRECOMMIT, h_p, r, id(v)⟩ while
    /// decision_p[h_p] = nil, if valid(v): decide. Any round `r`. The proposal is looked up
    /// by id(v) among every block seen at this height (the header hash binds the whole
    /// block), which is equivalent and helps a node that got v in another round's message.
    /// Also decides on a verified [`Message::Decision`] from a validator ahead of us.
    fn rule_decide(&mut self) -> bool {
        if let Some((hash, cert)) = &self.decision
            && self.is_valid(hash) == Some(true)
        {
            let (hash, cert) = (*hash, cert.clone());
            return self.decide(hash, cert);
        }
        let mut found = None;
        for ((round, kind), set) in &self.votes {
            if *kind != VoteKind::Precommit || set.total < self.quorum {
                continue;
            }
            for (block, power) in &set.power {
                if let Some(hash) = block
                    && *power >= self.quorum
                    && self.is_valid(hash) == Some(true)
                {
                    found = Some((*round, *hash));
                }
            }
        }
        let Some((round, hash)) = found else {
            return false;
        };
        let Some(set) = self.precommits(round) else {
            return false;
        };
        let certificate = Certificate {
            height: self.height,
            round,
            header_hash: hash,
            votes: set
                .tally(Some(hash))
                .map(|(i, (v, s))| CommitSig {
                    validator: *i,
                    time_ms: v.time_ms,
                    signature: *s,
                })
                .collect(),
        };
        self.decide(hash, certificate)
    }

    /// L55-L56: f+1 ⟨∗, h_p, round, ∗, ∗⟩ with round > round_p: StartRound(round).
    ///
    /// Counted as "validators holding f+1 power have sent verified messages at rounds ≥
    /// R" (their highest round each), jumping to the largest such R: at least one honest
    /// validator is at R or beyond, which is what the rule relies on. This also covers
    /// validators more than [`MAX_ROUNDS_AHEAD`] rounds ahead, whose messages are not
    /// kept, so a validator that fell far behind still catches up.
    fn rule_round_skip(&mut self) -> bool {
        let mut ahead: Vec<(u32, u64)> = self
            .highest
            .iter()
            .filter(|(_, r)| **r > self.round)
            .filter_map(|(i, r)| Some((*r, self.cfg.validators.get(*i as usize)?.power)))
            .collect();
        ahead.sort_unstable_by_key(|(round, _)| std::cmp::Reverse(*round));
        let mut power = 0u64;
        for (round, p) in ahead {
            power += p;
            if power >= self.one_third {
                self.start_round(round);
                return true;
            }
        }
        false
    }

    /// L22-L27 (vr = −1) and L28-L33 (vr ≥ 0), on the first proposal of the round.
    fn rule_prevote_on_proposal(&mut self) -> bool {
        if self.step != RoundStep::Propose {
            return false;
        }
        let Some(&(hash, vr)) = self.proposals.get(&self.round).and_then(|p| p.first()) else {
            return false;
        };
        let Some(valid) = self.is_valid(&hash) else {
            return false; // valid(v) not known yet
        };
        let vote_for = match vr {
            // L22-L23: valid(v) ∧ (lockedRound_p = −1 ∨ lockedValue_p = v).
            None => valid && self.locked.is_none_or(|(_, l)| l == hash),
            // L28: AND 2f+1 ⟨PREVOTE, h_p, vr, id(v)⟩ with vr < round_p.
            Some(vr) => {
                let polka = self
                    .prevotes(vr)
                    .is_some_and(|s| s.power_for(Some(hash)) >= self.quorum);
                if !polka {
                    return false;
                }
                // L29: valid(v) ∧ (lockedRound_p ≤ vr ∨ lockedValue_p = v).
                valid && self.locked.is_none_or(|(lr, l)| lr <= vr || l == hash)
            }
        };
        // L24 / L30: prevote id(v); L26 / L32: prevote nil.
        self.vote(VoteKind::Prevote, vote_for.then_some(hash));
        self.step = RoundStep::Prevote; // L27 / L33
        true
    }

    /// L34-L35: 2f+1 ⟨PREVOTE, h_p, round_p, ∗⟩ while step_p = prevote, first time:
    /// schedule OnTimeoutPrevote.
    fn rule_prevote_quorum_any(&mut self) -> bool {
        let round = self.round;
        if self.step != RoundStep::Prevote
            || self.prevotes(round).is_none_or(|s| s.total < self.quorum)
            || !self.fired.insert((round, 34))
        {
            return false;
        }
        let after = self.timeout_ms(self.cfg.params.timeout_prevote_ms, round);
        self.schedule(timer::PREVOTE, round, after);
        true
    }

    /// L36-L43: ⟨PROPOSAL, h_p, round_p, v, ∗⟩ AND 2f+1 ⟨PREVOTE, h_p, round_p, id(v)⟩
    /// while valid(v) ∧ step_p ≥ prevote, first time.
    fn rule_polka(&mut self) -> bool {
        let round = self.round;
        if self.step < RoundStep::Prevote || self.fired.contains(&(round, 36)) {
            return false;
        }
        let Some(set) = self.prevotes(round) else {
            return false;
        };
        let proposed = self.proposals.get(&round).map_or(&[][..], Vec::as_slice);
        let Some(hash) = proposed
            .iter()
            .map(|(h, _)| *h)
            .find(|h| set.power_for(Some(*h)) >= self.quorum && self.is_valid(h) == Some(true))
        else {
            return false;
        };
        self.fired.insert((round, 36));
        let precommit = self.step == RoundStep::Prevote; // L37
        if precommit {
            self.locked = Some((round, hash)); // L38-L39
        }
        self.valid = Some((round, hash)); // L42-L43
        if precommit {
            // vote() persists the lock with the signed precommit before broadcasting it.
            self.vote(VoteKind::Precommit, Some(hash)); // L40
            self.step = RoundStep::Precommit; // L41
        } else {
            self.persist();
        }
        true
    }

    /// L44-L46: 2f+1 ⟨PREVOTE, h_p, round_p, nil⟩ while step_p = prevote: precommit nil.
    fn rule_polka_nil(&mut self) -> bool {
        if self.step != RoundStep::Prevote
            || self
                .prevotes(self.round)
                .is_none_or(|s| s.power_for(None) < self.quorum)
        {
            return false;
        }
        self.vote(VoteKind::Precommit, None);
        self.step = RoundStep::Precommit;
        true
    }

    /// L47-L48: 2f+1 ⟨PRECOMMIT, h_p, round_p, ∗⟩ for the first time: schedule
    /// OnTimeoutPrecommit.
    fn rule_precommit_quorum_any(&mut self) -> bool {
        let round = self.round;
        if self.precommits(round).is_none_or(|s| s.total < self.quorum)
            || !self.fired.insert((round, 47))
        {
            return false;
        }
        let after = self.timeout_ms(self.cfg.params.timeout_precommit_ms, round);
        self.schedule(timer::PRECOMMIT, round, after);
        true
    }
}

impl<S: SignerStore> Engine for Tendermint<S> {
    fn handle(&mut self, now_ms: u64, input: Input) -> Vec<Output> {
        self.now = now_ms;
        match input {
            Input::Start { height, persisted } => self.on_start(height, persisted),
            _ if !self.running => {}
            Input::Message(bytes) => self.on_message(bytes),
            Input::Timeout(t) => self.on_timeout(t),
            Input::ProposalReady {
                height,
                round,
                block,
            } => self.on_proposal_ready(height, round, *block),
            Input::BlockValidated {
                height,
                block,
                valid,
            } => self.on_validated(height, block, valid),
        }
        self.check_rules();
        std::mem::take(&mut self.out)
    }

    fn height(&self) -> u64 {
        self.height
    }

    fn round(&self) -> u32 {
        self.round
    }

    fn decision_message(&self, block: &Block, certificate: &Certificate) -> Vec<u8> {
        Message::Decision {
            block: block.clone(),
            certificate: certificate.clone(),
        }
        .to_bytes()
    }

    fn compact_message(&self, message: &[u8]) -> Option<(Vec<u8>, Block)> {
        message::compact(message)
    }

    /// A compact proposal for this height or the next, in a round this engine would take,
    /// signed by its round's proposer: its block. The signature is checked before the
    /// host fetches anything for it (and again on the expanded proposal).
    fn carried(&self, wire: &[u8]) -> Result<Carried, CodecError> {
        let Some(p) = message::decode_compact(wire)? else {
            return Ok(Carried::Message);
        };
        let rotation = if p.height == self.height {
            self.rotation.clone()
        } else if p.height == self.height + 1 {
            let mut next = self.rotation.clone();
            next.advance();
            next
        } else {
            return Ok(Carried::Stale);
        };
        let round_limit = if p.height == self.height {
            self.round.saturating_add(MAX_ROUNDS_AHEAD)
        } else {
            MAX_ROUNDS_AHEAD
        };
        if p.round > round_limit {
            return Ok(Carried::Stale);
        }
        let invalid = |reason: String| CodecError::Invalid {
            what: "compact proposal",
            reason,
        };
        if p.valid_round.is_some_and(|vr| vr >= p.round) {
            return Err(invalid(format!(
                "round {} names valid round {:?}",
                p.round, p.valid_round
            )));
        }
        let proposer = rotation.proposer_at_round(p.round);
        let Some(key) = self.validator_key(proposer) else {
            return Err(invalid(format!("no validator {proposer}")));
        };
        if p.verify(&key, &self.cfg.chain_id).is_err() {
            return Err(invalid(format!(
                "round {} not signed by its proposer {key}",
                p.round
            )));
        }
        // The signature covers the header only: the hashes must be those the header
        // commits to, or anyone relaying the proposal could swap them.
        self.check_header_shape(&p.block.header, p.block.tx_hashes.len(), p.height)
            .map_err(invalid)?;
        verify_compact_block_contents(&p.block)
            .map_err(|e| invalid(format!("hashes do not match the header: {e}")))?;
        Ok(Carried::Block {
            block: Box::new(p.block),
            round: p.round,
        })
    }

    fn expand_message(&self, wire: &[u8], block: &Block) -> Result<Vec<u8>, CodecError> {
        message::expand(wire, block)
    }
}
