//! Trace assembly: which span is whose parent, and how that was found.
//!
//! In: requests as their heads are seen (`conntrack::Started`) and finished
//! exchanges; out: each span's trace id, span id, parent or links, and the
//! provenance of the parent (`tracer.parent.source`). The ids of linked
//! spans are chosen here (`context::Linker`), when the request starts, so
//! that what a request causes can name it before it ends.

pub mod context;

pub use context::{Assigned, LinkStats, Linker, Source, Verdict};
