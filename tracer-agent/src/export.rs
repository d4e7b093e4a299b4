//! Span export: OTLP over gRPC or HTTP/protobuf with batching, or a readable
//! one-line-per-span printer when no endpoint is configured.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{trace_service_client::TraceServiceClient, ExportTraceServiceRequest},
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    resource::v1::Resource,
    trace::v1::{span::SpanKind as PKind, status::StatusCode, ResourceSpans, ScopeSpans, Span as PSpan, Status as PStatus},
};
use prost::Message;
use tokio::sync::mpsc;

use crate::config::{ExportConfig, Protocol};
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
    Grpc { client: TraceServiceClient<tonic::transport::Channel>, headers: Vec<(String, String)>, timeout: Duration },
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

fn kv(key: &str, v: &Value) -> KeyValue {
    let value = match v {
        Value::Str(s) => any_value::Value::StringValue(s.clone()),
        Value::Int(i) => any_value::Value::IntValue(*i),
    };
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn to_proto(s: &Span) -> PSpan {
    PSpan {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags: u32::from(s.sampled) | 0x100, // sampled bit; "has is_remote" bit
        name: s.name.clone(),
        kind: match s.kind {
            SpanKind::Server => PKind::Server as i32,
            SpanKind::Client => PKind::Client as i32,
        },
        start_time_unix_nano: s.start_unix_ns,
        end_time_unix_nano: s.end_unix_ns,
        attributes: s.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
        status: Some(PStatus {
            code: match s.status {
                Status::Unset => StatusCode::Unset as i32,
                Status::Error => StatusCode::Error as i32,
            },
            message: String::new(),
        }),
        ..Default::default()
    }
}

/// Group spans by process resource into one export request.
pub fn build_request(spans: &[Span], resources: &mut Resources) -> ExportTraceServiceRequest {
    let mut groups: HashMap<ResourceKey, (String, Vec<PSpan>)> = HashMap::new();
    for s in spans {
        let key = resources.key(s);
        groups.entry(key).or_insert_with(|| (s.comm.clone(), Vec::new())).1.push(to_proto(s));
    }
    let scope = InstrumentationScope {
        name: "tracer-agent".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let mut resource_spans = Vec::with_capacity(groups.len());
    for (key, (comm, spans)) in groups {
        let attrs = resources.attributes(&key, &comm);
        resource_spans.push(ResourceSpans {
            resource: Some(Resource {
                attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope.clone()),
                spans,
                schema_url: "https://opentelemetry.io/schemas/1.37.0".into(),
            }],
            schema_url: String::new(),
        });
    }
    ExportTraceServiceRequest { resource_spans }
}

/// One readable line for a span.
pub fn format_line(s: &Span, service: &str) -> String {
    let kind = match s.kind {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
    };
    let status = match s.attr("http.response.status_code") {
        Some(Value::Int(c)) => c.to_string(),
        _ => "-".into(),
    };
    let path = match s.attr("url.path") {
        Some(Value::Str(p)) => p.as_str(),
        _ => "",
    };
    let method = match s.attr("http.request.method") {
        Some(Value::Str(m)) => m.as_str(),
        _ => "",
    };
    let dur = (s.end_unix_ns.saturating_sub(s.start_unix_ns)) as f64 / 1e6;
    let err = if s.status == Status::Error { " ERROR" } else { "" };
    let parent = s.parent_span_id.map(|p| format!(" parent={}", hex(&p))).unwrap_or_default();
    format!(
        "{service} {kind} {method} {path} {status}{err} {dur:.3}ms trace={} span={}{parent}",
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
                    Sink::Grpc { client: TraceServiceClient::new(channel), headers: cfg.headers, timeout: cfg.timeout }
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
        while !pending.is_empty() {
            let n = pending.len().min(self.max_batch);
            let batch: Vec<Span> = pending.drain(..n).collect();
            self.send(&batch).await;
        }
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
        let req = build_request(spans, &mut self.resources);
        let result = match &mut self.sink {
            Sink::Print => Ok(()),
            Sink::Grpc { client, headers, timeout } => {
                let mut r = tonic::Request::new(req);
                r.set_timeout(*timeout);
                for (k, v) in headers.iter() {
                    if let (Ok(k), Ok(v)) = (
                        tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
                        v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>(),
                    ) {
                        r.metadata_mut().insert(k, v);
                    }
                }
                client.export(r).await.map(|_| ()).map_err(|e| anyhow!("gRPC export failed: {}", e.message()))
            }
            Sink::Http { client, url, headers, timeout } => {
                let body = Bytes::from(req.encode_to_vec());
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
                    eprintln!("tracer-agent: {e:#}; {} spans dropped (further errors are counted, logged every 30 s)", spans.len());
                    self.last_error_log = Some(now);
                }
            }
        }
    }
}
