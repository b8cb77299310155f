//! `weft lab`: builds hosts in network namespaces, runs each data path in turn with the same
//! workload, and reports the figures side by side.

pub mod cluster;
pub mod etcd;
pub mod measure;
pub mod topology;
pub mod traffic;

pub mod report;

use crate::control::metrics::name;
use anyhow::{Context, Result, bail};
use cluster::{Cluster, ClusterSpec};
use measure::{CpuTimes, METRICS_PORT, Samples, scrape};
use report::{CrossingFigure, MachineFigure, ProcessFigure, Record, Report, SenderFigure};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use traffic::{Amount, tcp_bulk, udp_flood, udp_lossless_rate, udp_ping_pong};

/// The TCP workloads' congestion control unless `--congestion-control` names another: the
/// kernel's built-in default.
pub const DEFAULT_CONGESTION_CONTROL: &str = "cubic";

/// Options of `weft lab`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabOptions {
    /// Seconds of traffic per data path and workload.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// A short run (1 s per workload), for CI.
    #[arg(long)]
    pub quick: bool,
    /// Rounds: every data path runs every workload once per round, the paths in turn; the table
    /// shows each path's median round and the range of its ratios (the JSON has every round).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Parallel TCP streams of the multi-stream bulk workload (1 runs only the single stream).
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
    /// Hosts in the topology (the workloads run between hosts 1 and 2).
    #[arg(long, default_value_t = 2)]
    pub hosts: usize,
    /// Only data paths whose name contains this text (e.g. `naive`, `kernel`, `uring`).
    #[arg(long, value_name = "TEXT")]
    pub only: Option<String>,
    /// Only these workloads (comma-separated or repeated; default: all). `tcp-n` is the
    /// multi-stream bulk workload (`--streams`).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "WORKLOAD")]
    pub workload: Vec<WorkloadChoice>,
    /// Run the hosts against a real etcd (spawned in host 1's namespace) instead of a registry
    /// directory.
    #[arg(long)]
    pub etcd: bool,
    /// The overlay families every workload runs over. With IPv6 the network is dual-stack: the
    /// kernel paths carry IPv6 over the IPv6 underlay (flannel-v6.<VNI>, host-gw's IPv6 routes),
    /// the userspace paths over the IPv4 underlay. `both` runs IPv4 and IPv6 on the same hosts,
    /// one after the other, so that their ratios come from one run. `ipv6-only` runs IPv6 on an
    /// IPv6-only network, where every path carries it over the IPv6 underlay.
    #[arg(long, value_enum, default_value_t = Families::Ipv4)]
    pub family: Families,
    /// Short for `--family ipv6`.
    #[arg(long, conflicts_with = "family")]
    pub ipv6: bool,
    /// The TCP congestion control of the bulk workloads' sockets, on every data path alike
    /// (`net.ipv4.tcp_available_congestion_control` lists those the kernel has loaded). The
    /// default is Linux's own, not the machine's: some images default to BBR, whose pacing
    /// holds one stream well below what the CPUs carry, by a different factor on each path
    /// (docs/performance.md, "The congestion control").
    #[arg(long, value_name = "NAME", default_value = DEFAULT_CONGESTION_CONTROL)]
    pub congestion_control: String,
    /// Write every figure as JSON (schema `weft-lab/1`, in docs/lab-json.md).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a chart of throughput and syscalls per packet (SVG).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

/// A workload `--workload` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadChoice {
    /// One TCP stream.
    #[value(name = "tcp-1")]
    Tcp1,
    /// `--streams` TCP streams.
    #[value(name = "tcp-n")]
    TcpN,
    /// 64-byte UDP datagrams at the highest rate with < 1 % loss.
    #[value(name = "udp-64B")]
    Udp64,
    /// 64-byte request/response round trips.
    #[value(name = "rr-64B")]
    Rr64,
}

/// Which overlay families `weft lab` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Families {
    /// IPv4 pods (an IPv4-only network).
    Ipv4,
    /// IPv6 pods of a dual-stack network.
    Ipv6,
    /// Both, on one dual-stack network.
    Both,
    /// IPv6 pods of an IPv6-only network (`EnableIPv4: false`).
    #[value(name = "ipv6-only")]
    Ipv6Only,
}

impl Families {
    /// The families, in the order their workloads run.
    fn list(self) -> &'static [Family] {
        match self {
            Self::Ipv4 => &[Family::Ipv4],
            Self::Ipv6 | Self::Ipv6Only => &[Family::Ipv6],
            Self::Both => &[Family::Ipv4, Family::Ipv6],
        }
    }

    /// The report's `family`.
    fn label(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
            Self::Both => "both",
            Self::Ipv6Only => "ipv6-only",
        }
    }
}

/// The family one workload runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// The record's `family`.
    fn label(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }
}

/// One data path the lab measures.
#[derive(Debug, Clone)]
struct DataPath {
    name: String,
    backend: &'static str,
    extra: Vec<String>,
}

/// Every data path weft has: the kernel baselines through weft's control plane, and every
/// userspace engine × backend.
fn data_paths() -> Vec<DataPath> {
    let mut v = vec![
        DataPath { name: "host-gw (kernel)".into(), backend: r#"{"Type":"host-gw"}"#, extra: vec![] },
        DataPath {
            name: "vxlan (kernel)".into(),
            backend: r#"{"Type":"vxlan"}"#,
            extra: vec!["--dataplane".into(), "kernel".into()],
        },
    ];
    use crate::dataplane::engine::Mode;
    for mode in <Mode as clap::ValueEnum>::value_variants() {
        for (backend, json) in [("udp", r#"{"Type":"udp"}"#), ("vxlan", r#"{"Type":"vxlan"}"#)] {
            v.push(DataPath {
                name: format!("weft {backend} {}", mode.name()),
                backend: json,
                extra: vec!["--mode".into(), mode.name().into()],
            });
        }
    }
    // Multi-queue: two workers per host, for the engines that move the most per syscall.
    for mode in [Mode::Offload, Mode::Uring] {
        v.push(DataPath {
            name: format!("weft vxlan {} mq2", mode.name()),
            backend: r#"{"Type":"vxlan"}"#,
            extra: vec!["--mode".into(), mode.name().into(), "--threads".into(), "2".into()],
        });
    }
    // Two workers, each flow keeping one of eight source ports per worker: the peer's
    // SO_REUSEPORT group spreads flows over its workers instead of senders.
    for mode in [Mode::Offload, Mode::Uring] {
        v.push(DataPath {
            name: format!("weft vxlan {} mq2 flows", mode.name()),
            backend: r#"{"Type":"vxlan"}"#,
            extra: ["--mode", mode.name(), "--threads", "2", "--flow-ports", "8"].map(String::from).to_vec(),
        });
    }
    v
}

/// The workloads, in the order they run on each data path.
#[derive(Debug, Clone, Copy)]
enum Workload {
    Tcp { streams: usize },
    UdpSmall,
    RequestResponse,
}

impl Workload {
    /// `tcp-1`, `udp-64B`, …; over IPv6 with `/ipv6` after it.
    fn name(self, family: Family) -> String {
        let base = match self {
            Self::Tcp { streams: 1 } => "tcp-1".into(),
            Self::Tcp { streams } => format!("tcp-{streams}"),
            Self::UdpSmall => "udp-64B".into(),
            Self::RequestResponse => "rr-64B".into(),
        };
        match family {
            Family::Ipv4 => base,
            Family::Ipv6 => format!("{base}/{}", family.label()),
        }
    }
}

/// The workloads to run, in order: every one, or those `--workload` names.
fn workloads(opts: &LabOptions) -> Vec<Workload> {
    let all = [
        (WorkloadChoice::Tcp1, Some(Workload::Tcp { streams: 1 })),
        (WorkloadChoice::TcpN, (opts.streams > 1).then_some(Workload::Tcp { streams: opts.streams })),
        (WorkloadChoice::Udp64, Some(Workload::UdpSmall)),
        (WorkloadChoice::Rr64, Some(Workload::RequestResponse)),
    ];
    all.into_iter()
        .filter(|(choice, _)| opts.workload.is_empty() || opts.workload.contains(choice))
        .filter_map(|(_, w)| w)
        .collect()
}

fn preflight(opts: &LabOptions) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("weft lab needs root (it creates network namespaces); run it with sudo");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing (modprobe tun)");
    }
    topology::ip(&["-V"]).context("weft lab needs iproute2's `ip` command (apt-get install iproute2)")?;
    // Asked of a socket that never connects, so that a name the kernel lacks stops the run
    // before the first cluster, not in the middle of it.
    let probe =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).context("opening a TCP socket")?;
    traffic::set_congestion_control(&probe, &opts.congestion_control).context("--congestion-control")?;
    Ok(())
}

/// `name{label}` in one host's scrape. A metric weft does not report is an error, not a zero:
/// a renamed metric would otherwise turn a column of the table into zeros.
fn sample(s: &Samples, name: &str, label: &str) -> Result<f64> {
    let key = if label.is_empty() { name.to_string() } else { format!("{name}{{{label}}}") };
    s.get(&key).copied().with_context(|| format!("weft's /metrics has no {key}"))
}

/// How much `name{label}`, summed over the hosts, grew between the two scrapes.
fn delta(before: &[Samples], after: &[Samples], name: &str, label: &str) -> Result<f64> {
    let sum = |s: &[Samples]| s.iter().map(|m| sample(m, name, label)).sum::<Result<f64>>();
    Ok(sum(after)? - sum(before)?)
}

fn per(x: f64, n: u64) -> f64 {
    if n == 0 { 0.0 } else { x / n as f64 }
}

/// Figures from counter deltas. `packets` is the workload's data packets (the denominator of
/// every "per packet" figure but the per-crossing ones, which use the crossing's own packets).
fn figures(
    before: &[Samples],
    after: &[Samples],
    cpu: CpuTimes,
    packets: u64,
) -> Result<(Vec<CrossingFigure>, f64, ProcessFigure, MachineFigure, u64)> {
    let crossings = crate::dataplane::counters::Crossing::ALL
        .iter()
        .map(|c| {
            let l = format!("crossing=\"{}\"", c.label());
            let sys = delta(before, after, name::CROSSING_SYSCALLS, &l)?;
            let pk = delta(before, after, name::CROSSING_PACKETS, &l)?;
            let secs = delta(before, after, name::CROSSING_SECONDS, &l)?;
            Ok(CrossingFigure {
                crossing: c.label().into(),
                syscalls: sys as u64,
                packets: pk as u64,
                syscalls_per_packet: if pk > 0.0 { sys / pk } else { 0.0 },
                packets_per_syscall: if sys > 0.0 { pk / sys } else { 0.0 },
                ns_per_packet: if pk > 0.0 { secs * 1e9 / pk } else { 0.0 },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let polls = delta(before, after, name::POLLS, "")?;
    let cpu_ns = |mode: &str| Ok::<_, anyhow::Error>(delta(before, after, name::PROCESS_CPU, mode)? * 1e9);
    let switches =
        |kind: &str| Ok::<_, anyhow::Error>(delta(before, after, name::PROCESS_CONTEXT_SWITCHES, kind)? * 1000.0);
    let fwd = ProcessFigure {
        user_ns_per_packet: per(cpu_ns("mode=\"user\"")?, packets),
        system_ns_per_packet: per(cpu_ns("mode=\"system\"")?, packets),
        voluntary_cs_per_1000_packets: per(switches("kind=\"voluntary\"")?, packets),
        involuntary_cs_per_1000_packets: per(switches("kind=\"involuntary\"")?, packets),
    };
    let machine = MachineFigure {
        user_ns_per_packet: per(cpu.user as f64, packets),
        system_ns_per_packet: per(cpu.system as f64, packets),
        softirq_ns_per_packet: per((cpu.softirq + cpu.irq) as f64, packets),
    };
    let drops = crate::dataplane::counters::DropReason::ALL
        .iter()
        .map(|r| delta(before, after, name::DROPS, &format!("reason=\"{}\"", r.label())))
        .sum::<Result<f64>>()?;
    Ok((crossings, per(polls, packets), fwd, machine, drops.max(0.0) as u64))
}

/// Packets the kernel dropped at full TUN queues between the scrapes. Only a userspace path
/// has a TUN, so only there does weft report it.
fn tun_queue_drops(before: &[Samples], after: &[Samples]) -> u64 {
    let sum = |s: &[Samples]| s.iter().filter_map(|m| m.get(name::TUN_QUEUE_DROPPED)).sum::<f64>();
    (sum(after) - sum(before)).max(0.0) as u64
}

/// Paced runs per data path to find the < 1 % loss rate of `udp-64B` (resolution: the unpaced
/// offer / 2^trials).
const LOSSLESS_TRIALS: usize = 7;

/// Where `--etcd` runs etcd: host 1's underlay address.
const LAB_ETCD_IP: &str = "198.18.0.1";

/// Starts the hosts of one data path; with `spec.etcd_endpoints`, first a real etcd in host 1's
/// namespace, seeded with the config and leases in flannel's JSON. The etcd is returned second so
/// that it is dropped (killed) before the cluster's namespaces are.
fn start_cluster(bin: &std::path::Path, spec: &ClusterSpec, name: &str) -> Result<(Cluster, Option<etcd::Etcd>)> {
    let mut cluster = Cluster::build(spec).with_context(|| format!("building the hosts for {name}"))?;
    let etcd = match &spec.etcd_endpoints {
        None => None,
        Some(_) => {
            let e = etcd::Etcd::in_netns(&cluster.topo.hosts[0].ns, LAB_ETCD_IP).context("starting etcd")?;
            e.try_wait_healthy(&[], Duration::from_secs(20))?;
            let config = cluster::config_for(spec);
            e.try_put("/coreos.com/network/config", &config)?;
            for (key, value) in cluster::seed_leases(&cluster.topo, &config)? {
                e.try_put(&format!("/coreos.com/network/subnets/{key}"), &value)?;
            }
            Some(e)
        }
    };
    cluster.start_all(bin, spec, Duration::from_secs(15)).with_context(|| format!("starting {name}"))?;
    Ok((cluster, etcd))
}

/// What one workload on one data path runs with.
struct Trial<'a> {
    cluster: &'a Cluster,
    path: &'a DataPath,
    round: u32,
    secs: u64,
    quick: bool,
    /// The TCP workloads' congestion control.
    congestion: &'a str,
}

impl Trial<'_> {
    /// Runs workload `w` over `family` between containers 1 and 2 and reads the figures around it.
    fn measure(&self, w: Workload, family: Family) -> Result<Record> {
        let (h1, h2) = (&self.cluster.topo.hosts[0], &self.cluster.topo.hosts[1]);
        let dst: std::net::IpAddr = match family {
            Family::Ipv4 => h2.container_ip.into(),
            Family::Ipv6 => h2.container_ip6.into(),
        };
        let (dur, bound, name) = (Duration::from_secs(self.secs), Duration::from_secs(self.secs + 30), &self.path.name);
        let scrape_all = || -> Result<Vec<Samples>> {
            self.cluster
                .topo
                .hosts
                .iter()
                .map(|h| scrape(&h.ns))
                .collect::<std::io::Result<_>>()
                .context("reading weft's /metrics")
        };
        let before = scrape_all()?;
        let cpu0 = CpuTimes::now()?;
        let mut rec = Record::new(name, &w.name(family), self.round);
        rec.family = family.label();
        let (sender, packets, ceiling) = match w {
            Workload::Tcp { streams } => {
                let (server, client) = (&h2.container_ns, &h1.container_ns);
                let r = tcp_bulk(server, dst, client, streams, Amount::Duration(dur), bound, Some(self.congestion))
                    .with_context(|| format!("{} over {name}\n{}", w.name(family), self.cluster.logs()))?;
                rec.duration_s = r.seconds;
                rec.throughput_gbit_s = Some(r.gbit_per_s());
                (r.sender, r.sender.wire_packets, None)
            }
            Workload::UdpSmall => {
                let r = udp_flood(&h2.container_ns, dst, &h1.container_ns, dur)
                    .with_context(|| format!("udp over {name}"))?;
                rec.duration_s = r.seconds;
                rec.offered_pps = Some(r.offered_pps());
                rec.delivered_pps = Some(r.delivered_pps());
                rec.loss = Some(r.loss());
                rec.damaged = Some(r.bad);
                (r.sender, r.sent, Some(r.offered_pps()))
            }
            Workload::RequestResponse => {
                let r = udp_ping_pong(&h2.container_ns, dst, &h1.container_ns, dur)
                    .with_context(|| format!("request/response over {name}"))?;
                rec.duration_s = self.secs as f64;
                rec.latency_p50_us = Some(r.p50_us);
                rec.latency_p99_us = Some(r.p99_us);
                rec.round_trips = Some(r.samples);
                rec.loss = Some(per(r.lost as f64, r.samples + r.lost));
                (r.sender, 2 * r.samples, None)
            }
        };
        let cpu = CpuTimes::now()?.since(&cpu0);
        let after = scrape_all()?;
        let (crossings, polls, fwd, machine, drops) = figures(&before, &after, cpu, packets)?;
        rec.wire_packets = packets;
        rec.crossings = crossings;
        rec.polls_per_packet = polls;
        rec.sender = SenderFigure {
            syscalls_per_packet: per(sender.syscalls as f64, sender.wire_packets.max(1)),
            user_ns_per_packet: per(sender.user_ns as f64, sender.wire_packets),
            system_ns_per_packet: per(sender.system_ns as f64, sender.wire_packets),
        };
        rec.forwarder = fwd;
        rec.machine = machine;
        rec.weft_drops = drops;
        rec.tun_queue_drops = tun_queue_drops(&before, &after);
        if let Some(ceiling) = ceiling {
            // After the figures above: the rate it carries with < 1 % loss, bisected below the
            // unpaced offer.
            let trial = if self.quick { Duration::from_millis(300) } else { Duration::from_secs(1) };
            let best =
                udp_lossless_rate(&h2.container_ns, dst, &h1.container_ns, ceiling, 0.01, trial, LOSSLESS_TRIALS)
                    .with_context(|| format!("paced udp over {name}"))?;
            rec.lossless_pps = best.map(|b| b.delivered_pps());
        }
        Ok(rec)
    }
}

/// Runs the lab.
pub fn run(opts: LabOptions) -> Result<()> {
    preflight(&opts)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone()).context("installing signal handlers")?;
    }
    // main() blocked them until a handler is in place; the processes the lab starts inherit
    // the mask, so it must be clear before the first one.
    crate::control::daemon::signals::unblock().context("unblocking SIGINT and SIGTERM")?;
    let bin = std::env::current_exe().context("locating the weft binary")?;
    let secs = if opts.quick { 1 } else { opts.seconds.max(1) };
    let workloads = workloads(&opts);
    let paths: Vec<DataPath> =
        data_paths().into_iter().filter(|d| opts.only.as_deref().is_none_or(|o| d.name.contains(o))).collect();
    let families = if opts.ipv6 { Families::Ipv6 } else { opts.family };
    if paths.is_empty() {
        bail!("--only {:?} matches no data path", opts.only.unwrap_or_default());
    }
    if workloads.is_empty() {
        bail!("--workload tcp-n needs --streams 2 or more");
    }
    if opts.svg.is_some() && !workloads.iter().any(|w| matches!(w, Workload::Tcp { streams: 1 })) {
        bail!("--svg charts the tcp-1 workload: add tcp-1 to --workload");
    }
    let mut report = Report::new(secs, opts.rounds, families.label(), &opts.congestion_control);
    eprintln!("lab: {}", report.machine());
    let rounds = (1..=opts.rounds).flat_map(|round| paths.iter().map(move |dp| (round, dp)));
    for (round, dp) in rounds {
        let mut extra = dp.extra.clone();
        // The lab's hosts have no firewall; the data path is measured without weft's forward
        // rules (a filter chain on the forward hook costs every forwarded packet a little).
        extra.extend(["--metrics-addr".to_string(), format!("127.0.0.1:{METRICS_PORT}")]);
        extra.push("--iptables-forward-rules=false".into());
        let spec = ClusterSpec {
            hosts: opts.hosts,
            extra_args: extra,
            etcd_endpoints: opts.etcd.then(|| format!("http://{LAB_ETCD_IP}:2379")),
            dual_stack: matches!(families, Families::Ipv6 | Families::Both),
            ipv6_only: families == Families::Ipv6Only,
            ..ClusterSpec::two_hosts("lab", dp.backend)
        };
        let (cluster, _etcd) = start_cluster(&bin, &spec, &dp.name)?;
        let trial =
            Trial { cluster: &cluster, path: dp, round, secs, quick: opts.quick, congestion: &opts.congestion_control };
        for (family, w) in families.list().iter().flat_map(|f| workloads.iter().map(move |w| (*f, *w))) {
            if interrupted.load(Ordering::Relaxed) {
                bail!("interrupted; everything the lab created has been removed");
            }
            let of = if opts.rounds > 1 { format!("round {round}/{}: ", opts.rounds) } else { String::new() };
            eprintln!("lab: {of}{:<18} {:<13} {secs} s ...", dp.name, w.name(family));
            report.records.push(trial.measure(w, family)?);
        }
    }
    report.compute_ratios();
    print!("{}", report.table());
    if let Some(p) = &opts.json {
        std::fs::write(p, report.json()?).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("lab: wrote {}", p.display());
    }
    if let Some(p) = &opts.svg {
        report.svg(p).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("lab: wrote {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_metric_is_an_error_not_a_zero() {
        let m = measure::parse_metrics("weft_polls_total 5\nweft_drops_total{reason=\"no_route\"} 2\n");
        let later = measure::parse_metrics("weft_polls_total 9\nweft_drops_total{reason=\"no_route\"} 3\n");
        let (m, later) = (std::slice::from_ref(&m), std::slice::from_ref(&later));
        assert_eq!(delta(m, later, name::POLLS, "").unwrap(), 4.0);
        assert_eq!(delta(m, later, name::DROPS, "reason=\"no_route\"").unwrap(), 1.0);
        let e = delta(m, later, name::CROSSING_PACKETS, "crossing=\"tun_read\"").unwrap_err().to_string();
        assert!(e.contains("weft_crossing_packets_total{crossing=\"tun_read\"}"), "{e}");
    }
}
