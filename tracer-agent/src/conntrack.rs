//! Connection tracking: kernel events → per-connection ordered byte streams →
//! protocol state. Each TCP socket (by inode) has an inbound and an outbound
//! stream; the protocol layer decides which one carries requests.
//!
//! Memory is bounded by the number of tracked connections (the least recently
//! active are dropped beyond the limit), an idle expiry, and the protocol
//! layer's own per-connection buffer limits.

use ahash::AHashMap as HashMap;
use std::net::IpAddr;

use tracer_common::{role, EventKind};

use crate::event::{comm, local_addr, remote_addr, Event};
use crate::protocol::http1::{looks_like_request, looks_like_response, Exchange, Http1Conn, Segment};
use crate::span::{ConnMeta, SpanKind};

/// Request-direction segments examined before a connection is declared not HTTP.
const DETECT_TRIES: u8 = 8;

enum Proto {
    /// Not yet identified; counts segments examined.
    Detecting(u8),
    Http1(Box<Http1Conn>),
    /// Not a protocol we parse: further bytes are ignored.
    Opaque,
}

struct Conn {
    meta: ConnMeta,
    /// Kernel hint (`role::*`), refined by detection.
    role: u8,
    last_seen: u64,
    proto: Proto,
}

/// Health counters of the tracker.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackerStats {
    pub events: u64,
    pub connections_opened: u64,
    pub connections_evicted: u64,
    pub connections_expired: u64,
    pub opaque_connections: u64,
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
    /// Reused for the exchanges finished by one segment.
    done: Vec<Exchange>,
    conns: HashMap<u64, Conn>,
    by_tuple: HashMap<Tuple, u64>,
    max_conns: usize,
    idle_ns: u64,
    pub stats: TrackerStats,
}

fn meta_for(ev: &Event<'_>, kind: SpanKind) -> ConnMeta {
    let s = &ev.header.sock;
    ConnMeta {
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
        Self { done: Vec::new(), conns: HashMap::new(), by_tuple: HashMap::new(), max_conns: max_conns.max(16), idle_ns, stats: TrackerStats::default() }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Feed one event; finished exchanges are appended to `out`.
    pub fn on_event(&mut self, ev: &Event<'_>, out: &mut Vec<(ConnMeta, Exchange)>) {
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
                self.insert(key, Conn {
                    meta: meta_for(ev, kind),
                    role: if kind == SpanKind::Server { role::SERVER } else { role::CLIENT },
                    last_seen: now,
                    proto: Proto::Detecting(0),
                });
            }
            EventKind::Close => {
                if let Some(c) = self.remove_conn(&key) {
                    finish(c, now, out);
                }
            }
            EventKind::Recv | EventKind::Send => self.on_data(ev, out),
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
            Proto::Http1(_) => Some(c.meta.kind),
            _ => None,
        }
    }

    /// Drop the least recently active tenth of the connections.
    fn evict(&mut self) {
        let mut seen: Vec<(u64, u64)> = self.conns.iter().map(|(k, c)| (c.last_seen, *k)).collect();
        seen.sort_unstable();
        let n = (self.max_conns / 10).max(1);
        for (_, k) in seen.into_iter().take(n) {
            self.remove_conn(&k);
            self.stats.connections_evicted += 1;
        }
    }

    /// Forget connections idle for longer than the expiry; unanswered requests
    /// on them are reported without a response.
    pub fn expire(&mut self, now: u64, out: &mut Vec<(ConnMeta, Exchange)>) {
        let idle = self.idle_ns;
        let dead: Vec<u64> =
            self.conns.iter().filter(|(_, c)| now.saturating_sub(c.last_seen) > idle).map(|(k, _)| *k).collect();
        for k in dead {
            if let Some(c) = self.remove_conn(&k) {
                self.stats.connections_expired += 1;
                finish(c, now, out);
            }
        }
    }

    /// Bytes buffered by protocol parsers across all connections.
    pub fn buffered_bytes(&self) -> usize {
        self.conns
            .values()
            .map(|c| match &c.proto {
                Proto::Http1(h) => h.buffered_bytes(),
                _ => 0,
            })
            .sum()
    }

    fn on_data(&mut self, ev: &Event<'_>, out: &mut Vec<(ConnMeta, Exchange)>) {
        let key = ev.header.sock.ino;
        let now = ev.header.ts_exit;
        if !self.conns.contains_key(&key) {
            // A connection already open when tracing started, or whose
            // accept/connect was not seen.
            let r = ev.header.sock.role;
            let kind = if r == role::CLIENT { SpanKind::Client } else { SpanKind::Server };
            self.insert(key, Conn { meta: meta_for(ev, kind), role: r, last_seen: now, proto: Proto::Detecting(0) });
        }
        let Some(c) = self.conns.get_mut(&key) else { return };
        c.last_seen = now;
        if c.meta.pid != ev.header.pid {
            // Shared socket (e.g. inherited): attribute to the process doing the I/O.
            c.meta.pid = ev.header.pid;
            c.meta.comm = comm(&ev.header.comm).into();
        }
        let inbound = ev.kind == EventKind::Recv;
        if let Proto::Detecting(tries) = c.proto {
            let p = ev.payload;
            let detected = match c.role {
                role::SERVER if inbound => looks_like_request(p).then_some(role::SERVER),
                role::CLIENT if !inbound => looks_like_request(p).then_some(role::CLIENT),
                role::SERVER | role::CLIENT => None,
                _ => {
                    if looks_like_request(p) {
                        Some(if inbound { role::SERVER } else { role::CLIENT })
                    } else if looks_like_response(p) {
                        // Mid-stream: this response's request was not seen, but the role is now known.
                        c.role = if inbound { role::CLIENT } else { role::SERVER };
                        None
                    } else {
                        None
                    }
                }
            };
            match detected {
                Some(r) if !p.is_empty() => {
                    c.role = r;
                    c.meta.kind = if r == role::SERVER { SpanKind::Server } else { SpanKind::Client };
                    c.proto = Proto::Http1(Box::new(Http1Conn::new()));
                }
                _ => {
                    let is_request_dir = match c.role {
                        role::SERVER => inbound,
                        role::CLIENT => !inbound,
                        _ => true,
                    };
                    let tries = if is_request_dir { tries.saturating_add(1) } else { tries };
                    self.stats.bytes_ignored += ev.header.ret.max(0) as u64;
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
        match &mut c.proto {
            Proto::Http1(h) => {
                let seg = Segment {
                    data: ev.payload,
                    uncaptured: (ev.header.ret.max(0) as u64).saturating_sub(ev.payload.len() as u64),
                    ts_enter: ev.header.ts_enter,
                    ts_exit: ev.header.ts_exit,
                };
                let request_dir = (c.role == role::SERVER) == inbound;
                if request_dir {
                    h.on_request_segment(seg, &mut self.done);
                } else {
                    h.on_response_segment(seg, &mut self.done);
                }
                if h.upgraded() {
                    c.proto = Proto::Opaque;
                }
                self.stats.exchanges += self.done.len() as u64;
                for ex in self.done.drain(..) {
                    out.push((c.meta.clone(), ex));
                }
            }
            Proto::Opaque => self.stats.bytes_ignored += ev.header.ret.max(0) as u64,
            Proto::Detecting(_) => {}
        }
    }
}

fn finish(c: Conn, now: u64, out: &mut Vec<(ConnMeta, Exchange)>) {
    if let Proto::Http1(mut h) = c.proto {
        let mut done = Vec::new();
        h.on_close(now, &mut done);
        for ex in done {
            out.push((c.meta.clone(), ex));
        }
    }
}
