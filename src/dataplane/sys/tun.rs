//! TUN devices (`/dev/net/tun`, `TUNSETIFF`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt as _;

/// Linux `IFNAMSIZ`: interface names are at most 15 bytes plus NUL.
pub const IFNAMSIZ: usize = 16;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

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
        if !valid_ifname(name) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid interface name {name:?}")));
        }
        let file = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReqFlags { name: [0; IFNAMSIZ], flags: IFF_TUN | IFF_NO_PI, _pad: [0; 22] };
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
        Ok(Self { file, name: String::from_utf8_lossy(&bytes).into_owned() })
    }

    /// Marks the device persistent (it outlives this fd) or not.
    pub fn set_persist(&self, persist: bool) -> io::Result<()> {
        // SAFETY: TUNSETPERSIST takes an integer argument by value; the fd is a valid TUN fd.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETPERSIST, libc::c_ulong::from(persist)) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// The device name the kernel gave.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet (non-blocking: `WouldBlock` when none is queued).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one packet.
    pub fn send(&self, pkt: &[u8]) -> io::Result<usize> {
        (&self.file).write(pkt)
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
