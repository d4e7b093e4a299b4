//! The probes themselves: every program stays far inside the verifier's
//! limits (read from the verifier's own statistics, not from whether the
//! load succeeded), `tracer-agent doctor` reports the host, and when a
//! program is refused the agent steps down to a simpler one and still
//! traces exactly.
//!
//! Run as root with `TRACER_AGENT_BIN` pointing at the agent binary.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use tracer_tests::*;

/// Every program in the probe object, by hook, best variant first.
const PROGRAMS: &[&str] = &[
    "inet_sock_set_state",
    "sock_recv_length",
    "sock_recv_length_first_iov",
    "sock_send_length",
    "sock_send_length_first_iov",
    "tcp_sendmsg_locked",
    "tcp_destroy_sock",
    "sched_process_exec",
];
const STACK_BUDGET: u32 = 384;
const PROCESSED_BUDGET: u64 = 200_000;

/// One program line of the doctor's report.
#[derive(Debug)]
struct Figures {
    ok: bool,
    stack: u32,
    frames: Vec<u32>,
    processed: u64,
}

/// `  sock_recv_length   ok   stack 192 (136+0+0+40) processed 6919 insns 1019 ...`
fn program_line(report: &str, program: &str) -> Figures {
    let line = report
        .lines()
        .find(|l| l.split_whitespace().next() == Some(program) && l.contains(" stack "))
        .unwrap_or_else(|| panic!("doctor lists no figures for {program}:\n{report}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).copied();
    let stack = after("stack").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no stack figure: {line}"));
    let frames = after("stack")
        .and_then(|_| words.iter().find(|w| w.starts_with('(')))
        .map(|w| w.trim_matches(|c| c == '(' || c == ')').split('+').map(|d| d.parse().unwrap()).collect())
        .unwrap_or_else(|| panic!("no frames: {line}"));
    let processed = after("processed").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no processed: {line}"));
    Figures { ok: words.get(1) == Some(&"ok"), stack, frames, processed }
}

/// The doctor, as root: exit 0, every hook attached with its first program,
/// and every program's figures inside the budget.
#[test]
fn every_program_stays_far_inside_the_verifier_limits() {
    let _serial = serial();
    let out = Command::new(agent_bin()).arg("doctor").output().expect("running tracer-agent doctor");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "doctor exited with {}:\n{report}\n{stderr}", out.status);
    println!("{report}");
    for section in ["host", "hooks", "programs", "verdict"] {
        assert!(report.lines().any(|l| l.starts_with(section)), "no {section} section:\n{report}");
    }
    for key in ["kernel", "btf", "tracefs", "privileges", "lockdown", "cgroup v2", "bpf"] {
        assert!(report.lines().any(|l| l.trim_start().starts_with(key)), "no {key} line:\n{report}");
    }
    for program in PROGRAMS {
        let f = program_line(&report, program);
        println!("{program}: combined stack {} (frames {:?}), {} insns processed", f.stack, f.frames, f.processed);
        assert!(f.ok, "{program} is not within budget:\n{report}");
        // The combined figure is at least the program's own frame, and at
        // most the sum of all its frames rounded up.
        let own = f.frames[0].div_ceil(16) * 16;
        let sum: u32 = f.frames.iter().map(|d| d.div_ceil(16) * 16).sum();
        assert!(f.stack >= own && f.stack <= sum, "{program}: stack {} outside {own}..={sum}", f.stack);
        assert!(f.stack <= STACK_BUDGET, "{program}: combined stack {} > {STACK_BUDGET}", f.stack);
        assert!(f.processed > 0 && f.processed <= PROCESSED_BUDGET, "{program}: {} insns processed", f.processed);
    }
    // Every hook uses its best program here.
    for hook in
        ["inet_sock_set_state", "sock_recv_length", "sock_send_length", "tcp_destroy_sock", "sched_process_exec"]
    {
        let line = report
            .lines()
            .find(|l| l.split_whitespace().next() == Some(hook) && !l.contains(" stack "))
            .unwrap_or_else(|| panic!("no hook line for {hook}:\n{report}"));
        assert!(line.contains(&format!("attached   {hook}")), "{hook} not attached with its first program: {line}");
    }
    assert!(report.contains("verdict         the agent can run here"), "{report}");
}

/// Without privileges the doctor says so in one line and exits non-zero.
#[test]
fn doctor_without_privileges_is_one_clear_line() {
    let _serial = serial();
    let setpriv = require_program("setpriv");
    // The agent binary may sit in a directory the unprivileged user cannot enter.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("tracer-agent");
    std::fs::copy(agent_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(&bin)
        .arg("doctor")
        .output()
        .expect("running doctor as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "doctor as nobody exited 0:\n{stdout}\n{stderr}");
    assert_eq!(stdout, "", "nothing on stdout");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr:?}");
    assert!(
        lines[0].starts_with("tracer-agent doctor: ") && lines[0].contains("uid 65534") && lines[0].contains("root"),
        "{stderr}"
    );
}

/// With the first data programs refused, the agent steps down to the
/// simpler ones (first iovec only), warns once per hook, counts it, and a
/// small nginx + curl run still gives exactly its spans, linked. The send
/// start program refused as well: the agent runs without it.
#[test]
fn refused_programs_fall_back_and_tracing_stays_exact() {
    let _serial = serial();
    agent_bin();
    let root = WebRoot::new();
    let port = free_port();
    let nginx = Nginx::start(port, root.path());
    let receiver = Receiver::start();
    let agent = AgentBuilder::new(&receiver)
        .port(port)
        .args(["--reject-program", "sock_recv_length", "--reject-program", "sock_send_length"])
        .args(["--reject-program", "tcp_sendmsg_locked"])
        .start();
    let paths = ["/hello.txt", "/index.html", "/big.bin", NGINX_MISSING_PATH, "/hello.txt?again=1"];
    let mut args = Vec::new();
    for p in paths {
        args.extend(["-o", "/dev/null", "-w", "%{http_code}\n"].map(String::from));
        args.push(nginx.url(p));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = curl(&refs);
    assert_eq!(run.stdout(), "200\n200\n200\n404\n200\n");
    receiver.wait_for_count(2 * paths.len(), SPAN_WAIT, |_| true);
    let exit = agent.stop();
    receiver.assert_no_errors();
    let spans = receiver.spans();
    assert_unique_span_ids(&spans);
    let servers = receiver.spans_of(SpanKind::Server, "nginx");
    let clients = receiver.spans_of(SpanKind::Client, "curl");
    assert_eq!((servers.len(), clients.len(), spans.len()), (5, 5, 10), "{}", dump(&spans));
    let mut got: Vec<String> = servers.iter().map(|s| s.attr_str("url.path").unwrap()).collect();
    got.sort();
    let mut want: Vec<String> =
        ["/hello.txt", "/index.html", "/big.bin", NGINX_MISSING_PATH, "/hello.txt"].map(String::from).to_vec();
    want.sort();
    assert_eq!(got, want);
    for s in &servers {
        let code = if s.url_path().as_deref() == Some(NGINX_MISSING_PATH) { 404 } else { 200 };
        assert_attr_int(s, "http.response.status_code", code);
        let parent = clients.iter().find(|c| c.span_id_hex() == s.parent_span_id_hex());
        let parent = parent.unwrap_or_else(|| panic!("server span without its client parent: {}", dump(&spans)));
        assert_eq!(parent.trace_id_hex(), s.trace_id_hex());
        assert_eq!(parent.url_path(), s.url_path());
    }
    let warnings: Vec<&str> = exit.stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 3, "one warning per hook: {}", exit.stderr);
    for (hook, simpler) in
        [("sock_recv_length", "sock_recv_length_first_iov"), ("sock_send_length", "sock_send_length_first_iov")]
    {
        let w = format!("warning: using the simpler probe {simpler} for {hook}");
        assert_eq!(exit.stderr.matches(&w).count(), 1, "{}", exit.stderr);
    }
    assert_eq!(exit.stderr.matches("warning: no probe on tcp_sendmsg_locked").count(), 1, "{}", exit.stderr);
    let stats = exit.stats_line().unwrap();
    assert!(stats.contains("probe_fallbacks=3 "), "{stats}");
    assert!(stats.contains("kernel_lost=0 "), "{stats}");
}

/// When no program can capture data the agent stops with one clear line
/// that names each refusal.
#[test]
fn nothing_to_capture_is_one_clear_error() {
    let _serial = serial();
    let receiver = Receiver::start();
    let mut cmd = Command::new(agent_bin());
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint(Protocol::Grpc))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
    for p in ["sock_recv_length", "sock_recv_length_first_iov", "sock_send_length", "sock_send_length_first_iov"] {
        cmd.args(["--reject-program", p]);
    }
    let out = cmd.output().expect("running the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("tracer-agent: error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("no probe can capture socket data"), "{stderr}");
    assert_eq!(errors[0].matches("rejected on purpose").count(), 4, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
