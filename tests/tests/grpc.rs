//! HTTP/2 and gRPC scenarios: Python (grpcio) and gRPC-Go servers, Python
//! and h2load clients, nginx speaking cleartext HTTP/2 to curl and h2load.
//! Each test starts its own servers and its own agent restricted with
//! `--port <server port>`, drives a known number of calls, stops the agent
//! and checks the spans exactly: N calls give N server spans and N client
//! spans, with the `rpc.*` / `http.*` attributes and statuses the agent
//! documents.
//!
//! Run as root with `TRACER_AGENT_BIN` pointing at the agent binary.

use std::collections::HashMap;
use std::fs;
use std::time::Duration;

use tracer_tests::grpc::*;
use tracer_tests::*;

/// Waits (bounded) until `pred` holds for the received spans, then stops
/// the agent and returns every span, checked for unique ids.
fn finish(receiver: &Receiver, agent: Agent, pred: impl Fn(&[ReceivedSpan]) -> bool) -> (Vec<ReceivedSpan>, AgentExit) {
    receiver.wait_until(SPAN_WAIT, pred);
    let exit = agent.stop();
    receiver.assert_no_errors();
    let spans = receiver.spans();
    assert_unique_span_ids(&spans);
    (spans, exit)
}

fn count_pid(spans: &[ReceivedSpan], kind: SpanKind, pid: u32) -> usize {
    spans.iter().filter(|s| s.kind() == kind && s.resource_int("process.pid") == Some(pid as i64)).count()
}

/// Asserts exactly `servers` spans from `server_pid`, `clients` spans from
/// `client_pid` and nothing else.
#[track_caller]
fn assert_exact_counts(
    spans: &[ReceivedSpan],
    exit: &AgentExit,
    server_pid: u32,
    servers: usize,
    client_pid: u32,
    clients: usize,
) {
    let s = count_pid(spans, SpanKind::Server, server_pid);
    let c = count_pid(spans, SpanKind::Client, client_pid);
    assert!(
        s == servers && c == clients && spans.len() == servers + clients,
        "expected exactly {servers} server spans (pid {server_pid}) and {clients} client spans \
         (pid {client_pid}), got {s} / {c} / {} in total\nagent {}\n{}",
        spans.len(),
        exit.stats_line().unwrap_or("<no stats>"),
        dump(spans)
    );
}

/// Expected multiset of (span name, status code) for a list of calls.
fn expected_name_codes(calls: &[(&str, i64)]) -> Vec<(String, Option<i64>, usize)> {
    let mut m: HashMap<(String, Option<i64>), usize> = HashMap::new();
    for (method, code) in calls {
        *m.entry((format!("{GRPC_SERVICE}/{method}"), Some(*code))).or_default() += 1;
    }
    let mut v: Vec<_> = m.into_iter().map(|((n, c), k)| (n, c, k)).collect();
    v.sort();
    v
}

/// Resource of a span against the process that produced it.
#[track_caller]
fn assert_process(span: &ReceivedSpan, service: &str, pid: u32) {
    assert_eq!(span.resource_int("process.pid"), Some(pid as i64), "resource process.pid\n{span}");
    assert_resource_str(span, "service.name", service);
}

// ---------------------------------------------------------------------------
// Python server, Python client.

/// Unary OK and error calls (NOT_FOUND, INTERNAL via `context.abort`, sent
/// as trailers-only responses), server streaming, client streaming and
/// bidirectional streaming, all on one channel between two Python
/// processes: one span per call on each side, exact attributes and
/// statuses, and each server span's parent is the client span of the call.
#[test]
fn python_server_python_client() {
    let _serial = serial();
    agent_bin();
    let port = free_port();
    let mut server = start_python_grpc_server(port);
    let receiver = Receiver::start();
    let agent = AgentBuilder::new(&receiver).port(port).start();

    let plan =
        [("unary", 5), ("notfound", 2), ("internal", 1), ("server_stream", 2), ("client_stream", 2), ("bidi", 2)];
    let total: usize = plan.iter().map(|(_, n)| n).sum();
    let t0 = now_unix_nanos();
    let run = run_python_grpc_client(port, &plan, &[]);
    let t1 = now_unix_nanos();
    for call in &run.calls {
        let want = match call.scenario.as_str() {
            "notfound" => "NOT_FOUND",
            "internal" => "INTERNAL",
            _ => "OK",
        };
        assert_eq!(call.code, want, "{}", run.stdout);
    }
    server.assert_running();

    let (spans, exit) = finish(&receiver, agent, |spans| spans.len() >= 2 * total);
    assert_exact_counts(&spans, &exit, server.pid(), total, run.pid, total);
    let servers = spans_of_pid(&spans, SpanKind::Server, server.pid());
    let clients = spans_of_pid(&spans, SpanKind::Client, run.pid);

    let calls: Vec<(&str, i64)> = run.calls.iter().map(|c| (c.method(), scenario_code(&c.scenario))).collect();
    let want = expected_name_codes(&calls);
    assert_eq!(name_code_counts(&servers), want, "server spans per (name, status code)\n{}", dump(&spans));
    assert_eq!(name_code_counts(&clients), want, "client spans per (name, status code)\n{}", dump(&spans));
    for s in &servers {
        let method = s.attr_str("rpc.method").unwrap();
        let code = s.attr_int("rpc.grpc.status_code").unwrap();
        assert_grpc_span(s, SpanKind::Server, &method, code, port);
        assert_process(s, "python3", server.pid());
        assert_timing(s, t0, t1);
    }
    for c in &clients {
        let method = c.attr_str("rpc.method").unwrap();
        let code = c.attr_int("rpc.grpc.status_code").unwrap();
        assert_grpc_span(c, SpanKind::Client, &method, code, port);
        assert_process(c, "python3", run.pid);
        assert_timing(c, t0, t1);
    }
    // One connection: every server span sees the same client port.
    let peers: std::collections::HashSet<i64> =
        servers.iter().map(|s| s.attr_int("network.peer.port").unwrap()).collect();
    assert_eq!(peers.len(), 1, "one channel, one connection\n{}", dump(&servers));
    assert_linked_one_to_one(&servers, &clients);
}

// ---------------------------------------------------------------------------
// gRPC-Go server.

/// Python client against the gRPC-Go server: 10 unary OK calls and 2
/// NOT_FOUND calls (trailers-only from Go) give 12 + 12 spans.
#[test]
fn go_server_python_client() {
    let _serial = serial();
    agent_bin();
    go_server_bin();
    let port = free_port();
    let mut server = start_go_grpc_server(port);
    let receiver = Receiver::start();
    let agent = AgentBuilder::new(&receiver).port(port).start();

    let plan = [("unary", 10), ("notfound", 2)];
    let total = 12;
    let t0 = now_unix_nanos();
    let run = run_python_grpc_client(port, &plan, &[]);
    let t1 = now_unix_nanos();
    server.assert_running();

    let (spans, exit) = finish(&receiver, agent, |spans| spans.len() >= 2 * total);
    assert_exact_counts(&spans, &exit, server.pid(), total, run.pid, total);
    let servers = spans_of_pid(&spans, SpanKind::Server, server.pid());
    let clients = spans_of_pid(&spans, SpanKind::Client, run.pid);
    let want = expected_name_codes(&[
        ("SayHello", 0),
        ("SayHello", 0),
        ("SayHello", 0),
        ("SayHello", 0),
        ("SayHello", 0),
        ("SayHello", 0),
        ("SayHello", 0),
        ("SayHello", 0),
        ("SayHello", 0),
        ("SayHello", 0),
        ("Fail", 5),
        ("Fail", 5),
    ]);
    assert_eq!(name_code_counts(&servers), want, "{}", dump(&spans));
    assert_eq!(name_code_counts(&clients), want, "{}", dump(&spans));
    for s in &servers {
        let method = s.attr_str("rpc.method").unwrap();
        let code = s.attr_int("rpc.grpc.status_code").unwrap();
        assert_grpc_span(s, SpanKind::Server, &method, code, port);
        assert_process(s, GO_SERVER_NAME, server.pid());
        assert_timing(s, t0, t1);
    }
    for c in &clients {
        let method = c.attr_str("rpc.method").unwrap();
        let code = c.attr_int("rpc.grpc.status_code").unwrap();
        assert_grpc_span(c, SpanKind::Client, &method, code, port);
        assert_process(c, "python3", run.pid);
        assert_timing(c, t0, t1);
    }
    assert_linked_one_to_one(&servers, &clients);
}

/// h2load sends 200 framed gRPC requests to the gRPC-Go server, 20
/// concurrent streams on one connection: 200 server spans with status 0 and
/// 200 h2load client spans, one per stream.
#[test]
fn go_server_h2load_concurrent_streams() {
    let _serial = serial();
    agent_bin();
    go_server_bin();
    let port = free_port();
    let mut server = start_go_grpc_server(port);
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("request.bin");
    fs::write(&body, grpc_frame(b"h2load")).unwrap();
    let receiver = Receiver::start();
    let agent = AgentBuilder::new(&receiver).port(port).start();

    let n = 200;
    let url = format!("http://127.0.0.1:{port}/{GRPC_SERVICE}/SayHello");
    let t0 = now_unix_nanos();
    let run = h2load(&[
        "-n",
        &n.to_string(),
        "-c",
        "1",
        "-m",
        "20",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-d",
        &body.display().to_string(),
        &url,
    ]);
    let t1 = now_unix_nanos();
    assert_eq!((run.total, run.succeeded, run.failed, run.errored, run.status_2xx), (n, n, 0, 0, n), "{}", run.stdout);
    server.assert_running();

    let n = n as usize;
    let (spans, exit) = finish(&receiver, agent, |spans| spans.len() >= 2 * n);
    assert_exact_counts(&spans, &exit, server.pid(), n, run.pid, n);
    let servers = spans_of_pid(&spans, SpanKind::Server, server.pid());
    let clients = spans_of_pid(&spans, SpanKind::Client, run.pid);
    for s in &servers {
        assert_grpc_span(s, SpanKind::Server, "SayHello", 0, port);
        assert_process(s, GO_SERVER_NAME, server.pid());
        assert_timing(s, t0, t1);
    }
    for c in &clients {
        assert_grpc_span(c, SpanKind::Client, "SayHello", 0, port);
        assert_process(c, "h2load", run.pid);
        assert_timing(c, t0, t1);
    }
    assert_linked_one_to_one(&servers, &clients);
}

// ---------------------------------------------------------------------------
// nginx over cleartext HTTP/2.

/// Paths fetched from [`NginxH2`] and the status each answers with.
fn nginx_h2_paths() -> Vec<(String, u16)> {
    vec![
        ("/hello.txt".into(), 200),
        (numbered_path(3), 200),
        (numbered_path(42), 200),
        ("/index.html".into(), 200),
        (NGINX_MISSING_PATH.into(), 404),
        (H2_ERROR_PATH.into(), 500),
    ]
}

/// Checks the plain HTTP/2 spans of one nginx scenario: one server span
/// (nginx worker) and one client span per path, HTTP semantic conventions
/// with protocol version 2, server ERROR for 5xx, client ERROR for 4xx/5xx,
/// and each server span linked to the client span of the same request.
#[allow(clippy::too_many_arguments)]
fn check_nginx_h2_spans(
    spans: &[ReceivedSpan],
    nginx: &NginxH2,
    root: &WebRoot,
    client_name: &str,
    client_pids: &[u32],
    expected: &[(String, u16)],
    t0: u64,
    t1: u64,
) {
    let worker = nginx.worker();
    let port = nginx.port();
    let n = expected.len();
    let servers = spans_of_pid(spans, SpanKind::Server, worker);
    let clients: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|s| {
            s.kind() == SpanKind::Client && client_pids.iter().any(|p| s.resource_int("process.pid") == Some(*p as i64))
        })
        .cloned()
        .collect();
    assert!(
        servers.len() == n && clients.len() == n && spans.len() == 2 * n,
        "expected exactly {n} nginx server spans and {n} {client_name} client spans, got {} / {} / {} in total\n{}",
        servers.len(),
        clients.len(),
        spans.len(),
        dump(spans)
    );
    let paths: Vec<String> = expected.iter().map(|(p, _)| p.clone()).collect();
    assert_paths_once(&servers, &paths);
    assert_paths_once(&clients, &paths);
    for (s, kind) in servers.iter().map(|s| (s, SpanKind::Server)).chain(clients.iter().map(|c| (c, SpanKind::Client)))
    {
        let path = s.url_path().unwrap();
        let code = expected.iter().find(|(p, _)| *p == path).unwrap().1;
        let error = code >= 500 || (kind == SpanKind::Client && code >= 400);
        assert_status(s, code, error);
        assert_attr_str(s, "http.request.method", "GET");
        assert_attr_str(s, "network.protocol.version", "2");
        assert_attr_str(s, "server.address", "127.0.0.1");
        assert_attr_int(s, "server.port", port as i64);
        assert_attr_str(s, "network.peer.address", "127.0.0.1");
        assert!(!s.has_attr("rpc.system"), "plain HTTP/2 is not gRPC\n{s}");
        assert!(!s.has_attr("tracer.headers_incomplete"), "{s}");
        assert_timing(s, t0, t1);
        if kind == SpanKind::Server {
            assert_process(s, "nginx", worker);
            assert_attr_str(s, "client.address", "127.0.0.1");
            let route = if path.starts_with("/files/") {
                "/files/{name}".to_string()
            } else {
                s.attr_str("http.route").unwrap_or_else(|| panic!("server span without http.route\n{s}"))
            };
            assert_attr_str(s, "http.route", &route);
            assert_eq!(s.name(), format!("GET {route}"), "{s}");
            if code == 200 {
                let size = root.file_size(&path) as i64;
                assert_attr_int(s, "http.response.body.size", size);
            }
        } else {
            assert_resource_str(s, "service.name", client_name);
            assert_attr_int(s, "network.peer.port", port as i64);
            assert_eq!(s.name(), "GET", "{s}");
        }
    }
    assert_linked_one_to_one_http(&servers, &clients);
}

/// curl --http2-prior-knowledge against nginx, one curl per URL (one
/// HTTP/2 connection each), including a 404 and a 500.
///
/// curl 7.88 (Debian 12) cannot reuse a prior-knowledge connection for a
/// second URL ("Error in the HTTP2 framing layer", fixed in curl 8.0), so
/// several streams on one connection are covered with nghttp below.
#[test]
fn nginx_http2_curl_prior_knowledge() {
    let _serial = serial();
    agent_bin();
    let root = WebRoot::new();
    let port = free_port();
    let nginx = NginxH2::start(port, root.path());
    let receiver = Receiver::start();
    let agent = AgentBuilder::new(&receiver).port(port).args(["--route", "/files/{name}"]).start();

    let expected = nginx_h2_paths();
    let t0 = now_unix_nanos();
    let mut pids = Vec::new();
    for (path, code) in &expected {
        let run = curl(&[
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            &nginx.url(path),
        ]);
        assert_eq!(run.stdout(), format!("{code} 2"), "curl {path}");
        pids.push(run.pid);
    }
    let t1 = now_unix_nanos();

    let n = expected.len();
    let (spans, _exit) = finish(&receiver, agent, |spans| spans.len() >= 2 * n);
    check_nginx_h2_spans(&spans, &nginx, &root, "curl", &pids, &expected, t0, t1);
    for c in spans.iter().filter(|s| s.kind() == SpanKind::Client) {
        // One request per curl process.
        let same_pid = spans
            .iter()
            .filter(|o| o.kind() == SpanKind::Client && o.resource_int("process.pid") == c.resource_int("process.pid"))
            .count();
        assert_eq!(same_pid, 1, "{}", dump(&spans));
    }
}

/// nghttp fetches several URLs (including a 404 and a 500) as concurrent
/// streams of one prior-knowledge HTTP/2 connection to nginx.
#[test]
fn nginx_http2_nghttp_one_connection() {
    let _serial = serial();
    agent_bin();
    let nghttp = require_program("nghttp");
    let root = WebRoot::new();
    let port = free_port();
    let nginx = NginxH2::start(port, root.path());
    let receiver = Receiver::start();
    let agent = AgentBuilder::new(&receiver).port(port).args(["--route", "/files/{name}"]).start();

    let expected = nginx_h2_paths();
    let t0 = now_unix_nanos();
    let child = std::process::Command::new(nghttp)
        .arg("-ns")
        .args(expected.iter().map(|(p, _)| nginx.url(p)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning nghttp");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let t1 = now_unix_nanos();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "nghttp failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // Statistics rows: "id responseEnd requestStart process code size path".
    let mut got: Vec<(String, u16)> = stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 7 && f[0].parse::<u32>().is_ok()).then(|| (f[6].to_string(), f[4].parse().unwrap()))
        })
        .collect();
    got.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(got, want, "{stdout}");

    let n = expected.len();
    let (spans, _exit) = finish(&receiver, agent, |spans| spans.len() >= 2 * n);
    check_nginx_h2_spans(&spans, &nginx, &root, "nghttp", &[pid], &expected, t0, t1);
    let peers: std::collections::HashSet<i64> =
        spans.iter().filter(|s| s.kind() == SpanKind::Server).filter_map(|s| s.attr_int("network.peer.port")).collect();
    assert_eq!(peers.len(), 1, "one connection\n{}", dump(&spans));
}

/// Like [`assert_linked_one_to_one`] for HTTP spans, whose names differ
/// between the two sides: linked spans must carry the same `url.path`.
#[track_caller]
fn assert_linked_one_to_one_http(servers: &[ReceivedSpan], clients: &[ReceivedSpan]) {
    let mut used = std::collections::HashSet::new();
    for s in servers {
        let c = clients
            .iter()
            .find(|c| c.span.span_id == s.span.parent_span_id)
            .unwrap_or_else(|| panic!("server span's parent is not a client span\n{s}\n{}", dump(clients)));
        assert_eq!(s.span.trace_id, c.span.trace_id, "{s}\n{c}");
        assert_eq!(s.url_path(), c.url_path(), "{s}\n{c}");
        assert!(used.insert(c.span.span_id.clone()), "{}", dump(servers));
        assert!(c.span.parent_span_id.is_empty(), "{c}");
    }
}

/// h2load: 100 requests, 10 concurrent streams on one connection to nginx:
/// 100 nginx server spans and 100 h2load client spans.
#[test]
fn nginx_http2_h2load() {
    let _serial = serial();
    agent_bin();
    let root = WebRoot::new();
    let port = free_port();
    let nginx = NginxH2::start(port, root.path());
    let worker = nginx.worker();
    let receiver = Receiver::start();
    let agent = AgentBuilder::new(&receiver).port(port).start();

    let n = 100u64;
    let t0 = now_unix_nanos();
    let run = h2load(&["-n", &n.to_string(), "-c", "1", "-m", "10", &nginx.url("/hello.txt")]);
    let t1 = now_unix_nanos();
    assert_eq!((run.total, run.succeeded, run.failed, run.errored, run.status_2xx), (n, n, 0, 0, n), "{}", run.stdout);

    let n = n as usize;
    let (spans, exit) = finish(&receiver, agent, |spans| spans.len() >= 2 * n);
    assert_exact_counts(&spans, &exit, worker, n, run.pid, n);
    let servers = spans_of_pid(&spans, SpanKind::Server, worker);
    let clients = spans_of_pid(&spans, SpanKind::Client, run.pid);
    for s in servers.iter().chain(&clients) {
        assert_attr_str(s, "url.path", "/hello.txt");
        assert_attr_str(s, "http.request.method", "GET");
        assert_status(s, 200, false);
        assert_attr_str(s, "network.protocol.version", "2");
        assert_attr_int(s, "server.port", port as i64);
        assert!(!s.has_attr("rpc.system"), "{s}");
        assert_timing(s, t0, t1);
    }
    for s in &servers {
        assert_process(s, "nginx", worker);
        assert_attr_int(s, "http.response.body.size", HELLO_BODY.len() as i64);
    }
    for c in &clients {
        assert_process(c, "h2load", run.pid);
        assert_eq!(c.name(), "GET", "{c}");
    }
    assert_linked_one_to_one_http(&servers, &clients);
}

// ---------------------------------------------------------------------------
// Attaching to a busy connection.

/// Slack when matching span times to the client's own call times (the
/// agent converts kernel timestamps to wall-clock time).
const MATCH_SLACK_NS: u64 = 20_000_000;

/// Index of the call whose interval contains the span (with slack).
fn matching_call(span: &ReceivedSpan, calls: &[CallRecord]) -> Option<usize> {
    let found: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| span.start_ns() + MATCH_SLACK_NS >= c.start_ns && span.end_ns() <= c.end_ns + MATCH_SLACK_NS)
        .map(|(i, _)| i)
        .collect();
    match found.as_slice() {
        [i] => Some(*i),
        _ => None,
    }
}

/// The agent starts while a Python client keeps one channel busy with a call
/// every 100 ms (SayHello and CollectHellos alternately). The HPACK dynamic
/// table of that connection is unknown to the agent, yet every call made
/// while it runs gives one server and one client span.
///
/// Window: calls that ended before the agent was spawned must have no span;
/// calls that started after it reported ready must each have exactly one
/// span per side. Calls that overlap the agent's start-up (spawned..ready,
/// when the probes get attached) may or may not be traced, but what is
/// traced is a contiguous run of calls up to the last one: once attached the
/// agent misses nothing. The client is stopped before the agent, so the end
/// of the window has no boundary call.
///
/// Every span is matched to the call whose logged interval contains it; a
/// span that names a method must name that call's method, and the spans of
/// the later calls (the last half) must all carry `rpc.method`.
#[test]
fn attach_to_busy_grpc_connection() {
    let _serial = serial();
    agent_bin();
    let port = free_port();
    let mut server = start_python_grpc_server(port);
    let mut client = LongClient::start(port, 100);
    client.wait_for_calls(5, Duration::from_secs(20));

    let receiver = Receiver::start();
    let t_spawn = now_unix_nanos();
    let agent = AgentBuilder::new(&receiver).port(port).start();
    let t_ready = now_unix_nanos();
    // Methods first called before the attach are dynamic-table references
    // the agent can never decode; a method first called now is sent
    // literally once and then decodable.
    client.start_new_method();
    std::thread::sleep(Duration::from_secs(2));
    let client_pid = client.pid();
    let calls = client.stop();
    server.assert_running();

    let required = calls.iter().filter(|c| c.start_ns >= t_ready).count();
    assert!(
        calls.iter().filter(|c| c.scenario == "server_stream").count() >= 3,
        "the client should have called the new method several times: {calls:?}"
    );
    assert!(required >= 10, "expected about 20 calls after ready: {calls:?}");
    let (spans, exit) = finish(&receiver, agent, |spans| spans.len() >= 2 * required);
    let diag = || {
        format!(
            "agent {}\nt_spawn={t_spawn} t_ready={t_ready}\ncalls:\n{}\n{}",
            exit.stats_line().unwrap_or("<no stats>"),
            calls
                .iter()
                .map(|c| format!("  {} {} {} {}..{}", c.index, c.scenario, c.code, c.start_ns, c.end_ns))
                .collect::<Vec<_>>()
                .join("\n"),
            dump(&spans)
        )
    };
    assert!(calls.iter().all(|c| c.code == "OK"), "every call must succeed\n{}", diag());
    let server_pid = server.pid();
    for s in &spans {
        let pid = s.resource_int("process.pid");
        let want = if pid == Some(server_pid as i64) {
            SpanKind::Server
        } else if pid == Some(client_pid as i64) {
            SpanKind::Client
        } else {
            panic!("span from an unexpected process\n{s}\n{}", diag());
        };
        assert_eq!(
            s.kind(),
            want,
            "span kind must follow who accepted the connection (server pid {server_pid}, \
             client pid {client_pid})\n{s}\n{}",
            diag()
        );
    }

    for (kind, pid) in [(SpanKind::Server, server_pid), (SpanKind::Client, client_pid)] {
        let side = spans_of_pid(&spans, kind, pid);
        let mut matched: Vec<Option<usize>> = vec![None; calls.len()];
        for s in &side {
            let Some(i) = matching_call(s, &calls) else {
                panic!("{kind:?} span matches no single call\n{s}\n{}", diag());
            };
            assert!(matched[i].is_none(), "two {kind:?} spans for call {i}\n{}", diag());
            matched[i] = Some(i);
            let c = &calls[i];
            assert!(
                c.end_ns >= t_spawn,
                "{kind:?} span for call {i}, which ended before the agent started\n{s}\n{}",
                diag()
            );
            assert_eq!(s.attr_str("rpc.system").as_deref(), Some("grpc"), "{s}");
            if let Some(m) = s.attr_str("rpc.method") {
                assert_eq!(m, c.method(), "span names another call's method\n{s}\n{}", diag());
                assert_eq!(s.name(), format!("{GRPC_SERVICE}/{m}"), "{s}");
            }
            if s.has_attr("rpc.grpc.status_code") {
                assert_attr_int(s, "rpc.grpc.status_code", 0);
            }
            if c.scenario == "server_stream" {
                assert_eq!(
                    s.attr_str("rpc.method").as_deref(),
                    Some(c.method()),
                    "calls of a method first used after the attach must have it decoded\n{s}\n{}",
                    diag()
                );
                if s.has_attr("rpc.grpc.status_code") {
                    assert_grpc_span(s, kind, c.method(), 0, port);
                } else {
                    // The trailers refer to table entries from before the
                    // attach: the status is unknown, and not reported as an error.
                    assert_eq!(s.attr_int("tracer.headers_incomplete"), Some(1), "{s}");
                    assert_eq!(s.status_code(), StatusCode::Unset, "{s}");
                }
            }
        }
        let first =
            matched.iter().position(Option::is_some).unwrap_or_else(|| panic!("no {kind:?} span at all\n{}", diag()));
        let missing: Vec<usize> = (first..calls.len()).filter(|i| matched[*i].is_none()).collect();
        assert!(
            missing.is_empty(),
            "{kind:?} spans missing for calls {missing:?} (traced from call {first} on)\n{}",
            diag()
        );
        assert!(
            calls[first].start_ns <= t_ready || first == calls.iter().position(|c| c.start_ns >= t_ready).unwrap(),
            "{kind:?} spans start only at call {first}, after the agent was ready\n{}",
            diag()
        );
        let traced = calls.len() - first;
        let boundary = calls.iter().filter(|c| c.start_ns < t_ready && c.end_ns >= t_spawn).count();
        assert!(
            traced >= required && traced <= required + boundary,
            "{kind:?}: {traced} calls traced, expected {required} plus at most {boundary} \
             overlapping the start-up\n{}",
            diag()
        );
        assert_eq!(side.len(), traced, "{}", diag());
    }
    assert_eq!(
        spans.len(),
        count_pid(&spans, SpanKind::Server, server_pid) + count_pid(&spans, SpanKind::Client, client_pid),
        "only the two processes' spans expected\n{}",
        diag()
    );
}

// ---------------------------------------------------------------------------
// Trace context in gRPC metadata.

/// A `traceparent` sent as gRPC metadata: the server span continues that
/// trace with that parent; the client span too (it carries the context the
/// application put on the request).
#[test]
fn traceparent_in_grpc_metadata() {
    let _serial = serial();
    agent_bin();
    let port = free_port();
    let mut server = start_python_grpc_server(port);
    let receiver = Receiver::start();
    let agent = AgentBuilder::new(&receiver).port(port).start();

    let trace_id = random_hex(32);
    let parent_id = random_hex(16);
    let traceparent = format!("00-{trace_id}-{parent_id}-01");
    let run = run_python_grpc_client(
        port,
        &[("unary", 2), ("notfound", 1)],
        &[("GRPC_DEMO_TRACEPARENT", traceparent.as_str())],
    );
    server.assert_running();

    let (spans, exit) = finish(&receiver, agent, |spans| spans.len() >= 6);
    assert_exact_counts(&spans, &exit, server.pid(), 3, run.pid, 3);
    let servers = spans_of_pid(&spans, SpanKind::Server, server.pid());
    for s in &servers {
        assert_eq!(s.trace_id_hex(), trace_id, "server span must continue the trace\n{s}");
        assert_eq!(s.parent_span_id_hex(), parent_id, "server span's parent must be the traceparent's span id\n{s}");
        let method = s.attr_str("rpc.method").unwrap_or_default();
        let code = if method == "Fail" { 5 } else { 0 };
        assert_grpc_span(s, SpanKind::Server, &method, code, port);
    }
    let mut names: Vec<&str> = servers.iter().map(|s| s.name()).collect();
    names.sort();
    assert_eq!(names, vec!["demo.Greeter/Fail", "demo.Greeter/SayHello", "demo.Greeter/SayHello"], "{}", dump(&spans));
}
