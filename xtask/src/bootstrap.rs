//! Toolchain bootstrap: nightly Rust, its `rust-src`, and a bpf-linker that
//! uses the same LLVM as the nightly. Every step checks first and returns
//! quickly when there is nothing to do.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::util::{self, cargo_home, note, step, warn, Cmd};

/// Toolchain used for the eBPF crate (it needs `-Z build-std`).
pub const NIGHTLY: &str = "nightly";

/// bpf-linker release the probes are built with.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// What the rest of the build needs to know about the nightly toolchain.
pub struct Nightly {
    pub release: String,
    pub commit_hash: String,
    pub llvm_major: u32,
    pub sysroot: PathBuf,
}

/// Runs every bootstrap step.
pub fn bootstrap() -> Result<Nightly> {
    util::ensure_cargo_bin_on_path();
    if util::which("rustup").is_none() {
        bail!("rustup is not on PATH; install Rust with rustup (https://rustup.rs) and retry");
    }
    let nightly = ensure_nightly().context("setting up the nightly toolchain")?;
    ensure_rust_src().context("adding rust-src to the nightly toolchain")?;
    ensure_bpf_linker(&nightly).context("setting up bpf-linker")?;
    Ok(nightly)
}

fn rustup() -> Cmd {
    // Toolchains are always named explicitly; an inherited override must not
    // change what rustup reports or installs.
    Cmd::new("rustup").env_remove("RUSTUP_TOOLCHAIN")
}

/// True for the undated `nightly-<host>` toolchain that `+nightly` selects.
fn is_plain_nightly(name: &str) -> bool {
    name == NIGHTLY || name.strip_prefix("nightly-").is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

fn installed_toolchains() -> Result<Vec<String>> {
    let list = rustup().args(["toolchain", "list"]).read()?;
    Ok(list.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
}

fn ensure_nightly() -> Result<Nightly> {
    step("checking nightly toolchain");
    let toolchains = installed_toolchains()?;
    if !toolchains.iter().any(|t| is_plain_nightly(t)) {
        note("no nightly toolchain found; installing one");
        rustup().args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]).run()?;
    }
    let info = Cmd::new("rustc").arg(format!("+{NIGHTLY}")).arg("-vV").read()?;
    let field = |key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| anyhow!("`rustc +{NIGHTLY} -vV` prints no `{key}` line"))
    };
    let release = field("release:")?;
    let commit_hash = field("commit-hash:")?;
    let llvm = field("LLVM version:")?;
    let llvm_major: u32 = llvm
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| anyhow!("cannot read the LLVM major version from `{llvm}`"))?;
    let sysroot = Cmd::new("rustc").arg(format!("+{NIGHTLY}")).args(["--print", "sysroot"]).read()?;
    let sysroot = PathBuf::from(sysroot.trim());
    note(format!("rustc {release} ({commit_hash:.9}), LLVM {llvm}"));
    Ok(Nightly { release, commit_hash, llvm_major, sysroot })
}

fn ensure_rust_src() -> Result<()> {
    let installed = rustup().args(["component", "list", "--toolchain", NIGHTLY, "--installed"]).read()?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    step("adding rust-src to the nightly toolchain (needed to build core for BPF)");
    rustup().args(["component", "add", "rust-src", "--toolchain", NIGHTLY]).run()
}

/// Version reported by a bpf-linker binary, if it runs at all.
fn linker_version(bin: &Path) -> Option<String> {
    let out = Cmd::new(bin).arg("--version").read().ok()?;
    // "bpf-linker 0.13.0"
    out.split_whitespace().nth(1).map(str::to_string)
}

/// True when `bin` loads its libLLVM from `lib_dir` (a build against the
/// nightly's own LLVM library).
fn links_llvm_from(bin: &Path, lib_dir: &Path) -> bool {
    let Ok(ldd) = Cmd::new("ldd").arg(bin).read() else {
        return false;
    };
    let dir = lib_dir.to_string_lossy();
    ldd.lines().any(|l| l.contains("libLLVM") && l.contains(dir.as_ref()) && !l.contains("not found"))
}

/// The shared LLVM library shipped in the nightly's sysroot, by file name.
fn nightly_libllvm(lib_dir: &Path) -> Option<String> {
    let names: Vec<String> = fs::read_dir(lib_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names
        .iter()
        .find(|n| n.starts_with("libLLVM.so."))
        .or_else(|| names.iter().find(|n| n.starts_with("libLLVM-") && n.ends_with(".so")))
        .cloned()
}

fn ensure_bpf_linker(nightly: &Nightly) -> Result<()> {
    let major = nightly.llvm_major;
    step(format!("checking bpf-linker {BPF_LINKER_VERSION} (LLVM {major})"));
    let bin_dir = cargo_home().join("bin");
    let bin = bin_dir.join("bpf-linker");
    let stamp_path = bin_dir.join(".bpf-linker-llvm");
    let stamp = format!("bpf-linker {BPF_LINKER_VERSION}\nllvm {major}\nnightly {}\n", nightly.commit_hash);
    let lib_dir = nightly.sysroot.join("lib");

    let version_ok = linker_version(&bin).as_deref() == Some(BPF_LINKER_VERSION);
    let current_stamp = fs::read_to_string(&stamp_path).ok();
    if version_ok && current_stamp.as_deref() == Some(stamp.as_str()) {
        note(format!("{} is up to date", bin.display()));
        return Ok(());
    }
    if version_ok && current_stamp.is_none() && links_llvm_from(&bin, &lib_dir) {
        // Built by hand the same way as below: record it instead of rebuilding.
        fs::write(&stamp_path, &stamp).with_context(|| format!("writing {}", stamp_path.display()))?;
        note(format!("{} already uses the nightly's LLVM; recorded in {}", bin.display(), stamp_path.display()));
        return Ok(());
    }

    step(format!("building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (first time only, ~1-2 min)"));
    // An old stamp must not survive a failed build.
    let _ = fs::remove_file(&stamp_path);
    let builder = if installed_toolchains()?.iter().any(|t| t.starts_with("stable")) { "stable" } else { NIGHTLY };
    let install = Cmd::new("cargo")
        .arg(format!("+{builder}"))
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--force"])
        .arg("--root")
        .arg(cargo_home())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("RUSTUP_TOOLCHAIN");

    let install = match nightly_libllvm(&lib_dir) {
        // Link against the nightly's own libLLVM: no system LLVM needed.
        Some(lib) => {
            let lib_dir = lib_dir.display();
            install
                .args(["--no-default-features", "--features"])
                .arg(format!("llvm-{major},no-llvm-linking"))
                .env("RUSTFLAGS", format!("-L {lib_dir} -C link-arg=-l:{lib} -C link-arg=-Wl,-rpath,{lib_dir}"))
        }
        // Otherwise use the distribution's LLVM of the same major version.
        None => {
            note(format!("{} has no shared libLLVM; using the system LLVM {major} instead", nightly.sysroot.display()));
            let prefix = system_llvm(major)?;
            let path = std::env::join_paths(
                std::iter::once(prefix.join("bin"))
                    .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
            )?;
            install
                .args(["--no-default-features", "--features"])
                .arg(format!("llvm-{major}"))
                .env("LLVM_PREFIX", &prefix)
                .env("PATH", path)
                .env_remove("RUSTFLAGS")
        }
    };
    install.run().with_context(|| {
        format!("building bpf-linker {BPF_LINKER_VERSION} with LLVM {major} for nightly {}", nightly.release)
    })?;

    match linker_version(&bin) {
        Some(v) if v == BPF_LINKER_VERSION => {}
        Some(v) => bail!("{} reports version {v}, expected {BPF_LINKER_VERSION}", bin.display()),
        None => bail!("{} was installed but does not run", bin.display()),
    }
    fs::write(&stamp_path, &stamp).with_context(|| format!("writing {}", stamp_path.display()))?;
    note(format!("installed {}", bin.display()));
    Ok(())
}

/// Finds (and on Debian as root, installs) `llvm-<major>-dev`; returns its prefix.
fn system_llvm(major: u32) -> Result<PathBuf> {
    let prefix = PathBuf::from(format!("/usr/lib/llvm-{major}"));
    let has_config = |p: &Path| p.join("bin/llvm-config").exists();
    if has_config(&prefix) {
        return Ok(prefix);
    }
    let pkg = format!("llvm-{major}-dev");
    if util::is_debian() && util::is_root() {
        step(format!("installing {pkg}"));
        let mut updated = false;
        let failed = util::apt_install(&[pkg.as_str()], &mut updated);
        if !failed.is_empty() {
            warn(format!("could not install {pkg}"));
        }
        if has_config(&prefix) {
            return Ok(prefix);
        }
    }
    bail!(
        "no LLVM {major} found: the nightly ships no shared libLLVM and {} is missing \
         (install {pkg} or a nightly whose sysroot has lib/libLLVM.so.*)",
        prefix.join("bin/llvm-config").display()
    )
}

#[cfg(test)]
mod tests {
    use super::is_plain_nightly;

    #[test]
    fn recognises_the_undated_nightly() {
        assert!(is_plain_nightly("nightly-x86_64-unknown-linux-gnu"));
        assert!(is_plain_nightly("nightly"));
        assert!(!is_plain_nightly("nightly-2026-05-19-x86_64-unknown-linux-gnu"));
        assert!(!is_plain_nightly("stable-x86_64-unknown-linux-gnu"));
    }
}
