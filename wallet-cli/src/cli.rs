//! The `pyralog` command line.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use pyralog_crypto::Hash;
use pyralog_ledger::exec::NotarizationRecord;
use pyralog_ledger::state::Namespace;
use pyralog_ledger::verify::{verify_block_contents, verify_header_link};
use pyralog_ledger::{Decode, Encode, KvRecord, Payload, Receipt, Transaction, verify_receipt};
use pyralog_storage::arrow::{ExportFormat, ExportTable, TableWriter};
use serde_json::{Value, json};

use crate::client::{Rpc, TX_REJECTED, decode_value};
use crate::error::{Result, WalletError, check, node, usage};
use crate::home::{ChainChoice, Home, io, read_text, write_atomic};
use crate::light::LightClient;
use crate::query;

const ABOUT: &str = "Pyralog wallet: notarize files with receipts that verify offline, and \
read the ledger through a light client that checks every answer against a certified header.";

const AFTER: &str = "\
Exit status: 0 success; 1 a check failed (receipt, proof, certificate, or a server that \
lies); 2 bad usage or unreadable input; 3 fork alarm (evidence saved under \
HOME/chains/<chain>/forks); 4 the node cannot be reached, refused, or timed out.

The first command that talks to a chain needs --genesis FILE (the chain's genesis.json, from \
a source you trust); the wallet keeps it and a trusted header under --home. See \
docs/WALLET.md.";

/// Command-line interface of `pyralog`.
#[derive(Debug, Parser)]
#[command(name = "pyralog", version, about = ABOUT, after_help = AFTER)]
pub struct Cli {
    /// Wallet directory: key and per-chain trusted state.
    #[arg(long, global = true, env = "PYRALOG_HOME", default_value_os_t = default_home())]
    home: PathBuf,
    /// Node to talk to (JSON-RPC over HTTP).
    #[arg(
        long,
        global = true,
        env = "PYRALOG_RPC",
        default_value = "http://127.0.0.1:26657"
    )]
    rpc: String,
    /// Other nodes whose headers must agree with --rpc (repeatable).
    #[arg(long = "witness", global = true, value_name = "URL")]
    witnesses: Vec<String>,
    /// The chain's genesis file; registered under --home on first use.
    #[arg(long, global = true, value_name = "FILE")]
    genesis: Option<PathBuf>,
    /// Chain id, when the wallet follows several chains.
    #[arg(long, global = true, value_name = "ID")]
    chain: Option<String>,
    /// Key file (default: HOME/key.json).
    #[arg(long, global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Machine-readable output (one JSON document on stdout).
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for the node (each request, and for commits).
    #[arg(long, global = true, default_value_t = 60)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

fn default_home() -> PathBuf {
    std::env::var_os("HOME")
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
        .join(".pyralog")
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create or show the wallet key.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Notarize files: hash, sign, submit, wait for the certificate, write receipts.
    Notarize {
        /// Files to notarize.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Text stored with each digest (at most 1024 bytes).
        #[arg(long, default_value = "")]
        meta: String,
        /// Directory for receipts (default: next to each file, FILE.pyralog-receipt.json).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Replace existing receipt files that are for other content.
        #[arg(long)]
        force: bool,
    },
    /// Verify a receipt offline: exit 0 only if every check passes.
    Verify {
        /// The file the receipt is for.
        file: PathBuf,
        /// The receipt.
        #[arg(long, value_name = "FILE")]
        receipt: PathBuf,
        /// Also print how long verification and its signature checks took.
        #[arg(long)]
        timings: bool,
    },
    /// Set a key to a value and wait until it is committed.
    Put {
        /// The key (text, or hex with --hex).
        key: String,
        /// The value (text, or hex with --hex).
        value: String,
        /// KEY and VALUE are hex.
        #[arg(long)]
        hex: bool,
    },
    /// Delete a key and wait until it is committed.
    Delete {
        /// The key (text, or hex with --hex).
        key: String,
        /// KEY is hex.
        #[arg(long)]
        hex: bool,
    },
    /// Read a key, proven against a certified header: its value or its absence.
    Get {
        /// The key (text, or hex with --hex).
        key: String,
        /// Read the state at this height (default: the verified head).
        #[arg(long)]
        height: Option<u64>,
        /// KEY is hex.
        #[arg(long)]
        hex: bool,
    },
    /// Every committed version of a key, newest first, each proven.
    History {
        /// The key (text, or hex with --hex).
        key: String,
        /// KEY is hex.
        #[arg(long)]
        hex: bool,
    },
    /// A transaction's status and proof.
    Tx {
        /// Transaction hash (hex).
        hash: String,
    },
    /// The chain, the node's head, and the light client's trusted head.
    Status,
    /// Export verified blocks or transactions as Arrow IPC or Parquet.
    Export {
        /// First height.
        #[arg(long)]
        from: u64,
        /// Last height (default: the verified head).
        #[arg(long)]
        to: Option<u64>,
        /// File format.
        #[arg(long, value_enum, default_value_t = Format::Arrow)]
        format: Format,
        /// Which table.
        #[arg(long, value_enum, default_value_t = Table::Transactions)]
        table: Table,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCmd {
    /// Create a new key (never overwrites).
    New {
        /// Where to write it (default: HOME/key.json, or --key-file).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Show the public key.
    Show,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Arrow,
    Parquet,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Table {
    Transactions,
    Blocks,
}

/// What a command prints: text for people, JSON for scripts; and, when part of the work
/// failed, the error that sets the exit status (printed after the report).
struct Report {
    text: String,
    json: Value,
    failure: Option<WalletError>,
}

/// Status of a process that wrote to a closed pipe: what a shell reports for a command
/// that `SIGPIPE` ended (128 + 13).
pub const BROKEN_PIPE_STATUS: u8 = 141;

/// Makes a write to a closed standard output or error (`pyralog ... | head`) end the
/// process quietly with [`BROKEN_PIPE_STATUS`], as `SIGPIPE` ends other commands, rather
/// than with a panic and its backtrace: Rust ignores `SIGPIPE`, so `println!` panics
/// on a broken pipe. Other panics report as before. Idempotent; every binary's `main`
/// calls it first.
pub fn exit_quietly_on_broken_pipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload_as_str().is_some_and(is_broken_pipe_panic) {
                std::process::exit(i32::from(BROKEN_PIPE_STATUS));
            }
            report(info);
        }));
    });
}

/// Whether a panic's message is `print!`'s on a closed pipe ("failed printing to stdout:
/// Broken pipe (os error 32)").
fn is_broken_pipe_panic(message: &str) -> bool {
    message.starts_with("failed printing to std") && message.contains("Broken pipe")
}

/// Runs `pyralog` with `args` (the first is the program name) and returns its exit status.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    exit_quietly_on_broken_pipe();
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pyralog: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report.json).unwrap_or_default()
                );
            } else {
                print!("{}", report.text);
            }
            match report.failure {
                None => ExitCode::SUCCESS,
                Some(e) => {
                    eprintln!("pyralog: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Err(e) => {
            if json {
                let kind = match &e {
                    WalletError::Usage(_) => "usage",
                    WalletError::Check(_) => "check_failed",
                    WalletError::Fork { .. } => "fork",
                    WalletError::Node(_) => "node",
                };
                println!(
                    "{}",
                    json!({ "ok": false, "error": kind, "message": e.to_string() })
                );
            }
            eprintln!("pyralog: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Everything a networked command needs.
struct Session {
    rpc: Rpc,
    witnesses: Vec<Rpc>,
    lc: LightClient,
    timeout: Duration,
}

impl Session {
    async fn open(cli: &Cli, home: &Home) -> Result<Session> {
        let (genesis, dir) = home.resolve_chain(&ChainChoice {
            genesis: cli.genesis.clone(),
            chain: cli.chain.clone(),
        })?;
        let timeout = Duration::from_secs(cli.timeout.max(1));
        let rpc = Rpc::new(&cli.rpc, timeout)?;
        let witnesses = cli
            .witnesses
            .iter()
            .map(|w| Rpc::new(w, timeout))
            .collect::<Result<_>>()?;
        let mut s = Session {
            rpc,
            witnesses,
            lc: LightClient::open(genesis, &dir)?,
            timeout,
        };
        s.lc.update(&s.rpc, &s.witnesses).await?;
        Ok(s)
    }

    fn head(&self) -> u64 {
        self.lc.height()
    }

    fn chain_id(&self) -> pyralog_ledger::ChainId {
        self.lc.genesis().chain_id.clone()
    }
}

async fn run(cli: Cli) -> Result<Report> {
    let home = Home::new(&cli.home);
    match &cli.cmd {
        Cmd::Key(k) => key_cmd(&cli, &home, k),
        Cmd::Verify {
            file,
            receipt,
            timings,
        } => verify_cmd(&cli, file, receipt, *timings),
        Cmd::Notarize {
            files,
            meta,
            out,
            force,
        } => notarize(&cli, &home, files, meta, out.as_deref(), *force).await,
        Cmd::Put { key, value, hex } => {
            let key = arg_bytes("KEY", key, *hex)?;
            let value = arg_bytes("VALUE", value, *hex)?;
            write(&cli, &home, Payload::Put { key, value }).await
        }
        Cmd::Delete { key, hex } => {
            let key = arg_bytes("KEY", key, *hex)?;
            write(&cli, &home, Payload::Delete { key }).await
        }
        Cmd::Get { key, height, hex } => {
            get_cmd(&cli, &home, &arg_bytes("KEY", key, *hex)?, *height).await
        }
        Cmd::History { key, hex } => history_cmd(&cli, &home, &arg_bytes("KEY", key, *hex)?).await,
        Cmd::Tx { hash } => tx_cmd(&cli, &home, hash).await,
        Cmd::Status => status_cmd(&cli, &home).await,
        Cmd::Export {
            from,
            to,
            format,
            table,
            out,
        } => export_cmd(&cli, &home, *from, *to, *format, *table, out).await,
    }
}

fn arg_bytes(what: &str, text: &str, is_hex: bool) -> Result<Vec<u8>> {
    let bytes = if is_hex {
        hex::decode(text.strip_prefix("0x").unwrap_or(text))
            .map_err(|e| usage(format!("{what} is not hex: {e}")))?
    } else {
        text.as_bytes().to_vec()
    };
    if what == "KEY" && (bytes.is_empty() || bytes.len() > pyralog_ledger::tx::MAX_KEY_BYTES) {
        return Err(usage(format!(
            "{what} must be 1 to {} bytes",
            pyralog_ledger::tx::MAX_KEY_BYTES
        )));
    }
    Ok(bytes)
}

/// Text if the bytes are printable UTF-8, hex otherwise.
fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}"),
        _ => format!("0x{}", hex::encode(bytes)),
    }
}

fn bytes_json(bytes: &[u8]) -> Value {
    json!({
        "hex": hex::encode(bytes),
        "text": std::str::from_utf8(bytes).ok(),
    })
}

/// Milliseconds since the epoch as UTC text (`2026-11-21T10:00:00.123Z`).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn key_cmd(cli: &Cli, home: &Home, k: &KeyCmd) -> Result<Report> {
    let (key, path, created) = match k {
        KeyCmd::New { out } => {
            let path = out
                .clone()
                .or_else(|| cli.key_file.clone())
                .unwrap_or_else(|| home.key_path());
            if let Some(parent) = path.parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
            }
            let key = pyralog_crypto::keyfile::generate_key_file(&path)
                .map_err(|e| usage(e.to_string()))?;
            (key, path, true)
        }
        KeyCmd::Show => {
            let path = cli.key_file.clone().unwrap_or_else(|| home.key_path());
            (home.key(Some(&path))?, path, false)
        }
    };
    let public = key.public().to_hex();
    Ok(Report {
        text: format!(
            "{}public key: {public}\nkey file:   {}\n",
            if created { "created a new key\n" } else { "" },
            path.display()
        ),
        json: json!({ "public_key": public, "key_file": path, "created": created }),
        failure: None,
    })
}

fn verify_cmd(cli: &Cli, file: &Path, receipt: &Path, timings: bool) -> Result<Report> {
    let genesis_path = cli.genesis.as_ref().ok_or_else(|| {
        usage("verify needs --genesis FILE: the genesis of the chain the receipt is from")
    })?;
    let genesis = crate::home::read_genesis(genesis_path)?;
    let text = read_text(receipt, pyralog_ledger::receipt::MAX_RECEIPT_JSON_BYTES)?;
    let r = Receipt::from_json(&text)
        .map_err(|e| usage(format!("{} is not a receipt: {e}", receipt.display())))?;
    let digest = pyralog_crypto::hash_file(file).map_err(|e| usage(format!("{}", e)))?;
    let proven = verify_receipt(&genesis, &r, Some(&digest))
        .map_err(|e| check(format!("receipt does not verify: {e}")))?;
    let mut text = format!(
        "OK: {} was notarized\n  digest:  {}\n  signer:  {}\n  height:  {} (transaction {}, log entry {})\n  time:    {} (BFT time, {} ms)\n  chain:   {}\n  meta:    {}\n  proven by a certificate of the genesis validator set ({} validators)\n",
        file.display(),
        proven.digest.to_hex(),
        proven.signer.to_hex(),
        proven.height,
        proven.index,
        proven.log_index,
        utc(proven.time_ms),
        proven.time_ms,
        proven.chain_id,
        show(proven.meta.as_bytes()),
        genesis.validators.len(),
    );
    let mut json = json!({ "ok": true, "proven": proven });
    if timings {
        // One cold run says more about page faults and clock ramp-up than about the
        // work: time both, interleaved, and compare medians.
        let (total, sigs) = median_timings(&genesis, &r, &digest)?;
        let share = sigs.as_secs_f64() / total.as_secs_f64().max(1e-9);
        text.push_str(&format!(
            "  verify took {} µs, of which signature checks {} µs ({:.0}%)\n",
            total.as_micros(),
            sigs.as_micros(),
            share * 100.0
        ));
        json["timings"] = json!({
            "verify_us": total.as_micros() as u64,
            "signatures_us": sigs.as_micros() as u64,
            "signature_share": share,
        });
    }
    Ok(Report {
        text,
        json,
        failure: None,
    })
}

/// Time of the signature checks alone that [`verify_receipt`] makes: the transaction's
/// and the certificate's votes.
/// Runs of `verify --timings`.
const TIMING_RUNS: usize = 31;

/// Medians over [`TIMING_RUNS`] interleaved runs of the whole verification and of its
/// signature checks alone.
fn median_timings(
    genesis: &pyralog_ledger::Genesis,
    r: &Receipt,
    digest: &pyralog_ledger::Hash,
) -> Result<(Duration, Duration)> {
    let mut totals = Vec::with_capacity(TIMING_RUNS);
    let mut sigs = Vec::with_capacity(TIMING_RUNS);
    for _ in 0..TIMING_RUNS {
        sigs.push(signature_time(genesis, r)?);
        let start = Instant::now();
        verify_receipt(genesis, r, Some(digest))
            .map_err(|e| check(format!("receipt does not verify: {e}")))?;
        totals.push(start.elapsed());
    }
    totals.sort();
    sigs.sort();
    Ok((totals[TIMING_RUNS / 2], sigs[TIMING_RUNS / 2]))
}

/// The time of the receipt's signature checks alone, made as verification makes them:
/// the transaction's signature, then the certificate's votes in one batch.
fn signature_time(genesis: &pyralog_ledger::Genesis, r: &Receipt) -> Result<Duration> {
    let bad = |e: &dyn std::fmt::Display| check(e.to_string());
    let tx = Transaction::from_bytes(&r.tx).map_err(|e| bad(&e))?;
    let header = pyralog_ledger::Header::from_bytes(&r.header).map_err(|e| bad(&e))?;
    let cert = pyralog_ledger::Certificate::from_bytes(&r.certificate).map_err(|e| bad(&e))?;
    let set = genesis.validator_set().map_err(|e| bad(&e))?;
    let mut keys = Vec::with_capacity(cert.votes.len());
    let mut votes = Vec::with_capacity(cert.votes.len());
    for sig in &cert.votes {
        let v = set
            .get(sig.validator as usize)
            .ok_or_else(|| check("vote of an unknown validator"))?;
        keys.push(v.public_key);
        votes.push(pyralog_ledger::Encode::to_bytes(
            &cert.vote_for(genesis.engine, sig),
        ));
    }
    let start = Instant::now();
    tx.verify_signature().map_err(|e| bad(&e))?;
    pyralog_ledger::verify::verify_vote_signatures(
        genesis.engine,
        &header.chain_id,
        &cert,
        &keys,
        &votes,
    )
    .map_err(|e| bad(&e))?;
    Ok(start.elapsed())
}

/// Where the receipt of `file` goes.
fn receipt_path(file: &Path, out: Option<&Path>) -> PathBuf {
    let name = format!(
        "{}.pyralog-receipt.json",
        file.file_name()
            .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned())
    );
    match out {
        Some(dir) => dir.join(name),
        None => file.with_file_name(name),
    }
}

/// Hashes the files on all cores (memory-mapped: as fast as raw BLAKE3 in memory, `cargo
/// bench -p pyralog-crypto --bench hash_file`). On a terminal, large inputs get a bar that moves
/// file by file, with a spinner and the elapsed time while a big file is hashed.
fn hash_files(files: &[PathBuf]) -> Result<Vec<Hash>> {
    let mut total = 0u64;
    let mut sizes = Vec::with_capacity(files.len());
    for f in files {
        let meta = std::fs::metadata(f).map_err(|e| io("reading", f, e))?;
        if !meta.is_file() {
            return Err(usage(format!("{} is not a regular file", f.display())));
        }
        total += meta.len();
        sizes.push(meta.len());
    }
    let bar = (std::io::stderr().is_terminal() && total >= 64 << 20).then(|| {
        let b = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "hashing {spinner} {bar:40} {bytes}/{total_bytes} {elapsed} {wide_msg}",
        ) {
            b.set_style(style);
        }
        b.enable_steady_tick(std::time::Duration::from_millis(100));
        b
    });
    let mut digests = Vec::with_capacity(files.len());
    for (f, size) in files.iter().zip(sizes) {
        if let Some(b) = &bar {
            b.set_message(f.display().to_string());
        }
        let digest = pyralog_crypto::hash_file(f).map_err(|e| usage(e.to_string()))?;
        if let Some(b) = &bar {
            b.inc(size);
        }
        digests.push(digest);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(digests)
}

/// One file being notarized.
struct Item {
    file: PathBuf,
    digest: Hash,
    receipt: PathBuf,
    /// The notarizing transaction (ours, or an earlier one found on chain).
    tx_hash: Option<Hash>,
    earlier: bool,
    result: Option<std::result::Result<Value, String>>,
}

async fn notarize(
    cli: &Cli,
    home: &Home,
    files: &[PathBuf],
    meta: &str,
    out: Option<&Path>,
    force: bool,
) -> Result<Report> {
    if meta.len() > pyralog_ledger::tx::MAX_META_BYTES {
        return Err(usage(format!(
            "--meta is {} bytes, over the limit of {}",
            meta.len(),
            pyralog_ledger::tx::MAX_META_BYTES
        )));
    }
    if let Some(dir) = out
        && !dir.is_dir()
    {
        return Err(usage(format!("--out {} is not a directory", dir.display())));
    }
    let key = home.key(cli.key_file.as_deref())?;
    let digests = hash_files(files)?;
    let mut items: Vec<Item> = files
        .iter()
        .zip(digests)
        .map(|(f, d)| Item {
            file: f.clone(),
            digest: d,
            receipt: receipt_path(f, out),
            tx_hash: None,
            earlier: false,
            result: None,
        })
        .collect();
    for it in &items {
        if force || !it.receipt.exists() {
            continue;
        }
        // An existing receipt for the same content is replaced; one for other content is
        // a proof the user may still need.
        let same = read_text(&it.receipt, pyralog_ledger::receipt::MAX_RECEIPT_JSON_BYTES)
            .ok()
            .and_then(|t| Receipt::from_json(&t).ok())
            .is_some_and(|r| r.digest == it.digest);
        if !same {
            return Err(usage(format!(
                "{} exists and is not a receipt of this content: move it away or pass --force",
                it.receipt.display()
            )));
        }
    }
    let mut s = Session::open(cli, home).await?;
    let head = s.head();

    // Which digests are already notarized (by anyone), and our nonce: one round trip.
    let mut calls = vec![query::get_call(
        Namespace::Account,
        key.public().as_bytes(),
        head,
    )];
    calls.extend(
        items
            .iter()
            .map(|it| query::get_call(Namespace::Notarization, it.digest.as_bytes(), head)),
    );
    let mut answers = s.rpc.batch(&calls).await?.into_iter();
    let account = answers.next().ok_or_else(|| check("short batch answer"))?;
    let mut nonce = query::account_nonce(query::check_get(
        &s.lc,
        &s.rpc,
        Namespace::Account,
        key.public().as_bytes(),
        head,
        account,
    )?)?;
    let mut seen = std::collections::HashMap::new();
    let mut fresh = Vec::new();
    for (i, answer) in answers.enumerate() {
        let it = &mut items[i];
        let record = query::check_get(
            &s.lc,
            &s.rpc,
            Namespace::Notarization,
            it.digest.as_bytes(),
            head,
            answer,
        )?;
        if let Some(bytes) = record {
            let r: NotarizationRecord = query::decode_record("notarization", &bytes)?;
            it.tx_hash = Some(r.tx_hash);
            it.earlier = true;
        } else if let Some(&first) = seen.get(&it.digest) {
            // The same content twice in this command: one transaction serves both.
            fresh.push((i, None::<Transaction>, first));
        } else {
            let tx = Transaction::new_signed(
                &key,
                s.chain_id(),
                nonce,
                Payload::Notarize {
                    digest: it.digest,
                    meta: meta.to_string(),
                },
            )
            .map_err(|e| usage(e.to_string()))?;
            nonce += 1;
            seen.insert(it.digest, i);
            it.tx_hash = Some(tx.hash());
            fresh.push((i, Some(tx), i));
        }
    }
    for (i, _, first) in &fresh {
        if i != first {
            items[*i].tx_hash = items[*first].tx_hash;
        }
    }

    // Submit ours in batches; the mempool checks each and says why it refuses one.
    let txs: Vec<(usize, Transaction)> = fresh
        .into_iter()
        .filter_map(|(i, tx, _)| tx.map(|t| (i, t)))
        .collect();
    let encoded: Vec<_> = txs
        .iter()
        .map(|(_, tx)| json!(hex::encode(tx.to_bytes())))
        .collect();
    let verdicts = s.rpc.broadcast(&encoded, "sync").await?;
    let mut first_refused: Option<usize> = None;
    for ((i, _), v) in txs.iter().zip(verdicts) {
        if let Err(e) = v {
            let reason = if e.code == TX_REJECTED {
                e.reason().unwrap_or("rejected").to_string()
            } else {
                e.to_string()
            };
            items[*i].result = Some(Err(format!("refused by the node: {reason}: {}", e.message)));
            items[*i].tx_hash = None;
            first_refused.get_or_insert(*i);
        }
    }
    if let Some(refused) = first_refused {
        // Transactions with later nonces wait behind the refused one's nonce and cannot
        // commit; say so rather than wait for them. Earlier ones are still waited for.
        let refused_file = items[refused].file.display().to_string();
        let later = txs
            .iter()
            .map(|(i, _)| *i)
            .skip_while(|&i| i != refused)
            .collect::<Vec<_>>();
        for i in later {
            if items[i].result.is_none() {
                items[i].result = Some(Err(format!(
                    "not committed: its nonce follows that of {refused_file}, which was refused"
                )));
                items[i].tx_hash = None;
            }
        }
    }
    // Files with the same content as a failed one share its fate.
    for i in 0..items.len() {
        if items[i].result.is_none()
            && !items[i].earlier
            && let Some(j) = (0..i).find(|&j| items[j].digest == items[i].digest)
            && let Some(Err(e)) = &items[j].result
        {
            items[i].result = Some(Err(e.clone()));
            items[i].tx_hash = None;
        }
    }

    // Wait for every transaction, then build, self-check and write each receipt.
    let deadline = Instant::now() + s.timeout;
    loop {
        let waiting: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].result.is_none() && items[i].tx_hash.is_some())
            .collect();
        if waiting.is_empty() {
            break;
        }
        let hashes: Vec<Hash> = waiting.iter().filter_map(|&i| items[i].tx_hash).collect();
        let found = query::fetch_txs(&s.rpc, &hashes).await?;
        let mut answered = std::collections::HashMap::new();
        for (h, t) in hashes.iter().zip(found) {
            if let Some(t) = t {
                answered.insert(*h, t);
            }
        }
        for i in waiting {
            let Some(t) = items[i].tx_hash.and_then(|h| answered.get(&h)) else {
                continue;
            };
            query::check_tx(&mut s.lc, &s.rpc, &s.witnesses, t).await?;
            let it = &items[i];
            let receipt = Receipt::new(
                &t.tx,
                t.index,
                t.log_index,
                &t.signed.header,
                &t.signed.cert,
                t.tx_proof.clone(),
                t.log_proof.clone(),
                Vec::new(),
            )
            .map_err(|e| check(e.to_string()))?;
            let proven =
                verify_receipt(s.lc.genesis(), &receipt, Some(&it.digest)).map_err(|e| {
                    check(format!(
                        "the receipt built for {} does not verify: {e}",
                        it.file.display()
                    ))
                })?;
            write_atomic(&it.receipt, receipt.to_json().as_bytes())?;
            items[i].result = Some(Ok(json!({
                "file": it.file,
                "digest": proven.digest.to_hex(),
                "receipt": it.receipt,
                "height": proven.height,
                "time_ms": proven.time_ms,
                "time": utc(proven.time_ms),
                "tx_hash": proven.tx_hash.to_hex(),
                "signer": proven.signer.to_hex(),
                "earlier": it.earlier,
            })));
        }
        if items
            .iter()
            .all(|it| it.result.is_some() || it.tx_hash.is_none())
        {
            break;
        }
        if Instant::now() >= deadline {
            for it in items.iter_mut().filter(|it| it.result.is_none()) {
                it.result = Some(Err(format!(
                    "not committed within {} s; run the same command again later to get the receipt",
                    s.timeout.as_secs()
                )));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut text = String::new();
    let mut rows = Vec::new();
    let mut failed = 0;
    for it in &items {
        match &it.result {
            Some(Ok(v)) => {
                text.push_str(&format!(
                    "{}  {}\n  {} at height {}, {}\n  receipt: {}\n",
                    v["digest"].as_str().unwrap_or_default(),
                    it.file.display(),
                    if it.earlier {
                        "already notarized (earlier)"
                    } else {
                        "notarized"
                    },
                    v["height"],
                    v["time"].as_str().unwrap_or_default(),
                    it.receipt.display()
                ));
                rows.push(v.clone());
            }
            Some(Err(e)) => {
                failed += 1;
                text.push_str(&format!(
                    "{}  {}\n  FAILED: {e}\n",
                    it.digest.to_hex(),
                    it.file.display()
                ));
                rows.push(json!({ "file": it.file, "digest": it.digest.to_hex(), "error": e }));
            }
            None => {}
        }
    }
    let failure = (failed > 0).then(|| {
        node(format!(
            "{failed} of {} files were not notarized",
            items.len()
        ))
    });
    Ok(Report {
        text,
        json: json!({ "ok": failed == 0, "files": rows }),
        failure,
    })
}

/// Signs and submits a `Put` or `Delete`, waits for its certificate, and proves it.
async fn write(cli: &Cli, home: &Home, payload: Payload) -> Result<Report> {
    let key = home.key(cli.key_file.as_deref())?;
    let mut s = Session::open(cli, home).await?;
    let head = s.head();
    if let Payload::Delete { key: k } = &payload {
        let live = query::get_kv(&s.lc, &s.rpc, k, head)
            .await?
            .is_some_and(|r| r.value.is_some());
        if !live {
            return Err(usage(format!(
                "key {} has no value at the verified head {head} (proven): nothing to delete",
                show(k)
            )));
        }
    }
    let nonce = query::next_nonce(&s.lc, &s.rpc, &key.public(), head).await?;
    let kind = payload.kind();
    let tx = Transaction::new_signed(&key, s.chain_id(), nonce, payload)
        .map_err(|e| usage(e.to_string()))?;
    let hash = tx.hash();
    match s
        .rpc
        .call(
            "broadcast_tx",
            vec![json!(hex::encode(tx.to_bytes())), json!("commit")],
        )
        .await?
    {
        Ok(_) => {}
        Err(e) if e.code == TX_REJECTED => {
            return Err(node(format!(
                "the node refused the {kind}: {} ({})",
                e.message,
                e.reason().unwrap_or("rejected")
            )));
        }
        Err(e) => return Err(node(format!("node {}: broadcast_tx: {e}", s.rpc.url()))),
    }
    let t = query::fetch_txs(&s.rpc, &[hash])
        .await?
        .pop()
        .flatten()
        .ok_or_else(|| {
            node(format!(
                "transaction {} committed but not served",
                hash.to_hex()
            ))
        })?;
    query::check_tx(&mut s.lc, &s.rpc, &s.witnesses, &t).await?;
    let h = &t.signed.header;
    Ok(Report {
        text: format!(
            "{kind} committed at height {} ({}), transaction {}\n",
            h.height,
            utc(h.time_ms),
            hash.to_hex()
        ),
        json: json!({ "ok": true, "kind": kind, "tx_hash": hash.to_hex(), "height": h.height, "time_ms": h.time_ms }),
        failure: None,
    })
}

async fn get_cmd(cli: &Cli, home: &Home, key: &[u8], height: Option<u64>) -> Result<Report> {
    let s = Session::open(cli, home).await?;
    let head = s.head();
    let at = match height {
        None => head,
        Some(0) => return Err(usage("--height starts at 1")),
        Some(h) if h > head => {
            return Err(usage(format!(
                "--height {h} is above the chain's verified head {head}"
            )));
        }
        Some(h) => h,
    };
    let record = query::get_kv(&s.lc, &s.rpc, key, at).await?;
    let (text, value) = match &record {
        None => (
            format!("{} is absent at height {at} (proven)\n", show(key)),
            Value::Null,
        ),
        Some(KvRecord {
            value: None,
            height,
            ..
        }) => (
            format!(
                "{} was deleted at height {height}; absent at height {at} (proven)\n",
                show(key)
            ),
            Value::Null,
        ),
        Some(KvRecord {
            value: Some(v),
            height,
            ..
        }) => (
            format!(
                "{} = {}\n  set at height {height}, proven at height {at}\n",
                show(key),
                show(v)
            ),
            bytes_json(v),
        ),
    };
    Ok(Report {
        text,
        json: json!({
            "key": bytes_json(key),
            "height": at,
            "value": value,
            "version_height": record.map(|r| r.height),
        }),
        failure: None,
    })
}

async fn history_cmd(cli: &Cli, home: &Home, key: &[u8]) -> Result<Report> {
    let s = Session::open(cli, home).await?;
    let head = s.head();
    let versions = query::history(&s.lc, &s.rpc, key, head).await?;
    let mut text = format!(
        "{}: {} version(s) as of height {head}, newest first, each proven\n",
        show(key),
        versions.len()
    );
    let mut rows = Vec::new();
    for v in &versions {
        match &v.value {
            Some(value) => text.push_str(&format!(
                "  height {:>8}  {}  = {}\n",
                v.height,
                utc(v.time_ms),
                show(value)
            )),
            None => text.push_str(&format!(
                "  height {:>8}  {}  deleted\n",
                v.height,
                utc(v.time_ms)
            )),
        }
        rows.push(json!({
            "height": v.height,
            "time_ms": v.time_ms,
            "value": v.value.as_deref().map(bytes_json),
        }));
    }
    Ok(Report {
        text,
        json: json!({ "key": bytes_json(key), "head": head, "versions": rows }),
        failure: None,
    })
}

async fn tx_cmd(cli: &Cli, home: &Home, hash: &str) -> Result<Report> {
    let hash = Hash::from_hex(hash.strip_prefix("0x").unwrap_or(hash))
        .map_err(|e| usage(format!("HASH: {e}")))?;
    let mut s = Session::open(cli, home).await?;
    let Some(t) = query::fetch_txs(&s.rpc, &[hash]).await?.pop().flatten() else {
        return Err(node(format!(
            "transaction {} is not committed on {} (unknown, or still pending)",
            hash.to_hex(),
            s.rpc.url()
        )));
    };
    query::check_tx(&mut s.lc, &s.rpc, &s.witnesses, &t).await?;
    let h = &t.signed.header;
    let detail = match &t.tx.payload {
        Payload::Notarize { digest, meta } => format!(
            "notarize {} meta {}",
            digest.to_hex(),
            show(meta.as_bytes())
        ),
        Payload::Put { key, value } => format!("put {} = {}", show(key), show(value)),
        Payload::Delete { key } => format!("delete {}", show(key)),
    };
    Ok(Report {
        text: format!(
            "transaction {}\n  committed at height {} ({}), index {}, log entry {} (proven)\n  sender {} nonce {}\n  {detail}\n",
            hash.to_hex(),
            h.height,
            utc(h.time_ms),
            t.index,
            t.log_index,
            t.tx.sender.to_hex(),
            t.tx.nonce
        ),
        json: json!({
            "hash": hash.to_hex(),
            "status": "committed",
            "height": h.height,
            "time_ms": h.time_ms,
            "index": t.index,
            "log_index": t.log_index,
            "tx": t.tx,
            "header_hash": h.hash().to_hex(),
        }),
        failure: None,
    })
}

async fn status_cmd(cli: &Cli, home: &Home) -> Result<Report> {
    let s = Session::open(cli, home).await?;
    let g = s.lc.genesis();
    let t = s.lc.trusted().ok_or_else(|| check("no trusted header"))?;
    let node_status = s.rpc.must("status", vec![]).await.ok();
    let set = s.lc.validators();
    let mut text = format!(
        "chain:      {} ({} engine, genesis {})\nvalidators: {} (total power {}, quorum {})\ntrusted:    height {} ({}), header {}\n",
        g.chain_id,
        g.engine.name(),
        g.hash().map(|h| h.to_hex()).unwrap_or_default(),
        set.len(),
        set.total_power(),
        set.quorum_power(g.engine),
        t.header.height,
        utc(t.header.time_ms),
        t.header.hash().to_hex(),
    );
    text.push_str(&format!(
        "log:        {} entries, root {}\nnode:       {} (verified up to the trusted head{})\n",
        t.header.log_size,
        t.header.log_root.to_hex(),
        s.rpc.url(),
        if s.witnesses.is_empty() {
            String::new()
        } else {
            format!("; {} witness(es) agree", s.witnesses.len())
        }
    ));
    if let Some(v) = &node_status {
        text.push_str(&format!(
            "node says:  peers {}, mempool {} txs (unverified)\n",
            v["peers"], v["mempool_txs"]
        ));
    }
    Ok(Report {
        text,
        json: json!({
            "chain_id": g.chain_id.as_str(),
            "engine": g.engine.name(),
            "validators": set.len(),
            "total_power": set.total_power(),
            "trusted": {
                "height": t.header.height,
                "time_ms": t.header.time_ms,
                "hash": t.header.hash().to_hex(),
                "log_size": t.header.log_size,
                "log_root": t.header.log_root.to_hex(),
                "state_root": t.header.state_root.to_hex(),
            },
            "rpc": s.rpc.url(),
            "witnesses": cli.witnesses,
            "node_status_unverified": node_status,
        }),
        failure: None,
    })
}

#[allow(clippy::too_many_arguments)]
async fn export_cmd(
    cli: &Cli,
    home: &Home,
    from: u64,
    to: Option<u64>,
    format: Format,
    table: Table,
    out: &Path,
) -> Result<Report> {
    let s = Session::open(cli, home).await?;
    let head = s.head();
    let to = to.unwrap_or(head);
    if from == 0 || from > to {
        return Err(usage(format!(
            "--from {from} --to {to}: need 1 <= from <= to"
        )));
    }
    if to > head {
        return Err(usage(format!(
            "--to {to} is above the verified head {head}"
        )));
    }
    let file = std::fs::File::create(out).map_err(|e| io("creating", out, e))?;
    let mut writer = TableWriter::new(
        match table {
            Table::Transactions => ExportTable::Transactions,
            Table::Blocks => ExportTable::Blocks,
        },
        match format {
            Format::Arrow => ExportFormat::Arrow,
            Format::Parquet => ExportFormat::Parquet,
        },
        std::io::BufWriter::new(file),
    )
    .map_err(|e| usage(e.to_string()))?;
    let mut prev: Option<pyralog_ledger::Header> = None;
    let mut h = from;
    const CHUNK: u64 = 32;
    while h <= to {
        let end = (h + CHUNK - 1).min(to);
        let calls: Vec<_> = (h..=end)
            .flat_map(|x| [("block", vec![json!(x)]), ("certificate", vec![json!(x)])])
            .collect();
        let answers = s.rpc.batch(&calls).await?;
        for (x, pair) in (h..=end).zip(answers.chunks(2)) {
            let (Ok(b), Ok(c)) = (&pair[0], &pair[1]) else {
                return Err(node(format!(
                    "node {}: no block or certificate at {x}",
                    s.rpc.url()
                )));
            };
            let block: pyralog_ledger::Block = decode_value(s.rpc.url(), "block", b)?;
            let cert: pyralog_ledger::Certificate = decode_value(s.rpc.url(), "certificate", c)?;
            let signed = crate::client::SignedHeader {
                header: block.header.clone(),
                cert: cert.clone(),
            };
            if block.header.height != x {
                return Err(check(format!(
                    "node {} sent block {} for height {x}",
                    s.rpc.url(),
                    block.header.height
                )));
            }
            s.lc.check_header(s.rpc.url(), &signed)?;
            verify_block_contents(&block)
                .map_err(|e| check(format!("block {x} does not match its header: {e}")))?;
            if let Some(p) = &prev {
                verify_header_link(p, &block.header).map_err(|e| {
                    check(format!("block {x} does not follow block {}: {e}", p.height))
                })?;
            }
            writer
                .push(&block, &cert)
                .map_err(|e| usage(format!("writing {}: {e}", out.display())))?;
            prev = Some(block.header);
        }
        h = end + 1;
    }
    let summary = writer
        .finish()
        .map_err(|e| usage(format!("writing {}: {e}", out.display())))?;
    Ok(Report {
        text: format!(
            "wrote {} rows from {} verified blocks ({from}..={to}) to {}\n",
            summary.rows,
            summary.blocks,
            out.display()
        ),
        json: json!({ "ok": true, "rows": summary.rows, "blocks": summary.blocks, "from": from, "to": to, "out": out }),
        failure: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_795_000_000_000), "2026-11-18T11:06:40.000Z");
    }

    #[test]
    fn receipts_go_next_to_files_or_into_out() {
        let p = Path::new("/data/a.pdf");
        assert_eq!(
            receipt_path(p, None),
            Path::new("/data/a.pdf.pyralog-receipt.json")
        );
        assert_eq!(
            receipt_path(p, Some(Path::new("/r"))),
            Path::new("/r/a.pdf.pyralog-receipt.json")
        );
    }

    #[test]
    fn key_arguments() {
        assert_eq!(arg_bytes("KEY", "0x6162", true).unwrap(), b"ab");
        assert!(arg_bytes("KEY", "", false).is_err());
        assert!(arg_bytes("KEY", "zz", true).is_err());
        assert_eq!(arg_bytes("VALUE", "", false).unwrap(), b"");
    }
}
