//! The span model, trace-context propagation headers, and the HTTP exchange →
//! span mapping per the OpenTelemetry HTTP semantic conventions.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use crate::protocol::db::{DbExchange, DbSystem};
use crate::protocol::http1::Exchange;
use crate::protocol::http2::H2Exchange;
use crate::protocol::sql;
use crate::route::RouteMatcher;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

/// An attribute value. Strings are borrowed when constant and shared when
/// they repeat across spans (addresses, process names), so making a span
/// allocates only for what is really new.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    Shared(Arc<str>),
    Int(i64),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Shared(s) => Some(s),
            Value::Int(_) => None,
        }
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(Cow::Owned(s))
    }
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value::Str(Cow::Borrowed(s))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Unset,
    Error,
}

/// A finished span, plus the identity of the process it belongs to.
#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub sampled: bool,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub status: Status,
    /// Process that produced the traffic.
    pub pid: u32,
    pub comm: Arc<str>,
    /// Local port of the connection for server spans (service-name overrides by port).
    pub server_port: Option<u16>,
    /// Candidate parents (trace id, span id) when the parent is ambiguous.
    pub links: Vec<([u8; 16], [u8; 8])>,
    /// The parent was made by another process or came with the request (not
    /// found inside this span's own process).
    pub parent_remote: bool,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// Trace context found in request headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParentContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        let h = (b[2 * i] as char).to_digit(16)?;
        let l = (b[2 * i + 1] as char).to_digit(16)?;
        *o = (h * 16 + l) as u8;
    }
    Some(out)
}

/// W3C `traceparent`: `version-traceid-parentid-flags`.
pub fn parse_traceparent(v: &str) -> Option<ParentContext> {
    let v = v.trim();
    let mut parts = v.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version.eq_ignore_ascii_case("ff") || flags.len() != 2 {
        return None;
    }
    let version = hex_bytes::<1>(version)?[0];
    // Version 00 has exactly four fields; later versions may append more.
    if version == 0 && parts.next().is_some() {
        return None;
    }
    if trace.bytes().any(|c| c.is_ascii_uppercase()) || parent.bytes().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    let trace_id = hex_bytes::<16>(trace)?;
    let span_id = hex_bytes::<8>(parent)?;
    let flags = hex_bytes::<1>(flags)?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(ParentContext { trace_id, span_id, sampled: flags & 1 == 1 })
}

fn b3_trace_id(s: &str) -> Option<[u8; 16]> {
    let id = match s.len() {
        32 => hex_bytes::<16>(s)?,
        16 => {
            let low = hex_bytes::<8>(s)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            id
        }
        _ => return None,
    };
    (id != [0; 16]).then_some(id)
}

/// Single-header `b3`: `traceid-spanid[-sampled[-parentspanid]]`.
pub fn parse_b3(v: &str) -> Option<ParentContext> {
    let mut parts = v.trim().split('-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = hex_bytes::<8>(parts.next()?)?;
    if span_id == [0; 8] {
        return None;
    }
    let sampled = !matches!(parts.next(), Some("0"));
    Some(ParentContext { trace_id, span_id, sampled })
}

/// Multi-header B3 (`X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`).
pub fn parse_b3_multi(trace: &str, span: &str, sampled: Option<&str>) -> Option<ParentContext> {
    let trace_id = b3_trace_id(trace.trim())?;
    let span_id = hex_bytes::<8>(span.trim())?;
    if span_id == [0; 8] {
        return None;
    }
    let sampled = !matches!(sampled.map(str::trim), Some("0") | Some("false"));
    Some(ParentContext { trace_id, span_id, sampled })
}

/// The parent context carried by a request: `traceparent` first, then `b3`, then `X-B3-*`.
pub fn parent_from_request(req: &crate::protocol::http1::RequestHead) -> Option<ParentContext> {
    if let Some(tp) = req.traceparent.as_deref().and_then(parse_traceparent) {
        return Some(tp);
    }
    if let Some(b3) = req.b3.as_deref().and_then(parse_b3) {
        return Some(b3);
    }
    match (&req.x_b3_trace_id, &req.x_b3_span_id) {
        (Some(t), Some(s)) => parse_b3_multi(t, s, req.x_b3_sampled.as_deref()),
        _ => None,
    }
}

/// Random trace and span ids, from a generator owned by whoever makes spans
/// (no per-id thread-local lookup). Ids must be unique, not secret: a fast
/// non-cryptographic generator seeded by the OS, the kind OpenTelemetry SDKs
/// use for ids.
pub struct IdGenerator(SmallRng);

impl Default for IdGenerator {
    fn default() -> Self {
        Self(SmallRng::from_os_rng())
    }
}

impl IdGenerator {
    pub fn trace_id(&mut self) -> [u8; 16] {
        self.nonzero()
    }

    pub fn span_id(&mut self) -> [u8; 8] {
        self.nonzero()
    }

    /// Random bytes, not all zero (an all-zero id is invalid).
    fn nonzero<const N: usize>(&mut self) -> [u8; N] {
        let mut id = [0; N];
        while id == [0; N] {
            self.0.fill_bytes(&mut id);
        }
        id
    }
}

/// Most buffers of finished spans kept for new ones (spans encoded as they
/// are made give theirs back at once: one is the usual count).
const SPARE_SPANS: usize = 64;

/// What making spans carries from one span to the next.
#[derive(Default)]
pub struct SpanState {
    pub strings: SharedStrings,
    pub ids: IdGenerator,
    /// Emptied attribute lists and names of finished spans.
    spare_attributes: Vec<Vec<(&'static str, Value)>>,
    spare_names: Vec<String>,
}

impl SpanState {
    /// Keep the buffers of a span that is done with (encoded), for the next ones.
    pub fn reuse(&mut self, span: Span) {
        let Span { mut attributes, mut name, .. } = span;
        // Unusually large buffers are not worth keeping.
        if self.spare_attributes.len() < SPARE_SPANS && attributes.capacity() <= 32 {
            attributes.clear();
            self.spare_attributes.push(attributes);
        }
        if self.spare_names.len() < SPARE_SPANS && name.capacity() <= 256 {
            name.clear();
            self.spare_names.push(name);
        }
    }

    fn attributes(&mut self) -> Vec<(&'static str, Value)> {
        self.spare_attributes.pop().unwrap_or_else(|| Vec::with_capacity(18))
    }

    fn name(&mut self) -> String {
        self.spare_names.pop().unwrap_or_default()
    }
}

pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// The connection an exchange travelled on, from the traced process's side.
#[derive(Clone, Debug)]
pub struct ConnMeta {
    /// The connection's identity (socket inode).
    pub ino: u64,
    pub pid: u32,
    pub comm: Arc<str>,
    pub kind: SpanKind,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    /// `local` and `remote` formatted once per connection.
    pub local_str: Arc<str>,
    pub remote_str: Arc<str>,
}

/// Split a Host header value into host and port.
fn split_host(h: &str) -> (&str, Option<u16>) {
    let h = h.trim();
    if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        if let Some((addr, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (addr, port);
        }
        return (h, None);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (h, None),
        },
        _ => (h, None),
    }
}

/// Path part of a request target (origin-form or absolute-form), without query or fragment.
pub fn target_path(target: &str) -> &str {
    // An origin-form target (the usual case) cannot start with a scheme.
    let scheme_at = if target.starts_with('/') { None } else { target.find("://") };
    let t = match scheme_at {
        Some(i) if target[..i].bytes().all(|c| c.is_ascii_alphabetic()) => {
            let rest = &target[i + 3..];
            match rest.find('/') {
                Some(j) => &rest[j..],
                None => "/",
            }
        }
        _ => target,
    };
    let end = t.bytes().position(|b| b == b'?' || b == b'#').unwrap_or(t.len());
    &t[..end]
}

/// Query part of a request target (after `?`, before any `#`), if any.
pub fn target_query(target: &str) -> Option<&str> {
    let at = target.bytes().position(|b| b == b'?')?;
    let q = &target[at + 1..];
    Some(match q.bytes().position(|b| b == b'#') {
        Some(i) => &q[..i],
        None => q,
    })
}

/// Query keys whose values are credentials (semantic conventions for
/// `url.query` and `url.full`): their values are replaced by `REDACTED`.
const SENSITIVE_QUERY_KEYS: [&str; 4] = ["AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"];

/// `q` with the values of sensitive keys replaced by `REDACTED`; borrowed
/// when there are none.
pub fn redact_query(q: &str) -> std::borrow::Cow<'_, str> {
    let sensitive = |part: &str| {
        let key = part.split_once('=').map_or(part, |(k, _)| k);
        part.contains('=') && SENSITIVE_QUERY_KEYS.contains(&key)
    };
    if !q.split('&').any(sensitive) {
        return std::borrow::Cow::Borrowed(q);
    }
    let mut out = String::with_capacity(q.len());
    for (i, part) in q.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match part.split_once('=') {
            Some((k, _)) if SENSITIVE_QUERY_KEYS.contains(&k) => {
                out.push_str(k);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(part),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Most strings kept by [`SharedStrings`] before it starts over.
const SHARED_STRINGS_MAX: usize = 4096;

/// Strings that repeat from span to span (routes, host names, user agents),
/// kept once and shared by the spans that carry them, so that making a span
/// does not copy each of them. Bounded: everything is forgotten at once when
/// the limit is reached (the spans keep their own references).
#[derive(Default)]
pub struct SharedStrings {
    set: ahash::AHashSet<Arc<str>>,
    /// `Host` header values, split into the shared host and the port.
    hosts: ahash::AHashMap<Box<str>, (Arc<str>, Option<u16>)>,
    /// Reused to build a route before it is looked up.
    scratch: String,
    /// The strings looked up last, compared before hashing: one request
    /// after another brings the same route, user agent and host.
    recent: [Option<Arc<str>>; RECENT_STRINGS],
    next_recent: usize,
    /// The last `Host` value looked up (its text kept in a reused buffer),
    /// with its host and port.
    last_host_raw: String,
    last_host: Option<(Arc<str>, Option<u16>)>,
}

const RECENT_STRINGS: usize = 4;

impl SharedStrings {
    pub fn get(&mut self, s: &str) -> Arc<str> {
        for r in self.recent.iter().flatten() {
            if **r == *s {
                return r.clone();
            }
        }
        let shared = match self.set.get(s) {
            Some(shared) => shared.clone(),
            None => {
                if self.set.len() >= SHARED_STRINGS_MAX {
                    self.set.clear();
                }
                let shared: Arc<str> = Arc::from(s);
                self.set.insert(shared.clone());
                shared
            }
        };
        self.recent[self.next_recent] = Some(shared.clone());
        self.next_recent = (self.next_recent + 1) % RECENT_STRINGS;
        shared
    }

    /// Host and port of a `Host` header value.
    pub fn host(&mut self, raw: &str) -> (Arc<str>, Option<u16>) {
        if let Some((host, port)) = &self.last_host {
            if self.last_host_raw == raw {
                return (host.clone(), *port);
            }
        }
        let (host, port) = self.host_uncached(raw);
        self.last_host_raw.clear();
        self.last_host_raw.push_str(raw);
        self.last_host = Some((host.clone(), port));
        (host, port)
    }

    fn host_uncached(&mut self, raw: &str) -> (Arc<str>, Option<u16>) {
        if let Some((host, port)) = self.hosts.get(raw) {
            return (host.clone(), *port);
        }
        let (host, port) = split_host(raw);
        let host = self.get(host);
        if self.hosts.len() >= SHARED_STRINGS_MAX {
            self.hosts.clear();
        }
        self.hosts.insert(raw.into(), (host.clone(), port));
        (host, port)
    }

    /// The route of a request target.
    pub fn route(&mut self, routes: &RouteMatcher, target: &str) -> Arc<str> {
        let mut route = std::mem::take(&mut self.scratch);
        route.clear();
        routes.route_into(target, &mut route);
        let shared = self.get(&route);
        self.scratch = route;
        shared
    }

    /// The route of a `method` request for `target` received on `conn`
    /// ([`RouteMatcher::route_for`]): `None` when the process's registered
    /// routes are known and none serves it.
    pub fn route_for(
        &mut self,
        routes: &RouteMatcher,
        conn: &ConnMeta,
        method: &str,
        target: &str,
    ) -> Option<Arc<str>> {
        let mut route = std::mem::take(&mut self.scratch);
        route.clear();
        let found = routes.route_for(conn.pid, conn.local_port, method, target, &mut route);
        let shared = found.then(|| self.get(&route));
        self.scratch = route;
        shared
    }
}

/// CLOCK_MONOTONIC in ns: the clock of the probes' `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Convert monotonic kernel timestamps to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Unix ns minus monotonic ns.
    pub offset: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mono = monotonic_ns() as i128;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Self { offset: unix - mono }
    }

    pub fn unix(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset).clamp(0, i128::from(u64::MAX)) as u64
    }
}

fn version_str(v: u8) -> &'static str {
    if v == 0 {
        "1.0"
    } else {
        "1.1"
    }
}

/// What an HTTP exchange of any version contributes to its span.
pub struct HttpView<'a> {
    pub method: &'a str,
    /// Request target: origin-form path and query, or absolute-form URI.
    pub target: &'a str,
    pub version: &'static str,
    pub scheme: &'a str,
    pub host: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub status: Option<u16>,
    pub request_body_size: Option<u64>,
    pub response_body_size: Option<u64>,
    pub parent: Option<ParentContext>,
    pub req_first_enter: u64,
    pub req_first_exit: u64,
    pub req_last_exit: u64,
    pub resp_last_exit: u64,
}

/// Build the span for one HTTP/1.x exchange.
pub fn http_span(ex: &Exchange, conn: &ConnMeta, routes: &RouteMatcher, state: &mut SpanState, clock: &Clock) -> Span {
    let req = &ex.request;
    // The version both ends speak: an HTTP/1.0 answer to an HTTP/1.1 request is HTTP/1.0.
    let version = ex.response.as_ref().map_or(req.version, |r| r.version.min(req.version));
    let view = HttpView {
        method: &req.method,
        target: &req.target,
        version: version_str(version),
        scheme: "http",
        host: req.host.as_deref(),
        user_agent: req.user_agent.as_deref(),
        status: ex.response.as_ref().map(|r| r.status),
        request_body_size: (ex.request_body_size > 0 || req.content_length.is_some()).then_some(ex.request_body_size),
        response_body_size: ex.response.is_some().then_some(ex.response_body_size),
        parent: parent_from_request(req),
        req_first_enter: ex.req_first_enter,
        req_first_exit: ex.req_first_exit,
        req_last_exit: ex.req_last_exit,
        resp_last_exit: ex.resp_last_exit,
    };
    http_view_span(&view, conn, routes, state, clock)
}

/// Build an HTTP span (any HTTP version) per the HTTP semantic conventions.
pub fn http_view_span(
    v: &HttpView<'_>,
    conn: &ConnMeta,
    routes: &RouteMatcher,
    state: &mut SpanState,
    clock: &Clock,
) -> Span {
    let method: &'static str = known_method(v.method).unwrap_or("_OTHER");
    let path = target_path(v.target);
    // Server spans have a route, unless the process's own routes are
    // known and none of them serves the request.
    let route = match conn.kind {
        SpanKind::Server => state.strings.route_for(routes, conn, v.method, v.target),
        SpanKind::Client => None,
    };
    let mut attrs = state.attributes();
    attrs.push(("http.request.method", Value::from(method)));
    if method == "_OTHER" {
        attrs.push(("http.request.method_original", Value::from(v.method.to_string())));
    }
    // A path that is its own route holds no identifiers: it repeats, so it is shared.
    let path_value = match &route {
        Some(r) if **r == *path => Value::Shared(r.clone()),
        _ => Value::from(path.to_string()),
    };
    let query = target_query(v.target).map(redact_query);
    if let Some(q) = &query {
        attrs.push(("url.query", Value::from(q.to_string())));
    }
    attrs.extend([
        ("url.path", path_value),
        ("url.scheme", Value::from(if v.scheme == "https" { "https" } else { "http" })),
        ("network.protocol.name", Value::from("http")),
        ("network.protocol.version", Value::from(v.version)),
        ("network.transport", Value::from("tcp")),
        ("network.peer.address", Value::Shared(conn.remote_str.clone())),
        ("network.peer.port", Value::Int(conn.remote_port as i64)),
    ]);
    let host = v.host.map(|h| state.strings.host(h));
    let status = v.status;
    let mut span_status = Status::Unset;
    let name;
    let start;
    match conn.kind {
        SpanKind::Server => {
            let mut n = state.name();
            n.push_str(method);
            if let Some(route) = &route {
                n.push(' ');
                n.push_str(route);
            }
            name = n;
            let (addr, port) = match host {
                Some((h, p)) if !h.is_empty() => (Value::Shared(h), p.unwrap_or(conn.local_port)),
                _ => (Value::Shared(conn.local_str.clone()), conn.local_port),
            };
            if let Some(route) = route {
                attrs.push(("http.route", Value::Shared(route)));
            }
            attrs.extend([
                ("server.address", addr),
                ("server.port", Value::Int(port as i64)),
                ("client.address", Value::Shared(conn.remote_str.clone())),
                ("client.port", Value::Int(conn.remote_port as i64)),
            ]);
            if status.is_some_and(|s| s >= 500) {
                span_status = Status::Error;
            }
            start = v.req_first_exit;
        }
        SpanKind::Client => {
            let mut n = state.name();
            n.push_str(method);
            name = n;
            let (addr, port) = match host {
                Some((h, p)) if !h.is_empty() => (h, p.unwrap_or(conn.remote_port)),
                _ => (conn.remote_str.clone(), conn.remote_port),
            };
            let target = if v.target.starts_with('/') { v.target } else { path };
            let scheme = if v.scheme == "https" { "https" } else { "http" };
            let default_port = if scheme == "https" { 443 } else { 80 };
            // The target as sent, unless its query needed redacting.
            let redacted;
            let target = match &query {
                Some(std::borrow::Cow::Owned(q)) => {
                    redacted = format!("{path}?{q}");
                    redacted.as_str()
                }
                _ => target,
            };
            let mut full = String::with_capacity(8 + addr.len() + 6 + target.len());
            full.push_str(scheme);
            full.push_str("://");
            full.push_str(&addr);
            if port != default_port {
                full.push(':');
                full.push_str(itoa_u16(port).as_str());
            }
            full.push_str(target);
            attrs.push(("url.full", Value::from(full)));
            attrs.push(("server.address", Value::Shared(addr)));
            attrs.push(("server.port", Value::Int(port as i64)));
            if status.is_some_and(|s| s >= 400) {
                span_status = Status::Error;
            }
            start = v.req_first_enter;
        }
    }
    let end = if v.resp_last_exit > 0 { v.resp_last_exit } else { v.req_last_exit };
    match status {
        Some(s) => {
            attrs.push(("http.response.status_code", Value::Int(s as i64)));
            if span_status == Status::Error {
                attrs.push(("error.type", Value::from(s.to_string())));
            }
        }
        None => {
            // The connection ended before a response was seen.
            span_status = Status::Error;
            attrs.push(("error.type", Value::from("no_response")));
        }
    }
    if let Some(ua) = v.user_agent {
        attrs.push(("user_agent.original", Value::Shared(state.strings.get(ua))));
    }
    if let Some(n) = v.request_body_size {
        attrs.push(("http.request.body.size", Value::Int(n as i64)));
    }
    if let Some(n) = v.response_body_size {
        attrs.push(("http.response.body.size", Value::Int(n as i64)));
    }
    finish_span(name, attrs, span_status, v.parent, start, end, conn, clock, &mut state.ids)
}

#[allow(clippy::too_many_arguments)]
fn finish_span(
    name: String,
    attributes: Vec<(&'static str, Value)>,
    status: Status,
    parent: Option<ParentContext>,
    start: u64,
    end: u64,
    conn: &ConnMeta,
    clock: &Clock,
    ids: &mut IdGenerator,
) -> Span {
    let (trace_id, parent_span_id, sampled) = match parent {
        Some(p) => (p.trace_id, Some(p.span_id), p.sampled),
        None => (ids.trace_id(), None, true),
    };
    let start_unix = clock.unix(start);
    let end_unix = clock.unix(end).max(start_unix.saturating_add(1));
    Span {
        trace_id,
        span_id: ids.span_id(),
        parent_span_id,
        sampled,
        name,
        kind: conn.kind,
        start_unix_ns: start_unix,
        end_unix_ns: end_unix,
        attributes,
        status,
        pid: conn.pid,
        comm: conn.comm.clone(),
        server_port: (conn.kind == SpanKind::Server).then_some(conn.local_port),
        links: Vec::new(),
        parent_remote: true,
    }
}

/// `grpc-trace-bin`: version 0, then fields 0 (trace id, 16 bytes), 1 (span
/// id, 8 bytes) and 2 (trace options, 1 byte).
pub fn parse_grpc_trace_bin(b: &[u8]) -> Option<ParentContext> {
    if b.first() != Some(&0) {
        return None;
    }
    let mut i = 1;
    let (mut trace_id, mut span_id, mut sampled) = (None, None, true);
    while i < b.len() {
        match b[i] {
            0 => {
                trace_id = Some(<[u8; 16]>::try_from(b.get(i + 1..i + 17)?).ok()?);
                i += 17;
            }
            1 => {
                span_id = Some(<[u8; 8]>::try_from(b.get(i + 1..i + 9)?).ok()?);
                i += 9;
            }
            2 => {
                sampled = b.get(i + 1)? & 1 == 1;
                i += 2;
            }
            _ => break,
        }
    }
    let (trace_id, span_id) = (trace_id?, span_id?);
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(ParentContext { trace_id, span_id, sampled })
}

/// gRPC status code names, by number.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Whether a gRPC status makes the span an error, per the gRPC semantic
/// conventions: every non-OK status on clients; on servers only those that
/// point at the server.
pub fn grpc_is_error(kind: SpanKind, code: u32) -> bool {
    match kind {
        SpanKind::Client => code != 0,
        SpanKind::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

/// The parent context an HTTP/2 request carries: `traceparent`, `b3`,
/// `X-B3-*`, then `grpc-trace-bin`.
pub fn h2_parent(ex: &H2Exchange) -> Option<ParentContext> {
    ex.traceparent
        .as_deref()
        .and_then(parse_traceparent)
        .or_else(|| ex.b3.as_deref().and_then(parse_b3))
        .or_else(|| match (&ex.x_b3_trace_id, &ex.x_b3_span_id) {
            (Some(t), Some(s)) => parse_b3_multi(t, s, ex.x_b3_sampled.as_deref()),
            _ => None,
        })
        .or_else(|| ex.grpc_trace_bin.as_deref().and_then(parse_grpc_trace_bin))
}

/// Build the span for one HTTP/2 stream: a gRPC span when the request is
/// gRPC, an HTTP span otherwise.
pub fn h2_span(ex: &H2Exchange, conn: &ConnMeta, routes: &RouteMatcher, state: &mut SpanState, clock: &Clock) -> Span {
    let parent = h2_parent(ex);
    // gRPC by content-type or trailers; when the headers could not all be
    // decoded (joined mid-connection), a POST to `/package.Service/Method`.
    let grpc_path = |p: &str| {
        p.strip_prefix('/').and_then(|r| r.split_once('/')).is_some_and(|(svc, m)| {
            svc.contains('.') && !m.is_empty() && !m.contains('/') && !svc.contains('?') && !m.contains('?')
        })
    };
    let is_grpc = ex.content_type.as_deref().is_some_and(|c| c.starts_with("application/grpc"))
        || ex.grpc_status.is_some()
        || (ex.headers_incomplete
            && ex.content_type.is_none()
            && ex.method.as_deref().is_none_or(|m| m == "POST")
            && (ex.grpc_framed || ex.path.as_deref().is_some_and(grpc_path)));
    if !is_grpc {
        let view = HttpView {
            method: ex.method.as_deref().unwrap_or("_OTHER"),
            target: ex.path.as_deref().unwrap_or(""),
            version: "2",
            scheme: ex.scheme.as_deref().unwrap_or("http"),
            host: ex.authority.as_deref(),
            user_agent: ex.user_agent.as_deref(),
            status: ex.status,
            request_body_size: Some(ex.request_body_size),
            response_body_size: ex.status.map(|_| ex.response_body_size),
            parent,
            req_first_enter: ex.req_first_enter,
            req_first_exit: ex.req_first_enter,
            req_last_exit: ex.req_last_exit,
            resp_last_exit: ex.resp_last_exit,
        };
        let mut span = http_view_span(&view, conn, routes, state, clock);
        if ex.headers_incomplete {
            span.attributes.push(("tracer.headers_incomplete", Value::Int(1)));
        }
        return span;
    }
    let path = ex.path.as_deref().unwrap_or("");
    let full = path.strip_prefix('/').unwrap_or(path);
    let (service, method) = match full.rsplit_once('/') {
        Some((s, m)) if !s.is_empty() && !m.is_empty() => (Some(s), Some(m)),
        _ => (None, None),
    };
    let mut attrs = state.attributes();
    attrs.push(("rpc.system", Value::from("grpc")));
    attrs.push(("rpc.system.name", Value::from("grpc")));
    if let Some(s) = service {
        attrs.push(("rpc.service", Value::from(s.to_string())));
    }
    if let Some(m) = method {
        attrs.push(("rpc.method", Value::from(m.to_string())));
    }
    attrs.push(("network.transport", Value::from("tcp")));
    attrs.push(("network.protocol.name", Value::from("http")));
    attrs.push(("network.protocol.version", Value::from("2")));
    attrs.push(("network.peer.address", Value::Shared(conn.remote_str.clone())));
    attrs.push(("network.peer.port", Value::Int(conn.remote_port as i64)));
    let host = ex.authority.as_deref().map(split_host);
    match conn.kind {
        SpanKind::Server => {
            attrs.push(("server.address", Value::Shared(conn.local_str.clone())));
            attrs.push(("server.port", Value::Int(conn.local_port as i64)));
            attrs.push(("client.address", Value::Shared(conn.remote_str.clone())));
            attrs.push(("client.port", Value::Int(conn.remote_port as i64)));
        }
        SpanKind::Client => {
            let (addr, port) = match host {
                Some((h, p)) if !h.is_empty() => (h.to_string(), p.unwrap_or(conn.remote_port)),
                _ => (conn.remote_str.to_string(), conn.remote_port),
            };
            attrs.push(("server.address", Value::from(addr)));
            attrs.push(("server.port", Value::Int(port as i64)));
        }
    }
    let mut status = Status::Unset;
    match ex.grpc_status {
        Some(code) => {
            attrs.push(("rpc.grpc.status_code", Value::Int(code as i64)));
            if grpc_is_error(conn.kind, code) {
                status = Status::Error;
                let name = GRPC_CODES.get(code as usize).copied().unwrap_or("UNKNOWN");
                attrs.push(("error.type", Value::from(name)));
            }
        }
        // Trailers came but their status could not be decoded (a dynamic
        // table entry from before the agent joined): unknown, not an error.
        None if ex.ended
            && ex.reset.is_none()
            && ex.headers_incomplete
            && (ex.status.is_some() || conn.kind == SpanKind::Server) => {}
        None => {
            status = Status::Error;
            let why = if ex.reset.is_some() { "cancelled" } else { "no_response" };
            attrs.push(("error.type", Value::from(why)));
        }
    }
    if ex.headers_incomplete {
        attrs.push(("tracer.headers_incomplete", Value::Int(1)));
    }
    let mut name = state.name();
    name.push_str(if full.is_empty() { "grpc" } else { full });
    // Streams seen only from their response never get here (no request time).
    let start = ex.req_first_enter;
    let end = if ex.resp_last_exit > 0 { ex.resp_last_exit } else { ex.req_last_exit };
    finish_span(name, attrs, status, parent, start, end, conn, clock, &mut state.ids)
}

/// Redis command text for `db.query.text`: the command and its key, other
/// arguments replaced by `?`. Commands whose first argument is not a key
/// (and may be a secret, like `AUTH`'s password) keep no argument; container
/// commands (`CONFIG GET`, `CLIENT SETNAME`) keep their subcommand only.
fn redis_query_text(raw: &str) -> String {
    let mut parts = raw.split(' ');
    let mut out = String::with_capacity(raw.len().min(128));
    let Some(cmd) = parts.next() else { return out };
    out.push_str(cmd);
    let upper = cmd.to_ascii_uppercase();
    // Arguments kept: the key, or a container command's subcommand; none
    // for commands without keys.
    let keep = match upper.as_str() {
        "AUTH" | "HELLO" | "ECHO" | "SELECT" | "PING" | "MIGRATE" | "SWAPDB" | "QUIT" | "RESET" | "FAILOVER"
        | "REPLICAOF" | "SLAVEOF" | "SHUTDOWN" => 0,
        _ => 1,
    };
    for (i, p) in parts.enumerate() {
        if i < keep {
            out.push(' ');
            out.push_str(p);
        } else {
            out.push_str(" ?");
        }
    }
    out
}

#[cfg(test)]
mod redis_text_tests {
    use super::redis_query_text;

    #[test]
    fn secrets_and_values_are_hidden() {
        assert_eq!(redis_query_text("SET foo bar"), "SET foo ?");
        assert_eq!(redis_query_text("GET foo"), "GET foo");
        assert_eq!(redis_query_text("AUTH s3cret"), "AUTH ?");
        assert_eq!(redis_query_text("auth user s3cret"), "auth ? ?");
        assert_eq!(redis_query_text("HELLO 3 AUTH default pw"), "HELLO ? ? ? ?");
        assert_eq!(redis_query_text("ECHO private"), "ECHO ?");
        assert_eq!(redis_query_text("SELECT 5"), "SELECT ?");
        assert_eq!(redis_query_text("CONFIG GET save"), "CONFIG GET ?");
        assert_eq!(redis_query_text("CONFIG SET requirepass pw"), "CONFIG SET ? ?");
        assert_eq!(redis_query_text("PING"), "PING");
    }
}

/// Build the client span for one database or cache command, per the
/// database semantic conventions. Query text is sanitised unless `full_text`.
pub fn db_span(ex: &DbExchange, conn: &ConnMeta, clock: &Clock, state: &mut SpanState, full_text: bool) -> Span {
    let system = ex.system.as_str();
    let mut attrs = state.attributes();
    attrs.push(("db.system.name", Value::from(system)));
    let (operation, collection) = match ex.system {
        DbSystem::Redis => (ex.operation.clone(), None),
        _ => match &ex.query_text {
            Some(q) => sql::operation_and_collection(q),
            None => (ex.operation.clone(), None),
        },
    };
    if let Some(op) = &operation {
        attrs.push(("db.operation.name", Value::from(op.clone())));
    }
    if let Some(c) = &collection {
        attrs.push(("db.collection.name", Value::from(c.clone())));
    }
    if let Some(ns) = &ex.namespace {
        attrs.push(("db.namespace", Value::from(ns.clone())));
    }
    if let Some(q) = &ex.query_text {
        let text = if full_text {
            q.clone()
        } else if ex.system == DbSystem::Redis {
            redis_query_text(q)
        } else {
            sql::sanitize(q)
        };
        attrs.push(("db.query.text", Value::from(text)));
    }
    // Rows affected by data changes are not returned rows.
    let changes_data =
        matches!(operation.as_deref(), Some("INSERT" | "UPDATE" | "DELETE" | "MERGE" | "REPLACE" | "UPSERT"));
    if let (Some(rows), false) = (ex.rows, changes_data) {
        attrs.push(("db.response.returned_rows", Value::Int(rows as i64)));
    }
    attrs.push(("server.address", Value::Shared(conn.remote_str.clone())));
    attrs.push(("server.port", Value::Int(conn.remote_port as i64)));
    attrs.push(("network.peer.address", Value::Shared(conn.remote_str.clone())));
    attrs.push(("network.peer.port", Value::Int(conn.remote_port as i64)));
    let mut status = Status::Unset;
    if let Some(e) = &ex.error {
        status = Status::Error;
        attrs.push(("db.response.status_code", Value::from(e.code.clone())));
        attrs.push(("error.type", Value::from(e.code.clone())));
    } else if ex.no_response {
        status = Status::Error;
        attrs.push(("error.type", Value::from("no_response")));
    }
    let name = sql::span_name(operation.as_deref(), collection.as_deref(), ex.namespace.as_deref(), system);
    let end = if ex.resp_last_exit > 0 { ex.resp_last_exit } else { ex.req_last_exit };
    finish_span(name, attrs, status, None, ex.req_first_enter, end, conn, clock, &mut state.ids)
}

/// The method as a static string when it is a known one.
fn known_method(m: &str) -> Option<&'static str> {
    Some(match m {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        "QUERY" => "QUERY",
        _ => return None,
    })
}

/// A port as text without going through the formatter.
struct PortText([u8; 5], usize);

impl PortText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0[5 - self.1..]).unwrap_or("0")
    }
}

fn itoa_u16(mut v: u16) -> PortText {
    let mut b = [0u8; 5];
    let mut n = 0;
    loop {
        b[4 - n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    PortText(b, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_timestamps_make_a_span_that_ends_after_it_starts() {
        let conn = ConnMeta {
            ino: 1,
            pid: 1,
            comm: "x".into(),
            kind: SpanKind::Client,
            local: IpAddr::from([127, 0, 0, 1]),
            local_port: 1,
            remote: IpAddr::from([127, 0, 0, 1]),
            remote_port: 2,
            local_str: "127.0.0.1".into(),
            remote_str: "127.0.0.1".into(),
        };
        let mut ids = IdGenerator::default();
        for offset in [0i128, i128::from(u64::MAX), -i128::from(u64::MAX), i128::from(i64::MAX)] {
            let clock = Clock { offset };
            for (start, end) in [(u64::MAX, 0), (u64::MAX, u64::MAX), (0, u64::MAX), (5, 1)] {
                let s = finish_span("x".into(), Vec::new(), Status::Unset, None, start, end, &conn, &clock, &mut ids);
                assert!(s.end_unix_ns >= s.start_unix_ns, "offset {offset} start {start} end {end}");
            }
        }
        // Unix time saturates rather than wraps.
        assert_eq!(Clock { offset: i128::from(u64::MAX) }.unix(10), u64::MAX);
        assert_eq!(Clock { offset: -20 }.unix(10), 0);
    }

    #[test]
    fn queries_are_found_and_credentials_redacted() {
        assert_eq!(target_query("/a?x=1&y=2#frag"), Some("x=1&y=2"));
        assert_eq!(target_query("/a"), None);
        assert_eq!(target_query("/a?"), Some(""));
        assert!(matches!(redact_query("x=1&y=2"), std::borrow::Cow::Borrowed("x=1&y=2")));
        assert_eq!(
            redact_query("X-Goog-Signature=abc&x=1&sig=zz&Signature"),
            "X-Goog-Signature=REDACTED&x=1&sig=REDACTED&Signature"
        );
        assert_eq!(redact_query("AWSAccessKeyId=AK&signature=keep"), "AWSAccessKeyId=REDACTED&signature=keep");
    }

    #[test]
    fn shared_strings_are_shared_across_the_recent_cache_and_the_set() {
        let mut st = SharedStrings::default();
        let words = ["/a", "/b", "curl/8", "/c", "/d", "/e", "/a", "curl/8", "/bb", "/b"];
        let mut seen: Vec<Arc<str>> = Vec::new();
        for round in 0..3 {
            for w in words {
                let got = st.get(w);
                assert_eq!(&*got, w);
                match seen.iter().find(|s| ***s == *w) {
                    Some(first) => assert!(Arc::ptr_eq(first, &got), "{w} in round {round}"),
                    None => seen.push(got),
                }
            }
        }
        for raw in ["a.example:8080", "b.example", "a.example:8080", "[::1]:9", "b.example", "b.example"] {
            let (host, port) = st.host(raw);
            let (want_host, want_port) = split_host(raw);
            assert_eq!((&*host, port), (want_host, want_port), "{raw}");
        }
    }

    #[test]
    fn traceparent() {
        let p = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
        assert!(p.sampled);
        assert!(parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(parse_traceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none());
        assert!(parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7").is_none());
        assert!(parse_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none());
        assert!(parse_traceparent("zz-é").is_none());
        // Future versions may carry extra fields.
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra").is_some());
    }

    #[test]
    fn b3() {
        let p = parse_b3("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90").unwrap();
        assert_eq!(hex(&p.span_id), "e457b5a2e4d86bd1");
        let p = parse_b3("64fe8b2a57d3eff7-e457b5a2e4d86bd1").unwrap();
        assert_eq!(hex(&p.trace_id), "000000000000000064fe8b2a57d3eff7");
        assert!(parse_b3("1").is_none());
        let p = parse_b3_multi("80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1", Some("0")).unwrap();
        assert!(!p.sampled);
    }

    #[test]
    fn grpc_trace_bin() {
        let mut b = vec![0u8, 0];
        b.extend_from_slice(&[0x4b; 16]);
        b.push(1);
        b.extend_from_slice(&[0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        b.extend_from_slice(&[2, 1]);
        let p = parse_grpc_trace_bin(&b).unwrap();
        assert_eq!(p.trace_id, [0x4b; 16]);
        assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
        assert!(p.sampled);
        assert!(parse_grpc_trace_bin(&b[..10]).is_none());
        assert!(parse_grpc_trace_bin(&[1, 0]).is_none());
        let mut zero = b.clone();
        zero[2..18].fill(0);
        assert!(parse_grpc_trace_bin(&zero).is_none());
    }

    #[test]
    fn grpc_error_rules() {
        for code in 0..17 {
            assert_eq!(grpc_is_error(SpanKind::Client, code), code != 0);
        }
        let server: Vec<u32> = (0..17).filter(|c| grpc_is_error(SpanKind::Server, *c)).collect();
        assert_eq!(server, vec![2, 4, 12, 13, 14, 15]);
    }

    #[test]
    fn paths_and_hosts() {
        assert_eq!(target_path("/a/b?x=1#f"), "/a/b");
        assert_eq!(target_path("http://h:8080/p?q"), "/p");
        assert_eq!(target_path("http://h"), "/");
        assert_eq!(split_host("example.com:8080"), ("example.com", Some(8080)));
        assert_eq!(split_host("[::1]:81"), ("::1", Some(81)));
        assert_eq!(split_host("example.com"), ("example.com", None));
    }
}
