//! Pyralog's peer-to-peer layer: gossip and request-response sync over libp2p.
//!
//! [`spawn`] starts one networking task that owns a libp2p swarm and returns a
//! [`Network`] handle (publish, request, respond, penalise) and a bounded stream of
//! [`Event`]s. The swarm runs these protocols:
//!
//! - **gossipsub** on three topics ([`Topic`]): transactions, consensus messages and
//!   evidence. Payloads are opaque bytes; every consensus message is signed by a
//!   validator key inside, so the transport is never trusted for authenticity. libp2p
//!   does not sign messages a second time: a message names its claimed author, its id
//!   hashes all of it ([`HashDomain::GossipMessage`]), and a bad message is blamed on the
//!   peer that sent it only when that peer claims to be its author. Transaction batches
//!   are relayed only once the node has judged them valid ([`Event::Gossip`],
//!   [`Network::judge`]); other messages as they arrive.
//! - **request-response** (`/pyralog/<network>/sync/1`) for block and certificate sync,
//!   with length-prefixed frames and size limits in both directions.
//! - **identify** and **ping**.
//!
//! Protection against misbehaving peers lives here too: per-message size limits (gossip
//! messages and sync frames), a per-peer rate limit on inbound gossip and requests (a
//! token bucket; messages over it are dropped and cost score), a per-peer score the
//! node lowers with [`Network::penalize`] when a peer sends something invalid as its own
//! (see [`Event::Gossip`]), and a temporary ban (disconnect, refuse reconnection) when
//! the score falls below [`BAN_SCORE`].
//!
//! The transport is chosen by [`TransportKind`]: libp2p over the WireGuard overlay
//! ([`wg`]: userspace WireGuard tunnels keyed by the node keys, silent to every other
//! key), or plain TCP. Over TCP, libp2p authenticates and encrypts with noise; over the
//! overlay, the WireGuard tunnel does both and names the peer ([`wg::authenticated`]).
//! Either way yamux multiplexes on top.

mod codec;
mod limits;
pub mod wg;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, StreamProtocol, Swarm, allow_block_list, gossipsub, identify, identity, noise, ping,
    request_response, tcp, yamux,
};
use pyralog_crypto::HashDomain;
use tokio::sync::{mpsc, oneshot};

pub use libp2p::{Multiaddr as Address, PeerId};

use crate::codec::SyncCodec;
use crate::limits::{PeerLimits, Verdict};

/// A peer whose score falls to this value is disconnected and banned for a while.
pub const BAN_SCORE: i32 = -100;

/// Errors of the p2p layer.
#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    /// The node key could not be turned into a libp2p identity.
    #[error("node key: {0}")]
    Key(String),
    /// The transport or behaviour could not be built.
    #[error("building the network: {0}")]
    Build(String),
    /// Listening on an address failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The networking task has stopped.
    #[error("the networking task has stopped")]
    Stopped,
    /// A request failed (timeout, connection closed, unsupported protocol...).
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer asked.
        peer: PeerId,
        /// Why.
        reason: String,
    },
}

/// Which transport carries libp2p.
#[derive(Clone, Debug, Default)]
pub enum TransportKind {
    /// Plain TCP, authenticated and encrypted with noise, multiplexed with yamux. Listen
    /// and dial addresses are `/ip4/A/tcp/P`.
    #[default]
    Tcp,
    /// The WireGuard overlay ([`wg`]), authenticated and encrypted by its tunnels,
    /// multiplexed with yamux. The one listen address, `/ip4/A/udp/P`, is the WireGuard
    /// UDP socket; dial addresses have the same shape plus `/p2p/<peer id>`.
    WireGuard(wg::WgConfig),
}

/// Configuration of the p2p layer.
#[derive(Clone, Debug)]
pub struct Config {
    /// Names the network: topics and the sync protocol carry it, so two chains on one
    /// machine never mix.
    pub network: String,
    /// The transport.
    pub transport: TransportKind,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start and redial while disconnected.
    pub bootstrap: Vec<Multiaddr>,
    /// Largest gossip message accepted or sent.
    pub max_gossip_bytes: usize,
    /// Largest sync request accepted or sent.
    pub max_request_bytes: usize,
    /// Largest sync response accepted or sent.
    pub max_response_bytes: usize,
    /// Most connected peers; connections over it are closed.
    pub max_peers: usize,
    /// Inbound gossip messages plus requests allowed per peer per second (burst: twice).
    pub peer_messages_per_sec: u32,
    /// How long a banned peer stays banned.
    pub ban: Duration,
    /// Redial interval for bootstrap peers that are not connected.
    pub redial: Duration,
    /// Timeout of one sync request.
    pub request_timeout: Duration,
    /// How often each connection is pinged.
    pub ping_interval: Duration,
    /// How long a ping may go unanswered. A connection whose pings fail twice in a row
    /// is closed (libp2p's ping reports only the second failure, and closes nothing
    /// itself): over the WireGuard overlay nothing resets the connections of a peer
    /// that died, and until the overlay's expiry (90 s without a packet from it) the
    /// peer stayed counted. With 5 s and 15 s it goes after about 30 to 35 s (the
    /// second failure is the new ping stream's negotiation timing out, after 10 s).
    pub ping_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            network: "pyralog".into(),
            transport: TransportKind::Tcp,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            max_gossip_bytes: 4 << 20,
            max_request_bytes: 64 << 10,
            max_response_bytes: 32 << 20,
            max_peers: 64,
            peer_messages_per_sec: 2000,
            ban: Duration::from_secs(60),
            redial: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(15),
        }
    }
}

/// A gossip topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Batches of signed transactions.
    Txs,
    /// Consensus engine messages.
    Consensus,
    /// Evidence of validator misbehaviour.
    Evidence,
}

impl Topic {
    const ALL: [Topic; 3] = [Topic::Txs, Topic::Consensus, Topic::Evidence];

    fn name(self, network: &str) -> String {
        let t = match self {
            Topic::Txs => "txs",
            Topic::Consensus => "consensus",
            Topic::Evidence => "evidence",
        };
        format!("/pyralog/{network}/{t}/1")
    }
}

/// Identifies an inbound request until it is answered with [`Network::respond`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InboundId(u64);

/// Something the network observed.
#[derive(Debug)]
pub enum Event {
    /// A gossip message, relayed by `from`.
    Gossip {
        /// The peer that sent it to this node (not necessarily its author). The transport
        /// authenticates it.
        from: PeerId,
        /// `from`, when `from` also claims to be the message's author: it published the
        /// message itself, so a bad message is its fault. Gossip is not signed (every
        /// payload carries its authors' own signatures), so the claimed author of a
        /// relayed message is unverified, and an honest relay is never blamed for it.
        publisher: Option<PeerId>,
        /// Its topic.
        topic: Topic,
        /// The payload.
        data: Vec<u8>,
        /// For a transaction batch: it waits for the node's verdict, to be given with
        /// [`Network::judge`], before it is relayed to other peers. A batch is relayed
        /// only once the node found it valid, and no sooner than 10 ms after it arrived,
        /// by which time the peers that already have it (from its publisher) have said
        /// so. `None` for other topics: they are relayed as they arrive, since a proposal
        /// or a vote must not wait.
        held: Option<Held>,
    },
    /// A sync request; answer it with [`Network::respond`].
    Request {
        /// The asking peer.
        from: PeerId,
        /// The id to answer with.
        id: InboundId,
        /// The request bytes.
        data: Vec<u8>,
    },
    /// A connection to a peer was established.
    PeerConnected(PeerId),
    /// The last connection to a peer closed.
    PeerDisconnected(PeerId),
    /// The node listens on this address.
    Listening(Multiaddr),
}

/// A transaction batch from gossip, as queued for the node: an [`Event::Gossip`] on
/// [`Topic::Txs`] (the fields are that event's).
#[derive(Debug)]
pub struct TxBatch {
    /// The peer that sent it to this node.
    pub from: PeerId,
    /// `from`, when it claims to be the batch's author.
    pub publisher: Option<PeerId>,
    /// The payload.
    pub data: Vec<u8>,
    /// Its ticket for the node's verdict.
    pub held: Option<Held>,
}

impl From<TxBatch> for Event {
    fn from(b: TxBatch) -> Event {
        Event::Gossip {
            from: b.from,
            publisher: b.publisher,
            topic: Topic::Txs,
            data: b.data,
            held: b.held,
        }
    }
}

/// A gossip message gossipsub holds until the node judges it ([`Event::Gossip`]).
#[derive(Debug)]
pub struct Held(Box<HeldMessage>);

#[derive(Debug)]
struct HeldMessage {
    id: gossipsub::MessageId,
    from: PeerId,
    at: Instant,
}

impl Held {
    fn new(id: gossipsub::MessageId, from: PeerId) -> Held {
        Held(Box::new(HeldMessage {
            id,
            from,
            at: Instant::now(),
        }))
    }

    /// Whether gossipsub may no longer hold it ([`HELD_FOR`]).
    fn expired(&self) -> bool {
        self.0.at.elapsed() >= HELD_FOR
    }

    /// When it may be relayed ([`RELAY_AFTER`]).
    fn relay_at(&self) -> Instant {
        self.0.at + RELAY_AFTER
    }
}

/// The node's verdict on a [`Held`] gossip message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Valid: relay it to the peers that have not seen it.
    Valid,
    /// Invalid (undecodable, a bad signature): never relay it.
    Invalid,
    /// Not relayed, though not found invalid (the node had no room to check it).
    Ignored,
}

/// How long gossipsub keeps a held message (its message cache: `history_length`
/// heartbeats, the last of which may already have begun when it arrived). A verdict
/// given later has nothing left to relay, and is dropped here rather than let gossipsub
/// warn about it.
const HELD_FOR: Duration = Duration::from_millis(HEARTBEAT_MS * (HISTORY_LENGTH as u64 - 1));

/// A valid transaction batch is relayed no sooner than this after it arrived. Its
/// publisher sent it to every peer it has, and those of them that are this node's mesh
/// peers say so (IDONTWANT) as it reaches them: a relay that waits for their word
/// skips them. On a lightly loaded node the check takes less than the notice's trip,
/// and without the wait every batch went to every mesh peer again.
const RELAY_AFTER: Duration = Duration::from_millis(10);

/// Messages over this many bytes (gossipsub's encoding) are announced to mesh peers as
/// had (IDONTWANT) when they arrive: transaction batches of two transactions or more,
/// but not votes (about 220 bytes), which are relayed at once, before a peer's notice
/// could arrive, so that a notice would only add a message. gossipsub's default is
/// 1,000 bytes, which left batches of up to four transactions relayed to every mesh
/// peer.
const IDONTWANT_OVER: usize = 400;

/// gossipsub's heartbeat (mesh upkeep, message cache shifts).
const HEARTBEAT_MS: u64 = 700;

/// Heartbeats a message stays in gossipsub's message cache (its default): served to
/// peers that ask for it, and waiting there for the node's verdict when it is held.
const HISTORY_LENGTH: usize = 5;

enum Command {
    Publish(Topic, Vec<u8>),
    Request(PeerId, Vec<u8>, oneshot::Sender<Result<Vec<u8>, P2pError>>),
    Respond(InboundId, Vec<u8>),
    Penalize(PeerId, i32, String),
    Judge(Held, Judgement),
    Peers(oneshot::Sender<Vec<PeerId>>),
}

/// A handle on the networking task. Cheap to clone.
#[derive(Clone)]
pub struct Network {
    commands: mpsc::Sender<Command>,
    local: PeerId,
    overlay: Option<wg::Overlay>,
    dropped_tx_batches: Arc<AtomicU64>,
    reconnected_without_topics: Arc<AtomicU64>,
}

impl Network {
    /// Peers disconnected because they had not told their gossip topics 5 s after they
    /// connected (a peer that restarted behind its old connection, see
    /// `Actor::reconnect_peers_without_topics`); a running count.
    pub fn peers_reconnected_without_topics(&self) -> u64 {
        self.reconnected_without_topics.load(Ordering::Relaxed)
    }

    /// Transaction batches from gossip dropped because the node had this many waiting
    /// ([`Events`]); a running count.
    pub fn dropped_tx_batches(&self) -> u64 {
        self.dropped_tx_batches.load(Ordering::Relaxed)
    }

    /// The WireGuard overlay, when it is the transport.
    pub fn overlay(&self) -> Option<&wg::Overlay> {
        self.overlay.as_ref()
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Publishes `data` on `topic`.
    pub async fn publish(&self, topic: Topic, data: Vec<u8>) -> Result<(), P2pError> {
        self.send(Command::Publish(topic, data)).await
    }

    /// Sends a sync request to `peer` and waits for its answer.
    pub async fn request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, P2pError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Request(peer, data, tx)).await?;
        rx.await.map_err(|_| P2pError::Stopped)?
    }

    /// Answers the inbound request `id`.
    pub async fn respond(&self, id: InboundId, data: Vec<u8>) -> Result<(), P2pError> {
        self.send(Command::Respond(id, data)).await
    }

    /// Lowers `peer`'s score by `points` because of `reason` (it relayed something
    /// invalid); at [`BAN_SCORE`] the peer is disconnected and banned.
    pub async fn penalize(&self, peer: PeerId, points: i32, reason: String) {
        let _ = self.send(Command::Penalize(peer, points, reason)).await;
    }

    /// Gives the node's verdict on a held gossip message: relays it if `Valid`, drops it
    /// otherwise ([`Event::Gossip`]).
    pub async fn judge(&self, held: Held, judgement: Judgement) {
        let _ = self.send(Command::Judge(held, judgement)).await;
    }

    /// The connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerId>, P2pError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Peers(tx)).await?;
        rx.await.map_err(|_| P2pError::Stopped)
    }

    async fn send(&self, c: Command) -> Result<(), P2pError> {
        self.commands.send(c).await.map_err(|_| P2pError::Stopped)
    }
}

/// The libp2p peer id of an ed25519 node key given by its 32-byte seed.
pub fn peer_id_from_seed(seed: &[u8; 32]) -> Result<PeerId, P2pError> {
    Ok(keypair_from_seed(seed)?.public().to_peer_id())
}

/// The libp2p peer id of an ed25519 node public key.
pub fn peer_id_from_public(public: &[u8; 32]) -> Result<PeerId, P2pError> {
    let pk = identity::ed25519::PublicKey::try_from_bytes(public)
        .map_err(|e| P2pError::Key(e.to_string()))?;
    Ok(identity::PublicKey::from(pk).to_peer_id())
}

/// The ed25519 node public key a peer id names (peer ids of ed25519 keys embed the key).
pub fn public_from_peer_id(peer: &PeerId) -> Result<[u8; 32], P2pError> {
    let key = identity::PublicKey::try_decode_protobuf(peer.as_ref().digest())
        .map_err(|e| P2pError::Key(format!("peer id {peer}: {e}")))?;
    let ed = key
        .try_into_ed25519()
        .map_err(|e| P2pError::Key(format!("peer id {peer} is not an ed25519 key: {e}")))?;
    Ok(ed.to_bytes())
}

/// The peer id an address names (its `/p2p/<id>` part), if any.
pub fn peer_in(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

/// The multiaddr of a UDP endpoint, the address shape of the WireGuard transport.
pub fn udp_multiaddr(addr: std::net::SocketAddr) -> Multiaddr {
    Multiaddr::empty()
        .with(addr.ip().into())
        .with(libp2p::multiaddr::Protocol::Udp(addr.port()))
}

fn keypair_from_seed(seed: &[u8; 32]) -> Result<identity::Keypair, P2pError> {
    let mut bytes = *seed;
    identity::Keypair::ed25519_from_bytes(&mut bytes).map_err(|e| P2pError::Key(e.to_string()))
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossip: gossipsub::Behaviour,
    sync: request_response::Behaviour<SyncCodec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
}

/// Transaction batches from gossip waiting for the node; more are dropped (counted).
const TX_GOSSIP_QUEUE: usize = 1024;

/// How long a connected peer may go without telling its gossip topics before it is
/// disconnected, so that it connects afresh (see `Actor::reconnect_peers_without_topics`).
/// A peer tells them as its first connection opens, in its first messages.
const TOPICS_WITHIN: Duration = Duration::from_secs(5);

/// How often the p2p task does its housekeeping (bans lifted, peers without topics).
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// The events of the networking task, in two queues: control (consensus, evidence, sync,
/// peers) and transaction gossip. [`Events::recv`] always takes a control event first, so
/// a proposal or vote never waits behind a backlog of transactions to admit (the node
/// may take a bounded number of queued batches itself, [`Events::try_recv_txs`]).
///
/// The control queue is bounded with backpressure: if the node stops reading it, the
/// network stops reading its peers. Transaction gossip is best effort, as in every
/// ledger: when its queue is full (the node cannot admit transactions as fast as peers
/// relay them), further batches are dropped and counted
/// ([`Network::dropped_tx_batches`]). The peers that relayed them keep them, and a block
/// that carries them is still checked in full.
pub struct Events {
    control: mpsc::Receiver<Event>,
    txs: mpsc::Receiver<TxBatch>,
}

impl Events {
    /// The next event, control events first; `None` once the networking task stopped.
    /// Cancel-safe (it can be a `select!` branch).
    pub async fn recv(&mut self) -> Option<Event> {
        tokio::select! {
            biased;
            e = self.control.recv() => e,
            Some(b) = self.txs.recv() => Some(b.into()),
        }
    }

    /// A transaction batch from gossip that is already queued, without waiting: a node
    /// that lacks a proposal's transactions looks in its own queue before it asks its
    /// peers (transaction batches wait behind consensus messages, so a proposal can
    /// overtake the batch its proposer sent before it).
    pub fn try_recv_txs(&mut self) -> Option<TxBatch> {
        self.txs.try_recv().ok()
    }
}

/// Starts the networking task with the node key's `seed`. Returns the handle and the
/// event stream ([`Events`]). Must be called inside a tokio runtime.
pub async fn spawn(seed: &[u8; 32], config: Config) -> Result<(Network, Events), P2pError> {
    let key = keypair_from_seed(seed)?;
    let local = key.public().to_peer_id();
    let overlay = match &config.transport {
        TransportKind::Tcp => None,
        TransportKind::WireGuard(wg_config) => {
            let [addr] = config.listen.as_slice() else {
                return Err(P2pError::Build(
                    "the WireGuard transport needs exactly one listen address (/ip4/A/udp/P)"
                        .into(),
                ));
            };
            let Some((udp, None)) = wg::parse_addr(addr) else {
                return Err(P2pError::Listen {
                    addr: addr.clone(),
                    reason: "the WireGuard transport listens on /ip4/A/udp/P or /ip6/A/udp/P"
                        .into(),
                });
            };
            Some(wg::Overlay::bind(seed, udp, wg_config.clone()).await?)
        }
    };
    let mut swarm = build_swarm(key, &config, overlay.as_ref())?;
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| P2pError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
    }
    let topics: HashMap<gossipsub::TopicHash, Topic> = Topic::ALL
        .iter()
        .map(|t| {
            (
                gossipsub::IdentTopic::new(t.name(&config.network)).hash(),
                *t,
            )
        })
        .collect();
    for t in Topic::ALL {
        swarm
            .behaviour_mut()
            .gossip
            .subscribe(&gossipsub::IdentTopic::new(t.name(&config.network)))
            .map_err(|e| P2pError::Build(e.to_string()))?;
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(4096);
    let (ev_tx, ev_rx) = mpsc::channel(4096);
    let (tx_ev_tx, tx_ev_rx) = mpsc::channel(TX_GOSSIP_QUEUE);
    let dropped_tx_batches = Arc::new(AtomicU64::new(0));
    let reconnected_without_topics = Arc::new(AtomicU64::new(0));
    let actor = Actor {
        limits: PeerLimits::new(config.peer_messages_per_sec, config.ban),
        config,
        swarm,
        topics,
        events: ev_tx,
        tx_events: tx_ev_tx,
        dropped_tx_batches: dropped_tx_batches.clone(),
        reconnected_without_topics: reconnected_without_topics.clone(),
        pending: HashMap::new(),
        inbound: HashMap::new(),
        next_inbound: 0,
        relays: Relays::default(),
        connected_at: HashMap::new(),
    };
    tokio::spawn(actor.run(cmd_rx));
    Ok((
        Network {
            commands: cmd_tx,
            local,
            overlay,
            dropped_tx_batches,
            reconnected_without_topics,
        },
        Events {
            control: ev_rx,
            txs: tx_ev_rx,
        },
    ))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn build_swarm(
    key: identity::Keypair,
    config: &Config,
    overlay: Option<&wg::Overlay>,
) -> Result<Swarm<Behaviour>, P2pError> {
    let build = |e: &dyn std::fmt::Display| P2pError::Build(e.to_string());
    let behaviour = |key: &identity::Keypair| make_behaviour(key, config);
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(300));
    let builder = libp2p::SwarmBuilder::with_existing_identity(key).with_tokio();
    let swarm = match (&config.transport, overlay) {
        (TransportKind::Tcp, _) => builder
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| build(&e))?
            .with_behaviour(behaviour)
            .map_err(|e| build(&e))?
            .with_swarm_config(idle)
            .build(),
        (TransportKind::WireGuard(_), Some(overlay)) => builder
            .with_other_transport(|_| -> Result<_, BoxError> {
                Ok(wg::authenticated(overlay.transport()))
            })
            .map_err(|e| build(&e))?
            .with_behaviour(behaviour)
            .map_err(|e| build(&e))?
            .with_swarm_config(idle)
            .build(),
        (TransportKind::WireGuard(_), None) => {
            return Err(P2pError::Build(
                "the WireGuard overlay is not running".into(),
            ));
        }
    };
    Ok(swarm)
}

/// The gossipsub id of a message: a hash of everything in it (claimed author, sequence
/// number, topic, data; docs/FORMATS.md). Messages are not signed, so an id built from
/// the author and sequence number alone could be claimed first by a peer that sends
/// other data under it, and the real message would then be dropped as a duplicate.
fn message_id(m: &gossipsub::Message) -> gossipsub::MessageId {
    let mut h = HashDomain::GossipMessage.hasher();
    h.update(&[1]);
    let source = m.source.map(|p| p.to_bytes()).unwrap_or_default();
    // A peer id is a multihash with at most 64 bytes of digest: its length fits a byte.
    h.update(&[u8::try_from(source.len()).unwrap_or(u8::MAX)]);
    h.update(&source);
    match m.sequence_number {
        Some(n) => h.update(&[1]).update(&n.to_be_bytes()),
        None => h.update(&[0]),
    };
    for field in [m.topic.as_str().as_bytes(), &m.data] {
        h.update(&(field.len() as u64).to_be_bytes());
        h.update(field);
    }
    gossipsub::MessageId::new(h.finalize().as_bytes())
}

fn make_behaviour(key: &identity::Keypair, config: &Config) -> Result<Behaviour, BoxError> {
    let gossip_config = gossipsub::ConfigBuilder::default()
        .max_transmit_size(config.max_gossip_bytes)
        // Messages are not signed by libp2p: every payload carries the signatures of its
        // authors (users, validators), and the transport names the peer that sent it.
        // Permissive takes the claimed author and sequence number as they come.
        .validation_mode(gossipsub::ValidationMode::Permissive)
        .message_id_fn(message_id)
        // The node judges transaction batches before they are relayed (`Event::Gossip`);
        // the task itself passes other messages at once (`Actor::gossip`).
        .validate_messages()
        .heartbeat_interval(Duration::from_millis(HEARTBEAT_MS))
        .history_length(HISTORY_LENGTH)
        // A node takes peers into its mesh while it has fewer than 4 (so all of them in
        // a network of up to five), and accepts those that ask up to 12. A node sends
        // its own messages to every peer all the same (gossipsub's flood publishing);
        // the mesh carries what it relays. Mesh peers tell each other which messages
        // over `IDONTWANT_OVER` bytes they already have, so a held batch is rarely
        // relayed to the peers its publisher sent it to.
        .idontwant_message_size_threshold(IDONTWANT_OVER)
        .mesh_n_low(4)
        .mesh_n(8)
        .mesh_n_high(12)
        .build()?;
    let network = &config.network;
    let sync_protocol = StreamProtocol::try_from_owned(format!("/pyralog/{network}/sync/1"))?;
    let codec = SyncCodec::new(config.max_request_bytes, config.max_response_bytes);
    let gossip = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Author(key.public().to_peer_id()),
        gossip_config,
    )?;
    Ok(Behaviour {
        gossip,
        sync: request_response::Behaviour::with_codec(
            codec,
            [(sync_protocol, request_response::ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(config.request_timeout),
        ),
        identify: identify::Behaviour::new(identify::Config::new(
            format!("/pyralog/{network}/1"),
            key.public(),
        )),
        ping: ping::Behaviour::new(
            ping::Config::new()
                .with_interval(config.ping_interval)
                .with_timeout(config.ping_timeout),
        ),
        blocked: allow_block_list::Behaviour::default(),
    })
}

/// What became of a transaction batch from gossip ([`queue_tx_gossip`]).
enum Queued {
    /// Queued for the node.
    Sent,
    /// Dropped, the queue being full; gossipsub, which holds it, is to be told.
    Dropped(Option<Held>),
    /// The node stopped reading.
    Closed,
}

/// Queues a transaction batch from gossip for the node, or drops and counts it when the
/// queue is full.
fn queue_tx_gossip(queue: &mpsc::Sender<TxBatch>, dropped: &AtomicU64, b: TxBatch) -> Queued {
    match queue.try_send(b) {
        Ok(()) => Queued::Sent,
        Err(mpsc::error::TrySendError::Full(b)) => {
            let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "the node is behind on transaction gossip: dropping batches"
                );
            }
            Queued::Dropped(b.held)
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Queued::Closed,
    }
}

struct Actor {
    config: Config,
    swarm: Swarm<Behaviour>,
    topics: HashMap<gossipsub::TopicHash, Topic>,
    events: mpsc::Sender<Event>,
    tx_events: mpsc::Sender<TxBatch>,
    dropped_tx_batches: Arc<AtomicU64>,
    reconnected_without_topics: Arc<AtomicU64>,
    pending:
        HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<Vec<u8>, P2pError>>>,
    inbound: HashMap<InboundId, request_response::ResponseChannel<Vec<u8>>>,
    next_inbound: u64,
    limits: PeerLimits,
    relays: Relays,
    /// Since when each connected peer is expected to have told its gossip topics: when
    /// its first connection opened, or when it was last found without them.
    connected_at: HashMap<PeerId, Instant>,
}

/// Valid transaction batches waiting out [`RELAY_AFTER`], in the order judged.
#[derive(Default)]
struct Relays(VecDeque<Held>);

impl Relays {
    /// Keeps `held` if it must still wait at `now`; hands it back if it may go.
    fn wait(&mut self, held: Held, now: Instant) -> Option<Held> {
        if held.relay_at() > now {
            self.0.push_back(held);
            None
        } else {
            Some(held)
        }
    }

    /// When the first waiting batch is due; `None` when none waits.
    fn next(&self) -> Option<Instant> {
        self.0.front().map(Held::relay_at)
    }

    /// The batches due at `now`, in the order judged. (Verdicts come nearly in the
    /// order batches arrived; one out of order waits at most for those before it.)
    fn due(&mut self, now: Instant) -> Vec<Held> {
        let n = self.0.iter().take_while(|h| h.relay_at() <= now).count();
        self.0.drain(..n).collect()
    }
}

impl Actor {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        self.dial_bootstrap();
        let mut redial = tokio::time::interval(self.config.redial);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        // After a stall, one late tick rather than a burst of them (see `housekeeping`).
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_relay = self.relays.next();
            let relay_at = tokio::time::Instant::from_std(next_relay.unwrap_or_else(Instant::now));
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => break,
                },
                ev = self.swarm.select_next_some() => {
                    if !self.swarm_event(ev).await {
                        break;
                    }
                }
                _ = redial.tick() => self.dial_bootstrap(),
                due = housekeeping.tick() => self.housekeeping(due.into_std()),
                _ = tokio::time::sleep_until(relay_at), if next_relay.is_some() => {
                    for held in self.relays.due(Instant::now()) {
                        self.report(held, Judgement::Valid);
                    }
                }
            }
        }
        tracing::debug!("p2p task stopped");
    }

    fn dial_bootstrap(&mut self) {
        let local = *self.swarm.local_peer_id();
        for addr in self.config.bootstrap.clone() {
            let peer = peer_in(&addr);
            if peer == Some(local) || peer.is_some_and(|p| self.swarm.is_connected(&p)) {
                continue;
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "dial failed");
            }
        }
    }

    /// Housekeeping on the tick that was `due` (run late if the task was busy).
    fn housekeeping(&mut self, due: Instant) {
        let now = Instant::now();
        // A tick late by a period or more means this task was stalled (the node did not
        // read its events): peers' topics may be waiting unread, so they are not judged
        // on this tick.
        if now.duration_since(due) < HOUSEKEEPING {
            self.reconnect_peers_without_topics(now);
        }
        for peer in self.limits.expired_bans() {
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            tracing::info!(%peer, "ban lifted");
        }
        // Answers the node never gave (it should always answer) are dropped eventually.
        if self.inbound.len() > 10_000 {
            self.inbound.clear();
        }
    }

    /// Disconnects the peers that have not told their gossip topics [`TOPICS_WITHIN`]
    /// after they connected (checked every [`HOUSEKEEPING`], so up to a second later).
    ///
    /// Gossipsub tells a peer this node's topics only when the peer's first connection
    /// opens. A peer that restarted may find an older connection of its previous process
    /// still open on the other side: over the WireGuard overlay nothing resets it until
    /// a packet reaches the new process or pings fail. The other side then takes the new
    /// connection for a second one and never tells its topics. This node's messages
    /// then reach no one (gossipsub finds no subscriber and drops them), while it still
    /// hears everyone: a validator that restarted in that window never voted again.
    ///
    /// Every node subscribes to every topic before it connects, so a peer still without
    /// topics is most likely such a peer (or one whose announcement was slow;
    /// reconnecting costs it little). Disconnected, it is dialed again by the side that
    /// has the other among its bootstrap peers (the restarted node dialed, so it does);
    /// once the old connection is gone, the next one is a first one to both sides. (A
    /// peer that never tells topics, one that does not speak gossipsub, has no place in
    /// this network: it is disconnected again every time.)
    fn reconnect_peers_without_topics(&mut self, now: Instant) {
        let silent: Vec<PeerId> = self
            .swarm
            .behaviour()
            .gossip
            .all_peers()
            .filter(|(peer, topics)| {
                topics.is_empty()
                    && self
                        .connected_at
                        .get(peer)
                        .is_some_and(|at| now.duration_since(*at) >= TOPICS_WITHIN)
            })
            .map(|(peer, _)| *peer)
            .collect();
        for peer in silent {
            tracing::info!(
                %peer,
                "peer has not told its gossip topics since it connected: reconnecting it"
            );
            self.reconnected_without_topics
                .fetch_add(1, Ordering::Relaxed);
            // Judged again later if a connection of it is still open then.
            self.connected_at.insert(peer, now);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Publish(topic, data) => {
                if data.len() > self.config.max_gossip_bytes {
                    tracing::warn!(
                        ?topic,
                        len = data.len(),
                        "not publishing an oversize message"
                    );
                    return;
                }
                let t = gossipsub::IdentTopic::new(topic.name(&self.config.network));
                match self.swarm.behaviour_mut().gossip.publish(t, data) {
                    Ok(_) => {}
                    // Alone, or a repeat: nothing to do.
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
                    | Err(gossipsub::PublishError::Duplicate) => {}
                    Err(e) => tracing::debug!(?topic, error = %e, "publish failed"),
                }
            }
            Command::Request(peer, data, reply) => {
                let id = self.swarm.behaviour_mut().sync.send_request(&peer, data);
                self.pending.insert(id, reply);
            }
            Command::Respond(id, data) => {
                if let Some(ch) = self.inbound.remove(&id) {
                    let _ = self.swarm.behaviour_mut().sync.send_response(ch, data);
                }
            }
            Command::Penalize(peer, points, reason) => self.penalize(peer, points, &reason),
            Command::Judge(held, judgement) => self.judge(held, judgement),
            Command::Peers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
        }
    }

    fn penalize(&mut self, peer: PeerId, points: i32, reason: &str) {
        tracing::debug!(%peer, points, reason, "peer penalised");
        if self.limits.penalize(peer, points) {
            tracing::warn!(%peer, reason, "peer banned: score too low");
            self.swarm.behaviour_mut().blocked.block_peer(peer);
        }
    }

    /// Handles one swarm event; false when the node stopped listening to events.
    async fn swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) -> bool {
        let event = match ev {
            SwarmEvent::NewListenAddr { address, .. } => Some(Event::Listening(address)),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } => {
                if self.swarm.connected_peers().count() > self.config.max_peers {
                    tracing::debug!(peer = %peer_id, "too many peers: closing");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    None
                } else {
                    self.connected_at
                        .entry(peer_id)
                        .or_insert_with(Instant::now);
                    (num_established.get() == 1).then_some(Event::PeerConnected(peer_id))
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.connected_at.remove(&peer_id);
                Some(Event::PeerDisconnected(peer_id))
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.gossip(propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(ev)) => self.sync_event(ev),
            // A peer that does not answer pings is gone (see `Config::ping_timeout`); one
            // that does not speak ping is still there.
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(e),
            })) if !matches!(e, ping::Failure::Unsupported) => {
                tracing::info!(%peer, error = ?e, "peer not answering pings: closing its connection");
                self.swarm.close_connection(connection);
                None
            }
            _ => None,
        };
        match event {
            Some(Event::Gossip {
                from,
                publisher,
                topic: Topic::Txs,
                data,
                held,
            }) => {
                let batch = TxBatch {
                    from,
                    publisher,
                    data,
                    held,
                };
                match queue_tx_gossip(&self.tx_events, &self.dropped_tx_batches, batch) {
                    Queued::Sent => true,
                    Queued::Dropped(held) => {
                        if let Some(held) = held {
                            self.judge(held, Judgement::Ignored);
                        }
                        true
                    }
                    Queued::Closed => false,
                }
            }
            Some(e) => self.events.send(e).await.is_ok(),
            None => true,
        }
    }

    /// A gossip message for the node. Transaction batches are held for its verdict;
    /// other messages are relayed at once, and messages over the peer's rate limit (or on
    /// a topic the node does not know) are not relayed at all.
    fn gossip(
        &mut self,
        from: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) -> Option<Event> {
        let held = Held::new(id, from);
        let Some(&topic) = self.topics.get(&message.topic) else {
            self.judge(held, Judgement::Ignored);
            return None;
        };
        match self.limits.admit(from) {
            Verdict::Admit => {}
            Verdict::Drop => {
                self.judge(held, Judgement::Ignored);
                return None;
            }
            Verdict::Ban => {
                tracing::warn!(peer = %from, "peer banned: over its message rate");
                self.judge(held, Judgement::Ignored);
                self.swarm.behaviour_mut().blocked.block_peer(from);
                return None;
            }
        }
        let held = match topic {
            Topic::Txs => Some(held),
            Topic::Consensus | Topic::Evidence => {
                // Not `judge`: these do not wait out `RELAY_AFTER`.
                self.report(held, Judgement::Valid);
                None
            }
        };
        Some(Event::Gossip {
            from,
            publisher: message.source.filter(|author| *author == from),
            topic,
            data: message.data,
            held,
        })
    }

    /// Hands gossipsub the node's verdict on a held message; a valid one waits out
    /// [`RELAY_AFTER`] first.
    fn judge(&mut self, held: Held, judgement: Judgement) {
        let held = match judgement {
            Judgement::Valid => match self.relays.wait(held, Instant::now()) {
                Some(now) => now,
                None => return,
            },
            Judgement::Invalid | Judgement::Ignored => held,
        };
        self.report(held, judgement);
    }

    /// Hands gossipsub a verdict, unless it no longer holds the message.
    fn report(&mut self, held: Held, judgement: Judgement) {
        if held.expired() {
            tracing::debug!(message = %held.0.id, ?judgement, "verdict too late to relay");
            return;
        }
        let held = held.0;
        let acceptance = match judgement {
            Judgement::Valid => gossipsub::MessageAcceptance::Accept,
            Judgement::Invalid => gossipsub::MessageAcceptance::Reject,
            Judgement::Ignored => gossipsub::MessageAcceptance::Ignore,
        };
        self.swarm
            .behaviour_mut()
            .gossip
            .report_message_validation_result(&held.id, &held.from, acceptance);
    }

    fn sync_event(&mut self, ev: request_response::Event<Vec<u8>, Vec<u8>>) -> Option<Event> {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    match self.limits.admit(peer) {
                        Verdict::Admit => {}
                        Verdict::Drop => return None,
                        Verdict::Ban => {
                            self.swarm.behaviour_mut().blocked.block_peer(peer);
                            return None;
                        }
                    }
                    let id = InboundId(self.next_inbound);
                    self.next_inbound += 1;
                    self.inbound.insert(id, channel);
                    Some(Event::Request {
                        from: peer,
                        id,
                        data: request,
                    })
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                    None
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(P2pError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gossip(topic: Topic, data: u8) -> Event {
        Event::Gossip {
            from: PeerId::random(),
            publisher: None,
            topic,
            data: vec![data],
            held: None,
        }
    }

    fn batch(data: u8) -> TxBatch {
        TxBatch {
            from: PeerId::random(),
            publisher: None,
            data: vec![data],
            held: None,
        }
    }

    fn data(e: Option<Event>) -> (Topic, u8) {
        match e {
            Some(Event::Gossip { topic, data, .. }) => (topic, data[0]),
            other => panic!("not gossip: {other:?}"),
        }
    }

    #[test]
    fn a_message_id_covers_every_field() {
        let m = |source: Option<PeerId>, seq: Option<u64>, topic: &str, data: &[u8]| {
            message_id(&gossipsub::Message {
                source,
                data: data.to_vec(),
                sequence_number: seq,
                topic: gossipsub::TopicHash::from_raw(topic),
            })
        };
        let (a, b) = (PeerId::random(), PeerId::random());
        let base = m(Some(a), Some(7), "t", b"vote");
        assert_eq!(base, m(Some(a), Some(7), "t", b"vote"));
        // Another peer cannot claim a message's id with other data, nor with another
        // author or sequence number.
        for other in [
            m(Some(a), Some(7), "t", b"junk"),
            m(Some(b), Some(7), "t", b"vote"),
            m(None, Some(7), "t", b"vote"),
            m(Some(a), Some(8), "t", b"vote"),
            m(Some(a), None, "t", b"vote"),
            m(Some(a), Some(7), "u", b"vote"),
            // Lengths keep the fields apart.
            m(Some(a), Some(7), "tv", b"ote"),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn a_verdict_is_too_late_once_gossipsub_may_have_dropped_the_message() {
        let mut held = Held::new(gossipsub::MessageId::new(b"m"), PeerId::random());
        assert!(!held.expired());
        held.0.at -= HELD_FOR - Duration::from_millis(100);
        assert!(!held.expired());
        held.0.at -= Duration::from_millis(100);
        assert!(held.expired());
    }

    #[test]
    fn a_valid_batch_waits_out_relay_after_and_goes_in_order() {
        let held = |id: &[u8], age: Duration| {
            let mut h = Held::new(gossipsub::MessageId::new(id), PeerId::random());
            h.0.at -= age;
            h
        };
        let now = Instant::now();
        let mut relays = Relays::default();
        assert_eq!(relays.next(), None);
        // Judged late enough: it goes at once.
        let old = held(b"old", RELAY_AFTER + Duration::from_millis(50));
        assert!(relays.wait(old, now).is_some());
        // Judged sooner: kept, due RELAY_AFTER after it arrived.
        assert!(
            relays
                .wait(held(b"a", Duration::from_millis(4)), now)
                .is_none()
        );
        assert!(relays.wait(held(b"b", Duration::ZERO), now).is_none());
        let first = relays.next().expect("two wait");
        assert!(first > now);
        assert!(relays.due(now).is_empty());
        let ids = |v: Vec<Held>| v.into_iter().map(|h| h.0.id).collect::<Vec<_>>();
        assert_eq!(ids(relays.due(first)), [gossipsub::MessageId::new(b"a")]);
        let second = relays.next().expect("one waits");
        assert!(second > first);
        assert!(relays.due(first).is_empty());
        assert_eq!(ids(relays.due(second)), [gossipsub::MessageId::new(b"b")]);
        assert_eq!(relays.next(), None);
    }

    #[tokio::test]
    async fn control_events_come_before_waiting_transaction_batches() {
        let (control, control_rx) = mpsc::channel(8);
        let (txs, txs_rx) = mpsc::channel(2);
        let dropped = AtomicU64::new(0);
        let mut events = Events {
            control: control_rx,
            txs: txs_rx,
        };
        for i in 0..2 {
            let queued = queue_tx_gossip(&txs, &dropped, batch(i));
            assert!(matches!(queued, Queued::Sent));
        }
        let mut held = batch(2);
        held.held = Some(Held::new(gossipsub::MessageId::new(b"m"), PeerId::random()));
        // The third batch found the queue full: dropped and counted, not waited for, and
        // handed back for gossipsub to be told (it will not be relayed).
        match queue_tx_gossip(&txs, &dropped, held) {
            Queued::Dropped(Some(h)) => assert_eq!(h.0.id, gossipsub::MessageId::new(b"m")),
            _ => panic!("a dropped batch's ticket is handed back"),
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        control.send(gossip(Topic::Consensus, 9)).await.unwrap();
        assert_eq!(data(events.recv().await), (Topic::Consensus, 9));
        assert_eq!(data(events.recv().await), (Topic::Txs, 0));
        control.send(gossip(Topic::Evidence, 8)).await.unwrap();
        // A queued batch can be taken without waiting, ahead of control events, which
        // stay where they are.
        assert_eq!(events.try_recv_txs().unwrap().data, vec![1]);
        assert!(events.try_recv_txs().is_none());
        assert_eq!(data(events.recv().await), (Topic::Evidence, 8));
        // The task stopped: both queues close, and the stream ends.
        drop((control, txs));
        assert!(events.recv().await.is_none());
        // A closed queue tells the actor to stop.
        let (closed, _) = mpsc::channel(1);
        assert!(matches!(
            queue_tx_gossip(&closed, &dropped, batch(0)),
            Queued::Closed
        ));
    }
}
