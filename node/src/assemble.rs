//! Compact proposals: proposals whose transactions travel by hash.
//!
//! Every transaction reaches every node through gossip before a proposal includes it, so
//! a proposal carrying the transactions sent each one to each node twice. The engine's
//! proposals go out in compact form ([`pyralog_consensus::Engine::compact_message`]): the
//! header, the last certificate and the transactions' hashes. A receiver rebuilds the
//! block from its mempool and the blocks it recently proposed or rebuilt, asks the peer
//! that sent the proposal for the transactions it does not hold (by position in the
//! block), and hands the engine the full proposal. The header's transaction root binds the
//! rebuilt block, and validation checks it as for any block, so a peer serving wrong
//! transactions only gets its proposal refused (and, caught here first, its score
//! lowered).

use std::collections::VecDeque;
use std::sync::Arc;

use pyralog_ledger::{Block, CompactBlock, Encode, Hash, Transaction};
use pyralog_p2p::PeerId;

use crate::mempool::Mempool;
use crate::wire::{MAX_SYNC_RESPONSE_BYTES, SyncResponse};

/// Blocks kept to rebuild repeated proposals and answer peers' fetches: the proposals of
/// the last few heights and rounds (peers fetch only for the current height and the
/// next). Each is at most the chain's block size.
pub const RECENT_BLOCKS: usize = 4;
/// Compact proposals waiting for fetched transactions at once; a new one beyond this
/// drops the oldest.
pub const MAX_WAITING: usize = 4;

/// A compact proposal rebuilt: the message to expand and its block.
#[derive(Debug)]
pub struct Rebuilt {
    /// The compact proposal as received.
    pub wire: Vec<u8>,
    /// Its block.
    pub block: Block,
    /// Transactions found here.
    pub held: usize,
    /// Transactions fetched from the peer.
    pub fetched: usize,
}

/// What to do with a compact proposal just received.
#[derive(Debug)]
pub enum Received {
    /// Every transaction was here.
    Rebuilt(Box<Rebuilt>),
    /// Ask `from` for the transactions at `indices` of `block`, then call
    /// [`Assembler::fetched`].
    Fetch {
        /// The peer that sent the proposal.
        from: PeerId,
        /// The block's header hash.
        block: Hash,
        /// Positions of the missing transactions.
        indices: Vec<u32>,
    },
    /// Already waiting for this block's transactions.
    Duplicate,
}

/// Why a fetch did not complete a proposal.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The peer did not answer, or answered with an error.
    #[error("the peer did not serve the transactions: {0}")]
    Unanswered(String),
    /// The peer answered with transactions other than those asked for.
    #[error("the peer served transactions other than those the proposal names")]
    Wrong,
}

struct Waiting {
    block: Hash,
    wire: Vec<u8>,
    compact: CompactBlock,
    found: Vec<Option<Transaction>>,
    missing: Vec<u32>,
}

/// Recent blocks and the compact proposals waiting for transactions.
#[derive(Default)]
pub struct Assembler {
    recent: VecDeque<(Hash, Arc<Block>)>,
    waiting: VecDeque<Waiting>,
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

    fn recent(&self, hash: &Hash) -> Option<&Arc<Block>> {
        self.recent.iter().find(|(h, _)| h == hash).map(|(_, b)| b)
    }

    /// A compact proposal for `compact` arrived from `from`: rebuilds it from `pool` and
    /// the recent blocks, or says which transactions to fetch.
    pub fn received(
        &mut self,
        from: PeerId,
        wire: Vec<u8>,
        compact: CompactBlock,
        pool: &Mempool,
    ) -> Received {
        let hash = compact.header.hash();
        if self.waiting.iter().any(|w| w.block == hash) {
            return Received::Duplicate;
        }
        let recent = self.recent(&hash).cloned();
        let found: Vec<Option<Transaction>> = match &recent {
            Some(b) if b.txs.len() == compact.tx_hashes.len() => {
                b.txs.iter().cloned().map(Some).collect()
            }
            _ => compact
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
            wire,
            compact,
            found,
            missing,
        };
        if waiting.missing.is_empty()
            && let Some(r) = rebuild(&mut waiting)
        {
            return Received::Rebuilt(Box::new(r));
        }
        if self.waiting.len() == MAX_WAITING {
            self.waiting.pop_front();
        }
        let indices = waiting.missing.clone();
        self.waiting.push_back(waiting);
        Received::Fetch {
            from,
            block: hash,
            indices,
        }
    }

    /// The answer to the fetch for `block`: the rebuilt proposal, `Ok(None)` if it no
    /// longer waits (dropped for newer ones), or why it failed (and is dropped).
    pub fn fetched(
        &mut self,
        block: &Hash,
        answer: Result<SyncResponse, String>,
    ) -> Result<Option<Rebuilt>, FetchError> {
        let Some(at) = self.waiting.iter().position(|w| w.block == *block) else {
            return Ok(None);
        };
        let Some(mut w) = self.waiting.remove(at) else {
            return Ok(None);
        };
        let txs = match answer {
            Ok(SyncResponse::Txs(txs)) => txs,
            Ok(SyncResponse::Error(e)) | Err(e) => return Err(FetchError::Unanswered(e)),
            Ok(_) => return Err(FetchError::Unanswered("an unrelated answer".into())),
        };
        if txs.len() != w.missing.len() {
            return Err(FetchError::Wrong);
        }
        for (&i, tx) in w.missing.iter().zip(txs) {
            if tx.hash() != w.compact.tx_hashes[i as usize] {
                return Err(FetchError::Wrong);
            }
            w.found[i as usize] = Some(tx);
        }
        rebuild(&mut w).map(Some).ok_or(FetchError::Wrong)
    }

    /// The answer to a peer's fetch of `indices` of `block`.
    pub fn serve(&self, block: &Hash, indices: &[u32]) -> SyncResponse {
        let Some(b) = self.recent(block) else {
            return SyncResponse::Error("no such recent proposal here".into());
        };
        let mut txs = Vec::with_capacity(indices.len());
        let mut bytes = 0;
        for &i in indices {
            let Some(tx) = b.txs.get(i as usize) else {
                return SyncResponse::Error(format!("the proposal has no transaction {i}"));
            };
            bytes += tx.to_bytes().len() + 4;
            if bytes > MAX_SYNC_RESPONSE_BYTES {
                return SyncResponse::Error("too many transactions asked for at once".into());
            }
            txs.push(tx.clone());
        }
        SyncResponse::Txs(txs)
    }
}

/// The block of `w` once every transaction is found (`None` before).
fn rebuild(w: &mut Waiting) -> Option<Rebuilt> {
    let fetched = w.missing.len();
    let found = &mut w.found;
    let block = w.compact.assemble(|i, _| found[i].take()).ok()?;
    Some(Rebuilt {
        wire: std::mem::take(&mut w.wire),
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

    /// A block of `n` notarizations from `n` senders, and a pool holding those at `held`.
    fn setup(n: usize, held: &[usize]) -> (Block, Mempool) {
        let chain = TestChain::new(1, EngineId::Tendermint);
        let txs: Vec<Transaction> = (0..n)
            .map(|i| chain.notarize(&user(i as u64), 0, Hash([i as u8 + 1; 32]), "doc"))
            .collect();
        let (block, _) = chain.make_block(txs);
        let mut pool = Mempool::new(MempoolConfig::default());
        for &i in held {
            let (h, len) = block.txs[i].hash_and_len();
            pool.admit(block.txs[i].clone(), h, len, 0).unwrap();
        }
        (block, pool)
    }

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn a_proposal_whose_transactions_are_all_held_is_rebuilt_at_once() {
        let (block, pool) = setup(4, &[0, 1, 2, 3]);
        let mut a = Assembler::default();
        match a.received(peer(), vec![7], CompactBlock::of(&block), &pool) {
            Received::Rebuilt(r) => {
                assert_eq!(r.block, block);
                assert_eq!((r.held, r.fetched, r.wire), (4, 0, vec![7]));
            }
            other => panic!("{other:?}"),
        }
        // A block this node sent or rebuilt answers for itself, pool or not.
        let mut a = Assembler::default();
        a.remember(Arc::new(block.clone()));
        let empty = Mempool::new(MempoolConfig::default());
        assert!(matches!(
            a.received(peer(), vec![], CompactBlock::of(&block), &empty),
            Received::Rebuilt(r) if r.block == block
        ));
    }

    #[test]
    fn missing_transactions_are_fetched_checked_and_filled_in() {
        let (block, pool) = setup(5, &[0, 2, 4]);
        let hash = block.header.hash();
        let mut a = Assembler::default();
        let from = peer();
        match a.received(from, vec![1], CompactBlock::of(&block), &pool) {
            Received::Fetch {
                from: f,
                block: b,
                indices,
            } => {
                assert_eq!((f, b, indices), (from, hash, vec![1, 3]));
            }
            other => panic!("{other:?}"),
        }
        // The same proposal again (a relay's copy) waits with the first.
        assert!(matches!(
            a.received(peer(), vec![1], CompactBlock::of(&block), &pool),
            Received::Duplicate
        ));
        // The serving side: a node that has the block answers by position.
        let mut server = Assembler::default();
        assert!(matches!(server.serve(&hash, &[1]), SyncResponse::Error(_)));
        server.remember(Arc::new(block.clone()));
        assert!(matches!(
            server.serve(&hash, &[1, 9]),
            SyncResponse::Error(_)
        ));
        let answer = server.serve(&hash, &[1, 3]);
        assert_eq!(
            answer,
            SyncResponse::Txs(vec![block.txs[1].clone(), block.txs[3].clone()])
        );
        let r = a.fetched(&hash, Ok(answer)).unwrap().unwrap();
        assert_eq!(r.block, block);
        assert_eq!((r.held, r.fetched, r.wire), (3, 2, vec![1]));
        // Answered once: a second answer finds nothing waiting.
        assert!(
            a.fetched(&hash, Ok(SyncResponse::Txs(vec![])))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn wrong_or_failed_answers_drop_the_proposal() {
        let (block, pool) = setup(3, &[0]);
        let hash = block.header.hash();
        let other = setup(3, &[]).0;
        // (answer, whether the peer served something wrong rather than nothing)
        let cases: Vec<(Result<SyncResponse, String>, bool)> = vec![
            (
                Ok(SyncResponse::Txs(vec![
                    block.txs[2].clone(),
                    block.txs[1].clone(),
                ])),
                true,
            ),
            (Ok(SyncResponse::Txs(vec![block.txs[1].clone()])), true),
            (Ok(SyncResponse::Txs(vec![other.txs[0].clone(); 2])), true),
            (Ok(SyncResponse::Error("gone".into())), false),
            (Ok(SyncResponse::Status { height: 3 }), false),
            (Err("timed out".into()), false),
        ];
        for (answer, wrong) in cases {
            let mut a = Assembler::default();
            assert!(matches!(
                a.received(peer(), vec![], CompactBlock::of(&block), &pool),
                Received::Fetch { .. }
            ));
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
    fn waiting_and_recent_blocks_are_bounded() {
        let mut a = Assembler::default();
        let empty = Mempool::new(MempoolConfig::default());
        let blocks: Vec<Block> = (0..RECENT_BLOCKS + 2)
            .map(|i| {
                let chain = TestChain::new(1, EngineId::Tendermint);
                let tx = chain.notarize(&user(1), 0, Hash([i as u8; 32]), "doc");
                chain.make_block(vec![tx]).0
            })
            .collect();
        for b in &blocks {
            assert!(matches!(
                a.received(peer(), vec![], CompactBlock::of(b), &empty),
                Received::Fetch { .. }
            ));
        }
        assert_eq!(a.waiting.len(), MAX_WAITING);
        // The oldest were dropped for the newest.
        let first = blocks[0].header.hash();
        let answer = Ok(SyncResponse::Txs(blocks[0].txs.clone()));
        assert!(a.fetched(&first, answer).unwrap().is_none());
        let last = &blocks[blocks.len() - 1];
        let answer = Ok(SyncResponse::Txs(last.txs.clone()));
        assert!(a.fetched(&last.header.hash(), answer).unwrap().is_some());

        for b in &blocks {
            a.remember(Arc::new(b.clone()));
            a.remember(Arc::new(b.clone()));
        }
        assert_eq!(a.recent.len(), RECENT_BLOCKS);
        // The oldest went first.
        assert!(a.recent(&blocks[1].header.hash()).is_none());
        assert!(a.recent(&blocks[2].header.hash()).is_some());
    }
}
