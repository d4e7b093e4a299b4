//! `cargo xtask`: build, run and test the tracer agent.
//!
//! - `cargo xtask build [--debug]`  toolchain bootstrap, probes, agent
//! - `cargo xtask run [-- ARGS]`    build, then run the agent (needs root)
//! - `cargo xtask test [--unit] [-- ARGS]`  unit tests, and integration tests as root
//!
//! Bootstrap (shared by all commands) makes sure a nightly toolchain with
//! `rust-src` exists and that bpf-linker matches the nightly's LLVM.

mod bench;
mod bootstrap;
mod build;
mod pipeline;
mod test;
mod util;

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::build::Paths;
use crate::util::{step, Cmd};

#[derive(Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", about = "Build, run and test the tracer agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Set up the toolchain, build the eBPF probes and the agent
    Build {
        /// Build the agent without optimizations (target/debug); probes are always optimized
        #[arg(long)]
        debug: bool,
    },
    /// Build, then run the agent; arguments after `--` go to the agent
    Run {
        /// Run a debug build of the agent
        #[arg(long)]
        debug: bool,
        /// Arguments for tracer-agent
        #[arg(last = true, value_name = "AGENT_ARGS")]
        args: Vec<String>,
    },
    /// Build, then run unit tests and, as root, the integration tests
    Test {
        /// Run only the unit tests
        #[arg(long)]
        unit: bool,
        /// Arguments for the test harness of both runs (for example a test name filter)
        #[arg(last = true, value_name = "TEST_ARGS")]
        args: Vec<String>,
    },
    /// Measure the agent's overhead: OFF/KERNEL/FULL rounds against real servers (as root)
    Bench {
        /// Rounds of the three modes per workload
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Seconds per load run
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Only the nginx workload
        #[arg(long)]
        skip_gin: bool,
        /// Only the Gin workload
        #[arg(long)]
        skip_nginx: bool,
        /// Only count the user-space pipeline's instructions per event (callgrind)
        #[arg(long)]
        pipeline: bool,
    },
    /// Only run the toolchain bootstrap steps
    #[command(hide = true)]
    Bootstrap,
}

fn main() -> ExitCode {
    util::ensure_cargo_bin_on_path();
    let cli = Cli::parse();
    match run_command(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_command(command: Command) -> Result<()> {
    let paths = Paths::new()?;
    util::clean_library_path(&paths.target_dir);
    match command {
        Command::Build { debug } => {
            let bin = build::build_all(&paths, !debug)?;
            step(format!("done: agent binary at {}", bin.display()));
            eprintln!("    run it with `cargo xtask run -- --help` or `sudo {}`", bin.display());
            Ok(())
        }
        Command::Run { debug, args } => {
            let bin = build::build_all(&paths, !debug)?;
            // The embedded default: each trace printed as a tree.
            if std::env::var_os("TRACER_PRINT_FORMAT").is_none()
                && !args.iter().any(|a| a.starts_with("--print-format"))
            {
                std::env::set_var("TRACER_PRINT_FORMAT", "tree");
            }
            run_agent(&bin, &args)
        }
        Command::Test { unit, args } => test::test(&paths, unit, &args),
        Command::Bench { pipeline: true, .. } => {
            let m = pipeline::measure(&paths)?;
            if !m.within_budget() {
                bail!("the pipeline is over its instruction budget");
            }
            Ok(())
        }
        Command::Bench { rounds, seconds, skip_gin, skip_nginx, .. } => bench::bench(
            &paths,
            &bench::Options { rounds: rounds.max(1), seconds: seconds.max(1), skip_gin, skip_nginx },
        ),
        Command::Bootstrap => {
            bootstrap::bootstrap()?;
            step("bootstrap complete");
            Ok(())
        }
    }
}

/// Arguments that only print information and need no privileges.
fn is_informational(args: &[String]) -> bool {
    args.first().is_some_and(|a| a == "help")
        || args.iter().any(|a| matches!(a.as_str(), "-h" | "--help" | "-V" | "--version"))
}

/// Replaces this process with the agent, so signals (Ctrl-C) reach it
/// directly and its exit code becomes ours.
fn run_agent(bin: &std::path::Path, args: &[String]) -> Result<()> {
    let cmd = if util::is_root() || is_informational(args) {
        Cmd::new(bin).args(args)
    } else {
        eprintln!("tracer-agent needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN) to load eBPF programs");
        if util::which("sudo").is_none() {
            bail!("not running as root and sudo is not available; rerun as root");
        }
        Cmd::new("sudo").arg("-E").arg(bin).args(args)
    };
    step("running agent");
    eprintln!("$ {}", cmd.display());
    let err = cmd.command().exec();
    bail!("could not start {}: {err}", bin.display())
}

#[cfg(test)]
mod tests {
    use super::is_informational;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn help_and_version_need_no_root() {
        assert!(is_informational(&args(&["--help"])));
        assert!(is_informational(&args(&["--config", "x.toml", "-V"])));
        assert!(is_informational(&args(&["help"])));
        assert!(!is_informational(&args(&[])));
        assert!(!is_informational(&args(&["--otlp-endpoint", "http://localhost:4317"])));
    }
}
