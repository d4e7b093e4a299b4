//! Minimal reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): just
//! enough to find struct member offsets, which the probes need to walk from
//! the current task to a socket without offsets baked in at build time.

use std::collections::HashMap;

use tracer_common::KernelOffsets;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("BTF data is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF struct {0} has no member {1}")]
    NoMember(String, String),
    #[error("kernel BTF member {0}.{1} is a bitfield")]
    Bitfield(String, String),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Debug)]
struct Member {
    name: u32,
    ty: u32,
    /// Bit offset.
    offset: u32,
    bitfield: bool,
}

#[derive(Clone, Debug)]
struct Type {
    name: u32,
    kind: u32,
    /// Referenced type for typedef/qualifiers.
    ty: u32,
    members: Vec<Member>,
}

/// Parsed BTF type table.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<String, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_raw = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of range"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of range"))?
            .to_vec();
        // Type id 0 is void.
        let mut types = vec![Type { name: 0, kind: 0, ty: 0, members: Vec::new() }];
        let mut p = 0usize;
        while p + 12 <= types_raw.len() {
            let name = u32_at(types_raw, p)?;
            let info = u32_at(types_raw, p + 4)?;
            let size_or_type = u32_at(types_raw, p + 8)?;
            p += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => p += 4,
                KIND_ARRAY => p += 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = p + i * 12;
                        let raw_off = u32_at(types_raw, m + 8)?;
                        let (offset, bitfield) =
                            if kind_flag { (raw_off & 0x00ff_ffff, raw_off >> 24 != 0) } else { (raw_off, false) };
                        members.push(Member {
                            name: u32_at(types_raw, m)?,
                            ty: u32_at(types_raw, m + 4)?,
                            offset,
                            bitfield,
                        });
                    }
                    p += vlen * 12;
                }
                KIND_ENUM | KIND_FUNC_PROTO => p += vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => p += vlen * 12,
                _ => {}
            }
            types.push(Type { name, kind, ty: size_or_type, members });
        }
        let mut btf = Btf { types, strings, by_name: HashMap::new() };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && !t.members.is_empty() {
                let n = btf.name(t.name).to_string();
                btf.by_name.entry(n).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    pub fn from_sys() -> anyhow::Result<Self> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").map_err(|e| {
            anyhow::anyhow!("kernel BTF not available at /sys/kernel/btf/vmlinux ({e}); a kernel built with CONFIG_DEBUG_INFO_BTF=y is required")
        })?;
        Ok(Self::parse(&data)?)
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Follow typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = t.ty,
                _ => return Some(t),
            }
        }
        None
    }

    /// Bit offset of `member` in type `t`, searching anonymous members.
    fn find(&self, t: &Type, member: &str, depth: u32) -> Option<(u32, bool)> {
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            let n = self.name(m.name);
            if n == member {
                return Some((m.offset, m.bitfield));
            }
            if n.is_empty() {
                if let Some(inner) = self.resolve(m.ty) {
                    if inner.kind == KIND_STRUCT || inner.kind == KIND_UNION {
                        if let Some((o, b)) = self.find(inner, member, depth + 1) {
                            return Some((m.offset + o, b));
                        }
                    }
                }
            }
        }
        None
    }

    /// Byte offset of `member` in `struct strukt` (anonymous unions and
    /// structs are searched through).
    pub fn offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = self.by_name.get(strukt).ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        let t = &self.types[*id as usize];
        let (bits, bitfield) =
            self.find(t, member, 0).ok_or_else(|| BtfError::NoMember(strukt.to_string(), member.to_string()))?;
        if bitfield || bits % 8 != 0 {
            return Err(BtfError::Bitfield(strukt.to_string(), member.to_string()));
        }
        Ok(bits / 8)
    }

    /// Offsets the probes need, from this kernel's BTF.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        Ok(KernelOffsets {
            sk_family: self.offset("sock_common", "skc_family")?,
            sk_type: self.offset("sock", "sk_type")?,
            sk_protocol: self.offset("sock", "sk_protocol")?,
            sk_socket: self.offset("sock", "sk_socket")?,
            sk_daddr: self.offset("sock_common", "skc_daddr")?,
            sk_rcv_saddr: self.offset("sock_common", "skc_rcv_saddr")?,
            sk_dport: self.offset("sock_common", "skc_dport")?,
            sk_num: self.offset("sock_common", "skc_num")?,
            sk_v6_daddr: self.offset("sock_common", "skc_v6_daddr")?,
            sk_v6_rcv_saddr: self.offset("sock_common", "skc_v6_rcv_saddr")?,
            socket_inode: self.offset("socket_alloc", "vfs_inode")?,
            inode_ino: self.offset("inode", "i_ino")?,
            task_group_leader: self.offset("task_struct", "group_leader")?,
            task_comm: self.offset("task_struct", "comm")?,
            task_flags: self.offset("task_struct", "flags")?,
            task_pid: self.offset("task_struct", "pid")?,
            task_tgid: self.offset("task_struct", "tgid")?,
            task_signal: self.offset("task_struct", "signal")?,
            signal_flags: self.offset("signal_struct", "flags")?,
            regs_arg: self.syscall_arg_offsets()?,
            regs_nr: self.offset("pt_regs", "orig_ax").or_else(|_| self.offset("pt_regs", "syscallno"))?,
            // Go keeps the current goroutine in r14 (x86-64) or x28 (arm64).
            regs_goroutine: self
                .offset("pt_regs", "r14")
                .or_else(|_| self.offset("pt_regs", "regs").map(|r| r + 28 * 8))?,
        })
    }

    /// Where Go's goroutine register and its first four integer argument
    /// registers sit in `struct pt_regs` (r14, rax, rbx, rcx, rdi on
    /// x86-64; x28, x0..x3 on arm64).
    pub fn go_regs(&self) -> Result<[u32; 5], BtfError> {
        let r = |n: &str| self.offset("pt_regs", n);
        if let (Ok(g), Ok(a), Ok(b), Ok(c), Ok(d)) = (r("r14"), r("ax"), r("bx"), r("cx"), r("di")) {
            return Ok([g, a, b, c, d]);
        }
        let regs = self.offset("pt_regs", "regs")?;
        Ok([regs + 28 * 8, regs, regs + 8, regs + 16, regs + 24])
    }

    /// Where a syscall's first three arguments sit in the saved user
    /// registers. x86-64 passes them in di/si/dx; arm64 passes them in
    /// x0..x2 but overwrites x0 with the return value, keeping the first
    /// argument in orig_x0.
    fn syscall_arg_offsets(&self) -> Result<[u32; 3], BtfError> {
        if let (Ok(di), Ok(si), Ok(dx)) =
            (self.offset("pt_regs", "di"), self.offset("pt_regs", "si"), self.offset("pt_regs", "dx"))
        {
            return Ok([di, si, dx]);
        }
        let regs = self.offset("pt_regs", "regs")?;
        Ok([self.offset("pt_regs", "orig_x0")?, regs + 8, regs + 16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(&[]).is_err());
        assert!(Btf::parse(&[
            0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
        ])
        .is_err());
    }

    #[test]
    fn running_kernel_offsets_resolve() {
        // Every Linux host this agent supports exposes BTF; skip only where the file is absent.
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else { return };
        let btf = Btf::parse(&data).unwrap();
        let o = btf.kernel_offsets().unwrap();
        // struct sock_common starts with the address pair; skc_daddr is first.
        assert_eq!(o.sk_daddr, 0);
        assert_eq!(o.sk_rcv_saddr, 4);
        assert!(o.sk_socket > 0 && o.socket_inode > 0 && o.sk_protocol > 0);
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(o.regs_arg, [112, 104, 96]);
            assert_eq!(o.regs_nr, 120);
            assert_eq!(o.regs_goroutine, 8);
        }
    }
}
