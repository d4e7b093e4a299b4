//! The span model, trace-context propagation headers, and the HTTP exchange →
//! span mapping per the OpenTelemetry HTTP semantic conventions.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use crate::protocol::http1::Exchange;
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

pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id: [u8; 16] = rand::random();
        if id != [0; 16] {
            return id;
        }
    }
}

pub fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
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
    let t = match target.find("://") {
        Some(i) if target[..i].bytes().all(|c| c.is_ascii_alphabetic()) => {
            let rest = &target[i + 3..];
            match rest.find('/') {
                Some(j) => &rest[j..],
                None => "/",
            }
        }
        _ => target,
    };
    let end = t.find(['?', '#']).unwrap_or(t.len());
    &t[..end]
}

/// Convert monotonic kernel timestamps to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Unix ns minus monotonic ns.
    pub offset: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Self { offset: unix - mono }
    }

    pub fn unix(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset).max(0) as u64
    }
}

fn version_str(v: u8) -> &'static str {
    if v == 0 {
        "1.0"
    } else {
        "1.1"
    }
}

/// Build the span for one HTTP/1.x exchange.
pub fn http_span(ex: &Exchange, conn: &ConnMeta, routes: &RouteMatcher, clock: &Clock) -> Span {
    let req = &ex.request;
    let method: &'static str = known_method(&req.method).unwrap_or("_OTHER");
    let path = target_path(&req.target);
    let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(16);
    attrs.push(("http.request.method", Value::from(method)));
    if method == "_OTHER" {
        attrs.push(("http.request.method_original", Value::from(req.method.clone())));
    }
    attrs.push(("url.path", Value::from(path.to_string())));
    attrs.push(("url.scheme", Value::from("http")));
    attrs.push(("network.protocol.name", Value::from("http")));
    // The version both ends speak: an HTTP/1.0 answer to an HTTP/1.1 request is HTTP/1.0.
    let version = ex.response.as_ref().map_or(req.version, |r| r.version.min(req.version));
    attrs.push(("network.protocol.version", Value::from(version_str(version))));
    attrs.push(("network.transport", Value::from("tcp")));
    attrs.push(("network.peer.address", Value::Shared(conn.remote_str.clone())));
    attrs.push(("network.peer.port", Value::Int(conn.remote_port as i64)));
    let host = req.host.as_deref().map(split_host);
    let status = ex.response.as_ref().map(|r| r.status);
    let mut span_status = Status::Unset;
    let name;
    let (start, end);
    match conn.kind {
        SpanKind::Server => {
            let route = routes.route(&req.target);
            name = format!("{method} {route}");
            attrs.push(("http.route", Value::from(route)));
            let (addr, port) = match host {
                Some((h, p)) if !h.is_empty() => (Value::from(h.to_string()), p.unwrap_or(conn.local_port)),
                _ => (Value::Shared(conn.local_str.clone()), conn.local_port),
            };
            attrs.push(("server.address", addr));
            attrs.push(("server.port", Value::Int(port as i64)));
            attrs.push(("client.address", Value::Shared(conn.remote_str.clone())));
            attrs.push(("client.port", Value::Int(conn.remote_port as i64)));
            if let Some(s) = status {
                if s >= 500 {
                    span_status = Status::Error;
                }
            }
            start = ex.req_first_exit;
        }
        SpanKind::Client => {
            name = method.to_string();
            let (addr, port) = match host {
                Some((h, p)) if !h.is_empty() => (h, p.unwrap_or(conn.remote_port)),
                _ => (&*conn.remote_str, conn.remote_port),
            };
            let target = if req.target.starts_with('/') { req.target.as_str() } else { path };
            let mut full = String::with_capacity(8 + addr.len() + 6 + target.len());
            full.push_str("http://");
            full.push_str(addr);
            if port != 80 {
                full.push(':');
                full.push_str(itoa_u16(port).as_str());
            }
            full.push_str(target);
            attrs.push(("url.full", Value::from(full)));
            attrs.push(("server.address", Value::from(addr.to_string())));
            attrs.push(("server.port", Value::Int(port as i64)));
            if let Some(s) = status {
                if s >= 400 {
                    span_status = Status::Error;
                }
            }
            start = ex.req_first_enter;
        }
    }
    end = if ex.resp_last_exit > 0 { ex.resp_last_exit } else { ex.req_last_exit };
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
    if let Some(ua) = &req.user_agent {
        attrs.push(("user_agent.original", Value::from(ua.clone())));
    }
    if ex.request_body_size > 0 || req.content_length.is_some() {
        attrs.push(("http.request.body.size", Value::Int(ex.request_body_size as i64)));
    }
    if ex.response.is_some() {
        attrs.push(("http.response.body.size", Value::Int(ex.response_body_size as i64)));
    }
    let parent = parent_from_request(req);
    let (trace_id, parent_span_id, sampled) = match parent {
        Some(p) => (p.trace_id, Some(p.span_id), p.sampled),
        None => (new_trace_id(), None, true),
    };
    let start_unix = clock.unix(start);
    let end_unix = clock.unix(end).max(start_unix + 1);
    Span {
        trace_id,
        span_id: new_span_id(),
        parent_span_id,
        sampled,
        name,
        kind: conn.kind,
        start_unix_ns: start_unix,
        end_unix_ns: end_unix,
        attributes: attrs,
        status: span_status,
        pid: conn.pid,
        comm: conn.comm.clone(),
        server_port: (conn.kind == SpanKind::Server).then_some(conn.local_port),
    }
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
    fn paths_and_hosts() {
        assert_eq!(target_path("/a/b?x=1#f"), "/a/b");
        assert_eq!(target_path("http://h:8080/p?q"), "/p");
        assert_eq!(target_path("http://h"), "/");
        assert_eq!(split_host("example.com:8080"), ("example.com", Some(8080)));
        assert_eq!(split_host("[::1]:81"), ("::1", Some(81)));
        assert_eq!(split_host("example.com"), ("example.com", None));
    }
}
