//! HTTP/2 (RFC 9113) stream tracking with HPACK header decoding and gRPC
//! message framing.
//!
//! [`H2Conn`] consumes the two byte streams of one connection as captured
//! [`Segment`]s and emits one [`H2Exchange`] per stream (request headers,
//! response headers, trailers, body sizes, gRPC status and message counts).
//!
//! Design rules (shared with the HTTP/1 parser):
//! * Pure code: no I/O, no clock, no global state; no input makes it panic.
//! * Bodies are never stored. DATA payloads are skipped by the frame length,
//!   uncaptured bytes included; only the 5-byte gRPC message prefixes are
//!   looked at.
//! * Frame boundaries are never guessed inside a segment. When framing is
//!   lost (a frame header fell into an uncaptured gap, or the agent attached
//!   mid-stream), bytes are skipped until a later segment *starts* with a
//!   plausible sequence of frame headers.
//! * Header blocks are decoded by a per-direction HPACK decoder that keeps
//!   working when its dynamic table is unknown (see [`hpack`]): fields that
//!   refer to unknown entries are missing and the exchange is flagged
//!   `headers_incomplete`, but no field is ever attributed from a wrong
//!   entry or to another stream.
//! * Bounded memory: a header block is buffered up to [`MAX_HEADER_BLOCK`]
//!   bytes, at most [`MAX_STREAMS`] streams are tracked per connection, each
//!   recorded header value is cut at [`MAX_VALUE_LEN`] bytes, and the HPACK
//!   tables are capped by [`hpack::MAX_STORED_BYTES`].

pub mod frame;
pub mod hpack;
pub mod huffman;

use std::collections::{BTreeMap, VecDeque};

use self::frame::{FrameHeader, Sender};
use self::hpack::{BlockOutcome, Decoder};
use super::http1::{RequestHead, Segment};

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most streams tracked per connection; when a new stream would exceed it,
/// the oldest (lowest id) is emitted as incomplete.
pub const MAX_STREAMS: usize = 1024;

/// Largest header block (HEADERS/PUSH_PROMISE plus CONTINUATIONs) buffered.
/// Longer blocks are decoded as far as buffered and flagged incomplete.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// Longest recorded header value; longer values are cut.
pub const MAX_VALUE_LEN: usize = 8 * 1024;

/// Bytes of a control frame payload kept (SETTINGS, GOAWAY, ...).
const MAX_CONTROL_PAYLOAD: usize = 6 * 64;

/// Ids of recently emitted streams remembered, so that late frames for them
/// (a RST_STREAM after END_STREAM, trailing WINDOW_UPDATEs, ...) do not
/// create new exchanges.
const RECENTLY_CLOSED: usize = 256;

/// Frame buffers that grew past this capacity are released after use.
const KEEP_BUF_CAPACITY: usize = 16 * 1024;

/// When resynchronising, a frame on a stream more than this far above the
/// highest stream id seen is taken as noise.
const RESYNC_STREAM_WINDOW: u32 = 1 << 16;

/// Frame headers checked by the start heuristics.
const CHAIN_CHECK: usize = 8;

/// True when `buf` is (a prefix of) the client preface, or starts with a
/// plausible sequence of client frame headers (a connection in progress).
pub fn looks_like_client_start(buf: &[u8]) -> bool {
    if buf.is_empty() {
        return false;
    }
    if buf.len() <= PREFACE.len() {
        if PREFACE.starts_with(buf) {
            return true;
        }
    } else if buf.starts_with(PREFACE) {
        return true;
    }
    frame::plausible_chain(buf, Sender::Client, CHAIN_CHECK) > 0
}

/// True when `buf` starts with a SETTINGS frame (how a server opens a
/// connection) or with a plausible sequence of server frame headers.
pub fn looks_like_server_start(buf: &[u8]) -> bool {
    frame::plausible_chain(buf, Sender::Server, CHAIN_CHECK) > 0
}

/// One HTTP/2 stream: request, response and trailers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct H2Exchange {
    pub stream_id: u32,
    pub method: Option<String>,
    pub path: Option<String>,
    /// `:authority`, or `host` when the request had no `:authority`.
    pub authority: Option<String>,
    pub scheme: Option<String>,
    /// Final (non-1xx) response status.
    pub status: Option<u16>,
    /// Request content-type (gRPC: `application/grpc...`).
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    pub traceparent: Option<String>,
    /// All `tracestate` fields, joined with `,`.
    pub tracestate: Option<String>,
    pub b3: Option<String>,
    pub x_b3_trace_id: Option<String>,
    pub x_b3_span_id: Option<String>,
    pub x_b3_sampled: Option<String>,
    /// Decoded (base64) value of `grpc-trace-bin`.
    pub grpc_trace_bin: Option<Vec<u8>>,
    /// From trailers, or from a trailers-only response.
    pub grpc_status: Option<u32>,
    /// Percent-decoded.
    pub grpc_message: Option<String>,
    /// gRPC length-prefixed messages seen (prefix decoded).
    pub request_messages: u32,
    pub response_messages: u32,
    /// DATA payload bytes, padding excluded.
    pub request_body_size: u64,
    pub response_body_size: u64,
    /// Length of the first gRPC message of each direction.
    pub first_request_message_size: Option<u32>,
    pub first_response_message_size: Option<u32>,
    /// Entry of the segment in which the request HEADERS frame started; 0 if
    /// the request headers were not seen.
    pub req_first_enter: u64,
    /// Exit of the segment that completed the last request frame.
    pub req_last_exit: u64,
    /// Entry of the segment in which the final response HEADERS (or, without
    /// them, the first response DATA) started; 0 without a response.
    pub resp_first_enter: u64,
    pub resp_last_exit: u64,
    /// RST_STREAM error code, if the stream was reset.
    pub reset: Option<u32>,
    /// The request body is framed as gRPC messages (a hint when the
    /// content-type could not be decoded).
    pub grpc_framed: bool,
    /// Some header fields could not be decoded (unknown dynamic table entry,
    /// truncated capture, encoding error).
    pub headers_incomplete: bool,
    /// Both sides ended the stream (END_STREAM or RST_STREAM), as opposed to
    /// being emitted at close, GOAWAY or stream-table overflow.
    pub ended: bool,
}

/// Counters kept per connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct H2Stats {
    /// Client prefaces seen.
    pub prefaces: u64,
    /// Frame headers parsed (both directions).
    pub frames: u64,
    pub data_frames: u64,
    /// Header blocks decoded (including PUSH_PROMISE blocks).
    pub header_blocks: u64,
    /// Header blocks cut by an uncaptured gap or the buffer limit.
    pub truncated_blocks: u64,
    /// Header blocks longer than [`MAX_HEADER_BLOCK`].
    pub oversized_blocks: u64,
    /// Header fields that could not be decoded.
    pub unknown_fields: u64,
    /// HPACK encoding errors.
    pub hpack_errors: u64,
    /// Interim (1xx) responses.
    pub informational: u64,
    /// Exchanges emitted.
    pub exchanges: u64,
    /// Exchanges emitted before both sides ended.
    pub incomplete_exchanges: u64,
    /// Streams emitted early because [`MAX_STREAMS`] was exceeded.
    pub stream_overflow: u64,
    pub resets: u64,
    pub goaways: u64,
    /// Stream frames for streams not tracked (closed, pushed, or opened
    /// before the capture started).
    pub orphan_frames: u64,
    /// Frame sequence violations (CONTINUATION expected, stray
    /// CONTINUATION).
    pub protocol_errors: u64,
    /// Times framing was lost (frame header inside an uncaptured gap, bad
    /// preface).
    pub sync_lost: u64,
    /// Times framing was regained at a segment start.
    pub resyncs: u64,
    /// Bytes (captured and uncaptured) skipped while out of sync.
    pub desync_bytes_skipped: u64,
}

/// Reads gRPC length-prefixed messages (1-byte compressed flag, 4-byte
/// big-endian length) from one direction's DATA payloads.
#[derive(Debug, Clone, Default)]
struct GrpcReader {
    hdr: [u8; 5],
    hdr_len: usize,
    /// Message bytes still to skip.
    skip: u64,
    /// Framing lost (gap over a prefix, or not gRPC framing): stop counting.
    lost: bool,
    messages: u32,
    first: Option<u32>,
}

impl GrpcReader {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.lost {
            if self.skip > 0 {
                let k = self.skip.min(data.len() as u64) as usize;
                data = data.get(k..).unwrap_or(&[]);
                self.skip -= k as u64;
                continue;
            }
            let mut used = 0;
            for (slot, &b) in self.hdr.iter_mut().skip(self.hdr_len).zip(data.iter()) {
                *slot = b;
                used += 1;
            }
            self.hdr_len += used;
            data = data.get(used..).unwrap_or(&[]);
            if self.hdr_len == 5 {
                self.hdr_len = 0;
                if self.hdr[0] > 1 {
                    self.lost = true;
                    return;
                }
                let len = u32::from_be_bytes([self.hdr[1], self.hdr[2], self.hdr[3], self.hdr[4]]);
                self.messages = self.messages.saturating_add(1);
                self.first.get_or_insert(len);
                self.skip = u64::from(len);
            }
        }
    }

    fn gap(&mut self, n: u64) {
        if self.lost || n == 0 {
            return;
        }
        if self.hdr_len == 0 && self.skip >= n {
            self.skip -= n;
        } else {
            self.lost = true;
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Stream {
    ex: H2Exchange,
    req_headers: bool,
    /// Final response headers seen (later server blocks are trailers).
    resp_headers: bool,
    req_ended: bool,
    resp_ended: bool,
    resp_grpc_type: bool,
    req_grpc: GrpcReader,
    resp_grpc: GrpcReader,
    /// Whether the first request DATA bytes look like gRPC message framing
    /// (None until seen): identifies gRPC when the headers that say so
    /// could not be decoded.
    req_framed: Option<bool>,
    probe: [u8; 5],
    probe_len: u8,
}

impl Stream {
    fn is_grpc(&self) -> bool {
        self.resp_grpc_type || self.ex.content_type.as_deref().is_some_and(|c| c.starts_with("application/grpc"))
    }

    fn heap_size(&self) -> usize {
        let e = &self.ex;
        [
            &e.method,
            &e.path,
            &e.authority,
            &e.scheme,
            &e.content_type,
            &e.user_agent,
            &e.traceparent,
            &e.tracestate,
            &e.b3,
            &e.x_b3_trace_id,
            &e.x_b3_span_id,
            &e.x_b3_sampled,
            &e.grpc_message,
        ]
        .iter()
        .map(|s| s.as_ref().map_or(0, String::capacity))
        .sum::<usize>()
            + e.grpc_trace_bin.as_ref().map_or(0, Vec::capacity)
    }
}

/// Header fields of interest collected from one block.
#[derive(Debug, Default)]
struct HeaderSink {
    method: Option<String>,
    path: Option<String>,
    authority: Option<String>,
    host: Option<String>,
    scheme: Option<String>,
    status: Option<u16>,
    content_type: Option<String>,
    user_agent: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    b3: Option<String>,
    x_b3_trace_id: Option<String>,
    x_b3_span_id: Option<String>,
    x_b3_sampled: Option<String>,
    grpc_trace_bin: Option<Vec<u8>>,
    grpc_status: Option<u32>,
    grpc_message: Option<String>,
    /// A `:status` field was present but not a valid status.
    bad_status: bool,
}

fn text(v: &[u8]) -> String {
    let v = v.get(..MAX_VALUE_LEN).unwrap_or(v);
    String::from_utf8_lossy(v).into_owned()
}

fn parse_num(v: &[u8]) -> Option<u32> {
    if v.is_empty() || v.len() > 9 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u32, |acc, &d| acc.checked_mul(10)?.checked_add(u32::from(d - b'0')))
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decode a grpc-message value.
fn percent_decode(v: &[u8]) -> String {
    let v = v.get(..MAX_VALUE_LEN).unwrap_or(v);
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while let Some(&b) = v.get(i) {
        if b == b'%' {
            if let (Some(h), Some(l)) =
                (v.get(i + 1).copied().and_then(hex_val), v.get(i + 2).copied().and_then(hex_val))
            {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decode base64 (standard or URL-safe alphabet, padding optional). None on
/// an invalid character.
fn base64_decode(v: &[u8]) -> Option<Vec<u8>> {
    let v = v.get(..MAX_VALUE_LEN).unwrap_or(v);
    let mut out = Vec::with_capacity(v.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &c in v {
        let d = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(d);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

impl HeaderSink {
    fn field(&mut self, name: &[u8], value: &[u8]) {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if name.first() == Some(&b':') {
            if is(":method") {
                self.method = Some(text(value));
            } else if is(":path") {
                self.path = Some(text(value));
            } else if is(":authority") {
                self.authority = Some(text(value));
            } else if is(":scheme") {
                self.scheme = Some(text(value));
            } else if is(":status") {
                match parse_num(value) {
                    Some(s) if value.len() == 3 && (100..=999).contains(&s) => self.status = Some(s as u16),
                    _ => self.bad_status = true,
                }
            }
            return;
        }
        match name.len() {
            4 if is("host") => self.host = Some(text(value)),
            2 if is("b3") => self.b3 = Some(text(value)),
            10 if is("user-agent") => self.user_agent = Some(text(value)),
            10 if is("tracestate") => match &mut self.tracestate {
                Some(t) if t.len() < MAX_VALUE_LEN => {
                    t.push(',');
                    t.push_str(&String::from_utf8_lossy(value));
                    if t.len() > MAX_VALUE_LEN {
                        let mut cut = MAX_VALUE_LEN;
                        while !t.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        t.truncate(cut);
                    }
                }
                Some(_) => {}
                None => self.tracestate = Some(text(value)),
            },
            11 if is("traceparent") => self.traceparent = Some(text(value)),
            11 if is("grpc-status") => self.grpc_status = parse_num(value),
            12 if is("content-type") => self.content_type = Some(text(value)),
            12 if is("x-b3-traceid") => self.x_b3_trace_id = Some(text(value)),
            12 if is("x-b3-sampled") => self.x_b3_sampled = Some(text(value)),
            11 if is("x-b3-spanid") => self.x_b3_span_id = Some(text(value)),
            12 if is("grpc-message") => self.grpc_message = Some(percent_decode(value)),
            14 if is("grpc-trace-bin") => {
                // "True binary" metadata (negotiated between gRPC peers with
                // a private setting) is sent as a zero byte plus the raw
                // bytes; otherwise the value is base64.
                self.grpc_trace_bin = match value.split_first() {
                    Some((0, raw)) => Some(raw.get(..MAX_VALUE_LEN).unwrap_or(raw).to_vec()),
                    _ => base64_decode(value),
                }
            }
            _ => {}
        }
    }
}

/// Where a direction's reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RState {
    /// Client: inside the connection preface (bytes matched so far).
    Preface(usize),
    /// Server: before the first frame (tells a fresh connection from one in
    /// progress).
    Start,
    /// Collecting a frame header.
    Header,
    /// Inside a frame payload.
    Payload,
    /// Framing lost: skip until a segment starts with plausible frames.
    Resync,
}

/// Reader state of one direction.
#[derive(Debug, Clone)]
struct Dir {
    sender: Sender,
    state: RState,
    hdr: [u8; frame::HEADER_LEN],
    hdr_len: usize,
    /// Current frame.
    fh: FrameHeader,
    /// Payload bytes of the current frame consumed (captured or not).
    pos: u64,
    /// Captured payload prefix of the current non-DATA frame.
    buf: Vec<u8>,
    /// Some of the current frame's payload was not captured or not kept.
    buf_lost: bool,
    /// Entry time of the segment in which the current frame started.
    frame_enter: u64,
    /// DATA padding length, once its byte was seen.
    pad: Option<u8>,
    /// Header block being assembled from CONTINUATION frames.
    block: Vec<u8>,
    block_open: bool,
    block_stream: u32,
    block_end_stream: bool,
    block_push: bool,
    block_lost: bool,
    block_enter: u64,
    hpack: Decoder,
}

impl Dir {
    fn new(sender: Sender, state: RState, hpack: Decoder) -> Self {
        Dir {
            sender,
            state,
            hdr: [0; frame::HEADER_LEN],
            hdr_len: 0,
            fh: FrameHeader::default(),
            pos: 0,
            buf: Vec::new(),
            buf_lost: false,
            frame_enter: 0,
            pad: None,
            block: Vec::new(),
            block_open: false,
            block_stream: 0,
            block_end_stream: false,
            block_push: false,
            block_lost: false,
            block_enter: 0,
            hpack,
        }
    }

    fn heap_bytes(&self) -> usize {
        self.buf.capacity() + self.block.capacity() + self.hpack.heap_bytes()
    }
}

const CLIENT: usize = 0;
const SERVER: usize = 1;

/// Tracks the streams of one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct H2Conn {
    dirs: [Dir; 2],
    streams: BTreeMap<u32, Stream>,
    closed: VecDeque<u32>,
    /// Highest stream id seen in a header block.
    max_stream: u32,
    /// The connection was found in progress (no preface).
    mid_stream: bool,
    stats: H2Stats,
    /// Streams whose request headers were seen since the last
    /// [`H2Conn::take_started`].
    started: Vec<u32>,
}

impl Default for H2Conn {
    fn default() -> Self {
        Self::new()
    }
}

impl H2Conn {
    /// A prior-knowledge connection: the client preface is expected; when
    /// the first client bytes are not the preface, the connection is taken
    /// as already in progress (HPACK tables unknown).
    pub fn new() -> Self {
        H2Conn {
            dirs: [
                Dir::new(Sender::Client, RState::Preface(0), Decoder::new()),
                Dir::new(Sender::Server, RState::Start, Decoder::new()),
            ],
            streams: BTreeMap::new(),
            closed: VecDeque::new(),
            max_stream: 0,
            mid_stream: false,
            stats: H2Stats::default(),
            started: Vec::new(),
        }
    }

    /// Streams whose request headers were seen since the last call, oldest
    /// first, with what is known of their requests.
    pub fn take_started(&mut self, mut f: impl FnMut(&H2Exchange)) {
        if self.started.is_empty() {
            return;
        }
        for id in std::mem::take(&mut self.started) {
            if let Some(st) = self.streams.get(&id) {
                f(&st.ex);
            }
        }
    }

    /// A connection upgraded from HTTP/1.1 (`Upgrade: h2c`). Stream 1 is the
    /// upgraded request, already complete on the client side; the caller
    /// feeds the bytes that follow the `101 Switching Protocols` response
    /// (server) and the request (client: the preface).
    pub fn new_after_upgrade(request: &RequestHead, req_first_enter: u64, req_last_exit: u64) -> Self {
        let mut c = Self::new();
        let ex = H2Exchange {
            stream_id: 1,
            method: Some(request.method.to_string()),
            path: Some(request.target.to_string()),
            authority: request.host.as_deref().map(str::to_owned),
            scheme: Some("http".to_string()),
            user_agent: request.user_agent.as_deref().map(str::to_owned),
            traceparent: request.traceparent.clone(),
            tracestate: request.tracestate.clone(),
            b3: request.b3.clone(),
            x_b3_trace_id: request.x_b3_trace_id.clone(),
            x_b3_span_id: request.x_b3_span_id.clone(),
            x_b3_sampled: request.x_b3_sampled.clone(),
            req_first_enter,
            req_last_exit,
            ..H2Exchange::default()
        };
        c.streams.insert(1, Stream { ex, req_headers: true, req_ended: true, ..Stream::default() });
        c.max_stream = 1;
        c
    }

    pub fn stats(&self) -> &H2Stats {
        &self.stats
    }

    /// HPACK decoder statistics: (client -> server, server -> client).
    pub fn hpack_stats(&self) -> (&hpack::HpackStats, &hpack::HpackStats) {
        (self.dirs[CLIENT].hpack.stats(), self.dirs[SERVER].hpack.stats())
    }

    /// Streams currently tracked.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Approximate heap memory held: frame and header block buffers, HPACK
    /// tables and the tracked streams.
    pub fn buffered_bytes(&self) -> usize {
        let streams: usize = self.streams.values().map(|s| s.heap_size() + std::mem::size_of::<Stream>() + 16).sum();
        self.dirs.iter().map(Dir::heap_bytes).sum::<usize>() + streams + self.closed.capacity() * 4
    }

    /// Bytes travelling client -> server.
    pub fn on_client_segment(&mut self, seg: Segment<'_>, out: &mut Vec<H2Exchange>) {
        self.on_segment(CLIENT, seg, out);
    }

    /// Bytes travelling server -> client.
    pub fn on_server_segment(&mut self, seg: Segment<'_>, out: &mut Vec<H2Exchange>) {
        self.on_segment(SERVER, seg, out);
    }

    /// The connection closed: every open stream is emitted (not ended).
    pub fn on_close(&mut self, _ts: u64, out: &mut Vec<H2Exchange>) {
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            self.emit(id, false, out);
        }
        for d in &mut self.dirs {
            d.block_open = false;
            d.block = Vec::new();
            d.buf = Vec::new();
        }
    }

    // -----------------------------------------------------------------
    // Byte stream handling
    // -----------------------------------------------------------------

    fn on_segment(&mut self, side: usize, seg: Segment<'_>, out: &mut Vec<H2Exchange>) {
        let mut data = seg.data;
        let mut at_start = true;
        while !data.is_empty() {
            match self.dirs[side].state {
                RState::Preface(n) => {
                    let want = PREFACE.get(n..).unwrap_or(&[]);
                    let k = want.len().min(data.len());
                    if data.get(..k) == want.get(..k) {
                        data = data.get(k..).unwrap_or(&[]);
                        if n + k >= PREFACE.len() {
                            self.stats.prefaces += 1;
                            self.dirs[side].state = RState::Header;
                        } else {
                            self.dirs[side].state = RState::Preface(n + k);
                        }
                    } else if n == 0 && at_start {
                        // No preface: a connection in progress.
                        self.attach_mid_stream();
                        self.dirs[side].state = RState::Resync;
                        continue;
                    } else {
                        self.lose_sync(side, seg.ts_exit, out);
                    }
                }
                RState::Start => {
                    // The server's first frame: SETTINGS on a fresh
                    // connection.
                    let fresh = match FrameHeader::parse(data) {
                        Some(h) => {
                            h.kind == frame::SETTINGS && !h.has(frame::FLAG_ACK) && frame::plausible(&h, Sender::Server)
                        }
                        None => data.get(3).is_none_or(|&t| t == frame::SETTINGS),
                    };
                    if fresh && !self.mid_stream {
                        self.dirs[side].state = RState::Header;
                    } else {
                        self.mid_stream = true;
                        self.dirs[side].hpack.forget(true);
                        self.dirs[side].state = RState::Resync;
                    }
                    continue;
                }
                RState::Header => {
                    let d = &mut self.dirs[side];
                    if d.hdr_len == 0 {
                        d.frame_enter = seg.ts_enter;
                    }
                    let mut used = 0;
                    for (slot, &b) in d.hdr.iter_mut().skip(d.hdr_len).zip(data.iter()) {
                        *slot = b;
                        used += 1;
                    }
                    d.hdr_len += used;
                    data = data.get(used..).unwrap_or(&[]);
                    if d.hdr_len >= frame::HEADER_LEN {
                        d.hdr_len = 0;
                        if let Some(fh) = FrameHeader::parse(&d.hdr) {
                            self.begin_frame(side, fh, seg.ts_exit, out);
                        }
                    }
                }
                RState::Payload => {
                    let d = &self.dirs[side];
                    let remaining = u64::from(d.fh.length).saturating_sub(d.pos);
                    let k = remaining.min(data.len() as u64) as usize;
                    let chunk = data.get(..k).unwrap_or(&[]);
                    data = data.get(k..).unwrap_or(&[]);
                    self.payload_bytes(side, Some(chunk), k as u64);
                    let d = &mut self.dirs[side];
                    d.pos += k as u64;
                    if d.pos >= u64::from(d.fh.length) {
                        self.finish_frame(side, seg.ts_exit, out);
                    }
                }
                RState::Resync => {
                    if at_start && self.resync_ok(side, data) {
                        self.stats.resyncs += 1;
                        self.dirs[side].state = RState::Header;
                        self.dirs[side].hdr_len = 0;
                        at_start = false;
                        continue;
                    }
                    self.stats.desync_bytes_skipped = self.stats.desync_bytes_skipped.saturating_add(data.len() as u64);
                    data = &[];
                }
            }
            at_start = false;
        }
        if seg.uncaptured > 0 {
            self.on_gap(side, seg.uncaptured, seg.ts_exit, out);
        }
    }

    /// `n` bytes on the wire were not captured.
    fn on_gap(&mut self, side: usize, mut n: u64, ts_exit: u64, out: &mut Vec<H2Exchange>) {
        match self.dirs[side].state {
            RState::Payload => {
                let d = &self.dirs[side];
                let remaining = u64::from(d.fh.length).saturating_sub(d.pos);
                let k = remaining.min(n);
                self.payload_bytes(side, None, k);
                let d = &mut self.dirs[side];
                d.pos += k;
                n -= k;
                if d.pos >= u64::from(d.fh.length) {
                    self.finish_frame(side, ts_exit, out);
                }
                if n > 0 {
                    self.lose_sync(side, ts_exit, out);
                }
            }
            RState::Resync => {}
            RState::Preface(_) | RState::Start => {
                if matches!(self.dirs[side].state, RState::Start) {
                    self.mid_stream = true;
                }
                self.lose_sync(side, ts_exit, out);
            }
            RState::Header => self.lose_sync(side, ts_exit, out),
        }
        if n > 0 && self.dirs[side].state == RState::Resync {
            self.stats.desync_bytes_skipped = self.stats.desync_bytes_skipped.saturating_add(n);
        }
    }

    /// The client did not start with the preface: the connection was in
    /// progress before the capture, so neither side's HPACK table is known.
    fn attach_mid_stream(&mut self) {
        if !self.mid_stream {
            self.mid_stream = true;
            for d in &mut self.dirs {
                d.hpack.forget(true);
            }
        }
    }

    /// Framing lost in this direction: skip to a plausible segment start.
    /// A header block in progress is decoded as far as it got; the HPACK
    /// table is forgotten (blocks may have been lost in the gap).
    fn lose_sync(&mut self, side: usize, ts_exit: u64, out: &mut Vec<H2Exchange>) {
        self.stats.sync_lost += 1;
        if self.dirs[side].block_open {
            self.dirs[side].block_lost = true;
            self.decode_block(side, None, ts_exit, out);
        }
        let d = &mut self.dirs[side];
        d.state = RState::Resync;
        d.hdr_len = 0;
        d.buf.clear();
        d.hpack.forget(true);
    }

    fn resync_ok(&self, side: usize, data: &[u8]) -> bool {
        let sender = self.dirs[side].sender;
        if frame::plausible_chain(data, sender, CHAIN_CHECK) == 0 {
            return false;
        }
        let Some(h) = FrameHeader::parse(data) else {
            return false;
        };
        if h.kind == frame::CONTINUATION {
            return false;
        }
        if h.stream != 0 && self.max_stream > 0 && h.stream > self.max_stream.saturating_add(RESYNC_STREAM_WINDOW) {
            return false;
        }
        true
    }

    // -----------------------------------------------------------------
    // Frames
    // -----------------------------------------------------------------

    fn begin_frame(&mut self, side: usize, fh: FrameHeader, ts_exit: u64, out: &mut Vec<H2Exchange>) {
        if !frame::sane(&fh) {
            self.lose_sync(side, ts_exit, out);
            return;
        }
        self.stats.frames += 1;
        if self.dirs[side].block_open && (fh.kind != frame::CONTINUATION || fh.stream != self.dirs[side].block_stream) {
            // A header block must continue with CONTINUATION frames on the
            // same stream; decode what was assembled.
            self.stats.protocol_errors += 1;
            self.dirs[side].block_lost = true;
            self.decode_block(side, None, ts_exit, out);
        }
        let d = &mut self.dirs[side];
        d.fh = fh;
        d.pos = 0;
        d.buf.clear();
        d.buf_lost = false;
        d.pad = None;
        d.state = RState::Payload;
        if fh.length == 0 {
            self.finish_frame(side, ts_exit, out);
        }
    }

    /// Payload bytes of the current frame: `chunk` when captured, `None` for
    /// `n` uncaptured bytes.
    fn payload_bytes(&mut self, side: usize, chunk: Option<&[u8]>, n: u64) {
        if n == 0 {
            return;
        }
        let d = &mut self.dirs[side];
        match d.fh.kind {
            frame::DATA => self.data_bytes(side, chunk, n),
            frame::HEADERS | frame::CONTINUATION | frame::PUSH_PROMISE => match chunk {
                Some(c) => {
                    let room = MAX_HEADER_BLOCK.saturating_sub(d.block.len()).saturating_sub(d.buf.len());
                    let take = room.min(c.len());
                    d.buf.extend_from_slice(c.get(..take).unwrap_or(&[]));
                    if take < c.len() {
                        d.buf_lost = true;
                    }
                }
                None => d.buf_lost = true,
            },
            frame::SETTINGS | frame::RST_STREAM | frame::GOAWAY => match chunk {
                Some(c) => {
                    let room = MAX_CONTROL_PAYLOAD.saturating_sub(d.buf.len());
                    d.buf.extend_from_slice(c.get(..room.min(c.len())).unwrap_or(&[]));
                }
                None => d.buf_lost = true,
            },
            _ => {}
        }
    }

    fn data_bytes(&mut self, side: usize, mut chunk: Option<&[u8]>, mut n: u64) {
        let d = &mut self.dirs[side];
        let fh = d.fh;
        let mut off = d.pos;
        let padded = fh.has(frame::FLAG_PADDED);
        if padded && off == 0 && n > 0 {
            d.pad = chunk.and_then(|c| c.first().copied());
            chunk = chunk.map(|c| c.get(1..).unwrap_or(&[]));
            off = 1;
            n -= 1;
        }
        let start = u64::from(padded);
        let end = u64::from(fh.length).saturating_sub(u64::from(d.pad.unwrap_or(0)));
        let s = off.max(start);
        let e = off.saturating_add(n).min(end);
        if e <= s {
            return;
        }
        let Some(st) = self.streams.get_mut(&fh.stream) else {
            return;
        };
        if side == CLIENT && st.req_framed.is_none() {
            // Collect the first five payload bytes of the first DATA frame,
            // wherever the segment boundaries fall.
            let have = st.probe_len as u64;
            if s == start + have {
                match chunk {
                    Some(c) => {
                        let a = (s - off) as usize;
                        let b = ((e - off) as usize).min(a + (5 - have as usize));
                        for &x in c.get(a..b).unwrap_or(&[]) {
                            st.probe[st.probe_len as usize] = x;
                            st.probe_len += 1;
                        }
                    }
                    None => st.req_framed = Some(false),
                }
                if st.probe_len == 5 {
                    let h = st.probe;
                    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
                    let frame_data = end.saturating_sub(start);
                    // Compressed flag, then a length that fits this frame
                    // exactly or continues past it.
                    st.req_framed = Some(h[0] <= 1 && len <= 16 << 20 && u64::from(len) + 5 >= frame_data);
                }
            } else if s > start + have {
                st.req_framed = Some(false);
            }
        }
        if !st.is_grpc() {
            return;
        }
        let reader = if side == CLIENT { &mut st.req_grpc } else { &mut st.resp_grpc };
        match chunk {
            Some(c) => {
                let a = (s - off) as usize;
                let b = (e - off) as usize;
                reader.feed(c.get(a..b).unwrap_or(&[]));
            }
            None => reader.gap(e - s),
        }
    }

    fn finish_frame(&mut self, side: usize, ts_exit: u64, out: &mut Vec<H2Exchange>) {
        let d = &mut self.dirs[side];
        d.state = RState::Header;
        let fh = d.fh;
        let enter = d.frame_enter;
        match fh.kind {
            frame::DATA => self.on_data_end(side, fh, enter, ts_exit, out),
            frame::HEADERS | frame::PUSH_PROMISE => {
                let d = &mut self.dirs[side];
                let padded = fh.has(frame::FLAG_PADDED);
                let mut start = 0usize;
                let mut pad = 0usize;
                if padded {
                    pad = d.buf.first().map_or(0, |&p| usize::from(p));
                    start = 1;
                }
                if fh.kind == frame::HEADERS && fh.has(frame::FLAG_PRIORITY) {
                    start += 5;
                }
                if fh.kind == frame::PUSH_PROMISE {
                    start += 4;
                }
                let full_end = (fh.length as usize).saturating_sub(pad);
                let end = d.buf.len().min(full_end);
                let lost = (d.buf_lost && d.buf.len() < full_end) || (padded && d.buf.is_empty());
                if lost && d.buf.len() >= MAX_HEADER_BLOCK {
                    self.stats.oversized_blocks += 1;
                }
                if pad + start > fh.length as usize {
                    self.stats.protocol_errors += 1;
                }
                let d = &mut self.dirs[side];
                d.block_stream = fh.stream;
                d.block_end_stream = fh.kind == frame::HEADERS && fh.has(frame::FLAG_END_STREAM);
                d.block_push = fh.kind == frame::PUSH_PROMISE;
                d.block_lost = lost;
                d.block_enter = enter;
                if fh.has(frame::FLAG_END_HEADERS) {
                    self.decode_block(side, Some((start, end.max(start))), ts_exit, out);
                } else {
                    d.block.clear();
                    d.block.extend_from_slice(d.buf.get(start..end).unwrap_or(&[]));
                    d.block_open = true;
                }
            }
            frame::CONTINUATION => {
                let d = &mut self.dirs[side];
                if !d.block_open || d.block_stream != fh.stream {
                    // Its HEADERS was not seen: a lost block.
                    self.stats.protocol_errors += 1;
                    self.stats.orphan_frames += 1;
                    d.hpack.forget(true);
                } else {
                    if !d.block_lost {
                        d.block.extend_from_slice(&d.buf);
                        if d.buf_lost {
                            d.block_lost = true;
                            if d.block.len() >= MAX_HEADER_BLOCK {
                                self.stats.oversized_blocks += 1;
                            }
                        }
                    }
                    if fh.has(frame::FLAG_END_HEADERS) {
                        self.decode_block(side, None, ts_exit, out);
                    }
                }
            }
            frame::RST_STREAM => {
                let code = self.dirs[side].buf.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                self.stats.resets += 1;
                if let Some(st) = self.streams.get_mut(&fh.stream) {
                    st.ex.reset = Some(code.unwrap_or(0));
                    if side == CLIENT {
                        st.ex.req_last_exit = st.ex.req_last_exit.max(ts_exit);
                    } else {
                        st.ex.resp_last_exit = st.ex.resp_last_exit.max(ts_exit);
                    }
                    self.emit(fh.stream, true, out);
                } else {
                    self.stats.orphan_frames += 1;
                }
            }
            frame::SETTINGS => {
                if !fh.has(frame::FLAG_ACK) {
                    let other = 1 - side;
                    let buf = std::mem::take(&mut self.dirs[side].buf);
                    for s in buf.chunks_exact(6) {
                        let id = u16::from_be_bytes([s[0], s[1]]);
                        let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                        if id == frame::SETTINGS_HEADER_TABLE_SIZE {
                            // Bounds the peer's encoder: the decoder of the
                            // other direction.
                            self.dirs[other].hpack.set_settings_limit(v);
                        }
                    }
                    self.dirs[side].buf = buf;
                }
            }
            frame::GOAWAY => {
                self.stats.goaways += 1;
                let last =
                    self.dirs[side].buf.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff);
                if let (Some(last), SERVER) = (last, side) {
                    // Client streams above last-stream-id were not processed.
                    let ids: Vec<u32> = self
                        .streams
                        .range(last.saturating_add(1)..)
                        .map(|(&id, _)| id)
                        .filter(|id| id % 2 == 1)
                        .collect();
                    for id in ids {
                        self.emit(id, false, out);
                    }
                }
            }
            _ => {}
        }
        let d = &mut self.dirs[side];
        d.buf.clear();
        if d.buf.capacity() > KEEP_BUF_CAPACITY {
            d.buf = Vec::new();
        }
    }

    fn on_data_end(&mut self, side: usize, fh: FrameHeader, enter: u64, ts_exit: u64, out: &mut Vec<H2Exchange>) {
        self.stats.data_frames += 1;
        let pad = self.dirs[side].pad;
        let len = u64::from(fh.length);
        let size = if fh.has(frame::FLAG_PADDED) {
            // Without the pad length byte (uncaptured), count the rest.
            len.saturating_sub(1).saturating_sub(u64::from(pad.unwrap_or(0)))
        } else {
            len
        };
        let Some(st) = self.streams.get_mut(&fh.stream) else {
            self.stats.orphan_frames += 1;
            return;
        };
        let end = fh.has(frame::FLAG_END_STREAM);
        if side == CLIENT {
            st.ex.request_body_size = st.ex.request_body_size.saturating_add(size);
            st.ex.req_last_exit = st.ex.req_last_exit.max(ts_exit);
            st.req_ended |= end;
        } else {
            st.ex.response_body_size = st.ex.response_body_size.saturating_add(size);
            if st.ex.resp_first_enter == 0 {
                st.ex.resp_first_enter = enter;
            }
            st.ex.resp_last_exit = st.ex.resp_last_exit.max(ts_exit);
            st.resp_ended |= end;
        }
        if st.req_ended && st.resp_ended {
            self.emit(fh.stream, true, out);
        }
    }

    /// Decode the current header block: `range` of the frame buffer (single
    /// frame block) or the assembled block.
    fn decode_block(&mut self, side: usize, range: Option<(usize, usize)>, ts_exit: u64, out: &mut Vec<H2Exchange>) {
        let mut sink = HeaderSink::default();
        let outcome = {
            let Dir { hpack, buf, block, block_lost, .. } = &mut self.dirs[side];
            let bytes: &[u8] = match range {
                Some((s, e)) => buf.get(s..e).unwrap_or(&[]),
                None => block.as_slice(),
            };
            let errors_before = hpack.stats().errors;
            let o = hpack.decode_block(bytes, *block_lost, &mut |n, v| sink.field(n, v));
            self.stats.hpack_errors += hpack.stats().errors - errors_before;
            o
        };
        let d = &mut self.dirs[side];
        d.block_open = false;
        d.block.clear();
        if d.block.capacity() > KEEP_BUF_CAPACITY {
            d.block = Vec::new();
        }
        self.stats.header_blocks += 1;
        if d.block_lost {
            self.stats.truncated_blocks += 1;
        }
        self.stats.unknown_fields += u64::from(outcome.missing);
        let stream = d.block_stream;
        let end_stream = d.block_end_stream;
        let enter = d.block_enter;
        if d.block_push {
            // Promised request headers: decoded only to keep the table.
            return;
        }
        self.apply_headers(side, stream, end_stream, sink, outcome, enter, ts_exit, out);
    }

    // -----------------------------------------------------------------
    // Streams
    // -----------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn apply_headers(
        &mut self,
        side: usize,
        id: u32,
        end_stream: bool,
        sink: HeaderSink,
        outcome: BlockOutcome,
        enter: u64,
        exit: u64,
        out: &mut Vec<H2Exchange>,
    ) {
        if id == 0 || id.is_multiple_of(2) {
            // Server push or invalid: not tracked.
            self.stats.orphan_frames += 1;
            return;
        }
        if !self.streams.contains_key(&id) {
            if self.closed.contains(&id) {
                self.stats.orphan_frames += 1;
                return;
            }
            while self.streams.len() >= MAX_STREAMS {
                let Some((&oldest, _)) = self.streams.first_key_value() else {
                    break;
                };
                self.stats.stream_overflow += 1;
                self.emit(oldest, false, out);
            }
            self.streams
                .insert(id, Stream { ex: H2Exchange { stream_id: id, ..H2Exchange::default() }, ..Stream::default() });
        }
        self.max_stream = self.max_stream.max(id);
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        let incomplete = outcome.broken || outcome.missing > 0;
        st.ex.headers_incomplete |= incomplete;
        let ex = &mut st.ex;
        if side == CLIENT {
            if !st.req_headers {
                st.req_headers = true;
                // Taken after every segment by the connection tracker; the
                // bound only matters to a caller that never takes them.
                if self.started.len() < MAX_STREAMS {
                    self.started.push(id);
                }
                ex.req_first_enter = enter;
                ex.method = sink.method;
                ex.path = sink.path;
                ex.authority = sink.authority.or(sink.host);
                ex.scheme = sink.scheme;
                ex.content_type = sink.content_type;
                ex.user_agent = sink.user_agent;
                ex.traceparent = sink.traceparent;
                ex.tracestate = sink.tracestate;
                ex.b3 = sink.b3;
                ex.x_b3_trace_id = sink.x_b3_trace_id;
                ex.x_b3_span_id = sink.x_b3_span_id;
                ex.x_b3_sampled = sink.x_b3_sampled;
                ex.grpc_trace_bin = sink.grpc_trace_bin;
            }
            ex.req_last_exit = ex.req_last_exit.max(exit);
            st.req_ended |= end_stream;
        } else {
            let interim = matches!(sink.status, Some(s) if s < 200);
            if interim && !st.resp_headers {
                self.stats.informational += 1;
            } else {
                if !st.resp_headers {
                    st.resp_headers = true;
                    ex.status = sink.status;
                    ex.resp_first_enter = enter;
                    st.resp_grpc_type = sink.content_type.as_deref().is_some_and(|c| c.starts_with("application/grpc"));
                }
                // Trailers, or a trailers-only response.
                if sink.grpc_status.is_some() {
                    ex.grpc_status = sink.grpc_status;
                }
                if sink.grpc_message.is_some() {
                    ex.grpc_message = sink.grpc_message;
                }
            }
            ex.resp_last_exit = ex.resp_last_exit.max(exit);
            st.resp_ended |= end_stream;
        }
        if st.req_ended && st.resp_ended {
            self.emit(id, true, out);
        }
    }

    fn emit(&mut self, id: u32, ended: bool, out: &mut Vec<H2Exchange>) {
        let Some(st) = self.streams.remove(&id) else {
            return;
        };
        let mut ex = st.ex;
        ex.ended = ended;
        ex.grpc_framed = st.req_framed == Some(true);
        ex.request_messages = st.req_grpc.messages;
        ex.response_messages = st.resp_grpc.messages;
        ex.first_request_message_size = st.req_grpc.first;
        ex.first_response_message_size = st.resp_grpc.first;
        self.stats.exchanges += 1;
        if !ended {
            self.stats.incomplete_exchanges += 1;
        }
        if self.closed.len() >= RECENTLY_CLOSED {
            self.closed.pop_front();
        }
        self.closed.push_back(id);
        out.push(ex);
    }
}

#[cfg(test)]
mod tests {
    use super::frame::*;
    use super::hpack::encode_int;
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        FrameHeader { length: payload.len() as u32, kind, flags, stream, reserved: false }.encode(&mut v);
        v.extend_from_slice(payload);
        v
    }

    /// Literal field without indexing, new name, raw strings.
    fn lit(out: &mut Vec<u8>, name: &str, value: &str) {
        out.push(0);
        encode_int(name.len() as u32, 7, 0, out);
        out.extend_from_slice(name.as_bytes());
        encode_int(value.len() as u32, 7, 0, out);
        out.extend_from_slice(value.as_bytes());
    }

    /// Literal field with incremental indexing, new name, Huffman value.
    fn lit_indexed(out: &mut Vec<u8>, name: &str, value: &str) {
        out.push(0x40);
        encode_int(name.len() as u32, 7, 0, out);
        out.extend_from_slice(name.as_bytes());
        let mut h = Vec::new();
        huffman::encode(value.as_bytes(), &mut h);
        encode_int(h.len() as u32, 7, 0x80, out);
        out.extend_from_slice(&h);
    }

    fn request_block(path: &str) -> Vec<u8> {
        let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
        lit(&mut b, ":path", path);
        lit_indexed(&mut b, "content-type", "application/grpc");
        lit(&mut b, "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        lit(&mut b, "grpc-trace-bin", "AAABAgM");
        b
    }

    fn grpc_msg(len: usize) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(len as u32).to_be_bytes());
        v.extend(std::iter::repeat_n(b'm', len));
        v
    }

    /// A small gRPC conversation: (client bytes, server bytes).
    fn conversation() -> (Vec<u8>, Vec<u8>) {
        let mut c = PREFACE.to_vec();
        c.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]));
        let block = request_block("/pkg.Svc/Method");
        // HEADERS split over a padded+priority HEADERS and a CONTINUATION.
        let (a, b) = block.split_at(10);
        let mut p = vec![3]; // pad length
        p.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        p.extend_from_slice(a);
        p.extend_from_slice(&[0, 0, 0]);
        c.extend(frame(HEADERS, FLAG_PADDED | FLAG_PRIORITY, 1, &p));
        c.extend(frame(CONTINUATION, FLAG_END_HEADERS, 1, b));
        // Two messages over three DATA frames, one padded.
        let mut body = grpc_msg(7);
        body.extend(grpc_msg(300));
        let (d1, rest) = body.split_at(3);
        let (d2, d3) = rest.split_at(100);
        c.extend(frame(DATA, 0, 1, d1));
        let mut pd = vec![5];
        pd.extend_from_slice(d2);
        pd.extend_from_slice(&[0; 5]);
        c.extend(frame(DATA, FLAG_PADDED, 1, &pd));
        c.extend(frame(DATA, FLAG_END_STREAM, 1, d3));
        c.extend(frame(PING, 0, 0, &[1; 8]));

        let mut s = frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0x10, 0]);
        s.extend(frame(SETTINGS, FLAG_ACK, 0, &[]));
        let mut h = vec![0x88]; // :status 200
        lit_indexed(&mut h, "content-type", "application/grpc");
        s.extend(frame(HEADERS, FLAG_END_HEADERS, 1, &h));
        s.extend(frame(DATA, 0, 1, &grpc_msg(11)));
        let mut t = Vec::new();
        lit(&mut t, "grpc-status", "0");
        lit(&mut t, "grpc-message", "all%20good");
        s.extend(frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &t));
        (c, s)
    }

    fn seg(data: &[u8], ts: u64) -> Segment<'_> {
        Segment { data, uncaptured: 0, ts_enter: ts, ts_exit: ts + 1 }
    }

    fn check_conversation(out: &[H2Exchange]) {
        assert_eq!(out.len(), 1);
        let e = &out[0];
        assert_eq!(e.stream_id, 1);
        assert_eq!(e.method.as_deref(), Some("POST"));
        assert_eq!(e.path.as_deref(), Some("/pkg.Svc/Method"));
        assert_eq!(e.scheme.as_deref(), Some("http"));
        assert_eq!(e.content_type.as_deref(), Some("application/grpc"));
        assert_eq!(e.grpc_trace_bin.as_deref(), Some(&[0u8, 0, 1, 2, 3][..]));
        assert!(e.traceparent.is_some());
        assert_eq!(e.status, Some(200));
        assert_eq!(e.grpc_status, Some(0));
        assert_eq!(e.grpc_message.as_deref(), Some("all good"));
        assert_eq!((e.request_messages, e.response_messages), (2, 1));
        assert_eq!(e.first_request_message_size, Some(7));
        assert_eq!(e.first_response_message_size, Some(11));
        assert_eq!(e.request_body_size, 12 + 305);
        assert_eq!(e.response_body_size, 16);
        assert!(e.ended);
        assert!(!e.headers_incomplete);
        assert_eq!(e.reset, None);
    }

    #[test]
    fn padded_priority_continuation_grpc() {
        let (c, s) = conversation();
        let mut conn = H2Conn::new();
        let mut out = Vec::new();
        conn.on_client_segment(seg(&c, 10), &mut out);
        conn.on_server_segment(seg(&s, 20), &mut out);
        check_conversation(&out);
        assert_eq!(out[0].req_first_enter, 10);
        assert_eq!(out[0].resp_last_exit, 21);
        assert_eq!(conn.stats().prefaces, 1);
        // The server's SETTINGS_HEADER_TABLE_SIZE bounds the client's
        // encoder: the client -> server decoder.
        assert_eq!(conn.dirs[CLIENT].hpack.max_size(), 4096);
        assert_eq!(conn.dirs[SERVER].hpack.max_size(), 4096);
        assert!(looks_like_client_start(&c));
        assert!(looks_like_client_start(&c[..5]));
        assert!(looks_like_server_start(&s));
        assert!(!looks_like_client_start(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!looks_like_server_start(b"HTTP/1.1 200 OK\r\n\r\n"));
    }

    #[test]
    fn splits_at_every_byte() {
        let (c, s) = conversation();
        for cut_c in 0..=c.len() {
            let cut_s = cut_c % (s.len() + 1);
            let mut conn = H2Conn::new();
            let mut out = Vec::new();
            conn.on_client_segment(seg(&c[..cut_c], 1), &mut out);
            conn.on_client_segment(seg(&c[cut_c..], 2), &mut out);
            conn.on_server_segment(seg(&s[..cut_s], 3), &mut out);
            conn.on_server_segment(seg(&s[cut_s..], 4), &mut out);
            check_conversation(&out);
        }
        // One byte per segment.
        let mut conn = H2Conn::new();
        let mut out = Vec::new();
        for (i, b) in c.iter().enumerate() {
            conn.on_client_segment(seg(std::slice::from_ref(b), i as u64), &mut out);
        }
        for (i, b) in s.iter().enumerate() {
            conn.on_server_segment(seg(std::slice::from_ref(b), 10_000 + i as u64), &mut out);
        }
        check_conversation(&out);
    }

    #[test]
    fn uncaptured_data_is_skipped_and_headers_gap_forgets_table() {
        let mut c = PREFACE.to_vec();
        let block = request_block("/a");
        c.extend(frame(HEADERS, FLAG_END_HEADERS, 1, &block));
        let body = grpc_msg(5000);
        c.extend(frame(DATA, FLAG_END_STREAM, 1, &body));
        let cut = c.len() - 4000;
        let mut conn = H2Conn::new();
        let mut out = Vec::new();
        conn.on_client_segment(Segment { data: &c[..cut], uncaptured: 4000, ts_enter: 1, ts_exit: 2 }, &mut out);
        let mut s = frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &[0x88]);
        s.extend(frame(RST_STREAM, 0, 1, &[0, 0, 0, 0]));
        conn.on_server_segment(seg(&s, 3), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].request_body_size, 5005);
        assert_eq!(out[0].request_messages, 1);
        assert!(out[0].ended);
        assert_eq!(conn.stats().orphan_frames, 1);

        // A header block cut by a gap: fields before the cut survive, the
        // table is forgotten, later frames stay in sync.
        let mut c = PREFACE.to_vec();
        let mut block = vec![0x83];
        lit(&mut block, ":path", "/cut");
        lit_indexed(&mut block, "x-long", &"v".repeat(200));
        let hdr = frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &block);
        c.extend_from_slice(&hdr[..hdr.len() - 100]);
        let mut conn = H2Conn::new();
        let mut out = Vec::new();
        conn.on_client_segment(Segment { data: &c, uncaptured: 100, ts_enter: 1, ts_exit: 2 }, &mut out);
        conn.on_server_segment(seg(&frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &[0x8e]), 3), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].path.as_deref(), Some("/cut"));
        assert_eq!(out[0].status, Some(500));
        assert!(out[0].headers_incomplete);
        assert!(conn.dirs[CLIENT].hpack.table_unknown());
        assert_eq!(conn.stats().sync_lost, 0);
    }

    #[test]
    fn informational_goaway_overflow_and_close() {
        let mut c = PREFACE.to_vec();
        for id in [1u32, 3, 5] {
            c.extend(frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, id, &request_block("/x")));
        }
        let mut conn = H2Conn::new();
        let mut out = Vec::new();
        conn.on_client_segment(seg(&c, 1), &mut out);
        let mut s = frame(HEADERS, FLAG_END_HEADERS, 1, &{
            let mut b = Vec::new();
            lit(&mut b, ":status", "103");
            b
        });
        s.extend(frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &[0x89]));
        s.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]));
        conn.on_server_segment(seg(&s, 2), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].stream_id, out[0].status, out[0].ended), (1, Some(204), true));
        assert_eq!((out[1].stream_id, out[1].ended), (5, false));
        assert_eq!(conn.stats().informational, 1);
        conn.on_close(9, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!((out[2].stream_id, out[2].ended), (3, false));

        // Stream table overflow: the oldest stream is emitted.
        let mut conn = H2Conn::new();
        let mut out = Vec::new();
        conn.on_client_segment(seg(PREFACE, 1), &mut out);
        let block = request_block("/y");
        for i in 0..(MAX_STREAMS as u32 + 5) {
            let f = frame(HEADERS, FLAG_END_HEADERS, 2 * i + 1, &block);
            conn.on_client_segment(seg(&f, 2), &mut out);
        }
        assert_eq!(out.len(), 5);
        assert_eq!(out[0].stream_id, 1);
        assert_eq!(conn.open_streams(), MAX_STREAMS);
        assert_eq!(conn.stats().stream_overflow, 5);
    }

    #[test]
    fn mid_stream_attach_and_resync() {
        // No preface: the connection is in progress.
        let mut conn = H2Conn::new();
        let mut out = Vec::new();
        let mut block = vec![0x82, 0xbe]; // GET, unknown dynamic entry
        lit(&mut block, ":path", "/late");
        let c = frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 41, &block);
        assert!(looks_like_client_start(&c));
        conn.on_client_segment(seg(&c, 1), &mut out);
        conn.on_server_segment(seg(&frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 41, &[0x88]), 2), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].path.as_deref(), Some("/late"));
        assert!(out[0].headers_incomplete);
        // A segment starting mid-frame is skipped, the next plausible one
        // resyncs.
        conn.on_client_segment(seg(b"\x12\x34garbage", 3), &mut out);
        conn.on_client_segment(Segment { data: &c[..4], uncaptured: 10, ts_enter: 4, ts_exit: 5 }, &mut out);
        assert_eq!(conn.stats().sync_lost, 1);
        conn.on_client_segment(seg(b"junk that is not a frame", 6), &mut out);
        let c2 = frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 45, &block);
        conn.on_client_segment(seg(&c2, 7), &mut out);
        conn.on_server_segment(seg(&frame(RST_STREAM, 0, 45, &[0, 0, 0, 8]), 8), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[1].stream_id, out[1].reset, out[1].ended), (45, Some(8), true));
        assert!(conn.stats().desync_bytes_skipped > 0);
    }

    #[test]
    fn upgrade_from_http1() {
        let head = match super::super::http1::parse_request(
            b"GET /up HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
        ) {
            super::super::http1::Parse::Complete(h) => h,
            other => panic!("{other:?}"),
        };
        let mut conn = H2Conn::new_after_upgrade(&head, 5, 6);
        let mut out = Vec::new();
        let mut c = PREFACE.to_vec();
        c.extend(frame(SETTINGS, 0, 0, &[]));
        conn.on_client_segment(seg(&c, 7), &mut out);
        let mut s = frame(SETTINGS, 0, 0, &[]);
        s.extend(frame(HEADERS, FLAG_END_HEADERS, 1, &[0x88]));
        s.extend(frame(DATA, FLAG_END_STREAM, 1, b"hello"));
        conn.on_server_segment(seg(&s, 8), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].path.as_deref(), Some("/up"));
        assert_eq!(out[0].authority.as_deref(), Some("h"));
        assert_eq!(out[0].status, Some(200));
        assert_eq!(out[0].response_body_size, 5);
        assert_eq!((out[0].req_first_enter, out[0].req_last_exit), (5, 6));
        assert!(out[0].ended);
    }

    #[test]
    fn value_helpers() {
        assert_eq!(percent_decode(b"a%20b%zz%4"), "a b%zz%4");
        assert_eq!(base64_decode(b"AAECAw==").as_deref(), Some(&[0u8, 1, 2, 3][..]));
        assert_eq!(base64_decode(b"-_8").as_deref(), Some(&[0xfbu8, 0xff][..]));
        assert_eq!(base64_decode(b"a b"), None);
        assert_eq!(parse_num(b"404"), Some(404));
        assert_eq!(parse_num(b"4x"), None);
        assert_eq!(parse_num(b""), None);
        assert_eq!(parse_num(b"99999999999"), None);
    }
}
