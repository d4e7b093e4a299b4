//! Golden tests for the Redis (RESP2/RESP3) parser, plus randomised
//! robustness.
//!
//! Each `tests/fixtures/redis/NAME.resp` script is replayed through a
//! `RedisConn`; the exchanges are rendered as text and compared with
//! `NAME.expected`. Run with `UPDATE_GOLDEN=1` to (re)write the expected files.
//!
//! The script format is described in `common/mod.rs`.

mod common;

use std::fmt::Write as _;

use tracer_agent::protocol::db::DbExchange;
use tracer_agent::protocol::redis::{looks_like_client_start, looks_like_server_start, RedisConn};

use common::{mangle, split, XorShift};

common::script_types!(RedisConn, DbExchange, Client => on_client_segment, Server => on_server_segment);

fn run_script(events: &[Event]) -> String {
    let mut conn = RedisConn::new();
    let mut out = String::new();
    common::render_replay(events, &mut conn, &mut out, common::render_db_exchange);
    let st = conn.stats();
    let _ = writeln!(
        out,
        "state: namespace={:?} resp3={} pubsub={} pending={}",
        conn.namespace(),
        conn.is_resp3(),
        conn.in_pubsub(),
        conn.pending_commands()
    );
    let _ = writeln!(
        out,
        "stats: commands={} replies={} exchanges={} unanswered={} pushes={} orphan_replies={}",
        st.commands, st.replies, st.exchanges, st.unanswered, st.pushes, st.orphan_replies
    );
    let _ = writeln!(
        out,
        "stats: client_desync_bytes={} server_desync_bytes={} framing_lost={} replies_cut={} invalid={} pending_overflow={} no_reply_commands={}",
        st.client_desync_bytes,
        st.server_desync_bytes,
        st.framing_lost,
        st.replies_cut,
        st.invalid,
        st.pending_overflow,
        st.no_reply_commands
    );
    out
}

#[test]
fn golden_fixtures() {
    common::check_fixtures(&common::fixture_dir("redis"), "resp", 12, run_script);
}

#[test]
fn script_format_escapes() {
    common::check_script_format(
        "< a\\r\\n\\x41\\s\\\\\n+ b\n.fill 3 z\n~1_000\n@7,9\n.repeat 1\n!close\n",
        Dir::Server,
        b"a\r\nA \\bzzz",
        &["~5\n", "> \\q\n", "what\n"],
    );
}

// ---------------------------------------------------------------------------
// Randomised robustness
// ---------------------------------------------------------------------------

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn bulk(out: &mut Vec<u8>, len: usize, fill: u8) {
    out.extend_from_slice(format!("${len}\r\n").as_bytes());
    out.extend(std::iter::repeat_n(fill, len));
    out.extend_from_slice(b"\r\n");
}

/// A random reply: bytes, error code (if an error), aggregate length.
fn random_reply(rng: &mut XorShift, depth: u32) -> (Vec<u8>, Option<String>, Option<u64>) {
    let mut out = Vec::new();
    let kinds = if depth > 2 { 5 } else { 8 };
    match rng.below(kinds) {
        0 => out.extend_from_slice(b"+OK\r\n"),
        1 => out.extend_from_slice(format!(":{}\r\n", rng.below(1_000_000)).as_bytes()),
        2 => {
            let len = if rng.chance(10) { 1000 + rng.below(20_000) } else { rng.below(40) };
            bulk(&mut out, len as usize, b'v');
        }
        3 => out.extend_from_slice(b"$-1\r\n"),
        4 => {
            if depth == 0 {
                let code = if rng.chance(50) { "ERR" } else { "WRONGTYPE" };
                out.extend_from_slice(format!("-{code} something went wrong\r\n").as_bytes());
                return (out, Some(code.to_string()), None);
            }
            out.extend_from_slice(b"_\r\n");
        }
        5 | 6 => {
            let n = rng.below(6);
            out.extend_from_slice(format!("*{n}\r\n").as_bytes());
            for _ in 0..n {
                out.extend(random_reply(rng, depth + 1).0);
            }
            return (out, None, Some(n));
        }
        _ => {
            let n = rng.below(4);
            out.extend_from_slice(format!("%{n}\r\n").as_bytes());
            for i in 0..n {
                bulk(&mut out, 2, b'0' + i as u8);
                out.extend(random_reply(rng, depth + 1).0);
            }
            return (out, None, Some(n));
        }
    }
    (out, None, None)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    op: String,
    error: Option<String>,
    rows: Option<u64>,
}

fn memory_bound() -> usize {
    2 * (64 * 1024 + 16 * 1024) + 256 * 2048
}

#[test]
fn random_traffic_never_panics_and_stays_consistent() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut clean_checked = 0usize;
    let names: [&[u8]; 6] = [b"GET", b"SET", b"HGETALL", b"MGET", b"LRANGE", b"EVAL"];
    for iteration in 0..10_000u32 {
        let mode = iteration % 4;
        let count = 1 + rng.below(20) as usize;
        let mut steps = Vec::new();
        let mut want = Vec::new();
        for i in 0..count {
            let name = names[rng.below(names.len() as u64) as usize];
            let key = format!("key:{i}");
            let big = vec![b'p'; if rng.chance(10) { 5000 } else { 3 }];
            let req = command(&[name, key.as_bytes(), &big]);
            let (resp, error, rows) = random_reply(&mut rng, 0);
            // A push between replies (RESP3 connections only) is skipped.
            steps.push((req, resp));
            want.push(Want { op: String::from_utf8_lossy(name).into_owned(), error, rows });
        }
        let mut conn = RedisConn::new();
        let mut out = Vec::new();
        let mut ts = 0u64;
        let capture = if mode == 1 { Some(1 + rng.below(600) as usize) } else { None };
        let pipelined = rng.chance(40);
        let mut feed =
            |conn: &mut RedisConn, out: &mut Vec<DbExchange>, rng: &mut XorShift, bytes: &[u8], client: bool| {
                let mut bytes = bytes.to_vec();
                if mode == 2 {
                    mangle(rng, &mut bytes);
                }
                if mode == 3 && rng.chance(30) {
                    let keep = rng.below(bytes.len() as u64 + 1) as usize;
                    bytes.truncate(keep);
                }
                let segs = split(rng, &bytes, capture, 4096);
                let dir = if client { Dir::Client } else { Dir::Server };
                common::feed_segments(conn, out, segs, dir, &mut ts, |conn| {
                    assert!(
                        conn.buffered_bytes() <= memory_bound(),
                        "iteration {iteration}: {} bytes buffered",
                        conn.buffered_bytes()
                    );
                });
            };
        if pipelined {
            let all_req: Vec<u8> = steps.iter().flat_map(|s| s.0.clone()).collect();
            let all_resp: Vec<u8> = steps.iter().flat_map(|s| s.1.clone()).collect();
            feed(&mut conn, &mut out, &mut rng, &all_req, true);
            feed(&mut conn, &mut out, &mut rng, &all_resp, false);
        } else {
            for (req, resp) in &steps {
                feed(&mut conn, &mut out, &mut rng, req, true);
                feed(&mut conn, &mut out, &mut rng, resp, false);
            }
        }
        conn.on_close(ts + 1000, &mut out);
        assert_eq!(conn.pending_commands(), 0);
        assert!(out.len() <= count + 8, "iteration {iteration}: {} exchanges", out.len());
        for e in &out {
            assert!(e.req_last_exit >= e.req_first_enter, "iteration {iteration}");
            if !e.no_response {
                assert!(e.resp_last_exit >= e.resp_first_enter, "iteration {iteration}");
            }
            assert!(e.query_text.as_ref().is_some_and(|q| q.len() <= 1024));
        }
        if mode == 0 {
            let got: Vec<Want> = out
                .iter()
                .map(|e| Want {
                    op: e.operation.clone().unwrap_or_default(),
                    error: e.error.as_ref().map(|x| x.code.clone()),
                    rows: e.rows,
                })
                .collect();
            assert_eq!(got, want, "iteration {iteration}");
            assert!(out.iter().all(|e| !e.no_response), "iteration {iteration}");
            assert_eq!(conn.stats().server_desync_bytes, 0, "iteration {iteration}");
            clean_checked += 1;
        }
    }
    assert_eq!(clean_checked, 2500);
}

#[test]
fn detection_on_random_bytes_never_panics() {
    let mut rng = XorShift(0x0123_4567_89ab_cdef);
    for _ in 0..10_000 {
        let len = rng.below(100) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.chance(50) && !buf.is_empty() {
            buf[0] = b"*$+-:_,#!=(%~>|"[rng.below(15) as usize];
        }
        let _ = looks_like_client_start(&buf);
        let _ = looks_like_server_start(&buf);
    }
}
