//! The one verification path: the node, the wallet's light client and the auditor call
//! these functions to check headers, certificates and proofs. Each failure says exactly
//! what did not match.

use pyralog_crypto::{BatchItem, PublicKey};

use crate::exec::Execution;
use crate::merkle::{ProofError, TreeHasher, verify_consistency, verify_inclusion};
use crate::state::{Namespace, StateProof, StateProofError, state_key, verify_state_proof};
use crate::{
    Block, Certificate, ChainId, CompactBlock, EngineId, Genesis, Hash, Header, ValidatorSet,
};

/// What failed when checking headers, certificates or proofs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The object belongs to another chain.
    #[error("chain id mismatch: expected {expected}, found {found}")]
    WrongChain {
        /// The expected chain.
        expected: ChainId,
        /// The chain found.
        found: ChainId,
    },
    /// A height is not the expected one.
    #[error("{what}: expected height {expected}, found {found}")]
    WrongHeight {
        /// What carries the height.
        what: &'static str,
        /// The expected height.
        expected: u64,
        /// The height found.
        found: u64,
    },
    /// Two hashes that must be equal are not.
    #[error("{what} mismatch: expected {expected}, found {found}")]
    HashMismatch {
        /// Which hash.
        what: &'static str,
        /// The expected value.
        expected: Hash,
        /// The value found.
        found: Hash,
    },
    /// A header's engine differs from the chain's.
    #[error("engine mismatch: chain runs {expected:?}, header says {found:?}")]
    WrongEngine {
        /// The chain's engine.
        expected: EngineId,
        /// The header's engine.
        found: EngineId,
    },
    /// A header's time does not move forward.
    #[error("time does not increase: previous {previous} ms, this {found} ms")]
    TimeNotMonotonic {
        /// The previous time.
        previous: u64,
        /// This header's time.
        found: u64,
    },
    /// A header's time is not the BFT time of the previous certificate.
    #[error("header time {found} ms is not the BFT time {expected} ms of the last certificate")]
    WrongBftTime {
        /// BFT time computed from the last certificate.
        expected: u64,
        /// The header's time.
        found: u64,
    },
    /// A certificate names a validator index outside the set.
    #[error("certificate names validator index {index}, but the set has {len} validators")]
    UnknownValidator {
        /// The index found.
        index: u32,
        /// The set's size.
        len: usize,
    },
    /// A block above height 1 without the certificate of the previous height.
    #[error("block carries no certificate of the previous height")]
    MissingLastCertificate,
    /// A block at height 1 that carries a previous certificate.
    #[error("block 1 carries a certificate of a previous height, which does not exist")]
    UnexpectedLastCertificate,
    /// Certificate votes not in strictly increasing validator order.
    #[error("certificate votes out of order or repeated at validator index {index}")]
    VotesOutOfOrder {
        /// The index found out of order.
        index: u32,
    },
    /// Signatures in a certificate that do not verify.
    #[error("invalid vote signature from validator(s) {}", keys.iter().map(|k| k.to_hex()).collect::<Vec<_>>().join(", "))]
    BadVoteSignatures {
        /// The validators whose signatures failed.
        keys: Vec<PublicKey>,
    },
    /// A certificate without enough voting power.
    #[error("certificate has voting power {have}, a quorum needs {need} of {total}")]
    InsufficientPower {
        /// Power of the votes.
        have: u64,
        /// Quorum power.
        need: u64,
        /// Total power.
        total: u64,
    },
    /// A header's roots differ from re-execution.
    #[error("{field} mismatch: header has {in_header}, execution gives {computed}")]
    ExecutionMismatch {
        /// The header field.
        field: &'static str,
        /// The header's value.
        in_header: String,
        /// The re-executed value.
        computed: String,
    },
    /// A position outside the block or log.
    #[error("{what} {index} is outside {limit}")]
    OutOfRange {
        /// What position.
        what: &'static str,
        /// The position.
        index: u64,
        /// The bound.
        limit: u64,
    },
    /// The transaction inclusion proof failed.
    #[error("transaction inclusion proof: {0}")]
    TxProof(ProofError),
    /// The log inclusion proof failed.
    #[error("log inclusion proof: {0}")]
    LogInclusion(ProofError),
    /// The log consistency proof failed.
    #[error("log consistency proof: {0}")]
    LogConsistency(ProofError),
    /// The state proof failed.
    #[error("state proof: {0}")]
    State(#[from] StateProofError),
    /// A genesis file that cannot be used.
    #[error("genesis: {0}")]
    Genesis(String),
}

/// Checks that `cert` certifies `header` under `validators` and `engine`'s quorum rule:
/// height and hash match, the header names this validator set, every vote's signature
/// verifies (batched), and the signers' power reaches the quorum.
pub fn verify_certificate(
    engine: EngineId,
    validators: &ValidatorSet,
    header: &Header,
    cert: &Certificate,
) -> Result<(), VerifyError> {
    if header.engine != engine {
        return Err(VerifyError::WrongEngine {
            expected: engine,
            found: header.engine,
        });
    }
    if cert.height != header.height {
        return Err(VerifyError::WrongHeight {
            what: "certificate",
            expected: header.height,
            found: cert.height,
        });
    }
    let header_hash = header.hash();
    if cert.header_hash != header_hash {
        return Err(VerifyError::HashMismatch {
            what: "certified header hash",
            expected: header_hash,
            found: cert.header_hash,
        });
    }
    let set_hash = validators.hash();
    if header.validators_hash != set_hash {
        return Err(VerifyError::HashMismatch {
            what: "validator set hash",
            expected: header.validators_hash,
            found: set_hash,
        });
    }
    let mut power = 0u64;
    let mut prev: Option<u32> = None;
    let mut keys = Vec::with_capacity(cert.votes.len());
    let mut messages = Vec::with_capacity(cert.votes.len());
    for sig in &cert.votes {
        if prev.is_some_and(|p| p >= sig.validator) {
            return Err(VerifyError::VotesOutOfOrder {
                index: sig.validator,
            });
        }
        prev = Some(sig.validator);
        let v = validators
            .get(sig.validator as usize)
            .ok_or(VerifyError::UnknownValidator {
                index: sig.validator,
                len: validators.len(),
            })?;
        power += v.power;
        keys.push(v.public_key);
        messages.push(crate::codec::Encode::to_bytes(&cert.vote_for(engine, sig)));
    }
    let need = validators.quorum_power(engine);
    if power < need {
        return Err(VerifyError::InsufficientPower {
            have: power,
            need,
            total: validators.total_power(),
        });
    }
    verify_vote_signatures(engine, &header.chain_id, cert, &keys, &messages)
}

/// The signature step of [`verify_certificate`]: the votes of `cert` on `chain_id`, in one
/// batch, where `keys[i]` and `messages[i]` are vote `i`'s signer and encoded vote.
pub fn verify_vote_signatures(
    engine: EngineId,
    chain_id: &ChainId,
    cert: &Certificate,
    keys: &[PublicKey],
    messages: &[Vec<u8>],
) -> Result<(), VerifyError> {
    let items: Vec<BatchItem<'_>> = cert
        .votes
        .iter()
        .zip(keys.iter().zip(messages))
        .map(|(sig, (key, message))| BatchItem {
            public_key: key,
            domain: engine.commit_domain(),
            chain_id: chain_id.as_str(),
            message,
            signature: &sig.signature,
        })
        .collect();
    pyralog_crypto::verify_batch_report(&items).map_err(|bad| VerifyError::BadVoteSignatures {
        keys: bad.into_iter().map(|i| keys[i]).collect(),
    })
}

/// Checks that `header` is block 1 of the chain described by `genesis`.
pub fn verify_first_header(genesis: &Genesis, header: &Header) -> Result<(), VerifyError> {
    let genesis_hash = genesis
        .hash()
        .map_err(|e| VerifyError::Genesis(e.to_string()))?;
    let set = genesis
        .validator_set()
        .map_err(|e| VerifyError::Genesis(e.to_string()))?;
    if header.chain_id != genesis.chain_id {
        return Err(VerifyError::WrongChain {
            expected: genesis.chain_id.clone(),
            found: header.chain_id.clone(),
        });
    }
    if header.height != 1 {
        return Err(VerifyError::WrongHeight {
            what: "first header",
            expected: 1,
            found: header.height,
        });
    }
    if header.engine != genesis.engine {
        return Err(VerifyError::WrongEngine {
            expected: genesis.engine,
            found: header.engine,
        });
    }
    expect_hash(
        "previous hash (genesis hash)",
        genesis_hash,
        header.prev_hash,
    )?;
    expect_hash("validator set hash", set.hash(), header.validators_hash)?;
    if header.time_ms <= genesis.genesis_time_ms {
        return Err(VerifyError::TimeNotMonotonic {
            previous: genesis.genesis_time_ms,
            found: header.time_ms,
        });
    }
    Ok(())
}

fn expect_hash(what: &'static str, expected: Hash, found: Hash) -> Result<(), VerifyError> {
    if expected == found {
        Ok(())
    } else {
        Err(VerifyError::HashMismatch {
            what,
            expected,
            found,
        })
    }
}

/// Checks that `next` directly follows `prev`: same chain and engine, height + 1,
/// `prev_hash` links, time increases, and the validator set is the one `prev` announced.
pub fn verify_header_link(prev: &Header, next: &Header) -> Result<(), VerifyError> {
    if next.chain_id != prev.chain_id {
        return Err(VerifyError::WrongChain {
            expected: prev.chain_id.clone(),
            found: next.chain_id.clone(),
        });
    }
    if next.height != prev.height + 1 {
        return Err(VerifyError::WrongHeight {
            what: "next header",
            expected: prev.height + 1,
            found: next.height,
        });
    }
    if next.engine != prev.engine {
        return Err(VerifyError::WrongEngine {
            expected: prev.engine,
            found: next.engine,
        });
    }
    expect_hash("previous header hash", prev.hash(), next.prev_hash)?;
    expect_hash(
        "validator set hash",
        prev.next_validators_hash,
        next.validators_hash,
    )?;
    if next.time_ms <= prev.time_ms {
        return Err(VerifyError::TimeNotMonotonic {
            previous: prev.time_ms,
            found: next.time_ms,
        });
    }
    if next.log_size < prev.log_size {
        return Err(VerifyError::OutOfRange {
            what: "log size (shrinks)",
            index: next.log_size,
            limit: prev.log_size,
        });
    }
    Ok(())
}

/// One light-client step: `next` follows the trusted `prev` and is certified by `cert`
/// under `next_validators` (which must be the set `prev` announced).
pub fn verify_header_step(
    prev: &Header,
    next: &Header,
    next_validators: &ValidatorSet,
    cert: &Certificate,
) -> Result<(), VerifyError> {
    verify_header_link(prev, next)?;
    verify_certificate(prev.engine, next_validators, next, cert)
}

/// Checks the certificate of the previous height that `block` carries, and the BFT time
/// it fixes: at height 1 there is none (and `last_certificate_hash` is zero); above, it
/// must be the one the header commits to (`last_certificate_hash`), it must certify
/// `prev` under `prev_validators`, and the header's time must be its BFT time (the
/// power-weighted median of its vote times).
pub fn verify_last_certificate(
    block: &Block,
    prev: Option<(&Header, &ValidatorSet)>,
) -> Result<(), VerifyError> {
    let header = &block.header;
    let Some((prev_header, prev_validators)) = prev else {
        if block.last_certificate.is_some() {
            return Err(VerifyError::UnexpectedLastCertificate);
        }
        return expect_hash(
            "last certificate hash",
            Hash::ZERO,
            header.last_certificate_hash,
        );
    };
    let cert = block
        .last_certificate
        .as_ref()
        .ok_or(VerifyError::MissingLastCertificate)?;
    expect_hash(
        "last certificate hash",
        header.last_certificate_hash,
        cert.hash(),
    )?;
    verify_certificate(prev_header.engine, prev_validators, prev_header, cert)?;
    // verify_certificate checked every vote index against the set, so this is Some.
    let expected = cert
        .bft_time(prev_validators)
        .ok_or(VerifyError::UnknownValidator {
            index: u32::MAX,
            len: prev_validators.len(),
        })?;
    if header.time_ms != expected {
        return Err(VerifyError::WrongBftTime {
            expected,
            found: header.time_ms,
        });
    }
    Ok(())
}

/// Checks that a block's body is the one its header commits to: the transaction count
/// and Merkle root, and the hash of the carried last certificate. After this, the header
/// hash identifies the whole block, so a relay cannot swap transactions under a signed
/// header. (Whether the transactions *execute* to the header's roots is
/// [`verify_execution`]'s job.)
pub fn verify_block_contents(block: &Block) -> Result<(), VerifyError> {
    let hashes: Vec<Hash> = block.txs.iter().map(crate::Transaction::hash).collect();
    verify_block_contents_hashed(block, &hashes)
}

/// [`verify_block_contents`] for a caller that has hashed the block's transactions
/// already: `tx_hashes[i]` must be `block.txs[i].hash()`; a list of another length
/// fails.
pub fn verify_block_contents_hashed(block: &Block, tx_hashes: &[Hash]) -> Result<(), VerifyError> {
    if tx_hashes.len() != block.txs.len() {
        return Err(VerifyError::ExecutionMismatch {
            field: "tx_count",
            in_header: block.header.tx_count.to_string(),
            computed: block.txs.len().to_string(),
        });
    }
    verify_contents(&block.header, block.last_certificate.as_ref(), tx_hashes)
}

/// [`verify_block_contents`] for a compact block: its header commits to its transaction
/// hashes (count and root) and to its last certificate, so the block rebuilt from them is
/// the one the header names.
pub fn verify_compact_block_contents(block: &CompactBlock) -> Result<(), VerifyError> {
    verify_contents(
        &block.header,
        block.last_certificate.as_ref(),
        &block.tx_hashes,
    )
}

fn verify_contents(
    header: &Header,
    last_certificate: Option<&Certificate>,
    tx_hashes: &[Hash],
) -> Result<(), VerifyError> {
    verify_tx_count(header, tx_hashes.len())?;
    expect_hash(
        "transaction root",
        header.tx_root,
        crate::TxTree::new(tx_hashes).root(),
    )?;
    verify_carried_certificate(header, last_certificate)
}

/// The header counts `count` transactions: the part of [`verify_block_contents`] that a
/// store comparing a block's transactions with their execution checks as well.
pub fn verify_tx_count(header: &Header, count: usize) -> Result<(), VerifyError> {
    if header.tx_count as usize != count {
        return Err(VerifyError::ExecutionMismatch {
            field: "tx_count",
            in_header: header.tx_count.to_string(),
            computed: count.to_string(),
        });
    }
    Ok(())
}

/// The part of [`verify_block_contents`] that is not about transactions: the header
/// commits to the last certificate its block carries (or to none). For a caller that
/// checks a block's transactions another way, such as a store that compares them with
/// their execution.
pub fn verify_carried_certificate(
    header: &Header,
    last_certificate: Option<&Certificate>,
) -> Result<(), VerifyError> {
    let carried = last_certificate.map_or(Hash::ZERO, Certificate::hash);
    expect_hash(
        "last certificate hash",
        header.last_certificate_hash,
        carried,
    )
}

/// Checks the header's roots against the result of re-executing its block.
pub fn verify_execution(header: &Header, exec: &Execution) -> Result<(), VerifyError> {
    let mismatch = |field, in_header: String, computed: String| {
        Err(VerifyError::ExecutionMismatch {
            field,
            in_header,
            computed,
        })
    };
    if header.tx_count != exec.tx_count {
        return mismatch(
            "tx_count",
            header.tx_count.to_string(),
            exec.tx_count.to_string(),
        );
    }
    for (field, h, c) in [
        ("tx_root", header.tx_root, exec.tx_root),
        ("log_root", header.log_root, exec.log_root),
        ("state_root", header.state_root, exec.state_root),
    ] {
        if h != c {
            return mismatch(field, h.to_hex(), c.to_hex());
        }
    }
    if header.log_size != exec.log_size {
        return mismatch(
            "log_size",
            header.log_size.to_string(),
            exec.log_size.to_string(),
        );
    }
    Ok(())
}

/// Checks that the transaction `tx_hash` is at `index` of the block of `header`.
pub fn verify_tx_inclusion(
    header: &Header,
    tx_hash: &Hash,
    index: u32,
    proof: &[Hash],
) -> Result<(), VerifyError> {
    verify_inclusion(
        TreeHasher::TX_TREE,
        index as u64,
        header.tx_count as u64,
        tx_hash,
        proof,
        &header.tx_root,
    )
    .map_err(VerifyError::TxProof)
}

/// Checks that `tx_hash` is entry `log_index` of the log certified by `header`.
pub fn verify_log_inclusion(
    header: &Header,
    tx_hash: &Hash,
    log_index: u64,
    proof: &[Hash],
) -> Result<(), VerifyError> {
    verify_inclusion(
        TreeHasher::LOG_TREE,
        log_index,
        header.log_size,
        tx_hash,
        proof,
        &header.log_root,
    )
    .map_err(VerifyError::LogInclusion)
}

/// Checks that the log of `new` extends the log of `old` (it only grew).
pub fn verify_log_consistency(
    old: &Header,
    new: &Header,
    proof: &[Hash],
) -> Result<(), VerifyError> {
    verify_consistency(
        TreeHasher::LOG_TREE,
        old.log_size,
        &old.log_root,
        new.log_size,
        &new.log_root,
        proof,
    )
    .map_err(VerifyError::LogConsistency)
}

/// Checks that `key` in `namespace` has `value` (`None`: is absent) in the state
/// certified by `header`.
pub fn verify_state(
    header: &Header,
    namespace: Namespace,
    key: &[u8],
    value: Option<&[u8]>,
    proof: &StateProof,
) -> Result<(), VerifyError> {
    verify_state_proof(&header.state_root, &state_key(namespace, key), value, proof)?;
    Ok(())
}
