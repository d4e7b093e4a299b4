//! SQL text helpers shared by the SQL database parsers: literal
//! sanitisation, operation/collection extraction and span naming.
//!
//! All functions are pure and total: any input, including truncated
//! statements, unbalanced quotes and binary garbage, gives a result and never
//! a panic. Work is bounded: sanitised output stops at [`MAX_SANITIZED_LEN`]
//! bytes and statement analysis looks at no more than [`MAX_ANALYSED_TOKENS`]
//! tokens.

/// Longest sanitised text, in bytes (cut on a character boundary).
pub const MAX_SANITIZED_LEN: usize = 2048;

/// Tokens examined by [`operation_and_collection`].
const MAX_ANALYSED_TOKENS: usize = 4096;

/// Longest collection name returned.
const MAX_COLLECTION_LEN: usize = 256;

/// One lexical token of SQL text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    /// Whitespace or a comment.
    Space,
    /// Unquoted identifier or keyword.
    Word(&'a str),
    /// Double-quoted or backquoted identifier, quotes included.
    Quoted(&'a str),
    /// String, number, dollar-quoted or bit/hex string literal.
    Literal,
    /// Bind placeholder: `?`, `$1`, `:name`.
    Placeholder(&'a str),
    /// Any other single character (operators, punctuation).
    Punct(&'a str),
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c == '$' || c.is_alphanumeric()
}

struct Lexer<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn new(s: &'a str) -> Self {
        Lexer { s, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        self.s.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.rest().chars().nth(n)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn slice(&self, from: usize) -> &'a str {
        self.s.get(from..self.pos).unwrap_or("")
    }

    /// Skip a single-quoted string body; the opening quote is consumed.
    /// `''` is an escaped quote, a backslash escapes the next character.
    fn skip_single_quoted(&mut self) {
        while let Some(c) = self.bump() {
            match c {
                '\\' => {
                    self.bump();
                }
                '\'' => {
                    if self.peek() == Some('\'') {
                        self.bump();
                    } else {
                        return;
                    }
                }
                _ => {}
            }
        }
    }

    /// Skip an identifier quoted with `q` (opening quote consumed); a doubled
    /// quote is an escaped one.
    fn skip_quoted_ident(&mut self, q: char) {
        while let Some(c) = self.bump() {
            if c == q {
                if self.peek() == Some(q) {
                    self.bump();
                } else {
                    return;
                }
            }
        }
    }

    /// At a `$`: the tag of a dollar quote (`$$` or `$tag$`) when one starts
    /// here, as the full delimiter.
    fn dollar_tag(&self) -> Option<&'a str> {
        let rest = self.rest();
        let mut chars = rest.char_indices();
        chars.next(); // the opening '$'
        for (i, c) in chars {
            if c == '$' {
                return rest.get(..i + 1);
            }
            let ok = if i == 1 { is_ident_start(c) } else { c == '_' || c.is_alphanumeric() };
            if !ok {
                return None;
            }
        }
        None
    }

    fn skip_number(&mut self) {
        let rest = self.rest().as_bytes();
        if rest.len() >= 2 && rest[0] == b'0' && matches!(rest[1], b'x' | b'X') {
            let digits = rest.get(2..).unwrap_or(&[]).iter().take_while(|b| b.is_ascii_hexdigit()).count();
            if digits > 0 {
                self.pos += 2 + digits;
                return;
            }
        }
        let mut i = 0;
        let digits = |i: &mut usize| {
            while rest.get(*i).is_some_and(|b| b.is_ascii_digit() || *b == b'_') {
                *i += 1;
            }
        };
        digits(&mut i);
        if rest.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
        if matches!(rest.get(i), Some(b'e' | b'E')) {
            let mut j = i + 1;
            if matches!(rest.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if rest.get(j).is_some_and(|b| b.is_ascii_digit()) {
                i = j;
                digits(&mut i);
            }
        }
        self.pos += i.max(1);
    }

    fn next_token(&mut self) -> Option<Tok<'a>> {
        let start = self.pos;
        let c = self.peek()?;
        if c.is_whitespace() {
            while self.peek().is_some_and(char::is_whitespace) {
                self.bump();
            }
            return Some(Tok::Space);
        }
        if c == '-' && self.peek_at(1) == Some('-') {
            match self.rest().find('\n') {
                Some(n) => self.pos += n + 1,
                None => self.pos = self.s.len(),
            }
            return Some(Tok::Space);
        }
        if c == '/' && self.peek_at(1) == Some('*') {
            self.pos += 2;
            let mut depth = 1usize;
            while depth > 0 {
                let rest = self.rest();
                if rest.is_empty() {
                    break;
                }
                if rest.starts_with("*/") {
                    depth -= 1;
                    self.pos += 2;
                } else if rest.starts_with("/*") {
                    depth += 1;
                    self.pos += 2;
                } else {
                    self.bump();
                }
            }
            return Some(Tok::Space);
        }
        if c == '\'' {
            self.bump();
            self.skip_single_quoted();
            return Some(Tok::Literal);
        }
        if c == '"' || c == '`' {
            self.bump();
            self.skip_quoted_ident(c);
            return Some(Tok::Quoted(self.slice(start)));
        }
        if c == '$' {
            if self.peek_at(1).is_some_and(|d| d.is_ascii_digit()) {
                self.bump();
                while self.peek().is_some_and(|d| d.is_ascii_digit()) {
                    self.bump();
                }
                return Some(Tok::Placeholder(self.slice(start)));
            }
            if let Some(tag) = self.dollar_tag() {
                self.pos += tag.len();
                match self.rest().find(tag) {
                    Some(n) => self.pos += n + tag.len(),
                    None => self.pos = self.s.len(),
                }
                return Some(Tok::Literal);
            }
            self.bump();
            return Some(Tok::Punct(self.slice(start)));
        }
        if c == '?' {
            self.bump();
            return Some(Tok::Placeholder(self.slice(start)));
        }
        if c == ':' {
            if self.peek_at(1) == Some(':') {
                self.pos += 2;
                return Some(Tok::Punct(self.slice(start)));
            }
            if self.peek_at(1).is_some_and(is_ident_start) {
                self.bump();
                while self.peek().is_some_and(is_ident_continue) {
                    self.bump();
                }
                return Some(Tok::Placeholder(self.slice(start)));
            }
        }
        if c.is_ascii_digit() || (c == '.' && self.peek_at(1).is_some_and(|d| d.is_ascii_digit())) {
            self.skip_number();
            return Some(Tok::Literal);
        }
        if is_ident_start(c) {
            while self.peek().is_some_and(is_ident_continue) {
                self.bump();
            }
            let word = self.slice(start);
            // Prefixed string literals: E'..', B'..', X'..', N'..', U&'..'.
            let upper = word.to_ascii_uppercase();
            if matches!(upper.as_str(), "E" | "B" | "X" | "N") && self.peek() == Some('\'') {
                self.bump();
                self.skip_single_quoted();
                return Some(Tok::Literal);
            }
            if upper == "U" && self.peek() == Some('&') && self.peek_at(1) == Some('\'') {
                self.pos += 2;
                self.skip_single_quoted();
                return Some(Tok::Literal);
            }
            return Some(Tok::Word(word));
        }
        self.bump();
        Some(Tok::Punct(self.slice(start)))
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Tok<'a>;
    fn next(&mut self) -> Option<Tok<'a>> {
        self.next_token()
    }
}

/// Collapsing of `IN (?, ?, ...)` lists, one step per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InList {
    /// Nothing special.
    Idle,
    /// Just after the keyword `IN`.
    AfterIn,
    /// After `IN (`.
    Open,
    /// After `IN (?` (and possibly more collapsed items).
    Item,
    /// After `IN (?,`; the comma is held back.
    Comma,
}

struct Writer {
    out: String,
    space: bool,
}

impl Writer {
    fn push(&mut self, s: &str) {
        if self.space && !self.out.is_empty() {
            self.out.push(' ');
        }
        self.space = false;
        self.out.push_str(s);
    }
}

/// Replace literals by `?`, drop comments, collapse `IN (?, ?)` lists to
/// `IN (?)` and whitespace runs to one space. Identifiers (plain, quoted,
/// backquoted, or containing digits) and placeholders (`$1`, `?`, `:name`)
/// are kept. Single-quoted strings honour both `''` and backslash escapes;
/// an unterminated literal or comment runs to the end of the text. The
/// result holds at most [`MAX_SANITIZED_LEN`] bytes.
pub fn sanitize(sql: &str) -> String {
    let mut w = Writer { out: String::with_capacity(sql.len().min(MAX_SANITIZED_LEN) + 8), space: false };
    let mut list = InList::Idle;
    let mut held_space = false;
    for tok in Lexer::new(sql) {
        if w.out.len() > MAX_SANITIZED_LEN {
            break;
        }
        if tok == Tok::Space {
            match list {
                InList::Comma => held_space = true,
                InList::Item => held_space = true,
                _ => w.space = true,
            }
            continue;
        }
        let is_q = matches!(tok, Tok::Literal | Tok::Placeholder("?"));
        match (list, tok) {
            (InList::Item, Tok::Punct(",")) => {
                list = InList::Comma;
                continue;
            }
            (InList::Comma, _) if is_q => {
                // `, ?` folded into the first item.
                list = InList::Item;
                held_space = false;
                continue;
            }
            (InList::Comma, _) => {
                w.space = false;
                w.push(",");
                w.space = held_space;
                held_space = false;
                list = InList::Idle;
            }
            (InList::Item, _) => {
                w.space = held_space;
                held_space = false;
                list = InList::Idle;
            }
            _ => {}
        }
        match tok {
            Tok::Space => {}
            Tok::Literal => w.push("?"),
            Tok::Word(s) | Tok::Quoted(s) | Tok::Placeholder(s) | Tok::Punct(s) => w.push(s),
        }
        list = match (list, tok) {
            (_, Tok::Word(s)) if s.eq_ignore_ascii_case("IN") => InList::AfterIn,
            (InList::AfterIn, Tok::Punct("(")) => InList::Open,
            (InList::Open, _) if is_q => InList::Item,
            _ => InList::Idle,
        };
    }
    if list == InList::Comma {
        w.space = false;
        w.push(",");
    }
    let mut out = w.out;
    if out.len() > MAX_SANITIZED_LEN {
        let mut cut = MAX_SANITIZED_LEN;
        while cut > 0 && !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    let trimmed_len = out.trim_end().len();
    out.truncate(trimmed_len);
    out
}

/// A significant token for statement analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sig<'a> {
    Word(&'a str),
    Quoted(&'a str),
    Other(&'a str),
    Literal,
}

impl<'a> Sig<'a> {
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self, Sig::Word(w) if w.eq_ignore_ascii_case(kw))
    }
    fn is_punct(&self, p: &str) -> bool {
        matches!(self, Sig::Other(o) if *o == p)
    }
}

fn significant(sql: &str) -> Vec<Sig<'_>> {
    Lexer::new(sql)
        .filter_map(|t| match t {
            Tok::Space => None,
            Tok::Word(w) => Some(Sig::Word(w)),
            Tok::Quoted(q) => Some(Sig::Quoted(q)),
            Tok::Literal => Some(Sig::Literal),
            Tok::Placeholder(p) | Tok::Punct(p) => Some(Sig::Other(p)),
        })
        .take(MAX_ANALYSED_TOKENS)
        .collect()
}

/// Words that end a table reference or cannot be a table name.
const RESERVED: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP",
    "ORDER",
    "LIMIT",
    "OFFSET",
    "HAVING",
    "WINDOW",
    "UNION",
    "INTERSECT",
    "EXCEPT",
    "JOIN",
    "INNER",
    "LEFT",
    "RIGHT",
    "FULL",
    "CROSS",
    "NATURAL",
    "ON",
    "USING",
    "SET",
    "VALUES",
    "RETURNING",
    "FOR",
    "INTO",
    "AS",
    "LATERAL",
    "FETCH",
    "TABLE",
    "STRAIGHT_JOIN",
    "WITH",
    "AND",
    "OR",
    "NOT",
    "NULL",
    "DEFAULT",
    "ONLY",
    "IF",
    "EXISTS",
    "OUTER",
    "PARTITION",
    "LOCK",
    "TO",
    "STDIN",
    "STDOUT",
    "IGNORE",
    "DUPLICATE",
];

fn is_reserved(w: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(w))
}

/// Words after a table name that mean more tables follow.
const JOIN_WORDS: &[&str] = &["JOIN", "INNER", "LEFT", "RIGHT", "FULL", "CROSS", "NATURAL", "STRAIGHT_JOIN", "LATERAL"];

fn unquote(q: &str) -> String {
    let mut chars = q.chars();
    let quote = chars.next().unwrap_or('"');
    let inner = q
        .get(quote.len_utf8()..)
        .unwrap_or("")
        .strip_suffix(quote)
        .unwrap_or_else(|| q.get(quote.len_utf8()..).unwrap_or(""));
    let doubled: String = [quote, quote].iter().collect();
    inner.replace(&doubled, &quote.to_string())
}

/// Read a possibly schema-qualified table name at `toks[i]`; returns the
/// name (quotes removed) and the index after it.
fn table_name(toks: &[Sig<'_>], mut i: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        match toks.get(i)? {
            Sig::Word(w) if !is_reserved(w) => name.push_str(w),
            Sig::Quoted(q) => name.push_str(&unquote(q)),
            _ => return None,
        }
        i += 1;
        if toks.get(i).is_some_and(|t| t.is_punct(".")) {
            name.push('.');
            i += 1;
        } else {
            break;
        }
        if name.len() > MAX_COLLECTION_LEN {
            return None;
        }
    }
    if name.is_empty() || name.len() > MAX_COLLECTION_LEN {
        return None;
    }
    Some((name, i))
}

/// A table reference that must stand alone: after the name (and an optional
/// alias) only a clause keyword, `;`, `)` or the end may follow.
fn single_table(toks: &[Sig<'_>], i: usize) -> Option<String> {
    let (name, mut j) = table_name(toks, i)?;
    // A function call (`FROM generate_series(1, 3)`), not a table.
    if toks.get(j).is_some_and(|t| t.is_punct("(")) {
        return None;
    }
    if toks.get(j).is_some_and(|t| t.is_punct("*")) {
        j += 1;
    }
    // Optional alias.
    if toks.get(j).is_some_and(|t| t.is_kw("AS")) {
        j += 1;
        if matches!(toks.get(j), Some(Sig::Word(_) | Sig::Quoted(_))) {
            j += 1;
        }
    } else {
        match toks.get(j) {
            Some(Sig::Word(w)) if !is_reserved(w) => j += 1,
            Some(Sig::Quoted(_)) => j += 1,
            _ => {}
        }
    }
    match toks.get(j) {
        Some(t) if t.is_punct(",") => None,
        Some(Sig::Word(w)) if JOIN_WORDS.iter().any(|k| k.eq_ignore_ascii_case(w)) => None,
        _ => Some(name),
    }
}

/// Index of the first top-level keyword `kw` at or after `i`, before the
/// statement ends (`;`) or a top-level set operation.
fn find_top_level(toks: &[Sig<'_>], mut i: usize, kw: &str) -> Option<usize> {
    let mut depth = 0usize;
    while let Some(t) = toks.get(i) {
        if t.is_punct("(") {
            depth += 1;
        } else if t.is_punct(")") {
            if depth == 0 {
                return None;
            }
            depth -= 1;
        } else if depth == 0 {
            if t.is_punct(";") {
                return None;
            }
            if t.is_kw(kw) {
                return Some(i);
            }
        }
        i += 1;
    }
    None
}

/// Any top-level UNION/INTERSECT/EXCEPT in the statement starting at `i`.
fn has_set_operation(toks: &[Sig<'_>], i: usize) -> bool {
    ["UNION", "INTERSECT", "EXCEPT"].iter().any(|kw| find_top_level(toks, i, kw).is_some())
}

/// Skip a balanced parenthesised group starting at `toks[i] == "("`.
fn skip_group(toks: &[Sig<'_>], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while let Some(t) = toks.get(i) {
        if t.is_punct("(") {
            depth += 1;
        } else if t.is_punct(")") {
            depth = depth.checked_sub(1)?;
            if depth == 0 {
                return Some(i + 1);
            }
        }
        i += 1;
    }
    None
}

/// Skip the `WITH ...` common table expressions; returns the index of the
/// main statement's keyword and the CTE names.
fn skip_with(toks: &[Sig<'_>], mut i: usize) -> Option<(usize, Vec<String>)> {
    let mut names = Vec::new();
    if toks.get(i).is_some_and(|t| t.is_kw("RECURSIVE")) {
        i += 1;
    }
    loop {
        let (name, j) = table_name(toks, i)?;
        names.push(name);
        i = j;
        if toks.get(i).is_some_and(|t| t.is_punct("(")) {
            i = skip_group(toks, i)?;
        }
        if !toks.get(i).is_some_and(|t| t.is_kw("AS")) {
            return None;
        }
        i += 1;
        if toks.get(i).is_some_and(|t| t.is_kw("NOT")) {
            i += 1;
        }
        if toks.get(i).is_some_and(|t| t.is_kw("MATERIALIZED")) {
            i += 1;
        }
        if !toks.get(i).is_some_and(|t| t.is_punct("(")) {
            return None;
        }
        i = skip_group(toks, i)?;
        if toks.get(i).is_some_and(|t| t.is_punct(",")) {
            i += 1;
            continue;
        }
        return match toks.get(i) {
            Some(Sig::Word(_)) => Some((i, names)),
            _ => None,
        };
    }
}

fn skip_words(toks: &[Sig<'_>], mut i: usize, words: &[&str]) -> usize {
    while let Some(Sig::Word(w)) = toks.get(i) {
        if words.iter().any(|k| k.eq_ignore_ascii_case(w)) {
            i += 1;
        } else {
            break;
        }
    }
    i
}

fn skip_seq(toks: &[Sig<'_>], i: usize, seq: &[&str]) -> usize {
    let all = seq.iter().enumerate().all(|(k, w)| toks.get(i + k).is_some_and(|t| t.is_kw(w)));
    if all {
        i + seq.len()
    } else {
        i
    }
}

/// Collection of the statement whose keyword is at `toks[i]`.
fn collection_at(toks: &[Sig<'_>], i: usize, op: &str) -> Option<String> {
    let next = i + 1;
    match op {
        "SELECT" => {
            if has_set_operation(toks, next) {
                return None;
            }
            let from = find_top_level(toks, next, "FROM")?;
            let j = skip_words(toks, from + 1, &["ONLY"]);
            single_table(toks, j)
        }
        "INSERT" | "REPLACE" => {
            let j = skip_words(toks, next, &["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE"]);
            let j = if toks.get(j).is_some_and(|t| t.is_kw("INTO")) { j + 1 } else { j };
            table_name(toks, j).map(|(n, _)| n)
        }
        "UPDATE" => {
            let j = skip_words(toks, next, &["ONLY", "LOW_PRIORITY", "IGNORE"]);
            single_table(toks, j)
        }
        "DELETE" => {
            let j = skip_words(toks, next, &["LOW_PRIORITY", "QUICK", "IGNORE"]);
            if !toks.get(j).is_some_and(|t| t.is_kw("FROM")) {
                return None;
            }
            let j = skip_words(toks, j + 1, &["ONLY"]);
            single_table(toks, j)
        }
        "CREATE" => {
            let mut j = skip_seq(toks, next, &["OR", "REPLACE"]);
            j = skip_words(toks, j, &["GLOBAL", "LOCAL", "TEMP", "TEMPORARY", "UNLOGGED"]);
            if !toks.get(j).is_some_and(|t| t.is_kw("TABLE")) {
                return None;
            }
            j = skip_seq(toks, j + 1, &["IF", "NOT", "EXISTS"]);
            table_name(toks, j).map(|(n, _)| n)
        }
        "DROP" | "ALTER" => {
            if !toks.get(next).is_some_and(|t| t.is_kw("TABLE")) {
                return None;
            }
            let mut j = skip_seq(toks, next + 1, &["IF", "EXISTS"]);
            j = skip_words(toks, j, &["ONLY"]);
            let (name, k) = table_name(toks, j)?;
            if op == "DROP" && toks.get(k).is_some_and(|t| t.is_punct(",")) {
                return None;
            }
            Some(name)
        }
        "TRUNCATE" => {
            let j = skip_words(toks, next, &["TABLE", "ONLY"]);
            let (name, k) = table_name(toks, j)?;
            if toks.get(k).is_some_and(|t| t.is_punct(",")) {
                return None;
            }
            Some(name)
        }
        "COPY" => table_name(toks, next).map(|(n, _)| n),
        _ => None,
    }
}

/// The statement's operation (first keyword, uppercased; for `WITH`, the
/// main statement's keyword) and, for simple single-table statements, the
/// table name as written (schema qualification kept, quotes removed).
pub fn operation_and_collection(sql: &str) -> (Option<String>, Option<String>) {
    let toks = significant(sql);
    let mut i = 0;
    while toks.get(i).is_some_and(|t| t.is_punct("(")) {
        i += 1;
    }
    let first = match toks.get(i) {
        Some(Sig::Word(w)) if w.len() <= 32 && w.chars().all(|c| c.is_ascii_alphabetic() || c == '_') => {
            w.to_ascii_uppercase()
        }
        _ => return (None, None),
    };
    if first == "WITH" {
        return match skip_with(&toks, i + 1) {
            Some((k, ctes)) => {
                let op = match toks.get(k) {
                    Some(Sig::Word(w)) => w.to_ascii_uppercase(),
                    _ => return (Some(first), None),
                };
                let coll = collection_at(&toks, k, &op).filter(|c| !ctes.iter().any(|n| n.eq_ignore_ascii_case(c)));
                (Some(op), coll)
            }
            None => (Some(first), None),
        };
    }
    let coll = collection_at(&toks, i, &first);
    (Some(first), coll)
}

/// Span name per the OpenTelemetry database convention:
/// `{operation} {collection}`, else `{operation}`, else the namespace, else
/// the system name. Empty values count as unknown.
pub fn span_name(operation: Option<&str>, collection: Option<&str>, namespace: Option<&str>, system: &str) -> String {
    let op = operation.filter(|s| !s.is_empty());
    let coll = collection.filter(|s| !s.is_empty());
    match (op, coll) {
        (Some(o), Some(c)) => format!("{o} {c}"),
        (Some(o), None) => o.to_string(),
        _ => match namespace.filter(|s| !s.is_empty()) {
            Some(n) => n.to_string(),
            None => system.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(sql: &str) -> String {
        sanitize(sql)
    }

    fn oc(sql: &str) -> (Option<String>, Option<String>) {
        operation_and_collection(sql)
    }

    fn op_coll(sql: &str, op: &str, coll: Option<&str>) {
        let (o, c) = oc(sql);
        assert_eq!(o.as_deref(), Some(op), "operation of {sql:?}");
        assert_eq!(c.as_deref(), coll, "collection of {sql:?}");
    }

    #[test]
    fn sanitize_strings() {
        assert_eq!(s("SELECT * FROM t WHERE a = 'x'"), "SELECT * FROM t WHERE a = ?");
        assert_eq!(s("SELECT 'it''s'"), "SELECT ?");
        assert_eq!(s("SELECT E'a\\'b', 'c'"), "SELECT ?, ?");
        assert_eq!(s("SELECT 'a\\'b' FROM t"), "SELECT ? FROM t");
        assert_eq!(s("SELECT e'x' || N'y' || B'0101' || X'FF' || U&'d\\0061'"), "SELECT ? || ? || ? || ? || ?");
        assert_eq!(s("SELECT ''"), "SELECT ?");
    }

    #[test]
    fn sanitize_dollar_quotes() {
        assert_eq!(s("SELECT $$a ' b$$"), "SELECT ?");
        assert_eq!(s("SELECT $fn$ body $$ inner $fn$ AS x"), "SELECT ? AS x");
        assert_eq!(s("SELECT $1, $22 FROM t"), "SELECT $1, $22 FROM t");
        assert_eq!(s("SELECT a$b FROM t"), "SELECT a$b FROM t");
        assert_eq!(s("SELECT $tag$ never closed"), "SELECT ?");
        assert_eq!(s("SELECT $ 1"), "SELECT $ ?");
    }

    #[test]
    fn sanitize_numbers() {
        assert_eq!(s("SELECT 1, 2.5, .5, 1e10, 1.5E-3, 0x1F, 1_000"), "SELECT ?, ?, ?, ?, ?, ?, ?");
        assert_eq!(s("SELECT t1.col_2 FROM t1 WHERE x1 > 10"), "SELECT t1.col_2 FROM t1 WHERE x1 > ?");
        assert_eq!(s("SELECT -5"), "SELECT -?");
        assert_eq!(s("SELECT a::int4 FROM t"), "SELECT a::int4 FROM t");
    }

    #[test]
    fn sanitize_keeps_identifiers_and_placeholders() {
        assert_eq!(s("SELECT \"Col 1\", `b2` FROM \"T\""), "SELECT \"Col 1\", `b2` FROM \"T\"");
        assert_eq!(s("SELECT \"a\"\"b\" FROM t"), "SELECT \"a\"\"b\" FROM t");
        assert_eq!(s("UPDATE t SET a = :name WHERE b = ?"), "UPDATE t SET a = :name WHERE b = ?");
    }

    #[test]
    fn sanitize_in_lists() {
        assert_eq!(s("SELECT * FROM t WHERE id IN (1, 2, 3)"), "SELECT * FROM t WHERE id IN (?)");
        assert_eq!(s("SELECT * FROM t WHERE id in ('a','b')"), "SELECT * FROM t WHERE id in (?)");
        assert_eq!(s("SELECT * FROM t WHERE id IN (?, ?, ?) AND x = 1"), "SELECT * FROM t WHERE id IN (?) AND x = ?");
        assert_eq!(s("WHERE id IN (1, a)"), "WHERE id IN (?, a)");
        assert_eq!(s("WHERE id IN ($1, $2)"), "WHERE id IN ($1, $2)");
        assert_eq!(s("WHERE id IN (SELECT 1)"), "WHERE id IN (SELECT ?)");
        assert_eq!(s("WHERE id IN (1,"), "WHERE id IN (?,");
        assert_eq!(s("WHERE id IN ( 1 , 2 ) "), "WHERE id IN ( ? )");
        assert_eq!(s("VALUES (1, 2), (3, 4)"), "VALUES (?, ?), (?, ?)");
    }

    #[test]
    fn sanitize_comments_and_whitespace() {
        assert_eq!(s("  SELECT  1 -- secret 'x'\n FROM\tt  "), "SELECT ? FROM t");
        assert_eq!(s("SELECT /* a /* nested */ b */ 1"), "SELECT ?");
        assert_eq!(s("SELECT/*c*/1"), "SELECT ?");
        assert_eq!(s("SELECT 1 /* unterminated 'x'"), "SELECT ?");
        assert_eq!(s("SELECT 1 # 2"), "SELECT ? # ?");
        assert_eq!(s(""), "");
        assert_eq!(s("   \n\t "), "");
        assert_eq!(s("-- only a comment"), "");
    }

    #[test]
    fn sanitize_unterminated_and_garbage() {
        assert_eq!(s("SELECT 'never ends"), "SELECT ?");
        assert_eq!(s("SELECT \"never ends"), "SELECT \"never ends");
        assert_eq!(s("SELECT 'a\\"), "SELECT ?");
        let garbage = "\u{0}\u{1}'\u{7f}$$\\\"`";
        let _ = s(garbage);
        let bytes: Vec<u8> = (0..=255u8).collect();
        let _ = s(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn sanitize_unicode() {
        assert_eq!(s("SELECT naïve, 'café' FROM données WHERE é = 'ü'"), "SELECT naïve, ? FROM données WHERE é = ?");
        assert_eq!(s("SELECT '日本語', 列1 FROM 表"), "SELECT ?, 列1 FROM 表");
        assert_eq!(s("SELECT 1 ➕ 2"), "SELECT ? ➕ ?");
        assert_eq!(s("SELECT\u{00a0}1"), "SELECT ?");
    }

    #[test]
    fn sanitize_is_bounded() {
        let long = format!("SELECT {} FROM t", "a, ".repeat(10_000));
        let out = s(&long);
        assert!(out.len() <= MAX_SANITIZED_LEN);
        let wide = format!("SELECT {}", "é".repeat(5000));
        let out = s(&wide);
        assert!(out.len() <= MAX_SANITIZED_LEN);
        assert!(out.is_char_boundary(out.len()));
        let many = format!("SELECT * FROM t WHERE id IN ({})", vec!["1"; 100_000].join(", "));
        assert_eq!(s(&many), "SELECT * FROM t WHERE id IN (?)");
    }

    #[test]
    fn operation_basic() {
        op_coll("SELECT * FROM orders WHERE id = 1", "SELECT", Some("orders"));
        op_coll("select a from public.orders o where o.id = 1", "SELECT", Some("public.orders"));
        op_coll("SELECT a FROM \"Public\".\"Order Items\" AS x", "SELECT", Some("Public.Order Items"));
        op_coll("SELECT 1", "SELECT", None);
        op_coll("SELECT * FROM t; SELECT * FROM u", "SELECT", Some("t"));
        op_coll("INSERT INTO t (a, b) VALUES (1, 2)", "INSERT", Some("t"));
        op_coll("insert ignore into `db`.`t` values (1)", "INSERT", Some("db.t"));
        op_coll("UPDATE t SET a = 1 WHERE b = 2", "UPDATE", Some("t"));
        op_coll("DELETE FROM only t WHERE a = 1", "DELETE", Some("t"));
        op_coll("CREATE TABLE IF NOT EXISTS s.t (id int)", "CREATE", Some("s.t"));
        op_coll("CREATE TEMP TABLE t (id int)", "CREATE", Some("t"));
        op_coll("CREATE INDEX i ON t (a)", "CREATE", None);
        op_coll("DROP TABLE IF EXISTS t", "DROP", Some("t"));
        op_coll("DROP TABLE a, b", "DROP", None);
        op_coll("ALTER TABLE t ADD COLUMN c int", "ALTER", Some("t"));
        op_coll("TRUNCATE TABLE t", "TRUNCATE", Some("t"));
        op_coll("TRUNCATE t", "TRUNCATE", Some("t"));
        op_coll("COPY t (a, b) FROM STDIN", "COPY", Some("t"));
        op_coll("COPY (SELECT 1) TO STDOUT", "COPY", None);
    }

    #[test]
    fn operation_multi_table_is_none() {
        op_coll("SELECT * FROM a JOIN b ON a.id = b.id", "SELECT", None);
        op_coll("SELECT * FROM a, b", "SELECT", None);
        op_coll("SELECT * FROM a x LEFT OUTER JOIN b y ON x.i = y.i", "SELECT", None);
        op_coll("SELECT * FROM (SELECT 1) s", "SELECT", None);
        op_coll("SELECT * FROM generate_series(1, 3)", "SELECT", None);
        op_coll("SELECT a FROM t UNION SELECT a FROM u", "SELECT", None);
        op_coll("SELECT (SELECT max(x) FROM u) FROM t WHERE y IN (SELECT y FROM v)", "SELECT", Some("t"));
    }

    #[test]
    fn operation_keywords_only() {
        for (sql, op) in [
            ("BEGIN", "BEGIN"),
            ("commit", "COMMIT"),
            ("ROLLBACK", "ROLLBACK"),
            ("SET search_path = x", "SET"),
            ("SHOW server_version", "SHOW"),
            ("CALL p(1)", "CALL"),
            ("EXPLAIN SELECT * FROM t", "EXPLAIN"),
            ("  /* c */ (SELECT 1)", "SELECT"),
        ] {
            op_coll(sql, op, None);
        }
    }

    #[test]
    fn operation_with_cte() {
        op_coll("WITH x AS (SELECT 1) SELECT * FROM orders", "SELECT", Some("orders"));
        op_coll("WITH x AS (SELECT 1) SELECT * FROM x", "SELECT", None);
        op_coll("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM r), y AS MATERIALIZED (SELECT 2) INSERT INTO t SELECT * FROM r", "INSERT", Some("t"));
        op_coll("WITH broken", "WITH", None);
    }

    #[test]
    fn operation_garbage() {
        assert_eq!(oc(""), (None, None));
        assert_eq!(oc("   "), (None, None));
        assert_eq!(oc("'literal'"), (None, None));
        assert_eq!(oc("123"), (None, None));
        assert_eq!(oc("\u{0}\u{1}\u{2}"), (None, None));
        op_coll("SELECT * FROM", "SELECT", None);
        op_coll("SELECT * FROM WHERE", "SELECT", None);
        op_coll("INSERT INTO", "INSERT", None);
        op_coll("SELECT 'unterminated FROM t", "SELECT", None);
        op_coll("UPDATE \"never closed", "UPDATE", Some("never closed"));
        let long = format!("SELECT {} FROM t", "a, ".repeat(50_000));
        let (o, _) = oc(&long);
        assert_eq!(o.as_deref(), Some("SELECT"));
    }

    #[test]
    fn operation_unicode() {
        op_coll("SELECT * FROM données", "SELECT", Some("données"));
        op_coll("INSERT INTO \"表\" VALUES ('é')", "INSERT", Some("表"));
        assert_eq!(oc("ÉCRIRE x"), (None, None));
    }

    #[test]
    fn span_names() {
        assert_eq!(span_name(Some("SELECT"), Some("orders"), Some("shop"), "postgresql"), "SELECT orders");
        assert_eq!(span_name(Some("SELECT"), None, Some("shop"), "postgresql"), "SELECT");
        assert_eq!(span_name(None, Some("orders"), Some("shop"), "postgresql"), "shop");
        assert_eq!(span_name(None, None, None, "postgresql"), "postgresql");
        assert_eq!(span_name(Some(""), None, Some(""), "mysql"), "mysql");
    }

    #[test]
    fn random_text_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet: Vec<char> =
            "SELECT FROM IN ( ) , ' \" ` $ $$ -- /* */ \\ e E x 0 1 9 . ? : ; é 日 \n\t".chars().collect();
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 80) as usize;
            let text: String = (0..len)
                .map(|k| {
                    let v = x.rotate_left(k as u32 * 7) as usize;
                    alphabet[v % alphabet.len()]
                })
                .collect();
            let out = sanitize(&text);
            assert!(out.len() <= MAX_SANITIZED_LEN);
            assert!(!out.starts_with(' ') && !out.ends_with(' '));
            let _ = operation_and_collection(&text);
        }
    }
}
