//! End-to-end: real `pyralog-testnet` and node processes on 127.0.0.1, in temporary
//! directories, always stopped at the end (a guard runs `down` even when a test fails).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonrpsee::http_client::HttpClient;
use pyralog_crypto::Keypair;
use pyralog_ledger::{ChainId, Decode, Encode, KvRecord, Payload, Transaction};
use pyralog_testnet::call;
use serde_json::{Value, json};

mod common;

use common::Net;

fn put(key: &Keypair, chain: &ChainId, nonce: u64, tag: &str) -> Transaction {
    Transaction::new_signed(
        key,
        chain.clone(),
        nonce,
        Payload::Put {
            key: format!("{tag}-{}-{nonce}", key.public().to_hex()).into_bytes(),
            value: vec![7; 100],
        },
    )
    .unwrap()
}

fn hex_tx(tx: &Transaction) -> Value {
    json!(hex::encode(tx.to_bytes()))
}

async fn height(c: &HttpClient) -> u64 {
    pyralog_testnet::height(c).await.unwrap_or(0)
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Submits every transaction (in order per account) round-robin to `clients`.
async fn submit(clients: &[HttpClient], txs: Vec<Transaction>) {
    let mut tasks = Vec::new();
    for (w, chunk) in txs.chunks(txs.len().div_ceil(8).max(1)).enumerate() {
        let chunk = chunk.to_vec();
        let clients = clients.to_vec();
        tasks.push(tokio::spawn(async move {
            for (i, tx) in chunk.iter().enumerate() {
                let c = &clients[(w + i) % clients.len()];
                let r = call(c, "broadcast_tx", vec![hex_tx(tx), json!("sync")]).await;
                let r = r.unwrap_or_else(|e| panic!("broadcast_tx failed: {e}"));
                assert!(
                    r["status"] == "pending" || r["status"] == "committed",
                    "{r}"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Asserts every node has identical headers (hence state roots) at 1..=`up_to`.
async fn assert_same_chain(clients: &[HttpClient], up_to: u64) {
    for h in 1..=up_to {
        let mut seen: Option<Value> = None;
        for c in clients {
            let hd = call(c, "header", vec![json!(h)]).await.unwrap();
            let key = json!([hd["hash"], hd["header"]["state_root"]]);
            match &seen {
                None => seen = Some(key),
                Some(s) => assert_eq!(s, &key, "nodes disagree at height {h}"),
            }
        }
    }
}

async fn tx_hashes_in_blocks(c: &HttpClient, up_to: u64) -> HashMap<String, u32> {
    let mut count = HashMap::new();
    for h in 1..=up_to {
        let b = call(c, "block", vec![json!(h)]).await.unwrap();
        for t in b["txs"].as_array().unwrap() {
            *count
                .entry(t["hash"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    count
}

fn accounts(n: usize, seed: u8) -> Vec<Keypair> {
    (0..n)
        .map(|i| {
            let mut s = [seed; 32];
            s[..8].copy_from_slice(&(i as u64).to_be_bytes());
            Keypair::from_seed(&s)
        })
        .collect()
}

/// Interleaves accounts so consecutive transactions come from different senders.
fn load(
    keys: &[Keypair],
    chain: &ChainId,
    per_account: u64,
    first_nonce: u64,
    tag: &str,
) -> Vec<Transaction> {
    let mut txs = Vec::new();
    for n in first_nonce..first_nonce + per_account {
        for k in keys {
            txs.push(put(k, chain, n, tag));
        }
    }
    txs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_validators_commit_2000_txs_exactly_once_survive_a_crash_and_reject_bad_txs() {
    let net = Net::up(4);
    let genesis = net.genesis();
    let chain = genesis.chain_id.clone();
    let clients = net.clients();
    let keys = accounts(100, 1);

    // 2,000 transactions round-robin to all nodes, all committed exactly once.
    let txs = load(&keys, &chain, 20, 0, "a");
    let wanted: Vec<String> = txs.iter().map(|t| t.hash().to_hex()).collect();
    let (h0, t0) = (height(&clients[0]).await, Instant::now());
    submit(&clients, txs.clone()).await;
    wait_until(
        "2000 committed transactions",
        Duration::from_secs(180),
        || async {
            call(&clients[0], "status", vec![]).await.unwrap()["log_size"].as_u64() >= Some(2000)
        },
    )
    .await;
    let top = height(&clients[0]).await;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "2000 txs submitted and committed in {secs:.2} s: {:.0} tx/s, {:.1} blocks/s",
        2000.0 / secs,
        (top - h0) as f64 / secs
    );
    wait_until(
        "all nodes at the same height",
        Duration::from_secs(30),
        || async {
            for c in &clients {
                if height(c).await < top {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let counts = tx_hashes_in_blocks(&clients[1], top).await;
    assert_eq!(counts.len(), 2000, "exactly the submitted transactions");
    for h in &wanted {
        assert_eq!(counts.get(h), Some(&1), "tx {h} committed once");
    }
    assert_same_chain(&clients, top).await;
    // Every node proves inclusion of a committed transaction.
    let p = call(&clients[2], "tx", vec![json!(wanted[1234])])
        .await
        .unwrap();
    assert!(p["tx_proof"].is_array() && p["certificate"]["encoded"].is_string());
    // Proofs of transactions spread over the blocks, asked in an order that goes back and
    // forth between them: each proves the transaction asked for, in its own block and in
    // the log, and node0 builds each block's proof once (its cache holds them all).
    let proven_blocks = || async {
        let m = reqwest_metrics(&net.manifest().nodes[0].metrics).await;
        common::metric(&m, "pyralog_rpc_proven_blocks_total")
            .unwrap_or_else(|| panic!("no proven blocks counter in {m}"))
    };
    let built_before = proven_blocks().await;
    let mut heights = std::collections::BTreeSet::new();
    for i in (0..2000).step_by(97).chain((0..2000).rev().step_by(89)) {
        let p = call(&clients[0], "tx", vec![json!(wanted[i])])
            .await
            .unwrap();
        let a = pyralog_wallet::client::TxAnswer::parse("node0", &p).unwrap();
        let h = &a.signed.header;
        assert_eq!(a.tx.hash().to_hex(), wanted[i]);
        pyralog_ledger::verify::verify_tx_inclusion(h, &a.tx.hash(), a.index, &a.tx_proof).unwrap();
        pyralog_ledger::verify::verify_log_inclusion(h, &a.tx.hash(), a.log_index, &a.log_proof)
            .unwrap();
        heights.insert(h.height);
    }
    assert!(heights.len() > 2, "the transactions span {heights:?}");
    assert_eq!(
        proven_blocks().await - built_before,
        heights.len() as f64,
        "node0 built the proofs of {heights:?}"
    );

    // Rejections, each with its reason.
    let reason = |r: Result<Value, jsonrpsee::core::ClientError>| match r {
        Err(jsonrpsee::core::ClientError::Call(e)) => {
            let d: Value = serde_json::from_str(e.data().unwrap().get()).unwrap();
            d["reason"].as_str().unwrap().to_string()
        }
        other => panic!("expected a rejection, got {other:?}"),
    };
    let again = call(
        &clients[3],
        "broadcast_tx",
        vec![hex_tx(&txs[0]), json!("sync")],
    )
    .await
    .unwrap();
    assert_eq!(again["status"], "committed", "resubmitting is idempotent");
    let replay = put(&keys[0], &chain, 0, "replay");
    assert_eq!(
        reason(call(&clients[0], "broadcast_tx", vec![hex_tx(&replay)]).await),
        "nonce_replayed"
    );
    let mut forged = put(&keys[1], &chain, 20, "forged");
    forged.nonce = 21;
    assert_eq!(
        reason(call(&clients[1], "broadcast_tx", vec![hex_tx(&forged)]).await),
        "bad_signature"
    );
    let other = put(&keys[2], &ChainId::new("another-chain").unwrap(), 20, "x");
    assert_eq!(
        reason(call(&clients[2], "broadcast_tx", vec![hex_tx(&other)]).await),
        "wrong_chain"
    );
    let mut huge = hex::encode(put(&keys[3], &chain, 20, "big").to_bytes());
    huge.push_str(&"00".repeat(70_000));
    assert_eq!(
        reason(call(&clients[3], "broadcast_tx", vec![json!(huge)]).await),
        "oversize"
    );
    let m = reqwest_metrics(&net.manifest().nodes[0].metrics).await;
    assert!(
        m.contains("pyralog_rejected_txs_total{reason=\"nonce_replayed\"} 1"),
        "{m}"
    );

    // A digest notarized before node3 is killed: after its restart, node3 knows it only
    // from its store (through its filter of present keys, built at start, then a walk).
    let notarizer = Keypair::from_seed(&[78; 32]);
    let notarize = |nonce: u64, digest: &[u8]| {
        Transaction::new_signed(
            &notarizer,
            chain.clone(),
            nonce,
            Payload::Notarize {
                digest: pyralog_crypto::content_digest(digest),
                meta: String::new(),
            },
        )
        .unwrap()
    };
    let first = call(
        &clients[0],
        "broadcast_tx",
        vec![hex_tx(&notarize(0, b"e2e digest")), json!("commit")],
    )
    .await
    .unwrap();
    assert_eq!(first["status"], "committed", "{first}");
    let notarized_at = first["committed"]["height"].as_u64().unwrap();
    wait_until(
        "node3 has the notarization",
        Duration::from_secs(30),
        || async { height(&clients[3]).await >= notarized_at },
    )
    .await;

    // SIGKILL node3 during load: the others keep committing.
    let more = load(&keys, &chain, 4, 20, "b");
    let (first, second) = more.split_at(200);
    submit(&clients[..3], first.to_vec()).await;
    net.cli(&["kill", "node3"]);
    let before = height(&clients[0]).await;
    submit(&clients[..3], second.to_vec()).await;
    wait_until("commits without node3", Duration::from_secs(60), || async {
        height(&clients[0]).await >= before + 3
            && call(&clients[0], "status", vec![]).await.unwrap()["log_size"].as_u64() >= Some(2400)
    })
    .await;
    // A transaction another one of the same sender and nonce superseded while its node was
    // down: a commit-mode call on that node hears `nonce_replayed` well before the commit
    // timeout, whether the node admitted it before it synced the winner (the waiter is
    // answered when the winner arrives) or after (admission refuses it). Which one happens
    // depends on timing; without the answer to the waiter, the first ran to the timeout
    // (about every other run).
    let late = Keypair::from_seed(&[77; 32]);
    let winner = put(&late, &chain, 0, "winner");
    let won = call(
        &clients[0],
        "broadcast_tx",
        vec![hex_tx(&winner), json!("commit")],
    )
    .await
    .unwrap();
    assert_eq!(won["status"], "committed", "{won}");
    // Restarted, it catches up to the same roots and votes again.
    net.cli(&["restart", "node3"]);
    let up = Instant::now();
    while call(&clients[3], "status", vec![]).await.is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "node3's RPC is not up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let loser = put(&late, &chain, 0, "loser");
    let asked = Instant::now();
    let lost = tokio::time::timeout(
        Duration::from_secs(20),
        call(
            &clients[3],
            "broadcast_tx",
            vec![hex_tx(&loser), json!("commit")],
        ),
    )
    .await
    .expect("answered before the commit timeout");
    assert_eq!(reason(lost), "nonce_replayed");
    eprintln!(
        "the superseded transaction was refused after {:?}",
        asked.elapsed()
    );
    let target = height(&clients[0]).await;
    wait_until("node3 caught up", Duration::from_secs(90), || async {
        height(&clients[3]).await >= target
    })
    .await;
    // The restarted node3 built its filter from its store and refuses the digest
    // notarized before its restart, and admits a new one.
    let filter_keys = || async {
        let m = reqwest_metrics(&net.manifest().nodes[3].metrics).await;
        common::metric(&m, "pyralog_state_key_filter_keys").unwrap_or(0.0)
    };
    wait_until("node3's filter built", Duration::from_secs(60), || async {
        filter_keys().await > 0.0
    })
    .await;
    // Its state walks are counted by where they found their nodes.
    let m = reqwest_metrics(&net.manifest().nodes[3].metrics).await;
    let reads =
        |from: &str| common::metric(&m, &format!("pyralog_state_node_reads{{from=\"{from}\"}}"));
    assert!(reads("place").is_some_and(|n| n > 0.0), "{m}");
    assert!(
        reads("recent").is_some() && reads("database").is_some(),
        "{m}"
    );
    // Peers it reconnected for want of their topics (after a restart like this one, it
    // may have had to).
    assert!(
        common::metric(&m, "pyralog_p2p_peers_reconnected_without_topics").is_some(),
        "{m}"
    );
    assert_eq!(
        reason(
            call(
                &clients[3],
                "broadcast_tx",
                vec![hex_tx(&notarize(1, b"e2e digest"))]
            )
            .await
        ),
        "already_notarized"
    );
    let fresh = call(
        &clients[3],
        "broadcast_tx",
        vec![hex_tx(&notarize(1, b"another e2e digest")), json!("sync")],
    )
    .await
    .unwrap();
    assert_eq!(fresh["status"], "pending", "{fresh}");
    let node3_key = call(&clients[3], "status", vec![]).await.unwrap()["validator"]
        .as_str()
        .unwrap()
        .to_string();
    let index = genesis
        .validator_set()
        .unwrap()
        .index_of(&pyralog_crypto::PublicKey::from_hex(&node3_key).unwrap())
        .unwrap() as u64;
    let after = height(&clients[0]).await;
    wait_until(
        "a certificate signed by node3",
        Duration::from_secs(60),
        || async {
            let h = height(&clients[0]).await;
            for x in after + 1..=h {
                let c = call(&clients[0], "certificate", vec![json!(x)])
                    .await
                    .unwrap();
                let votes = c["certificate"]["votes"].as_array().unwrap();
                if votes.iter().any(|v| v["validator"].as_u64() == Some(index)) {
                    return true;
                }
            }
            false
        },
    )
    .await;
    let top = height(&clients[3]).await.min(height(&clients[0]).await);
    assert_same_chain(&clients, top).await;
    assert!(
        net.log("node3").contains("synced=true"),
        "node3 caught up through block sync"
    );
}

async fn reqwest_metrics(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /{path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_chain_waits_for_transactions_before_proposing() {
    // An idle height's proposer waits `mempool.propose_wait_ms` (200 ms by default) for
    // a transaction it can include before it proposes an empty block, so a few seconds
    // hold at most one idle height per 200 ms (one more at each edge of the window).
    // Without the wait, the 10 ms commit pause allows about 35 a second.
    let net = Net::up(4);
    let chain = net.genesis().chain_id.clone();
    let clients = net.clients();
    // A transaction that cannot go in yet (its sender's nonce 0 is missing) waits in
    // every mempool; it must not end the wait.
    let keys = accounts(2, 9);
    let gap = call(
        &clients[0],
        "broadcast_tx",
        vec![hex_tx(&put(&keys[0], &chain, 3, "gap")), json!("sync")],
    )
    .await
    .unwrap();
    assert_eq!(gap["status"], "pending", "{gap}");
    let (h0, t0) = (height(&clients[0]).await, Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let h1 = height(&clients[0]).await;
    let secs = t0.elapsed();
    assert!(h1 > h0, "an idle chain still makes blocks");
    let most = secs.as_millis() as u64 / 200 + 2;
    assert!(h1 - h0 <= most, "{} idle heights in {secs:?}", h1 - h0);

    // A transaction that can go in ends the wait: it is proposed and committed.
    let r = call(
        &clients[2],
        "broadcast_tx",
        vec![hex_tx(&put(&keys[1], &chain, 0, "idle")), json!("commit")],
    )
    .await
    .unwrap();
    assert!(r["committed"]["height"].as_u64() > Some(h1), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_four_down_halts_without_forks_and_progress_resumes() {
    let net = Net::up(4);
    let clients = net.clients();
    let started = net.manifest();
    net.cli(&["kill", "node2"]);
    net.cli(&["kill", "node3"]);
    // A height that was in flight may still finish; then nothing commits.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stuck = [height(&clients[0]).await, height(&clients[1]).await];
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        [height(&clients[0]).await, height(&clients[1]).await],
        stuck,
        "two of four validators cannot commit"
    );
    // What the bench says of the validators when a load stops committing.
    let said = pyralog_testnet::bench::validators_state(&started).await;
    for expected in [
        format!("node0 at height {}, round ", stuck[0]),
        format!("node1 at height {}, round ", stuck[1]),
        "node2 not running (pid ".to_string(),
        "node3 not running (pid ".to_string(),
    ] {
        assert!(said.contains(&expected), "{expected} in {said}");
    }
    // The validators left count the dead ones out once their pings fail twice (about
    // 30 to 35 s after the kill; nothing resets their connections, and the overlay's
    // own expiry, 90 s, comes after this wait).
    let peers = |c| async move {
        let status = call(c, "status", vec![]).await.unwrap();
        status["peers"].as_u64()
    };
    wait_until(
        "the dead validators counted out of the peers",
        Duration::from_secs(60),
        || async { peers(&clients[0]).await == Some(1) && peers(&clients[1]).await == Some(1) },
    )
    .await;
    net.cli(&["restart", "node2"]);
    net.cli(&["restart", "node3"]);
    let goal = stuck[0].max(stuck[1]) + 3;
    wait_until(
        "progress after the restarts",
        Duration::from_secs(90),
        || async {
            for c in &clients {
                if height(c).await < goal {
                    return false;
                }
            }
            true
        },
    )
    .await;
    assert_same_chain(&clients, goal).await;
    wait_until(
        "every peer counted again",
        Duration::from_secs(30),
        || async {
            for c in &clients {
                if peers(c).await != Some(3) {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

fn decode<T: pyralog_ledger::Decode>(v: &Value) -> T {
    pyralog_node::rpc::decode_hex(v["encoded"].as_str().unwrap()).unwrap()
}

fn hashes(v: &Value) -> Vec<pyralog_ledger::Hash> {
    serde_json::from_value(v.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_answers_verify_with_the_ledger_functions_and_websocket_subscriptions_deliver() {
    use jsonrpsee::core::client::SubscriptionClientT;
    use pyralog_ledger::verify::{
        verify_certificate, verify_log_consistency, verify_log_inclusion, verify_state,
        verify_tx_inclusion,
    };
    use pyralog_ledger::{Certificate, Header, Namespace};

    let net = Net::up(4);
    let genesis = net.genesis();
    let set = genesis.validator_set().unwrap();
    let clients = net.clients();
    let c = &clients[1];
    let ws_url = net.manifest().nodes[1].rpc.replace("http://", "ws://");
    let ws = jsonrpsee::ws_client::WsClientBuilder::default()
        .build(&ws_url)
        .await
        .unwrap();
    let mut headers = ws
        .subscribe::<Value, _>(
            "subscribe_headers",
            jsonrpsee::rpc_params![],
            "unsubscribe_headers",
        )
        .await
        .unwrap();

    let key = Keypair::from_seed(&[9; 32]);
    let tx = Transaction::new_signed(
        &key,
        genesis.chain_id.clone(),
        0,
        Payload::Put {
            key: b"answer".to_vec(),
            value: b"42".to_vec(),
        },
    )
    .unwrap();
    let mut tx_sub = ws
        .subscribe::<Value, _>(
            "subscribe_tx",
            jsonrpsee::rpc_params![tx.hash().to_hex()],
            "unsubscribe_tx",
        )
        .await
        .unwrap();
    let sent = call(c, "broadcast_tx", vec![hex_tx(&tx), json!("commit")])
        .await
        .unwrap();
    assert_eq!(sent["status"], "committed");
    let at = sent["committed"]["height"].as_u64().unwrap();
    let note = tokio::time::timeout(Duration::from_secs(10), tx_sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(note["height"].as_u64(), Some(at));
    let h = tokio::time::timeout(Duration::from_secs(10), headers.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(h["height"].as_u64().unwrap() >= 1);

    // tx: inclusion in the block and in the log, under a certified header.
    let p = call(c, "tx", vec![json!(tx.hash().to_hex())])
        .await
        .unwrap();
    let header: Header = decode(&p["header"]);
    let cert: Certificate = decode(&p["certificate"]);
    verify_certificate(genesis.engine, &set, &header, &cert).unwrap();
    let index = p["index"].as_u64().unwrap() as u32;
    verify_tx_inclusion(&header, &tx.hash(), index, &hashes(&p["tx_proof"])).unwrap();
    let log_index = p["log_index"].as_u64().unwrap();
    verify_log_inclusion(&header, &tx.hash(), log_index, &hashes(&p["log_proof"])).unwrap();

    // get: the value and an absence, each proven against a certified header.
    let g = call(c, "get", vec![json!(hex::encode(b"answer"))])
        .await
        .unwrap();
    let gh: Header = decode(&g["header"]);
    verify_certificate(genesis.engine, &set, &gh, &decode(&g["certificate"])).unwrap();
    assert_eq!(g["value"], json!(hex::encode(b"42")));
    let record = hex::decode(g["record"].as_str().unwrap()).unwrap();
    assert_eq!(
        KvRecord::from_bytes(&record).unwrap().value.as_deref(),
        Some(&b"42"[..])
    );
    let proof = serde_json::from_value(g["proof"].clone()).unwrap();
    verify_state(&gh, Namespace::Kv, b"answer", Some(&record), &proof).unwrap();
    let mut forged = record.clone();
    *forged.last_mut().unwrap() ^= 1;
    assert!(verify_state(&gh, Namespace::Kv, b"answer", Some(&forged), &proof).is_err());
    let a = call(c, "get", vec![json!(hex::encode(b"nothing"))])
        .await
        .unwrap();
    assert!(a["value"].is_null());
    let ah: Header = decode(&a["header"]);
    let proof = serde_json::from_value(a["proof"].clone()).unwrap();
    verify_state(&ah, Namespace::Kv, b"nothing", None, &proof).unwrap();
    // An old height answers with the state then: absent before the put.
    let old = call(c, "get", vec![json!(hex::encode(b"answer")), json!(at - 1)])
        .await
        .unwrap();
    assert!(old["value"].is_null());

    // log_inclusion and log_consistency.
    wait_until("two more blocks", Duration::from_secs(30), || async {
        height(c).await >= at + 2
    })
    .await;
    let li = call(c, "log_inclusion", vec![json!(log_index)])
        .await
        .unwrap();
    let lh: Header = decode(&li["header"]);
    verify_log_inclusion(&lh, &tx.hash(), log_index, &hashes(&li["proof"])).unwrap();
    let lc = call(c, "log_consistency", vec![json!(1), json!(at + 1)])
        .await
        .unwrap();
    let (old, new): (Header, Header) = (decode(&lc["old"]), decode(&lc["new"]));
    verify_certificate(genesis.engine, &set, &new, &decode(&lc["certificate"])).unwrap();
    verify_log_consistency(&old, &new, &hashes(&lc["proof"])).unwrap();

    // The rest answer sensibly.
    let g = call(c, "genesis", vec![]).await.unwrap();
    assert_eq!(g["chain_id"], json!(genesis.chain_id.to_string()));
    let v = call(c, "validators", vec![]).await.unwrap();
    assert_eq!(v["hash"], json!(set.hash().to_hex()));
    assert_eq!(call(c, "evidence", vec![]).await.unwrap(), json!([]));
    let missing = call(c, "header", vec![json!(1_000_000)]).await;
    assert!(
        matches!(missing, Err(jsonrpsee::core::ClientError::Call(ref e)) if e.code() == -32002),
        "{missing:?}"
    );
    let bad_mode = call(c, "broadcast_tx", vec![hex_tx(&tx), json!("later")]).await;
    assert!(
        matches!(bad_mode, Err(jsonrpsee::core::ClientError::Call(ref e)) if e.code() == -32602),
        "{bad_mode:?}"
    );
}
