//! io_uring for the `uring` engine: one ring per direction, its packet memory registered once.
//!
//! A [`PacketRing`] owns `slots` packet buffers of `slot_len` bytes in one allocation. That memory
//! is registered twice with the ring: as a fixed buffer (so a TUN write is a `WRITE_FIXED` with no
//! page pinning per call) and as a ring of provided buffers (so one multishot request — a
//! `READ_MULTISHOT` on the TUN or a multishot `RECVMSG` on the socket — fills buffer after buffer
//! without being submitted again). The TUN and the socket are registered files.
//!
//! Every slot is in exactly one place: provided to the kernel (it may write it at any time),
//! lent to the kernel by a send or write in flight (it reads it), or held by the engine. The
//! engine can only touch a slot it holds ([`PacketRing::slot`] checks), and the ring takes a
//! slot back only through [`PacketRing::give_back`], so kernel and user never share a byte.
//!
//! Dropping the ring cancels what is in flight and waits for it; if the kernel does not finish in
//! time, the packet memory is leaked rather than freed under it.

use super::sockaddr::{self, RawAddr};
use io_uring::{IoUring, cqueue, opcode, types};
use std::alloc::Layout;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// The TUN queue's index among the registered files.
const TUN: types::Fixed = types::Fixed(0);
/// The receiving socket's index among the registered files.
const SOCK: types::Fixed = types::Fixed(1);
/// The sending socket's index among the registered files.
const TX: types::Fixed = types::Fixed(2);
/// The provided-buffer group of the ring (one group per ring).
const GROUP: u16 = 0;
/// Page size the buffer ring must be aligned to.
const PAGE: usize = 4096;
/// Bytes the kernel writes in front of a multishot recvmsg payload: `io_uring_recvmsg_out`
/// (16) and the fixed-size name field. No control messages are asked for.
pub const RECVMSG_PREFIX: usize = 16 + NAME_LEN;
/// The name field: room for a `sockaddr_in6` (28), rounded up so that the payload starts
/// 16-byte aligned (at 48), as it started 32-byte aligned when the field held a `sockaddr_in`.
const NAME_LEN: usize = sockaddr::CAPACITY.next_multiple_of(16);

/// What a completion was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The multishot TUN read produced a packet (or ended).
    TunRead,
    /// The multishot socket receive produced a datagram (or ended).
    UdpRecv,
    /// A send of one datagram finished.
    UdpSend,
    /// A TUN write of one packet finished.
    TunWrite,
    /// A cancellation finished.
    Cancel,
}

impl Op {
    fn code(self) -> u64 {
        match self {
            Self::TunRead => 1,
            Self::UdpRecv => 2,
            Self::UdpSend => 3,
            Self::TunWrite => 4,
            Self::Cancel => 5,
        }
    }
    fn from_code(c: u64) -> Option<Self> {
        Some(match c {
            1 => Self::TunRead,
            2 => Self::UdpRecv,
            3 => Self::UdpSend,
            4 => Self::TunWrite,
            5 => Self::Cancel,
            _ => return None,
        })
    }
    fn user_data(self, slot: usize) -> u64 {
        self.code() << 32 | crate::dataplane::engine::u64_len(slot)
    }
}

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// What it was.
    pub op: Op,
    /// The slot it filled or lent, now held by the engine (None when no buffer was used).
    pub slot: Option<usize>,
    /// The syscall-style result: bytes, or a negated errno.
    pub result: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Provided,
    Lent,
    Engine,
}

/// The page-aligned memory of a provided-buffer ring.
struct BufRingMem {
    ptr: *mut types::BufRingEntry,
    layout: Layout,
}

/// A ring with its registered packet memory, for one direction of one worker.
pub struct PacketRing {
    /// Dropped by hand, before the memory it may write (see Drop).
    ring: std::mem::ManuallyDrop<IoUring>,
    mem: Box<[u8]>,
    slot_len: usize,
    /// Where in a slot a provided buffer starts (headroom for outer headers on egress).
    provide_at: usize,
    bufs: BufRingMem,
    mask: u16,
    tail: u16,
    owner: Vec<Owner>,
    dest: Box<[RawAddr]>,
    recv_hdr: Box<libc::msghdr>,
    multishot: Option<Op>,
    tun_fd: RawFd,
    lent: usize,
    provided: usize,
}

// SAFETY: the raw pointers (buffer ring, msghdr) point into memory this value owns; the ring is
// used by one thread at a time (it is moved, never shared).
unsafe impl Send for PacketRing {}

impl PacketRing {
    /// A ring over `[tun, receiving socket, sending socket]` with `slots` (a power of two,
    /// ≤ 32 768) buffers of `slot_len` bytes, all provided to the kernel at `provide_at` within
    /// each slot. Fails with `Unsupported` when the kernel lacks what the engine needs
    /// (Linux ≥ 6.7).
    pub fn new(fds: [RawFd; 3], slots: u16, slot_len: usize, provide_at: usize) -> io::Result<Self> {
        if !slots.is_power_of_two() || slot_len <= provide_at || u32::try_from(slot_len).is_err() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad io_uring slot geometry"));
        }
        let n = usize::from(slots);
        let entries = u32::from(slots) * 2;
        // DEFER_TASKRUN runs completions only when this thread enters the ring: no interrupts
        // of the forwarding loop, and a whole burst handled per enter. Older kernels lack it.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            // Flags pending completion work, so that a non-waiting submit also reaps it.
            .setup_taskrun_flag()
            .setup_cqsize(entries * 4)
            .build(entries)
            .or_else(|_| IoUring::builder().setup_cqsize(entries * 4).build(entries))?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [opcode::ReadMulti::CODE, opcode::RecvMsgMulti::CODE, opcode::Send::CODE, opcode::WriteFixed::CODE]
        {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring opcode {code} is not supported (the uring engine needs Linux ≥ 6.7)"),
                ));
            }
        }
        ring.submitter().register_files(&fds)?;
        let mut mem = vec![0u8; n * slot_len].into_boxed_slice();
        let iov = libc::iovec { iov_base: mem.as_mut_ptr().cast(), iov_len: mem.len() };
        // SAFETY: `mem` is owned by the returned value and never reallocated; the ring (dropped
        // first, see Drop) is the only user of the registration.
        unsafe { ring.submitter().register_buffers(&[iov])? };
        let layout = Layout::from_size_align(n * std::mem::size_of::<types::BufRingEntry>(), PAGE)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size (slots ≥ 1).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        if ptr.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let bufs = BufRingMem { ptr, layout };
        // SAFETY: `bufs` is page-aligned, zeroed, `slots` entries long and owned by the returned
        // value, which unregisters nothing explicitly but drops the ring before freeing it.
        unsafe { ring.submitter().register_buf_ring_with_flags(ptr as u64, slots, GROUP, 0)? };
        let dest = vec![RawAddr::zeroed(); n].into_boxed_slice();
        // SAFETY: msghdr is a C struct for which all-zero bytes are valid.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = libc::socklen_t::try_from(NAME_LEN).unwrap_or_else(|_| sockaddr::capacity());
        let mut r = Self {
            ring: std::mem::ManuallyDrop::new(ring),
            mem,
            slot_len,
            provide_at,
            bufs,
            mask: slots - 1,
            tail: 0,
            owner: vec![Owner::Engine; n],
            dest,
            recv_hdr,
            multishot: None,
            tun_fd: fds[0],
            lent: 0,
            provided: 0,
        };
        for s in 0..n {
            r.give_back(s);
        }
        Ok(r)
    }

    /// Buffers provided to the kernel right now.
    pub fn provided(&self) -> usize {
        self.provided
    }

    /// Whether the multishot request is armed.
    pub fn armed(&self) -> bool {
        self.multishot.is_some()
    }

    /// Arms the multishot request of `op` ([`Op::TunRead`] or [`Op::UdpRecv`]); it stays armed
    /// until a completion without `more` (no buffer left, an error, a cancel).
    pub fn arm(&mut self, op: Op) -> io::Result<()> {
        let entry = match op {
            // The buffer's length comes from the provided buffer (len 0). The plain fd, not the
            // registered one: on Linux 6.18 a multishot read of a registered TUN file fails with
            // EBADFD.
            Op::TunRead => opcode::ReadMulti::new(types::Fd(self.tun_fd), 0, GROUP).build(),
            Op::UdpRecv => {
                opcode::RecvMsgMulti::new(SOCK, &*self.recv_hdr, GROUP).flags(libc::MSG_TRUNC as u32).build()
            }
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a multishot op")),
        };
        self.push(entry.user_data(op.user_data(0)))?;
        self.multishot = Some(op);
        Ok(())
    }

    /// Lends `slot[range]` to the kernel as one datagram to `to`; the slot comes back with the
    /// [`Op::UdpSend`] completion.
    pub fn send(&mut self, slot: usize, range: Range<usize>, to: SocketAddr) -> io::Result<()> {
        let (ptr, len) = self.lend(slot, range)?;
        let addr_len = self.dest[slot].set(to);
        let addr = self.dest[slot].as_mut_ptr().cast_const().cast::<libc::sockaddr>();
        let e = opcode::Send::new(TX, ptr, len).dest_addr(addr).dest_addr_len(addr_len).build();
        self.push(e.user_data(Op::UdpSend.user_data(slot)))
    }

    /// Lends `slot[range]` to the kernel as one packet for the TUN (a fixed-buffer write); the
    /// slot comes back with the [`Op::TunWrite`] completion.
    pub fn write_tun(&mut self, slot: usize, range: Range<usize>) -> io::Result<()> {
        let (ptr, len) = self.lend(slot, range)?;
        let e = opcode::WriteFixed::new(TUN, ptr, len, 0).build();
        self.push(e.user_data(Op::TunWrite.user_data(slot)))
    }

    fn lend(&mut self, slot: usize, range: Range<usize>) -> io::Result<(*const u8, u32)> {
        if self.owner.get(slot) != Some(&Owner::Engine) || range.end > self.slot_len || range.start > range.end {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "slot not held or range outside it"));
        }
        let len = u32::try_from(range.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let ptr = self.mem[slot * self.slot_len + range.start..].as_ptr();
        self.owner[slot] = Owner::Lent;
        self.lent += 1;
        Ok((ptr, len))
    }

    fn push(&mut self, e: io_uring::squeue::Entry) -> io::Result<()> {
        // SAFETY: every pointer in `e` points into memory owned by `self` that stays put and is
        // not touched by user code until the completion hands it back (see the module docs).
        let pushed = unsafe { self.ring.submission().push(&e) };
        if pushed.is_ok() {
            return Ok(());
        }
        // The queue is sized for every slot plus the multishot request; flush it anyway.
        self.ring.submit()?;
        // SAFETY: as above.
        unsafe { self.ring.submission().push(&e) }.map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    /// Hands `slot` back to the kernel's provided buffers.
    pub fn give_back(&mut self, slot: usize) {
        if self.owner.get(slot) != Some(&Owner::Engine) {
            return;
        }
        let idx = usize::from(self.tail & self.mask);
        let addr = self.mem[slot * self.slot_len + self.provide_at..].as_ptr() as u64;
        // SAFETY: `idx` < slots, the length of the buffer ring; the kernel reads entries only
        // up to the published tail, which is advanced below, after the entry is written.
        let entry = unsafe { &mut *self.bufs.ptr.add(idx) };
        entry.set_addr(addr);
        entry.set_len(u32::try_from(self.slot_len - self.provide_at).unwrap_or(u32::MAX));
        entry.set_bid(u16::try_from(slot).unwrap_or(u16::MAX));
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lives in the first entry of the ring (aligned u16) and the
        // kernel reads it with acquire semantics; this is the release store it pairs with.
        unsafe {
            let tail = types::BufRingEntry::tail(self.bufs.ptr).cast_mut();
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
        self.owner[slot] = Owner::Provided;
        self.provided += 1;
    }

    /// Submits what is queued and reaps what has completed, without waiting.
    pub fn submit(&mut self) -> io::Result<()> {
        entered(self.ring.submit())
    }

    /// Submits what is queued and waits up to `timeout` for at least one completion.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let ts = types::Timespec::from(timeout);
        entered(self.ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&ts)))
    }

    /// Moves every completion into `out` (cleared first).
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let (code, idx) = (cqe.user_data() >> 32, cqe.user_data() & 0xffff_ffff);
            let Some(op) = Op::from_code(code) else { continue };
            // Which slot comes back, and from whom: a multishot fills a provided buffer, a send
            // or write returns a lent one.
            let (slot, from) = match op {
                Op::TunRead | Op::UdpRecv => {
                    if !cqueue::more(cqe.flags()) {
                        self.multishot = None;
                    }
                    (cqueue::buffer_select(cqe.flags()).map(usize::from), Owner::Provided)
                }
                Op::UdpSend | Op::TunWrite => (usize::try_from(idx).ok(), Owner::Lent),
                Op::Cancel => (None, Owner::Engine),
            };
            let slot = slot.filter(|s| from != Owner::Engine && self.owner.get(*s) == Some(&from));
            if let Some(s) = slot {
                match from {
                    Owner::Provided => self.provided -= 1,
                    _ => self.lent -= 1,
                }
                self.owner[s] = Owner::Engine;
            }
            out.push(Completion { op, slot, result: cqe.result() });
        }
    }

    /// The bytes of a slot the engine holds (empty if it does not).
    pub fn slot(&mut self, slot: usize) -> &mut [u8] {
        if self.owner.get(slot) != Some(&Owner::Engine) {
            return &mut [];
        }
        &mut self.mem[slot * self.slot_len..(slot + 1) * self.slot_len]
    }

    fn cancel_all(&mut self) -> bool {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any()).build().user_data(Op::Cancel.user_data(0));
        if self.push(e).is_err() {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut done = Vec::new();
        while (self.multishot.is_some() || self.lent > 0) && Instant::now() < deadline {
            if self.wait(Duration::from_millis(50)).is_err() {
                return false;
            }
            self.completions(&mut done);
        }
        self.multishot.is_none() && self.lent == 0
    }
}

/// The result of an `io_uring_enter`: a timeout, a signal or a full completion queue is not an
/// error (the next round goes on).
fn entered(r: io::Result<usize>) -> io::Result<()> {
    match r {
        Err(e) if !matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => Err(e),
        _ => Ok(()),
    }
}

/// What a multishot recvmsg wrote at the start of a provided buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sender.
    pub from: SocketAddr,
    /// The datagram, as a range of the slot.
    pub payload: Range<usize>,
    /// The datagram was longer than the buffer (only its start is there).
    pub truncated: bool,
}

/// Reads the `io_uring_recvmsg_out` header and the name a multishot recvmsg put at the start of
/// `buf` (a slot of a ring that provides its buffers at 0); `result` is the completion's byte count.
pub fn parse_received(buf: &[u8], result: usize) -> Option<Received> {
    let word = |at: usize| buf.get(at..at + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let (namelen, payloadlen, flags) = (word(0)?, word(8)?, word(12)?);
    let name = buf.get(16..16 + NAME_LEN)?;
    let namelen = usize::try_from(namelen).ok()?.min(NAME_LEN);
    let from = sockaddr::from_bytes(&name[..namelen]).unwrap_or(sockaddr::UNKNOWN_SENDER);
    let have = result.min(buf.len()).saturating_sub(RECVMSG_PREFIX);
    let len = usize::try_from(payloadlen).ok()?;
    let truncated = flags & (libc::MSG_TRUNC as u32) != 0 || len > have;
    Some(Received { from, payload: RECVMSG_PREFIX..RECVMSG_PREFIX + len.min(have), truncated })
}

impl Drop for PacketRing {
    fn drop(&mut self) {
        let all_back = self.cancel_all();
        if all_back {
            // Closing the ring releases its registered files only later, from a kernel worker;
            // the socket would keep its port bound after weft exits. Let them go now.
            let _ = self.ring.submitter().unregister_files();
        }
        // SAFETY: the ring is dropped exactly once, here, and not used afterwards.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.ring) };
        if !all_back {
            // The kernel may still write into the packet memory and read the buffer ring:
            // leak both rather than free them under it.
            std::mem::forget(std::mem::take(&mut self.mem));
            return;
        }
        // SAFETY: allocated in `new` with this layout; the ring that used it is closed and every
        // request was completed or cancelled.
        unsafe { std::alloc::dealloc(self.bufs.ptr.cast(), self.bufs.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer as a multishot recvmsg leaves it: io_uring_recvmsg_out, a sockaddr_in in the
    /// name field, payload.
    fn received(namelen: u32, payloadlen: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [namelen, 0, payloadlen, flags] {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        b.extend_from_slice(&u16::try_from(libc::AF_INET).unwrap().to_ne_bytes());
        b.extend_from_slice(&8285u16.to_be_bytes());
        b.extend_from_slice(&[198, 18, 0, 2]);
        b.extend_from_slice(&[0; NAME_LEN - 8]);
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn parses_an_ipv6_sender() {
        let mut b = received(28, 3, 0, b"abc");
        b[16..18].copy_from_slice(&u16::try_from(libc::AF_INET6).unwrap().to_ne_bytes());
        b[24..40].copy_from_slice(&"2001:db8::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        let r = parse_received(&b, b.len()).unwrap();
        assert_eq!(r.from, "[2001:db8::2]:8285".parse::<SocketAddr>().unwrap());
        assert_eq!(&b[r.payload.clone()], b"abc");
    }

    #[test]
    fn parses_sender_and_payload() {
        let b = received(16, 3, 0, b"abc");
        let r = parse_received(&b, b.len()).unwrap();
        assert_eq!(r.from, "198.18.0.2:8285".parse::<SocketAddr>().unwrap());
        assert_eq!(&b[r.payload.clone()], b"abc");
        assert!(!r.truncated);
    }

    #[test]
    fn flags_truncation_by_flag_or_length() {
        let b = received(16, 3, libc::MSG_TRUNC as u32, b"abc");
        assert!(parse_received(&b, b.len()).unwrap().truncated);
        // The kernel says 10 bytes came; 3 are in the buffer.
        let b = received(16, 10, 0, b"abc");
        let r = parse_received(&b, b.len()).unwrap();
        assert!(r.truncated);
        assert_eq!(r.payload.len(), 3);
    }

    #[test]
    fn short_buffers_are_refused_not_read_past() {
        let b = received(16, 3, 0, b"abc");
        for n in 0..RECVMSG_PREFIX {
            assert_eq!(parse_received(&b[..n], n), None, "{n} bytes");
        }
        let r = parse_received(&b[..RECVMSG_PREFIX], RECVMSG_PREFIX).unwrap();
        assert!(r.truncated && r.payload.is_empty());
    }

    #[test]
    fn a_name_that_is_not_ipv4_gives_the_unspecified_sender() {
        let mut b = received(16, 3, 0, b"abc");
        b[16] = 0;
        b[17] = 0;
        assert_eq!(parse_received(&b, b.len()).unwrap().from, SocketAddr::from(([0, 0, 0, 0], 0)));
    }
}
