//! The `weft` command.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// weft: a flannel-compatible overlay forwarder that measures what user space costs.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Join a flannel network: take a subnet lease, set up the host, forward packets.
    Run(Box<weft::control::daemon::RunOptions>),
    /// Measure every data path side by side in network namespaces (needs root).
    Lab(weft::lab::LabOptions),
    /// The flannel CNI plugin (type "flannel"): CNI_COMMAND and friends in the environment, the
    /// network configuration on stdin. The weft binary invoked as `flannel` is this command.
    Cni,
}

fn main() -> ExitCode {
    // A symlink named `flannel` in a CNI bin dir makes this binary flannel's CNI plugin.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name().is_some_and(|n| n == "flannel") {
        return weft::control::cni::main();
    }
    // First thing: a SIGTERM or SIGINT waits for the handler of `weft run` (or `weft lab`)
    // instead of killing the process half-way through a write.
    let _ = weft::control::daemon::signals::block();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, as a daemon's error should be; --help has the rest.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            eprintln!("weft: error: {first} (see weft --help)");
            return ExitCode::from(2);
        }
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in a log file or the journal.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Cmd::Run(o) => weft::control::daemon::run(*o),
        Cmd::Lab(o) => weft::lab::run(o),
        Cmd::Cni => {
            // The delegate it starts inherits the signal mask.
            let _ = weft::control::daemon::signals::unblock();
            return weft::control::cni::main();
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
