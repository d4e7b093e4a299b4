//! The one-way pipeline: ring-buffer records → events → connection streams →
//! exchanges → spans → the exporter's queue. Runs on one dedicated thread, no
//! locks on the per-event path.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::conntrack::{Tracker, TrackerStats};
use crate::event::decode;
use crate::export::ExportStats;
use crate::protocol::http1::Exchange;
use crate::route::RouteMatcher;
use crate::span::{http_span, Clock, ConnMeta, Span};

/// Where spans go: a bounded queue in front of the exporter.
pub struct SpanQueue {
    tx: mpsc::Sender<Vec<Span>>,
    queued: Arc<AtomicUsize>,
    max: usize,
    stats: Arc<ExportStats>,
}

impl SpanQueue {
    pub fn new(max: usize, stats: Arc<ExportStats>) -> (Self, mpsc::Receiver<Vec<Span>>, Arc<AtomicUsize>) {
        let (tx, rx) = mpsc::channel(4096);
        let queued = Arc::new(AtomicUsize::new(0));
        (Self { tx, queued: queued.clone(), max, stats }, rx, queued)
    }

    pub fn push(&self, spans: Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        let n = spans.len();
        if self.queued.load(Ordering::Relaxed) + n > self.max {
            self.stats.dropped_queue_full.fetch_add(n as u64, Ordering::Relaxed);
            return;
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        if self.tx.try_send(spans).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.stats.dropped_queue_full.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PipelineStats {
    pub records: u64,
    pub decode_errors: u64,
    pub spans: u64,
    pub tracker: TrackerStats,
    pub connections: usize,
}

pub struct Pipeline {
    pub tracker: Tracker,
    routes: RouteMatcher,
    clock: Clock,
    exchanges: Vec<(ConnMeta, Exchange)>,
    spans: Vec<Span>,
    pub stats: PipelineStats,
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Pipeline {
    pub fn new(tracker: Tracker, routes: RouteMatcher, clock: Clock) -> Self {
        Self { tracker, routes, clock, exchanges: Vec::new(), spans: Vec::new(), stats: PipelineStats::default() }
    }

    /// Handle one raw record.
    pub fn on_record(&mut self, rec: &[u8]) {
        self.stats.records += 1;
        match decode(rec) {
            Ok(ev) => self.tracker.on_event(&ev, &mut self.exchanges),
            Err(_) => self.stats.decode_errors += 1,
        }
        self.make_spans();
    }

    fn make_spans(&mut self) {
        for (meta, ex) in self.exchanges.drain(..) {
            self.spans.push(http_span(&ex, &meta, &self.routes, &self.clock));
        }
    }

    pub fn expire(&mut self, now_mono: u64) {
        self.tracker.expire(now_mono, &mut self.exchanges);
        self.make_spans();
    }

    /// Take the spans made so far.
    pub fn take_spans(&mut self) -> Vec<Span> {
        self.stats.spans += self.spans.len() as u64;
        std::mem::take(&mut self.spans)
    }

    pub fn snapshot(&self) -> PipelineStats {
        let mut s = self.stats;
        s.tracker = self.tracker.stats;
        s.connections = self.tracker.len();
        s
    }
}

/// Drain the ring buffer until `stop` is set; polls every few milliseconds
/// (the probes never wake the reader for single events).
pub fn run(
    mut ring: aya::maps::RingBuf<aya::maps::MapData>,
    mut p: Pipeline,
    queue: SpanQueue,
    stop: Arc<AtomicBool>,
    shared: Arc<std::sync::Mutex<PipelineStats>>,
) {
    let mut last_expire = Instant::now();
    let mut last_stats = Instant::now();
    loop {
        let mut n = 0usize;
        while let Some(item) = ring.next() {
            p.on_record(&item);
            n += 1;
            if n >= 8192 {
                break;
            }
        }
        queue.push(p.take_spans());
        if last_expire.elapsed() >= Duration::from_secs(1) {
            p.expire(monotonic_ns());
            queue.push(p.take_spans());
            last_expire = Instant::now();
        }
        if last_stats.elapsed() >= Duration::from_millis(500) {
            if let Ok(mut s) = shared.lock() {
                *s = p.snapshot();
            }
            last_stats = Instant::now();
        }
        if n == 0 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if let Ok(mut s) = shared.lock() {
        *s = p.snapshot();
    }
}
