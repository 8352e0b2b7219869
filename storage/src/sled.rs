//! [`Store`] on sled 0.34: one tree, keys prefixed by record kind.
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `b` | height (u64 BE) | canonical block |
//! | `h` | height | canonical header |
//! | `c` | height | canonical certificate |
//! | `t` | transaction hash | height, index, log index |
//! | `l` | level (u8), index (u64 BE) | log node hash |
//! | `s` | node hash | canonical state node |
//! | `m` | name | node-local metadata ([`Store::meta`]) |
//! | `T` | (none) | the committed tip: height, log size, state root |
//!
//! One tree keeps every commit a single atomic `Batch` (sled's multi-tree transactions are
//! slower and the sled notes advise few trees). Durability comes from `flush()` after each
//! batch: sled otherwise persists only every 500 ms.

use std::path::Path;

use pyralog_crypto::recent::Recent;
use pyralog_ledger::codec::{Decode, Encode};
use pyralog_ledger::log::{LogNodes, NodeId};
use pyralog_ledger::state::{StateNode, StateNodes};
use pyralog_ledger::{Block, Certificate, Execution, Hash, Header, StoreError, Tip};

use crate::{StorageError, Store, TxLocation};

const TIP_KEY: &[u8] = b"T";

/// A [`Store`] in a sled database directory.
pub struct SledStore {
    db: ::sled::Db,
    /// Serialises commits: the tip check and the batch must not interleave.
    commit_lock: std::sync::Mutex<()>,
    /// Decoded state nodes, the hot ones: every transaction walks the tree from the
    /// root, so its upper levels are read for every key. A node is stored under its own
    /// hash and never changes, so a cached node is never stale.
    nodes: std::sync::Mutex<Recent<Hash, StateNode>>,
}

/// Nodes per generation of the state-node cache: at most twice this many are held,
/// each at most about 100 + [`NODE_CACHE_VALUE_BYTES`] bytes (internal nodes, the many,
/// are 64 bytes).
const NODE_CACHE_NODES: usize = 200_000;

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

fn log_key(id: NodeId) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = b'l';
    k[1] = id.level;
    k[2..].copy_from_slice(&id.index.to_be_bytes());
    k
}

fn encode_tip(tip: &Tip) -> Vec<u8> {
    let mut out = Vec::with_capacity(49);
    out.push(1);
    out.extend_from_slice(&tip.height.to_be_bytes());
    out.extend_from_slice(&tip.log_size.to_be_bytes());
    out.extend_from_slice(&tip.state_root.0);
    out
}

fn decode_tip(bytes: &[u8]) -> Result<Tip, StorageError> {
    let mut d = pyralog_ledger::codec::Decoder::new(bytes);
    let tip = (|| {
        d.version("tip", 1)?;
        let tip = Tip {
            height: d.u64("height")?,
            log_size: d.u64("log size")?,
            state_root: d.hash("state root")?,
        };
        d.finish()?;
        Ok::<_, pyralog_ledger::CodecError>(tip)
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

fn encode_location(loc: &TxLocation) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[..8].copy_from_slice(&loc.height.to_be_bytes());
    out[8..12].copy_from_slice(&loc.index.to_be_bytes());
    out[12..].copy_from_slice(&loc.log_index.to_be_bytes());
    out
}

fn decode_location(bytes: &[u8]) -> Result<TxLocation, StorageError> {
    let b: &[u8; 20] = bytes.try_into().map_err(|_| StorageError::Corrupt {
        what: "transaction index",
        reason: format!("{} bytes, expected 20", bytes.len()),
    })?;
    let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    Ok(TxLocation {
        height: u64_at(0),
        index: u32::from_be_bytes(b[8..12].try_into().unwrap_or([0; 4])),
        log_index: u64_at(12),
    })
}

impl SledStore {
    /// Opens (or creates) the store in directory `path`.
    ///
    /// sled holds the directory's lock until its background flusher lets go of a dropped
    /// database, which can take a moment after the previous owner (a process still
    /// exiting, or an earlier handle in this one) has closed it; the lock is retried for
    /// up to 3 s before the error is returned.
    pub fn open(path: &Path) -> Result<SledStore, StorageError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let db = loop {
            match ::sled::Config::new()
                .path(path)
                .cache_capacity(128 << 20)
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
        Ok(SledStore {
            db,
            commit_lock: std::sync::Mutex::new(()),
            nodes: std::sync::Mutex::new(Recent::new(NODE_CACHE_NODES)),
        })
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(self.db.size_on_disk()?)
    }

    fn node_cache(&self) -> std::sync::MutexGuard<'_, Recent<Hash, StateNode>> {
        // The cache holds only immutable nodes; one left mid-update by a panic is
        // still correct.
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

fn backend(e: ::sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl LogNodes for SledStore {
    fn log_node(&self, id: NodeId) -> Result<Option<Hash>, StoreError> {
        match self.db.get(log_key(id)).map_err(backend)? {
            None => Ok(None),
            Some(v) => <[u8; 32]>::try_from(v.as_ref())
                .map(|h| Some(Hash(h)))
                .map_err(|_| StoreError::Corrupt {
                    what: "log node",
                    reason: format!("{} bytes", v.len()),
                }),
        }
    }
}

impl StateNodes for SledStore {
    fn state_node(&self, hash: &Hash) -> Result<Option<StateNode>, StoreError> {
        if let Some(node) = self.node_cache().get(hash) {
            return Ok(Some(node));
        }
        match self.db.get(key(b's', &hash.0)).map_err(backend)? {
            None => Ok(None),
            Some(v) => {
                let node = StateNode::from_bytes(&v).map_err(|e| StoreError::Corrupt {
                    what: "state node",
                    reason: e.to_string(),
                })?;
                if cacheable(&node) {
                    self.node_cache().insert(*hash, node.clone());
                }
                Ok(Some(node))
            }
        }
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
        if execution.tx_root != header.tx_root
            || execution.tx_count != header.tx_count
            || execution.state_root != header.state_root
            || execution.log_root != header.log_root
            || execution.log_size != header.log_size
            || execution.log_size != tip.log_size + block.txs.len() as u64
        {
            return mismatch("roots, sizes or transaction count differ from the header");
        }
        if execution.tx_hashes.len() != block.txs.len()
            || execution
                .tx_hashes
                .iter()
                .zip(&block.txs)
                .any(|(h, tx)| *h != tx.hash())
        {
            return mismatch("executed transactions differ from the block's");
        }
        let mut batch = ::sled::Batch::default();
        batch.insert(height_key(b'b', height), block.to_bytes());
        batch.insert(height_key(b'h', height), block.header.to_bytes());
        batch.insert(height_key(b'c', height), cert.to_bytes());
        for (index, tx_hash) in execution.tx_hashes.iter().enumerate() {
            let loc = TxLocation {
                height,
                index: index as u32,
                log_index: tip.log_size + index as u64,
            };
            batch.insert(key(b't', &tx_hash.0), &encode_location(&loc)[..]);
        }
        for (id, hash) in &execution.log_writes {
            batch.insert(&log_key(*id)[..], &hash.0[..]);
        }
        for (hash, node) in &execution.state_writes {
            batch.insert(key(b's', &hash.0), node.to_bytes());
        }
        batch.insert(TIP_KEY, encode_tip(&execution.tip(height)));
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        // The new nodes are the tree's new upper levels: the next block reads them.
        let mut cache = self.node_cache();
        for (hash, node) in execution.state_writes.iter().filter(|(_, n)| cacheable(n)) {
            cache.insert(*hash, node.clone());
        }
        Ok(())
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
        self.db
            .get(key(b't', &tx_hash.0))?
            .map(|v| decode_location(&v))
            .transpose()
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get(key(b'm', name.as_bytes()))?.map(|v| v.to_vec()))
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        self.db.insert(key(b'm', name.as_bytes()), value)?;
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node(n: u8) -> (Hash, StateNode) {
        let node = StateNode::Leaf {
            key: Hash([n; 32]),
            value: vec![n],
        };
        (node.hash(), node)
    }

    #[test]
    fn cached_and_stored_nodes_agree() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (hash, n) = node(7);
        store.db.insert(key(b's', &hash.0), n.to_bytes()).unwrap();
        // Read from sled; then, gone from sled, still served from the cache.
        assert_eq!(store.state_node(&hash).unwrap(), Some(n.clone()));
        store.db.remove(key(b's', &hash.0)).unwrap();
        assert_eq!(store.state_node(&hash).unwrap(), Some(n));
        assert_eq!(store.state_node(&Hash([9; 32])).unwrap(), None);
        // A leaf with a large value is read but not kept.
        let big = StateNode::Leaf {
            key: Hash([8; 32]),
            value: vec![8; NODE_CACHE_VALUE_BYTES + 1],
        };
        let big_hash = big.hash();
        store
            .db
            .insert(key(b's', &big_hash.0), big.to_bytes())
            .unwrap();
        assert_eq!(store.state_node(&big_hash).unwrap(), Some(big));
        store.db.remove(key(b's', &big_hash.0)).unwrap();
        assert_eq!(store.state_node(&big_hash).unwrap(), None);
    }
}
