//! What can go wrong, and the exit status each kind gives.

use std::path::PathBuf;

/// A failed command. Each kind has its own exit status (see [`WalletError::exit_code`]).
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// Bad usage or input that cannot be read: exit 2.
    #[error("{0}")]
    Usage(String),
    /// A check failed: a receipt, a proof, a certificate, or an answer of the server that
    /// does not verify. Exit 1.
    #[error("{0}")]
    Check(String),
    /// Certified data contradicts the trusted history: exit 3. The evidence is saved.
    #[error("FORK ALARM: {summary}\nevidence saved to {}", evidence.display())]
    Fork {
        /// What contradicts what.
        summary: String,
        /// The evidence file.
        evidence: PathBuf,
    },
    /// The node could not be reached, refused a transaction, or timed out: exit 4.
    #[error("{0}")]
    Node(String),
}

impl WalletError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            WalletError::Check(_) => 1,
            WalletError::Usage(_) => 2,
            WalletError::Fork { .. } => 3,
            WalletError::Node(_) => 4,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = WalletError> = std::result::Result<T, E>;

/// A usage or input error.
pub fn usage(msg: impl Into<String>) -> WalletError {
    WalletError::Usage(msg.into())
}

/// A failed check.
pub fn check(msg: impl Into<String>) -> WalletError {
    WalletError::Check(msg.into())
}

/// A node error.
pub fn node(msg: impl Into<String>) -> WalletError {
    WalletError::Node(msg.into())
}
