//! The underlay UDP socket.

use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Socket buffer size asked for; the kernel caps it at `net.core.{r,w}mem_max` unless forced.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Binds the forwarder's UDP socket, non-blocking, with large buffers.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
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
