//! Golden tests for the MySQL/MariaDB parser, plus randomised robustness.
//!
//! Each `tests/fixtures/mysql/NAME.my` script is replayed through a
//! `MysqlConn`; the exchanges are rendered as text and compared with
//! `NAME.expected`. Run with `UPDATE_GOLDEN=1` to (re)write the expected files.
//!
//! The script format is described in `common/mod.rs`.

mod common;

use std::fmt::Write as _;

use tracer_agent::protocol::db::DbExchange;
use tracer_agent::protocol::mysql::{looks_like_client_start, looks_like_server_start, server_flavor, MysqlConn};

use common::{mangle, split, XorShift};

common::script_types!(MysqlConn, DbExchange, Client => on_client_segment, Server => on_server_segment);

fn run_script(events: &[Event]) -> String {
    let mut conn = MysqlConn::new();
    let mut out = String::new();
    common::render_replay(events, &mut conn, &mut out, common::render_db_exchange);
    let st = conn.stats();
    let _ = writeln!(
        out,
        "state: system={} namespace={:?} encrypted={} compressed={} pending={}",
        conn.system().as_str(),
        conn.namespace(),
        conn.is_encrypted(),
        conn.is_compressed(),
        conn.pending_commands()
    );
    let _ = writeln!(
        out,
        "stats: commands={} exchanges={} unanswered={} pending_overflow={} truncated_queries={}",
        st.commands, st.exchanges, st.unanswered, st.pending_overflow, st.truncated_queries
    );
    let _ = writeln!(
        out,
        "stats: client_desync_bytes={} server_desync_bytes={} orphan_packets={} framing_lost={} responses_cut={}",
        st.client_desync_bytes, st.server_desync_bytes, st.orphan_packets, st.framing_lost, st.responses_cut
    );
    let _ = writeln!(
        out,
        "stats: seq_mismatches={} invalid_packets={} unknown_statements={} statements_evicted={} opaque_bytes={} prepares_joined={}",
        st.seq_mismatches,
        st.invalid_packets,
        st.unknown_statements,
        st.statements_evicted,
        st.opaque_bytes,
        st.prepares_joined
    );
    out
}

#[test]
fn golden_fixtures() {
    common::check_fixtures(&common::fixture_dir("mysql"), "my", 12, run_script);
}

#[test]
fn script_format_escapes() {
    common::check_script_format(
        "> a\\r\\n\\x41\\s\\\\\n+ b\n.fill 3 z\n~1_000\n@7,9\n.repeat 1\n!close\n",
        Dir::Client,
        b"a\r\nA \\bzzz",
        &["~5\n", "> \\q\n", "what\n"],
    );
}

// ---------------------------------------------------------------------------
// Randomised robustness
// ---------------------------------------------------------------------------

fn packet(out: &mut Vec<u8>, seq: u8, payload: &[u8]) {
    let n = payload.len() as u32;
    out.extend_from_slice(&[n as u8, (n >> 8) as u8, (n >> 16) as u8, seq]);
    out.extend_from_slice(payload);
}

fn lenenc(out: &mut Vec<u8>, v: u64) {
    if v < 251 {
        out.push(v as u8);
    } else if v < 1 << 16 {
        out.push(0xfc);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else {
        out.push(0xfe);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn column_def(name: &str) -> Vec<u8> {
    let mut p = Vec::new();
    for s in ["def", "db", "t", "t", name, name] {
        lenenc(&mut p, s.len() as u64);
        p.extend_from_slice(s.as_bytes());
    }
    p.extend_from_slice(&[0x0c, 0x21, 0, 0xff, 0, 0, 0, 0xfd, 0, 0, 0, 0, 0]);
    p
}

fn ok_payload(header: u8, affected: u64, status: u16) -> Vec<u8> {
    let mut p = vec![header];
    lenenc(&mut p, affected);
    lenenc(&mut p, 0);
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    p
}

fn eof_payload(status: u16) -> Vec<u8> {
    let mut p = vec![0xfe, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    query: Option<String>,
    rows: Option<u64>,
    error: Option<String>,
}

/// Result set rows for one command: column count, definitions, rows, end.
fn result_set(resp: &mut Vec<u8>, seq: &mut u8, rng: &mut XorShift, deprecate: bool, more: bool, binary: bool) -> u64 {
    let cols = 1 + rng.below(3);
    let mut p = Vec::new();
    lenenc(&mut p, cols);
    packet(resp, *seq, &p);
    *seq = seq.wrapping_add(1);
    for c in 0..cols {
        packet(resp, *seq, &column_def(&format!("c{c}")));
        *seq = seq.wrapping_add(1);
    }
    if !deprecate {
        packet(resp, *seq, &eof_payload(0x0002));
        *seq = seq.wrapping_add(1);
    }
    let rows = rng.below(20);
    for r in 0..rows {
        let mut row = Vec::new();
        if binary {
            row.push(0);
            row.push(0);
        }
        for _ in 0..cols {
            let len = if rng.chance(5) { 300 + rng.below(3000) } else { rng.below(12) };
            lenenc(&mut row, len);
            row.extend(std::iter::repeat_n(b'a' + (r % 26) as u8, len as usize));
        }
        packet(resp, *seq, &row);
        *seq = seq.wrapping_add(1);
    }
    let status = if more { 0x000a } else { 0x0002 };
    if deprecate {
        packet(resp, *seq, &ok_payload(0xfe, 0, status));
    } else {
        packet(resp, *seq, &eof_payload(status));
    }
    *seq = seq.wrapping_add(1);
    rows
}

/// Client bytes and server bytes of one step of a session.
type Step = (Vec<u8>, Vec<u8>);

/// A random session: its steps and the wanted exchanges.
fn random_session(rng: &mut XorShift) -> (Vec<Step>, Vec<Want>) {
    let deprecate = rng.chance(50);
    let mut steps = Vec::new();
    let mut want = Vec::new();
    // Greeting and handshake.
    let mut greet = Vec::new();
    let mut g = vec![10u8];
    g.extend_from_slice(b"8.0.36\0");
    g.extend_from_slice(&[1, 0, 0, 0]);
    g.extend_from_slice(b"abcdefgh\0");
    let caps: u32 = 0x0000_a20f | if deprecate { 0x0100_0000 } else { 0 } | 0x0008_0000;
    g.extend_from_slice(&(caps as u16).to_le_bytes());
    g.push(0x21);
    g.extend_from_slice(&[2, 0]);
    g.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    g.push(21);
    g.extend_from_slice(&[0; 10]);
    g.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
    packet(&mut greet, 0, &g);
    steps.push((Vec::new(), greet));
    let mut hr = Vec::new();
    hr.extend_from_slice(&caps.to_le_bytes());
    hr.extend_from_slice(&[0, 0, 0, 1, 0x21]);
    hr.extend_from_slice(&[0; 23]);
    hr.extend_from_slice(b"app\0");
    hr.push(20);
    hr.extend_from_slice(&[7; 20]);
    hr.extend_from_slice(b"shop\0mysql_native_password\0");
    let mut cli = Vec::new();
    packet(&mut cli, 1, &hr);
    let mut srv = Vec::new();
    packet(&mut srv, 2, &ok_payload(0, 0, 2));
    steps.push((cli, srv));
    let mut stmt_ids: Vec<(u32, String)> = Vec::new();
    // The statement just prepared (its id, its prepare's place in `want`),
    // and whether it has run once since: a close right then makes the
    // prepare and the run one exchange.
    let mut one_shot: Option<(u32, usize, bool)> = None;
    for n in 0..1 + rng.below(6) {
        let mut cli = Vec::new();
        let mut srv = Vec::new();
        let prev = one_shot.take();
        match rng.below(6) {
            0 | 1 => {
                let sql = format!("SELECT c FROM t{n} WHERE x = {}", rng.below(1000));
                let mut p = vec![3u8];
                p.extend_from_slice(sql.as_bytes());
                packet(&mut cli, 0, &p);
                let mut seq = 1u8;
                let multi = rng.chance(20);
                let mut rows = result_set(&mut srv, &mut seq, rng, deprecate, multi, false);
                if multi {
                    let affected = rng.below(5);
                    packet(&mut srv, seq, &ok_payload(0, affected, 2));
                    rows += affected;
                }
                want.push(Want { query: Some(sql), rows: Some(rows), error: None });
            }
            2 => {
                let sql = format!("UPDATE t SET x = {n}");
                let mut p = vec![3u8];
                p.extend_from_slice(sql.as_bytes());
                packet(&mut cli, 0, &p);
                if rng.chance(50) {
                    let affected = rng.below(100_000);
                    packet(&mut srv, 1, &ok_payload(0, affected, 2));
                    want.push(Want { query: Some(sql), rows: Some(affected), error: None });
                } else {
                    let mut e = vec![0xff, 0x7a, 0x04];
                    e.extend_from_slice(b"#42S02Table 'shop.t' doesn't exist");
                    packet(&mut srv, 1, &e);
                    want.push(Want { query: Some(sql), rows: None, error: Some("1146".into()) });
                }
            }
            3 => {
                let sql = format!("SELECT * FROM t WHERE id = ? AND k = {n}");
                let mut p = vec![0x16u8];
                p.extend_from_slice(sql.as_bytes());
                packet(&mut cli, 0, &p);
                let id = 1 + rng.below(50) as u32;
                let cols = rng.below(3) as u16;
                let mut ok = vec![0u8];
                ok.extend_from_slice(&id.to_le_bytes());
                ok.extend_from_slice(&cols.to_le_bytes());
                ok.extend_from_slice(&1u16.to_le_bytes());
                ok.extend_from_slice(&[0, 0, 0]);
                packet(&mut srv, 1, &ok);
                let mut seq = 2u8;
                packet(&mut srv, seq, &column_def("?"));
                seq += 1;
                if !deprecate {
                    packet(&mut srv, seq, &eof_payload(2));
                    seq += 1;
                }
                for c in 0..cols {
                    packet(&mut srv, seq, &column_def(&format!("c{c}")));
                    seq += 1;
                }
                if cols > 0 && !deprecate {
                    packet(&mut srv, seq, &eof_payload(2));
                }
                want.push(Want { query: Some(sql.clone()), rows: None, error: None });
                one_shot = Some((id, want.len() - 1, false));
                stmt_ids.retain(|(i, _)| *i != id);
                stmt_ids.push((id, sql));
            }
            5 => {
                let id = stmt_ids.last().map_or(999, |(i, _)| *i);
                let mut p = vec![0x19u8];
                p.extend_from_slice(&id.to_le_bytes());
                packet(&mut cli, 0, &p);
                if let Some((sid, at, true)) = prev {
                    if sid == id {
                        want.remove(at);
                    }
                }
                stmt_ids.retain(|(i, _)| *i != id);
            }
            _ => {
                let (id, sql) = match stmt_ids.last() {
                    Some((i, s)) => (*i, Some(s.clone())),
                    None => (999, None),
                };
                let mut p = vec![0x17u8];
                p.extend_from_slice(&id.to_le_bytes());
                p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 1, 3, 0]);
                p.extend_from_slice(&7u32.to_le_bytes());
                packet(&mut cli, 0, &p);
                let mut seq = 1u8;
                let rows = result_set(&mut srv, &mut seq, rng, deprecate, false, true);
                want.push(Want { query: sql, rows: Some(rows), error: None });
                if let Some((sid, at, false)) = prev {
                    if sid == id {
                        one_shot = Some((sid, at, true));
                    }
                }
            }
        }
        steps.push((cli, srv));
    }
    (steps, want)
}

fn memory_bound() -> usize {
    2 * (8192 + 4096) + 64 * 9000 + 256 * 1024 + 1024 * 64
}

#[test]
fn random_traffic_never_panics_and_stays_consistent() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut clean_checked = 0usize;
    let mut joined = 0u64;
    for iteration in 0..10_000u32 {
        let mode = iteration % 4;
        let (steps, want) = random_session(&mut rng);
        let mut conn = MysqlConn::new();
        let mut out = Vec::new();
        let mut ts = 0u64;
        let capture = if mode == 1 { Some(1 + rng.below(600) as usize) } else { None };
        let skip_start = mode == 3 && rng.chance(50);
        for (si, (cli, srv)) in steps.iter().enumerate() {
            for (bytes, client) in [(cli, true), (srv, false)] {
                if skip_start && si < 2 {
                    continue;
                }
                let mut bytes = bytes.clone();
                if mode == 2 {
                    mangle(&mut rng, &mut bytes);
                }
                if mode == 3 && rng.chance(30) {
                    let keep = rng.below(bytes.len() as u64 + 1) as usize;
                    bytes.truncate(keep);
                }
                let segs = split(&mut rng, &bytes, capture, 4096);
                let dir = if client { Dir::Client } else { Dir::Server };
                common::feed_segments(&mut conn, &mut out, segs, dir, &mut ts, |conn| {
                    assert!(
                        conn.buffered_bytes() <= memory_bound(),
                        "iteration {iteration}: {} bytes buffered",
                        conn.buffered_bytes()
                    );
                });
            }
        }
        conn.on_close(ts + 1000, &mut out);
        assert_eq!(conn.pending_commands(), 0);
        for e in &out {
            assert!(e.req_last_exit >= e.req_first_enter, "iteration {iteration}");
            if !e.no_response {
                assert!(e.resp_last_exit >= e.resp_first_enter, "iteration {iteration}");
                assert!(e.resp_first_enter >= e.req_first_enter, "iteration {iteration}");
            }
        }
        if mode == 0 {
            let got: Vec<Want> = out
                .iter()
                .map(|e| Want {
                    query: e.query_text.clone(),
                    rows: e.rows,
                    error: e.error.as_ref().map(|x| x.code.clone()),
                })
                .collect();
            assert_eq!(got, want, "iteration {iteration}");
            assert!(out.iter().all(|e| e.namespace.as_deref() == Some("shop") && !e.no_response));
            assert_eq!(conn.stats().server_desync_bytes, 0, "iteration {iteration}");
            clean_checked += 1;
            joined += conn.stats().prepares_joined;
        }
    }
    assert_eq!(clean_checked, 2500);
    // Statements prepared, run once and closed came up, and were joined.
    assert!(joined >= 10, "{joined}");
}

#[test]
fn detection_on_random_bytes_never_panics() {
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    for _ in 0..10_000 {
        let len = rng.below(200) as usize;
        let buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = looks_like_client_start(&buf);
        let _ = looks_like_server_start(&buf);
        let _ = server_flavor(&buf);
    }
}
