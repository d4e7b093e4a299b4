//! Which side of a connection a process is on, for connections the agent did
//! not see being opened: a process that listens on the connection's local
//! port is its server. Read from `/proc/<pid>/net/tcp{,6}`, which shows the
//! process's own network namespace, and cached briefly per namespace.

use std::time::{Duration, Instant};

use ahash::AHashMap as HashMap;

const TTL: Duration = Duration::from_secs(5);
const MAX_PROCESSES: usize = 4096;

/// Listening ports per network namespace (processes of one namespace share
/// one table, read once per TTL), and which namespace each process is in.
#[derive(Default)]
pub struct Listeners {
    by_netns: HashMap<u64, (Instant, Vec<u16>)>,
    netns_of: HashMap<u32, u64>,
}

/// Local ports in LISTEN state from the text of a `/proc/net/tcp` file.
pub fn parse_listening(text: &str, out: &mut Vec<u16>) {
    for line in text.lines().skip(1) {
        let mut f = line.split_whitespace();
        let (Some(_sl), Some(local), Some(_remote), Some(state)) = (f.next(), f.next(), f.next(), f.next()) else {
            continue;
        };
        if state != "0A" {
            continue;
        }
        if let Some(port) = local.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok()) {
            out.push(port);
        }
    }
}

/// The inode of a process's network namespace (`/proc/<pid>/ns/net` → `net:[N]`).
fn netns(pid: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

impl Listeners {
    /// True when `pid` (its network namespace) listens on `port`; None when unknown.
    pub fn listens(&mut self, pid: u32, port: u16) -> Option<bool> {
        let ns = match self.netns_of.get(&pid) {
            Some(ns) => *ns,
            None => {
                let ns = netns(pid)?;
                if self.netns_of.len() >= MAX_PROCESSES {
                    self.netns_of.clear();
                }
                self.netns_of.insert(pid, ns);
                ns
            }
        };
        let now = Instant::now();
        let fresh = self.by_netns.get(&ns).is_some_and(|(t, _)| now.duration_since(*t) < TTL);
        if !fresh {
            let mut ports = Vec::new();
            let mut any = false;
            for file in ["tcp", "tcp6"] {
                if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) {
                    any = true;
                    parse_listening(&text, &mut ports);
                }
            }
            if !any {
                return None;
            }
            self.by_netns.insert(ns, (now, ports));
        }
        self.by_netns.get(&ns).map(|(_, ports)| ports.contains(&port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_ports_from_proc_text() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n\
   garbage line\n";
        let mut out = Vec::new();
        parse_listening(text, &mut out);
        assert_eq!(out, vec![0x1F90]);
    }

    #[test]
    fn this_process_namespace_is_readable() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut ls = Listeners::default();
        assert_eq!(ls.listens(std::process::id(), port), Some(true));
    }
}
