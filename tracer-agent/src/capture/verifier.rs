//! The kernel verifier's own figures for each probe program.
//!
//! A program that loads on one kernel can be rejected on another whose
//! limits are stricter (a JIT without private stacks, say), so a successful
//! load proves nothing about the margin. The verifier prints what it counted
//! (each frame's stack depth, the instructions it processed) only when asked
//! for statistics, and the loader keeps that log only on failure. So each
//! program is loaded once more here, by hand, with `BPF_LOG_STATS`, from the
//! same object and against the same maps as the probes in use; the copy is
//! closed at once and never attached.
//!
//! The combined stack of a program is worked out the way the verifier checks
//! it: its own frame plus the deepest chain of calls into subprograms, each
//! frame rounded up to 16 bytes, which must stay within 512 bytes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::Map;
use aya_obj::generated::bpf_insn;

/// Most stack any program may use, its deepest call chain included. The
/// kernel allows 512; the rest is margin for kernels that count differently.
pub const STACK_BUDGET: u32 = 384;
/// The kernel's own limit on a program's combined stack.
pub const KERNEL_STACK_LIMIT: u32 = 512;
/// Most instructions the verifier may walk for one program. The kernel
/// allows 1,000,000 (`BPF_COMPLEXITY_LIMIT_INSNS`); a program near that is
/// one compiler change away from rejection.
pub const PROCESSED_BUDGET: u64 = 200_000;
/// The kernel's limit on processed instructions.
pub const KERNEL_PROCESSED_LIMIT: u64 = 1_000_000;

/// What the verifier reported for one program.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: String,
    /// Instructions in the program, its subprograms included.
    pub insns: usize,
    /// Instructions the verifier walked (`processed N insns`).
    pub processed: u64,
    /// Stack depth of each frame in the verifier's order: the program, then
    /// its subprograms by position (`stack depth a+b+...`).
    pub frames: Vec<u32>,
    /// Own frame plus the deepest call chain, frames rounded up to 16.
    pub combined_stack: u32,
    /// Most verifier states alive at once (`peak_states`).
    pub peak_states: u64,
    /// Verification time in microseconds.
    pub verification_us: u64,
}

impl ProgramStats {
    /// Whether the figures stay inside the agent's own budgets.
    pub fn within_budget(&self) -> bool {
        self.combined_stack <= STACK_BUDGET && self.processed <= PROCESSED_BUDGET
    }
}

/// The figures found in a verifier log with `BPF_LOG_STATS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    pub frames: Vec<u32>,
    pub processed: u64,
    pub peak_states: u64,
    pub verification_us: u64,
}

/// Reads the statistics lines of a verifier log. `None` when the log has no
/// `processed` line (the statistics were not asked for, or it was cut).
pub fn parse_log(log: &str) -> Option<LogStats> {
    let mut out = LogStats::default();
    let mut seen = false;
    for line in log.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("stack depth ") {
            out.frames = rest.split('+').map(|d| d.trim().parse().ok()).collect::<Option<Vec<u32>>>()?;
        } else if let Some(rest) = line.strip_prefix("processed ") {
            let mut words = rest.split_whitespace();
            out.processed = words.next()?.parse().ok()?;
            seen = true;
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == "peak_states") {
                out.peak_states = words.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        } else if let Some(rest) = line.strip_prefix("verification time ") {
            out.verification_us = rest.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    seen.then_some(out)
}

/// The line of a verifier log that says why a program was rejected: the
/// last line that is neither a statistic nor an instruction trace.
pub fn deciding_line(log: &str) -> Option<&str> {
    log.lines().map(str::trim).rev().find(|l| {
        !l.is_empty()
            && !l.starts_with("processed ")
            && !l.starts_with("stack depth")
            && !l.starts_with("verification time")
            && !l.starts_with("max_states_per_insn")
            && !l.starts_with("; ")
            && !l.starts_with("from ")
            && !l.starts_with("mark_precise")
            && !l.as_bytes()[0].is_ascii_digit()
    })
}

const BPF_JMP: u8 = 0x05;
const BPF_CALL: u8 = 0x80;
const BPF_LD_IMM64: u8 = 0x18;
const BPF_PSEUDO_CALL: u8 = 1;
const BPF_PSEUDO_FUNC: u8 = 4;

/// Where each subprogram starts and which subprograms each one calls, from
/// the instructions as the kernel receives them (calls already relocated).
/// Subprograms are numbered as the verifier numbers them: by position.
pub fn call_graph(insns: &[bpf_insn]) -> (Vec<usize>, Vec<BTreeSet<usize>>) {
    let target = |pc: usize, imm: i32| (pc as i64 + imm as i64 + 1).max(0) as usize;
    let mut starts = BTreeSet::from([0usize]);
    let mut calls = Vec::new();
    for (pc, insn) in insns.iter().enumerate() {
        let pseudo = (insn.code == BPF_JMP | BPF_CALL && insn.src_reg() == BPF_PSEUDO_CALL)
            || (insn.code == BPF_LD_IMM64 && insn.src_reg() == BPF_PSEUDO_FUNC);
        if pseudo {
            let t = target(pc, insn.imm);
            starts.insert(t);
            calls.push((pc, t));
        }
    }
    let starts: Vec<usize> = starts.into_iter().collect();
    let owner = |pc: usize| starts.partition_point(|&s| s <= pc).saturating_sub(1);
    let mut edges = vec![BTreeSet::new(); starts.len()];
    for (pc, t) in calls {
        if let Ok(callee) = starts.binary_search(&t) {
            edges[owner(pc)].insert(callee);
        }
    }
    (starts, edges)
}

/// The largest stack along any chain of calls from the program's entry:
/// the sum of the frames on it, each rounded up to 16 bytes as the verifier
/// does for a JIT-compiled program.
pub fn combined_stack(frames: &[u32], edges: &[BTreeSet<usize>]) -> u32 {
    fn walk(
        i: usize,
        frames: &[u32],
        edges: &[BTreeSet<usize>],
        memo: &mut HashMap<usize, u32>,
        path: &mut HashSet<usize>,
    ) -> u32 {
        if let Some(v) = memo.get(&i) {
            return *v;
        }
        let own = frames.get(i).copied().unwrap_or(0).div_ceil(16) * 16;
        // The verifier refuses recursion; a cycle here adds nothing more.
        if !path.insert(i) {
            return own;
        }
        let deepest =
            edges.get(i).map(|c| c.iter().map(|&c| walk(c, frames, edges, memo, path)).max().unwrap_or(0)).unwrap_or(0);
        path.remove(&i);
        memo.insert(i, own + deepest);
        own + deepest
    }
    walk(0, frames, edges, &mut HashMap::new(), &mut HashSet::new())
}

/// How a program attaches, which decides how it is loaded.
#[derive(Clone, Copy, Debug)]
pub enum Attach<'a> {
    /// A BTF-typed tracepoint (`tp_btf/<name>`).
    BtfTracePoint(&'a str),
    /// A classic tracepoint.
    TracePoint,
    /// A uprobe (a kprobe-type program).
    UProbe,
    /// A cgroup sock_ops program.
    SockOps,
}

const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_TYPE_SOCK_OPS: u32 = 13;
const BPF_CGROUP_SOCK_OPS: u32 = 3;
const BPF_BTF_LOAD: i64 = 18;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_RAW_TP: u32 = 23;
const BPF_LOG_STATS: u32 = 4;

/// `union bpf_attr` as used by `BPF_PROG_LOAD` (uapi `linux/bpf.h`), up to
/// `log_true_size` (Linux 6.4); older kernels ignore what they do not know
/// only when it is zero, which it is unless they filled it themselves.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    core_relo_cnt: u32,
    fd_array: u64,
    core_relos: u64,
    core_relo_rec_size: u32,
    log_true_size: u32,
}

/// `union bpf_attr` as used by `BPF_BTF_LOAD`.
#[repr(C)]
#[derive(Default)]
struct BtfLoadAttr {
    btf: u64,
    btf_log_buf: u64,
    btf_size: u32,
    btf_log_size: u32,
    btf_log_level: u32,
    btf_log_true_size: u32,
}

fn sys_bpf<T>(cmd: i64, attr: &mut T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a live, fully initialised attribute block of the
    // size passed; the kernel only reads it (and writes log_true_size).
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a successful load returns a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// The file descriptor of one of the probes' maps.
fn map_fd(map: &Map) -> Option<BorrowedFd<'_>> {
    let data = match map {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::RingBuf(d)
        | Map::SkStorage(d)
        | Map::Unsupported(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd())
}

/// A second copy of the probe object, relocated against the maps of the
/// loaded one, from which programs are loaded with statistics.
pub struct StatsLoader {
    obj: aya_obj::Object,
    btf_fd: Option<OwnedFd>,
}

impl StatsLoader {
    /// Prepares `object` against the maps of `ebpf`, which was loaded from
    /// the same object (before any of its maps were taken out).
    pub fn new(object: &[u8], ebpf: &aya::Ebpf, kernel_btf: &aya::Btf) -> Result<Self> {
        let mut obj = aya_obj::Object::parse(object).map_err(|e| anyhow!("parsing the probe object: {e}"))?;
        let features = aya::features();
        let mut btf_fd = None;
        if let Some(bf) = features.btf() {
            if let Some(btf) = obj.fixup_and_sanitize_btf(bf).map_err(|e| anyhow!("preparing the object's BTF: {e}"))? {
                let bytes = btf.to_bytes();
                let mut attr =
                    BtfLoadAttr { btf: bytes.as_ptr() as u64, btf_size: bytes.len() as u32, ..Default::default() };
                btf_fd = Some(sys_bpf(BPF_BTF_LOAD, &mut attr).context("loading the object's BTF")?);
            }
        }
        obj.relocate_btf(kernel_btf).map_err(|e| anyhow!("relocating against the kernel's BTF: {e}"))?;
        let maps: Vec<(String, aya_obj::Map)> = obj.maps.drain().collect();
        let mut with_fds = Vec::new();
        for (name, m) in &maps {
            let Some(loaded) = ebpf.map(name) else {
                // A data section the loader did not create a map for.
                continue;
            };
            let fd =
                map_fd(loaded).with_context(|| format!("map {name} is of a kind the statistics load does not know"))?;
            with_fds.push((name.as_str(), fd.as_raw_fd(), m));
        }
        let text: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
        obj.relocate_maps(with_fds.into_iter(), &text).map_err(|e| anyhow!("relocating maps: {e}"))?;
        obj.relocate_calls(&text).map_err(|e| anyhow!("relocating calls: {e}"))?;
        obj.sanitize_functions(features);
        Ok(Self { obj, btf_fd })
    }

    /// Loads program `name` with verifier statistics and returns them. A
    /// rejection is an error that quotes the verifier's deciding line.
    pub fn measure(&self, name: &str, attach: Attach<'_>, kernel_btf: &aya::Btf) -> Result<ProgramStats> {
        let prog = self.obj.programs.get(name).with_context(|| format!("the probe object has no program {name}"))?;
        let f = self.obj.functions.get(&prog.function_key()).with_context(|| format!("program {name} has no code"))?;
        let mut attr = ProgLoadAttr {
            insns: f.instructions.as_ptr() as u64,
            insn_cnt: f.instructions.len() as u32,
            ..Default::default()
        };
        let license: &CString = &prog.license;
        attr.license = license.as_ptr() as u64;
        match attach {
            Attach::BtfTracePoint(tp) => {
                attr.prog_type = BPF_PROG_TYPE_TRACING;
                attr.expected_attach_type = BPF_TRACE_RAW_TP;
                attr.attach_btf_id = kernel_btf
                    .id_by_type_name_kind(&format!("btf_trace_{tp}"), aya_obj::btf::BtfKind::Typedef)
                    .map_err(|_| anyhow!("this kernel has no tracepoint {tp}"))?;
            }
            Attach::TracePoint => attr.prog_type = BPF_PROG_TYPE_TRACEPOINT,
            Attach::UProbe => attr.prog_type = BPF_PROG_TYPE_KPROBE,
            Attach::SockOps => {
                attr.prog_type = BPF_PROG_TYPE_SOCK_OPS;
                attr.expected_attach_type = BPF_CGROUP_SOCK_OPS;
            }
        }
        for (d, s) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s;
        }
        let func_info = f.func_info.func_info_bytes();
        let line_info = f.line_info.line_info_bytes();
        if let Some(btf) = &self.btf_fd {
            attr.prog_btf_fd = btf.as_raw_fd() as u32;
            if f.func_info_rec_size > 0 {
                attr.func_info = func_info.as_ptr() as u64;
                attr.func_info_cnt = f.func_info.len() as u32;
                attr.func_info_rec_size = f.func_info_rec_size as u32;
            }
            if f.line_info_rec_size > 0 {
                attr.line_info = line_info.as_ptr() as u64;
                attr.line_info_cnt = f.line_info.num_info;
                attr.line_info_rec_size = f.line_info_rec_size as u32;
            }
        }
        // The statistics are a few lines; a rejection's log can be long, and
        // the kernel keeps its end when the buffer is too small.
        let mut log = vec![0u8; 256 << 10];
        attr.log_level = BPF_LOG_STATS;
        attr.log_buf = log.as_mut_ptr() as u64;
        attr.log_size = log.len() as u32;
        let loaded = sys_bpf(BPF_PROG_LOAD, &mut attr);
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]).into_owned();
        if let Err(e) = loaded {
            // A rejection's log still has the figures the verifier reached.
            let figures = parse_log(&text)
                .map(|s| {
                    let frames: Vec<String> = s.frames.iter().map(u32::to_string).collect();
                    format!("; stack depth {}, {} insns processed", frames.join("+"), s.processed)
                })
                .unwrap_or_default();
            match deciding_line(&text) {
                Some(line) => bail!("the verifier rejected {name}: {line} ({e}{figures})"),
                None => bail!("the kernel refused to load {name}: {e}{figures}"),
            }
        }
        let stats = parse_log(&text).with_context(|| format!("the verifier gave no statistics for {name}"))?;
        let (_, edges) = call_graph(&f.instructions);
        Ok(ProgramStats {
            name: name.to_string(),
            insns: f.instructions.len(),
            processed: stats.processed,
            combined_stack: combined_stack(&stats.frames, &edges),
            frames: stats.frames,
            peak_states: stats.peak_states,
            verification_us: stats.verification_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REJECTED: &str = "Func#3 ('tracer_copy_iovecs') is safe for any args that match its prototype\n\
        combined stack size of 2 calls is 560. Too large\n\
        verification time 73130 usec\n\
        stack depth 448+0+0+104\n\
        processed 15029 insns (limit 1000000) max_states_per_insn 7 total_states 511 peak_states 387 mark_read 0\n";

    #[test]
    fn statistics_are_read_from_the_log() {
        let s = parse_log(REJECTED).unwrap();
        assert_eq!(s.frames, vec![448, 0, 0, 104]);
        assert_eq!(s.processed, 15029);
        assert_eq!(s.peak_states, 387);
        assert_eq!(s.verification_us, 73130);
        assert_eq!(parse_log("0: (b7) r0 = 0\n"), None);
        assert_eq!(parse_log("stack depth 8+x\nprocessed 3 insns\n"), None);
    }

    #[test]
    fn the_deciding_line_is_the_last_that_is_not_a_statistic() {
        assert_eq!(deciding_line(REJECTED), Some("combined stack size of 2 calls is 560. Too large"));
        let trace = "0: R1=ctx() R10=fp0\n; let x = 1;\n12: (85) call bpf_probe_read_user#112\nR2 min value is negative\nprocessed 12 insns (limit 1000000)\n";
        assert_eq!(deciding_line(trace), Some("R2 min value is negative"));
        assert_eq!(deciding_line(""), None);
    }

    fn insn(code: u8, src: u8, imm: i32) -> bpf_insn {
        let mut i = bpf_insn { code, imm, ..unsafe { std::mem::zeroed() } };
        i.set_src_reg(src);
        i
    }

    #[test]
    fn the_combined_stack_follows_the_deepest_call_chain() {
        // 0: call +2 (to 3); 1: call +4 (to 6); 2: exit; 3: call +1 (to 5); 4: exit; 5: exit; 6: exit.
        let exit = insn(0x95, 0, 0);
        let insns = vec![
            insn(BPF_JMP | BPF_CALL, BPF_PSEUDO_CALL, 2),
            insn(BPF_JMP | BPF_CALL, BPF_PSEUDO_CALL, 4),
            exit,
            insn(BPF_JMP | BPF_CALL, BPF_PSEUDO_CALL, 1),
            exit,
            exit,
            exit,
        ];
        let (starts, edges) = call_graph(&insns);
        assert_eq!(starts, vec![0, 3, 5, 6]);
        assert_eq!(edges[0], BTreeSet::from([1, 3]));
        assert_eq!(edges[1], BTreeSet::from([2]));
        // 0 → 1 → 2 is 100→112 + 8→16 + 40→48 = 176; 0 → 3 is 112 + 200→208 = 320.
        assert_eq!(combined_stack(&[100, 8, 40, 200], &edges), 320);
        assert_eq!(combined_stack(&[100, 8, 40, 10], &edges), 176);
        // A helper call (src 0) is no subprogram.
        let (starts, _) = call_graph(&[insn(BPF_JMP | BPF_CALL, 0, 112), exit]);
        assert_eq!(starts, vec![0]);
    }

    #[test]
    fn the_rejected_layout_of_the_issue_counts_as_the_kernel_said() {
        // The verifier's own figure for "448+0+0+104" with the last frame called from the first.
        let edges = vec![BTreeSet::from([1, 2, 3]), BTreeSet::new(), BTreeSet::new(), BTreeSet::new()];
        assert_eq!(combined_stack(&[448, 0, 0, 104], &edges), 560);
    }
}
