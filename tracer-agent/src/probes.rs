//! Loading and attaching the kernel programs, and talking to their maps.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{of_maps::ArrayOfMaps, Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
    Ebpf, EbpfLoader,
};
use tracer_common::{counter, filter, mode, Config, MAX_CAPTURE, MAX_CPUS, PER_CPU_RING_BYTES};

use crate::btf::Btf;

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tracer.bpf.o"));

/// How events travel from the probes to the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RingMode {
    /// One ring buffer per CPU: producers never contend; the agent merges by time.
    PerCpu,
    /// One ring buffer shared by all CPUs.
    Shared,
}

const BPF_MAP_TYPE_RINGBUF: u32 = 27;

/// CPUs that may ever run (`/sys/devices/system/cpu/possible`, e.g. `0-7`).
fn possible_cpus() -> Result<Vec<u32>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").context("reading possible CPUs")?;
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse()?, b.parse()?);
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse()?),
        }
    }
    Ok(cpus)
}

/// Kernel-side filters.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub allow_pids: Vec<u32>,
    pub deny_pids: Vec<u32>,
    pub allow_comms: Vec<String>,
    pub deny_comms: Vec<String>,
    pub allow_ports: Vec<u16>,
    pub deny_ports: Vec<u16>,
}

/// Counters kept by the probes (summed over CPUs).
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelCounters {
    pub sent: u64,
    pub lost: u64,
    pub truncated: u64,
    pub read_errors: u64,
}

pub struct Probes {
    _ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
}

fn has_capabilities() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let need = (1u64 << 21) | (1u64 << 38) | (1u64 << 39); // SYS_ADMIN, PERFMON, BPF
    eff & need == need
}

/// Make sure tracefs is mounted; mount it at /sys/kernel/tracing if not.
fn ensure_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events/syscalls").exists()
        || Path::new("/sys/kernel/debug/tracing/events/syscalls").exists()
    {
        return Ok(());
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings.
    let rc = unsafe { libc::mount(c"tracefs".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {err}");
    }
    if !Path::new("/sys/kernel/tracing/events/syscalls").exists() {
        bail!("tracefs mounted at /sys/kernel/tracing but it has no syscall events (CONFIG_FTRACE_SYSCALLS off?)");
    }
    Ok(())
}

fn comm_key(name: &str) -> [u8; 16] {
    let mut k = [0u8; 16];
    for (d, s) in k.iter_mut().zip(name.as_bytes().iter().take(15)) {
        *d = *s;
    }
    k
}

impl Probes {
    /// Load the programs, configure them and attach every tracepoint.
    pub fn load(capture_bytes: u32, filters: &Filters, ring_mode: RingMode) -> Result<(Self, Vec<RingBuf<MapData>>)> {
        if OBJECT.is_empty() {
            bail!("this agent binary was built without its kernel probes; build it with `cargo xtask build`");
        }
        if !has_capabilities() {
            bail!("the agent must run as root (or with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN) to load its probes");
        }
        // Needed on kernels before 5.11; EPERM under some lockdown setups, where it is not needed.
        let lim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        // SAFETY: valid pointer to an initialised rlimit.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
        ensure_tracefs()?;
        let btf = Btf::from_sys()?;
        let offsets = btf.kernel_offsets().context("reading kernel struct layout from BTF")?;

        let cpus = possible_cpus()?;
        if ring_mode == RingMode::PerCpu {
            if let Some(max) = cpus.iter().max() {
                if *max >= MAX_CPUS {
                    bail!("this host has CPU ids up to {max}; per-CPU ring buffers cover {MAX_CPUS}: use --ring-buffer shared");
                }
            }
        }
        let mut loader = EbpfLoader::new();
        // The fd table walk reads these as constants known to the verifier,
        // which lets it follow kernel pointers with plain loads.
        let fd_walk = [offsets.task_files, offsets.files_fdt, offsets.fdt_max_fds, offsets.fdt_fd];
        loader.override_global("FD_WALK", &fd_walk, true);
        loader.override_global("SYSCALL_ARGS", &offsets.regs_arg, true);
        if ring_mode == RingMode::PerCpu {
            // The shared ring is unused: keep it at one page.
            loader.map_max_entries("EVENTS", 4096);
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| anyhow!("loading the probe object failed: {e}"))?;

        let mut rings = Vec::new();
        let mut flags = 0u32;
        if ring_mode == RingMode::PerCpu {
            flags |= mode::PER_CPU_RINGS;
            let mut outer: ArrayOfMaps<_, MapData> =
                ArrayOfMaps::try_from(ebpf.map_mut("RINGS").context("map RINGS")?)?;
            for cpu in &cpus {
                let obj = aya_obj::Map::new_from_params(BPF_MAP_TYPE_RINGBUF, 0, 0, PER_CPU_RING_BYTES, 0);
                let data = MapData::create(obj, &format!("ring_cpu{cpu}"), None)
                    .with_context(|| format!("creating the ring buffer of CPU {cpu}"))?;
                outer.set(*cpu, &data, 0).with_context(|| format!("installing the ring buffer of CPU {cpu}"))?;
                rings.push(RingBuf::try_from(Map::RingBuf(data))?);
            }
        }
        {
            let mut pids: HashMap<_, u32, u8> = HashMap::try_from(ebpf.map_mut("PIDS").context("map PIDS")?)?;
            for p in &filters.allow_pids {
                pids.insert(p, filter::ALLOW, 0)?;
                flags |= filter::PID_ALLOW;
            }
            for p in &filters.deny_pids {
                pids.insert(p, filter::DENY, 0)?;
                flags |= filter::PID_DENY;
            }
        }
        {
            let mut comms: HashMap<_, [u8; 16], u8> = HashMap::try_from(ebpf.map_mut("COMMS").context("map COMMS")?)?;
            for c in &filters.allow_comms {
                comms.insert(comm_key(c), filter::ALLOW, 0)?;
                flags |= filter::COMM_ALLOW;
            }
            for c in &filters.deny_comms {
                comms.insert(comm_key(c), filter::DENY, 0)?;
                flags |= filter::COMM_DENY;
            }
        }
        {
            let mut ports: HashMap<_, u16, u8> = HashMap::try_from(ebpf.map_mut("PORTS").context("map PORTS")?)?;
            for p in &filters.allow_ports {
                ports.insert(p, filter::ALLOW, 0)?;
                flags |= filter::PORT_ALLOW;
            }
            for p in &filters.deny_ports {
                ports.insert(p, filter::DENY, 0)?;
                flags |= filter::PORT_DENY;
            }
        }
        {
            let mut cfg: Array<_, Config> = Array::try_from(ebpf.map_mut("CONFIG").context("map CONFIG")?)?;
            let c = Config {
                self_pid: std::process::id(),
                capture_bytes: capture_bytes.min(MAX_CAPTURE as u32),
                flags,
                _pad: 0,
                offsets,
            };
            cfg.set(0, c, 0)?;
        }

        // Every program in the object is a tracepoint named after it
        // (`sys_enter_read`, `sys_exit_read`, ..., `sched_process_exec`).
        // Exits go first: a send's entry parks its arguments for the exit,
        // so an entry must never run while its exit is not attached yet.
        let mut names: Vec<String> = ebpf.programs().map(|(name, _)| name.to_string()).collect();
        names.sort_by_key(|n| (n.starts_with("sys_enter_"), n.clone()));
        for name in &names {
            let prog: &mut TracePoint =
                ebpf.program_mut(name).with_context(|| format!("probe object has no program {name}"))?.try_into()?;
            prog.load().map_err(|e| anyhow!("loading probe {name} failed: {}", verifier_summary(&e)))?;
            let category = if name.starts_with("sched_") { "sched" } else { "syscalls" };
            prog.attach(category, name).map_err(|e| anyhow!("attaching tracepoint {category}/{name} failed: {e}"))?;
        }

        if ring_mode == RingMode::Shared {
            rings.push(RingBuf::try_from(ebpf.take_map("EVENTS").context("map EVENTS")?)?);
        }
        let counters = PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("map COUNTERS")?)?;
        Ok((Self { _ebpf: ebpf, counters }, rings))
    }

    pub fn counters(&self) -> KernelCounters {
        let sum = |idx: u32| -> u64 { self.counters.get(&idx, 0).map(|v| v.iter().sum()).unwrap_or(0) };
        KernelCounters {
            sent: sum(counter::SENT),
            lost: sum(counter::LOST),
            truncated: sum(counter::TRUNCATED),
            read_errors: sum(counter::READ_ERRORS),
        }
    }
}

/// Keep a verifier failure to its last meaningful lines.
fn verifier_summary(e: &aya::programs::ProgramError) -> String {
    let full = format!("{e:#}");
    if let Ok(path) = std::env::var("TRACER_VERIFIER_LOG") {
        let _ = std::fs::write(path, &full);
    }
    let lines: Vec<&str> = full.lines().collect();
    if lines.len() <= 6 {
        return full.replace('\n', " | ");
    }
    let tail = &lines[lines.len() - 6..];
    format!("{} | ... | {}", lines[0], tail.join(" | "))
}
