//! The kernel's offloads the engines use: found out once when the data path opens its devices
//! and shared by every worker's sender and writer, as quinn-udp keeps its GSO state. An offload
//! the kernel later refuses is turned off here, in one place, for every worker at once, with one
//! log line.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the kernel takes, as found at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// UDP sends may carry many datagrams (`UDP_SEGMENT`).
    pub udp_gso: bool,
    /// The TUN takes `GSO_UDP_L4` packets (USO, Linux ≥ 6.2): coalesced UDP runs are written
    /// as one packet.
    pub tun_uso: bool,
}

/// One offload that can be turned off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offload {
    /// See [`Capabilities::udp_gso`].
    UdpGso,
    /// See [`Capabilities::tun_uso`].
    TunUso,
}

impl Offload {
    fn what(self) -> &'static str {
        match self {
            Self::UdpGso => "UDP GSO send refused by the kernel; sending datagrams one by one from now on",
            Self::TunUso => "the TUN refused a UDP GSO write; writing datagrams one by one from now on",
        }
    }
}

/// The offloads in use now: each can only go from on to off.
#[derive(Debug)]
pub struct Offloads {
    udp_gso: AtomicBool,
    tun_uso: AtomicBool,
}

impl Offloads {
    /// Starts with what was found.
    pub fn new(c: Capabilities) -> Self {
        Self { udp_gso: AtomicBool::new(c.udp_gso), tun_uso: AtomicBool::new(c.tun_uso) }
    }

    fn flag(&self, o: Offload) -> &AtomicBool {
        match o {
            Offload::UdpGso => &self.udp_gso,
            Offload::TunUso => &self.tun_uso,
        }
    }

    /// Whether `o` is in use.
    pub fn has(&self, o: Offload) -> bool {
        self.flag(o).load(Ordering::Relaxed)
    }

    /// What is in use now.
    pub fn now(&self) -> Capabilities {
        Capabilities { udp_gso: self.has(Offload::UdpGso), tun_uso: self.has(Offload::TunUso) }
    }

    /// The kernel refused `o` with `e` (see [`refused`]): off for every worker from now on. The
    /// worker that turns it off says so; the packets of the refused call are sent again without
    /// it by the caller, so nothing is lost.
    pub fn refuse(&self, o: Offload, e: &io::Error) {
        if self.flag(o).swap(false, Ordering::Relaxed) {
            tracing::warn!("{} ({e})", o.what());
        }
    }
}

/// Whether `e` says the kernel does not have an offload (rather than anything about the one
/// packet): EIO and EINVAL from a GSO send on a route or device that cannot take it, EINVAL
/// from a TUN without USO, and the "not supported" errors.
pub fn refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offload_goes_off_once_for_everyone_and_never_back() {
        let o = Offloads::new(Capabilities { udp_gso: true, tun_uso: true });
        let e = io::Error::from_raw_os_error(libc::EIO);
        assert!(refused(&e) && !refused(&io::Error::from_raw_os_error(libc::ENOBUFS)));
        o.refuse(Offload::UdpGso, &e);
        o.refuse(Offload::UdpGso, &e);
        assert_eq!(o.now(), Capabilities { udp_gso: false, tun_uso: true });
        let off = Offloads::new(Capabilities { udp_gso: false, tun_uso: false });
        off.refuse(Offload::TunUso, &e);
        assert!(!off.has(Offload::TunUso) && !off.has(Offload::UdpGso));
    }
}
