//! Test harness for end-to-end tests of `tracer-agent`.
//!
//! The tests run the real agent (path in `TRACER_AGENT_BIN`, as root) against
//! real servers (nginx, python's http.server) and clients (curl, wrk, raw
//! sockets), collect what it exports with an in-process OTLP [`Receiver`],
//! and check the spans.
//!
//! Typical flow of a test:
//! 1. `let _serial = serial();` — one agent at a time.
//! 2. start the servers on ports from [`free_port`];
//! 3. `let receiver = Receiver::start();`
//! 4. `let agent = AgentBuilder::new(&receiver).port(server_port).start();`
//! 5. generate traffic, `agent.stop()` (SIGTERM, exit status 0);
//! 6. assert on `receiver.spans()`.

pub mod agent;
pub mod db;
pub mod grpc;
pub mod netns;
pub mod programs;
pub mod raw;
pub mod receiver;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

pub use agent::{agent_bin, require_root, Agent, AgentBuilder, AgentExit};
pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
pub use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
pub use programs::*;
pub use raw::{echo_roundtrip, get_request, parse_responses, send_raw, EchoServer, RawResponse};
pub use receiver::{assert_unique_span_ids, dump, Protocol, ReceivedSpan, Receiver, Transport};

/// How long tests wait for spans to show up before stopping the agent.
/// Spans normally arrive within about a second; this only bounds the wait.
pub const SPAN_WAIT: Duration = Duration::from_secs(15);

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises tests within one test binary: each test loads its own set of
/// probes and measures exact span counts, so they must not overlap.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// URL paths of `spans`, in the given order.
pub fn span_paths(spans: &[ReceivedSpan]) -> Vec<String> {
    spans.iter().map(|s| s.url_path().unwrap_or_else(|| "<no url.path>".to_string())).collect()
}

/// Sorts spans by start time, then end time.
pub fn sort_by_time(spans: &mut [ReceivedSpan]) {
    spans.sort_by_key(|s| (s.start_ns(), s.end_ns()));
}

/// Asserts the span has a positive duration and lies within
/// `[not_before, not_after]` (wall-clock nanoseconds, with 2 s of slack
/// for clock conversion).
pub fn assert_timing(span: &ReceivedSpan, not_before: u64, not_after: u64) {
    const SLACK: u64 = 2_000_000_000;
    assert!(span.start_ns() < span.end_ns(), "span must have start < end (duration > 0): {span}");
    assert!(
        span.start_ns() + SLACK >= not_before,
        "span starts before the traffic was generated (start {} < {}): {span}",
        span.start_ns(),
        not_before
    );
    assert!(
        span.end_ns() <= not_after + SLACK,
        "span ends after the traffic was over (end {} > {}): {span}",
        span.end_ns(),
        not_after
    );
}

/// Asserts that every path in `expected` occurs exactly once among `spans`
/// and that there are no other spans.
pub fn assert_paths_once(spans: &[ReceivedSpan], expected: &[String]) {
    let mut got = span_paths(spans);
    got.sort();
    let mut want = expected.to_vec();
    want.sort();
    assert_eq!(got, want, "each expected url.path must appear exactly once\n{}", dump(spans));
}

/// Asserts the span attribute `key` is the string `value`.
#[track_caller]
pub fn assert_attr_str(span: &ReceivedSpan, key: &str, value: &str) {
    assert_eq!(span.attr_str(key).as_deref(), Some(value), "span attribute {key} (string)\n{span}");
}

/// Asserts the span attribute `key` is the integer `value`.
#[track_caller]
pub fn assert_attr_int(span: &ReceivedSpan, key: &str, value: i64) {
    assert_eq!(span.attr_int(key), Some(value), "span attribute {key} (int)\n{span}");
}

/// Asserts the resource attribute `key` is the string `value`.
#[track_caller]
pub fn assert_resource_str(span: &ReceivedSpan, key: &str, value: &str) {
    assert_eq!(span.resource_str(key).as_deref(), Some(value), "resource attribute {key} (string)\n{span}");
}

/// Asserts the span status and `error.type` for an HTTP status code:
/// `expect_error` means status ERROR with `error.type` = the code,
/// otherwise status UNSET and no `error.type`.
#[track_caller]
pub fn assert_status(span: &ReceivedSpan, code: u16, expect_error: bool) {
    assert_attr_int(span, "http.response.status_code", code as i64);
    if expect_error {
        assert_eq!(span.status_code(), StatusCode::Error, "status must be ERROR for HTTP {code}\n{span}");
        assert_attr_str(span, "error.type", &code.to_string());
    } else {
        assert_eq!(span.status_code(), StatusCode::Unset, "status must be UNSET for HTTP {code}\n{span}");
        assert!(!span.has_attr("error.type"), "error.type must be absent for HTTP {code}\n{span}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use prost::Message;
    use std::io::{Read, Write};

    fn kv_str(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
            ..Default::default()
        }
    }

    fn kv_int(k: &str, v: i64) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(any_value::Value::IntValue(v)) }),
            ..Default::default()
        }
    }

    fn export(service: &str, kind: SpanKind, n: u8) -> ExportTraceServiceRequest {
        let spans = (0..n)
            .map(|i| Span {
                trace_id: vec![i + 1; 16],
                span_id: vec![i + 1; 8],
                name: "GET".into(),
                kind: kind as i32,
                start_time_unix_nano: 1,
                end_time_unix_nano: 2,
                attributes: vec![kv_str("url.path", &format!("/{i}")), kv_int("http.response.status_code", 200)],
                status: Some(Status::default()),
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv_str("service.name", service), kv_int("process.pid", 42)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn receiver_accepts_grpc_and_http() {
        let receiver = Receiver::start();

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut client =
                TraceServiceClient::connect(receiver.endpoint(Protocol::Grpc)).await.expect("connecting gRPC client");
            client.export(export("curl", SpanKind::Client, 2)).await.expect("gRPC export");
            let mut client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
            client.export(export("curl", SpanKind::Client, 1)).await.expect("compressed gRPC export");
        });

        let body = export("nginx", SpanKind::Server, 3).encode_to_vec();
        let mut stream = std::net::TcpStream::connect(receiver.http_addr()).unwrap();
        write!(
            stream,
            "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        stream.write_all(&body).unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        let responses = parse_responses(&reply);
        assert_eq!(responses.len(), 1);
        assert_eq!(responses[0].status, 200);
        assert_eq!(responses[0].header("content-type"), Some("application/x-protobuf"));
        ExportTraceServiceResponse::decode(&responses[0].body[..]).expect("empty response decodes");

        assert!(receiver.wait_for_count(6, Duration::from_secs(5), |_| true));
        assert_eq!(receiver.spans().len(), 6);
        assert_eq!(receiver.client_spans().len(), 3);
        assert_eq!(receiver.spans_of(SpanKind::Server, "nginx").len(), 3);
        assert_eq!(receiver.spans_of_service("curl").len(), 3);
        assert_eq!(receiver.export_requests(Transport::Grpc), 2);
        assert_eq!(receiver.export_requests(Transport::HttpProtobuf), 1);
        let s = &receiver.spans_of_service("nginx")[0];
        assert_eq!(s.transport, Transport::HttpProtobuf);
        assert_eq!(s.resource_int("process.pid"), Some(42));
        assert_eq!(s.attr_int("http.response.status_code"), Some(200));
        assert_eq!(s.attr_str("url.path").as_deref(), Some("/0"));
        assert_eq!(s.status_code(), StatusCode::Unset);
        receiver.assert_no_errors();

        // Wrong path is reported as a receiver error.
        let mut stream = std::net::TcpStream::connect(receiver.http_addr()).unwrap();
        write!(stream, "POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        assert_eq!(parse_responses(&reply)[0].status, 404);
        assert_eq!(receiver.errors().len(), 1);
    }

    #[test]
    fn unique_ids_are_checked() {
        let receiver = Receiver::start();
        let body = export("nginx", SpanKind::Server, 2).encode_to_vec();
        for _ in 0..2 {
            let mut stream = std::net::TcpStream::connect(receiver.http_addr()).unwrap();
            write!(
                stream,
                "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .unwrap();
            stream.write_all(&body).unwrap();
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).unwrap();
        }
        let spans = receiver.spans();
        assert_eq!(spans.len(), 4);
        assert_unique_span_ids(&spans[..2]);
        let dup = std::panic::catch_unwind(|| assert_unique_span_ids(&spans));
        assert!(dup.is_err(), "duplicates must be detected");
    }

    #[test]
    fn parses_chunked_and_pipelined_responses() {
        let data = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n2;ext=1\r\nhi\r\n0\r\n\r\nHTTP/1.0 404 Not Found\r\n\r\ngone";
        let r = parse_responses(data);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].body, b"abc");
        assert!(r[1].chunked);
        assert_eq!(r[1].body, b"wxyzhi");
        assert_eq!(r[2].version, "HTTP/1.0");
        assert_eq!(r[2].status, 404);
        assert_eq!(r[2].body, b"gone");
    }

    #[test]
    fn parses_wrk_summary() {
        let out = "Running 2s test @ http://127.0.0.1:8080/\n  1 threads and 4 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   101.00us   20.00us   1.00ms   90.00%\n  35862 requests in 2.00s, 8.93MB read\n  Socket errors: connect 0, read 1, write 0, timeout 2\n  Non-2xx or 3xx responses: 5\nRequests/sec:  17931.00\nTransfer/sec:      4.47MB\n";
        let w = parse_wrk(out);
        assert_eq!(w.requests, 35862);
        assert_eq!(w.socket_errors, 3);
        assert_eq!(w.non_2xx, 5);
    }

    #[test]
    fn random_hex_has_length() {
        let a = random_hex(32);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(32));
    }
}
