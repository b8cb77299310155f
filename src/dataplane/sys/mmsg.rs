//! Batched datagram syscalls: `sendmmsg` and `recvmmsg` on a UDP socket, with header arrays owned
//! by the caller and reused across calls (no allocation per batch).

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};

/// Most messages one call may carry (the kernel's UIO_MAXIOV).
pub const MAX_BATCH: usize = 1024;

/// Reusable header arrays for up to `capacity` messages.
pub struct MmsgBatch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
}

// SAFETY: the raw pointers inside the header arrays are rewritten before every call and never
// dereferenced outside one; the arrays themselves are plain data.
unsafe impl Send for MmsgBatch {}

pub(crate) fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr_in(a: &libc::sockaddr_in) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(a.sin_addr.s_addr.to_ne_bytes().into(), u16::from_be(a.sin_port)))
}

impl MmsgBatch {
    /// Header arrays for `capacity` (≤ [`MAX_BATCH`]) messages.
    pub fn new(capacity: usize) -> Self {
        let n = capacity.clamp(1, MAX_BATCH);
        // SAFETY: mmsghdr, iovec and sockaddr_in are C structs for which all-zero bytes is a
        // valid value (null pointers, zero lengths).
        let zeroed = || unsafe { std::mem::zeroed::<libc::mmsghdr>() };
        Self {
            hdrs: (0..n).map(|_| zeroed()).collect(),
            // SAFETY: as above.
            iovs: (0..n).map(|_| unsafe { std::mem::zeroed::<libc::iovec>() }).collect(),
            // SAFETY: as above.
            addrs: (0..n).map(|_| unsafe { std::mem::zeroed::<libc::sockaddr_in>() }).collect(),
        }
    }

    /// Points header `i` at one buffer and, with `named`, at address slot `i`.
    fn set(&mut self, i: usize, base: *mut u8, len: usize, named: bool) {
        self.iovs[i] = libc::iovec { iov_base: base.cast(), iov_len: len };
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_iov = &mut self.iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
        if named {
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap_or(16);
        } else {
            h.msg_name = std::ptr::null_mut();
            h.msg_namelen = 0;
        }
    }

    /// Capacity in messages.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Sends `msgs` (each a datagram and an optional destination; `None` for a connected
    /// socket) with one `sendmmsg`. Returns how many were sent (a prefix of `msgs`).
    pub fn send(&mut self, sock: &impl AsFd, msgs: &[(&[u8], Option<SocketAddrV4>)]) -> io::Result<usize> {
        self.send_with(sock, msgs.len(), |i| msgs[i])
    }

    /// Sends `n` datagrams, the i-th being `msg(i)`, with one `sendmmsg` (no allocation).
    /// Returns how many were sent (a prefix).
    pub fn send_with<'a>(
        &mut self,
        sock: &impl AsFd,
        n: usize,
        msg: impl Fn(usize) -> (&'a [u8], Option<SocketAddrV4>),
    ) -> io::Result<usize> {
        let n = n.min(self.capacity());
        for i in 0..n {
            let (data, dst) = msg(i);
            if let Some(a) = dst {
                self.addrs[i] = sockaddr_in(a);
            }
            // The kernel only reads the buffer on send; the pointer is mutable by C's signature.
            self.set(i, data.as_ptr().cast_mut(), data.len(), dst.is_some());
        }
        let count = libc::c_uint::try_from(n).unwrap_or(0);
        // SAFETY: the first `n` headers point at iovecs and sockaddrs in `self` and at the
        // caller's buffers, all alive and unmoved for the duration of the call; the kernel only
        // reads them (and writes msg_len inside the headers).
        let rc = unsafe { libc::sendmmsg(sock.as_fd().as_raw_fd(), self.hdrs.as_mut_ptr(), count, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(rc).unwrap_or(0))
    }

    /// Receives up to `bufs.len()` datagrams with one non-blocking `recvmmsg`. Writes each
    /// datagram's length and source into `meta`. Returns how many arrived (`WouldBlock` if none).
    pub fn recv<B: AsMut<[u8]>>(
        &mut self,
        sock: &impl AsFd,
        bufs: &mut [B],
        meta: &mut [(usize, SocketAddr)],
    ) -> io::Result<usize> {
        let n = bufs.len().min(meta.len()).min(self.capacity());
        for (i, b) in bufs.iter_mut().take(n).enumerate() {
            let b = b.as_mut();
            self.set(i, b.as_mut_ptr(), b.len(), true);
        }
        let count = libc::c_uint::try_from(n).unwrap_or(0);
        // SAFETY: the first `n` headers point at writable buffers borrowed mutably from the caller
        // and at sockaddr storage in `self`, all alive for the call; the kernel writes at most
        // iov_len bytes into each buffer and msg_namelen bytes into each address.
        let rc = unsafe {
            libc::recvmmsg(
                sock.as_fd().as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                count,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = usize::try_from(rc).unwrap_or(0);
        for ((m, h), a) in meta.iter_mut().zip(&self.hdrs).zip(&self.addrs).take(got) {
            *m = (usize::try_from(h.msg_len).unwrap_or(0), from_sockaddr_in(a));
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn batch_round_trip_on_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(dst) = rx.local_addr().unwrap() else { panic!() };
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let msgs: Vec<(&[u8], Option<SocketAddrV4>)> = payloads.iter().map(|p| (p.as_slice(), Some(dst))).collect();
        let mut b = MmsgBatch::new(16);
        assert_eq!(b.send(&tx, &msgs).unwrap(), 10);
        let mut store = vec![vec![0u8; 64]; 16];
        let mut bufs: Vec<&mut [u8]> = store.iter_mut().map(|v| v.as_mut_slice()).collect();
        let mut meta = vec![(0usize, SocketAddr::from(([0, 0, 0, 0], 0))); 16];
        let mut got = 0;
        for _ in 0..100 {
            match b.recv(&rx, &mut bufs[got..], &mut meta[got..]) {
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
            if got == 10 {
                break;
            }
        }
        assert_eq!(got, 10);
        for i in 0..10 {
            assert_eq!(meta[i].0, 10 + i);
            assert_eq!(meta[i].1, tx.local_addr().unwrap());
            assert_eq!(&bufs[i][..meta[i].0], payloads[i].as_slice());
        }
    }
}
