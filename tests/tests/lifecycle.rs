//! The agent's life around the traffic: connections that were open before it
//! started, a collector that is down, and configuration mistakes.
//!
//! Run as root with `TRACER_AGENT_BIN` pointing at the agent binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use tracer_tests::*;

/// Send one keep-alive request on `s` and read exactly one response.
fn request_on(s: &mut TcpStream, path: &str) -> RawResponse {
    s.write_all(get_request(path, "127.0.0.1", false).as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed before a response to {path}");
        buf.extend_from_slice(&chunk[..n]);
        let head_done = buf.windows(4).any(|w| w == b"\r\n\r\n");
        if head_done {
            let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("nginx sends Content-Length for static files");
            let head = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            if buf.len() >= head + len {
                let mut r = parse_responses(&buf[..head + len]);
                return r.remove(0);
            }
        }
    }
}

/// A keep-alive connection opened (and used) before the agent starts: the
/// requests made on it afterwards are all traced, once each, on both sides.
#[test]
fn connection_open_before_the_agent_starts() {
    let _serial = serial();
    agent_bin();
    let root = WebRoot::new();
    let port = free_port();
    let _nginx = Nginx::start(port, root.path());
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(request_on(&mut conn, "/hello.txt").status, 200);

    let receiver = Receiver::start();
    let agent = AgentBuilder::new(&receiver).port(port).start();
    let paths = ["/hello.txt?n=1", "/hello.txt?n=2", "/missing-after-start"];
    for p in paths {
        request_on(&mut conn, p);
    }
    drop(conn);
    receiver.wait_for_count(6, Duration::from_secs(10), |_| true);
    let exit = agent.stop();
    assert!(exit.status.success());
    let spans = receiver.spans();
    assert_unique_span_ids(&spans);
    let servers = receiver.spans_of(SpanKind::Server, "nginx");
    let clients = receiver.client_spans();
    assert_eq!(servers.len(), 3, "{}", dump(&spans));
    assert_eq!(clients.len(), 3, "{}", dump(&spans));
    assert_eq!(spans.len(), 6, "{}", dump(&spans));
    let mut got: Vec<String> = servers.iter().map(|s| s.attr_str("url.path").unwrap()).collect();
    got.sort();
    assert_eq!(got, vec!["/hello.txt", "/hello.txt", "/missing-after-start"]);
    for s in &servers {
        let expect = if s.url_path().as_deref() == Some("/missing-after-start") { 404 } else { 200 };
        assert_attr_int(s, "http.response.status_code", expect);
        // Both ends were traced and the request had no trace context: linked.
        let client = clients.iter().find(|c| c.span_id_hex() == s.parent_span_id_hex());
        assert!(client.is_some(), "server span not linked to a client span: {}", dump(&spans));
        assert_eq!(client.unwrap().trace_id_hex(), s.trace_id_hex());
    }
    receiver.assert_no_errors();
}

/// With the collector down the agent keeps tracing, counts every span it could
/// not deliver, and still exits cleanly.
#[test]
fn dead_collector_is_counted_not_fatal() {
    let _serial = serial();
    agent_bin();
    let root = WebRoot::new();
    let port = free_port();
    let _nginx = Nginx::start(port, root.path());
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let receiver = Receiver::start();
        let dead = format!("http://127.0.0.1:{}", free_port());
        let agent = AgentBuilder::new(&receiver)
            .protocol(protocol)
            .port(port)
            .arg("--otlp-timeout-ms")
            .arg("2000")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", dead)
            .start();
        for i in 0..5 {
            let url = format!("http://127.0.0.1:{port}/hello.txt?i={i}");
            let out = Command::new("curl").args(["-s", "-o", "/dev/null", &url]).status().unwrap();
            assert!(out.success());
        }
        std::thread::sleep(Duration::from_millis(800));
        let exit = agent.stop();
        assert!(exit.status.success(), "{:?}", exit.status);
        let stats = exit.stats_line().expect("stats line").to_string();
        assert!(stats.contains(" spans=10 "), "{stats}");
        assert!(stats.contains(" spans_exported=0 "), "{stats}");
        assert!(stats.contains(" spans_dropped_export_failed=10 "), "{stats}");
        assert!(receiver.spans().is_empty());
    }
}

/// Configuration mistakes: one line on stderr, exit code 1, nothing loaded.
#[test]
fn bad_configuration_is_one_clear_line() {
    let bin = agent_bin();
    let cases: &[(&[&str], &[(&str, &str)], &str)] = &[
        (
            &["--otlp-endpoint", "http://127.0.0.1:4318"],
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")],
            "unknown OTLP protocol",
        ),
        (&["--otlp-endpoint", "ftp://collector"], &[], "must start with http://"),
        (&[], &[("OTEL_RESOURCE_ATTRIBUTES", "novalue")], "OTEL_RESOURCE_ATTRIBUTES"),
        (&["--service-name", "nginx"], &[], "--service-name"),
        (&["--route", "no-leading-slash"], &[], "--route"),
    ];
    for (args, env, needle) in cases {
        let mut cmd = Command::new(&bin);
        cmd.args(*args).env_remove("OTEL_EXPORTER_OTLP_ENDPOINT").env_remove("OTEL_RESOURCE_ATTRIBUTES");
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} {env:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?} {env:?}: {stderr}");
        assert!(lines[0].starts_with("tracer-agent: error: "), "{stderr}");
        assert!(lines[0].contains(needle), "{stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    }
}

/// The collector receiving the agent's exports is itself on a traced port:
/// its side of the agent's export connection must not produce spans (no
/// feedback loop), while other traffic on the same ports still does.
#[test]
fn exports_to_a_traced_collector_are_not_traced() {
    let _serial = serial();
    agent_bin();
    let root = WebRoot::new();
    let port = free_port();
    let _nginx = Nginx::start(port, root.path());
    let receiver = Receiver::start();
    let agent = AgentBuilder::new(&receiver)
        .protocol(Protocol::HttpProtobuf)
        .port(port)
        .port(receiver.http_addr().port())
        .start();
    for i in 0..3 {
        let url = format!("http://127.0.0.1:{port}/hello.txt?i={i}");
        assert!(Command::new("curl").args(["-s", "-o", "/dev/null", &url]).status().unwrap().success());
        // Let an export happen between requests, so that later requests
        // travel while the agent's export connection is open.
        std::thread::sleep(Duration::from_millis(400));
    }
    receiver.wait_for_count(6, Duration::from_secs(10), |_| true);
    std::thread::sleep(Duration::from_millis(600));
    let exit = agent.stop();
    assert!(exit.status.success());
    let spans = receiver.spans();
    assert!(
        spans.iter().all(|s| s.url_path().as_deref() == Some("/hello.txt")),
        "the collector's side of the export connection was traced: {}",
        dump(&spans)
    );
    assert_eq!(spans.len(), 6, "{}", dump(&spans));
    assert!(receiver.export_requests(Transport::HttpProtobuf) >= 2);
}

/// What a span says, without its random ids: kind, name, times, status,
/// attributes, service, and the name and times of its parent.
fn span_facts(span: &ReceivedSpan, all: &[ReceivedSpan]) -> String {
    let mut attrs: Vec<String> =
        span.span.attributes.iter().map(|kv| format!("{}={}", kv.key, receiver::display_value(&kv.value))).collect();
    attrs.sort();
    let parent = if span.span.parent_span_id.is_empty() {
        "root".to_string()
    } else {
        match all.iter().find(|p| p.span.span_id == span.span.parent_span_id) {
            Some(p) if p.span.trace_id == span.span.trace_id => {
                format!("child of {} {}..{}", p.name(), p.start_ns(), p.end_ns())
            }
            Some(p) => format!("parent {} in another trace", p.name()),
            None => "parent not exported".to_string(),
        }
    };
    format!(
        "{:?} {} {}..{} status={:?} service={:?} {parent} [{}]",
        span.kind(),
        span.name(),
        span.start_ns(),
        span.end_ns(),
        span.status_code(),
        span.service_name(),
        attrs.join(" ")
    )
}

fn all_facts(spans: &[ReceivedSpan]) -> Vec<String> {
    let mut facts: Vec<String> = spans.iter().map(|s| span_facts(s, spans)).collect();
    facts.sort();
    facts
}

/// `--record` writes the raw kernel events of a live run; `--replay` feeds
/// them through the pipeline again and exports exactly the spans the live
/// run exported: same names, times, attributes, status and parents.
#[test]
fn a_recorded_run_replays_to_the_same_spans() {
    let _serial = serial();
    agent_bin();
    let root = WebRoot::new();
    let port = free_port();
    let _nginx = Nginx::start(port, root.path());
    let record = std::env::temp_dir().join(format!("tracer-replay-{}.rec", std::process::id()));
    let _ = std::fs::remove_file(&record);

    let live = Receiver::start();
    let agent = AgentBuilder::new(&live).port(port).arg("--record").arg(record.display().to_string()).start();
    // Two curl runs: 6 requests on one keep-alive connection, then a 404 and
    // a POST on another.
    let urls: Vec<String> = (0..6).map(|i| format!("http://127.0.0.1:{port}{}", numbered_path(i))).collect();
    let mut args: Vec<&str> = Vec::new();
    for u in &urls {
        args.extend(["-o", "/dev/null", u.as_str()]);
    }
    curl(&args);
    let missing = format!("http://127.0.0.1:{port}/no/such/page?x=1");
    let hello = format!("http://127.0.0.1:{port}/hello.txt");
    curl(&["-o", "/dev/null", &missing, "--next", "-sS", "-o", "/dev/null", "--data", "a=1", &hello]);
    let expected = 2 * 8;
    live.wait_for_count(expected, Duration::from_secs(10), |_| true);
    std::thread::sleep(Duration::from_millis(500));
    let exit = agent.stop();
    assert!(exit.status.success());
    let live_spans = live.spans();
    assert_eq!(live_spans.len(), expected, "{}", dump(&live_spans));
    assert_eq!(live.spans_of(SpanKind::Server, "nginx").len(), 8, "{}", dump(&live_spans));
    live.assert_no_errors();

    let replayed = Receiver::start();
    let out = AgentBuilder::new(&replayed).arg("--replay").arg(record.display().to_string()).run_to_end();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "replay failed: {stderr}");
    assert!(stderr.contains(&format!("spans_exported={expected} ")), "{stderr}");
    assert!(stderr.contains(" spans_dropped=0 "), "{stderr}");
    let replayed_spans = replayed.spans();
    replayed.assert_no_errors();
    assert_eq!(all_facts(&replayed_spans), all_facts(&live_spans), "replayed:\n{}", dump(&replayed_spans));
    let _ = std::fs::remove_file(&record);
}
