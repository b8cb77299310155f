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
use super::{EngineContext, EngineError, Read, drain, empty_read, plain_packet, read_tun, reply_icmp, u64_len};
use crate::dataplane::counters::{Crossing, DropLog, DropReason, timed};
use crate::dataplane::forward::{Egress, Ingress, SCRATCH_LEN};
use crate::dataplane::offloads::Offload;
use crate::dataplane::packet::{HEADROOM, PacketBuf};
use crate::dataplane::sys::tun::{Tun, offload};
use crate::dataplane::sys::udp::{MAX_SEGMENTS, RecvMeta, gro_cmsg_space, recv_gro, send_gso};
use crate::proto::gso::{Headers, Segmenter};
use crate::proto::virtio;
use std::io::IoSlice;
use std::net::SocketAddr;
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

/// Datagrams written for one GSO send and not sent yet, framed as they go on the wire, one
/// after another from the start of `State::frames`. The send leaves when it is full (44
/// segments of 1 472 bytes, [`MAX_GSO_BYTES`]) or when a shorter datagram ends it. A 64 KiB
/// TCP super-packet has 47 such segments, so alone each would cost two sends, two receives and
/// two TUN writes, the second for 3 segments: its tail stays staged, and when the next read is
/// another super-packet to the same peer with segments of the same size, that one's segments
/// join the send. Anything else read sends the staged datagrams first, and so does the end of
/// the batch.
#[derive(Debug, Clone, Copy)]
struct Staged {
    dest: Dest,
    /// Bytes of each datagram on the wire (outer header + segment).
    size: usize,
    /// Bytes written: `size` per datagram, but the last may be shorter (and then it is sent).
    len: usize,
}

/// Where a super-packet's datagrams go: the peer, and the pool's socket they leave from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dest {
    to: SocketAddr,
    tx: usize,
}

/// Egress: read buffers, what is to be sent from them, and the GSO sends being written.
struct EgressPath {
    /// [`BATCH`] read buffers.
    bufs: Vec<PacketBuf>,
    pending: Vec<Pending>,
    sender: RunSender,
    /// The datagrams of one GSO send, written whole ([`Staged`]).
    frames: Vec<u8>,
    staged: Option<Staged>,
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

/// Runs until stopped: egress on this thread, ingress on a second one (each direction keeps
/// its order; the two directions do not wait for each other). `ctx.tun` must have been opened
/// with `IFF_VNET_HDR` and [`TUN_OFFLOADS`], and `ctx.socket` must have `UDP_GRO`.
pub fn run(ctx: EngineContext) -> Result<(), EngineError> {
    super::both_directions(
        &ctx,
        "weft-offload-rx",
        |ctx| {
            let mut e = EgressPath {
                bufs: PacketBuf::many(BATCH),
                pending: Vec::with_capacity(BATCH),
                sender: RunSender::default(),
                frames: vec![0u8; MAX_GSO_BYTES],
                staged: None,
                scratch: [0u8; SCRATCH_LEN],
            };
            drain(ctx, &ctx.tun, || e.batch(ctx))
        },
        |ctx| {
            let mut i = IngressPath {
                buf: PacketBuf::default(),
                cmsg: gro_cmsg_space(),
                delivered: Vec::with_capacity(MAX_SEGMENTS),
                writer: TunWriter::default(),
                log: DropLog::default(),
            };
            drain(ctx, &ctx.socket, || i.receive(ctx))
        },
    )
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
    for datagram in frames.chunks(size) {
        let (r, ns) = timed(|| send_gso(sock, &[IoSlice::new(datagram)], None, to));
        count_sent(c, r, ns, 1)?;
    }
    Ok(())
}

/// Sends the staged datagrams, if any.
fn send_staged(ctx: &EngineContext, frames: &[u8], staged: &mut Option<Staged>) -> Result<(), EngineError> {
    let Some(k) = staged.take() else { return Ok(()) };
    send_datagrams(ctx, &frames[..k.len], k.size, k.dest)
}

/// Writes `outer` and then segment `i` of `sup` whole at `at` in `frames`; returns the
/// datagram's length, or `None` if it cannot be written.
fn write_datagram(frames: &mut [u8], at: usize, outer: &[u8], h: &Headers, sup: &[u8], i: usize) -> Option<usize> {
    let (o, segment) = frames.get_mut(at..)?.split_at_mut_checked(outer.len())?;
    o.copy_from_slice(outer);
    Some(outer.len() + h.write_segment(sup, i, segment).ok()?)
}

/// What a packet read from the TUN is: plain, or a super-packet to cut.
enum Kind {
    Plain,
    Super(Segmenter),
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
            let (len, size) = (packet.len, usize::from(packet.vnet.gso_size));
            let inner = buf.inner(len);
            let seg = match packet.vnet.gso_kind() {
                virtio::GSO_TCPV4 => Segmenter::new(inner, size).ok(),
                virtio::GSO_TCPV6 => Segmenter::new_v6(inner, size).ok(),
                // USO comes for both IP versions under one type.
                virtio::GSO_UDP_L4 => Segmenter::for_packet(inner, false, size).ok(),
                _ => None,
            };
            // Every packet read is accounted for: a super-packet counts as its segments, sent or
            // dropped.
            let pkts = u64_len(seg.map_or(1, |s| s.count()));
            c.syscall(Crossing::TunRead, pkts, u64_len(len), ns);
            let kind = match (packet.vnet.gso_kind(), seg) {
                (virtio::GSO_TCPV4 | virtio::GSO_TCPV6 | virtio::GSO_UDP_L4, Some(seg)) => Kind::Super(seg),
                (virtio::GSO_NONE, _) => match plain_packet(buf, &packet) {
                    Ok(_) => Kind::Plain,
                    Err(reason) => {
                        c.count_drop(reason);
                        continue;
                    }
                },
                // An IPv6 super-packet on a node without IPv6 (the TUN offers TSO6 only to a
                // dual-stack node, but USO covers both versions): an IPv6 drop like any other.
                (_, None) if ctx.forwarder.v6.is_none() && crate::proto::ip_version(inner) == Some(6) => {
                    c.count_drop(DropReason::Ipv6);
                    continue;
                }
                _ => {
                    c.count_drop(DropReason::BadIpHeader);
                    continue;
                }
            };
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
                    send_staged(ctx, &self.frames, &mut self.staged)?;
                    self.pending.push(Pending { buf: slot, range, to, tx });
                }
                Kind::Super(seg) => {
                    self.send_runs(ctx)?;
                    self.send_super_packet(ctx, slot, &seg, range, Dest { to, tx })?;
                }
            }
        }
        send_staged(ctx, &self.frames, &mut self.staged)?;
        self.send_runs(ctx)?;
        Ok(reads == BATCH)
    }

    /// Sends the pending packets in runs (see [`RunSender`]).
    fn send_runs(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        self.sender.send(ctx, &self.bufs, &mut self.pending)?;
        self.pending.clear();
        Ok(())
    }

    /// Cuts the TCP or UDP super-packet in `bufs[slot]` (its outer header in front of it from
    /// `range.start`) and sends its segments with GSO sends, each written whole into `frames`
    /// behind what is staged there if it goes the same way with segments of the same size (see
    /// [`Staged`]). A tail that a further super-packet could fill stays staged.
    fn send_super_packet(
        &mut self,
        ctx: &EngineContext,
        slot: usize,
        seg: &Segmenter,
        range: Range<usize>,
        dest: Dest,
    ) -> Result<(), EngineError> {
        let c = &*ctx.counters;
        let size = (HEADROOM - range.start) + seg.segment_len(0);
        if size > MAX_GSO_BYTES {
            // No datagram this large can be sent (the TUN's MTU keeps gso_size far below it).
            c.count_drops(DropReason::Oversize, u64_len(seg.count()));
            return Ok(());
        }
        let per_send = (MAX_GSO_BYTES / size).clamp(1, MAX_SEGMENTS);
        if self.staged.is_some_and(|k| k.dest != dest || k.size != size) {
            send_staged(ctx, &self.frames, &mut self.staged)?;
        }
        let Self { bufs, frames, staged, .. } = self;
        // The outer header (VXLAN + Ethernet, or nothing for the udp backend) is the same for
        // every segment; the egress decision wrote it (and decremented the TTL) in front of the
        // packet.
        let (outer, sup) = bufs[slot].outer_and_inner(range.start);
        let headers = seg.headers(sup);
        for i in 0..seg.count() {
            let at = staged.map_or(0, |k| k.len);
            let Some(n) = headers.as_ref().ok().and_then(|h| write_datagram(frames, at, outer, h, sup, i)) else {
                c.count_drops(DropReason::BadIpHeader, u64_len(seg.count() - i));
                return send_staged(ctx, frames, staged);
            };
            let k = staged.get_or_insert(Staged { dest, size, len: 0 });
            k.len += n;
            // A GSO send's datagrams are all `size` bytes but its last.
            if k.len == per_send * size || n < size {
                send_staged(ctx, frames, staged)?;
            }
        }
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
