//! The consensus driver: one task that owns the engine, the committed chain and the
//! mempool, and carries out the engine's outputs in order (persist before send).
//!
//! Inputs come from the network (gossip, sync requests and answers), from RPC (submitted
//! transactions, status), and from timers. Everything that mutates the chain happens
//! here, so commits are serialised; RPC reads the store directly.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pyralog_consensus::{Carried, Engine, Input, Output, Signer, SignerStore, Timeout};
use pyralog_crypto::{Keypair, PublicKey};
use pyralog_ledger::{Decode, DuplicateVote, Encode, Hash, Header, Transaction, TxError};
use pyralog_p2p::{Event, Events, Held, InboundId, Judgement, Network, PeerId, Topic};
use pyralog_storage::{SledStore, Store};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::assemble::{Assembler, Rebuilt, Received};
use crate::chain::{Chain, Committed, Fatal};
use crate::mempool::{Admitted, Mempool, Reject};
use crate::metrics::{Metrics, set};
use crate::wire::{self, SyncRequest, SyncResponse};

/// Meta key of the engine's persisted state.
const ENGINE_STATE_KEY: &str = "consensus_state";
/// Meta key of the signer's last signed position.
const SIGNER_KEY: &str = "signer";
/// Meta key of the evidence this node has seen (read by RPC's `evidence`).
pub const EVIDENCE_KEY: &str = "evidence";
/// Most evidence items kept.
const MAX_EVIDENCE: usize = 1000;
/// Flush the transaction gossip batch at least this often.
const TX_FLUSH: Duration = Duration::from_millis(20);
/// ... or once it holds this many bytes.
const TX_FLUSH_BYTES: usize = 1 << 20;
/// Room in a gossip message for what a proposal carries besides its transactions (their
/// length prefixes, the header, the last certificate, the signature, gossip framing):
/// a block is built to at most `p2p.max_gossip_bytes` minus this, or the proposal would
/// not leave the node and every round it proposed in would time out.
const PROPOSAL_MARGIN_BYTES: usize = 256 << 10;
/// Score lost by a peer that published an invalid message (sent it to us as its author).
const BAD_MESSAGE_PENALTY: i32 = 20;
/// How long the peers have to serve a compact proposal's missing transactions.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one peer has to answer one request of such a fetch, before the next is asked.
const PEER_FETCH_TIMEOUT: Duration = Duration::from_millis(600);
/// Bytes of queued transaction batches a node takes in, about, when a compact proposal
/// names transactions it does not hold, before it fetches them (the batch that crosses
/// it included): about 1,200 notarizations to check, which the consensus messages behind
/// the proposal wait for.
const MAX_BATCH_BYTES_BEFORE_FETCH: usize = 256 << 10;

/// The fewest transactions a proposal may always hold, and the fewest a block must have
/// to measure the cost of one (below it, the block's fixed cost dominates).
const MIN_BLOCK_TXS: usize = 100;

/// How many transactions a proposal may hold so that building it takes at most half the
/// propose timeout: the other validators start their propose timers when the proposer
/// starts building, and a proposal that reaches them after it fails the round (and is
/// built again by the next proposer, as late). Executing a transaction, with its share
/// of the new state root, costs more as the state outgrows the caches, so the cost is
/// measured: a moving average over the blocks this node lately built, or validated for
/// another proposer.
#[derive(Debug)]
struct ExecBudget {
    /// Seconds a build may take.
    secs: f64,
    /// Seconds per transaction, once measured.
    per_tx: Option<f64>,
}

impl ExecBudget {
    fn new(timeout_propose_ms: u64) -> ExecBudget {
        ExecBudget {
            secs: timeout_propose_ms as f64 / 2000.0,
            per_tx: None,
        }
    }

    /// Executing a block of `txs` transactions took `secs`.
    fn observe(&mut self, txs: usize, secs: f64) {
        if txs < MIN_BLOCK_TXS {
            return;
        }
        let x = secs / txs as f64;
        self.per_tx = Some(self.per_tx.map_or(x, |p| 0.7 * p + 0.3 * x));
    }

    /// The cap on the next proposal's transactions.
    fn max_txs(&self) -> usize {
        match self.per_tx {
            Some(p) if p > 0.0 => ((self.secs / p) as usize).max(MIN_BLOCK_TXS),
            _ => usize::MAX,
        }
    }
}

/// The signer's position, in the node's store.
///
/// A save is held here until the driver writes it, just before the engine state that
/// follows it (or alone), and makes it durable before any message leaves the node
/// ([`PendingWrites::make_durable`]). So a signature is never sent before the record of
/// it is on disk, as [`SignerStore`] requires, and a validator's step costs one flush
/// rather than one for the signer and one for the engine.
pub struct StoreSigner {
    store: Arc<SledStore>,
    pending: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

impl SignerStore for StoreSigner {
    fn load(&self) -> Result<Option<pyralog_consensus::LastSigned>, String> {
        if let Some(bytes) = lock(&self.pending).as_deref() {
            return pyralog_consensus::LastSigned::from_bytes(bytes)
                .map(Some)
                .map_err(|e| format!("signer state unreadable: {e}"));
        }
        match self.store.meta(SIGNER_KEY).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(b) => pyralog_consensus::LastSigned::from_bytes(&b)
                .map(Some)
                .map_err(|e| format!("signer state unreadable: {e}")),
        }
    }

    fn save(&mut self, state: &pyralog_consensus::LastSigned) -> Result<(), String> {
        *lock(&self.pending) = Some(state.to_bytes());
        Ok(())
    }
}

/// A poisoned lock only means a thread panicked while holding it; the value is whole.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The validator's consensus writes not yet durable: the signer's newest position and
/// whether the store holds unsynced engine state.
///
/// The engine emits its state before the sends that depend on it, and the signer saves
/// its position before it hands out a signature; neither has to be on disk until a
/// message leaves the node. Writing both as they come and flushing only before a send
/// (or a commit) keeps that order and saves the flushes of the steps that send nothing
/// (a new round, a new height) and of the signer's own writes: about a third of a
/// validator's log syncs per height (docs/PERFORMANCE.md, tenth session).
struct PendingWrites {
    signer: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    unsynced: bool,
}

impl PendingWrites {
    /// Writes the signer's pending position, if any, then the engine's state `engine`;
    /// durable at the next [`PendingWrites::make_durable`]. In that order: sled recovers
    /// a prefix of its writes, so after a crash the engine state (which holds this
    /// validator's signed messages) is never newer than the signer's record.
    fn persist(&mut self, store: &SledStore, engine: &[u8]) -> Result<(), Fatal> {
        let signer = lock(&self.signer).take();
        let mut entries: Vec<(&str, &[u8])> = Vec::with_capacity(2);
        if let Some(bytes) = &signer {
            entries.push((SIGNER_KEY, bytes));
        }
        entries.push((ENGINE_STATE_KEY, engine));
        self.write(store, &entries, signer.as_deref())
    }

    /// Writes what is pending and flushes, if anything is: before a message leaves.
    fn make_durable(&mut self, store: &SledStore) -> Result<(), Fatal> {
        let signer = lock(&self.signer).take();
        if let Some(bytes) = &signer {
            self.write(store, &[(SIGNER_KEY, bytes)], Some(bytes))?;
        }
        if self.unsynced {
            store.sync().map_err(|e| Fatal(e.to_string()))?;
            self.unsynced = false;
        }
        Ok(())
    }

    fn write(
        &mut self,
        store: &SledStore,
        entries: &[(&str, &[u8])],
        signer: Option<&[u8]>,
    ) -> Result<(), Fatal> {
        if let Err(e) = store.put_meta_unsynced(entries) {
            // Not written: keep the signer's position pending, so no later write or
            // send can pass it (the error is fatal to the driver anyway).
            if let Some(bytes) = signer {
                let mut pending = lock(&self.signer);
                if pending.is_none() {
                    *pending = Some(bytes.to_vec());
                }
            }
            return Err(Fatal(e.to_string()));
        }
        self.unsynced = true;
        Ok(())
    }
}

/// Where a committed transaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TxCommitted {
    /// Its hash.
    #[serde(serialize_with = "crate::rpc::ser_hash")]
    pub hash: Hash,
    /// Block height.
    pub height: u64,
    /// Index in the block.
    pub index: u32,
    /// Position in the log.
    pub log_index: u64,
}

/// What happened to a submitted transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Added to the mempool (or already there).
    Pending {
        /// It was already pending.
        already: bool,
    },
    /// It was committed before.
    Committed(TxCommitted),
}

/// One transaction of a submission: decoded within the size limit, its signature
/// checked by the RPC handler.
pub struct Submission {
    /// The transaction.
    pub tx: Box<Transaction>,
    /// Its hash.
    pub hash: Hash,
    /// Its canonical encoding, as received (gossiped once admitted).
    pub encoded: Vec<u8>,
    /// Answered when it commits, or when it leaves the pool uncommitted (evicted).
    pub waiter: Option<oneshot::Sender<Result<TxCommitted, Reject>>>,
}

/// A request from RPC to the driver.
pub enum Request {
    /// Admit transactions, in order (`broadcast_tx` sends one, `broadcast_txs` many).
    Submit {
        /// The transactions.
        txs: Vec<Submission>,
        /// Answered with each one's admission, in the same order.
        reply: oneshot::Sender<Vec<Result<Submitted, Reject>>>,
    },
}

/// The node's live status, for RPC.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// Committed height.
    pub height: u64,
    /// Consensus round at the next height.
    pub round: u32,
    /// Hash of the last committed header (hex; empty before block 1).
    pub latest_hash: String,
    /// BFT time of the last committed header.
    pub latest_time_ms: u64,
    /// Log size at the tip.
    pub log_size: u64,
    /// State root at the tip (hex).
    pub state_root: String,
    /// Connected peers.
    pub peers: usize,
    /// Pending transactions.
    pub mempool_txs: usize,
    /// Pending bytes.
    pub mempool_bytes: usize,
    /// Whether the node is fetching blocks from peers.
    pub catching_up: bool,
}

/// Channels the driver publishes on, shared with RPC.
#[derive(Clone)]
pub struct Feeds {
    /// New committed headers.
    pub headers: broadcast::Sender<Header>,
    /// Committed transactions.
    pub txs: broadcast::Sender<TxCommitted>,
    /// Live status.
    pub status: watch::Receiver<Status>,
}

/// What the driver needs.
pub struct DriverConfig {
    /// The validator key, if this node votes.
    pub validator: Option<Keypair>,
    /// Mempool limits.
    pub mempool: crate::config::MempoolConfig,
    /// Auditor mode: where alarms and checkpoints go.
    pub audit: Option<Arc<crate::audit::NodeAudit>>,
    /// The largest gossip message (`p2p.max_gossip_bytes`): proposals are built to fit.
    pub max_gossip_bytes: usize,
}

struct Timers {
    due: BTreeMap<(Instant, u64), Timeout>,
    seq: u64,
}

struct SyncState {
    in_flight: bool,
    catching_up: bool,
    last_progress: Instant,
}

/// The driver task.
pub struct Driver {
    engine: Box<dyn Engine + Send>,
    chain: Chain,
    pool: Mempool,
    net: Network,
    metrics: Arc<Metrics>,
    proposer: Option<PublicKey>,
    timers: Timers,
    outbox: Vec<Vec<u8>>,
    outbox_bytes: usize,
    waiters: HashMap<Hash, Vec<oneshot::Sender<Result<TxCommitted, Reject>>>>,
    headers: broadcast::Sender<Header>,
    tx_feed: broadcast::Sender<TxCommitted>,
    status: watch::Sender<Status>,
    height_started: Instant,
    peers: usize,
    sync: SyncState,
    sync_tx: mpsc::Sender<(PeerId, SyncResponse)>,
    sync_rx: mpsc::Receiver<(PeerId, SyncResponse)>,
    evidence: Vec<DuplicateVote>,
    audit: Option<Arc<crate::audit::NodeAudit>>,
    /// How long a round-0 proposal waits for a transaction (`mempool.propose_wait_ms`,
    /// capped at half the propose timeout).
    propose_wait: Duration,
    /// The proposal the engine asked for while no transaction could go in it.
    held_proposal: Option<HeldProposal>,
    /// Most transaction bytes in a block this node proposes: what its gossip carries.
    block_bytes: usize,
    /// Most transactions in a block this node proposes: what it can execute in time.
    exec_budget: ExecBudget,
    /// Consensus state written but not yet durable: flushed before anything is sent.
    pending: PendingWrites,
    /// Recent proposals' blocks and compact proposals waiting for transactions.
    assembler: Assembler,
    /// Whether the pool took a transaction since the waiting proposals were last
    /// refilled from it.
    pool_grew: bool,
    /// The ends of fetches of compact proposals' missing transactions.
    fetch_tx: mpsc::Sender<Fetched>,
    fetch_rx: mpsc::Receiver<Fetched>,
}

/// The end of a fetch of a compact proposal's transactions.
struct Fetched {
    /// The block's header hash.
    block: Hash,
    /// The transactions asked for, checked against their hashes, or why none came.
    txs: Result<Vec<Transaction>, String>,
    /// Peers that served transactions other than those asked for.
    wrong: Vec<PeerId>,
}

/// A round-0 proposal waiting for a transaction it can include.
#[derive(Clone, Copy)]
struct HeldProposal {
    height: u64,
    round: u32,
    /// When it goes out, empty if need be.
    until: Instant,
    /// The mempool's count of transactions that became ready when a block was last
    /// tried: a new try only when one has since.
    ready_seen: u64,
}

/// The chain's limit on a block's transactions.
fn block_limit(chain: &Chain) -> usize {
    usize::try_from(chain.genesis().params.max_block_txs).unwrap_or(usize::MAX)
}

/// Whether a proposal was built and carries no transaction.
fn is_empty_proposal(ready: &Option<Input>) -> bool {
    matches!(ready, Some(Input::ProposalReady { block, .. }) if block.txs.is_empty())
}

/// Milliseconds since the Unix epoch (the engine's clock input).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Driver {
    /// Builds the driver and its feeds. `chain` is the opened committed chain.
    pub fn new(
        cfg: DriverConfig,
        chain: Chain,
        net: Network,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Driver, Feeds)> {
        let genesis = chain.genesis().clone();
        let validators = chain.validators().clone();
        let proposer = cfg.validator.as_ref().map(Keypair::public);
        let pending_signer = Arc::new(std::sync::Mutex::new(None));
        let signer = match cfg.validator {
            Some(key) => {
                if validators.index_of(&key.public()).is_none() {
                    anyhow::bail!(
                        "validator key {} is not in the genesis validator set (start with --mode full to follow the chain)",
                        key.public().to_hex()
                    );
                }
                Some(
                    Signer::open(
                        key,
                        genesis.chain_id.clone(),
                        StoreSigner {
                            store: chain.store().clone(),
                            pending: pending_signer.clone(),
                        },
                        chain.height(),
                    )
                    .map_err(|e| anyhow::anyhow!("opening the signer: {e}"))?,
                )
            }
            None => None,
        };
        let engine: Box<dyn Engine + Send> = match genesis.engine {
            pyralog_ledger::EngineId::Tendermint => {
                Box::new(pyralog_consensus::tendermint::Tendermint::new(
                    pyralog_consensus::tendermint::Config {
                        chain_id: genesis.chain_id.clone(),
                        validators,
                        params: genesis.params.clone(),
                    },
                    signer,
                ))
            }
            other => anyhow::bail!(
                "genesis asks for the {} engine, which this build does not have yet",
                other.name()
            ),
        };
        let evidence = match chain.store().meta(EVIDENCE_KEY)? {
            Some(b) => decode_evidence(&b).unwrap_or_default(),
            None => Vec::new(),
        };
        let (headers, _) = broadcast::channel(1024);
        let (tx_feed, _) = broadcast::channel(16384);
        let (status, status_rx) = watch::channel(Status::default());
        let (sync_tx, sync_rx) = mpsc::channel(16);
        let (fetch_tx, fetch_rx) = mpsc::channel(16);
        let propose_wait = Duration::from_millis(
            cfg.mempool
                .propose_wait_ms
                .min(genesis.params.timeout_propose_ms / 2),
        );
        let driver = Driver {
            engine,
            pool: Mempool::new(cfg.mempool),
            chain,
            net,
            metrics,
            proposer,
            timers: Timers {
                due: BTreeMap::new(),
                seq: 0,
            },
            outbox: Vec::new(),
            outbox_bytes: 0,
            waiters: HashMap::new(),
            headers: headers.clone(),
            tx_feed: tx_feed.clone(),
            status,
            height_started: Instant::now(),
            peers: 0,
            sync: SyncState {
                in_flight: false,
                catching_up: false,
                last_progress: Instant::now(),
            },
            sync_tx,
            sync_rx,
            evidence,
            audit: cfg.audit,
            propose_wait,
            held_proposal: None,
            block_bytes: cfg.max_gossip_bytes.saturating_sub(PROPOSAL_MARGIN_BYTES),
            exec_budget: ExecBudget::new(genesis.params.timeout_propose_ms),
            pending: PendingWrites {
                signer: pending_signer,
                unsynced: false,
            },
            assembler: Assembler::default(),
            pool_grew: false,
            fetch_tx,
            fetch_rx,
        };
        let feeds = Feeds {
            headers,
            txs: tx_feed,
            status: status_rx,
        };
        Ok((driver, feeds))
    }

    /// Runs until `shutdown` fires or a fatal error. Storage failures are fatal.
    pub async fn run(
        mut self,
        mut events: Events,
        mut requests: mpsc::Receiver<Request>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), Fatal> {
        let persisted = self
            .chain
            .store()
            .meta(ENGINE_STATE_KEY)
            .map_err(|e| Fatal(e.to_string()))?;
        let start = Input::Start {
            height: self.chain.height() + 1,
            persisted,
        };
        self.input(start).await?;
        self.publish_status();
        let mut flush = tokio::time::interval(TX_FLUSH);
        let mut sync_tick = tokio::time::interval(Duration::from_millis(1000));
        loop {
            let next_timer = self.timers.due.keys().next().map(|(t, _)| *t);
            let sleep = tokio::time::sleep_until(
                next_timer
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
                    .into(),
            );
            let held = self.held_proposal.map(|h| h.until);
            let held_expires = tokio::time::sleep_until(
                held.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
                    .into(),
            );
            tokio::select! {
                _ = shutdown.changed() => break,
                ev = events.recv() => match ev {
                    Some(ev) => self.network_event(ev, &mut events).await?,
                    None => return Err(Fatal("the networking task stopped".into())),
                },
                req = requests.recv() => {
                    if let Some(r) = req {
                        self.request(r)?;
                        if self.outbox_bytes >= TX_FLUSH_BYTES {
                            self.flush_txs().await;
                        }
                        self.refill_waiting().await?;
                    }
                }
                _ = sleep, if next_timer.is_some() => self.fire_timers().await?,
                Some((peer, resp)) = self.sync_rx.recv() => self.synced(peer, resp).await?,
                Some(f) = self.fetch_rx.recv() => self.fetched(f).await?,
                _ = flush.tick() => self.flush_txs().await,
                _ = sync_tick.tick() => self.start_sync(),
                _ = held_expires, if held.is_some() => {}
            }
            self.release_proposal().await?;
        }
        self.flush_txs().await;
        self.pending.make_durable(self.chain.store())?;
        Ok(())
    }

    async fn fire_timers(&mut self) -> Result<(), Fatal> {
        let now = Instant::now();
        while let Some((&(at, seq), _)) = self.timers.due.iter().next() {
            if at > now {
                break;
            }
            if let Some(t) = self.timers.due.remove(&(at, seq)) {
                self.input(Input::Timeout(t)).await?;
            }
        }
        Ok(())
    }

    /// Feeds one input to the engine and carries out the outputs, in order; inputs that
    /// outputs produce (proposal ready, block validated) follow once the list is done.
    async fn input(&mut self, first: Input) -> Result<(), Fatal> {
        let mut inputs = VecDeque::from([first]);
        while let Some(input) = inputs.pop_front() {
            let outputs = self.engine.handle(now_ms(), input);
            for output in outputs {
                if let Some(next) = self.output(output).await? {
                    inputs.push_back(next);
                }
            }
        }
        set(&self.metrics.round, u64::from(self.engine.round()));
        Ok(())
    }

    async fn output(&mut self, output: Output) -> Result<Option<Input>, Fatal> {
        match output {
            Output::Persist(bytes) => {
                self.pending.persist(self.chain.store(), &bytes)?;
            }
            Output::Send { message, .. } | Output::Broadcast(message) => {
                self.pending.make_durable(self.chain.store())?;
                let wire = match self.engine.compact_message(&message) {
                    Some((compact, block)) => {
                        self.assembler.remember(Arc::new(block));
                        // The proposal names its transactions by hash: those submitted to
                        // this node by RPC since the last gossip flush go out first, on the same
                        // connections, so the peers hold them when the proposal arrives
                        // instead of fetching them (a round trip before their prevotes).
                        self.flush_txs().await;
                        compact
                    }
                    None => message,
                };
                let _ = self.net.publish(Topic::Consensus, wire).await;
            }
            Output::ScheduleTimeout { timeout, after_ms } => {
                let at = Instant::now() + Duration::from_millis(after_ms);
                self.timers.seq += 1;
                self.timers.due.insert((at, self.timers.seq), timeout);
            }
            Output::RequestProposal { height, round } => {
                self.held_proposal = None;
                let ready = self.build_proposal(height, round)?;
                if round == 0 && !self.propose_wait.is_zero() && is_empty_proposal(&ready) {
                    // Wait for a transaction rather than propose an empty block now.
                    self.held_proposal = Some(HeldProposal {
                        height,
                        round,
                        until: Instant::now() + self.propose_wait,
                        ready_seen: self.pool.became_ready(),
                    });
                    return Ok(None);
                }
                return Ok(ready);
            }
            Output::ValidateBlock(block) => {
                let height = block.header.height;
                let hash = block.header.hash();
                let pool = &self.pool;
                let started = Instant::now();
                let checked = self.chain.validate_with(&block, &|h| pool.contains(h));
                let secs = started.elapsed().as_secs_f64();
                // This node's own proposals were executed when built.
                if Some(block.header.proposer) != self.proposer {
                    self.metrics.validate_seconds.observe(secs);
                    self.exec_budget.observe(block.txs.len(), secs);
                }
                let valid = match checked {
                    Ok(()) => true,
                    Err(reason) => {
                        tracing::warn!(height, block = %hash.to_hex(), %reason, "invalid proposal");
                        false
                    }
                };
                return Ok(Some(Input::BlockValidated {
                    height,
                    block: hash,
                    valid,
                }));
            }
            Output::Commit { block, certificate } => {
                // The certificate may carry this validator's own precommit: its record
                // goes to disk first, as before any send.
                self.pending.make_durable(self.chain.store())?;
                let height = block.header.height;
                if height <= self.chain.height() {
                    return Ok(None);
                }
                let started = Instant::now();
                let stored = self.chain.commit(*block, certificate)?;
                self.metrics
                    .store_seconds
                    .observe(started.elapsed().as_secs_f64());
                match stored {
                    Ok(c) => self.committed(c, false),
                    Err(refused) => {
                        let reason = &refused.reason;
                        tracing::error!(height, %reason, "the validators decided a block this node finds invalid: not committing it");
                        if let Some(a) = &self.audit {
                            let summary = format!(
                                "the validators decided block {height}, which does not verify: {reason}"
                            );
                            let ev = crate::audit::alarm::block_evidence(&refused);
                            a.raise(reason.kind(), "p2p consensus".into(), height, summary, ev);
                        }
                    }
                }
            }
            Output::SyncPeer { height, .. } => {
                let store = self.chain.store();
                if let (Ok(Some(b)), Ok(Some(c))) = (store.block(height), store.certificate(height))
                {
                    let m = self.engine.decision_message(&b, &c);
                    let _ = self.net.publish(Topic::Consensus, m).await;
                }
            }
            Output::Evidence(ev) => {
                let bytes = ev.to_bytes();
                self.record_evidence(*ev)?;
                let _ = self.net.publish(Topic::Evidence, bytes).await;
            }
            Output::SignerRefused(e) => tracing::warn!(error = %e, "signer refused"),
            Output::Rejected { reason } => {
                self.metrics.rejected_messages.inc();
                tracing::debug!(%reason, "consensus message rejected");
            }
        }
        Ok(None)
    }

    /// The block for the engine's proposal at `height` and `round`, from the mempool.
    fn build_proposal(&mut self, height: u64, round: u32) -> Result<Option<Input>, Fatal> {
        let Some(proposer) = self.proposer else {
            return Ok(None);
        };
        if height != self.chain.height() + 1 {
            return Ok(None);
        }
        let started = Instant::now();
        let max_txs = self.exec_budget.max_txs();
        let (block, dead) =
            self.chain
                .build_block(proposer, &self.pool, max_txs, self.block_bytes)?;
        let secs = started.elapsed().as_secs_f64();
        self.metrics.build_seconds.observe(secs);
        self.exec_budget.observe(block.txs.len(), secs);
        set(
            &self.metrics.proposal_max_txs,
            self.exec_budget.max_txs().min(block_limit(&self.chain)) as u64,
        );
        for (h, error) in dead {
            self.pool.remove(&h);
            self.dropped(&h, never_executes(error));
        }
        tracing::debug!(height, round, txs = block.txs.len(), "built a proposal");
        Ok(Some(Input::ProposalReady {
            height,
            round,
            block: Box::new(block),
        }))
    }

    /// Proposes the held proposal once a block with a transaction can be built or the
    /// wait is over (the engine ignores it if its round moved on meanwhile). A
    /// transaction queued behind a nonce gap does not end the wait, nor cause a rebuild.
    async fn release_proposal(&mut self) -> Result<(), Fatal> {
        let Some(held) = self.held_proposal else {
            return Ok(());
        };
        let expired = Instant::now() >= held.until;
        if !expired && self.pool.became_ready() == held.ready_seen {
            return Ok(());
        }
        let ready = self.build_proposal(held.height, held.round)?;
        if !expired && is_empty_proposal(&ready) {
            self.held_proposal = Some(HeldProposal {
                ready_seen: self.pool.became_ready(),
                ..held
            });
            return Ok(());
        }
        self.held_proposal = None;
        if let Some(ready) = ready {
            self.input(ready).await?;
        }
        Ok(())
    }

    fn record_evidence(&mut self, ev: DuplicateVote) -> Result<(), Fatal> {
        let hash = ev.hash();
        if self.evidence.iter().any(|e| e.hash() == hash) || self.evidence.len() >= MAX_EVIDENCE {
            return Ok(());
        }
        tracing::warn!(
            validator = %ev.validator.to_hex(), height = ev.first.0.height,
            "evidence of a double vote"
        );
        if let Some(a) = &self.audit {
            let summary = format!(
                "validator {} signed two conflicting votes at height {}",
                ev.validator.to_hex(),
                ev.height()
            );
            let evidence = serde_json::json!({ "duplicate_vote": hex::encode(ev.to_bytes()) });
            a.raise("equivocation", "p2p".into(), ev.height(), summary, evidence);
        }
        self.evidence.push(ev);
        self.chain
            .store()
            .put_meta(EVIDENCE_KEY, &encode_evidence(&self.evidence))
            .map_err(|e| Fatal(e.to_string()))
    }

    fn committed(&mut self, c: Committed, synced: bool) {
        let height = c.header.height;
        let latency = self.height_started.elapsed();
        self.height_started = Instant::now();
        self.sync.last_progress = Instant::now();
        let chain = &self.chain;
        self.pool
            .committed(&c.txs, |sender| chain.next_nonce(sender).ok());
        for (index, (hash, _)) in c.txs.iter().enumerate() {
            let loc = TxCommitted {
                hash: *hash,
                height,
                index: index as u32,
                log_index: c.first_log_index + index as u64,
            };
            if let Some(ws) = self.waiters.remove(hash) {
                for w in ws {
                    let _ = w.send(Ok(loc));
                }
            }
            let _ = self.tx_feed.send(loc);
        }
        self.superseded();
        if let (Some(a), Some((header, cert))) = (&self.audit, self.chain.last()) {
            a.verified(header, cert);
        }
        let _ = self.headers.send(c.header.clone());
        self.metrics.commit_latency.observe(latency.as_secs_f64());
        self.metrics.committed_blocks.inc();
        self.metrics.committed_txs.inc_by(c.txs.len() as u64);
        if synced {
            self.metrics.synced_blocks.inc();
        }
        set(&self.metrics.height, height);
        if let Some((keys, _)) = self.chain.key_filter_size() {
            set(&self.metrics.state_key_filter_keys, keys as u64);
        }
        tracing::info!(
            height,
            txs = c.txs.len(),
            hash = %&c.hash.to_hex()[..16],
            synced,
            "committed"
        );
        self.publish_status();
    }

    fn pool_gauges(&self) {
        set(&self.metrics.mempool_txs, self.pool.len() as u64);
        set(&self.metrics.mempool_bytes, self.pool.bytes() as u64);
        set(
            &self.metrics.mempool_queued_txs,
            self.pool.queued_len() as u64,
        );
    }

    fn publish_status(&mut self) {
        set(
            &self.metrics.dropped_tx_batches,
            self.net.dropped_tx_batches(),
        );
        set(
            &self.metrics.reconnected_without_topics,
            self.net.peers_reconnected_without_topics(),
        );
        self.pool_gauges();
        let (latest_hash, latest_time_ms, log_size, state_root) = match self.chain.last() {
            Some((h, _)) => (
                h.hash().to_hex(),
                h.time_ms,
                h.log_size,
                h.state_root.to_hex(),
            ),
            None => (String::new(), 0, 0, Hash::ZERO.to_hex()),
        };
        let status = Status {
            height: self.chain.height(),
            round: self.engine.round(),
            latest_hash,
            latest_time_ms,
            log_size,
            state_root,
            peers: self.peers,
            mempool_txs: self.pool.len(),
            mempool_bytes: self.pool.bytes(),
            catching_up: self.sync.catching_up,
        };
        self.status.send_replace(status);
    }

    /// Answers the transactions the pool dropped because another transaction of their
    /// sender's committed with their nonce: they never will.
    fn superseded(&mut self) {
        for (hash, reason) in self.pool.take_superseded() {
            self.dropped(&hash, reason);
        }
    }

    /// Counts a transaction the pool dropped without committing it under `reason`, and
    /// gives whoever waits for it (`broadcast_tx` in `commit` mode) that answer.
    fn dropped(&mut self, hash: &Hash, reason: Reject) {
        self.metrics.reject(reason.code());
        for w in self.waiters.remove(hash).unwrap_or_default() {
            let _ = w.send(Err(reason.clone()));
        }
    }

    fn request(&mut self, r: Request) -> Result<(), Fatal> {
        match r {
            Request::Submit { txs, reply } => {
                let mut verdicts = Vec::with_capacity(txs.len());
                for sub in txs {
                    let len = sub.encoded.len();
                    let res = self.admit(*sub.tx, sub.hash, len, Some(sub.encoded));
                    if let Err(e) = &res {
                        self.metrics.reject(e.code());
                    }
                    match (&res, sub.waiter) {
                        (Ok(Submitted::Pending { .. }), Some(w)) => {
                            self.waiters.entry(sub.hash).or_default().push(w)
                        }
                        (Ok(Submitted::Committed(loc)), Some(w)) => {
                            let _ = w.send(Ok(*loc));
                        }
                        _ => {}
                    }
                    verdicts.push(res);
                }
                let _ = reply.send(verdicts);
                self.pool_gauges();
            }
        }
        Ok(())
    }

    /// Admission of one transaction whose size and signature its caller checked (the
    /// decoders bound the size; RPC verifies the signature on its worker threads, gossip
    /// batches are verified together). A transaction from RPC comes with its encoding
    /// (`gossip`), published once admitted; gossip relays the others already.
    ///
    /// The checks run cheapest first. The sender's next nonce is a state read too, but of
    /// an account key that active senders keep in the node cache; the notarization check
    /// walks to a fresh, random key, whose lower nodes a large state's cache misses, so it
    /// comes last, after the pool's own rules (room, nonce window). A node under more load
    /// than it can take turns the excess away without that walk.
    fn admit(
        &mut self,
        tx: Transaction,
        hash: Hash,
        len: usize,
        gossip: Option<Vec<u8>>,
    ) -> Result<Submitted, Reject> {
        let fatal = |e: Fatal| Reject::Unavailable(e.0);
        if self.pool.contains(&hash) {
            return Ok(Submitted::Pending { already: true });
        }
        if tx.chain_id != self.chain.genesis().chain_id {
            return Err(Reject::WrongChain {
                expected: self.chain.genesis().chain_id.to_string(),
                found: tx.chain_id.to_string(),
            });
        }
        let next = self.chain.next_nonce(&tx.sender).map_err(fatal)?;
        // Nonces commit in order, so only a transaction whose nonce is used can be a
        // committed one: a resubmission is answered with where it is.
        if tx.nonce < next
            && let Some(loc) = self
                .chain
                .store()
                .tx_location(&hash)
                .map_err(|e| Reject::Unavailable(e.to_string()))?
        {
            return Ok(Submitted::Committed(TxCommitted {
                hash,
                height: loc.height,
                index: loc.index,
                log_index: loc.log_index,
            }));
        }
        self.pool.check(&tx, len, next)?;
        if let pyralog_ledger::Payload::Notarize { digest, .. } = &tx.payload
            && let Some(height) = self.chain.notarized_at(digest).map_err(fatal)?
        {
            return Err(Reject::AlreadyNotarized { height });
        }
        let admitted = self.pool.admit(tx, hash, len, next)?;
        for evicted in self.pool.take_evicted() {
            self.dropped(&evicted, Reject::Evicted);
        }
        self.superseded();
        match admitted {
            Admitted::Added => {
                self.pool_grew = true;
                if let Some(encoded) = gossip {
                    self.outbox_bytes += encoded.len();
                    self.outbox.push(encoded);
                }
                Ok(Submitted::Pending { already: false })
            }
            Admitted::AlreadyPending => Ok(Submitted::Pending { already: true }),
        }
    }

    async fn flush_txs(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.outbox);
        self.outbox_bytes = 0;
        for chunk in batch.chunks(wire::MAX_BATCH_TXS) {
            let _ = self
                .net
                .publish(Topic::Txs, wire::encode_tx_batch(chunk))
                .await;
        }
    }

    async fn network_event(&mut self, ev: Event, events: &mut Events) -> Result<(), Fatal> {
        match ev {
            Event::Gossip {
                from,
                publisher,
                topic,
                data,
                held,
            } => match topic {
                Topic::Consensus => {
                    let rejected_before = self.metrics.rejected_messages.get();
                    self.consensus_message(from, data, events).await?;
                    if self.metrics.rejected_messages.get() > rejected_before
                        && let Some(a) = publisher
                    {
                        self.net
                            .penalize(a, BAD_MESSAGE_PENALTY, "invalid consensus message".into())
                            .await;
                    }
                    self.refill_waiting().await?;
                }
                Topic::Txs => {
                    self.gossiped_txs(publisher, &data, held).await;
                    self.refill_waiting().await?;
                }
                Topic::Evidence => {
                    let ok = DuplicateVote::from_bytes(&data).ok().filter(|ev| {
                        ev.verify(&self.chain.genesis().chain_id, self.chain.validators())
                            .is_ok()
                    });
                    match ok {
                        Some(ev) => self.record_evidence(ev)?,
                        None => {
                            if let Some(a) = publisher {
                                self.net
                                    .penalize(a, BAD_MESSAGE_PENALTY, "invalid evidence".into())
                                    .await;
                            }
                        }
                    }
                }
            },
            Event::Request { from, id, data } => self.serve_sync(from, id, data),
            Event::PeerConnected(_) => {
                self.peers += 1;
                set(&self.metrics.peers, self.peers as u64);
                // A new peer may be ahead (this node just restarted): ask now rather
                // than at the next sync tick.
                self.start_sync();
            }
            Event::PeerDisconnected(_) => {
                self.peers = self.peers.saturating_sub(1);
                set(&self.metrics.peers, self.peers as u64);
                self.publish_status();
            }
            Event::Listening(addr) => tracing::info!(%addr, "p2p listening"),
        }
        Ok(())
    }

    /// A consensus message from the network; a compact proposal is rebuilt first.
    async fn consensus_message(
        &mut self,
        from: PeerId,
        data: Vec<u8>,
        events: &mut Events,
    ) -> Result<(), Fatal> {
        let (compact, round) = match self.engine.carried(&data) {
            Ok(Carried::Message) => return self.input(Input::Message(data)).await,
            Ok(Carried::Block { block, round }) => (*block, round),
            Ok(Carried::Stale) => return Ok(()),
            Err(e) => {
                self.metrics.rejected_messages.inc();
                tracing::debug!(error = %e, "compact proposal refused");
                return Ok(());
            }
        };
        let height = compact.header.height;
        let current = (self.engine.height(), self.engine.round());
        match self
            .assembler
            .received(data, compact, round, current, &self.pool)
        {
            Received::Rebuilt(r) => self.rebuilt(*r).await?,
            Received::Fetch { block, .. } => {
                // Transaction batches wait behind consensus messages here, so the batch
                // the proposer sent just before its proposal may still be queued: take
                // queued batches first (about MAX_BATCH_BYTES_BEFORE_FETCH of them), and
                // fetch only what is still missing after them.
                // (Other proposals these batches complete are rebuilt after this one's
                // verdict, in `network_event`, so that a rejection of theirs is not
                // taken for this message's.)
                let mut taken = 0;
                while taken < MAX_BATCH_BYTES_BEFORE_FETCH {
                    let Some(b) = events.try_recv_txs() else {
                        break;
                    };
                    taken += b.data.len();
                    self.gossiped_txs(b.publisher, &b.data, b.held).await;
                    if let Some(r) = self.assembler.refill_one(&block, &self.pool) {
                        return self.rebuilt(r).await;
                    }
                }
                let Some((indices, expected)) = self.assembler.to_fetch(&block) else {
                    return Ok(());
                };
                tracing::debug!(%from, height, round, missing = indices.len(), "fetching a compact proposal's transactions");
                self.metrics
                    .proposal_txs_requested
                    .inc_by(indices.len() as u64);
                let net = self.net.clone();
                let answers = self.fetch_tx.clone();
                let task = tokio::spawn(async move {
                    let fetched = fetch_proposal_txs(&net, from, block, indices, expected).await;
                    let _ = answers.send(fetched).await;
                });
                self.assembler.fetching(&block, task.abort_handle());
            }
            Received::Waiting => {}
            Received::Dropped => {
                self.metrics.proposal_fetches_failed.inc();
                tracing::debug!(
                    height,
                    round,
                    "compact proposal not fetched for: others nearer the current round wait"
                );
            }
        }
        Ok(())
    }

    /// Rebuilds the compact proposals whose missing transactions reached the pool since.
    async fn refill_waiting(&mut self) -> Result<(), Fatal> {
        if !self.pool_grew || !self.assembler.is_waiting() {
            return Ok(());
        }
        self.pool_grew = false;
        for r in self.assembler.refill(&self.pool) {
            self.rebuilt(r).await?;
        }
        Ok(())
    }

    /// The end of a fetch of a compact proposal's transactions.
    async fn fetched(&mut self, f: Fetched) -> Result<(), Fatal> {
        for peer in f.wrong {
            self.net
                .penalize(
                    peer,
                    BAD_MESSAGE_PENALTY,
                    "served transactions other than a proposal's".into(),
                )
                .await;
        }
        match self.assembler.fetched(&f.block, f.txs) {
            Ok(Some(r)) => self.rebuilt(r).await?,
            Ok(None) => {}
            Err(e) => {
                self.metrics.proposal_fetches_failed.inc();
                tracing::warn!(block = %f.block.to_hex(), error = %e, "a compact proposal could not be rebuilt");
            }
        }
        Ok(())
    }

    /// Hands the engine a rebuilt compact proposal (each message that named its block).
    async fn rebuilt(&mut self, r: Rebuilt) -> Result<(), Fatal> {
        self.metrics.proposal_txs_held.inc_by(r.held as u64);
        self.metrics.proposal_txs_fetched.inc_by(r.fetched as u64);
        let expanded: Vec<_> = r
            .wires
            .iter()
            .map(|w| self.engine.expand_message(w, &r.block))
            .collect();
        self.assembler.remember(Arc::new(r.block));
        for full in expanded {
            match full {
                Ok(full) => self.input(Input::Message(full)).await?,
                Err(e) => {
                    self.metrics.rejected_messages.inc();
                    tracing::debug!(error = %e, "compact proposal not expanded");
                }
            }
        }
        Ok(())
    }

    /// Admits a transaction batch from gossip. The network relays it further (`held`)
    /// only when every transaction in it decodes and is signed: an honest node publishes
    /// nothing else.
    async fn gossiped_txs(&mut self, publisher: Option<PeerId>, data: &[u8], held: Option<Held>) {
        let txs = match wire::decode_tx_batch(data) {
            Ok(t) => t,
            Err(e) => {
                if let Some(held) = held {
                    self.net.judge(held, Judgement::Invalid).await;
                }
                if let Some(a) = publisher {
                    self.net
                        .penalize(a, BAD_MESSAGE_PENALTY, format!("bad tx batch: {e}"))
                        .await;
                }
                return;
            }
        };
        let refs: Vec<&Transaction> = txs.iter().map(|(t, _)| t).collect();
        let bad: Vec<usize> = pyralog_ledger::verify_signatures_here(&refs)
            .err()
            .unwrap_or_default();
        if let Some(held) = held {
            let judgement = if bad.is_empty() {
                Judgement::Valid
            } else {
                Judgement::Invalid
            };
            self.net.judge(held, judgement).await;
        }
        if !bad.is_empty()
            && let Some(a) = publisher
        {
            self.net
                .penalize(a, BAD_MESSAGE_PENALTY, "bad transaction signature".into())
                .await;
        }
        for (i, (tx, len)) in txs.into_iter().enumerate() {
            if bad.contains(&i) {
                self.metrics.reject("bad_signature");
                continue;
            }
            let hash = tx.hash();
            if let Err(e) = self.admit(tx, hash, len, None) {
                self.metrics.reject(e.code());
            }
        }
    }

    fn serve_sync(&self, from: PeerId, id: InboundId, data: Vec<u8>) {
        let net = self.net.clone();
        let store = self.chain.store().clone();
        let height = self.chain.height();
        let request = SyncRequest::from_bytes(&data);
        let recent = match &request {
            Ok(SyncRequest::ProposalTxs { block, .. }) => self.assembler.recent(block),
            _ => None,
        };
        tokio::spawn(async move {
            let resp = match request {
                Err(e) => {
                    net.penalize(from, BAD_MESSAGE_PENALTY, format!("bad sync request: {e}"))
                        .await;
                    SyncResponse::Error(format!("bad request: {e}"))
                }
                Ok(SyncRequest::Status) => SyncResponse::Status { height },
                Ok(SyncRequest::ProposalTxs { indices, .. }) => {
                    crate::assemble::serve(recent.as_deref(), &indices)
                }
                Ok(SyncRequest::Blocks { from: start, max }) => {
                    let read =
                        tokio::task::spawn_blocking(move || read_blocks(&store, start, max)).await;
                    match read {
                        Ok(Ok(blocks)) => SyncResponse::Blocks(blocks),
                        Ok(Err(e)) => SyncResponse::Error(e),
                        Err(e) => SyncResponse::Error(e.to_string()),
                    }
                }
            };
            let _ = net.respond(id, resp.to_bytes()).await;
        });
    }

    /// Every second: ask peers for their height; if one is ahead (by two blocks, or by
    /// one for three seconds without progress here), fetch blocks from it.
    fn start_sync(&mut self) {
        self.publish_status();
        if self.sync.in_flight {
            return;
        }
        self.sync.in_flight = true;
        let net = self.net.clone();
        let tx = self.sync_tx.clone();
        let ours = self.chain.height();
        let stalled = self.sync.last_progress.elapsed() > Duration::from_secs(3);
        tokio::spawn(async move {
            let peers = net.peers().await.unwrap_or_default();
            let mut best: Option<(PeerId, u64)> = None;
            for p in peers {
                let asked = net.request(p, SyncRequest::Status.to_bytes());
                let Ok(Ok(bytes)) = tokio::time::timeout(Duration::from_secs(2), asked).await
                else {
                    continue;
                };
                if let Ok(SyncResponse::Status { height }) = SyncResponse::from_bytes(&bytes)
                    && best.is_none_or(|(_, h)| height > h)
                {
                    best = Some((p, height));
                }
            }
            let resp = match best {
                Some((peer, h)) if h >= ours + 2 || (h > ours && stalled) => {
                    let req = SyncRequest::Blocks {
                        from: ours + 1,
                        max: wire::MAX_SYNC_BLOCKS,
                    };
                    match net.request(peer, req.to_bytes()).await {
                        Ok(bytes) => (
                            peer,
                            SyncResponse::from_bytes(&bytes)
                                .unwrap_or_else(|e| SyncResponse::Error(e.to_string())),
                        ),
                        Err(e) => (peer, SyncResponse::Error(e.to_string())),
                    }
                }
                Some((peer, _)) => (peer, SyncResponse::Blocks(Vec::new())),
                None => (net.local_peer_id(), SyncResponse::Blocks(Vec::new())),
            };
            let _ = tx.send(resp).await;
        });
    }

    async fn synced(&mut self, peer: PeerId, resp: SyncResponse) -> Result<(), Fatal> {
        self.sync.in_flight = false;
        let blocks = match resp {
            SyncResponse::Blocks(b) => b,
            SyncResponse::Error(e) => {
                tracing::debug!(%peer, error = %e, "sync failed");
                return Ok(());
            }
            SyncResponse::Status { .. } | SyncResponse::Txs(_) => return Ok(()),
        };
        self.sync.catching_up = !blocks.is_empty();
        let mut applied = 0;
        for (block, cert) in blocks {
            if block.header.height != self.chain.height() + 1 {
                continue;
            }
            let height = block.header.height;
            match self.chain.commit_synced(block, cert)? {
                Ok(c) => {
                    applied += 1;
                    self.committed(c, true);
                }
                Err(refused) => {
                    let reason = &refused.reason;
                    // A block under a valid certificate that does not verify: either
                    // the quorum certified a bad block (link, execution) or this peer
                    // altered a certified block (contents). Both are alarms; a block
                    // without a valid certificate is only the peer's junk.
                    if let Some(a) = &self.audit
                        && !matches!(reason, crate::chain::Invalid::Certificate(_))
                    {
                        let summary = format!(
                            "peer {peer} served certified block {height}, which does not verify: {reason}"
                        );
                        a.raise(
                            reason.kind(),
                            format!("p2p peer {peer}"),
                            height,
                            summary,
                            crate::audit::alarm::block_evidence(&refused),
                        );
                    }
                    tracing::warn!(%peer, %reason, "peer served an invalid block");
                    self.net
                        .penalize(peer, 50, format!("invalid synced block: {reason}"))
                        .await;
                    break;
                }
            }
        }
        if applied > 0 {
            // The engine moves on to the first height this node has not committed.
            self.timers.due.clear();
            let start = Input::Start {
                height: self.chain.height() + 1,
                persisted: None,
            };
            self.input(start).await?;
            self.sync.catching_up = true;
            self.start_sync();
        } else {
            self.sync.catching_up = false;
        }
        self.publish_status();
        Ok(())
    }
}

/// Fetches a compact proposal's missing transactions over `net`: from `from` (the peer
/// that sent the proposal), then from each other peer, as [`crate::assemble::fetch`]
/// says, within [`FETCH_TIMEOUT`] and [`PEER_FETCH_TIMEOUT`] a request.
async fn fetch_proposal_txs(
    net: &Network,
    from: PeerId,
    block: Hash,
    indices: Vec<u32>,
    expected: Vec<Hash>,
) -> Fetched {
    let others = net.peers().await.unwrap_or_default();
    let peers = std::iter::once(from).chain(others.into_iter().filter(|p| *p != from));
    let deadline = tokio::time::Instant::now() + FETCH_TIMEOUT;
    let ask = |peer: PeerId, request: Vec<u8>| {
        let net = net.clone();
        async move { net.request(peer, request).await.map_err(|e| e.to_string()) }
    };
    let (txs, wrong) = crate::assemble::fetch(
        peers,
        block,
        &indices,
        &expected,
        deadline,
        PEER_FETCH_TIMEOUT,
        ask,
    )
    .await;
    Fetched { block, txs, wrong }
}

fn read_blocks(
    store: &SledStore,
    from: u64,
    max: u32,
) -> Result<Vec<(pyralog_ledger::Block, pyralog_ledger::Certificate)>, String> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let top = store.tip().map_err(|e| e.to_string())?.height;
    let max = u64::from(max.min(wire::MAX_SYNC_BLOCKS));
    let mut h = from.max(1);
    while h <= top && (h - from.max(1)) < max {
        let (Some(b), Some(c)) = (
            store.block(h).map_err(|e| e.to_string())?,
            store.certificate(h).map_err(|e| e.to_string())?,
        ) else {
            break;
        };
        bytes += b.to_bytes().len();
        if bytes > wire::MAX_SYNC_RESPONSE_BYTES && !out.is_empty() {
            break;
        }
        out.push((b, c));
        h += 1;
    }
    Ok(out)
}

/// Encodes the evidence list for the store.
pub fn encode_evidence(items: &[DuplicateVote]) -> Vec<u8> {
    let mut out = vec![1];
    pyralog_ledger::codec::put_count(&mut out, items.len());
    for e in items {
        pyralog_ledger::codec::put_bytes(&mut out, &e.to_bytes());
    }
    out
}

/// Decodes the stored evidence list.
pub fn decode_evidence(bytes: &[u8]) -> Result<Vec<DuplicateVote>, pyralog_ledger::CodecError> {
    let mut d = pyralog_ledger::codec::Decoder::new(bytes);
    d.version("evidence list", 1)?;
    let n = d.count("evidence", MAX_EVIDENCE)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(DuplicateVote::from_bytes(d.bytes("evidence", 1 << 16)?)?);
    }
    Ok(out)
}

/// The answer for a pending transaction a proposal build found can never execute.
fn never_executes(error: TxError) -> Reject {
    match error {
        TxError::NonceReplayed { expected, found } => Reject::NonceReplayed { expected, found },
        TxError::AlreadyNotarized(record) => Reject::AlreadyNotarized {
            height: record.height,
        },
        TxError::WrongChain { expected, found } => Reject::WrongChain {
            expected: expected.to_string(),
            found: found.to_string(),
        },
        // Admission refuses these; a transaction that breaks a rule anyway is invalid.
        other => Reject::Malformed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_signed(height: u64) -> pyralog_consensus::LastSigned {
        pyralog_consensus::LastSigned {
            height,
            round: 0,
            step: pyralog_consensus::Step::Prevote,
            block: None,
            vote: None,
        }
    }

    /// The signer's saves and the engine's state wait in the store (or in memory) until
    /// a send or commit needs them on disk, and the signer reads its own pending save.
    #[test]
    fn consensus_writes_reach_the_store_together_and_are_made_durable_before_a_send() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let shared = Arc::new(std::sync::Mutex::new(None));
        let mut signer = StoreSigner {
            store: store.clone(),
            pending: shared.clone(),
        };
        let mut pending = PendingWrites {
            signer: shared,
            unsynced: false,
        };
        assert_eq!(signer.load().unwrap(), None);
        signer.save(&last_signed(5)).unwrap();
        // Held, not yet written; the signer sees it.
        assert_eq!(store.meta(SIGNER_KEY).unwrap(), None);
        assert_eq!(signer.load().unwrap(), Some(last_signed(5)));

        // The engine's state takes the signer's position with it.
        pending.persist(&store, b"engine state 1").unwrap();
        assert!(pending.unsynced);
        assert_eq!(
            store.meta(SIGNER_KEY).unwrap(),
            Some(last_signed(5).to_bytes())
        );
        assert_eq!(
            store.meta(ENGINE_STATE_KEY).unwrap(),
            Some(b"engine state 1".to_vec())
        );
        pending.make_durable(&store).unwrap();
        assert!(!pending.unsynced);

        // A save with no engine state after it is written before the next send.
        signer.save(&last_signed(6)).unwrap();
        pending.make_durable(&store).unwrap();
        assert!(!pending.unsynced);
        drop(pending);
        drop(signer);
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.meta(SIGNER_KEY).unwrap(),
            Some(last_signed(6).to_bytes())
        );
        assert_eq!(
            store.meta(ENGINE_STATE_KEY).unwrap(),
            Some(b"engine state 1".to_vec())
        );
    }

    #[test]
    fn a_transaction_that_can_never_execute_is_answered_with_its_reason() {
        let code = |e: TxError| never_executes(e).code();
        assert_eq!(
            code(TxError::NonceReplayed {
                expected: 3,
                found: 2
            }),
            "nonce_replayed"
        );
        assert_eq!(
            code(TxError::WrongChain {
                expected: pyralog_ledger::ChainId::new("a").unwrap(),
                found: pyralog_ledger::ChainId::new("b").unwrap(),
            }),
            "wrong_chain"
        );
        assert_eq!(code(TxError::NonceExhausted), "malformed");
    }

    #[test]
    fn the_proposal_cap_follows_the_measured_cost_of_a_transaction() {
        // Propose timeout 1 s: a build may take 0.5 s.
        let mut b = ExecBudget::new(1000);
        assert_eq!(b.max_txs(), usize::MAX, "no cap before a measurement");
        // A small block says nothing of the cost per transaction.
        b.observe(MIN_BLOCK_TXS - 1, 10.0);
        assert_eq!(b.max_txs(), usize::MAX);
        // 10,000 transactions in 2 s: 200 µs each, so 2,500 fit.
        b.observe(10_000, 2.0);
        assert_eq!(b.max_txs(), 2_500);
        // Cheaper blocks raise the cap step by step (a moving average).
        b.observe(2_500, 0.125);
        let after_one = b.max_txs();
        assert!(after_one > 2_500 && after_one < 10_000, "{after_one}");
        for _ in 0..40 {
            b.observe(2_500, 0.125);
        }
        assert!((9_900..=10_000).contains(&b.max_txs()), "{}", b.max_txs());
        // However slow execution gets, a proposal may hold the minimum.
        b.observe(MIN_BLOCK_TXS, 1_000.0);
        assert_eq!(b.max_txs(), MIN_BLOCK_TXS);
    }
}
