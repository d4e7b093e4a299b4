//! The trace printer: each finished trace as an indented tree of its spans
//! (service, kind, name, status, duration, and how each parent was found),
//! printed once no span of the trace has arrived for a quiet period.
//!
//! A span whose parent is not among the trace's spans (made outside the
//! traced processes, or not seen) starts a tree of its own, and says so.

use std::time::{Duration, Instant};

use ahash::AHashMap as HashMap;

use crate::span::{hex, Span, Value};

/// How long a trace must have been quiet to be printed.
pub const QUIET: Duration = Duration::from_secs(1);
/// Most traces held at once; beyond it the one quiet longest is printed.
const MAX_TRACES: usize = 10_000;

struct Node {
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    start: u64,
    line: String,
}

struct Pending {
    last: Instant,
    nodes: Vec<Node>,
}

/// Spans waiting, by trace, to be printed as trees.
#[derive(Default)]
pub struct Trees {
    traces: HashMap<[u8; 16], Pending>,
}

impl Trees {
    /// Adds a span, described by `line` (see `export::short_line`).
    pub fn add(&mut self, s: &Span, mut line: String, now: Instant) -> Option<String> {
        if let Some(Value::Str(src)) = s.attr("tracer.parent.source") {
            line.push_str(&format!(" [{src}]"));
        }
        if !s.links.is_empty() {
            let links: Vec<String> = s.links.iter().map(|(_, id)| hex(id)).collect();
            line.push_str(&format!(" links={}", links.join(",")));
        }
        let p = self.traces.entry(s.trace_id).or_insert_with(|| Pending { last: now, nodes: Vec::new() });
        p.last = now;
        p.nodes.push(Node { span_id: s.span_id, parent: s.parent_span_id, start: s.start_unix_ns, line });
        if self.traces.len() > MAX_TRACES {
            let oldest = self.traces.iter().min_by_key(|(_, p)| p.last).map(|(t, _)| *t)?;
            let p = self.traces.remove(&oldest)?;
            return Some(render(&oldest, p.nodes));
        }
        None
    }

    /// The traces quiet for at least `quiet` (all of them when `all`),
    /// rendered in the order they began.
    pub fn take_quiet(&mut self, now: Instant, quiet: Duration, all: bool) -> Vec<String> {
        let mut ready: Vec<([u8; 16], u64)> = self
            .traces
            .iter()
            .filter(|(_, p)| all || now.saturating_duration_since(p.last) >= quiet)
            .map(|(t, p)| (*t, p.nodes.iter().map(|n| n.start).min().unwrap_or(0)))
            .collect();
        ready.sort_by_key(|(_, start)| *start);
        ready.into_iter().filter_map(|(t, _)| self.traces.remove(&t).map(|p| render(&t, p.nodes))).collect()
    }

    pub fn len(&self) -> usize {
        self.traces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }
}

/// One trace as an indented tree, children in start order.
fn render(trace_id: &[u8; 16], mut nodes: Vec<Node>) -> String {
    nodes.sort_by_key(|n| n.start);
    let ids: std::collections::HashSet<[u8; 8]> = nodes.iter().map(|n| n.span_id).collect();
    let mut out =
        format!("trace {} ({} span{})\n", hex(trace_id), nodes.len(), if nodes.len() == 1 { "" } else { "s" });
    let mut done = vec![false; nodes.len()];
    fn walk(i: usize, depth: usize, nodes: &[Node], done: &mut [bool], out: &mut String) {
        if done[i] {
            return;
        }
        done[i] = true;
        out.push_str(&"  ".repeat(depth + 1));
        out.push_str(&nodes[i].line);
        out.push('\n');
        for j in 0..nodes.len() {
            if nodes[j].parent == Some(nodes[i].span_id) {
                walk(j, depth + 1, nodes, done, out);
            }
        }
    }
    for i in 0..nodes.len() {
        let root = match nodes[i].parent {
            None => true,
            Some(p) => !ids.contains(&p),
        };
        if root && !done[i] {
            if let Some(p) = nodes[i].parent {
                nodes[i].line.push_str(&format!(" (parent {} not among these spans)", hex(&p)));
            }
            walk(i, 0, &nodes, &mut done, &mut out);
        }
    }
    // Spans in a cycle of parents (not made by this agent) still show.
    for i in 0..nodes.len() {
        walk(i, 0, &nodes, &mut done, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u8, parent: Option<u8>, start: u64) -> Node {
        Node { span_id: [id; 8], parent: parent.map(|p| [p; 8]), start, line: format!("span{id}") }
    }

    #[test]
    fn a_trace_prints_as_a_tree_in_start_order() {
        let nodes = vec![
            node(3, Some(2), 30),
            node(1, None, 10),
            node(2, Some(1), 20),
            node(4, Some(1), 25),
            node(5, Some(9), 40),
        ];
        let text = render(&[0xab; 16], nodes);
        let want = format!(
            "trace {} (5 spans)\n  span1\n    span2\n      span3\n    span4\n  span5 (parent 0909090909090909 not among these spans)\n",
            "ab".repeat(16)
        );
        assert_eq!(text, want);
    }

    #[test]
    fn traces_wait_for_quiet() {
        let mut t = Trees::default();
        let now = Instant::now();
        let span = |trace: u8, id: u8| Span {
            trace_id: [trace; 16],
            span_id: [id; 8],
            parent_span_id: None,
            sampled: true,
            name: String::new(),
            kind: crate::span::SpanKind::Server,
            start_unix_ns: id as u64,
            end_unix_ns: id as u64 + 1,
            attributes: Vec::new(),
            status: crate::span::Status::Unset,
            pid: 1,
            comm: "x".into(),
            server_port: None,
            links: Vec::new(),
            parent_remote: true,
        };
        t.add(&span(1, 1), "a".into(), now);
        t.add(&span(2, 2), "b".into(), now + Duration::from_millis(900));
        let ready = t.take_quiet(now + Duration::from_millis(1000), QUIET, false);
        assert_eq!(ready.len(), 1);
        assert!(ready[0].contains("  a\n"));
        assert_eq!(t.len(), 1);
        assert_eq!(t.take_quiet(now, QUIET, true).len(), 1);
        assert!(t.is_empty());
    }
}
