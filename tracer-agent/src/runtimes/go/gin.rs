//! Gin's registered routes, read from a running process: what `http.route`
//! is for the requests a Gin engine serves (`/checkout/:id`, the template
//! the handler was registered with).
//!
//! In: the address of a `*gin.Engine` (the receiver of its `ServeHTTP`,
//! reported once by a probe that is then detached), the process's memory,
//! and the field offsets of Gin's route tree ([`GinLayout`]: from the
//! binary's DWARF, or without DWARF from a table per Gin version). Out: each
//! method's route templates. The walk is bounded and checks what it reads
//! (method names, templates that are paths); anything else gives no routes,
//! never a partial or invented list. Per-request cost: none (the routes are
//! read once; matching a request to them is [`crate::route::TemplateRoutes`]).

use super::dwarf::Facts;

/// The probed function: its receiver is the engine.
pub const SERVE_HTTP: &str = "github.com/gin-gonic/gin.(*Engine).ServeHTTP";
pub const ENGINE: &str = "github.com/gin-gonic/gin.Engine";
pub const METHOD_TREE: &str = "github.com/gin-gonic/gin.methodTree";
pub const NODE: &str = "github.com/gin-gonic/gin.node";

/// Byte offsets in Gin's engine and route tree:
/// `Engine.trees` (a `[]methodTree`), the size of a `methodTree` and its
/// `method` and `root` fields, and `node.children`, `node.handlers`,
/// `node.fullPath`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GinLayout {
    pub engine_trees: u16,
    pub tree_size: u16,
    pub tree_method: u16,
    pub tree_root: u16,
    pub node_children: u16,
    pub node_handlers: u16,
    pub node_full_path: u16,
}

impl GinLayout {
    /// `Engine.trees=+N methodTree=N(method=+N root=+N) node.children=+N ...`
    pub fn describe(&self) -> String {
        format!(
            "Engine.trees=+{} methodTree={}(method=+{},root=+{}) node.children=+{} node.handlers=+{} node.fullPath=+{}",
            self.engine_trees,
            self.tree_size,
            self.tree_method,
            self.tree_root,
            self.node_children,
            self.node_handlers,
            self.node_full_path
        )
    }
}

/// The layout the DWARF gives, when this Gin's types are what the walk
/// reads: `trees` a `methodTrees`, `methodTree{method string, root *node}`,
/// `node.children []*node`, `node.handlers HandlersChain`, `node.fullPath
/// string` (Gin 1.5 and later have `fullPath`).
pub fn layout_from_dwarf(f: &Facts) -> Result<GinLayout, &'static str> {
    const DIFFERENT: &str = "this Gin's Engine, methodTree or node differ from what the route reader reads";
    let field = |owner: &str, name: &str, ty: &str| -> Result<u16, &'static str> {
        let f = f.fields.get(&(owner.to_string(), name.to_string())).ok_or(DIFFERENT)?;
        if f.type_name != ty {
            return Err(DIFFERENT);
        }
        u16::try_from(f.offset).ok().filter(|o| *o < 4096).ok_or(DIFFERENT)
    };
    let node_ptr = format!("*{NODE}");
    let layout = GinLayout {
        engine_trees: field(ENGINE, "trees", "github.com/gin-gonic/gin.methodTrees")?,
        tree_size: f
            .sizes
            .get(METHOD_TREE)
            .and_then(|s| u16::try_from(*s).ok())
            .filter(|s| *s < 256)
            .ok_or(DIFFERENT)?,
        tree_method: field(METHOD_TREE, "method", "string")?,
        tree_root: field(METHOD_TREE, "root", &node_ptr)?,
        node_children: field(NODE, "children", &format!("[]{node_ptr}"))?,
        node_handlers: field(NODE, "handlers", "github.com/gin-gonic/gin.HandlersChain")?,
        node_full_path: field(NODE, "fullPath", "string")?,
    };
    if layout.tree_method + 16 > layout.tree_size || layout.tree_root + 8 > layout.tree_size {
        return Err(DIFFERENT);
    }
    Ok(layout)
}

/// Reads another process's memory.
pub trait Memory {
    /// Fills `buf` from address `addr`; false when it cannot.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool;
}

/// `/proc/<pid>/mem`.
pub struct ProcMem(std::fs::File);

impl ProcMem {
    pub fn open(pid: u32) -> std::io::Result<ProcMem> {
        std::fs::File::open(format!("/proc/{pid}/mem")).map(ProcMem)
    }
}

impl Memory for ProcMem {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        use std::os::unix::fs::FileExt;
        self.0.read_exact_at(buf, addr).is_ok()
    }
}

/// Most method trees, nodes and children per node read, and the longest
/// method and template.
const MAX_TREES: u64 = 32;
const MAX_NODES: usize = 16_384;
const MAX_CHILDREN: u64 = 1024;
const MAX_METHOD: u64 = 32;
const MAX_TEMPLATE: u64 = 4096;

fn word(mem: &mut impl Memory, addr: u64) -> Result<u64, &'static str> {
    let mut b = [0u8; 8];
    if mem.read(addr, &mut b) {
        Ok(u64::from_le_bytes(b))
    } else {
        Err("the route tree could not be read")
    }
}

/// A Go string or slice header at `addr`: data pointer and length.
fn header(mem: &mut impl Memory, addr: u64) -> Result<(u64, u64), &'static str> {
    Ok((word(mem, addr)?, word(mem, addr.checked_add(8).ok_or("address overflow")?)?))
}

fn string(mem: &mut impl Memory, addr: u64, max: u64) -> Result<String, &'static str> {
    let (ptr, len) = header(mem, addr)?;
    if len > max {
        return Err("a string in the route tree is too long");
    }
    let mut b = vec![0u8; len as usize];
    if len > 0 && !mem.read(ptr, &mut b) {
        return Err("the route tree could not be read");
    }
    String::from_utf8(b).map_err(|_| "a string in the route tree is not UTF-8")
}

/// The routes of the engine at `engine`: `(method, template)` pairs, in
/// tree order. An error when anything read is not what a Gin route tree
/// holds.
pub fn read_routes(mem: &mut impl Memory, engine: u64, l: &GinLayout) -> Result<Vec<(String, String)>, &'static str> {
    let at = |base: u64, off: u16| base.checked_add(u64::from(off)).ok_or("address overflow");
    let (trees, n) = header(mem, at(engine, l.engine_trees)?)?;
    if n > MAX_TREES {
        return Err("more method trees than HTTP has methods");
    }
    let mut out = Vec::new();
    let mut seen = 0usize;
    for i in 0..n {
        let tree = trees.checked_add(i * u64::from(l.tree_size)).ok_or("address overflow")?;
        let method = string(mem, at(tree, l.tree_method)?, MAX_METHOD)?;
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_') {
            return Err("a method tree's method is not an HTTP method");
        }
        let mut stack = vec![word(mem, at(tree, l.tree_root)?)?];
        while let Some(node) = stack.pop() {
            if node == 0 {
                continue;
            }
            seen += 1;
            if seen > MAX_NODES {
                return Err("the route tree has too many nodes");
            }
            let (_, handlers) = header(mem, at(node, l.node_handlers)?)?;
            if handlers > 0 {
                let template = string(mem, at(node, l.node_full_path)?, MAX_TEMPLATE)?;
                if !template.starts_with('/') {
                    return Err("a route template is not a path");
                }
                out.push((method.clone(), template));
            }
            let (children, count) = header(mem, at(node, l.node_children)?)?;
            if count > MAX_CHILDREN {
                return Err("a route tree node has too many children");
            }
            // Pushed in reverse so that children are visited in order.
            for c in (0..count).rev() {
                stack.push(word(mem, children.checked_add(8 * c).ok_or("address overflow")?)?);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Memory made of blocks at addresses.
    #[derive(Default)]
    struct Fake {
        bytes: HashMap<u64, u8>,
        next: u64,
    }

    impl Memory for Fake {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
            for (i, b) in buf.iter_mut().enumerate() {
                match self.bytes.get(&(addr + i as u64)) {
                    Some(v) => *b = *v,
                    None => return false,
                }
            }
            true
        }
    }

    impl Fake {
        fn alloc(&mut self, data: &[u8]) -> u64 {
            let at = 0x1000 + self.next;
            self.next += data.len() as u64 + 16;
            for (i, b) in data.iter().enumerate() {
                self.bytes.insert(at + i as u64, *b);
            }
            at
        }
        fn string(&mut self, s: &str) -> [u8; 16] {
            let p = if s.is_empty() { 0 } else { self.alloc(s.as_bytes()) };
            let mut h = [0u8; 16];
            h[..8].copy_from_slice(&p.to_le_bytes());
            h[8..].copy_from_slice(&(s.len() as u64).to_le_bytes());
            h
        }
        /// A node (Gin 1.8's layout) with `handlers` handlers.
        fn node(&mut self, full: &str, handlers: u64, children: &[u64]) -> u64 {
            let mut kids = Vec::new();
            for c in children {
                kids.extend_from_slice(&c.to_le_bytes());
            }
            let kids_at = if kids.is_empty() { 0 } else { self.alloc(&kids) };
            let mut n = vec![0u8; 112];
            n[40..48].copy_from_slice(&kids_at.to_le_bytes());
            n[48..56].copy_from_slice(&(children.len() as u64).to_le_bytes());
            n[72..80].copy_from_slice(&0x9999u64.to_le_bytes());
            n[80..88].copy_from_slice(&handlers.to_le_bytes());
            let f = self.string(full);
            n[96..112].copy_from_slice(&f);
            self.alloc(&n)
        }
    }

    const LAYOUT: GinLayout = GinLayout {
        engine_trees: 200,
        tree_size: 24,
        tree_method: 0,
        tree_root: 16,
        node_children: 40,
        node_handlers: 72,
        node_full_path: 96,
    };

    fn engine(mem: &mut Fake, trees: &[(&str, u64)]) -> u64 {
        let mut t = Vec::new();
        for (m, root) in trees {
            t.extend_from_slice(&mem.string(m));
            t.extend_from_slice(&root.to_le_bytes());
        }
        let trees_at = mem.alloc(&t);
        let mut e = vec![0u8; 240];
        e[200..208].copy_from_slice(&trees_at.to_le_bytes());
        e[208..216].copy_from_slice(&(trees.len() as u64).to_le_bytes());
        mem.alloc(&e)
    }

    #[test]
    fn the_routes_with_handlers_are_read_in_tree_order() {
        let mut mem = Fake::default();
        let id = mem.node("/users/:id", 2, &[]);
        let new = mem.node("/users/new", 1, &[]);
        let users = mem.node("/users/", 0, &[new, id]);
        let root = mem.node("/", 1, &[users]);
        let post = mem.node("/users", 3, &[]);
        let e = engine(&mut mem, &[("GET", root), ("POST", post)]);
        let routes = read_routes(&mut mem, e, &LAYOUT).unwrap();
        let want = [("GET", "/"), ("GET", "/users/new"), ("GET", "/users/:id"), ("POST", "/users")];
        assert_eq!(routes, want.map(|(m, t)| (m.to_string(), t.to_string())));
    }

    #[test]
    fn what_is_not_a_route_tree_gives_no_routes() {
        // A method that is not one.
        let mut mem = Fake::default();
        let root = mem.node("/", 1, &[]);
        let e = engine(&mut mem, &[("get\n", root)]);
        assert!(read_routes(&mut mem, e, &LAYOUT).is_err());
        // A template that is not a path.
        let mut mem = Fake::default();
        let root = mem.node("users", 1, &[]);
        let e = engine(&mut mem, &[("GET", root)]);
        assert!(read_routes(&mut mem, e, &LAYOUT).is_err());
        // Unreadable memory, and a cycle (bounded by the node count).
        let mut mem = Fake::default();
        assert!(read_routes(&mut mem, 0x5000, &LAYOUT).is_err());
        let mut mem = Fake::default();
        let a = mem.node("/a", 1, &[]);
        let kids = mem.alloc(&a.to_le_bytes());
        for (i, b) in kids.to_le_bytes().iter().enumerate() {
            mem.bytes.insert(a + 40 + i as u64, *b);
        }
        for (i, b) in 1u64.to_le_bytes().iter().enumerate() {
            mem.bytes.insert(a + 48 + i as u64, *b);
        }
        let e = engine(&mut mem, &[("GET", a)]);
        assert_eq!(read_routes(&mut mem, e, &LAYOUT), Err("the route tree has too many nodes"));
    }

    #[test]
    fn random_memory_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200 {
            let mut mem = Fake::default();
            let mut block = vec![0u8; 4096];
            for b in block.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Small values and pointers into the block, mostly.
                *b = if seed % 3 == 0 { (seed >> 8) as u8 } else { 0x10 };
            }
            let at = mem.alloc(&block);
            let _ = read_routes(&mut mem, at, &LAYOUT);
        }
    }
}
