//! Order blocks in a Byzantine environment with pluggable, deterministic consensus engines.
//!
//! - [`engine`]: the [`Engine`] contract every algorithm implements and the node drives.
//! - [`tendermint`]: Tendermint (Buchman, Kwon, Milosevic 2018, Algorithm 1).
//! - [`signer`]: the signer with a crash-safe double-sign guard that every engine signs
//!   through.
//! - [`proposer`]: proposer rotation weighted by voting power.
//! - [`sim`]: the deterministic simulator that runs real engines under crashes,
//!   partitions, lossy links and Byzantine validators, and checks safety on every run.
//!
//! Like `ledger`, this crate reads no clock, disk or global randomness and never spawns:
//! time, persistence and randomness come in through parameters and traits (a clippy
//! `disallowed-methods` list keeps it so).

pub mod engine;
pub mod proposer;
pub mod signer;
pub mod sim;
pub mod tendermint;

pub use engine::{Carried, Engine, Input, Output, Timeout};
pub use signer::{LastSigned, MemSignerStore, Signer, SignerError, SignerStore, Step};
