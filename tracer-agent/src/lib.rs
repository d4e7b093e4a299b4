//! tracer-agent: zero-instrumentation tracing from kernel socket capture.
//!
//! Data flows one way: kernel event (`capture`) → connection stream
//! (`conntrack`) → protocol message and exchange (`protocol`) → span (`span`)
//! → export (`export`). `pipeline` strings the steps together; `capture`
//! also loads the kernel side.

pub mod capture;
pub mod config;
pub mod conntrack;
pub mod export;
pub mod listeners;
pub mod otlp;
pub mod pipeline;
pub mod protocol;
pub mod resource;
pub mod route;
pub mod runtimes;
pub mod span;
pub mod trace;
