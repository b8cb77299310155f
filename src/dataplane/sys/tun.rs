//! TUN devices (`/dev/net/tun`, `TUNSETIFF`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt as _;

/// Linux `IFNAMSIZ`: interface names are at most 15 bytes plus NUL.
pub const IFNAMSIZ: usize = 16;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

/// `TUNSETOFFLOAD` flags.
pub mod offload {
    /// The reader handles partial checksums.
    pub const CSUM: u32 = 0x01;
    /// TCP segmentation over IPv4.
    pub const TSO4: u32 = 0x02;
    /// TCP segmentation over IPv6.
    pub const TSO6: u32 = 0x04;
    /// TCP with ECN.
    pub const TSO_ECN: u32 = 0x08;
    /// UDP segmentation over IPv4 (Linux ≥ 6.2).
    pub const USO4: u32 = 0x20;
    /// UDP segmentation over IPv6 (Linux ≥ 6.2).
    pub const USO6: u32 = 0x40;
}

/// Length of `struct virtio_net_hdr` (`crate::proto::virtio::LEN`).
const VNET_HDR_LEN: usize = crate::proto::virtio::LEN;

/// `struct ifreq` as `TUNSETIFF` reads it: a name and the flags (the union's first member).
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TUN queue (`IFF_TUN | IFF_NO_PI`), non-blocking. Dropping it closes the fd; the kernel
/// removes a non-persistent device when its last queue closes.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
    /// Opened with `IFF_VNET_HDR`: every read and write carries a `virtio_net_hdr`.
    vnet_hdr: bool,
}

/// Checks an interface name the way the kernel's `dev_valid_name` does.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

impl Tun {
    /// Opens (creating if needed) the TUN device `name`.
    pub fn open(name: &str) -> io::Result<Self> {
        Self::open_with(name, false, false)
    }

    /// Opens the TUN device `name`; with `vnet_hdr`, every read and write carries a 10-byte
    /// `virtio_net_hdr` in front of the packet (`IFF_VNET_HDR`). With `multi_queue`, each call
    /// adds one queue to the device (`IFF_MULTI_QUEUE`); the kernel picks the queue of a packet
    /// by its flow, so one flow is read from one queue.
    pub fn open_with(name: &str, vnet_hdr: bool, multi_queue: bool) -> io::Result<Self> {
        if !valid_ifname(name) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid interface name {name:?}")));
        }
        let file = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let flags = IFF_TUN
            | IFF_NO_PI
            | if vnet_hdr { IFF_VNET_HDR } else { 0 }
            | if multi_queue { IFF_MULTI_QUEUE } else { 0 };
        let mut req = IfReqFlags { name: [0; IFNAMSIZ], flags, _pad: [0; 22] };
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = libc::c_char::from_ne_bytes([s]);
        }
        // SAFETY: `file` is an open /dev/net/tun fd; `req` is a properly sized, initialised
        // `struct ifreq` that lives across the call; TUNSETIFF reads and writes only within it.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReqFlags) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let len = req.name.iter().position(|c| *c == 0).unwrap_or(IFNAMSIZ);
        let bytes: Vec<u8> = req.name[..len].iter().map(|c| c.to_ne_bytes()[0]).collect();
        Ok(Self { file, name: String::from_utf8_lossy(&bytes).into_owned(), vnet_hdr })
    }

    /// Marks the device persistent (it outlives this fd) or not.
    pub fn set_persist(&self, persist: bool) -> io::Result<()> {
        // SAFETY: TUNSETPERSIST takes an integer argument by value; the fd is a valid TUN fd.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETPERSIST, libc::c_ulong::from(persist)) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Tells the kernel which offloads the reader handles (`TUNSETOFFLOAD`): with TSO it hands
    /// over TCP super-packets of up to 64 KiB. Needs `IFF_VNET_HDR`.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes an unsigned integer argument by value; the fd is a TUN fd.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Makes reads and writes block (or not). The uring engine wants a blocking fd: io_uring
    /// then waits for readiness itself instead of failing with EAGAIN.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        let fd = self.file.as_fd();
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let mut flags = nix::fcntl::OFlag::from_bits_truncate(flags);
        flags.set(nix::fcntl::OFlag::O_NONBLOCK, nonblocking);
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map(drop).map_err(io::Error::from)
    }

    /// Writes one packet gathered from `parts` (one `writev`).
    pub fn send_vectored(&self, parts: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(parts)
    }

    /// Whether every read and write carries a `virtio_net_hdr` (`IFF_VNET_HDR`).
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The device name the kernel gave.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet (non-blocking: `WouldBlock` when none is queued).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one plain packet (no offload): behind a `virtio_net_hdr` of zeros when the device
    /// carries one. Returns the packet bytes written.
    pub fn send(&self, pkt: &[u8]) -> io::Result<usize> {
        if !self.vnet_hdr {
            return (&self.file).write(pkt);
        }
        const ZERO_VNET: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
        let w = self.send_vectored(&[io::IoSlice::new(&ZERO_VNET), io::IoSlice::new(pkt)])?;
        Ok(w.saturating_sub(VNET_HDR_LEN))
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
