//! The uring engine: the batched engine's forwarding with every crossing submitted through
//! io_uring, so that the TUN, which has no batched read or write of its own, is read and written
//! many packets per syscall too.
//!
//! Each direction has its own thread and ring ([`PacketRing`]) over one block of registered
//! packet memory. Egress keeps one multishot read armed on the TUN: the kernel fills provided
//! buffers (each with [`HEADROOM`] in front, so encapsulation copies nothing) until none is left;
//! weft encapsulates in place and queues one send per packet. Ingress keeps one multishot
//! recvmsg armed on the socket and queues one fixed-buffer TUN write per delivered packet. The
//! queued requests go to the kernel with the next `io_uring_enter`, which also waits for the next
//! completions: in a busy loop that is the only syscall, whatever the number of packets.
//!
//! Accounting: the enter that submits and reaps is counted as a syscall of the crossing the
//! thread reads (`tun_read` for egress, `udp_recv` for ingress); the sends and writes it submits
//! move packets on their own crossings without a syscall of their own. An enter that only waits
//! (nothing was done) is counted as a poll, as every engine counts its waits.

use super::{EngineContext, EngineError, STOP_CHECK, per_packet, reply_icmp, u64_len};
use crate::dataplane::counters::{Counters, Crossing, DropLog, DropReason, timed};
use crate::dataplane::forward::{Egress, Ingress, SCRATCH_LEN};
use crate::dataplane::packet::HEADROOM;
use crate::dataplane::sys::uring::{Completion, Op, PacketRing, RECVMSG_PREFIX, parse_received};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;

/// Packet buffers per direction (a power of two): what one multishot request can fill before
/// weft hands buffers back.
pub const SLOTS: u16 = 256;
/// Slack after the largest datagram, so that a datagram one byte too long is seen as such.
const SLACK: usize = 64;

/// Bytes per slot for an overlay MTU of `mtu`: room for the outer headers (or the recvmsg
/// prefix), the VXLAN and Ethernet headers, and the packet.
pub fn slot_len(mtu: usize) -> usize {
    (HEADROOM.max(RECVMSG_PREFIX) + HEADROOM + mtu + SLACK).next_multiple_of(64)
}

/// Runs until stopped: egress on this thread, ingress on a second one.
pub fn run(ctx: EngineContext) -> Result<(), EngineError> {
    // io_uring waits for readiness itself; a non-blocking fd would turn that into EAGAIN.
    ctx.tun.set_nonblocking(false).map_err(EngineError::Tun)?;
    ctx.socket.set_nonblocking(false).map_err(EngineError::Udp)?;
    for tx in ctx.tx.iter() {
        tx.set_nonblocking(false).map_err(EngineError::Udp)?;
    }
    super::both_directions(&ctx, "weft-uring-rx", egress_loop, ingress_loop)
}

fn ring(ctx: &EngineContext, provide_at: usize) -> Result<PacketRing, EngineError> {
    // One registered sending socket: the pool's first (flows are not spread here).
    let fds = [ctx.tun.as_fd().as_raw_fd(), ctx.socket.as_raw_fd(), ctx.tx.get(0).as_raw_fd()];
    PacketRing::new(fds, SLOTS, slot_len(ctx.forwarder.mtu), provide_at).map_err(EngineError::Ring)
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

/// A send or TUN write finished with `result`: a packet moved on `crossing`, or one dropped for
/// `reason`; an error about the fd itself stops the engine.
fn finished(c: &Counters, crossing: Crossing, reason: DropReason, result: i32) -> Result<(), io::Error> {
    match usize::try_from(result) {
        Ok(n) => c.moved(crossing, 1, u64_len(n)),
        Err(_) => {
            ended(result)?;
            c.count_drop(reason);
        }
    }
    Ok(())
}

/// One round of the ring: submit what is queued and reap what is done (counted as one syscall
/// of `crossing`); with nothing done, wait for something (counted as a poll, like every other
/// engine's wait). Returns whether `done` holds anything.
fn step(
    ring: &mut PacketRing,
    done: &mut Vec<Completion>,
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

fn egress_loop(ctx: &EngineContext) -> Result<(), EngineError> {
    let c = &*ctx.counters;
    let mut ring = ring(ctx, HEADROOM)?;
    let mut done: Vec<Completion> = Vec::with_capacity(usize::from(SLOTS) * 2);
    let mut scratch = [0u8; SCRATCH_LEN];
    while !ctx.stop.load(Ordering::Relaxed) {
        if !ring.armed() && ring.provided() > 0 {
            ring.arm(Op::TunRead).map_err(EngineError::Ring)?;
        }
        if !step(&mut ring, &mut done, c, Crossing::TunRead)? {
            continue;
        }
        let peers = ctx.peers.load();
        for d in &done {
            match (d.op, d.slot) {
                (Op::TunRead, Some(slot)) => {
                    let n = usize::try_from(d.result).unwrap_or(0);
                    c.moved(Crossing::TunRead, 1, u64_len(n));
                    match ctx.forwarder.egress(&peers, ring.slot(slot), n, &mut scratch) {
                        Egress::Send { range, to, .. } => ring.send(slot, range, to).map_err(EngineError::Ring)?,
                        Egress::Reply { len } => {
                            reply_icmp(ctx, &scratch[..len]);
                            ring.give_back(slot);
                        }
                        Egress::Drop(r) => {
                            c.count_drop(r);
                            ring.give_back(slot);
                        }
                    }
                }
                // No buffer left (re-armed once sends return some), cancelled, or interrupted.
                (Op::TunRead, None) => ended(d.result).map_err(EngineError::Tun)?,
                (Op::UdpSend, Some(slot)) => {
                    finished(c, Crossing::UdpSend, DropReason::SendFailed, d.result).map_err(EngineError::Udp)?;
                    ring.give_back(slot);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn ingress_loop(ctx: &EngineContext) -> Result<(), EngineError> {
    let c = &*ctx.counters;
    let mut ring = ring(ctx, 0)?;
    let mut done: Vec<Completion> = Vec::with_capacity(usize::from(SLOTS) * 2);
    let mut log = DropLog::default();
    while !ctx.stop.load(Ordering::Relaxed) {
        if !ring.armed() && ring.provided() > 0 {
            ring.arm(Op::UdpRecv).map_err(EngineError::Ring)?;
        }
        if !step(&mut ring, &mut done, c, Crossing::UdpRecv)? {
            continue;
        }
        let peers = ctx.peers.load();
        for d in &done {
            match (d.op, d.slot) {
                (Op::UdpRecv, Some(slot)) => {
                    let Some(got) = parse_received(ring.slot(slot), usize::try_from(d.result).unwrap_or(0)) else {
                        c.count_drop(DropReason::TooShort);
                        ring.give_back(slot);
                        continue;
                    };
                    c.moved(Crossing::UdpRecv, 1, u64_len(got.payload.len()));
                    if got.truncated {
                        c.count_drop(DropReason::Oversize);
                        log.note(DropReason::Oversize, got.from);
                        ring.give_back(slot);
                        continue;
                    }
                    let start = got.payload.start;
                    let buf = &mut ring.slot(slot)[start..];
                    match ctx.forwarder.ingress(&peers, got.from, buf, got.payload.len()) {
                        Ingress::Deliver(r) => {
                            ring.write_tun(slot, start + r.start..start + r.end).map_err(EngineError::Ring)?
                        }
                        Ingress::Drop(r) => {
                            c.count_drop(r);
                            log.note(r, got.from);
                            ring.give_back(slot);
                        }
                    }
                }
                // ICMP errors of earlier sends surface here too (ECONNREFUSED and friends).
                (Op::UdpRecv, None) => ended(d.result).map_err(EngineError::Udp)?,
                (Op::TunWrite, Some(slot)) => {
                    finished(c, Crossing::TunWrite, DropReason::TunWriteFailed, d.result).map_err(EngineError::Tun)?;
                    ring.give_back(slot);
                }
                _ => {}
            }
        }
    }
    Ok(())
}
