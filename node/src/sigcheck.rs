//! Signature checks of transactions that arrive by RPC, batched across concurrent calls.
//!
//! A batch costs about half as much per signature as checks one at a time
//! (`pyralog_crypto::rule`). Gossip brings transactions in batches already; RPC brings one
//! per call, so the calls in flight queue here and one thread checks whatever has queued
//! as one batch. Nothing waits for a batch to fill: an idle node checks a lone call at
//! once, and a loaded one checks larger batches because calls queue while the previous
//! batch is checked.

use pyralog_ledger::{Transaction, verify_signatures_of};
use tokio::sync::{mpsc, oneshot};

use crate::mempool::Reject;

/// Most signatures in one batch (larger batches gain little and delay the first call).
const MAX_BATCH: usize = 256;

/// Calls that may queue; further calls wait for room (the RPC server bounds how many
/// calls are in flight in the first place).
const QUEUE: usize = 4096;

/// The handle RPC calls use; the checking thread ends when every handle is dropped.
#[derive(Clone)]
pub struct SigChecker {
    jobs: mpsc::Sender<Job>,
}

struct Job {
    tx: Transaction,
    reply: oneshot::Sender<(Transaction, bool)>,
}

impl SigChecker {
    /// Starts the checking thread.
    pub fn start() -> std::io::Result<SigChecker> {
        let (jobs, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("rpc-signatures".into())
            .spawn(move || run(queue))?;
        Ok(SigChecker { jobs })
    }

    /// `tx` back if its signature is valid.
    pub async fn check(&self, tx: Transaction) -> Result<Transaction, Reject> {
        let stopped = || Reject::Unavailable("shutting down".into());
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { tx, reply })
            .await
            .map_err(|_| stopped())?;
        match answer.await.map_err(|_| stopped())? {
            (tx, true) => Ok(tx),
            (_, false) => Err(Reject::BadSignature),
        }
    }
}

/// Checks what has queued, batch after batch, until every sender is gone. Returns the
/// number of batches.
fn run(mut queue: mpsc::Receiver<Job>) -> usize {
    let mut batches = 0;
    while let Some(first) = queue.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let txs: Vec<&Transaction> = jobs.iter().map(|j| &j.tx).collect();
        let bad = verify_signatures_of(&txs).err().unwrap_or_default();
        for (i, job) in jobs.into_iter().enumerate() {
            // A caller that gave up does not need the answer.
            let _ = job.reply.send((job.tx, bad.binary_search(&i).is_err()));
        }
        batches += 1;
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyralog_crypto::Hash;
    use pyralog_ledger::EngineId;
    use pyralog_ledger::testing::{TestChain, user};

    fn txs(n: usize) -> Vec<Transaction> {
        let chain = TestChain::new(1, EngineId::Tendermint);
        (0..n as u64)
            .map(|i| chain.notarize(&user(i), 0, Hash([i as u8; 32]), "m"))
            .collect()
    }

    #[test]
    fn queued_calls_are_checked_as_one_batch_and_each_hears_its_answer() {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let mut txs = txs(200);
        for i in [7, 150] {
            txs[i].signature.0[40] ^= 1;
        }
        let answers: Vec<_> = txs
            .iter()
            .map(|tx| {
                let (reply, answer) = oneshot::channel();
                jobs.try_send(Job {
                    tx: tx.clone(),
                    reply,
                })
                .unwrap_or_else(|_| panic!("queue full"));
                answer
            })
            .collect();
        drop(jobs);
        assert_eq!(run(queue), 1);
        for (i, mut answer) in answers.into_iter().enumerate() {
            let (back, valid) = answer.try_recv().unwrap();
            assert_eq!(back, txs[i]);
            assert_eq!(valid, i != 7 && i != 150, "transaction {i}");
        }
    }

    #[tokio::test]
    async fn a_lone_call_is_answered() {
        let checker = SigChecker::start().unwrap();
        let mut txs = txs(2);
        assert_eq!(checker.check(txs[0].clone()).await, Ok(txs[0].clone()));
        txs[1].signature.0[0] ^= 1;
        assert_eq!(
            checker.check(txs[1].clone()).await,
            Err(Reject::BadSignature)
        );
    }
}
