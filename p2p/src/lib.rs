//! Carry Pyralog's gossip and block sync over libp2p inside userspace WireGuard tunnels.
//!
//! Not built yet: this crate compiles so the workspace has its final shape. Its contents
//! arrive with the issue that introduces it (see the issue tracker and ARCHITECTURE.md).
