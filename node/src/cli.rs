//! The `pyralog-node` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Mode, Transport};
use crate::home::{self, Home};

/// Run a Pyralog validator or full node.
#[derive(Debug, Parser)]
#[command(name = "pyralog-node", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Commands,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Create a home directory: node and validator keys (mode 0600), config.toml with
    /// documented defaults, and a genesis (copied from --genesis, or a one-validator
    /// development chain).
    Init {
        /// Home directory.
        #[arg(long, env = "PYRALOG_HOME")]
        home: PathBuf,
        /// Genesis file to copy into the home (the network's).
        #[arg(long)]
        genesis: Option<PathBuf>,
        /// Chain id of the development genesis written when --genesis is not given.
        #[arg(long, default_value = "pyralog-dev")]
        chain_id: String,
        /// Settings to write into config.toml.
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Show the node's keys.
    Key {
        /// Key subcommand.
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Run the node until SIGINT or SIGTERM.
    Start {
        /// Home directory.
        #[arg(long, env = "PYRALOG_HOME")]
        home: PathBuf,
        /// Settings that override config.toml.
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Audit a network from outside through its JSON-RPC endpoints, with no validator
    /// keys: re-verify and re-execute every block, prove the log append-only, re-check
    /// stored entries, cross-check endpoints and other auditors, and raise the alarm on
    /// any inconsistency (docs/AUDITOR.md).
    Audit(crate::audit::AuditArgs),
    /// Print the effective configuration (defaults < config.toml < flags) as TOML.
    Config {
        /// Home directory.
        #[arg(long, env = "PYRALOG_HOME")]
        home: PathBuf,
        /// Settings that override config.toml.
        #[command(flatten)]
        overrides: Overrides,
    },
}

/// Key subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print the node public key, peer id, WireGuard public key and validator key.
    Show {
        /// Home directory.
        #[arg(long, env = "PYRALOG_HOME")]
        home: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Flags that override config.toml.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "Configuration overrides")]
pub struct Overrides {
    /// validator (votes), full (follows, never signs) or auditor (a full node that raises
    /// alarms and keeps a signed checkpoint).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Name for logs.
    #[arg(long)]
    pub moniker: Option<String>,
    /// Transport between nodes: wireguard (default) or tcp (for comparison).
    #[arg(long, value_enum)]
    pub p2p_transport: Option<Transport>,
    /// p2p listen address: /ip4/127.0.0.1/udp/26656 (WireGuard) or /ip4/127.0.0.1/tcp/26656.
    #[arg(long)]
    pub p2p_listen: Option<String>,
    /// Bootstrap peer (repeatable; replaces the file's list).
    #[arg(long = "bootstrap")]
    pub bootstrap: Vec<String>,
    /// JSON-RPC address (HTTP and WebSocket).
    #[arg(long)]
    pub rpc_listen: Option<SocketAddr>,
    /// Metrics address (empty: disabled).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Log filter (tracing syntax).
    #[arg(long)]
    pub log: Option<String>,
    /// Log JSON lines.
    #[arg(long)]
    pub log_json: bool,
}

impl Overrides {
    /// Applies the flags to `c`.
    pub fn apply(&self, c: &mut Config) {
        if let Some(m) = self.mode {
            c.mode = m;
        }
        if let Some(m) = &self.moniker {
            c.moniker = m.clone();
        }
        if let Some(t) = self.p2p_transport {
            c.p2p.transport = t;
        }
        if let Some(l) = &self.p2p_listen {
            c.p2p.listen = l.clone();
        }
        if !self.bootstrap.is_empty() {
            c.p2p.bootstrap = self.bootstrap.clone();
        }
        if let Some(l) = self.rpc_listen {
            c.rpc.listen = l;
        }
        if let Some(l) = &self.metrics_listen {
            c.metrics.listen = l.clone();
        }
        if let Some(l) = &self.log {
            c.log.filter = l.clone();
        }
        if self.log_json {
            c.log.json = true;
        }
    }
}

fn effective(home: &Home, o: &Overrides) -> anyhow::Result<Config> {
    let mut c = Config::load(&home.config())?;
    o.apply(&mut c);
    Ok(c)
}

fn init_tracing(c: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&c.log.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if c.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs a parsed command line; returns the exit status.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Commands::Init {
            home,
            genesis,
            chain_id,
            overrides,
        } => {
            let home = Home::new(&home);
            let mut config = Config::load(&home.config())?;
            overrides.apply(&mut config);
            let out = home::init(
                &home,
                &config,
                genesis.as_deref(),
                &chain_id,
                crate::driver::now_ms(),
            )?;
            let id = home::identity(&home)?;
            println!("initialised {}", home.dir().display());
            println!("  node key       {}", id.node_public_key);
            println!("  peer id        {}", id.peer_id);
            println!("  validator key  {}", out.validator_key.public().to_hex());
            if out.wrote_genesis {
                println!(
                    "  genesis        one-validator development chain {chain_id:?} (replace genesis.json to join a network)"
                );
            }
            println!(
                "start it with: pyralog-node start --home {}",
                home.dir().display()
            );
            Ok(0)
        }
        Commands::Key {
            command: KeyCommand::Show { home, json },
        } => {
            let id = home::identity(&Home::new(&home))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&id)?);
            } else {
                println!("node public key       {}", id.node_public_key);
                println!("peer id               {}", id.peer_id);
                println!("wireguard public key  {}", id.wg_public_key);
                if let Some(v) = &id.validator_public_key {
                    println!("validator public key  {v}");
                }
            }
            Ok(0)
        }
        Commands::Config { home, overrides } => {
            print!("{}", effective(&Home::new(&home), &overrides)?.to_toml());
            Ok(0)
        }
        Commands::Start { home, overrides } => {
            let home = Home::new(&home);
            let config = effective(&home, &overrides)?;
            init_tracing(&config);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("pyralog-node")
                .build()?;
            rt.block_on(crate::node::start(&home, config))?;
            Ok(0)
        }
        Commands::Audit(args) => {
            init_tracing(&Config {
                log: crate::config::LogConfig {
                    json: args.log_json,
                    ..Default::default()
                },
                ..Config::default()
            });
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("pyralog-audit")
                .build()?;
            rt.block_on(crate::audit::run(args))
        }
    }
}

/// Entry point shared by `pyralog-node` and `pyralog-testnet node`: parse `args`, run,
/// print the error chain and return the exit status (0 ok, 1 failure, 2 usage).
pub fn main_with_args<I, T>(args: I) -> std::process::ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    pyralog_wallet::cli::exit_quietly_on_broken_pipe();
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("pyralog-node: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
