//! Types shared by the kernel programs (`tracer-ebpf`) and the user-space agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of `bool`, with explicit
//! padding, so both sides agree on the layout byte for byte.
#![no_std]

/// Largest payload prefix a single event can carry. The configured capture
/// size (`Config::capture_bytes`) is clamped to this.
pub const MAX_CAPTURE: usize = 4096;
/// Default number of payload bytes captured per syscall.
pub const DEFAULT_CAPTURE: u32 = 2048;
/// How many iovec entries of a `readv`/`writev`/`sendmsg`/`recvmsg` are walked.
pub const MAX_IOV: usize = 64;

/// Stable numeric event kinds.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Bytes the process received on a socket.
    Recv = 1,
    /// Bytes the process sent on a socket.
    Send = 2,
    /// `accept`/`accept4` returned a new connection (server side).
    Accept = 3,
    /// `connect` started or completed a connection (client side).
    Connect = 4,
    /// `close` on a TCP socket.
    Close = 5,
    /// A thread of a traced process created another thread: `tid` is the
    /// creating thread, `ret` the new thread's id.
    Spawn = 6,
    /// A thread reported by a `Spawn` event ended: `tid` is that thread;
    /// `ret` is 1 when it ended because its whole process did.
    ThreadExit = 7,
    /// Written by the agent into recordings, not by the probes: what the
    /// runtime of process `pid` (named `comm`) is; `ret` is 1 for Go.
    Runtime = 8,
    /// A Go function probe fired (`fd` holds which: `go_probe::*`); the
    /// payload holds the function's first four integer register arguments
    /// (`go_probe` says where one is read through instead).
    GoProbe = 9,
    /// Written by the agent into recordings, not by the probes: the routes
    /// process `pid` registered for its local port `ret`, one
    /// `METHOD template` line each in the payload.
    Routes = 10,
    /// The probes chose trace ids for a request on socket `sock` (only with
    /// a carrier on, see `carrier`): `ret` holds `carrier::*` flags, the
    /// payload a `CarrierIds`. Comes before the data event of the bytes it
    /// is about, so the agent gives the span these ids, the ones the wire
    /// carries.
    Context = 11,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Recv,
            2 => Self::Send,
            3 => Self::Accept,
            4 => Self::Connect,
            5 => Self::Close,
            6 => Self::Spawn,
            7 => Self::ThreadExit,
            8 => Self::Runtime,
            9 => Self::GoProbe,
            10 => Self::Routes,
            11 => Self::Context,
            _ => return None,
        })
    }
}

/// Which syscall produced an event (for diagnostics).
pub mod syscall {
    pub const READ: u16 = 1;
    pub const WRITE: u16 = 2;
    pub const READV: u16 = 3;
    pub const WRITEV: u16 = 4;
    pub const RECVFROM: u16 = 5;
    pub const SENDTO: u16 = 6;
    pub const RECVMSG: u16 = 7;
    pub const SENDMSG: u16 = 8;
    pub const ACCEPT: u16 = 9;
    pub const ACCEPT4: u16 = 10;
    pub const CONNECT: u16 = 11;
    pub const CLOSE: u16 = 12;
    pub const RECVMMSG: u16 = 13;
    pub const SENDMMSG: u16 = 14;
    pub const SENDFILE: u16 = 15;
    /// Not a syscall: a thread was created or ended.
    pub const THREAD: u16 = 16;
}

/// Role hint recorded by the kernel: who opened the connection.
pub mod role {
    pub const UNKNOWN: u8 = 0;
    /// This process accepted the connection.
    pub const SERVER: u8 = 1;
    /// This process connected.
    pub const CLIENT: u8 = 2;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// A TCP socket as seen from the traced process: local and remote address.
/// IPv4 addresses are stored in the first four bytes of the address arrays.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockInfo {
    /// Socket inode number: stable identity of the connection while it lives.
    pub ino: u64,
    pub family: u16,
    /// Local port, host byte order.
    pub lport: u16,
    /// Remote port, host byte order.
    pub rport: u16,
    pub role: u8,
    pub _pad: u8,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}

impl SockInfo {
    pub const fn zeroed() -> Self {
        Self { ino: 0, family: 0, lport: 0, rport: 0, role: 0, _pad: 0, laddr: [0; 16], raddr: [0; 16] }
    }
}

/// Header of every event written to the ring buffer. Data events are
/// followed by `captured` payload bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    pub syscall: u16,
    pub _pad0: u16,
    /// Monotonic (CLOCK_MONOTONIC / `bpf_ktime_get_ns`) time at syscall entry.
    pub ts_enter: u64,
    /// Monotonic time at syscall exit.
    pub ts_exit: u64,
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    /// Bytes captured after this header.
    pub captured: u32,
    /// Syscall return value: the true byte count for data events.
    pub ret: i64,
    pub comm: [u8; 16],
    pub sock: SockInfo,
    /// For data events: the register in which the Go runtime keeps the
    /// current goroutine (r14 on x86-64, x28 on arm64), as saved at the
    /// syscall's entry. Meaningless (any value) outside Go programs.
    pub goroutine: u64,
}

pub const HEADER_SIZE: usize = core::mem::size_of::<EventHeader>();

/// A data event as laid out in the kernel's per-CPU scratch buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub header: EventHeader,
    pub payload: [u8; MAX_CAPTURE],
}

/// Kernel struct member offsets, read from the running kernel's BTF by the
/// agent at load time and handed to the probes. All offsets in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sock` members (`skc_*` sit in its leading `sock_common`).
    pub sk_family: u32,
    pub sk_type: u32,
    pub sk_protocol: u32,
    pub sk_socket: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    /// Offset of the inode that follows a `struct socket` in `struct socket_alloc`.
    pub socket_inode: u32,
    pub inode_ino: u32,
    pub task_group_leader: u32,
    pub task_comm: u32,
    pub task_flags: u32,
    /// `task_struct.pid` (the thread id) and `task_struct.tgid` (the process id).
    pub task_pid: u32,
    pub task_tgid: u32,
    /// `task_struct.signal` and `signal_struct.flags`: whether a thread ends
    /// because its whole process does.
    pub task_signal: u32,
    pub signal_flags: u32,
    /// `struct pt_regs` offsets of a syscall's first three arguments, as they
    /// still are when the syscall returns.
    pub regs_arg: [u32; 3],
    /// `struct pt_regs` offset of the syscall number.
    pub regs_nr: u32,
    /// `struct pt_regs` offset of the register holding Go's current goroutine.
    pub regs_goroutine: u32,
}

/// Which Go function a `GoProbe` event comes from (the uprobe's cookie).
pub mod go_probe {
    /// Entry of `net/http.(*persistConn).roundTrip`: the calling goroutine
    /// hands a request to connection `arg0` (the `*persistConn`).
    pub const ROUND_TRIP: u32 = 1;
    /// Entry of `net/http.persistConnWriter.Write`: the writing goroutine
    /// writes on connection `arg0`.
    pub const CONN_WRITE: u32 = 2;
    /// Entry of `runtime.newproc1`: goroutine `arg1` (`callergp`) starts one.
    pub const NEWPROC: u32 = 3;
    /// A return of `runtime.newproc1`: `arg0` is the new goroutine.
    pub const NEWPROC_RET: u32 = 4;
    /// Entry of `google.golang.org/grpc.(*Server).handleStream`: the
    /// goroutine runs the handler of stream `arg3` (its id, read from the
    /// `*transport.Stream`'s first field) of server transport `arg2` (the
    /// interface's data pointer).
    pub const HANDLE_STREAM: u32 = 5;
    /// A return of `google.golang.org/grpc/internal/transport.(*http2Client).NewStream`:
    /// the goroutine opened stream `arg3` (its id, the returned
    /// `*transport.Stream`'s first field) on client transport `arg2` (the
    /// stream's `ct` field).
    pub const NEWSTREAM_RET: u32 = 6;
    /// Entry of `github.com/gin-gonic/gin.(*Engine).ServeHTTP`: the
    /// goroutine serves a request with engine `arg0`. Attached to one
    /// process at a time, and detached once its routes are read.
    pub const GIN_SERVE: u32 = 7;

    /// The attach cookie of a probe point: its kind in the low 16 bits,
    /// and up to two struct field offsets the probe reads through (for
    /// `HANDLE_STREAM` and `NEWSTREAM_RET`: `transport.Stream.id`, then
    /// `transport.Stream.ct`), 16 bits each above it.
    pub const fn cookie(kind: u32, a: u16, b: u16) -> u64 {
        (kind as u64 & 0xffff) | (a as u64) << 16 | (b as u64) << 32
    }

    pub const fn kind(cookie: u64) -> u32 {
        (cookie & 0xffff) as u32
    }

    pub const fn field_a(cookie: u64) -> u64 {
        (cookie >> 16) & 0xffff
    }

    pub const fn field_b(cookie: u64) -> u64 {
        (cookie >> 32) & 0xffff
    }
}

/// Filter modes for the pid/comm/port allow lists.
pub mod filter {
    /// Bit set in `Config::flags` when the pid allow list is active.
    pub const PID_ALLOW: u32 = 1 << 0;
    /// Bit set when the comm allow list is active.
    pub const COMM_ALLOW: u32 = 1 << 1;
    /// Bit set when the port allow list is active.
    pub const PORT_ALLOW: u32 = 1 << 2;
    /// Bits set when the matching map holds deny entries.
    pub const PID_DENY: u32 = 1 << 3;
    pub const COMM_DENY: u32 = 1 << 4;
    pub const PORT_DENY: u32 = 1 << 5;
    /// Value stored in filter maps: allow.
    pub const ALLOW: u8 = 1;
    /// Value stored in filter maps: deny.
    pub const DENY: u8 = 2;
}

/// Bits of `Config::flags` that are not filters.
pub mod mode {
    /// Write events to the per-CPU ring buffers (`RINGS`) instead of the shared one (`EVENTS`).
    pub const PER_CPU_RINGS: u32 = 1 << 8;
    /// Carry trace context between hosts in a TCP header option
    /// (`carrier`).
    pub const CARRIER_TCP_OPTION: u32 = 1 << 9;
}

/// Trace context carried between hosts in a TCP header option: an
/// experimental option (RFC 6994: kind 254 and a 16-bit experiment id),
/// then the trace id and the span id of the client span that sent the
/// segment, 28 bytes in all.
pub mod carrier {
    /// TCP option kind for experiments with an experiment id.
    pub const KIND: u8 = 254;
    /// This option's experiment id.
    pub const EXID: u16 = 0x5452;
    /// Bytes of the option, kind and length included.
    pub const OPTION_LEN: u8 = 28;
    /// `Context` event flags (its `ret`): ids of a request read on a
    /// server socket;
    pub const SERVER: i64 = 1;
    /// ids of a request being sent on a client socket;
    pub const CLIENT: i64 = 2;
    /// the parent span id is the remote client's, from the TCP option.
    pub const REMOTE: i64 = 4;
}

/// The payload of a `Context` event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CarrierIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Zero when there is none.
    pub parent_id: [u8; 8],
}

/// Size of each per-CPU ring buffer (bytes; a power of two, multiple of the page size).
pub const PER_CPU_RING_BYTES: u32 = 2 << 20;
/// Size of the shared ring buffer.
pub const SHARED_RING_BYTES: u32 = 8 << 20;
/// Highest number of CPUs the per-CPU ring buffers cover.
pub const MAX_CPUS: u32 = 512;

/// Run-time configuration written by the agent into the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// The agent's own tgid: never traced.
    pub self_pid: u32,
    /// Payload bytes captured per syscall, at most `MAX_CAPTURE`.
    pub capture_bytes: u32,
    /// `filter::*` bits.
    pub flags: u32,
    pub _pad: u32,
    pub offsets: KernelOffsets,
}

/// Indices into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Events dropped because the ring buffer was full.
    pub const LOST: u32 = 0;
    /// Data events whose payload was cut at `capture_bytes`.
    pub const TRUNCATED: u32 = 1;
    /// Events written.
    pub const SENT: u32 = 2;
    /// Payload copies that failed (`bpf_probe_read_user` error).
    pub const READ_ERRORS: u32 = 3;
    pub const COUNT: u32 = 4;
}

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SockInfo {}
}

const _: () = assert!(core::mem::size_of::<SockInfo>() == 48);
const _: () = assert!(core::mem::size_of::<EventHeader>() == 40 + 8 + 16 + 48 + 8);
const _: () = assert!(MAX_CAPTURE.is_power_of_two());
