//! The uring engine: the offload engine's work (TUN TSO super-packets cut into GSO sends, UDP GRO
//! bundles coalesced into GSO TUN writes) with every crossing submitted through io_uring.
//!
//! Each direction has its own thread and ring ([`PacketRing`]). Egress keeps one multishot read
//! armed on the TUN: the kernel fills provided buffers of 64 KiB (each with [`HEADROOM`] in front
//! of the packet) until none is left. weft decides once per packet read, writes each datagram
//! whole into a descriptor's frame (a super-packet's segments with fresh headers, or a plain
//! packet behind its outer header; consecutive datagrams to one peer of one size share a frame,
//! see [`Stager`]) and queues one `SENDMSG` with `UDP_SEGMENT` per frame. Ingress keeps one
//! multishot recvmsg armed on the socket, with `UDP_GRO`: each completion is a bundle of
//! datagrams of one size, decapsulated in place and written with one `WRITEV` per run of one
//! flow (see [`TunWriter`]). The queued requests go to the kernel with the next `io_uring_enter`,
//! which also waits for the next completions: in a busy loop that is the only syscall.
//!
//! If the kernel refuses a GSO send (EIO/EINVAL), its datagrams are sent again one by one with
//! `sendmsg` from the frame, and every later frame holds one datagram: nothing is lost. The TUN's
//! USO is known before the engine starts (its offloads are set at start-up), so a coalesced UDP
//! write is refused only by a TUN someone else changed; its datagrams are then counted as
//! `tun_write_failed` and no later run of UDP datagrams is merged.
//!
//! Accounting: the enter that submits and reaps is counted as a syscall of the crossing the
//! thread reads (`tun_read` for egress, `udp_recv` for ingress); the sends and writes it submits
//! move packets on their own crossings without a syscall of their own. An enter that only waits
//! (nothing was done) is counted as a poll, as every engine counts its waits.

use super::coalesce::{HEAD_ROOM, Outer, TunWriter, rules};
use super::runs::MAX_GSO_BYTES;
use super::stage::{Dest, Outbox, Staged, Stager, send_one_by_one};
use super::{EngineContext, EngineError, Kind, STOP_CHECK, classify, per_packet, reply_icmp, u64_len};
use crate::dataplane::counters::{Counters, Crossing, DropLog, DropReason, timed};
use crate::dataplane::forward::{Egress, Ingress, SCRATCH_LEN};
use crate::dataplane::offloads::{Offload, refused};
use crate::dataplane::packet::{HEADROOM, MAX_PACKET, READ_AT};
use crate::dataplane::sys::udp::MAX_SEGMENTS;
use crate::dataplane::sys::uring::{
    Completion, Geometry, HEAD_LEN, Op, PacketRing, RECVMSG_PREFIX, Ring, parse_received,
};
use crate::proto::virtio;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;

/// Packet buffers per direction (a power of two): what one multishot request can fill before
/// weft hands buffers back. Each holds a super-packet or a GRO bundle.
pub const SLOTS: u16 = 64;
/// Sends in flight at once (each with a frame of one GSO send).
const SENDS: usize = 32;
/// TUN writes in flight at once.
const WRITES: usize = 4 * MAX_SEGMENTS;
/// Slack after the largest packet, so that one a byte too long is seen as such.
const SLACK: usize = 64;

const _: () = assert!(HEAD_ROOM <= HEAD_LEN, "a merged write's headers fit a descriptor");

/// Runs until stopped: egress on this thread, ingress on a second one. `ctx.tun` must have
/// been opened with `IFF_VNET_HDR` and the offload engine's offloads, and `ctx.socket` must have
/// `UDP_GRO`.
pub fn run(ctx: EngineContext) -> Result<(), EngineError> {
    // io_uring waits for readiness itself; a non-blocking fd would turn that into EAGAIN.
    ctx.tun.set_nonblocking(false).map_err(EngineError::Tun)?;
    ctx.socket.set_nonblocking(false).map_err(EngineError::Udp)?;
    for tx in ctx.tx.iter() {
        tx.set_nonblocking(false).map_err(EngineError::Udp)?;
    }
    super::both_directions(&ctx, "weft-uring-rx", egress_loop, ingress_loop)
}

fn ring(ctx: &EngineContext, egress: bool) -> Result<PacketRing, EngineError> {
    let mut files = vec![ctx.tun.as_fd().as_raw_fd(), ctx.socket.as_raw_fd()];
    files.extend(ctx.tx.iter().map(|s| s.as_raw_fd()));
    let geo = if egress {
        let slot_len = (HEADROOM + MAX_PACKET + SLACK).next_multiple_of(64);
        Geometry { slots: SLOTS, slot_len, provide_at: READ_AT, msgs: SENDS, frame_len: MAX_GSO_BYTES }
    } else {
        let slot_len = (RECVMSG_PREFIX + MAX_PACKET + SLACK).next_multiple_of(64);
        Geometry { slots: SLOTS, slot_len, provide_at: 0, msgs: WRITES, frame_len: 0 }
    };
    PacketRing::new(&files, geo).map_err(EngineError::Ring)
}

fn errno(result: i32) -> io::Error {
    io::Error::from_raw_os_error(result.saturating_neg())
}

/// A multishot request ended without a buffer (none left: re-armed once some come back;
/// cancelled; an error about one packet): fine, unless the fd itself failed.
fn ended(result: i32) -> Result<(), io::Error> {
    let e = errno(result);
    if result < 0 && !per_packet(&e) { Err(e) } else { Ok(()) }
}

/// One round of the ring: submit what is queued and reap what is done (counted as one syscall
/// of `crossing`); with nothing done, wait for something (counted as a poll, like every other
/// engine's wait). Returns whether `done` holds anything.
fn step(
    ring: &mut Ring,
    done: &mut VecDeque<Completion>,
    c: &Counters,
    crossing: Crossing,
) -> Result<bool, EngineError> {
    let (r, ns) = timed(|| ring.submit());
    r.map_err(EngineError::Ring)?;
    c.syscall(crossing, 0, 0, ns);
    ring.completions(done);
    if done.is_empty() {
        c.polls.fetch_add(1, Ordering::Relaxed);
        ring.wait(STOP_CHECK).map_err(EngineError::Ring)?;
        ring.completions(done);
    }
    Ok(!done.is_empty())
}

/// Completions reaped while waiting for a free descriptor: those not about a send or a write,
/// to be handled in order next (`later`), and the reap's own buffer; both reused.
struct Backlog {
    later: VecDeque<Completion>,
    reaped: VecDeque<Completion>,
}

impl Backlog {
    fn new() -> Self {
        let cap = usize::from(SLOTS) * 4;
        Self { later: VecDeque::with_capacity(cap), reaped: VecDeque::with_capacity(cap) }
    }

    /// The next completion to handle: one reaped while waiting, else the next of `done`.
    fn next(&mut self, done: &mut VecDeque<Completion>) -> Option<Completion> {
        self.later.pop_front().or_else(|| done.pop_front())
    }

    /// Waits for a free descriptor, a counted [`step`] of the ring at a time, and hands what it
    /// reaps to `finish` (which frees the descriptors of finished sends and writes and returns
    /// the completions that are not about them, kept in order for [`Backlog::next`]).
    fn free_msg(
        &mut self,
        ring: &mut Ring,
        c: &Counters,
        crossing: Crossing,
        mut finish: impl FnMut(&mut Ring, Completion) -> Result<Option<Completion>, EngineError>,
    ) -> Result<usize, EngineError> {
        loop {
            if let Some(m) = ring.take_msg() {
                return Ok(m);
            }
            step(ring, &mut self.reaped, c, crossing)?;
            while let Some(d) = self.reaped.pop_front() {
                self.later.extend(finish(ring, d)?);
            }
        }
    }
}

/// Egress: the staged sends, and what each descriptor in flight carries.
struct EgressState {
    stager: Stager,
    /// The descriptor whose frame holds the staged datagrams.
    held: Option<usize>,
    /// What each descriptor's send carries, for the fallback when GSO is refused.
    sends: Vec<Option<Staged>>,
    backlog: Backlog,
    scratch: [u8; SCRATCH_LEN],
}

/// The uring engine's outbox: descriptors' frames, each send queued on the ring.
struct Queue<'a> {
    ctx: &'a EngineContext,
    ring: &'a mut Ring,
    held: &'a mut Option<usize>,
    sends: &'a mut [Option<Staged>],
    backlog: &'a mut Backlog,
}

impl Outbox for Queue<'_> {
    fn frame(&mut self) -> Result<&mut [u8], EngineError> {
        let msg = match *self.held {
            Some(m) => m,
            None => {
                let (ctx, sends) = (self.ctx, &mut *self.sends);
                let c = &*ctx.counters;
                let m = self.backlog.free_msg(self.ring, c, Crossing::TunRead, |ring, d| sent(ctx, ring, sends, d))?;
                *self.held = Some(m);
                m
            }
        };
        Ok(self.ring.frame(msg))
    }

    fn send(&mut self, k: Staged) -> Result<(), EngineError> {
        let Some(msg) = self.held.take() else { return Ok(()) };
        self.sends[msg] = Some(k);
        self.ring.send_frame(msg, k.len, k.segment(), k.dest.to, k.dest.tx, k.count).map_err(EngineError::Ring)
    }

    fn gso(&self) -> bool {
        self.ctx.offloads.has(Offload::UdpGso)
    }
}

/// Handles `d` if it is a send's completion (counting it, falling back to one send per datagram
/// if GSO was refused, freeing the descriptor); returns it otherwise.
fn sent(
    ctx: &EngineContext,
    ring: &mut Ring,
    sends: &mut [Option<Staged>],
    d: Completion,
) -> Result<Option<Completion>, EngineError> {
    let (Op::UdpSend, Some(msg)) = (d.op, d.msg) else { return Ok(Some(d)) };
    let c = &*ctx.counters;
    let k = sends.get_mut(msg).and_then(Option::take);
    match usize::try_from(d.result) {
        Ok(n) => c.moved(Crossing::UdpSend, u64_len(d.packets), u64_len(n)),
        Err(_) => {
            let e = errno(d.result);
            match k {
                Some(k) if k.segment().is_some() && refused(&e) => {
                    ctx.offloads.refuse(Offload::UdpGso, &e);
                    send_one_by_one(ctx, &ring.frame(msg)[..k.len], k.size, k.dest)?;
                }
                _ if per_packet(&e) => c.count_drops(DropReason::SendFailed, u64_len(d.packets)),
                _ => return Err(EngineError::Udp(e)),
            }
        }
    }
    ring.recycle(msg);
    Ok(None)
}

fn egress_loop(ctx: &EngineContext) -> Result<(), EngineError> {
    let c = &*ctx.counters;
    let mut ring = ring(ctx, true)?;
    let mut done = VecDeque::with_capacity(usize::from(SLOTS) * 4);
    let mut e = EgressState {
        stager: Stager::default(),
        held: None,
        sends: vec![None; SENDS],
        backlog: Backlog::new(),
        scratch: [0u8; SCRATCH_LEN],
    };
    while !ctx.stop.load(Ordering::Relaxed) {
        if !ring.armed() && ring.provided() > 0 {
            ring.arm(Op::TunRead).map_err(EngineError::Ring)?;
        }
        if !step(&mut ring, &mut done, c, Crossing::TunRead)? {
            continue;
        }
        while let Some(d) = e.backlog.next(&mut done) {
            match (d.op, d.slot) {
                (Op::TunRead, Some(slot)) => e.forward(ctx, &mut ring, slot, d.result)?,
                // No buffer left (re-armed once some come back), cancelled, or interrupted.
                (Op::TunRead, None) => ended(d.result).map_err(EngineError::Tun)?,
                _ => {
                    sent(ctx, &mut ring, &mut e.sends, d)?;
                }
            }
        }
        let EgressState { stager, held, sends, backlog, .. } = &mut e;
        stager.flush(&mut Queue { ctx, ring: &mut ring, held, sends, backlog })?;
    }
    Ok(())
}

impl EgressState {
    /// Forwards the packet (or super-packet) a TUN read of `result` bytes put into `slot`, and
    /// gives the slot back.
    fn forward(
        &mut self,
        ctx: &EngineContext,
        ring: &mut PacketRing,
        slot: usize,
        result: i32,
    ) -> Result<(), EngineError> {
        let c = &*ctx.counters;
        let (buf, core) = ring.split(slot);
        let n = usize::try_from(result).unwrap_or(0);
        let Ok(read) = crate::dataplane::packet::tun_read(buf, true, n) else {
            c.moved(Crossing::TunRead, 1, u64_len(n));
            c.count_drop(DropReason::TooShort);
            core.give_back(slot);
            return Ok(());
        };
        let (pkts, kind) = classify(ctx, buf, &read);
        c.moved(Crossing::TunRead, pkts, u64_len(read.len));
        let decision = match kind {
            Ok(kind) => (kind, ctx.forwarder.egress(&ctx.peers.load(), buf, read.len, &mut self.scratch)),
            Err(reason) => {
                c.count_drops(reason, pkts);
                core.give_back(slot);
                return Ok(());
            }
        };
        let Self { stager, held, sends, backlog, scratch } = self;
        let out = &mut Queue { ctx, ring: core, held, sends, backlog };
        match decision {
            (Kind::Plain, Egress::Send { range, to, flow }) => {
                let dest = Dest { to, tx: ctx.tx.index(flow) };
                let datagram = buf.get(range).unwrap_or(&[]);
                let size = stager.run_size(dest, datagram.len());
                let copy = |room: &mut [u8]| {
                    room.get_mut(..datagram.len())?.copy_from_slice(datagram);
                    Some(datagram.len())
                };
                if !stager.push(out, dest, size, copy)? {
                    c.count_drop(DropReason::Oversize);
                }
            }
            (Kind::Super(seg), Egress::Send { range, to, flow }) => {
                let dest = Dest { to, tx: ctx.tx.index(flow) };
                let (outer, sup) = buf.split_at(HEADROOM);
                let outer = outer.get(range.start..).unwrap_or(&[]);
                stager.super_packet(out, c, outer, sup, &seg, dest)?;
            }
            (_, Egress::Reply { len }) => {
                c.count_drops(DropReason::NoRoute, pkts.saturating_sub(1));
                reply_icmp(ctx, &scratch[..len]);
            }
            (_, Egress::Drop(r)) => c.count_drops(r, pkts),
        }
        out.ring.give_back(slot);
        Ok(())
    }
}

/// Handles `d` if it is a TUN write's completion (counting it); returns it otherwise. The ring
/// has freed the descriptor and, after the last write from a released slot, provided the slot.
fn written(ctx: &EngineContext, d: Completion) -> Result<Option<Completion>, EngineError> {
    if d.op != Op::TunWrite {
        return Ok(Some(d));
    }
    let c = &*ctx.counters;
    match usize::try_from(d.result) {
        Ok(n) => c.moved(Crossing::TunWrite, u64_len(d.packets), u64_len(n.saturating_sub(virtio::LEN))),
        Err(_) => {
            let e = errno(d.result);
            if !per_packet(&e) {
                return Err(EngineError::Tun(e));
            }
            if refused(&e) {
                // Only a coalesced UDP write asks for an offload the TUN may lack.
                ctx.offloads.refuse(Offload::TunUso, &e);
            }
            c.count_drops(DropReason::TunWriteFailed, u64_len(d.packets));
        }
    }
    Ok(None)
}

/// Ingress: the coalescing plan and the delivered packets of one bundle.
struct IngressState {
    writer: TunWriter,
    /// Where each delivered inner packet lies in the slot.
    delivered: Vec<std::ops::Range<usize>>,
    backlog: Backlog,
    log: DropLog,
}

fn ingress_loop(ctx: &EngineContext) -> Result<(), EngineError> {
    let c = &*ctx.counters;
    let mut ring = ring(ctx, false)?;
    let mut done = VecDeque::with_capacity(WRITES * 2);
    let mut i = IngressState {
        writer: TunWriter::default(),
        delivered: Vec::with_capacity(MAX_SEGMENTS),
        backlog: Backlog::new(),
        log: DropLog::default(),
    };
    while !ctx.stop.load(Ordering::Relaxed) {
        if !ring.armed() && ring.provided() > 0 {
            ring.arm(Op::UdpRecv).map_err(EngineError::Ring)?;
        }
        if !step(&mut ring, &mut done, c, Crossing::UdpRecv)? {
            continue;
        }
        while let Some(d) = i.backlog.next(&mut done) {
            match (d.op, d.slot) {
                (Op::UdpRecv, Some(slot)) => i.deliver(ctx, &mut ring, slot, d.result)?,
                // ICMP errors of earlier sends surface here too (ECONNREFUSED and friends).
                (Op::UdpRecv, None) => ended(d.result).map_err(EngineError::Udp)?,
                _ => {
                    written(ctx, d)?;
                }
            }
        }
    }
    Ok(())
}

impl IngressState {
    /// Decapsulates the datagrams a receive of `result` bytes put into `slot`, queues their TUN
    /// writes (runs of one flow coalesced), and gives the slot back (the ring provides it again
    /// after the last write).
    fn deliver(
        &mut self,
        ctx: &EngineContext,
        ring: &mut PacketRing,
        slot: usize,
        result: i32,
    ) -> Result<(), EngineError> {
        let c = &*ctx.counters;
        let (buf, core) = ring.split(slot);
        let Some(got) = parse_received(buf, usize::try_from(result).unwrap_or(0)) else {
            c.count_drop(DropReason::TooShort);
            core.give_back(slot);
            return Ok(());
        };
        let len = got.payload.len();
        let count = len.div_ceil(got.stride).max(1);
        c.moved(Crossing::UdpRecv, u64_len(count), u64_len(len));
        if got.truncated {
            c.count_drop(DropReason::Oversize);
            self.log.note(DropReason::Oversize, got.from);
            core.give_back(slot);
            return Ok(());
        }
        let peers = ctx.peers.load();
        self.delivered.clear();
        for k in 0..count {
            let start = got.payload.start + k * got.stride;
            let end = (start + got.stride).min(got.payload.end);
            match ctx.forwarder.ingress(&peers, got.from, &mut buf[start..end], end - start) {
                Ingress::Deliver(r) => self.delivered.push(start + r.start..start + r.end),
                Ingress::Drop(r) => {
                    c.count_drop(r);
                    self.log.note(r, got.from);
                }
            }
        }
        // As in the offload engine: a bundle of two or more datagrams had verified outer
        // checksums; a lone datagram merges with nothing.
        let outer = if count > 1 { Outer::Verified } else { Outer::AsTheBackend };
        let rules = rules(ctx, outer);
        let Self { writer, delivered, backlog, .. } = self;
        // A bundle holds at most 64 datagrams on today's kernels; more (a larger GSO send from a
        // local sender) are planned in further chunks, none left behind.
        for chunk in delivered.chunks(MAX_SEGMENTS) {
            let mut packets: [&[u8]; MAX_SEGMENTS] = [&[]; MAX_SEGMENTS];
            for (p, r) in packets.iter_mut().zip(chunk) {
                *p = &buf[r.clone()];
            }
            for w in writer.plan(&packets[..chunk.len()], rules, c) {
                let mut parts: [std::ops::Range<usize>; MAX_SEGMENTS] = std::array::from_fn(|_| 0..0);
                for (p, (d, r)) in parts.iter_mut().zip(chunk[w.range()].iter().zip(w.parts())) {
                    *p = d.start + r.start..d.start + r.end;
                }
                let msg = backlog.free_msg(core, c, Crossing::UdpRecv, |_, d| written(ctx, d))?;
                let n = w.packets();
                core.write_tun(msg, slot, w.head(), &parts[..n], n).map_err(EngineError::Ring)?;
            }
        }
        core.give_back(slot);
        Ok(())
    }
}
