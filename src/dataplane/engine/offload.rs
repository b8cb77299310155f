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

use super::coalesce::{Outer, TunWriter, offload_refused};
use super::runs::{BATCH, MAX_GSO_BYTES, Pending, RunSender, gso_refused};
use super::{EngineContext, EngineError, STOP_CHECK, empty_read, per_packet, read_tun, reply_icmp, u64_len};
use crate::dataplane::counters::{Counters, Crossing, DropLog, DropReason, timed};
use crate::dataplane::forward::{BUF_LEN, Egress, HEADROOM, Ingress, READ_AT};
use crate::dataplane::sys::poll::wait_readable;
use crate::dataplane::sys::tun::{Tun, offload};
use crate::dataplane::sys::udp::{MAX_SEGMENTS, RecvMeta, gro_cmsg_space, recv_gro, send_gso};
use crate::proto::gso::{Headers, Segmenter};
use crate::proto::icmp;
use crate::proto::virtio::{self, VnetHdr};
use std::io::IoSlice;
use std::net::SocketAddrV4;
use std::ops::Range;
use std::sync::atomic::Ordering;

/// Batches (or GRO receives) per side before looking at the other side again.
const ROUNDS: usize = 8;

/// The offloads the TUN must be set up with for this engine.
pub const TUN_OFFLOADS: u32 = offload::CSUM | offload::TSO4 | offload::TSO_ECN;

/// Sets the TUN's offloads: [`TUN_OFFLOADS`], and USO (UDP super-packets from senders that use
/// `UDP_SEGMENT`) where the kernel has it; Linux < 6.2 refuses the flag with EINVAL, and then
/// the kernel cuts such packets before the TUN, as it would for any device. The kernel takes
/// USO for both IP versions or neither (USO4 alone is EINVAL); the overlay is IPv4, and an IPv6
/// super-packet is counted as an IPv6 drop like any IPv6 packet. Returns whether USO is on.
pub fn set_tun_offloads(tun: &Tun) -> std::io::Result<bool> {
    match tun.set_offload(TUN_OFFLOADS | offload::USO4 | offload::USO6) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => tun.set_offload(TUN_OFFLOADS).map(|()| false),
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
    to: SocketAddrV4,
    /// Bytes of each datagram on the wire (outer header + segment).
    size: usize,
    /// Bytes written: `size` per datagram, but the last may be shorter (and then it is sent).
    len: usize,
}

struct State {
    /// Egress: [`BATCH`] read buffers, each with [`HEADROOM`].
    tun_bufs: Vec<Vec<u8>>,
    pending: Vec<Pending>,
    sender: RunSender,
    udp_buf: Vec<u8>,
    /// Egress: the datagrams of one GSO send, written whole ([`Staged`]).
    frames: Vec<u8>,
    staged: Option<Staged>,
    cmsg: Vec<u8>,
    scratch: [u8; icmp::MAX_LEN],
    delivered: Vec<Range<usize>>,
    writer: TunWriter,
    log: DropLog,
}

/// Runs until stopped: egress on this thread, ingress on a second one (each direction keeps
/// its order; the two directions do not wait for each other). `ctx.tun` must have been opened
/// with `IFF_VNET_HDR` and [`TUN_OFFLOADS`], and `ctx.socket` must have `UDP_GRO`.
pub fn run(ctx: EngineContext) -> Result<(), EngineError> {
    super::both_directions(&ctx, "weft-offload-rx", direction)
}

fn new_state(egress: bool, gso: bool) -> State {
    State {
        tun_bufs: (0..if egress { BATCH } else { 0 }).map(|_| vec![0u8; BUF_LEN]).collect(),
        pending: Vec::with_capacity(BATCH),
        sender: RunSender::new(gso),
        udp_buf: vec![0u8; if egress { 0 } else { BUF_LEN }],
        frames: vec![0u8; if egress { MAX_GSO_BYTES } else { 0 }],
        staged: None,
        cmsg: gro_cmsg_space(),
        scratch: [0u8; icmp::MAX_LEN],
        delivered: Vec::with_capacity(MAX_SEGMENTS),
        writer: TunWriter::default(),
        log: DropLog::default(),
    }
}

/// One direction's loop: poll its input, then up to [`ROUNDS`] batches.
fn direction(ctx: &EngineContext, egress: bool) -> Result<(), EngineError> {
    let mut st = new_state(egress, ctx.udp_gso);
    let c = &*ctx.counters;
    while !ctx.stop.load(Ordering::Relaxed) {
        c.polls.fetch_add(1, Ordering::Relaxed);
        let ready =
            if egress { wait_readable([&ctx.tun], STOP_CHECK) } else { wait_readable([&ctx.socket], STOP_CHECK) };
        let [ready] = ready.map_err(EngineError::Poll)?;
        if !ready {
            continue;
        }
        for _ in 0..ROUNDS {
            let more = if egress { egress_batch(ctx, &mut st)? } else { ingress_one(ctx, &mut st)? };
            if !more {
                break;
            }
        }
    }
    Ok(())
}

fn count_sent(c: &Counters, r: std::io::Result<usize>, ns: u64, packets: usize) -> Result<(), EngineError> {
    match r {
        Ok(b) => c.syscall(Crossing::UdpSend, u64_len(packets), u64_len(b), ns),
        Err(e) if per_packet(&e) => {
            c.syscall(Crossing::UdpSend, 0, 0, ns);
            c.count_drops(DropReason::SendFailed, u64_len(packets));
        }
        Err(e) => return Err(EngineError::Udp(e)),
    }
    Ok(())
}

/// Sends the datagrams laid out one after another in `frames`, `size` bytes each but the last,
/// to `to`: one `UDP_SEGMENT` send, or one send per datagram once the kernel has refused GSO
/// (then for good; the datagrams of the refused send go one by one).
fn send_datagrams(
    ctx: &EngineContext,
    gso: &mut bool,
    frames: &[u8],
    size: usize,
    to: SocketAddrV4,
) -> Result<(), EngineError> {
    let c = &*ctx.counters;
    let size = size.max(1);
    let count = frames.len().div_ceil(size);
    if *gso && count > 1 {
        let seg = u16::try_from(size).unwrap_or(u16::MAX);
        let (r, ns) = timed(|| send_gso(&ctx.tx, &[IoSlice::new(frames)], Some(seg), to));
        match r {
            Err(e) if offload_refused(&e) => gso_refused(c, &e, ns, gso),
            r => return count_sent(c, r, ns, count),
        }
    }
    for datagram in frames.chunks(size) {
        let (r, ns) = timed(|| send_gso(&ctx.tx, &[IoSlice::new(datagram)], None, to));
        count_sent(c, r, ns, 1)?;
    }
    Ok(())
}

/// Reads the TUN until EAGAIN or [`BATCH`] packets. A super-packet leaves at once (after what
/// was read before it, to keep the order), as GSO sends of its segments; other packets leave in
/// runs when the batch ends. Returns whether the batch was full (more may be queued).
fn egress_batch(ctx: &EngineContext, st: &mut State) -> Result<bool, EngineError> {
    let c = &*ctx.counters;
    let peers = ctx.peers.load();
    st.pending.clear();
    let mut reads = 0;
    while reads < BATCH {
        // A super-packet's segments are written out (or sent) before the next read.
        let slot = st.pending.len();
        let buf = &mut st.tun_bufs[slot];
        let Some((n, ns)) = read_tun(ctx, &mut buf[READ_AT..])? else { break };
        reads += 1;
        let Ok(vh) = VnetHdr::parse(&buf[READ_AT..READ_AT + n]) else {
            c.syscall(Crossing::TunRead, 1, u64_len(n), ns);
            c.count_drop(DropReason::TooShort);
            continue;
        };
        let len = n - virtio::LEN;
        let (inner, size) = (&buf[HEADROOM..HEADROOM + len], usize::from(vh.gso_size));
        let seg = match vh.gso_kind() {
            virtio::GSO_TCPV4 => Segmenter::new(inner, size).ok(),
            virtio::GSO_UDP_L4 => Segmenter::new_udp(inner, size).ok(),
            _ => None,
        };
        // Every packet read is accounted for: a super-packet counts as its segments, sent or dropped.
        let pkts = u64_len(seg.map_or(1, |s| s.count()));
        c.syscall(Crossing::TunRead, pkts, u64_len(len), ns);
        match vh.gso_kind() {
            virtio::GSO_NONE => {
                if vh.complete_checksum(&mut buf[HEADROOM..HEADROOM + len]).is_err() {
                    c.count_drop(DropReason::BadIpHeader);
                    continue;
                }
            }
            virtio::GSO_TCPV4 | virtio::GSO_UDP_L4 if seg.is_some() => {}
            // USO comes for both IP versions at once: an IPv6 UDP super-packet is IPv6 too.
            _ if vh.gso_kind() == virtio::GSO_TCPV6 || buf.get(HEADROOM).is_some_and(|b| b >> 4 == 6) => {
                c.count_drop(DropReason::Ipv6);
                continue;
            }
            _ => {
                c.count_drop(DropReason::BadIpHeader);
                continue;
            }
        }
        let (range, to) = match ctx.forwarder.egress(&peers, buf, len, &mut st.scratch) {
            Egress::Send { range, to } => (range, to),
            Egress::Reply { len } => {
                c.count_drops(DropReason::NoRoute, pkts.saturating_sub(1));
                reply_icmp(ctx, &st.scratch[..len]);
                continue;
            }
            Egress::Drop(r) => {
                c.count_drops(r, pkts);
                continue;
            }
        };
        match seg {
            None => {
                // Whatever was read before this packet leaves before it.
                flush_staged(ctx, st)?;
                st.pending.push(Pending { buf: slot, range, to });
            }
            Some(seg) => {
                send_runs(ctx, st)?;
                send_super_packet(ctx, st, slot, &seg, range, to)?;
            }
        }
    }
    flush_staged(ctx, st)?;
    send_runs(ctx, st)?;
    Ok(reads == BATCH)
}

/// Sends the pending packets in runs (see [`RunSender`]).
fn send_runs(ctx: &EngineContext, st: &mut State) -> Result<(), EngineError> {
    st.sender.send(ctx, &st.tun_bufs, &st.pending)?;
    st.pending.clear();
    Ok(())
}

/// Sends the staged datagrams, if any.
fn flush_staged(ctx: &EngineContext, st: &mut State) -> Result<(), EngineError> {
    send_staged(ctx, &mut st.sender.gso, &st.frames, &mut st.staged)
}

/// [`flush_staged`] on the parts of a `State` it needs, for a caller that holds other parts of
/// it (the read buffer a super-packet is being cut from).
fn send_staged(
    ctx: &EngineContext,
    gso: &mut bool,
    frames: &[u8],
    staged: &mut Option<Staged>,
) -> Result<(), EngineError> {
    let Some(k) = staged.take() else { return Ok(()) };
    send_datagrams(ctx, gso, &frames[..k.len], k.size, k.to)
}

/// Writes `outer` and then segment `i` of `sup` whole at `at` in `frames`; returns the
/// datagram's length, or `None` if it cannot be written.
fn write_datagram(frames: &mut [u8], at: usize, outer: &[u8], h: &Headers, sup: &[u8], i: usize) -> Option<usize> {
    let (o, segment) = frames.get_mut(at..)?.split_at_mut_checked(outer.len())?;
    o.copy_from_slice(outer);
    Some(outer.len() + h.write_segment(sup, i, segment).ok()?)
}

/// Cuts the TCP or UDP super-packet in `tun_bufs[slot]` (inner packet at [`HEADROOM`], its
/// outer header in front at `range.start`) and sends its segments with GSO sends, each written
/// whole into `frames` behind what is staged there if it is to the same peer with segments of
/// the same size (see [`Staged`]). A tail that a further super-packet could fill stays staged.
fn send_super_packet(
    ctx: &EngineContext,
    st: &mut State,
    slot: usize,
    seg: &Segmenter,
    range: Range<usize>,
    to: SocketAddrV4,
) -> Result<(), EngineError> {
    let c = &*ctx.counters;
    let size = (HEADROOM - range.start) + seg.segment_len(0);
    if size > MAX_GSO_BYTES {
        // No datagram this large can be sent (the TUN's MTU keeps gso_size far below it).
        c.count_drops(DropReason::Oversize, u64_len(seg.count()));
        return Ok(());
    }
    let per_send = (MAX_GSO_BYTES / size).clamp(1, MAX_SEGMENTS);
    if st.staged.is_some_and(|k| k.to != to || k.size != size) {
        flush_staged(ctx, st)?;
    }
    let State { tun_bufs, frames, staged, sender, .. } = st;
    // The outer header (VXLAN + Ethernet, or nothing for the udp backend) is the same for every
    // segment; the egress decision wrote it (and decremented the TTL) in front of the packet.
    let (outer, sup) = tun_bufs[slot].split_at(HEADROOM);
    let outer = &outer[range.start..];
    let headers = seg.headers(sup);
    for i in 0..seg.count() {
        let at = staged.map_or(0, |k| k.len);
        let Some(n) = headers.as_ref().ok().and_then(|h| write_datagram(frames, at, outer, h, sup, i)) else {
            c.count_drops(DropReason::BadIpHeader, u64_len(seg.count() - i));
            return send_staged(ctx, &mut sender.gso, frames, staged);
        };
        let k = staged.get_or_insert(Staged { to, size, len: 0 });
        k.len += n;
        // A GSO send's datagrams are all `size` bytes but its last.
        if k.len == per_send * size || n < size {
            send_staged(ctx, &mut sender.gso, frames, staged)?;
        }
    }
    Ok(())
}

/// One GRO receive; its datagrams are checked, decapsulated, coalesced and written.
/// Returns whether anything arrived.
fn ingress_one(ctx: &EngineContext, st: &mut State) -> Result<bool, EngineError> {
    let c = &*ctx.counters;
    let (r, ns) = timed(|| recv_gro(&ctx.socket, &mut st.udp_buf, &mut st.cmsg));
    let meta = match r {
        Ok(v) => v,
        Err(e) => {
            empty_read(c, Crossing::UdpRecv, e, ns)?;
            return Ok(false);
        }
    };
    let RecvMeta { len: n, from, stride: seg } = meta;
    let count = meta.datagrams();
    c.syscall(Crossing::UdpRecv, u64_len(count), u64_len(n), ns);
    let peers = ctx.peers.load();
    st.delivered.clear();
    for k in 0..count {
        let (start, end) = (k * seg, ((k + 1) * seg).min(n));
        match ctx.forwarder.ingress(&peers, from, &mut st.udp_buf[start..end], end - start) {
            Ingress::Deliver(r) => st.delivered.push(start + r.start..start + r.end),
            Ingress::Drop(r) => {
                c.count_drop(r);
                st.log.note(r, from);
            }
        }
    }
    // A bundle of two or more datagrams had verified outer checksums (see Outer::Verified); a
    // lone datagram may have had none, but alone it merges with nothing: written as it came,
    // the receiving stack checks it.
    let outer = if count > 1 { Outer::Verified } else { Outer::AsTheBackend };
    // A GRO receive holds at most 64 datagrams on today's kernels; more (a larger GSO send
    // from a local sender) are written in further calls, none left behind.
    for chunk in st.delivered.chunks(MAX_SEGMENTS) {
        let mut packets: [&[u8]; MAX_SEGMENTS] = [&[]; MAX_SEGMENTS];
        for (slot, r) in packets.iter_mut().zip(chunk) {
            *slot = &st.udp_buf[r.clone()];
        }
        st.writer.write(ctx, &packets[..chunk.len()], outer)?;
    }
    Ok(true)
}
