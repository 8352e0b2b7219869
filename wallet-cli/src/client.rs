//! A JSON-RPC client of a node, and the node's answers decoded from their canonical bytes.
//!
//! Nothing here is trusted: objects are decoded from the `encoded` hex the node sends (the
//! bytes that were hashed and signed), never from its convenience JSON fields, and every
//! answer is checked by [`crate::light`] before use.

use std::time::Duration;

use jsonrpsee::core::ClientError;
use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::params::{ArrayParams, BatchRequestBuilder};
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use pyralog_ledger::{Certificate, Decode, Hash, Header, StateProof, Transaction};
use serde_json::Value;

use crate::error::{Result, WalletError, check, node, usage};

/// Error code of a node: nothing at that height / hash / key.
pub const NOT_FOUND: i32 = -32002;
/// Error code of a node: the transaction was rejected.
pub const TX_REJECTED: i32 = -32001;

/// Largest answer accepted from a node, in bytes.
pub const MAX_RESPONSE_BYTES: u32 = 64 << 20;

/// Most calls in one JSON-RPC batch, and most transactions in one `broadcast_txs` call.
pub const MAX_BATCH: usize = 256;

/// Most hex characters of transactions in one `broadcast_txs` call: half a node's default
/// request limit (`rpc.max_request_bytes`, 1 MiB).
pub const MAX_SUBMIT_HEX: usize = 512 * 1024;

/// A call that the node answered with an error.
#[derive(Clone, Debug)]
pub struct CallError {
    /// JSON-RPC error code.
    pub code: i32,
    /// Message.
    pub message: String,
    /// Data (for rejections: `{reason, message}`).
    pub data: Option<Value>,
}

impl CallError {
    fn of(e: &jsonrpsee::types::ErrorObject<'_>) -> CallError {
        CallError {
            code: e.code(),
            message: e.message().to_string(),
            data: e.data().and_then(|d| serde_json::from_str(d.get()).ok()),
        }
    }

    /// The rejection reason code (`nonce_replayed`, ...), if this is a rejection.
    pub fn reason(&self) -> Option<&str> {
        self.data.as_ref()?.get("reason")?.as_str()
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

/// A node reached over HTTP.
#[derive(Clone, Debug)]
pub struct Rpc {
    url: String,
    http: HttpClient,
}

fn params(values: Vec<Value>) -> Result<ArrayParams> {
    let mut p = ArrayParams::new();
    for v in values {
        p.insert(v)
            .map_err(|e| usage(format!("bad parameter: {e}")))?;
    }
    Ok(p)
}

/// How many of `txs` (hex strings) the next `broadcast_txs` call carries: at most
/// [`MAX_BATCH`] and [`MAX_SUBMIT_HEX`] characters, but at least one.
fn submit_chunk(txs: &[Value]) -> usize {
    let mut chars = 0;
    for (n, tx) in txs.iter().take(MAX_BATCH).enumerate() {
        chars += tx.as_str().map_or(0, str::len);
        if n > 0 && chars > MAX_SUBMIT_HEX {
            return n;
        }
    }
    txs.len().min(MAX_BATCH)
}

impl Rpc {
    /// A client of the node at `url` (`http://host:port`).
    pub fn new(url: &str, timeout: Duration) -> Result<Rpc> {
        let http = HttpClientBuilder::default()
            .request_timeout(timeout)
            .max_response_size(MAX_RESPONSE_BYTES)
            .build(url)
            .map_err(|e| usage(format!("--rpc {url}: {e}")))?;
        Ok(Rpc {
            url: url.to_string(),
            http,
        })
    }

    /// The node's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn transport(&self, e: ClientError) -> WalletError {
        node(format!("node {} cannot be reached: {e}", self.url))
    }

    /// One call; a node error is returned as the inner `Err`.
    pub async fn call(
        &self,
        method: &str,
        args: Vec<Value>,
    ) -> Result<std::result::Result<Value, CallError>> {
        match self.http.request::<Value, _>(method, params(args)?).await {
            Ok(v) => Ok(Ok(v)),
            Err(ClientError::Call(e)) => Ok(Err(CallError::of(&e))),
            Err(e) => Err(self.transport(e)),
        }
    }

    /// One call that must succeed.
    pub async fn must(&self, method: &str, args: Vec<Value>) -> Result<Value> {
        self.call(method, args)
            .await?
            .map_err(|e| node(format!("node {}: {method}: {e}", self.url)))
    }

    /// Many calls in as few HTTP round trips as possible (batches of [`MAX_BATCH`]).
    pub async fn batch(
        &self,
        calls: &[(&str, Vec<Value>)],
    ) -> Result<Vec<std::result::Result<Value, CallError>>> {
        let mut out = Vec::with_capacity(calls.len());
        for chunk in calls.chunks(MAX_BATCH) {
            let mut b = BatchRequestBuilder::new();
            for (method, args) in chunk {
                b.insert(method, params(args.clone())?)
                    .map_err(|e| usage(format!("bad parameter: {e}")))?;
            }
            let answers = self
                .http
                .batch_request::<Value>(b)
                .await
                .map_err(|e| self.transport(e))?;
            if answers.len() != chunk.len() {
                return Err(check(format!(
                    "node {} answered {} of {} calls of a batch",
                    self.url,
                    answers.len(),
                    chunk.len()
                )));
            }
            for a in answers {
                out.push(a.map_err(|e| CallError::of(&e)));
            }
        }
        Ok(out)
    }

    /// Submits transactions (hex strings, as `broadcast_tx` takes them) in `mode`
    /// (`async`, `sync` or `commit`) with `broadcast_txs`: in order, in calls of at most
    /// [`MAX_BATCH`] transactions and [`MAX_SUBMIT_HEX`] characters, each call's
    /// signatures checked as one batch by the node. One answer per transaction, as
    /// `broadcast_tx` would give it.
    pub async fn broadcast(
        &self,
        txs: &[Value],
        mode: &str,
    ) -> Result<Vec<std::result::Result<Value, CallError>>> {
        let mut out = Vec::with_capacity(txs.len());
        let mut rest = txs;
        while !rest.is_empty() {
            let (chunk, later) = rest.split_at(submit_chunk(rest));
            rest = later;
            let answer = self
                .call(
                    "broadcast_txs",
                    vec![Value::Array(chunk.to_vec()), Value::from(mode)],
                )
                .await?;
            let answers = match answer {
                Ok(Value::Array(answers)) if answers.len() == chunk.len() => answers,
                Ok(_) => {
                    return Err(check(format!(
                        "node {}: broadcast_txs did not answer each of {} transactions",
                        self.url,
                        chunk.len()
                    )));
                }
                Err(e) => return Err(node(format!("node {}: broadcast_txs: {e}", self.url))),
            };
            out.extend(answers.into_iter().map(|a| {
                match a.get("error") {
                    Some(e) => Err(CallError {
                        code: e
                            .get("code")
                            .and_then(Value::as_i64)
                            .and_then(|c| i32::try_from(c).ok())
                            .unwrap_or(0),
                        message: e
                            .get("message")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        data: e.get("data").cloned(),
                    }),
                    None => Ok(a),
                }
            }));
        }
        Ok(out)
    }

    /// The header and certificate this node serves at `height` (one round trip, not
    /// verified).
    pub async fn signed_at(&self, height: u64) -> Result<SignedHeader> {
        let answers = self
            .batch(&[
                ("header", vec![serde_json::json!(height)]),
                ("certificate", vec![serde_json::json!(height)]),
            ])
            .await?;
        let mut it = answers.into_iter();
        let (Some(h), Some(c)) = (it.next(), it.next()) else {
            return Err(check(format!("node {}: short batch answer", self.url)));
        };
        let (h, c) = match (h, c) {
            (Ok(h), Ok(c)) => (h, c),
            (Err(e), _) | (_, Err(e)) => {
                return Err(node(format!(
                    "node {}: no header at height {height}: {e}",
                    self.url
                )));
            }
        };
        Ok(SignedHeader {
            header: decode_value(&self.url, "header", &h)?,
            cert: decode_value(&self.url, "certificate", &c)?,
        })
    }
}

/// A malformed answer: a failed check (the server is broken or lying).
fn bad(url: &str, what: &str, why: impl std::fmt::Display) -> WalletError {
    check(format!("node {url} sent a malformed {what}: {why}"))
}

fn field<'a>(url: &str, v: &'a Value, name: &str) -> Result<&'a Value> {
    v.get(name).ok_or_else(|| bad(url, name, "missing field"))
}

/// Decodes the canonical object `what` from `f.encoded` (or `f` when it is a string).
pub fn decode_value<T: Decode>(url: &str, what: &str, f: &Value) -> Result<T> {
    let text = f
        .get("encoded")
        .unwrap_or(f)
        .as_str()
        .ok_or_else(|| bad(url, what, "not hex text"))?;
    let bytes = hex::decode(text).map_err(|e| bad(url, what, e))?;
    T::from_bytes(&bytes).map_err(|e| bad(url, what, e))
}

/// Decodes the canonical object in field `name` of `v` (see [`decode_value`]).
pub fn decode_encoded<T: Decode>(url: &str, v: &Value, name: &str) -> Result<T> {
    decode_value(url, name, field(url, v, name)?)
}

fn parse<T: serde::de::DeserializeOwned>(url: &str, v: &Value, name: &str) -> Result<T> {
    serde_json::from_value(field(url, v, name)?.clone()).map_err(|e| bad(url, name, e))
}

/// A header with the certificate a node sent for it (not yet verified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeader {
    /// The header.
    pub header: Header,
    /// Its certificate.
    pub cert: Certificate,
}

impl SignedHeader {
    /// From an answer with `header` and `certificate` fields.
    pub fn from_answer(url: &str, v: &Value) -> Result<SignedHeader> {
        Ok(SignedHeader {
            header: decode_encoded(url, v, "header")?,
            cert: decode_encoded(url, v, "certificate")?,
        })
    }
}

/// The answer of `tx`.
#[derive(Clone, Debug)]
pub struct TxAnswer {
    /// The transaction.
    pub tx: Transaction,
    /// Index in the block.
    pub index: u32,
    /// Position in the log.
    pub log_index: u64,
    /// Proof in the block's transaction tree.
    pub tx_proof: Vec<Hash>,
    /// Proof in the log.
    pub log_proof: Vec<Hash>,
    /// The block's header and certificate.
    pub signed: SignedHeader,
}

impl TxAnswer {
    /// Parses a `tx` answer.
    pub fn parse(url: &str, v: &Value) -> Result<TxAnswer> {
        Ok(TxAnswer {
            tx: decode_encoded(url, v, "tx")?,
            index: parse(url, v, "index")?,
            log_index: parse(url, v, "log_index")?,
            tx_proof: parse(url, v, "tx_proof")?,
            log_proof: parse(url, v, "log_proof")?,
            signed: SignedHeader::from_answer(url, v)?,
        })
    }
}

/// The answer of `get`.
#[derive(Clone, Debug)]
pub struct GetAnswer {
    /// Height of the state that answered.
    pub height: u64,
    /// The state record, if present.
    pub record: Option<Vec<u8>>,
    /// Its proof.
    pub proof: StateProof,
    /// The header and certificate of that height.
    pub signed: SignedHeader,
}

impl GetAnswer {
    /// Parses a `get` answer (also the entries of `history`).
    pub fn parse(url: &str, v: &Value) -> Result<GetAnswer> {
        let record = match field(url, v, "record")? {
            Value::Null => None,
            Value::String(s) => Some(hex::decode(s).map_err(|e| bad(url, "record", e))?),
            _ => return Err(bad(url, "record", "not hex text")),
        };
        Ok(GetAnswer {
            height: parse(url, v, "height")?,
            record,
            proof: parse(url, v, "proof")?,
            signed: SignedHeader::from_answer(url, v)?,
        })
    }
}

/// The answer of `history`.
#[derive(Clone, Debug)]
pub struct HistoryAnswer {
    /// Newest first.
    pub versions: Vec<GetAnswer>,
    /// Where to continue, if cut.
    pub next_height: Option<u64>,
}

impl HistoryAnswer {
    /// Parses a `history` answer.
    pub fn parse(url: &str, v: &Value) -> Result<HistoryAnswer> {
        let versions = field(url, v, "versions")?
            .as_array()
            .ok_or_else(|| bad(url, "versions", "not a list"))?
            .iter()
            .map(|e| GetAnswer::parse(url, e))
            .collect::<Result<_>>()?;
        Ok(HistoryAnswer {
            versions,
            next_height: parse(url, v, "next_height")?,
        })
    }
}

/// The answer of `log_consistency`: a newer certified header and the proof that its log
/// extends the older header's.
#[derive(Clone, Debug)]
pub struct ConsistencyAnswer {
    /// The server's header at the older height.
    pub old: Header,
    /// The newer header with its certificate.
    pub new: SignedHeader,
    /// The consistency proof.
    pub proof: Vec<Hash>,
}

impl ConsistencyAnswer {
    /// Parses a `log_consistency` answer.
    pub fn parse(url: &str, v: &Value) -> Result<ConsistencyAnswer> {
        Ok(ConsistencyAnswer {
            old: decode_encoded(url, v, "old")?,
            new: SignedHeader {
                header: decode_encoded(url, v, "new")?,
                cert: decode_encoded(url, v, "certificate")?,
            },
            proof: parse(url, v, "proof")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submissions_are_cut_by_count_and_by_size() {
        let small = vec![Value::from("00".repeat(200)); 600];
        assert_eq!(submit_chunk(&small), MAX_BATCH);
        assert_eq!(submit_chunk(&small[..10]), 10);
        // 64 KiB values: eight fit in half a MiB of hex, the ninth goes to the next call.
        let large = vec![Value::from("0".repeat(64 * 1024)); 20];
        assert_eq!(submit_chunk(&large), 8);
        // One transaction over the size still goes alone (the node judges it).
        let huge = vec![Value::from("0".repeat(MAX_SUBMIT_HEX + 2)); 3];
        assert_eq!(submit_chunk(&huge), 1);
        assert_eq!(submit_chunk(&[]), 0);
    }
}
