//! Auditors against real testnets (processes on 127.0.0.1): quiet on an honest network,
//! and an alarm (exit status, evidence file, metric, webhook) for each kind of tampering:
//! a lying RPC proxy, a rewritten history, a node whose database was edited on disk, and
//! two histories shown to two auditors.
//!
//! The auditor runs as `pyralog-testnet node audit ...`, which is exactly `pyralog-node
//! audit`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonrpsee::http_client::HttpClient;
use jsonrpsee::types::ErrorObjectOwned;
use pyralog_crypto::Keypair;
use pyralog_ledger::{Block, Certificate, Decode, Encode, Payload, SignedCheckpoint, TxTree};
use pyralog_testnet::client;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::{EXE, Net, certify, flip_last_hex, forward, metric, serve_proxy, succeed};

struct Run {
    code: i32,
    err: String,
}

/// `pyralog-node audit ARGS --once`, bounded in time.
async fn audit_once(args: &[String]) -> Run {
    let mut cmd = tokio::process::Command::new(EXE);
    cmd.args(["node", "audit", "--once"])
        .args(args)
        .env("RUST_LOG", "info")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the audit finishes within 120 s")
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A continuous auditor, killed on drop.
struct Auditor {
    child: tokio::process::Child,
    metrics: String,
}

impl Auditor {
    fn start(args: &[String]) -> Auditor {
        let metrics = format!("127.0.0.1:{}", free_port());
        let child = tokio::process::Command::new(EXE)
            .args([
                "node",
                "audit",
                "--interval",
                "300ms",
                "--metrics",
                &metrics,
            ])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Auditor {
            child,
            metrics: format!("http://{metrics}"),
        }
    }

    /// The value of the sample `name` (see [`metric`]), once it is served.
    async fn metric(&self, name: &str) -> Option<f64> {
        let text = http_get(&format!("{}/metrics", self.metrics)).await?;
        metric(&text, name)
    }
}

/// The body of a `GET` (None if unreachable or not 200).
async fn http_get(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let (addr, path) = rest.split_at(rest.find('/')?);
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// A local webhook receiver: every JSON body POSTed to it.
struct Hooks {
    url: String,
    got: Arc<Mutex<Vec<Value>>>,
}

impl Hooks {
    async fn start() -> Hooks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/alarm", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            assert!(head.starts_with("POST /alarm "), "{head}");
                            sink.lock()
                                .unwrap()
                                .push(serde_json::from_str(body).unwrap());
                            break;
                        }
                    }
                }
                let _ = sock
                    .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        Hooks { url, got }
    }

    fn kinds(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|v| v["kind"].as_str().unwrap().to_string())
            .collect()
    }
}

/// The alarms saved under `state/evidence`.
fn evidence(state: &Path) -> Vec<Value> {
    let Ok(dir) = std::fs::read_dir(state.join("evidence")) else {
        return Vec::new();
    };
    dir.map(|e| {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        serde_json::from_str(&text).unwrap()
    })
    .collect()
}

/// `pyralog wallet ...` against `rpc`, which must succeed.
fn wallet(net: &Net, rpc: &str, args: &[&str]) {
    let genesis = net.manifest().genesis;
    succeed(
        std::process::Command::new(EXE)
            .args(["wallet", "--home"])
            .arg(net.dir.join("wallet"))
            .args(["--rpc", rpc, "--genesis"])
            .arg(genesis)
            .args(args),
        &format!("{args:?}"),
    );
}

/// Some transactions of every kind: notarizations, puts, a delete.
fn transactions(net: &Net, rpc: &str) {
    let file = net.dir.join("doc.txt");
    std::fs::write(&file, "audited document\n").unwrap();
    if !net.dir.join("wallet").exists() {
        wallet(net, rpc, &["key", "new"]);
    }
    wallet(net, rpc, &["notarize", file.to_str().unwrap(), "--force"]);
    wallet(net, rpc, &["put", "color", "blue"]);
    wallet(net, rpc, &["put", "shape", "round"]);
    wallet(net, rpc, &["delete", "color"]);
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_stay_quiet_on_an_honest_network_and_keep_their_checkpoint() {
    let net = Net::up_with(&["--validators", "4", "--auditors", "1"]);
    let m = net.manifest();
    let rpcs: Vec<String> = m.nodes[..4].iter().map(|n| n.rpc.clone()).collect();
    let node_auditor = m.nodes[4].metrics.trim_end_matches("/metrics").to_string();
    transactions(&net, &rpcs[0]);
    let hooks = Hooks::start().await;
    let state = net.dir.join("audit-state");
    let mut args = strings(&[
        "--genesis",
        m.genesis.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--webhook",
        &hooks.url,
        "--full",
        "--peer",
        &node_auditor,
    ]);
    for r in &rpcs {
        args.extend(["--rpc".to_string(), r.clone()]);
    }
    let mut auditor = Auditor::start(&args);
    // Many rounds while the chain grows and more transactions commit.
    let start = Instant::now();
    let mut more = 0;
    loop {
        let rounds = auditor.metric("pyralog_audit_rounds_total").await;
        if rounds.is_some_and(|r| r >= 10.0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "10 rounds within 60 s"
        );
        if more < 2 {
            more += 1;
            transactions(&net, &rpcs[more]);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(auditor.metric("pyralog_audit_status").await, Some(1.0));
    assert!(auditor.metric("pyralog_audit_height").await.unwrap() >= 3.0);
    assert!(
        auditor
            .metric("pyralog_audit_entries_checked_total")
            .await
            .unwrap()
            >= 10.0
    );
    for r in &rpcs {
        let up = format!("pyralog_audit_endpoint_up{{endpoint=\"{r}\"}}");
        assert_eq!(auditor.metric(&up).await, Some(1.0), "{up}");
    }
    // Its checkpoint is served, cosigned and names a certified header.
    let cp: Value = serde_json::from_str(
        &http_get(&format!("{}/checkpoint", auditor.metrics))
            .await
            .unwrap(),
    )
    .unwrap();
    let signed =
        SignedCheckpoint::from_bytes(&hex::decode(cp["signed"].as_str().unwrap()).unwrap())
            .unwrap();
    signed.verify().unwrap();
    assert!(signed.checkpoint.height >= 3);
    assert!(
        auditor
            .metric("pyralog_audit_peer_checkpoints_total")
            .await
            .unwrap()
            >= 1.0,
        "the auditor node's checkpoint was compared"
    );
    auditor.child.kill().await.unwrap();
    let kept: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("checkpoint.json")).unwrap())
            .unwrap();
    let kept = kept["height"].as_u64().unwrap();

    // The auditor node follows, re-executes and checkpoints too, quietly.
    let text = http_get(&format!("{node_auditor}/metrics")).await.unwrap();
    assert_eq!(metric(&text, "pyralog_audit_status"), Some(1.0), "{text}");
    assert!(metric(&text, "pyralog_audit_height").unwrap() >= 3.0);
    let cp: Value = serde_json::from_str(
        &http_get(&format!("{node_auditor}/checkpoint"))
            .await
            .unwrap(),
    )
    .unwrap();
    SignedCheckpoint::from_bytes(&hex::decode(cp["signed"].as_str().unwrap()).unwrap())
        .unwrap()
        .verify()
        .unwrap();

    assert!(hooks.kinds().is_empty(), "{:?}", hooks.kinds());
    assert!(evidence(&state).is_empty());

    // A restarted auditor starts from its checkpoint, not from the genesis.
    let again = audit_once(&args).await;
    assert_eq!(again.code, 0, "{}", again.err);
    let started: u64 = again
        .err
        .split("verified_height=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no verified_height in {}", again.err));
    assert!(started >= kept, "started at {started}, checkpoint {kept}");

    // A replica that lost what the checkpoint names is refused, not rebuilt silently.
    std::fs::remove_dir_all(state.join("data")).unwrap();
    let lost = audit_once(&args).await;
    assert_eq!(lost.code, 1, "{}", lost.err);
    assert!(
        lost.err.contains("does not hold that header"),
        "{}",
        lost.err
    );
    std::fs::remove_file(state.join("checkpoint.json")).unwrap();

    // An endpoint that cannot be reached: the audit is incomplete (exit 1), not an alarm.
    let mut unreachable = args.clone();
    unreachable.extend(strings(&[
        "--rpc",
        &format!("http://127.0.0.1:{}", free_port()),
        "--timeout",
        "2s",
    ]));
    let gap = audit_once(&unreachable).await;
    assert_eq!(gap.code, 1, "{}", gap.err);
    assert!(gap.err.contains("not checked"), "{}", gap.err);
    assert!(evidence(&state).is_empty());
}

/// What the proxy alters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lie {
    Nothing,
    /// `block`: one byte of a transaction.
    TxByte,
    /// `get`: one byte of the state record.
    Value,
    /// `log_inclusion`: one sibling of the proof.
    Proof,
    /// `block`: the header's state root (certificate kept).
    HeaderField,
    /// `certificate`: one byte of a vote signature.
    CertSignature,
    /// At one old height: another block (a transaction changed), its header's roots
    /// recomputed and re-certified by a quorum of the validators' keys.
    Rewritten(u64),
    /// At one height, re-certified by a colluding quorum: a header whose state root
    /// re-execution does not give.
    BadExecution(u64),
    /// At one height, re-certified by a colluding quorum: a transaction signature altered
    /// (the transaction root recomputed, so the body matches the header).
    BadTxSignature(u64),
    /// `log_consistency`: a certified-looking head at a height that does not exist.
    FutureHead,
}

struct Proxy {
    upstream: HttpClient,
    lie: Mutex<Lie>,
    keys: Vec<Keypair>,
}

fn tamper_tx(block: &mut Block) -> bool {
    let Some(tx) = block.txs.first_mut() else {
        return false;
    };
    match &mut tx.payload {
        Payload::Put { value, .. } => value.push(b'!'),
        Payload::Notarize { digest, .. } => digest.0[0] ^= 1,
        Payload::Delete { key } => key.push(b'!'),
    }
    true
}

/// The block in `encoded`, altered by `alter`, its transaction root recomputed, and
/// re-certified by three of the four validator keys (a colluding quorum).
fn recertified(
    keys: &[Keypair],
    encoded: &str,
    alter: impl Fn(&mut Block),
) -> (Block, Certificate) {
    let mut block = Block::from_bytes(&hex::decode(encoded).unwrap()).unwrap();
    alter(&mut block);
    let hashes: Vec<_> = block.txs.iter().map(|t| t.hash()).collect();
    block.header.tx_root = TxTree::new(&hashes).root();
    let cert = certify(keys, &block.header);
    (block, cert)
}

async fn answer(
    p: Arc<Proxy>,
    method: &'static str,
    args: Vec<Value>,
) -> Result<Value, ErrorObjectOwned> {
    let lie = *p.lie.lock().unwrap();
    let mut v = forward(&p.upstream, method, args.clone()).await?;
    let at = |h: u64| args.first().and_then(Value::as_u64) == Some(h);
    match (lie, method) {
        (Lie::TxByte, "block") => {
            let mut block =
                Block::from_bytes(&hex::decode(v["encoded"].as_str().unwrap()).unwrap()).unwrap();
            if tamper_tx(&mut block) {
                v["encoded"] = json!(hex::encode(block.to_bytes()));
            }
        }
        (Lie::Value, "get") => {
            if let Some(r) = v["record"].as_str().map(str::to_string) {
                v["record"] = json!(flip_last_hex(&r));
            }
        }
        (Lie::Proof, "log_inclusion") => {
            if let Some(first) = v["proof"].as_array_mut().and_then(|a| a.first_mut()) {
                *first = json!(flip_last_hex(first.as_str().unwrap()));
            }
        }
        (Lie::HeaderField, "block") => {
            let mut block =
                Block::from_bytes(&hex::decode(v["encoded"].as_str().unwrap()).unwrap()).unwrap();
            block.header.state_root = pyralog_ledger::Hash([0xee; 32]);
            v["encoded"] = json!(hex::encode(block.to_bytes()));
        }
        (Lie::CertSignature, "certificate") => {
            let mut cert =
                Certificate::from_bytes(&hex::decode(v["encoded"].as_str().unwrap()).unwrap())
                    .unwrap();
            cert.votes[0].signature.0[7] ^= 0x10;
            v["encoded"] = json!(hex::encode(cert.to_bytes()));
        }
        (Lie::FutureHead, "log_consistency") => {
            let mut h = pyralog_ledger::Header::from_bytes(
                &hex::decode(v["new"]["encoded"].as_str().unwrap()).unwrap(),
            )
            .unwrap();
            h.height = 1_000_000;
            v["new"]["encoded"] = json!(hex::encode(h.to_bytes()));
            v["certificate"]["encoded"] = json!(hex::encode(certify(&p.keys, &h).to_bytes()));
        }
        (
            Lie::Rewritten(h) | Lie::BadExecution(h) | Lie::BadTxSignature(h),
            "block" | "header" | "certificate",
        ) if at(h) => {
            let real = forward(&p.upstream, "block", vec![json!(h)]).await?;
            let encoded = real["encoded"].as_str().unwrap();
            let (block, cert) = recertified(&p.keys, encoded, |b| match lie {
                Lie::BadExecution(_) => b.header.state_root = pyralog_ledger::Hash([0xee; 32]),
                Lie::BadTxSignature(_) => b.txs[0].signature.0[9] ^= 1,
                _ => assert!(tamper_tx(b), "the rewritten height has a transaction"),
            });
            v["encoded"] = json!(hex::encode(match method {
                "block" => block.to_bytes(),
                "header" => block.header.to_bytes(),
                _ => cert.to_bytes(),
            }));
        }
        _ => {}
    }
    Ok(v)
}

/// One `--once --full` audit of `rpcs` with a fresh or kept `state`: exit 3, and the
/// alarms new in `state` are exactly one kind, `kind`, blaming `blamed` (at `height` if
/// given), with a webhook POST of it.
async fn caught(
    net: &Net,
    hooks: &Hooks,
    state: &Path,
    rpcs: &[&str],
    (kind, height): (&str, Option<u64>),
    blamed: &str,
) {
    let before = hooks.kinds().len();
    let earlier = evidence(state).len();
    let mut args = strings(&[
        "--genesis",
        net.manifest().genesis.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--webhook",
        &hooks.url,
        "--full",
    ]);
    for r in rpcs {
        args.extend(["--rpc".to_string(), r.to_string()]);
    }
    let run = audit_once(&args).await;
    assert_eq!(run.code, 3, "{kind}: exit status 3 expected: {}", run.err);
    assert!(run.err.contains("AUDIT ALARM"), "{kind}: {}", run.err);
    let saved = evidence(state);
    assert_eq!(saved.len(), earlier + 1, "{kind}: one new alarm: {saved:?}");
    let alarm = saved
        .iter()
        .find(|a| a["kind"] == kind)
        .unwrap_or_else(|| panic!("{kind}: no such evidence in {saved:?}\n{}", run.err));
    assert_eq!(alarm["source"], blamed, "{kind}");
    assert_eq!(alarm["chain"], "pyralog-testnet");
    if let Some(h) = height {
        assert_eq!(alarm["height"], h, "{kind}");
    }
    let posted = hooks.kinds();
    assert_eq!(posted[before..], [kind.to_string()], "{kind}: webhook");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_tampering_raises_an_alarm() {
    let net = Net::up(4);
    let m = net.manifest();
    let rpc0 = m.nodes[0].rpc.clone();
    transactions(&net, &rpc0);
    let hooks = Hooks::start().await;
    let proxy = Arc::new(Proxy {
        upstream: client(&rpc0).unwrap(),
        lie: Mutex::new(Lie::Nothing),
        keys: net.validator_keys(),
    });
    let (url, _server) = serve_proxy(proxy.clone(), answer).await;
    let fresh = |name: &str| -> PathBuf { net.dir.join(format!("state-{name}")) };

    // The honest proxy passes.
    let honest = audit_once(&strings(&[
        "--genesis",
        m.genesis.to_str().unwrap(),
        "--state",
        fresh("honest").to_str().unwrap(),
        "--full",
        "--rpc",
        &url,
    ]))
    .await;
    assert_eq!(honest.code, 0, "{}", honest.err);

    let tx_height = first_height_with_txs(&client(&rpc0).unwrap()).await;
    for (lie, kind, height) in [
        (Lie::TxByte, "block_contents", Some(tx_height)),
        (Lie::Value, "state", None),
        (Lie::Proof, "inclusion", None),
        (Lie::HeaderField, "certificate", Some(1)),
        (Lie::CertSignature, "certificate", Some(1)),
        (Lie::BadExecution(tx_height), "execution", Some(tx_height)),
        (
            Lie::BadTxSignature(tx_height),
            "tx_signature",
            Some(tx_height),
        ),
        (Lie::FutureHead, "malformed", Some(1_000_000)),
    ] {
        *proxy.lie.lock().unwrap() = lie;
        let state = fresh(&format!("{lie:?}"));
        caught(&net, &hooks, &state, &[&url], (kind, height), &url).await;
    }

    // A rewritten history: the auditor verified height h earlier; now the server shows
    // another block there, with a valid-looking chain of roots and a quorum certificate.
    *proxy.lie.lock().unwrap() = Lie::Nothing;
    let kept = fresh("rewritten");
    let clean = audit_once(&strings(&[
        "--genesis",
        m.genesis.to_str().unwrap(),
        "--state",
        kept.to_str().unwrap(),
        "--rpc",
        &url,
    ]))
    .await;
    assert_eq!(clean.code, 0, "{}", clean.err);
    *proxy.lie.lock().unwrap() = Lie::Rewritten(tx_height);
    caught(
        &net,
        &hooks,
        &kept,
        &[&url],
        ("fork", Some(tx_height)),
        &url,
    )
    .await;
    // The replica was not replaced: the honest server still agrees with it afterwards
    // (the alarm stays on record, so the status stays 3 until its evidence is removed).
    *proxy.lie.lock().unwrap() = Lie::Nothing;
    std::fs::remove_dir_all(kept.join("evidence")).unwrap();
    let after = audit_once(&strings(&[
        "--genesis",
        m.genesis.to_str().unwrap(),
        "--state",
        kept.to_str().unwrap(),
        "--full",
        "--rpc",
        &url,
    ]))
    .await;
    assert_eq!(after.code, 0, "{}", after.err);

    // A node whose database was edited on disk: one transaction byte of a stored block.
    let rpc2 = m.nodes[2].rpc.clone();
    net.cli(&["kill", "node2"]);
    edit_stored_block(&m.nodes[2].home.join("data"), tx_height);
    net.cli(&["restart", "node2"]);
    pyralog_testnet::wait_height(&net.manifest(), tx_height + 1, Duration::from_secs(30))
        .await
        .unwrap();
    caught(
        &net,
        &hooks,
        &fresh("disk"),
        &[&rpc0, &rpc2],
        ("block_contents", Some(tx_height)),
        &rpc2,
    )
    .await;
}

/// The height of the first block with transactions.
async fn first_height_with_txs(c: &HttpClient) -> u64 {
    for h in 1.. {
        let b = pyralog_testnet::call(c, "block", vec![json!(h)])
            .await
            .unwrap();
        if !b["txs"].as_array().unwrap().is_empty() {
            return h;
        }
    }
    unreachable!()
}

/// Changes one transaction of the block stored at `height` in a stopped node's sled
/// database (the record layout of `storage::sled`: key `b` + height).
fn edit_stored_block(data: &Path, height: u64) {
    // A killed process shows as a zombie before its last thread lets go of the lock.
    let start = Instant::now();
    let db = loop {
        match sled::open(data) {
            Ok(db) => break db,
            Err(e) if start.elapsed() > Duration::from_secs(10) => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let mut key = vec![b'b'];
    key.extend_from_slice(&height.to_be_bytes());
    let stored = db.get(&key).unwrap().expect("the block is stored");
    let mut block = Block::from_bytes(&stored).unwrap();
    assert!(tamper_tx(&mut block));
    db.insert(key, block.to_bytes()).unwrap();
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_histories_shown_to_two_auditors_are_caught_by_their_checkpoints() {
    // One network, then a copy of it on other ports: both go on from the same state with
    // the same validator keys, so each shows a valid, certified history of its own.
    let net = Net::up(1);
    pyralog_testnet::wait_height(&net.manifest(), 3, Duration::from_secs(30))
        .await
        .unwrap();
    net.down();
    let copy = net.dir.join("copy");
    net.cli(&["clone", "--to", copy.to_str().unwrap()]);
    net.cli(&["start"]);
    succeed(
        std::process::Command::new(EXE)
            .args(["start", "--home"])
            .arg(&copy),
        "start the copy",
    );
    let _copy_guard = StopOnDrop(copy.clone());
    let copy_rpc = pyralog_testnet::Manifest::load(&copy).unwrap().nodes[0]
        .rpc
        .clone();

    let hooks = Hooks::start().await;
    let genesis = net.manifest().genesis.to_str().unwrap().to_string();
    let ports = pyralog_testnet::free_ports(2, false).unwrap();
    let (port_a, port_b) = (ports[0], ports[1]);
    let auditor = |rpc: &str, state: &str, own: u16, peer: u16| -> Vec<String> {
        strings(&[
            "--genesis",
            &genesis,
            "--rpc",
            rpc,
            "--state",
            net.dir.join(state).to_str().unwrap(),
            "--webhook",
            &hooks.url,
            "--metrics",
            &format!("127.0.0.1:{own}"),
            "--peer",
            &format!("http://127.0.0.1:{peer}"),
        ])
    };
    let rpc = net.manifest().nodes[0].rpc.clone();
    let run = |args: Vec<String>| {
        tokio::process::Command::new(EXE)
            .args(["node", "audit", "--interval", "300ms"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let _a = run(auditor(&rpc, "auditor-a", port_a, port_b));
    let _b = run(auditor(&copy_rpc, "auditor-b", port_b, port_a));
    let start = Instant::now();
    let sources = || -> std::collections::HashSet<String> {
        hooks
            .got
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["kind"] == "split_view")
            .map(|v| v["source"].as_str().unwrap().to_string())
            .collect()
    };
    while sources().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "both auditors raise split_view within 60 s; webhook got {:?}",
            hooks.kinds()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each history alone verifies: the only alarms are the split view.
    assert!(
        hooks.kinds().iter().all(|k| k == "split_view"),
        "{:?}",
        hooks.kinds()
    );
    for state in ["auditor-a", "auditor-b"] {
        let saved = evidence(&net.dir.join(state));
        assert!(saved.iter().any(|a| a["kind"] == "split_view"), "{saved:?}");
        let split = saved.iter().find(|a| a["kind"] == "split_view").unwrap();
        let e = &split["evidence"];
        assert_ne!(e["verified"]["hash"], e["peer"]["hash"]);
        assert!(e["peer_checkpoint"].as_str().is_some_and(|c| !c.is_empty()));
    }
    for port in [port_a, port_b] {
        let text = http_get(&format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap();
        assert_eq!(metric(&text, "pyralog_audit_status"), Some(0.0));
        assert_eq!(
            metric(&text, "pyralog_audit_alarms_total{kind=\"split_view\"}"),
            Some(1.0)
        );
    }
}

fn free_port() -> u16 {
    pyralog_testnet::free_ports(1, false).unwrap()[0]
}

/// Stops the testnet in the directory on drop.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new(EXE)
            .args(["down", "--home"])
            .arg(&self.0)
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_node_raises_the_alarm_on_a_peer_serving_an_edited_block() {
    let net = Net::up_with(&["--validators", "4", "--auditors", "1"]);
    let m = net.manifest();
    transactions(&net, &m.nodes[0].rpc);
    let height = first_height_with_txs(&client(&m.nodes[0].rpc).unwrap()).await;
    let hooks = Hooks::start().await;
    // node2's copy of that block is edited on disk; the auditor node starts again from
    // nothing with node2 as its only peer, so it syncs the edited block.
    let (node2, auditor) = (&m.nodes[2], &m.nodes[4]);
    net.cli(&["kill", "auditor0"]);
    net.cli(&["kill", "node2"]);
    edit_stored_block(&node2.home.join("data"), height);
    std::fs::remove_dir_all(auditor.home.join("data")).unwrap();
    let config_path = auditor.home.join("config.toml");
    let mut config = pyralog_node::config::Config::load(&config_path).unwrap();
    config
        .p2p
        .bootstrap
        .retain(|a| a.ends_with(&format!("/p2p/{}", node2.peer_id)));
    assert_eq!(config.p2p.bootstrap.len(), 1);
    config.audit.webhook = hooks.url.clone();
    std::fs::write(&config_path, config.to_toml()).unwrap();
    net.cli(&["restart", "node2"]);
    net.cli(&["restart", "auditor0"]);

    let metrics = &auditor.metrics;
    let start = Instant::now();
    loop {
        let text = http_get(metrics).await.unwrap_or_default();
        if metric(&text, "pyralog_audit_alarms_total{kind=\"block_contents\"}") == Some(1.0) {
            assert_eq!(metric(&text, "pyralog_audit_status"), Some(0.0));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the auditor node raises block_contents within 60 s:\n{}",
            net.log("auditor0")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let saved = evidence(&auditor.home.join("audit"));
    let alarm = saved
        .iter()
        .find(|a| a["kind"] == "block_contents")
        .unwrap();
    assert_eq!(alarm["height"], height);
    assert!(
        alarm["source"].as_str().unwrap().contains(&node2.peer_id),
        "{alarm}"
    );
    assert!(net.log("auditor0").contains("AUDIT ALARM"));
    let start = Instant::now();
    while !hooks.kinds().iter().any(|k| k == "block_contents") {
        assert!(start.elapsed() < Duration::from_secs(20), "webhook POST");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
