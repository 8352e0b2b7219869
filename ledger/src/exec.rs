//! Deterministic execution of transactions against the state and the log.
//!
//! Rules:
//! - a transaction's chain id must be the chain's;
//! - nonces are per sender and strictly sequential from 0: a nonce below the next
//!   expected one is a replay, above it a gap; both are typed errors;
//! - `Notarize` records `digest → (tx hash, height, index, log index, time, sender)`; a
//!   digest is notarized once, later attempts fail with the first record's position;
//! - `Put` sets a key, `Delete` removes a key that has a value (otherwise it fails). Both
//!   write a [`KvRecord`] that names the height of the key's previous version, so the
//!   versions of a key form a certified back-linked list: a client can walk a key's whole
//!   history from any certified state and a server cannot leave a version out. A delete
//!   leaves a tombstone record (value `None`);
//! - size limits are those of [`crate::tx`].
//!
//! A failed transaction changes nothing, so a proposer can skip it and go on
//! ([`BlockExecutor::apply`]); a block whose transactions do not all apply is invalid
//! ([`apply_block`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use pyralog_crypto::PublicKey;
use pyralog_crypto::recent::Recent;
use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, Decode, Decoder, Encode};
use crate::keyfilter::KeyFilter;
use crate::log::{LogNodes, NodeId};
use crate::merkle::TxTree;
use crate::state::{Namespace, NodeRef, StateNode, StateNodes, Subtree, state_key};
use crate::{
    Block, Certificate, ChainId, EngineId, Genesis, Hash, Header, Payload, StoreError, Transaction,
    ValidatorSet, log, state,
};

/// The committed chain state a block executes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tip {
    /// Height of the last committed block (0 before block 1).
    pub height: u64,
    /// Number of log entries.
    pub log_size: u64,
    /// State root.
    pub state_root: Hash,
    /// Where the state root's node is stored (zero for the empty state).
    pub state_root_at: NodeRef,
}

impl Tip {
    /// The state before block 1: empty log, empty state.
    pub fn genesis() -> Tip {
        Tip {
            height: 0,
            log_size: 0,
            state_root: state::EMPTY_ROOT,
            state_root_at: NodeRef::default(),
        }
    }

    /// The state tree at this tip.
    pub fn state(&self) -> Subtree {
        Subtree {
            hash: self.state_root,
            at: self.state_root_at,
        }
    }
}

/// A sender's account state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The nonce its next transaction must carry.
    pub next_nonce: u64,
}

impl Encode for Account {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(1);
        out.extend_from_slice(&self.next_nonce.to_be_bytes());
    }
}

impl Decode for Account {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.version("account", 1)?;
        Ok(Account {
            next_nonce: d.u64("next nonce")?,
        })
    }
}

/// What the state records for a notarized digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotarizationRecord {
    /// Hash of the notarizing transaction.
    pub tx_hash: Hash,
    /// Height of its block.
    pub height: u64,
    /// Its index in the block.
    pub index: u32,
    /// Its position in the log.
    pub log_index: u64,
    /// The block's BFT time.
    pub time_ms: u64,
    /// The sender.
    pub sender: PublicKey,
}

impl Encode for NotarizationRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(1);
        self.tx_hash.encode(out);
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.log_index.to_be_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        out.extend_from_slice(self.sender.as_bytes());
    }
}

impl Decode for NotarizationRecord {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.version("notarization record", 1)?;
        Ok(NotarizationRecord {
            tx_hash: d.hash("tx hash")?,
            height: d.u64("height")?,
            index: d.u32("index")?,
            log_index: d.u64("log index")?,
            time_ms: d.u64("time")?,
            sender: d.public_key("sender")?,
        })
    }
}

/// What the state records for a key of the key-value namespace: its value (or `None`
/// once deleted), the height that wrote this version, and the height of the version
/// before it (0 for the first). Several writes of one key in one block make one version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRecord {
    /// The value; `None` after a `Delete` (a tombstone).
    pub value: Option<Vec<u8>>,
    /// Height of the block that wrote this version.
    pub height: u64,
    /// Height of the previous version, 0 if this is the first.
    pub prev_height: u64,
}

impl Encode for KvRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(1);
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&self.prev_height.to_be_bytes());
        match &self.value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                crate::codec::put_bytes(out, v);
            }
        }
    }
}

impl Decode for KvRecord {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.version("kv record", 1)?;
        let height = d.u64("height")?;
        let prev_height = d.u64("previous height")?;
        let value = if d.bool("has value")? {
            Some(d.bytes("value", crate::tx::MAX_VALUE_BYTES)?.to_vec())
        } else {
            None
        };
        if prev_height >= height {
            return Err(CodecError::Invalid {
                what: "kv record",
                reason: format!("previous height {prev_height} is not below height {height}"),
            });
        }
        Ok(KvRecord {
            value,
            height,
            prev_height,
        })
    }
}

/// Why a transaction cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// The transaction names another chain.
    #[error("transaction is for chain {found}, this is {expected}")]
    WrongChain {
        /// This chain.
        expected: ChainId,
        /// The transaction's chain.
        found: ChainId,
    },
    /// The nonce was already used.
    #[error("nonce {found} was already used: the sender's next nonce is {expected}")]
    NonceReplayed {
        /// The next nonce the sender must use.
        expected: u64,
        /// The nonce found.
        found: u64,
    },
    /// The nonce skips ahead.
    #[error("nonce {found} skips ahead: the sender's next nonce is {expected}")]
    NonceGap {
        /// The next nonce the sender must use.
        expected: u64,
        /// The nonce found.
        found: u64,
    },
    /// The digest is already notarized.
    #[error("digest already notarized at height {} index {}", .0.height, .0.index)]
    AlreadyNotarized(Box<NotarizationRecord>),
    /// The sender used every nonce up to `u64::MAX`.
    #[error("the sender's nonces are exhausted")]
    NonceExhausted,
    /// `Delete` of a key that has no value.
    #[error("key not found")]
    KeyNotFound,
    /// A field over its size limit.
    #[error("transaction breaks a limit: {0}")]
    Limit(#[from] CodecError),
}

/// Why a block could not be executed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// A transaction of the block is invalid.
    #[error("transaction {index} of the block is invalid: {error}")]
    Tx {
        /// Its index in the block.
        index: usize,
        /// Why.
        error: TxError,
    },
    /// The block has more transactions than one block may hold.
    #[error("block has {count} transactions, over the limit of {max}")]
    TooManyTxs {
        /// Transactions in the block.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Reading state or log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of executing a block: the roots its header must carry, and what to store.
#[derive(Clone, Debug)]
pub struct Execution {
    /// Merkle root of the block's transaction hashes.
    pub tx_root: Hash,
    /// Number of transactions.
    pub tx_count: u32,
    /// Log size after the block.
    pub log_size: u64,
    /// Log root after the block.
    pub log_root: Hash,
    /// State root after the block.
    pub state_root: Hash,
    /// Where the state root's node is stored: among `state_writes`, or an older node
    /// when the block changed no state.
    pub state_root_at: NodeRef,
    /// Hashes of the executed transactions, in order.
    pub tx_hashes: Vec<Hash>,
    /// Log nodes to store.
    pub log_writes: Vec<(NodeId, Hash)>,
    /// State nodes to store, at the block's height and indices 0, 1, 2... in order.
    pub state_writes: Vec<(Subtree, StateNode)>,
    /// Stored state nodes the block's tree no longer holds ([`state::Update::replaced`]):
    /// not part of what is committed, a hint for caches of the tip's nodes.
    pub state_replaced: Vec<NodeRef>,
    /// The state values the block set (`None`: removed), by key: not part of what is
    /// committed, what a [`TipCache`] needs to follow the tip ([`TipCache::advance`]).
    pub state_updates: BTreeMap<Hash, Option<Vec<u8>>>,
}

impl Execution {
    /// The state after this block.
    pub fn tip(&self, height: u64) -> Tip {
        Tip {
            height,
            log_size: self.log_size,
            state_root: self.state_root,
            state_root_at: self.state_root_at,
        }
    }
}

/// Executes transactions one at a time on top of a committed tip.
pub struct BlockExecutor<'a, S: ?Sized, L: ?Sized> {
    state: &'a S,
    log: &'a L,
    tip: Tip,
    chain_id: ChainId,
    height: u64,
    time_ms: u64,
    updates: BTreeMap<Hash, Option<Vec<u8>>>,
    tx_hashes: Vec<Hash>,
    values: Option<&'a TipCache>,
}

impl<'a, S: StateNodes + ?Sized, L: LogNodes + ?Sized> BlockExecutor<'a, S, L> {
    /// Starts block `tip.height + 1` with BFT time `time_ms`.
    pub fn new(state: &'a S, log: &'a L, tip: Tip, chain_id: ChainId, time_ms: u64) -> Self {
        let height = tip.height + 1;
        BlockExecutor {
            state,
            log,
            tip,
            chain_id,
            height,
            time_ms,
            updates: BTreeMap::new(),
            tx_hashes: Vec::new(),
            values: None,
        }
    }

    /// Reads the tip's values through `cache` before walking the state tree, and notes
    /// what it walked for. The cache answers only for the state it follows
    /// ([`TipCache::advance`]), so the results are those of the tree either way.
    pub fn with_cache(mut self, cache: &'a TipCache) -> Self {
        self.values = Some(cache);
        self
    }

    /// Number of transactions applied so far.
    pub fn len(&self) -> usize {
        self.tx_hashes.len()
    }

    /// Whether no transaction was applied yet.
    pub fn is_empty(&self) -> bool {
        self.tx_hashes.is_empty()
    }

    fn read(&self, key: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.updates.get(key) {
            return Ok(v.clone());
        }
        let Some(cache) = self.values else {
            return state::get(self.state, &self.tip.state(), key);
        };
        if let Some(v) = cache.get(&self.tip.state_root, key) {
            return Ok(v);
        }
        let value = state::get(self.state, &self.tip.state(), key)?;
        cache.note(&self.tip.state_root, key, &value);
        Ok(value)
    }

    fn read_decoded<T: Decode>(&self, key: &Hash) -> Result<Option<T>, StoreError> {
        self.read(key)?
            .map(|bytes| {
                T::from_bytes(&bytes).map_err(|e| StoreError::Corrupt {
                    what: "state value",
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// The next nonce of `sender` including this block's transactions so far.
    pub fn next_nonce(&self, sender: &PublicKey) -> Result<u64, StoreError> {
        let key = state_key(Namespace::Account, sender.as_bytes());
        Ok(self
            .read_decoded::<Account>(&key)?
            .map_or(0, |a| a.next_nonce))
    }

    /// The record of `digest`'s notarization, including this block's transactions so far.
    pub fn notarization(&self, digest: &Hash) -> Result<Option<NotarizationRecord>, StoreError> {
        self.read_decoded(&state_key(Namespace::Notarization, &digest.0))
    }

    /// The next version of a key whose current record is `current`: it links to the
    /// committed version or, when this block already wrote the key, to that write's own
    /// predecessor (one version per height).
    fn kv_version(&self, current: Option<&KvRecord>, value: Option<Vec<u8>>) -> KvRecord {
        let prev_height = match current {
            None => 0,
            Some(r) if r.height == self.height => r.prev_height,
            Some(r) => r.height,
        };
        KvRecord {
            value,
            height: self.height,
            prev_height,
        }
    }

    /// Applies `tx` (whose signature the caller has checked). On error nothing changes.
    pub fn apply(&mut self, tx: &Transaction) -> Result<(), ExecError> {
        self.apply_hashed(tx, tx.hash())
    }

    /// [`BlockExecutor::apply`] for a caller that has hashed `tx` already: `tx_hash` must
    /// be `tx.hash()`.
    pub fn apply_hashed(&mut self, tx: &Transaction, tx_hash: Hash) -> Result<(), ExecError> {
        let fail = |error: TxError| ExecError::Tx {
            index: self.tx_hashes.len(),
            error,
        };
        if tx.chain_id != self.chain_id {
            return Err(fail(TxError::WrongChain {
                expected: self.chain_id.clone(),
                found: tx.chain_id.clone(),
            }));
        }
        tx.payload
            .check_limits()
            .map_err(|e| fail(TxError::Limit(e)))?;
        let expected = self.next_nonce(&tx.sender)?;
        if tx.nonce < expected {
            return Err(fail(TxError::NonceReplayed {
                expected,
                found: tx.nonce,
            }));
        }
        if tx.nonce > expected {
            return Err(fail(TxError::NonceGap {
                expected,
                found: tx.nonce,
            }));
        }
        let next_nonce = expected
            .checked_add(1)
            .ok_or_else(|| fail(TxError::NonceExhausted))?;
        let index = self.tx_hashes.len() as u32;
        let (key, value) = match &tx.payload {
            Payload::Notarize { digest, .. } => {
                let key = state_key(Namespace::Notarization, &digest.0);
                if let Some(first) = self.read_decoded::<NotarizationRecord>(&key)? {
                    return Err(fail(TxError::AlreadyNotarized(Box::new(first))));
                }
                let record = NotarizationRecord {
                    tx_hash,
                    height: self.height,
                    index,
                    log_index: self.tip.log_size + index as u64,
                    time_ms: self.time_ms,
                    sender: tx.sender,
                };
                (key, Some(record.to_bytes()))
            }
            Payload::Put { key, value } => {
                let key = state_key(Namespace::Kv, key);
                let current = self.read_decoded::<KvRecord>(&key)?;
                let record = self.kv_version(current.as_ref(), Some(value.clone()));
                (key, Some(record.to_bytes()))
            }
            Payload::Delete { key } => {
                let key = state_key(Namespace::Kv, key);
                let current = self.read_decoded::<KvRecord>(&key)?;
                if current.as_ref().is_none_or(|r| r.value.is_none()) {
                    return Err(fail(TxError::KeyNotFound));
                }
                let record = self.kv_version(current.as_ref(), None);
                (key, Some(record.to_bytes()))
            }
        };
        self.updates.insert(key, value);
        let account = Account { next_nonce };
        self.updates.insert(
            state_key(Namespace::Account, tx.sender.as_bytes()),
            Some(account.to_bytes()),
        );
        self.tx_hashes.push(tx_hash);
        Ok(())
    }

    /// Computes the roots and the nodes to store.
    pub fn finish(self) -> Result<Execution, StoreError> {
        let tx_root = TxTree::new(&self.tx_hashes).root();
        let (log_writes, log_root) =
            log::append_with_root(self.log, self.tip.log_size, &self.tx_hashes)?;
        let state::Update {
            root: state_root,
            writes: state_writes,
            replaced: state_replaced,
        } = state::update_tracked(self.state, &self.tip.state(), self.height, &self.updates)?;
        Ok(Execution {
            tx_root,
            tx_count: self.tx_hashes.len() as u32,
            log_size: self.tip.log_size + self.tx_hashes.len() as u64,
            log_root,
            state_root: state_root.hash,
            state_root_at: state_root.at,
            tx_hashes: self.tx_hashes,
            log_writes,
            state_writes,
            state_replaced,
            state_updates: self.updates,
        })
    }
}

/// Executes every transaction of `block` on `tip`; fails on the first invalid one.
/// Signatures are not checked here: the caller verifies them once (batched) and
/// remembers them by hash.
pub fn apply_block<S: StateNodes + ?Sized, L: LogNodes + ?Sized>(
    state: &S,
    log: &L,
    tip: &Tip,
    block: &Block,
) -> Result<Execution, ExecError> {
    apply_block_cached(state, log, tip, block, None)
}

/// [`apply_block`], reading the tip's values through `cache` when there is one
/// ([`BlockExecutor::with_cache`]): the same result, fewer tree walks.
pub fn apply_block_cached<S: StateNodes + ?Sized, L: LogNodes + ?Sized>(
    state: &S,
    log: &L,
    tip: &Tip,
    block: &Block,
    cache: Option<&TipCache>,
) -> Result<Execution, ExecError> {
    let hashes: Vec<Hash> = block.txs.iter().map(Transaction::hash).collect();
    apply_block_hashed(state, log, tip, block, &hashes, cache)
}

/// [`apply_block_cached`] for a caller that has hashed the block's transactions already:
/// `tx_hashes[i]` must be `block.txs[i].hash()`. A list of another length is ignored and
/// the hashes computed here.
pub fn apply_block_hashed<S: StateNodes + ?Sized, L: LogNodes + ?Sized>(
    state: &S,
    log: &L,
    tip: &Tip,
    block: &Block,
    tx_hashes: &[Hash],
    cache: Option<&TipCache>,
) -> Result<Execution, ExecError> {
    if tx_hashes.len() != block.txs.len() {
        return apply_block_cached(state, log, tip, block, cache);
    }
    if block.txs.len() > crate::block::MAX_BLOCK_TXS {
        return Err(ExecError::TooManyTxs {
            count: block.txs.len(),
            max: crate::block::MAX_BLOCK_TXS,
        });
    }
    let mut exec = BlockExecutor::new(
        state,
        log,
        tip.clone(),
        block.header.chain_id.clone(),
        block.header.time_ms,
    );
    if let Some(cache) = cache {
        exec = exec.with_cache(cache);
    }
    for (tx, hash) in block.txs.iter().zip(tx_hashes) {
        exec.apply_hashed(tx, *hash)?;
    }
    Ok(exec.finish()?)
}

/// The values of one state (the committed tip's), by key, as far as they were read: a
/// read at the tip costs a hash lookup instead of a walk down the state tree.
///
/// The cache follows one state, named by its root hash. It answers only reads of that
/// state, so a stale answer needs a commit that did not go through
/// [`TipCache::advance`]: then the roots differ and it answers nothing. `advance` with the
/// block's [`Execution`] moves it to the next state, setting what the block wrote; from
/// any other state it starts empty. Keys the block did not write keep their values,
/// which is what makes the entries outlive a block. Absent keys are kept too (a new
/// notarization's digest is read at admission, then again when a block executes it).
///
/// Bounded: at most `2 × capacity` entries ([`Recent`]), each a value of at most
/// [`TipCache::MAX_VALUE_BYTES`]: a longer one (a large `Put`) is read from the tree each
/// time, so the memory held does not depend on what users store.
///
/// **Absent keys without a walk.** The cache can also keep a [`KeyFilter`] of every key
/// present in its state: then a key the filter has never seen is answered absent with
/// no walk and nothing held. The filter is built from the store by its owner
/// ([`TipCache::begin_filter`], then [`TipCache::finish_filter`] with every key present
/// at the state the build began at, or a superset); meanwhile, and afterwards, `advance`
/// adds the keys each block sets. Keys are never taken out (a removed key only costs a
/// walk), so the filter's "absent" is the tree's as long as it followed every block
/// since the state it was built from. A cache moved from a state it did not follow
/// drops its filter with its values.
#[derive(Debug)]
pub struct TipCache {
    inner: Mutex<TipCacheInner>,
}

#[derive(Debug)]
struct TipCacheInner {
    root: Hash,
    values: Recent<Hash, Option<Vec<u8>>>,
    capacity: usize,
    filter: Filter,
    /// The number of the last [`TipCache::begin_filter`].
    builds: u64,
}

/// Where a [`TipCache`]'s filter of present keys is.
#[derive(Debug)]
enum Filter {
    /// No filter: absent keys are walked to.
    Off,
    /// Build `build` is scanning the store; the keys blocks set since it began wait here.
    Building { build: u64, added: Vec<Hash> },
    /// Every key present in the cache's state is in the filter.
    Ready(KeyFilter),
}

/// Keys a [`TipCache`] keeps for a filter being built, at most: 64 MiB of keys (the
/// vector may reserve up to twice that), over a minute of blocks at any rate this node
/// reaches, against a scan of seconds. A build that needs more is dropped.
const MAX_PENDING_FILTER_KEYS: usize = 1 << 21;

/// Whether `value` is short enough for a [`TipCache`] (absent values always are).
fn cacheable_value(value: &Option<Vec<u8>>) -> bool {
    value
        .as_ref()
        .is_none_or(|v| v.len() <= TipCache::MAX_VALUE_BYTES)
}

impl TipCache {
    /// The longest value held: accounts and notarization records (under 100 bytes) and
    /// short key-value records fit.
    pub const MAX_VALUE_BYTES: usize = 256;

    /// An empty cache of the state whose root hash is `root`, holding at most
    /// `2 × capacity` values.
    pub fn new(root: Hash, capacity: usize) -> TipCache {
        TipCache {
            inner: Mutex::new(TipCacheInner {
                root,
                values: Recent::new(capacity),
                capacity,
                filter: Filter::Off,
                builds: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TipCacheInner> {
        // What a panic under the lock can leave is consistent: `advance` takes the values
        // and the filter out while it updates them, so the cache holds either the old
        // state's under the old root, none, or the new state's under the new root.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value of `key` in the state whose root hash is `root` (`Some(None)`: known
    /// absent), if this cache follows that state and holds the key or its filter has
    /// never seen it.
    pub fn get(&self, root: &Hash, key: &Hash) -> Option<Option<Vec<u8>>> {
        let mut inner = self.lock();
        if inner.root != *root {
            return None;
        }
        if let Some(value) = inner.values.get(key) {
            return Some(value);
        }
        match &inner.filter {
            Filter::Ready(filter) if !filter.may_contain(key) => Some(None),
            _ => None,
        }
    }

    /// Starts a build of the filter of present keys, replacing any filter or build
    /// before it, and returns its number for [`TipCache::finish_filter`]. The caller
    /// then reads every key present in the state this cache follows now (a superset will
    /// do: say every key of every stored leaf), into a [`KeyFilter`].
    pub fn begin_filter(&self) -> u64 {
        let mut inner = self.lock();
        inner.builds += 1;
        let build = inner.builds;
        inner.filter = Filter::Building {
            build,
            added: Vec::new(),
        };
        build
    }

    /// Ends build `build` with `filter`, which holds every key present in the state
    /// this cache followed when the build began: the keys set since are added, and the
    /// filter answers from now on. Returns whether it was taken: not if another build
    /// began since, or the cache lost track of the blocks (a move from a state it did
    /// not follow, or more blocks than it keeps keys for).
    pub fn finish_filter(&self, build: u64, mut filter: KeyFilter) -> bool {
        let mut inner = self.lock();
        match &mut inner.filter {
            Filter::Building { build: b, added } if *b == build => {
                for key in added.iter() {
                    filter.insert(key);
                }
                inner.filter = Filter::Ready(filter);
                true
            }
            _ => false,
        }
    }

    /// Ends build `build` without a filter (its scan failed): absent keys are walked to,
    /// and the keys kept for it are freed. Another build's state is left as it is.
    pub fn cancel_filter(&self, build: u64) {
        let mut inner = self.lock();
        if matches!(inner.filter, Filter::Building { build: b, .. } if b == build) {
            inner.filter = Filter::Off;
        }
    }

    /// Whether the cache has no filter and none is being built (never begun, or a build
    /// failed, was cancelled, or was dropped when the cache lost track of the blocks).
    pub fn filter_off(&self) -> bool {
        matches!(self.lock().filter, Filter::Off)
    }

    /// The filter's insertions and bytes held, once it answers.
    pub fn filter_size(&self) -> Option<(usize, usize)> {
        match &self.lock().filter {
            Filter::Ready(f) => Some((f.inserted(), f.bytes())),
            _ => None,
        }
    }

    /// Notes the value of `key` read from the tree of the state whose root is `root`.
    pub fn note(&self, root: &Hash, key: &Hash, value: &Option<Vec<u8>>) {
        let mut inner = self.lock();
        if inner.root == *root && cacheable_value(value) {
            inner.values.insert(*key, value.clone());
        }
    }

    /// Moves the cache from the state `from` to the state after a block on it, whose
    /// execution is `execution`. A cache that did not follow `from` starts empty at the
    /// new state.
    pub fn advance(&self, from: &Hash, execution: &Execution) {
        let mut inner = self.lock();
        let empty = Recent::new(inner.capacity);
        let mut values = std::mem::replace(&mut inner.values, empty);
        let filter = std::mem::replace(&mut inner.filter, Filter::Off);
        if inner.root == *from {
            for (key, value) in &execution.state_updates {
                values.remove(key);
                if cacheable_value(value) {
                    values.insert(*key, value.clone());
                }
            }
            let filter = filter.advanced(execution);
            // Nothing below can panic: the root, values and filter change together.
            inner.root = execution.state_root;
            inner.values = values;
            inner.filter = filter;
        } else {
            inner.root = execution.state_root;
        }
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.lock().values.len()
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Filter {
    /// The filter after a block whose execution is `execution`: with the keys it set.
    fn advanced(self, execution: &Execution) -> Filter {
        let set = execution
            .state_updates
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k);
        match self {
            Filter::Off => Filter::Off,
            Filter::Ready(mut filter) => {
                set.for_each(|k| filter.insert(k));
                Filter::Ready(filter)
            }
            Filter::Building { build, mut added } => {
                added.extend(set);
                if added.len() > MAX_PENDING_FILTER_KEYS {
                    Filter::Off
                } else {
                    Filter::Building { build, added }
                }
            }
        }
    }
}

/// What the next block's header takes from the chain before any transaction runs: its
/// height, BFT time and parent, and the certificate of the previous height it carries.
///
/// A proposer calls [`BlockContext::next`], executes transactions at
/// [`BlockContext::time_ms`] with a [`BlockExecutor`], then [`BlockContext::seal`]s the
/// block with the execution's roots.
#[derive(Clone, Debug)]
pub struct BlockContext {
    /// The chain.
    pub chain_id: ChainId,
    /// The engine.
    pub engine: EngineId,
    /// The new block's height.
    pub height: u64,
    /// Its BFT time: the previous certificate's weighted median, or genesis time + 1.
    pub time_ms: u64,
    /// The previous header's hash (the genesis hash at height 1).
    pub prev_hash: Hash,
    /// The certificate of the previous height (`None` at height 1).
    pub last_certificate: Option<Certificate>,
    /// Hash of the validator set (fixed for the chain's life in this version).
    pub validators_hash: Hash,
}

impl BlockContext {
    /// The context of the block after `prev` (its header and certificate; `None` for
    /// block 1) on the chain of `genesis`, whose validators are `validators`.
    pub fn next(
        genesis: &Genesis,
        validators: &ValidatorSet,
        prev: Option<(&Header, &Certificate)>,
    ) -> Result<BlockContext, crate::VerifyError> {
        let (height, time_ms, prev_hash, last_certificate) = match prev {
            Some((header, cert)) => {
                let time =
                    cert.bft_time(validators)
                        .ok_or(crate::VerifyError::UnknownValidator {
                            index: cert.votes.iter().map(|v| v.validator).max().unwrap_or(0),
                            len: validators.len(),
                        })?;
                (header.height + 1, time, header.hash(), Some(cert.clone()))
            }
            None => {
                let hash = genesis
                    .hash()
                    .map_err(|e| crate::VerifyError::Genesis(e.to_string()))?;
                (1, genesis.genesis_time_ms + 1, hash, None)
            }
        };
        Ok(BlockContext {
            chain_id: genesis.chain_id.clone(),
            engine: genesis.engine,
            height,
            time_ms,
            prev_hash,
            last_certificate,
            validators_hash: validators.hash(),
        })
    }

    /// The block over `txs`, whose execution is `execution`, proposed by `proposer`.
    pub fn seal(self, execution: &Execution, proposer: PublicKey, txs: Vec<Transaction>) -> Block {
        Block {
            header: Header {
                chain_id: self.chain_id,
                height: self.height,
                time_ms: self.time_ms,
                prev_hash: self.prev_hash,
                last_certificate_hash: self
                    .last_certificate
                    .as_ref()
                    .map_or(Hash::ZERO, Certificate::hash),
                tx_root: execution.tx_root,
                tx_count: execution.tx_count,
                log_size: execution.log_size,
                log_root: execution.log_root,
                state_root: execution.state_root,
                validators_hash: self.validators_hash,
                next_validators_hash: self.validators_hash,
                engine: self.engine,
                proposer,
            },
            last_certificate: self.last_certificate,
            txs,
        }
    }
}
