//! The offload engine: the kernel's segmentation offloads on both sides of user space.
//!
//! Egress: the TUN is opened with `IFF_VNET_HDR` and TSO (`TUNSETOFFLOAD`), so one read returns a
//! TCP super-packet of up to 64 KiB. weft decides once (peer, TTL, outer header), cuts the
//! super-packet into MSS-sized segments — fresh headers in a scratch area, payloads left where
//! they are — and hands all of them to the kernel with one `sendmsg` and `UDP_SEGMENT`, gathered
//! as [outer header, segment header, payload] iovecs: no payload byte is copied in user space.
//! If the kernel refuses GSO (EIO/EINVAL), the engine falls back to one `sendmsg` per segment
//! for good, losing nothing.
//!
//! Ingress: the socket has `UDP_GRO`, so one receive returns many datagrams of one size. Each is
//! checked and decapsulated as usual; runs of segments of one TCP flow are coalesced (GRO rules)
//! and written with one `writev` as a TCPv4 GSO packet with a partial checksum.

use super::{EngineContext, EngineError, STOP_CHECK, empty_read, per_packet, u64_len};
use crate::dataplane::counters::{Counters, Crossing, DropLog, DropReason, timed};
use crate::dataplane::forward::{BUF_LEN, Egress, HEADROOM, Ingress};
use crate::dataplane::sys::poll::wait_readable;
use crate::dataplane::sys::udp::{gro_cmsg_space, recv_gro, send_gso};
use crate::proto::gro::Run;
use crate::proto::gso::Segmenter;
use crate::proto::icmp;
use crate::proto::virtio::{self, VnetHdr};
use std::io::IoSlice;
use std::ops::Range;
use std::sync::atomic::Ordering;

/// Where a TUN read starts, so that the packet after the `virtio_net_hdr` lands at [`HEADROOM`]
/// like in every engine.
const READ_AT: usize = HEADROOM - virtio::LEN;
/// Most segments per `UDP_SEGMENT` send (the kernel's limit).
const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes one UDP send may carry in all (65 535 − IPv4 − UDP headers); every segment adds
/// its own headers, so a 64 KiB TCP super-packet needs two GSO sends.
const MAX_GSO_BYTES: usize = 65_507;
/// Room for one segment's IPv4 + TCP headers (60 + 60 bytes at most).
const HDR_STRIDE: usize = 128;
/// Most datagrams one GRO receive can hold.
const MAX_GRO_DATAGRAMS: usize = 64;
/// Reads per side before looking at the other side again.
const ROUNDS: usize = 8;
const ZERO_VNET: [u8; virtio::LEN] = [0; virtio::LEN];

/// The offloads the TUN must be set up with for this engine.
pub const TUN_OFFLOADS: u32 = crate::dataplane::sys::tun::offload::CSUM
    | crate::dataplane::sys::tun::offload::TSO4
    | crate::dataplane::sys::tun::offload::TSO_ECN;

struct State {
    tun_buf: Vec<u8>,
    udp_buf: Vec<u8>,
    hdrs: Vec<u8>,
    merged_hdr: [u8; HDR_STRIDE],
    cmsg: Vec<u8>,
    scratch: [u8; icmp::MAX_LEN],
    delivered: Vec<Range<usize>>,
    payloads: Vec<Range<usize>>,
    gso: bool,
    log: DropLog,
}

/// Runs until stopped: egress on this thread, ingress on a second one (each direction keeps
/// its order; the two directions do not wait for each other). `ctx.tun` must have been opened
/// with `IFF_VNET_HDR` and [`TUN_OFFLOADS`], and `ctx.socket` must have `UDP_GRO`.
pub fn run(ctx: EngineContext) -> Result<(), EngineError> {
    super::both_directions(&ctx, "weft-offload-rx", direction)
}

fn new_state() -> State {
    State {
        tun_buf: vec![0u8; BUF_LEN],
        udp_buf: vec![0u8; BUF_LEN],
        hdrs: vec![0u8; MAX_GSO_SEGMENTS * HDR_STRIDE],
        merged_hdr: [0u8; HDR_STRIDE],
        cmsg: gro_cmsg_space(),
        scratch: [0u8; icmp::MAX_LEN],
        delivered: Vec::with_capacity(MAX_GRO_DATAGRAMS),
        payloads: Vec::with_capacity(MAX_GRO_DATAGRAMS),
        gso: true,
        log: DropLog::default(),
    }
}

/// One direction's loop: poll its input, then up to [`ROUNDS`] packets.
fn direction(ctx: &EngineContext, egress: bool) -> Result<(), EngineError> {
    let mut st = new_state();
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
            let more = if egress { egress_one(ctx, &mut st)? } else { ingress_one(ctx, &mut st)? };
            if !more {
                break;
            }
        }
    }
    Ok(())
}

fn tun_write_vectored(ctx: &EngineContext, parts: &[IoSlice<'_>], packets: usize) -> Result<(), EngineError> {
    let c = &*ctx.counters;
    match timed(|| ctx.tun.send_vectored(parts)) {
        (Ok(w), ns) => c.syscall(Crossing::TunWrite, u64_len(packets), u64_len(w.saturating_sub(virtio::LEN)), ns),
        (Err(e), ns) if per_packet(&e) => {
            c.syscall(Crossing::TunWrite, 0, 0, ns);
            c.count_drops(DropReason::TunWriteFailed, u64_len(packets));
        }
        (Err(e), _) => return Err(EngineError::Tun(e)),
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

/// One TUN read; a super-packet leaves as one GSO send. Returns whether a packet was read.
fn egress_one(ctx: &EngineContext, st: &mut State) -> Result<bool, EngineError> {
    let c = &*ctx.counters;
    let (r, ns) = timed(|| ctx.tun.recv(&mut st.tun_buf[READ_AT..]));
    let n = match r {
        Ok(n) => n,
        Err(e) => {
            empty_read(c, Crossing::TunRead, e, ns)?;
            return Ok(false);
        }
    };
    let Ok(vh) = VnetHdr::parse(&st.tun_buf[READ_AT..READ_AT + n]) else {
        c.syscall(Crossing::TunRead, 1, u64_len(n), ns);
        c.count_drop(DropReason::TooShort);
        return Ok(true);
    };
    let len = n - virtio::LEN;
    let gso = vh.gso_kind() == virtio::GSO_TCPV4 && vh.gso_size > 0;
    let seg =
        if gso { Segmenter::new(&st.tun_buf[HEADROOM..HEADROOM + len], usize::from(vh.gso_size)).ok() } else { None };
    // Every packet read is accounted for: a super-packet counts as its segments, sent or dropped.
    let pkts = u64_len(seg.map_or(1, |s| s.count()));
    c.syscall(Crossing::TunRead, pkts, u64_len(len), ns);
    match vh.gso_kind() {
        virtio::GSO_NONE => {
            if vh.complete_checksum(&mut st.tun_buf[HEADROOM..HEADROOM + len]).is_err() {
                c.count_drop(DropReason::BadIpHeader);
                return Ok(true);
            }
        }
        virtio::GSO_TCPV4 if seg.is_some() => {}
        virtio::GSO_TCPV6 => {
            c.count_drop(DropReason::Ipv6);
            return Ok(true);
        }
        _ => {
            c.count_drop(DropReason::BadIpHeader);
            return Ok(true);
        }
    }
    let peers = ctx.peers.load();
    let (range, to) = match ctx.forwarder.egress(&peers, &mut st.tun_buf, len, &mut st.scratch) {
        Egress::Send { range, to } => (range, to),
        Egress::Reply { len } => {
            c.count_drops(DropReason::NoRoute, pkts);
            if ctx.tun.send_vectored(&[IoSlice::new(&ZERO_VNET), IoSlice::new(&st.scratch[..len])]).is_ok() {
                c.icmp_sent.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(true);
        }
        Egress::Drop(r) => {
            c.count_drops(r, pkts);
            return Ok(true);
        }
    };
    let Some(seg) = seg else {
        let (r, ns) = timed(|| send_gso(&ctx.tx, &[IoSlice::new(&st.tun_buf[range.clone()])], None, to));
        count_sent(c, r, ns, 1)?;
        return Ok(true);
    };
    // The outer header (VXLAN + Ethernet, or nothing for the udp backend) is the same for every
    // segment; the egress decision wrote it (and decremented the TTL) in front of the packet.
    let (outer, sup) = st.tun_buf[range.start..HEADROOM + len].split_at(HEADROOM - range.start);
    let hl = seg.hdr_len();
    let per_send = (MAX_GSO_BYTES / (outer.len() + seg.segment_len(0)).max(1)).clamp(1, MAX_GSO_SEGMENTS);
    let mut first = 0;
    while first < seg.count() {
        let count = (seg.count() - first).min(per_send);
        for k in 0..count {
            let slot = &mut st.hdrs[k * HDR_STRIDE..(k + 1) * HDR_STRIDE];
            if seg.write_header(sup, first + k, slot).is_err() {
                c.count_drops(DropReason::BadIpHeader, u64_len(seg.count() - first));
                return Ok(true);
            }
        }
        let mut iov = [IoSlice::new(&[]); 3 * MAX_GSO_SEGMENTS];
        let mut used = 0;
        for k in 0..count {
            let p = seg.payload(first + k);
            for part in [outer, &st.hdrs[k * HDR_STRIDE..k * HDR_STRIDE + hl], &sup[p]] {
                if !part.is_empty() {
                    iov[used] = IoSlice::new(part);
                    used += 1;
                }
            }
        }
        let seg_size = u16::try_from(outer.len() + seg.segment_len(first)).unwrap_or(u16::MAX);
        if st.gso && count > 1 {
            let (r, ns) = timed(|| send_gso(&ctx.tx, &iov[..used], Some(seg_size), to));
            match r {
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT)
                    ) =>
                {
                    c.syscall(Crossing::UdpSend, 0, 0, ns);
                    tracing::warn!("UDP GSO refused by the kernel ({e}); sending segments one by one from now on");
                    st.gso = false;
                }
                r => {
                    count_sent(c, r, ns, count)?;
                    first += count;
                    continue;
                }
            }
        }
        // One datagram per send: [outer, header, payload] each.
        let per = used / count;
        for k in 0..count {
            let (r, ns) = timed(|| send_gso(&ctx.tx, &iov[k * per..(k + 1) * per], None, to));
            count_sent(c, r, ns, 1)?;
        }
        first += count;
    }
    Ok(true)
}

/// One GRO receive; its datagrams are checked, decapsulated, coalesced and written.
/// Returns whether anything arrived.
fn ingress_one(ctx: &EngineContext, st: &mut State) -> Result<bool, EngineError> {
    let c = &*ctx.counters;
    let (r, ns) = timed(|| recv_gro(&ctx.socket, &mut st.udp_buf, &mut st.cmsg));
    let (n, from, seg) = match r {
        Ok(v) => v,
        Err(e) => {
            empty_read(c, Crossing::UdpRecv, e, ns)?;
            return Ok(false);
        }
    };
    let seg = seg.unwrap_or(n).max(1);
    let count = n.div_ceil(seg).max(1);
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
    let buf = &st.udp_buf;
    let mut i = 0;
    while i < st.delivered.len() {
        let first = &buf[st.delivered[i].clone()];
        let Some(mut run) = Run::start(first) else {
            tun_write_vectored(ctx, &[IoSlice::new(&ZERO_VNET), IoSlice::new(first)], 1)?;
            i += 1;
            continue;
        };
        st.payloads.clear();
        let base = st.delivered[i].start;
        st.payloads.push(base + run.first_payload().start..base + run.first_payload().end);
        let mut j = i + 1;
        while j < st.delivered.len() {
            let next_range = st.delivered[j].clone();
            match run.push(first, &buf[next_range.clone()]) {
                Some(p) => st.payloads.push(next_range.start + p.start..next_range.start + p.end),
                None => break,
            }
            j += 1;
        }
        let Some((hl, vh)) = run.finish(first, &mut st.merged_hdr) else {
            c.count_drops(DropReason::BadIpHeader, u64_len(run.segments));
            i = j;
            continue;
        };
        let mut vnet = [0u8; virtio::LEN];
        let _ = vh.write(&mut vnet);
        let mut iov = [IoSlice::new(&[]); MAX_GRO_DATAGRAMS + 2];
        iov[0] = IoSlice::new(&vnet);
        iov[1] = IoSlice::new(&st.merged_hdr[..hl]);
        let mut used = 2;
        for p in st.payloads.iter().take(MAX_GRO_DATAGRAMS) {
            iov[used] = IoSlice::new(&buf[p.clone()]);
            used += 1;
        }
        tun_write_vectored(ctx, &iov[..used], run.segments)?;
        i = j;
    }
    Ok(true)
}
