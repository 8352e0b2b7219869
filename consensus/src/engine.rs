//! The engine contract: the one interface the node (and the simulator) drives, whatever
//! the consensus algorithm.
//!
//! An engine is a deterministic state machine. The host feeds it one [`Input`] at a time
//! together with the current time, and gets back an ordered list of [`Output`]s to carry
//! out **in order**: an engine emits [`Output::Persist`] before the sends that depend on
//! it, so a host that executes outputs in order never sends a message whose state it could
//! forget in a crash. Signatures go through the [`crate::Signer`], which persists before it
//! releases them.
//!
//! Messages are opaque bytes to the host: each engine defines and decodes its own wire
//! format (size-limited, canonical), and authenticates every message by the validator
//! signature inside it. The transport is never trusted for authenticity, so the host does
//! not say who sent a message.
//!
//! Blocks and certificates are the ledger's: whatever the engine, a decision is a
//! [`Block`] with a [`Certificate`] that [`pyralog_ledger::verify::verify_certificate`]
//! accepts, so light clients check every engine's blocks the same way.

use pyralog_ledger::{Block, Certificate, CodecError, CompactBlock, DuplicateVote, Hash};

use crate::signer::SignerError;

/// A timer the engine asked for; the host hands it back in [`Input::Timeout`] when due.
///
/// The host treats it as opaque: it only stores it and returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timeout {
    /// Height the timer belongs to.
    pub height: u64,
    /// Round (view, term) the timer belongs to.
    pub round: u32,
    /// Engine-defined kind of timer.
    pub kind: u8,
}

/// Something that happened, handed to the engine with the current time.
#[derive(Clone, Debug)]
pub enum Input {
    /// Start (or restart after a crash) at `height`, the first height not committed in the
    /// host's store, with the engine state last persisted through [`Output::Persist`]
    /// (`None` on a fresh start or if nothing was persisted). Persisted state for another
    /// height is ignored.
    Start {
        /// The first uncommitted height.
        height: u64,
        /// The bytes of the last [`Output::Persist`].
        persisted: Option<Vec<u8>>,
    },
    /// A consensus message received from the network (engine-defined bytes).
    Message(Vec<u8>),
    /// A timer scheduled with [`Output::ScheduleTimeout`] fired.
    Timeout(Timeout),
    /// The block asked for with [`Output::RequestProposal`] is ready.
    ProposalReady {
        /// The height it was requested for.
        height: u64,
        /// The round it was requested for.
        round: u32,
        /// The block, built and executed by the host on its committed chain.
        block: Box<Block>,
    },
    /// The verdict on a block sent out with [`Output::ValidateBlock`].
    BlockValidated {
        /// The block's height.
        height: u64,
        /// The block's header hash.
        block: Hash,
        /// Whether it is valid on the host's committed chain.
        valid: bool,
    },
}

/// Something the host must do, in the order given.
#[derive(Clone, Debug)]
pub enum Output {
    /// Durably store these bytes (replacing the previous ones) before carrying out the
    /// next outputs; hand them back in [`Input::Start`] after a restart.
    Persist(Vec<u8>),
    /// Send a message to the validator with this index in the validator set.
    Send {
        /// The validator's canonical index.
        to: u32,
        /// The message.
        message: Vec<u8>,
    },
    /// Send a message to every validator.
    Broadcast(Vec<u8>),
    /// Call back with [`Input::Timeout`] `after_ms` milliseconds from now.
    ScheduleTimeout {
        /// The timer.
        timeout: Timeout,
        /// Delay in milliseconds.
        after_ms: u64,
    },
    /// Build a block for `height` (on the committed chain, from the mempool) and hand it
    /// back with [`Input::ProposalReady`].
    RequestProposal {
        /// The height.
        height: u64,
        /// The round.
        round: u32,
    },
    /// Check a block (header links to the committed chain, last certificate and BFT time,
    /// transactions and execution roots) and answer with [`Input::BlockValidated`].
    ValidateBlock(Box<Block>),
    /// The block is decided: store it with its certificate atomically.
    Commit {
        /// The decided block.
        block: Box<Block>,
        /// The quorum certificate that decided it.
        certificate: Certificate,
    },
    /// The validator with this index is behind, at `height`, which this node has committed:
    /// send it the committed blocks and certificates from `height` on (the engine's
    /// decision message, see the engine's `decision_message`), as sync would.
    SyncPeer {
        /// The lagging validator's index.
        to: u32,
        /// Its height.
        height: u64,
    },
    /// A validator misbehaved; gossip and store the evidence.
    Evidence(Box<DuplicateVote>),
    /// The signer refused to sign (the engine carried on without that message); log it.
    SignerRefused(SignerError),
    /// A message was rejected (undecodable, bad signature, unknown validator...). The
    /// host can score the peer that relayed it down.
    Rejected {
        /// Why.
        reason: String,
    },
}

/// What a received message carries ([`Engine::carried`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Carried {
    /// Hand it to the engine as it is.
    Message,
    /// A compact message naming this block's transactions by hash, for the engine's
    /// current height or the next: rebuild the block, then [`Engine::expand_message`].
    Block {
        /// The block, its transactions by hash (checked against its header).
        block: Box<CompactBlock>,
        /// The round (view, term) it is proposed in, which orders what the host waits
        /// for: the engine's current height and round first.
        round: u32,
    },
    /// A compact message the engine would drop anyway (another height, a round too far
    /// ahead): drop it without fetching anything.
    Stale,
}

/// A consensus engine, driven by the host one input at a time.
pub trait Engine {
    /// Handles one input at time `now_ms` (milliseconds since the Unix epoch; the engine
    /// never reads a clock) and returns what to do, in order.
    fn handle(&mut self, now_ms: u64, input: Input) -> Vec<Output>;

    /// The height being decided.
    fn height(&self) -> u64;

    /// The current round (view, term).
    fn round(&self) -> u32;

    /// The message that carries a committed block and its certificate to a lagging
    /// validator (the answer to [`Output::SyncPeer`]).
    fn decision_message(&self, block: &Block, certificate: &Certificate) -> Vec<u8>;

    /// The wire form of an outgoing message whose block the receivers can rebuild from
    /// their own transactions (the block's transactions named by hash), with that block,
    /// which the host keeps to answer peers that miss some of them. `None` to send the
    /// message as it is. Hosts whose peers gossip transactions call it on every
    /// [`Output::Send`] and [`Output::Broadcast`]; engines without such a form keep the
    /// default.
    fn compact_message(&self, _message: &[u8]) -> Option<(Vec<u8>, Block)> {
        None
    }

    /// What a received message carries: a compact message's block, which the host
    /// rebuilds before [`Engine::expand_message`], or a message to hand to the engine as
    /// it is. An error for a compact message that does not decode or is not signed by its
    /// author (the host fetches nothing for it, and may lower the sender's score).
    fn carried(&self, _wire: &[u8]) -> Result<Carried, CodecError> {
        Ok(Carried::Message)
    }

    /// The message to hand to the engine for the received `wire`, given the `block` the
    /// host rebuilt from the hashes of [`Carried::Block`].
    fn expand_message(&self, _wire: &[u8], _block: &Block) -> Result<Vec<u8>, CodecError> {
        Err(CodecError::Invalid {
            what: "consensus message",
            reason: "this engine has no compact messages".into(),
        })
    }
}
