//! `weft cni`: a CNI plugin that behaves as flannel's (`type: "flannel"`). It turns weft's
//! `subnet.env` into a delegate configuration (`bridge` with `host-local` IPAM by default),
//! saves it under `dataDir/<container id>` before calling the delegate, and on DEL calls the
//! delegate with what it saved, so that DEL works after the lease changed. Invoked as
//! `flannel` (a symlink in the CNI bin dir), the weft binary is this plugin, so an unchanged
//! kube-flannel conflist works.

use crate::proto::cni::{CniError, FlannelEnv, NetConf, version_json};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// The CNI version errors are reported in when the configuration names none.
const FALLBACK_VERSION: &str = "1.0.0";

/// What the plugin ends with: bytes for stdout and the exit status.
struct Outcome {
    stdout: Vec<u8>,
    status: u8,
}

impl Outcome {
    fn ok(stdout: Vec<u8>) -> Self {
        Self { stdout, status: 0 }
    }
}

fn env(name: &str) -> Result<String, CniError> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or_else(|| CniError::env(format!("{name} is not set")))
}

/// The file that keeps a container's delegate configuration.
fn saved_path(conf: &NetConf, container: &str) -> Result<PathBuf, CniError> {
    if container.contains('/') || container == "." || container == ".." {
        return Err(CniError::env(format!("CNI_CONTAINERID {container:?} is not a valid container id")));
    }
    Ok(Path::new(&conf.data_dir).join(container))
}

/// Writes `bytes` to `path` (directory 0700, file 0600), as flannel's plugin does.
fn save(path: &Path, bytes: &[u8]) -> Result<(), CniError> {
    let io = |e: std::io::Error| {
        CniError::io(format!("saving the delegate configuration to {}", path.display()), e.to_string())
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    }
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)
}

/// The delegate plugin `kind` found on CNI_PATH.
fn find_plugin(kind: &str) -> Result<PathBuf, CniError> {
    let path = env("CNI_PATH")?;
    if kind.is_empty() || kind.contains('/') {
        return Err(CniError::config(format!("delegate type {kind:?} is not a plugin name")));
    }
    std::env::split_paths(&path)
        .map(|d| d.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| CniError::io(format!("failed to find plugin {kind:?} in path"), path))
}

/// Runs the delegate with `command` and `conf` on stdin; the runtime's other CNI_ variables
/// pass through. Its stdout and exit status become ours (a CNI error it printed included).
fn delegate(command: &str, conf: &[u8]) -> Result<Outcome, CniError> {
    let kind = serde_json::from_slice::<serde_json::Value>(conf)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_default();
    let plugin = find_plugin(&kind)?;
    let failed =
        |e: std::io::Error| CniError::io(format!("failed to run the delegate {}", plugin.display()), e.to_string());
    let mut child = Command::new(&plugin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(failed)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf).map_err(failed)?;
    }
    let out = child.wait_with_output().map_err(failed)?;
    let status = out.status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1);
    if status != 0 && out.stdout.is_empty() {
        return Err(CniError::io(format!("the delegate {kind} failed ({})", out.status), String::new()));
    }
    Ok(Outcome { stdout: out.stdout, status })
}

fn add(conf: &NetConf) -> Result<Outcome, CniError> {
    let container = env("CNI_CONTAINERID")?;
    let text = std::fs::read_to_string(&conf.subnet_file).map_err(|e| {
        CniError::io(format!("reading {} (is weft running on this host?)", conf.subnet_file), e.to_string())
    })?;
    let env = FlannelEnv::parse(&text, &conf.subnet_file)?;
    let bytes = conf.delegate_for(&env)?.to_string().into_bytes();
    save(&saved_path(conf, &container)?, &bytes)?;
    delegate("ADD", &bytes)
}

fn del(conf: &NetConf) -> Result<Outcome, CniError> {
    let container = env("CNI_CONTAINERID")?;
    let path = saved_path(conf, &container)?;
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        // Nothing saved: nothing of ours to remove (the spec asks DEL to succeed).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::ok(Vec::new())),
        Err(e) => return Err(CniError::io(format!("reading {}", path.display()), e.to_string())),
    };
    if serde_json::from_slice::<serde_json::Value>(&bytes).is_err() {
        // As flannel's plugin: the interface stays in the bridge until the node reboots.
        eprintln!("weft cni: {} does not parse; nothing to delegate", path.display());
        return Ok(Outcome::ok(Vec::new()));
    }
    let out = delegate("DEL", &bytes)?;
    if out.status == 0 {
        let _ = std::fs::remove_file(&path);
    }
    Ok(out)
}

fn run(input: &str) -> Result<Outcome, CniError> {
    let command = env("CNI_COMMAND")?;
    if command == "VERSION" {
        let v = NetConf::parse(input).ok().map(|c| c.cni_version).filter(|v| !v.is_empty());
        return Ok(Outcome::ok(version_json(v.as_deref().unwrap_or(FALLBACK_VERSION)).into_bytes()));
    }
    let conf = NetConf::parse(input)?;
    match command.as_str() {
        "ADD" => add(&conf),
        "DEL" => del(&conf),
        // flannel's plugin checks nothing; its delegate is checked by the runtime's own CHECK.
        "CHECK" => Ok(Outcome::ok(Vec::new())),
        other => Err(CniError::env(format!("unknown CNI_COMMAND {other:?} (ADD, DEL, CHECK, VERSION)"))),
    }
}

/// Runs the plugin: the configuration on stdin, the CNI_ variables in the environment; the
/// result (or a CNI error) on stdout.
pub fn main() -> ExitCode {
    let mut input = String::new();
    let read = std::io::stdin().read_to_string(&mut input);
    let outcome = match read {
        Ok(_) => run(&input),
        Err(e) => Err(CniError::io("reading the configuration from stdin", e.to_string())),
    };
    let outcome = outcome.unwrap_or_else(|e| {
        let version = NetConf::parse(&input).ok().map(|c| c.cni_version).filter(|v| !v.is_empty());
        Outcome { stdout: e.to_json(version.as_deref().unwrap_or(FALLBACK_VERSION)).into_bytes(), status: 1 }
    });
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(&outcome.stdout).and_then(|()| stdout.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::from(outcome.status)
}
