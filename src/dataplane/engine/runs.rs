//! Sending what one batch read from the TUN: consecutive datagrams to one peer, all of one size
//! but the last (which may be shorter), go as one GSO message (`UDP_SEGMENT`), and all messages
//! of the batch go with one `sendmmsg`. A flow of small datagrams then crosses the sending and the
//! receiving stacks once per run instead of once per datagram, which is most of what a small
//! datagram costs. If the kernel refuses GSO (EIO/EINVAL), every message is one datagram from
//! then on, and nothing is lost.

use super::{EngineContext, EngineError, per_packet, u64_len};
use crate::dataplane::counters::{Counters, Crossing, DropReason, timed};
use crate::dataplane::offloads::{Offload, refused};
use crate::dataplane::packet::PacketBuf;
use crate::dataplane::sys::mmsg::{Gathered, MmsgBatch};
use std::io::IoSlice;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;

/// Most datagrams per batch, and per GSO send.
pub const BATCH: usize = crate::dataplane::sys::udp::MAX_SEGMENTS;
/// Most bytes one UDP send may carry in all (65 535 − IPv4 − UDP headers).
pub const MAX_GSO_BYTES: usize = 65_507;

/// Whether a GSO send that failed with `e` was refused for the offload itself (EIO, EINVAL: a
/// route or device that cannot take it). Then the call is counted as an empty send and GSO is
/// off for every worker (see [`Offloads`](crate::dataplane::offloads::Offloads)); the caller
/// sends the same datagrams again one per message, which loses nothing.
pub(crate) fn gso_refused(ctx: &EngineContext, e: &std::io::Error, ns: u64) -> bool {
    if !refused(e) {
        return false;
    }
    ctx.counters.syscall(Crossing::UdpSend, 0, 0, ns);
    ctx.offloads.refuse(Offload::UdpGso, e);
    true
}

/// Counts a UDP send of `packets` datagrams that returned `r`, or their drop; an error about
/// the socket itself stops the engine.
pub(crate) fn count_sent(c: &Counters, r: std::io::Result<usize>, ns: u64, packets: usize) -> Result<(), EngineError> {
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

/// A datagram waiting in a read buffer: `bufs[buf][range]`, for `to`, from socket `tx` of the
/// worker's pool.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Which buffer of the batch (buffers are filled in the order packets are read).
    pub buf: usize,
    /// The datagram (outer header included) within it.
    pub range: Range<usize>,
    /// The peer.
    pub to: SocketAddr,
    /// The sending socket ([`TxPool::index`](crate::dataplane::sys::udp::TxPool::index)).
    pub tx: usize,
}

/// The sending side of a batch: reusable message headers.
pub struct RunSender {
    batch: MmsgBatch,
}

impl Default for RunSender {
    fn default() -> Self {
        Self { batch: MmsgBatch::new(BATCH) }
    }
}

impl RunSender {
    /// Sends `pending` (at most [`BATCH`], datagrams in `bufs`), counting each send and each
    /// drop: one `sendmmsg` per sending socket, each flow's datagrams in the order they were
    /// read.
    pub fn send(
        &mut self,
        ctx: &EngineContext,
        bufs: &[PacketBuf],
        pending: &mut [Pending],
    ) -> Result<(), EngineError> {
        if ctx.tx.len() > 1 {
            // A flow keeps its socket and buffers are numbered in read order, so this keeps
            // every flow's order (and sorts in place: no allocation).
            pending.sort_unstable_by_key(|p| (p.tx, p.buf));
        }
        let mut start = 0;
        while start < pending.len() {
            let tx = pending[start].tx;
            let end = start + pending[start..].iter().take_while(|p| p.tx == tx).count();
            self.send_from(ctx, tx, bufs, &pending[start..end])?;
            start = end;
        }
        Ok(())
    }

    /// Sends `pending`, all from socket `tx`, in order.
    fn send_from(
        &mut self,
        ctx: &EngineContext,
        tx: usize,
        bufs: &[PacketBuf],
        pending: &[Pending],
    ) -> Result<(), EngineError> {
        let c = &*ctx.counters;
        let pending = &pending[..pending.len().min(BATCH)];
        let mut iov = [IoSlice::new(&[]); BATCH];
        for (slot, p) in iov.iter_mut().zip(pending) {
            *slot = IoSlice::new(&bufs[p.buf].as_slice()[p.range.clone()]);
        }
        let nowhere = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
        let mut msgs = [Gathered { parts: &[], to: nowhere, segment: None }; BATCH];
        // Where each message's datagrams start in `pending`.
        let mut starts = [0usize; BATCH + 1];
        let gso = ctx.offloads.has(Offload::UdpGso);
        let mut m = 0;
        let mut i = 0;
        while i < pending.len() {
            let first = &pending[i];
            let size = first.range.len();
            let (mut j, mut bytes) = (i + 1, size);
            while gso && j < pending.len() {
                let len = pending[j].range.len();
                if pending[j].to != first.to || len > size || bytes + len > MAX_GSO_BYTES {
                    break;
                }
                bytes += len;
                j += 1;
                if len < size {
                    break;
                }
            }
            let segment = if j - i > 1 { u16::try_from(size).ok() } else { None };
            msgs[m] = Gathered { parts: &iov[i..j], to: first.to, segment };
            starts[m] = i;
            m += 1;
            i = j;
        }
        starts[m] = pending.len();
        let mut sent = 0;
        while sent < m {
            let (r, ns) = timed(|| self.batch.send_gathered(ctx.tx.get(tx), &msgs[sent..m]));
            match r {
                Ok(k) if k > 0 => {
                    let (a, b) = (starts[sent], starts[sent + k]);
                    let bytes: usize = pending[a..b].iter().map(|p| p.range.len()).sum();
                    c.syscall(Crossing::UdpSend, u64_len(b - a), u64_len(bytes), ns);
                    sent += k;
                }
                Err(e) if msgs[sent].segment.is_some() && gso_refused(ctx, &e, ns) => {
                    return self.send_from(ctx, tx, bufs, &pending[starts[sent]..]);
                }
                Err(e) if !per_packet(&e) => return Err(EngineError::Udp(e)),
                // The first message failed: count its datagrams and go on with the rest.
                _ => {
                    c.syscall(Crossing::UdpSend, 0, 0, ns);
                    c.count_drops(DropReason::SendFailed, u64_len(starts[sent + 1] - starts[sent]));
                    sent += 1;
                }
            }
        }
        Ok(())
    }
}
