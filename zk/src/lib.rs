//! Verify and produce the Groth16 zero-knowledge proofs that Pyralog transactions carry.
//!
//! Not built yet: this crate compiles so the workspace has its final shape. Its contents
//! arrive with the issue that introduces it (see the issue tracker and ARCHITECTURE.md).
