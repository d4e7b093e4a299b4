//! Shared support for the golden-fixture runners: the fixture script
//! parser, replay of parsed scripts through a connection, the golden
//! compare/regenerate loop, and the helpers of the randomised tests.
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

// Each runner compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tracer_agent::protocol::db::DbExchange;
use tracer_agent::protocol::Segment;

/// The direction type of a runner: what `>` and `<` lines stand for.
pub(crate) trait Direction: Copy {
    /// Direction of a `>` (client -> server) segment.
    const CLIENT: Self;
    /// Direction of a `<` (server -> client) segment.
    const SERVER: Self;
}

#[derive(Debug, Clone)]
pub enum Event<D> {
    Segment { dir: D, data: Vec<u8>, uncaptured: u64, ts: Option<(u64, u64)> },
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
        let esc = *bytes.get(i + 1).ok_or_else(|| format!("line {line_no}: dangling backslash"))?;
        i += 2;
        match esc {
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'0' => out.push(0),
            b's' => out.push(b' '),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = s.get(i..i + 2).ok_or_else(|| format!("line {line_no}: short \\x escape"))?;
                let v = u8::from_str_radix(hex, 16).map_err(|_| format!("line {line_no}: bad \\x escape {hex:?}"))?;
                out.push(v);
                i += 2;
            }
            other => return Err(format!("line {line_no}: unknown escape \\{}", other as char)),
        }
    }
    Ok(out)
}

fn number(s: &str, line_no: usize) -> Result<u64, String> {
    s.trim().replace('_', "").parse::<u64>().map_err(|_| format!("line {line_no}: bad number {s:?}"))
}

fn last_segment<D>(events: &mut [Event<D>], line_no: usize) -> Result<&mut Event<D>, String> {
    match events.last_mut() {
        Some(ev @ Event::Segment { .. }) => Ok(ev),
        _ => Err(format!("line {line_no}: no previous segment")),
    }
}

/// Parses a fixture script (format in the module documentation).
pub fn parse_script<D: Direction>(text: &str) -> Result<Vec<Event<D>>, String> {
    let mut events: Vec<Event<D>> = Vec::new();
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
        if line.starts_with('>') || line.starts_with('<') {
            let dir = if line.starts_with('>') { D::CLIENT } else { D::SERVER };
            events.push(Event::Segment { dir, data: payload(1)?, uncaptured: 0, ts: None });
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
            let (a, b) = rest.split_once(',').ok_or_else(|| format!("line {line_no}: expected @ENTER,EXIT"))?;
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

/// Declares a runner's script types: `enum Dir` with the two given
/// variants (client -> server first), `type Event`, and the [`Conn`] impl of `$conn` calling `$on_client`/`$on_server`/`on_close`.
macro_rules! script_types {
    ($conn:ty, $exchange:ty, $client:ident => $on_client:ident, $server:ident => $on_server:ident) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Dir {
            $client,
            $server,
        }

        impl common::Direction for Dir {
            const CLIENT: Self = Dir::$client;
            const SERVER: Self = Dir::$server;
        }

        type Event = common::Event<Dir>;

        impl common::Conn for $conn {
            type Dir = Dir;
            type Exchange = $exchange;
            fn segment(&mut self, dir: Dir, seg: tracer_agent::protocol::Segment<'_>, out: &mut Vec<$exchange>) {
                match dir {
                    Dir::$client => self.$on_client(seg, out),
                    Dir::$server => self.$on_server(seg, out),
                }
            }
            fn close(&mut self, ts: u64, out: &mut Vec<$exchange>) {
                self.on_close(ts, out);
            }
        }
    };
}
pub(crate) use script_types;

/// Checks the parser on `script`, which must hold three events whose second
/// is a segment in direction `dir` with `data`, 1000 uncaptured bytes and
/// timestamps (7, 9); each of `bad` must fail to parse.
pub fn check_script_format<D: Direction + PartialEq + std::fmt::Debug>(
    script: &str,
    dir: D,
    data: &[u8],
    bad: &[&str],
) {
    let ev = parse_script::<D>(script).expect("valid script");
    assert_eq!(ev.len(), 3);
    match &ev[1] {
        Event::Segment { dir: got_dir, data: got_data, uncaptured, ts } => {
            assert_eq!(*got_dir, dir);
            assert_eq!(got_data.as_slice(), data);
            assert_eq!(*uncaptured, 1000);
            assert_eq!(*ts, Some((7, 9)));
        }
        Event::Close => panic!("segment expected"),
    }
    for text in bad {
        assert!(parse_script::<D>(text).is_err(), "{text:?} parsed");
    }
}

/// A connection tracker that scripts can be replayed through.
pub(crate) trait Conn {
    type Dir: Copy;
    type Exchange;
    fn segment(&mut self, dir: Self::Dir, seg: Segment<'_>, out: &mut Vec<Self::Exchange>);
    fn close(&mut self, ts: u64, out: &mut Vec<Self::Exchange>);
}

/// Feeds `events` to `conn`; after event i (0-based) `each(i, emitted)`
/// receives the exchanges that event emitted.
pub fn replay<C: Conn>(events: &[Event<C::Dir>], conn: &mut C, mut each: impl FnMut(usize, Vec<C::Exchange>)) {
    for (i, ev) in events.iter().enumerate() {
        let idx = (i as u64 + 1) * 1000;
        let mut emitted = Vec::new();
        match ev {
            Event::Segment { dir, data, uncaptured, ts } => {
                let (ts_enter, ts_exit) = ts.unwrap_or((idx, idx + 500));
                let seg = Segment { data, uncaptured: *uncaptured, ts_enter, ts_exit };
                conn.segment(*dir, seg, &mut emitted);
            }
            Event::Close => conn.close(idx, &mut emitted),
        }
        each(i, emitted);
    }
}

/// Replays `events` through `conn`, appending each emitted exchange to
/// `out` with `render(out, n, at, exchange)` (`n` counts exchanges from 1,
/// `at` is the 1-based index of the emitting event), or "no exchanges".
pub fn render_replay<C: Conn>(
    events: &[Event<C::Dir>],
    conn: &mut C,
    out: &mut String,
    render: impl Fn(&mut String, usize, usize, &C::Exchange),
) {
    let mut count = 0usize;
    replay(events, conn, |i, emitted| {
        for e in &emitted {
            count += 1;
            render(out, count, i + 1, e);
        }
    });
    if count == 0 {
        out.push_str("no exchanges\n");
    }
}

/// Renders a database exchange (the MySQL and Redis runners share this form).
pub fn render_db_exchange(out: &mut String, n: usize, at: usize, e: &DbExchange) {
    let _ = writeln!(
        out,
        "exchange {n} (emitted at event {at}): system={} namespace={} operation={} rows={}{}{}",
        e.system.as_str(),
        e.namespace.as_deref().map_or_else(|| "-".to_string(), |s| format!("{s:?}")),
        e.operation.as_deref().map_or_else(|| "-".to_string(), |s| format!("{s:?}")),
        e.rows.map_or_else(|| "-".to_string(), |r| r.to_string()),
        if e.no_response { " no_response" } else { "" },
        if e.with_prepare { " with_prepare" } else { "" }
    );
    match &e.query_text {
        Some(q) => {
            let _ = writeln!(out, "  query: {q:?}");
        }
        None => out.push_str("  query: -\n"),
    }
    if let Some(err) = &e.error {
        let _ = writeln!(out, "  error: code={:?} message={:?}", err.code, err.message);
    }
    let _ = writeln!(
        out,
        "  times: req={}..{} resp={}..{}",
        e.req_first_enter, e.req_last_exit, e.resp_first_enter, e.resp_last_exit
    );
}

/// `tests/fixtures/NAME` of this crate.
pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The `*.EXT` scripts in `dir`, sorted.
pub fn scripts(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    scripts.sort();
    scripts
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
                return format!("line {n}:\n  expected: {}\n  actual:   {}", x.unwrap_or("<end>"), y.unwrap_or("<end>"))
            }
        }
    }
}

/// Replays every `*.EXT` script in `dir` (at least `min` of them) through
/// `run`, comparing with the `.expected` files (or writing them with
/// `UPDATE_GOLDEN=1`).
pub fn check_fixtures<D: Direction>(dir: &Path, ext: &str, min: usize, run: impl Fn(&[Event<D>]) -> String) {
    let scripts = scripts(dir, ext);
    assert!(scripts.len() >= min, "expected at least {min} fixtures, found {}", scripts.len());
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

// ---------------------------------------------------------------------------
// Randomised tests
// ---------------------------------------------------------------------------

pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Splits `bytes` into random segments of up to 4 bytes (20% of the time)
/// or up to `max` bytes; with `capture` set, each segment keeps at most
/// that many captured bytes and reports the rest as uncaptured.
pub fn split(rng: &mut XorShift, bytes: &[u8], capture: Option<usize>, max: u64) -> Vec<(Vec<u8>, u64)> {
    let mut segs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let max = if rng.chance(20) { 4 } else { max };
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
pub fn mangle(rng: &mut XorShift, bytes: &mut Vec<u8>) {
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

/// Feeds the segments `segs` (data, uncaptured) to `conn` in direction
/// `dir`, each timestamped 1000 after the previous one (`*ts` holds the
/// last enter time; exit is enter + 500); `check(conn)` runs after each.
pub fn feed_segments<C: Conn>(
    conn: &mut C,
    out: &mut Vec<C::Exchange>,
    segs: Vec<(Vec<u8>, u64)>,
    dir: C::Dir,
    ts: &mut u64,
    check: impl Fn(&C),
) {
    for (data, gap) in segs {
        *ts += 1000;
        let seg = Segment { data: &data, uncaptured: gap, ts_enter: *ts, ts_exit: *ts + 500 };
        conn.segment(dir, seg, out);
        check(conn);
    }
}
