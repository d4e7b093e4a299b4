//! Real programs used as traffic sources and sinks: nginx, python's
//! http.server, curl and wrk, plus small helpers around them.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Finds `name` on `PATH`, panicking with a clear message if it is missing.
pub fn require_program(name: &str) -> PathBuf {
    find_program(name)
        .unwrap_or_else(|| panic!("required program `{name}` was not found on PATH; install it to run these tests"))
}

pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path).chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].iter().map(PathBuf::from)) {
        let candidate = dir.join(name);
        if let Ok(meta) = fs::metadata(&candidate) {
            use std::os::unix::fs::PermissionsExt;
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Some(candidate);
            }
        }
    }
    None
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// Waits until something accepts connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Current wall-clock time in nanoseconds since the Unix epoch.
pub fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// `n` random bytes from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let rc = unsafe { libc::getrandom(buf[filled..].as_mut_ptr() as *mut libc::c_void, n - filled, 0) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("getrandom failed: {err}");
        }
        filled += rc as usize;
    }
    buf
}

/// Random lowercase hex string of `len` hex digits, never all zeros.
pub fn random_hex(len: usize) -> String {
    loop {
        let bytes = random_bytes(len.div_ceil(2));
        let s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let s = s[..len].to_string();
        if s.chars().any(|c| c != '0') {
            return s;
        }
    }
}

/// Host name as the kernel reports it (what `host.name` should carry).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its full length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    assert_eq!(rc, 0, "gethostname failed");
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `comm` of a process (kernel task name).
pub fn proc_comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_string())
}

/// Base name of `/proc/<pid>/exe`.
pub fn proc_exe_name(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/exe")).ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Children of `pid` (by the ppid field of /proc/<child>/stat).
pub fn child_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The comm field is parenthesised and may contain spaces; the ppid is
        // the second field after the closing parenthesis.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let _state = fields.next();
        if fields.next().and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out.sort_unstable();
    out
}

fn terminate(child: &mut Child, timeout: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: signal delivery to our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------
// Web root shared by the servers.

/// Size of `big.bin`, the large static file.
pub const BIG_FILE_SIZE: usize = 1024 * 1024;
/// Number of numbered files `files/fNN.txt`.
pub const NUMBERED_FILES: usize = 100;

/// A temporary document root with a fixed set of files:
/// - `index.html`
/// - `hello.txt` (`HELLO_BODY`)
/// - `files/f00.txt` .. `files/f99.txt` (distinct small bodies)
/// - `big.bin` (1 MiB of pseudo-random bytes)
/// - `gz/text.txt` (64 KiB of compressible text, served gzip+chunked by nginx)
pub struct WebRoot {
    dir: TempDir,
}

pub const HELLO_BODY: &str = "hello from the tracer integration tests\n";
pub const INDEX_BODY: &str = "<!doctype html><html><head><title>tracer</title></head><body>index</body></html>\n";

impl WebRoot {
    pub fn new() -> WebRoot {
        let dir = tempfile::Builder::new().prefix("tracer-webroot-").tempdir().expect("creating web root");
        let root = dir.path();
        fs::write(root.join("index.html"), INDEX_BODY).unwrap();
        fs::write(root.join("hello.txt"), HELLO_BODY).unwrap();
        fs::create_dir(root.join("files")).unwrap();
        for i in 0..NUMBERED_FILES {
            fs::write(root.join(format!("files/f{i:02}.txt")), numbered_body(i)).unwrap();
        }
        let mut big = Vec::with_capacity(BIG_FILE_SIZE);
        let mut x: u32 = 0x1234_5678;
        while big.len() < BIG_FILE_SIZE {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            big.extend_from_slice(&x.to_le_bytes());
        }
        big.truncate(BIG_FILE_SIZE);
        fs::write(root.join("big.bin"), &big).unwrap();
        fs::create_dir(root.join("gz")).unwrap();
        let mut text = String::new();
        let mut n = 0;
        while text.len() < 64 * 1024 {
            text.push_str(&format!("line {n}: the quick brown fox jumps over the lazy dog\n"));
            n += 1;
        }
        fs::write(root.join("gz/text.txt"), text).unwrap();
        // The directory must be traversable by whatever user serves it.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
        WebRoot { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Size of a file below the root.
    pub fn file_size(&self, rel: &str) -> u64 {
        fs::metadata(self.dir.path().join(rel.trim_start_matches('/')))
            .unwrap_or_else(|e| panic!("stat {rel}: {e}"))
            .len()
    }
}

impl Default for WebRoot {
    fn default() -> Self {
        WebRoot::new()
    }
}

/// Body of `files/fNN.txt`; each has a different length.
pub fn numbered_body(i: usize) -> String {
    format!("file {i:02}\n{}\n", "x".repeat(i))
}

/// URL path of `files/fNN.txt`.
pub fn numbered_path(i: usize) -> String {
    format!("/files/f{i:02}.txt")
}

// ---------------------------------------------------------------------------
// nginx

/// Path of the location that always answers 500.
pub const NGINX_ERROR_PATH: &str = "/error500";
/// Path that does not exist (404).
pub const NGINX_MISSING_PATH: &str = "/does-not-exist.txt";
/// Path served gzip-compressed with chunked transfer encoding when the
/// request carries `Accept-Encoding: gzip`.
pub const NGINX_CHUNKED_PATH: &str = "/gz/text.txt";

/// nginx with one worker serving a [`WebRoot`] on `127.0.0.1:port`.
pub struct Nginx {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
}

impl Nginx {
    /// nginx on `127.0.0.1:port` serving `root` with `sendfile off`, so
    /// response bodies go through ordinary socket writes.
    pub fn start(port: u16, root: &Path) -> Nginx {
        Nginx::start_with(port, root, false)
    }

    /// Like [`Nginx::start`] with `sendfile on` (static bodies are sent with
    /// sendfile(2), as in most production configurations).
    pub fn start_sendfile(port: u16, root: &Path) -> Nginx {
        Nginx::start_with(port, root, true)
    }

    pub fn start_with(port: u16, root: &Path, sendfile: bool) -> Nginx {
        let dir = tempfile::Builder::new().prefix("tracer-nginx-").tempdir().expect("creating nginx dir");
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
    worker_connections 4096;
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
    sendfile {sendfile};
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    server_tokens off;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        root {root};
        location = {error} {{
            return 500;
        }}
        location /gz/ {{
            gzip on;
            gzip_types text/plain;
            gzip_min_length 0;
            gzip_http_version 1.0;
        }}
    }}
}}
"#,
            d = d.display(),
            root = root.display(),
            error = NGINX_ERROR_PATH,
            sendfile = if sendfile { "on" } else { "off" },
        );
        Nginx::spawn(dir, port, &conf)
    }

    /// nginx on `127.0.0.1:port` as a reverse proxy to `127.0.0.1:upstream`,
    /// with keep-alive connections to the upstream (`keepalive` in the
    /// upstream block).
    pub fn start_proxy(port: u16, upstream: u16) -> Nginx {
        let dir = tempfile::Builder::new().prefix("tracer-nginx-").tempdir().expect("creating nginx dir");
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
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    server_tokens off;
    upstream backend {{
        server 127.0.0.1:{upstream};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#,
            d = d.display(),
        );
        Nginx::spawn(dir, port, &conf)
    }

    fn spawn(dir: TempDir, port: u16, conf: &str) -> Nginx {
        let nginx = require_program("nginx");
        let d = dir.path().to_path_buf();
        let d = d.as_path();
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
        let mut server = Nginx { child: Some(child), dir, port };
        if !wait_for_port(port, Duration::from_secs(15)) {
            let status = server.child.as_mut().unwrap().try_wait();
            panic!(
                "nginx did not start listening on port {port} (status {status:?})\nerror.log:\n{}",
                server.error_log()
            );
        }
        // Wait until the worker exists so its pid can be looked up.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.worker_pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn master_pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Worker processes (children of the master).
    pub fn worker_pids(&self) -> Vec<u32> {
        child_pids(self.master_pid())
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM is nginx's fast shutdown.
            terminate(&mut child, Duration::from_secs(5));
        }
    }
}

// ---------------------------------------------------------------------------
// python3 -m http.server

/// `python3 -m http.server PORT --bind 127.0.0.1` serving `dir`.
pub struct PyHttpServer {
    child: Option<Child>,
    port: u16,
    stderr_path: PathBuf,
    _log_dir: TempDir,
}

/// The python interpreter used for [`PyHttpServer`]. A plain `python3`
/// binary is preferred so the process' comm is `python3`.
pub fn python3() -> PathBuf {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    require_program("python3")
}

impl PyHttpServer {
    pub fn start(port: u16, dir: &Path) -> PyHttpServer {
        let python = python3();
        let log_dir = tempfile::Builder::new().prefix("tracer-pyhttp-").tempdir().unwrap();
        let stderr_path = log_dir.path().join("stderr.log");
        let stderr = fs::File::create(&stderr_path).unwrap();
        let child = Command::new(&python)
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
            .current_dir(dir)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} -m http.server: {e}", python.display()));
        let server = PyHttpServer { child: Some(child), port, stderr_path, _log_dir: log_dir };
        if !wait_for_port(port, Duration::from_secs(15)) {
            panic!("python3 -m http.server did not listen on port {port}\n{}", server.log());
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
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
}

impl Drop for PyHttpServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(5));
        }
    }
}

// ---------------------------------------------------------------------------
// curl

/// Result of one curl invocation.
#[derive(Debug)]
pub struct CurlRun {
    pub pid: u32,
    pub output: Output,
}

impl CurlRun {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

/// Runs `curl -sS <args>` and asserts it exits 0.
pub fn curl(args: &[&str]) -> CurlRun {
    let run = curl_spawn(args).wait();
    assert!(run.output.status.success(), "curl {args:?} failed with {}\nstderr: {}", run.output.status, run.stderr());
    run
}

/// A curl process that was started but not yet waited for.
pub struct CurlChild {
    child: Child,
    args: Vec<String>,
}

impl CurlChild {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait(self) -> CurlRun {
        let pid = self.child.id();
        let output = self.child.wait_with_output().unwrap_or_else(|e| panic!("waiting for curl {:?}: {e}", self.args));
        CurlRun { pid, output }
    }
}

/// Starts `curl -sS <args>` with stdout/stderr captured.
pub fn curl_spawn(args: &[&str]) -> CurlChild {
    let curl = require_program("curl");
    let child = Command::new(curl)
        .arg("-sS")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning curl: {e}"));
    CurlChild { child, args: args.iter().map(|s| s.to_string()).collect() }
}

/// The User-Agent curl sends by default: `curl/<version>`.
pub fn curl_user_agent() -> String {
    let out = Command::new(require_program("curl")).arg("--version").output().expect("running curl --version");
    let text = String::from_utf8_lossy(&out.stdout);
    let version =
        text.split_whitespace().nth(1).unwrap_or_else(|| panic!("unexpected `curl --version` output: {text}"));
    format!("curl/{version}")
}

// ---------------------------------------------------------------------------
// wrk

/// Summary of a wrk run.
#[derive(Debug)]
pub struct WrkRun {
    /// Completed requests as reported by "N requests in ...".
    pub requests: u64,
    /// Sum of the connect/read/write/timeout socket errors.
    pub socket_errors: u64,
    /// Count from "Non-2xx or 3xx responses", 0 when absent.
    pub non_2xx: u64,
    pub stdout: String,
}

/// Runs wrk with `args` and parses its summary.
pub fn wrk(args: &[&str]) -> WrkRun {
    let wrk = require_program("wrk");
    let out = Command::new(wrk).args(args).stdin(Stdio::null()).output().expect("running wrk");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wrk {args:?} failed with {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&stdout)
}

/// Parses the summary that wrk prints.
pub fn parse_wrk(stdout: &str) -> WrkRun {
    let mut requests = None;
    let mut socket_errors = 0;
    let mut non_2xx = 0;
    for line in stdout.lines() {
        let line = line.trim();
        if line.contains(" requests in ") {
            requests = line.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "Socket errors: connect 0, read 0, write 0, timeout 0"
            for part in rest.split(',') {
                if let Some(n) = part.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()) {
                    socket_errors += n;
                }
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = rest.trim().parse().unwrap_or(0);
        }
    }
    WrkRun {
        requests: requests.unwrap_or_else(|| panic!("no \"N requests in\" line in wrk output:\n{stdout}")),
        socket_errors,
        non_2xx,
        stdout: stdout.to_string(),
    }
}
