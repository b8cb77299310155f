//! Batched datagram syscalls: `sendmmsg` and `recvmmsg` on a UDP socket, with header arrays owned
//! by the caller and reused across calls (no allocation per batch).

use super::sockaddr::{self, RawAddr};
use super::udp::RecvMeta;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};

/// Most messages one call may carry (the kernel's UIO_MAXIOV).
pub const MAX_BATCH: usize = 1024;

/// Reusable header arrays for up to `capacity` messages.
pub struct MmsgBatch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<RawAddr>,
    /// Control messages of [`MmsgBatch::send_gathered`], one per message, grown on first use.
    cmsgs: Vec<SegmentCmsg>,
}

// SAFETY: the raw pointers inside the header arrays are rewritten before every call and never
// dereferenced outside one; the arrays themselves are plain data.
unsafe impl Send for MmsgBatch {}

impl MmsgBatch {
    /// Header arrays for `capacity` (≤ [`MAX_BATCH`]) messages.
    pub fn new(capacity: usize) -> Self {
        let n = capacity.clamp(1, MAX_BATCH);
        // SAFETY: mmsghdr and iovec are C structs for which all-zero bytes is a valid value
        // (null pointers, zero lengths).
        let zeroed = || unsafe { std::mem::zeroed::<libc::mmsghdr>() };
        Self {
            hdrs: (0..n).map(|_| zeroed()).collect(),
            // SAFETY: as above.
            iovs: (0..n).map(|_| unsafe { std::mem::zeroed::<libc::iovec>() }).collect(),
            addrs: (0..n).map(|_| RawAddr::zeroed()).collect(),
            cmsgs: Vec::new(),
        }
    }

    /// Points header `i` at one buffer and, with `name_len`, at address slot `i` (that many bytes
    /// of it).
    fn set(&mut self, i: usize, base: *mut u8, len: usize, name_len: Option<libc::socklen_t>) {
        self.iovs[i] = libc::iovec { iov_base: base.cast(), iov_len: len };
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_iov = &mut self.iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
        match name_len {
            Some(n) => {
                h.msg_name = self.addrs[i].as_mut_ptr();
                h.msg_namelen = n;
            }
            None => {
                h.msg_name = std::ptr::null_mut();
                h.msg_namelen = 0;
            }
        }
    }

    /// Capacity in messages.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Sends `msgs` (each a datagram and an optional destination; `None` for a connected
    /// socket) with one `sendmmsg`. Returns how many were sent (a prefix of `msgs`).
    pub fn send(&mut self, sock: &impl AsFd, msgs: &[(&[u8], Option<SocketAddr>)]) -> io::Result<usize> {
        self.send_with(sock, msgs.len(), |i| msgs[i])
    }

    /// Sends `n` datagrams, the i-th being `msg(i)`, with one `sendmmsg` (no allocation).
    /// Returns how many were sent (a prefix).
    pub fn send_with<'a>(
        &mut self,
        sock: &impl AsFd,
        n: usize,
        msg: impl Fn(usize) -> (&'a [u8], Option<SocketAddr>),
    ) -> io::Result<usize> {
        let n = n.min(self.capacity());
        for i in 0..n {
            let (data, dst) = msg(i);
            let name_len = dst.map(|a| self.addrs[i].set(a));
            // The kernel only reads the buffer on send; the pointer is mutable by C's signature.
            self.set(i, data.as_ptr().cast_mut(), data.len(), name_len);
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
    /// datagram's length and source into `meta` (one datagram each: `stride` is its length).
    /// Returns how many arrived (`WouldBlock` if none).
    pub fn recv<B: AsMut<[u8]>>(
        &mut self,
        sock: &impl AsFd,
        bufs: &mut [B],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        let n = bufs.len().min(meta.len()).min(self.capacity());
        for (i, b) in bufs.iter_mut().take(n).enumerate() {
            let b = b.as_mut();
            self.set(i, b.as_mut_ptr(), b.len(), Some(sockaddr::capacity()));
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
            let len = usize::try_from(h.msg_len).unwrap_or(0);
            *m = RecvMeta { len, from: a.get().unwrap_or(sockaddr::UNKNOWN_SENDER), stride: len.max(1) };
        }
        Ok(got)
    }
}

/// One message of [`MmsgBatch::send_gathered`]: the bytes gathered from `parts` go to `to`; with
/// `segment`, the kernel cuts them into datagrams of that size, the last one shorter
/// (`UDP_SEGMENT`); without, they are one datagram.
#[derive(Debug, Clone, Copy)]
pub struct Gathered<'a> {
    /// The message's pieces, in order.
    pub parts: &'a [IoSlice<'a>],
    /// The destination.
    pub to: SocketAddr,
    /// Bytes per datagram, for a GSO send.
    pub segment: Option<u16>,
}

/// Control-message space for one `UDP_SEGMENT` (`CMSG_SPACE(sizeof(u16))` = 24 on 64-bit),
/// as u64s so that the `cmsghdr` inside is aligned.
pub type SegmentCmsg = [u64; 4];

/// Points `h` at a `UDP_SEGMENT` control message of `segment` bytes written into `ctrl` (a GSO
/// send), or at none. `ctrl` must stay where it is until the kernel has read `h`.
pub fn set_segment(h: &mut libc::msghdr, ctrl: &mut SegmentCmsg, segment: Option<u16>) {
    let Some(size) = segment else {
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        return;
    };
    let space = std::mem::size_of::<SegmentCmsg>();
    *ctrl = [0; 4];
    h.msg_control = ctrl.as_mut_ptr().cast();
    h.msg_controllen = space;
    // SAFETY: msg_control points at `space` (32) bytes, aligned for cmsghdr, owned by the caller
    // and zeroed; CMSG_SPACE(2) = 24 ≤ 32, so CMSG_FIRSTHDR is non-null and the header and its 2
    // data bytes lie inside that buffer.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2).try_into().unwrap_or_default();
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size);
        h.msg_controllen = libc::CMSG_SPACE(2).try_into().unwrap_or(space);
    }
}

impl MmsgBatch {
    /// Sends `msgs` with one `sendmmsg`, each message gathered from its parts and, with a segment
    /// size, cut by the kernel (one GSO send per message). Returns how many messages were sent (a
    /// prefix); an error means the first one failed.
    pub fn send_gathered(&mut self, sock: &impl AsFd, msgs: &[Gathered<'_>]) -> io::Result<usize> {
        let n = msgs.len().min(self.capacity());
        if self.cmsgs.len() < n {
            self.cmsgs.resize(n, [0; 4]);
        }
        for (i, m) in msgs.iter().take(n).enumerate() {
            let name_len = self.addrs[i].set(m.to);
            let name = self.addrs[i].as_mut_ptr();
            let h = &mut self.hdrs[i].msg_hdr;
            // IoSlice is ABI-compatible with iovec on Unix; the kernel only reads the pieces.
            h.msg_iov = m.parts.as_ptr().cast::<libc::iovec>().cast_mut();
            h.msg_iovlen = m.parts.len();
            h.msg_name = name;
            h.msg_namelen = name_len;
            h.msg_flags = 0;
            set_segment(h, &mut self.cmsgs[i], m.segment);
        }
        let count = libc::c_uint::try_from(n).unwrap_or(0);
        // SAFETY: the first `n` headers point at the callers' iovec arrays (alive for the call,
        // borrowed through `msgs`), at sockaddrs and control buffers in `self`; the kernel only
        // reads them (and writes msg_len inside the headers).
        let rc = unsafe { libc::sendmmsg(sock.as_fd().as_raw_fd(), self.hdrs.as_mut_ptr(), count, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(rc).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn batch_round_trip_on_loopback() {
        round_trip("127.0.0.1:0");
        round_trip("[::1]:0");
    }

    fn round_trip(local: &str) {
        let rx = UdpSocket::bind(local).unwrap();
        let tx = UdpSocket::bind(local).unwrap();
        let dst = rx.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let msgs: Vec<(&[u8], Option<SocketAddr>)> = payloads.iter().map(|p| (p.as_slice(), Some(dst))).collect();
        let mut b = MmsgBatch::new(16);
        assert_eq!(b.send(&tx, &msgs).unwrap(), 10);
        let mut store = vec![vec![0u8; 64]; 16];
        let mut bufs: Vec<&mut [u8]> = store.iter_mut().map(|v| v.as_mut_slice()).collect();
        let mut meta = vec![RecvMeta::EMPTY; 16];
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
            assert_eq!(meta[i].len, 10 + i);
            assert_eq!(meta[i].from, tx.local_addr().unwrap());
            assert_eq!(&bufs[i][..meta[i].len], payloads[i].as_slice());
        }
    }
}
