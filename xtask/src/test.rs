//! `cargo xtask test`: unit tests everywhere, integration tests as root.

use anyhow::{bail, Result};

use crate::build::{self, Paths};
use crate::util::{self, note, step, warn, Cmd};

/// Programs the integration tests drive, with the Debian package for each.
const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("curl", "curl"),
    ("python3", "python3"),
];

#[derive(Clone, Copy, PartialEq)]
enum Outcome {
    Passed,
    Failed,
    Skipped,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Passed => "ok",
            Outcome::Failed => "FAILED",
            Outcome::Skipped => "skipped",
        }
    }
}

pub fn test(paths: &Paths, unit_only: bool, extra: &[String]) -> Result<()> {
    let agent = build::build_all(paths, true)?;
    let root = util::is_root();
    let run_integration = root && !unit_only;

    if run_integration {
        ensure_test_programs();
    }

    step("running unit tests");
    let unit = Cmd::new("cargo")
        .args([
            "test",
            "--release",
            "--workspace",
            "--exclude",
            "tracer-tests",
        ])
        .args(separator(extra))
        .args(extra)
        .env("TRACER_BPF_OBJECT", paths.bpf_object())
        .dir(&paths.root)
        .status()?;
    let unit = if unit.success() {
        Outcome::Passed
    } else {
        Outcome::Failed
    };

    let integration = if unit_only {
        Outcome::Skipped
    } else if !root {
        step("skipping integration tests: they load eBPF programs and need root");
        note("run `sudo -E cargo xtask test` (or as root) to include them");
        Outcome::Skipped
    } else {
        step("running integration tests (one at a time)");
        let status = Cmd::new("cargo")
            .args([
                "test",
                "--release",
                "-p",
                "tracer-tests",
                "--",
                "--test-threads=1",
            ])
            .args(extra)
            .env("TRACER_BPF_OBJECT", paths.bpf_object())
            .env("TRACER_AGENT_BIN", &agent)
            .dir(&paths.root)
            .status()?;
        if status.success() {
            Outcome::Passed
        } else {
            Outcome::Failed
        }
    };

    step("test summary");
    note(format!("unit tests:        {}", unit.label()));
    let why = match integration {
        Outcome::Skipped if unit_only => " (--unit)",
        Outcome::Skipped => " (needs root)",
        _ => "",
    };
    note(format!("integration tests: {}{why}", integration.label()));
    let failed = [unit, integration]
        .iter()
        .filter(|o| **o == Outcome::Failed)
        .count();
    if failed > 0 {
        bail!("{failed} test step(s) failed");
    }
    Ok(())
}

/// `--` before harness arguments, only when there are any.
fn separator(extra: &[String]) -> &'static [&'static str] {
    if extra.is_empty() {
        &[]
    } else {
        &["--"]
    }
}

/// Installs missing test programs with apt on Debian/Ubuntu (as root).
/// Never fails the run: an unavailable package only produces a warning.
fn ensure_test_programs() {
    step("checking test programs (nginx, wrk, curl, python3)");
    let missing: Vec<(&str, &str)> = TEST_PROGRAMS
        .iter()
        .copied()
        .filter(|(bin, _)| util::which(bin).is_none())
        .collect();
    if missing.is_empty() {
        note("all present");
        return;
    }
    let names: Vec<&str> = missing.iter().map(|(bin, _)| *bin).collect();
    if !util::is_debian() || util::which("apt-get").is_none() {
        warn(format!(
            "missing test programs: {} (install them with the system package manager)",
            names.join(", ")
        ));
        return;
    }
    let packages: Vec<&str> = missing.iter().map(|(_, pkg)| *pkg).collect();
    step(format!(
        "installing test programs with apt: {}",
        packages.join(" ")
    ));
    let mut updated = false;
    let failed = util::apt_install(&packages, &mut updated);
    if !failed.is_empty() {
        warn(format!("apt could not install: {}", failed.join(" ")));
    }
    let still: Vec<&str> = names
        .into_iter()
        .filter(|bin| util::which(bin).is_none())
        .collect();
    if !still.is_empty() {
        warn(format!(
            "still missing: {}; integration tests that use them may fail",
            still.join(", ")
        ));
    }
}
