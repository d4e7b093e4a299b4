//! Go executables: which Go built them, and where in the file the
//! functions the Go probes attach to start (and, for `runtime.newproc1`,
//! return: Go code gets no return probes, since goroutine stacks move, so
//! its RET instructions are found by decoding the function).
//!
//! In: an executable's path. Out: its Go version and the file offsets of
//! the probe points (`tracer_common::go_probe`), from the ELF symbol table
//! or, in a binary without one (`-ldflags=-s`), the runtime's function
//! table. The gRPC-Go probes also read through `transport.Stream`: its
//! field offsets, and the parameter types that say which register holds
//! what, come from the binary's DWARF, or without DWARF (`-ldflags=-w`)
//! from a table per gRPC-Go version ([`layouts`]). A binary where neither
//! says gets no gRPC-Go probes: its spans still come from the socket path,
//! without the links the probes give.

pub mod dwarf;
pub mod gin;
pub mod layouts;

use std::path::Path;

use object::{Object, ObjectSection, ObjectSymbol};
use tracer_common::go_probe;

/// Go releases whose internal ABI (arguments and the current goroutine in
/// registers) the probes read: 1.17 introduced it on amd64.
pub const MIN_VERSION: (u32, u32) = (1, 17);

/// Where to attach one probe: the `go_probe` kind, the file offset, and
/// the attach cookie (`go_probe::cookie`: the kind and the field offsets
/// the probe reads through).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    pub kind: u32,
    pub offset: u64,
    pub cookie: u64,
}

/// Byte offsets of the fields of gRPC-Go's `transport.Stream` the probes
/// read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcLayout {
    pub stream_id: u16,
    pub stream_ct: u16,
}

/// Where a binary's [`GrpcLayout`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutFrom {
    Dwarf,
    Table,
}

/// What the agent knows of a Go executable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GoBinary {
    /// As the build info says it, e.g. `go1.19.8`.
    pub version: Option<String>,
    /// The gRPC-Go version linked in, from the build info's module list or
    /// the version the library puts in its user agent (`grpc-go/1.33.3`).
    pub grpc: Option<String>,
    /// What the DWARF said (`None` without DWARF) and what the table says
    /// (`None` when it has no entry), each on its own: for checking the
    /// table against binaries that have both ([`GoBinary::layout`] is the
    /// one used).
    pub dwarf_layout: Option<Result<GrpcLayout, &'static str>>,
    pub table_layout: Option<GrpcLayout>,
    /// The Gin version linked in (from the module list; `None` outside
    /// module mode), and the route tree's layout from the DWARF and from
    /// the table, as for gRPC-Go ([`GoBinary::gin_layout`] is the one used).
    pub gin: Option<String>,
    pub gin_dwarf: Option<Result<gin::GinLayout, &'static str>>,
    pub gin_table: Option<gin::GinLayout>,
    pub points: Vec<ProbePoint>,
    /// Why probes are missing, if some are.
    pub missing: Vec<&'static str>,
}

const GRPC_STREAM: &str = "google.golang.org/grpc/internal/transport.Stream";
const GRPC_HANDLE_STREAM: &str = "google.golang.org/grpc.(*Server).handleStream";
const GRPC_NEW_STREAM: &str = "google.golang.org/grpc/internal/transport.(*http2Client).NewStream";

/// The probed functions: the probe kind at their entry, and at each of
/// their RET instructions.
const PROBED: &[(&str, Option<u32>, Option<u32>)] = &[
    ("net/http.(*persistConn).roundTrip", Some(go_probe::ROUND_TRIP), None),
    ("net/http.persistConnWriter.Write", Some(go_probe::CONN_WRITE), None),
    ("runtime.newproc1", Some(go_probe::NEWPROC), Some(go_probe::NEWPROC_RET)),
    (GRPC_HANDLE_STREAM, Some(go_probe::HANDLE_STREAM), None),
    (GRPC_NEW_STREAM, None, Some(go_probe::NEWSTREAM_RET)),
    (gin::SERVE_HTTP, Some(go_probe::GIN_SERVE), None),
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
    let (bytes, _) = buildinfo_strings(section)?;
    let v = std::str::from_utf8(bytes).ok()?;
    v.starts_with("go").then(|| v.to_string())
}

/// The two length-prefixed strings of a Go 1.18+ `.go.buildinfo` section
/// (inline after the 32-byte header): the Go version, and the module info
/// when it is there.
fn buildinfo_strings(section: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if section.len() < 33 || !section.starts_with(MAGIC) {
        return None;
    }
    if section[15] & 2 == 0 {
        // Before Go 1.18: pointers to the strings, not the strings.
        return None;
    }
    let string_at = |at: usize| -> Option<(&[u8], usize)> {
        let (len, n) = uvarint(section.get(at..)?)?;
        let start = at + n;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        Some((section.get(start..end)?, end))
    };
    let (version, end) = string_at(32)?;
    Some((version, string_at(end).map(|(info, _)| info)))
}

/// The version of module `module` in a `.go.buildinfo` section's module
/// list (Go 1.18+ inline layout; a `=>` replacement's version wins),
/// without its `v`. `None` for programs built outside module mode, which
/// list no modules.
pub fn buildinfo_module(section: &[u8], module: &str) -> Option<String> {
    let info = String::from_utf8_lossy(buildinfo_strings(section)?.1?);
    let mut found = None;
    let mut lines = info.lines().peekable();
    while let Some(line) = lines.next() {
        let mut f = line.split('\t');
        if f.next() != Some("dep") || f.next() != Some(module) {
            continue;
        }
        found = f.next().map(str::to_string);
        if let Some(rep) = lines.peek().and_then(|l| l.strip_prefix("=>\t")) {
            found = rep.split('\t').nth(1).map(str::to_string).filter(|v| !v.is_empty());
        }
    }
    found.map(|v| v.trim_start_matches('v').to_string())
}

/// The gRPC-Go version in a binary's read-only data, from the user agent
/// the library builds (`grpc-go/` and the version). Go lays string
/// constants end to end, so the version ends at the first byte that is not
/// a digit or a dot; a misread gives a version no table has.
pub fn grpc_user_agent_version(rodata: &[u8]) -> Option<String> {
    const PREFIX: &[u8] = b"grpc-go/";
    let at = rodata.windows(PREFIX.len()).position(|w| w == PREFIX)? + PREFIX.len();
    let v: Vec<u8> = rodata[at..].iter().take(32).take_while(|b| b.is_ascii_digit() || **b == b'.').copied().collect();
    let v = String::from_utf8(v).ok()?;
    let v = v.trim_end_matches('.');
    (v.split('.').count() == 3 && v.split('.').all(|p| !p.is_empty())).then(|| v.to_string())
}

/// The layout the DWARF gives, when the binary's gRPC-Go is what the
/// probes read: `transport.Stream` with a `uint32` id and a client
/// transport pointer, `handleStream(t ServerTransport, stream *Stream, ...)`
/// (so the stream is the fourth integer register), and `NewStream`
/// returning the `*Stream` first.
pub fn grpc_layout_from_dwarf(f: &dwarf::Facts) -> Result<GrpcLayout, &'static str> {
    const DIFFERENT: &str =
        "this gRPC-Go's transport.Stream, handleStream or NewStream differ from what the probes read";
    let field = |name: &str| f.fields.get(&(GRPC_STREAM.to_string(), name.to_string()));
    let (Some(id), Some(ct)) = (field("id"), field("ct")) else { return Err(DIFFERENT) };
    if id.type_name != "uint32" || ct.type_name != "*google.golang.org/grpc/internal/transport.http2Client" {
        return Err(DIFFERENT);
    }
    let stream_ptr = format!("*{GRPC_STREAM}");
    let types = |func: &str, output: bool| -> Vec<&str> {
        f.params
            .get(func)
            .map_or(Vec::new(), |ps| ps.iter().filter(|p| p.output == output).map(|p| p.type_name.as_str()).collect())
    };
    let handle = types(GRPC_HANDLE_STREAM, false);
    if handle.get(..3)
        != Some(
            &[
                "*google.golang.org/grpc.Server",
                "google.golang.org/grpc/internal/transport.ServerTransport",
                &stream_ptr,
            ][..],
        )
    {
        return Err(DIFFERENT);
    }
    if types(GRPC_NEW_STREAM, true).first() != Some(&stream_ptr.as_str()) {
        return Err(DIFFERENT);
    }
    match (u16::try_from(id.offset), u16::try_from(ct.offset)) {
        (Ok(stream_id), Ok(stream_ct)) if stream_id < 4096 && stream_ct < 4096 => {
            Ok(GrpcLayout { stream_id, stream_ct })
        }
        _ => Err(DIFFERENT),
    }
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
            bin.points.push(ProbePoint { kind, offset, cookie: u64::from(kind) });
        }
        if let Some(kind) = at_return {
            let code = data.get(offset as usize..offset.saturating_add(size) as usize).unwrap_or(&[]);
            for ret in returns_x86_64(code, entry) {
                if let Some(offset) = file_offset(file, ret) {
                    bin.points.push(ProbePoint { kind, offset, cookie: u64::from(kind) });
                }
            }
        }
    }
    found
}

/// Inspects the executable at `path`. `None` when it is not a Go program
/// (or not readable).
pub fn inspect(path: &Path) -> Option<GoBinary> {
    let data = map(path).ok()?;
    inspect_bytes(&data)
}

/// The file at `path`, mapped rather than read: only the pages of the
/// tables read are loaded (an executable is tens of MiB, most of it code
/// and data the agent never looks at).
fn map(path: &Path) -> std::io::Result<memmap2::Mmap> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the mapping is read-only. A running executable cannot be
    // written to (ETXTBSY); replacing it makes a new file and leaves this
    // mapping as it was.
    unsafe { memmap2::Mmap::map(&file) }
}

impl GoBinary {
    /// The layout the gRPC-Go probes use: the binary's own DWARF when it
    /// has one (even when it rules them out), else the table's.
    pub fn layout(&self) -> Option<(GrpcLayout, LayoutFrom)> {
        match (self.dwarf_layout, self.table_layout) {
            (Some(Ok(l)), _) => Some((l, LayoutFrom::Dwarf)),
            (Some(Err(_)), _) => None,
            (None, l) => l.map(|l| (l, LayoutFrom::Table)),
        }
    }

    /// The Gin route tree layout the route reader uses: the DWARF's, else
    /// the table's, and where it came from.
    pub fn gin_layout(&self) -> Option<(gin::GinLayout, LayoutFrom)> {
        match (self.gin_dwarf, self.gin_table) {
            (Some(Ok(l)), _) => Some((l, LayoutFrom::Dwarf)),
            (Some(Err(_)), _) => None,
            (None, l) => l.map(|l| (l, LayoutFrom::Table)),
        }
    }

    /// One line for the agent's log: version, probe points, where the
    /// gRPC-Go offsets came from, and what is missing.
    pub fn summary(&self) -> String {
        let mut s = format!("{}, {} probe points", self.version.as_deref().unwrap_or("unknown Go"), self.points.len());
        if let Some(v) = &self.grpc {
            s += &format!(", gRPC-Go {v}");
        }
        match self.layout() {
            Some((_, LayoutFrom::Dwarf)) => s += " (field offsets from its DWARF)",
            Some((_, LayoutFrom::Table)) => s += " (field offsets from the table)",
            None => {}
        }
        match self.gin_layout() {
            Some((_, LayoutFrom::Dwarf)) => s += ", Gin routes (layout from its DWARF)",
            Some((_, LayoutFrom::Table)) => s += ", Gin routes (layout from the table)",
            None => {}
        }
        for m in &self.missing {
            s += &format!("; left out: {m}");
        }
        s
    }
}

/// What [`inspect`] finds in the executable at `path`, one fact per line
/// (`tracer-agent go-info`): `version`, `grpc`, `point <kind> <offset>`,
/// `dwarf`/`table`/`layout` with the field offsets, `missing`.
pub fn describe(path: &Path) -> Result<String, String> {
    use std::fmt::Write;
    let data = map(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let bin = inspect_bytes(&data).ok_or_else(|| format!("{} is not a Go executable", path.display()))?;
    let mut out = String::new();
    let offsets = |l: &GrpcLayout| format!("transport.Stream.id=+{} transport.Stream.ct=+{}", l.stream_id, l.stream_ct);
    let _ = writeln!(out, "version {}", bin.version.as_deref().unwrap_or("unknown"));
    let _ = writeln!(out, "grpc {}", bin.grpc.as_deref().unwrap_or("none"));
    for p in &bin.points {
        let name = PROBED
            .iter()
            .find(|(_, entry, ret)| *entry == Some(p.kind) || *ret == Some(p.kind))
            .map_or("?", |(n, _, _)| n);
        let at = if PROBED.iter().any(|(_, _, ret)| *ret == Some(p.kind)) { "return" } else { "entry" };
        let _ = writeln!(out, "point {name} {at} {:#x}", p.offset);
    }
    match &bin.dwarf_layout {
        Some(Ok(l)) => drop(writeln!(out, "dwarf {}", offsets(l))),
        Some(Err(why)) => drop(writeln!(out, "dwarf unusable: {why}")),
        None => drop(writeln!(out, "dwarf none")),
    }
    match &bin.table_layout {
        Some(l) => drop(writeln!(out, "table {}", offsets(l))),
        None => drop(writeln!(out, "table none")),
    }
    match bin.layout() {
        Some((l, from)) => {
            let from = if from == LayoutFrom::Dwarf { "dwarf" } else { "table" };
            let _ = writeln!(out, "layout {} from={from}", offsets(&l));
        }
        None => drop(writeln!(out, "layout none")),
    }
    let _ = writeln!(
        out,
        "gin {}",
        bin.gin.as_deref().unwrap_or(if bin.gin_dwarf.is_some() || bin.gin_table.is_some() {
            "unknown"
        } else {
            "none"
        })
    );
    match &bin.gin_dwarf {
        Some(Ok(l)) => drop(writeln!(out, "gin-dwarf {}", l.describe())),
        Some(Err(why)) => drop(writeln!(out, "gin-dwarf unusable: {why}")),
        None => drop(writeln!(out, "gin-dwarf none")),
    }
    match &bin.gin_table {
        Some(l) => drop(writeln!(out, "gin-table {}", l.describe())),
        None => drop(writeln!(out, "gin-table none")),
    }
    match bin.gin_layout() {
        Some((l, from)) => {
            let from = if from == LayoutFrom::Dwarf { "dwarf" } else { "table" };
            let _ = writeln!(out, "gin-layout {} from={from}", l.describe());
        }
        None => drop(writeln!(out, "gin-layout none")),
    }
    for m in &bin.missing {
        let _ = writeln!(out, "missing {m}");
    }
    Ok(out)
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
    let is_grpc = |p: &ProbePoint| matches!(p.kind, go_probe::HANDLE_STREAM | go_probe::NEWSTREAM_RET);
    if bin.points.iter().any(is_grpc) {
        bin.grpc =
            buildinfo.data().ok().and_then(|b| buildinfo_module(b, "google.golang.org/grpc")).or_else(|| {
                file.section_by_name(".rodata").and_then(|s| s.data().ok()).and_then(grpc_user_agent_version)
            });
        let go = bin.version.as_deref().and_then(parse_version).unwrap_or_default();
        bin.table_layout = bin.grpc.as_deref().and_then(|v| layouts::lookup(v, go));
        bin.dwarf_layout = dwarf::read(&file, &[GRPC_STREAM], &[GRPC_HANDLE_STREAM, GRPC_NEW_STREAM])
            .map(|facts| grpc_layout_from_dwarf(&facts));
        match (bin.dwarf_layout, bin.table_layout) {
            (Some(Err(why)), _) => bin.missing.push(why),
            (None, None) => bin.missing.push("no DWARF, and no checked layout for this gRPC-Go and Go version"),
            _ => {}
        }
        match bin.layout() {
            Some((l, _)) => {
                for p in bin.points.iter_mut().filter(|p| is_grpc(p)) {
                    p.cookie = go_probe::cookie(p.kind, l.stream_id, l.stream_ct);
                }
            }
            None => bin.points.retain(|p| !is_grpc(p)),
        }
    }
    if bin.points.iter().any(|p| p.kind == go_probe::GIN_SERVE) {
        bin.gin = buildinfo.data().ok().and_then(|b| buildinfo_module(b, "github.com/gin-gonic/gin"));
        let go = bin.version.as_deref().and_then(parse_version).unwrap_or_default();
        bin.gin_table = layouts::gin_lookup(bin.gin.as_deref(), go);
        bin.gin_dwarf =
            dwarf::read(&file, &[gin::ENGINE, gin::METHOD_TREE, gin::NODE], &[]).map(|f| gin::layout_from_dwarf(&f));
        match (bin.gin_dwarf, bin.gin_table) {
            (Some(Err(why)), _) => bin.missing.push(why),
            (None, None) => bin.missing.push("no DWARF, and no checked Gin route tree layout for this Go version"),
            _ => {}
        }
        if bin.gin_layout().is_none() {
            bin.points.retain(|p| p.kind != go_probe::GIN_SERVE);
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

    /// A Go 1.18+ build info section holding `version` and `modinfo`.
    fn buildinfo(version: &str, modinfo: &str) -> Vec<u8> {
        let mut s = b"\xff Go buildinf:".to_vec();
        s.push(8);
        s.push(2);
        s.resize(32, 0);
        for part in [version, modinfo] {
            let mut n = part.len();
            while n >= 0x80 {
                s.push((n as u8) | 0x80);
                n >>= 7;
            }
            s.push(n as u8);
            s.extend_from_slice(part.as_bytes());
        }
        s
    }

    #[test]
    fn buildinfo_gives_module_versions_replacements_winning() {
        let info = "0w\u{af}\u{c}path\texample.com/shop\nmod\texample.com/shop\t(devel)\t\n\
                    dep\tgithub.com/gin-gonic/gin\tv1.8.1\th1:x=\n\
                    dep\tgoogle.golang.org/grpc\tv1.60.1\th1:y=\n=>\t../grpc\t\t\n\
                    dep\tgoogle.golang.org/protobuf\tv1.31.0\th1:z=\n";
        let b = buildinfo("go1.21.3", info);
        assert_eq!(buildinfo_module(&b, "github.com/gin-gonic/gin").as_deref(), Some("1.8.1"));
        // Replaced by a directory: no version known.
        assert_eq!(buildinfo_module(&b, "google.golang.org/grpc"), None);
        let b = buildinfo("go1.21.3", &info.replace("=>\t../grpc\t\t", "=>\tgoogle.golang.org/grpc\tv1.33.3\th1:w="));
        assert_eq!(buildinfo_module(&b, "google.golang.org/grpc").as_deref(), Some("1.33.3"));
        assert_eq!(buildinfo_module(&b, "google.golang.org/grpc/x"), None);
        // Built outside module mode: an empty list.
        assert_eq!(buildinfo_module(&buildinfo("go1.19.8", ""), "google.golang.org/grpc"), None);
        let long = "dep\tm\tv1.0.0\n".repeat(40);
        assert_eq!(buildinfo_module(&buildinfo("go1.19.8", &long), "m").as_deref(), Some("1.0.0"));
        for n in 0..b.len() {
            let _ = buildinfo_module(&b[..n], "google.golang.org/grpc");
        }
    }

    #[test]
    fn the_grpc_user_agent_gives_the_version_and_no_more() {
        assert_eq!(grpc_user_agent_version(b"xxgrpc-go/1.33.3grpc-trace-bin").as_deref(), Some("1.33.3"));
        assert_eq!(grpc_user_agent_version(b"grpc-go/1.60.0.").as_deref(), Some("1.60.0"));
        // A constant laid right after that starts with a digit: a version
        // no table has, never a shorter one.
        assert_eq!(grpc_user_agent_version(b"grpc-go/1.33.30123").as_deref(), Some("1.33.30123"));
        assert_eq!(grpc_user_agent_version(b"grpc-go/1.33"), None);
        assert_eq!(grpc_user_agent_version(b"grpc-go/"), None);
        assert_eq!(grpc_user_agent_version(b"grpc-go/1..3"), None);
        assert_eq!(grpc_user_agent_version(b""), None);
    }

    fn facts_1_33() -> dwarf::Facts {
        let mut f = dwarf::Facts::default();
        let field = |offset, t: &str| dwarf::Field { offset, type_name: t.to_string() };
        f.fields.insert((GRPC_STREAM.into(), "id".into()), field(0, "uint32"));
        f.fields.insert(
            (GRPC_STREAM.into(), "ct".into()),
            field(24, "*google.golang.org/grpc/internal/transport.http2Client"),
        );
        let p = |name: &str, t: &str, output| dwarf::Param { name: name.into(), type_name: t.into(), output };
        f.params.insert(
            GRPC_HANDLE_STREAM.into(),
            vec![
                p("s", "*google.golang.org/grpc.Server", false),
                p("t", "google.golang.org/grpc/internal/transport.ServerTransport", false),
                p("stream", "*google.golang.org/grpc/internal/transport.Stream", false),
                p("trInfo", "*google.golang.org/grpc.traceInfo", false),
            ],
        );
        f.params.insert(
            GRPC_NEW_STREAM.into(),
            vec![
                p("t", "*google.golang.org/grpc/internal/transport.http2Client", false),
                p("ctx", "context.Context", false),
                p("callHdr", "*google.golang.org/grpc/internal/transport.CallHdr", false),
                p("~r0", "*google.golang.org/grpc/internal/transport.Stream", true),
                p("err", "error", true),
            ],
        );
        f
    }

    #[test]
    fn dwarf_gives_the_layout_only_when_every_fact_is_as_the_probes_read_it() {
        assert_eq!(grpc_layout_from_dwarf(&facts_1_33()), Ok(GrpcLayout { stream_id: 0, stream_ct: 24 }));
        let mut moved = facts_1_33();
        moved.fields.get_mut(&(GRPC_STREAM.into(), "ct".into())).unwrap().offset = 40;
        assert_eq!(grpc_layout_from_dwarf(&moved), Ok(GrpcLayout { stream_id: 0, stream_ct: 40 }));
        // A later gRPC-Go: handleStream takes a *ServerStream.
        let mut later = facts_1_33();
        later.params.get_mut(GRPC_HANDLE_STREAM).unwrap()[2].type_name =
            "*google.golang.org/grpc/internal/transport.ServerStream".into();
        assert!(grpc_layout_from_dwarf(&later).is_err());
        let mut no_ct = facts_1_33();
        no_ct.fields.remove(&(GRPC_STREAM.into(), "ct".into()));
        assert!(grpc_layout_from_dwarf(&no_ct).is_err());
        let mut wide = facts_1_33();
        wide.fields.get_mut(&(GRPC_STREAM.into(), "id".into())).unwrap().type_name = "uint64".into();
        assert!(grpc_layout_from_dwarf(&wide).is_err());
        let mut far = facts_1_33();
        far.fields.get_mut(&(GRPC_STREAM.into(), "ct".into())).unwrap().offset = 1 << 20;
        assert!(grpc_layout_from_dwarf(&far).is_err());
        let mut no_return = facts_1_33();
        no_return.params.get_mut(GRPC_NEW_STREAM).unwrap().retain(|p| !p.output);
        assert!(grpc_layout_from_dwarf(&no_return).is_err());
        assert!(grpc_layout_from_dwarf(&dwarf::Facts::default()).is_err());
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
