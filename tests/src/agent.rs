//! Spawning and stopping `tracer-agent` under test.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::receiver::{Protocol, Receiver};

/// Line the agent writes to stderr once its probes are attached.
pub const READY_MARKER: &str = "tracer-agent: ready";
/// Prefix of the line the agent writes to stderr when it shuts down.
pub const STATS_PREFIX: &str = "tracer-agent: stats";

pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the agent binary from `TRACER_AGENT_BIN`; panics with a clear
/// message if it is unset, missing, or if the tests are not run as root.
pub fn agent_bin() -> PathBuf {
    require_root();
    let bin = std::env::var_os("TRACER_AGENT_BIN").unwrap_or_else(|| {
        panic!(
            "TRACER_AGENT_BIN is not set: point it at the tracer-agent binary, e.g. \
             TRACER_AGENT_BIN=$PWD/target/release/tracer-agent cargo test -p tracer-tests -- --test-threads=1"
        )
    });
    let bin = PathBuf::from(bin);
    assert!(bin.is_file(), "TRACER_AGENT_BIN={} does not name an existing file", bin.display());
    bin
}

/// Panics unless the effective uid is 0: the agent loads eBPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "these tests must run as root (euid 0) because tracer-agent loads eBPF probes; current euid is {euid}"
    );
}

#[derive(Default)]
struct Output {
    stdout: String,
    stderr: String,
    ready: bool,
    stderr_eof: bool,
    stdout_eof: bool,
}

#[derive(Default)]
struct OutputShared {
    out: Mutex<Output>,
    changed: Condvar,
}

impl OutputShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Output> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn pump(stream: impl Read + Send + 'static, shared: Arc<OutputShared>, is_stderr: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let mut out = shared.lock();
                    if is_stderr {
                        if text.contains(READY_MARKER) {
                            out.ready = true;
                        }
                        out.stderr.push_str(&text);
                        if !text.ends_with('\n') {
                            out.stderr.push('\n');
                        }
                    } else {
                        out.stdout.push_str(&text);
                        if !text.ends_with('\n') {
                            out.stdout.push('\n');
                        }
                    }
                    drop(out);
                    shared.changed.notify_all();
                }
            }
        }
        let mut out = shared.lock();
        if is_stderr {
            out.stderr_eof = true;
        } else {
            out.stdout_eof = true;
        }
        drop(out);
        shared.changed.notify_all();
    })
}

/// Builder for an [`Agent`].
pub struct AgentBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    protocol: Protocol,
    grpc_endpoint: String,
    http_endpoint: String,
}

impl AgentBuilder {
    /// An agent exporting to `receiver` (gRPC unless [`AgentBuilder::protocol`]
    /// says otherwise), with `OTEL_BSP_SCHEDULE_DELAY=200`.
    pub fn new(receiver: &Receiver) -> AgentBuilder {
        AgentBuilder {
            args: Vec::new(),
            env: Vec::new(),
            protocol: Protocol::Grpc,
            grpc_endpoint: receiver.endpoint(Protocol::Grpc),
            http_endpoint: receiver.endpoint(Protocol::HttpProtobuf),
        }
    }

    /// Selects the exporter protocol; the endpoint follows to the matching
    /// listener of the receiver.
    pub fn protocol(mut self, protocol: Protocol) -> AgentBuilder {
        self.protocol = protocol;
        self
    }

    fn endpoint(&self) -> &str {
        match self.protocol {
            Protocol::Grpc => &self.grpc_endpoint,
            Protocol::HttpProtobuf => &self.http_endpoint,
        }
    }

    /// `--port N`: trace only connections with N as local or remote port.
    pub fn port(self, port: u16) -> AgentBuilder {
        self.arg("--port").arg(port.to_string())
    }

    pub fn arg(mut self, arg: impl Into<String>) -> AgentBuilder {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> AgentBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> AgentBuilder {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The agent's command line and environment.
    fn command(&self) -> Command {
        let mut cmd = Command::new(agent_bin());
        cmd.args(&self.args)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", self.protocol.env_value())
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            // Keep signal-specific settings from the caller's environment
            // from redirecting the export elsewhere.
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_RESOURCE_ATTRIBUTES")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs an agent that ends by itself (e.g. `--replay FILE`) to its end.
    pub fn run_to_end(self) -> std::process::Output {
        self.command().output().unwrap_or_else(|e| panic!("failed to run {}: {e}", agent_bin().display()))
    }

    /// Spawns the agent and waits for its ready line.
    pub fn start(self) -> Agent {
        let mut child =
            self.command().spawn().unwrap_or_else(|e| panic!("failed to spawn {}: {e}", agent_bin().display()));
        let shared = Arc::new(OutputShared::default());
        let readers = vec![
            pump(child.stdout.take().unwrap(), shared.clone(), false),
            pump(child.stderr.take().unwrap(), shared.clone(), true),
        ];
        let mut agent =
            Agent { child, shared, readers, args: self.args, stopped: false, reported: std::cell::Cell::new(false) };
        agent.wait_ready();
        agent
    }
}

/// What the agent printed and how it exited.
#[derive(Debug, Clone)]
pub struct AgentExit {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl AgentExit {
    /// The `tracer-agent: stats` line written at shutdown.
    pub fn stats_line(&self) -> Option<&str> {
        self.stderr.lines().find(|l| l.trim_start().starts_with(STATS_PREFIX) || l.contains(STATS_PREFIX))
    }
}

/// A running `tracer-agent`. Killed on drop if not stopped.
pub struct Agent {
    child: Child,
    shared: Arc<OutputShared>,
    readers: Vec<JoinHandle<()>>,
    args: Vec<String>,
    stopped: bool,
    /// Set once a panic message already carried the agent's output.
    reported: std::cell::Cell<bool>,
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.shared.lock().stderr.clone()
    }

    pub fn stdout(&self) -> String {
        self.shared.lock().stdout.clone()
    }

    /// Agent output formatted for a failure message.
    pub fn diagnostics(&self) -> String {
        let out = self.shared.lock();
        format!(
            "tracer-agent {:?} (pid {})\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.args,
            self.child.id(),
            tail(&out.stderr, 200),
            tail(&out.stdout, 100)
        )
    }

    /// Panics with `msg` followed by the agent's output.
    fn fail(&self, msg: String) -> ! {
        self.reported.set(true);
        panic!("{msg}\n{}", self.diagnostics());
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            {
                let out = self.shared.lock();
                if out.ready {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.stopped = true;
                self.wait_for_eof(Duration::from_secs(2));
                self.fail(format!("tracer-agent exited with {status} before writing {READY_MARKER:?}"));
            }
            if Instant::now() >= deadline {
                self.fail(format!("tracer-agent did not write {READY_MARKER:?} within {READY_TIMEOUT:?}"));
            }
            let out = self.shared.lock();
            if !out.ready {
                let _ = self.shared.changed.wait_timeout(out, Duration::from_millis(100));
            }
        }
    }

    /// Resident set size of the agent in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_else(|e| panic!("reading /proc/{}/status: {e}", self.child.id()));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{}/status", self.child.id()))
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Panics (with the agent's output) if the agent has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.stopped = true;
            self.wait_for_eof(Duration::from_secs(2));
            self.fail(format!("tracer-agent exited unexpectedly with {status}"));
        }
    }

    fn wait_for_eof(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut out = self.shared.lock();
        while !(out.stderr_eof && out.stdout_eof) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            out = self.shared.changed.wait_timeout(out, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Sends SIGTERM, waits up to 20 s, and asserts a clean exit (status 0
    /// and a stats line on stderr).
    pub fn stop(mut self) -> AgentExit {
        let pid = self.child.id() as libc::pid_t;
        if let Ok(Some(status)) = self.child.try_wait() {
            self.stopped = true;
            self.wait_for_eof(Duration::from_secs(2));
            self.fail(format!("tracer-agent had already exited with {status} before SIGTERM"));
        }
        // SAFETY: plain signal delivery to our own child process.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed: {}", std::io::Error::last_os_error());
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => panic!("waiting for tracer-agent: {e}"),
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.stopped = true;
                self.wait_for_eof(Duration::from_secs(2));
                self.fail(format!("tracer-agent did not exit within {STOP_TIMEOUT:?} after SIGTERM"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.stopped = true;
        self.wait_for_eof(Duration::from_secs(5));
        for r in self.readers.drain(..) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
        let exit = {
            let out = self.shared.lock();
            AgentExit { status, stdout: out.stdout.clone(), stderr: out.stderr.clone() }
        };
        if !status.success() {
            self.fail(format!("tracer-agent exited with {status} after SIGTERM (expected 0)"));
        }
        if exit.stats_line().is_none() {
            self.fail(format!("tracer-agent exited without a {STATS_PREFIX:?} line on stderr"));
        }
        exit
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() && !self.reported.get() {
            self.wait_for_eof(Duration::from_secs(1));
            eprintln!("{}", self.diagnostics());
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    if all.len() <= lines {
        return text.to_string();
    }
    format!("[... {} earlier lines ...]\n{}", all.len() - lines, all[all.len() - lines..].join("\n"))
}
