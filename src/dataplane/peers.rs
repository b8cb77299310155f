//! The immutable peer table the data path reads: who owns which subnet, and where to send.
//!
//! The control plane builds a new table on every lease change and swaps it in whole
//! (`arc-swap`); the data path never locks.

use crate::proto::mac::MacAddr;
use ipnet::{Ipv4Net, Ipv6Net};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One remote host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The IPv4 subnet it leases (None on an IPv6-only network).
    pub subnet: Option<Ipv4Net>,
    /// Where its encapsulated traffic goes: PublicIP and the backend port, or PublicIPv6 on
    /// an IPv6-only network.
    pub endpoint: SocketAddr,
    /// Its VTEP MAC (vxlan peers only).
    pub vtep_mac: Option<MacAddr>,
    /// Its IPv6 subnet, when it is a dual-stack peer of a dual-stack network.
    pub v6: Option<PeerV6>,
}

impl Peer {
    /// Its subnets, for logs: `100.96.2.0/24`, `2001:db8:1:2::/64`, or both joined by `,`.
    pub fn subnets(&self) -> String {
        let v4 = self.subnet.map(|s| s.to_string());
        let v6 = self.v6.map(|v| v.subnet.to_string());
        v4.into_iter().chain(v6).collect::<Vec<_>>().join(",")
    }
}

/// The IPv6 side of a peer. The userspace path sends its IPv6 pods' packets to the peer's
/// endpoint (over the IPv4 underlay on a dual-stack network); the kernel paths send them to its
/// PublicIPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerV6 {
    /// The IPv6 subnet it leases.
    pub subnet: Ipv6Net,
    /// The VTEP MAC its IPv6 frames are addressed to (`BackendV6Data`; vxlan peers only).
    pub vtep_mac: Option<MacAddr>,
    /// Its `PublicIPv6`, if it has one.
    pub public_ip: Option<Ipv6Addr>,
}

/// Longest-prefix match over peers' subnets, plus lookup by sender address.
///
/// Lookup costs one hash probe per distinct prefix length present (flannel hands out one
/// length per network, so usually one), independent of the number of peers.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: Vec<Peer>,
    /// Prefix lengths present, longest first, each with network address → index into `peers`.
    by_prefix: Vec<(u8, AddrMap<u32, usize>)>,
    /// The same for the peers' IPv6 subnets.
    by_prefix_v6: Vec<(u8, AddrMap<u128, usize>)>,
    /// PublicIP → indices of the peers (normally one) that send from it.
    by_sender: AddrMap<u32, Vec<usize>>,
    /// The same for peers reached over the IPv6 underlay.
    by_sender_v6: AddrMap<u128, Vec<usize>>,
}

/// A map keyed by an IP address as an integer, probed on every packet (every datagram of a GRO
/// receive checks its sender; every egress packet looks up its peer).
type AddrMap<K, V> = HashMap<K, V, BuildHasherDefault<AddrHasher>>;

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

    /// An IPv6 network address: its two halves folded with the high one rotated, so that the
    /// subnet bits at the end of the high half (a /64 per host) reach the product's upper bits.
    fn write_u128(&mut self, n: u128) {
        let [hi, lo] = [n >> 64, n & u128::from(u64::MAX)].map(|h| u64::try_from(h).unwrap_or_default());
        self.0 = (self.0 ^ hi.rotate_left(32) ^ lo).wrapping_mul(FIBONACCI);
    }
}

fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask_v6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// Adds `key → i` to the map of prefix length `len`, making that map if it is the first.
fn insert_prefix<K: std::hash::Hash + Eq>(maps: &mut Vec<(u8, AddrMap<K, usize>)>, len: u8, key: K, i: usize) {
    let pos = match maps.iter().position(|(l, _)| *l == len) {
        Some(pos) => pos,
        None => {
            maps.push((len, AddrMap::default()));
            maps.len() - 1
        }
    };
    maps[pos].1.insert(key, i);
}

impl PeerTable {
    /// Builds a table. A later peer with the same subnets replaces an earlier one.
    pub fn new(peers: impl IntoIterator<Item = Peer>) -> Self {
        let mut t = Self::default();
        let mut index: HashMap<(Option<Ipv4Net>, Option<Ipv6Net>), usize> = HashMap::new();
        for p in peers {
            let subnet = p.subnet.map(|s| s.trunc());
            let v6 = p.v6.map(|v6| PeerV6 { subnet: v6.subnet.trunc(), ..v6 });
            let key = (subnet, v6.map(|v| v.subnet));
            let p = Peer { subnet, v6, ..p };
            match index.get(&key) {
                Some(&i) => t.peers[i] = p,
                None => {
                    index.insert(key, t.peers.len());
                    t.peers.push(p);
                }
            }
        }
        for (i, p) in t.peers.iter().enumerate() {
            if let Some(net) = p.subnet {
                insert_prefix(&mut t.by_prefix, net.prefix_len(), u32::from(net.network()), i);
            }
            if let Some(v6) = &p.v6 {
                let net = v6.subnet;
                insert_prefix(&mut t.by_prefix_v6, net.prefix_len(), u128::from(net.network()), i);
            }
            match p.endpoint.ip() {
                IpAddr::V4(ip) => t.by_sender.entry(u32::from(ip)).or_default().push(i),
                IpAddr::V6(ip) => t.by_sender_v6.entry(u128::from(ip)).or_default().push(i),
            }
        }
        t.by_prefix.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        t.by_prefix_v6.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        t
    }

    /// The peer whose IPv6 subnet holds `dst`, longest prefix first, with that subnet.
    pub fn lookup_v6(&self, dst: Ipv6Addr) -> Option<(&Peer, PeerV6)> {
        let a = u128::from(dst);
        let i = self.by_prefix_v6.iter().find_map(|(len, m)| m.get(&(a & mask_v6(*len))))?;
        let p = self.peers.get(*i)?;
        Some((p, p.v6?))
    }

    /// The peer whose subnet holds `dst`, longest prefix first.
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<&Peer> {
        let a = u32::from(dst);
        self.by_prefix.iter().find_map(|(len, m)| m.get(&(a & mask(*len)))).and_then(|&i| self.peers.get(i))
    }

    /// The peers that send from `ip`.
    pub fn senders(&self, ip: IpAddr) -> impl Iterator<Item = &Peer> {
        let found = match ip {
            IpAddr::V4(ip) => self.by_sender.get(&u32::from(ip)),
            IpAddr::V6(ip) => self.by_sender_v6.get(&u128::from(ip)),
        };
        found.into_iter().flatten().filter_map(|&i| self.peers.get(i))
    }

    /// True when `ip` is some peer's PublicIP (or PublicIPv6, on an IPv6-only network).
    pub fn is_sender(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => self.by_sender.contains_key(&u32::from(ip)),
            IpAddr::V6(ip) => self.by_sender_v6.contains_key(&u128::from(ip)),
        }
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
        let endpoint = SocketAddr::new(Ipv4Addr::from(ip).into(), 8285);
        Peer { subnet: Some(net.parse().unwrap()), endpoint, vtep_mac: None, v6: None }
    }

    fn dual(net: &str, net6: &str, ip: [u8; 4]) -> Peer {
        Peer { v6: Some(PeerV6 { subnet: net6.parse().unwrap(), vtep_mac: None, public_ip: None }), ..peer(net, ip) }
    }

    #[test]
    fn ipv6_longest_prefix_and_spread() {
        let t = PeerTable::new([
            dual("100.96.2.0/24", "2001:db8:1:2::/64", [198, 18, 0, 2]),
            dual("100.96.3.0/24", "2001:db8:1:3::/64", [198, 18, 0, 3]),
            dual("100.96.4.0/24", "2001:db8:1:3:8000::/65", [198, 18, 0, 4]),
            peer("100.96.5.0/24", [198, 18, 0, 5]),
        ]);
        let last = |p: &Peer| match p.endpoint.ip() {
            IpAddr::V4(ip) => ip.octets()[3],
            IpAddr::V6(ip) => ip.octets()[15],
        };
        let at = |a: &str| t.lookup_v6(a.parse().unwrap()).map(|(p, _)| last(p));
        assert_eq!(at("2001:db8:1:2::9"), Some(2));
        assert_eq!(at("2001:db8:1:3::9"), Some(3));
        assert_eq!(at("2001:db8:1:3:8000::9"), Some(4));
        assert_eq!(at("2001:db8:1:5::9"), None);
        assert_eq!(t.lookup(Ipv4Addr::new(100, 96, 5, 1)).map(|p| p.v6), Some(None));
        let many = PeerTable::new(
            (0..=255u8).map(|x| dual(&format!("100.64.{x}.0/24"), &format!("2001:db8:0:{x:x}::/64"), [198, 18, 1, x])),
        );
        assert!((0..=255u8).all(|x| {
            many.lookup_v6(format!("2001:db8:0:{x:x}::5").parse().unwrap()).is_some_and(|(p, _)| last(p) == x)
        }));
        use std::hash::BuildHasher;
        let b = BuildHasherDefault::<AddrHasher>::default();
        let low: std::collections::HashSet<u64> = (0..=255u128)
            .map(|x| b.hash_one(u128::from("2001:db8::".parse::<Ipv6Addr>().unwrap()) | (x << 64)) & 0xff)
            .collect();
        assert!(low.len() > 150, "only {} of 256 buckets", low.len());
    }

    /// An IPv6-only network: peers with no IPv4 subnet, reached at their PublicIPv6.
    #[test]
    fn ipv6_only_peers() {
        let v6_only = |net6: &str, ip: &str| Peer {
            subnet: None,
            endpoint: SocketAddr::new(ip.parse().unwrap(), 8472),
            vtep_mac: None,
            v6: Some(PeerV6 { subnet: net6.parse().unwrap(), vtep_mac: None, public_ip: ip.parse().ok() }),
        };
        let t =
            PeerTable::new([v6_only("2001:db8:1:2::/64", "2001:db8::2"), v6_only("2001:db8:1:3::/64", "2001:db8::3")]);
        assert_eq!(t.len(), 2);
        let (p, _) = t.lookup_v6("2001:db8:1:3::9".parse().unwrap()).unwrap();
        assert_eq!(p.endpoint, "[2001:db8::3]:8472".parse::<SocketAddr>().unwrap());
        assert!(t.lookup(Ipv4Addr::new(0, 0, 0, 1)).is_none());
        let sender: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(t.is_sender(sender));
        assert!(!t.is_sender("2001:db8::4".parse().unwrap()));
        assert!(!t.is_sender(Ipv4Addr::UNSPECIFIED.into()));
        assert_eq!(t.senders(sender).count(), 1);
    }

    #[test]
    fn longest_prefix_wins() {
        let t = PeerTable::new([
            peer("100.96.0.0/16", [198, 18, 0, 9]),
            peer("100.96.2.0/24", [198, 18, 0, 2]),
            peer("100.96.2.128/25", [198, 18, 0, 3]),
        ]);
        let at = |a: Ipv4Addr| t.lookup(a).map(|p| p.endpoint.ip());
        assert_eq!(at(Ipv4Addr::new(100, 96, 2, 200)), Some(Ipv4Addr::new(198, 18, 0, 3).into()));
        assert_eq!(at(Ipv4Addr::new(100, 96, 2, 1)), Some(Ipv4Addr::new(198, 18, 0, 2).into()));
        assert_eq!(at(Ipv4Addr::new(100, 96, 7, 1)), Some(Ipv4Addr::new(198, 18, 0, 9).into()));
        assert!(t.lookup(Ipv4Addr::new(100, 97, 0, 1)).is_none());
        assert!(PeerTable::default().lookup(Ipv4Addr::new(1, 2, 3, 4)).is_none());
    }

    #[test]
    fn senders_and_replacement() {
        let t = PeerTable::new([peer("100.96.2.0/24", [198, 18, 0, 2]), peer("100.96.2.0/24", [198, 18, 0, 5])]);
        assert_eq!(t.len(), 1);
        assert!(t.is_sender(Ipv4Addr::new(198, 18, 0, 5).into()));
        assert!(!t.is_sender(Ipv4Addr::new(198, 18, 0, 2).into()));
        assert_eq!(t.senders(Ipv4Addr::new(198, 18, 0, 5).into()).count(), 1);
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
        assert!((0..=255u8).all(|x| {
            t.lookup(Ipv4Addr::new(100, 64, x, 9)).is_some_and(|p| p.subnet.unwrap().network().octets()[2] == x)
        }));
        assert!((0..=255u8).all(|x| t.is_sender(Ipv4Addr::new(198, 18, 1, x).into())));
    }

    #[test]
    fn zero_length_prefix() {
        let t = PeerTable::new([peer("0.0.0.0/0", [198, 18, 0, 2])]);
        assert!(t.lookup(Ipv4Addr::new(8, 8, 8, 8)).is_some());
    }
}
