//! Evidence of misbehaviour: two conflicting signed votes from one validator.
//!
//! A validator that signs two different votes of the same kind at the same height and
//! round (for two different blocks, or for a block and nil) has equivocated. Any node that
//! sees both can build a [`DuplicateVote`], gossip it and store it; anyone holding the
//! validator set can check it with [`DuplicateVote::verify`], without trusting the
//! reporter.

use pyralog_crypto::{HashDomain, PublicKey, Signature};
use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, Decode, Decoder, Encode};
use crate::{ChainId, Hash, ValidatorSet, Vote};

/// Format version of evidence.
pub const EVIDENCE_VERSION: u8 = 1;

/// Two conflicting votes signed by one validator.
///
/// Canonical form: the canonical encoding of `first` sorts before that of `second` (byte
/// order), so one pair of votes gives exactly one evidence object (and one hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateVote {
    /// The chain the votes were signed for.
    pub chain_id: ChainId,
    /// The validator that signed both.
    pub validator: PublicKey,
    /// One vote and its signature.
    pub first: (Vote, Signature),
    /// The conflicting vote and its signature.
    pub second: (Vote, Signature),
}

/// Why evidence does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// The evidence is for another chain.
    #[error("evidence is for chain {found}, expected {expected}")]
    WrongChain {
        /// The chain expected.
        expected: ChainId,
        /// The chain in the evidence.
        found: ChainId,
    },
    /// The two votes are not at the same kind, height and round.
    #[error(
        "the votes are at different positions (kind, height or round), so they do not conflict"
    )]
    DifferentPositions,
    /// The two votes are for the same block.
    #[error("the votes are for the same block, so they do not conflict")]
    SameBlock,
    /// The votes are not in canonical order.
    #[error("the votes are not in canonical order")]
    NotCanonical,
    /// The signer is not in the validator set.
    #[error("{0} is not a validator of this set")]
    NotAValidator(Box<PublicKey>),
    /// A signature does not verify.
    #[error("the {0} vote's signature does not verify")]
    BadSignature(&'static str),
}

impl DuplicateVote {
    /// Builds canonical evidence from two votes, or `None` if they do not conflict.
    pub fn new(
        chain_id: ChainId,
        validator: PublicKey,
        a: (Vote, Signature),
        b: (Vote, Signature),
    ) -> Option<DuplicateVote> {
        if !conflict(&a.0, &b.0) {
            return None;
        }
        let (first, second) = if a.0.to_bytes() <= b.0.to_bytes() {
            (a, b)
        } else {
            (b, a)
        };
        Some(DuplicateVote {
            chain_id,
            validator,
            first,
            second,
        })
    }

    /// The height of the equivocation.
    pub fn height(&self) -> u64 {
        self.first.0.height
    }

    /// The evidence's identity.
    pub fn hash(&self) -> Hash {
        HashDomain::Evidence.hash(&self.to_bytes())
    }

    /// Checks the evidence against `chain_id` and the validator set of its height: the
    /// votes conflict, are canonical, and both signatures are the validator's.
    pub fn verify(
        &self,
        chain_id: &ChainId,
        validators: &ValidatorSet,
    ) -> Result<(), EvidenceError> {
        if &self.chain_id != chain_id {
            return Err(EvidenceError::WrongChain {
                expected: chain_id.clone(),
                found: self.chain_id.clone(),
            });
        }
        let (a, b) = (&self.first.0, &self.second.0);
        if (a.kind, a.height, a.round) != (b.kind, b.height, b.round) {
            return Err(EvidenceError::DifferentPositions);
        }
        if a.block == b.block {
            return Err(EvidenceError::SameBlock);
        }
        if a.to_bytes() > b.to_bytes() {
            return Err(EvidenceError::NotCanonical);
        }
        if validators.index_of(&self.validator).is_none() {
            return Err(EvidenceError::NotAValidator(Box::new(self.validator)));
        }
        for (which, (vote, sig)) in [("first", &self.first), ("second", &self.second)] {
            vote.verify(&self.validator, chain_id, sig)
                .map_err(|_| EvidenceError::BadSignature(which))?;
        }
        Ok(())
    }
}

/// Whether two votes conflict: same kind, height and round, different block.
pub fn conflict(a: &Vote, b: &Vote) -> bool {
    (a.kind, a.height, a.round) == (b.kind, b.height, b.round) && a.block != b.block
}

impl Encode for DuplicateVote {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(EVIDENCE_VERSION);
        out.push(1); // kind: duplicate vote
        self.chain_id.encode(out);
        out.extend_from_slice(self.validator.as_bytes());
        for (vote, sig) in [&self.first, &self.second] {
            vote.encode(out);
            out.extend_from_slice(&sig.0);
        }
    }
}

impl Decode for DuplicateVote {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.version("evidence", EVIDENCE_VERSION)?;
        match d.u8("evidence kind")? {
            1 => {}
            tag => {
                return Err(CodecError::BadTag {
                    what: "evidence kind",
                    tag,
                });
            }
        }
        let chain_id = ChainId::decode(d)?;
        let validator = d.public_key("validator")?;
        let first = (Vote::decode(d)?, d.signature("first signature")?);
        let second = (Vote::decode(d)?, d.signature("second signature")?);
        Ok(DuplicateVote {
            chain_id,
            validator,
            first,
            second,
        })
    }
}
