//! GSO sends written whole: datagrams staged one after another in a frame (outer header, fresh
//! segment headers, payload), sent with one `UDP_SEGMENT` send when the frame is full or a
//! shorter datagram ends it. The offload engine stages a super-packet's segments this way and
//! sends with `sendmsg`; the uring engine stages every datagram this way and queues the sends.
//!
//! Writing each segment whole costs one user-space copy behind the checksum pass that has just
//! read the payload, and saves the kernel's copy the fixed cost of each gathered piece
//! (docs/performance.md, "The send layout").

use super::runs::{MAX_GSO_BYTES, count_sent};
use super::{EngineContext, EngineError};
use crate::dataplane::counters::{Counters, DropReason, timed};
use crate::dataplane::engine::u64_len;
use crate::dataplane::sys::udp::{MAX_SEGMENTS, send_gso};
use crate::proto::gso::{Headers, Segmenter};
use std::io::IoSlice;
use std::net::SocketAddr;

/// Where datagrams go: the peer, and the pool's socket they leave from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dest {
    /// The peer.
    pub to: SocketAddr,
    /// The sending socket ([`TxPool::index`](crate::dataplane::sys::udp::TxPool::index)).
    pub tx: usize,
}

/// Datagrams written for one GSO send and not sent yet, framed as they go on the wire, one after
/// another from the start of the frame. A 64 KiB TCP super-packet has 47 segments of 1 472 bytes
/// and a send takes 44 ([`MAX_GSO_BYTES`]), so alone each would cost two sends, two receives and
/// two TUN writes, the second for 3 segments: its tail stays staged, and when the next packet
/// read goes to the same peer with segments of the same size, its segments join the send.
/// Anything else sends the staged datagrams first, and so does the end of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staged {
    /// Where they go.
    pub dest: Dest,
    /// Bytes of each datagram on the wire (outer header + segment).
    pub size: usize,
    /// Bytes written: `size` per datagram, but the last may be shorter (and then it is sent).
    pub len: usize,
    /// Datagrams written.
    pub count: usize,
}

impl Staged {
    /// The segment size of the send: `None` for a lone datagram (a plain send).
    pub fn segment(&self) -> Option<u16> {
        if self.count > 1 { u16::try_from(self.size).ok() } else { None }
    }
}

/// Where staged datagrams are written and how they leave.
pub trait Outbox {
    /// The frame datagrams are staged in, from its start: at least [`MAX_GSO_BYTES`] long.
    fn frame(&mut self) -> Result<&mut [u8], EngineError>;
    /// Sends the datagrams `k` describes, written at the start of the frame; the next
    /// [`Outbox::frame`] may be another one.
    fn send(&mut self, k: Staged) -> Result<(), EngineError>;
    /// Whether a send may carry several datagrams (`UDP_SEGMENT`); without it each goes alone.
    fn gso(&self) -> bool;
}

/// The datagrams staged for the next send, if any.
#[derive(Debug, Default)]
pub struct Stager {
    staged: Option<Staged>,
}

impl Stager {
    /// Sends the staged datagrams, if any.
    pub fn flush(&mut self, out: &mut impl Outbox) -> Result<(), EngineError> {
        self.staged.take().map_or(Ok(()), |k| out.send(k))
    }

    /// The size a lone datagram of `n` bytes for `dest` is staged with: the staged run's when it
    /// joins it (same destination, not longer), else its own.
    pub fn run_size(&self, dest: Dest, n: usize) -> usize {
        match self.staged {
            Some(k) if k.dest == dest && n <= k.size => k.size,
            _ => n,
        }
    }

    /// Stages one datagram for `dest` in a send of `size`-byte datagrams: `write` writes it into
    /// the room it is given and returns its length (at most `size`), or `None` when it cannot
    /// (then nothing is staged and `false` returned). The send leaves when it holds as many
    /// datagrams as one GSO send may (one without GSO), or when this one is shorter.
    pub fn push(
        &mut self,
        out: &mut impl Outbox,
        dest: Dest,
        size: usize,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Result<bool, EngineError> {
        if self.staged.is_some_and(|k| k.dest != dest || k.size != size) {
            self.flush(out)?;
        }
        let at = self.staged.map_or(0, |k| k.len);
        let Some(n) = out.frame()?.get_mut(at..).and_then(write) else { return Ok(false) };
        let k = self.staged.get_or_insert(Staged { dest, size, len: 0, count: 0 });
        k.len += n;
        k.count += 1;
        let per_send = if out.gso() { (MAX_GSO_BYTES / size.max(1)).clamp(1, MAX_SEGMENTS) } else { 1 };
        if k.count >= per_send || n < size {
            self.flush(out)?;
        }
        Ok(true)
    }

    /// Stages every segment of the TCP or UDP super-packet `sup` (cut as `seg` says), each
    /// behind `outer` (the outer header, the same for every segment), for `dest`. A segment
    /// that cannot be written is counted with the rest of the super-packet as `BadIpHeader`.
    pub fn super_packet(
        &mut self,
        out: &mut impl Outbox,
        c: &Counters,
        outer: &[u8],
        sup: &[u8],
        seg: &Segmenter,
        dest: Dest,
    ) -> Result<(), EngineError> {
        let size = outer.len() + seg.segment_len(0);
        if size > MAX_GSO_BYTES {
            // No datagram this large can be sent (the TUN's MTU keeps gso_size far below it).
            c.count_drops(DropReason::Oversize, u64_len(seg.count()));
            return Ok(());
        }
        let headers = seg.headers(sup);
        for i in 0..seg.count() {
            let written = match &headers {
                Ok(h) => self.push(out, dest, size, |room| write_datagram(room, outer, h, sup, i))?,
                Err(_) => false,
            };
            if !written {
                c.count_drops(DropReason::BadIpHeader, u64_len(seg.count() - i));
                return self.flush(out);
            }
        }
        Ok(())
    }
}

/// Sends the datagrams laid out one after another in `frames`, `size` bytes each but the last,
/// to `dest`, one `sendmsg` each: what a GSO send the kernel refused becomes (nothing is lost).
pub fn send_one_by_one(ctx: &EngineContext, frames: &[u8], size: usize, dest: Dest) -> Result<(), EngineError> {
    let sock = ctx.tx.get(dest.tx);
    for datagram in frames.chunks(size.max(1)) {
        let (r, ns) = timed(|| send_gso(sock, &[IoSlice::new(datagram)], None, dest.to));
        count_sent(&ctx.counters, r, ns, 1)?;
    }
    Ok(())
}

/// Writes `outer` and then segment `i` of `sup` whole at the start of `room`; returns the
/// datagram's length, or `None` if it cannot be written.
fn write_datagram(room: &mut [u8], outer: &[u8], h: &Headers, sup: &[u8], i: usize) -> Option<usize> {
    let (o, segment) = room.split_at_mut_checked(outer.len())?;
    o.copy_from_slice(outer);
    Some(outer.len() + h.write_segment(sup, i, segment).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An outbox that keeps what it sends.
    struct Kept {
        frame: Vec<u8>,
        sent: Vec<(Staged, Vec<u8>)>,
        gso: bool,
    }

    impl Default for Kept {
        fn default() -> Self {
            Self { frame: Vec::new(), sent: Vec::new(), gso: true }
        }
    }

    impl Outbox for Kept {
        fn frame(&mut self) -> Result<&mut [u8], EngineError> {
            self.frame.resize(MAX_GSO_BYTES, 0);
            Ok(&mut self.frame)
        }
        fn send(&mut self, k: Staged) -> Result<(), EngineError> {
            self.sent.push((k, self.frame[..k.len].to_vec()));
            Ok(())
        }
        fn gso(&self) -> bool {
            self.gso
        }
    }

    fn dest(port: u16) -> Dest {
        Dest { to: SocketAddr::from(([198, 18, 0, 2], port)), tx: 0 }
    }

    fn push(s: &mut Stager, out: &mut Kept, d: Dest, bytes: &[u8]) -> bool {
        let size = s.run_size(d, bytes.len());
        s.push(out, d, size, |room| {
            room.get_mut(..bytes.len())?.copy_from_slice(bytes);
            Some(bytes.len())
        })
        .unwrap()
    }

    #[test]
    fn a_run_of_one_size_leaves_as_one_send_ended_by_a_shorter_datagram() {
        let (mut s, mut out) = (Stager::default(), Kept::default());
        for _ in 0..3 {
            assert!(push(&mut s, &mut out, dest(1), &[7; 100]));
        }
        assert!(out.sent.is_empty(), "a run stays staged until it ends");
        push(&mut s, &mut out, dest(1), &[8; 40]);
        assert_eq!(out.sent.len(), 1);
        let (k, bytes) = &out.sent[0];
        assert_eq!((k.size, k.len, k.count, k.segment()), (100, 340, 4, Some(100)));
        assert_eq!(&bytes[300..], &[8; 40]);
    }

    #[test]
    fn another_peer_or_a_longer_datagram_sends_what_is_staged_first() {
        let (mut s, mut out) = (Stager::default(), Kept::default());
        push(&mut s, &mut out, dest(1), &[1; 100]);
        push(&mut s, &mut out, dest(2), &[2; 100]);
        push(&mut s, &mut out, dest(2), &[3; 200]);
        s.flush(&mut out).unwrap();
        let sent: Vec<(u16, usize, Option<u16>)> =
            out.sent.iter().map(|(k, _)| (k.dest.to.port(), k.count, k.segment())).collect();
        assert_eq!(sent, [(1, 1, None), (2, 1, None), (2, 1, None)]);
        s.flush(&mut out).unwrap();
        assert_eq!(out.sent.len(), 3, "nothing is sent twice");
    }

    #[test]
    fn a_full_send_leaves_at_once_and_without_gso_every_datagram_does() {
        let (mut s, mut out) = (Stager::default(), Kept::default());
        for _ in 0..MAX_SEGMENTS + 1 {
            push(&mut s, &mut out, dest(1), &[1; 100]);
        }
        assert_eq!(out.sent.len(), 1);
        assert_eq!(out.sent[0].0.count, MAX_SEGMENTS);
        let (mut s, mut out) = (Stager::default(), Kept { gso: false, ..Kept::default() });
        for _ in 0..3 {
            s.push(&mut out, dest(1), 100, |_| Some(100)).unwrap();
        }
        assert_eq!(out.sent.iter().map(|(k, _)| k.count).collect::<Vec<_>>(), [1, 1, 1]);
    }

    #[test]
    fn a_datagram_that_cannot_be_written_stages_nothing() {
        let (mut s, mut out) = (Stager::default(), Kept::default());
        assert!(!s.push(&mut out, dest(1), 100, |_| None).unwrap());
        s.flush(&mut out).unwrap();
        assert!(out.sent.is_empty());
    }
}
