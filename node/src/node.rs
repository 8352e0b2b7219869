//! `pyralog-node start`: open the store, start networking, the driver, RPC and metrics,
//! and run until SIGINT or SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pyralog_storage::SledStore;
use tokio::sync::{mpsc, watch};

use crate::chain::Chain;
use crate::config::{Config, Mode, Transport};
use crate::driver::{Driver, DriverConfig};
use crate::home::Home;
use crate::metrics::Metrics;
use crate::rpc::{RpcContext, serve};
use pyralog_ledger::chain::Genesis;
use pyralog_p2p::TransportKind;
use pyralog_p2p::wg::WgConfig;

/// Turns transparent huge pages off for the rest of this process's life (all of its
/// threads). It is called once the state caches are mapped, so that they keep whatever
/// huge pages the kernel gave them, and what is allocated later gets pages of 4 KiB.
/// The allocator advises huge pages for its large regions and hands memory unused for a
/// second back to the kernel; touching that memory again then faults in 2 MiB pages,
/// each zeroed, where the node needed a few kilobytes. In a 4-validator testnet on two
/// cores that cost about a fifth of the CPU of a burst, and after an idle moment the
/// first loaded heights took 150 to 320 ms, a p99 of 300 to 600 ms at 3,000 tx/s. The
/// state caches' lookups, at random in the 360 MB they map at start (at the default
/// size), are where huge pages pay: with 4 KiB pages there too, commits were slower
/// (most likely the misses of the processor's page-table cache) and the p99 at 3,000
/// tx/s rose again to 150 to 400 ms (docs/PERFORMANCE.md, twentieth session).
/// Should the caches not have been mapped first, it is turned off all the same: pages
/// of 4 KiB everywhere still measured better than the allocator's huge pages. Linux
/// only; elsewhere, or should the kernel refuse, the node runs as it is.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    match nix::sys::prctl::set_thp_disable(true) {
        Ok(()) => tracing::info!("transparent huge pages off for this process"),
        Err(e) => tracing::warn!(error = %e, "transparent huge pages stay on for this process"),
    }
}

/// Runs a node from `home` with the effective `config` until a signal.
pub async fn start(home: &Home, config: Config) -> anyhow::Result<()> {
    let genesis = home.read_genesis()?;
    let node_key = home.read_node_key()?;
    let validator = match config.mode {
        Mode::Validator => Some(home.read_validator_key()?),
        Mode::Full | Mode::Auditor => None,
    };
    let store = Arc::new(
        SledStore::open_with_cache(
            &home.data(),
            config.storage.state_cache_mb.saturating_mul(1 << 20),
            config.storage.db_cache_mb.saturating_mul(1 << 20),
        )
        .with_context(|| format!("opening the database in {}", home.data().display()))?,
    );
    tracing::info!(
        format = store.format(),
        newest = pyralog_storage::sled::FORMAT,
        "database opened"
    );
    let chain = Chain::open(genesis.clone(), store.clone())?;
    // Off the startup path: the first loaded blocks find the cache's memory mapped.
    let prefault = std::thread::Builder::new()
        .name("prefault-state-cache".into())
        .spawn({
            let store = store.clone();
            move || {
                let started = std::time::Instant::now();
                if store.prefault_state_cache() {
                    let ms = started.elapsed().as_millis() as u64;
                    tracing::info!(ms, "state cache memory mapped");
                } else {
                    tracing::warn!(
                        "the state cache was in use or could not be allocated at once; \
                         its memory will be mapped as it fills"
                    );
                }
                no_transparent_huge_pages();
            }
        });
    if let Err(e) = prefault {
        tracing::warn!(error = %e, "the state cache's memory will be mapped as it fills");
        no_transparent_huge_pages();
    }
    let genesis_hash = genesis.hash()?;
    let metrics = if config.mode == Mode::Auditor {
        Metrics::with_audit()
    } else {
        Metrics::new()
    };
    metrics.watch_store(store.clone());
    let audit = match &metrics.audit {
        Some(m) => Some(node_audit(home, &config, &genesis, m.clone())?),
        None => None,
    };

    let bootstrap: Vec<pyralog_p2p::Address> = config
        .p2p
        .bootstrap
        .iter()
        .map(|a| a.parse().with_context(|| format!("p2p.bootstrap {a:?}")))
        .collect::<anyhow::Result<_>>()?;
    let p2p = pyralog_p2p::Config {
        network: format!("{}-{}", genesis.chain_id, &genesis_hash.to_hex()[..8]),
        transport: transport(home, &config, &genesis, &bootstrap)?,
        listen: vec![
            config
                .p2p
                .listen
                .parse()
                .with_context(|| format!("p2p.listen {:?}", config.p2p.listen))?,
        ],
        bootstrap,
        max_gossip_bytes: config.p2p.max_gossip_bytes,
        max_response_bytes: config.p2p.max_sync_response_bytes,
        max_peers: config.p2p.max_peers,
        peer_messages_per_sec: config.p2p.peer_messages_per_sec,
        ban: Duration::from_secs(config.p2p.ban_secs),
        ..pyralog_p2p::Config::default()
    };
    let (net, events) = pyralog_p2p::spawn(&node_key.seed(), p2p).await?;
    if let Some(overlay) = net.overlay() {
        metrics.watch_overlay(overlay.clone());
    }
    let peer_id = net.local_peer_id();

    let validator_pub = validator.as_ref().map(|k| k.public());
    let (driver, feeds) = Driver::new(
        DriverConfig {
            validator,
            mempool: config.mempool.clone(),
            audit: audit.as_ref().map(|(a, _)| a.clone()),
            max_gossip_bytes: config.p2p.max_gossip_bytes,
        },
        chain,
        net,
        metrics.clone(),
    )?;
    let (req_tx, req_rx) = mpsc::channel(4096);
    let (rpc_addr, rpc_handle) = serve(
        &config.rpc,
        RpcContext {
            store,
            genesis: genesis.clone(),
            genesis_hash,
            peer_id: peer_id.to_string(),
            mode: config.mode,
            validator: validator_pub,
            feeds,
            requests: req_tx,
            commit_timeout: Duration::from_secs(config.rpc.commit_timeout_secs),
            metrics: metrics.clone(),
        },
    )
    .await?;
    let metrics_task = if config.metrics.listen.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&config.metrics.listen)
            .await
            .with_context(|| format!("metrics cannot listen on {}", config.metrics.listen))?;
        tracing::info!(addr = %listener.local_addr()?, "metrics listening");
        let routes = match &audit {
            Some((_, checkpoint)) => {
                let m = metrics.clone();
                crate::audit::alarm::routes(move || m.render(), checkpoint.clone())
            }
            None => crate::metrics::routes(metrics),
        };
        Some(tokio::spawn(crate::metrics::serve(listener, routes)))
    };
    tracing::info!(
        chain = %genesis.chain_id,
        %peer_id,
        mode = ?config.mode,
        rpc = %rpc_addr,
        "node started"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut driver_task = tokio::spawn(driver.run(events, req_rx, stop_rx));
    let result = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
            match tokio::time::timeout(Duration::from_secs(10), &mut driver_task).await {
                Ok(Ok(r)) => r.map_err(anyhow::Error::from),
                Ok(Err(e)) => Err(anyhow::anyhow!("driver task: {e}")),
                Err(_) => Err(anyhow::anyhow!("driver did not stop within 10 s")),
            }
        }
        r = &mut driver_task => match r {
            Ok(r) => r.map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::anyhow!("driver task: {e}")),
        },
    };
    let _ = rpc_handle.stop();
    if let Some(t) = metrics_task {
        t.abort();
    }
    result
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Auditor mode: alarms and the signed checkpoint live in `HOME/audit`.
fn node_audit(
    home: &Home,
    config: &Config,
    genesis: &Genesis,
    metrics: crate::audit::alarm::AuditMetrics,
) -> anyhow::Result<(
    Arc<crate::audit::NodeAudit>,
    Arc<crate::audit::alarm::CheckpointSlot>,
)> {
    let dir = home.dir().join("audit");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let webhook = (!config.audit.webhook.is_empty()).then(|| config.audit.webhook.clone());
    if let Some(url) = &webhook {
        crate::audit::webhook::check_url(url).map_err(|e| anyhow::anyhow!("audit.webhook {e}"))?;
    }
    let checkpoint = Arc::new(crate::audit::alarm::CheckpointSlot::new(
        dir.join("checkpoint.json"),
        crate::audit::auditor_key(&dir)?,
    ));
    let audit = Arc::new(crate::audit::NodeAudit {
        chain: genesis.chain_id.to_string(),
        sink: Arc::new(crate::audit::alarm::AlarmSink::new(&dir, webhook, metrics)),
        checkpoint: checkpoint.clone(),
        published: std::sync::Mutex::new(None),
    });
    Ok((audit, checkpoint))
}

/// The p2p transport from the config. With WireGuard the allow-list is the genesis
/// validators' node keys, the bootstrap peers and `p2p.allow`.
fn transport(
    home: &Home,
    config: &Config,
    genesis: &Genesis,
    bootstrap: &[pyralog_p2p::Address],
) -> anyhow::Result<TransportKind> {
    let p2p = &config.p2p;
    if p2p.transport == Transport::Tcp {
        return Ok(TransportKind::Tcp);
    }
    let mut allowed: Vec<[u8; 32]> = genesis
        .validators
        .iter()
        .filter_map(|v| v.node_key.map(|k| k.to_bytes()))
        .collect();
    for addr in bootstrap {
        let peer = pyralog_p2p::peer_in(addr).with_context(|| {
            format!("p2p.bootstrap {addr}: with WireGuard every address needs /p2p/<peer id>")
        })?;
        allowed.push(pyralog_p2p::public_from_peer_id(&peer)?);
    }
    for id in &p2p.allow {
        let peer: pyralog_p2p::PeerId = id
            .parse()
            .with_context(|| format!("p2p.allow {id:?} is not a peer id"))?;
        allowed.push(pyralog_p2p::public_from_peer_id(&peer)?);
    }
    let psk = if p2p.psk_file.is_empty() {
        None
    } else {
        Some(read_psk(&home.dir().join(&p2p.psk_file))?)
    };
    Ok(TransportKind::WireGuard(WgConfig {
        allowed,
        psk,
        mtu: p2p.mtu,
        persistent_keepalive: (p2p.keepalive_secs > 0).then_some(p2p.keepalive_secs),
        ..WgConfig::default()
    }))
}

/// Reads a WireGuard pre-shared key: base64 of 32 bytes, as `wg genpsk` writes it.
pub fn read_psk(path: &std::path::Path) -> anyhow::Result<[u8; 32]> {
    use base64::Engine as _;
    let text = crate::home::read_limited(path, 1024)
        .with_context(|| format!("reading the pre-shared key {}", path.display()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .with_context(|| format!("{}: not base64", path.display()))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        anyhow::anyhow!(
            "{}: a pre-shared key is 32 bytes, this is {}",
            path.display(),
            b.len()
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::read_psk;

    #[test]
    fn a_psk_file_is_base64_of_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("psk");
        // `wg genpsk` output, with its newline.
        std::fs::write(&path, "nzEBtnSNDTBUgjJv3+Aj3T1lGjiobGjC2yLSd6hCpEo=\n").unwrap();
        let psk = read_psk(&path).unwrap();
        assert_eq!(psk[0], 0x9f);
        std::fs::write(&path, "not base64!").unwrap();
        assert!(
            read_psk(&path)
                .unwrap_err()
                .to_string()
                .contains("not base64")
        );
        std::fs::write(&path, "AAAA").unwrap();
        assert!(read_psk(&path).unwrap_err().to_string().contains("is 3"));
        assert!(read_psk(&dir.path().join("missing")).is_err());
    }
}
