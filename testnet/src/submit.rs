//! How `bench` submits its load: as wallets would. Each sender talks to one node and has
//! at most one transaction unanswered: its next one goes once the node took this one, so
//! the node holds the predecessor (pending or committed) and never gets a transaction
//! behind a nonce gap (which its pool would hold as queued, and evict when full). A
//! transaction the node refuses for now (its pool is full, it is unavailable, the batch
//! did not reach it) is sent again after a wait that doubles, and its sender's later
//! transactions wait for it. A transaction refused for good, or still refused after
//! [`Resend::give_up_after`], strands its sender's later ones: they are not sent.
//!
//! Paced at `rate`, resends take their places in the schedule like new transactions, so
//! the nodes are never offered more than `rate`: when they refuse, new transactions wait.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// A node's answer to one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted, already pending, or already committed.
    Accepted,
    /// Refused for now (`mempool_full`, `unavailable`), or its batch failed in transport.
    Busy,
    /// Refused for good: the reason code (or the error's message).
    Refused(String),
}

/// When to send a refused transaction again.
#[derive(Clone, Copy, Debug)]
pub struct Resend {
    /// Wait before the first resend; it doubles at each one.
    pub first_wait: Duration,
    /// Longest wait between resends.
    pub max_wait: Duration,
    /// Time after its first send from which a transaction still refused counts as refused.
    pub give_up_after: Duration,
}

impl Default for Resend {
    fn default() -> Self {
        Resend {
            first_wait: Duration::from_millis(100),
            max_wait: Duration::from_secs(1),
            give_up_after: Duration::from_secs(120),
        }
    }
}

/// What became of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// A node took it.
    Accepted,
    /// Refused for good, with the reason (`gave up after ...` past
    /// [`Resend::give_up_after`]).
    Refused(String),
    /// Not sent: an earlier transaction of its sender was refused.
    Stranded,
}

/// The outcome of a submission.
#[derive(Debug)]
pub struct Submitted {
    /// Each transaction's fate, in submission order.
    pub fates: Vec<Fate>,
    /// When each was first sent (`None`: never sent).
    pub first_sent: Vec<Option<Instant>>,
    /// Sends after the first (resends of refused transactions).
    pub resends: usize,
}

impl Submitted {
    /// Transactions refused for good.
    pub fn refused(&self) -> usize {
        self.fates
            .iter()
            .filter(|f| matches!(f, Fate::Refused(_)))
            .count()
    }

    /// Transactions not sent because an earlier one of their sender was refused.
    pub fn stranded(&self) -> usize {
        self.fates.iter().filter(|f| **f == Fate::Stranded).count()
    }

    /// How many were refused for good, by reason.
    pub fn refusals(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for f in &self.fates {
            if let Fate::Refused(r) = f {
                *out.entry(r.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    /// Whether transaction `i` can commit: it was accepted, and so was every earlier one
    /// of its sender (`accounts` senders, transaction `i` from sender `i % accounts`).
    pub fn can_commit(&self, accounts: usize) -> Vec<bool> {
        let mut blocked = vec![false; accounts.max(1)];
        self.fates
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let a = i % accounts.max(1);
                blocked[a] |= *f != Fate::Accepted;
                !blocked[a]
            })
            .collect()
    }
}

/// The submitter's bookkeeping.
struct Ledger {
    accounts: usize,
    resend: Resend,
    fates: Vec<Option<Fate>>,
    first_sent: Vec<Option<Instant>>,
    tries: Vec<u32>,
    /// Resends, by the time they are due (at most one per sender).
    due: BTreeSet<(Instant, usize)>,
    /// Per sender: whether a transaction of its is sent and not answered.
    unanswered: Vec<bool>,
    /// Per sender: whether a transaction of its waits in `due` for a resend.
    resending: Vec<bool>,
    /// Per sender: later transactions waiting for it to be answered, in nonce order.
    held: Vec<VecDeque<usize>>,
    /// Senders whose held transactions may go now, in the order they became free.
    free: VecDeque<usize>,
    in_free: Vec<bool>,
    stranded: Vec<bool>,
    resends: usize,
}

impl Ledger {
    fn account(&self, i: usize) -> usize {
        i % self.accounts
    }

    /// Whether sender `a`'s next transaction may go: none of its sender's is unanswered
    /// or waits for a resend. So a node never gets a transaction before it took the
    /// predecessor.
    fn may_send(&self, a: usize) -> bool {
        !self.unanswered[a] && !self.resending[a]
    }

    /// Lets sender `a`'s held transactions go next, once nothing of its is unanswered or
    /// waiting for a resend.
    fn release(&mut self, a: usize) {
        if self.may_send(a) && !self.held[a].is_empty() && !self.in_free[a] {
            self.in_free[a] = true;
            self.free.push_back(a);
        }
    }

    /// Sender `a`'s unanswered transaction was refused for good: its later ones are not
    /// sent.
    fn strand(&mut self, a: usize) {
        self.stranded[a] = true;
        self.resending[a] = false;
        for j in std::mem::take(&mut self.held[a]) {
            self.fates[j] = Some(Fate::Stranded);
        }
    }

    /// Records a node's verdict on transaction `i`, its sender's only unanswered one.
    fn settle(&mut self, i: usize, verdict: Verdict, now: Instant) {
        let a = self.account(i);
        self.unanswered[a] = false;
        self.resending[a] = false;
        match verdict {
            Verdict::Accepted => self.fates[i] = Some(Fate::Accepted),
            Verdict::Busy => {
                let waited = self.first_sent[i].map_or(Duration::ZERO, |t| now - t);
                if waited >= self.resend.give_up_after {
                    self.fates[i] = Some(Fate::Refused(format!(
                        "gave up after {:?} of refusals",
                        self.resend.give_up_after
                    )));
                    self.strand(a);
                    return;
                }
                self.resending[a] = true;
                let shift = self.tries[i].min(16);
                self.tries[i] += 1;
                let wait = self
                    .resend
                    .first_wait
                    .saturating_mul(1 << shift)
                    .min(self.resend.max_wait);
                self.due.insert((now + wait, i));
            }
            Verdict::Refused(reason) => {
                self.fates[i] = Some(Fate::Refused(reason));
                self.strand(a);
            }
        }
    }

    /// Records the answer to a batch (a short answer leaves the rest to send again).
    fn answered(&mut self, sent: Vec<usize>, verdicts: Vec<Verdict>) {
        let now = Instant::now();
        let mut verdicts = verdicts.into_iter();
        for &i in &sent {
            let v = verdicts.next().unwrap_or(Verdict::Busy);
            self.settle(i, v, now);
        }
        for &i in &sent {
            self.release(self.account(i));
        }
    }

    /// Fills a pacing slot (up to `batch`): resends due by `now`, then the next held
    /// transaction of each sender that became free, then fresh ones from `fresh` on; at
    /// most one per sender. Returns the slot's transactions and where fresh ones go on.
    fn fill(
        &mut self,
        batch: usize,
        now: Instant,
        mut fresh: usize,
        n: usize,
    ) -> (Vec<usize>, usize) {
        let mut out = Vec::with_capacity(batch);
        while out.len() < batch {
            match self.due.first() {
                Some(&(at, i)) if at <= now => {
                    self.due.pop_first();
                    // A resend's sender has nothing unanswered: its batch was answered.
                    let a = self.account(i);
                    self.resending[a] = false;
                    self.unanswered[a] = true;
                    out.push(i);
                }
                _ => break,
            }
        }
        while out.len() < batch {
            let Some(a) = self.free.pop_front() else {
                break;
            };
            self.in_free[a] = false;
            if !self.may_send(a) {
                continue; // it is released again when that clears
            }
            if let Some(i) = self.held[a].pop_front() {
                self.unanswered[a] = true;
                out.push(i);
            }
        }
        while out.len() < batch && fresh < n {
            let i = fresh;
            fresh += 1;
            let a = self.account(i);
            if self.stranded[a] {
                self.fates[i] = Some(Fate::Stranded);
            } else if self.may_send(a) && self.held[a].is_empty() {
                self.unanswered[a] = true;
                out.push(i);
            } else {
                self.held[a].push_back(i);
            }
        }
        (out, fresh)
    }
}

/// A batch's answer: what it carried, the verdicts.
type Answer = (Vec<usize>, Vec<Verdict>);

/// Delivers a batch's answer; one dropped unanswered (its `send` future panicked)
/// answers nothing, so everything in it is sent again.
struct Reply {
    to: mpsc::UnboundedSender<Answer>,
    batch: Option<Vec<usize>>,
}

impl Reply {
    fn answer(mut self, verdicts: Vec<Verdict>) {
        if let Some(sent) = self.batch.take() {
            let _ = self.to.send((sent, verdicts));
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(sent) = self.batch.take() {
            let _ = self.to.send((sent, Vec::new()));
        }
    }
}

/// The node sender `sender` talks to, of `nodes`: every transaction of a sender goes to
/// the same one, which therefore holds its predecessors.
pub fn sender_node(sender: usize, nodes: usize) -> usize {
    sender % nodes.max(1)
}

/// Submits transactions `0..n` from `accounts` senders (transaction `i` is the
/// `i / accounts`-th of sender `i % accounts`) to `nodes` nodes, paced at `rate`
/// transactions per second (`None`: as fast as answers allow), at most `batch` per
/// pacing slot. A sender talks to one node ([`sender_node`]) and has at most
/// one unanswered transaction: its next one goes once that node took this one.
/// `send(node, indices)` sends a batch to a node and returns a verdict per index, in
/// order.
pub async fn submit<F, Fut>(
    n: usize,
    accounts: usize,
    nodes: usize,
    batch: usize,
    rate: Option<u64>,
    resend: Resend,
    send: F,
) -> Submitted
where
    F: Fn(usize, Vec<usize>) -> Fut,
    Fut: Future<Output = Vec<Verdict>> + Send + 'static,
{
    let accounts = accounts.max(1);
    let nodes = nodes.max(1);
    let batch = batch.max(1);
    let mut l = Ledger {
        accounts,
        resend,
        fates: vec![None; n],
        first_sent: vec![None; n],
        tries: vec![0; n],
        due: BTreeSet::new(),
        unanswered: vec![false; accounts],
        resending: vec![false; accounts],
        held: vec![VecDeque::new(); accounts],
        free: VecDeque::new(),
        in_free: vec![false; accounts],
        stranded: vec![false; accounts],
        resends: 0,
    };
    let interval = rate.map(|r| Duration::from_secs_f64(batch as f64 / r.max(1) as f64));
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<Answer>();
    let mut fresh = 0;
    let mut in_flight = 0usize;
    let mut next_at = Instant::now();
    loop {
        while let Ok((sent, verdicts)) = answers.try_recv() {
            in_flight -= 1;
            l.answered(sent, verdicts);
        }
        let now = Instant::now();
        let out;
        (out, fresh) = l.fill(batch, now, fresh, n);
        if out.is_empty() {
            if fresh == n && l.due.is_empty() && l.free.is_empty() && in_flight == 0 {
                break;
            }
            // Nothing to send now: wait for an answer or the next resend, and do not make
            // up for the idle time with a burst.
            let wake = l
                .due
                .first()
                .map_or(now + Duration::from_millis(50), |&(at, _)| at);
            tokio::select! {
                Some((sent, verdicts)) = answers.recv() => {
                    in_flight -= 1;
                    l.answered(sent, verdicts);
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            next_at = next_at.max(Instant::now());
            continue;
        }
        let mut by_node = vec![Vec::new(); nodes];
        for &i in &out {
            if l.first_sent[i].is_some() {
                l.resends += 1;
            } else {
                l.first_sent[i] = Some(now);
            }
            by_node[sender_node(i % accounts, nodes)].push(i);
        }
        for (node, part) in by_node.into_iter().enumerate() {
            if part.is_empty() {
                continue;
            }
            in_flight += 1;
            let fut = send(node, part.clone());
            let reply = Reply {
                to: answers_tx.clone(),
                batch: Some(part),
            };
            tokio::spawn(async move { reply.answer(fut.await) });
        }
        if let Some(interval) = interval {
            // A slot not full takes its share of the interval.
            next_at += interval.mul_f64(out.len() as f64 / batch as f64);
            tokio::time::sleep_until(next_at.into()).await;
        }
    }
    debug_assert!(
        l.fates.iter().all(Option::is_some),
        "a transaction has no fate"
    );
    Submitted {
        fates: l
            .fates
            .into_iter()
            .map(|f| f.unwrap_or(Fate::Stranded))
            .collect(),
        first_sent: l.first_sent,
        resends: l.resends,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A node's pool: `cap` places, blocks take the ready transactions.
    struct Pool {
        accounts: usize,
        cap: usize,
        next: Vec<usize>,
        pending: BTreeSet<usize>,
        /// Admissions behind a nonce gap (the predecessor neither pending nor committed).
        gaps: usize,
        /// Refused for good.
        bad: Option<usize>,
        /// Refused for now, always.
        stuck: Option<usize>,
    }

    impl Pool {
        fn new(accounts: usize, cap: usize) -> Pool {
            Pool {
                accounts,
                cap,
                next: vec![0; accounts],
                pending: BTreeSet::new(),
                gaps: 0,
                bad: None,
                stuck: None,
            }
        }

        fn answer(&mut self, i: usize) -> Verdict {
            let (a, nonce) = (i % self.accounts, i / self.accounts);
            if self.bad == Some(i) {
                return Verdict::Refused("bad_signature".into());
            }
            if self.stuck == Some(i) {
                return Verdict::Busy;
            }
            if nonce < self.next[a] || self.pending.contains(&i) {
                return Verdict::Accepted;
            }
            if self.pending.len() >= self.cap {
                return Verdict::Busy;
            }
            if nonce > self.next[a] && !self.pending.contains(&(i - self.accounts)) {
                self.gaps += 1;
            }
            self.pending.insert(i);
            Verdict::Accepted
        }

        /// Commits up to `max` ready transactions.
        fn block(&mut self, max: usize) {
            let mut taken = 0;
            for a in 0..self.accounts {
                while taken < max && self.pending.remove(&(self.next[a] * self.accounts + a)) {
                    self.next[a] += 1;
                    taken += 1;
                }
            }
        }
    }

    /// Submits `n` transactions to `pool` while blocks of `block` commit every 5 ms.
    async fn run(
        pool: Arc<Mutex<Pool>>,
        n: usize,
        rate: Option<u64>,
        block: usize,
        resend: Resend,
    ) -> Submitted {
        let accounts = pool.lock().unwrap().accounts;
        let producer = {
            let pool = pool.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    pool.lock().unwrap().block(block);
                }
            })
        };
        // The verdicts are given when the batch is sent, so the pool sees the sends in
        // their order.
        let sub = submit(n, accounts, 1, 8, rate, resend, |_, batch| {
            let verdicts: Vec<Verdict> = {
                let mut p = pool.lock().unwrap();
                batch.iter().map(|&i| p.answer(i)).collect()
            };
            async move { verdicts }
        })
        .await;
        producer.abort();
        let mut p = pool.lock().unwrap();
        while !p.pending.is_empty() {
            let before = p.pending.len();
            p.block(usize::MAX);
            if p.pending.len() == before {
                break; // what is left waits behind a gap forever
            }
        }
        sub
    }

    fn quick() -> Resend {
        Resend {
            first_wait: Duration::from_millis(2),
            max_wait: Duration::from_millis(20),
            give_up_after: Duration::from_millis(300),
        }
    }

    #[tokio::test]
    async fn refused_transactions_are_resent_and_senders_never_leave_a_gap() {
        // The pool commits at most 1,000 tx/s; offered 2,000 tx/s, or everything at once,
        // it is full most of the time. It has no eviction, so a single transaction sent
        // behind a gap would block it for good.
        for rate in [Some(2_000), None] {
            let pool = Arc::new(Mutex::new(Pool::new(10, 30)));
            let resend = Resend {
                give_up_after: Duration::from_secs(30),
                ..quick()
            };
            let sub = run(pool.clone(), 1000, rate, 5, resend).await;
            let p = pool.lock().unwrap();
            assert!(
                sub.fates.iter().all(|f| *f == Fate::Accepted),
                "{rate:?}: {:?}",
                sub.refusals()
            );
            assert!(sub.resends > 0, "{rate:?}: the pool was full at times");
            assert_eq!(p.gaps, 0, "{rate:?}: a transaction went behind a gap");
            assert_eq!(p.next, vec![100; 10], "{rate:?}: everything committed");
            assert!(sub.first_sent.iter().all(Option::is_some));
            assert_eq!(sub.can_commit(10), vec![true; 1000]);
        }
    }

    #[tokio::test]
    async fn a_refusal_for_good_strands_the_senders_later_transactions() {
        let pool = Arc::new(Mutex::new(Pool::new(10, 1000)));
        pool.lock().unwrap().bad = Some(25);
        let sub = run(pool.clone(), 100, Some(4_000), 50, quick()).await;
        assert_eq!(sub.fates[25], Fate::Refused("bad_signature".into()));
        assert_eq!(sub.refusals().get("bad_signature"), Some(&1));
        for i in (35..100).step_by(10) {
            assert_eq!(sub.fates[i], Fate::Stranded, "{i}");
            assert!(sub.first_sent[i].is_none(), "{i} was sent");
        }
        assert_eq!(sub.stranded(), 7);
        let can = sub.can_commit(10);
        assert!(can[5] && can[15] && !can[25] && !can[35]);
        assert_eq!(can.iter().filter(|c| **c).count(), 92);
        assert_eq!(pool.lock().unwrap().next[5], 2);
    }

    #[tokio::test]
    async fn a_transaction_refused_for_too_long_is_given_up() {
        let pool = Arc::new(Mutex::new(Pool::new(10, 1000)));
        pool.lock().unwrap().stuck = Some(23);
        let sub = run(pool.clone(), 100, Some(4_000), 50, quick()).await;
        assert!(
            matches!(&sub.fates[23], Fate::Refused(r) if r.starts_with("gave up")),
            "{:?}",
            sub.fates[23]
        );
        // It was sent again and again, with waits that grew (2, 4, 8, 16, 20, 20 ... ms
        // over 300 ms: about 20 sends).
        assert!((5..=40).contains(&sub.resends), "{}", sub.resends);
        for i in (33..100).step_by(10) {
            assert_eq!(sub.fates[i], Fate::Stranded, "{i}");
        }
        assert_eq!(sub.refused(), 1);
    }

    #[tokio::test]
    async fn senders_keep_to_one_node_and_what_is_not_answered_goes_again() {
        let sends = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = sends.clone();
        let resend = Resend {
            give_up_after: Duration::from_secs(30),
            ..quick()
        };
        let sub = submit(60, 6, 3, 8, Some(10_000), resend, move |node, batch| {
            let call = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            seen.lock()
                .unwrap()
                .extend(batch.iter().map(|&i| (node, i)));
            // The first answer covers half its batch; the second never comes.
            let answered = if call == 0 {
                batch.len() / 2
            } else {
                batch.len()
            };
            let verdicts = vec![Verdict::Accepted; answered];
            async move {
                if call == 1 {
                    // A send that fails without an answer (no panic hook: no backtrace).
                    std::panic::resume_unwind(Box::new("lost"));
                }
                verdicts
            }
        })
        .await;
        assert!(sub.fates.iter().all(|f| *f == Fate::Accepted));
        assert!(sub.resends > 0);
        let sends = sends.lock().unwrap();
        assert!(
            sends.iter().all(|&(node, i)| node == (i % 6) % 3),
            "{sends:?}"
        );
        let sent: BTreeSet<usize> = sends.iter().map(|&(_, i)| i).collect();
        assert_eq!(sent.len(), 60);
    }
}
