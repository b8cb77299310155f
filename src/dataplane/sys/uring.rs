//! io_uring for the `uring` engine: one ring per direction, its packet memory allocated once.
//!
//! A [`PacketRing`] owns `slots` packet buffers of `slot_len` bytes in one allocation, handed to
//! the kernel as a ring of provided buffers, so that one multishot request — a `READ_MULTISHOT`
//! on the TUN or a multishot `RECVMSG` on the socket — fills buffer after buffer (a TSO
//! super-packet or a `UDP_GRO` bundle each) without being submitted again. Beside them it owns
//! `msgs` message descriptors ([`Msg`]: a `msghdr`, iovecs, a control message, an address and a
//! small header area), each with a frame of `frame_len` bytes: what a `SENDMSG` (a GSO send of
//! datagrams written whole into the frame) or a `WRITEV` (a coalesced TUN write gathered from a
//! slot) needs to stay put until its completion. The TUN and the sockets are registered files.
//!
//! Every slot is in exactly one place: provided to the kernel (it may write it at any time),
//! held by the engine, or released by the engine while TUN writes in flight still read it (it is
//! provided again when the last one completes). Every descriptor is free, held by the engine, or
//! queued. The engine can only touch a slot or frame it holds ([`PacketRing::slot`],
//! [`PacketRing::frame`] check), so kernel and user never share a byte.
//!
//! Dropping the ring cancels what is in flight and waits for it; if the kernel does not finish in
//! time, the memory is leaked rather than freed under it.

use super::mmsg::{SegmentCmsg, set_segment};
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
/// The first sending socket's index among the registered files (the pool's others follow).
const TX: u32 = 2;
/// The provided-buffer group of the ring (one group per ring).
const GROUP: u16 = 0;
/// Page size the buffer ring must be aligned to.
const PAGE: usize = 4096;
/// The name field of a multishot recvmsg: room for a `sockaddr_in6` (28), rounded up to 16.
const NAME_LEN: usize = sockaddr::CAPACITY.next_multiple_of(16);
/// The control field of a multishot recvmsg: one `UDP_GRO` message (`CMSG_SPACE(sizeof(int))`
/// = 24), rounded up to 16.
const CONTROL_LEN: usize = 32;
/// Bytes the kernel writes in front of a multishot recvmsg payload: `io_uring_recvmsg_out`
/// (16), the name field and the control field; the payload starts 16-byte aligned.
pub const RECVMSG_PREFIX: usize = 16 + NAME_LEN + CONTROL_LEN;
/// Most pieces of one TUN write: the header area and up to 64 payloads.
pub const MAX_PARTS: usize = 1 + super::udp::MAX_SEGMENTS;
/// Bytes of a descriptor's header area: a `virtio_net_hdr` and a merged packet's headers.
pub const HEAD_LEN: usize = 144;

/// What a completion was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The multishot TUN read produced a packet (or ended).
    TunRead,
    /// The multishot socket receive produced a datagram or a GRO bundle (or ended).
    UdpRecv,
    /// A send of a frame's datagrams finished.
    UdpSend,
    /// A TUN write finished.
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
    fn user_data(self, index: usize) -> u64 {
        self.code() << 32 | crate::dataplane::engine::u64_len(index)
    }
}

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// What it was.
    pub op: Op,
    /// The slot a multishot request filled, now held by the engine (None when no buffer was
    /// used).
    pub slot: Option<usize>,
    /// The descriptor of a send, now held by the engine (its frame still holds the datagrams);
    /// a TUN write's descriptor is freed by the ring itself.
    pub msg: Option<usize>,
    /// Packets the send or write carried (as queued).
    pub packets: usize,
    /// The syscall-style result: bytes, or a negated errno.
    pub result: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Provided,
    Engine,
    /// Given back by the engine while TUN writes still read it.
    Released,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MsgState {
    Free,
    Engine,
    Queued,
}

/// What one send or TUN write needs to stay put until it completes.
struct Msg {
    hdr: libc::msghdr,
    iov: [libc::iovec; MAX_PARTS],
    ctrl: SegmentCmsg,
    addr: RawAddr,
    head: [u8; HEAD_LEN],
    packets: usize,
    /// The slot a TUN write reads.
    slot: Option<usize>,
    state: MsgState,
}

impl Msg {
    fn new() -> Self {
        // SAFETY: msghdr and iovec are C structs for which all-zero bytes are valid (null
        // pointers, zero lengths).
        let (hdr, iov) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        Self {
            hdr,
            iov,
            ctrl: [0; 4],
            addr: RawAddr::zeroed(),
            head: [0; HEAD_LEN],
            packets: 0,
            slot: None,
            state: MsgState::Free,
        }
    }
}

/// The page-aligned memory of a provided-buffer ring.
struct BufRingMem {
    ptr: *mut types::BufRingEntry,
    layout: Layout,
}

/// The sizes of a [`PacketRing`].
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// Packet buffers (a power of two, ≤ 32 768).
    pub slots: u16,
    /// Bytes per packet buffer.
    pub slot_len: usize,
    /// Where in a slot a provided buffer starts (headroom for outer headers on egress).
    pub provide_at: usize,
    /// Message descriptors: sends and TUN writes in flight at once.
    pub msgs: usize,
    /// Bytes of each descriptor's frame (0 where nothing is sent from frames).
    pub frame_len: usize,
}

/// A ring with its packet memory, for one direction of one worker: the memory the provided
/// buffers live in, and the rest ([`Ring`]), so that the engine can read a slot it holds while
/// it queues sends on the ring.
pub struct PacketRing {
    mem: Box<[u8]>,
    ring: Ring,
}

/// A ring, its descriptors and frames, and who holds which slot of its packet memory.
pub struct Ring {
    /// Dropped by hand, before the memory it may write (see PacketRing's Drop).
    uring: std::mem::ManuallyDrop<IoUring>,
    /// The packet memory's start (owned by the [`PacketRing`]; only addresses are made from it).
    base: *mut u8,
    frames: Box<[u8]>,
    geo: Geometry,
    bufs: BufRingMem,
    mask: u16,
    tail: u16,
    owner: Vec<Owner>,
    /// TUN writes in flight per slot.
    lends: Vec<u16>,
    msgs: Box<[Msg]>,
    free: Vec<usize>,
    recv_hdr: Box<libc::msghdr>,
    multishot: Option<Op>,
    tun_fd: RawFd,
    in_flight: usize,
    provided: usize,
    /// Completion queue entries of one reap (user data, flags, result), reused.
    reaped: Vec<(u64, u32, i32)>,
}

// SAFETY: the raw pointers (packet memory, buffer ring, msghdrs, iovecs) point into memory the
// PacketRing owns; the ring is used by one thread at a time (it is moved, never shared).
unsafe impl Send for Ring {}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

impl PacketRing {
    /// A ring over `files` = [tun, receiving socket, sending sockets…] with the memory `geo`
    /// describes, every slot provided to the kernel. Fails with `Unsupported` when the kernel
    /// lacks what the engine needs (Linux ≥ 6.7).
    pub fn new(files: &[RawFd], geo: Geometry) -> io::Result<Self> {
        let Geometry { slots, slot_len, provide_at, msgs, frame_len } = geo;
        if !slots.is_power_of_two() || slot_len <= provide_at || u32::try_from(slot_len).is_err() || files.len() < 3 {
            return Err(invalid("bad io_uring geometry"));
        }
        let n = usize::from(slots);
        let entries = u32::try_from((n + msgs + 2).next_power_of_two()).map_err(|_| invalid("too many slots"))?;
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
        check_opcodes(&ring)?;
        ring.submitter().register_files(files)?;
        let mut mem = vec![0u8; n * slot_len].into_boxed_slice();
        let frames = vec![0u8; msgs * frame_len].into_boxed_slice();
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
        // SAFETY: msghdr is a C struct for which all-zero bytes are valid.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = libc::socklen_t::try_from(NAME_LEN).unwrap_or_else(|_| sockaddr::capacity());
        recv_hdr.msg_controllen = CONTROL_LEN;
        let mut r = Ring {
            uring: std::mem::ManuallyDrop::new(ring),
            base: mem.as_mut_ptr(),
            frames,
            geo,
            bufs,
            mask: slots - 1,
            tail: 0,
            owner: vec![Owner::Engine; n],
            lends: vec![0; n],
            msgs: (0..msgs).map(|_| Msg::new()).collect(),
            free: (0..msgs).rev().collect(),
            recv_hdr,
            multishot: None,
            tun_fd: files[0],
            in_flight: 0,
            provided: 0,
            reaped: Vec::with_capacity(usize::try_from(entries * 4).unwrap_or(0)),
        };
        for s in 0..n {
            r.give_back(s);
        }
        Ok(Self { mem, ring: r })
    }

    /// The bytes of a slot the engine holds (empty if it does not).
    pub fn slot(&mut self, slot: usize) -> &mut [u8] {
        self.split(slot).0
    }

    /// The bytes of a slot the engine holds (empty if it does not), and the ring, to queue
    /// sends while reading them.
    pub fn split(&mut self, slot: usize) -> (&mut [u8], &mut Ring) {
        let len = self.ring.geo.slot_len;
        let bytes = match self.ring.owner.get(slot) {
            Some(Owner::Engine) => self.mem.get_mut(slot * len..(slot + 1) * len).unwrap_or(&mut []),
            _ => &mut [],
        };
        (bytes, &mut self.ring)
    }
}

impl std::ops::Deref for PacketRing {
    type Target = Ring;
    fn deref(&self) -> &Ring {
        &self.ring
    }
}

impl std::ops::DerefMut for PacketRing {
    fn deref_mut(&mut self) -> &mut Ring {
        &mut self.ring
    }
}

impl Ring {
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
            _ => return Err(invalid("not a multishot op")),
        };
        self.push(entry.user_data(op.user_data(0)))?;
        self.multishot = Some(op);
        Ok(())
    }

    /// A free descriptor, now held by the engine (None when all are in flight).
    pub fn take_msg(&mut self) -> Option<usize> {
        let m = self.free.pop()?;
        self.msgs[m].state = MsgState::Engine;
        Some(m)
    }

    /// Frees a descriptor the engine holds.
    pub fn recycle(&mut self, msg: usize) {
        if self.msgs.get(msg).is_some_and(|m| m.state == MsgState::Engine) {
            self.msgs[msg].state = MsgState::Free;
            self.free.push(msg);
        }
    }

    /// The frame of a descriptor the engine holds (empty if it does not).
    pub fn frame(&mut self, msg: usize) -> &mut [u8] {
        if self.msgs.get(msg).is_none_or(|m| m.state != MsgState::Engine) {
            return &mut [];
        }
        let len = self.geo.frame_len;
        &mut self.frames[msg * len..(msg + 1) * len]
    }

    /// Sends the first `len` bytes of `msg`'s frame to `to` from sending socket `tx`: as one GSO
    /// send of `segment`-byte datagrams, or as one datagram. The descriptor comes back with the
    /// [`Op::UdpSend`] completion.
    pub fn send_frame(
        &mut self,
        msg: usize,
        len: usize,
        segment: Option<u16>,
        to: SocketAddr,
        tx: usize,
        packets: usize,
    ) -> io::Result<()> {
        if len > self.geo.frame_len || self.msgs.get(msg).is_none_or(|m| m.state != MsgState::Engine) {
            return Err(invalid("descriptor not held or frame too short"));
        }
        let tx = u32::try_from(tx).ok().and_then(|t| t.checked_add(TX)).ok_or_else(|| invalid("no such socket"))?;
        let base = self.frames[msg * self.geo.frame_len..].as_mut_ptr();
        let m = &mut self.msgs[msg];
        m.iov[0] = libc::iovec { iov_base: base.cast(), iov_len: len };
        m.hdr.msg_iov = m.iov.as_mut_ptr();
        m.hdr.msg_iovlen = 1;
        m.hdr.msg_namelen = m.addr.set(to);
        m.hdr.msg_name = m.addr.as_mut_ptr();
        m.hdr.msg_flags = 0;
        set_segment(&mut m.hdr, &mut m.ctrl, segment);
        m.packets = packets;
        m.slot = None;
        let e = opcode::SendMsg::new(types::Fixed(tx), &m.hdr).build();
        self.queue(msg, e.user_data(Op::UdpSend.user_data(msg)))
    }

    /// Writes into the TUN, with one `WRITEV`, `head` (a `virtio_net_hdr` and headers, copied into
    /// `msg`) and then `parts` of `slot`, which the engine holds. The slot may be given back at
    /// once: the ring provides it again after the last write that reads it. `msg` is freed with
    /// the [`Op::TunWrite`] completion.
    pub fn write_tun(
        &mut self,
        msg: usize,
        slot: usize,
        head: &[u8],
        parts: &[Range<usize>],
        packets: usize,
    ) -> io::Result<()> {
        let (slot_len, at) = (self.geo.slot_len, slot.saturating_mul(self.geo.slot_len));
        if self.owner.get(slot) != Some(&Owner::Engine)
            || self.msgs.get(msg).is_none_or(|m| m.state != MsgState::Engine)
            || head.len() > HEAD_LEN
            || parts.len() >= MAX_PARTS
            || parts.iter().any(|r| r.start > r.end || r.end > slot_len)
        {
            return Err(invalid("slot or descriptor not held, or pieces outside them"));
        }
        let base = self.base.wrapping_add(at);
        let m = &mut self.msgs[msg];
        m.head[..head.len()].copy_from_slice(head);
        m.iov[0] = libc::iovec { iov_base: m.head.as_mut_ptr().cast(), iov_len: head.len() };
        for (v, r) in m.iov[1..].iter_mut().zip(parts) {
            // `r` lies within the slot (checked above).
            *v = libc::iovec { iov_base: base.wrapping_add(r.start).cast(), iov_len: r.len() };
        }
        let count = u32::try_from(parts.len() + 1).map_err(|_| invalid("too many pieces"))?;
        m.packets = packets;
        m.slot = Some(slot);
        let e = opcode::Writev::new(TUN, m.iov.as_ptr(), count).build();
        self.queue(msg, e.user_data(Op::TunWrite.user_data(msg)))?;
        self.lends[slot] += 1;
        Ok(())
    }

    fn queue(&mut self, msg: usize, e: io_uring::squeue::Entry) -> io::Result<()> {
        self.push(e)?;
        self.msgs[msg].state = MsgState::Queued;
        self.in_flight += 1;
        Ok(())
    }

    fn push(&mut self, e: io_uring::squeue::Entry) -> io::Result<()> {
        // SAFETY: every pointer in `e` points into memory owned by `self` that stays put and is
        // not touched by user code until the completion hands it back (see the module docs).
        let pushed = unsafe { self.uring.submission().push(&e) };
        if pushed.is_ok() {
            return Ok(());
        }
        // The queue is sized for every slot and descriptor plus the multishot request; flush it
        // anyway.
        self.uring.submit()?;
        // SAFETY: as above.
        unsafe { self.uring.submission().push(&e) }.map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    /// Hands `slot` back to the kernel's provided buffers, or, while TUN writes still read it,
    /// once the last of them completes.
    pub fn give_back(&mut self, slot: usize) {
        if self.owner.get(slot) != Some(&Owner::Engine) {
            return;
        }
        if self.lends[slot] > 0 {
            self.owner[slot] = Owner::Released;
            return;
        }
        let idx = usize::from(self.tail & self.mask);
        let addr = self.base.wrapping_add(slot * self.geo.slot_len + self.geo.provide_at) as u64;
        // SAFETY: `idx` < slots, the length of the buffer ring; the kernel reads entries only
        // up to the published tail, which is advanced below, after the entry is written.
        let entry = unsafe { &mut *self.bufs.ptr.add(idx) };
        entry.set_addr(addr);
        entry.set_len(u32::try_from(self.geo.slot_len - self.geo.provide_at).unwrap_or(u32::MAX));
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
        entered(self.uring.submit())
    }

    /// Submits what is queued and waits up to `timeout` for at least one completion.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let ts = types::Timespec::from(timeout);
        entered(self.uring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&ts)))
    }

    /// Appends every completion to `out`.
    pub fn completions(&mut self, out: &mut impl Extend<Completion>) {
        let mut reaped = std::mem::take(&mut self.reaped);
        reaped.clear();
        let mut cq = self.uring.completion();
        cq.sync();
        reaped.extend((&mut cq).map(|e| (e.user_data(), e.flags(), e.result())));
        drop(cq);
        out.extend(reaped.iter().filter_map(|&(user_data, flags, result)| self.complete(user_data, flags, result)));
        self.reaped = reaped;
    }

    /// What one completion queue entry means; updates who holds what.
    fn complete(&mut self, user_data: u64, flags: u32, result: i32) -> Option<Completion> {
        let (code, idx) = (user_data >> 32, usize::try_from(user_data & 0xffff_ffff).ok()?);
        let op = Op::from_code(code)?;
        let mut c = Completion { op, slot: None, msg: None, packets: 0, result };
        match op {
            Op::TunRead | Op::UdpRecv => {
                if !cqueue::more(flags) {
                    self.multishot = None;
                }
                let slot = cqueue::buffer_select(flags).map(usize::from);
                c.slot = slot.filter(|s| self.owner.get(*s) == Some(&Owner::Provided));
                if let Some(s) = c.slot {
                    self.provided -= 1;
                    self.owner[s] = Owner::Engine;
                }
            }
            Op::UdpSend | Op::TunWrite => {
                let m = self.msgs.get_mut(idx).filter(|m| m.state == MsgState::Queued)?;
                self.in_flight -= 1;
                m.state = MsgState::Engine;
                c.packets = m.packets;
                if let Some(s) = m.slot.take() {
                    self.lends[s] = self.lends[s].saturating_sub(1);
                    if self.lends[s] == 0 && self.owner[s] == Owner::Released {
                        self.owner[s] = Owner::Engine;
                        self.give_back(s);
                    }
                }
                match op {
                    Op::UdpSend => c.msg = Some(idx),
                    _ => self.recycle(idx),
                }
            }
            Op::Cancel => {}
        }
        Some(c)
    }

    fn cancel_all(&mut self) -> bool {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any()).build().user_data(Op::Cancel.user_data(0));
        if self.push(e).is_err() {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut done = Vec::new();
        while (self.multishot.is_some() || self.in_flight > 0) && Instant::now() < deadline {
            if self.wait(Duration::from_millis(50)).is_err() {
                return false;
            }
            done.clear();
            self.completions(&mut done);
        }
        self.multishot.is_none() && self.in_flight == 0
    }
}

/// Fails with `Unsupported` unless `ring` offers every opcode the uring engine submits.
fn check_opcodes(ring: &IoUring) -> io::Result<()> {
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for code in [opcode::ReadMulti::CODE, opcode::RecvMsgMulti::CODE, opcode::SendMsg::CODE, opcode::Writev::CODE] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, format!("io_uring opcode {code} is not supported")));
        }
    }
    Ok(())
}

/// Whether this process may use what the uring engine needs: a ring at all (a seccomp profile
/// or `kernel.io_uring_disabled` can refuse one) and its opcodes (Linux ≥ 6.7).
pub fn probe() -> io::Result<()> {
    check_opcodes(&IoUring::new(2)?)
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
    /// The datagram, or the datagrams of a GRO bundle back to back, as a range of the slot.
    pub payload: Range<usize>,
    /// Bytes per datagram of a GRO bundle (the payload's length when the kernel merged none).
    pub stride: usize,
    /// The datagram was longer than the buffer (only its start is there).
    pub truncated: bool,
}

/// The segment size of a `UDP_GRO` control message among `control` (cmsghdrs as the kernel
/// wrote them: `cmsg_len` as a native usize, level, type, data, each 8-byte aligned).
fn gro_segment(control: &[u8]) -> Option<usize> {
    const HDR: usize = 16;
    let mut at = 0;
    while let Some(h) = control.get(at..at + HDR) {
        let len = usize::try_from(u64::from_ne_bytes(h[..8].try_into().ok()?)).ok()?;
        let level = i32::from_ne_bytes(h[8..12].try_into().ok()?);
        let kind = i32::from_ne_bytes(h[12..16].try_into().ok()?);
        if len < HDR {
            return None;
        }
        if level == libc::SOL_UDP && kind == libc::UDP_GRO {
            let d = control.get(at + HDR..at + HDR + 4)?;
            return usize::try_from(i32::from_ne_bytes(d.try_into().ok()?)).ok().filter(|s| *s > 0);
        }
        at += len.next_multiple_of(8);
    }
    None
}

/// Reads the `io_uring_recvmsg_out` header, the name and the control messages a multishot
/// recvmsg put at the start of `buf` (a slot of a ring that provides its buffers at 0); `result`
/// is the completion's byte count.
pub fn parse_received(buf: &[u8], result: usize) -> Option<Received> {
    let word = |at: usize| buf.get(at..at + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let (namelen, controllen, payloadlen, flags) = (word(0)?, word(4)?, word(8)?, word(12)?);
    let name = buf.get(16..16 + NAME_LEN)?;
    let control = buf.get(16 + NAME_LEN..RECVMSG_PREFIX)?;
    let namelen = usize::try_from(namelen).ok()?.min(NAME_LEN);
    let controllen = usize::try_from(controllen).ok()?.min(CONTROL_LEN);
    let from = sockaddr::from_bytes(&name[..namelen]).unwrap_or(sockaddr::UNKNOWN_SENDER);
    let have = result.min(buf.len()).saturating_sub(RECVMSG_PREFIX);
    let len = usize::try_from(payloadlen).ok()?;
    let truncated = flags & (libc::MSG_TRUNC as u32) != 0 || len > have;
    let len = len.min(have);
    let stride = gro_segment(&control[..controllen]).unwrap_or(len).max(1);
    Some(Received { from, payload: RECVMSG_PREFIX..RECVMSG_PREFIX + len, stride, truncated })
}

impl Drop for PacketRing {
    fn drop(&mut self) {
        let r = &mut self.ring;
        let all_back = r.cancel_all();
        if all_back {
            // Closing the ring releases its registered files only later, from a kernel worker;
            // the socket would keep its port bound after weft exits. Let them go now.
            let _ = r.uring.submitter().unregister_files();
        }
        // SAFETY: the ring is dropped exactly once, here, and not used afterwards.
        unsafe { std::mem::ManuallyDrop::drop(&mut r.uring) };
        if !all_back {
            // The kernel may still write into the packet memory and read the buffer ring, the
            // frames and the descriptors: leak them rather than free them under it.
            std::mem::forget(std::mem::take(&mut self.mem));
            std::mem::forget(std::mem::take(&mut r.frames));
            std::mem::forget(std::mem::replace(&mut r.msgs, Box::new([])));
            return;
        }
        // SAFETY: allocated in `new` with this layout; the ring that used it is closed and every
        // request was completed or cancelled.
        unsafe { std::alloc::dealloc(r.bufs.ptr.cast(), r.bufs.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer as a multishot recvmsg leaves it: io_uring_recvmsg_out, a sockaddr_in in the
    /// name field, no control message, payload.
    fn received(namelen: u32, payloadlen: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        with_control(namelen, &[], payloadlen, flags, payload)
    }

    fn with_control(namelen: u32, control: &[u8], payloadlen: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [namelen, u32::try_from(control.len()).unwrap(), payloadlen, flags] {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        b.extend_from_slice(&u16::try_from(libc::AF_INET).unwrap().to_ne_bytes());
        b.extend_from_slice(&8285u16.to_be_bytes());
        b.extend_from_slice(&[198, 18, 0, 2]);
        b.extend_from_slice(&[0; NAME_LEN - 8]);
        let mut c = control.to_vec();
        c.resize(CONTROL_LEN, 0);
        b.extend_from_slice(&c);
        b.extend_from_slice(payload);
        b
    }

    /// A `UDP_GRO` control message of `size` as the kernel writes it on x86-64.
    fn gro_cmsg(size: i32) -> Vec<u8> {
        let mut c = Vec::new();
        c.extend_from_slice(&20u64.to_ne_bytes());
        c.extend_from_slice(&libc::SOL_UDP.to_ne_bytes());
        c.extend_from_slice(&libc::UDP_GRO.to_ne_bytes());
        c.extend_from_slice(&size.to_ne_bytes());
        c.extend_from_slice(&[0; 4]);
        c
    }

    #[test]
    fn this_kernel_has_what_the_engine_needs() {
        probe().unwrap();
    }

    #[test]
    fn a_gro_bundle_gives_its_stride() {
        let b = with_control(16, &gro_cmsg(3), 7, 0, b"abcdefg");
        let r = parse_received(&b, b.len()).unwrap();
        assert_eq!((r.stride, r.payload.len(), r.payload.start), (3, 7, RECVMSG_PREFIX));
        // No control message: one datagram, its own length.
        let b = received(16, 7, 0, b"abcdefg");
        assert_eq!(parse_received(&b, b.len()).unwrap().stride, 7);
        // Another control message first, then UDP_GRO.
        let mut other = gro_cmsg(9);
        other[8..12].copy_from_slice(&libc::SOL_IP.to_ne_bytes());
        assert_eq!(gro_segment(&[other.clone(), gro_cmsg(5)].concat()), Some(5));
        assert_eq!(gro_segment(&other), None);
        // A cmsg_len shorter than its header ends the walk instead of looping.
        assert_eq!(gro_segment(&[0u8; 16]), None);
        assert_eq!(gro_segment(&gro_cmsg(0)), None, "a zero size is no stride");
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
