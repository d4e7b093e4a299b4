//! In-process OTLP trace receiver speaking both gRPC and HTTP/protobuf.
//!
//! Every span that arrives is stored together with the attributes of the
//! resource it was exported under, so tests can query spans by kind, by
//! `service.name` and by attribute.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as OtlpStatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::sync::oneshot;

/// How a span reached the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
}

/// Exporter protocol selected through `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// Value for `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn env_value(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }

    pub fn transport(self) -> Transport {
        match self {
            Protocol::Grpc => Transport::Grpc,
            Protocol::HttpProtobuf => Transport::HttpProtobuf,
        }
    }
}

/// One span as received, with its resource and scope.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub resource: Vec<KeyValue>,
    pub scope_name: String,
    pub span: Span,
    pub transport: Transport,
}

fn find_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn value_as_string(v: &any_value::Value) -> Option<String> {
    match v {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn value_as_int(v: &any_value::Value) -> Option<i64> {
    match v {
        any_value::Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

/// Renders an attribute value compactly for diagnostics.
pub fn display_value(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => format!("{s:?}"),
        Some(any_value::Value::IntValue(i)) => format!("{i}"),
        Some(any_value::Value::BoolValue(b)) => format!("{b}"),
        Some(any_value::Value::DoubleValue(d)) => format!("{d}"),
        Some(other) => format!("{other:?}"),
        None => "<none>".to_string(),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ReceivedSpan {
    pub fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }

    pub fn name(&self) -> &str {
        &self.span.name
    }

    /// Raw attribute value of the span.
    pub fn attr(&self, key: &str) -> Option<&any_value::Value> {
        find_attr(&self.span.attributes, key)
    }

    /// String attribute of the span; `None` if missing or not a string.
    pub fn attr_str(&self, key: &str) -> Option<String> {
        self.attr(key).and_then(value_as_string)
    }

    /// Integer attribute of the span; `None` if missing or not an int.
    pub fn attr_int(&self, key: &str) -> Option<i64> {
        self.attr(key).and_then(value_as_int)
    }

    pub fn has_attr(&self, key: &str) -> bool {
        self.span.attributes.iter().any(|kv| kv.key == key)
    }

    /// Raw attribute value of the resource the span was exported under.
    pub fn resource_attr(&self, key: &str) -> Option<&any_value::Value> {
        find_attr(&self.resource, key)
    }

    pub fn resource_str(&self, key: &str) -> Option<String> {
        self.resource_attr(key).and_then(value_as_string)
    }

    pub fn resource_int(&self, key: &str) -> Option<i64> {
        self.resource_attr(key).and_then(value_as_int)
    }

    pub fn service_name(&self) -> Option<String> {
        self.resource_str("service.name")
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_span_id_hex(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    pub fn start_ns(&self) -> u64 {
        self.span.start_time_unix_nano
    }

    pub fn end_ns(&self) -> u64 {
        self.span.end_time_unix_nano
    }

    /// Status code of the span (`Unset` when no status was sent).
    pub fn status_code(&self) -> OtlpStatusCode {
        self.span.status.as_ref().and_then(|s| OtlpStatusCode::try_from(s.code).ok()).unwrap_or(OtlpStatusCode::Unset)
    }

    pub fn url_path(&self) -> Option<String> {
        self.attr_str("url.path")
    }
}

impl fmt::Display for ReceivedSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {:?} name={:?} trace={} span={} parent={} start={} end={} status={:?}",
            self.transport,
            self.kind(),
            self.span.name,
            self.trace_id_hex(),
            self.span_id_hex(),
            self.parent_span_id_hex(),
            self.span.start_time_unix_nano,
            self.span.end_time_unix_nano,
            self.status_code(),
        )?;
        write!(f, " resource{{")?;
        for kv in &self.resource {
            write!(f, " {}={}", kv.key, display_value(&kv.value))?;
        }
        write!(f, " }} attrs{{")?;
        for kv in &self.span.attributes {
            write!(f, " {}={}", kv.key, display_value(&kv.value))?;
        }
        write!(f, " }}")
    }
}

/// Formats a list of spans one per line, for assertion messages.
pub fn dump(spans: &[ReceivedSpan]) -> String {
    let mut out = format!("{} span(s):\n", spans.len());
    for s in spans {
        out.push_str("  ");
        out.push_str(&s.to_string());
        out.push('\n');
    }
    out
}

/// Asserts that no two spans share a span id (and thus no (trace id, span
/// id) pair is repeated), that every id is non-zero and of the right size.
pub fn assert_unique_span_ids(spans: &[ReceivedSpan]) {
    let mut seen = HashSet::new();
    let mut pairs = HashSet::new();
    for s in spans {
        assert_eq!(s.span.trace_id.len(), 16, "trace id must be 16 bytes: {s}");
        assert_eq!(s.span.span_id.len(), 8, "span id must be 8 bytes: {s}");
        assert!(s.span.trace_id.iter().any(|b| *b != 0), "trace id must not be all zero: {s}");
        assert!(s.span.span_id.iter().any(|b| *b != 0), "span id must not be all zero: {s}");
        assert!(
            pairs.insert((s.span.trace_id.clone(), s.span.span_id.clone())),
            "duplicate (trace_id, span_id) {}/{}\n{}",
            s.trace_id_hex(),
            s.span_id_hex(),
            dump(spans)
        );
        assert!(seen.insert(s.span.span_id.clone()), "duplicate span id {} in\n{}", s.span_id_hex(), dump(spans));
    }
}

#[derive(Default)]
struct Store {
    spans: Vec<ReceivedSpan>,
    /// Number of export requests per transport (grpc, http).
    requests: [usize; 2],
    /// Problems seen while receiving (undecodable bodies, wrong paths, ...).
    errors: Vec<String>,
}

#[derive(Default)]
struct Shared {
    store: Mutex<Store>,
    changed: Condvar,
}

impl Shared {
    fn ingest(&self, req: ExportTraceServiceRequest, transport: Transport) {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store.requests[transport as usize] += 1;
        for rs in req.resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for ss in rs.scope_spans {
                let scope_name = ss.scope.map(|s| s.name).unwrap_or_default();
                for span in ss.spans {
                    store.spans.push(ReceivedSpan {
                        resource: resource.clone(),
                        scope_name: scope_name.clone(),
                        span,
                        transport,
                    });
                }
            }
        }
        drop(store);
        self.changed.notify_all();
    }

    fn error(&self, msg: String) {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store.errors.push(msg);
        drop(store);
        self.changed.notify_all();
    }
}

struct GrpcService {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.shared.ingest(request.into_inner(), Transport::Grpc);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn http_reply(status: StatusCode, body: Vec<u8>, content_type: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

async fn handle_http(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let content_type =
        req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let encoding =
        req.headers().get("content-encoding").and_then(|v| v.to_str().ok()).unwrap_or("identity").to_ascii_lowercase();

    if method != Method::POST || path != "/v1/traces" {
        shared.error(format!("http receiver: unexpected {method} {path}"));
        return Ok(http_reply(StatusCode::NOT_FOUND, Vec::new(), "text/plain"));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            shared.error(format!("http receiver: reading body failed: {e}"));
            return Ok(http_reply(StatusCode::BAD_REQUEST, Vec::new(), "text/plain"));
        }
    };
    let body: Vec<u8> = match encoding.as_str() {
        "identity" | "" => body.to_vec(),
        "gzip" => {
            let mut out = Vec::new();
            if let Err(e) = flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out) {
                shared.error(format!("http receiver: bad gzip body: {e}"));
                return Ok(http_reply(StatusCode::BAD_REQUEST, Vec::new(), "text/plain"));
            }
            out
        }
        other => {
            shared.error(format!("http receiver: unsupported content-encoding {other}"));
            return Ok(http_reply(StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new(), "text/plain"));
        }
    };
    if !content_type.starts_with("application/x-protobuf") {
        shared.error(format!(
            "http receiver: unsupported content-type {content_type:?} (expected application/x-protobuf)"
        ));
        return Ok(http_reply(StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new(), "text/plain"));
    }
    match ExportTraceServiceRequest::decode(&body[..]) {
        Ok(export) => {
            shared.ingest(export, Transport::HttpProtobuf);
            Ok(http_reply(
                StatusCode::OK,
                ExportTraceServiceResponse::default().encode_to_vec(),
                "application/x-protobuf",
            ))
        }
        Err(e) => {
            shared.error(format!("http receiver: undecodable protobuf body: {e}"));
            Ok(http_reply(StatusCode::BAD_REQUEST, Vec::new(), "text/plain"))
        }
    }
}

async fn serve_http(listener: tokio::net::TcpListener, shared: Arc<Shared>, mut shutdown: oneshot::Receiver<()>) {
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                shared.error(format!("http receiver: accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper::service::service_fn(move |req| handle_http(shared.clone(), req));
            // Errors here are connection resets from the exporter side; the
            // spans that did arrive are already stored.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
    }
}

/// OTLP receiver listening on two loopback ports: one for gRPC and one for
/// HTTP/protobuf (`POST /v1/traces`).
pub struct Receiver {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Vec<oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// Starts both listeners on `127.0.0.1:0`.
    pub fn start() -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-receiver")
            .enable_all()
            .build()
            .expect("building the receiver runtime");
        let shared = Arc::new(Shared::default());
        let (grpc_tx, grpc_rx) = oneshot::channel::<()>();
        let (http_tx, http_rx) = oneshot::channel::<()>();

        let (grpc_addr, http_addr) = runtime.block_on(async {
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the gRPC receiver");
            let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the HTTP receiver");
            let grpc_addr = grpc.local_addr().unwrap();
            let http_addr = http.local_addr().unwrap();

            let svc = TraceServiceServer::new(GrpcService { shared: shared.clone() })
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                .max_decoding_message_size(256 * 1024 * 1024);
            let incoming = tonic::transport::server::TcpIncoming::from(grpc);
            let grpc_shared = shared.clone();
            tokio::spawn(async move {
                let result = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = grpc_rx.await;
                    })
                    .await;
                if let Err(e) = result {
                    grpc_shared.error(format!("grpc receiver stopped: {e}"));
                }
            });
            tokio::spawn(serve_http(http, shared.clone(), http_rx));
            (grpc_addr, http_addr)
        });

        Receiver { grpc_addr, http_addr, shared, shutdown: vec![grpc_tx, http_tx], runtime: Some(runtime) }
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Value for `OTEL_EXPORTER_OTLP_ENDPOINT` for the given protocol.
    pub fn endpoint(&self, protocol: Protocol) -> String {
        match protocol {
            Protocol::Grpc => format!("http://{}", self.grpc_addr),
            Protocol::HttpProtobuf => format!("http://{}", self.http_addr),
        }
    }

    /// Snapshot of every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.lock().spans.clone()
    }

    pub fn spans_of_kind(&self, kind: SpanKind) -> Vec<ReceivedSpan> {
        self.spans().into_iter().filter(|s| s.kind() == kind).collect()
    }

    pub fn server_spans(&self) -> Vec<ReceivedSpan> {
        self.spans_of_kind(SpanKind::Server)
    }

    pub fn client_spans(&self) -> Vec<ReceivedSpan> {
        self.spans_of_kind(SpanKind::Client)
    }

    /// Spans whose resource has `service.name == service`.
    pub fn spans_of_service(&self, service: &str) -> Vec<ReceivedSpan> {
        self.spans().into_iter().filter(|s| s.service_name().as_deref() == Some(service)).collect()
    }

    /// Spans of the given kind whose resource has `service.name == service`.
    pub fn spans_of(&self, kind: SpanKind, service: &str) -> Vec<ReceivedSpan> {
        self.spans().into_iter().filter(|s| s.kind() == kind && s.service_name().as_deref() == Some(service)).collect()
    }

    /// Number of export requests received per transport.
    pub fn export_requests(&self, transport: Transport) -> usize {
        self.lock().requests[transport as usize]
    }

    /// Problems the receiver ran into (should be empty).
    pub fn errors(&self) -> Vec<String> {
        self.lock().errors.clone()
    }

    pub fn assert_no_errors(&self) {
        let errors = self.errors();
        assert!(errors.is_empty(), "OTLP receiver errors: {errors:#?}");
    }

    /// Waits until `pred` holds for the received spans or `timeout` expires.
    /// Returns whether the predicate held.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&[ReceivedSpan]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut store = self.lock();
        loop {
            if pred(&store.spans) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            store = self.shared.changed.wait_timeout(store, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Waits until at least `count` spans satisfying `filter` arrived.
    pub fn wait_for_count(&self, count: usize, timeout: Duration, filter: impl Fn(&ReceivedSpan) -> bool) -> bool {
        self.wait_until(timeout, |spans| spans.iter().filter(|s| filter(s)).count() >= count)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for tx in self.shutdown.drain(..) {
            let _ = tx.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}
