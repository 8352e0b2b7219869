//! The signer: every consensus signature goes through it, and it never signs two
//! conflicting messages, even across crashes and restarts.
//!
//! It keeps the last signed position `(height, round, step, block)`, and for a vote the
//! vote and its signature (see [`Signer::last_vote`]), and refuses:
//! - anything before that position (a *regression*);
//! - at that exact position, a different block (an *equivocation*; re-signing the same
//!   block, e.g. after a crash between signing and sending, is allowed);
//! - anything at or below the committed height (those heights are decided).
//!
//! **Persist before release.** The new position is written to the [`SignerStore`]
//! *before* the signature is handed out; if the save fails, no signature leaves the
//! signer. The store makes it durable before the signature can leave the node: at once,
//! or (the node's store) with the engine state that follows it, flushed before any
//! message is sent. So a crash at any moment can only lose a signature that was never
//! sent, never the record of one that was.
//!
//! **Wiped state.** A validator whose store is empty while the chain is past height 0
//! cannot know what it signed before; it refuses to sign until an operator calls
//! [`Signer::override_wiped_state`] (after making sure the key was not used elsewhere).
//! A *stale* store (restored from a backup) is covered by the committed-height rule for
//! every decided height; what it may have signed at the undecided height after the backup
//! is unknowable, as for any validator, so operators must never restore signer state.
//!
//! This is the monotonic guard the design assigns to an Obelisk-style sequencer, in the
//! style of Tendermint's `priv_validator_state`.

use std::fmt;

use pyralog_crypto::{Keypair, PublicKey, SigDomain, Signature};
use pyralog_ledger::codec::{CodecError, Decode, Decoder, Encode};
use pyralog_ledger::{ChainId, Hash, Vote, VoteKind};

/// The step of a round a signature belongs to, in signing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// A proposal (Tendermint PROPOSAL, PBFT PRE-PREPARE, Raft append).
    Propose = 1,
    /// The first vote of a round (Tendermint prevote, PBFT prepare).
    Prevote = 2,
    /// The deciding vote (Tendermint precommit, PBFT commit, Raft ack).
    Precommit = 3,
}

impl Step {
    /// The step of a vote kind.
    pub fn of(kind: VoteKind) -> Step {
        match kind {
            VoteKind::Prevote | VoteKind::Prepare => Step::Prevote,
            VoteKind::Precommit | VoteKind::Commit | VoteKind::RaftAck => Step::Precommit,
        }
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Step, CodecError> {
        match d.u8("signer step")? {
            1 => Ok(Step::Propose),
            2 => Ok(Step::Prevote),
            3 => Ok(Step::Precommit),
            tag => Err(CodecError::BadTag {
                what: "signer step",
                tag,
            }),
        }
    }
}

/// The last position the signer signed at, as persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastSigned {
    /// Height.
    pub height: u64,
    /// Round (view, term).
    pub round: u32,
    /// Step within the round.
    pub step: Step,
    /// The block signed for (`None`: nil).
    pub block: Option<Hash>,
    /// For a vote, the vote and its signature: a validator that crashed after signing
    /// but before its engine kept or sent the vote can send that same vote again
    /// ([`Signer::last_vote`]) where it would be refused another. `None` for a proposal,
    /// and in a state saved by version 1.
    pub vote: Option<Box<(Vote, Signature)>>,
}

impl LastSigned {
    fn position(&self) -> (u64, u32, Step) {
        (self.height, self.round, self.step)
    }
}

impl fmt::Display for LastSigned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let block = self.block.map_or("nil".to_string(), |b| b.to_hex());
        write!(
            f,
            "height {} round {} {:?} for {}",
            self.height, self.round, self.step, block
        )
    }
}

/// The signer state's encoding version (version 1 had no vote).
const STATE_VERSION: u8 = 2;

impl Encode for LastSigned {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(STATE_VERSION);
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&self.round.to_be_bytes());
        out.push(self.step as u8);
        pyralog_ledger::codec::put_option_hash(out, &self.block);
        match &self.vote {
            None => out.push(0),
            Some(signed) => {
                let (vote, signature) = &**signed;
                out.push(1);
                vote.encode(out);
                out.extend_from_slice(&signature.0);
            }
        }
    }
}

impl Decode for LastSigned {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        let version = d.u8("signer state version")?;
        if version != 1 && version != STATE_VERSION {
            return Err(CodecError::BadVersion {
                what: "signer state",
                version,
            });
        }
        let height = d.u64("height")?;
        let round = d.u32("round")?;
        let step = Step::decode(d)?;
        let block = d.option_hash("block")?;
        let vote = if version == 1 || !d.bool("vote")? {
            None
        } else {
            let (vote, signature) = (Vote::decode(d)?, d.signature("vote signature")?);
            // The vote is the one signed at this position, or the state is corrupt.
            if (vote.height, vote.round, Step::of(vote.kind), vote.block)
                != (height, round, step, block)
            {
                return Err(CodecError::Invalid {
                    what: "signer state",
                    reason: "the kept vote is not the one at the signed position".into(),
                });
            }
            Some(Box::new((vote, signature)))
        };
        Ok(LastSigned {
            height,
            round,
            step,
            block,
            vote,
        })
    }
}

/// Durable storage of the signer's last position (the node implements it on its store).
pub trait SignerStore {
    /// The persisted position, if any.
    fn load(&self) -> Result<Option<LastSigned>, String>;
    /// Persists `state`. It must be durable before any signature handed out after this
    /// returns `Ok` leaves the node: when it returns, or, for a store whose host defers
    /// the write, before the host sends anything. A later [`SignerStore::load`] in the same
    /// process returns it either way.
    fn save(&mut self, state: &LastSigned) -> Result<(), String>;
}

/// Why the signer refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignerError {
    /// The request is before the last signed position.
    #[error("refusing to sign {requested}: already signed {last}")]
    Regression {
        /// The last signed position.
        last: LastSigned,
        /// The refused request.
        requested: LastSigned,
    },
    /// The request is at the last signed position but for another block.
    #[error("refusing to sign {requested}: would equivocate with {last}")]
    Equivocation {
        /// The last signed position.
        last: LastSigned,
        /// The refused request.
        requested: LastSigned,
    },
    /// The request is for a height that is already committed.
    #[error("refusing to sign at height {height}: height {committed} is already committed")]
    Decided {
        /// The requested height.
        height: u64,
        /// The committed height.
        committed: u64,
    },
    /// The signer state was wiped while the chain is past genesis.
    #[error(
        "signer state is missing but the chain is at height {committed}: refusing to sign until \
         an operator confirms the key signed nothing above that height (override)"
    )]
    WipedState {
        /// The committed height.
        committed: u64,
    },
    /// The store failed; nothing was signed.
    #[error("signer store: {0}")]
    Store(String),
}

/// Signs consensus messages for one validator key, guarding against double signing.
pub struct Signer<S: SignerStore> {
    key: Keypair,
    chain_id: ChainId,
    store: S,
    last: Option<LastSigned>,
    committed: u64,
    wiped: bool,
}

impl<S: SignerStore> Signer<S> {
    /// Opens the signer on `store` for a chain whose committed height is `committed`.
    pub fn open(
        key: Keypair,
        chain_id: ChainId,
        store: S,
        committed: u64,
    ) -> Result<Self, SignerError> {
        let last = store.load().map_err(SignerError::Store)?;
        let wiped = last.is_none() && committed > 0;
        Ok(Signer {
            key,
            chain_id,
            store,
            last,
            committed,
            wiped,
        })
    }

    /// The validator's public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    /// The last signed position.
    pub fn last_signed(&self) -> Option<&LastSigned> {
        self.last.as_ref()
    }

    /// Records that `height` is committed: nothing at or below it will be signed.
    pub fn note_committed(&mut self, height: u64) {
        self.committed = self.committed.max(height);
    }

    /// Operator override after a wiped signer state: the operator asserts this key signed
    /// nothing above the committed height. Signing resumes above it.
    pub fn override_wiped_state(&mut self) {
        self.wiped = false;
    }

    /// The store (e.g. to inspect it in tests).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Checks `requested` against the guard and persists it if allowed.
    fn admit(&mut self, requested: LastSigned) -> Result<(), SignerError> {
        if self.wiped {
            return Err(SignerError::WipedState {
                committed: self.committed,
            });
        }
        if requested.height <= self.committed {
            return Err(SignerError::Decided {
                height: requested.height,
                committed: self.committed,
            });
        }
        if let Some(last) = &self.last {
            match requested.position().cmp(&last.position()) {
                std::cmp::Ordering::Less => {
                    return Err(SignerError::Regression {
                        last: last.clone(),
                        requested,
                    });
                }
                std::cmp::Ordering::Equal if requested.block != last.block => {
                    return Err(SignerError::Equivocation {
                        last: last.clone(),
                        requested,
                    });
                }
                std::cmp::Ordering::Equal => return Ok(()), // same message again: already persisted
                std::cmp::Ordering::Greater => {}
            }
        }
        self.store.save(&requested).map_err(SignerError::Store)?;
        self.last = Some(requested);
        Ok(())
    }

    /// Signs `vote` if the guard allows it; the position is durable before this returns.
    pub fn sign_vote(&mut self, vote: &Vote) -> Result<Signature, SignerError> {
        let signature = vote.sign(&self.key, &self.chain_id);
        self.admit(LastSigned {
            height: vote.height,
            round: vote.round,
            step: Step::of(vote.kind),
            block: vote.block,
            vote: Some(Box::new((*vote, signature))),
        })?;
        Ok(signature)
    }

    /// The vote this signer signed last, with its signature, if the last thing it signed
    /// was a vote (and its state recorded it).
    pub fn last_vote(&self) -> Option<(Vote, Signature)> {
        self.last.as_ref()?.vote.as_deref().copied()
    }

    /// Signs a proposal of `block` at `height` and `round`, whose canonical bytes (defined
    /// by the engine) are `message`, if the guard allows it.
    pub fn sign_proposal(
        &mut self,
        height: u64,
        round: u32,
        block: Hash,
        message: &[u8],
    ) -> Result<Signature, SignerError> {
        self.admit(LastSigned {
            height,
            round,
            step: Step::Propose,
            block: Some(block),
            vote: None,
        })?;
        Ok(self
            .key
            .sign(SigDomain::Proposal, self.chain_id.as_str(), message))
    }
}

/// A [`SignerStore`] in memory, for tests and the simulator; it can be told to fail.
#[derive(Clone, Debug, Default)]
pub struct MemSignerStore {
    /// The persisted bytes (canonical [`LastSigned`]), as a disk would hold them.
    pub bytes: Option<Vec<u8>>,
    /// When set, `save` fails (a full or broken disk).
    pub fail_saves: bool,
}

impl SignerStore for MemSignerStore {
    fn load(&self) -> Result<Option<LastSigned>, String> {
        self.bytes
            .as_deref()
            .map(|b| LastSigned::from_bytes(b).map_err(|e| format!("corrupt signer state: {e}")))
            .transpose()
    }

    fn save(&mut self, state: &LastSigned) -> Result<(), String> {
        if self.fail_saves {
            return Err("disk failure (injected)".into());
        }
        self.bytes = Some(state.to_bytes());
        Ok(())
    }
}
