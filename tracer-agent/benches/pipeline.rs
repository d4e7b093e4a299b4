//! The user-space pipeline without the kernel: encoded kernel events →
//! decode → streams → HTTP/1 → exchanges → spans → OTLP request bytes.
//!
//! The events are what the probes deliver for an nginx server answering
//! keep-alive requests on 16 connections (one receive and one send per
//! request). Run with `cargo bench -p tracer-agent --bench pipeline [-- N]`
//! (N requests, default 200000). `cargo xtask test` runs it under callgrind
//! and checks the instructions per event against `xtask/bench/pipeline-budget`:
//! instruction counts, unlike times, repeat exactly on a shared machine.

use std::hint::black_box;

use tracer_agent::capture::event::encode;
use tracer_agent::conntrack::Tracker;
use tracer_agent::export::{encode_request, EncodedSpans, SpanBatch};
use tracer_agent::pipeline::Pipeline;
use tracer_agent::resource::Resources;
use tracer_agent::route::RouteMatcher;
use tracer_agent::span::Clock;
use tracer_common::{role, syscall, EventHeader, EventKind, SockInfo, AF_INET};

const CONNECTIONS: u64 = 16;
const BATCH: usize = 4096;

const REQUEST: &[u8] =
    b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 21 Nov 2026 12:00:00 GMT\r\n\
Content-Type: text/html\r\nContent-Length: 6\r\nLast-Modified: Sat, 21 Nov 2026 11:00:00 GMT\r\n\
Connection: keep-alive\r\nETag: \"6a3f1c2e-6\"\r\nAccept-Ranges: bytes\r\n\r\nhello\n";

fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn sock(conn: u64) -> SockInfo {
    let mut s = SockInfo::zeroed();
    s.ino = 90_000 + conn;
    s.family = AF_INET;
    s.lport = 8080;
    s.rport = 40_000 + conn as u16;
    s.role = role::SERVER;
    s.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    s.raddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    s
}

/// The kernel records of `requests` exchanges, round-robin over the connections.
fn records(requests: u64) -> Vec<Vec<u8>> {
    let mut comm = [0u8; 16];
    comm[..5].copy_from_slice(b"nginx");
    let mut out = Vec::with_capacity(requests as usize * 2);
    let mut ts = 1_000_000_000u64;
    // The connections are accepted while the agent runs.
    for conn in 0..CONNECTIONS {
        ts += 20_000;
        let h = EventHeader {
            kind: EventKind::Accept as u32,
            syscall: syscall::ACCEPT4,
            _pad0: 0,
            ts_enter: ts,
            ts_exit: ts + 2_000,
            pid: 4242,
            tid: 4242,
            fd: 10 + conn as i32,
            captured: 0,
            ret: 10 + conn as i64,
            comm,
            sock: sock(conn),
            goroutine: 0,
        };
        let mut rec = Vec::new();
        encode(&h, &[], &mut rec);
        out.push(rec);
    }
    for i in 0..requests {
        let conn = i % CONNECTIONS;
        for (kind, sc, payload) in
            [(EventKind::Recv, syscall::RECVFROM, REQUEST), (EventKind::Send, syscall::WRITEV, RESPONSE)]
        {
            ts += 20_000;
            let h = EventHeader {
                kind: kind as u32,
                syscall: sc,
                _pad0: 0,
                ts_enter: ts,
                ts_exit: ts + 2_000,
                pid: 4242,
                tid: 4242,
                fd: 10 + conn as i32,
                captured: 0,
                ret: payload.len() as i64,
                comm,
                sock: sock(conn),
                goroutine: 0,
            };
            let mut rec = Vec::new();
            encode(&h, payload, &mut rec);
            out.push(rec);
        }
    }
    out
}

/// Everything counted: the records in, the OTLP bytes out. Kept out of line
/// so that callgrind can collect this function alone (`--toggle-collect`).
#[inline(never)]
fn run_pipeline(records: &[Vec<u8>], pipe: &mut Pipeline, resources: &mut Resources, body: &mut Vec<u8>) -> (u64, u64) {
    let mut spans = 0u64;
    let mut bytes = 0u64;
    // As in the agent, an exported batch comes back to be filled again.
    let mut spare: Option<EncodedSpans> = None;
    let mut flush = |pipe: &mut Pipeline, body: &mut Vec<u8>| {
        let Some(SpanBatch::Encoded(mut batch)) = pipe.take_batch(|| spare.take().unwrap_or_default()) else { return };
        spans += batch.len() as u64;
        let all: Vec<(&EncodedSpans, usize)> = (0..batch.len()).map(|i| (&batch, i)).collect();
        body.clear();
        encode_request(&all, resources, body);
        bytes += body.len() as u64;
        batch.clear();
        spare = Some(batch);
    };
    for (i, rec) in records.iter().enumerate() {
        pipe.on_record(rec);
        if i % (BATCH * 2) == BATCH * 2 - 1 {
            flush(pipe, body);
        }
    }
    // Spans still waiting (a first request on a connection joined open)
    // are let go of, as at the end of a replay.
    pipe.flush_held();
    flush(pipe, body);
    (spans, bytes)
}

fn main() {
    let requests: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200_000);
    let records = records(requests);
    let mut pipe = Pipeline::new(
        Tracker::new(65_536, 60_000_000_000),
        RouteMatcher::new(&[]).expect("no routes"),
        Clock { offset: 0 },
    );
    pipe.encode_spans();
    let mut resources = Resources::new(Vec::new(), Vec::new());
    let mut body = Vec::new();
    let t0 = cpu_seconds();
    let (spans, bytes) = run_pipeline(black_box(&records), &mut pipe, &mut resources, &mut body);
    let cpu = cpu_seconds() - t0;
    assert_eq!(spans, requests, "every request must make one span");
    println!(
        "pipeline: records={} spans={spans} otlp_bytes={bytes} cpu_seconds={cpu:.3} records_per_cpu_second={:.0} spans_per_cpu_second={:.0}",
        records.len(),
        records.len() as f64 / cpu,
        spans as f64 / cpu,
    );
}
