//! Resource attributes per traced process (the OpenTelemetry resource).

use std::collections::HashMap;
use std::sync::Arc;

use crate::span::{Span, Value};

/// Identity of a resource: one per process and service name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceKey {
    pub pid: u32,
    pub service: Arc<str>,
}

pub struct Resources {
    host: String,
    extra: Vec<(String, String)>,
    by_comm: HashMap<String, Arc<str>>,
    by_port: HashMap<u16, Arc<str>>,
    /// service.name from OTEL_RESOURCE_ATTRIBUTES, if any.
    env_service: Option<Arc<str>>,
    exe_cache: HashMap<u32, String>,
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buffer pointer and length are valid.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl Resources {
    pub fn new(extra: Vec<(String, String)>, overrides: Vec<(String, String)>) -> Self {
        let mut by_comm = HashMap::new();
        let mut by_port = HashMap::new();
        for (m, name) in overrides {
            match m.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()) {
                Some(port) => {
                    by_port.insert(port, name.into());
                }
                None => {
                    by_comm.insert(m, name.into());
                }
            }
        }
        let env_service = extra.iter().find(|(k, _)| k == "service.name").map(|(_, v)| Arc::from(v.as_str()));
        Self { host: hostname(), extra, by_comm, by_port, env_service, exe_cache: HashMap::new() }
    }

    fn executable(&mut self, pid: u32, comm: &str) -> String {
        if let Some(e) = self.exe_cache.get(&pid) {
            return e.clone();
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .map(|n| n.trim_end_matches(" (deleted)").to_string())
            .unwrap_or_else(|| comm.to_string());
        if self.exe_cache.len() > 65_536 {
            self.exe_cache.clear();
        }
        self.exe_cache.insert(pid, exe.clone());
        exe
    }

    /// Service name for a span: `--service-name` by server port, then by
    /// executable name, else the process name.
    pub fn key(&self, span: &Span) -> ResourceKey {
        self.key_of(span.pid, &span.comm, span.server_port)
    }

    /// [`Resources::key`] of a span from this process and server port.
    pub fn key_of(&self, pid: u32, comm: &Arc<str>, server_port: Option<u16>) -> ResourceKey {
        let service = server_port
            .and_then(|p| self.by_port.get(&p))
            .or_else(|| if self.by_comm.is_empty() { None } else { self.by_comm.get(&**comm) })
            .or(self.env_service.as_ref())
            .cloned()
            .unwrap_or_else(|| comm.clone());
        ResourceKey { pid, service }
    }

    /// Attributes of a resource; `comm` is the process name seen by the kernel.
    pub fn attributes(&mut self, key: &ResourceKey, comm: &str) -> Vec<(String, Value)> {
        let exe = self.executable(key.pid, comm);
        let mut attrs: Vec<(String, Value)> = vec![
            ("service.name".into(), Value::Shared(key.service.clone())),
            ("service.instance.id".into(), Value::from(format!("{}:{}", self.host, key.pid))),
            ("host.name".into(), Value::from(self.host.clone())),
            ("process.pid".into(), Value::Int(key.pid as i64)),
            ("process.executable.name".into(), Value::from(exe)),
            ("telemetry.sdk.name".into(), Value::from("tracer-agent")),
            ("telemetry.sdk.language".into(), Value::from("rust")),
            ("telemetry.sdk.version".into(), Value::from(env!("CARGO_PKG_VERSION"))),
        ];
        for (k, v) in &self.extra {
            if k == "service.name" {
                continue;
            }
            match attrs.iter_mut().find(|(ak, _)| ak == k) {
                Some(slot) => slot.1 = Value::from(v.clone()),
                None => attrs.push((k.clone(), Value::from(v.clone()))),
            }
        }
        attrs
    }

    /// Forget cached process details (pids are reused).
    pub fn forget(&mut self, pid: u32) {
        self.exe_cache.remove(&pid);
    }
}
