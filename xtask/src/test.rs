//! `cargo xtask test`: unit tests everywhere, integration tests as root.

use anyhow::{bail, Result};

use crate::build::{self, Paths};
use crate::util::{self, note, step, warn, Cmd};

/// Programs the integration tests drive, with the Debian package for each.
/// An absolute path is checked as a file, a bare name on PATH.
const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("curl", "curl"),
    ("python3", "python3"),
    ("h2load", "nghttp2-client"),
    ("redis-server", "redis-server"),
    ("ip", "iproute2"),
    ("redis-cli", "redis-tools"),
    ("psql", "postgresql-client"),
    ("pgbench", "postgresql-contrib"),
    ("/usr/lib/postgresql/15/bin/initdb", "postgresql"),
    ("mariadbd", "mariadb-server"),
    ("mariadb", "mariadb-client"),
    ("go", "golang-go"),
    ("javac", "openjdk-17-jdk-headless"),
    ("/usr/share/gocode/src/google.golang.org/grpc/server.go", "golang-google-grpc-dev"),
    ("/usr/share/gocode/src/github.com/golang/protobuf/proto/proto.go", "golang-github-golang-protobuf-1-5-dev"),
    ("/usr/share/gocode/src/github.com/gin-gonic/gin/gin.go", "golang-github-gin-gonic-gin-dev"),
    ("/usr/share/gocode/src/github.com/go-sql-driver/mysql/driver.go", "golang-github-go-sql-driver-mysql-dev"),
    ("/usr/share/gocode/src/github.com/gomodule/redigo/redis/redis.go", "golang-github-gomodule-redigo-dev"),
];

/// Python modules the integration tests use, with the pip requirement for each.
const PYTHON_MODULES: &[(&str, &str)] = &[("grpc", "grpcio"), ("psycopg", "psycopg[binary]"), ("pymysql", "pymysql")];

fn present(bin: &str) -> bool {
    if bin.starts_with('/') {
        std::path::Path::new(bin).exists()
    } else {
        util::which(bin).is_some()
    }
}

/// Installs missing Python modules with pip. Never fails the run.
fn ensure_python_modules() {
    step("checking Python modules (grpcio, psycopg, pymysql)");
    let missing: Vec<&str> = PYTHON_MODULES
        .iter()
        .filter(|(module, _)| {
            !std::process::Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(_, req)| *req)
        .collect();
    if missing.is_empty() {
        note("all present");
        return;
    }
    step(format!("installing Python modules with pip: {}", missing.join(" ")));
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(&missing);
    match cmd.status() {
        Ok(s) if s.success() => note("installed"),
        _ => warn(format!("pip could not install: {}; tests that use them may fail", missing.join(" "))),
    }
}

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
        ensure_python_modules();
    }

    step("running unit tests");
    let unit = Cmd::new("cargo")
        .args(["test", "--release", "--no-fail-fast", "--workspace", "--exclude", "tracer-tests"])
        .args(separator(extra))
        .args(extra)
        .env("TRACER_BPF_OBJECT", paths.bpf_object())
        .dir(&paths.root)
        .status()?;
    let unit = if unit.success() { Outcome::Passed } else { Outcome::Failed };

    let instructions = match crate::pipeline::measure(paths) {
        Ok(m) if m.within_budget() => Outcome::Passed,
        Ok(_) => Outcome::Failed,
        Err(e) => {
            warn(format!("pipeline instruction count failed: {e:#}"));
            Outcome::Failed
        }
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
            .args(["test", "--release", "--no-fail-fast", "-p", "tracer-tests", "--", "--test-threads=1"])
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

    if run_integration {
        show_probe_figures(&agent);
    }

    step("test summary");
    note(format!("unit tests:        {}", unit.label()));
    let why = match integration {
        Outcome::Skipped if unit_only => " (--unit)",
        Outcome::Skipped => " (needs root)",
        _ => "",
    };
    note(format!("integration tests: {}{why}", integration.label()));
    note(format!("pipeline budget:   {}", instructions.label()));
    let failed = [unit, instructions, integration].iter().filter(|o| **o == Outcome::Failed).count();
    if failed > 0 {
        bail!("{failed} test step(s) failed");
    }
    Ok(())
}

/// Prints the verifier's figures of every probe program on this host, as
/// `tracer-agent doctor` reports them (the integration tests assert them).
fn show_probe_figures(agent: &std::path::Path) {
    step("probe programs on this host (tracer-agent doctor: the verifier's own figures)");
    match std::process::Command::new(agent).arg("doctor").output() {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let mut show = false;
            for line in text.lines() {
                if line.starts_with("  kernel") || line.starts_with("  cpu") {
                    note(line.trim());
                }
                if line.starts_with("programs") {
                    show = true;
                } else if line.is_empty() {
                    show = false;
                }
                if show || line.starts_with("verdict") {
                    note(line.trim());
                }
            }
        }
        Err(e) => warn(format!("tracer-agent doctor did not run: {e}")),
    }
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
    step("checking test programs (nginx, wrk, curl, h2load, redis, postgresql, mariadb, go, java)");
    let missing: Vec<(&str, &str)> = TEST_PROGRAMS.iter().copied().filter(|(bin, _)| !present(bin)).collect();
    if missing.is_empty() {
        note("all present");
        return;
    }
    let names: Vec<&str> = missing.iter().map(|(bin, _)| *bin).collect();
    if !util::is_debian() || util::which("apt-get").is_none() {
        warn(format!("missing test programs: {} (install them with the system package manager)", names.join(", ")));
        return;
    }
    let mut packages: Vec<&str> = missing.iter().map(|(_, pkg)| *pkg).collect();
    packages.dedup();
    step(format!("installing test programs with apt: {}", packages.join(" ")));
    let mut updated = false;
    let failed = util::apt_install(&packages, &mut updated);
    if !failed.is_empty() {
        warn(format!("apt could not install: {}", failed.join(" ")));
    }
    let still: Vec<&str> = names.into_iter().filter(|bin| !present(bin)).collect();
    if !still.is_empty() {
        warn(format!("still missing: {}; integration tests that use them may fail", still.join(", ")));
    }
}
