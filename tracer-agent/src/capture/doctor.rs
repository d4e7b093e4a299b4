//! `tracer-agent doctor`: what this host offers and what the agent would use.
//!
//! Without starting the pipeline: the kernel and its features, then every
//! hook tried for real (loaded, attached, or rejected and why) and the
//! verifier's own figures for every program in the object. It is what to run
//! first on an unknown kernel and what a bug report quotes. Exit status 0
//! only when the agent can run here.

use std::fmt::Write as _;
use std::path::Path;

use super::probes::{
    self, effective_caps, KernelVersion, LoadOptions, Need, Probes, RingMode, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN,
    HOOKS,
};
use super::verifier::{KERNEL_PROCESSED_LIMIT, KERNEL_STACK_LIMIT, PROCESSED_BUDGET, STACK_BUDGET};
use tracer_common::{MAX_CPUS, PER_CPU_RING_BYTES, SHARED_RING_BYTES};

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// `none [integrity] confidentiality` → `integrity`.
pub fn lockdown_mode(text: &str) -> Option<&str> {
    let start = text.find('[')?;
    let end = text[start..].find(']')?;
    Some(&text[start + 1..start + end])
}

/// The mount point of the cgroup v2 hierarchy, from `/proc/mounts`.
pub fn cgroup2_mount(mounts: &str) -> Option<&str> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then_some(dir)
    })
}

fn cpu_model() -> String {
    read("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".to_string())
}

/// Runs the doctor; returns the process exit code.
pub fn run(opts: &LoadOptions) -> u8 {
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if !probes::has_capabilities() {
        eprintln!(
            "tracer-agent doctor: cannot try the probes as uid {euid} without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN: run it as root"
        );
        return 1;
    }

    let mut out = String::new();
    let u = probes::uname();
    let kernel = KernelVersion::current();
    let _ = writeln!(out, "tracer-agent doctor\n\nhost");
    let _ = writeln!(out, "  kernel        {} ({}) {}", u.release, u.version, u.machine);
    let cpus = read("/sys/devices/system/cpu/possible").unwrap_or_else(|| "?".into());
    let _ = writeln!(out, "  cpu           {} (possible CPUs {cpus})", cpu_model());
    let old = kernel.is_some_and(|k| k < KernelVersion(6, 3));
    if old {
        let _ =
            writeln!(out, "                older than Linux 6.3: the socket tracepoints the probes use are missing");
    }
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    let _ = match std::fs::metadata(btf) {
        Ok(m) => writeln!(out, "  btf           {} ({:.1} MiB)", btf.display(), m.len() as f64 / 1048576.0),
        Err(_) => writeln!(out, "  btf           missing: {} (CONFIG_DEBUG_INFO_BTF=y is needed)", btf.display()),
    };
    let tracefs =
        ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"].into_iter().find(|p| Path::new(p).join("events").exists());
    let _ = writeln!(
        out,
        "  tracefs       {}",
        tracefs.unwrap_or("not mounted (the agent mounts it at /sys/kernel/tracing)")
    );
    let names: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")]
        .into_iter()
        .filter(|(c, _)| has(*c))
        .map(|(_, n)| n)
        .collect();
    let _ = writeln!(
        out,
        "  privileges    uid {euid}, effective {}",
        if names.is_empty() { "none".into() } else { names.join(" ") }
    );
    let lockdown = read("/sys/kernel/security/lockdown");
    let _ = writeln!(
        out,
        "  lockdown      {}",
        lockdown.as_deref().and_then(lockdown_mode).unwrap_or("unknown (no /sys/kernel/security/lockdown)")
    );
    let mounts = read("/proc/mounts").unwrap_or_default();
    let _ = writeln!(out, "  cgroup v2     {}", cgroup2_mount(&mounts).unwrap_or("not mounted"));
    let jit = read("/proc/sys/net/core/bpf_jit_enable").unwrap_or_else(|| "?".into());
    let harden = read("/proc/sys/net/core/bpf_jit_harden").unwrap_or_else(|| "?".into());
    let unpriv = read("/proc/sys/kernel/unprivileged_bpf_disabled").unwrap_or_else(|| "?".into());
    let _ = writeln!(out, "  bpf           jit_enable {jit}, jit_harden {harden}, unprivileged_bpf_disabled {unpriv}");
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    let _ = writeln!(out, "  kprobes       {} (not used)", if kprobes { "available" } else { "not available" });

    let mut opts = opts.clone();
    opts.verifier_stats = true;
    let loaded = Probes::try_load(&opts).map(|(p, rings, fatal)| (p, fatal, rings));
    let _ = writeln!(out, "\nhooks (tried in order; the first program that loads and attaches is used)");
    let mut can_run = false;
    let mut over_budget = false;
    match &loaded {
        Ok((p, fatal, _)) => {
            can_run = fatal.is_none();
            for h in &p.hooks {
                let need = match h.hook.need {
                    Need::Required => "required".to_string(),
                    Need::Data => "data".to_string(),
                    Need::Optional(_) => "optional".to_string(),
                };
                let state = match h.attached() {
                    Some(prog) if prog == h.hook.variants[0] => format!("attached   {prog}"),
                    Some(prog) => format!("fallback   {prog}"),
                    None => "missing".to_string(),
                };
                let _ = writeln!(out, "  {:<22} {:<9} {state}", h.hook.tracepoint, need);
                for a in &h.attempts {
                    if let Err(e) = &a.result {
                        let _ = writeln!(out, "      {} failed: {e}", a.program);
                    }
                }
                if let (None, Need::Optional(lost)) = (h.attached(), h.hook.need) {
                    let _ = writeln!(out, "      without it {lost}");
                }
            }
            let _ = writeln!(
                out,
                "\nprograms (the verifier's statistics; budget: stack {STACK_BUDGET} of the kernel's {KERNEL_STACK_LIMIT} bytes, {PROCESSED_BUDGET} of its {KERNEL_PROCESSED_LIMIT} processed insns)"
            );
            for (name, s) in &p.stats {
                let _ = match s {
                    Ok(s) => {
                        let ok = s.within_budget();
                        over_budget |= !ok;
                        writeln!(
                            out,
                            "  {name:<28} {} stack {} ({}) processed {} size {} insns peak_states {} verified in {} µs",
                            if ok { "ok  " } else { "OVER" },
                            s.combined_stack,
                            s.frames.iter().map(u32::to_string).collect::<Vec<_>>().join("+"),
                            s.processed,
                            s.insns,
                            s.peak_states,
                            s.verification_us
                        )
                    }
                    Err(e) => writeln!(out, "  {name:<28} rejected: {e}"),
                };
            }
        }
        Err(e) => {
            let _ = writeln!(out, "  the probes cannot run here: {e:#}");
            for h in HOOKS {
                let _ = writeln!(out, "  {:<22} needs Linux {}.{}", h.tracepoint, h.since.0, h.since.1);
            }
        }
    }
    let ring = match opts.ring_mode {
        RingMode::Shared => format!("shared, {} MiB", SHARED_RING_BYTES >> 20),
        RingMode::PerCpu => format!("per-cpu, {} MiB per CPU", PER_CPU_RING_BYTES >> 20),
    };
    let _ = writeln!(out, "\nring buffer     {ring} (per-cpu covers CPU ids below {MAX_CPUS})");
    if let Ok((p, _, _)) = &loaded {
        let go = match &p.go_error {
            None => "loaded (go_probe, attached to each Go executable; see Go services in README)".to_string(),
            Some(e) => format!("not available, Go calls stay unlinked: {e}"),
        };
        let _ = writeln!(out, "go probes       {go}");
    }
    let verdict = match (&loaded, over_budget) {
        (Ok((_, Some(why), _)), _) => format!("the agent cannot run here: {why}"),
        (Ok((p, None, _)), false) if p.fallbacks() == 0 => "the agent can run here, with every probe".to_string(),
        (Ok((p, None, _)), false) => {
            format!("the agent can run here, with {} probe fallback(s) (see above)", p.fallbacks())
        }
        (Ok(_), true) => "the agent can run here, but a program is over the verifier budget (see above)".to_string(),
        (Err(_), _) => "the agent cannot run here".to_string(),
    };
    let _ = writeln!(out, "verdict         {verdict}");
    print!("{out}");
    drop(loaded);
    if can_run {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_and_cgroup_mounts_are_read() {
        assert_eq!(lockdown_mode("none [integrity] confidentiality"), Some("integrity"));
        assert_eq!(lockdown_mode("[none] integrity confidentiality"), Some("none"));
        assert_eq!(lockdown_mode("none"), None);
        let mounts = "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(mounts), Some("/sys/fs/cgroup/unified"));
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }
}
