//! `pyralog verify` and `pyralog key` as a user runs them: a real receipt of a certified
//! chain verifies offline; every field altered, another file, or another chain fails with
//! the exact check; unreadable input is a usage error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pyralog_crypto::content_digest;
use pyralog_ledger::testing::{TestChain, user};
use pyralog_ledger::{ChainId, EngineId};
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_pyralog");

struct Case {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    genesis: PathBuf,
    file: PathBuf,
    receipt: Value,
}

/// A 4-validator chain with three blocks of notarizations; the receipt of the second
/// transaction of block 3, whose digest is that of a file on disk.
fn case() -> Case {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let content = b"the contract, final version\n";
    let mut chain = TestChain::new(4, EngineId::Tendermint);
    for h in 0..3u64 {
        let txs = (0..3u64)
            .map(|i| {
                let digest = if h == 2 && i == 1 {
                    content_digest(content)
                } else {
                    content_digest(&[h as u8, i as u8])
                };
                chain.notarize(&user(i), h, digest, "signed by both parties")
            })
            .collect();
        chain.commit(txs);
    }
    let genesis = path.join("genesis.json");
    std::fs::write(&genesis, chain.genesis.to_json()).unwrap();
    let file = path.join("contract.txt");
    std::fs::write(&file, content).unwrap();
    let receipt = serde_json::from_str(&chain.receipt(3, 1).to_json()).unwrap();
    Case {
        _dir: dir,
        dir: path,
        genesis,
        file,
        receipt,
    }
}

fn pyralog(args: &[&str], extra: &[&Path]) -> Output {
    Command::new(EXE)
        .args(args)
        .args(extra)
        .env("PYRALOG_HOME", "/nonexistent/pyralog-test-home")
        .output()
        .unwrap()
}

impl Case {
    fn verify_with(&self, receipt: &Value, file: &Path, genesis: &Path) -> (i32, String, String) {
        let r = self.dir.join("r.json");
        std::fs::write(&r, serde_json::to_string(receipt).unwrap()).unwrap();
        let out = Command::new(EXE)
            .arg("verify")
            .arg(file)
            .arg("--receipt")
            .arg(&r)
            .arg("--genesis")
            .arg(genesis)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn verify(&self, receipt: &Value) -> (i32, String, String) {
        self.verify_with(receipt, &self.file, &self.genesis)
    }
}

/// Flips one hex digit in the middle of a hex string.
fn flip_hex(s: &str, at: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    b[at] = if b[at] == b'0' { b'1' } else { b'0' };
    String::from_utf8(b).unwrap()
}

#[test]
fn a_valid_receipt_verifies_offline_and_says_what_it_proves() {
    let c = case();
    let (code, out, err) = c.verify(&c.receipt);
    assert_eq!(code, 0, "{out}{err}");
    let digest = content_digest(b"the contract, final version\n").to_hex();
    assert!(out.contains(&digest), "{out}");
    assert!(out.contains("height:  3"), "{out}");
    assert!(out.contains("OK:"), "{out}");
    assert!(
        out.contains(&user(1).public().to_hex()),
        "signer shown: {out}"
    );

    // --json gives the same facts to scripts; --timings the cost of the signature checks.
    let r = c.dir.join("ok.json");
    std::fs::write(&r, serde_json::to_string(&c.receipt).unwrap()).unwrap();
    let out = Command::new(EXE)
        .args(["--json", "verify"])
        .arg(&c.file)
        .arg("--receipt")
        .arg(&r)
        .arg("--genesis")
        .arg(&c.genesis)
        .arg("--timings")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["proven"]["digest"], json!(digest));
    assert_eq!(v["proven"]["height"], json!(3));
    let t = &v["timings"];
    assert!(
        t["verify_us"].is_u64() && t["signatures_us"].is_u64(),
        "{t}"
    );
}

#[test]
fn altering_any_field_fails_with_the_exact_check() {
    let c = case();
    let r = &c.receipt;
    let s = |k: &str| r[k].as_str().unwrap().to_string();
    let mut cases: Vec<(&str, Value, &str)> = vec![
        ("version", json!(2), "unsupported receipt version 2"),
        (
            "chain_id",
            json!("other-chain"),
            "receipt field chain_id says other-chain",
        ),
        ("digest", json!("11".repeat(32)), "receipt field digest"),
        ("height", json!(2), "receipt field height says 2"),
        ("index", json!(2), "transaction inclusion"),
        ("log_index", json!(3), "receipt field log_index says 3"),
        // A byte of the signature (the last 64 bytes of the transaction).
        (
            "tx",
            json!(flip_hex(&s("tx"), s("tx").len() - 10)),
            "transaction signature does not verify",
        ),
        // A byte of the state root inside the header: its certificate no longer matches.
        (
            "header",
            json!(flip_hex(&s("header"), s("header").len() - 300)),
            "header certificate",
        ),
        // A byte of a vote signature.
        (
            "certificate",
            json!(flip_hex(&s("certificate"), s("certificate").len() - 10)),
            "header certificate",
        ),
        (
            "tx_proof",
            json!(["00".repeat(32)]),
            "transaction inclusion",
        ),
        (
            "log_proof",
            json!(r["log_proof"].as_array().unwrap()[1..].to_vec()),
            "log inclusion",
        ),
    ];
    let first_tx_proof = r["tx_proof"][0].as_str().unwrap();
    cases.push((
        "tx_proof",
        json!([flip_hex(first_tx_proof, 5)]),
        "transaction inclusion",
    ));
    cases.push((
        "validator_set_changes",
        json!([{ "header": s("header"), "certificate": s("certificate"), "next_validators": "00" }]),
        "validator set change",
    ));
    let mut fields_seen = std::collections::BTreeSet::new();
    for (field, value, reason) in cases {
        let mut t = r.clone();
        t[field] = value;
        let (code, out, err) = c.verify(&t);
        assert_eq!(code, 1, "{field}: {out}{err}");
        assert!(
            err.contains(reason),
            "{field}: expected {reason:?} in: {err}"
        );
        assert!(!out.contains("OK"), "{field}: {out}");
        fields_seen.insert(field);
    }
    // Every field of the format was altered at least once.
    let all: std::collections::BTreeSet<&str> =
        r.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(fields_seen, all);
}

#[test]
fn another_file_or_another_chain_fails() {
    let c = case();
    let other = c.dir.join("other.txt");
    std::fs::write(&other, b"the contract, draft\n").unwrap();
    let (code, _, err) = c.verify_with(&c.receipt, &other, &c.genesis);
    assert_eq!(code, 1);
    assert!(err.contains("file digest"), "{err}");

    // The same validators under another chain id: the genesis hash and chain id differ.
    let mut g: pyralog_ledger::Genesis =
        pyralog_ledger::Genesis::from_json(&std::fs::read_to_string(&c.genesis).unwrap()).unwrap();
    g.chain_id = ChainId::new("another-chain").unwrap();
    let other_genesis = c.dir.join("other-genesis.json");
    std::fs::write(&other_genesis, g.to_json()).unwrap();
    let (code, _, err) = c.verify_with(&c.receipt, &c.file, &other_genesis);
    assert_eq!(code, 1);
    assert!(err.contains("chain_id"), "{err}");
}

#[test]
fn unreadable_input_is_a_usage_error() {
    let c = case();
    let r = c.dir.join("r.json");
    std::fs::write(&r, serde_json::to_string(&c.receipt).unwrap()).unwrap();
    let missing = c.dir.join("missing.txt");
    let garbage = c.dir.join("garbage.json");
    std::fs::write(&garbage, "{ not json").unwrap();
    let verify = |file: &Path, receipt: &Path, genesis: Option<&Path>| {
        let mut v = vec![
            file.to_path_buf(),
            "--receipt".into(),
            receipt.to_path_buf(),
        ];
        if let Some(g) = genesis {
            v.extend(["--genesis".into(), g.to_path_buf()]);
        }
        v
    };
    for (args, paths) in [
        (vec!["verify"], verify(&missing, &r, Some(&c.genesis))),
        (vec!["verify"], verify(&c.file, &garbage, Some(&c.genesis))),
        (vec!["verify"], verify(&c.file, &r, Some(&garbage))),
        (vec!["verify"], verify(&c.file, &r, None)),
        (vec!["verify", "--no-such-flag"], vec![]),
    ] {
        let paths: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let out = pyralog(&args, &paths);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} {paths:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn key_new_writes_a_private_file_once_and_key_show_reads_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("wallet");
    let run = |args: &[&str]| {
        Command::new(EXE)
            .arg("--home")
            .arg(&home)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--json", "key", "new"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mode = std::fs::metadata(home.join("key.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = run(&["key", "new"]);
    assert_eq!(again.status.code(), Some(2), "never overwrites a key");
    let shown = run(&["--json", "key", "show"]);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["public_key"], created["public_key"]);
    // --out writes elsewhere.
    let other = dir.path().join("other.json");
    let out = run(&["key", "new", "--out", other.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(other.exists());
    // No key: a clear usage error that says how to make one.
    let none = Command::new(EXE)
        .arg("--home")
        .arg(dir.path().join("empty"))
        .args(["key", "show"])
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("pyralog key new"));
}
