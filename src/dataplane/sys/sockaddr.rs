//! Socket addresses of either family as the kernel reads and writes them, in storage that is
//! reused across calls: the data path sends to and receives from IPv4 peers (PublicIP) or, on
//! an IPv6-only network, IPv6 peers (PublicIPv6).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Room for a `sockaddr_in` or a `sockaddr_in6`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

/// What a received datagram's sender reads as when the kernel gave no IPv4 or IPv6 address:
/// no peer sends from it, so such a datagram is dropped as `unknown_sender`.
pub const UNKNOWN_SENDER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// Bytes of the larger form: what a receive offers the kernel for the sender's address.
pub const CAPACITY: usize = std::mem::size_of::<libc::sockaddr_in6>();

fn family(f: libc::c_int) -> libc::sa_family_t {
    libc::sa_family_t::try_from(f).unwrap_or_default()
}

impl RawAddr {
    /// All zero bytes (family `AF_UNSPEC`), every byte initialised.
    pub fn zeroed() -> Self {
        Self {
            v6: libc::sockaddr_in6 {
                sin6_family: 0,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
                sin6_scope_id: 0,
            },
        }
    }

    /// Stores `a`; returns the length the kernel is to read.
    pub fn set(&mut self, a: SocketAddr) -> libc::socklen_t {
        match a {
            SocketAddr::V4(a) => {
                self.v4 = libc::sockaddr_in {
                    sin_family: family(libc::AF_INET),
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                    sin_zero: [0; 8],
                };
                len_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                self.v6 = libc::sockaddr_in6 {
                    sin6_family: family(libc::AF_INET6),
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                    sin6_scope_id: a.scope_id(),
                };
                len_of::<libc::sockaddr_in6>()
            }
        }
    }

    /// The address the kernel wrote (None for a family other than IPv4 and IPv6).
    pub fn get(&self) -> Option<SocketAddr> {
        // SAFETY: every constructor and setter leaves all bytes of the union initialised
        // (`zeroed` writes the larger member; a setter overwrites a prefix), both members are
        // plain C structs valid for any bytes, and the family field sits at offset 0 of each.
        let (fam, v4, v6) = unsafe { (self.v6.sin6_family, self.v4, self.v6) };
        match libc::c_int::from(fam) {
            libc::AF_INET => Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(v4.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(v4.sin_port),
            ))),
            libc::AF_INET6 => Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            ))),
            _ => None,
        }
    }

    /// A pointer for the kernel (it reads or writes at most [`CAPACITY`] bytes).
    pub fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        (self as *mut Self).cast()
    }
}

/// [`CAPACITY`] as the kernel's length type.
pub fn capacity() -> libc::socklen_t {
    len_of::<libc::sockaddr_in6>()
}

fn len_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or_default()
}

/// Parses a socket address the kernel laid out in `name` (as a multishot receive leaves it).
pub fn from_bytes(name: &[u8]) -> Option<SocketAddr> {
    let fam = u16::from_ne_bytes([*name.first()?, *name.get(1)?]);
    let port = u16::from_be_bytes([*name.get(2)?, *name.get(3)?]);
    match libc::c_int::from(fam) {
        libc::AF_INET => {
            let a: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(a.into(), port)))
        }
        libc::AF_INET6 => {
            let a: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            Some(SocketAddr::V6(SocketAddrV6::new(a.into(), port, 0, 0)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families_round_trip() {
        for a in ["198.18.0.2:8285", "[2001:db8::2]:8472"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut r = RawAddr::zeroed();
            let len = r.set(a);
            assert_eq!(r.get(), Some(a));
            // SAFETY: RawAddr is plain bytes, all initialised (see `get`).
            let bytes: [u8; std::mem::size_of::<RawAddr>()] = unsafe { std::mem::transmute(r) };
            assert_eq!(from_bytes(&bytes[..usize::try_from(len).unwrap()]), Some(a));
        }
        assert_eq!(RawAddr::zeroed().get(), None);
        assert_eq!(from_bytes(&[0; 28]), None);
        assert_eq!(from_bytes(&[10, 0, 0]), None);
    }
}
