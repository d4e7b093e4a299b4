//! Two "hosts" on one machine: two network namespaces joined by a veth
//! pair, each with an address of its own, so that a connection between
//! them is not a same-host connection to the agent that sees one end.

use std::process::{Command, Stdio};

/// Network namespaces `a` and `b`, joined by a veth pair: `a` is
/// [`TwoHosts::A_ADDR`], `b` [`TwoHosts::B_ADDR`]. Removed on drop.
pub struct TwoHosts {
    pub a: String,
    pub b: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().expect("running ip (install iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl TwoHosts {
    pub const A_ADDR: &'static str = "10.201.0.1";
    pub const B_ADDR: &'static str = "10.201.0.2";

    pub fn new() -> TwoHosts {
        let id = std::process::id() % 100_000;
        let hosts = TwoHosts { a: format!("trc-a-{id}"), b: format!("trc-b-{id}") };
        // Left over by a run that was killed.
        for ns in [&hosts.a, &hosts.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
        let (va, vb) = (format!("tva{id}"), format!("tvb{id}"));
        ip(&["netns", "add", &hosts.a]);
        ip(&["netns", "add", &hosts.b]);
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &hosts.a]);
        ip(&["link", "set", &vb, "netns", &hosts.b]);
        for (ns, dev, addr) in [(&hosts.a, &va, Self::A_ADDR), (&hosts.b, &vb, Self::B_ADDR)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    /// `program args…` to run inside namespace `ns`.
    pub fn command(ns: &str, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }
}

impl Default for TwoHosts {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}
