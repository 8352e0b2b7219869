//! The RPC server's cache of proven blocks: what `tx` needs to prove a transaction of a
//! block, kept for the blocks asked about lately.
//!
//! An inclusion proof needs the tree of every transaction hash of its block, so a block
//! not held costs its decoding and a hash of each of its transactions (about 10 ms for a
//! block of 7,000 notarizations). Wallets ask for their receipts as their blocks commit,
//! so the asks of a loaded network interleave a few recent blocks; a cache of two blocks
//! rebuilt one in nearly every ask there (6.4 ms an ask against 0.8 in block order,
//! docs/PERFORMANCE.md). [`ProvenBlocks`] holds blocks within a budget of bytes rather
//! than a count, drops the least recently asked first, builds a missing block once
//! however many ask for it at the same time (the receipts of a new block are asked for
//! together) and whether or not they wait for it, and builds it off the async workers,
//! which the consensus driver shares, a few blocks at a time: clients asking for many
//! old blocks at once wait their turn rather than have the node decode them all in
//! memory together.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use pyralog_ledger::{Block, Encode, Hash, Header, Transaction, TxTree};
use tokio::sync::{Semaphore, watch};

/// A committed block as `tx` proves its transactions: the header, each transaction's
/// canonical encoding (decoded only when asked for: a decoded transaction takes about
/// three times its encoding), and the tree of their hashes.
pub struct ProvenBlock {
    header: Header,
    /// The transactions' encodings, one after another.
    encoded: Vec<u8>,
    /// Where each ends in `encoded`.
    ends: Vec<usize>,
    tree: TxTree,
}

/// A transaction of a [`ProvenBlock`].
pub struct ProvenTx<'a> {
    /// The transaction.
    pub tx: Transaction,
    /// Its hash.
    pub hash: Hash,
    /// Its canonical encoding.
    pub encoded: &'a [u8],
}

/// Bytes a [`TxTree`] holds per transaction, about: rs_merkle keeps its layers (some 2n
/// nodes of 40 bytes) twice, as the tree and as its one commit's history.
const TREE_BYTES_PER_TX: usize = 200;

impl ProvenBlock {
    /// Encodes and hashes each transaction of `block` once.
    pub fn new(block: Block) -> ProvenBlock {
        let Block { header, txs, .. } = block;
        let mut encoded = Vec::with_capacity(txs.len() * 200);
        let mut ends = Vec::with_capacity(txs.len());
        let mut hashes = Vec::with_capacity(txs.len());
        // Each decoded transaction is dropped once encoded, so a build holds about one
        // copy of the block rather than two.
        for tx in txs {
            let start = encoded.len();
            tx.encode(&mut encoded);
            hashes.push(Transaction::hash_of_encoding(&encoded[start..]));
            ends.push(encoded.len());
        }
        encoded.shrink_to_fit();
        ProvenBlock {
            header,
            encoded,
            ends,
            tree: TxTree::new(&hashes),
        }
    }

    /// The block's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The transaction at `index` (`None` past the last), decoded.
    pub fn tx(&self, index: usize) -> Option<Result<ProvenTx<'_>, String>> {
        let end = *self.ends.get(index)?;
        let start = index.checked_sub(1).map_or(0, |i| self.ends[i]);
        let encoded = &self.encoded[start..end];
        Some(
            pyralog_ledger::Decode::from_bytes(encoded)
                .map(|tx| ProvenTx {
                    tx,
                    hash: Transaction::hash_of_encoding(encoded),
                    encoded,
                })
                .map_err(|e| format!("transaction {index} of block {}: {e}", self.header.height)),
        )
    }

    /// The inclusion proof of the transaction at `index` in the header's `tx_root`.
    pub fn proof(&self, index: usize) -> Option<Vec<Hash>> {
        self.tree.inclusion_proof(index)
    }

    /// About how many bytes this holds.
    pub fn bytes(&self) -> usize {
        const FIXED: usize = 1024;
        FIXED
            + self.encoded.capacity()
            + self.ends.capacity() * size_of::<usize>()
            + self.ends.len() * TREE_BYTES_PER_TX
    }
}

/// Proven blocks by height, within a budget of bytes (see the module doc).
pub struct ProvenBlocks {
    shared: Arc<Shared>,
}

/// A build's outcome, as every ask for its block gets it.
type Outcome = Result<Arc<ProvenBlock>, String>;

struct Shared {
    budget: usize,
    inner: Mutex<Inner>,
    /// A permit for each block being built.
    builds: Arc<Semaphore>,
    /// Counts the blocks built.
    built_count: Counter,
    /// Bytes of the built blocks held.
    bytes_gauge: Gauge,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<u64, Slot>,
    /// The built blocks' heights by their last ask, oldest first.
    built: BTreeMap<u64, u64>,
    /// Bytes of the built blocks held.
    bytes: usize,
    /// Counts asks, to order the slots by their last.
    clock: u64,
    /// Numbers the builds, so a build settles only its own slot.
    builds: u64,
}

struct Slot {
    /// The build's outcome, once it is known.
    outcome: watch::Receiver<Option<Outcome>>,
    /// Which build fills `outcome`.
    build: u64,
    /// The clock at the last ask.
    used: u64,
    /// The block's [`ProvenBlock::bytes`] once built; 0 while it is being built.
    bytes: usize,
}

/// How [`ProvenBlocks::get`] found a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// It was held, or being built for an earlier ask.
    Held,
    /// This ask started its build.
    Built,
}

impl ProvenBlocks {
    /// An empty cache holding up to `budget` bytes of blocks, building at most `builds`
    /// (at least one) at a time; the block built last is kept even if it alone is larger
    /// than the budget.
    pub fn new(budget: usize, builds: usize) -> ProvenBlocks {
        ProvenBlocks::with_metrics(budget, builds, Counter::default(), Gauge::default())
    }

    /// [`ProvenBlocks::new`] counting its builds in `built` and showing the bytes it holds
    /// in `bytes`.
    pub fn with_metrics(budget: usize, builds: usize, built: Counter, bytes: Gauge) -> Self {
        ProvenBlocks {
            shared: Arc::new(Shared {
                budget,
                inner: Mutex::new(Inner::default()),
                builds: Arc::new(Semaphore::new(builds.max(1))),
                built_count: built,
                bytes_gauge: bytes,
            }),
        }
    }

    /// The block at `height`: held, or built by `build` on a blocking thread. A build
    /// runs as its own task, so it lands in the cache even if every ask for it has gone
    /// away; asks for a block being built wait for that build and get its outcome, and
    /// a failed build is not kept (the next ask builds again).
    pub async fn get<F>(&self, height: u64, build: F) -> Result<(Arc<ProvenBlock>, Found), String>
    where
        F: FnOnce() -> Result<ProvenBlock, String> + Send + 'static,
    {
        let (mut outcome, found) = {
            let mut inner = self.shared.lock();
            match inner.ask(height) {
                Some(outcome) => (outcome, Found::Held),
                None => (self.start(&mut inner, height, build), Found::Built),
            }
        };
        let settled = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| format!("the proof of block {height} was not built: shutting down"))?;
        match &*settled {
            Some(Ok(block)) => Ok((block.clone(), found)),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!("the proof of block {height} was not built")),
        }
    }

    /// Starts building the block at `height` in a new slot (the caller holds the lock).
    fn start<F>(&self, inner: &mut Inner, height: u64, build: F) -> watch::Receiver<Option<Outcome>>
    where
        F: FnOnce() -> Result<ProvenBlock, String> + Send + 'static,
    {
        let (tx, rx) = watch::channel(None);
        inner.clock += 1;
        inner.builds += 1;
        let id = inner.builds;
        inner.slots.insert(
            height,
            Slot {
                outcome: rx.clone(),
                build: id,
                used: inner.clock,
                bytes: 0,
            },
        );
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let failed =
                |e: &dyn std::fmt::Display| format!("building the proof of block {height}: {e}");
            let outcome = match shared.builds.clone().acquire_owned().await {
                Ok(permit) => match tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    build()
                })
                .await
                {
                    Ok(built) => built.map(Arc::new),
                    Err(e) => Err(failed(&e)),
                },
                Err(e) => Err(failed(&e)),
            };
            shared.settle(height, id, &outcome);
            // Kept in the channel whether or not an ask still waits on it.
            tx.send_replace(Some(outcome));
        });
        rx
    }

    /// Bytes of the blocks held.
    pub fn bytes(&self) -> usize {
        self.shared.lock().bytes
    }

    /// Heights of the blocks held, built or being built, in order.
    pub fn heights(&self) -> Vec<u64> {
        let mut heights: Vec<u64> = self.shared.lock().slots.keys().copied().collect();
        heights.sort_unstable();
        heights
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change under the lock leaves the map and its byte count consistent
        // before anything that can panic, so a poisoned lock holds a usable cache.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps what build `id` of the block at `height` made, or forgets its slot if it
    /// failed, then evicts down to the budget.
    fn settle(&self, height: u64, id: u64, outcome: &Outcome) {
        let mut inner = self.lock();
        let Some(slot) = inner.slots.get_mut(&height).filter(|s| s.build == id) else {
            return;
        };
        match outcome {
            Ok(block) => {
                let bytes = block.bytes();
                slot.bytes = bytes;
                let used = slot.used;
                inner.bytes += bytes;
                inner.built.insert(used, height);
                self.built_count.inc();
                inner.evict(height, self.budget);
            }
            Err(_) => {
                inner.slots.remove(&height);
            }
        }
        self.bytes_gauge
            .set(i64::try_from(inner.bytes).unwrap_or(i64::MAX));
    }
}

impl Inner {
    /// The outcome of the slot of `height`, made the most recently asked, if there is
    /// one.
    fn ask(&mut self, height: u64) -> Option<watch::Receiver<Option<Outcome>>> {
        self.clock += 1;
        let used = self.clock;
        let slot = self.slots.get_mut(&height)?;
        if slot.bytes > 0 {
            self.built.remove(&slot.used);
            self.built.insert(used, height);
        }
        slot.used = used;
        Some(slot.outcome.clone())
    }

    /// Drops the least recently asked built blocks, other than `keep`, until the held
    /// ones fit in `budget`.
    fn evict(&mut self, keep: u64, budget: usize) {
        let mut kept = None;
        while self.bytes > budget {
            let Some((used, h)) = self.built.pop_first() else {
                break;
            };
            if h == keep {
                kept = Some((used, h));
                continue;
            }
            if let Some(slot) = self.slots.remove(&h) {
                self.bytes -= slot.bytes;
            }
        }
        if let Some((used, h)) = kept {
            self.built.insert(used, h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use pyralog_ledger::EngineId;
    use pyralog_ledger::testing::{TestChain, user};

    /// A block of `txs` puts, distinct for each `tag`.
    fn block(tag: u64, txs: usize) -> Block {
        let chain = TestChain::new(1, EngineId::Tendermint);
        let key = user(tag);
        let txs = (0..txs as u64)
            .map(|nonce| chain.put(&key, nonce, format!("k{tag}-{nonce}").as_bytes(), b"v"))
            .collect();
        chain.make_block(txs).0
    }

    fn built(height: u64, txs: usize) -> Result<ProvenBlock, String> {
        Ok(ProvenBlock::new(block(height, txs)))
    }

    #[test]
    fn a_proven_block_gives_back_each_transaction_and_its_proof() {
        let b = block(3, 5);
        let hashes: Vec<Hash> = b.txs.iter().map(Transaction::hash).collect();
        let tree = TxTree::new(&hashes);
        let p = ProvenBlock::new(b.clone());
        for (i, tx) in b.txs.iter().enumerate() {
            let got = p.tx(i).unwrap().unwrap();
            assert_eq!(&got.tx, tx);
            assert_eq!(got.hash, tx.hash());
            assert_eq!(got.encoded, tx.to_bytes().as_slice());
            assert_eq!(p.proof(i), tree.inclusion_proof(i));
        }
        assert!(p.tx(5).is_none() && p.proof(5).is_none());
        assert_eq!(p.header(), &b.header);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_least_recently_asked_blocks_go_first_when_over_budget() {
        let one = ProvenBlock::new(block(1, 50)).bytes();
        let cache = ProvenBlocks::new(3 * one + one / 2, 2);
        for h in [1, 2, 3] {
            assert_eq!(
                cache.get(h, move || built(h, 50)).await.unwrap().1,
                Found::Built
            );
        }
        // Asked again, 1 becomes the most recent; 4 then pushes out 2, the oldest.
        assert_eq!(cache.get(1, || built(1, 50)).await.unwrap().1, Found::Held);
        assert_eq!(cache.get(4, || built(4, 50)).await.unwrap().1, Found::Built);
        assert_eq!(cache.heights(), vec![1, 3, 4]);
        assert!(cache.bytes() <= 3 * one + one / 2);
        // A block larger than the whole budget is still kept, alone.
        assert_eq!(
            cache.get(9, || built(9, 500)).await.unwrap().1,
            Found::Built
        );
        assert_eq!(cache.heights(), vec![9]);
        assert_eq!(cache.get(9, || built(9, 500)).await.unwrap().1, Found::Held);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn asks_for_one_block_at_once_build_it_once() {
        let cache = Arc::new(ProvenBlocks::new(64 << 20, 2));
        let builds = Arc::new(AtomicUsize::new(0));
        let asks: Vec<_> = (0..16)
            .map(|_| {
                let (cache, builds) = (cache.clone(), builds.clone());
                tokio::spawn(async move {
                    cache
                        .get(5, move || {
                            builds.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            built(5, 20)
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut found = Vec::new();
        for ask in asks {
            found.push(ask.await.unwrap().1);
        }
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert_eq!(found.iter().filter(|f| **f == Found::Built).count(), 1);
        assert_eq!(cache.heights(), vec![5]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn asks_for_many_blocks_at_once_build_a_few_at_a_time() {
        let cache = Arc::new(ProvenBlocks::new(64 << 20, 2));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let asks: Vec<_> = (1..=6)
            .map(|h| {
                let (cache, running, most) = (cache.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    cache
                        .get(h, move || {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(30));
                            running.fetch_sub(1, Ordering::SeqCst);
                            built(h, 3)
                        })
                        .await
                        .unwrap()
                        .1
                })
            })
            .collect();
        for ask in asks {
            assert_eq!(ask.await.unwrap(), Found::Built);
        }
        // Two at most (on a loaded machine they need not overlap at all).
        assert!((1..=2).contains(&most.load(Ordering::SeqCst)));
        assert_eq!(cache.heights(), (1..=6).collect::<Vec<u64>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_build_whose_ask_went_away_still_lands_once() {
        let built_count = Counter::default();
        let cache = ProvenBlocks::with_metrics(64 << 20, 2, built_count.clone(), Gauge::default());
        let builds = Arc::new(AtomicUsize::new(0));
        let counted = builds.clone();
        let slow = cache.get(6, move || {
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(100));
            built(6, 3)
        });
        let dropped = tokio::time::timeout(std::time::Duration::from_millis(10), slow).await;
        assert!(dropped.is_err());
        // The next ask waits for that build instead of starting another.
        let again = cache.get(6, || panic!("built twice")).await.unwrap();
        assert_eq!(again.1, Found::Held);
        assert_eq!(again.0.header().height, block(6, 3).header.height);
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert_eq!(built_count.get(), 1);
        assert_eq!(cache.heights(), vec![6]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_build_is_not_kept_and_the_next_ask_builds_again() {
        let cache = ProvenBlocks::new(64 << 20, 2);
        let e = cache.get(7, || Err("disk on fire".to_string())).await;
        assert_eq!(e.err().as_deref(), Some("disk on fire"));
        assert!(cache.heights().is_empty() && cache.bytes() == 0);
        let panicked = cache
            .get(7, || -> Result<ProvenBlock, String> { panic!("a bug") })
            .await;
        assert!(panicked.is_err());
        assert!(cache.heights().is_empty());
        assert_eq!(cache.get(7, || built(7, 3)).await.unwrap().1, Found::Built);
        assert_eq!(cache.heights(), vec![7]);
    }
}
