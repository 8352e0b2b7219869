//! The node's home directory: keys, config, genesis and data.
//!
//! ```text
//! HOME/config.toml          settings (documented defaults)
//! HOME/genesis.json         the chain's genesis
//! HOME/node_key.json        ed25519 node key (peer id, WireGuard key), mode 0600
//! HOME/validator_key.json   ed25519 consensus key, mode 0600
//! HOME/data/                sled database
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine as _;
use pyralog_crypto::Keypair;
use pyralog_crypto::keyfile::{generate_key_file, read_key_file};
use pyralog_ledger::{ChainId, ChainParams, EngineId, Genesis, GenesisValidator};
use serde::Serialize;

use crate::config::Config;

/// Paths inside a home directory.
#[derive(Clone, Debug)]
pub struct Home(PathBuf);

impl Home {
    /// The home at `dir`.
    pub fn new(dir: &Path) -> Home {
        Home(dir.to_path_buf())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.0.join("config.toml")
    }

    /// `genesis.json`.
    pub fn genesis(&self) -> PathBuf {
        self.0.join("genesis.json")
    }

    /// `node_key.json`.
    pub fn node_key(&self) -> PathBuf {
        self.0.join("node_key.json")
    }

    /// `validator_key.json`.
    pub fn validator_key(&self) -> PathBuf {
        self.0.join("validator_key.json")
    }

    /// The database directory.
    pub fn data(&self) -> PathBuf {
        self.0.join("data")
    }

    /// Reads and validates the genesis file.
    pub fn read_genesis(&self) -> anyhow::Result<Genesis> {
        let path = self.genesis();
        let text = read_limited(&path, pyralog_ledger::chain::MAX_GENESIS_JSON_BYTES as u64)
            .with_context(|| {
                format!(
                    "no readable genesis at {} (write the network's genesis.json there)",
                    path.display()
                )
            })?;
        Genesis::from_json(&text).with_context(|| format!("invalid genesis {}", path.display()))
    }

    /// Reads the node key.
    pub fn read_node_key(&self) -> anyhow::Result<Keypair> {
        read_key_file(&self.node_key())
            .with_context(|| format!("reading {}", self.node_key().display()))
    }

    /// Reads the validator key.
    pub fn read_validator_key(&self) -> anyhow::Result<Keypair> {
        read_key_file(&self.validator_key())
            .with_context(|| format!("reading {}", self.validator_key().display()))
    }
}

/// Reads a text file of at most `max` bytes.
pub fn read_limited(path: &Path, max: u64) -> anyhow::Result<String> {
    let len = std::fs::metadata(path)?.len();
    if len > max {
        bail!("{} is {len} bytes, over the limit of {max}", path.display());
    }
    Ok(std::fs::read_to_string(path)?)
}

/// What `init` created.
#[derive(Debug)]
pub struct Initialized {
    /// The node key.
    pub node_key: Keypair,
    /// The validator key.
    pub validator_key: Keypair,
    /// Whether a single-validator development genesis was written.
    pub wrote_genesis: bool,
}

/// Creates a home: keys (refusing to overwrite existing ones), `config.toml` (if absent)
/// and, when `genesis` is given, a copy of it; otherwise, if no genesis exists yet, a
/// development genesis with this node as the only validator, on chain `chain_id`.
pub fn init(
    home: &Home,
    config: &Config,
    genesis: Option<&Path>,
    chain_id: &str,
    now_ms: u64,
) -> anyhow::Result<Initialized> {
    std::fs::create_dir_all(home.dir())
        .with_context(|| format!("creating {}", home.dir().display()))?;
    for p in [home.node_key(), home.validator_key()] {
        if p.exists() {
            bail!(
                "{} already exists: refusing to overwrite a key (use another --home)",
                p.display()
            );
        }
    }
    let node_key = generate_key_file(&home.node_key())?;
    let validator_key = generate_key_file(&home.validator_key())?;
    if !home.config().exists() {
        std::fs::write(home.config(), config.to_toml())
            .with_context(|| format!("writing {}", home.config().display()))?;
    }
    let mut wrote_genesis = false;
    if let Some(src) = genesis {
        let text = read_limited(src, pyralog_ledger::chain::MAX_GENESIS_JSON_BYTES as u64)
            .with_context(|| format!("reading {}", src.display()))?;
        Genesis::from_json(&text).with_context(|| format!("invalid genesis {}", src.display()))?;
        std::fs::write(home.genesis(), text)?;
    } else if !home.genesis().exists() {
        let g = Genesis {
            chain_id: ChainId::new(chain_id)?,
            genesis_time_ms: now_ms,
            engine: EngineId::Tendermint,
            validators: vec![GenesisValidator {
                public_key: validator_key.public(),
                power: 1,
                name: Some(if config.moniker.is_empty() {
                    "node".into()
                } else {
                    config.moniker.clone()
                }),
                node_key: Some(node_key.public()),
            }],
            params: ChainParams::default(),
        };
        std::fs::write(home.genesis(), g.to_json())?;
        wrote_genesis = true;
    }
    std::fs::create_dir_all(home.data())?;
    Ok(Initialized {
        node_key,
        validator_key,
        wrote_genesis,
    })
}

/// The public identities of a node, as `key show` prints them.
#[derive(Clone, Debug, Serialize)]
pub struct Identity {
    /// The node key (hex).
    pub node_public_key: String,
    /// The libp2p peer id.
    pub peer_id: String,
    /// The WireGuard public key (x25519 of the node key), base64 as `wg` prints it.
    pub wg_public_key: String,
    /// The validator key (hex), if the home has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validator_public_key: Option<String>,
}

/// Reads the identities of a home.
pub fn identity(home: &Home) -> anyhow::Result<Identity> {
    let node = home.read_node_key()?;
    let public = node.public();
    let peer_id = pyralog_p2p::peer_id_from_public(public.as_bytes())?;
    let validator = if home.validator_key().exists() {
        Some(home.read_validator_key()?.public().to_hex())
    } else {
        None
    };
    Ok(Identity {
        node_public_key: public.to_hex(),
        peer_id: peer_id.to_string(),
        wg_public_key: base64::engine::general_purpose::STANDARD.encode(public.x25519_public()),
        validator_public_key: validator,
    })
}
