//! The transaction pool: bounded by count and bytes, ordered by arrival, at most one
//! transaction per (sender, nonce), and never holding a transaction whose nonce is
//! already used on the committed chain.
//!
//! Signature and chain-id checks happen before a transaction gets here (batch-verified
//! for gossip); the pool checks nonces against the committed state and its limits.

use std::collections::{BTreeMap, HashMap, HashSet};

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
    /// It was admitted, then evicted: it waited behind a nonce gap while the pool was
    /// full, and a transaction that could run needed its place.
    #[error(
        "evicted from this node's full mempool (other nodes may still hold it): it waited behind a nonce gap (its sender's next nonce is not pending); submit the missing nonce, then this one again"
    )]
    Evicted,
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
            Reject::Evicted => "evicted",
            Reject::Unavailable(_) => "unavailable",
        }
    }
}

/// Every rejection code, for metrics.
pub const REJECT_CODES: [&str; 11] = [
    "oversize",
    "malformed",
    "bad_signature",
    "wrong_chain",
    "nonce_replayed",
    "nonce_too_far",
    "nonce_taken",
    "already_notarized",
    "mempool_full",
    "evicted",
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
    /// Whether every nonce from its sender's committed next one up to it is pending: it
    /// can go in the next block (behind those). Otherwise it waits for a gap to fill.
    ready: bool,
}

/// One sender's pending transactions.
struct Account {
    /// The sender's next nonce on the committed chain, as the pool last learnt it.
    base: u64,
    /// Pending transactions by nonce.
    nonces: BTreeMap<u64, Hash>,
    /// The first nonce from `base` on that is not pending: the transactions below it are
    /// ready, those above it are queued.
    ready_end: u64,
}

/// The pool. Pending transactions are either ready (their sender's nonces are pending
/// without a gap from its committed next nonce up to theirs) or queued behind a gap. A
/// proposal takes only ready ones; queued ones hold no place a ready one needs: when the
/// pool is full, a ready transaction evicts the queued ones that have waited longest.
pub struct Mempool {
    cfg: MempoolConfig,
    /// Boxed: a transaction with its decompressed sender key is about 400 bytes, and the
    /// table moves its entries whenever it grows or sweeps out the tombstones that
    /// committed transactions leave; a burst of 80,000 spent some 2% of a validator's CPU
    /// in those moves (docs/PERFORMANCE.md).
    by_hash: HashMap<Hash, Box<Entry>>,
    by_sender: HashMap<PublicKey, Account>,
    /// Ready transactions by arrival.
    ready: BTreeMap<u64, Hash>,
    /// Queued transactions by arrival (the oldest are evicted first).
    queued: BTreeMap<u64, Hash>,
    queued_bytes: usize,
    next_seq: u64,
    bytes: usize,
    became_ready: u64,
    evicted: Vec<Hash>,
    /// Pending transactions dropped because their nonce was used on the committed chain
    /// (by them, or by another transaction of their sender's), with that rejection.
    superseded: Vec<(Hash, Reject)>,
}

impl Mempool {
    /// An empty pool.
    pub fn new(cfg: MempoolConfig) -> Mempool {
        Mempool {
            cfg,
            by_hash: HashMap::new(),
            by_sender: HashMap::new(),
            ready: BTreeMap::new(),
            queued: BTreeMap::new(),
            queued_bytes: 0,
            next_seq: 0,
            bytes: 0,
            became_ready: 0,
            evicted: Vec::new(),
            superseded: Vec::new(),
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

    /// Pending transactions queued behind a nonce gap.
    pub fn queued_len(&self) -> usize {
        self.queued.len()
    }

    /// How many transactions have become ready since the pool was made: a proposer
    /// waiting for one to include tries again when this changes.
    pub fn became_ready(&self) -> u64 {
        self.became_ready
    }

    /// The transactions evicted since the last call (to tell whoever waits for them).
    pub fn take_evicted(&mut self) -> Vec<Hash> {
        std::mem::take(&mut self.evicted)
    }

    /// The pending transactions dropped since the last call because another transaction
    /// of their sender's committed with their nonce (through another validator), with
    /// that rejection. Whoever waits for one is told it never will commit.
    pub fn take_superseded(&mut self) -> Vec<(Hash, Reject)> {
        std::mem::take(&mut self.superseded)
    }

    /// Whether `hash` is pending.
    pub fn contains(&self, hash: &Hash) -> bool {
        self.by_hash.contains_key(hash)
    }

    /// The pending transaction with this hash.
    pub fn get(&self, hash: &Hash) -> Option<&Transaction> {
        self.by_hash.get(hash).map(|e| &e.tx)
    }

    /// Whether a new transaction `tx` of `len` encoded bytes, whose sender's next nonce on
    /// the committed chain is `committed_next_nonce`, would be admitted: its nonce is
    /// unused and within the window, no other pending transaction has it, and the pool
    /// has room, or it is ready and evicting queued transactions makes room. Memory
    /// lookups only, so the node asks this before its costlier checks.
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
        let account = self.by_sender.get(&tx.sender);
        if account.is_some_and(|a| a.nonces.contains_key(&tx.nonce)) {
            return Err(Reject::NonceTaken { nonce: tx.nonce });
        }
        let fits = |txs: usize, bytes: usize| {
            txs < self.cfg.max_txs && bytes.saturating_add(len) <= self.cfg.max_bytes
        };
        if fits(self.by_hash.len(), self.bytes) {
            return Ok(());
        }
        let full = Reject::Full {
            txs: self.by_hash.len(),
            bytes: self.bytes,
        };
        // Only a ready transaction evicts, and only the queued transactions it does not
        // make ready itself (its sender's successors).
        let end = account.map_or(committed_next_nonce, |a| run_end(a, committed_next_nonce));
        if tx.nonce != end {
            return Err(full);
        }
        let (mut evictable, mut evictable_bytes) = (self.queued.len(), self.queued_bytes);
        if let Some(a) = account {
            let mut n = tx.nonce + 1;
            while let Some(e) = a.nonces.get(&n).and_then(|h| self.by_hash.get(h)) {
                evictable = evictable.saturating_sub(1);
                evictable_bytes = evictable_bytes.saturating_sub(e.len);
                n += 1;
            }
        }
        if fits(
            self.by_hash.len().saturating_sub(evictable),
            self.bytes.saturating_sub(evictable_bytes),
        ) {
            Ok(())
        } else {
            Err(full)
        }
    }

    /// Admits `tx` (hash `hash`, `len` encoded bytes, signature and chain already
    /// checked) given its sender's next nonce on the committed chain ([`Mempool::check`]).
    /// A ready transaction that needs room evicts the queued transactions that have
    /// waited longest ([`Mempool::take_evicted`] lists them).
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
        let (sender, nonce) = (tx.sender, tx.nonce);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += len;
        self.queued_bytes += len;
        self.queued.insert(seq, hash);
        self.by_hash.insert(
            hash,
            Box::new(Entry {
                tx,
                len,
                seq,
                ready: false,
            }),
        );
        let mut account = self.by_sender.remove(&sender).unwrap_or(Account {
            base: committed_next_nonce,
            nonces: BTreeMap::new(),
            ready_end: committed_next_nonce,
        });
        account.nonces.insert(nonce, hash);
        // Makes it ready if it ends its sender's run, and the successors it joins to it.
        self.advance(&mut account, committed_next_nonce);
        self.by_sender.insert(sender, account);
        // Over a limit only if `check` found queued transactions to make room with.
        while self.by_hash.len() > self.cfg.max_txs || self.bytes > self.cfg.max_bytes {
            let Some((_, &oldest)) = self.queued.first_key_value() else {
                break;
            };
            self.remove(&oldest);
            self.evicted.push(oldest);
        }
        Ok(Admitted::Added)
    }

    /// Ready transactions in arrival order, with their encoded length (the proposer
    /// filters what executes). A sender's may come in any nonce order.
    pub fn ready(&self) -> impl Iterator<Item = (&Hash, &Transaction, usize)> {
        self.ready
            .values()
            .filter_map(|h| self.by_hash.get(h).map(|e| (h, &e.tx, e.len)))
    }

    /// Removes one transaction. Its sender's later transactions, if it was ready, are
    /// queued until its nonce is pending again.
    pub fn remove(&mut self, hash: &Hash) {
        let Some(e) = self.by_hash.get(hash) else {
            return;
        };
        let (sender, nonce, ready) = (e.tx.sender, e.tx.nonce, e.ready);
        self.forget(hash);
        let Some(mut account) = self.by_sender.remove(&sender) else {
            return;
        };
        account.nonces.remove(&nonce);
        if ready && nonce < account.ready_end {
            for (_, h) in account.nonces.range(nonce..account.ready_end) {
                self.set_ready(h, false);
            }
            account.ready_end = nonce;
        }
        if !account.nonces.is_empty() {
            self.by_sender.insert(sender, account);
        }
    }

    /// After a commit: removes the committed transactions and every pending transaction
    /// whose nonce the committed chain has now used (`next_nonce(sender)`), and makes
    /// ready those the new next nonces reach.
    pub fn committed(
        &mut self,
        txs: &[(Hash, PublicKey)],
        mut next_nonce: impl FnMut(&PublicKey) -> Option<u64>,
    ) {
        let mut seen = HashSet::new();
        for (_, sender) in txs {
            if !seen.insert(*sender) {
                continue;
            }
            let Some(next) = next_nonce(sender) else {
                continue;
            };
            if let Some(mut account) = self.by_sender.remove(sender) {
                self.advance(&mut account, next);
                if !account.nonces.is_empty() {
                    self.by_sender.insert(*sender, account);
                }
            }
        }
        // Those the nonces did not cover (a failed read).
        for (h, _) in txs {
            self.remove(h);
        }
        // The committed ones are not superseded.
        if !self.superseded.is_empty() {
            let included: HashSet<&Hash> = txs.iter().map(|(h, _)| h).collect();
            self.superseded.retain(|(h, _)| !included.contains(h));
        }
    }

    /// Moves `account` to the committed next nonce `next` (dropping what it has used) and
    /// makes ready the pending transactions that now follow it without a gap.
    fn advance(&mut self, account: &mut Account, next: u64) {
        if next > account.base {
            while let Some((&n, &h)) = account.nonces.first_key_value() {
                if n >= next {
                    break;
                }
                account.nonces.remove(&n);
                self.forget(&h);
                self.superseded.push((
                    h,
                    Reject::NonceReplayed {
                        expected: next,
                        found: n,
                    },
                ));
            }
            account.base = next;
        }
        let end = run_end(account, account.base);
        for (_, h) in account
            .nonces
            .range(account.ready_end.max(account.base)..end)
        {
            self.set_ready(h, true);
        }
        account.ready_end = end;
    }

    /// Moves a pending transaction between ready and queued.
    fn set_ready(&mut self, hash: &Hash, ready: bool) {
        let Some(e) = self.by_hash.get_mut(hash) else {
            return;
        };
        if e.ready == ready {
            return;
        }
        e.ready = ready;
        if ready {
            self.queued.remove(&e.seq);
            self.queued_bytes -= e.len;
            self.ready.insert(e.seq, *hash);
            self.became_ready += 1;
        } else {
            self.ready.remove(&e.seq);
            self.queued_bytes += e.len;
            self.queued.insert(e.seq, *hash);
        }
    }

    /// Drops a transaction from every index but its sender's account.
    fn forget(&mut self, hash: &Hash) {
        if let Some(e) = self.by_hash.remove(hash) {
            self.bytes -= e.len;
            if e.ready {
                self.ready.remove(&e.seq);
            } else {
                self.queued.remove(&e.seq);
                self.queued_bytes -= e.len;
            }
        }
    }
}

/// The first nonce from `next` (the committed next nonce) on that `account` does not
/// have pending: where a new ready transaction of its sender would go.
fn run_end(account: &Account, next: u64) -> u64 {
    let mut end = account.ready_end.max(next);
    while account.nonces.contains_key(&end) {
        end += 1;
    }
    end
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
        let left: Vec<Hash> = m.ready().map(|(h, _, _)| *h).collect();
        assert_eq!(left, vec![txs[3].1]);
        assert_eq!(m.bytes(), 10);
        // Only the superseded one is listed (not the two committed), with the nonce the
        // chain had used.
        assert_eq!(
            m.take_superseded(),
            vec![(
                txs[2].1,
                Reject::NonceReplayed {
                    expected: 3,
                    found: 2
                }
            )]
        );
        assert!(m.take_superseded().is_empty());
        consistent(&m);
    }

    fn ready_nonces(m: &Mempool) -> Vec<u64> {
        m.ready().map(|(_, t, _)| t.nonce).collect()
    }

    #[test]
    fn a_gap_queues_and_filling_it_makes_the_run_ready() {
        let k = Keypair::from_seed(&[3; 32]);
        let mut m = Mempool::new(MempoolConfig {
            max_nonce_gap: 8,
            ..cfg(10)
        });
        for n in [2, 3, 5] {
            let (t, h) = tx(&k, n);
            m.admit(t, h, 10, 0).unwrap();
        }
        assert_eq!((ready_nonces(&m), m.queued_len()), (vec![], 3));
        let (t0, h0) = tx(&k, 0);
        m.admit(t0, h0, 10, 0).unwrap();
        assert_eq!((ready_nonces(&m), m.queued_len()), (vec![0], 3));
        let seen = m.became_ready();
        let (t1, h1) = tx(&k, 1);
        m.admit(t1, h1, 10, 0).unwrap();
        // Arrival order: 2 and 3 came before 0 and 1.
        assert_eq!((ready_nonces(&m), m.queued_len()), (vec![2, 3, 0, 1], 1));
        assert_eq!(m.became_ready() - seen, 3);
        // A ready transaction leaves without committing: its successors queue again.
        m.remove(&h1);
        assert_eq!((ready_nonces(&m), m.queued_len()), (vec![0], 3));
        // The chain commits 0 and 1 (1 from another node's copy): 2 and 3 are ready.
        m.committed(&[(h0, k.public())], |_| Some(2));
        assert_eq!((ready_nonces(&m), m.queued_len()), (vec![2, 3], 1));
        consistent(&m);
    }

    #[test]
    fn a_ready_transaction_evicts_the_oldest_queued_ones_from_a_full_pool() {
        let (a, b, c) = (
            Keypair::from_seed(&[4; 32]),
            Keypair::from_seed(&[5; 32]),
            Keypair::from_seed(&[6; 32]),
        );
        let mut m = Mempool::new(cfg(4));
        let (a0, ha0) = tx(&a, 0);
        m.admit(a0, ha0, 10, 0).unwrap();
        // Stranded behind b's missing nonce 0: b2 arrived first.
        let (b2, hb2) = tx(&b, 2);
        let (b1, hb1) = tx(&b, 1);
        let (c1, hc1) = tx(&c, 1);
        m.admit(b2, hb2, 10, 0).unwrap();
        m.admit(b1, hb1, 10, 0).unwrap();
        m.admit(c1, hc1, 10, 0).unwrap();
        assert_eq!((m.len(), m.queued_len()), (4, 3));
        // Full: a queued transaction does not evict.
        let (c2, hc2) = tx(&c, 2);
        assert_eq!(m.check(&c2, 10, 0).unwrap_err().code(), "mempool_full");
        assert_eq!(m.admit(c2, hc2, 10, 0).unwrap_err().code(), "mempool_full");
        // A ready one evicts the oldest queued one, b2.
        let (a1, ha1) = tx(&a, 1);
        assert_eq!(m.check(&a1, 10, 0), Ok(()));
        assert_eq!(m.admit(a1, ha1, 10, 0), Ok(Admitted::Added));
        assert_eq!(m.take_evicted(), vec![hb2]);
        assert!(m.take_evicted().is_empty());
        assert_eq!((ready_nonces(&m), m.queued_len()), (vec![0, 1], 2));
        // c0 makes c1 ready, so it evicts b1, not its own successor.
        let (c0, hc0) = tx(&c, 0);
        assert_eq!(m.admit(c0, hc0, 10, 0), Ok(Admitted::Added));
        assert_eq!(m.take_evicted(), vec![hb1]);
        assert_eq!(m.queued_len(), 0);
        assert_eq!(m.len(), 4);
        // Nothing queued is left to evict.
        let (a2, ha2) = tx(&a, 2);
        assert_eq!(m.admit(a2, ha2, 10, 0).unwrap_err().code(), "mempool_full");
        consistent(&m);
    }

    #[test]
    fn eviction_frees_bytes_as_well_as_places() {
        let (a, b) = (Keypair::from_seed(&[7; 32]), Keypair::from_seed(&[8; 32]));
        let mut m = Mempool::new(MempoolConfig {
            max_txs: 100,
            max_bytes: 1_000,
            max_nonce_gap: 8,
            ..MempoolConfig::default()
        });
        for (n, len) in [(1, 300), (2, 300), (3, 300)] {
            let (t, h) = tx(&b, n);
            m.admit(t, h, len, 0).unwrap();
        }
        // 900 pending: 400 more takes one of the queued 300s, 500 would take two.
        let (a0, ha0) = tx(&a, 0);
        m.admit(a0, ha0, 400, 0).unwrap();
        assert_eq!(m.take_evicted().len(), 1);
        assert_eq!((m.len(), m.bytes()), (3, 1_000));
        // 800 would need more than everything queued (600).
        let (a1, _) = tx(&a, 1);
        assert_eq!(m.check(&a1, 800, 0).unwrap_err().code(), "mempool_full");
        consistent(&m);
    }

    /// The pool's indexes agree with each other and with the ready rule.
    fn consistent(m: &Mempool) {
        let (mut bytes, mut queued_bytes, mut count) = (0, 0, 0);
        for (sender, a) in &m.by_sender {
            assert!(!a.nonces.is_empty());
            let mut end = a.base;
            while a.nonces.contains_key(&end) {
                end += 1;
            }
            assert_eq!(a.ready_end, end);
            for (n, h) in &a.nonces {
                let e = &m.by_hash[h];
                assert_eq!((&e.tx.sender, e.tx.nonce), (sender, *n));
                assert_eq!(e.ready, (a.base..a.ready_end).contains(n));
                let index = if e.ready { &m.ready } else { &m.queued };
                assert_eq!(index.get(&e.seq), Some(h));
                bytes += e.len;
                queued_bytes += if e.ready { 0 } else { e.len };
                count += 1;
            }
        }
        assert_eq!(count, m.by_hash.len());
        assert_eq!(m.ready.len() + m.queued.len(), count);
        assert_eq!((m.bytes, m.queued_bytes), (bytes, queued_bytes));
        assert!(m.len() <= m.cfg.max_txs && m.bytes <= m.cfg.max_bytes);
    }

    mod model {
        use proptest::prelude::*;

        use super::*;

        #[derive(Clone, Debug)]
        enum Op {
            /// Sender, nonce ahead of its committed next one, encoded length.
            Admit(usize, u64, usize),
            /// The chain commits this many of the sender's next nonces.
            Commit(usize, u64),
            /// Drops the pending transaction at this position (a dead one).
            Remove(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => (0..4usize, 0..6u64, 1..40usize).prop_map(|(s, n, l)| Op::Admit(s, n, l)),
                2 => (0..4usize, 1..4u64).prop_map(|(s, k)| Op::Commit(s, k)),
                1 => any::<usize>().prop_map(Op::Remove),
            ]
        }

        /// A pending transaction in the model: arrival, sender, nonce, length, hash.
        type Pending = (u64, usize, u64, usize, Hash);

        /// The ready ones: a sender's nonces from its next one without a gap.
        fn ready(pending: &[Pending], next: &[u64]) -> Vec<Pending> {
            let mut out: Vec<Pending> = pending
                .iter()
                .filter(|p| {
                    (next[p.1]..=p.2).all(|n| pending.iter().any(|q| q.1 == p.1 && q.2 == n))
                })
                .copied()
                .collect();
            out.sort_by_key(|p| p.0);
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn matches_a_model_of_ready_queued_and_eviction(
                ops in proptest::collection::vec(op(), 1..60),
            ) {
                let keys: Vec<Keypair> = (0..4u8).map(|i| Keypair::from_seed(&[40 + i; 32])).collect();
                let cfg = MempoolConfig {
                    max_txs: 6,
                    max_bytes: 120,
                    max_nonce_gap: 4,
                    ..MempoolConfig::default()
                };
                let mut m = Mempool::new(cfg.clone());
                let mut next = vec![0u64; 4];
                let mut pending: Vec<Pending> = Vec::new();
                let mut arrival = 0u64;
                let mut salt = 0u64;
                for op in ops {
                    match op {
                        Op::Admit(s, ahead, len) => {
                            let nonce = next[s] + ahead;
                            salt += 1;
                            let t = Transaction::new_signed(
                                &keys[s],
                                ChainId::new("t").unwrap(),
                                nonce,
                                Payload::Put { key: b"k".to_vec(), value: salt.to_be_bytes().to_vec() },
                            )
                            .unwrap();
                            let h = t.hash();
                            // The model's verdict.
                            let count = pending.len();
                            let bytes: usize = pending.iter().map(|p| p.3).sum();
                            let mut evict = Vec::new();
                            let expected = if ahead > cfg.max_nonce_gap {
                                Err("nonce_too_far")
                            } else if pending.iter().any(|p| p.1 == s && p.2 == nonce) {
                                Err("nonce_taken")
                            } else if count < cfg.max_txs && bytes + len <= cfg.max_bytes {
                                Ok(())
                            } else {
                                let mut with: Vec<Pending> = pending.clone();
                                with.push((u64::MAX, s, nonce, len, h));
                                let ready_with = ready(&with, &next);
                                if !ready_with.iter().any(|p| p.4 == h) {
                                    Err("mempool_full")
                                } else {
                                    let mut queued: Vec<Pending> = with
                                        .iter()
                                        .filter(|p| !ready_with.iter().any(|r| r.4 == p.4))
                                        .copied()
                                        .collect();
                                    queued.sort_by_key(|p| p.0);
                                    let (mut c, mut b) = (count + 1, bytes + len);
                                    for q in queued {
                                        if c <= cfg.max_txs && b <= cfg.max_bytes {
                                            break;
                                        }
                                        c -= 1;
                                        b -= q.3;
                                        evict.push(q.4);
                                    }
                                    if c <= cfg.max_txs && b <= cfg.max_bytes {
                                        Ok(())
                                    } else {
                                        evict.clear();
                                        Err("mempool_full")
                                    }
                                }
                            };
                            let checked = m.check(&t, len, next[s]).map_err(|r| r.code());
                            let admitted = m.admit(t, h, len, next[s]).map_err(|r| r.code());
                            prop_assert_eq!(checked, expected);
                            prop_assert_eq!(admitted.map(|_| ()), expected);
                            prop_assert_eq!(m.take_evicted(), evict.clone());
                            if expected.is_ok() {
                                pending.retain(|p| !evict.contains(&p.4));
                                pending.push((arrival, s, nonce, len, h));
                                arrival += 1;
                            }
                        }
                        Op::Commit(s, k) => {
                            next[s] += k;
                            let done: Vec<(Hash, PublicKey)> = pending
                                .iter()
                                .filter(|p| p.1 == s && p.2 < next[s])
                                .map(|p| (p.4, keys[s].public()))
                                .collect();
                            // A block may hold none of the pool's copies: the sender
                            // is still named.
                            let done = if done.is_empty() { vec![(Hash::ZERO, keys[s].public())] } else { done };
                            m.committed(&done, |p| keys.iter().position(|k| k.public() == *p).map(|i| next[i]));
                            pending.retain(|p| !(p.1 == s && p.2 < next[s]));
                        }
                        Op::Remove(i) => {
                            if !pending.is_empty() {
                                let p = pending.remove(i % pending.len());
                                m.remove(&p.4);
                            }
                        }
                    }
                    consistent(&m);
                    let want: Vec<Hash> = ready(&pending, &next).iter().map(|p| p.4).collect();
                    let got: Vec<Hash> = m.ready().map(|(h, _, _)| *h).collect();
                    prop_assert_eq!(got, want);
                    prop_assert_eq!(m.len(), pending.len());
                    prop_assert_eq!(m.queued_len(), pending.len() - ready(&pending, &next).len());
                }
            }
        }
    }
}
