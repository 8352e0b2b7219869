//! The WireGuard overlay end to end: two libp2p networks on 127.0.0.1 talking through
//! userspace WireGuard, a UDP relay in the middle where a test needs to move, replay or
//! drop datagrams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use pyralog_p2p::wg::WgConfig;
use pyralog_p2p::{Config, Event, Network, PeerId, TransportKind};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

fn seed(n: u8) -> [u8; 32] {
    [n; 32]
}

fn node_public(n: u8) -> [u8; 32] {
    pyralog_crypto::Keypair::from_seed(&seed(n))
        .public()
        .to_bytes()
}

fn wg_public(n: u8) -> [u8; 32] {
    pyralog_crypto::Keypair::from_seed(&seed(n))
        .public()
        .x25519_public()
}

fn wg_config(allowed: &[u8]) -> WgConfig {
    WgConfig {
        allowed: allowed.iter().map(|n| node_public(*n)).collect(),
        ..WgConfig::default()
    }
}

/// What a test sees of one node: its handle and its connection events.
struct Node {
    net: Network,
    conns: mpsc::UnboundedReceiver<(PeerId, bool)>,
}

impl Node {
    fn udp(&self) -> SocketAddr {
        self.net.overlay().unwrap().local_addr()
    }

    fn dial_addr(&self, via: SocketAddr) -> String {
        format!(
            "/ip4/{}/udp/{}/p2p/{}",
            via.ip(),
            via.port(),
            self.net.local_peer_id()
        )
    }

    /// Waits for the next connection event.
    async fn next_conn(&mut self, within: Duration) -> Option<(PeerId, bool)> {
        tokio::time::timeout(within, self.conns.recv())
            .await
            .ok()
            .flatten()
    }

    /// The connection events not yet read.
    fn events_so_far(&mut self) -> Vec<(PeerId, bool)> {
        let mut v = Vec::new();
        while let Ok(e) = self.conns.try_recv() {
            v.push(e);
        }
        v
    }
}

/// Starts a node that echoes every request, with the WireGuard transport.
async fn node(n: u8, wg: WgConfig, bootstrap: Vec<String>) -> Node {
    let config = Config {
        network: "wgtest".into(),
        transport: TransportKind::WireGuard(wg),
        listen: vec!["/ip4/127.0.0.1/udp/0".parse().unwrap()],
        bootstrap: bootstrap.iter().map(|a| a.parse().unwrap()).collect(),
        redial: Duration::from_millis(300),
        ..Config::default()
    };
    let (net, mut events) = pyralog_p2p::spawn(&seed(n), config).await.unwrap();
    let (tx, conns) = mpsc::unbounded_channel();
    let responder = net.clone();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            match e {
                Event::Request { id, data, .. } => {
                    let _ = responder.respond(id, data).await;
                }
                Event::PeerConnected(p) => {
                    let _ = tx.send((p, true));
                }
                Event::PeerDisconnected(p) => {
                    let _ = tx.send((p, false));
                }
                _ => {}
            }
        }
    });
    Node { net, conns }
}

async fn connected(a: &mut Node, b: &Node) {
    let want = b.net.local_peer_id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some((p, true)) = a.next_conn(Duration::from_millis(200)).await
            && p == want
        {
            return;
        }
    }
    panic!("no connection to {want} within 10 s");
}

/// Echo round trip from `a` to `b` of `len` bytes.
async fn echo(a: &Node, b: &Node, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let back = a
        .net
        .request(b.net.local_peer_id(), data.clone())
        .await
        .expect("echo request");
    assert_eq!(back, data);
}

/// A UDP relay between B (which believes the relay is A) and A. It can change the port
/// it uses towards A (B roams), drop everything (B vanishes) or handshake messages, and
/// it keeps the first handshake initiation B sent.
struct Relay {
    front: SocketAddr,
    roam: mpsc::UnboundedSender<()>,
    faults: Arc<Faults>,
    first_init: Arc<Mutex<Option<Vec<u8>>>>,
    back_ports: Arc<Mutex<Vec<u16>>>,
}

/// What the relay drops, either way.
#[derive(Default)]
struct Faults {
    /// Everything.
    blackhole: AtomicBool,
    /// The next this many handshake messages (initiations and responses).
    handshakes: AtomicU32,
    /// The next this many handshake responses.
    responses: AtomicU32,
}

impl Faults {
    fn drops(&self, datagram: &[u8]) -> bool {
        let take = |n: &AtomicU32| {
            n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        };
        match (datagram.len(), datagram.first()) {
            _ if self.blackhole.load(Ordering::Relaxed) => true,
            (148, Some(1)) => take(&self.handshakes),
            (92, Some(2)) => take(&self.handshakes) || take(&self.responses),
            _ => false,
        }
    }
}

impl Relay {
    async fn start(a: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let front_addr = front.local_addr().unwrap();
        let b_addr: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let faults = Arc::new(Faults::default());
        let first_init: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let back_ports: Arc<Mutex<Vec<u16>>> = Arc::default();
        let (roam, mut roams) = mpsc::unbounded_channel::<()>();
        let (f, b, fa, fi, bp) = (
            front.clone(),
            b_addr.clone(),
            faults.clone(),
            first_init.clone(),
            back_ports.clone(),
        );
        tokio::spawn(async move {
            let mut back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            bp.lock().unwrap().push(back.local_addr().unwrap().port());
            let pump = |back: &Arc<UdpSocket>| {
                tokio::spawn(pump(back.clone(), f.clone(), b.clone(), fa.clone()))
            };
            let mut back_task = pump(&back);
            let mut buf = vec![0u8; 65_535];
            loop {
                tokio::select! {
                    r = f.recv_from(&mut buf) => {
                        let (n, from) = r.unwrap();
                        *b.lock().unwrap() = Some(from);
                        let d = &buf[..n];
                        if n == 148 && d[0] == 1 {
                            fi.lock().unwrap().get_or_insert_with(|| d.to_vec());
                        }
                        if !fa.drops(d) {
                            let _ = back.send_to(d, a).await;
                        }
                    }
                    Some(()) = roams.recv() => {
                        back_task.abort();
                        back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        bp.lock().unwrap().push(back.local_addr().unwrap().port());
                        back_task = pump(&back);
                    }
                }
            }
        });
        Relay {
            front: front_addr,
            roam,
            faults,
            first_init,
            back_ports,
        }
    }
}

/// Nodes 1 (A) and 2 (B), each with `config(allowed)`, B dialling A through a relay,
/// connected both ways.
async fn relayed(config: impl Fn(&[u8]) -> WgConfig) -> (Node, Relay, Node) {
    let mut a = node(1, config(&[2]), vec![]).await;
    let relay = Relay::start(a.udp()).await;
    let mut b = node(2, config(&[1]), vec![a.dial_addr(relay.front)]).await;
    connected(&mut a, &b).await;
    connected(&mut b, &a).await;
    (a, relay, b)
}

/// A → B direction of the relay.
async fn pump(
    back: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    b: Arc<Mutex<Option<SocketAddr>>>,
    faults: Arc<Faults>,
) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, _)) = back.recv_from(&mut buf).await else {
            return;
        };
        let to = *b.lock().unwrap();
        if let (Some(to), false) = (to, faults.drops(&buf[..n])) {
            let _ = front.send_to(&buf[..n], to).await;
        }
    }
}

/// Sends `datagram` to `to` from a fresh socket and returns what came back within `wait`.
async fn probe(to: SocketAddr, datagram: &[u8], wait: Duration) -> Vec<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(datagram, to).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_535];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, s.recv_from(&mut buf)).await {
        got.push(buf[..n].to_vec());
    }
    got
}

/// A well-formed handshake initiation to the node with WireGuard key `to`, from `secret`.
fn initiation(secret: [u8; 32], to: [u8; 32]) -> Vec<u8> {
    let mut t = Tunn::new(
        x25519::StaticSecret::from(secret),
        x25519::PublicKey::from(to),
        None,
        None,
        7,
        None,
    );
    let mut buf = vec![0u8; 2048];
    match t.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no initiation"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_runs_over_the_overlay() {
    let mut b = node(2, wg_config(&[1]), vec![]).await;
    // A dials B.
    let mut a = node(1, wg_config(&[2]), vec![b.dial_addr(b.udp())]).await;
    connected(&mut a, &b).await;
    connected(&mut b, &a).await;
    echo(&a, &b, 10).await;
    echo(&b, &a, 10).await;
    // Many windows' worth of packets, both ways (requests are at most 64 KiB).
    for _ in 0..50 {
        echo(&a, &b, 60_000).await;
    }
    let stats = a.net.overlay().unwrap().stats();
    let peer = &stats.peers[0];
    assert_eq!(peer.peer, b.net.local_peer_id());
    assert_eq!(peer.endpoint, Some(b.udp()));
    assert!(peer.handshakes >= 1);
    assert!(peer.tx_bytes > 3_000_000, "{peer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_get_no_answer_and_cannot_connect() {
    let a = node(1, wg_config(&[2]), vec![]).await;
    let a_udp = a.udp();
    let quiet = Duration::from_millis(700);

    // Random datagrams of every WireGuard message size and some others.
    for len in [1usize, 4, 32, 64, 92, 148, 200, 1200] {
        let junk: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
        assert!(
            probe(a_udp, &junk, Duration::from_millis(100))
                .await
                .is_empty()
        );
        let mut typed = junk.clone();
        if len >= 4 {
            typed[..4].copy_from_slice(&1u32.to_le_bytes());
            assert!(
                probe(a_udp, &typed, Duration::from_millis(100))
                    .await
                    .is_empty()
            );
        }
    }
    // A well-formed initiation from a key outside the allow-list.
    let stranger = pyralog_crypto::Keypair::from_seed(&seed(9));
    let init = initiation(*stranger.x25519_secret(), wg_public(1));
    assert!(probe(a_udp, &init, quiet).await.is_empty());
    let stats = a.net.overlay().unwrap().stats();
    assert!(stats.unknown_key >= 1, "{stats:?}");
    assert!(stats.garbage >= 1, "{stats:?}");

    // A stranger running the real stack cannot connect either.
    let mut c = node(9, wg_config(&[1]), vec![a.dial_addr(a_udp)]).await;
    assert!(c.next_conn(Duration::from_secs(2)).await.is_none());

    // The same initiation from an allowed key is answered (the check is not vacuous).
    let friend = pyralog_crypto::Keypair::from_seed(&seed(2));
    let init = initiation(*friend.x25519_secret(), wg_public(1));
    let answer = probe(a_udp, &init, quiet).await;
    assert_eq!(answer.len(), 1, "one handshake response");
    assert_eq!(answer[0].len(), 92);
    // Replayed: no answer.
    assert!(probe(a_udp, &init, quiet).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_rekeys_roaming_and_replays() {
    let fast = |allowed: &[u8]| WgConfig {
        rekey_after: Duration::from_millis(800),
        ..wg_config(allowed)
    };
    let (mut a, relay, mut b) = relayed(fast).await;

    let started = Instant::now();
    let mut roamed = false;
    let mut lossy = false;
    let mut rounds = 0;
    while started.elapsed() < Duration::from_secs(6) {
        echo(&b, &a, 2000).await;
        echo(&a, &b, 2000).await;
        rounds += 1;
        // Two handshake messages lost (a rekey initiation, its resend or a response):
        // the rekeying side resends rather than wait out WireGuard's 5 s.
        if !lossy && started.elapsed() > Duration::from_secs(1) {
            relay.faults.handshakes.store(2, Ordering::Relaxed);
            lossy = true;
        }
        if !roamed && started.elapsed() > Duration::from_secs(3) {
            relay.roam.send(()).unwrap();
            roamed = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rounds > 20);
    assert_eq!(relay.faults.handshakes.load(Ordering::Relaxed), 0);
    // One connection the whole time: no disconnect on either side.
    assert_eq!(a.events_so_far(), vec![]);
    assert_eq!(b.events_so_far(), vec![]);
    let peer = a.net.overlay().unwrap().stats().peers[0].clone();
    assert!(peer.handshakes >= 4, "several rekeys: {peer:?}");
    // A follows B to its new port.
    let ports = relay.back_ports.lock().unwrap().clone();
    assert_eq!(ports.len(), 2);
    assert_eq!(peer.endpoint.map(|e| e.port()), Some(ports[1]));

    // B's first initiation, replayed by someone else: silence, and nothing changes.
    let init = relay.first_init.lock().unwrap().clone().expect("captured");
    assert!(
        probe(a.udp(), &init, Duration::from_millis(700))
            .await
            .is_empty()
    );
    echo(&a, &b, 100).await;
    let after = a.net.overlay().unwrap().stats().peers[0].clone();
    assert_eq!(after.endpoint.map(|e| e.port()), Some(ports[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_rekey_response_is_not_taken_for_a_restart() {
    // A handshake initiation on a session between 3 s old and 90% of the rekey interval
    // means the peer lost its state, and its connections are reset, unless the peer
    // never got our response to its last initiation. With a 14 s rekey the initiator
    // resends after 3.5 s, inside that window.
    let slow = |allowed: &[u8]| WgConfig {
        rekey_after: Duration::from_secs(14),
        ..wg_config(allowed)
    };
    let (mut a, relay, mut b) = relayed(slow).await;
    // The next response is the rekey's.
    relay.faults.responses.store(1, Ordering::Relaxed);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        echo(&a, &b, 100).await;
        echo(&b, &a, 100).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(relay.faults.responses.load(Ordering::Relaxed), 0);
    assert_eq!(a.events_so_far(), vec![]);
    assert_eq!(b.events_so_far(), vec![]);
    // The rekey completed after all.
    for n in [&a, &b] {
        let peer = n.net.overlay().unwrap().stats().peers[0].clone();
        assert!(
            peer.since_handshake
                .is_some_and(|t| t < Duration::from_secs(6)),
            "{peer:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_torn_down_after_expiry() {
    let quick = |allowed: &[u8]| WgConfig {
        expire_after: Duration::from_secs(2),
        persistent_keepalive: Some(1),
        ..wg_config(allowed)
    };
    let (mut a, relay, b) = relayed(quick).await;
    echo(&a, &b, 10).await;
    // Keepalives hold the connection while the path works.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(a.events_so_far(), vec![]);

    relay.faults.blackhole.store(true, Ordering::Relaxed);
    let cut = Instant::now();
    let ev = a.next_conn(Duration::from_secs(8)).await;
    assert_eq!(ev, Some((b.net.local_peer_id(), false)));
    // libp2p's own ping would need 20 s; the overlay closes it after its expiry.
    assert!(
        cut.elapsed() < Duration::from_secs(6),
        "{:?}",
        cut.elapsed()
    );
    // The socket goes once libp2p has dropped its stream, just after the event.
    let deadline = Instant::now() + Duration::from_secs(2);
    while a.net.overlay().unwrap().stats().peers[0].connections > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.net.overlay().unwrap().stats().peers[0].connections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_preshared_key_never_connects() {
    let with_psk = |allowed: &[u8], psk: u8| WgConfig {
        psk: Some([psk; 32]),
        ..wg_config(allowed)
    };
    let a = node(1, with_psk(&[2, 3], 7), vec![]).await;
    let mut b = node(2, with_psk(&[1], 8), vec![a.dial_addr(a.udp())]).await;
    assert!(b.next_conn(Duration::from_secs(2)).await.is_none());
    let mut c = node(3, with_psk(&[1], 7), vec![a.dial_addr(a.udp())]).await;
    assert_eq!(
        c.next_conn(Duration::from_secs(10)).await,
        Some((a.net.local_peer_id(), true))
    );
}

/// No noise handshake runs inside the tunnel, so the tunnel alone must name the peer: a
/// dial for one allowed node sent to another node's endpoint encrypts to the first
/// node's key, which the second cannot answer, so no connection comes up under that
/// name; and each side names an accepted connection by the key of its tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_names_the_peer() {
    let mut b = node(2, wg_config(&[1, 3]), vec![]).await;
    let c_id = pyralog_p2p::peer_id_from_public(&node_public(3)).unwrap();
    // A dials "C" at B's endpoint, and B by its own name there.
    let wrong = format!("/ip4/127.0.0.1/udp/{}/p2p/{c_id}", b.udp().port());
    let mut a = node(1, wg_config(&[2, 3]), vec![wrong, b.dial_addr(b.udp())]).await;
    // Every event for 4 s (the wrong dial is retried every 300 ms meanwhile).
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some((p, _)) = a.next_conn(Duration::from_millis(100)).await {
            seen.push(p);
        }
    }
    assert!(seen.contains(&b.net.local_peer_id()), "{seen:?}");
    assert!(!seen.contains(&c_id), "{seen:?}");
    let seen: Vec<PeerId> = b.events_so_far().into_iter().map(|(p, _)| p).collect();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|p| *p == a.net.local_peer_id()), "{seen:?}");
    let stats = a.net.overlay().unwrap().stats();
    let to_c = stats.peers.iter().find(|p| p.peer == c_id).unwrap();
    assert_eq!(to_c.handshakes, 0, "{to_c:?}");
    // The wrong dial did reach B, which dropped it.
    let stats = b.net.overlay().unwrap().stats();
    assert!(
        stats.garbage + stats.unknown_key + stats.unauthenticated >= 1,
        "{stats:?}"
    );
}

/// An IPv6 TCP SYN from `src` to `dst`'s libp2p port, checksummed.
fn syn(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&pyralog_p2p::wg::OVERLAY_PORT.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4; // header of 5 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&65_535u16.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(tcp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 6]);
    pseudo.extend_from_slice(&tcp);
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    tcp[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[6, 64]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(&tcp);
    ip
}

/// Without noise inside the tunnel, the overlay's inner-address check is what ties a
/// connection to its peer: an allowed peer (C) that sends, through its own tunnel, a
/// TCP SYN claiming another allowed peer's (A's) overlay address is dropped and never
/// answered, while the same SYN from its own address is answered (a SYN-ACK comes
/// back), so the check is what made the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_speak_from_another_peers_overlay_address() {
    let b = node(2, wg_config(&[1, 3]), vec![]).await;
    let b_udp = b.udp();
    let c_secret = *pyralog_crypto::Keypair::from_seed(&seed(3)).x25519_secret();
    let mut c = Tunn::new(
        x25519::StaticSecret::from(c_secret),
        x25519::PublicKey::from(wg_public(2)),
        None,
        None,
        9,
        None,
    );
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let mut out = vec![0u8; 65_535];
    // C's handshake with B.
    let TunnResult::WriteToNetwork(init) = c.format_handshake_initiation(&mut out, false) else {
        panic!("no initiation");
    };
    udp.send_to(init, b_udp).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    // The response completes the handshake; boringtun may answer with a keepalive.
    if let TunnResult::WriteToNetwork(p) = c.decapsulate(None, &buf[..n], &mut out) {
        udp.send_to(p, b_udp).await.unwrap();
    }

    let b_overlay = pyralog_p2p::wg::overlay_address(&wg_public(2));
    let before = b.net.overlay().unwrap().stats().bad_inner;
    // Sends one SYN from `src` and returns the inner packets B sent back within 1 s.
    let mut send_syn = async |src| {
        let TunnResult::WriteToNetwork(d) = c.encapsulate(&syn(src, b_overlay), &mut out) else {
            panic!("no data packet");
        };
        udp.send_to(d, b_udp).await.unwrap();
        let mut answers = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, udp.recv_from(&mut buf)).await
        {
            let mut inner = vec![0u8; 65_535];
            if let TunnResult::WriteToTunnelV6(p, _) = c.decapsulate(None, &buf[..n], &mut inner)
                && p.len() >= 60
            {
                answers.push(p.to_vec());
            }
        }
        answers
    };
    // Claiming A's address: dropped, counted, unanswered.
    let a_overlay = pyralog_p2p::wg::overlay_address(&wg_public(1));
    assert!(send_syn(a_overlay).await.is_empty());
    assert_eq!(b.net.overlay().unwrap().stats().bad_inner, before + 1);
    // From C's own address: B's TCP stack answers with a SYN-ACK to C.
    let c_overlay = pyralog_p2p::wg::overlay_address(&wg_public(3));
    let answers = send_syn(c_overlay).await;
    assert!(
        answers
            .iter()
            .any(|p| p[24..40] == c_overlay.octets() && p[40 + 13] & 0x12 == 0x12),
        "no SYN-ACK: {answers:?}"
    );
    assert_eq!(b.net.overlay().unwrap().stats().bad_inner, before + 1);
}
