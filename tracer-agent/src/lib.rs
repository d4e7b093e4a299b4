//! tracer-agent: zero-instrumentation tracing from kernel socket capture.
//!
//! Data flows one way: kernel event (`event`) → connection stream
//! (`conntrack`) → protocol message and exchange (`protocol`) → span (`span`)
//! → export (`export`). `pipeline` strings the steps together; `probes`
//! loads the kernel side.

pub mod btf;
pub mod config;
pub mod conntrack;
pub mod event;
pub mod export;
pub mod listeners;
pub mod otlp;
pub mod pipeline;
pub mod probes;
pub mod protocol;
pub mod record;
pub mod resource;
pub mod route;
pub mod span;
