//! The node's configuration: `config.toml` in the home directory, every field with a
//! default, overridden by command-line flags (flag > file > default).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// What the node does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Votes with `validator_key.json` (it must be in the genesis validator set).
    #[default]
    Validator,
    /// Follows the chain, verifies every block and serves RPC; never signs.
    Full,
    /// A full node that also raises the alarm when the validators certify a block it finds
    /// invalid, and keeps a signed checkpoint (docs/AUDITOR.md).
    Auditor,
}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// A name for logs and tools.
    pub moniker: String,
    /// Validator, full node or auditor.
    pub mode: Mode,
    /// Peer-to-peer networking.
    pub p2p: P2pConfig,
    /// JSON-RPC server.
    pub rpc: RpcConfig,
    /// Prometheus metrics endpoint.
    pub metrics: MetricsConfig,
    /// Transaction pool.
    pub mempool: MempoolConfig,
    /// The database.
    pub storage: StorageConfig,
    /// Logging.
    pub log: LogConfig,
    /// Auditor mode.
    pub audit: AuditConfig,
}

/// Auditor mode settings (`mode = "auditor"`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// http:// URL that receives each alarm as a JSON POST; empty for none.
    pub webhook: String,
}

/// Which transport carries libp2p between nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// libp2p inside userspace WireGuard tunnels keyed by the node keys; silent to any
    /// key outside the allow-list. Addresses are `/ip4/A/udp/P`.
    #[default]
    Wireguard,
    /// Plain TCP with noise; for comparison and debugging. Addresses are `/ip4/A/tcp/P`.
    Tcp,
}

/// Peer-to-peer settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// The transport.
    pub transport: Transport,
    /// Listen address: the WireGuard UDP socket (`/ip4/A/udp/P`), or with `tcp` the TCP
    /// listener (`/ip4/A/tcp/P`).
    pub listen: String,
    /// Peers to dial at start: multiaddrs ending in `/p2p/<peer id>` (required with
    /// WireGuard, whose keys the peer ids name). They are allowed through WireGuard.
    pub bootstrap: Vec<String>,
    /// Peer ids let through WireGuard besides the genesis validators and the bootstrap
    /// peers (full nodes, auditors).
    pub allow: Vec<String>,
    /// File holding the network's WireGuard pre-shared key (base64 of 32 bytes, as `wg
    /// genpsk` prints); empty for none. Every node of the network needs the same one.
    pub psk_file: String,
    /// WireGuard MTU: the largest IP packet inside a tunnel (1280 is always safe).
    pub mtu: usize,
    /// Seconds between WireGuard keepalives on an idle tunnel (keeps NAT mappings); 0 for
    /// none.
    pub keepalive_secs: u16,
    /// Largest gossip message, in bytes.
    pub max_gossip_bytes: usize,
    /// Largest sync response, in bytes.
    pub max_sync_response_bytes: usize,
    /// Most connected peers.
    pub max_peers: usize,
    /// Inbound messages (gossip and requests) allowed per peer per second.
    pub peer_messages_per_sec: u32,
    /// Seconds a misbehaving peer stays banned.
    pub ban_secs: u64,
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            transport: Transport::Wireguard,
            listen: "/ip4/127.0.0.1/udp/26656".into(),
            bootstrap: Vec::new(),
            allow: Vec::new(),
            psk_file: String::new(),
            mtu: 1420,
            keepalive_secs: 25,
            max_gossip_bytes: 4 << 20,
            max_sync_response_bytes: 32 << 20,
            max_peers: 64,
            peer_messages_per_sec: 2000,
            ban_secs: 60,
        }
    }
}

/// JSON-RPC settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcConfig {
    /// HTTP and WebSocket address (one port).
    pub listen: SocketAddr,
    /// Largest request body, in bytes.
    pub max_request_bytes: u32,
    /// Largest response body, in bytes.
    pub max_response_bytes: u32,
    /// Most simultaneous connections.
    pub max_connections: u32,
    /// Most subscriptions per WebSocket connection.
    pub max_subscriptions_per_connection: u32,
    /// Seconds `broadcast_tx` in `commit` mode waits for the certificate.
    pub commit_timeout_secs: u64,
    /// MiB of recently asked blocks that `tx` keeps ready to prove (their transactions'
    /// encodings and hash trees); the block asked for last is kept even if larger.
    pub proof_cache_mib: u32,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 26657)),
            max_request_bytes: 1 << 20,
            max_response_bytes: 32 << 20,
            max_connections: 256,
            max_subscriptions_per_connection: 64,
            commit_timeout_secs: 30,
            proof_cache_mib: 64,
        }
    }
}

/// Metrics settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` here; empty string: no metrics endpoint.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:26660".into(),
        }
    }
}

/// Mempool settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MempoolConfig {
    /// Most pending transactions.
    pub max_txs: usize,
    /// Most pending bytes (encoded transactions).
    pub max_bytes: usize,
    /// How far ahead of a sender's next nonce a transaction may be and still wait here.
    pub max_nonce_gap: u64,
    /// A validator whose turn it is to propose (round 0), with no transaction it can
    /// include, waits up to this long for one before it proposes an empty block, so an
    /// idle chain makes fewer blocks. Capped at half the genesis propose timeout, which
    /// leaves the other half for the proposal to reach the others; 0 proposes at once.
    pub propose_wait_ms: u64,
}

impl Default for MempoolConfig {
    fn default() -> Self {
        MempoolConfig {
            max_txs: 100_000,
            max_bytes: 256 << 20,
            max_nonce_gap: 1024,
            propose_wait_ms: 200,
        }
    }
}

/// Database settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Memory for decoded state-tree nodes, in MiB: the tree's top levels by place in
    /// half of it, and recently used nodes (about 240 bytes each, in four generations) in
    /// the rest. Every state read walks the tree from its root, and a node not held here
    /// costs a database read of its page: a validator whose live tree (about two nodes
    /// per state key) outgrows this falls behind under load long before its CPU would
    /// (docs/NODE.md and docs/PERFORMANCE.md have the figures). 0 keeps a single node.
    pub state_cache_mb: usize,
    /// Memory for the database's own cache of its pages, in MiB. A state node missing from
    /// the node cache is read from here, or else from the file, several times slower.
    /// sled counts it in serialised bytes, so the memory used is larger. At least 8 MiB.
    pub db_cache_mb: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            state_cache_mb: pyralog_storage::sled::DEFAULT_STATE_CACHE_BYTES >> 20,
            db_cache_mb: pyralog_storage::sled::DEFAULT_DB_CACHE_BYTES >> 20,
        }
    }
}

/// Logging settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `info,pyralog_node=debug` (`RUST_LOG` wins).
    pub filter: String,
    /// Write logs as JSON lines instead of text.
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
            json: false,
        }
    }
}

/// Errors reading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is too large.
    #[error("{path} is {len} bytes, over the limit of {MAX_CONFIG_BYTES}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The file is not valid TOML for this configuration.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
}

impl Config {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(read(e)),
        };
        if len > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
                len,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The configuration as TOML, with a header explaining it.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).unwrap_or_default();
        format!(
            "# Pyralog node configuration. Every field is optional and has a default;\n\
             # command-line flags override this file. See docs/NODE.md.\n\n{body}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_unknown_fields_are_errors() {
        let c = Config::default();
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        let partial: Config = toml::from_str("[rpc]\nlisten = \"127.0.0.1:9\"\n").unwrap();
        assert_eq!(partial.rpc.listen.port(), 9);
        assert_eq!(partial.mempool, MempoolConfig::default());
        assert_eq!(partial.storage.state_cache_mb, 448);
        assert_eq!(partial.storage.db_cache_mb, 512);
        let sized: Config = toml::from_str("[storage]\nstate_cache_mb = 64\n").unwrap();
        assert_eq!(sized.storage.state_cache_mb, 64);
        assert_eq!(sized.storage.db_cache_mb, 512);
        let sized: Config = toml::from_str("[storage]\ndb_cache_mb = 2048\n").unwrap();
        assert_eq!(sized.storage.db_cache_mb, 2048);
        assert!(toml::from_str::<Config>("[rpc]\nlisen = \"x\"\n").is_err());
    }
}
