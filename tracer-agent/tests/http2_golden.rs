//! Golden tests for HTTP/2 stream tracking, plus randomised robustness
//! tests.
//!
//! Each `tests/fixtures/http2/NAME.h2` script is replayed through an
//! `H2Conn`; the resulting exchanges are rendered as text and compared with
//! `NAME.expected`. Run with `UPDATE_GOLDEN=1` to (re)write the expected
//! files. Most scripts were recorded from real traffic (Python gRPC, curl,
//! nghttp and h2load against nginx) through `capture_proxy.py`, which logs
//! every recv() as one segment.
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
//! `\xNN`. `N` may use `_` separators. Event i (1-based, counting segments
//! and closes) gets enter = 1000 * i and exit = 1000 * i + 500 unless `@`
//! says otherwise; a close happens at 1000 * i.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tracer_agent::protocol::http2::{
    looks_like_client_start, looks_like_server_start, H2Conn, H2Exchange, MAX_HEADER_BLOCK,
    MAX_STREAMS,
};
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

fn last_segment(events: &[Event], line_no: usize) -> Result<usize, String> {
    match events.last() {
        Some(Event::Segment { .. }) => Ok(events.len() - 1),
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
        let data_of = |marker_len: usize| -> Result<Vec<u8>, String> {
            let rest = &line[marker_len..];
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            unescape(rest, line_no)
        };
        if line.starts_with('>') || line.starts_with('<') {
            let dir = if line.starts_with('>') {
                Dir::Client
            } else {
                Dir::Server
            };
            events.push(Event::Segment {
                dir,
                data: data_of(1)?,
                uncaptured: 0,
                ts: None,
            });
        } else if line.starts_with('+') {
            let add = data_of(1)?;
            let i = last_segment(&events, line_no)?;
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
            let i = last_segment(&events, line_no)?;
            if let Some(Event::Segment { data, .. }) = events.get_mut(i) {
                data.extend(std::iter::repeat_n(fill, n as usize));
            }
        } else if let Some(rest) = line.strip_prefix(".repeat") {
            let k = number(rest, line_no)?;
            let i = last_segment(&events, line_no)?;
            let ev = events[i].clone();
            for _ in 0..k {
                events.push(ev.clone());
            }
        } else if let Some(rest) = line.strip_prefix('~') {
            let n = number(rest, line_no)?;
            let i = last_segment(&events, line_no)?;
            if let Some(Event::Segment { uncaptured, .. }) = events.get_mut(i) {
                *uncaptured = uncaptured.saturating_add(n);
            }
        } else if let Some(rest) = line.strip_prefix('@') {
            let (a, b) = rest
                .split_once(',')
                .ok_or_else(|| format!("line {line_no}: expected @ENTER,EXIT"))?;
            let pair = (number(a, line_no)?, number(b, line_no)?);
            let i = last_segment(&events, line_no)?;
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

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), |x| x.to_string())
}

fn render_exchange(out: &mut String, n: usize, at: usize, e: &H2Exchange) {
    let _ = writeln!(
        out,
        "exchange {n} (emitted at event {at}): stream {} {} {} -> {}{}{}{}",
        e.stream_id,
        opt(&e.method),
        opt(&e.path),
        opt(&e.status),
        if e.ended { " ended" } else { " incomplete" },
        e.reset.map_or_else(String::new, |r| format!(" reset={r}")),
        if e.headers_incomplete {
            " headers_incomplete"
        } else {
            ""
        },
    );
    let fields = [
        ("authority", &e.authority),
        ("scheme", &e.scheme),
        ("content_type", &e.content_type),
        ("user_agent", &e.user_agent),
        ("traceparent", &e.traceparent),
        ("tracestate", &e.tracestate),
        ("b3", &e.b3),
        ("x_b3_trace_id", &e.x_b3_trace_id),
        ("x_b3_span_id", &e.x_b3_span_id),
        ("x_b3_sampled", &e.x_b3_sampled),
        ("grpc_message", &e.grpc_message),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            let _ = writeln!(out, "  {name}: {v:?}");
        }
    }
    if let Some(b) = &e.grpc_trace_bin {
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let _ = writeln!(out, "  grpc_trace_bin: {hex}");
    }
    if e.grpc_status.is_some() || e.request_messages > 0 || e.response_messages > 0 {
        let _ = writeln!(
            out,
            "  grpc: status={} messages={}/{} first_sizes={}/{}",
            opt(&e.grpc_status),
            e.request_messages,
            e.response_messages,
            opt(&e.first_request_message_size),
            opt(&e.first_response_message_size),
        );
    }
    let _ = writeln!(
        out,
        "  body sizes: request={} response={}",
        e.request_body_size, e.response_body_size
    );
    let _ = writeln!(
        out,
        "  times: req_first_enter={} req_last_exit={} resp_first_enter={} resp_last_exit={}",
        e.req_first_enter, e.req_last_exit, e.resp_first_enter, e.resp_last_exit
    );
}

fn replay(events: &[Event], conn: &mut H2Conn, mut each: impl FnMut(usize, Vec<H2Exchange>)) {
    for (i, ev) in events.iter().enumerate() {
        let idx = (i as u64 + 1) * 1000;
        let mut emitted = Vec::new();
        match ev {
            Event::Segment {
                dir,
                data,
                uncaptured,
                ts,
            } => {
                let (ts_enter, ts_exit) = ts.unwrap_or((idx, idx + 500));
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
            Event::Close => conn.on_close(idx, &mut emitted),
        }
        each(i, emitted);
    }
}

fn run_script(events: &[Event]) -> String {
    let mut conn = H2Conn::new();
    let mut out = String::new();
    let mut count = 0usize;
    let first_client = events.iter().find_map(|e| match e {
        Event::Segment {
            dir: Dir::Client,
            data,
            ..
        } => Some(data.clone()),
        _ => None,
    });
    let first_server = events.iter().find_map(|e| match e {
        Event::Segment {
            dir: Dir::Server,
            data,
            ..
        } => Some(data.clone()),
        _ => None,
    });
    let _ = writeln!(
        out,
        "looks_like: client={} server={}",
        first_client.is_some_and(|d| looks_like_client_start(&d)),
        first_server.is_some_and(|d| looks_like_server_start(&d)),
    );
    replay(events, &mut conn, |i, emitted| {
        for e in emitted {
            count += 1;
            render_exchange(&mut out, count, i + 1, &e);
        }
    });
    if count == 0 {
        out.push_str("no exchanges\n");
    }
    let st = conn.stats();
    let _ = writeln!(out, "state: open_streams={}", conn.open_streams());
    let _ = writeln!(
        out,
        "stats: prefaces={} frames={} data_frames={} header_blocks={} truncated_blocks={} oversized_blocks={} informational={}",
        st.prefaces, st.frames, st.data_frames, st.header_blocks, st.truncated_blocks, st.oversized_blocks, st.informational
    );
    let _ = writeln!(
        out,
        "stats: exchanges={} incomplete={} stream_overflow={} resets={} goaways={} orphan_frames={} protocol_errors={}",
        st.exchanges, st.incomplete_exchanges, st.stream_overflow, st.resets, st.goaways, st.orphan_frames, st.protocol_errors
    );
    let _ = writeln!(
        out,
        "stats: unknown_fields={} hpack_errors={} sync_lost={} resyncs={} desync_bytes_skipped={}",
        st.unknown_fields, st.hpack_errors, st.sync_lost, st.resyncs, st.desync_bytes_skipped
    );
    let (c, s) = conn.hpack_stats();
    for (name, h) in [("client", c), ("server", s)] {
        let _ = writeln!(
            out,
            "hpack {name}: blocks={} fields={} unknown={} broken={} errors={} table_resets={} size_updates={}",
            h.blocks, h.fields, h.unknown_fields, h.broken_blocks, h.errors, h.table_resets, h.size_updates
        );
    }
    out
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/http2")
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

fn scripts() -> Vec<PathBuf> {
    let dir = fixture_dir();
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "h2"))
        .collect();
    scripts.sort();
    scripts
}

#[test]
fn golden_fixtures() {
    let scripts = scripts();
    assert!(
        scripts.len() >= 12,
        "expected at least 12 fixtures, found {}",
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
            assert_eq!(*dir, Dir::Client);
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
// Randomised robustness over the recorded fixtures
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

/// What an exchange says, without timestamps (which depend on splitting).
fn summary(e: &H2Exchange) -> H2Exchange {
    H2Exchange {
        req_first_enter: 0,
        req_last_exit: 0,
        resp_first_enter: 0,
        resp_last_exit: 0,
        ..e.clone()
    }
}

fn fully_captured(events: &[Event]) -> bool {
    events.iter().all(|e| match e {
        Event::Segment { uncaptured, .. } => *uncaptured == 0,
        Event::Close => true,
    })
}

fn memory_bound() -> usize {
    // Two header block buffers plus frame buffers, two HPACK tables, and
    // the stream table.
    4 * MAX_HEADER_BLOCK + 2 * 160 * 1024 + MAX_STREAMS * 4096
}

/// Re-split every fully captured fixture at random points (same byte
/// streams, same direction order): the exchanges must be identical.
#[test]
fn random_resplits_give_identical_exchanges() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut checked = 0;
    for script in scripts() {
        let text = std::fs::read_to_string(&script).expect("read fixture");
        let events = parse_script(&text).expect("valid fixture");
        // Fixtures attached mid-stream depend on where segments start (that
        // is where framing may be regained): only complete recordings.
        let starts_with_preface = events.iter().any(|e| {
            matches!(e, Event::Segment { dir: Dir::Client, data, .. } if data.starts_with(b"PRI * HTTP/2.0"))
        });
        if !fully_captured(&events) || !starts_with_preface {
            continue;
        }
        let mut reference = Vec::new();
        replay(&events, &mut H2Conn::new(), |_, em| {
            reference.extend(em.iter().map(summary))
        });
        for round in 0..30 {
            let mut split = Vec::new();
            for ev in &events {
                match ev {
                    Event::Segment { dir, data, .. } => {
                        let mut i = 0;
                        while i < data.len() {
                            let max = if rng.chance(30) { 3 } else { 200 };
                            let n = (1 + rng.below(max) as usize).min(data.len() - i);
                            split.push(Event::Segment {
                                dir: *dir,
                                data: data[i..i + n].to_vec(),
                                uncaptured: 0,
                                ts: None,
                            });
                            i += n;
                        }
                    }
                    Event::Close => split.push(Event::Close),
                }
            }
            let mut got = Vec::new();
            replay(&split, &mut H2Conn::new(), |_, em| {
                got.extend(em.iter().map(summary))
            });
            assert_eq!(
                got,
                reference,
                "{} round {round}",
                script.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} fixtures re-split");
}

/// Random cuts, gaps, byte flips and garbage over the recorded fixtures:
/// never a panic, memory stays bounded, at most one exchange per stream.
#[test]
fn random_damage_never_panics_and_stays_bounded() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let all: Vec<Vec<Event>> = scripts()
        .iter()
        .map(|p| parse_script(&std::fs::read_to_string(p).expect("read")).expect("parse"))
        .collect();
    for iteration in 0..3000u32 {
        let events = &all[iteration as usize % all.len()];
        let mut damaged = Vec::new();
        for ev in events {
            match ev {
                Event::Segment {
                    dir,
                    data,
                    uncaptured,
                    ..
                } => {
                    let mut data = data.clone();
                    let mut gap = *uncaptured;
                    match rng.below(10) {
                        0 => {
                            if !data.is_empty() {
                                let at = rng.below(data.len() as u64) as usize;
                                data[at] = rng.next() as u8;
                            }
                        }
                        1 => {
                            let keep = rng.below(data.len() as u64 + 1) as usize;
                            gap += (data.len() - keep) as u64;
                            data.truncate(keep);
                        }
                        2 => {
                            let junk: Vec<u8> =
                                (0..rng.below(64)).map(|_| rng.next() as u8).collect();
                            let at = rng.below(data.len() as u64 + 1) as usize;
                            data.splice(at..at, junk);
                        }
                        3 => continue,
                        4 => gap += rng.below(1 << 20),
                        _ => {}
                    }
                    // Random split of what is left.
                    let mut i = 0;
                    while i < data.len() {
                        let n = (1 + rng.below(300) as usize).min(data.len() - i);
                        damaged.push(Event::Segment {
                            dir: *dir,
                            data: data[i..i + n].to_vec(),
                            uncaptured: 0,
                            ts: None,
                        });
                        i += n;
                    }
                    if let Some(Event::Segment { uncaptured, .. }) = damaged.last_mut() {
                        *uncaptured += gap;
                    }
                }
                Event::Close => damaged.push(Event::Close),
            }
        }
        let mut conn = H2Conn::new();
        let mut ids = std::collections::HashMap::new();
        replay(&damaged, &mut conn, |_, em| {
            for e in em {
                *ids.entry(e.stream_id).or_insert(0) += 1;
                if e.resp_first_enter > 0 {
                    assert!(e.resp_last_exit >= e.resp_first_enter);
                }
            }
        });
        assert!(
            conn.buffered_bytes() <= memory_bound(),
            "iteration {iteration}: {} bytes",
            conn.buffered_bytes()
        );
        assert_eq!(conn.open_streams(), 0, "iteration {iteration}");
        assert!(ids.values().all(|&n| n == 1), "iteration {iteration}: {ids:?}");
    }
}

/// Pure noise and non-HTTP/2 traffic.
#[test]
fn noise_never_panics() {
    let mut rng = XorShift(0x0123_4567_89ab_cdef);
    for _ in 0..2000 {
        let mut conn = H2Conn::new();
        let mut out = Vec::new();
        for _ in 0..rng.below(20) {
            let data: Vec<u8> = (0..rng.below(600)).map(|_| rng.next() as u8).collect();
            let seg = Segment {
                data: &data,
                uncaptured: if rng.chance(20) { rng.below(100_000) } else { 0 },
                ts_enter: 1,
                ts_exit: 2,
            };
            if rng.chance(50) {
                conn.on_client_segment(seg, &mut out);
            } else {
                conn.on_server_segment(seg, &mut out);
            }
            assert!(conn.buffered_bytes() <= memory_bound());
        }
        conn.on_close(3, &mut out);
        assert_eq!(conn.open_streams(), 0);
    }
}
