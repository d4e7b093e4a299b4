//! Redis serialization protocol (RESP2 and RESP3), seen from the client's
//! connection.
//!
//! [`RedisConn`] turns the two byte streams of one connection into
//! [`DbExchange`]s: one per command, matched with replies in order (FIFO), so
//! pipelined commands pair up with their replies.
//!
//! Design rules (the same as the other parsers):
//! * Pure code: no I/O, no clock, no globals; no input makes it panic.
//! * Values are parsed incrementally across segments. Bulk payloads are
//!   skipped by length, including uncaptured bytes; only short prefixes of
//!   command arguments and of top-level reply elements are kept.
//! * When framing is lost (an uncaptured gap covers a type line, or the bytes
//!   are not RESP), the direction stops parsing. The client side resumes at a
//!   later segment start that looks like a command; the server side at a
//!   segment start that looks like a reply, once a command is waiting whose
//!   reply has not begun. A command whose reply was cut is emitted right away.
//! * Bounded memory: lines, kept prefixes, nesting depth and the queue of
//!   commands waiting for a reply all have caps.
//!
//! Conventions:
//! * `operation` is the command name uppercased (first word only for
//!   two-word commands such as `CLIENT SETNAME`); `query_text` is the command
//!   with its arguments joined by spaces, each argument cut at
//!   [`MAX_ARG_TEXT`] bytes and the whole at [`MAX_QUERY_TEXT`] bytes.
//! * Every command gets one reply, and so one exchange. Inside MULTI/EXEC
//!   this means: `MULTI` (reply `+OK`), each queued command (reply
//!   `+QUEUED`, or an error when queueing failed), then `EXEC` (reply: the
//!   array of results; its error is set only when EXEC itself failed).
//! * Error replies (`-ERR ...`, `-WRONGTYPE ...`, RESP3 blob errors) give
//!   `DbError { code: first word, message: the rest }`.
//! * `namespace` is the database index, "0" until a `SELECT n` succeeds.
//! * `HELLO 3` switches to RESP3, `HELLO 2` back. Push messages (`>`) are
//!   never exchanges, except subscribe confirmations which complete their
//!   command. After SUBSCRIBE/PSUBSCRIBE/SSUBSCRIBE, RESP2 `message`,
//!   `pmessage` and `smessage` arrays are pushes too, and surplus subscribe
//!   confirmations (one per channel) are skipped.
//! * `CLIENT REPLY OFF|SKIP` and the commands they silence are emitted at
//!   once with `no_response`.
//! * `rows` is the element count of an aggregate (array, set, map) reply,
//!   except for subscribe confirmations.

use std::collections::VecDeque;

use super::db::{DbError, DbExchange, DbSystem};
use super::Segment;

/// Longest argument text kept per argument.
pub const MAX_ARG_TEXT: usize = 64;

/// Longest `query_text`.
pub const MAX_QUERY_TEXT: usize = 1024;

/// Commands waiting for a reply, per connection.
pub const MAX_PENDING: usize = 256;

/// Longest type line (simple string, error, number) accepted.
const MAX_LINE: usize = 64 * 1024;

/// Prefix of a line kept.
const LINE_KEEP: usize = 512;

/// Deepest nesting of aggregates accepted.
const MAX_DEPTH: usize = 64;

/// Top-level elements whose prefix is kept.
const MAX_ITEMS: usize = 256;

/// Largest element count or bulk length accepted.
const MAX_COUNT: i64 = 1 << 32;

/// Command names recognised in inline form by [`looks_like_client_start`].
const INLINE_COMMANDS: &[&[u8]] = &[
    b"PING",
    b"QUIT",
    b"GET",
    b"SET",
    b"DEL",
    b"INFO",
    b"KEYS",
    b"EXISTS",
    b"INCR",
    b"DECR",
    b"SELECT",
    b"AUTH",
    b"HELLO",
    b"ECHO",
    b"TTL",
    b"EXPIRE",
    b"MGET",
    b"MSET",
    b"HGET",
    b"HSET",
    b"LPUSH",
    b"RPUSH",
    b"LPOP",
    b"RPOP",
    b"SADD",
    b"DBSIZE",
    b"FLUSHDB",
    b"FLUSHALL",
    b"CONFIG",
    b"CLIENT",
    b"MONITOR",
    b"SUBSCRIBE",
    b"PUBLISH",
    b"MULTI",
    b"EXEC",
    b"DISCARD",
    b"SCAN",
    b"TYPE",
    b"COMMAND",
];

// ---------------------------------------------------------------------------
// Detection
// ---------------------------------------------------------------------------

/// Parse a RESP integer (optional sign, digits) of a whole line.
fn parse_int(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

/// The line at the start of `buf` without its CRLF, if complete.
fn first_line(buf: &[u8]) -> Option<&[u8]> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    buf.get(..end)
}

/// True when `buf` starts with a command: an array of bulk strings
/// (`*N\r\n$LEN\r\n`, N in 1..=1M) or an inline command of a known name.
pub fn looks_like_client_start(buf: &[u8]) -> bool {
    if buf.first() == Some(&b'*') {
        let Some(line) = first_line(buf.get(..buf.len().min(16)).unwrap_or(&[])) else {
            return false;
        };
        let Some(n) = parse_int(line.get(1..).unwrap_or(&[])) else {
            return false;
        };
        if !(1..=1_000_000).contains(&n) {
            return false;
        }
        let rest = buf.get(line.len() + 2..).unwrap_or(&[]);
        if rest.is_empty() {
            // The segment ends after the array header (a split write).
            return true;
        }
        if rest.first() != Some(&b'$') {
            return false;
        }
        let Some(bl) = first_line(rest.get(..rest.len().min(16)).unwrap_or(&[])) else {
            // A split inside the first bulk header: digits so far.
            let digits = rest.get(1..).unwrap_or(&[]);
            let digits = digits.strip_suffix(b"\r").unwrap_or(digits);
            return rest.len() < 16 && digits.iter().all(|b| b.is_ascii_digit());
        };
        return parse_int(bl.get(1..).unwrap_or(&[])).is_some_and(|l| (0..=512 * 1024 * 1024).contains(&l));
    }
    INLINE_COMMANDS.iter().any(|name| {
        buf.len() > name.len()
            && buf.get(..name.len()).is_some_and(|p| p.eq_ignore_ascii_case(name))
            && matches!(buf.get(name.len()), Some(b' ' | b'\r' | b'\n'))
    })
}

/// True when `buf` starts with a reply or push: a RESP2/RESP3 type byte
/// followed by a well-formed type line.
pub fn looks_like_server_start(buf: &[u8]) -> bool {
    let Some(&t) = buf.first() else {
        return false;
    };
    let line = first_line(buf.get(..buf.len().min(LINE_KEEP + 2)).unwrap_or(&[]));
    let content = line.and_then(|l| l.get(1..));
    match t {
        b'+' | b'-' => match content {
            Some(c) => c.iter().all(|&b| b >= 0x20 || b == b'\t'),
            // A long line: its captured part must be text.
            None => buf.len() > LINE_KEEP && buf.iter().skip(1).take(LINE_KEEP).all(|&b| b >= 0x20 || b == b'\t'),
        },
        b':' | b'(' => content.is_some_and(|c| {
            parse_int(c).is_some() || (t == b'(' && !c.is_empty() && c.iter().all(|b| b.is_ascii_digit() || *b == b'-'))
        }),
        b'$' | b'*' | b'!' | b'=' | b'%' | b'~' | b'>' | b'|' => content
            .and_then(parse_int)
            .is_some_and(|n| (n >= 0 || (n == -1 && matches!(t, b'$' | b'*'))) && n <= MAX_COUNT),
        b'_' => content.is_some_and(|c| c.is_empty()),
        b'#' => content.is_some_and(|c| c == b"t" || c == b"f"),
        b',' => content.is_some_and(|c| {
            !c.is_empty()
                && c.iter().all(|b| {
                    b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'i' | b'n' | b'f' | b'a')
                })
        }),
        _ => false,
    }
}

/// A segment too short to hold a whole first line whose bytes are a
/// consistent beginning of a command (`client`) or a reply: a split start.
fn plausible_prefix(buf: &[u8], client: bool) -> bool {
    if buf.is_empty() || buf.len() > 24 || buf.windows(2).any(|w| w == b"\r\n") {
        return false;
    }
    let (first, rest) = match buf.split_first() {
        Some(x) => x,
        None => return false,
    };
    let numeric = |r: &[u8]| {
        let r = r.strip_suffix(b"\r").unwrap_or(r);
        let r = r.strip_prefix(b"-").unwrap_or(r);
        r.iter().all(|b| b.is_ascii_digit())
    };
    if client {
        return *first == b'*' && numeric(rest) && !rest.starts_with(b"-");
    }
    match first {
        b'+' | b'-' => rest.iter().all(|&b| b >= 0x20 || b == b'\t' || b == b'\r'),
        b':' | b'$' | b'*' | b'!' | b'=' | b'%' | b'~' | b'>' | b'|' | b'(' => numeric(rest),
        b'_' => rest.is_empty() || rest == b"\r",
        b'#' => rest.len() <= 2,
        b',' => rest.len() < 24,
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Incremental value reader
// ---------------------------------------------------------------------------

struct Input<'a> {
    data: &'a [u8],
    gap: u64,
    enter: u64,
}

enum Step {
    /// A top-level value is complete; its summary is in the reader.
    Value,
    NeedMore,
    /// Framing lost in an uncaptured gap.
    Lost,
    /// Not RESP.
    Invalid,
}

/// What is kept of a complete top-level value.
#[derive(Debug, Clone, Default)]
struct Summary {
    /// Type byte of the value (after any attributes); `b'i'` for an inline
    /// command.
    ty: u8,
    /// Line content of a simple value, or prefix of a bulk value.
    text: Vec<u8>,
    /// Element count of an aggregate (pairs for maps), -1 for null.
    len: i64,
    /// Prefixes of the first direct elements of an aggregate (an empty
    /// prefix for nested aggregates), with their type bytes.
    items: Vec<(u8, Vec<u8>)>,
    /// Bytes kept in `items`.
    item_bytes: usize,
    /// Some bulk content was not captured.
    truncated: bool,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    remaining: u64,
    attribute: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    /// Reading a type line (or inline command line).
    Line,
    /// Skipping bulk content: `left` content bytes then `crlf` terminator
    /// bytes.
    Bulk { left: u64, crlf: u8 },
}

#[derive(Debug, Clone)]
struct RespReader {
    client: bool,
    state: ReadState,
    line: Vec<u8>,
    line_len: usize,
    prev_cr: bool,
    stack: Vec<Frame>,
    /// Depth of the bulk being read.
    bulk_depth: usize,
    /// The current bulk's bytes are kept (its element was recorded).
    bulk_keep: bool,
    summary: Summary,
    in_value: bool,
    first_enter: u64,
    lost: bool,
}

impl RespReader {
    fn new(client: bool) -> Self {
        RespReader {
            client,
            state: ReadState::Line,
            line: Vec::new(),
            line_len: 0,
            prev_cr: false,
            stack: Vec::new(),
            bulk_depth: 0,
            bulk_keep: false,
            summary: Summary::default(),
            in_value: false,
            first_enter: 0,
            // Until a segment start shows where values begin.
            lost: true,
        }
    }

    fn at_boundary(&self) -> bool {
        !self.in_value && self.line_len == 0 && self.state == ReadState::Line
    }

    fn reset(&mut self) {
        self.state = ReadState::Line;
        self.line.clear();
        self.line_len = 0;
        self.prev_cr = false;
        self.stack.clear();
        self.summary = Summary::default();
        self.in_value = false;
        self.lost = false;
    }

    fn heap(&self) -> usize {
        self.line.capacity()
            + self.stack.capacity() * std::mem::size_of::<Frame>()
            + self.summary.text.capacity()
            + self.summary.items.capacity() * std::mem::size_of::<(u8, Vec<u8>)>()
            + self.summary.items.iter().map(|i| i.1.capacity()).sum::<usize>()
    }

    /// Keep (a prefix of) an element's content in the summary; remembers
    /// whether the bytes of a bulk that follows are to be kept too.
    fn record(&mut self, depth: usize, ty: u8, content: &[u8]) {
        self.bulk_keep = false;
        let direct = depth == 1 && self.stack.first().is_some_and(|f| !f.attribute);
        if depth == 0 {
            self.summary.ty = ty;
            self.summary.text.clear();
            let n = content.len().min(LINE_KEEP);
            self.summary.text.extend_from_slice(content.get(..n).unwrap_or(&[]));
            self.bulk_keep = true;
        } else if direct
            && self.summary.items.len() < MAX_ITEMS
            && self.summary.item_bytes < MAX_QUERY_TEXT + MAX_ARG_TEXT
        {
            let n = content.len().min(MAX_ARG_TEXT);
            self.summary.item_bytes += n;
            self.summary.items.push((ty, content.get(..n).unwrap_or(&[]).to_vec()));
            self.bulk_keep = true;
        }
    }

    /// Append captured bulk bytes to the kept prefix of the current bulk.
    fn record_bulk_bytes(&mut self, chunk: &[u8]) {
        if !self.bulk_keep {
            return;
        }
        if self.bulk_depth == 0 {
            let room = LINE_KEEP.saturating_sub(self.summary.text.len());
            let n = room.min(chunk.len());
            self.summary.text.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        } else {
            if let Some(last) = self.summary.items.last_mut() {
                let room = MAX_ARG_TEXT.saturating_sub(last.1.len());
                let n = room.min(chunk.len());
                self.summary.item_bytes += n;
                last.1.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
            }
        }
    }

    /// An element finished: unwind completed aggregates. True when the
    /// top-level value is complete.
    fn element_done(&mut self) -> bool {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return true;
            };
            top.remaining = top.remaining.saturating_sub(1);
            if top.remaining > 0 {
                return false;
            }
            let attribute = top.attribute;
            self.stack.pop();
            if attribute {
                // An attribute is not an element: the value it annotates
                // follows.
                return false;
            }
        }
    }

    fn next(&mut self, inp: &mut Input<'_>) -> Step {
        loop {
            match self.state {
                ReadState::Bulk { left, crlf } => {
                    if left > 0 {
                        if !inp.data.is_empty() {
                            let n = usize::try_from(left).unwrap_or(usize::MAX).min(inp.data.len());
                            let chunk = inp.data.get(..n).unwrap_or(&[]);
                            self.record_bulk_bytes(chunk);
                            inp.data = inp.data.get(n..).unwrap_or(&[]);
                            self.state = ReadState::Bulk { left: left - n as u64, crlf };
                        } else if inp.gap > 0 {
                            let m = inp.gap.min(left);
                            inp.gap -= m;
                            self.summary.truncated = true;
                            self.state = ReadState::Bulk { left: left - m, crlf };
                        } else {
                            return Step::NeedMore;
                        }
                        continue;
                    }
                    if crlf > 0 {
                        if let Some((&b, rest)) = inp.data.split_first() {
                            let want = if crlf == 2 { b'\r' } else { b'\n' };
                            if b != want {
                                return Step::Invalid;
                            }
                            inp.data = rest;
                        } else if inp.gap > 0 {
                            inp.gap -= 1;
                        } else {
                            return Step::NeedMore;
                        }
                        self.state = ReadState::Bulk { left: 0, crlf: crlf - 1 };
                        continue;
                    }
                    self.state = ReadState::Line;
                    if self.element_done() {
                        self.in_value = false;
                        return Step::Value;
                    }
                }
                ReadState::Line => {
                    if inp.data.is_empty() {
                        if inp.gap > 0 {
                            return Step::Lost;
                        }
                        return Step::NeedMore;
                    }
                    if !self.in_value {
                        self.in_value = true;
                        self.first_enter = inp.enter;
                        self.summary.items.clear();
                        self.summary.item_bytes = 0;
                        self.summary.text.clear();
                        self.summary.len = 0;
                        self.summary.truncated = false;
                        self.summary.ty = 0;
                    }
                    // Scan for LF.
                    let mut complete = false;
                    let mut used = 0;
                    for &b in inp.data {
                        used += 1;
                        if b == b'\n' && self.prev_cr {
                            complete = true;
                            break;
                        }
                        self.prev_cr = b == b'\r';
                        if self.line.len() < LINE_KEEP + 1 {
                            self.line.push(b);
                        }
                        self.line_len += 1;
                        if self.line_len > MAX_LINE {
                            return Step::Invalid;
                        }
                    }
                    inp.data = inp.data.get(used..).unwrap_or(&[]);
                    if !complete {
                        continue;
                    }
                    // Drop the CR kept before the LF.
                    if self.line_len <= LINE_KEEP + 1 {
                        self.line.pop();
                    }
                    self.line_len = 0;
                    self.prev_cr = false;
                    let line = std::mem::take(&mut self.line);
                    let r = self.handle_line(&line);
                    self.line = line;
                    self.line.clear();
                    match r {
                        Some(true) => {
                            self.in_value = false;
                            return Step::Value;
                        }
                        Some(false) => {}
                        None => return Step::Invalid,
                    }
                }
            }
        }
    }

    /// Handle a complete type line. Some(true): the top-level value is
    /// complete; None: invalid.
    fn handle_line(&mut self, line: &[u8]) -> Option<bool> {
        let depth = self.stack.len();
        let (&t, content) = line.split_first()?;
        match t {
            b'+' | b'-' | b':' | b',' | b'#' | b'(' | b'_' => {
                if t == b':' && parse_int(content).is_none() {
                    return None;
                }
                if t == b'_' && !content.is_empty() {
                    return None;
                }
                self.record(depth, t, content);
                Some(self.element_done())
            }
            b'$' | b'!' | b'=' => {
                let n = parse_int(content)?;
                if !(-1..=MAX_COUNT).contains(&n) {
                    return None;
                }
                self.record(depth, t, &[]);
                if depth == 0 {
                    self.summary.len = n;
                }
                if n == -1 {
                    return Some(self.element_done());
                }
                self.bulk_depth = depth;
                self.state = ReadState::Bulk { left: n as u64, crlf: 2 };
                Some(false)
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = parse_int(content)?;
                if !(-1..=MAX_COUNT).contains(&n) || (n == -1 && t != b'*') {
                    return None;
                }
                if t != b'|' {
                    self.record(depth, t, &[]);
                    if depth == 0 {
                        self.summary.len = n;
                    }
                }
                let count = if matches!(t, b'%' | b'|') { n.saturating_mul(2) } else { n };
                if count <= 0 {
                    if t == b'|' {
                        return Some(false);
                    }
                    return Some(self.element_done());
                }
                if self.stack.len() >= MAX_DEPTH {
                    return None;
                }
                self.stack.push(Frame { remaining: count as u64, attribute: t == b'|' });
                Some(false)
            }
            _ if self.client && depth == 0 => {
                // Inline command.
                if !line.iter().all(|&b| b >= 0x20 || b == b'\t') {
                    return None;
                }
                self.summary.ty = b'i';
                self.summary.len = 0;
                for word in split_inline(line) {
                    if self.summary.items.len() >= MAX_ITEMS {
                        break;
                    }
                    let n = word.len().min(MAX_ARG_TEXT);
                    self.summary.item_bytes += n;
                    self.summary.items.push((b'$', word.get(..n).unwrap_or(&[]).to_vec()));
                    self.summary.len += 1;
                }
                if self.summary.items.is_empty() {
                    // An empty line: nothing to report.
                    self.in_value = false;
                    return Some(false);
                }
                Some(true)
            }
            _ => None,
        }
    }
}

/// Words of an inline command; double-quoted words may contain spaces.
fn split_inline(line: &[u8]) -> Vec<Vec<u8>> {
    let mut words = Vec::new();
    let mut cur = Vec::new();
    let mut in_quote = false;
    let mut has_word = false;
    for &b in line {
        if in_quote {
            if b == b'"' {
                in_quote = false;
            } else {
                cur.push(b);
            }
        } else if b == b' ' || b == b'\t' {
            if has_word {
                words.push(std::mem::take(&mut cur));
                has_word = false;
            }
        } else if b == b'"' {
            in_quote = true;
            has_word = true;
        } else {
            cur.push(b);
            has_word = true;
        }
        if words.len() >= MAX_ITEMS {
            return words;
        }
    }
    if has_word {
        words.push(cur);
    }
    words
}

// ---------------------------------------------------------------------------
// Connection state
// ---------------------------------------------------------------------------

/// Counters kept per connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Commands parsed.
    pub commands: u64,
    /// Replies matched with a command.
    pub replies: u64,
    /// Exchanges emitted.
    pub exchanges: u64,
    /// Exchanges emitted without a reply.
    pub unanswered: u64,
    /// Push messages and surplus subscribe confirmations skipped.
    pub pushes: u64,
    /// Replies seen while no command was waiting.
    pub orphan_replies: u64,
    /// Client bytes skipped while out of sync.
    pub client_desync_bytes: u64,
    /// Server bytes skipped while out of sync.
    pub server_desync_bytes: u64,
    /// Times an uncaptured gap covered a type line.
    pub framing_lost: u64,
    /// Replies cut by lost framing (their command was emitted early).
    pub replies_cut: u64,
    /// Bytes that were not RESP.
    pub invalid: u64,
    /// Commands emitted unanswered because [`MAX_PENDING`] was exceeded.
    pub pending_overflow: u64,
    /// Commands sent while replies were switched off.
    pub no_reply_commands: u64,
}

#[derive(Debug, Clone)]
struct Pending {
    ex: DbExchange,
    /// Uppercased command name.
    name: String,
    /// Uppercased second word (subcommand).
    sub: String,
    /// First argument as sent.
    arg1: String,
    /// Channels of a subscribe command (confirmations expected).
    channels: u64,
    reply_started: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyMode {
    On,
    Off,
    Skip,
}

/// Parses one Redis connection.
#[derive(Debug, Clone)]
pub struct RedisConn {
    cli: RespReader,
    srv: RespReader,
    pending: VecDeque<Pending>,
    namespace: String,
    resp3: bool,
    pubsub: bool,
    /// Subscribe confirmations still expected for a command already emitted.
    surplus_confirms: u64,
    reply_mode: ReplyMode,
    stats: RedisStats,
}

impl Default for RedisConn {
    fn default() -> Self {
        Self::new()
    }
}

fn is_subscribe_kind(s: &[u8]) -> bool {
    [&b"subscribe"[..], b"psubscribe", b"ssubscribe", b"unsubscribe", b"punsubscribe", b"sunsubscribe"]
        .iter()
        .any(|k| s.eq_ignore_ascii_case(k))
}

fn is_message_kind(s: &[u8]) -> bool {
    [&b"message"[..], b"pmessage", b"smessage"].iter().any(|k| s.eq_ignore_ascii_case(k))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Cut `s` to at most `max` bytes at a character boundary.
fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut n = max;
        while n > 0 && !s.is_char_boundary(n) {
            n -= 1;
        }
        s.truncate(n);
    }
}

fn error_of(text: &[u8]) -> DbError {
    let s = lossy(text);
    match s.split_once(' ') {
        Some((code, msg)) => DbError { code: code.to_string(), message: msg.to_string() },
        None => DbError { code: s, message: String::new() },
    }
}

impl RedisConn {
    pub fn new() -> Self {
        RedisConn {
            cli: RespReader::new(true),
            srv: RespReader::new(false),
            pending: VecDeque::new(),
            namespace: "0".to_string(),
            resp3: false,
            pubsub: false,
            surplus_confirms: 0,
            reply_mode: ReplyMode::On,
            stats: RedisStats::default(),
        }
    }

    pub fn stats(&self) -> &RedisStats {
        &self.stats
    }

    /// The connection switched to RESP3 (`HELLO 3`).
    pub fn is_resp3(&self) -> bool {
        self.resp3
    }

    /// The connection is in RESP2 pub/sub mode.
    pub fn in_pubsub(&self) -> bool {
        self.pubsub
    }

    /// Current database index.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Commands waiting for a reply.
    pub fn pending_commands(&self) -> usize {
        self.pending.len()
    }

    /// Approximate heap memory held by this connection's state.
    pub fn buffered_bytes(&self) -> usize {
        let pending: usize = self
            .pending
            .iter()
            .map(|p| {
                std::mem::size_of::<Pending>()
                    + p.ex.query_text.as_ref().map_or(0, |q| q.capacity())
                    + p.ex.operation.as_ref().map_or(0, |q| q.capacity())
                    + p.ex.namespace.as_ref().map_or(0, |q| q.capacity())
                    + p.name.capacity()
                    + p.sub.capacity()
                    + p.arg1.capacity()
            })
            .sum();
        self.cli.heap() + self.srv.heap() + pending
    }

    // -- client side ------------------------------------------------------

    /// Bytes travelling client -> server.
    pub fn on_client_segment(&mut self, seg: Segment<'_>, out: &mut Vec<DbExchange>) {
        let total = (seg.data.len() as u64).saturating_add(seg.uncaptured);
        if self.cli.lost {
            if looks_like_client_start(seg.data) || plausible_prefix(seg.data, true) {
                self.cli.reset();
            } else {
                self.stats.client_desync_bytes = self.stats.client_desync_bytes.saturating_add(total);
                return;
            }
        }
        let mut inp = Input { data: seg.data, gap: seg.uncaptured, enter: seg.ts_enter };
        loop {
            match self.cli.next(&mut inp) {
                Step::NeedMore => break,
                Step::Lost | Step::Invalid => {
                    let rest = (inp.data.len() as u64).saturating_add(inp.gap);
                    self.stats.client_desync_bytes = self.stats.client_desync_bytes.saturating_add(rest);
                    self.stats.framing_lost += 1;
                    self.cli.lost = true;
                    break;
                }
                Step::Value => {
                    let summary = std::mem::take(&mut self.cli.summary);
                    self.command(&summary, self.cli.first_enter, seg.ts_exit, out);
                    self.cli.summary = summary;
                }
            }
        }
    }

    fn command(&mut self, s: &Summary, enter: u64, exit: u64, out: &mut Vec<DbExchange>) {
        if !matches!(s.ty, b'*' | b'i') || s.items.is_empty() {
            // Not a command (a bare bulk or number): ignored.
            self.stats.invalid += 1;
            return;
        }
        self.stats.commands += 1;
        let word = |i: usize| s.items.get(i).map(|(_, b)| lossy(b)).unwrap_or_default();
        let name = word(0).to_ascii_uppercase();
        let sub = word(1).to_ascii_uppercase();
        let arg1 = word(1);
        let mut text = String::new();
        for (i, (_, arg)) in s.items.iter().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            text.push_str(&lossy(arg));
            if text.len() >= MAX_QUERY_TEXT {
                break;
            }
        }
        cut(&mut text, MAX_QUERY_TEXT);
        let mut ex = DbExchange::new(DbSystem::Redis);
        let mut op = name.clone();
        cut(&mut op, MAX_ARG_TEXT);
        ex.operation = Some(op);
        ex.query_text = Some(text);
        ex.req_first_enter = enter;
        ex.req_last_exit = exit;
        let channels = if name.ends_with("SUBSCRIBE") { (s.len.max(1) as u64).saturating_sub(1).max(1) } else { 0 };
        let p = Pending { ex, name, sub, arg1, channels, reply_started: false };
        // CLIENT REPLY OFF|SKIP and the commands they silence get no reply.
        let silenced = self.reply_mode != ReplyMode::On;
        if self.reply_mode == ReplyMode::Skip {
            self.reply_mode = ReplyMode::On;
        }
        if p.name == "CLIENT" && p.sub == "REPLY" {
            let mode = s.items.get(2).map(|(_, b)| lossy(b).to_ascii_uppercase());
            match mode.as_deref() {
                Some("OFF") => self.reply_mode = ReplyMode::Off,
                Some("SKIP") if !silenced => self.reply_mode = ReplyMode::Skip,
                Some("ON") => self.reply_mode = ReplyMode::On,
                _ => {}
            }
            if mode.as_deref() != Some("ON") {
                self.stats.no_reply_commands += 1;
                self.emit(p, false, out);
                return;
            }
        } else if silenced {
            self.stats.no_reply_commands += 1;
            self.emit(p, false, out);
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            if let Some(old) = self.pending.pop_front() {
                self.stats.pending_overflow += 1;
                self.emit(old, false, out);
            }
        }
        if self.pending.is_empty() && !self.srv.at_boundary() && !self.srv.lost && !self.pubsub && !self.resp3 {
            // The server is inside a value nothing was waiting for.
            self.srv.lost = true;
        }
        self.pending.push_back(p);
    }

    // -- server side ------------------------------------------------------

    /// Bytes travelling server -> client.
    pub fn on_server_segment(&mut self, seg: Segment<'_>, out: &mut Vec<DbExchange>) {
        let total = (seg.data.len() as u64).saturating_add(seg.uncaptured);
        if self.srv.lost {
            let fresh = self.pending.front().is_some_and(|p| !p.reply_started);
            if fresh && (looks_like_server_start(seg.data) || plausible_prefix(seg.data, false)) {
                self.srv.reset();
            } else {
                self.stats.server_desync_bytes = self.stats.server_desync_bytes.saturating_add(total);
                return;
            }
        } else if self.srv.at_boundary() && self.pending.is_empty() && !self.pubsub && !self.resp3 {
            // Nothing waits for these bytes: drop the segment.
            if looks_like_server_start(seg.data) {
                self.stats.orphan_replies += 1;
            }
            self.stats.server_desync_bytes = self.stats.server_desync_bytes.saturating_add(total);
            self.srv.lost = true;
            return;
        }
        let mut inp = Input { data: seg.data, gap: seg.uncaptured, enter: seg.ts_enter };
        loop {
            match self.srv.next(&mut inp) {
                Step::NeedMore => {
                    if !self.srv.at_boundary() {
                        self.touch(seg.ts_exit);
                    }
                    break;
                }
                Step::Lost | Step::Invalid => {
                    let rest = (inp.data.len() as u64).saturating_add(inp.gap);
                    self.stats.server_desync_bytes = self.stats.server_desync_bytes.saturating_add(rest);
                    self.stats.framing_lost += 1;
                    self.srv.lost = true;
                    let started = self.pending.front().is_some_and(|p| p.reply_started) || self.srv.in_value;
                    if started && !self.pending.is_empty() {
                        self.touch(seg.ts_exit);
                        if let Some(p) = self.pending.pop_front() {
                            self.stats.replies_cut += 1;
                            self.emit(p, true, out);
                        }
                    }
                    break;
                }
                Step::Value => {
                    let summary = std::mem::take(&mut self.srv.summary);
                    self.reply(&summary, self.srv.first_enter, seg.ts_exit, out);
                    self.srv.summary = summary;
                    if self.pending.is_empty() && !self.pubsub && !self.resp3 && !inp.data.is_empty() {
                        // Left-over bytes with nothing waiting.
                        let rest = (inp.data.len() as u64).saturating_add(inp.gap);
                        self.stats.server_desync_bytes = self.stats.server_desync_bytes.saturating_add(rest);
                        self.stats.orphan_replies += 1;
                        self.srv.lost = true;
                        break;
                    }
                }
            }
        }
    }

    /// Record reply timing for the front command (the value in progress).
    fn touch(&mut self, exit: u64) {
        let first = self.srv.first_enter;
        if let Some(front) = self.pending.front_mut() {
            if !front.reply_started {
                front.ex.resp_first_enter = first;
                front.reply_started = true;
            }
            front.ex.resp_last_exit = exit;
        }
    }

    fn reply(&mut self, s: &Summary, enter: u64, exit: u64, out: &mut Vec<DbExchange>) {
        let first_item = s.items.first().map(|(_, b)| b.as_slice()).unwrap_or(&[]);
        let aggregate = matches!(s.ty, b'*' | b'>');
        if s.ty == b'>' || (self.pubsub && s.ty == b'*') {
            let kind_sub = aggregate && is_subscribe_kind(first_item);
            let front_wants = kind_sub
                && self.surplus_confirms == 0
                && self.pending.front().is_some_and(|p| p.name.as_bytes().eq_ignore_ascii_case(first_item));
            if kind_sub {
                // The count of remaining subscriptions is the third element.
                let count = s.items.get(2).and_then(|(_, b)| parse_int(b));
                if count == Some(0) {
                    self.pubsub = false;
                }
            }
            if !front_wants && (s.ty == b'>' || is_message_kind(first_item) || kind_sub) {
                if kind_sub && self.surplus_confirms > 0 {
                    self.surplus_confirms -= 1;
                }
                self.stats.pushes += 1;
                return;
            }
        }
        let Some(mut p) = self.pending.pop_front() else {
            self.stats.orphan_replies += 1;
            return;
        };
        self.stats.replies += 1;
        if !p.reply_started {
            p.ex.resp_first_enter = enter;
        }
        p.reply_started = true;
        p.ex.resp_last_exit = exit;
        let error = match s.ty {
            b'-' | b'!' => Some(error_of(&s.text)),
            _ => None,
        };
        if matches!(s.ty, b'*' | b'~' | b'%') && s.len >= 0 && !p.name.ends_with("SUBSCRIBE") {
            p.ex.rows = Some(s.len as u64);
        }
        let ok = error.is_none();
        p.ex.error = error;
        p.ex.namespace = Some(self.namespace.clone());
        match p.name.as_str() {
            "SELECT" if ok => {
                let db = p.arg1.trim();
                if !db.is_empty() && db.len() <= 20 && db.bytes().all(|b| b.is_ascii_digit()) {
                    self.namespace = db.to_string();
                }
            }
            "HELLO" if ok => match p.arg1.trim() {
                "3" => self.resp3 = true,
                "2" => self.resp3 = false,
                _ => {}
            },
            "RESET" if ok => {
                self.resp3 = false;
                self.pubsub = false;
                self.surplus_confirms = 0;
                self.namespace = "0".to_string();
            }
            "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" if ok => {
                self.pubsub = !self.resp3;
                self.surplus_confirms = p.channels.saturating_sub(1);
            }
            _ => {}
        }
        if p.name.ends_with("UNSUBSCRIBE") && ok {
            let count = s.items.get(2).and_then(|(_, b)| parse_int(b));
            if count == Some(0) {
                self.pubsub = false;
            }
            // Confirmations for the other channels are skipped as pushes.
            self.surplus_confirms = 0;
        }
        self.emit(p, true, out);
    }

    fn emit(&mut self, mut p: Pending, answered: bool, out: &mut Vec<DbExchange>) {
        self.stats.exchanges += 1;
        if p.ex.namespace.is_none() {
            p.ex.namespace = Some(self.namespace.clone());
        }
        if !answered || !p.reply_started {
            p.ex.no_response = true;
            p.ex.resp_first_enter = 0;
            p.ex.resp_last_exit = 0;
            p.ex.error = None;
            p.ex.rows = None;
            self.stats.unanswered += 1;
        }
        out.push(p.ex);
    }

    /// The connection closed: commands still waiting are emitted (without a
    /// reply unless part of it was seen).
    pub fn on_close(&mut self, _ts: u64, out: &mut Vec<DbExchange>) {
        while let Some(p) = self.pending.pop_front() {
            let started = p.reply_started;
            self.emit(p, started, out);
        }
        self.cli.reset();
        self.srv.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pairs: &[(&[u8], &[u8])]) -> Vec<DbExchange> {
        let mut c = RedisConn::new();
        let mut out = Vec::new();
        let mut t = 0;
        for (req, resp) in pairs {
            t += 100;
            c.on_client_segment(Segment::new(req, t, t + 10), &mut out);
            t += 100;
            c.on_server_segment(Segment::new(resp, t, t + 10), &mut out);
        }
        c.on_close(t + 100, &mut out);
        out
    }

    #[test]
    fn aggregate_rows() {
        let out = run(&[
            (b"*1\r\n$4\r\nMGET\r\n", b"*0\r\n"),
            (b"*1\r\n$7\r\nHGETALL\r\n", b"%3\r\n$2\r\n00\r\n+OK\r\n$2\r\n11\r\n:5\r\n$2\r\n22\r\n$-1\r\n"),
            (b"*1\r\n$3\r\nGET\r\n", b"$3\r\nabc\r\n"),
        ]);
        let rows: Vec<Option<u64>> = out.iter().map(|e| e.rows).collect();
        assert_eq!(rows, vec![Some(0), Some(3), None]);
    }

    #[test]
    fn detection() {
        assert!(looks_like_client_start(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"));
        assert!(looks_like_client_start(b"PING\r\n"));
        assert!(looks_like_client_start(b"get key\r\n"));
        assert!(!looks_like_client_start(b"*0\r\n"));
        assert!(!looks_like_client_start(b"*2000000\r\n$3\r\n"));
        assert!(!looks_like_client_start(b"*2\r\n:3\r\n"));
        assert!(!looks_like_client_start(b"PINGX\r\n"));
        for ok in [
            &b"+OK\r\n"[..],
            b"-ERR x\r\n",
            b":12\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"_\r\n",
            b",1.5\r\n",
            b"#t\r\n",
            b"!5\r\n",
            b"=9\r\n",
            b"(123\r\n",
            b"%2\r\n",
            b"~1\r\n",
            b">3\r\n",
            b"|1\r\n",
        ] {
            assert!(looks_like_server_start(ok), "{ok:?}");
        }
        for bad in [&b"x\r\n"[..], b":x\r\n", b"$abc\r\n", b"_1\r\n", b"#x\r\n", b"%-1\r\n", b""] {
            assert!(!looks_like_server_start(bad), "{bad:?}");
        }
    }

    #[test]
    fn long_arguments_are_cut() {
        let arg = vec![b'a'; 200];
        let mut req = b"*20\r\n$4\r\nMSET\r\n".to_vec();
        for _ in 0..19 {
            req.extend_from_slice(b"$200\r\n");
            req.extend_from_slice(&arg);
            req.extend_from_slice(b"\r\n");
        }
        let out = run(&[(&req, b"+OK\r\n")]);
        let q = out[0].query_text.as_deref().unwrap_or("");
        assert_eq!(q.len(), MAX_QUERY_TEXT);
        assert!(q.starts_with(&format!("MSET {} ", "a".repeat(MAX_ARG_TEXT))));
        assert_eq!(out[0].operation.as_deref(), Some("MSET"));
    }

    #[test]
    fn resp3_attribute_and_push_between_replies() {
        let out = run(&[
            (b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n", b"%1\r\n$5\r\nproto\r\n:3\r\n"),
            (
                b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
                b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n",
            ),
            (b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
        ]);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|e| !e.no_response && e.error.is_none()));
        assert_eq!(out[1].operation.as_deref(), Some("GET"));
    }

    #[test]
    fn blob_error_and_bare_code() {
        let out = run(&[
            (b"*1\r\n$3\r\nFOO\r\n", b"!21\r\nSYNTAX invalid syntax\r\n"),
            (b"*1\r\n$3\r\nBAR\r\n", b"-NOAUTH\r\n"),
        ]);
        let e0 = out[0].error.as_ref().expect("error");
        assert_eq!((e0.code.as_str(), e0.message.as_str()), ("SYNTAX", "invalid syntax"));
        let e1 = out[1].error.as_ref().expect("error");
        assert_eq!((e1.code.as_str(), e1.message.as_str()), ("NOAUTH", ""));
    }

    #[test]
    fn pending_queue_is_bounded() {
        let mut c = RedisConn::new();
        let mut out = Vec::new();
        for _ in 0..(MAX_PENDING + 5) {
            c.on_client_segment(Segment::new(b"*1\r\n$4\r\nPING\r\n", 1, 2), &mut out);
        }
        assert_eq!(c.pending_commands(), MAX_PENDING);
        assert_eq!(out.len(), 5);
        assert!(out.iter().all(|e| e.no_response));
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let mut reply = Vec::new();
        for _ in 0..(MAX_DEPTH + 5) {
            reply.extend_from_slice(b"*1\r\n");
        }
        reply.extend_from_slice(b":1\r\n");
        let out = run(&[(b"*1\r\n$4\r\nDEEP\r\n", &reply)]);
        assert_eq!(out.len(), 1);
    }
}
