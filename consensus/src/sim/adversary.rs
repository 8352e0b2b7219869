//! Byzantine validators. Each runs a real engine (so it follows the protocol's timing) and
//! rewrites what that engine sends, signing with its raw key, around the signer's guard.

use std::collections::BTreeMap;

use pyralog_crypto::{Hash, Keypair};
use pyralog_ledger::codec::Encode;
use pyralog_ledger::{ChainId, VoteKind};

use super::app::App;
use super::rng::Rng;
use crate::tendermint::{Message, SignedVote};

/// What a Byzantine validator does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Behavior {
    /// Sends nothing at all.
    Silent,
    /// As proposer, sends one valid block to half of the validators and another valid
    /// block to the other half.
    EquivocatingProposer,
    /// Signs a conflicting vote for each vote and sends both to everyone, in opposite
    /// orders to the two halves of the validators.
    DoubleVoter,
    /// As proposer, proposes a block whose state root is wrong; votes for it.
    InvalidBlock,
    /// Sends random bytes and corrupted copies of its messages instead of its messages.
    Garbage,
    /// Behaves, and also replays old messages it received to random validators.
    Replayer,
    /// Colludes with every other `Coalition` member: as proposer it splits the honest
    /// validators between two blocks, and every member votes for each side's block
    /// towards that side. With more than f members this breaks agreement (the checker's
    /// own test); with at most f it must not.
    Coalition,
}

impl Behavior {
    /// Every behaviour, for random scenarios.
    pub const ALL: [Behavior; 7] = [
        Behavior::Silent,
        Behavior::EquivocatingProposer,
        Behavior::DoubleVoter,
        Behavior::InvalidBlock,
        Behavior::Garbage,
        Behavior::Replayer,
        Behavior::Coalition,
    ];
}

/// What the coalition knows: the two blocks it split the honest validators over, per
/// (height, round).
#[derive(Default)]
pub struct Coalition {
    splits: BTreeMap<(u64, u32), (Hash, Hash)>,
}

/// Where a rewritten message goes.
pub struct Recipients<'a> {
    /// This validator's index.
    pub me: u32,
    /// Every validator index.
    pub all: &'a [u32],
    /// The honest validators on the "right" side of a coalition's split; everyone else
    /// is on the left.
    pub right: &'a [u32],
}

impl Recipients<'_> {
    /// Everyone but this validator and the right side.
    fn left(&self) -> Vec<u32> {
        Adversary::others(self.all, self.me)
            .filter(|i| !self.right.contains(i))
            .collect()
    }
}

/// One Byzantine validator's state.
pub struct Adversary {
    behavior: Behavior,
    key: Keypair,
    chain_id: ChainId,
    rng: Rng,
    recorded: Vec<Vec<u8>>,
    invalid: BTreeMap<u64, Hash>,
    /// The second proposal sent per (height, round), so re-broadcasts repeat it.
    alternatives: BTreeMap<(u64, u32), (Hash, Vec<u8>)>,
}

const RECORDED: usize = 512;

impl Adversary {
    /// An adversary with `behavior`, signing with `key`.
    pub fn new(behavior: Behavior, key: Keypair, chain_id: ChainId, rng: Rng) -> Adversary {
        Adversary {
            behavior,
            key,
            chain_id,
            rng,
            recorded: Vec::new(),
            invalid: BTreeMap::new(),
            alternatives: BTreeMap::new(),
        }
    }

    /// Its behaviour.
    pub fn behavior(&self) -> Behavior {
        self.behavior
    }

    /// Whether it answers sync requests (silent and garbage validators do not).
    pub fn syncs(&self) -> bool {
        !matches!(self.behavior, Behavior::Silent | Behavior::Garbage)
    }

    /// Sees a message delivered to it.
    pub fn on_receive(&mut self, bytes: &[u8]) {
        if self.behavior == Behavior::Replayer {
            if self.recorded.len() < RECORDED {
                self.recorded.push(bytes.to_vec());
            } else {
                let i = self.rng.index(RECORDED);
                self.recorded[i] = bytes.to_vec();
            }
        }
    }

    fn others<'a>(to: &'a [u32], me: u32) -> impl Iterator<Item = u32> + 'a {
        to.iter().copied().filter(move |i| *i != me)
    }

    fn send_to(to: &[u32], me: u32, bytes: &[u8], out: &mut Vec<(u32, Vec<u8>)>) {
        out.extend(Self::others(to, me).map(|i| (i, bytes.to_vec())));
    }

    fn resign_vote(&self, sv: &SignedVote, block: Option<Hash>) -> Vec<u8> {
        let mut vote = sv.vote;
        vote.block = block;
        let signature = vote.sign(&self.key, &self.chain_id);
        Message::Vote(SignedVote {
            validator: sv.validator,
            vote,
            signature,
        })
        .to_bytes()
    }

    /// Rewrites one broadcast of its engine into the messages it really sends.
    pub fn rewrite(
        &mut self,
        bytes: &[u8],
        app: &App,
        users: &[Keypair],
        coalition: &mut Coalition,
        to: &Recipients<'_>,
    ) -> Vec<(u32, Vec<u8>)> {
        let me = to.me;
        let mut out = Vec::new();
        let message = Message::decode_limited(bytes).ok();
        // Halves of everyone else, for single-handed equivocation.
        let (half_a, half_b): (Vec<u32>, Vec<u32>) =
            Self::others(to.all, me).partition(|i| i % 2 == 0);
        match (self.behavior, message) {
            (Behavior::Silent, _) => {}
            (Behavior::Garbage, _) => {
                for _ in 0..self.rng.range(1, 3) {
                    let len = self.rng.range(0, 200) as usize;
                    let target = to.all[self.rng.index(to.all.len())];
                    out.push((target, self.rng.bytes(len)));
                }
                if !bytes.is_empty() {
                    let mut corrupt = bytes.to_vec();
                    let i = self.rng.index(corrupt.len());
                    corrupt[i] ^= 1 << self.rng.range(0, 7);
                    Self::send_to(to.all, me, &corrupt, &mut out);
                }
            }
            (Behavior::Replayer, _) => {
                Self::send_to(to.all, me, bytes, &mut out);
                for _ in 0..2 {
                    if self.recorded.is_empty() {
                        break;
                    }
                    let old = self.recorded[self.rng.index(self.recorded.len())].clone();
                    let target = to.all[self.rng.index(to.all.len())];
                    out.push((target, old));
                }
            }
            (
                Behavior::EquivocatingProposer | Behavior::Coalition,
                Some(Message::Proposal { proposal, .. }),
            ) => {
                let position = (proposal.height, proposal.round);
                if !self.alternatives.contains_key(&position) {
                    let Ok(alt_block) = app.build_block(
                        self.key.public(),
                        users,
                        proposal.block.txs.len() + 1,
                        self.rng.next_u64(),
                    ) else {
                        Self::send_to(to.all, me, bytes, &mut out);
                        return out;
                    };
                    let mut alt = proposal.clone();
                    alt.block = alt_block;
                    let alt_signature = alt.sign(&self.key, &self.chain_id);
                    let alt_hash = alt.block.header.hash();
                    let alt_bytes = Message::Proposal {
                        proposal: alt,
                        signature: alt_signature,
                    }
                    .to_bytes();
                    self.alternatives.retain(|(h, _), _| *h >= proposal.height);
                    self.alternatives.insert(position, (alt_hash, alt_bytes));
                }
                let Some((alt_hash, alt_bytes)) = self.alternatives.get(&position).cloned() else {
                    return out;
                };
                if self.behavior == Behavior::Coalition {
                    coalition.splits.insert(
                        (proposal.height, proposal.round),
                        (proposal.block.header.hash(), alt_hash),
                    );
                    // The left side and the coalition get the engine's block.
                    let left = to.left();
                    Self::send_to(&left, me, bytes, &mut out);
                    Self::send_to(to.right, me, &alt_bytes, &mut out);
                } else {
                    Self::send_to(&half_a, me, bytes, &mut out);
                    Self::send_to(&half_b, me, &alt_bytes, &mut out);
                }
            }
            (Behavior::Coalition, Some(Message::Vote(sv))) if sv.validator == me => match coalition
                .splits
                .get(&(sv.vote.height, sv.vote.round))
                .copied()
            {
                Some((a, b)) => {
                    let for_a = self.resign_vote(&sv, Some(a));
                    let for_b = self.resign_vote(&sv, Some(b));
                    let left = to.left();
                    Self::send_to(&left, me, &for_a, &mut out);
                    Self::send_to(to.right, me, &for_b, &mut out);
                }
                None => Self::send_to(to.all, me, bytes, &mut out),
            },
            (Behavior::DoubleVoter, Some(Message::Vote(sv))) if sv.validator == me => {
                let conflicting = match sv.vote.block {
                    Some(_) => None,
                    None => Some(Hash(self.rng.bytes(32).try_into().unwrap_or([7; 32]))),
                };
                let other = self.resign_vote(&sv, conflicting);
                // Both votes reach everyone, in opposite orders on the two halves.
                Self::send_to(&half_a, me, bytes, &mut out);
                Self::send_to(&half_b, me, &other, &mut out);
                Self::send_to(&half_a, me, &other, &mut out);
                Self::send_to(&half_b, me, bytes, &mut out);
            }
            (Behavior::InvalidBlock, Some(Message::Proposal { proposal, .. })) => {
                let mut bad = proposal.clone();
                bad.block.header.state_root =
                    Hash(self.rng.bytes(32).try_into().unwrap_or([9; 32]));
                let signature = bad.sign(&self.key, &self.chain_id);
                self.invalid.insert(bad.height, bad.block.header.hash());
                let bad_bytes = Message::Proposal {
                    proposal: bad,
                    signature,
                }
                .to_bytes();
                Self::send_to(to.all, me, &bad_bytes, &mut out);
            }
            (Behavior::InvalidBlock, Some(Message::Vote(sv)))
                if sv.validator == me
                    && matches!(sv.vote.kind, VoteKind::Prevote | VoteKind::Precommit) =>
            {
                match self.invalid.get(&sv.vote.height).copied() {
                    Some(bad) => {
                        let rewritten = self.resign_vote(&sv, Some(bad));
                        Self::send_to(to.all, me, &rewritten, &mut out);
                    }
                    None => Self::send_to(to.all, me, bytes, &mut out),
                }
            }
            _ => Self::send_to(to.all, me, bytes, &mut out),
        }
        out
    }
}
