//! Verified reads: every answer is checked against the light client's trusted head with the
//! ledger's own verification functions before it is returned.

use pyralog_ledger::exec::Account;
use pyralog_ledger::state::Namespace;
use pyralog_ledger::verify::{verify_log_inclusion, verify_state, verify_tx_inclusion};
use pyralog_ledger::{Decode, Hash, Header, KvRecord};
use serde_json::{Value, json};

use crate::client::{CallError, GetAnswer, HistoryAnswer, NOT_FOUND, Rpc, TxAnswer};
use crate::error::{Result, check, node};
use crate::light::LightClient;

fn ns_name(ns: Namespace) -> &'static str {
    match ns {
        Namespace::Account => "account",
        Namespace::Notarization => "notarization",
        Namespace::Kv => "kv",
    }
}

/// The arguments of a `get` call.
pub fn get_call(ns: Namespace, key: &[u8], height: u64) -> (&'static str, Vec<Value>) {
    (
        "get",
        vec![json!(hex::encode(key)), json!(height), json!(ns_name(ns))],
    )
}

/// Checks a `get` answer for `key` at `height`: the header is certified (and is the trusted
/// one at the trusted height) and the proof shows the record, or its absence, in that
/// header's state. Returns the record.
pub fn check_get(
    lc: &LightClient,
    rpc: &Rpc,
    ns: Namespace,
    key: &[u8],
    height: u64,
    answer: std::result::Result<Value, CallError>,
) -> Result<Option<Vec<u8>>> {
    let v = answer.map_err(|e| node(format!("node {}: get: {e}", rpc.url())))?;
    let a = GetAnswer::parse(rpc.url(), &v)?;
    if a.height != height || a.signed.header.height != height {
        return Err(check(format!(
            "node {} answered get at height {} (header {}), not at the height asked, {height}",
            rpc.url(),
            a.height,
            a.signed.header.height
        )));
    }
    lc.check_header(rpc.url(), &a.signed)?;
    verify_state(&a.signed.header, ns, key, a.record.as_deref(), &a.proof).map_err(|e| {
        check(format!(
            "node {}: the {} entry it sent for key {} at height {height} does not verify: {e}",
            rpc.url(),
            ns_name(ns),
            hex::encode(key)
        ))
    })?;
    Ok(a.record)
}

/// A verified read of one state entry at `height`.
pub async fn get(
    lc: &LightClient,
    rpc: &Rpc,
    ns: Namespace,
    key: &[u8],
    height: u64,
) -> Result<Option<Vec<u8>>> {
    let (method, args) = get_call(ns, key, height);
    let answer = rpc.call(method, args).await?;
    check_get(lc, rpc, ns, key, height, answer)
}

/// Decodes a record the proof has covered; one that does not decode means the chain
/// stored something this client does not understand.
pub fn decode_record<T: Decode>(what: &str, bytes: &[u8]) -> Result<T> {
    T::from_bytes(bytes).map_err(|e| check(format!("proven {what} record does not decode: {e}")))
}

/// The next nonce an account record says (0 for an account never used).
pub fn account_nonce(record: Option<Vec<u8>>) -> Result<u64> {
    record.map_or(Ok(0), |b| {
        Ok(decode_record::<Account>("account", &b)?.next_nonce)
    })
}

/// The verified next nonce of `sender` at `height`.
pub async fn next_nonce(
    lc: &LightClient,
    rpc: &Rpc,
    sender: &pyralog_crypto::PublicKey,
    height: u64,
) -> Result<u64> {
    account_nonce(get(lc, rpc, Namespace::Account, sender.as_bytes(), height).await?)
}

/// The verified record of a key-value `key` at `height` (`None`: never written).
pub async fn get_kv(
    lc: &LightClient,
    rpc: &Rpc,
    key: &[u8],
    height: u64,
) -> Result<Option<KvRecord>> {
    get(lc, rpc, Namespace::Kv, key, height)
        .await?
        .map(|b| decode_record("key-value", &b))
        .transpose()
}

/// One verified version of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// Height that wrote it.
    pub height: u64,
    /// BFT time of that height's block.
    pub time_ms: u64,
    /// The value, `None` if deleted.
    pub value: Option<Vec<u8>>,
}

/// Every version of `key` as of the trusted head `head`, newest first, each proven in the
/// state of the height that wrote it. The versions are linked by the heights the records
/// name, so a server cannot leave one out.
pub async fn history(lc: &LightClient, rpc: &Rpc, key: &[u8], head: u64) -> Result<Vec<Version>> {
    let mut versions = Vec::new();
    let mut expected = head;
    let mut first = true;
    loop {
        let v = rpc
            .must("history", vec![json!(hex::encode(key)), json!(expected)])
            .await?;
        let answer = HistoryAnswer::parse(rpc.url(), &v)?;
        if answer.versions.is_empty() {
            return Err(check(format!(
                "node {} answered history with no entry",
                rpc.url()
            )));
        }
        let mut next = None;
        for a in answer.versions {
            if let Some(prev) = next {
                expected = prev;
            }
            if a.height != expected || a.signed.header.height != expected {
                return Err(check(format!(
                    "node {} skipped a version: history entry at height {}, the chain of versions leads to height {expected}",
                    rpc.url(),
                    a.height
                )));
            }
            lc.check_header(rpc.url(), &a.signed)?;
            let h = &a.signed.header;
            verify_state(h, Namespace::Kv, key, a.record.as_deref(), &a.proof).map_err(|e| {
                check(format!(
                    "node {}: history entry at height {expected} does not verify: {e}",
                    rpc.url()
                ))
            })?;
            let Some(bytes) = a.record else {
                if first {
                    return Ok(Vec::new());
                }
                return Err(check(format!(
                    "node {}: the chain of versions leads to height {expected}, where the key is proven absent",
                    rpc.url()
                )));
            };
            let record: KvRecord = decode_record("key-value", &bytes)?;
            if !first && record.height != expected {
                return Err(check(format!(
                    "version at height {expected} was written at height {}",
                    record.height
                )));
            }
            first = false;
            // The version's own header gives its time; fetch it unless this is it.
            versions.push((record.height, record.value, h.clone()));
            if record.prev_height == 0 {
                return finish(lc, rpc, versions).await;
            }
            next = Some(record.prev_height);
        }
        match (answer.next_height, next) {
            (Some(n), Some(p)) if n == p => expected = n,
            (n, p) => {
                return Err(check(format!(
                    "node {} cut the history at height {n:?}, but the chain of versions continues at {p:?}",
                    rpc.url()
                )));
            }
        }
    }
}

/// Attaches each version's block time: the first entry's header is the head, not the
/// height that wrote it, so that one header is fetched and verified.
async fn finish(
    lc: &LightClient,
    rpc: &Rpc,
    raw: Vec<(u64, Option<Vec<u8>>, Header)>,
) -> Result<Vec<Version>> {
    let mut out = Vec::with_capacity(raw.len());
    for (height, value, header) in raw {
        let time_ms = if header.height == height {
            header.time_ms
        } else {
            let s = rpc.signed_at(height).await?;
            lc.check_header(rpc.url(), &s)?;
            s.header.time_ms
        };
        out.push(Version {
            height,
            time_ms,
            value,
        });
    }
    Ok(out)
}

/// Fetches committed transactions by hash: `None` for those the node does not have.
pub async fn fetch_txs(rpc: &Rpc, hashes: &[Hash]) -> Result<Vec<Option<TxAnswer>>> {
    let calls: Vec<_> = hashes
        .iter()
        .map(|h| ("tx", vec![json!(h.to_hex())]))
        .collect();
    let answers = rpc.batch(&calls).await?;
    answers
        .into_iter()
        .zip(hashes)
        .map(|(a, h)| match a {
            Ok(v) => {
                let t = TxAnswer::parse(rpc.url(), &v)?;
                if t.tx.hash() != *h {
                    return Err(check(format!(
                        "node {} answered for transaction {} with another transaction {}",
                        rpc.url(),
                        h.to_hex(),
                        t.tx.hash().to_hex()
                    )));
                }
                Ok(Some(t))
            }
            Err(e) if e.code == NOT_FOUND => Ok(None),
            Err(e) => Err(node(format!("node {}: tx: {e}", rpc.url()))),
        })
        .collect()
}

/// Verifies a committed transaction: signature, header, and inclusion in the block and in
/// the log. Moves the light client forward first if the block is above its head.
pub async fn check_tx(
    lc: &mut LightClient,
    rpc: &Rpc,
    witnesses: &[Rpc],
    t: &TxAnswer,
) -> Result<()> {
    if t.signed.header.height > lc.height() {
        lc.update(rpc, witnesses).await?;
    }
    lc.check_header(rpc.url(), &t.signed)?;
    let hash = t.tx.hash();
    t.tx.verify_signature()
        .map_err(|_| check(format!("transaction {} has a bad signature", hash.to_hex())))?;
    let h = &t.signed.header;
    if h.log_size.checked_sub(h.tx_count as u64) != t.log_index.checked_sub(t.index as u64) {
        return Err(check(format!(
            "node {}: log index {} does not match index {} of block {}",
            rpc.url(),
            t.log_index,
            t.index,
            h.height
        )));
    }
    verify_tx_inclusion(&t.signed.header, &hash, t.index, &t.tx_proof)
        .and_then(|()| verify_log_inclusion(&t.signed.header, &hash, t.log_index, &t.log_proof))
        .map_err(|e| {
            check(format!(
                "node {}: transaction {} is not proven in block {}: {e}",
                rpc.url(),
                hash.to_hex(),
                t.signed.header.height
            ))
        })
}
