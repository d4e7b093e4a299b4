//! Go executables: which Go built them, and where in the file the
//! functions the Go probes attach to start (and, for `runtime.newproc1`,
//! return: Go code gets no return probes, since goroutine stacks move, so
//! its RET instructions are found by decoding the function).
//!
//! In: an executable's path. Out: its Go version and the file offsets of
//! the probe points (`tracer_common::go_probe`), from the ELF symbol table.
//! A binary without one (`-ldflags=-s`) gets no probes: its spans still
//! come from the socket path, without the links the probes give.

use std::path::Path;

use object::{Object, ObjectSection, ObjectSymbol};
use tracer_common::go_probe;

/// Go releases whose internal ABI (arguments and the current goroutine in
/// registers) the probes read: 1.17 introduced it on amd64.
pub const MIN_VERSION: (u32, u32) = (1, 17);

/// Where to attach one probe: the `go_probe` kind and the file offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    pub kind: u32,
    pub offset: u64,
}

/// What the agent knows of a Go executable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GoBinary {
    /// As the build info says it, e.g. `go1.19.8`.
    pub version: Option<String>,
    pub points: Vec<ProbePoint>,
    /// Why probes are missing, if some are.
    pub missing: Vec<&'static str>,
}

/// The probed functions: the probe kind at their entry, and at each of
/// their RET instructions.
const PROBED: &[(&str, Option<u32>, Option<u32>)] = &[
    ("net/http.(*persistConn).roundTrip", Some(go_probe::ROUND_TRIP), None),
    ("net/http.persistConnWriter.Write", Some(go_probe::CONN_WRITE), None),
    ("runtime.newproc1", Some(go_probe::NEWPROC), Some(go_probe::NEWPROC_RET)),
    ("google.golang.org/grpc.(*Server).handleStream", Some(go_probe::HANDLE_STREAM), None),
    ("google.golang.org/grpc/internal/transport.(*http2Client).NewStream", None, Some(go_probe::NEWSTREAM_RET)),
];

/// `(major, minor)` of a version string such as `go1.21.3` or `go1.22rc1`.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let rest = v.strip_prefix("go")?;
    let mut parts = rest.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts.next()?.chars().take_while(char::is_ascii_digit).collect();
    Some((major, minor.parse().ok()?))
}

/// The Go version recorded in a `.go.buildinfo` section (Go 1.18 and
/// later write it inline after the 32-byte header, length-prefixed).
pub fn buildinfo_version(section: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if section.len() < 33 || !section.starts_with(MAGIC) {
        return None;
    }
    let flags = section[15];
    if flags & 2 == 0 {
        // Before Go 1.18: pointers to the strings, not the strings.
        return None;
    }
    let (len, n) = uvarint(&section[32..])?;
    let start = 32 + n;
    let bytes = section.get(start..start.checked_add(usize::try_from(len).ok()?)?)?;
    let v = std::str::from_utf8(bytes).ok()?;
    v.starts_with("go").then(|| v.to_string())
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The functions of a Go 1.18+ `.gopclntab` (name, entry address, size).
/// `None` when the table is of another format or malformed.
/// `text` is the address of `.text`, for tables that leave their own text
/// start at 0 (newer linkers).
pub fn pclntab_functions(tab: &[u8], text: u64) -> Option<Vec<(&str, u64, u64)>> {
    let u32_at = |o: usize| -> Option<u32> { Some(u32::from_le_bytes(tab.get(o..o + 4)?.try_into().ok()?)) };
    let magic = u32_at(0)?;
    // 0xfffffff0: Go 1.18-1.19; 0xfffffff1: Go 1.20 and later.
    if magic != 0xffff_fff0 && magic != 0xffff_fff1 {
        return None;
    }
    if tab.get(4..6)? != [0, 0] || *tab.get(7)? != 8 {
        return None;
    }
    let word = |i: usize| -> Option<u64> { Some(u64::from_le_bytes(tab.get(8 + 8 * i..16 + 8 * i)?.try_into().ok()?)) };
    let nfunc = usize::try_from(word(0)?).ok()?;
    let text = match word(2)? {
        0 => text,
        t => t,
    };
    let funcnames = usize::try_from(word(3)?).ok()?;
    let pcln = usize::try_from(word(7)?).ok()?;
    if nfunc > tab.len() / 8 {
        return None;
    }
    let mut out = Vec::with_capacity(nfunc);
    for i in 0..nfunc {
        let at = pcln.checked_add(8 * i)?;
        let entry = u64::from(u32_at(at)?);
        let next = u64::from(u32_at(at + 8)?);
        let func = pcln.checked_add(usize::try_from(u32_at(at + 4)?).ok()?)?;
        let name_off = usize::try_from(u32_at(func + 4)?).ok()?;
        let name_at = funcnames.checked_add(name_off)?;
        let rest = tab.get(name_at..)?;
        let end = rest.iter().position(|b| *b == 0)?;
        let Ok(name) = std::str::from_utf8(&rest[..end]) else { continue };
        out.push((name, text + entry, next.saturating_sub(entry)));
    }
    Some(out)
}

/// File offset of virtual address `addr` in `file`'s sections.
fn file_offset(file: &object::File, addr: u64) -> Option<u64> {
    file.sections().find_map(|s| {
        let (off, size) = s.file_range()?;
        (s.address() <= addr && addr < s.address() + size).then(|| off + (addr - s.address()))
    })
}

/// Addresses of the RET instructions of the function at `addr` whose code
/// is `code` (x86-64).
pub fn returns_x86_64(code: &[u8], addr: u64) -> Vec<u64> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let mut d = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        let i = d.decode();
        if i.is_invalid() {
            // Not code we understand: no return probe rather than a wrong one.
            return Vec::new();
        }
        if i.mnemonic() == Mnemonic::Ret {
            out.push(i.ip());
        }
    }
    out
}

/// Adds the probe points of the probed functions among `funcs` (name,
/// entry address, size); returns how many of them were found.
fn add_points(file: &object::File, data: &[u8], funcs: &[(&str, u64, u64)], bin: &mut GoBinary) -> usize {
    let mut found = 0;
    for &(name, entry, size) in funcs {
        let Some(&(_, at_entry, at_return)) = PROBED.iter().find(|(n, _, _)| *n == name) else { continue };
        let Some(offset) = file_offset(file, entry) else { continue };
        found += 1;
        if let Some(kind) = at_entry {
            bin.points.push(ProbePoint { kind, offset });
        }
        if let Some(kind) = at_return {
            let code = data.get(offset as usize..offset.saturating_add(size) as usize).unwrap_or(&[]);
            for ret in returns_x86_64(code, entry) {
                if let Some(offset) = file_offset(file, ret) {
                    bin.points.push(ProbePoint { kind, offset });
                }
            }
        }
    }
    found
}

/// Inspects the executable at `path`. `None` when it is not a Go program
/// (or not readable).
pub fn inspect(path: &Path) -> Option<GoBinary> {
    let data = std::fs::read(path).ok()?;
    inspect_bytes(&data)
}

/// [`inspect`] over the file's bytes.
pub fn inspect_bytes(data: &[u8]) -> Option<GoBinary> {
    let file = object::File::parse(data).ok()?;
    let buildinfo = file.section_by_name(".go.buildinfo")?;
    let mut bin = GoBinary { version: buildinfo.data().ok().and_then(buildinfo_version), ..GoBinary::default() };
    match bin.version.as_deref().and_then(parse_version) {
        Some(v) if v >= MIN_VERSION => {}
        Some(_) => {
            bin.missing.push("Go older than 1.17 (arguments on the stack)");
            return Some(bin);
        }
        None => {
            bin.missing.push("no Go version in the build info");
            return Some(bin);
        }
    }
    if file.architecture() != object::Architecture::X86_64 {
        bin.missing.push("Go probes are only built for x86-64");
        return Some(bin);
    }
    // The symbol table, or in a stripped binary (`-ldflags=-s`) the
    // runtime's own function table, which still names every function.
    let symbols: Vec<(&str, u64, u64)> =
        file.symbols().filter_map(|sym| Some((sym.name().ok()?, sym.address(), sym.size()))).collect();
    let mut found = add_points(&file, data, &symbols, &mut bin);
    if found == 0 {
        let text = file.section_by_name(".text").map_or(0, |s| s.address());
        match file.section_by_name(".gopclntab").and_then(|s| s.data().ok()).and_then(|t| pclntab_functions(t, text)) {
            Some(funcs) => found = add_points(&file, data, &funcs, &mut bin),
            None => bin.missing.push("no symbol table and no readable function table"),
        }
        if found == 0 && bin.missing.is_empty() {
            bin.missing.push("none of the probed functions is in the binary");
        }
    }
    bin.points.sort_by_key(|p| (p.kind, p.offset));
    Some(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("go1.19.8"), Some((1, 19)));
        assert_eq!(parse_version("go1.22rc1"), Some((1, 22)));
        assert_eq!(parse_version("go1.21"), Some((1, 21)));
        assert_eq!(parse_version("devel +abc"), None);
        assert_eq!(parse_version("go"), None);
    }

    #[test]
    fn buildinfo_gives_the_inline_version() {
        let mut s = b"\xff Go buildinf:".to_vec();
        s.push(8);
        s.push(2);
        s.resize(32, 0);
        s.push(8);
        s.extend_from_slice(b"go1.21.3");
        s.extend_from_slice(b"\x00rest");
        assert_eq!(buildinfo_version(&s).as_deref(), Some("go1.21.3"));
        // Old layout, truncated, or garbage: no version, no panic.
        let mut old = s.clone();
        old[15] = 0;
        assert_eq!(buildinfo_version(&old), None);
        assert_eq!(buildinfo_version(&s[..34]), None);
        assert_eq!(buildinfo_version(&[0xff; 40]), None);
        let mut huge = s[..32].to_vec();
        huge.extend_from_slice(&[0xff; 12]);
        assert_eq!(buildinfo_version(&huge), None);
    }

    #[test]
    fn returns_are_found_at_instruction_boundaries() {
        // mov eax, 0xc3c3c3c3; ret; nop; ret
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3, 0x90, 0xc3];
        assert_eq!(returns_x86_64(&code, 0x1000), vec![0x1005, 0x1007]);
        assert_eq!(returns_x86_64(&[], 0x1000), Vec::<u64>::new());
    }

    #[test]
    fn a_function_table_of_garbage_is_none() {
        assert_eq!(pclntab_functions(&[], 0), None);
        assert_eq!(pclntab_functions(&[0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8], 0), None);
        let mut t = vec![0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        t.extend_from_slice(&u64::MAX.to_le_bytes());
        t.resize(128, 0xff);
        assert_eq!(pclntab_functions(&t, 0), None);
    }

    /// A two-function table in the Go 1.20+ layout.
    fn table() -> Vec<u8> {
        let mut t = vec![0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        let (names, pcln) = (72u64, 80u64);
        for w in [2u64, 0, 0x1000, names, 0, 0, 0, pcln] {
            t.extend_from_slice(&w.to_le_bytes());
        }
        t.extend_from_slice(b"a\0bb\0\0\0\0");
        for v in [0u32, 24, 0x10, 32, 0x20, 0, 0, 0, 0, 2] {
            t.extend_from_slice(&v.to_le_bytes());
        }
        t
    }

    #[test]
    fn a_function_table_gives_names_entries_and_sizes() {
        assert_eq!(pclntab_functions(&table(), 0), Some(vec![("a", 0x1000, 0x10), ("bb", 0x1010, 0x10)]));
        // A text start of 0 in the table is taken from `.text`.
        let mut t = table();
        t[24..32].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(pclntab_functions(&t, 0x40_0000).unwrap()[1], ("bb", 0x40_0010, 0x10));
    }

    #[test]
    fn a_function_table_cut_or_corrupted_never_panics() {
        let t = table();
        for n in 0..=t.len() {
            let _ = pclntab_functions(&t[..n], 0);
        }
        // Every byte set to each of a few values, one at a time.
        for i in 0..t.len() {
            for v in [0u8, 0x7f, 0x80, 0xff] {
                let mut c = t.clone();
                c[i] = v;
                if let Some(funcs) = pclntab_functions(&c, 0) {
                    assert!(funcs.len() <= c.len() / 8);
                }
            }
        }
        // Garbage of every small length.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0..512 {
            let g: Vec<u8> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = pclntab_functions(&g, 0);
            let _ = buildinfo_version(&g);
            let _ = returns_x86_64(&g, 0x1000);
            let _ = inspect_bytes(&g);
        }
    }

    #[test]
    fn garbage_is_not_a_go_binary() {
        assert_eq!(inspect_bytes(b"not an elf file"), None);
        assert_eq!(inspect_bytes(&[]), None);
        // A real ELF file that is not Go: this test binary.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(inspect_bytes(&me), None);
    }
}
