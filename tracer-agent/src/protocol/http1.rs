//! HTTP/1.0 and HTTP/1.1 message parsing and per-connection exchange pairing.
//!
//! The kernel side reports every socket read/write as a [`Segment`]: a
//! captured prefix of the payload plus a count of `uncaptured` bytes that
//! followed it on the wire. [`Http1Conn`] turns the two byte streams of one
//! connection (client -> server and server -> client) into [`Exchange`]s, one
//! per request/response pair.
//!
//! Design rules:
//! * Pure code: no I/O, no clock, no global state. Every function is total:
//!   no input, however malformed, makes it panic.
//! * Bodies are never stored. They are skipped by their framing
//!   (`Content-Length`, chunked coding, or until close) and only counted; the
//!   skipping consumes uncaptured byte counts as well as captured bytes.
//! * No guessing at message starts. When a stream is out of sync (the agent
//!   attached mid-message, a message was malformed, framing was lost in an
//!   uncaptured gap), bytes are skipped and parsing restarts only at the start
//!   of a later segment that begins like an HTTP message.
//! * Bounded memory: a head is buffered up to [`MAX_HEAD_LEN`] bytes, and at
//!   most [`MAX_PENDING`] unanswered requests are remembered per connection.

use std::borrow::Cow;
use std::collections::VecDeque;

use compact_str::CompactString;

/// Largest request or response head (start line + headers) that is buffered.
/// A head that has not ended within this many bytes is treated as invalid.
pub const MAX_HEAD_LEN: usize = 64 * 1024;

/// Largest number of unanswered requests remembered per connection. When a
/// new request would exceed it, the oldest is emitted without a response.
pub const MAX_PENDING: usize = 256;

/// Longest method token accepted in a request line.
const MAX_METHOD_LEN: usize = 32;

/// Longest chunk-size line (size plus extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: u32 = 4096;

/// Longest trailer section accepted after the last chunk.
const MAX_TRAILER_LEN: u32 = 64 * 1024;

/// Head buffers that grew past this capacity are released after use.
const KEEP_BUF_CAPACITY: usize = 4096;

/// Methods recognised by [`looks_like_request`].
const KNOWN_METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"SEARCH",
    b"PURGE",
];

/// Outcome of parsing a message head from the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<T> {
    /// The head is complete and valid.
    Complete(T),
    /// The bytes so far are a valid beginning; more are needed.
    Incomplete,
    /// The bytes cannot be the beginning of a valid head.
    Invalid,
}

/// How the body following a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    None,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// The body runs until the connection closes (responses only).
    UntilClose,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Borrowed for the common methods, so that copying a head's method (to
    /// frame its response) costs nothing.
    pub method: Cow<'static, str>,
    /// Request target as sent (origin-form path + query, absolute-form URI,
    /// authority-form for CONNECT, or `*`). Non-UTF-8 bytes are replaced.
    pub target: CompactString,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Length of the head in bytes, including the terminating empty line.
    /// For a head truncated by the capture limit: the number of head bytes
    /// that were captured.
    pub header_len: usize,
    pub body: BodyFraming,
    /// Short texts (up to 24 bytes) are held inline, without an allocation.
    pub host: Option<CompactString>,
    pub user_agent: Option<CompactString>,
    pub traceparent: Option<String>,
    /// All `tracestate` headers, joined with `,`.
    pub tracestate: Option<String>,
    /// Single-header B3 propagation (`b3`).
    pub b3: Option<String>,
    pub x_b3_trace_id: Option<String>,
    pub x_b3_span_id: Option<String>,
    pub x_b3_sampled: Option<String>,
    pub content_length: Option<u64>,
    /// `Expect: 100-continue` was present.
    pub expect_continue: bool,
    pub upgrade: Option<String>,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Length of the head in bytes, including the terminating empty line
    /// (captured head bytes when the head was truncated by the capture limit).
    pub header_len: usize,
    pub body: BodyFraming,
    pub content_length: Option<u64>,
}

/// True when `buf` starts with a known method followed by a space, or is a
/// non-empty prefix of such a start (`"GE"`, `"POST"`).
pub fn looks_like_request(buf: &[u8]) -> bool {
    if buf.is_empty() {
        return false;
    }
    KNOWN_METHODS.iter().any(|m| {
        let n = m.len();
        if buf.len() > n {
            buf.starts_with(m) && buf.get(n) == Some(&b' ')
        } else {
            // `buf` is at most the method itself: a prefix of it.
            m.starts_with(buf)
        }
    })
}

/// True when `buf` starts with `HTTP/1.0 ` or `HTTP/1.1 `, or is a non-empty
/// prefix of one of them.
pub fn looks_like_response(buf: &[u8]) -> bool {
    if buf.is_empty() {
        return false;
    }
    [b"HTTP/1.1 ".as_slice(), b"HTTP/1.0 ".as_slice()].iter().any(|p| {
        if buf.len() >= p.len() {
            buf.starts_with(p)
        } else {
            p.starts_with(buf)
        }
    })
}

/// Parse a request head at the start of `buf` (leading empty lines are
/// skipped and counted in `header_len`).
pub fn parse_request(buf: &[u8]) -> Parse<RequestHead> {
    let start = skip_empty_lines(buf);
    let rest = buf.get(start..).unwrap_or(&[]);
    let line = match parse_request_line(rest) {
        Parse::Complete(l) => l,
        Parse::Incomplete => return incomplete_or_oversized(buf.len()),
        Parse::Invalid => return Parse::Invalid,
    };
    let hdr = rest.get(line.end..).unwrap_or(&[]);
    match parse_header_block(hdr) {
        Parse::Complete((n, info)) => {
            let header_len = start.saturating_add(line.end).saturating_add(n);
            if header_len > MAX_HEAD_LEN {
                return Parse::Invalid;
            }
            match build_request(&line, info, header_len, true) {
                Some(h) => Parse::Complete(h),
                None => Parse::Invalid,
            }
        }
        Parse::Incomplete => incomplete_or_oversized(buf.len()),
        Parse::Invalid => Parse::Invalid,
    }
}

/// Parse a response head at the start of `buf`. `request_method` is the
/// method of the request it answers, needed for body framing: responses to
/// HEAD and 1xx/204/304 responses have no body, a 2xx answer to CONNECT
/// turns the connection into a tunnel (`UntilClose`).
pub fn parse_response(buf: &[u8], request_method: &str) -> Parse<ResponseHead> {
    let line = match parse_status_line(buf) {
        Parse::Complete(l) => l,
        Parse::Incomplete => return incomplete_or_oversized(buf.len()),
        Parse::Invalid => return Parse::Invalid,
    };
    let hdr = buf.get(line.end..).unwrap_or(&[]);
    match parse_header_block(hdr) {
        Parse::Complete((n, info)) => {
            let header_len = line.end.saturating_add(n);
            if header_len > MAX_HEAD_LEN {
                return Parse::Invalid;
            }
            match build_response(&line, &info, header_len, request_method, true) {
                Some(h) => Parse::Complete(h),
                None => Parse::Invalid,
            }
        }
        Parse::Incomplete => incomplete_or_oversized(buf.len()),
        Parse::Invalid => Parse::Invalid,
    }
}

/// Best-effort reading of a request head whose end was not captured: the
/// request line must be complete; headers are taken from the complete header
/// lines that are present. `header_len` is the number of bytes in `buf`.
pub fn parse_request_truncated(buf: &[u8]) -> Option<RequestHead> {
    let start = skip_empty_lines(buf);
    let rest = buf.get(start..)?;
    let line = match parse_request_line(rest) {
        Parse::Complete(l) => l,
        _ => return None,
    };
    let info = complete_header_lines(rest.get(line.end..).unwrap_or(&[]));
    let mut head = build_request(&line, info, buf.len(), false)?;
    head.header_len = buf.len();
    Some(head)
}

/// Best-effort reading of a response head whose end was not captured: at
/// least `HTTP/1.x NNN` must be present; headers are taken from the complete
/// header lines that are present. `header_len` is the number of bytes in `buf`.
pub fn parse_response_truncated(buf: &[u8], request_method: &str) -> Option<ResponseHead> {
    let line = match parse_status_line(buf) {
        Parse::Complete(l) => l,
        Parse::Incomplete => {
            // The reason phrase may be what got cut: the status code alone
            // is enough.
            let version = match parse_http_version(buf) {
                Parse::Complete(v) => v,
                _ => return None,
            };
            let status = status_code_at(buf)?;
            StatusLine { version, status, end: buf.len() }
        }
        Parse::Invalid => return None,
    };
    let info = complete_header_lines(buf.get(line.end..).unwrap_or(&[]));
    let mut head = build_response(&line, &info, buf.len(), request_method, false)?;
    head.header_len = buf.len();
    Some(head)
}

fn incomplete_or_oversized<T>(len: usize) -> Parse<T> {
    if len >= MAX_HEAD_LEN {
        Parse::Invalid
    } else {
        Parse::Incomplete
    }
}

fn skip_empty_lines(buf: &[u8]) -> usize {
    buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count()
}

const fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
        )
}

/// [`tchar`] for every byte value.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = tchar(i as u8);
        i += 1;
    }
    t
};

fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// A byte allowed in a header field value: HTAB, SP, visible ASCII, obs-text.
fn is_value_char(b: u8) -> bool {
    b == b'\t' || (b >= b' ' && b != 0x7f)
}

/// Length of the run of token bytes at the start of `buf`. Eight bytes are
/// classified at a time as letters, digits or `-`, the bytes of nearly every
/// field name; the first other byte among them is found at once and looked
/// up.
fn token_run(buf: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    const LOW7: u64 = u64::from_le_bytes([0x7f; 8]);
    // For bytes below 0x80 (`t`), the high bit of each byte of the result is
    // set when that byte is at least `lo`, or more than `hi`. No byte carries
    // into the next.
    let at_least = |t: u64, lo: u8| t + ONES * u64::from(0x80 - lo);
    let above = |t: u64, hi: u8| t + ONES * u64::from(0x7f - hi);
    #[cfg(target_arch = "x86_64")]
    let mut i = match simd::token_run16(buf) {
        Ok(n) => return n,
        Err(from) => from,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let mut i = 0;
    while let Some(chunk) = buf.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let x = u64::from_le_bytes(*chunk);
        let t = x & LOW7;
        let folded = t | (ONES * 0x20);
        let letter = at_least(folded, b'a') & !above(folded, b'z');
        let digit = at_least(t, b'0') & !above(t, b'9');
        let dash = at_least(t, b'-') & !above(t, b'-');
        let other = !((letter | digit | dash) & !x) & HIGH;
        if other == 0 {
            i += 8;
            continue;
        }
        let at = i + (other.trailing_zeros() / 8) as usize;
        if !buf.get(at).is_some_and(|&b| is_tchar(b)) {
            return at;
        }
        i = at + 1;
    }
    let tail = buf.get(i..).unwrap_or(&[]);
    i + tail.iter().position(|&b| !is_tchar(b)).unwrap_or(tail.len())
}

/// Length of the run of value bytes at the start of `buf`. Eight bytes are
/// looked at a time: the first control character (HTAB, CR and LF included)
/// or DEL among them is found at once, and only HTAB lets the run go on.
fn value_run(buf: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    #[cfg(target_arch = "x86_64")]
    let mut i = match simd::value_run16(buf) {
        Ok(n) => return n,
        Err(from) => from,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let mut i = 0;
    while let Some(chunk) = buf.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let x = u64::from_le_bytes(*chunk);
        // High bit of each byte below 0x20, and of each byte equal to 0x7f.
        // Bytes above the lowest flagged one may be flagged wrongly (borrows),
        // the lowest one never is.
        let del = x ^ (ONES * 0x7f);
        let stop = (x.wrapping_sub(ONES * 0x20) & !x | del.wrapping_sub(ONES) & !del) & HIGH;
        if stop == 0 {
            i += 8;
            continue;
        }
        let at = i + (stop.trailing_zeros() / 8) as usize;
        if buf.get(at) != Some(&b'\t') {
            return at;
        }
        i = at + 1;
    }
    let tail = buf.get(i..).unwrap_or(&[]);
    i + tail.iter().position(|&b| !is_value_char(b)).unwrap_or(tail.len())
}

/// Sixteen bytes at a time with SSE2, which every x86-64 CPU has: the same
/// classifications as the eight-byte loops, which finish what is left.
#[cfg(target_arch = "x86_64")]
mod simd {
    use core::arch::x86_64::*;

    /// Token run from the start of `buf`: `Ok(length)` when it ends within
    /// the 16-byte blocks, else `Err(offset)` to go on from.
    #[inline]
    pub(super) fn token_run16(buf: &[u8]) -> Result<usize, usize> {
        let mut i = 0;
        while let Some(block) = buf.get(i..).and_then(<[u8]>::first_chunk::<16>) {
            // SAFETY: SSE2 is part of x86-64; the load reads the 16 bytes of
            // `block` and needs no alignment.
            let mask = unsafe {
                let x = _mm_loadu_si128(block.as_ptr().cast());
                let within = |v: __m128i, lo: u8, hi: u8| {
                    _mm_and_si128(
                        _mm_cmpgt_epi8(v, _mm_set1_epi8((lo - 1) as i8)),
                        _mm_cmplt_epi8(v, _mm_set1_epi8((hi + 1) as i8)),
                    )
                };
                // Bytes from 0x80 compare as negative: never in range.
                let letter = within(_mm_or_si128(x, _mm_set1_epi8(0x20)), b'a', b'z');
                let digit = within(x, b'0', b'9');
                let dash = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'-' as i8));
                _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(letter, digit), dash)) as u32
            };
            let other = !mask & 0xffff;
            if other == 0 {
                i += 16;
                continue;
            }
            let at = i + other.trailing_zeros() as usize;
            if !buf.get(at).is_some_and(|&b| super::is_tchar(b)) {
                return Ok(at);
            }
            i = at + 1;
        }
        Err(i)
    }

    /// Value run from the start of `buf`, as [`token_run16`].
    #[inline]
    pub(super) fn value_run16(buf: &[u8]) -> Result<usize, usize> {
        let mut i = 0;
        while let Some(block) = buf.get(i..).and_then(<[u8]>::first_chunk::<16>) {
            // SAFETY: as in token_run16.
            let stop = unsafe {
                let x = _mm_loadu_si128(block.as_ptr().cast());
                // 0x00..=0x1f: at least zero and below 0x20 as signed bytes.
                let ctl = _mm_and_si128(_mm_cmpgt_epi8(x, _mm_set1_epi8(-1)), _mm_cmplt_epi8(x, _mm_set1_epi8(0x20)));
                let del = _mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f));
                _mm_movemask_epi8(_mm_or_si128(ctl, del)) as u32
            };
            if stop == 0 {
                i += 16;
                continue;
            }
            let at = i + stop.trailing_zeros() as usize;
            if buf.get(at) != Some(&b'\t') {
                return Ok(at);
            }
            i = at + 1;
        }
        Err(i)
    }
}

struct RequestLine<'a> {
    method: &'a [u8],
    target: &'a [u8],
    version: u8,
    /// Offset just past the line's LF.
    end: usize,
}

struct StatusLine {
    version: u8,
    status: u16,
    end: usize,
}

/// `HTTP/1.0` or `HTTP/1.1` at the start of `buf`.
fn parse_http_version(buf: &[u8]) -> Parse<u8> {
    for (i, &expected) in b"HTTP/1.".iter().enumerate() {
        match buf.get(i) {
            None => return Parse::Incomplete,
            Some(&b) if b == expected => {}
            Some(_) => return Parse::Invalid,
        }
    }
    match buf.get(7) {
        None => Parse::Incomplete,
        Some(b'0') => Parse::Complete(0),
        Some(b'1') => Parse::Complete(1),
        Some(_) => Parse::Invalid,
    }
}

/// Expects an optional CR then LF at `at`; returns the offset past the LF.
fn line_end(buf: &[u8], at: usize) -> Parse<usize> {
    match buf.get(at) {
        None => Parse::Incomplete,
        Some(b'\n') => Parse::Complete(at.saturating_add(1)),
        Some(b'\r') => match buf.get(at.saturating_add(1)) {
            None => Parse::Incomplete,
            Some(b'\n') => Parse::Complete(at.saturating_add(2)),
            Some(_) => Parse::Invalid,
        },
        Some(_) => Parse::Invalid,
    }
}

/// `method SP target SP HTTP/1.x CRLF`.
fn parse_request_line(buf: &[u8]) -> Parse<RequestLine<'_>> {
    let mut i = 0usize;
    while let Some(&b) = buf.get(i) {
        if !is_tchar(b) {
            break;
        }
        i += 1;
        if i > MAX_METHOD_LEN {
            return Parse::Invalid;
        }
    }
    match buf.get(i) {
        None => return Parse::Incomplete,
        Some(b' ') if i > 0 => {}
        Some(_) => return Parse::Invalid,
    }
    let method = buf.get(..i).unwrap_or(&[]);
    let t0 = i + 1;
    let mut j = t0;
    while let Some(&b) = buf.get(j) {
        if b <= b' ' || b == 0x7f {
            break;
        }
        j += 1;
    }
    match buf.get(j) {
        None => return Parse::Incomplete,
        Some(b' ') if j > t0 => {}
        Some(_) => return Parse::Invalid,
    }
    let target = buf.get(t0..j).unwrap_or(&[]);
    let v0 = j + 1;
    let version = match parse_http_version(buf.get(v0..).unwrap_or(&[])) {
        Parse::Complete(v) => v,
        Parse::Incomplete => return Parse::Incomplete,
        Parse::Invalid => return Parse::Invalid,
    };
    let end = match line_end(buf, v0 + 8) {
        Parse::Complete(e) => e,
        Parse::Incomplete => return Parse::Incomplete,
        Parse::Invalid => return Parse::Invalid,
    };
    Parse::Complete(RequestLine { method, target, version, end })
}

/// Three-digit status code at offset 9 (`HTTP/1.x NNN`), at least 100.
fn status_code_at(buf: &[u8]) -> Option<u16> {
    if buf.get(8) != Some(&b' ') {
        return None;
    }
    let mut code: u16 = 0;
    for i in 9..12 {
        let d = *buf.get(i)?;
        if !d.is_ascii_digit() {
            return None;
        }
        code = code * 10 + u16::from(d - b'0');
    }
    if code < 100 {
        None
    } else {
        Some(code)
    }
}

/// `HTTP/1.x SP NNN [SP reason] CRLF` (the reason phrase may be absent).
fn parse_status_line(buf: &[u8]) -> Parse<StatusLine> {
    let version = match parse_http_version(buf) {
        Parse::Complete(v) => v,
        Parse::Incomplete => return Parse::Incomplete,
        Parse::Invalid => return Parse::Invalid,
    };
    match buf.get(8) {
        None => return Parse::Incomplete,
        Some(b' ') => {}
        Some(_) => return Parse::Invalid,
    }
    for i in 9..12 {
        match buf.get(i) {
            None => return Parse::Incomplete,
            Some(d) if d.is_ascii_digit() => {}
            Some(_) => return Parse::Invalid,
        }
    }
    let status = match status_code_at(buf) {
        Some(s) => s,
        None => return Parse::Invalid,
    };
    let end = match buf.get(12) {
        None => return Parse::Incomplete,
        Some(b' ') => {
            // Reason phrase: anything up to the end of the line, except
            // control characters other than HTAB.
            let mut k = 13usize;
            loop {
                match buf.get(k) {
                    None => return Parse::Incomplete,
                    Some(b'\n') | Some(b'\r') => break,
                    Some(&b) if b == b'\t' || b >= b' ' => k += 1,
                    Some(_) => return Parse::Invalid,
                }
            }
            match line_end(buf, k) {
                Parse::Complete(e) => e,
                Parse::Incomplete => return Parse::Incomplete,
                Parse::Invalid => return Parse::Invalid,
            }
        }
        Some(_) => match line_end(buf, 12) {
            Parse::Complete(e) => e,
            Parse::Incomplete => return Parse::Incomplete,
            Parse::Invalid => return Parse::Invalid,
        },
    };
    Parse::Complete(StatusLine { version, status, end })
}

/// Header fields relevant to framing and tracing.
#[derive(Debug, Default)]
struct HeaderInfo {
    content_length: Option<u64>,
    content_length_invalid: bool,
    te_present: bool,
    te_chunked_last: bool,
    host: Option<CompactString>,
    user_agent: Option<CompactString>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    b3: Option<String>,
    x_b3_trace_id: Option<String>,
    x_b3_span_id: Option<String>,
    x_b3_sampled: Option<String>,
    expect_continue: bool,
    upgrade: Option<String>,
}

/// The bytes as text: borrowed when they are UTF-8, else with U+FFFD for each
/// invalid sequence. Heads are nearly always ASCII, which is checked a word at
/// a time instead of decoded.
fn lossy(b: &[u8]) -> Cow<'_, str> {
    if b.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        return Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(b) });
    }
    String::from_utf8_lossy(b)
}

fn header_text(value: &[u8]) -> String {
    trim_text(&lossy(value)).to_string()
}

/// `str::trim`, skipped when both ends are visible ASCII (the fields' own
/// spaces and tabs are already off): no character decoding for nearly every
/// value.
fn trim_text(s: &str) -> &str {
    let visible = |b: Option<&u8>| b.is_some_and(|&b| b > b' ' && b < 0x7f);
    let b = s.as_bytes();
    if visible(b.first()) && visible(b.last()) {
        s
    } else {
        s.trim()
    }
}

/// The field's text, unless an earlier field of the same name set it.
fn set_first<T: for<'a> From<&'a str>>(slot: &mut Option<T>, value: &[u8]) {
    if slot.is_none() {
        *slot = Some(T::from(trim_text(&lossy(value))));
    }
}

/// `Content-Length` value: one or more identical comma-separated decimals.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut result: Option<u64> = None;
    for part in value.split(|&b| b == b',') {
        let part = trim_ascii(part);
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut n: u64 = 0;
        for &d in part {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        match result {
            Some(prev) if prev != n => return None,
            _ => result = Some(n),
        }
    }
    result
}

fn trim_ascii(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

impl HeaderInfo {
    /// Take note of one header field.
    fn add(&mut self, name: &[u8], value: &[u8]) {
        // The length picks the few names worth comparing.
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => match parse_content_length(value) {
                Some(n) => match self.content_length {
                    Some(prev) if prev != n => self.content_length_invalid = true,
                    _ => self.content_length = Some(n),
                },
                None => self.content_length_invalid = true,
            },
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                for coding in value.split(|&b| b == b',') {
                    let coding = trim_ascii(coding);
                    if coding.is_empty() {
                        continue;
                    }
                    self.te_present = true;
                    self.te_chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                }
            }
            4 if name.eq_ignore_ascii_case(b"host") => set_first(&mut self.host, value),
            10 if name.eq_ignore_ascii_case(b"user-agent") => set_first(&mut self.user_agent, value),
            11 if name.eq_ignore_ascii_case(b"traceparent") => set_first(&mut self.traceparent, value),
            10 if name.eq_ignore_ascii_case(b"tracestate") => {
                let v = header_text(value);
                if !v.is_empty() {
                    match &mut self.tracestate {
                        Some(existing) if !existing.is_empty() => {
                            existing.push(',');
                            existing.push_str(&v);
                        }
                        slot => *slot = Some(v),
                    }
                } else if self.tracestate.is_none() {
                    self.tracestate = Some(v);
                }
            }
            2 if name.eq_ignore_ascii_case(b"b3") => set_first(&mut self.b3, value),
            12 if name.eq_ignore_ascii_case(b"x-b3-traceid") => set_first(&mut self.x_b3_trace_id, value),
            11 if name.eq_ignore_ascii_case(b"x-b3-spanid") => set_first(&mut self.x_b3_span_id, value),
            12 if name.eq_ignore_ascii_case(b"x-b3-sampled") => set_first(&mut self.x_b3_sampled, value),
            6 if name.eq_ignore_ascii_case(b"expect") && trim_ascii(value).eq_ignore_ascii_case(b"100-continue") => {
                self.expect_continue = true
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => set_first(&mut self.upgrade, value),
            _ => {}
        }
    }
}

/// Parses the header block (after the start line) up to and including the
/// empty line. Returns its length and the interesting fields.
fn parse_header_block(buf: &[u8]) -> Parse<(usize, HeaderInfo)> {
    let mut info = HeaderInfo::default();
    match scan_header_block(buf, |name, value| info.add(name, value)) {
        Parse::Complete(n) => Parse::Complete((n, info)),
        Parse::Incomplete => Parse::Incomplete,
        Parse::Invalid => Parse::Invalid,
    }
}

/// Reads the header block at the start of `buf` up to and including the empty
/// line, handing each field's name and value to `field`; returns its length.
///
/// A field line is a token name, a colon, optional spaces or tabs, then a
/// value of HTAB, SP, visible characters and obs-text, ended by CRLF or a
/// bare LF; trailing spaces and tabs are not part of the value. Obsolete line
/// folding and whitespace before the colon are invalid (the rules of
/// `httparse::parse_headers`, with no limit on the number of fields).
fn scan_header_block(buf: &[u8], mut field: impl FnMut(&[u8], &[u8])) -> Parse<usize> {
    let mut at = 0usize;
    loop {
        let line = buf.get(at..).unwrap_or(&[]);
        match line.first() {
            None => return Parse::Incomplete,
            Some(b'\r' | b'\n') => return line_end(buf, at),
            Some(_) => {}
        }
        let name_len = token_run(line);
        match line.get(name_len) {
            None => return Parse::Incomplete,
            Some(b':') if name_len > 0 => {}
            Some(_) => return Parse::Invalid,
        }
        let after_colon = line.get(name_len + 1..).unwrap_or(&[]);
        let spaces = after_colon.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(after_colon.len());
        let rest = after_colon.get(spaces..).unwrap_or(&[]);
        let value_len = value_run(rest);
        let value = rest.get(..value_len).unwrap_or(&[]);
        let value = match value.iter().rposition(|&b| b != b' ' && b != b'\t') {
            Some(last) => value.get(..=last).unwrap_or(value),
            None => &[],
        };
        at = match line_end(buf, at + name_len + 1 + spaces + value_len) {
            Parse::Complete(end) => end,
            Parse::Incomplete => return Parse::Incomplete,
            Parse::Invalid => return Parse::Invalid,
        };
        field(line.get(..name_len).unwrap_or(&[]), value);
    }
}

/// Fields from the complete header lines of a header block whose end is
/// missing. Lines that do not parse leave the result empty.
fn complete_header_lines(hdr: &[u8]) -> HeaderInfo {
    let Some(last_nl) = hdr.iter().rposition(|&b| b == b'\n') else {
        return HeaderInfo::default();
    };
    let mut tmp = Vec::with_capacity(last_nl + 3);
    tmp.extend_from_slice(hdr.get(..=last_nl).unwrap_or(&[]));
    tmp.extend_from_slice(b"\r\n");
    match parse_header_block(&tmp) {
        Parse::Complete((_, info)) => info,
        _ => HeaderInfo::default(),
    }
}

/// `strict`: reject heads whose framing headers are contradictory. When not
/// strict (truncated heads), framing is reported as far as it is known.
fn build_request(line: &RequestLine<'_>, info: HeaderInfo, header_len: usize, strict: bool) -> Option<RequestHead> {
    let body = if info.te_present {
        if info.te_chunked_last {
            BodyFraming::Chunked
        } else if strict {
            return None;
        } else {
            BodyFraming::None
        }
    } else if info.content_length_invalid {
        if strict {
            return None;
        }
        BodyFraming::None
    } else {
        match info.content_length {
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::None,
        }
    };
    Some(RequestHead {
        method: method_text(line.method),
        target: CompactString::new(lossy(line.target)),
        version: line.version,
        header_len,
        body,
        host: info.host,
        user_agent: info.user_agent,
        traceparent: info.traceparent,
        tracestate: info.tracestate,
        b3: info.b3,
        x_b3_trace_id: info.x_b3_trace_id,
        x_b3_span_id: info.x_b3_span_id,
        x_b3_sampled: info.x_b3_sampled,
        content_length: if info.content_length_invalid { None } else { info.content_length },
        expect_continue: info.expect_continue,
        upgrade: info.upgrade,
    })
}

/// A method token as text: one of the known methods without allocating.
fn method_text(m: &[u8]) -> Cow<'static, str> {
    match KNOWN_METHODS.iter().find(|known| **known == m) {
        // Known methods are ASCII: borrowed for 'static.
        Some(known) => lossy(known),
        None => Cow::Owned(lossy(m).into_owned()),
    }
}

fn build_response(
    line: &StatusLine,
    info: &HeaderInfo,
    header_len: usize,
    request_method: &str,
    strict: bool,
) -> Option<ResponseHead> {
    let status = line.status;
    let body = if request_method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
        BodyFraming::None
    } else if request_method == "CONNECT" && (200..300).contains(&status) {
        BodyFraming::UntilClose
    } else if info.te_present {
        if info.te_chunked_last {
            BodyFraming::Chunked
        } else {
            BodyFraming::UntilClose
        }
    } else if info.content_length_invalid {
        if strict {
            return None;
        }
        BodyFraming::UntilClose
    } else {
        match info.content_length {
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::UntilClose,
        }
    };
    Some(ResponseHead {
        status,
        version: line.version,
        header_len,
        body,
        content_length: if info.content_length_invalid { None } else { info.content_length },
    })
}

// ---------------------------------------------------------------------------
// Body skipping
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkPhase {
    /// Hex digits of a chunk size.
    SizeDigits,
    /// Chunk extensions (or whitespace) after the size, up to the LF.
    SizeExt,
    /// Saw CR after the size line, expecting LF.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// After chunk data, expecting CR or LF.
    DataCr,
    /// After chunk data and CR, expecting LF.
    DataLf,
    /// Trailer section after the last chunk, until an empty line.
    Trailer,
    /// The terminating empty line was seen.
    Done,
}

/// Incremental skipper for a chunked body. Counts decoded payload bytes.
#[derive(Debug, Clone)]
struct ChunkDecoder {
    phase: ChunkPhase,
    size: u64,
    digits: u8,
    line_len: u32,
    trailer_len: u32,
    remaining: u64,
}

enum ChunkStep {
    /// All input consumed; the body continues.
    More,
    /// The body ended after this many bytes of the input.
    Done(usize),
    /// Malformed chunk framing at this offset of the input.
    Error(usize),
}

impl ChunkDecoder {
    fn new() -> Self {
        ChunkDecoder { phase: ChunkPhase::SizeDigits, size: 0, digits: 0, line_len: 0, trailer_len: 0, remaining: 0 }
    }

    fn start_size_line(&mut self) {
        self.phase = ChunkPhase::SizeDigits;
        self.size = 0;
        self.digits = 0;
        self.line_len = 0;
    }

    fn end_size_line(&mut self) {
        if self.size == 0 {
            self.phase = ChunkPhase::Trailer;
            self.line_len = 0;
            self.trailer_len = 0;
        } else {
            self.phase = ChunkPhase::Data;
            self.remaining = self.size;
        }
    }

    fn feed(&mut self, data: &[u8], payload: &mut u64) -> ChunkStep {
        let mut i = 0usize;
        while i < data.len() {
            if self.phase == ChunkPhase::Data {
                let avail = (data.len() - i) as u64;
                let take = self.remaining.min(avail);
                // `take` <= avail, which fits in usize.
                i += take as usize;
                self.remaining -= take;
                *payload = payload.saturating_add(take);
                if self.remaining == 0 {
                    self.phase = ChunkPhase::DataCr;
                }
                continue;
            }
            let Some(&b) = data.get(i) else { break };
            let ok = match self.phase {
                ChunkPhase::SizeDigits => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits >= 16 {
                            false
                        } else {
                            let v = match b {
                                b'0'..=b'9' => b - b'0',
                                b'a'..=b'f' => b - b'a' + 10,
                                _ => b - b'A' + 10,
                            };
                            self.size = (self.size << 4) | u64::from(v);
                            self.digits += 1;
                            true
                        }
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => {
                        self.phase = ChunkPhase::SizeExt;
                        true
                    }
                    b'\r' if self.digits > 0 => {
                        self.phase = ChunkPhase::SizeLf;
                        true
                    }
                    b'\n' if self.digits > 0 => {
                        self.end_size_line();
                        true
                    }
                    _ => false,
                },
                ChunkPhase::SizeExt => match b {
                    b'\n' => {
                        self.end_size_line();
                        true
                    }
                    b'\r' => {
                        self.phase = ChunkPhase::SizeLf;
                        true
                    }
                    _ => {
                        self.line_len = self.line_len.saturating_add(1);
                        self.line_len <= MAX_CHUNK_LINE
                    }
                },
                ChunkPhase::SizeLf => {
                    if b == b'\n' {
                        self.end_size_line();
                        true
                    } else {
                        false
                    }
                }
                ChunkPhase::DataCr => match b {
                    b'\r' => {
                        self.phase = ChunkPhase::DataLf;
                        true
                    }
                    b'\n' => {
                        self.start_size_line();
                        true
                    }
                    _ => false,
                },
                ChunkPhase::DataLf => {
                    if b == b'\n' {
                        self.start_size_line();
                        true
                    } else {
                        false
                    }
                }
                ChunkPhase::Trailer => {
                    self.trailer_len = self.trailer_len.saturating_add(1);
                    match b {
                        b'\n' => {
                            if self.line_len == 0 {
                                self.phase = ChunkPhase::Done;
                            } else {
                                self.line_len = 0;
                            }
                        }
                        b'\r' => {}
                        _ => self.line_len = self.line_len.saturating_add(1),
                    }
                    self.trailer_len <= MAX_TRAILER_LEN
                }
                ChunkPhase::Data | ChunkPhase::Done => true,
            };
            if !ok {
                return ChunkStep::Error(i);
            }
            i += 1;
            if self.phase == ChunkPhase::Done {
                return ChunkStep::Done(i);
            }
        }
        ChunkStep::More
    }

    /// Consumes `gap` uncaptured bytes. Possible only when the gap lies
    /// within chunk data, or covers the rest of the data plus its CRLF
    /// exactly (the segment then ends on a chunk boundary). Returns false
    /// when the framing is lost.
    /// Consume `gap` uncaptured bytes ending a segment. Framing survives a
    /// gap that lies inside chunk data or covers only the CRLF after it. A
    /// gap that covers exactly the rest of the data, its CRLF and the last
    /// chunk (`0\r\n\r\n`) ends the message: servers write the final chunk
    /// together with the data before it, so this is how a large chunked
    /// response usually ends when only its beginning was captured.
    fn feed_gap(&mut self, gap: u64, payload: &mut u64) -> GapStep {
        const LAST_CHUNK: u64 = 5; // "0\r\n\r\n"
        match self.phase {
            ChunkPhase::Data => {
                if gap <= self.remaining {
                    self.remaining -= gap;
                    *payload = payload.saturating_add(gap);
                    if self.remaining == 0 {
                        self.phase = ChunkPhase::DataCr;
                    }
                    GapStep::Continue
                } else if Some(gap) == self.remaining.checked_add(2) {
                    *payload = payload.saturating_add(self.remaining);
                    self.remaining = 0;
                    self.start_size_line();
                    GapStep::Continue
                } else if Some(gap) == self.remaining.checked_add(2 + LAST_CHUNK) {
                    *payload = payload.saturating_add(self.remaining);
                    self.remaining = 0;
                    self.phase = ChunkPhase::Done;
                    GapStep::Done
                } else {
                    GapStep::Lost
                }
            }
            ChunkPhase::DataCr if gap == 2 => {
                self.start_size_line();
                GapStep::Continue
            }
            ChunkPhase::DataLf if gap == 1 => {
                self.start_size_line();
                GapStep::Continue
            }
            ChunkPhase::DataCr if gap == 2 + LAST_CHUNK => {
                self.phase = ChunkPhase::Done;
                GapStep::Done
            }
            ChunkPhase::DataLf if gap == 1 + LAST_CHUNK => {
                self.phase = ChunkPhase::Done;
                GapStep::Done
            }
            _ if gap == 0 => GapStep::Continue,
            _ => GapStep::Lost,
        }
    }
}

enum GapStep {
    Continue,
    Done,
    Lost,
}

#[derive(Debug, Clone)]
enum BodyState {
    Length(u64),
    Chunked(ChunkDecoder),
    UntilClose,
    /// Framing was lost (uncaptured gap across framing bytes, malformed
    /// chunking, or a truncated head): bytes belong to the current message
    /// until a segment starts like a new message.
    Lost,
}

enum BodyResult {
    /// All input consumed; the body continues.
    Continue,
    /// The body ended after `used` captured bytes; `gap_left` uncaptured
    /// bytes remain (only when all captured bytes were used).
    Done { used: usize, gap_left: u64 },
    /// Malformed framing at captured offset `pos`; the state is now `Lost`.
    Invalid { pos: usize },
    /// An uncaptured gap crossed framing bytes; the state is now `Lost`.
    BecameLost,
}

fn feed_body(body: &mut BodyState, data: &[u8], gap: u64, payload: &mut u64) -> BodyResult {
    match body {
        BodyState::Length(rem) => {
            let take = (*rem).min(data.len() as u64);
            *rem -= take;
            *payload = payload.saturating_add(take);
            if *rem == 0 {
                return BodyResult::Done {
                    // `take` <= data.len().
                    used: take as usize,
                    gap_left: gap,
                };
            }
            let gtake = (*rem).min(gap);
            *rem -= gtake;
            *payload = payload.saturating_add(gtake);
            if *rem == 0 {
                BodyResult::Done { used: data.len(), gap_left: gap - gtake }
            } else {
                BodyResult::Continue
            }
        }
        BodyState::Chunked(dec) => match dec.feed(data, payload) {
            ChunkStep::Done(used) => BodyResult::Done { used, gap_left: gap },
            ChunkStep::Error(pos) => {
                *body = BodyState::Lost;
                BodyResult::Invalid { pos }
            }
            ChunkStep::More => match dec.feed_gap(gap, payload) {
                GapStep::Continue => BodyResult::Continue,
                GapStep::Done => BodyResult::Done { used: data.len(), gap_left: 0 },
                GapStep::Lost => {
                    *payload = payload.saturating_add(gap);
                    *body = BodyState::Lost;
                    BodyResult::BecameLost
                }
            },
        },
        BodyState::UntilClose | BodyState::Lost => {
            *payload = payload.saturating_add(data.len() as u64).saturating_add(gap);
            BodyResult::Continue
        }
    }
}

/// Initial state for the body described by `framing`; `None` when there is
/// no body to skip.
fn body_state(framing: BodyFraming) -> Option<BodyState> {
    match framing {
        BodyFraming::None | BodyFraming::Length(0) => None,
        BodyFraming::Length(n) => Some(BodyState::Length(n)),
        BodyFraming::Chunked => Some(BodyState::Chunked(ChunkDecoder::new())),
        BodyFraming::UntilClose => Some(BodyState::UntilClose),
    }
}

// ---------------------------------------------------------------------------
// Head accumulation
// ---------------------------------------------------------------------------

enum HeadStep<T> {
    /// Head complete; `used` bytes of the newly supplied data belong to it.
    Complete(T, usize),
    NeedMore,
    Invalid,
    Oversized,
}

fn has_terminator(buf: &[u8]) -> bool {
    buf.windows(2).any(|w| w == b"\n\n") || buf.windows(3).any(|w| w == b"\n\r\n")
}

/// Appends `data` to the head buffer (up to [`MAX_HEAD_LEN`]) and parses it
/// when it may hold a complete head (first bytes of a head, or an empty line
/// among the new bytes), so a head arriving in many small pieces costs
/// linear time.
fn accumulate<T>(
    buf: &mut Vec<u8>,
    data: &[u8],
    parse: impl Fn(&[u8]) -> Parse<T>,
    head_len: impl Fn(&T) -> usize,
) -> HeadStep<T> {
    let old = buf.len();
    let room = MAX_HEAD_LEN.saturating_sub(old);
    let add = data.get(..room.min(data.len())).unwrap_or(data);
    if old == 0 {
        // A head that starts in this segment is parsed where it lies; it is
        // copied to the buffer only when it is not complete.
        match parse(add) {
            Parse::Complete(h) => {
                let n = head_len(&h);
                return if n > 0 && n <= add.len() { HeadStep::Complete(h, n) } else { HeadStep::Invalid };
            }
            Parse::Incomplete => {
                buf.extend_from_slice(add);
                return if buf.len() >= MAX_HEAD_LEN { HeadStep::Oversized } else { HeadStep::NeedMore };
            }
            Parse::Invalid => {
                buf.extend_from_slice(add);
                return if buf.len() >= MAX_HEAD_LEN { HeadStep::Oversized } else { HeadStep::Invalid };
            }
        }
    }
    buf.extend_from_slice(add);
    let window = buf.get(old.saturating_sub(3)..).unwrap_or(&[]);
    if old != 0 && !has_terminator(window) {
        return if buf.len() >= MAX_HEAD_LEN { HeadStep::Oversized } else { HeadStep::NeedMore };
    }
    match parse(buf) {
        Parse::Complete(h) => {
            let n = head_len(&h);
            match n.checked_sub(old) {
                Some(used) if n > old && used <= add.len() => HeadStep::Complete(h, used),
                _ => HeadStep::Invalid,
            }
        }
        Parse::Incomplete => {
            if buf.len() >= MAX_HEAD_LEN {
                HeadStep::Oversized
            } else {
                HeadStep::NeedMore
            }
        }
        Parse::Invalid => {
            if buf.len() >= MAX_HEAD_LEN {
                HeadStep::Oversized
            } else {
                HeadStep::Invalid
            }
        }
    }
}

fn reset_buf(buf: &mut Vec<u8>) {
    buf.clear();
    if buf.capacity() > KEEP_BUF_CAPACITY {
        buf.shrink_to(KEEP_BUF_CAPACITY);
    }
}

fn rest_of(data: &[u8], used: usize) -> &[u8] {
    data.get(used..).unwrap_or(&[])
}

// ---------------------------------------------------------------------------
// Connection state
// ---------------------------------------------------------------------------

/// One socket syscall's worth of payload in one direction.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// Captured prefix of the payload.
    pub data: &'a [u8],
    /// Bytes that followed `data` on the wire but were not captured.
    pub uncaptured: u64,
    /// Monotonic syscall entry time, ns.
    pub ts_enter: u64,
    /// Monotonic syscall exit time, ns.
    pub ts_exit: u64,
}

impl<'a> Segment<'a> {
    /// A fully captured segment.
    pub fn new(data: &'a [u8], ts_enter: u64, ts_exit: u64) -> Self {
        Segment { data, uncaptured: 0, ts_enter, ts_exit }
    }

    fn total_len(&self) -> u64 {
        (self.data.len() as u64).saturating_add(self.uncaptured)
    }
}

/// One request and (if seen) its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The request's number on its connection, from 0 in the order the
    /// request heads were seen ([`Http1Conn::next_request_id`]).
    pub seq: u64,
    /// Boxed: an exchange is moved several times on its way out, its head
    /// (the largest part) only once.
    pub request: Box<RequestHead>,
    /// None when the connection closed, or the request was abandoned, before
    /// a response was seen.
    pub response: Option<ResponseHead>,
    /// Entry/exit of the first segment of the request.
    pub req_first_enter: u64,
    pub req_first_exit: u64,
    /// Exit of the last segment of the request seen before the exchange was
    /// emitted.
    pub req_last_exit: u64,
    /// Entry of the first segment of the final response (interim 1xx
    /// responses are not counted); 0 without a response.
    pub resp_first_enter: u64,
    /// Exit of the last segment of the response; 0 without a response.
    pub resp_last_exit: u64,
    /// Body bytes as framed on the wire (chunked: decoded payload size).
    /// When the response completes before the request body (early reply),
    /// the request body counts what was seen until then.
    pub request_body_size: u64,
    pub response_body_size: u64,
    /// The request head was cut by the capture limit: header fields may be
    /// missing.
    pub headers_truncated: bool,
    /// The response head was cut by the capture limit.
    pub response_headers_truncated: bool,
    /// Body framing of the request or response was lost in an uncaptured gap
    /// or by malformed chunking: its end was inferred from the start of the
    /// next message (or close) and body sizes are approximate.
    pub framing_lost: bool,
    /// The connection closed before the response body was complete.
    pub response_incomplete: bool,
}

/// Counters kept per connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Http1Stats {
    /// Request heads parsed (including truncated ones).
    pub requests: u64,
    /// Final response heads parsed (including truncated ones).
    pub responses: u64,
    /// Interim 1xx responses (other than 101) skipped.
    pub interim_responses: u64,
    /// Exchanges emitted.
    pub exchanges: u64,
    /// Exchanges emitted without a response.
    pub unanswered: u64,
    /// Bytes (captured and uncaptured) skipped while out of sync.
    pub desync_bytes_skipped: u64,
    /// Malformed heads or chunked framing.
    pub invalid_messages: u64,
    /// Heads longer than [`MAX_HEAD_LEN`] without terminator.
    pub oversized_heads: u64,
    /// Heads whose end was not captured but whose start line was.
    pub truncated_heads: u64,
    /// Heads whose end was not captured and whose start line was unusable.
    pub dropped_heads: u64,
    /// Responses seen while no request was pending.
    pub orphan_responses: u64,
    /// Responses that started inside an uncaptured gap (their request is
    /// emitted without a response).
    pub lost_responses: u64,
    /// Requests emitted unanswered because [`MAX_PENDING`] was exceeded.
    pub pending_overflow: u64,
    /// Messages whose body framing was lost.
    pub framing_lost: u64,
    /// Protocol switches (101 or a successful CONNECT).
    pub upgraded: u64,
    /// Bytes ignored after a protocol switch.
    pub bytes_after_upgrade: u64,
}

#[derive(Debug, Clone)]
struct Pending {
    id: u64,
    head: Box<RequestHead>,
    first_enter: u64,
    first_exit: u64,
    last_exit: u64,
    body_size: u64,
    truncated: bool,
    framing_lost: bool,
}

#[derive(Debug, Clone)]
struct CurResp {
    req: Pending,
    head: ResponseHead,
    first_enter: u64,
    last_exit: u64,
    body_size: u64,
    truncated: bool,
    framing_lost: bool,
    incomplete: bool,
}

#[derive(Debug, Clone)]
enum DirState {
    /// At a message boundary or inside a head (the head buffer tells which).
    Head,
    /// Skipping the body of the current message.
    Body(BodyState),
    /// Out of sync: skip until a segment starts like a message.
    Skip,
}

/// Pairs requests and responses of one HTTP/1.x connection.
#[derive(Debug, Clone)]
pub struct Http1Conn {
    req_state: DirState,
    req_buf: Vec<u8>,
    req_head_enter: u64,
    req_head_exit: u64,
    /// Id of the request whose body is being read.
    req_cur: Option<u64>,
    /// The request whose body is expected was sent with
    /// `Expect: 100-continue` and got a final response before any body byte:
    /// the client may skip the body and send the next request instead.
    req_body_optional: bool,
    resp_state: DirState,
    resp_buf: Vec<u8>,
    resp_head_enter: u64,
    /// Final response whose body is being read.
    resp_cur: Option<CurResp>,
    pending: VecDeque<Pending>,
    next_id: u64,
    upgraded: bool,
    stats: Http1Stats,
}

impl Default for Http1Conn {
    fn default() -> Self {
        Self::new()
    }
}

fn opt_len(s: &Option<String>) -> usize {
    s.as_ref().map_or(0, |s| s.capacity())
}

fn compact_len(s: &CompactString) -> usize {
    if s.is_heap_allocated() {
        s.capacity()
    } else {
        0
    }
}

fn head_heap_size(h: &RequestHead) -> usize {
    let method = match &h.method {
        Cow::Owned(m) => m.capacity(),
        Cow::Borrowed(_) => 0,
    };
    method
        + compact_len(&h.target)
        + h.host.as_ref().map_or(0, compact_len)
        + h.user_agent.as_ref().map_or(0, compact_len)
        + opt_len(&h.traceparent)
        + opt_len(&h.tracestate)
        + opt_len(&h.b3)
        + opt_len(&h.x_b3_trace_id)
        + opt_len(&h.x_b3_span_id)
        + opt_len(&h.x_b3_sampled)
        + opt_len(&h.upgrade)
}

impl Http1Conn {
    pub fn new() -> Self {
        Http1Conn {
            req_state: DirState::Head,
            req_buf: Vec::new(),
            req_head_enter: 0,
            req_head_exit: 0,
            req_cur: None,
            req_body_optional: false,
            resp_state: DirState::Head,
            resp_buf: Vec::new(),
            resp_head_enter: 0,
            resp_cur: None,
            pending: VecDeque::new(),
            next_id: 0,
            upgraded: false,
            stats: Http1Stats::default(),
        }
    }

    pub fn stats(&self) -> &Http1Stats {
        &self.stats
    }

    /// After a 101 Switching Protocols (or a successful CONNECT) the
    /// connection carries another protocol: further bytes are ignored.
    pub fn upgraded(&self) -> bool {
        self.upgraded
    }

    /// Number of requests waiting for a response.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Approximate heap memory held by this connection's state: the two
    /// head buffers (each at most [`MAX_HEAD_LEN`]) plus the remembered
    /// request heads (at most [`MAX_PENDING`], each bounded by a head).
    pub fn buffered_bytes(&self) -> usize {
        let request = |h: &RequestHead| head_heap_size(h) + std::mem::size_of::<RequestHead>();
        let pending: usize = self.pending.iter().map(|p| request(&p.head) + std::mem::size_of::<Pending>()).sum();
        let cur = self.resp_cur.as_ref().map_or(0, |c| request(&c.req.head) + std::mem::size_of::<CurResp>());
        self.req_buf.capacity() + self.resp_buf.capacity() + pending + cur
    }

    fn emit_answered(&mut self, r: CurResp, out: &mut Vec<Exchange>) {
        self.stats.exchanges += 1;
        let req = r.req;
        out.push(Exchange {
            seq: req.id,
            request: req.head,
            response: Some(r.head),
            req_first_enter: req.first_enter,
            req_first_exit: req.first_exit,
            req_last_exit: req.last_exit,
            resp_first_enter: r.first_enter,
            resp_last_exit: r.last_exit,
            request_body_size: req.body_size,
            response_body_size: r.body_size,
            headers_truncated: req.truncated,
            response_headers_truncated: r.truncated,
            framing_lost: req.framing_lost || r.framing_lost,
            response_incomplete: r.incomplete,
        });
    }

    fn emit_unanswered(&mut self, req: Pending, out: &mut Vec<Exchange>) {
        self.stats.exchanges += 1;
        self.stats.unanswered += 1;
        if self.req_cur == Some(req.id) {
            self.req_cur = None;
        }
        out.push(Exchange {
            seq: req.id,
            request: req.head,
            response: None,
            req_first_enter: req.first_enter,
            req_first_exit: req.first_exit,
            req_last_exit: req.last_exit,
            resp_first_enter: 0,
            resp_last_exit: 0,
            request_body_size: req.body_size,
            response_body_size: 0,
            headers_truncated: req.truncated,
            response_headers_truncated: false,
            framing_lost: req.framing_lost,
            response_incomplete: false,
        });
    }

    /// The number the next request head seen will get: the heads seen by a
    /// call are those numbered from the value before it to the value after.
    pub fn next_request_id(&self) -> u64 {
        self.next_id
    }

    /// The head of request `id` while it waits for its response.
    pub fn request_head(&self, id: u64) -> Option<&RequestHead> {
        self.pending.iter().rev().find(|p| p.id == id).map(|p| &*p.head)
    }

    /// The request with this id, wherever it currently is.
    fn request_mut(&mut self, id: u64) -> Option<&mut Pending> {
        if let Some(idx) = self.pending.iter().rposition(|p| p.id == id) {
            return self.pending.get_mut(idx);
        }
        match self.resp_cur.as_mut() {
            Some(c) if c.req.id == id => Some(&mut c.req),
            _ => None,
        }
    }

    fn push_request(&mut self, p: Pending, out: &mut Vec<Exchange>) {
        while self.pending.len() >= MAX_PENDING {
            match self.pending.pop_front() {
                Some(old) => {
                    self.stats.pending_overflow += 1;
                    self.emit_unanswered(old, out);
                }
                None => break,
            }
        }
        self.pending.push_back(p);
    }

    fn new_pending(&mut self, head: RequestHead, seg: &Segment<'_>) -> Pending {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.stats.requests += 1;
        Pending {
            id,
            head: Box::new(head),
            first_enter: self.req_head_enter,
            first_exit: self.req_head_exit,
            last_exit: seg.ts_exit,
            body_size: 0,
            truncated: false,
            framing_lost: false,
        }
    }

    /// Bytes travelling client -> server.
    pub fn on_request_segment(&mut self, seg: Segment<'_>, out: &mut Vec<Exchange>) {
        if self.upgraded {
            self.stats.bytes_after_upgrade = self.stats.bytes_after_upgrade.saturating_add(seg.total_len());
            return;
        }
        let mut data = seg.data;
        let mut gap = seg.uncaptured;
        let mut at_start = true;
        loop {
            match self.req_state {
                DirState::Skip => {
                    if at_start && looks_like_request(data) {
                        self.req_state = DirState::Head;
                        continue;
                    }
                    self.skip_bytes(data.len(), gap);
                    return;
                }
                DirState::Body(ref mut body) => {
                    if matches!(body, BodyState::Lost) && at_start && looks_like_request(data) {
                        // The next request starts here: the lost one ended
                        // with the previous segment.
                        self.req_state = DirState::Head;
                        self.req_cur = None;
                        continue;
                    }
                    if self.req_body_optional && at_start && looks_like_request(data) {
                        // The announced body was never sent.
                        self.req_body_optional = false;
                        self.req_state = DirState::Head;
                        self.req_cur = None;
                        continue;
                    }
                    let mut payload = 0u64;
                    let result = feed_body(body, data, gap, &mut payload);
                    let lost = matches!(result, BodyResult::Invalid { .. } | BodyResult::BecameLost);
                    self.req_body_optional = false;
                    if let Some(id) = self.req_cur {
                        if let Some(p) = self.request_mut(id) {
                            p.last_exit = seg.ts_exit;
                            p.body_size = p.body_size.saturating_add(payload);
                            if lost {
                                p.framing_lost = true;
                            }
                        }
                    }
                    match result {
                        BodyResult::Continue => return,
                        BodyResult::Done { used, gap_left } => {
                            self.req_state = DirState::Head;
                            self.req_cur = None;
                            data = rest_of(data, used);
                            gap = gap_left;
                            at_start = false;
                        }
                        BodyResult::Invalid { pos } => {
                            self.stats.invalid_messages += 1;
                            self.stats.framing_lost += 1;
                            if pos == 0 && at_start {
                                continue;
                            }
                            return;
                        }
                        BodyResult::BecameLost => {
                            self.stats.framing_lost += 1;
                            return;
                        }
                    }
                }
                DirState::Head => {
                    if self.req_buf.is_empty() {
                        // Empty lines between messages are tolerated.
                        let blank = skip_empty_lines(data);
                        data = rest_of(data, blank);
                        if data.is_empty() {
                            if gap > 0 {
                                // A message boundary inside an uncaptured
                                // gap: whatever follows cannot be read.
                                self.req_state = DirState::Skip;
                                self.skip_bytes(0, gap);
                            }
                            return;
                        }
                        if !looks_like_request(data) {
                            self.req_state = DirState::Skip;
                            self.skip_bytes(data.len(), gap);
                            return;
                        }
                        self.req_head_enter = seg.ts_enter;
                        self.req_head_exit = seg.ts_exit;
                    }
                    let before = self.req_buf.len();
                    let step = accumulate(&mut self.req_buf, data, parse_request, |h| h.header_len);
                    match step {
                        HeadStep::Complete(head, used) => {
                            reset_buf(&mut self.req_buf);
                            data = rest_of(data, used);
                            at_start = false;
                            let framing = head.body;
                            self.req_body_optional = false;
                            let p = self.new_pending(head, &seg);
                            match body_state(framing) {
                                Some(b) => {
                                    self.req_cur = Some(p.id);
                                    self.req_state = DirState::Body(b);
                                }
                                None => {
                                    self.req_cur = None;
                                    self.req_state = DirState::Head;
                                }
                            }
                            self.push_request(p, out);
                        }
                        HeadStep::NeedMore => {
                            if gap == 0 {
                                return;
                            }
                            // The head continues past the captured bytes.
                            let parsed = parse_request_truncated(&self.req_buf);
                            let captured = self.req_buf.len();
                            reset_buf(&mut self.req_buf);
                            match parsed {
                                Some(head) => {
                                    self.stats.truncated_heads += 1;
                                    self.stats.framing_lost += 1;
                                    let mut p = self.new_pending(head, &seg);
                                    p.truncated = true;
                                    p.framing_lost = true;
                                    self.req_cur = Some(p.id);
                                    self.req_state = DirState::Body(BodyState::Lost);
                                    self.push_request(p, out);
                                }
                                None => {
                                    self.stats.dropped_heads += 1;
                                    self.req_state = DirState::Skip;
                                    self.skip_bytes(captured, gap);
                                }
                            }
                            return;
                        }
                        HeadStep::Invalid | HeadStep::Oversized => {
                            if matches!(step, HeadStep::Oversized) {
                                self.stats.oversized_heads += 1;
                            } else {
                                self.stats.invalid_messages += 1;
                            }
                            let buffered = self.req_buf.len();
                            let added = buffered.saturating_sub(before);
                            reset_buf(&mut self.req_buf);
                            self.req_state = DirState::Skip;
                            // Bytes of `data` beyond what the buffer took.
                            let extra = data.len().saturating_sub(added);
                            self.skip_bytes(buffered.saturating_add(extra), gap);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn skip_bytes(&mut self, captured: usize, gap: u64) {
        self.stats.desync_bytes_skipped =
            self.stats.desync_bytes_skipped.saturating_add(captured as u64).saturating_add(gap);
    }

    /// Finishes the current final response (body complete or ended).
    fn finish_response(&mut self, out: &mut Vec<Exchange>) {
        if let Some(cur) = self.resp_cur.take() {
            if self.req_cur == Some(cur.req.id) {
                self.req_cur = None;
            }
            self.emit_answered(cur, out);
        }
    }

    fn set_upgraded(&mut self, skipped: u64) {
        self.upgraded = true;
        self.stats.upgraded += 1;
        self.stats.bytes_after_upgrade = self.stats.bytes_after_upgrade.saturating_add(skipped);
        reset_buf(&mut self.req_buf);
        reset_buf(&mut self.resp_buf);
        self.req_state = DirState::Skip;
        self.resp_state = DirState::Skip;
    }

    /// Bytes travelling server -> client.
    pub fn on_response_segment(&mut self, seg: Segment<'_>, out: &mut Vec<Exchange>) {
        if self.upgraded {
            self.stats.bytes_after_upgrade = self.stats.bytes_after_upgrade.saturating_add(seg.total_len());
            return;
        }
        let mut data = seg.data;
        let mut gap = seg.uncaptured;
        let mut at_start = true;
        loop {
            match self.resp_state {
                DirState::Skip => {
                    if at_start && looks_like_response(data) {
                        self.resp_state = DirState::Head;
                        continue;
                    }
                    self.skip_bytes(data.len(), gap);
                    return;
                }
                DirState::Body(ref mut body) => {
                    if matches!(body, BodyState::Lost) && at_start && looks_like_response(data) {
                        self.resp_state = DirState::Head;
                        self.finish_response(out);
                        continue;
                    }
                    let mut payload = 0u64;
                    let result = feed_body(body, data, gap, &mut payload);
                    let lost = matches!(result, BodyResult::Invalid { .. } | BodyResult::BecameLost);
                    if let Some(cur) = self.resp_cur.as_mut() {
                        cur.last_exit = seg.ts_exit;
                        cur.body_size = cur.body_size.saturating_add(payload);
                        if lost {
                            cur.framing_lost = true;
                        }
                    }
                    match result {
                        BodyResult::Continue => return,
                        BodyResult::Done { used, gap_left } => {
                            self.resp_state = DirState::Head;
                            self.finish_response(out);
                            data = rest_of(data, used);
                            gap = gap_left;
                            at_start = false;
                        }
                        BodyResult::Invalid { pos } => {
                            self.stats.invalid_messages += 1;
                            self.stats.framing_lost += 1;
                            if pos == 0 && at_start {
                                continue;
                            }
                            return;
                        }
                        BodyResult::BecameLost => {
                            self.stats.framing_lost += 1;
                            return;
                        }
                    }
                }
                DirState::Head => {
                    if self.resp_buf.is_empty() {
                        if data.is_empty() {
                            if gap > 0 {
                                // A response starts inside an uncaptured gap:
                                // its request gets no response, so that the
                                // following ones stay paired correctly.
                                if let Some(p) = self.pending.pop_front() {
                                    self.stats.lost_responses += 1;
                                    self.emit_unanswered(p, out);
                                }
                                self.resp_state = DirState::Skip;
                                self.skip_bytes(0, gap);
                            }
                            return;
                        }
                        if !looks_like_response(data) {
                            self.resp_state = DirState::Skip;
                            self.skip_bytes(data.len(), gap);
                            return;
                        }
                        if self.pending.is_empty() {
                            self.stats.orphan_responses += 1;
                            self.resp_state = DirState::Skip;
                            self.skip_bytes(data.len(), gap);
                            return;
                        }
                        self.resp_head_enter = seg.ts_enter;
                    }
                    let method = self.pending.front().map(|p| p.head.method.clone()).unwrap_or_default();
                    let before = self.resp_buf.len();
                    let step = accumulate(&mut self.resp_buf, data, |b| parse_response(b, &method), |h| h.header_len);
                    match step {
                        HeadStep::Complete(head, used) => {
                            reset_buf(&mut self.resp_buf);
                            data = rest_of(data, used);
                            at_start = false;
                            if !self.start_response(head, false, &method, &seg, data, gap, out) {
                                return;
                            }
                        }
                        HeadStep::NeedMore => {
                            if gap == 0 {
                                return;
                            }
                            let parsed = parse_response_truncated(&self.resp_buf, &method);
                            let captured = self.resp_buf.len();
                            reset_buf(&mut self.resp_buf);
                            match parsed {
                                Some(head) => {
                                    self.stats.truncated_heads += 1;
                                    self.start_response(head, true, &method, &seg, &[], 0, out);
                                }
                                None => {
                                    self.stats.dropped_heads += 1;
                                    self.resp_state = DirState::Skip;
                                    self.skip_bytes(captured, gap);
                                }
                            }
                            return;
                        }
                        HeadStep::Invalid | HeadStep::Oversized => {
                            if matches!(step, HeadStep::Oversized) {
                                self.stats.oversized_heads += 1;
                            } else {
                                self.stats.invalid_messages += 1;
                            }
                            let buffered = self.resp_buf.len();
                            let added = buffered.saturating_sub(before);
                            reset_buf(&mut self.resp_buf);
                            self.resp_state = DirState::Skip;
                            let extra = data.len().saturating_sub(added);
                            self.skip_bytes(buffered.saturating_add(extra), gap);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Handles a parsed response head. `rest`/`gap` are the bytes after it in
    /// the current segment (used for accounting on protocol switches).
    /// Returns true when processing of the segment should continue.
    #[allow(clippy::too_many_arguments)]
    fn start_response(
        &mut self,
        head: ResponseHead,
        truncated: bool,
        method: &str,
        seg: &Segment<'_>,
        rest: &[u8],
        gap: u64,
        out: &mut Vec<Exchange>,
    ) -> bool {
        let status = head.status;
        if (100..200).contains(&status) && status != 101 {
            self.stats.interim_responses += 1;
            if truncated {
                // Its end is unknown: resynchronise at the next segment.
                self.resp_state = DirState::Skip;
                return false;
            }
            self.resp_state = DirState::Head;
            return true;
        }
        let Some(req) = self.pending.pop_front() else {
            self.stats.orphan_responses += 1;
            self.resp_state = DirState::Skip;
            return false;
        };
        self.stats.responses += 1;
        if self.req_cur == Some(req.id)
            && req.head.expect_continue
            && req.body_size == 0
            && matches!(self.req_state, DirState::Body(_))
        {
            self.req_body_optional = true;
        }
        let framing = head.body;
        let mut cur = CurResp {
            req,
            head,
            first_enter: self.resp_head_enter,
            last_exit: seg.ts_exit,
            body_size: 0,
            truncated,
            framing_lost: false,
            incomplete: false,
        };
        let tunnel = status == 101 || (method == "CONNECT" && (200..300).contains(&status));
        if tunnel {
            self.resp_cur = Some(cur);
            self.finish_response(out);
            self.set_upgraded((rest.len() as u64).saturating_add(gap));
            return false;
        }
        if truncated {
            if framing == BodyFraming::None {
                self.resp_cur = Some(cur);
                self.finish_response(out);
                self.resp_state = DirState::Skip;
            } else {
                self.stats.framing_lost += 1;
                cur.framing_lost = true;
                self.resp_cur = Some(cur);
                self.resp_state = DirState::Body(BodyState::Lost);
            }
            return false;
        }
        self.resp_cur = Some(cur);
        match body_state(framing) {
            Some(b) => self.resp_state = DirState::Body(b),
            None => {
                self.resp_state = DirState::Head;
                self.finish_response(out);
            }
        }
        true
    }

    /// Connection closed (or expired) at `ts`: a response read until close
    /// ends with its last segment (`resp_last_exit` is that segment's exit),
    /// an unfinished response is emitted as incomplete, and
    /// unanswered requests are emitted without a response. The connection
    /// state is reset afterwards (counters are kept).
    pub fn on_close(&mut self, ts: u64, out: &mut Vec<Exchange>) {
        if let Some(cur) = self.resp_cur.as_mut() {
            match &self.resp_state {
                DirState::Body(BodyState::UntilClose) | DirState::Body(BodyState::Lost) => {}
                DirState::Body(_) => cur.incomplete = true,
                _ => {}
            }
            if cur.last_exit == 0 {
                cur.last_exit = ts;
            }
        }
        self.finish_response(out);
        while let Some(p) = self.pending.pop_front() {
            self.emit_unanswered(p, out);
        }
        self.req_state = DirState::Head;
        self.resp_state = DirState::Head;
        self.req_buf = Vec::new();
        self.resp_buf = Vec::new();
        self.req_cur = None;
        self.req_body_optional = false;
        self.upgraded = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_of_ascii_utf8_and_invalid_bytes() {
        assert!(matches!(lossy(b"/users/1?x=y"), Cow::Borrowed("/users/1?x=y")));
        assert!(matches!(lossy("/caf\u{e9}".as_bytes()), Cow::Borrowed("/caf\u{e9}")));
        assert_eq!(lossy(b"/a\xff\xfeb"), "/a\u{fffd}\u{fffd}b");
        assert_eq!(lossy(b""), "");
        assert_eq!(header_text(b" \x0bvalue\t"), "value");
        assert_eq!(header_text("\u{a0}caf\u{e9}".as_bytes()), "caf\u{e9}");
    }

    /// Drives a connection with automatic timestamps: segment i gets
    /// enter = 1000 * i, exit = 1000 * i + 500.
    struct Drive {
        conn: Http1Conn,
        out: Vec<Exchange>,
        n: u64,
    }

    impl Drive {
        fn new() -> Self {
            Drive { conn: Http1Conn::new(), out: Vec::new(), n: 0 }
        }
        fn seg<'a>(&mut self, data: &'a [u8], gap: u64) -> Segment<'a> {
            self.n += 1;
            Segment { data, uncaptured: gap, ts_enter: self.n * 1000, ts_exit: self.n * 1000 + 500 }
        }
        fn req(&mut self, data: &[u8]) {
            self.req_gap(data, 0);
        }
        fn req_gap(&mut self, data: &[u8], gap: u64) {
            let s = self.seg(data, gap);
            self.conn.on_request_segment(s, &mut self.out);
        }
        fn resp(&mut self, data: &[u8]) {
            self.resp_gap(data, 0);
        }
        fn resp_gap(&mut self, data: &[u8], gap: u64) {
            let s = self.seg(data, gap);
            self.conn.on_response_segment(s, &mut self.out);
        }
        fn close(&mut self) {
            self.n += 1;
            self.conn.on_close(self.n * 1000, &mut self.out);
        }
        fn take(&mut self) -> Vec<Exchange> {
            std::mem::take(&mut self.out)
        }
    }

    fn status(ex: &Exchange) -> Option<u16> {
        ex.response.as_ref().map(|r| r.status)
    }

    #[test]
    fn runs_of_tokens_and_values() {
        // Every byte value at every position of runs up to 40 bytes long:
        // two 16-byte blocks, an 8-byte word and single bytes.
        for len in 0..40 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut buf = vec![b'a'; len];
                    buf[at] = b;
                    let want = buf.iter().position(|&c| !is_tchar(c)).unwrap_or(len);
                    assert_eq!(token_run(&buf), want, "{buf:?}");
                    let mut buf = vec![b' '; len];
                    buf[at] = b;
                    let want = buf.iter().position(|&c| !is_value_char(c)).unwrap_or(len);
                    assert_eq!(value_run(&buf), want, "{buf:?}");
                }
            }
        }
        let name = b"Content-Length_2.x~!Abc-09zZ:";
        assert_eq!(token_run(name), name.len() - 1);
    }

    /// The header block reader accepts, rejects and splits exactly as
    /// `httparse::parse_headers` does (given room for every field).
    #[test]
    fn header_block_reads_as_httparse() {
        let names: &[&[u8]] = &[b"Host", b"x-b3-sampled", b"A", b"~!#$%&'*+-.^_`|", b"", b"Bad Name", b"(", b"na\x80"];
        let seps: &[&[u8]] = &[b":", b": ", b":\t ", b" :", b"", b":  "];
        let values: &[&[u8]] = &[
            b"",
            b"value",
            b"v a\tl ",
            b"  \t",
            b"\x7f",
            b"a\x00b",
            b"\x01",
            b"\x80\xff",
            b"caf\xc3\xa9",
            b"\"q\"",
            b"0123456789abcdefghijklmnopqrstuvwxyz",
            b"0123456789\tabcdef",
            b"x\ry",
            b"\x1f",
        ];
        let ends: &[&[u8]] = &[b"\r\n", b"\n", b"\r", b"\r\n ", b"\r\n\t"];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        // Mostly the well-formed part of a line, now and then one at random.
        fn pick<'a>(list: &[&'a [u8]], good: usize, r: usize, k: usize) -> &'a [u8] {
            if r < 8 {
                list[good]
            } else {
                list[k]
            }
        }
        for _ in 0..50_000 {
            let mut buf = Vec::new();
            for _ in 0..next(6) {
                buf.extend_from_slice(pick(names, 0, next(10), next(names.len())));
                buf.extend_from_slice(pick(seps, 1, next(10), next(seps.len())));
                buf.extend_from_slice(pick(values, 1, next(10), next(values.len())));
                buf.extend_from_slice(pick(ends, 0, next(10), next(ends.len())));
            }
            buf.extend_from_slice(ends[next(ends.len())]);
            if next(3) == 0 {
                buf.truncate(next(buf.len() + 1));
            }
            let mut ours = Vec::new();
            let got = scan_header_block(&buf, |n, v| ours.push((n.to_vec(), v.to_vec())));
            let mut room = vec![httparse::EMPTY_HEADER; buf.len() / 3 + 1];
            let want = match httparse::parse_headers(&buf, &mut room) {
                Ok(httparse::Status::Complete((n, hs))) => {
                    let fields: Vec<_> = hs.iter().map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec())).collect();
                    assert_eq!(ours, fields, "{:?}", String::from_utf8_lossy(&buf));
                    Parse::Complete(n)
                }
                Ok(httparse::Status::Partial) => Parse::Incomplete,
                Err(_) => Parse::Invalid,
            };
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&buf));
        }
    }

    #[test]
    fn parse_request_basic_fields() {
        let raw = b"POST /api/items?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\n\
traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\ntracestate: a=1\r\n\
tracestate: b=2\r\nb3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1\r\n\
X-B3-TraceId: 463ac35c9f6413ad\r\nX-B3-SpanId: a2fb4a1d1a96d312\r\nX-B3-Sampled: 1\r\n\
Content-Length: 5\r\nExpect: 100-Continue\r\n\r\nhello";
        let Parse::Complete(h) = parse_request(raw) else { panic!("complete expected") };
        assert_eq!(h.method, "POST");
        assert_eq!(h.target, "/api/items?x=1");
        assert_eq!(h.version, 1);
        assert_eq!(h.header_len, raw.len() - 5);
        assert_eq!(h.body, BodyFraming::Length(5));
        assert_eq!(h.host.as_deref(), Some("example.com"));
        assert_eq!(h.user_agent.as_deref(), Some("curl/8"));
        assert_eq!(h.traceparent.as_deref(), Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        assert_eq!(h.tracestate.as_deref(), Some("a=1,b=2"));
        assert!(h.b3.is_some());
        assert_eq!(h.x_b3_trace_id.as_deref(), Some("463ac35c9f6413ad"));
        assert_eq!(h.x_b3_span_id.as_deref(), Some("a2fb4a1d1a96d312"));
        assert_eq!(h.x_b3_sampled.as_deref(), Some("1"));
        assert_eq!(h.content_length, Some(5));
        assert!(h.expect_continue);
        assert_eq!(h.upgrade, None);
    }

    #[test]
    fn parse_request_incomplete_at_every_prefix() {
        let raw = b"GET /a HTTP/1.0\r\nHost: h\r\n\r\n";
        for i in 0..raw.len() {
            assert_eq!(parse_request(&raw[..i]), Parse::Incomplete, "prefix {i}");
        }
        let Parse::Complete(h) = parse_request(raw) else { panic!() };
        assert_eq!(h.version, 0);
        assert_eq!(h.body, BodyFraming::None);
    }

    #[test]
    fn parse_request_invalid_inputs() {
        for bad in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1 \r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(parse_request(bad), Parse::Invalid, "{:?}", String::from_utf8_lossy(bad));
        }
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD_LEN + 10, b'a');
        assert_eq!(parse_request(&huge), Parse::Invalid);
    }

    #[test]
    fn parse_request_framing_rules() {
        let p = |s: &[u8]| match parse_request(s) {
            Parse::Complete(h) => h.body,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            p(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n"),
            BodyFraming::Chunked
        );
        assert_eq!(p(b"POST / HTTP/1.1\r\nContent-Length: 7, 7\r\n\r\n"), BodyFraming::Length(7));
        assert_eq!(p(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), BodyFraming::Length(0));
        assert_eq!(p(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), BodyFraming::None);
        // Bare LF line endings are accepted.
        assert_eq!(p(b"GET / HTTP/1.1\nHost: a\n\n"), BodyFraming::None);
    }

    #[test]
    fn parse_response_framing_rules() {
        let p = |s: &[u8], m: &str| match parse_response(s, m) {
            Parse::Complete(h) => (h.status, h.body),
            other => panic!("{other:?}"),
        };
        let cl = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(p(cl, "GET"), (200, BodyFraming::Length(10)));
        assert_eq!(p(cl, "HEAD"), (200, BodyFraming::None));
        assert_eq!(p(b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", "GET"), (204, BodyFraming::None));
        assert_eq!(p(b"HTTP/1.1 304 Not Modified\r\n\r\n", "GET"), (304, BodyFraming::None));
        assert_eq!(p(b"HTTP/1.1 100 Continue\r\n\r\n", "POST"), (100, BodyFraming::None));
        assert_eq!(p(b"HTTP/1.1 200 Connection established\r\n\r\n", "CONNECT"), (200, BodyFraming::UntilClose));
        assert_eq!(p(b"HTTP/1.0 200 OK\r\n\r\n", "GET"), (200, BodyFraming::UntilClose));
        assert_eq!(p(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET"), (200, BodyFraming::Chunked));
        assert_eq!(p(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "GET"), (200, BodyFraming::UntilClose));
        assert_eq!(p(b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", "GET"), (404, BodyFraming::Length(0)));
        assert_eq!(p(b"HTTP/1.1 500 \r\n\r\n", "GET"), (500, BodyFraming::UntilClose));
    }

    #[test]
    fn parse_response_incomplete_and_invalid() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        for i in 0..raw.len() {
            assert_eq!(parse_response(&raw[..i], "GET"), Parse::Incomplete, "prefix {i}");
        }
        for bad in [
            &b"HTTP/2 200\r\n\r\n"[..],
            b"HTTP/1.1 20x OK\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 O\x00K\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n",
        ] {
            assert_eq!(parse_response(bad, "GET"), Parse::Invalid, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn looks_like_prefixes() {
        assert!(looks_like_request(b"G"));
        assert!(looks_like_request(b"GE"));
        assert!(looks_like_request(b"GET"));
        assert!(looks_like_request(b"GET "));
        assert!(looks_like_request(b"DELETE /x"));
        assert!(!looks_like_request(b""));
        assert!(!looks_like_request(b"GETX /"));
        assert!(!looks_like_request(b"get /"));
        assert!(!looks_like_request(b"HTTP/1.1 200"));
        assert!(looks_like_response(b"H"));
        assert!(looks_like_response(b"HTTP/1."));
        assert!(looks_like_response(b"HTTP/1.0 200"));
        assert!(!looks_like_response(b"HTTP/2 200"));
        assert!(!looks_like_response(b"HTTP/1.1200"));
        assert!(!looks_like_response(b""));
    }

    #[test]
    fn truncated_head_parsers() {
        let h = parse_request_truncated(b"GET /big HTTP/1.1\r\nHost: a\r\nCookie: xxxxx").unwrap();
        assert_eq!(h.target, "/big");
        assert_eq!(h.host.as_deref(), Some("a"));
        assert!(parse_request_truncated(b"GET /very-long-url-without-end").is_none());
        let r = parse_response_truncated(b"HTTP/1.1 503 A very long reason that", "GET").unwrap();
        assert_eq!(r.status, 503);
        assert!(parse_response_truncated(b"HTTP/1.1 50", "GET").is_none());
    }

    #[test]
    fn keep_alive_many_requests() {
        let mut d = Drive::new();
        for i in 0..50u64 {
            let body = "x".repeat(i as usize);
            d.req(format!("GET /item/{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
            d.resp(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
        }
        let ex = d.take();
        assert_eq!(ex.len(), 50);
        for (i, e) in ex.iter().enumerate() {
            assert_eq!(e.request.target, format!("/item/{i}"));
            assert_eq!(e.response_body_size, i as u64);
            let base = (2 * i as u64 + 1) * 1000;
            assert_eq!((e.req_first_enter, e.req_first_exit, e.req_last_exit), (base, base + 500, base + 500));
            assert_eq!((e.resp_first_enter, e.resp_last_exit), (base + 1000, base + 1500));
        }
        assert_eq!(d.conn.pending_requests(), 0);
        assert_eq!(d.conn.stats().exchanges, 50);
    }

    #[test]
    fn pipelining_in_order() {
        let mut d = Drive::new();
        d.req(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nHEAD /3 HTTP/1.1\r\n\r\n");
        assert_eq!(d.conn.pending_requests(), 3);
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 NF\r\nContent-Length: 0\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
        let ex = d.take();
        let got: Vec<_> = ex.iter().map(|e| (e.request.target.to_string(), status(e))).collect();
        assert_eq!(
            got,
            vec![("/1".to_string(), Some(200)), ("/2".to_string(), Some(404)), ("/3".to_string(), Some(200))]
        );
        assert_eq!(ex[2].response_body_size, 0);
    }

    /// Feeds a whole exchange split at every possible pair of byte offsets
    /// and checks that the result never changes.
    #[test]
    fn splits_at_any_boundary() {
        let req: &[u8] = b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
4;ext=1\r\nabcd\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n";
        let resp: &[u8] = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n\
3\r\nabc\r\n0\r\n\r\n";
        for cut in 0..=req.len() {
            let mut d = Drive::new();
            d.req(&req[..cut]);
            d.req(&req[cut..]);
            for c2 in [0usize, 1, 5, 30, resp.len()] {
                let c2 = c2.min(resp.len());
                d.resp(&resp[..c2]);
                d.resp(&resp[c2..]);
                d.req(b"GET /next HTTP/1.1\r\n\r\n");
            }
            d.close();
            let ex = d.take();
            assert_eq!(ex[0].request.target, "/up", "cut {cut}");
            assert_eq!(ex[0].request_body_size, 20, "cut {cut}");
            assert_eq!(status(&ex[0]), Some(201), "cut {cut}");
            assert_eq!(ex[0].response_body_size, 3, "cut {cut}");
            assert!(!ex[0].framing_lost);
            assert_eq!(d.conn.stats().invalid_messages, 0, "cut {cut}");
        }
        // Byte-by-byte.
        let mut d = Drive::new();
        for b in req.chunks(1) {
            d.req(b);
        }
        for b in resp.chunks(1) {
            d.resp(b);
        }
        let ex = d.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].request_body_size, 20);
        assert_eq!(ex[0].response_body_size, 3);
        assert_eq!(ex[0].req_first_enter, 1000);
        assert_eq!(ex[0].req_last_exit, req.len() as u64 * 1000 + 500);
    }

    #[test]
    fn large_body_mostly_uncaptured() {
        let mut d = Drive::new();
        d.req(b"GET /big HTTP/1.1\r\n\r\n");
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
        let mut first = head.to_vec();
        first.resize(2048, b'z');
        let body_in_first = (2048 - head.len()) as u64;
        d.resp_gap(&first, 65536 - 2048);
        let mut remaining = 1_048_576 - body_in_first - (65536 - 2048);
        let filler = vec![b'z'; 2048];
        while remaining > 0 {
            let total = remaining.min(65536);
            let cap = total.min(2048);
            d.resp_gap(&filler[..cap as usize], total - cap);
            remaining -= total;
        }
        assert_eq!(d.out.len(), 1);
        d.req(b"GET /after HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 204 No Content\r\n\r\n");
        let ex = d.take();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].response_body_size, 1_048_576);
        assert_eq!(status(&ex[1]), Some(204));
        assert!(d.conn.buffered_bytes() < 16 * 1024);
    }

    #[test]
    fn chunked_gap_on_chunk_boundary_stays_in_sync() {
        let mut d = Drive::new();
        d.req(b"GET / HTTP/1.1\r\n\r\n");
        // One chunk of 0x1000 bytes; only 100 data bytes captured, the gap
        // covers the rest of the data and its CRLF.
        let mut seg = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n".to_vec();
        seg.extend_from_slice(&[b'd'; 100]);
        d.resp_gap(&seg, 0x1000 - 100 + 2);
        d.resp(b"0\r\n\r\n");
        let ex = d.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].response_body_size, 0x1000);
        assert!(!ex[0].framing_lost);
    }

    #[test]
    fn chunked_gap_ending_with_last_chunk_completes_the_message() {
        let mut d = Drive::new();
        d.req(b"GET /a HTTP/1.1\r\n\r\n");
        // The whole chunked response in one write, only its start captured:
        // the gap is the rest of the data, its CRLF and `0\r\n\r\n`.
        let mut seg = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nce7\r\n".to_vec();
        seg.extend_from_slice(&[b'd'; 100]);
        d.resp_gap(&seg, 0xce7 - 100 + 2 + 5);
        d.req(b"GET /b HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 204 No Content\r\n\r\n");
        let ex = d.take();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].response_body_size, 0xce7);
        assert!(!ex[0].framing_lost);
        assert_eq!(ex[1].response.as_ref().map(|r| r.status), Some(204));
    }

    #[test]
    fn chunked_gap_across_framing_is_lost_then_resyncs() {
        let mut d = Drive::new();
        d.req(b"GET /a HTTP/1.1\r\n\r\n");
        d.resp_gap(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123", 5000);
        d.resp(b"more body bytes");
        assert!(d.out.is_empty());
        d.req(b"GET /b HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let ex = d.take();
        assert_eq!(ex.len(), 2);
        assert!(ex[0].framing_lost);
        assert_eq!(ex[0].resp_last_exit, 3500);
        assert_eq!(ex[1].request.target, "/b");
        assert!(!ex[1].framing_lost);
        assert_eq!(d.conn.stats().framing_lost, 1);
    }

    #[test]
    fn head_204_304_without_body() {
        let mut d = Drive::new();
        d.req(b"HEAD /h HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\nGET /m HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n");
        d.resp(b"HTTP/1.1 204 No Content\r\n\r\n");
        d.resp(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n");
        let ex = d.take();
        assert_eq!(ex.iter().map(status).collect::<Vec<_>>(), vec![Some(200), Some(204), Some(304)]);
        assert!(ex.iter().all(|e| e.response_body_size == 0));
    }

    #[test]
    fn expect_continue() {
        let mut d = Drive::new();
        d.req(b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
        d.resp(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(d.out.is_empty());
        d.req(b"data");
        d.resp(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        let ex = d.take();
        assert_eq!(ex.len(), 1);
        assert!(ex[0].request.expect_continue);
        assert_eq!(status(&ex[0]), Some(201));
        assert_eq!(ex[0].request_body_size, 4);
        assert_eq!(ex[0].req_last_exit, 3500);
        assert_eq!(ex[0].resp_first_enter, 4000);
        assert_eq!(d.conn.stats().interim_responses, 1);
    }

    #[test]
    fn switching_protocols_makes_connection_opaque() {
        let mut d = Drive::new();
        d.req(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        d.resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello");
        assert!(d.conn.upgraded());
        d.req(b"\x81\x85abcdHELLO");
        d.req(b"GET /not-http HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\n\r\n");
        let ex = d.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(status(&ex[0]), Some(101));
        assert_eq!(ex[0].request.upgrade.as_deref(), Some("websocket"));
        assert!(d.conn.stats().bytes_after_upgrade > 0);
    }

    #[test]
    fn connect_tunnel() {
        let mut d = Drive::new();
        d.req(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
        d.resp(b"HTTP/1.1 200 Connection Established\r\n\r\n");
        d.req(b"\x16\x03\x01\x00\x10");
        assert!(d.conn.upgraded());
        let ex = d.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].request.target, "example.com:443");
    }

    #[test]
    fn http10_until_close() {
        let mut d = Drive::new();
        d.req(b"GET /old HTTP/1.0\r\n\r\n");
        d.resp(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsome");
        d.resp_gap(b"more", 100);
        assert!(d.out.is_empty());
        d.close();
        let ex = d.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].response_body_size, 108);
        assert_eq!(ex[0].resp_last_exit, 3500);
        assert!(!ex[0].response_incomplete);
    }

    #[test]
    fn close_with_unanswered_and_incomplete() {
        let mut d = Drive::new();
        d.req(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
        d.close();
        let ex = d.take();
        assert_eq!(ex.len(), 2);
        assert!(ex[0].response_incomplete);
        assert_eq!(ex[0].response_body_size, 3);
        assert_eq!(ex[1].response, None);
        assert_eq!((ex[1].resp_first_enter, ex[1].resp_last_exit), (0, 0));
        assert_eq!(d.conn.stats().unanswered, 1);
    }

    #[test]
    fn mid_stream_attach_resyncs_on_segment_start() {
        let mut d = Drive::new();
        // Tail of a request body, then a segment that merely contains a
        // request start in its middle: both skipped.
        d.req(b"ody of an earlier request");
        d.req(b"xxGET /hidden HTTP/1.1\r\n\r\n");
        // Responses to requests never seen are dropped.
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody");
        d.req(b"GET /seen HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let ex = d.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].request.target, "/seen");
        let st = d.conn.stats();
        assert_eq!(st.orphan_responses, 1);
        assert!(st.desync_bytes_skipped > 0);
    }

    #[test]
    fn response_not_starting_with_http_is_skipped() {
        let mut d = Drive::new();
        d.req(b"GET /x HTTP/1.1\r\n\r\n");
        d.resp(b"garbage before the response");
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let ex = d.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(status(&ex[0]), Some(200));
        assert_eq!(ex[0].resp_first_enter, 3000);
    }

    #[test]
    fn truncated_request_head() {
        let mut d = Drive::new();
        let mut seg = b"GET /with-cookie HTTP/1.1\r\nHost: h\r\ntraceparent: 00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01\r\nCookie: ".to_vec();
        seg.resize(256, b'c');
        d.req_gap(&seg, 3000);
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        d.req(b"GET /next HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let ex = d.take();
        assert_eq!(ex.len(), 2);
        assert!(ex[0].headers_truncated);
        assert_eq!(ex[0].request.target, "/with-cookie");
        assert!(ex[0].request.traceparent.is_some());
        assert_eq!(ex[0].request.header_len, 256);
        assert_eq!(ex[1].request.target, "/next");
        assert!(!ex[1].headers_truncated);
    }

    #[test]
    fn truncated_request_line_is_dropped() {
        let mut d = Drive::new();
        let mut seg = b"GET /".to_vec();
        seg.resize(200, b'p');
        d.req_gap(&seg, 5000);
        d.req(b"more of the same head\r\n\r\n");
        d.req(b"GET /ok HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let ex = d.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].request.target, "/ok");
        assert_eq!(d.conn.stats().dropped_heads, 1);
    }

    #[test]
    fn oversized_head_resyncs() {
        let mut d = Drive::new();
        d.req(b"GET /huge HTTP/1.1\r\n");
        let line = format!("X-Fill: {}\r\n", "f".repeat(1000));
        for _ in 0..70 {
            d.req(line.as_bytes());
        }
        assert!(d.conn.buffered_bytes() <= MAX_HEAD_LEN + 4096);
        d.req(b"\r\n");
        d.req(b"GET /fine HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let ex = d.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].request.target, "/fine");
        assert_eq!(d.conn.stats().oversized_heads, 1);
        assert!(d.conn.buffered_bytes() <= 2 * KEEP_BUF_CAPACITY);
    }

    #[test]
    fn pending_is_bounded() {
        let mut d = Drive::new();
        for i in 0..(MAX_PENDING + 10) {
            d.req(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes());
        }
        assert_eq!(d.conn.pending_requests(), MAX_PENDING);
        let ex = d.take();
        assert_eq!(ex.len(), 10);
        assert!(ex.iter().all(|e| e.response.is_none()));
        assert_eq!(ex[0].request.target, "/0");
        assert_eq!(d.conn.stats().pending_overflow, 10);
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(d.take()[0].request.target, "/10");
    }

    #[test]
    fn gap_at_response_boundary_keeps_pairing() {
        let mut d = Drive::new();
        d.req(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n");
        // Response 1 ends inside the segment; response 2 is entirely in the
        // uncaptured tail.
        d.resp_gap(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", 40);
        d.resp(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
        let ex = d.take();
        let got: Vec<_> = ex.iter().map(|e| (e.request.target.to_string(), status(e))).collect();
        assert_eq!(got, vec![("/1".to_string(), Some(200)), ("/2".to_string(), None), ("/3".to_string(), Some(202))]);
    }

    #[test]
    fn invalid_chunk_size_recovers() {
        let mut d = Drive::new();
        d.req(b"GET /c HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        d.req(b"GET /d HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let ex = d.take();
        assert_eq!(ex.len(), 2);
        assert!(ex[0].framing_lost);
        assert_eq!(ex[1].request.target, "/d");
        assert_eq!(d.conn.stats().invalid_messages, 1);
    }

    #[test]
    fn huge_chunk_sizes_do_not_overflow() {
        let mut d = Drive::new();
        d.req(b"GET / HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab");
        d.resp_gap(b"", u64::MAX);
        d.resp_gap(b"x", u64::MAX);
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        d.close();
        let ex = d.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].response_body_size, u64::MAX);
    }

    #[test]
    fn no_panic_on_arbitrary_bytes() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let mut conn = Http1Conn::new();
            let mut out = Vec::new();
            for _ in 0..8 {
                let len = (next() % 64) as usize;
                let bytes: Vec<u8> = (0..len).map(|_| (next() % 256) as u8).collect();
                let gap = if next() % 4 == 0 { next() % 5000 } else { 0 };
                let s = Segment { data: &bytes, uncaptured: gap, ts_enter: 1, ts_exit: 2 };
                if next() % 2 == 0 {
                    conn.on_request_segment(s, &mut out);
                } else {
                    conn.on_response_segment(s, &mut out);
                }
                let _ = parse_request(&bytes);
                let _ = parse_response(&bytes, "GET");
                let _ = parse_request_truncated(&bytes);
                let _ = parse_response_truncated(&bytes, "HEAD");
            }
            conn.on_close(3, &mut out);
        }
    }
}
