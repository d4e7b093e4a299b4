//! Process filters (`--comm`, `--pid`) combined with `--port`, and the
//! `--print` span printer.
//!
//! Run as root with `TRACER_AGENT_BIN` pointing at the agent binary.

use tracer_tests::*;

struct Env {
    receiver: Receiver,
    nginx: Nginx,
    _root: WebRoot,
    _serial: std::sync::MutexGuard<'static, ()>,
}

fn env() -> Env {
    let serial = serial();
    agent_bin();
    let root = WebRoot::new();
    let port = free_port();
    let nginx = Nginx::start(port, root.path());
    Env { receiver: Receiver::start(), nginx, _root: root, _serial: serial }
}

fn three_requests(nginx: &Nginx) -> CurlRun {
    let mut args = Vec::new();
    for i in 0..3 {
        args.extend(["-o".to_string(), "/dev/null".to_string()]);
        args.push(nginx.url(&numbered_path(i)));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&refs)
}

fn expected_paths() -> Vec<String> {
    (0..3).map(numbered_path).collect()
}

/// `--comm nginx`: only nginx's side is traced, curl's is not.
#[test]
fn comm_filter_traces_only_named_process() {
    let env = env();
    let agent = AgentBuilder::new(&env.receiver).port(env.nginx.port()).args(["--comm", "nginx"]).start();
    three_requests(&env.nginx);
    env.receiver.wait_for_count(3, SPAN_WAIT, |_| true);
    agent.stop();
    env.receiver.assert_no_errors();
    let spans = env.receiver.spans();
    assert_unique_span_ids(&spans);
    assert_eq!(spans.len(), 3, "only nginx server spans\n{}", dump(&spans));
    let servers = env.receiver.spans_of(SpanKind::Server, "nginx");
    assert_eq!(servers.len(), 3, "{}", dump(&spans));
    assert_paths_once(&servers, &expected_paths());
}

/// `--pid <curl's pid>` is not knowable in advance, so filter on the
/// nginx worker: only its server spans appear.
#[test]
fn pid_filter_traces_only_given_process() {
    let env = env();
    let workers = env.nginx.worker_pids();
    assert_eq!(workers.len(), 1);
    let agent = AgentBuilder::new(&env.receiver)
        .port(env.nginx.port())
        .args(["--pid".to_string(), workers[0].to_string()])
        .start();
    three_requests(&env.nginx);
    env.receiver.wait_for_count(3, SPAN_WAIT, |_| true);
    agent.stop();
    env.receiver.assert_no_errors();
    let spans = env.receiver.spans();
    assert_unique_span_ids(&spans);
    assert_eq!(spans.len(), 3, "only the worker's spans\n{}", dump(&spans));
    for s in &spans {
        assert_eq!(s.kind(), SpanKind::Server, "{s}");
        assert_eq!(s.resource_int("process.pid"), Some(workers[0] as i64), "{s}");
    }
    assert_paths_once(&spans, &expected_paths());
}

/// `--port` on a different port: the traffic to nginx is not traced at all.
#[test]
fn port_filter_excludes_other_ports() {
    let env = env();
    let other = free_port();
    let agent = AgentBuilder::new(&env.receiver).port(other).start();
    three_requests(&env.nginx);
    std::thread::sleep(std::time::Duration::from_secs(2));
    agent.stop();
    env.receiver.assert_no_errors();
    let spans = env.receiver.spans();
    assert!(spans.is_empty(), "{}", dump(&spans));
}

/// `--print` writes one line per span on stdout. Whether spans are also
/// exported while printing is left open; if they are, they are the same six.
#[test]
fn print_writes_one_line_per_span() {
    let env = env();
    let agent = AgentBuilder::new(&env.receiver).port(env.nginx.port()).arg("--print").start();
    three_requests(&env.nginx);
    let deadline = std::time::Instant::now() + SPAN_WAIT;
    while printed_lines(&agent.stdout()).len() < 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let exit = agent.stop();
    let lines = printed_lines(&exit.stdout);
    assert_eq!(lines.len(), 6, "one stdout line per span:\n{}", exit.stdout);
    for p in expected_paths() {
        let n = lines.iter().filter(|l| l.contains(p.as_str())).count();
        assert_eq!(n, 2, "{p} on one server and one client line:\n{}", exit.stdout);
    }
    let spans = env.receiver.spans();
    assert_unique_span_ids(&spans);
    assert!(spans.is_empty() || spans.len() == 6, "exported spans while printing: none or all six\n{}", dump(&spans));
}

fn printed_lines(stdout: &str) -> Vec<String> {
    stdout.lines().filter(|l| !l.trim().is_empty()).map(String::from).collect()
}
