//! One libp2p stream between two endpoints on 127.0.0.1, measured in the same run over
//! plain TCP (noise + yamux, the baseline) and over the WireGuard overlay as the node
//! runs it (the tunnel authenticates, yamux multiplexes: `wg::authenticated`), plus the
//! overlay with noise inside the tunnel as before (for comparison): bulk throughput of
//! one stream and the round-trip time of a small request. Prints the ratios to TCP.
//!
//! `cargo bench -p pyralog-p2p --bench transport [MIB] [ROUNDS]`: every transport once
//! per round, in turn (MiB per bulk transfer, default 256; rounds, default 5), and the
//! medians, so a slow spell of the shared machine falls on all transports alike.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::core::muxing::{StreamMuxerBox, StreamMuxerExt, SubstreamBox};
use libp2p::core::transport::{Boxed, DialOpts, ListenerId, PortUse, TransportEvent};
use libp2p::core::upgrade::Version;
use libp2p::core::{Endpoint, Transport};
use libp2p::{Multiaddr, PeerId, identity, noise, tcp, yamux};
use pyralog_p2p::wg::{Overlay, WgConfig};

type Muxed = Boxed<(PeerId, StreamMuxerBox)>;

fn identity_of(seed: u8) -> identity::Keypair {
    identity::Keypair::ed25519_from_bytes([seed; 32]).unwrap()
}

fn upgrade<T>(t: T, key: &identity::Keypair) -> Muxed
where
    T: Transport + Send + Unpin + 'static,
    T::Output: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    t.upgrade(Version::V1)
        .authenticate(noise::Config::new(key).unwrap())
        .multiplex(yamux::Config::default())
        .boxed()
}

async fn wg(seed: u8, peer: u8, mtu: usize, inner_noise: bool) -> (Muxed, Overlay) {
    let config = WgConfig {
        mtu,
        allowed: vec![
            pyralog_crypto::Keypair::from_seed(&[peer; 32])
                .public()
                .to_bytes(),
        ],
        ..WgConfig::default()
    };
    let overlay = Overlay::bind(&[seed; 32], "127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let muxed = if inner_noise {
        upgrade(overlay.transport(), &identity_of(seed))
    } else {
        pyralog_p2p::wg::authenticated(overlay.transport())
    };
    (muxed, overlay)
}

fn tcp_transport(seed: u8) -> Muxed {
    upgrade(
        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)),
        &identity_of(seed),
    )
}

/// Connects `client` to `server` listening on `listen`; returns both muxers.
async fn connect(
    mut server: Muxed,
    mut client: Muxed,
    listen: Multiaddr,
) -> (StreamMuxerBox, StreamMuxerBox) {
    server.listen_on(ListenerId::next(), listen).unwrap();
    let addr = loop {
        if let Some(TransportEvent::NewAddress { listen_addr, .. }) = server.next().await {
            break listen_addr;
        }
    };
    let dial = client
        .dial(
            addr.with(libp2p::multiaddr::Protocol::P2p(
                identity_of(1).public().to_peer_id(),
            )),
            DialOpts {
                role: Endpoint::Dialer,
                port_use: PortUse::New,
            },
        )
        .unwrap();
    let accept = async {
        loop {
            if let Some(TransportEvent::Incoming { upgrade, .. }) = server.next().await {
                return upgrade.await.unwrap();
            }
        }
    };
    let ((_, c), (_, s)) = futures::join!(async { dial.await.unwrap() }, accept);
    // Keep the transports (and the overlay's listener) alive.
    tokio::spawn(async move { while server.next().await.is_some() {} });
    tokio::spawn(async move { while client.next().await.is_some() {} });
    (s, c)
}

/// Serves every inbound stream: `B` then bytes until EOF, answered with the count; `E`
/// then 64-byte messages echoed.
fn serve(mut muxer: StreamMuxerBox) {
    tokio::spawn(async move {
        loop {
            let s = futures::future::poll_fn(|cx| {
                if let std::task::Poll::Ready(r) = muxer.poll_inbound_unpin(cx) {
                    return std::task::Poll::Ready(r.ok());
                }
                let _ = muxer.poll_unpin(cx);
                std::task::Poll::Pending
            })
            .await;
            let Some(mut s) = s else { return };
            tokio::spawn(async move {
                let mut tag = [0u8; 1];
                s.read_exact(&mut tag).await.unwrap();
                if tag[0] == b'B' {
                    let mut buf = vec![0u8; 1 << 16];
                    let mut n: u64 = 0;
                    loop {
                        let r = s.read(&mut buf).await.unwrap();
                        if r == 0 {
                            break;
                        }
                        n += r as u64;
                    }
                    s.write_all(&n.to_le_bytes()).await.unwrap();
                    s.close().await.unwrap();
                } else {
                    let mut m = [0u8; 64];
                    while s.read_exact(&mut m).await.is_ok() {
                        s.write_all(&m).await.unwrap();
                        s.flush().await.unwrap();
                    }
                }
            });
        }
    });
}

/// Opens `n` outbound streams, then keeps driving the muxer in the background.
async fn open(mut muxer: StreamMuxerBox, n: usize) -> Vec<SubstreamBox> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            futures::future::poll_fn(|cx| muxer.poll_outbound_unpin(cx))
                .await
                .unwrap(),
        );
    }
    tokio::spawn(async move {
        futures::future::poll_fn(|cx| {
            loop {
                match muxer.poll_unpin(cx) {
                    std::task::Poll::Ready(Ok(_)) => continue,
                    std::task::Poll::Ready(Err(_)) => return std::task::Poll::Ready(()),
                    std::task::Poll::Pending => return std::task::Poll::Pending,
                }
            }
        })
        .await;
    });
    v
}

/// One connection under test: its echo stream and one fresh bulk stream per round.
struct Link {
    name: String,
    echo: SubstreamBox,
    bulk: Vec<SubstreamBox>,
    mib_per_s: Vec<f64>,
    /// CPU seconds of the whole process (both ends) per GiB moved.
    cpu_s_per_gib: Vec<f64>,
    rtts: Vec<Duration>,
}

/// CPU time of this process, every thread: both ends of a link, and the kernel's work
/// on their behalf (plus the idle links' timers, a little). Unlike wall time it does
/// not grow when the shared machine steals the cores.
fn cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(Duration::from)
        .expect("the process CPU clock")
}

impl Link {
    async fn new(
        name: String,
        server: StreamMuxerBox,
        client: StreamMuxerBox,
        rounds: usize,
    ) -> Link {
        serve(server);
        let mut streams = open(client, rounds + 1).await;
        let mut echo = streams.pop().unwrap();
        echo.write_all(b"E").await.unwrap();
        Link {
            name,
            echo,
            bulk: streams,
            mib_per_s: Vec::new(),
            cpu_s_per_gib: Vec::new(),
            rtts: Vec::new(),
        }
    }

    /// 200 warm-up round trips of 64 B, then 1000 timed.
    async fn round_trips(&mut self) {
        let mut m = [7u8; 64];
        for i in 0..1200 {
            let t = Instant::now();
            self.echo.write_all(&m).await.unwrap();
            self.echo.flush().await.unwrap();
            self.echo.read_exact(&mut m).await.unwrap();
            if i >= 200 {
                self.rtts.push(t.elapsed());
            }
        }
    }

    /// `mib` MiB on a fresh stream, timed until the server confirms the count.
    async fn bulk(&mut self, mib: usize) {
        let mut bulk = self.bulk.pop().unwrap();
        let chunk = vec![0xa5u8; 1 << 16];
        let total = (mib as u64) << 20;
        let t = Instant::now();
        let cpu = cpu_time();
        bulk.write_all(b"B").await.unwrap();
        let mut sent = 0u64;
        while sent < total {
            bulk.write_all(&chunk).await.unwrap();
            sent += chunk.len() as u64;
        }
        bulk.close().await.unwrap();
        let mut n = [0u8; 8];
        bulk.read_exact(&mut n).await.unwrap();
        assert_eq!(u64::from_le_bytes(n), total);
        self.mib_per_s.push(mib as f64 / t.elapsed().as_secs_f64());
        self.cpu_s_per_gib
            .push((cpu_time() - cpu).as_secs_f64() * 1024.0 / mib as f64);
    }
}

/// Each round's figure over the baseline's figure in the same round.
fn per_round(ours: &[f64], baseline: &[f64]) -> Vec<f64> {
    ours.iter().zip(baseline).map(|(w, t)| w / t).collect()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    // MiB per bulk transfer, and rounds: every transport once per round, in turn, so
    // the shared machine's slow spells fall on all of them alike.
    let mib = args.first().copied().unwrap_or(256);
    let rounds = args.get(1).copied().unwrap_or(5).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (s, c) = connect(
            tcp_transport(1),
            tcp_transport(2),
            "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        )
        .await;
        let mut links = vec![Link::new("tcp".into(), s, c, rounds).await];
        let mut overlays = Vec::new();
        for (mtu, inner_noise) in [(1420, false), (9000, false), (1420, true)] {
            let (server, o1) = wg(1, 2, mtu, inner_noise).await;
            let (client, o2) = wg(2, 1, mtu, inner_noise).await;
            overlays.push((o1, o2));
            let (s, c) = connect(server, client, "/ip4/127.0.0.1/udp/0".parse().unwrap()).await;
            let name = if inner_noise {
                format!("wg {mtu} + noise")
            } else {
                format!("wireguard {mtu}")
            };
            links.push(Link::new(name, s, c, rounds).await);
        }
        for _ in 0..rounds {
            for link in &mut links {
                link.round_trips().await;
                link.bulk(mib).await;
            }
        }

        println!(
            "one libp2p stream (yamux) on 127.0.0.1: {rounds} rounds of {mib} MiB bulk and 1000 round trips of 64 B per transport, in turn; medians"
        );
        println!("tcp: noise over TCP; wireguard: the node's overlay transport; + noise: noise inside the tunnel too");
        println!("cpu: CPU seconds of both ends per GiB moved (robust to a busy machine)");
        println!("transport         throughput    cpu/GiB   rtt median   rtt p99");
        let rtt = |l: &Link, q: usize| {
            let mut r = l.rtts.clone();
            r.sort();
            r[r.len() * q / 100].as_secs_f64()
        };
        for l in &links {
            println!(
                "{:<16} {:>8.1} MiB/s {:>7.2} s {:>9.1} µs {:>8.1} µs",
                l.name,
                median(&l.mib_per_s),
                median(&l.cpu_s_per_gib),
                rtt(l, 50) * 1e6,
                rtt(l, 99) * 1e6
            );
        }
        let tcp = &links[0];
        for l in &links[1..] {
            // The ratio of each round's pair, then the median: a slow spell during one
            // round cancels out.
            let ratios = per_round(&l.mib_per_s, &tcp.mib_per_s);
            let cpu = per_round(&l.cpu_s_per_gib, &tcp.cpu_s_per_gib);
            println!(
                "{} / tcp: throughput {:.2}x (rounds {:.2}..{:.2}), cpu per byte {:.2}x, rtt median {:.2}x",
                l.name,
                median(&ratios),
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0, f64::max),
                median(&cpu),
                rtt(l, 50) / rtt(tcp, 50)
            );
        }
    });
}
