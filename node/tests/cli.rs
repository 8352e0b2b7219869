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

/// `status` over a plain HTTP/1.1 POST (no client library needed).
fn rpc_status(port: u16) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"status","params":[]}"#;
    let req = format!(
        "POST / HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (_, json) = out.split_once("\r\n\r\n")?;
    serde_json::from_str(json).ok()
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
    let (rpc, p2p) = (free_port(), free_port());
    let cfg = cfg
        .replace("127.0.0.1:26657", &format!("127.0.0.1:{rpc}"))
        .replace("/tcp/26656", &format!("/tcp/{p2p}"));
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
