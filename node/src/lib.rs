//! Run a Pyralog validator or full node: networking, consensus, storage and RPC wired
//! together.
//!
//! - [`home`]: the home directory (`init`, keys, genesis, config).
//! - [`config`]: `config.toml`, with defaults and flag overrides.
//! - [`chain`]: the committed chain on storage; block building and validation with the
//!   ledger's own checks.
//! - [`mempool`]: the bounded transaction pool and its rejection reasons.
//! - [`driver`]: the task that runs the consensus engine and carries out its outputs in
//!   order, commits, and syncs blocks from peers.
//! - [`wire`]: transaction batches and the block sync protocol.
//! - [`rpc`]: JSON-RPC over HTTP and WebSocket (docs/RPC.md).
//! - [`metrics`]: Prometheus metrics.
//! - [`node`]: `start`, wiring it all.
//! - [`audit`]: the auditor, from outside through RPC or as a node mode.
//! - [`cli`]: the command line.

pub mod assemble;
pub mod audit;
pub mod chain;
pub mod cli;
pub mod config;
pub mod driver;
pub mod home;
pub mod mempool;
pub mod metrics;
pub mod node;
pub mod proven;
pub mod rpc;
pub mod wire;
