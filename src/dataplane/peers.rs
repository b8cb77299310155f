//! The immutable peer table the data path reads: who owns which subnet, and where to send.
//!
//! The control plane builds a new table on every lease change and swaps it in whole
//! (`arc-swap`); the data path never locks.

use crate::proto::mac::MacAddr;
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4};

/// One remote host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The subnet it leases.
    pub subnet: Ipv4Net,
    /// Where its encapsulated traffic goes (PublicIP and the backend port).
    pub endpoint: SocketAddrV4,
    /// Its VTEP MAC (vxlan peers only).
    pub vtep_mac: Option<MacAddr>,
}

/// Longest-prefix match over peers' subnets, plus lookup by sender address.
///
/// Lookup costs one hash probe per distinct prefix length present (flannel hands out one
/// length per network, so usually one), independent of the number of peers.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: Vec<Peer>,
    /// Prefix lengths present, longest first, each with network address → index into `peers`.
    by_prefix: Vec<(u8, AddrMap<usize>)>,
    /// PublicIP → indices of the peers (normally one) that send from it.
    by_sender: AddrMap<Vec<usize>>,
}

/// A map keyed by an IPv4 address as a `u32`, probed on every packet (every datagram of a GRO
/// receive checks its sender; every egress packet looks up its peer).
type AddrMap<V> = HashMap<u32, V, BuildHasherDefault<AddrHasher>>;

/// One multiplication per key instead of SipHash: a key of these tables comes from the
/// control plane (leases), and a datagram's source address only probes them, so there is no
/// flooding to resist. The product's high half is folded into the low half, which picks the
/// bucket: network addresses end in zero bits, which a plain product would keep.
#[derive(Debug, Default, Clone, Copy)]
pub struct AddrHasher(u64);

/// 2^64 / φ, the multiplier of Fibonacci hashing.
const FIBONACCI: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(FIBONACCI);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(FIBONACCI);
    }
}

fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

impl PeerTable {
    /// Builds a table. A later peer with the same subnet replaces an earlier one.
    pub fn new(peers: impl IntoIterator<Item = Peer>) -> Self {
        let mut t = Self::default();
        let mut index: HashMap<Ipv4Net, usize> = HashMap::new();
        for p in peers {
            let subnet = p.subnet.trunc();
            match index.get(&subnet) {
                Some(&i) => t.peers[i] = Peer { subnet, ..p },
                None => {
                    index.insert(subnet, t.peers.len());
                    t.peers.push(Peer { subnet, ..p });
                }
            }
        }
        for (i, p) in t.peers.iter().enumerate() {
            let len = p.subnet.prefix_len();
            let pos = match t.by_prefix.iter().position(|(l, _)| *l == len) {
                Some(pos) => pos,
                None => {
                    t.by_prefix.push((len, AddrMap::default()));
                    t.by_prefix.len() - 1
                }
            };
            t.by_prefix[pos].1.insert(u32::from(p.subnet.network()), i);
            t.by_sender.entry(u32::from(*p.endpoint.ip())).or_default().push(i);
        }
        t.by_prefix.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        t
    }

    /// The peer whose subnet holds `dst`, longest prefix first.
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<&Peer> {
        let a = u32::from(dst);
        self.by_prefix.iter().find_map(|(len, m)| m.get(&(a & mask(*len)))).and_then(|&i| self.peers.get(i))
    }

    /// The peers that send from `ip`.
    pub fn senders(&self, ip: Ipv4Addr) -> impl Iterator<Item = &Peer> {
        self.by_sender.get(&u32::from(ip)).into_iter().flatten().filter_map(|&i| self.peers.get(i))
    }

    /// True when `ip` is some peer's PublicIP.
    pub fn is_sender(&self, ip: Ipv4Addr) -> bool {
        self.by_sender.contains_key(&u32::from(ip))
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// True when there are no peers.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// All peers, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(net: &str, ip: [u8; 4]) -> Peer {
        Peer { subnet: net.parse().unwrap(), endpoint: SocketAddrV4::new(ip.into(), 8285), vtep_mac: None }
    }

    #[test]
    fn longest_prefix_wins() {
        let t = PeerTable::new([
            peer("100.96.0.0/16", [198, 18, 0, 9]),
            peer("100.96.2.0/24", [198, 18, 0, 2]),
            peer("100.96.2.128/25", [198, 18, 0, 3]),
        ]);
        assert_eq!(t.lookup(Ipv4Addr::new(100, 96, 2, 200)).unwrap().endpoint.ip(), &Ipv4Addr::new(198, 18, 0, 3));
        assert_eq!(t.lookup(Ipv4Addr::new(100, 96, 2, 1)).unwrap().endpoint.ip(), &Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(t.lookup(Ipv4Addr::new(100, 96, 7, 1)).unwrap().endpoint.ip(), &Ipv4Addr::new(198, 18, 0, 9));
        assert!(t.lookup(Ipv4Addr::new(100, 97, 0, 1)).is_none());
        assert!(PeerTable::default().lookup(Ipv4Addr::new(1, 2, 3, 4)).is_none());
    }

    #[test]
    fn senders_and_replacement() {
        let t = PeerTable::new([peer("100.96.2.0/24", [198, 18, 0, 2]), peer("100.96.2.0/24", [198, 18, 0, 5])]);
        assert_eq!(t.len(), 1);
        assert!(t.is_sender(Ipv4Addr::new(198, 18, 0, 5)));
        assert!(!t.is_sender(Ipv4Addr::new(198, 18, 0, 2)));
        assert_eq!(t.senders(Ipv4Addr::new(198, 18, 0, 5)).count(), 1);
    }

    /// The bucket index comes from the hash's low bits: the /24 network addresses of one
    /// flannel network, which differ only in their third byte, must spread over them.
    #[test]
    fn addr_hasher_spreads_network_addresses() {
        use std::hash::BuildHasher;
        let b = BuildHasherDefault::<AddrHasher>::default();
        let low: std::collections::HashSet<u64> =
            (0..=255u32).map(|x| b.hash_one(u32::from(Ipv4Addr::new(100, 64, 0, 0)) | (x << 8)) & 0xff).collect();
        assert!(low.len() > 150, "only {} of 256 buckets", low.len());
        let t = PeerTable::new((0..=255u8).map(|x| peer(&format!("100.64.{x}.0/24"), [198, 18, 1, x])));
        assert!(
            (0..=255u8)
                .all(|x| t.lookup(Ipv4Addr::new(100, 64, x, 9)).is_some_and(|p| p.subnet.network().octets()[2] == x))
        );
        assert!((0..=255u8).all(|x| t.is_sender(Ipv4Addr::new(198, 18, 1, x))));
    }

    #[test]
    fn zero_length_prefix() {
        let t = PeerTable::new([peer("0.0.0.0/0", [198, 18, 0, 2])]);
        assert!(t.lookup(Ipv4Addr::new(8, 8, 8, 8)).is_some());
    }
}
