//! Language runtimes whose scheduling breaks "one thread, one request".
//!
//! In: a process id. Out: whether its executable is a Go program (goroutines
//! move between threads, so a thread does not stand for a request there).
//! Read from the executable's ELF section names (`.go.buildinfo`, present
//! in every Go binary since Go 1.13, stripped or not), once per process.

pub mod go;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Whether the ELF file at `path` is a Go program. Anything unreadable or
/// not a 64-bit little-endian ELF file is not.
pub fn is_go_binary(path: &Path) -> bool {
    read_section_names(path).is_some_and(|names| names.iter().any(|n| n == ".go.buildinfo" || n == ".note.go.buildid"))
}

/// Running processes whose executable is a Go program and that pass the
/// process filters (allow and deny lists of pids and names).
pub fn go_processes(allow_pids: &[u32], deny_pids: &[u32], allow_comms: &[String], deny_comms: &[String]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let me = std::process::id();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| (allow_pids.is_empty() || allow_pids.contains(pid)) && !deny_pids.contains(pid))
        .filter(|pid| {
            if allow_comms.is_empty() && deny_comms.is_empty() {
                return true;
            }
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let comm = comm.trim_end();
            (allow_comms.is_empty() || allow_comms.iter().any(|c| c == comm)) && !deny_comms.iter().any(|c| c == comm)
        })
        .filter(|&pid| is_go_process(pid))
        .collect()
}

/// Whether process `pid` runs a Go program (false when it cannot be told).
pub fn is_go_process(pid: u32) -> bool {
    is_go_binary(Path::new(&format!("/proc/{pid}/exe")))
}

fn read_section_names(path: &Path) -> Option<Vec<String>> {
    let mut f = File::open(path).ok()?;
    let mut h = [0u8; 64];
    f.read_exact(&mut h).ok()?;
    if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let shoff = u64_at(&h, 0x28);
    let shentsize = u16_at(&h, 0x3a);
    let shnum = u16_at(&h, 0x3c);
    let shstrndx = u16_at(&h, 0x3e);
    if shentsize < 64 || shnum == 0 || shnum > 4096 || shstrndx >= shnum {
        return None;
    }
    let mut table = vec![0u8; (shentsize * shnum) as usize];
    f.seek(SeekFrom::Start(shoff)).ok()?;
    f.read_exact(&mut table).ok()?;
    let sh = |i: u64| &table[(i * shentsize) as usize..((i + 1) * shentsize) as usize];
    let strtab = sh(shstrndx);
    let (str_off, str_size) = (u64_at(strtab, 0x18), u64_at(strtab, 0x20));
    if str_size > 1 << 20 {
        return None;
    }
    let mut strings = vec![0u8; str_size as usize];
    f.seek(SeekFrom::Start(str_off)).ok()?;
    f.read_exact(&mut strings).ok()?;
    let names = (0..shnum)
        .filter_map(|i| {
            let at = u32::from_le_bytes(sh(i)[..4].try_into().ok()?) as usize;
            let rest = strings.get(at..)?;
            let end = rest.iter().position(|b| *b == 0)?;
            Some(String::from_utf8_lossy(&rest[..end]).into_owned())
        })
        .collect();
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_not_go_and_garbage_is_not_either() {
        let me = std::env::current_exe().unwrap();
        assert!(read_section_names(&me).is_some_and(|n| n.iter().any(|s| s == ".text")));
        assert!(!is_go_binary(&me));
        let dir = std::env::temp_dir().join(format!("tracer-go-{}", std::process::id()));
        std::fs::write(&dir, b"\x7fELF\x02\x01garbage").unwrap();
        assert!(!is_go_binary(&dir));
        let _ = std::fs::remove_file(&dir);
        assert!(!is_go_binary(Path::new("/nonexistent")));
    }
}
