//! Headers, votes, certificates and blocks.

use pyralog_crypto::{HashDomain, Keypair, PublicKey, SigDomain, Signature};
use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, Decode, Decoder, Encode, put_count, put_option_hash, put_seq};
use crate::{ChainId, EngineId, Hash, Transaction, ValidatorSet};

/// Format version of headers, votes, certificates and blocks.
pub const BLOCK_VERSION: u8 = 1;
/// Most transactions a block may carry, whatever the chain parameters say.
pub const MAX_BLOCK_TXS: usize = 1 << 20;

/// A block header. Its hash is the block's identity, and a certificate signs that hash.
///
/// Roots are those *after* executing the block, so one certified header proves the state,
/// the log and the transactions of its height.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The chain.
    pub chain_id: ChainId,
    /// Height, starting at 1.
    pub height: u64,
    /// BFT time in milliseconds since the Unix epoch (monotonic, set by a quorum).
    pub time_ms: u64,
    /// Hash of the previous header (the genesis hash for height 1).
    pub prev_hash: Hash,
    /// Hash of the certificate of the previous height carried in this block (zero at 1).
    pub last_certificate_hash: Hash,
    /// Merkle root of this block's transaction hashes.
    pub tx_root: Hash,
    /// Number of transactions in this block.
    pub tx_count: u32,
    /// Number of transactions in the log after this block.
    pub log_size: u64,
    /// Root of the append-only log of every transaction hash since genesis.
    pub log_root: Hash,
    /// Root of the state tree after this block.
    pub state_root: Hash,
    /// Hash of the validator set that certifies this header.
    pub validators_hash: Hash,
    /// Hash of the validator set that certifies the next header.
    pub next_validators_hash: Hash,
    /// The consensus engine.
    pub engine: EngineId,
    /// The validator that proposed this block.
    pub proposer: PublicKey,
}

impl Header {
    /// The header's identity.
    pub fn hash(&self) -> Hash {
        HashDomain::Header.hash(&self.to_bytes())
    }
}

impl Encode for Header {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(BLOCK_VERSION);
        self.chain_id.encode(out);
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        for h in [&self.prev_hash, &self.last_certificate_hash, &self.tx_root] {
            h.encode(out);
        }
        out.extend_from_slice(&self.tx_count.to_be_bytes());
        out.extend_from_slice(&self.log_size.to_be_bytes());
        for h in [
            &self.log_root,
            &self.state_root,
            &self.validators_hash,
            &self.next_validators_hash,
        ] {
            h.encode(out);
        }
        out.push(self.engine as u8);
        out.extend_from_slice(self.proposer.as_bytes());
    }
}

impl Decode for Header {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.version("header", BLOCK_VERSION)?;
        Ok(Header {
            chain_id: ChainId::decode(d)?,
            height: d.u64("height")?,
            time_ms: d.u64("time")?,
            prev_hash: d.hash("prev_hash")?,
            last_certificate_hash: d.hash("last_certificate_hash")?,
            tx_root: d.hash("tx_root")?,
            tx_count: d.u32("tx_count")?,
            log_size: d.u64("log_size")?,
            log_root: d.hash("log_root")?,
            state_root: d.hash("state_root")?,
            validators_hash: d.hash("validators_hash")?,
            next_validators_hash: d.hash("next_validators_hash")?,
            engine: EngineId::decode(d)?,
            proposer: d.public_key("proposer")?,
        })
    }
}

/// The kinds of consensus vote. Each has its own signature domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoteKind {
    /// Tendermint prevote.
    Prevote = 1,
    /// Tendermint precommit.
    Precommit = 2,
    /// PBFT prepare.
    Prepare = 3,
    /// PBFT commit.
    Commit = 4,
    /// Raft follower acknowledgement of a header.
    RaftAck = 5,
}

impl VoteKind {
    /// The signature domain of this kind of vote.
    pub fn domain(self) -> SigDomain {
        match self {
            VoteKind::Prevote => SigDomain::Prevote,
            VoteKind::Precommit => SigDomain::Precommit,
            VoteKind::Prepare => SigDomain::Prepare,
            VoteKind::Commit => SigDomain::Commit,
            VoteKind::RaftAck => SigDomain::RaftAck,
        }
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        match d.u8("vote kind")? {
            1 => Ok(VoteKind::Prevote),
            2 => Ok(VoteKind::Precommit),
            3 => Ok(VoteKind::Prepare),
            4 => Ok(VoteKind::Commit),
            5 => Ok(VoteKind::RaftAck),
            tag => Err(CodecError::BadTag {
                what: "vote kind",
                tag,
            }),
        }
    }
}

/// What a validator signs when it votes: kind, height, round (view, term), the header hash
/// voted for (`None` = nil) and the validator's own clock reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Vote {
    /// The kind of vote.
    pub kind: VoteKind,
    /// Height voted on.
    pub height: u64,
    /// Round (Tendermint), view (PBFT) or term (Raft).
    pub round: u32,
    /// The header hash voted for, or `None` for nil.
    pub block: Option<Hash>,
    /// The voter's time in milliseconds since the Unix epoch (input to BFT time).
    pub time_ms: u64,
}

impl Vote {
    /// Signs this vote for `chain_id`.
    pub fn sign(&self, key: &Keypair, chain_id: &ChainId) -> Signature {
        key.sign(self.kind.domain(), chain_id.as_str(), &self.to_bytes())
    }

    /// Checks `signature` on this vote by `key` for `chain_id`.
    pub fn verify(
        &self,
        key: &PublicKey,
        chain_id: &ChainId,
        signature: &Signature,
    ) -> Result<(), pyralog_crypto::CryptoError> {
        key.verify(
            self.kind.domain(),
            chain_id.as_str(),
            &self.to_bytes(),
            signature,
        )
    }
}

impl Encode for Vote {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(BLOCK_VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&self.round.to_be_bytes());
        put_option_hash(out, &self.block);
        out.extend_from_slice(&self.time_ms.to_be_bytes());
    }
}

impl Decode for Vote {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.version("vote", BLOCK_VERSION)?;
        Ok(Vote {
            kind: VoteKind::decode(d)?,
            height: d.u64("height")?,
            round: d.u32("round")?,
            block: d.option_hash("block")?,
            time_ms: d.u64("time")?,
        })
    }
}

/// One validator's commit vote inside a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitSig {
    /// Index of the validator in the canonical order of the validator set.
    pub validator: u32,
    /// The time in the validator's vote.
    pub time_ms: u64,
    /// The validator's signature over the vote.
    pub signature: Signature,
}

/// Proof that a quorum of validators committed a header: their commit votes (the kind
/// given by the chain's engine) for `header_hash` at `height` and `round`.
///
/// Votes are sorted by validator index with no repeats, so a certificate has one encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// Height of the certified header.
    pub height: u64,
    /// Round (view, term) in which it was committed.
    pub round: u32,
    /// Hash of the certified header.
    pub header_hash: Hash,
    /// The commit votes.
    pub votes: Vec<CommitSig>,
}

impl Certificate {
    /// The vote a commit signature in this certificate signs, for `engine`.
    pub fn vote_for(&self, engine: EngineId, sig: &CommitSig) -> Vote {
        Vote {
            kind: engine.commit_vote_kind(),
            height: self.height,
            round: self.round,
            block: Some(self.header_hash),
            time_ms: sig.time_ms,
        }
    }

    /// The certificate's hash (committed by the next header).
    pub fn hash(&self) -> Hash {
        HashDomain::Certificate.hash(&self.to_bytes())
    }

    /// BFT time derived from this certificate: the power-weighted median of its vote
    /// times (the smallest time `t` such that votes at or before `t` carry more than half
    /// of the certificate's voting power). Since a quorum signed, more than 1/3 of the
    /// power is honest, so faulty validators alone cannot move the median outside the
    /// honest times. `None` if a vote names a validator outside `validators`.
    pub fn bft_time(&self, validators: &ValidatorSet) -> Option<u64> {
        let mut times: Vec<(u64, u64)> = Vec::with_capacity(self.votes.len());
        for v in &self.votes {
            times.push((v.time_ms, validators.get(v.validator as usize)?.power));
        }
        times.sort_unstable();
        let total: u64 = times.iter().map(|(_, p)| p).sum();
        let mut acc = 0u64;
        for (t, p) in times {
            acc += p;
            if acc * 2 > total {
                return Some(t);
            }
        }
        None
    }
}

impl Encode for Certificate {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(BLOCK_VERSION);
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&self.round.to_be_bytes());
        self.header_hash.encode(out);
        put_count(out, self.votes.len());
        for v in &self.votes {
            out.extend_from_slice(&v.validator.to_be_bytes());
            out.extend_from_slice(&v.time_ms.to_be_bytes());
            out.extend_from_slice(&v.signature.0);
        }
    }
}

impl Decode for Certificate {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.version("certificate", BLOCK_VERSION)?;
        let height = d.u64("height")?;
        let round = d.u32("round")?;
        let header_hash = d.hash("header_hash")?;
        let n = d.count("votes", crate::chain::MAX_VALIDATORS)?;
        let mut votes: Vec<CommitSig> = Vec::new();
        for _ in 0..n {
            let sig = CommitSig {
                validator: d.u32("validator index")?,
                time_ms: d.u64("vote time")?,
                signature: d.signature("vote signature")?,
            };
            if votes
                .last()
                .is_some_and(|prev| prev.validator >= sig.validator)
            {
                return Err(CodecError::Invalid {
                    what: "certificate",
                    reason: "votes not in strictly increasing validator order".into(),
                });
            }
            votes.push(sig);
        }
        Ok(Certificate {
            height,
            round,
            header_hash,
            votes,
        })
    }
}

/// A block: the header, the certificate of the previous height (which fixes this block's
/// BFT time), and the transactions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The header.
    pub header: Header,
    /// Certificate of height − 1 (`None` at height 1).
    pub last_certificate: Option<Certificate>,
    /// The transactions, in execution order.
    pub txs: Vec<Transaction>,
}

/// A block's header and last certificate, as its full and compact forms encode them.
fn put_head(out: &mut Vec<u8>, header: &Header, last_certificate: Option<&Certificate>) {
    header.encode(out);
    match last_certificate {
        None => out.push(0),
        Some(c) => {
            out.push(1);
            c.encode(out);
        }
    }
}

/// Reads what [`put_head`] wrote.
fn get_head(d: &mut Decoder<'_>) -> Result<(Header, Option<Certificate>), CodecError> {
    let header = Header::decode(d)?;
    let last_certificate = if d.bool("last certificate")? {
        Some(Certificate::decode(d)?)
    } else {
        None
    };
    Ok((header, last_certificate))
}

impl Encode for Block {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(BLOCK_VERSION);
        put_head(out, &self.header, self.last_certificate.as_ref());
        put_seq(out, &self.txs);
    }
}

impl Decode for Block {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.version("block", BLOCK_VERSION)?;
        let (header, last_certificate) = get_head(d)?;
        Ok(Block {
            header,
            last_certificate,
            txs: d.seq("transactions", MAX_BLOCK_TXS)?,
        })
    }
}

/// Format version of compact blocks.
pub const COMPACT_BLOCK_VERSION: u8 = 1;

/// A block with its transactions named by hash: what a proposal carries on the wire
/// between nodes that already hold most of the transactions (gossip brought them to their
/// mempools). The receiver rebuilds the [`Block`] with [`CompactBlock::assemble`] from the
/// transactions it holds and the ones it fetches; the header's transaction root still binds
/// the result, which validation checks as for any block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactBlock {
    /// The header.
    pub header: Header,
    /// Certificate of height − 1 (`None` at height 1).
    pub last_certificate: Option<Certificate>,
    /// The transactions' hashes ([`Transaction::hash`]), in execution order.
    pub tx_hashes: Vec<Hash>,
}

impl CompactBlock {
    /// The compact form of `block` (hashes each transaction).
    pub fn of(block: &Block) -> CompactBlock {
        CompactBlock {
            header: block.header.clone(),
            last_certificate: block.last_certificate.clone(),
            tx_hashes: block.txs.iter().map(Transaction::hash).collect(),
        }
    }

    /// The block, with each transaction from `lookup` (given its index and hash), or the
    /// indices `lookup` has no transaction for. A transaction `lookup` returns must have
    /// the hash asked for (the caller's store is keyed by it); the header's transaction
    /// root binds the result either way.
    pub fn assemble(
        &self,
        mut lookup: impl FnMut(usize, &Hash) -> Option<Transaction>,
    ) -> Result<Block, Vec<u32>> {
        let mut txs = Vec::with_capacity(self.tx_hashes.len());
        let mut missing = Vec::new();
        for (i, h) in self.tx_hashes.iter().enumerate() {
            match lookup(i, h) {
                Some(tx) if missing.is_empty() => txs.push(tx),
                Some(_) => {}
                None => missing.push(i as u32),
            }
        }
        if !missing.is_empty() {
            return Err(missing);
        }
        Ok(Block {
            header: self.header.clone(),
            last_certificate: self.last_certificate.clone(),
            txs,
        })
    }
}

impl Encode for CompactBlock {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(COMPACT_BLOCK_VERSION);
        put_head(out, &self.header, self.last_certificate.as_ref());
        put_seq(out, &self.tx_hashes);
    }
}

impl Decode for CompactBlock {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.version("compact block", COMPACT_BLOCK_VERSION)?;
        let (header, last_certificate) = get_head(d)?;
        Ok(CompactBlock {
            header,
            last_certificate,
            tx_hashes: d.seq("transaction hashes", MAX_BLOCK_TXS)?,
        })
    }
}
