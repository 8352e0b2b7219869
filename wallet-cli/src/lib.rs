//! `pyralog`: keys, notarization receipts that verify offline, and verified queries.
//!
//! - [`cli`]: the command line (`main_with_args`), also run by `pyralog-testnet wallet`;
//! - [`light`]: the light client (trusted header per chain, witnesses, fork alarms);
//! - [`query`]: reads checked against the trusted head with the ledger's functions;
//! - [`client`]: JSON-RPC, with answers decoded from their canonical bytes;
//! - [`home`]: the wallet directory.
//!
//! docs/WALLET.md describes the commands; docs/RECEIPTS.md the receipt format.

pub mod cli;
pub mod client;
pub mod error;
pub mod home;
pub mod light;
pub mod query;

pub use error::WalletError;
