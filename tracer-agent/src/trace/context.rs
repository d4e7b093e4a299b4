//! Request context: the ids of every HTTP/1 request are fixed when its head
//! is seen, and each outgoing call is linked to the request its process is
//! serving only where the evidence is certain.
//!
//! How a parent is found, in order (the `tracer.parent.source` values):
//! - `header`: the request carries `traceparent`, `b3` or `X-B3-*`; that
//!   context wins, and what it causes stays in its trace.
//! - `peer`: both ends of a same-host connection are traced: the server span
//!   is the child of the client span that sent the request (matched by the
//!   connection and the request target, in order). Whichever end is seen
//!   first leaves its ids for the other.
//! - `thread`: a call made on the thread that read a request, while that
//!   request is in flight (from its head until its response is sent), is
//!   its child. This holds for thread-per-request servers; a process where
//!   a response was written by another thread than the one that read its
//!   request (event loops handing work over, runtimes that move tasks
//!   between threads) loses the mechanism for good, and so do Go programs.
//! - `forwarded`: more than one request was in flight on the calling
//!   thread (an event loop such as nginx), and exactly one of them has the
//!   call's method, target and user agent: a proxy forwarding it.
//! - `ambiguous`: more than one request was in flight on the calling
//!   thread and none of the above decides: no parent, but span links to the
//!   candidates, counted.
//!
//! A context never outlives its request: it ends when the response is sent
//! (or the connection ends), and after [`MAX_REQUEST_NS`] at the latest, so
//! a keep-alive connection or a long-lived thread never carries one trace
//! into the next request.

use std::collections::VecDeque;

use ahash::AHashMap as HashMap;
use compact_str::CompactString;

use crate::conntrack::{Started, Task, Tuple};
use crate::span::{ConnMeta, IdGenerator, ParentContext, SpanKind};

/// How a span's parent (or its links) was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Header,
    Peer,
    Thread,
    ThreadSpawn,
    Goroutine,
    Forwarded,
    Ambiguous,
    TcpOption,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Header => "header",
            Source::Peer => "peer",
            Source::Thread => "thread",
            Source::ThreadSpawn => "thread_spawn",
            Source::Goroutine => "goroutine",
            Source::Forwarded => "forwarded",
            Source::Ambiguous => "ambiguous",
            Source::TcpOption => "tcp-option",
        }
    }
}

/// The ids a span gets from the linker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assigned {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
    pub source: Option<Source>,
    /// Candidate parents when the parent is ambiguous: (trace id, span id).
    pub links: Vec<([u8; 16], [u8; 8])>,
}

/// Counters of the linker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Parents found by each mechanism.
    pub by_header: u64,
    pub by_peer: u64,
    pub by_thread: u64,
    pub by_thread_spawn: u64,
    pub by_goroutine: u64,
    pub by_forwarded: u64,
    /// Server spans whose parent came from another host in a TCP option.
    pub by_tcp_option: u64,
    /// Calls made under the ids the probes put on the wire.
    pub carried: u64,
    /// Calls with more than one candidate parent: linked, not parented.
    pub ambiguous: u64,
    /// Processes found to hand requests between threads: thread linking off.
    pub handoff_processes: u64,
    /// Go processes (goroutines move between threads): thread linking off.
    pub go_processes: u64,
}

/// The request a goroutine was made for: its window on goroutine `by`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GoMade {
    by: u64,
    ino: u64,
    seq: u64,
}

/// Most entries of each kind of Go probe state.
const MAX_GO_STATE: usize = 65_536;

/// Tag of goroutine keys (`Linker::key`): user-space addresses never have it.
const GO_KEY: u64 = 1 << 63;

/// Longest a request is taken to be in flight.
pub const MAX_REQUEST_NS: u64 = 60_000_000_000;
/// How long a finished request's window is kept for calls whose exchange
/// finishes after it (their start is what is compared).
const WINDOW_KEEP_NS: u64 = 10_000_000_000;
/// How long one end of a same-host connection waits for the other.
const PEER_TTL_NS: u64 = 30_000_000_000;
/// How long a provisional trace id is rewritten to the one it turned out to be.
const ALIAS_TTL_NS: u64 = 120_000_000_000;
/// Most windows kept per thread, most waiting ends per connection.
const WINDOWS_PER_THREAD: usize = 64;
const PEERS_PER_CONN: usize = 64;
/// Most candidates a call is linked to when its parent is ambiguous.
const MAX_LINKS: usize = 4;
/// How long after its request ended a thread made during it may end and
/// still count as made for that request (a runtime's join can return
/// before the kernel thread is gone).
pub const SPAWN_GRACE_NS: u64 = 1_000_000_000;
/// How long a server span made before its client end was seen waits for
/// it; the `pending` mark of such a wait.
const PEER_WAIT_NS: u64 = 2_000_000_000;
const PEER_WAIT: (u32, u64) = (0, u64::MAX);
const MAX_WAITING_PEERS: usize = 4096;

/// Most calls of one such thread held for its verdict.
const MAX_SPAWN_CALLS: usize = 64;
/// Most threads followed from their creation at once.
const MAX_SPAWNED: usize = 65_536;

/// What became of the calls of a thread made during a request: they are
/// held (their trace id is provisional) until this is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The thread ended while its request was in flight (or just after):
    /// it was made for that request, and its calls are that request's.
    Linked,
    /// It outlived its request (a pool's worker, say, which may have run
    /// other requests' work): its calls get no parent, only a link to the
    /// request whose thread made it.
    Unproven { link: ([u8; 16], [u8; 8]) },
    /// A server span's client end never showed: the spans whose parent is
    /// `parent` (by `peer`) get none.
    NoPeer { parent: [u8; 8] },
}

/// A thread made by a request's thread while that request was in flight.
#[derive(Clone, Debug)]
struct Spawned {
    /// The making request: its thread, connection and number.
    parent_tid: u64,
    ino: u64,
    seq: u64,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    sampled: bool,
    /// The provisional trace of each of the thread's calls (each its own,
    /// so that calls of a thread found to serve several requests never
    /// share a trace).
    provisional: Vec<[u8; 16]>,
    made: u64,
}

/// The context of a request whose head was seen.
#[derive(Clone, Debug)]
struct Ctx {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    sampled: bool,
    source: Option<Source>,
    links: Vec<([u8; 16], [u8; 8])>,
    /// The thread (or goroutine) key of the request: see [`Linker::key`].
    tid: u64,
    made: u64,
    pid: u32,
    /// A server request.
    server: bool,
    /// The connection's local port.
    port: u16,
    /// The goroutine running its handler, when that is another than the
    /// one that read it (gRPC-Go).
    handler: Option<u64>,
    /// A server request whose client end has not been seen yet: its parent
    /// holds only once that end shows up.
    tentative: bool,
}

/// A request in flight on a thread: from its head to its response.
#[derive(Clone, Copy, Debug)]
struct Window {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    sampled: bool,
    ino: u64,
    seq: u64,
    fingerprint: u64,
    start: u64,
    /// `u64::MAX` while the response is not yet sent.
    end: u64,
}

impl Window {
    fn covers(&self, t: u64) -> bool {
        self.start <= t && t <= self.end && t.saturating_sub(self.start) <= MAX_REQUEST_NS
    }
}

/// One end of a same-host connection waiting for the other.
#[derive(Clone, Debug)]
struct PeerEnd {
    target: CompactString,
    trace_id: [u8; 16],
    /// The client span's id, chosen by whichever end came first.
    client_span_id: [u8; 8],
    sampled: bool,
    by_client: bool,
    /// The server request that left this end (to confirm its parent).
    server: Option<(u64, u64)>,
    made: u64,
}

#[derive(Clone, Debug, Default)]
struct Process {
    /// A response was written by another thread than the one that read its
    /// request: threads do not stand for requests here.
    handoff: bool,
    /// A Go program: its requests and calls are matched by goroutine.
    go: bool,
    /// The goroutine-creation probes were asked for (see `go_wanted`).
    goroutines_asked: bool,
    /// The process name its runtime was looked at under; another name under
    /// the same pid is another program (a pid reused, or an exec).
    comm: Option<std::sync::Arc<str>>,
}

#[derive(Default)]
pub struct Linker {
    pub ids: IdGenerator,
    /// The ids the probes chose for the next request on a connection (a
    /// carrier is on): `carrier::*` flags and the ids, by socket inode.
    kernel: HashMap<u64, (i64, tracer_common::CarrierIds)>,
    started: HashMap<(u64, u64), Ctx>,
    threads: HashMap<(u32, u64), VecDeque<Window>>,
    peers: HashMap<Tuple, VecDeque<PeerEnd>>,
    /// Provisional trace ids (chosen by a server before its client was
    /// seen) and the trace they turned out to belong to.
    aliases: HashMap<[u8; 16], ([u8; 16], u64)>,
    procs: HashMap<u32, Process>,
    /// Threads made during a request, by (pid, tid).
    spawned: HashMap<(u32, u64), Spawned>,
    /// Provisional traces whose verdict is not known yet, and their thread.
    pending: HashMap<[u8; 16], (u32, u64)>,
    /// Server spans made before their client end was seen, waiting for it
    /// under their provisional trace: (when made, the client span id).
    waiting_peers: HashMap<[u8; 16], (u64, [u8; 8])>,
    /// Goroutines made during a request (directly or not), and that request.
    go_made: HashMap<(u32, u64), GoMade>,
    /// `runtime.newproc1` entered on a thread, by the goroutine it names.
    go_newproc: HashMap<(u32, u32), u64>,
    /// net/http connections (`*persistConn`) handed a request, and by whom.
    go_calls: HashMap<(u32, u64), u64>,
    /// gRPC-Go client transports and the connection each writes.
    go_client_transports: HashMap<(u32, u64), u64>,
    /// gRPC-Go client streams opened and not yet seen started:
    /// (pid, transport, stream id) → (opening goroutine, when).
    go_streams: HashMap<(u32, u64, u32), (u64, u64)>,
    /// gRPC-Go server transports and the connection each serves.
    go_transports: HashMap<(u32, u64), u64>,
    /// Goroutines that write net/http connections, and which.
    go_writers: HashMap<(u32, u64), u64>,
    /// Go processes where a call was made by a goroutine that stands for
    /// no request it is known to have been made for: the probes on
    /// goroutine creation are wanted there (they cost two probe hits per
    /// goroutine made, so they are attached only where they are needed).
    pub go_wanted: Vec<u32>,
    /// Verdicts reached and not yet taken by [`Linker::take_verdicts`].
    verdicts: Vec<([u8; 16], Verdict)>,
    pub stats: LinkStats,
}

impl Linker {
    /// The trace a (possibly provisional) trace id turned out to be.
    fn resolve(&self, mut t: [u8; 16]) -> [u8; 16] {
        if self.aliases.is_empty() {
            return t;
        }
        for _ in 0..8 {
            match self.aliases.get(&t) {
                Some((to, _)) if *to != t => t = *to,
                _ => break,
            }
        }
        t
    }

    /// The key under which the requests and calls of `task` (in `pid`) are
    /// matched: its goroutine in a Go program (tagged apart from thread
    /// ids), else its thread.
    fn key(&self, pid: u32, task: Task) -> u64 {
        if task.g != 0 && self.is_go(pid) {
            task.g | GO_KEY
        } else {
            u64::from(task.tid)
        }
    }

    fn is_go(&self, pid: u32) -> bool {
        self.procs.get(&pid).is_some_and(|p| p.go)
    }

    fn thread_linking(&self, pid: u32) -> bool {
        !self.procs.get(&pid).is_some_and(|p| p.handoff)
    }

    /// The parent of a call made by thread (`pid`, `tid`) at `t`; `forward`
    /// is the fingerprint of an HTTP call.
    /// `inherit`: a thread (goroutine) serving no request may take the
    /// request of the one that made it.
    fn thread_parent(&mut self, pid: u32, tid: u64, t: u64, forward: Option<u64>, inherit: bool, ctx: &mut Ctx) {
        if !self.thread_linking(pid) {
            return;
        }
        let Some(ws) = self.threads.get(&(pid, tid)) else { return self.made_parent(pid, tid, t, inherit, ctx) };
        let mut found = ws.iter().filter(|w| w.covers(t));
        let Some(first) = found.next().copied() else { return self.made_parent(pid, tid, t, inherit, ctx) };
        let others: Vec<Window> = found.copied().collect();
        if others.is_empty() {
            ctx.trace_id = self.resolve(first.trace_id);
            ctx.parent = Some(first.span_id);
            ctx.sampled = first.sampled;
            if tid & GO_KEY != 0 {
                ctx.source = Some(Source::Goroutine);
                self.stats.by_goroutine += 1;
            } else {
                ctx.source = Some(Source::Thread);
                self.stats.by_thread += 1;
            }
        } else if let Some(w) = forward.and_then(|fp| {
            let mut same = std::iter::once(&first).chain(&others).filter(|w| w.fingerprint == fp);
            let one = same.next().copied();
            one.filter(|_| same.next().is_none())
        }) {
            ctx.trace_id = self.resolve(w.trace_id);
            ctx.parent = Some(w.span_id);
            ctx.sampled = w.sampled;
            ctx.source = Some(Source::Forwarded);
            self.stats.by_forwarded += 1;
        } else {
            ctx.source = Some(Source::Ambiguous);
            ctx.links = std::iter::once(first)
                .chain(others)
                .take(MAX_LINKS)
                .map(|w| (self.resolve(w.trace_id), w.span_id))
                .collect();
            self.stats.ambiguous += 1;
        }
    }

    /// A call at `t` by a thread or goroutine serving no request itself.
    fn made_parent(&mut self, pid: u32, key: u64, t: u64, inherit: bool, ctx: &mut Ctx) {
        if !inherit {
            return;
        }
        if key & GO_KEY == 0 {
            return self.spawn_parent(pid, key, t, ctx);
        }
        // A goroutine made (directly or not) by a request's goroutine
        // while that request is in flight.
        let Some(made) = self.go_made.get(&(pid, key)).copied() else { return };
        let Some(w) = self.window(pid, made.by, made.ino, made.seq).filter(|w| w.covers(t)).copied() else { return };
        ctx.trace_id = self.resolve(w.trace_id);
        ctx.parent = Some(w.span_id);
        ctx.sampled = w.sampled;
        ctx.source = Some(Source::Goroutine);
        self.stats.by_goroutine += 1;
    }

    /// A Go function probe fired in `pid` on thread `tid`, goroutine
    /// register `g`, at `t` (`tracer_common::go_probe` kinds).
    pub fn go_probe(&mut self, pid: u32, tid: u32, g: u64, kind: u32, args: [u64; 4], t: u64) {
        use tracer_common::go_probe;
        if !self.is_go(pid) {
            return;
        }
        match kind {
            go_probe::ROUND_TRIP if g != 0 => {
                if self.go_calls.len() >= MAX_GO_STATE {
                    self.go_calls.clear();
                }
                let caller = g | GO_KEY;
                self.go_calls.insert((pid, args[0]), caller);
                if self.request_of(pid, caller, t).is_none() {
                    self.want_goroutines(pid);
                }
            }
            go_probe::CONN_WRITE if g != 0 => {
                if self.go_writers.len() >= MAX_GO_STATE {
                    self.go_writers.clear();
                }
                self.go_writers.insert((pid, g | GO_KEY), args[0]);
            }
            go_probe::NEWPROC if args[1] != 0 => {
                self.go_newproc.insert((pid, tid), args[1] | GO_KEY);
            }
            go_probe::NEWSTREAM_RET if g != 0 && args[3] != 0 && args[2] != 0 => {
                self.grpc_stream_opened(pid, g | GO_KEY, args[2], args[3] as u32, t);
            }
            go_probe::HANDLE_STREAM if g != 0 && args[3] != 0 => {
                self.grpc_handler(pid, g | GO_KEY, args[2], args[3] as u32, t);
            }
            go_probe::NEWPROC_RET if args[0] != 0 => {
                let Some(by) = self.go_newproc.remove(&(pid, tid)) else { return };
                let child = args[0] | GO_KEY;
                // A reused goroutine starts afresh.
                self.go_made.remove(&(pid, child));
                let made = self.request_of(pid, by, t);
                if let Some(m) = made {
                    if self.go_made.len() < MAX_GO_STATE {
                        self.go_made.insert((pid, child), m);
                    }
                }
            }
            _ => {}
        }
    }

    /// Goroutine `handler` of `pid` runs the handler of stream `id` of
    /// gRPC-Go server transport `transport` (from `handleStream`): it
    /// stands for that stream's request until the stream ends. The
    /// transport's connection is learnt the first time only one stream in
    /// flight in the process has that id, and kept until it closes.
    fn grpc_handler(&mut self, pid: u32, handler: u64, transport: u64, id: u32, t: u64) {
        let seq = crate::conntrack::h2_seq(id);
        let ino = match self.go_transports.get(&(pid, transport)) {
            Some(&ino) => Some(ino),
            None => {
                let mut found = self
                    .started
                    .iter()
                    .filter(|((_, sq), c)| *sq == seq && c.pid == pid && c.server && c.handler.is_none() && c.made <= t)
                    .map(|((ino, _), _)| *ino);
                match (found.next(), found.next()) {
                    (Some(ino), None) => {
                        if self.go_transports.len() < MAX_GO_STATE {
                            self.go_transports.insert((pid, transport), ino);
                        }
                        Some(ino)
                    }
                    _ => None,
                }
            }
        };
        let Some(ino) = ino else { return };
        let Some(ctx) = self.started.get_mut(&(ino, seq)) else { return };
        if ctx.handler.is_some() || !ctx.server {
            return;
        }
        ctx.handler = Some(handler);
        let w = Window {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            sampled: ctx.sampled,
            ino,
            seq,
            fingerprint: 0,
            start: t,
            end: u64::MAX,
        };
        let ws = self.threads.entry((pid, handler)).or_default();
        for old in ws.iter_mut().filter(|w| w.end == u64::MAX) {
            // A handler goroutine runs one stream at a time.
            old.end = t.max(old.start);
        }
        if ws.len() >= WINDOWS_PER_THREAD {
            ws.pop_front();
        }
        ws.push_back(w);
    }

    /// Goroutine `caller` of `pid` opened stream `id` on gRPC-Go client
    /// transport `transport` (from `NewStream`'s return). The stream's
    /// HEADERS are written by the transport's own goroutine, before or
    /// after this is seen: if its request has started already, it is
    /// linked now, else when it starts.
    fn grpc_stream_opened(&mut self, pid: u32, caller: u64, transport: u64, id: u32, t: u64) {
        let seq = crate::conntrack::h2_seq(id);
        let ino = match self.go_client_transports.get(&(pid, transport)) {
            Some(&ino) => Some(ino),
            None => {
                let mapped: ahash::AHashSet<u64> = self.go_client_transports.values().copied().collect();
                let mut found = self
                    .started
                    .iter()
                    .filter(|((ino, sq), c)| {
                        *sq == seq && c.pid == pid && !c.server && c.source.is_none() && !mapped.contains(ino)
                    })
                    .map(|((ino, _), _)| *ino);
                match (found.next(), found.next()) {
                    (Some(ino), None) => {
                        self.tie_client_transport(pid, transport, ino);
                        Some(ino)
                    }
                    _ => None,
                }
            }
        };
        match ino.and_then(|ino| self.started.get(&(ino, seq)).map(|c| (ino, c.source.is_none() && !c.server))) {
            Some((ino, true)) => self.link_late(pid, ino, seq, caller, t),
            Some((_, false)) => {}
            None => {
                if self.go_streams.len() >= MAX_GO_STATE {
                    self.go_streams.clear();
                }
                self.go_streams.insert((pid, transport, id), (caller, t));
            }
        }
    }

    fn tie_client_transport(&mut self, pid: u32, transport: u64, ino: u64) {
        if self.go_client_transports.len() < MAX_GO_STATE {
            self.go_client_transports.insert((pid, transport), ino);
        }
    }

    /// The goroutine that opened the gRPC-Go stream `id` starting now on
    /// connection `ino` of `pid`, if the probes saw it.
    fn grpc_caller(&mut self, pid: u32, ino: u64, id: u32) -> Option<u64> {
        if self.go_streams.is_empty() {
            return None;
        }
        let transport = match self.go_client_transports.iter().find(|(&(p, _), &i)| p == pid && i == ino) {
            Some((&(_, t), _)) => t,
            None => {
                let mapped: ahash::AHashSet<u64> = self.go_client_transports.keys().map(|k| k.1).collect();
                let mut found = self.go_streams.keys().filter(|(p, t, i)| *p == pid && *i == id && !mapped.contains(t));
                let (Some(&(_, t, _)), None) = (found.next(), found.next()) else { return None };
                self.tie_client_transport(pid, t, ino);
                t
            }
        };
        self.go_streams.remove(&(pid, transport, id)).map(|(caller, _)| caller)
    }

    /// Links the started client request (`ino`, `seq`) of `pid` to the
    /// request goroutine `caller` stands for at `t`.
    fn link_late(&mut self, pid: u32, ino: u64, seq: u64, caller: u64, t: u64) {
        let Some(m) = self.request_of(pid, caller, t) else { return };
        let Some(w) = self.window(pid, m.by, m.ino, m.seq).copied() else { return };
        let parent_trace = self.resolve(w.trace_id);
        let Some(ctx) = self.started.get_mut(&(ino, seq)) else { return };
        if ctx.trace_id != parent_trace {
            self.aliases.insert(ctx.trace_id, (parent_trace, t));
        }
        ctx.trace_id = parent_trace;
        ctx.parent = Some(w.span_id);
        ctx.sampled = w.sampled;
        ctx.source = Some(Source::Goroutine);
        self.stats.by_goroutine += 1;
    }

    fn want_goroutines(&mut self, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            if p.go && !p.goroutines_asked {
                p.goroutines_asked = true;
                self.go_wanted.push(pid);
            }
        }
    }

    /// The request goroutine `key` stands for at `t`: its own (exactly one
    /// in flight), or the one it was made for.
    fn request_of(&self, pid: u32, key: u64, t: u64) -> Option<GoMade> {
        if let Some(ws) = self.threads.get(&(pid, key)) {
            let mut found = ws.iter().filter(|w| w.covers(t));
            if let (Some(w), None) = (found.next(), found.next()) {
                return Some(GoMade { by: key, ino: w.ino, seq: w.seq });
            }
        }
        let m = *self.go_made.get(&(pid, key))?;
        self.window(pid, m.by, m.ino, m.seq).filter(|w| w.covers(t)).map(|_| m)
    }

    /// The local port of the server request goroutine `g` of `pid` is
    /// serving at `t`, if it is serving exactly one.
    pub fn serving_port(&self, pid: u32, g: u64, t: u64) -> Option<u16> {
        if g == 0 {
            return None;
        }
        let m = self.request_of(pid, g | GO_KEY, t)?;
        let c = self.started.get(&(m.ino, m.seq))?;
        (c.server && c.pid == pid).then_some(c.port)
    }

    /// The goroutine that called the net/http transport for the request
    /// goroutine `writer` is writing now, if the probes saw it.
    fn go_caller(&mut self, pid: u32, writer: u64) -> Option<u64> {
        let conn = *self.go_writers.get(&(pid, writer))?;
        self.go_calls.remove(&(pid, conn))
    }

    /// The window of request (`ino`, `seq`) on thread (`pid`, `tid`).
    fn window(&self, pid: u32, tid: u64, ino: u64, seq: u64) -> Option<&Window> {
        self.threads.get(&(pid, tid))?.iter().rev().find(|w| w.ino == ino && w.seq == seq)
    }

    /// A call at `t` on a thread that serves no request itself: if a
    /// request's thread made it during that request, and the request is
    /// still in flight, the call is that request's child, held under a
    /// provisional trace until the thread's fate shows it was made for it.
    fn spawn_parent(&mut self, pid: u32, tid: u64, t: u64, ctx: &mut Ctx) {
        if self.spawned.is_empty() {
            return;
        }
        let Some(sp) = self.spawned.get(&(pid, tid)) else { return };
        if !self.window(pid, sp.parent_tid, sp.ino, sp.seq).is_some_and(|w| w.covers(t)) {
            return;
        }
        let p = self.ids.trace_id();
        let Some(sp) = self.spawned.get_mut(&(pid, tid)) else { return };
        if sp.provisional.len() >= MAX_SPAWN_CALLS {
            return;
        }
        sp.provisional.push(p);
        ctx.trace_id = p;
        ctx.parent = Some(sp.span_id);
        ctx.sampled = sp.sampled;
        ctx.source = Some(Source::ThreadSpawn);
        self.pending.insert(p, (pid, tid));
    }

    /// Thread `tid` of `pid` made thread `child` at `t`. It is followed if
    /// exactly one request was in flight on the making thread.
    pub fn spawn(&mut self, pid: u32, tid: u32, child: u32, t: u64) {
        let (tid, child) = (u64::from(tid), u64::from(child));
        if let Some(old) = self.spawned.remove(&(pid, child)) {
            // A thread id reused before the end of its last owner was seen.
            self.settle_spawned(pid, child, old, t, false);
        }
        if !self.thread_linking(pid) || self.spawned.len() >= MAX_SPAWNED || self.is_go(pid) {
            return;
        }
        let Some(ws) = self.threads.get(&(pid, tid)) else { return };
        let mut found = ws.iter().filter(|w| w.end == u64::MAX && w.covers(t));
        let (Some(w), None) = (found.next().copied(), found.next()) else { return };
        self.spawned.insert(
            (pid, child),
            Spawned {
                parent_tid: tid,
                ino: w.ino,
                seq: w.seq,
                trace_id: w.trace_id,
                span_id: w.span_id,
                sampled: w.sampled,
                provisional: Vec::new(),
                made: t,
            },
        );
    }

    /// Thread `tid` of `pid` ended at `t`; `whole_process`: because its
    /// process did (no evidence about what the thread was for).
    pub fn thread_exit(&mut self, pid: u32, tid: u32, t: u64, whole_process: bool) {
        let tid = u64::from(tid);
        if let Some(sp) = self.spawned.remove(&(pid, tid)) {
            self.settle_spawned(pid, tid, sp, t, !whole_process);
        }
    }

    /// Decide what the calls of a thread made during a request were: its
    /// end at `t` (when `ended`) within the request or just after it
    /// proves the thread was made for that request.
    fn settle_spawned(&mut self, pid: u32, tid: u64, sp: Spawned, t: u64, ended: bool) {
        if sp.provisional.is_empty() {
            return;
        }
        let end = self.window(pid, sp.parent_tid, sp.ino, sp.seq).map(|w| w.end);
        let linked = ended
            && match end {
                Some(u64::MAX) => t.saturating_sub(sp.made) <= MAX_REQUEST_NS,
                Some(e) => t <= e.saturating_add(SPAWN_GRACE_NS),
                None => false,
            };
        let parent_trace = self.resolve(sp.trace_id);
        for p in sp.provisional {
            if self.pending.get(&p) != Some(&(pid, tid)) {
                continue;
            }
            self.pending.remove(&p);
            let v = if linked {
                self.aliases.insert(p, (parent_trace, t));
                Verdict::Linked
            } else {
                Verdict::Unproven { link: (parent_trace, sp.span_id) }
            };
            self.verdicts.push((p, v));
        }
    }

    /// Whether spans of trace `t` wait for a verdict.
    pub fn is_pending(&self, t: &[u8; 16]) -> bool {
        !self.pending.is_empty() && self.pending.contains_key(t)
    }

    /// Decide now for provisional trace `p` (too much is held): unproven.
    pub fn settle_now(&mut self, p: [u8; 16]) {
        if let Some((_, parent)) = self.waiting_peers.remove(&p) {
            self.pending.remove(&p);
            self.verdicts.push((p, Verdict::NoPeer { parent }));
            return;
        }
        if self.pending.remove(&p).is_some() {
            self.verdicts.push((p, Verdict::Unproven { link: ([0; 16], [0; 8]) }));
        }
    }

    /// Decide for every thread still followed: unproven.
    pub fn settle_all(&mut self) {
        for (t, (_, parent)) in std::mem::take(&mut self.waiting_peers) {
            self.pending.remove(&t);
            self.verdicts.push((t, Verdict::NoPeer { parent }));
        }
        let all: Vec<_> = self.spawned.drain().collect();
        for ((pid, tid), sp) in all {
            self.settle_spawned(pid, tid, sp, 0, false);
        }
        for (p, _) in std::mem::take(&mut self.pending) {
            self.verdicts.push((p, Verdict::Unproven { link: ([0; 16], [0; 8]) }));
        }
    }

    /// Verdicts reached since the last call.
    pub fn take_verdicts(&mut self) -> Option<std::vec::Drain<'_, ([u8; 16], Verdict)>> {
        (!self.verdicts.is_empty()).then(|| self.verdicts.drain(..))
    }

    /// The probes chose the ids of the next request on connection `ino`
    /// (`flags`: `tracer_common::carrier::*`): the ids that went, or will
    /// go, on the wire with it.
    pub fn kernel_ids(&mut self, ino: u64, flags: i64, ids: tracer_common::CarrierIds) {
        if self.kernel.len() >= MAX_GO_STATE {
            self.kernel.clear();
        }
        self.kernel.insert(ino, (flags, ids));
    }

    /// The probes' ids for this request, if they chose some for its side.
    fn take_kernel(&mut self, meta: &ConnMeta) -> Option<(i64, tracer_common::CarrierIds)> {
        use tracer_common::carrier;
        if self.kernel.is_empty() {
            return None;
        }
        let side = if meta.kind == SpanKind::Server { carrier::SERVER } else { carrier::CLIENT };
        match self.kernel.get(&meta.ino) {
            Some((flags, _)) if flags & side != 0 => self.kernel.remove(&meta.ino),
            _ => None,
        }
    }

    /// A request head was seen. `peer` is the kind of the traced connection
    /// at the other end of this one on this host, if any.
    pub fn start(&mut self, s: &Started, peer: Option<SpanKind>) {
        use tracer_common::carrier;
        let kernel = self.take_kernel(&s.meta);
        let meta = &s.meta;
        let mut ctx = Ctx {
            trace_id: [0; 16],
            span_id: self.ids.span_id(),
            parent: None,
            sampled: true,
            source: None,
            links: Vec::new(),
            tid: self.key(meta.pid, s.task),
            made: s.ts,
            pid: meta.pid,
            server: meta.kind == SpanKind::Server,
            port: meta.local_port,
            handler: None,
            tentative: false,
        };
        if let Some(h) = s.header {
            set_header(&mut ctx, &h);
            self.stats.by_header += 1;
        }
        // The span ids the probes chose are the ones the wire carries (or
        // the ones this request's calls carry): the span takes them.
        if let Some((_, k)) = &kernel {
            ctx.span_id = k.span_id;
        }
        match meta.kind {
            SpanKind::Server => {
                if let Some((_, k)) = kernel.filter(|(f, _)| f & carrier::REMOTE != 0) {
                    if ctx.source.is_none() {
                        ctx.trace_id = k.trace_id;
                        ctx.parent = Some(k.parent_id);
                        ctx.source = Some(Source::TcpOption);
                        self.stats.by_tcp_option += 1;
                    }
                }
                if ctx.source.is_none() {
                    let kernel_trace = kernel.as_ref().map(|(_, k)| k.trace_id);
                    self.server_peer(meta, s, peer, kernel_trace, &mut ctx);
                }
                if ctx.source.is_none() {
                    // A new trace: the one this request's calls carry when
                    // the probes chose it.
                    ctx.trace_id = match &kernel {
                        Some((_, k)) => k.trace_id,
                        None => self.ids.trace_id(),
                    };
                }
                // A Go HTTP/2 server (net/http's, gRPC-Go's) reads every
                // stream on one goroutine and runs each handler on another:
                // the reader stands for no request.
                if self.is_go(meta.pid) && crate::conntrack::is_h2_seq(s.seq) {
                    self.started.insert((meta.ino, s.seq), ctx);
                    return;
                }
                let ws = self.threads.entry((meta.pid, ctx.tid)).or_default();
                // HTTP/1 answers a connection's requests in order: a new one
                // means those before it were answered, even where the agent
                // missed the answer (it joined mid-way, or bytes were lost).
                // A goroutine serves one HTTP/1 connection at a time: a new
                // request on it ends whatever it still stood for (a request
                // whose answer the agent missed, on a connection since gone
                // and whose goroutine was reused).
                if ctx.tid & GO_KEY != 0 && !crate::conntrack::is_h2_seq(s.seq) {
                    for w in ws.iter_mut().filter(|w| w.end == u64::MAX) {
                        w.end = s.ts.max(w.start);
                    }
                }
                while ws.front().is_some_and(|w| w.end != u64::MAX && s.ts.saturating_sub(w.end) > WINDOW_KEEP_NS)
                    || ws.len() >= WINDOWS_PER_THREAD
                {
                    ws.pop_front();
                }
                ws.push_back(Window {
                    trace_id: ctx.trace_id,
                    span_id: ctx.span_id,
                    sampled: ctx.sampled,
                    ino: meta.ino,
                    seq: s.seq,
                    fingerprint: s.fingerprint,
                    start: s.ts,
                    end: u64::MAX,
                });
            }
            SpanKind::Client => {
                if ctx.source.is_none() {
                    // In Go, net/http writes a call on its connection's own
                    // goroutine: the caller is the goroutine that handed it
                    // to that connection, when the probes saw it; without
                    // them only a goroutine writing for itself is followed.
                    let caller = match (self.is_go(meta.pid), crate::conntrack::is_h2_seq(s.seq)) {
                        (true, false) => self.go_caller(meta.pid, ctx.tid),
                        (true, true) => self.grpc_caller(meta.pid, meta.ino, s.seq as u32),
                        _ => None,
                    };
                    let inherit = caller.is_some() || !self.is_go(meta.pid);
                    let key = caller.unwrap_or(ctx.tid);
                    self.thread_parent(meta.pid, key, s.ts, Some(s.fingerprint), inherit, &mut ctx);
                }
                if ctx.parent.is_none() && ctx.source != Some(Source::Header) {
                    ctx.trace_id = self.ids.trace_id();
                }
                // The probes sent this call under the request its thread
                // alone was serving: that request is its parent, as the
                // wire says.
                if let Some((_, k)) = &kernel {
                    let parent = k.parent_id;
                    if ctx.parent != Some(parent) {
                        let trace = self
                            .threads
                            .get(&(meta.pid, ctx.tid))
                            .and_then(|ws| ws.iter().rev().find(|w| w.span_id == parent))
                            .map(|w| (w.trace_id, w.sampled));
                        let (trace, sampled) = trace.unwrap_or((k.trace_id, true));
                        ctx.trace_id = self.resolve(trace);
                        ctx.parent = Some(parent);
                        ctx.sampled = sampled;
                        ctx.links.clear();
                        ctx.source = Some(Source::Thread);
                    }
                    self.stats.carried += 1;
                }
                self.client_peer(meta, s, peer, &mut ctx);
            }
        }
        self.started.insert((meta.ino, s.seq), ctx);
    }

    /// Connection `ino` ended at `now`: what is still open on it ends too
    /// (a request without an answer must not keep its thread or goroutine,
    /// which may serve another connection next, in its request).
    pub fn connection_closed(&mut self, ino: u64, now: u64) {
        if !self.go_transports.is_empty() {
            self.go_transports.retain(|_, i| *i != ino);
        }
        if !self.go_client_transports.is_empty() {
            self.go_client_transports.retain(|_, i| *i != ino);
        }
        if self.started.is_empty() {
            return;
        }
        // Requests in flight are few: a scan costs less than an index kept
        // up to date on every request.
        let open: Vec<(u64, u64)> = self
            .started
            .iter()
            .filter(|((i, _), _)| *i == ino)
            .flat_map(|((_, seq), c)| std::iter::once((*seq, c.tid)).chain(c.handler.map(|h| (*seq, h))))
            .collect();
        for (seq, key) in open {
            self.started.remove(&(ino, seq));
            for ws in self.threads.iter_mut().filter(|((_, k), _)| *k == key).map(|(_, ws)| ws) {
                for w in ws.iter_mut().filter(|w| w.ino == ino && w.seq == seq && w.end == u64::MAX) {
                    w.end = now.max(w.start);
                }
            }
        }
    }

    /// A server request without trace headers: its parent is the client
    /// span at the other end when that end is traced on this host.
    /// `trace`: the trace id the probes chose for the request (and gave
    /// its calls), the provisional one if the client end is waited for.
    fn server_peer(
        &mut self,
        meta: &ConnMeta,
        s: &Started,
        peer: Option<SpanKind>,
        trace: Option<[u8; 16]>,
        ctx: &mut Ctx,
    ) {
        let client = meta.peer_tuple();
        // Most servers have no traced client on this host: no lookup then.
        let waiting = if self.peers.is_empty() { None } else { self.peers.get_mut(&client) };
        if let Some(q) = waiting {
            if let Some(i) = q.iter().position(|p| p.by_client && p.target == s.target) {
                if let Some(p) = q.remove(i) {
                    if q.is_empty() {
                        self.peers.remove(&client);
                    }
                    ctx.trace_id = self.resolve(p.trace_id);
                    ctx.parent = Some(p.client_span_id);
                    ctx.sampled = p.sampled;
                    ctx.source = Some(Source::Peer);
                    self.stats.by_peer += 1;
                    return;
                }
            }
        }
        // Only when the client end is known to be traced: a server whose
        // clients are not traced (the usual case) pays nothing here. On a
        // same-host connection the agent joined open, the client end may
        // simply not have been seen yet: it waits for it too.
        if peer != Some(SpanKind::Client) && !(s.joined && peer.is_none() && same_host(meta, None)) {
            return;
        }
        // The client's send may not be seen yet: choose its span id and a
        // provisional trace id, which the client end maps to its own. The
        // parent holds only if that end shows up before this span is made.
        let client_span_id = self.ids.span_id();
        ctx.trace_id = trace.unwrap_or_else(|| self.ids.trace_id());
        ctx.parent = Some(client_span_id);
        ctx.source = Some(Source::Peer);
        ctx.tentative = true;
        // What this request causes is held under the provisional trace
        // until the client end shows (or surely will not).
        if self.waiting_peers.len() < MAX_WAITING_PEERS {
            self.pending.insert(ctx.trace_id, PEER_WAIT);
        }
        push_peer(
            self.peers.entry(client).or_default(),
            PeerEnd {
                target: s.target.clone(),
                trace_id: ctx.trace_id,
                client_span_id,
                sampled: ctx.sampled,
                by_client: false,
                server: Some((meta.ino, s.seq)),
                made: s.ts,
            },
        );
    }

    /// A client request: when the server end is traced on this host, its
    /// span becomes the child of this one.
    fn client_peer(&mut self, meta: &ConnMeta, s: &Started, peer: Option<SpanKind>, ctx: &mut Ctx) {
        let client = meta.tuple();
        let waiting = if self.peers.is_empty() { None } else { self.peers.get_mut(&client) };
        if let Some(q) = waiting {
            if let Some(i) = q.iter().position(|p| !p.by_client && p.target == s.target) {
                if let Some(p) = q.remove(i) {
                    if q.is_empty() {
                        self.peers.remove(&client);
                    }
                    // The server end came first: take the span id it chose,
                    // and its provisional trace is this one.
                    ctx.span_id = p.client_span_id;
                    if p.trace_id != ctx.trace_id {
                        self.aliases.insert(p.trace_id, (ctx.trace_id, s.ts));
                    }
                    if let Some(server) = p.server.and_then(|k| self.started.get_mut(&k)) {
                        server.tentative = false;
                        self.stats.by_peer += 1;
                        if self.pending.get(&p.trace_id) == Some(&PEER_WAIT) {
                            self.pending.remove(&p.trace_id);
                            self.verdicts.push((p.trace_id, Verdict::Linked));
                        }
                    } else if self.waiting_peers.remove(&p.trace_id).is_some() {
                        // The server's span was made already and waits.
                        self.pending.remove(&p.trace_id);
                        self.verdicts.push((p.trace_id, Verdict::Linked));
                        self.stats.by_peer += 1;
                    }
                    return;
                }
            }
        }
        if !same_host(meta, peer) {
            return;
        }
        push_peer(
            self.peers.entry(client).or_default(),
            PeerEnd {
                target: s.target.clone(),
                trace_id: ctx.trace_id,
                client_span_id: ctx.span_id,
                sampled: ctx.sampled,
                by_client: true,
                server: None,
                made: s.ts,
            },
        );
    }

    /// Request `from` of connection `ino` continues as request `to` (an
    /// HTTP/1 request upgraded to HTTP/2 stream 1).
    pub fn rekey(&mut self, pid: u32, ino: u64, from: u64, to: u64) {
        let Some(ctx) = self.started.remove(&(ino, from)) else { return };
        if let Some(ws) = self.threads.get_mut(&(pid, ctx.tid)) {
            for w in ws.iter_mut().filter(|w| w.ino == ino && w.seq == from) {
                w.seq = to;
            }
        }
        self.started.insert((ino, to), ctx);
    }

    /// The ids of a finished HTTP/1 exchange whose head was seen, if it was.
    /// For a server exchange this ends its request's window; `responder` is
    /// the thread that wrote the end of the response (0: not known).
    pub fn finish(&mut self, meta: &ConnMeta, seq: u64, end: u64, responder: Task) -> Option<Assigned> {
        let mut ctx = self.started.remove(&(meta.ino, seq))?;
        if ctx.tentative {
            // The client end has not shown yet (its send may return after
            // this answer was written): this span and what it caused wait
            // under the provisional trace for it, a short while.
            if self.pending.get(&ctx.trace_id) == Some(&PEER_WAIT) {
                self.waiting_peers.insert(ctx.trace_id, (end, ctx.parent.unwrap_or_default()));
                if let Some(q) = self.peers.get_mut(&meta.peer_tuple()) {
                    for p in q.iter_mut().filter(|p| p.server == Some((meta.ino, seq))) {
                        p.server = None;
                    }
                }
            } else {
                // No parent rather than one no span has.
                if let Some(parent) = ctx.parent {
                    self.verdicts.push((ctx.trace_id, Verdict::NoPeer { parent }));
                }
                ctx.parent = None;
                ctx.source = None;
                if let Some(q) = self.peers.get_mut(&meta.peer_tuple()) {
                    q.retain(|p| p.server != Some((meta.ino, seq)));
                }
            }
        }
        if let Some(h) = ctx.handler {
            if let Some(ws) = self.threads.get_mut(&(meta.pid, h)) {
                for w in ws.iter_mut().filter(|w| w.ino == meta.ino && w.seq == seq && w.end == u64::MAX) {
                    w.end = end.max(w.start);
                }
            }
        }
        if meta.kind == SpanKind::Server {
            if let Some(ws) = self.threads.get_mut(&(meta.pid, ctx.tid)) {
                if let Some(w) = ws.iter_mut().rev().find(|w| w.ino == meta.ino && w.seq == seq) {
                    w.end = end.max(w.start);
                }
            }
            let go_h2 = self.is_go(meta.pid) && crate::conntrack::is_h2_seq(seq);
            if responder.tid != 0 && !go_h2 && self.key(meta.pid, responder) != ctx.tid {
                let p = self.procs.entry(meta.pid).or_default();
                if !p.handoff {
                    p.handoff = true;
                    self.stats.handoff_processes += 1;
                }
            }
        }
        Some(Assigned {
            trace_id: self.resolve(ctx.trace_id),
            span_id: ctx.span_id,
            parent: ctx.parent,
            sampled: ctx.sampled,
            source: ctx.source,
            links: ctx.links,
        })
    }

    /// The ids of a call whose request was not followed from its start (a
    /// database or cache command): its parent is the request its thread was
    /// serving when it sent the call, at `t`.
    pub fn call(&mut self, pid: u32, task: Task, t: u64) -> Option<Assigned> {
        let tid = self.key(pid, task);
        let mut ctx = Ctx {
            trace_id: [0; 16],
            span_id: [0; 8],
            parent: None,
            sampled: true,
            source: None,
            links: Vec::new(),
            tid,
            made: t,
            pid,
            server: false,
            port: 0,
            handler: None,
            tentative: false,
        };
        self.thread_parent(pid, tid, t, None, true, &mut ctx);
        if ctx.source.is_none() && tid & GO_KEY != 0 {
            self.want_goroutines(pid);
        }
        ctx.source?;
        if ctx.parent.is_none() {
            ctx.trace_id = self.ids.trace_id();
        }
        Some(Assigned {
            trace_id: ctx.trace_id,
            span_id: self.ids.span_id(),
            parent: ctx.parent,
            sampled: ctx.sampled,
            source: ctx.source,
            links: ctx.links,
        })
    }

    /// Connections `inos` were dropped with requests unfinished: their
    /// contexts end at `now` (rare: only when the connection limit is
    /// exceeded, and then many at once).
    pub fn forget_connections(&mut self, inos: &[u64], now: u64) {
        if inos.is_empty() {
            return;
        }
        let gone: ahash::AHashSet<u64> = inos.iter().copied().collect();
        self.started.retain(|(i, _), _| !gone.contains(i));
        for ws in self.threads.values_mut() {
            for w in ws.iter_mut().filter(|w| w.end == u64::MAX && gone.contains(&w.ino)) {
                w.end = now.max(w.start);
            }
        }
    }

    /// Whether the runtime of `pid`, running as `comm`, is still to be looked at.
    pub fn runtime_unknown(&self, pid: u32, comm: &std::sync::Arc<str>) -> bool {
        self.procs.get(&pid).and_then(|p| p.comm.as_ref()) != Some(comm)
    }

    /// Records what the runtime of `pid` (running as `comm`) is: a Go
    /// program gets no thread linking (its goroutines move between threads).
    /// What was learnt under another name is dropped.
    pub fn set_runtime(&mut self, pid: u32, comm: &std::sync::Arc<str>, go: bool) {
        let p = self.procs.entry(pid).or_default();
        if p.comm.as_ref().is_some_and(|c| c != comm) {
            *p = Process::default();
        }
        p.comm = Some(comm.clone());
        if go && !p.go {
            p.go = true;
            self.stats.go_processes += 1;
        }
    }

    /// Forget what has outlived its use.
    pub fn expire(&mut self, now: u64) {
        self.started.retain(|_, c| now.saturating_sub(c.made) < 2 * MAX_REQUEST_NS);
        self.threads.retain(|_, ws| {
            ws.retain(|w| {
                let open = w.end == u64::MAX && now.saturating_sub(w.start) <= MAX_REQUEST_NS;
                open || (w.end != u64::MAX && now.saturating_sub(w.end) <= WINDOW_KEEP_NS)
            });
            !ws.is_empty()
        });
        self.peers.retain(|_, q| {
            q.retain(|p| now.saturating_sub(p.made) < PEER_TTL_NS);
            !q.is_empty()
        });
        self.aliases.retain(|_, (_, made)| now.saturating_sub(*made) < ALIAS_TTL_NS);
        if !self.waiting_peers.is_empty() {
            let late: Vec<([u8; 16], [u8; 8])> = self
                .waiting_peers
                .iter()
                .filter(|(_, (made, _))| now.saturating_sub(*made) > PEER_WAIT_NS)
                .map(|(t, (_, parent))| (*t, *parent))
                .collect();
            for (t, parent) in late {
                self.waiting_peers.remove(&t);
                self.pending.remove(&t);
                self.verdicts.push((t, Verdict::NoPeer { parent }));
            }
        }
        if !self.go_made.is_empty() {
            // A goroutine made for a request stands for it until it ends.
            let threads = &self.threads;
            self.go_made.retain(|&(pid, _), m| {
                threads
                    .get(&(pid, m.by))
                    .and_then(|ws| ws.iter().rev().find(|w| w.ino == m.ino && w.seq == m.seq))
                    .is_some_and(|w| w.end == u64::MAX && now.saturating_sub(w.start) <= MAX_REQUEST_NS)
            });
        }
        if self.go_newproc.len() > 4096 {
            self.go_newproc.clear();
        }
        self.go_streams.retain(|_, (_, made)| now.saturating_sub(*made) < WINDOW_KEEP_NS);
        if !self.spawned.is_empty() {
            // Threads still alive once their request ended (and the grace
            // after it passed) were not made for it alone.
            let over: Vec<(u32, u64)> = self
                .spawned
                .iter()
                .filter(|(&(pid, _), sp)| {
                    let end = self.window(pid, sp.parent_tid, sp.ino, sp.seq).map(|w| w.end);
                    match end {
                        Some(u64::MAX) => now.saturating_sub(sp.made) > MAX_REQUEST_NS,
                        Some(e) => now > e.saturating_add(SPAWN_GRACE_NS),
                        None => true,
                    }
                })
                .map(|(k, _)| *k)
                .collect();
            for k in over {
                if let Some(sp) = self.spawned.remove(&k) {
                    self.settle_spawned(k.0, k.1, sp, now, false);
                }
            }
        }
    }

    /// The trace a trace id handed out earlier turned out to belong to.
    pub fn trace_of(&self, t: [u8; 16]) -> [u8; 16] {
        self.resolve(t)
    }

    /// Requests whose head was seen and whose exchange has not finished.
    pub fn in_flight(&self) -> usize {
        self.started.len()
    }
}

/// What identifies a request a proxy forwards: its method, target and user
/// agent, hashed with fixed keys (so a replay gives the same values).
pub fn fingerprint(method: &str, target: &str, user_agent: Option<&str>) -> u64 {
    ahash::RandomState::with_seeds(0x7472_6163, 0x6572_2d61, 0x6765_6e74, 0x6670_7269)
        .hash_one((method, target, user_agent))
}

/// Whether the other end of this connection may be a process on this host:
/// the tracker knows it, or the peer address is a local one.
fn same_host(meta: &ConnMeta, peer: Option<SpanKind>) -> bool {
    peer.is_some() || meta.remote.is_loopback() || meta.remote == meta.local
}

fn set_header(ctx: &mut Ctx, h: &ParentContext) {
    ctx.trace_id = h.trace_id;
    ctx.parent = Some(h.span_id);
    ctx.sampled = h.sampled;
    ctx.source = Some(Source::Header);
}

fn push_peer(q: &mut VecDeque<PeerEnd>, p: PeerEnd) {
    if q.len() >= PEERS_PER_CONN {
        q.pop_front();
    }
    q.push_back(p);
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use super::*;

    fn task(tid: u32) -> Task {
        Task { tid, g: 0 }
    }

    fn meta(pid: u32, ino: u64, kind: SpanKind, local_port: u16, remote_port: u16) -> Arc<ConnMeta> {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Arc::new(ConnMeta {
            ino,
            pid,
            comm: "p".into(),
            kind,
            local: ip,
            local_port,
            remote: ip,
            remote_port,
            local_str: "127.0.0.1".into(),
            remote_str: "127.0.0.1".into(),
        })
    }

    fn started(meta: &Arc<ConnMeta>, seq: u64, tid: u32, ts: u64, target: &str) -> Started {
        Started {
            meta: meta.clone(),
            seq,
            task: task(tid),
            ts,
            target: target.into(),
            fingerprint: fingerprint("GET", target, None),
            header: None,
            joined: false,
        }
    }

    /// A server request on `tid` from `start` to `end`, and the call it makes at `call`.
    #[test]
    fn a_call_on_the_thread_serving_a_request_is_its_child() {
        let mut l = Linker::default();
        let srv = meta(10, 1, SpanKind::Server, 8080, 5000);
        let cli = meta(10, 2, SpanKind::Client, 6000, 9090);
        l.start(&started(&srv, 0, 11, 100, "/a"), None);
        l.start(&started(&cli, 0, 11, 150, "/b"), None);
        let c = l.finish(&cli, 0, 180, task(11)).unwrap();
        let s = l.finish(&srv, 0, 200, task(11)).unwrap();
        assert_eq!(c.parent, Some(s.span_id));
        assert_eq!(c.trace_id, s.trace_id);
        assert_eq!(c.source, Some(Source::Thread));
        assert_eq!((s.parent, s.source), (None, None));
        // The next request on the same keep-alive connection and thread is its own trace.
        l.start(&started(&srv, 1, 11, 300, "/a"), None);
        l.start(&started(&cli, 1, 11, 350, "/b"), None);
        let c2 = l.finish(&cli, 1, 380, task(11)).unwrap();
        let s2 = l.finish(&srv, 1, 400, task(11)).unwrap();
        assert_eq!(c2.parent, Some(s2.span_id));
        assert_ne!(s2.trace_id, s.trace_id);
        // A call after the response was sent has no parent.
        l.start(&started(&cli, 2, 11, 450, "/late"), None);
        let late = l.finish(&cli, 2, 460, task(11)).unwrap();
        assert_eq!((late.parent, late.source), (None, None));
        assert_eq!(l.stats.by_thread, 2);
    }

    #[test]
    fn calls_on_other_threads_or_processes_are_not_children() {
        let mut l = Linker::default();
        let srv = meta(10, 1, SpanKind::Server, 8080, 5000);
        l.start(&started(&srv, 0, 11, 100, "/a"), None);
        let other_thread = meta(10, 2, SpanKind::Client, 6000, 9090);
        l.start(&started(&other_thread, 0, 12, 150, "/b"), None);
        assert_eq!(l.finish(&other_thread, 0, 160, task(12)).unwrap().parent, None);
        let other_proc = meta(20, 3, SpanKind::Client, 6001, 9090);
        l.start(&started(&other_proc, 0, 11, 150, "/b"), None);
        assert_eq!(l.finish(&other_proc, 0, 160, task(11)).unwrap().parent, None);
        assert_eq!(l.call(20, task(11), 150), None);
        assert!(l.call(10, task(11), 150).is_some_and(|a| a.source == Some(Source::Thread)));
    }

    #[test]
    fn two_requests_in_flight_on_one_thread_give_links_not_a_parent() {
        let mut l = Linker::default();
        let a = meta(10, 1, SpanKind::Server, 8080, 5000);
        let b = meta(10, 2, SpanKind::Server, 8080, 5001);
        l.start(&started(&a, 0, 11, 100, "/a"), None);
        l.start(&started(&b, 0, 11, 110, "/b"), None);
        let cli = meta(10, 3, SpanKind::Client, 6000, 9090);
        l.start(&started(&cli, 0, 11, 150, "/c"), None);
        let c = l.finish(&cli, 0, 160, task(11)).unwrap();
        let sa = l.finish(&a, 0, 200, task(11)).unwrap();
        let sb = l.finish(&b, 0, 210, task(11)).unwrap();
        assert_eq!(c.parent, None);
        assert_eq!(c.source, Some(Source::Ambiguous));
        assert_eq!(c.links, vec![(sa.trace_id, sa.span_id), (sb.trace_id, sb.span_id)]);
        assert_ne!(c.trace_id, sa.trace_id);
        assert_ne!(c.trace_id, sb.trace_id);
        assert_eq!(l.stats.ambiguous, 1);
    }

    /// An event loop with two requests in flight forwards one of them: the
    /// call with the same method, target and user agent is its child.
    #[test]
    fn a_forwarded_request_is_the_child_of_the_one_it_forwards() {
        let mut l = Linker::default();
        let a = meta(10, 1, SpanKind::Server, 8080, 5000);
        let b = meta(10, 2, SpanKind::Server, 8080, 5001);
        l.start(&started(&a, 0, 11, 100, "/a"), None);
        l.start(&started(&b, 0, 11, 110, "/b"), None);
        let up = meta(10, 3, SpanKind::Client, 6000, 9090);
        l.start(&started(&up, 0, 11, 150, "/b"), None);
        // The same target twice in flight decides nothing.
        let c = meta(10, 4, SpanKind::Server, 8080, 5002);
        l.start(&started(&c, 0, 11, 160, "/b"), None);
        l.start(&started(&up, 1, 11, 170, "/b"), None);
        let first = l.finish(&up, 0, 180, task(11)).unwrap();
        let second = l.finish(&up, 1, 190, task(11)).unwrap();
        let sb = l.finish(&b, 0, 200, task(11)).unwrap();
        assert_eq!((first.parent, first.source), (Some(sb.span_id), Some(Source::Forwarded)));
        assert_eq!(first.trace_id, sb.trace_id);
        assert_eq!((second.parent, second.source), (None, Some(Source::Ambiguous)));
        assert_eq!(second.links.len(), 3);
        assert_eq!((l.stats.by_forwarded, l.stats.ambiguous), (1, 1));
    }

    #[test]
    fn a_response_from_another_thread_ends_thread_linking_for_the_process() {
        let mut l = Linker::default();
        let srv = meta(10, 1, SpanKind::Server, 8080, 5000);
        l.start(&started(&srv, 0, 11, 100, "/a"), None);
        l.finish(&srv, 0, 200, task(12)).unwrap();
        assert_eq!(l.stats.handoff_processes, 1);
        l.start(&started(&srv, 1, 11, 300, "/a"), None);
        let cli = meta(10, 3, SpanKind::Client, 6000, 9090);
        l.start(&started(&cli, 0, 11, 350, "/c"), None);
        assert_eq!(l.finish(&cli, 0, 360, task(11)).unwrap().parent, None);
    }

    #[test]
    fn incoming_trace_context_wins_and_flows_to_the_calls() {
        let mut l = Linker::default();
        let srv = meta(10, 1, SpanKind::Server, 8080, 5000);
        let h = ParentContext { trace_id: [7; 16], span_id: [8; 8], sampled: true };
        let mut s = started(&srv, 0, 11, 100, "/a");
        s.header = Some(h);
        // The client end is traced too, but the header decides.
        l.start(&s, Some(SpanKind::Client));
        l.start(&started(&meta(10, 2, SpanKind::Client, 6000, 9090), 0, 11, 150, "/b"), None);
        let c = l.finish(&meta(10, 2, SpanKind::Client, 6000, 9090), 0, 160, task(11)).unwrap();
        let sv = l.finish(&srv, 0, 200, task(11)).unwrap();
        assert_eq!((sv.trace_id, sv.parent, sv.source), ([7; 16], Some([8; 8]), Some(Source::Header)));
        assert_eq!((c.trace_id, c.parent), ([7; 16], Some(sv.span_id)));
        assert_eq!(l.call(10, task(11), 190).map(|a| a.parent), Some(Some(sv.span_id)));
        assert_eq!(l.call(10, task(11), 250), None, "the window ended with the response");
    }

    /// Process A serves /front on thread 11 and calls /back on process B,
    /// which serves it on thread 21 and runs a database command. Both
    /// orders in which A's send and B's receive can arrive give one trace.
    #[test]
    fn a_chain_across_two_processes_is_one_trace_in_either_order() {
        for server_first in [false, true] {
            let mut l = Linker::default();
            let a_srv = meta(10, 1, SpanKind::Server, 8080, 5000);
            let a_cli = meta(10, 2, SpanKind::Client, 6000, 9090);
            let b_srv = meta(20, 3, SpanKind::Server, 9090, 6000);
            l.start(&started(&a_srv, 0, 11, 100, "/front"), None);
            if server_first {
                l.start(&started(&b_srv, 0, 21, 150, "/back"), Some(SpanKind::Client));
                l.start(&started(&a_cli, 0, 11, 140, "/back"), Some(SpanKind::Server));
            } else {
                l.start(&started(&a_cli, 0, 11, 140, "/back"), Some(SpanKind::Server));
                l.start(&started(&b_srv, 0, 21, 150, "/back"), Some(SpanKind::Client));
            }
            let db = l.call(20, task(21), 160).unwrap();
            let bs = l.finish(&b_srv, 0, 170, task(21)).unwrap();
            let ac = l.finish(&a_cli, 0, 180, task(11)).unwrap();
            let as_ = l.finish(&a_srv, 0, 200, task(11)).unwrap();
            assert_eq!(as_.parent, None);
            assert_eq!((ac.parent, ac.source), (Some(as_.span_id), Some(Source::Thread)));
            assert_eq!((bs.parent, bs.source), (Some(ac.span_id), Some(Source::Peer)));
            assert_eq!((db.parent, db.source), (Some(bs.span_id), Some(Source::Thread)));
            for t in [ac.trace_id, bs.trace_id] {
                assert_eq!(t, as_.trace_id, "server first: {server_first}");
            }
            // The database span's trace is resolved when its span is made,
            // which may be before the client end was seen: the pipeline
            // resolves it again through `trace_of`.
            assert_eq!(l.trace_of(db.trace_id), as_.trace_id);
        }
    }

    /// A server request on a loopback connection whose client end never
    /// shows up (not traced) gets no parent, not one that no span has.
    #[test]
    fn a_server_end_whose_client_never_shows_has_no_parent() {
        let mut l = Linker::default();
        let srv = meta(10, 1, SpanKind::Server, 8080, 5000);
        l.start(&started(&srv, 0, 11, 100, "/a"), None);
        let db = l.call(10, task(11), 120).unwrap();
        let s = l.finish(&srv, 0, 200, task(11)).unwrap();
        assert_eq!((s.parent, s.source), (None, None));
        assert_eq!(db.parent, Some(s.span_id));
        assert_eq!(db.trace_id, s.trace_id);
        assert_eq!(l.stats.by_peer, 0);
        assert!(l.peers.values().all(VecDeque::is_empty));
    }

    #[test]
    fn a_dropped_connection_ends_its_requests() {
        let mut l = Linker::default();
        let srv = meta(10, 1, SpanKind::Server, 8080, 5000);
        l.start(&started(&srv, 0, 11, 100, "/a"), None);
        l.forget_connections(&[1], 150);
        assert_eq!(l.in_flight(), 0);
        assert!(l.call(10, task(11), 200).is_none());
        assert!(l.call(10, task(11), 120).is_some(), "a call made before the end still belongs to it");
    }

    #[test]
    fn contexts_expire() {
        let mut l = Linker::default();
        let srv = meta(10, 1, SpanKind::Server, 8080, 5000);
        l.start(&started(&srv, 0, 11, 100, "/a"), None);
        assert!(l.call(10, task(11), 100 + MAX_REQUEST_NS + 1).is_none(), "a request is in flight for a bounded time");
        l.expire(100 + 3 * MAX_REQUEST_NS);
        assert_eq!(l.in_flight(), 0);
        assert!(l.threads.is_empty());
    }

    /// A server request on thread 11 of pid 10 (connection 1, seq 0) from
    /// 100 to `end`; thread 11 makes thread 21 at 110; 21 calls out at 150.
    fn spawn_case(l: &mut Linker) -> (Arc<ConnMeta>, Arc<ConnMeta>) {
        let srv = meta(10, 1, SpanKind::Server, 8080, 5000);
        let cli = meta(10, 2, SpanKind::Client, 6000, 9090);
        l.start(&started(&srv, 0, 11, 100, "/a"), None);
        l.spawn(10, 11, 21, 110);
        l.start(&started(&cli, 0, 21, 150, "/b"), None);
        (srv, cli)
    }

    #[test]
    fn a_thread_made_for_a_request_and_ended_with_it_links_its_calls() {
        let mut l = Linker::default();
        let (srv, cli) = spawn_case(&mut l);
        let c = l.finish(&cli, 0, 180, task(21)).unwrap();
        let db = l.call(10, task(21), 185).unwrap();
        assert_eq!(c.source, Some(Source::ThreadSpawn));
        assert_eq!(db.source, Some(Source::ThreadSpawn));
        // Held: the trace is provisional until the thread's end is seen.
        assert!(l.is_pending(&c.trace_id) && l.is_pending(&db.trace_id));
        // Each call its own provisional trace.
        assert_ne!(db.trace_id, c.trace_id);
        assert!(l.take_verdicts().is_none());
        let s = l.finish(&srv, 0, 200, task(11)).unwrap();
        assert_eq!(c.parent, Some(s.span_id));
        assert_eq!(db.parent, Some(s.span_id));
        // A runtime's join may return before the kernel thread is gone.
        l.thread_exit(10, 21, 200 + SPAWN_GRACE_NS / 2, false);
        let v: Vec<_> = l.take_verdicts().unwrap().collect();
        assert_eq!(v, vec![(c.trace_id, Verdict::Linked), (db.trace_id, Verdict::Linked)]);
        assert!(!l.is_pending(&c.trace_id));
        assert_eq!(l.trace_of(c.trace_id), s.trace_id);
        assert_eq!(l.trace_of(db.trace_id), s.trace_id);
    }

    #[test]
    fn a_thread_that_outlives_its_request_links_nothing() {
        // A pool's worker made on demand by a request's thread may run
        // other requests' work while that request is in flight.
        let mut l = Linker::default();
        let (srv, cli) = spawn_case(&mut l);
        let c = l.finish(&cli, 0, 180, task(21)).unwrap();
        let s = l.finish(&srv, 0, 200, task(11)).unwrap();
        l.expire(200 + SPAWN_GRACE_NS / 2);
        assert!(l.take_verdicts().is_none());
        l.expire(201 + SPAWN_GRACE_NS);
        let v: Vec<_> = l.take_verdicts().unwrap().collect();
        assert_eq!(v, vec![(c.trace_id, Verdict::Unproven { link: (s.trace_id, s.span_id) })]);
        assert_ne!(l.trace_of(c.trace_id), s.trace_id);
        // Its later calls (within another request's time or not) are not followed.
        l.start(&started(&cli, 1, 21, 300 + SPAWN_GRACE_NS, "/b"), None);
        let later = l.finish(&cli, 1, 310 + SPAWN_GRACE_NS, task(21)).unwrap();
        assert_eq!((later.parent, later.source), (None, None));
        // Ending long after proves nothing either.
        l.thread_exit(10, 21, 400 + SPAWN_GRACE_NS, false);
        assert!(l.take_verdicts().is_none());
    }

    #[test]
    fn an_end_of_the_whole_process_or_a_late_end_proves_nothing() {
        for (t, whole) in [(190, true), (200 + 2 * SPAWN_GRACE_NS, false)] {
            let mut l = Linker::default();
            let (srv, cli) = spawn_case(&mut l);
            let c = l.finish(&cli, 0, 180, task(21)).unwrap();
            let s = l.finish(&srv, 0, 200, task(11)).unwrap();
            l.thread_exit(10, 21, t, whole);
            let v: Vec<_> = l.take_verdicts().unwrap().collect();
            assert_eq!(v, vec![(c.trace_id, Verdict::Unproven { link: (s.trace_id, s.span_id) })]);
        }
    }

    #[test]
    fn threads_made_outside_one_request_in_flight_are_not_followed() {
        let mut l = Linker::default();
        let srv = meta(10, 1, SpanKind::Server, 8080, 5000);
        let srv2 = meta(10, 3, SpanKind::Server, 8080, 5001);
        let cli = meta(10, 2, SpanKind::Client, 6000, 9090);
        // Made by a thread serving nothing (an accept loop).
        l.spawn(10, 11, 21, 50);
        // Made by a thread with two requests in flight (an event loop).
        l.start(&started(&srv, 0, 12, 100, "/a"), None);
        l.start(&started(&srv2, 0, 12, 101, "/a"), None);
        l.spawn(10, 12, 22, 110);
        // Made during a request, calling after it ended.
        l.start(&started(&srv, 1, 13, 100, "/a"), None);
        l.spawn(10, 13, 23, 110);
        l.finish(&srv, 1, 120, task(13)).unwrap();
        for (seq, tid) in [(0, 21), (1, 22), (2, 23)] {
            l.start(&started(&cli, seq, tid, 150, "/b"), None);
            let c = l.finish(&cli, seq, 160, task(tid)).unwrap();
            assert_eq!((c.parent, c.source), (None, None), "thread {tid}");
        }
        assert!(l.pending.is_empty());
        // Nor in a process whose threads do not stand for requests.
        let mut l = Linker::default();
        l.set_runtime(10, &Arc::from("p"), true);
        let (_, cli) = spawn_case(&mut l);
        assert_eq!(l.finish(&cli, 0, 160, task(21)).unwrap().source, None);
    }

    #[test]
    fn a_thread_id_reused_without_a_seen_end_settles_the_old_thread() {
        let mut l = Linker::default();
        let (srv, cli) = spawn_case(&mut l);
        let c = l.finish(&cli, 0, 180, task(21)).unwrap();
        let s = l.finish(&srv, 0, 200, task(11)).unwrap();
        l.spawn(10, 11, 21, 300);
        let v: Vec<_> = l.take_verdicts().unwrap().collect();
        assert_eq!(v, vec![(c.trace_id, Verdict::Unproven { link: (s.trace_id, s.span_id) })]);
        assert!(l.spawned.is_empty());
    }

    #[test]
    fn in_a_go_program_goroutines_stand_for_requests_not_threads() {
        let mut l = Linker::default();
        l.set_runtime(10, &Arc::from("p"), true);
        let g = |tid: u32, g: u64| Task { tid, g };
        let a = meta(10, 1, SpanKind::Server, 8080, 5000);
        let b = meta(10, 2, SpanKind::Server, 8080, 5001);
        // Two requests served by two goroutines, both on thread 11.
        let mut sa = started(&a, 0, 11, 100, "/a");
        sa.task = g(11, 0xc000_1000);
        let mut sb = started(&b, 0, 11, 110, "/b");
        sb.task = g(11, 0xc000_2000);
        l.start(&sa, None);
        l.start(&sb, None);
        // Goroutine A's query runs on thread 12 now: still A's.
        let qa = l.call(10, g(12, 0xc000_1000), 150).unwrap();
        let qb = l.call(10, g(11, 0xc000_2000), 160).unwrap();
        // Another goroutine on thread 11 serves neither.
        assert_eq!(l.call(10, g(11, 0xc000_3000), 165), None);
        let ra = l.finish(&a, 0, 200, g(12, 0xc000_1000)).unwrap();
        let rb = l.finish(&b, 0, 210, g(11, 0xc000_2000)).unwrap();
        assert_eq!((qa.parent, qa.source), (Some(ra.span_id), Some(Source::Goroutine)));
        assert_eq!((qb.parent, qb.source), (Some(rb.span_id), Some(Source::Goroutine)));
        assert_eq!(qa.trace_id, ra.trace_id);
        assert_eq!((l.stats.by_goroutine, l.stats.handoff_processes), (2, 0));
        // A response written by another goroutine hands work over.
        let c = meta(10, 3, SpanKind::Server, 8080, 5002);
        let mut sc = started(&c, 0, 11, 300, "/c");
        sc.task = g(11, 0xc000_4000);
        l.start(&sc, None);
        l.finish(&c, 0, 310, g(11, 0xc000_5000)).unwrap();
        assert_eq!(l.stats.handoff_processes, 1);
    }

    #[test]
    fn a_request_left_unanswered_ends_with_its_connection_or_its_goroutines_next_request() {
        // A thread: its connection closes with the request unanswered.
        let mut l = Linker::default();
        let srv = meta(10, 1, SpanKind::Server, 8080, 5000);
        l.start(&started(&srv, 0, 11, 100, "/a"), None);
        l.connection_closed(1, 150);
        assert_eq!(l.call(10, task(11), 160), None);
        assert_eq!(l.in_flight(), 0);
        // A goroutine: its connection went silent, and the goroutine (its
        // g reused) serves another connection.
        l.set_runtime(20, &Arc::from("g"), true);
        let g = |gp: u64| Task { tid: 21, g: gp };
        let a = meta(20, 2, SpanKind::Server, 8080, 5001);
        let b = meta(20, 3, SpanKind::Server, 8080, 5002);
        let mut sa = started(&a, 0, 21, 200, "/a");
        sa.task = g(0xc000_1000);
        l.start(&sa, None);
        let mut sb = started(&b, 0, 21, 300, "/b");
        sb.task = g(0xc000_1000);
        l.start(&sb, None);
        let q = l.call(20, g(0xc000_1000), 350).unwrap();
        let rb = l.finish(&b, 0, 400, g(0xc000_1000)).unwrap();
        assert_eq!((q.parent, q.source), (Some(rb.span_id), Some(Source::Goroutine)));
    }

    #[test]
    fn a_server_span_made_before_its_client_end_waits_for_it() {
        for client_shows in [true, false] {
            let mut l = Linker::default();
            let a_cli = meta(10, 2, SpanKind::Client, 6000, 9090);
            let b_srv = meta(20, 3, SpanKind::Server, 9090, 6000);
            // B reads, answers and is done before A's send is seen.
            l.start(&started(&b_srv, 0, 21, 150, "/back"), Some(SpanKind::Client));
            let db = l.call(20, task(21), 160).unwrap();
            let bs = l.finish(&b_srv, 0, 170, task(21)).unwrap();
            assert!(l.is_pending(&bs.trace_id));
            assert_eq!(db.trace_id, bs.trace_id);
            if client_shows {
                l.start(&started(&a_cli, 0, 11, 140, "/back"), Some(SpanKind::Server));
                let ac = l.finish(&a_cli, 0, 180, task(11)).unwrap();
                let v: Vec<_> = l.take_verdicts().unwrap().collect();
                assert_eq!(v, vec![(bs.trace_id, Verdict::Linked)]);
                assert_eq!(bs.parent, Some(ac.span_id));
                assert_eq!(l.trace_of(bs.trace_id), ac.trace_id);
                assert_eq!(l.stats.by_peer, 1);
            } else {
                l.expire(170 + PEER_WAIT_NS / 2);
                assert!(l.take_verdicts().is_none());
                l.expire(171 + PEER_WAIT_NS);
                let v: Vec<_> = l.take_verdicts().unwrap().collect();
                assert_eq!(v, vec![(bs.trace_id, Verdict::NoPeer { parent: bs.parent.unwrap() })]);
                assert_eq!(l.stats.by_peer, 0);
            }
            assert!(!l.is_pending(&bs.trace_id));
        }
    }
}
