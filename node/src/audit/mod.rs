//! Auditing: re-verify a chain without trusting its validators or servers, and raise the
//! alarm on any inconsistency (docs/AUDITOR.md).
//!
//! - `pyralog-node audit` ([`run`]): from outside, through JSON-RPC ([`auditor`]).
//! - `pyralog-node start --mode auditor`: a non-voting node that follows the chain over
//!   p2p and re-executes every block; the driver raises the alarms ([`NodeAudit`]).
//!
//! Both keep a signed checkpoint, served at `GET /checkpoint` on the metrics address, and
//! send alarms to the same [`alarm::AlarmSink`].

pub mod alarm;
pub mod auditor;
pub mod webhook;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use prometheus_client::registry::Registry;
use pyralog_ledger::Genesis;
use pyralog_storage::SledStore;
use pyralog_wallet::client::Rpc;

use self::alarm::{AlarmSink, AuditMetrics, CheckpointSlot};
use self::auditor::{Auditor, Options};
use crate::chain::Chain;

/// Exit status of `audit --once`: everything checked and consistent.
pub const EXIT_CONSISTENT: u8 = 0;
/// Exit status of `audit --once`: something could not be checked (unreachable, timeout).
pub const EXIT_UNCHECKED: u8 = 1;
/// Exit status of `audit --once`: an alarm was raised (now, or in an earlier run whose
/// evidence is still in `--state`).
pub const EXIT_ALARM: u8 = 3;

/// `pyralog-node audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The network's genesis file: the only thing the auditor trusts.
    #[arg(long)]
    pub genesis: PathBuf,
    /// JSON-RPC endpoint of a node (repeatable). Every endpoint is audited and they are
    /// cross-checked with each other.
    #[arg(long = "rpc", required = true)]
    pub rpc: Vec<String>,
    /// Time between rounds, e.g. 500ms, 10s, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Run one round and exit: 0 consistent, 1 could not check everything, 3 alarm.
    #[arg(long)]
    pub once: bool,
    /// Directory of the verified replica, the signed checkpoint, the auditor key and the
    /// evidence of alarms [default: ~/.pyralog-audit/CHAIN_ID].
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Serve `GET /metrics` and `GET /checkpoint` on this address.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// POST each alarm as JSON to this http:// URL.
    #[arg(long)]
    pub webhook: Option<String>,
    /// Another auditor (the http:// address of its --metrics), whose signed checkpoints are
    /// compared with this auditor's history (repeatable).
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    /// Re-check every log entry every round instead of a random sample.
    #[arg(long)]
    pub full: bool,
    /// Log entries re-checked per endpoint per round (besides the newest).
    #[arg(long, default_value_t = 16)]
    pub sample: usize,
    /// Timeout of each request.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Log JSON lines.
    #[arg(long)]
    pub log_json: bool,
}

/// Parses `500ms`, `10s`, `2m`, `1h` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, "s"), |i| (&t[..i], &t[i..]));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 10s or 2m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if d.is_zero() {
        return Err("a duration must be above zero".into());
    }
    Ok(d)
}

/// The auditor key in `dir` (`auditor_key.json`, mode 0600), created on first use.
pub fn auditor_key(dir: &Path) -> anyhow::Result<pyralog_crypto::Keypair> {
    let path = dir.join("auditor_key.json");
    let key = if path.exists() {
        pyralog_crypto::keyfile::read_key_file(&path)
    } else {
        pyralog_crypto::keyfile::generate_key_file(&path)
    };
    key.with_context(|| format!("auditor key {}", path.display()))
}

fn default_state(genesis: &Genesis) -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("no --state and no $HOME")?;
    Ok(PathBuf::from(home)
        .join(".pyralog-audit")
        .join(genesis.chain_id.as_str()))
}

/// Runs `pyralog-node audit`; returns the exit status.
pub async fn run(args: AuditArgs) -> anyhow::Result<u8> {
    let text = crate::home::read_limited(&args.genesis, 1 << 20)
        .with_context(|| format!("reading the genesis {}", args.genesis.display()))?;
    let genesis =
        Genesis::from_json(&text).with_context(|| format!("genesis {}", args.genesis.display()))?;
    if let Some(url) = &args.webhook {
        webhook::check_url(url).map_err(|e| anyhow::anyhow!("--webhook {e}"))?;
    }
    for p in &args.peers {
        webhook::check_url(p).map_err(|e| anyhow::anyhow!("--peer {e}"))?;
    }
    let endpoints = args
        .rpc
        .iter()
        .map(|u| Rpc::new(u, args.timeout).map_err(|e| anyhow::anyhow!("{e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let state = match &args.state {
        Some(s) => s.clone(),
        None => default_state(&genesis)?,
    };
    std::fs::create_dir_all(&state)
        .with_context(|| format!("creating the state directory {}", state.display()))?;
    let store = Arc::new(
        SledStore::open(&state.join("data"))
            .with_context(|| format!("opening the replica in {}", state.display()))?,
    );
    let chain = Chain::open(genesis.clone(), store).with_context(|| {
        format!(
            "the replica in {} is not of this genesis",
            state.join("data").display()
        )
    })?;
    let mut registry = Registry::with_prefix("pyralog");
    let metrics = AuditMetrics::register(&mut registry);
    let sink = Arc::new(AlarmSink::new(&state, args.webhook.clone(), metrics));
    let checkpoint = Arc::new(CheckpointSlot::new(
        state.join("checkpoint.json"),
        auditor_key(&state)?,
    ));
    checkpoint.check_replica(&chain)?;
    let server = match args.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics cannot listen on {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, "metrics and /checkpoint listening");
            let registry = Arc::new(registry);
            let render = move || {
                let mut out = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
                out
            };
            let routes = alarm::routes(render, checkpoint.clone());
            Some(tokio::spawn(crate::metrics::serve(listener, routes)))
        }
        None => None,
    };
    tracing::info!(
        chain = %genesis.chain_id,
        endpoints = ?args.rpc,
        state = %state.display(),
        auditor = %checkpoint.auditor().to_hex(),
        verified_height = chain.height(),
        "auditing"
    );
    let mut auditor = Auditor::new(
        genesis,
        chain,
        endpoints,
        sink.clone(),
        checkpoint,
        Options {
            full: args.full,
            sample: args.sample,
            peers: args.peers.clone(),
            timeout: args.timeout,
        },
    );
    // One signal listener for the whole run, so a signal during a round is not lost.
    let mut stop = std::pin::pin!(crate::node::shutdown_signal());
    let code = loop {
        let report = tokio::select! {
            r = auditor.round() => r?,
            _ = &mut stop => break if sink.alarmed() { EXIT_ALARM } else { EXIT_CONSISTENT },
        };
        for gap in &report.unchecked {
            tracing::warn!("not checked: {gap}");
        }
        tracing::info!(
            height = auditor.height(),
            alarms = report.alarms,
            unchecked = report.unchecked.len(),
            status = if sink.alarmed() {
                "ALARM"
            } else if report.unchecked.is_empty() {
                "consistent"
            } else {
                "incomplete"
            },
            "audit round"
        );
        if args.once {
            break if sink.alarmed() {
                EXIT_ALARM
            } else if report.unchecked.is_empty() {
                EXIT_CONSISTENT
            } else {
                EXIT_UNCHECKED
            };
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = &mut stop => break if sink.alarmed() { EXIT_ALARM } else { EXIT_CONSISTENT },
        }
    };
    if let Some(s) = server {
        s.abort();
    }
    Ok(code)
}

/// Auditor mode of a node: alarms and checkpoints for the blocks it follows over p2p.
pub struct NodeAudit {
    /// Chain id, for alarms.
    pub chain: String,
    /// Where alarms go.
    pub sink: Arc<AlarmSink>,
    /// The signed checkpoint of the last verified block.
    pub checkpoint: Arc<CheckpointSlot>,
    /// When the checkpoint was last written (at most once a second: it is fsynced).
    pub published: std::sync::Mutex<Option<std::time::Instant>>,
}

impl NodeAudit {
    /// Raises an alarm without blocking the caller (the webhook may take seconds).
    pub fn raise(
        &self,
        kind: &str,
        source: String,
        height: u64,
        summary: String,
        evidence: serde_json::Value,
    ) {
        let sink = self.sink.clone();
        let alarm = alarm::Alarm {
            chain: self.chain.clone(),
            height,
            kind: kind.to_string(),
            source,
            summary,
            evidence,
        };
        tokio::spawn(async move {
            sink.raise(alarm).await;
        });
    }

    /// A block was verified, re-executed and committed.
    pub fn verified(&self, header: &pyralog_ledger::Header, cert: &pyralog_ledger::Certificate) {
        let due = self.published.lock().is_ok_and(|mut last| {
            let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        });
        if due && let Err(e) = self.checkpoint.publish(header, cert) {
            tracing::error!(error = %e, "cannot save the audit checkpoint");
        }
        crate::metrics::set(&self.sink.metrics().height, header.height);
        self.sink.round_done(true);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_have_units_and_are_positive() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        for bad in ["", "0s", "10x", "s", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
