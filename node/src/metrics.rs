//! Prometheus metrics, served as text on their own port (`GET /metrics`).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Buckets of the per-block stage histograms, in seconds.
const STAGE_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Every metric the node exports.
pub struct Metrics {
    registry: Registry,
    /// Committed height.
    pub height: Gauge,
    /// Current consensus round.
    pub round: Gauge,
    /// Connected peers.
    pub peers: Gauge,
    /// Pending transactions.
    pub mempool_txs: Gauge,
    /// Pending bytes.
    pub mempool_bytes: Gauge,
    /// Pending transactions queued behind a nonce gap.
    pub mempool_queued_txs: Gauge,
    /// Committed transactions (rate: tx/s).
    pub committed_txs: Counter,
    /// Committed blocks.
    pub committed_blocks: Counter,
    /// Seconds from a height's start to its commit.
    pub commit_latency: Histogram,
    /// Seconds to build (execute) a proposal from the mempool.
    pub build_seconds: Histogram,
    /// The cap on the transactions of this node's next proposal (what it can execute in
    /// half the propose timeout).
    pub proposal_max_txs: Gauge,
    /// Seconds to validate (execute) another validator's proposal.
    pub validate_seconds: Histogram,
    /// Seconds to commit a decided block to storage.
    pub store_seconds: Histogram,
    /// Rejected transactions by reason.
    pub rejected_txs: Family<Vec<(String, String)>, Counter>,
    /// Blocks committed through sync.
    pub synced_blocks: Counter,
    /// Consensus messages rejected by the engine.
    pub rejected_messages: Counter,
    /// Transactions of compact proposals this node rebuilt from what it held.
    pub proposal_txs_held: Counter,
    /// Transactions of compact proposals this node fetched from its peers.
    pub proposal_txs_fetched: Counter,
    /// Transactions of compact proposals this node asked its peers for (some reach its
    /// pool by gossip before the answer: those count as held).
    pub proposal_txs_requested: Counter,
    /// Compact proposals dropped because their missing transactions could not be fetched
    /// (or were not fetched for: others nearer the current round waited).
    pub proposal_fetches_failed: Counter,
    /// Transaction batches from gossip dropped while the node was behind (running count).
    pub dropped_tx_batches: Gauge,
    /// Peers reconnected because they had not told their gossip topics (running count).
    pub reconnected_without_topics: Gauge,
    /// Blocks the RPC server built to prove their transactions (its proof cache's misses).
    pub rpc_proven_blocks: Counter,
    /// Bytes of the blocks the RPC server holds ready to prove.
    pub rpc_proof_cache_bytes: Gauge,
    /// Keys in the filter of present state keys (0 until it is built).
    pub state_key_filter_keys: Gauge,
    /// The WireGuard overlay, read at each scrape.
    overlay: std::sync::OnceLock<pyralog_p2p::wg::Overlay>,
    /// The store, whose state-node reads are read at each scrape.
    store: std::sync::OnceLock<Arc<pyralog_storage::SledStore>>,
    state_node_reads: Family<Vec<(String, String)>, Gauge>,
    wg_dropped: Family<Vec<(String, String)>, Gauge>,
    wg_cookies: Gauge,
    wg_handshakes: Family<Vec<(String, String)>, Gauge>,
    wg_rx_bytes: Family<Vec<(String, String)>, Gauge>,
    wg_tx_bytes: Family<Vec<(String, String)>, Gauge>,
    wg_sessions: Gauge,
    /// The auditor's metrics (`--mode auditor` only).
    pub audit: Option<crate::audit::alarm::AuditMetrics>,
}

impl Metrics {
    /// Registers every metric of a validator or full node.
    pub fn new() -> Arc<Metrics> {
        Metrics::build(false)
    }

    /// Registers every metric of an auditor node (with `pyralog_audit_*`).
    pub fn with_audit() -> Arc<Metrics> {
        Metrics::build(true)
    }

    fn build(audit: bool) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("pyralog");
        let m = Metrics {
            registry: Registry::default(),
            height: Gauge::default(),
            round: Gauge::default(),
            peers: Gauge::default(),
            mempool_txs: Gauge::default(),
            mempool_bytes: Gauge::default(),
            mempool_queued_txs: Gauge::default(),
            committed_txs: Counter::default(),
            committed_blocks: Counter::default(),
            commit_latency: Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            build_seconds: Histogram::new(STAGE_BUCKETS),
            proposal_max_txs: Gauge::default(),
            validate_seconds: Histogram::new(STAGE_BUCKETS),
            store_seconds: Histogram::new(STAGE_BUCKETS),
            rejected_txs: Family::default(),
            synced_blocks: Counter::default(),
            rejected_messages: Counter::default(),
            proposal_txs_held: Counter::default(),
            proposal_txs_fetched: Counter::default(),
            proposal_txs_requested: Counter::default(),
            proposal_fetches_failed: Counter::default(),
            dropped_tx_batches: Gauge::default(),
            reconnected_without_topics: Gauge::default(),
            rpc_proven_blocks: Counter::default(),
            rpc_proof_cache_bytes: Gauge::default(),
            state_key_filter_keys: Gauge::default(),
            overlay: std::sync::OnceLock::new(),
            store: std::sync::OnceLock::new(),
            state_node_reads: Family::default(),
            wg_dropped: Family::default(),
            wg_cookies: Gauge::default(),
            wg_handshakes: Family::default(),
            wg_rx_bytes: Family::default(),
            wg_tx_bytes: Family::default(),
            wg_sessions: Gauge::default(),
            audit: None,
        };
        registry.register("height", "Committed height", m.height.clone());
        registry.register("round", "Current consensus round", m.round.clone());
        registry.register("peers", "Connected peers", m.peers.clone());
        registry.register("mempool_txs", "Pending transactions", m.mempool_txs.clone());
        registry.register(
            "mempool_bytes",
            "Pending transaction bytes",
            m.mempool_bytes.clone(),
        );
        registry.register(
            "mempool_queued_txs",
            "Pending transactions queued behind a nonce gap (evicted first when the pool is full)",
            m.mempool_queued_txs.clone(),
        );
        registry.register(
            "committed_txs",
            "Committed transactions",
            m.committed_txs.clone(),
        );
        registry.register(
            "committed_blocks",
            "Committed blocks",
            m.committed_blocks.clone(),
        );
        registry.register(
            "commit_latency_seconds",
            "Time from the start of a height to its commit",
            m.commit_latency.clone(),
        );
        registry.register(
            "proposal_build_seconds",
            "Time to build a proposal from the mempool (executing its transactions)",
            m.build_seconds.clone(),
        );
        registry.register(
            "proposal_max_txs",
            "Cap on the transactions of this node's next proposal: what it can execute in half the propose timeout, at its measured cost per transaction",
            m.proposal_max_txs.clone(),
        );
        registry.register(
            "block_validate_seconds",
            "Time to validate another validator's proposal (executing its transactions)",
            m.validate_seconds.clone(),
        );
        registry.register(
            "block_store_seconds",
            "Time to write a decided block to storage",
            m.store_seconds.clone(),
        );
        registry.register(
            "rejected_txs",
            "Transactions rejected, by reason",
            m.rejected_txs.clone(),
        );
        registry.register(
            "synced_blocks",
            "Blocks committed through block sync",
            m.synced_blocks.clone(),
        );
        registry.register(
            "rejected_consensus_messages",
            "Consensus messages the engine rejected",
            m.rejected_messages.clone(),
        );
        registry.register(
            "proposal_txs_held",
            "Transactions of compact proposals (transactions by hash) that this node rebuilt from its mempool or its recent blocks",
            m.proposal_txs_held.clone(),
        );
        registry.register(
            "proposal_txs_fetched",
            "Transactions of compact proposals that this node did not hold and fetched from its peers",
            m.proposal_txs_fetched.clone(),
        );
        registry.register(
            "proposal_txs_requested",
            "Transactions of compact proposals that this node asked its peers for (those that reached its pool by gossip before the answer count as held, not fetched)",
            m.proposal_txs_requested.clone(),
        );
        registry.register(
            "proposal_fetches_failed",
            "Compact proposals dropped because no peer served their missing transactions in time, or not fetched for because others nearer the current round waited",
            m.proposal_fetches_failed.clone(),
        );
        registry.register(
            "p2p_dropped_tx_batches",
            "Transaction batches from gossip dropped because the node was behind on admitting them (running count)",
            m.dropped_tx_batches.clone(),
        );
        registry.register(
            "p2p_peers_reconnected_without_topics",
            "Peers disconnected because they had not told their gossip topics 5 s after they connected, so that they connect afresh (running count)",
            m.reconnected_without_topics.clone(),
        );
        registry.register(
            "rpc_proven_blocks",
            "Blocks the RPC server decoded and hashed to prove their transactions (misses of its cache of proven blocks)",
            m.rpc_proven_blocks.clone(),
        );
        registry.register(
            "rpc_proof_cache_bytes",
            "Bytes of the blocks the RPC server holds ready to prove their transactions (rpc.proof_cache_mib)",
            m.rpc_proof_cache_bytes.clone(),
        );
        registry.register(
            "state_key_filter_keys",
            "Distinct keys in the filter that answers reads of absent state keys without a walk (every key any stored version held; 0 until it is built at start)",
            m.state_key_filter_keys.clone(),
        );
        registry.register(
            "state_node_reads",
            "State-tree nodes read, by where they were found (running count): at their place in the top levels, among the recent nodes, or from their page in the database; the database's share is the state caches' miss rate (storage.state_cache_mb)",
            m.state_node_reads.clone(),
        );
        registry.register(
            "wg_dropped_datagrams",
            "Datagrams the WireGuard overlay dropped without a reply, by reason (running count)",
            m.wg_dropped.clone(),
        );
        registry.register(
            "wg_cookies_sent",
            "WireGuard cookie replies sent under a handshake flood (running count)",
            m.wg_cookies.clone(),
        );
        registry.register(
            "wg_handshakes",
            "WireGuard handshakes completed with each peer (running count)",
            m.wg_handshakes.clone(),
        );
        registry.register(
            "wg_rx_bytes",
            "Bytes received from each peer inside WireGuard",
            m.wg_rx_bytes.clone(),
        );
        registry.register(
            "wg_tx_bytes",
            "Bytes sent to each peer inside WireGuard",
            m.wg_tx_bytes.clone(),
        );
        registry.register(
            "wg_sessions",
            "Peers with a live WireGuard session (a handshake in the last 180 s)",
            m.wg_sessions.clone(),
        );
        let audit = audit.then(|| crate::audit::alarm::AuditMetrics::register(&mut registry));
        Arc::new(Metrics {
            registry,
            audit,
            ..m
        })
    }

    /// Exports the overlay's statistics from now on (WireGuard transport only).
    pub fn watch_overlay(&self, overlay: pyralog_p2p::wg::Overlay) {
        let _ = self.overlay.set(overlay);
    }

    /// Exports the store's state-node reads from now on.
    pub fn watch_store(&self, store: Arc<pyralog_storage::SledStore>) {
        let _ = self.store.set(store);
    }

    fn read_store(&self) {
        let Some(store) = self.store.get() else {
            return;
        };
        let reads = store.state_node_reads();
        set_each(
            &self.state_node_reads,
            "from",
            [
                ("place", reads.places),
                ("recent", reads.recent),
                ("database", reads.pages),
            ],
        );
    }

    fn read_overlay(&self) {
        let Some(o) = self.overlay.get() else { return };
        let st = o.stats();
        set_each(
            &self.wg_dropped,
            "reason",
            [
                ("garbage", st.garbage),
                ("unknown_key", st.unknown_key),
                ("unauthenticated", st.unauthenticated),
                ("bad_inner", st.bad_inner),
            ],
        );
        set(&self.wg_cookies, st.cookies_sent);
        let mut live = 0;
        for p in &st.peers {
            let peer = vec![("peer".to_string(), p.peer.to_string())];
            set(&self.wg_handshakes.get_or_create(&peer), p.handshakes);
            set(&self.wg_rx_bytes.get_or_create(&peer), p.rx_bytes as u64);
            set(&self.wg_tx_bytes.get_or_create(&peer), p.tx_bytes as u64);
            if p.since_handshake.is_some_and(|d| d.as_secs() < 180) {
                live += 1;
            }
        }
        set(&self.wg_sessions, live);
    }

    /// Counts a rejected transaction.
    pub fn reject(&self, code: &str) {
        self.rejected_txs
            .get_or_create(&vec![("reason".to_string(), code.to_string())])
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        self.read_overlay();
        self.read_store();
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Sets each gauge of `family` whose `label` is the value's name.
fn set_each<const N: usize>(
    family: &Family<Vec<(String, String)>, Gauge>,
    label: &str,
    values: [(&str, u64); N],
) {
    for (name, n) in values {
        set(
            &family.get_or_create(&vec![(label.to_string(), name.to_string())]),
            n,
        );
    }
}

/// Gauge helper: sets an `i64` gauge from a `u64`.
pub fn set(g: &Gauge, v: u64) {
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
}

/// Reads a request head (up to the blank line, at most 2 KiB, at most 5 s). A client may
/// send its request in several segments; answering and closing after the first one would
/// reset the connection under the client's later writes.
async fn read_head(sock: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while head.len() < 2048 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    head
}

/// An HTTP answer of the metrics server.
pub struct Page {
    /// Status line, e.g. `200 OK`.
    pub status: &'static str,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Page {
    /// A `200 OK` page.
    pub fn ok(content_type: &'static str, body: String) -> Page {
        Page {
            status: "200 OK",
            content_type,
            body,
        }
    }
}

/// What the metrics server answers for a path (`None`: 404).
pub type Routes = Arc<dyn Fn(&str) -> Option<Page> + Send + Sync>;

/// The node's routes: `GET /metrics`.
pub fn routes(metrics: Arc<Metrics>) -> Routes {
    Arc::new(move |path: &str| {
        (path == "/metrics").then(|| Page::ok("text/plain; version=0.0.4", metrics.render()))
    })
}

/// Serves `GET` of `routes` on `listener` until the task is dropped. One short request
/// per connection; anything else gets 404.
pub async fn serve(listener: TcpListener, routes: Routes) {
    let active = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        if active.load(std::sync::atomic::Ordering::Relaxed) > 64 {
            continue;
        }
        let routes = routes.clone();
        let active = active.clone();
        active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let head = read_head(&mut sock).await;
            let req = String::from_utf8_lossy(&head);
            let page = req
                .strip_prefix("GET ")
                .and_then(|r| r.split(' ').next())
                .and_then(|path| routes(path))
                .unwrap_or_else(|| Page {
                    status: "404 Not Found",
                    content_type: "text/plain",
                    body: "try GET /metrics\n".to_string(),
                });
            let resp = format!(
                "HTTP/1.1 {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                page.status,
                page.content_type,
                page.body.len(),
                page.body
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
            active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A request that arrives in two segments gets one full answer, not a reset.
    #[tokio::test]
    async fn a_request_in_pieces_is_answered_once_complete() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, routes(Metrics::new())));
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.write_all(b"GET /met").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        sock.write_all(b"rics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        sock.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.contains("pyralog_"), "{out}");

        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.write_all(b"GET /other HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        sock.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
        server.abort();
    }
}
