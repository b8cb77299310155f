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
use super::{EngineContext, EngineError, Read, STOP_CHECK, empty_read, plain_packet, read_tun, reply_icmp, u64_len};
use crate::dataplane::counters::{Crossing, DropLog, timed};
use crate::dataplane::forward::{Egress, Ingress, SCRATCH_LEN};
use crate::dataplane::packet::PacketBuf;
use crate::dataplane::sys::mmsg::MmsgBatch;
use crate::dataplane::sys::poll::wait_readable;
use crate::dataplane::sys::udp::RecvMeta;
use std::ops::Range;
use std::sync::atomic::Ordering;

/// Egress: the batch's read buffers and what is to be sent from them.
struct EgressPath {
    bufs: Vec<PacketBuf>,
    out: Vec<Pending>,
    tx: RunSender,
    scratch: [u8; SCRATCH_LEN],
}

/// Ingress: the batch's receive buffers and the coalescing writer.
struct IngressPath {
    bufs: Vec<PacketBuf>,
    meta: Vec<RecvMeta>,
    rx: MmsgBatch,
    writer: TunWriter,
    log: DropLog,
}

/// Runs until stopped. `ctx.tun` must have been opened with `IFF_VNET_HDR` (no offloads).
pub fn run(ctx: EngineContext) -> Result<(), EngineError> {
    let mut tx = EgressPath {
        bufs: PacketBuf::many(BATCH),
        out: Vec::with_capacity(BATCH),
        tx: RunSender::default(),
        scratch: [0u8; SCRATCH_LEN],
    };
    let mut rx = IngressPath {
        bufs: PacketBuf::many(BATCH),
        meta: vec![RecvMeta::EMPTY; BATCH],
        rx: MmsgBatch::new(BATCH),
        writer: TunWriter::default(),
        log: DropLog::default(),
    };
    let c = &*ctx.counters;
    let (mut tun_ready, mut udp_ready) = (false, false);
    while !ctx.stop.load(Ordering::Relaxed) {
        if !tun_ready && !udp_ready {
            c.polls.fetch_add(1, Ordering::Relaxed);
            [tun_ready, udp_ready] = wait_readable([&ctx.tun, &ctx.socket], STOP_CHECK).map_err(EngineError::Poll)?;
        }
        // A full batch means more may be queued: go round again without poll().
        if tun_ready {
            tun_ready = tx.batch(&ctx)? == BATCH;
        }
        if udp_ready {
            udp_ready = rx.batch(&ctx)? == BATCH;
        }
    }
    Ok(())
}

impl EgressPath {
    /// Reads until EAGAIN or a full batch, then sends what is to be sent with one sendmmsg.
    /// Returns how many packets were read.
    fn batch(&mut self, ctx: &EngineContext) -> Result<usize, EngineError> {
        let c = &*ctx.counters;
        let peers = ctx.peers.load();
        self.out.clear();
        let mut read = 0;
        while read < self.bufs.len() {
            let slot = self.out.len();
            let buf = &mut self.bufs[slot];
            let r = read_tun(ctx, buf)?;
            if matches!(r, Read::Empty) {
                break;
            }
            read += 1;
            let Read::Packet(packet, ns) = r else { continue };
            c.syscall(Crossing::TunRead, 1, u64_len(packet.len), ns);
            let len = match plain_packet(buf.as_mut_slice(), &packet) {
                Ok(len) => len,
                Err(reason) => {
                    c.count_drop(reason);
                    continue;
                }
            };
            match ctx.forwarder.egress(&peers, buf.as_mut_slice(), len, &mut self.scratch) {
                Egress::Send { range, to, flow } => {
                    self.out.push(Pending { buf: slot, range, to, tx: ctx.tx.index(flow) })
                }
                Egress::Reply { len } => reply_icmp(ctx, &self.scratch[..len]),
                Egress::Drop(r) => c.count_drop(r),
            }
        }
        self.tx.send(ctx, &self.bufs, &mut self.out)?;
        Ok(read)
    }
}

impl IngressPath {
    /// One recvmmsg, then the datagrams to deliver written with runs coalesced. Returns how many
    /// arrived.
    fn batch(&mut self, ctx: &EngineContext) -> Result<usize, EngineError> {
        let c = &*ctx.counters;
        let (r, ns) = timed(|| self.rx.recv(&ctx.socket, &mut self.bufs, &mut self.meta));
        let got = match r {
            Ok(n) => n.min(BATCH),
            Err(e) => {
                empty_read(c, Crossing::UdpRecv, e, ns)?;
                return Ok(0);
            }
        };
        let bytes: usize = self.meta[..got].iter().map(|m| m.len).sum();
        c.syscall(Crossing::UdpRecv, u64_len(got), u64_len(bytes), ns);
        let peers = ctx.peers.load();
        // Decapsulate in place first (which buffer, where the inner packet is), then write.
        let mut delivered: [(usize, Range<usize>); BATCH] = std::array::from_fn(|_| (0, 0..0));
        let mut n = 0;
        for (k, (buf, m)) in self.bufs.iter_mut().zip(&self.meta).take(got).enumerate() {
            match ctx.forwarder.ingress(&peers, m.from, buf.as_mut_slice(), m.len) {
                Ingress::Deliver(range) => {
                    delivered[n] = (k, range);
                    n += 1;
                }
                Ingress::Drop(r) => {
                    c.count_drop(r);
                    self.log.note(r, m.from);
                }
            }
        }
        let mut packets: [&[u8]; BATCH] = [&[]; BATCH];
        for (slot, (k, range)) in packets.iter_mut().zip(&delivered[..n]) {
            *slot = &self.bufs[*k].as_slice()[range.clone()];
        }
        // recvmmsg returns datagrams one by one, each with or without an outer checksum.
        self.writer.write(ctx, &packets[..n], Outer::AsTheBackend).map(|()| got)
    }
}
