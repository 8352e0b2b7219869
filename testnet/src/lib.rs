//! Create, run and break local Pyralog networks: every node is its own process on
//! 127.0.0.1 with ports chosen free, described by `DIR/testnet.json`.
//!
//! The node processes are this binary's hidden `node` subcommand (exactly
//! `pyralog-node`), so `cargo run -p pyralog-testnet` needs no other build step.

pub mod bench;
pub mod submit;

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use jsonrpsee::core::client::ClientT;
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use pyralog_ledger::{ChainId, ChainParams, EngineId, Genesis, GenesisValidator};
use pyralog_node::config::{Config, Mode, Transport};
use pyralog_node::home::{self, Home};
use serde::{Deserialize, Serialize};

/// The manifest file name inside the testnet directory.
pub const MANIFEST: &str = "testnet.json";

/// One node of a testnet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Name (`node0`, ...).
    pub name: String,
    /// JSON-RPC URL (HTTP; WebSocket on the same port with `ws://`).
    pub rpc: String,
    /// Prometheus metrics URL.
    pub metrics: String,
    /// The p2p endpoint, `host:port`: the WireGuard UDP socket, or with `--transport
    /// tcp` the TCP listener.
    pub p2p: String,
    /// The libp2p peer id (names the node key).
    #[serde(default)]
    pub peer_id: String,
    /// WireGuard public key (base64, as `wg` prints keys); null with `--transport tcp`.
    pub wg_public_key: Option<String>,
    /// `validator`, or `auditor` (a non-voting node in auditor mode).
    #[serde(default)]
    pub mode: Mode,
    /// Process id while running.
    pub pid: Option<u32>,
    /// Home directory.
    pub home: PathBuf,
}

/// `testnet.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Chain id.
    pub chain_id: String,
    /// The transport between the nodes.
    #[serde(default)]
    pub transport: Transport,
    /// Path of the genesis file.
    pub genesis: PathBuf,
    /// The nodes.
    pub nodes: Vec<NodeEntry>,
}

impl Manifest {
    /// Reads `DIR/testnet.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Manifest> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no testnet at {} (start one with `pyralog-testnet up --home {}`)",
                path.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes `DIR/testnet.json`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(
            dir.join(MANIFEST),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        Ok(())
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> anyhow::Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                anyhow::anyhow!("no node {name:?} (nodes: {})", names.join(", "))
            })
    }

    /// The genesis.
    pub fn read_genesis(&self) -> anyhow::Result<Genesis> {
        let text = std::fs::read_to_string(&self.genesis)?;
        Ok(Genesis::from_json(&text)?)
    }
}

/// Options of `up`.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// Number of validators.
    pub validators: usize,
    /// Number of auditor nodes (`--mode auditor`, allowed by every validator).
    pub auditors: usize,
    /// Consensus engine.
    pub engine: EngineId,
    /// Transport between the nodes.
    pub transport: Transport,
    /// Directory.
    pub home: PathBuf,
    /// Chain parameters.
    pub params: ChainParams,
    /// How long to wait for height 2.
    pub timeout: Duration,
}

/// `n` free ports on 127.0.0.1, TCP or UDP.
pub fn free_ports(n: usize, udp: bool) -> anyhow::Result<Vec<u16>> {
    // Hold every socket until all are chosen so no port is handed out twice.
    if udp {
        let sockets: Vec<UdpSocket> = (0..n)
            .map(|_| UdpSocket::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()?;
        return sockets.iter().map(|l| Ok(l.local_addr()?.port())).collect();
    }
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Creates the homes, genesis and manifest of a new testnet (processes not started).
pub fn create(opts: &UpOptions, now_ms: u64) -> anyhow::Result<Manifest> {
    if opts.validators == 0 || opts.validators > 64 {
        bail!("--validators must be between 1 and 64");
    }
    if opts.auditors > 16 {
        bail!("--auditors must be at most 16");
    }
    if opts.home.join(MANIFEST).exists() {
        bail!(
            "{} already holds a testnet: stop it with `pyralog-testnet down --home {}` and remove the directory, or choose another --home",
            opts.home.display(),
            opts.home.display()
        );
    }
    std::fs::create_dir_all(&opts.home)?;
    let home_dir = opts.home.canonicalize()?;
    let chain_id = "pyralog-testnet".to_string();
    let mut validators = Vec::new();
    let mut nodes = Vec::new();
    let roles = (0..opts.validators)
        .map(|i| (format!("node{i}"), Mode::Validator))
        .chain((0..opts.auditors).map(|i| (format!("auditor{i}"), Mode::Auditor)));
    for (name, mode) in roles {
        let h = Home::new(&home_dir.join(&name));
        // Write a placeholder genesis first so init does not make a dev chain.
        std::fs::create_dir_all(h.dir())?;
        std::fs::write(h.genesis(), "")?;
        let init = home::init(&h, &Config::default(), None, &chain_id, now_ms)?;
        let id = home::identity(&h)?;
        if mode == Mode::Validator {
            validators.push(GenesisValidator {
                public_key: init.validator_key.public(),
                power: 1,
                name: Some(name.clone()),
                node_key: Some(init.node_key.public()),
            });
        }
        nodes.push(NodeEntry {
            name,
            rpc: String::new(),
            metrics: String::new(),
            p2p: String::new(),
            peer_id: id.peer_id.clone(),
            wg_public_key: (opts.transport == Transport::Wireguard)
                .then(|| id.wg_public_key.clone()),
            mode,
            pid: None,
            home: h.dir().to_path_buf(),
        });
    }
    let genesis = Genesis {
        chain_id: ChainId::new(&chain_id)?,
        genesis_time_ms: now_ms,
        engine: opts.engine,
        validators,
        params: opts.params.clone(),
    };
    let genesis_path = home_dir.join("genesis.json");
    std::fs::write(&genesis_path, genesis.to_json())?;
    let mut configs = Vec::new();
    for n in &nodes {
        std::fs::write(Home::new(&n.home).genesis(), genesis.to_json())?;
        configs.push(Config {
            moniker: n.name.clone(),
            mode: n.mode,
            ..Config::default()
        });
    }
    let mut m = Manifest {
        chain_id,
        transport: opts.transport,
        genesis: genesis_path,
        nodes,
    };
    configure(&mut m, configs)?;
    m.save(&home_dir)?;
    Ok(m)
}

/// Gives every node of `m` free ports and writes its `config.toml` from `configs` (one per
/// node): listen addresses, bootstrap peers (validators dial every other validator,
/// auditors every validator), and the validators' allow-list of auditors.
fn configure(m: &mut Manifest, configs: Vec<Config>) -> anyhow::Result<()> {
    let n = m.nodes.len();
    let ports = free_ports(2 * n, false)?;
    let p2p_ports = free_ports(n, m.transport == Transport::Wireguard)?;
    let proto = match m.transport {
        Transport::Wireguard => "udp",
        Transport::Tcp => "tcp",
    };
    let addrs: Vec<String> = m
        .nodes
        .iter()
        .zip(&p2p_ports)
        .map(|(node, port)| format!("/ip4/127.0.0.1/{proto}/{port}/p2p/{}", node.peer_id))
        .collect();
    let auditors: Vec<String> = m
        .nodes
        .iter()
        .filter(|node| node.mode == Mode::Auditor)
        .map(|node| node.peer_id.clone())
        .collect();
    let modes: Vec<Mode> = m.nodes.iter().map(|node| node.mode).collect();
    for (i, mut c) in configs.into_iter().enumerate() {
        let node = &mut m.nodes[i];
        c.p2p.transport = m.transport;
        c.p2p.listen = format!("/ip4/127.0.0.1/{proto}/{}", p2p_ports[i]);
        c.p2p.bootstrap = addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i && modes[*j] == Mode::Validator)
            .map(|(_, a)| a.clone())
            .collect();
        if node.mode == Mode::Validator {
            c.p2p.allow = auditors.clone();
        }
        c.rpc.listen = ([127, 0, 0, 1], ports[2 * i]).into();
        c.metrics.listen = format!("127.0.0.1:{}", ports[2 * i + 1]);
        std::fs::write(Home::new(&node.home).config(), c.to_toml())?;
        node.rpc = format!("http://127.0.0.1:{}", ports[2 * i]);
        node.metrics = format!("http://127.0.0.1:{}/metrics", ports[2 * i + 1]);
        node.p2p = format!("127.0.0.1:{}", p2p_ports[i]);
    }
    Ok(())
}

/// Copies the stopped testnet in `src` to `dst` with fresh ports: the same genesis, keys
/// and chain so far. Started, the copy goes on with its own history from the same
/// validators: a fork by a colluding quorum, for testing auditors and light clients.
pub fn clone(src: &Path, dst: &Path) -> anyhow::Result<Manifest> {
    let mut m = Manifest::load(src)?;
    if let Some(n) = m.nodes.iter().find(|n| n.pid.is_some_and(alive)) {
        bail!(
            "{} is running: stop the testnet first (`pyralog-testnet down --home {}`)",
            n.name,
            src.display()
        );
    }
    if dst.exists() {
        bail!("{} already exists", dst.display());
    }
    copy_dir(src, dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    let dst = dst.canonicalize()?;
    let src = src.canonicalize()?;
    let moved = |p: &Path| -> anyhow::Result<PathBuf> {
        Ok(dst.join(
            p.strip_prefix(&src)
                .with_context(|| format!("{} is not inside {}", p.display(), src.display()))?,
        ))
    };
    m.genesis = moved(&m.genesis)?;
    let mut configs = Vec::new();
    for n in &mut m.nodes {
        n.home = moved(&n.home)?;
        n.pid = None;
        configs.push(Config::load(&Home::new(&n.home).config())?);
    }
    configure(&mut m, configs)?;
    m.save(&dst)?;
    Ok(m)
}

fn copy_dir(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

/// The program that runs nodes: this executable's `node` subcommand.
fn node_program() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating this executable")
}

/// Starts node `i` as its own process (own process group, so a Ctrl-C on the terminal
/// that ran `up` does not stop it); output goes to `HOME/node.log`.
pub fn start_node(m: &mut Manifest, i: usize) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let node = &m.nodes[i];
    if let Some(pid) = node.pid
        && alive(pid)
    {
        bail!("{} is already running (pid {pid})", node.name);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.home.join("node.log"))?;
    let child = Command::new(node_program()?)
        .arg("node")
        .arg("start")
        .arg("--home")
        .arg(&node.home)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", node.name))?;
    let pid = child.id();
    m.nodes[i].pid = Some(pid);
    // The child is not waited for here: `down` and `kill` signal it by pid. Reap it in a
    // thread so it does not linger as a zombie while this process lives.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(pid)
}

/// Whether process `pid` is alive (not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Sends `signal` (e.g. `TERM`, `KILL`) to `pid`.
pub fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let st = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !st.success() && alive(pid) {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

/// Stops node `i`: SIGTERM, then SIGKILL after `grace`.
pub fn stop_node(m: &mut Manifest, i: usize, grace: Duration) -> anyhow::Result<()> {
    if let Some(pid) = m.nodes[i].pid.take()
        && alive(pid)
    {
        signal(pid, "TERM")?;
        let start = Instant::now();
        while alive(pid) && start.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pid) {
            signal(pid, "KILL")?;
        }
    }
    Ok(())
}

/// SIGKILLs node `i`.
pub fn kill_node(m: &mut Manifest, i: usize) -> anyhow::Result<()> {
    if let Some(pid) = m.nodes[i].pid.take()
        && alive(pid)
    {
        signal(pid, "KILL")?;
        let start = Instant::now();
        while alive(pid) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// A JSON-RPC client for `url`.
pub fn client(url: &str) -> anyhow::Result<HttpClient> {
    Ok(HttpClientBuilder::default()
        .request_timeout(Duration::from_secs(60))
        .build(url)?)
}

/// What a node says of itself, or why it says nothing.
#[derive(Clone, Debug)]
pub enum NodeState {
    /// Its answer to `status`.
    Status(serde_json::Value),
    /// No answer, and no process: never started, or gone.
    Down,
    /// No answer from a running process (starting, or stuck): why.
    Silent(String),
}

/// Asks node `n` for its `status`, waiting at most `timeout` for the answer
/// (`pyralog-testnet status`, and the bench when a load stops committing).
pub async fn node_state(n: &NodeEntry, timeout: Duration) -> NodeState {
    let answer = match HttpClientBuilder::default()
        .request_timeout(timeout)
        .build(&n.rpc)
    {
        Ok(c) => call(&c, "status", vec![]).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match answer {
        Ok(s) => NodeState::Status(s),
        Err(_) if !n.pid.is_some_and(alive) => NodeState::Down,
        Err(e) => NodeState::Silent(e),
    }
}

/// Calls `method` on `url`.
pub async fn call(
    c: &HttpClient,
    method: &str,
    params: Vec<serde_json::Value>,
) -> Result<serde_json::Value, jsonrpsee::core::ClientError> {
    let mut p = jsonrpsee::core::params::ArrayParams::new();
    for v in params {
        p.insert(v)
            .map_err(jsonrpsee::core::ClientError::ParseError)?;
    }
    c.request(method, p).await
}

/// The committed height of a node (None if unreachable).
pub async fn height(c: &HttpClient) -> Option<u64> {
    call(c, "status", vec![]).await.ok()?["height"].as_u64()
}

/// Waits until every running node reports height ≥ `target`.
pub async fn wait_height(m: &Manifest, target: u64, timeout: Duration) -> anyhow::Result<()> {
    let clients: Vec<HttpClient> = m
        .nodes
        .iter()
        .map(|n| client(&n.rpc))
        .collect::<anyhow::Result<_>>()?;
    let start = Instant::now();
    loop {
        let mut ok = true;
        for (n, c) in m.nodes.iter().zip(&clients) {
            if n.pid.is_some() && height(c).await.is_none_or(|h| h < target) {
                ok = false;
            }
        }
        if ok {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "the testnet did not reach height {target} within {} s (see the nodes' node.log)",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates and starts a testnet, and waits until every node is at height ≥ 2.
pub async fn up(opts: &UpOptions, now_ms: u64) -> anyhow::Result<Manifest> {
    let mut m = create(opts, now_ms)?;
    let dir = opts.home.canonicalize()?;
    for i in 0..m.nodes.len() {
        start_node(&mut m, i)?;
    }
    m.save(&dir)?;
    if let Err(e) = wait_height(&m, 2, opts.timeout).await {
        down(&mut m, &dir)?;
        return Err(e);
    }
    Ok(m)
}

/// Stops every node.
pub fn down(m: &mut Manifest, dir: &Path) -> anyhow::Result<()> {
    for i in 0..m.nodes.len() {
        stop_node(m, i, Duration::from_secs(10))?;
    }
    m.save(dir)
}
