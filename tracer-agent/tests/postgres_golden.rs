//! Golden tests for PostgreSQL query/reply pairing, plus a randomised
//! robustness test.
//!
//! Each `tests/fixtures/postgres/NAME.pg` script is replayed through a
//! `PgConn`; the resulting exchanges are rendered as text (with the SQL
//! helpers' view of each query) and compared with `NAME.expected`. Run with
//! `UPDATE_GOLDEN=1` to (re)write the expected files.
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
//!
//! Most fixtures were recorded from a PostgreSQL 15 server through a TCP
//! relay that wrote each `recv` as one segment, cut to 2048 captured bytes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tracer_agent::protocol::db::DbExchange;
use tracer_agent::protocol::postgres::{
    PgConn, MAX_KEPT, MAX_PENDING, MAX_PENDING_TEXT, MAX_STATEMENTS, MAX_STATEMENT_BYTES,
};
use tracer_agent::protocol::sql::{operation_and_collection, sanitize, span_name};
use tracer_agent::protocol::Segment;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Client,
    Server,
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
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.bytes().enumerate();
    while let Some((i, b)) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some((_, e)) = it.next() else {
            return Err(format!("line {line_no}: dangling backslash"));
        };
        match e {
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'0' => out.push(0),
            b's' => out.push(b' '),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = s
                    .get(i + 2..i + 4)
                    .ok_or_else(|| format!("line {line_no}: short \\x escape"))?;
                let v = u8::from_str_radix(hex, 16)
                    .map_err(|_| format!("line {line_no}: bad \\x escape {hex:?}"))?;
                out.push(v);
                it.next();
                it.next();
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
        .parse()
        .map_err(|_| format!("line {line_no}: bad number {s:?}"))
}

fn last_segment(events: &mut [Event], line_no: usize) -> Result<&mut Event, String> {
    match events.last_mut() {
        Some(ev @ Event::Segment { .. }) => Ok(ev),
        _ => Err(format!("line {line_no}: no previous segment")),
    }
}

fn parse_script(text: &str) -> Result<Vec<Event>, String> {
    let mut events: Vec<Event> = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let payload = |marker_len: usize| -> Result<Vec<u8>, String> {
            let rest = &line[marker_len..];
            unescape(rest.strip_prefix(' ').unwrap_or(rest), line_no)
        };
        if let Some(dir) = match line.as_bytes()[0] {
            b'>' => Some(Dir::Client),
            b'<' => Some(Dir::Server),
            _ => None,
        } {
            events.push(Event::Segment {
                dir,
                data: payload(1)?,
                uncaptured: 0,
                ts: None,
            });
        } else if line.starts_with('+') {
            let add = payload(1)?;
            if let Event::Segment { data, .. } = last_segment(&mut events, line_no)? {
                data.extend_from_slice(&add);
            }
        } else if let Some(rest) = line.strip_prefix(".fill") {
            let mut parts = rest.split_whitespace();
            let n = number(parts.next().unwrap_or(""), line_no)?;
            let fill = match parts.next() {
                Some(c) => match unescape(c, line_no)?.as_slice() {
                    [b] => *b,
                    _ => return Err(format!("line {line_no}: fill byte must be one byte")),
                },
                None => b'x',
            };
            if let Event::Segment { data, .. } = last_segment(&mut events, line_no)? {
                data.extend(std::iter::repeat_n(fill, n as usize));
            }
        } else if let Some(rest) = line.strip_prefix(".repeat") {
            let k = number(rest, line_no)?;
            let ev = last_segment(&mut events, line_no)?.clone();
            for _ in 0..k {
                events.push(ev.clone());
            }
        } else if let Some(rest) = line.strip_prefix('~') {
            let n = number(rest, line_no)?;
            if let Event::Segment { uncaptured, .. } = last_segment(&mut events, line_no)? {
                *uncaptured = uncaptured.saturating_add(n);
            }
        } else if let Some(rest) = line.strip_prefix('@') {
            let (a, b) = rest
                .split_once(',')
                .ok_or_else(|| format!("line {line_no}: expected @ENTER,EXIT"))?;
            let pair = (number(a, line_no)?, number(b, line_no)?);
            if let Event::Segment { ts, .. } = last_segment(&mut events, line_no)? {
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

fn render_exchange(out: &mut String, n: usize, at: usize, e: &DbExchange) {
    let text = e
        .query_text
        .as_deref()
        .map_or_else(|| "(unknown statement)".to_string(), |t| format!("{t:?}"));
    let _ = writeln!(out, "exchange {n} (emitted at event {at}): {text}");
    let _ = writeln!(
        out,
        "  system={} namespace={} rows={} no_response={}",
        e.system.as_str(),
        e.namespace.as_deref().unwrap_or("-"),
        e.rows.map_or_else(|| "-".to_string(), |r| r.to_string()),
        e.no_response
    );
    if let Some(err) = &e.error {
        let _ = writeln!(out, "  error: {} {:?}", err.code, err.message);
    }
    let _ = writeln!(
        out,
        "  times: req={}..{} resp={}..{}",
        e.req_first_enter, e.req_last_exit, e.resp_first_enter, e.resp_last_exit
    );
    if let Some(t) = &e.query_text {
        let (op, coll) = operation_and_collection(t);
        let _ = writeln!(out, "  sanitized: {:?}", sanitize(t));
        let _ = writeln!(
            out,
            "  span: {:?} (operation={} collection={})",
            span_name(
                op.as_deref(),
                coll.as_deref(),
                e.namespace.as_deref(),
                e.system.as_str()
            ),
            op.as_deref().unwrap_or("-"),
            coll.as_deref().unwrap_or("-")
        );
    }
}

fn run_script(events: &[Event]) -> String {
    let mut conn = PgConn::new();
    let mut out = String::new();
    let mut emitted = Vec::new();
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
                    Dir::Client => conn.on_client_segment(seg, &mut emitted),
                    Dir::Server => conn.on_server_segment(seg, &mut emitted),
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
        "state: encrypted={} pending={} user={} database={}",
        conn.is_encrypted(),
        conn.pending_operations(),
        conn.user().unwrap_or("-"),
        conn.database().unwrap_or("-")
    );
    let _ = writeln!(
        out,
        "stats: messages={} queries={} executes={} exchanges={} unanswered={}",
        st.messages, st.queries, st.executes, st.exchanges, st.unanswered
    );
    let _ = writeln!(
        out,
        "stats: desync_bytes_skipped={} sync_lost={} resyncs={} invalid_headers={} orphan_replies={} lost_responses={}",
        st.desync_bytes_skipped, st.sync_lost, st.resyncs, st.invalid_headers, st.orphan_replies, st.lost_responses
    );
    let _ = writeln!(
        out,
        "stats: aborted_executes={} errors_without_exchange={} pending_overflow={} statements_evicted={} unknown_statements={}",
        st.aborted_executes, st.errors_without_exchange, st.pending_overflow, st.statements_evicted, st.unknown_statements
    );
    let _ = writeln!(
        out,
        "stats: startups={} encryption_requests={} startup_errors={} bytes_ignored={}",
        st.startups, st.encryption_requests, st.startup_errors, st.bytes_ignored
    );
    out
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/postgres")
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
        .filter(|p| p.extension().is_some_and(|x| x == "pg"))
        .collect();
    scripts.sort();
    assert!(
        scripts.len() >= 15,
        "expected at least 15 fixtures, found {}",
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
        parse_script("> a\\r\\n\\x41\\s\\\\\\0\n+ b\n.fill 3 z\n~1_000\n@7,9\n.repeat 1\n!close\n")
            .expect("valid script");
    assert_eq!(ev.len(), 3);
    match &ev[1] {
        Event::Segment {
            dir,
            data,
            uncaptured,
            ts,
        } => {
            assert_eq!(*dir, Dir::Client);
            assert_eq!(data.as_slice(), b"a\r\nA \\\0bzzz");
            assert_eq!(*uncaptured, 1000);
            assert_eq!(*ts, Some((7, 9)));
        }
        Event::Close => panic!("segment expected"),
    }
    assert!(parse_script("~5\n").is_err());
    assert!(parse_script("> \\q\n").is_err());
    assert!(parse_script("> \\x4\n").is_err());
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

fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstrs(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

fn startup() -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend(cstrs(&["user", "app", "database", "shop"]));
    body.push(0);
    let mut v = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    v.extend(body);
    v
}

fn data_row(rng: &mut XorShift) -> Vec<u8> {
    let n = rng.below(40) as usize;
    let mut b = vec![0, 1];
    b.extend_from_slice(&(n as u32).to_be_bytes());
    b.extend(std::iter::repeat_n(b'v', n));
    msg(b'D', &b)
}

fn error_msg(code: &str) -> Vec<u8> {
    let mut b = b"SERROR\0".to_vec();
    b.push(b'C');
    b.extend(cstrs(&[code]));
    b.push(b'M');
    b.extend(cstrs(&["failed"]));
    b.push(0);
    msg(b'E', &b)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    text: String,
    rows: Option<u64>,
    error: Option<String>,
}

/// One random request with its reply: client bytes, server bytes, and the
/// exchange it must produce (None for a prepare-only batch).
fn random_request(rng: &mut XorShift, n: usize) -> (Vec<u8>, Vec<u8>, Option<Want>) {
    let text = format!("SELECT c{n} FROM t WHERE id = {}", rng.below(1000));
    let rows = rng.below(6);
    let fails = rng.chance(15);
    let mut client = Vec::new();
    let mut server = Vec::new();
    match rng.below(3) {
        0 => {
            client.extend(msg(b'Q', &cstrs(&[&text])));
            if fails {
                server.extend(error_msg("42P01"));
            } else {
                server.extend(msg(b'T', &[0, 0]));
                for _ in 0..rows {
                    server.extend(data_row(rng));
                }
                server.extend(msg(b'C', &cstrs(&[&format!("SELECT {rows}")])));
            }
            server.extend(msg(b'Z', b"I"));
        }
        1 => {
            let name = if rng.chance(50) {
                format!("s{n}")
            } else {
                String::new()
            };
            let mut p = cstrs(&[&name, &text]);
            p.extend_from_slice(&[0, 0]);
            client.extend(msg(b'P', &p));
            let mut b = cstrs(&["", &name]);
            b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            client.extend(msg(b'B', &b));
            client.extend(msg(b'D', b"P\0"));
            let mut e = cstrs(&[""]);
            e.extend_from_slice(&[0, 0, 0, 0]);
            client.extend(msg(b'E', &e));
            client.extend(msg(b'S', b""));
            if fails {
                server.extend(error_msg("42601"));
            } else {
                server.extend(msg(b'1', b""));
                server.extend(msg(b'2', b""));
                server.extend(msg(b'T', &[0, 0]));
                for _ in 0..rows {
                    server.extend(data_row(rng));
                }
                server.extend(msg(b'C', &cstrs(&[&format!("SELECT {rows}")])));
            }
            server.extend(msg(b'Z', b"I"));
        }
        _ => {
            // Prepare only: no exchange.
            let mut p = cstrs(&[&format!("p{n}"), &text]);
            p.extend_from_slice(&[0, 0]);
            client.extend(msg(b'P', &p));
            client.extend(msg(b'S', b""));
            server.extend(msg(b'1', b""));
            server.extend(msg(b'Z', b"I"));
            return (client, server, None);
        }
    }
    let want = Want {
        text,
        rows: (!fails).then_some(rows),
        error: fails.then(|| if client[0] == b'Q' { "42P01" } else { "42601" }.to_string()),
    };
    (client, server, Some(want))
}

fn split(rng: &mut XorShift, bytes: &[u8], capture: Option<usize>) -> Vec<(Vec<u8>, u64)> {
    let mut segs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let max = if rng.chance(20) { 4 } else { 512 };
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
    2 * MAX_KEPT
        + 2 * MAX_STATEMENT_BYTES
        + MAX_STATEMENTS * 128
        + MAX_PENDING_TEXT
        + MAX_PENDING * 256
}

#[test]
fn random_traffic_never_panics_and_stays_bounded() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut clean_checked = 0usize;
    for iteration in 0..10_000u32 {
        let mode = iteration % 4;
        let count = 1 + rng.below(6) as usize;
        let reqs: Vec<_> = (0..count).map(|n| random_request(&mut rng, n)).collect();
        let mut conn = PgConn::new();
        let mut out = Vec::new();
        let mut ts = 0u64;
        let capture = (mode == 1).then(|| 1 + rng.below(64) as usize);
        let pipelined = rng.chance(30);
        let mut feed = |conn: &mut PgConn,
                        out: &mut Vec<DbExchange>,
                        rng: &mut XorShift,
                        bytes: &[u8],
                        client: bool,
                        mangle: bool| {
            let mut bytes = bytes.to_vec();
            if mangle && mode == 2 {
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
            if mangle && mode == 3 && rng.chance(30) {
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
                if client {
                    conn.on_client_segment(seg, out);
                } else {
                    conn.on_server_segment(seg, out);
                }
                assert!(
                    conn.buffered_bytes() <= memory_bound(),
                    "iteration {iteration}: {} bytes buffered",
                    conn.buffered_bytes()
                );
            }
        };
        // Clients write the startup packet in one piece.
        let auth = [msg(b'R', &[0, 0, 0, 0]), msg(b'Z', b"I")].concat();
        conn.on_client_segment(Segment::new(&startup(), 1, 2), &mut out);
        feed(&mut conn, &mut out, &mut rng, &auth, false, false);
        if pipelined {
            for (c, _, _) in &reqs {
                feed(&mut conn, &mut out, &mut rng, c, true, true);
            }
            for (_, s, _) in &reqs {
                feed(&mut conn, &mut out, &mut rng, s, false, true);
            }
        } else {
            for (c, s, _) in &reqs {
                feed(&mut conn, &mut out, &mut rng, c, true, true);
                feed(&mut conn, &mut out, &mut rng, s, false, true);
            }
        }
        conn.on_close(ts + 1000, &mut out);
        assert_eq!(conn.pending_operations(), 0, "iteration {iteration}");
        for e in &out {
            if !e.no_response {
                assert!(
                    e.resp_last_exit >= e.resp_first_enter,
                    "iteration {iteration}"
                );
            }
            assert!(
                e.req_last_exit >= e.req_first_enter,
                "iteration {iteration}"
            );
        }
        if mode == 0 {
            let got: Vec<Want> = out
                .iter()
                .map(|e| Want {
                    text: e.query_text.clone().unwrap_or_default(),
                    rows: e.rows,
                    error: e.error.as_ref().map(|x| x.code.clone()),
                })
                .collect();
            let want: Vec<Want> = reqs.iter().filter_map(|(_, _, w)| w.clone()).collect();
            assert_eq!(got, want, "iteration {iteration}");
            assert!(out
                .iter()
                .all(|e| !e.no_response && e.namespace.as_deref() == Some("shop")));
            let st = conn.stats();
            assert_eq!(st.desync_bytes_skipped, 0, "iteration {iteration}: {st:?}");
            assert_eq!(st.orphan_replies, 0, "iteration {iteration}");
            clean_checked += 1;
        }
    }
    assert_eq!(clean_checked, 2500);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = XorShift(0x0123_4567_89ab_cdef);
    for _ in 0..2000 {
        let mut conn = PgConn::new();
        let mut out = Vec::new();
        for k in 0..10u64 {
            let len = rng.below(100) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if rng.chance(30) && !data.is_empty() {
                // Plausible type bytes make the framer go further.
                data[0] = b"QPBESDCZTRN1"[rng.below(12) as usize];
            }
            let seg = Segment {
                data: &data,
                uncaptured: if rng.chance(10) {
                    rng.below(1 << 20)
                } else {
                    0
                },
                ts_enter: k * 10,
                ts_exit: k * 10 + 5,
            };
            if rng.chance(50) {
                conn.on_client_segment(seg, &mut out);
            } else {
                conn.on_server_segment(seg, &mut out);
            }
            assert!(conn.buffered_bytes() <= memory_bound());
        }
        conn.on_close(1000, &mut out);
    }
}
