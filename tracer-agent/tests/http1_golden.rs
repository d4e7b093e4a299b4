//! Golden tests for HTTP/1 exchange pairing, plus a randomised robustness
//! test.
//!
//! Each `tests/fixtures/http1/NAME.http` script is replayed through an
//! `Http1Conn`; the resulting exchanges are rendered as text and compared with
//! `NAME.expected`. Run with `UPDATE_GOLDEN=1` to (re)write the expected files.
//!
//! The script format is described in `common/mod.rs`.

mod common;

use std::fmt::Write as _;

use tracer_agent::protocol::http1::{
    parse_request, parse_response, BodyFraming, Exchange, Http1Conn, Parse, MAX_HEAD_LEN, MAX_PENDING,
};

use common::{mangle, split, XorShift};

common::script_types!(Http1Conn, Exchange, Request => on_request_segment, Response => on_response_segment);

fn framing(b: BodyFraming) -> String {
    match b {
        BodyFraming::None => "none".to_string(),
        BodyFraming::Length(n) => format!("length({n})"),
        BodyFraming::Chunked => "chunked".to_string(),
        BodyFraming::UntilClose => "until-close".to_string(),
    }
}

fn opt_u64(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |n| n.to_string())
}

fn render_exchange(out: &mut String, n: usize, at: usize, e: &Exchange) {
    let r = &e.request;
    let status = e
        .response
        .as_ref()
        .map_or_else(|| "(no response)".to_string(), |s| format!("{} HTTP/1.{}", s.status, s.version));
    let _ = writeln!(
        out,
        "exchange {n} (emitted at event {at}): {} {} HTTP/1.{} -> {status}",
        r.method, r.target, r.version
    );
    let _ = writeln!(
        out,
        "  request: header_len={} body={} content_length={} expect_continue={}",
        r.header_len,
        framing(r.body),
        opt_u64(r.content_length),
        r.expect_continue
    );
    let fields = [
        ("host", r.host.as_deref()),
        ("user_agent", r.user_agent.as_deref()),
        ("traceparent", r.traceparent.as_deref()),
        ("tracestate", r.tracestate.as_deref()),
        ("b3", r.b3.as_deref()),
        ("x_b3_trace_id", r.x_b3_trace_id.as_deref()),
        ("x_b3_span_id", r.x_b3_span_id.as_deref()),
        ("x_b3_sampled", r.x_b3_sampled.as_deref()),
        ("upgrade", r.upgrade.as_deref()),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            let _ = writeln!(out, "  {name}: {v:?}");
        }
    }
    if let Some(s) = &e.response {
        let _ = writeln!(
            out,
            "  response: header_len={} body={} content_length={}",
            s.header_len,
            framing(s.body),
            opt_u64(s.content_length)
        );
    }
    let _ = writeln!(
        out,
        "  times: req_first={}..{} req_last_exit={} resp_first_enter={} resp_last_exit={}",
        e.req_first_enter, e.req_first_exit, e.req_last_exit, e.resp_first_enter, e.resp_last_exit
    );
    let _ = writeln!(out, "  body sizes: request={} response={}", e.request_body_size, e.response_body_size);
    let mut flags = Vec::new();
    if e.headers_truncated {
        flags.push("headers_truncated");
    }
    if e.response_headers_truncated {
        flags.push("response_headers_truncated");
    }
    if e.framing_lost {
        flags.push("framing_lost");
    }
    if e.response_incomplete {
        flags.push("response_incomplete");
    }
    if !flags.is_empty() {
        let _ = writeln!(out, "  flags: {}", flags.join(" "));
    }
}

fn run_script(events: &[Event]) -> String {
    let mut conn = Http1Conn::new();
    let mut out = String::new();
    common::render_replay(events, &mut conn, &mut out, render_exchange);
    let st = conn.stats();
    let _ = writeln!(out, "state: upgraded={} pending={}", conn.upgraded(), conn.pending_requests());
    let _ = writeln!(
        out,
        "stats: requests={} responses={} interim={} exchanges={} unanswered={}",
        st.requests, st.responses, st.interim_responses, st.exchanges, st.unanswered
    );
    let _ = writeln!(
        out,
        "stats: desync_bytes_skipped={} invalid={} oversized={} truncated_heads={} dropped_heads={}",
        st.desync_bytes_skipped, st.invalid_messages, st.oversized_heads, st.truncated_heads, st.dropped_heads
    );
    let _ = writeln!(
        out,
        "stats: orphan_responses={} lost_responses={} pending_overflow={} framing_lost={} upgraded={} bytes_after_upgrade={}",
        st.orphan_responses,
        st.lost_responses,
        st.pending_overflow,
        st.framing_lost,
        st.upgraded,
        st.bytes_after_upgrade
    );
    out
}

#[test]
fn golden_fixtures() {
    common::check_fixtures(&common::fixture_dir("http1"), "http", 25, run_script);
}

#[test]
fn script_format_escapes() {
    common::check_script_format(
        "> a\\r\\n\\x41\\s\\\\\n+ b\n.fill 3 z\n~1_000\n@7,9\n.repeat 1\n!close\n",
        Dir::Request,
        b"a\r\nA \\bzzz",
        &["~5\n", "> \\q\n", "what\n"],
    );
}

// ---------------------------------------------------------------------------
// Randomised robustness
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Expect {
    target: String,
    status: u16,
    req_body: u64,
    resp_body: u64,
}

/// A random valid request/response pair: wire bytes plus what the pairing
/// must report for it.
fn random_exchange(rng: &mut XorShift, n: usize) -> (Vec<u8>, Vec<u8>, Expect) {
    let methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"];
    let method = methods[rng.below(methods.len() as u64) as usize];
    let target = format!("/r/{n}?q={}", rng.below(1000));
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: h{n}\r\n").into_bytes();
    if rng.chance(30) {
        req.extend_from_slice(b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n");
    }
    let req_body_len = if matches!(method, "POST" | "PUT" | "PATCH") { rng.below(300) } else { 0 };
    if req_body_len > 0 {
        if rng.chance(50) {
            req.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            append_chunked(rng, &mut req, req_body_len);
        } else {
            req.extend_from_slice(format!("Content-Length: {req_body_len}\r\n\r\n").as_bytes());
            req.extend(std::iter::repeat_n(b'q', req_body_len as usize));
        }
    } else {
        req.extend_from_slice(b"\r\n");
    }
    let statuses = [200u16, 201, 204, 301, 304, 404, 500];
    let status = statuses[rng.below(statuses.len() as u64) as usize];
    let mut resp = Vec::new();
    if rng.chance(10) {
        resp.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    resp.extend_from_slice(format!("HTTP/1.1 {status} Something\r\nServer: s\r\n").as_bytes());
    let bodyless = method == "HEAD" || status == 204 || status == 304;
    let body_len = rng.below(5000);
    let resp_body = if bodyless {
        resp.extend_from_slice(format!("Content-Length: {body_len}\r\n\r\n").as_bytes());
        0
    } else if rng.chance(40) {
        resp.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        append_chunked(rng, &mut resp, body_len);
        body_len
    } else {
        resp.extend_from_slice(format!("Content-Length: {body_len}\r\n\r\n").as_bytes());
        resp.extend(std::iter::repeat_n(b'b', body_len as usize));
        body_len
    };
    (req, resp, Expect { target, status, req_body: req_body_len, resp_body })
}

fn append_chunked(rng: &mut XorShift, out: &mut Vec<u8>, mut len: u64) {
    while len > 0 {
        let c = (1 + rng.below(len)).min(len);
        if rng.chance(20) {
            out.extend_from_slice(format!("{c:X};name=value\r\n").as_bytes());
        } else {
            out.extend_from_slice(format!("{c:x}\r\n").as_bytes());
        }
        out.extend(std::iter::repeat_n(b'c', c as usize));
        out.extend_from_slice(b"\r\n");
        len -= c;
    }
    if rng.chance(20) {
        out.extend_from_slice(b"0\r\nX-Checksum: 1\r\n\r\n");
    } else {
        out.extend_from_slice(b"0\r\n\r\n");
    }
}

fn memory_bound() -> usize {
    // Two head buffers plus pending request heads (each bounded by a head).
    2 * MAX_HEAD_LEN + 8192 + MAX_PENDING * 1024
}

#[test]
fn random_traffic_never_panics_and_stays_consistent() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut clean_checked = 0usize;
    for iteration in 0..10_000u32 {
        let mode = iteration % 4;
        let count = 1 + rng.below(5) as usize;
        let mut exchanges = Vec::new();
        for n in 0..count {
            exchanges.push(random_exchange(&mut rng, n));
        }
        let mut conn = Http1Conn::new();
        let mut out = Vec::new();
        let mut ts = 0u64;
        let capture = match mode {
            1 => Some(1 + rng.below(300) as usize),
            _ => None,
        };
        let pipelined = rng.chance(30);
        let mut feed =
            |conn: &mut Http1Conn, out: &mut Vec<Exchange>, rng: &mut XorShift, bytes: &[u8], request: bool| {
                let mut bytes = bytes.to_vec();
                if mode == 2 {
                    // Garbage: random byte flips, cuts and insertions.
                    mangle(rng, &mut bytes);
                }
                if mode == 3 && rng.chance(30) {
                    // Truncation: drop a random tail of the message.
                    let keep = rng.below(bytes.len() as u64 + 1) as usize;
                    bytes.truncate(keep);
                }
                let segs = split(rng, &bytes, capture, 2048);
                let dir = if request { Dir::Request } else { Dir::Response };
                common::feed_segments(conn, out, segs, dir, &mut ts, |conn| {
                    assert!(
                        conn.buffered_bytes() <= memory_bound(),
                        "iteration {iteration}: {} bytes buffered",
                        conn.buffered_bytes()
                    );
                });
            };
        if pipelined {
            for (req, _, _) in &exchanges {
                feed(&mut conn, &mut out, &mut rng, req, true);
            }
            for (_, resp, _) in &exchanges {
                feed(&mut conn, &mut out, &mut rng, resp, false);
            }
        } else {
            for (req, resp, _) in &exchanges {
                feed(&mut conn, &mut out, &mut rng, req, true);
                feed(&mut conn, &mut out, &mut rng, resp, false);
            }
        }
        conn.on_close(ts + 1000, &mut out);
        assert!(out.len() <= count, "iteration {iteration}: more exchanges than requests");
        assert_eq!(conn.pending_requests(), 0);
        for e in &out {
            if e.response.is_some() {
                assert!(e.resp_last_exit >= e.resp_first_enter, "iteration {iteration}");
            }
            assert!(e.req_last_exit >= e.req_first_exit, "iteration {iteration}");
        }
        if mode == 0 {
            // Clean traffic, arbitrary splits: exact results.
            let got: Vec<(String, Option<u16>, u64, u64)> = out
                .iter()
                .map(|e| {
                    (
                        e.request.target.to_string(),
                        e.response.as_ref().map(|r| r.status),
                        e.request_body_size,
                        e.response_body_size,
                    )
                })
                .collect();
            let want: Vec<(String, Option<u16>, u64, u64)> =
                exchanges.iter().map(|(_, _, x)| (x.target.clone(), Some(x.status), x.req_body, x.resp_body)).collect();
            assert_eq!(got, want, "iteration {iteration}");
            assert_eq!(conn.stats().desync_bytes_skipped, 0, "iteration {iteration}");
            clean_checked += 1;
        }
    }
    assert_eq!(clean_checked, 2500);
}

#[test]
fn random_prefixes_of_valid_heads() {
    let mut rng = XorShift(0x0123_4567_89ab_cdef);
    for _ in 0..2000 {
        let (req, resp, _) = random_exchange(&mut rng, 0);
        let cut = rng.below(req.len() as u64 + 1) as usize;
        match parse_request(&req[..cut]) {
            Parse::Complete(h) => assert!(h.header_len <= cut),
            Parse::Incomplete => {}
            Parse::Invalid => panic!("prefix of a valid request reported invalid"),
        }
        let cut = rng.below(resp.len() as u64 + 1) as usize;
        match parse_response(&resp[..cut], "GET") {
            Parse::Complete(h) => assert!(h.header_len <= cut),
            Parse::Incomplete => {}
            Parse::Invalid => panic!("prefix of a valid response reported invalid"),
        }
    }
}
