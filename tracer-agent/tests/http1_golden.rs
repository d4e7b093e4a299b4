//! Golden tests for HTTP/1 exchange pairing, plus a randomised robustness
//! test.
//!
//! Each `tests/fixtures/http1/NAME.http` script is replayed through an
//! `Http1Conn`; the resulting exchanges are rendered as text and compared with
//! `NAME.expected`. Run with `UPDATE_GOLDEN=1` to (re)write the expected files.
//!
//! Script format, one directive per line:
//!
//! ```text
//! # comment                 (blank lines are ignored too)
//! > DATA                    new client -> server segment
//! < DATA                    new server -> client segment
//! + DATA                    append DATA to the previous segment
//! .fill N [C]               append N bytes C (default 'x') to the previous segment
//! ~N                        the previous segment has N uncaptured bytes after its data
//! @ENTER,EXIT               explicit timestamps for the previous segment
//! .repeat K                 K more copies of the previous segment
//! !close                    the connection closes
//! ```
//!
//! DATA starts after the single space following the marker and runs to the
//! end of the line. Escapes: `\r`, `\n`, `\t`, `\0`, `\s` (space), `\\` and
//! `\xNN`; a literal trailing space should be written as `\s`. `N` may use
//! `_` separators. Event i (1-based, counting segments and closes) gets
//! enter = 1000 * i and exit = 1000 * i + 500 unless `@` says otherwise;
//! a close happens at 1000 * i.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tracer_agent::protocol::http1::{
    parse_request, parse_response, BodyFraming, Exchange, Http1Conn, Parse, Segment, MAX_HEAD_LEN,
    MAX_PENDING,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Request,
    Response,
}

#[derive(Debug, Clone)]
enum Event {
    Segment {
        dir: Dir,
        data: Vec<u8>,
        uncaptured: u64,
        ts: Option<(u64, u64)>,
    },
    Close,
}

fn unescape(s: &str, line_no: usize) -> Result<Vec<u8>, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let esc = *bytes
            .get(i + 1)
            .ok_or_else(|| format!("line {line_no}: dangling backslash"))?;
        i += 2;
        match esc {
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'0' => out.push(0),
            b's' => out.push(b' '),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = s
                    .get(i..i + 2)
                    .ok_or_else(|| format!("line {line_no}: short \\x escape"))?;
                let v = u8::from_str_radix(hex, 16)
                    .map_err(|_| format!("line {line_no}: bad \\x escape {hex:?}"))?;
                out.push(v);
                i += 2;
            }
            other => {
                return Err(format!(
                    "line {line_no}: unknown escape \\{}",
                    other as char
                ))
            }
        }
    }
    Ok(out)
}

fn number(s: &str, line_no: usize) -> Result<u64, String> {
    s.trim()
        .replace('_', "")
        .parse::<u64>()
        .map_err(|_| format!("line {line_no}: bad number {s:?}"))
}

fn parse_script(text: &str) -> Result<Vec<Event>, String> {
    let mut events: Vec<Event> = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let data_of = |marker: &str| -> Result<Vec<u8>, String> {
            let rest = &line[marker.len()..];
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            unescape(rest, line_no)
        };
        let last_segment = |events: &mut Vec<Event>| -> Result<usize, String> {
            match events.last() {
                Some(Event::Segment { .. }) => Ok(events.len() - 1),
                _ => Err(format!("line {line_no}: no previous segment")),
            }
        };
        if line.starts_with('>') || line.starts_with('<') {
            let dir = if line.starts_with('>') {
                Dir::Request
            } else {
                Dir::Response
            };
            events.push(Event::Segment {
                dir,
                data: data_of(&line[..1])?,
                uncaptured: 0,
                ts: None,
            });
        } else if line.starts_with('+') {
            let add = data_of("+")?;
            let i = last_segment(&mut events)?;
            if let Some(Event::Segment { data, .. }) = events.get_mut(i) {
                data.extend_from_slice(&add);
            }
        } else if let Some(rest) = line.strip_prefix(".fill") {
            let mut parts = rest.split_whitespace();
            let n = number(parts.next().unwrap_or(""), line_no)?;
            let fill = match parts.next() {
                Some(c) => {
                    let b = unescape(c, line_no)?;
                    if b.len() != 1 {
                        return Err(format!("line {line_no}: fill byte must be one byte"));
                    }
                    b[0]
                }
                None => b'x',
            };
            let i = last_segment(&mut events)?;
            if let Some(Event::Segment { data, .. }) = events.get_mut(i) {
                data.extend(std::iter::repeat_n(fill, n as usize));
            }
        } else if let Some(rest) = line.strip_prefix(".repeat") {
            let k = number(rest, line_no)?;
            let i = last_segment(&mut events)?;
            let ev = events[i].clone();
            for _ in 0..k {
                events.push(ev.clone());
            }
        } else if let Some(rest) = line.strip_prefix('~') {
            let n = number(rest, line_no)?;
            let i = last_segment(&mut events)?;
            if let Some(Event::Segment { uncaptured, .. }) = events.get_mut(i) {
                *uncaptured = uncaptured.saturating_add(n);
            }
        } else if let Some(rest) = line.strip_prefix('@') {
            let (a, b) = rest
                .split_once(',')
                .ok_or_else(|| format!("line {line_no}: expected @ENTER,EXIT"))?;
            let pair = (number(a, line_no)?, number(b, line_no)?);
            let i = last_segment(&mut events)?;
            if let Some(Event::Segment { ts, .. }) = events.get_mut(i) {
                *ts = Some(pair);
            }
        } else if line.trim() == "!close" {
            events.push(Event::Close);
        } else {
            return Err(format!("line {line_no}: unrecognised line {line:?}"));
        }
    }
    Ok(events)
}

fn framing(b: BodyFraming) -> String {
    match b {
        BodyFraming::None => "none".to_string(),
        BodyFraming::Length(n) => format!("length({n})"),
        BodyFraming::Chunked => "chunked".to_string(),
        BodyFraming::UntilClose => "until-close".to_string(),
    }
}

fn opt_u64(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |n| n.to_string())
}

fn render_exchange(out: &mut String, n: usize, at: usize, e: &Exchange) {
    let r = &e.request;
    let status = e.response.as_ref().map_or_else(
        || "(no response)".to_string(),
        |s| format!("{} HTTP/1.{}", s.status, s.version),
    );
    let _ = writeln!(
        out,
        "exchange {n} (emitted at event {at}): {} {} HTTP/1.{} -> {status}",
        r.method, r.target, r.version
    );
    let _ = writeln!(
        out,
        "  request: header_len={} body={} content_length={} expect_continue={}",
        r.header_len,
        framing(r.body),
        opt_u64(r.content_length),
        r.expect_continue
    );
    let fields = [
        ("host", &r.host),
        ("user_agent", &r.user_agent),
        ("traceparent", &r.traceparent),
        ("tracestate", &r.tracestate),
        ("b3", &r.b3),
        ("x_b3_trace_id", &r.x_b3_trace_id),
        ("x_b3_span_id", &r.x_b3_span_id),
        ("x_b3_sampled", &r.x_b3_sampled),
        ("upgrade", &r.upgrade),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            let _ = writeln!(out, "  {name}: {v:?}");
        }
    }
    if let Some(s) = &e.response {
        let _ = writeln!(
            out,
            "  response: header_len={} body={} content_length={}",
            s.header_len,
            framing(s.body),
            opt_u64(s.content_length)
        );
    }
    let _ = writeln!(
        out,
        "  times: req_first={}..{} req_last_exit={} resp_first_enter={} resp_last_exit={}",
        e.req_first_enter, e.req_first_exit, e.req_last_exit, e.resp_first_enter, e.resp_last_exit
    );
    let _ = writeln!(
        out,
        "  body sizes: request={} response={}",
        e.request_body_size, e.response_body_size
    );
    let mut flags = Vec::new();
    if e.headers_truncated {
        flags.push("headers_truncated");
    }
    if e.response_headers_truncated {
        flags.push("response_headers_truncated");
    }
    if e.framing_lost {
        flags.push("framing_lost");
    }
    if e.response_incomplete {
        flags.push("response_incomplete");
    }
    if !flags.is_empty() {
        let _ = writeln!(out, "  flags: {}", flags.join(" "));
    }
}

fn run_script(events: &[Event]) -> String {
    let mut conn = Http1Conn::new();
    let mut out = String::new();
    let mut emitted: Vec<Exchange> = Vec::new();
    let mut count = 0usize;
    for (i, ev) in events.iter().enumerate() {
        let idx = (i + 1) as u64;
        match ev {
            Event::Segment {
                dir,
                data,
                uncaptured,
                ts,
            } => {
                let (ts_enter, ts_exit) = ts.unwrap_or((idx * 1000, idx * 1000 + 500));
                let seg = Segment {
                    data,
                    uncaptured: *uncaptured,
                    ts_enter,
                    ts_exit,
                };
                match dir {
                    Dir::Request => conn.on_request_segment(seg, &mut emitted),
                    Dir::Response => conn.on_response_segment(seg, &mut emitted),
                }
            }
            Event::Close => conn.on_close(idx * 1000, &mut emitted),
        }
        for e in emitted.drain(..) {
            count += 1;
            render_exchange(&mut out, count, i + 1, &e);
        }
    }
    if count == 0 {
        out.push_str("no exchanges\n");
    }
    let st = conn.stats();
    let _ = writeln!(
        out,
        "state: upgraded={} pending={}",
        conn.upgraded(),
        conn.pending_requests()
    );
    let _ = writeln!(
        out,
        "stats: requests={} responses={} interim={} exchanges={} unanswered={}",
        st.requests, st.responses, st.interim_responses, st.exchanges, st.unanswered
    );
    let _ = writeln!(
        out,
        "stats: desync_bytes_skipped={} invalid={} oversized={} truncated_heads={} dropped_heads={}",
        st.desync_bytes_skipped, st.invalid_messages, st.oversized_heads, st.truncated_heads, st.dropped_heads
    );
    let _ = writeln!(
        out,
        "stats: orphan_responses={} lost_responses={} pending_overflow={} framing_lost={} upgraded={} bytes_after_upgrade={}",
        st.orphan_responses,
        st.lost_responses,
        st.pending_overflow,
        st.framing_lost,
        st.upgraded,
        st.bytes_after_upgrade
    );
    out
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/http1")
}

fn first_difference(expected: &str, actual: &str) -> String {
    let mut e = expected.lines();
    let mut a = actual.lines();
    let mut n = 1;
    loop {
        match (e.next(), a.next()) {
            (None, None) => return "identical".to_string(),
            (x, y) if x == y => n += 1,
            (x, y) => {
                return format!(
                    "line {n}:\n  expected: {}\n  actual:   {}",
                    x.unwrap_or("<end>"),
                    y.unwrap_or("<end>")
                )
            }
        }
    }
}

#[test]
fn golden_fixtures() {
    let dir = fixture_dir();
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "http"))
        .collect();
    scripts.sort();
    assert!(
        scripts.len() >= 25,
        "expected at least 25 fixtures, found {}",
        scripts.len()
    );
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    for script in &scripts {
        let text = std::fs::read_to_string(script).expect("read fixture");
        let events = match parse_script(&text) {
            Ok(ev) => ev,
            Err(e) => {
                failures.push(format!("{}: {e}", script.display()));
                continue;
            }
        };
        let actual = run_script(&events);
        let expected_path = script.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &actual).expect("write expected");
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!(
                "{} differs at {}\n--- actual output ---\n{actual}",
                script.display(),
                first_difference(&expected, &actual)
            )),
            Err(_) => failures.push(format!(
                "{}: missing; run with UPDATE_GOLDEN=1\n--- actual output ---\n{actual}",
                expected_path.display()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn script_format_escapes() {
    let ev =
        parse_script("> a\\r\\n\\x41\\s\\\\\n+ b\n.fill 3 z\n~1_000\n@7,9\n.repeat 1\n!close\n")
            .expect("valid script");
    assert_eq!(ev.len(), 3);
    match &ev[1] {
        Event::Segment {
            dir,
            data,
            uncaptured,
            ts,
        } => {
            assert_eq!(*dir, Dir::Request);
            assert_eq!(data.as_slice(), b"a\r\nA \\bzzz");
            assert_eq!(*uncaptured, 1000);
            assert_eq!(*ts, Some((7, 9)));
        }
        Event::Close => panic!("segment expected"),
    }
    assert!(parse_script("~5\n").is_err());
    assert!(parse_script("> \\q\n").is_err());
    assert!(parse_script("what\n").is_err());
}

// ---------------------------------------------------------------------------
// Randomised robustness
// ---------------------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug, Clone)]
struct Expect {
    target: String,
    status: u16,
    req_body: u64,
    resp_body: u64,
}

/// A random valid request/response pair: wire bytes plus what the pairing
/// must report for it.
fn random_exchange(rng: &mut XorShift, n: usize) -> (Vec<u8>, Vec<u8>, Expect) {
    let methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"];
    let method = methods[rng.below(methods.len() as u64) as usize];
    let target = format!("/r/{n}?q={}", rng.below(1000));
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: h{n}\r\n").into_bytes();
    if rng.chance(30) {
        req.extend_from_slice(
            b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n",
        );
    }
    let req_body_len = if matches!(method, "POST" | "PUT" | "PATCH") {
        rng.below(300)
    } else {
        0
    };
    if req_body_len > 0 {
        if rng.chance(50) {
            req.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            append_chunked(rng, &mut req, req_body_len);
        } else {
            req.extend_from_slice(format!("Content-Length: {req_body_len}\r\n\r\n").as_bytes());
            req.extend(std::iter::repeat_n(b'q', req_body_len as usize));
        }
    } else {
        req.extend_from_slice(b"\r\n");
    }
    let statuses = [200u16, 201, 204, 301, 304, 404, 500];
    let status = statuses[rng.below(statuses.len() as u64) as usize];
    let mut resp = Vec::new();
    if rng.chance(10) {
        resp.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    resp.extend_from_slice(format!("HTTP/1.1 {status} Something\r\nServer: s\r\n").as_bytes());
    let bodyless = method == "HEAD" || status == 204 || status == 304;
    let body_len = rng.below(5000);
    let resp_body = if bodyless {
        resp.extend_from_slice(format!("Content-Length: {body_len}\r\n\r\n").as_bytes());
        0
    } else if rng.chance(40) {
        resp.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        append_chunked(rng, &mut resp, body_len);
        body_len
    } else {
        resp.extend_from_slice(format!("Content-Length: {body_len}\r\n\r\n").as_bytes());
        resp.extend(std::iter::repeat_n(b'b', body_len as usize));
        body_len
    };
    (
        req,
        resp,
        Expect {
            target,
            status,
            req_body: req_body_len,
            resp_body,
        },
    )
}

fn append_chunked(rng: &mut XorShift, out: &mut Vec<u8>, mut len: u64) {
    while len > 0 {
        let c = (1 + rng.below(len)).min(len);
        if rng.chance(20) {
            out.extend_from_slice(format!("{c:X};name=value\r\n").as_bytes());
        } else {
            out.extend_from_slice(format!("{c:x}\r\n").as_bytes());
        }
        out.extend(std::iter::repeat_n(b'c', c as usize));
        out.extend_from_slice(b"\r\n");
        len -= c;
    }
    if rng.chance(20) {
        out.extend_from_slice(b"0\r\nX-Checksum: 1\r\n\r\n");
    } else {
        out.extend_from_slice(b"0\r\n\r\n");
    }
}

/// Splits `bytes` into random segments; with `capture` set, each segment
/// keeps at most that many captured bytes and reports the rest as
/// uncaptured.
fn split(rng: &mut XorShift, bytes: &[u8], capture: Option<usize>) -> Vec<(Vec<u8>, u64)> {
    let mut segs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let max = if rng.chance(20) { 4 } else { 2048 };
        let n = (1 + rng.below(max) as usize).min(bytes.len() - i);
        let part = &bytes[i..i + n];
        match capture {
            Some(c) if part.len() > c => segs.push((part[..c].to_vec(), (part.len() - c) as u64)),
            _ => segs.push((part.to_vec(), 0)),
        }
        i += n;
    }
    segs
}

fn memory_bound() -> usize {
    // Two head buffers plus pending request heads (each bounded by a head).
    2 * MAX_HEAD_LEN + 8192 + MAX_PENDING * 1024
}

#[test]
fn random_traffic_never_panics_and_stays_consistent() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut clean_checked = 0usize;
    for iteration in 0..10_000u32 {
        let mode = iteration % 4;
        let count = 1 + rng.below(5) as usize;
        let mut exchanges = Vec::new();
        for n in 0..count {
            exchanges.push(random_exchange(&mut rng, n));
        }
        let mut conn = Http1Conn::new();
        let mut out = Vec::new();
        let mut ts = 0u64;
        let capture = match mode {
            1 => Some(1 + rng.below(300) as usize),
            _ => None,
        };
        let pipelined = rng.chance(30);
        let mut feed = |conn: &mut Http1Conn,
                        out: &mut Vec<Exchange>,
                        rng: &mut XorShift,
                        bytes: &[u8],
                        request: bool| {
            let mut bytes = bytes.to_vec();
            if mode == 2 {
                // Garbage: random byte flips, cuts and insertions.
                for _ in 0..1 + rng.below(4) {
                    if bytes.is_empty() {
                        break;
                    }
                    let at = rng.below(bytes.len() as u64) as usize;
                    match rng.below(3) {
                        0 => bytes[at] = rng.next() as u8,
                        1 => bytes.truncate(at),
                        _ => {
                            let junk: Vec<u8> =
                                (0..rng.below(20)).map(|_| rng.next() as u8).collect();
                            bytes.splice(at..at, junk);
                        }
                    }
                }
            }
            if mode == 3 && rng.chance(30) {
                // Truncation: drop a random tail of the message.
                let keep = rng.below(bytes.len() as u64 + 1) as usize;
                bytes.truncate(keep);
            }
            for (data, gap) in split(rng, &bytes, capture) {
                ts += 1000;
                let seg = Segment {
                    data: &data,
                    uncaptured: gap,
                    ts_enter: ts,
                    ts_exit: ts + 500,
                };
                if request {
                    conn.on_request_segment(seg, out);
                } else {
                    conn.on_response_segment(seg, out);
                }
                assert!(
                    conn.buffered_bytes() <= memory_bound(),
                    "iteration {iteration}: {} bytes buffered",
                    conn.buffered_bytes()
                );
            }
        };
        if pipelined {
            for (req, _, _) in &exchanges {
                feed(&mut conn, &mut out, &mut rng, req, true);
            }
            for (_, resp, _) in &exchanges {
                feed(&mut conn, &mut out, &mut rng, resp, false);
            }
        } else {
            for (req, resp, _) in &exchanges {
                feed(&mut conn, &mut out, &mut rng, req, true);
                feed(&mut conn, &mut out, &mut rng, resp, false);
            }
        }
        conn.on_close(ts + 1000, &mut out);
        assert!(
            out.len() <= count,
            "iteration {iteration}: more exchanges than requests"
        );
        assert_eq!(conn.pending_requests(), 0);
        for e in &out {
            if e.response.is_some() {
                assert!(
                    e.resp_last_exit >= e.resp_first_enter,
                    "iteration {iteration}"
                );
            }
            assert!(e.req_last_exit >= e.req_first_exit, "iteration {iteration}");
        }
        if mode == 0 {
            // Clean traffic, arbitrary splits: exact results.
            let got: Vec<(String, Option<u16>, u64, u64)> = out
                .iter()
                .map(|e| {
                    (
                        e.request.target.clone(),
                        e.response.as_ref().map(|r| r.status),
                        e.request_body_size,
                        e.response_body_size,
                    )
                })
                .collect();
            let want: Vec<(String, Option<u16>, u64, u64)> = exchanges
                .iter()
                .map(|(_, _, x)| (x.target.clone(), Some(x.status), x.req_body, x.resp_body))
                .collect();
            assert_eq!(got, want, "iteration {iteration}");
            assert_eq!(
                conn.stats().desync_bytes_skipped,
                0,
                "iteration {iteration}"
            );
            clean_checked += 1;
        }
    }
    assert_eq!(clean_checked, 2500);
}

#[test]
fn random_prefixes_of_valid_heads() {
    let mut rng = XorShift(0x0123_4567_89ab_cdef);
    for _ in 0..2000 {
        let (req, resp, _) = random_exchange(&mut rng, 0);
        let cut = rng.below(req.len() as u64 + 1) as usize;
        match parse_request(&req[..cut]) {
            Parse::Complete(h) => assert!(h.header_len <= cut),
            Parse::Incomplete => {}
            Parse::Invalid => panic!("prefix of a valid request reported invalid"),
        }
        let cut = rng.below(resp.len() as u64 + 1) as usize;
        match parse_response(&resp[..cut], "GET") {
            Parse::Complete(h) => assert!(h.header_len <= cut),
            Parse::Incomplete => {}
            Parse::Invalid => panic!("prefix of a valid response reported invalid"),
        }
    }
}
