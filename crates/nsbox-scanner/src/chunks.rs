//! The source cut into top-level statements without parsing it: where each starts and ends,
//! the names it uses and may bind, and a bound on how deep its syntax tree can go.
//!
//! Parsing is nearly all of a scan's cost, and in analysis code the words a rule watches for
//! sit in a few statements out of hundreds. `lib.rs` parses only the statements that can
//! matter (see `partial` there); this module gives it what it needs to choose them with a
//! byte scan. Every answer here errs towards "may": a name that might be bound counts as
//! bound, a depth that might pass the limit counts as passing it. Anything the scan does not
//! understand (an unterminated string) makes it give up, and the caller parses everything.

use std::borrow::Cow;
use std::collections::HashMap;

use super::resolve::norm;

/// One top-level statement, with the lines that belong to it (`else:`, decorators, comments).
pub(crate) struct Chunk {
    pub start: usize,
    pub end: usize,
    /// An `import` keyword somewhere in it: imports bind names and are listed for the caller.
    pub has_import: bool,
    /// At least the deepest level the walker can reach in this statement's tree.
    pub depth_bound: usize,
    /// Names read anywhere in it (every occurrence not written after a dot).
    pub uses: Vec<u32>,
    /// Names it may bind to a value: occurrences not followed by `.`, `(` or `[` (those only
    /// read the name) and not named by `def`, `class` or `type`.
    pub binds: Vec<u32>,
    /// Names it defines with `def`, `class` or `type`: bindings the analysis does not follow
    /// into, so the statement need not be parsed to know what they bind.
    pub defines: Vec<u32>,
}

pub(crate) struct Split {
    pub chunks: Vec<Chunk>,
    /// Normalised name by id.
    pub names: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tok {
    Name(u32),
    /// A keyword that matters here (def, class, type, import, else...), by its text.
    Keyword(&'static str),
    Punct(u8),
    Other,
}

/// Keywords never name a variable; the ones this module reacts to are kept by name.
fn keyword(word: &str) -> Option<&'static str> {
    Some(match word {
        "False" => "False",
        "None" => "None",
        "True" => "True",
        "and" => "and",
        "as" => "as",
        "assert" => "assert",
        "async" => "async",
        "await" => "await",
        "break" => "break",
        "class" => "class",
        "continue" => "continue",
        "def" => "def",
        "del" => "del",
        "elif" => "elif",
        "else" => "else",
        "except" => "except",
        "finally" => "finally",
        "for" => "for",
        "from" => "from",
        "global" => "global",
        "if" => "if",
        "import" => "import",
        "in" => "in",
        "is" => "is",
        "lambda" => "lambda",
        "nonlocal" => "nonlocal",
        "not" => "not",
        "or" => "or",
        "pass" => "pass",
        "raise" => "raise",
        "return" => "return",
        "try" => "try",
        "while" => "while",
        "with" => "with",
        "yield" => "yield",
        _ => return None,
    })
}

/// Lines that continue the compound statement above them rather than start a new one.
const CONTINUATIONS: &[&str] = &["else", "elif", "except", "finally"];

struct Line {
    indent: usize,
    /// Tokens of the logical line, an f-string counting once per byte (its expressions are
    /// inside it).
    weight: usize,
}

struct Builder<'s> {
    code: &'s str,
    /// Attacker-chosen keys: a seeded hash, as std's, but several times faster on short ones.
    index: HashMap<Cow<'s, str>, u32, ahash::RandomState>,
    names: Vec<String>,
    chunks: Vec<Chunk>,
    /// Indentation columns open in the current chunk.
    indents: Vec<usize>,
    elifs: usize,
    line: Option<Line>,
    prev_line_decorator: bool,
    /// The last two significant tokens, and the name waiting for its follower (with whether
    /// it was read as an argument or index, see `Bracket`).
    prev: Tok,
    prev2: Tok,
    pending: Option<(u32, bool)>,
    brackets: Vec<Bracket>,
    /// The logical line starts with `case`: its brackets hold capture patterns.
    case_line: bool,
}

/// An open bracket. Inside the parentheses of a call or the brackets of a subscript, a name
/// followed by `,`, `)`, `]`, `=` or an operator is an argument or index being read, except
/// in a lambda's parameters or a comprehension's targets (`f(x for a, b in y)`).
struct Bracket {
    reads: bool,
    lambdas: u32,
    for_target: bool,
}

impl<'s> Builder<'s> {
    fn intern(&mut self, raw: &'s str) -> u32 {
        let name = norm(raw);
        if let Some(&id) = self.index.get(&name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.clone().into_owned());
        self.index.insert(name, id);
        id
    }

    fn chunk(&mut self) -> &mut Chunk {
        self.chunks.last_mut().expect("a token opens a chunk first")
    }

    /// A token at `at`; `line_start` is its column when it opens a logical line.
    fn token(&mut self, tok: Tok, at: usize, line_start: Option<usize>, weight: usize) {
        if let Some(indent) = line_start {
            self.end_line();
            let continues = match tok {
                Tok::Keyword(k) => CONTINUATIONS.contains(&k),
                _ => false,
            };
            if self.chunks.is_empty() || (indent == 0 && !continues && !self.prev_line_decorator) {
                if let Some(last) = self.chunks.last_mut() {
                    last.end = at;
                }
                self.chunks.push(Chunk {
                    start: at,
                    end: self.code.len(),
                    has_import: false,
                    depth_bound: 0,
                    uses: Vec::new(),
                    binds: Vec::new(),
                    defines: Vec::new(),
                });
                self.indents.clear();
                self.elifs = 0;
            }
            if tok == Tok::Keyword("elif") {
                self.elifs += 1;
            }
            self.prev_line_decorator = tok == Tok::Punct(b'@');
            self.line = Some(Line { indent, weight: 0 });
            self.prev = Tok::Other;
            self.prev2 = Tok::Other;
            self.brackets.clear();
            self.case_line = matches!(tok, Tok::Name(n) if self.names[n as usize] == "case");
        }
        if let Some(line) = &mut self.line {
            line.weight += weight;
        }
        // The name before this token is now classified by what follows it.
        let defined_before = self.defines(self.prev2);
        if let Some((id, read_as_argument)) = self.pending.take() {
            if defined_before {
                self.chunk().defines.push(id);
            } else if matches!(tok, Tok::Punct(b'.' | b'(' | b'[')) {
                // x.attr, x(...), x[...]: a read whatever surrounds it.
            } else if read_as_argument && !matches!(tok, Tok::Punct(b':') | Tok::Keyword("in")) {
                // f(x, y=x + 1), d[x]: read; `:=` and `for x in` bind.
            } else {
                self.chunk().binds.push(id);
            }
        }
        match tok {
            Tok::Name(id) if self.prev != Tok::Punct(b'.') => {
                self.chunk().uses.push(id);
                let read_as_argument = self
                    .brackets
                    .last()
                    .is_some_and(|b| b.reads && b.lambdas == 0 && !b.for_target);
                self.pending = Some((id, read_as_argument));
            }
            Tok::Keyword("import") => self.chunk().has_import = true,
            Tok::Keyword("lambda") => {
                if let Some(b) = self.brackets.last_mut() {
                    b.lambdas += 1;
                }
            }
            Tok::Keyword("for") => {
                if let Some(b) = self.brackets.last_mut() {
                    b.for_target = true;
                }
            }
            Tok::Keyword("in") => {
                if let Some(b) = self.brackets.last_mut() {
                    b.for_target = false;
                }
            }
            Tok::Punct(b':') => {
                if let Some(b) = self.brackets.last_mut() {
                    b.lambdas = b.lambdas.saturating_sub(1);
                }
            }
            Tok::Punct(open @ (b'(' | b'[' | b'{')) => {
                // A call or subscript follows what it applies to; a def's or class's
                // parentheses and brackets hold parameters, bases or type parameters.
                let applied = matches!(self.prev, Tok::Name(_) | Tok::Punct(b')' | b']'));
                let reads = open != b'{'
                    && applied
                    && !self.case_line
                    && !(matches!(self.prev, Tok::Name(_)) && defined_before);
                self.brackets.push(Bracket {
                    reads,
                    lambdas: 0,
                    for_target: false,
                });
            }
            Tok::Punct(b')' | b']' | b'}') => {
                self.brackets.pop();
            }
            _ => {}
        }
        self.prev2 = self.prev;
        self.prev = tok;
    }

    /// Whether a name after token `t` is the one a `def`, `class` or `type` statement defines.
    fn defines(&self, t: Tok) -> bool {
        match t {
            Tok::Keyword(k) => k == "def" || k == "class",
            Tok::Name(n) => self.names[n as usize] == "type",
            _ => false,
        }
    }

    /// Names inside an f-string's text: read, and bound too if it holds a walrus.
    fn fstring_words(&mut self, body: &'s str) {
        let walrus = body.contains(":=");
        for word in words(body) {
            if word == "import" {
                self.chunk().has_import = true;
            }
            let id = self.intern(word);
            let chunk = self.chunk();
            chunk.uses.push(id);
            if walrus {
                chunk.binds.push(id);
            }
        }
    }

    fn end_line(&mut self) {
        if let Some((id, _)) = self.pending.take() {
            self.chunk().binds.push(id);
        }
        let Some(line) = self.line.take() else { return };
        while self.indents.last().is_some_and(|&c| c > line.indent) {
            self.indents.pop();
        }
        if line.indent > 0 && self.indents.last() != Some(&line.indent) {
            self.indents.push(line.indent);
        }
        // A statement at indentation level k sits under at most k compound statements; each
        // token (or f-string byte) makes at most one node of its own; elif chains nest
        // without indenting; the rest is the statement wrappers (Expr, MatchValue...).
        let bound = 2 * (self.indents.len() + 1) + line.weight + self.elifs + 4;
        let chunk = self.chunk();
        chunk.depth_bound = chunk.depth_bound.max(bound);
    }
}

/// ahash keyed from std's random keys (drawn once per process), so the names of a source
/// cannot be chosen to collide.
fn seeded() -> ahash::RandomState {
    use std::hash::{BuildHasher, Hasher};
    static SEEDS: std::sync::OnceLock<[u64; 4]> = std::sync::OnceLock::new();
    let s = SEEDS.get_or_init(|| {
        let keys = std::collections::hash_map::RandomState::new();
        std::array::from_fn(|i| {
            let mut h = keys.build_hasher();
            h.write_usize(i);
            h.finish()
        })
    });
    ahash::RandomState::with_seeds(s[0], s[1], s[2], s[3])
}

/// Identifier-like runs of a text (non-ASCII bytes included, as the prefilter does).
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_' || !c.is_ascii()))
        .filter(|w| !w.is_empty() && !w.as_bytes()[0].is_ascii_digit())
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Cuts `code` into top-level statements; None when the scan meets something it does not
/// follow (the caller then parses the whole source).
pub(crate) fn split(code: &str) -> Option<Split> {
    let b = code.as_bytes();
    let mut x = Builder {
        code,
        index: HashMap::with_hasher(seeded()),
        names: Vec::new(),
        chunks: Vec::new(),
        indents: Vec::new(),
        elifs: 0,
        line: None,
        prev_line_decorator: false,
        prev: Tok::Other,
        prev2: Tok::Other,
        pending: None,
        brackets: Vec::new(),
        case_line: false,
    };
    let mut i = if code.starts_with('\u{feff}') { 3 } else { 0 };
    let mut depth = 0usize;
    // Set at the start of each physical line outside brackets: the column of its first
    // token, if that line starts a logical line.
    let mut at_line_start = true;
    let mut column = 0usize;
    while i < b.len() {
        let c = b[i];
        if at_line_start {
            match c {
                b' ' => {
                    column += 1;
                    i += 1;
                    continue;
                }
                b'\t' => {
                    column = (column / 8 + 1) * 8;
                    i += 1;
                    continue;
                }
                b'\x0c' => {
                    column = 0;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        match c {
            b'\n' | b'\r' => {
                i += 1;
                if depth == 0 {
                    at_line_start = true;
                    column = 0;
                }
                continue;
            }
            b' ' | b'\t' | b'\x0c' => {
                i += 1;
                continue;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
                continue;
            }
            b'\\' => {
                // Only a line continuation is valid here.
                match b.get(i + 1) {
                    Some(b'\n') => i += 2,
                    Some(b'\r') => i += if b.get(i + 2) == Some(&b'\n') { 3 } else { 2 },
                    _ => return None,
                }
                continue;
            }
            _ => {}
        }
        let line_start = at_line_start.then_some(column);
        at_line_start = false;
        let start = i;
        if is_name_byte(c) && !c.is_ascii_digit() {
            while i < b.len() && is_name_byte(b[i]) {
                i += 1;
            }
            // A string prefix (f, rb, u...) glued to a quote.
            if i < b.len() && (b[i] == b'\'' || b[i] == b'"') && i - start <= 2 {
                let prefix = code[start..i].to_ascii_lowercase();
                if prefix.chars().all(|p| matches!(p, 'r' | 'b' | 'u' | 'f')) {
                    let fstring = prefix.contains('f');
                    let body_start = i;
                    i = skip_string(b, i)?;
                    let weight = if fstring { i - start } else { 1 };
                    x.token(Tok::Other, start, line_start, weight);
                    if fstring {
                        x.fstring_words(&code[body_start..i]);
                    }
                    continue;
                }
            }
            let word = &code[start..i];
            let tok = match keyword(word) {
                Some(k) => Tok::Keyword(k),
                None => Tok::Name(x.intern(word)),
            };
            x.token(tok, start, line_start, 1);
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            while i < b.len() && (is_name_byte(b[i]) || b[i] == b'.') {
                i += 1;
            }
            x.token(Tok::Other, start, line_start, 1);
            continue;
        }
        if c == b'\'' || c == b'"' {
            i = skip_string(b, i)?;
            x.token(Tok::Other, start, line_start, 1);
            continue;
        }
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.checked_sub(1)?,
            _ => {}
        }
        i += 1;
        x.token(Tok::Punct(c), start, line_start, 1);
    }
    if depth != 0 {
        return None;
    }
    x.end_line();
    Some(Split {
        chunks: x.chunks,
        names: x.names,
    })
}

/// Skips the string literal whose opening quote is at `i`; None if it never closes.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    let q = b[i];
    let triple = b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q);
    i += if triple { 3 } else { 1 };
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if c == q => {
                if !triple {
                    return Some(i + 1);
                }
                if b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q) {
                    return Some(i + 3);
                }
                i += 1;
            }
            b'\n' | b'\r' if !triple => return None,
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &Split, ids: &[u32]) -> Vec<String> {
        let mut v: Vec<String> = ids.iter().map(|&i| s.names[i as usize].clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn statements_and_their_names() {
        let code = "import numpy as np\n@dec\ndef f(a, b=1):\n    return np.mean(a)\nelse_ = 2\nif x:\n    y = 1\nelse:\n    y = 2\nz = f\"{w}\" + '''\nimport os\n'''\n";
        let s = split(code).expect("splits");
        let starts: Vec<&str> = s
            .chunks
            .iter()
            .map(|c| code[c.start..c.end].lines().next().unwrap_or(""))
            .collect();
        assert_eq!(
            starts,
            vec![
                "import numpy as np",
                "@dec",
                "else_ = 2",
                "if x:",
                "z = f\"{w}\" + '''"
            ]
        );
        assert!(s.chunks[0].has_import && !s.chunks[4].has_import);
        assert_eq!(names(&s, &s.chunks[1].binds), vec!["a", "b", "dec"]);
        assert_eq!(names(&s, &s.chunks[1].defines), vec!["f"]);
        assert_eq!(
            names(&s, &s.chunks[1].uses),
            vec!["a", "b", "dec", "f", "np"]
        );
        assert_eq!(names(&s, &s.chunks[4].binds), vec!["z"]);
    }

    #[test]
    fn arguments_are_read_and_targets_bound() {
        let code = "f(a, k=b + c, *d)[e, g]\nh(lambda p, q: p, (r := 1), [t for t, u in v], w for x, y in z)\ndef m(n, o=len(s)): pass\nmatch v:\n    case C(cap, k=cap2):\n        pass\nprint(f\"{(fw := 1)}\")\n";
        let s = split(code).expect("splits");
        let all: Vec<u32> = s.chunks.iter().flat_map(|c| c.binds.clone()).collect();
        let bound = names(&s, &all);
        for target in [
            "cap", "cap2", "fw", "n", "o", "p", "q", "r", "t", "u", "x", "y",
        ] {
            assert!(bound.iter().any(|b| b == target), "{target} in {bound:?}");
        }
        for read in ["a", "b", "c", "d", "e", "g", "s", "w", "z"] {
            assert!(!bound.iter().any(|b| b == read), "{read} in {bound:?}");
        }
    }

    #[test]
    fn what_it_does_not_follow() {
        assert!(split("x = 'abc\ny = 1\n").is_none());
        assert!(split("x = (1,\n").is_none());
        assert!(split("x = 1 \\ y\n").is_none());
    }

    #[test]
    fn depth_bound_covers_long_lines_and_elif_chains() {
        let long = format!("x = {}1\n", "-".repeat(300));
        assert!(split(&long).expect("splits").chunks[0].depth_bound > 300);
        let mut chain = String::from("if a:\n    pass\n");
        for _ in 0..250 {
            chain.push_str("elif a:\n    pass\n");
        }
        assert!(split(&chain).expect("splits").chunks[0].depth_bound > 250);
    }
}
