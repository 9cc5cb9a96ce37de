//! The scanner policy: the TOML schema, its validation, and the lookup tables built from it.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use serde::Deserialize;

use super::ScannerError;

/// The embedded default, shared with the main crate through the manifest directory so the
/// same file is used whichever crate builds this module.
const BUILTIN_POLICY: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../policy/scanner.toml"
));

/// FNV-1a: a few times faster than SipHash on identifier-sized keys. Only for tables whose
/// keys come from the policy; attacker-chosen keys (the program's variables) keep std's
/// DoS-resistant hasher.
#[derive(Default, Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;
pub(crate) type FastSet<K> = HashSet<K, BuildHasherDefault<Fnv>>;

/// Depth the walker may reach when the policy has no `nesting` rule. The walker recurses, so
/// a cap is needed for stack safety whatever the policy says.
const DEFAULT_MAX_DEPTH: usize = 200;
/// Largest `max_depth` accepted: the walk must fit a 2 MiB thread stack even in debug builds.
const MAX_DEPTH_CEILING: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(rename = "rule", default)]
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    id: String,
    name: String,
    category: Category,
    comment: String,
    #[serde(default)]
    modules: Vec<String>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    attributes: Vec<String>,
    #[serde(default)]
    builtins: Vec<String>,
    on: Option<AttrScope>,
    file_access: Option<FileAccessSpec>,
    kind: Option<DynamicKind>,
    #[serde(default)]
    sinks: Vec<SinkSpec>,
    #[serde(default)]
    allowed_encodings: Vec<String>,
    max_depth: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Category {
    Module,
    Call,
    Attribute,
    Builtin,
    Dynamic,
}

impl Category {
    fn as_str(self) -> &'static str {
        match self {
            Category::Module => "module",
            Category::Call => "call",
            Category::Attribute => "attribute",
            Category::Builtin => "builtin",
            Category::Dynamic => "dynamic",
        }
    }
}

/// Where an attribute rule counts (see the policy file's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AttrScope {
    #[default]
    Any,
    Module,
    Literal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum DynamicKind {
    Import,
    Attribute,
    Namespace,
    CodeString,
    SourceEncoding,
    Nesting,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAccessSpec {
    modes: FileModes,
    paths: Vec<String>,
    #[serde(default)]
    allowed: Vec<String>,
    #[serde(default)]
    relative: bool,
    #[serde(default)]
    suffixes: Vec<String>,
    #[serde(default)]
    segments: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FileModes {
    Write,
    /// Modes that read (r, +, or none given): a write is another rule's business.
    Read,
    Any,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkSpec {
    name: Option<String>,
    attribute: Option<String>,
    arg: i64,
    keyword: Option<String>,
    base: Option<usize>,
    #[serde(default = "yes")]
    report_dynamic: bool,
}

fn yes() -> bool {
    true
}

/// Human-facing identity of a rule, copied into every violation it produces.
#[derive(Debug, Clone)]
pub(crate) struct RuleMeta {
    pub id: String,
    pub name: String,
    pub category: &'static str,
}

/// A dotted-name pattern, matched against the tail of a qualified name.
#[derive(Debug, Clone)]
struct DottedPattern {
    comps: Vec<String>,
    /// The last component is a prefix (`os.exec*`); empty for `subprocess.*`.
    glob_last: bool,
    rule: usize,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct DottedIndex {
    patterns: Vec<DottedPattern>,
    /// Non-glob patterns by last component, so most attribute names cost one hash probe.
    by_last: FastMap<String, Vec<usize>>,
    /// `os.exec*`: prefix patterns, few, checked by a starts_with on the last component.
    prefix_globs: Vec<usize>,
    /// `subprocess.*`: patterns by the component before the `*`.
    glob_heads: FastMap<String, Vec<usize>>,
    /// Components in the longest pattern: only that many trailing components can matter.
    pub(crate) max_comps: usize,
}

impl DottedIndex {
    fn add(&mut self, name: &str, rule: usize) {
        let glob_last = name.ends_with('*');
        let trimmed = name.trim_end_matches('*');
        let comps: Vec<String> = trimmed.split('.').map(str::to_owned).collect();
        let idx = self.patterns.len();
        self.max_comps = self.max_comps.max(comps.len());
        if glob_last {
            if comps.last().is_some_and(|l| l.is_empty()) && comps.len() >= 2 {
                let head = comps[comps.len() - 2].clone();
                self.glob_heads.entry(head).or_default().push(idx);
            } else {
                self.prefix_globs.push(idx);
            }
        } else if let Some(last) = comps.last() {
            self.by_last.entry(last.clone()).or_default().push(idx);
        }
        self.patterns.push(DottedPattern {
            comps,
            glob_last,
            rule,
        });
    }

    /// Rules whose pattern matches a suffix (at component boundaries) of `comps`.
    pub(crate) fn matches(&self, comps: &[&str], out: &mut Vec<usize>) {
        let Some(last) = comps.last() else { return };
        let head = comps.len().checked_sub(2).map(|i| comps[i]);
        let candidates = self
            .by_last
            .get(*last)
            .into_iter()
            .flatten()
            .chain(
                head.and_then(|h| self.glob_heads.get(h))
                    .into_iter()
                    .flatten(),
            )
            .chain(self.prefix_globs.iter().filter(|&&p| {
                let pat = &self.patterns[p];
                last.starts_with(pat.comps[pat.comps.len() - 1].as_str())
            }));
        for &p in candidates {
            let pat = &self.patterns[p];
            let n = pat.comps.len();
            if comps.len() < n {
                continue;
            }
            let tail = &comps[comps.len() - n..];
            let head_ok = tail[..n - 1]
                .iter()
                .zip(&pat.comps[..n - 1])
                .all(|(a, b)| *a == b);
            let last_ok = if pat.glob_last {
                tail[n - 1].starts_with(pat.comps[n - 1].as_str())
            } else {
                tail[n - 1] == pat.comps[n - 1]
            };
            if head_ok && last_ok && !out.contains(&pat.rule) {
                out.push(pat.rule);
            }
        }
    }

    /// True when some pattern could match a name ending in `.head.last` (cheap pre-check).
    pub(crate) fn may_match(&self, head: Option<&str>, last: &str) -> bool {
        self.by_last.contains_key(last)
            || head.is_some_and(|h| self.glob_heads.contains_key(h))
            || self.prefix_globs.iter().any(|&p| {
                let pat = &self.patterns[p];
                last.starts_with(pat.comps[pat.comps.len() - 1].as_str())
            })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct FileRule {
    pub rule: usize,
    pub modes: FileModes,
    pub paths: Vec<String>,
    pub allowed: Vec<String>,
    pub relative: bool,
    pub suffixes: Vec<String>,
    /// Runs of whole path components that count wherever they appear (`.ssh`).
    pub segments: Vec<Vec<String>>,
    /// Qualified names of the functions covered (`builtins.open`, `io.open`).
    pub functions: DottedIndex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SinkKind {
    Import,
    Attribute,
    /// A string evaluated as an expression by a library (pandas query/eval).
    CodeString,
}

#[derive(Debug, Clone)]
pub(crate) struct Sink {
    pub rule: usize,
    pub kind: SinkKind,
    /// Qualified function name, or None for an attribute sink.
    pub name: Option<String>,
    pub attribute: Option<String>,
    pub arg: i64,
    pub keyword: Option<String>,
    pub base: Option<usize>,
    pub report_dynamic: bool,
}

/// Words whose presence (as identifiers anywhere in the source) is necessary for any rule to
/// fire; code with none of them cannot produce a violation and skips the parse.
#[derive(Debug, Clone, Default)]
pub(crate) struct Triggers {
    pub words: FastSet<String>,
    /// Builtin names: they only resolve to the builtin when not written as `.name`.
    pub bare_words: FastSet<String>,
    pub prefixes: Vec<String>,
}

impl Triggers {
    fn word(&mut self, w: &str) {
        if !w.is_empty() {
            self.words.insert(w.to_owned());
        }
    }

    /// Adds one component of a dotted pattern. Every component of a match appears in the
    /// source (imports and attribute accesses spell them) unless the name was built from
    /// strings, which needs a sink that is a trigger itself; so any component will do, and
    /// the one least likely to occur in ordinary analysis code is picked. `builtins.x` is
    /// reached by the bare name `x`.
    fn dotted(&mut self, name: &str) {
        if let Some(bare) = name.strip_prefix("builtins.") {
            if !bare.contains('.') {
                self.bare_words
                    .insert(bare.trim_end_matches('*').to_owned());
                return;
            }
        }
        let comps: Vec<&str> = name.split('.').collect();
        let last = comps.len() - 1;
        // (text, is a prefix, rank): uncommon words first, then longer, then later.
        let mut best: Option<(&str, bool, (bool, usize, usize))> = None;
        for (i, c) in comps.iter().enumerate() {
            let (text, prefix) = match c.strip_suffix('*') {
                Some(p) if i == last => (p, true),
                _ => (*c, false),
            };
            if text.is_empty() {
                continue;
            }
            let rank = (!COMMON_WORDS.contains(&text), text.len(), i);
            if best.is_none_or(|(_, _, r)| rank > r) {
                best = Some((text, prefix, rank));
            }
        }
        match best {
            Some((p, true, _)) => self.prefixes.push(p.to_owned()),
            Some((w, false, _)) => self.word(w),
            None => {}
        }
    }
}

/// Identifiers nearly every analysis script contains; a poor choice of trigger.
const COMMON_WORDS: &[&str] = &[
    "pandas",
    "pd",
    "numpy",
    "np",
    "matplotlib",
    "pyplot",
    "plt",
    "scipy",
    "seaborn",
    "sns",
    "json",
    "io",
    "re",
    "math",
    "time",
    "datetime",
    "sys",
    "load",
    "loads",
    "open",
    "read",
    "get",
    "run",
    "data",
];

/// A compiled scanner policy. Cheap to clone; build it once and share it.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) rules: Vec<RuleMeta>,
    pub(crate) modules: Vec<(String, usize)>,
    pub(crate) dotted: DottedIndex,
    pub(crate) attributes: FastMap<String, Vec<(usize, AttrScope)>>,
    pub(crate) file_rules: Vec<FileRule>,
    pub(crate) sinks: Vec<Sink>,
    /// Qualified names (`builtins.globals`) of the namespace functions and their rule.
    pub(crate) namespace: Vec<(String, usize)>,
    pub(crate) encodings: Option<(usize, Vec<String>)>,
    pub(crate) nesting_rule: Option<usize>,
    pub(crate) max_depth: usize,
    pub(crate) triggers: Triggers,
    /// Last components of every callable the checker treats specially (sinks, namespace
    /// functions, file functions): a call whose callee ends otherwise needs no resolution.
    pub(crate) callee_words: FastSet<String>,
    /// Builtins some rule, sink or file rule names (`eval`, `getattr`, `open`...).
    pub(crate) watched_builtins: FastSet<String>,
}

impl Policy {
    /// The embedded default policy (`policy/scanner.toml`).
    pub fn builtin() -> Policy {
        builtin_ref().clone()
    }

    /// Parses and validates a policy from TOML text.
    pub fn from_toml(text: &str) -> Result<Policy, ScannerError> {
        let file: PolicyFile = toml::from_str(text).map_err(ScannerError::Parse)?;
        compile(file)
    }

    /// Reads a policy file from disk.
    pub fn from_path(path: &Path) -> Result<Policy, ScannerError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScannerError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Policy::from_toml(&text)
    }

    /// (id, name) of every rule, in file order.
    pub fn rules(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rules.iter().map(|r| (r.id.as_str(), r.name.as_str()))
    }
}

/// The embedded policy, parsed once per process.
pub(crate) fn builtin_ref() -> &'static Policy {
    static BUILTIN: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
    BUILTIN.get_or_init(|| {
        // A unit test parses the embedded file, so this cannot fail in a built binary.
        Policy::from_toml(BUILTIN_POLICY).expect("embedded policy/scanner.toml is valid")
    })
}

fn invalid(rule: &str, reason: impl Into<String>) -> ScannerError {
    ScannerError::Invalid {
        rule: rule.to_owned(),
        reason: reason.into(),
    }
}

fn valid_dotted(name: &str, allow_glob: bool) -> bool {
    let (body, glob) = match name.strip_suffix('*') {
        Some(body) if allow_glob => (body, true),
        _ => (name, false),
    };
    let comps: Vec<&str> = body.split('.').collect();
    let n = comps.len();
    comps
        .iter()
        .enumerate()
        .all(|(i, c)| valid_ident(c) || (glob && i == n - 1 && i > 0 && c.is_empty()))
}

fn valid_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks that a rule carries exactly the fields its category uses.
fn check_fields(spec: &RuleSpec) -> Result<(), ScannerError> {
    let id = spec.id.as_str();
    let present = [
        ("modules", !spec.modules.is_empty()),
        ("names", !spec.names.is_empty()),
        ("attributes", !spec.attributes.is_empty()),
        ("builtins", !spec.builtins.is_empty()),
        ("on", spec.on.is_some()),
        ("file_access", spec.file_access.is_some()),
        ("kind", spec.kind.is_some()),
        ("sinks", !spec.sinks.is_empty()),
        ("allowed_encodings", !spec.allowed_encodings.is_empty()),
        ("max_depth", spec.max_depth.is_some()),
    ];
    let (required, optional): (&[&str], &[&str]) = match (spec.category, spec.kind) {
        (Category::Module, _) => (&["modules"], &[]),
        (Category::Call, _) => (&["names"], &[]),
        (Category::Attribute, _) => (&["attributes"], &["on"]),
        (Category::Builtin, _) => (&["builtins"], &["names", "file_access"]),
        (
            Category::Dynamic,
            Some(DynamicKind::Import | DynamicKind::Attribute | DynamicKind::CodeString),
        ) => (&["kind", "sinks"], &[]),
        (Category::Dynamic, Some(DynamicKind::Namespace)) => (&["kind", "builtins"], &[]),
        (Category::Dynamic, Some(DynamicKind::SourceEncoding)) => {
            (&["kind", "allowed_encodings"], &[])
        }
        (Category::Dynamic, Some(DynamicKind::Nesting)) => (&["kind", "max_depth"], &[]),
        (Category::Dynamic, None) => return Err(invalid(id, "category `dynamic` needs a `kind`")),
    };
    for (field, is_set) in present {
        if required.contains(&field) && !is_set {
            return Err(invalid(
                id,
                format!(
                    "category `{}` needs a non-empty `{field}`",
                    spec.category.as_str()
                ),
            ));
        }
        if is_set && !required.contains(&field) && !optional.contains(&field) {
            return Err(invalid(
                id,
                format!(
                    "`{field}` has no meaning for this rule's category `{}`",
                    spec.category.as_str()
                ),
            ));
        }
    }
    Ok(())
}

fn compile(file: PolicyFile) -> Result<Policy, ScannerError> {
    let mut policy = Policy {
        rules: Vec::with_capacity(file.rules.len()),
        modules: Vec::new(),
        dotted: DottedIndex::default(),
        attributes: FastMap::default(),
        file_rules: Vec::new(),
        sinks: Vec::new(),
        namespace: Vec::new(),
        encodings: None,
        nesting_rule: None,
        max_depth: DEFAULT_MAX_DEPTH,
        triggers: Triggers::default(),
        callee_words: FastSet::default(),
        watched_builtins: FastSet::default(),
    };
    // Resolution itself reads these (namespace dicts, sys.modules, the builtins module), so
    // code without them cannot reach a builtin through a string whatever the rules are.
    for w in ["__dict__", "__builtins__", "builtins", "modules"] {
        policy.triggers.word(w);
    }
    let mut seen = HashSet::new();
    for spec in file.rules {
        let id = spec.id.as_str();
        if !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            || id.is_empty()
        {
            return Err(invalid(id, "ids are non-empty kebab-case ([a-z0-9-])"));
        }
        if !seen.insert(spec.id.clone()) {
            return Err(invalid(id, "duplicate id"));
        }
        if spec.name.trim().is_empty() {
            return Err(invalid(id, "empty `name`"));
        }
        if spec.comment.trim().is_empty() {
            return Err(invalid(id, "empty `comment`: say why the rule exists"));
        }
        check_fields(&spec)?;
        let r = policy.rules.len();
        policy.rules.push(RuleMeta {
            id: spec.id.clone(),
            name: spec.name.clone(),
            category: spec.category.as_str(),
        });
        match spec.category {
            Category::Module => {
                for m in &spec.modules {
                    if !valid_dotted(m, false) {
                        return Err(invalid(id, format!("bad module name `{m}`")));
                    }
                    for c in m.split('.') {
                        policy.triggers.word(c);
                    }
                    policy.modules.push((m.clone(), r));
                }
            }
            Category::Call => {
                for n in &spec.names {
                    if !valid_dotted(n, true) || !n.contains('.') {
                        return Err(invalid(
                            id,
                            format!("bad dotted name `{n}` (module.attr, optional trailing *)"),
                        ));
                    }
                    policy.dotted.add(n, r);
                    policy.triggers.dotted(n);
                }
            }
            Category::Attribute => {
                let scope = spec.on.unwrap_or_default();
                for a in &spec.attributes {
                    if !valid_ident(a) {
                        return Err(invalid(id, format!("bad attribute name `{a}`")));
                    }
                    policy.triggers.word(a);
                    policy
                        .attributes
                        .entry(a.clone())
                        .or_default()
                        .push((r, scope));
                }
            }
            Category::Builtin => compile_builtin(&mut policy, &spec, r)?,
            Category::Dynamic => compile_dynamic(&mut policy, &spec, r)?,
        }
    }
    index_callees(&mut policy);
    Ok(policy)
}

/// Fills the fast-path tables from the compiled rules.
fn index_callees(policy: &mut Policy) {
    let mut callables: Vec<String> = Vec::new();
    for s in &policy.sinks {
        callables.extend(s.name.clone());
        callables.extend(s.attribute.clone());
    }
    callables.extend(policy.namespace.iter().map(|(n, _)| n.clone()));
    for fr in &policy.file_rules {
        callables.extend(fr.functions.patterns.iter().map(|p| p.comps.join(".")));
    }
    for q in &callables {
        if let Some(last) = q.rsplit('.').next() {
            policy.callee_words.insert(last.to_owned());
        }
    }
    let dotted = policy.dotted.patterns.iter().map(|p| p.comps.join("."));
    for q in callables.iter().cloned().chain(dotted) {
        if let Some(b) = q.strip_prefix("builtins.") {
            policy.watched_builtins.insert(b.to_owned());
        }
    }
}

fn compile_builtin(policy: &mut Policy, spec: &RuleSpec, r: usize) -> Result<(), ScannerError> {
    let id = spec.id.as_str();
    let mut qualified = Vec::new();
    for b in &spec.builtins {
        if !valid_ident(b) {
            return Err(invalid(id, format!("bad builtin name `{b}`")));
        }
        policy.triggers.bare_words.insert(b.clone());
        qualified.push(format!("builtins.{b}"));
    }
    for n in &spec.names {
        if !valid_dotted(n, false) || !n.contains('.') {
            return Err(invalid(id, format!("bad dotted name `{n}`")));
        }
        policy.triggers.dotted(n);
        qualified.push(n.clone());
    }
    match &spec.file_access {
        None => {
            for q in &qualified {
                policy.dotted.add(q, r);
            }
        }
        Some(fa) => {
            let mut functions = DottedIndex::default();
            for q in &qualified {
                functions.add(q, r);
            }
            for p in fa.paths.iter().chain(&fa.allowed) {
                if !p.starts_with('/') {
                    return Err(invalid(
                        id,
                        format!("file_access path `{p}` is not absolute"),
                    ));
                }
            }
            let mut segments = Vec::new();
            for seg in &fa.segments {
                let comps: Vec<String> = seg.split('/').map(str::to_owned).collect();
                if comps.iter().any(|c| c.is_empty() || c == "." || c == "..") {
                    return Err(invalid(
                        id,
                        format!("file_access segment `{seg}` is not a relative run of names"),
                    ));
                }
                segments.push(comps);
            }
            if fa.paths.is_empty() {
                return Err(invalid(
                    id,
                    "file_access needs at least one entry in `paths`",
                ));
            }
            policy.file_rules.push(FileRule {
                rule: r,
                modes: fa.modes,
                paths: fa.paths.clone(),
                allowed: fa.allowed.clone(),
                relative: fa.relative,
                suffixes: fa.suffixes.clone(),
                segments,
                functions,
            });
        }
    }
    Ok(())
}

fn compile_dynamic(policy: &mut Policy, spec: &RuleSpec, r: usize) -> Result<(), ScannerError> {
    let id = spec.id.as_str();
    match spec.kind {
        Some(kind @ (DynamicKind::Import | DynamicKind::Attribute | DynamicKind::CodeString)) => {
            for s in &spec.sinks {
                match (&s.name, &s.attribute) {
                    (Some(n), None) => {
                        if !valid_dotted(n, false) || !n.contains('.') {
                            return Err(invalid(id, format!("bad sink name `{n}`")));
                        }
                        policy.triggers.dotted(n);
                    }
                    (None, Some(a)) => {
                        if !valid_ident(a) {
                            return Err(invalid(id, format!("bad sink attribute `{a}`")));
                        }
                        policy.triggers.word(a);
                    }
                    _ => {
                        return Err(invalid(
                            id,
                            "each sink has exactly one of `name` or `attribute`",
                        ))
                    }
                }
                if kind != DynamicKind::Attribute && s.base.is_some() {
                    return Err(invalid(id, "only attribute sinks take a `base`"));
                }
                policy.sinks.push(Sink {
                    rule: r,
                    kind: match kind {
                        DynamicKind::Import => SinkKind::Import,
                        DynamicKind::CodeString => SinkKind::CodeString,
                        _ => SinkKind::Attribute,
                    },
                    name: s.name.clone(),
                    attribute: s.attribute.clone(),
                    arg: s.arg,
                    keyword: s.keyword.clone(),
                    base: s.base,
                    report_dynamic: s.report_dynamic,
                });
            }
        }
        Some(DynamicKind::Namespace) => {
            for b in &spec.builtins {
                if !valid_ident(b) {
                    return Err(invalid(id, format!("bad builtin name `{b}`")));
                }
                policy.triggers.bare_words.insert(b.clone());
                policy.namespace.push((format!("builtins.{b}"), r));
            }
        }
        Some(DynamicKind::SourceEncoding) => {
            if policy.encodings.is_some() {
                return Err(invalid(id, "only one source-encoding rule is allowed"));
            }
            let allowed = spec
                .allowed_encodings
                .iter()
                .map(|e| normalise_encoding(e))
                .collect();
            policy.encodings = Some((r, allowed));
        }
        Some(DynamicKind::Nesting) => {
            if policy.nesting_rule.is_some() {
                return Err(invalid(id, "only one nesting rule is allowed"));
            }
            let depth = spec.max_depth.unwrap_or(DEFAULT_MAX_DEPTH);
            if !(8..=MAX_DEPTH_CEILING).contains(&depth) {
                return Err(invalid(
                    id,
                    format!("max_depth must be within 8..={MAX_DEPTH_CEILING}"),
                ));
            }
            policy.nesting_rule = Some(r);
            policy.max_depth = depth;
        }
        None => return Err(invalid(id, "category `dynamic` needs a `kind`")),
    }
    Ok(())
}

/// Python's own spelling folding for codec names: case and `_`/`-` do not matter.
pub(crate) fn normalise_encoding(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('_', "-")
}
