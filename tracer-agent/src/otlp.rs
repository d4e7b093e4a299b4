//! Direct OTLP protobuf encoding of spans: bytes are written straight from
//! our span model into one buffer, with no intermediate message objects.
//! Field numbers follow `opentelemetry/proto/{trace,common,resource}/v1` and
//! `collector/trace/v1` (ExportTraceServiceRequest).

use crate::span::{Span, SpanKind, Status, Value};

const WIRE_VARINT: u32 = 0;
const WIRE_FIXED64: u32 = 1;
const WIRE_LEN: u32 = 2;
const WIRE_FIXED32: u32 = 5;

/// Schema of the semantic conventions the spans follow.
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.37.0";
const SCOPE_NAME: &str = "tracer-agent";
const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from((field << 3) | wire));
}

fn key_len(field: u32) -> usize {
    varint_len(u64::from(field << 3))
}

/// Size of a length-delimited field holding `len` bytes.
fn len_field(field: u32, len: usize) -> usize {
    key_len(field) + varint_len(len as u64) + len
}

fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn any_value_len(v: &Value) -> usize {
    match v {
        Value::Str(s) => len_field(1, s.len()),
        Value::Shared(s) => len_field(1, s.len()),
        Value::Int(i) => key_len(3) + varint_len(*i as u64),
    }
}

fn key_value_len(k: &str, v: &Value) -> usize {
    len_field(1, k.len()) + len_field(2, any_value_len(v))
}

fn put_key_value(out: &mut Vec<u8>, field: u32, k: &str, v: &Value) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, key_value_len(k, v) as u64);
    put_bytes(out, 1, k.as_bytes());
    put_key(out, 2, WIRE_LEN);
    put_varint(out, any_value_len(v) as u64);
    match v {
        Value::Str(s) => put_bytes(out, 1, s.as_bytes()),
        Value::Shared(s) => put_bytes(out, 1, s.as_bytes()),
        Value::Int(i) => {
            put_key(out, 3, WIRE_VARINT);
            put_varint(out, *i as u64);
        }
    }
}

fn status_len(s: &Span) -> usize {
    match s.status {
        Status::Unset => 0,
        Status::Error => key_len(3) + 1,
    }
}

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
    n += len_field(15, status_len(s));
    n += key_len(16) + 4; // flags
    n
}

fn put_span(out: &mut Vec<u8>, s: &Span) {
    put_key(out, 2, WIRE_LEN); // ScopeSpans.spans
    put_varint(out, span_len(s) as u64);
    put_bytes(out, 1, &s.trace_id);
    put_bytes(out, 2, &s.span_id);
    if let Some(p) = &s.parent_span_id {
        put_bytes(out, 4, p);
    }
    put_bytes(out, 5, s.name.as_bytes());
    put_key(out, 6, WIRE_VARINT);
    out.push(match s.kind {
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    });
    put_key(out, 7, WIRE_FIXED64);
    out.extend_from_slice(&s.start_unix_ns.to_le_bytes());
    put_key(out, 8, WIRE_FIXED64);
    out.extend_from_slice(&s.end_unix_ns.to_le_bytes());
    for (k, v) in &s.attributes {
        put_key_value(out, 9, k, v);
    }
    put_key(out, 15, WIRE_LEN);
    put_varint(out, status_len(s) as u64);
    if s.status == Status::Error {
        put_key(out, 3, WIRE_VARINT);
        out.push(2); // STATUS_CODE_ERROR
    }
    // Trace flags (sampled bit) and "is_remote is known" (0x100); the parent is remote when set.
    let mut flags: u32 = u32::from(s.sampled) | 0x100;
    if s.parent_span_id.is_some() {
        flags |= 0x200;
    }
    put_key(out, 16, WIRE_FIXED32);
    out.extend_from_slice(&flags.to_le_bytes());
}

fn scope_len() -> usize {
    len_field(1, SCOPE_NAME.len()) + len_field(2, SCOPE_VERSION.len())
}

/// Appends one `ResourceSpans` (field 1 of ExportTraceServiceRequest) for
/// spans of one resource.
pub fn put_resource_spans<'a>(
    out: &mut Vec<u8>,
    resource: &[(String, Value)],
    spans: impl Iterator<Item = &'a Span> + Clone,
) {
    let res_len: usize = resource.iter().map(|(k, v)| len_field(1, key_value_len(k, v))).sum();
    let spans_len: usize = spans.clone().map(|s| len_field(2, span_len(s))).sum();
    let scope_spans_len = len_field(1, scope_len()) + spans_len + len_field(3, SCHEMA_URL.len());
    let rs_len = len_field(1, res_len) + len_field(2, scope_spans_len);
    out.reserve(len_field(1, rs_len));
    put_key(out, 1, WIRE_LEN);
    put_varint(out, rs_len as u64);
    // Resource
    put_key(out, 1, WIRE_LEN);
    put_varint(out, res_len as u64);
    for (k, v) in resource {
        put_key_value(out, 1, k, v);
    }
    // ScopeSpans
    put_key(out, 2, WIRE_LEN);
    put_varint(out, scope_spans_len as u64);
    put_key(out, 1, WIRE_LEN);
    put_varint(out, scope_len() as u64);
    put_bytes(out, 1, SCOPE_NAME.as_bytes());
    put_bytes(out, 2, SCOPE_VERSION.as_bytes());
    for s in spans {
        put_span(out, s);
    }
    put_bytes(out, 3, SCHEMA_URL.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use prost::Message;

    fn span(i: u8, parent: bool, error: bool) -> Span {
        Span {
            trace_id: [i; 16],
            span_id: [i + 1; 8],
            parent_span_id: parent.then_some([9; 8]),
            sampled: true,
            name: format!("GET /users/{{id}}{i}"),
            kind: if i % 2 == 0 { SpanKind::Server } else { SpanKind::Client },
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
        }
    }

    #[test]
    fn decodes_with_the_reference_types() {
        let spans: Vec<Span> = (0..5).map(|i| span(i, i % 2 == 1, i == 3)).collect();
        let resource =
            vec![("service.name".to_string(), Value::Str("nginx".into())), ("process.pid".to_string(), Value::Int(42))];
        let mut buf = Vec::new();
        put_resource_spans(&mut buf, &resource, spans.iter());
        put_resource_spans(&mut buf, &resource, spans[..1].iter());
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
        }
        assert_eq!(req.resource_spans[1].scope_spans[0].spans.len(), 1);
    }
}
