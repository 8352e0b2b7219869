//! The node's committed chain on storage: building the next block from the mempool,
//! validating proposals and synced blocks with the ledger's checks, and committing.
//!
//! The checks are the simulator host's (`consensus::sim::app`) and the light client's:
//! the same `ledger::verify` functions, here over the sled store.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use pyralog_crypto::PublicKey;
use pyralog_ledger::keyfilter::KeyFilter;
use pyralog_ledger::verify::{
    VerifyError, verify_block_contents_hashed, verify_carried_certificate, verify_certificate,
    verify_execution, verify_first_header, verify_header_link, verify_last_certificate,
};
use pyralog_ledger::{
    Block, BlockContext, BlockExecutor, Certificate, Decode, ExecError, Execution, Genesis, Hash,
    Header, Tip, TipCache, Transaction, TxError, ValidatorSet, apply_block_hashed,
    verify_signatures_of,
};
use pyralog_storage::{SledStore, StorageError, Store};

use crate::mempool::Mempool;

/// A fatal storage failure: the node must stop rather than run with an unknown state.
#[derive(Debug, thiserror::Error)]
#[error("storage failed: {0}")]
pub struct Fatal(pub String);

/// Why a block is not the valid next block of this chain. [`Invalid::kind`] names the
/// check that failed (the auditor's alarm kinds).
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// Not the next height.
    #[error("block at height {found} does not follow committed height {committed}")]
    Height {
        /// The block's height.
        found: u64,
        /// The committed height.
        committed: u64,
    },
    /// The header does not link to the committed chain (or to the genesis).
    #[error("chain link: {0}")]
    Link(VerifyError),
    /// The validator set or proposer is not this chain's.
    #[error("{0}")]
    ValidatorSet(String),
    /// Over the chain's block limits.
    #[error("{0}")]
    Limits(String),
    /// The header is not certified by the validator set.
    #[error("certificate: {0}")]
    Certificate(VerifyError),
    /// The carried certificate of the previous height, or the BFT time it fixes.
    #[error("last certificate: {0}")]
    LastCertificate(VerifyError),
    /// The body is not the one the header commits to.
    #[error("block contents: {0}")]
    Contents(VerifyError),
    /// Transactions whose signatures do not verify (their indexes in the block).
    #[error("bad transaction signatures at {0:?}")]
    Signatures(Vec<usize>),
    /// Execution fails (a nonce, a limit) or does not give the header's roots.
    #[error("execution: {0}")]
    Execution(String),
}

impl Invalid {
    /// A short name of the failed check: `chain_link`, `validator_set`, `block_limits`,
    /// `certificate`, `last_certificate`, `block_contents`, `tx_signature`, `execution`.
    pub fn kind(&self) -> &'static str {
        match self {
            Invalid::Height { .. } | Invalid::Link(_) => "chain_link",
            Invalid::ValidatorSet(_) => "validator_set",
            Invalid::Limits(_) => "block_limits",
            Invalid::Certificate(_) => "certificate",
            Invalid::LastCertificate(_) => "last_certificate",
            Invalid::Contents(_) => "block_contents",
            Invalid::Signatures(_) => "tx_signature",
            Invalid::Execution(_) => "execution",
        }
    }
}

/// A block the chain refused, handed back with the reason, so callers can log it or keep
/// it as evidence without copying every block they commit.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub reason: Invalid,
    /// The block.
    pub block: Block,
    /// Its certificate.
    pub cert: Certificate,
}

/// What a commit changed, for the mempool, waiters and subscribers.
#[derive(Clone, Debug)]
pub struct Committed {
    /// The header.
    pub header: Header,
    /// Its hash.
    pub hash: Hash,
    /// (transaction hash, sender) in block order.
    pub txs: Vec<(Hash, PublicKey)>,
    /// Log index of the block's first transaction.
    pub first_log_index: u64,
}

/// State values at the tip kept by [`Chain`]'s cache, per generation (at most twice this
/// many are held, each of at most [`TipCache::MAX_VALUE_BYTES`]: about 50 MB): some
/// 15 seconds of transactions at the rates this node reaches, each reading its sender's
/// account and its digest or key.
const TIP_VALUES: usize = 1 << 16;

/// The thread building a [`Chain`]'s filter of present keys: told to stop and joined
/// when the chain is dropped, so it never outlives the chain's hold on the store.
struct FilterBuild {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// Starts a thread that builds `values`' filter of present state keys from every leaf
/// stored in `store` through the tip `tip` (see [`TipCache`]); until it is done, absent
/// keys are walked to as before. The log's size sizes the filter: a transaction sets two
/// keys (its sender's account, and its digest's record or its key), most of them new.
fn build_key_filter(
    values: &Arc<TipCache>,
    store: &Arc<SledStore>,
    tip: &Tip,
) -> Option<FilterBuild> {
    use std::ops::ControlFlow;
    use std::sync::atomic::Ordering;
    let mut seed = [0u8; 8];
    if let Err(e) = getrandom::fill(&mut seed) {
        tracing::warn!(error = %e, "no OS randomness for the state key filter; absent keys are walked to");
        return None;
    }
    let seed = u64::from_le_bytes(seed);
    // Begun before the scan, so that the keys of every block committed meanwhile are
    // kept for it.
    let build = values.begin_filter();
    let (cache, store) = (Arc::clone(values), Arc::clone(store));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let (height, txs) = (tip.height, tip.log_size);
    let spawned = std::thread::Builder::new()
        .name("key-filter".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let capacity = usize::try_from(txs.saturating_mul(2)).unwrap_or(usize::MAX);
            let mut filter = KeyFilter::new(capacity.max(1 << 20), seed);
            let scanned = store.for_each_state_leaf_key(height, |key| {
                filter.insert(key);
                if stopped.load(Ordering::Relaxed) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            let ms = started.elapsed().as_millis() as u64;
            match scanned {
                _ if stopped.load(Ordering::Relaxed) => cache.cancel_filter(build),
                Ok(leaves) => {
                    let (keys, bytes) = (filter.inserted(), filter.bytes());
                    if cache.finish_filter(build, filter) {
                        tracing::info!(
                            leaves,
                            keys,
                            bytes,
                            ms,
                            "state key filter built: absent keys are answered without a walk"
                        );
                    } else {
                        tracing::warn!(
                            leaves,
                            ms,
                            "state key filter dropped: the tip cache lost track of the blocks committed during its build; absent keys are walked to"
                        );
                    }
                }
                Err(e) => {
                    cache.cancel_filter(build);
                    tracing::warn!(error = %e, "state key filter not built; absent keys are walked to");
                }
            }
        });
    match spawned {
        Ok(thread) => Some(FilterBuild { stop, thread }),
        Err(e) => {
            values.cancel_filter(build);
            tracing::warn!(error = %e, "state key filter not started; absent keys are walked to");
            None
        }
    }
}

/// The committed chain.
pub struct Chain {
    genesis: Genesis,
    validators: ValidatorSet,
    store: Arc<SledStore>,
    tip: Tip,
    last: Option<(Header, Certificate)>,
    validated: HashMap<Hash, Execution>,
    /// Values of the tip's state read so far: admission and execution read them without
    /// a walk down the tree. It follows the tip through [`Chain::commit`]. Once its
    /// filter of present keys is built (a thread started by [`Chain::open`]), absent keys
    /// are answered without a walk as well.
    values: Arc<TipCache>,
    /// The thread building the filter, until the chain is dropped.
    filter_build: Option<FilterBuild>,
    /// When a lost filter may be built again, and the wait after that.
    filter_retry: (std::time::Instant, std::time::Duration),
}

/// The wait before a lost filter of present keys is built again; it doubles at each try,
/// up to [`FILTER_RETRY_MAX`].
const FILTER_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest wait between builds of a filter that keeps being lost.
const FILTER_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(1800);

impl Drop for Chain {
    fn drop(&mut self) {
        if let Some(b) = self.filter_build.take() {
            b.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = b.thread.join();
        }
    }
}

impl Chain {
    /// Opens the chain stored in `store`.
    pub fn open(genesis: Genesis, store: Arc<SledStore>) -> anyhow::Result<Chain> {
        let validators = genesis.validator_set()?;
        let tip = store.tip()?;
        let last = if tip.height == 0 {
            None
        } else {
            let header = store
                .header(tip.height)?
                .ok_or_else(|| anyhow::anyhow!("store has no header at its tip {}", tip.height))?;
            let cert = store.certificate(tip.height)?.ok_or_else(|| {
                anyhow::anyhow!("store has no certificate at its tip {}", tip.height)
            })?;
            if height_one_prev(&genesis, &store)? != Some(true) {
                anyhow::bail!(
                    "the stored chain does not start at this genesis (block 1 does not link to it)"
                );
            }
            Some((header, cert))
        };
        let values = Arc::new(TipCache::new(tip.state_root, TIP_VALUES));
        let filter_build = build_key_filter(&values, &store, &tip);
        Ok(Chain {
            genesis,
            validators,
            store,
            values,
            filter_build,
            filter_retry: (
                std::time::Instant::now() + FILTER_RETRY_FIRST,
                FILTER_RETRY_FIRST,
            ),
            tip,
            last,
            validated: HashMap::new(),
        })
    }

    /// Builds the filter of present keys again if the tip cache has none and no build
    /// runs (the last one failed, or was dropped when the cache lost track of the blocks
    /// committed during it), at most once per wait, which doubles from 30 s to 30 min.
    /// Until then, absent keys are walked to.
    fn rebuild_lost_filter(&mut self) {
        let now = std::time::Instant::now();
        if !self.values.filter_off()
            || now < self.filter_retry.0
            || self
                .filter_build
                .as_ref()
                .is_some_and(|b| !b.thread.is_finished())
        {
            return;
        }
        if let Some(b) = self.filter_build.take() {
            let _ = b.thread.join();
        }
        tracing::info!(
            height = self.tip.height,
            "building the state key filter again"
        );
        self.filter_build = build_key_filter(&self.values, &self.store, &self.tip);
        let wait = (self.filter_retry.1 * 2).min(FILTER_RETRY_MAX);
        self.filter_retry = (now + self.filter_retry.1, wait);
    }

    /// Keys in the tip cache's filter of present keys and its bytes, once it is built.
    pub fn key_filter_size(&self) -> Option<(usize, usize)> {
        self.values.filter_size()
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// The validator set.
    pub fn validators(&self) -> &ValidatorSet {
        &self.validators
    }

    /// The store.
    pub fn store(&self) -> &Arc<SledStore> {
        &self.store
    }

    /// The committed height.
    pub fn height(&self) -> u64 {
        self.tip.height
    }

    /// The last committed header and certificate.
    pub fn last(&self) -> Option<&(Header, Certificate)> {
        self.last.as_ref()
    }

    /// The sender's next nonce on the committed chain.
    pub fn next_nonce(&self, sender: &PublicKey) -> Result<u64, Fatal> {
        let exec = self.executor(0);
        exec.next_nonce(sender).map_err(|e| Fatal(e.to_string()))
    }

    /// The height at which `digest` was notarized, if it was.
    pub fn notarized_at(&self, digest: &Hash) -> Result<Option<u64>, Fatal> {
        let record = self
            .executor(0)
            .notarization(digest)
            .map_err(|e| Fatal(e.to_string()))?;
        Ok(record.map(|r| r.height))
    }

    fn executor(&self, time_ms: u64) -> BlockExecutor<'_, SledStore, SledStore> {
        BlockExecutor::new(
            &*self.store,
            &*self.store,
            self.tip.clone(),
            self.genesis.chain_id.clone(),
            time_ms,
        )
        .with_cache(&self.values)
    }

    fn context(&self) -> Result<BlockContext, String> {
        let prev = self.last.as_ref().map(|(h, c)| (h, c));
        BlockContext::next(&self.genesis, &self.validators, prev).map_err(|e| e.to_string())
    }

    /// Builds the next block from the mempool, proposed by `proposer`, within the chain's
    /// block limits and the caller's caps: at most `max_txs` transactions (what it can
    /// execute in time) and `max_bytes` of them (what its gossip can carry). Returns the
    /// block and the pool transactions that can never execute, with why (to drop from the
    /// pool).
    pub fn build_block(
        &mut self,
        proposer: PublicKey,
        pool: &Mempool,
        max_txs: usize,
        max_bytes: usize,
    ) -> Result<(Block, Vec<(Hash, TxError)>), Fatal> {
        let ctx = self.context().map_err(Fatal)?;
        let params = &self.genesis.params;
        let (max_txs, max_bytes) = (
            (params.max_block_txs as usize).min(max_txs),
            (params.max_block_bytes as usize).min(max_bytes),
        );
        let mut exec = self.executor(ctx.time_ms);
        let mut txs = Vec::new();
        let mut bytes = 0usize;
        let mut dead = Vec::new();
        // One pass in arrival order. Each sender's next nonce is read once (one state
        // read per sender); a transaction that arrived ahead of its predecessor (gossip
        // and RPC reorder them) waits here and goes in right after it. Only transactions
        // at their sender's next nonce are executed, so a sender's transactions behind a
        // nonce gap cost a map insert each, not a state read each (the build used to try
        // the whole pool up to three times, which took most of a validator under a
        // backlog).
        let mut next: HashMap<PublicKey, u64> = HashMap::new();
        let mut ahead: HashMap<PublicKey, BTreeMap<u64, (&Hash, &Transaction, usize)>> =
            HashMap::new();
        'pool: for (hash, tx, len) in pool.ready() {
            let expected = match next.entry(tx.sender) {
                Entry::Occupied(known) => *known.get(),
                Entry::Vacant(first) => *first.insert(
                    exec.next_nonce(&tx.sender)
                        .map_err(|e| Fatal(e.to_string()))?,
                ),
            };
            if tx.nonce > expected {
                ahead
                    .entry(tx.sender)
                    .or_default()
                    .insert(tx.nonce, (hash, tx, len));
                continue;
            }
            // This transaction, then those of its sender that were waiting for it.
            let mut candidate = Some((hash, tx, len));
            while let Some((hash, tx, len)) = candidate {
                if txs.len() >= max_txs {
                    break 'pool;
                }
                if bytes + len > max_bytes {
                    // Its successors cannot go in without it.
                    break;
                }
                match exec.apply(tx) {
                    Ok(()) => {
                        bytes += len;
                        txs.push(tx.clone());
                        let after = tx.nonce.saturating_add(1);
                        next.insert(tx.sender, after);
                        candidate = ahead
                            .get_mut(&tx.sender)
                            .and_then(|waiting| waiting.remove(&after));
                    }
                    // A delete of a key that is not there yet: a later transaction may
                    // create it, so it stays in the pool, and its sender's later
                    // transactions wait behind it.
                    Err(ExecError::Tx {
                        error: TxError::KeyNotFound,
                        ..
                    }) => break,
                    // Its nonce was used, or it can never execute (another chain, over a
                    // limit, a notarized digest): drop it. A sender's later transactions
                    // then wait for a replacement.
                    Err(ExecError::Tx { error, .. }) => {
                        dead.push((*hash, error));
                        break;
                    }
                    // The block is full by the executor's count (`apply` keeps none
                    // today; the cap above is the one that stops the build).
                    Err(ExecError::TooManyTxs { .. }) => break 'pool,
                    Err(ExecError::Store(e)) => return Err(Fatal(e.to_string())),
                }
            }
        }
        let execution = exec.finish().map_err(|e| Fatal(e.to_string()))?;
        let block = ctx.seal(&execution, proposer, txs);
        self.validated.insert(block.header.hash(), execution);
        Ok((block, dead))
    }

    /// Everything a node checks before voting for a block: it extends the committed
    /// chain (link, validator set, BFT time from the carried certificate), its body
    /// matches its header, its transactions are signed and execute to its roots.
    pub fn validate(&mut self, block: &Block) -> Result<(), Invalid> {
        self.validate_with(block, &|_| false)
    }

    /// [`Chain::validate`], skipping the signature check of transactions for which
    /// `verified` is true: those this node already verified (its mempool admits only
    /// verified transactions, and a transaction's hash covers its signature). Each
    /// signature is thus checked once per node, not again in every block.
    pub fn validate_with(
        &mut self,
        block: &Block,
        verified: &dyn Fn(&Hash) -> bool,
    ) -> Result<(), Invalid> {
        let header = &block.header;
        let hash = header.hash();
        // Each transaction is encoded once here, for its hash and its size.
        let (tx_hashes, sizes): (Vec<Hash>, Vec<usize>) =
            block.txs.iter().map(Transaction::hash_and_len).unzip();
        // Before the cache: a cached header says nothing of this copy's transactions.
        verify_block_contents_hashed(block, &tx_hashes).map_err(Invalid::Contents)?;
        if self.validated.contains_key(&hash) {
            return Ok(());
        }
        if header.height != self.tip.height + 1 {
            return Err(Invalid::Height {
                found: header.height,
                committed: self.tip.height,
            });
        }
        let prev = self.last.as_ref().map(|(h, _)| h);
        match prev {
            None => verify_first_header(&self.genesis, header),
            Some(p) => verify_header_link(p, header),
        }
        .map_err(Invalid::Link)?;
        if header.next_validators_hash != self.validators.hash() {
            return Err(Invalid::ValidatorSet(
                "the next validator set changes, which this chain does not allow".into(),
            ));
        }
        if self.validators.index_of(&header.proposer).is_none() {
            return Err(Invalid::ValidatorSet(
                "the proposer is not a validator".into(),
            ));
        }
        let params = &self.genesis.params;
        if block.txs.len() > params.max_block_txs as usize {
            return Err(Invalid::Limits(format!(
                "{} transactions, over the chain's limit of {}",
                block.txs.len(),
                params.max_block_txs
            )));
        }
        let bytes: usize = sizes.iter().sum();
        if bytes > params.max_block_bytes as usize {
            return Err(Invalid::Limits(format!(
                "{bytes} bytes of transactions, over the chain's limit of {}",
                params.max_block_bytes
            )));
        }
        verify_last_certificate(block, prev.map(|p| (p, &self.validators)))
            .map_err(Invalid::LastCertificate)?;
        let unverified: Vec<(usize, &Transaction)> = block
            .txs
            .iter()
            .enumerate()
            .filter(|(i, _)| !verified(&tx_hashes[*i]))
            .collect();
        let txs: Vec<&Transaction> = unverified.iter().map(|(_, t)| *t).collect();
        verify_signatures_of(&txs)
            .map_err(|bad| Invalid::Signatures(bad.iter().map(|&i| unverified[i].0).collect()))?;
        let execution = apply_block_hashed(
            &*self.store,
            &*self.store,
            &self.tip,
            block,
            &tx_hashes,
            Some(&self.values),
        )
        .map_err(|e| Invalid::Execution(e.to_string()))?;
        verify_execution(header, &execution).map_err(|e| Invalid::Execution(e.to_string()))?;
        self.validated.insert(hash, execution);
        Ok(())
    }

    /// Checks a block received through sync (certificate by this chain's validators,
    /// then everything [`Chain::validate`] checks) and commits it.
    pub fn commit_synced(
        &mut self,
        block: Block,
        cert: Certificate,
    ) -> Result<Result<Committed, Box<Refused>>, Fatal> {
        if let Err(e) =
            verify_certificate(self.genesis.engine, &self.validators, &block.header, &cert)
        {
            return Ok(Err(Box::new(Refused {
                reason: Invalid::Certificate(e),
                block,
                cert,
            })));
        }
        self.commit(block, cert)
    }

    /// Commits a decided block with its certificate: one atomic, flushed storage batch.
    /// An invalid block is an `Ok(Err)`, handed back; a storage failure is fatal.
    pub fn commit(
        &mut self,
        block: Block,
        cert: Certificate,
    ) -> Result<Result<Committed, Box<Refused>>, Fatal> {
        let hash = block.header.hash();
        // A block this node validated (the engine's decided proposal, a copy of the one
        // it validated) is not hashed and checked again: the store compares the copy's
        // transactions with their execution (hashes and count) and the execution with
        // the header (roots), which is what the contents check would do, so only the
        // certificate the block carries is left to check here.
        let checked = if self.validated.contains_key(&hash) {
            verify_carried_certificate(&block.header, block.last_certificate.as_ref())
                .map_err(Invalid::Contents)
        } else {
            self.validate(&block)
        };
        if let Err(reason) = checked {
            return Ok(Err(Box::new(Refused {
                reason,
                block,
                cert,
            })));
        }
        // validate() just inserted it, found it there, or was not needed because it was
        // there. Taken out now, so a copy refused below is validated afresh next time.
        let Some(execution) = self.validated.remove(&hash) else {
            return Err(Fatal("validated execution missing".into()));
        };
        match self.store.commit_block(&block, &cert, &execution) {
            Ok(()) => {}
            // This copy of the block is not the one executed (see above); nothing was
            // written. Any other refusal is this node's own fault, and stops it.
            Err(StorageError::TxMismatch { reason, .. }) => {
                return Ok(Err(Box::new(Refused {
                    reason: Invalid::Contents(reason),
                    block,
                    cert,
                })));
            }
            Err(e) => return Err(Fatal(e.to_string())),
        }
        let first_log_index = self.tip.log_size;
        self.values.advance(&self.tip.state_root, &execution);
        self.tip = execution.tip(block.header.height);
        self.rebuild_lost_filter();
        let txs = block
            .txs
            .iter()
            .zip(&execution.tx_hashes)
            .map(|(t, h)| (*h, t.sender))
            .collect();
        self.validated.clear();
        let header = block.header;
        self.last = Some((header.clone(), cert));
        Ok(Ok(Committed {
            header,
            hash,
            txs,
            first_log_index,
        }))
    }
}

/// Whether the stored block 1 links to `genesis` (`None` if there is no block 1).
fn height_one_prev(genesis: &Genesis, store: &SledStore) -> anyhow::Result<Option<bool>> {
    let Some(h1) = store.header(1)? else {
        return Ok(None);
    };
    Ok(Some(verify_first_header(genesis, &h1).is_ok()))
}

/// Decodes a transaction from untrusted bytes.
pub fn decode_tx(bytes: &[u8]) -> Result<Transaction, crate::mempool::Reject> {
    use crate::mempool::Reject;
    if bytes.len() > pyralog_ledger::tx::MAX_TX_BYTES {
        return Err(Reject::Oversize {
            len: bytes.len(),
            max: pyralog_ledger::tx::MAX_TX_BYTES,
        });
    }
    Transaction::from_bytes(bytes).map_err(|e| Reject::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use pyralog_ledger::testing::{TestChain, user};
    use pyralog_ledger::{Encode, EngineId};

    /// A 4-validator test chain and a node's `Chain` for it on a fresh store (keep the
    /// directory alive while the chain is used).
    fn test_chain() -> (TestChain, tempfile::TempDir, Chain) {
        let tc = TestChain::new(4, EngineId::Tendermint);
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let chain = Chain::open(tc.genesis.clone(), store).unwrap();
        (tc, dir, chain)
    }

    #[test]
    fn the_tip_cache_follows_each_commit() {
        use pyralog_ledger::exec::Account;
        use pyralog_ledger::state::{Namespace, state_key};
        let (tc, _dir, mut chain) = test_chain();
        let alice = user(1);
        let digest = pyralog_crypto::content_digest(b"x");
        // Admission's reads at genesis: they are noted in the cache.
        assert_eq!(chain.next_nonce(&alice.public()).unwrap(), 0);
        assert_eq!(chain.notarized_at(&digest).unwrap(), None);
        let account = state_key(Namespace::Account, alice.public().as_bytes());
        let record = state_key(Namespace::Notarization, &digest.0);
        assert_eq!(chain.values.get(&chain.tip.state_root, &record), Some(None));
        commit_notarization(&tc, &mut chain, 1, digest);
        // After the commit the cache holds what the block wrote, at the new tip.
        let root = chain.tip.state_root;
        let nonce = chain
            .values
            .get(&root, &account)
            .flatten()
            .map(|b| Account::from_bytes(&b).unwrap().next_nonce);
        assert_eq!(nonce, Some(1));
        assert!(chain.values.get(&root, &record).flatten().is_some());
        assert_eq!(chain.next_nonce(&alice.public()).unwrap(), 1);
        assert_eq!(chain.notarized_at(&digest).unwrap(), Some(1));
    }

    /// Commits a block of one notarization of `digest` by a new user `n`.
    fn commit_notarization(tc: &TestChain, chain: &mut Chain, n: u64, digest: Hash) {
        let mut pool = Mempool::new(crate::config::MempoolConfig::default());
        let tx = tc.notarize(&user(n), 0, digest, "");
        pool.admit(tx.clone(), tx.hash(), tx.to_bytes().len(), 0)
            .unwrap();
        let proposer = tc.validator_keys[0].public();
        let (block, _) = chain
            .build_block(proposer, &pool, usize::MAX, usize::MAX)
            .unwrap();
        assert_eq!(block.txs.len(), 1);
        let cert = tc.certify_all(&block.header);
        assert!(chain.commit(block, cert).unwrap().is_ok());
    }

    #[test]
    fn a_reopened_chain_builds_its_filter_of_present_keys_and_answers_as_the_tree() {
        let tc = TestChain::new(4, EngineId::Tendermint);
        let dir = tempfile::tempdir().unwrap();
        let digest = |i: u64| pyralog_crypto::content_digest(&i.to_le_bytes());
        {
            let store = Arc::new(SledStore::open(dir.path()).unwrap());
            let mut chain = Chain::open(tc.genesis.clone(), store).unwrap();
            for i in 1..=5 {
                commit_notarization(&tc, &mut chain, i, digest(i));
            }
        }
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let mut chain = Chain::open(tc.genesis.clone(), store).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let (keys, bytes) = loop {
            if let Some(size) = chain.key_filter_size() {
                break size;
            }
            assert!(std::time::Instant::now() < deadline, "no filter after 30 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        // Five notarizations and five accounts (in a filter this sparse, no false
        // positive hides one); sized for 2^20 keys.
        assert!(keys >= 10, "{keys}");
        assert_eq!(
            bytes,
            (1 << 20) * pyralog_ledger::keyfilter::BITS_PER_KEY / 8
        );
        for i in 1..=5 {
            assert_eq!(chain.notarized_at(&digest(i)).unwrap(), Some(i));
        }
        // Digests never notarized are answered by the filter: nothing walked, nothing
        // noted in the cache (the five reads above noted their records).
        let held = chain.values.len();
        for i in 6..=50 {
            assert_eq!(chain.notarized_at(&digest(i)).unwrap(), None);
        }
        assert_eq!(chain.values.len(), held);
        // A digest notarized after the filter was built is found.
        commit_notarization(&tc, &mut chain, 6, digest(6));
        assert_eq!(chain.notarized_at(&digest(6)).unwrap(), Some(6));
        assert_eq!(chain.key_filter_size().unwrap().0, keys + 2);

        // A filter lost (here a build begun and cancelled, as a failed scan leaves it)
        // is built again at a commit once the wait is over, not before.
        let build = chain.values.begin_filter();
        chain.values.cancel_filter(build);
        assert!(chain.values.filter_off());
        commit_notarization(&tc, &mut chain, 7, digest(7));
        assert!(chain.values.filter_off(), "built again before the wait");
        chain.filter_retry.0 = std::time::Instant::now();
        commit_notarization(&tc, &mut chain, 8, digest(8));
        assert!(!chain.values.filter_off());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while chain.key_filter_size().is_none() {
            assert!(std::time::Instant::now() < deadline, "no filter after 30 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(chain.notarized_at(&digest(8)).unwrap(), Some(8));
        let held = chain.values.len();
        assert_eq!(chain.notarized_at(&digest(99)).unwrap(), None);
        assert_eq!(chain.values.len(), held);
        // The next try waits twice as long.
        assert_eq!(chain.filter_retry.1, 2 * FILTER_RETRY_FIRST);
    }

    #[test]
    fn a_block_is_built_within_the_caps_the_caller_gives() {
        let (tc, _dir, mut chain) = test_chain();
        let mut pool = Mempool::new(crate::config::MempoolConfig::default());
        let mut len = 0;
        for n in 0..3u8 {
            let tx = tc.put(&user(u64::from(n) + 1), 0, &[n], &[n; 40_000]);
            len = tx.to_bytes().len();
            pool.admit(tx.clone(), tx.hash(), len, 0).unwrap();
        }
        let proposer = tc.validator_keys[0].public();
        // Room for two of the three: the third waits for the next block.
        let (block, dead) = chain
            .build_block(proposer, &pool, usize::MAX, 2 * len + 1)
            .unwrap();
        assert_eq!((block.txs.len(), dead.len()), (2, 0));
        // The count cap likewise.
        let (block, _) = chain.build_block(proposer, &pool, 1, usize::MAX).unwrap();
        assert_eq!(block.txs.len(), 1);
        // With no cap of its own, the chain's limit (8 MiB here) takes all three.
        let (block, _) = chain
            .build_block(proposer, &pool, usize::MAX, usize::MAX)
            .unwrap();
        assert_eq!(block.txs.len(), 3);
    }

    #[test]
    fn a_block_takes_each_senders_transactions_in_nonce_order_in_one_pass() {
        let (tc, _dir, mut chain) = test_chain();
        let mut pool = Mempool::new(crate::config::MempoolConfig::default());
        let mut admit = |tx: pyralog_ledger::Transaction| {
            let len = tx.to_bytes().len();
            pool.admit(tx.clone(), tx.hash(), len, 0).unwrap();
        };
        let (a, b, c, d) = (user(1), user(2), user(3), user(4));
        let digest = |n: u8| pyralog_crypto::content_digest(&[n]);
        // d deletes a key before a's put creates it, and d's next waits behind that;
        // a's five arrive last first (more than the old three passes could sort); b's
        // only one skips nonce 0; c's second notarizes the digest its first does.
        let delete = pyralog_ledger::Transaction::new_signed(
            &d,
            tc.chain_id(),
            0,
            pyralog_ledger::Payload::Delete { key: b"k".to_vec() },
        )
        .unwrap();
        admit(delete.clone());
        admit(tc.notarize(&d, 1, digest(30), "d"));
        for n in (0..5u8).rev() {
            admit(tc.notarize(&a, u64::from(n), digest(n), "a"));
        }
        admit(tc.put(&a, 5, b"k", b"v"));
        admit(tc.notarize(&b, 1, digest(10), "b"));
        let repeat = tc.notarize(&c, 1, digest(20), "c");
        admit(tc.notarize(&c, 0, digest(20), "c"));
        admit(repeat.clone());
        let proposer = tc.validator_keys[0].public();
        let (block, dead) = chain
            .build_block(proposer, &pool, usize::MAX, usize::MAX)
            .unwrap();
        let nonces_of = |who: &pyralog_crypto::Keypair| -> Vec<u64> {
            let key = who.public();
            block
                .txs
                .iter()
                .filter(|t| t.sender == key)
                .map(|t| t.nonce)
                .collect()
        };
        assert_eq!(nonces_of(&a), [0, 1, 2, 3, 4, 5]);
        assert_eq!(nonces_of(&c), [0]);
        assert_eq!(block.txs.len(), 7);
        // b waits for its nonce 0, and d's delete for its key (it stays pending, with d's
        // next behind it); only c's repeat can never execute.
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0, repeat.hash());
        assert!(
            matches!(dead[0].1, TxError::AlreadyNotarized(_)),
            "{:?}",
            dead[0].1
        );
    }

    /// A validated block is committed without hashing its transactions again, but a
    /// copy that differs from it (another body, or another carried certificate, under
    /// the same header) is refused and nothing is written.
    #[test]
    fn a_copy_of_a_validated_block_is_committed_only_if_it_is_the_same() {
        let (tc, _dir, mut chain) = test_chain();
        let txs = vec![
            tc.notarize(&user(1), 0, pyralog_crypto::content_digest(b"a"), ""),
            tc.notarize(&user(2), 0, pyralog_crypto::content_digest(b"b"), ""),
        ];
        let (block, _) = tc.make_block(txs);
        let cert = tc.certify_all(&block.header);
        let refused = |chain: &mut Chain, copy: Block| {
            let reason = match chain.commit(copy, cert.clone()) {
                Ok(Err(refused)) => refused.reason,
                Ok(Ok(_)) => panic!("a different copy was committed"),
                Err(e) => panic!("fatal instead of refused: {e}"),
            };
            // Nothing was written.
            assert_eq!(chain.store().tip().unwrap().height, 0);
            assert!(chain.store().block(1).unwrap().is_none());
            reason
        };
        // Another transaction, one fewer, or another carried certificate under the
        // validated header: each a fault of the block's contents.
        let mut other_tx = block.clone();
        other_tx.txs[1] = tc.notarize(&user(2), 0, pyralog_crypto::content_digest(b"c"), "");
        let mut fewer = block.clone();
        fewer.txs.pop();
        let mut other_certificate = block.clone();
        other_certificate.last_certificate = Some(cert.clone());
        for copy in [other_tx, fewer, other_certificate] {
            chain.validate(&block).unwrap();
            assert!(chain.validated.contains_key(&block.header.hash()));
            assert_eq!(refused(&mut chain, copy.clone()).kind(), "block_contents");
            // Not validated before: the same refusal, by the contents check.
            chain.validated.clear();
            assert_eq!(refused(&mut chain, copy).kind(), "block_contents");
        }
        // The block itself commits.
        chain.validate(&block).unwrap();
        let committed = chain.commit(block.clone(), cert.clone()).unwrap().unwrap();
        assert_eq!(committed.txs.len(), 2);
        assert_eq!(chain.store().tip().unwrap().height, 1);
    }

    #[test]
    fn signatures_are_checked_unless_this_node_verified_them_before() {
        let (tc, _dir, mut chain) = test_chain();
        let good = tc.put(&user(1), 0, b"a", b"1");
        let mut bad = tc.put(&user(2), 0, b"b", b"2");
        bad.signature.0[5] ^= 1;
        // The block is consistent (roots over the bad transaction as it is); only the
        // signature is wrong.
        let (block, _) = tc.make_block(vec![good.clone(), bad.clone()]);
        let signatures = |r: Result<(), Invalid>| match r {
            Err(Invalid::Signatures(at)) => at,
            other => panic!("expected bad signatures, got {other:?}"),
        };
        assert_eq!(signatures(chain.validate(&block)), vec![1]);
        // Skipping the first (already verified) still names the bad one by its index in
        // the block.
        let known = good.hash();
        assert_eq!(
            signatures(chain.validate_with(&block, &|h| *h == known)),
            vec![1]
        );
        // What the caller vouches for is not checked again: only transactions this node
        // verified may be vouched for (its mempool).
        let vouched = bad.hash();
        chain
            .validate_with(&block, &|h| *h == vouched || *h == known)
            .unwrap();
    }
}
