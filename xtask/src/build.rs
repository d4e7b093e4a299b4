//! Building the eBPF probes and the agent that embeds them.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::bootstrap::{self, Nightly, NIGHTLY};
use crate::util::{note, short_path, size_of, step, warn, which, Cmd};

/// Where things live in the workspace.
pub struct Paths {
    pub root: PathBuf,
    pub target_dir: PathBuf,
}

impl Paths {
    pub fn new() -> Result<Self> {
        let root =
            Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask has no parent directory")?.to_path_buf();
        let target_dir = match env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => env::current_dir()?.join(dir),
            None => root.join("target"),
        };
        Ok(Paths { root, target_dir })
    }

    pub fn ebpf_dir(&self) -> PathBuf {
        self.root.join("tracer-ebpf")
    }

    /// The probe object the agent embeds (DWARF stripped, BTF kept).
    pub fn bpf_object(&self) -> PathBuf {
        self.target_dir.join("bpf").join("tracer.bpf.o")
    }

    pub fn agent_bin(&self, release: bool) -> PathBuf {
        let profile = if release { "release" } else { "debug" };
        self.target_dir.join(profile).join("tracer-agent")
    }

    pub fn show(&self, path: &Path) -> String {
        short_path(path, &self.root)
    }
}

/// Bootstrap, probes, agent. Returns the agent binary.
pub fn build_all(paths: &Paths, release: bool) -> Result<PathBuf> {
    let nightly = bootstrap::bootstrap()?;
    build_probes(paths, &nightly).context("building the eBPF probes")?;
    build_agent(paths, release).context("building the agent")
}

pub fn build_probes(paths: &Paths, nightly: &Nightly) -> Result<PathBuf> {
    step("building probes");
    let dir = paths.ebpf_dir();
    if !dir.join("Cargo.toml").exists() {
        bail!("{} not found", dir.join("Cargo.toml").display());
    }
    // The eBPF crate takes its target and rustflags from its own
    // .cargo/config.toml; inherited overrides would replace them.
    Cmd::new("cargo")
        .arg(format!("+{NIGHTLY}"))
        .args(["build", "--release"])
        .dir(&dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTUP_TOOLCHAIN")
        .run()?;

    let elf = dir.join("target").join("bpfel-unknown-none").join("release").join("tracer-ebpf");
    if !elf.is_file() {
        bail!("the probe build produced no object at {}", elf.display());
    }
    let out = paths.bpf_object();
    fs::create_dir_all(out.parent().unwrap())
        .with_context(|| format!("creating {}", out.parent().unwrap().display()))?;
    let tmp = out.with_extension("o.tmp");
    strip_or_copy(&elf, &tmp, nightly)?;
    replace_if_changed(&tmp, &out)?;
    note(format!("probes: {} ({})", paths.show(&out), size_of(&out)));
    Ok(out)
}

/// Copies the probe ELF to `dst` without DWARF, keeping `.BTF`/`.BTF.ext`.
/// Falls back to a plain copy when no working llvm-objcopy is found.
fn strip_or_copy(src: &Path, dst: &Path, nightly: &Nightly) -> Result<()> {
    let had_btf = has_btf(src)?;
    for objcopy in objcopy_candidates(nightly) {
        let _ = fs::remove_file(dst);
        let stripped = Cmd::new(&objcopy).arg("--strip-debug").arg(src).arg(dst).read();
        match stripped {
            Ok(_) if !had_btf || has_btf(dst)? => {
                note(format!("stripped DWARF with {}", objcopy.display()));
                return Ok(());
            }
            Ok(_) => warn(format!("{} dropped .BTF; not using it", objcopy.display())),
            Err(e) => warn(format!("{e:#}")),
        }
    }
    note("no usable llvm-objcopy found; embedding the object with its debug info");
    fs::copy(src, dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    Ok(())
}

fn has_btf(path: &Path) -> Result<bool> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes.windows(5).any(|w| w == b".BTF\0"))
}

/// llvm-objcopy binaries to try, best first: the nightly's own (llvm-tools
/// component), then versioned ones from newest to oldest, then plain.
fn objcopy_candidates(nightly: &Nightly) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir(nightly.sysroot.join("lib").join("rustlib")) {
        for entry in entries.flatten() {
            let p = entry.path().join("bin").join("llvm-objcopy");
            if p.is_file() {
                found.push(p);
            }
        }
    }
    let mut versioned: Vec<(u32, PathBuf)> = Vec::new();
    for major in (10..=40).rev() {
        if let Some(p) = which(&format!("llvm-objcopy-{major}")) {
            versioned.push((major, p));
        }
    }
    if let Ok(entries) = fs::read_dir("/usr/lib") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(major) = name.strip_prefix("llvm-").and_then(|m| m.parse::<u32>().ok()) else {
                continue;
            };
            let p = entry.path().join("bin").join("llvm-objcopy");
            if p.is_file() {
                versioned.push((major, p));
            }
        }
    }
    versioned.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    found.extend(versioned.into_iter().map(|(_, p)| p));
    if let Some(p) = which("llvm-objcopy") {
        found.push(p);
    }
    let mut unique = Vec::new();
    for p in found {
        let key = fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
        if !unique.iter().any(|(k, _)| *k == key) {
            unique.push((key, p));
        }
    }
    unique.into_iter().map(|(_, p)| p).collect()
}

/// Moves `tmp` over `dst` unless `dst` already has the same bytes, so that an
/// unchanged object does not make cargo rebuild the agent.
fn replace_if_changed(tmp: &Path, dst: &Path) -> Result<()> {
    let new = fs::read(tmp).with_context(|| format!("reading {}", tmp.display()))?;
    if fs::read(dst).is_ok_and(|old| old == new) {
        fs::remove_file(tmp).ok();
        return Ok(());
    }
    fs::rename(tmp, dst).with_context(|| format!("writing {}", dst.display()))
}

pub fn build_agent(paths: &Paths, release: bool) -> Result<PathBuf> {
    step("building agent");
    let mut cmd = Cmd::new("cargo").arg("build");
    if release {
        cmd = cmd.arg("--release");
    }
    cmd.args(["-p", "tracer-agent"]).env("TRACER_BPF_OBJECT", paths.bpf_object()).dir(&paths.root).run()?;
    let bin = paths.agent_bin(release);
    if !bin.is_file() {
        bail!("the agent build produced no binary at {}", bin.display());
    }
    Ok(bin)
}
