//! Traces that cross hosts: two network namespaces joined by a veth pair
//! stand for two hosts, each with its own agent that traces only the
//! processes of its namespace, both exporting to one receiver under
//! different `host.name`s. Neither agent sees both ends of the connection
//! between them, so only what the traffic carries can join the traces.
//!
//! Topology: curl (host a) → service A (python `ThreadingHTTPServer`,
//! host a) → HTTP → service B (host b) → Redis (host b).
//!
//! Run as root with `TRACER_AGENT_BIN` pointing at the agent binary.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tracer_tests::netns::TwoHosts;
use tracer_tests::*;

const SERVICE: &str = r#"
import http.client, socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

role, bind, port, peer, peer_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
local = threading.local()

def call_b(n):
    c = getattr(local, "b", None)
    if c is None:
        c = local.b = http.client.HTTPConnection(peer, peer_port, timeout=10)
    c.request("GET", "/b/%d" % n)
    r = c.getresponse()
    body = r.read()
    assert r.status == 200, r.status
    return body

def redis_incr(key):
    s = getattr(local, "r", None)
    if s is None:
        s = local.r = socket.create_connection((peer, peer_port))
    s.sendall(b"*2\r\n$4\r\nINCR\r\n$%d\r\n%s\r\n" % (len(key), key))
    reply = b""
    while not reply.endswith(b"\r\n"):
        reply += s.recv(64)
    assert reply.startswith(b":"), reply

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        n = int(self.path.rsplit("/", 1)[1])
        if role == "a":
            body = call_b(n)
        else:
            redis_incr(b"hits:%d" % n)
            body = b"ok %d\n" % n
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer((bind, port), Handler)
print("listening", flush=True)
server.serve_forever()
"#;

/// A process in a namespace, its output in a log file; killed on drop.
struct NsProcess {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl NsProcess {
    /// Starts `program args` in `ns` and waits until its log holds `ready`
    /// (or `check` succeeds, when given).
    fn start(ns: &str, program: &std::path::Path, args: &[String], ready: &dyn Fn(&str) -> bool) -> NsProcess {
        let dir = tempfile::Builder::new().prefix("tracer-ns-").tempdir().unwrap();
        let log = dir.path().join("log");
        let f = std::fs::File::create(&log).unwrap();
        let child = TwoHosts::command(ns, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} in {ns}: {e}", program.display()));
        let mut p = NsProcess { child, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready(&p.log()) {
            let status = p.child.try_wait();
            assert!(
                matches!(status, Ok(None)) && Instant::now() < deadline,
                "{} in {ns} did not get ready ({status:?}):\n{}",
                program.display(),
                p.log()
            );
            std::thread::sleep(Duration::from_millis(30));
        }
        p
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two hosts with their services: A on host a, B and Redis on host b.
struct Topology {
    hosts: TwoHosts,
    a: NsProcess,
    b: NsProcess,
    redis: NsProcess,
    a_port: u16,
}

impl Topology {
    fn start() -> Topology {
        let hosts = TwoHosts::new();
        let python = require_program("python3");
        let (a_port, b_port, redis_port) = (free_port(), free_port(), free_port());
        let redis_cli = require_program("redis-cli");
        let ns_b = hosts.b.clone();
        let redis = NsProcess::start(
            &hosts.b,
            &require_program("redis-server"),
            &["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                .map(String::from),
            &|_| {
                TwoHosts::command(&ns_b, &redis_cli)
                    .args(["-p", &redis_port.to_string(), "PING"])
                    .output()
                    .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
            },
        );
        let service = |role: &str, bind: &str, port: u16, peer: &str, peer_port: u16| -> Vec<String> {
            vec![
                "-c".into(),
                SERVICE.into(),
                role.into(),
                bind.into(),
                port.to_string(),
                peer.into(),
                peer_port.to_string(),
            ]
        };
        let listening = |log: &str| log.contains("listening");
        let b = NsProcess::start(
            &hosts.b,
            &python,
            &service("b", TwoHosts::B_ADDR, b_port, "127.0.0.1", redis_port),
            &listening,
        );
        let a = NsProcess::start(
            &hosts.a,
            &python,
            &service("a", TwoHosts::A_ADDR, a_port, TwoHosts::B_ADDR, b_port),
            &listening,
        );
        Topology { hosts, a, b, redis, a_port }
    }

    /// `n` requests from curl on host a, `concurrency` at a time.
    fn requests(&self, n: usize, concurrency: usize) {
        let mut args: Vec<String> = vec!["-s".into()];
        if concurrency > 1 {
            args.extend(["--parallel".into(), "--parallel-max".into(), concurrency.to_string()]);
        }
        for i in 0..n {
            args.extend(["-o", "/dev/null", "-w", "%{http_code}\\n"].map(String::from));
            args.push(format!("http://{}:{}/a/{i}", TwoHosts::A_ADDR, self.a_port));
        }
        let out = TwoHosts::command(&self.hosts.a, &require_program("curl")).args(&args).output().unwrap();
        let ok = String::from_utf8_lossy(&out.stdout).lines().filter(|l| *l == "200").count();
        assert_eq!(ok, n, "curl: {}\nA: {}\nB: {}", String::from_utf8_lossy(&out.stderr), self.a.log(), self.b.log());
    }
}

/// The agents of both hosts, each tracing its own host's processes.
fn agents(receiver: &Receiver, t: &Topology, carrier: &str) -> (Agent, Agent) {
    let a = AgentBuilder::new(receiver)
        .arg("--pid")
        .arg(t.a.pid().to_string())
        .arg("--trace-carrier")
        .arg(carrier)
        .env("OTEL_RESOURCE_ATTRIBUTES", "host.name=node-a")
        .start();
    let b = AgentBuilder::new(receiver)
        .arg("--pid")
        .arg(t.b.pid().to_string())
        .arg("--pid")
        .arg(t.redis.pid().to_string())
        .arg("--trace-carrier")
        .arg(carrier)
        .env("OTEL_RESOURCE_ATTRIBUTES", "host.name=node-b")
        .start();
    (a, b)
}

fn number(path: &str) -> Option<usize> {
    path.rsplit('/').next()?.parse().ok()
}

/// Spans per request: A's server span and its call (host a), B's server
/// span and its Redis command (host b).
const SPANS: usize = 4;

/// How many requests are one complete trace across both hosts:
/// A's call under A's request (`thread`), B's request under A's call
/// (`tcp-option`), B's command under B's request (`thread`). Fails on a
/// wrong parent or a trace holding two requests.
fn complete(spans: &[ReceivedSpan]) -> usize {
    assert_unique_span_ids(spans);
    let host = |s: &ReceivedSpan| s.resource_str("host.name").unwrap_or_default();
    let by_id: HashMap<String, &ReceivedSpan> = spans.iter().map(|s| (s.span_id_hex(), s)).collect();
    let request = |s: &ReceivedSpan| -> Option<usize> {
        s.url_path().as_deref().and_then(number).or_else(|| {
            s.attr_str("db.query.text").and_then(|q| q.strip_prefix("INCR hits:").and_then(|k| k.parse().ok()))
        })
    };
    let mut traces: BTreeMap<String, Vec<&ReceivedSpan>> = BTreeMap::new();
    for s in spans {
        traces.entry(s.trace_id_hex()).or_default().push(s);
        if let Some(p) = by_id.get(&s.parent_span_id_hex()) {
            assert_eq!(p.trace_id_hex(), s.trace_id_hex(), "{}", dump(spans));
            assert_eq!(request(s), request(p), "wrong parent:\n{}", dump(spans));
        }
    }
    let mut complete = 0;
    for t in traces.values() {
        let mut reqs: Vec<usize> = t.iter().filter_map(|s| request(s)).collect();
        reqs.sort();
        reqs.dedup();
        assert!(reqs.len() <= 1, "a trace holds requests {reqs:?}\n{}", dump(spans));
        let one = |h: &str, kind: SpanKind, db: bool| -> Option<&ReceivedSpan> {
            let mut it = t.iter().filter(|s| host(s) == h && s.kind() == kind && s.has_attr("db.system.name") == db);
            let first = it.next().copied();
            first.filter(|_| it.next().is_none())
        };
        let (Some(a_srv), Some(a_call), Some(b_srv), Some(b_cmd)) = (
            one("node-a", SpanKind::Server, false),
            one("node-a", SpanKind::Client, false),
            one("node-b", SpanKind::Server, false),
            one("node-b", SpanKind::Client, true),
        ) else {
            continue;
        };
        let child_of = |c: &ReceivedSpan, p: &ReceivedSpan, source: &str| {
            c.parent_span_id_hex() == p.span_id_hex() && c.attr_str("tracer.parent.source").as_deref() == Some(source)
        };
        if t.len() == SPANS
            && child_of(a_call, a_srv, "thread")
            && child_of(b_srv, a_call, "tcp-option")
            && child_of(b_cmd, b_srv, "thread")
        {
            complete += 1;
        }
    }
    complete
}

/// With `--trace-carrier tcp-option` on both hosts, every request is one
/// trace across them, at concurrency 1 and 4; without it, none is (B's
/// request starts a trace of its own).
#[test]
fn a_request_is_one_trace_across_two_hosts_with_the_tcp_option() {
    let _serial = serial();
    agent_bin();
    let t = Topology::start();
    for (carrier, concurrency, n) in [("tcp-option", 1, 40), ("tcp-option", 4, 100), ("none", 1, 20)] {
        let receiver = Receiver::start();
        let (a, b) = agents(&receiver, &t, carrier);
        t.requests(n, concurrency);
        receiver.wait_for_count(SPANS * n, SPAN_WAIT, |_| true);
        let (ea, eb) = (a.stop(), b.stop());
        receiver.assert_no_errors();
        let spans = receiver.spans();
        assert_eq!(spans.len(), SPANS * n, "{}", dump(&spans));
        let done = complete(&spans);
        println!(
            "carrier {carrier}, concurrency {concurrency}: {done} of {n} one trace across the hosts\nhost a: {}\nhost b: {}",
            ea.stats_line().unwrap_or(""),
            eb.stats_line().unwrap_or("")
        );
        if carrier == "none" {
            assert_eq!(done, 0);
            assert!(spans.iter().all(|s| s.attr_str("tracer.parent.source").as_deref() != Some("tcp-option")));
        } else {
            assert_eq!(done, n, "{}", dump(&spans));
        }
    }
}
