//! Database and cache servers for the database tests (PostgreSQL, MariaDB,
//! Redis), the clients that talk to them, and checks of database spans.
//!
//! Every server runs from a fresh temporary directory on a loopback port from
//! [`free_port`], so a test can restrict the agent with `--port` to its own
//! traffic. Setup work (creating tables, loading data) goes through the
//! servers' unix sockets or happens before the agent starts, so it never
//! shows up as spans.

use std::ffi::CString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::agent::{Agent, AgentBuilder, AgentExit};
use crate::programs::{find_program, free_port, require_program, wait_for_port};
use crate::receiver::{dump, ReceivedSpan, Receiver};
use crate::{assert_unique_span_ids, SpanKind, StatusCode, SPAN_WAIT};

/// Executable names of the database servers: they must never produce spans.
pub const DB_SERVER_NAMES: &[&str] = &["postgres", "mariadbd", "mysqld", "redis-server"];

/// How long a server may take to accept connections after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

fn output_text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` to completion, panicking (with its output) unless it exits 0.
fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(out.status.success(), "{what} failed\n{}", output_text(&out));
    out
}

/// SIGTERM (or `signal`), then SIGKILL after `timeout`.
fn stop_child(child: &mut Child, signal: libc::c_int, timeout: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: signal delivery to our own child process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
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

/// uid and gid of a system user.
fn user_ids(name: &str) -> (u32, u32) {
    let cname = CString::new(name).unwrap();
    // SAFETY: getpwnam returns a pointer into static storage or null; the
    // fields are copied out before any other call that could overwrite it.
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    assert!(!pw.is_null(), "system user `{name}` does not exist (it comes with the PostgreSQL server package)");
    // SAFETY: checked non-null above.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temporary directory {prefix}*: {e}"))
}

fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// A finished client process: its pid (the `process.pid` of its spans) and
/// what it printed.
#[derive(Debug)]
pub struct ClientRun {
    pub pid: u32,
    pub output: Output,
}

impl ClientRun {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Panics (with the output) unless the client exited 0.
    #[track_caller]
    pub fn assert_success(&self, what: &str) {
        assert!(self.output.status.success(), "{what} failed\n{}", output_text(&self.output));
    }

    /// Panics unless the client exited non-zero with `needle` on stderr.
    #[track_caller]
    pub fn assert_failed_with(&self, what: &str, needle: &str) {
        assert!(
            !self.output.status.success() && self.stderr().contains(needle),
            "{what} should have failed with {needle:?}\n{}",
            output_text(&self.output)
        );
    }
}

/// Spawns `cmd` (stdin null, output captured) and waits for it.
pub fn run_client(cmd: &mut Command, what: &str) -> ClientRun {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    wait_client(child, what)
}

fn wait_client(child: Child, what: &str) -> ClientRun {
    let pid = child.id();
    let output = child.wait_with_output().unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
    ClientRun { pid, output }
}

// ---------------------------------------------------------------------------
// PostgreSQL

/// Directory holding `initdb` and `postgres` (the newest installed major
/// version below /usr/lib/postgresql, else wherever `initdb` is on PATH).
pub fn postgres_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let initdb = find_program("initdb").unwrap_or_else(|| {
        panic!("PostgreSQL server binaries (initdb, postgres) were not found; install the postgresql package")
    });
    initdb.parent().unwrap().to_path_buf()
}

/// A PostgreSQL server (`postgres` run as the `postgres` user) on
/// `127.0.0.1:port`, with trust authentication, `fsync=off` and its unix
/// socket in its own directory. Stopped (fast shutdown) on drop.
pub struct Postgres {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    bin: PathBuf,
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = postgres_bin_dir();
        let (uid, gid) = user_ids("postgres");
        let dir = temp_dir("tracer-pg-");
        chown(dir.path(), uid, gid);
        let data = dir.path().join("data");
        run_ok(
            Command::new(bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["--auth=trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
                .current_dir(dir.path())
                .env("HOME", dir.path())
                .uid(uid)
                .gid(gid),
            "initdb",
        );
        let port = free_port();
        let log = fs::File::create(dir.path().join("postgres.log")).unwrap();
        chown(&dir.path().join("postgres.log"), uid, gid);
        let child = Command::new(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning postgres: {e}"));
        let mut pg = Postgres { child: Some(child), dir, port, bin };
        pg.wait_ready();
        pg
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                panic!("postgres exited with {status} during startup\n{}", self.log());
            }
            // Ask through the unix socket: the startup is over once a
            // query succeeds (the port opens before that).
            let ok = Command::new(require_program("psql"))
                .args(self.local_args("postgres"))
                .args(["-X", "-q", "-t", "-c", "SELECT 1"])
                .stdin(Stdio::null())
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok && wait_for_port(self.port, Duration::from_secs(1)) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "postgres did not accept connections on port {} within {STARTUP_TIMEOUT:?}\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Directory with `initdb`, `postgres`, `pgbench`'s server-side peers.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("postgres.log"))
    }

    /// psql/pgbench connection arguments over TCP (traced).
    pub fn tcp_args(&self, db: &str) -> Vec<String> {
        ["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", db].map(String::from).to_vec()
    }

    /// psql connection arguments over the unix socket (not traced by a
    /// `--port` agent).
    pub fn local_args(&self, db: &str) -> Vec<String> {
        ["-h", &self.dir.path().display().to_string(), "-p", &self.port.to_string(), "-U", "postgres", "-d", db]
            .map(String::from)
            .to_vec()
    }

    /// Runs SQL through the unix socket (setup that must not be traced);
    /// panics unless it succeeds.
    pub fn setup_sql(&self, db: &str, sql: &str) {
        run_ok(
            Command::new(require_program("psql")).args(self.local_args(db)).args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ]),
            &format!("psql (setup) {sql:?}"),
        );
    }

    /// `psql -X` over TCP with one `-c` per statement. Returns the output
    /// whatever the exit status (statements may fail on purpose).
    pub fn psql(&self, db: &str, statements: &[&str]) -> ClientRun {
        let mut cmd = Command::new(require_program("psql"));
        cmd.args(self.tcp_args(db)).arg("-X");
        for s in statements {
            cmd.arg("-c").arg(s);
        }
        run_client(&mut cmd, "psql")
    }

    /// Runs `pgbench` over TCP with `args` placed before the database name;
    /// panics unless it exits 0.
    pub fn pgbench(&self, db: &str, args: &[&str]) -> ClientRun {
        let run = run_client(
            Command::new(require_program("pgbench"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
                .args(args)
                .arg(db),
            "pgbench",
        );
        run.assert_success(&format!("pgbench {args:?}"));
        run
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT is the fast shutdown: active sessions are terminated.
            stop_child(&mut child, libc::SIGINT, Duration::from_secs(15));
        }
    }
}

// ---------------------------------------------------------------------------
// MariaDB

/// A MariaDB server on `127.0.0.1:port` with its own data directory,
/// `--skip-grant-tables` (any user, no password) and a unix socket in its
/// directory. Killed on drop.
pub struct MariaDb {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
}

impl MariaDb {
    pub fn start() -> MariaDb {
        let install = find_program("mariadb-install-db")
            .or_else(|| find_program("mysql_install_db"))
            .unwrap_or_else(|| panic!("mariadb-install-db was not found; install the mariadb-server package"));
        let server = find_program("mariadbd").unwrap_or_else(|| require_program("mysqld"));
        let dir = temp_dir("tracer-mariadb-");
        let data = dir.path().join("data");
        run_ok(
            Command::new(install)
                .arg("--no-defaults")
                .arg("--user=root")
                .arg(format!("--datadir={}", data.display()))
                .arg("--auth-root-authentication-method=normal")
                .arg("--skip-test-db")
                .current_dir(dir.path()),
            "mariadb-install-db",
        );
        let port = free_port();
        let log = dir.path().join("error.log");
        let child = Command::new(server)
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", dir.path().join("my.sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("mariadbd.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .args(["--skip-grant-tables", "--skip-networking=0", "--skip-name-resolve"])
            .args(["--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=0"])
            .arg("--skip-log-bin")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning mariadbd: {e}"));
        let mut db = MariaDb { child: Some(child), dir, port };
        db.wait_ready();
        db
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                panic!("mariadbd exited with {status} during startup\n{}", self.log());
            }
            let ok = Command::new(require_program("mariadb"))
                .args(self.local_args())
                .args(["-e", "SELECT 1"])
                .stdin(Stdio::null())
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok && wait_for_port(self.port, Duration::from_secs(1)) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "mariadbd did not accept connections on port {} within {STARTUP_TIMEOUT:?}\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("error.log"))
    }

    fn local_args(&self) -> Vec<String> {
        vec![
            "--no-defaults".into(),
            format!("--socket={}", self.dir.path().join("my.sock").display()),
            "-u".into(),
            "root".into(),
        ]
    }

    /// `mariadb` CLI arguments for a TCP connection (traced).
    pub fn tcp_args(&self) -> Vec<String> {
        vec![
            "--no-defaults".into(),
            "--protocol=TCP".into(),
            "-h".into(),
            "127.0.0.1".into(),
            "-P".into(),
            self.port.to_string(),
            "-u".into(),
            "root".into(),
        ]
    }

    /// Runs SQL through the unix socket (setup that must not be traced).
    pub fn setup_sql(&self, sql: &str) {
        run_ok(
            Command::new(require_program("mariadb")).args(self.local_args()).args(["-e", sql]),
            &format!("mariadb (setup) {sql:?}"),
        );
    }

    /// `mariadb [-D db] [extra] -e sql` over TCP. Returns the output
    /// whatever the exit status.
    pub fn cli(&self, db: Option<&str>, extra: &[&str], sql: &str) -> ClientRun {
        let mut cmd = Command::new(require_program("mariadb"));
        cmd.args(self.tcp_args());
        if let Some(db) = db {
            cmd.args(["-D", db]);
        }
        cmd.args(extra).args(["-e", sql]);
        run_client(&mut cmd, "mariadb")
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGTERM, Duration::from_secs(15));
        }
    }
}

// ---------------------------------------------------------------------------
// Redis

/// `redis-server` on `127.0.0.1:port` without persistence. Killed on drop.
pub struct Redis {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// Like [`Redis::start`] with extra configuration, e.g.
    /// `["--requirepass", "pw"]` ([`Redis::setup`] sends no password, so it
    /// fails on such a server).
    pub fn start_with(extra: &[&str]) -> Redis {
        let server = require_program("redis-server");
        let dir = temp_dir("tracer-redis-");
        let port = free_port();
        let log = dir.path().join("redis.log");
        let child = Command::new(server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--unixsocket", &dir.path().join("redis.sock").display().to_string()])
            .args(["--dir", &dir.path().display().to_string()])
            .args(["--logfile", &log.display().to_string()])
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .args(extra)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning redis-server: {e}"));
        let mut redis = Redis { child: Some(child), dir, port };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = redis.child.as_mut().unwrap().try_wait() {
                panic!("redis-server exited with {status} during startup\n{}", redis.log());
            }
            let ok = Command::new(require_program("redis-cli"))
                .args(["-s", &redis.socket().display().to_string(), "PING"])
                .stdin(Stdio::null())
                .output()
                // Without the password the reply is NOAUTH: still up.
                .map(|o| o.status.success() && (o.stdout.starts_with(b"PONG") || o.stdout.starts_with(b"NOAUTH")))
                .unwrap_or(false);
            if ok && wait_for_port(port, Duration::from_secs(1)) {
                break;
            }
            if Instant::now() >= deadline {
                panic!("redis-server did not answer PING within {STARTUP_TIMEOUT:?}\n{}", redis.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("redis.log"))
    }

    /// `redis-cli -h 127.0.0.1 -p port <args>` (one command per call).
    /// Returns the output whatever the exit status.
    pub fn cli(&self, args: &[&str]) -> ClientRun {
        run_client(
            Command::new(require_program("redis-cli"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(args),
            "redis-cli",
        )
    }

    /// Runs a command through the unix socket (setup, not traced).
    pub fn setup(&self, args: &[&str]) {
        run_ok(
            Command::new(require_program("redis-cli")).args(["-s", &self.socket().display().to_string()]).args(args),
            &format!("redis-cli (setup) {args:?}"),
        );
    }

    /// `redis-benchmark -h 127.0.0.1 -p port <args>`; panics unless it exits 0.
    pub fn benchmark(&self, args: &[&str]) -> ClientRun {
        let run = run_client(
            Command::new(require_program("redis-benchmark"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(args),
            "redis-benchmark",
        );
        run.assert_success(&format!("redis-benchmark {args:?}"));
        run
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGTERM, Duration::from_secs(10));
        }
    }
}

// ---------------------------------------------------------------------------
// Python clients

/// A python interpreter that can import every module in `modules`.
///
/// The interpreter is the real binary behind `python3` (not a wrapper
/// script such as a pyenv shim), started through a path whose base name is
/// `python3`, so the client process' name is `python3`.
pub fn python_with(modules: &[&str]) -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = find_program("python3") {
        candidates.push(p);
    }
    candidates.push(PathBuf::from("/usr/bin/python3"));
    candidates.push(PathBuf::from("/usr/local/bin/python3"));
    let check = format!(
        "import sys\n{}\nprint(sys.executable)",
        modules.iter().map(|m| format!("import {m}")).collect::<Vec<_>>().join("\n")
    );
    for c in &candidates {
        let Ok(out) = Command::new(c).args(["-c", &check]).stdin(Stdio::null()).output() else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        let exe = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        // Prefer `<dir>/python3` next to the real executable.
        let named = exe.with_file_name("python3");
        if named.is_file() {
            return named;
        }
        if exe.is_file() {
            return exe;
        }
    }
    panic!(
        "no python3 interpreter with the modules {modules:?} was found (tried {candidates:?}); \
         install them with `python3 -m pip install psycopg[binary] pymysql` (cargo xtask test does)"
    );
}

/// Runs `python -c script args...`; panics (with its output) unless it exits 0.
pub fn run_python(python: &Path, script: &str, args: &[String]) -> ClientRun {
    let run = wait_client(spawn_python(python, script, args), "python client");
    assert!(
        run.output.status.success(),
        "python client failed\n--- script ---\n{script}\n{}",
        output_text(&run.output)
    );
    run
}

/// Starts `python -c script args...` without waiting (stdout piped).
pub fn spawn_python(python: &Path, script: &str, args: &[String]) -> Child {
    Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", python.display()))
}

/// Waits for a child started by [`spawn_python`]; panics unless it exits 0.
pub fn wait_python(child: Child, what: &str) -> ClientRun {
    let run = wait_client(child, what);
    run.assert_success(what);
    run
}

// ---------------------------------------------------------------------------
// The agent around a database scenario

/// Where a scenario's agent records its raw events: kept after a failure so
/// it can be replayed with `tracer-agent --print --replay FILE`.
pub fn record_path(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tracer-db-{test}.rec"))
}

/// An agent restricted to one server port, recording its raw events, and
/// the receiver it exports to.
pub struct DbAgent {
    agent: Option<Agent>,
    exit: Option<AgentExit>,
    pub receiver: Receiver,
    record: PathBuf,
}

impl DbAgent {
    /// Starts an agent with `--port port --record <record_path(test)>`,
    /// configured further by `configure`.
    pub fn start(test: &str, port: u16, configure: impl FnOnce(AgentBuilder) -> AgentBuilder) -> DbAgent {
        let receiver = Receiver::start();
        let record = record_path(test);
        let _ = fs::remove_file(&record);
        let builder = AgentBuilder::new(&receiver).port(port).arg("--record").arg(record.display().to_string());
        let agent = configure(builder).start();
        DbAgent { agent: Some(agent), exit: None, receiver, record }
    }

    /// Waits (bounded) until `expected` spans arrived, lets a little more
    /// time pass so extra spans would show up too, stops the agent and
    /// returns every span received. Asserts unique ids and no receiver errors.
    pub fn finish(&mut self, expected: usize) -> Vec<ReceivedSpan> {
        self.receiver.wait_for_count(expected, SPAN_WAIT, |_| true);
        std::thread::sleep(Duration::from_millis(500));
        let agent = self.agent.take().expect("agent already stopped");
        self.exit = Some(agent.stop());
        self.receiver.assert_no_errors();
        let spans = self.receiver.spans();
        assert_unique_span_ids(&spans);
        spans
    }

    /// The agent's shutdown statistics line.
    pub fn stats(&self) -> &str {
        self.exit.as_ref().and_then(|e| e.stats_line()).unwrap_or("<agent not stopped>")
    }

    /// Raw event record of this scenario.
    pub fn record(&self) -> &Path {
        &self.record
    }

    /// Context for failure messages: the spans, the stats line and the record.
    pub fn context(&self, spans: &[ReceivedSpan]) -> String {
        format!(
            "{}agent: {}\nraw events: {} (replay: tracer-agent --print --replay FILE)",
            dump(spans),
            self.stats(),
            self.record.display()
        )
    }
}

impl Drop for DbAgent {
    fn drop(&mut self) {
        // The record is kept when the scenario failed.
        if !std::thread::panicking() {
            let _ = fs::remove_file(&self.record);
        }
    }
}

// ---------------------------------------------------------------------------
// Span checks

/// Expected contents of one database client span.
#[derive(Clone, Debug, Default)]
pub struct DbSpan<'a> {
    pub name: &'a str,
    pub system: &'a str,
    /// `db.operation.name`; None: must be absent.
    pub operation: Option<&'a str>,
    /// `db.collection.name`; None: must be absent.
    pub collection: Option<&'a str>,
    /// `db.namespace`; None: must be absent.
    pub namespace: Option<&'a str>,
    pub query: &'a str,
    /// `db.response.returned_rows`: Some(Some(n)) must be n, Some(None) must
    /// be absent, None: not checked.
    pub rows: Option<Option<i64>>,
    /// Error code (`db.response.status_code` and `error.type`, status ERROR);
    /// None: no error attributes and status UNSET.
    pub error: Option<&'a str>,
}

/// Database spans whose `db.query.text` is `query`.
pub fn with_query<'s>(spans: &'s [ReceivedSpan], query: &str) -> Vec<&'s ReceivedSpan> {
    spans.iter().filter(|s| s.attr_str("db.query.text").as_deref() == Some(query)).collect()
}

/// Checks one span against `want`: kind CLIENT, name, system, operation,
/// collection, namespace, query text, rows, error status, and the server
/// address and port attributes.
#[track_caller]
pub fn assert_db_span(span: &ReceivedSpan, want: &DbSpan, server_port: u16) {
    let ctx = |what: &str| format!("{what}\nexpected {want:?}\ngot {span}");
    assert_eq!(span.kind(), SpanKind::Client, "{}", ctx("span kind"));
    assert_eq!(span.name(), want.name, "{}", ctx("span name"));
    let opt = |key: &str, value: Option<&str>| {
        assert_eq!(span.attr_str(key).as_deref(), value, "{}", ctx(&format!("attribute {key}")));
    };
    opt("db.system.name", Some(want.system));
    opt("db.operation.name", want.operation);
    opt("db.collection.name", want.collection);
    opt("db.namespace", want.namespace);
    opt("db.query.text", Some(want.query));
    if let Some(rows) = want.rows {
        assert_eq!(span.attr_int("db.response.returned_rows"), rows, "{}", ctx("attribute db.response.returned_rows"));
    }
    match want.error {
        Some(code) => {
            assert_eq!(span.status_code(), StatusCode::Error, "{}", ctx("span status"));
            opt("db.response.status_code", Some(code));
            opt("error.type", Some(code));
        }
        None => {
            assert_eq!(span.status_code(), StatusCode::Unset, "{}", ctx("span status"));
            opt("db.response.status_code", None);
            opt("error.type", None);
        }
    }
    opt("server.address", Some("127.0.0.1"));
    opt("network.peer.address", Some("127.0.0.1"));
    assert_eq!(span.attr_int("server.port"), Some(server_port as i64), "{}", ctx("attribute server.port"));
    assert_eq!(span.attr_int("network.peer.port"), Some(server_port as i64), "{}", ctx("attribute network.peer.port"));
}

/// Checks the spans of one client, in time order, against `want`, one
/// span per entry: same count, and each span as described.
#[track_caller]
pub fn assert_db_sequence(spans: &[ReceivedSpan], want: &[DbSpan], server_port: u16, context: &str) {
    let mut sorted = spans.to_vec();
    crate::sort_by_time(&mut sorted);
    let got: Vec<String> = sorted
        .iter()
        .map(|s| s.attr_str("db.query.text").unwrap_or_else(|| format!("<no db.query.text> {}", s.name())))
        .collect();
    let expected: Vec<&str> = want.iter().map(|w| w.query).collect();
    assert_eq!(got, expected, "query texts, in time order\n{context}");
    for (span, w) in sorted.iter().zip(want) {
        assert_db_span(span, w, server_port);
    }
}

/// Asserts every span comes from a client process: CLIENT kind, with no
/// database server among the services.
#[track_caller]
pub fn assert_no_server_spans(spans: &[ReceivedSpan], context: &str) {
    for s in spans {
        let service = s.service_name().unwrap_or_default();
        assert!(
            !DB_SERVER_NAMES.contains(&service.as_str()),
            "the database server {service} produced a span: {s}\n{context}"
        );
        assert_eq!(s.kind(), SpanKind::Client, "only client spans expected: {s}\n{context}");
    }
}

/// Asserts the spans' resources name `service` with process id `pid`.
#[track_caller]
pub fn assert_client_process(spans: &[ReceivedSpan], service: &str, pid: u32, context: &str) {
    for s in spans {
        assert_eq!(s.service_name().as_deref(), Some(service), "service.name: {s}\n{context}");
        assert_eq!(s.resource_int("process.pid"), Some(pid as i64), "process.pid: {s}\n{context}");
    }
}

/// Spans of `service`, in time order.
pub fn of_service(spans: &[ReceivedSpan], service: &str) -> Vec<ReceivedSpan> {
    let mut out: Vec<ReceivedSpan> =
        spans.iter().filter(|s| s.service_name().as_deref() == Some(service)).cloned().collect();
    crate::sort_by_time(&mut out);
    out
}
