//! A running testnet for the end-to-end tests: real processes on 127.0.0.1 in a
//! temporary directory, stopped by a guard even when a test fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use jsonrpsee::http_client::HttpClient;
use pyralog_crypto::Keypair;
use pyralog_ledger::Genesis;
use pyralog_testnet::{Manifest, client};

pub const EXE: &str = env!("CARGO_BIN_EXE_pyralog-testnet");

/// A running testnet, stopped on drop.
pub struct Net {
    _dir: tempfile::TempDir,
    /// The temporary directory (the network is in `home`, below it).
    pub dir: PathBuf,
    /// The testnet home.
    pub home: PathBuf,
}

impl Net {
    pub fn up(validators: usize) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("net");
        let out = Command::new(EXE)
            .args(["up", "--validators", &validators.to_string(), "--home"])
            .arg(&home)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Net {
            dir: dir.path().to_path_buf(),
            _dir: dir,
            home,
        }
    }

    pub fn manifest(&self) -> Manifest {
        Manifest::load(&self.home).unwrap()
    }

    pub fn genesis(&self) -> Genesis {
        self.manifest().read_genesis().unwrap()
    }

    /// Runs `pyralog-testnet ARGS --home HOME`, which must succeed.
    pub fn cli(&self, args: &[&str]) {
        let out = Command::new(EXE)
            .args(args)
            .arg("--home")
            .arg(&self.home)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn down(&self) {
        self.cli(&["down"]);
    }

    pub fn clients(&self) -> Vec<HttpClient> {
        self.manifest()
            .nodes
            .iter()
            .map(|n| client(&n.rpc).unwrap())
            .collect()
    }

    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.home.join(node).join("node.log")).unwrap_or_default()
    }

    /// Validator keys in the canonical order of the set.
    pub fn validator_keys(&self) -> Vec<Keypair> {
        let m = self.manifest();
        let set = m.read_genesis().unwrap().validator_set().unwrap();
        let mut keys: Vec<(usize, Keypair)> = m
            .nodes
            .iter()
            .map(|n| {
                let k = pyralog_crypto::keyfile::read_key_file(&n.home.join("validator_key.json"))
                    .unwrap();
                (set.index_of(&k.public()).unwrap(), k)
            })
            .collect();
        keys.sort_by_key(|(i, _)| *i);
        keys.into_iter().map(|(_, k)| k).collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new(EXE)
            .args(["down", "--home"])
            .arg(&self.home)
            .output();
    }
}
