//! Span export: OTLP over gRPC or HTTP/protobuf with batching, or a readable
//! one-line-per-span printer when no endpoint is configured.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;

use crate::config::{ExportConfig, Protocol};
use crate::otlp;
use crate::resource::{ResourceKey, Resources};
use crate::span::{hex, Span, SpanKind, Status, Value};

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
}

/// Encode spans as an OTLP `ExportTraceServiceRequest`, one resource per
/// process (and service name).
pub fn encode_request(spans: &[Span], resources: &mut Resources, out: &mut Vec<u8>) {
    // Few processes per batch: a linear scan beats hashing every span.
    let mut groups: Vec<(ResourceKey, std::sync::Arc<str>, Vec<usize>)> = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        let key = resources.key(s);
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.2.push(i),
            None => groups.push((key, s.comm.clone(), vec![i])),
        }
    }
    for (key, comm, idx) in &groups {
        let attrs = resources.attributes(key, comm);
        otlp::put_resource_spans(out, &attrs, idx.iter().map(|&i| &spans[i]));
    }
}

/// A gRPC codec that sends already-encoded protobuf bytes and ignores the reply body.
#[derive(Clone, Copy, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
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
    type Encode = Vec<u8>;
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
    let parent = s.parent_span_id.map(|p| format!(" parent={}", hex(&p))).unwrap_or_default();
    let peer = match (s.attr("network.peer.address").and_then(Value::as_str), s.attr("network.peer.port")) {
        (Some(a), Some(Value::Int(p))) => format!(" peer={a}:{p}"),
        _ => String::new(),
    };
    format!(
        "{service} {kind} {what} {status}{err} {dur:.3}ms trace={} span={}{parent}{peer}",
        hex(&s.trace_id),
        hex(&s.span_id)
    )
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
        Ok(Self { sink, resources, delay, max_batch: max_batch.max(1), stats, last_error_log: None })
    }

    /// Run until the span channel closes, then flush what is left.
    /// `queued` counts spans handed over but not yet taken from the channel.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Vec<Span>>, queued: Arc<std::sync::atomic::AtomicUsize>) {
        let mut pending: Vec<Span> = Vec::new();
        let mut tick = tokio::time::interval(self.delay.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = rx.recv() => match batch {
                    Some(b) => {
                        queued.fetch_sub(b.len(), Ordering::Relaxed);
                        pending.extend(b);
                        if matches!(self.sink, Sink::Print) || pending.len() >= self.max_batch {
                            self.flush(&mut pending).await;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => self.flush(&mut pending).await,
            }
        }
        self.flush(&mut pending).await;
    }

    async fn flush(&mut self, pending: &mut Vec<Span>) {
        let mut start = 0;
        while start < pending.len() {
            let end = (start + self.max_batch).min(pending.len());
            let batch = std::mem::take(pending);
            self.send(&batch[start..end]).await;
            *pending = batch;
            start = end;
        }
        pending.clear();
    }

    async fn send(&mut self, spans: &[Span]) {
        if let Sink::Print = self.sink {
            let mut out = std::io::stdout().lock();
            for s in spans {
                let key = self.resources.key(s);
                let _ = writeln!(out, "{}", format_line(s, &key.service));
            }
            let _ = out.flush();
            self.stats.printed.fetch_add(spans.len() as u64, Ordering::Relaxed);
            return;
        }
        let mut body = Vec::with_capacity(spans.len() * 400);
        encode_request(spans, &mut self.resources, &mut body);
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
                let body = Bytes::from(body);
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
