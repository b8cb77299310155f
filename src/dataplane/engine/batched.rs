//! The batched engine: the same forwarding decision, fewer crossings.
//!
//! Egress drains the TUN into up to [`BATCH`] caller-owned buffers (each with [`HEADROOM`] for
//! the outer headers, so encapsulation copies nothing) and hands the whole batch to the kernel
//! with one `sendmmsg`, consecutive datagrams to one peer of one size going as one GSO message
//! (see [`RunSender`]). Ingress takes up to [`BATCH`] datagrams with one `recvmmsg` and writes
//! them into the TUN with runs of one flow coalesced (see [`TunWriter`]): the TUN is opened with
//! `IFF_VNET_HDR` for that, but without offloads, so that every read is one plain packet. The
//! batch is whatever is queued when the engine looks, so a lone packet goes out at once: no added
//! latency at low load. The TUN has no batched read: crossing `tun_read` stays at one syscall
//! per packet here (the offload engine reads super-packets).

use super::coalesce::{Outer, TunWriter};
use super::runs::{BATCH, Pending, RunSender};
use super::{EngineContext, EngineError, STOP_CHECK, empty_read, read_tun, reply_icmp, u64_len};
use crate::dataplane::counters::{Crossing, DropLog, DropReason, timed};
use crate::dataplane::forward::{BUF_LEN, Egress, HEADROOM, Ingress, READ_AT};
use crate::dataplane::sys::mmsg::MmsgBatch;
use crate::dataplane::sys::poll::wait_readable;
use crate::proto::icmp;
use crate::proto::virtio::{self, VnetHdr};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

/// Runs until stopped. `ctx.tun` must have been opened with `IFF_VNET_HDR` (no offloads).
pub fn run(ctx: EngineContext) -> Result<(), EngineError> {
    let mut tun_bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; BUF_LEN]).collect();
    let mut udp_bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; BUF_LEN]).collect();
    let mut meta = vec![(0usize, SocketAddr::from(([0, 0, 0, 0], 0))); BATCH];
    let mut out: Vec<Pending> = Vec::with_capacity(BATCH);
    let mut tx = RunSender::new(ctx.udp_gso);
    let mut rx = MmsgBatch::new(BATCH);
    let mut writer = TunWriter::default();
    let mut scratch = [0u8; icmp::MAX_LEN];
    let mut log = DropLog::default();
    let c = &*ctx.counters;
    let (mut tun_ready, mut udp_ready) = (false, false);
    while !ctx.stop.load(Ordering::Relaxed) {
        if !tun_ready && !udp_ready {
            c.polls.fetch_add(1, Ordering::Relaxed);
            [tun_ready, udp_ready] = wait_readable([&ctx.tun, &ctx.socket], STOP_CHECK).map_err(EngineError::Poll)?;
        }
        // A full batch means more may be queued: go round again without poll().
        if tun_ready {
            tun_ready = egress_batch(&ctx, &mut tun_bufs, &mut out, &mut tx, &mut scratch)? == BATCH;
        }
        if udp_ready {
            udp_ready = ingress_batch(&ctx, &mut udp_bufs, &mut meta, &mut rx, &mut writer, &mut log)? == BATCH;
        }
    }
    Ok(())
}

/// Reads until EAGAIN or a full batch, then sends what is to be sent with one sendmmsg.
/// Returns how many packets were read.
fn egress_batch(
    ctx: &EngineContext,
    bufs: &mut [Vec<u8>],
    out: &mut Vec<Pending>,
    tx: &mut RunSender,
    scratch: &mut [u8],
) -> Result<usize, EngineError> {
    let c = &*ctx.counters;
    let peers = ctx.peers.load();
    out.clear();
    let mut read = 0;
    while read < bufs.len() {
        let slot = out.len();
        let buf = &mut bufs[slot];
        let Some((n, ns)) = read_tun(ctx, &mut buf[READ_AT..])? else { break };
        read += 1;
        let len = n.saturating_sub(virtio::LEN);
        c.syscall(Crossing::TunRead, 1, u64_len(len), ns);
        // Without offloads the kernel hands over finished plain packets; anything else is a
        // device someone else set up.
        match VnetHdr::parse(&buf[READ_AT..READ_AT + n]) {
            Ok(vh) if vh.gso_kind() == virtio::GSO_NONE => {
                if vh.complete_checksum(&mut buf[HEADROOM..HEADROOM + len]).is_err() {
                    c.count_drop(DropReason::BadIpHeader);
                    continue;
                }
            }
            Ok(_) => {
                c.count_drop(DropReason::BadIpHeader);
                continue;
            }
            Err(_) => {
                c.count_drop(DropReason::TooShort);
                continue;
            }
        }
        match ctx.forwarder.egress(&peers, buf, len, scratch) {
            Egress::Send { range, to } => out.push(Pending { buf: slot, range, to }),
            Egress::Reply { len } => reply_icmp(ctx, &scratch[..len]),
            Egress::Drop(r) => c.count_drop(r),
        }
    }
    tx.send(ctx, bufs, out)?;
    Ok(read)
}

/// One recvmmsg, then the datagrams to deliver written with runs coalesced. Returns how many
/// arrived.
fn ingress_batch(
    ctx: &EngineContext,
    bufs: &mut [Vec<u8>],
    meta: &mut [(usize, SocketAddr)],
    rx: &mut MmsgBatch,
    writer: &mut TunWriter,
    log: &mut DropLog,
) -> Result<usize, EngineError> {
    let c = &*ctx.counters;
    let (r, ns) = timed(|| rx.recv(&ctx.socket, bufs, meta));
    let got = match r {
        Ok(n) => n,
        Err(e) => {
            empty_read(c, Crossing::UdpRecv, e, ns)?;
            return Ok(0);
        }
    };
    let bytes: usize = meta[..got].iter().map(|m| m.0).sum();
    c.syscall(Crossing::UdpRecv, u64_len(got), u64_len(bytes), ns);
    let peers = ctx.peers.load();
    // Decapsulate in place first (which buffer, where the inner packet is), then write.
    let mut delivered = [(0usize, 0usize, 0usize); BATCH];
    let mut n = 0;
    for (k, (buf, &(len, from))) in bufs.iter_mut().zip(meta.iter()).take(got.min(BATCH)).enumerate() {
        match ctx.forwarder.ingress(&peers, from, buf, len) {
            Ingress::Deliver(range) => {
                delivered[n] = (k, range.start, range.end);
                n += 1;
            }
            Ingress::Drop(r) => {
                c.count_drop(r);
                log.note(r, from);
            }
        }
    }
    let mut packets: [&[u8]; BATCH] = [&[]; BATCH];
    for (slot, &(k, start, end)) in packets.iter_mut().zip(&delivered[..n]) {
        *slot = &bufs[k][start..end];
    }
    // recvmmsg returns datagrams one by one, each with or without an outer checksum.
    writer.write(ctx, &packets[..n], Outer::AsTheBackend)?;
    Ok(got)
}
