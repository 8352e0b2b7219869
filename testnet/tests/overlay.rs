//! A validator of a testnet on the WireGuard transport is silent to strangers: random
//! datagrams, a handshake from an unknown key and a replayed handshake get no reply,
//! and it does not listen on TCP at its p2p address. The network keeps committing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use common::Net;
use pyralog_node::config::Transport;

/// Sends `datagram` to `to` from a fresh socket and returns what came back in `wait`.
fn probe_for(to: SocketAddr, datagram: &[u8], wait: Duration) -> Vec<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(datagram, to).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65_535];
    while let Ok((n, _)) = s.recv_from(&mut buf) {
        got.push(buf[..n].to_vec());
    }
    got
}

/// `probe_for` with time for a handshake (a Diffie-Hellman or two on a busy machine).
fn probe(to: SocketAddr, datagram: &[u8]) -> Vec<Vec<u8>> {
    probe_for(to, datagram, Duration::from_millis(700))
}

/// A well-formed WireGuard handshake initiation from `secret` to the key `to`.
fn initiation(secret: [u8; 32], to: [u8; 32]) -> Vec<u8> {
    let mut t = Tunn::new(
        x25519::StaticSecret::from(secret),
        x25519::PublicKey::from(to),
        None,
        None,
        1,
        None,
    );
    let mut buf = [0u8; 256];
    match t.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no initiation"),
    }
}

/// `GET` of a metrics URL (`http://127.0.0.1:P/metrics`).
fn scrape(url: &str) -> String {
    use std::io::{Read, Write};
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let mut s = TcpStream::connect(addr).unwrap();
    let req = format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Whether process `pid` holds a TCP socket listening on `port` (IPv4 or IPv6), read
/// from `/proc`: the listening sockets' inodes against the process's descriptors.
fn listens_on_tcp(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is ADDR:PORT in hex, st 0A is LISTEN, inode is field 9.
            let local_port = f[1].rsplit(':').next().unwrap();
            if u16::from_str_radix(local_port, 16).unwrap() == port && f[3] == "0A" {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|link| inodes.iter().any(|i| link.as_os_str() == i.as_str()))
}

fn wg_key(base64_key: &str) -> [u8; 32] {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(base64_key)
        .unwrap()
        .try_into()
        .unwrap()
}

#[test]
fn a_validator_is_silent_to_strangers() {
    let net = Net::up(4);
    let m = net.manifest();
    assert_eq!(m.transport, Transport::Wireguard);
    let node0 = &m.nodes[0];
    let p2p: SocketAddr = node0.p2p.parse().unwrap();
    let node0_wg = wg_key(node0.wg_public_key.as_deref().unwrap());
    let height = || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let c = pyralog_testnet::client(&node0.rpc).unwrap();
        rt.block_on(pyralog_testnet::height(&c)).unwrap()
    };
    let before = height();

    // node0 does not listen on TCP at its p2p port. Asked of the kernel rather than by a
    // connect: another test may hold a TCP socket with the same port number (node0's
    // port is free for UDP, not necessarily for TCP). Its RPC listener shows that the
    // check sees node0's TCP listeners.
    let pid = node0.pid.expect("node0 runs");
    let rpc: SocketAddr = node0.rpc.trim_start_matches("http://").parse().unwrap();
    assert!(
        listens_on_tcp(pid, rpc.port()),
        "node0's RPC listener not seen"
    );
    assert!(
        !listens_on_tcp(pid, p2p.port()),
        "node0 listens on TCP at its p2p port"
    );

    // Random datagrams, of WireGuard message sizes and others, typed or not.
    for len in [1usize, 4, 32, 64, 92, 148, 1000] {
        let mut junk: Vec<u8> = (0..len).map(|i| (i * 131 + len * 7) as u8).collect();
        let quick = Duration::from_millis(150);
        assert!(
            probe_for(p2p, &junk, quick).is_empty(),
            "junk of {len} bytes"
        );
        if len >= 4 {
            junk[..4].copy_from_slice(&1u32.to_le_bytes());
            assert!(
                probe_for(p2p, &junk, quick).is_empty(),
                "typed junk of {len} bytes"
            );
        }
    }

    // A well-formed initiation from a key nobody allowed.
    let stranger = pyralog_crypto::Keypair::generate().unwrap();
    let init = initiation(*stranger.x25519_secret(), node0_wg);
    assert!(probe(p2p, &init).is_empty(), "unknown key answered");

    // node1's key: the first initiation is answered (the probe can hear answers; node0
    // then also sends node1's traffic there until node1 is heard from again, which is
    // roaming working). The same bytes again, from elsewhere, are a replay: no answer.
    let node1_key =
        pyralog_crypto::keyfile::read_key_file(&m.nodes[1].home.join("node_key.json")).unwrap();
    let init = initiation(*node1_key.x25519_secret(), node0_wg);
    let answer = probe(p2p, &init);
    assert!(
        answer.first().is_some_and(|a| a.len() == 92 && a[0] == 2),
        "a valid initiation gets a handshake response"
    );
    assert!(
        probe(p2p, &init).is_empty(),
        "a replayed initiation was answered"
    );

    // The validators never noticed.
    std::thread::sleep(Duration::from_secs(2));
    assert!(height() > before + 3, "the chain stalled");

    // The metrics saw it all.
    let metrics = scrape(&node0.metrics);
    let value = |name: &str| -> f64 {
        common::metric(&metrics, name).unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    assert!(value("pyralog_wg_dropped_datagrams{reason=\"garbage\"}") >= 7.0);
    assert!(value("pyralog_wg_dropped_datagrams{reason=\"unknown_key\"}") >= 1.0);
    assert!(value("pyralog_wg_dropped_datagrams{reason=\"unauthenticated\"}") >= 1.0);
    assert_eq!(value("pyralog_wg_sessions"), 3.0);
    net.down();
}
