//! Decoding raw ring-buffer records into events.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracer_common::{EventHeader, EventKind, SockInfo, AF_INET, HEADER_SIZE};

/// One kernel event, borrowing its payload from the record.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    pub kind: EventKind,
    pub header: EventHeader,
    pub payload: &'a [u8],
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record shorter than an event header ({0} bytes)")]
    Short(usize),
    #[error("unknown event kind {0}")]
    Kind(u32),
    #[error("payload length {0} exceeds the record")]
    Payload(u32),
}

/// Decode a record written by the probes.
pub fn decode(rec: &[u8]) -> Result<Event<'_>, DecodeError> {
    if rec.len() < HEADER_SIZE {
        return Err(DecodeError::Short(rec.len()));
    }
    // SAFETY: EventHeader is plain old data of HEADER_SIZE bytes, and any bit
    // pattern is a valid value; read_unaligned copes with the record alignment.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(rec.as_ptr().cast()) };
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::Kind(header.kind))?;
    let end = HEADER_SIZE + header.captured as usize;
    let payload = rec.get(HEADER_SIZE..end).ok_or(DecodeError::Payload(header.captured))?;
    Ok(Event { kind, header, payload })
}

/// The ids of a `Context` event's payload.
pub fn carrier_ids(payload: &[u8]) -> Option<tracer_common::CarrierIds> {
    let b = payload.get(..32)?;
    let mut ids = tracer_common::CarrierIds::default();
    ids.trace_id.copy_from_slice(&b[..16]);
    ids.span_id.copy_from_slice(&b[16..24]);
    ids.parent_id.copy_from_slice(&b[24..32]);
    Some(ids)
}

/// Encode an event the way the probes lay it out (used by tests and replay).
pub fn encode(header: &EventHeader, payload: &[u8], out: &mut Vec<u8>) {
    let mut h = *header;
    h.captured = payload.len() as u32;
    // SAFETY: EventHeader is repr(C) plain old data without padding holes.
    let bytes = unsafe { std::slice::from_raw_parts((&h as *const EventHeader).cast::<u8>(), HEADER_SIZE) };
    out.extend_from_slice(bytes);
    out.extend_from_slice(payload);
}

pub fn addr(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        let v6 = Ipv6Addr::from(*raw);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

pub fn local_addr(s: &SockInfo) -> IpAddr {
    addr(s.family, &s.laddr)
}

pub fn remote_addr(s: &SockInfo) -> IpAddr {
    addr(s.family, &s.raddr)
}

/// Process name from a NUL-padded comm.
pub fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> EventHeader {
        EventHeader {
            kind: EventKind::Recv as u32,
            syscall: 1,
            _pad0: 0,
            ts_enter: 1,
            ts_exit: 2,
            pid: 3,
            tid: 4,
            fd: 5,
            captured: 0,
            ret: 6,
            comm: *b"nginx\0\0\0\0\0\0\0\0\0\0\0",
            sock: SockInfo::zeroed(),
            goroutine: 7,
        }
    }

    #[test]
    fn roundtrip() {
        let mut buf = Vec::new();
        encode(&header(), b"GET / HTTP/1.1\r\n", &mut buf);
        let ev = decode(&buf).unwrap();
        assert_eq!(ev.kind, EventKind::Recv);
        assert_eq!(ev.payload, b"GET / HTTP/1.1\r\n");
        assert_eq!(comm(&ev.header.comm), "nginx");
    }

    #[test]
    fn bad_records_are_errors() {
        assert_eq!(decode(&[0u8; 10]).unwrap_err(), DecodeError::Short(10));
        let mut buf = Vec::new();
        encode(&header(), b"abc", &mut buf);
        buf.truncate(buf.len() - 1);
        assert!(matches!(decode(&buf), Err(DecodeError::Payload(3))));
        let mut h = header();
        h.kind = 99;
        let mut buf = Vec::new();
        encode(&h, b"", &mut buf);
        assert_eq!(decode(&buf).unwrap_err(), DecodeError::Kind(99));
    }

    #[test]
    fn v4_mapped_addresses_print_as_v4() {
        let mut raw = [0u8; 16];
        raw[10] = 0xff;
        raw[11] = 0xff;
        raw[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(addr(tracer_common::AF_INET6, &raw).to_string(), "127.0.0.1");
    }
}
