//! The few facts the Go probes need from a binary's DWARF: the byte
//! offsets of struct fields they read through, and the parameter types of
//! the functions they read arguments of (which say which register holds
//! which argument).
//!
//! In: the ELF file. Out: a [`Facts`] with what was found; nothing when the
//! binary has no DWARF (`-ldflags=-w`) or it cannot be read. Go compresses
//! its DWARF sections; `object` inflates them.

use std::borrow::Cow;
use std::collections::HashMap;

use gimli::{AttributeValue, DebugInfoOffset, EndianSlice, LittleEndian};
use object::{Object, ObjectSection};

/// A struct field: its offset in bytes and its type's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u64,
    pub type_name: String,
}

/// A parameter of a function, in source order (the receiver first);
/// `output` for results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub type_name: String,
    pub output: bool,
}

/// What was found of the structs and functions asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// `(struct, field)` → the field.
    pub fields: HashMap<(String, String), Field>,
    /// Function → its parameters.
    pub params: HashMap<String, Vec<Param>>,
    /// Struct → its size in bytes.
    pub sizes: HashMap<String, u64>,
}

/// A reference to a type, resolved once the walk is over.
type TypeRef = DebugInfoOffset<usize>;

/// Reads the fields of `structs` and the parameters of `functions` from
/// `file`'s DWARF. `None` when the binary has no `.debug_info`.
pub fn read(file: &object::File, structs: &[&str], functions: &[&str]) -> Option<Facts> {
    file.section_by_name(".debug_info")?;
    // Only the sections a walk over types and functions reads are
    // inflated (line tables, locations and frames are most of the rest).
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, gimli::Error> {
        let needed = matches!(
            id,
            gimli::SectionId::DebugInfo
                | gimli::SectionId::DebugAbbrev
                | gimli::SectionId::DebugStr
                | gimli::SectionId::DebugStrOffsets
                | gimli::SectionId::DebugLineStr
        );
        Ok(match file.section_by_name(id.name()) {
            Some(s) if needed => s.uncompressed_data().unwrap_or(Cow::Borrowed(&[])),
            _ => Cow::Borrowed(&[]),
        })
    };
    let sections = gimli::DwarfSections::load(load).ok()?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, LittleEndian));
    walk(&dwarf, structs, functions).ok()
}

fn walk(
    dwarf: &gimli::Dwarf<EndianSlice<'_, LittleEndian>>,
    structs: &[&str],
    functions: &[&str],
) -> gimli::Result<Facts> {
    let mut fields: Vec<(String, String, u64, TypeRef)> = Vec::new();
    let mut params: Vec<(String, String, bool, TypeRef)> = Vec::new();
    let mut sizes = HashMap::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        // Read without `Dwarf::unit`, which would parse the line program
        // too: that section is not inflated.
        let abbrevs = dwarf.abbreviations(&header)?;
        let mut cursor = header.entries(&abbrevs);
        // The struct or function whose children are being read, and its depth.
        let mut inside: Option<(String, isize, gimli::DwTag)> = None;
        while let Some(entry) = cursor.next_dfs()? {
            let depth = entry.depth();
            if inside.as_ref().is_some_and(|(_, d, _)| depth <= *d) {
                inside = None;
            }
            let tag = entry.tag();
            match (&inside, tag) {
                (None, gimli::DW_TAG_structure_type | gimli::DW_TAG_subprogram) => {
                    let Some(name) = entry.attr_value(gimli::DW_AT_name) else { continue };
                    let Some(name) = string(dwarf, name) else { continue };
                    let wanted = if tag == gimli::DW_TAG_structure_type { structs } else { functions };
                    if wanted.iter().any(|w| *w == name) {
                        if tag == gimli::DW_TAG_structure_type {
                            if let Some(size) = entry.attr_value(gimli::DW_AT_byte_size).and_then(|v| v.udata_value()) {
                                sizes.insert(name.clone(), size);
                            }
                        }
                        inside = Some((name, depth, tag));
                    }
                }
                (Some((owner, d, gimli::DW_TAG_structure_type)), gimli::DW_TAG_member) if depth == d + 1 => {
                    let name = name_of(dwarf, entry);
                    let offset = entry.attr_value(gimli::DW_AT_data_member_location).and_then(|v| v.udata_value());
                    if let (Some(name), Some(offset), Some(ty)) = (name, offset, type_of(&header, entry)) {
                        fields.push((owner.clone(), name, offset, ty));
                    }
                }
                (Some((owner, d, gimli::DW_TAG_subprogram)), gimli::DW_TAG_formal_parameter) if depth == d + 1 => {
                    let output =
                        matches!(entry.attr_value(gimli::DW_AT_variable_parameter), Some(AttributeValue::Flag(true)));
                    if let (Some(name), Some(ty)) = (name_of(dwarf, entry), type_of(&header, entry)) {
                        params.push((owner.clone(), name, output, ty));
                    }
                }
                _ => {}
            }
        }
    }
    // The names of the types referred to.
    let mut wanted: Vec<TypeRef> = fields.iter().map(|f| f.3).chain(params.iter().map(|p| p.3)).collect();
    wanted.sort_unstable_by_key(|o| o.0);
    wanted.dedup();
    let names = type_names(dwarf, &wanted)?;
    let name = |o: &TypeRef| names.get(o).cloned().unwrap_or_default();
    let mut facts = Facts { sizes, ..Facts::default() };
    for (owner, field, offset, ty) in fields {
        facts.fields.insert((owner, field), Field { offset, type_name: name(&ty) });
    }
    for (owner, pname, output, ty) in params {
        facts.params.entry(owner).or_default().push(Param { name: pname, type_name: name(&ty), output });
    }
    Ok(facts)
}

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// A string attribute's value: inline (Go's way) or in `.debug_str`.
fn string(dwarf: &gimli::Dwarf<Slice<'_>>, v: AttributeValue<Slice<'_>>) -> Option<String> {
    let s = match v {
        AttributeValue::String(s) => s,
        AttributeValue::DebugStrRef(o) => dwarf.debug_str.get_str(o).ok()?,
        _ => return None,
    };
    Some(s.to_string_lossy().into_owned())
}

fn name_of(dwarf: &gimli::Dwarf<Slice<'_>>, entry: &gimli::DebuggingInformationEntry<Slice<'_>>) -> Option<String> {
    string(dwarf, entry.attr_value(gimli::DW_AT_name)?)
}

fn type_of(
    header: &gimli::UnitHeader<Slice<'_>>,
    entry: &gimli::DebuggingInformationEntry<EndianSlice<'_, LittleEndian>>,
) -> Option<TypeRef> {
    match entry.attr_value(gimli::DW_AT_type)? {
        AttributeValue::UnitRef(o) => o.to_debug_info_offset(header),
        AttributeValue::DebugInfoRef(o) => Some(o),
        _ => None,
    }
}

/// The `DW_AT_name` of the DIEs at `offsets` (sorted).
fn type_names(
    dwarf: &gimli::Dwarf<EndianSlice<'_, LittleEndian>>,
    offsets: &[TypeRef],
) -> gimli::Result<HashMap<TypeRef, String>> {
    let mut out = HashMap::new();
    if offsets.is_empty() {
        return Ok(out);
    }
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let inside: Vec<_> = offsets.iter().filter_map(|o| Some((*o, o.to_unit_offset(&header)?))).collect();
        if inside.is_empty() {
            continue;
        }
        let abbrevs = dwarf.abbreviations(&header)?;
        for (global, local) in inside {
            let entry = header.entry(&abbrevs, local)?;
            if let Some(name) = name_of(dwarf, &entry) {
                out.insert(global, name);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk_bytes(info: &[u8], abbrev: &[u8]) -> gimli::Result<Facts> {
        let dwarf = gimli::Dwarf::load(|id| -> Result<Slice<'_>, ()> {
            Ok(EndianSlice::new(
                match id {
                    gimli::SectionId::DebugInfo => info,
                    gimli::SectionId::DebugAbbrev => abbrev,
                    _ => &[],
                },
                LittleEndian,
            ))
        })
        .unwrap();
        walk(&dwarf, &["T"], &["f"])
    }

    /// A unit with struct `T { a int }` (the member's type a reference
    /// inside the unit) and nothing else, in DWARF 4.
    fn unit() -> (Vec<u8>, Vec<u8>) {
        // Abbreviations: 1 compile unit (children), 2 structure type
        // (children, name), 3 member (name, offset, type), 4 base type (name).
        let abbrev = vec![
            1, 0x11, 1, 0, 0, //
            2, 0x13, 1, 0x03, 0x08, 0, 0, //
            3, 0x0d, 0, 0x03, 0x08, 0x38, 0x0f, 0x49, 0x13, 0, 0, //
            4, 0x24, 0, 0x03, 0x08, 0, 0, //
            0,
        ];
        let mut dies = vec![1u8];
        dies.extend_from_slice(b"\x02T\0");
        dies.extend_from_slice(b"\x03a\0\x08");
        let type_ref_at = dies.len();
        dies.extend_from_slice(&[0; 4]);
        dies.push(0);
        let base_at = 11 + dies.len();
        dies.extend_from_slice(b"\x04int\0");
        dies.push(0);
        dies[type_ref_at..type_ref_at + 4].copy_from_slice(&(base_at as u32).to_le_bytes());
        let mut info = ((dies.len() + 7) as u32).to_le_bytes().to_vec();
        info.extend_from_slice(&4u16.to_le_bytes());
        info.extend_from_slice(&0u32.to_le_bytes());
        info.push(8);
        info.extend_from_slice(&dies);
        (info, abbrev)
    }

    #[test]
    fn a_struct_field_gives_its_offset_and_type() {
        let (info, abbrev) = unit();
        let facts = walk_bytes(&info, &abbrev).unwrap();
        assert_eq!(facts.fields[&("T".to_string(), "a".to_string())], Field { offset: 8, type_name: "int".into() });
        assert!(facts.params.is_empty());
    }

    #[test]
    fn dwarf_cut_or_corrupted_never_panics() {
        let (info, abbrev) = unit();
        for n in 0..=info.len() {
            let _ = walk_bytes(&info[..n], &abbrev);
        }
        for i in 0..info.len() {
            for v in [0u8, 0x7f, 0x80, 0xff] {
                let mut c = info.clone();
                c[i] = v;
                let _ = walk_bytes(&c, &abbrev);
            }
        }
        for i in 0..abbrev.len() {
            for v in [0u8, 0x13, 0x80, 0xff] {
                let mut c = abbrev.clone();
                c[i] = v;
                let _ = walk_bytes(&info, &c);
            }
        }
    }
}
