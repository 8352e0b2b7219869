//! `pyralog-testnet bench`: a testnet's committed transactions per second.
//!
//! Starts a fresh network, signs `txs` key-value writes from `accounts` accounts up
//! front, submits them in JSON-RPC batches (`broadcast_tx` async) to every node at once,
//! and times from the first submission until the last one is in a committed block
//! (`log_size` of node0's latest header). The network is stopped afterwards and, on
//! success, its directory removed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pyralog_crypto::Keypair;
use pyralog_ledger::{ChainId, ChainParams, Encode, EngineId, Payload, Transaction};
use pyralog_node::config::Transport;
use pyralog_wallet::client::Rpc;
use serde_json::{Value, json};

use crate::{UpOptions, down, up};

/// Options of one benchmark run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Validators.
    pub validators: usize,
    /// Transport between them.
    pub transport: Transport,
    /// Transactions to commit.
    pub txs: usize,
    /// Sending accounts (each sends `txs / accounts` in nonce order).
    pub accounts: usize,
    /// Directory of the network (must not hold one).
    pub home: PathBuf,
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Transactions committed.
    pub txs: usize,
    /// Seconds from the first submission to the last commit.
    pub secs: f64,
    /// Seconds the submission itself took.
    pub submit_secs: f64,
    /// Blocks it took.
    pub blocks: u64,
}

impl BenchReport {
    /// Committed transactions per second.
    pub fn tx_per_sec(&self) -> f64 {
        self.txs as f64 / self.secs
    }
}

fn signed_load(chain: &ChainId, txs: usize, accounts: usize) -> anyhow::Result<Vec<Transaction>> {
    let accounts = accounts.clamp(1, txs.max(1));
    let per = txs.div_ceil(accounts);
    if per > 1000 {
        bail!(
            "{per} transactions per account is over the mempool's nonce window: use more --accounts"
        );
    }
    let keys: Vec<Keypair> = (0..accounts)
        .map(|i| {
            let mut s = [0xbe; 32];
            s[..8].copy_from_slice(&(i as u64).to_be_bytes());
            Keypair::from_seed(&s)
        })
        .collect();
    let mut out = Vec::with_capacity(txs);
    'fill: for nonce in 0..per as u64 {
        for k in &keys {
            if out.len() == txs {
                break 'fill;
            }
            out.push(Transaction::new_signed(
                k,
                chain.clone(),
                nonce,
                Payload::Put {
                    key: format!("bench-{}-{nonce}", k.public().to_hex()).into_bytes(),
                    value: vec![7; 100],
                },
            )?);
        }
    }
    Ok(out)
}

async fn log_size(rpc: &Rpc) -> anyhow::Result<(u64, u64)> {
    let h = rpc.must("header", vec![]).await?;
    let size = h["header"]["log_size"]
        .as_u64()
        .context("header without log_size")?;
    let height = h["header"]["height"]
        .as_u64()
        .context("header without height")?;
    Ok((size, height))
}

/// Runs one benchmark: network up, load, network down.
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
    let result = load(&m, opts).await;
    down(&mut m, &opts.home)?;
    let report = result?;
    std::fs::remove_dir_all(&opts.home)
        .with_context(|| format!("removing {}", opts.home.display()))?;
    Ok(report)
}

async fn load(m: &crate::Manifest, opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let chain = ChainId::new(&m.chain_id)?;
    let txs = signed_load(&chain, opts.txs, opts.accounts)?;
    let rpcs: Vec<Rpc> = m
        .nodes
        .iter()
        .map(|n| Rpc::new(&n.rpc, Duration::from_secs(30)))
        .collect::<Result<_, _>>()?;
    let (base, h0) = log_size(&rpcs[0]).await?;
    let calls: Vec<Vec<(String, Vec<Value>)>> = txs
        .chunks(256)
        .map(|chunk| {
            chunk
                .iter()
                .map(|t| {
                    (
                        "broadcast_tx".to_string(),
                        vec![json!(hex::encode(t.to_bytes())), json!("async")],
                    )
                })
                .collect()
        })
        .collect();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, batch) in calls.into_iter().enumerate() {
        let rpc = rpcs[i % rpcs.len()].clone();
        tasks.push(tokio::spawn(async move {
            let refs: Vec<(&str, Vec<Value>)> =
                batch.iter().map(|(m, a)| (m.as_str(), a.clone())).collect();
            rpc.batch(&refs).await
        }));
    }
    let mut refused = 0;
    for t in tasks {
        for answer in t.await?? {
            if answer.is_err() {
                refused += 1;
            }
        }
    }
    if refused > 0 {
        bail!("{refused} transactions were refused");
    }
    let submit_secs = started.elapsed().as_secs_f64();
    let want = base + opts.txs as u64;
    let deadline = started + Duration::from_secs(300);
    loop {
        let (size, height) = log_size(&rpcs[0]).await?;
        if size >= want {
            return Ok(BenchReport {
                txs: opts.txs,
                secs: started.elapsed().as_secs_f64(),
                submit_secs,
                blocks: height - h0,
            });
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} transactions committed in 300 s",
                size - base,
                opts.txs
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
