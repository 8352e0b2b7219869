//! Order blocks in a Byzantine environment with pluggable, deterministic consensus engines.
//!
//! Not built yet: this crate compiles so the workspace has its final shape. Its contents
//! arrive with the issue that introduces it (see the issue tracker and ARCHITECTURE.md).
