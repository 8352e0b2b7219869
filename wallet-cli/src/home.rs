//! The wallet's directory: its key and, per chain, the genesis and the trusted state.
//!
//! ```text
//! HOME/key.json                          the wallet key (mode 0600)
//! HOME/chains/<chain id>/genesis.json    the chain's genesis, as given with --genesis
//! HOME/chains/<chain id>/trusted.json    latest verified header, certificate, validators
//! HOME/chains/<chain id>/forks/*.json    evidence of fork alarms
//! ```

use std::path::{Path, PathBuf};

use pyralog_crypto::Keypair;
use pyralog_ledger::Genesis;

use crate::error::{Result, usage};

/// The wallet home.
#[derive(Clone, Debug)]
pub struct Home {
    dir: PathBuf,
}

/// How the chain is chosen.
#[derive(Clone, Debug, Default)]
pub struct ChainChoice {
    /// A genesis file to trust (registered under the home on first use).
    pub genesis: Option<PathBuf>,
    /// A chain id already registered.
    pub chain: Option<String>,
}

impl Home {
    /// The home at `dir` (created when something is written).
    pub fn new(dir: &Path) -> Home {
        Home {
            dir: dir.to_path_buf(),
        }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The default key file.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key.json")
    }

    /// Reads the wallet key (`path`, or the home's key file).
    pub fn key(&self, path: Option<&Path>) -> Result<Keypair> {
        let path = path.map_or_else(|| self.key_path(), Path::to_path_buf);
        if !path.exists() {
            return Err(usage(format!(
                "no key at {}: create one with `pyralog key new`",
                path.display()
            )));
        }
        pyralog_crypto::keyfile::read_key_file(&path).map_err(|e| usage(e.to_string()))
    }

    fn chains(&self) -> PathBuf {
        self.dir.join("chains")
    }

    /// The directory of chain `id`.
    pub fn chain_dir(&self, id: &str) -> PathBuf {
        self.chains().join(id)
    }

    /// Resolves the chain: registers `--genesis` (refusing a different genesis for a chain
    /// id already known), or takes `--chain`, or the only chain registered.
    pub fn resolve_chain(&self, choice: &ChainChoice) -> Result<(Genesis, PathBuf)> {
        if let Some(path) = &choice.genesis {
            let genesis = read_genesis(path)?;
            let id = genesis.chain_id.to_string();
            if let Some(chain) = &choice.chain
                && chain != &id
            {
                return Err(usage(format!(
                    "--chain {chain} but {} is the genesis of {id}",
                    path.display()
                )));
            }
            let dir = self.chain_dir(&id);
            let stored = dir.join("genesis.json");
            if stored.exists() {
                let known = read_genesis(&stored)?;
                if known.hash().ok() != genesis.hash().ok() {
                    return Err(usage(format!(
                        "{} differs from the genesis of chain {id} this wallet already trusts ({}); \
                         use another --home to follow a different chain with the same id",
                        path.display(),
                        stored.display()
                    )));
                }
            } else {
                std::fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
                write_atomic(&stored, genesis.to_json().as_bytes())?;
            }
            return Ok((genesis, dir));
        }
        let id = match &choice.chain {
            Some(id) => id.clone(),
            None => {
                let known = self.known_chains();
                match known.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(usage(format!(
                            "this wallet ({}) follows no chain yet: pass --genesis FILE once, with \
                             the chain's genesis.json from a source you trust",
                            self.dir.display()
                        )));
                    }
                    many => {
                        return Err(usage(format!(
                            "this wallet follows several chains ({}): choose one with --chain",
                            many.join(", ")
                        )));
                    }
                }
            }
        };
        let dir = self.chain_dir(&id);
        let stored = dir.join("genesis.json");
        if !stored.exists() {
            return Err(usage(format!(
                "chain {id} is not known to this wallet: pass --genesis FILE once"
            )));
        }
        Ok((read_genesis(&stored)?, dir))
    }

    /// The chain ids registered in this home.
    pub fn known_chains(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.chains())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("genesis.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids
    }
}

/// Reads and parses a genesis file.
pub fn read_genesis(path: &Path) -> Result<Genesis> {
    let text = read_text(path, pyralog_ledger::chain::MAX_GENESIS_JSON_BYTES)?;
    Genesis::from_json(&text).map_err(|e| usage(format!("{}: {e}", path.display())))
}

/// Reads a text file of at most `max` bytes.
pub fn read_text(path: &Path, max: usize) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| io("reading", path, e))?;
    if meta.len() > max as u64 {
        return Err(usage(format!(
            "{} is {} bytes, over the limit of {max}",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| io("reading", path, e))
}

/// An I/O error as a usage error naming the path.
pub fn io(doing: &str, path: &Path, e: std::io::Error) -> crate::error::WalletError {
    usage(format!("{doing} {}: {e}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash never
/// leaves a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut file = std::fs::File::create(&tmp).map_err(|e| io("writing", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("writing", path, e))
}
