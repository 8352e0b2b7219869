//! The libp2p side of the overlay: a [`Transport`] whose connections are overlay TCP
//! streams.
//!
//! Addresses are `/ip4/A/udp/P` or `/ip6/A/udp/P` (no `quic-v1`, so no other transport
//! claims them): the UDP endpoint of a node's WireGuard socket. A dial needs the peer id
//! (`.../p2p/<id>`, which the swarm appends), because the peer id names the WireGuard key
//! to encrypt to.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, Ready};
use futures::{AsyncRead, AsyncWrite, FutureExt};
use libp2p::core::multiaddr::Protocol;
use libp2p::core::transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent};
use libp2p::{Multiaddr, PeerId};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use super::Shared;

/// A libp2p transport over the WireGuard overlay; [`authenticated`] upgrades it for the
/// swarm.
pub struct WgTransport {
    shared: Arc<Shared>,
    listener: Option<(ListenerId, Multiaddr, bool)>,
    /// A removed listener, reported as closed on the next poll.
    closed: Option<ListenerId>,
}

impl WgTransport {
    pub(crate) fn new(shared: Arc<Shared>) -> WgTransport {
        WgTransport {
            shared,
            listener: None,
            closed: None,
        }
    }
}

/// Splits `/ip4|ip6/A/udp/P[/p2p/ID]` into the socket address and the peer id.
pub(crate) fn parse_addr(addr: &Multiaddr) -> Option<(SocketAddr, Option<PeerId>)> {
    let mut it = addr.iter();
    let ip: IpAddr = match it.next()? {
        Protocol::Ip4(a) => a.into(),
        Protocol::Ip6(a) => a.into(),
        _ => return None,
    };
    let port = match it.next()? {
        Protocol::Udp(p) => p,
        _ => return None,
    };
    let peer = match it.next() {
        None => None,
        Some(Protocol::P2p(id)) => Some(id),
        Some(_) => return None,
    };
    if it.next().is_some() {
        return None;
    }
    Some((SocketAddr::new(ip, port), peer))
}

impl Transport for WgTransport {
    type Output = WgStream;
    type Error = io::Error;
    type ListenerUpgrade = Ready<Result<WgStream, io::Error>>;
    type Dial = BoxFuture<'static, Result<WgStream, io::Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<io::Error>> {
        let Some((want, None)) = parse_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let mut st = self.shared.lock();
        let bound = st.local_addr;
        // The UDP socket is bound when the overlay starts; listening means accepting
        // overlay connections on it.
        let same = want.port() == bound.port() || want.port() == 0;
        if !same || (!want.ip().is_unspecified() && want.ip() != bound.ip()) {
            return Err(TransportError::Other(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("the WireGuard socket is bound to {bound}, not {want}"),
            )));
        }
        if self.listener.is_some() || !st.listen(id) {
            return Err(TransportError::Other(io::Error::new(
                io::ErrorKind::AddrInUse,
                "the WireGuard transport listens on one address",
            )));
        }
        drop(st);
        self.listener = Some((id, crate::udp_multiaddr(bound), false));
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        if self.listener.as_ref().is_some_and(|(l, ..)| *l == id) && self.shared.lock().unlisten(id)
        {
            self.listener = None;
            self.closed = Some(id);
            self.shared.wake.notify_one();
            return true;
        }
        false
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<io::Error>> {
        let Some((endpoint, peer)) = parse_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let Some(peer) = peer else {
            return Err(TransportError::Other(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{addr}: a WireGuard dial needs the peer id (/p2p/<id>)"),
            )));
        };
        self.shared.alive().map_err(TransportError::Other)?;
        let handle = self
            .shared
            .lock()
            .connect(&peer, endpoint)
            .map_err(TransportError::Other)?;
        let stream = WgStream {
            shared: self.shared.clone(),
            handle,
        };
        self.shared.wake.notify_one();
        Ok(async move {
            futures::future::poll_fn(|cx| stream.poll_established(cx)).await?;
            Ok(stream)
        }
        .boxed())
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        if let Some(listener_id) = self.closed.take() {
            return Poll::Ready(TransportEvent::ListenerClosed {
                listener_id,
                reason: Ok(()),
            });
        }
        let Some((id, addr, announced)) = self.listener.as_mut() else {
            return Poll::Pending;
        };
        if !*announced {
            *announced = true;
            return Poll::Ready(TransportEvent::NewAddress {
                listener_id: *id,
                listen_addr: addr.clone(),
            });
        }
        let (id, local_addr) = (*id, addr.clone());
        let mut st = self.shared.lock();
        let Some(l) = st.listener_mut() else {
            return Poll::Pending;
        };
        match l.accepted.pop_front() {
            Some(a) => {
                drop(st);
                let mut send_back_addr = a
                    .endpoint
                    .map(crate::udp_multiaddr)
                    .unwrap_or_else(Multiaddr::empty);
                send_back_addr.push(Protocol::P2p(a.peer));
                Poll::Ready(TransportEvent::Incoming {
                    listener_id: id,
                    upgrade: futures::future::ready(Ok(WgStream {
                        shared: self.shared.clone(),
                        handle: a.handle,
                    })),
                    local_addr,
                    send_back_addr,
                })
            }
            None => {
                l.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// One overlay TCP connection, as libp2p reads and writes it.
pub struct WgStream {
    shared: Arc<Shared>,
    handle: SocketHandle,
}

impl WgStream {
    fn poll_established(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        let s = st.socket(self.handle);
        match s.state() {
            tcp::State::Established => {
                s.set_timeout(None);
                Poll::Ready(Ok(()))
            }
            tcp::State::SynSent | tcp::State::SynReceived => {
                s.register_send_waker(cx.waker());
                Poll::Pending
            }
            _ => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "overlay connection refused or timed out (no WireGuard handshake?)",
            ))),
        }
    }
}

impl AsyncRead for WgStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.shared.alive()?;
        let mut st = self.shared.lock();
        let s = st.socket(self.handle);
        if s.can_recv() {
            let n = s
                .recv_slice(buf)
                .map_err(|e| io::Error::new(io::ErrorKind::ConnectionReset, e.to_string()))?;
            drop(st);
            // The window opened: let the actor tell the peer.
            self.shared.wake.notify_one();
            return Poll::Ready(Ok(n));
        }
        if !s.may_recv() {
            return Poll::Ready(match s.state() {
                // Aborted (reset, timed out or torn down on expiry).
                tcp::State::Closed => Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "overlay connection reset",
                )),
                _ => Ok(0),
            });
        }
        s.register_recv_waker(cx.waker());
        Poll::Pending
    }
}

impl AsyncWrite for WgStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.shared.alive()?;
        let mut st = self.shared.lock();
        let s = st.socket(self.handle);
        if !s.may_send() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "overlay connection closed",
            )));
        }
        if s.can_send() {
            let n = s
                .send_slice(buf)
                .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))?;
            // Segment, encrypt and send it now, in this task.
            self.shared.egress(st);
            return Poll::Ready(Ok(n));
        }
        s.register_send_waker(cx.waker());
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A write sends what the window allows at once; the rest leaves as ACKs open
        // the window.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.lock().socket(self.handle).close();
        self.shared.wake.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for WgStream {
    fn drop(&mut self) {
        self.shared.lock().orphan(self.handle);
        self.shared.wake.notify_one();
    }
}

/// The overlay transport as libp2p's swarm takes it: a connection's peer id is the one
/// whose WireGuard tunnel carries it, and yamux multiplexes it (negotiated with
/// multistream-select, so a node speaking anything else fails the upgrade cleanly).
///
/// There is no noise handshake inside the tunnel. The tunnel already authenticates the
/// peer (its WireGuard key is the x25519 form of its node key), encrypts and
/// authenticates every byte with ChaCha20-Poly1305, and the overlay delivers a packet
/// only from the sending peer's own overlay address, so an overlay TCP connection names
/// its peer as surely as a noise handshake would. A second layer of the same encryption
/// cost a fifth of the throughput (docs/NETWORK.md).
pub fn authenticated(
    transport: WgTransport,
) -> libp2p::core::transport::Boxed<(PeerId, libp2p::core::muxing::StreamMuxerBox)> {
    transport.and_then(tunnel_upgrade).boxed()
}

async fn tunnel_upgrade(
    stream: WgStream,
    endpoint: libp2p::core::ConnectedPoint,
) -> io::Result<(PeerId, libp2p::core::muxing::StreamMuxerBox)> {
    use libp2p::core::ConnectedPoint;
    use libp2p::core::upgrade::{
        InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo, Version,
    };
    // The transport puts the tunnel's peer in the listener's send-back address and
    // refuses a dial without one, so this names the peer at the other end of the tunnel.
    let peer = match &endpoint {
        ConnectedPoint::Listener { send_back_addr, .. } => crate::peer_in(send_back_addr),
        ConnectedPoint::Dialer { address, .. } => crate::peer_in(address),
    }
    .ok_or_else(|| io::Error::other("an overlay connection without its tunnel's peer id"))?;
    let yamux = libp2p::yamux::Config::default();
    let protocols = yamux.protocol_info();
    let negotiation = |e: multistream_select::NegotiationError| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{peer}: muxer negotiation failed: {e}"),
        )
    };
    let muxer = if endpoint.is_listener() {
        let (info, io) = multistream_select::listener_select_proto(stream, protocols)
            .await
            .map_err(negotiation)?;
        yamux.upgrade_inbound(io, info).await?
    } else {
        // Not V1Lazy: that holds the proposal back until the dialer first writes, and a
        // yamux dialer may write nothing for a while, leaving the listener's upgrade
        // pending. One round trip at connection set-up is cheap.
        let (info, io) = multistream_select::dialer_select_proto(stream, protocols, Version::V1)
            .await
            .map_err(negotiation)?;
        yamux.upgrade_outbound(io, info).await?
    };
    Ok((peer, libp2p::core::muxing::StreamMuxerBox::new(muxer)))
}
