//! JSON-RPC 2.0 over HTTP and WebSocket on one port (jsonrpsee). Binary fields are hex.
//! Every method is documented with an example in docs/RPC.md.
//!
//! Reads go straight to the store; transaction submission goes through the driver,
//! which owns the mempool. Answers that a client should verify carry the certified
//! header and its certificate, so a light client needs nothing else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::core::{RpcResult, SubscriptionResult};
use jsonrpsee::proc_macros::rpc;
use jsonrpsee::server::{PendingSubscriptionSink, Server, ServerHandle};
use jsonrpsee::types::ErrorObjectOwned;
use pyralog_crypto::PublicKey;
use pyralog_ledger::state::{Namespace, StateProof, state_key};
use pyralog_ledger::{
    Block, Certificate, Decode, DuplicateVote, Encode, Genesis, GenesisValidator, Hash, Header,
    KvRecord, Transaction,
};
use pyralog_storage::{SledStore, Store};
use serde::{Serialize, Serializer};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Mode, RpcConfig};
use crate::driver::{Feeds, Request, Status, Submission, Submitted, TxCommitted};
use crate::mempool::Reject;
use crate::metrics::Metrics;
use crate::proven::{ProvenBlock, ProvenBlocks};

/// Error code: the transaction was rejected (data: `{reason, message}`).
pub const TX_REJECTED: i32 = -32001;
/// Error code: nothing at that height / hash / key.
pub const NOT_FOUND: i32 = -32002;
/// Error code: waiting for the commit timed out (the transaction stays pending).
pub const TIMEOUT: i32 = -32003;
/// Error code: the node failed internally (storage).
pub const INTERNAL: i32 = -32603;
/// Error code: invalid parameters.
pub const INVALID_PARAMS: i32 = -32602;

/// Serialises a hash as hex.
pub fn ser_hash<S: Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&h.to_hex())
}

fn err(code: i32, msg: impl Into<String>) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(code, msg.into(), None::<()>)
}

fn internal(e: impl std::fmt::Display) -> ErrorObjectOwned {
    err(INTERNAL, format!("storage: {e}"))
}

fn bad_params(msg: impl Into<String>) -> ErrorObjectOwned {
    err(INVALID_PARAMS, msg)
}

fn rejected(r: &Reject) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(
        TX_REJECTED,
        format!("transaction rejected: {r}"),
        Some(serde_json::json!({ "reason": r.code(), "message": r.to_string() })),
    )
}

/// Most transactions one `broadcast_txs` call may carry.
pub const MAX_BROADCAST_TXS: usize = 1024;

/// Largest batch whose signatures are checked on the async worker that received it; a
/// longer one (about 25 µs a signature) goes to a blocking thread.
const INLINE_BATCH_CHECK: usize = 64;

/// How a submission is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SubmitMode {
    /// Queued; not waited for.
    Async,
    /// The mempool's verdict.
    Sync,
    /// The commit (or why it will not come).
    Commit,
}

impl SubmitMode {
    fn parse(mode: Option<&str>) -> Result<SubmitMode, ErrorObjectOwned> {
        match mode.unwrap_or("sync") {
            "async" => Ok(SubmitMode::Async),
            "sync" => Ok(SubmitMode::Sync),
            "commit" => Ok(SubmitMode::Commit),
            other => Err(bad_params(format!(
                "mode {other:?}: expected async, sync or commit"
            ))),
        }
    }
}

/// A submitted transaction (hex), decoded within the size limit and hashed; its
/// signature is still to be checked.
fn decode_submission(tx: &str) -> Result<Submission, ErrorObjectOwned> {
    let max = pyralog_ledger::tx::MAX_TX_BYTES;
    let text = tx.strip_prefix("0x").unwrap_or(tx);
    if text.len() > 2 * max {
        return Err(rejected(&Reject::Oversize {
            len: text.len() / 2,
            max,
        }));
    }
    let bytes = hex::decode(text).map_err(|e| bad_params(format!("tx is not hex: {e}")))?;
    let decoded = crate::chain::decode_tx(&bytes).map_err(|r| rejected(&r))?;
    Ok(Submission {
        hash: decoded.hash(),
        tx: Box::new(decoded),
        encoded: bytes,
        waiter: None,
    })
}

/// The positions, ascending, of the submissions whose signatures are invalid: one
/// batch check for all (the rule gossip batches are checked by).
fn batch_check(subs: &[Submission]) -> Vec<usize> {
    let txs: Vec<&Transaction> = subs.iter().map(|s| &*s.tx).collect();
    let mut bad = pyralog_ledger::verify_signatures_here(&txs)
        .err()
        .unwrap_or_default();
    bad.sort_unstable();
    bad
}

/// One transaction's answer in `broadcast_txs`: what `broadcast_tx` would have
/// answered, its result or its error.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum BroadcastOutcome {
    /// Accepted: the `broadcast_tx` result.
    Ok(BroadcastView),
    /// Refused: the `broadcast_tx` error object.
    Err {
        /// Code, message and (for a rejection) `{reason, message}`.
        error: ErrorObjectOwned,
    },
}

fn parse_hex(what: &str, text: &str, max: usize) -> Result<Vec<u8>, ErrorObjectOwned> {
    let text = text.strip_prefix("0x").unwrap_or(text);
    if text.len() > 2 * max {
        return Err(bad_params(format!("{what} is over {max} bytes")));
    }
    hex::decode(text).map_err(|e| bad_params(format!("{what} is not hex: {e}")))
}

/// The node's status.
#[derive(Clone, Debug, Serialize)]
pub struct StatusView {
    /// The chain.
    pub chain_id: String,
    /// Hash of the genesis.
    pub genesis_hash: String,
    /// The consensus engine.
    pub engine: String,
    /// This node's libp2p peer id.
    pub peer_id: String,
    /// Validator or full node.
    pub mode: Mode,
    /// The validator key, when voting.
    pub validator: Option<PublicKey>,
    /// Software version.
    pub version: String,
    /// Live status.
    #[serde(flatten)]
    pub status: Status,
}

/// A header with its hash and canonical encoding.
#[derive(Clone, Debug, Serialize)]
pub struct HeaderView {
    /// Height.
    pub height: u64,
    /// Header hash (hex).
    #[serde(serialize_with = "ser_hash")]
    pub hash: Hash,
    /// The header's fields.
    pub header: Header,
    /// Canonical encoding (hex): what the hash and the votes cover.
    pub encoded: String,
}

impl HeaderView {
    /// The view of `header`.
    pub fn of(header: &Header) -> HeaderView {
        HeaderView {
            height: header.height,
            hash: header.hash(),
            header: header.clone(),
            encoded: hex::encode(header.to_bytes()),
        }
    }
}

/// A certificate with its canonical encoding.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateView {
    /// Height.
    pub height: u64,
    /// The certificate's fields.
    pub certificate: Certificate,
    /// Canonical encoding (hex).
    pub encoded: String,
}

impl CertificateView {
    fn of(c: &Certificate) -> CertificateView {
        CertificateView {
            height: c.height,
            certificate: c.clone(),
            encoded: hex::encode(c.to_bytes()),
        }
    }
}

/// A transaction with its hash and canonical encoding.
#[derive(Clone, Debug, Serialize)]
pub struct TxView {
    /// Transaction hash (hex).
    #[serde(serialize_with = "ser_hash")]
    pub hash: Hash,
    /// Its fields.
    pub tx: Transaction,
    /// Canonical encoding (hex).
    pub encoded: String,
}

impl TxView {
    fn of(tx: &Transaction) -> TxView {
        TxView {
            hash: tx.hash(),
            tx: tx.clone(),
            encoded: hex::encode(tx.to_bytes()),
        }
    }
}

/// A block.
#[derive(Clone, Debug, Serialize)]
pub struct BlockView {
    /// Its header.
    pub header: HeaderView,
    /// Its transactions.
    pub txs: Vec<TxView>,
    /// Canonical encoding of the whole block (hex).
    pub encoded: String,
}

/// The answer of `broadcast_tx`.
#[derive(Clone, Debug, Serialize)]
pub struct BroadcastView {
    /// Transaction hash (hex).
    #[serde(serialize_with = "ser_hash")]
    pub hash: Hash,
    /// `received` (async), `pending` (in the mempool) or `committed`.
    pub status: &'static str,
    /// The node already had it (pending or committed).
    pub already_known: bool,
    /// Where it was committed (status `committed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub committed: Option<TxCommitted>,
}

/// A committed transaction with its proofs.
#[derive(Clone, Debug, Serialize)]
pub struct TxProofView {
    /// The transaction.
    pub tx: TxView,
    /// Block height.
    pub height: u64,
    /// Index in the block.
    pub index: u32,
    /// Position in the log.
    pub log_index: u64,
    /// Inclusion proof in the block's transaction tree (`header.tx_root`).
    pub tx_proof: Vec<Hash>,
    /// Inclusion proof in the log at `header.log_size` (`header.log_root`).
    pub log_proof: Vec<Hash>,
    /// The certified header.
    pub header: HeaderView,
    /// Its certificate.
    pub certificate: CertificateView,
}

/// A state entry (or its absence) with a state proof.
#[derive(Clone, Debug, Serialize)]
pub struct GetView {
    /// The namespace: `kv`, `account` or `notarization`.
    pub namespace: Namespace,
    /// The key (hex).
    pub key: String,
    /// The height whose state answered.
    pub height: u64,
    /// The state record (hex of its canonical encoding: a `KvRecord`, an `Account` or a
    /// `NotarizationRecord`), or null if absent. This is what `proof` covers.
    pub record: Option<String>,
    /// For `kv`: the current value (hex), null if absent or deleted. Read from `record`.
    pub value: Option<String>,
    /// Proof against `header.state_root`.
    pub proof: StateProof,
    /// The certified header.
    pub header: HeaderView,
    /// Its certificate.
    pub certificate: CertificateView,
}

/// Versions of a key, newest first, each a `get` at the height that wrote it.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryView {
    /// The key (hex).
    pub key: String,
    /// `versions[0]` is the state at the height asked for; each next entry is the state
    /// at the previous entry's `KvRecord::prev_height`.
    pub versions: Vec<GetView>,
    /// When the list was cut at the limit: the height to ask for next.
    pub next_height: Option<u64>,
}

/// Most versions one `history` call returns.
pub const MAX_HISTORY_VERSIONS: u32 = 64;

/// Inclusion of a log entry.
#[derive(Clone, Debug, Serialize)]
pub struct LogInclusionView {
    /// The entry's position.
    pub index: u64,
    /// Proof against `header.log_root` at `header.log_size`.
    pub proof: Vec<Hash>,
    /// The certified header.
    pub header: HeaderView,
    /// Its certificate.
    pub certificate: CertificateView,
}

/// Consistency between two certified logs.
#[derive(Clone, Debug, Serialize)]
pub struct LogConsistencyView {
    /// The older header.
    pub old: HeaderView,
    /// The newer header.
    pub new: HeaderView,
    /// Proof that the newer log extends the older.
    pub proof: Vec<Hash>,
    /// Certificate of the newer header.
    pub certificate: CertificateView,
}

/// The validator set.
#[derive(Clone, Debug, Serialize)]
pub struct ValidatorsView {
    /// Hash of the set (what headers name).
    #[serde(serialize_with = "ser_hash")]
    pub hash: Hash,
    /// Total voting power.
    pub total_power: u64,
    /// The validators.
    pub validators: Vec<GenesisValidator>,
}

/// One piece of evidence.
#[derive(Clone, Debug, Serialize)]
pub struct EvidenceView {
    /// Evidence hash (hex).
    #[serde(serialize_with = "ser_hash")]
    pub hash: Hash,
    /// The two conflicting signed votes.
    pub evidence: DuplicateVote,
    /// Canonical encoding (hex).
    pub encoded: String,
}

/// The Pyralog node API.
#[rpc(server)]
pub trait NodeApi {
    /// Chain, height, peers, mempool.
    #[method(name = "status")]
    async fn status(&self) -> RpcResult<StatusView>;

    /// The genesis file.
    #[method(name = "genesis")]
    async fn genesis(&self) -> RpcResult<Genesis>;

    /// The validator set.
    #[method(name = "validators")]
    async fn validators(&self) -> RpcResult<ValidatorsView>;

    /// A committed header (latest when `height` is omitted).
    #[method(name = "header")]
    async fn header(&self, height: Option<u64>) -> RpcResult<HeaderView>;

    /// A committed block (latest when omitted).
    #[method(name = "block")]
    async fn block(&self, height: Option<u64>) -> RpcResult<BlockView>;

    /// The certificate of a committed header (latest when omitted).
    #[method(name = "certificate")]
    async fn certificate(&self, height: Option<u64>) -> RpcResult<CertificateView>;

    /// Submits a transaction (hex). `mode`: `async` (queue it and return), `sync` (return
    /// the mempool's verdict, the default), `commit` (wait for the certificate).
    #[method(name = "broadcast_tx")]
    async fn broadcast_tx(&self, tx: String, mode: Option<String>) -> RpcResult<BroadcastView>;

    /// Submits many transactions (hex) at once, in order, with one signature batch
    /// check: an array with one answer per transaction, each the result `broadcast_tx`
    /// would give or `{"error": …}` with its error. At most [`MAX_BROADCAST_TXS`].
    #[method(name = "broadcast_txs")]
    async fn broadcast_txs(
        &self,
        txs: Vec<String>,
        mode: Option<String>,
    ) -> RpcResult<Vec<BroadcastOutcome>>;

    /// A committed transaction by hash, with inclusion proofs.
    #[method(name = "tx")]
    async fn tx(&self, hash: String) -> RpcResult<TxProofView>;

    /// A state entry (or its absence) at `height` (latest when omitted), with a state
    /// proof. `namespace`: `kv` (default), `account` (key: public key) or `notarization`
    /// (key: digest).
    #[method(name = "get")]
    async fn get(
        &self,
        key: String,
        height: Option<u64>,
        namespace: Option<Namespace>,
    ) -> RpcResult<GetView>;

    /// The versions of a `kv` key from `height` (latest when omitted) back, newest first,
    /// at most `limit` (default and maximum 64).
    #[method(name = "history")]
    async fn history(
        &self,
        key: String,
        height: Option<u64>,
        limit: Option<u32>,
    ) -> RpcResult<HistoryView>;

    /// Inclusion proof of log entry `index` (a transaction hash the caller knows) in the log
    /// certified at `height` (latest if omitted).
    #[method(name = "log_inclusion")]
    async fn log_inclusion(&self, index: u64, height: Option<u64>) -> RpcResult<LogInclusionView>;

    /// Proof that the log at `to_height` (latest if omitted) extends the log at `from_height`.
    #[method(name = "log_consistency")]
    async fn log_consistency(
        &self,
        from_height: u64,
        to_height: Option<u64>,
    ) -> RpcResult<LogConsistencyView>;

    /// Evidence of validator misbehaviour this node has seen.
    #[method(name = "evidence")]
    async fn evidence(&self) -> RpcResult<Vec<EvidenceView>>;

    /// New committed headers.
    #[subscription(name = "subscribe_headers" => "new_header", unsubscribe = "unsubscribe_headers", item = HeaderView)]
    async fn subscribe_headers(&self) -> SubscriptionResult;

    /// Committed transactions: all, or only `hash` (hex) when given.
    #[subscription(name = "subscribe_tx" => "tx_committed", unsubscribe = "unsubscribe_tx", item = TxCommitted)]
    async fn subscribe_tx(&self, hash: Option<String>) -> SubscriptionResult;
}

/// Everything the RPC handlers use.
pub struct RpcContext {
    /// The store (read-only here).
    pub store: Arc<SledStore>,
    /// The genesis.
    pub genesis: Genesis,
    /// Its hash.
    pub genesis_hash: Hash,
    /// Peer id (text).
    pub peer_id: String,
    /// Mode.
    pub mode: Mode,
    /// Validator key.
    pub validator: Option<PublicKey>,
    /// Driver feeds.
    pub feeds: Feeds,
    /// Requests to the driver.
    pub requests: mpsc::Sender<Request>,
    /// How long `commit` mode waits.
    pub commit_timeout: Duration,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
}

struct Api(Arc<RpcContext>, Arc<ProvenBlocks>);

/// Blocks the RPC server builds at once to prove their transactions (CPU work, each
/// holding about one copy of its block besides what the cache holds).
const PROOF_BUILDS: usize = 2;

impl Api {
    /// Hands transactions whose signatures were checked to the driver and answers each
    /// as `mode` asks, in order.
    async fn submit(
        &self,
        subs: Vec<Submission>,
        mode: SubmitMode,
    ) -> Vec<Result<BroadcastView, ErrorObjectOwned>> {
        if subs.is_empty() {
            return Vec::new();
        }
        let hashes: Vec<Hash> = subs.iter().map(|s| s.hash).collect();
        let mut committed = Vec::new();
        let subs = subs
            .into_iter()
            .map(|mut s| {
                if mode == SubmitMode::Commit {
                    let (w, c) = oneshot::channel();
                    s.waiter = Some(w);
                    committed.push(c);
                }
                s
            })
            .collect();
        let (reply, answer) = oneshot::channel();
        let unavailable = || Err(rejected(&Reject::Unavailable("shutting down".into())));
        if self
            .0
            .requests
            .send(Request::Submit { txs: subs, reply })
            .await
            .is_err()
        {
            return hashes.iter().map(|_| unavailable()).collect();
        }
        if mode == SubmitMode::Async {
            let logged = hashes.clone();
            tokio::spawn(async move {
                if let Ok(verdicts) = answer.await {
                    for (hash, v) in logged.iter().zip(verdicts) {
                        if let Err(r) = v {
                            tracing::debug!(tx = %hash.to_hex(), reason = %r, "async transaction rejected");
                        }
                    }
                }
            });
            return hashes
                .into_iter()
                .map(|hash| {
                    Ok(BroadcastView {
                        hash,
                        status: "received",
                        already_known: false,
                        committed: None,
                    })
                })
                .collect();
        }
        let Ok(verdicts) = answer.await else {
            return hashes.iter().map(|_| unavailable()).collect();
        };
        // Every wait for a commit ends at the same moment, however many there are.
        let deadline = tokio::time::Instant::now() + self.0.commit_timeout;
        let mut committed = committed.into_iter();
        let mut out = Vec::with_capacity(hashes.len());
        for (hash, verdict) in hashes.into_iter().zip(verdicts) {
            let waiting = committed.next();
            let already = match verdict {
                Err(r) => {
                    out.push(Err(rejected(&r)));
                    continue;
                }
                Ok(Submitted::Committed(loc)) => {
                    out.push(Ok(BroadcastView {
                        hash,
                        status: "committed",
                        already_known: true,
                        committed: Some(loc),
                    }));
                    continue;
                }
                Ok(Submitted::Pending { already }) => already,
            };
            let Some(waiting) = waiting else {
                out.push(Ok(BroadcastView {
                    hash,
                    status: "pending",
                    already_known: already,
                    committed: None,
                }));
                continue;
            };
            out.push(match tokio::time::timeout_at(deadline, waiting).await {
                Ok(Ok(Ok(loc))) => Ok(BroadcastView {
                    hash,
                    status: "committed",
                    already_known: already,
                    committed: Some(loc),
                }),
                Ok(Ok(Err(reason))) => Err(rejected(&reason)),
                Ok(Err(_)) => unavailable(),
                Err(_) => Err(err(
                    TIMEOUT,
                    format!(
                        "not committed within {} s; the transaction is pending (poll `tx` {})",
                        self.0.commit_timeout.as_secs(),
                        hash.to_hex()
                    ),
                )),
            });
        }
        out
    }

    fn height_or_latest(&self, height: Option<u64>) -> RpcResult<u64> {
        let tip = self.0.store.tip().map_err(internal)?.height;
        match height {
            None if tip == 0 => Err(err(NOT_FOUND, "no block committed yet")),
            None => Ok(tip),
            Some(h) if h == 0 || h > tip => Err(err(
                NOT_FOUND,
                format!("no committed block at height {h} (committed height is {tip})"),
            )),
            Some(h) => Ok(h),
        }
    }

    fn header_at(&self, h: u64) -> RpcResult<Header> {
        self.0
            .store
            .header(h)
            .map_err(internal)?
            .ok_or_else(|| err(NOT_FOUND, format!("no header at height {h}")))
    }

    fn cert_at(&self, h: u64) -> RpcResult<Certificate> {
        self.0
            .store
            .certificate(h)
            .map_err(internal)?
            .ok_or_else(|| err(NOT_FOUND, format!("no certificate at height {h}")))
    }

    /// The entry of `raw` in `namespace` at height `h`, and for `kv` its decoded record.
    fn get_at(
        &self,
        namespace: Namespace,
        raw: &[u8],
        h: u64,
    ) -> RpcResult<(GetView, Option<KvRecord>)> {
        let header = self.header_at(h)?;
        let root = self.0.store.state_tree_of(&header).map_err(internal)?;
        let (record, proof) =
            pyralog_ledger::state::prove(&*self.0.store, &root, &state_key(namespace, raw))
                .map_err(internal)?;
        let kv = match (&record, namespace) {
            (Some(bytes), Namespace::Kv) => Some(KvRecord::from_bytes(bytes).map_err(internal)?),
            _ => None,
        };
        let view = GetView {
            namespace,
            key: hex::encode(raw),
            height: h,
            record: record.map(hex::encode),
            value: kv
                .as_ref()
                .and_then(|r| r.value.as_deref())
                .map(hex::encode),
            proof,
            header: HeaderView::of(&header),
            certificate: CertificateView::of(&self.cert_at(h)?),
        };
        Ok((view, kv))
    }

    fn block_at(&self, h: u64) -> RpcResult<Block> {
        self.0
            .store
            .block(h)
            .map_err(internal)?
            .ok_or_else(|| err(NOT_FOUND, format!("no block at height {h}")))
    }

    /// The block at `h` as `tx` proves its transactions, from [`ProvenBlocks`] or built
    /// and kept there. A committed block never changes, so a held one is never stale.
    async fn proven_block(&self, h: u64) -> RpcResult<Arc<ProvenBlock>> {
        let store = self.0.store.clone();
        let (block, _) = self
            .1
            .get(h, move || {
                let block = store
                    .block(h)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("no block at height {h}"))?;
                Ok(ProvenBlock::new(block))
            })
            .await
            .map_err(internal)?;
        Ok(block)
    }
}

#[jsonrpsee::core::async_trait]
impl NodeApiServer for Api {
    async fn status(&self) -> RpcResult<StatusView> {
        let g = &self.0.genesis;
        Ok(StatusView {
            chain_id: g.chain_id.to_string(),
            genesis_hash: self.0.genesis_hash.to_hex(),
            engine: g.engine.name().to_string(),
            peer_id: self.0.peer_id.clone(),
            mode: self.0.mode,
            validator: self.0.validator,
            version: env!("CARGO_PKG_VERSION").to_string(),
            status: self.0.feeds.status.borrow().clone(),
        })
    }

    async fn genesis(&self) -> RpcResult<Genesis> {
        Ok(self.0.genesis.clone())
    }

    async fn validators(&self) -> RpcResult<ValidatorsView> {
        let set = self.0.genesis.validator_set().map_err(internal)?;
        Ok(ValidatorsView {
            hash: set.hash(),
            total_power: set.total_power(),
            validators: self.0.genesis.validators.clone(),
        })
    }

    async fn header(&self, height: Option<u64>) -> RpcResult<HeaderView> {
        let h = self.height_or_latest(height)?;
        Ok(HeaderView::of(&self.header_at(h)?))
    }

    async fn block(&self, height: Option<u64>) -> RpcResult<BlockView> {
        let h = self.height_or_latest(height)?;
        let b = self.block_at(h)?;
        Ok(BlockView {
            header: HeaderView::of(&b.header),
            txs: b.txs.iter().map(TxView::of).collect(),
            encoded: hex::encode(b.to_bytes()),
        })
    }

    async fn certificate(&self, height: Option<u64>) -> RpcResult<CertificateView> {
        let h = self.height_or_latest(height)?;
        Ok(CertificateView::of(&self.cert_at(h)?))
    }

    async fn broadcast_tx(&self, tx: String, mode: Option<String>) -> RpcResult<BroadcastView> {
        let mode = SubmitMode::parse(mode.as_deref())?;
        let sub = decode_submission(&tx)?;
        // Signatures are checked here, on the RPC worker threads, not in the driver.
        sub.tx
            .verify_signature()
            .map_err(|_| rejected(&Reject::BadSignature))?;
        self.submit(vec![sub], mode)
            .await
            .pop()
            .unwrap_or_else(|| Err(rejected(&Reject::Unavailable("no answer".into()))))
    }

    async fn broadcast_txs(
        &self,
        txs: Vec<String>,
        mode: Option<String>,
    ) -> RpcResult<Vec<BroadcastOutcome>> {
        let mode = SubmitMode::parse(mode.as_deref())?;
        if txs.len() > MAX_BROADCAST_TXS {
            return Err(bad_params(format!(
                "{} transactions: at most {MAX_BROADCAST_TXS} a call",
                txs.len()
            )));
        }
        let mut out: Vec<Option<Result<BroadcastView, ErrorObjectOwned>>> = Vec::new();
        let mut decoded = Vec::new();
        let mut slots = Vec::new();
        for text in &txs {
            match decode_submission(text) {
                Ok(sub) => {
                    slots.push(out.len());
                    decoded.push(sub);
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        drop(txs);
        // One batch check for all of them; off the async workers when it is long.
        let (decoded, bad) = if decoded.len() <= INLINE_BATCH_CHECK {
            let bad = batch_check(&decoded);
            (decoded, bad)
        } else {
            tokio::task::spawn_blocking(move || {
                let bad = batch_check(&decoded);
                (decoded, bad)
            })
            .await
            .map_err(|e| internal(format!("signature check: {e}")))?
        };
        let mut good = Vec::with_capacity(decoded.len());
        let mut good_slots = Vec::with_capacity(decoded.len());
        for (i, (sub, slot)) in decoded.into_iter().zip(slots).enumerate() {
            if bad.binary_search(&i).is_ok() {
                out[slot] = Some(Err(rejected(&Reject::BadSignature)));
            } else {
                good.push(sub);
                good_slots.push(slot);
            }
        }
        for (slot, res) in good_slots.into_iter().zip(self.submit(good, mode).await) {
            out[slot] = Some(res);
        }
        Ok(out
            .into_iter()
            .map(|r| match r {
                Some(Ok(view)) => BroadcastOutcome::Ok(view),
                Some(Err(error)) => BroadcastOutcome::Err { error },
                None => BroadcastOutcome::Err {
                    error: rejected(&Reject::Unavailable("no answer".into())),
                },
            })
            .collect())
    }

    async fn tx(&self, hash: String) -> RpcResult<TxProofView> {
        let hash = Hash::from_hex(hash.strip_prefix("0x").unwrap_or(&hash))
            .map_err(|e| bad_params(format!("hash: {e}")))?;
        let loc = self
            .0
            .store
            .tx_location(&hash)
            .map_err(internal)?
            .ok_or_else(|| {
                err(
                    NOT_FOUND,
                    format!("transaction {} is not committed", hash.to_hex()),
                )
            })?;
        let proven = self.proven_block(loc.height).await?;
        let index = loc.index as usize;
        let found = proven
            .tx(index)
            .ok_or_else(|| internal("transaction index out of its block"))?
            .map_err(internal)?;
        let tx_proof = proven.proof(index).ok_or_else(|| internal("no tx proof"))?;
        let header = proven.header();
        let log_proof =
            pyralog_ledger::log::inclusion_proof(&*self.0.store, loc.log_index, header.log_size)
                .map_err(internal)?;
        Ok(TxProofView {
            tx: TxView {
                hash: found.hash,
                encoded: hex::encode(found.encoded),
                tx: found.tx,
            },
            height: loc.height,
            index: loc.index,
            log_index: loc.log_index,
            tx_proof,
            log_proof,
            header: HeaderView::of(header),
            certificate: CertificateView::of(&self.cert_at(loc.height)?),
        })
    }

    async fn get(
        &self,
        key: String,
        height: Option<u64>,
        namespace: Option<Namespace>,
    ) -> RpcResult<GetView> {
        let namespace = namespace.unwrap_or(Namespace::Kv);
        let raw = parse_hex("key", &key, pyralog_ledger::tx::MAX_KEY_BYTES)?;
        let h = self.height_or_latest(height)?;
        Ok(self.get_at(namespace, &raw, h)?.0)
    }

    async fn history(
        &self,
        key: String,
        height: Option<u64>,
        limit: Option<u32>,
    ) -> RpcResult<HistoryView> {
        let raw = parse_hex("key", &key, pyralog_ledger::tx::MAX_KEY_BYTES)?;
        let limit = limit.unwrap_or(MAX_HISTORY_VERSIONS);
        if limit == 0 || limit > MAX_HISTORY_VERSIONS {
            return Err(bad_params(format!(
                "limit must be between 1 and {MAX_HISTORY_VERSIONS}"
            )));
        }
        let mut h = self.height_or_latest(height)?;
        let mut versions = Vec::new();
        loop {
            let (view, record) = self.get_at(Namespace::Kv, &raw, h)?;
            let prev = record.map_or(0, |r| r.prev_height);
            versions.push(view);
            let next_height = if prev == 0 {
                None
            } else if versions.len() as u32 == limit {
                Some(prev)
            } else {
                h = prev;
                continue;
            };
            return Ok(HistoryView {
                key: hex::encode(&raw),
                versions,
                next_height,
            });
        }
    }

    async fn log_inclusion(&self, index: u64, height: Option<u64>) -> RpcResult<LogInclusionView> {
        let h = self.height_or_latest(height)?;
        let header = self.header_at(h)?;
        if index >= header.log_size {
            return Err(err(
                NOT_FOUND,
                format!(
                    "log index {index} is past the log size {} at height {h}",
                    header.log_size
                ),
            ));
        }
        let proof = pyralog_ledger::log::inclusion_proof(&*self.0.store, index, header.log_size)
            .map_err(internal)?;
        Ok(LogInclusionView {
            index,
            proof,
            header: HeaderView::of(&header),
            certificate: CertificateView::of(&self.cert_at(h)?),
        })
    }

    async fn log_consistency(
        &self,
        from_height: u64,
        to_height: Option<u64>,
    ) -> RpcResult<LogConsistencyView> {
        let to = self.height_or_latest(to_height)?;
        if from_height == 0 || from_height > to {
            return Err(bad_params(format!(
                "from_height must be between 1 and {to}"
            )));
        }
        let old = self.header_at(from_height)?;
        let new = self.header_at(to)?;
        let proof =
            pyralog_ledger::log::consistency_proof(&*self.0.store, old.log_size, new.log_size)
                .map_err(internal)?;
        Ok(LogConsistencyView {
            old: HeaderView::of(&old),
            new: HeaderView::of(&new),
            proof,
            certificate: CertificateView::of(&self.cert_at(to)?),
        })
    }

    async fn evidence(&self) -> RpcResult<Vec<EvidenceView>> {
        let bytes = self
            .0
            .store
            .meta(crate::driver::EVIDENCE_KEY)
            .map_err(internal)?;
        let items = match bytes {
            None => Vec::new(),
            Some(b) => crate::driver::decode_evidence(&b).map_err(internal)?,
        };
        Ok(items
            .into_iter()
            .map(|e| EvidenceView {
                hash: e.hash(),
                encoded: hex::encode(e.to_bytes()),
                evidence: e,
            })
            .collect())
    }

    async fn subscribe_headers(&self, pending: PendingSubscriptionSink) -> SubscriptionResult {
        let mut rx = self.0.feeds.headers.subscribe();
        let sink = pending.accept().await?;
        loop {
            tokio::select! {
                _ = sink.closed() => break,
                h = rx.recv() => match h {
                    Ok(h) => {
                        let msg = serde_json::value::to_raw_value(&HeaderView::of(&h))?;
                        if sink.send(msg).await.is_err() {
                            break;
                        }
                    }
                    // A slow subscriber skips headers; it can fetch them by height.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                },
            }
        }
        Ok(())
    }

    async fn subscribe_tx(
        &self,
        pending: PendingSubscriptionSink,
        hash: Option<String>,
    ) -> SubscriptionResult {
        let filter = match hash {
            None => None,
            Some(h) => match Hash::from_hex(h.strip_prefix("0x").unwrap_or(&h)) {
                Ok(h) => Some(h),
                Err(e) => {
                    pending.reject(bad_params(format!("hash: {e}"))).await;
                    return Ok(());
                }
            },
        };
        let mut rx = self.0.feeds.txs.subscribe();
        let sink = pending.accept().await?;
        // Already committed: say so at once.
        if let Some(h) = filter
            && let Some(loc) = self.0.store.tx_location(&h)?
        {
            let c = TxCommitted {
                hash: h,
                height: loc.height,
                index: loc.index,
                log_index: loc.log_index,
            };
            sink.send(serde_json::value::to_raw_value(&c)?).await?;
            return Ok(());
        }
        loop {
            tokio::select! {
                _ = sink.closed() => break,
                t = rx.recv() => match t {
                    Ok(t) => {
                        if filter.is_some_and(|f| f != t.hash) {
                            continue;
                        }
                        if sink.send(serde_json::value::to_raw_value(&t)?).await.is_err() {
                            break;
                        }
                        if filter.is_some() {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                },
            }
        }
        Ok(())
    }
}

/// Starts the server; returns its bound address and handle (stop it to shut down).
pub async fn serve(cfg: &RpcConfig, ctx: RpcContext) -> anyhow::Result<(SocketAddr, ServerHandle)> {
    let config = jsonrpsee::server::ServerConfig::builder()
        .max_request_body_size(cfg.max_request_bytes)
        .max_response_body_size(cfg.max_response_bytes)
        .max_connections(cfg.max_connections)
        .max_subscriptions_per_connection(cfg.max_subscriptions_per_connection)
        .build();
    let server = Server::builder()
        .set_config(config)
        .build(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("RPC cannot listen on {}: {e}", cfg.listen))?;
    let addr = server.local_addr()?;
    let proven = Arc::new(ProvenBlocks::with_metrics(
        usize::try_from(cfg.proof_cache_mib)
            .unwrap_or(usize::MAX)
            .saturating_mul(1 << 20),
        PROOF_BUILDS,
        ctx.metrics.rpc_proven_blocks.clone(),
        ctx.metrics.rpc_proof_cache_bytes.clone(),
    ));
    let handle = server.start(Api(Arc::new(ctx), proven).into_rpc());
    Ok((addr, handle))
}

/// Decodes a hex-encoded, canonical value (used by tests and tools).
pub fn decode_hex<T: Decode>(text: &str) -> Result<T, String> {
    let bytes = hex::decode(text).map_err(|e| e.to_string())?;
    T::from_bytes(&bytes).map_err(|e| e.to_string())
}
