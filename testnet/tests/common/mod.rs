//! A running testnet for the end-to-end tests: real processes on 127.0.0.1 in a
//! temporary directory, stopped by a guard even when a test fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use std::future::Future;
use std::sync::Arc;

use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::params::ArrayParams;
use jsonrpsee::http_client::HttpClient;
use jsonrpsee::server::{RpcModule, Server, ServerHandle};
use jsonrpsee::types::ErrorObjectOwned;
use pyralog_crypto::Keypair;
use pyralog_ledger::Genesis;
use pyralog_testnet::{Manifest, client};
use serde_json::Value;

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
        Net::up_with(&["--validators", &validators.to_string()])
    }

    /// `pyralog-testnet up ARGS` in a new temporary directory.
    pub fn up_with(args: &[&str]) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("net");
        let out = Command::new(EXE)
            .arg("up")
            .args(args)
            .arg("--home")
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

    /// A guard for a network not started yet, to be made in `home` by the test.
    pub fn not_up() -> Net {
        let dir = tempfile::tempdir().unwrap();
        Net {
            dir: dir.path().to_path_buf(),
            home: dir.path().join("net"),
            _dir: dir,
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
        succeed(
            Command::new(EXE).args(args).arg("--home").arg(&self.home),
            &format!("{args:?}"),
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
            .filter_map(|n| {
                let k = pyralog_crypto::keyfile::read_key_file(&n.home.join("validator_key.json"))
                    .unwrap();
                Some((set.index_of(&k.public())?, k))
            })
            .collect();
        keys.sort_by_key(|(i, _)| *i);
        keys.into_iter().map(|(_, k)| k).collect()
    }
}

/// The value of the sample `name` (labels included, as in `name{kind="x"}`) in the
/// Prometheus text `metrics`, if it is there.
pub fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (sample, value) = l.split_once(' ')?;
        (sample == name).then(|| value.trim().parse().ok())?
    })
}

/// The Prometheus text a node serves at `url` (`http://127.0.0.1:PORT/metrics`).
#[allow(dead_code)]
pub fn fetch_metrics(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Runs `cmd`, which must succeed (`what` names it in the failure).
pub fn succeed(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Drop for Net {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The temporary directory goes with the test: show the end of each node's
            // log with the failure (from its last 4 MiB, at most 500 bytes a line): its
            // last 30 lines other than routine commits, which would crowd out the rest
            // (a node commits several blocks a second), then its last commit.
            // Nothing here may panic: a panic while panicking aborts, before `down`.
            use std::io::{Read, Seek, SeekFrom, Write};
            const COMMIT: &str = "pyralog_node::driver: committed height";
            let mut logs: Vec<_> = std::fs::read_dir(&self.home)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("node.log"))
                .filter(|p| p.exists())
                .collect();
            logs.sort();
            let mut err = std::io::stderr().lock();
            for log in logs {
                let mut tail = Vec::new();
                if let Ok(mut f) = std::fs::File::open(&log) {
                    let _ = f
                        .seek(SeekFrom::End(-(4 << 20)))
                        .or_else(|_| f.rewind().map(|()| 0));
                    let _ = f.read_to_end(&mut tail);
                }
                let text = String::from_utf8_lossy(&tail);
                let other: Vec<&str> = text.lines().filter(|l| !l.contains(COMMIT)).collect();
                let last_commit = text.lines().rev().find(|l| l.contains(COMMIT));
                let _ = writeln!(err, "--- the last lines of {}:", log.display());
                for line in other[other.len().saturating_sub(30)..]
                    .iter()
                    .chain(&last_commit)
                {
                    let cut = line.floor_char_boundary(500);
                    let _ = writeln!(err, "{}", &line[..cut]);
                }
            }
        }
        let _ = Command::new(EXE)
            .args(["down", "--home"])
            .arg(&self.home)
            .output();
    }
}

/// Every method of the node API a proxy forwards.
pub const METHODS: &[&str] = &[
    "status",
    "genesis",
    "validators",
    "header",
    "block",
    "certificate",
    "broadcast_tx",
    "broadcast_txs",
    "tx",
    "get",
    "history",
    "log_inclusion",
    "log_consistency",
    "evidence",
];

/// Calls `method` upstream and passes its answer or error through.
pub async fn forward(
    upstream: &HttpClient,
    method: &str,
    args: Vec<Value>,
) -> Result<Value, ErrorObjectOwned> {
    let mut p = ArrayParams::new();
    for a in args {
        p.insert(a).unwrap();
    }
    upstream
        .request::<Value, _>(method, p)
        .await
        .map_err(|e| match e {
            jsonrpsee::core::ClientError::Call(o) => o,
            other => ErrorObjectOwned::owned(-32603, other.to_string(), None::<()>),
        })
}

/// A JSON-RPC server on 127.0.0.1 answering every method of [`METHODS`] with
/// `answer(state, method, args)`: a proxy that may alter what it forwards. Returns its URL.
pub async fn serve_proxy<S, F, Fut>(state: Arc<S>, answer: F) -> (String, ServerHandle)
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, &'static str, Vec<Value>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, ErrorObjectOwned>> + Send + 'static,
{
    let mut module = RpcModule::from_arc(state);
    for &m in METHODS {
        let answer = answer.clone();
        module
            .register_async_method(m, move |params, s, _| {
                let answer = answer.clone();
                async move {
                    let args: Vec<Value> = if params.as_str().is_some() {
                        params.parse()?
                    } else {
                        Vec::new()
                    };
                    answer(s, m, args).await
                }
            })
            .unwrap();
    }
    let server = Server::builder().build("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", server.local_addr().unwrap());
    (url, server.start(module))
}

/// Flips the last hex digit of `s` (`0` <-> `1`, anything else to `0`).
pub fn flip_last_hex(s: &str) -> String {
    let mut b = s.as_bytes().to_vec();
    let last = b.len() - 1;
    b[last] = if b[last] == b'0' { b'1' } else { b'0' };
    String::from_utf8(b).unwrap()
}

/// A certificate of `h` signed by the first three of `keys` (a colluding quorum of four).
pub fn certify(keys: &[Keypair], h: &pyralog_ledger::Header) -> pyralog_ledger::Certificate {
    let mut cert = pyralog_ledger::Certificate {
        height: h.height,
        round: 0,
        header_hash: h.hash(),
        votes: vec![],
    };
    for (i, k) in keys.iter().enumerate().take(3) {
        let vote = pyralog_ledger::Vote {
            kind: h.engine.commit_vote_kind(),
            height: h.height,
            round: 0,
            block: Some(cert.header_hash),
            time_ms: h.time_ms + 1,
        };
        cert.votes.push(pyralog_ledger::CommitSig {
            validator: i as u32,
            time_ms: vote.time_ms,
            signature: vote.sign(k, &h.chain_id),
        });
    }
    cert
}
