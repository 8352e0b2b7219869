//! Pyralog's data model and its proofs: canonical encoding, transactions, blocks, certificates, Merkle log and state trees, execution, verification.
//!
//! This crate is pure: no I/O, no clock, no async, no global randomness. The node, the
//! wallet's light client, the auditor and the consensus simulator all use it, so they
//! agree on every byte and every rule.
//!
//! - [`codec`]: the canonical binary encoding of everything hashed or signed.
//! - [`Transaction`], [`Header`], [`Block`], [`Vote`], [`Certificate`], [`ValidatorSet`],
//!   [`Genesis`]: the ledger's objects.
//! - [`merkle`]: RFC 9162 tree shape and proof verification; each block's [`TxTree`].
//! - [`log`]: the append-only log tree of every transaction, with inclusion and
//!   consistency proofs at any size.
//! - [`state`]: the versioned sparse Merkle tree with proofs of values and of absence.
//! - [`exec`]: deterministic execution of blocks; [`keyfilter`]: the filter of present
//!   state keys that answers absent reads without a walk.
//! - [`evidence`]: proof that a validator signed two conflicting votes.
//! - [`verify`]: the checks of headers, certificates and proofs; [`receipt`]: receipts;
//!   [`light`]: when a light client may trust a header.

pub mod block;
pub mod chain;
pub mod checkpoint;
pub mod codec;
pub mod evidence;
pub mod exec;
pub mod keyfilter;
pub mod light;
pub mod log;
pub mod merkle;
pub mod receipt;
pub mod state;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod tx;
pub mod verify;

pub use block::{Block, Certificate, CommitSig, CompactBlock, Header, Vote, VoteKind};
pub use chain::{
    ChainId, ChainParams, EngineId, Genesis, GenesisValidator, Validator, ValidatorSet,
};
pub use checkpoint::{Checkpoint, SignedCheckpoint};
pub use codec::{CodecError, Decode, Encode};
pub use evidence::{DuplicateVote, EvidenceError};
pub use exec::{
    BlockContext, BlockExecutor, ExecError, Execution, KvRecord, Tip, TipCache, TxError,
    apply_block, apply_block_cached, apply_block_hashed,
};
pub use merkle::{ProofError, TxTree};
pub use pyralog_crypto::Hash;
pub use receipt::{ProvenNotarization, Receipt, ReceiptError, verify_receipt};
pub use state::{Namespace, StateProof};
pub use tx::{
    Payload, Transaction, verify_signatures_here, verify_signatures_of, verify_tx_signatures,
};
pub use verify::VerifyError;

/// Failure to read the stores that hold tree nodes (storage implements the read traits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A node that must exist is missing: the store is incomplete or corrupt.
    #[error("missing {what} at {at}")]
    MissingNode {
        /// Which kind of node.
        what: &'static str,
        /// Where.
        at: String,
    },
    /// A request beyond what is stored.
    #[error("{what} {value} is out of range (limit {limit})")]
    OutOfRange {
        /// What was asked for.
        what: &'static str,
        /// The value asked for.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// Stored bytes that do not decode.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// What was read.
        what: &'static str,
        /// Why it is corrupt.
        reason: String,
    },
    /// The storage backend failed.
    #[error("storage backend: {0}")]
    Backend(String),
}

/// Serde helper: byte vectors as lower-case hex strings.
pub mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes bytes as hex.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    /// Reads hex into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}
