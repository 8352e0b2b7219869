//! `pyralog-node` as a user runs it: init, key show, config precedence, and a one-validator
//! development chain that commits and shuts down cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_pyralog-node");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(EXE).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP/1.1 request to 127.0.0.1:`port` (no client library needed); the body of the
/// answer.
fn http(port: u16, request: &str, timeout: Duration) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_string())
}

/// A JSON-RPC call over a plain HTTP/1.1 POST.
fn rpc(port: u16, method: &str, params: serde_json::Value) -> Option<serde_json::Value> {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        .to_string();
    let req = format!(
        "POST / HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    serde_json::from_str(&http(port, &req, Duration::from_secs(40))?).ok()
}

fn rpc_status(port: u16) -> Option<serde_json::Value> {
    rpc(port, "status", serde_json::json!([]))
}

/// A `pyralog-node start` child, killed on drop.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `init` in `home`, with the RPC, p2p and metrics on free ports and `edit` applied to
/// the config file. Returns the RPC and metrics ports.
fn init_on_free_ports(home: &std::path::Path, edit: impl Fn(String) -> String) -> (u16, u16) {
    let (ok, _, err) = run(&["init", "--home", home.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (rpc, p2p, metrics) = (free_port(), free_udp_port(), free_port());
    let cfg = std::fs::read_to_string(home.join("config.toml")).unwrap();
    let cfg = cfg
        .replace("127.0.0.1:26657", &format!("127.0.0.1:{rpc}"))
        .replace("/udp/26656", &format!("/udp/{p2p}"))
        .replace("127.0.0.1:26660", &format!("127.0.0.1:{metrics}"));
    std::fs::write(home.join("config.toml"), edit(cfg)).unwrap();
    (rpc, metrics)
}

fn wait_for_height(port: u16, height: u64) {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(60), "no commits");
        let h = rpc_status(port).and_then(|v| v["result"]["height"].as_u64());
        if h >= Some(height) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Output into a closed pipe (`pyralog-node config | head -0`) ends the command quietly,
/// with the status `SIGPIPE` gives other commands, not with a panic and a backtrace.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("n");
    let home_s = home.to_str().unwrap();
    assert!(run(&["init", "--home", home_s]).0);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(EXE)
        .args(["config", "--home", home_s])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(pyralog_wallet::cli::BROKEN_PIPE_STATUS)),
        "{err}"
    );
    assert!(err.is_empty(), "{err}");
    // With a reader, the same command prints the whole configuration.
    let (ok, text, err) = run(&["config", "--home", home_s]);
    assert!(ok && text.contains("[storage]"), "{err}");
}

#[test]
fn init_key_show_config_and_a_dev_chain_that_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("n");
    let home_s = home.to_str().unwrap();
    let (ok, out, err) = run(&["init", "--home", home_s, "--moniker", "alice"]);
    assert!(ok, "{err}");
    assert!(out.contains("peer id"), "{out}");
    for f in ["node_key.json", "validator_key.json"] {
        let mode = std::fs::metadata(home.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    assert!(home.join("config.toml").exists() && home.join("genesis.json").exists());
    // A second init refuses to overwrite the keys.
    let (ok, _, err) = run(&["init", "--home", home_s]);
    assert!(!ok && err.contains("refusing to overwrite"), "{err}");

    let (ok, out, _) = run(&["key", "show", "--home", home_s, "--json"]);
    assert!(ok);
    let id: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(id["peer_id"].as_str().unwrap().starts_with("12D3KooW"));
    let wg = id["wg_public_key"].as_str().unwrap();
    assert_eq!(wg.len(), 44, "base64 of 32 bytes: {wg}");

    // Precedence: flag > file > default.
    let cfg = std::fs::read_to_string(home.join("config.toml")).unwrap();
    assert!(cfg.contains("moniker = \"alice\""), "{cfg}");
    let (rpc, p2p) = (free_port(), free_udp_port());
    let cfg = cfg
        .replace("127.0.0.1:26657", &format!("127.0.0.1:{rpc}"))
        .replace("/udp/26656", &format!("/udp/{p2p}"));
    std::fs::write(home.join("config.toml"), cfg).unwrap();
    let (ok, out, _) = run(&["config", "--home", home_s, "--moniker", "bob"]);
    assert!(ok);
    assert!(out.contains("moniker = \"bob\""), "{out}");
    assert!(
        out.contains(&format!("listen = \"127.0.0.1:{rpc}\"")),
        "{out}"
    );
    assert!(
        out.contains("max_txs = 100000"),
        "defaults are shown: {out}"
    );
    let (ok, _, err) = run(&["config", "--home", home_s, "--rpc-listen", "nowhere"]);
    assert!(!ok && err.contains("nowhere"), "{err}");

    // The dev chain commits on its own; SIGTERM stops it with status 0.
    let mut child = Command::new(EXE)
        .args(["start", "--home", home_s, "--metrics-listen", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut height = 0;
    while height < 2 {
        assert!(start.elapsed() < Duration::from_secs(60), "no commits");
        std::thread::sleep(Duration::from_millis(200));
        if let Some(v) = rpc_status(rpc) {
            height = v["result"]["height"].as_u64().unwrap_or(0);
        }
    }
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
}

/// A one-validator dev chain, initialised with `edit` applied to its config, started
/// and past height 1; stopped and removed on drop.
struct DevNode {
    rpc: u16,
    metrics: u16,
    chain: String,
    _node: Running,
    _dir: tempfile::TempDir,
}

impl DevNode {
    fn start(edit: impl Fn(String) -> String) -> DevNode {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("n");
        let (rpc, metrics) = init_on_free_ports(&home, edit);
        let genesis: serde_json::Value =
            serde_json::from_slice(&std::fs::read(home.join("genesis.json")).unwrap()).unwrap();
        let chain = genesis["chain_id"].as_str().unwrap().to_string();
        let node = Running(
            Command::new(EXE)
                .args(["start", "--home", home.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for_height(rpc, 1);
        DevNode {
            rpc,
            metrics,
            chain,
            _node: node,
            _dir: dir,
        }
    }
}

fn signed_put(key: &pyralog_crypto::Keypair, chain: &str, nonce: u64) -> serde_json::Value {
    use pyralog_ledger::Encode;
    let tx = pyralog_ledger::Transaction::new_signed(
        key,
        pyralog_ledger::ChainId::new(chain).unwrap(),
        nonce,
        pyralog_ledger::Payload::Put {
            key: format!("k{nonce}").into_bytes(),
            value: vec![1; 32],
        },
    )
    .unwrap();
    serde_json::json!(hex::encode(tx.to_bytes()))
}

#[test]
fn a_full_mempool_evicts_a_transaction_stuck_behind_a_nonce_gap_and_tells_its_waiter() {
    let node = DevNode::start(|c| c.replace("max_txs = 100000", "max_txs = 3"));
    let (port, metrics, chain) = (node.rpc, node.metrics, node.chain.clone());
    let (a, b) = (
        pyralog_crypto::Keypair::from_seed(&[1; 32]),
        pyralog_crypto::Keypair::from_seed(&[2; 32]),
    );
    // a's nonce 0 never comes: 5, 6 and 7 wait behind the gap and fill the pool. The
    // first waits for its commit.
    let first = signed_put(&a, &chain, 5);
    let waiting =
        std::thread::spawn(move || rpc(port, "broadcast_tx", serde_json::json!([first, "commit"])));
    let start = Instant::now();
    while rpc_status(port).and_then(|v| v["result"]["mempool_txs"].as_u64()) != Some(1) {
        assert!(start.elapsed() < Duration::from_secs(20), "a5 not admitted");
        std::thread::sleep(Duration::from_millis(50));
    }
    for n in [6, 7] {
        let r = rpc(
            port,
            "broadcast_tx",
            serde_json::json!([signed_put(&a, &chain, n), "sync"]),
        );
        assert_eq!(r.as_ref().unwrap()["result"]["status"], "pending", "{r:?}");
    }
    // The pool is full: another queued transaction is refused...
    let r = rpc(
        port,
        "broadcast_tx",
        serde_json::json!([signed_put(&a, &chain, 8), "sync"]),
    )
    .unwrap();
    assert_eq!(r["error"]["data"]["reason"], "mempool_full", "{r}");
    // ...and one that can run takes the place of the oldest queued one, a5, whose waiter
    // hears so at once.
    let r = rpc(
        port,
        "broadcast_tx",
        serde_json::json!([signed_put(&b, &chain, 0), "commit"]),
    )
    .unwrap();
    assert_eq!(r["result"]["status"], "committed", "{r}");
    let evicted = waiting.join().unwrap().unwrap();
    assert_eq!(evicted["error"]["data"]["reason"], "evicted", "{evicted}");
    let text = http(
        metrics,
        "GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(
        text.contains("pyralog_rejected_txs_total{reason=\"evicted\"} 1"),
        "{text}"
    );
    assert!(text.contains("pyralog_mempool_queued_txs 2"), "{text}");
}

/// `broadcast_txs` answers each transaction of a call in order, as `broadcast_tx` would:
/// a bad signature, bad hex or a second copy in one call is that transaction's answer
/// alone, and the others are admitted and (in `commit` mode) committed.
#[test]
fn broadcast_txs_answers_each_transaction_in_order() {
    use pyralog_ledger::{Decode, Encode};
    let node = DevNode::start(|c| c);
    let (port, chain) = (node.rpc, node.chain.clone());
    let (a, b) = (
        pyralog_crypto::Keypair::from_seed(&[1; 32]),
        pyralog_crypto::Keypair::from_seed(&[2; 32]),
    );
    let decode = |v: &serde_json::Value| {
        pyralog_ledger::Transaction::from_bytes(&hex::decode(v.as_str().unwrap()).unwrap()).unwrap()
    };
    // b's nonce-1 transaction under the signature of its nonce-0 one: it decodes, and
    // only the batch check can refuse it.
    let mut forged = decode(&signed_put(&b, &chain, 1));
    forged.signature = decode(&signed_put(&b, &chain, 0)).signature;
    let forged = serde_json::json!(hex::encode(forged.to_bytes()));
    let a0 = signed_put(&a, &chain, 0);
    let b0 = signed_put(&b, &chain, 0);
    let txs = serde_json::json!([a0, forged, "zz", b0, a0]);
    let r = rpc(port, "broadcast_txs", serde_json::json!([txs, "commit"])).unwrap();
    let answers = r["result"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(answers.len(), 5, "{r}");
    assert_eq!(answers[0]["status"], "committed", "{r}");
    assert_eq!(answers[0]["already_known"], false, "{r}");
    assert_eq!(answers[1]["error"]["code"], -32001, "{r}");
    assert_eq!(
        answers[1]["error"]["data"]["reason"], "bad_signature",
        "{r}"
    );
    assert_eq!(answers[2]["error"]["code"], -32602, "{r}");
    assert_eq!(answers[3]["status"], "committed", "{r}");
    // The second copy found the first pending and waited for the same commit.
    assert_eq!(answers[4]["status"], "committed", "{r}");
    assert_eq!(answers[4]["already_known"], true, "{r}");
    assert_eq!(answers[4]["committed"], answers[0]["committed"], "{r}");
    for (i, tx) in [(0, &a0), (3, &b0)] {
        assert_eq!(answers[i]["hash"], decode(tx).hash().to_hex(), "{r}");
    }

    // Sent again: committed already; a used nonce under a new transaction is refused.
    let replay = pyralog_ledger::Transaction::new_signed(
        &b,
        pyralog_ledger::ChainId::new(&chain).unwrap(),
        0,
        pyralog_ledger::Payload::Delete {
            key: b"k0".to_vec(),
        },
    )
    .unwrap();
    let txs = serde_json::json!([a0, hex::encode(replay.to_bytes())]);
    let r = rpc(port, "broadcast_txs", serde_json::json!([txs])).unwrap();
    let answers = r["result"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(answers[0]["status"], "committed", "{r}");
    assert_eq!(answers[0]["already_known"], true, "{r}");
    assert_eq!(
        answers[1]["error"]["data"]["reason"], "nonce_replayed",
        "{r}"
    );

    // A call longer than the node checks on its async workers: the same answers.
    let c = pyralog_crypto::Keypair::from_seed(&[3; 32]);
    let mut txs: Vec<serde_json::Value> = (0..100).map(|n| signed_put(&c, &chain, n)).collect();
    txs[70] = forged.clone();
    let r = rpc(port, "broadcast_txs", serde_json::json!([txs, "sync"])).unwrap();
    let answers = r["result"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(answers.len(), 100, "{r}");
    for (i, a) in answers.iter().enumerate() {
        if i == 70 {
            assert_eq!(a["error"]["data"]["reason"], "bad_signature", "{a}");
        } else {
            assert_eq!(a["status"], "pending", "{i}: {a}");
            assert_eq!(a["hash"], decode(&txs[i]).hash().to_hex(), "{a}");
        }
    }

    // Too many in one call, or a mode that does not exist: the call is refused.
    let many = vec![serde_json::json!("00"); 1025];
    let r = rpc(port, "broadcast_txs", serde_json::json!([many, "sync"])).unwrap();
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let r = rpc(port, "broadcast_txs", serde_json::json!([[a0], "later"])).unwrap();
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let r = rpc(port, "broadcast_txs", serde_json::json!([[]])).unwrap();
    assert_eq!(r["result"], serde_json::json!([]), "{r}");
}
