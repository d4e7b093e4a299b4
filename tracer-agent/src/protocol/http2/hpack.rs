//! HPACK header block decoding (RFC 7541) that tolerates an unknown dynamic
//! table.
//!
//! A decoder normally starts at the beginning of a connection and sees every
//! header block of its direction. The agent may however attach mid-stream,
//! or lose a block (or part of one) in an uncaptured gap. The decoder then
//! keeps working in "table unknown" mode:
//!
//! * Table indices count from the newest insertion, so the entries inserted
//!   since the last loss are always addressable correctly: the table keeps
//!   exactly the newest `k` insertions, and index `62 + i` is the `i`-th
//!   newest. Anything older (entries that existed before attach or before the
//!   loss) is unknown: a reference to it yields no field and the block is
//!   reported as having missing fields.
//! * Eviction only changes `k`. Evicting too early makes a later reference
//!   "unknown" instead of wrong, so size accounting may be approximate. The
//!   one case where a wrong size assumption would shift the numbering — an
//!   entry larger than the maximum table size empties the table and is not
//!   inserted — is handled by forgetting the whole table when the decoder
//!   cannot tell on which side of the limit an entry falls.
//! * Entries whose name or value could not be decoded are kept as
//!   placeholders so that later insertions stay correctly numbered.
//!
//! Memory is bounded: the announced table size is honoured for accounting,
//! but at most [`MAX_STORED_BYTES`] of names and values are kept; older
//! entries beyond that are dropped (and become unknown).

use std::collections::VecDeque;

use super::huffman;

/// Default SETTINGS_HEADER_TABLE_SIZE.
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// Most name and value bytes kept in one dynamic table.
pub const MAX_STORED_BYTES: usize = 64 * 1024;

/// Per-entry overhead in the table size accounting (RFC 7541 4.1).
const ENTRY_OVERHEAD: usize = 32;

/// Longest header name assumed for an entry whose name is unknown, when
/// deciding whether it could exceed the table size.
const ASSUMED_MAX_NAME: usize = 256;

/// Longest string literal decoded; longer ones are skipped (unknown value).
const MAX_STRING: usize = 64 * 1024;

/// Number of entries in the static table.
pub const STATIC_LEN: usize = 61;

/// RFC 7541 Appendix A.
pub const STATIC_TABLE: [(&str, &str); STATIC_LEN] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Why an integer could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntError {
    /// The input ended inside the integer.
    Truncated,
    /// The value does not fit 32 bits, or uses too many continuation bytes.
    Overflow,
}

/// Decode an HPACK integer with a `prefix_bits`-bit prefix (1..=8) from the
/// start of `buf`. Returns the value and the number of bytes used.
pub fn decode_int(buf: &[u8], prefix_bits: u8) -> Result<(u32, usize), IntError> {
    let bits = prefix_bits.clamp(1, 8);
    let mask: u32 = (1u32 << bits) - 1;
    let first = match buf.first() {
        Some(&b) => u32::from(b) & mask,
        None => return Err(IntError::Truncated),
    };
    if first < mask {
        return Ok((first, 1));
    }
    let mut value: u64 = u64::from(mask);
    let mut shift: u32 = 0;
    for (i, &b) in buf.iter().enumerate().skip(1) {
        if shift > 28 {
            return Err(IntError::Overflow);
        }
        value += u64::from(b & 0x7f) << shift;
        if value > u64::from(u32::MAX) {
            return Err(IntError::Overflow);
        }
        if b & 0x80 == 0 {
            return Ok((value as u32, i + 1));
        }
        shift += 7;
    }
    Err(IntError::Truncated)
}

/// Encode an HPACK integer (tests and fixture builders). `first` holds the
/// bits above the prefix.
pub fn encode_int(value: u32, prefix_bits: u8, first: u8, out: &mut Vec<u8>) {
    let bits = prefix_bits.clamp(1, 8);
    let mask: u32 = (1u32 << bits) - 1;
    if value < mask {
        out.push(first | value as u8);
        return;
    }
    out.push(first | mask as u8);
    let mut rest = value - mask;
    while rest >= 128 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// One dynamic table entry. Name and value are stored back to back in
/// `data`; either may be unknown (a placeholder).
#[derive(Debug, Clone)]
struct Entry {
    data: Box<[u8]>,
    name_len: usize,
    name_known: bool,
    value_known: bool,
    /// Size for the table accounting (a lower bound when the name or value
    /// is unknown).
    size: usize,
}

impl Entry {
    fn name(&self) -> Option<&[u8]> {
        if self.name_known {
            self.data.get(..self.name_len)
        } else {
            None
        }
    }

    fn value(&self) -> Option<&[u8]> {
        if self.value_known {
            self.data.get(self.name_len..)
        } else {
            None
        }
    }
}

/// Counters kept per decoder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HpackStats {
    /// Header blocks decoded (including truncated ones).
    pub blocks: u64,
    /// Fields delivered.
    pub fields: u64,
    /// Fields that could not be delivered: reference to an unknown table
    /// entry, undecodable string.
    pub unknown_fields: u64,
    /// Blocks that stopped early: truncated input or an encoding error.
    pub broken_blocks: u64,
    /// Encoding errors (bad integer, bad Huffman code, index 0).
    pub errors: u64,
    /// Times the dynamic table was forgotten (loss, or uncertain eviction).
    pub table_resets: u64,
    /// Dynamic table size updates applied.
    pub size_updates: u64,
}

/// What decoding one block found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockOutcome {
    /// Fields delivered to the callback.
    pub fields: u32,
    /// Fields that could not be delivered.
    pub missing: u32,
    /// The block ended early (truncated input or an encoding error): later
    /// fields of it are missing.
    pub broken: bool,
}

/// Where a field's name or value comes from.
#[derive(Clone, Copy)]
enum Src {
    Static(usize),
    Dynamic(usize),
    Scratch,
    Unknown,
}

/// HPACK decoder for one direction of a connection.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Newest entry first.
    entries: VecDeque<Entry>,
    /// Accounted size of `entries`.
    size: usize,
    /// Bytes stored in `entries`.
    stored: usize,
    /// Current maximum table size of the peer's encoder.
    max_size: usize,
    /// `max_size` is known exactly (seen from the connection start, or a size
    /// update was seen since the last loss).
    max_known: bool,
    /// Limit announced by the decoding side's SETTINGS_HEADER_TABLE_SIZE.
    settings_limit: usize,
    /// Older entries than `entries` may exist (attached mid-stream, or a
    /// block was lost).
    tail_unknown: bool,
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
    stats: HpackStats,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

/// Scratch buffers that grew past this are released after a block.
const KEEP_SCRATCH: usize = 16 * 1024;

impl Decoder {
    /// A decoder at the start of a connection: empty table, default size.
    pub fn new() -> Self {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            stored: 0,
            max_size: DEFAULT_TABLE_SIZE,
            max_known: true,
            settings_limit: DEFAULT_TABLE_SIZE,
            tail_unknown: false,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
            stats: HpackStats::default(),
        }
    }

    /// A decoder for a connection already in progress: the table content and
    /// size are unknown.
    pub fn new_unknown() -> Self {
        let mut d = Self::new();
        d.max_known = false;
        d.tail_unknown = true;
        d
    }

    pub fn stats(&self) -> &HpackStats {
        &self.stats
    }

    /// True while entries inserted before the last loss may be referenced.
    pub fn table_unknown(&self) -> bool {
        self.tail_unknown
    }

    /// Number of entries known (placeholders included).
    pub fn known_entries(&self) -> usize {
        self.entries.len()
    }

    /// Accounted size of the known entries.
    pub fn table_size(&self) -> usize {
        self.size
    }

    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.stored
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.name_buf.capacity()
            + self.value_buf.capacity()
    }

    /// The decoding side announced SETTINGS_HEADER_TABLE_SIZE. The encoder
    /// acknowledges a change with a size update; a limit below the current
    /// size is applied at once (the encoder must shrink to it).
    pub fn set_settings_limit(&mut self, limit: u32) {
        self.settings_limit = limit as usize;
        if (limit as usize) < self.max_size {
            self.max_size = limit as usize;
            self.evict_to(self.max_size);
        }
    }

    /// Forget the table: a header block (or part of one) of this direction
    /// was lost. `start_lost` tells that the start of a block (where size
    /// updates live) may have been lost too.
    pub fn forget(&mut self, start_lost: bool) {
        if !self.entries.is_empty() || !self.tail_unknown {
            self.stats.table_resets += 1;
        }
        self.entries.clear();
        self.size = 0;
        self.stored = 0;
        self.tail_unknown = true;
        if start_lost {
            self.max_known = false;
        }
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.entries.pop_back() {
                Some(e) => {
                    self.size = self.size.saturating_sub(e.size);
                    self.stored = self.stored.saturating_sub(e.data.len());
                }
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
        if self.entries.is_empty() {
            self.size = 0;
            self.stored = 0;
        }
    }

    fn size_update(&mut self, new_max: u32) {
        self.stats.size_updates += 1;
        self.max_size = new_max as usize;
        self.max_known = true;
        self.evict_to(self.max_size);
        if self.max_size == 0 {
            // Everything, known or not, is gone.
            self.tail_unknown = false;
        }
        self.check_tail_gone();
    }

    /// When the known entries fill the table so that no older entry can fit
    /// beside them, the table is fully known again.
    fn check_tail_gone(&mut self) {
        if self.tail_unknown && self.max_known && self.size.saturating_add(ENTRY_OVERHEAD) > self.max_size {
            self.tail_unknown = false;
        }
    }

    /// Insert an entry (after its field was delivered).
    fn insert(&mut self, name: Option<&[u8]>, value: Option<&[u8]>, name_len_hint: usize, value_len_hint: usize) {
        let name_len = name.map_or(name_len_hint, <[u8]>::len);
        let value_len = value.map_or(value_len_hint, <[u8]>::len);
        let size = ENTRY_OVERHEAD + name_len + value_len;
        // Could the entry be larger than the table, in which case the table
        // is emptied and the entry is not inserted?
        let upper = if name.is_none() { size + ASSUMED_MAX_NAME } else { size };
        if self.max_known {
            if size > self.max_size {
                self.entries.clear();
                self.size = 0;
                self.stored = 0;
                self.tail_unknown = false;
                return;
            }
            if upper > self.max_size {
                // Cannot tell: forget everything (numbering may be off).
                self.forget(false);
                return;
            }
        } else {
            let assumed = self.max_size.min(DEFAULT_TABLE_SIZE);
            if upper > assumed {
                self.forget(false);
                return;
            }
        }
        self.evict_to(self.max_size.saturating_sub(size));
        let mut data = Vec::with_capacity(name.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len));
        data.extend_from_slice(name.unwrap_or(&[]));
        let stored_name_len = data.len();
        data.extend_from_slice(value.unwrap_or(&[]));
        self.stored += data.len();
        self.size += size;
        self.entries.push_front(Entry {
            data: data.into_boxed_slice(),
            name_len: stored_name_len,
            name_known: name.is_some(),
            value_known: value.is_some(),
            size,
        });
        // Memory bound: drop the oldest entries (they become unknown).
        while self.stored > MAX_STORED_BYTES {
            match self.entries.pop_back() {
                Some(e) => {
                    self.size = self.size.saturating_sub(e.size);
                    self.stored = self.stored.saturating_sub(e.data.len());
                    self.tail_unknown = true;
                }
                None => break,
            }
        }
        self.check_tail_gone();
    }

    fn lookup(&self, index: usize) -> Option<(Src, Src)> {
        if index == 0 {
            return None;
        }
        if index <= STATIC_LEN {
            return Some((Src::Static(index - 1), Src::Static(index - 1)));
        }
        let i = index - STATIC_LEN - 1;
        match self.entries.get(i) {
            Some(e) => Some((
                if e.name_known { Src::Dynamic(i) } else { Src::Unknown },
                if e.value_known { Src::Dynamic(i) } else { Src::Unknown },
            )),
            None => Some((Src::Unknown, Src::Unknown)),
        }
    }

    fn resolve<'a>(&'a self, src: Src, name: bool, scratch: &'a [u8]) -> Option<&'a [u8]> {
        match src {
            Src::Static(i) => STATIC_TABLE.get(i).map(|(n, v)| if name { n.as_bytes() } else { v.as_bytes() }),
            Src::Dynamic(i) => self.entries.get(i).and_then(|e| if name { e.name() } else { e.value() }),
            Src::Scratch => Some(scratch),
            Src::Unknown => None,
        }
    }

    /// Decode one complete header block (the concatenated fragments of a
    /// HEADERS or PUSH_PROMISE frame and its CONTINUATIONs). `truncated`
    /// tells that the block's end was not captured: fields are decoded as
    /// far as the bytes go, and the table is forgotten afterwards since
    /// insertions from the lost part are unknown. Each decoded field is
    /// passed to `field(name, value)`.
    pub fn decode_block(&mut self, block: &[u8], truncated: bool, field: &mut dyn FnMut(&[u8], &[u8])) -> BlockOutcome {
        self.stats.blocks += 1;
        let mut outcome = BlockOutcome::default();
        let mut pos = 0usize;
        let mut error = false;
        let mut cut = false;
        while pos < block.len() {
            let rest = block.get(pos..).unwrap_or(&[]);
            let Some(&b) = rest.first() else { break };
            if b & 0x80 != 0 {
                // Indexed field.
                let (idx, n) = match decode_int(rest, 7) {
                    Ok(v) => v,
                    Err(IntError::Truncated) => {
                        cut = true;
                        break;
                    }
                    Err(IntError::Overflow) => {
                        error = true;
                        break;
                    }
                };
                pos += n;
                match self.lookup(idx as usize) {
                    None => {
                        error = true;
                        break;
                    }
                    Some((ns, vs)) => match (self.resolve(ns, true, &[]), self.resolve(vs, false, &[])) {
                        (Some(name), Some(value)) => {
                            field(name, value);
                            outcome.fields += 1;
                        }
                        _ => outcome.missing += 1,
                    },
                }
                continue;
            }
            if b & 0xe0 == 0x20 {
                // Dynamic table size update.
                let (size, n) = match decode_int(rest, 5) {
                    Ok(v) => v,
                    Err(IntError::Truncated) => {
                        cut = true;
                        break;
                    }
                    Err(IntError::Overflow) => {
                        error = true;
                        break;
                    }
                };
                pos += n;
                self.size_update(size);
                continue;
            }
            // Literal: with incremental indexing (01), without indexing
            // (0000) or never indexed (0001).
            let (indexing, prefix) = if b & 0xc0 == 0x40 { (true, 6) } else { (false, 4) };
            let (idx, n) = match decode_int(rest, prefix) {
                Ok(v) => v,
                Err(IntError::Truncated) => {
                    cut = true;
                    break;
                }
                Err(IntError::Overflow) => {
                    error = true;
                    break;
                }
            };
            pos += n;
            let mut name_src = Src::Scratch;
            let mut name_len_hint = 0usize;
            self.name_buf.clear();
            if idx == 0 {
                match read_string(block, &mut pos, &mut self.name_buf) {
                    StrRead::Ok => {}
                    StrRead::Bad(len) => {
                        error = true;
                        name_src = Src::Unknown;
                        name_len_hint = len;
                    }
                    StrRead::Truncated => {
                        cut = true;
                        break;
                    }
                    StrRead::Overflow => {
                        error = true;
                        break;
                    }
                }
            } else {
                match self.lookup(idx as usize) {
                    None => {
                        error = true;
                        break;
                    }
                    Some((ns, _)) => {
                        name_src = ns;
                        if let Src::Dynamic(i) = ns {
                            name_len_hint = self.entries.get(i).map_or(0, |e| e.name_len);
                        }
                    }
                }
            }
            self.value_buf.clear();
            let mut value_ok = true;
            let mut value_len_hint = 0usize;
            match read_string(block, &mut pos, &mut self.value_buf) {
                StrRead::Ok => {}
                StrRead::Bad(len) => {
                    error = true;
                    value_ok = false;
                    value_len_hint = len;
                }
                StrRead::Truncated => {
                    cut = true;
                    break;
                }
                StrRead::Overflow => {
                    error = true;
                    break;
                }
            }
            {
                let name = self.resolve(name_src, true, &self.name_buf);
                let value = if value_ok { Some(self.value_buf.as_slice()) } else { None };
                match (name, value) {
                    (Some(n), Some(v)) => {
                        field(n, v);
                        outcome.fields += 1;
                    }
                    _ => outcome.missing += 1,
                }
            }
            if indexing {
                // Copy a table-held name out before inserting into the table.
                let dyn_name: Option<Vec<u8>> = match name_src {
                    Src::Dynamic(i) => self.entries.get(i).and_then(Entry::name).map(<[u8]>::to_vec),
                    _ => None,
                };
                let name_buf = std::mem::take(&mut self.name_buf);
                let value_buf = std::mem::take(&mut self.value_buf);
                let name_final: Option<&[u8]> = match name_src {
                    Src::Scratch => Some(name_buf.as_slice()),
                    Src::Static(i) => STATIC_TABLE.get(i).map(|(n, _)| n.as_bytes()),
                    Src::Dynamic(_) => dyn_name.as_deref(),
                    Src::Unknown => None,
                };
                let value_final = if value_ok { Some(value_buf.as_slice()) } else { None };
                self.insert(name_final, value_final, name_len_hint, value_len_hint);
                self.name_buf = name_buf;
                self.value_buf = value_buf;
            }
        }
        if error {
            self.stats.errors += 1;
        }
        if truncated || cut || error {
            outcome.broken = true;
            self.stats.broken_blocks += 1;
            // Insertions in the part that was not decoded are unknown.
            self.forget(false);
        }
        self.stats.fields += u64::from(outcome.fields);
        self.stats.unknown_fields += u64::from(outcome.missing);
        if self.name_buf.capacity() > KEEP_SCRATCH {
            self.name_buf = Vec::new();
        }
        if self.value_buf.capacity() > KEEP_SCRATCH {
            self.value_buf = Vec::new();
        }
        outcome
    }
}

enum StrRead {
    Ok,
    /// The string's extent is known but its content could not be decoded
    /// (bad Huffman code, or too long); carries a length estimate.
    Bad(usize),
    Truncated,
    Overflow,
}

fn read_string(block: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> StrRead {
    let rest = block.get(*pos..).unwrap_or(&[]);
    let Some(&first) = rest.first() else {
        return StrRead::Truncated;
    };
    let huff = first & 0x80 != 0;
    let (len, n) = match decode_int(rest, 7) {
        Ok(v) => v,
        Err(IntError::Truncated) => return StrRead::Truncated,
        Err(IntError::Overflow) => return StrRead::Overflow,
    };
    let len = len as usize;
    let Some(bytes) = rest.get(n..n.saturating_add(len)) else {
        return StrRead::Truncated;
    };
    *pos += n + len;
    if len > MAX_STRING {
        return StrRead::Bad(len);
    }
    if huff {
        if huffman::decode(bytes, out).is_err() {
            out.clear();
            return StrRead::Bad(len);
        }
    } else {
        out.extend_from_slice(bytes);
    }
    StrRead::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn decode(d: &mut Decoder, block: &[u8]) -> (Vec<(String, String)>, BlockOutcome) {
        let mut fields = Vec::new();
        let o = d.decode_block(block, false, &mut |n, v| {
            fields.push((String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
        });
        (fields, o)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn table(d: &Decoder) -> Vec<(String, String)> {
        d.entries
            .iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(e.name().unwrap()).into_owned(),
                    String::from_utf8_lossy(e.value().unwrap()).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn integers_rfc7541_c1() {
        // C.1.1: 10 with a 5-bit prefix.
        assert_eq!(decode_int(&[0b0000_1010], 5), Ok((10, 1)));
        // C.1.2: 1337 with a 5-bit prefix.
        assert_eq!(decode_int(&[0b0001_1111, 0b1001_1010, 0b0000_1010], 5), Ok((1337, 3)));
        // C.1.3: 42 with an 8-bit prefix.
        assert_eq!(decode_int(&[42], 8), Ok((42, 1)));
        let mut out = Vec::new();
        encode_int(1337, 5, 0, &mut out);
        assert_eq!(out, vec![0x1f, 0x9a, 0x0a]);
    }

    #[test]
    fn integer_edge_cases() {
        assert_eq!(decode_int(&[], 5), Err(IntError::Truncated));
        assert_eq!(decode_int(&[0x1f], 5), Err(IntError::Truncated));
        assert_eq!(decode_int(&[0x1f, 0x80], 5), Err(IntError::Truncated));
        // Exactly the prefix maximum: 31 = 0x1f followed by 0.
        assert_eq!(decode_int(&[0x1f, 0x00], 5), Ok((31, 2)));
        // Bits above the prefix are ignored.
        assert_eq!(decode_int(&[0xea], 5), Ok((10, 1)));
        // u32::MAX round-trips; one more overflows.
        let mut out = Vec::new();
        encode_int(u32::MAX, 7, 0, &mut out);
        assert_eq!(decode_int(&out, 7), Ok((u32::MAX, out.len())));
        assert_eq!(decode_int(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0x0f], 7), Err(IntError::Overflow));
        // Endless continuation bytes are rejected, not looped over.
        let long = [0x7f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
        assert_eq!(decode_int(&long, 7), Err(IntError::Overflow));
        for v in [0u32, 1, 14, 15, 16, 127, 128, 255, 256, 16383, 16384, 1 << 21, 1 << 28] {
            for p in 1..=8u8 {
                let mut out = Vec::new();
                encode_int(v, p, 0, &mut out);
                assert_eq!(decode_int(&out, p), Ok((v, out.len())), "{v} prefix {p}");
            }
        }
    }

    #[test]
    fn rfc7541_c2_single_fields() {
        // C.2.1 literal with indexing.
        let mut d = Decoder::new();
        let (f, _) = decode(&mut d, &hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"));
        assert_eq!(f, pairs(&[("custom-key", "custom-header")]));
        assert_eq!(d.table_size(), 55);
        // C.2.2 literal without indexing.
        let mut d = Decoder::new();
        let (f, _) = decode(&mut d, &hex("040c 2f73 616d 706c 652f 7061 7468"));
        assert_eq!(f, pairs(&[(":path", "/sample/path")]));
        assert_eq!(d.known_entries(), 0);
        // C.2.3 never indexed.
        let mut d = Decoder::new();
        let (f, _) = decode(&mut d, &hex("1008 7061 7373 776f 7264 0673 6563 7265 74"));
        assert_eq!(f, pairs(&[("password", "secret")]));
        assert_eq!(d.known_entries(), 0);
        // C.2.4 indexed.
        let mut d = Decoder::new();
        let (f, _) = decode(&mut d, &hex("82"));
        assert_eq!(f, pairs(&[(":method", "GET")]));
    }

    fn run_sequence(
        blocks: &[&str],
        expected: &[&[(&str, &str)]],
        tables: &[&[(&str, &str)]],
        sizes: &[usize],
        max: Option<u32>,
    ) {
        let mut d = Decoder::new();
        if let Some(m) = max {
            d.size_update(m);
        }
        for i in 0..blocks.len() {
            let (f, o) = decode(&mut d, &hex(blocks[i]));
            assert!(!o.broken && o.missing == 0, "block {i}");
            assert_eq!(f, pairs(expected[i]), "block {i}");
            assert_eq!(table(&d), pairs(tables[i]), "table after block {i}");
            assert_eq!(d.table_size(), sizes[i], "size after block {i}");
            assert!(!d.table_unknown());
        }
    }

    const REQ1: &[(&str, &str)] =
        &[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")];
    const REQ2: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
    ];
    const REQ3: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ];

    #[test]
    fn rfc7541_c3_requests_without_huffman() {
        run_sequence(
            &[
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            &[REQ1, REQ2, REQ3],
            &[
                &[(":authority", "www.example.com")],
                &[("cache-control", "no-cache"), (":authority", "www.example.com")],
                &[("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com")],
            ],
            &[57, 110, 164],
            None,
        );
    }

    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        run_sequence(
            &[
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
            &[REQ1, REQ2, REQ3],
            &[
                &[(":authority", "www.example.com")],
                &[("cache-control", "no-cache"), (":authority", "www.example.com")],
                &[("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com")],
            ],
            &[57, 110, 164],
            None,
        );
    }

    const RESP1: &[(&str, &str)] = &[
        (":status", "302"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("location", "https://www.example.com"),
    ];
    const RESP2: &[(&str, &str)] = &[
        (":status", "307"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("location", "https://www.example.com"),
    ];
    const RESP3: &[(&str, &str)] = &[
        (":status", "200"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
        ("location", "https://www.example.com"),
        ("content-encoding", "gzip"),
        ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"),
    ];
    const T1: &[(&str, &str)] = &[
        ("location", "https://www.example.com"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("cache-control", "private"),
        (":status", "302"),
    ];
    const T2: &[(&str, &str)] = &[
        (":status", "307"),
        ("location", "https://www.example.com"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("cache-control", "private"),
    ];
    const T3: &[(&str, &str)] = &[
        ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"),
        ("content-encoding", "gzip"),
        ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
    ];

    #[test]
    fn rfc7541_c5_responses_without_huffman() {
        run_sequence(
            &[
                "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "4803 3330 37c1 c0bf",
                "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
            ],
            &[RESP1, RESP2, RESP3],
            &[T1, T2, T3],
            &[222, 222, 215],
            Some(256),
        );
    }

    #[test]
    fn rfc7541_c6_responses_with_huffman() {
        run_sequence(
            &[
                "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
                "4883 640e ffc1 c0bf",
                "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            ],
            &[RESP1, RESP2, RESP3],
            &[T1, T2, T3],
            &[222, 222, 215],
            Some(256),
        );
    }

    #[test]
    fn table_size_updates_evict() {
        let mut d = Decoder::new();
        decode(&mut d, &hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"));
        assert_eq!(d.known_entries(), 1);
        // Size update to 0 then back to 4096 at the start of a block.
        let (f, o) = decode(&mut d, &hex("203f e11f 82"));
        assert_eq!(f, pairs(&[(":method", "GET")]));
        assert!(!o.broken);
        assert_eq!(d.known_entries(), 0);
        assert_eq!(d.max_size(), 4096);
        // Reference to the evicted entry is unknown, not an error.
        let (f, o) = decode(&mut d, &hex("be 82"));
        assert_eq!(f, pairs(&[(":method", "GET")]));
        assert_eq!(o.missing, 1);
        // An entry larger than the table empties it without being inserted.
        let mut d = Decoder::new();
        decode(&mut d, &hex("3f 1f")); // max 62
        assert_eq!(d.max_size(), 62);
        decode(&mut d, &hex("4001 6101 62")); // a: b (size 34)
        assert_eq!(d.known_entries(), 1);
        decode(&mut d, &hex("4001 6301 64")); // c: d evicts a: b
        assert_eq!(table(&d), pairs(&[("c", "d")]));
        let mut big = hex("4001 651f");
        big.extend(std::iter::repeat_n(b'x', 31));
        decode(&mut d, &big);
        assert_eq!(d.known_entries(), 0);
        // SETTINGS lowering the limit shrinks the table at once.
        let mut d = Decoder::new();
        decode(&mut d, &hex("4001 6101 62 4001 6301 64"));
        d.set_settings_limit(40);
        assert_eq!(table(&d), pairs(&[("c", "d")]));
    }

    #[test]
    fn unknown_table_tolerance() {
        // Attached mid-stream: dynamic references are unknown, static ones
        // and literals work, and new insertions become addressable.
        let mut d = Decoder::new_unknown();
        let (f, o) = decode(&mut d, &hex("82 be 04 0c 2f73 616d 706c 652f 7061 7468"));
        assert_eq!(f, pairs(&[(":method", "GET"), (":path", "/sample/path")]));
        assert_eq!(o.missing, 1);
        assert!(d.table_unknown());
        // Insert x-a: 1 and reference it (62) plus an older unknown one (63).
        let (f, o) = decode(&mut d, &hex("4003 782d 6101 31 be bf"));
        assert_eq!(f, pairs(&[("x-a", "1"), ("x-a", "1")]));
        assert_eq!(o.missing, 1);
        // Literal with indexing whose name is an unknown dynamic entry: the
        // placeholder keeps numbering right.
        let (f, o) = decode(&mut d, &hex("7f 0a 01 32 be bf"));
        assert_eq!(o.missing, 2);
        assert_eq!(f, pairs(&[("x-a", "1")]));
        // A size update of zero makes the table fully known.
        let (_, o) = decode(&mut d, &hex("20 3f e11f 82"));
        assert!(!o.broken);
        assert!(!d.table_unknown());
    }

    #[test]
    fn truncated_and_broken_blocks_forget_the_table() {
        let mut d = Decoder::new();
        decode(&mut d, &hex("4001 6101 62"));
        assert_eq!(d.known_entries(), 1);
        // Truncated string: field lost, table forgotten.
        let (f, o) = decode(&mut d, &hex("82 4001 6305 64"));
        assert_eq!(f, pairs(&[(":method", "GET")]));
        assert!(o.broken);
        assert!(d.table_unknown());
        assert_eq!(d.known_entries(), 0);
        // Index 0 is an error.
        let mut d = Decoder::new();
        let (_, o) = decode(&mut d, &hex("80"));
        assert!(o.broken);
        assert_eq!(d.stats().errors, 1);
        // Bad Huffman: the field is missing, later fields still decode.
        let mut d = Decoder::new();
        let (f, o) = decode(&mut d, &hex("0001 61 81 00 82"));
        assert_eq!(f, pairs(&[(":method", "GET")]));
        assert_eq!(o.missing, 1);
        assert!(o.broken);
        // A block marked truncated by the caller forgets the table too.
        let mut d = Decoder::new();
        let mut n = 0;
        let o = d.decode_block(&hex("4001 6101 62"), true, &mut |_, _| n += 1);
        assert_eq!(n, 1);
        assert!(o.broken);
        assert!(d.table_unknown());
    }

    #[test]
    fn stored_bytes_are_bounded() {
        let mut d = Decoder::new();
        // Announce a huge table; insert many large entries.
        let mut block = Vec::new();
        encode_int(1 << 24, 5, 0x20, &mut block);
        decode(&mut d, &block);
        for i in 0..200u32 {
            let mut b = Vec::new();
            b.push(0x40);
            encode_int(4, 7, 0, &mut b);
            b.extend_from_slice(format!("k{:03}", i % 1000).as_bytes());
            encode_int(1000, 7, 0, &mut b);
            b.extend(std::iter::repeat_n(b'v', 1000));
            decode(&mut d, &b);
            assert!(d.heap_bytes() <= MAX_STORED_BYTES + 64 * 1024);
        }
        // The newest entry is still addressable.
        let (f, _) = decode(&mut d, &[0xbe]);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].0, "k199");
    }
}
