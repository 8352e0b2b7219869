//! `pyralog-testnet`: create, run and break local Pyralog networks. See `--help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pyralog_crypto::{Keypair, content_digest};
use pyralog_ledger::{
    Certificate, ChainParams, EngineId, Header, Payload, Receipt, Transaction, verify_receipt,
};
use pyralog_node::rpc::decode_hex;
use pyralog_testnet::{
    Manifest, UpOptions, alive, call, client, down, height, kill_node, start_node, stop_node, up,
};

/// Create, run and break local Pyralog networks (every node its own process on 127.0.0.1).
#[derive(Debug, Parser)]
#[command(name = "pyralog-testnet", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Create a network (genesis, node homes, free ports), start every node, wait for
    /// height 2, print the RPC URLs and write DIR/testnet.json.
    Up {
        /// Number of validators.
        #[arg(long, default_value_t = 4)]
        validators: usize,
        /// Consensus engine.
        #[arg(long, default_value = "tendermint")]
        consensus: String,
        /// Directory of the network.
        #[arg(long, default_value = "pyralog-testnet")]
        home: PathBuf,
        /// Seconds to wait for height 2.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Stop every node (SIGTERM, then SIGKILL after 10 s).
    Down {
        /// Directory of the network.
        #[arg(long, default_value = "pyralog-testnet")]
        home: PathBuf,
    },
    /// Show every node: process, height, peers, mempool.
    Status {
        /// Directory of the network.
        #[arg(long, default_value = "pyralog-testnet")]
        home: PathBuf,
    },
    /// SIGKILL one node (a crash).
    Kill {
        /// Node name, e.g. node1.
        node: String,
        /// Directory of the network.
        #[arg(long, default_value = "pyralog-testnet")]
        home: PathBuf,
    },
    /// Start one node again (stopping it first if it runs).
    Restart {
        /// Node name.
        node: String,
        /// Directory of the network.
        #[arg(long, default_value = "pyralog-testnet")]
        home: PathBuf,
    },
    /// Print a node's log.
    Logs {
        /// Node name.
        node: String,
        /// Directory of the network.
        #[arg(long, default_value = "pyralog-testnet")]
        home: PathBuf,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Start a network, notarize a file, verify the receipt offline, print what was
    /// proven, and leave the network running.
    Demo {
        /// Directory of the network.
        #[arg(long, default_value = "pyralog-testnet")]
        home: PathBuf,
        /// Number of validators.
        #[arg(long, default_value_t = 4)]
        validators: usize,
    },
    /// Run a node (the same as `pyralog-node`); used for the testnet's node processes.
    #[command(hide = true, disable_help_flag = true)]
    Node {
        /// Arguments for pyralog-node.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn engine(name: &str) -> anyhow::Result<EngineId> {
    match name {
        "tendermint" => Ok(EngineId::Tendermint),
        "pbft" | "raft" => {
            anyhow::bail!("the {name} engine is not in this build yet; use tendermint")
        }
        other => anyhow::bail!("unknown consensus {other:?}: expected tendermint"),
    }
}

fn now_ms() -> u64 {
    pyralog_node::driver::now_ms()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn print_nodes(m: &Manifest) {
    for n in &m.nodes {
        println!(
            "  {:<7} rpc {}  metrics {}  pid {}",
            n.name,
            n.rpc,
            n.metrics,
            n.pid.map_or("-".into(), |p| p.to_string())
        );
    }
}

fn start(
    validators: usize,
    consensus: &str,
    home: &Path,
    timeout: u64,
) -> anyhow::Result<Manifest> {
    let opts = UpOptions {
        validators,
        engine: engine(consensus)?,
        home: home.to_path_buf(),
        params: ChainParams::default(),
        timeout: Duration::from_secs(timeout),
    };
    println!("starting {validators} validators in {} ...", home.display());
    let started = std::time::Instant::now();
    let m = runtime()?.block_on(up(&opts, now_ms()))?;
    println!(
        "testnet {} is at height 2 after {:.1} s",
        m.chain_id,
        started.elapsed().as_secs_f64()
    );
    print_nodes(&m);
    println!(
        "manifest: {}",
        home.join(pyralog_testnet::MANIFEST).display()
    );
    Ok(m)
}

fn run(cmd: Commands) -> anyhow::Result<()> {
    match cmd {
        Commands::Up {
            validators,
            consensus,
            home,
            timeout,
        } => {
            start(validators, &consensus, &home, timeout)?;
            println!(
                "stop it with: pyralog-testnet down --home {}",
                home.display()
            );
            Ok(())
        }
        Commands::Down { home } => {
            let mut m = Manifest::load(&home)?;
            down(&mut m, &home)?;
            println!("stopped {} nodes", m.nodes.len());
            Ok(())
        }
        Commands::Status { home } => {
            let m = Manifest::load(&home)?;
            println!("chain {}", m.chain_id);
            runtime()?.block_on(async {
                for n in &m.nodes {
                    let running = n.pid.is_some_and(alive);
                    let st = match client(&n.rpc) {
                        Ok(c) => call(&c, "status", vec![]).await.ok(),
                        Err(_) => None,
                    };
                    match st {
                        Some(s) => println!(
                            "  {:<7} up    height {:>6}  round {:>3}  peers {}  mempool {}",
                            n.name, s["height"], s["round"], s["peers"], s["mempool_txs"]
                        ),
                        None => println!(
                            "  {:<7} {}",
                            n.name,
                            if running {
                                "starting or not answering"
                            } else {
                                "down"
                            }
                        ),
                    }
                }
            });
            Ok(())
        }
        Commands::Kill { node, home } => {
            let mut m = Manifest::load(&home)?;
            let i = m.node(&node)?;
            kill_node(&mut m, i)?;
            m.save(&home)?;
            println!("{node} killed (SIGKILL)");
            Ok(())
        }
        Commands::Restart { node, home } => {
            let mut m = Manifest::load(&home)?;
            let i = m.node(&node)?;
            stop_node(&mut m, i, Duration::from_secs(10))?;
            let pid = start_node(&mut m, i)?;
            m.save(&home)?;
            println!("{node} started (pid {pid})");
            Ok(())
        }
        Commands::Logs { node, home, tail } => {
            let m = Manifest::load(&home)?;
            let i = m.node(&node)?;
            let path = m.nodes[i].home.join("node.log");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let lines: Vec<&str> = text.lines().collect();
            let from = tail.map_or(0, |t| lines.len().saturating_sub(t));
            for l in &lines[from..] {
                println!("{l}");
            }
            Ok(())
        }
        Commands::Demo { home, validators } => demo(&home, validators),
        Commands::Node { .. } => anyhow::bail!("`node` must be the first argument"),
    }
}

fn demo(home: &Path, validators: usize) -> anyhow::Result<()> {
    let m = match Manifest::load(home) {
        Ok(m) if m.nodes.iter().all(|n| n.pid.is_some_and(alive)) => {
            println!("using the running testnet in {}", home.display());
            m
        }
        _ if home.join(pyralog_testnet::MANIFEST).exists() => anyhow::bail!(
            "{} holds a stopped testnet: remove the directory (or use --home elsewhere) for a fresh demo",
            home.display()
        ),
        _ => start(validators, "tendermint", home, 60)?,
    };
    let genesis = m.read_genesis()?;
    let file = home.join("demo-document.txt");
    let text = format!(
        "Pyralog demo document, written at {} ms since the Unix epoch.\n",
        now_ms()
    );
    std::fs::write(&file, &text)?;
    let digest = content_digest(text.as_bytes());
    let user = Keypair::generate()?;
    let tx = Transaction::new_signed(
        &user,
        genesis.chain_id.clone(),
        0,
        Payload::Notarize {
            digest,
            meta: "pyralog-testnet demo".into(),
        },
    )?;
    println!(
        "\nnotarizing {} (BLAKE3 {})",
        file.display(),
        digest.to_hex()
    );
    let rt = runtime()?;
    let c = client(&m.nodes[0].rpc)?;
    let proof = rt.block_on(async {
        let sent = call(
            &c,
            "broadcast_tx",
            vec![
                serde_json::json!(hex::encode(pyralog_ledger::Encode::to_bytes(&tx))),
                serde_json::json!("commit"),
            ],
        )
        .await?;
        println!(
            "  committed at height {} (tx {})",
            sent["committed"]["height"], sent["hash"]
        );
        call(&c, "tx", vec![serde_json::json!(tx.hash().to_hex())]).await
    })?;
    let header: Header = decode_hex(proof["header"]["encoded"].as_str().unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("header from RPC: {e}"))?;
    let cert: Certificate =
        decode_hex(proof["certificate"]["encoded"].as_str().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("certificate from RPC: {e}"))?;
    let hashes = |k: &str| -> anyhow::Result<Vec<pyralog_ledger::Hash>> {
        Ok(serde_json::from_value(proof[k].clone())?)
    };
    let receipt = Receipt::new(
        &tx,
        proof["index"].as_u64().unwrap_or(0) as u32,
        proof["log_index"].as_u64().unwrap_or(0),
        &header,
        &cert,
        hashes("tx_proof")?,
        hashes("log_proof")?,
        Vec::new(),
    )?;
    let receipt_path = home.join("demo-document.txt.pyralog-receipt.json");
    std::fs::write(&receipt_path, receipt.to_json())?;
    println!("  receipt written to {}", receipt_path.display());

    // Offline: only the file, the receipt and the genesis.
    let file_digest = content_digest(&std::fs::read(&file)?);
    let receipt_back = Receipt::from_json(&std::fs::read_to_string(&receipt_path)?)?;
    let proven = verify_receipt(&genesis, &receipt_back, Some(&file_digest))
        .context("the receipt does not verify")?;
    println!("\nverified offline against {}:", m.genesis.display());
    println!("  file digest   {}", proven.digest.to_hex());
    println!("  signed by     {}", proven.signer.to_hex());
    println!(
        "  in block      {} (tx {}, log position {})",
        proven.height, proven.index, proven.log_index
    );
    println!("  BFT time      {} ms since the Unix epoch", proven.time_ms);
    println!("  chain         {}", proven.chain_id);
    println!(
        "  certified by  {} of {} validators",
        cert.votes.len(),
        genesis.validators.len()
    );
    let h = rt.block_on(async { height(&c).await });
    println!(
        "\nthe network keeps running (height {}); stop it with: pyralog-testnet down --home {}",
        h.map_or("?".into(), |h| h.to_string()),
        home.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "node") {
        let mut node_args = vec![std::ffi::OsString::from("pyralog-node")];
        node_args.extend(args.into_iter().skip(2));
        return pyralog_node::cli::main_with_args(node_args);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pyralog-testnet: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
