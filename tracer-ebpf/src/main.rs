//! Kernel programs: socket I/O capture on syscall tracepoints.
//!
//! Sends are handled in two halves. The `sys_enter_*` half applies the cheap
//! filters (own process, a per-process verdict for the pid/comm allow and
//! deny lists), resolves the file descriptor to a TCP socket and parks the
//! call's arguments in `ACTIVE`; the `sys_exit_*` half copies the first
//! `capture_bytes` of the payload into a per-CPU scratch event and writes it
//! to the ring buffer. Receives need only their `sys_exit_*` program: the
//! arguments are read back from the task's saved registers.
//!
//! An fd is resolved by walking `task->files` with offsets read from the
//! running kernel's BTF, down to the `struct file`; `SOCKS` keeps, per
//! (process, fd), the socket behind that file (addresses, role, port-filter
//! verdict, process name), so the walk from the file to the socket happens
//! once per connection. Records are written without waking the reader (user
//! space drains on a short timer), so no event ever causes a wake-up.
#![no_std]
#![no_main]
#![allow(clippy::missing_safety_doc)]

use aya_ebpf::{
    btf_maps::{ArrayOfMaps, RingBuf as CpuRing},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_smp_processor_id,
        bpf_ktime_get_ns, generated,
    },
    macros::{btf_map, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
    EbpfContext,
};
use tracer_common::{
    counter, filter, mode, role, syscall, Config, EventHeader, EventKind, SockInfo, AF_INET, AF_INET6, HEADER_SIZE,
    MAX_CAPTURE, MAX_CPUS, MAX_IOV, PER_CPU_RING_BYTES, SHARED_RING_BYTES,
};

const BPF_RB_NO_WAKEUP: u64 = 1;
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: u16 = 1;
const EINPROGRESS: i64 = 115;

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// The shared ring buffer (the agent shrinks it to a page when the per-CPU
/// rings are in use).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(SHARED_RING_BYTES, 0);
/// One ring buffer per CPU, created and inserted by the agent: producers on
/// different CPUs never contend for a ring's lock.
#[btf_map]
static RINGS: ArrayOfMaps<CpuRing<u8, { PER_CPU_RING_BYTES as usize }>, { MAX_CPUS as usize }> = ArrayOfMaps::new();
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
/// In-flight sends, by pid_tgid. Every entry is removed by the syscall's
/// exit, so a plain hash map (cheaper than an LRU one) cannot fill up.
#[map]
static ACTIVE: HashMap<u64, ActiveIo> = HashMap::with_max_entries(16384, 0);
/// Role of sockets whose accept/connect was seen, by socket inode.
#[map]
static ROLES: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);
/// Sockets of traced processes by (tgid << 32 | fd), checked against the
/// fd table's `struct file` pointer on every use: a hit saves the walk from
/// the file to the socket, its addresses and the filters.
#[map]
static SOCKS: LruHashMap<u64, CachedSock> = LruHashMap::with_max_entries(65536, 0);
/// The agent's own connections as (local port << 16 | remote port): the
/// other end of these (e.g. a local collector receiving our exports) is not
/// traced. Keyed by both ports, since the same local port can serve other
/// connections to other destinations at the same time.
#[map]
static SELF_PORTS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn port_pair(local: u16, remote: u16) -> u32 {
    ((local as u32) << 16) | remote as u32
}
/// Process filter verdicts by tgid (1 = traced), dropped when the process
/// execs (its name may change) or its main thread exits (the pid may be
/// reused).
#[map]
static VERDICTS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);
#[map]
static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);
#[map]
static COMMS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(256, 0);
#[map]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

/// Per-CPU scratch: the event being assembled. The payload area is twice the
/// capture limit so that every masked copy stays inside it.
#[repr(C)]
struct Scratch {
    header: EventHeader,
    payload: [u8; MAX_CAPTURE * 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ActiveIo {
    ts_enter: u64,
    /// Plain buffer, or iovec array when `iov_len` > 0.
    buf: u64,
    iov_len: u64,
    fd: i32,
    kind: u32,
    syscall: u16,
    _pad: [u16; 3],
    comm: [u8; 16],
    sock: SockInfo,
}

/// `CachedSock::wanted` of a socket whose port filters are not applied yet.
const UNCHECKED: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
struct CachedSock {
    file: u64,
    comm: [u8; 16],
    /// Passed the port filters (1), failed them (0), or `UNCHECKED`.
    wanted: u8,
    _pad: [u8; 7],
    sock: SockInfo,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

#[inline(always)]
fn bump(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

#[inline(always)]
unsafe fn rk<T: Copy>(addr: u64) -> Option<T> {
    aya_ebpf::helpers::bpf_probe_read_kernel(addr as *const T).ok()
}

/// The process's name: the comm of its main thread (threads often rename
/// themselves, e.g. a runtime's worker threads).
#[inline(always)]
fn process_comm(cfg: &Config) -> [u8; 16] {
    let o = &cfg.offsets;
    let task = unsafe { bpf_get_current_task() };
    let leader: Option<u64> = unsafe { rk(task + o.task_group_leader as u64) };
    match leader.and_then(|l| unsafe { rk::<[u8; 16]>(l + o.task_comm as u64) }) {
        Some(c) => c,
        None => bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// Process-level filters: own pid, pid and comm allow/deny lists. The
/// verdict is kept per process until it execs or exits.
#[inline(always)]
fn process_wanted(cfg: &Config, tgid: u32) -> bool {
    if tgid == cfg.self_pid || tgid == 0 {
        return false;
    }
    if cfg.flags & (filter::PID_ALLOW | filter::PID_DENY | filter::COMM_ALLOW | filter::COMM_DENY) == 0 {
        return true;
    }
    if let Some(v) = unsafe { VERDICTS.get(&tgid) } {
        return *v != 0;
    }
    let wanted = process_filters(cfg, tgid);
    let _ = VERDICTS.insert(&tgid, &(wanted as u8), 0);
    wanted
}

#[inline(always)]
fn process_filters(cfg: &Config, tgid: u32) -> bool {
    if cfg.flags & (filter::PID_ALLOW | filter::PID_DENY) != 0 {
        match unsafe { PIDS.get(&tgid) } {
            Some(v) if *v == filter::DENY => return false,
            Some(_) => {}
            None if cfg.flags & filter::PID_ALLOW != 0 => return false,
            None => {}
        }
    }
    if cfg.flags & (filter::COMM_ALLOW | filter::COMM_DENY) != 0 {
        return match unsafe { COMMS.get(&process_comm(cfg)) } {
            Some(v) => *v != filter::DENY,
            None => cfg.flags & filter::COMM_ALLOW == 0,
        };
    }
    true
}

#[inline(always)]
fn port_wanted(cfg: &Config, s: &SockInfo) -> bool {
    // Seen from the peer of one of the agent's connections, the ports are swapped.
    if unsafe { SELF_PORTS.get(&port_pair(s.rport, s.lport)) }.is_some() {
        return false;
    }
    if cfg.flags & (filter::PORT_ALLOW | filter::PORT_DENY) == 0 {
        return true;
    }
    let l: u32 = match unsafe { PORTS.get(&s.lport) } {
        Some(v) => *v as u32,
        None => 0,
    };
    let r: u32 = match unsafe { PORTS.get(&s.rport) } {
        Some(v) => *v as u32,
        None => 0,
    };
    if l == filter::DENY as u32 || r == filter::DENY as u32 {
        return false;
    }
    if cfg.flags & filter::PORT_ALLOW != 0 {
        return l == filter::ALLOW as u32 || r == filter::ALLOW as u32;
    }
    true
}

/// Offsets of `task_struct.files`, `files_struct.fdt`, `fdtable.max_fds` and
/// `fdtable.fd`, written by the agent before loading. Being read-only data,
/// the verifier knows their values, so the walk below can follow the typed
/// task pointer with plain loads instead of one helper call per field.
#[unsafe(no_mangle)]
static FD_WALK: [u32; 4] = [0; 4];

#[inline(always)]
fn fd_walk(i: usize) -> usize {
    unsafe { core::ptr::read_volatile(&FD_WALK[i]) as usize }
}

/// Offsets of a syscall's first three arguments in `struct pt_regs`
/// (`KernelOffsets::regs_arg`), read-only like `FD_WALK`.
#[unsafe(no_mangle)]
static SYSCALL_ARGS: [u32; 3] = [0; 3];

/// Argument `i` (< 3) of the current syscall, from the task's saved user
/// registers: still there when the syscall returns.
#[inline(always)]
fn saved_arg(i: usize) -> u64 {
    unsafe {
        let off = core::ptr::read_volatile(&SYSCALL_ARGS[i]) as usize;
        let regs = generated::bpf_task_pt_regs(generated::bpf_get_current_task_btf()) as *const u8;
        *(regs.add(off) as *const u64)
    }
}

/// The `struct file` behind `fd` in the current task's fd table.
#[inline(always)]
unsafe fn fd_file(fd: i32) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    let task = generated::bpf_get_current_task_btf() as *const u8;
    let files = *(task.add(fd_walk(0)) as *const *const u8);
    if files.is_null() {
        return None;
    }
    let fdt = *(files.add(fd_walk(1)) as *const *const u8);
    if fdt.is_null() {
        return None;
    }
    let max_fds = *(fdt.add(fd_walk(2)) as *const u32);
    if fd as u32 >= max_fds {
        return None;
    }
    let fd_array = *(fdt.add(fd_walk(3)) as *const u64);
    let file: u64 = rk(fd_array + (fd as u64) * 8)?;
    if file == 0 {
        return None;
    }
    Some(file)
}

/// The IPv4/IPv6 stream socket behind `file`, if it is one.
#[inline(always)]
unsafe fn file_socket(cfg: &Config, file: u64) -> Option<SockInfo> {
    let o = &cfg.offsets;
    let inode: u64 = rk(file + o.file_inode as u64)?;
    let mode: u16 = rk(inode + o.inode_mode as u64)?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket: u64 = rk(file + o.file_private_data as u64)?;
    let stype: u16 = rk(socket + o.socket_type as u64)?;
    if stype != SOCK_STREAM {
        return None;
    }
    let sk: u64 = rk(socket + o.socket_sk as u64)?;
    let family: u16 = rk(sk + o.sk_family as u64)?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let mut s = SockInfo::zeroed();
    s.ino = rk(inode + o.inode_ino as u64)?;
    s.family = family;
    s.lport = rk(sk + o.sk_num as u64)?;
    s.rport = u16::from_be(rk(sk + o.sk_dport as u64)?);
    if family == AF_INET {
        let l: u32 = rk(sk + o.sk_rcv_saddr as u64)?;
        let r: u32 = rk(sk + o.sk_daddr as u64)?;
        s.laddr = v4(l);
        s.raddr = v4(r);
    } else {
        s.laddr = rk(sk + o.sk_v6_rcv_saddr as u64)?;
        s.raddr = rk(sk + o.sk_v6_daddr as u64)?;
    }
    s.role = ROLES.get(&s.ino).copied().unwrap_or(role::UNKNOWN);
    Some(s)
}

/// Resolve `fd` of the current task to a TCP (IPv4/IPv6 stream) socket.
#[inline(always)]
unsafe fn tcp_socket(cfg: &Config, fd: i32) -> Option<SockInfo> {
    file_socket(cfg, fd_file(fd)?)
}

#[inline(always)]
fn sock_key(tgid: u32, fd: i32) -> u64 {
    ((tgid as u64) << 32) | fd as u32 as u64
}

/// `fd` of a traced process as a TCP socket, from `SOCKS` when the fd still
/// holds the same file, else resolved, filtered by port and cached.
#[inline(always)]
fn traced_socket(cfg: &Config, tgid: u32, fd: i32) -> Option<CachedSock> {
    let file = unsafe { fd_file(fd) }?;
    let key = sock_key(tgid, fd);
    if let Some(c) = unsafe { SOCKS.get(&key) } {
        if c.file == file {
            if c.wanted != UNCHECKED {
                return Some(*c);
            }
            // Cached at accept/connect: the port filters are applied at the
            // first data, once the agent's own end of a local connection is
            // known for sure.
            let mut c = *c;
            c.wanted = port_wanted(cfg, &c.sock) as u8;
            let _ = SOCKS.insert(&key, &c, 0);
            return Some(c);
        }
    }
    let sock = unsafe { file_socket(cfg, file) }?;
    let c = CachedSock { file, comm: process_comm(cfg), wanted: port_wanted(cfg, &sock) as u8, _pad: [0; 7], sock };
    let _ = SOCKS.insert(&key, &c, 0);
    Some(c)
}

/// The iovec array and its length of a `struct user_msghdr` in user memory
/// (`{ void *msg_name; int msg_namelen; struct iovec *msg_iov; size_t msg_iovlen; ... }`).
#[inline(always)]
fn msg_iov(msghdr: u64) -> (u64, u64) {
    let read = |off: u64| unsafe { aya_ebpf::helpers::bpf_probe_read_user((msghdr + off) as *const u64) }.unwrap_or(0);
    (read(16), read(24))
}

/// Syscall argument `n` (0-based) of a `sys_enter_*` tracepoint, or the
/// return value (`n` = 0) of a `sys_exit_*` one.
#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> i64 {
    // Tracepoint records are readable in place: 8 bytes of common fields,
    // then the syscall number, then the arguments.
    unsafe { *(ctx.as_ptr().add(16 + n * 8) as *const i64) }
}

#[inline(always)]
fn v4(a: u32) -> [u8; 16] {
    let b = a.to_ne_bytes();
    [b[0], b[1], b[2], b[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

#[inline(always)]
fn header(kind: EventKind, sc: u16, ts_enter: u64, fd: i32, ret: i64, comm: [u8; 16], sock: &SockInfo) -> EventHeader {
    let id = bpf_get_current_pid_tgid();
    EventHeader {
        kind: kind as u32,
        syscall: sc,
        _pad0: 0,
        ts_enter,
        ts_exit: unsafe { bpf_ktime_get_ns() },
        pid: (id >> 32) as u32,
        tid: id as u32,
        fd,
        captured: 0,
        ret,
        comm,
        sock: *sock,
    }
}

/// Write one record without waking the reader: the agent drains the rings
/// on a short timer and never waits for a wake-up.
#[inline(always)]
fn output(cfg: &Config, bytes: &[u8]) {
    let ok = if cfg.flags & mode::PER_CPU_RINGS != 0 {
        let cpu = unsafe { bpf_get_smp_processor_id() };
        match RINGS.get(cpu) {
            Some(ring) => ring.output_untyped::<[u8]>(bytes, BPF_RB_NO_WAKEUP).is_ok(),
            None => false,
        }
    } else {
        EVENTS.output::<[u8]>(bytes, BPF_RB_NO_WAKEUP).is_ok()
    };
    bump(if ok { counter::SENT } else { counter::LOST });
}

#[inline(always)]
fn emit_header(cfg: &Config, h: &EventHeader) {
    // SAFETY: EventHeader is plain old data.
    let bytes = unsafe { core::slice::from_raw_parts(h as *const EventHeader as *const u8, HEADER_SIZE) };
    output(cfg, bytes);
}

// ---------------------------------------------------------------- data path

#[inline(always)]
fn enter_io(ctx: &TracePointContext, sc: u16, iov: bool, msg: bool) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !process_wanted(cfg, tgid) {
        return 0;
    }
    let fd = arg(ctx, 0) as i32;
    let Some(cached) = traced_socket(cfg, tgid, fd) else { return 0 };
    if cached.wanted == 0 {
        return 0;
    }
    let arg1 = arg(ctx, 1) as u64;
    let arg2 = arg(ctx, 2) as u64;
    let sendfile = sc == syscall::SENDFILE;
    let (buf, iov_len) = if sendfile {
        // Payload comes from a file: only its length is reported.
        (0, 0)
    } else if msg {
        msg_iov(arg1)
    } else if iov {
        (arg1, arg2)
    } else {
        (arg1, 0)
    };
    if buf == 0 && !sendfile {
        return 0;
    }
    if (iov || msg) && iov_len == 0 {
        return 0;
    }
    let a = ActiveIo {
        ts_enter: unsafe { bpf_ktime_get_ns() },
        buf,
        iov_len,
        fd,
        kind: EventKind::Send as u32,
        syscall: sc,
        _pad: [0; 3],
        comm: cached.comm,
        sock: cached.sock,
    };
    let _ = ACTIVE.insert(&id, &a, 0);
    0
}

#[inline(always)]
fn exit_io<const IOV: bool>(ctx: &TracePointContext, sc: u16) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(a) = (unsafe { ACTIVE.get(&id) }).copied() else { return 0 };
    let _ = ACTIVE.remove(&id);
    // Only this syscall's own entry counts: one left by a call whose exit
    // was missed (say, while the probes were being attached) is dropped.
    if a.syscall != sc {
        return 0;
    }
    let ret = arg(ctx, 0);
    if ret <= 0 {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    emit_data::<IOV>(cfg, &a, ret)
}

/// Receives are handled when they return, in one program: the arguments
/// are still in the task's saved registers, and the time a receive started
/// waiting says nothing about the data, so there is nothing to keep from
/// the syscall's entry.
#[inline(always)]
fn recv_exit<const IOV: bool>(ctx: &TracePointContext, sc: u16, msg: bool) -> u32 {
    let ret = arg(ctx, 0);
    if ret <= 0 {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !process_wanted(cfg, tgid) {
        return 0;
    }
    let fd = saved_arg(0);
    let buf = saved_arg(1);
    let Some(cached) = traced_socket(cfg, tgid, fd as i32) else { return 0 };
    if cached.wanted == 0 {
        return 0;
    }
    let (buf, iov_len) = if msg {
        msg_iov(buf)
    } else if IOV {
        (buf, saved_arg(2))
    } else {
        (buf, 0)
    };
    if buf == 0 || (IOV && iov_len == 0) {
        return 0;
    }
    let a = ActiveIo {
        ts_enter: unsafe { bpf_ktime_get_ns() },
        buf,
        iov_len,
        fd: fd as i32,
        kind: EventKind::Recv as u32,
        syscall: sc,
        _pad: [0; 3],
        comm: cached.comm,
        sock: cached.sock,
    };
    emit_data::<IOV>(cfg, &a, ret)
}

/// Copy the payload of a finished data syscall and write the event.
#[inline(always)]
fn emit_data<const IOV: bool>(cfg: &Config, a: &ActiveIo, ret: i64) -> u32 {
    let Some(kind) = EventKind::from_u32(a.kind) else { return 0 };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else { return 0 };
    let scratch = unsafe { &mut *scratch };
    let limit = if (cfg.capture_bytes as usize) < MAX_CAPTURE { cfg.capture_bytes as u64 } else { MAX_CAPTURE as u64 };
    let want = if (ret as u64) < limit { ret as u64 } else { limit };
    // Only the vectored syscalls carry the iovec walk, which is what makes
    // their programs slow to verify.
    let captured = if a.buf == 0 {
        0
    } else if !IOV {
        copy_user(scratch, 0, a.buf, want)
    } else {
        copy_iov(scratch, a.buf, a.iov_len, want)
    };
    if a.buf != 0 && (captured as i64) < ret {
        bump(counter::TRUNCATED);
    }
    // The header (and its exit time) is made after the copy, right before
    // the write: the agent merges per-CPU rings by this time.
    scratch.header = header(kind, a.syscall, a.ts_enter, a.fd, ret, a.comm, &a.sock);
    scratch.header.captured = captured as u32;
    let len = HEADER_SIZE + (captured as usize & (MAX_CAPTURE * 2 - 1));
    let total = if len > HEADER_SIZE + MAX_CAPTURE { HEADER_SIZE + MAX_CAPTURE } else { len };
    let bytes = unsafe { core::slice::from_raw_parts(scratch as *const Scratch as *const u8, total) };
    output(cfg, bytes);
    0
}

/// Copy `n` user bytes from `src` to `payload[off..]`; returns bytes copied.
#[inline(always)]
fn copy_user(s: &mut Scratch, off: u64, src: u64, n: u64) -> u64 {
    // The masks are for the verifier, which cannot follow the arithmetic
    // that bounds these values; opaque() keeps the compiler from dropping
    // them as redundant.
    let off = opaque(off) & (MAX_CAPTURE as u64 - 1);
    let n = opaque(n) & (MAX_CAPTURE as u64 * 2 - 1);
    if n == 0 || n > MAX_CAPTURE as u64 {
        return 0;
    }
    let dst = unsafe { s.payload.as_mut_ptr().add(off as usize) };
    let r = unsafe { generated::bpf_probe_read_user(dst.cast(), n as u32, src as *const _) };
    if r < 0 {
        bump(counter::READ_ERRORS);
        return 0;
    }
    n
}

/// A value the compiler cannot reason about.
#[inline(always)]
fn opaque(x: u64) -> u64 {
    unsafe { core::ptr::read_volatile(&x) }
}

#[inline(always)]
fn copy_iov(_s: &mut Scratch, iov: u64, iov_len: u64, want: u64) -> u64 {
    let mut done: u64 = 0;
    for i in 0..MAX_IOV as u64 {
        if i >= iov_len || done >= want {
            break;
        }
        let c = tracer_copy_iovec(iov + i * 16, done, want);
        if c == u64::MAX {
            break;
        }
        done += c;
    }
    done
}

/// Copy the iovec at `iov` into the scratch payload at offset `done`, at most
/// up to `want` bytes in all. Returns the bytes copied, or `u64::MAX` to stop.
/// A global function: the verifier checks it once, not once per iovec.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn tracer_copy_iovec(iov: u64, done: u64, want: u64) -> u64 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return u64::MAX };
    let s = unsafe { &mut *s };
    let Ok(v) = (unsafe { aya_ebpf::helpers::bpf_probe_read_user(iov as *const Iovec) }) else {
        return u64::MAX;
    };
    if done >= want || want > MAX_CAPTURE as u64 {
        return u64::MAX;
    }
    let left = want - done;
    let n = if v.len < left { v.len } else { left };
    if n == 0 {
        return 0;
    }
    let c = copy_user(s, done, v.base, n);
    if c == 0 {
        return u64::MAX;
    }
    c
}

macro_rules! send {
    ($enter:ident, $exit:ident, $sc:expr, $iov:expr, $msg:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter_io(&ctx, $sc, $iov, $msg)
        }
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit_io::<{ $iov || $msg }>(&ctx, $sc)
        }
    };
}

macro_rules! recv {
    ($exit:ident, $sc:expr, $iov:expr, $msg:expr) => {
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            recv_exit::<{ $iov || $msg }>(&ctx, $sc, $msg)
        }
    };
}

recv!(sys_exit_read, syscall::READ, false, false);
recv!(sys_exit_readv, syscall::READV, true, false);
recv!(sys_exit_recvfrom, syscall::RECVFROM, false, false);
recv!(sys_exit_recvmsg, syscall::RECVMSG, false, true);
send!(sys_enter_write, sys_exit_write, syscall::WRITE, false, false);
send!(sys_enter_writev, sys_exit_writev, syscall::WRITEV, true, false);
send!(sys_enter_sendto, sys_exit_sendto, syscall::SENDTO, false, false);
send!(sys_enter_sendmsg, sys_exit_sendmsg, syscall::SENDMSG, false, true);
send!(sys_enter_sendfile64, sys_exit_sendfile64, syscall::SENDFILE, false, false);

// ---------------------------------------------------------- connection path

#[repr(C)]
#[derive(Clone, Copy)]
struct PendingConn {
    ts_enter: u64,
    fd: i64,
    sc: u16,
    _pad: [u16; 3],
}

#[map]
static PENDING: LruHashMap<u64, PendingConn> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn enter_conn(ctx: &TracePointContext, sc: u16) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let id = bpf_get_current_pid_tgid();
    let own = (id >> 32) as u32 == cfg.self_pid;
    if !(own && sc == syscall::CONNECT) && !process_wanted(cfg, (id >> 32) as u32) {
        return 0;
    }
    let fd = if sc == syscall::CONNECT { arg(ctx, 0) } else { -1 };
    let p = PendingConn { ts_enter: unsafe { bpf_ktime_get_ns() }, fd, sc, _pad: [0; 3] };
    let _ = PENDING.insert(&id, &p, 0);
    0
}

#[inline(always)]
fn exit_conn(ctx: &TracePointContext, sc: u16) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(p) = (unsafe { PENDING.get(&id) }).copied() else { return 0 };
    let _ = PENDING.remove(&id);
    if p.sc != sc {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    let ret = arg(ctx, 0);
    let (fd, kind, r) = if p.sc == syscall::CONNECT {
        if ret != 0 && ret != -EINPROGRESS {
            return 0;
        }
        (p.fd as i32, EventKind::Connect, role::CLIENT)
    } else {
        if ret < 0 {
            return 0;
        }
        (ret as i32, EventKind::Accept, role::SERVER)
    };
    let Some(file) = (unsafe { fd_file(fd) }) else { return 0 };
    let Some(mut sock) = (unsafe { file_socket(cfg, file) }) else { return 0 };
    let tgid = (id >> 32) as u32;
    if tgid == cfg.self_pid {
        let _ = SELF_PORTS.insert(&port_pair(sock.lport, sock.rport), &1, 0);
        return 0;
    }
    sock.role = r;
    let _ = ROLES.insert(&sock.ino, &r, 0);
    let comm = process_comm(cfg);
    let c = CachedSock { file, comm, wanted: UNCHECKED, _pad: [0; 7], sock };
    let _ = SOCKS.insert(&sock_key(tgid, fd), &c, 0);
    if !port_wanted(cfg, &sock) {
        return 0;
    }
    emit_header(cfg, &header(kind, p.sc, p.ts_enter, fd, ret, comm, &sock));
    0
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    enter_conn(&ctx, syscall::ACCEPT)
}
#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    exit_conn(&ctx, syscall::ACCEPT)
}
#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    enter_conn(&ctx, syscall::ACCEPT4)
}
#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    exit_conn(&ctx, syscall::ACCEPT4)
}
#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    enter_conn(&ctx, syscall::CONNECT)
}
#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    exit_conn(&ctx, syscall::CONNECT)
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let fd = arg(&ctx, 0) as i32;
    if tgid == cfg.self_pid {
        if let Some(sock) = unsafe { tcp_socket(cfg, fd) } {
            let _ = SELF_PORTS.remove(&port_pair(sock.lport, sock.rport));
        }
        return 0;
    }
    // Sockets of traced processes are in SOCKS once they carried data; one
    // that never did has nothing for the agent to close.
    let key = sock_key(tgid, fd);
    let Some(c) = (unsafe { SOCKS.get(&key) }).copied() else { return 0 };
    let _ = SOCKS.remove(&key);
    let _ = ROLES.remove(&c.sock.ino);
    if c.wanted == 0 || (c.wanted == UNCHECKED && !port_wanted(cfg, &c.sock)) {
        return 0;
    }
    let ts = unsafe { bpf_ktime_get_ns() };
    emit_header(cfg, &header(EventKind::Close, syscall::CLOSE, ts, fd, 0, c.comm, &c.sock));
    0
}

// ------------------------------------------------------------ process path

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = VERDICTS.remove(&tgid);
    0
}

#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if (id >> 32) as u32 == id as u32 {
        let _ = VERDICTS.remove(&((id >> 32) as u32));
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
