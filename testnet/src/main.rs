//! `pyralog-testnet`: create, run and break local Pyralog networks. See `--help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pyralog_ledger::{ChainParams, EngineId};
use pyralog_node::config::Transport;
use pyralog_testnet::{
    Manifest, NodeState, UpOptions, alive, client, down, height, kill_node, node_state, start_node,
    stop_node, up, wait_height,
};

/// The nodes allocate with mimalloc rather than glibc's malloc: about a tenth less CPU
/// per committed transaction in bursts, for about a fifth more resident memory
/// (docs/PERFORMANCE.md, seventeenth session).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Number of auditor nodes (`pyralog-node start --mode auditor`): they follow the
        /// chain over p2p without voting, re-execute every block and raise alarms.
        #[arg(long, default_value_t = 0)]
        auditors: usize,
        /// Consensus engine.
        #[arg(long, default_value = "tendermint")]
        consensus: String,
        /// Directory of the network.
        #[arg(long, default_value = "pyralog-testnet")]
        home: PathBuf,
        /// Seconds to wait for height 2.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Transport between the nodes: wireguard (libp2p inside userspace WireGuard) or
        /// tcp (plain libp2p TCP, for comparison).
        #[arg(long, value_enum, default_value = "wireguard")]
        transport: Transport,
    },
    /// Start every node of an existing testnet that is not running (after `down` or
    /// `clone`), and wait for the next height.
    Start {
        /// Directory of the network.
        #[arg(long, default_value = "pyralog-testnet")]
        home: PathBuf,
    },
    /// Copy a stopped testnet (genesis, keys, chain so far) to a new directory with fresh
    /// ports. Both started, the two networks go on with different histories from the same
    /// validators: a fork by a colluding quorum, to test auditors and light clients.
    Clone {
        /// Directory of the stopped network.
        #[arg(long, default_value = "pyralog-testnet")]
        home: PathBuf,
        /// Directory of the copy (must not exist).
        #[arg(long)]
        to: PathBuf,
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
        /// Transport between the nodes (see `up`).
        #[arg(long, value_enum, default_value = "wireguard")]
        transport: Transport,
    },
    /// Measure a testnet: committed tx/s, blocks/s, submit→commit latency, CPU per node,
    /// bytes on disk per transaction, against the machine's bounds measured in the same
    /// run (docs/PERFORMANCE.md). Uses the testnet running in --home, or starts a fresh one
    /// in DIR/<transport> (stopped and removed afterwards).
    Bench {
        /// Transport of a fresh network: wireguard, tcp, or both (two runs, for a ratio).
        #[arg(long, default_value = "wireguard", value_parser = ["wireguard", "tcp", "both"])]
        transport: String,
        /// Transactions to submit (all signed before the clock starts).
        #[arg(long, default_value_t = 10_000)]
        txs: usize,
        /// Submission rate: transactions per second (offered evenly, in slots about
        /// 10 ms apart), or max. A transaction refused for now (full pool) is sent again,
        /// in its sender's nonce order, as a wallet would; paced, the resends take their
        /// places in the schedule.
        #[arg(long, default_value = "max")]
        rate: String,
        /// With a numeric --rate: submit for this long (sets --txs), e.g. 30s.
        #[arg(long, value_parser = pyralog_node::audit::parse_duration)]
        duration: Option<Duration>,
        /// Sending accounts.
        #[arg(long, default_value_t = 1000)]
        accounts: usize,
        /// Approximate size of each notarization transaction, in bytes.
        #[arg(long, default_value_t = 200)]
        tx_size: usize,
        /// Number of validators of a fresh network.
        #[arg(long, default_value_t = 4)]
        validators: usize,
        /// A running testnet to measure, or the directory for fresh networks.
        #[arg(long, default_value = "pyralog-bench")]
        home: PathBuf,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// A small run (2,000 transactions from 100 accounts, about 20 s) for regression
        /// tracking; it fails only on errors, never on its figures.
        #[arg(long)]
        quick: bool,
        /// Fresh networks: keep the last validator down during the load, then restart it
        /// and time its catch-up through block sync against the block production rate.
        #[arg(long)]
        catch_up: bool,
        /// How a sender submits a slot of transactions: `batch`, one `broadcast_txs` call
        /// (one signature batch check at the node, as `pyralog notarize` of many files
        /// sends), or `each`, a JSON-RPC batch of `broadcast_tx` calls (checked one at a
        /// time, as wallets that send one transaction at a time are).
        #[arg(long, value_enum, default_value = "batch")]
        submit: pyralog_testnet::bench::Submit,
    },
    /// Run the wallet (the same as `pyralog`); used by tests and the demo.
    #[command(hide = true, disable_help_flag = true)]
    Wallet {
        /// Arguments for pyralog.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
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
    auditors: usize,
    consensus: &str,
    transport: Transport,
    home: &Path,
    timeout: u64,
) -> anyhow::Result<Manifest> {
    let opts = UpOptions {
        validators,
        auditors,
        engine: engine(consensus)?,
        transport,
        home: home.to_path_buf(),
        params: ChainParams::default(),
        timeout: Duration::from_secs(timeout),
    };
    println!(
        "starting {validators} validators and {auditors} auditors in {} ...",
        home.display()
    );
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
            auditors,
            consensus,
            home,
            timeout,
            transport,
        } => {
            start(validators, auditors, &consensus, transport, &home, timeout)?;
            println!(
                "stop it with: pyralog-testnet down --home {}",
                home.display()
            );
            Ok(())
        }
        Commands::Start { home } => {
            let mut m = Manifest::load(&home)?;
            let before = m.nodes.len();
            for i in 0..before {
                if !m.nodes[i].pid.is_some_and(alive) {
                    start_node(&mut m, i)?;
                }
            }
            m.save(&home)?;
            // Every node answers, then the chain moves past where it was.
            runtime()?.block_on(async {
                wait_height(&m, 1, Duration::from_secs(60)).await?;
                let mut h = 0;
                for n in &m.nodes {
                    h = h.max(height(&client(&n.rpc)?).await.unwrap_or(0));
                }
                wait_height(&m, h + 1, Duration::from_secs(60)).await
            })?;
            print_nodes(&m);
            Ok(())
        }
        Commands::Clone { home, to } => {
            let m = pyralog_testnet::clone(&home, &to)?;
            println!(
                "copied {} nodes to {}; start the copy with: pyralog-testnet start --home {}",
                m.nodes.len(),
                to.display(),
                to.display()
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
                    match node_state(n, Duration::from_secs(60)).await {
                        // As strings: a JSON value's display ignores the widths.
                        NodeState::Status(s) => println!(
                            "  {:<7} up    height {:>6}  round {:>3}  peers {}  mempool {}",
                            n.name,
                            s["height"].to_string(),
                            s["round"].to_string(),
                            s["peers"],
                            s["mempool_txs"]
                        ),
                        NodeState::Silent(_) => {
                            println!("  {:<7} starting or not answering", n.name)
                        }
                        NodeState::Down => println!("  {:<7} down", n.name),
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
        Commands::Demo {
            home,
            validators,
            transport,
        } => demo(&home, validators, transport),
        Commands::Bench {
            transport,
            txs,
            rate,
            duration,
            accounts,
            tx_size,
            validators,
            home,
            json,
            quick,
            catch_up,
            submit,
        } => {
            let rate = match rate.as_str() {
                "max" => None,
                n => Some(
                    n.parse::<u64>()
                        .ok()
                        .filter(|r| *r > 0)
                        .with_context(|| format!("--rate {n:?}: a number of tx/s, or max"))?,
                ),
            };
            let txs = match (duration, rate) {
                (Some(d), Some(r)) => (d.as_secs_f64() * r as f64) as usize,
                (Some(_), None) => anyhow::bail!("--duration needs a numeric --rate"),
                (None, _) => txs,
            };
            let (txs, accounts) = if quick { (2000, 100) } else { (txs, accounts) };
            let opts = pyralog_testnet::bench::BenchOptions {
                validators,
                transport: Transport::Wireguard,
                txs,
                rate,
                accounts,
                tx_size,
                home: home.clone(),
                catch_up,
                submit,
            };
            bench(&transport, opts, json.as_deref())
        }
        Commands::Node { .. } => anyhow::bail!("`node` must be the first argument"),
        Commands::Wallet { .. } => anyhow::bail!("`wallet` must be the first argument"),
    }
}

fn bench(
    transport: &str,
    opts: pyralog_testnet::bench::BenchOptions,
    json: Option<&Path>,
) -> anyhow::Result<()> {
    use pyralog_testnet::bench;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let rt = runtime()?;
    let machine = |when: &str, b: &bench::Bounds| {
        println!(
            "machine, {when}: {} cores; ed25519 verify {:.0}/s per core in batches ({:.0}/s one by one); BLAKE3 {:.0} MiB/s per core; fsync {:.2} ms",
            b.cores,
            b.sig_verify_per_core,
            b.sig_verify_single_per_core,
            b.blake3_mib_per_sec,
            b.fsync_ms
        )
    };
    let before = bench::measure_bounds(&opts.home)?;
    machine("before the load", &before);
    let running = match Manifest::load(&opts.home) {
        Ok(m) => {
            if let Some(n) = m.nodes.iter().find(|n| !n.pid.is_some_and(alive)) {
                anyhow::bail!(
                    "{} holds a testnet whose {} is not running: start it (`pyralog-testnet start --home {}`) or choose another --home",
                    opts.home.display(),
                    n.name,
                    opts.home.display()
                );
            }
            if opts.catch_up {
                anyhow::bail!(
                    "--catch-up needs a fresh network: choose a --home without a testnet"
                );
            }
            Some(m)
        }
        Err(_) => None,
    };
    if opts.catch_up && opts.validators < 4 {
        anyhow::bail!("--catch-up stops one validator, so it needs --validators 4 or more");
    }
    let mut runs = Vec::new();
    if let Some(m) = running {
        println!("measuring the testnet running in {}", opts.home.display());
        let name = match m.transport {
            Transport::Wireguard => "wireguard",
            Transport::Tcp => "tcp",
        };
        runs.push((name, rt.block_on(bench::load(&m, &opts))?));
    } else {
        let kinds: &[Transport] = match transport {
            "tcp" => &[Transport::Tcp],
            "both" => &[Transport::Tcp, Transport::Wireguard],
            _ => &[Transport::Wireguard],
        };
        for kind in kinds {
            let name = match kind {
                Transport::Wireguard => "wireguard",
                Transport::Tcp => "tcp",
            };
            let o = bench::BenchOptions {
                transport: *kind,
                home: opts.home.join(name),
                ..opts.clone()
            };
            println!(
                "{name}: {} validators, {} transactions of ~{} bytes from {} accounts, rate {} ...",
                o.validators,
                o.txs,
                o.tx_size,
                o.accounts,
                o.rate.map_or("max".to_string(), |r| format!("{r} tx/s"))
            );
            runs.push((name, rt.block_on(bench::run(&o, now_ms()))?));
        }
    }
    // The bounds are those of the machine while the load ran: the mean of the two. A
    // failure now (the fsync probe on a full disk) must not lose the runs' results.
    let after = match bench::measure_bounds(&opts.home) {
        Ok(after) => {
            machine("after the load", &after);
            Some(after)
        }
        Err(e) => {
            eprintln!(
                "warning: the bounds could not be measured after the load ({e:#}); the run is compared with those measured before it"
            );
            None
        }
    };
    let bounds = after.map_or(before, |a| bench::Bounds::bracketing(&before, &a));
    let mut last = None;
    for (name, r) in &runs {
        let bound = bounds.signature_bound(r.validators);
        println!(
            "{name}: {:.0} tx/s committed ({} of {} in {:.2} s, {} rejected), {:.1} blocks/s",
            r.tx_per_sec(),
            r.committed,
            r.submitted,
            r.secs,
            r.rejected,
            r.blocks_per_sec()
        );
        if r.resends + r.stranded + r.recovered > 0 || !r.refusals.is_empty() {
            let reasons: Vec<String> = r
                .refusals
                .iter()
                .map(|(reason, n)| format!("{n} {reason}"))
                .collect();
            println!(
                "{name}: {} resends of transactions refused for now; refused for good: {}; {} not sent behind a refused nonce; {} sent again after the log stalled",
                r.resends,
                if reasons.is_empty() {
                    "none".to_string()
                } else {
                    reasons.join(", ")
                },
                r.stranded,
                r.recovered
            );
        }
        println!(
            "{name}: submit→commit p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            r.latency.p50, r.latency.p90, r.latency.p99, r.latency.max
        );
        let cpu: Vec<String> = r
            .cpu_secs
            .iter()
            .map(|(n, s)| format!("{n} {s:.1}"))
            .collect();
        println!(
            "{name}: CPU seconds: {}; the bench itself {:.1}",
            cpu.join(", "),
            r.bench_cpu_secs
        );
        println!(
            "{name}: CPU per committed transaction: {:.0} µs a node; half the signature bound allows {:.0} µs (two batch signature checks)",
            r.cpu_us_per_tx_per_node(),
            bounds.cpu_us_per_tx_at_half_bound()
        );
        if let Some(m) = r.machine {
            println!(
                "{name}: the machine was {:.0}% busy during the run; the hypervisor took {:.1}% for other guests",
                m.busy * 100.0,
                m.steal * 100.0
            );
        }
        if let Some(b) = r.overlay_bytes_per_tx() {
            println!(
                "{name}: the validators sent {b:.0} bytes through the overlay per committed transaction ({:.1}× the transaction)",
                b / r.tx_bytes.max(1.0)
            );
        }
        println!(
            "{name}: {:.0} bytes on disk per transaction ({:.1}× the {:.0}-byte transaction)",
            r.bytes_on_disk_per_tx(),
            r.bytes_on_disk_per_tx() / r.tx_bytes.max(1.0),
            r.tx_bytes
        );
        println!(
            "{name}: signature bound {bound:.0} tx/s ({} validators on {} cores, the batch rate measured before and after the load): {:.2} of it",
            r.validators,
            bounds.cores,
            r.tx_per_sec() / bound.max(1.0)
        );
        if let Some(c) = r.catch_up {
            println!(
                "{name}: a validator down {:.1} s synced {} blocks ({} transactions) in {:.2} s: {:.0} tx/s, {:.1}× the {:.0} tx/s the network committed under the load",
                c.down_secs,
                c.blocks,
                c.txs,
                c.secs,
                c.tx_per_sec(),
                c.tx_per_sec() / r.tx_per_sec().max(1e-9),
                r.tx_per_sec()
            );
        }
        let mut report = bench::report_json(r, &bounds, name, &command);
        if let serde_json::Value::Object(o) = &mut report {
            o.insert("bounds_before".into(), before.to_json());
            o.insert(
                "bounds_after".into(),
                after.map_or(serde_json::Value::Null, |a| a.to_json()),
            );
        }
        last = Some(report);
    }
    if let [(_, tcp), (_, wg)] = runs.as_slice() {
        println!(
            "wireguard / tcp: {:.2}x",
            wg.tx_per_sec() / tcp.tx_per_sec()
        );
        if let Some(serde_json::Value::Object(o)) = last.as_mut() {
            o.insert("tcp_tx_per_sec".into(), serde_json::json!(tcp.tx_per_sec()));
        }
    }
    if let (Some(path), Some(v)) = (json, last) {
        std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("results written to {}", path.display());
    }
    Ok(())
}

fn demo(home: &Path, validators: usize, transport: Transport) -> anyhow::Result<()> {
    let m = match Manifest::load(home) {
        Ok(m) if m.nodes.iter().all(|n| n.pid.is_some_and(alive)) => {
            println!("using the running testnet in {}", home.display());
            m
        }
        _ if home.join(pyralog_testnet::MANIFEST).exists() => anyhow::bail!(
            "{} holds a stopped testnet: remove the directory (or use --home elsewhere) for a fresh demo",
            home.display()
        ),
        _ => start(validators, 0, "tendermint", transport, home, 60)?,
    };
    let file = home.join("demo-document.txt");
    let text = format!(
        "Pyralog demo document, written at {} ms since the Unix epoch.\n",
        now_ms()
    );
    std::fs::write(&file, &text)?;
    let receipt = home.join("demo-document.txt.pyralog-receipt.json");
    let wallet_home = home.join("wallet");
    let genesis = m.genesis.clone();
    // The same code as the `pyralog` command, run in this process.
    let pyralog = |step: &str, args: Vec<std::ffi::OsString>| -> anyhow::Result<()> {
        println!("\n$ pyralog {step}");
        let mut argv = vec![
            "pyralog".into(),
            "--home".into(),
            wallet_home.clone().into_os_string(),
        ];
        argv.extend(args);
        let code = pyralog_wallet::cli::main_with_args(argv);
        if code != ExitCode::SUCCESS {
            anyhow::bail!("`pyralog {step}` failed ({code:?})");
        }
        Ok(())
    };
    if !wallet_home.join("key.json").exists() {
        pyralog("key new", vec!["key".into(), "new".into()])?;
    }
    pyralog(
        "notarize demo-document.txt (checked against a witness node)",
        vec![
            "--rpc".into(),
            m.nodes[0].rpc.clone().into(),
            "--witness".into(),
            m.nodes[m.nodes.len() - 1].rpc.clone().into(),
            "--genesis".into(),
            genesis.clone().into_os_string(),
            "notarize".into(),
            file.clone().into_os_string(),
            "--meta".into(),
            "pyralog-testnet demo".into(),
            // The document is new on each run; the receipt of an earlier run is the
            // demo's own, and replaced.
            "--force".into(),
        ],
    )?;
    pyralog(
        "verify demo-document.txt (offline: the file, the receipt and the genesis only)",
        vec![
            "verify".into(),
            file.clone().into_os_string(),
            "--receipt".into(),
            receipt.into_os_string(),
            "--genesis".into(),
            genesis.into_os_string(),
        ],
    )?;
    let c = client(&m.nodes[0].rpc)?;
    let h = runtime()?.block_on(async { height(&c).await });
    println!(
        "\nthe network keeps running (height {}); stop it with: pyralog-testnet down --home {}",
        h.map_or("?".into(), |h| h.to_string()),
        home.display()
    );
    println!(
        "the wallet used {}: try `pyralog --home {} --rpc {} status`",
        wallet_home.display(),
        wallet_home.display(),
        m.nodes[0].rpc
    );
    Ok(())
}

fn main() -> ExitCode {
    pyralog_wallet::cli::exit_quietly_on_broken_pipe();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "node") {
        let mut node_args = vec![std::ffi::OsString::from("pyralog-node")];
        node_args.extend(args.into_iter().skip(2));
        return pyralog_node::cli::main_with_args(node_args);
    }
    if args.get(1).is_some_and(|a| a == "wallet") {
        let mut wallet_args = vec![std::ffi::OsString::from("pyralog")];
        wallet_args.extend(args.into_iter().skip(2));
        return pyralog_wallet::cli::main_with_args(wallet_args);
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
