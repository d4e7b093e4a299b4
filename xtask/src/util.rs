//! Small helpers: printing progress, running commands, finding programs.

use std::env;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{bail, Context, Result};

/// Prints a progress line (`==> message`).
pub fn step(msg: impl AsRef<str>) {
    eprintln!("==> {}", msg.as_ref());
}

/// Prints an indented informational line below a progress line.
pub fn note(msg: impl AsRef<str>) {
    eprintln!("    {}", msg.as_ref());
}

/// Prints a warning that does not stop the run.
pub fn warn(msg: impl AsRef<str>) {
    eprintln!("warning: {}", msg.as_ref());
}

/// A command that prints itself (`$ ...`) before it runs.
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(String, OsString)>,
    removed: Vec<String>,
    dir: Option<PathBuf>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            envs: Vec::new(),
            removed: Vec::new(),
            dir: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable for the child; shown in the printed command.
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.to_string(), value.as_ref().to_os_string()));
        self
    }

    /// Removes an inherited environment variable (not shown).
    pub fn env_remove(mut self, key: &str) -> Self {
        self.removed.push(key.to_string());
        self
    }

    /// Runs the command in `dir` instead of the current directory.
    pub fn dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// The command as a shell would read it.
    pub fn display(&self) -> String {
        let mut words: Vec<String> = Vec::new();
        for (k, v) in &self.envs {
            words.push(format!("{k}={}", quote(v)));
        }
        words.push(quote(&self.program));
        words.extend(self.args.iter().map(|a| quote(a)));
        let line = words.join(" ");
        let cwd = env::current_dir().ok();
        match &self.dir {
            Some(dir) if Some(dir) != cwd.as_ref() => {
                let shown = cwd
                    .as_deref()
                    .and_then(|c| dir.strip_prefix(c).ok())
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(dir);
                format!("(cd {} && {line})", quote(shown.as_os_str()))
            }
            _ => line,
        }
    }

    /// The command without its environment and directory, for error messages.
    fn short(&self) -> String {
        let mut words = vec![quote(&self.program)];
        words.extend(self.args.iter().map(|a| quote(a)));
        words.join(" ")
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        for key in &self.removed {
            cmd.env_remove(key);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Prints and runs the command with inherited stdio; returns its exit status.
    pub fn status(&self) -> Result<ExitStatus> {
        eprintln!("$ {}", self.display());
        self.command().status().with_context(|| format!("could not start `{}`", self.short()))
    }

    /// Prints and runs the command; fails unless it exits successfully.
    pub fn run(&self) -> Result<()> {
        let status = self.status()?;
        if !status.success() {
            bail!("`{}` failed ({status})", self.short());
        }
        Ok(())
    }

    /// Runs the command silently and returns its standard output.
    pub fn read(&self) -> Result<String> {
        let out = self
            .command()
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("could not start `{}`", self.short()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            bail!("`{}` failed ({}): {}", self.short(), out.status, first.trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Quotes a word for display when it contains shell-special characters.
fn quote(word: &OsStr) -> String {
    let s = word.to_string_lossy();
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// True when the process runs with effective user id 0.
pub fn is_root() -> bool {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            // Uid: real effective saved filesystem
            if let Some(euid) = line.split_whitespace().nth(2) {
                return euid == "0";
            }
        }
    }
    Cmd::new("id").arg("-u").read().map(|s| s.trim() == "0").unwrap_or(false)
}

/// True on Debian and derivatives (Ubuntu included).
pub fn is_debian() -> bool {
    Path::new("/etc/debian_version").exists()
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Finds a program in PATH (and the sbin directories, which a non-login
/// shell may leave out).
pub fn which(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH").map(|p| env::split_paths(&p).collect()).unwrap_or_default();
    for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| is_executable(p))
}

/// `$CARGO_HOME`, or `~/.cargo`.
pub fn cargo_home() -> PathBuf {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let home = env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cargo")
}

/// Puts `$CARGO_HOME/bin` first on PATH for this process and its children,
/// so that rustc finds the bpf-linker that bootstrap installs.
pub fn ensure_cargo_bin_on_path() {
    let bin = cargo_home().join("bin");
    let current: Vec<PathBuf> = env::var_os("PATH").map(|p| env::split_paths(&p).collect()).unwrap_or_default();
    if current.first() == Some(&bin) {
        return;
    }
    let mut dirs = vec![bin.clone()];
    dirs.extend(current.into_iter().filter(|d| *d != bin));
    if let Ok(path) = env::join_paths(dirs) {
        env::set_var("PATH", path);
    }
}

/// Drops the library directories `cargo run` adds to LD_LIBRARY_PATH (this
/// workspace's target dir and the running toolchain's libraries), so tools
/// started from here load their own libraries (bpf-linker its libLLVM).
pub fn clean_library_path(target_dir: &Path) {
    let Some(current) = env::var_os("LD_LIBRARY_PATH") else {
        return;
    };
    let rustup_home = env::var_os("RUSTUP_HOME").map(PathBuf::from);
    let kept: Vec<PathBuf> = env::split_paths(&current)
        .filter(|d| !d.as_os_str().is_empty())
        .filter(|d| !d.starts_with(target_dir))
        .filter(|d| match &rustup_home {
            Some(home) => !d.starts_with(home.join("toolchains")),
            None => true,
        })
        .collect();
    if kept.is_empty() {
        env::remove_var("LD_LIBRARY_PATH");
    } else if let Ok(joined) = env::join_paths(kept) {
        env::set_var("LD_LIBRARY_PATH", joined);
    }
}

/// Installs Debian packages with apt-get. `apt-get update` runs at most once
/// per process (tracked by `updated`). Returns the packages that could not
/// be installed; it never fails the caller because a package is missing.
pub fn apt_install(packages: &[&str], updated: &mut bool) -> Vec<String> {
    if packages.is_empty() {
        return Vec::new();
    }
    let apt = |args: &[&str]| {
        Cmd::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !*updated {
        *updated = true;
        if !apt(&["update", "-q"]) {
            warn("apt-get update failed; trying to install from the existing package lists");
        }
    }
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend_from_slice(packages);
    if apt(&install) {
        return Vec::new();
    }
    if packages.len() == 1 {
        return vec![packages[0].to_string()];
    }
    // One unavailable package makes the whole batch fail: retry one by one.
    let mut failed = Vec::new();
    for pkg in packages {
        if !apt(&["install", "-y", "-q", "--no-install-recommends", pkg]) {
            failed.push(pkg.to_string());
        }
    }
    failed
}

/// Human-readable file size.
pub fn size_of(path: &Path) -> String {
    match fs::metadata(path) {
        Ok(m) if m.len() >= 1 << 20 => format!("{:.1} MiB", m.len() as f64 / (1 << 20) as f64),
        Ok(m) => format!("{} KiB", m.len().div_ceil(1024)),
        Err(_) => "size unknown".to_string(),
    }
}

/// `path` relative to `base` when it lies below it, for shorter messages.
pub fn short_path(path: &Path, base: &Path) -> String {
    path.strip_prefix(base).map(|p| p.display().to_string()).unwrap_or_else(|_| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_env_and_quotes() {
        let cmd = Cmd::new("cargo").args(["build", "-p", "tracer-agent"]).env("RUSTFLAGS", "-C link-arg=-l:libLLVM.so");
        assert_eq!(cmd.display(), "RUSTFLAGS='-C link-arg=-l:libLLVM.so' cargo build -p tracer-agent");
        assert_eq!(quote(OsStr::new("it's")), r"'it'\''s'");
    }
}
