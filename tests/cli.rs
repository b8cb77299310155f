//! The command line: help, bad flags and bad config give one-line errors and non-zero exits.

mod common;

use std::process::Command;

fn weft(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(common::bin()).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn help_lists_commands_and_flags() {
    let (code, out, _) = weft(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("run") && out.contains("lab"), "{out}");
    let (code, out, _) = weft(&["run", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--registry-dir",
        "--public-ip",
        "--public-ipv6",
        "--iface",
        "--subnet-file",
        "--etcd-prefix",
        "--mode",
        "--tun-queue-len",
    ] {
        assert!(out.contains(flag), "{flag} missing from:\n{out}");
    }
    // The best engine the kernel supports is the default.
    let mode =
        out.lines().skip_while(|l| !l.trim_start().starts_with("--mode")).take(12).collect::<Vec<_>>().join("\n");
    assert!(mode.contains("[default: auto]"), "{mode}");
    assert!(mode.contains("naive") && mode.contains("offload"), "{mode}");
}

#[test]
fn bad_flags_are_one_line_errors() {
    for args in [
        &["run", "--bogus"][..],
        &["run"][..],
        &["run", "--registry-dir", "/tmp", "--public-ip", "300.1.1.1"][..],
        &["run", "--registry-dir", "/tmp", "--public-ipv6", "198.18.0.1"][..],
        &["run", "--registry-dir", "/tmp", "--mode", "warp"][..],
        &["run", "--registry-dir", "/tmp", "--tun-queue-len", "0"][..],
        &["run", "--registry-dir", "/tmp", "--tun-queue-len", "100000"][..],
        &["frobnicate"][..],
    ] {
        let (code, _, err) = weft(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("weft: error: "), "{err}");
    }
}

#[test]
fn broken_config_is_a_one_line_error() {
    let d = tempfile::tempdir().unwrap();
    for (config, want) in [
        ("{", "not a JSON object"),
        (r#"{"Network":"100.96.0.0/29"}"#, "too small"),
        (r#"{"Network":"100.96.0.0/16","Backend":{"Type":"gre"}}"#, "gre"),
    ] {
        std::fs::write(d.path().join("config"), config).unwrap();
        let (code, _, err) = weft(&[
            "run",
            "--registry-dir",
            d.path().to_str().unwrap(),
            "--subnet-file",
            d.path().join("env").to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "{err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("weft: error")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains(want), "{err}");
    }
    let (code, _, err) = weft(&["run", "--registry-dir", d.path().join("missing").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("missing"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = weft(&["run", "--registry-dir", empty.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("no network config"), "{err}");
}
