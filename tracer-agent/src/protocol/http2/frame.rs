//! HTTP/2 frame headers (RFC 9113, section 4.1) and plausibility checks used
//! to recognise HTTP/2 traffic and to resynchronise after a capture gap.

/// Size of a frame header.
pub const HEADER_LEN: usize = 9;

/// Largest frame payload the protocol can express (2^24 - 1).
pub const MAX_FRAME_LEN: u32 = (1 << 24) - 1;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: u32,
    pub kind: u8,
    pub flags: u8,
    /// Stream identifier (reserved bit cleared).
    pub stream: u32,
    /// The reserved bit was set.
    pub reserved: bool,
}

impl FrameHeader {
    /// Decode the 9-byte header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Option<FrameHeader> {
        let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        let sid = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
        Some(FrameHeader {
            length: u32::from_be_bytes([0, h[0], h[1], h[2]]),
            kind: h[3],
            flags: h[4],
            stream: sid & 0x7fff_ffff,
            reserved: sid & 0x8000_0000 != 0,
        })
    }

    /// Encode (tests and fixture builders).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let l = self.length.min(MAX_FRAME_LEN).to_be_bytes();
        out.extend_from_slice(&[l[1], l[2], l[3], self.kind, self.flags]);
        let sid = self.stream | if self.reserved { 0x8000_0000 } else { 0 };
        out.extend_from_slice(&sid.to_be_bytes());
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Which endpoint sent a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

/// Flags defined for a frame type.
fn known_flags(kind: u8) -> u8 {
    match kind {
        DATA => FLAG_END_STREAM | FLAG_PADDED,
        HEADERS => FLAG_END_STREAM | FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY,
        SETTINGS | PING => FLAG_ACK,
        PUSH_PROMISE => FLAG_END_HEADERS | FLAG_PADDED,
        CONTINUATION => FLAG_END_HEADERS,
        _ => 0,
    }
}

/// Is `h` a plausible frame header for traffic sent by `sender`?
///
/// Strict on purpose (it decides whether arbitrary bytes are HTTP/2): only
/// the ten frame types of RFC 9113, only defined flags, reserved bit clear,
/// stream id zero exactly for connection-level frames, fixed lengths where
/// the type has one, and client-initiated (odd) streams for HEADERS and
/// DATA.
pub fn plausible(h: &FrameHeader, sender: Sender) -> bool {
    if h.reserved || h.kind > CONTINUATION || h.flags & !known_flags(h.kind) != 0 {
        return false;
    }
    let len = h.length;
    match h.kind {
        DATA | HEADERS => {
            if h.stream == 0 || h.stream.is_multiple_of(2) {
                return false;
            }
            if h.has(FLAG_PADDED) && len == 0 {
                return false;
            }
            if h.kind == HEADERS {
                // A header block is never empty in practice, and PRIORITY
                // adds five bytes.
                let min = 1 + u32::from(h.has(FLAG_PADDED)) + if h.has(FLAG_PRIORITY) { 5 } else { 0 };
                if len < min {
                    return false;
                }
            }
            true
        }
        PRIORITY => h.stream != 0 && len == 5,
        RST_STREAM => h.stream != 0 && len == 4,
        SETTINGS => h.stream == 0 && len.is_multiple_of(6) && (!h.has(FLAG_ACK) || len == 0) && len <= 6 * 64,
        PUSH_PROMISE => sender == Sender::Server && h.stream != 0 && len >= 4,
        PING => h.stream == 0 && len == 8,
        GOAWAY => h.stream == 0 && len >= 8,
        WINDOW_UPDATE => len == 4,
        CONTINUATION => h.stream != 0 && len > 0,
        _ => false,
    }
}

/// Is `h` acceptable while in sync? Looser than [`plausible`] (undefined
/// flags are ignored, extension frame types are skipped, pushed streams are
/// even), but rejects what no peer sends: the reserved bit, stream id zero
/// where a stream is required (and the reverse), wrong fixed lengths, and
/// large frames of unknown type. A failure means framing was lost.
pub fn sane(h: &FrameHeader) -> bool {
    if h.reserved {
        return false;
    }
    let len = h.length;
    match h.kind {
        DATA | HEADERS | CONTINUATION | PUSH_PROMISE => h.stream != 0,
        PRIORITY => h.stream != 0 && len == 5,
        RST_STREAM => h.stream != 0 && len == 4,
        SETTINGS => h.stream == 0 && len.is_multiple_of(6),
        PING => h.stream == 0 && len == 8,
        GOAWAY => h.stream == 0 && len >= 8,
        WINDOW_UPDATE => len == 4,
        _ => len <= 16_384,
    }
}

/// Walk the frame headers that start `buf`: the first must be plausible,
/// and so must every following one whose header lies inside `buf`. Returns
/// the number of plausible headers seen (0 when the start is implausible or
/// shorter than a header).
pub fn plausible_chain(buf: &[u8], sender: Sender, max_frames: usize) -> usize {
    let mut pos = 0usize;
    let mut seen = 0usize;
    while seen < max_frames {
        let Some(h) = buf.get(pos..).and_then(FrameHeader::parse) else {
            break;
        };
        if !plausible(&h, sender) {
            return 0;
        }
        seen += 1;
        pos = pos.saturating_add(HEADER_LEN).saturating_add(h.length as usize);
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(length: u32, kind: u8, flags: u8, stream: u32) -> Vec<u8> {
        let mut v = Vec::new();
        FrameHeader { length, kind, flags, stream, reserved: false }.encode(&mut v);
        v
    }

    #[test]
    fn parse_round_trip() {
        let v = hdr(0x123456, HEADERS, 0x25, 0x7fff_ffff);
        assert_eq!(v, [0x12, 0x34, 0x56, 1, 0x25, 0x7f, 0xff, 0xff, 0xff]);
        let h = FrameHeader::parse(&v).unwrap();
        assert_eq!((h.length, h.kind, h.flags, h.stream, h.reserved), (0x123456, 1, 0x25, 0x7fff_ffff, false));
        assert!(FrameHeader::parse(&v[..8]).is_none());
        let h = FrameHeader::parse(&[0, 0, 0, 0, 0, 0x80, 0, 0, 1]).unwrap();
        assert!(h.reserved);
        assert_eq!(h.stream, 1);
    }

    #[test]
    fn plausibility_rules() {
        let p = |v: Vec<u8>, s| plausible(&FrameHeader::parse(&v).unwrap(), s);
        assert!(p(hdr(18, SETTINGS, 0, 0), Sender::Server));
        assert!(!p(hdr(17, SETTINGS, 0, 0), Sender::Server));
        assert!(!p(hdr(6, SETTINGS, FLAG_ACK, 0), Sender::Server));
        assert!(!p(hdr(6, SETTINGS, 0, 1), Sender::Server));
        assert!(p(hdr(30, HEADERS, 0x25, 1), Sender::Client));
        assert!(!p(hdr(30, HEADERS, 0x25, 2), Sender::Client));
        assert!(!p(hdr(30, HEADERS, 0x40, 1), Sender::Client));
        assert!(!p(hdr(4, HEADERS, FLAG_PRIORITY, 1), Sender::Client));
        assert!(p(hdr(0, DATA, FLAG_END_STREAM, 3), Sender::Client));
        assert!(!p(hdr(0, DATA, FLAG_PADDED, 3), Sender::Client));
        assert!(!p(hdr(0, DATA, 0, 0), Sender::Client));
        assert!(p(hdr(8, PING, 1, 0), Sender::Client));
        assert!(!p(hdr(9, PING, 0, 0), Sender::Client));
        assert!(p(hdr(4, WINDOW_UPDATE, 0, 0), Sender::Client));
        assert!(p(hdr(4, RST_STREAM, 0, 5), Sender::Client));
        assert!(!p(hdr(4, RST_STREAM, 0, 0), Sender::Client));
        assert!(p(hdr(8, GOAWAY, 0, 0), Sender::Server));
        assert!(!p(hdr(4, PUSH_PROMISE, 4, 1), Sender::Client));
        assert!(!p(hdr(4, 10, 0, 0), Sender::Client));
        let sane_of = |v: Vec<u8>| sane(&FrameHeader::parse(&v).unwrap());
        assert!(sane_of(hdr(30, HEADERS, 0xff, 2)));
        assert!(sane_of(hdr(100, 0x10, 0, 0)));
        assert!(!sane_of(hdr(100_000, 0x61, 0, 0)));
        assert!(!sane_of(hdr(30, HEADERS, 0, 0)));
        assert!(!sane_of(hdr(7, SETTINGS, 0, 0)));
        // Chains: the second header must be plausible too.
        let mut two = hdr(0, SETTINGS, FLAG_ACK, 0);
        two.extend(hdr(4, WINDOW_UPDATE, 0, 0));
        assert_eq!(plausible_chain(&two, Sender::Server, 8), 2);
        two.extend([0, 0, 0, 1]);
        two.extend([0xff; 9]);
        assert_eq!(plausible_chain(&two, Sender::Server, 8), 0);
        assert_eq!(plausible_chain(&two[..5], Sender::Server, 8), 0);
    }
}
