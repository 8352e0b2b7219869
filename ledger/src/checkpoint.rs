//! Auditor checkpoints: what an auditor verified of a chain, cosigned with its own key.
//!
//! An auditor that has re-verified a chain up to a header signs a [`Checkpoint`] of it
//! (chain id, height, log size, log root, header hash). Auditors exchange these, each with
//! the certified header it names, and compare them with their own header at that height,
//! so a network that shows two histories to two auditors is caught: two certified headers
//! at one height. The signature (domain `Checkpoint`) says which auditor saw what; the
//! certificate, not the auditor, is what makes the header part of the chain.

use pyralog_crypto::{Keypair, PublicKey, SigDomain, Signature};

use crate::codec::{CodecError, Decode, Decoder, Encode};
use crate::{ChainId, Hash, Header};

/// Format version of checkpoints.
pub const CHECKPOINT_VERSION: u8 = 1;

/// What an auditor verified: the chain up to one header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The chain.
    pub chain_id: ChainId,
    /// Height of the header.
    pub height: u64,
    /// Log size at that header.
    pub log_size: u64,
    /// Log root at that header.
    pub log_root: Hash,
    /// The header's hash.
    pub header_hash: Hash,
}

impl Checkpoint {
    /// The checkpoint of `header`.
    pub fn of(header: &Header) -> Checkpoint {
        Checkpoint {
            chain_id: header.chain_id.clone(),
            height: header.height,
            log_size: header.log_size,
            log_root: header.log_root,
            header_hash: header.hash(),
        }
    }

    /// Whether `header` is the header this checkpoint names (all five fields agree).
    pub fn names(&self, header: &Header) -> bool {
        *self == Checkpoint::of(header)
    }
}

impl Encode for Checkpoint {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(CHECKPOINT_VERSION);
        self.chain_id.encode(out);
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&self.log_size.to_be_bytes());
        self.log_root.encode(out);
        self.header_hash.encode(out);
    }
}

impl Decode for Checkpoint {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.version("checkpoint", CHECKPOINT_VERSION)?;
        Ok(Checkpoint {
            chain_id: ChainId::decode(d)?,
            height: d.u64("height")?,
            log_size: d.u64("log size")?,
            log_root: d.hash("log root")?,
            header_hash: d.hash("header hash")?,
        })
    }
}

/// A checkpoint with an auditor's cosignature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// What was verified.
    pub checkpoint: Checkpoint,
    /// The auditor's public key.
    pub auditor: PublicKey,
    /// Its signature over the checkpoint (domain `Checkpoint`, on the checkpoint's chain).
    pub signature: Signature,
}

impl SignedCheckpoint {
    /// Signs `checkpoint` with the auditor key `key`.
    pub fn sign(checkpoint: Checkpoint, key: &Keypair) -> SignedCheckpoint {
        let signature = key.sign(
            SigDomain::Checkpoint,
            checkpoint.chain_id.as_str(),
            &checkpoint.to_bytes(),
        );
        SignedCheckpoint {
            checkpoint,
            auditor: key.public(),
            signature,
        }
    }

    /// Checks the cosignature.
    pub fn verify(&self) -> Result<(), pyralog_crypto::CryptoError> {
        self.auditor.verify(
            SigDomain::Checkpoint,
            self.checkpoint.chain_id.as_str(),
            &self.checkpoint.to_bytes(),
            &self.signature,
        )
    }
}

impl Encode for SignedCheckpoint {
    fn encode(&self, out: &mut Vec<u8>) {
        self.checkpoint.encode(out);
        out.extend_from_slice(self.auditor.as_bytes());
        out.extend_from_slice(&self.signature.0);
    }
}

impl Decode for SignedCheckpoint {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        Ok(SignedCheckpoint {
            checkpoint: Checkpoint::decode(d)?,
            auditor: d.public_key("auditor")?,
            signature: d.signature("cosignature")?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            chain_id: ChainId::new("audit-test").unwrap(),
            height: 7,
            log_size: 12,
            log_root: Hash([1; 32]),
            header_hash: Hash([2; 32]),
        }
    }

    #[test]
    fn a_cosigned_checkpoint_round_trips_and_verifies_only_unaltered() {
        let key = Keypair::from_seed(&[9; 32]);
        let signed = SignedCheckpoint::sign(checkpoint(), &key);
        let bytes = signed.to_bytes();
        let back = SignedCheckpoint::from_bytes(&bytes).unwrap();
        assert_eq!(back, signed);
        back.verify().unwrap();
        // Any field changed breaks the signature.
        let mut other = signed.clone();
        other.checkpoint.log_size += 1;
        assert!(other.verify().is_err());
        let mut other = signed.clone();
        other.checkpoint.chain_id = ChainId::new("audit-other").unwrap();
        assert!(other.verify().is_err());
        // Trailing bytes and truncation are refused.
        let mut long = bytes.clone();
        long.push(0);
        assert!(SignedCheckpoint::from_bytes(&long).is_err());
        assert!(SignedCheckpoint::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        // A vote signature over the same bytes is not a checkpoint signature.
        let vote_sig = key.sign(
            SigDomain::Precommit,
            "audit-test",
            &signed.checkpoint.to_bytes(),
        );
        let forged = SignedCheckpoint {
            signature: vote_sig,
            ..signed
        };
        assert!(forged.verify().is_err());
    }
}
