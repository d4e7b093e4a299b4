//! The one-way pipeline: ring-buffer records → events → connection streams →
//! exchanges → spans → the exporter's queue. Runs on one dedicated thread, no
//! locks on the per-event path.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::capture::event::decode;
use crate::conntrack::{Finished, Task, Tracker, TrackerStats};
use crate::export::{EncodedSpans, ExportStats, SpanBatch};
use crate::protocol::Exchange;
use crate::route::RouteMatcher;
use crate::span::{db_span, h2_span, http_span, monotonic_ns, Clock, Span, SpanState, Value};
use crate::trace::Verdict;
use crate::trace::{Assigned, LinkStats, Linker};

/// Where spans go: a bounded queue in front of the exporter. Spans to be
/// exported travel encoded ([`Pipeline::encode_spans`]), and the encoded
/// batches come back to be reused.
pub struct SpanQueue {
    tx: mpsc::Sender<SpanBatch>,
    spare: Arc<SpareBatches>,
    queued: Arc<AtomicUsize>,
    max: usize,
    stats: Arc<ExportStats>,
}

/// The exporter's end of a [`SpanQueue`].
pub struct SpanReceiver {
    rx: mpsc::Receiver<SpanBatch>,
    /// Spans handed over but not yet received.
    queued: Arc<AtomicUsize>,
    spare: Arc<SpareBatches>,
}

impl SpanReceiver {
    /// The next batch; None once the queue is closed and empty.
    pub async fn recv(&mut self) -> Option<SpanBatch> {
        let batch = self.rx.recv().await?;
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        Some(batch)
    }

    /// Return an exported batch for reuse.
    pub fn give_back(&self, batch: EncodedSpans) {
        self.spare.put(batch);
    }
}

impl SpanQueue {
    pub fn new(max: usize, stats: Arc<ExportStats>) -> (Self, SpanReceiver) {
        let (tx, rx) = mpsc::channel(4096);
        let spare = Arc::new(SpareBatches::default());
        let queued = Arc::new(AtomicUsize::new(0));
        (Self { tx, spare: spare.clone(), queued: queued.clone(), max, stats }, SpanReceiver { rx, queued, spare })
    }

    /// An empty batch to encode spans into, reused when one has come back.
    pub fn spare(&self) -> EncodedSpans {
        self.spare.take()
    }

    /// Hand over spans, waiting for room instead of dropping (replay only).
    pub fn push_blocking(&self, batch: SpanBatch) {
        self.send(batch, false);
    }

    /// Hand over spans; when the queue is full they are dropped and counted.
    pub fn push(&self, batch: SpanBatch) {
        self.send(batch, true);
    }

    fn send(&self, batch: SpanBatch, drop_when_full: bool) {
        let n = batch.len();
        if n == 0 {
            return;
        }
        if drop_when_full && self.queued.load(Ordering::Relaxed) + n > self.max {
            self.stats.dropped_queue_full.fetch_add(n as u64, Ordering::Relaxed);
            return;
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        let sent = if drop_when_full { self.tx.try_send(batch).is_ok() } else { self.tx.blocking_send(batch).is_ok() };
        if !sent {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.stats.dropped_queue_full.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Exported batches kept for reuse: a few, of ordinary size (the memory of a
/// burst is given back).
#[derive(Default)]
struct SpareBatches(std::sync::Mutex<Vec<EncodedSpans>>);

/// Most batches kept, and the most room one may hold to be kept.
const SPARE_ENCODED: usize = 8;
const SPARE_ENCODED_BYTES: usize = 1 << 20;

impl SpareBatches {
    fn take(&self) -> EncodedSpans {
        self.0.lock().ok().and_then(|mut spare| spare.pop()).unwrap_or_default()
    }

    fn put(&self, mut batch: EncodedSpans) {
        if batch.capacity() > SPARE_ENCODED_BYTES {
            return;
        }
        batch.clear();
        if let Ok(mut spare) = self.0.lock() {
            if spare.len() < SPARE_ENCODED {
                spare.push(batch);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PipelineStats {
    pub records: u64,
    pub decode_errors: u64,
    pub spans: u64,
    /// Spans given a parent by the agent (peer, thread or forwarded).
    pub linked: u64,
    /// HTTP/2 streams seen only from their response (joined mid-stream).
    pub orphan_streams: u64,
    /// Processes whose Gin routes were read, and that gave none (the
    /// memory read was not a route tree, or no request could be placed).
    pub gin_routes: u64,
    pub gin_failed: u64,
    /// Hits of the Gin probe (it is detached once a process's routes are read).
    pub gin_hits: u64,
    pub tracker: TrackerStats,
    pub connections: usize,
    /// Parents found by the trace linker, by mechanism.
    pub links: LinkStats,
}

/// Gives a span the ids the linker chose, and says how its parent was found.
fn assign(span: &mut Span, a: Assigned) {
    span.trace_id = a.trace_id;
    span.span_id = a.span_id;
    span.parent_span_id = a.parent;
    span.sampled = a.sampled;
    span.links = a.links;
    if let Some(src) = a.source {
        span.parent_remote = !matches!(
            src,
            crate::trace::Source::Thread | crate::trace::Source::ThreadSpawn | crate::trace::Source::Goroutine
        );
        span.attributes.push(("tracer.parent.source", Value::from(src.as_str())));
    }
}

/// What the pipeline asks of the probes' owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoRequest {
    /// Process `pid` runs a Go program: attach the Go probes (and those on
    /// goroutine creation when the flag is set).
    Attach(u32, bool),
    /// The Gin probe of process `pid` has done its job: detach it.
    GinDone(u32),
}

/// Most Gin probe hits in a process that could not be placed on a request
/// before its probe is given up.
const GIN_TRIES: u32 = 256;

/// The record that tells a replay which routes process `pid` serves on
/// local port `port`: one `METHOD template` per line.
fn routes_record(pid: u32, port: u16, routes: &crate::route::TemplateRoutes) -> Vec<u8> {
    let mut text = String::new();
    for (m, t) in routes.iter() {
        if text.len() + m.len() + t.len() + 2 > tracer_common::MAX_CAPTURE * 16 {
            break;
        }
        text.push_str(m);
        text.push(' ');
        text.push_str(t);
        text.push('\n');
    }
    let mut h = tracer_common::EventHeader {
        kind: tracer_common::EventKind::Routes as u32,
        syscall: 0,
        _pad0: 0,
        ts_enter: 0,
        ts_exit: 0,
        pid,
        tid: pid,
        fd: -1,
        captured: 0,
        ret: i64::from(port),
        comm: [0; 16],
        sock: tracer_common::SockInfo::zeroed(),
        goroutine: 0,
    };
    h.comm[..4].copy_from_slice(b"gin\0");
    let mut out = Vec::with_capacity(tracer_common::HEADER_SIZE + text.len());
    crate::capture::event::encode(&h, text.as_bytes(), &mut out);
    out
}

/// The routes of a [`routes_record`]'s payload.
fn parse_routes(payload: &[u8]) -> crate::route::TemplateRoutes {
    let text = String::from_utf8_lossy(payload);
    crate::route::TemplateRoutes::new(
        text.lines().filter_map(|l| l.split_once(' ')).map(|(m, t)| (m.to_string(), t.to_string())),
    )
}

/// The record that tells a replay what the runtime of `pid` is.
fn runtime_record(pid: u32, comm: &str, go: bool) -> Vec<u8> {
    let mut h = tracer_common::EventHeader {
        kind: tracer_common::EventKind::Runtime as u32,
        syscall: 0,
        _pad0: 0,
        ts_enter: 0,
        ts_exit: 0,
        pid,
        tid: pid,
        fd: -1,
        captured: 0,
        ret: i64::from(go),
        comm: [0; 16],
        sock: tracer_common::SockInfo::zeroed(),
        goroutine: 0,
    };
    let n = comm.len().min(15);
    h.comm[..n].copy_from_slice(&comm.as_bytes()[..n]);
    let mut out = Vec::with_capacity(tracer_common::HEADER_SIZE);
    crate::capture::event::encode(&h, &[], &mut out);
    out
}

/// Most spans held for a verdict on their trace at once.
const MAX_HELD: usize = 4096;

pub struct Pipeline {
    /// Raw records are written here before processing, when recording.
    pub recorder: Option<crate::capture::record::Recorder>,
    /// Count records and do nothing else (measures the kernel side alone).
    pub discard: bool,
    /// Report database query text as sent instead of sanitised.
    pub db_full_text: bool,
    pub tracker: Tracker,
    /// Which span is whose parent (HTTP/1 and database spans).
    pub linker: Linker,
    /// Look at each traced process's executable for its runtime (live
    /// runs; a replay has no processes to look at).
    pub inspect_runtimes: bool,
    /// The connection and thread of the send being handled, if it is one:
    /// the thread that writes a response.
    sending: Option<(u64, Task)>,
    routes: RouteMatcher,
    span_state: SpanState,
    clock: Clock,
    exchanges: Vec<Finished>,
    spans: Vec<Span>,
    /// Where Go processes found while tracing are reported (to attach the
    /// Go function probes to their executables).
    pub go_found: Option<tokio::sync::mpsc::UnboundedSender<GoRequest>>,
    /// The Gin route tree layout of the processes with the Gin probe.
    pub gin_layouts: Option<crate::capture::probes::GinLayouts>,
    /// Gin probe hits not placed on a request yet, per process.
    gin_tries: ahash::AHashMap<u32, u32>,
    /// The connection the event being handled closed, if it did.
    closed: Option<(u64, u64)>,
    /// Runtimes learnt while handling the current record, for the recording.
    learnt: Vec<(u32, Arc<str>, bool)>,
    /// Spans of provisional traces (calls of threads made during a
    /// request), held until the linker's verdict on them.
    held: Vec<Span>,
    /// When spans are exported: they are encoded here as soon as they are
    /// made, while their data is still in the CPU cache, and their buffers are
    /// reused at once for the next ones.
    encoded: Option<EncodedSpans>,
    pub stats: PipelineStats,
}

impl Pipeline {
    /// A pipeline from the agent's settings.
    /// The pipeline for these settings, feeding `exporter` (spans it exports
    /// are encoded as they are made).
    pub fn from_args(
        args: &crate::config::Args,
        routes: RouteMatcher,
        clock: Clock,
        exporter: &crate::export::Exporter,
    ) -> Self {
        let mut p = Self::new(
            Tracker::new(args.max_connections, args.connection_idle_secs.saturating_mul(1_000_000_000)),
            routes,
            clock,
        );
        p.db_full_text = args.db_full_query_text;
        if !exporter.prints() {
            p.encode_spans();
        }
        p
    }

    pub fn new(tracker: Tracker, routes: RouteMatcher, clock: Clock) -> Self {
        Self {
            recorder: None,
            discard: false,
            db_full_text: false,
            tracker,
            linker: Linker::default(),
            inspect_runtimes: false,
            sending: None,
            routes,
            span_state: SpanState::default(),
            clock,
            exchanges: Vec::new(),
            spans: Vec::new(),
            held: Vec::new(),
            learnt: Vec::new(),
            closed: None,
            go_found: None,
            gin_layouts: None,
            gin_tries: Default::default(),
            encoded: None,
            stats: PipelineStats::default(),
        }
    }

    /// Handle one raw record.
    pub fn on_record(&mut self, rec: &[u8]) {
        self.stats.records += 1;
        if self.discard {
            if let Some(r) = self.recorder.as_mut() {
                r.write(rec);
            }
            return;
        }
        match decode(rec) {
            Ok(ev) if ev.kind == tracer_common::EventKind::GoProbe => {
                let h = &ev.header;
                // Only Go programs have the probed functions.
                let comm: Arc<str> = crate::capture::event::comm(&h.comm).into();
                if self.linker.runtime_unknown(h.pid, &comm) {
                    self.linker.set_runtime(h.pid, &comm, true);
                    if self.recorder.is_some() {
                        self.learnt.push((h.pid, comm, true));
                    }
                }
                let arg = |i: usize| {
                    ev.payload.get(i * 8..i * 8 + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
                };
                if h.fd as u32 == tracer_common::go_probe::GIN_SERVE {
                    self.stats.gin_hits += 1;
                    self.gin_serve(h.pid, h.goroutine, arg(0), h.ts_exit);
                } else {
                    self.linker.go_probe(
                        h.pid,
                        h.tid,
                        h.goroutine,
                        h.fd as u32,
                        [arg(0), arg(1), arg(2), arg(3)],
                        h.ts_exit,
                    );
                }
            }
            Ok(ev) if ev.kind == tracer_common::EventKind::Context => {
                if let Some(ids) = crate::capture::event::carrier_ids(ev.payload) {
                    self.linker.kernel_ids(ev.header.sock.ino, ev.header.ret, ids);
                }
            }
            Ok(ev) if ev.kind == tracer_common::EventKind::Routes => {
                let port = u16::try_from(ev.header.ret).unwrap_or(0);
                self.routes.set_app(ev.header.pid, port, parse_routes(ev.payload));
            }
            Ok(ev) if ev.kind == tracer_common::EventKind::Runtime => {
                let comm: std::sync::Arc<str> = crate::capture::event::comm(&ev.header.comm).into();
                self.linker.set_runtime(ev.header.pid, &comm, ev.header.ret == 1);
            }
            Ok(ev) if ev.kind == tracer_common::EventKind::Spawn => {
                let h = &ev.header;
                self.linker.spawn(h.pid, h.tid, h.ret as u32, h.ts_exit);
            }
            Ok(ev) if ev.kind == tracer_common::EventKind::ThreadExit => {
                let h = &ev.header;
                self.linker.thread_exit(h.pid, h.tid, h.ts_exit, h.ret == 1);
                if h.ret == 1 {
                    self.routes.forget_process(h.pid);
                }
                self.release_held();
            }
            Ok(ev) => {
                self.tracker.on_event(&ev, &mut self.exchanges);
                if !self.tracker.started.is_empty() {
                    self.start_requests();
                }
                for (ino, from, to) in self.tracker.rekeyed.drain(..) {
                    self.linker.rekey(ev.header.pid, ino, from, to);
                }
                if !self.tracker.evicted.is_empty() {
                    self.linker.forget_connections(&self.tracker.evicted, ev.header.ts_exit);
                    self.tracker.evicted.clear();
                }
                if ev.kind == tracer_common::EventKind::Close {
                    self.closed = Some((ev.header.sock.ino, ev.header.ts_exit));
                }
                self.sending =
                    (ev.kind == tracer_common::EventKind::Send).then_some((ev.header.sock.ino, Task::of(&ev.header)));
            }
            Err(_) => self.stats.decode_errors += 1,
        }
        if !self.linker.go_wanted.is_empty() {
            for pid in self.linker.go_wanted.drain(..) {
                if let Some(tx) = &self.go_found {
                    let _ = tx.send(GoRequest::Attach(pid, true));
                }
            }
        }
        // What was learnt of a process's runtime while handling the record
        // goes first, so that a replay knows it as early as this run did.
        if let Some(r) = self.recorder.as_mut() {
            for (pid, comm, go) in self.learnt.drain(..) {
                r.write(&runtime_record(pid, &comm, go));
            }
            r.write(rec);
        }
        self.make_spans();
        self.sending = None;
        if let Some((ino, ts)) = self.closed.take() {
            self.linker.connection_closed(ino, ts);
        }
    }

    /// The thread writing on connection `ino` in the event being handled
    /// (0: the event is not a send on it).
    fn responder(&self, ino: u64) -> Task {
        match self.sending {
            Some((i, task)) if i == ino => task,
            _ => Task::default(),
        }
    }

    /// Gin's `ServeHTTP` ran in `pid` on goroutine `g` at `t` with engine
    /// `engine`: the engine serves the port of the request that goroutine
    /// is serving. Its routes are read from the process's memory, once, and
    /// the probe let go. (A replay has them from the recording.)
    fn gin_serve(&mut self, pid: u32, g: u64, engine: u64, t: u64) {
        if !self.inspect_runtimes || engine == 0 {
            return;
        }
        let layout = self.gin_layouts.as_ref().and_then(|l| l.lock().ok()?.get(&pid).copied());
        let Some(layout) = layout else { return };
        let Some(port) = self.linker.serving_port(pid, g, t) else {
            let tries = self.gin_tries.entry(pid).or_default();
            *tries += 1;
            if *tries >= GIN_TRIES {
                eprintln!("tracer-agent: Gin process {pid}: no request could be placed on its engine; routes from the heuristic");
                self.gin_finished(pid, false);
            }
            return;
        };
        let read = crate::runtimes::go::gin::ProcMem::open(pid)
            .map_err(|_| "its memory cannot be read")
            .and_then(|mut mem| crate::runtimes::go::gin::read_routes(&mut mem, engine, &layout));
        match read {
            Ok(list) => {
                let routes = crate::route::TemplateRoutes::new(list);
                eprintln!("tracer-agent: Gin process {pid} port {port}: {} routes registered", routes.len());
                if let Some(r) = self.recorder.as_mut() {
                    r.write(&routes_record(pid, port, &routes));
                }
                self.routes.set_app(pid, port, routes);
                self.gin_finished(pid, true);
            }
            Err(why) => {
                eprintln!("tracer-agent: Gin process {pid}: no routes read ({why}); routes from the heuristic");
                self.gin_finished(pid, false);
            }
        }
    }

    fn gin_finished(&mut self, pid: u32, read: bool) {
        self.gin_tries.remove(&pid);
        if let Some(l) = &self.gin_layouts {
            if let Ok(mut l) = l.lock() {
                l.remove(&pid);
            }
        }
        if read {
            self.stats.gin_routes += 1;
        } else {
            self.stats.gin_failed += 1;
        }
        if let Some(tx) = &self.go_found {
            let _ = tx.send(GoRequest::GinDone(pid));
        }
    }

    /// Requests whose heads the last event completed: their ids are chosen now.
    fn start_requests(&mut self) {
        let mut started = std::mem::take(&mut self.tracker.started);
        for s in started.drain(..) {
            if self.inspect_runtimes && self.linker.runtime_unknown(s.meta.pid, &s.meta.comm) {
                let go = crate::runtimes::is_go_process(s.meta.pid);
                self.linker.set_runtime(s.meta.pid, &s.meta.comm, go);
                if go {
                    if let Some(tx) = &self.go_found {
                        let _ = tx.send(GoRequest::Attach(s.meta.pid, false));
                    }
                }
                if self.recorder.is_some() {
                    self.learnt.push((s.meta.pid, s.meta.comm.clone(), go));
                }
            }
            let peer = self.tracker.kind_of(&s.meta.peer_tuple());
            self.linker.start(&s, peer);
        }
        self.tracker.started = started;
    }

    fn make_spans(&mut self) {
        if self.exchanges.is_empty() {
            return;
        }
        let exchanges = std::mem::take(&mut self.exchanges);
        for f in &exchanges {
            let meta = &f.meta;
            match &f.ex {
                Exchange::Http1(ex) => {
                    let mut span = http_span(ex, meta, &self.routes, &mut self.span_state, &self.clock);
                    let end = ex.resp_last_exit.max(ex.req_last_exit);
                    let responder = self.responder(meta.ino);
                    if let Some(a) = self.linker.finish(meta, ex.seq, end, responder) {
                        assign(&mut span, a);
                    }
                    self.emit(span);
                }
                // A stream whose request was sent before the agent joined:
                // nothing is known of the request, so no span (as for an
                // HTTP/1 response without its request).
                Exchange::Http2(ex) if ex.req_first_enter == 0 => self.stats.orphan_streams += 1,
                Exchange::Http2(ex) => {
                    let mut span = h2_span(ex, meta, &self.routes, &mut self.span_state, &self.clock);
                    let end = ex.resp_last_exit.max(ex.req_last_exit);
                    let responder = self.responder(meta.ino);
                    if let Some(a) = self.linker.finish(meta, crate::conntrack::h2_seq(ex.stream_id), end, responder) {
                        assign(&mut span, a);
                    }
                    self.emit(span);
                }
                Exchange::Db(ex) => {
                    let mut span = db_span(ex, meta, &self.clock, &mut self.span_state, self.db_full_text);
                    if f.req_task.tid != 0 {
                        if let Some(a) = self.linker.call(meta.pid, f.req_task, ex.req_first_enter) {
                            assign(&mut span, a);
                        }
                    }
                    self.emit(span);
                }
            }
        }
        self.exchanges = exchanges;
        self.exchanges.clear();
    }

    pub fn expire(&mut self, now_mono: u64) {
        self.linker.expire(now_mono);
        self.tracker.expire(now_mono, &mut self.exchanges);
        self.make_spans();
        self.release_held();
    }

    /// Emit every held span: the verdicts still open are unproven (the
    /// agent is stopping, or the recording ended).
    pub fn flush_held(&mut self) {
        self.linker.settle_all();
        self.release_held();
    }

    /// Emit the held spans whose trace the linker has decided on.
    fn release_held(&mut self) {
        let Some(verdicts) = self.linker.take_verdicts() else { return };
        let verdicts: Vec<_> = verdicts.collect();
        for (p, v) in verdicts {
            let trace = self.linker.trace_of(p);
            let mut i = 0;
            while i < self.held.len() {
                if self.held[i].trace_id != p {
                    i += 1;
                    continue;
                }
                let mut span = self.held.swap_remove(i);
                let spawned = span.attr("tracer.parent.source").and_then(Value::as_str) == Some("thread_spawn");
                match v {
                    Verdict::Linked => {
                        span.trace_id = trace;
                        if spawned {
                            self.linker.stats.by_thread_spawn += 1;
                        }
                    }
                    Verdict::Unproven { link } if spawned => {
                        span.parent_span_id = None;
                        span.parent_remote = false;
                        span.links.clear();
                        if link.1 != [0; 8] {
                            span.links.push(link);
                        }
                        for (k, val) in span.attributes.iter_mut() {
                            if *k == "tracer.parent.source" {
                                *val = Value::from(crate::trace::Source::Ambiguous.as_str());
                            }
                        }
                        self.linker.stats.ambiguous += 1;
                    }
                    Verdict::Unproven { .. } => {}
                    Verdict::NoPeer { parent } => {
                        let by_peer = span.attr("tracer.parent.source").and_then(Value::as_str) == Some("peer");
                        if by_peer && span.parent_span_id == Some(parent) {
                            span.parent_span_id = None;
                            span.parent_remote = false;
                            span.attributes.retain(|(k, _)| *k != "tracer.parent.source");
                        }
                    }
                }
                self.emit_now(span);
            }
        }
    }

    /// Encode spans for export as they are made ([`Pipeline::take_batch`])
    /// rather than keep them ([`Pipeline::take_spans`]).
    pub fn encode_spans(&mut self) {
        self.encoded.get_or_insert_with(EncodedSpans::default);
    }

    fn emit(&mut self, mut span: Span) {
        // Made under a provisional trace that has turned out to be another.
        span.trace_id = self.linker.trace_of(span.trace_id);
        if self.linker.is_pending(&span.trace_id) {
            self.held.push(span);
            if self.held.len() > MAX_HELD {
                let p = self.held[0].trace_id;
                self.linker.settle_now(p);
                self.release_held();
            }
            return;
        }
        self.emit_now(span);
    }

    fn emit_now(&mut self, span: Span) {
        match &mut self.encoded {
            Some(encoded) => {
                encoded.push(&span);
                self.span_state.reuse(span);
            }
            None => self.spans.push(span),
        }
    }

    /// Take the spans made so far.
    pub fn take_spans(&mut self) -> Vec<Span> {
        self.stats.spans += self.spans.len() as u64;
        std::mem::take(&mut self.spans)
    }

    /// Take the spans made so far, encoded if they are; `spare` gives an empty
    /// batch to encode the next ones into. None when there are none.
    /// Spans made and not yet taken.
    pub fn pending_spans(&self) -> usize {
        match &self.encoded {
            Some(encoded) => encoded.len(),
            None => self.spans.len(),
        }
    }

    pub fn take_batch(&mut self, spare: impl FnOnce() -> EncodedSpans) -> Option<SpanBatch> {
        match &mut self.encoded {
            Some(encoded) if !encoded.is_empty() => {
                self.stats.spans += encoded.len() as u64;
                Some(SpanBatch::Encoded(std::mem::replace(encoded, spare())))
            }
            Some(_) => None,
            None if self.spans.is_empty() => None,
            None => Some(SpanBatch::Spans(self.take_spans())),
        }
    }

    pub fn snapshot(&self) -> PipelineStats {
        let mut s = self.stats;
        s.tracker = self.tracker.stats;
        s.connections = self.tracker.len();
        s.links = self.linker.stats;
        s.linked =
            s.links.by_peer + s.links.by_thread + s.links.by_thread_spawn + s.links.by_goroutine + s.links.by_forwarded;
        s
    }
}

/// How far behind "now" records from per-CPU rings are held back before
/// processing, so that a record another CPU was still writing while the rings
/// were drained cannot be overtaken by a later one.
const MERGE_DELAY_NS: u64 = 20_000_000;
/// Most records taken from one ring per drain round.
const DRAIN_BATCH: usize = 8192;
/// Spans are handed to the exporter once this many are waiting, or this long
/// after the last hand-over.
const HAND_OVER_SPANS: usize = 1024;
const HAND_OVER_EVERY: Duration = Duration::from_millis(50);

/// Records from several rings, released in time order.
///
/// Records are copied out of the rings once, into one chunk per drain round,
/// and stay where they are until released: a record held back for a few
/// rounds is not copied again each round. A chunk is reused once all of its
/// records are released, which happens in about the order they came.
#[derive(Default)]
pub struct Merger {
    /// One per round with records, oldest first; `chunks[0]` is round `first`.
    chunks: std::collections::VecDeque<Chunk>,
    first: u32,
    /// The back chunk takes this round's records.
    round_open: bool,
    /// (exit timestamp, round, start in its chunk, length)
    index: Vec<(u64, u32, u32, u32)>,
    spare: Vec<Vec<u8>>,
}

#[derive(Default)]
struct Chunk {
    bytes: Vec<u8>,
    /// Records not yet released.
    live: usize,
}

/// Rounds kept at most. Records are held back for a few rounds at most
/// (`MERGE_DELAY_NS` over the drain interval); beyond this, one whose time
/// lies in the future would pin memory, so everything held is released.
const MAX_ROUNDS_HELD: usize = 64;

impl Merger {
    pub fn push(&mut self, rec: &[u8]) {
        let ts =
            rec.get(16..24).map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])).unwrap_or(0);
        if !self.round_open || self.chunks.is_empty() {
            let bytes = self.spare.pop().unwrap_or_default();
            self.chunks.push_back(Chunk { bytes, live: 0 });
            self.round_open = true;
        }
        let round = self.first.wrapping_add(self.chunks.len() as u32 - 1);
        let Some(chunk) = self.chunks.back_mut() else { return };
        let start = chunk.bytes.len();
        chunk.bytes.extend_from_slice(rec);
        chunk.live += 1;
        self.index.push((ts, round, start as u32, rec.len() as u32));
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Hand every record with a timestamp up to `horizon` to `f`, oldest
    /// first. Records pushed after this go to a new round.
    pub fn release(&mut self, horizon: u64, mut f: impl FnMut(&[u8])) -> usize {
        self.round_open = false;
        if self.index.is_empty() {
            return 0;
        }
        let horizon = if self.chunks.len() > MAX_ROUNDS_HELD { u64::MAX } else { horizon };
        // Stable, and what is held from earlier rounds is already in order.
        self.index.sort_by_key(|e| e.0);
        let cut = self.index.partition_point(|e| e.0 <= horizon);
        for &(_, round, start, len) in &self.index[..cut] {
            let i = round.wrapping_sub(self.first) as usize;
            if let Some(chunk) = self.chunks.get_mut(i) {
                let (start, len) = (start as usize, len as usize);
                if let Some(rec) = chunk.bytes.get(start..start + len) {
                    f(rec);
                }
                chunk.live -= 1;
            }
        }
        self.index.drain(..cut);
        while self.chunks.front().is_some_and(|c| c.live == 0) {
            if let Some(mut c) = self.chunks.pop_front() {
                c.bytes.clear();
                // Keep a few, of ordinary size.
                if self.spare.len() < 4 && c.bytes.capacity() <= 4 << 20 {
                    self.spare.push(c.bytes);
                }
            }
            self.first = self.first.wrapping_add(1);
        }
        cut
    }
}

/// How long the drain loop sleeps between rounds. Each wake-up has a cost
/// beyond its own work (a context switch, caches refilled, the traced
/// services' CPU shared once more), so the loop sleeps as long as the rings
/// allow: `MAX` while the fullest ring was found under a 32nd full, halving
/// down to `MIN` when one was found over an eighth full, so that a burst
/// never comes near filling a ring.
#[derive(Debug)]
pub struct DrainPace {
    interval: Duration,
    ring_bytes: usize,
}

impl DrainPace {
    pub const MIN: Duration = Duration::from_millis(1);
    pub const MAX: Duration = Duration::from_millis(20);
    const STEP: Duration = Duration::from_millis(1);

    pub fn new(ring_bytes: usize) -> Self {
        Self { interval: Self::MAX, ring_bytes: ring_bytes.max(1) }
    }

    /// The sleep before the next round, given the most bytes one ring held
    /// in the round just drained.
    pub fn next(&mut self, fullest: usize) -> Duration {
        if fullest > self.ring_bytes / 8 {
            self.interval = (self.interval / 2).max(Self::MIN);
        } else if fullest < self.ring_bytes / 32 {
            self.interval = (self.interval + Self::STEP).min(Self::MAX);
        }
        self.interval
    }
}

/// Drain the ring buffers until `stop` is set; polls on a timer paced by
/// [`DrainPace`] (the probes never wake the reader). With one ring per
/// CPU, records are merged by timestamp before processing.
pub fn run(
    mut rings: Vec<aya::maps::RingBuf<aya::maps::MapData>>,
    mut p: Pipeline,
    queue: SpanQueue,
    stop: Arc<AtomicBool>,
    shared: Arc<std::sync::Mutex<PipelineStats>>,
) {
    let mut last_expire = Instant::now();
    let mut last_stats = Instant::now();
    let mut last_hand_over = Instant::now();
    let mut merger = Merger::default();
    let merge = rings.len() > 1;
    let mut pace =
        DrainPace::new(
            if merge { tracer_common::PER_CPU_RING_BYTES } else { tracer_common::SHARED_RING_BYTES } as usize
        );
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let horizon = if stopping { u64::MAX } else { monotonic_ns().saturating_sub(MERGE_DELAY_NS) };
        // A ring cut off at DRAIN_BATCH has more waiting: go round again at
        // once. Otherwise sleep, so that records are handled in bursts.
        let mut more = false;
        let mut fullest = 0usize;
        for ring in rings.iter_mut() {
            let mut k = 0usize;
            let mut bytes = 0usize;
            while let Some(item) = ring.next() {
                // Each record takes an 8-byte header and is padded to 8.
                bytes += 8 + item.len().next_multiple_of(8);
                if merge {
                    merger.push(&item);
                } else {
                    p.on_record(&item);
                }
                k += 1;
                if k >= DRAIN_BATCH {
                    more = true;
                    break;
                }
            }
            fullest = fullest.max(bytes);
        }
        let sleep = pace.next(if more { usize::MAX } else { fullest });
        if merge {
            merger.release(horizon, |rec| p.on_record(rec));
        }
        if last_expire.elapsed() >= Duration::from_secs(1) {
            p.expire(monotonic_ns());
            last_expire = Instant::now();
        }
        // Spans go over in batches: each hand-over wakes the exporter.
        if p.pending_spans() >= HAND_OVER_SPANS || last_hand_over.elapsed() >= HAND_OVER_EVERY || stopping {
            hand_over(&mut p, &queue, false);
            last_hand_over = Instant::now();
        }
        if last_stats.elapsed() >= Duration::from_millis(500) {
            if let Ok(mut s) = shared.lock() {
                *s = p.snapshot();
            }
            last_stats = Instant::now();
        }
        if !more {
            if stopping && merger.is_empty() {
                break;
            }
            std::thread::sleep(sleep);
        }
    }
    p.flush_held();
    hand_over(&mut p, &queue, false);
    if let Some(r) = p.recorder.as_mut() {
        r.flush();
    }
    if let Ok(mut s) = shared.lock() {
        *s = p.snapshot();
    }
}

/// Feed a recorded event stream through the pipeline as fast as possible.
pub fn replay(
    mut file: crate::capture::record::Replay,
    mut p: Pipeline,
    queue: &SpanQueue,
) -> anyhow::Result<PipelineStats> {
    let mut n = 0u64;
    // Time passes as the records say: what a live run lets go of once a
    // second is let go of here at the same points of the stream.
    let mut last_expire = 0u64;
    while let Some(rec) = file.next_record()? {
        let ts = rec.get(16..24).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
        if last_expire == 0 {
            last_expire = ts;
        }
        if ts >= last_expire.saturating_add(1_000_000_000) {
            p.expire(ts);
            last_expire = ts;
        }
        p.on_record(rec);
        n += 1;
        if n.is_multiple_of(1024) {
            hand_over(&mut p, queue, true);
        }
    }
    p.flush_held();
    hand_over(&mut p, queue, true);
    Ok(p.snapshot())
}

/// Move the spans made so far to the queue (`wait`: for room, else they are
/// dropped when it is full).
fn hand_over(p: &mut Pipeline, queue: &SpanQueue, wait: bool) {
    if let Some(batch) = p.take_batch(|| queue.spare()) {
        if wait {
            queue.push_blocking(batch);
        } else {
            queue.push(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Merger;

    fn rec(ts: u64, tag: u8) -> Vec<u8> {
        let mut r = vec![0u8; 24];
        r[16..24].copy_from_slice(&ts.to_le_bytes());
        r.push(tag);
        r
    }

    #[test]
    fn drain_pace_backs_off_under_load_and_returns_to_the_maximum() {
        use super::DrainPace;
        let mut p = DrainPace::new(1 << 20);
        assert_eq!(p.next(0), DrainPace::MAX);
        // Over an eighth full: halves each round, down to the minimum.
        let mut last = DrainPace::MAX;
        for _ in 0..10 {
            let d = p.next((1 << 20) / 4);
            assert!(d <= last / 2 || d == DrainPace::MIN, "{d:?} after {last:?}");
            last = d;
        }
        assert_eq!(last, DrainPace::MIN);
        // Between a 32nd and an eighth: holds.
        assert_eq!(p.next((1 << 20) / 16), DrainPace::MIN);
        // Nearly empty: grows back a step at a time.
        let mut rounds = 0;
        while p.next(100) < DrainPace::MAX {
            rounds += 1;
            assert!(rounds < 100);
        }
        assert_eq!(rounds, 18);
        // A round cut short (more waiting) counts as full.
        assert_eq!(p.next(usize::MAX), DrainPace::MAX / 2);
    }

    #[test]
    fn merger_releases_in_time_order_up_to_the_horizon() {
        let mut m = Merger::default();
        for (ts, tag) in [(30, 3), (10, 1), (50, 5), (20, 2), (40, 4)] {
            m.push(&rec(ts, tag));
        }
        let mut out = Vec::new();
        assert_eq!(m.release(35, |r| out.push(r[24])), 3);
        assert_eq!(out, vec![1, 2, 3]);
        m.push(&rec(36, 6));
        assert_eq!(m.release(u64::MAX, |r| out.push(r[24])), 3);
        assert_eq!(out, vec![1, 2, 3, 6, 4, 5]);
        assert!(m.is_empty());
    }

    #[test]
    fn merger_keeps_held_records_across_rounds_and_reuses_chunks() {
        let mut m = Merger::default();
        let mut out = Vec::new();
        // Each round brings records; the horizon trails two rounds behind.
        for round in 0..50u64 {
            for k in 0..3u64 {
                let ts = round * 10 + k * 3;
                m.push(&rec(ts, (ts % 251) as u8));
            }
            m.release((round * 10).saturating_sub(20), |r| out.push(r[24]));
            assert!(m.chunks.len() <= 4, "round {round}: {} chunks", m.chunks.len());
        }
        m.release(u64::MAX, |r| out.push(r[24]));
        let want: Vec<u8> = (0..50u64).flat_map(|r| (0..3u64).map(move |k| ((r * 10 + k * 3) % 251) as u8)).collect();
        assert_eq!(out, want);
        assert!(m.is_empty() && m.chunks.is_empty());
    }

    #[test]
    fn merger_lets_go_of_a_record_from_the_future() {
        let mut m = Merger::default();
        let mut out = Vec::new();
        m.push(&rec(u64::MAX - 1, 9));
        for round in 0..(super::MAX_ROUNDS_HELD as u64 + 2) {
            m.push(&rec(round, 1));
            m.release(round, |r| out.push(r[24]));
        }
        assert!(out.contains(&9));
        assert!(m.chunks.len() <= super::MAX_ROUNDS_HELD + 1);
    }
}
