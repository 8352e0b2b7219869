//! The deterministic simulator: N real engines, a seeded scheduler and a virtual clock.
//!
//! A run is a pure function of its [`Scenario`] (and so of its seed): per-link delay and
//! jitter, loss, duplication and the reordering they cause; partitions that start and heal;
//! crashes (optionally in the middle of carrying out an engine's outputs, e.g. after
//! persisting and before sending) and restarts from persisted state; Byzantine validators
//! ([`Behavior`]). Each node has a host ([`app::App`]) that builds, validates and commits
//! real blocks with the ledger's functions.
//!
//! Checked on every run ([`Violation`]):
//! - **agreement**: no two honest nodes commit different headers at one height;
//! - **validity**: the first commit of every height passes an independent validation
//!   (link, BFT time from the carried certificate, signatures, execution roots);
//! - **certificates**: every honest commit's certificate passes the light client's
//!   [`verify_certificate`];
//! - **BFT time** strictly increases from height to height;
//! - **evidence** reported by honest nodes verifies and never accuses an honest validator;
//! - **progress**: once faults heal (with at most f Byzantine), every honest node commits
//!   `blocks_after_heal` more blocks within `progress_budget_ms` of virtual time.
//!
//! The run's trace hash covers every event in order; the same scenario gives the same
//! hash, so a failing seed replays exactly.
//!
//! Messages travel as nodes send them: a proposal in its compact form
//! ([`Engine::compact_message`], transactions by hash), which the receiving host checks
//! ([`Engine::carried`]), rebuilds from the transactions gossip gave every node (here,
//! every transaction of every proposal sent), and expands for its engine.

pub mod adversary;
pub mod app;
pub mod rng;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use pyralog_crypto::{Hash, Keypair};
use pyralog_ledger::verify::verify_certificate;
use pyralog_ledger::{
    Block, Certificate, ChainId, ChainParams, DuplicateVote, EngineId, Genesis, GenesisValidator,
    Transaction, ValidatorSet,
};

pub use adversary::Behavior;
use adversary::{Adversary, Coalition, Recipients};
use app::App;
use rng::Rng;

use crate::engine::{Carried, Engine, Input, Output, Timeout};
use crate::signer::{LastSigned, MemSignerStore, Signer, SignerStore};
use crate::tendermint::{self, Tendermint};

/// Genesis time of simulated chains; virtual time 0 is one millisecond later.
pub const GENESIS_TIME_MS: u64 = 1_700_000_000_000;
/// Most blocks sent in answer to one sync request.
const SYNC_BATCH: u64 = 16;

/// The consensus engine a simulation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// [`crate::tendermint`].
    Tendermint,
}

impl EngineKind {
    /// Parses an engine name as given on the command line.
    pub fn parse(name: &str) -> Option<EngineKind> {
        match name {
            "tendermint" => Some(EngineKind::Tendermint),
            _ => None,
        }
    }

    fn id(self) -> EngineId {
        match self {
            EngineKind::Tendermint => EngineId::Tendermint,
        }
    }
}

/// Link behaviour while faults are active (delay and jitter stay after they heal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// Each link's base delay is drawn from this range (ms).
    pub delay_ms: (u64, u64),
    /// Extra delay per message, uniform in `0..=jitter_ms` (reorders messages).
    pub jitter_ms: u64,
    /// Probability that a message is lost, in parts per million.
    pub loss_ppm: u32,
    /// Probability that a message is delivered twice, in parts per million.
    pub duplicate_ppm: u32,
}

/// A network partition: messages between different groups are dropped while it lasts.
/// Nodes in no group are cut off from everyone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// The groups that can talk among themselves.
    pub groups: Vec<Vec<u32>>,
    /// Start, in virtual ms.
    pub from_ms: u64,
    /// End, in virtual ms.
    pub until_ms: u64,
}

impl Partition {
    fn separates(&self, a: u32, b: u32, now: u64) -> bool {
        if now < self.from_ms || now >= self.until_ms {
            return false;
        }
        !self.groups.iter().any(|g| g.contains(&a) && g.contains(&b))
    }
}

/// A crash and restart of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crash {
    /// The node.
    pub node: u32,
    /// When it crashes (virtual ms).
    pub at_ms: u64,
    /// When it restarts from its persisted state.
    pub restart_ms: u64,
    /// Crash while carrying out the outputs of the next input after `at_ms`: only a
    /// random prefix of them happens (e.g. persisted, not yet sent).
    pub mid_output: bool,
}

/// Everything that defines a run. Build one with [`Scenario::new`] and the builder
/// methods, or draw one from a seed with [`Scenario::random`].
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The seed of every random choice of the run.
    pub seed: u64,
    /// Voting power of each validator (the number of validators is its length).
    pub powers: Vec<u64>,
    /// Byzantine validators and what they do.
    pub byzantine: BTreeMap<u32, Behavior>,
    /// Link behaviour.
    pub network: Network,
    /// Partitions.
    pub partitions: Vec<Partition>,
    /// Crashes.
    pub crashes: Vec<Crash>,
    /// Clock offset of each node (ms added to virtual time; empty: none).
    pub clock_skew_ms: Vec<u64>,
    /// When loss, duplication, partitions and crashes are over; at least the end of the
    /// last partition and the last restart.
    pub heal_ms: u64,
    /// Blocks every honest node must commit after `heal_ms`.
    pub blocks_after_heal: u64,
    /// Virtual time after `heal_ms` allowed for them.
    pub progress_budget_ms: u64,
    /// Chain parameters (timeouts).
    pub params: ChainParams,
    /// Notarizations per proposed block.
    pub txs_per_block: usize,
    /// The engine.
    pub engine: EngineKind,
    /// Keep a human-readable log of every event in [`Report::log`] (for replaying a
    /// failing seed).
    pub log: bool,
}

/// Timeouts for simulated chains: short, so that runs need little virtual time.
pub fn sim_params() -> ChainParams {
    ChainParams {
        timeout_propose_ms: 300,
        timeout_prevote_ms: 150,
        timeout_precommit_ms: 150,
        timeout_delta_ms: 100,
        timeout_commit_ms: 50,
        ..ChainParams::default()
    }
}

impl Scenario {
    /// `n` validators of equal power on a fault-free network.
    pub fn new(n: usize) -> Scenario {
        Scenario {
            seed: 0,
            powers: vec![10; n],
            byzantine: BTreeMap::new(),
            network: Network {
                delay_ms: (5, 30),
                jitter_ms: 10,
                loss_ppm: 0,
                duplicate_ppm: 0,
            },
            partitions: Vec::new(),
            crashes: Vec::new(),
            clock_skew_ms: Vec::new(),
            heal_ms: 0,
            blocks_after_heal: 5,
            progress_budget_ms: 120_000,
            params: sim_params(),
            txs_per_block: 2,
            engine: EngineKind::Tendermint,
            log: false,
        }
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the validators' voting powers.
    pub fn powers(mut self, powers: Vec<u64>) -> Self {
        self.powers = powers;
        self
    }

    /// Makes `node` Byzantine.
    pub fn byzantine(mut self, node: u32, behavior: Behavior) -> Self {
        self.byzantine.insert(node, behavior);
        self
    }

    /// Partitions the validators into `groups` from `from_ms` to `until_ms`.
    pub fn partition(mut self, groups: &[&[u32]], from_ms: u64, until_ms: u64) -> Self {
        self.partitions.push(Partition {
            groups: groups.iter().map(|g| g.to_vec()).collect(),
            from_ms,
            until_ms,
        });
        self.heal_ms = self.heal_ms.max(until_ms);
        self
    }

    /// Crashes `node` at `at_ms` and restarts it at `restart_ms`.
    pub fn crash(mut self, node: u32, at_ms: u64, restart_ms: u64) -> Self {
        self.crashes.push(Crash {
            node,
            at_ms,
            restart_ms,
            mid_output: false,
        });
        self.heal_ms = self.heal_ms.max(restart_ms);
        self
    }

    /// Crashes `node` in the middle of carrying out its outputs, at the first input after
    /// `at_ms`, and restarts it at `restart_ms`.
    pub fn crash_mid_output(mut self, node: u32, at_ms: u64, restart_ms: u64) -> Self {
        self.crashes.push(Crash {
            node,
            at_ms,
            restart_ms,
            mid_output: true,
        });
        self.heal_ms = self.heal_ms.max(restart_ms);
        self
    }

    /// Loses messages with this probability (ppm) until faults heal.
    pub fn loss(mut self, ppm: u32) -> Self {
        self.network.loss_ppm = ppm;
        self
    }

    /// Duplicates messages with this probability (ppm) until faults heal.
    pub fn duplicate(mut self, ppm: u32) -> Self {
        self.network.duplicate_ppm = ppm;
        self
    }

    /// Sets link delays: base in `min..=max`, plus jitter.
    pub fn delay(mut self, min_ms: u64, max_ms: u64, jitter_ms: u64) -> Self {
        self.network.delay_ms = (min_ms, max_ms);
        self.network.jitter_ms = jitter_ms;
        self
    }

    /// Keeps faults (loss, duplication) on until at least `ms`.
    pub fn heal_at(mut self, ms: u64) -> Self {
        self.heal_ms = self.heal_ms.max(ms);
        self
    }

    /// Keeps a readable event log in the report.
    pub fn with_log(mut self) -> Self {
        self.log = true;
        self
    }

    /// Blocks every honest node must commit after the faults heal.
    pub fn blocks_after_heal(mut self, k: u64) -> Self {
        self.blocks_after_heal = k;
        self
    }

    /// A scenario drawn from `seed`: `n` validators, `byzantine` of them Byzantine with
    /// random behaviours, random link delays, loss, duplication, clock skew, up to two
    /// partitions and up to two crashes of honest nodes, all healing by a random time.
    pub fn random(seed: u64, n: usize, byzantine: usize) -> Scenario {
        let mut rng = Rng::new(seed ^ 0x5CE7_A210);
        let mut s = Scenario::new(n).seed(seed);
        let heal = rng.range(2_000, 12_000);
        s.heal_ms = heal;
        let min = rng.range(1, 20);
        s.network = Network {
            delay_ms: (min, min + rng.range(0, 60)),
            jitter_ms: rng.range(0, 50),
            loss_ppm: rng.range(0, 200_000) as u32,
            duplicate_ppm: rng.range(0, 100_000) as u32,
        };
        s.clock_skew_ms = (0..n).map(|_| rng.range(0, 80)).collect();
        let mut ids: Vec<u32> = (0..n as u32).collect();
        // Fisher-Yates shuffle: the first `byzantine` are Byzantine.
        for i in (1..ids.len()).rev() {
            let j = rng.index(i + 1);
            ids.swap(i, j);
        }
        for &b in ids.iter().take(byzantine) {
            let behavior = Behavior::ALL[rng.index(Behavior::ALL.len())];
            s.byzantine.insert(b, behavior);
        }
        for _ in 0..rng.range(0, 2) {
            let from = rng.range(0, heal.saturating_sub(500));
            let until = rng.range(from + 1, heal);
            let mut a = Vec::new();
            let mut b = Vec::new();
            for i in 0..n as u32 {
                if rng.chance_ppm(500_000) {
                    a.push(i)
                } else {
                    b.push(i)
                }
            }
            s.partitions.push(Partition {
                groups: vec![a, b],
                from_ms: from,
                until_ms: until,
            });
        }
        let honest: Vec<u32> = ids.iter().skip(byzantine).copied().collect();
        for k in 0..rng.range(0, 2) as usize {
            let Some(&node) = honest.get(k) else { break };
            let at = rng.range(0, heal.saturating_sub(200));
            s.crashes.push(Crash {
                node,
                at_ms: at,
                restart_ms: rng.range(at + 1, heal),
                mid_output: rng.chance_ppm(500_000),
            });
        }
        s.blocks_after_heal = 3;
        s
    }

    /// Runs the scenario. A scenario that cannot run (e.g. a zero voting power) gives a
    /// report with a [`Violation::Scenario`].
    pub fn run(&self) -> Report {
        match Sim::new(self) {
            Ok(sim) => sim.run(),
            Err(reason) => Report {
                seed: self.seed,
                violations: vec![Violation::Scenario(reason)],
                trace_hash: Hash::ZERO,
                heights: vec![],
                positions: vec![],
                evidence: vec![],
                end_ms: 0,
                events: 0,
                decided: 0,
                rejected: 0,
                rebuilt_proposals: 0,
                signer_refusals: 0,
                log: vec![],
            },
        }
    }
}

/// A property the run broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two honest nodes committed different headers at one height.
    Agreement {
        /// The height.
        height: u64,
        /// The first node and header hash.
        first: (u32, Hash),
        /// The conflicting node and header hash.
        second: (u32, Hash),
    },
    /// A committed block does not pass validation.
    Validity {
        /// The committing node.
        node: u32,
        /// The height.
        height: u64,
        /// What failed.
        reason: String,
    },
    /// A commit's certificate does not pass the light client's check.
    Certificate {
        /// The committing node.
        node: u32,
        /// The height.
        height: u64,
        /// What failed.
        reason: String,
    },
    /// Block time did not increase.
    Time {
        /// The height.
        height: u64,
        /// Previous block time.
        previous: u64,
        /// This block's time.
        time: u64,
    },
    /// Evidence that does not verify or that accuses an honest validator.
    Evidence {
        /// The reporting node.
        node: u32,
        /// What is wrong.
        reason: String,
    },
    /// The scenario itself is unusable.
    Scenario(String),
    /// An honest node did not make progress after the faults healed.
    Progress {
        /// The node.
        node: u32,
        /// Its committed height at the end.
        height: u64,
        /// The height it had to reach.
        target: u64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Agreement {
                height,
                first,
                second,
            } => write!(
                f,
                "agreement: at height {height} node {} committed {} but node {} committed {}",
                first.0, first.1, second.0, second.1
            ),
            Violation::Validity {
                node,
                height,
                reason,
            } => write!(
                f,
                "validity: node {node} committed an invalid block at height {height}: {reason}"
            ),
            Violation::Certificate {
                node,
                height,
                reason,
            } => write!(
                f,
                "certificate: node {node}'s certificate of height {height} fails: {reason}"
            ),
            Violation::Time {
                height,
                previous,
                time,
            } => write!(
                f,
                "BFT time: height {height} has time {time} ms, not after {previous} ms"
            ),
            Violation::Scenario(reason) => write!(f, "scenario: {reason}"),
            Violation::Evidence { node, reason } => {
                write!(f, "evidence from node {node}: {reason}")
            }
            Violation::Progress {
                node,
                height,
                target,
            } => write!(
                f,
                "progress: node {node} stopped at height {height} after the faults healed \
                 (needed {target})"
            ),
        }
    }
}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The scenario's seed.
    pub seed: u64,
    /// What went wrong (empty: the run is correct).
    pub violations: Vec<Violation>,
    /// Hash of the whole event trace.
    pub trace_hash: Hash,
    /// Committed height of each node at the end.
    pub heights: Vec<u64>,
    /// Height and round each node's engine was at when the run ended (`None`: crashed).
    pub positions: Vec<Option<(u64, u32)>>,
    /// Distinct evidence reported by honest nodes (all verified).
    pub evidence: Vec<DuplicateVote>,
    /// Virtual time at the end (ms).
    pub end_ms: u64,
    /// Events processed.
    pub events: u64,
    /// Heights decided.
    pub decided: u64,
    /// Messages the engines rejected (compact proposals the hosts refused included).
    pub rejected: u64,
    /// Compact proposals the hosts rebuilt and handed to their engines.
    pub rebuilt_proposals: u64,
    /// Signatures the signer refused (after restarts).
    pub signer_refusals: u64,
    /// The event log, if the scenario asked for one.
    pub log: Vec<String>,
}

impl Report {
    /// Whether no property was broken.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: {} heights in {} virtual ms, {} events, {} evidence, {} rejected, trace {}",
            self.seed,
            self.decided,
            self.end_ms,
            self.events,
            self.evidence.len(),
            self.rejected,
            &self.trace_hash.to_hex()[..16]
        )?;
        for v in &self.violations {
            write!(f, "\n  VIOLATION {v}")?;
        }
        Ok(())
    }
}

/// A signer store shared between a node's successive engines (it survives crashes).
#[derive(Clone, Default)]
struct SharedSignerStore(Rc<RefCell<MemSignerStore>>);

impl SignerStore for SharedSignerStore {
    fn load(&self) -> Result<Option<LastSigned>, String> {
        self.0.borrow().load()
    }

    fn save(&mut self, state: &LastSigned) -> Result<(), String> {
        self.0.borrow_mut().save(state)
    }
}

enum Event {
    Deliver {
        to: u32,
        bytes: Vec<u8>,
    },
    Timer {
        node: u32,
        life: u64,
        timeout: Timeout,
    },
    Host {
        node: u32,
        life: u64,
        input: Box<Input>,
    },
    Crash {
        node: u32,
        mid_output: bool,
    },
    Restart {
        node: u32,
    },
    Heal,
}

struct Node {
    key: Keypair,
    engine: Option<Box<dyn Engine>>,
    signer_store: SharedSignerStore,
    persisted: Option<Vec<u8>>,
    app: App,
    adversary: Option<Adversary>,
    /// Incremented at each restart; events of an earlier life are dropped.
    life: u64,
    crash_pending: bool,
    skew: u64,
}

struct Sim<'a> {
    sc: &'a Scenario,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Event>,
    nodes: Vec<Node>,
    links: Vec<Vec<u64>>,
    chain_id: ChainId,
    validators: ValidatorSet,
    users: Vec<Keypair>,
    /// Every transaction of every proposal sent: what gossip brought to every mempool.
    txs: BTreeMap<Hash, Transaction>,
    coalition: Coalition,
    all: Vec<u32>,
    right: Vec<u32>,
    trace: blake3::Hasher,
    reference: App,
    decided: BTreeMap<u64, (u32, Hash)>,
    evidence: BTreeMap<Hash, DuplicateVote>,
    violations: Vec<Violation>,
    target: Option<u64>,
    events: u64,
    rejected: u64,
    rebuilt_proposals: u64,
    signer_refusals: u64,
    log: Vec<String>,
}

impl<'a> Sim<'a> {
    fn new(sc: &'a Scenario) -> Result<Sim<'a>, String> {
        let mut rng = Rng::new(sc.seed);
        let n = sc.powers.len();
        let named = sc
            .crashes
            .iter()
            .map(|c| c.node)
            .chain(sc.byzantine.keys().copied())
            .chain(
                sc.partitions
                    .iter()
                    .flat_map(|p| p.groups.iter().flatten().copied()),
            );
        for node in named {
            if node as usize >= n {
                return Err(format!("node {node} named, but there are {n} validators"));
            }
        }
        let mut keys: Vec<Keypair> = (0..n)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
                seed[8] = 0xC0;
                Keypair::from_seed(&seed)
            })
            .collect();
        keys.sort_by_key(|k| k.public());
        let chain_id = ChainId::new("sim-chain").map_err(|e| e.to_string())?;
        let genesis = Genesis {
            chain_id: chain_id.clone(),
            genesis_time_ms: GENESIS_TIME_MS,
            engine: sc.engine.id(),
            validators: keys
                .iter()
                .zip(&sc.powers)
                .enumerate()
                .map(|(i, (k, p))| GenesisValidator {
                    public_key: k.public(),
                    power: *p,
                    name: Some(format!("v{i}")),
                    node_key: None,
                })
                .collect(),
            params: sc.params.clone(),
        };
        let validators = genesis.validator_set().map_err(|e| e.to_string())?;
        let users: Vec<Keypair> = (0..8u8)
            .map(|i| Keypair::from_seed(&[0xA0 + i; 32]))
            .collect();
        let links = (0..n)
            .map(|_| {
                (0..n)
                    .map(|_| rng.range(sc.network.delay_ms.0, sc.network.delay_ms.1))
                    .collect()
            })
            .collect();
        let honest: Vec<u32> = (0..n as u32)
            .filter(|i| !sc.byzantine.contains_key(i))
            .collect();
        let right: Vec<u32> = honest.iter().skip(1).step_by(2).copied().collect();
        let app = App::new(genesis.clone(), validators.clone());
        let nodes = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                let adversary = sc
                    .byzantine
                    .get(&(i as u32))
                    .map(|b| Adversary::new(*b, key.clone(), chain_id.clone(), rng.fork()));
                Node {
                    key,
                    engine: None,
                    signer_store: SharedSignerStore::default(),
                    persisted: None,
                    app: app.clone(),
                    adversary,
                    life: 0,
                    crash_pending: false,
                    skew: sc.clock_skew_ms.get(i).copied().unwrap_or(0),
                }
            })
            .collect();
        Ok(Sim {
            sc,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            links,
            chain_id,
            validators,
            reference: app,
            users,
            txs: BTreeMap::new(),
            coalition: Coalition::default(),
            all: (0..n as u32).collect(),
            right,
            trace: blake3::Hasher::new(),
            decided: BTreeMap::new(),
            evidence: BTreeMap::new(),
            violations: Vec::new(),
            target: None,
            events: 0,
            rejected: 0,
            rebuilt_proposals: 0,
            signer_refusals: 0,
            log: Vec::new(),
        })
    }

    fn push(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
    }

    fn honest(&self, node: u32) -> bool {
        !self.sc.byzantine.contains_key(&node)
    }

    fn run(mut self) -> Report {
        for i in 0..self.nodes.len() as u32 {
            self.start_node(i);
        }
        for c in &self.sc.crashes {
            self.push(
                c.at_ms,
                Event::Crash {
                    node: c.node,
                    mid_output: c.mid_output,
                },
            );
            self.push(
                c.restart_ms.max(c.at_ms + 1),
                Event::Restart { node: c.node },
            );
        }
        self.push(self.sc.heal_ms, Event::Heal);
        let deadline = self.sc.heal_ms + self.sc.progress_budget_ms;
        while let Some(((at, _), event)) = self.queue.pop_first() {
            if at > deadline || !self.violations.is_empty() || self.progress_done() {
                break;
            }
            self.now = at;
            self.events += 1;
            self.step(event);
        }
        if let Some(target) = self.target
            && self.violations.is_empty()
        {
            for i in 0..self.nodes.len() as u32 {
                let height = self.nodes[i as usize].app.height();
                if self.honest(i) && height < target {
                    self.violations.push(Violation::Progress {
                        node: i,
                        height,
                        target,
                    });
                }
            }
        }
        Report {
            seed: self.sc.seed,
            violations: self.violations,
            trace_hash: Hash(*self.trace.finalize().as_bytes()),
            heights: self.nodes.iter().map(|n| n.app.height()).collect(),
            positions: self
                .nodes
                .iter()
                .map(|n| n.engine.as_ref().map(|e| (e.height(), e.round())))
                .collect(),
            evidence: self.evidence.into_values().collect(),
            end_ms: self.now,
            events: self.events,
            decided: self.decided.len() as u64,
            rejected: self.rejected,
            rebuilt_proposals: self.rebuilt_proposals,
            signer_refusals: self.signer_refusals,
            log: self.log,
        }
    }

    fn progress_done(&self) -> bool {
        let Some(target) = self.target else {
            return false;
        };
        self.nodes
            .iter()
            .enumerate()
            .all(|(i, n)| !self.honest(i as u32) || n.app.height() >= target)
    }

    fn note(&mut self, node: u32, what: impl FnOnce() -> String) {
        if self.sc.log {
            let line = format!("{:>7} n{node} {}", self.now, what());
            self.log.push(line);
        }
    }

    fn trace(&mut self, tag: u8, node: u32, data: &[u8]) {
        self.trace.update(&self.now.to_be_bytes());
        self.trace.update(&[tag]);
        self.trace.update(&node.to_be_bytes());
        self.trace.update(&(data.len() as u64).to_be_bytes());
        self.trace.update(data);
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Deliver { to, bytes } => {
                let Some(bytes) = self.unwire(to, bytes) else {
                    return;
                };
                let node = &mut self.nodes[to as usize];
                if let Some(a) = &mut node.adversary {
                    a.on_receive(&bytes);
                }
                self.trace(1, to, &bytes);
                self.note(to, || format!("recv {}", describe(&bytes)));
                self.handle(to, Input::Message(bytes));
            }
            Event::Timer {
                node,
                life,
                timeout,
            } => {
                let n = &self.nodes[node as usize];
                if n.life != life || n.engine.is_none() {
                    return;
                }
                let mut data = timeout.height.to_be_bytes().to_vec();
                data.extend_from_slice(&timeout.round.to_be_bytes());
                data.push(timeout.kind);
                self.trace(2, node, &data);
                self.note(node, || format!("timer {timeout:?}"));
                self.handle(node, Input::Timeout(timeout));
            }
            Event::Host { node, life, input } => {
                let input = *input;
                let n = &self.nodes[node as usize];
                if n.life != life || n.engine.is_none() {
                    return;
                }
                self.trace(3, node, &[]);
                self.note(node, || match &input {
                    Input::BlockValidated { block, valid, .. } => {
                        format!("validated {} {valid}", &block.to_hex()[..8])
                    }
                    Input::ProposalReady { height, round, .. } => {
                        format!("proposal ready {height}/{round}")
                    }
                    _ => String::new(),
                });
                self.handle(node, input);
            }
            Event::Crash { node, mid_output } => {
                self.trace(4, node, &[]);
                self.note(node, || format!("crash (mid output: {mid_output})"));
                if mid_output {
                    self.nodes[node as usize].crash_pending = true;
                } else {
                    self.crash(node);
                }
            }
            Event::Restart { node } => {
                self.trace(5, node, &[]);
                self.note(node, || "restart".into());
                self.crash(node);
                self.start_node(node);
            }
            Event::Heal => {
                let top = (0..self.nodes.len() as u32)
                    .filter(|i| self.honest(*i))
                    .map(|i| self.nodes[i as usize].app.height())
                    .max()
                    .unwrap_or(0);
                self.target = Some(top + self.sc.blocks_after_heal);
            }
        }
    }

    fn crash(&mut self, node: u32) {
        let n = &mut self.nodes[node as usize];
        n.engine = None;
        n.crash_pending = false;
    }

    fn start_node(&mut self, node: u32) {
        let n = &mut self.nodes[node as usize];
        n.life += 1;
        let committed = n.app.height();
        let signer = match Signer::open(
            n.key.clone(),
            self.chain_id.clone(),
            n.signer_store.clone(),
            committed,
        ) {
            Ok(s) => s,
            Err(e) => {
                self.violations.push(Violation::Validity {
                    node,
                    height: committed,
                    reason: format!("signer failed to open: {e}"),
                });
                return;
            }
        };
        let engine: Box<dyn Engine> = match self.sc.engine {
            EngineKind::Tendermint => Box::new(Tendermint::new(
                tendermint::Config {
                    chain_id: self.chain_id.clone(),
                    validators: self.validators.clone(),
                    params: self.sc.params.clone(),
                },
                Some(signer),
            )),
        };
        n.engine = Some(engine);
        let persisted = n.persisted.clone();
        self.handle(
            node,
            Input::Start {
                height: committed + 1,
                persisted,
            },
        );
    }

    fn handle(&mut self, node: u32, input: Input) {
        let n = &mut self.nodes[node as usize];
        let now_ms = GENESIS_TIME_MS + 1 + self.now + n.skew;
        let Some(engine) = n.engine.as_mut() else {
            return;
        };
        let outputs = engine.handle(now_ms, input);
        let cut = if n.crash_pending {
            self.rng.range(0, outputs.len() as u64) as usize
        } else {
            outputs.len()
        };
        for output in outputs.into_iter().take(cut) {
            self.execute(node, output);
        }
        if self.nodes[node as usize].crash_pending {
            self.crash(node);
        }
    }

    fn execute(&mut self, node: u32, output: Output) {
        let life = self.nodes[node as usize].life;
        self.note(node, || match &output {
            Output::Broadcast(b) => format!("  broadcast {}", describe(b)),
            Output::Send { to, message } => format!("  send n{to} {}", describe(message)),
            Output::Commit { block, .. } => format!(
                "  COMMIT {} {}",
                block.header.height,
                &block.header.hash().to_hex()[..8]
            ),
            Output::ValidateBlock(b) => format!("  validate {}", &b.header.hash().to_hex()[..8]),
            Output::Persist(_) => "  persist".into(),
            other => format!("  {other:?}"),
        });
        match output {
            Output::Persist(bytes) => self.nodes[node as usize].persisted = Some(bytes),
            Output::Broadcast(bytes) => self.send(node, None, bytes),
            Output::Send { to, message } => self.send(node, Some(to), message),
            Output::ScheduleTimeout { timeout, after_ms } => {
                self.push(
                    self.now + after_ms,
                    Event::Timer {
                        node,
                        life,
                        timeout,
                    },
                );
            }
            Output::RequestProposal { height, round } => {
                let n = &self.nodes[node as usize];
                let salt = height << 32 | u64::from(round);
                if let Ok(block) =
                    n.app
                        .build_block(n.key.public(), &self.users, self.sc.txs_per_block, salt)
                {
                    let input = Box::new(Input::ProposalReady {
                        height,
                        round,
                        block: Box::new(block),
                    });
                    self.push(self.now + 1, Event::Host { node, life, input });
                }
            }
            Output::ValidateBlock(block) => {
                let valid = self.nodes[node as usize].app.validate(&block).is_ok();
                let input = Box::new(Input::BlockValidated {
                    height: block.header.height,
                    block: block.header.hash(),
                    valid,
                });
                self.push(self.now + 1, Event::Host { node, life, input });
            }
            Output::Commit { block, certificate } => self.commit(node, *block, certificate),
            Output::SyncPeer { to, height } => self.sync(node, to, height),
            Output::Evidence(ev) => self.check_evidence(node, *ev),
            Output::SignerRefused(_) => self.signer_refusals += 1,
            Output::Rejected { .. } => self.rejected += 1,
        }
    }

    fn send(&mut self, from: u32, to: Option<u32>, bytes: Vec<u8>) {
        let n = &mut self.nodes[from as usize];
        let deliveries: Vec<(u32, Vec<u8>)> = match (&mut n.adversary, to) {
            (Some(a), _) => {
                let recipients = Recipients {
                    me: from,
                    all: match &to {
                        Some(t) => std::slice::from_ref(t),
                        None => &self.all,
                    },
                    right: &self.right,
                };
                a.rewrite(
                    &bytes,
                    &n.app,
                    &self.users,
                    &mut self.coalition,
                    &recipients,
                )
            }
            (None, Some(t)) => vec![(t, bytes)],
            (None, None) => self
                .all
                .iter()
                .filter(|i| **i != from)
                .map(|i| (*i, bytes.clone()))
                .collect(),
        };
        // A broadcast's copies are alike: compacted once.
        let mut last: Option<(Vec<u8>, Vec<u8>)> = None;
        for (to, bytes) in deliveries {
            let wire = match &last {
                Some((sent, wire)) if *sent == bytes => wire.clone(),
                _ => {
                    let wire = self.wire(from, bytes.clone());
                    last = Some((bytes, wire.clone()));
                    wire
                }
            };
            self.transmit(from, to, wire);
        }
    }

    /// What the network carries for `bytes` sent by `from`: a proposal in compact form,
    /// its transactions kept in [`Sim::txs`].
    fn wire(&mut self, from: u32, bytes: Vec<u8>) -> Vec<u8> {
        let Some(engine) = self.nodes[from as usize].engine.as_ref() else {
            return bytes;
        };
        match engine.compact_message(&bytes) {
            Some((wire, block)) => {
                for tx in block.txs {
                    self.txs.insert(tx.hash(), tx);
                }
                wire
            }
            None => bytes,
        }
    }

    /// What node `to`'s host hands its engine for `wire` (`None`: nothing, the node is
    /// down or the host drops it): a compact proposal checked, rebuilt and expanded, as
    /// the node's driver does.
    fn unwire(&mut self, to: u32, wire: Vec<u8>) -> Option<Vec<u8>> {
        let engine = self.nodes[to as usize].engine.as_ref()?;
        match engine.carried(&wire) {
            Ok(Carried::Message) => Some(wire),
            Ok(Carried::Block { block, .. }) => {
                let txs = &self.txs;
                let rebuilt = block.assemble(|_, h| txs.get(h).cloned()).ok()?;
                match engine.expand_message(&wire, &rebuilt) {
                    Ok(full) => {
                        self.rebuilt_proposals += 1;
                        Some(full)
                    }
                    Err(_) => {
                        self.rejected += 1;
                        None
                    }
                }
            }
            Ok(Carried::Stale) => None,
            Err(_) => {
                self.rejected += 1;
                None
            }
        }
    }

    fn transmit(&mut self, from: u32, to: u32, bytes: Vec<u8>) {
        if from == to || to as usize >= self.nodes.len() {
            return;
        }
        let faulty = self.now < self.sc.heal_ms;
        if faulty {
            if self
                .sc
                .partitions
                .iter()
                .any(|p| p.separates(from, to, self.now))
            {
                return;
            }
            if self.rng.chance_ppm(self.sc.network.loss_ppm) {
                return;
            }
        }
        let delay =
            self.links[from as usize][to as usize] + self.rng.range(0, self.sc.network.jitter_ms);
        if faulty && self.rng.chance_ppm(self.sc.network.duplicate_ppm) {
            let again = delay + self.rng.range(0, 2 * self.sc.network.jitter_ms + 10);
            self.push(
                self.now + again,
                Event::Deliver {
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
        self.push(self.now + delay, Event::Deliver { to, bytes });
    }

    fn sync(&mut self, from: u32, to: u32, height: u64) {
        let n = &self.nodes[from as usize];
        if n.adversary.as_ref().is_some_and(|a| !a.syncs()) {
            return;
        }
        let Some(engine) = n.engine.as_ref() else {
            return;
        };
        let top = n.app.height().min(height + SYNC_BATCH - 1);
        let messages: Vec<Vec<u8>> = (height..=top)
            .filter_map(|h| n.app.committed(h))
            .map(|(b, c)| engine.decision_message(b, c))
            .collect();
        for m in messages {
            self.transmit(from, to, m);
        }
    }

    fn commit(&mut self, node: u32, block: Block, certificate: Certificate) {
        let height = block.header.height;
        let hash = block.header.hash();
        self.trace(6, node, hash.as_bytes());
        let honest = self.honest(node);
        if honest {
            self.check_commit(node, &block, &certificate);
        }
        if let Err(reason) = self.nodes[node as usize].app.commit(block, certificate)
            && honest
        {
            self.violations.push(Violation::Validity {
                node,
                height,
                reason,
            });
        }
    }

    fn check_commit(&mut self, node: u32, block: &Block, certificate: &Certificate) {
        let height = block.header.height;
        let hash = block.header.hash();
        if let Err(e) = verify_certificate(
            self.sc.engine.id(),
            &self.validators,
            &block.header,
            certificate,
        ) {
            self.violations.push(Violation::Certificate {
                node,
                height,
                reason: e.to_string(),
            });
        }
        match self.decided.get(&height) {
            Some(&(first, first_hash)) => {
                if first_hash != hash {
                    self.violations.push(Violation::Agreement {
                        height,
                        first: (first, first_hash),
                        second: (node, hash),
                    });
                }
            }
            None => {
                if let Some((prev, _)) = self.reference.committed(height - 1)
                    && block.header.time_ms <= prev.header.time_ms
                {
                    self.violations.push(Violation::Time {
                        height,
                        previous: prev.header.time_ms,
                        time: block.header.time_ms,
                    });
                }
                if let Err(reason) = self.reference.validate(block) {
                    self.violations.push(Violation::Validity {
                        node,
                        height,
                        reason,
                    });
                } else if let Err(reason) =
                    self.reference.commit(block.clone(), certificate.clone())
                {
                    self.violations.push(Violation::Validity {
                        node,
                        height,
                        reason,
                    });
                }
                self.decided.insert(height, (node, hash));
            }
        }
    }

    fn check_evidence(&mut self, node: u32, ev: DuplicateVote) {
        if !self.honest(node) {
            return;
        }
        if let Err(e) = ev.verify(&self.chain_id, &self.validators) {
            self.violations.push(Violation::Evidence {
                node,
                reason: format!("does not verify: {e}"),
            });
            return;
        }
        let accused = self.validators.index_of(&ev.validator).map(|i| i as u32);
        if accused.is_none_or(|i| self.honest(i)) {
            self.violations.push(Violation::Evidence {
                node,
                reason: format!("accuses honest validator {}", ev.validator),
            });
            return;
        }
        self.trace(7, node, ev.hash().as_bytes());
        self.evidence.insert(ev.hash(), ev);
    }
}

/// A one-line description of a consensus message, for logs.
pub fn describe(bytes: &[u8]) -> String {
    use crate::tendermint::Message;
    match Message::decode_limited(bytes) {
        Ok(Message::Proposal { proposal, .. }) => format!(
            "proposal {}/{} vr {:?} {}",
            proposal.height,
            proposal.round,
            proposal.valid_round,
            &proposal.block.header.hash().to_hex()[..8]
        ),
        Ok(Message::Vote(v)) => format!(
            "{:?} {}/{} from v{} for {}",
            v.vote.kind,
            v.vote.height,
            v.vote.round,
            v.validator,
            v.vote
                .block
                .map_or("nil".into(), |h| h.to_hex()[..8].to_string())
        ),
        Ok(Message::Decision { block, .. }) => format!("decision {}", block.header.height),
        Err(e) => format!("garbage ({} bytes: {e})", bytes.len()),
    }
}
