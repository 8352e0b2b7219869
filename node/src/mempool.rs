//! The transaction pool: bounded by count and bytes, ordered by arrival, at most one
//! transaction per (sender, nonce), and never holding a transaction whose nonce is
//! already used on the committed chain.
//!
//! Signature and chain-id checks happen before a transaction gets here (batch-verified
//! for gossip); the pool checks nonces against the committed state and its limits.

use std::collections::{BTreeMap, HashMap};

use pyralog_crypto::PublicKey;
use pyralog_ledger::{Hash, Transaction};

use crate::config::MempoolConfig;

/// Why a transaction was not accepted. The client sees the message and the code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// Encoded size over the limit.
    #[error("transaction is {len} bytes, over the limit of {max}")]
    Oversize {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a canonical transaction.
    #[error("transaction does not decode: {0}")]
    Malformed(String),
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// The transaction names another chain.
    #[error("transaction is for chain {found}, this node is on {expected}")]
    WrongChain {
        /// This chain.
        expected: String,
        /// The transaction's.
        found: String,
    },
    /// The nonce was used by a committed transaction.
    #[error("nonce {found} was already used: the sender's next nonce is {expected}")]
    NonceReplayed {
        /// The sender's next nonce.
        expected: u64,
        /// The transaction's.
        found: u64,
    },
    /// The nonce is too far ahead of the sender's next one.
    #[error("nonce {found} is too far ahead: the sender's next nonce is {expected}")]
    NonceTooFar {
        /// The sender's next nonce.
        expected: u64,
        /// The transaction's.
        found: u64,
    },
    /// Another transaction with the same sender and nonce is pending.
    #[error("another transaction from this sender with nonce {nonce} is already pending")]
    NonceTaken {
        /// The nonce.
        nonce: u64,
    },
    /// The digest was notarized before.
    #[error("digest already notarized at height {height}")]
    AlreadyNotarized {
        /// Height of the first notarization.
        height: u64,
    },
    /// The pool is at its count or byte limit.
    #[error("mempool is full ({txs} transactions, {bytes} bytes)")]
    Full {
        /// Pending transactions.
        txs: usize,
        /// Pending bytes.
        bytes: usize,
    },
    /// The node cannot accept transactions now (shutting down, storage error).
    #[error("node unavailable: {0}")]
    Unavailable(String),
}

impl Reject {
    /// A stable machine-readable code (RPC error data, metric label).
    pub fn code(&self) -> &'static str {
        match self {
            Reject::Oversize { .. } => "oversize",
            Reject::Malformed(_) => "malformed",
            Reject::BadSignature => "bad_signature",
            Reject::WrongChain { .. } => "wrong_chain",
            Reject::NonceReplayed { .. } => "nonce_replayed",
            Reject::NonceTooFar { .. } => "nonce_too_far",
            Reject::NonceTaken { .. } => "nonce_taken",
            Reject::AlreadyNotarized { .. } => "already_notarized",
            Reject::Full { .. } => "mempool_full",
            Reject::Unavailable(_) => "unavailable",
        }
    }
}

/// Every rejection code, for metrics.
pub const REJECT_CODES: [&str; 10] = [
    "oversize",
    "malformed",
    "bad_signature",
    "wrong_chain",
    "nonce_replayed",
    "nonce_too_far",
    "nonce_taken",
    "already_notarized",
    "mempool_full",
    "unavailable",
];

/// A successful admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Newly added.
    Added,
    /// It was already pending (idempotent).
    AlreadyPending,
}

struct Entry {
    tx: Transaction,
    len: usize,
    seq: u64,
}

/// The pool.
pub struct Mempool {
    cfg: MempoolConfig,
    by_hash: HashMap<Hash, Entry>,
    by_sender: HashMap<PublicKey, BTreeMap<u64, Hash>>,
    order: BTreeMap<u64, Hash>,
    next_seq: u64,
    bytes: usize,
}

impl Mempool {
    /// An empty pool.
    pub fn new(cfg: MempoolConfig) -> Mempool {
        Mempool {
            cfg,
            by_hash: HashMap::new(),
            by_sender: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            bytes: 0,
        }
    }

    /// Pending transactions.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Pending bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether `hash` is pending.
    pub fn contains(&self, hash: &Hash) -> bool {
        self.by_hash.contains_key(hash)
    }

    /// Whether a new transaction `tx` of `len` encoded bytes, whose sender's next nonce on
    /// the committed chain is `committed_next_nonce`, would fit: its nonce is unused and
    /// within the window, no other pending transaction has it, and the pool has room.
    /// Memory lookups only, so the node asks this before its costlier checks.
    pub fn check(
        &self,
        tx: &Transaction,
        len: usize,
        committed_next_nonce: u64,
    ) -> Result<(), Reject> {
        if tx.nonce < committed_next_nonce {
            return Err(Reject::NonceReplayed {
                expected: committed_next_nonce,
                found: tx.nonce,
            });
        }
        if tx.nonce - committed_next_nonce > self.cfg.max_nonce_gap {
            return Err(Reject::NonceTooFar {
                expected: committed_next_nonce,
                found: tx.nonce,
            });
        }
        if self
            .by_sender
            .get(&tx.sender)
            .is_some_and(|m| m.contains_key(&tx.nonce))
        {
            return Err(Reject::NonceTaken { nonce: tx.nonce });
        }
        if self.by_hash.len() >= self.cfg.max_txs || self.bytes + len > self.cfg.max_bytes {
            return Err(Reject::Full {
                txs: self.by_hash.len(),
                bytes: self.bytes,
            });
        }
        Ok(())
    }

    /// Admits `tx` (hash `hash`, `len` encoded bytes, signature and chain already
    /// checked) given its sender's next nonce on the committed chain ([`Mempool::check`]).
    pub fn admit(
        &mut self,
        tx: Transaction,
        hash: Hash,
        len: usize,
        committed_next_nonce: u64,
    ) -> Result<Admitted, Reject> {
        if self.by_hash.contains_key(&hash) {
            return Ok(Admitted::AlreadyPending);
        }
        self.check(&tx, len, committed_next_nonce)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, hash);
        self.by_sender
            .entry(tx.sender)
            .or_default()
            .insert(tx.nonce, hash);
        self.bytes += len;
        self.by_hash.insert(hash, Entry { tx, len, seq });
        Ok(Admitted::Added)
    }

    /// Pending transactions in arrival order, with their encoded length (the proposer
    /// filters what executes).
    pub fn iter(&self) -> impl Iterator<Item = (&Hash, &Transaction, usize)> {
        self.order
            .values()
            .filter_map(|h| self.by_hash.get(h).map(|e| (h, &e.tx, e.len)))
    }

    /// Removes one transaction.
    pub fn remove(&mut self, hash: &Hash) {
        if let Some(e) = self.by_hash.remove(hash) {
            self.order.remove(&e.seq);
            self.bytes -= e.len;
            if let Some(m) = self.by_sender.get_mut(&e.tx.sender) {
                m.remove(&e.tx.nonce);
                if m.is_empty() {
                    self.by_sender.remove(&e.tx.sender);
                }
            }
        }
    }

    /// After a commit: removes the committed transactions and every pending transaction
    /// whose nonce the committed chain has now used (`next_nonce(sender)`).
    pub fn committed(
        &mut self,
        txs: &[(Hash, PublicKey)],
        mut next_nonce: impl FnMut(&PublicKey) -> Option<u64>,
    ) {
        for (h, _) in txs {
            self.remove(h);
        }
        for (_, sender) in txs {
            let Some(next) = next_nonce(sender) else {
                continue;
            };
            let stale: Vec<Hash> = self
                .by_sender
                .get(sender)
                .map(|m| m.range(..next).map(|(_, h)| *h).collect())
                .unwrap_or_default();
            for h in stale {
                self.remove(&h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use pyralog_crypto::Keypair;
    use pyralog_ledger::{ChainId, Payload};

    use super::*;

    fn tx(key: &Keypair, nonce: u64) -> (Transaction, Hash) {
        let t = Transaction::new_signed(
            key,
            ChainId::new("t").unwrap(),
            nonce,
            Payload::Put {
                key: b"k".to_vec(),
                value: nonce.to_be_bytes().to_vec(),
            },
        )
        .unwrap();
        let h = t.hash();
        (t, h)
    }

    fn cfg(max_txs: usize) -> MempoolConfig {
        MempoolConfig {
            max_txs,
            max_bytes: 10_000,
            max_nonce_gap: 4,
            ..MempoolConfig::default()
        }
    }

    #[test]
    fn admission_rules() {
        let k = Keypair::from_seed(&[1; 32]);
        let mut m = Mempool::new(cfg(3));
        let (t0, h0) = tx(&k, 5);
        assert_eq!(m.admit(t0.clone(), h0, 100, 5), Ok(Admitted::Added));
        assert_eq!(m.admit(t0, h0, 100, 5), Ok(Admitted::AlreadyPending));
        let (t, h) = tx(&k, 4);
        assert_eq!(
            m.admit(t, h, 100, 5),
            Err(Reject::NonceReplayed {
                expected: 5,
                found: 4
            })
        );
        let (t, h) = tx(&k, 10);
        assert_eq!(m.admit(t, h, 100, 5).unwrap_err().code(), "nonce_too_far");
        let other = Transaction::new_signed(
            &k,
            ChainId::new("t").unwrap(),
            5,
            Payload::Delete { key: b"x".to_vec() },
        )
        .unwrap();
        let oh = other.hash();
        assert_eq!(
            m.admit(other, oh, 100, 5),
            Err(Reject::NonceTaken { nonce: 5 })
        );
        for n in 6..8 {
            let (t, h) = tx(&k, n);
            m.admit(t, h, 100, 5).unwrap();
        }
        let (t, h) = tx(&k, 8);
        assert_eq!(m.admit(t, h, 100, 5).unwrap_err().code(), "mempool_full");
        assert_eq!((m.len(), m.bytes()), (3, 300));
    }

    #[test]
    fn check_gives_the_verdict_of_admit_and_holds_nothing() {
        let k = Keypair::from_seed(&[2; 32]);
        let mut m = Mempool::new(cfg(1));
        let (t0, h0) = tx(&k, 0);
        assert_eq!(m.check(&t0, 100, 0), Ok(()));
        assert!(m.is_empty());
        assert_eq!(m.admit(t0.clone(), h0, 100, 0), Ok(Admitted::Added));
        // Now the same sender and nonce is taken, and the pool is full.
        assert_eq!(m.check(&t0, 100, 0), Err(Reject::NonceTaken { nonce: 0 }));
        let (t1, h1) = tx(&k, 1);
        assert_eq!(m.check(&t1, 100, 0).unwrap_err().code(), "mempool_full");
        assert_eq!(m.admit(t1, h1, 100, 0).unwrap_err().code(), "mempool_full");
        assert_eq!((m.len(), m.bytes()), (1, 100));
    }

    #[test]
    fn commit_removes_included_and_stale_transactions() {
        let k = Keypair::from_seed(&[2; 32]);
        let mut m = Mempool::new(cfg(10));
        let txs: Vec<_> = (0..4).map(|n| tx(&k, n)).collect();
        for (t, h) in &txs {
            m.admit(t.clone(), *h, 10, 0).unwrap();
        }
        // Block with nonce 0 and 1 committed; someone else's copy of nonce 2 too.
        m.committed(&[(txs[0].1, k.public()), (txs[1].1, k.public())], |_| {
            Some(3)
        });
        let left: Vec<Hash> = m.iter().map(|(h, _, _)| *h).collect();
        assert_eq!(left, vec![txs[3].1]);
        assert_eq!(m.bytes(), 10);
    }
}
