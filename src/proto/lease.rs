//! Subnet lease keys (`10.244.1.0-24`) and values (`LeaseAttrs`), byte-for-byte as flannel.
//!
//! A dual-stack key adds the IPv6 subnet (`10.244.1.0-24&fc00:0:0:1::-64`); an IPv6-only key
//! has flannel's empty IPv4 subnet in front (`0.0.0.0-0&fc00:0:0:1::-64`), and its value the
//! empty PublicIP (`"0.0.0.0"`) and no `BackendData`.

use super::json::GoObject;
use super::mac::MacAddr;
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::value::RawValue;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The key of a lease under `<prefix>/subnets/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    /// The IPv4 subnet; None in an IPv6-only lease.
    pub v4: Option<Ipv4Net>,
    /// The IPv6 subnet of a dual-stack lease.
    pub v6: Option<Ipv6Net>,
}

/// A key that is not a lease key. Such keys are ignored, as flannel ignores them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a subnet lease key: {0:?}")]
pub struct KeyError(pub String);

impl SubnetKey {
    /// An IPv4-only key.
    pub fn v4(v4: Ipv4Net) -> Self {
        Self { v4: Some(v4), v6: None }
    }

    /// A dual-stack key.
    pub fn dual(v4: Ipv4Net, v6: Ipv6Net) -> Self {
        Self { v4: Some(v4), v6: Some(v6) }
    }

    /// An IPv6-only key.
    pub fn v6_only(v6: Ipv6Net) -> Self {
        Self { v4: None, v6: Some(v6) }
    }

    /// True when the two keys share a subnet: two such leases would route the same pods.
    pub fn overlaps(&self, other: &Self) -> bool {
        let v4 = self.v4.is_some() && self.v4 == other.v4;
        let v6 = self.v6.is_some() && self.v6 == other.v6;
        v4 || v6
    }
}

/// flannel's empty IPv4 subnet, which stands first in an IPv6-only key.
const NO_IPV4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0);

fn split_net(s: &str) -> Option<(&str, u8)> {
    let (addr, len) = s.rsplit_once('-')?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((addr, len.parse().ok()?))
}

impl FromStr for SubnetKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bad = || KeyError(s.to_string());
        let (v4part, v6part) = match s.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let (a, l) = split_net(v4part).ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let v4 = Ipv4Net::new(addr, l).map_err(|_| bad())?;
        if v4.network() != addr {
            return Err(bad());
        }
        let v6 = match v6part {
            None => None,
            Some(p) => {
                let (a, l) = split_net(p).ok_or_else(bad)?;
                let addr: Ipv6Addr = a.parse().map_err(|_| bad())?;
                let n = Ipv6Net::new(addr, l).map_err(|_| bad())?;
                if n.network() != addr {
                    return Err(bad());
                }
                Some(n)
            }
        };
        match (v4 == NO_IPV4, v6) {
            (true, None) => Err(bad()),
            (true, Some(v6)) => Ok(Self::v6_only(v6)),
            (false, v6) => Ok(Self { v4: Some(v4), v6 }),
        }
    }
}

impl fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v4 = self.v4.unwrap_or(NO_IPV4);
        write!(f, "{}-{}", v4.addr(), v4.prefix_len())?;
        if let Some(v6) = self.v6 {
            write!(f, "&{}-{}", v6.addr(), v6.prefix_len())?;
        }
        Ok(())
    }
}

/// flannel's `LeaseAttrs`, the value of a lease key.
#[derive(Debug, Clone)]
pub struct LeaseAttrs {
    /// `PublicIP`: where the host's encapsulated traffic goes.
    pub public_ip: Ipv4Addr,
    /// `PublicIPv6` (written as `null` when absent, as flannel does).
    pub public_ipv6: Option<Ipv6Addr>,
    /// `BackendType` (omitted when empty, as for the udp backend).
    pub backend_type: Option<String>,
    /// `BackendData`, raw JSON (kept byte-for-byte).
    pub backend_data: Option<Box<RawValue>>,
    /// `BackendV6Data`, raw JSON.
    pub backend_v6_data: Option<Box<RawValue>>,
}

impl PartialEq for LeaseAttrs {
    fn eq(&self, o: &Self) -> bool {
        let raw = |r: &Option<Box<RawValue>>| r.as_ref().map(|r| r.get().to_string());
        self.public_ip == o.public_ip
            && self.public_ipv6 == o.public_ipv6
            && self.backend_type == o.backend_type
            && raw(&self.backend_data) == raw(&o.backend_data)
            && raw(&self.backend_v6_data) == raw(&o.backend_v6_data)
    }
}
impl Eq for LeaseAttrs {}

/// A lease value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease value: {0}")]
pub struct LeaseError(pub String);

/// `BackendData` of a vxlan lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanData {
    /// `VNI`.
    pub vni: u32,
    /// `VtepMAC`.
    pub vtep_mac: MacAddr,
}

impl VxlanData {
    /// `{"VNI":1,"VtepMAC":"…"}`, as flannel writes it.
    fn raw(self) -> Option<Box<RawValue>> {
        // Well-formed JSON by construction, so this never gives None.
        RawValue::from_string(format!(r#"{{"VNI":{},"VtepMAC":"{}"}}"#, self.vni, self.vtep_mac)).ok()
    }

    fn parse(text: &str) -> Option<Self> {
        let o = GoObject::parse(text).ok()?;
        Some(Self { vni: o.get("VNI").ok()??, vtep_mac: o.get("VtepMAC").ok()?? })
    }
}

impl LeaseAttrs {
    /// The attributes of a udp-backend lease.
    pub fn udp(public_ip: Ipv4Addr) -> Self {
        Self { public_ip, public_ipv6: None, backend_type: None, backend_data: None, backend_v6_data: None }
    }

    /// The attributes of a vxlan lease.
    pub fn vxlan(public_ip: Ipv4Addr, data: VxlanData) -> Self {
        Self {
            public_ip,
            public_ipv6: None,
            backend_type: Some("vxlan".into()),
            backend_data: data.raw(),
            backend_v6_data: None,
        }
    }

    /// The same lease for a dual-stack node: `PublicIPv6` and, for vxlan, `BackendV6Data`
    /// (the VNI and VtepMAC the node's IPv6 overlay traffic uses).
    pub fn dual_stack(self, public_ipv6: Option<Ipv6Addr>, v6_data: Option<VxlanData>) -> Self {
        Self { public_ipv6, backend_v6_data: v6_data.and_then(|d| d.raw()), ..self }
    }

    /// The same lease for a node of an IPv6-only network: flannel's empty PublicIP, and the
    /// IPv4 `BackendData` left out.
    pub fn without_ipv4(self) -> Self {
        Self { public_ip: Ipv4Addr::UNSPECIFIED, backend_data: None, ..self }
    }

    /// The attributes of a host-gw lease.
    pub fn host_gw(public_ip: Ipv4Addr) -> Self {
        Self { backend_type: Some("host-gw".into()), ..Self::udp(public_ip) }
    }

    /// The backend type, empty meaning udp (flannel's udp backend writes none).
    pub fn backend_name(&self) -> &str {
        self.backend_type.as_deref().unwrap_or("udp")
    }

    /// The VXLAN data of a vxlan lease.
    pub fn vxlan_data(&self) -> Option<VxlanData> {
        self.vxlan_part(self.backend_data.as_deref())
    }

    /// The VXLAN data for IPv6 of a dual-stack vxlan lease (`BackendV6Data`).
    pub fn vxlan_v6_data(&self) -> Option<VxlanData> {
        self.vxlan_part(self.backend_v6_data.as_deref())
    }

    fn vxlan_part(&self, raw: Option<&RawValue>) -> Option<VxlanData> {
        if self.backend_name() != "vxlan" {
            return None;
        }
        VxlanData::parse(raw?.get())
    }

    /// Parses a lease value (field names matched as Go does).
    pub fn parse(text: &str) -> Result<Self, LeaseError> {
        let o = GoObject::parse(text).map_err(|e| LeaseError(format!("not a JSON object: {e}")))?;
        let public_ip: Ipv4Addr =
            o.get("PublicIP").map_err(LeaseError)?.ok_or_else(|| LeaseError("PublicIP is missing".into()))?;
        let public_ipv6 = o.get("PublicIPv6").map_err(LeaseError)?;
        let backend_type: Option<String> =
            o.get::<String>("BackendType").map_err(LeaseError)?.filter(|s| !s.is_empty());
        let raw = |name| -> Option<Box<RawValue>> { o.raw(name).filter(|r| r.get() != "null").map(|r| r.to_owned()) };
        Ok(Self {
            public_ip,
            public_ipv6,
            backend_type,
            backend_data: raw("BackendData"),
            backend_v6_data: raw("BackendV6Data"),
        })
    }

    /// Serializes as flanneld does: `PublicIP`, `PublicIPv6` (null when absent), then the
    /// backend fields only when set.
    pub fn to_json(&self) -> String {
        let mut s = format!(r#"{{"PublicIP":"{}","PublicIPv6":"#, self.public_ip);
        match self.public_ipv6 {
            Some(v6) => s.push_str(&format!(r#""{v6}""#)),
            None => s.push_str("null"),
        }
        if let Some(t) = &self.backend_type {
            s.push_str(r#","BackendType":"#);
            s.push_str(&serde_json::Value::String(t.clone()).to_string());
        }
        if let Some(d) = &self.backend_data {
            s.push_str(r#","BackendData":"#);
            s.push_str(d.get());
        }
        if let Some(d) = &self.backend_v6_data {
            s.push_str(r#","BackendV6Data":"#);
            s.push_str(d.get());
        }
        s.push('}');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let k: SubnetKey = "10.244.1.0-24".parse().unwrap();
        assert_eq!(k.v4, Some("10.244.1.0/24".parse::<Ipv4Net>().unwrap()));
        assert_eq!(k.to_string(), "10.244.1.0-24");
        let k: SubnetKey = "10.1.5.0-24&fc00::-64".parse().unwrap();
        assert_eq!(k.v6, Some("fc00::/64".parse().unwrap()));
        assert_eq!(k.to_string(), "10.1.5.0-24&fc00::-64");
        let k: SubnetKey = "0.0.0.0-0&2001:db8:0:1::-64".parse().unwrap();
        assert_eq!(k, SubnetKey::v6_only("2001:db8:0:1::/64".parse().unwrap()));
        assert_eq!(k.to_string(), "0.0.0.0-0&2001:db8:0:1::-64");
        assert!(k.overlaps(&"10.1.5.0-24&2001:db8:0:1::-64".parse().unwrap()));
        assert!(!k.overlaps(&"0.0.0.0-0&2001:db8:0:2::-64".parse().unwrap()));
        assert!(!SubnetKey::v4("10.1.5.0/24".parse().unwrap()).overlaps(&k));
        for bad in [
            "",
            "10.244.1.0",
            "10.244.1.0-",
            "10.244.1.0-33",
            "10.244.1.1-24",
            "10.244.1.0-24&",
            "10.244.1.0-24&fc00::-129",
            "x-24",
            "10.244.1.0-+24",
            "10.244.1.0-24&fc00::1-64",
            "10.244.1.0/24",
            "0.0.0.0-0",
        ] {
            assert!(bad.parse::<SubnetKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn udp_value_exact_bytes() {
        let a = LeaseAttrs::udp(Ipv4Addr::new(10, 168, 0, 3));
        assert_eq!(a.to_json(), r#"{"PublicIP":"10.168.0.3","PublicIPv6":null}"#);
        assert_eq!(LeaseAttrs::parse(&a.to_json()).unwrap(), a);
        assert_eq!(a.backend_name(), "udp");
    }

    #[test]
    fn vxlan_value_exact_bytes() {
        let text = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
        let a = LeaseAttrs::parse(text).unwrap();
        assert_eq!(a.to_json(), text);
        let d = a.vxlan_data().unwrap();
        assert_eq!(d.vni, 1);
        assert_eq!(d.vtep_mac.to_string(), "c6:d2:32:6f:8f:44");
        let built = LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 64, 3), d);
        assert_eq!(built.to_json(), text);
    }

    /// A dual-stack vxlan lease as flanneld writes it: `PublicIPv6` set and `BackendV6Data`
    /// after `BackendData`.
    #[test]
    fn dual_stack_value_exact_bytes() {
        let text = concat!(
            r#"{"PublicIP":"198.18.0.3","PublicIPv6":"2001:db8::3","BackendType":"vxlan","#,
            r#""BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"#,
            r#""BackendV6Data":{"VNI":1,"VtepMAC":"9a:1b:2c:3d:4e:5f"}}"#
        );
        let a = LeaseAttrs::parse(text).unwrap();
        assert_eq!(a.to_json(), text);
        let v6 = a.vxlan_v6_data().unwrap();
        assert_eq!(v6.vtep_mac.to_string(), "9a:1b:2c:3d:4e:5f");
        let built = LeaseAttrs::vxlan(Ipv4Addr::new(198, 18, 0, 3), a.vxlan_data().unwrap())
            .dual_stack(Some("2001:db8::3".parse().unwrap()), Some(v6));
        assert_eq!(built.to_json(), text);
        let udp = LeaseAttrs::udp(Ipv4Addr::new(198, 18, 0, 3)).dual_stack(None, None);
        assert_eq!(udp.to_json(), r#"{"PublicIP":"198.18.0.3","PublicIPv6":null}"#);
        assert_eq!(udp.vxlan_v6_data(), None);
    }

    /// An IPv6-only vxlan lease as flanneld writes it: the empty PublicIP, `BackendV6Data` only.
    #[test]
    fn ipv6_only_value_exact_bytes() {
        let text = concat!(
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::3","BackendType":"vxlan","#,
            r#""BackendV6Data":{"VNI":1,"VtepMAC":"9a:1b:2c:3d:4e:5f"}}"#
        );
        let a = LeaseAttrs::parse(text).unwrap();
        assert_eq!(a.to_json(), text);
        assert_eq!(a.vxlan_data(), None);
        let v6 = a.vxlan_v6_data().unwrap();
        let built = LeaseAttrs::vxlan(Ipv4Addr::new(198, 18, 0, 3), v6)
            .dual_stack(Some("2001:db8::3".parse().unwrap()), Some(v6))
            .without_ipv4();
        assert_eq!(built.to_json(), text);
    }

    #[test]
    fn parse_is_lenient_like_go_and_strict_on_types() {
        let a = LeaseAttrs::parse(r#"{"publicip":"1.2.3.4","BackendType":"","Extra":5}"#).unwrap();
        assert_eq!(a.public_ip, Ipv4Addr::new(1, 2, 3, 4));
        assert_eq!(a.backend_type, None);
        for bad in [
            "",
            "{}",
            r#"{"PublicIP":"1.2.3"}"#,
            r#"{"PublicIP":1}"#,
            "[]",
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":"x"}"#,
        ] {
            assert!(LeaseAttrs::parse(bad).is_err(), "{bad}");
        }
        let no_mac =
            LeaseAttrs::parse(r#"{"PublicIP":"1.2.3.4","BackendType":"vxlan","BackendData":{"VNI":1}}"#).unwrap();
        assert_eq!(no_mac.vxlan_data(), None);
    }
}
