//! Locates the kernel object built by `cargo xtask build` so that it can be
//! embedded. Without it the agent still builds (unit tests need no probes)
//! and explains at start-up how to build them.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=TRACER_BPF_OBJECT");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let default = manifest.join("../target/bpf/tracer.bpf.o");
    let path = std::env::var("TRACER_BPF_OBJECT").map(PathBuf::from).unwrap_or(default);
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("tracer.bpf.o");
    println!("cargo:rerun-if-changed={}", path.display());
    match std::fs::read(&path) {
        Ok(bytes) => std::fs::write(&out, bytes).expect("write embedded object"),
        Err(_) => std::fs::write(&out, b"").expect("write empty object"),
    }
}
