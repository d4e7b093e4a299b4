//! Loading and attaching the kernel programs, and talking to their maps.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{of_maps::ArrayOfMaps, Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::Program,
    Ebpf, EbpfLoader,
};
use tracer_common::{counter, filter, mode, syscall, Config, MAX_CAPTURE, MAX_CPUS, PER_CPU_RING_BYTES};

use crate::capture::btf::Btf;
use crate::capture::verifier::{self, Attach, ProgramStats, StatsLoader};

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tracer.bpf.o"));

/// How trace context travels to the agent on the next host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Carrier {
    /// Not at all: each host's spans link only among themselves.
    #[default]
    None,
    /// In a TCP header option on the segments of each request a traced
    /// process sends (any TCP traffic, TLS included; only between hosts
    /// that both run the agent).
    TcpOption,
}

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

/// Whether the agent can run without a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing works without it.
    Required,
    /// One of the data hooks: the agent runs while at least one of them is attached.
    Data,
    /// The agent runs without it; the text says what is lost.
    Optional(&'static str),
}

/// A kernel hook and the programs that can serve it, best first.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// The tracepoint (`sched/...` for a classic one, else a BTF-typed one).
    pub tracepoint: &'static str,
    /// Classic tracepoint category; `None` for BTF-typed tracepoints.
    pub category: Option<&'static str>,
    /// Program names in the object, in the order they are tried. A later
    /// one does less, and so asks less of the verifier.
    pub variants: &'static [&'static str],
    /// The oldest Linux version that has the tracepoint.
    pub since: (u32, u32),
    pub need: Need,
}

/// Every hook, in attach order: the state-change program goes first so
/// that connections opened from then on get their roles.
pub const HOOKS: &[Hook] = &[
    Hook {
        tracepoint: "inet_sock_set_state",
        category: None,
        variants: &["inet_sock_set_state"],
        since: (4, 16),
        need: Need::Required,
    },
    Hook {
        tracepoint: "sock_recv_length",
        category: None,
        variants: &["sock_recv_length", "sock_recv_length_first_iov"],
        since: (6, 3),
        need: Need::Data,
    },
    Hook {
        tracepoint: "sock_send_length",
        category: None,
        variants: &["sock_send_length", "sock_send_length_first_iov"],
        since: (6, 3),
        need: Need::Data,
    },
    Hook {
        tracepoint: "tcp_sendmsg_locked",
        category: None,
        variants: &["tcp_sendmsg_locked"],
        since: (6, 16),
        need: Need::Optional("a send's start time is the time it returned"),
    },
    Hook {
        tracepoint: "tcp_destroy_sock",
        category: None,
        variants: &["tcp_destroy_sock"],
        since: (4, 15),
        need: Need::Optional("connections end when idle rather than when closed"),
    },
    Hook {
        tracepoint: "sched_process_exec",
        category: Some("sched"),
        variants: &["sched_process_exec"],
        since: (2, 6),
        need: Need::Optional("a process that execs keeps the filter verdict of its old name"),
    },
    Hook {
        tracepoint: "sched_process_fork",
        category: None,
        variants: &["sched_process_fork"],
        since: (5, 5),
        need: Need::Optional("calls of a thread made by a request's thread are not linked to that request"),
    },
    Hook {
        tracepoint: "sched_process_exit",
        category: None,
        variants: &["sched_process_exit"],
        since: (5, 5),
        need: Need::Optional("calls of a thread made by a request's thread are not linked to that request"),
    },
];

/// A Go executable the function probes were attached to.
/// The Gin route tree layout of each process the Gin probe is attached to.
pub type GinLayouts =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u32, crate::runtimes::go::gin::GinLayout>>>;

/// Most processes with a Gin probe attached at once.
const MAX_GIN_PROCESSES: usize = 4096;

struct GoFile {
    bin: crate::runtimes::go::GoBinary,
    /// The goroutine-creation probes are attached too.
    goroutines: bool,
}

/// Loads the Go function probe (a uprobe, attached later per executable).
fn load_go_probe(ebpf: &mut Ebpf) -> Result<()> {
    let prog: &mut aya::programs::UProbe =
        ebpf.program_mut("go_probe").context("program go_probe")?.try_into().context("go_probe is a uprobe")?;
    prog.load().context("loading go_probe")?;
    Ok(())
}

/// What became of one program of a hook.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub program: &'static str,
    /// `Ok` when loaded and attached; else why not.
    pub result: std::result::Result<(), String>,
}

/// What became of one hook.
#[derive(Clone, Debug)]
pub struct HookReport {
    pub hook: Hook,
    /// The programs tried, in order; the last one succeeded if any did.
    pub attempts: Vec<Attempt>,
}

impl HookReport {
    /// The program attached to the hook, if any.
    pub fn attached(&self) -> Option<&'static str> {
        self.attempts.iter().find(|a| a.result.is_ok()).map(|a| a.program)
    }
}

/// How to load the probes.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub capture_bytes: u32,
    pub filters: Filters,
    pub ring_mode: RingMode,
    /// Programs treated as rejected without asking the kernel (a test switch
    /// for the fallback ladder).
    pub reject: Vec<String>,
    /// Also load every program of the object once more with the verifier's
    /// statistics (see `verifier`).
    pub verifier_stats: bool,
    pub carrier: Carrier,
}

impl LoadOptions {
    pub fn new(capture_bytes: u32, filters: Filters, ring_mode: RingMode) -> Self {
        Self { capture_bytes, filters, ring_mode, reject: Vec::new(), verifier_stats: false, carrier: Carrier::None }
    }
}

/// Where the cgroup v2 hierarchy is mounted (its root), from `/proc/mounts`.
fn cgroup2_root() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, ty) = (f.next()?, f.next()?, f.next()?);
        (ty == "cgroup2").then(|| std::path::PathBuf::from(dir))
    })
}

/// Loads the TCP option carrier and attaches it to the root cgroup, so
/// that it sees every TCP socket of the host (it acts only on those of
/// traced processes, and on segments that carry its option).
fn attach_carrier(ebpf: &mut Ebpf) -> Result<()> {
    let root = cgroup2_root().context("no cgroup v2 hierarchy is mounted (the TCP option carrier attaches to it)")?;
    let prog: &mut aya::programs::SockOps =
        ebpf.program_mut("carrier_ops").context("program carrier_ops")?.try_into()?;
    prog.load().context("loading the TCP option carrier")?;
    let cg = std::fs::File::open(&root).with_context(|| format!("opening {}", root.display()))?;
    // A link (kernels since 5.7) runs beside the cgroup's other programs
    // whatever the mode; link creation takes no attach flags.
    prog.attach(&cg, aya::programs::links::CgroupAttachMode::Single)
        .with_context(|| format!("attaching the TCP option carrier to {}", root.display()))?;
    Ok(())
}

pub struct Probes {
    _ebpf: Ebpf,
    /// The Go function probe is loaded (attached per executable).
    go_ready: bool,
    /// Why it is not, when it is not.
    pub go_error: Option<String>,
    /// Executables (device, inode) the Go probe was attached to, and what
    /// they are.
    go_files: std::collections::HashMap<(u64, u64), GoFile>,
    /// The probe on Gin's `ServeHTTP`, per process, until its routes are read.
    gin_links: std::collections::HashMap<u32, aya::programs::uprobe::UProbeLinkId>,
    /// Processes whose Gin probe came and went.
    gin_done: std::collections::HashSet<u32>,
    /// The Gin route tree layout of each process with the Gin probe, for
    /// the pipeline's route reader.
    pub gin_layouts: GinLayouts,
    counters: PerCpuArray<MapData, u64>,
    /// What was tried for each hook.
    pub hooks: Vec<HookReport>,
    /// The verifier's figures of every program in the object, when asked for.
    pub stats: Vec<(String, std::result::Result<ProgramStats, String>)>,
}

/// Capability bits the probes need (`linux/capability.h`).
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// This process's effective capability set (`CapEff`).
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Root, or the three capabilities loading the probes takes.
pub fn has_capabilities() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let need = (1u64 << CAP_SYS_ADMIN) | (1u64 << CAP_PERFMON) | (1u64 << CAP_BPF);
    effective_caps() & need == need
}

/// Make sure tracefs is mounted (for the classic tracepoint); mount it at
/// /sys/kernel/tracing if not.
fn ensure_tracefs() -> std::result::Result<(), String> {
    if Path::new("/sys/kernel/tracing/events/sched").exists()
        || Path::new("/sys/kernel/debug/tracing/events/sched").exists()
    {
        return Ok(());
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings.
    let rc = unsafe { libc::mount(c"tracefs".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(format!("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {err}"));
    }
    if !Path::new("/sys/kernel/tracing/events/sched").exists() {
        return Err("tracefs at /sys/kernel/tracing has no sched events".to_string());
    }
    Ok(())
}

/// The running kernel's version (major, minor), from `uname`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion(pub u32, pub u32);

impl KernelVersion {
    pub fn current() -> Option<Self> {
        Self::parse(&uname().release)
    }

    /// `6.18.44-fc-v1300` → 6.18.
    pub fn parse(release: &str) -> Option<Self> {
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self(major, minor))
    }
}

/// `uname` fields this agent reports.
pub struct Uname {
    pub release: String,
    pub version: String,
    pub machine: String,
}

pub fn uname() -> Uname {
    // SAFETY: uname fills the struct it is given.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    unsafe { libc::uname(&mut u) };
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Uname { release: field(&u.release), version: field(&u.version), machine: field(&u.machine) }
}

/// Loads and attaches `program` for `hook`; the error names the cause.
fn attach(
    ebpf: &mut Ebpf,
    hook: &Hook,
    program: &str,
    btf: &aya::Btf,
    kernel: Option<KernelVersion>,
) -> std::result::Result<(), String> {
    let prog = ebpf.program_mut(program).ok_or_else(|| format!("the probe object has no program {program}"))?;
    let tp = hook.tracepoint;
    let (major, minor) = hook.since;
    let too_old = kernel.is_some_and(|k| k < KernelVersion(major, minor));
    let missing = |what: String| {
        if too_old {
            format!("{what}: it was added in Linux {major}.{minor}, and this kernel is older")
        } else {
            format!("{what} (the kernel may be built without it)")
        }
    };
    match (prog, hook.category) {
        (Program::BtfTracePoint(p), None) => {
            p.load(tp, btf).map_err(|e| match e {
                aya::programs::ProgramError::Btf(aya::BtfError::UnknownBtfTypeName { .. }) => {
                    missing(format!("this kernel has no tracepoint {tp}"))
                }
                e => load_error(&e),
            })?;
            p.attach().map(drop).map_err(|e| format!("attaching to tracepoint {tp} failed: {e}"))
        }
        (Program::TracePoint(p), Some(category)) => {
            p.load().map_err(|e| load_error(&e))?;
            p.attach(category, tp).map(drop).map_err(|e| {
                let what = format!("attaching to tracepoint {category}/{tp} failed: {e}");
                if Path::new("/sys/kernel/tracing/events").join(category).join(tp).exists() {
                    what
                } else {
                    missing(what)
                }
            })
        }
        _ => Err(format!("program {program} is not of the kind its hook {tp} needs")),
    }
}

/// Why the kernel refused a program: the verifier's deciding line when it
/// gave one.
fn load_error(e: &aya::programs::ProgramError) -> String {
    if let aya::programs::ProgramError::LoadError { io_error, verifier_log } = e {
        let log = verifier_log.to_string();
        if let Ok(path) = std::env::var("TRACER_VERIFIER_LOG") {
            let _ = std::fs::write(path, &log);
        }
        return match verifier::deciding_line(&log) {
            Some(line) => format!("the kernel's verifier rejected it: {line} ({io_error})"),
            None if io_error.raw_os_error() == Some(libc::EPERM) => {
                format!("the kernel refused to load it without a verifier log ({io_error}): lockdown or a missing capability")
            }
            None => format!("the kernel refused to load it ({io_error})"),
        };
    }
    format!("{e:#}")
}

/// One warning per hook that could not use its first program.
fn warn_about(report: &HookReport) {
    let failed: Vec<&Attempt> = report.attempts.iter().filter(|a| a.result.is_err()).collect();
    if failed.is_empty() {
        return;
    }
    let why = failed
        .iter()
        .map(|a| format!("{}: {}", a.program, a.result.as_ref().err().map(String::as_str).unwrap_or("")))
        .collect::<Vec<_>>()
        .join("; ");
    match (report.attached(), report.hook.need) {
        (Some(p), _) => {
            eprintln!("tracer-agent: warning: using the simpler probe {p} for {} ({why})", report.hook.tracepoint)
        }
        (None, Need::Optional(lost)) => {
            eprintln!("tracer-agent: warning: no probe on {}, so {lost} ({why})", report.hook.tracepoint)
        }
        (None, Need::Data) => eprintln!(
            "tracer-agent: warning: no probe on {}: that direction is not captured ({why})",
            report.hook.tracepoint
        ),
        (None, Need::Required) => {}
    }
}

fn failures<'a>(hooks: impl Iterator<Item = &'a HookReport>) -> String {
    hooks
        .flat_map(|h| &h.attempts)
        .filter_map(|a| a.result.as_ref().err().map(|e| format!("{}: {e}", a.program)))
        .collect::<Vec<_>>()
        .join("; ")
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
    /// Load the programs, configure them and attach every hook, each with
    /// the first of its programs this kernel accepts. Fails only when the
    /// agent could not capture anything.
    pub fn load(opts: &LoadOptions) -> Result<(Self, Vec<RingBuf<MapData>>)> {
        let (probes, rings, fatal) = Self::try_load(opts)?;
        match fatal {
            Some(why) => Err(anyhow!(why)),
            None => Ok((probes, rings)),
        }
    }

    /// Like [`Probes::load`], but when the ladder leaves the agent unable to
    /// run, the probes are still returned (for their reports) with the reason.
    pub fn try_load(opts: &LoadOptions) -> Result<(Self, Vec<RingBuf<MapData>>, Option<String>)> {
        let (capture_bytes, filters, ring_mode) = (opts.capture_bytes, &opts.filters, opts.ring_mode);
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
        // Only the classic tracepoint needs tracefs; without it that hook is skipped.
        let tracefs = ensure_tracefs();
        let btf = Btf::from_sys()?;
        let offsets = btf.kernel_offsets().context("reading kernel struct layout from BTF")?;
        let go_regs = btf.go_regs().unwrap_or([0; 5]);
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
        let regs = [a0, a1, a2, offsets.regs_nr, offsets.regs_goroutine];
        let ids = syscall_ids();
        loader.override_global("SK_FIELDS", &sk_fields, true);
        loader.override_global("SYSCALL_REGS", &regs, true);
        loader.override_global("SYSCALL_IDS", &ids, true);
        loader.override_global("GO_REGS", &go_regs, true);
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
        if opts.carrier == Carrier::TcpOption {
            flags |= mode::CARRIER_TCP_OPTION;
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

        let aya_btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
        let kernel = KernelVersion::current();
        let mut hooks = Vec::new();
        for hook in HOOKS {
            let mut attempts = Vec::new();
            for &program in hook.variants {
                let result = if opts.reject.iter().any(|r| r == program) {
                    Err("rejected on purpose (--reject-program)".to_string())
                } else if let (Some(_), Err(e)) = (hook.category, &tracefs) {
                    Err(e.clone())
                } else {
                    attach(&mut ebpf, hook, program, &aya_btf, kernel)
                };
                let ok = result.is_ok();
                attempts.push(Attempt { program, result });
                if ok {
                    break;
                }
            }
            let report = HookReport { hook: *hook, attempts };
            warn_about(&report);
            hooks.push(report);
        }
        let mut fatal = None;
        if hooks.iter().filter(|h| h.hook.need == Need::Data).all(|h| h.attached().is_none()) {
            let why = failures(hooks.iter().filter(|h| h.hook.need == Need::Data));
            fatal = Some(format!("no probe can capture socket data on this kernel: {why}"));
        }
        if let Some(h) = hooks.iter().find(|h| h.hook.need == Need::Required && h.attached().is_none()) {
            fatal =
                Some(format!("the probes cannot run without {}: {}", h.hook.tracepoint, failures(std::iter::once(h))));
        }

        let mut stats = Vec::new();
        if opts.verifier_stats {
            match StatsLoader::new(OBJECT, &ebpf, &aya_btf) {
                Ok(l) => {
                    for hook in HOOKS {
                        let how = match hook.category {
                            Some(_) => Attach::TracePoint,
                            None => Attach::BtfTracePoint(hook.tracepoint),
                        };
                        for &program in hook.variants {
                            stats.push((
                                program.to_string(),
                                l.measure(program, how, &aya_btf).map_err(|e| format!("{e:#}")),
                            ));
                        }
                    }
                    stats.push((
                        "go_probe".to_string(),
                        l.measure("go_probe", Attach::UProbe, &aya_btf).map_err(|e| format!("{e:#}")),
                    ));
                    stats.push((
                        "carrier_ops".to_string(),
                        l.measure("carrier_ops", Attach::SockOps, &aya_btf).map_err(|e| format!("{e:#}")),
                    ));
                }
                Err(e) => stats.push(("*".to_string(), Err(format!("{e:#}")))),
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
        if opts.carrier == Carrier::TcpOption {
            attach_carrier(&mut ebpf)?;
        }
        // The Go function probe is loaded now and attached per executable.
        let go = if go_regs == [0; 5] {
            Err("the kernel's pt_regs has no Go registers".to_string())
        } else {
            load_go_probe(&mut ebpf).map_err(|e| format!("{e:#}"))
        };
        if let Err(e) = &go {
            eprintln!("tracer-agent: warning: Go programs get no function probes (their calls stay unlinked): {e}");
        }
        let go_ready = go.is_ok();
        let go_error = go.err();
        Ok((
            Self {
                _ebpf: ebpf,
                counters,
                hooks,
                stats,
                go_ready,
                go_error,
                go_files: Default::default(),
                gin_links: Default::default(),
                gin_done: Default::default(),
                gin_layouts: Default::default(),
            },
            rings,
            fatal,
        ))
    }

    /// Attaches the Go function probes to the executable of process `pid`
    /// if it is a Go program not attached yet (every process running that
    /// file is covered): the net/http probes always, the probes on
    /// goroutine creation when `goroutines` (they cost two probe hits per
    /// goroutine made, so they are attached only where calls were seen from
    /// goroutines the agent could not place). Returns what the executable
    /// is, when it is Go.
    pub fn attach_go(&mut self, pid: u32, goroutines: bool) -> Option<crate::runtimes::go::GoBinary> {
        use std::os::unix::fs::MetadataExt;
        use tracer_common::go_probe;
        if !self.go_ready {
            return None;
        }
        let exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
        let meta = std::fs::metadata(&exe).ok()?;
        let key = (meta.dev(), meta.ino());
        let (points, bin) = match self.go_files.get_mut(&key) {
            Some(f) if f.goroutines || !goroutines => (Vec::new(), f.bin.clone()),
            Some(f) => {
                f.goroutines = true;
                let points: Vec<_> = f
                    .bin
                    .points
                    .iter()
                    .filter(|p| matches!(p.kind, go_probe::NEWPROC | go_probe::NEWPROC_RET))
                    .copied()
                    .collect();
                (points, f.bin.clone())
            }
            None => {
                let bin = crate::runtimes::go::inspect(&exe)?;
                eprintln!("tracer-agent: Go program {pid}: {}", bin.summary());
                let points: Vec<_> = bin
                    .points
                    .iter()
                    .filter(|p| goroutines || !matches!(p.kind, go_probe::NEWPROC | go_probe::NEWPROC_RET))
                    .filter(|p| p.kind != go_probe::GIN_SERVE)
                    .copied()
                    .collect();
                self.go_files.insert(key, GoFile { bin: bin.clone(), goroutines });
                (points, bin)
            }
        };
        let prog: &mut aya::programs::UProbe = self._ebpf.program_mut("go_probe")?.try_into().ok()?;
        for p in &points {
            let point = aya::programs::uprobe::UProbeAttachPoint {
                location: aya::programs::uprobe::UProbeAttachLocation::AbsoluteOffset(p.offset),
                cookie: Some(p.cookie),
            };
            if let Err(e) = prog.attach(point, &exe, aya::programs::uprobe::UProbeScope::AllProcesses) {
                eprintln!("tracer-agent: warning: attaching a Go probe to {} failed: {e}", exe.display());
            }
        }
        // Gin's ServeHTTP gets a probe of this process only, until the
        // pipeline has read the engine's routes ([`Probes::gin_done`]).
        let gin = bin.points.iter().find(|p| p.kind == go_probe::GIN_SERVE);
        if let (Some(p), Some((layout, _)), Some(one)) = (gin, bin.gin_layout(), std::num::NonZeroU32::new(pid)) {
            if !self.gin_links.contains_key(&pid)
                && !self.gin_done.contains(&pid)
                && self.gin_links.len() < MAX_GIN_PROCESSES
            {
                let point = aya::programs::uprobe::UProbeAttachPoint {
                    location: aya::programs::uprobe::UProbeAttachLocation::AbsoluteOffset(p.offset),
                    cookie: Some(p.cookie),
                };
                match prog.attach(point, &exe, aya::programs::uprobe::UProbeScope::OneProcess(one)) {
                    Ok(link) => {
                        self.gin_links.insert(pid, link);
                        if let Ok(mut l) = self.gin_layouts.lock() {
                            l.insert(pid, layout);
                        }
                    }
                    Err(e) => eprintln!("tracer-agent: warning: attaching the Gin probe to process {pid} failed: {e}"),
                }
            }
        }
        Some(bin)
    }

    /// Process `pid` runs a program whose threads do not stand for
    /// requests (Go): with a carrier, its calls carry no context.
    pub fn no_carry(&mut self, pid: u32) {
        let Some(map) = self._ebpf.map_mut("NO_CARRY") else { return };
        let Ok(mut m) = HashMap::<_, u32, u8>::try_from(map) else { return };
        let _ = m.insert(pid, 1, 0);
    }

    /// The pipeline is done with the Gin probe of process `pid` (its
    /// routes are read, or cannot be): detached, and not attached again.
    pub fn gin_done(&mut self, pid: u32) {
        if self.gin_done.len() >= 65_536 {
            self.gin_done.clear();
        }
        self.gin_done.insert(pid);
        if let Ok(mut l) = self.gin_layouts.lock() {
            l.remove(&pid);
        }
        let Some(link) = self.gin_links.remove(&pid) else { return };
        let Some(prog) = self._ebpf.program_mut("go_probe") else { return };
        let Ok(prog): Result<&mut aya::programs::UProbe, _> = prog.try_into() else { return };
        match prog.detach(link) {
            Ok(()) => eprintln!("tracer-agent: Go program {pid}: Gin probe detached"),
            Err(e) => eprintln!("tracer-agent: warning: detaching the Gin probe of process {pid} failed: {e}"),
        }
    }

    /// Programs that failed to load or attach on this host (each one a step
    /// down the ladder, or a hook left out).
    pub fn fallbacks(&self) -> u64 {
        self.hooks.iter().flat_map(|h| &h.attempts).filter(|a| a.result.is_err()).count() as u64
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_compare_by_major_then_minor() {
        assert_eq!(KernelVersion::parse("6.18.44-fc-v1300"), Some(KernelVersion(6, 18)));
        assert_eq!(KernelVersion::parse("5.4.0-150-generic"), Some(KernelVersion(5, 4)));
        assert_eq!(KernelVersion::parse("6"), None);
        assert!(KernelVersion(5, 19) < KernelVersion(6, 3));
        assert!(KernelVersion(6, 16) > KernelVersion(6, 3));
    }

    #[test]
    fn every_hook_has_variants_and_a_data_hook_exists() {
        assert!(HOOKS.iter().all(|h| !h.variants.is_empty()));
        assert_eq!(HOOKS.iter().filter(|h| h.need == Need::Data).count(), 2);
        assert_eq!(HOOKS[0].tracepoint, "inet_sock_set_state", "roles are known before data flows");
    }

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
