//! The lab's results: one record per data path × workload, printed as a table, written as JSON
//! (schema `weft-lab/1`, documented in docs/lab-json.md) and drawn as an SVG chart.

use anyhow::Result;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

/// The data path every ratio is taken against.
pub const BASELINE: &str = "vxlan (kernel)";

/// One crossing's figures (summed over both hosts' forwarders).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CrossingFigure {
    /// `tun_read`, `udp_send`, `udp_recv`, `tun_write`.
    pub crossing: String,
    /// Syscalls made (including those that found nothing).
    pub syscalls: u64,
    /// Packets moved.
    pub packets: u64,
    /// Syscalls per packet moved.
    pub syscalls_per_packet: f64,
    /// Packets per syscall.
    pub packets_per_syscall: f64,
    /// Wall-clock ns inside the crossing's syscalls per packet.
    pub ns_per_packet: f64,
}

/// The sending container process (crossing 1), per wire packet it sent.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SenderFigure {
    /// send/write/sendmmsg calls per wire packet.
    pub syscalls_per_packet: f64,
    /// User CPU ns per wire packet.
    pub user_ns_per_packet: f64,
    /// System CPU ns per wire packet.
    pub system_ns_per_packet: f64,
}

/// The forwarder processes (both hosts), per workload packet.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProcessFigure {
    /// User CPU ns per packet.
    pub user_ns_per_packet: f64,
    /// System CPU ns per packet.
    pub system_ns_per_packet: f64,
    /// Voluntary context switches per 1 000 packets.
    pub voluntary_cs_per_1000_packets: f64,
    /// Involuntary context switches per 1 000 packets.
    pub involuntary_cs_per_1000_packets: f64,
}

/// The whole machine (/proc/stat), per workload packet.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MachineFigure {
    /// user + nice ns per packet.
    pub user_ns_per_packet: f64,
    /// system ns per packet.
    pub system_ns_per_packet: f64,
    /// softirq + irq ns per packet (where kernel forwarding runs).
    pub softirq_ns_per_packet: f64,
}

/// One data path × workload.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Record {
    /// Data path name.
    pub data_path: String,
    /// Which round of the run measured it (1-based; see `weft lab --rounds`).
    pub round: u32,
    /// `tcp-1`, `tcp-N`, `udp-64B`, `rr-64B`; over IPv6 with `/ipv6` after it.
    pub workload: String,
    /// The overlay family the workload ran over: `ipv4` or `ipv6`.
    pub family: &'static str,
    /// Seconds measured.
    pub duration_s: f64,
    /// TCP: verified goodput.
    pub throughput_gbit_s: Option<f64>,
    /// UDP: datagrams/s the sender got into its kernel.
    pub offered_pps: Option<f64>,
    /// UDP: distinct intact datagrams/s received.
    pub delivered_pps: Option<f64>,
    /// UDP / request-response: fraction lost.
    pub loss: Option<f64>,
    /// UDP: the highest paced rate found to lose < 1 % (datagrams/s delivered), the headline
    /// figure of `udp-64B`.
    pub lossless_pps: Option<f64>,
    /// UDP: datagrams received damaged or twice.
    pub damaged: Option<u64>,
    /// Request/response: median round trip, µs.
    pub latency_p50_us: Option<f64>,
    /// Request/response: 99th percentile, µs.
    pub latency_p99_us: Option<f64>,
    /// Request/response: round trips measured.
    pub round_trips: Option<u64>,
    /// The packets every "per packet" figure divides by: TCP segments or datagrams the sender
    /// put on the wire (request/response: 2 per round trip).
    pub wire_packets: u64,
    /// Crossings 2 and 3 (and their mirrors), summed over both hosts.
    pub crossings: Vec<CrossingFigure>,
    /// Forwarder poll() calls per packet.
    pub polls_per_packet: f64,
    /// Crossing 1: the sender.
    pub sender: SenderFigure,
    /// The forwarders' CPU.
    pub forwarder: ProcessFigure,
    /// Whole-machine CPU.
    pub machine: MachineFigure,
    /// Packets weft dropped (any reason) during the workload.
    pub weft_drops: u64,
    /// Packets the kernel dropped at the TUN queues during the workload (full: weft did not
    /// read them in time). Where an unpaced small-datagram flood loses most of what it loses.
    pub tun_queue_drops: u64,
    /// Headline figure divided by the kernel VXLAN one of the same round (throughput, delivered
    /// pps, or p50 latency — for latency, above 1 is slower).
    pub ratio_to_kernel_vxlan: Option<f64>,
}

impl Record {
    /// An empty record.
    pub fn new(data_path: &str, workload: &str, round: u32) -> Self {
        Self { data_path: data_path.into(), workload: workload.into(), round, family: "ipv4", ..Default::default() }
    }

    /// What the median is taken of: the ratio where the baseline ran, else (and for the
    /// baseline itself, always 1) the headline.
    fn rank(&self) -> f64 {
        let ratio = self.ratio_to_kernel_vxlan.filter(|_| self.data_path != BASELINE);
        ratio.or_else(|| self.headline()).unwrap_or(0.0)
    }

    /// The workload's headline figure.
    pub fn headline(&self) -> Option<f64> {
        self.throughput_gbit_s.or(self.lossless_pps).or(self.delivered_pps).or(self.latency_p50_us)
    }

    fn headline_text(&self) -> String {
        if let Some(g) = self.throughput_gbit_s {
            format!("{g:.3} Gbit/s")
        } else if let (Some(d), Some(l)) = (self.delivered_pps, self.loss) {
            let ok = self.lossless_pps.map(|x| format!("{:.0}", x / 1e3)).unwrap_or_else(|| "-".into());
            format!("{ok} kpps <1% (max {:.0}, {:.0}% loss)", d / 1e3, l * 100.0)
        } else if let (Some(p50), Some(p99)) = (self.latency_p50_us, self.latency_p99_us) {
            format!("p50 {p50:.0} µs, p99 {p99:.0} µs")
        } else {
            "-".into()
        }
    }
}

/// All records of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// `weft-lab/1`.
    pub schema: &'static str,
    /// `uname -r`.
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    /// The CPU's model name (`/proc/cpuinfo`): machines of one kind differ, and the ratios
    /// with them.
    pub cpu_model: String,
    /// Seconds per workload asked for.
    pub seconds: u64,
    /// Rounds: every data path ran every workload once per round, the paths in turn, so that
    /// a slow drift of the machine touches every path alike.
    pub rounds: u32,
    /// The overlay families the run measured: `ipv4`, `ipv6`, `both` or `ipv6-only` (`--family`).
    pub family: &'static str,
    /// The TCP workloads' congestion control (`--congestion-control`).
    pub tcp_congestion_control: String,
    /// The records, every round's.
    pub records: Vec<Record>,
}

/// One data path × workload over all rounds: the round with the median ratio (or headline),
/// and the range of ratios.
pub struct Summary<'a> {
    /// The median round's record.
    pub median: &'a Record,
    /// Lowest and highest ratio to kernel VXLAN over the rounds.
    pub ratio_range: Option<(f64, f64)>,
}

impl Report {
    /// An empty report for this machine.
    pub fn new(seconds: u64, rounds: u32, family: &'static str, tcp_congestion_control: &str) -> Self {
        let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| Some(l.strip_prefix("model name")?.split_once(':')?.1.trim().to_string()))
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let tcp_congestion_control = tcp_congestion_control.to_string();
        Self {
            schema: "weft-lab/1",
            kernel,
            cpus,
            cpu_model,
            seconds,
            rounds,
            family,
            tcp_congestion_control,
            records: Vec::new(),
        }
    }

    /// `IPv4`, `IPv6` or `IPv4 and IPv6`, as the table's first line names the families.
    fn family_name(&self) -> &'static str {
        match self.family {
            "ipv6" => "IPv6",
            "ipv6-only" => "IPv6-only",
            "both" => "IPv4 and IPv6",
            _ => "IPv4",
        }
    }

    /// The machine, as the table's first line names it.
    pub fn machine(&self) -> String {
        format!("Linux {}, {} CPUs ({})", self.kernel, self.cpus, self.cpu_model)
    }

    /// Fills `ratio_to_kernel_vxlan` from the baseline's record of the same workload and round.
    pub fn compute_ratios(&mut self) {
        let base: Vec<(String, u32, f64)> = self
            .records
            .iter()
            .filter(|r| r.data_path == BASELINE)
            .filter_map(|r| Some((r.workload.clone(), r.round, r.headline()?)))
            .collect();
        for r in &mut self.records {
            let b = base.iter().find(|(w, round, _)| *w == r.workload && *round == r.round).map(|(_, _, v)| *v);
            r.ratio_to_kernel_vxlan = match (r.headline(), b) {
                (Some(v), Some(b)) if b > 0.0 => Some(v / b),
                _ => None,
            };
        }
    }

    /// One [`Summary`] per data path × workload, in the order they first ran. With one round,
    /// every record is its own median.
    pub fn summaries(&self) -> Vec<Summary<'_>> {
        let mut keys: Vec<(&str, &str)> = Vec::new();
        for r in &self.records {
            if !keys.contains(&(r.data_path.as_str(), r.workload.as_str())) {
                keys.push((&r.data_path, &r.workload));
            }
        }
        keys.into_iter()
            .filter_map(|(path, workload)| {
                let mut rounds: Vec<&Record> =
                    self.records.iter().filter(|r| r.data_path == path && r.workload == workload).collect();
                rounds.sort_by(|a, b| a.rank().total_cmp(&b.rank()));
                let ratios: Vec<f64> = rounds.iter().filter_map(|r| r.ratio_to_kernel_vxlan).collect();
                let ratio_range = ratios.first().zip(ratios.last()).map(|(lo, hi)| (*lo, *hi));
                // The lower middle for an even count: no figure that was not measured.
                let median = *rounds.get(rounds.len().saturating_sub(1) / 2)?;
                Some(Summary { median, ratio_range })
            })
            .collect()
    }

    /// The terminal table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = if self.rounds > 1 {
            writeln!(
                out,
                "weft lab: {}, {} overlay, TCP {}, {} s per workload, {} rounds (every data path in turn in each round)\n\
                 each row: the round with the median ratio to {BASELINE} of the same round; (lowest-highest) ratio over the rounds",
                self.machine(),
                self.family_name(),
                self.tcp_congestion_control,
                self.seconds,
                self.rounds
            )
        } else {
            writeln!(
                out,
                "weft lab: {}, {} overlay, TCP {}, {} s per workload; ratios are to {BASELINE} in this run",
                self.machine(),
                self.family_name(),
                self.tcp_congestion_control,
                self.seconds
            )
        };
        let summaries = self.summaries();
        let mut workloads: Vec<&str> = Vec::new();
        for s in &summaries {
            if !workloads.contains(&s.median.workload.as_str()) {
                workloads.push(&s.median.workload);
            }
        }
        let ratio_w = if self.rounds > 1 { 19 } else { 7 };
        let name_w = summaries.iter().map(|s| s.median.data_path.len()).max().unwrap_or(0).max(22);
        for w in workloads {
            let _ = writeln!(out, "\n{w}");
            let _ = writeln!(
                out,
                "{:<name_w$} {:>34} {:>ratio_w$} | {:>23} | {:>23} | {:>6} | {:>9} | {:>9} | {:>10} | {:>6}",
                "data path",
                "result",
                "ratio",
                "syscalls/pkt rd tx rx wr",
                "ns/pkt rd tx rx wr",
                "poll/p",
                "sender sy",
                "fwd cpu",
                "machine",
                "cs/1k"
            );
            for s in summaries.iter().filter(|s| s.median.workload == w) {
                let r = s.median;
                let ratio = match (r.ratio_to_kernel_vxlan, s.ratio_range) {
                    (Some(x), Some((lo, hi))) if self.rounds > 1 => format!("{x:.3} ({lo:.2}-{hi:.2})"),
                    (Some(x), _) => format!("{x:.3}"),
                    (None, _) => "-".into(),
                };
                let c = |f: &dyn Fn(&CrossingFigure) -> f64| r.crossings.iter().map(f).collect::<Vec<f64>>();
                let sp = c(&|x| x.syscalls_per_packet);
                let ns = c(&|x| x.ns_per_packet);
                let four = |v: &[f64], p: usize| v.iter().map(|x| format!("{x:.p$}")).collect::<Vec<_>>().join(" ");
                let _ = writeln!(
                    out,
                    "{:<name_w$} {:>34} {ratio:>ratio_w$} | {:>23} | {:>23} | {:>6.2} | {:>9.0} | {:>9.0} | {:>10.0} | {:>6.1}",
                    r.data_path,
                    r.headline_text(),
                    four(&sp, 2),
                    four(&ns, 0),
                    r.polls_per_packet,
                    r.sender.system_ns_per_packet,
                    r.forwarder.user_ns_per_packet + r.forwarder.system_ns_per_packet,
                    r.machine.user_ns_per_packet + r.machine.system_ns_per_packet + r.machine.softirq_ns_per_packet,
                    r.forwarder.voluntary_cs_per_1000_packets + r.forwarder.involuntary_cs_per_1000_packets,
                );
            }
        }
        let _ = writeln!(
            out,
            "\ncolumns: syscalls/pkt and ns/pkt per forwarder crossing (rd = TUN read, tx = UDP send, rx = UDP receive, wr = TUN write; both hosts),\n         poll/p = forwarder poll() per packet, sender sy = the sending container's system ns per wire packet (crossing 1),\n         fwd cpu = both forwarders' user+system ns per packet, machine = whole-machine user+system+softirq ns per packet,\n         cs/1k = forwarder context switches per 1000 packets"
        );
        out
    }

    /// The JSON document.
    pub fn json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// The workload the chart draws: `tcp-1`, or `tcp-1/ipv6` in an IPv6-only run.
    fn chart_workload(&self) -> &'static str {
        if matches!(self.family, "ipv6" | "ipv6-only") { "tcp-1/ipv6" } else { "tcp-1" }
    }

    /// Draws throughput (tcp-1) and forwarder syscalls per packet (sum of the four crossings,
    /// tcp-1) per data path, side by side (each path's median round).
    pub fn svg(&self, path: &Path) -> Result<()> {
        let rows: Vec<&Record> =
            self.summaries().into_iter().map(|s| s.median).filter(|r| r.workload == self.chart_workload()).collect();
        // Short labels so that a dozen bars fit: "weft vxlan offload" → "vxlan offload".
        let names: Vec<String> =
            rows.iter().map(|r| r.data_path.trim_start_matches("weft ").replace(" (kernel)", " (k)")).collect();
        let gbps: Vec<f64> = rows.iter().map(|r| r.throughput_gbit_s.unwrap_or(0.0)).collect();
        let sys: Vec<f64> = rows
            .iter()
            .map(|r| r.crossings.iter().map(|c| c.syscalls_per_packet).sum::<f64>() + r.polls_per_packet)
            .collect();
        let width = u32::try_from(260 + 175 * rows.len()).unwrap_or(1600).clamp(800, 2800);
        let root = SVGBackend::new(path, (width, 440)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(width / 2);
        let n = rows.len().max(1);
        let bars = |area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
                    title: &str,
                    ylabel: &str,
                    vals: &[f64],
                    color: RGBColor|
         -> Result<()> {
            let top = vals.iter().cloned().fold(0.0f64, f64::max).max(0.1) * 1.15;
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(70)
                .y_label_area_size(55)
                .build_cartesian_2d((0..n).into_segmented(), 0.0..top)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .y_desc(ylabel)
                .x_labels(n)
                .x_label_formatter(&|x| match x {
                    SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                    _ => String::new(),
                })
                .x_label_style(("sans-serif", 11))
                .draw()?;
            chart.draw_series(vals.iter().enumerate().map(|(i, v)| {
                let mut r =
                    Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), *v)], color.filled());
                r.set_margin(0, 0, 12, 12);
                r
            }))?;
            chart.draw_series(
                vals.iter()
                    .enumerate()
                    .map(|(i, v)| Text::new(format!("{v:.2}"), (SegmentValue::CenterOf(i), *v), ("sans-serif", 12))),
            )?;
            Ok(())
        };
        bars(&left, "TCP, 1 stream: Gbit/s", "Gbit/s", &gbps, RGBColor(60, 110, 180))?;
        bars(
            &right,
            "Forwarder syscalls per packet, end to end (tcp-1)",
            "4 crossings + poll() / packet",
            &sys,
            RGBColor(200, 90, 60),
        )?;
        root.present()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(path: &str, round: u32, gbit: f64) -> Record {
        Record { throughput_gbit_s: Some(gbit), ..Record::new(path, "tcp-1", round) }
    }

    #[test]
    fn ratios_are_per_round_and_the_table_shows_the_median_round() {
        let mut rep = Report::new(5, 3, "ipv4", "cubic");
        // The machine is faster in round 1: a ratio must use its own round's baseline.
        for (round, kernel, weft) in [(1, 20.0, 10.0), (2, 10.0, 6.0), (3, 10.0, 4.0)] {
            rep.records.push(tcp(BASELINE, round, kernel));
            rep.records.push(tcp("weft vxlan offload", round, weft));
        }
        rep.compute_ratios();
        let ratios: Vec<f64> =
            rep.records.iter().filter(|r| r.data_path != BASELINE).map(|r| r.ratio_to_kernel_vxlan.unwrap()).collect();
        assert_eq!(ratios, [0.5, 0.6, 0.4]);
        let s = rep.summaries();
        assert_eq!(s.len(), 2);
        // The baseline's own median is by its headline: 10, 10, 20 → 10.
        assert_eq!((s[0].median.data_path.as_str(), s[0].ratio_range), (BASELINE, Some((1.0, 1.0))));
        assert_eq!(s[0].median.throughput_gbit_s, Some(10.0));
        assert_eq!((s[1].median.round, s[1].ratio_range), (1, Some((0.4, 0.6))));
        let table = rep.table();
        assert!(table.contains("3 rounds"), "{table}");
        let row = table.lines().find(|l| l.starts_with("weft vxlan offload")).unwrap();
        assert!(row.contains("10.000 Gbit/s") && row.contains("0.500 (0.40-0.60)"), "{row}");
    }

    #[test]
    fn even_rounds_show_a_measured_round_and_one_round_shows_no_range() {
        let mut rep = Report::new(5, 2, "ipv6", "cubic");
        for (round, weft) in [(1, 3.0), (2, 7.0)] {
            rep.records.push(tcp(BASELINE, round, 10.0));
            rep.records.push(tcp("weft udp offload", round, weft));
        }
        rep.compute_ratios();
        assert_eq!(rep.summaries()[1].median.throughput_gbit_s, Some(3.0));
        assert!(rep.table().lines().next().unwrap().contains("IPv6 overlay"), "{}", rep.table());
        assert!(rep.json().unwrap().contains(r#""family": "ipv6""#), "{}", rep.json().unwrap());

        let mut one = Report::new(5, 1, "ipv4", "cubic");
        one.records.push(tcp(BASELINE, 1, 10.0));
        one.records.push(tcp("weft udp naive", 1, 1.0));
        one.compute_ratios();
        let table = one.table();
        assert!(table.contains("ratios are to vxlan (kernel) in this run"), "{table}");
        assert!(table.contains("IPv4 overlay"), "{table}");
        let row = table.lines().find(|l| l.starts_with("weft udp naive")).unwrap();
        assert!(row.contains(" 0.100 |") && !row.contains('('), "{row}");
    }
}
