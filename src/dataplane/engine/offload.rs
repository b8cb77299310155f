//! The offload engine: the kernel's segmentation offloads on both sides of user space.
//!
//! Egress: the TUN is opened with `IFF_VNET_HDR` and TSO (`TUNSETOFFLOAD`), so one read returns a
//! TCP super-packet of up to 64 KiB (and with USO, where the kernel has it, a UDP super-packet
//! from a sender that uses `UDP_SEGMENT`, cut the same way into its datagrams). weft decides
//! once (peer, TTL, outer header), cuts the super-packet into MSS-sized segments, writes each
//! whole (outer header, fresh segment headers, payload) one after another into one buffer, and
//! hands them to the kernel with one `sendmsg` and `UDP_SEGMENT`. That copies each payload once
//! in user space, behind the checksum pass that has just read it; gathering [outer header,
//! segment header, payload] iovecs instead copies nothing here but costs the kernel's copy more
//! than that, since each piece costs it a fixed amount (`cargo bench --bench gso_send`;
//! docs/performance.md, "The send layout").
//! Packets that are not super-packets are read until EAGAIN (at most [`BATCH`]) and leave in runs:
//! consecutive datagrams to one peer of one size (the last may be shorter) go in one
//! `UDP_SEGMENT` send too. If the kernel refuses GSO (EIO/EINVAL), the engine falls back to one
//! `sendmsg` per datagram for good, losing nothing.
//!
//! Ingress: the socket has `UDP_GRO`, so one receive returns many datagrams of one size. Each is
//! checked and decapsulated as usual; runs of one TCP flow's segments are coalesced (GRO rules)
//! and written with one `writev` as a TCPv4 GSO packet with a partial checksum, and runs of one
//! UDP flow's datagrams as one `GSO_UDP_L4` packet (USO). If the TUN refuses USO (Linux < 6.2:
//! EINVAL), the run's datagrams are written one by one, and every later one too.

use super::coalesce::{Outer, TunWriter};
use super::runs::{BATCH, MAX_GSO_BYTES, Pending, RunSender, count_sent, gso_refused};
use super::stage::{Dest, Outbox, Staged, Stager, send_one_by_one};
use super::{EngineContext, EngineError, Kind, Read, classify, empty_read, read_tun, reply_icmp, serve_both, u64_len};
use crate::dataplane::counters::{Crossing, DropLog, DropReason, timed};
use crate::dataplane::forward::{Egress, Ingress, SCRATCH_LEN};
use crate::dataplane::offloads::Offload;
use crate::dataplane::packet::PacketBuf;
use crate::dataplane::sys::tun::{Tun, offload};
use crate::dataplane::sys::udp::{MAX_SEGMENTS, RecvMeta, gro_cmsg_space, recv_gro, send_gso};
use std::io::IoSlice;
use std::ops::Range;

/// The offloads the TUN must be set up with for this engine.
pub const TUN_OFFLOADS: u32 = offload::CSUM | offload::TSO4 | offload::TSO_ECN;

/// Sets the TUN's offloads: [`TUN_OFFLOADS`], TSO6 too on a dual-stack node (`ipv6`), and USO
/// (UDP super-packets from senders that use `UDP_SEGMENT`) where the kernel has it; Linux < 6.2
/// refuses the flag with EINVAL, and then the kernel cuts such packets before the TUN, as it
/// would for any device. The kernel takes USO for both IP versions or neither (USO4 alone is
/// EINVAL); on an IPv4-only node an IPv6 super-packet is counted as an IPv6 drop like any IPv6
/// packet. Returns whether USO is on.
pub fn set_tun_offloads(tun: &Tun, ipv6: bool) -> std::io::Result<bool> {
    let base = if ipv6 { TUN_OFFLOADS | offload::TSO6 } else { TUN_OFFLOADS };
    match tun.set_offload(base | offload::USO4 | offload::USO6) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => tun.set_offload(base).map(|()| false),
        Err(e) => Err(e),
    }
}

/// Egress: read buffers, what is to be sent from them, and the GSO sends being written.
struct EgressPath {
    /// [`BATCH`] read buffers.
    bufs: Vec<PacketBuf>,
    pending: Vec<Pending>,
    sender: RunSender,
    /// A super-packet's datagrams, written whole for one GSO send ([`Stager`]).
    frame: Vec<u8>,
    stager: Stager,
    scratch: [u8; SCRATCH_LEN],
}

/// Ingress: one GRO receive's buffer and what of it is delivered.
struct IngressPath {
    buf: PacketBuf,
    cmsg: Vec<u8>,
    delivered: Vec<Range<usize>>,
    writer: TunWriter,
    log: DropLog,
}

/// Runs until stopped: both directions on this thread, the way batched does (each keeps its
/// order; see [`serve_both`] for why one thread and not one per direction). `ctx.tun` must have
/// been opened with `IFF_VNET_HDR` and [`TUN_OFFLOADS`], and `ctx.socket` must have `UDP_GRO`.
pub fn run(ctx: EngineContext) -> Result<(), EngineError> {
    let mut e = EgressPath {
        bufs: PacketBuf::many(BATCH),
        pending: Vec::with_capacity(BATCH),
        sender: RunSender::default(),
        frame: vec![0u8; MAX_GSO_BYTES],
        stager: Stager::default(),
        scratch: [0u8; SCRATCH_LEN],
    };
    let mut i = IngressPath {
        buf: PacketBuf::default(),
        cmsg: gro_cmsg_space(),
        delivered: Vec::with_capacity(MAX_SEGMENTS),
        writer: TunWriter::default(),
        log: DropLog::default(),
    };
    serve_both(&ctx, || e.batch(&ctx), || i.receive(&ctx))
}

/// Sends the datagrams laid out one after another in `frames`, `size` bytes each but the last,
/// to `to`: one `UDP_SEGMENT` send, or one send per datagram once the kernel has refused GSO
/// (the datagrams of the refused send then go one by one).
fn send_datagrams(ctx: &EngineContext, frames: &[u8], size: usize, dest: Dest) -> Result<(), EngineError> {
    let (sock, to) = (ctx.tx.get(dest.tx), dest.to);
    let c = &*ctx.counters;
    let size = size.max(1);
    let count = frames.len().div_ceil(size);
    if count > 1 && ctx.offloads.has(Offload::UdpGso) {
        let seg = u16::try_from(size).unwrap_or(u16::MAX);
        let (r, ns) = timed(|| send_gso(sock, &[IoSlice::new(frames)], Some(seg), to));
        match r {
            Err(e) if gso_refused(ctx, &e, ns) => {}
            r => return count_sent(c, r, ns, count),
        }
    }
    send_one_by_one(ctx, frames, size, dest)
}

/// The offload engine's outbox: one frame, each send made at once.
struct SendNow<'a> {
    ctx: &'a EngineContext,
    frame: &'a mut [u8],
}

impl Outbox for SendNow<'_> {
    fn frame(&mut self) -> Result<&mut [u8], EngineError> {
        Ok(self.frame)
    }
    fn send(&mut self, k: Staged) -> Result<(), EngineError> {
        send_datagrams(self.ctx, &self.frame[..k.len], k.size, k.dest)
    }
    fn gso(&self) -> bool {
        self.ctx.offloads.has(Offload::UdpGso)
    }
}

impl EgressPath {
    /// Reads the TUN until EAGAIN or [`BATCH`] packets. A super-packet leaves at once (after what
    /// was read before it, to keep the order), as GSO sends of its segments; other packets leave
    /// in runs when the batch ends. Returns whether the batch was full (more may be queued).
    fn batch(&mut self, ctx: &EngineContext) -> Result<bool, EngineError> {
        let c = &*ctx.counters;
        let peers = ctx.peers.load();
        self.pending.clear();
        let mut reads = 0;
        while reads < BATCH {
            // A super-packet's segments are written out (or sent) before the next read.
            let slot = self.pending.len();
            let buf = &mut self.bufs[slot];
            let r = read_tun(ctx, buf)?;
            if matches!(r, Read::Empty) {
                break;
            }
            reads += 1;
            let Read::Packet(packet, ns) = r else { continue };
            let (pkts, kind) = classify(ctx, buf.as_mut_slice(), &packet);
            c.syscall(Crossing::TunRead, pkts, u64_len(packet.len), ns);
            let kind = match kind {
                Ok(kind) => kind,
                Err(reason) => {
                    c.count_drops(reason, pkts);
                    continue;
                }
            };
            let len = packet.len;
            let (range, to, tx) = match ctx.forwarder.egress(&peers, buf.as_mut_slice(), len, &mut self.scratch) {
                Egress::Send { range, to, flow } => (range, to, ctx.tx.index(flow)),
                Egress::Reply { len } => {
                    c.count_drops(DropReason::NoRoute, pkts.saturating_sub(1));
                    reply_icmp(ctx, &self.scratch[..len]);
                    continue;
                }
                Egress::Drop(r) => {
                    c.count_drops(r, pkts);
                    continue;
                }
            };
            match kind {
                Kind::Plain => {
                    // Whatever was read before this packet leaves before it.
                    self.stager.flush(&mut SendNow { ctx, frame: &mut self.frame })?;
                    self.pending.push(Pending { buf: slot, range, to, tx });
                }
                Kind::Super(seg) => {
                    self.send_runs(ctx)?;
                    // The outer header (VXLAN + Ethernet, or nothing for the udp backend) is the
                    // same for every segment; the egress decision wrote it (and decremented the
                    // TTL) in front of the packet.
                    let (outer, sup) = self.bufs[slot].outer_and_inner(range.start);
                    let out = &mut SendNow { ctx, frame: &mut self.frame };
                    self.stager.super_packet(out, c, outer, sup, &seg, Dest { to, tx })?;
                }
            }
        }
        self.stager.flush(&mut SendNow { ctx, frame: &mut self.frame })?;
        self.send_runs(ctx)?;
        Ok(reads == BATCH)
    }

    /// Sends the pending packets in runs (see [`RunSender`]).
    fn send_runs(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        self.sender.send(ctx, &self.bufs, &mut self.pending)?;
        self.pending.clear();
        Ok(())
    }
}

impl IngressPath {
    /// One GRO receive; its datagrams are checked, decapsulated, coalesced and written.
    /// Returns whether anything arrived.
    fn receive(&mut self, ctx: &EngineContext) -> Result<bool, EngineError> {
        let c = &*ctx.counters;
        let (r, ns) = timed(|| recv_gro(&ctx.socket, self.buf.as_mut_slice(), &mut self.cmsg));
        let meta = match r {
            Ok(v) => v,
            Err(e) => {
                empty_read(c, Crossing::UdpRecv, e, ns)?;
                return Ok(false);
            }
        };
        let RecvMeta { len: n, from, stride } = meta;
        let count = meta.datagrams();
        c.syscall(Crossing::UdpRecv, u64_len(count), u64_len(n), ns);
        let peers = ctx.peers.load();
        self.delivered.clear();
        let buf = self.buf.as_mut_slice();
        for k in 0..count {
            let (start, end) = (k * stride, ((k + 1) * stride).min(n));
            match ctx.forwarder.ingress(&peers, from, &mut buf[start..end], end - start) {
                Ingress::Deliver(r) => self.delivered.push(start + r.start..start + r.end),
                Ingress::Drop(r) => {
                    c.count_drop(r);
                    self.log.note(r, from);
                }
            }
        }
        // A bundle of two or more datagrams had verified outer checksums (see Outer::Verified);
        // a lone datagram may have had none, but alone it merges with nothing: written as it
        // came, the receiving stack checks it.
        let outer = if count > 1 { Outer::Verified } else { Outer::AsTheBackend };
        // A GRO receive holds at most 64 datagrams on today's kernels; more (a larger GSO send
        // from a local sender) are written in further calls, none left behind.
        for chunk in self.delivered.chunks(MAX_SEGMENTS) {
            let mut packets: [&[u8]; MAX_SEGMENTS] = [&[]; MAX_SEGMENTS];
            for (slot, r) in packets.iter_mut().zip(chunk) {
                *slot = &self.buf.as_slice()[r.clone()];
            }
            self.writer.write(ctx, &packets[..chunk.len()], outer)?;
        }
        Ok(true)
    }
}
