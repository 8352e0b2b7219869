//! [`Store`] on sled 0.34: one tree, keys prefixed by record kind.
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `b` | height (u64 BE) | canonical block |
//! | `h` | height | canonical header |
//! | `c` | height | canonical certificate |
//! | `t` | transaction hash | height, index, log index (format 2) |
//! | `x`, `X` | run, bucket | the transaction index in runs (formats 3 and 4, [`crate::txindex`]) |
//! | `L` | level (u8), page (u64 BE) | up to 64 log node hashes, nodes `64 × page` on |
//! | `S` | version (u64 BE), page (u32 BE) | up to 32 state nodes (64 before format 4) |
//! | `r` | height | the state root: hash, version, index |
//! | `m` | name | node-local metadata ([`Store::meta`]) |
//! | `T` | (none) | the committed tip: height, log size, state root and its location |
//! | `F` | (none) | the storage format ([`FORMAT`]) |
//!
//! One tree keeps every commit a single atomic `Batch` (sled's multi-tree transactions are
//! slower and the sled notes advise few trees). Durability comes from `flush()` after each
//! batch: sled otherwise persists only every 500 ms.
//!
//! **State nodes in pages.** A block's new state nodes are numbered 0, 1, 2... at the
//! block's height ([`NodeRef`]), and nodes `32k..32k+31` are one record (`64k..64k+63`
//! before format 4): a page is `1 ‖ (u32 BE length ‖ node)*`. sled spends several µs on
//! every record it inserts whatever its size (6 to 15 µs, measured in different
//! sessions), and a transaction writes about 16 nodes, so one record per node made the
//! commit most of a validator's work; in pages a block's nodes cost a few sequential
//! records. A node is read by decoding its page up to it, and checked against the hash
//! its parent names. A node that the node caches do not hold is read from sled, which
//! reads and decodes the B-tree leaf holding its page whole unless its own cache holds
//! that leaf, and a leaf holds 8 to 16 records: so such a node costs a read of that many
//! pages. With 64 nodes a page (a leaf of 50 to 100 KB), those reads took 40% of a
//! validator's CPU late in a long overload. Format 4's pages of 32 nodes halve the
//! bytes of each such read, for twice the records a commit inserts
//! (docs/PERFORMANCE.md). The page size is not part of any hash: nodes of formats 3 and
//! 4 compute the same roots and proofs.
//!
//! **Log nodes in pages** for the same reason: a level's nodes are written once, in index
//! order, so page `p` of a level holds the hashes of nodes `64p..64p+63` back to back and
//! grows by appending until it is full.

use std::path::Path;

use pyralog_ledger::codec::{Decode, Encode};
use pyralog_ledger::log::{LogNodes, NodeId};
use pyralog_ledger::state::{self, NodeRef, StateNode, StateNodes, Subtree};
use pyralog_ledger::{Block, Certificate, Execution, Hash, Header, StoreError, Tip};

use crate::recent::RecentNodes;
use crate::txindex::{self, TxIndex};
use crate::upper::UpperNodes;
use crate::{StorageError, Store, TxLocation};

const TIP_KEY: &[u8] = b"T";
const FORMAT_KEY: &[u8] = b"F";

/// The storage format of a new database. Format 4 (2026-12-07) writes state pages of
/// [`NODES_PER_PAGE`] nodes. Format 3 (2026-12) keeps the transaction index in runs
/// ([`crate::txindex`]), with pages of 64 nodes, and format 2 (2026-11) a record per
/// transaction; both are still read and written as such. Format 1 (until 2026-11) kept
/// state nodes under their hashes; it is not read.
pub const FORMAT: u8 = 4;

/// The oldest format [`SledStore::open`] opens; it opens every one up to [`FORMAT`].
pub const OLDEST_FORMAT: u8 = 2;

/// State nodes per page record (format 4).
pub const NODES_PER_PAGE: u32 = 32;

/// State nodes per page record in formats 2 and 3.
const NODES_PER_PAGE_BEFORE_4: u32 = 64;

/// State nodes per page record in a database of `format`.
fn nodes_per_page(format: u8) -> u32 {
    if format >= 4 {
        NODES_PER_PAGE
    } else {
        NODES_PER_PAGE_BEFORE_4
    }
}

/// Page encoding version.
const PAGE_VERSION: u8 = 1;

/// Log-tree nodes (32-byte hashes) per page record.
pub const LOG_NODES_PER_PAGE: u64 = 64;

/// A [`Store`] in a sled database directory.
pub struct SledStore {
    db: ::sled::Db,
    /// Serialises commits: the tip check and the batch must not interleave.
    commit_lock: std::sync::Mutex<()>,
    /// The database's storage format.
    format: u8,
    /// The transaction index's runs and recent entries (formats 3 and 4; `None` in
    /// format 2). A commit holds it for writing from its batch until the index has the
    /// batch's transactions, so no lookup sees a stored block without them.
    tx_index: Option<std::sync::RwLock<TxIndex>>,
    /// Decoded state nodes with their hashes, the hot ones: every transaction walks the
    /// tree from the root, so its upper levels are read for every key. A stored node
    /// never changes, so a cached node is never stale.
    nodes: std::sync::Mutex<StateCache>,
}

/// The state-node caches: the tree's top levels by place ([`UpperNodes`]), and the
/// recently used nodes the places do not hold: leaves, nodes below the top levels, and
/// nodes read without their place ([`RecentNodes`]).
struct StateCache {
    upper: UpperNodes,
    recent: RecentNodes,
    /// Nodes read so far, by where they were found (counted under the cache's lock,
    /// which every read takes anyway).
    reads: StateNodeReads,
}

/// State-tree nodes read through a [`SledStore`] since it opened, by where they were
/// found: `pages` is how often the caches missed (the share that
/// `storage.state_cache_mb` decides).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateNodeReads {
    /// Found at their place in the top levels ([`UpperNodes`]).
    pub places: u64,
    /// Found among the recent nodes ([`RecentNodes`]).
    pub recent: u64,
    /// Read from their page in the database.
    pub pages: u64,
}

/// Generations of the recent-node cache ([`RecentNodes`]). With two, each
/// change dropped half of what it held at once, leaves a new key's insertion needs
/// among them, and every validator slowed for 2 to 5 s at each change under load
/// (docs/PERFORMANCE.md); with four, a change drops a quarter, for the same memory.
const RECENT_GENERATIONS: usize = 4;

impl StateCache {
    /// Caches in about `bytes`: the most top levels that fit in half of it, and recent
    /// nodes in the rest.
    fn new(bytes: usize) -> StateCache {
        let upper = UpperNodes::new(UpperNodes::levels_for(bytes / 2));
        let recent =
            bytes.saturating_sub(upper.bytes()) / RECENT_GENERATIONS / STATE_CACHE_BYTES_PER_NODE;
        StateCache {
            upper,
            recent: RecentNodes::new(recent, RECENT_GENERATIONS),
            reads: StateNodeReads::default(),
        }
    }

    /// Takes in a commit at `version`: its new nodes (`writes`, to the tree `root`) and
    /// the nodes they replaced.
    fn committed(
        &mut self,
        version: u64,
        root: &Subtree,
        writes: &[(Subtree, StateNode)],
        replaced: &[NodeRef],
    ) {
        for at in replaced {
            self.recent.remove(at);
        }
        let kept = self.upper.put_writes(version, root, writes);
        for ((at, node), _) in writes
            .iter()
            .zip(kept)
            .filter(|((_, n), kept)| !kept && cacheable(n))
        {
            self.recent.insert(at.at, at.hash, node.clone());
        }
    }
}

/// Memory a recently used state node takes, for sizing that cache ([`RecentNodes`]) from
/// what of the budget the top levels ([`UpperNodes`]) leave: 152 bytes in its
/// generation's slab (location, hash and decoded node), 6 to 11 bytes of table, and a
/// leaf's value on the heap, up to `NODE_CACHE_VALUE_BYTES` (256 bytes). Under a
/// notarization load a leaf's value is a 93-byte record (a 96-byte block of the node's
/// allocator), and leaves are 60 to 75% of the nodes below the top levels, so a node
/// takes about 240 bytes on average; a workload of larger values takes more, up to about
/// 420 bytes a leaf. (Until 2026-12-08 the cache kept its nodes in its hash tables,
/// sized for twice their nodes and rounded up to a power of two: about 350 bytes a node
/// besides the leaf's value, and the default budget, then 256 MiB, used about 470 MB.)
pub const STATE_CACHE_BYTES_PER_NODE: usize = 240;

/// The state-node caches' budget in [`SledStore::open`]: the most top levels of the tree
/// whose places fit in half of it ([`UpperNodes`]: 20 levels, 151 MB at this default),
/// and recently used nodes in the rest (four generations of 332,049, 212 MB with their
/// tables, and about 100 MB of leaf values once full): about 470 MB in all, what the
/// former layout's default of 256 MiB used for 19 levels and four generations of 229,376
/// ([`STATE_CACHE_BYTES_PER_NODE`]).
///
/// Every read walks the state tree from its root, and a node the caches do not hold
/// costs a sled read of its page. Once the live tree (about two nodes per key)
/// outgrows the cache, the reads of a validator under load slow down several times. The
/// figures of the defaults of their time (docs/PERFORMANCE.md; one run each unless
/// said): a 4-validator testnet fed 1,200 tx/s fell behind at about 110,000 keys with
/// 200,000 nodes per generation, at 160,000 to 190,000 with about 447,000, and at about
/// 250,000 with 1,000,000, while commits left replaced nodes in the cache. Since they
/// drop them, and with sled's cache at [`DEFAULT_DB_CACHE_BYTES`], 447,000 kept up to
/// about 345,000 keys, and with a cheaper proposal build besides, through a whole run to
/// 480,000. With the top levels by place, 3,000 tx/s held through 180 s (540,000 keys).
/// Under overload for 180 s (to 1.44 million keys), at 256 MiB in the former layout: about
/// 5,300 to 6,200 tx/s, late in such a run 40% of a validator's CPU on sled reads of
/// nodes the caches did not hold, and 7,200 with 1,024 MiB; with state pages of 32 nodes
/// (format 4, so that sled reads half the bytes a miss), 5,900 to 6,100 against 4,600 to
/// 4,700 in a slower hour. This default, in slabs and with a displaced leaf kept where
/// it is, committed 6,435 to 6,736 tx/s against 6,100 to 6,341 for that last build at
/// its 256 MiB, in three alternated rounds.
pub const DEFAULT_STATE_CACHE_BYTES: usize = 448 << 20;

/// sled's own cache of its B-tree pages, which hold the records (state pages, blocks,
/// indexes), for [`SledStore::open`].
///
/// A state node the node cache does not hold is read from its record's sled page; one
/// that sled does not hold either is read from the file in several reads into zeroed
/// buffers, and deserialised whole. sled counts its cache in serialised bytes, so the
/// process uses more memory than this. It was 128 MiB (docs/PERFORMANCE.md).
pub const DEFAULT_DB_CACHE_BYTES: usize = 512 << 20;

/// The smallest sled cache [`SledStore::open_with_cache`] sets.
const MIN_DB_CACHE_BYTES: usize = 8 << 20;

/// Leaves with larger values are not cached: a value may be up to 64 KiB, and the hot
/// nodes are the internal ones near the root.
const NODE_CACHE_VALUE_BYTES: usize = 256;

fn cacheable(node: &StateNode) -> bool {
    match node {
        StateNode::Internal { .. } => true,
        StateNode::Leaf { value, .. } => value.len() <= NODE_CACHE_VALUE_BYTES,
    }
}

fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn height_key(prefix: u8, height: u64) -> Vec<u8> {
    key(prefix, &height.to_be_bytes())
}

/// The key of the log page holding node `id`, and the node's slot in it.
fn log_page(id: NodeId) -> ([u8; 10], usize) {
    let mut k = [0u8; 10];
    k[0] = b'L';
    k[1] = id.level;
    k[2..].copy_from_slice(&(id.index / LOG_NODES_PER_PAGE).to_be_bytes());
    (k, (id.index % LOG_NODES_PER_PAGE) as usize)
}

fn page_key(version: u64, page: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = b'S';
    k[1..9].copy_from_slice(&version.to_be_bytes());
    k[9..].copy_from_slice(&page.to_be_bytes());
    k
}

/// The page records of a block's new state nodes (numbered 0, 1, 2... in order),
/// `page_nodes` to a page.
fn encode_pages(
    version: u64,
    writes: &[(Subtree, StateNode)],
    page_nodes: u32,
) -> Vec<([u8; 13], Vec<u8>)> {
    writes
        .chunks(page_nodes as usize)
        .enumerate()
        .map(|(page, nodes)| {
            let mut out = Vec::with_capacity(1 + nodes.len() * 96);
            out.push(PAGE_VERSION);
            for (_, node) in nodes {
                let at = out.len();
                out.extend_from_slice(&[0; 4]);
                node.encode(&mut out);
                let len = (out.len() - at - 4) as u32;
                out[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
            (page_key(version, page as u32), out)
        })
        .collect()
}

/// Node `slot` of a page record, or `None` if the page holds fewer nodes.
fn decode_page_slot(page: &[u8], slot: u32) -> Result<Option<StateNode>, StoreError> {
    let mut d = pyralog_ledger::codec::Decoder::new(page);
    let node = (|| {
        d.version("state node page", PAGE_VERSION)?;
        for i in 0..=slot {
            if d.remaining() == 0 {
                return Ok(None);
            }
            let len = d.u32("node length")?;
            let bytes = d.take(len as usize, "node")?;
            if i == slot {
                return StateNode::from_bytes(bytes).map(Some);
            }
        }
        Ok(None)
    })();
    node.map_err(|e: pyralog_ledger::CodecError| StoreError::Corrupt {
        what: "state node page",
        reason: e.to_string(),
    })
}

/// Why a stored log page is corrupt, if it is: its length must be whole hashes, at most
/// a page of them.
fn log_page_fault(page: &[u8]) -> Option<String> {
    (!page.len().is_multiple_of(32) || page.len() > 32 * LOG_NODES_PER_PAGE as usize)
        .then(|| format!("{} bytes", page.len()))
}

fn encode_tip(tip: &Tip) -> Vec<u8> {
    let mut out = Vec::with_capacity(61);
    out.push(2);
    out.extend_from_slice(&tip.height.to_be_bytes());
    out.extend_from_slice(&tip.log_size.to_be_bytes());
    tip.state().encode(&mut out);
    out
}

fn decode_tip(bytes: &[u8]) -> Result<Tip, StorageError> {
    let mut d = pyralog_ledger::codec::Decoder::new(bytes);
    let tip = (|| {
        d.version("tip", 2)?;
        let height = d.u64("height")?;
        let log_size = d.u64("log size")?;
        let state = Subtree::decode(&mut d)?;
        d.finish()?;
        Ok::<_, pyralog_ledger::CodecError>(Tip {
            height,
            log_size,
            state_root: state.hash,
            state_root_at: state.at,
        })
    })();
    tip.map_err(|e| StorageError::Corrupt {
        what: "tip",
        reason: e.to_string(),
    })
}

fn decode<T: Decode>(what: &'static str, bytes: &[u8]) -> Result<T, StorageError> {
    T::from_bytes(bytes).map_err(|e| StorageError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

impl SledStore {
    /// Opens (or creates) the store in directory `path`, with the default caches
    /// ([`DEFAULT_STATE_CACHE_BYTES`], [`DEFAULT_DB_CACHE_BYTES`]).
    pub fn open(path: &Path) -> Result<SledStore, StorageError> {
        SledStore::open_with_cache(path, DEFAULT_STATE_CACHE_BYTES, DEFAULT_DB_CACHE_BYTES)
    }

    /// Opens (or creates) the store in directory `path`, with state-node caches of about
    /// `state_cache_bytes` (the top levels that fit in half of it, [`UpperNodes`], and
    /// recent nodes at [`STATE_CACHE_BYTES_PER_NODE`] in the rest, [`RecentNodes`]) and
    /// `db_cache_bytes` (at least 8 MiB) for sled's cache of its pages.
    ///
    /// sled holds the directory's lock until its background flusher lets go of a dropped
    /// database, which can take a moment after the previous owner (a process still
    /// exiting, or an earlier handle in this one) has closed it; the lock is retried for
    /// up to 3 s before the error is returned.
    pub fn open_with_cache(
        path: &Path,
        state_cache_bytes: usize,
        db_cache_bytes: usize,
    ) -> Result<SledStore, StorageError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let db = loop {
            match ::sled::Config::new()
                .path(path)
                .cache_capacity(db_cache_bytes.max(MIN_DB_CACHE_BYTES) as u64)
                .open()
            {
                Err(::sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        let format = match db.get(FORMAT_KEY)? {
            Some(v) => match v.as_ref() {
                [f @ OLDEST_FORMAT..=FORMAT] => Ok(*f),
                [f] if *f > FORMAT => {
                    return Err(StorageError::NewerFormat {
                        path: path.to_path_buf(),
                        found: *f,
                    });
                }
                [f] => Err(f.to_string()),
                other => Err(format!("{other:?}")),
            },
            // Format 1 wrote no marker; a database with a tip is one.
            None if db.get(TIP_KEY)?.is_some() => Err("1".into()),
            None => {
                db.insert(FORMAT_KEY, &[FORMAT])?;
                db.flush()?;
                Ok(FORMAT)
            }
        };
        let format = format.map_err(|found| StorageError::Format {
            path: path.to_path_buf(),
            found,
        })?;
        let tx_index = if format >= 3 {
            Some(std::sync::RwLock::new(load_tx_index(&db)?))
        } else {
            None
        };
        Ok(SledStore {
            db,
            commit_lock: std::sync::Mutex::new(()),
            format,
            tx_index,
            nodes: std::sync::Mutex::new(StateCache::new(state_cache_bytes)),
        })
    }

    /// The state-tree nodes read so far, by where they were found.
    pub fn state_node_reads(&self) -> StateNodeReads {
        self.node_cache().reads
    }

    /// The database's storage format: [`FORMAT`] for one this code created.
    pub fn format(&self) -> u8 {
        self.format
    }

    /// State nodes per page record in this database ([`nodes_per_page`] of its format).
    fn page_nodes(&self) -> u32 {
        nodes_per_page(self.format)
    }

    /// Sets the transactions per run of the transaction index (formats 3 and 4; default
    /// [`crate::txindex::RUN_TXS`]), for tests and tools that want runs from few
    /// transactions. Runs already written keep their size.
    pub fn with_tx_run(self, txs: usize) -> SledStore {
        if let Some(index) = &self.tx_index {
            write(index).set_run_txs(txs);
        }
        self
    }

    /// Sets the buckets of a run of the transaction index written a commit (formats 3
    /// and 4; by default they follow the block's transactions), for tests that want runs
    /// written over many commits.
    pub fn with_tx_run_part(self, buckets: usize) -> SledStore {
        if let Some(index) = &self.tx_index {
            write(index).set_run_part(buckets);
        }
        self
    }

    /// Runs of the transaction index in sled (0 in format 2).
    pub fn tx_index_runs(&self) -> usize {
        self.tx_index.as_ref().map_or(0, |i| read(i).runs())
    }

    /// Calls `f` with the key of every stored state leaf of the versions (heights) up to
    /// `through`, until `f` breaks: a superset of the keys present in the state at any of
    /// those heights (a key removed since, or set again, comes once per version that
    /// wrote it). In storage order, one page record at a time; returns the number of
    /// leaves given to `f`. This is what a [`pyralog_ledger::TipCache`]'s filter of
    /// present keys is built from: every node of the state at height `h` was written by
    /// the commit of `h` or one before, in a page of that version, so a scan through `h`
    /// begun after that commit sees all of its leaves; later commits write later
    /// versions, outside the range. The pages are decoded, not checked against their
    /// parents' hashes (a walk does that): the scan trusts the store as the node wrote it.
    pub fn for_each_state_leaf_key(
        &self,
        through: u64,
        mut f: impl FnMut(&Hash) -> std::ops::ControlFlow<()>,
    ) -> Result<u64, StorageError> {
        let mut leaves = 0;
        for record in self.db.range(page_key(0, 0)..=page_key(through, u32::MAX)) {
            let (key, page) = record?;
            let corrupt = |reason: String| StorageError::Corrupt {
                what: "state node page",
                reason: format!("record {}: {reason}", hex::encode(&key)),
            };
            let mut d = pyralog_ledger::codec::Decoder::new(&page);
            d.version("state node page", PAGE_VERSION)
                .map_err(|e| corrupt(e.to_string()))?;
            while d.remaining() > 0 {
                let node = d
                    .u32("node length")
                    .and_then(|len| d.take(len as usize, "node"))
                    .and_then(StateNode::from_bytes)
                    .map_err(|e| corrupt(e.to_string()))?;
                if let StateNode::Leaf { key, .. } = node {
                    leaves += 1;
                    if f(&key).is_break() {
                        return Ok(leaves);
                    }
                }
            }
        }
        Ok(leaves)
    }

    /// Maps the state-node caches' memory now ([`UpperNodes::prefault`],
    /// [`RecentNodes::prefault`]): a node calls this once when it starts, so that its
    /// first loaded blocks do not wait for the kernel to zero the caches' pages (it
    /// holds the caches meanwhile; a commit waits). Returns whether it mapped anything:
    /// the recent nodes' memory not once in use, nor when it could not be allocated; the
    /// places' memory not yet taken, as far as it can be allocated.
    pub fn prefault_state_cache(&self) -> bool {
        let mut cache = self.node_cache();
        let upper = cache.upper.prefault();
        let recent = cache.recent.prefault();
        upper || recent
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(self.db.size_on_disk()?)
    }

    fn node_cache(&self) -> std::sync::MutexGuard<'_, StateCache> {
        // The cache holds only immutable nodes; one left mid-update by a panic is
        // still correct: a lookup returns a node only under the location it was
        // stored at, and the reader checks its hash.
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get_decoded<T: Decode>(
        &self,
        what: &'static str,
        k: &[u8],
    ) -> Result<Option<T>, StorageError> {
        self.db.get(k)?.map(|v| decode(what, &v)).transpose()
    }
}

/// Reads the transaction index. A panic elsewhere does not poison it: the index is
/// updated only after its batch is stored, so what a panic leaves is consistent.
fn read<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

/// Writes the transaction index (see [`read`] on poisoning).
fn write<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// Where each transaction of the block at `height` is, given the log size before it.
fn locations(height: u64, log_size: u64, tx_hashes: &[Hash]) -> Vec<(Hash, TxLocation)> {
    tx_hashes
        .iter()
        .enumerate()
        .map(|(index, hash)| {
            let loc = TxLocation {
                height,
                index: index as u32,
                log_index: log_size + index as u64,
            };
            (*hash, loc)
        })
        .collect()
}

/// The transaction index of a database of format 3 or 4: its runs, and the transactions
/// of the blocks after them, read back from those blocks.
fn load_tx_index(db: &::sled::Db) -> Result<TxIndex, StorageError> {
    let runs = match db.get(txindex::RUNS_KEY)? {
        Some(v) => txindex::decode_runs(&v)?,
        None => Vec::new(),
    };
    let tip = match db.get(TIP_KEY)? {
        None => Tip::genesis(),
        Some(v) => decode_tip(&v)?,
    };
    if let Some((_, last)) = runs.last()
        && *last > tip.height
    {
        return Err(StorageError::Corrupt {
            what: "transaction index",
            reason: format!("a run ends at height {last}, above the tip {}", tip.height),
        });
    }
    let mut index = TxIndex::new(runs);
    for height in index.recent_from()..=tip.height {
        let Some(bytes) = db.get(height_key(b'b', height))? else {
            return Err(StorageError::Corrupt {
                what: "block",
                reason: format!("block {height} below the tip is missing"),
            });
        };
        let block: Block = decode("block", &bytes)?;
        let hashes: Vec<Hash> = block.txs.iter().map(|t| t.hash()).collect();
        let log_size = block.header.log_size.saturating_sub(hashes.len() as u64);
        index.add(&locations(height, log_size, &hashes));
    }
    // A run that was being written is not listed: its blocks are read back with the
    // ones after them, and the next commit seals them again into a run from the same
    // height, whose buckets overwrite any of the run that were written.
    Ok(index)
}

fn backend(e: ::sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl LogNodes for SledStore {
    fn log_node(&self, id: NodeId) -> Result<Option<Hash>, StoreError> {
        let (k, slot) = log_page(id);
        let Some(page) = self.db.get(k).map_err(backend)? else {
            return Ok(None);
        };
        if let Some(reason) = log_page_fault(&page) {
            return Err(StoreError::Corrupt {
                what: "log node page",
                reason,
            });
        }
        Ok(page
            .get(slot * 32..slot * 32 + 32)
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .map(Hash))
    }
}

impl StateNodes for SledStore {
    fn state_node(&self, node: &Subtree) -> Result<Option<StateNode>, StoreError> {
        self.read_state_node(node, None)
    }

    fn state_node_on_path(
        &self,
        node: &Subtree,
        depth: usize,
        key: &Hash,
    ) -> Result<Option<StateNode>, StoreError> {
        self.read_state_node(node, Some((depth, key)))
    }
}

impl SledStore {
    /// A state node from the caches, else from its page, which the caches then keep: at
    /// its place (`depth` on `key`'s path) if that is one of the top levels and holds no
    /// newer node, else with the recent ones.
    fn read_state_node(
        &self,
        node: &Subtree,
        place: Option<(usize, &Hash)>,
    ) -> Result<Option<StateNode>, StoreError> {
        let cached = {
            let mut cache = self.node_cache();
            match place.and_then(|(depth, key)| cache.upper.get(node, depth, key)) {
                Some(found) => {
                    cache.reads.places += 1;
                    Some(found)
                }
                None => {
                    let found = cache.recent.get(&node.at);
                    cache.reads.recent += u64::from(found.is_some());
                    found
                }
            }
        };
        if let Some((hash, cached)) = cached {
            return if hash == node.hash {
                Ok(Some(cached))
            } else {
                state::check_node(node, cached).map(Some)
            };
        }
        let NodeRef { version, index } = node.at;
        let per_page = self.page_nodes();
        let Some(page) = self
            .db
            .get(page_key(version, index / per_page))
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let Some(stored) = decode_page_slot(&page, index % per_page)? else {
            return Ok(None);
        };
        let checked = state::check_node(node, stored)?;
        let mut cache = self.node_cache();
        cache.reads.pages += 1;
        let kept = place.is_some_and(|(depth, key)| cache.upper.put(node, &checked, depth, key));
        if !kept && cacheable(&checked) {
            cache.recent.insert(node.at, node.hash, checked.clone());
        }
        Ok(Some(checked))
    }
}

impl Store for SledStore {
    fn tip(&self) -> Result<Tip, StorageError> {
        match self.db.get(TIP_KEY)? {
            None => Ok(Tip::genesis()),
            Some(v) => decode_tip(&v),
        }
    }

    fn commit_block(
        &self,
        block: &Block,
        cert: &Certificate,
        execution: &Execution,
    ) -> Result<(), StorageError> {
        // A poisoned lock only means another commit panicked; the tip check below still
        // protects the store, so go on.
        let _guard = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let tip = self.tip()?;
        let header = &block.header;
        let height = header.height;
        if height != tip.height + 1 {
            return Err(StorageError::NotNext {
                height,
                tip: tip.height,
            });
        }
        let mismatch = |reason: &str| {
            Err(StorageError::ExecutionMismatch {
                height,
                reason: reason.to_string(),
            })
        };
        if cert.height != height || cert.header_hash != header.hash() {
            return mismatch("the certificate is not for this header");
        }
        pyralog_ledger::verify::verify_tx_count(header, block.txs.len())
            .map_err(|reason| StorageError::TxMismatch { height, reason })?;
        if execution.tx_root != header.tx_root
            || execution.tx_count != header.tx_count
            || execution.state_root != header.state_root
            || execution.log_root != header.log_root
            || execution.log_size != header.log_size
            || execution.log_size != tip.log_size + block.txs.len() as u64
        {
            return mismatch("roots, sizes or transaction count differ from the header");
        }
        // The nodes' places and hashes go into the pages and the node cache as given, so
        // they are checked here, as the transaction hashes are below.
        if execution
            .state_writes
            .iter()
            .enumerate()
            .any(|(i, (at, node))| {
                at.at.version != height || at.at.index as usize != i || at.hash != node.hash()
            })
        {
            return mismatch(
                "state nodes are not numbered 0, 1, 2... at the block's height, or not under their hashes",
            );
        }
        let new_tip = execution.tip(height);
        let root = new_tip.state();
        let root_found = match execution.state_writes.get(root.at.index as usize) {
            _ if root.is_empty() => true,
            Some((at, _)) if root.at.version == height => *at == root,
            _ => root.at.version < height && root.at.version > 0,
        };
        if !root_found {
            return mismatch("the state root's location is not one of the stored nodes");
        }
        if execution.tx_hashes.len() != block.txs.len() {
            return mismatch("the execution's transaction count differs from its header's");
        }
        if let Some((executed, found)) = execution
            .tx_hashes
            .iter()
            .zip(&block.txs)
            .map(|(h, tx)| (*h, tx.hash()))
            .find(|(h, found)| h != found)
        {
            return Err(StorageError::TxMismatch {
                height,
                reason: pyralog_ledger::VerifyError::HashMismatch {
                    what: "transaction",
                    expected: executed,
                    found,
                },
            });
        }
        let mut batch = ::sled::Batch::default();
        batch.insert(height_key(b'b', height), block.to_bytes());
        batch.insert(height_key(b'h', height), block.header.to_bytes());
        batch.insert(height_key(b'c', height), cert.to_bytes());
        // Each level's new nodes continue its last page: read it once, append, write it.
        let mut log_pages: std::collections::BTreeMap<[u8; 10], Vec<u8>> = Default::default();
        for (id, hash) in &execution.log_writes {
            let (k, slot) = log_page(*id);
            let page = match log_pages.entry(k) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(self.db.get(k)?.map(|v| v.to_vec()).unwrap_or_default())
                }
            };
            if let Some(reason) = log_page_fault(page) {
                return Err(StorageError::Corrupt {
                    what: "log node page",
                    reason,
                });
            }
            if page.len() != slot * 32 {
                return mismatch("log nodes do not continue the stored log");
            }
            page.extend_from_slice(&hash.0);
        }
        for (k, page) in log_pages {
            batch.insert(&k[..], page);
        }
        for (k, page) in encode_pages(height, &execution.state_writes, self.page_nodes()) {
            batch.insert(&k[..], page);
        }
        batch.insert(height_key(b'r', height), root.to_bytes());
        batch.insert(TIP_KEY, encode_tip(&new_tip));
        let located = locations(height, tip.log_size, &execution.tx_hashes);
        match &self.tx_index {
            // Formats 3 and 4: the index goes to sled a run at a time, each written a part at
            // a time in the batches of the blocks after the one that filled it (built
            // last, once nothing can refuse the commit, and while lookups go on).
            Some(index) => {
                let part = read(index).writes_for(&located);
                for (k, v) in &part.records {
                    batch.insert(&k[..], &v[..]);
                }
                if let Some(runs) = &part.runs {
                    batch.insert(txindex::RUNS_KEY, &runs[..]);
                }
                // Lookups wait while the batch is applied: one that came after the block
                // and the tip became readable must find the block's transactions, and
                // none may find a transaction whose block is not stored. Only commits
                // change the index, and `commit_lock` serialises them, so it is as
                // `writes_for` saw it.
                let mut index = write(index);
                self.db.apply_batch(batch)?;
                index.committed(height, &located, part);
            }
            // Format 2: a record per transaction.
            None => {
                for (tx_hash, loc) in &located {
                    batch.insert(key(b't', &tx_hash.0), &txindex::encode_location(loc)[..]);
                }
                self.db.apply_batch(batch)?;
            }
        }
        self.db.flush()?;
        // The new nodes are the tree's new upper levels: the next block reads them. The
        // nodes they replace are read again only for proofs at older heights; left in,
        // they would fill most of the cache (a transaction replaces about as many nodes
        // as it writes) and push out the live nodes deep in the tree, which the next
        // writes to those keys need.
        self.node_cache().committed(
            height,
            &root,
            &execution.state_writes,
            &execution.state_replaced,
        );
        Ok(())
    }

    fn state_root(&self, height: u64) -> Result<Option<Subtree>, StorageError> {
        if height == 0 {
            return Ok(Some(Subtree::EMPTY));
        }
        self.get_decoded("state root", &height_key(b'r', height))
    }

    fn block(&self, height: u64) -> Result<Option<Block>, StorageError> {
        self.get_decoded("block", &height_key(b'b', height))
    }

    fn header(&self, height: u64) -> Result<Option<Header>, StorageError> {
        self.get_decoded("header", &height_key(b'h', height))
    }

    fn certificate(&self, height: u64) -> Result<Option<Certificate>, StorageError> {
        self.get_decoded("certificate", &height_key(b'c', height))
    }

    fn tx_location(&self, tx_hash: &Hash) -> Result<Option<TxLocation>, StorageError> {
        let Some(index) = &self.tx_index else {
            return self
                .db
                .get(key(b't', &tx_hash.0))?
                .map(|v| txindex::decode_location(&v))
                .transpose();
        };
        let runs = match read(index).lookup(tx_hash) {
            Ok(loc) => return Ok(Some(loc)),
            Err(runs) => runs,
        };
        for first in runs {
            let record = self.db.get(txindex::bucket_key(first, tx_hash))?;
            if let Some(loc) = txindex::search(record.as_deref(), tx_hash)? {
                return Ok(Some(loc));
            }
        }
        Ok(None)
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get(key(b'm', name.as_bytes()))?.map(|v| v.to_vec()))
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        self.db.insert(key(b'm', name.as_bytes()), value)?;
        self.db.flush()?;
        Ok(())
    }

    fn put_meta_unsynced(&self, entries: &[(&str, &[u8])]) -> Result<(), StorageError> {
        // Plain inserts, in order: sled writes a batch's manifest apart, which costs a
        // log write of its own (and a sync at the next flush) for every call. Its log
        // recovers a prefix of the writes, so a later entry never survives a crash
        // without an earlier one.
        for (name, value) in entries {
            self.db.insert(key(b'm', name.as_bytes()), *value)?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn leaf(n: u8, len: usize) -> StateNode {
        StateNode::Leaf {
            key: Hash([n; 32]),
            value: vec![n; len],
        }
    }

    #[test]
    fn node_locations_spread_over_the_cache_buckets() {
        use crate::recent::NodeRefHasher;
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hasher = BuildHasherDefault::<NodeRefHasher>::default();
        // A thousand blocks of 64 nodes, into 2^16 buckets picked by the low bits, as
        // the map picks them: a uniform hash fills about 63% of the buckets (40,800).
        let buckets: std::collections::HashSet<u64> = (1..=1000u64)
            .flat_map(|version| (0..64u32).map(move |index| NodeRef { version, index }))
            .map(|r| hasher.hash_one(r) & 0xffff)
            .collect();
        assert!(buckets.len() > 38_000, "{} buckets used", buckets.len());
    }

    /// `nodes` as a block's writes at `version`.
    fn writes(version: u64, nodes: Vec<StateNode>) -> Vec<(Subtree, StateNode)> {
        nodes
            .into_iter()
            .enumerate()
            .map(|(i, node)| {
                let at = NodeRef {
                    version,
                    index: i as u32,
                };
                (
                    Subtree {
                        hash: node.hash(),
                        at,
                    },
                    node,
                )
            })
            .collect()
    }

    fn put_pages(store: &SledStore, version: u64, w: &[(Subtree, StateNode)]) {
        for (k, page) in encode_pages(version, w, store.page_nodes()) {
            store.db.insert(k, page).unwrap();
        }
    }

    /// Reads and proofs through the caches agree with a plain store of every node, at
    /// the tip and at older roots, while blocks insert, change and delete keys. The
    /// caches are small (7 top levels, four generations of 49 recent nodes), so walks go
    /// through places, recent nodes and pages, and places are left holding nodes of
    /// older trees.
    #[test]
    fn cached_reads_agree_with_every_stored_node_at_every_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with_cache(dir.path(), 64 << 10, 8 << 20).unwrap();
        assert_eq!(store.node_cache().upper.levels(), 7);
        let mut plain = state::MemState::new();
        let key = |i: u64| state::value_hash(&i.to_be_bytes());
        let mut roots = vec![Subtree::EMPTY];
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for version in 1..=60u64 {
            let mut updates = std::collections::BTreeMap::new();
            for _ in 0..1 + next() % 40 {
                let k = next() % 600;
                // One update in four deletes, so leaves move up and places empty.
                let value = (next() % 4 != 0).then(|| vec![version as u8; 1 + k as usize % 9]);
                updates.insert(key(k), value);
            }
            let root = *roots.last().unwrap();
            let up = state::update_tracked(&store, &root, version, &updates).unwrap();
            let expected = state::update_tracked(&plain, &root, version, &updates).unwrap();
            assert_eq!(up.root, expected.root);
            assert_eq!(up.writes, expected.writes);
            assert_eq!(up.replaced, expected.replaced);
            put_pages(&store, version, &up.writes);
            store
                .node_cache()
                .committed(version, &up.root, &up.writes, &up.replaced);
            plain.insert_all(up.writes);
            roots.push(up.root);
            for (age, root) in roots.iter().rev().enumerate().take(3) {
                for k in (0..600).step_by(if age == 0 { 1 } else { 7 }) {
                    let k = key(k);
                    assert_eq!(
                        state::get(&store, root, &k).unwrap(),
                        state::get(&plain, root, &k).unwrap()
                    );
                    assert_eq!(
                        state::prove(&store, root, &k).unwrap(),
                        state::prove(&plain, root, &k).unwrap()
                    );
                }
            }
        }
        let cache = store.node_cache();
        assert!(cache.upper.len() > 60, "{}", cache.upper.len());
        assert!(!cache.recent.is_empty());
    }

    /// Walks find the top levels at their places: with the tree's internal nodes at
    /// their places down to depth 14, and its leaves and the nodes below among the
    /// recent nodes (which hold no node a place holds), reads and proofs at the tip
    /// need no page; a walk that asked for another place would read a deleted page. Two
    /// keys share their first 70 bits, so a path runs deeper than any place (and than
    /// 64 bits).
    #[test]
    fn walks_read_the_top_levels_at_their_places() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with_cache(dir.path(), 8 << 20, 8 << 20).unwrap();
        let levels = store.node_cache().upper.levels();
        assert_eq!(levels, 14);
        let mut plain = state::MemState::new();
        let mut keys: Vec<Hash> = (0..300u64)
            .map(|i| state::value_hash(&i.to_be_bytes()))
            .collect();
        let mut twin = keys[0];
        twin.0[8] ^= 0x02; // bit 70
        keys.push(twin);
        let mut root = Subtree::EMPTY;
        for version in 1..=30u64 {
            let updates: std::collections::BTreeMap<_, _> = keys
                .iter()
                .skip(version as usize % 7)
                .step_by(7)
                .chain([&keys[0], &twin])
                .map(|k| (*k, Some(vec![version as u8])))
                .collect();
            let up = state::update_tracked(&store, &root, version, &updates).unwrap();
            put_pages(&store, version, &up.writes);
            store
                .node_cache()
                .committed(version, &up.root, &up.writes, &up.replaced);
            plain.insert_all(up.writes);
            root = up.root;
        }
        let (_, proof) = state::prove(&plain, &root, &twin).unwrap();
        assert!(proof.siblings.len() > 70, "{}", proof.siblings.len());
        let pages: Vec<_> = store
            .db
            .scan_prefix(b"S")
            .keys()
            .map(|k| k.unwrap())
            .collect();
        for k in &pages {
            store.db.remove(k).unwrap();
        }
        let before = store.state_node_reads();
        for k in &keys {
            assert_eq!(
                state::get(&store, &root, k).unwrap(),
                state::get(&plain, &root, k).unwrap()
            );
            assert_eq!(
                state::prove(&store, &root, k).unwrap(),
                state::prove(&plain, &root, k).unwrap()
            );
        }
        assert_eq!(state::get(&store, &root, &twin).unwrap(), Some(vec![30]));
        // The reads counted where they found their nodes: places and recent nodes, no
        // page.
        let after = store.state_node_reads();
        assert_eq!(after.pages, before.pages);
        assert!(after.places > before.places && after.recent > before.recent);
    }

    #[test]
    fn pages_hold_their_formats_nodes_and_every_slot_reads_back() {
        assert_eq!(nodes_per_page(FORMAT), 32);
        assert_eq!(nodes_per_page(3), 64);
        assert_eq!(nodes_per_page(2), 64);
        let nodes: Vec<StateNode> = (0..150).map(|i| leaf(i as u8, i % 7)).collect();
        let w = writes(9, nodes);
        for (page_nodes, count) in [(32, 5), (64, 3)] {
            let pages = encode_pages(9, &w, page_nodes);
            assert_eq!(pages.len(), count);
            assert_eq!(pages[2].0, page_key(9, 2));
            for (at, node) in &w {
                let (_, page) = &pages[(at.at.index / page_nodes) as usize];
                let got = decode_page_slot(page, at.at.index % page_nodes).unwrap();
                assert_eq!(got.as_ref(), Some(node));
            }
            // Past the last node of a page, or of the last page: nothing.
            let last = &pages[count - 1].1;
            assert_eq!(decode_page_slot(last, 150 % page_nodes).unwrap(), None);
            assert_eq!(decode_page_slot(&pages[0].1, page_nodes).unwrap(), None);
            // Truncated or mislabelled pages are corruption, never a panic.
            let page = &pages[0].1;
            for cut in 1..page.len() {
                let got = decode_page_slot(&page[..cut], page_nodes - 1);
                assert!(
                    matches!(got, Err(StoreError::Corrupt { .. }) | Ok(None)),
                    "{cut}"
                );
            }
            let mut other = page.clone();
            other[0] = 7;
            assert!(decode_page_slot(&other, 0).is_err());
        }
    }

    #[test]
    fn cached_and_stored_nodes_agree_and_are_checked_against_the_parents_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let big = leaf(8, NODE_CACHE_VALUE_BYTES + 1);
        let w = writes(3, vec![leaf(7, 1), big.clone()]);
        put_pages(&store, 3, &w);
        let (small_at, big_at) = (w[0].0, w[1].0);
        // Read from sled; then, gone from sled, still served from the cache.
        assert_eq!(store.state_node(&small_at).unwrap(), Some(leaf(7, 1)));
        assert_eq!(store.state_node(&big_at).unwrap(), Some(big));
        store.db.remove(page_key(3, 0)).unwrap();
        assert_eq!(store.state_node(&small_at).unwrap(), Some(leaf(7, 1)));
        // A leaf with a large value was read but not kept.
        assert_eq!(store.state_node(&big_at).unwrap(), None);
        // The right location with another hash is corruption, cached or not.
        let corrupt_with_another_hash = |at: Subtree| {
            let wrong = Subtree {
                hash: Hash([1; 32]),
                ..at
            };
            matches!(store.state_node(&wrong), Err(StoreError::Corrupt { .. }))
        };
        assert!(corrupt_with_another_hash(small_at));
        put_pages(&store, 3, &w);
        assert!(corrupt_with_another_hash(big_at));
        // Nothing stored at a location: none.
        let nowhere = Subtree {
            at: NodeRef {
                version: 4,
                index: 0,
            },
            ..small_at
        };
        assert_eq!(store.state_node(&nowhere).unwrap(), None);
    }

    #[test]
    fn a_prefaulted_state_cache_starts_empty_and_caches() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with_cache(dir.path(), 4 << 20, 8 << 20).unwrap();
        assert!(store.prefault_state_cache());
        assert!(store.node_cache().recent.is_empty());
        assert!(store.node_cache().upper.is_empty());
        let w = writes(3, vec![leaf(7, 1)]);
        put_pages(&store, 3, &w);
        assert_eq!(store.state_node(&w[0].0).unwrap(), Some(leaf(7, 1)));
        let read = |places, recent, pages| StateNodeReads {
            places,
            recent,
            pages,
        };
        assert_eq!(store.state_node_reads(), read(0, 0, 1));
        // A cache in use is left alone.
        assert!(!store.prefault_state_cache());
        // Gone from sled, served from the cache: no placeholder took its place.
        store.db.remove(page_key(3, 0)).unwrap();
        assert_eq!(store.state_node(&w[0].0).unwrap(), Some(leaf(7, 1)));
        assert_eq!(store.node_cache().recent.len(), 1);
        assert_eq!(store.state_node_reads(), read(0, 1, 1));
    }

    #[test]
    fn the_nodes_a_block_replaces_leave_the_cache_and_stay_readable() {
        use pyralog_ledger::EngineId;
        use pyralog_ledger::testing::{TestChain, user};
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let chain = TestChain::new(4, EngineId::Tendermint);
        let mut executions = Vec::new();
        for h in 1..=2u64 {
            let tip = store.tip().unwrap();
            let txs = (0..8)
                .map(|i| chain.notarize(&user(h * 10 + i), 0, Hash([(h * 10 + i) as u8; 32]), "m"))
                .collect();
            let prev = store
                .header(h - 1)
                .unwrap()
                .zip(store.certificate(h - 1).unwrap());
            let (block, exec) = chain.build_block(
                &store,
                &store,
                &tip,
                prev.as_ref().map(|(h, c)| (h, c)),
                txs,
            );
            store
                .commit_block(&block, &chain.certify_all(&block.header), &exec)
                .unwrap();
            executions.push((tip, exec));
        }
        let (before, second) = &executions[1];
        assert!(!second.state_replaced.is_empty());
        for at in &second.state_replaced {
            assert_eq!(store.node_cache().recent.get(at), None, "{at:?}");
        }
        // Every node of the new tree is still cached: block 2's and those of block 1 it
        // kept, the internal ones at their places.
        let mut live = vec![(store.tip().unwrap().state(), 0, Hash::ZERO)];
        let (mut kept_from_block_1, mut at_places) = (0, 0);
        while let Some((at, depth, path)) = live.pop() {
            let mut cache = store.node_cache();
            let (_, node) = match cache.upper.get(&at, depth, &path) {
                Some(found) => {
                    at_places += 1;
                    found
                }
                None => cache.recent.get(&at.at).expect("a live node cached"),
            };
            kept_from_block_1 += usize::from(at.at.version == 1);
            if let StateNode::Internal { left, right } = node {
                for (child, bit) in [(left, false), (right, true)] {
                    let mut child_path = path;
                    crate::upper::set_bit(&mut child_path, depth, bit);
                    if !child.is_empty() {
                        live.push((child, depth + 1, child_path));
                    }
                }
            }
        }
        assert!(kept_from_block_1 > 0);
        assert!(at_places > 0);
        // Out of the cache, the tree at height 1 is still read from the pages.
        for i in 10..18 {
            let key = state::state_key(state::Namespace::Notarization, &[i; 32]);
            assert!(state::get(&store, &before.state(), &key).unwrap().is_some());
        }
    }

    /// The error of opening a database that holds only `key` = `value`.
    fn refused(key: &[u8], value: &[u8]) -> StorageError {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = ::sled::open(dir.path()).unwrap();
            db.insert(key, value).unwrap();
            db.flush().unwrap();
        }
        SledStore::open(dir.path()).err().unwrap()
    }

    #[test]
    fn a_database_of_another_format_is_refused_with_a_clear_error() {
        // Format 1: a tip and no format marker.
        let err = refused(TIP_KEY, &[1u8; 49]);
        assert!(
            matches!(&err, StorageError::Format { found, .. } if found == "1"),
            "{err}"
        );
        assert!(err.to_string().contains("moved away"), "{err}");
        // A marker of a format this code does not know is refused too: an older one
        // with the advice to start over, a newer one with the advice to run the build
        // that wrote it.
        let err = refused(FORMAT_KEY, &[0]);
        assert!(
            matches!(&err, StorageError::Format { found, .. } if found == "0"),
            "{err}"
        );
        assert!(err.to_string().contains("reads formats 2 to 4"), "{err}");
        let err = refused(FORMAT_KEY, &[FORMAT + 1]);
        assert!(
            matches!(&err, StorageError::NewerFormat { found, .. } if *found == FORMAT + 1),
            "{err}"
        );
        assert!(err.to_string().contains("newer build"), "{err}");
        assert!(!err.to_string().contains("moved away"), "{err}");
        // A fresh directory is marked with this format and opens again.
        let fresh = tempfile::tempdir().unwrap();
        drop(SledStore::open(fresh.path()).unwrap());
        let store = SledStore::open(fresh.path()).unwrap();
        assert_eq!(
            store.db.get(FORMAT_KEY).unwrap().unwrap().as_ref(),
            [FORMAT]
        );
        assert_eq!(store.format(), 4);
        assert_eq!(store.page_nodes(), NODES_PER_PAGE);
    }
}
