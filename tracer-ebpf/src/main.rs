//! Kernel programs: TCP payload capture at the socket layer.
//!
//! `sock_send_length` and `sock_recv_length` fire once per socket send and
//! receive, when the transfer is done, with the socket and the byte count;
//! only socket I/O ever reaches them. The user buffer, the fd and the
//! syscall come from the task's saved syscall registers, so no syscall
//! tracepoint is enabled and the syscalls of every process on the host keep
//! the kernel's fast path. The first `capture_bytes` of each transfer are
//! copied into a per-CPU scratch event and written to a ring buffer without
//! waking the reader (user space drains on a short timer).
//!
//! State lives in local storage, which the kernel frees with its owner:
//! per thread (`TASKS`: process filter verdict, process name) and per socket
//! (`SKS`: addresses, role, port-filter verdict, the start of a send in
//! progress). `inet_sock_set_state` gives each connection its role (who sent
//! the SYN) and notes the agent's own connections; `tcp_destroy_sock`
//! reports the end of a connection.
#![no_std]
#![no_main]
#![allow(clippy::missing_safety_doc)]

use aya_ebpf::{
    btf_maps::{ArrayOfMaps, RingBuf as CpuRing},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_smp_processor_id,
        bpf_ktime_get_ns, generated,
    },
    macros::{btf_map, btf_tracepoint, map, sock_ops, tracepoint, uprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, ProbeContext, SockOpsContext, TracePointContext},
};
use tracer_common::{
    carrier, counter, filter, mode, role, syscall, CarrierIds, Config, EventHeader, EventKind, SockInfo, AF_INET,
    AF_INET6, HEADER_SIZE, MAX_CAPTURE, MAX_CPUS, MAX_IOV, PER_CPU_RING_BYTES, SHARED_RING_BYTES,
};

const BPF_RB_NO_WAKEUP: u64 = 1;
const SOCK_STREAM: u16 = 1;
const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: i32 = 2;
const MSG_TRUNC: i32 = 0x20;
const MSG_ERRQUEUE: i32 = 0x2000;
/// `task_struct.flags` of kernel threads and io_uring workers, whose saved
/// registers are not those of a socket syscall.
const PF_IO_WORKER: u32 = 0x10;
const PF_KTHREAD: u32 = 0x0020_0000;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;

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
/// Per-CPU scratch of header-only events, apart from `SCRATCH`: connection
/// ends (slot 0) come from softirq context too, which may interrupt a data
/// event being assembled on the same CPU; thread events use slot 1.
#[map]
static HEADERS: PerCpuArray<EventHeader> = PerCpuArray::with_max_entries(2, 0);
/// Per-CPU scratch of Go probe events (uprobes run in process context).
#[map]
static GO_EVENTS: PerCpuArray<GoEvent> = PerCpuArray::with_max_entries(1, 0);
/// Threads created by threads of traced processes, until they end: only
/// their ends are reported.
#[map]
static SPAWNED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);
/// With a carrier: the requests read and not yet answered (socket inode →
/// the thread that read it), so that a thread's calls carry a request's
/// context only while it is open, whoever answers it.
#[map]
static OPEN: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);
/// Processes whose threads do not stand for requests (Go programs: their
/// goroutines move between threads): their calls carry no context.
#[map]
static NO_CARRY: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);
/// The `Context` event being written (process context only).
#[map]
static CTX_EVENTS: PerCpuArray<CtxEvent> = PerCpuArray::with_max_entries(1, 0);
/// The option being written or read by `carrier_ops` (28 bytes, padded to
/// whole words).
#[map]
static OPTION: PerCpuArray<[u8; 32]> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
struct CtxEvent {
    header: EventHeader,
    ids: CarrierIds,
}
/// Per-thread state. A lookup is a few loads next to the task, with no
/// hashing or locks.
#[btf_map]
static TASKS: LocalStorage<TaskState, 29> = LocalStorage::new(); // BPF_MAP_TYPE_TASK_STORAGE
/// Per-socket state.
#[btf_map]
static SKS: LocalStorage<SockState, 24> = LocalStorage::new(); // BPF_MAP_TYPE_SK_STORAGE
/// The agent's own connections as (local port << 16 | remote port): the
/// other end of these (e.g. a local collector receiving our exports) is not
/// traced. Keyed by both ports, since the same local port can serve other
/// connections to other destinations at the same time.
#[map]
static SELF_PORTS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(4096, 0);
#[map]
static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);
#[map]
static COMMS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(256, 0);
#[map]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

#[inline(always)]
fn port_pair(local: u16, remote: u16) -> u32 {
    ((local as u32) << 16) | remote as u32
}

/// A local-storage map definition (BTF-defined; such maps take no
/// preallocation and no size). `TYPE` is the map type: task or socket.
#[repr(C)]
struct LocalStorage<T, const TYPE: usize> {
    r#type: *const [i32; TYPE],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; 1], // BPF_F_NO_PREALLOC
}

unsafe impl<T, const TYPE: usize> Sync for LocalStorage<T, TYPE> {}

/// `BPF_LOCAL_STORAGE_GET_F_CREATE`
const CREATE: u64 = 1;

impl<T, const TYPE: usize> LocalStorage<T, TYPE> {
    const fn new() -> Self {
        let n = core::ptr::null::<u8>();
        Self { r#type: n.cast(), key: n.cast(), value: n.cast(), max_entries: n.cast(), map_flags: n.cast() }
    }

    #[inline(always)]
    fn map(&self) -> *mut core::ffi::c_void {
        self as *const Self as *mut core::ffi::c_void
    }
}

impl<T> LocalStorage<T, 29> {
    /// The current thread's entry, created zeroed when `flags` is `CREATE`.
    #[inline(always)]
    fn current(&self, flags: u64) -> Option<&'static mut T> {
        unsafe {
            let task = generated::bpf_get_current_task_btf();
            let p = generated::bpf_task_storage_get(self.map(), task, core::ptr::null_mut(), flags);
            (p as *mut T).as_mut()
        }
    }

    #[inline(always)]
    fn delete_current(&self) {
        unsafe {
            generated::bpf_task_storage_delete(self.map(), generated::bpf_get_current_task_btf());
        }
    }
}

impl<T> LocalStorage<T, 24> {
    /// The entry of socket `sk` (a BTF `struct sock *`), created zeroed when
    /// `flags` is `CREATE`.
    #[inline(always)]
    fn of(&self, sk: *const u8, flags: u64) -> Option<&'static mut T> {
        unsafe {
            let p = generated::bpf_sk_storage_get(self.map(), sk as *mut _, core::ptr::null_mut(), flags);
            (p as *mut T).as_mut()
        }
    }
}

/// `TaskState::verdict` values.
const VERDICT_UNKNOWN: u8 = 0;
const VERDICT_TRACED: u8 = 1;
const VERDICT_SKIPPED: u8 = 2;

#[repr(C, align(8))]
struct TaskState {
    /// The process filters' verdict for this thread's process.
    verdict: u8,
    /// More than one request may be in flight on this thread (the one
    /// before `ctx_ino` was still open when it came): its calls carry no
    /// context.
    ambiguous: u8,
    _pad: [u8; 6],
    /// The process name (its main thread's), taken with the verdict.
    comm: [u8; 16],
    /// The request this thread read last (its socket inode; 0: none) and
    /// its ids: what the thread's calls carry while it is open (`OPEN`).
    ctx_ino: u64,
    ctx: CarrierIds,
}

/// `SockState::flags` bits.
const SK_READY: u8 = 1;
const SK_WANTED: u8 = 2;
const SK_SELF: u8 = 4;
const SK_REPORTED: u8 = 8;
/// Sends on this socket were found untraced before it was ready: their
/// start is not taken.
const SK_NO_START: u8 = 16;

#[repr(C)]
struct SockState {
    flags: u8,
    /// Who opened the connection, from its handshake.
    role: u8,
    /// With a carrier: 1 while a request is under way (read and not yet
    /// answered on a server socket, sent and not yet answered on a client
    /// socket), else 0.
    turn: u8,
    /// With a carrier: the segments sent carry `tx` in a TCP option.
    tx_armed: u8,
    /// The process whose data was reported first, for the close event.
    pid: u32,
    comm: [u8; 16],
    /// Valid once `SK_READY` is set.
    sock: SockInfo,
    /// Start of the send in progress (0: none).
    send_ts: u64,
    /// With a carrier: a TCP option arrived since the last request read
    /// (`rx` holds it).
    rx_fresh: u8,
    _pad2: [u8; 7],
    /// The trace id and span id the segments of the request being sent
    /// carry, and those the last option received carried (`parent_id`
    /// unused).
    tx: CarrierIds,
    rx: CarrierIds,
}

/// Per-CPU scratch: the event being assembled, header and payload, and the
/// iovecs being walked. Everything large lives here, not on the stack: the
/// verifier allows 512 bytes of stack for a program and its deepest chain of
/// calls, and the agent keeps every program within 384 of them (checked
/// from the verifier's own figures by `tracer-agent doctor` and the tests).
/// The payload area is twice the capture limit so that every masked copy
/// stays inside it.
#[repr(C)]
struct Scratch {
    header: EventHeader,
    payload: [u8; MAX_CAPTURE * 2],
    iov: [Iovec; IOV_BATCH as usize],
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

// ------------------------------------------------ load-time constants

/// Offsets in `struct sock` of `skc_family`, `sk_type` and `sk_protocol`
/// (all u16). Like the two globals below, written by the agent before
/// loading from the kernel's BTF; being read-only data, the verifier knows
/// the values, so the typed `struct sock *` is read with plain loads.
#[unsafe(no_mangle)]
static SK_FIELDS: [u32; 3] = [0; 3];
const SK_FAMILY: usize = 0;
const SK_TYPE: usize = 1;
const SK_PROTOCOL: usize = 2;

/// Offsets in `struct pt_regs` of a syscall's first three arguments, of
/// its number and of Go's goroutine register (`KernelOffsets::regs_arg`,
/// `regs_nr`, `regs_goroutine`).
#[unsafe(no_mangle)]
static SYSCALL_REGS: [u32; 5] = [0; 5];

/// Offsets in `struct pt_regs` of the Go runtime's goroutine register and
/// of the first four integer argument registers of Go's internal ABI
/// (r14, rax, rbx, rcx, rdi on x86-64; x28, x0..x3 on arm64).
#[unsafe(no_mangle)]
static GO_REGS: [u32; 5] = [0; 5];

/// This architecture's syscall numbers mapped to `tracer_common::syscall`
/// ids (0: a syscall whose buffer is not read here).
#[unsafe(no_mangle)]
static SYSCALL_IDS: [u8; 512] = [0; 512];

#[inline(always)]
fn sk_u16(sk: *const u8, field: usize) -> u16 {
    unsafe {
        let off = core::ptr::read_volatile(&SK_FIELDS[field]) as usize;
        *(sk.add(off) as *const u16)
    }
}

#[inline(always)]
fn regs() -> *const u8 {
    unsafe { generated::bpf_task_pt_regs(generated::bpf_get_current_task_btf()) as *const u8 }
}

/// The saved user register at `SYSCALL_REGS[i]`: a syscall argument
/// (`i` < 3) or Go's goroutine register (`i` = 4).
#[inline(always)]
fn saved_reg(regs: *const u8, i: usize) -> u64 {
    unsafe {
        let off = core::ptr::read_volatile(&SYSCALL_REGS[i]) as usize;
        *(regs.add(off) as *const u64)
    }
}

/// The current syscall as a `tracer_common::syscall` id (0: other).
#[inline(always)]
fn current_syscall(regs: *const u8) -> u16 {
    let nr = unsafe {
        let off = core::ptr::read_volatile(&SYSCALL_REGS[3]) as usize;
        *(regs.add(off) as *const u32)
    };
    if nr >= 512 {
        return 0;
    }
    unsafe { core::ptr::read_volatile(&SYSCALL_IDS[nr as usize & 511]) as u16 }
}

// --------------------------------------------------------------- filters

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

/// The current thread's state if its process passes the process-level
/// filters (own pid, pid and comm allow/deny lists). The verdict and the
/// process name are kept with the thread until the process execs.
#[inline(always)]
fn traced_task(cfg: &Config, tgid: u32) -> Option<&'static mut TaskState> {
    if tgid == cfg.self_pid || tgid == 0 {
        return None;
    }
    let t = TASKS.current(CREATE)?;
    if t.verdict == VERDICT_UNKNOWN {
        let any = filter::PID_ALLOW | filter::PID_DENY | filter::COMM_ALLOW | filter::COMM_DENY;
        let comm = process_comm(cfg);
        let task = unsafe { bpf_get_current_task() };
        let flags: u32 = unsafe { rk(task + cfg.offsets.task_flags as u64) }.unwrap_or(PF_KTHREAD);
        let wanted =
            flags & (PF_KTHREAD | PF_IO_WORKER) == 0 && (cfg.flags & any == 0 || process_filters(cfg, tgid, &comm));
        t.comm = comm;
        t.verdict = if wanted { VERDICT_TRACED } else { VERDICT_SKIPPED };
    }
    if t.verdict == VERDICT_TRACED {
        Some(t)
    } else {
        None
    }
}

#[inline(always)]
fn process_filters(cfg: &Config, tgid: u32, comm: &[u8; 16]) -> bool {
    if cfg.flags & (filter::PID_ALLOW | filter::PID_DENY) != 0 {
        match unsafe { PIDS.get(&tgid) } {
            Some(v) if *v == filter::DENY => return false,
            Some(_) => {}
            None if cfg.flags & filter::PID_ALLOW != 0 => return false,
            None => {}
        }
    }
    if cfg.flags & (filter::COMM_ALLOW | filter::COMM_DENY) != 0 {
        return match unsafe { COMMS.get(comm) } {
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

#[inline(always)]
fn is_tcp(sk: *const u8) -> bool {
    let family = sk_u16(sk, SK_FAMILY);
    (family == AF_INET || family == AF_INET6)
        && sk_u16(sk, SK_TYPE) == SOCK_STREAM
        && sk_u16(sk, SK_PROTOCOL) == IPPROTO_TCP
}

/// Ports of `sk`: (local, remote), host order.
#[inline(always)]
unsafe fn sk_ports(cfg: &Config, sk: *const u8) -> (u16, u16) {
    let o = &cfg.offsets;
    let l: u16 = rk(sk as u64 + o.sk_num as u64).unwrap_or(0);
    let r: u16 = rk(sk as u64 + o.sk_dport as u64).unwrap_or(0);
    (l, u16::from_be(r))
}

/// Reads `N` bytes of kernel memory at `src` straight into `dst` (zeroed
/// if the read fails), so no copy of them passes through the stack.
#[inline(always)]
unsafe fn read_kernel_into<const N: u32>(dst: *mut u8, src: u64) {
    let _ = generated::bpf_probe_read_kernel(dst.cast(), N, src as *const _);
}

/// Fills `s` in place with the addresses, ports and socket inode of the
/// TCP socket `sk`.
#[inline(always)]
unsafe fn fill_sock_info(cfg: &Config, sk: *const u8, role: u8, s: &mut SockInfo) {
    let o = &cfg.offsets;
    let family = sk_u16(sk, SK_FAMILY);
    s.family = family;
    (s.lport, s.rport) = sk_ports(cfg, sk);
    s.role = role;
    s._pad = 0;
    let sk = sk as u64;
    if family == AF_INET {
        // IPv4 addresses take the first four bytes.
        zero_words::<2>(s.laddr.as_mut_ptr().cast());
        zero_words::<2>(s.raddr.as_mut_ptr().cast());
        read_kernel_into::<4>(s.laddr.as_mut_ptr(), sk + o.sk_rcv_saddr as u64);
        read_kernel_into::<4>(s.raddr.as_mut_ptr(), sk + o.sk_daddr as u64);
    } else {
        read_kernel_into::<16>(s.laddr.as_mut_ptr(), sk + o.sk_v6_rcv_saddr as u64);
        read_kernel_into::<16>(s.raddr.as_mut_ptr(), sk + o.sk_v6_daddr as u64);
    }
    // The connection's identity is its socket inode (the inode follows the
    // `struct socket` in `struct socket_alloc`); the socket's address
    // stands in should it have none.
    s.ino = sk;
    if let Some(socket) = rk::<u64>(sk + o.sk_socket as u64) {
        if socket != 0 {
            if let Some(ino) = rk::<u64>(socket + o.socket_inode as u64 + o.inode_ino as u64) {
                s.ino = ino;
            }
        }
    }
}

/// The state of `sk` if it is a TCP socket, its addresses and port-filter
/// verdict filled in on first use.
#[inline(always)]
fn sock_state(cfg: &Config, sk: *const u8) -> Option<&'static mut SockState> {
    if let Some(s) = SKS.of(sk, 0) {
        if s.flags & SK_READY != 0 {
            return Some(s);
        }
    }
    if !is_tcp(sk) {
        return None;
    }
    let s = SKS.of(sk, CREATE)?;
    let role = s.role;
    unsafe { fill_sock_info(cfg, sk, role, &mut s.sock) };
    s.flags |= SK_READY;
    if port_wanted(cfg, &s.sock) {
        s.flags |= SK_WANTED;
    }
    Some(s)
}

/// The iovec array and its length of a `struct user_msghdr` in user memory
/// (`{ void *msg_name; int msg_namelen; struct iovec *msg_iov; size_t msg_iovlen; ... }`).
#[inline(always)]
fn msg_iov(msghdr: u64) -> (u64, u64) {
    match unsafe { aya_ebpf::helpers::bpf_probe_read_user((msghdr + 16) as *const Iovec) } {
        Ok(v) => (v.base, v.len),
        Err(_) => (0, 0),
    }
}

/// Copies `N` words; volatile so that the compiler does not turn the copy
/// into a call of the byte-at-a-time `memmove` of the BPF target.
#[inline(always)]
unsafe fn copy_words<const N: usize>(dst: *mut u64, src: *const u64) {
    let mut i = 0;
    while i < N {
        core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i)));
        i += 1;
    }
}

/// Zeroes `N` words (see `copy_words`).
#[inline(always)]
unsafe fn zero_words<const N: usize>(dst: *mut u64) {
    let mut i = 0;
    while i < N {
        core::ptr::write_volatile(dst.add(i), 0);
        i += 1;
    }
}

/// Fills the header of an event in place (no copy of it on the stack).
#[inline(always)]
fn fill_header(h: &mut EventHeader, kind: EventKind, sc: u16, fd: i32, comm: &[u8; 16], sock: &SockInfo) {
    let id = bpf_get_current_pid_tgid();
    h.kind = kind as u32;
    h.syscall = sc;
    h._pad0 = 0;
    h.pid = (id >> 32) as u32;
    h.tid = id as u32;
    h.fd = fd;
    h.captured = 0;
    h.ret = 0;
    h.goroutine = 0;
    const { assert!(core::mem::size_of::<SockInfo>() == 48) };
    unsafe {
        copy_words::<2>(h.comm.as_mut_ptr().cast(), comm.as_ptr().cast());
        copy_words::<6>((&mut h.sock as *mut SockInfo).cast(), (sock as *const SockInfo).cast());
    }
}

/// Stamps the exit time (and the start, if none was noted) right before
/// the write: the agent merges per-CPU rings by this time.
#[inline(always)]
fn stamp(h: &mut EventHeader, ts_enter: u64) {
    let now = unsafe { bpf_ktime_get_ns() };
    h.ts_exit = now;
    h.ts_enter = if ts_enter == 0 { now } else { ts_enter };
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

/// Where a transfer's bytes are in user memory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Not in user memory (sendfile), or not to be read (MSG_TRUNC).
    None,
    /// One buffer.
    Plain,
    /// An iovec array of `iov_len` entries.
    Vectored,
}

/// Copy the payload of a finished transfer into the scratch event, whose
/// header is filled, and write it. `WALK`: walk every iovec (else only the
/// first one is read, the simpler variant for kernels that refuse the walk).
#[inline(always)]
fn emit_data<const WALK: bool>(
    cfg: &Config,
    e: &mut Scratch,
    src: Source,
    buf: u64,
    iov_len: u64,
    ret: i64,
    ts_enter: u64,
) {
    let limit = if (cfg.capture_bytes as usize) < MAX_CAPTURE { cfg.capture_bytes as u64 } else { MAX_CAPTURE as u64 };
    let want = if (ret as u64) < limit { ret as u64 } else { limit };
    let captured = match src {
        Source::None => 0,
        Source::Plain => copy_user(e, 0, buf, want),
        Source::Vectored if WALK => copy_iov(buf, iov_len, want),
        Source::Vectored => copy_first_iov(e, buf, want),
    };
    if src != Source::None && (captured as i64) < ret {
        bump(counter::TRUNCATED);
    }
    e.header.captured = captured as u32;
    e.header.ret = ret;
    stamp(&mut e.header, ts_enter);
    let len = HEADER_SIZE + (captured as usize & (MAX_CAPTURE * 2 - 1));
    let total = if len > HEADER_SIZE + MAX_CAPTURE { HEADER_SIZE + MAX_CAPTURE } else { len };
    let bytes = unsafe { core::slice::from_raw_parts(e as *const Scratch as *const u8, total) };
    output(cfg, bytes);
}

/// The first iovec only, read into the scratch iovec slot.
#[inline(always)]
fn copy_first_iov(e: &mut Scratch, iov: u64, want: u64) -> u64 {
    let dst = &mut e.iov[0] as *mut Iovec;
    let r = unsafe { generated::bpf_probe_read_user(dst.cast(), 16, iov as *const _) };
    if r < 0 {
        bump(counter::READ_ERRORS);
        return 0;
    }
    let v = e.iov[0];
    let len = if v.len < want { v.len } else { want };
    copy_user(e, 0, v.base, len)
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

/// iovecs read from user memory in one helper call (each call has a fixed
/// cost well above that of copying a few more bytes).
const IOV_BATCH: u64 = 4;

#[inline(always)]
fn copy_iov(iov: u64, iov_len: u64, want: u64) -> u64 {
    let mut done: u64 = 0;
    for b in 0..(MAX_IOV as u64 / IOV_BATCH) {
        let first = b * IOV_BATCH;
        if first >= iov_len || done >= want {
            break;
        }
        let n = if iov_len - first < IOV_BATCH { iov_len - first } else { IOV_BATCH };
        let c = tracer_copy_iovecs(iov + first * 16, n, done, want);
        if c == u64::MAX {
            break;
        }
        done += c;
        if n < IOV_BATCH {
            break;
        }
    }
    done
}

/// Copy the (at most `IOV_BATCH`) `n` iovecs at `iov` into the scratch
/// payload from offset `done`, at most up to `want` bytes in all. Returns
/// the bytes copied, or `u64::MAX` to stop. A global function: the verifier
/// checks it once, not once per batch.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn tracer_copy_iovecs(iov: u64, n: u64, done: u64, want: u64) -> u64 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return u64::MAX };
    let s = unsafe { &mut *s };
    if n == 0 || n > IOV_BATCH || done >= want || want > MAX_CAPTURE as u64 {
        return u64::MAX;
    }
    // The batch goes to the scratch area: the helper writes (or, failing,
    // zeroes) the `n` entries read below.
    let bytes = (opaque(n) & (IOV_BATCH * 2 - 1)) * 16;
    if bytes == 0 || bytes > IOV_BATCH * 16 {
        return u64::MAX;
    }
    let batch = s.iov.as_mut_ptr();
    let r = unsafe { generated::bpf_probe_read_user(batch.cast(), bytes as u32, iov as *const _) };
    if r < 0 {
        bump(counter::READ_ERRORS);
        return u64::MAX;
    }
    let mut copied = 0;
    for i in 0..IOV_BATCH as usize {
        let at = done + copied;
        if i as u64 >= n || at >= want {
            break;
        }
        // SAFETY: entries below `n` were written by the read above.
        let v = unsafe { batch.add(i).read() };
        let left = want - at;
        let len = if v.len < left { v.len } else { left };
        if len == 0 {
            continue;
        }
        let c = copy_user(s, at, v.base, len);
        if c == 0 {
            return if copied == 0 { u64::MAX } else { copied };
        }
        copied += c;
    }
    copied
}

// ---------------------------------------------------------------- data path

/// A finished send or receive on `sk` of `ret` bytes (or an error).
#[inline(always)]
fn on_transfer<const WALK: bool>(ctx: &BtfTracePointContext, kind: EventKind) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    let Some(cfg) = config() else { return 0 };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(task) = traced_task(cfg, tgid) else { return 0 };
    // The start noted by `tcp_sendmsg_locked` belongs to this send, whatever
    // its outcome.
    let mut ts_enter = 0;
    let mut state = None;
    if kind == EventKind::Send {
        state = SKS.of(sk, 0);
        if let Some(s) = state.as_deref_mut() {
            ts_enter = s.send_ts;
            s.send_ts = 0;
        }
    }
    // Peeked bytes are read again later; the error queue holds no stream data.
    if ret <= 0 || (kind == EventKind::Recv && flags & (MSG_PEEK | MSG_ERRQUEUE) != 0) {
        return 0;
    }
    let regs = regs();
    let sc = current_syscall(regs);
    let arg1 = saved_reg(regs, 1);
    let (mut src, buf, iov_len) = match (kind, sc) {
        (EventKind::Recv, syscall::READ | syscall::RECVFROM) | (EventKind::Send, syscall::WRITE | syscall::SENDTO) => {
            (Source::Plain, arg1, 0)
        }
        (EventKind::Recv, syscall::READV) | (EventKind::Send, syscall::WRITEV) => {
            (Source::Vectored, arg1, saved_reg(regs, 2))
        }
        (EventKind::Recv, syscall::RECVMSG) | (EventKind::Send, syscall::SENDMSG) => {
            let (iov, n) = msg_iov(arg1);
            (Source::Vectored, iov, n)
        }
        // The payload comes from a file: only its length is reported.
        (EventKind::Send, syscall::SENDFILE) => (Source::None, 0, 0),
        // io_uring, splice, mmsg calls, kernel users of sockets: the
        // buffer is not where the registers say.
        _ => return 0,
    };
    if (src == Source::Vectored && iov_len == 0) || (buf == 0 && src != Source::None) {
        return 0;
    }
    let s = match state {
        Some(s) if s.flags & SK_READY != 0 => s,
        _ => match sock_state(cfg, sk) {
            Some(s) => s,
            None => return 0,
        },
    };
    if s.flags & SK_WANTED == 0 {
        return 0;
    }
    if s.flags & SK_REPORTED == 0 {
        s.flags |= SK_REPORTED;
        s.pid = tgid;
        s.comm = task.comm;
    }
    // A discarding receive (MSG_TRUNC) leaves the buffer untouched: its
    // length is reported, not its bytes.
    if kind == EventKind::Recv && flags & MSG_TRUNC != 0 {
        src = Source::None;
    }
    if cfg.flags & mode::CARRIER_TCP_OPTION != 0 {
        carrier_turn(cfg, task, s, kind, tgid);
    }
    let Some(e) = SCRATCH.get_ptr_mut(0) else { return 0 };
    let e = unsafe { &mut *e };
    fill_header(&mut e.header, kind, sc, saved_reg(regs, 0) as i32, &task.comm, &s.sock);
    e.header.goroutine = saved_reg(regs, 4);
    emit_data::<WALK>(cfg, e, src, buf, iov_len, ret as i64, ts_enter);
    0
}

// ------------------------------------------------------------ carrier

/// Copies `N` 32-bit words (the option's data is only 4-byte aligned).
#[inline(always)]
unsafe fn copy_u32s<const N: usize>(dst: *mut u32, src: *const u32) {
    let mut i = 0;
    while i < N {
        core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i)));
        i += 1;
    }
}

/// Fills `N` 32-bit words at `dst` with random bits.
#[inline(always)]
unsafe fn random_words<const N: usize>(dst: *mut u32) {
    let mut i = 0;
    while i < N {
        core::ptr::write_volatile(dst.add(i), generated::bpf_get_prandom_u32());
        i += 1;
    }
}

/// Where a request's turn on a connection starts and ends, with a carrier
/// on. A server socket's first read after its last answer is a new
/// request: its ids are chosen here (the trace and parent from the TCP
/// option that came with it, if one did; else a new trace), kept with the
/// thread for its calls, and reported (`Context`). Its first answer ends
/// it. A client socket's first read after a request ends that request.
#[inline(always)]
fn carrier_turn(cfg: &Config, task: &mut TaskState, s: &mut SockState, kind: EventKind, tgid: u32) {
    let ino = s.sock.ino;
    match (s.role, kind) {
        (role::SERVER, EventKind::Recv) if s.turn == 0 => {
            s.turn = 1;
            let Some(e) = CTX_EVENTS.get_ptr_mut(0) else { return };
            let e = unsafe { &mut *e };
            let mut flags = carrier::SERVER;
            unsafe {
                if s.rx_fresh != 0 {
                    copy_words::<2>(e.ids.trace_id.as_mut_ptr().cast(), s.rx.trace_id.as_ptr().cast());
                    copy_words::<1>(e.ids.parent_id.as_mut_ptr().cast(), s.rx.span_id.as_ptr().cast());
                    flags |= carrier::REMOTE;
                } else {
                    random_words::<4>(e.ids.trace_id.as_mut_ptr().cast());
                    zero_words::<1>(e.ids.parent_id.as_mut_ptr().cast());
                }
                random_words::<2>(e.ids.span_id.as_mut_ptr().cast());
            }
            s.rx_fresh = 0;
            // A request read while the thread's last one is still open:
            // two in flight, so its calls could be either's.
            let tid = bpf_get_current_pid_tgid() as u32;
            let before = task.ctx_ino;
            task.ambiguous = u8::from(before != 0 && unsafe { OPEN.get(&before) }.is_some_and(|t| *t == tid));
            task.ctx_ino = ino;
            unsafe { copy_words::<4>((&mut task.ctx as *mut CarrierIds).cast(), (&e.ids as *const CarrierIds).cast()) };
            let _ = OPEN.insert(&ino, &tid, 0);
            context_event(cfg, e, &task.comm, &s.sock, flags);
        }
        (role::SERVER, EventKind::Send) if s.turn != 0 => {
            s.turn = 0;
            let _ = OPEN.remove(&ino);
        }
        (role::CLIENT, EventKind::Recv) => {
            s.turn = 0;
            s.tx_armed = 0;
        }
        _ => {}
    }
    let _ = tgid;
}

/// Writes a `Context` event about socket `sock`.
#[inline(always)]
fn context_event(cfg: &Config, e: &mut CtxEvent, comm: &[u8; 16], sock: &SockInfo, flags: i64) {
    fill_header(&mut e.header, EventKind::Context, 0, -1, comm, sock);
    e.header.ret = flags;
    e.header.captured = core::mem::size_of::<CarrierIds>() as u32;
    stamp(&mut e.header, 0);
    // SAFETY: CtxEvent is plain old data.
    let bytes =
        unsafe { core::slice::from_raw_parts(e as *const CtxEvent as *const u8, core::mem::size_of::<CtxEvent>()) };
    output(cfg, bytes);
}

/// A client socket starts sending a request (its first send after the
/// last answer): if the sending thread serves exactly one open request,
/// the request gets a span id of its own under it, its segments carry
/// both in the TCP option, and the ids are reported (`Context`).
/// Otherwise its segments carry nothing.
#[inline(always)]
fn carrier_send(cfg: &Config, task: &mut TaskState, s: &mut SockState, tgid: u32) {
    if s.role != role::CLIENT || s.turn != 0 {
        return;
    }
    s.turn = 1;
    s.tx_armed = 0;
    let tid = bpf_get_current_pid_tgid() as u32;
    let ino = task.ctx_ino;
    if ino == 0 || task.ambiguous != 0 || unsafe { NO_CARRY.get(&tgid) }.is_some() {
        return;
    }
    if !unsafe { OPEN.get(&ino) }.is_some_and(|t| *t == tid) {
        return;
    }
    let Some(e) = CTX_EVENTS.get_ptr_mut(0) else { return };
    let e = unsafe { &mut *e };
    unsafe {
        copy_words::<2>(e.ids.trace_id.as_mut_ptr().cast(), task.ctx.trace_id.as_ptr().cast());
        copy_words::<1>(e.ids.parent_id.as_mut_ptr().cast(), task.ctx.span_id.as_ptr().cast());
        random_words::<2>(e.ids.span_id.as_mut_ptr().cast());
        copy_words::<4>((&mut s.tx as *mut CarrierIds).cast(), (&e.ids as *const CarrierIds).cast());
    }
    s.tx_armed = 1;
    context_event(cfg, e, &task.comm, &s.sock, carrier::CLIENT);
}

/// `BPF_SOCK_OPS_*` values and flags used here.
const SOCK_OPS_ACTIVE_ESTABLISHED: u32 = 4;
const SOCK_OPS_PASSIVE_ESTABLISHED: u32 = 5;
const SOCK_OPS_PARSE_HDR_OPT: u32 = 13;
const SOCK_OPS_HDR_OPT_LEN: u32 = 14;
const SOCK_OPS_WRITE_HDR_OPT: u32 = 15;
const PARSE_UNKNOWN_HDR_OPT_FLAG: u32 = 32;
const WRITE_HDR_OPT_FLAG: u32 = 64;

/// The TCP option carrier. Accepted connections parse options the kernel
/// does not know (a callback only for segments that have one); connections
/// a traced process opened write the option while a request with a
/// context is being sent. Other sockets are not touched.
#[sock_ops]
pub fn carrier_ops(ctx: SockOpsContext) -> u32 {
    let Some(cfg) = config() else { return 1 };
    if cfg.flags & mode::CARRIER_TCP_OPTION == 0 {
        return 1;
    }
    let ops = ctx.ops;
    let sk = unsafe { (*ops).__bindgen_anon_2.sk } as *const u8;
    if sk.is_null() {
        return 1;
    }
    match ctx.op() {
        SOCK_OPS_PASSIVE_ESTABLISHED => {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | PARSE_UNKNOWN_HDR_OPT_FLAG) as i32);
        }
        SOCK_OPS_ACTIVE_ESTABLISHED => {
            if let Some(s) = SKS.of(sk, 0) {
                if s.role == role::CLIENT && s.flags & SK_SELF == 0 {
                    let _ = ctx.set_cb_flags((ctx.cb_flags() | WRITE_HDR_OPT_FLAG) as i32);
                }
            }
        }
        SOCK_OPS_HDR_OPT_LEN => {
            if SKS.of(sk, 0).is_some_and(|s| s.tx_armed != 0) {
                unsafe { generated::bpf_reserve_hdr_opt(ops, carrier::OPTION_LEN as u32, 0) };
            }
        }
        SOCK_OPS_WRITE_HDR_OPT => {
            let Some(s) = SKS.of(sk, 0) else { return 1 };
            if s.tx_armed == 0 {
                return 1;
            }
            let Some(o) = OPTION.get_ptr_mut(0) else { return 1 };
            let o = unsafe { &mut *o };
            o[0] = carrier::KIND;
            o[1] = carrier::OPTION_LEN;
            o[2] = (carrier::EXID >> 8) as u8;
            o[3] = carrier::EXID as u8;
            unsafe {
                copy_u32s::<6>(o.as_mut_ptr().add(4).cast(), s.tx.trace_id.as_ptr().cast());
                generated::bpf_store_hdr_opt(ops, o.as_ptr().cast(), carrier::OPTION_LEN as u32, 0);
            }
        }
        SOCK_OPS_PARSE_HDR_OPT => {
            let Some(o) = OPTION.get_ptr_mut(0) else { return 1 };
            let o = unsafe { &mut *o };
            // Searched by kind and experiment id.
            o[0] = carrier::KIND;
            o[1] = 4;
            o[2] = (carrier::EXID >> 8) as u8;
            o[3] = carrier::EXID as u8;
            let n = unsafe { generated::bpf_load_hdr_opt(ops, o.as_mut_ptr().cast(), carrier::OPTION_LEN as u32, 0) };
            if n != carrier::OPTION_LEN as i64 {
                return 1;
            }
            let Some(s) = SKS.of(sk, CREATE) else { return 1 };
            unsafe { copy_u32s::<6>(s.rx.trace_id.as_mut_ptr().cast(), o.as_ptr().add(4).cast()) };
            s.rx_fresh = 1;
        }
        _ => {}
    }
    1
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    on_transfer::<true>(&ctx, EventKind::Recv)
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    on_transfer::<true>(&ctx, EventKind::Send)
}

/// The simpler receive program, for a kernel that refuses the iovec walk:
/// of a vectored receive only the first iovec's bytes are captured.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length_first_iov(ctx: BtfTracePointContext) -> i32 {
    on_transfer::<false>(&ctx, EventKind::Recv)
}

/// The simpler send program (see `sock_recv_length_first_iov`).
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length_first_iov(ctx: BtfTracePointContext) -> i32 {
    on_transfer::<false>(&ctx, EventKind::Send)
}

/// The start of a TCP send: a client's request starts here, not when the
/// send returns (on loopback, the peer may have read the data by then).
/// Fires for each segment a send fills; the first one of the send counts.
/// Kept with the socket, which the send holds locked: a socket without
/// state (the client sockets of untraced processes) costs one load.
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let Some(s) = SKS.of(sk, 0) else { return 0 };
    if s.send_ts != 0 {
        return 0;
    }
    if s.flags & SK_READY != 0 {
        if s.flags & SK_WANTED == 0 {
            return 0;
        }
    } else if s.flags & (SK_NO_START | SK_SELF) != 0 {
        return 0;
    } else {
        // Accepted sockets of every process have state from the handshake:
        // the process filter decides once.
        let Some(cfg) = config() else { return 0 };
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if traced_task(cfg, tgid).is_none() {
            s.flags |= SK_NO_START;
            return 0;
        }
    }
    s.send_ts = unsafe { bpf_ktime_get_ns() };
    if s.role == role::CLIENT && s.flags & SK_SELF == 0 {
        let Some(cfg) = config() else { return 0 };
        if cfg.flags & mode::CARRIER_TCP_OPTION != 0 {
            let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            // The connection's first send: its addresses are not filled in
            // yet, and the `Context` event names the connection.
            let Some(s) = sock_state(cfg, sk) else { return 0 };
            if s.flags & SK_WANTED == 0 {
                return 0;
            }
            if let Some(task) = traced_task(cfg, tgid) {
                carrier_send(cfg, task, s, tgid);
            }
        }
    }
    0
}

// ---------------------------------------------------------- connection path

/// TCP state changes: the handshake tells who opened the connection.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if sk_u16(sk, SK_PROTOCOL) != IPPROTO_TCP {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    match new {
        TCP_SYN_SENT => {
            // connect(), in the connecting process.
            let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            let own = tgid == cfg.self_pid;
            if !own && traced_task(cfg, tgid).is_none() {
                return 0;
            }
            let Some(s) = SKS.of(sk, CREATE) else { return 0 };
            // A new connection (a socket may connect again after a failed
            // attempt): everything learnt about an earlier one is dropped.
            s.flags = if own { SK_SELF } else { 0 };
            s.role = role::CLIENT;
            s.send_ts = 0;
        }
        TCP_ESTABLISHED if old == TCP_SYN_RECV => {
            // Accepted; the listening process is not known here.
            if let Some(s) = SKS.of(sk, CREATE) {
                s.role = role::SERVER;
            }
        }
        TCP_ESTABLISHED => {
            if let Some(s) = SKS.of(sk, 0) {
                if s.flags & SK_SELF != 0 {
                    let (l, r) = unsafe { sk_ports(cfg, sk) };
                    s.sock.lport = l;
                    s.sock.rport = r;
                    let _ = SELF_PORTS.insert(&port_pair(l, r), &1, 0);
                }
            }
        }
        _ => {}
    }
    0
}

/// The end of a TCP socket: reported for sockets whose data was. This comes
/// once the process has let go of the socket as well as TCP, so no data
/// event of the socket can follow it. (The move to TCP_CLOSE cannot serve:
/// a reset that arrives while a send is under way closes the socket before
/// the send is reported.)
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let Some(s) = SKS.of(sk, 0) else { return 0 };
    let Some(cfg) = config() else { return 0 };
    if s.flags & SK_SELF != 0 {
        let _ = SELF_PORTS.remove(&port_pair(s.sock.lport, s.sock.rport));
    }
    if s.flags & (SK_REPORTED | SK_WANTED) == SK_REPORTED | SK_WANTED {
        let Some(h) = HEADERS.get_ptr_mut(0) else { return 0 };
        let h = unsafe { &mut *h };
        fill_header(h, EventKind::Close, syscall::CLOSE, -1, &s.comm, &s.sock);
        h.pid = s.pid;
        h.tid = s.pid;
        stamp(h, 0);
        // SAFETY: EventHeader is plain old data.
        let bytes = unsafe { core::slice::from_raw_parts(h as *const EventHeader as *const u8, HEADER_SIZE) };
        output(cfg, bytes);
    }
    0
}

// ------------------------------------------------------------ Go functions

#[repr(C)]
struct GoEvent {
    header: EventHeader,
    args: [u64; 4],
}

/// One program for every Go function probe: the attach cookie says which
/// (`tracer_common::go_probe`). Reports the goroutine and the first two
/// register arguments; the agent makes sense of them.
#[uprobe]
pub fn go_probe(ctx: ProbeContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(t) = traced_task(cfg, tgid) else { return 0 };
    let Some(e) = GO_EVENTS.get_ptr_mut(0) else { return 0 };
    let e = unsafe { &mut *e };
    let regs = ctx.regs as u64;
    let reg = |i: usize| -> u64 {
        let off = unsafe { core::ptr::read_volatile(&GO_REGS[i]) } as u64;
        unsafe { rk::<u64>(regs + off) }.unwrap_or(0)
    };
    let cookie = unsafe { generated::bpf_get_attach_cookie(ctx.regs.cast()) };
    let kind = tracer_common::go_probe::kind(cookie);
    let h = &mut e.header;
    fill_header(h, EventKind::GoProbe, 0, kind as i32, &t.comm, &NO_SOCK);
    h.captured = 32;
    h.goroutine = reg(0);
    let (a0, mut a2, mut a3) = (reg(1), reg(3), reg(4));
    // Field offsets of this binary's `*transport.Stream`, from its DWARF
    // or the agent's table (`tracer_common::go_probe::cookie`).
    let (id_off, ct_off) = (tracer_common::go_probe::field_a(cookie), tracer_common::go_probe::field_b(cookie));
    if kind == tracer_common::go_probe::HANDLE_STREAM {
        // The stream's id.
        a3 = unsafe { aya_ebpf::helpers::bpf_probe_read_user((a3 + id_off) as *const u32) }.map_or(0, u64::from);
    } else if kind == tracer_common::go_probe::NEWSTREAM_RET {
        // The returned *transport.Stream: its id, and its client transport.
        a3 = unsafe { aya_ebpf::helpers::bpf_probe_read_user((a0 + id_off) as *const u32) }.map_or(0, u64::from);
        a2 = unsafe { aya_ebpf::helpers::bpf_probe_read_user((a0 + ct_off) as *const u64) }.unwrap_or(0);
    }
    e.args = [a0, reg(2), a2, a3];
    stamp(&mut e.header, 0);
    // SAFETY: GoEvent is plain old data.
    let bytes =
        unsafe { core::slice::from_raw_parts(e as *const GoEvent as *const u8, core::mem::size_of::<GoEvent>()) };
    output(cfg, bytes);
    0
}

// ------------------------------------------------------------ process path

/// The socket of events that are about no socket.
static NO_SOCK: SockInfo = SockInfo::zeroed();

/// `signal_struct.flags` bit: the whole process is exiting.
const SIGNAL_GROUP_EXIT: u32 = 4;

/// Writes a thread event (slot 1 of `HEADERS`): `tid` is the thread it is
/// about, `ret` the other thread if there is one.
#[inline(always)]
fn thread_event(cfg: &Config, kind: EventKind, comm: &[u8; 16], ret: i64) {
    let Some(h) = HEADERS.get_ptr_mut(1) else { return };
    let h = unsafe { &mut *h };
    fill_header(h, kind, syscall::THREAD, -1, comm, &NO_SOCK);
    h.ret = ret;
    stamp(h, 0);
    // SAFETY: EventHeader is plain old data.
    let bytes = unsafe { core::slice::from_raw_parts(h as *const EventHeader as *const u8, HEADER_SIZE) };
    output(cfg, bytes);
}

/// A thread of a traced process created a thread (not a process): the
/// agent learns which thread made which, so that work a request's thread
/// hands to a thread it made can be followed.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let child: u64 = ctx.arg(1);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let o = &cfg.offsets;
    let Some(child_tgid) = (unsafe { rk::<i32>(child + o.task_tgid as u64) }) else { return 0 };
    if child_tgid as u32 != tgid {
        return 0;
    }
    let Some(child_tid) = (unsafe { rk::<i32>(child + o.task_pid as u64) }) else { return 0 };
    let Some(t) = traced_task(cfg, tgid) else { return 0 };
    let _ = SPAWNED.insert(&(child_tid as u32), &1, 0);
    thread_event(cfg, EventKind::Spawn, &t.comm, child_tid as i64);
    0
}

/// A thread reported at its creation ended.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> i32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    if unsafe { SPAWNED.get(&tid) }.is_none() {
        return 0;
    }
    let _ = SPAWNED.remove(&tid);
    let Some(cfg) = config() else { return 0 };
    let o = &cfg.offsets;
    let task = unsafe { bpf_get_current_task() };
    let signal: u64 = unsafe { rk(task + o.task_signal as u64) }.unwrap_or(0);
    let flags: u32 = if signal == 0 { 0 } else { unsafe { rk(signal + o.signal_flags as u64) }.unwrap_or(0) };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let whole_process = flags & SIGNAL_GROUP_EXIT != 0;
    thread_event(cfg, EventKind::ThreadExit, &comm, whole_process as i64);
    0
}

/// A process that execs may change its name: its verdict is made again.
/// (Other threads are gone by now; a thread's state goes with the thread.)
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    TASKS.delete_current();
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
