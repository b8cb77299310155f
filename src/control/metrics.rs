//! `/metrics` (Prometheus text), `/healthz` and `/readyz` over a minimal HTTP/1.0 server on the
//! control runtime. The lab reads the per-crossing counters from here.

use crate::dataplane::counters::{CounterSet, Crossing, DropReason};
use crate::dataplane::peers::PeerTable;
use arc_swap::ArcSwap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The metric names, defined once: the daemon writes them, the lab and the tests read them.
pub mod name {
    /// Syscalls per crossing (label `crossing`).
    pub const CROSSING_SYSCALLS: &str = "weft_crossing_syscalls_total";
    /// Inner packets per crossing.
    pub const CROSSING_PACKETS: &str = "weft_crossing_packets_total";
    /// Bytes per crossing.
    pub const CROSSING_BYTES: &str = "weft_crossing_bytes_total";
    /// Time inside each crossing's syscalls.
    pub const CROSSING_SECONDS: &str = "weft_crossing_seconds_total";
    /// io_uring requests per crossing (the uring engine's).
    pub const CROSSING_REQUESTS: &str = "weft_crossing_ring_requests_total";
    /// Inner packets per worker and crossing (labels `worker`, `crossing`): how flows spread.
    pub const WORKER_PACKETS: &str = "weft_worker_packets_total";
    /// Packets not forwarded (label `reason`).
    pub const DROPS: &str = "weft_drops_total";
    /// ICMP net-unreachable messages written back.
    pub const ICMP_SENT: &str = "weft_icmp_sent_total";
    /// Packets dropped at a full TUN queue (userspace paths only).
    pub const TUN_QUEUE_DROPPED: &str = "weft_tun_queue_dropped_total";
    /// The engines' poll() calls.
    pub const POLLS: &str = "weft_polls_total";
    /// Peers in the data path's table.
    pub const PEERS: &str = "weft_peers";
    /// When the lease lapses unless renewed.
    pub const LEASE_EXPIRY: &str = "weft_lease_expiry_timestamp_seconds";
    /// 1 once forwarding (label `dataplane`).
    pub const READY: &str = "weft_ready";
    /// The process's CPU (label `mode`).
    pub const PROCESS_CPU: &str = "weft_process_cpu_seconds_total";
    /// The process's context switches (label `kind`).
    pub const PROCESS_CONTEXT_SWITCHES: &str = "weft_process_context_switches_total";
}

/// What the endpoint reports.
pub struct MetricsState {
    /// The engine workers' counters.
    pub counters: Arc<CounterSet>,
    /// The current peer table.
    pub peers: Arc<ArcSwap<PeerTable>>,
    /// Set once the host is set up and forwarding.
    pub ready: AtomicBool,
    /// Unix time at which our lease expires unless renewed.
    pub lease_expiry: AtomicU64,
    /// The data path's name (`userspace/naive`, `kernel`).
    pub dataplane: String,
    /// The userspace data path's TUN device, whose queue drops are reported (None: kernel path).
    pub tun: Option<String>,
}

/// Packets the kernel dropped at `tun`'s queue (its TX dropped count: it was full because weft
/// did not read in time), from sysfs of our network namespace. None if unreadable.
fn tun_queue_dropped(tun: &str) -> Option<u64> {
    let path = format!("/sys/class/net/{tun}/statistics/tx_dropped");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

fn secs(t: nix::sys::time::TimeVal) -> f64 {
    t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6
}

/// Each worker's packets per crossing.
fn worker_metrics(out: &mut String, counters: &CounterSet) {
    let mut samples = Vec::new();
    for (i, w) in counters.per_worker().enumerate() {
        for c in Crossing::ALL {
            samples.push((format!("worker=\"{i}\",crossing=\"{}\"", c.label()), w.packets(c) as f64));
        }
    }
    metric(out, name::WORKER_PACKETS, "counter", "Inner packets each worker moved on each crossing.", &samples);
}

/// Renders the Prometheus text.
pub fn render(state: &MetricsState) -> String {
    let s = state.counters.snapshot();
    let mut out = String::new();
    let per_crossing = |f: &dyn Fn(Crossing) -> f64| -> Vec<(String, f64)> {
        Crossing::ALL.iter().map(|c| (format!("crossing=\"{}\"", c.label()), f(*c))).collect()
    };
    metric(
        &mut out,
        name::CROSSING_SYSCALLS,
        "counter",
        "Syscalls made on each user/kernel crossing, including those that found nothing (EAGAIN).",
        &per_crossing(&|c| s.syscalls(c) as f64),
    );
    metric(
        &mut out,
        name::CROSSING_PACKETS,
        "counter",
        "Inner packets moved on each crossing.",
        &per_crossing(&|c| s.packets(c) as f64),
    );
    metric(
        &mut out,
        name::CROSSING_BYTES,
        "counter",
        "Bytes moved on each crossing.",
        &per_crossing(&|c| s.bytes(c) as f64),
    );
    metric(
        &mut out,
        name::CROSSING_SECONDS,
        "counter",
        "Wall-clock time spent inside the syscalls of each crossing.",
        &per_crossing(&|c| s.nanos(c) as f64 / 1e9),
    );
    metric(
        &mut out,
        name::CROSSING_REQUESTS,
        "counter",
        "io_uring requests completed on each crossing (uring engine: reads, receives, sends, writes).",
        &per_crossing(&|c| s.requests(c) as f64),
    );
    worker_metrics(&mut out, &state.counters);
    let drops: Vec<(String, f64)> =
        DropReason::ALL.iter().map(|r| (format!("reason=\"{}\"", r.label()), s.drops(*r) as f64)).collect();
    metric(&mut out, name::DROPS, "counter", "Packets not forwarded, by reason.", &drops);
    metric(
        &mut out,
        name::ICMP_SENT,
        "counter",
        "ICMP net-unreachable messages written back into the TUN.",
        &[(String::new(), s.icmp_sent as f64)],
    );
    if let Some(dropped) = state.tun.as_deref().and_then(tun_queue_dropped) {
        metric(
            &mut out,
            name::TUN_QUEUE_DROPPED,
            "counter",
            "Packets the kernel dropped because the TUN's queue was full (see --tun-queue-len).",
            &[(String::new(), dropped as f64)],
        );
    }
    metric(&mut out, name::POLLS, "counter", "poll() calls of the engine.", &[(String::new(), s.polls as f64)]);
    metric(
        &mut out,
        name::PEERS,
        "gauge",
        "Peers in the data path's table.",
        &[(String::new(), state.peers.load().len() as f64)],
    );
    metric(
        &mut out,
        name::LEASE_EXPIRY,
        "gauge",
        "When our lease lapses unless renewed.",
        &[(String::new(), state.lease_expiry.load(Ordering::Relaxed) as f64)],
    );
    metric(
        &mut out,
        name::READY,
        "gauge",
        "1 once the host is set up and forwarding.",
        &[(format!("dataplane=\"{}\"", state.dataplane), f64::from(u8::from(state.ready.load(Ordering::Relaxed))))],
    );
    if let Ok(ru) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        metric(
            &mut out,
            name::PROCESS_CPU,
            "counter",
            "CPU time of the weft process.",
            &[("mode=\"user\"".into(), secs(ru.user_time())), ("mode=\"system\"".into(), secs(ru.system_time()))],
        );
        metric(
            &mut out,
            name::PROCESS_CONTEXT_SWITCHES,
            "counter",
            "Context switches of the weft process.",
            &[
                ("kind=\"voluntary\"".into(), ru.voluntary_context_switches() as f64),
                ("kind=\"involuntary\"".into(), ru.involuntary_context_switches() as f64),
            ],
        );
    }
    out
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Answers one request line; /metrics only `with_metrics`.
pub fn answer(state: &MetricsState, request_line: &str, with_metrics: bool) -> String {
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return response("405 Method Not Allowed", "text/plain", "only GET\n");
    }
    match path {
        "/metrics" if with_metrics => response("200 OK", "text/plain; version=0.0.4", &render(state)),
        "/healthz" => response("200 OK", "text/plain", "ok\n"),
        "/readyz" if state.ready.load(Ordering::Relaxed) => response("200 OK", "text/plain", "ready\n"),
        "/readyz" => response("503 Service Unavailable", "text/plain", "not ready\n"),
        _ if with_metrics => response("404 Not Found", "text/plain", "try /metrics, /healthz or /readyz\n"),
        _ => response("404 Not Found", "text/plain", "try /healthz or /readyz (/metrics is on --metrics-addr)\n"),
    }
}

/// A bound health (and maybe metrics) listener.
pub struct Endpoint {
    /// The listener.
    pub listener: TcpListener,
    /// Whether it serves /metrics too (`--metrics-addr`), or only /healthz and /readyz
    /// (`--healthz-port`, as flanneld).
    pub with_metrics: bool,
}

/// Binds `addr` (so that a bad address fails at start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until the runtime stops. Each connection gets 2 s and 8 KiB for its request.
pub async fn serve(endpoint: Endpoint, state: Arc<MetricsState>) {
    let Endpoint { listener, with_metrics } = endpoint;
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut used = 0;
            let read = tokio::time::timeout(Duration::from_secs(2), async {
                while used < buf.len() {
                    let n = conn.read(&mut buf[used..]).await?;
                    if n == 0 {
                        break;
                    }
                    used += n;
                    if buf[..used].windows(4).any(|w| w == b"\r\n\r\n") || buf[..used].contains(&b'\n') {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let text = String::from_utf8_lossy(&buf[..used]);
            let line = text.lines().next().unwrap_or("");
            let _ = conn.write_all(answer(&state, line, with_metrics).as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> MetricsState {
        MetricsState {
            counters: Arc::default(),
            peers: Arc::new(ArcSwap::from_pointee(PeerTable::default())),
            ready: AtomicBool::new(false),
            lease_expiry: AtomicU64::new(7),
            dataplane: "userspace/naive".into(),
            tun: Some("lo".into()),
        }
    }

    #[test]
    fn endpoints() {
        let s = state();
        s.counters.worker(0).syscall(Crossing::TunRead, 1, 100, 2_000);
        s.counters.worker(0).count_drop(DropReason::WrongVni);
        let answer = |s: &MetricsState, line: &str| answer(s, line, true);
        assert!(answer(&s, "GET /healthz HTTP/1.1").starts_with("HTTP/1.0 200"));
        assert!(answer(&s, "GET /readyz HTTP/1.1").starts_with("HTTP/1.0 503"));
        s.ready.store(true, Ordering::Relaxed);
        assert!(answer(&s, "GET /readyz HTTP/1.1").starts_with("HTTP/1.0 200"));
        assert!(answer(&s, "GET /nope HTTP/1.1").starts_with("HTTP/1.0 404"));
        assert!(answer(&s, "POST /metrics HTTP/1.1").starts_with("HTTP/1.0 405"));
        assert!(answer(&s, "").starts_with("HTTP/1.0 405"));
        // flanneld's --healthz-port serves health only.
        assert!(super::answer(&s, "GET /metrics HTTP/1.1", false).starts_with("HTTP/1.0 404"));
        assert!(super::answer(&s, "GET /readyz HTTP/1.1", false).starts_with("HTTP/1.0 200"));
        let m = answer(&s, "GET /metrics HTTP/1.1");
        assert!(m.contains("weft_crossing_syscalls_total{crossing=\"tun_read\"} 1\n"), "{m}");
        assert!(m.contains("weft_crossing_seconds_total{crossing=\"tun_read\"} 0.000002\n"), "{m}");
        assert!(m.contains("weft_drops_total{reason=\"wrong_vni\"} 1\n"), "{m}");
        assert!(m.contains("weft_lease_expiry_timestamp_seconds 7\n"), "{m}");
        assert!(m.contains("weft_process_cpu_seconds_total{mode=\"user\"}"), "{m}");
        // Every namespace has lo, so its queue drops stand in for the TUN's.
        assert!(m.contains("\nweft_tun_queue_dropped_total "), "{m}");
        let gone = MetricsState { tun: Some("weft-no-such-dev".into()), ..state() };
        assert!(!answer(&gone, "GET /metrics HTTP/1.1").contains("weft_tun_queue_dropped_total"));
    }
}
