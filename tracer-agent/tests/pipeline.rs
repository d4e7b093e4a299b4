//! The pipeline from encoded kernel events to spans, without the kernel.

use std::net::Ipv4Addr;

use tracer_agent::capture::event::encode;
use tracer_agent::conntrack::Tracker;
use tracer_agent::pipeline::Pipeline;
use tracer_agent::route::RouteMatcher;
use tracer_agent::span::{hex, Clock, Span, SpanKind, Status, Value};
use tracer_common::{role, EventHeader, EventKind, SockInfo, AF_INET};

struct Conn {
    pid: u32,
    tid: u32,
    g: u64,
    comm: &'static str,
    sock: SockInfo,
    ts: u64,
}

fn v4(a: Ipv4Addr) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[..4].copy_from_slice(&a.octets());
    r
}

impl Conn {
    fn new(pid: u32, comm: &'static str, ino: u64, lport: u16, rport: u16, r: u8) -> Self {
        let sock = SockInfo {
            ino,
            family: AF_INET,
            lport,
            rport,
            role: r,
            _pad: 0,
            laddr: v4(Ipv4Addr::new(127, 0, 0, 1)),
            raddr: v4(Ipv4Addr::new(127, 0, 0, 1)),
        };
        Self { pid, tid: pid, g: 0, comm, sock, ts: 1_000_000 }
    }

    fn event(&mut self, kind: EventKind, payload: &[u8], ret: i64) -> Vec<u8> {
        self.ts += 1_000;
        let mut comm = [0u8; 16];
        comm[..self.comm.len()].copy_from_slice(self.comm.as_bytes());
        let h = EventHeader {
            kind: kind as u32,
            syscall: 0,
            _pad0: 0,
            ts_enter: self.ts,
            ts_exit: self.ts + 500,
            pid: self.pid,
            tid: self.tid,
            fd: 7,
            captured: 0,
            ret,
            comm,
            sock: self.sock,
            goroutine: self.g,
        };
        let mut out = Vec::new();
        encode(&h, payload, &mut out);
        out
    }

    fn data(&mut self, kind: EventKind, payload: &[u8]) -> Vec<u8> {
        self.event(kind, payload, payload.len() as i64)
    }
}

fn pipeline() -> Pipeline {
    Pipeline::new(Tracker::new(1024, 60_000_000_000), RouteMatcher::new(&[]).unwrap(), Clock { offset: 0 })
}

fn str_attr<'a>(s: &'a Span, k: &str) -> &'a str {
    match s.attr(k).and_then(Value::as_str) {
        Some(v) => v,
        None => panic!("{k}: {:?}", s.attr(k)),
    }
}

fn int_attr(s: &Span, k: &str) -> i64 {
    match s.attr(k) {
        Some(Value::Int(v)) => *v,
        other => panic!("{k}: {other:?}"),
    }
}

#[test]
fn server_keep_alive_gives_one_span_per_request() {
    let mut p = pipeline();
    let mut c = Conn::new(10, "nginx", 1, 8080, 40000, role::SERVER);
    p.on_record(&c.event(EventKind::Accept, b"", 7));
    for i in 0..3 {
        p.on_record(&c.data(
            EventKind::Recv,
            format!("GET /users/{i}7 HTTP/1.1\r\nHost: api:8080\r\nUser-Agent: t/1\r\n\r\n").as_bytes(),
        ));
        p.on_record(&c.data(EventKind::Send, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    }
    p.on_record(&c.event(EventKind::Close, b"", 0));
    let spans = p.take_spans();
    assert_eq!(spans.len(), 3);
    for (i, s) in spans.iter().enumerate() {
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(s.name, "GET /users/{id}");
        assert_eq!(str_attr(s, "url.path"), format!("/users/{i}7"));
        assert_eq!(str_attr(s, "http.route"), "/users/{id}");
        assert_eq!(str_attr(s, "server.address"), "api");
        assert_eq!(int_attr(s, "server.port"), 8080);
        assert_eq!(str_attr(s, "client.address"), "127.0.0.1");
        assert_eq!(int_attr(s, "network.peer.port"), 40000);
        assert_eq!(int_attr(s, "http.response.status_code"), 200);
        assert_eq!(int_attr(s, "http.response.body.size"), 2);
        assert_eq!(str_attr(s, "user_agent.original"), "t/1");
        assert_eq!(str_attr(s, "network.protocol.version"), "1.1");
        assert_eq!(s.status, Status::Unset);
        assert!(s.end_unix_ns > s.start_unix_ns);
        assert_eq!(s.parent_span_id, None);
    }
}

#[test]
fn mid_stream_attach_resynchronises_without_guessing() {
    let mut p = pipeline();
    // No accept seen, no role known: the first bytes are the tail of a body.
    let mut c = Conn::new(10, "nginx", 2, 8080, 40001, role::UNKNOWN);
    p.on_record(&c.data(EventKind::Recv, b"tail of an earlier request body"));
    p.on_record(&c.data(EventKind::Send, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    p.on_record(&c.data(EventKind::Recv, b"POST /orders HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"));
    p.on_record(&c.data(EventKind::Send, b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"));
    // The first request seen on a loopback connection joined open waits
    // for a client end that is never seen.
    p.flush_held();
    let spans = p.take_spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0].kind, SpanKind::Server);
    assert_eq!(str_attr(&spans[0], "http.request.method"), "POST");
    assert_eq!(int_attr(&spans[0], "http.request.body.size"), 3);
    assert_eq!(spans[0].status, Status::Error);
    assert_eq!(str_attr(&spans[0], "error.type"), "503");
}

#[test]
fn traceparent_and_same_host_linking() {
    let mut p = pipeline();
    let mut client = Conn::new(20, "curl", 3, 40002, 8080, role::CLIENT);
    let mut server = Conn::new(10, "nginx", 4, 8080, 40002, role::SERVER);
    let req =
        b"GET / HTTP/1.1\r\nHost: x\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
    let resp = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    p.on_record(&client.event(EventKind::Connect, b"", 0));
    p.on_record(&server.event(EventKind::Accept, b"", 7));
    p.on_record(&client.data(EventKind::Send, req));
    p.on_record(&server.data(EventKind::Recv, req));
    p.on_record(&server.data(EventKind::Send, resp));
    p.on_record(&client.data(EventKind::Recv, resp));
    let spans = p.take_spans();
    assert_eq!(spans.len(), 2);
    let s = spans.iter().find(|s| s.kind == SpanKind::Server).unwrap();
    let c = spans.iter().find(|s| s.kind == SpanKind::Client).unwrap();
    assert_eq!(hex(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(c.parent_span_id.map(|p| hex(&p)).as_deref(), Some("00f067aa0ba902b7"));
    // Trace context in the request wins over same-host linking.
    assert_eq!(s.parent_span_id.map(|p| hex(&p)).as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(s.status, Status::Unset, "404 is not a server error");
    assert_eq!(c.status, Status::Error, "404 is a client error");
    assert_eq!(c.name, "GET");
    assert_eq!(str_attr(c, "url.full"), "http://x:8080/");
}

#[test]
fn same_host_linking_without_trace_context() {
    let mut p = pipeline();
    let mut client = Conn::new(20, "curl", 3, 40002, 8080, role::CLIENT);
    let mut server = Conn::new(10, "nginx", 4, 8080, 40002, role::SERVER);
    let req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    p.on_record(&client.event(EventKind::Connect, b"", 0));
    p.on_record(&server.event(EventKind::Accept, b"", 7));
    // Either side may finish first.
    p.on_record(&client.data(EventKind::Send, req));
    p.on_record(&server.data(EventKind::Recv, req));
    p.on_record(&server.data(EventKind::Send, resp));
    p.on_record(&client.data(EventKind::Recv, resp));
    p.on_record(&client.data(EventKind::Send, req));
    p.on_record(&server.data(EventKind::Recv, req));
    p.on_record(&client.data(EventKind::Recv, resp));
    p.on_record(&server.data(EventKind::Send, resp));
    let spans = p.take_spans();
    assert_eq!(spans.len(), 4);
    for pair in spans.chunks(2) {
        let s = pair.iter().find(|s| s.kind == SpanKind::Server).unwrap();
        let c = pair.iter().find(|s| s.kind == SpanKind::Client).unwrap();
        assert_eq!(s.trace_id, c.trace_id);
        assert_eq!(s.parent_span_id, Some(c.span_id));
        assert_eq!(c.parent_span_id, None);
    }
    assert_ne!(spans[0].trace_id, spans[2].trace_id);
}

#[test]
fn non_http_and_garbage_never_make_spans() {
    let mut p = pipeline();
    let mut seed = 0x9e3779b97f4a7c15u64;
    for conn in 0..200u64 {
        let mut c = Conn::new(30, "db", 100 + conn, 5432, 50000 + conn as u16, (conn % 3) as u8);
        for _ in 0..20 {
            let mut buf = vec![0u8; (seed % 300) as usize];
            for b in buf.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            let kind = if seed & 1 == 0 { EventKind::Recv } else { EventKind::Send };
            p.on_record(&c.data(kind, &buf));
            // Truncated and corrupt records too.
            let rec = c.data(kind, &buf);
            p.on_record(&rec[..rec.len() / 2]);
        }
    }
    assert!(p.take_spans().is_empty());
    assert!(p.snapshot().decode_errors > 0);
}

#[test]
fn connection_flood_stays_bounded() {
    let mut p = Pipeline::new(Tracker::new(1000, 60_000_000_000), RouteMatcher::new(&[]).unwrap(), Clock { offset: 0 });
    for i in 0..50_000u64 {
        let mut c = Conn::new(40, "svc", 1000 + i, 8080, (i % 60000) as u16, role::SERVER);
        p.on_record(&c.event(EventKind::Accept, b"", 7));
        p.on_record(&c.data(EventKind::Recv, b"GET / HTTP/1.1\r\n"));
        assert!(p.tracker.len() <= 1000);
    }
    assert!(p.snapshot().tracker.connections_evicted > 0);
}

#[test]
fn large_response_with_uncaptured_bytes() {
    let mut p = pipeline();
    let mut c = Conn::new(10, "nginx", 5, 8080, 40003, role::SERVER);
    p.on_record(&c.event(EventKind::Accept, b"", 7));
    p.on_record(&c.data(EventKind::Recv, b"GET /big HTTP/1.1\r\n\r\n"));
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
    let mut first = head.to_vec();
    first.resize(2048, b'x');
    let total = 1_048_576 + head.len() as i64;
    // One writev of the whole response, of which 2048 bytes were captured.
    p.on_record(&c.event(EventKind::Send, &first, total));
    p.on_record(&c.data(EventKind::Recv, b"GET /next HTTP/1.1\r\n\r\n"));
    p.on_record(&c.data(EventKind::Send, b"HTTP/1.1 204 No Content\r\n\r\n"));
    let spans = p.take_spans();
    assert_eq!(spans.len(), 2);
    assert_eq!(int_attr(&spans[0], "http.response.body.size"), 1_048_576);
    assert_eq!(int_attr(&spans[1], "http.response.status_code"), 204);
}

/// An HTTP/2 frame header followed by its payload.
fn h2_frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    let n = payload.len();
    out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8, ty, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

#[test]
fn h2c_upgrade_becomes_an_http2_stream() {
    let mut p = pipeline();
    let mut c = Conn::new(10, "h2server", 6, 8080, 40004, role::SERVER);
    p.on_record(&c.event(EventKind::Accept, b"", 7));
    p.on_record(&c.data(
        EventKind::Recv,
        b"GET /upgraded HTTP/1.1\r\nHost: svc:8080\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    ));
    // 101, then the server's SETTINGS and the response to stream 1.
    let mut resp = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec();
    h2_frame(&mut resp, 4, 0, 0, &[]);
    h2_frame(&mut resp, 1, 0x4, 1, &[0x88]); // HEADERS :status 200, END_HEADERS
    h2_frame(&mut resp, 0, 0x1, 1, b"hello"); // DATA, END_STREAM
    p.on_record(&c.data(EventKind::Send, &resp));
    // The client's preface and SETTINGS follow the 101.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_frame(&mut preface, 4, 0, 0, &[]);
    p.on_record(&c.data(EventKind::Recv, &preface));
    // A second request on the same connection, now plain HTTP/2 (stream 3).
    let mut req = Vec::new();
    h2_frame(&mut req, 1, 0x5, 3, &[0x82, 0x86, 0x84, 0x41, 0x03, b'a', b'p', b'i']); // GET http / :authority api
    p.on_record(&c.data(EventKind::Recv, &req));
    let mut resp2 = Vec::new();
    h2_frame(&mut resp2, 1, 0x5, 3, &[0x8d]); // :status 404, END_STREAM
    p.on_record(&c.data(EventKind::Send, &resp2));
    let spans = p.take_spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert_eq!(str_attr(&spans[0], "url.path"), "/upgraded");
    assert_eq!(str_attr(&spans[0], "network.protocol.version"), "2");
    assert_eq!(int_attr(&spans[0], "http.response.status_code"), 200);
    assert_eq!(str_attr(&spans[1], "url.path"), "/");
    assert_eq!(int_attr(&spans[1], "http.response.status_code"), 404);
    assert_eq!(spans[1].status, Status::Unset);
}

#[test]
fn spans_encoded_as_made_export_as_kept_ones() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    use tracer_agent::export::{encode_request, EncodedSpans, SpanBatch};
    use tracer_agent::resource::Resources;

    let export = |encode: bool| {
        let mut p = pipeline();
        if encode {
            p.encode_spans();
        }
        let mut c = Conn::new(10, "nginx", 1, 8080, 40000, role::SERVER);
        p.on_record(&c.event(EventKind::Accept, b"", 7));
        for i in 0..3 {
            // Trace context in the requests: the trace ids are known.
            let req = format!(
                "GET /users/{i}7 HTTP/1.1\r\nHost: api:8080\r\nUser-Agent: t/1\r\n\
                 traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n"
            );
            p.on_record(&c.data(EventKind::Recv, req.as_bytes()));
            p.on_record(&c.data(EventKind::Send, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
        }
        let batch = match p.take_batch(EncodedSpans::default) {
            Some(SpanBatch::Encoded(batch)) => batch,
            Some(SpanBatch::Spans(spans)) => {
                let mut batch = EncodedSpans::default();
                for s in &spans {
                    batch.push(s);
                }
                batch
            }
            None => panic!("no spans"),
        };
        assert!(p.take_batch(EncodedSpans::default).is_none());
        let spans: Vec<_> = (0..batch.len()).map(|i| (&batch, i)).collect();
        let mut body = Vec::new();
        encode_request(&spans, &mut Resources::new(Vec::new(), Vec::new()), &mut body);
        let mut req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        // Span ids are random.
        for s in req.resource_spans.iter_mut().flat_map(|r| &mut r.scope_spans).flat_map(|s| &mut s.spans) {
            s.span_id.clear();
        }
        req
    };
    let kept = export(false);
    assert_eq!(kept.resource_spans[0].scope_spans[0].spans.len(), 3);
    assert_eq!(export(true), kept);
}

/// A request's thread makes a thread that calls out: the call's span is
/// held until the made thread ends, then is the request's child; a thread
/// whose end is never seen leaves only a link.
#[test]
fn a_call_of_a_thread_made_for_a_request_waits_for_its_end() {
    for ends in [true, false] {
        let mut p = pipeline();
        let mut srv = Conn::new(10, "svc", 1, 8080, 40000, role::SERVER);
        p.on_record(&srv.event(EventKind::Accept, b"", 7));
        p.on_record(&srv.data(EventKind::Recv, b"GET /front HTTP/1.1\r\nHost: a\r\n\r\n"));
        // Thread 10 makes thread 11.
        let mut made = Conn::new(10, "svc", 0, 0, 0, 0);
        made.sock = SockInfo::zeroed();
        made.ts = srv.ts;
        p.on_record(&made.event(EventKind::Spawn, b"", 11));
        let mut cli = Conn::new(10, "svc", 2, 50000, 9090, role::CLIENT);
        cli.tid = 11;
        cli.ts = made.ts;
        p.on_record(&cli.event(EventKind::Connect, b"", 0));
        p.on_record(&cli.data(EventKind::Send, b"GET /back HTTP/1.1\r\nHost: b\r\n\r\n"));
        p.on_record(&cli.data(EventKind::Recv, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(p.take_spans().is_empty(), "the call waits for its thread's end");
        srv.ts = cli.ts;
        p.on_record(&srv.data(EventKind::Send, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        let server = p.take_spans();
        assert_eq!(server.len(), 1);
        let mut gone = Conn::new(10, "svc", 0, 0, 0, 0);
        gone.sock = SockInfo::zeroed();
        gone.tid = 11;
        gone.ts = srv.ts;
        if ends {
            p.on_record(&gone.event(EventKind::ThreadExit, b"", 0));
        } else {
            p.flush_held();
        }
        let call = p.take_spans();
        assert_eq!(call.len(), 1);
        let (s, c) = (&server[0], &call[0]);
        if ends {
            assert_eq!((c.trace_id, c.parent_span_id), (s.trace_id, Some(s.span_id)));
            assert_eq!(str_attr(c, "tracer.parent.source"), "thread_spawn");
            assert!(c.links.is_empty());
            assert_eq!(p.snapshot().links.by_thread_spawn, 1);
        } else {
            assert_ne!(c.trace_id, s.trace_id);
            assert_eq!(c.parent_span_id, None);
            assert_eq!(str_attr(c, "tracer.parent.source"), "ambiguous");
            assert_eq!(c.links, vec![(s.trace_id, s.span_id)]);
            assert_eq!(p.snapshot().links.ambiguous, 1);
        }
    }
}
