//! `pyralog-testnet bench`: a testnet's committed throughput, latency, CPU and disk use,
//! against the machine's own bounds measured in the same run (docs/PERFORMANCE.md).
//!
//! The load is notarizations of about `tx_size` bytes from `accounts` accounts, all signed
//! before the clock starts. Batches of them (`sync`: answered with the mempool's verdict,
//! so rejections are counted; one `broadcast_txs` call each, or with [`Submit::Each`] a
//! JSON-RPC batch of `broadcast_tx` calls) go to the validators, each sender's to its own,
//! either as fast as answers allow (`rate: None`) or paced at `rate` tx/s. Senders behave
//! as wallets: one transaction unanswered each, and one refused for now is sent again
//! ([`crate::submit`]). Node0's
//! header subscription records when each height is committed; after the run, a sample of
//! transactions is looked up to turn (first sent at, committed at height) into
//! submit→commit latencies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pyralog_crypto::{BatchItem, HashDomain, Keypair, SigDomain, verify_batch_report};
use pyralog_ledger::{ChainId, ChainParams, Encode, EngineId, Hash, Payload, Transaction};
use pyralog_node::config::Transport;
use pyralog_wallet::client::{CallError, Rpc};
use serde_json::{Value, json};

use crate::submit::{Resend, Verdict, sender_node, submit};
use crate::{Manifest, UpOptions, down, up};

/// Transactions per submission batch to one validator (a pacing slot carries up to
/// this many per validator).
const BATCH: usize = 64;
/// How far apart the pacing slots of a paced run are: a paced run offers its rate
/// evenly, not in pulses of `BATCH` per validator (below 100 tx/s a slot holds one
/// transaction, and slots are further apart).
const PACING_SLOT: Duration = Duration::from_millis(10);
/// Transactions looked up for latencies.
const LATENCY_SAMPLE: usize = 2000;
/// After the submission, a log that has not grown for this long has the senders'
/// transactions that should be pending sent again (a full pool may have evicted them).
const STALL: Duration = Duration::from_secs(5);

/// Options of one benchmark run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Validators (of a network the bench starts).
    pub validators: usize,
    /// Transport between them.
    pub transport: Transport,
    /// Transactions to submit.
    pub txs: usize,
    /// Submission rate in tx/s; `None`: as fast as the nodes take them.
    pub rate: Option<u64>,
    /// Sending accounts (each sends its share in nonce order).
    pub accounts: usize,
    /// Approximate size of each transaction's encoding, in bytes.
    pub tx_size: usize,
    /// Directory of the network (a fresh one is created there).
    pub home: PathBuf,
    /// Fresh networks: keep the last validator down during the load, then restart it and
    /// time its block sync.
    pub catch_up: bool,
    /// How transactions are submitted.
    pub submit: Submit,
}

/// How a sender submits a slot of transactions to its validator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Submit {
    /// One `broadcast_txs` call: the node checks their signatures as one batch.
    #[default]
    Batch,
    /// A JSON-RPC batch of `broadcast_tx` calls: the node checks each signature alone.
    Each,
}

/// A restarted validator catching up through block sync, against what the network
/// produced while it was down.
#[derive(Clone, Copy, Debug)]
pub struct CatchUp {
    /// Blocks it fetched.
    pub blocks: u64,
    /// Transactions in them.
    pub txs: u64,
    /// Seconds from its restart until it reached the height the others had then.
    pub secs: f64,
    /// Blocks the others committed while it was down.
    pub produced_blocks: u64,
    /// Transactions they committed while it was down.
    pub produced_txs: u64,
    /// Seconds it was down.
    pub down_secs: f64,
}

impl CatchUp {
    /// Blocks synced per second.
    pub fn blocks_per_sec(&self) -> f64 {
        self.blocks as f64 / self.secs.max(1e-9)
    }

    /// Transactions synced per second.
    pub fn tx_per_sec(&self) -> f64 {
        self.txs as f64 / self.secs.max(1e-9)
    }
}

/// Submit→commit latency percentiles, in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Validators.
    pub validators: usize,
    /// Transactions submitted.
    pub submitted: usize,
    /// Transactions the nodes refused for good (a refusal for now is sent again).
    pub rejected: usize,
    /// The refusals for good, by reason.
    pub refusals: BTreeMap<String, usize>,
    /// Transactions not sent because an earlier one of their sender was refused for good.
    pub stranded: usize,
    /// Sends of transactions a node had refused for now (`mempool_full`, `unavailable`,
    /// a failed batch).
    pub resends: usize,
    /// Transactions sent again after the log stopped growing that a node took as new (a
    /// full pool had evicted them behind a nonce gap).
    pub recovered: usize,
    /// Transactions committed during the run.
    pub committed: u64,
    /// Seconds from the first submission to the last commit.
    pub secs: f64,
    /// Seconds the submission took.
    pub submit_secs: f64,
    /// Blocks committed during the run.
    pub blocks: u64,
    /// Submit→commit latency of a sample of the transactions.
    pub latency: Latency,
    /// CPU seconds (user + system) each node spent during the run.
    pub cpu_secs: Vec<(String, f64)>,
    /// CPU seconds the bench itself spent during the run (submitting, watching heights):
    /// machine time the nodes did not have.
    pub bench_cpu_secs: f64,
    /// How the whole machine's CPU time was spent during the run (`/proc/stat`).
    pub machine: Option<MachineShare>,
    /// Bytes the validators sent through the WireGuard overlay during the run, all
    /// together (`pyralog_wg_tx_bytes`; `None` with the TCP transport or unreadable
    /// metrics).
    pub overlay_bytes: Option<u64>,
    /// Bytes node0's database occupies after the run.
    pub bytes_on_disk: u64,
    /// Transactions node0 holds in all (its log size).
    pub log_size: u64,
    /// Mean size of a submitted transaction's encoding.
    pub tx_bytes: f64,
    /// The catch-up measurement, with `catch_up`.
    pub catch_up: Option<CatchUp>,
    /// How the transactions were submitted.
    pub submit: Submit,
}

impl BenchReport {
    /// Committed transactions per second.
    pub fn tx_per_sec(&self) -> f64 {
        self.committed as f64 / self.secs
    }

    /// Committed blocks per second.
    pub fn blocks_per_sec(&self) -> f64 {
        self.blocks as f64 / self.secs
    }

    /// Bytes on disk per committed transaction (of all node0 holds).
    pub fn bytes_on_disk_per_tx(&self) -> f64 {
        self.bytes_on_disk as f64 / self.log_size.max(1) as f64
    }

    /// Bytes the validators sent through the overlay per committed transaction, all
    /// together: each transaction's gossip, proposals, votes and their framing.
    pub fn overlay_bytes_per_tx(&self) -> Option<f64> {
        self.overlay_bytes
            .map(|b| b as f64 / self.committed.max(1) as f64)
    }

    /// CPU microseconds a node spent per committed transaction (the mean of the nodes):
    /// steadier than tx/s on a shared machine, and what a change to the node moves.
    pub fn cpu_us_per_tx_per_node(&self) -> f64 {
        let nodes = self.cpu_secs.len().max(1) as f64;
        let total: f64 = self.cpu_secs.iter().map(|(_, s)| s).sum();
        total / nodes / self.committed.max(1) as f64 * 1e6
    }
}

/// The machine's bounds, measured in the same run.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// ed25519 signatures one core batch-verifies per second (the node's verification
    /// path, batches of 64 from distinct keys). The signature bound is made of this.
    pub sig_verify_per_core: f64,
    /// The same, one signature at a time (RPC admission, votes).
    pub sig_verify_single_per_core: f64,
    /// Cores.
    pub cores: usize,
    /// BLAKE3 throughput of one core, MiB/s.
    pub blake3_mib_per_sec: f64,
    /// Median latency of a 4 KiB write + fsync, ms.
    pub fsync_ms: f64,
}

impl Bounds {
    /// Transactions per second the network could verify if signatures were all it did:
    /// every validator batch-verifies every transaction once, and they share the cores.
    pub fn signature_bound(&self, validators: usize) -> f64 {
        self.sig_verify_per_core * self.cores as f64 / validators.max(1) as f64
    }

    /// CPU microseconds a node may spend per transaction for the network to commit half
    /// the signature bound, with the cores given to the nodes alone: at that rate each
    /// of `v` validators has `cores / (bound / 2) / v` seconds a transaction, which is
    /// two batch signature checks' time, whatever the number of validators.
    pub fn cpu_us_per_tx_at_half_bound(&self) -> f64 {
        2e6 / self.sig_verify_per_core.max(1e-9)
    }

    /// The bounds measured before and after a load, averaged. On a shared host the
    /// machine's speed drifts by a third within minutes, so one measurement taken before
    /// a load can be far from the speed the load got; the load lies between these two.
    pub fn bracketing(before: &Bounds, after: &Bounds) -> Bounds {
        let mean = |a: f64, b: f64| (a + b) / 2.0;
        Bounds {
            sig_verify_per_core: mean(before.sig_verify_per_core, after.sig_verify_per_core),
            sig_verify_single_per_core: mean(
                before.sig_verify_single_per_core,
                after.sig_verify_single_per_core,
            ),
            cores: before.cores,
            blake3_mib_per_sec: mean(before.blake3_mib_per_sec, after.blake3_mib_per_sec),
            fsync_ms: mean(before.fsync_ms, after.fsync_ms),
        }
    }

    /// The JSON object of these bounds (`bounds`, `bounds_before`, `bounds_after`).
    pub fn to_json(&self) -> Value {
        json!({
            "sig_verify_per_core": self.sig_verify_per_core,
            "sig_verify_single_per_core": self.sig_verify_single_per_core,
            "cores": self.cores,
            "blake3_mib_per_sec": self.blake3_mib_per_sec,
            "fsync_ms": self.fsync_ms,
        })
    }
}

/// Windows in which each signature rate is measured; the median counts.
const BOUND_WINDOWS: usize = 7;

/// Length of one window of [`BOUND_WINDOWS`].
const BOUND_WINDOW: Duration = Duration::from_millis(100);

/// Measures the machine's bounds; `dir` is where fsync is timed.
pub fn measure_bounds(dir: &Path) -> anyhow::Result<Bounds> {
    // Transaction-sized messages from distinct keys, as a gossip batch brings them.
    let keys: Vec<Keypair> = (0..64u8).map(|n| Keypair::from_seed(&[n; 32])).collect();
    let publics: Vec<_> = keys.iter().map(Keypair::public).collect();
    let messages: Vec<Vec<u8>> = (0..64u8).map(|n| vec![n; 200]).collect();
    let signatures: Vec<_> = keys
        .iter()
        .zip(&messages)
        .map(|(k, m)| k.sign(SigDomain::Transaction, "bench", m))
        .collect();
    let items: Vec<BatchItem<'_>> = (0..keys.len())
        .map(|i| BatchItem {
            public_key: &publics[i],
            domain: SigDomain::Transaction,
            chain_id: "bench",
            message: &messages[i],
            signature: &signatures[i],
        })
        .collect();
    // The median of several short windows. On a shared machine another process may hold
    // the core for part of the time: one 500-ms window once measured half the rate of
    // the runs around it, and the fraction of the bound reported was then twice what it
    // should have been. The fastest window would be biased the other way, by the
    // machine's best moments, which the load does not get either.
    let rate = |check: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        let mut rates = Vec::with_capacity(BOUND_WINDOWS);
        for _ in 0..BOUND_WINDOWS {
            let start = Instant::now();
            let mut verified = 0usize;
            while start.elapsed() < BOUND_WINDOW {
                check()?;
                verified += items.len();
            }
            rates.push(verified as f64 / start.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        Ok(rates[BOUND_WINDOWS / 2])
    };
    let sig_verify_per_core =
        rate(&|| verify_batch_report(&items).map_err(|_| anyhow::anyhow!("bench signature")))?;
    let sig_verify_single_per_core = rate(&|| {
        for i in &items {
            i.public_key
                .verify(i.domain, i.chain_id, i.message, i.signature)
                .map_err(|_| anyhow::anyhow!("bench signature"))?;
        }
        Ok(())
    })?;

    let buf = vec![0x5au8; 64 << 20];
    let start = Instant::now();
    let mut rounds = 0u32;
    while rounds < 2 || start.elapsed() < Duration::from_millis(300) {
        std::hint::black_box(HashDomain::Tx.hash(&buf));
        rounds += 1;
    }
    let blake3_mib_per_sec = f64::from(rounds) * 64.0 / start.elapsed().as_secs_f64();

    std::fs::create_dir_all(dir)?;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let mut times = Vec::new();
    for _ in 0..20 {
        use std::io::Write;
        let start = Instant::now();
        file.write_all(&[1u8; 4096])?;
        file.sync_data()?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    std::fs::remove_file(&path)?;
    times.sort_by(f64::total_cmp);
    Ok(Bounds {
        sig_verify_per_core,
        sig_verify_single_per_core,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        blake3_mib_per_sec,
        fsync_ms: times[times.len() / 2],
    })
}

/// Signs `txs` notarizations of about `tx_size` bytes from `accounts` accounts.
fn signed_load(
    chain: &ChainId,
    txs: usize,
    accounts: usize,
    tx_size: usize,
) -> anyhow::Result<Vec<Transaction>> {
    let accounts = accounts.clamp(1, txs.max(1));
    let per = txs.div_ceil(accounts);
    if per > 1000 {
        bail!(
            "{per} transactions per account is over the mempool's nonce window: use more --accounts"
        );
    }
    // Seeded per run, so a bench against a running testnet never repeats a nonce.
    let run = pyralog_node::driver::now_ms();
    let keys: Vec<Keypair> = (0..accounts)
        .map(|i| {
            let mut s = [0xbe; 32];
            s[..8].copy_from_slice(&(i as u64).to_be_bytes());
            s[8..16].copy_from_slice(&run.to_be_bytes());
            Keypair::from_seed(&s)
        })
        .collect();
    // A notarization is about 170 bytes besides its meta text.
    let meta_len = tx_size.saturating_sub(170).min(1024);
    let mut out = Vec::with_capacity(txs);
    'fill: for nonce in 0..per as u64 {
        for (i, k) in keys.iter().enumerate() {
            if out.len() == txs {
                break 'fill;
            }
            let digest = HashDomain::Tx.hash(format!("{run}-{i}-{nonce}").as_bytes());
            out.push(Transaction::new_signed(
                k,
                chain.clone(),
                nonce,
                Payload::Notarize {
                    digest,
                    meta: "m".repeat(meta_len),
                },
            )?);
        }
    }
    Ok(out)
}

async fn head(rpc: &Rpc) -> anyhow::Result<(u64, u64)> {
    let h = rpc.must("header", vec![]).await?;
    let size = h["header"]["log_size"]
        .as_u64()
        .context("header without log_size")?;
    let height = h["header"]["height"]
        .as_u64()
        .context("header without height")?;
    Ok((size, height))
}

/// How the machine's CPU time went during a run, as fractions of all of it (cores ×
/// seconds): busy (any process, ours or not), and stolen by the hypervisor for other
/// guests. A run with much stolen time measured a smaller machine than its bounds did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MachineShare {
    /// User, system and interrupt time.
    pub busy: f64,
    /// Time the hypervisor gave to other guests while this one wanted to run.
    pub steal: f64,
}

/// The machine's CPU tick counters: busy, idle (with I/O wait), stolen.
#[derive(Clone, Copy, Debug, PartialEq)]
struct MachineTicks {
    busy: u64,
    idle: u64,
    steal: u64,
}

impl MachineTicks {
    /// The counters now (`None` where `/proc/stat` is missing or unreadable).
    fn now() -> Option<MachineTicks> {
        MachineTicks::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The aggregate `cpu` line: user nice system idle iowait irq softirq steal (guest
    /// time is already in user).
    fn parse(stat: &str) -> Option<MachineTicks> {
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let f: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        Some(MachineTicks {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            idle: at(3) + at(4),
            steal: at(7),
        })
    }

    /// The share of each kind of time from `self` to `later`.
    fn share_until(self, later: MachineTicks) -> Option<MachineShare> {
        let busy = later.busy.checked_sub(self.busy)?;
        let idle = later.idle.checked_sub(self.idle)?;
        let steal = later.steal.checked_sub(self.steal)?;
        let all = (busy + idle + steal) as f64;
        (all > 0.0).then(|| MachineShare {
            busy: busy as f64 / all,
            steal: steal as f64 / all,
        })
    }
}

/// CPU seconds spent between two readings (0 where either was unreadable).
fn cpu_spent(before: Option<f64>, now: Option<f64>) -> f64 {
    now.zip(before).map_or(0.0, |(now, then)| now - then)
}

/// CPU seconds (user + system) of this process so far, to the microsecond (`/proc`
/// counts in hundredths: the bench itself may spend less than one during a short run).
fn own_cpu_secs() -> Option<f64> {
    use nix::sys::resource::{UsageWho, getrusage};
    use nix::sys::time::TimeValLike;
    let u = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    Some((u.user_time().num_microseconds() + u.system_time().num_microseconds()) as f64 / 1e6)
}

/// CPU seconds (user + system) of process `pid` so far (`/proc`, 100 ticks a second).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    })
}

/// Starts a fresh network in `opts.home`, runs the load, stops it and removes it.
pub async fn run(opts: &BenchOptions, now_ms: u64) -> anyhow::Result<BenchReport> {
    let mut m = up(
        &UpOptions {
            validators: opts.validators,
            auditors: 0,
            engine: EngineId::Tendermint,
            transport: opts.transport,
            home: opts.home.clone(),
            params: ChainParams::default(),
            timeout: Duration::from_secs(60),
        },
        now_ms,
    )
    .await?;
    let result = if opts.catch_up {
        load_with_catch_up(&mut m, opts).await
    } else {
        load(&m, opts).await
    };
    down(&mut m, &opts.home)?;
    let report = result?;
    std::fs::remove_dir_all(&opts.home)
        .with_context(|| format!("removing {}", opts.home.display()))?;
    Ok(report)
}

/// The load with the last validator down; then it restarts and its sync is timed.
async fn load_with_catch_up(m: &mut Manifest, opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let last = m.nodes.len() - 1;
    let node0 = Rpc::new(&m.nodes[0].rpc, Duration::from_secs(10))?;
    let lagging = Rpc::new(&m.nodes[last].rpc, Duration::from_secs(10))?;
    let (log_at_kill, at_kill) = head(&lagging).await?;
    let killed = Instant::now();
    crate::kill_node(m, last)?;
    let mut report = load(m, opts).await?;
    let (log_target, target) = head(&node0).await?;
    let down_secs = killed.elapsed().as_secs_f64();
    let started = Instant::now();
    crate::start_node(m, last)?;
    loop {
        if let Ok(v) = lagging.must("status", vec![]).await
            && v.get("height").and_then(Value::as_u64) >= Some(target)
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the restarted validator did not reach height {target} in 300 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.catch_up = Some(CatchUp {
        blocks: target - at_kill,
        txs: log_target - log_at_kill,
        secs: started.elapsed().as_secs_f64(),
        produced_blocks: target - at_kill,
        produced_txs: log_target - log_at_kill,
        down_secs,
    });
    Ok(report)
}

/// Records when each height is first seen committed on node `url` (reached through
/// `rpc`), until `stop`. The times come from the node's header subscription, so they are
/// the moment the node announced the commit, not the next tick of a poller. The
/// subscription is open when this returns (call it before the clock starts, or the first
/// heights are missed); if it cannot be opened within 5 s, or ends, polling every 25 ms
/// takes over.
async fn watch_heights(
    url: &str,
    rpc: Rpc,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (
    Arc<Mutex<BTreeMap<u64, Instant>>>,
    tokio::task::JoinHandle<()>,
) {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let out = seen.clone();
    let stopped = move || stop.load(std::sync::atomic::Ordering::Relaxed);
    let record = move |height: u64| {
        if let Ok(mut s) = seen.lock() {
            s.entry(height).or_insert_with(Instant::now);
        }
    };
    let ws_url = url.replacen("http://", "ws://", 1);
    let subscribed = tokio::time::timeout(Duration::from_secs(5), subscribe_headers(&ws_url))
        .await
        .ok()
        .and_then(Result::ok);
    let task = tokio::spawn(async move {
        if let Some((_client, mut headers)) = subscribed {
            // `_client` holds the connection the subscription lives on.
            while !stopped() {
                match tokio::time::timeout(Duration::from_millis(100), headers.next()).await {
                    Err(_) => {} // no header for 100 ms: look at `stop` again
                    Ok(Some(Ok(h))) => {
                        if let Some(height) = h.get("height").and_then(Value::as_u64) {
                            record(height);
                        }
                    }
                    Ok(_) => break, // the subscription ended: poll instead
                }
            }
        }
        while !stopped() {
            if let Ok((_, height)) = head(&rpc).await {
                record(height);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    (out, task)
}

async fn subscribe_headers(
    ws_url: &str,
) -> anyhow::Result<(
    jsonrpsee::ws_client::WsClient,
    jsonrpsee::core::client::Subscription<Value>,
)> {
    use jsonrpsee::core::client::SubscriptionClientT;
    let client = jsonrpsee::ws_client::WsClientBuilder::default()
        .build(ws_url)
        .await?;
    let sub = client
        .subscribe(
            "subscribe_headers",
            jsonrpsee::rpc_params![],
            "unsubscribe_headers",
        )
        .await?;
    Ok((client, sub))
}

/// The state of each validator of `m`, for an error about a load that stopped
/// committing: its height, round, pending transactions and peers (its last published
/// status: a node whose work is stuck shows the same figures each time), or why it did
/// not say (stopped before the load, gone since, or no answer within 5 s; asked one
/// after the other).
pub async fn validators_state(m: &Manifest) -> String {
    let mut out = Vec::new();
    for n in &m.nodes {
        if n.mode != pyralog_node::config::Mode::Validator {
            continue;
        }
        let name = &n.name;
        out.push(
            match (crate::node_state(n, Duration::from_secs(5)).await, n.pid) {
                (crate::NodeState::Status(s), _) => format!(
                    "{name} at height {}, round {}, {} pending, {} peers{}",
                    s["height"],
                    s["round"],
                    s["mempool_txs"],
                    s["peers"],
                    if s["catching_up"] == true {
                        ", catching up"
                    } else {
                        ""
                    }
                ),
                (crate::NodeState::Down, None) => format!("{name} stopped before the load"),
                (crate::NodeState::Down, Some(pid)) => format!("{name} not running (pid {pid})"),
                (crate::NodeState::Silent(e), pid) => {
                    let pid = pid.map_or(String::new(), |p| format!(" (pid {p})"));
                    format!("{name}{pid} did not answer status: {e}")
                }
            },
        );
    }
    out.join("; ")
}

/// Runs the load against the running network `m`.
pub async fn load(m: &Manifest, opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let chain = ChainId::new(&m.chain_id)?;
    let txs = signed_load(&chain, opts.txs, opts.accounts, opts.tx_size)?;
    let hashes: Vec<Hash> = txs.iter().map(Transaction::hash).collect();
    let tx_bytes =
        txs.iter().map(|t| t.to_bytes().len()).sum::<usize>() as f64 / txs.len().max(1) as f64;
    let urls: Vec<&str> = m
        .nodes
        .iter()
        .filter(|n| n.mode == pyralog_node::config::Mode::Validator && n.pid.is_some())
        .map(|n| n.rpc.as_str())
        .collect();
    if urls.is_empty() {
        bail!("the testnet has no running validator to load");
    }
    let rpcs: Vec<Rpc> = urls
        .iter()
        .map(|url| Rpc::new(url, Duration::from_secs(60)))
        .collect::<Result<_, _>>()?;
    let pids: Vec<(String, u32)> = m
        .nodes
        .iter()
        .filter_map(|n| Some((n.name.clone(), n.pid?)))
        .collect();
    let (base, h0) = head(&rpcs[0]).await?;
    let encoded: Arc<Vec<Value>> = Arc::new(
        txs.iter()
            .map(|t| json!(hex::encode(t.to_bytes())))
            .collect(),
    );
    let accounts = opts.accounts.clamp(1, txs.len().max(1));
    let metrics_urls: Vec<&str> = m
        .nodes
        .iter()
        .filter(|n| n.pid.is_some())
        .map(|n| n.metrics.as_str())
        .collect();
    let overlay_before = overlay_bytes_sent(&metrics_urls).await;
    let cpu_before: Vec<Option<f64>> = pids.iter().map(|(_, p)| cpu_secs(*p)).collect();
    let bench_before = own_cpu_secs();
    let machine_before = MachineTicks::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (seen, watcher) = watch_heights(urls[0], rpcs[0].clone(), stop.clone()).await;

    let started = Instant::now();
    let how = opts.submit;
    let send = |node: usize, batch: Vec<usize>| {
        let rpc = rpcs[node].clone();
        let encoded = encoded.clone();
        async move {
            match broadcast(&rpc, &encoded, &batch, how).await {
                Ok(answers) => answers.iter().map(verdict).collect(),
                Err(_) => vec![Verdict::Busy; batch.len()],
            }
        }
    };
    let sub = submit(
        txs.len(),
        accounts,
        rpcs.len(),
        slot_size(opts.rate, rpcs.len()),
        opts.rate,
        Resend::default(),
        send,
    )
    .await;
    let submit_secs = started.elapsed().as_secs_f64();
    let can_commit = sub.can_commit(accounts);
    let expected = can_commit.iter().filter(|c| **c).count() as u64;
    let want = base + expected;
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut last_size, mut last_growth) = (0, Instant::now());
    let mut recovered = 0;
    let (size, height) = loop {
        let (size, height) = match head(&rpcs[0]).await {
            Ok(head) => head,
            Err(e) => {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                bail!("{e:#}; the validators: {}", validators_state(m).await);
            }
        };
        if size >= want {
            if let Ok(mut s) = seen.lock() {
                s.entry(height).or_insert_with(Instant::now);
            }
            break (size, height);
        }
        if Instant::now() > deadline {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            bail!(
                "only {} of the {expected} transactions expected to commit did in 300 s after the submission; the validators: {}",
                size.saturating_sub(base),
                validators_state(m).await
            );
        }
        if size != last_size {
            (last_size, last_growth) = (size, Instant::now());
        } else if last_growth.elapsed() > STALL {
            recovered +=
                resend_dropped(&rpcs, &txs, &encoded, &can_commit, accounts, opts.submit).await;
            last_growth = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.await;
    let cpu = pids
        .iter()
        .zip(cpu_before)
        .map(|((name, pid), before)| (name.clone(), cpu_spent(before, cpu_secs(*pid))))
        .collect();
    let bench_cpu_secs = cpu_spent(bench_before, own_cpu_secs());
    let overlay_bytes = overlay_before
        .zip(overlay_bytes_sent(&metrics_urls).await)
        .map(|(a, b)| b.saturating_sub(a));
    let machine = machine_before
        .zip(MachineTicks::now())
        .and_then(|(a, b)| a.share_until(b));
    let latency = latencies(&rpcs[0], &hashes, &sub.first_sent, &seen).await?;
    let data = m.nodes[0].home.join("data");
    Ok(BenchReport {
        validators: rpcs.len(),
        submitted: txs.len(),
        rejected: sub.refused(),
        refusals: sub.refusals(),
        stranded: sub.stranded(),
        resends: sub.resends,
        recovered,
        committed: size.saturating_sub(base),
        secs,
        submit_secs,
        blocks: height - h0,
        latency,
        cpu_secs: cpu,
        bench_cpu_secs,
        machine,
        overlay_bytes,
        bytes_on_disk: dir_bytes(&data),
        log_size: size,
        tx_bytes,
        catch_up: None,
        submit: opts.submit,
    })
}

/// Bytes the nodes serving `metrics` (`http://127.0.0.1:PORT/metrics`) have sent through
/// the WireGuard overlay, all together: the sum of their `pyralog_wg_tx_bytes` samples.
/// `None` if a node's metrics cannot be read or have no such sample (the TCP transport).
async fn overlay_bytes_sent(metrics: &[&str]) -> Option<u64> {
    let mut total = 0u64;
    for url in metrics {
        let text = tokio::time::timeout(Duration::from_secs(5), http_get(url))
            .await
            .ok()??;
        let samples: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with("pyralog_wg_tx_bytes{"))
            .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .collect();
        if samples.is_empty() {
            return None;
        }
        total += samples.iter().sum::<u64>();
    }
    Some(total)
}

/// The body of a plain HTTP GET of `url` (`http://HOST:PORT/PATH`), or `None`.
async fn http_get(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (addr, path) = rest.split_once('/')?;
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /{path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    stream.take(64 << 20).read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8(out).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Transactions per pacing slot for `nodes` validators: `BATCH` each at `--rate max`;
/// paced, what the rate offers in one [`PACING_SLOT`] (at least one), so that slots
/// are about that far apart. At 1,500 tx/s, slots of 256 were 171 ms apart, and the
/// load arrived in pulses that the blocks followed (a large block, a smaller one, then
/// one holding a single transaction).
fn slot_size(rate: Option<u64>, nodes: usize) -> usize {
    let most = BATCH * nodes.max(1);
    match rate {
        None => most,
        Some(r) => {
            let per_slot = (r as f64 * PACING_SLOT.as_secs_f64()).ceil() as usize;
            per_slot.clamp(1, most)
        }
    }
}

/// Submits the transactions `indices` of `encoded` in `sync` mode, as `how` says: one
/// answer each, in order.
async fn broadcast(
    rpc: &Rpc,
    encoded: &[Value],
    indices: &[usize],
    how: Submit,
) -> pyralog_wallet::error::Result<Vec<Result<Value, CallError>>> {
    match how {
        Submit::Batch => {
            let txs: Vec<Value> = indices.iter().map(|&i| encoded[i].clone()).collect();
            rpc.broadcast(&txs, "sync").await
        }
        Submit::Each => {
            let calls: Vec<(&str, Vec<Value>)> = indices
                .iter()
                .map(|&i| ("broadcast_tx", vec![encoded[i].clone(), json!("sync")]))
                .collect();
            rpc.batch(&calls).await
        }
    }
}

/// A node's answer to one `broadcast_tx`.
fn verdict(answer: &Result<Value, CallError>) -> Verdict {
    match answer {
        Ok(_) => Verdict::Accepted,
        Err(e) => match e.reason() {
            Some("mempool_full" | "unavailable") => Verdict::Busy,
            Some(reason) => Verdict::Refused(reason.to_string()),
            None => Verdict::Refused(format!("error {}: {}", e.code, e.message)),
        },
    }
}

/// Sends again the transactions that should be pending but are not: for each sender,
/// those from its committed next nonce up to its last one that can commit, each to its
/// sender's node ([`sender_node`], as [`submit`] sends). A pool evicts a
/// transaction queued behind a nonce gap when it is full, and a sender that filled the
/// gap later must send it again. Returns how many a node took as new; a node that cannot
/// be asked is skipped (the next stall asks again).
async fn resend_dropped(
    rpcs: &[Rpc],
    txs: &[Transaction],
    encoded: &[Value],
    can_commit: &[bool],
    accounts: usize,
    how: Submit,
) -> usize {
    // Per sender, its last transaction that can commit.
    let mut last: Vec<Option<usize>> = vec![None; accounts];
    for (i, c) in can_commit.iter().enumerate() {
        if *c {
            last[i % accounts] = Some(i);
        }
    }
    let mut recovered = 0;
    for (node, rpc) in rpcs.iter().enumerate() {
        let senders: Vec<usize> = (0..accounts)
            .filter(|a| sender_node(*a, rpcs.len()) == node && last[*a].is_some())
            .collect();
        let calls: Vec<(&str, Vec<Value>)> = senders
            .iter()
            .map(|&a| {
                (
                    "get",
                    vec![
                        json!(hex::encode(txs[a].sender.as_bytes())),
                        Value::Null,
                        json!("account"),
                    ],
                )
            })
            .collect();
        let Ok(answers) = rpc.batch(&calls).await else {
            continue;
        };
        let mut again = Vec::new();
        for (&a, answer) in senders.iter().zip(answers) {
            let record = answer
                .ok()
                .and_then(|v| v.get("record")?.as_str().map(hex::decode))
                .transpose();
            let (Ok(record), Some(end)) = (record, last[a]) else {
                continue;
            };
            let Ok(next) = pyralog_wallet::query::account_nonce(record) else {
                continue;
            };
            let first = usize::try_from(next)
                .unwrap_or(usize::MAX)
                .saturating_mul(accounts)
                .saturating_add(a);
            again.extend((first..=end).step_by(accounts));
        }
        if let Ok(answers) = broadcast(rpc, encoded, &again, how).await {
            recovered += answers
                .iter()
                .filter(|a| {
                    a.as_ref().is_ok_and(|v| {
                        v.get("status").and_then(Value::as_str) == Some("pending")
                            && v.get("already_known").and_then(Value::as_bool) == Some(false)
                    })
                })
                .count();
        }
    }
    recovered
}

/// Latencies of a sample of the transactions: the time their height was first seen
/// committed minus the time they were first sent (a resent one counts from its first
/// send, as its sender would).
async fn latencies(
    rpc: &Rpc,
    hashes: &[Hash],
    first_sent: &[Option<Instant>],
    seen: &Mutex<BTreeMap<u64, Instant>>,
) -> anyhow::Result<Latency> {
    let step = (hashes.len() / LATENCY_SAMPLE).max(1);
    let picked: Vec<usize> = (0..hashes.len()).step_by(step).collect();
    let calls: Vec<(&str, Vec<Value>)> = picked
        .iter()
        .map(|&i| ("tx", vec![json!(hashes[i].to_hex())]))
        .collect();
    let answers = rpc.batch(&calls).await?;
    let seen = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("height watcher panicked"))?
        .clone();
    let mut ms: Vec<f64> = picked
        .iter()
        .zip(answers)
        .filter_map(|(&i, a)| {
            let height = a.ok()?.get("height")?.as_u64()?;
            // The first height seen at or above it: a slow subscriber or the poller may skip heights.
            let (_, at) = seen.range(height..).next()?;
            let sent = first_sent[i]?;
            Some(at.saturating_duration_since(sent).as_secs_f64() * 1000.0)
        })
        .collect();
    if ms.is_empty() {
        bail!("no committed transaction of the sample was found");
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Ok(Latency {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: ms[ms.len() - 1],
    })
}

/// The machine-readable report (`--json`).
pub fn report_json(r: &BenchReport, b: &Bounds, transport: &str, command: &str) -> Value {
    let bound = b.signature_bound(r.validators);
    json!({
        "command": command,
        "time_ms": pyralog_node::driver::now_ms(),
        "transport": transport,
        "validators": r.validators,
        "submit": match r.submit {
            Submit::Batch => "batch",
            Submit::Each => "each",
        },
        "submitted": r.submitted,
        "rejected": r.rejected,
        "refusals": r.refusals,
        "stranded": r.stranded,
        "resends": r.resends,
        "recovered": r.recovered,
        "committed": r.committed,
        "seconds": r.secs,
        "submit_seconds": r.submit_secs,
        "tx_per_sec": r.tx_per_sec(),
        "blocks_per_sec": r.blocks_per_sec(),
        "latency_ms": {
            "p50": r.latency.p50,
            "p90": r.latency.p90,
            "p99": r.latency.p99,
            "max": r.latency.max,
        },
        "cpu_seconds": r.cpu_secs.iter().map(|(n, s)| (n.clone(), json!(s))).collect::<serde_json::Map<_, _>>(),
        "bench_cpu_seconds": r.bench_cpu_secs,
        "cpu_us_per_tx_per_node": r.cpu_us_per_tx_per_node(),
        "cpu_us_per_tx_at_half_bound": b.cpu_us_per_tx_at_half_bound(),
        "machine": r.machine.map(|m| json!({
            "busy_fraction": m.busy,
            "steal_fraction": m.steal,
        })),
        "tx_bytes": r.tx_bytes,
        "overlay_bytes_per_tx": r.overlay_bytes_per_tx(),
        "bytes_on_disk_per_tx": r.bytes_on_disk_per_tx(),
        "disk_to_raw_ratio": r.bytes_on_disk_per_tx() / r.tx_bytes.max(1.0),
        "signature_bound_tx_per_sec": bound,
        "fraction_of_bound": r.tx_per_sec() / bound.max(1.0),
        "catch_up": r.catch_up.map(|c| json!({
            "blocks": c.blocks,
            "txs": c.txs,
            "seconds": c.secs,
            "down_seconds": c.down_secs,
            "blocks_per_sec": c.blocks_per_sec(),
            "tx_per_sec": c.tx_per_sec(),
            "tx_ratio_to_load": c.tx_per_sec() / r.tx_per_sec().max(1e-9),
        })),
        "bounds": b.to_json(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_paced_run_offers_its_rate_in_slots_about_ten_ms_apart() {
        assert_eq!(
            slot_size(None, 4),
            256,
            "--rate max: a full batch per validator"
        );
        for rate in [1u64, 50, 475, 1_500, 1_700, 3_400, 25_600, 10_000_000] {
            let slot = slot_size(Some(rate), 4);
            assert!((1..=256).contains(&slot), "rate {rate}: {slot}");
            let apart_ms = 1000.0 * slot as f64 / rate as f64;
            if slot > 1 && slot < 256 {
                assert!(
                    (9.0..=11.0).contains(&apart_ms),
                    "rate {rate}: {apart_ms} ms"
                );
            }
        }
        assert_eq!(slot_size(Some(1_500), 4), 15);
        assert_eq!(slot_size(Some(50), 4), 1, "a slow rate sends one at a time");
        assert_eq!(
            slot_size(Some(1_000_000), 1),
            64,
            "never more than a batch per validator"
        );
    }

    #[test]
    fn machine_shares_come_from_the_aggregate_cpu_line() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let before = MachineTicks::parse(
            "cpu  100 0 50 800 20 5 5 20 0 0\ncpu0 50 0 25 400 10 2 3 10 0 0\n",
        )
        .unwrap();
        assert_eq!(
            before,
            MachineTicks {
                busy: 160,
                idle: 820,
                steal: 20
            }
        );
        let after = MachineTicks::parse("cpu  400 0 110 860 40 10 10 70 9 0\n").unwrap();
        // 370 busy, 80 idle, 50 stolen ticks.
        let share = before.share_until(after).unwrap();
        assert!((share.busy - 370.0 / 500.0).abs() < 1e-12, "{share:?}");
        assert!((share.steal - 50.0 / 500.0).abs() < 1e-12, "{share:?}");
        // An older kernel without the steal column reads as none stolen.
        let old = MachineTicks::parse("cpu  1 2 3 4 5 6 7\n").unwrap();
        assert_eq!(old.steal, 0);
        // Nothing elapsed, counters that went back, or no aggregate line: no share.
        assert_eq!(after.share_until(after), None);
        assert_eq!(after.share_until(before), None);
        assert_eq!(MachineTicks::parse("cpu0 1 2 3\n"), None);
        assert_eq!(MachineTicks::parse("cpu  1 x 3\n"), None);
    }
}
