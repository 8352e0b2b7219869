//! Persist Pyralog blocks, certificates, indexes and Merkle trees in sled, and export them as Apache Arrow.
//!
//! [`Store`] is the narrow interface the rest of Pyralog uses; [`sled::SledStore`] is its
//! implementation. A committed block (block, certificate, transaction index or, until its
//! run is written, the block it is read back from, log-tree and state-tree nodes, and the
//! new tip) is written as one atomic batch and flushed before
//! [`Store::commit_block`] returns, so a commit that was reported survives a crash and a
//! crash never leaves half a block. Stores also implement the ledger's node-reading
//! traits, so proofs at any committed height are built straight from storage.
//! [`arrow`] exports blocks and transactions for analytics.

pub mod arrow;
pub mod recent;
pub mod sled;
pub mod txindex;
pub mod upper;

use pyralog_ledger::log::LogNodes;
use pyralog_ledger::state::{StateNodes, Subtree};
use pyralog_ledger::{Block, Certificate, Execution, Hash, Header, Tip};

pub use crate::sled::SledStore;

/// Errors of the storage crate.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database failed (I/O, corruption detected by sled).
    #[error("database: {0}")]
    Db(#[from] ::sled::Error),
    /// Stored bytes that do not decode: the store is corrupt.
    #[error("corrupt {what} in the store: {reason}")]
    Corrupt {
        /// What was read.
        what: &'static str,
        /// Why it does not decode.
        reason: String,
    },
    /// A block that does not extend the stored tip.
    #[error("cannot commit block {height}: the store's tip is at height {tip}")]
    NotNext {
        /// The block's height.
        height: u64,
        /// The stored tip's height.
        tip: u64,
    },
    /// A block whose execution result does not match it.
    #[error("execution does not match block {height}: {reason}")]
    ExecutionMismatch {
        /// The block's height.
        height: u64,
        /// What differs.
        reason: String,
    },
    /// The block does not hold the transactions its header counts, or not the ones
    /// executed: another copy of the block than the one executed (its header and
    /// execution agree), so the block's fault, not the store's.
    #[error("block {height} does not hold the transactions executed: {reason}")]
    TxMismatch {
        /// The block's height.
        height: u64,
        /// What differs.
        reason: pyralog_ledger::VerifyError,
    },
    /// A database written in another storage format.
    #[error(
        "the database in {} has storage format {found}, and this build reads formats {} to {}. \
         A full node can start over with the directory moved away (it syncs from its peers); \
         a validator keeps its double-sign record there, so it starts over only on a new chain",
        path.display(),
        crate::sled::OLDEST_FORMAT,
        crate::sled::FORMAT
    )]
    Format {
        /// The database directory.
        path: std::path::PathBuf,
        /// The format found.
        found: String,
    },
    /// A database written by a newer build, in a storage format this one does not know.
    #[error(
        "the database in {} has storage format {found}, newer than this build reads \
         (formats {} to {}): it was written by a newer build, so run that build or a later one; \
         nothing converts a database back",
        path.display(),
        crate::sled::OLDEST_FORMAT,
        crate::sled::FORMAT
    )]
    NewerFormat {
        /// The database directory.
        path: std::path::PathBuf,
        /// The format found.
        found: u8,
    },
    /// Writing an export failed.
    #[error("export: {0}")]
    Export(String),
}

/// Where a committed transaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TxLocation {
    /// Height of its block.
    pub height: u64,
    /// Index in the block.
    pub index: u32,
    /// Position in the log.
    pub log_index: u64,
}

/// The persistence Pyralog's node needs. Every method is safe to call concurrently with
/// readers; commits are serialised by the caller (one committer).
pub trait Store: LogNodes + StateNodes + Send + Sync {
    /// The committed tip (height 0 and empty roots before block 1).
    fn tip(&self) -> Result<Tip, StorageError>;

    /// Atomically stores block, certificate, indexes, tree nodes and the new tip, and
    /// makes them durable before returning. The block must be at `tip().height + 1`.
    fn commit_block(
        &self,
        block: &Block,
        cert: &Certificate,
        execution: &Execution,
    ) -> Result<(), StorageError>;

    /// The state tree after the block at `height` (the empty tree at 0): its root hash,
    /// which is the header's `state_root`, and where the root node is stored. Proofs at
    /// `height` start there.
    fn state_root(&self, height: u64) -> Result<Option<Subtree>, StorageError>;

    /// The state tree of `header`, a committed header of this store: the stored root at
    /// its height, which must be the header's `state_root`.
    fn state_tree_of(&self, header: &Header) -> Result<Subtree, StorageError> {
        match self.state_root(header.height)? {
            Some(root) if root.hash == header.state_root => Ok(root),
            _ => Err(StorageError::Corrupt {
                what: "state root",
                reason: format!(
                    "the stored state root at height {} is missing or not the header's",
                    header.height
                ),
            }),
        }
    }

    /// The block at `height`.
    fn block(&self, height: u64) -> Result<Option<Block>, StorageError>;

    /// The header at `height`.
    fn header(&self, height: u64) -> Result<Option<Header>, StorageError>;

    /// The certificate of the header at `height`.
    fn certificate(&self, height: u64) -> Result<Option<Certificate>, StorageError>;

    /// Where the transaction `tx_hash` was committed.
    fn tx_location(&self, tx_hash: &Hash) -> Result<Option<TxLocation>, StorageError>;

    /// A node-local value (signer state, consensus WAL, peer data), or `None`.
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;

    /// Durably sets a node-local value (flushed before returning).
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StorageError>;

    /// Sets node-local values, in order, durable only once
    /// [`Store::sync`] (or a commit) returns: for state written more often than what
    /// depends on it leaves the node (a validator's consensus state and signer position,
    /// which must be on disk before its vote is sent, not at every step).
    fn put_meta_unsynced(&self, entries: &[(&str, &[u8])]) -> Result<(), StorageError>;

    /// Makes every write so far durable.
    fn sync(&self) -> Result<(), StorageError>;
}
