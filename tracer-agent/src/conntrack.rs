//! Connection tracking: kernel events → per-connection ordered byte streams →
//! protocol state. Each TCP socket (by inode) has an inbound and an outbound
//! stream; the protocol layer decides which one carries requests.
//!
//! Memory is bounded by the number of tracked connections (the least recently
//! active are dropped beyond the limit), an idle expiry, and the protocol
//! layer's own per-connection buffer limits.

use ahash::AHashMap as HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use tracer_common::{role, EventKind};

use crate::capture::event::{comm, local_addr, remote_addr, Event};
use crate::protocol::http1::{self, Http1Conn};
use crate::protocol::http2::{self, H2Conn};
use crate::protocol::mysql::{self, MysqlConn};
use crate::protocol::postgres::{self, PgConn};
use crate::protocol::redis::{self, RedisConn};
use crate::protocol::{Exchange, Segment};
use crate::span::{ConnMeta, SpanKind};

/// Client-direction segments examined before a connection is declared not
/// a protocol we understand.
const DETECT_TRIES: u8 = 8;

enum Proto {
    /// Not yet identified; counts segments examined.
    Detecting(u8),
    Http1(Box<Http1Conn>),
    Http2(Box<H2Conn>),
    Postgres(Box<PgConn>),
    Mysql(Box<MysqlConn>),
    Redis(Box<RedisConn>),
    /// Not a protocol we parse (or a database server's side): bytes are ignored.
    Opaque,
}

struct Conn {
    /// Shared with the exchanges it produces (changed only when the
    /// connection's owner or side turns out to be another).
    meta: Arc<ConnMeta>,
    /// Kernel hint (`role::*`), refined by detection.
    role: u8,
    last_seen: u64,
    /// Who last sent in the client's direction (zero: none yet).
    req_task: Task,
    /// Joined open: its accept or connect was not seen.
    joined: bool,
    proto: Proto,
    /// On a MySQL connection, who sent each of the last client segments
    /// (by syscall entry time): a parser that holds an exchange back
    /// (`MysqlConn::tick`) emits it while a later command is sent, and the
    /// exchange belongs to who sent its own first segment.
    recent: std::collections::VecDeque<(u64, Task)>,
}

/// Client segments remembered per MySQL connection (`Conn::recent`): a
/// prepare, its execution and its close, and room to spare.
const RECENT_SENDS: usize = 8;

/// A finished exchange, with the connection it travelled on.
#[derive(Debug)]
pub struct Finished {
    pub meta: Arc<ConnMeta>,
    pub ex: Exchange,
    /// Who last sent in the client's direction on the connection when the
    /// exchange finished (zero: unknown): for a client connection, the
    /// thread (and goroutine) that made the call.
    pub req_task: Task,
}

impl Finished {
    pub fn new(meta: Arc<ConnMeta>, ex: Exchange) -> Self {
        Self { meta, ex, req_task: Task::default() }
    }
}

/// Who did an I/O: the thread, and what the Go runtime's goroutine
/// register held (meaningful only in Go programs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Task {
    pub tid: u32,
    pub g: u64,
}

impl Task {
    pub fn of(h: &tracer_common::EventHeader) -> Self {
        Self { tid: h.tid, g: h.goroutine }
    }
}

/// Whether request number `seq` is an HTTP/2 stream's ([`h2_seq`]).
pub fn is_h2_seq(seq: u64) -> bool {
    seq >> 32 == 1
}

/// The request number (`Started::seq`) of HTTP/2 stream `id`: apart from
/// the numbers of the HTTP/1 requests that may precede an upgrade.
pub fn h2_seq(id: u32) -> u64 {
    (1 << 32) | u64::from(id)
}

/// A request whose head was just seen, before its exchange finishes: its
/// span's ids are chosen now, so that what it causes can name it.
#[derive(Debug)]
pub struct Started {
    pub meta: Arc<ConnMeta>,
    /// The request's number on its connection (`http1::Exchange::seq`).
    pub seq: u64,
    /// The thread (and goroutine) that read (server) or sent (client) the head.
    pub task: Task,
    /// When that thread did so (syscall entry), monotonic ns.
    pub ts: u64,
    pub target: compact_str::CompactString,
    /// Method, target and user agent, hashed: what a proxy forwards unchanged.
    pub fingerprint: u64,
    /// Trace context the request carries in its headers.
    pub header: Option<crate::span::ParentContext>,
    /// The first request seen on a connection that was already open when
    /// the agent joined it (its client end may not have been seen yet).
    pub joined: bool,
}

/// Health counters of the tracker.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackerStats {
    pub events: u64,
    pub connections_opened: u64,
    pub connections_evicted: u64,
    pub connections_expired: u64,
    pub opaque_connections: u64,
    /// Database/cache server sides left alone (their clients are traced).
    pub db_server_connections: u64,
    pub bytes_ignored: u64,
    pub exchanges: u64,
}

/// A connection's addresses from one side: local, local port, remote, remote port.
pub type Tuple = (IpAddr, u16, IpAddr, u16);

impl ConnMeta {
    pub fn tuple(&self) -> Tuple {
        (self.local, self.local_port, self.remote, self.remote_port)
    }

    /// The same connection as seen from the other end.
    pub fn peer_tuple(&self) -> Tuple {
        (self.remote, self.remote_port, self.local, self.local_port)
    }
}

pub struct Tracker {
    /// Looks up listening sockets for connections whose opening was not seen
    /// (None in replays and tests: the traffic alone decides).
    pub listeners: Option<crate::listeners::Listeners>,
    /// Reused for the exchanges finished by one segment.
    done: Vec<http1::Exchange>,
    done_h2: Vec<http2::H2Exchange>,
    done_db: Vec<crate::protocol::db::DbExchange>,
    /// HTTP/1 request heads seen by the last event, for the caller to take.
    pub started: Vec<Started>,
    /// Requests that continue under another number (connection, from, to):
    /// an HTTP/1 request upgraded to HTTP/2 stream 1.
    pub rekeyed: Vec<(u64, u64, u64)>,
    /// Connections dropped without their exchanges (over the limit), for
    /// the caller to take: their requests' contexts end.
    pub evicted: Vec<u64>,
    conns: HashMap<u64, Conn>,
    by_tuple: HashMap<Tuple, u64>,
    max_conns: usize,
    idle_ns: u64,
    pub stats: TrackerStats,
}

fn meta_for(ev: &Event<'_>, kind: SpanKind) -> ConnMeta {
    let s = &ev.header.sock;
    ConnMeta {
        ino: s.ino,
        pid: ev.header.pid,
        comm: comm(&ev.header.comm).into(),
        kind,
        local: local_addr(s),
        local_port: s.lport,
        remote: remote_addr(s),
        remote_port: s.rport,
        local_str: local_addr(s).to_string().into(),
        remote_str: remote_addr(s).to_string().into(),
    }
}

impl Tracker {
    pub fn new(max_conns: usize, idle_ns: u64) -> Self {
        Self {
            listeners: None,
            done: Vec::new(),
            done_h2: Vec::new(),
            done_db: Vec::new(),
            started: Vec::new(),
            rekeyed: Vec::new(),
            evicted: Vec::new(),
            conns: HashMap::new(),
            by_tuple: HashMap::new(),
            max_conns: max_conns.max(16),
            idle_ns,
            stats: TrackerStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Feed one event; finished exchanges are appended to `out`.
    pub fn on_event(&mut self, ev: &Event<'_>, out: &mut Vec<Finished>) {
        self.stats.events += 1;
        let key = ev.header.sock.ino;
        let now = ev.header.ts_exit;
        match ev.kind {
            EventKind::Accept | EventKind::Connect => {
                // A new connection on this socket: whatever was tracked under
                // the inode belongs to an earlier, unseen-closed socket.
                if let Some(old) = self.remove_conn(&key) {
                    finish(old, now, out);
                }
                let kind = if ev.kind == EventKind::Accept { SpanKind::Server } else { SpanKind::Client };
                self.insert(
                    key,
                    Conn {
                        meta: Arc::new(meta_for(ev, kind)),
                        role: if kind == SpanKind::Server { role::SERVER } else { role::CLIENT },
                        last_seen: now,
                        req_task: Task::default(),
                        joined: false,
                        proto: Proto::Detecting(0),
                        recent: Default::default(),
                    },
                );
            }
            EventKind::Close => {
                if let Some(c) = self.remove_conn(&key) {
                    finish(c, now, out);
                }
            }
            EventKind::Recv | EventKind::Send => self.on_data(ev, out),
            // Thread events are the trace linker's.
            EventKind::Spawn
            | EventKind::ThreadExit
            | EventKind::Runtime
            | EventKind::GoProbe
            | EventKind::Routes
            | EventKind::Context => {}
        }
    }

    fn insert(&mut self, key: u64, c: Conn) {
        if self.conns.len() >= self.max_conns {
            self.evict();
        }
        self.stats.connections_opened += 1;
        self.by_tuple.insert(c.meta.tuple(), key);
        self.conns.insert(key, c);
    }

    fn remove_conn(&mut self, key: &u64) -> Option<Conn> {
        let c = self.conns.remove(key)?;
        if self.by_tuple.get(&c.meta.tuple()) == Some(key) {
            self.by_tuple.remove(&c.meta.tuple());
        }
        Some(c)
    }

    /// Kind of the traced connection with these addresses (local side first), if any.
    pub fn kind_of(&self, t: &Tuple) -> Option<SpanKind> {
        let key = self.by_tuple.get(t)?;
        let c = self.conns.get(key)?;
        match c.proto {
            Proto::Http1(_) | Proto::Http2(_) => Some(c.meta.kind),
            _ => None,
        }
    }

    /// Drop the least recently active tenth of the connections.
    fn evict(&mut self) {
        let mut seen: Vec<(u64, u64)> = self.conns.iter().map(|(k, c)| (c.last_seen, *k)).collect();
        seen.sort_unstable();
        let n = (self.max_conns / 10).max(1);
        for (_, k) in seen.into_iter().take(n) {
            if self.remove_conn(&k).is_some() {
                self.evicted.push(k);
            }
            self.stats.connections_evicted += 1;
        }
    }

    /// Forget connections idle for longer than the expiry; unanswered requests
    /// on them are reported without a response.
    pub fn expire(&mut self, now: u64, out: &mut Vec<Finished>) {
        let idle = self.idle_ns;
        let dead: Vec<u64> =
            self.conns.iter().filter(|(_, c)| now.saturating_sub(c.last_seen) > idle).map(|(k, _)| *k).collect();
        for k in dead {
            if let Some(c) = self.remove_conn(&k) {
                self.stats.connections_expired += 1;
                finish(c, now, out);
            }
        }
        // Exchanges a parser held back for a command that did not come.
        for c in self.conns.values_mut() {
            let Proto::Mysql(p) = &mut c.proto else { continue };
            if p.holds() {
                let mut done = Vec::new();
                p.tick(now, &mut done);
                for ex in done {
                    let ex = Exchange::Db(ex);
                    let req_task = sender(&c.recent, &ex).unwrap_or(c.req_task);
                    out.push(Finished { meta: c.meta.clone(), ex, req_task });
                }
            }
        }
    }

    /// Bytes buffered by protocol parsers across all connections.
    pub fn buffered_bytes(&self) -> usize {
        self.conns
            .values()
            .map(|c| match &c.proto {
                Proto::Http1(h) => h.buffered_bytes(),
                Proto::Http2(h) => h.buffered_bytes(),
                Proto::Postgres(p) => p.buffered_bytes(),
                Proto::Mysql(p) => p.buffered_bytes(),
                Proto::Redis(p) => p.buffered_bytes(),
                Proto::Detecting(_) | Proto::Opaque => 0,
            })
            .sum()
    }

    fn on_data(&mut self, ev: &Event<'_>, out: &mut Vec<Finished>) {
        let key = ev.header.sock.ino;
        let now = ev.header.ts_exit;
        if !self.conns.contains_key(&key) {
            // A connection already open when tracing started, or whose
            // accept/connect was not seen: a process listening on the local
            // port is the server.
            let mut r = ev.header.sock.role;
            if r == role::UNKNOWN {
                if let Some(l) = self.listeners.as_mut() {
                    match l.listens(ev.header.pid, ev.header.sock.lport) {
                        Some(true) => r = role::SERVER,
                        Some(false) => r = role::CLIENT,
                        None => {}
                    }
                }
            }
            let kind = if r == role::CLIENT { SpanKind::Client } else { SpanKind::Server };
            let meta = Arc::new(meta_for(ev, kind));
            self.insert(
                key,
                Conn {
                    meta,
                    role: r,
                    last_seen: now,
                    req_task: Task::default(),
                    joined: true,
                    proto: Proto::Detecting(0),
                    recent: Default::default(),
                },
            );
        }
        let Some(c) = self.conns.get_mut(&key) else { return };
        c.last_seen = now;
        if c.meta.pid != ev.header.pid {
            // Shared socket (e.g. inherited): attribute to the process doing the I/O.
            let meta = Arc::make_mut(&mut c.meta);
            meta.pid = ev.header.pid;
            meta.comm = comm(&ev.header.comm).into();
        }
        let inbound = ev.kind == EventKind::Recv;
        let ret = ev.header.ret.max(0) as u64;
        if let Proto::Detecting(tries) = c.proto {
            match detect(c.role, inbound, ev.payload) {
                Some((kind, r)) => {
                    c.role = r;
                    Arc::make_mut(&mut c.meta).kind =
                        if r == role::SERVER { SpanKind::Server } else { SpanKind::Client };
                    c.proto = match kind {
                        Kind::Http1 => Proto::Http1(Box::default()),
                        Kind::Http2 => Proto::Http2(Box::default()),
                        // Database servers are traced from their clients' side only.
                        _ if r == role::SERVER => {
                            self.stats.db_server_connections += 1;
                            Proto::Opaque
                        }
                        Kind::Postgres => Proto::Postgres(Box::default()),
                        Kind::Mysql => Proto::Mysql(Box::default()),
                        Kind::Redis => Proto::Redis(Box::default()),
                    };
                    if let Proto::Opaque = c.proto {
                        self.stats.bytes_ignored = self.stats.bytes_ignored.saturating_add(ret);
                        return;
                    }
                }
                None => {
                    let client_dir = match c.role {
                        role::SERVER => inbound,
                        role::CLIENT => !inbound,
                        _ => true,
                    };
                    let tries = if client_dir { tries.saturating_add(1) } else { tries };
                    self.stats.bytes_ignored = self.stats.bytes_ignored.saturating_add(ret);
                    if tries >= DETECT_TRIES {
                        c.proto = Proto::Opaque;
                        self.stats.opaque_connections += 1;
                    } else {
                        c.proto = Proto::Detecting(tries);
                    }
                    return;
                }
            }
        }
        let seg = Segment {
            data: ev.payload,
            uncaptured: ret.saturating_sub(ev.payload.len() as u64),
            ts_enter: ev.header.ts_enter,
            ts_exit: ev.header.ts_exit,
        };
        // Bytes travelling from the client to the server.
        let client_dir = (c.role == role::SERVER) == inbound;
        if client_dir {
            c.req_task = Task::of(&ev.header);
        }
        let before = out.len();
        match &mut c.proto {
            Proto::Http1(h) => {
                if client_dir {
                    let first = h.next_request_id();
                    h.on_request_segment(seg, &mut self.done);
                    for seq in first..h.next_request_id() {
                        if let Some(head) = h.request_head(seq) {
                            self.started.push(Started {
                                meta: c.meta.clone(),
                                seq,
                                task: Task::of(&ev.header),
                                ts: ev.header.ts_enter,
                                target: head.target.clone(),
                                fingerprint: crate::trace::context::fingerprint(
                                    &head.method,
                                    &head.target,
                                    head.user_agent.as_deref(),
                                ),
                                header: crate::span::parent_from_request(head),
                                joined: c.joined,
                            });
                            // Only its first request may wait for a client end
                            // not seen yet (see `Started::joined`).
                            c.joined = false;
                        }
                    }
                } else {
                    h.on_response_segment(seg, &mut self.done);
                }
                let mut upgraded_to_h2 = None;
                if h.upgraded() {
                    // `Upgrade: h2c` answered with 101: the rest is HTTP/2, and
                    // the upgraded request is its stream 1.
                    let pos = self.done.iter().rposition(|ex| {
                        ex.response.as_ref().is_some_and(|r| r.status == 101)
                            && ex.request.upgrade.as_deref().is_some_and(|u| u.eq_ignore_ascii_case("h2c"))
                    });
                    upgraded_to_h2 = pos.map(|i| self.done.remove(i));
                }
                for ex in self.done.drain(..) {
                    out.push(Finished::new(c.meta.clone(), Exchange::Http1(ex)));
                }
                if h.upgraded() {
                    c.proto = match upgraded_to_h2 {
                        Some(ex) => {
                            self.rekeyed.push((c.meta.ino, ex.seq, h2_seq(1)));
                            let mut h2 = H2Conn::new_after_upgrade(&ex.request, ex.req_first_enter, ex.req_last_exit);
                            // Servers usually write their first HTTP/2 frames in
                            // the same write as the 101: hand them over.
                            if !client_dir {
                                if let Some(rest) = after_101_head(ev.payload) {
                                    let mut done = Vec::new();
                                    let tail = Segment {
                                        data: rest,
                                        uncaptured: ret.saturating_sub(ev.payload.len() as u64),
                                        ts_enter: ev.header.ts_enter,
                                        ts_exit: ev.header.ts_exit,
                                    };
                                    h2.on_server_segment(tail, &mut done);
                                    out.extend(
                                        done.into_iter().map(|ex| Finished::new(c.meta.clone(), Exchange::http2(ex))),
                                    );
                                }
                            }
                            Proto::Http2(Box::new(h2))
                        }
                        None => Proto::Opaque,
                    };
                }
            }
            Proto::Http2(h) => {
                feed(h.as_mut(), client_dir, seg, &c.meta, Exchange::http2, &mut self.done_h2, out);
                let (meta, started, joined) = (&c.meta, &mut self.started, c.joined);
                h.take_started(|ex| {
                    let target = ex.path.as_deref().unwrap_or("");
                    started.push(Started {
                        meta: meta.clone(),
                        seq: h2_seq(ex.stream_id),
                        task: Task::of(&ev.header),
                        ts: ev.header.ts_enter,
                        target: target.into(),
                        fingerprint: crate::trace::context::fingerprint(
                            ex.method.as_deref().unwrap_or(""),
                            target,
                            ex.user_agent.as_deref(),
                        ),
                        header: crate::span::h2_parent(ex),
                        joined,
                    })
                });
                c.joined = false;
            }
            Proto::Postgres(p) => feed(p.as_mut(), client_dir, seg, &c.meta, Exchange::Db, &mut self.done_db, out),
            Proto::Mysql(p) => {
                if client_dir {
                    if c.recent.len() >= RECENT_SENDS {
                        c.recent.pop_front();
                    }
                    c.recent.push_back((seg.ts_enter, c.req_task));
                }
                feed(p.as_mut(), client_dir, seg, &c.meta, Exchange::Db, &mut self.done_db, out);
            }
            Proto::Redis(p) => feed(p.as_mut(), client_dir, seg, &c.meta, Exchange::Db, &mut self.done_db, out),
            Proto::Opaque => self.stats.bytes_ignored = self.stats.bytes_ignored.saturating_add(ret),
            Proto::Detecting(_) => {}
        }
        for f in &mut out[before..] {
            f.req_task = sender(&c.recent, &f.ex).unwrap_or(c.req_task);
        }
        self.stats.exchanges += (out.len() - before) as u64;
    }
}

/// The bytes after a `101 Switching Protocols` head in a segment, if any.
fn after_101_head(data: &[u8]) -> Option<&[u8]> {
    let start = data.windows(12).position(|w| w.starts_with(b"HTTP/1.1 101") || w.starts_with(b"HTTP/1.0 101"))?;
    let head = data.get(start..)?;
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let rest = head.get(end + 4..)?;
    (!rest.is_empty()).then_some(rest)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Http1,
    Http2,
    Postgres,
    Mysql,
    Redis,
}

/// Identify the protocol from one segment, and which side of the connection
/// this process is on (`role::SERVER` or `role::CLIENT`). `role` is the
/// kernel's hint; with no hint both readings of the direction are tried.
/// The strongest signatures are tried first; HTTP/1 before Redis, whose
/// inline commands include `GET`.
fn detect(hint: u8, inbound: bool, p: &[u8]) -> Option<(Kind, u8)> {
    if p.is_empty() {
        return None;
    }
    let as_client_bytes = |p: &[u8]| -> Option<Kind> {
        if http1::looks_like_request(p) {
            Some(Kind::Http1)
        } else if http2::looks_like_client_start(p) {
            Some(Kind::Http2)
        } else if postgres::looks_like_client_start(p) {
            Some(Kind::Postgres)
        } else if redis::looks_like_client_start(p) {
            Some(Kind::Redis)
        } else if mysql::looks_like_client_start(p) {
            Some(Kind::Mysql)
        } else {
            None
        }
    };
    let as_server_bytes = |p: &[u8]| -> Option<Kind> {
        if http1::looks_like_response(p) {
            Some(Kind::Http1)
        } else if mysql::looks_like_server_start(p) {
            // The server speaks first in MySQL: its greeting.
            Some(Kind::Mysql)
        } else if http2::looks_like_server_start(p) {
            Some(Kind::Http2)
        } else {
            None
        }
    };
    // Which role would make these bytes client→server.
    let we_are_if_client_bytes = if inbound { role::SERVER } else { role::CLIENT };
    let we_are_if_server_bytes = if inbound { role::CLIENT } else { role::SERVER };
    if hint == role::UNKNOWN || hint == we_are_if_client_bytes {
        if let Some(k) = as_client_bytes(p) {
            return Some((k, we_are_if_client_bytes));
        }
    }
    if hint == role::UNKNOWN || hint == we_are_if_server_bytes {
        if let Some(k) = as_server_bytes(p) {
            return Some((k, we_are_if_server_bytes));
        }
    }
    None
}

/// A protocol state machine fed with client and server segments.
trait StreamParser {
    type Out;
    fn client(&mut self, seg: Segment<'_>, out: &mut Vec<Self::Out>);
    fn server(&mut self, seg: Segment<'_>, out: &mut Vec<Self::Out>);
    fn close(&mut self, ts: u64, out: &mut Vec<Self::Out>);
}

macro_rules! stream_parser {
    ($t:ty, $out:ty) => {
        impl StreamParser for $t {
            type Out = $out;
            fn client(&mut self, seg: Segment<'_>, out: &mut Vec<$out>) {
                self.on_client_segment(seg, out)
            }
            fn server(&mut self, seg: Segment<'_>, out: &mut Vec<$out>) {
                self.on_server_segment(seg, out)
            }
            fn close(&mut self, ts: u64, out: &mut Vec<$out>) {
                self.on_close(ts, out)
            }
        }
    };
}

stream_parser!(H2Conn, http2::H2Exchange);
stream_parser!(PgConn, crate::protocol::db::DbExchange);
stream_parser!(MysqlConn, crate::protocol::db::DbExchange);
stream_parser!(RedisConn, crate::protocol::db::DbExchange);

/// `done`: scratch space, empty before and after.
fn feed<P: StreamParser>(
    p: &mut P,
    client_dir: bool,
    seg: Segment<'_>,
    meta: &Arc<ConnMeta>,
    wrap: fn(P::Out) -> Exchange,
    done: &mut Vec<P::Out>,
    out: &mut Vec<Finished>,
) {
    if client_dir {
        p.client(seg, done);
    } else {
        p.server(seg, done);
    }
    out.extend(done.drain(..).map(|ex| Finished::new(meta.clone(), wrap(ex))));
}

fn close<P: StreamParser>(
    mut p: Box<P>,
    now: u64,
    meta: &Arc<ConnMeta>,
    wrap: fn(P::Out) -> Exchange,
    out: &mut Vec<Finished>,
) {
    let mut done = Vec::new();
    p.close(now, &mut done);
    out.extend(done.into_iter().map(|ex| Finished::new(meta.clone(), wrap(ex))));
}

fn finish(mut c: Conn, now: u64, out: &mut Vec<Finished>) {
    let before = out.len();
    let req_task = c.req_task;
    let recent = std::mem::take(&mut c.recent);
    finish_proto(c, now, out);
    for f in &mut out[before..] {
        f.req_task = sender(&recent, &f.ex).unwrap_or(req_task);
    }
}

/// Who sent the first request segment of a database exchange, among a
/// connection's `recent` client segments.
fn sender(recent: &std::collections::VecDeque<(u64, Task)>, ex: &Exchange) -> Option<Task> {
    let Exchange::Db(ex) = ex else { return None };
    recent.iter().rev().find(|(ts, _)| *ts == ex.req_first_enter).map(|(_, t)| *t)
}

fn finish_proto(c: Conn, now: u64, out: &mut Vec<Finished>) {
    match c.proto {
        Proto::Http1(mut h) => {
            let mut done = Vec::new();
            h.on_close(now, &mut done);
            out.extend(done.into_iter().map(|ex| Finished::new(c.meta.clone(), Exchange::Http1(ex))));
        }
        Proto::Http2(p) => close(p, now, &c.meta, Exchange::http2, out),
        Proto::Postgres(p) => close(p, now, &c.meta, Exchange::Db, out),
        Proto::Mysql(p) => close(p, now, &c.meta, Exchange::Db, out),
        Proto::Redis(p) => close(p, now, &c.meta, Exchange::Db, out),
        Proto::Detecting(_) | Proto::Opaque => {}
    }
}
