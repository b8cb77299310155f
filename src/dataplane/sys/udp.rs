//! The underlay UDP socket.

use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Socket buffer size asked for; the kernel caps it at `net.core.{r,w}mem_max` unless forced.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Binds the forwarder's UDP socket, non-blocking, with large buffers.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    bind_with(addr, false)
}

/// [`bind`]; with `reuse_port`, one of a `SO_REUSEPORT` group: every socket of the group binds the
/// same address and the kernel spreads datagrams over them by a hash of the 4-tuple, so one
/// sender's datagrams from one port always reach one socket.
pub fn bind_with(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    // Root can exceed rmem_max with SO_*BUFFORCE; fall back to the capped option otherwise.
    if setsockopt(&s, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        s.set_recv_buffer_size(SOCKET_BUFFER)?;
    }
    if setsockopt(&s, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        s.set_send_buffer_size(SOCKET_BUFFER)?;
    }
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// The sockets one worker sends from: one (flannel's one source port per worker), or several,
/// each inner flow keeping one of them (see [`TxPool::for_flow`]).
#[derive(Debug)]
pub struct TxPool {
    sockets: Vec<UdpSocket>,
}

impl TxPool {
    /// A pool of one: `sock` itself (flannel's one port).
    pub fn one(sock: UdpSocket) -> Self {
        Self { sockets: vec![sock] }
    }

    /// A pool of `n` (at least one) sockets bound to `ip`, on ports the kernel picks.
    pub fn bind(ip: std::net::IpAddr, n: usize) -> io::Result<Self> {
        let sockets = (0..n.max(1)).map(|_| bind(SocketAddr::new(ip, 0))).collect::<io::Result<Vec<_>>>()?;
        Ok(Self { sockets })
    }

    /// How many sockets (source ports) the pool has.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// The index of the socket of the flow whose hash is `flow`: the same for every packet of
    /// the flow, so that its datagrams leave from one port, in order, and a peer's `SO_REUSEPORT`
    /// or RSS hash keeps them on one of its workers.
    pub fn index(&self, flow: u32) -> usize {
        usize::try_from(flow).unwrap_or(0) % self.sockets.len()
    }

    /// Socket `i` (as [`TxPool::index`] gives it; the first for any other).
    pub fn get(&self, i: usize) -> &UdpSocket {
        self.sockets.get(i).unwrap_or(&self.sockets[0])
    }

    /// The socket of the flow whose hash is `flow`.
    pub fn for_flow(&self, flow: u32) -> &UdpSocket {
        self.get(self.index(flow))
    }

    /// Every socket.
    pub fn iter(&self) -> impl Iterator<Item = &UdpSocket> {
        self.sockets.iter()
    }
}

/// Asks the kernel to hand over coalesced datagrams (`UDP_GRO`): one receive then returns many
/// datagrams of one size back to back, with the size in a control message.
pub fn enable_gro(sock: &UdpSocket) -> io::Result<()> {
    setsockopt(sock, sockopt::UdpGroSegment, &true).map_err(io::Error::from)
}

/// Whether the kernel has UDP GSO (`UDP_SEGMENT`, Linux ≥ 4.18): setting the socket's default
/// segment size to none succeeds only where it does.
pub fn has_gso(sock: &UdpSocket) -> bool {
    setsockopt(sock, sockopt::UdpGsoSegment, &0).is_ok()
}

/// Sends the datagrams gathered from `iov` to `dst` with one `sendmsg`. With `segment`, the
/// kernel cuts the gathered bytes into datagrams of that size, the last one shorter
/// (`UDP_SEGMENT`, ≤ 64 segments); without, it is one datagram.
pub fn send_gso(sock: &UdpSocket, iov: &[io::IoSlice<'_>], segment: Option<u16>, dst: SocketAddr) -> io::Result<usize> {
    use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
    use std::os::fd::AsRawFd;
    let addr = SockaddrStorage::from(dst);
    let r = match segment {
        Some(seg) => {
            sendmsg(sock.as_raw_fd(), iov, &[ControlMessage::UdpGsoSegments(&seg)], MsgFlags::empty(), Some(&addr))
        }
        None => sendmsg(sock.as_raw_fd(), iov, &[], MsgFlags::empty(), Some(&addr)),
    };
    r.map_err(io::Error::from)
}

/// Most datagrams one `UDP_SEGMENT` send carries and one `UDP_GRO` receive returns (the kernel's
/// `UDP_MAX_SEGMENTS` on the kernels weft runs on).
pub const MAX_SEGMENTS: usize = 64;

/// What one receive got: `len` bytes from `from`, datagrams of `stride` bytes back to back (the
/// last may be shorter); one datagram when the kernel coalesced none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes received.
    pub len: usize,
    /// The sender.
    pub from: SocketAddr,
    /// Bytes per datagram (at least 1).
    pub stride: usize,
}

impl RecvMeta {
    /// Nothing received yet: a placeholder for a caller's array.
    pub const EMPTY: Self = Self { len: 0, from: super::sockaddr::UNKNOWN_SENDER, stride: 1 };

    /// How many datagrams it holds.
    pub fn datagrams(&self) -> usize {
        self.len.div_ceil(self.stride).max(1)
    }
}

/// Receives into `buf` without blocking. `cmsg` is caller-owned control-message space (see
/// [`gro_cmsg_space`]).
pub fn recv_gro(sock: &UdpSocket, buf: &mut [u8], cmsg: &mut [u8]) -> io::Result<RecvMeta> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage, recvmsg};
    use std::os::fd::AsRawFd;
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(sock.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    let mut seg = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::UdpGroSegments(s) = c {
                seg = usize::try_from(s).ok().filter(|s| *s > 0);
            }
        }
    }
    let from = msg
        .address
        .and_then(|a| match a.family() {
            Some(nix::sys::socket::AddressFamily::Inet) => a.as_sockaddr_in().map(|a| SocketAddr::from(*a)),
            Some(nix::sys::socket::AddressFamily::Inet6) => a.as_sockaddr_in6().map(|a| SocketAddr::from(*a)),
            _ => None,
        })
        .unwrap_or(super::sockaddr::UNKNOWN_SENDER);
    Ok(RecvMeta { len: msg.bytes, from, stride: seg.unwrap_or(msg.bytes).max(1) })
}

/// Control-message space for [`recv_gro`].
pub fn gro_cmsg_space() -> Vec<u8> {
    nix::cmsg_space!(i32)
}
