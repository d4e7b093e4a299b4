//! Instructions per kernel event of the user-space pipeline, counted by
//! callgrind over the `pipeline` benchmark (decode → streams → HTTP/1 →
//! spans → OTLP bytes) and checked against `xtask/bench/pipeline-budget`.
//! Instruction counts repeat exactly from run to run, so a regression shows
//! even on a busy shared machine where times do not.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::build::Paths;
use crate::util::{self, note, step, warn, Cmd};

/// Requests replayed under callgrind (two kernel events each).
const REQUESTS: u64 = 20_000;

/// A regression beyond the budget by more than this fraction fails.
const TOLERANCE: f64 = 0.05;

pub struct Measured {
    pub per_event: f64,
    pub budget: f64,
}

impl Measured {
    pub fn within_budget(&self) -> bool {
        self.per_event <= self.budget * (1.0 + TOLERANCE)
    }
}

fn budget_file(paths: &Paths) -> PathBuf {
    paths.root.join("xtask/bench/pipeline-budget")
}

/// The budget: the first line of the budget file that is a number.
fn read_budget(paths: &Paths) -> Result<f64> {
    let path = budget_file(paths);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_budget(&text).with_context(|| format!("no number in {}", path.display()))
}

fn parse_budget(text: &str) -> Option<f64> {
    text.lines().map(str::trim).filter(|l| !l.starts_with('#')).find_map(|l| l.parse().ok())
}

/// Total instructions from a callgrind output file.
fn parse_total(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))?.trim().parse().ok()
}

/// The benchmark executable, built in release mode.
fn bench_executable(paths: &Paths) -> Result<PathBuf> {
    let out = Cmd::new("cargo")
        .args(["bench", "-p", "tracer-agent", "--bench", "pipeline", "--no-run", "--message-format=json"])
        .dir(&paths.root)
        .read()?;
    out.lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"name\":\"pipeline\""))
        .find_map(|l| {
            let at = l.find("\"executable\":\"")? + "\"executable\":\"".len();
            let end = l[at..].find('"')?;
            Some(PathBuf::from(&l[at..at + end]))
        })
        .context("cargo did not report the pipeline benchmark executable")
}

fn ensure_valgrind() -> Result<()> {
    if util::which("valgrind").is_some() {
        return Ok(());
    }
    if util::is_root() && util::is_debian() && util::which("apt-get").is_some() {
        step("installing valgrind with apt (instruction counts of the pipeline benchmark)");
        let mut updated = false;
        util::apt_install(&["valgrind"], &mut updated);
    }
    if util::which("valgrind").is_none() {
        bail!("valgrind is not installed (apt install valgrind)");
    }
    Ok(())
}

/// Counts the pipeline's instructions per kernel event.
pub fn measure(paths: &Paths) -> Result<Measured> {
    step("counting pipeline instructions with callgrind");
    ensure_valgrind()?;
    let exe = bench_executable(paths)?;
    let out_dir = paths.target_dir.join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let out_file = out_dir.join("pipeline.callgrind");
    let stdout = Cmd::new("valgrind")
        .args(["--tool=callgrind", "--toggle-collect=*run_pipeline*"])
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(&exe)
        .arg(REQUESTS.to_string())
        .read()?;
    if !stdout.contains("pipeline:") {
        bail!("the pipeline benchmark printed no result");
    }
    let text = std::fs::read_to_string(&out_file).with_context(|| format!("reading {}", out_file.display()))?;
    let total = parse_total(&text).context("no instruction total in the callgrind output")?;
    let per_event = total as f64 / (REQUESTS * 2) as f64;
    let budget = read_budget(paths)?;
    let m = Measured { per_event, budget };
    let verdict = if m.within_budget() { "within budget" } else { "OVER BUDGET" };
    note(format!(
        "{total} instructions for {} kernel events: {per_event:.0} per event (budget {budget:.0}, {verdict})",
        REQUESTS * 2
    ));
    if !m.within_budget() {
        warn(format!(
            "the pipeline costs {:.1} % more instructions per event than {} allows",
            (per_event / budget - 1.0) * 100.0,
            util::short_path(&budget_file(paths), &paths.root)
        ));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_and_totals_parse() {
        assert_eq!(parse_budget("# instructions per event\n\n5200\n"), Some(5200.0));
        assert_eq!(parse_budget("# nothing\n"), None);
        assert_eq!(parse_total("events: Ir\nsummary: 291951707\ntotals: 291951707\n"), Some(291_951_707));
        assert_eq!(parse_total("events: Ir\n"), None);
        let m = Measured { per_event: 1040.0, budget: 1000.0 };
        assert!(m.within_budget());
        let m = Measured { per_event: 1060.0, budget: 1000.0 };
        assert!(!m.within_budget());
    }
}
