//! One request, one trace: a chain of real services on one host, each hop
//! linked to the request that caused it, by the mechanism its evidence
//! allows (`tracer.parent.source`), and never to another request.
//!
//! Topology: curl → service A (python `ThreadingHTTPServer`, keep-alive) →
//! service B (the same, keep-alive from A's threads) → Redis and
//! PostgreSQL (one persistent connection per B thread).
//!
//! Run as root with `TRACER_AGENT_BIN` pointing at the agent binary.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tracer_tests::db::{python_with, Postgres, Redis};
use tracer_tests::*;

const SERVICE: &str = r#"
import http.client, socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

role, port = sys.argv[1], int(sys.argv[2])
local = threading.local()

def backend():
    c = getattr(local, "b", None)
    if c is None:
        c = local.b = http.client.HTTPConnection("127.0.0.1", int(sys.argv[3]), timeout=10)
    return c

def redis_incr(key):
    s = getattr(local, "r", None)
    if s is None:
        s = local.r = socket.create_connection(("127.0.0.1", int(sys.argv[3])))
    s.sendall(b"*2\r\n$4\r\nINCR\r\n$%d\r\n%s\r\n" % (len(key), key))
    reply = b""
    while not reply.endswith(b"\r\n"):
        reply += s.recv(64)
    assert reply.startswith(b":"), reply

def pg_query(n):
    import psycopg
    c = getattr(local, "p", None)
    if c is None:
        c = local.p = psycopg.connect(host="127.0.0.1", port=int(sys.argv[4]), user="postgres",
                                      dbname="postgres", autocommit=True)
    assert c.execute("SELECT %d AS n" % n).fetchone() == (n,)

def call_back(n):
    c = backend()
    c.request("GET", "/back/%d" % n)
    r = c.getresponse()
    body = r.read()
    assert r.status == 200, r.status
    return body

# How A makes its call: on the request's thread, on a thread made for it,
# or on a pool shared by all requests (its workers made on demand).
mode = sys.argv[4] if role == "a" and len(sys.argv) > 4 else "inline"
if mode == "pool":
    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(max_workers=4)

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        n = int(self.path.rsplit("/", 1)[1])
        if role == "a" and mode == "thread":
            out = []
            t = threading.Thread(target=lambda: out.append(call_back(n)))
            t.start()
            t.join()
            body = out[0]
        elif role == "a" and mode == "pool":
            body = pool.submit(call_back, n).result()
        elif role == "a":
            body = call_back(n)
        else:
            redis_incr(b"hits:%d" % n)
            pg_query(n)
            body = b"ok %d\n" % n
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

/// Service A in Java: `com.sun.net.httpserver` on a fixed pool of 8
/// threads, calling B with `HttpURLConnection` (keep-alive connections
/// shared by the pool's threads).
const JAVA_SERVICE: &str = r#"
import com.sun.net.httpserver.*;
import java.io.*;
import java.net.*;
import java.util.concurrent.Executors;

public class Front {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        int back = Integer.parseInt(args[1]);
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 64);
        server.createContext("/front/", exchange -> {
            String path = exchange.getRequestURI().getPath();
            String n = path.substring(path.lastIndexOf('/') + 1);
            HttpURLConnection c = (HttpURLConnection) new URL("http://127.0.0.1:" + back + "/back/" + n).openConnection();
            int status = c.getResponseCode();
            byte[] body;
            try (InputStream in = c.getInputStream()) { body = in.readAllBytes(); }
            exchange.sendResponseHeaders(status, body.length);
            try (OutputStream out = exchange.getResponseBody()) { out.write(body); }
        });
        server.setExecutor(Executors.newFixedThreadPool(8));
        server.start();
    }
}
"#;

struct Service {
    child: Child,
    port: u16,
}

impl Service {
    fn start(python: &PathBuf, args: &[String]) -> Service {
        let port: u16 = args[1].parse().unwrap();
        let child = Command::new(python)
            .arg("-c")
            .arg(SERVICE)
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting a python service");
        assert!(wait_for_port(port, Duration::from_secs(15)), "service {args:?} did not listen");
        Service { child, port }
    }

    /// Service A in Java, compiled into `dir`.
    fn start_java(dir: &std::path::Path, port: u16, back: u16) -> Service {
        std::fs::write(dir.join("Front.java"), JAVA_SERVICE).unwrap();
        let javac =
            Command::new(require_program("javac")).arg("-d").arg(dir).arg(dir.join("Front.java")).output().unwrap();
        assert!(javac.status.success(), "javac: {}", String::from_utf8_lossy(&javac.stderr));
        let child = Command::new(require_program("java"))
            .args(["-Xshare:auto", "-XX:+UseSerialGC", "-cp"])
            .arg(dir)
            .args(["Front", &port.to_string(), &back.to_string()])
            .env("JAVA_TOOL_OPTIONS", "-Dhttp.keepAlive=true -Dhttp.maxConnections=8")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting the java service");
        assert!(wait_for_port(port, Duration::from_secs(30)), "java service did not listen");
        Service { child, port }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Topology {
    nginx: Option<Nginx>,
    front: Front,
    a: Service,
    b: Service,
    _redis: Redis,
    _pg: Postgres,
    _dir: tempfile::TempDir,
    ports: Vec<u16>,
}

/// What service A is, and how it makes its call to B.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Front {
    /// Python, on the thread serving the request.
    Python,
    /// Python, on a thread the request's thread makes and joins.
    PythonThread,
    /// Python, on a `ThreadPoolExecutor` shared by every request.
    PythonPool,
    /// Java, on the pool thread serving the request.
    Java,
}

/// Optionally nginx in front, then service A in python (or in Java), then
/// B, Redis and PostgreSQL.
fn topology(nginx: bool, front: Front) -> Topology {
    let python = python_with(&["psycopg"]);
    let pg = Postgres::start();
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let b = Service::start(
        &python,
        &["b".into(), free_port().to_string(), redis.port().to_string(), pg.port().to_string()],
    );
    let a = match front {
        Front::Java => Service::start_java(dir.path(), free_port(), b.port),
        Front::Python => Service::start(&python, &["a".into(), free_port().to_string(), b.port.to_string()]),
        Front::PythonThread | Front::PythonPool => {
            let mode = if front == Front::PythonThread { "thread" } else { "pool" };
            Service::start(&python, &["a".into(), free_port().to_string(), b.port.to_string(), mode.into()])
        }
    };
    let mut ports = vec![a.port, b.port, redis.port(), pg.port()];
    let nginx = nginx.then(|| Nginx::start_proxy(free_port(), a.port));
    if let Some(n) = &nginx {
        ports.push(n.port());
    }
    Topology { nginx, front, a, b, _redis: redis, _pg: pg, _dir: dir, ports }
}

impl Topology {
    fn entry(&self) -> u16 {
        self.nginx.as_ref().map_or(self.a.port, Nginx::port)
    }

    /// Spans per request.
    fn hops(&self) -> usize {
        if self.nginx.is_some() {
            8
        } else {
            6
        }
    }
}

/// Spans per request without nginx.
const HOPS: usize = 6;

fn number(path: &str) -> Option<usize> {
    path.rsplit('/').next()?.parse().ok()
}

/// Checks the spans of requests `0..n` made through the topology: returns
/// (complete and correct traces, spans with a wrong parent, traces with
/// more than one request), after asserting the exact span counts.
fn check(spans: &[ReceivedSpan], t: &Topology, n: usize, strict: bool) -> (usize, usize, usize) {
    assert_unique_span_ids(spans);
    let hops = t.hops();
    assert_eq!(spans.len(), hops * n, "{} spans for {n} requests\n{}", spans.len(), dump(spans));
    let by_id: HashMap<String, &ReceivedSpan> = spans.iter().map(|s| (s.span_id_hex(), s)).collect();
    // Which request each HTTP span belongs to, from its path.
    let request_of = |s: &ReceivedSpan| s.url_path().as_deref().and_then(number);
    let mut wrong = 0;
    let mut complete = 0;
    let mut traces: BTreeMap<String, Vec<&ReceivedSpan>> = BTreeMap::new();
    for s in spans {
        traces.entry(s.trace_id_hex()).or_default().push(s);
    }
    // A parent's request must be the span's own request.
    for s in spans {
        let Some(p) = by_id.get(&s.parent_span_id_hex()) else { continue };
        if let (Some(a), Some(b)) = (request_of(s), request_of(p)) {
            if a != b {
                wrong += 1;
            }
        }
        if p.trace_id_hex() != s.trace_id_hex() {
            wrong += 1;
        }
    }
    let mut merged = 0;
    for spans in traces.values() {
        let mut reqs: Vec<usize> = spans.iter().filter_map(|s| request_of(s)).collect();
        reqs.sort();
        reqs.dedup();
        if reqs.len() > 1 {
            merged += 1;
        }
        if spans.len() != hops || reqs.len() != 1 {
            continue;
        }
        let find = |pid: Option<u32>, kind: SpanKind, pred: &dyn Fn(&ReceivedSpan) -> bool| -> Vec<&ReceivedSpan> {
            spans
                .iter()
                .copied()
                .filter(|s| {
                    s.kind() == kind && pid.is_none_or(|p| s.resource_int("process.pid") == Some(p as i64)) && pred(s)
                })
                .collect()
        };
        let is_http = |s: &ReceivedSpan| s.has_attr("http.request.method");
        let curl = find(None, SpanKind::Client, &|s| is_http(s) && s.service_name().as_deref() == Some("curl"));
        let a_srv = find(Some(t.a.pid()), SpanKind::Server, &|_| true);
        let a_cli = find(Some(t.a.pid()), SpanKind::Client, &|_| true);
        let b_srv = find(Some(t.b.pid()), SpanKind::Server, &|_| true);
        let redis =
            find(Some(t.b.pid()), SpanKind::Client, &|s| s.attr_str("db.system.name").as_deref() == Some("redis"));
        let pg =
            find(Some(t.b.pid()), SpanKind::Client, &|s| s.attr_str("db.system.name").as_deref() == Some("postgresql"));
        let one = |v: &Vec<&ReceivedSpan>| v.len() == 1;
        if ![&curl, &a_srv, &a_cli, &b_srv, &redis, &pg].iter().all(|v| one(v)) {
            continue;
        }
        let child_of = |c: &ReceivedSpan, p: &ReceivedSpan, source: &str| {
            c.parent_span_id_hex() == p.span_id_hex()
                && source.split('|').any(|src| c.attr_str("tracer.parent.source").as_deref() == Some(src))
        };
        // With nginx in front: curl → nginx → A.
        let front = match &t.nginx {
            Some(n) => {
                let worker = n.worker_pids()[0];
                let n_srv = find(Some(worker), SpanKind::Server, &|_| true);
                let n_cli = find(Some(worker), SpanKind::Client, &|_| true);
                if !one(&n_srv) || !one(&n_cli) {
                    continue;
                }
                if !(child_of(n_srv[0], curl[0], "peer") && child_of(n_cli[0], n_srv[0], "thread|forwarded")) {
                    if strict {
                        panic!(
                            "nginx hops of {reqs:?}:\n{}",
                            dump(&spans.iter().map(|s| (*s).clone()).collect::<Vec<_>>())
                        );
                    }
                    continue;
                }
                n_cli[0]
            }
            None => curl[0],
        };
        let ok = curl[0].span.parent_span_id.is_empty()
            && child_of(a_srv[0], front, "peer")
            && child_of(a_cli[0], a_srv[0], if t.front == Front::PythonThread { "thread_spawn" } else { "thread" })
            && child_of(b_srv[0], a_cli[0], "peer")
            && child_of(redis[0], b_srv[0], "thread")
            && child_of(pg[0], b_srv[0], "thread");
        if ok {
            complete += 1;
        } else if strict {
            panic!(
                "trace of request {:?} is not the expected chain:\n{}",
                reqs,
                dump(&spans.iter().map(|s| (*s).clone()).collect::<Vec<_>>())
            );
        }
    }
    (complete, wrong, merged)
}

fn run(nginx: bool, front: Front, concurrency: usize, n: usize) -> (Vec<ReceivedSpan>, Topology, AgentExit) {
    let t = topology(nginx, front);
    let receiver = Receiver::start();
    let mut b = AgentBuilder::new(&receiver);
    for p in &t.ports {
        b = b.port(*p);
    }
    let agent = b.start();
    let mut args: Vec<String> = vec!["--parallel".into(), "--parallel-max".into(), concurrency.to_string()];
    if concurrency == 1 {
        args.clear();
    }
    for i in 0..n {
        args.extend(["-o", "/dev/null", "-w", "%{http_code}\n"].map(String::from));
        args.push(format!("http://127.0.0.1:{}/front/{i}", t.entry()));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl(&refs);
    assert_eq!(out.stdout().lines().filter(|l| *l == "200").count(), n, "{}", out.stdout());
    receiver.wait_for_count(t.hops() * n, SPAN_WAIT, |_| true);
    let exit = agent.stop();
    receiver.assert_no_errors();
    (receiver.spans(), t, exit)
}

/// Concurrency 1: every request is exactly one trace, each hop with its
/// expected parent and provenance.
#[test]
fn sequential_requests_through_a_chain_are_one_trace_each() {
    let _serial = serial();
    agent_bin();
    let n = 40;
    let (spans, t, exit) = run(false, Front::Python, 1, n);
    let (complete, wrong, merged) = check(&spans, &t, n, true);
    assert_eq!((complete, wrong, merged), (n, 0, 0), "{}", exit.stats_line().unwrap_or(""));
    let stats = exit.stats_line().unwrap();
    assert!(stats.contains(&format!("links_thread={} ", 3 * n)), "{stats}");
    assert!(stats.contains(&format!("links_peer={} ", 2 * n)), "{stats}");
    assert!(stats.contains("links_ambiguous=0 ") && stats.contains("handoff_processes=0 "), "{stats}");
}

/// Concurrency 8: thread-per-request services keep each request on its own
/// thread, so every trace is still complete, with no wrong parent and no
/// trace holding two requests.
#[test]
fn concurrent_requests_through_a_chain_never_share_a_trace() {
    let _serial = serial();
    agent_bin();
    let n = 200;
    let (spans, t, exit) = run(false, Front::Python, 8, n);
    let (complete, wrong, merged) = check(&spans, &t, n, false);
    let stats = exit.stats_line().unwrap_or("");
    println!("concurrency 8: {complete} of {n} complete, {wrong} wrong parents, {merged} merged traces; {stats}");
    assert_eq!((wrong, merged), (0, 0), "{stats}");
    assert!(complete * 100 >= n * 99, "{complete} of {n} complete; {stats}");
}

/// curl sends `traceparent`: every span below continues that trace, and
/// the first server span is the child of the span it names.
#[test]
fn incoming_trace_context_is_the_root_of_the_whole_chain() {
    let _serial = serial();
    agent_bin();
    let t = topology(false, Front::Python);
    let receiver = Receiver::start();
    let mut b = AgentBuilder::new(&receiver);
    for p in &t.ports {
        b = b.port(*p);
    }
    let agent = b.start();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let url = format!("http://127.0.0.1:{}/front/7", t.a.port);
    let out =
        curl(&["-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("traceparent: 00-{trace}-{parent}-01"), &url]);
    assert_eq!(out.stdout(), "200");
    receiver.wait_for_count(HOPS, SPAN_WAIT, |_| true);
    agent.stop();
    let spans = receiver.spans();
    assert_eq!(spans.len(), HOPS, "{}", dump(&spans));
    for s in &spans {
        assert_eq!(s.trace_id_hex(), trace, "every span in the incoming trace:\n{}", dump(&spans));
    }
    let a_srv = spans
        .iter()
        .find(|s| s.kind() == SpanKind::Server && s.resource_int("process.pid") == Some(t.a.pid() as i64))
        .unwrap();
    assert_eq!(a_srv.parent_span_id_hex(), parent);
    assert_eq!(a_srv.attr_str("tracer.parent.source").as_deref(), Some("header"));
    // Below it, the chain is as without the header.
    let by_id: HashMap<String, &ReceivedSpan> = spans.iter().map(|s| (s.span_id_hex(), s)).collect();
    for s in &spans {
        if s.kind() == SpanKind::Client && s.service_name().as_deref() == Some("curl") {
            continue;
        }
        if s.span_id_hex() == a_srv.span_id_hex() {
            continue;
        }
        assert!(
            by_id.contains_key(&s.parent_span_id_hex()),
            "parent of {} is a span of the trace:\n{}",
            s.name(),
            dump(&spans)
        );
    }
}

/// A makes its call on a thread its request's thread makes and joins: the
/// thread ended with the request, so its calls are that request's
/// (`thread_spawn`), at concurrency 1 and 8.
#[test]
fn a_thread_made_for_a_request_carries_its_trace() {
    let _serial = serial();
    agent_bin();
    for (concurrency, n) in [(1, 40), (8, 200)] {
        let (spans, t, exit) = run(false, Front::PythonThread, concurrency, n);
        let (complete, wrong, merged) = check(&spans, &t, n, concurrency == 1);
        let stats = exit.stats_line().unwrap_or("");
        println!("thread made per call, concurrency {concurrency}: {complete} of {n} complete, {wrong} wrong parents, {merged} merged; {stats}");
        assert_eq!((wrong, merged), (0, 0), "{stats}");
        assert!(complete * 100 >= n * 99, "concurrency {concurrency}: {complete} of {n} complete; {stats}");
        if concurrency == 1 {
            assert_eq!(complete, n, "{stats}");
            assert!(stats.contains(&format!("links_thread_spawn={n} ")), "{stats}");
        }
    }
}

/// A makes its call on a pool shared by all requests, whose workers are
/// made on demand by whichever request's thread submits first: a worker
/// outlives that request and runs other requests' calls, so no call of it
/// may get a parent. Its calls made while the request that made it was in
/// flight are linked to that request as a candidate (`ambiguous`); the
/// rest are unlinked.
#[test]
fn a_pool_shared_by_requests_never_gives_a_wrong_parent() {
    let _serial = serial();
    agent_bin();
    for (concurrency, n) in [(1, 20), (8, 200)] {
        let (spans, t, exit) = run(false, Front::PythonPool, concurrency, n);
        let (complete, wrong, merged) = check(&spans, &t, n, false);
        let stats = exit.stats_line().unwrap_or("");
        println!("shared pool, concurrency {concurrency}: {complete} of {n} complete, {wrong} wrong parents, {merged} merged; {stats}");
        assert_eq!((complete, wrong, merged), (0, 0, 0), "{stats}");
        let a_calls: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.kind() == SpanKind::Client && s.resource_int("process.pid") == Some(t.a.pid() as i64))
            .collect();
        assert_eq!(a_calls.len(), n);
        let mut candidates = 0;
        for s in &a_calls {
            assert!(s.span.parent_span_id.is_empty(), "a pool's call has no parent:\n{}", dump(&spans));
            match s.attr_str("tracer.parent.source").as_deref() {
                Some("ambiguous") => {
                    assert_eq!(s.span.links.len(), 1, "{}", dump(&spans));
                    candidates += 1;
                }
                None => assert!(s.span.links.is_empty()),
                other => panic!("source {other:?}:\n{}", dump(&spans)),
            }
        }
        if concurrency == 1 {
            // One worker, made during the first request.
            assert_eq!(candidates, 1, "{stats}");
        }
        assert!(stats.contains("links_thread_spawn=0 "), "{stats}");
    }
}

/// The same chain with a Java service in the middle: a fixed thread pool
/// serving requests, `HttpURLConnection` calling out.
#[test]
fn a_java_thread_pool_service_links_its_calls() {
    let _serial = serial();
    agent_bin();
    for (concurrency, n) in [(1, 40), (8, 200)] {
        let (spans, t, exit) = run(false, Front::Java, concurrency, n);
        let (complete, wrong, merged) = check(&spans, &t, n, concurrency == 1);
        let stats = exit.stats_line().unwrap_or("");
        println!("java, concurrency {concurrency}: {complete} of {n} complete, {wrong} wrong parents, {merged} merged; {stats}");
        assert_eq!((wrong, merged), (0, 0), "{stats}");
        assert!(complete * 100 >= n * 99, "concurrency {concurrency}: {complete} of {n} complete; {stats}");
    }
}

/// The reference topology: curl → nginx reverse proxy (keep-alive to its
/// upstream) → A → B → Redis and PostgreSQL. nginx serves every request on
/// one event-loop thread: one request in flight is linked by `thread`;
/// with several in flight, the one nginx forwards (same method, target and
/// user agent) by `forwarded`.
#[test]
fn a_reverse_proxy_in_front_keeps_one_trace_per_request() {
    let _serial = serial();
    agent_bin();
    for (concurrency, n) in [(1, 40), (8, 200)] {
        let (spans, t, exit) = run(true, Front::Python, concurrency, n);
        let (complete, wrong, merged) = check(&spans, &t, n, concurrency == 1);
        let stats = exit.stats_line().unwrap_or("");
        println!("nginx, concurrency {concurrency}: {complete} of {n} complete, {wrong} wrong parents, {merged} merged; {stats}");
        assert_eq!((wrong, merged), (0, 0), "{stats}");
        assert!(complete * 100 >= n * 99, "concurrency {concurrency}: {complete} of {n} complete; {stats}");
        if concurrency == 1 {
            assert_eq!(complete, n, "{stats}");
        }
    }
}

/// Each span as the tree shows it: service, kind, name, times, how its
/// parent was found, and its parent's and links' own facts of that kind.
fn tree_facts(spans: &[ReceivedSpan]) -> Vec<String> {
    let by_id: HashMap<Vec<u8>, &ReceivedSpan> = spans.iter().map(|s| (s.span.span_id.clone(), s)).collect();
    let me = |s: &ReceivedSpan| {
        format!("{:?} {:?} {} {}-{}", s.service_name(), s.kind(), s.name(), s.start_ns(), s.end_ns())
    };
    let mut facts: Vec<String> = spans
        .iter()
        .map(|s| {
            let parent = by_id.get(&s.span.parent_span_id).map(|p| me(p)).unwrap_or_else(|| "-".into());
            let links: Vec<String> =
                s.span.links.iter().map(|l| by_id.get(&l.span_id).map(|p| me(p)).unwrap_or_default()).collect();
            let same_trace = by_id.get(&s.span.parent_span_id).is_none_or(|p| p.span.trace_id == s.span.trace_id);
            format!(
                "{} src={:?} parent=[{parent}] links={links:?} same_trace={same_trace}",
                me(s),
                s.attr_str("tracer.parent.source")
            )
        })
        .collect();
    facts.sort();
    facts
}

/// A recording of the topology, eight at a time, replays to exactly the
/// same trees: nginx in front, and A calling through a shared pool (whose
/// verdicts come from time passing, as the recording tells it).
#[test]
fn a_recorded_topology_replays_to_the_same_trees() {
    let _serial = serial();
    agent_bin();
    for (nginx, front) in [(true, Front::Python), (false, Front::PythonPool)] {
        let t = topology(nginx, front);
        let record = std::env::temp_dir().join(format!("tracer-traces-{}.rec", std::process::id()));
        let _ = std::fs::remove_file(&record);
        let live = Receiver::start();
        let mut b = AgentBuilder::new(&live).arg("--record").arg(record.display().to_string());
        for p in &t.ports {
            b = b.port(*p);
        }
        let agent = b.start();
        let n = 40;
        let mut args: Vec<String> = vec!["--parallel".into(), "--parallel-max".into(), "8".into()];
        for i in 0..n {
            args.extend(["-o", "/dev/null", "-w", "%{http_code}\n"].map(String::from));
            args.push(format!("http://127.0.0.1:{}/front/{i}", t.entry()));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&refs);
        live.wait_for_count(t.hops() * n, SPAN_WAIT, |_| true);
        agent.stop();
        let live_spans = live.spans();
        assert_eq!(live_spans.len(), t.hops() * n, "{}", dump(&live_spans));
        let replayed = Receiver::start();
        let out = AgentBuilder::new(&replayed).arg("--replay").arg(record.display().to_string()).run_to_end();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "replay failed: {stderr}");
        let replayed_spans = replayed.spans();
        assert_eq!(tree_facts(&replayed_spans), tree_facts(&live_spans), "{front:?}");
        let _ = std::fs::remove_file(&record);
    }
}
