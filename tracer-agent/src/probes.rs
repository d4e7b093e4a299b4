//! Loading and attaching the kernel programs, and talking to their maps.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{of_maps::ArrayOfMaps, Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::Program,
    Ebpf, EbpfLoader,
};
use tracer_common::{counter, filter, mode, syscall, Config, MAX_CAPTURE, MAX_CPUS, PER_CPU_RING_BYTES};

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

/// This architecture's numbers of the syscalls whose buffers the probes
/// read, mapped to `tracer_common::syscall` ids.
fn syscall_ids() -> [u8; 512] {
    #[cfg(target_arch = "x86_64")]
    let numbers: &[(usize, u16)] = &[
        (0, syscall::READ),
        (1, syscall::WRITE),
        (19, syscall::READV),
        (20, syscall::WRITEV),
        (40, syscall::SENDFILE),
        (44, syscall::SENDTO),
        (45, syscall::RECVFROM),
        (46, syscall::SENDMSG),
        (47, syscall::RECVMSG),
    ];
    #[cfg(target_arch = "aarch64")]
    let numbers: &[(usize, u16)] = &[
        (63, syscall::READ),
        (64, syscall::WRITE),
        (65, syscall::READV),
        (66, syscall::WRITEV),
        (71, syscall::SENDFILE),
        (206, syscall::SENDTO),
        (207, syscall::RECVFROM),
        (211, syscall::SENDMSG),
        (212, syscall::RECVMSG),
    ];
    // Elsewhere the probes would not know where a buffer is: nothing is captured.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let numbers: &[(usize, u16)] = &[];
    let mut ids = [0u8; 512];
    for &(nr, id) in numbers {
        ids[nr] = id as u8;
    }
    ids
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
        // The parsed BTF is large; it is not kept while aya parses its own copy.
        drop(btf);

        let cpus = possible_cpus()?;
        if ring_mode == RingMode::PerCpu {
            if let Some(max) = cpus.iter().max() {
                if *max >= MAX_CPUS {
                    bail!("this host has CPU ids up to {max}; per-CPU ring buffers cover {MAX_CPUS}: use --ring-buffer shared");
                }
            }
        }
        let mut loader = EbpfLoader::new();
        // The probes read these as constants known to the verifier, which
        // lets them follow typed kernel pointers with plain loads.
        let sk_fields = [offsets.sk_family, offsets.sk_type, offsets.sk_protocol];
        let [a0, a1, a2] = offsets.regs_arg;
        let regs = [a0, a1, a2, offsets.regs_nr];
        let ids = syscall_ids();
        loader.override_global("SK_FIELDS", &sk_fields, true);
        loader.override_global("SYSCALL_REGS", &regs, true);
        loader.override_global("SYSCALL_IDS", &ids, true);
        // Per-thread and per-socket state live in local storage, map kinds
        // the loader creates but has no user-space type for (none is needed).
        loader.allow_unsupported_maps();
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

        // Every program in the object is named after the tracepoint it
        // attaches to: BTF-typed ones (`sock_recv_length`, ...) and the
        // classic `sched_process_exec`. The state change program goes first,
        // so that connections opened from then on get their roles.
        let mut names: Vec<String> = ebpf.programs().map(|(name, _)| name.to_string()).collect();
        names.sort_by_key(|n| (n != "inet_sock_set_state", n.clone()));
        let aya_btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
        for name in &names {
            match ebpf.program_mut(name).with_context(|| format!("probe object has no program {name}"))? {
                Program::BtfTracePoint(prog) => {
                    let attached = prog
                        .load(name, &aya_btf)
                        .map_err(|e| verifier_summary(&e))
                        .and_then(|()| prog.attach().map(drop).map_err(|e| e.to_string()));
                    match attached {
                        Ok(()) => {}
                        // Linux 6.16+; without it a send starts when it returns.
                        Err(e) if name == "tcp_sendmsg_locked" => {
                            eprintln!("tracer-agent: note: no tcp_sendmsg_locked tracepoint here ({e}); send start times are their end times")
                        }
                        Err(e) => {
                            bail!("attaching to tracepoint {name} failed (the probes need Linux 6.3 or newer): {e}")
                        }
                    }
                }
                Program::TracePoint(prog) => {
                    prog.load().map_err(|e| anyhow!("loading probe {name} failed: {}", verifier_summary(&e)))?;
                    prog.attach("sched", name).map_err(|e| anyhow!("attaching tracepoint sched/{name} failed: {e}"))?;
                }
                _ => bail!("probe {name} is of a kind this agent does not attach"),
            }
        }

        drop(aya_btf);
        // Hand the parsing buffers back to the system.
        // SAFETY: plain libc call without arguments to check.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::malloc_trim(0);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_table_maps_this_architectures_numbers() {
        let ids = syscall_ids();
        let mapped = ids.iter().filter(|&&id| id != 0).count();
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(ids[0], syscall::READ as u8);
            assert_eq!(ids[20], syscall::WRITEV as u8);
            assert_eq!(ids[45], syscall::RECVFROM as u8);
            assert_eq!(ids[3], 0, "close is not a data syscall");
            assert_eq!(mapped, 9);
        }
        #[cfg(target_arch = "aarch64")]
        {
            assert_eq!(ids[63], syscall::READ as u8);
            assert_eq!(ids[207], syscall::RECVFROM as u8);
            assert_eq!(mapped, 9);
        }
        let _ = mapped;
    }
}
