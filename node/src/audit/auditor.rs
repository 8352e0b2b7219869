//! The RPC auditor: rounds of re-verification of every endpoint's data.
//!
//! Each round:
//!
//! ```text
//!  heads ─▶ walk new blocks into the replica (Chain::commit_synced: certificate, link,
//!  (status)  BFT time, validator set, limits, tx signatures, nonces, re-execution to the
//!            header's tx_root, log_root and state_root)
//!        ─▶ per endpoint: log consistency from the last checkpoint to its head, its head
//!            equal to the replica's header, sampled (or all) log entries re-hashed from
//!            its blocks and re-proven, their state records proven in its state
//!        ─▶ peer auditors' cosigned checkpoints against the replica
//!        ─▶ sign and publish the new checkpoint
//! ```
//!
//! The replica is a [`Chain`] in `STATE/data`: the same code a full node runs, so the
//! auditor believes only what it re-executed itself. Its tip is the auditor's checkpoint,
//! kept across restarts; a server that later shows another history is compared with it
//! and never replaces it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pyralog_ledger::light::verify_signed_header;
use pyralog_ledger::state::{Namespace, state_key};
use pyralog_ledger::verify::{
    verify_block_contents, verify_log_consistency, verify_log_inclusion, verify_state,
};
use pyralog_ledger::{
    Block, Certificate, Decode, Genesis, Hash, Header, Payload, SignedCheckpoint, ValidatorSet,
};
use pyralog_storage::Store;
use pyralog_wallet::client::{
    CallError, ConsistencyAnswer, GetAnswer, NOT_FOUND, Rpc, SignedHeader, decode_encoded,
    decode_value,
};
use pyralog_wallet::error::WalletError;
use serde_json::{Value, json};

use super::alarm::{Alarm, AlarmSink, CheckpointSlot, block_evidence, header_evidence};
use super::webhook;
use crate::chain::{Chain, Fatal};

/// Heights fetched per batch while walking.
const WALK_BATCH: u64 = 32;
/// Log entries re-checked per batch.
const ENTRY_BATCH: usize = 64;
/// Distinct blocks fetched per batch of entries (answers are bounded in bytes).
const ENTRY_BLOCKS: usize = 8;
/// Peer checkpoints kept per peer until the replica reaches their height.
const MAX_PENDING: usize = 64;

/// How the auditor works.
pub struct Options {
    /// Re-check every log entry every round instead of a sample.
    pub full: bool,
    /// Entries re-checked per endpoint per round.
    pub sample: usize,
    /// Other auditors (`http://host:port`), whose checkpoints are compared.
    pub peers: Vec<String>,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// What one round found besides alarms (alarms go to the sink).
#[derive(Debug, Default)]
pub struct Report {
    /// What could not be checked, and why.
    pub unchecked: Vec<String>,
    /// Alarms raised in this round.
    pub alarms: usize,
}

/// A peer auditor's checkpoint with the certified header it names.
struct PeerCheckpoint {
    signed: SignedCheckpoint,
    header: Header,
    cert: Certificate,
}

/// The auditor.
pub struct Auditor {
    genesis: Genesis,
    validators: ValidatorSet,
    chain: Chain,
    endpoints: Vec<Rpc>,
    sink: Arc<AlarmSink>,
    checkpoint: Arc<CheckpointSlot>,
    opts: Options,
    pending: HashMap<String, Vec<PeerCheckpoint>>,
    /// Peers already caught with another history (one alarm per peer is enough).
    split: HashSet<String>,
    rng: u64,
}

/// A random 64-bit seed from the OS: the sample must not be predictable to a server.
fn os_seed() -> Result<u64, String> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| format!("no OS randomness for sampling: {e}"))?;
    Ok(u64::from_le_bytes(b) | 1)
}

impl Auditor {
    /// An auditor of `endpoints` keeping its replica in `chain`.
    pub fn new(
        genesis: Genesis,
        chain: Chain,
        endpoints: Vec<Rpc>,
        sink: Arc<AlarmSink>,
        checkpoint: Arc<CheckpointSlot>,
        opts: Options,
    ) -> Auditor {
        let validators = chain.validators().clone();
        Auditor {
            genesis,
            validators,
            chain,
            endpoints,
            sink,
            checkpoint,
            opts,
            pending: HashMap::new(),
            split: HashSet::new(),
            rng: 1,
        }
    }

    /// The verified height.
    pub fn height(&self) -> u64 {
        self.chain.height()
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    async fn alarm(
        &self,
        report: &mut Report,
        kind: &str,
        source: &str,
        height: u64,
        summary: String,
        evidence: Value,
    ) {
        report.alarms += 1;
        self.sink
            .raise(Alarm {
                chain: self.genesis.chain_id.to_string(),
                height,
                kind: kind.to_string(),
                source: source.to_string(),
                summary,
                evidence,
            })
            .await;
    }

    /// A failed fetch: malformed data is an alarm against its source; an unreachable or
    /// refusing endpoint is a gap in this round.
    async fn fetch_failed(&self, report: &mut Report, source: &str, height: u64, e: WalletError) {
        match e {
            WalletError::Check(msg) => {
                self.alarm(report, "malformed", source, height, msg, json!({}))
                    .await
            }
            other => report.unchecked.push(other.to_string()),
        }
    }

    /// One round over every endpoint and peer. A storage failure of the replica is fatal.
    pub async fn round(&mut self) -> Result<Report, Fatal> {
        let mut report = Report::default();
        match os_seed() {
            Ok(seed) => self.rng = seed,
            Err(e) => report.unchecked.push(e),
        }
        let checkpoint = self.chain.height();
        let mut heads = Vec::with_capacity(self.endpoints.len());
        for i in 0..self.endpoints.len() {
            let ep = self.endpoints[i].clone();
            let head = match ep.must("status", vec![]).await {
                Ok(v) => match v.get("height").and_then(Value::as_u64) {
                    Some(h) => Some(h),
                    None => {
                        let msg = format!("node {}: status without a height", ep.url());
                        self.fetch_failed(
                            &mut report,
                            ep.url(),
                            0,
                            pyralog_wallet::error::check(msg),
                        )
                        .await;
                        None
                    }
                },
                Err(e) => {
                    self.fetch_failed(&mut report, ep.url(), 0, e).await;
                    None
                }
            };
            self.sink.metrics().endpoint(ep.url(), head.is_some());
            heads.push(head);
        }
        for (i, head) in heads.iter().enumerate() {
            if let Some(head) = *head {
                let ep = self.endpoints[i].clone();
                self.walk(&ep, head, &mut report).await?;
            }
        }
        for (i, head) in heads.iter().enumerate() {
            let Some(head) = *head else { continue };
            let ep = self.endpoints[i].clone();
            if head < checkpoint {
                report.unchecked.push(format!(
                    "node {} is at height {head}, below the checkpoint {checkpoint}: behind or rolled back; checked at its own head only",
                    ep.url()
                ));
            }
            let at = head.min(self.chain.height());
            if at == 0 {
                report
                    .unchecked
                    .push(format!("node {} has no verified block to check", ep.url()));
                continue;
            }
            if self.check_head(&ep, checkpoint, at, &mut report).await? {
                self.check_entries(&ep, at, &mut report).await?;
            }
        }
        self.check_peers(&mut report).await?;
        if let Some((header, cert)) = self.chain.last()
            && let Err(e) = self.checkpoint.publish(header, cert)
        {
            report.unchecked.push(format!("saving the checkpoint: {e}"));
        }
        crate::metrics::set(&self.sink.metrics().height, self.chain.height());
        self.sink.round_done(report.unchecked.is_empty());
        Ok(report)
    }

    /// Fetches, verifies and re-executes `ep`'s blocks above the replica, up to `head`.
    async fn walk(&mut self, ep: &Rpc, head: u64, report: &mut Report) -> Result<(), Fatal> {
        // Big blocks can make a batch answer exceed the server's limit: halve it on a
        // transport error, down to one block.
        let mut batch = WALK_BATCH;
        while self.chain.height() < head {
            let from = self.chain.height() + 1;
            let to = head.min(from + batch - 1);
            let calls: Vec<(&str, Vec<Value>)> = (from..=to)
                .flat_map(|h| [("block", vec![json!(h)]), ("certificate", vec![json!(h)])])
                .collect();
            let answers = match ep.batch(&calls).await {
                Ok(a) => a,
                Err(WalletError::Node(_)) if batch > 1 => {
                    batch /= 2;
                    continue;
                }
                Err(e) => {
                    self.fetch_failed(report, ep.url(), from, e).await;
                    return Ok(());
                }
            };
            let mut it = answers.into_iter();
            for h in from..=to {
                let (Some(b), Some(c)) = (it.next(), it.next()) else {
                    report
                        .unchecked
                        .push(format!("node {}: short batch answer", ep.url()));
                    return Ok(());
                };
                let decoded = decode_pair(ep.url(), h, b, c);
                let (block, cert) = match decoded {
                    Ok(pair) => pair,
                    Err(e) => {
                        self.fetch_failed(report, ep.url(), h, e).await;
                        return Ok(());
                    }
                };
                if let Err(refused) = self.chain.commit_synced(block, cert)? {
                    let invalid = &refused.reason;
                    let summary = format!("node {} served block {h}: {invalid}", ep.url());
                    let mut evidence = block_evidence(&refused);
                    evidence["verified_previous"] = json!(
                        self.chain
                            .last()
                            .map(|(ph, pc)| header_evidence("replica", ph, Some(pc)))
                    );
                    self.alarm(report, invalid.kind(), ep.url(), h, summary, evidence)
                        .await;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The replica's header and certificate at `height`.
    fn ours(&self, height: u64) -> Result<(Header, Certificate), Fatal> {
        let store = self.chain.store();
        let header = store.header(height).map_err(|e| Fatal(e.to_string()))?;
        let cert = store
            .certificate(height)
            .map_err(|e| Fatal(e.to_string()))?;
        match (header, cert) {
            (Some(h), Some(c)) => Ok((h, c)),
            _ => Err(Fatal(format!(
                "the replica has no header at height {height}"
            ))),
        }
    }

    /// `theirs` is what `source` serves at a verified height, after one of its answers
    /// (`what`) disagreed with the replica there. Another certified header is a fork;
    /// an uncertified one an altered header. If it is the verified header after all, the
    /// disagreeing answer contradicts the server's own chain: `fallback`.
    #[allow(clippy::too_many_arguments)]
    async fn differs(
        &self,
        report: &mut Report,
        source: &str,
        theirs: &SignedHeader,
        what: &str,
        fallback: &str,
        answered: &Header,
    ) -> Result<(), Fatal> {
        let height = theirs.header.height;
        if height == 0 || height > self.chain.height() {
            let summary = format!(
                "node {source} {what}: a header at height {height}, not one the auditor verified (1..={})",
                self.chain.height()
            );
            let evidence =
                json!({ "served": header_evidence(source, &theirs.header, Some(&theirs.cert)) });
            self.alarm(report, "malformed", source, height, summary, evidence)
                .await;
            return Ok(());
        }
        let (h, c) = self.ours(height)?;
        let certified = verify_signed_header(
            &self.genesis,
            &self.validators,
            &theirs.header,
            &theirs.cert,
        );
        let (kind, summary) = if theirs.header.hash() == h.hash() {
            (
                fallback,
                format!(
                    "node {source} {what} with header {} at height {}, which is not the header it serves there ({})",
                    answered.hash().to_hex(),
                    answered.height,
                    h.hash().to_hex()
                ),
            )
        } else {
            match certified {
                Ok(()) => (
                    "fork",
                    format!(
                        "node {source} {what}: another certified header at height {height} ({} here, {} there): the history was rewritten or forked",
                        h.hash().to_hex(),
                        theirs.header.hash().to_hex()
                    ),
                ),
                Err(e) => (
                    "certificate",
                    format!(
                        "node {source} {what}: its header at height {height} is not certified: {e}"
                    ),
                ),
            }
        };
        let evidence = json!({
            "verified": header_evidence("replica", &h, Some(&c)),
            "served": header_evidence(source, &theirs.header, Some(&theirs.cert)),
            "answered": header_evidence(source, answered, None),
        });
        self.alarm(report, kind, source, height, summary, evidence)
            .await;
        Ok(())
    }

    /// Checks `ep`'s log from the checkpoint height to `at` (consistency proof) and its
    /// headers at both ends against the replica. Returns whether the endpoint agrees.
    async fn check_head(
        &self,
        ep: &Rpc,
        checkpoint: u64,
        at: u64,
        report: &mut Report,
    ) -> Result<bool, Fatal> {
        let from = if checkpoint == 0 {
            at
        } else {
            checkpoint.min(at)
        };
        let answer = match ep
            .must("log_consistency", vec![json!(from), json!(at)])
            .await
            .and_then(|v| ConsistencyAnswer::parse(ep.url(), &v))
        {
            Ok(a) => a,
            Err(e) => {
                self.fetch_failed(report, ep.url(), at, e).await;
                return Ok(false);
            }
        };
        let (old, _) = self.ours(from)?;
        let (new, new_cert) = self.ours(at)?;
        if answer.old.hash() != old.hash() {
            let theirs = match self.signed_at(ep, from).await {
                Ok(s) => s,
                Err(e) => {
                    self.fetch_failed(report, ep.url(), from, e).await;
                    return Ok(false);
                }
            };
            self.differs(
                report,
                ep.url(),
                &theirs,
                "answered log_consistency",
                "log_consistency",
                &answer.old,
            )
            .await?;
            return Ok(false);
        }
        if answer.new.header.hash() != new.hash() {
            let theirs = answer.new.clone();
            self.differs(
                report,
                ep.url(),
                &theirs,
                "answered log_consistency",
                "log_consistency",
                &answer.new.header,
            )
            .await?;
            return Ok(false);
        }
        if let Err(e) = verify_log_consistency(&old, &new, &answer.proof) {
            let summary = format!(
                "node {}: its log at height {at} is not proven to extend the log at the checkpoint (height {from}): {e}",
                ep.url()
            );
            let evidence = json!({
                "old": header_evidence("replica", &old, None),
                "new": header_evidence("replica", &new, Some(&new_cert)),
                "proof": answer.proof.iter().map(Hash::to_hex).collect::<Vec<_>>(),
            });
            self.alarm(report, "log_consistency", ep.url(), at, summary, evidence)
                .await;
            return Ok(false);
        }
        Ok(true)
    }

    /// [`Rpc::signed_at`], and the header must be for `height`.
    async fn signed_at(&self, ep: &Rpc, height: u64) -> Result<SignedHeader, WalletError> {
        let signed = ep.signed_at(height).await?;
        if signed.header.height != height {
            return Err(pyralog_wallet::error::check(format!(
                "node {} answered for height {height} with header {}",
                ep.url(),
                signed.header.height
            )));
        }
        Ok(signed)
    }

    /// The replica height whose block holds log entry `index` (binary search on sizes).
    fn height_of_entry(&self, index: u64, top: u64) -> Result<u64, Fatal> {
        let (mut lo, mut hi) = (1, top);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.ours(mid)?.0.log_size > index {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// The log entries to re-check this round, grouped by height: every entry with
    /// `--full` (one pass over the headers), else a random sample plus the newest.
    fn entries(&mut self, at: u64, log_size: u64) -> Result<Vec<(u64, Vec<u64>)>, Fatal> {
        let mut by_height: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        if self.opts.full || log_size <= self.opts.sample as u64 {
            let mut prev = 0;
            for h in 1..=at {
                let size = self.ours(h)?.0.log_size;
                if size > prev {
                    by_height.insert(h, (prev..size).collect());
                }
                prev = size;
            }
        } else if log_size > 0 {
            let mut picked: Vec<u64> = (0..self.opts.sample)
                .map(|_| self.next_random() % log_size)
                .collect();
            picked.push(log_size - 1);
            picked.sort_unstable();
            picked.dedup();
            for i in picked {
                by_height
                    .entry(self.height_of_entry(i, at)?)
                    .or_default()
                    .push(i);
            }
        }
        Ok(by_height.into_iter().collect())
    }

    /// Re-hashes log entries from `ep`'s own blocks and re-proves them: the block must be
    /// the one the replica verified at that height, its transactions must hash to the
    /// header's root, each entry must be proven in `ep`'s log at `at`, and the state
    /// records each transaction wrote must be proven in `ep`'s state at that height.
    async fn check_entries(&mut self, ep: &Rpc, at: u64, report: &mut Report) -> Result<(), Fatal> {
        let (head, _) = self.ours(at)?;
        let heights = self.entries(at, head.log_size)?;
        let mut chunk = Vec::new();
        let mut count = 0;
        for (h, idx) in heights {
            count += idx.len();
            chunk.push((h, idx));
            if count >= ENTRY_BATCH || chunk.len() >= ENTRY_BLOCKS {
                if !self.check_chunk(ep, &head, &chunk, report).await? {
                    return Ok(());
                }
                chunk.clear();
                count = 0;
            }
        }
        if !chunk.is_empty() {
            self.check_chunk(ep, &head, &chunk, report).await?;
        }
        Ok(())
    }

    /// One batch of [`Auditor::check_entries`]; `false` once something failed.
    async fn check_chunk(
        &self,
        ep: &Rpc,
        head: &Header,
        chunk: &[(u64, Vec<u64>)],
        report: &mut Report,
    ) -> Result<bool, Fatal> {
        let url = ep.url();
        let mut calls: Vec<(&str, Vec<Value>)> = Vec::new();
        for (h, idx) in chunk {
            calls.push(("block", vec![json!(h)]));
            calls.push(("certificate", vec![json!(h)]));
            for i in idx {
                calls.push(("log_inclusion", vec![json!(i), json!(head.height)]));
            }
        }
        let answers = match ep.batch(&calls).await {
            Ok(a) => a,
            Err(e) => {
                self.fetch_failed(report, url, head.height, e).await;
                return Ok(false);
            }
        };
        let mut it = answers.into_iter();
        let mut reads = Vec::new();
        let short = |report: &mut Report| {
            report
                .unchecked
                .push(format!("node {url}: short batch answer"));
            Ok(false)
        };
        for (h, idx) in chunk {
            let (Some(b), Some(c)) = (it.next(), it.next()) else {
                return short(report);
            };
            let (block, cert) = match decode_pair(url, *h, b, c) {
                Ok(p) => p,
                Err(e) => {
                    self.fetch_failed(report, url, *h, e).await;
                    return Ok(false);
                }
            };
            let (ours, ours_cert) = self.ours(*h)?;
            if block.header.hash() != ours.hash() {
                let theirs = SignedHeader {
                    header: block.header.clone(),
                    cert,
                };
                self.differs(
                    report,
                    url,
                    &theirs,
                    "served a block",
                    "malformed",
                    &block.header,
                )
                .await?;
                return Ok(false);
            }
            if let Err(e) = verify_block_contents(&block) {
                let summary = format!(
                    "node {url}: its block {h} does not match the certified header (its stored transactions were altered): {e}"
                );
                let evidence = json!({
                    "verified": header_evidence("replica", &ours, Some(&ours_cert)),
                    "served_block": hex::encode(pyralog_ledger::Encode::to_bytes(&block)),
                });
                self.alarm(report, "block_contents", url, *h, summary, evidence)
                    .await;
                return Ok(false);
            }
            let first = ours.log_size - u64::from(ours.tx_count);
            for i in idx {
                let answer = it.next();
                // Same header as the replica's, contents verified: the index is in range.
                let Some(tx) = block.txs.get((i - first) as usize) else {
                    return short(report);
                };
                let leaf = tx.hash();
                let proof = match answer.map(|a| parse_inclusion(url, a)) {
                    Some(Ok(p)) => p,
                    Some(Err(e)) => {
                        self.fetch_failed(report, url, *h, e).await;
                        return Ok(false);
                    }
                    None => return short(report),
                };
                if proof.0.hash() != head.hash() {
                    let height = proof.0.height;
                    if height != head.height {
                        let msg = format!(
                            "node {url} answered log_inclusion at height {height}, not at {}",
                            head.height
                        );
                        self.fetch_failed(report, url, height, pyralog_wallet::error::check(msg))
                            .await;
                        return Ok(false);
                    }
                    let signed = match self.signed_at(ep, height).await {
                        Ok(s) => s,
                        Err(e) => {
                            self.fetch_failed(report, url, height, e).await;
                            return Ok(false);
                        }
                    };
                    self.differs(
                        report,
                        url,
                        &signed,
                        "answered log_inclusion",
                        "inclusion",
                        &proof.0,
                    )
                    .await?;
                    return Ok(false);
                }
                if let Err(e) = verify_log_inclusion(head, &leaf, *i, &proof.1) {
                    let summary = format!(
                        "node {url}: log entry {i} (transaction {} of block {h}) is not proven in its log at height {}: {e}",
                        leaf.to_hex(),
                        head.height
                    );
                    let evidence = json!({
                        "head": header_evidence("replica", head, None),
                        "entry": i,
                        "leaf": leaf.to_hex(),
                        "proof": proof.1.iter().map(Hash::to_hex).collect::<Vec<_>>(),
                    });
                    self.alarm(report, "inclusion", url, *h, summary, evidence)
                        .await;
                    return Ok(false);
                }
                for (ns, key) in written(tx) {
                    reads.push((*h, ns, key));
                }
            }
            self.sink.metrics().entries_checked.inc_by(idx.len() as u64);
        }
        self.check_state(ep, &reads, report).await
    }

    /// Proves each state record a sampled transaction wrote in `ep`'s state at the height
    /// that wrote it, against the replica's certified header.
    async fn check_state(
        &self,
        ep: &Rpc,
        reads: &[(u64, Namespace, Vec<u8>)],
        report: &mut Report,
    ) -> Result<bool, Fatal> {
        let url = ep.url();
        let calls: Vec<(&str, Vec<Value>)> = reads
            .iter()
            .map(|(h, ns, key)| pyralog_wallet::query::get_call(*ns, key, *h))
            .collect();
        let answers = match ep.batch(&calls).await {
            Ok(a) => a,
            Err(e) => {
                self.fetch_failed(report, url, 0, e).await;
                return Ok(false);
            }
        };
        for ((h, ns, key), answer) in reads.iter().zip(answers) {
            let parsed = answer
                .map_err(|e| pyralog_wallet::error::node(format!("node {url}: get: {e}")))
                .and_then(|v| GetAnswer::parse(url, &v));
            let a = match parsed {
                Ok(a) => a,
                Err(e) => {
                    self.fetch_failed(report, url, *h, e).await;
                    return Ok(false);
                }
            };
            let (ours, ours_cert) = self.ours(*h)?;
            if a.signed.header.hash() != ours.hash() {
                let answered = a.signed.header.clone();
                let theirs = match self.signed_at(ep, *h).await {
                    Ok(s) => s,
                    Err(e) => {
                        self.fetch_failed(report, url, *h, e).await;
                        return Ok(false);
                    }
                };
                self.differs(report, url, &theirs, "answered get", "state", &answered)
                    .await?;
                return Ok(false);
            }
            let store = self.chain.store();
            let root = store
                .state_tree_of(&ours)
                .map_err(|e| Fatal(e.to_string()))?;
            let expected = pyralog_ledger::state::get(&**store, &root, &state_key(*ns, key))
                .map_err(|e| Fatal(e.to_string()))?;
            let proven = verify_state(&ours, *ns, key, a.record.as_deref(), &a.proof);
            if let Err(e) = proven.as_ref().map_err(ToString::to_string).and_then(|()| {
                if a.record == expected {
                    Ok(())
                } else {
                    Err("the record differs from the re-executed state".to_string())
                }
            }) {
                let summary = format!(
                    "node {url}: its {ns:?} record for key {} at height {h} does not verify: {e}",
                    hex::encode(key)
                );
                let evidence = json!({
                    "verified": header_evidence("replica", &ours, Some(&ours_cert)),
                    "namespace": format!("{ns:?}"),
                    "key": hex::encode(key),
                    "served_record": a.record.as_ref().map(hex::encode),
                    "expected_record": expected.as_ref().map(hex::encode),
                });
                self.alarm(report, "state", url, *h, summary, evidence)
                    .await;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Fetches each peer auditor's checkpoint and compares every one the replica has
    /// reached with the replica's header at that height.
    async fn check_peers(&mut self, report: &mut Report) -> Result<(), Fatal> {
        for peer in self.opts.peers.clone() {
            if self.split.contains(&peer) {
                continue;
            }
            match fetch_peer(&peer, self.opts.timeout).await {
                Ok(p) => {
                    let check = p
                        .signed
                        .verify()
                        .map_err(|e| format!("cosignature: {e}"))
                        .and_then(|()| {
                            verify_signed_header(
                                &self.genesis,
                                &self.validators,
                                &p.header,
                                &p.cert,
                            )
                            .map_err(|e| format!("header: {e}"))
                        })
                        .and_then(|()| {
                            if p.signed.checkpoint.names(&p.header) {
                                Ok(())
                            } else {
                                Err("the checkpoint does not name its header".into())
                            }
                        });
                    match check {
                        Ok(()) => {
                            let list = self.pending.entry(peer.clone()).or_default();
                            list.push(p);
                            if list.len() > MAX_PENDING {
                                list.remove(0);
                            }
                        }
                        Err(e) => report.unchecked.push(format!(
                            "peer auditor {peer}: its checkpoint does not verify: {e}"
                        )),
                    }
                }
                Err(e) => report.unchecked.push(format!("peer auditor {peer}: {e}")),
            }
        }
        let height = self.chain.height();
        for (peer, list) in std::mem::take(&mut self.pending) {
            if self.split.contains(&peer) {
                continue;
            }
            let mut later = Vec::new();
            for p in list {
                let h = p.header.height;
                // The replica's own header, or, for a peer ahead of it, the certified
                // header an endpoint serves at that height (not yet walked, but certified).
                let ours = if h <= height {
                    let (header, cert) = self.ours(h)?;
                    Some((SignedHeader { header, cert }, "replica".to_string()))
                } else {
                    self.certified_at(h).await
                };
                let Some((ours, source)) = ours else {
                    later.push(p);
                    continue;
                };
                self.sink.metrics().peer_checkpoints.inc();
                if ours.header.hash() == p.header.hash() {
                    continue;
                }
                let summary = format!(
                    "auditor {} ({peer}) verified another history: at height {h} it has header {}, this auditor's {source} {}",
                    p.signed.auditor.to_hex(),
                    p.header.hash().to_hex(),
                    ours.header.hash().to_hex()
                );
                let evidence = json!({
                    "verified": header_evidence(&source, &ours.header, Some(&ours.cert)),
                    "peer": header_evidence(&peer, &p.header, Some(&p.cert)),
                    "peer_checkpoint": hex::encode(pyralog_ledger::Encode::to_bytes(&p.signed)),
                    "peer_auditor": p.signed.auditor.to_hex(),
                    "this_auditor": self.checkpoint.auditor().to_hex(),
                });
                self.alarm(report, "split_view", &peer, h, summary, evidence)
                    .await;
                self.split.insert(peer.clone());
                break;
            }
            if !later.is_empty() && !self.split.contains(&peer) {
                report.unchecked.push(format!(
                    "peer auditor {peer} is ahead of every endpoint (height {}): compared in a later round",
                    later[later.len() - 1].header.height
                ));
                self.pending.insert(peer, later);
            }
        }
        Ok(())
    }

    /// A certified header at `height` from the first endpoint that has one.
    async fn certified_at(&self, height: u64) -> Option<(SignedHeader, String)> {
        for ep in &self.endpoints {
            if let Ok(s) = self.signed_at(ep, height).await
                && verify_signed_header(&self.genesis, &self.validators, &s.header, &s.cert).is_ok()
            {
                return Some((s, ep.url().to_string()));
            }
        }
        None
    }
}

/// The state records a transaction writes: its sender's account, and the key or digest.
fn written(tx: &pyralog_ledger::Transaction) -> Vec<(Namespace, Vec<u8>)> {
    let mut out = vec![(Namespace::Account, tx.sender.as_bytes().to_vec())];
    match &tx.payload {
        Payload::Put { key, .. } | Payload::Delete { key } => {
            out.push((Namespace::Kv, key.clone()))
        }
        Payload::Notarize { digest, .. } => out.push((Namespace::Notarization, digest.0.to_vec())),
    }
    out
}

fn decode_pair(
    url: &str,
    height: u64,
    block: Result<Value, CallError>,
    cert: Result<Value, CallError>,
) -> Result<(Block, Certificate), WalletError> {
    match (block, cert) {
        (Ok(b), Ok(c)) => {
            let block: Block = decode_value(url, "block", &b)?;
            let cert: Certificate = decode_value(url, "certificate", &c)?;
            if block.header.height != height || cert.height != height {
                return Err(pyralog_wallet::error::check(format!(
                    "node {url} answered for height {height} with block {} and certificate {}",
                    block.header.height, cert.height
                )));
            }
            Ok((block, cert))
        }
        (Err(e), _) | (_, Err(e)) if e.code == NOT_FOUND => Err(pyralog_wallet::error::node(
            format!("node {url} has no block {height} although its status says so: {e}"),
        )),
        (Err(e), _) | (_, Err(e)) => Err(pyralog_wallet::error::node(format!(
            "node {url}: block {height}: {e}"
        ))),
    }
}

fn parse_inclusion(
    url: &str,
    answer: Result<Value, CallError>,
) -> Result<(Header, Vec<Hash>), WalletError> {
    let v = answer
        .map_err(|e| pyralog_wallet::error::node(format!("node {url}: log_inclusion: {e}")))?;
    let header: Header = decode_encoded(url, &v, "header")?;
    let proof: Vec<Hash> = serde_json::from_value(v.get("proof").cloned().unwrap_or(Value::Null))
        .map_err(|e| {
        pyralog_wallet::error::check(format!("node {url} sent a malformed proof: {e}"))
    })?;
    Ok((header, proof))
}

/// Reads a peer auditor's `GET /checkpoint`.
async fn fetch_peer(peer: &str, timeout: Duration) -> Result<PeerCheckpoint, String> {
    let url = if peer.ends_with("/checkpoint") {
        peer.to_string()
    } else {
        format!("{}/checkpoint", peer.trim_end_matches('/'))
    };
    let body = webhook::get(&url, timeout).await?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))?;
    let field = |name: &str| -> Result<Vec<u8>, String> {
        let text = v
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{url}: no {name}"))?;
        hex::decode(text).map_err(|e| format!("{url}: {name}: {e}"))
    };
    Ok(PeerCheckpoint {
        signed: decode_field(&url, "signed", &field("signed")?)?,
        header: decode_field(&url, "header", &field("header")?)?,
        cert: decode_field(&url, "certificate", &field("certificate")?)?,
    })
}

fn decode_field<T: Decode>(url: &str, name: &str, bytes: &[u8]) -> Result<T, String> {
    T::from_bytes(bytes).map_err(|e| format!("{url}: {name}: {e}"))
}
