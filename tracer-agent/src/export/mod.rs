//! Span export: OTLP over gRPC or HTTP/protobuf with batching, or a readable
//! printer when no endpoint is configured: one line per span, or each trace
//! as a tree (`tree`).

pub mod tree;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::config::{ExportConfig, Protocol};
use crate::otlp;
use crate::pipeline::SpanReceiver;
use crate::resource::{ResourceKey, Resources};
use crate::span::{hex, Span, SpanKind, Status, Value};

/// How printed spans look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PrintFormat {
    /// One line per span, as it finishes.
    #[default]
    Lines,
    /// Each trace as an indented tree, once it has been quiet for a second.
    Tree,
}

/// Export health counters, shared with the stats reporter.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub exported: AtomicU64,
    pub printed: AtomicU64,
    /// Spans dropped because the export queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Spans dropped because an export request failed.
    pub dropped_export_failed: AtomicU64,
    pub export_errors: AtomicU64,
}

enum Sink {
    Print,
    Grpc {
        client: tonic::client::Grpc<tonic::transport::Channel>,
        headers: Vec<(String, String)>,
        timeout: Duration,
    },
    Http {
        client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
        url: hyper::Uri,
        headers: Vec<(String, String)>,
        timeout: Duration,
    },
}

pub struct Exporter {
    sink: Sink,
    resources: Resources,
    delay: Duration,
    max_batch: usize,
    stats: Arc<ExportStats>,
    last_error_log: Option<Instant>,
    bodies: BodyPool,
    format: PrintFormat,
    trees: tree::Trees,
}

/// Request bodies, back from the transport once sent, for the next requests:
/// a fresh buffer of that size costs a page fault every 4 KiB.
#[derive(Clone, Default)]
struct BodyPool(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

/// Bodies kept (requests are sent one at a time), and the most room one may
/// hold to be kept.
const SPARE_BODIES: usize = 2;
const SPARE_BODY_BYTES: usize = 8 << 20;

impl BodyPool {
    fn take(&self) -> Vec<u8> {
        self.0.lock().ok().and_then(|mut spare| spare.pop()).unwrap_or_default()
    }

    fn wrap(&self, buf: Vec<u8>) -> PooledBody {
        PooledBody { buf, pool: self.clone() }
    }
}

/// An encoded request body that goes back to its pool when dropped.
struct PooledBody {
    buf: Vec<u8>,
    pool: BodyPool,
}

impl AsRef<[u8]> for PooledBody {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        if buf.capacity() > SPARE_BODY_BYTES {
            return;
        }
        buf.clear();
        if let Ok(mut spare) = self.pool.0.lock() {
            if spare.len() < SPARE_BODIES {
                spare.push(buf);
            }
        }
    }
}

/// The process a span comes from, which decides its resource.
struct Origin {
    pid: u32,
    comm: Arc<str>,
    server_port: Option<u16>,
}

/// Spans encoded for export by the thread that made them, so that span data
/// does not have to travel to the exporter's thread, with what it takes to
/// group them by resource.
#[derive(Default)]
pub struct EncodedSpans {
    /// The spans as `ScopeSpans.spans` fields, one after the other.
    bytes: Vec<u8>,
    /// Per span: where its field ends in `bytes`, and its index in `origins`.
    ends: Vec<(usize, usize)>,
    origins: Vec<Origin>,
}

impl EncodedSpans {
    pub fn push(&mut self, span: &Span) {
        otlp::put_span(&mut self.bytes, span);
        // Few processes per batch: a linear scan beats hashing every span.
        let same = |o: &Origin| o.pid == span.pid && o.server_port == span.server_port && o.comm == span.comm;
        let origin = match self.origins.iter().rposition(same) {
            Some(i) => i,
            None => {
                self.origins.push(Origin { pid: span.pid, comm: span.comm.clone(), server_port: span.server_port });
                self.origins.len() - 1
            }
        };
        self.ends.push((self.bytes.len(), origin));
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of room held.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Empty, keeping the room.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.origins.clear();
    }

    /// The encoded field of span `i`, and its origin.
    fn span(&self, i: usize) -> (&[u8], &Origin) {
        let start = i.checked_sub(1).map_or(0, |p| self.ends[p].0);
        let (end, origin) = self.ends[i];
        (&self.bytes[start..end], &self.origins[origin])
    }
}

/// Spans on their way from the pipeline to the exporter.
pub enum SpanBatch {
    /// To be printed.
    Spans(Vec<Span>),
    /// To be exported.
    Encoded(EncodedSpans),
}

impl SpanBatch {
    pub fn len(&self) -> usize {
        match self {
            SpanBatch::Spans(s) => s.len(),
            SpanBatch::Encoded(e) => e.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The spans of one resource in a request.
struct Group<'a> {
    key: ResourceKey,
    /// Process name of the first span.
    comm: &'a str,
    spans: Vec<&'a [u8]>,
}

/// Encode spans (span `i` of each batch listed) as an OTLP
/// `ExportTraceServiceRequest`, one resource per process (and service name).
pub fn encode_request(spans: &[(&EncodedSpans, usize)], resources: &mut Resources, out: &mut Vec<u8>) {
    // Few processes per request: a linear scan beats hashing every span, and
    // consecutive spans mostly share their origin.
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut last: Option<(&Origin, usize)> = None;
    for &(batch, i) in spans {
        let (bytes, origin) = batch.span(i);
        let group = match last {
            Some((o, g)) if std::ptr::eq(o, origin) => g,
            _ => {
                let key = resources.key_of(origin.pid, &origin.comm, origin.server_port);
                let g = match groups.iter().position(|g| g.key == key) {
                    Some(g) => g,
                    None => {
                        groups.push(Group { key, comm: &origin.comm, spans: Vec::new() });
                        groups.len() - 1
                    }
                };
                last = Some((origin, g));
                g
            }
        };
        groups[group].spans.push(bytes);
    }
    for g in &groups {
        let attrs = resources.attributes(&g.key, g.comm);
        otlp::put_resource_spans(out, &attrs, g.spans.iter().copied());
    }
}

/// A gRPC codec that sends already-encoded protobuf bytes and ignores the reply body.
#[derive(Clone, Copy, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = PooledBody;
    type Error = tonic::Status;
    fn encode(&mut self, item: PooledBody, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(item.as_ref());
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = ();
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        use bytes::Buf;
        let n = src.remaining();
        src.advance(n);
        Ok(Some(()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = PooledBody;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// One readable line for a span.
pub fn format_line(s: &Span, service: &str) -> String {
    let parent = s.parent_span_id.map(|p| format!(" parent={}", hex(&p))).unwrap_or_default();
    let peer = match (s.attr("network.peer.address").and_then(Value::as_str), s.attr("network.peer.port")) {
        (Some(a), Some(Value::Int(p))) => format!(" peer={a}:{p}"),
        _ => String::new(),
    };
    format!("{} trace={} span={}{parent}{peer}", short_line(s, service), hex(&s.trace_id), hex(&s.span_id))
}

/// Service, kind, what, status and duration of a span.
pub fn short_line(s: &Span, service: &str) -> String {
    let kind = match s.kind {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
    };
    let status = match (s.attr("http.response.status_code"), s.attr("rpc.grpc.status_code")) {
        (Some(Value::Int(c)), _) | (None, Some(Value::Int(c))) => c.to_string(),
        _ => match s.attr("db.response.status_code").and_then(Value::as_str) {
            Some(code) => code.to_string(),
            None if s.attr("db.system.name").is_some() && s.status != Status::Error => "OK".into(),
            None => "-".into(),
        },
    };
    // HTTP: method and path; anything else: the span name.
    let what = match (s.attr("http.request.method").and_then(Value::as_str), s.attr("url.path").and_then(Value::as_str))
    {
        (Some(m), Some(p)) => format!("{m} {p}"),
        _ => s.name.clone(),
    };
    let dur = (s.end_unix_ns.saturating_sub(s.start_unix_ns)) as f64 / 1e6;
    let err = if s.status == Status::Error { " ERROR" } else { "" };
    format!("{service} {kind} {what} {status}{err} {dur:.3}ms")
}

impl Exporter {
    pub fn new(
        export: Option<ExportConfig>,
        print: bool,
        resources: Resources,
        delay: Duration,
        max_batch: usize,
        stats: Arc<ExportStats>,
    ) -> Result<Self> {
        let sink = match export {
            None => Sink::Print,
            Some(_) if print => Sink::Print,
            Some(cfg) => match cfg.protocol {
                Protocol::Grpc => {
                    let channel = tonic::transport::Channel::from_shared(cfg.url.clone())
                        .map_err(|e| anyhow!("invalid OTLP endpoint `{}`: {e}", cfg.url))?
                        .connect_timeout(cfg.timeout)
                        .timeout(cfg.timeout)
                        .connect_lazy();
                    Sink::Grpc { client: tonic::client::Grpc::new(channel), headers: cfg.headers, timeout: cfg.timeout }
                }
                Protocol::HttpProtobuf => {
                    let url: hyper::Uri =
                        cfg.url.parse().with_context(|| format!("invalid OTLP endpoint `{}`", cfg.url))?;
                    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                        .pool_idle_timeout(Duration::from_secs(30))
                        .build_http();
                    Sink::Http { client, url, headers: cfg.headers, timeout: cfg.timeout }
                }
            },
        };
        Ok(Self {
            sink,
            resources,
            delay,
            max_batch: max_batch.max(1),
            stats,
            last_error_log: None,
            bodies: BodyPool::default(),
            format: PrintFormat::Lines,
            trees: tree::Trees::default(),
        })
    }

    /// How printed spans look.
    pub fn print_format(mut self, format: PrintFormat) -> Self {
        self.format = format;
        self
    }

    /// Spans are printed rather than exported.
    pub fn prints(&self) -> bool {
        matches!(self.sink, Sink::Print)
    }

    /// Run until the span queue closes, then flush what is left.
    pub async fn run(mut self, mut spans: SpanReceiver) {
        // Batches as received, and how many spans they hold.
        let mut pending: Vec<SpanBatch> = Vec::new();
        let mut pending_spans = 0usize;
        let every = match (&self.sink, self.format) {
            // Quiet traces are looked for often, so that they print soon.
            (Sink::Print, PrintFormat::Tree) => Duration::from_millis(250),
            _ => self.delay.max(Duration::from_millis(10)),
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = spans.recv() => match batch {
                    Some(b) => {
                        pending_spans += b.len();
                        pending.push(b);
                        if matches!(self.sink, Sink::Print) || pending_spans >= self.max_batch {
                            self.flush(&mut pending, &spans).await;
                            pending_spans = 0;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    self.flush(&mut pending, &spans).await;
                    pending_spans = 0;
                    self.print_trees(false);
                }
            }
        }
        self.flush(&mut pending, &spans).await;
        self.print_trees(true);
    }

    /// Prints the traces that have been quiet long enough (all: every one).
    fn print_trees(&mut self, all: bool) {
        if self.trees.is_empty() {
            return;
        }
        let ready = self.trees.take_quiet(Instant::now(), tree::QUIET, all);
        let mut out = std::io::stdout().lock();
        for t in ready {
            let _ = writeln!(out, "{t}");
        }
        let _ = out.flush();
    }

    /// Send everything pending, in requests of at most `max_batch` spans.
    /// Encoded batches go back to the pipeline to be reused.
    async fn flush(&mut self, pending: &mut Vec<SpanBatch>, spans: &SpanReceiver) {
        let total: usize = pending.iter().map(SpanBatch::len).sum();
        let mut request: Vec<(&EncodedSpans, usize)> = Vec::with_capacity(total.min(self.max_batch));
        for batch in pending.iter() {
            match batch {
                SpanBatch::Spans(s) => self.print(s),
                SpanBatch::Encoded(e) => {
                    for i in 0..e.len() {
                        request.push((e, i));
                        if request.len() == self.max_batch {
                            self.send(&request).await;
                            request.clear();
                        }
                    }
                }
            }
        }
        if !request.is_empty() {
            self.send(&request).await;
        }
        drop(request);
        for batch in pending.drain(..) {
            if let SpanBatch::Encoded(e) = batch {
                spans.give_back(e);
            }
        }
    }

    fn print(&mut self, spans: &[Span]) {
        let mut out = std::io::stdout().lock();
        let now = Instant::now();
        for s in spans {
            let key = self.resources.key(s);
            match self.format {
                PrintFormat::Lines => {
                    let _ = writeln!(out, "{}", format_line(s, &key.service));
                }
                PrintFormat::Tree => {
                    let line = short_line(s, &key.service);
                    if let Some(t) = self.trees.add(s, line, now) {
                        let _ = writeln!(out, "{t}");
                    }
                }
            }
        }
        let _ = out.flush();
        self.stats.printed.fetch_add(spans.len() as u64, Ordering::Relaxed);
    }

    async fn send(&mut self, spans: &[(&EncodedSpans, usize)]) {
        let mut body = self.bodies.take();
        encode_request(spans, &mut self.resources, &mut body);
        let body = self.bodies.wrap(body);
        let result = match &mut self.sink {
            Sink::Print => Ok(()),
            Sink::Grpc { client, headers, timeout } => {
                let mut r = tonic::Request::new(body);
                r.set_timeout(*timeout);
                for (k, v) in headers.iter() {
                    if let (Ok(k), Ok(v)) = (
                        tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
                        v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>(),
                    ) {
                        r.metadata_mut().insert(k, v);
                    }
                }
                match client.ready().await {
                    Err(e) => Err(anyhow!("gRPC export failed: {e}")),
                    Ok(()) => client
                        .unary(r, tonic::codegen::http::uri::PathAndQuery::from_static(GRPC_EXPORT_PATH), RawCodec)
                        .await
                        .map(|_| ())
                        .map_err(|e| anyhow!("gRPC export failed: {}", e.message())),
                }
            }
            Sink::Http { client, url, headers, timeout } => {
                let body = Bytes::from_owner(body);
                let mut b = hyper::Request::post(url.clone()).header("content-type", "application/x-protobuf");
                for (k, v) in headers.iter() {
                    b = b.header(k.as_str(), v.as_str());
                }
                match b.body(Full::new(body)) {
                    Err(e) => Err(anyhow!("building export request: {e}")),
                    Ok(request) => match tokio::time::timeout(*timeout, client.request(request)).await {
                        Err(_) => Err(anyhow!("HTTP export timed out")),
                        Ok(Err(e)) => Err(anyhow!("HTTP export failed: {e}")),
                        Ok(Ok(resp)) => {
                            let status = resp.status();
                            let _ = resp.into_body().collect().await;
                            if status.is_success() {
                                Ok(())
                            } else {
                                Err(anyhow!("HTTP export rejected with status {status}"))
                            }
                        }
                    },
                }
            }
        };
        match result {
            Ok(()) => {
                self.stats.exported.fetch_add(spans.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.export_errors.fetch_add(1, Ordering::Relaxed);
                self.stats.dropped_export_failed.fetch_add(spans.len() as u64, Ordering::Relaxed);
                let now = Instant::now();
                if self.last_error_log.is_none_or(|t| now.duration_since(t) > Duration::from_secs(30)) {
                    eprintln!(
                        "tracer-agent: {e:#}; {} spans dropped (further errors are counted, logged every 30 s)",
                        spans.len()
                    );
                    self.last_error_log = Some(now);
                }
            }
        }
    }
}
