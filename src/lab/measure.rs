//! Reading figures: weft's `/metrics` inside a host namespace, `/proc/stat` for the whole
//! machine, `/proc/thread-self/net/snmp` for one namespace's packet counts, and a thread's rusage.

use crate::dataplane::sys::netns;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Port the lab asks each weft to serve `/metrics` on (inside its own host namespace).
pub const METRICS_PORT: u16 = 9100;

/// Parsed Prometheus samples, keyed by `name{labels}` as written.
pub type Samples = BTreeMap<String, f64>;

/// Parses Prometheus text (comments skipped).
pub fn parse_metrics(text: &str) -> Samples {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// GETs `/metrics` from 127.0.0.1:[`METRICS_PORT`] inside namespace `ns`.
pub fn scrape(ns: &str) -> io::Result<Samples> {
    let ns = ns.to_string();
    std::thread::spawn(move || -> io::Result<Samples> {
        netns::enter(&ns)?;
        let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], METRICS_PORT).into(), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        let text = body.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        Ok(parse_metrics(text))
    })
    .join()
    .map_err(|_| io::Error::other("scrape thread panicked"))?
}

/// Machine-wide CPU time from the `cpu` line of /proc/stat, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuTimes {
    /// user + nice.
    pub user: u64,
    /// system.
    pub system: u64,
    /// softirq (where the kernel's forwarding work runs).
    pub softirq: u64,
    /// irq.
    pub irq: u64,
}

impl CpuTimes {
    /// Reads /proc/stat now.
    pub fn now() -> io::Result<Self> {
        let text = std::fs::read_to_string("/proc/stat")?;
        Self::parse(&text).ok_or_else(|| io::Error::other("/proc/stat has no cpu line"))
    }

    /// Parses the aggregate `cpu` line.
    pub fn parse(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let hz = u64::try_from(nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100))
            .unwrap_or(100)
            .max(1);
        let ns = |ticks: u64| ticks.saturating_mul(1_000_000_000 / hz);
        Some(Self {
            user: ns(v.first()? + v.get(1)?),
            system: ns(*v.get(2)?),
            irq: ns(*v.get(5)?),
            softirq: ns(*v.get(6)?),
        })
    }

    /// What was spent between `earlier` and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            irq: self.irq.saturating_sub(earlier.irq),
        }
    }
}

/// A counter from `/proc/thread-self/net/snmp` (the calling thread's network namespace), e.g.
/// `("Tcp", "OutSegs")`.
pub fn snmp(proto: &str, field: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
    let mut lines = text.lines().filter(|l| l.starts_with(&format!("{proto}:")));
    let (names, values) = (lines.next(), lines.next());
    let (Some(names), Some(values)) = (names, values) else {
        return Err(io::Error::other(format!("no {proto} in snmp")));
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == field)
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no {proto} {field} in snmp")))
}

/// `field` of the calling thread's namespace's IPv6 counters (`/proc/net/snmp6`, one
/// `Name value` pair per line), e.g. `Udp6OutDatagrams`.
pub fn snmp6(field: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp6")?;
    text.lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(n, _)| *n == field)
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no {field} in snmp6")))
}

/// UDP datagrams the calling thread's namespace has sent, over IPv4 and IPv6 (TCP's
/// segment counter already counts both).
pub fn udp_out_datagrams() -> io::Result<u64> {
    Ok(snmp("Udp", "OutDatagrams")? + snmp6("Udp6OutDatagrams")?)
}

/// The calling thread's CPU time so far: (user ns, system ns).
pub fn thread_cpu() -> (u64, u64) {
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD) {
        Ok(ru) => {
            let ns = |t: nix::sys::time::TimeVal| {
                u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_usec()).unwrap_or(0) * 1_000
            };
            (ns(ru.user_time()), ns(ru.system_time()))
        }
        Err(_) => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metrics_and_proc_stat() {
        let m = parse_metrics("# HELP x y\nweft_a{c=\"tun_read\"} 3\nweft_b 0.5\nbad\n");
        assert_eq!(m.get("weft_a{c=\"tun_read\"}"), Some(&3.0));
        assert_eq!(m.get("weft_b"), Some(&0.5));
        assert_eq!(m.len(), 2);
        let c = CpuTimes::parse("cpu  10 2 30 400 5 6 7 0 0 0\ncpu0 1 1 1 1 1 1 1\n").unwrap();
        let tick = c.system / 30;
        assert_eq!((c.user, c.irq, c.softirq), (12 * tick, 6 * tick, 7 * tick));
        assert!(CpuTimes::parse("nothing").is_none());
    }

    #[test]
    fn reads_own_namespace_counters() {
        assert!(snmp("Udp", "OutDatagrams").is_ok());
        assert!(snmp("Udp", "NoSuchField").is_err());
        assert!(snmp6("Udp6OutDatagrams").is_ok());
        assert!(snmp6("Udp6NoSuchField").is_err());
        assert!(udp_out_datagrams().is_ok());
        let (u, s) = thread_cpu();
        assert!(u + s < 3_600_000_000_000);
    }
}
