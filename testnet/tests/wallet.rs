//! The wallet against a real 4-validator testnet (processes on 127.0.0.1): notarize, read
//! and write with proofs, export, catch a lying server in each of its lies, raise a fork
//! alarm from a witness, then stop the network and verify the receipts offline.
//!
//! The wallet runs as `pyralog-testnet wallet ...`, which is exactly the `pyralog` command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonrpsee::http_client::HttpClient;
use jsonrpsee::server::ServerHandle;
use jsonrpsee::types::ErrorObjectOwned;
use pyralog_crypto::Keypair;
use pyralog_ledger::{Decode, Encode, Hash, Header};
use pyralog_testnet::client;
use serde_json::{Value, json};

mod common;

use common::{EXE, Net, certify, flip_last_hex, forward, serve_proxy};

/// What the proxy lies about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lie {
    Nothing,
    /// `get`: one byte of the record.
    AlteredValue,
    /// `get`: a sibling hash of the state proof.
    WrongProof,
    /// `tx`: an extra hash in the inclusion proof.
    WrongTxProof,
    /// `log_consistency`: the newest header with another state root (certificate kept).
    ForgedHeader,
    /// `log_consistency`: an old head (height 2).
    StaleHead,
    /// `get`: the state of height 1 instead of the one asked for.
    OldState,
    /// `history`: starts from an older height, leaving out the newest version.
    OmitsNewest,
    /// `broadcast_tx` and `broadcast_txs`: refuse every transaction (mempool full).
    Refuses,
    /// Every header it serves has another state root, re-certified by a quorum of the
    /// validators' keys (a colluding quorum: a fork).
    Forked,
}

struct ProxyState {
    upstream: HttpClient,
    lie: Mutex<Lie>,
    /// Validator keys in canonical order, to certify forged headers.
    keys: Vec<Keypair>,
}

struct Proxy {
    url: String,
    state: Arc<ProxyState>,
    _handle: ServerHandle,
}

impl Proxy {
    fn lie(&self, lie: Lie) {
        *self.state.lie.lock().unwrap() = lie;
    }
}

fn forge_header(encoded: &str) -> Header {
    let mut h = Header::from_bytes(&hex::decode(encoded).unwrap()).unwrap();
    h.state_root = Hash([0xee; 32]);
    h
}

async fn answer(
    s: &ProxyState,
    method: &str,
    mut args: Vec<Value>,
) -> Result<Value, ErrorObjectOwned> {
    let lie = *s.lie.lock().unwrap();
    if lie == Lie::Refuses {
        let data = json!({ "reason": "mempool_full", "message": "mempool is full" });
        let refusal =
            ErrorObjectOwned::owned(-32001, "transaction rejected: mempool is full", Some(data));
        match method {
            "broadcast_tx" => return Err(refusal),
            // Each transaction's answer is the error `broadcast_tx` would give.
            "broadcast_txs" => {
                let n = args[0].as_array().map_or(0, Vec::len);
                return Ok(json!(vec![json!({ "error": refusal }); n]));
            }
            _ => {}
        }
    }
    match (lie, method) {
        (Lie::StaleHead, "log_consistency") => args = vec![json!(1), json!(2)],
        (Lie::OldState, "get") => args[1] = json!(1),
        (Lie::OmitsNewest, "history") => {
            // Start at the height before the newest version was written.
            let at = forward(&s.upstream, "history", args.clone()).await?;
            let newest = at["versions"][0]["record"].as_str().unwrap();
            let record =
                pyralog_ledger::KvRecord::from_bytes(&hex::decode(newest).unwrap()).unwrap();
            args[1] = json!(record.height - 1);
        }
        _ => {}
    }
    let mut v = forward(&s.upstream, method, args.clone()).await?;
    match (lie, method) {
        (Lie::AlteredValue, "get") => {
            let r = v["record"].as_str().unwrap().to_string();
            v["record"] = json!(flip_last_hex(&r));
        }
        (Lie::WrongProof, "get") => {
            let siblings = v["proof"]["siblings"].as_array_mut().unwrap();
            siblings[0] = json!(flip_last_hex(siblings[0].as_str().unwrap()));
        }
        (Lie::WrongTxProof, "tx") => {
            v["tx_proof"]
                .as_array_mut()
                .unwrap()
                .push(json!("00".repeat(32)));
        }
        (Lie::ForgedHeader, "log_consistency") => {
            let h = forge_header(v["new"]["encoded"].as_str().unwrap());
            v["new"]["encoded"] = json!(hex::encode(h.to_bytes()));
        }
        (Lie::Forked, "header") => {
            let h = forge_header(v["encoded"].as_str().unwrap());
            v["encoded"] = json!(hex::encode(h.to_bytes()));
        }
        (Lie::Forked, "certificate") => {
            let real = forward(&s.upstream, "header", vec![v["height"].clone()]).await?;
            let h = forge_header(real["encoded"].as_str().unwrap());
            v["encoded"] = json!(hex::encode(certify(&s.keys, &h).to_bytes()));
        }
        (Lie::Forked, "log_consistency") => {
            let h = forge_header(v["new"]["encoded"].as_str().unwrap());
            v["new"]["encoded"] = json!(hex::encode(h.to_bytes()));
            v["certificate"]["encoded"] = json!(hex::encode(certify(&s.keys, &h).to_bytes()));
        }
        _ => {}
    }
    Ok(v)
}

async fn proxy(upstream: &str, keys: Vec<Keypair>) -> Proxy {
    let state = Arc::new(ProxyState {
        upstream: client(upstream).unwrap(),
        lie: Mutex::new(Lie::Nothing),
        keys,
    });
    let (url, handle) = serve_proxy(state.clone(), |s: Arc<ProxyState>, m, args| async move {
        answer(&s, m, args).await
    })
    .await;
    Proxy {
        url,
        state,
        _handle: handle,
    }
}

struct Run {
    code: i32,
    out: String,
    err: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.out).unwrap_or_else(|e| panic!("{e}: {}", self.out))
    }
}

/// Runs `pyralog --home WALLET ARGS`, bounded in time.
async fn pyralog(wallet: &Path, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(EXE);
    cmd.arg("wallet")
        .arg("--home")
        .arg(wallet)
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("pyralog finishes within 90 s")
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(r: &Run, what: &str) {
    assert_eq!(r.code, 0, "{what}: {}{}", r.out, r.err);
}

fn trusted_height(wallet: &Path) -> u64 {
    let text = std::fs::read_to_string(wallet.join("chains/pyralog-testnet/trusted.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let h = Header::from_bytes(&hex::decode(v["header"].as_str().unwrap()).unwrap()).unwrap();
    h.height
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_round_trip_lying_servers_fork_alarm_and_offline_verify() {
    let net = Net::up(4);
    let m = net.manifest();
    let genesis = m.genesis.to_str().unwrap().to_string();
    let (rpc0, rpc1) = (m.nodes[0].rpc.clone(), m.nodes[1].rpc.clone());
    let wallet = net.dir.join("wallet");
    let w = wallet.as_path();
    ok(&pyralog(w, &["key", "new"]).await, "key new");

    // Notarize three files (two with the same content) in one command, with a witness.
    let files: Vec<PathBuf> = ["a.txt", "b.txt", "c.txt"]
        .iter()
        .map(|n| net.dir.join(n))
        .collect();
    std::fs::write(&files[0], "first document\n").unwrap();
    std::fs::write(&files[1], "second document\n").unwrap();
    std::fs::write(&files[2], "first document\n").unwrap();
    let mut args = vec![
        "--json",
        "--rpc",
        &rpc0,
        "--witness",
        &rpc1,
        "--genesis",
        &genesis,
        "notarize",
        "--meta",
        "e2e",
    ];
    let names: Vec<String> = files
        .iter()
        .map(|f| f.to_str().unwrap().to_string())
        .collect();
    args.extend(names.iter().map(String::as_str));
    let r = pyralog(w, &args).await;
    ok(&r, "notarize");
    let rows = r.json()["files"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[0]["tx_hash"], rows[2]["tx_hash"],
        "same content, one transaction"
    );
    for f in &files {
        assert!(Path::new(&format!("{}.pyralog-receipt.json", f.display())).exists());
    }
    // Notarizing again finds the earlier notarization and writes its receipt.
    let r = pyralog(w, &["--json", "--rpc", &rpc1, "notarize", &names[1]]).await;
    ok(&r, "notarize again");
    assert_eq!(r.json()["files"][0]["earlier"], json!(true));

    // Writes, then verified reads and history.
    for (k, v) in [
        ("put", Some("blue")),
        ("put", Some("red")),
        ("delete", None),
        ("put", Some("green")),
    ] {
        let mut a = vec!["--rpc", rpc0.as_str(), k, "color"];
        a.extend(v);
        ok(&pyralog(w, &a).await, k);
    }
    let r = pyralog(w, &["--json", "--rpc", &rpc1, "get", "color"]).await;
    ok(&r, "get");
    assert_eq!(r.json()["value"]["text"], json!("green"));
    let r = pyralog(w, &["--json", "--rpc", &rpc1, "history", "color"]).await;
    ok(&r, "history");
    let versions = r.json()["versions"].as_array().unwrap().clone();
    let values: Vec<Value> = versions
        .iter()
        .map(|v| v["value"]["text"].clone())
        .collect();
    assert_eq!(
        values,
        vec![json!("green"), Value::Null, json!("red"), json!("blue")]
    );
    let first = versions[3]["height"].as_u64().unwrap().to_string();
    let r = pyralog(
        w,
        &["--json", "--rpc", &rpc0, "get", "color", "--height", &first],
    )
    .await;
    ok(&r, "get at height");
    assert_eq!(r.json()["value"]["text"], json!("blue"));
    let r = pyralog(w, &["--rpc", &rpc0, "delete", "never-set"]).await;
    assert_eq!(r.code, 2, "{}", r.err);
    let r = pyralog(
        w,
        &[
            "--json",
            "--rpc",
            &rpc0,
            "tx",
            rows[1]["tx_hash"].as_str().unwrap(),
        ],
    )
    .await;
    ok(&r, "tx");
    assert_eq!(r.json()["status"], json!("committed"));
    let r = pyralog(w, &["--json", "--rpc", &rpc0, "status"]).await;
    ok(&r, "status");
    assert_eq!(r.json()["chain_id"], json!("pyralog-testnet"));

    // Export: pyarrow reads the same transactions (2 notarizations, 3 puts, 1 delete).
    for (format, name) in [("arrow", "txs.arrow"), ("parquet", "txs.parquet")] {
        let out = net.dir.join(name);
        let r = pyralog(
            w,
            &[
                "--rpc",
                &rpc0,
                "export",
                "--from",
                "1",
                "--format",
                format,
                "--out",
                out.to_str().unwrap(),
            ],
        )
        .await;
        ok(&r, "export");
        let py = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import sys, collections, pyarrow.ipc as ipc, pyarrow.parquet as pq\n\
                 p = sys.argv[1]\n\
                 t = pq.read_table(p) if p.endswith('.parquet') else ipc.open_file(p).read_all()\n\
                 print(sorted(collections.Counter(t.column('kind').to_pylist()).items()))",
            )
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            py.status.success(),
            "{}",
            String::from_utf8_lossy(&py.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&py.stdout).trim(),
            "[('delete', 1), ('notarize', 2), ('put', 3)]"
        );
    }

    // A lying server is caught every time, and never moves the trusted head back.
    let liar = proxy(&rpc0, Vec::new()).await;
    ok(
        &pyralog(w, &["--rpc", &liar.url, "get", "color"]).await,
        "honest proxy",
    );
    let cases = [
        (Lie::AlteredValue, vec!["get", "color"], "does not verify"),
        (Lie::WrongProof, vec!["get", "color"], "does not verify"),
        (
            Lie::OldState,
            vec!["get", "color"],
            "not at the height asked",
        ),
        (
            Lie::OmitsNewest,
            vec!["history", "color"],
            "skipped a version",
        ),
        (Lie::ForgedHeader, vec!["status"], "not certified"),
        (Lie::StaleHead, vec!["status"], "stale or rolled back"),
        (
            Lie::WrongTxProof,
            vec!["tx", rows[1]["tx_hash"].as_str().unwrap()],
            "not proven",
        ),
    ];
    for (lie, args, reason) in cases {
        let before = trusted_height(w);
        liar.lie(lie);
        let mut a = vec!["--rpc", liar.url.as_str()];
        a.extend(args);
        let r = pyralog(w, &a).await;
        assert_eq!(r.code, 1, "{lie:?}: {}{}", r.out, r.err);
        assert!(
            r.err.contains(reason),
            "{lie:?}: expected {reason:?} in {}",
            r.err
        );
        assert!(trusted_height(w) >= before, "{lie:?}");
    }
    // A refusal is reported per file, in one JSON document, with exit status 4.
    liar.lie(Lie::Refuses);
    let refused = net.dir.join("refused.txt");
    std::fs::write(&refused, "never notarized\n").unwrap();
    let r = pyralog(
        w,
        &[
            "--json",
            "--rpc",
            &liar.url,
            "notarize",
            refused.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(r.code, 4, "{}{}", r.out, r.err);
    let v = r.json();
    assert_eq!(v["ok"], json!(false));
    assert!(
        v["files"][0]["error"]
            .as_str()
            .unwrap()
            .contains("mempool_full"),
        "{v}"
    );
    assert!(!Path::new(&format!("{}.pyralog-receipt.json", refused.display())).exists());
    liar.lie(Lie::Nothing);

    // A witness that shows another certified history: fork alarm, evidence saved.
    let forked = proxy(&rpc0, net.validator_keys()).await;
    forked.lie(Lie::Forked);
    let r = pyralog(w, &["--rpc", &rpc0, "--witness", &forked.url, "status"]).await;
    assert_eq!(r.code, 3, "{}{}", r.out, r.err);
    assert!(r.err.contains("FORK ALARM"), "{}", r.err);
    let forks: Vec<_> = std::fs::read_dir(w.join("chains/pyralog-testnet/forks"))
        .unwrap()
        .collect();
    assert_eq!(forks.len(), 1);
    let evidence: Value =
        serde_json::from_str(&std::fs::read_to_string(forks[0].as_ref().unwrap().path()).unwrap())
            .unwrap();
    assert_eq!(evidence["kind"], json!("conflicting_headers"));
    let sides = evidence["evidence"].as_array().unwrap();
    assert_eq!(sides.len(), 2);
    assert_eq!(sides[0]["height"], sides[1]["height"]);
    assert_ne!(sides[0]["hash"], sides[1]["hash"]);
    // The forked server as the primary, with an honest witness: alarm as well, and the
    // forged head is not trusted.
    let before = trusted_height(w);
    let r = pyralog(w, &["--rpc", &forked.url, "--witness", &rpc1, "status"]).await;
    assert_eq!(r.code, 3, "{}{}", r.out, r.err);
    assert!(r.err.contains("FORK ALARM"), "{}", r.err);
    let ok_again = pyralog(w, &["--rpc", &rpc0, "status"]).await;
    ok(&ok_again, "honest node after the alarm");
    assert!(trusted_height(w) >= before);

    // Stop the network; the receipts verify offline.
    net.down();
    for f in &names {
        let receipt = format!("{f}.pyralog-receipt.json");
        let r = pyralog(
            w,
            &[
                "verify",
                f,
                "--receipt",
                &receipt,
                "--genesis",
                &genesis,
                "--timings",
            ],
        )
        .await;
        ok(&r, "offline verify");
        assert!(r.out.contains("OK:"), "{}", r.out);
        eprintln!("{}", r.out.lines().last().unwrap_or_default());
    }
}
