//! One libp2p stream (noise + yamux) between two endpoints on 127.0.0.1, carried by the
//! WireGuard overlay or by plain TCP, measured in the same run: bulk throughput of one
//! stream and the round-trip time of a small request. Prints the ratio WG / TCP.
//!
//! `cargo bench -p pyralog-p2p --bench transport` (optional argument: MiB to send,
//! default 256).
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

async fn wg(seed: u8, peer: u8, mtu: usize) -> (Muxed, Overlay) {
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
    (upgrade(overlay.transport(), &identity_of(seed)), overlay)
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

struct Figures {
    mib_per_s: f64,
    rtt_median: Duration,
    rtt_p99: Duration,
}

async fn measure(server: StreamMuxerBox, client: StreamMuxerBox, mib: usize) -> Figures {
    serve(server);
    let mut streams = open(client, 2).await;
    let mut echo = streams.pop().unwrap();
    let mut bulk = streams.pop().unwrap();

    // Warm up the path, then round trips.
    echo.write_all(b"E").await.unwrap();
    let mut m = [7u8; 64];
    let mut rtts = Vec::new();
    for i in 0..2200 {
        let t = Instant::now();
        echo.write_all(&m).await.unwrap();
        echo.flush().await.unwrap();
        echo.read_exact(&mut m).await.unwrap();
        if i >= 200 {
            rtts.push(t.elapsed());
        }
    }
    rtts.sort();

    let chunk = vec![0xa5u8; 1 << 16];
    let total = (mib as u64) << 20;
    let t = Instant::now();
    bulk.write_all(b"B").await.unwrap();
    let mut sent = 0u64;
    while sent < total {
        bulk.write_all(&chunk).await.unwrap();
        sent += chunk.len() as u64;
    }
    bulk.close().await.unwrap();
    let mut n = [0u8; 8];
    bulk.read_exact(&mut n).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(u64::from_le_bytes(n), total);
    Figures {
        mib_per_s: mib as f64 / secs,
        rtt_median: rtts[rtts.len() / 2],
        rtt_p99: rtts[rtts.len() * 99 / 100],
    }
}

fn main() {
    let mib: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(256);
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
        let tcp = measure(s, c, mib).await;

        let mut wgs = Vec::new();
        for mtu in [1420, 9000] {
            let (server, _o1) = wg(1, 2, mtu).await;
            let (client, _o2) = wg(2, 1, mtu).await;
            let (s, c) = connect(server, client, "/ip4/127.0.0.1/udp/0".parse().unwrap()).await;
            wgs.push((mtu, measure(s, c, mib).await));
        }

        println!("one libp2p stream (noise + yamux) on 127.0.0.1, {mib} MiB bulk, 2000 round trips of 64 B");
        println!("transport         throughput   rtt median   rtt p99");
        let row = |name: &str, f: &Figures| {
            println!(
                "{name:<16} {:>8.1} MiB/s {:>9.1} µs {:>8.1} µs",
                f.mib_per_s,
                f.rtt_median.as_secs_f64() * 1e6,
                f.rtt_p99.as_secs_f64() * 1e6
            )
        };
        row("tcp", &tcp);
        for (mtu, f) in &wgs {
            row(&format!("wireguard {mtu}"), f);
        }
        for (mtu, f) in &wgs {
            println!(
                "wireguard (mtu {mtu}) / tcp: throughput {:.2}x, rtt median {:.2}x",
                f.mib_per_s / tcp.mib_per_s,
                f.rtt_median.as_secs_f64() / tcp.rtt_median.as_secs_f64()
            );
        }
    });
}
