//! Parse throughput of each protocol, side by side in one run: request/response
//! exchanges per CPU-second, feeding each connection state machine the same
//! segments the kernel would deliver (one segment per message, fully captured).
//!
//! Run with `cargo bench -p tracer-agent --bench parsers`. Figures are CPU
//! time of this thread, so other load on the machine matters less; compare
//! protocols within one run.

use std::hint::black_box;

use tracer_agent::protocol::db::DbExchange;
use tracer_agent::protocol::http1::{self, Http1Conn};
use tracer_agent::protocol::http2::{H2Conn, H2Exchange, PREFACE};
use tracer_agent::protocol::mysql::MysqlConn;
use tracer_agent::protocol::postgres::PgConn;
use tracer_agent::protocol::redis::RedisConn;
use tracer_agent::protocol::Segment;

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn seg(data: &[u8], t: u64) -> Segment<'_> {
    Segment { data, uncaptured: 0, ts_enter: t, ts_exit: t + 1 }
}

/// Runs `exchanges` request/response pairs through `step` and reports.
fn report(name: &str, exchanges: u64, bytes_per_exchange: usize, mut step: impl FnMut(u64) -> usize) {
    // Warm-up.
    for i in 0..exchanges / 10 {
        black_box(step(i));
    }
    let t0 = thread_cpu_seconds();
    let mut produced = 0usize;
    for i in 0..exchanges {
        produced += step(i);
    }
    let cpu = thread_cpu_seconds() - t0;
    assert_eq!(produced as u64, exchanges, "{name}: every request must produce one exchange");
    println!(
        "{name:<34} {:>12.0} exchanges/CPU-s  {:>8.0} MB/CPU-s  ({exchanges} exchanges in {cpu:.3} s)",
        exchanges as f64 / cpu,
        (exchanges as f64 * bytes_per_exchange as f64) / cpu / 1e6,
    );
}

fn http1_bench(n: u64) {
    let req = b"GET /api/users/12345/orders?page=2 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench/1.0\r\nAccept: application/json\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: keep-alive\r\n\r\n{\"orders\":[1,2,3],\"n\":3}\n\n";
    let mut conn = Http1Conn::new();
    let mut out: Vec<http1::Exchange> = Vec::new();
    report("HTTP/1.1 keep-alive", n, req.len() + resp.len(), |i| {
        conn.on_request_segment(seg(req, i * 10), &mut out);
        conn.on_response_segment(seg(resp, i * 10 + 5), &mut out);
        let k = out.len();
        out.clear();
        k
    });
}

/// An HTTP/2 frame header.
fn frame(out: &mut Vec<u8>, len: usize, ty: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// HPACK literal without indexing, name from the static table.
fn literal(out: &mut Vec<u8>, name_index: u8, value: &[u8]) {
    out.push(name_index); // 0000 + 4-bit index (indexes < 15)
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

fn http2_bench(n: u64) {
    // A gRPC unary call per stream, headers as static-table references and
    // literals (the shape of a client that does not index).
    let mut conn = H2Conn::new();
    let mut out: Vec<H2Exchange> = Vec::new();
    let mut settings = Vec::new();
    frame(&mut settings, 0, 4, 0, 0);
    let mut first = PREFACE.to_vec();
    first.extend_from_slice(&settings);
    conn.on_client_segment(seg(&first, 0), &mut out);
    conn.on_server_segment(seg(&settings, 1), &mut out);
    report("HTTP/2 gRPC unary (new stream each)", n, 180, |i| {
        let stream = (2 * i + 1) as u32;
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        literal(&mut block, 4, b"/demo.Greeter/SayHello"); // :path
        literal(&mut block, 1, b"localhost:50051"); // :authority
                                                    // content-type: static index 31, which takes a continuation byte (15 + 16).
        block.extend_from_slice(&[0x0f, 0x10, 16]);
        block.extend_from_slice(b"application/grpc");
        let mut req = Vec::with_capacity(128);
        frame(&mut req, block.len(), 1, 0x4, stream); // HEADERS, END_HEADERS
        req.extend_from_slice(&block);
        let msg = [0u8, 0, 0, 0, 7, 10, 5, b'w', b'o', b'r', b'l', b'd'];
        frame(&mut req, msg.len(), 0, 0x1, stream); // DATA, END_STREAM
        req.extend_from_slice(&msg);
        let mut resp = Vec::with_capacity(128);
        let rblock = [
            0x88u8, 0x0f, 0x10, 16, b'a', b'p', b'p', b'l', b'i', b'c', b'a', b't', b'i', b'o', b'n', b'/', b'g', b'r',
            b'p', b'c',
        ];
        frame(&mut resp, rblock.len(), 1, 0x4, stream);
        resp.extend_from_slice(&rblock);
        frame(&mut resp, msg.len(), 0, 0, stream);
        resp.extend_from_slice(&msg);
        let mut trailers = vec![0x00, 11];
        trailers.extend_from_slice(b"grpc-status");
        trailers.extend_from_slice(&[1, b'0']);
        frame(&mut resp, trailers.len(), 1, 0x5, stream); // HEADERS, END_STREAM|END_HEADERS
        resp.extend_from_slice(&trailers);
        conn.on_client_segment(seg(&req, i * 10 + 2), &mut out);
        conn.on_server_segment(seg(&resp, i * 10 + 5), &mut out);
        let k = out.len();
        out.clear();
        k
    });
}

fn pg_message(out: &mut Vec<u8>, ty: u8, body: &[u8]) {
    out.push(ty);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

fn postgres_bench(n: u64) {
    let mut conn = PgConn::new();
    let mut out: Vec<DbExchange> = Vec::new();
    let mut startup = Vec::new();
    let params = b"user\0app\0database\0shop\0\0";
    startup.extend_from_slice(&((params.len() + 8) as u32).to_be_bytes());
    startup.extend_from_slice(&196608u32.to_be_bytes());
    startup.extend_from_slice(params);
    conn.on_client_segment(seg(&startup, 0), &mut out);
    let mut hello = Vec::new();
    pg_message(&mut hello, b'R', &0u32.to_be_bytes());
    pg_message(&mut hello, b'Z', b"I");
    conn.on_server_segment(seg(&hello, 1), &mut out);
    let mut q = Vec::new();
    pg_message(&mut q, b'Q', b"SELECT id, name FROM users WHERE id = 42\0");
    let mut r = Vec::new();
    let mut desc = vec![0, 2];
    for col in [&b"id"[..], b"name"] {
        desc.extend_from_slice(col);
        desc.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 23, 0, 4, 255, 255, 255, 255, 0, 0]);
    }
    pg_message(&mut r, b'T', &desc);
    pg_message(&mut r, b'D', &[0, 2, 0, 0, 0, 2, b'4', b'2', 0, 0, 0, 3, b'b', b'o', b'b']);
    pg_message(&mut r, b'C', b"SELECT 1\0");
    pg_message(&mut r, b'Z', b"I");
    report("PostgreSQL simple query", n, q.len() + r.len(), |i| {
        conn.on_client_segment(seg(&q, i * 10 + 2), &mut out);
        conn.on_server_segment(seg(&r, i * 10 + 5), &mut out);
        let k = out.len();
        out.clear();
        k
    });
}

fn mysql_packet(out: &mut Vec<u8>, seq: u8, body: &[u8]) {
    let n = body.len();
    out.extend_from_slice(&[n as u8, (n >> 8) as u8, (n >> 16) as u8, seq]);
    out.extend_from_slice(body);
}

fn mysql_bench(n: u64) {
    let mut conn = MysqlConn::new();
    let mut out: Vec<DbExchange> = Vec::new();
    let mut q = Vec::new();
    let mut body = vec![0x03];
    body.extend_from_slice(b"UPDATE users SET name = 'bob' WHERE id = 42");
    mysql_packet(&mut q, 0, &body);
    let mut ok = Vec::new();
    mysql_packet(&mut ok, 1, &[0x00, 1, 0, 2, 0, 0, 0]);
    report("MySQL COM_QUERY + OK (mid-stream)", n, q.len() + ok.len(), |i| {
        conn.on_client_segment(seg(&q, i * 10 + 2), &mut out);
        conn.on_server_segment(seg(&ok, i * 10 + 5), &mut out);
        let k = out.len();
        out.clear();
        k
    });
}

fn redis_bench(n: u64) {
    let mut conn = RedisConn::new();
    let mut out: Vec<DbExchange> = Vec::new();
    let cmd = b"*3\r\n$3\r\nSET\r\n$7\r\nuser:42\r\n$16\r\n{\"name\":\"bob\"}  \r\n";
    let reply = b"+OK\r\n";
    report("Redis SET", n, cmd.len() + reply.len(), |i| {
        conn.on_client_segment(seg(cmd, i * 10 + 2), &mut out);
        conn.on_server_segment(seg(reply, i * 10 + 5), &mut out);
        let k = out.len();
        out.clear();
        k
    });
}

fn main() {
    // `cargo test` runs benches in test mode with `--bench`-less args; keep it short there.
    let quick = std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench");
    let n = if quick { 2_000 } else { 300_000 };
    println!("parse throughput, one connection per protocol, {n} exchanges each");
    http1_bench(n);
    http2_bench(n);
    postgres_bench(n);
    mysql_bench(n);
    redis_bench(n);
}
