//! The lab's results: one record per data path × workload, printed as a table, written as JSON
//! (schema `weft-lab/1`, documented in README) and drawn as an SVG chart.

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
    /// `tcp-1`, `tcp-N`, `udp-64B`, `rr-64B`.
    pub workload: String,
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
    /// Headline figure divided by the kernel VXLAN one (throughput, delivered pps, or p50
    /// latency — for latency, above 1 is slower).
    pub ratio_to_kernel_vxlan: Option<f64>,
}

impl Record {
    /// An empty record.
    pub fn new(data_path: &str, workload: &str) -> Self {
        Self { data_path: data_path.into(), workload: workload.into(), ..Default::default() }
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
    /// Seconds per workload asked for.
    pub seconds: u64,
    /// The records.
    pub records: Vec<Record>,
}

impl Report {
    /// An empty report for this machine.
    pub fn new(seconds: u64) -> Self {
        let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self { schema: "weft-lab/1", kernel, cpus, seconds, records: Vec::new() }
    }

    /// Fills `ratio_to_kernel_vxlan` from the baseline's record of the same workload.
    pub fn compute_ratios(&mut self) {
        let base: Vec<(String, f64)> = self
            .records
            .iter()
            .filter(|r| r.data_path == BASELINE)
            .filter_map(|r| Some((r.workload.clone(), r.headline()?)))
            .collect();
        for r in &mut self.records {
            let b = base.iter().find(|(w, _)| *w == r.workload).map(|(_, v)| *v);
            r.ratio_to_kernel_vxlan = match (r.headline(), b) {
                (Some(v), Some(b)) if b > 0.0 => Some(v / b),
                _ => None,
            };
        }
    }

    /// The terminal table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "weft lab: Linux {}, {} CPUs, {} s per workload; ratios are to {BASELINE} in this run",
            self.kernel, self.cpus, self.seconds
        );
        let mut workloads: Vec<&str> = Vec::new();
        for r in &self.records {
            if !workloads.contains(&r.workload.as_str()) {
                workloads.push(&r.workload);
            }
        }
        for w in workloads {
            let _ = writeln!(out, "\n{w}");
            let _ = writeln!(
                out,
                "{:<22} {:>34} {:>7} | {:>23} | {:>23} | {:>6} | {:>9} | {:>9} | {:>10} | {:>6}",
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
            for r in self.records.iter().filter(|r| r.workload == w) {
                let c = |f: &dyn Fn(&CrossingFigure) -> f64| r.crossings.iter().map(f).collect::<Vec<f64>>();
                let sp = c(&|x| x.syscalls_per_packet);
                let ns = c(&|x| x.ns_per_packet);
                let four = |v: &[f64], p: usize| v.iter().map(|x| format!("{x:.p$}")).collect::<Vec<_>>().join(" ");
                let _ = writeln!(
                    out,
                    "{:<22} {:>34} {:>7} | {:>23} | {:>23} | {:>6.2} | {:>9.0} | {:>9.0} | {:>10.0} | {:>6.1}",
                    r.data_path,
                    r.headline_text(),
                    r.ratio_to_kernel_vxlan.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into()),
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

    /// Draws throughput (tcp-1) and forwarder syscalls per packet (sum of the four crossings,
    /// tcp-1) per data path, side by side.
    pub fn svg(&self, path: &Path) -> Result<()> {
        let rows: Vec<&Record> = self.records.iter().filter(|r| r.workload == "tcp-1").collect();
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
