//! Golden tests for the Redis (RESP2/RESP3) parser, plus randomised
//! robustness.
//!
//! Each `tests/fixtures/redis/NAME.resp` script is replayed through a
//! `RedisConn`; the exchanges are rendered as text and compared with
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
//! DATA starts after the single space following the marker. Escapes: `\r`,
//! `\n`, `\t`, `\0`, `\s` (space), `\\` and `\xNN`. Event i (1-based, counting
//! segments and closes) gets enter = 1000 * i and exit = 1000 * i + 500
//! unless `@` says otherwise; a close happens at 1000 * i.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tracer_agent::protocol::db::DbExchange;
use tracer_agent::protocol::redis::{looks_like_client_start, looks_like_server_start, RedisConn};
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
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let esc = *bytes
            .get(i)
            .ok_or_else(|| format!("line {line_no}: dangling backslash"))?;
        i += 1;
        let v = match esc {
            b'r' => b'\r',
            b'n' => b'\n',
            b't' => b'\t',
            b'0' => 0,
            b's' => b' ',
            b'\\' => b'\\',
            b'x' => {
                let hex = s
                    .get(i..i + 2)
                    .ok_or_else(|| format!("line {line_no}: short \\x escape"))?;
                i += 2;
                u8::from_str_radix(hex, 16)
                    .map_err(|_| format!("line {line_no}: bad \\x escape {hex:?}"))?
            }
            other => {
                return Err(format!(
                    "line {line_no}: unknown escape \\{}",
                    other as char
                ))
            }
        };
        out.push(v);
    }
    Ok(out)
}

fn number(s: &str, line_no: usize) -> Result<u64, String> {
    s.trim()
        .replace('_', "")
        .parse::<u64>()
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
            let rest = line.get(marker_len..).unwrap_or("");
            unescape(rest.strip_prefix(' ').unwrap_or(rest), line_no)
        };
        if line.starts_with('>') || line.starts_with('<') {
            let dir = if line.starts_with('>') {
                Dir::Client
            } else {
                Dir::Server
            };
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
    let _ = writeln!(
        out,
        "exchange {n} (emitted at event {at}): system={} namespace={} operation={} rows={}{}",
        e.system.as_str(),
        e.namespace
            .as_deref()
            .map_or_else(|| "-".to_string(), |s| format!("{s:?}")),
        e.operation
            .as_deref()
            .map_or_else(|| "-".to_string(), |s| format!("{s:?}")),
        e.rows.map_or_else(|| "-".to_string(), |r| r.to_string()),
        if e.no_response { " no_response" } else { "" }
    );
    match &e.query_text {
        Some(q) => {
            let _ = writeln!(out, "  query: {q:?}");
        }
        None => out.push_str("  query: -\n"),
    }
    if let Some(err) = &e.error {
        let _ = writeln!(
            out,
            "  error: code={:?} message={:?}",
            err.code, err.message
        );
    }
    let _ = writeln!(
        out,
        "  times: req={}..{} resp={}..{}",
        e.req_first_enter, e.req_last_exit, e.resp_first_enter, e.resp_last_exit
    );
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

/// Replays every `*.EXT` script in `dir` through `run`, comparing with the
/// `.expected` files (or writing them with `UPDATE_GOLDEN=1`).
fn check_fixtures(dir: &Path, ext: &str, min: usize, run: impl Fn(&[Event]) -> String) {
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    scripts.sort();
    assert!(
        scripts.len() >= min,
        "expected at least {min} fixtures, found {}",
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
        let actual = run(&events);
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

/// Splits `bytes` into random segments; with `capture` set, each segment
/// keeps at most that many captured bytes and reports the rest as uncaptured.
fn split(rng: &mut XorShift, bytes: &[u8], capture: Option<usize>) -> Vec<(Vec<u8>, u64)> {
    let mut segs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let max = if rng.chance(20) { 4 } else { 4096 };
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

/// Random byte flips, cuts and insertions.
fn mangle(rng: &mut XorShift, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.below(bytes.len() as u64) as usize;
        match rng.below(3) {
            0 => bytes[at] = rng.next() as u8,
            1 => bytes.truncate(at),
            _ => {
                let junk: Vec<u8> = (0..rng.below(20)).map(|_| rng.next() as u8).collect();
                bytes.splice(at..at, junk);
            }
        }
    }
}

fn run_script(events: &[Event]) -> String {
    let mut conn = RedisConn::new();
    let mut out = String::new();
    let mut emitted: Vec<DbExchange> = Vec::new();
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
        "state: namespace={:?} resp3={} pubsub={} pending={}",
        conn.namespace(),
        conn.is_resp3(),
        conn.in_pubsub(),
        conn.pending_commands()
    );
    let _ = writeln!(
        out,
        "stats: commands={} replies={} exchanges={} unanswered={} pushes={} orphan_replies={}",
        st.commands, st.replies, st.exchanges, st.unanswered, st.pushes, st.orphan_replies
    );
    let _ = writeln!(
        out,
        "stats: client_desync_bytes={} server_desync_bytes={} framing_lost={} replies_cut={} invalid={} pending_overflow={} no_reply_commands={}",
        st.client_desync_bytes,
        st.server_desync_bytes,
        st.framing_lost,
        st.replies_cut,
        st.invalid,
        st.pending_overflow,
        st.no_reply_commands
    );
    out
}

#[test]
fn golden_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/redis");
    check_fixtures(&dir, "resp", 12, run_script);
}

#[test]
fn script_format_escapes() {
    let ev =
        parse_script("< a\\r\\n\\x41\\s\\\\\n+ b\n.fill 3 z\n~1_000\n@7,9\n.repeat 1\n!close\n")
            .expect("valid script");
    assert_eq!(ev.len(), 3);
    match &ev[1] {
        Event::Segment {
            dir,
            data,
            uncaptured,
            ts,
        } => {
            assert_eq!(*dir, Dir::Server);
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

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn bulk(out: &mut Vec<u8>, len: usize, fill: u8) {
    out.extend_from_slice(format!("${len}\r\n").as_bytes());
    out.extend(std::iter::repeat_n(fill, len));
    out.extend_from_slice(b"\r\n");
}

/// A random reply: bytes, error code (if an error), aggregate length.
fn random_reply(rng: &mut XorShift, depth: u32) -> (Vec<u8>, Option<String>, Option<u64>) {
    let mut out = Vec::new();
    let kinds = if depth > 2 { 5 } else { 8 };
    match rng.below(kinds) {
        0 => out.extend_from_slice(b"+OK\r\n"),
        1 => out.extend_from_slice(format!(":{}\r\n", rng.below(1_000_000)).as_bytes()),
        2 => {
            let len = if rng.chance(10) {
                1000 + rng.below(20_000)
            } else {
                rng.below(40)
            };
            bulk(&mut out, len as usize, b'v');
        }
        3 => out.extend_from_slice(b"$-1\r\n"),
        4 => {
            if depth == 0 {
                let code = if rng.chance(50) { "ERR" } else { "WRONGTYPE" };
                out.extend_from_slice(format!("-{code} something went wrong\r\n").as_bytes());
                return (out, Some(code.to_string()), None);
            }
            out.extend_from_slice(b"_\r\n");
        }
        5 | 6 => {
            let n = rng.below(6);
            out.extend_from_slice(format!("*{n}\r\n").as_bytes());
            for _ in 0..n {
                out.extend(random_reply(rng, depth + 1).0);
            }
            return (out, None, Some(n));
        }
        _ => {
            let n = rng.below(4);
            out.extend_from_slice(format!("%{n}\r\n").as_bytes());
            for i in 0..n {
                bulk(&mut out, 2, b'0' + i as u8);
                out.extend(random_reply(rng, depth + 1).0);
            }
            return (out, None, Some(n));
        }
    }
    (out, None, None)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    op: String,
    error: Option<String>,
    rows: Option<u64>,
}

fn memory_bound() -> usize {
    2 * (64 * 1024 + 16 * 1024) + 256 * 2048
}

#[test]
fn random_traffic_never_panics_and_stays_consistent() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut clean_checked = 0usize;
    let names: [&[u8]; 6] = [b"GET", b"SET", b"HGETALL", b"MGET", b"LRANGE", b"EVAL"];
    for iteration in 0..10_000u32 {
        let mode = iteration % 4;
        let count = 1 + rng.below(20) as usize;
        let mut steps = Vec::new();
        let mut want = Vec::new();
        for i in 0..count {
            let name = names[rng.below(names.len() as u64) as usize];
            let key = format!("key:{i}");
            let big = vec![b'p'; if rng.chance(10) { 5000 } else { 3 }];
            let req = command(&[name, key.as_bytes(), &big]);
            let (resp, error, rows) = random_reply(&mut rng, 0);
            // A push between replies (RESP3 connections only) is skipped.
            steps.push((req, resp));
            want.push(Want {
                op: String::from_utf8_lossy(name).into_owned(),
                error,
                rows,
            });
        }
        let mut conn = RedisConn::new();
        let mut out = Vec::new();
        let mut ts = 0u64;
        let capture = if mode == 1 {
            Some(1 + rng.below(600) as usize)
        } else {
            None
        };
        let pipelined = rng.chance(40);
        let mut feed = |conn: &mut RedisConn,
                        out: &mut Vec<DbExchange>,
                        rng: &mut XorShift,
                        bytes: &[u8],
                        client: bool| {
            let mut bytes = bytes.to_vec();
            if mode == 2 {
                mangle(rng, &mut bytes);
            }
            if mode == 3 && rng.chance(30) {
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
        if pipelined {
            let all_req: Vec<u8> = steps.iter().flat_map(|s| s.0.clone()).collect();
            let all_resp: Vec<u8> = steps.iter().flat_map(|s| s.1.clone()).collect();
            feed(&mut conn, &mut out, &mut rng, &all_req, true);
            feed(&mut conn, &mut out, &mut rng, &all_resp, false);
        } else {
            for (req, resp) in &steps {
                feed(&mut conn, &mut out, &mut rng, req, true);
                feed(&mut conn, &mut out, &mut rng, resp, false);
            }
        }
        conn.on_close(ts + 1000, &mut out);
        assert_eq!(conn.pending_commands(), 0);
        assert!(
            out.len() <= count + 8,
            "iteration {iteration}: {} exchanges",
            out.len()
        );
        for e in &out {
            assert!(
                e.req_last_exit >= e.req_first_enter,
                "iteration {iteration}"
            );
            if !e.no_response {
                assert!(
                    e.resp_last_exit >= e.resp_first_enter,
                    "iteration {iteration}"
                );
            }
            assert!(e.query_text.as_ref().is_some_and(|q| q.len() <= 1024));
        }
        if mode == 0 {
            let got: Vec<Want> = out
                .iter()
                .map(|e| Want {
                    op: e.operation.clone().unwrap_or_default(),
                    error: e.error.as_ref().map(|x| x.code.clone()),
                    rows: e.rows,
                })
                .collect();
            assert_eq!(got, want, "iteration {iteration}");
            assert!(out.iter().all(|e| !e.no_response), "iteration {iteration}");
            assert_eq!(conn.stats().server_desync_bytes, 0, "iteration {iteration}");
            clean_checked += 1;
        }
    }
    assert_eq!(clean_checked, 2500);
}

#[test]
fn detection_on_random_bytes_never_panics() {
    let mut rng = XorShift(0x0123_4567_89ab_cdef);
    for _ in 0..10_000 {
        let len = rng.below(100) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.chance(50) && !buf.is_empty() {
            buf[0] = b"*$+-:_,#!=(%~>|"[rng.below(15) as usize];
        }
        let _ = looks_like_client_start(&buf);
        let _ = looks_like_server_start(&buf);
    }
}
