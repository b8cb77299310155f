//! Host network setup over rtnetlink: links, addresses, routes. No shelling out to `ip`.

use crate::proto::mac::MacAddr;
use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A netlink failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened.
    #[error("netlink socket: {0}")]
    Connect(io::Error),
    /// The kernel refused or the request failed.
    #[error("{what}: {error}")]
    Request {
        /// What weft was doing.
        what: String,
        /// The kernel's answer.
        error: rtnetlink::Error,
    },
    /// Something weft needs is not there.
    #[error("{0}")]
    NotFound(String),
    /// weft will not program this (e.g. a host-gw peer off the L2 segment).
    #[error("{0}")]
    Refused(String),
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// The routing protocol number weft marks its routes with, so that a restarted weft can tell its
/// own stale routes from everyone else's (shown by `ip route` as `proto 87`).
pub const WEFT_ROUTE_PROTO: u8 = 87;

/// A route weft installed (found by its protocol number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRoute {
    /// Destination (IPv4 or IPv6).
    pub dst: IpNet,
    /// Gateway, if any (of the destination's family).
    pub gateway: Option<IpAddr>,
    /// Output interface, if any.
    pub oif: Option<u32>,
}

/// How the underlay is chosen: flanneld's `--iface` (names or addresses, first that exists),
/// then `--iface-regex` (first address or name that matches), then `--iface-can-reach` (the
/// interface the kernel routes that address through), then the one holding `--public-ip`,
/// then the default route's.
#[derive(Debug, Default)]
pub struct IfaceChoice<'a> {
    /// `--iface`.
    pub ifaces: &'a [String],
    /// `--iface-regex`, compiled.
    pub regexes: &'a [regex_lite::Regex],
    /// `--iface-can-reach`.
    pub can_reach: Option<Ipv4Addr>,
    /// `--public-ip`.
    pub public_ip: Option<Ipv4Addr>,
    /// The network has IPv4 pods: PublicIP is needed. An IPv6-only network needs none, and
    /// without a choice takes the interface of the IPv6 default route when there is no IPv4 one.
    pub ipv4: bool,
}

/// The source address the kernel picks towards `dst` (a connected UDP socket sends nothing).
fn source_towards(dst: Ipv4Addr) -> io::Result<Ipv4Addr> {
    let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.connect((dst, 9))?;
    match s.local_addr()?.ip() {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(_) => Err(io::Error::other("an IPv6 source")),
    }
}

/// The underlay interface weft sends through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its IPv4 address used as PublicIP (None: it has none, on an IPv6-only network).
    pub addr: Option<Ipv4Addr>,
    /// The connected subnet of that address (its L2 segment), when the address is on the link.
    pub subnet: Option<Ipv4Net>,
    /// Its first global IPv6 address: a dual-stack node's PublicIPv6 unless `--public-ipv6`.
    pub addr6: Option<Ipv6Addr>,
}

/// A handle on the kernel's routing netlink. Must be created inside a tokio runtime.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

struct LinkInfo {
    index: u32,
    name: String,
    mtu: u32,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    async fn links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let mut out = Vec::new();
        let mut s = self.handle.link().get().execute();
        loop {
            match s.try_next().await {
                Ok(Some(m)) => {
                    let mut li = LinkInfo { index: m.header.index, name: String::new(), mtu: 0 };
                    for a in m.attributes {
                        match a {
                            LinkAttribute::IfName(n) => li.name = n,
                            LinkAttribute::Mtu(m) => li.mtu = m,
                            _ => {}
                        }
                    }
                    out.push(li);
                }
                Ok(None) => return Ok(out),
                Err(error) => {
                    return Err(NetlinkError::Request { what: "listing links".into(), error });
                }
            }
        }
    }

    /// The index of link `name`, if it exists.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Ok(self.links().await?.into_iter().find(|l| l.name == name).map(|l| l.index))
    }

    /// Every global-scope IPv6 address (not link-local), with its link, in the kernel's order.
    async fn v6_addrs(&self) -> Result<Vec<(u32, Ipv6Addr)>, NetlinkError> {
        let mut out = Vec::new();
        let mut s = self.handle.address().get().execute();
        loop {
            match s.try_next().await {
                Ok(Some(m)) => {
                    let global = m.header.scope == rtnetlink::packet_route::address::AddressScope::Universe;
                    for a in m.attributes {
                        if let AddressAttribute::Address(IpAddr::V6(ip)) = a
                            && global
                            && !out.contains(&(m.header.index, ip))
                        {
                            out.push((m.header.index, ip));
                        }
                    }
                }
                Ok(None) => return Ok(out),
                Err(error) => return Err(NetlinkError::Request { what: "listing IPv6 addresses".into(), error }),
            }
        }
    }

    async fn v4_addrs(&self) -> Result<Vec<(u32, Ipv4Addr, u8)>, NetlinkError> {
        let mut out = Vec::new();
        let mut s = self.handle.address().get().execute();
        loop {
            match s.try_next().await {
                Ok(Some(m)) => {
                    let (idx, len) = (m.header.index, m.header.prefix_len);
                    for a in m.attributes {
                        if let AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) = a
                            && !out.contains(&(idx, ip, len))
                        {
                            out.push((idx, ip, len));
                        }
                    }
                }
                Ok(None) => return Ok(out),
                Err(error) => {
                    return Err(NetlinkError::Request { what: "listing addresses".into(), error });
                }
            }
        }
    }

    async fn default_route_oif(&self, v6: bool) -> Result<Option<u32>, NetlinkError> {
        let msg = match v6 {
            false => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            true => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let mut s = self.handle.route().get(msg).execute();
        loop {
            match s.try_next().await {
                Ok(Some(m)) => {
                    if m.header.destination_prefix_length == 0 {
                        for a in m.attributes {
                            if let RouteAttribute::Oif(i) = a {
                                return Ok(Some(i));
                            }
                        }
                    }
                }
                Ok(None) => return Ok(None),
                Err(error) => {
                    return Err(NetlinkError::Request { what: "listing routes".into(), error });
                }
            }
        }
    }

    /// Finds the underlay as flanneld does ([`IfaceChoice`]). PublicIP is `--public-ip` if
    /// given, else the address that chose the interface, else the interface's first IPv4
    /// address; its IPv6 address is the one that chose it (`--iface` with an IPv6 address),
    /// else its first global one.
    pub async fn underlay(&self, choice: &IfaceChoice<'_>) -> Result<Underlay, NetlinkError> {
        let links = self.links().await?;
        let addrs = self.v4_addrs().await?;
        let addrs6 = self.v6_addrs().await?;
        let by_index = |idx: u32| {
            links.iter().find(|l| l.index == idx).ok_or_else(|| NetlinkError::NotFound(format!("link {idx} vanished")))
        };
        let holding = |ip: Ipv4Addr| addrs.iter().find(|(_, a, _)| *a == ip).map(|(i, _, _)| *i);
        let holding6 = |ip: Ipv6Addr| addrs6.iter().find(|(_, a)| *a == ip).map(|(i, _)| *i);
        let mut chosen6 = None;
        let (link, chosen_addr) = if !choice.ifaces.is_empty() {
            choice
                .ifaces
                .iter()
                .find_map(|spec| match spec.parse::<IpAddr>() {
                    Ok(IpAddr::V4(ip)) => holding(ip).and_then(|i| by_index(i).ok()).map(|l| (l, Some(ip))),
                    Ok(IpAddr::V6(ip)) => {
                        let l = holding6(ip).and_then(|i| by_index(i).ok())?;
                        chosen6 = Some(ip);
                        Some((l, None))
                    }
                    Err(_) => links.iter().find(|l| l.name == *spec).map(|l| (l, None)),
                })
                .ok_or_else(|| {
                    NetlinkError::NotFound(format!(
                        "no interface matches --iface {}: give an interface's name or one of its addresses",
                        choice.ifaces.join(",")
                    ))
                })?
        } else if !choice.regexes.is_empty() {
            // flanneld tries each expression against every address, then every name.
            choice
                .regexes
                .iter()
                .find_map(|re| {
                    let by_ip = addrs
                        .iter()
                        .find(|(_, a, _)| re.is_match(&a.to_string()))
                        .and_then(|(i, a, _)| by_index(*i).ok().map(|l| (l, Some(*a))));
                    by_ip.or_else(|| links.iter().find(|l| re.is_match(&l.name)).map(|l| (l, None)))
                })
                .ok_or_else(|| NetlinkError::NotFound("no interface matches --iface-regex".into()))?
        } else if let Some(dst) = choice.can_reach {
            let src = source_towards(dst)
                .map_err(|e| NetlinkError::NotFound(format!("no route to --iface-can-reach {dst}: {e}")))?;
            let idx = holding(src)
                .ok_or_else(|| NetlinkError::NotFound(format!("no interface holds {src}, the source towards {dst}")))?;
            (by_index(idx)?, Some(src))
        } else if let Some(ip) = choice.public_ip {
            let idx = holding(ip).ok_or_else(|| {
                NetlinkError::NotFound(format!("no interface has address {ip}; pass --iface to choose one"))
            })?;
            (by_index(idx)?, Some(ip))
        } else {
            let idx = match self.default_route_oif(false).await? {
                None if !choice.ipv4 => self.default_route_oif(true).await?,
                found => found,
            };
            let idx = idx.ok_or_else(|| {
                NetlinkError::NotFound(
                    "no default route to pick the underlay interface; pass --iface or --public-ip".into(),
                )
            })?;
            (by_index(idx)?, None)
        };
        let addr = choice
            .public_ip
            .or(chosen_addr)
            .or_else(|| addrs.iter().find(|(i, _, _)| *i == link.index).map(|(_, a, _)| *a));
        if addr.is_none() && choice.ipv4 {
            return Err(NetlinkError::NotFound(format!(
                "interface {} has no IPv4 address; pass --public-ip",
                link.name
            )));
        }
        let subnet = addrs
            .iter()
            .find(|(i, a, _)| *i == link.index && Some(*a) == addr)
            .and_then(|(_, a, l)| Ipv4Net::new(*a, *l).ok())
            .map(|n| n.trunc());
        let addr6 = chosen6.or_else(|| addrs6.iter().find(|(i, _)| *i == link.index).map(|(_, a)| *a));
        Ok(Underlay { index: link.index, name: link.name.clone(), mtu: link.mtu, addr, subnet, addr6 })
    }

    /// Sets a link's MTU and transmit queue length (for a TUN: the packets it holds for its
    /// reader) and brings it up.
    pub async fn set_up(&self, index: u32, mtu: u32, txqueuelen: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).txqueuelen(txqueuelen).up().build();
        self.handle.link().set(msg).execute().await.map_err(|error| NetlinkError::Request {
            what: format!("setting link {index} up with MTU {mtu}, qlen {txqueuelen}"),
            error,
        })
    }

    /// Adds `addr/prefix` (IPv4 or IPv6) to a link; an address already there is fine.
    pub async fn add_address(&self, index: u32, addr: impl Into<IpAddr>, prefix: u8) -> Result<(), NetlinkError> {
        let addr = addr.into();
        match self.handle.address().add(index, addr, prefix).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(()),
            Err(error) => Err(NetlinkError::Request { what: format!("adding {addr}/{prefix} to link {index}"), error }),
        }
    }

    fn route(dst: Ipv4Net) -> RouteMessageBuilder<Ipv4Addr> {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTO))
    }

    fn dev_route(dst: Ipv4Net, index: u32) -> RouteMessage {
        Self::route(dst).output_interface(index).scope(RouteScope::Universe).build()
    }

    fn via_route(dst: Ipv4Net, gw: Ipv4Addr) -> RouteMessage {
        Self::route(dst).gateway(gw).build()
    }

    /// Every route, IPv4 or IPv6, in the main tables that carries weft's protocol number.
    pub async fn owned_routes(&self) -> Result<Vec<OwnedRoute>, NetlinkError> {
        let mut out = Vec::new();
        let dumps = [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()];
        for dump in dumps {
            let mut s = self.handle.route().get(dump).execute();
            loop {
                match s.try_next().await {
                    Ok(Some(m)) => out.extend(Self::owned_of(m)),
                    Ok(None) => break,
                    Err(error) => return Err(NetlinkError::Request { what: "listing routes".into(), error }),
                }
            }
        }
        Ok(out)
    }

    /// The route of `m`, when it is one of weft's.
    fn owned_of(m: RouteMessage) -> Option<OwnedRoute> {
        if m.header.protocol != RouteProtocol::Other(WEFT_ROUTE_PROTO) {
            return None;
        }
        let (mut dst, mut gateway, mut oif) = (None, None, None);
        for a in m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(IpAddr::V4(d)),
                RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = Some(IpAddr::V6(d)),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(IpAddr::V4(g)),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gateway = Some(IpAddr::V6(g)),
                RouteAttribute::Oif(i) => oif = Some(i),
                _ => {}
            }
        }
        // A default route has no destination attribute.
        let dst = dst.unwrap_or(match m.header.address_family {
            AddressFamily::Inet6 => Ipv6Addr::UNSPECIFIED.into(),
            _ => Ipv4Addr::UNSPECIFIED.into(),
        });
        let dst = IpNet::new(dst, m.header.destination_prefix_length).ok()?;
        Some(OwnedRoute { dst, gateway, oif })
    }

    /// The message for one of weft's routes: out of a device, via a gateway, or via a gateway
    /// on a device (onlink, as the kernel VXLAN path's routes are). A gateway of the other
    /// family than the destination's is left out (weft never makes such a route).
    fn owned_route(r: &OwnedRoute) -> RouteMessage {
        match r.dst {
            IpNet::V4(dst) => {
                let gw = match r.gateway {
                    Some(IpAddr::V4(g)) => Some(g),
                    _ => None,
                };
                match (gw, r.oif) {
                    (Some(gw), Some(i)) => Self::onlink_route(dst, gw, i),
                    (Some(gw), None) => Self::via_route(dst, gw),
                    (None, Some(i)) => Self::dev_route(dst, i),
                    (None, None) => Self::route(dst).build(),
                }
            }
            IpNet::V6(dst) => {
                let gw = match r.gateway {
                    Some(IpAddr::V6(g)) => Some(g),
                    _ => None,
                };
                match (gw, r.oif) {
                    (Some(gw), Some(i)) => Self::onlink_route_v6(dst, gw, i),
                    (Some(gw), None) => Self::via_route_v6(dst, gw),
                    (None, Some(i)) => Self::dev_route_v6(dst, i),
                    (None, None) => Self::route_v6(dst).build(),
                }
            }
        }
    }

    /// Deletes one of weft's routes; a missing one is fine.
    pub async fn del_owned_route(&self, r: &OwnedRoute) -> Result<(), NetlinkError> {
        self.del(Self::owned_route(r), format!("deleting route {}", r.dst)).await
    }

    /// Adds one of weft's routes; an existing one is fine.
    pub async fn add_owned_route(&self, r: &OwnedRoute) -> Result<(), NetlinkError> {
        self.add(Self::owned_route(r), format!("adding route {}", r.dst)).await
    }

    async fn add(&self, msg: RouteMessage, what: String) -> Result<(), NetlinkError> {
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(()),
            Err(error) => Err(NetlinkError::Request { what, error }),
        }
    }

    async fn del(&self, msg: RouteMessage, what: String) -> Result<(), NetlinkError> {
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno_of(&e), Some(libc::ESRCH | libc::ENOENT | libc::ENODEV)) => Ok(()),
            Err(error) => Err(NetlinkError::Request { what, error }),
        }
    }

    /// Adds a route for `dst` out of link `index`; an existing one is fine.
    pub async fn add_dev_route(&self, dst: Ipv4Net, index: u32) -> Result<(), NetlinkError> {
        self.add(Self::dev_route(dst, index), format!("adding route {dst} dev {index}")).await
    }

    fn route_v6(dst: Ipv6Net) -> RouteMessageBuilder<Ipv6Addr> {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTO))
    }

    fn dev_route_v6(dst: Ipv6Net, index: u32) -> RouteMessage {
        Self::route_v6(dst).output_interface(index).build()
    }

    fn via_route_v6(dst: Ipv6Net, gw: Ipv6Addr) -> RouteMessage {
        Self::route_v6(dst).gateway(gw).build()
    }

    /// Adds an IPv6 route for `dst` out of link `index` (the TUN's); an existing one is fine. It
    /// goes with the link, so weft never deletes it by itself.
    pub async fn add_dev_route_v6(&self, dst: Ipv6Net, index: u32) -> Result<(), NetlinkError> {
        self.add(Self::dev_route_v6(dst, index), format!("adding route {dst} dev {index}")).await
    }

    /// Adds an IPv6 route for `dst` via `gw` (host-gw); an existing one is fine.
    pub async fn add_via_route_v6(&self, dst: Ipv6Net, gw: Ipv6Addr) -> Result<(), NetlinkError> {
        self.add(Self::via_route_v6(dst, gw), format!("adding route {dst} via {gw}")).await
    }

    /// Removes the IPv6 route for `dst` via `gw`; a missing one is fine.
    pub async fn del_via_route_v6(&self, dst: Ipv6Net, gw: Ipv6Addr) -> Result<(), NetlinkError> {
        self.del(Self::via_route_v6(dst, gw), format!("deleting route {dst} via {gw}")).await
    }

    fn onlink_route_v6(dst: Ipv6Net, gw: Ipv6Addr, index: u32) -> RouteMessage {
        Self::route_v6(dst).gateway(gw).output_interface(index).onlink().build()
    }

    /// `ip -6 route add DST via GW dev INDEX onlink` (kernel VXLAN for IPv6); an existing one
    /// is fine.
    pub async fn add_onlink_route_v6(&self, dst: Ipv6Net, gw: Ipv6Addr, index: u32) -> Result<(), NetlinkError> {
        self.add(Self::onlink_route_v6(dst, gw, index), format!("adding route {dst} via {gw} dev {index} onlink")).await
    }

    /// Removes an IPv6 onlink route; a missing one is fine.
    pub async fn del_onlink_route_v6(&self, dst: Ipv6Net, gw: Ipv6Addr, index: u32) -> Result<(), NetlinkError> {
        self.del(Self::onlink_route_v6(dst, gw, index), format!("deleting route {dst} via {gw} dev {index}")).await
    }

    /// Removes the route for `dst` out of link `index`; a missing one is fine.
    pub async fn del_dev_route(&self, dst: Ipv4Net, index: u32) -> Result<(), NetlinkError> {
        self.del(Self::dev_route(dst, index), format!("deleting route {dst} dev {index}")).await
    }

    /// Adds a route for `dst` via gateway `gw`; an existing one is fine.
    pub async fn add_via_route(&self, dst: Ipv4Net, gw: Ipv4Addr) -> Result<(), NetlinkError> {
        self.add(Self::via_route(dst, gw), format!("adding route {dst} via {gw}")).await
    }

    /// Removes the route for `dst` via `gw`; a missing one is fine.
    pub async fn del_via_route(&self, dst: Ipv4Net, gw: Ipv4Addr) -> Result<(), NetlinkError> {
        self.del(Self::via_route(dst, gw), format!("deleting route {dst} via {gw}")).await
    }

    /// Deletes link `index`; a missing one is fine.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
            Err(error) => Err(NetlinkError::Request { what: format!("deleting link {index}"), error }),
        }
    }
}

/// A kernel VXLAN device as flanneld creates `flannel.<VNI>`.
#[derive(Debug, Clone)]
pub struct VxlanDevice {
    /// Device name.
    pub name: String,
    /// VNI.
    pub vni: u32,
    /// Destination UDP port.
    pub port: u16,
    /// Local address: PublicIP, or PublicIPv6 for `flannel-v6.<VNI>`.
    pub local: IpAddr,
    /// Underlay device index.
    pub underlay: u32,
    /// MAC (published as VtepMAC).
    pub mac: MacAddr,
    /// MTU.
    pub mtu: u32,
}

/// A link found by name, as far as deciding whether a VXLAN device can be adopted goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingLink {
    /// Its index.
    pub index: u32,
    /// Its MAC.
    pub mac: Option<MacAddr>,
    /// VNI, destination port, local address and underlay index, if it is a VXLAN device.
    pub vxlan: Option<(u32, u16, Option<IpAddr>, Option<u32>)>,
}

impl ExistingLink {
    /// Why it cannot serve as device `d` (None: it can, as it is).
    pub fn mismatch(&self, d: &VxlanDevice) -> Option<String> {
        let Some((vni, port, local, link)) = self.vxlan else {
            return Some("it is not a VXLAN device".into());
        };
        if vni != d.vni {
            return Some(format!("its VNI is {vni}, not {}", d.vni));
        }
        if port != d.port {
            return Some(format!("its port is {port}, not {}", d.port));
        }
        if local != Some(d.local) {
            return Some(format!("its local address is {local:?}, not {}", d.local));
        }
        if link.is_some_and(|l| l != d.underlay) {
            return Some("it sits on another underlay interface".into());
        }
        None
    }
}

impl VxlanDevice {
    /// `flannel.<VNI>` as flanneld makes it for `cfg` on `underlay`.
    pub fn flannel(cfg: &crate::proto::netconfig::NetConfig, underlay: &Underlay, mtu: u32, mac: MacAddr) -> Self {
        Self {
            name: format!("flannel.{}", cfg.backend.vni),
            vni: cfg.backend.vni,
            port: cfg.backend.port,
            // Made only for a network with IPv4, whose underlay has an IPv4 address.
            local: underlay.addr.unwrap_or(Ipv4Addr::UNSPECIFIED).into(),
            underlay: underlay.index,
            mac,
            mtu,
        }
    }

    /// `flannel-v6.<VNI>` as flanneld makes it for a dual-stack `cfg`: the same VNI and port over
    /// the IPv6 underlay from `local` (PublicIPv6).
    pub fn flannel_v6(
        cfg: &crate::proto::netconfig::NetConfig,
        underlay: &Underlay,
        local: Ipv6Addr,
        mtu: u32,
        mac: MacAddr,
    ) -> Self {
        Self {
            name: format!("flannel-v6.{}", cfg.backend.vni),
            local: local.into(),
            ..Self::flannel(cfg, underlay, mtu, mac)
        }
    }
}

fn neigh_msg(family: AddressFamily, index: u32) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m
}

impl Netlink {
    /// The link called `name`, if any, with what tells whether it is a VXLAN device weft can
    /// adopt.
    pub async fn existing_link(&self, name: &str) -> Result<Option<ExistingLink>, NetlinkError> {
        use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkInfo};
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        let msg = match s.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(e) if matches!(errno_of(&e), Some(libc::ENODEV)) => return Ok(None),
            Err(error) => return Err(NetlinkError::Request { what: format!("looking up link {name}"), error }),
        };
        let mut found = ExistingLink { index: msg.header.index, mac: None, vxlan: None };
        for a in msg.attributes {
            match a {
                LinkAttribute::Address(b) => found.mac = <[u8; 6]>::try_from(b.as_slice()).ok().map(MacAddr),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Data(InfoData::Vxlan(v)) = i {
                            let (mut vni, mut port, mut local, mut link) = (0, 0, None, None);
                            for x in v {
                                match x {
                                    InfoVxlan::Id(i) => vni = i,
                                    InfoVxlan::Port(p) => port = p,
                                    InfoVxlan::Local(a) => local = Some(IpAddr::V4(a)),
                                    InfoVxlan::Local6(a) => local = Some(IpAddr::V6(a)),
                                    InfoVxlan::Link(l) => link = Some(l),
                                    _ => {}
                                }
                            }
                            found.vxlan = Some((vni, port, local, link));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Some(found))
    }

    /// Creates (replacing any existing one of that name) a VXLAN device with learning off, and
    /// brings it up. Returns its index.
    pub async fn create_vxlan(&self, d: &VxlanDevice) -> Result<u32, NetlinkError> {
        if let Some(old) = self.link_index(&d.name).await? {
            self.delete_link(old).await?;
        }
        let b = LinkVxlan::new(&d.name, d.vni).dev(d.underlay);
        let b = match d.local {
            IpAddr::V4(a) => b.local(a),
            IpAddr::V6(a) => b.local6(a),
        };
        let msg = b.port(d.port).learning(false).mtu(d.mtu).address(d.mac.0.to_vec()).up().build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|error| NetlinkError::Request { what: format!("creating VXLAN device {}", d.name), error })?;
        self.link_index(&d.name)
            .await?
            .ok_or_else(|| NetlinkError::NotFound(format!("VXLAN device {} vanished", d.name)))
    }

    /// Brings an adopted VXLAN device to `d`'s MTU and up, keeping its index; and to `d`'s MAC
    /// (our lease's VtepMAC) where it has another (`mac`).
    pub async fn set_vxlan_up(&self, index: u32, d: &VxlanDevice, mac: Option<MacAddr>) -> Result<(), NetlinkError> {
        let mut b = LinkUnspec::new_with_index(index).mtu(d.mtu);
        if mac != Some(d.mac) {
            b = b.address(d.mac.0.to_vec());
        }
        let msg = b.up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|error| NetlinkError::Request { what: format!("setting {} up with MTU {}", d.name, d.mtu), error })
    }

    /// `ip neigh replace IP lladdr MAC dev INDEX nud permanent`.
    pub async fn set_neighbour(&self, index: u32, ip: IpAddr, mac: MacAddr) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac.0)
            .replace()
            .execute()
            .await
            .map_err(|error| NetlinkError::Request { what: format!("adding neighbour {ip} lladdr {mac}"), error })
    }

    /// Removes a neighbour entry; a missing one is fine.
    pub async fn del_neighbour(&self, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        let (family, dst) = match ip {
            IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
            IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
        };
        let mut m = neigh_msg(family, index);
        m.attributes.push(NeighbourAttribute::Destination(dst));
        match self.handle.neighbours().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno_of(&e), Some(libc::ENOENT | libc::ESRCH)) => Ok(()),
            Err(error) => Err(NetlinkError::Request { what: format!("deleting neighbour {ip}"), error }),
        }
    }

    /// `bridge fdb replace MAC dev INDEX dst IP self permanent`.
    pub async fn set_fdb(&self, index: u32, mac: MacAddr, dst: IpAddr) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add_bridge(index, &mac.0)
            .flags(NeighbourFlags::Own)
            .destination(dst)
            .replace()
            .execute()
            .await
            .map_err(|error| NetlinkError::Request { what: format!("adding fdb {mac} dst {dst}"), error })
    }

    /// Removes an fdb entry; a missing one is fine.
    pub async fn del_fdb(&self, index: u32, mac: MacAddr, dst: IpAddr) -> Result<(), NetlinkError> {
        let mut m = neigh_msg(AddressFamily::Bridge, index);
        m.header.flags = NeighbourFlags::Own;
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        m.attributes.push(NeighbourAttribute::Destination(match dst {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        match self.handle.neighbours().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno_of(&e), Some(libc::ENOENT | libc::ESRCH)) => Ok(()),
            Err(error) => Err(NetlinkError::Request { what: format!("deleting fdb {mac}"), error }),
        }
    }

    fn onlink_route(dst: Ipv4Net, gw: Ipv4Addr, index: u32) -> RouteMessage {
        Self::route(dst).gateway(gw).output_interface(index).onlink().build()
    }

    /// `ip route add DST via GW dev INDEX onlink`; an existing one is fine.
    pub async fn add_onlink_route(&self, dst: Ipv4Net, gw: Ipv4Addr, index: u32) -> Result<(), NetlinkError> {
        self.add(Self::onlink_route(dst, gw, index), format!("adding route {dst} via {gw} dev {index} onlink")).await
    }

    /// Removes an onlink route; a missing one is fine.
    pub async fn del_onlink_route(&self, dst: Ipv4Net, gw: Ipv4Addr, index: u32) -> Result<(), NetlinkError> {
        self.del(Self::onlink_route(dst, gw, index), format!("deleting route {dst} via {gw} dev {index}")).await
    }
}

/// Writes a sysctl under /proc/sys (e.g. `net/ipv6/conf/flannel0/disable_ipv6`).
pub fn sysctl(path: &str, value: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/{path}"), value)
}
