//! `cargo xtask bench`: the agent's overhead, measured side by side.
//!
//! For each workload (nginx with one worker serving a 6-byte file over
//! keep-alive — the worst case — and a Gin service building JSON), rounds
//! of three modes run interleaved, in rotating order:
//! - OFF: no agent;
//! - KERNEL: probes attached, events drained and discarded (`--discard`);
//! - FULL: the agent parsing, making spans and exporting OTLP/HTTP to a
//!   local receiver that counts and discards;
//! - DEFAULT: as FULL, but the agent as a user starts it, with no filters:
//!   the load generator's side is captured too, and its client spans are
//!   exported (two spans per request);
//! - NO GO PROBES (Go workloads only): as FULL with `--go-probes false`,
//!   so that what the Go function probes cost is FULL against it.
//!
//! Each round runs wrk at saturation (throughput, CPU) and, when oha is
//! installed, oha at half of the OFF saturation rate (latency percentiles).
//! Ratios are taken per round against that round's OFF run; the report
//! shows medians and the range. In KERNEL and FULL the agent traces only the
//! server process (`--comm`), as on a host where the load comes from
//! elsewhere.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::build::{self, Paths};
use crate::util::{self, note, step, warn};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Off,
    Kernel,
    Full,
    Default,
    NoGo,
}

/// Modes in report order; a round's runs are indexed the same way.
const MODES: [Mode; 5] = [Mode::Off, Mode::Kernel, Mode::Full, Mode::Default, Mode::NoGo];

impl Mode {
    fn index(self) -> usize {
        match self {
            Mode::Off => 0,
            Mode::Kernel => 1,
            Mode::Full => 2,
            Mode::Default => 3,
            Mode::NoGo => 4,
        }
    }
}

/// What one mode measured in one round.
#[derive(Clone, Debug, Default)]
struct Run {
    rps: f64,
    requests: u64,
    /// Machine CPU (all cores, all processes) during the saturation run, seconds.
    machine_cpu: f64,
    /// Agent CPU during the saturation run, seconds.
    agent_cpu: f64,
    /// CPU of the traced server's processes during the saturation run, seconds.
    server_cpu: f64,
    /// CPU of the load generator (wrk) during the saturation run, seconds.
    load_cpu: f64,
    /// CPU of this process, which holds the OTLP sink, during the saturation run, seconds.
    sink_cpu: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Requests of the latency run.
    latency_requests: u64,
    spans_exported: u64,
    kernel_lost: u64,
    peak_rss_kib: u64,
}

struct Workload {
    name: &'static str,
    comm: &'static str,
    /// A Go program: measured with the Go function probes off too.
    go: bool,
    url: String,
    server: Child,
}

impl Drop for Workload {
    fn drop(&mut self) {
        // SIGTERM, so that a server with worker processes (nginx) stops
        // them too; SIGKILL would leave them running, orphaned.
        // SAFETY: plain signal to our own child.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.server.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

pub struct Options {
    pub rounds: usize,
    pub seconds: u64,
    pub skip_gin: bool,
    pub skip_nginx: bool,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(port: u16) -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on port {port} after 20 s")
}

/// Busy and total jiffies of the whole machine, from /proc/stat.
fn machine_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = text.lines().next().unwrap_or("");
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user, nice, system, idle, iowait, irq, softirq: time stolen by the
    // hypervisor (the next field) is other guests' work, not this machine's.
    let total: u64 = v.iter().take(7).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, in clock ticks.
fn process_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may contain spaces.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0);
    let st: u64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
    ut + st
}

/// utime + stime of every process named `comm`, in clock ticks.
fn comm_ticks(comm: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm))
        .map(process_ticks)
        .sum()
}

/// User + system CPU seconds of this process (`RUSAGE_SELF`) or of its
/// waited-for children (`RUSAGE_CHILDREN`).
fn rusage_seconds(who: i32) -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn peak_rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A minimal OTLP/HTTP sink: answers every request with 200 and counts them.
struct Sink {
    port: u16,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let r = r.clone();
                        std::thread::spawn(move || serve_sink(conn, &r));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Sink { port, requests, stop })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_sink(conn: TcpStream, requests: &AtomicU64) {
    let _ = conn.set_nonblocking(false);
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            if !first {
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            first = false;
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        requests.fetch_add(1, Ordering::Relaxed);
        let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if w.write_all(reply).is_err() {
            return;
        }
    }
}

struct RunningAgent {
    child: Child,
    stderr: Arc<std::sync::Mutex<String>>,
}

fn start_agent(bin: &Path, mode: Mode, comm: &str, sink_port: u16) -> Result<Option<RunningAgent>> {
    let mut cmd = Command::new(bin);
    if mode != Mode::Default {
        cmd.args(["--comm", comm]);
    }
    match mode {
        Mode::Off => return Ok(None),
        Mode::Kernel => {
            cmd.arg("--discard");
        }
        Mode::Full | Mode::Default | Mode::NoGo => {
            if mode == Mode::NoGo {
                cmd.args(["--go-probes", "false"]);
            }
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{sink_port}"))
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
                .env("OTEL_BSP_SCHEDULE_DELAY", "1000");
        }
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
    let stderr = Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(err) = child.stderr.take() {
        let buf = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("tracer-agent: ready") {
                    let _ = tx.send(());
                }
                if let Ok(mut b) = buf.lock() {
                    b.push_str(&line);
                    b.push('\n');
                }
            }
        });
    }
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        let text = stderr.lock().map(|s| s.clone()).unwrap_or_default();
        bail!("the agent did not become ready: {}", text.trim());
    }
    Ok(Some(RunningAgent { child, stderr }))
}

/// Stop the agent; returns (spans exported, kernel events lost).
fn stop_agent(a: RunningAgent) -> (u64, u64) {
    let RunningAgent { mut child, stderr } = a;
    // SAFETY: plain signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(100));
    let text = stderr.lock().map(|s| s.clone()).unwrap_or_default();
    let stats = text.lines().rev().find(|l| l.contains("tracer-agent: stats")).unwrap_or("");
    let field = |name: &str| -> u64 {
        stats
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("spans_exported"), field("kernel_lost"))
}

/// wrk at saturation: (requests, requests per second).
fn wrk(url: &str, seconds: u64) -> Result<(u64, f64)> {
    let out =
        Command::new("wrk").args(["-t1", "-c16", &format!("-d{seconds}s"), url]).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no request count in wrk output")?;
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no rate in wrk output")?;
    Ok((requests, rps))
}

/// oha at a fixed rate: (requests, p50 ms, p99 ms).
fn oha(oha: &Path, url: &str, rate: f64, seconds: u64) -> Result<(u64, f64, f64)> {
    let out = Command::new(oha)
        .args(["--no-tui", "--output-format", "json", "-c", "16", "-q", &format!("{:.0}", rate.max(1.0))])
        .args(["-z", &format!("{seconds}s"), url])
        .output()
        .context("running oha")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let num = |key: &str| -> Option<f64> {
        let i = text.find(&format!("\"{key}\""))?;
        let rest = &text[i + key.len() + 2..];
        let rest = rest.trim_start().strip_prefix(':')?.trim_start();
        let end = rest.find([',', '}', '\n']).unwrap_or(rest.len());
        rest[..end].trim().parse().ok()
    };
    let p50 = num("p50").context("no p50 in oha output")? * 1000.0;
    let p99 = num("p99").context("no p99 in oha output")? * 1000.0;
    let ok = text
        .find("\"statusCodeDistribution\"")
        .and_then(|i| text[i..].find("\"200\"").map(|j| &text[i + j + 5..]))
        .and_then(|r| r.trim_start().strip_prefix(':'))
        .and_then(|r| r.trim_start().split([',', '}']).next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Ok((ok, p50, p99))
}

fn start_nginx(dir: &Path) -> Result<Workload> {
    let port = free_port()?;
    let root = dir.join("www");
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("index.html"), "hello\n")?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{}}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; \
             uwsgi_temp_path {d}; scgi_temp_path {d}; keepalive_requests 1000000;\n\
             server {{ listen 127.0.0.1:{port}; root {r}; }} }}\n",
            d = dir.display(),
            r = root.display()
        ),
    )?;
    let server = Command::new("nginx")
        .args(["-c", &conf.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    wait_port(port)?;
    Ok(Workload {
        name: "nginx (1 worker, 6-byte file, keep-alive)",
        comm: "nginx",
        go: false,
        url: format!("http://127.0.0.1:{port}/index.html"),
        server,
    })
}

fn build_gin(paths: &Paths) -> Result<PathBuf> {
    let out = paths.target_dir.join("bench").join("gin-server");
    let src = paths.root.join("xtask/bench/gin-server");
    if out.exists() {
        return Ok(out);
    }
    if util::which("go").is_none() || !Path::new("/usr/share/gocode/src/github.com/gin-gonic/gin").exists() {
        step("installing Go and Gin's sources with apt (golang-go, golang-github-gin-gonic-gin-dev)");
        let mut updated = false;
        util::apt_install(&["golang-go", "golang-github-gin-gonic-gin-dev"], &mut updated);
    }
    if util::which("go").is_none() || !Path::new("/usr/share/gocode/src/github.com/gin-gonic/gin").exists() {
        bail!("the Gin workload needs Debian's golang-go and golang-github-gin-gonic-gin-dev");
    }
    let gopath = paths.target_dir.join("bench").join("gopath");
    std::fs::create_dir_all(&gopath)?;
    util::Cmd::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .dir(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", format!("{}:/usr/share/gocode", gopath.display()))
        .env("GOFLAGS", "")
        .env("GOCACHE", paths.target_dir.join("bench").join("gocache"))
        .run()?;
    Ok(out)
}

fn start_gin(bin: &Path) -> Result<Workload> {
    let port = free_port()?;
    let server = Command::new(bin)
        .arg(port.to_string())
        .env("GOMAXPROCS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the Gin service")?;
    wait_port(port)?;
    Ok(Workload {
        name: "Gin service (JSON, GOMAXPROCS=1)",
        comm: "gin-server",
        go: true,
        url: format!("http://127.0.0.1:{port}/items/42"),
        server,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn range(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// How much the OFF runs, (throughput, machine CPU per request in µs) by
/// round, moved from one round to the next: the yardstick for how far apart
/// two ratios or costs must be to differ on this machine.
fn noise_line(offs: &[(f64, f64)]) -> Option<String> {
    let rps: Vec<f64> =
        offs.windows(2).map(|w| (w[1].0 / w[0].0 - 1.0).abs() * 100.0).filter(|x| x.is_finite()).collect();
    let us: Vec<f64> = offs.windows(2).map(|w| (w[1].1 - w[0].1).abs()).filter(|x| x.is_finite()).collect();
    if rps.is_empty() || us.is_empty() {
        return None;
    }
    let (_, rps_max) = range(&rps);
    let (_, us_max) = range(&us);
    Some(format!(
        "\nNoise (OFF against the previous round's OFF): throughput moved by a median {:.1} % (at most {:.1} %), machine CPU per request by a median {:.2} µs (at most {:.2} µs).\n",
        median(rps),
        rps_max,
        median(us),
        us_max
    ))
}

fn cell(v: Vec<f64>, digits: usize) -> String {
    if v.is_empty() || v.iter().all(|x| x.is_nan()) {
        return "n/a".into();
    }
    let v: Vec<f64> = v.into_iter().filter(|x| !x.is_nan()).collect();
    let (lo, hi) = range(&v);
    format!("{:.d$} ({:.d$}–{:.d$})", median(v), lo, hi, d = digits)
}

fn measure(
    w: &Workload,
    mode: Mode,
    agent: &Path,
    sink: &Sink,
    seconds: u64,
    oha_bin: Option<&Path>,
    half_rate: f64,
) -> Result<Run> {
    let a = start_agent(agent, mode, w.comm, sink.port)?;
    let apid = a.as_ref().map(|a| a.child.id());
    std::thread::sleep(Duration::from_millis(300));
    let (busy0, _) = machine_jiffies();
    let at0 = apid.map(process_ticks).unwrap_or(0);
    let st0 = comm_ticks(w.comm);
    let (load0, self0) = (rusage_seconds(libc::RUSAGE_CHILDREN), rusage_seconds(libc::RUSAGE_SELF));
    let (requests, rps) = wrk(&w.url, seconds)?;
    let (busy1, _) = machine_jiffies();
    let at1 = apid.map(process_ticks).unwrap_or(0);
    let st1 = comm_ticks(w.comm);
    let (load1, self1) = (rusage_seconds(libc::RUSAGE_CHILDREN), rusage_seconds(libc::RUSAGE_SELF));
    let tps = ticks_per_second();
    let mut run = Run {
        rps,
        requests,
        machine_cpu: busy1.saturating_sub(busy0) as f64 / tps,
        agent_cpu: at1.saturating_sub(at0) as f64 / tps,
        server_cpu: st1.saturating_sub(st0) as f64 / tps,
        load_cpu: load1 - load0,
        sink_cpu: self1 - self0,
        ..Run::default()
    };
    if let Some(oha_bin) = oha_bin {
        match oha(oha_bin, &w.url, half_rate, seconds) {
            Ok((n, p50, p99)) => {
                run.latency_requests = n;
                run.p50_ms = Some(p50);
                run.p99_ms = Some(p99);
            }
            Err(e) => warn(format!("latency run failed: {e:#}")),
        }
    }
    if let Some(a) = a {
        // Let the last batch go out before stopping.
        std::thread::sleep(Duration::from_millis(1500));
        run.peak_rss_kib = peak_rss_kib(a.child.id());
        let (spans, lost) = stop_agent(a);
        run.spans_exported = spans;
        run.kernel_lost = lost;
    }
    Ok(run)
}

/// Run time of the probes themselves per request: one more KERNEL run with
/// the kernel's BPF statistics switched on (they cost a clock read per
/// program run, so they stay off during the rounds). Returns (µs of probe
/// time per request, program runs per request).
fn probe_time(w: &Workload, agent: &Path, sink: &Sink, seconds: u64) -> Result<(f64, f64)> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(STATS).context("reading kernel.bpf_stats_enabled")?;
    std::fs::write(STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
    let result = (|| {
        let a = start_agent(agent, Mode::Kernel, w.comm, sink.port)?.context("no agent in KERNEL mode")?;
        std::thread::sleep(Duration::from_millis(300));
        let read = || program_stats(a.child.id());
        let (ns0, runs0) = read();
        let (requests, _) = wrk(&w.url, seconds)?;
        let (ns1, runs1) = read();
        stop_agent(a);
        let n = requests.max(1) as f64;
        Ok(((ns1 - ns0) as f64 / 1e3 / n, (runs1 - runs0) as f64 / n))
    })();
    let _ = std::fs::write(STATS, before.trim());
    result
}

/// Summed `run_time_ns` and `run_cnt` of the BPF programs a process holds.
fn program_stats(pid: u32) -> (u64, u64) {
    let (mut ns, mut runs) = (0u64, 0u64);
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return (0, 0) };
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        if !text.contains("prog_type") {
            continue;
        }
        for line in text.lines() {
            let mut it = line.split_whitespace();
            match (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) {
                (Some("run_time_ns:"), Some(v)) => ns += v,
                (Some("run_cnt:"), Some(v)) => runs += v,
                _ => {}
            }
        }
    }
    (ns, runs)
}

fn report_workload(out: &mut String, w: &Workload, rounds: &[[Run; 5]], probes: Option<(f64, f64)>) {
    let col =
        |m: usize, f: &dyn Fn(&Run, &Run) -> f64| -> Vec<f64> { rounds.iter().map(|r| f(&r[m], &r[0])).collect() };
    let off_rps = median(rounds.iter().map(|r| r[0].rps).collect());
    let per_request = |cpu: f64, r: &Run| cpu / r.requests.max(1) as f64 * 1e6;
    let off_us = |f: &dyn Fn(&Run) -> f64| median(rounds.iter().map(|r| per_request(f(&r[0]), &r[0])).collect());
    out.push_str(&format!(
        "\n### {}\n\nOFF throughput: {:.0} requests/s; OFF CPU per request: {:.1} µs for the whole machine, {:.1} µs in the server, {:.1} µs in the load generator (medians). Medians, with the range over {} rounds in brackets.\n\n",
        w.name,
        off_rps,
        off_us(&|r| r.machine_cpu),
        off_us(&|r| r.server_cpu),
        off_us(&|r| r.load_cpu),
        rounds.len()
    ));
    if w.go {
        out.push_str("| metric | KERNEL | FULL | DEFAULT | FULL, no Go probes |\n|---|---|---|---|---|\n");
    } else {
        out.push_str("| metric | KERNEL | FULL | DEFAULT |\n|---|---|---|---|\n");
    }
    let row = |out: &mut String, name: &str, f: &dyn Fn(&Run, &Run) -> f64, d: usize| {
        out.push_str(&format!("| {name} | {} | {} | {} |", cell(col(1, f), d), cell(col(2, f), d), cell(col(3, f), d)));
        if w.go {
            out.push_str(&format!(" {} |", cell(col(4, f), d)));
        }
        out.push('\n');
    };
    row(out, "throughput ÷ OFF", &|r, o| r.rps / o.rps, 3);
    row(
        out,
        "p50 latency ÷ OFF at half load",
        &|r, o| match (r.p50_ms, o.p50_ms) {
            (Some(a), Some(b)) if b > 0.0 => a / b,
            _ => f64::NAN,
        },
        3,
    );
    row(
        out,
        "p99 latency ÷ OFF at half load",
        &|r, o| match (r.p99_ms, o.p99_ms) {
            (Some(a), Some(b)) if b > 0.0 => a / b,
            _ => f64::NAN,
        },
        3,
    );
    row(out, "agent CPU per 1,000 requests (ms)", &|r, _| r.agent_cpu * 1e6 / r.requests.max(1) as f64, 2);
    row(
        out,
        "machine CPU added per request (µs, vs OFF)",
        &|r, o| per_request(r.machine_cpu, r) - per_request(o.machine_cpu, o),
        2,
    );
    row(
        out,
        "– of which in the traced server (µs)",
        &|r, o| per_request(r.server_cpu, r) - per_request(o.server_cpu, o),
        2,
    );
    row(
        out,
        "– of which in the load generator (µs)",
        &|r, o| per_request(r.load_cpu, r) - per_request(o.load_cpu, o),
        2,
    );
    row(out, "– of which in the agent (µs)", &|r, _| per_request(r.agent_cpu, r), 2);
    row(out, "– of which in the OTLP sink (µs)", &|r, o| per_request(r.sink_cpu, r) - per_request(o.sink_cpu, o), 2);
    row(out, "agent peak RSS (MiB)", &|r, _| r.peak_rss_kib as f64 / 1024.0, 1);
    row(
        out,
        "spans exported ÷ requests",
        &|r, _| r.spans_exported as f64 / (r.requests + r.latency_requests).max(1) as f64,
        4,
    );
    row(out, "kernel events lost", &|r, _| r.kernel_lost as f64, 0);
    let offs: Vec<(f64, f64)> = rounds.iter().map(|r| (r[0].rps, per_request(r[0].machine_cpu, &r[0]))).collect();
    if let Some(line) = noise_line(&offs) {
        out.push_str(&line);
    }
    if let Some((us, runs)) = probes {
        out.push_str(&format!(
            "\nProbe run time (kernel BPF statistics, one extra KERNEL run): {us:.2} µs per request in {runs:.1} program runs.\n"
        ));
    }
}

pub fn bench(paths: &Paths, opts: &Options) -> Result<()> {
    if !util::is_root() {
        bail!("the benchmark loads the agent's probes: run it as root");
    }
    let agent = build::build_all(paths, true)?;
    for (bin, pkg) in [("nginx", "nginx"), ("wrk", "wrk")] {
        if util::which(bin).is_none() {
            let mut updated = false;
            util::apt_install(&[pkg], &mut updated);
        }
    }
    let oha_bin = util::which("oha").or_else(|| {
        step("installing oha (latency percentiles at a fixed rate) with cargo, once");
        util::Cmd::new("cargo").args(["install", "oha", "--locked"]).run().ok()?;
        util::which("oha")
    });
    if oha_bin.is_none() {
        warn("oha is not available: latency rows will read n/a");
    }
    let dir = paths.target_dir.join("bench");
    std::fs::create_dir_all(&dir)?;
    let sink = Sink::start()?;
    let mut report = String::new();
    let machine = format!(
        "{} CPUs, {}, kernel {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c
                .lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())))
            .unwrap_or_else(|| "unknown CPU".into()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    );
    report.push_str(&format!(
        "## Overhead benchmark\n\nMachine: {machine}. {} rounds of OFF/KERNEL/FULL/DEFAULT in rotating order, {} s of wrk -t1 -c16 each, then {} s of oha -c16 at half the OFF rate. In KERNEL and FULL the agent traces only the server process; DEFAULT is the agent with no filters at all, as a user starts it, so the load generator's client spans are exported too (two spans per request). Go workloads also run FULL with the Go function probes off (`--go-probes false`).\n",
        opts.rounds, opts.seconds, opts.seconds
    ));
    let mut workloads: Vec<Box<dyn Fn() -> Result<Workload>>> = Vec::new();
    if !opts.skip_nginx {
        workloads.push(Box::new(|| start_nginx(&dir.join("nginx"))));
    }
    if !opts.skip_gin {
        match build_gin(paths) {
            Ok(bin) => workloads.push(Box::new(move || start_gin(&bin))),
            Err(e) => warn(format!("skipping the Gin workload: {e:#}")),
        }
    }
    for start in &workloads {
        let w = start()?;
        step(format!("workload: {}", w.name));
        // Warm up and find the saturation rate for the latency runs.
        let (_, off_rps) = wrk(&w.url, 2)?;
        let half = off_rps / 2.0;
        note(format!("OFF saturation about {off_rps:.0} requests/s; latency runs at {half:.0}/s"));
        let mut rounds: Vec<[Run; 5]> = Vec::new();
        for i in 0..opts.rounds {
            let mut r: [Run; 5] = Default::default();
            // Each mode takes each place in the order once in as many
            // rounds as there are modes.
            let modes: Vec<Mode> = MODES.iter().copied().filter(|m| w.go || *m != Mode::NoGo).collect();
            for k in 0..modes.len() {
                let m = modes[(i + k) % modes.len()];
                r[m.index()] = measure(&w, m, &agent, &sink, opts.seconds, oha_bin.as_deref(), half)?;
            }
            let no_go = if w.go { format!(", FULL without Go probes {:.0}/s", r[4].rps) } else { String::new() };
            note(format!(
                "round {}/{}: OFF {:.0}/s, KERNEL {:.0}/s, FULL {:.0}/s, DEFAULT {:.0}/s{no_go}",
                i + 1,
                opts.rounds,
                r[0].rps,
                r[1].rps,
                r[2].rps,
                r[3].rps
            ));
            rounds.push(r);
        }
        let probes = match probe_time(&w, &agent, &sink, opts.seconds) {
            Ok(p) => Some(p),
            Err(e) => {
                warn(format!("probe run time not measured: {e:#}"));
                None
            }
        };
        report_workload(&mut report, &w, &rounds, probes);
    }
    note(format!("the OTLP sink received {} export requests", sink.requests.load(Ordering::Relaxed)));
    drop(sink);
    let file = dir.join("report.md");
    std::fs::write(&file, &report)?;
    println!("{report}");
    step(format!("report written to {}", file.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_the_change_between_consecutive_off_rounds() {
        // Throughput 100 → 110 → 99: changes of 10 % and 10 %; CPU 40 → 42 → 41: 2 and 1 µs.
        let line = noise_line(&[(100.0, 40.0), (110.0, 42.0), (99.0, 41.0)]).unwrap();
        assert!(line.contains("median 10.0 % (at most 10.0 %)"), "{line}");
        assert!(line.contains("median 1.50 µs (at most 2.00 µs)"), "{line}");
        assert_eq!(noise_line(&[(100.0, 40.0)]), None);
        assert_eq!(noise_line(&[]), None);
    }
}
