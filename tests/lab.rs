//! `weft lab --quick --json --svg`: runs as root, covers every data path and workload, proves its
//! counters honest, and leaves nothing behind.

mod common;

use std::process::Command;

#[test]
fn quick_lab_reports_every_path_and_honest_counters() {
    common::require_privileges();
    let d = tempfile::tempdir().unwrap();
    let (json, svg) = (d.path().join("out.json"), d.path().join("out.svg"));
    let child = Command::new(common::bin())
        .args(["lab", "--quick", "--streams", "2", "--json"])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ratios are to vxlan (kernel)"), "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["schema"], "weft-lab/1");
    assert!(doc["cpus"].as_u64().unwrap() >= 1);
    // The machine is recorded beside the figures, and named in the table's first line.
    let model = doc["cpu_model"].as_str().unwrap();
    assert!(!model.is_empty() && model != "unknown CPU", "{model}");
    assert!(stdout.lines().next().unwrap().contains(model), "{stdout}");
    // The TCP workloads run Linux's default congestion control, whatever the machine's is.
    assert_eq!(doc["tcp_congestion_control"], "cubic");
    assert!(stdout.lines().next().unwrap().contains("TCP cubic"), "{stdout}");
    let records = doc["records"].as_array().unwrap();
    let paths = [
        "host-gw (kernel)",
        "vxlan (kernel)",
        "weft udp naive",
        "weft vxlan naive",
        "weft udp batched",
        "weft vxlan batched",
        "weft udp offload",
        "weft vxlan offload",
        "weft udp uring",
        "weft vxlan uring",
    ];
    let workloads = ["tcp-1", "tcp-2", "udp-64B", "rr-64B"];
    for p in paths {
        for w in workloads {
            let r = records
                .iter()
                .find(|r| r["data_path"] == p && r["workload"] == w)
                .unwrap_or_else(|| panic!("no record for {p} × {w}"));
            assert!(r["wire_packets"].as_u64().unwrap() > 0, "{p} {w}: no packets");
            let crossings = r["crossings"].as_array().unwrap();
            assert_eq!(crossings.len(), 4);
            if p.contains("kernel") {
                for c in crossings {
                    assert_eq!(c["syscalls"], 0, "{p} {w}: a kernel path made forwarder syscalls: {c}");
                }
            } else if w.starts_with("tcp") {
                let spp = |name: &str| {
                    crossings.iter().find(|c| c["crossing"] == name).unwrap()["syscalls_per_packet"].as_f64().unwrap()
                };
                // The uring engine's sends and writes ride on the enters of its reads and
                // receives: packets, but no syscalls of their own.
                let rides = |c: &serde_json::Value| {
                    p.ends_with("uring") && (c["crossing"] == "udp_send" || c["crossing"] == "tun_write")
                };
                for c in crossings {
                    assert!(c["packets"].as_u64().unwrap() > 0, "{p} {w}: {c}");
                    let (calls, ns) = (c["syscalls"].as_u64().unwrap(), c["ns_per_packet"].as_f64().unwrap());
                    assert!(if rides(c) { calls == 0 && ns == 0.0 } else { ns > 0.0 }, "{p} {w}: {c}");
                }
                if p.ends_with("naive") {
                    for c in crossings {
                        let v = c["syscalls_per_packet"].as_f64().unwrap();
                        assert!((0.95..=1.05).contains(&v), "{p} {w}: {v} syscalls per packet on {}", c["crossing"]);
                    }
                } else if p.ends_with("batched") {
                    assert!(
                        spp("udp_send") < 0.5 && spp("udp_recv") < 0.5,
                        "{p} {w}: batching did not batch: {crossings:?}"
                    );
                } else {
                    for c in ["tun_read", "udp_send", "udp_recv", "tun_write"] {
                        assert!(spp(c) < 0.5, "{p} {w}: {c} was not cut: {crossings:?}");
                    }
                }
                assert!(r["forwarder"]["system_ns_per_packet"].as_f64().unwrap() > 0.0);
            }
            match w {
                "udp-64B" => assert!(r["delivered_pps"].as_f64().unwrap() > 0.0 && r["damaged"] == 0, "{r}"),
                "rr-64B" => assert!(r["latency_p50_us"].as_f64().unwrap() > 0.0, "{r}"),
                _ => assert!(r["throughput_gbit_s"].as_f64().unwrap() > 0.0, "{r}"),
            }
        }
    }
    // TUN queue drops: none on a kernel path (no TUN), never more than the flood lost, and seen
    // where a forwarder lost much of an unpaced flood (that is where such loss happens).
    let mut heavy_loss = false;
    let mut queue_drops = 0;
    for r in records.iter().filter(|r| r["workload"] == "udp-64B") {
        let q = r["tun_queue_drops"].as_u64().unwrap();
        let secs = r["duration_s"].as_f64().unwrap();
        let lost = (r["offered_pps"].as_f64().unwrap() - r["delivered_pps"].as_f64().unwrap()) * secs;
        if r["data_path"].as_str().unwrap().contains("kernel") {
            assert_eq!(q, 0, "{r}");
        } else {
            assert!(q as f64 <= lost + 2.0, "more TUN queue drops than datagrams lost: {r}");
            heavy_loss |= r["loss"].as_f64().unwrap() > 0.2;
            queue_drops += q;
        }
    }
    assert!(!heavy_loss || queue_drops > 0, "floods lost > 20 % but no TUN queue drop was counted");
    let kvx = records.iter().find(|r| r["data_path"] == "vxlan (kernel)" && r["workload"] == "tcp-1").unwrap();
    assert!((kvx["ratio_to_kernel_vxlan"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(
        chart.starts_with("<svg") && chart.contains("udp naive") && chart.contains("vxlan offload"),
        "{}",
        &chart[..chart.len().min(200)]
    );
    let left = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    assert!(
        !left.lines().any(|l| l.starts_with(&format!("weft-lab-{pid}-"))),
        "the lab left namespaces behind:\n{left}"
    );
}

#[test]
fn ctrl_c_removes_everything() {
    common::require_privileges();
    let mut child = Command::new(common::bin())
        .args(["lab", "--quick"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let prefix = format!("weft-lab-{pid}-");
    let ours = || {
        String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .count()
    };
    assert!(
        common::eventually(std::time::Duration::from_secs(20), || ours() > 0),
        "the lab never built its namespaces"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "lab did not stop on SIGINT");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "an interrupted lab reports failure");
    assert!(err.contains("interrupted"), "{err}");
    // The lab stops each weft (SIGTERM, then SIGKILL) before it deletes that host's namespace.
    assert_eq!(ours(), 0, "namespaces left behind");
}

/// Runs `weft lab --quick ARGS --json FILE` to success; returns its table and its JSON.
fn quick_lab(args: &[&str]) -> (String, serde_json::Value) {
    common::require_privileges();
    let d = tempfile::tempdir().unwrap();
    let json = d.path().join("out.json");
    let out =
        Command::new(common::bin()).args(["lab", "--quick"]).args(args).arg("--json").arg(&json).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    (stdout, serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap())
}

#[test]
fn lab_runs_against_a_real_etcd() {
    let (_, doc) = quick_lab(&["--etcd", "--only", "udp naive", "--streams", "1"]);
    let records = doc["records"].as_array().unwrap();
    assert_eq!(records.len(), 3, "tcp-1, udp-64B, rr-64B for one data path");
    let tcp = records.iter().find(|r| r["workload"] == "tcp-1").unwrap();
    assert_eq!(tcp["data_path"], "weft udp naive");
    assert!(tcp["throughput_gbit_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn rounds_take_the_paths_in_turn_and_the_table_shows_the_median_round() {
    let (stdout, doc) = quick_lab(&["--streams", "1", "--rounds", "2", "--only", "kernel"]);
    assert!(stdout.contains("2 rounds"), "{stdout}");
    assert_eq!(doc["rounds"], 2);
    let records = doc["records"].as_array().unwrap();
    let order: Vec<(u64, &str)> =
        records.iter().map(|r| (r["round"].as_u64().unwrap(), r["data_path"].as_str().unwrap())).collect();
    // Round 1 for every path, then round 2 for every path, each path with all three workloads.
    let expected: Vec<(u64, &str)> = [1, 2]
        .into_iter()
        .flat_map(|round| ["host-gw (kernel)", "vxlan (kernel)"].map(|p| (round, p)))
        .flat_map(|k| [k; 3])
        .collect();
    assert_eq!(order, expected);
    for r in records.iter().filter(|r| r["data_path"] == "vxlan (kernel)") {
        assert!((r["ratio_to_kernel_vxlan"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{r}");
    }
    let row = stdout.lines().find(|l| l.starts_with("host-gw (kernel)")).unwrap();
    assert!(row.contains('(') && row.contains(')'), "no ratio range over the rounds: {row}");
}

/// `--family both`: one dual-stack network per data path, every workload over IPv4 and then
/// over IPv6, each family's ratios taken against the kernel VXLAN figure of the same family.
/// `--ipv6` alone gives the IPv6 rows only, and `--only` picks paths by name.
#[test]
fn both_families_run_on_one_dual_stack_network() {
    let (stdout, doc) = quick_lab(&["--streams", "1", "--family", "both", "--only", "vxlan (kernel)"]);
    assert!(stdout.lines().next().unwrap().contains("IPv4 and IPv6 overlay"), "{stdout}");
    assert_eq!(doc["family"], "both");
    let records = doc["records"].as_array().unwrap();
    let got: Vec<(&str, &str)> =
        records.iter().map(|r| (r["workload"].as_str().unwrap(), r["family"].as_str().unwrap())).collect();
    assert_eq!(
        got,
        [
            ("tcp-1", "ipv4"),
            ("udp-64B", "ipv4"),
            ("rr-64B", "ipv4"),
            ("tcp-1/ipv6", "ipv6"),
            ("udp-64B/ipv6", "ipv6"),
            ("rr-64B/ipv6", "ipv6")
        ]
    );
    for r in records {
        assert!(r["wire_packets"].as_u64().unwrap() > 0, "{r}");
        assert!((r["ratio_to_kernel_vxlan"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{r}");
    }
    assert!(stdout.contains("\ntcp-1/ipv6\n"), "{stdout}");
    let (stdout, doc) = quick_lab(&["--streams", "1", "--ipv6", "--only", "vxlan uring"]);
    assert!(stdout.lines().next().unwrap().contains("IPv6 overlay"), "{stdout}");
    let records = doc["records"].as_array().unwrap();
    assert!(records.iter().all(|r| r["family"] == "ipv6"), "{records:?}");
    assert!(records.iter().any(|r| r["data_path"] == "weft vxlan uring"), "{records:?}");
}

/// `--family ipv6-only`: an IPv6-only network per data path; kernel VXLAN is `flannel-v6.1`
/// and the userspace path sends over the IPv6 underlay too.
#[test]
fn ipv6_only_runs_every_path_over_the_ipv6_underlay() {
    let (stdout, doc) = quick_lab(&["--streams", "1", "--family", "ipv6-only", "--only", "vxlan"]);
    assert!(stdout.lines().next().unwrap().contains("IPv6-only overlay"), "{stdout}");
    assert_eq!(doc["family"], "ipv6-only");
    let records = doc["records"].as_array().unwrap();
    assert!(records.iter().all(|r| r["family"] == "ipv6" && r["workload"].as_str().unwrap().ends_with("/ipv6")));
    for path in ["vxlan (kernel)", "weft vxlan offload"] {
        let tcp = records.iter().find(|r| r["data_path"] == path && r["workload"] == "tcp-1/ipv6").unwrap();
        assert!(tcp["throughput_gbit_s"].as_f64().unwrap() > 0.0, "{tcp}");
        assert!(tcp["wire_packets"].as_u64().unwrap() > 0, "{tcp}");
    }
}

/// `--workload` runs only the workloads it names, in the lab's own order, and refuses a choice
/// that leaves nothing to run.
#[test]
fn workload_picks_the_workloads() {
    let (_, doc) = quick_lab(&["--workload", "rr-64B,tcp-1", "--streams", "1", "--only", "vxlan (kernel)"]);
    let got: Vec<&str> = doc["records"].as_array().unwrap().iter().map(|r| r["workload"].as_str().unwrap()).collect();
    assert_eq!(got, ["tcp-1", "rr-64B"]);
    let out =
        Command::new(common::bin()).args(["lab", "--quick", "--workload", "tcp-n", "--streams", "1"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--workload tcp-n needs --streams 2"), "{stderr}");
    let out = Command::new(common::bin())
        .args(["lab", "--quick", "--workload", "rr-64B", "--svg", "x.svg"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("add tcp-1 to --workload"), "{stderr}");
}

/// `--congestion-control` names the TCP workloads' algorithm: recorded in the JSON and the
/// table's first line; a name the kernel lacks stops the run before it builds anything.
#[test]
fn congestion_control_is_chosen_and_recorded() {
    let (stdout, doc) = quick_lab(&["--workload", "tcp-1", "--only", "vxlan (kernel)", "--congestion-control", "reno"]);
    assert_eq!(doc["tcp_congestion_control"], "reno");
    assert!(stdout.lines().next().unwrap().contains("TCP reno"), "{stdout}");
    let tcp = &doc["records"][0];
    assert!(tcp["throughput_gbit_s"].as_f64().unwrap() > 0.0, "{tcp}");
    let out = Command::new(common::bin())
        .args(["lab", "--quick", "--congestion-control", "no-such-algorithm"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("the kernel has no such algorithm"), "{stderr}");
    assert!(!stderr.contains("lab: "), "the run started: {stderr}");
}

/// A TCP server that cannot start says why: `tcp_bulk` with an algorithm the kernel lacks
/// returns the listener's own error, not a bare timeout. Nothing is sent.
#[test]
fn a_server_that_fails_to_start_says_why() {
    common::require_privileges();
    let topo = weft::lab::topology::Topology::build("ccfail", 2).unwrap();
    let (h1, h2) = (&topo.hosts[0], &topo.hosts[1]);
    let err = weft::lab::traffic::tcp_bulk(
        &h2.container_ns,
        h2.container_ip,
        &h1.container_ns,
        1,
        weft::lab::traffic::Amount::Bytes(1),
        std::time::Duration::from_secs(10),
        Some("no-such-algorithm"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("TCP server did not start") && err.contains("the kernel has no such algorithm"), "{err}");
}
