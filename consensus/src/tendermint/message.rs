//! Tendermint's wire messages: canonical, versioned, size-limited.

use pyralog_crypto::{CryptoError, Keypair, PublicKey, SigDomain, Signature};
use pyralog_ledger::codec::{CodecError, Decode, Decoder, Encode};
use pyralog_ledger::{Block, Certificate, ChainId, CompactBlock, Hash, Vote};

/// Format version of Tendermint messages.
pub const MESSAGE_VERSION: u8 = 1;
/// Largest message accepted (a full block plus its certificate and framing).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// ⟨PROPOSAL, h, r, v, vr⟩ of Algorithm 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Height `h`.
    pub height: u64,
    /// Round `r`.
    pub round: u32,
    /// `vr`: the round in which the proposer saw a polka for this block (`None` = −1).
    pub valid_round: Option<u32>,
    /// The proposed value `v`.
    pub block: Block,
}

impl Proposal {
    /// The bytes the proposer signs: everything but the block body, which the header hash
    /// binds (see [`pyralog_ledger::verify::verify_block_contents`]).
    pub fn signing_bytes(&self) -> Vec<u8> {
        signing_bytes(
            self.height,
            self.round,
            self.valid_round,
            &self.block.header.hash(),
        )
    }

    /// Signs the proposal with a raw key. Validators sign through the
    /// [`crate::Signer`]; this is for tests and the simulator's adversaries.
    pub fn sign(&self, key: &Keypair, chain_id: &ChainId) -> Signature {
        key.sign(
            SigDomain::Proposal,
            chain_id.as_str(),
            &self.signing_bytes(),
        )
    }

    /// Checks `signature` on this proposal by `key`.
    pub fn verify(
        &self,
        key: &PublicKey,
        chain_id: &ChainId,
        signature: &Signature,
    ) -> Result<(), CryptoError> {
        key.verify(
            SigDomain::Proposal,
            chain_id.as_str(),
            &self.signing_bytes(),
            signature,
        )
    }
}

/// Kind byte of [`Message::Proposal`].
const PROPOSAL: u8 = 1;

/// [`Proposal::signing_bytes`] from its parts.
fn signing_bytes(height: u64, round: u32, valid_round: Option<u32>, header_hash: &Hash) -> Vec<u8> {
    let mut out = vec![MESSAGE_VERSION];
    put_position(&mut out, height, round, valid_round);
    header_hash.encode(&mut out);
    out
}

/// A proposal's height, round and valid round, as every form of it encodes them.
fn put_position(out: &mut Vec<u8>, height: u64, round: u32, valid_round: Option<u32>) {
    out.extend_from_slice(&height.to_be_bytes());
    out.extend_from_slice(&round.to_be_bytes());
    match valid_round {
        None => out.push(0),
        Some(r) => {
            out.push(1);
            out.extend_from_slice(&r.to_be_bytes());
        }
    }
}

/// Reads what [`put_position`] wrote.
fn get_position(d: &mut Decoder<'_>) -> Result<(u64, u32, Option<u32>), CodecError> {
    let height = d.u64("height")?;
    let round = d.u32("round")?;
    let valid_round = if d.bool("valid round")? {
        Some(d.u32("valid round")?)
    } else {
        None
    };
    Ok((height, round, valid_round))
}

/// A vote with the index of the validator that signed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedVote {
    /// The signer's index in the validator set.
    pub validator: u32,
    /// The vote.
    pub vote: Vote,
    /// The signature over the vote.
    pub signature: Signature,
}

/// A Tendermint message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A signed proposal.
    Proposal {
        /// The proposal.
        proposal: Proposal,
        /// The proposer's signature over [`Proposal::signing_bytes`].
        signature: Signature,
    },
    /// A signed prevote or precommit.
    Vote(SignedVote),
    /// A committed block and the certificate that decided it, for validators that are
    /// behind (its authority is the certificate, not the sender).
    Decision {
        /// The block.
        block: Block,
        /// Its certificate.
        certificate: Certificate,
    },
}

impl Message {
    /// Decodes a message received from the network, refusing oversized input first.
    pub fn decode_limited(bytes: &[u8]) -> Result<Message, CodecError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(CodecError::Invalid {
                what: "consensus message",
                reason: format!("{} bytes, over the {MAX_MESSAGE_BYTES} limit", bytes.len()),
            });
        }
        Message::from_bytes(bytes)
    }
}

impl Encode for Message {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(MESSAGE_VERSION);
        match self {
            Message::Proposal {
                proposal,
                signature,
            } => {
                out.push(PROPOSAL);
                put_position(out, proposal.height, proposal.round, proposal.valid_round);
                proposal.block.encode(out);
                out.extend_from_slice(&signature.0);
            }
            Message::Vote(v) => {
                out.push(2);
                out.extend_from_slice(&v.validator.to_be_bytes());
                v.vote.encode(out);
                out.extend_from_slice(&v.signature.0);
            }
            Message::Decision { block, certificate } => {
                out.push(3);
                block.encode(out);
                certificate.encode(out);
            }
        }
    }
}

impl Decode for Message {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.version("consensus message", MESSAGE_VERSION)?;
        match d.u8("message kind")? {
            PROPOSAL => {
                let (height, round, valid_round) = get_position(d)?;
                let block = Block::decode(d)?;
                let signature = d.signature("proposal signature")?;
                Ok(Message::Proposal {
                    proposal: Proposal {
                        height,
                        round,
                        valid_round,
                        block,
                    },
                    signature,
                })
            }
            2 => Ok(Message::Vote(SignedVote {
                validator: d.u32("validator index")?,
                vote: Vote::decode(d)?,
                signature: d.signature("vote signature")?,
            })),
            3 => Ok(Message::Decision {
                block: Block::decode(d)?,
                certificate: Certificate::decode(d)?,
            }),
            tag => Err(CodecError::BadTag {
                what: "message kind",
                tag,
            }),
        }
    }
}

/// Kind byte of a compact proposal: a [`Message::Proposal`] whose block travels as a
/// [`CompactBlock`]. It exists only on the wire between hosts: a host turns the engine's
/// proposals into it with [`compact`] and back with [`expand`], and the engine itself
/// never decodes it (to [`Message::decode`] it is an unknown kind).
const COMPACT_PROPOSAL: u8 = 4;

/// The compact form of `message` if it is a proposal, with its block; `None` for any
/// other message (or bytes that do not decode). The proposer's signature covers the
/// header hash, not the transactions, so it carries over unchanged.
pub fn compact(message: &[u8]) -> Option<(Vec<u8>, Block)> {
    let Ok(Message::Proposal {
        proposal,
        signature,
    }) = Message::decode_limited(message)
    else {
        return None;
    };
    let mut out = vec![MESSAGE_VERSION, COMPACT_PROPOSAL];
    put_position(
        &mut out,
        proposal.height,
        proposal.round,
        proposal.valid_round,
    );
    CompactBlock::of(&proposal.block).encode(&mut out);
    out.extend_from_slice(&signature.0);
    Some((out, proposal.block))
}

/// A decoded compact proposal.
pub(crate) struct CompactProposal {
    pub(crate) height: u64,
    pub(crate) round: u32,
    pub(crate) valid_round: Option<u32>,
    pub(crate) block: CompactBlock,
    pub(crate) signature: Signature,
}

impl CompactProposal {
    /// Checks the proposer's signature, by `key` (the same bytes as the full proposal's).
    pub(crate) fn verify(&self, key: &PublicKey, chain_id: &ChainId) -> Result<(), CryptoError> {
        let bytes = signing_bytes(
            self.height,
            self.round,
            self.valid_round,
            &self.block.header.hash(),
        );
        key.verify(
            SigDomain::Proposal,
            chain_id.as_str(),
            &bytes,
            &self.signature,
        )
    }
}

/// Decodes `wire` as a compact proposal: `Ok(None)` if it is another kind of message.
pub(crate) fn decode_compact(wire: &[u8]) -> Result<Option<CompactProposal>, CodecError> {
    if wire.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::Invalid {
            what: "consensus message",
            reason: format!("{} bytes, over the {MAX_MESSAGE_BYTES} limit", wire.len()),
        });
    }
    if wire.get(1) != Some(&COMPACT_PROPOSAL) {
        return Ok(None);
    }
    let mut d = Decoder::new(wire);
    d.version("consensus message", MESSAGE_VERSION)?;
    d.u8("message kind")?;
    let (height, round, valid_round) = get_position(&mut d)?;
    let block = CompactBlock::decode(&mut d)?;
    let signature = d.signature("proposal signature")?;
    d.finish()?;
    Ok(Some(CompactProposal {
        height,
        round,
        valid_round,
        block,
        signature,
    }))
}

/// The full proposal message of the compact proposal `wire`, with `block`, which the host
/// assembled from the hashes it names. Refused if `block`'s header is not the one
/// `wire` names.
pub fn expand(wire: &[u8], block: &Block) -> Result<Vec<u8>, CodecError> {
    let Some(p) = decode_compact(wire)? else {
        return Err(CodecError::Invalid {
            what: "compact proposal",
            reason: "not a compact proposal".into(),
        });
    };
    if p.block.header != block.header
        || p.block.last_certificate != block.last_certificate
        || p.block.tx_hashes.len() != block.txs.len()
    {
        return Err(CodecError::Invalid {
            what: "compact proposal",
            reason: "the block is not the one it names".into(),
        });
    }
    let mut out = vec![MESSAGE_VERSION, PROPOSAL];
    put_position(&mut out, p.height, p.round, p.valid_round);
    block.encode(&mut out);
    out.extend_from_slice(&p.signature.0);
    Ok(out)
}
