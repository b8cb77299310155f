//! The batched engine: the same forwarding decision, fewer crossings.
//!
//! Egress drains the TUN into up to [`BATCH`] caller-owned buffers (each with [`HEADROOM`] for
//! the outer headers, so encapsulation copies nothing) and hands every datagram of the batch to
//! the kernel with one `sendmmsg`. Ingress takes up to [`BATCH`] datagrams with one `recvmmsg`.
//! The batch is whatever is queued when the engine looks, so a lone packet goes out at once: no
//! added latency at low load. The TUN has no batched read or write without offloads, so crossings
//! `tun_read` and `tun_write` stay at one syscall per packet here (see the offload engine).

use super::{EngineContext, EngineError, STOP_CHECK, empty_read, per_packet, reply_icmp, tun_write, u64_len};
use crate::dataplane::counters::{Crossing, DropLog, DropReason, timed};
use crate::dataplane::forward::{BUF_LEN, Egress, HEADROOM, Ingress};
use crate::dataplane::sys::mmsg::MmsgBatch;
use crate::dataplane::sys::poll::wait_readable;
use crate::proto::icmp;
use std::net::{SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::sync::atomic::Ordering;

/// Most packets per batch.
pub const BATCH: usize = 64;

struct Egressed {
    buf: usize,
    range: Range<usize>,
    to: SocketAddrV4,
}

/// Runs until stopped.
pub fn run(ctx: EngineContext) -> Result<(), EngineError> {
    let mut tun_bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; BUF_LEN]).collect();
    let mut udp_bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; BUF_LEN]).collect();
    let mut meta = vec![(0usize, SocketAddr::from(([0, 0, 0, 0], 0))); BATCH];
    let mut out: Vec<Egressed> = Vec::with_capacity(BATCH);
    let mut tx = MmsgBatch::new(BATCH);
    let mut rx = MmsgBatch::new(BATCH);
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
            udp_ready = ingress_batch(&ctx, &mut udp_bufs, &mut meta, &mut rx, &mut log)? == BATCH;
        }
    }
    Ok(())
}

/// Reads until EAGAIN or a full batch, then sends what is to be sent with one sendmmsg.
/// Returns how many packets were read.
fn egress_batch(
    ctx: &EngineContext,
    bufs: &mut [Vec<u8>],
    out: &mut Vec<Egressed>,
    tx: &mut MmsgBatch,
    scratch: &mut [u8],
) -> Result<usize, EngineError> {
    let c = &*ctx.counters;
    let peers = ctx.peers.load();
    out.clear();
    let mut read = 0;
    while read < bufs.len() {
        let buf = &mut bufs[read];
        let (r, ns) = timed(|| ctx.tun.recv(&mut buf[HEADROOM..]));
        let n = match r {
            Ok(n) => n,
            Err(e) => {
                empty_read(c, Crossing::TunRead, e, ns)?;
                break;
            }
        };
        c.syscall(Crossing::TunRead, 1, u64_len(n), ns);
        match ctx.forwarder.egress(&peers, buf, n, scratch) {
            Egress::Send { range, to } => out.push(Egressed { buf: read, range, to }),
            Egress::Reply { len } => reply_icmp(ctx, &scratch[..len]),
            Egress::Drop(r) => c.count_drop(r),
        }
        read += 1;
    }
    let mut sent = 0;
    while sent < out.len() {
        let pending = &out[sent..];
        let (r, ns) = timed(|| {
            tx.send_with(&ctx.tx, pending.len(), |i| {
                (&bufs[pending[i].buf][pending[i].range.clone()], Some(pending[i].to))
            })
        });
        match r {
            Ok(k) if k > 0 => {
                let bytes: usize = pending[..k].iter().map(|e| e.range.len()).sum();
                c.syscall(Crossing::UdpSend, u64_len(k), u64_len(bytes), ns);
                sent += k;
            }
            // The first datagram failed: count it and go on with the rest.
            Ok(_) | Err(_) if sent < out.len() => {
                if let Err(e) = &r
                    && !per_packet(e)
                {
                    return Err(EngineError::Udp(std::io::Error::from(e.kind())));
                }
                c.syscall(Crossing::UdpSend, 0, 0, ns);
                c.count_drop(DropReason::SendFailed);
                sent += 1;
            }
            _ => break,
        }
    }
    Ok(read)
}

/// One recvmmsg, then one TUN write per datagram to deliver. Returns how many arrived.
fn ingress_batch(
    ctx: &EngineContext,
    bufs: &mut [Vec<u8>],
    meta: &mut [(usize, SocketAddr)],
    rx: &mut MmsgBatch,
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
    for (buf, &(len, from)) in bufs.iter_mut().zip(meta.iter()).take(got) {
        match ctx.forwarder.ingress(&peers, from, buf, len) {
            Ingress::Deliver(range) => tun_write(ctx, &buf[range])?,
            Ingress::Drop(r) => {
                c.count_drop(r);
                log.note(r, from);
            }
        }
    }
    Ok(got)
}
