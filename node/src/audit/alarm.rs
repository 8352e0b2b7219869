//! Alarms: a log line with the evidence, an evidence file, the `pyralog_audit_*` metrics,
//! and a JSON POST to a webhook. Also the auditor's signed checkpoint, kept on disk and
//! served at `GET /checkpoint`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use pyralog_crypto::Keypair;
use pyralog_ledger::{Certificate, Checkpoint, Encode, Header, SignedCheckpoint};
use serde::Serialize;
use serde_json::{Value, json};

use super::webhook;
use crate::metrics::Page;

/// `pyralog_audit_status` before the first completed check.
pub const UNCHECKED: i64 = -1;
/// `pyralog_audit_status` after a consistent round.
pub const CONSISTENT: i64 = 1;
/// `pyralog_audit_status` once an alarm was raised (it stays there).
pub const BAD: i64 = 0;

type Labels = Vec<(String, String)>;

/// Alarms saved (evidence file, webhook) per run; more are only logged briefly. A flood
/// of bad data must not fill the disk or the webhook.
const MAX_ALARMS: usize = 256;

/// The auditor's metrics.
#[derive(Clone, Default)]
pub struct AuditMetrics {
    /// 1 consistent, 0 an alarm was raised, -1 not (yet) checked.
    pub status: Gauge,
    /// Height verified so far.
    pub height: Gauge,
    /// Rounds completed.
    pub rounds: Counter,
    /// Alarms raised, by kind.
    pub alarms: Family<Labels, Counter>,
    /// Whether each endpoint answered in the last round (1) or not (0).
    pub endpoint_up: Family<Labels, Gauge>,
    /// Log entries re-checked against the servers' data.
    pub entries_checked: Counter,
    /// Peer auditors' checkpoints compared with this auditor's history.
    pub peer_checkpoints: Counter,
}

impl AuditMetrics {
    /// Registers the metrics in `registry` (prefix `pyralog`: `pyralog_audit_status`, ...).
    pub fn register(registry: &mut Registry) -> AuditMetrics {
        let m = AuditMetrics::default();
        m.status.set(UNCHECKED);
        registry.register(
            "audit_status",
            "Audit result: 1 consistent, 0 alarm raised, -1 not yet checked",
            m.status.clone(),
        );
        registry.register("audit_height", "Height verified so far", m.height.clone());
        registry.register("audit_rounds", "Audit rounds completed", m.rounds.clone());
        registry.register(
            "audit_alarms",
            "Audit alarms raised, by kind",
            m.alarms.clone(),
        );
        registry.register(
            "audit_endpoint_up",
            "Whether the endpoint answered in the last round",
            m.endpoint_up.clone(),
        );
        registry.register(
            "audit_entries_checked",
            "Log entries re-hashed from the servers' data and re-proven",
            m.entries_checked.clone(),
        );
        registry.register(
            "audit_peer_checkpoints",
            "Peer auditors' checkpoints compared with this auditor's history",
            m.peer_checkpoints.clone(),
        );
        m
    }

    /// Records whether `endpoint` answered.
    pub fn endpoint(&self, endpoint: &str, up: bool) {
        self.endpoint_up
            .get_or_create(&vec![("endpoint".to_string(), endpoint.to_string())])
            .set(i64::from(up));
    }
}

/// One inconsistency, with what proves it.
#[derive(Clone, Debug, Serialize)]
pub struct Alarm {
    /// The chain.
    pub chain: String,
    /// Height at which it was found.
    pub height: u64,
    /// The failed check: `certificate`, `chain_link`, `block_contents`, `tx_signature`,
    /// `execution`, `log_consistency`, `inclusion`, `state`, `fork`, `split_view`,
    /// `malformed`, ... (docs/AUDITOR.md).
    pub kind: String,
    /// Who served the data: an RPC URL, a peer auditor, or `p2p`.
    pub source: String,
    /// What did not match.
    pub summary: String,
    /// The data that shows it (canonical encodings in hex).
    pub evidence: Value,
}

/// Certified header evidence: height, hash, canonical header and certificate.
pub fn header_evidence(source: &str, header: &Header, cert: Option<&Certificate>) -> Value {
    json!({
        "source": source,
        "height": header.height,
        "hash": header.hash().to_hex(),
        "header": hex::encode(header.to_bytes()),
        "certificate": cert.map(|c| hex::encode(c.to_bytes())),
    })
}

/// A refused block and its certificate as evidence (canonical hex).
pub fn block_evidence(refused: &crate::chain::Refused) -> Value {
    json!({
        "block": hex::encode(refused.block.to_bytes()),
        "certificate": hex::encode(refused.cert.to_bytes()),
    })
}

/// Where alarms go.
pub struct AlarmSink {
    dir: PathBuf,
    webhook: Option<String>,
    metrics: AuditMetrics,
    seen: Mutex<HashSet<(String, String, u64)>>,
    /// Numbers evidence files, so two alarms in one millisecond never share a name.
    seq: std::sync::atomic::AtomicU64,
}

impl AlarmSink {
    /// Alarms are saved under `dir/evidence`. If earlier evidence is there, the status
    /// starts at 0: an alarm is cleared by an operator removing its file, never by time.
    pub fn new(dir: &Path, webhook: Option<String>, metrics: AuditMetrics) -> AlarmSink {
        let dir = dir.join("evidence");
        let earlier = std::fs::read_dir(&dir).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("alarm-") && name.ends_with(".json")
                })
                .count()
        });
        if earlier > 0 {
            tracing::error!(
                dir = %dir.display(), files = earlier,
                "earlier audit alarms are on record: the status stays 0 until their evidence files are removed"
            );
            metrics.status.set(BAD);
        }
        AlarmSink {
            dir,
            webhook,
            metrics,
            seen: Mutex::new(HashSet::new()),
            seq: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &AuditMetrics {
        &self.metrics
    }

    /// Whether an alarm was raised (now or in an earlier run whose evidence is kept).
    pub fn alarmed(&self) -> bool {
        self.metrics.status.get() == BAD
    }

    /// Records the end of a round: consistent (if no alarm was ever raised) or unchecked.
    pub fn round_done(&self, checked_everything: bool) {
        self.metrics.rounds.inc();
        if !self.alarmed() {
            self.metrics.status.set(if checked_everything {
                CONSISTENT
            } else {
                UNCHECKED
            });
        }
    }

    /// Raises `alarm`: log line, evidence file, metrics, webhook (awaited, bounded). The
    /// same kind from the same source at the same height is raised once per run.
    /// Returns the evidence file, or `None` for a repeat.
    pub async fn raise(&self, alarm: Alarm) -> Option<PathBuf> {
        let key = (alarm.kind.clone(), alarm.source.clone(), alarm.height);
        let fresh = self
            .seen
            .lock()
            .is_ok_and(|mut s| s.len() < MAX_ALARMS && s.insert(key));
        self.metrics.status.set(BAD);
        if !fresh {
            tracing::warn!(kind = %alarm.kind, height = alarm.height, source = %alarm.source, "audit alarm repeated or over the limit of {MAX_ALARMS} per run: counted, not saved again");
            return None;
        }
        self.metrics
            .alarms
            .get_or_create(&vec![("kind".to_string(), alarm.kind.clone())])
            .inc();
        let now = crate::driver::now_ms();
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(format!(
            "alarm-{now}-{n}-{}-{}.json",
            alarm.kind, alarm.height
        ));
        let body = serde_json::to_string_pretty(&alarm).unwrap_or_default();
        let saved = std::fs::create_dir_all(&self.dir)
            .map_err(|e| e.to_string())
            .and_then(|()| write_atomic(&path, body.as_bytes()));
        if let Err(e) = &saved {
            tracing::error!(path = %path.display(), error = %e, "cannot save the alarm's evidence");
        }
        tracing::error!(
            chain = %alarm.chain,
            height = alarm.height,
            kind = %alarm.kind,
            source = %alarm.source,
            evidence_file = %path.display(),
            evidence = %alarm.evidence,
            "AUDIT ALARM: {}",
            alarm.summary
        );
        if let Some(url) = &self.webhook
            && let Err(e) = webhook::post_json(url, &alarm, Duration::from_secs(5), 3).await
        {
            tracing::error!(%url, error = %e, "the alarm webhook failed");
        }
        saved.ok().map(|()| path)
    }
}

/// The auditor's latest signed checkpoint with the certified header it names, kept in
/// `DIR/checkpoint.json` and served at `GET /checkpoint`.
pub struct CheckpointSlot {
    path: PathBuf,
    key: Keypair,
    latest: Mutex<Option<String>>,
}

impl CheckpointSlot {
    /// A slot saved at `path`, signed with `key`; the file's content is served until the
    /// first new checkpoint.
    pub fn new(path: PathBuf, key: Keypair) -> CheckpointSlot {
        let latest = crate::home::read_limited(&path, 1 << 20).ok();
        CheckpointSlot {
            path,
            key,
            latest: Mutex::new(latest),
        }
    }

    /// Checks that the replica holds the header this auditor last signed: a lost or
    /// swapped replica would otherwise re-trust whatever the endpoints show now.
    pub fn check_replica(&self, chain: &crate::chain::Chain) -> anyhow::Result<()> {
        use pyralog_ledger::Decode;
        use pyralog_storage::Store;
        let Some(text) = self.json() else {
            return Ok(());
        };
        let path = self.path.display();
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{path} is corrupt: {e}"))?;
        let bytes = v
            .get("signed")
            .and_then(serde_json::Value::as_str)
            .and_then(|t| hex::decode(t).ok())
            .ok_or_else(|| anyhow::anyhow!("{path} is corrupt: no signed checkpoint"))?;
        let signed = SignedCheckpoint::from_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("{path} is corrupt: {e}"))?;
        if signed.auditor != self.key.public() || signed.verify().is_err() {
            anyhow::bail!("{path} was not signed by this auditor's key");
        }
        let cp = &signed.checkpoint;
        let held = chain.store().header(cp.height)?;
        if !held.as_ref().is_some_and(|h| cp.names(h)) {
            anyhow::bail!(
                "{path} says this auditor verified height {} (header {}), but the replica does not hold that header: restore the replica, or move the state directory away to start over (which trusts whatever the endpoints show now)",
                cp.height,
                cp.header_hash.to_hex()
            );
        }
        Ok(())
    }

    /// The auditor's public key.
    pub fn auditor(&self) -> pyralog_crypto::PublicKey {
        self.key.public()
    }

    /// Signs and publishes a checkpoint of `header` (certified by `cert`).
    pub fn publish(&self, header: &Header, cert: &Certificate) -> Result<(), String> {
        let signed = SignedCheckpoint::sign(Checkpoint::of(header), &self.key);
        let text = checkpoint_json(&signed, header, cert);
        write_atomic(&self.path, text.as_bytes())?;
        if let Ok(mut l) = self.latest.lock() {
            *l = Some(text);
        }
        Ok(())
    }

    /// The JSON served at `GET /checkpoint` (`None` before the first checkpoint).
    pub fn json(&self) -> Option<String> {
        self.latest.lock().ok()?.clone()
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    pyralog_wallet::home::write_atomic(path, bytes).map_err(|e| e.to_string())
}

/// The exchange format of a signed checkpoint (docs/AUDITOR.md).
pub fn checkpoint_json(signed: &SignedCheckpoint, header: &Header, cert: &Certificate) -> String {
    let cp = &signed.checkpoint;
    let v = json!({
        "version": 1,
        "chain_id": cp.chain_id.as_str(),
        "height": cp.height,
        "log_size": cp.log_size,
        "log_root": cp.log_root.to_hex(),
        "header_hash": cp.header_hash.to_hex(),
        "auditor": signed.auditor.to_hex(),
        "signed": hex::encode(signed.to_bytes()),
        "header": hex::encode(header.to_bytes()),
        "certificate": hex::encode(cert.to_bytes()),
    });
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

/// The HTTP routes of an auditor's metrics address: `/metrics` and `/checkpoint`.
pub fn routes(
    render: impl Fn() -> String + Send + Sync + 'static,
    checkpoint: Arc<CheckpointSlot>,
) -> crate::metrics::Routes {
    Arc::new(move |path: &str| match path {
        "/metrics" => Some(Page::ok("text/plain; version=0.0.4", render())),
        "/checkpoint" => Some(match checkpoint.json() {
            Some(body) => Page::ok("application/json", body),
            None => Page {
                status: "503 Service Unavailable",
                content_type: "text/plain",
                body: "no checkpoint yet\n".into(),
            },
        }),
        _ => None,
    })
}
