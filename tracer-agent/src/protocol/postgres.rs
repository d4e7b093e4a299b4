//! PostgreSQL frontend/backend protocol (version 3), seen from the client's
//! socket: pairs queries with their replies and reports one [`DbExchange`]
//! per simple Query or extended-protocol Execute.
//!
//! Wire format: after an untyped startup phase (`int32 length, int32 code,
//! ...`), every message is `byte type, int32 length (self-inclusive), body`.
//! [`PgConn`] frames both directions of one connection, keeps the content of
//! the few messages it needs (Query, Parse, Bind, Execute, Close from the
//! client; CommandComplete and ErrorResponse from the server) and skips every
//! other body by its length, including bytes that were not captured.
//!
//! Design rules (same as the other protocol parsers):
//! * Pure code: no I/O, no clock, no global state, no panics on any input.
//! * No guessing at message starts: once a direction loses its framing (a
//!   message boundary fell into an uncaptured gap, or a header is
//!   implausible), bytes are skipped until a later segment starts with
//!   something that [`looks_like_client_start`] / [`looks_like_server_start`].
//! * Bounded memory: message content is kept up to [`MAX_KEPT`] bytes, query
//!   texts up to [`MAX_QUERY_TEXT`] bytes, at most [`MAX_STATEMENTS`]
//!   prepared statements ([`MAX_STATEMENT_BYTES`] in total), [`MAX_PORTALS`]
//!   portals and [`MAX_PENDING`] in-flight requests per connection.
//!
//! Pairing: the client's messages are queued as operations in the order
//! sent; the server answers them in that order. A Query is complete at its
//! ReadyForQuery; an Execute at its CommandComplete, EmptyQueryResponse,
//! PortalSuspended or ErrorResponse. An ErrorResponse to an extended-protocol
//! message fails the first Execute queued before the next Sync (for a failed
//! Parse or Bind, that is the Execute that would have run the statement); the
//! server skips the other messages until Sync, so further Executes in that
//! range produce no exchange.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::db::{DbError, DbExchange, DbSystem};
use super::Segment;

/// Largest message length accepted as plausible (the server's own limit).
pub const MAX_MESSAGE_LEN: u32 = 1 << 30;

/// Largest startup-phase packet accepted (the server's own limit).
pub const MAX_STARTUP_LEN: u32 = 10_000;

/// Bytes of a message's content kept for parsing; the rest is skipped.
pub const MAX_KEPT: usize = 16 * 1024;

/// Longest query text kept for an exchange or a prepared statement.
pub const MAX_QUERY_TEXT: usize = 4096;

/// Prepared statements remembered per connection (oldest evicted first).
pub const MAX_STATEMENTS: usize = 1024;

/// Total bytes of statement names and texts remembered per connection.
pub const MAX_STATEMENT_BYTES: usize = 256 * 1024;

/// Portals remembered per connection (oldest evicted first).
pub const MAX_PORTALS: usize = 64;

/// Client operations awaiting their reply (oldest abandoned first).
pub const MAX_PENDING: usize = 4096;

/// Total bytes of query text held by operations awaiting their reply.
pub const MAX_PENDING_TEXT: usize = 1 << 20;

/// Longest statement or portal name remembered.
const MAX_NAME_LEN: usize = 256;

/// Longest startup parameter value remembered (user, database).
const MAX_PARAM_LEN: usize = 256;

/// Longest error message kept.
const MAX_ERROR_MESSAGE: usize = 1024;

/// Messages checked by the `looks_like_*` functions.
const MAX_CHAIN: usize = 64;

const PROTOCOL_3: u32 = 3 << 16;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// Message types a client sends after the startup phase.
const CLIENT_TYPES: &[u8] = b"QPBESDCHFXpdcf";

/// Message types a server sends.
const SERVER_TYPES: &[u8] = b"RSKZTDCEN123tnsIAGHWdcVv";

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Whether a typed client message of this type may have this length
/// (self-inclusive, without the type byte).
fn client_len_ok(ty: u8, len: u32) -> bool {
    if !(4..=MAX_MESSAGE_LEN).contains(&len) {
        return false;
    }
    match ty {
        b'S' | b'H' | b'X' | b'c' => len == 4,
        b'Q' => len >= 5,
        b'P' => len >= 8,
        b'B' => len >= 12,
        b'E' => len >= 9,
        b'D' | b'C' => len >= 6,
        b'F' => len >= 14,
        b'f' => len >= 5,
        b'd' | b'p' => true,
        _ => false,
    }
}

/// Whether a server message of this type may have this length.
fn server_len_ok(ty: u8, len: u32) -> bool {
    if !(4..=MAX_MESSAGE_LEN).contains(&len) {
        return false;
    }
    match ty {
        b'1' | b'2' | b'3' | b'n' | b'I' | b's' | b'c' => len == 4,
        b'Z' => len == 5,
        b'K' => (12..=264).contains(&len),
        b'R' | b'V' => len >= 8,
        b'S' | b'T' | b'D' | b't' => len >= 6,
        b'C' | b'E' | b'N' => len >= 5,
        b'A' => len >= 10,
        b'G' | b'H' | b'W' => len >= 7,
        b'v' => len >= 12,
        b'd' => true,
        _ => false,
    }
}

/// Text bytes of a Query or CommandComplete: printable (UTF-8 and other
/// 8-bit encodings allowed), tabs and line breaks.
fn printable(b: &[u8]) -> bool {
    b.iter().all(|&c| c >= 0x20 && c != 0x7f || matches!(c, b'\t' | b'\n' | b'\r'))
}

/// Check the body of a fully or partially captured message at the start of
/// a buffer. `whole` tells whether `body` is the complete body.
fn content_ok(server: bool, ty: u8, body: &[u8], whole: bool, first: bool) -> bool {
    match (server, ty) {
        (false, b'Q') => {
            if !whole {
                // The terminating NUL must have been captured for the first
                // message; later ones only need printable text so far.
                return !first && printable(body);
            }
            match body.split_last() {
                Some((0, text)) => printable(text),
                _ => false,
            }
        }
        (true, b'C') => match body.split_last() {
            Some((0, text)) if whole => printable(text),
            _ => !whole && printable(body),
        },
        (true, b'Z') => body.first().is_none_or(|s| matches!(s, b'I' | b'T' | b'E')),
        (true, b'E' | b'N') => !whole || body.last() == Some(&0),
        _ => true,
    }
}

/// Walk the typed messages at the start of `buf`: every header seen must be
/// plausible for the direction.
fn plausible_chain(buf: &[u8], server: bool) -> bool {
    let types = if server { SERVER_TYPES } else { CLIENT_TYPES };
    let mut pos = 0usize;
    for n in 0..MAX_CHAIN {
        let rest = match buf.get(pos..) {
            Some(r) if !r.is_empty() => r,
            _ => return n > 0,
        };
        let ty = rest[0];
        if !types.contains(&ty) {
            return false;
        }
        let len = match be32(rest, 1) {
            Some(l) => l,
            // A partial header after at least one full message.
            None => return n > 0,
        };
        let ok = if server { server_len_ok(ty, len) } else { client_len_ok(ty, len) };
        if !ok {
            return false;
        }
        let total = 1 + len as usize;
        let whole = rest.len() >= total;
        let body = rest.get(5..total.min(rest.len())).unwrap_or(&[]);
        if !content_ok(server, ty, body, whole, n == 0) {
            return false;
        }
        if !whole {
            return true;
        }
        pos += total;
    }
    true
}

/// True when `buf` starts like a client stream: a StartupMessage (protocol
/// 3.x), SSLRequest, GSSENCRequest or CancelRequest, or (for connections seen
/// mid-stream) a plausible sequence of frontend messages.
pub fn looks_like_client_start(buf: &[u8]) -> bool {
    if buf.first() == Some(&0) {
        let (len, code) = match (be32(buf, 0), be32(buf, 4)) {
            (Some(l), Some(c)) => (l, c),
            _ => return false,
        };
        return match code {
            SSL_REQUEST | GSSENC_REQUEST => len == 8,
            CANCEL_REQUEST => len == 16,
            c if c >> 16 == 3 && (c & 0xffff) <= 2 => {
                if !(8..=MAX_STARTUP_LEN).contains(&len) {
                    return false;
                }
                // A fully captured startup packet ends with an empty name.
                match buf.get(len as usize - 1) {
                    Some(&b) => b == 0,
                    None => true,
                }
            }
            _ => false,
        };
    }
    plausible_chain(buf, false)
}

/// True when `buf` starts like a server stream: a plausible sequence of
/// backend messages, or the single-byte answer to an SSLRequest.
pub fn looks_like_server_start(buf: &[u8]) -> bool {
    if buf.len() == 1 {
        return matches!(buf[0], b'N' | b'S');
    }
    plausible_chain(buf, true)
}

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Client,
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FState {
    /// Out of sync: waiting for a segment that starts like a message.
    Unsynced,
    /// At a message boundary, or inside a header (`hdr_len > 0`).
    Boundary,
    /// Inside a message body.
    Body,
    /// The stream carries nothing more to parse (TLS, or after Terminate).
    Stopped,
}

/// Type code used for untyped startup-phase packets.
const UNTYPED: u8 = 0;

#[derive(Debug)]
enum Ev {
    Msg {
        ty: u8,
        body: Vec<u8>,
        /// Entry time of the segment holding the message's first byte.
        enter: u64,
        /// Exit time of the segment holding its last byte.
        exit: u64,
    },
    /// One-byte answer to SSLRequest/GSSENCRequest.
    EncryptionAnswer(u8),
    /// Framing was lost in this segment.
    Lost,
    /// Parsing restarts at the start of this segment.
    Resynced,
}

#[derive(Debug, Clone)]
struct Framer {
    dir: Dir,
    state: FState,
    /// Client: the next message is an untyped startup-phase packet.
    untyped_next: bool,
    /// Server: the next byte answers an SSLRequest or GSSENCRequest.
    single_byte_next: bool,
    hdr: [u8; 5],
    hdr_len: usize,
    ty: u8,
    remaining: u64,
    keep: bool,
    body: Vec<u8>,
    msg_enter: u64,
}

impl Framer {
    fn new(dir: Dir) -> Self {
        Framer {
            dir,
            state: FState::Unsynced,
            untyped_next: false,
            single_byte_next: false,
            hdr: [0; 5],
            hdr_len: 0,
            ty: 0,
            remaining: 0,
            keep: false,
            body: Vec::new(),
            msg_enter: 0,
        }
    }

    fn keeps(&self, ty: u8) -> bool {
        match self.dir {
            Dir::Client => matches!(ty, UNTYPED | b'Q' | b'P' | b'B' | b'E' | b'C'),
            Dir::Server => matches!(ty, b'C' | b'E'),
        }
    }

    /// The message type and body length from a complete header.
    fn header(&self) -> Option<(u8, u64)> {
        if self.untyped_next {
            let len = be32(&self.hdr, 0)?;
            if !(8..=MAX_STARTUP_LEN).contains(&len) {
                return None;
            }
            return Some((UNTYPED, u64::from(len - 4)));
        }
        let ty = self.hdr[0];
        let len = be32(&self.hdr, 1)?;
        let ok = match self.dir {
            Dir::Client => client_len_ok(ty, len),
            Dir::Server => server_len_ok(ty, len),
        };
        // Lazily: a rejected length may be under 4.
        ok.then(|| (ty, u64::from(len) - 4))
    }

    fn lose(&mut self, skipped: u64, evs: &mut Vec<Ev>, st: &mut PgStats) {
        self.state = FState::Unsynced;
        self.hdr_len = 0;
        self.body = Vec::new();
        self.single_byte_next = false;
        st.sync_lost += 1;
        st.desync_bytes_skipped = st.desync_bytes_skipped.saturating_add(skipped);
        evs.push(Ev::Lost);
    }

    fn finish(&mut self, exit: u64, evs: &mut Vec<Ev>) {
        let body = std::mem::take(&mut self.body);
        if self.ty == UNTYPED {
            // After SSLRequest/GSSENCRequest the client sends another
            // startup-phase packet (if the answer was 'N').
            self.untyped_next = matches!(be32(&body, 0), Some(SSL_REQUEST | GSSENC_REQUEST));
        }
        evs.push(Ev::Msg { ty: self.ty, body, enter: self.msg_enter, exit });
        self.state = FState::Boundary;
    }

    fn feed(&mut self, seg: &Segment<'_>, evs: &mut Vec<Ev>, st: &mut PgStats) {
        let mut data = seg.data;
        let mut gap = seg.uncaptured;
        loop {
            match self.state {
                FState::Stopped => {
                    st.bytes_ignored = st.bytes_ignored.saturating_add(data.len() as u64).saturating_add(gap);
                    return;
                }
                FState::Unsynced => {
                    // Only reached at the start of a segment: framing is lost
                    // mid-segment only together with the rest of it.
                    let lone_answer = self.dir == Dir::Server && data.len() == 1;
                    let ok = !lone_answer
                        && match self.dir {
                            Dir::Client => looks_like_client_start(data),
                            Dir::Server => looks_like_server_start(data),
                        };
                    if ok {
                        self.state = FState::Boundary;
                        self.hdr_len = 0;
                        self.single_byte_next = false;
                        if self.dir == Dir::Client {
                            self.untyped_next = data.first() == Some(&0);
                        }
                        st.resyncs += 1;
                        evs.push(Ev::Resynced);
                        continue;
                    }
                    st.desync_bytes_skipped =
                        st.desync_bytes_skipped.saturating_add(data.len() as u64).saturating_add(gap);
                    return;
                }
                FState::Boundary => {
                    let Some((&first, rest)) = data.split_first() else {
                        if gap > 0 {
                            // The next message starts in uncaptured bytes.
                            self.lose(gap, evs, st);
                        }
                        return;
                    };
                    if self.single_byte_next && self.hdr_len == 0 {
                        self.single_byte_next = false;
                        match first {
                            b'S' | b'G' => {
                                evs.push(Ev::EncryptionAnswer(first));
                                self.state = FState::Stopped;
                                data = rest;
                                continue;
                            }
                            b'N' => {
                                evs.push(Ev::EncryptionAnswer(first));
                                data = rest;
                                continue;
                            }
                            // Anything else is a typed message (an old
                            // server's ErrorResponse).
                            _ => {}
                        }
                    }
                    let need = if self.untyped_next { 4 } else { 5 };
                    if self.hdr_len == 0 {
                        self.msg_enter = seg.ts_enter;
                    }
                    let take = (need - self.hdr_len.min(need)).min(data.len());
                    for (slot, b) in self.hdr.iter_mut().skip(self.hdr_len).zip(data.iter().take(take)) {
                        *slot = *b;
                    }
                    self.hdr_len += take;
                    data = data.get(take..).unwrap_or(&[]);
                    if self.hdr_len < need {
                        continue;
                    }
                    self.hdr_len = 0;
                    match self.header() {
                        Some((ty, remaining)) => {
                            st.messages += 1;
                            self.ty = ty;
                            self.remaining = remaining;
                            self.keep = self.keeps(ty);
                            self.body.clear();
                            self.state = FState::Body;
                        }
                        None => {
                            st.invalid_headers += 1;
                            let skipped = (need + data.len()) as u64;
                            self.lose(skipped.saturating_add(gap), evs, st);
                            return;
                        }
                    }
                }
                FState::Body => {
                    let n = self.remaining.min(data.len() as u64) as usize;
                    let (now, rest) = data.split_at(n.min(data.len()));
                    if self.keep {
                        let room = MAX_KEPT.saturating_sub(self.body.len());
                        self.body.extend_from_slice(now.get(..room.min(now.len())).unwrap_or(&[]));
                    }
                    data = rest;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.finish(seg.ts_exit, evs);
                        continue;
                    }
                    if gap > 0 {
                        let g = gap.min(self.remaining);
                        self.remaining -= g;
                        gap -= g;
                        if self.remaining == 0 {
                            self.finish(seg.ts_exit, evs);
                            continue;
                        }
                    }
                    return;
                }
            }
        }
    }

    fn buffered(&self) -> usize {
        self.body.capacity()
    }
}

// ---------------------------------------------------------------------------
// Connection state
// ---------------------------------------------------------------------------

/// Counters kept per connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgStats {
    /// Messages framed, both directions (startup packets included).
    pub messages: u64,
    /// Simple Query messages.
    pub queries: u64,
    /// Execute messages.
    pub executes: u64,
    /// Exchanges emitted.
    pub exchanges: u64,
    /// Exchanges emitted without a reply.
    pub unanswered: u64,
    /// Bytes (captured and uncaptured) skipped while out of sync.
    pub desync_bytes_skipped: u64,
    /// Times a direction lost its framing.
    pub sync_lost: u64,
    /// Times parsing (re)started at a segment start.
    pub resyncs: u64,
    /// Implausible message headers.
    pub invalid_headers: u64,
    /// Server messages with no client operation to answer.
    pub orphan_replies: u64,
    /// Operations whose reply was lost in skipped bytes.
    pub lost_responses: u64,
    /// Executes skipped by the server after an error, until Sync.
    pub aborted_executes: u64,
    /// ErrorResponses that failed no query (a prepare, a Sync's commit).
    pub errors_without_exchange: u64,
    /// Operations abandoned because [`MAX_PENDING`] or
    /// [`MAX_PENDING_TEXT`] was exceeded.
    pub pending_overflow: u64,
    /// Prepared statements forgotten to stay within bounds.
    pub statements_evicted: u64,
    /// Binds or Executes naming a statement or portal never seen.
    pub unknown_statements: u64,
    /// StartupMessages seen.
    pub startups: u64,
    /// SSLRequest or GSSENCRequest packets seen.
    pub encryption_requests: u64,
    /// ErrorResponses during the startup phase (authentication failures).
    pub startup_errors: u64,
    /// Bytes ignored after encryption started or the client terminated.
    pub bytes_ignored: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Query,
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    Function,
}

/// A Query or Execute waiting for its completion.
#[derive(Debug, Clone)]
struct Pending {
    text: Option<Arc<str>>,
    req_enter: u64,
    req_exit: u64,
    resp_enter: u64,
    resp_exit: u64,
    rows: Option<u64>,
    data_rows: u64,
    error: Option<DbError>,
    copy_in: bool,
}

impl Pending {
    fn text_len(&self) -> usize {
        self.text.as_ref().map_or(0, |t| t.len())
    }

    fn touch(&mut self, enter: u64, exit: u64) {
        if self.resp_enter == 0 {
            self.resp_enter = enter;
        }
        self.resp_exit = self.resp_exit.max(exit);
    }
}

#[derive(Debug, Clone)]
struct Op {
    kind: OpKind,
    /// Entry time of the segment that carried the message.
    sent: u64,
    ex: Option<Box<Pending>>,
}

/// Pairs queries and replies of one PostgreSQL connection.
#[derive(Debug, Clone)]
pub struct PgConn {
    client: Framer,
    server: Framer,
    ops: VecDeque<Op>,
    pending_text: usize,
    statements: HashMap<String, Arc<str>>,
    statement_order: VecDeque<String>,
    statement_bytes: usize,
    unnamed_statement: Option<Arc<str>>,
    portals: VecDeque<(String, Option<Arc<str>>)>,
    database: Option<String>,
    user: Option<String>,
    /// A StartupMessage was seen and its ReadyForQuery not yet.
    startup_pending: bool,
    encrypted: bool,
    /// The server skips messages until the next Sync (after an error).
    discard_until_sync: bool,
    /// The server direction lost its framing and has not resynced.
    server_lost: bool,
    /// Exit time of the last server segment skipped while lost.
    lost_exit: u64,
    stats: PgStats,
}

impl Default for PgConn {
    fn default() -> Self {
        Self::new()
    }
}

/// The NUL-terminated string at `at` (or the rest of `b` when the NUL was
/// not captured) and the index after its terminator.
fn cstr(b: &[u8], at: usize) -> (&[u8], usize) {
    let rest = b.get(at..).unwrap_or(&[]);
    match rest.iter().position(|&c| c == 0) {
        Some(n) => (rest.get(..n).unwrap_or(&[]), at + n + 1),
        None => (rest, b.len()),
    }
}

/// Lossy UTF-8 text of at most `max` bytes, cut on a character boundary.
fn text_of(b: &[u8], max: usize) -> String {
    let mut s = String::from_utf8_lossy(b.get(..max.min(b.len())).unwrap_or(&[])).into_owned();
    if s.len() > max {
        let mut cut = max;
        while cut > 0 && !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Row count carried by a CommandComplete tag (`SELECT 5`, `INSERT 0 3`).
fn rows_from_tag(tag: &str) -> Option<u64> {
    let mut words = tag.split_ascii_whitespace();
    let cmd = words.next()?;
    if !matches!(cmd, "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "FETCH" | "MOVE" | "COPY") {
        return None;
    }
    words.last()?.parse().ok()
}

/// SQLSTATE and message of an ErrorResponse body.
fn parse_error(body: &[u8]) -> DbError {
    let mut code = String::new();
    let mut message = String::new();
    let mut at = 0usize;
    while let Some(&field) = body.get(at) {
        if field == 0 {
            break;
        }
        let (value, next) = cstr(body, at + 1);
        match field {
            b'C' => code = text_of(value, 16),
            b'M' => message = text_of(value, MAX_ERROR_MESSAGE),
            _ => {}
        }
        at = next;
    }
    DbError { code, message }
}

impl PgConn {
    pub fn new() -> Self {
        PgConn {
            client: Framer::new(Dir::Client),
            server: Framer::new(Dir::Server),
            ops: VecDeque::new(),
            pending_text: 0,
            statements: HashMap::new(),
            statement_order: VecDeque::new(),
            statement_bytes: 0,
            unnamed_statement: None,
            portals: VecDeque::new(),
            database: None,
            user: None,
            startup_pending: false,
            encrypted: false,
            discard_until_sync: false,
            server_lost: false,
            lost_exit: 0,
            stats: PgStats::default(),
        }
    }

    pub fn stats(&self) -> &PgStats {
        &self.stats
    }

    /// After an SSLRequest (or GSSENCRequest) was accepted the stream is
    /// encrypted and nothing more is parsed.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// `user` startup parameter, when the startup was seen.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Database of the connection: the `database` startup parameter, which
    /// defaults to the user name.
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref().or(self.user.as_deref())
    }

    /// Client operations (Query, Parse, Bind, Execute, Sync...) awaiting
    /// their reply.
    pub fn pending_operations(&self) -> usize {
        self.ops.len()
    }

    /// Approximate heap memory held by this connection's state.
    pub fn buffered_bytes(&self) -> usize {
        let portals: usize =
            self.portals.iter().map(|(n, _)| n.capacity() + std::mem::size_of::<(String, Option<Arc<str>>)>()).sum();
        self.client.buffered()
            + self.server.buffered()
            + self.statement_bytes
            + self.statements.len() * 2 * std::mem::size_of::<(String, Arc<str>)>()
            + portals
            + self.pending_text
            + self.ops.len() * (std::mem::size_of::<Op>() + std::mem::size_of::<Pending>())
    }

    // -- operation queue --------------------------------------------------

    fn pop_op(&mut self) -> Option<Op> {
        let op = self.ops.pop_front()?;
        if let Some(p) = &op.ex {
            self.pending_text = self.pending_text.saturating_sub(p.text_len());
        }
        Some(op)
    }

    fn push_op(&mut self, op: Op, out: &mut Vec<DbExchange>) {
        let len = op.ex.as_ref().map_or(0, |p| p.text_len());
        while !self.ops.is_empty() && (self.ops.len() >= MAX_PENDING || self.pending_text + len > MAX_PENDING_TEXT) {
            if let Some(old) = self.pop_op() {
                self.stats.pending_overflow += 1;
                if let Some(p) = old.ex {
                    self.emit(*p, true, out);
                }
            }
        }
        self.pending_text += len;
        self.ops.push_back(op);
    }

    fn emit(&mut self, p: Pending, no_response: bool, out: &mut Vec<DbExchange>) {
        self.stats.exchanges += 1;
        if no_response {
            self.stats.unanswered += 1;
        }
        let mut ex = DbExchange::new(DbSystem::Postgresql);
        ex.query_text = p.text.as_deref().map(str::to_string);
        ex.namespace = self.database().map(str::to_string);
        ex.error = p.error;
        ex.rows = if no_response { None } else { p.rows };
        ex.req_first_enter = p.req_enter;
        ex.req_last_exit = p.req_exit;
        ex.resp_first_enter = p.resp_enter;
        ex.resp_last_exit = p.resp_exit;
        ex.no_response = no_response;
        out.push(ex);
    }

    /// An operation whose reply will never be seen: a Query or Execute that
    /// got part of a reply is reported with what was seen, otherwise without
    /// a reply.
    fn abandon(&mut self, op: Op, out: &mut Vec<DbExchange>) {
        self.stats.lost_responses += 1;
        if let Some(mut p) = op.ex {
            let answered = p.resp_enter != 0 || p.error.is_some();
            p.rows = None;
            self.emit(*p, !answered, out);
        }
    }

    /// Make the first operation of one of `kinds` (sent before `exit`) the
    /// front of the queue, abandoning the ones before it. False (and the
    /// reply counted as orphan) when there is none.
    fn route(&mut self, kinds: &[OpKind], exit: u64, out: &mut Vec<DbExchange>) -> bool {
        let idx = self.ops.iter().take_while(|o| o.sent <= exit).position(|o| kinds.contains(&o.kind));
        match idx {
            Some(i) => {
                for _ in 0..i {
                    if let Some(op) = self.pop_op() {
                        self.abandon(op, out);
                    }
                }
                true
            }
            None => {
                self.stats.orphan_replies += 1;
                false
            }
        }
    }

    fn front_pending(&mut self) -> Option<&mut Pending> {
        self.ops.front_mut().and_then(|o| o.ex.as_deref_mut())
    }

    fn front_kind(&self) -> Option<OpKind> {
        self.ops.front().map(|o| o.kind)
    }

    // -- statements and portals -------------------------------------------

    fn forget_statement(&mut self, name: &str) {
        if let Some(old) = self.statements.remove(name) {
            self.statement_bytes = self.statement_bytes.saturating_sub(name.len() + old.len());
            if let Some(i) = self.statement_order.iter().position(|n| n == name) {
                self.statement_order.remove(i);
            }
        }
    }

    fn store_statement(&mut self, name: &str, text: Arc<str>) {
        if name.is_empty() {
            self.unnamed_statement = Some(text);
            return;
        }
        self.forget_statement(name);
        if name.len() > MAX_NAME_LEN {
            return;
        }
        self.statement_bytes += name.len() + text.len();
        self.statements.insert(name.to_string(), text);
        self.statement_order.push_back(name.to_string());
        while self.statements.len() > MAX_STATEMENTS || self.statement_bytes > MAX_STATEMENT_BYTES {
            let Some(oldest) = self.statement_order.pop_front() else {
                break;
            };
            if let Some(old) = self.statements.remove(&oldest) {
                self.statement_bytes = self.statement_bytes.saturating_sub(oldest.len() + old.len());
                self.stats.statements_evicted += 1;
            }
        }
    }

    fn statement(&self, name: &[u8]) -> Option<Arc<str>> {
        if name.is_empty() {
            return self.unnamed_statement.clone();
        }
        let name = std::str::from_utf8(name).ok()?;
        self.statements.get(name).cloned()
    }

    fn store_portal(&mut self, name: &[u8], text: Option<Arc<str>>) {
        if name.len() > MAX_NAME_LEN {
            return;
        }
        let name = String::from_utf8_lossy(name).into_owned();
        if let Some(i) = self.portals.iter().position(|(n, _)| *n == name) {
            self.portals.remove(i);
        }
        while self.portals.len() >= MAX_PORTALS {
            self.portals.pop_front();
        }
        self.portals.push_back((name, text));
    }

    fn portal(&self, name: &[u8]) -> Option<Option<Arc<str>>> {
        let name = String::from_utf8_lossy(name);
        self.portals.iter().find(|(n, _)| *n == name).map(|(_, t)| t.clone())
    }

    // -- client side -------------------------------------------------------

    /// Bytes travelling client -> server.
    pub fn on_client_segment(&mut self, seg: Segment<'_>, out: &mut Vec<DbExchange>) {
        let mut evs = Vec::new();
        self.client.feed(&seg, &mut evs, &mut self.stats);
        for ev in evs {
            if let Ev::Msg { ty, body, enter, exit } = ev {
                self.client_message(ty, &body, enter, exit, out);
            }
        }
    }

    fn startup_packet(&mut self, body: &[u8]) {
        // The server says nothing before a startup-phase packet: its next
        // byte starts the answer.
        if self.server.state != FState::Stopped {
            self.server.state = FState::Boundary;
            self.server.hdr_len = 0;
            self.server.body = Vec::new();
        }
        match be32(body, 0) {
            Some(SSL_REQUEST | GSSENC_REQUEST) => {
                self.stats.encryption_requests += 1;
                self.server.single_byte_next = true;
            }
            Some(code) if code >> 16 == PROTOCOL_3 >> 16 => {
                self.stats.startups += 1;
                self.startup_pending = true;
                let mut at = 4;
                loop {
                    let (name, next) = cstr(body, at);
                    if name.is_empty() || next >= body.len() {
                        break;
                    }
                    let (value, after) = cstr(body, next);
                    let value = (value.len() <= MAX_PARAM_LEN).then(|| text_of(value, MAX_PARAM_LEN));
                    match name {
                        b"user" => self.user = value,
                        b"database" => self.database = value,
                        _ => {}
                    }
                    at = after;
                }
            }
            // CancelRequest or unknown: nothing follows on this connection.
            _ => {}
        }
    }

    fn new_pending(text: Option<Arc<str>>, enter: u64, exit: u64) -> Box<Pending> {
        Box::new(Pending {
            text,
            req_enter: enter,
            req_exit: exit,
            resp_enter: 0,
            resp_exit: 0,
            rows: None,
            data_rows: 0,
            error: None,
            copy_in: false,
        })
    }

    fn client_message(&mut self, ty: u8, body: &[u8], enter: u64, exit: u64, out: &mut Vec<DbExchange>) {
        if ty == UNTYPED {
            self.startup_packet(body);
            return;
        }
        if self.discard_until_sync && matches!(ty, b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'F') {
            if ty == b'E' {
                self.stats.executes += 1;
                self.stats.aborted_executes += 1;
            }
            return;
        }
        let op = |kind, ex| Op { kind, sent: enter, ex };
        match ty {
            b'Q' => {
                self.stats.queries += 1;
                let (text, _) = cstr(body, 0);
                let text: Arc<str> = Arc::from(text_of(text, MAX_QUERY_TEXT));
                let p = Self::new_pending(Some(text), enter, exit);
                self.push_op(op(OpKind::Query, Some(p)), out);
            }
            b'P' => {
                let (name, next) = cstr(body, 0);
                let (query, _) = cstr(body, next);
                let text: Arc<str> = Arc::from(text_of(query, MAX_QUERY_TEXT));
                let name = String::from_utf8_lossy(name).into_owned();
                self.store_statement(&name, text);
                self.push_op(op(OpKind::Parse, None), out);
            }
            b'B' => {
                let (portal, next) = cstr(body, 0);
                let (stmt, _) = cstr(body, next);
                let text = self.statement(stmt);
                if text.is_none() {
                    self.stats.unknown_statements += 1;
                }
                self.store_portal(portal, text);
                self.push_op(op(OpKind::Bind, None), out);
            }
            b'D' => self.push_op(op(OpKind::Describe, None), out),
            b'E' => {
                self.stats.executes += 1;
                let (portal, _) = cstr(body, 0);
                let text = match self.portal(portal) {
                    Some(t) => t,
                    None => {
                        self.stats.unknown_statements += 1;
                        None
                    }
                };
                let p = Self::new_pending(text, enter, exit);
                self.push_op(op(OpKind::Execute, Some(p)), out);
            }
            b'C' => {
                let (name, _) = cstr(body, 1);
                match body.first() {
                    Some(b'S') => {
                        if name.is_empty() {
                            self.unnamed_statement = None;
                        } else {
                            let name = String::from_utf8_lossy(name).into_owned();
                            self.forget_statement(&name);
                        }
                    }
                    Some(b'P') => {
                        if let Some(i) = self.portals.iter().position(|(n, _)| n.as_bytes() == name) {
                            self.portals.remove(i);
                        }
                    }
                    _ => {}
                }
                self.push_op(op(OpKind::Close, None), out);
            }
            b'S' => {
                self.discard_until_sync = false;
                self.push_op(op(OpKind::Sync, None), out);
            }
            b'F' => self.push_op(op(OpKind::Function, None), out),
            b'd' | b'c' | b'f' => {
                // COPY FROM STDIN data: part of the request in progress.
                if let Some(p) = self.ops.iter_mut().find_map(|o| o.ex.as_deref_mut().filter(|p| p.copy_in)) {
                    p.req_exit = p.req_exit.max(exit);
                }
            }
            b'X' => {
                self.client.state = FState::Stopped;
            }
            // Flush, password and authentication messages.
            _ => {}
        }
    }

    // -- server side -------------------------------------------------------

    /// Bytes travelling server -> client.
    pub fn on_server_segment(&mut self, seg: Segment<'_>, out: &mut Vec<DbExchange>) {
        let mut evs = Vec::new();
        self.server.feed(&seg, &mut evs, &mut self.stats);
        for ev in evs {
            match ev {
                Ev::Msg { ty, body, enter, exit } => self.server_message(ty, &body, enter, exit, out),
                Ev::EncryptionAnswer(b'N') => {}
                Ev::EncryptionAnswer(_) => {
                    self.encrypted = true;
                    self.client.state = FState::Stopped;
                    self.server.state = FState::Stopped;
                }
                Ev::Lost => {
                    self.server_lost = true;
                    self.lost_exit = seg.ts_exit;
                }
                Ev::Resynced => {
                    if self.server_lost {
                        self.server_lost = false;
                        self.recover(out);
                    }
                }
            }
        }
        if self.server_lost && self.server.state == FState::Unsynced {
            self.lost_exit = seg.ts_exit;
        }
    }

    /// The server stream resynced after losing its framing: operations sent
    /// before the last skipped segment ended may have been answered in the
    /// skipped bytes. They are reported with what was seen of their reply.
    fn recover(&mut self, out: &mut Vec<DbExchange>) {
        while self.ops.front().is_some_and(|o| o.sent <= self.lost_exit) {
            if let Some(mut op) = self.pop_op() {
                if let Some(p) = op.ex.as_deref_mut() {
                    if p.resp_enter != 0 {
                        p.resp_exit = p.resp_exit.max(self.lost_exit);
                    }
                }
                self.abandon(op, out);
            }
        }
        self.discard_until_sync = false;
    }

    fn complete_front(&mut self, out: &mut Vec<DbExchange>) {
        if let Some(op) = self.pop_op() {
            if let Some(p) = op.ex {
                self.emit(*p, false, out);
            }
        }
    }

    fn server_message(&mut self, ty: u8, body: &[u8], enter: u64, exit: u64, out: &mut Vec<DbExchange>) {
        use OpKind::*;
        match ty {
            b'Z' => self.ready_for_query(enter, exit, out),
            b'1' | b'2' | b'3' | b'n' => {
                let kind = match ty {
                    b'1' => Parse,
                    b'2' => Bind,
                    b'3' => Close,
                    _ => Describe,
                };
                if self.route(&[kind], exit, out) {
                    self.pop_op();
                }
            }
            b'T' => {
                if self.front_kind() == Some(Query) {
                    if let Some(p) = self.front_pending() {
                        p.touch(enter, exit);
                    }
                } else if self.route(&[Describe], exit, out) {
                    self.pop_op();
                }
            }
            b'D' | b'C' | b'I' | b'G' | b'H' | b'W' => {
                if !self.route(&[Query, Execute], exit, out) {
                    return;
                }
                let is_query = self.front_kind() == Some(Query);
                let Some(p) = self.front_pending() else {
                    return;
                };
                p.touch(enter, exit);
                match ty {
                    b'D' => p.data_rows += 1,
                    b'C' => {
                        let (tag, _) = cstr(body, 0);
                        let n = rows_from_tag(&text_of(tag, 64));
                        if is_query {
                            if let Some(n) = n {
                                p.rows = Some(p.rows.unwrap_or(0).saturating_add(n));
                            }
                        } else {
                            p.rows = n;
                        }
                    }
                    b'G' | b'W' => p.copy_in = true,
                    _ => {}
                }
                if !is_query && matches!(ty, b'C' | b'I') {
                    self.complete_front(out);
                }
            }
            b's' => {
                if !self.route(&[Execute], exit, out) {
                    return;
                }
                if let Some(p) = self.front_pending() {
                    p.touch(enter, exit);
                    p.rows = Some(p.data_rows);
                }
                self.complete_front(out);
            }
            b'd' | b'c' => {
                // COPY TO STDOUT data.
                if let Some(p) = self.front_pending() {
                    p.touch(enter, exit);
                }
            }
            b'E' => self.error_response(body, enter, exit, out),
            // Authentication, ParameterStatus, BackendKeyData, notices,
            // notifications, ParameterDescription, FunctionCallResponse,
            // NegotiateProtocolVersion.
            _ => {}
        }
    }

    fn ready_for_query(&mut self, enter: u64, exit: u64, out: &mut Vec<DbExchange>) {
        if self.ops.is_empty() {
            if self.startup_pending {
                self.startup_pending = false;
            } else {
                self.stats.orphan_replies += 1;
            }
            return;
        }
        self.startup_pending = false;
        if !self.route(&[OpKind::Query, OpKind::Sync, OpKind::Function], exit, out) {
            return;
        }
        if let Some(p) = self.front_pending() {
            p.touch(enter, exit);
        }
        self.complete_front(out);
    }

    fn error_response(&mut self, body: &[u8], enter: u64, exit: u64, out: &mut Vec<DbExchange>) {
        let err = parse_error(body);
        let Some(kind) = self.front_kind() else {
            if self.startup_pending {
                self.startup_pending = false;
                self.stats.startup_errors += 1;
            } else {
                self.stats.orphan_replies += 1;
            }
            return;
        };
        match kind {
            OpKind::Query => {
                if let Some(p) = self.front_pending() {
                    p.touch(enter, exit);
                    if p.error.is_none() {
                        p.error = Some(err);
                    }
                }
            }
            OpKind::Function | OpKind::Sync => self.stats.errors_without_exchange += 1,
            _ => {
                // Extended protocol: the server skips everything up to the
                // next Sync.
                let end = self.ops.iter().position(|o| o.kind == OpKind::Sync).unwrap_or(self.ops.len());
                if end == self.ops.len() {
                    self.discard_until_sync = true;
                }
                let mut failed = false;
                for _ in 0..end {
                    let Some(op) = self.pop_op() else { break };
                    if let Some(mut p) = op.ex {
                        if failed {
                            self.stats.aborted_executes += 1;
                        } else {
                            failed = true;
                            p.touch(enter, exit);
                            p.rows = None;
                            p.error = Some(err.clone());
                            self.emit(*p, false, out);
                        }
                    }
                }
                if !failed {
                    self.stats.errors_without_exchange += 1;
                }
            }
        }
    }

    /// The connection closed: operations still waiting are reported (those
    /// that got an ErrorResponse with it, the others without a reply). When
    /// the reply stream had lost its framing, operations whose reply had
    /// started are reported as answered, their end inferred from the last
    /// skipped server segment.
    pub fn on_close(&mut self, ts: u64, out: &mut Vec<DbExchange>) {
        let _ = ts;
        if self.server_lost {
            // The reply stream lost its framing and never resynced: replies
            // in progress ended somewhere in the skipped bytes.
            self.server_lost = false;
            self.recover(out);
        }
        while let Some(op) = self.pop_op() {
            if let Some(p) = op.ex {
                let answered = p.error.is_some();
                self.emit(*p, !answered, out);
            }
        }
        self.client.state = FState::Stopped;
        self.server.state = FState::Stopped;
        self.client.body = Vec::new();
        self.server.body = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_under_four_is_rejected_without_arithmetic_on_it() {
        for dir_client in [true, false] {
            for ty in [b'Q', b'Z', b'D', b'x'] {
                for len in [0u32, 1, 3] {
                    let mut c = PgConn::new();
                    let mut out = Vec::new();
                    c.on_client_segment(Segment::new(&startup("u", Some("d")), 0, 1), &mut out);
                    let mut m = vec![ty];
                    m.extend_from_slice(&len.to_be_bytes());
                    m.extend_from_slice(b"abc");
                    if dir_client {
                        c.on_client_segment(Segment::new(&m, 1, 2), &mut out);
                    } else {
                        c.on_server_segment(Segment::new(&m, 1, 2), &mut out);
                    }
                    assert!(out.is_empty());
                    c.on_close(3, &mut out);
                }
            }
        }
    }

    fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![ty];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn cs(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            v.extend_from_slice(p);
            v.push(0);
        }
        v
    }

    fn startup(user: &str, db: Option<&str>) -> Vec<u8> {
        let mut body = PROTOCOL_3.to_be_bytes().to_vec();
        body.extend(cs(&[b"user", user.as_bytes()]));
        if let Some(d) = db {
            body.extend(cs(&[b"database", d.as_bytes()]));
        }
        body.push(0);
        let mut v = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        v.extend(body);
        v
    }

    fn query(sql: &str) -> Vec<u8> {
        msg(b'Q', &cs(&[sql.as_bytes()]))
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut b = cs(&[name.as_bytes(), sql.as_bytes()]);
        b.extend_from_slice(&[0, 0]);
        msg(b'P', &b)
    }

    fn bind(portal: &str, stmt: &str) -> Vec<u8> {
        let mut b = cs(&[portal.as_bytes(), stmt.as_bytes()]);
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        msg(b'B', &b)
    }

    fn execute(portal: &str) -> Vec<u8> {
        let mut b = cs(&[portal.as_bytes()]);
        b.extend_from_slice(&[0, 0, 0, 0]);
        msg(b'E', &b)
    }

    fn sync() -> Vec<u8> {
        msg(b'S', b"")
    }

    fn complete(tag: &str) -> Vec<u8> {
        msg(b'C', &cs(&[tag.as_bytes()]))
    }

    fn ready() -> Vec<u8> {
        msg(b'Z', b"I")
    }

    fn error(code: &str, text: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.push(b'S');
        b.extend(cs(&[b"ERROR"]));
        b.push(b'C');
        b.extend(cs(&[code.as_bytes()]));
        b.push(b'M');
        b.extend(cs(&[text.as_bytes()]));
        b.push(0);
        msg(b'E', &b)
    }

    fn row() -> Vec<u8> {
        msg(b'D', &[0, 1, 0, 0, 0, 1, b'1'])
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    struct Drive {
        conn: PgConn,
        out: Vec<DbExchange>,
        t: u64,
    }

    impl Drive {
        fn new() -> Self {
            Drive { conn: PgConn::new(), out: Vec::new(), t: 0 }
        }
        fn seg<'a>(&mut self, data: &'a [u8], gap: u64) -> Segment<'a> {
            self.t += 1000;
            Segment { data, uncaptured: gap, ts_enter: self.t, ts_exit: self.t + 500 }
        }
        fn c(&mut self, data: &[u8]) {
            let s = self.seg(data, 0);
            self.conn.on_client_segment(s, &mut self.out);
        }
        fn s(&mut self, data: &[u8]) {
            let s = self.seg(data, 0);
            self.conn.on_server_segment(s, &mut self.out);
        }
        fn s_gap(&mut self, data: &[u8], gap: u64) {
            let s = self.seg(data, gap);
            self.conn.on_server_segment(s, &mut self.out);
        }
        fn take(&mut self) -> Vec<DbExchange> {
            std::mem::take(&mut self.out)
        }
        fn login(&mut self) {
            self.c(&startup("alice", Some("shop")));
            self.s(&cat(&[msg(b'R', &[0, 0, 0, 0]), ready()]));
        }
    }

    fn texts(ex: &[DbExchange]) -> Vec<Option<&str>> {
        ex.iter().map(|e| e.query_text.as_deref()).collect()
    }

    #[test]
    fn looks_like_client() {
        assert!(looks_like_client_start(&startup("u", Some("d"))));
        assert!(looks_like_client_start(&[0, 0, 0, 8, 4, 210, 22, 47]));
        assert!(looks_like_client_start(&[0, 0, 0, 8, 4, 210, 22, 48]));
        assert!(!looks_like_client_start(&[0, 0, 0, 9, 4, 210, 22, 47]));
        assert!(looks_like_client_start(&query("SELECT 1")));
        assert!(!looks_like_client_start(&query("SELECT 1")[..8]));
        assert!(!looks_like_client_start(&msg(b'Q', b"SEL\x01ECT\0")));
        assert!(looks_like_client_start(&cat(&[parse("", "SELECT 1"), bind("", ""), execute(""), sync()])));
        assert!(!looks_like_client_start(&msg(b'S', b"x")));
        assert!(!looks_like_client_start(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_client_start(b""));
        assert!(!looks_like_client_start(b"Q"));
        assert!(!looks_like_client_start(&[b'Q', 0x7f, 0, 0, 0]));
    }

    #[test]
    fn looks_like_server() {
        assert!(looks_like_server_start(b"N"));
        assert!(looks_like_server_start(b"S"));
        assert!(!looks_like_server_start(b"X"));
        assert!(looks_like_server_start(&cat(&[complete("SELECT 1"), ready()])));
        assert!(looks_like_server_start(&error("42P01", "nope")));
        assert!(!looks_like_server_start(&msg(b'Z', b"Q")));
        assert!(!looks_like_server_start(&cat(&[complete("SELECT 1"), b"\x16\x03\x01".to_vec()])));
        assert!(!looks_like_server_start(b"HTTP/1.1 200 OK\r\n"));
        assert!(!looks_like_server_start(&[0x17, 0x03, 0x03, 0, 10]));
    }

    #[test]
    fn simple_query_with_rows_and_namespace() {
        let mut d = Drive::new();
        d.login();
        d.c(&query("SELECT * FROM t"));
        d.s(&cat(&[msg(b'T', &[0, 0]), row(), row(), complete("SELECT 2"), ready()]));
        let ex = d.take();
        assert_eq!(ex.len(), 1);
        let e = &ex[0];
        assert_eq!(e.query_text.as_deref(), Some("SELECT * FROM t"));
        assert_eq!(e.namespace.as_deref(), Some("shop"));
        assert_eq!(e.rows, Some(2));
        assert_eq!((e.req_first_enter, e.req_last_exit), (3000, 3500));
        assert_eq!((e.resp_first_enter, e.resp_last_exit), (4000, 4500));
        assert!(!e.no_response);
        assert_eq!(d.conn.user(), Some("alice"));
        assert_eq!(d.conn.stats().orphan_replies, 0);
    }

    #[test]
    fn multi_statement_rows_summed_and_error() {
        let mut d = Drive::new();
        d.login();
        d.c(&query("INSERT INTO t VALUES (1); UPDATE t SET a = 2; SELECT x"));
        d.s(&cat(&[
            complete("INSERT 0 1"),
            complete("UPDATE 3"),
            error("42703", "column \"x\" does not exist"),
            ready(),
        ]));
        let ex = d.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].rows, Some(4));
        let err = ex[0].error.as_ref().expect("error");
        assert_eq!(err.code, "42703");
        assert_eq!(err.message, "column \"x\" does not exist");
    }

    #[test]
    fn extended_named_statement_reused() {
        let mut d = Drive::new();
        d.login();
        d.c(&cat(&[parse("s1", "SELECT $1"), sync()]));
        d.s(&cat(&[msg(b'1', b""), ready()]));
        assert!(d.take().is_empty());
        for _ in 0..3 {
            d.c(&cat(&[bind("", "s1"), execute(""), sync()]));
            d.s(&cat(&[msg(b'2', b""), row(), complete("SELECT 1"), ready()]));
        }
        let ex = d.take();
        assert_eq!(texts(&ex), vec![Some("SELECT $1"); 3]);
        assert!(ex.iter().all(|e| e.rows == Some(1)));
        assert_eq!(d.conn.pending_operations(), 0);
    }

    #[test]
    fn pipeline_error_skips_later_executes() {
        let mut d = Drive::new();
        d.login();
        let mut batch = Vec::new();
        for sql in ["SELECT 1", "SELECT bad", "SELECT 3"] {
            batch.extend(parse("", sql));
            batch.extend(bind("", ""));
            batch.extend(execute(""));
        }
        batch.extend(sync());
        d.c(&batch);
        d.s(&cat(&[msg(b'1', b""), msg(b'2', b""), row(), complete("SELECT 1"), error("42703", "bad"), ready()]));
        let ex = d.take();
        assert_eq!(texts(&ex), vec![Some("SELECT 1"), Some("SELECT bad")]);
        assert_eq!(ex[1].error.as_ref().map(|e| e.code.as_str()), Some("42703"));
        assert_eq!(d.conn.stats().aborted_executes, 1);
        assert_eq!(d.conn.pending_operations(), 0);
    }

    #[test]
    fn split_at_every_byte() {
        let client = cat(&[query("SELECT 1"), parse("", "SELECT 2"), bind("", ""), execute(""), sync()]);
        let server = cat(&[
            msg(b'T', &[0, 0]),
            row(),
            complete("SELECT 1"),
            ready(),
            msg(b'1', b""),
            msg(b'2', b""),
            row(),
            complete("SELECT 1"),
            ready(),
        ]);
        for step in 1..8 {
            let mut d = Drive::new();
            d.login();
            for chunk in client.chunks(step) {
                d.c(chunk);
            }
            for chunk in server.chunks(step) {
                d.s(chunk);
            }
            let ex = d.take();
            assert_eq!(texts(&ex), vec![Some("SELECT 1"), Some("SELECT 2")], "step {step}");
            assert!(ex.iter().all(|e| e.rows == Some(1) && !e.no_response));
        }
    }

    #[test]
    fn large_data_row_skipped_by_length() {
        let mut d = Drive::new();
        d.login();
        d.c(&query("SELECT repeat('x', 1000000)"));
        let mut big = vec![b'D'];
        big.extend_from_slice(&(1_000_010u32).to_be_bytes());
        big.extend_from_slice(&[0, 1, 0, 0x0f, 0x42, 0x40]);
        big.extend(std::iter::repeat_n(b'x', 100));
        d.s_gap(&big, 1_000_010 - 4 - 6 - 100);
        d.s(&cat(&[complete("SELECT 1"), ready()]));
        let ex = d.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].rows, Some(1));
        assert_eq!(d.conn.stats().desync_bytes_skipped, 0);
        assert!(d.conn.buffered_bytes() < 64 * 1024);
    }

    #[test]
    fn lost_completion_recovered_at_next_reply() {
        let mut d = Drive::new();
        d.login();
        d.c(&query("SELECT big"));
        // The data row's end and the completion fall into the gap.
        d.s_gap(&[b'D', 0, 0, 0x10, 0, 0, 1], 0x1000 + 500);
        d.c(&query("SELECT 2"));
        d.s(&cat(&[complete("SELECT 1"), ready()]));
        let ex = d.take();
        assert_eq!(texts(&ex), vec![Some("SELECT big"), Some("SELECT 2")]);
        assert!(!ex[0].no_response);
        assert_eq!(ex[0].rows, None);
        assert_eq!(ex[1].rows, Some(1));
        assert_eq!(d.conn.stats().lost_responses, 1);
    }

    #[test]
    fn ssl_accepted_stops_parsing() {
        let mut d = Drive::new();
        d.c(&[0, 0, 0, 8, 4, 210, 22, 47]);
        d.s(b"S");
        assert!(d.conn.is_encrypted());
        d.c(b"\x16\x03\x01\x02\x00");
        d.s(b"\x16\x03\x03\x00\x7a");
        assert!(d.take().is_empty());
        assert!(d.conn.stats().bytes_ignored > 0);
    }

    #[test]
    fn ssl_refused_continues() {
        let mut d = Drive::new();
        d.c(&[0, 0, 0, 8, 4, 210, 22, 47]);
        d.s(b"N");
        d.login();
        d.c(&query("SELECT 1"));
        d.s(&cat(&[complete("SELECT 1"), ready()]));
        assert_eq!(d.take().len(), 1);
        assert!(!d.conn.is_encrypted());
    }

    #[test]
    fn mid_stream_attach() {
        let mut d = Drive::new();
        // Tail of an earlier message, then replies to queries never seen.
        d.c(b"ECT 1\0");
        d.s(&cat(&[complete("SELECT 1"), ready()]));
        d.c(&query("SELECT 2"));
        d.s(&cat(&[complete("SELECT 1"), ready()]));
        let ex = d.take();
        assert_eq!(texts(&ex), vec![Some("SELECT 2")]);
        assert_eq!(ex[0].namespace, None);
        assert_eq!(d.conn.stats().orphan_replies, 2);
    }

    #[test]
    fn close_reports_pending() {
        let mut d = Drive::new();
        d.login();
        d.c(&query("SELECT pg_sleep(10)"));
        d.conn.on_close(99, &mut d.out);
        let ex = d.take();
        assert_eq!(ex.len(), 1);
        assert!(ex[0].no_response);
        assert_eq!(d.conn.stats().unanswered, 1);
    }

    #[test]
    fn statement_store_is_bounded() {
        let mut d = Drive::new();
        d.login();
        for i in 0..3000 {
            d.c(&cat(&[parse(&format!("s{i}"), &"x".repeat(500)), sync()]));
            d.s(&cat(&[msg(b'1', b""), ready()]));
        }
        assert!(d.conn.statements.len() <= MAX_STATEMENTS);
        assert!(d.conn.statement_bytes <= MAX_STATEMENT_BYTES);
        assert!(d.conn.stats().statements_evicted > 0);
        d.c(&cat(&[bind("", "s2999"), execute(""), sync()]));
        d.s(&cat(&[msg(b'2', b""), complete("SELECT 0"), ready()]));
        assert_eq!(d.take().len(), 1);
    }

    #[test]
    fn rows_from_tags() {
        assert_eq!(rows_from_tag("SELECT 5"), Some(5));
        assert_eq!(rows_from_tag("INSERT 0 3"), Some(3));
        assert_eq!(rows_from_tag("UPDATE 2"), Some(2));
        assert_eq!(rows_from_tag("COPY 7"), Some(7));
        assert_eq!(rows_from_tag("CREATE TABLE"), None);
        assert_eq!(rows_from_tag("SELECT x"), None);
        assert_eq!(rows_from_tag(""), None);
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for i in 0..2000 {
            let mut d = Drive::new();
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let len = (x % 64) as usize;
                let data: Vec<u8> = (0..len).map(|k| (x >> (k % 8 * 8)) as u8).collect();
                if i % 2 == 0 {
                    d.c(&data);
                } else {
                    d.s_gap(&data, x % 3 * 7);
                }
            }
            d.conn.on_close(0, &mut d.out);
        }
    }
}
