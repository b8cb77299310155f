//! flanneld's masquerade and forward rules (`--ip-masq`, `--iptables-forward-rules`), in
//! nftables through the `nft` tool.
//!
//! weft keeps a table of its own, `ip weft_<network>`, made whole in one `nft -f` transaction:
//! a `postrouting` nat chain with flanneld's masquerade rules, and a `forward` filter chain that
//! accepts the network's traffic. nftables asks every base chain on a hook to accept a packet,
//! so an accept in weft's table cannot override another table's DROP policy (Docker's or ufw's
//! `ip filter FORWARD`, which Debian's iptables builds on nftables): weft also inserts its two
//! accepts at the head of every forward base chain with a drop policy, as flanneld's iptables
//! mode inserts its jump into FORWARD. Every rule carries the comment `weft <network>`, which
//! is how the checks, the restore and the clean-up find them.
//!
//! A dual-stack network's IPv6 traffic gets the same rules in a table `ip6 weft_<network>`: the
//! masquerade rules over `IPv6Network` and the IPv6 lease (multicast is ff00::/8), and a
//! `forward` chain; and accepts of `IPv6Network` at the head of every `ip6` or `inet` forward
//! chain with a drop policy (ufw's `ip6 filter FORWARD`).
//!
//! Why the `nft` tool and not a netlink crate: its script language and `-j` listing are the
//! stable interface of nftables (the netlink messages are an implementation detail that the
//! kernel's and libnftnl's versions move together), the transaction of one `nft -f` makes the
//! table appear whole or not at all, and operators read the same rules with `nft list ruleset`.

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

/// The head of weft's own forward chains.
const FORWARD_HEAD: &str = "type filter hook forward priority filter; policy accept;";

/// kube-proxy marks the packets it masquerades itself; flanneld leaves them alone.
const KUBE_PROXY_MARK: u32 = 0x4000;

/// An `nft` command failed.
#[derive(Debug, thiserror::Error)]
#[error("nft {what}: {detail}")]
pub struct NftError {
    what: String,
    detail: String,
    /// The `nft` tool is not installed.
    missing: bool,
}

impl NftError {
    /// True when the `nft` tool is not installed (rather than refusing a rule).
    pub fn tool_missing(&self) -> bool {
        self.missing
    }
}

/// What to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    /// The net-config's `Network` and this node's lease (None on an IPv6-only network).
    pub network4: Option<(Ipv4Net, Ipv4Net)>,
    /// `--ip-masq`.
    pub masquerade: bool,
    /// `--iptables-forward-rules`.
    pub forward: bool,
    /// `IPv6Network` of a dual-stack or IPv6-only network and this node's IPv6 lease: its
    /// traffic gets the same masquerade and forward rules.
    pub network6: Option<(Ipv6Net, Ipv6Net)>,
}

/// A forward base chain of another table, with a drop policy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DropChain {
    family: String,
    table: String,
    name: String,
}

/// weft's rules on this host.
#[derive(Debug)]
pub struct Firewall {
    spec: FirewallSpec,
    table: String,
    tag: String,
    /// `masquerade fully-random`, until the kernel refuses it (then plain masquerade).
    fully_random: bool,
}

fn nft(args: &[&str], script: Option<&str>) -> Result<String, NftError> {
    let what = if script.is_some() { "-f -".to_string() } else { args.join(" ") };
    let err = |detail: String| NftError { what: what.clone(), detail, missing: false };
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if script.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NftError {
            missing: e.kind() == std::io::ErrorKind::NotFound,
            ..err(format!("{e} (--ip-masq and the forward rules need nft: apt-get install nftables)"))
        })?;
    if let (Some(s), Some(mut stdin)) = (script, child.stdin.take()) {
        stdin.write_all(s.as_bytes()).map_err(|e| err(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The objects of an `nft -j` listing.
fn objects(json: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(json)
        .ok()
        .and_then(|v| v.get("nftables").and_then(Value::as_array).cloned())
        .unwrap_or_default()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

impl Firewall {
    /// The rules `spec` asks for, or None when it asks for none.
    pub fn new(spec: FirewallSpec) -> Option<Self> {
        if !spec.masquerade && !spec.forward {
            return None;
        }
        // Named after the IPv4 network, as before dual-stack; an IPv6-only one after its own.
        let network = match (spec.network4, spec.network6) {
            (Some((n, _)), _) => n.to_string(),
            (None, Some((n, _))) => n.to_string(),
            (None, None) => return None,
        };
        let table = format!("weft_{}", network.replace(['.', '/', ':'], "_"));
        let tag = format!("weft {network}");
        Some(Self { spec, table, tag, fully_random: true })
    }

    /// The rules of weft's `ip` table, chain by chain (pure: the tests read it).
    pub fn chains(&self) -> Vec<(&'static str, &'static str, Vec<String>)> {
        self.family_chains("ip")
    }

    /// The rules of weft's table of `family` (`ip`, or `ip6` on a dual-stack network).
    fn family_chains(&self, family: &str) -> Vec<(&'static str, &'static str, Vec<String>)> {
        let (n, l, multicast): (String, String, &str) = match (family, self.spec.network4, self.spec.network6) {
            ("ip6", _, Some((n, l))) => (n.to_string(), l.to_string(), "ff00::/8"),
            ("ip", Some((n, l)), _) => (n.to_string(), l.to_string(), "224.0.0.0/4"),
            _ => return Vec::new(),
        };
        let tag = &self.tag;
        let masq = if self.fully_random { "masquerade fully-random" } else { "masquerade" };
        let mut out = Vec::new();
        if self.spec.masquerade {
            out.push((
                "postrouting",
                "type nat hook postrouting priority srcnat; policy accept;",
                vec![
                    format!("meta mark & {KUBE_PROXY_MARK:#x} == {KUBE_PROXY_MARK:#x} return comment \"{tag}\""),
                    format!("{family} saddr {l} {family} daddr {n} return comment \"{tag}\""),
                    format!("{family} saddr {n} {family} daddr {l} return comment \"{tag}\""),
                    format!("{family} saddr != {n} {family} daddr {l} return comment \"{tag}\""),
                    format!("{family} saddr {n} {family} daddr != {multicast} {masq} comment \"{tag}\""),
                    format!("{family} saddr != {n} {family} daddr {n} {masq} comment \"{tag}\""),
                ],
            ));
        }
        if self.spec.forward {
            out.push(("forward", FORWARD_HEAD, self.accepts(family)));
        }
        out
    }

    /// The accepts of the network's traffic for a forward chain of `family`: IPv4's two in
    /// `ip`, IPv6's two in `ip6` (a dual-stack network only), both in `inet`.
    fn accepts(&self, family: &str) -> Vec<String> {
        let tag = &self.tag;
        let mut v = Vec::new();
        if let (Some((n, _)), "ip" | "inet") = (self.spec.network4, family) {
            v.push(format!("ip saddr {n} accept comment \"{tag}\""));
            v.push(format!("ip daddr {n} accept comment \"{tag}\""));
        }
        if let (Some((n, _)), "ip6" | "inet") = (self.spec.network6, family) {
            v.push(format!("ip6 saddr {n} accept comment \"{tag}\""));
            v.push(format!("ip6 daddr {n} accept comment \"{tag}\""));
        }
        v
    }

    /// The table families weft keeps: `ip` for an IPv4 network, `ip6` for an IPv6 one.
    fn families(&self) -> &'static [&'static str] {
        match (self.spec.network4.is_some(), self.spec.network6.is_some()) {
            (true, true) => &["ip", "ip6"],
            (false, true) => &["ip6"],
            _ => &["ip"],
        }
    }

    /// The `nft -f` script that makes weft's tables anew, whole, in one transaction.
    pub fn table_script(&self) -> String {
        let t = &self.table;
        let mut s = String::new();
        for family in self.families() {
            // Declaring the table first makes the delete valid when it does not exist yet.
            s.push_str(&format!("table {family} {t} {{\n}}\ndelete table {family} {t}\ntable {family} {t} {{\n"));
            for (name, head, rules) in self.family_chains(family) {
                s.push_str(&format!("  chain {name} {{\n    {head}\n"));
                for r in rules {
                    s.push_str(&format!("    {r}\n"));
                }
                s.push_str("  }\n");
            }
            s.push_str("}\n");
        }
        s
    }

    /// Makes weft's table; where the kernel refuses `fully-random`, without it.
    fn write_table(&mut self) -> Result<(), NftError> {
        match nft(&["-f", "-"], Some(&self.table_script())) {
            Err(e) if self.fully_random && self.spec.masquerade => {
                self.fully_random = false;
                nft(&["-f", "-"], Some(&self.table_script())).map_err(|_| e)?;
                tracing::info!("this kernel refuses masquerade fully-random; masquerading without it");
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// Forward base chains of other tables with a drop policy.
    fn drop_chains(&self) -> Result<Vec<DropChain>, NftError> {
        Ok(objects(&nft(&["-j", "list", "chains"], None)?)
            .iter()
            .filter_map(|o| o.get("chain"))
            .filter(|c| str_of(c, "hook") == "forward" && str_of(c, "policy") == "drop")
            .filter(|c| !self.accepts(str_of(c, "family")).is_empty() && str_of(c, "table") != self.table)
            .map(|c| DropChain {
                family: str_of(c, "family").into(),
                table: str_of(c, "table").into(),
                name: str_of(c, "name").into(),
            })
            .collect())
    }

    /// The handles of weft's rules in `chain`.
    fn tagged(&self, c: &DropChain) -> Result<Vec<u64>, NftError> {
        let listing = nft(&["-j", "-a", "list", "chain", &c.family, &c.table, &c.name], None)?;
        Ok(objects(&listing)
            .iter()
            .filter_map(|o| o.get("rule"))
            .filter(|r| str_of(r, "comment") == self.tag)
            .filter_map(|r| r.get("handle").and_then(Value::as_u64))
            .collect())
    }

    fn untag(&self, c: &DropChain, handles: &[u64]) -> Result<(), NftError> {
        for h in handles {
            nft(&["delete", "rule", &c.family, &c.table, &c.name, "handle", &h.to_string()], None)?;
        }
        Ok(())
    }

    /// Puts the accepts at the head of every forward chain with a drop policy that lacks them.
    /// Returns how many chains were mended.
    fn mend_drop_chains(&self) -> Result<usize, NftError> {
        if !self.spec.forward {
            return Ok(0);
        }
        let mut mended = 0;
        for c in self.drop_chains()? {
            let have = self.tagged(&c)?;
            let want = self.accepts(&c.family);
            if have.len() == want.len() {
                continue;
            }
            self.untag(&c, &have)?;
            for rule in want.iter().rev() {
                nft(&["insert", "rule", &c.family, &c.table, &c.name, rule], None)?;
            }
            tracing::info!(chain = %format!("{} {} {}", c.family, c.table, c.name), "accepting the overlay's traffic in a forward chain with a drop policy");
            mended += 1;
        }
        Ok(mended)
    }

    /// Whether masquerading was asked for.
    pub fn masquerades(&self) -> bool {
        self.spec.masquerade
    }

    /// Installs everything.
    pub fn apply(&mut self) -> Result<(), NftError> {
        self.write_table()?;
        self.mend_drop_chains().map(drop)
    }

    /// True when weft's tables hold every rule they should.
    fn table_intact(&self) -> bool {
        self.families().iter().all(|family| {
            // One listing per table, counted chain by chain.
            let Ok(listing) = nft(&["-j", "list", "table", family, &self.table], None) else { return false };
            let rules: Vec<Value> = objects(&listing).iter().filter_map(|o| o.get("rule").cloned()).collect();
            self.family_chains(family).iter().all(|(name, _, want)| {
                rules.iter().filter(|r| str_of(r, "chain") == *name && str_of(r, "comment") == self.tag).count()
                    == want.len()
            })
        })
    }

    /// Puts back what was removed from outside (`nft flush ruleset`, a firewall reload);
    /// `--iptables-resync` calls it. Returns whether anything was restored.
    pub fn check(&mut self) -> Result<bool, NftError> {
        let mut restored = false;
        if !self.table_intact() {
            tracing::warn!(table = %self.table, "weft's nftables rules were removed from outside; restoring them");
            self.write_table()?;
            restored = true;
        }
        Ok(self.mend_drop_chains()? > 0 || restored)
    }

    /// What a clean exit leaves: a kernel data path goes on forwarding after weft exits, and on
    /// a host whose forward policy is drop it needs the forward accepts, so those stay (a
    /// restart finds and keeps them); the masquerade rules go. Everything else goes whole.
    pub fn release(&mut self, kernel_keeps_forwarding: bool) {
        if !(kernel_keeps_forwarding && self.spec.forward) {
            return self.remove();
        }
        if self.spec.masquerade {
            self.spec.masquerade = false;
            if let Err(e) = self.write_table() {
                tracing::warn!("removing weft's masquerade rules: {e}");
            }
        }
        tracing::info!(table = %self.table, "leaving the forward rules for the kernel path, which goes on forwarding");
    }

    /// Removes weft's tables and its rules in other tables' chains.
    pub fn remove(&self) {
        for family in self.families() {
            if let Err(e) = nft(&["delete", "table", family, &self.table], None)
                && !e.detail.contains("No such file")
            {
                tracing::warn!("removing weft's nftables table: {e}");
            }
        }
        let chains = if self.spec.forward { self.drop_chains().unwrap_or_default() } else { Vec::new() };
        for c in chains {
            if let Err(e) = self.tagged(&c).and_then(|h| self.untag(&c, &h)) {
                tracing::warn!("removing weft's rules from {} {} {}: {e}", c.family, c.table, c.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fw(masquerade: bool, forward: bool) -> Option<Firewall> {
        Firewall::new(FirewallSpec {
            network4: Some(("100.96.0.0/16".parse().unwrap(), "100.96.1.0/24".parse().unwrap())),
            masquerade,
            forward,
            network6: None,
        })
    }

    #[test]
    fn flanneld_rules_in_one_table() {
        assert!(fw(false, false).is_none());
        let f = fw(true, true).unwrap();
        let s = f.table_script();
        assert!(s.starts_with("table ip weft_100_96_0_0_16 {\n}\ndelete table ip weft_100_96_0_0_16\n"), "{s}");
        for want in [
            "meta mark & 0x4000 == 0x4000 return comment \"weft 100.96.0.0/16\"",
            "ip saddr 100.96.1.0/24 ip daddr 100.96.0.0/16 return",
            "ip saddr 100.96.0.0/16 ip daddr 100.96.1.0/24 return",
            "ip saddr != 100.96.0.0/16 ip daddr 100.96.1.0/24 return",
            "ip saddr 100.96.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
            "ip saddr != 100.96.0.0/16 ip daddr 100.96.0.0/16 masquerade fully-random",
            "type filter hook forward priority filter; policy accept;",
            "ip saddr 100.96.0.0/16 accept",
            "ip daddr 100.96.0.0/16 accept",
        ] {
            assert!(s.contains(want), "{want} missing:\n{s}");
        }
        // The masquerade rules in flanneld's order: returns before masquerades.
        let post = &f.chains()[0].2;
        assert!(post[..4].iter().all(|r| r.contains("return")) && post[4..].iter().all(|r| r.contains("masquerade")));
        let only_forward = fw(false, true).unwrap().table_script();
        assert!(!only_forward.contains("postrouting") && only_forward.contains("chain forward"));
        assert!(!only_forward.contains("ip6"), "an IPv4 network makes no IPv6 table: {only_forward}");
    }

    #[test]
    fn a_dual_stack_network_gets_ipv6_masquerade_and_forward_rules() {
        let mut f = fw(true, true).unwrap();
        f.spec.network6 = Some(("2001:db8:96::/48".parse().unwrap(), "2001:db8:96:1::/64".parse().unwrap()));
        let s = f.table_script();
        for want in [
            "ip6 saddr 2001:db8:96:1::/64 ip6 daddr 2001:db8:96::/48 return",
            "ip6 saddr != 2001:db8:96::/48 ip6 daddr 2001:db8:96:1::/64 return",
            "ip6 saddr 2001:db8:96::/48 ip6 daddr != ff00::/8 masquerade fully-random",
            "ip6 saddr != 2001:db8:96::/48 ip6 daddr 2001:db8:96::/48 masquerade fully-random",
        ] {
            assert!(s.contains(want), "{want} missing:\n{s}");
        }
        assert!(s.contains("table ip6 weft_100_96_0_0_16 {\n}\ndelete table ip6 weft_100_96_0_0_16\n"), "{s}");
        assert!(s.contains("ip6 saddr 2001:db8:96::/48 accept comment \"weft 100.96.0.0/16\""), "{s}");
        assert!(s.contains("ip6 daddr 2001:db8:96::/48 accept"), "{s}");
        assert_eq!(f.accepts("ip").len(), 2);
        assert_eq!(f.accepts("ip6").len(), 2);
        assert_eq!(f.accepts("inet").len(), 4);
        assert!(f.accepts("bridge").is_empty());
        assert!(fw(false, true).unwrap().accepts("ip6").is_empty());
    }

    #[test]
    fn an_ipv6_only_network_gets_an_ip6_table_alone() {
        let mut f = fw(true, true).unwrap();
        f.spec.network4 = None;
        f.spec.network6 = Some(("2001:db8:96::/48".parse().unwrap(), "2001:db8:96:1::/64".parse().unwrap()));
        let f = Firewall::new(f.spec).unwrap();
        let s = f.table_script();
        assert!(s.starts_with("table ip6 weft_2001_db8_96___48 {\n}\n"), "{s}");
        assert!(!s.contains("table ip "), "{s}");
        assert!(s.contains("ip6 saddr 2001:db8:96::/48 ip6 daddr != ff00::/8 masquerade"), "{s}");
        assert!(f.chains().is_empty(), "no ip table");
        assert_eq!((f.accepts("ip").len(), f.accepts("inet").len()), (0, 2));
    }
}
