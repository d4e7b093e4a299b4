//! HTTP/1.x scenarios: each test starts its own servers and its own agent
//! restricted with `--port <server port>`, generates a known amount of
//! traffic with real clients, stops the agent with SIGTERM and checks the
//! exported spans exactly.
//!
//! Run as root with `TRACER_AGENT_BIN` pointing at the agent binary.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::time::Duration;

use tracer_tests::*;

/// Everything one nginx scenario needs. Field order is drop order: the
/// agent goes first, then the receiver, then nginx and its files.
struct NginxEnv {
    agent: Option<Agent>,
    exit: Option<AgentExit>,
    receiver: Receiver,
    nginx: Nginx,
    root: WebRoot,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl NginxEnv {
    fn start(configure: impl FnOnce(AgentBuilder) -> AgentBuilder) -> NginxEnv {
        NginxEnv::start_with(false, configure)
    }

    fn start_with(sendfile: bool, configure: impl FnOnce(AgentBuilder) -> AgentBuilder) -> NginxEnv {
        let serial = serial();
        agent_bin();
        let root = WebRoot::new();
        let port = free_port();
        let nginx = Nginx::start_with(port, root.path(), sendfile);
        let receiver = Receiver::start();
        let agent = configure(AgentBuilder::new(&receiver).port(port)).start();
        NginxEnv { agent: Some(agent), exit: None, receiver, nginx, root, _serial: serial }
    }

    fn port(&self) -> u16 {
        self.nginx.port()
    }

    fn url(&self, path: &str) -> String {
        self.nginx.url(path)
    }

    /// Waits (bounded) until `servers` nginx server spans and `clients`
    /// client spans arrived, then stops the agent and returns all spans.
    /// The counts are asserted exactly by the callers.
    fn finish(&mut self, servers: usize, clients: usize) -> Vec<ReceivedSpan> {
        self.receiver.wait_until(SPAN_WAIT, |spans| {
            let s = spans.iter().filter(|s| s.kind() == SpanKind::Server).count();
            let c = spans.iter().filter(|s| s.kind() == SpanKind::Client).count();
            s >= servers && c >= clients
        });
        let agent = self.agent.take().expect("agent already stopped");
        self.exit = Some(agent.stop());
        self.receiver.assert_no_errors();
        let spans = self.receiver.spans();
        assert_unique_span_ids(&spans);
        spans
    }

    /// The agent's shutdown statistics line, for failure messages.
    fn stats(&self) -> &str {
        self.exit.as_ref().and_then(|e| e.stats_line()).unwrap_or("<agent not stopped>")
    }

    fn server_spans(&self) -> Vec<ReceivedSpan> {
        self.receiver.spans_of(SpanKind::Server, "nginx")
    }

    fn curl_spans(&self) -> Vec<ReceivedSpan> {
        self.receiver.spans_of(SpanKind::Client, "curl")
    }

    fn nginx_worker(&self) -> u32 {
        let workers = self.nginx.worker_pids();
        assert_eq!(workers.len(), 1, "expected one nginx worker: {workers:?}");
        workers[0]
    }
}

fn of_kind(spans: &[ReceivedSpan], kind: SpanKind) -> Vec<ReceivedSpan> {
    spans.iter().filter(|s| s.kind() == kind).cloned().collect()
}

/// Curl arguments fetching each URL to /dev/null and printing `fmt` per URL.
fn curl_args(urls: &[String], fmt: &str) -> Vec<String> {
    let mut args = Vec::new();
    for url in urls {
        args.extend(["-o", "/dev/null", "-w", fmt].map(String::from));
        args.push(url.clone());
    }
    args
}

fn run_curl(args: &[String]) -> CurlRun {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&refs)
}

fn assert_counts(spans: &[ReceivedSpan], servers: usize, clients: usize) {
    let s = of_kind(spans, SpanKind::Server).len();
    let c = of_kind(spans, SpanKind::Client).len();
    assert!(
        s == servers && c == clients && spans.len() == servers + clients,
        "expected exactly {servers} server and {clients} client spans, got {s} server / {c} client / {} total\n{}",
        spans.len(),
        dump(spans)
    );
}

/// Checks the resource of a span against the process that produced it.
fn assert_process_resource(span: &ReceivedSpan, service: &str, pid: u32) {
    assert_resource_str(span, "service.name", service);
    assert_eq!(span.resource_int("process.pid"), Some(pid as i64), "resource process.pid\n{span}");
    // semconv: base name of /proc/<pid>/exe; equal to the comm for the
    // programs checked here.
    assert_resource_str(span, "process.executable.name", service);
    assert_resource_str(span, "host.name", &host_name());
    for key in ["service.instance.id", "telemetry.sdk.name"] {
        assert!(
            span.resource_str(key).is_some_and(|v| !v.is_empty()),
            "resource attribute {key} must be a non-empty string\n{span}"
        );
    }
}

fn single_request(protocol: Protocol) {
    let mut env = NginxEnv::start(|b| {
        b.protocol(protocol)
            .args(["--route", "/files/{name}"])
            .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    });
    let path = numbered_path(7);
    let size = env.root.file_size(&path) as i64;
    let ua = curl_user_agent();
    let t0 = now_unix_nanos();
    let run = run_curl(&curl_args(&[env.url(&path)], "%{http_code} %{local_port} %{size_download}"));
    let t1 = now_unix_nanos();
    let out = run.stdout();
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields[0], "200", "curl output {out:?}");
    let local_port: i64 = fields[1].parse().unwrap();
    assert_eq!(fields[2], size.to_string());

    // With OTEL_BSP_SCHEDULE_DELAY=200 spans are exported without waiting
    // for shutdown.
    assert!(
        env.receiver.wait_for_count(2, Duration::from_secs(10), |_| true),
        "spans were not exported within 10 s of the request (before SIGTERM)\n{}\n{}",
        dump(&env.receiver.spans()),
        env.agent.as_ref().unwrap().diagnostics()
    );
    let spans = env.finish(1, 1);
    assert_counts(&spans, 1, 1);
    let servers = env.server_spans();
    let clients = env.curl_spans();
    assert_eq!(servers.len(), 1, "one nginx server span\n{}", dump(&spans));
    assert_eq!(clients.len(), 1, "one curl client span\n{}", dump(&spans));
    let (server, client) = (&servers[0], &clients[0]);
    for s in [server, client] {
        assert_eq!(s.transport, protocol.transport(), "{s}");
        assert_resource_str(s, "deployment.environment.name", "test");
    }
    assert!(env.receiver.export_requests(protocol.transport()) >= 1);

    // Server span.
    assert_process_resource(server, "nginx", env.nginx_worker());
    assert_eq!(server.name(), "GET /files/{name}", "{server}");
    assert_attr_str(server, "http.request.method", "GET");
    assert_attr_str(server, "url.path", &path);
    assert_attr_str(server, "url.scheme", "http");
    assert_attr_str(server, "http.route", "/files/{name}");
    assert_status(server, 200, false);
    assert_attr_str(server, "server.address", "127.0.0.1");
    assert_attr_int(server, "server.port", env.port() as i64);
    assert_attr_str(server, "client.address", "127.0.0.1");
    assert_attr_str(server, "network.peer.address", "127.0.0.1");
    assert_attr_int(server, "network.peer.port", local_port);
    assert_attr_str(server, "network.protocol.version", "1.1");
    assert_attr_str(server, "user_agent.original", &ua);
    assert_attr_int(server, "http.response.body.size", size);
    assert_timing(server, t0, t1);

    // Client span.
    assert_process_resource(client, "curl", run.pid);
    assert_eq!(client.name(), "GET", "{client}");
    assert_attr_str(client, "http.request.method", "GET");
    assert_attr_str(client, "url.path", &path);
    assert_attr_str(client, "url.scheme", "http");
    assert_status(client, 200, false);
    assert_attr_str(client, "server.address", "127.0.0.1");
    assert_attr_int(client, "server.port", env.port() as i64);
    assert_attr_str(client, "network.peer.address", "127.0.0.1");
    assert_attr_int(client, "network.peer.port", env.port() as i64);
    assert_attr_str(client, "network.protocol.version", "1.1");
    assert_attr_str(client, "user_agent.original", &ua);
    assert_attr_int(client, "http.response.body.size", size);
    assert_timing(client, t0, t1);

    // A GET without a body: if a request size is reported it is 0.
    for s in [server, client] {
        if s.has_attr("http.request.body.size") {
            assert_attr_int(s, "http.request.body.size", 0);
        }
    }
    // No incoming traceparent: the client span is a root span; the server
    // span is a root span too unless the agent linked it to the client.
    assert!(client.span.parent_span_id.is_empty(), "{client}");
    if !server.span.parent_span_id.is_empty() {
        assert_eq!(server.span.parent_span_id, client.span.span_id, "{server}");
        assert_eq!(server.span.trace_id, client.span.trace_id, "{server}");
    }
}

/// Scenario 1 over gRPC; also checks OTEL_RESOURCE_ATTRIBUTES.
#[test]
fn single_curl_request_grpc() {
    single_request(Protocol::Grpc);
}

/// Scenario 1 over HTTP/protobuf (`<endpoint>/v1/traces`).
#[test]
fn single_curl_request_http_protobuf() {
    single_request(Protocol::HttpProtobuf);
}

/// 20 URLs in one curl invocation over one keep-alive connection.
#[test]
fn keep_alive_many_requests_one_connection() {
    let mut env = NginxEnv::start(|b| b);
    let paths: Vec<String> = (0..20).map(numbered_path).collect();
    let urls: Vec<String> = paths.iter().map(|p| env.url(p)).collect();
    let run = run_curl(&curl_args(&urls, "%{http_code} %{num_connects} %{local_port}\n"));
    let lines: Vec<Vec<String>> =
        run.stdout().lines().map(|l| l.split_whitespace().map(String::from).collect()).collect();
    assert_eq!(lines.len(), 20, "{}", run.stdout());
    let connects: u32 = lines.iter().map(|l| l[1].parse::<u32>().unwrap()).sum();
    assert_eq!(connects, 1, "curl must reuse one connection:\n{}", run.stdout());
    assert!(lines.iter().all(|l| l[0] == "200"), "{}", run.stdout());
    let local_port: i64 = lines[0][2].parse().unwrap();

    let spans = env.finish(20, 20);
    assert_counts(&spans, 20, 20);
    let servers = env.server_spans();
    let clients = env.curl_spans();
    assert_eq!(servers.len(), 20, "{}", dump(&spans));
    assert_eq!(clients.len(), 20, "{}", dump(&spans));
    assert_paths_once(&servers, &paths);
    assert_paths_once(&clients, &paths);
    for s in &servers {
        assert_status(s, 200, false);
        assert_attr_int(s, "network.peer.port", local_port);
        assert_attr_str(s, "network.protocol.version", "1.1");
        let i: usize = s.url_path().unwrap()[8..10].parse().unwrap();
        assert_attr_int(s, "http.response.body.size", numbered_body(i).len() as i64);
    }
    for c in &clients {
        assert_status(c, 200, false);
        assert_eq!(c.resource_int("process.pid"), Some(run.pid as i64), "{c}");
    }
    // Same order on both sides.
    let mut servers = servers;
    let mut clients = clients;
    sort_by_time(&mut servers);
    sort_by_time(&mut clients);
    assert_eq!(span_paths(&servers), paths);
    assert_eq!(span_paths(&clients), paths);
}

/// `curl --http1.0`: the request line says HTTP/1.0, so both spans report
/// protocol version 1.0 (nginx still writes "HTTP/1.1" in its status line
/// and closes the connection after each response).
#[test]
fn http_1_0_requests() {
    let mut env = NginxEnv::start(|b| b);
    let paths = vec!["/hello.txt".to_string(), "/index.html".to_string()];
    let urls: Vec<String> = paths.iter().map(|p| env.url(p)).collect();
    let mut args = vec!["--http1.0".to_string()];
    args.extend(curl_args(&urls, "%{http_code} %{num_connects} %{local_port}\n"));
    let run = run_curl(&args);
    let out = run.stdout();
    assert_eq!(out.lines().count(), 2, "{out}");
    let ports: HashSet<&str> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f[0], "200", "{out}");
            assert_eq!(f[1], "1", "HTTP/1.0 without keep-alive uses a new connection: {out}");
            f[2]
        })
        .collect();
    assert_eq!(ports.len(), 2, "{out}");

    let spans = env.finish(2, 2);
    assert_counts(&spans, 2, 2);
    let servers = env.server_spans();
    let clients = env.curl_spans();
    assert_paths_once(&servers, &paths);
    assert_paths_once(&clients, &paths);
    for s in servers.iter().chain(&clients) {
        assert_attr_str(s, "network.protocol.version", "1.0");
        assert_status(s, 200, false);
        assert_attr_str(s, "http.request.method", "GET");
    }
    assert_attr_int(
        servers.iter().find(|s| s.url_path().unwrap() == "/hello.txt").unwrap(),
        "http.response.body.size",
        HELLO_BODY.len() as i64,
    );
}

/// gzip turns the static response into `Transfer-Encoding: chunked`; the
/// body size is the size of the (compressed) payload after removing the
/// chunk framing, which is what curl stores without `--compressed`.
#[test]
fn chunked_response() {
    let mut env = NginxEnv::start(|b| b);
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let body = dir.path().join("body");
    run_curl(&[
        "-H".into(),
        "Accept-Encoding: gzip".into(),
        "-D".into(),
        headers.display().to_string(),
        "-o".into(),
        body.display().to_string(),
        env.url(NGINX_CHUNKED_PATH),
    ]);
    let headers = fs::read_to_string(&headers).unwrap().to_ascii_lowercase();
    assert!(headers.starts_with("http/1.1 200"), "{headers}");
    assert!(headers.contains("transfer-encoding: chunked"), "{headers}");
    assert!(!headers.contains("content-length"), "{headers}");
    let payload = fs::read(&body).unwrap();
    assert_eq!(&payload[..2], &[0x1f, 0x8b]);

    let spans = env.finish(1, 1);
    assert_counts(&spans, 1, 1);
    let servers = env.server_spans();
    let clients = env.curl_spans();
    assert_eq!(servers.len(), 1, "{}", dump(&spans));
    assert_eq!(clients.len(), 1, "{}", dump(&spans));
    for s in [&servers[0], &clients[0]] {
        assert_attr_str(s, "url.path", NGINX_CHUNKED_PATH);
        assert_status(s, 200, false);
        assert_attr_int(s, "http.response.body.size", payload.len() as i64);
    }
}

/// 404 is not a server error (UNSET) but 500 is; on the client side both
/// are errors. `error.type` carries the status code.
#[test]
fn error_statuses() {
    let mut env = NginxEnv::start(|b| b);
    let urls = vec![env.url(NGINX_MISSING_PATH), env.url(NGINX_ERROR_PATH)];
    let run = run_curl(&curl_args(&urls, "%{http_code}\n"));
    assert_eq!(run.stdout(), "404\n500\n");

    let spans = env.finish(2, 2);
    assert_counts(&spans, 2, 2);
    let servers = env.server_spans();
    let clients = env.curl_spans();
    let by_path = |spans: &[ReceivedSpan], p: &str| -> ReceivedSpan {
        let found: Vec<_> = spans.iter().filter(|s| s.url_path().as_deref() == Some(p)).cloned().collect();
        assert_eq!(found.len(), 1, "one span for {p}\n{}", dump(spans));
        found[0].clone()
    };
    assert_status(&by_path(&servers, NGINX_MISSING_PATH), 404, false);
    assert_status(&by_path(&servers, NGINX_ERROR_PATH), 500, true);
    assert_status(&by_path(&clients, NGINX_MISSING_PATH), 404, true);
    assert_status(&by_path(&clients, NGINX_ERROR_PATH), 500, true);
}

/// Ten requests written with a single write on one connection from this
/// test process: ten server spans in request order, and ten client spans
/// attributed to this process.
#[test]
fn pipelined_requests() {
    let mut env = NginxEnv::start(|b| b);
    let paths: Vec<String> = (0..10).map(numbered_path).collect();
    let mut bytes = String::new();
    for (i, p) in paths.iter().enumerate() {
        bytes.push_str(&get_request(p, &format!("127.0.0.1:{}", env.port()), i == 9));
    }
    let raw = send_raw(env.port(), bytes.as_bytes());
    let responses = parse_responses(&raw);
    assert_eq!(responses.len(), 10);
    for (i, r) in responses.iter().enumerate() {
        assert_eq!(r.status, 200);
        assert_eq!(r.body, numbered_body(i).as_bytes());
    }

    let spans = env.finish(10, 10);
    assert_counts(&spans, 10, 10);
    let mut servers = env.server_spans();
    assert_eq!(servers.len(), 10, "{}", dump(&spans));
    // Requests read in one read may share a start time; responses are
    // written one after another, so (start, end) gives request order.
    sort_by_time(&mut servers);
    assert_eq!(span_paths(&servers), paths, "server spans in request order\n{}", dump(&servers));
    let peer_ports: HashSet<i64> = servers.iter().map(|s| s.attr_int("network.peer.port").unwrap_or(-1)).collect();
    assert_eq!(peer_ports.len(), 1, "all on one connection\n{}", dump(&servers));
    for (i, s) in servers.iter().enumerate() {
        assert_status(s, 200, false);
        assert_attr_str(s, "user_agent.original", "tracer-tests/raw");
        assert_attr_int(s, "http.response.body.size", numbered_body(i).len() as i64);
    }
    let me = std::process::id() as i64;
    let mut clients: Vec<ReceivedSpan> =
        of_kind(&spans, SpanKind::Client).into_iter().filter(|s| s.resource_int("process.pid") == Some(me)).collect();
    assert_eq!(clients.len(), 10, "client spans of this process\n{}", dump(&spans));
    sort_by_time(&mut clients);
    assert_eq!(span_paths(&clients), paths, "client spans in request order");
    for c in &clients {
        assert_status(c, 200, false);
    }
}

fn large_response(sendfile: bool) {
    let mut env = NginxEnv::start_with(sendfile, |b| b);
    let run = run_curl(&curl_args(&[env.url("/big.bin")], "%{http_code} %{size_download}"));
    assert_eq!(run.stdout(), format!("200 {BIG_FILE_SIZE}"));

    let spans = env.finish(1, 1);
    assert_counts(&spans, 1, 1);
    let servers = env.server_spans();
    let clients = env.curl_spans();
    assert_eq!(servers.len(), 1, "{}", dump(&spans));
    assert_eq!(clients.len(), 1, "{}", dump(&spans));
    for s in [&servers[0], &clients[0]] {
        assert_attr_str(s, "url.path", "/big.bin");
        assert_status(s, 200, false);
        assert_attr_int(s, "http.response.body.size", BIG_FILE_SIZE as i64);
        assert!(s.start_ns() < s.end_ns(), "{s}");
    }
}

/// 1 MiB body written with ordinary socket writes.
#[test]
fn large_response_1mib() {
    large_response(false);
}

/// 1 MiB body sent by nginx with sendfile(2).
#[test]
fn large_response_1mib_sendfile() {
    large_response(true);
}

/// An incoming W3C traceparent is continued by the server span.
#[test]
fn traceparent_is_continued() {
    let mut env = NginxEnv::start(|b| b);
    let trace_id = random_hex(32);
    let parent_id = random_hex(16);
    let header = format!("traceparent: 00-{trace_id}-{parent_id}-01");
    let mut args = vec!["-H".to_string(), header];
    args.extend(curl_args(&[env.url("/hello.txt")], "%{http_code}"));
    assert_eq!(run_curl(&args).stdout(), "200");

    let spans = env.finish(1, 1);
    assert_counts(&spans, 1, 1);
    let servers = env.server_spans();
    assert_eq!(servers.len(), 1, "{}", dump(&spans));
    let server = &servers[0];
    assert_eq!(server.trace_id_hex(), trace_id, "trace id continued\n{server}");
    assert_eq!(
        server.parent_span_id_hex(),
        parent_id,
        "parent span id must be the traceparent's parent id\n{}",
        dump(&spans)
    );
    assert_ne!(server.span_id_hex(), parent_id, "new span id\n{server}");
    assert_eq!(env.curl_spans().len(), 1, "{}", dump(&spans));
}

/// python's http.server answers with HTTP/1.0 status lines and closes each
/// connection. Three requests give three python3 server spans; the
/// exchange is HTTP/1.0 (the lower of the request and response versions),
/// so the spans say 1.0.
#[test]
fn python_http_server() {
    let _serial = serial();
    agent_bin();
    let root = WebRoot::new();
    let port = free_port();
    let server = PyHttpServer::start(port, root.path());
    let receiver = Receiver::start();
    let agent = AgentBuilder::new(&receiver).port(port).start();

    let paths = vec!["/hello.txt".to_string(), "/index.html".to_string(), numbered_path(3)];
    let urls: Vec<String> = paths.iter().map(|p| server.url(p)).collect();
    let run = run_curl(&curl_args(&urls, "%{http_code} %{num_connects}\n"));
    assert_eq!(run.stdout(), "200 1\n200 1\n200 1\n", "python closes after each response");

    receiver.wait_until(SPAN_WAIT, |s| s.len() >= 6);
    agent.stop();
    receiver.assert_no_errors();
    let spans = receiver.spans();
    assert_unique_span_ids(&spans);
    assert_counts(&spans, 3, 3);
    let servers = receiver.spans_of(SpanKind::Server, "python3");
    let clients = receiver.spans_of(SpanKind::Client, "curl");
    assert_eq!(servers.len(), 3, "{}", dump(&spans));
    assert_eq!(clients.len(), 3, "{}", dump(&spans));
    assert_paths_once(&servers, &paths);
    assert_paths_once(&clients, &paths);
    let sizes: HashMap<&str, i64> = [
        ("/hello.txt", HELLO_BODY.len() as i64),
        ("/index.html", INDEX_BODY.len() as i64),
        (paths[2].as_str(), numbered_body(3).len() as i64),
    ]
    .into_iter()
    .collect();
    let exe = proc_exe_name(server.pid());
    for s in &servers {
        assert_eq!(s.resource_int("process.pid"), Some(server.pid() as i64), "{s}");
        let exe_name = s.resource_str("process.executable.name");
        assert!(
            exe_name.as_deref() == Some("python3") || exe_name == exe,
            "process.executable.name should be python3 or {exe:?}\n{s}"
        );
        assert_attr_str(s, "network.protocol.version", "1.0");
        assert_status(s, 200, false);
        assert_attr_int(s, "server.port", port as i64);
        assert_attr_int(s, "http.response.body.size", sizes[s.url_path().unwrap().as_str()]);
    }
    for c in &clients {
        assert_attr_str(c, "network.protocol.version", "1.0");
        assert_status(c, 200, false);
    }
}

/// Exactly 500 requests: five concurrent curl processes with 100 URLs each
/// over keep-alive connections.
#[test]
fn exact_count_500_requests_from_5_curls() {
    let mut env = NginxEnv::start(|b| b);
    let paths: Vec<String> = (0..NUMBERED_FILES).map(numbered_path).collect();
    let urls: Vec<String> = paths.iter().map(|p| env.url(p)).collect();
    let args = curl_args(&urls, "%{http_code} %{num_connects}\n");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let children: Vec<CurlChild> = (0..5).map(|_| curl_spawn(&refs)).collect();
    let runs: Vec<CurlRun> = children.into_iter().map(CurlChild::wait).collect();
    for run in &runs {
        assert!(run.output.status.success(), "curl failed: {}", run.stderr());
        let out = run.stdout();
        assert_eq!(out.lines().count(), 100);
        assert!(out.lines().all(|l| l.starts_with("200 ")), "{out}");
        let connects: u32 = out.lines().map(|l| l.split_whitespace().nth(1).unwrap().parse::<u32>().unwrap()).sum();
        assert_eq!(connects, 1, "one keep-alive connection per curl");
    }

    let spans = env.finish(500, 500);
    let servers = env.server_spans();
    let clients = env.curl_spans();
    assert_counts(&spans, 500, 500);
    assert_eq!(servers.len(), 500);
    assert_eq!(clients.len(), 500);
    let mut per_path: BTreeMap<String, usize> = BTreeMap::new();
    for s in &servers {
        *per_path.entry(s.url_path().unwrap_or_default()).or_default() += 1;
        assert_status(s, 200, false);
    }
    assert_eq!(per_path.len(), 100, "{per_path:?}");
    assert!(per_path.values().all(|n| *n == 5), "each path 5 times: {per_path:?}");
    for run in &runs {
        let mine: Vec<ReceivedSpan> =
            clients.iter().filter(|c| c.resource_int("process.pid") == Some(run.pid as i64)).cloned().collect();
        assert_eq!(mine.len(), 100, "client spans of curl pid {}", run.pid);
        assert_paths_once(&mine, &paths);
    }
}

/// Duration-based wrk run: the number of nginx server spans matches the
/// number of requests wrk reports.
#[test]
fn wrk_duration_run_matches_reported_requests() {
    const CONNECTIONS: u64 = 4;
    let mut env = NginxEnv::start(|b| b);
    let url = env.url("/hello.txt");
    let c = CONNECTIONS.to_string();
    let run = wrk(&["-t1", "-c", &c, "-d2s", "--timeout", "5s", &url]);
    assert!(run.requests > 0, "{}", run.stdout);
    assert_eq!(run.non_2xx, 0, "{}", run.stdout);
    let n = run.requests as usize;

    let spans = env.finish(n, n);
    let servers = env.server_spans();
    let wrk_clients = env.receiver.spans_of(SpanKind::Client, "wrk");
    // wrk counts a request once it has parsed the whole response. When the
    // duration ends, each connection may have one request in flight (wrk
    // does not pipeline without a script) that nginx has already answered
    // but wrk did not count. So the spans may exceed wrk's count by at most
    // one per connection, never fall below it.
    let tolerance = CONNECTIONS as usize;
    assert!(
        servers.len() >= n && servers.len() <= n + tolerance,
        "wrk reported {n} requests; nginx server spans: {} (allowed {n}..={})\n{}\n{}",
        servers.len(),
        n + tolerance,
        run.stdout,
        env.stats()
    );
    assert!(
        wrk_clients.len() >= n && wrk_clients.len() <= n + tolerance,
        "wrk reported {n} requests; wrk client spans: {} (allowed {n}..={})\n{}\n{}",
        wrk_clients.len(),
        n + tolerance,
        run.stdout,
        env.stats()
    );
    assert_eq!(spans.len(), servers.len() + wrk_clients.len(), "no spans other than nginx server and wrk client spans");
    for s in &servers {
        assert_attr_str(s, "url.path", "/hello.txt");
        assert_eq!(s.attr_int("http.response.status_code"), Some(200), "{s}");
    }
}

/// A server that peeks at each request head (`recv` with `MSG_PEEK`) before
/// taking it off the socket: peeked bytes are seen once, when they are
/// consumed, so each request is one span.
#[test]
fn peeking_server_requests_are_counted_once() {
    let _serial = serial();
    agent_bin();
    let port = free_port();
    let script = r#"
import socket, sys, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(8)
while True:
    c, _ = srv.accept()
    while True:
        peeked = c.recv(65536, socket.MSG_PEEK)
        if not peeked:
            break
        end = peeked.find(b"\r\n\r\n")
        if end < 0:
            time.sleep(0.001)
            continue
        head = c.recv(end + 4)
        path = head.split(b" ")[1]
        body = b"peeked " + path
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    c.close()
"#;
    let mut server = tracer_tests::db::spawn_python(&python3(), script, &[port.to_string()]);
    assert!(wait_for_port(port, Duration::from_secs(10)), "the peeking server did not start");
    let receiver = Receiver::start();
    let agent = AgentBuilder::new(&receiver).port(port).start();

    let paths: Vec<String> = (1..=3).map(numbered_path).collect();
    let urls: Vec<String> = paths.iter().map(|p| format!("http://127.0.0.1:{port}{p}")).collect();
    let run = run_curl(&curl_args(&urls, "%{http_code} %{num_connects}\n"));
    assert_eq!(run.stdout(), "200 1\n200 0\n200 0\n", "one keep-alive connection");

    receiver.wait_until(SPAN_WAIT, |s| s.len() >= 6);
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();
    let _ = server.kill();
    let _ = server.wait();
    receiver.assert_no_errors();
    let spans = receiver.spans();
    assert_unique_span_ids(&spans);
    assert_counts(&spans, 3, 3);
    let servers = receiver.spans_of(SpanKind::Server, "python3");
    let clients = receiver.spans_of(SpanKind::Client, "curl");
    assert_eq!(servers.len(), 3, "{}", dump(&spans));
    assert_eq!(clients.len(), 3, "{}", dump(&spans));
    assert_paths_once(&servers, &paths);
    assert_paths_once(&clients, &paths);
    for s in &servers {
        assert_status(s, 200, false);
        let expected = format!("peeked {}", s.url_path().unwrap());
        assert_attr_int(s, "http.response.body.size", expected.len() as i64);
    }
}

/// Clients that send a request and close at once, without reading: nginx
/// still answers, and its answer is reset by the client's kernel while the
/// write is under way. The connection ends after that write is reported,
/// so each server span has its response.
#[test]
fn client_closing_before_the_response() {
    const REQUESTS: usize = 20;
    let mut env = NginxEnv::start(|b| b);
    let script = r#"
import socket, sys
for i in range(int(sys.argv[2])):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    s.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")
    s.close()
"#;
    let client = tracer_tests::db::spawn_python(&python3(), script, &[env.port().to_string(), REQUESTS.to_string()]);
    tracer_tests::db::wait_python(client, "closing client");
    let spans = env.finish(REQUESTS, REQUESTS);
    let servers = env.server_spans();
    assert_eq!(servers.len(), REQUESTS, "{}\n{}", dump(&spans), env.stats());
    for s in &servers {
        assert_attr_str(s, "url.path", "/hello.txt");
        assert_eq!(s.attr_int("http.response.status_code"), Some(200), "{s}");
        assert_attr_int(s, "http.response.body.size", HELLO_BODY.len() as i64);
    }
    // The clients never read an answer: their spans say so.
    let clients = env.receiver.spans_of(SpanKind::Client, "python3");
    assert_eq!(clients.len(), REQUESTS, "{}", dump(&spans));
    for c in &clients {
        assert_attr_str(c, "error.type", "no_response");
    }
    assert_eq!(spans.len(), 2 * REQUESTS, "{}", dump(&spans));
}
