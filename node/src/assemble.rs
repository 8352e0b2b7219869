//! Compact proposals: proposals whose transactions travel by hash.
//!
//! Every transaction reaches every node through gossip before a proposal includes it, so
//! a proposal carrying the transactions sent each one to each node twice. The engine's
//! proposals go out in compact form ([`pyralog_consensus::Engine::compact_message`]): the
//! header, the last certificate and the transactions' hashes. The engine checks a received
//! one ([`pyralog_consensus::Engine::carried`]: its proposer's signature, and hashes that
//! match the header's transaction root) before anything here runs. A receiver rebuilds the
//! block from its mempool and the blocks it recently proposed or rebuilt, asks its peers
//! for the transactions it does not hold (by position in the block), and hands the engine
//! the full proposal, which validation checks as any block. Transactions that reach the
//! pool while a proposal waits fill it in ([`Assembler::refill`]): gossip usually wins
//! the race with the fetch.

use std::collections::VecDeque;
use std::sync::Arc;

use pyralog_ledger::{Block, CompactBlock, Encode, Hash, Transaction};
use tokio::task::AbortHandle;

use crate::mempool::Mempool;
use pyralog_p2p::PeerId;

use crate::wire::{MAX_FETCH_TXS, MAX_SYNC_RESPONSE_BYTES, SyncRequest, SyncResponse};

/// Blocks kept to rebuild repeated proposals and answer peers' fetches: the proposals of
/// the last few heights and rounds (peers fetch only for the current height and the
/// next). Each is at most the chain's block size.
pub const RECENT_BLOCKS: usize = 4;
/// Compact proposals waiting for fetched transactions at once. When full, the one
/// furthest from the engine's current height and round gives way (or the new one is not
/// fetched for, if it is the furthest), so a validator proposing for rounds far ahead
/// cannot push out the proposal of the round being decided.
pub const MAX_WAITING: usize = 4;
/// Distinct messages kept for one waiting block (the same block re-proposed in later
/// rounds).
const MAX_MESSAGES_PER_BLOCK: usize = 4;

/// A compact proposal rebuilt: the messages that named its block, and the block.
#[derive(Debug)]
pub struct Rebuilt {
    /// The compact proposals as received (one per round that proposed the block while it
    /// was being rebuilt).
    pub wires: Vec<Vec<u8>>,
    /// Their block.
    pub block: Block,
    /// Transactions found here.
    pub held: usize,
    /// Transactions fetched from peers.
    pub fetched: usize,
}

/// What to do with a compact proposal just received.
#[derive(Debug)]
pub enum Received {
    /// Every transaction was here.
    Rebuilt(Box<Rebuilt>),
    /// Transactions at `indices` of `block` (their hashes are `expected`) are missing:
    /// fetch them, register the task with [`Assembler::fetching`], then call
    /// [`Assembler::fetched`]. If some may reach the pool first, [`Assembler::refill`] and
    /// [`Assembler::to_fetch`] say what is still missing before the fetch starts.
    Fetch {
        /// The block's header hash.
        block: Hash,
        /// Positions of the missing transactions, ascending.
        indices: Vec<u32>,
        /// Their hashes, in the same order.
        expected: Vec<Hash>,
    },
    /// Its block is being fetched already; the message waits with it.
    Waiting,
    /// Not fetched for: as many proposals nearer the current round wait already.
    Dropped,
}

/// Why a fetch did not complete a proposal.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No peer served the transactions.
    #[error("no peer served the transactions: {0}")]
    Unanswered(String),
    /// The transactions are not those asked for.
    #[error("the transactions served are not those the proposal names")]
    Wrong,
}

struct Waiting {
    block: Hash,
    /// (height, round) of its first message: its distance from the current round.
    at: (u64, u32),
    wires: Vec<Vec<u8>>,
    compact: CompactBlock,
    found: Vec<Option<Transaction>>,
    /// Positions not found at first: those a fetch asks for (until the fetch starts,
    /// those still not found).
    missing: Vec<u32>,
    /// Of `missing`, those the fetch's answer filled in (the others reached the pool
    /// meanwhile).
    fetched: usize,
    task: Option<AbortHandle>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Recent blocks and the compact proposals waiting for transactions.
#[derive(Default)]
pub struct Assembler {
    recent: VecDeque<(Hash, Arc<Block>)>,
    waiting: Vec<Waiting>,
}

impl Assembler {
    /// Keeps `block` (a proposal this node sent or rebuilt) to answer fetches.
    pub fn remember(&mut self, block: Arc<Block>) {
        let hash = block.header.hash();
        if self.recent.iter().any(|(h, _)| *h == hash) {
            return;
        }
        if self.recent.len() == RECENT_BLOCKS {
            self.recent.pop_front();
        }
        self.recent.push_back((hash, block));
    }

    /// A recent block, by header hash.
    pub fn recent(&self, hash: &Hash) -> Option<Arc<Block>> {
        self.recent
            .iter()
            .find(|(h, _)| h == hash)
            .map(|(_, b)| b.clone())
    }

    /// A compact proposal `wire` of `round` naming `compact` (whose hashes the engine
    /// checked against its header) arrived, while the engine is at `current` (height,
    /// round): rebuilds it from `pool` and the recent blocks, or says what to fetch.
    pub fn received(
        &mut self,
        wire: Vec<u8>,
        compact: CompactBlock,
        round: u32,
        current: (u64, u32),
        pool: &Mempool,
    ) -> Received {
        let hash = compact.header.hash();
        if let Some(w) = self.waiting.iter_mut().find(|w| w.block == hash) {
            if !w.wires.contains(&wire) && w.wires.len() < MAX_MESSAGES_PER_BLOCK {
                w.wires.push(wire);
            }
            return Received::Waiting;
        }
        let at = (compact.header.height, round);
        let found: Vec<Option<Transaction>> = match self.recent(&hash) {
            // The header commits to the hashes, so a block with this header has these
            // transactions.
            Some(b) => b.txs.iter().cloned().map(Some).collect(),
            None => compact
                .tx_hashes
                .iter()
                .map(|h| pool.get(h).cloned())
                .collect(),
        };
        let missing: Vec<u32> = (0..found.len())
            .filter(|&i| found[i].is_none())
            .map(|i| i as u32)
            .collect();
        let mut waiting = Waiting {
            block: hash,
            at,
            wires: vec![wire],
            compact,
            found,
            missing,
            fetched: 0,
            task: None,
        };
        if waiting.missing.is_empty()
            && let Some(r) = rebuild(&mut waiting)
        {
            return Received::Rebuilt(Box::new(r));
        }
        if self.waiting.len() >= MAX_WAITING {
            let distance = |at: (u64, u32)| (at.0.abs_diff(current.0), at.1.abs_diff(current.1));
            let furthest = (0..self.waiting.len()).max_by_key(|&i| distance(self.waiting[i].at));
            match furthest {
                Some(i) if distance(self.waiting[i].at) > distance(at) => {
                    self.waiting.swap_remove(i);
                }
                _ => return Received::Dropped,
            }
        }
        let indices = waiting.missing.clone();
        let expected = indices
            .iter()
            .map(|&i| waiting.compact.tx_hashes[i as usize])
            .collect();
        self.waiting.push(waiting);
        Received::Fetch {
            block: hash,
            indices,
            expected,
        }
    }

    /// Registers the task fetching for `block`, aborted if the block stops waiting.
    pub fn fetching(&mut self, block: &Hash, task: AbortHandle) {
        match self.waiting.iter_mut().find(|w| w.block == *block) {
            Some(w) => w.task = Some(task),
            None => task.abort(),
        }
    }

    /// The fetched transactions for `block` (those at the positions asked, in order), or
    /// why none came: the rebuilt proposal, `Ok(None)` if it no longer waits, or why it
    /// failed (and is dropped).
    pub fn fetched(
        &mut self,
        block: &Hash,
        answer: Result<Vec<Transaction>, String>,
    ) -> Result<Option<Rebuilt>, FetchError> {
        let Some(at) = self.waiting.iter().position(|w| w.block == *block) else {
            return Ok(None);
        };
        let mut w = self.waiting.swap_remove(at);
        w.task = None;
        let txs = answer.map_err(FetchError::Unanswered)?;
        if txs.len() != w.missing.len() {
            return Err(FetchError::Wrong);
        }
        for (&i, tx) in w.missing.iter().zip(txs) {
            if tx.hash() != w.compact.tx_hashes[i as usize] {
                return Err(FetchError::Wrong);
            }
            let slot = &mut w.found[i as usize];
            if slot.is_none() {
                *slot = Some(tx);
                w.fetched += 1;
            }
        }
        rebuild(&mut w).map(Some).ok_or(FetchError::Wrong)
    }

    /// Whether a compact proposal waits for transactions.
    pub fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Looks the transactions the waiting proposals miss up in `pool` again (they may
    /// have arrived by gossip or RPC after the proposal). The proposals now complete are
    /// rebuilt and stop waiting, their fetches aborted (a late answer finds nothing). A
    /// proposal whose fetch has not started asks only for what is still missing.
    pub fn refill(&mut self, pool: &Mempool) -> Vec<Rebuilt> {
        self.refill_where(pool, |_| true)
    }

    /// [`Assembler::refill`] for `block` alone: its rebuilt proposal once complete.
    pub fn refill_one(&mut self, block: &Hash, pool: &Mempool) -> Option<Rebuilt> {
        self.refill_where(pool, |h| h == block).pop()
    }

    fn refill_where(&mut self, pool: &Mempool, pick: impl Fn(&Hash) -> bool) -> Vec<Rebuilt> {
        let mut rebuilt = Vec::new();
        let mut k = 0;
        while k < self.waiting.len() {
            if !pick(&self.waiting[k].block) {
                k += 1;
                continue;
            }
            let w = &mut self.waiting[k];
            let mut complete = true;
            for &i in &w.missing {
                let slot = &mut w.found[i as usize];
                if slot.is_none() {
                    *slot = pool.get(&w.compact.tx_hashes[i as usize]).cloned();
                    complete &= slot.is_some();
                }
            }
            if w.task.is_none() {
                let found = &w.found;
                w.missing.retain(|&i| found[i as usize].is_none());
            }
            if complete {
                let mut w = self.waiting.swap_remove(k);
                // (Always rebuilt: every position is found.)
                if let Some(r) = rebuild(&mut w) {
                    rebuilt.push(r);
                }
                continue;
            }
            k += 1;
        }
        rebuilt
    }

    /// What a fetch for `block` asks for now: the positions still missing and their
    /// hashes (`None` if the block no longer waits).
    pub fn to_fetch(&self, block: &Hash) -> Option<(Vec<u32>, Vec<Hash>)> {
        let w = self.waiting.iter().find(|w| w.block == *block)?;
        let expected = w
            .missing
            .iter()
            .map(|&i| w.compact.tx_hashes[i as usize])
            .collect();
        Some((w.missing.clone(), expected))
    }
}

/// The answer to a peer's fetch of `indices` of `block` (`None`: not held here): the
/// transactions at the first positions asked, as many as fit in a response, at least
/// one.
pub fn serve(block: Option<&Block>, indices: &[u32]) -> SyncResponse {
    let Some(b) = block else {
        return SyncResponse::Error("no such recent proposal here".into());
    };
    let mut txs = Vec::with_capacity(indices.len().min(MAX_FETCH_TXS));
    let mut bytes = 0;
    for &i in indices.iter().take(MAX_FETCH_TXS) {
        let Some(tx) = b.txs.get(i as usize) else {
            return SyncResponse::Error(format!("the proposal has no transaction {i}"));
        };
        // What the answer's encoding adds: the transaction and its length prefix.
        let mut encoded = Vec::new();
        tx.encode(&mut encoded);
        bytes += encoded.len() + 4;
        if bytes > MAX_SYNC_RESPONSE_BYTES && !txs.is_empty() {
            break;
        }
        txs.push(tx.clone());
    }
    SyncResponse::Txs(txs)
}

/// Fetches the transactions at `indices` of `block`, whose hashes are `expected`, from
/// `peers` in turn (the one that sent the proposal first: the others may have it too,
/// its proposer and every peer that rebuilt it), each request through `ask` and given
/// `per_request`, all before `deadline`. A request holds at most [`MAX_FETCH_TXS`]
/// positions, and an answer may hold fewer transactions than asked (as many as fit in a
/// response): the rest is asked for next, from the same peer. A peer that answers with
/// an error or not in time is left for the next; one that serves transactions other than
/// those asked for is reported in the second value and not asked again. The first value
/// is the transactions asked for, in order, or the last error.
pub async fn fetch<P, F, Fut>(
    peers: P,
    block: Hash,
    indices: &[u32],
    expected: &[Hash],
    deadline: tokio::time::Instant,
    per_request: std::time::Duration,
    mut ask: F,
) -> (Result<Vec<Transaction>, String>, Vec<PeerId>)
where
    P: IntoIterator<Item = PeerId>,
    F: FnMut(PeerId, Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>, String>>,
{
    let mut txs: Vec<Transaction> = Vec::with_capacity(indices.len());
    let mut wrong = Vec::new();
    let mut last_error = "no peer to ask".to_string();
    'peers: for peer in peers {
        while txs.len() < indices.len() {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                last_error = format!("nothing more served in time; last: {last_error}");
                break 'peers;
            }
            let ask_for = &indices[txs.len()..indices.len().min(txs.len() + MAX_FETCH_TXS)];
            let request = SyncRequest::ProposalTxs {
                block,
                indices: ask_for.to_vec(),
            };
            let until = deadline.min(now + per_request);
            let answer = match tokio::time::timeout_at(until, ask(peer, request.to_bytes())).await {
                Ok(Ok(bytes)) => SyncResponse::from_bytes(&bytes).map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!("no answer in {per_request:?}")),
            };
            let served = match answer {
                Ok(SyncResponse::Txs(served))
                    if !served.is_empty() && served.len() <= ask_for.len() =>
                {
                    served
                }
                Ok(SyncResponse::Error(e)) | Err(e) => {
                    last_error = format!("{peer}: {e}");
                    continue 'peers;
                }
                Ok(_) => {
                    wrong.push(peer);
                    continue 'peers;
                }
            };
            let first = txs.len();
            if served
                .iter()
                .enumerate()
                .any(|(k, tx)| tx.hash() != expected[first + k])
            {
                wrong.push(peer);
                continue 'peers;
            }
            txs.extend(served);
        }
        break;
    }
    if txs.len() == indices.len() {
        (Ok(txs), wrong)
    } else {
        (Err(last_error), wrong)
    }
}

/// The block of `w` once every transaction is found (`None` before).
fn rebuild(w: &mut Waiting) -> Option<Rebuilt> {
    let fetched = w.fetched;
    let found = &mut w.found;
    let block = w.compact.assemble(|i, _| found[i].take()).ok()?;
    Some(Rebuilt {
        wires: std::mem::take(&mut w.wires),
        held: block.txs.len() - fetched,
        block,
        fetched,
    })
}

#[cfg(test)]
mod tests {
    use pyralog_ledger::testing::{TestChain, user};
    use pyralog_ledger::{EngineId, Transaction};

    use super::*;
    use crate::config::MempoolConfig;

    /// A block of `n` notarizations from `n` senders (`salt` makes it another block), and
    /// a pool holding those at `held`.
    fn setup(n: usize, salt: u8, held: &[usize]) -> (Block, Mempool) {
        let chain = TestChain::new(1, EngineId::Tendermint);
        let txs: Vec<Transaction> = (0..n)
            .map(|i| {
                chain.notarize(
                    &user(i as u64),
                    0,
                    Hash([i as u8 + 1; 32]),
                    &format!("{salt}"),
                )
            })
            .collect();
        let (block, _) = chain.make_block(txs);
        let mut pool = Mempool::new(MempoolConfig::default());
        for &i in held {
            hold(&mut pool, &block.txs[i]);
        }
        (block, pool)
    }

    /// Admits `tx` to `pool`, as gossip or RPC would.
    fn hold(pool: &mut Mempool, tx: &Transaction) {
        let (h, len) = tx.hash_and_len();
        pool.admit(tx.clone(), h, len, 0).unwrap();
    }

    /// A runtime for fetch tasks and timers.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    const NOW: (u64, u32) = (1, 0);

    fn wants(r: Received) -> (Hash, Vec<u32>, Vec<Hash>) {
        match r {
            Received::Fetch {
                block,
                indices,
                expected,
            } => (block, indices, expected),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_proposal_whose_transactions_are_all_held_is_rebuilt_at_once() {
        let (block, pool) = setup(4, 0, &[0, 1, 2, 3]);
        let mut a = Assembler::default();
        match a.received(vec![7], CompactBlock::of(&block), 0, NOW, &pool) {
            Received::Rebuilt(r) => {
                assert_eq!(r.block, block);
                assert_eq!((r.held, r.fetched, r.wires.clone()), (4, 0, vec![vec![7]]));
            }
            other => panic!("{other:?}"),
        }
        // A block this node sent or rebuilt answers for itself, pool or not.
        let mut a = Assembler::default();
        a.remember(Arc::new(block.clone()));
        let empty = Mempool::new(MempoolConfig::default());
        assert!(matches!(
            a.received(vec![], CompactBlock::of(&block), 0, NOW, &empty),
            Received::Rebuilt(r) if r.block == block
        ));
    }

    #[test]
    fn missing_transactions_are_fetched_checked_and_filled_in() {
        let (block, pool) = setup(5, 0, &[0, 2, 4]);
        let hash = block.header.hash();
        let mut a = Assembler::default();
        let (b, indices, expected) =
            wants(a.received(vec![1], CompactBlock::of(&block), 0, NOW, &pool));
        assert_eq!((b, indices), (hash, vec![1, 3]));
        assert_eq!(expected, vec![block.txs[1].hash(), block.txs[3].hash()]);
        // The same block proposed again in a later round waits with the first, and both
        // messages come out; a copy of a message already waiting is not kept twice.
        assert!(matches!(
            a.received(vec![2], CompactBlock::of(&block), 1, NOW, &pool),
            Received::Waiting
        ));
        assert!(matches!(
            a.received(vec![1], CompactBlock::of(&block), 0, NOW, &pool),
            Received::Waiting
        ));
        // The serving side: a node that has the block answers by position.
        let mut server = Assembler::default();
        assert!(matches!(
            serve(server.recent(&hash).as_deref(), &[1]),
            SyncResponse::Error(_)
        ));
        server.remember(Arc::new(block.clone()));
        let held = server.recent(&hash);
        assert!(matches!(
            serve(held.as_deref(), &[1, 9]),
            SyncResponse::Error(_)
        ));
        let SyncResponse::Txs(txs) = serve(held.as_deref(), &[1, 3]) else {
            panic!("served");
        };
        assert_eq!(txs, vec![block.txs[1].clone(), block.txs[3].clone()]);
        let r = a.fetched(&hash, Ok(txs)).unwrap().unwrap();
        assert_eq!(r.block, block);
        assert_eq!((r.held, r.fetched), (3, 2));
        assert_eq!(r.wires, vec![vec![1], vec![2]]);
        // Answered once: a second answer finds nothing waiting.
        assert!(a.fetched(&hash, Ok(vec![])).unwrap().is_none());
    }

    #[test]
    fn transactions_that_reach_the_pool_later_fill_a_waiting_proposal_in() {
        let rt = runtime();
        let _guard = rt.enter();
        let (block, mut pool) = setup(5, 0, &[0, 2]);
        let hash = block.header.hash();
        let mut a = Assembler::default();
        assert!(!a.is_waiting());
        let (_, indices, _) = wants(a.received(vec![1], CompactBlock::of(&block), 0, NOW, &pool));
        assert_eq!(indices, vec![1, 3, 4]);
        assert!(a.is_waiting());
        // Before its fetch starts, a proposal asks only for what is still missing.
        hold(&mut pool, &block.txs[3]);
        assert!(a.refill(&pool).is_empty());
        assert_eq!(
            a.to_fetch(&hash),
            Some((vec![1, 4], vec![block.txs[1].hash(), block.txs[4].hash()]))
        );
        let task = rt.spawn(std::future::pending::<()>());
        a.fetching(&hash, task.abort_handle());
        // Once it started, what arrives is kept, and the last one completes the block:
        // rebuilt from the pool, the fetch ended, and a late answer finds nothing.
        hold(&mut pool, &block.txs[1]);
        assert!(a.refill(&pool).is_empty());
        assert_eq!(a.to_fetch(&hash).unwrap().0, vec![1, 4]);
        hold(&mut pool, &block.txs[4]);
        let rebuilt = a.refill(&pool);
        assert_eq!(rebuilt.len(), 1);
        assert_eq!(rebuilt[0].block, block);
        assert_eq!((rebuilt[0].held, rebuilt[0].fetched), (5, 0));
        assert_eq!(rebuilt[0].wires, vec![vec![1]]);
        assert!(!a.is_waiting() && a.to_fetch(&hash).is_none());
        rt.block_on(async { assert!(task.await.unwrap_err().is_cancelled()) });
        let late = Ok(vec![block.txs[1].clone(), block.txs[4].clone()]);
        assert!(a.fetched(&hash, late).unwrap().is_none());

        // An answer completes a block partly filled in meanwhile: only the positions it
        // filled count as fetched.
        let (block, mut pool) = setup(4, 1, &[0]);
        let hash = block.header.hash();
        let mut a = Assembler::default();
        let (_, indices, _) = wants(a.received(vec![2], CompactBlock::of(&block), 0, NOW, &pool));
        assert_eq!(indices, vec![1, 2, 3]);
        let task = rt.spawn(std::future::pending::<()>());
        a.fetching(&hash, task.abort_handle());
        hold(&mut pool, &block.txs[2]);
        assert!(a.refill(&pool).is_empty());
        let answer = Ok(block.txs[1..].to_vec());
        let r = a.fetched(&hash, answer).unwrap().unwrap();
        assert_eq!(r.block, block);
        assert_eq!((r.held, r.fetched), (2, 2));

        // The path a node takes: what arrived before the fetch is left out of it, and the
        // answer to the shorter request completes the block.
        let (block, mut pool) = setup(4, 4, &[0]);
        let hash = block.header.hash();
        let mut a = Assembler::default();
        wants(a.received(vec![3], CompactBlock::of(&block), 0, NOW, &pool));
        for i in [1, 3] {
            hold(&mut pool, &block.txs[i]);
        }
        assert!(a.refill(&pool).is_empty());
        let (indices, expected) = a.to_fetch(&hash).unwrap();
        assert_eq!((indices, expected), (vec![2], vec![block.txs[2].hash()]));
        let task = rt.spawn(std::future::pending::<()>());
        a.fetching(&hash, task.abort_handle());
        let r = a
            .fetched(&hash, Ok(vec![block.txs[2].clone()]))
            .unwrap()
            .unwrap();
        assert_eq!(r.block, block);
        assert_eq!((r.held, r.fetched), (3, 1));

        // One proposal can be refilled alone; the others wait for the next refill.
        let (one, _) = setup(2, 2, &[]);
        let (two, _) = setup(2, 3, &[]);
        let empty = Mempool::new(MempoolConfig::default());
        let mut a = Assembler::default();
        wants(a.received(vec![], CompactBlock::of(&one), 0, NOW, &empty));
        wants(a.received(vec![], CompactBlock::of(&two), 0, NOW, &empty));
        let mut pool = Mempool::new(MempoolConfig::default());
        for tx in &one.txs {
            hold(&mut pool, tx);
        }
        let (h1, h2) = (one.header.hash(), two.header.hash());
        // The pool completes the first, but only the second is looked at.
        assert!(a.refill_one(&h2, &pool).is_none());
        assert!(a.to_fetch(&h1).is_some() && a.to_fetch(&h2).is_some());
        let done = a.refill(&pool);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].block, one);
        assert!(a.to_fetch(&h1).is_none() && a.to_fetch(&h2).is_some());
    }

    #[test]
    fn wrong_or_missing_answers_drop_the_proposal() {
        let (block, pool) = setup(3, 0, &[0]);
        let hash = block.header.hash();
        let other = setup(3, 1, &[]).0;
        assert_ne!(other.txs[1], block.txs[1]);
        // (answer, whether it is wrong rather than missing)
        let cases: Vec<(Result<Vec<Transaction>, String>, bool)> = vec![
            (Ok(vec![block.txs[2].clone(), block.txs[1].clone()]), true),
            (Ok(vec![block.txs[1].clone()]), true),
            (Ok(vec![other.txs[1].clone(), other.txs[2].clone()]), true),
            (Err("timed out".into()), false),
        ];
        for (answer, wrong) in cases {
            let mut a = Assembler::default();
            wants(a.received(vec![], CompactBlock::of(&block), 0, NOW, &pool));
            match a.fetched(&hash, answer) {
                Err(FetchError::Wrong) => assert!(wrong),
                Err(FetchError::Unanswered(_)) => assert!(!wrong),
                Ok(r) => panic!("{r:?}"),
            }
            // Dropped: nothing waits any more.
            assert!(a.fetched(&hash, Err("late".into())).unwrap().is_none());
        }
    }

    #[test]
    fn the_proposals_nearest_the_current_round_wait_and_fetch_tasks_end_with_them() {
        let rt = runtime();
        let _guard = rt.enter();
        let empty = Mempool::new(MempoolConfig::default());
        let blocks: Vec<Block> = (0..MAX_WAITING as u8 + 2)
            .map(|i| setup(1, i, &[]).0)
            .collect();
        let mut a = Assembler::default();
        // Far rounds first: they fill the list.
        let mut tasks = Vec::new();
        for (k, b) in blocks[..MAX_WAITING].iter().enumerate() {
            let round = 10 + k as u32;
            let (hash, _, _) = wants(a.received(vec![], CompactBlock::of(b), round, NOW, &empty));
            let task = rt.spawn(std::future::pending::<()>());
            a.fetching(&hash, task.abort_handle());
            tasks.push(task);
        }
        assert_eq!(a.waiting.len(), MAX_WAITING);
        // A round further out than all of them is not fetched for.
        let far = &blocks[MAX_WAITING];
        assert!(matches!(
            a.received(vec![], CompactBlock::of(far), 99, NOW, &empty),
            Received::Dropped
        ));
        // The current round's proposal pushes out the furthest, and its task ends.
        let now = &blocks[MAX_WAITING + 1];
        wants(a.received(vec![], CompactBlock::of(now), 0, NOW, &empty));
        assert_eq!(a.waiting.len(), MAX_WAITING);
        let furthest = blocks[MAX_WAITING - 1].header.hash();
        assert!(a.fetched(&furthest, Ok(vec![])).unwrap().is_none());
        rt.block_on(async {
            let last = tasks.pop().unwrap();
            assert!(last.await.unwrap_err().is_cancelled());
        });
        for t in &tasks {
            assert!(!t.is_finished());
        }
        let answer = Ok(now.txs.clone());
        assert!(a.fetched(&now.header.hash(), answer).unwrap().is_some());
    }

    /// A fake peer for [`fetch`]: how it answers a request for positions of `block`.
    #[derive(Clone, Copy, Debug)]
    enum Peer {
        /// "No such recent proposal here".
        Lacks,
        /// Never answers.
        Silent,
        /// Serves other transactions.
        Lies,
        /// Serves the right ones, at most this many an answer.
        Serves(usize),
    }

    /// Runs [`fetch`] of `indices` of `block` against `peers`, asked in that order;
    /// returns its result and how many requests each peer got, with how many positions
    /// the largest held.
    fn run_fetch(
        block: &Block,
        indices: &[u32],
        peers: &[(PeerId, Peer)],
        within: std::time::Duration,
    ) -> (
        Result<Vec<Transaction>, String>,
        Vec<PeerId>,
        Vec<usize>,
        usize,
    ) {
        let rt = runtime();
        let expected: Vec<Hash> = indices
            .iter()
            .map(|&i| block.txs[i as usize].hash())
            .collect();
        let asked = std::cell::RefCell::new(vec![0usize; peers.len()]);
        let largest = std::cell::Cell::new(0usize);
        let other = setup(block.txs.len(), 9, &[]).0;
        let (txs, wrong) = rt.block_on(async {
            let ask = |peer: PeerId, request: Vec<u8>| {
                let k = peers.iter().position(|(p, _)| *p == peer).unwrap();
                asked.borrow_mut()[k] += 1;
                let SyncRequest::ProposalTxs { block: b, indices } =
                    SyncRequest::from_bytes(&request).unwrap()
                else {
                    panic!("a fetch");
                };
                assert_eq!(b, block.header.hash());
                largest.set(largest.get().max(indices.len()));
                let answer = match peers[k].1 {
                    Peer::Lacks => Some(serve(None, &indices)),
                    Peer::Silent => None,
                    Peer::Lies => Some(serve(Some(&other), &indices)),
                    Peer::Serves(n) => Some(serve(Some(block), &indices[..n.min(indices.len())])),
                };
                let fut: std::pin::Pin<Box<dyn std::future::Future<Output = _>>> = match answer {
                    Some(a) => Box::pin(std::future::ready(Ok(a.to_bytes()))),
                    None => Box::pin(std::future::pending()),
                };
                fut
            };
            fetch(
                peers.iter().map(|(p, _)| *p),
                block.header.hash(),
                indices,
                &expected,
                tokio::time::Instant::now() + within,
                std::time::Duration::from_millis(50),
                ask,
            )
            .await
        });
        (txs, wrong, asked.into_inner(), largest.get())
    }

    #[test]
    fn a_fetch_goes_on_to_other_peers_and_reports_the_ones_that_lie() {
        let (block, _) = setup(5, 0, &[]);
        let indices = [0u32, 2, 3, 4];
        let peers: Vec<(PeerId, Peer)> = [Peer::Lacks, Peer::Silent, Peer::Lies, Peer::Serves(3)]
            .into_iter()
            .map(|b| (PeerId::random(), b))
            .collect();
        let (txs, wrong, asked, _) =
            run_fetch(&block, &indices, &peers, std::time::Duration::from_secs(5));
        let want: Vec<Transaction> = indices
            .iter()
            .map(|&i| block.txs[i as usize].clone())
            .collect();
        assert_eq!(txs.unwrap(), want);
        assert_eq!(wrong, vec![peers[2].0]);
        // Each failing peer was asked once; the last served 3, then the last one.
        assert_eq!(asked, vec![1, 1, 1, 2]);

        // Nobody serves: the last error (the silent peer's), and nothing reported but
        // the liar.
        let (txs, wrong, _, _) = run_fetch(
            &block,
            &indices,
            &peers[..3],
            std::time::Duration::from_secs(5),
        );
        assert!(txs.unwrap_err().contains("no answer"));
        assert_eq!(wrong, vec![peers[2].0]);

        // The deadline ends it, even with a peer left to ask.
        let silent: Vec<(PeerId, Peer)> =
            (0..3).map(|_| (PeerId::random(), Peer::Silent)).collect();
        let started = std::time::Instant::now();
        let (txs, _, asked, _) = run_fetch(
            &block,
            &indices,
            &silent,
            std::time::Duration::from_millis(70),
        );
        assert!(txs.unwrap_err().contains("in time"));
        assert_eq!(asked, vec![1, 1, 0]);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn a_large_fetch_is_asked_for_in_requests_that_fit() {
        let (block, _) = setup(3, 0, &[]);
        let indices: Vec<u32> = (0..MAX_FETCH_TXS as u32 + 5).map(|i| i % 3).collect();
        let peers = [(PeerId::random(), Peer::Serves(usize::MAX))];
        let (txs, wrong, asked, largest) =
            run_fetch(&block, &indices, &peers, std::time::Duration::from_secs(30));
        assert_eq!(txs.unwrap().len(), indices.len());
        assert!(wrong.is_empty());
        assert_eq!((asked, largest), (vec![2], MAX_FETCH_TXS));
        // The request of the largest size fits the network's 64 KiB request limit.
        let request = SyncRequest::ProposalTxs {
            block: block.header.hash(),
            indices: indices[..MAX_FETCH_TXS].to_vec(),
        };
        assert!(request.to_bytes().len() <= 64 << 10);
    }

    #[test]
    fn recent_blocks_are_bounded_and_answers_fit_a_response() {
        let mut a = Assembler::default();
        let blocks: Vec<Block> = (0..RECENT_BLOCKS as u8 + 2)
            .map(|i| setup(1, i, &[]).0)
            .collect();
        for b in &blocks {
            a.remember(Arc::new(b.clone()));
            a.remember(Arc::new(b.clone()));
        }
        assert_eq!(a.recent.len(), RECENT_BLOCKS);
        // The oldest went first.
        assert!(a.recent(&blocks[1].header.hash()).is_none());
        assert!(a.recent(&blocks[2].header.hash()).is_some());

        // Asked for more than a response holds, a peer serves the first ones.
        let (block, _) = setup(3, 0, &[]);
        let many: Vec<u32> = (0..MAX_FETCH_TXS as u32 + 5).map(|i| i % 3).collect();
        let SyncResponse::Txs(txs) = serve(Some(&block), &many) else {
            panic!("served");
        };
        assert_eq!(txs.len(), MAX_FETCH_TXS);
        assert_eq!(txs[4], block.txs[1]);
        // Large transactions: as many as fit in a response.
        let chain = TestChain::new(1, EngineId::Tendermint);
        let big: Vec<Transaction> = (0..400u64)
            .map(|i| chain.put(&user(i), 0, b"k", &vec![i as u8; 65_000]))
            .collect();
        let block = chain.make_block(big).0;
        let all: Vec<u32> = (0..400).collect();
        let answer = serve(Some(&block), &all);
        assert!(answer.to_bytes().len() <= MAX_SYNC_RESPONSE_BYTES + 16);
        let SyncResponse::Txs(txs) = answer else {
            panic!("served");
        };
        assert!(txs.len() > 300 && txs.len() < 400, "{}", txs.len());
        assert_eq!(txs[..], block.txs[..txs.len()]);
    }
}
