//! The WireGuard overlay: libp2p connections carried as TCP streams of a userspace TCP/IP
//! stack (smoltcp) whose IP packets travel inside WireGuard tunnels (boringtun), one UDP
//! socket for all peers. No TUN device, no root.
//!
//! One actor task reads the UDP socket and runs the timers; a stream's write sends its
//! own datagrams (`Shared::egress`). Per allowed peer the overlay keeps a boringtun
//! [`Tunn`](boringtun::noise::Tunn) keyed with the x25519 form of both node keys (so the
//! WireGuard key and the libp2p peer id name the same identity), the peer's endpoint
//! (updated on every authenticated packet: roaming) and its overlay address, an IPv6 ULA
//! derived from its WireGuard public key.
//!
//! A datagram is answered only when it authenticates as an allowed peer: garbage, a
//! handshake initiation from a key outside the allow-list, a replayed initiation and data
//! for an unknown session are dropped without a reply. The one exception is WireGuard's
//! cookie reply, sent only while the node is under a handshake flood and only to a
//! sender whose packet carries a valid MAC1, that is, one that knows this node's public
//! key (docs/NETWORK.md).
//!
//! Decrypted packets must be IPv6 from the sending peer's overlay address to ours;
//! anything else is dropped. They feed one smoltcp interface; its TCP sockets are the
//! connections [`WgTransport`](transport::WgTransport) hands to libp2p. [`authenticated`]
//! names each connection's peer by its tunnel and multiplexes it with yamux; no noise
//! handshake runs inside the tunnel.

mod transport;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult, errors::WireGuardError};
use boringtun::x25519;
use libp2p::PeerId;
use libp2p::core::transport::ListenerId;
use pyralog_crypto::HashDomain;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use zeroize::Zeroizing;

use crate::P2pError;

pub(crate) use transport::parse_addr;
pub use transport::{WgStream, WgTransport, authenticated};

/// The TCP port libp2p listens on inside the overlay (every node uses the same one: the
/// overlay address already names the node).
pub const OVERLAY_PORT: u16 = 26656;

/// The /48 prefix of overlay addresses: `fd` then the bytes of "pyral".
const ULA_PREFIX: [u8; 6] = [0xfd, 0x70, 0x79, 0x72, 0x61, 0x6c];

/// WireGuard adds 32 bytes to each IP packet (header, counter, tag).
const WG_OVERHEAD: usize = 32;
/// Room for a handshake message, the largest non-data datagram.
const MIN_DATAGRAM: usize = 148;
/// Datagrams read per wake-up before the TCP stack runs.
const RECV_BATCH: usize = 256;
/// Most egress passes of the TCP stack per wake-up of the actor.
const EGRESS_ROUNDS: usize = 512;
/// The largest UDP datagram read.
const MAX_DATAGRAM: usize = 65_535;
/// An orphaned connection (its stream dropped) still closing after this is aborted.
const ORPHAN_GRACE: Duration = Duration::from_secs(30);
/// A peer's handshake on a session younger than this is a crossing first handshake, not
/// a restart (see `State::datagram`).
const RESTART_MIN_AGE: Duration = Duration::from_secs(3);
/// boringtun's own rekey interval (REKEY_AFTER_TIME).
const BORINGTUN_REKEY: Duration = Duration::from_secs(120);
/// WireGuard resends an unanswered handshake initiation after this (REKEY_TIMEOUT).
const HANDSHAKE_RETRY: Duration = Duration::from_secs(5);
/// An initiation this soon after our unconfirmed response may be the peer's resend
/// (two retries and their jitter).
const RESEND_WINDOW: Duration = Duration::from_secs(12);
/// boringtun starts a new handshake after sending without an answer for this long
/// (KEEPALIVE_TIMEOUT + REKEY_TIMEOUT).
const RETRY_AFTER_SILENCE: Duration = Duration::from_secs(15);
/// Most half-open inbound connections kept (a peer that never completes its connects
/// cannot grow the socket set).
const MAX_PENDING: usize = 64;
/// How long new connections from a peer wait for the probe of its older connections.
const PROBE_WINDOW: Duration = Duration::from_millis(300);
/// Smallest and largest accepted MTU (IPv6 minimum; jumbo frames).
const MTU_RANGE: std::ops::RangeInclusive<usize> = 1280..=9000;

/// Configuration of the WireGuard overlay.
#[derive(Clone, Debug)]
pub struct WgConfig {
    /// The ed25519 node public keys allowed to talk to this node. A key outside this
    /// list never completes a handshake; this node's own key is ignored.
    pub allowed: Vec<[u8; 32]>,
    /// Optional pre-shared key of the network (WireGuard's PSK slot): peers with another
    /// PSK cannot complete a handshake.
    pub psk: Option<[u8; 32]>,
    /// Largest IP packet carried in a tunnel (WireGuard's interface MTU). 1420 fits an
    /// Ethernet path over IPv4 or IPv6; 1280 is always safe.
    pub mtu: usize,
    /// Send a keepalive after this many idle seconds (keeps NAT mappings open), or never.
    pub persistent_keepalive: Option<u16>,
    /// Start a new handshake when the session is this old (WireGuard: 120 s).
    pub rekey_after: Duration,
    /// Close every connection of a peer from which nothing authenticated arrived for this
    /// long (WireGuard gives up a handshake after 90 s).
    pub expire_after: Duration,
    /// Interval of the WireGuard timers (handshake retries, keepalives, rekeys).
    pub tick: Duration,
    /// Handshake messages per second the node accepts before it asks for cookies.
    pub handshakes_per_sec: u64,
    /// Receive and send buffer of each overlay TCP connection.
    pub tcp_buffer: usize,
    /// Time allowed for an overlay TCP connection to open (handshake included).
    pub connect_timeout: Duration,
}

impl Default for WgConfig {
    fn default() -> Self {
        WgConfig {
            allowed: Vec::new(),
            psk: None,
            mtu: 1420,
            persistent_keepalive: Some(25),
            rekey_after: Duration::from_secs(120),
            expire_after: Duration::from_secs(90),
            tick: Duration::from_millis(250),
            handshakes_per_sec: 50,
            tcp_buffer: 1 << 20,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl WgConfig {
    fn validate(&self) -> Result<(), P2pError> {
        if !MTU_RANGE.contains(&self.mtu) {
            return Err(P2pError::Build(format!(
                "wireguard mtu {} is outside {}..={}",
                self.mtu,
                MTU_RANGE.start(),
                MTU_RANGE.end()
            )));
        }
        if self.tick.is_zero() || self.rekey_after.is_zero() || self.expire_after.is_zero() {
            return Err(P2pError::Build(
                "wireguard timers must be positive".to_string(),
            ));
        }
        if self.tcp_buffer < 4 * self.mtu || self.tcp_buffer > 64 << 20 {
            return Err(P2pError::Build(format!(
                "wireguard tcp_buffer {} must be between 4 MTU and 64 MiB",
                self.tcp_buffer
            )));
        }
        Ok(())
    }
}

/// The overlay IPv6 address of the node whose WireGuard public key is `wg_public`:
/// `fd70:7972:616c:0::/64` (a ULA prefix spelling "pyral") with an interface id of the
/// first 8 bytes of the key's `overlay address` hash.
pub fn overlay_address(wg_public: &[u8; 32]) -> Ipv6Addr {
    let h = HashDomain::OverlayAddress.hash(wg_public);
    let mut a = [0u8; 16];
    a[..6].copy_from_slice(&ULA_PREFIX);
    a[8..].copy_from_slice(&h.as_bytes()[..8]);
    Ipv6Addr::from(a)
}

/// What the overlay knows about one allowed peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's libp2p id.
    pub peer: PeerId,
    /// Its WireGuard public key.
    pub wg_public: [u8; 32],
    /// Its overlay address.
    pub overlay: Ipv6Addr,
    /// The UDP endpoint packets go to (the source of its last authenticated packet).
    pub endpoint: Option<SocketAddr>,
    /// Handshakes completed with it (initial handshake and rekeys).
    pub handshakes: u64,
    /// Time since the last completed handshake.
    pub since_handshake: Option<Duration>,
    /// Bytes of IP packets sent to and received from it.
    pub tx_bytes: usize,
    /// See `tx_bytes`.
    pub rx_bytes: usize,
    /// Open overlay TCP connections with it.
    pub connections: usize,
}

/// Counters of datagrams the overlay dropped without answering, by reason.
#[derive(Debug, Default)]
pub struct DropCounters {
    /// Not a WireGuard message at all.
    pub garbage: AtomicU64,
    /// A handshake from a key outside the allow-list.
    pub unknown_key: AtomicU64,
    /// Failed authentication: bad MAC, replayed initiation or counter, unknown session.
    pub unauthenticated: AtomicU64,
    /// Decrypted, but not an IPv6 packet between the peer's overlay address and ours.
    pub bad_inner: AtomicU64,
    /// Cookie replies sent because the node was under a handshake flood.
    pub cookies_sent: AtomicU64,
}

/// Numbers describing the overlay, for metrics and tests.
#[derive(Clone, Debug, Default)]
pub struct OverlayStats {
    /// One entry per allowed peer.
    pub peers: Vec<PeerStats>,
    /// Datagrams dropped because they were not WireGuard messages.
    pub garbage: u64,
    /// Handshakes dropped because the key is not allowed.
    pub unknown_key: u64,
    /// Datagrams that failed authentication.
    pub unauthenticated: u64,
    /// Decrypted packets with a wrong inner address.
    pub bad_inner: u64,
    /// Cookie replies sent under load.
    pub cookies_sent: u64,
}

struct Peer {
    peer_id: PeerId,
    wg_public: [u8; 32],
    overlay: Ipv6Addr,
    tunn: Box<Tunn>,
    endpoint: Option<SocketAddr>,
    last_rx: Option<Instant>,
    handshakes: u64,
    /// We start rekeys only if our key is the smaller one, so both ends do not race.
    rekeys: bool,
    /// When we last sent a rekey initiation that is not answered yet.
    rekey_sent: Option<Instant>,
    /// The receiver index of the last data packet: a new one means a new session.
    rx_session: Option<u32>,
    /// The session index our last handshake response gave the peer, and when, until
    /// data arrives on it: while set, the peer may not have our response.
    unconfirmed: Option<(u32, Instant)>,
    /// While set, old connections of this peer are being probed (see `probe`).
    probe_until: Option<Instant>,
}

/// A connection a listener accepted, waiting for the transport to take it.
pub(crate) struct Accepted {
    handle: SocketHandle,
    peer: PeerId,
    endpoint: Option<SocketAddr>,
}

pub(crate) struct Listener {
    id: ListenerId,
    /// Sockets in `Listen` (one per connection that may arrive in one poll).
    pending: Vec<SocketHandle>,
    accepted: VecDeque<Accepted>,
    waker: Option<Waker>,
}

/// Packet buffers kept for reuse, so the data path does not allocate per packet.
#[derive(Default)]
struct Pool(RefCell<Vec<Vec<u8>>>);

/// Buffers kept for reuse.
const POOL: usize = 1024;

impl Pool {
    /// A buffer of `len` bytes (contents unspecified).
    fn take(&self, len: usize) -> Vec<u8> {
        let mut v = self.0.borrow_mut().pop().unwrap_or_default();
        v.resize(len, 0);
        v
    }

    fn give(&self, v: Vec<u8>) {
        let mut pool = self.0.borrow_mut();
        if pool.len() < POOL {
            pool.push(v);
        }
    }

    /// Gives back the buffers of sent datagrams.
    fn give_all(&self, sent: &mut Vec<(SocketAddr, Vec<u8>)>) {
        for (_, v) in sent.drain(..) {
            self.give(v);
        }
    }
}

/// The queue device between the tunnels and smoltcp.
struct Queue {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
    pool: Pool,
}

struct RxToken<'a>(Vec<u8>, &'a Pool);
struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>, &'a Pool);

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.0);
        self.1.give(self.0);
        r
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = self.1.take(len);
        let r = f(&mut packet);
        self.0.push_back(packet);
        r
    }
}

impl phy::Device for Queue {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(
        &mut self,
        _: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((
            RxToken(packet, &self.pool),
            TxToken(&mut self.tx, &self.pool),
        ))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken(&mut self.tx, &self.pool))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // WireGuard authenticates every packet; TCP checksums add nothing.
        caps.checksum = ChecksumCapabilities::ignored();
        caps
    }
}

/// Everything behind the overlay's lock.
pub(crate) struct State {
    config: WgConfig,
    started: Instant,
    iface: Interface,
    sockets: SocketSet<'static>,
    device: Queue,
    peers: Vec<Peer>,
    by_key: HashMap<[u8; 32], usize>,
    by_overlay: HashMap<Ipv6Addr, usize>,
    by_peer_id: HashMap<PeerId, usize>,
    /// Open connections and the peer at the other end.
    conns: HashMap<SocketHandle, usize>,
    /// Connections whose stream was dropped, with the time it was.
    orphans: Vec<(SocketHandle, Instant)>,
    listener: Option<Listener>,
    next_port: u16,
    local_addr: SocketAddr,
    static_secret: x25519::StaticSecret,
    static_public: x25519::PublicKey,
    own_overlay: Ipv6Addr,
    rate_limiter: Arc<RateLimiter>,
    /// Datagrams to send once the lock is released.
    outbox: Vec<(SocketAddr, Vec<u8>)>,
}

/// The overlay shared by its actor, the transport and every stream.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes the actor: a stream read or closed, a dial started, or datagrams wait for
    /// the socket.
    wake: Notify,
    drops: DropCounters,
    /// The overlay stopped (the actor died, or the TCP stack panicked in a writing
    /// task): every stream and dial fails.
    dead: std::sync::atomic::AtomicBool,
    udp: UdpSocket,
    /// UDP segmentation offload is on (until the kernel refuses it once).
    gso: AtomicBool,
    /// Datagrams the socket could not take yet. Every send goes through it, and it is
    /// locked before the state lock is released, so datagrams leave in the order the
    /// TCP stack made them, whichever task sends them.
    backlog: Mutex<Backlog>,
    /// The backlog is not empty (read without its lock, to skip it when there is
    /// nothing to send).
    backlogged: AtomicBool,
    /// When the actor next runs the TCP stack's timers, on `State::now`'s clock (µs).
    actor_wakes_at: AtomicU64,
}

impl Shared {
    /// Fails when the actor is gone.
    pub(crate) fn alive(&self) -> std::io::Result<()> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the WireGuard overlay stopped",
            ));
        }
        Ok(())
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves smoltcp consistent enough to go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the TCP stack and sends what it produced, in the caller's task: a stream
    /// that wrote sends its own segments, as a kernel's `send` does, instead of waking
    /// the actor for every write. The actor is woken only if the datagrams must wait
    /// for the socket, or if the stack now needs its timers sooner than the actor
    /// planned (a retransmission timer the write started).
    pub(crate) fn egress(&self, mut st: MutexGuard<'_, State>) {
        // A panic in the TCP stack stops the overlay here as it does in the actor.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| st.poll()));
        if polled.is_err() {
            tracing::error!(
                "the WireGuard overlay stopped: p2p connections fail until the node restarts"
            );
            self.dead.store(true, Ordering::SeqCst);
            st.abort_all();
            return;
        }
        let next = st.poll_at();
        let sooner = next < self.actor_wakes_at.load(Ordering::Relaxed);
        if self.send_outbox(st) || sooner {
            self.wake.notify_one();
        }
    }

    /// Sends the state's outbox, after the backlog, once the state lock is released,
    /// without waiting for the socket. True if datagrams are left in the backlog
    /// because the socket's buffer is full.
    fn send_outbox(&self, mut st: MutexGuard<'_, State>) -> bool {
        if st.outbox.is_empty() && !self.backlogged.load(Ordering::Relaxed) {
            return false;
        }
        let mut batch = std::mem::take(&mut st.outbox);
        let mut backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        drop(st);
        backlog.send(&mut batch, |d| try_send_all(&self.udp, d, &self.gso));
        let left = !backlog.0.is_empty();
        self.backlogged.store(left, Ordering::Relaxed);
        drop(backlog);
        let mut st = self.lock();
        st.device.pool.give_all(&mut batch);
        if st.outbox.is_empty() {
            // Keep the allocation for the next batch.
            st.outbox = batch;
        }
        left
    }
}

/// Datagrams the socket could not take yet, oldest first.
#[derive(Default)]
struct Backlog(Vec<(SocketAddr, Vec<u8>)>);

impl Backlog {
    /// Sends the backlog and then `batch`, in order, with `send` (which returns how
    /// many of the datagrams it was given left). Keeps what was not sent; leaves the
    /// sent datagrams in `batch`, whose buffers can be reused.
    fn send(
        &mut self,
        batch: &mut Vec<(SocketAddr, Vec<u8>)>,
        mut send: impl FnMut(&[(SocketAddr, Vec<u8>)]) -> usize,
    ) {
        if self.0.is_empty() {
            let sent = send(batch);
            self.0.extend(batch.drain(sent..));
        } else {
            self.0.append(batch);
            let sent = send(&self.0);
            batch.extend(self.0.drain(..sent));
        }
    }
}

/// A handle on a running overlay: build its libp2p transport, read its statistics.
#[derive(Clone)]
pub struct Overlay {
    shared: Arc<Shared>,
}

impl Overlay {
    /// Binds the UDP socket at `bind` and starts the overlay actor for the node key
    /// `seed`. Must be called inside a tokio runtime.
    pub async fn bind(
        seed: &[u8; 32],
        bind: SocketAddr,
        config: WgConfig,
    ) -> Result<Overlay, P2pError> {
        config.validate()?;
        let node_key = pyralog_crypto::Keypair::from_seed(seed);
        let static_secret = x25519::StaticSecret::from(*Zeroizing::new(*node_key.x25519_secret()));
        let static_public = x25519::PublicKey::from(&static_secret);
        let own = node_key.public().to_bytes();
        let own_overlay = overlay_address(static_public.as_bytes());

        let (socket, local_addr) = bind_udp(bind)?;

        // Each handshake message is counted twice: once before the Diffie-Hellman work
        // (`handshake_allowed`), once inside `Tunn::decapsulate`.
        let rate_limiter = Arc::new(RateLimiter::new(
            &static_public,
            config.handshakes_per_sec.saturating_mul(2),
        ));
        let mut peers = Vec::new();
        let mut by_key = HashMap::new();
        let mut by_overlay = HashMap::new();
        let mut by_peer_id = HashMap::new();
        for public in &config.allowed {
            if *public == own {
                continue;
            }
            let ed = pyralog_crypto::PublicKey::from_bytes(public)
                .map_err(|e| P2pError::Key(format!("allowed peer key: {e}")))?;
            let wg_public = ed.x25519_public();
            if by_key.contains_key(&wg_public) {
                continue;
            }
            let overlay = overlay_address(&wg_public);
            if overlay == own_overlay || by_overlay.contains_key(&overlay) {
                return Err(P2pError::Build(format!(
                    "two allowed keys share the overlay address {overlay}"
                )));
            }
            let index = u32::try_from(peers.len())
                .ok()
                .filter(|i| *i < 1 << 24)
                .ok_or_else(|| P2pError::Build("too many allowed peers".into()))?;
            let tunn = Tunn::new(
                static_secret.clone(),
                x25519::PublicKey::from(wg_public),
                config.psk,
                config.persistent_keepalive,
                index,
                Some(rate_limiter.clone()),
            );
            let peer_id = crate::peer_id_from_public(public)?;
            by_key.insert(wg_public, peers.len());
            by_overlay.insert(overlay, peers.len());
            by_peer_id.insert(peer_id, peers.len());
            peers.push(Peer {
                peer_id,
                wg_public,
                overlay,
                tunn: Box::new(tunn),
                endpoint: None,
                last_rx: None,
                handshakes: 0,
                rekeys: static_public.as_bytes() < &wg_public,
                rekey_sent: None,
                rx_session: None,
                unconfirmed: None,
                probe_until: None,
            });
        }

        let mut device = Queue {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu: config.mtu,
            pool: Pool::default(),
        };
        let seed_word = u64::from_le_bytes(
            HashDomain::OverlayAddress
                .hash(&[own.as_slice(), &now_nanos().to_le_bytes()].concat())
                .as_bytes()[..8]
                .try_into()
                .unwrap_or_default(),
        );
        let started = Instant::now();
        let mut iface_config = IfaceConfig::new(HardwareAddress::Ip);
        iface_config.random_seed = seed_word;
        let mut iface = Interface::new(iface_config, &mut device, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            // Every overlay address is in this /64, so all peers are on-link.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(own_overlay), 64));
        });

        let state = State {
            config,
            started,
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
            peers,
            by_key,
            by_overlay,
            by_peer_id,
            conns: HashMap::new(),
            orphans: Vec::new(),
            listener: None,
            next_port: 49152 + (seed_word % 16384) as u16,
            local_addr,
            static_secret,
            static_public,
            own_overlay,
            rate_limiter,
            outbox: Vec::new(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake: Notify::new(),
            drops: DropCounters::default(),
            dead: Default::default(),
            udp: socket,
            gso: AtomicBool::new(cfg!(target_os = "linux")),
            backlog: Mutex::default(),
            backlogged: AtomicBool::new(false),
            actor_wakes_at: AtomicU64::new(0),
        });
        let actor = tokio::spawn(run(shared.clone()));
        let watched = Arc::downgrade(&shared);
        tokio::spawn(async move {
            if let Err(e) = actor.await {
                tracing::error!(error = %e, "the WireGuard overlay stopped: p2p connections fail until the node restarts");
                if let Some(shared) = watched.upgrade() {
                    shared.dead.store(true, Ordering::SeqCst);
                    shared.lock().abort_all();
                }
            }
        });
        Ok(Overlay { shared })
    }

    /// The UDP address the overlay is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.lock().local_addr
    }

    /// The libp2p transport carried by this overlay.
    pub fn transport(&self) -> WgTransport {
        WgTransport::new(self.shared.clone())
    }

    /// Statistics of every allowed peer and of dropped datagrams.
    pub fn stats(&self) -> OverlayStats {
        let st = self.shared.lock();
        let mut connections: HashMap<usize, usize> = HashMap::new();
        for p in st.conns.values() {
            *connections.entry(*p).or_default() += 1;
        }
        let peers = st
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (since, tx, rx, _, _) = p.tunn.stats();
                PeerStats {
                    peer: p.peer_id,
                    wg_public: p.wg_public,
                    overlay: p.overlay,
                    endpoint: p.endpoint,
                    handshakes: p.handshakes,
                    since_handshake: since,
                    tx_bytes: tx,
                    rx_bytes: rx,
                    connections: connections.get(&i).copied().unwrap_or(0),
                }
            })
            .collect();
        let d = &self.shared.drops;
        OverlayStats {
            peers,
            garbage: d.garbage.load(Ordering::Relaxed),
            unknown_key: d.unknown_key.load(Ordering::Relaxed),
            unauthenticated: d.unauthenticated.load(Ordering::Relaxed),
            bad_inner: d.bad_inner.load(Ordering::Relaxed),
            cookies_sent: d.cookies_sent.load(Ordering::Relaxed),
        }
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// A UDP socket with large kernel buffers (a TCP window's worth of datagrams can arrive
/// between two reads), and the address it is bound to.
fn bind_udp(addr: SocketAddr) -> Result<(UdpSocket, SocketAddr), P2pError> {
    let listen_err = |e: std::io::Error| P2pError::Listen {
        addr: crate::udp_multiaddr(addr),
        reason: e.to_string(),
    };
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(listen_err)?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true).map_err(listen_err)?;
    socket.bind(&addr.into()).map_err(listen_err)?;
    let socket = UdpSocket::from_std(socket.into()).map_err(listen_err)?;
    let local = socket.local_addr().map_err(listen_err)?;
    Ok((socket, local))
}

impl State {
    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.started.elapsed().as_micros() as i64)
    }

    /// When the TCP stack next needs a poll (its timers), in µs on `now`'s clock;
    /// `u64::MAX` if it needs none.
    fn poll_at(&mut self) -> u64 {
        let now = self.now();
        let State { iface, sockets, .. } = self;
        iface
            .poll_at(now, sockets)
            .map_or(u64::MAX, |t| t.total_micros().max(0) as u64)
    }

    /// `connect_timeout` in smoltcp's units.
    fn connect_timeout(&self) -> smoltcp::time::Duration {
        smoltcp::time::Duration::from_millis(self.config.connect_timeout.as_millis() as u64)
    }

    fn new_tcp_socket(&self) -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; self.config.tcp_buffer]),
            tcp::SocketBuffer::new(vec![0; self.config.tcp_buffer]),
        );
        s.set_congestion_control(tcp::CongestionControl::Cubic);
        s.set_nagle_enabled(false);
        s
    }

    /// Starts an overlay TCP connection to `peer`; its first packets go to `endpoint`
    /// unless the peer was heard from recently at another one.
    pub(crate) fn connect(
        &mut self,
        peer: &PeerId,
        endpoint: SocketAddr,
    ) -> Result<SocketHandle, std::io::Error> {
        let index = *self.by_peer_id.get(peer).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("peer {peer} is not in the WireGuard allow-list"),
            )
        })?;
        let recently = self.config.expire_after;
        let p = &mut self.peers[index];
        if p.last_rx.is_none_or(|t| t.elapsed() > recently) {
            p.endpoint = Some(endpoint);
            // A new attempt: the expiry clock restarts with the peer's answer (or the
            // connect timeout ends it), instead of killing this dial at the next tick.
            p.last_rx = None;
        }
        let remote = (IpAddress::Ipv6(p.overlay), OVERLAY_PORT);
        let mut socket = self.new_tcp_socket();
        socket.set_timeout(Some(self.connect_timeout()));
        let port = self.next_local_port();
        socket
            .connect(self.iface.context(), remote, port)
            .map_err(|e| std::io::Error::other(format!("overlay connect: {e}")))?;
        let handle = self.sockets.add(socket);
        self.conns.insert(handle, index);
        Ok(handle)
    }

    fn next_local_port(&mut self) -> u16 {
        let in_use: std::collections::HashSet<u16> = self
            .conns
            .keys()
            .filter_map(|h| self.sockets.get::<tcp::Socket>(*h).local_endpoint())
            .map(|e| e.port)
            .collect();
        loop {
            let port = self.next_port;
            self.next_port = if self.next_port == u16::MAX {
                49152
            } else {
                self.next_port + 1
            };
            if !in_use.contains(&port) {
                return port;
            }
        }
    }

    pub(crate) fn socket(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// The stream of `handle` was dropped: close it and forget it once closed.
    pub(crate) fn orphan(&mut self, handle: SocketHandle) {
        self.socket(handle).close();
        self.orphans.push((handle, Instant::now()));
    }

    pub(crate) fn listen(&mut self, id: ListenerId) -> bool {
        if self.listener.is_some() {
            return false;
        }
        self.listener = Some(Listener {
            id,
            pending: Vec::new(),
            accepted: VecDeque::new(),
            waker: None,
        });
        self.refill_listeners();
        true
    }

    pub(crate) fn unlisten(&mut self, id: ListenerId) -> bool {
        match &self.listener {
            Some(l) if l.id == id => {}
            _ => return false,
        }
        if let Some(l) = self.listener.take() {
            for h in l.pending {
                self.sockets.remove(h);
            }
            for a in l.accepted {
                self.socket(a.handle).abort();
                self.orphans.push((a.handle, Instant::now()));
            }
        }
        true
    }

    pub(crate) fn listener_mut(&mut self) -> Option<&mut Listener> {
        self.listener.as_mut()
    }

    fn refill_listeners(&mut self) {
        // Connections that may arrive in one poll (one per listening socket).
        const LISTENING: usize = 16;
        let Some(missing) = self.listener.as_ref().map(|l| {
            let listening = l
                .pending
                .iter()
                .filter(|h| self.sockets.get::<tcp::Socket>(**h).state() == tcp::State::Listen)
                .count();
            LISTENING
                .saturating_sub(listening)
                .min(MAX_PENDING.saturating_sub(l.pending.len()))
        }) else {
            return;
        };
        for _ in 0..missing {
            let mut s = self.new_tcp_socket();
            if s.listen(OVERLAY_PORT).is_err() {
                return;
            }
            // A connection that never completes is dropped (smoltcp would resend its
            // SYN-ACK forever).
            s.set_timeout(Some(self.connect_timeout()));
            let h = self.sockets.add(s);
            if let Some(l) = self.listener.as_mut() {
                l.pending.push(h);
            }
        }
    }

    /// Moves listening sockets that got a connection to the accepted queue.
    fn check_listeners(&mut self) {
        let Some(mut l) = self.listener.take() else {
            return;
        };
        let mut still = Vec::with_capacity(l.pending.len());
        let mut woke = false;
        for h in l.pending.drain(..) {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            match s.state() {
                tcp::State::Listen | tcp::State::SynReceived => still.push(h),
                tcp::State::Established => {
                    let peer = s.remote_endpoint().and_then(|e| match e.addr {
                        IpAddress::Ipv6(a) => self.by_overlay.get(&a).copied(),
                    });
                    match peer {
                        Some(index) if self.held_back(index) => still.push(h),
                        Some(index) => {
                            let s = self.sockets.get_mut::<tcp::Socket>(h);
                            s.set_timeout(None);
                            self.conns.insert(h, index);
                            let p = &self.peers[index];
                            l.accepted.push_back(Accepted {
                                handle: h,
                                peer: p.peer_id,
                                endpoint: p.endpoint,
                            });
                            woke = true;
                        }
                        None => {
                            self.socket(h).abort();
                            self.orphans.push((h, Instant::now()));
                        }
                    }
                }
                _ => {
                    // Reset or closed before it was accepted.
                    self.sockets.remove(h);
                }
            }
        }
        l.pending = still;
        if woke && let Some(w) = l.waker.take() {
            w.wake();
        }
        self.listener = Some(l);
        self.refill_listeners();
    }

    /// A new session with a peer while older connections exist may mean the peer
    /// restarted, and its new stack does not know those connections. Each gets a TCP
    /// keepalive probe now: a restarted peer answers with a reset and the connection
    /// closes at once (a real kernel would have reset it when the process died). Until
    /// then, or [`PROBE_WINDOW`], new connections from the peer wait, so libp2p sees the
    /// old connection close before the new one opens (gossipsub, for one, announces its
    /// subscriptions only on a peer's first connection).
    ///
    /// smoltcp sends the probe only on an idle connection: one with data in flight to
    /// the dead process waits for its next retransmission, which may come after the new
    /// connection opened. The p2p task reconnects a peer left without topics that way
    /// (`Actor::reconnect_peers_without_topics`).
    fn probe(&mut self, index: usize) {
        let mut any = false;
        for (h, p) in &self.conns {
            if *p == index {
                let s = self.sockets.get_mut::<tcp::Socket>(*h);
                if s.state() == tcp::State::Established {
                    s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(3600)));
                    any = true;
                }
            }
        }
        if any {
            self.peers[index].probe_until = Some(Instant::now() + PROBE_WINDOW);
        }
    }

    /// Whether a new connection from peer `index` waits for a probe (see `probe`).
    fn held_back(&self, index: usize) -> bool {
        self.peers[index]
            .probe_until
            .is_some_and(|t| Instant::now() < t)
            && self.conns.iter().any(|(h, p)| {
                *p == index && self.sockets.get::<tcp::Socket>(*h).state() != tcp::State::Closed
            })
    }

    /// Ends probe windows: probes are one-off.
    fn end_probes(&mut self) {
        let now = Instant::now();
        for index in 0..self.peers.len() {
            if self.peers[index].probe_until.is_some_and(|t| now >= t) {
                self.peers[index].probe_until = None;
                for (h, p) in &self.conns {
                    if *p == index {
                        self.sockets.get_mut::<tcp::Socket>(*h).set_keep_alive(None);
                    }
                }
            }
        }
    }

    fn collect_orphans(&mut self) {
        let mut keep = Vec::with_capacity(self.orphans.len());
        for (h, since) in std::mem::take(&mut self.orphans) {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            match s.state() {
                tcp::State::Closed | tcp::State::TimeWait => {
                    self.sockets.remove(h);
                    self.conns.remove(&h);
                }
                _ => {
                    if since.elapsed() > ORPHAN_GRACE {
                        s.abort();
                    }
                    keep.push((h, since));
                }
            }
        }
        self.orphans = keep;
    }

    /// Aborts every connection and wakes their streams.
    fn abort_all(&mut self) {
        for h in self.conns.keys() {
            self.sockets.get_mut::<tcp::Socket>(*h).abort();
        }
        if let Some(w) = self.listener.as_mut().and_then(|l| l.waker.take()) {
            w.wake();
        }
    }

    /// Aborts every connection with peer `index` (its session expired).
    fn tear_down(&mut self, index: usize, why: &str) {
        let handles: Vec<SocketHandle> = self
            .conns
            .iter()
            .filter(|(h, p)| **p == index && self.sockets.get::<tcp::Socket>(**h).is_open())
            .map(|(h, _)| *h)
            .collect();
        if handles.is_empty() {
            return;
        }
        tracing::info!(peer = %self.peers[index].peer_id, why, connections = handles.len(), "closing overlay connections");
        for h in handles {
            self.sockets.get_mut::<tcp::Socket>(h).abort();
        }
    }

    /// Handles one datagram from `src`.
    fn datagram(&mut self, drops: &DropCounters, src: SocketAddr, datagram: &[u8], buf: &mut [u8]) {
        let packet = match Tunn::parse_incoming_packet(datagram) {
            Ok(p) => p,
            Err(_) => {
                drops.garbage.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let index = match &packet {
            Packet::HandshakeInit(init) => {
                if !self.handshake_allowed(drops, src, datagram, buf) {
                    return;
                }
                match parse_handshake_anon(&self.static_secret, &self.static_public, init) {
                    Ok(half) => match self.by_key.get(&half.peer_static_public) {
                        Some(i) => *i,
                        None => {
                            drops.unknown_key.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    },
                    Err(_) => {
                        drops.unauthenticated.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            Packet::HandshakeResponse(r) => {
                if !self.handshake_allowed(drops, src, datagram, buf) {
                    return;
                }
                (r.receiver_idx >> 8) as usize
            }
            Packet::PacketCookieReply(c) => (c.receiver_idx >> 8) as usize,
            Packet::PacketData(d) => (d.receiver_idx >> 8) as usize,
        };
        let data_session = match &packet {
            Packet::PacketData(d) => Some(d.receiver_idx),
            _ => None,
        };
        let is_data = data_session.is_some();
        // boringtun rekeys on its own at 120 s, whatever `rekey_after` says.
        let rekey = self.config.rekey_after.min(BORINGTUN_REKEY);
        let restart_before = rekey - rekey / 10;
        let Some(peer) = self.peers.get_mut(index) else {
            drops.unauthenticated.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // The peer starts a handshake although our session with it is younger than any
        // rekey would be, and older than a crossing first handshake: it lost its state,
        // that is, it restarted. Its new TCP stack knows none of our connections.
        // A peer also re-handshakes after 15 s of sending without hearing from us (a
        // network outage), so only a peer we heard from within that time counts. And a
        // peer resends its initiation when our response was lost: it has not used the
        // session our last response made yet, and that response is recent.
        let resend = peer
            .unconfirmed
            .is_some_and(|(_, at)| at.elapsed() < RESEND_WINDOW);
        let restarted = matches!(packet, Packet::HandshakeInit(_))
            && !resend
            && peer
                .tunn
                .stats()
                .0
                .is_some_and(|age| (RESTART_MIN_AGE..restart_before).contains(&age))
            && peer
                .last_rx
                .is_some_and(|t| t.elapsed() < RETRY_AFTER_SILENCE);
        let mut accepted_handshake = false;
        let mut authenticated = false;
        let mut first = true;
        // A data packet decrypts straight into a buffer that goes to the TCP stack.
        let mut inner_buf = if is_data {
            self.device.pool.take(datagram.len())
        } else {
            Vec::new()
        };
        let mut deliver = None;
        loop {
            let input: &[u8] = if first { datagram } else { &[] };
            let dst: &mut [u8] = if first && is_data {
                &mut inner_buf
            } else {
                buf
            };
            let r = peer.tunn.decapsulate(Some(src.ip()), input, dst);
            match r {
                TunnResult::Done => {
                    authenticated |= first && is_data;
                    break;
                }
                TunnResult::Err(e) => {
                    if first {
                        tracing::trace!(%src, error = ?e, "datagram dropped");
                        drops.unauthenticated.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                TunnResult::WriteToNetwork(out) => {
                    if is_cookie_reply(out) {
                        drops.cookies_sent.fetch_add(1, Ordering::Relaxed);
                        self.outbox.push((src, out.to_vec()));
                        break;
                    }
                    if first && !is_data {
                        // A handshake message was accepted.
                        peer.handshakes += 1;
                        accepted_handshake = true;
                        if let Some(index) = response_sender(out) {
                            peer.unconfirmed = Some((index, Instant::now()));
                        }
                    }
                    authenticated = true;
                    // Queued packets go to where the peer is now.
                    self.outbox.push((src, out.to_vec()));
                }
                TunnResult::WriteToTunnelV6(inner, inner_src) => {
                    authenticated = true;
                    if IpAddr::V6(peer.overlay) == inner_src
                        && Tunn::dst_address(inner) == Some(IpAddr::V6(self.own_overlay))
                    {
                        deliver = Some(inner.len());
                    } else {
                        drops.bad_inner.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                TunnResult::WriteToTunnelV4(..) => {
                    authenticated = true;
                    drops.bad_inner.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            first = false;
        }
        if restarted && accepted_handshake {
            self.tear_down(index, "the peer restarted (a handshake on a young session)");
        }
        match deliver {
            Some(len) if first => {
                inner_buf.truncate(len);
                self.device.rx.push_back(inner_buf);
            }
            _ => self.device.pool.give(inner_buf),
        }
        if authenticated {
            let peer = &mut self.peers[index];
            if peer.endpoint != Some(src) {
                tracing::debug!(peer = %peer.peer_id, %src, "peer endpoint changed");
            }
            peer.endpoint = Some(src);
            peer.last_rx = Some(Instant::now());
            if let Some(session) = data_session {
                if peer.unconfirmed.is_some_and(|(i, _)| i == session) {
                    peer.unconfirmed = None;
                }
                let previous = peer.rx_session.replace(session);
                if previous.is_some_and(|p| p != session) {
                    self.probe(index);
                }
            }
        }
    }

    /// MAC1 and, under a flood, the cookie (MAC2) of a handshake message, before any
    /// Diffie-Hellman work is spent on it.
    fn handshake_allowed(
        &mut self,
        drops: &DropCounters,
        src: SocketAddr,
        datagram: &[u8],
        buf: &mut [u8],
    ) -> bool {
        match self
            .rate_limiter
            .verify_packet(Some(src.ip()), datagram, buf)
        {
            Ok(_) => true,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                drops.cookies_sent.fetch_add(1, Ordering::Relaxed);
                self.outbox.push((src, cookie.to_vec()));
                false
            }
            Err(_) => {
                drops.unauthenticated.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Runs the TCP stack, then encrypts what it sent.
    fn poll(&mut self) {
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        // One egress pass sends at most one segment per socket: go on while the windows
        // allow, so a burst leaves in one wake-up of the actor.
        for _ in 0..EGRESS_ROUNDS {
            let before = self.device.tx.len();
            self.iface
                .poll_egress(now, &mut self.device, &mut self.sockets);
            if self.device.tx.len() == before {
                break;
            }
        }
        self.check_listeners();
        self.collect_orphans();
        while let Some(packet) = self.device.tx.pop_front() {
            let index = match Tunn::dst_address(&packet) {
                Some(IpAddr::V6(a)) => self.by_overlay.get(&a).copied(),
                _ => None,
            };
            let Some(index) = index else {
                self.device.pool.give(packet);
                continue;
            };
            let peer = &mut self.peers[index];
            let mut out = self
                .device
                .pool
                .take((packet.len() + WG_OVERHEAD).max(MIN_DATAGRAM));
            let sent = match peer.tunn.encapsulate(&packet, &mut out) {
                TunnResult::WriteToNetwork(d) => Some(d.len()),
                TunnResult::Err(e) => {
                    tracing::debug!(peer = %peer.peer_id, error = ?e, "encapsulate failed");
                    None
                }
                _ => None,
            };
            match (sent, peer.endpoint) {
                (Some(len), Some(ep)) => {
                    out.truncate(len);
                    self.outbox.push((ep, out));
                }
                _ => self.device.pool.give(out),
            }
            self.device.pool.give(packet);
        }
    }

    /// WireGuard timers of every peer: retries, keepalives, rekeys, expiry.
    fn timers(&mut self, buf: &mut [u8]) {
        self.rate_limiter.reset_count();
        self.end_probes();
        let rekey_after = self.config.rekey_after;
        // Shortened with the rekey interval (tests); at WireGuard's interval boringtun
        // resends on its own.
        let retry = (rekey_after / 4).max(self.config.tick).min(HANDSHAKE_RETRY);
        let expire_after = self.config.expire_after;
        let mut expired = Vec::new();
        for (i, peer) in self.peers.iter_mut().enumerate() {
            match peer.tunn.update_timers(buf) {
                TunnResult::WriteToNetwork(out) => {
                    if let Some(ep) = peer.endpoint {
                        self.outbox.push((ep, out.to_vec()));
                    }
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => {
                    expired.push((i, "session expired"))
                }
                _ => {}
            }
            let (since, ..) = peer.tunn.stats();
            if !(peer.rekeys && since.is_some_and(|s| s >= rekey_after)) {
                peer.rekey_sent = None;
            } else if peer
                .rekey_sent
                .is_none_or(|t| retry < HANDSHAKE_RETRY && t.elapsed() >= retry)
            {
                // An initiation or its response can be lost (a peer roaming away from
                // the endpoint it was sent to): resend a fresh one, as WireGuard does.
                let resend = peer.rekey_sent.is_some();
                if let TunnResult::WriteToNetwork(out) =
                    peer.tunn.format_handshake_initiation(buf, resend)
                    && let Some(ep) = peer.endpoint
                {
                    self.outbox.push((ep, out.to_vec()));
                }
                peer.rekey_sent = Some(Instant::now());
            }
            if peer.last_rx.is_some_and(|t| t.elapsed() > expire_after) {
                expired.push((i, "nothing authenticated received"));
            }
        }
        for (i, why) in expired {
            self.tear_down(i, why);
        }
    }
}

fn is_cookie_reply(packet: &[u8]) -> bool {
    packet.len() == 64 && packet[..4] == 3u32.to_le_bytes()
}

/// The sender index of a handshake response (the session the peer will send data to).
fn response_sender(packet: &[u8]) -> Option<u32> {
    if packet.len() != 92 || packet[..4] != 2u32.to_le_bytes() {
        return None;
    }
    Some(u32::from_le_bytes(packet[4..8].try_into().ok()?))
}

/// The overlay actor: reads datagrams, runs the TCP stack and the timers, sends
/// datagrams. Stops when nothing else holds the overlay.
async fn run(shared: Arc<Shared>) {
    let (mtu, tick) = {
        let st = shared.lock();
        (st.config.mtu, st.config.tick)
    };
    let udp = &shared.udp;
    let mut buf = vec![0u8; (mtu + WG_OVERHEAD).max(MIN_DATAGRAM).max(MAX_DATAGRAM)];
    let mut rx = vec![0u8; MAX_DATAGRAM];
    let mut timers = tokio::time::interval(tick);
    timers.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut delay = Duration::from_millis(1);
    // UDP's receive offload: datagrams of one sender coalesced into one read.
    let gro = enable_gro(udp);
    // Datagrams wait in the backlog for the socket to drain.
    let mut blocked = false;
    loop {
        if shared.dead.load(Ordering::SeqCst) {
            // The TCP stack panicked in a writing task.
            break;
        }
        tokio::select! {
            r = udp.readable() => {
                if r.is_err() {
                    break;
                }
                for _ in 0..RECV_BATCH {
                    match recv(udp, &mut rx, gro) {
                        Ok((n, segment, src)) => {
                            let mut st = shared.lock();
                            // A coalesced read holds datagrams of `segment` bytes (the
                            // last may be shorter).
                            for d in rx[..n].chunks(segment.max(1)) {
                                st.datagram(&shared.drops, src, d, &mut buf);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "udp receive failed");
                            break;
                        }
                    }
                }
            }
            _ = shared.wake.notified() => {}
            r = udp.writable(), if blocked => {
                if r.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep(delay) => {}
            _ = timers.tick() => {
                if Arc::strong_count(&shared) == 1 {
                    break;
                }
                shared.lock().timers(&mut buf);
            }
        }
        blocked = {
            let mut st = shared.lock();
            st.poll();
            let now = st.now().total_micros().max(0) as u64;
            let at = st.poll_at().min(now + tick.as_micros() as u64);
            delay = Duration::from_micros(at.saturating_sub(now));
            shared.actor_wakes_at.store(at, Ordering::Relaxed);
            shared.send_outbox(st)
        };
    }
    // Whatever stopped the actor, nothing will drive the streams any more.
    shared.dead.store(true, Ordering::SeqCst);
    shared.lock().abort_all();
    tracing::debug!("overlay stopped");
}

/// Asks the kernel to coalesce received datagrams (`UDP_GRO`); false where it cannot.
#[cfg(target_os = "linux")]
fn enable_gro(udp: &UdpSocket) -> bool {
    nix::sys::socket::setsockopt(udp, nix::sys::socket::sockopt::UdpGroSegment, &true).is_ok()
}

#[cfg(not(target_os = "linux"))]
fn enable_gro(_: &UdpSocket) -> bool {
    false
}

/// Reads one datagram, or with GRO a run of coalesced ones: (bytes, segment size,
/// sender).
#[cfg(target_os = "linux")]
fn recv(udp: &UdpSocket, rx: &mut [u8], gro: bool) -> std::io::Result<(usize, usize, SocketAddr)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    use std::os::fd::AsRawFd;
    if !gro {
        let (n, src) = udp.try_recv_from(rx)?;
        return Ok((n, n, src));
    }
    let mut cmsg = nix::cmsg_space!(i32);
    udp.try_io(tokio::io::Interest::READABLE, || {
        let mut iov = [std::io::IoSliceMut::new(rx)];
        let msg = recvmsg::<SockaddrStorage>(
            udp.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .map_err(std::io::Error::from)?;
        let n = msg.bytes;
        let mut segment = n;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::UdpGroSegments(s) = c {
                    segment = usize::try_from(s).unwrap_or(n);
                }
            }
        }
        let src = msg
            .address
            .and_then(|a| {
                a.as_sockaddr_in()
                    .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                    .or_else(|| {
                        a.as_sockaddr_in6()
                            .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                    })
            })
            .ok_or_else(|| std::io::Error::other("a datagram without a source address"))?;
        Ok((n, segment, src))
    })
}

#[cfg(not(target_os = "linux"))]
fn recv(udp: &UdpSocket, rx: &mut [u8], _: bool) -> std::io::Result<(usize, usize, SocketAddr)> {
    let (n, src) = udp.try_recv_from(rx)?;
    Ok((n, n, src))
}

/// Most datagrams, and bytes, in one segmentation-offload send.
const GSO_SEGMENTS: usize = 64;
const GSO_BYTES: usize = 64_000;

/// Sends `outbox` in order without waiting for the socket: runs of datagrams to one
/// endpoint, all of one size but the last, go in one `sendmsg` with `UDP_SEGMENT` where
/// the kernel supports it. Returns how many were sent (fewer than all when the socket's
/// buffer is full). A datagram the kernel refuses otherwise is dropped, as a network
/// would drop it (TCP retransmits).
fn try_send_all(udp: &UdpSocket, outbox: &[(SocketAddr, Vec<u8>)], gso: &AtomicBool) -> usize {
    let mut i = 0;
    while i < outbox.len() {
        let (to, first) = &outbox[i];
        let size = first.len();
        let mut j = i + 1;
        let mut bytes = size;
        while gso.load(Ordering::Relaxed)
            && j < outbox.len()
            && j - i < GSO_SEGMENTS
            && outbox[j].0 == *to
            && outbox[j].1.len() <= size
            && bytes + outbox[j].1.len() <= GSO_BYTES
        {
            bytes += outbox[j].1.len();
            j += 1;
            if outbox[j - 1].1.len() < size {
                break;
            }
        }
        let r = if j - i > 1 {
            send_segments(udp, *to, &outbox[i..j], size)
        } else {
            udp.try_send_to(first, *to).map(drop)
        };
        match r {
            Ok(()) => i = j,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return i,
            Err(e) if j - i > 1 => {
                // Not supported here: one by one from now on.
                tracing::debug!(%to, error = %e, "segmentation offload refused: sending datagrams one by one");
                gso.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(%to, error = %e, "udp send failed");
                i = j;
            }
        }
    }
    i
}

/// One `sendmsg` with `UDP_SEGMENT`.
#[cfg(target_os = "linux")]
fn send_segments(
    udp: &UdpSocket,
    to: SocketAddr,
    run: &[(SocketAddr, Vec<u8>)],
    size: usize,
) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
    use std::os::fd::AsRawFd;
    let iov: Vec<std::io::IoSlice<'_>> =
        run.iter().map(|(_, d)| std::io::IoSlice::new(d)).collect();
    let addr = SockaddrStorage::from(to);
    let segment = u16::try_from(size).map_err(std::io::Error::other)?;
    udp.try_io(tokio::io::Interest::WRITABLE, || {
        sendmsg(
            udp.as_raw_fd(),
            &iov,
            &[ControlMessage::UdpGsoSegments(&segment)],
            MsgFlags::empty(),
            Some(&addr),
        )
        .map(drop)
        .map_err(std::io::Error::from)
    })
}

#[cfg(not(target_os = "linux"))]
fn send_segments(
    _: &UdpSocket,
    _: SocketAddr,
    _: &[(SocketAddr, Vec<u8>)],
    _: usize,
) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Datagrams waiting at `socket`, in arrival order.
    async fn received(socket: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        for _ in 0..n {
            let (len, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            got.push(buf[..len].to_vec());
        }
        got
    }

    #[tokio::test]
    async fn an_outbox_leaves_whole_and_in_order_with_or_without_offload() {
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let one = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let two = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = (one.local_addr().unwrap(), two.local_addr().unwrap());
        // Runs of equal sizes to one endpoint (one `sendmsg` each with offload), a
        // shorter datagram that ends a run, a larger one that starts the next, a change
        // of endpoint.
        let sizes = [
            (a, 1200),
            (a, 1200),
            (a, 1200),
            (a, 300),
            (a, 1200),
            (a, 1400),
            (b, 80),
            (a, 1400),
        ];
        let outbox: Vec<(SocketAddr, Vec<u8>)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &(to, len))| (to, (0..len).map(|j| (i * 31 + j) as u8).collect()))
            .collect();
        for offload in [true, false] {
            // Sends never wait: until the reactor has seen the socket writable, nothing
            // leaves (the actor waits for that and sends the rest).
            sender.writable().await.unwrap();
            let gso = AtomicBool::new(offload);
            assert_eq!(try_send_all(&sender, &outbox, &gso), outbox.len());
            let to = |addr| {
                outbox
                    .iter()
                    .filter(|(t, _)| *t == addr)
                    .map(|(_, d)| d.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(received(&one, 7).await, to(a), "offload {offload}");
            assert_eq!(received(&two, 1).await, to(b), "offload {offload}");
        }
    }

    #[test]
    fn the_backlog_goes_first_and_keeps_what_the_socket_refuses() {
        let at: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let batch = |ids: &[u8]| ids.iter().map(|&i| (at, vec![i])).collect::<Vec<_>>();
        let ids = |v: &[(SocketAddr, Vec<u8>)]| v.iter().map(|(_, d)| d[0]).collect::<Vec<_>>();
        let mut backlog = Backlog::default();
        let mut wire = Vec::new();

        // The socket takes two of five: three wait.
        let mut first = batch(&[1, 2, 3, 4, 5]);
        backlog.send(&mut first, |d| {
            wire.extend(ids(&d[..2]));
            2
        });
        assert_eq!(ids(&first), [1, 2], "the sent ones come back for reuse");
        assert_eq!(ids(&backlog.0), [3, 4, 5]);

        // A later batch queues behind them; the socket takes one.
        let mut second = batch(&[6, 7]);
        backlog.send(&mut second, |d| {
            wire.extend(ids(&d[..1]));
            1
        });
        assert_eq!(ids(&second), [3]);
        assert_eq!(ids(&backlog.0), [4, 5, 6, 7]);

        // The socket drained: all of it, in order.
        let mut third = batch(&[8]);
        backlog.send(&mut third, |d| {
            wire.extend(ids(d));
            d.len()
        });
        assert!(backlog.0.is_empty());
        assert_eq!(wire, [1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
