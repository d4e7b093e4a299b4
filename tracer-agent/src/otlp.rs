//! Direct OTLP protobuf encoding of spans: bytes are written straight from
//! our span model into one buffer, with no intermediate message objects.
//! Field numbers follow `opentelemetry/proto/{trace,common,resource}/v1` and
//! `collector/trace/v1` (ExportTraceServiceRequest).

use crate::span::{Span, SpanKind, Status, Value};

const WIRE_VARINT: u32 = 0;
const WIRE_FIXED64: u32 = 1;
const WIRE_LEN: u32 = 2;
const WIRE_FIXED32: u32 = 5;

/// Keys of the length-delimited fields 1 and 2.
const KEY_1_LEN: u8 = (1 << 3) | WIRE_LEN as u8;
const KEY_2_LEN: u8 = (2 << 3) | WIRE_LEN as u8;

/// Schema of the semantic conventions the spans follow.
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.37.0";
const SCOPE_NAME: &str = "tracer-agent";
const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

#[inline]
fn varint_len(v: u64) -> usize {
    if v < 0x80 {
        // Most lengths and keys.
        1
    } else {
        // Each byte carries 7 bits.
        (64 - v.leading_zeros() as usize).div_ceil(7)
    }
}

#[inline]
fn key_len(field: u32) -> usize {
    varint_len(u64::from(field << 3))
}

/// Size of a length-delimited field holding `len` bytes.
#[inline]
fn len_field(field: u32, len: usize) -> usize {
    key_len(field) + varint_len(len as u64) + len
}

/// A cursor over bytes already sized to the exact encoded length, so that
/// each write is a store rather than a growable-buffer push. The lengths are
/// computed by the `*_len` functions below; a mismatch is a bug and panics on
/// the bounds check instead of producing a corrupt message.
struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    #[inline]
    fn byte(&mut self, b: u8) {
        self.buf[self.pos] = b;
        self.pos += 1;
    }

    #[inline]
    fn raw(&mut self, b: &[u8]) {
        let end = self.pos + b.len();
        let dst = &mut self.buf[self.pos..end];
        // Most strings here are short: fixed-size moves instead of a call.
        match b.len() {
            0 => {}
            1..=3 => {
                dst[0] = b[0];
                dst[b.len() / 2] = b[b.len() / 2];
                dst[b.len() - 1] = b[b.len() - 1];
            }
            4..=7 => copy_ends::<4>(dst, b),
            8..=15 => copy_ends::<8>(dst, b),
            16..=32 => copy_ends::<16>(dst, b),
            _ => dst.copy_from_slice(b),
        }
        self.pos = end;
    }

    #[inline]
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte((v as u8) | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    #[inline]
    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from((field << 3) | wire));
    }

    /// The key and length of a length-delimited field whose body follows.
    #[inline]
    fn len_key(&mut self, field: u32, len: usize) {
        self.key(field, WIRE_LEN);
        self.varint(len as u64);
    }

    #[inline]
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.len_key(field, b.len());
        self.raw(b);
    }

    /// Four bytes at once.
    #[inline]
    fn quad(&mut self, b: [u8; 4]) {
        let end = self.pos + 4;
        self.buf[self.pos..end].copy_from_slice(&b);
        self.pos = end;
    }

    #[inline(always)]
    fn key_value(&mut self, field: u32, k: &str, v: &Value) {
        // When every key and length of the field fits in a byte (the usual
        // case: keys, lengths and the whole field under 128 bytes), they are
        // written four at a time.
        let short = field < 16 && k.len() < 0x80;
        match v {
            Value::Str(_) | Value::Shared(_) => {
                let text = v.as_str().unwrap_or("");
                // Key field, AnyValue field, string field: two bytes each.
                let kv_len = k.len() + text.len() + 6;
                if short && kv_len < 0x80 {
                    self.quad([((field << 3) | WIRE_LEN) as u8, kv_len as u8, KEY_1_LEN, k.len() as u8]);
                    self.raw(k.as_bytes());
                    self.quad([KEY_2_LEN, (text.len() + 2) as u8, KEY_1_LEN, text.len() as u8]);
                    self.raw(text.as_bytes());
                    return;
                }
            }
            Value::Int(i) => {
                let any_len = 1 + varint_len(*i as u64);
                let kv_len = k.len() + any_len + 4;
                if short && kv_len < 0x80 {
                    self.quad([((field << 3) | WIRE_LEN) as u8, kv_len as u8, KEY_1_LEN, k.len() as u8]);
                    self.raw(k.as_bytes());
                    self.quad([KEY_2_LEN, any_len as u8, (3 << 3) | WIRE_VARINT as u8, 0]);
                    // The fourth byte is overwritten by the varint.
                    self.pos -= 1;
                    self.varint(*i as u64);
                    return;
                }
            }
        }
        let any_len = any_value_len(v);
        let kv_len = len_field(1, k.len()) + len_field(2, any_len);
        self.len_key(field, kv_len);
        self.bytes(1, k.as_bytes());
        self.len_key(2, any_len);
        match v {
            Value::Str(s) => self.bytes(1, s.as_bytes()),
            Value::Shared(s) => self.bytes(1, s.as_bytes()),
            Value::Int(i) => {
                self.key(3, WIRE_VARINT);
                self.varint(*i as u64);
            }
        }
    }

    /// The fields of a `Span` message.
    #[inline]
    fn span_fields(&mut self, s: &Span) {
        self.bytes(1, &s.trace_id);
        self.bytes(2, &s.span_id);
        if let Some(p) = &s.parent_span_id {
            self.bytes(4, p);
        }
        self.bytes(5, s.name.as_bytes());
        self.key(6, WIRE_VARINT);
        self.byte(match s.kind {
            SpanKind::Server => 2,
            SpanKind::Client => 3,
        });
        self.key(7, WIRE_FIXED64);
        self.raw(&s.start_unix_ns.to_le_bytes());
        self.key(8, WIRE_FIXED64);
        self.raw(&s.end_unix_ns.to_le_bytes());
        for (k, v) in &s.attributes {
            self.key_value(9, k, v);
        }
        for (trace_id, span_id) in &s.links {
            self.len_key(13, LINK_LEN);
            self.bytes(1, trace_id);
            self.bytes(2, span_id);
        }
        self.len_key(15, status_len(s));
        if s.status == Status::Error {
            self.key(3, WIRE_VARINT);
            self.byte(2); // STATUS_CODE_ERROR
        }
        // Trace flags (sampled bit) and "is_remote is known" (0x100); the parent is remote when set.
        let mut flags: u32 = u32::from(s.sampled) | 0x100;
        if s.parent_span_id.is_some() && s.parent_remote {
            flags |= 0x200;
        }
        self.key(16, WIRE_FIXED32);
        self.raw(&flags.to_le_bytes());
    }
}

/// Copies `src` to `dst` (of the same length, between `N` and `2 * N`) as its
/// first and its last `N` bytes, which overlap unless the length is `2 * N`.
#[inline(always)]
fn copy_ends<const N: usize>(dst: &mut [u8], src: &[u8]) {
    if let (Some(d), Some(s)) = (dst.first_chunk_mut::<N>(), src.first_chunk::<N>()) {
        *d = *s;
    }
    if let (Some(d), Some(s)) = (dst.last_chunk_mut::<N>(), src.last_chunk::<N>()) {
        *d = *s;
    }
}

#[inline]
fn any_value_len(v: &Value) -> usize {
    match v {
        Value::Str(s) => len_field(1, s.len()),
        Value::Shared(s) => len_field(1, s.len()),
        Value::Int(i) => key_len(3) + varint_len(*i as u64),
    }
}

#[inline]
fn key_value_len(k: &str, v: &Value) -> usize {
    len_field(1, k.len()) + len_field(2, any_value_len(v))
}

fn status_len(s: &Span) -> usize {
    match s.status {
        Status::Unset => 0,
        Status::Error => key_len(3) + 1,
    }
}

/// A `Span.Link` with a trace id and a span id.
const LINK_LEN: usize = 2 + 16 + 2 + 8;

fn span_len(s: &Span) -> usize {
    let mut n = len_field(1, 16) + len_field(2, 8);
    if s.parent_span_id.is_some() {
        n += len_field(4, 8);
    }
    n += len_field(5, s.name.len());
    n += key_len(6) + 1; // kind
    n += 2 * (key_len(7) + 8); // start, end
    for (k, v) in &s.attributes {
        n += len_field(9, key_value_len(k, v));
    }
    n += s.links.len() * len_field(13, LINK_LEN);
    n += len_field(15, status_len(s));
    n += key_len(16) + 4; // flags
    n
}

fn scope_len() -> usize {
    len_field(1, SCOPE_NAME.len()) + len_field(2, SCOPE_VERSION.len())
}

/// Appends a span as a `ScopeSpans.spans` field (key and length included),
/// ready to be placed in a `ResourceSpans` by [`put_resource_spans`].
/// At least the encoded size of a span's fields, found without working out
/// each varint: every key and length is counted at its widest for a field of
/// up to 2 MiB (three bytes), every integer at ten.
fn span_len_bound(s: &Span) -> usize {
    // Ids, kind, times, status and flags with their keys; the name's key.
    let mut n = 18 + 10 + 10 + 2 + 18 + 8 + 6 + 4 + s.name.len();
    for (k, v) in &s.attributes {
        n += k.len() + v.as_str().map_or(10, str::len) + 4 * 4;
    }
    n + s.links.len() * (LINK_LEN + 2)
}

/// Append a span as a `ScopeSpans.spans` field. The fields are written in
/// one pass after room for the field's key and a two-byte length (spans of
/// 128 bytes to 16 KiB); other lengths move the fields once.
pub fn put_span(out: &mut Vec<u8>, s: &Span) {
    const HEAD: usize = 3;
    let start = out.len();
    let bound = span_len_bound(s);
    out.resize(start + HEAD + bound, 0);
    let mut w = Writer { buf: &mut out[start + HEAD..], pos: 0 };
    w.span_fields(s);
    let len = w.pos;
    debug_assert_eq!(len, span_len(s));
    let head = key_len(2) + varint_len(len as u64);
    if head != HEAD {
        out.copy_within(start + HEAD..start + HEAD + len, start + head);
    }
    out.truncate(start + head + len);
    let mut w = Writer { buf: &mut out[start..start + head], pos: 0 };
    w.len_key(2, len);
}

/// Appends one `ResourceSpans` (field 1 of ExportTraceServiceRequest) for
/// spans of one resource, each encoded by [`put_span`].
pub fn put_resource_spans<'a>(
    out: &mut Vec<u8>,
    resource: &[(String, Value)],
    spans: impl Iterator<Item = &'a [u8]> + Clone,
) {
    let res_len: usize = resource.iter().map(|(k, v)| len_field(1, key_value_len(k, v))).sum();
    let spans_len: usize = spans.clone().map(<[u8]>::len).sum();
    let scope_spans_len = len_field(1, scope_len()) + spans_len + len_field(3, SCHEMA_URL.len());
    let rs_len = len_field(1, res_len) + len_field(2, scope_spans_len);
    // What comes before the spans: the key and length of the ResourceSpans,
    // the Resource, the key and length of the ScopeSpans, the scope.
    let head_len = key_len(1)
        + varint_len(rs_len as u64)
        + len_field(1, res_len)
        + key_len(2)
        + varint_len(scope_spans_len as u64)
        + len_field(1, scope_len());
    let start = out.len();
    out.reserve(len_field(1, rs_len));
    out.resize(start + head_len, 0);
    let mut w = Writer { buf: &mut out[start..], pos: 0 };
    w.len_key(1, rs_len);
    // Resource
    w.len_key(1, res_len);
    for (k, v) in resource {
        w.key_value(1, k, v);
    }
    // ScopeSpans
    w.len_key(2, scope_spans_len);
    w.len_key(1, scope_len());
    w.bytes(1, SCOPE_NAME.as_bytes());
    w.bytes(2, SCOPE_VERSION.as_bytes());
    debug_assert_eq!(w.pos, w.buf.len());
    for span in spans {
        out.extend_from_slice(span);
    }
    let start = out.len();
    out.resize(start + len_field(3, SCHEMA_URL.len()), 0);
    Writer { buf: &mut out[start..], pos: 0 }.bytes(3, SCHEMA_URL.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use prost::Message;
    use std::sync::Arc;

    fn span(i: u8, parent: bool, error: bool) -> Span {
        Span {
            trace_id: [i; 16],
            span_id: [i + 1; 8],
            parent_span_id: parent.then_some([9; 8]),
            sampled: true,
            name: format!("GET /users/{{id}}{i}"),
            kind: if i.is_multiple_of(2) { SpanKind::Server } else { SpanKind::Client },
            start_unix_ns: 1_700_000_000_000_000_000 + u64::from(i),
            end_unix_ns: 1_700_000_000_000_500_000,
            attributes: vec![
                ("http.request.method", Value::Str("GET".into())),
                ("http.response.status_code", Value::Int(200 + i64::from(i))),
                ("server.port", Value::Int(-1)),
                ("url.path", Value::Str("x".repeat(300).into())),
            ],
            status: if error { Status::Error } else { Status::Unset },
            pid: 1,
            comm: "nginx".into(),
            server_port: None,
            links: if i == 3 { vec![([5; 16], [6; 8]), ([7; 16], [8; 8])] } else { Vec::new() },
            parent_remote: true,
        }
    }

    #[test]
    fn lengths_and_copies() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut buf = [0u8; 10];
            let mut w = Writer { buf: &mut buf, pos: 0 };
            w.varint(v);
            assert_eq!(w.pos, varint_len(v), "{v}");
        }
        let src: Vec<u8> = (1..=80).collect();
        for n in 0..=src.len() {
            let mut buf = vec![0u8; n + 2];
            let mut w = Writer { buf: &mut buf, pos: 1 };
            w.raw(&src[..n]);
            assert_eq!(w.pos, n + 1);
            assert_eq!(&buf[1..n + 1], &src[..n]);
            assert_eq!((buf[0], buf[n + 1]), (0, 0));
        }
    }

    /// Spans whose length takes one, two and three bytes, attributes with
    /// short and long keys and values, large and negative integers.
    #[test]
    fn spans_of_every_length_class_decode() {
        use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
        for (name_len, attrs) in [(1usize, 0usize), (3, 1), (60, 2), (200, 15), (300, 60), (20_000, 3)] {
            let mut s = span(1, attrs % 2 == 0, false);
            s.name = "n".repeat(name_len);
            s.attributes = (0..attrs)
                .map(|i| {
                    let key: &'static str = ["k", "http.response.status_code", "a.key.of.a.hundred.and.thirty.bytes.a.key.of.a.hundred.and.thirty.bytes.a.key.of.a.hundred.and.thirty.bytes.a.key.of.a.hundred.and.30"][i % 3];
                    let value = match i % 4 {
                        0 => Value::Int(i as i64 * 1_000_003),
                        1 => Value::Int(-(i as i64)),
                        2 => Value::Str("v".repeat(i * 7).into()),
                        _ => Value::Shared(Arc::from("x".repeat(i * 40).as_str())),
                    };
                    (key, value)
                })
                .collect();
            let mut b = vec![0xee];
            put_span(&mut b, &s);
            assert_eq!(b.len() - 1, len_field(2, span_len(&s)), "name {name_len}, {attrs} attributes");
            // A ScopeSpans message holding the one span field.
            let got = opentelemetry_proto::tonic::trace::v1::ScopeSpans::decode(&b[1..]).unwrap();
            let got: &ProtoSpan = &got.spans[0];
            assert_eq!(got.name, s.name);
            assert_eq!(got.attributes.len(), attrs);
            for (g, (k, v)) in got.attributes.iter().zip(&s.attributes) {
                assert_eq!(g.key, *k);
                let want = match v {
                    Value::Int(i) => any_value::Value::IntValue(*i),
                    other => any_value::Value::StringValue(other.as_str().unwrap().to_string()),
                };
                assert_eq!(g.value.as_ref().unwrap().value, Some(want));
            }
        }
    }

    #[test]
    fn decodes_with_the_reference_types() {
        let spans: Vec<Span> = (0..5).map(|i| span(i, i % 2 == 1, i == 3)).collect();
        let resource =
            vec![("service.name".to_string(), Value::Str("nginx".into())), ("process.pid".to_string(), Value::Int(42))];
        let encoded: Vec<Vec<u8>> = spans
            .iter()
            .map(|s| {
                let mut b = Vec::new();
                put_span(&mut b, s);
                b
            })
            .collect();
        let mut buf = Vec::new();
        put_resource_spans(&mut buf, &resource, encoded.iter().map(Vec::as_slice));
        put_resource_spans(&mut buf, &resource, encoded[..1].iter().map(Vec::as_slice));
        let req = ExportTraceServiceRequest::decode(buf.as_slice()).unwrap();
        assert_eq!(req.resource_spans.len(), 2);
        let rs = &req.resource_spans[0];
        let attrs = &rs.resource.as_ref().unwrap().attributes;
        assert_eq!(attrs[0].key, "service.name");
        assert_eq!(attrs[1].value.as_ref().unwrap().value, Some(any_value::Value::IntValue(42)));
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "tracer-agent");
        assert_eq!(ss.schema_url, SCHEMA_URL);
        assert_eq!(ss.spans.len(), 5);
        for (got, want) in ss.spans.iter().zip(&spans) {
            assert_eq!(got.trace_id, want.trace_id);
            assert_eq!(got.span_id, want.span_id);
            assert_eq!(got.parent_span_id, want.parent_span_id.map(|p| p.to_vec()).unwrap_or_default());
            assert_eq!(got.name, want.name);
            assert_eq!(got.kind, if want.kind == SpanKind::Server { 2 } else { 3 });
            assert_eq!(got.start_time_unix_nano, want.start_unix_ns);
            assert_eq!(got.end_time_unix_nano, want.end_unix_ns);
            assert_eq!(got.attributes.len(), 4);
            assert_eq!(got.attributes[2].value.as_ref().unwrap().value, Some(any_value::Value::IntValue(-1)));
            assert_eq!(got.status.as_ref().unwrap().code, if want.status == Status::Error { 2 } else { 0 });
            assert_eq!(got.flags & 0xff, 1);
            assert_eq!(got.flags & 0x200 != 0, want.parent_span_id.is_some());
            let links: Vec<(Vec<u8>, Vec<u8>)> =
                got.links.iter().map(|l| (l.trace_id.clone(), l.span_id.clone())).collect();
            let want_links: Vec<(Vec<u8>, Vec<u8>)> =
                want.links.iter().map(|(t, s)| (t.to_vec(), s.to_vec())).collect();
            assert_eq!(links, want_links);
        }
        assert_eq!(ss.spans[3].links.len(), 2);
        assert_eq!(req.resource_spans[1].scope_spans[0].spans.len(), 1);
    }
}
