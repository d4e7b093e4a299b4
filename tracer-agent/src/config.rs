//! Command line and OpenTelemetry environment configuration.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Zero-instrumentation tracer: captures TCP traffic with eBPF, turns HTTP/1.x
/// exchanges into OpenTelemetry spans and exports them over OTLP (or prints
/// one line per span when no exporter is configured).
#[derive(Parser, Debug, Clone)]
#[command(name = "tracer-agent", version, about, long_about = None)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// OTLP base endpoint, e.g. http://collector:4317 (grpc) or http://collector:4318 (http/protobuf).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Full OTLP traces endpoint (used as is; overrides --otlp-endpoint).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otlp_traces_endpoint: Option<String>,
    /// OTLP protocol: grpc or http/protobuf.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "http/protobuf")]
    pub otlp_protocol: String,
    /// Protocol for traces only (overrides --otlp-protocol).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", hide = true)]
    pub otlp_traces_protocol: Option<String>,
    /// Extra export headers, `key=value,key2=value2` (values URL-encoded).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS")]
    pub otlp_headers: Option<String>,
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_HEADERS", hide = true)]
    pub otlp_traces_headers: Option<String>,
    /// Export timeout in milliseconds.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", default_value_t = 10_000)]
    pub otlp_timeout_ms: u64,
    /// Resource attributes added to every process, `key=value,...`.
    #[arg(long, env = "OTEL_RESOURCE_ATTRIBUTES")]
    pub resource_attributes: Option<String>,
    /// Delay between two batch exports, in milliseconds.
    #[arg(long, env = "OTEL_BSP_SCHEDULE_DELAY", default_value_t = 5_000)]
    pub bsp_schedule_delay_ms: u64,
    /// Spans kept waiting for export; more are dropped (and counted).
    #[arg(long, env = "OTEL_BSP_MAX_QUEUE_SIZE", default_value_t = 65_536)]
    pub bsp_max_queue_size: usize,
    /// Largest number of spans in one export request.
    #[arg(long, env = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", default_value_t = 4_096)]
    pub bsp_max_export_batch_size: usize,
    /// Print spans on stdout (the default when no endpoint is set).
    #[arg(long)]
    pub print: bool,
    /// How printed spans look: one line per span, or each trace as a tree.
    #[arg(long, value_enum, env = "TRACER_PRINT_FORMAT", default_value = "lines")]
    pub print_format: crate::export::PrintFormat,
    /// Attach the Go function probes (uprobes on net/http and the Go
    /// runtime) to Go programs, so that their calls are linked to the
    /// requests they serve; without them a Go handler's own queries are
    /// still linked.
    #[arg(long, env = "TRACER_GO_PROBES", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub go_probes: bool,
    /// Trace only these process ids (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Never trace these process ids (repeatable).
    #[arg(long = "exclude-pid", value_name = "PID")]
    pub exclude_pids: Vec<u32>,
    /// Trace only processes with this executable name (comm, first 15 bytes; repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Never trace processes with this executable name (repeatable).
    #[arg(long = "exclude-comm", value_name = "NAME")]
    pub exclude_comms: Vec<String>,
    /// Trace only connections whose local or remote port is PORT (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Never trace connections whose local or remote port is PORT (repeatable).
    #[arg(long = "exclude-port", value_name = "PORT")]
    pub exclude_ports: Vec<u16>,
    /// Payload bytes captured per socket read or write (at most 4096).
    #[arg(long, default_value_t = tracer_common::DEFAULT_CAPTURE, value_parser = clap::value_parser!(u32).range(64..=4096))]
    pub capture_bytes: u32,
    /// Route template for http.route, e.g. `/users/{id}/orders` or `/static/*` (repeatable).
    #[arg(long = "route", value_name = "PATTERN")]
    pub routes: Vec<String>,
    /// Service name override: `NAME=SERVICE` (executable name) or `:PORT=SERVICE` (server port; repeatable).
    #[arg(long = "service-name", value_name = "MATCH=SERVICE")]
    pub service_names: Vec<String>,
    /// Most connections tracked at once; the least recently active are dropped beyond it.
    #[arg(long, default_value_t = 16_384)]
    pub max_connections: usize,
    /// Seconds without traffic after which a connection is forgotten.
    #[arg(long, default_value_t = 300)]
    pub connection_idle_secs: u64,
    /// Report database query text exactly as sent (default: literals replaced by `?`).
    #[arg(long)]
    pub db_full_query_text: bool,
    /// How trace context is carried to the agent on the next host: `none`,
    /// or `tcp-option` (a TCP header option on the segments of each request
    /// a traced process sends; both hosts must run the agent with it, and a
    /// middlebox may strip it).
    #[arg(long, value_enum, env = "TRACER_TRACE_CARRIER", default_value = "none")]
    pub trace_carrier: crate::capture::probes::Carrier,
    /// Ring buffer layout between probes and agent.
    #[arg(long = "ring-buffer", value_enum, default_value = "shared")]
    pub ring_buffer: crate::capture::probes::RingMode,
    /// Also write every raw kernel event to FILE (for `--replay` and bug reports).
    #[arg(long, value_name = "FILE", env = "TRACER_RECORD")]
    pub record: Option<std::path::PathBuf>,
    /// Do not load probes: feed the events recorded in FILE through the pipeline, export, print figures and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "record")]
    pub replay: Option<std::path::PathBuf>,
    /// Drain kernel events and discard them (measures the kernel side alone).
    #[arg(long, hide = true)]
    pub discard: bool,
    /// Treat this probe program as rejected by the kernel (tests the fallback ladder; repeatable).
    #[arg(long = "reject-program", value_name = "PROGRAM", hide = true)]
    pub reject_programs: Vec<String>,
    /// Print agent health counters to stderr every N seconds (0: only at exit).
    #[arg(long, default_value_t = 0)]
    pub stats_interval_secs: u64,
}

/// What to do instead of tracing.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Report what this host offers and what the agent would use (kernel,
    /// BTF, privileges, every probe tried, the verifier's figures of each
    /// program), without starting the pipeline. Exits 0 only when the agent
    /// can run here.
    Doctor,
    /// Show what the agent reads from a Go executable: its Go and gRPC-Go
    /// versions, where the Go probes would attach, and the struct field
    /// offsets they read through, from its DWARF and from the agent's
    /// table, each on its own. Needs no privileges.
    GoInfo {
        /// The executable.
        path: std::path::PathBuf,
    },
}

/// Resolved exporter settings.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    pub protocol: Protocol,
    /// Full URL: for HTTP the `/v1/traces` URL, for gRPC the server URI.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse a W3C-baggage-like `k=v,k2=v2` list as used by `OTEL_RESOURCE_ATTRIBUTES`
/// and `OTEL_EXPORTER_OTLP_HEADERS`.
pub fn parse_kv_list(s: &str, what: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').with_context(|| format!("{what}: `{item}` is not key=value"))?;
        let k = k.trim();
        if k.is_empty() {
            bail!("{what}: empty key in `{item}`");
        }
        out.push((percent_decode(k), percent_decode(v.trim())));
    }
    Ok(out)
}

impl Args {
    pub fn protocol(&self) -> Result<Protocol> {
        let p = self.otlp_traces_protocol.as_deref().unwrap_or(&self.otlp_protocol);
        match p.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => bail!("OTLP protocol http/json is not supported; use grpc or http/protobuf"),
            other => bail!("unknown OTLP protocol `{other}`; use grpc or http/protobuf"),
        }
    }

    /// Exporter settings, or None when spans should only be printed.
    pub fn export(&self) -> Result<Option<ExportConfig>> {
        let protocol = self.protocol()?;
        let url = match (&self.otlp_traces_endpoint, &self.otlp_endpoint) {
            (Some(t), _) if !t.trim().is_empty() => t.trim().to_string(),
            (_, Some(base)) if !base.trim().is_empty() => {
                let base = base.trim().trim_end_matches('/');
                match protocol {
                    Protocol::HttpProtobuf => format!("{base}/v1/traces"),
                    Protocol::Grpc => base.to_string(),
                }
            }
            _ => return Ok(None),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("OTLP endpoint `{url}` must start with http:// or https://");
        }
        if url.starts_with("https://") {
            bail!("OTLP endpoint `{url}`: TLS export is not supported yet; use an http:// endpoint (e.g. a local collector)");
        }
        let mut headers = Vec::new();
        if let Some(h) = &self.otlp_headers {
            headers.extend(parse_kv_list(h, "OTEL_EXPORTER_OTLP_HEADERS")?);
        }
        if let Some(h) = &self.otlp_traces_headers {
            headers.extend(parse_kv_list(h, "OTEL_EXPORTER_OTLP_TRACES_HEADERS")?);
        }
        Ok(Some(ExportConfig { protocol, url, headers, timeout: Duration::from_millis(self.otlp_timeout_ms.max(1)) }))
    }

    pub fn resource_attributes(&self) -> Result<Vec<(String, String)>> {
        match &self.resource_attributes {
            Some(s) => parse_kv_list(s, "OTEL_RESOURCE_ATTRIBUTES"),
            None => Ok(Vec::new()),
        }
    }

    /// `(match, service)` pairs from `--service-name`.
    pub fn service_names(&self) -> Result<Vec<(String, String)>> {
        self.service_names
            .iter()
            .map(|s| {
                let (m, n) = s.split_once('=').with_context(|| format!("--service-name `{s}` is not MATCH=SERVICE"))?;
                if m.is_empty() || n.is_empty() {
                    bail!("--service-name `{s}`: both sides of `=` must be non-empty");
                }
                if let Some(p) = m.strip_prefix(':') {
                    p.parse::<u16>().with_context(|| format!("--service-name `{s}`: `{p}` is not a port"))?;
                }
                Ok((m.to_string(), n.to_string()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["tracer-agent"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap()
    }

    #[test]
    fn http_endpoint_gets_signal_path() {
        let a = args(&["--otlp-endpoint", "http://c:4318/", "--otlp-protocol", "http/protobuf"]);
        assert_eq!(a.export().unwrap().unwrap().url, "http://c:4318/v1/traces");
        let a = args(&["--otlp-endpoint", "http://c:4317", "--otlp-protocol", "grpc"]);
        assert_eq!(a.export().unwrap().unwrap().url, "http://c:4317");
        let a = args(&["--otlp-traces-endpoint", "http://c:4318/custom"]);
        assert_eq!(a.export().unwrap().unwrap().url, "http://c:4318/custom");
    }

    #[test]
    fn bad_protocol_is_one_clear_error() {
        let a = args(&["--otlp-endpoint", "http://c:4318", "--otlp-protocol", "udp"]);
        assert!(a.export().unwrap_err().to_string().contains("unknown OTLP protocol"));
    }

    #[test]
    fn kv_lists_decode() {
        let kv = parse_kv_list("a=b, c = d%2Ce ,", "x").unwrap();
        assert_eq!(kv, vec![("a".into(), "b".into()), ("c".into(), "d,e".into())]);
        assert!(parse_kv_list("novalue", "x").is_err());
    }
}
