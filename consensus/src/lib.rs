//! Order blocks in a Byzantine environment with pluggable, deterministic consensus engines.
//!
//! Built so far: [`signer`], the signer with a crash-safe double-sign guard that every
//! engine signs through. Coming next (see the issue tracker): the `Engine` contract, the
//! Tendermint, PBFT and Raft engines, and the deterministic simulator.
//!
//! Like `ledger`, this crate reads no clock, disk or global randomness and never spawns:
//! time, persistence and randomness come in through parameters and traits.

pub mod signer;

pub use signer::{LastSigned, MemSignerStore, Signer, SignerError, SignerStore, Step};
