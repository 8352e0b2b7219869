//! Gossip between three libp2p networks on 127.0.0.1 (TCP), in a line A — B — C: who
//! a message is blamed on, that a relayed message still arrives, and that B relays a
//! transaction batch only once it judged it valid. And a peer that restarted while its
//! old connection outlived it is heard again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyralog_p2p::{
    Address as Multiaddr, Config, Event, Held, Judgement, Network, PeerId, Topic, TransportKind,
};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A gossip message as a node saw it: (from, publisher, data).
type Seen = (PeerId, Option<PeerId>, Vec<u8>);

struct Node {
    net: Network,
    gossip: mpsc::UnboundedReceiver<Seen>,
    /// Transaction batches, with what the network holds for the node's verdict.
    txs: mpsc::UnboundedReceiver<(Seen, Option<Held>)>,
    listening: mpsc::UnboundedReceiver<Multiaddr>,
}

async fn node(n: u8, bootstrap: Vec<Multiaddr>) -> Node {
    let config = Config {
        network: "gossiptest".into(),
        transport: TransportKind::Tcp,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        redial: Duration::from_millis(300),
        ..Config::default()
    };
    let (net, mut events) = pyralog_p2p::spawn(&[n; 32], config).await.unwrap();
    let (gossip_tx, gossip) = mpsc::unbounded_channel();
    let (txs_tx, txs) = mpsc::unbounded_channel();
    let (listen_tx, listening) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            match e {
                Event::Gossip {
                    from,
                    publisher,
                    topic: Topic::Consensus,
                    data,
                    ..
                } => {
                    let _ = gossip_tx.send((from, publisher, data));
                }
                Event::Gossip {
                    from,
                    publisher,
                    topic: Topic::Txs,
                    data,
                    held,
                } => {
                    let _ = txs_tx.send(((from, publisher, data), held));
                }
                Event::Listening(a) => {
                    let _ = listen_tx.send(a);
                }
                _ => {}
            }
        }
    });
    Node {
        net,
        gossip,
        txs,
        listening,
    }
}

impl Node {
    fn id(&self) -> PeerId {
        self.net.local_peer_id()
    }

    /// Its address, to bootstrap from.
    async fn addr(&mut self) -> Multiaddr {
        let a = tokio::time::timeout(Duration::from_secs(10), self.listening.recv())
            .await
            .expect("no listen address within 10 s")
            .unwrap();
        format!("{a}/p2p/{}", self.id()).parse().unwrap()
    }

    /// The first message seen with `data`, within `wait`.
    async fn saw(&mut self, data: &[u8], wait: Duration) -> Option<Seen> {
        first(&mut self.gossip, wait, |s: &Seen| s.2 == data).await
    }

    /// The first transaction batch seen with `data`, within `wait`.
    async fn saw_txs(&mut self, data: &[u8], wait: Duration) -> Option<(Seen, Option<Held>)> {
        first(&mut self.txs, wait, |s: &(Seen, _)| s.0.2 == data).await
    }
}

/// The first item from `rx` that `want` accepts, within `wait`.
async fn first<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    wait: Duration,
    want: impl Fn(&T) -> bool,
) -> Option<T> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(s)) if want(&s) => return Some(s),
            Ok(Some(_)) => {}
            _ => return None,
        }
    }
}

/// Three nodes with the given key seeds, in a line A — B — C (A and C dial B only).
async fn line([a, b, c]: [u8; 3]) -> (Node, Node, Node) {
    let mut b = node(b, vec![]).await;
    let b_addr = b.addr().await;
    let a = node(a, vec![b_addr.clone()]).await;
    let c = node(c, vec![b_addr]).await;
    (a, b, c)
}

/// Publishes numbered messages from `from` until `to` has seen one (subscriptions take a
/// moment to spread); returns what `to` saw and the data.
async fn deliver(from: &Node, to: &mut Node, tag: u8) -> (Seen, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for attempt in 0u8.. {
        assert!(Instant::now() < deadline, "nothing delivered within 20 s");
        let data = vec![tag, attempt];
        from.net
            .publish(Topic::Consensus, data.clone())
            .await
            .unwrap();
        if let Some(s) = to.saw(&data, Duration::from_millis(500)).await {
            return (s, data);
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_blamed_on_its_sender_only_when_the_sender_published_it() {
    let (a, mut b, mut c) = line([1, 2, 3]).await;

    // A's message reaches C through B: C can blame no one for it, since B only relayed
    // it and gossip does not prove that A wrote it.
    let ((from, publisher, _), data) = deliver(&a, &mut c, 1).await;
    assert_eq!(from, b.id());
    assert_eq!(publisher, None);
    // B got the same message straight from A, who is held to it.
    let (from, publisher, _) = b.saw(&data, Duration::from_secs(5)).await.unwrap();
    assert_eq!((from, publisher), (a.id(), Some(a.id())));

    // B's own message reaches C straight from B.
    let ((from, publisher, _), _) = deliver(&b, &mut c, 2).await;
    assert_eq!((from, publisher), (b.id(), Some(b.id())));

    // The same bytes published again are a new message (a fresh sequence number), so a
    // re-sent proposal or vote is delivered again rather than dropped as a duplicate.
    let (_, data) = deliver(&a, &mut c, 3).await;
    a.net.publish(Topic::Consensus, data.clone()).await.unwrap();
    let (from, _, _) = c.saw(&data, Duration::from_secs(5)).await.unwrap();
    assert_eq!(from, b.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_batch_is_relayed_only_once_judged_valid() {
    let (a, mut b, mut c) = line([4, 5, 6]).await;
    // Consensus messages pass B at once: the line is up, and B relays.
    deliver(&a, &mut c, 1).await;

    // A's batch reaches B, held for B's verdict, and does not reach C while B holds it.
    let held_batch = |tag: u8| vec![0x7a, tag, 0, 1, 2, 3];
    let bad = held_batch(1);
    a.net.publish(Topic::Txs, bad.clone()).await.unwrap();
    let ((from, publisher, _), held) = b.saw_txs(&bad, Duration::from_secs(5)).await.unwrap();
    assert_eq!((from, publisher), (a.id(), Some(a.id())));
    let held = held.expect("a transaction batch waits for the node's verdict");
    assert!(c.saw_txs(&bad, Duration::from_millis(800)).await.is_none());
    // Found invalid, it never goes further.
    b.net.judge(held, Judgement::Invalid).await;
    assert!(c.saw_txs(&bad, Duration::from_millis(1500)).await.is_none());

    // Found valid, it does, relayed by B (who is not its author).
    let good = held_batch(2);
    a.net.publish(Topic::Txs, good.clone()).await.unwrap();
    let (_, held) = b.saw_txs(&good, Duration::from_secs(5)).await.unwrap();
    b.net.judge(held.unwrap(), Judgement::Valid).await;
    let ((from, publisher, _), held) = c.saw_txs(&good, Duration::from_secs(5)).await.unwrap();
    assert_eq!((from, publisher), (b.id(), None));
    // C holds it in turn (it has no one to relay it to; the verdict is still its own).
    assert!(held.is_some());
}

/// A TCP proxy in front of a node. Told to, it keeps open the node's side of the next
/// connection whose dialer goes away, as the WireGuard overlay does for a peer whose
/// process died (nothing resets it), and closes it 3 s after the next connection
/// arrives (time for that connection to open on a busy machine, and less than the 5 s
/// a peer has to tell its topics), as the restarted peer's new stack resets it on the
/// next packet.
struct Proxy {
    addr: SocketAddr,
    hold_next: Arc<Mutex<bool>>,
    held: Arc<Mutex<Vec<OwnedWriteHalf>>>,
}

impl Proxy {
    async fn start(to: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            hold_next: Arc::new(Mutex::new(false)),
            held: Arc::new(Mutex::new(Vec::new())),
        };
        let (hold_next, held) = (proxy.hold_next.clone(), proxy.held.clone());
        tokio::spawn(async move {
            while let Ok((dialer, _)) = listener.accept().await {
                let Ok(node) = TcpStream::connect(to).await else {
                    continue;
                };
                if !held.lock().unwrap().is_empty() {
                    let held = held.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        held.lock().unwrap().clear();
                    });
                }
                let (hold_next, held) = (hold_next.clone(), held.clone());
                tokio::spawn(async move {
                    let (mut from_dialer, mut to_dialer) = dialer.into_split();
                    let (mut from_node, mut to_node) = node.into_split();
                    let down = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut from_node, &mut to_dialer).await;
                    });
                    // `copy` leaves the node's side open at the dialer's end of stream;
                    // dropping that write half closes it.
                    let _ = tokio::io::copy(&mut from_dialer, &mut to_node).await;
                    let mut hold = hold_next.lock().unwrap();
                    if *hold {
                        *hold = false;
                        down.abort();
                        held.lock().unwrap().push(to_node);
                    }
                });
            }
        });
        proxy
    }

    /// Holds the next connection whose dialer goes away.
    fn hold_next(&self) {
        *self.hold_next.lock().unwrap() = true;
    }

    fn holds(&self) -> bool {
        !self.held.lock().unwrap().is_empty()
    }
}

/// The TCP address in a `/ip4/A/tcp/P/...` address.
fn tcp_addr(a: &Multiaddr) -> SocketAddr {
    let s = a.to_string();
    let parts: Vec<&str> = s.split('/').collect();
    format!("{}:{}", parts[2], parts[4]).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_restarted_behind_its_old_connection_is_heard_again() {
    let mut b = node(11, vec![]).await;
    let b_addr = b.addr().await;
    let proxy = Proxy::start(tcp_addr(&b_addr)).await;
    let via: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", proxy.addr.port(), b.id())
        .parse()
        .unwrap();
    let mut a = node(10, vec![via.clone()]).await;
    deliver(&a, &mut b, 1).await;
    deliver(&b, &mut a, 2).await;

    // A's process ends; B's side of its connection stays open.
    proxy.hold_next();
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.holds() {
        assert!(Instant::now() < deadline, "A's connection did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A restarts with the same key. B takes its new connection for a second one, and
    // tells A no topics on it; the old one closes 3 s later.
    let mut a = node(10, vec![via]).await;
    // B hears A again (A reconnects once it sees B has told no topics), and A hears B.
    deliver(&a, &mut b, 3).await;
    deliver(&b, &mut a, 4).await;
    // A reconnected B (counted); B, told A's topics on A's new connection, did not.
    assert!(a.net.peers_reconnected_without_topics() >= 1);
    assert_eq!(b.net.peers_reconnected_without_topics(), 0);
}
