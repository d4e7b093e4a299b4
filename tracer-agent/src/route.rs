//! Low-cardinality `http.route` derivation from request targets.
//!
//! A [`RouteMatcher`] holds user-supplied route patterns, and the route
//! templates a process's web framework registered ([`TemplateRoutes`], per
//! process and listening port, e.g. read from a Gin engine); targets that
//! match none of the user's patterns and come to no such port fall back to
//! [`heuristic_route`], which replaces segments that look like identifiers
//! with `{id}`.

use std::collections::HashMap;
use std::sync::Arc;

/// Most path segments kept in a heuristic route; longer paths end in `/*`.
pub const MAX_ROUTE_SEGMENTS: usize = 10;

/// Segments longer than this many bytes are always replaced with `{id}`.
pub const MAX_SEGMENT_LEN: usize = 64;

const ID: &str = "{id}";

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternSegment {
    Literal(String),
    /// `{name}`: exactly one non-empty segment.
    Param,
    /// Trailing `*`: any number (including zero) of remaining segments.
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    text: String,
    segments: Vec<PatternSegment>,
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if !trimmed.starts_with('/') {
            return Err(format!("route pattern {text:?} must start with '/'"));
        }
        if trimmed.contains(['?', '#']) {
            return Err(format!("route pattern {text:?} must not contain a query or fragment"));
        }
        let parts: Vec<&str> = trimmed.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if *part == "*" {
                if !last {
                    return Err(format!("route pattern {text:?}: '*' is only allowed as the last segment"));
                }
                segments.push(PatternSegment::Rest);
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !valid {
                    return Err(format!("route pattern {text:?}: invalid parameter segment {part:?}"));
                }
                segments.push(PatternSegment::Param);
            } else if part.contains(['{', '}', '*']) {
                return Err(format!(
                    "route pattern {text:?}: segment {part:?} mixes literal text with '{{', '}}' or '*'"
                ));
            } else {
                segments.push(PatternSegment::Literal((*part).to_string()));
            }
        }
        Ok(Pattern { text: trimmed.to_string(), segments })
    }

    /// `path`: the non-empty segments of a path.
    fn matches<'a>(&self, mut path: impl Iterator<Item = &'a str>) -> bool {
        for seg in &self.segments {
            match seg {
                PatternSegment::Rest => return true,
                PatternSegment::Param => {
                    if path.next().is_none() {
                        return false;
                    }
                }
                PatternSegment::Literal(lit) => match path.next() {
                    Some(p) if p == lit => {}
                    _ => return false,
                },
            }
        }
        path.next().is_none()
    }
}

/// Most (process, port) route tables kept.
const MAX_APPS: usize = 4096;

/// Maps request targets to routes using user patterns, then the routes a
/// process registered, then the heuristic.
#[derive(Debug, Clone, Default)]
pub struct RouteMatcher {
    patterns: Vec<Pattern>,
    /// Registered routes by (process, local port).
    apps: HashMap<(u32, u16), Arc<TemplateRoutes>>,
}

impl RouteMatcher {
    /// Patterns like `/users/{id}/orders` or `/static/*`: `{name}` matches
    /// exactly one path segment, a trailing `*` matches the rest of the path
    /// (zero or more segments). Other segments match literally. Repeated and
    /// trailing slashes are ignored when matching.
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let patterns = patterns.iter().map(|p| Pattern::parse(p)).collect::<Result<Vec<_>, _>>()?;
        Ok(RouteMatcher { patterns, apps: HashMap::new() })
    }

    /// The routes process `pid` serves on local port `port`.
    pub fn set_app(&mut self, pid: u32, port: u16, routes: TemplateRoutes) {
        if self.apps.len() >= MAX_APPS {
            self.apps.clear();
        }
        self.apps.insert((pid, port), Arc::new(routes));
    }

    pub fn app(&self, pid: u32, port: u16) -> Option<&TemplateRoutes> {
        self.apps.get(&(pid, port)).map(|a| &**a)
    }

    /// Forgets the routes of a process that ended.
    pub fn forget_process(&mut self, pid: u32) {
        self.apps.retain(|(p, _), _| *p != pid);
    }

    /// The route of a `method` request for `target` that process `pid`
    /// received on local port `port`, appended to `out`: the first user
    /// pattern that matches; else, where the process's registered routes
    /// are known, the template that serves it (false, and nothing
    /// appended, when none does: the framework answers it with no route);
    /// else the heuristic.
    pub fn route_for(&self, pid: u32, port: u16, method: &str, target: &str, out: &mut String) -> bool {
        let path = path_of(target);
        let segments = || path.split('/').filter(|s| !s.is_empty());
        if let Some(p) = self.patterns.iter().find(|p| p.matches(segments())) {
            out.push_str(&p.text);
            return true;
        }
        if let Some(app) = self.apps.get(&(pid, port)) {
            return match app.find(method, path) {
                Some(t) => {
                    out.push_str(t);
                    true
                }
                None => false,
            };
        }
        heuristic_route_of_path(path, out);
        true
    }

    /// Route for a request target. The query string and fragment are
    /// stripped (as is the scheme and authority of an absolute-form target);
    /// the first matching user pattern wins and its text is returned;
    /// otherwise [`heuristic_route`] decides.
    pub fn route(&self, target: &str) -> String {
        let mut out = String::new();
        self.route_into(target, &mut out);
        out
    }

    /// [`RouteMatcher::route`], appended to `out`.
    pub fn route_into(&self, target: &str, out: &mut String) {
        let path = path_of(target);
        let segments = || path.split('/').filter(|s| !s.is_empty());
        match self.patterns.iter().find(|p| p.matches(segments())) {
            Some(p) => out.push_str(&p.text),
            None => heuristic_route_of_path(path, out),
        }
    }

    /// [`RouteMatcher::route`] for a raw target; invalid UTF-8 is replaced.
    pub fn route_bytes(&self, target: &[u8]) -> String {
        self.route(&String::from_utf8_lossy(target))
    }
}

/// One segment of a registered route template.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TemplateSegment {
    /// Matched exactly (ordered first: the most specific).
    Literal(String),
    /// Literal text, then a parameter to the segment's end (`v:version`).
    Prefixed(String),
    /// `:name`: one non-empty segment.
    Param,
    /// `*name`, last: the rest of the path, slashes and all, maybe empty.
    CatchAll,
}

/// The route templates a web framework registered, per method, in the
/// syntax of Gin and httprouter (`/users/:id`, `/static/*filepath`), and
/// how such a router picks one: segments split at `/` (an empty segment
/// only matches an empty one, so `/users/7/` is not `/users/:id`), and of
/// the templates that match, the one whose first differing segment is the
/// most specific (literal, then literal with a parameter, then parameter,
/// then catch-all) — the template the router's tree walk ends at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateRoutes {
    /// (method, template text, its segments).
    routes: Vec<(String, String, Vec<TemplateSegment>)>,
}

impl TemplateRoutes {
    /// From `(method, template)` pairs; templates that are not paths are
    /// left out.
    pub fn new(routes: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut out: Vec<(String, String, Vec<TemplateSegment>)> = routes
            .into_iter()
            .filter(|(_, t)| t.starts_with('/'))
            .map(|(m, t)| {
                let segs = Self::parse(&t);
                (m, t, segs)
            })
            .collect();
        // Most specific first, so that the first match is the router's.
        out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(&b.2)));
        out.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        TemplateRoutes { routes: out }
    }

    fn parse(template: &str) -> Vec<TemplateSegment> {
        let parts: Vec<&str> = template[1..].split('/').collect();
        let last = parts.len() - 1;
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if i == last && p.starts_with('*') {
                    TemplateSegment::CatchAll
                } else if p.starts_with(':') {
                    TemplateSegment::Param
                } else if let Some(at) = p.find(':') {
                    TemplateSegment::Prefixed(p[..at].to_string())
                } else {
                    TemplateSegment::Literal((*p).to_string())
                }
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// `(method, template)` pairs, most specific first within a method.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.routes.iter().map(|(m, t, _)| (m.as_str(), t.as_str()))
    }

    /// The template that serves a `method` request for `path` (no query).
    pub fn find(&self, method: &str, path: &str) -> Option<&str> {
        let rest = path.strip_prefix('/')?;
        self.routes
            .iter()
            .filter(|(m, _, _)| m == method)
            .find(|(_, _, segs)| matches(segs, rest))
            .map(|(_, t, _)| t.as_str())
    }
}

fn matches(template: &[TemplateSegment], path: &str) -> bool {
    let mut rest = Some(path);
    for seg in template {
        let Some(r) = rest else { return false };
        if *seg == TemplateSegment::CatchAll {
            return true;
        }
        let (part, after) = match r.find('/') {
            Some(i) => (&r[..i], Some(&r[i + 1..])),
            None => (r, None),
        };
        let ok = match seg {
            TemplateSegment::Literal(l) => part == l,
            TemplateSegment::Prefixed(l) => part.len() > l.len() && part.starts_with(l.as_str()),
            TemplateSegment::Param => !part.is_empty(),
            TemplateSegment::CatchAll => true,
        };
        if !ok {
            return false;
        }
        rest = after;
    }
    rest.is_none()
}

/// The path part of a request target: query and fragment removed, and for an
/// absolute-form target (`http://host/p`) the scheme and authority removed.
fn path_of(target: &str) -> &str {
    let end = target.bytes().position(|b| b == b'?' || b == b'#').unwrap_or(target.len());
    let mut path = target.get(..end).unwrap_or("");
    if path.starts_with('/') {
        // Origin-form, the usual case: no scheme to remove.
        return path;
    }
    for scheme in ["http://", "https://"] {
        let n = scheme.len();
        if path.len() >= n && path.get(..n).is_some_and(|s| s.eq_ignore_ascii_case(scheme)) {
            let rest = path.get(n..).unwrap_or("");
            path = match rest.find('/') {
                Some(i) => rest.get(i..).unwrap_or("/"),
                None => "/",
            };
            break;
        }
    }
    path
}

/// Derives a low-cardinality route from a request path.
///
/// Rules, applied in order:
/// 1. The query string (`?...`) and fragment (`#...`) are stripped; an
///    absolute-form target loses its scheme and authority. `*` stays `*`;
///    any other path not starting with `/` gets one prepended.
/// 2. The path is split on `/`; empty segments are dropped, so repeated
///    slashes collapse. A trailing slash is kept. An empty path gives `/`.
/// 3. The first segment is kept as is when it is an API version such as
///    `v1`, `V2` or `v1.2`.
/// 4. Any other segment becomes `{id}` when it is:
///    - all ASCII digits (`42`), or a signed or decimal number (`-7`, `3.14`);
///    - a UUID (`123e4567-e89b-12d3-a456-426614174000`);
///    - hexadecimal, at least 8 characters long, with at least one digit
///      (`deadbeef01`, commit hashes);
///    - at least 16 characters of letters, digits, `-`, `_`, `=`, `+`
///      (base64/base62-like tokens), containing both a letter and a digit;
///    - email-like: `local@domain.tld` (also with `@` encoded as `%40`);
///    - longer than [`MAX_SEGMENT_LEN`] bytes, whatever it contains.
/// 5. At most [`MAX_ROUTE_SEGMENTS`] segments are kept; a longer path gets
///    `/*` appended after them.
pub fn heuristic_route(path: &str) -> String {
    let mut out = String::with_capacity(path.len().min(256) + 8);
    heuristic_route_of_path(path_of(path), &mut out);
    out
}

/// [`heuristic_route`] of what [`path_of`] returns, appended to `out`.
fn heuristic_route_of_path(path: &str, out: &mut String) {
    if path == "*" {
        out.push('*');
        return;
    }
    let trailing_slash = path.ends_with('/');
    let start = out.len();
    let mut truncated = false;
    let mut count = 0;
    let mut rest = path;
    while !rest.is_empty() {
        let (seg, after) = rest.split_at(rest.bytes().position(|b| b == b'/').unwrap_or(rest.len()));
        rest = after.get(1..).unwrap_or("");
        if seg.is_empty() {
            continue;
        }
        if count == MAX_ROUTE_SEGMENTS {
            truncated = true;
            break;
        }
        out.push('/');
        if count == 0 && is_version(seg) {
            out.push_str(seg);
        } else if is_id_like(seg) {
            out.push_str(ID);
        } else {
            out.push_str(seg);
        }
        count += 1;
    }
    if truncated {
        out.push_str("/*");
    } else if out.len() == start || trailing_slash {
        out.push('/');
    }
}

/// [`heuristic_route`] for a raw path; invalid UTF-8 is replaced.
pub fn heuristic_route_bytes(path: &[u8]) -> String {
    heuristic_route(&String::from_utf8_lossy(path))
}

fn is_version(seg: &str) -> bool {
    let Some(rest) = seg.strip_prefix(['v', 'V']) else {
        return false;
    };
    let mut parts = rest.split('.');
    let major_ok = parts.next().is_some_and(|m| !m.is_empty() && m.len() <= 3 && m.bytes().all(|b| b.is_ascii_digit()));
    major_ok
        && parts.clone().count() <= 1
        && parts.all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn is_id_like(seg: &str) -> bool {
    if seg.len() > MAX_SEGMENT_LEN {
        return true;
    }
    // One pass over the bytes tells which of the rules can apply at all;
    // most segments (words, file names) are then settled without the others.
    let (mut any, mut all) = (0u8, !0u8);
    for b in seg.bytes() {
        let class = BYTE_CLASS[b as usize];
        any |= class;
        all &= class;
    }
    let digit = any & DIGIT != 0;
    (digit && is_number(seg))
        || is_uuid(seg)
        || (seg.len() >= 8 && all & HEX != 0 && digit)
        || (seg.len() >= 16 && all & TOKEN != 0 && digit && any & ALPHA != 0)
        || (any & AT_OR_PERCENT != 0 && is_email(seg))
}

// What `is_id_like` needs to know of a byte.
const DIGIT: u8 = 1;
const ALPHA: u8 = 2;
const HEX: u8 = 4;
/// Allowed in a base64/base62-like token.
const TOKEN: u8 = 8;
const AT_OR_PERCENT: u8 = 16;

static BYTE_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if b.is_ascii_digit() {
            c |= DIGIT;
        }
        if b.is_ascii_alphabetic() {
            c |= ALPHA;
        }
        if b.is_ascii_hexdigit() {
            c |= HEX;
        }
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'+') {
            c |= TOKEN;
        }
        if b == b'@' || b == b'%' {
            c |= AT_OR_PERCENT;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// `[+-]?digits(.digits)?`
fn is_number(seg: &str) -> bool {
    let s = seg.strip_prefix(['-', '+']).unwrap_or(seg);
    let mut parts = s.split('.');
    let int_ok = parts.next().is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let frac_ok = match parts.next() {
        None => true,
        Some(f) => !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()),
    };
    int_ok && frac_ok && parts.next().is_none()
}

fn is_uuid(seg: &str) -> bool {
    let b = seg.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(
            |(i, &c)| {
                if matches!(i, 8 | 13 | 18 | 23) {
                    c == b'-'
                } else {
                    c.is_ascii_hexdigit()
                }
            },
        )
}

#[cfg(test)]
fn is_hex_id(seg: &str) -> bool {
    seg.len() >= 8 && seg.bytes().all(|b| b.is_ascii_hexdigit()) && seg.bytes().any(|b| b.is_ascii_digit())
}

#[cfg(test)]
fn is_long_token(seg: &str) -> bool {
    seg.len() >= 16
        && seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'+'))
        && seg.bytes().any(|b| b.is_ascii_digit())
        && seg.bytes().any(|b| b.is_ascii_alphabetic())
}

fn is_email(seg: &str) -> bool {
    let (local, domain) = match seg.split_once('@') {
        Some(parts) => parts,
        None => match seg.split_once("%40") {
            Some(parts) => parts,
            None => return false,
        },
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.split_once('.').is_some_and(|(host, tld)| !host.is_empty() && !tld.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(patterns: &[&str]) -> RouteMatcher {
        let owned: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        RouteMatcher::new(&owned).expect("valid patterns")
    }

    #[test]
    fn heuristic_replaces_numeric_ids() {
        assert_eq!(heuristic_route("/users/42/orders/7"), "/users/{id}/orders/{id}");
        assert_eq!(heuristic_route("/items/-3"), "/items/{id}");
        assert_eq!(heuristic_route("/geo/3.14/2.71"), "/geo/{id}/{id}");
    }

    #[test]
    fn heuristic_replaces_uuid_hex_tokens_and_emails() {
        assert_eq!(heuristic_route("/o/123e4567-e89b-12d3-a456-426614174000/x"), "/o/{id}/x");
        assert_eq!(heuristic_route("/commit/9fceb02d0ae598e95dc970b74767f19372d61af8"), "/commit/{id}");
        assert_eq!(heuristic_route("/blob/deadbeef01"), "/blob/{id}");
        // Hex-looking words without digits are kept.
        assert_eq!(heuristic_route("/feed/deadbeef"), "/feed/deadbeef");
        // Too short to be a hex id.
        assert_eq!(heuristic_route("/c/abc123"), "/c/abc123");
        assert_eq!(heuristic_route("/s/aZ3kP9qLm2Xv7Tn4"), "/s/{id}");
        assert_eq!(heuristic_route("/s/dGVzdDEyMzQ1Njc4OTA="), "/s/{id}");
        assert_eq!(heuristic_route("/u/jane.doe@example.com/profile"), "/u/{id}/profile");
        assert_eq!(heuristic_route("/u/jane%40example.com"), "/u/{id}");
        // Long words without digits are kept.
        assert_eq!(heuristic_route("/api/organizationsettings"), "/api/organizationsettings");
        let long = "a".repeat(MAX_SEGMENT_LEN + 1);
        assert_eq!(heuristic_route(&format!("/x/{long}")), "/x/{id}");
    }

    #[test]
    fn heuristic_keeps_versions_and_files() {
        assert_eq!(heuristic_route("/v1/users/10"), "/v1/users/{id}");
        assert_eq!(heuristic_route("/V2.1/things"), "/V2.1/things");
        assert_eq!(heuristic_route("/static/jquery-3.6.0.min.js"), "/static/jquery-3.6.0.min.js");
        assert_eq!(heuristic_route("/healthz"), "/healthz");
    }

    #[test]
    fn heuristic_normalises_shape() {
        assert_eq!(heuristic_route(""), "/");
        assert_eq!(heuristic_route("/"), "/");
        assert_eq!(heuristic_route("//"), "/");
        assert_eq!(heuristic_route("//a///b"), "/a/b");
        assert_eq!(heuristic_route("/a/b/"), "/a/b/");
        assert_eq!(heuristic_route("/a?x=1#frag"), "/a");
        assert_eq!(heuristic_route("/a#frag?x"), "/a");
        assert_eq!(heuristic_route("?x=1"), "/");
        assert_eq!(heuristic_route("*"), "*");
        assert_eq!(heuristic_route("relative/7"), "/relative/{id}");
        assert_eq!(heuristic_route("http://example.com/u/5?q"), "/u/{id}");
        assert_eq!(heuristic_route("HTTPS://example.com"), "/");
    }

    /// The one-pass gate in `is_id_like` decides as the rules do one by one.
    #[test]
    fn id_gate_matches_the_rules() {
        let plain = |seg: &str| {
            seg.len() > MAX_SEGMENT_LEN
                || is_number(seg)
                || is_uuid(seg)
                || is_hex_id(seg)
                || is_long_token(seg)
                || is_email(seg)
        };
        let mut segs: Vec<String> = [
            "123e4567-e89b-12d3-a456-426614174000",
            "abcdefab-abcd-abcd-abcd-abcdefabcdef",
            "deadbeef",
            "deadbeef01",
            "aZ3kP9qLm2Xv7Tn4",
            "a@b.c",
            "x%40y.z",
            "-7",
            "+3.14",
            "3.",
            "index.html",
        ]
        .map(String::from)
        .to_vec();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let any = ["a", "f", "z", "Z", "0", "9", "-", "+", ".", "_", "=", "@", "%", "%40", "é", "~"];
        let hexish = ["a", "F", "0", "7", "-", "g"];
        for alphabet in [&any[..], &hexish[..]] {
            for _ in 0..20_000 {
                let len = (next() % 40) as usize;
                let seg: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
                segs.push(seg);
            }
        }
        for seg in &segs {
            assert_eq!(is_id_like(seg), plain(seg), "{seg:?}");
        }
    }

    #[test]
    fn heuristic_is_bounded() {
        let deep: String = (0..30).map(|i| format!("/s{i}")).collect();
        let r = heuristic_route(&deep);
        assert_eq!(r, "/s0/s1/s2/s3/s4/s5/s6/s7/s8/s9/*");
        let wide = format!("/{}", "z".repeat(100_000));
        assert_eq!(heuristic_route(&wide), "/{id}");
        // Exactly the limit: no `/*`.
        let ten: String = (0..10).map(|i| format!("/p{i}")).collect();
        assert_eq!(heuristic_route(&ten), ten);
    }

    #[test]
    fn non_utf8_is_lossy() {
        assert_eq!(heuristic_route_bytes(b"/caf\xe9/12"), "/caf\u{fffd}/{id}");
        let r = m(&[]);
        assert_eq!(r.route_bytes(b"/\xff\xfe/9?x"), "/\u{fffd}\u{fffd}/{id}");
    }

    #[test]
    fn patterns_match_first_wins() {
        let r = m(&["/users/{id}/orders", "/users/{id}", "/static/*", "/users/me"]);
        assert_eq!(r.route("/users/abc/orders?page=2"), "/users/{id}/orders");
        assert_eq!(r.route("/users/me"), "/users/{id}");
        assert_eq!(r.route("/users//7/"), "/users/{id}");
        assert_eq!(r.route("/static/css/site.css"), "/static/*");
        assert_eq!(r.route("/static"), "/static/*");
        // No pattern matches: heuristic.
        assert_eq!(r.route("/users/7/orders/9"), "/users/{id}/orders/{id}");
        assert_eq!(r.route("/other/12"), "/other/{id}");
    }

    #[test]
    fn root_and_catch_all_patterns() {
        let r = m(&["/"]);
        assert_eq!(r.route("/?a=b"), "/");
        assert_eq!(r.route("/x"), "/x");
        let all = m(&["/*"]);
        assert_eq!(all.route("/anything/at/all"), "/*");
        assert_eq!(all.route("/"), "/*");
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        for bad in ["users", "/a/*/b", "/a/{}", "/a/{x", "/a/x{y}", "/a?b", "/a/b*", "/{a b}"] {
            assert!(RouteMatcher::new(&[bad.to_string()]).is_err(), "{bad} should be rejected");
        }
        assert!(RouteMatcher::new(&[]).is_ok());
    }
}

#[cfg(test)]
mod template_tests {
    use super::*;

    fn gin(routes: &[(&str, &str)]) -> TemplateRoutes {
        TemplateRoutes::new(routes.iter().map(|(m, t)| (m.to_string(), t.to_string())))
    }

    #[test]
    fn a_request_gets_the_template_the_router_picks() {
        let r = gin(&[
            ("GET", "/users/:id"),
            ("GET", "/users/new"),
            ("GET", "/users/:id/orders/:order"),
            ("GET", "/static/*filepath"),
            ("GET", "/static/favicon.ico"),
            ("GET", "/"),
            ("POST", "/users"),
            ("GET", "/files/v:version"),
        ]);
        let find = |m: &str, p: &str| r.find(m, p);
        assert_eq!(find("GET", "/users/7"), Some("/users/:id"));
        assert_eq!(find("GET", "/users/new"), Some("/users/new"), "a literal wins over a parameter");
        assert_eq!(find("GET", "/users/7/orders/9"), Some("/users/:id/orders/:order"));
        assert_eq!(find("GET", "/static/favicon.ico"), Some("/static/favicon.ico"));
        assert_eq!(find("GET", "/static/css/a.css"), Some("/static/*filepath"));
        assert_eq!(find("GET", "/static/"), Some("/static/*filepath"));
        assert_eq!(find("GET", "/"), Some("/"));
        assert_eq!(find("GET", "/files/v2"), Some("/files/v:version"));
        assert_eq!(find("POST", "/users"), Some("/users"));
        // What the router answers with no route (404, or a redirect to
        // the other trailing slash).
        assert_eq!(find("GET", "/users"), None);
        assert_eq!(find("GET", "/users/7/"), None);
        assert_eq!(find("GET", "/users//orders/9"), None, "a parameter is never empty");
        assert_eq!(find("GET", "/static"), None);
        assert_eq!(find("GET", "/files/v"), None);
        assert_eq!(find("DELETE", "/users/7"), None);
        assert_eq!(find("GET", "users/7"), None);
        assert_eq!(find("GET", ""), None);
    }

    #[test]
    fn a_processs_routes_come_after_the_users_patterns_and_before_the_heuristic() {
        let mut m = RouteMatcher::new(&["/users/{id}/orders".to_string()]).unwrap();
        m.set_app(10, 8080, gin(&[("GET", "/users/:id"), ("GET", "/users/:id/orders")]));
        fn route(m: &RouteMatcher, pid: u32, port: u16, target: &str) -> Option<String> {
            let mut out = String::new();
            m.route_for(pid, port, "GET", target, &mut out).then_some(out)
        }
        assert_eq!(route(&m, 10, 8080, "/users/7?x=1").as_deref(), Some("/users/:id"));
        assert_eq!(route(&m, 10, 8080, "/users/7/orders").as_deref(), Some("/users/{id}/orders"));
        assert_eq!(route(&m, 10, 8080, "/nothing/7"), None, "no registered route serves it");
        assert_eq!(route(&m, 10, 9090, "/users/7").as_deref(), Some("/users/{id}"), "another port: the heuristic");
        assert_eq!(route(&m, 11, 8080, "/users/7").as_deref(), Some("/users/{id}"));
        m.forget_process(10);
        assert_eq!(route(&m, 10, 8080, "/users/7").as_deref(), Some("/users/{id}"));
    }

    #[test]
    fn odd_templates_never_panic() {
        let r = gin(&[("GET", "/"), ("GET", "/*"), ("GET", "/:"), ("GET", "//"), ("GET", "/a:"), ("GET", "x")]);
        assert_eq!(r.len(), 5, "a template that is not a path is left out");
        for p in ["/", "//", "/a", "/a:", "/a/b/c", "", "x", "/:", "/%2F"] {
            let _ = r.find("GET", p);
        }
        assert_eq!(r.find("GET", "/anything/at/all"), Some("/*"));
        assert_eq!(r.find("GET", "/"), Some("/"));
    }
}
