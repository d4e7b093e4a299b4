//! MySQL / MariaDB client/server protocol, seen from the client's connection.
//!
//! [`MysqlConn`] turns the two byte streams of one connection into
//! [`DbExchange`]s: one per `COM_QUERY`, `COM_STMT_PREPARE` and
//! `COM_STMT_EXECUTE`, completed by the server's OK, ERR or result set.
//!
//! Design rules (the same as the HTTP/1 parser):
//! * Pure code: no I/O, no clock, no globals; no input makes it panic.
//! * Packets are framed by their 4-byte header (3-byte length, sequence id).
//!   Only a bounded prefix of each payload is kept; the rest, captured or
//!   not, is skipped by length. A packet of 16 MiB - 1 bytes is followed by
//!   continuation packets which are skipped as part of it.
//! * When framing is lost (an uncaptured gap covers a packet header) the
//!   direction stops parsing. The client side resumes at the start of a later
//!   segment that looks like a command ([`looks_like_client_start`]); the
//!   server side resumes at a segment start once a command is waiting for a
//!   response that has not begun yet. The command whose response was cut is
//!   emitted right away with the response times seen so far and no row count.
//! * Bounded memory: payload prefixes, query texts, the queue of commands
//!   waiting for a response and the prepared statement table all have caps.
//!
//! Commands that produce exchanges: `COM_QUERY` (query text = the SQL),
//! `COM_STMT_PREPARE` (query text = the statement's SQL) and
//! `COM_STMT_EXECUTE` (query text = the SQL of the prepared statement when
//! its prepare was seen). `COM_INIT_DB`, `COM_PING`, `COM_STMT_RESET` and
//! other commands are followed but produce no exchange; `COM_INIT_DB` and
//! `USE db` (or a schema change reported through session tracking) update the
//! namespace of later exchanges. `COM_STMT_CLOSE`, `COM_STMT_SEND_LONG_DATA`
//! and `COM_QUIT` have no response.
//!
//! A statement prepared, executed once and closed, each command right after
//! the other (how Go's go-sql-driver/mysql runs a query with arguments
//! unless `interpolateParams` is set) is one exchange, from the prepare's
//! start to the execution's end (`with_prepare`). A prepared statement run
//! several times, or not closed right after its run, gives one exchange for
//! the prepare and one per execution. So the prepare's exchange is held
//! until the next command says which, or until [`JOIN_NS`] passed
//! ([`MysqlConn::tick`]).
//!
//! `rows` is the number of rows of all result sets plus the affected rows of
//! all OK results of one command (multi-statement queries and stored
//! procedures can return several results, which all belong to one exchange).

use std::collections::{HashMap, VecDeque};

use super::db::{DbError, DbExchange, DbSystem};
use super::Segment;

/// Payload prefix kept for a client packet (bounds the query text).
pub const MAX_QUERY_TEXT: usize = 8192;

/// Payload prefix kept for a server packet (enough for greetings, OK and ERR).
const SERVER_KEEP: usize = 1024;

/// Longest a prepare (and its one execution) are held for the close that
/// makes them one statement: a driver running one query closes at once.
pub const JOIN_NS: u64 = 100_000_000;

/// Commands waiting for a response, per connection. Further commands push
/// the oldest out without a response.
pub const MAX_PENDING: usize = 64;

/// Prepared statements remembered per connection.
pub const MAX_STATEMENTS: usize = 1024;

/// Total bytes of prepared statement text remembered per connection.
pub const MAX_STATEMENT_BYTES: usize = 256 * 1024;

/// Length field value that announces a continuation packet.
const MAX_PACKET_LEN: u32 = 0x00ff_ffff;

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_PING: u8 = 0x0e;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;
const COM_STMT_FETCH: u8 = 0x1c;

const CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
const CLIENT_COMPRESS: u32 = 0x0000_0020;
const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
const CLIENT_SSL: u32 = 0x0000_0800;
const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x0020_0000;
const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;
const CLIENT_QUERY_ATTRIBUTES: u32 = 0x0800_0000;

const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
const SERVER_SESSION_STATE_CHANGED: u16 = 0x4000;

const SESSION_TRACK_SCHEMA: u8 = 0x01;

// ---------------------------------------------------------------------------
// Detection
// ---------------------------------------------------------------------------

fn header(buf: &[u8]) -> Option<(u32, u8)> {
    let b = buf.get(..4)?;
    let len = u32::from(b[0]) | (u32::from(b[1]) << 8) | (u32::from(b[2]) << 16);
    Some((len, b[3]))
}

/// The server version string of an initial handshake packet at the start of
/// `buf` (3-byte length, sequence id 0, protocol version 10, NUL-terminated
/// printable version).
fn greeting_version(buf: &[u8]) -> Option<&[u8]> {
    let (len, seq) = header(buf)?;
    if seq != 0 || !(20..=1024).contains(&len) || buf.get(4) != Some(&10) {
        return None;
    }
    let end = (len as usize).saturating_add(4).min(buf.len());
    let rest = buf.get(5..end)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let version = rest.get(..nul)?;
    if version.is_empty() || version.len() > 128 || !version.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    Some(version)
}

/// True when `buf` starts with a server's initial handshake packet.
pub fn looks_like_server_start(buf: &[u8]) -> bool {
    greeting_version(buf).is_some()
}

/// A segment too short to hold the whole greeting whose bytes so far are
/// consistent with one (the greeting was split across reads).
fn greeting_prefix(buf: &[u8]) -> bool {
    let hdr = buf.get(..buf.len().min(4)).unwrap_or(&[]);
    let len_ok = match hdr {
        [a, b, c, s] => {
            let len = u32::from(*a) | (u32::from(*b) << 8) | (u32::from(*c) << 16);
            *s == 0 && (20..=1024).contains(&len) && buf.len() < len as usize + 4
        }
        [_, b, c] => *b <= 4 && *c == 0,
        [_, b] => *b <= 4,
        _ => !buf.is_empty(),
    };
    if !len_ok {
        return false;
    }
    match buf.get(4) {
        None => true,
        Some(10) => {
            let version = buf.get(5..).unwrap_or(&[]);
            let end = version.iter().position(|&b| b == 0).unwrap_or(version.len());
            version.get(..end).is_some_and(|v| v.iter().all(|&b| (0x20..0x7f).contains(&b)))
        }
        Some(_) => false,
    }
}

/// The flavour of the server that sent the initial handshake packet at the
/// start of `buf`: MariaDB when its version contains `MariaDB` or starts with
/// `5.5.5-` (the prefix MariaDB uses to keep old clients working).
pub fn server_flavor(buf: &[u8]) -> Option<DbSystem> {
    let v = greeting_version(buf)?;
    if v.starts_with(b"5.5.5-") || v.windows(7).any(|w| w == b"MariaDB") {
        Some(DbSystem::Mariadb)
    } else {
        Some(DbSystem::Mysql)
    }
}

/// Text of a query: printable ASCII, whitespace or UTF-8 bytes.
fn looks_like_text(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(|&c| (c >= 0x20 && c != 0x7f) || c == b'\t' || c == b'\n' || c == b'\r')
}

/// True when `buf` starts with a client command packet (sequence id 0,
/// plausible length) of a common kind: `COM_QUERY` with text,
/// `COM_STMT_PREPARE`, `COM_STMT_EXECUTE`, `COM_INIT_DB`, `COM_PING`,
/// `COM_QUIT`, `COM_STMT_CLOSE` or `COM_STMT_RESET`.
pub fn looks_like_client_start(buf: &[u8]) -> bool {
    let Some((len, seq)) = header(buf) else {
        return false;
    };
    if seq != 0 || len == 0 {
        return false;
    }
    let Some(&cmd) = buf.get(4) else {
        return false;
    };
    let end = (len as usize).saturating_add(4).min(buf.len());
    let body = buf.get(5..end).unwrap_or(&[]);
    let head = body.get(..body.len().min(64)).unwrap_or(&[]);
    match cmd {
        COM_QUIT | COM_PING => len == 1,
        COM_STMT_CLOSE | COM_STMT_RESET => len == 5,
        COM_QUERY => {
            len >= 2
                && (looks_like_text(head)
                    || (head.starts_with(&[0, 1]) && looks_like_text(head.get(2..).unwrap_or(&[]))))
        }
        COM_STMT_PREPARE | COM_INIT_DB => len >= 2 && looks_like_text(head),
        COM_STMT_EXECUTE => {
            // stmt id (4), flags (1), iteration count (4) = 1.
            len >= 10 && body.get(4).is_some_and(|&f| f <= 0x0f) && body.get(5..9).is_none_or(|c| c == [1, 0, 0, 0])
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Little readers over payload prefixes
// ---------------------------------------------------------------------------

struct Rd<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Rd<'a> {
    fn new(b: &'a [u8]) -> Self {
        Rd { b, at: 0 }
    }
    fn u8(&mut self) -> Option<u8> {
        let v = *self.b.get(self.at)?;
        self.at += 1;
        Some(v)
    }
    fn u16(&mut self) -> Option<u16> {
        let s = self.take(2)?;
        Some(u16::from(s[0]) | (u16::from(s[1]) << 8))
    }
    fn u32(&mut self) -> Option<u32> {
        let s = self.take(4)?;
        Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn lenenc(&mut self) -> Option<u64> {
        match self.u8()? {
            x @ 0..=0xfa => Some(u64::from(x)),
            0xfc => self.u16().map(u64::from),
            0xfd => {
                let s = self.take(3)?;
                Some(u64::from(s[0]) | (u64::from(s[1]) << 8) | (u64::from(s[2]) << 16))
            }
            0xfe => {
                let s = self.take(8)?;
                Some(u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
            }
            _ => None,
        }
    }
    fn lenenc_bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.lenenc()?).ok()?;
        self.take(n)
    }
    fn nul_str(&mut self) -> Option<&'a [u8]> {
        let rest = self.b.get(self.at..)?;
        let n = rest.iter().position(|&b| b == 0)?;
        let s = rest.get(..n)?;
        self.at += n + 1;
        Some(s)
    }
    fn rest(&self) -> &'a [u8] {
        self.b.get(self.at..).unwrap_or(&[])
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Fields of an OK packet (`0x00` or, as a result set terminator, `0xfe`).
struct OkInfo {
    affected: u64,
    status: u16,
    schema: Option<String>,
}

fn parse_ok(p: &[u8]) -> Option<OkInfo> {
    let mut r = Rd::new(p);
    r.u8()?;
    let affected = r.lenenc()?;
    r.lenenc()?;
    let status = r.u16()?;
    let mut schema = None;
    if status & SERVER_SESSION_STATE_CHANGED != 0 {
        // Session tracking: info string, then the state change block.
        let _ = r.u16();
        if let Some(_info) = r.lenenc_bytes() {
            if let Some(block) = r.lenenc_bytes() {
                let mut b = Rd::new(block);
                while let Some(kind) = b.u8() {
                    let Some(data) = b.lenenc_bytes() else { break };
                    if kind == SESSION_TRACK_SCHEMA {
                        if let Some(name) = Rd::new(data).lenenc_bytes() {
                            schema = Some(text(name));
                        }
                    }
                }
            }
        }
    }
    Some(OkInfo { affected, status, schema })
}

/// Status flags of a terminator: an EOF packet (`fe warnings status`) or an
/// OK packet with an `0xfe` header.
fn terminator_status(p: &[u8]) -> u16 {
    if p.len() <= 5 {
        let mut r = Rd::new(p);
        let _ = r.take(3);
        r.u16().unwrap_or(0)
    } else {
        parse_ok(p).map_or(0, |o| o.status)
    }
}

fn parse_err(p: &[u8]) -> DbError {
    let mut r = Rd::new(p);
    let _ = r.u8();
    let code = r.u16().unwrap_or(0);
    if r.rest().first() == Some(&b'#') && r.rest().len() >= 6 {
        // SQLSTATE marker and the five-character state.
        let _ = r.take(6);
    }
    DbError { code: code.to_string(), message: text(r.rest()) }
}

/// `USE name` (any case, optional quoting) -> name.
fn use_target(sql: &str) -> Option<String> {
    let t = sql.trim_start();
    let head = t.get(..4)?;
    if !head.eq_ignore_ascii_case("use ") {
        return None;
    }
    let name = t.get(4..)?.trim().trim_end_matches(';').trim();
    let name = name.trim_matches('`').trim_matches('"');
    if name.is_empty() || name.len() > 256 || name.contains(char::is_whitespace) {
        None
    } else {
        Some(name.to_string())
    }
}

// ---------------------------------------------------------------------------
// Packet framing
// ---------------------------------------------------------------------------

/// Captured bytes plus trailing uncaptured count of the rest of a segment.
struct Input<'a> {
    data: &'a [u8],
    gap: u64,
    enter: u64,
    exit: u64,
}

enum Step {
    /// A packet is complete; its fields are in the reader.
    Packet,
    /// The segment is used up.
    NeedMore,
    /// An uncaptured gap covers a packet header: framing is lost.
    Lost,
}

#[derive(Debug, Clone)]
struct PacketReader {
    hdr: [u8; 4],
    hdr_len: usize,
    in_payload: bool,
    remaining: u64,
    keep: usize,
    /// Kept prefix of the current payload.
    buf: Vec<u8>,
    len: u32,
    seq: u8,
    /// Part of the payload was not captured.
    truncated: bool,
    /// The current packet continues the previous one.
    continuation: bool,
    next_is_continuation: bool,
    first_enter: u64,
    /// Out of sync: ignore bytes until the owner resynchronises.
    lost: bool,
}

impl PacketReader {
    fn new(keep: usize) -> Self {
        PacketReader {
            hdr: [0; 4],
            hdr_len: 0,
            in_payload: false,
            remaining: 0,
            keep,
            buf: Vec::new(),
            len: 0,
            seq: 0,
            truncated: false,
            continuation: false,
            next_is_continuation: false,
            first_enter: 0,
            lost: false,
        }
    }

    /// At a packet boundary with nothing buffered.
    fn at_boundary(&self) -> bool {
        !self.in_payload && self.hdr_len == 0 && !self.next_is_continuation
    }

    fn reset(&mut self) {
        self.hdr_len = 0;
        self.in_payload = false;
        self.remaining = 0;
        self.next_is_continuation = false;
        self.lost = false;
        if self.buf.capacity() > 4096 {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }

    fn next(&mut self, inp: &mut Input<'_>) -> Step {
        loop {
            if !self.in_payload {
                if inp.data.is_empty() {
                    if inp.gap > 0 {
                        return Step::Lost;
                    }
                    return Step::NeedMore;
                }
                if self.hdr_len == 0 {
                    self.first_enter = inp.enter;
                }
                let want = 4 - self.hdr_len;
                let n = want.min(inp.data.len());
                if let (Some(dst), Some(src)) = (self.hdr.get_mut(self.hdr_len..self.hdr_len + n), inp.data.get(..n)) {
                    dst.copy_from_slice(src);
                }
                self.hdr_len += n;
                inp.data = inp.data.get(n..).unwrap_or(&[]);
                if self.hdr_len < 4 {
                    continue;
                }
                let [a, b, c, s] = self.hdr;
                self.len = u32::from(a) | (u32::from(b) << 8) | (u32::from(c) << 16);
                self.seq = s;
                self.in_payload = true;
                self.remaining = u64::from(self.len);
                self.truncated = false;
                self.continuation = self.next_is_continuation;
                self.next_is_continuation = self.len == MAX_PACKET_LEN;
                if self.buf.capacity() > 4096 {
                    self.buf = Vec::new();
                } else {
                    self.buf.clear();
                }
            }
            if self.remaining > 0 && !inp.data.is_empty() {
                let n = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(inp.data.len());
                let chunk = inp.data.get(..n).unwrap_or(&[]);
                let room = self.keep.saturating_sub(self.buf.len());
                self.buf.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or(&[]));
                inp.data = inp.data.get(n..).unwrap_or(&[]);
                self.remaining -= n as u64;
            }
            if self.remaining > 0 && inp.data.is_empty() && inp.gap > 0 {
                let m = inp.gap.min(self.remaining);
                inp.gap -= m;
                self.remaining -= m;
                self.truncated = true;
            }
            if self.remaining == 0 {
                self.in_payload = false;
                self.hdr_len = 0;
                return Step::Packet;
            }
            return Step::NeedMore;
        }
    }
}

// ---------------------------------------------------------------------------
// Connection state
// ---------------------------------------------------------------------------

/// Counters kept per connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MysqlStats {
    /// Command packets parsed.
    pub commands: u64,
    /// Exchanges emitted.
    pub exchanges: u64,
    /// Exchanges emitted without a response.
    pub unanswered: u64,
    /// Client bytes (captured and uncaptured) skipped while out of sync.
    pub client_desync_bytes: u64,
    /// Server bytes skipped while out of sync or with no command waiting.
    pub server_desync_bytes: u64,
    /// Server packets seen while no command was waiting.
    pub orphan_packets: u64,
    /// Times an uncaptured gap covered a packet header.
    pub framing_lost: u64,
    /// Responses cut by lost framing (their command was emitted early).
    pub responses_cut: u64,
    /// Packets whose sequence id was not the expected one.
    pub seq_mismatches: u64,
    /// Malformed or unexpected packets.
    pub invalid_packets: u64,
    /// `COM_STMT_EXECUTE` of a statement whose prepare was not seen.
    pub unknown_statements: u64,
    /// Prepared statements forgotten to stay within the caps.
    pub statements_evicted: u64,
    /// Statements prepared, run once and closed, made one exchange.
    pub prepares_joined: u64,
    /// Commands emitted unanswered because [`MAX_PENDING`] was exceeded.
    pub pending_overflow: u64,
    /// Query texts cut by the capture or [`MAX_QUERY_TEXT`].
    pub truncated_queries: u64,
    /// Bytes ignored after TLS or compression started.
    pub opaque_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing known yet (possibly attached mid-stream).
    Unknown,
    /// Server greeting seen; the client's handshake response comes next.
    Greeted,
    /// Authentication exchanges until the server's OK or ERR.
    Auth,
    /// Command phase.
    Command,
    /// TLS or compression: the rest of the connection is opaque.
    Opaque,
}

/// Where the response to the front command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resp {
    /// Expecting the first packet of a result: OK, ERR, LOCAL INFILE
    /// request or a column count.
    Start,
    /// Column definitions of a result set still to come.
    Columns(u64),
    /// After the column definitions: an EOF packet may come (when
    /// `CLIENT_DEPRECATE_EOF` is off) before the rows.
    AfterColumns,
    /// Rows until an EOF/OK terminator.
    Rows,
    /// After a LOCAL INFILE request: waiting for the final OK or ERR.
    Infile,
    /// `COM_STMT_PREPARE`: parameter and column definitions still to skip
    /// (EOF packets between the blocks are not counted); `trailing_eof`: an
    /// EOF ends the response (`CLIENT_DEPRECATE_EOF` known to be off).
    PrepareDefs { left: u32, trailing_eof: bool },
    /// Response of unknown layout: ends at an OK/ERR/EOF packet or when the
    /// next command is sent.
    Generic,
}

#[derive(Debug, Clone)]
struct Pending {
    cmd: u8,
    /// The exchange to emit, when this command produces one.
    ex: Option<DbExchange>,
    /// SQL of a prepare, schema of `COM_INIT_DB` / `USE`.
    text: Option<String>,
    rows: u64,
    resp_started: bool,
    /// The statement id a `COM_STMT_EXECUTE` runs, or a prepare's answer gave.
    stmt: Option<u32>,
}

/// Parses one MySQL/MariaDB connection.
#[derive(Debug, Clone)]
pub struct MysqlConn {
    phase: Phase,
    system: DbSystem,
    server_caps: Option<u32>,
    client_caps: Option<u32>,
    namespace: Option<String>,
    encrypted: bool,
    compressed: bool,
    cli: PacketReader,
    srv: PacketReader,
    /// The client side waits for a segment start that looks like a command.
    cli_unsynced: bool,
    /// Client packet in progress is a command that was already parsed (its
    /// continuation packets follow).
    pending: VecDeque<Pending>,
    resp: Resp,
    /// EOF packets that may trail a completed prepare response (when it is not
    /// known whether `CLIENT_DEPRECATE_EOF` is on).
    maybe_trailing_eof: u8,
    statements: HashMap<u32, String>,
    statement_order: VecDeque<u32>,
    statement_bytes: usize,
    /// A prepare (and its first run) that may be one statement.
    held: Option<Held>,
    stats: MysqlStats,
}

/// A prepare that worked, held for the commands after it.
#[derive(Debug, Clone)]
struct Held {
    id: u32,
    prepare: DbExchange,
    exec: Option<DbExchange>,
}

impl Default for MysqlConn {
    fn default() -> Self {
        Self::new()
    }
}

impl MysqlConn {
    pub fn new() -> Self {
        MysqlConn {
            phase: Phase::Unknown,
            system: DbSystem::Mysql,
            server_caps: None,
            client_caps: None,
            namespace: None,
            encrypted: false,
            compressed: false,
            cli: PacketReader::new(MAX_QUERY_TEXT + 16),
            srv: PacketReader::new(SERVER_KEEP),
            cli_unsynced: true,
            pending: VecDeque::new(),
            resp: Resp::Start,
            maybe_trailing_eof: 0,
            statements: HashMap::new(),
            statement_order: VecDeque::new(),
            statement_bytes: 0,
            held: None,
            stats: MysqlStats::default(),
        }
    }

    pub fn stats(&self) -> &MysqlStats {
        &self.stats
    }

    /// The client asked for TLS: the rest of the connection is not parsed.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// The connection uses the compressed protocol: not parsed further.
    pub fn is_compressed(&self) -> bool {
        self.compressed
    }

    /// MySQL or MariaDB, as told by the server greeting (MySQL when unseen).
    pub fn system(&self) -> DbSystem {
        self.system
    }

    /// Current database, when known.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// Commands waiting for a response.
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
                    + p.text.as_ref().map_or(0, |t| t.capacity())
                    + p.ex.as_ref().map_or(0, |e| e.query_text.as_ref().map_or(0, |t| t.capacity()))
            })
            .sum();
        self.cli.buf.capacity()
            + self.srv.buf.capacity()
            + pending
            + self.statement_bytes
            + self.statements.capacity() * (std::mem::size_of::<(u32, String)>() + 1)
            + self.statement_order.capacity() * 4
    }

    fn deprecate_eof(&self) -> Option<bool> {
        let c = self.client_caps?;
        let on = c & CLIENT_DEPRECATE_EOF != 0 && self.server_caps.is_none_or(|s| s & CLIENT_DEPRECATE_EOF != 0);
        Some(on)
    }

    // -- client side ------------------------------------------------------

    /// Bytes travelling client -> server.
    pub fn on_client_segment(&mut self, seg: Segment<'_>, out: &mut Vec<DbExchange>) {
        let total = (seg.data.len() as u64).saturating_add(seg.uncaptured);
        if self.phase == Phase::Opaque {
            self.stats.opaque_bytes = self.stats.opaque_bytes.saturating_add(total);
            return;
        }
        if self.cli.lost || (self.cli_unsynced && self.cli.at_boundary()) {
            if self.phase != Phase::Greeted && looks_like_client_start(seg.data) {
                self.cli.reset();
                self.cli_unsynced = false;
                if matches!(self.phase, Phase::Unknown | Phase::Auth) {
                    self.phase = Phase::Command;
                }
            } else if self.phase == Phase::Greeted {
                self.cli.reset();
                self.cli_unsynced = false;
            } else {
                self.stats.client_desync_bytes = self.stats.client_desync_bytes.saturating_add(total);
                return;
            }
        }
        let mut inp = Input { data: seg.data, gap: seg.uncaptured, enter: seg.ts_enter, exit: seg.ts_exit };
        loop {
            match self.cli.next(&mut inp) {
                Step::NeedMore => break,
                Step::Lost => {
                    self.stats.framing_lost += 1;
                    self.stats.client_desync_bytes = self.stats.client_desync_bytes.saturating_add(inp.gap);
                    self.cli.lost = true;
                    self.cli_unsynced = true;
                    break;
                }
                Step::Packet => {
                    let payload = std::mem::take(&mut self.cli.buf);
                    self.client_packet(&payload, &inp, out);
                    if self.cli.buf.capacity() == 0 && payload.capacity() <= 4096 {
                        self.cli.buf = payload;
                    }
                    if self.phase == Phase::Opaque {
                        let rest = (inp.data.len() as u64).saturating_add(inp.gap);
                        self.stats.opaque_bytes = self.stats.opaque_bytes.saturating_add(rest);
                        break;
                    }
                }
            }
        }
    }

    fn client_packet(&mut self, p: &[u8], inp: &Input<'_>, out: &mut Vec<DbExchange>) {
        let seq = self.cli.seq;
        let truncated = self.cli.truncated || p.len() < self.cli.len as usize;
        if self.cli.continuation {
            return;
        }
        match self.phase {
            Phase::Greeted => {
                if seq == 0 && looks_like_client_start_payload(p) {
                    // No handshake response after all: already commanding.
                    self.phase = Phase::Command;
                } else {
                    if seq != 1 {
                        self.stats.seq_mismatches += 1;
                    }
                    self.handshake_response(p);
                    return;
                }
            }
            Phase::Auth => {
                if seq == 0 && self.pending.is_empty() && looks_like_client_start_payload(p) {
                    // The auth OK was not seen; commands are flowing.
                    self.phase = Phase::Command;
                } else {
                    return;
                }
            }
            Phase::Unknown => self.phase = Phase::Command,
            Phase::Command | Phase::Opaque => {}
        }
        if self.phase != Phase::Command {
            return;
        }
        if seq != 0 {
            // LOCAL INFILE data, or auth data after COM_CHANGE_USER.
            return;
        }
        let Some(&cmd) = p.first() else {
            self.stats.invalid_packets += 1;
            return;
        };
        self.stats.commands += 1;
        // A new command means every response before it has ended when the
        // client waits for responses (it does unless pipelining).
        self.finish_generic(inp.enter, out);
        let body = p.get(1..).unwrap_or(&[]);
        if !matches!(cmd, COM_STMT_EXECUTE | COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA) {
            self.release_held(out);
        }
        let mut pending = Pending { cmd, ex: None, text: None, rows: 0, resp_started: false, stmt: None };
        let new_ex = |this: &Self, q: Option<String>| {
            let mut ex = DbExchange::new(this.system);
            ex.query_text = q;
            ex.namespace = this.namespace.clone();
            ex.req_first_enter = this.cli.first_enter;
            ex.req_last_exit = inp.exit;
            ex
        };
        match cmd {
            COM_QUERY => {
                let sql = self.query_sql(body);
                if truncated {
                    self.stats.truncated_queries += 1;
                }
                pending.text = sql.as_deref().and_then(use_target);
                pending.ex = Some(new_ex(self, sql));
            }
            COM_STMT_PREPARE => {
                let sql = text(body);
                if truncated {
                    self.stats.truncated_queries += 1;
                }
                pending.text = Some(sql.clone());
                pending.ex = Some(new_ex(self, Some(sql)));
            }
            COM_STMT_EXECUTE => {
                let id = Rd::new(body).u32();
                let sql = id.and_then(|id| self.statements.get(&id).cloned());
                if sql.is_none() {
                    self.stats.unknown_statements += 1;
                }
                pending.stmt = id;
                pending.ex = Some(new_ex(self, sql));
                // A second run of the held statement: not a one-shot.
                if self.held.as_ref().is_some_and(|h| Some(h.id) != id || h.exec.is_some()) {
                    self.release_held(out);
                }
            }
            COM_INIT_DB => pending.text = Some(text(body)),
            COM_STMT_CLOSE => {
                if let Some(id) = Rd::new(body).u32() {
                    self.forget_statement(id);
                    self.close_held(id, out);
                }
                return;
            }
            COM_STMT_SEND_LONG_DATA => return,
            COM_QUIT => return,
            _ => {}
        }
        if self.pending.len() >= MAX_PENDING {
            if let Some(old) = self.pending.pop_front() {
                self.stats.pending_overflow += 1;
                self.resp = Resp::Start;
                self.emit(old, false, out);
            }
        }
        if cmd == COM_CHANGE_USER {
            self.phase = Phase::Auth;
        }
        if self.pending.is_empty() && !self.srv.at_boundary() {
            // The server is inside a packet nothing was waiting for: its
            // framing cannot be trusted for this command's response.
            self.srv.lost = true;
            self.resp = Resp::Start;
        }
        self.pending.push_back(pending);
    }

    fn query_sql(&self, body: &[u8]) -> Option<String> {
        let attrs = self.client_caps.is_some_and(|c| c & CLIENT_QUERY_ATTRIBUTES != 0);
        if attrs {
            let mut r = Rd::new(body);
            let count = r.lenenc()?;
            let _sets = r.lenenc()?;
            if count != 0 {
                // Attribute values precede the text; not decoded.
                return None;
            }
            return Some(text(r.rest()));
        }
        Some(text(body))
    }

    fn handshake_response(&mut self, p: &[u8]) {
        self.phase = Phase::Auth;
        let mut r = Rd::new(p);
        let Some(low) = r.u16() else {
            self.stats.invalid_packets += 1;
            return;
        };
        if u32::from(low) & CLIENT_PROTOCOL_41 == 0 {
            // Pre-4.1 handshake response: only the flags matter.
            self.client_caps = Some(u32::from(low));
            if u32::from(low) & CLIENT_SSL != 0 && p.len() <= 5 {
                self.encrypted = true;
                self.phase = Phase::Opaque;
            }
            return;
        }
        let high = r.u16().unwrap_or(0);
        let caps = u32::from(low) | (u32::from(high) << 16);
        self.client_caps = Some(caps);
        if caps & CLIENT_SSL != 0 && p.len() <= 32 {
            // SSLRequest: TLS follows.
            self.encrypted = true;
            self.phase = Phase::Opaque;
            return;
        }
        if caps & CLIENT_COMPRESS != 0 && self.server_caps.is_none_or(|s| s & CLIENT_COMPRESS != 0) {
            self.compressed = true;
        }
        let _ = r.take(4 + 1 + 23);
        let _user = r.nul_str();
        let auth_ok = if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            r.lenenc_bytes().is_some()
        } else if caps & CLIENT_SECURE_CONNECTION != 0 {
            match r.u8() {
                Some(n) => r.take(usize::from(n)).is_some(),
                None => false,
            }
        } else {
            r.nul_str().is_some()
        };
        if auth_ok && caps & CLIENT_CONNECT_WITH_DB != 0 {
            if let Some(db) = r.nul_str() {
                if !db.is_empty() {
                    self.namespace = Some(text(db));
                }
            }
        }
    }

    fn forget_statement(&mut self, id: u32) {
        if let Some(s) = self.statements.remove(&id) {
            self.statement_bytes = self.statement_bytes.saturating_sub(s.len());
        }
        if self.statement_order.len() > 2 * MAX_STATEMENTS {
            let map = &self.statements;
            self.statement_order.retain(|i| map.contains_key(i));
        }
    }

    fn remember_statement(&mut self, id: u32, sql: String) {
        self.forget_statement(id);
        while self.statements.len() >= MAX_STATEMENTS
            || self.statement_bytes.saturating_add(sql.len()) > MAX_STATEMENT_BYTES
        {
            let Some(old) = self.statement_order.pop_front() else {
                break;
            };
            if let Some(s) = self.statements.remove(&old) {
                self.statement_bytes = self.statement_bytes.saturating_sub(s.len());
                self.stats.statements_evicted += 1;
            }
        }
        if sql.len() > MAX_STATEMENT_BYTES {
            return;
        }
        self.statement_bytes += sql.len();
        self.statements.insert(id, sql);
        self.statement_order.push_back(id);
    }

    // -- server side ------------------------------------------------------

    /// Bytes travelling server -> client.
    pub fn on_server_segment(&mut self, seg: Segment<'_>, out: &mut Vec<DbExchange>) {
        let total = (seg.data.len() as u64).saturating_add(seg.uncaptured);
        if self.phase == Phase::Opaque {
            self.stats.opaque_bytes = self.stats.opaque_bytes.saturating_add(total);
            return;
        }
        if self.phase == Phase::Unknown
            && self.srv.at_boundary()
            && (looks_like_server_start(seg.data) || greeting_prefix(seg.data))
        {
            self.srv.reset();
        } else if self.phase == Phase::Unknown && !self.srv.at_boundary() && !self.srv.lost {
            // The rest of a greeting that started in an earlier segment.
        } else if self.srv.lost {
            let fresh = self.pending.front().is_some_and(|p| !p.resp_started);
            if fresh {
                self.srv.reset();
                self.resp = Resp::Start;
            } else {
                self.stats.server_desync_bytes = self.stats.server_desync_bytes.saturating_add(total);
                return;
            }
        } else if self.srv.at_boundary()
            && self.pending.is_empty()
            && self.phase != Phase::Auth
            && self.phase != Phase::Greeted
        {
            // Nothing is waiting for these bytes.
            if header(seg.data).is_some() {
                self.stats.orphan_packets += 1;
            }
            self.stats.server_desync_bytes = self.stats.server_desync_bytes.saturating_add(total);
            return;
        }
        let mut inp = Input { data: seg.data, gap: seg.uncaptured, enter: seg.ts_enter, exit: seg.ts_exit };
        loop {
            match self.srv.next(&mut inp) {
                Step::NeedMore => {
                    if self.srv.in_payload || self.srv.hdr_len > 0 {
                        self.touch_response(&inp);
                    }
                    break;
                }
                Step::Lost => {
                    self.stats.framing_lost += 1;
                    self.stats.server_desync_bytes = self.stats.server_desync_bytes.saturating_add(inp.gap);
                    self.srv.lost = true;
                    self.cut_response(out);
                    break;
                }
                Step::Packet => {
                    let payload = std::mem::take(&mut self.srv.buf);
                    self.server_packet(&payload, &inp, out);
                    if self.srv.buf.capacity() == 0 {
                        self.srv.buf = payload;
                    }
                    if self.phase == Phase::Opaque {
                        break;
                    }
                    if self.pending.is_empty()
                        && self.phase == Phase::Command
                        && self.srv.at_boundary()
                        && !inp.data.is_empty()
                        && self.maybe_trailing_eof == 0
                    {
                        // Left-over bytes with nothing waiting.
                        let rest = (inp.data.len() as u64).saturating_add(inp.gap);
                        self.stats.orphan_packets += 1;
                        self.stats.server_desync_bytes = self.stats.server_desync_bytes.saturating_add(rest);
                        self.srv.lost = true;
                        break;
                    }
                }
            }
        }
    }

    /// Record response timing for the front command.
    fn touch_response(&mut self, inp: &Input<'_>) {
        let first = self.srv.first_enter;
        if let Some(front) = self.pending.front_mut() {
            if let Some(ex) = front.ex.as_mut() {
                if !front.resp_started {
                    ex.resp_first_enter = first;
                }
                ex.resp_last_exit = inp.exit;
            }
            front.resp_started = true;
        }
    }

    fn server_packet(&mut self, p: &[u8], inp: &Input<'_>, out: &mut Vec<DbExchange>) {
        match self.phase {
            Phase::Unknown => {
                if self.srv.seq == 0 && p.first() == Some(&10) {
                    self.greeting(p);
                } else {
                    self.stats.orphan_packets += 1;
                }
                return;
            }
            Phase::Greeted => {
                // An ERR instead of authentication, or noise.
                self.stats.invalid_packets += 1;
                return;
            }
            Phase::Auth => {
                match p.first() {
                    Some(0x00) => {
                        self.phase = Phase::Command;
                        if let Some(ok) = parse_ok(p) {
                            if ok.schema.is_some() {
                                self.namespace = ok.schema;
                            }
                        }
                        if self.compressed {
                            self.phase = Phase::Opaque;
                        }
                        // COM_CHANGE_USER waits for this OK.
                        if let Some(front) = self.pending.front() {
                            if front.cmd == COM_CHANGE_USER {
                                if let Some(pn) = self.pending.pop_front() {
                                    self.emit(pn, true, out);
                                }
                            }
                        }
                    }
                    Some(0xff) => {
                        self.phase = Phase::Command;
                        if let Some(front) = self.pending.front() {
                            if front.cmd == COM_CHANGE_USER {
                                self.pending.pop_front();
                            }
                        }
                    }
                    _ => {}
                }
                return;
            }
            Phase::Command | Phase::Opaque => {}
        }
        if self.srv.continuation {
            return;
        }
        if self.maybe_trailing_eof > 0 {
            self.maybe_trailing_eof -= 1;
            if p.first() == Some(&0xfe) && p.len() <= 5 && self.srv.len <= 5 {
                return;
            }
            self.maybe_trailing_eof = 0;
        }
        if self.pending.is_empty() {
            self.stats.orphan_packets += 1;
            return;
        }
        self.touch_response(inp);
        let first = p.first().copied();
        let plen = self.srv.len;
        let cmd = self.pending.front().map_or(0, |f| f.cmd);
        match self.resp {
            Resp::Start => match first {
                _ if cmd == COM_STMT_FETCH => {
                    self.resp = Resp::Rows;
                    self.rows_packet(p, out);
                }
                Some(0x00) if cmd == COM_STMT_PREPARE => {
                    let mut r = Rd::new(p);
                    let _ = r.u8();
                    let id = r.u32();
                    let cols = r.u16().unwrap_or(0);
                    let params = r.u16().unwrap_or(0);
                    if let (Some(id), Some(front)) = (id, self.pending.front_mut()) {
                        front.stmt = Some(id);
                        if let Some(sql) = front.text.take() {
                            self.remember_statement(id, sql);
                        }
                    }
                    let left = u32::from(cols) + u32::from(params);
                    self.resp =
                        Resp::PrepareDefs { left, trailing_eof: left > 0 && self.deprecate_eof() == Some(false) };
                    self.prepare_step(out);
                }
                Some(0x00) => {
                    let ok = parse_ok(p);
                    let (affected, status, schema) = ok.map_or((0, 0, None), |o| (o.affected, o.status, o.schema));
                    if let Some(front) = self.pending.front_mut() {
                        front.rows = front.rows.saturating_add(affected);
                    }
                    if schema.is_some() {
                        self.namespace = schema;
                    }
                    if status & SERVER_MORE_RESULTS_EXISTS == 0 {
                        self.complete_ok(out);
                    }
                }
                Some(0xff) => {
                    let err = parse_err(p);
                    self.complete(Some(err), out);
                }
                Some(0xfb) if cmd == COM_QUERY => self.resp = Resp::Infile,
                Some(0xfe) if plen < 9 => {
                    // An EOF where a result was expected (old protocol
                    // answers to some commands): ends the response.
                    self.complete_ok(out);
                }
                Some(_) if cmd == COM_QUERY || cmd == COM_STMT_EXECUTE => {
                    let mut r = Rd::new(p);
                    match r.lenenc() {
                        Some(n) if n > 0 => {
                            // MariaDB metadata caching: a trailing 0 byte says
                            // the column definitions are omitted.
                            let skip_meta = r.u8() == Some(0) && r.rest().is_empty();
                            self.resp = if skip_meta { Resp::AfterColumns } else { Resp::Columns(n) };
                        }
                        _ => {
                            self.stats.invalid_packets += 1;
                            self.complete(None, out);
                        }
                    }
                }
                Some(_) | None => {
                    // Unknown layout for this command.
                    self.resp = Resp::Generic;
                }
            },
            Resp::Columns(n) => {
                if first == Some(0xff) {
                    let err = parse_err(p);
                    self.complete(Some(err), out);
                } else {
                    let left = n.saturating_sub(1);
                    self.resp = if left == 0 { Resp::AfterColumns } else { Resp::Columns(left) };
                }
            }
            Resp::AfterColumns => {
                if first == Some(0xfe) && plen <= 5 {
                    // Intermediate EOF (no CLIENT_DEPRECATE_EOF).
                    self.resp = Resp::Rows;
                } else {
                    self.resp = Resp::Rows;
                    self.rows_packet(p, out);
                }
            }
            Resp::Rows => self.rows_packet(p, out),
            Resp::Infile => match first {
                Some(0x00) => {
                    let affected = parse_ok(p).map_or(0, |o| o.affected);
                    if let Some(front) = self.pending.front_mut() {
                        front.rows = front.rows.saturating_add(affected);
                    }
                    self.complete_ok(out);
                }
                Some(0xff) => {
                    let err = parse_err(p);
                    self.complete(Some(err), out);
                }
                _ => {}
            },
            Resp::PrepareDefs { left, trailing_eof } => {
                if first == Some(0xff) {
                    let err = parse_err(p);
                    self.complete(Some(err), out);
                } else if first == Some(0xfe) && plen <= 5 {
                    // EOF after a block of definitions.
                    if left == 0 && trailing_eof {
                        self.complete_ok(out);
                    }
                } else {
                    let left = left.saturating_sub(1);
                    self.resp = Resp::PrepareDefs { left, trailing_eof };
                    self.prepare_step(out);
                }
            }
            Resp::Generic => {
                if matches!(first, Some(0x00) | Some(0xff)) || (first == Some(0xfe) && plen < 9) {
                    self.complete_ok(out);
                }
            }
        }
    }

    /// Complete a prepare response once all definitions are consumed.
    fn prepare_step(&mut self, out: &mut Vec<DbExchange>) {
        if let Resp::PrepareDefs { left: 0, trailing_eof: false } = self.resp {
            if self.deprecate_eof().is_none() {
                // Unknown whether an EOF follows the last block.
                self.maybe_trailing_eof = 1;
            }
            self.complete_ok(out);
        }
    }

    fn rows_packet(&mut self, p: &[u8], out: &mut Vec<DbExchange>) {
        let plen = self.srv.len;
        match p.first() {
            Some(0xfe) if plen < MAX_PACKET_LEN => {
                let status = terminator_status(p);
                if status & SERVER_MORE_RESULTS_EXISTS != 0 {
                    self.resp = Resp::Start;
                } else {
                    self.complete_ok(out);
                }
            }
            Some(0xff) => {
                let err = parse_err(p);
                self.complete(Some(err), out);
            }
            _ => {
                if let Some(front) = self.pending.front_mut() {
                    front.rows = front.rows.saturating_add(1);
                }
            }
        }
    }

    fn greeting(&mut self, p: &[u8]) {
        self.phase = Phase::Greeted;
        self.cli_unsynced = false;
        let mut r = Rd::new(p);
        let _ = r.u8();
        let version = r.nul_str().unwrap_or(&[]);
        if version.starts_with(b"5.5.5-") || version.windows(7).any(|w| w == b"MariaDB") {
            self.system = DbSystem::Mariadb;
        } else {
            self.system = DbSystem::Mysql;
        }
        let _ = r.take(4 + 8 + 1);
        let low = r.u16().unwrap_or(0);
        let _ = r.take(1 + 2);
        let high = r.u16().unwrap_or(0);
        self.server_caps = Some(u32::from(low) | (u32::from(high) << 16));
    }

    fn complete_ok(&mut self, out: &mut Vec<DbExchange>) {
        self.complete(None, out);
    }

    /// The front command's response is complete.
    fn complete(&mut self, err: Option<DbError>, out: &mut Vec<DbExchange>) {
        self.resp = Resp::Start;
        let Some(mut p) = self.pending.pop_front() else {
            return;
        };
        let success = err.is_none();
        if success {
            match p.cmd {
                COM_INIT_DB | COM_QUERY => {
                    if let Some(db) = p.text.take() {
                        if !db.is_empty() {
                            self.namespace = Some(db);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(ex) = p.ex.as_mut() {
            ex.error = err;
            if success && p.cmd != COM_STMT_PREPARE {
                ex.rows = Some(p.rows);
            }
        }
        self.emit(p, true, out);
    }

    /// Framing of the server stream was lost inside the front command's
    /// response: emit it with what was seen.
    fn cut_response(&mut self, out: &mut Vec<DbExchange>) {
        let started = self.pending.front().is_some_and(|p| p.resp_started);
        if started {
            if let Some(p) = self.pending.pop_front() {
                self.stats.responses_cut += 1;
                self.emit(p, true, out);
            }
        }
        self.resp = Resp::Start;
        self.maybe_trailing_eof = 0;
    }

    /// A response of unknown layout ends when the next command is sent.
    fn finish_generic(&mut self, _ts: u64, out: &mut Vec<DbExchange>) {
        if self.resp == Resp::Generic && self.srv.at_boundary() {
            self.complete_ok(out);
        }
    }

    fn emit(&mut self, p: Pending, answered: bool, out: &mut Vec<DbExchange>) {
        let Some(mut ex) = p.ex else {
            return;
        };
        let answered = answered && p.resp_started;
        if !answered {
            ex.no_response = true;
            ex.resp_first_enter = 0;
            ex.resp_last_exit = 0;
            ex.rows = None;
            ex.error = None;
            self.stats.unanswered += 1;
        }
        let ok = answered && ex.error.is_none();
        match (p.cmd, p.stmt, &mut self.held) {
            // A prepare that worked: held until the commands after it say
            // whether it is one statement with its execution.
            (COM_STMT_PREPARE, Some(id), _) if ok => {
                self.release_held(out);
                self.held = Some(Held { id, prepare: ex, exec: None });
                return;
            }
            // The held statement's first run: held with it for the close.
            (COM_STMT_EXECUTE, Some(id), Some(h)) if h.id == id && h.exec.is_none() => {
                h.exec = Some(ex);
                return;
            }
            _ => {}
        }
        self.release_held(out);
        self.stats.exchanges += 1;
        out.push(ex);
    }

    /// What is held goes out as it is: the prepare, and its run if any.
    fn release_held(&mut self, out: &mut Vec<DbExchange>) {
        if let Some(h) = self.held.take() {
            self.stats.exchanges += 1 + u64::from(h.exec.is_some());
            out.push(h.prepare);
            out.extend(h.exec);
        }
    }

    /// `COM_STMT_CLOSE` of statement `id`: a held prepare run once is one
    /// exchange with its run.
    fn close_held(&mut self, id: u32, out: &mut Vec<DbExchange>) {
        let Some(h) = self.held.take_if(|h| h.id == id) else { return };
        match h.exec {
            Some(mut exec) => {
                exec.req_first_enter = h.prepare.req_first_enter;
                exec.with_prepare = true;
                self.stats.exchanges += 1;
                self.stats.prepares_joined += 1;
                out.push(exec);
            }
            None => {
                self.stats.exchanges += 1;
                out.push(h.prepare);
            }
        }
    }

    /// Time passes (`now`, on the capture's clock): a prepare held longer
    /// than [`JOIN_NS`] past its last response goes out on its own.
    pub fn tick(&mut self, now: u64, out: &mut Vec<DbExchange>) {
        let end = |ex: &DbExchange| ex.resp_last_exit.max(ex.req_last_exit);
        let last = self.held.as_ref().map(|h| h.exec.as_ref().map_or(end(&h.prepare), end));
        if last.is_some_and(|t| now.saturating_sub(t) > JOIN_NS) {
            self.release_held(out);
        }
    }

    /// Whether exchanges are held for a later command or [`Self::tick`].
    pub fn holds(&self) -> bool {
        self.held.is_some()
    }

    /// The connection closed at `ts`: commands still waiting are emitted
    /// (without a response unless part of it was seen).
    pub fn on_close(&mut self, _ts: u64, out: &mut Vec<DbExchange>) {
        while let Some(p) = self.pending.pop_front() {
            let started = p.resp_started;
            self.emit(p, started, out);
        }
        self.release_held(out);
        self.resp = Resp::Start;
        self.cli.reset();
        self.srv.reset();
        self.cli_unsynced = true;
    }
}

/// [`looks_like_client_start`] for a payload without its header.
fn looks_like_client_start_payload(p: &[u8]) -> bool {
    let len = p.len().min(0x00ff_ffff) as u32;
    let mut buf = Vec::with_capacity(4 + p.len().min(80));
    buf.extend_from_slice(&[len as u8, (len >> 8) as u8, (len >> 16) as u8, 0]);
    buf.extend_from_slice(p.get(..p.len().min(76)).unwrap_or(&[]));
    looks_like_client_start(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
        let n = payload.len() as u32;
        let mut v = vec![n as u8, (n >> 8) as u8, (n >> 16) as u8, seq];
        v.extend_from_slice(payload);
        v
    }

    fn seg(data: &[u8], t: u64) -> Segment<'_> {
        Segment::new(data, t, t + 10)
    }

    #[test]
    fn detects_greetings_and_flavour() {
        let mut g = vec![10u8];
        g.extend_from_slice(b"8.0.36\0");
        g.extend_from_slice(&[0; 40]);
        let buf = pkt(0, &g);
        assert!(looks_like_server_start(&buf));
        assert_eq!(server_flavor(&buf), Some(DbSystem::Mysql));
        let mut m = vec![10u8];
        m.extend_from_slice(b"5.5.5-10.11.6-MariaDB\0");
        m.extend_from_slice(&[0; 40]);
        assert_eq!(server_flavor(&pkt(0, &m)), Some(DbSystem::Mariadb));
        assert!(!looks_like_server_start(&pkt(1, &g)));
        assert!(!looks_like_server_start(b"\x05\x00"));
        assert_eq!(server_flavor(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn detects_commands() {
        assert!(looks_like_client_start(&pkt(0, b"\x03SELECT 1")));
        assert!(looks_like_client_start(&pkt(0, b"\x16SELECT ?")));
        assert!(looks_like_client_start(&pkt(0, b"\x0e")));
        assert!(looks_like_client_start(&pkt(0, b"\x01")));
        assert!(looks_like_client_start(&pkt(0, b"\x19\x01\x00\x00\x00")));
        assert!(looks_like_client_start(&pkt(0, b"\x1a\x01\x00\x00\x00")));
        assert!(looks_like_client_start(&pkt(0, b"\x02shop")));
        assert!(looks_like_client_start(&pkt(0, b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00")));
        assert!(!looks_like_client_start(&pkt(1, b"\x03SELECT 1")));
        assert!(!looks_like_client_start(&pkt(0, b"\x03\x00\xff\x01")));
        assert!(!looks_like_client_start(&pkt(0, b"\x0e\x00")));
        assert!(!looks_like_client_start(&pkt(0, b"\x42abc")));
        assert!(!looks_like_client_start(b"\x03\x00"));
    }

    #[test]
    fn ok_with_session_tracked_schema() {
        let ok = b"\x00\x00\x00\x02\x40\x00\x00\x00\x07\x01\x05\x04shop";
        let info = parse_ok(ok).expect("ok");
        assert_eq!(info.status & SERVER_SESSION_STATE_CHANGED, SERVER_SESSION_STATE_CHANGED);
        assert_eq!(info.schema.as_deref(), Some("shop"));
        assert!(parse_ok(b"\x00").is_none());
    }

    #[test]
    fn err_with_and_without_sqlstate() {
        let e = parse_err(b"\xff\x7a\x04#42S02Table 'x' doesn't exist");
        assert_eq!(e.code, "1146");
        assert_eq!(e.message, "Table 'x' doesn't exist");
        let e = parse_err(b"\xff\x15\x04Access denied");
        assert_eq!(e.code, "1045");
        assert_eq!(e.message, "Access denied");
        let e = parse_err(b"\xff");
        assert_eq!(e.code, "0");
    }

    #[test]
    fn use_statement_target() {
        assert_eq!(use_target("USE shop").as_deref(), Some("shop"));
        assert_eq!(use_target("  use `my db`;").as_deref(), None);
        assert_eq!(use_target("use `shop`;").as_deref(), Some("shop"));
        assert_eq!(use_target("USER()"), None);
    }

    #[test]
    fn use_query_updates_namespace() {
        let mut c = MysqlConn::new();
        let mut out = Vec::new();
        c.on_client_segment(seg(&pkt(0, b"\x03USE inventory"), 1), &mut out);
        c.on_server_segment(seg(&pkt(1, b"\x00\x00\x00\x02\x00\x00\x00"), 2), &mut out);
        c.on_client_segment(seg(&pkt(0, b"\x03SELECT 1"), 3), &mut out);
        c.on_server_segment(seg(&pkt(1, b"\x00\x00\x00\x02\x00\x00\x00"), 4), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].namespace, None);
        assert_eq!(out[1].namespace.as_deref(), Some("inventory"));
    }

    #[test]
    fn prepare_with_unknown_eof_flag_swallows_trailing_eof() {
        let mut c = MysqlConn::new();
        let mut out = Vec::new();
        c.on_client_segment(seg(&pkt(0, b"\x16SELECT ? FROM t"), 1), &mut out);
        let mut resp = pkt(1, b"\x00\x05\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00");
        resp.extend(pkt(2, b"\x03def\x00\x00\x00\x01?\x00\x0c"));
        resp.extend(pkt(3, b"\xfe\x00\x00\x02\x00"));
        resp.extend(pkt(4, b"\x03def\x00\x00\x00\x01a\x00\x0c"));
        resp.extend(pkt(5, b"\xfe\x00\x00\x02\x00"));
        c.on_server_segment(seg(&resp, 2), &mut out);
        // Held until the next commands say whether it is a one-shot.
        assert!(out.is_empty() && c.holds());
        assert_eq!(c.stats().orphan_packets, 0);
        c.on_client_segment(seg(&execute(5), 3), &mut out);
        c.on_server_segment(seg(&pkt(1, b"\x00\x00\x00\x02\x00\x00\x00"), 4), &mut out);
        assert!(out.is_empty());
        c.on_close(5, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].query_text.as_deref(), Some("SELECT ? FROM t"));
        assert_eq!(out[1].query_text.as_deref(), Some("SELECT ? FROM t"));
        assert_eq!(out[1].rows, Some(0));
        assert!(!out[1].with_prepare);
    }

    /// `COM_STMT_EXECUTE` of statement `id` with one integer parameter.
    fn execute(id: u32) -> Vec<u8> {
        let mut body = vec![0x17];
        body.extend_from_slice(&id.to_le_bytes());
        body.extend_from_slice(b"\x00\x01\x00\x00\x00\x00\x01\x03\x00\x01\x00\x00\x00");
        pkt(0, &body)
    }

    fn close_stmt(id: u32) -> Vec<u8> {
        let mut body = vec![0x19];
        body.extend_from_slice(&id.to_le_bytes());
        pkt(0, &body)
    }

    /// A prepare of statement `id` (no parameters, no columns) and its OK.
    fn prepare(c: &mut MysqlConn, id: u32, sql: &str, t: u64, out: &mut Vec<DbExchange>) {
        let mut body = vec![0x16];
        body.extend_from_slice(sql.as_bytes());
        c.on_client_segment(seg(&pkt(0, &body), t), out);
        let mut ok = vec![0x00];
        ok.extend_from_slice(&id.to_le_bytes());
        ok.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        c.on_server_segment(seg(&pkt(1, &ok), t + 1), out);
    }

    fn ok_result(c: &mut MysqlConn, t: u64, out: &mut Vec<DbExchange>) {
        c.on_server_segment(seg(&pkt(1, b"\x00\x01\x00\x02\x00\x00\x00"), t), out);
    }

    #[test]
    fn a_statement_prepared_run_once_and_closed_is_one_exchange() {
        let mut c = MysqlConn::new();
        let mut out = Vec::new();
        prepare(&mut c, 7, "UPDATE t SET a = ?", 10, &mut out);
        c.on_client_segment(seg(&execute(7), 20), &mut out);
        ok_result(&mut c, 30, &mut out);
        assert!(out.is_empty());
        c.on_client_segment(seg(&close_stmt(7), 40), &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        let ex = &out[0];
        assert!(ex.with_prepare);
        assert_eq!(ex.query_text.as_deref(), Some("UPDATE t SET a = ?"));
        assert_eq!((ex.req_first_enter, ex.resp_last_exit), (10, 30 + 10));
        assert_eq!(ex.rows, Some(1));
        assert_eq!(c.stats().prepares_joined, 1);
        assert_eq!(c.stats().exchanges, 1);
        assert!(!c.holds());
    }

    #[test]
    fn a_statement_run_twice_or_left_open_is_a_prepare_and_its_runs() {
        // Run twice, then closed.
        let mut c = MysqlConn::new();
        let mut out = Vec::new();
        prepare(&mut c, 7, "UPDATE t SET a = ?", 10, &mut out);
        for t in [20, 40] {
            c.on_client_segment(seg(&execute(7), t), &mut out);
            ok_result(&mut c, t + 10, &mut out);
        }
        c.on_client_segment(seg(&close_stmt(7), 60), &mut out);
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(out.iter().all(|e| !e.with_prepare));
        assert_eq!(out.iter().map(|e| e.req_first_enter).collect::<Vec<_>>(), vec![10, 20, 40]);
        // Run once, then another command: both go out at that command.
        let mut c = MysqlConn::new();
        let mut out = Vec::new();
        prepare(&mut c, 7, "UPDATE t SET a = ?", 10, &mut out);
        c.on_client_segment(seg(&execute(7), 20), &mut out);
        ok_result(&mut c, 30, &mut out);
        c.on_client_segment(seg(&pkt(0, b"\x03SELECT 1"), 40), &mut out);
        assert_eq!(out.iter().map(|e| e.req_first_enter).collect::<Vec<_>>(), vec![10, 20]);
        // Another statement closed: the held one stays held; time releases it.
        let mut c = MysqlConn::new();
        let mut out = Vec::new();
        prepare(&mut c, 7, "UPDATE t SET a = ?", 10, &mut out);
        c.on_client_segment(seg(&close_stmt(8), 20), &mut out);
        assert!(out.is_empty());
        c.tick(21 + JOIN_NS, &mut out);
        assert!(out.is_empty());
        c.tick(22 + JOIN_NS, &mut out);
        assert_eq!(out.len(), 1);
        assert!(!c.holds());
        // A prepare that failed is not held.
        let mut c = MysqlConn::new();
        let mut out = Vec::new();
        c.on_client_segment(seg(&pkt(0, b"\x16SELEC ?"), 10), &mut out);
        c.on_server_segment(seg(&pkt(1, b"\xff\x28\x04#42000syntax"), 11), &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].error.is_some());
        // A prepare closed unrun is the prepare alone, at the close.
        let mut c = MysqlConn::new();
        let mut out = Vec::new();
        prepare(&mut c, 7, "UPDATE t SET a = ?", 10, &mut out);
        c.on_client_segment(seg(&close_stmt(7), 20), &mut out);
        assert_eq!(out.len(), 1);
        assert!(!out[0].with_prepare);
    }

    #[test]
    fn close_emits_pending_without_response() {
        let mut c = MysqlConn::new();
        let mut out = Vec::new();
        c.on_client_segment(seg(&pkt(0, b"\x03SELECT SLEEP(10)"), 1), &mut out);
        assert!(out.is_empty());
        c.on_close(5, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].no_response);
        assert_eq!(out[0].rows, None);
    }

    #[test]
    fn statement_table_is_bounded() {
        let mut c = MysqlConn::new();
        for id in 0..(MAX_STATEMENTS as u32 * 3) {
            c.remember_statement(id, "x".repeat(500));
            assert!(c.statements.len() <= MAX_STATEMENTS);
            assert!(c.statement_bytes <= MAX_STATEMENT_BYTES);
            if id % 2 == 0 {
                c.forget_statement(id);
            }
        }
        assert!(c.statement_order.len() <= 2 * MAX_STATEMENTS + 1);
        assert!(c.stats().statements_evicted > 0);
    }

    #[test]
    fn pending_queue_is_bounded() {
        let mut c = MysqlConn::new();
        let mut out = Vec::new();
        for _ in 0..(MAX_PENDING + 10) {
            c.on_client_segment(seg(&pkt(0, b"\x03SELECT 1"), 1), &mut out);
        }
        assert_eq!(c.pending_commands(), MAX_PENDING);
        assert_eq!(out.len(), 10);
        assert!(out.iter().all(|e| e.no_response));
    }
}
