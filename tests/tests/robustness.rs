//! The agent under hostile or heavy traffic: non-HTTP bytes in both
//! directions on a traced port, and a flood of short connections. It must
//! keep running within memory, still produce correct spans afterwards and
//! exit cleanly.
//!
//! Run as root with `TRACER_AGENT_BIN` pointing at the agent binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracer_tests::*;

/// Upper bound for the agent's resident set size.
const MAX_RSS_KIB: u64 = 256 * 1024;
/// Short connections in the flood that each carry one request.
const FLOOD_REQUESTS: usize = 5_000;
/// Extra connections in the flood that close without sending anything.
const FLOOD_EMPTY: usize = 500;
const FLOOD_THREADS: usize = 4;

struct RssWatch {
    max_kib: u64,
    samples: Vec<(String, u64)>,
}

impl RssWatch {
    fn sample(&mut self, agent: &mut Agent, label: &str) {
        agent.assert_running();
        let rss = agent.rss_kib();
        self.max_kib = self.max_kib.max(rss);
        self.samples.push((label.to_string(), rss));
        assert!(
            rss < MAX_RSS_KIB,
            "agent RSS {rss} KiB exceeds {MAX_RSS_KIB} KiB after {label}; samples {:?}\n{}",
            self.samples,
            agent.diagnostics()
        );
    }
}

fn one_request(port: u16, path: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to nginx on {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(get_request(path, "127.0.0.1", true).as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let responses = parse_responses(&buf);
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].status, 200);
}

#[test]
fn survives_garbage_and_connection_flood() {
    let _serial = serial();
    agent_bin();
    let root = WebRoot::new();
    let nginx_port = free_port();
    let nginx = Nginx::start(nginx_port, root.path());
    let echo = EchoServer::start();
    let receiver = Receiver::start();
    let mut agent = AgentBuilder::new(&receiver)
        .port(nginx_port)
        .port(echo.port())
        .args(
            std::env::var("TRACER_TEST_AGENT_ARGS")
                .ok()
                .map(|a| a.split_whitespace().map(String::from).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
        .start();
    let mut rss = RssWatch { max_kib: 0, samples: Vec::new() };
    rss.sample(&mut agent, "start");

    // 1. Random bytes both ways (the echo server sends everything back),
    // in writes of varying size, on several connections.
    let mut sent = 0u64;
    for (i, chunk) in [1usize, 7, 512, 4096, 16384, 65536, 1000, 3].iter().enumerate() {
        let payload = random_bytes(256 * 1024 + i);
        let back = echo_roundtrip(echo.port(), &payload, *chunk);
        assert_eq!(back, payload);
        sent += payload.len() as u64;
        if i % 2 == 1 {
            rss.sample(&mut agent, &format!("random bytes connection {i}"));
        }
    }
    assert!(echo.echoed_bytes() >= sent);
    // Nothing there is HTTP: after several export intervals no span exists.
    std::thread::sleep(Duration::from_secs(2));
    assert!(receiver.spans().is_empty(), "random bytes must not produce spans\n{}", dump(&receiver.spans()));

    // 2. HTTP-looking but broken data: a request line followed by garbage,
    // an enormous header line, a bogus huge Content-Length, a lone method.
    // Whether these produce spans is not specified; the agent must cope.
    let mut huge_cl = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n".to_vec();
    huge_cl.extend(random_bytes(8192));
    let mut long_header = b"GET /x HTTP/1.1\r\nX-Long: ".to_vec();
    long_header.extend(std::iter::repeat_n(b'A', 200_000));
    let mut garbage_after_line = b"GET / HTTP/1.1\r\n".to_vec();
    garbage_after_line.extend(random_bytes(50_000));
    let mut bad_chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZZZ\r\n".to_vec();
    bad_chunked.extend(random_bytes(10_000));
    for (i, payload) in
        [huge_cl, long_header, garbage_after_line, bad_chunked, b"GET".to_vec(), b"\r\n\r\n\r\n".to_vec()]
            .iter()
            .enumerate()
    {
        let back = echo_roundtrip(echo.port(), payload, 1500);
        assert_eq!(&back, payload, "echo of malformed payload {i}");
    }
    rss.sample(&mut agent, "malformed HTTP");
    // Let whatever the malformed phase produced be exported before counting.
    std::thread::sleep(Duration::from_secs(2));

    // 3. Flood nginx with short connections: FLOOD_REQUESTS each carrying one
    // request (Connection: close), FLOOD_EMPTY closing without data.
    let before_flood = receiver.spans().len();
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..FLOOD_THREADS)
        .map(|t| {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut i = t;
                while i < FLOOD_REQUESTS {
                    one_request(nginx_port, "/hello.txt");
                    done.fetch_add(1, Ordering::Relaxed);
                    i += FLOOD_THREADS;
                }
                let mut i = t;
                while i < FLOOD_EMPTY {
                    drop(TcpStream::connect(("127.0.0.1", nginx_port)).unwrap());
                    i += FLOOD_THREADS;
                }
            })
        })
        .collect();
    while threads.iter().any(|t| !t.is_finished()) {
        std::thread::sleep(Duration::from_millis(250));
        rss.sample(&mut agent, &format!("{} flood requests", done.load(Ordering::Relaxed)));
    }
    for t in threads {
        t.join().expect("flood thread panicked");
    }
    let flood_time = started.elapsed();
    rss.sample(&mut agent, "flood");
    let me = std::process::id() as i64;
    let flood_spans = |spans: &[ReceivedSpan]| -> (usize, usize) {
        let servers = spans
            .iter()
            .filter(|s| {
                s.kind() == SpanKind::Server
                    && s.service_name().as_deref() == Some("nginx")
                    && s.url_path().as_deref() == Some("/hello.txt")
            })
            .count();
        let clients = spans
            .iter()
            .filter(|s| {
                s.kind() == SpanKind::Client
                    && s.resource_int("process.pid") == Some(me)
                    && s.url_path().as_deref() == Some("/hello.txt")
            })
            .count();
        (servers, clients)
    };
    receiver.wait_until(SPAN_WAIT, |spans| {
        let (s, c) = flood_spans(spans);
        s >= FLOOD_REQUESTS && c >= FLOOD_REQUESTS
    });
    rss.sample(&mut agent, "flood export");

    // 4. A final ordinary request is still traced correctly.
    let final_path = numbered_path(42);
    let run = curl(&["-o", "/dev/null", "-w", "%{http_code}", &nginx.url(&final_path)]);
    assert_eq!(run.stdout(), "200");
    let is_final = |s: &ReceivedSpan| s.url_path().as_deref() == Some(final_path.as_str());
    receiver.wait_for_count(2, SPAN_WAIT, is_final);
    rss.sample(&mut agent, "final request");

    let exit = agent.stop();
    receiver.assert_no_errors();
    let spans = receiver.spans();
    assert_unique_span_ids(&spans);
    let (servers, clients) = flood_spans(&spans);
    assert_eq!(
        (servers, clients),
        (FLOOD_REQUESTS, FLOOD_REQUESTS),
        "flood of {FLOOD_REQUESTS} requests (took {flood_time:?}): expected exactly one nginx server \
         span and one client span of this process per request; {} spans existed before the flood\n{}",
        before_flood,
        exit.stats_line().unwrap_or_default()
    );

    let finals: Vec<ReceivedSpan> = spans.iter().filter(|s| is_final(s)).cloned().collect();
    let final_servers: Vec<_> = finals.iter().filter(|s| s.kind() == SpanKind::Server).cloned().collect();
    let final_clients: Vec<_> = finals.iter().filter(|s| s.kind() == SpanKind::Client).cloned().collect();
    assert_eq!(final_servers.len(), 1, "{}", dump(&finals));
    assert_eq!(final_clients.len(), 1, "{}", dump(&finals));
    let (server, client) = (&final_servers[0], &final_clients[0]);
    assert_resource_str(server, "service.name", "nginx");
    assert_resource_str(client, "service.name", "curl");
    assert_eq!(client.resource_int("process.pid"), Some(run.pid as i64));
    for s in [server, client] {
        assert_attr_str(s, "http.request.method", "GET");
        assert_status(s, 200, false);
        assert_attr_int(s, "server.port", nginx_port as i64);
        assert_attr_str(s, "network.protocol.version", "1.1");
        assert_attr_int(s, "http.response.body.size", numbered_body(42).len() as i64);
        assert!(s.start_ns() < s.end_ns(), "{s}");
    }

    // Nothing else: the spans are those of the malformed-HTTP phase
    // (whatever they were), the flood's and the final request's.
    assert_eq!(
        spans.len(),
        before_flood + FLOOD_REQUESTS * 2 + 2,
        "unexpected extra spans ({before_flood} before the flood)\n{}",
        dump(&spans.iter().filter(|s| s.url_path().as_deref() != Some("/hello.txt")).cloned().collect::<Vec<_>>())
    );
    assert!(rss.max_kib < MAX_RSS_KIB, "max RSS {} KiB; samples {:?}", rss.max_kib, rss.samples);
    eprintln!(
        "robustness: max agent RSS {} KiB, flood of {} requests took {:?}; {}",
        rss.max_kib,
        FLOOD_REQUESTS,
        flood_time,
        exit.stats_line().unwrap_or_default()
    );
}
